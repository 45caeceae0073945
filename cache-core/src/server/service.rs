//! The pull API as a `tower::Service`: authentication, caller scoping,
//! `cache_core::protocol`, and blob bodies sent from files.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use axum::body::Body;
use http::{Request, Response};

use super::auth::{PullAuth, ScopedTokens};
use super::sendfile;
use crate::engine::PullThroughCache;
use crate::error::Error;
use crate::policy::Caller;
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
/// * **pull-side authentication** ([`PullService::auth`]): any other
///   request under `/v2` without valid credentials gets `401
///   UNAUTHORIZED` with a `Basic` challenge. Paths outside `/v2` need
///   none (they are the API's `404`).
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

    /// The realm the `401` challenge names (quotes are dropped); the
    /// default is `pull-through-cache`.
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
        let needs_auth = path == "/v2" || path.starts_with("/v2/");
        let scope = match &self.scoped {
            Some(tokens) if needs_auth => tokens.scope(&parts.headers),
            _ => None,
        };
        let caller = match scope {
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
                if !within {
                    return protocol::error_response(&Error::denied(format!(
                        "this credential pulls {repository} only"
                    )))
                    .map(Body::from);
                }
                Caller::Scanner { repository }
            }
            None => {
                if needs_auth
                    && let Some(auth) = self.auth.load_full()
                    && !auth.check(&parts.headers).await
                {
                    return protocol::unauthorized_response(&self.realm).map(Body::from);
                }
                Caller::Client
            }
        };
        let resp = protocol::handle_for(
            &self.cache,
            &caller,
            &parts.method,
            &parts.uri,
            &parts.headers,
        )
        .await;
        resp.map(|body| match body {
            protocol::Body::Empty => Body::empty(),
            protocol::Body::Bytes(b) => Body::from(b),
            protocol::Body::Blob(b) => sendfile::blob_body(b, &parts.extensions),
        })
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
