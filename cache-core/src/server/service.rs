//! The pull API as a `tower::Service`: authentication, authorization by
//! grants or token scopes, the token endpoint, caller scoping,
//! `cache_core::protocol`, and blob bodies sent from files.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use axum::body::Body;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::access::{Action, Principal};
use super::auth::{self, Decision, Identity, PullAuth, Refusal, ScopedTokens};
use super::{sendfile, token};
use crate::engine::PullThroughCache;
use crate::error::Error;
use crate::names::RepoName;
use crate::policy::{Caller, FetchPolicy};
use crate::protocol;

/// The realm a `401` names unless [`PullService::realm`] says otherwise.
const DEFAULT_REALM: &str = "pull-through-cache";

/// The pull side of the OCI Distribution API (`/v2/...`) over a
/// [`PullThroughCache`], as a `tower::Service` any hyper or axum server
/// mounts: every request is answered by [`protocol::handle_for`], after
///
/// * **caller scoping** ([`PullService::scoped`]): a scanner's scoped
///   credential ([`ScopedTokens`]) makes the request a
///   [`Caller::Scanner`] of its repository, with or without pull-side
///   auth; it reads that repository and the API base (`/v2/`), nothing
///   else (`403 DENIED`), and not through a mirror namespace (`?ns=`);
/// * **pull-side access** ([`PullService::auth`], see
///   [`PullAuth`](super::PullAuth)): any other request under `/v2` is
///   identified (a user, a robot token, a workload's OIDC token, a token
///   of the token flow, or `anonymous`) and allowed what its grants (or
///   its token's scopes) give of the repository it names, the local one
///   for a mirror request: `pull` as [`Caller::Principal`] with
///   [`FetchPolicy::Upstream`], `pull-cached` with
///   [`FetchPolicy::StoreOnly`] (a miss is a `404` and no upstream hears
///   of it). No or wrong credentials, or `anonymous` without a grant, get
///   `401 UNAUTHORIZED` with a challenge: `Bearer realm=".../token",
///   service="..."` (and the `scope` needed) with the token flow, `Basic`
///   without; a token not asked for this repository gets `401` with
///   `error="insufficient_scope"`; an authenticated principal without a
///   grant gets `403 DENIED`; too many failed logins, `429` with
///   `Retry-After`. `/v2/` wants credentials (so `docker login` and
///   clients find the token endpoint); the catalog lists what the grants
///   cover, tag lists and referrers follow their repository's grant.
///   `GET /token` is the token endpoint, when the token flow is on (see
///   [`TokenSettings`](super::TokenSettings)). Paths outside `/v2` need
///   no credentials (they are the API's `404`). Every response under
///   `/v2` and of `/token` carries an [`AccessInfo`] in its extensions
///   (principal, class, decision), for access logs and metrics.
///
/// Blob bodies go out with `sendfile(2)` when the connection was set up
/// for it ([`serve_connections`](super::serve_connections) does), else as
/// streams. The service answers the path it is given, so it mounts at the
/// root (`Router::fallback_service`, or [`PullService::into_router`]) or
/// under a prefix with `Router::nest_service`, which strips the prefix.
/// It never fails (`Error = Infallible`): every fault is an OCI error
/// answer. Clones share everything.
///
/// ```no_run
/// # async fn run(cache: cache_core::PullThroughCache) -> std::io::Result<()> {
/// use std::sync::Arc;
/// use axum::routing::get;
/// use cache_core::Secret;
/// use cache_core::server::{AuthConfig, PullAuth, PullService, ScopedTokens};
///
/// let scoped = Arc::new(ScopedTokens::new()); // also handed to a ScanGate
/// let pull = PullService::new(cache)
///     .auth(PullAuth::new(AuthConfig::default().token(Secret::new("s3cret"))))
///     .scoped(scoped)
///     .realm("my-registry");
/// let app = axum::Router::new()
///     .route("/", get(|| async { "the host application" }))
///     .fallback_service(pull);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PullService {
    cache: PullThroughCache,
    auth: Arc<ArcSwapOption<PullAuth>>,
    scoped: Option<Arc<ScopedTokens>>,
    realm: Arc<str>,
}

