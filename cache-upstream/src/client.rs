//! `RegistryClient`: the OCI Distribution API over HTTP, with registry
//! token and basic authentication, endpoint fallbacks and typed errors;
//! one request per call (the engine is the one retry layer).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cache_core::{
    ByteRange, Digest, Error, ErrorCode, Manifest, ManifestHead, Reference, Registry, RepoName,
    Result, Tag, TagPage, Upstream, UpstreamBlob, manifest_from_bytes,
};
use futures::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use url::Url;

use crate::auth::{Challenge, Credentials, Secret, TokenCache, TokenResponse};
use crate::policy::{AddressPolicy, GuardedResolver, refused_in};

/// Tunables of a [`RegistryClient`]. With the `serde` feature, a table
/// of them deserialises and validates itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Longest wait for a TCP/TLS connection (default 10 s).
    pub connect_timeout: Duration,
    /// Longest wait for response headers after a request (default 30 s).
    pub response_timeout: Duration,
    /// Longest pause between body bytes (default 60 s).
    pub read_timeout: Duration,
    /// Largest manifest accepted (default 4 MiB).
    pub max_manifest_size: usize,
    /// Largest tag list page accepted (default 4 MiB); larger is an upstream error.
    pub max_tag_list_size: usize,
    /// Largest token response accepted (default 1 MiB).
    pub max_token_size: usize,
    /// Bearer tokens kept at once (default 10,000); expired ones go first.
    pub max_cached_tokens: usize,
    /// Token lifetime when the token server does not say (default 60 s).
    pub default_token_ttl: Duration,
    /// Hosts besides the endpoint's own that redirects may lead to even
    /// when they resolve to non-public addresses (an internal blob store).
    pub redirect_hosts: Vec<String>,
    /// Token realm hosts, besides the endpoint's host and registrable
    /// domain, that may receive the registry's credentials.
    pub token_hosts: Vec<String>,
    /// How long an endpoint that failed (connection error, timeout, 5xx) is
    /// skipped before it is tried again; doubles while it keeps failing, up
    /// to ten times this (default 10 s).
    pub endpoint_backoff: Duration,
    /// Stop spending the upstream's pull budget at this many remaining
    /// (from its `ratelimit-remaining` header, as Docker Hub sends): manifest
    /// `GET`s are then refused as `TOOMANYREQUESTS` until the window
    /// passes; `HEAD`s, which Docker Hub does not count, still go.
    pub rate_limit_reserve: Option<u64>,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Which certificates an upstream may present, and the client
    /// certificate to present to it.
    pub tls: TlsOptions,
}

/// How a [`RegistryClient`] checks an upstream's certificate and presents
/// its own.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM certificates of CAs to trust for this upstream: a private CA in
    /// front of an internal registry.
    pub ca_pem: Vec<String>,
    /// Whether the system's roots are trusted too (default `true`); with
    /// `false`, only `ca_pem`.
    pub system_roots: bool,
    /// A client certificate chain and its private key, PEM, for an
    /// upstream that wants mutual TLS. Prints as `<redacted>`.
    pub client_identity: Option<Secret>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            ca_pem: Vec::new(),
            system_roots: true,
            client_identity: None,
        }
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field(
                "ca_pem",
                &format_args!("{} PEM document(s)", self.ca_pem.len()),
            )
            .field("system_roots", &self.system_roots)
            .field("client_identity", &self.client_identity)
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_manifest_size: 4 * 1024 * 1024,
            max_tag_list_size: 4 * 1024 * 1024,
            max_token_size: 1024 * 1024,
            max_cached_tokens: 10_000,
            default_token_ttl: Duration::from_secs(60),
            redirect_hosts: Vec::new(),
            token_hosts: Vec::new(),
            endpoint_backoff: Duration::from_secs(10),
            rate_limit_reserve: None,
            user_agent: concat!("pull-through-cache/", env!("CARGO_PKG_VERSION")).to_owned(),
            tls: TlsOptions::default(),
        }
    }
}

/// How much of an upstream's error body is read, at most.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The upstream's pull budget, from the `ratelimit-limit` and
/// `ratelimit-remaining` headers of its last response that had them
/// (Docker Hub's `N;w=SECONDS` form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Pulls allowed per window.
    pub limit: u64,
    /// Pulls left in the window.
    pub remaining: u64,
    /// The window.
    pub window: Duration,
    /// When the headers were seen.
    pub seen: Instant,
}