impl PullService {
    /// The pull API of `cache`, open to anyone (add [`PullService::auth`]).
    ///
    /// ```no_run
    /// # async fn run(cache: cache_core::PullThroughCache) -> std::io::Result<()> {
    /// let app = cache_core::server::PullService::new(cache).into_router();
    /// axum::serve(tokio::net::TcpListener::bind("127.0.0.1:5000").await?, app).await
    /// # }
    /// ```
    pub fn new(cache: PullThroughCache) -> Self {
        PullService {
            cache,
            auth: Arc::new(ArcSwapOption::empty()),
            scoped: None,
            realm: Arc::from(DEFAULT_REALM),
        }
    }

    /// Requires credentials `auth` accepts for every request under `/v2`
    /// (a scoped credential aside).
    ///
    /// ```no_run
    /// # fn f(cache: cache_core::PullThroughCache) -> cache_core::Result<()> {
    /// use cache_core::server::{AuthConfig, PullAuth, PullService};
    /// let users = AuthConfig::read_htpasswd("/etc/registry/htpasswd".as_ref())?;
    /// let pull = PullService::new(cache).auth(PullAuth::new(users));
    /// # let _ = pull; Ok(()) }
    /// ```
    pub fn auth(mut self, auth: PullAuth) -> Self {
        // A slot of its own: clones made before this step keep theirs.
        self.auth = Arc::new(ArcSwapOption::from_pointee(auth));
        self
    }

    /// Like [`PullService::auth`], from a slot the caller may swap while
    /// serving (a configuration reload): each request is checked against
    /// what the slot holds when it arrives; an empty slot lets anyone in.
    ///
    /// ```
    /// # fn f(cache: cache_core::PullThroughCache) {
    /// use std::sync::Arc;
    /// use arc_swap::ArcSwapOption;
    /// use cache_core::server::{AuthConfig, PullAuth, PullService};
    ///
    /// let slot = Arc::new(ArcSwapOption::<PullAuth>::empty());
    /// let pull = PullService::new(cache).auth_from(slot.clone());
    /// // Later, on reload:
    /// slot.store(Some(Arc::new(PullAuth::new(AuthConfig::default()))));
    /// # let _ = pull; }
    /// ```
    pub fn auth_from(mut self, auth: Arc<ArcSwapOption<PullAuth>>) -> Self {
        self.auth = auth;
        self
    }

    /// Honours the scoped credentials `tokens` issues (see the type's
    /// docs); hand the same `Arc` to the gate as its `PullCredentials`.
    ///
    /// ```no_run
    /// # fn f(cache: cache_core::PullThroughCache) {
    /// use std::sync::Arc;
    /// use cache_core::server::{PullService, ScopedTokens};
    /// let tokens = Arc::new(ScopedTokens::new());
    /// let pull = PullService::new(cache).scoped(tokens.clone());
    /// // ScanGate::new(scanners, policies, store, tokens)
    /// # let _ = pull; }
    /// ```
    pub fn scoped(mut self, tokens: Arc<ScopedTokens>) -> Self {
        self.scoped = Some(tokens);
        self
    }

    /// The realm a `Basic` `401` challenge names (without the token
    /// flow, and at the token endpoint; quotes are dropped); the default
    /// is `pull-through-cache`.
    ///
    /// ```no_run
    /// # fn f(cache: cache_core::PullThroughCache) {
    /// let pull = cache_core::server::PullService::new(cache).realm("registry-proxy");
    /// # let _ = pull; }
    /// ```
    pub fn realm(mut self, realm: impl AsRef<str>) -> Self {
        self.realm = Arc::from(realm.as_ref());
        self
    }

    /// An axum `Router` that is this service at every path, to serve
    /// alone or merge into an application's router.
    ///
    /// ```no_run
    /// # fn f(cache: cache_core::PullThroughCache) {
    /// use axum::routing::get;
    /// let app = cache_core::server::PullService::new(cache)
    ///     .into_router()
    ///     .route("/healthz", get(|| async { "ok" }));
    /// # let _ = app; }
    /// ```
    pub fn into_router(self) -> axum::Router {
        axum::Router::new().fallback_service(self)
    }

    /// Answers one request (what `Service::call` does). The request body
    /// is not read: pulls have none.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use cache_core::prelude::*;
    /// use cache_core::Secret;
    /// use cache_core::server::{AuthConfig, PullAuth, PullService};
    /// use cache_core::testing::{FakeUpstream, ManualClock};
    ///
    /// let cache = PullThroughCache::builder()
    ///     .rule(RuleSpec::new("hub", "docker.io/library/*", "library/*"))
    ///     .store(cache_store::MemoryStore::new())
    ///     .tokio()
    ///     .upstream("docker.io", Arc::new(FakeUpstream::new("docker.io", Arc::new(ManualClock::new()))))
    ///     .build()?;
    /// let pull = PullService::new(cache)
    ///     .auth(PullAuth::new(AuthConfig::default().token(Secret::new("t"))));
    /// let anonymous = http::Request::get("/v2/").body(()).unwrap();
    /// assert_eq!(pull.answer(anonymous).await.status(), 401);
    /// let signed = http::Request::get("/v2/").header("authorization", "Bearer t").body(()).unwrap();
    /// assert_eq!(pull.answer(signed).await.status(), 200);
    /// # Ok::<(), cache_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn answer<B>(&self, req: Request<B>) -> Response<Body> {
        // A pull has no body worth reading: keep the head, by value.
        let (parts, _) = req.into_parts();
        let path = parts.uri.path();
        let auth = self.auth.load_full();
        if path == "/token"
            && let Some(a) = auth.as_ref().filter(|a| a.token_flow().is_some())
        {
            return self.token_endpoint(a, &parts).await.map(Body::from);
        }
        let needs_auth = path == "/v2" || path.starts_with("/v2/");
        let scope = match &self.scoped {
            Some(tokens) if needs_auth => tokens.scope(&parts.headers),
            _ => None,
        };
        let (caller, info) = match scope {
            Some(repository) => {
                let parsed =
                    protocol::PullRequest::parse(&parts.method, &parts.uri, &parts.headers);
                let within = match &parsed {
                    Ok(p) => {
                        p.ns.is_none()
                            && match p.route.name() {
                                Some(name) => *name == repository,
                                None => p.route == protocol::Route::Base,
                            }
                    }
                    // The protocol answers a malformed request as for anyone.
                    Err(_) => true,
                };
                let info = AccessInfo::scanner();
                if !within {
                    let denied = protocol::error_response(&Error::denied(format!(
                        "this credential pulls {repository} only"
                    )));
                    return info.denied().attach(denied).map(Body::from);
                }
                (Caller::Scanner { repository }, info)
            }
            None => match auth {
                Some(auth) if needs_auth => match self.admit(&auth, &parts).await {
                    Ok(Admitted::Caller(caller, info)) => (caller, info),
                    Ok(Admitted::Catalog(visible, info)) => {
                        return info.attach(self.catalog(&parts, &*visible).await);
                    }
                    Err(refusal) => return refusal.map(Body::from),
                },
                _ => (Caller::Client, AccessInfo::open()),
            },
        };
        let resp = protocol::handle_for(
            &self.cache,
            &caller,
            &parts.method,
            &parts.uri,
            &parts.headers,
        )
        .await;
        let resp = resp.map(|body| match body {
            protocol::Body::Empty => Body::empty(),
            protocol::Body::Bytes(b) => Body::from(b),
            protocol::Body::Blob(b) => sendfile::blob_body(b, &parts.extensions),
        });
        info.attach(resp)
    }

    /// The catalog as `visible` lets the caller see it.
    async fn catalog(
        &self,
        parts: &http::request::Parts,
        visible: &(dyn Fn(&RepoName) -> bool + Send + Sync),
    ) -> Response<Body> {
        let answer = async {
            let req = protocol::PullRequest::parse(&parts.method, &parts.uri, &parts.headers)?;
            let protocol::Route::Catalog { limit, last } = req.route else {
                return Err(Error::Unsupported {
                    what: "not the catalog".into(),
                });
            };
            let page = self
                .cache
                .catalog_where(limit, last.as_ref(), visible)
                .await?;
            let mut r = protocol::catalog_response(&page, limit);
            if req.head {
                *r.body_mut() = bytes::Bytes::new();
            }
            Ok(r)
        };
        answer
            .await
            .unwrap_or_else(|e| protocol::error_response(&e))
            .map(Body::from)
    }

    /// Who the request is from and what it may do: the caller it is
    /// answered as, the catalog it may see, or the refusal it gets.
    async fn admit(
        &self,
        auth: &Arc<PullAuth>,
        parts: &http::request::Parts,
    ) -> Result<Admitted, Response<bytes::Bytes>> {
        let source = auth::source_of(&parts.extensions);
        let id = match auth.identity(&parts.headers, source).await {
            Ok(id) => id,
            Err(Refusal::Throttled(wait)) => {
                // TOOMANYREQUESTS, with Retry-After.
                let r = protocol::error_response(&Error::TooManyRequests {
                    retry_after: Some(wait),
                });
                return Err(AccessInfo::throttled().attach(r));
            }
            Err(Refusal::Invalid(why)) => {
                tracing::info!(source = ?source, reason = %why, "credentials refused");
                return Err(
                    AccessInfo::unauthenticated().attach(self.challenge(auth, parts, None, false))
                );
            }
        };
        let p = id.principal().clone();
        let info = AccessInfo::of(&p);
        // Without credentials, a grant to `anonymous` is the only way in.
        if p.is_anonymous() && !auth.grants().anonymous_granted() {
            return Err(info
                .unauthenticated_again()
                .attach(self.challenge(auth, parts, None, false)));
        }
        let req = match protocol::PullRequest::parse(&parts.method, &parts.uri, &parts.headers) {
            Ok(r) => r,
            // Malformed: the protocol says so, to whoever got this far.
            Err(_) => {
                return Ok(Admitted::Caller(
                    Caller::Principal {
                        name: p.shared_name(),
                        fetch: FetchPolicy::StoreOnly,
                    },
                    info.let_in(),
                ));
            }
        };
        let name = match &req.route {
            protocol::Route::Base => {
                if p.is_anonymous() && matches!(id, Identity::Principal(_)) {
                    // Clients (and `docker login`) learn of the token endpoint here.
                    return Err(info
                        .unauthenticated_again()
                        .attach(self.challenge(auth, parts, None, false)));
                }
                return Ok(Admitted::Caller(
                    Caller::Principal {
                        name: p.shared_name(),
                        fetch: FetchPolicy::StoreOnly,
                    },
                    info.let_in(),
                ));
            }
            protocol::Route::Catalog { .. } => {
                let visible: Arc<dyn Fn(&RepoName) -> bool + Send + Sync> = match &id {
                    Identity::Token(t) => match t.catalog() {
                        Some(patterns) => Arc::new(move |r: &RepoName| {
                            patterns.iter().any(|p| p.matches_name(r.as_str()))
                        }),
                        None => {
                            return Err(info.asked_again().attach(self.challenge(
                                auth,
                                parts,
                                Some("registry:catalog:*"),
                                true,
                            )));
                        }
                    },
                    Identity::Principal(p) => {
                        let (auth, p) = (auth.clone(), p.clone());
                        Arc::new(move |r: &RepoName| auth.action(&p, r.as_str()).is_some())
                    }
                };
                return Ok(Admitted::Catalog(visible, info.let_in()));
            }
            route => route.name().cloned(),
        };
        let Some(asked) = name else {
            return Ok(Admitted::Caller(
                Caller::Principal {
                    name: p.shared_name(),
                    fetch: FetchPolicy::StoreOnly,
                },
                info.let_in(),
            ));
        };
        // Grants name local repositories; a mirror request names an upstream one.
        let local = req
            .local_name(&self.cache.rules())
            .ok()
            .flatten()
            .unwrap_or_else(|| asked.clone());
        match auth.decide(&id, local.as_str()) {
            Decision::Allow(action) => Ok(Admitted::Caller(
                Caller::Principal {
                    name: p.shared_name(),
                    fetch: action.fetch_policy(),
                },
                info.allowed(action),
            )),
            Decision::AskAgain => {
                let scope = format!("repository:{local}:pull");
                Err(info
                    .asked_again()
                    .attach(self.challenge(auth, parts, Some(&scope), true)))
            }
            Decision::Deny if p.is_anonymous() => {
                let scope = format!("repository:{local}:pull");
                Err(info
                    .denied()
                    .attach(self.challenge(auth, parts, Some(&scope), false)))
            }
            Decision::Deny => Err(info
                .denied()
                .attach(protocol::error_response(&Error::denied(format!(
                    "{} may not pull {local}",
                    p.name()
                ))))),
        }
    }

    /// The `401` that asks for credentials: a Bearer challenge naming the
    /// token endpoint with the token flow, else Basic.
    fn challenge(
        &self,
        auth: &PullAuth,
        parts: &http::request::Parts,
        scope: Option<&str>,
        insufficient: bool,
    ) -> Response<bytes::Bytes> {
        match auth.token_flow() {
            Some(t) => {
                let realm = t.realm.clone().unwrap_or_else(|| token_url(parts));
                protocol::bearer_challenge_response(&realm, &t.service, scope, insufficient)
            }
            None => protocol::unauthorized_response(&self.realm),
        }
    }

    /// `GET /token`: a token for what the credentials' grants give of the
    /// scopes asked (see [`token`](super::token)); `401` for wrong
    /// credentials, `429` while throttled, `405` for another method.
    async fn token_endpoint(
        &self,
        auth: &PullAuth,
        parts: &http::request::Parts,
    ) -> Response<bytes::Bytes> {
        let json = |status: StatusCode, body: String| {
            let mut r = Response::new(bytes::Bytes::from(body));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        };
        if parts.method != http::Method::GET && parts.method != http::Method::HEAD {
            let mut r = protocol::error_response(&Error::Unsupported {
                what: format!("{} /token (use GET)", parts.method),
            });
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        // A scanner's scoped credential is its own token (it reads its one
        // repository as a Bearer token too): clients that go through the
        // token flow with it, as go-containerregistry's do, get it back.
        if let Some((_, password)) = self.scoped.as_ref().and_then(|t| t.scoped(&parts.headers)) {
            let issued = serde_json::json!({"token": password, "access_token": password});
            return AccessInfo::scanner().attach(json(StatusCode::OK, issued.to_string()));
        }
        let source = auth::source_of(&parts.extensions);
        let p = match auth.identity(&parts.headers, source).await {
            Ok(Identity::Principal(p)) => p,
            Ok(Identity::Token(t)) => {
                return AccessInfo::of(&t.principal)
                    .unauthenticated_again()
                    .attach(json(
                        StatusCode::UNAUTHORIZED,
                        token_error("send credentials, not a token, to get a token"),
                    ));
            }
            Err(Refusal::Throttled(wait)) => {
                let mut r = json(
                    StatusCode::TOO_MANY_REQUESTS,
                    token_error("too many failed logins: try again later"),
                );
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
                return AccessInfo::throttled().attach(r);
            }
            Err(Refusal::Invalid(why)) => {
                tracing::info!(source = ?source, reason = %why, "token request refused");
                let mut r = json(
                    StatusCode::UNAUTHORIZED,
                    token_error("incorrect username or password"),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_str(&format!(
                        "Basic realm=\"{}\"",
                        self.realm.replace('"', "")
                    ))
                    .unwrap_or_else(|_| HeaderValue::from_static("Basic")),
                );
                return AccessInfo::unauthenticated().attach(r);
            }
        };
        let query = parts.uri.query();
        let scopes: Vec<String> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|kv| kv.strip_prefix("scope="))
            .take(token::MAX_SCOPES + 1)
            .map(|v| protocol::query_param(Some(&format!("s={v}")), "s").unwrap_or_default())
            .collect();
        let requested = token::parse_scopes(scopes.iter().map(String::as_str));
        let Some(issuer) = auth.issuer() else {
            return json(StatusCode::NOT_FOUND, token_error("no token flow here"));
        };
        let info = AccessInfo::of(&p).let_in();
        match issuer.issue(&p, auth.grants(), &requested) {
            Ok(issued) => info.attach(json(
                StatusCode::OK,
                serde_json::to_string(&issued).unwrap_or_default(),
            )),
            Err(e) => {
                tracing::error!(error = %e, "issuing a token failed");
                json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    token_error("issuing a token failed"),
                )
            }
        }
    }
}