impl RateLimit {
    /// Parses `N` or `N;w=SECONDS`.
    fn parse_pair(v: &str) -> Option<(u64, Option<u64>)> {
        let mut parts = v.split(';');
        let n = parts.next()?.trim().parse().ok()?;
        let w = parts
            .find_map(|p| p.trim().strip_prefix("w="))
            .and_then(|w| w.trim().parse().ok());
        Some((n, w))
    }

    fn from_headers(h: &HeaderMap) -> Option<Self> {
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
        let (limit, w1) = Self::parse_pair(get("ratelimit-limit")?)?;
        let (remaining, w2) = Self::parse_pair(get("ratelimit-remaining")?)?;
        Some(RateLimit {
            limit,
            remaining,
            window: Duration::from_secs(w2.or(w1).unwrap_or(60)),
            seen: Instant::now(),
        })
    }
}

/// One endpoint of a registry: its base URL, its tokens, and its breaker.
struct Endpoint {
    base: Url,
    tokens: TokenCache,
    basic: AtomicBool,
    /// Skipped until then, after failing.
    down_until: Mutex<Option<Instant>>,
    failures: std::sync::atomic::AtomicU32,
}

impl Endpoint {
    fn url(&self, path: &str) -> Url {
        self.base
            .join(path)
            .expect("paths are built from validated names")
    }

    fn down(&self) -> Option<Instant> {
        (*self.down_until.lock().unwrap_or_else(|p| p.into_inner())).filter(|t| *t > Instant::now())
    }

    fn failed(&self, backoff: Duration) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel).min(10);
        let wait = (backoff * 2u32.saturating_pow(n)).min(backoff * 10);
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + wait);
    }

    fn answered(&self) {
        if self.failures.swap(0, Ordering::AcqRel) > 0 {
            *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

/// An OCI Distribution API client for one registry.
///
/// It makes one request per call and does not retry: the engine is the
/// retry layer (see `CacheOptions::max_retries`), so one fetch has one
/// budget. Authentication is part of a call: a `401` is answered once with
/// the challenge's token or basic credentials.
pub struct RegistryClient {
    registry: Registry,
    endpoints: Vec<Endpoint>,
    http: reqwest::Client,
    creds: Option<Credentials>,
    opts: ClientOptions,
    policy: AddressPolicy,
    rate: Mutex<Option<RateLimit>>,
    bandwidth: Option<Arc<crate::Bandwidth>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let eps: Vec<&str> = self.endpoints.iter().map(|e| e.base.as_str()).collect();
        f.debug_struct("RegistryClient")
            .field("registry", &self.registry)
            .field("endpoints", &eps)
            .field("credentials", &self.creds)
            .field("bandwidth", &self.bandwidth.as_ref().map(|b| b.rate()))
            .finish_non_exhaustive()
    }
}

/// What one endpoint's attempt came to.
enum Attempt {
    /// An answer to pass on (any status but a 5xx).
    Answer(Response),
    /// The endpoint failed (connection, timeout, 5xx): try the next one.
    Failed(Error),
    /// A failure no other endpoint would fix (credentials refused, 429).
    Final(Error),
}

/// What a request was for, to turn a 404 into the right error.
#[derive(Clone, Copy)]
enum What<'a> {
    Manifest(&'a RepoName, &'a Reference),
    Blob(&'a Digest),
    Tags(&'a RepoName),
}

impl RegistryClient {
    /// A client for `registry`. The endpoint defaults to `https://HOST`
    /// (`https://registry-1.docker.io` for Docker Hub); an explicit
    /// `http://` endpoint is accepted for loopback and test registries.
    pub fn new(
        registry: Registry,
        endpoint: Option<&str>,
        creds: Option<Credentials>,
        opts: ClientOptions,
    ) -> Result<Self> {
        let ep = endpoint
            .map(str::to_owned)
            .unwrap_or_else(|| format!("https://{}", registry.api_host()));
        Self::with_endpoints(registry, &[ep.as_str()], creds, opts)
    }

    /// A client for `registry` with several endpoints (mirrors first, say,
    /// then the registry itself), tried in order on every call: an endpoint
    /// that fails to connect, times out or answers 5xx is skipped for a
    /// back-off period ([`ClientOptions::endpoint_backoff`]) and the next
    /// is asked. Content is digest-verified, so any mirror is safe.
    pub fn with_endpoints(
        registry: Registry,
        endpoints: &[&str],
        creds: Option<Credentials>,
        opts: ClientOptions,
    ) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(Error::invalid_rule(registry.to_string(), "no endpoint"));
        }
        let mut bases = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let invalid = |reason: &str| {
                Error::invalid_rule(registry.to_string(), format!("endpoint {ep:?}: {reason}"))
            };
            let mut base = Url::parse(ep).map_err(|e| invalid(&e.to_string()))?;
            if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
                return Err(invalid("must be an http:// or https:// URL with a host"));
            }
            if !base.path().ends_with('/') {
                let p = format!("{}/", base.path());
                base.set_path(&p);
            }
            bases.push(base);
        }
        let invalid = |reason: &str| Error::invalid_rule(registry.to_string(), reason);
        let policy = AddressPolicy::for_endpoints(&bases, &opts.redirect_hosts, &opts.token_hosts);
        let redirect_policy = policy.clone();
        let mut http = reqwest::Client::builder();
        if !opts.tls.system_roots {
            http = http.tls_built_in_root_certs(false);
        }
        for pem in &opts.tls.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| invalid(&format!("CA certificates: {e}")))?;
            if certs.is_empty() {
                return Err(invalid("CA certificates: none in the PEM given"));
            }
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        if let Some(id) = &opts.tls.client_identity {
            let id = reqwest::Identity::from_pem(id.expose().as_bytes())
                .map_err(|e| invalid(&format!("client certificate: {e}")))?;
            http = http.identity(id);
        }
        let http = http
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .user_agent(opts.user_agent.clone())
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
                hint: "is neither the registry's endpoint nor listed in its redirect_hosts",
            }))
            // reqwest drops Authorization when a redirect leaves the host;
            // the policy keeps redirects off internal addresses.
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.error("more than 5 redirects");
                }
                match redirect_policy.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => attempt.error(refused),
                }
            }))
            .build()
            .map_err(|e| invalid(&e.to_string()))?;
        let endpoints = bases
            .into_iter()
            .map(|base| Endpoint {
                base,
                tokens: TokenCache::new(opts.max_cached_tokens),
                basic: AtomicBool::new(false),
                down_until: Mutex::new(None),
                failures: Default::default(),
            })
            .collect();
        Ok(RegistryClient {
            registry,
            endpoints,
            http,
            creds,
            opts,
            policy,
            rate: Mutex::new(None),
            bandwidth: None,
        })
    }

    /// This client with its blob bodies drawing from `cap`, a registry's
    /// bandwidth cap that its other clients (other credential sets) share.
    pub fn with_bandwidth(mut self, cap: Arc<crate::Bandwidth>) -> Self {
        self.bandwidth = Some(cap);
        self
    }

    /// The bandwidth cap blob bodies draw from, if any.
    pub fn bandwidth(&self) -> Option<&Arc<crate::Bandwidth>> {
        self.bandwidth.as_ref()
    }

    /// The registry this client talks to.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The pull budget from the last response that said (Docker Hub's
    /// `ratelimit-*` headers).
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The pull budget's reserve (`reserve` of its registry entry): the
    /// remaining pulls it does not spend, if one is set.
    pub fn rate_limit_reserve(&self) -> Option<u64> {
        self.opts.rate_limit_reserve
    }

    /// Refuses to spend the pull budget once it is down to the reserve,
    /// until its window has passed.
    fn check_budget(&self) -> Result<()> {
        let (Some(reserve), Some(rate)) = (self.opts.rate_limit_reserve, self.rate_limit()) else {
            return Ok(());
        };
        let resets = rate.seen + rate.window;
        let now = Instant::now();
        if rate.remaining <= reserve && now < resets {
            tracing::warn!(
                registry = %self.registry,
                remaining = rate.remaining,
                reserve,
                "upstream pull budget at its reserve; not spending it"
            );
            return Err(Error::TooManyRequests {
                retry_after: Some((resets - now).max(Duration::from_secs(1))),
            });
        }
        Ok(())
    }

    fn upstream_err(&self, message: impl Into<String>, temporary: bool) -> Error {
        Error::upstream(&self.registry, message, temporary)
    }

    /// The upstream refusing the cache's credentials: the upstream's
    /// business, so a 502, never a 401 that tells the client to log in.
    fn refused_credentials(&self, message: String) -> Error {
        Error::Upstream {
            registry: self.registry.to_string(),
            message,
            code: Some(ErrorCode::Unauthorized),
            temporary: false,
            source: None,
        }
    }

    /// A transport failure as an upstream error, naming a target the
    /// address policy refused.
    fn transport_error(&self, what: &str, e: reqwest::Error) -> Error {
        if let Some(refused) = refused_in(&e) {
            return self.upstream_err(refused.to_string(), false);
        }
        // A TLS failure (an untrusted or refused certificate, a protocol
        // the two sides do not share) is configuration, not weather: it
        // will fail the same way on a retry.
        let temporary = (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
            && !is_tls_failure(&e);
        let mut cause: &(dyn std::error::Error + 'static) = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let message = if e.is_connect() {
            format!("{what}: cannot connect ({cause})")
        } else {
            format!("{what} failed ({cause})")
        };
        Error::upstream_with(&self.registry, message, temporary, e)
    }

    fn record_rate_limit(&self, h: &HeaderMap) {
        if let Some(r) = RateLimit::from_headers(h) {
            *self.rate.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        }
    }

    /// Sends a request built by `build` for an endpoint: the endpoints in
    /// order, skipping those backing off (all backing off: the one back
    /// soonest), moving on after a connection error, a timeout or a 5xx.
    async fn send(
        &self,
        repo: &RepoName,
        build: &(dyn Fn(&Endpoint) -> RequestBuilder + Sync),
    ) -> Result<Response> {
        let mut order: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| e.down().is_none())
            .collect();
        if order.is_empty() {
            order.extend(self.endpoints.iter().min_by_key(|e| e.down()));
        }
        let mut last = None;
        for ep in order {
            match self.send_to(ep, repo, build).await {
                Attempt::Answer(r) => {
                    ep.answered();
                    if !std::ptr::eq(ep, &self.endpoints[0]) {
                        tracing::info!(registry = %self.registry, endpoint = %ep.base, "answered by a fallback endpoint");
                    }
                    return Ok(r);
                }
                Attempt::Failed(e) => {
                    ep.failed(self.opts.endpoint_backoff);
                    if self.endpoints.len() > 1 {
                        tracing::warn!(registry = %self.registry, endpoint = %ep.base, error = %e, "endpoint failed; trying the next");
                    }
                    last = Some(e);
                }
                Attempt::Final(e) => return Err(e),
            }
        }
        Err(last.expect("at least one endpoint was tried"))
    }

    /// One endpoint's attempt, answering one `401` with the challenge's
    /// credentials (one request; two with authentication).
    async fn send_to(
        &self,
        ep: &Endpoint,
        repo: &RepoName,
        build: &(dyn Fn(&Endpoint) -> RequestBuilder + Sync),
    ) -> Attempt {
        let scope_repo = repo.as_str();
        let mut authed = false;
        // The token just obtained is used for the retry even if its lifetime is already over.
        let mut fresh: Option<Secret> = None;
        loop {
            let mut rb = build(ep);
            if let Some(tok) = fresh.clone().or_else(|| ep.tokens.get(scope_repo, "pull")) {
                rb = rb.bearer_auth(tok.expose());
            } else if ep.basic.load(Ordering::Relaxed)
                && let Some(c) = &self.creds
            {
                rb = rb.header(header::AUTHORIZATION, c.basic_header());
            }
            let resp = match tokio::time::timeout(self.opts.response_timeout, rb.send()).await {
                Err(_) => {
                    return Attempt::Failed(Error::timeout(format!(
                        "{} ({}): no response within {:?}",
                        self.registry, ep.base, self.opts.response_timeout
                    )));
                }
                Ok(Err(e)) => {
                    let e = self.transport_error("request", e);
                    return if e.is_temporary() {
                        Attempt::Failed(e)
                    } else {
                        Attempt::Final(e)
                    };
                }
                Ok(Ok(r)) => r,
            };
            self.record_rate_limit(resp.headers());
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED {
                if authed {
                    return Attempt::Final(
                        self.refused_credentials(format!("refused the credentials for {repo}")),
                    );
                }
                authed = true;
                ep.tokens.forget(scope_repo, "pull");
                let challenge = resp
                    .headers()
                    .get_all(header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(Challenge::parse)
                    .max_by_key(|c| matches!(c, Challenge::Bearer { .. }));
                match challenge {
                    Some(c) => match self.authenticate(ep, repo, c).await {
                        Ok(t) => fresh = t,
                        Err(e) if e.is_temporary() => return Attempt::Failed(e),
                        Err(e) => return Attempt::Final(e),
                    },
                    None => {
                        return Attempt::Final(self.refused_credentials(
                            "asked for authentication it did not describe".into(),
                        ));
                    }
                }
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Attempt::Final(Error::TooManyRequests { retry_after });
            }
            if status.is_server_error() {
                return Attempt::Failed(
                    self.upstream_err(format!("HTTP {status} from {}", ep.base), true),
                );
            }
            return Attempt::Answer(resp);
        }
    }

    /// Answers a challenge; returns the bearer token obtained, if any.
    async fn authenticate(
        &self,
        ep: &Endpoint,
        repo: &RepoName,
        c: Challenge,
    ) -> Result<Option<Secret>> {
        match c {
            Challenge::Basic => {
                if self.creds.is_none() {
                    return Err(self.refused_credentials(
                        "requires credentials and none are configured".into(),
                    ));
                }
                ep.basic.store(true, Ordering::Relaxed);
                Ok(None)
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let mut url = Url::parse(&realm).map_err(|e| {
                    self.upstream_err(format!("token realm {realm:?} is not a URL: {e}"), false)
                })?;
                self.policy
                    .check_url(&url)
                    .map_err(|r| self.upstream_err(format!("token realm: {r}"), false))?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    q.append_pair(
                        "scope",
                        &scope.unwrap_or_else(|| format!("repository:{repo}:pull")),
                    );
                }
                let mut rb = self.http.get(url.clone());
                if let Some(c) = &self.creds {
                    match self.policy.may_send_credentials(&ep.base, &url) {
                        Ok(()) => rb = rb.basic_auth(&c.username, Some(c.password.expose())),
                        Err(why) => tracing::warn!(
                            registry = %self.registry,
                            %why,
                            "not sending the registry's credentials to its token realm; asking for an anonymous token"
                        ),
                    }
                }
                let resp = tokio::time::timeout(self.opts.response_timeout, rb.send())
                    .await
                    .map_err(|_| Error::timeout(format!("token request to {realm}")))?
                    .map_err(|e| self.transport_error("token request", e))?;
                let status = resp.status();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    return Err(self.refused_credentials(format!(
                        "token server {realm} refused the credentials ({status})"
                    )));
                }
                if !status.is_success() {
                    return Err(self.upstream_err(
                        format!("token server {realm} answered {status}"),
                        status.is_server_error(),
                    ));
                }
                let body = self
                    .read_limited(resp, self.opts.max_token_size, "token response")
                    .await?;
                let tr: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                    self.upstream_err(format!("token response is not JSON: {e}"), false)
                })?;
                let token = tr
                    .token
                    .or(tr.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.upstream_err("token response has no token", false))?;
                let ttl = tr
                    .expires_in
                    .map(Duration::from_secs)
                    .or_else(|| crate::auth::jwt_ttl(&token, std::time::SystemTime::now()))
                    .unwrap_or(self.opts.default_token_ttl);
                // Renew a little early so a token does not expire in flight.
                let ttl = ttl.saturating_sub(ttl / 10);
                let token = Secret::new(token);
                ep.tokens.put(repo.as_str(), "pull", token.clone(), ttl);
                Ok(Some(token))
            }
        }
    }

    /// Turns a non-success response into a typed error, reading (at most
    /// 64 KiB of) the OCI error body.
    async fn error_from(&self, resp: Response, what: What<'_>) -> Error {
        let status = resp.status();
        let body = read_prefix(resp, MAX_ERROR_BODY).await;
        let (code, message) = oci_error(&body);
        match (status, what) {
            (StatusCode::NOT_FOUND, What::Manifest(repo, reference)) => {
                Error::manifest_unknown(repo, reference)
            }
            (StatusCode::NOT_FOUND, What::Blob(d)) => Error::blob_unknown(d),
            (StatusCode::NOT_FOUND, What::Tags(repo)) => Error::NameUnknown {
                name: repo.to_string(),
            },
            (StatusCode::FORBIDDEN, _) => Error::denied(format!(
                "{} denied access: {}",
                self.registry,
                message.unwrap_or_default()
            )),
            _ => Error::Upstream {
                registry: self.registry.to_string(),
                message: format!(
                    "HTTP {status}{}",
                    message.map(|m| format!(": {m}")).unwrap_or_default()
                ),
                code,
                temporary: false,
                source: None,
            },
        }
    }

    /// Reads a whole body of at most `limit` bytes; a longer one is an
    /// upstream error, found out without reading past the limit.
    async fn read_limited(&self, resp: Response, limit: usize, what: &str) -> Result<Bytes> {
        let too_big =
            || self.upstream_err(format!("{what} exceeds the limit of {limit} bytes"), false);
        if resp.content_length().is_some_and(|len| len > limit as u64) {
            return Err(too_big());
        }
        let mut buf = BytesMut::new();
        let mut s = resp.bytes_stream();
        while let Some(c) = s.next().await {
            let c = c.map_err(|e| self.transport_error(&format!("reading the {what}"), e))?;
            if buf.len() + c.len() > limit {
                return Err(too_big());
            }
            buf.extend_from_slice(&c);
        }
        Ok(buf.freeze())
    }

    fn manifest_request(
        &self,
        ep: &Endpoint,
        method: Method,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> RequestBuilder {
        let url = ep.url(&format!("v2/{repo}/manifests/{reference}"));
        let accept = if accept.is_empty() {
            cache_core::media_types::ALL_MANIFESTS.join(", ")
        } else {
            accept.join(", ")
        };
        self.http
            .request(method, url)
            .header(header::ACCEPT, accept)
    }
}