/// What [`PullService::admit`] lets through.
enum Admitted {
    /// The request, answered as this caller.
    Caller(Caller, AccessInfo),
    /// The catalog, of the repositories this keeps.
    Catalog(Arc<dyn Fn(&RepoName) -> bool + Send + Sync>, AccessInfo),
}

/// The token endpoint's error body (`{"errors":[...]}`, as the registry's).
fn token_error(message: &str) -> String {
    String::from_utf8_lossy(&protocol::error_body(
        crate::error::ErrorCode::Unauthorized.as_str(),
        message,
    ))
    .into_owned()
}

/// The token endpoint's URL as the client reached this one: its scheme
/// (https over TLS), its `Host` (or HTTP/2 authority), and the prefix the
/// service is mounted under.
fn token_url(parts: &http::request::Parts) -> String {
    let tls = parts.extensions.get::<super::conn::Tls>().is_some()
        || parts.uri.scheme_str() == Some("https");
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    let prefix = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .and_then(|o| o.0.path().strip_suffix(parts.uri.path()).map(str::to_owned))
        .unwrap_or_default();
    format!(
        "{}://{host}{prefix}/token",
        if tls { "https" } else { "http" }
    )
}

/// Who a response was answered for and how its access was decided: the
/// service puts one in the extensions of every response under `/v2` and
/// of the token endpoint's, for a server's access log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessInfo {
    /// The principal's name (`scanner` for a scanner's credential, `-`
    /// when pull-side auth is off).
    pub principal: Arc<str>,
    /// Its kind: `anonymous`, `user`, `token`, `workload`, `scanner`, or
    /// `none` when pull-side auth is off. A bounded set, for labels.
    pub class: &'static str,
    /// What was decided: `pull`, `pull-cached` (allowed on the
    /// repository named, so far as access goes), `allowed` (a request
    /// that names no repository: `/v2/`, the catalog, the token endpoint),
    /// `denied`, `unauthorized` (no or wrong credentials, or a token for
    /// another scope), `throttled`, or `open` (no pull-side auth).
    pub decision: &'static str,
}