/// Up to `limit` bytes of a body; the rest is never read.
async fn read_prefix(resp: Response, limit: usize) -> Bytes {
    let mut buf = BytesMut::new();
    let mut s = resp.bytes_stream();
    while buf.len() < limit {
        match s.next().await {
            Some(Ok(c)) => {
                let take = c.len().min(limit - buf.len());
                buf.extend_from_slice(&c[..take]);
            }
            _ => break,
        }
    }
    buf.freeze()
}

/// Reads `{"errors":[{"code":..,"message":..}]}`; unknown codes are tolerated.
fn oci_error(body: &[u8]) -> (Option<ErrorCode>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let first = v
        .get("errors")
        .and_then(|e| e.as_array())
        .and_then(|a| a.first());
    let code = first
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str())
        .and_then(ErrorCode::from_oci_str);
    let message = first
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(|m| m.chars().take(300).collect());
    (code, message)
}

/// The `Content-Length` header itself (on a HEAD, reqwest's
/// `content_length()` is the empty body's length, not the header).
fn header_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Parses `bytes START-END/TOTAL`.
pub(crate) fn content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

#[async_trait]
impl Upstream for RegistryClient {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Manifest> {
        // Docker Hub counts manifest GETs against the pull limit.
        self.check_budget()?;
        let resp = self
            .send(repo, &|ep| {
                self.manifest_request(ep, Method::GET, repo, reference, accept)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.error_from(resp, What::Manifest(repo, reference)).await);
        }
        let h = resp.headers().clone();
        let bytes = self
            .read_limited(resp, self.opts.max_manifest_size, "manifest")
            .await?;
        let media_type = header_str(&h, "content-type")
            .map(|ct| ct.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|ct| !ct.is_empty() && ct != "application/octet-stream")
            .or_else(|| {
                cache_core::manifest::ParsedManifest::parse(&bytes)
                    .ok()
                    .and_then(|p| p.media_type)
            })
            .unwrap_or_else(|| cache_core::media_types::OCI_MANIFEST.to_owned());
        let m = manifest_from_bytes(bytes, media_type, reference)
            .map_err(|e| e.blame_upstream(&self.registry))?;
        if let Some(announced) =
            header_str(&h, "docker-content-digest").and_then(|d| Digest::parse(&d).ok())
        {
            let actual = Digest::compute(announced.algorithm(), &m.bytes);
            if actual != announced {
                return Err(self.upstream_err(
                    format!(
                        "announced manifest digest {announced} but the content hashes to {actual}"
                    ),
                    false,
                ));
            }
        }
        Ok(m)
    }

    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestHead> {
        let resp = self
            .send(repo, &|ep| {
                self.manifest_request(ep, Method::HEAD, repo, reference, accept)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.error_from(resp, What::Manifest(repo, reference)).await);
        }
        let h = resp.headers();
        let digest = header_str(h, "docker-content-digest").and_then(|d| Digest::parse(&d).ok());
        let media_type = header_str(h, "content-type")
            .map(|ct| ct.split(';').next().unwrap_or("").trim().to_owned());
        match (digest, media_type, header_length(h)) {
            (Some(digest), Some(media_type), Some(size)) => Ok(ManifestHead {
                digest,
                media_type,
                size,
            }),
            _ => {
                // A registry that does not say: fetch and compute.
                Ok(self.manifest(repo, reference, accept).await?.head())
            }
        }
    }

    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<UpstreamBlob> {
        let path = format!("v2/{repo}/blobs/{digest}");
        let resp = self
            .send(repo, &|ep| {
                let rb = self.http.get(ep.url(&path));
                match range {
                    Some(r) => rb.header(header::RANGE, r.to_string()),
                    None => rb,
                }
            })
            .await?;
        let status = resp.status();
        let (size, span) = match status {
            StatusCode::OK => {
                let size = resp.content_length().ok_or_else(|| {
                    self.upstream_err(format!("blob {digest} came without a length"), false)
                })?;
                (size, 0..size)
            }
            StatusCode::PARTIAL_CONTENT => {
                let (a, b, total) = header_str(resp.headers(), "content-range")
                    .as_deref()
                    .and_then(content_range)
                    .filter(|(a, b, t)| a <= b && b < t)
                    .ok_or_else(|| {
                        self.upstream_err(
                            format!("blob {digest}: 206 without a usable Content-Range"),
                            false,
                        )
                    })?;
                (total, a..b + 1)
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(Error::RangeNotSatisfiable {
                    range: range.map(|r| r.to_string()).unwrap_or_default(),
                    size: header_str(resp.headers(), "content-range")
                        .and_then(|v| v.rsplit('/').next().and_then(|t| t.parse().ok()))
                        .unwrap_or(0),
                });
            }
            _ => return Err(self.error_from(resp, What::Blob(digest)).await),
        };
        let registry = self.registry.to_string();
        let stream = resp
            .bytes_stream()
            .map(move |c| {
                c.map_err(|e| Error::upstream_with(&registry, "blob transfer interrupted", true, e))
            })
            .boxed();
        let stream = match &self.bandwidth {
            Some(cap) => cap.meter(stream),
            None => stream,
        };
        Ok(UpstreamBlob {
            size,
            range: span,
            stream,
        })
    }