impl AccessInfo {
    fn new(principal: &str, class: &'static str, decision: &'static str) -> Self {
        AccessInfo {
            principal: Arc::from(principal),
            class,
            decision,
        }
    }

    fn open() -> Self {
        Self::new("-", "none", "open")
    }

    fn scanner() -> Self {
        Self::new("scanner", "scanner", "pull")
    }

    fn throttled() -> Self {
        Self::new("-", "anonymous", "throttled")
    }

    fn unauthenticated() -> Self {
        Self::new("-", "anonymous", "unauthorized")
    }

    fn of(p: &Principal) -> Self {
        AccessInfo {
            principal: p.shared_name(),
            class: p.kind().as_str(),
            decision: "unauthorized",
        }
    }

    fn allowed(self, a: Action) -> Self {
        AccessInfo {
            decision: a.as_str(),
            ..self
        }
    }

    /// Let in where no repository is named (`/v2/`, the catalog, a
    /// malformed request the protocol answers).
    fn let_in(self) -> Self {
        AccessInfo {
            decision: "allowed",
            ..self
        }
    }

    fn denied(self) -> Self {
        AccessInfo {
            decision: "denied",
            ..self
        }
    }

    fn unauthenticated_again(self) -> Self {
        AccessInfo {
            decision: "unauthorized",
            ..self
        }
    }

    fn asked_again(self) -> Self {
        self.unauthenticated_again()
    }

    fn attach<T>(self, mut r: Response<T>) -> Response<T> {
        r.extensions_mut().insert(self);
        r
    }
}

impl<B: Send + 'static> tower::Service<Request<B>> for PullService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.answer(req).await) })
    }
}