    async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let path = format!("v2/{repo}/blobs/{digest}");
        let resp = self.send(repo, &|ep| self.http.head(ep.url(&path))).await?;
        if !resp.status().is_success() {
            return Err(self.error_from(resp, What::Blob(digest)).await);
        }
        header_length(resp.headers()).ok_or_else(|| {
            self.upstream_err(
                format!("HEAD of blob {digest} came without a length"),
                false,
            )
        })
    }

    async fn referrers(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Manifest>> {
        let path = format!("v2/{repo}/referrers/{digest}");
        let resp = self
            .send(repo, &|ep| {
                self.http
                    .get(ep.url(&path))
                    .header(header::ACCEPT, cache_core::media_types::OCI_INDEX)
            })
            .await?;
        // A registry without the API does not know the route.
        if matches!(
            resp.status(),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self
                .error_from(
                    resp,
                    What::Manifest(repo, &Reference::Digest(digest.clone())),
                )
                .await);
        }
        let bytes = self
            .read_limited(resp, self.opts.max_manifest_size, "referrers index")
            .await?;
        let parsed = cache_core::manifest::ParsedManifest::parse(&bytes)
            .map_err(|e| self.upstream_err(format!("referrers answer: {e}"), false))?;
        if !parsed.is_index() {
            return Err(self.upstream_err("referrers answer is not an image index", false));
        }
        Ok(Some(Manifest {
            digest: Digest::sha256_of(&bytes),
            bytes,
            media_type: cache_core::media_types::OCI_INDEX.to_owned(),
        }))
    }

    async fn catalog(
        &self,
        last: Option<&RepoName>,
        limit: usize,
    ) -> Result<Option<Vec<RepoName>>> {
        // The catalog's token scope is the registry's, not a repository's;
        // an upstream that refuses it (or has none) offers no catalog.
        let scope = RepoName::parse("catalog").expect("a valid name");
        let resp = self
            .send(&scope, &|ep| {
                let mut url = ep.url("v2/_catalog");
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("n", &limit.to_string());
                    if let Some(l) = last {
                        q.append_pair("last", l.as_str());
                    }
                }
                self.http.get(url)
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(Error::Upstream {
                code: Some(ErrorCode::Unauthorized),
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if matches!(
            resp.status(),
            StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
        ) {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.upstream_err(format!("catalog: HTTP {}", resp.status()), false));
        }
        let body = self
            .read_limited(resp, self.opts.max_tag_list_size, "catalog")
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.upstream_err(format!("catalog is not JSON: {e}"), false))?;
        let mut repos: Vec<RepoName> = v
            .get("repositories")
            .and_then(|t| t.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str())
                    .filter_map(|r| RepoName::parse(r).ok())
                    .collect()
            })
            .unwrap_or_default();
        repos.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        repos.truncate(limit);
        Ok(Some(repos))
    }

    async fn tags(&self, repo: &RepoName, page: &TagPage) -> Result<Vec<Tag>> {
        let path = format!("v2/{repo}/tags/list");
        let resp = self
            .send(repo, &|ep| {
                let mut url = ep.url(&path);
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(n) = page.limit {
                        q.append_pair("n", &n.to_string());
                    }
                    if let Some(l) = &page.last {
                        q.append_pair("last", l.as_str());
                    }
                }
                self.http.get(url)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.error_from(resp, What::Tags(repo)).await);
        }
        let body = self
            .read_limited(resp, self.opts.max_tag_list_size, "tag list")
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.upstream_err(format!("tag list is not JSON: {e}"), false))?;
        let mut tags: Vec<Tag> = v
            .get("tags")
            .and_then(|t| t.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str())
                    .filter_map(|t| Tag::parse(t).ok())
                    .collect()
            })
            .unwrap_or_default();
        tags.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(tags)
    }
}

/// Whether a transport error was TLS refusing the connection (rustls's
/// error anywhere in its chain, also inside an `io::Error`).
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // An io::Error's source skips the error it wraps: look inside.
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses_and_refuses_junk() {
        assert_eq!(content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(content_range("bytes */100"), None);
        assert_eq!(content_range("items 0-9/100"), None);
    }

    #[test]
    fn oci_error_bodies_parse_and_unknown_codes_are_tolerated() {
        let (c, m) = oci_error(br#"{"errors":[{"code":"DENIED","message":"no"}]}"#);
        assert_eq!((c, m.as_deref()), (Some(ErrorCode::Denied), Some("no")));
        let (c, m) = oci_error(br#"{"errors":[{"code":"SOMETHING_NEW","message":"x"}]}"#);
        assert_eq!((c, m.as_deref()), (None, Some("x")));
        assert_eq!(oci_error(b"<html>"), (None, None));
    }

    #[test]
    fn endpoints_default_to_https_and_docker_hub_api_host() {
        let c = RegistryClient::new(
            Registry::parse("docker.io").unwrap(),
            None,
            None,
            ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(
            c.endpoints[0].base.as_str(),
            "https://registry-1.docker.io/"
        );
        let c = RegistryClient::new(
            Registry::parse("127.0.0.1:5000").unwrap(),
            Some("http://127.0.0.1:5000"),
            None,
            ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(
            c.endpoints[0].url("v2/a/manifests/b").as_str(),
            "http://127.0.0.1:5000/v2/a/manifests/b"
        );
        assert!(
            RegistryClient::new(
                Registry::parse("x.io").unwrap(),
                Some("ftp://x.io"),
                None,
                ClientOptions::default()
            )
            .is_err()
        );
    }
}
