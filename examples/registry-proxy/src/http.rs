//! The server's own HTTP surface around the library's pull service
//! ([`cache_core::server::PullService`]: pull-side auth, scanner scoping,
//! the pull API, blobs sent from files): health endpoints, `/metrics`, the
//! web console at `/ui/` where configured (`cache_core::console`), and
//! the access log and request metrics around it all ([`App`]). Pull
//! requests skip the router: a warm manifest is answered in a few tens of
//! microseconds, and axum's routing, middleware and boxing were about a
//! sixth of that (BENCHMARKS.md, "Warm small requests").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cache_core::PullThroughCache;
use cache_core::console::{Console, PullAuthAccess};
use cache_core::server::{AccessInfo, PullService};

use crate::metrics::Metrics;
use cache_core::server::{PullAuth, ScopedTokens};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The engine.
    pub cache: PullThroughCache,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Pull-side auth, if configured (a reload replaces it).
    pub auth: Arc<ArcSwapOption<PullAuth>>,
    /// Whether the server is draining (after SIGTERM: not ready).
    pub draining: Arc<AtomicBool>,
    /// Pull credentials issued to vulnerability scanners.
    pub scoped: Arc<ScopedTokens>,
}

/// The server's HTTP service over `state`: the pull API (`/v2/...`,
/// `/token`) answered by the library's [`PullService`] with the state's
/// auth (swapped on reload) and scoped credentials, `/metrics`, the health
/// endpoints, and the API's `404` for any other path.
pub fn app(state: AppState) -> App {
    App::new(state, None)
}

/// The server's HTTP service: [`app`]'s, with the web console at `/ui/`
/// where one is given (behind the pull side's authentication:
/// [`console_for_clients`]). Every response but the health probes' is
/// counted and logged (one access line per request).
///
/// Requests under `/v2` go straight to the pull service; the rest through
/// an axum router. Clones share everything.
#[derive(Debug, Clone)]
pub struct App {
    inner: Arc<AppInner>,
    timeout: Option<Duration>,
}

#[derive(Debug)]
struct AppInner {
    state: AppState,
    pull: PullService,
    router: Router,
}

impl App {
    /// The service over `state`, with `console` at `/ui/` if given.
    pub fn new(state: AppState, console: Option<Console>) -> Self {
        let pull = PullService::new(state.cache.clone())
            .auth_from(state.auth.clone())
            .scoped(state.scoped.clone())
            .realm("registry-proxy");
        let mut router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz));
        if let Some(c) = console {
            router = router.nest_service("/ui", c.router());
        }
        let router = router
            .fallback_service(pull.clone())
            .with_state(state.clone());
        App {
            inner: Arc::new(AppInner {
                state,
                pull,
                router,
            }),
            timeout: None,
        }
    }

    /// Answers `504 Gateway Timeout` to a request whose response head is
    /// not ready within `limit` (a body already streaming is not cut).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }
}

impl<B> tower::Service<Request<B>> for App
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (app, timeout) = (self.inner.clone(), self.timeout);
        Box::pin(async move {
            let path = req.uri().path();
            if path == "/healthz" || path == "/readyz" {
                return app.route(req).await;
            }
            let start = Instant::now();
            let method = req.method().clone();
            // A clone of the URI shares its bytes: no copy of the path.
            let uri = req.uri().clone();
            let pull = path == "/v2" || path.starts_with("/v2/") || path == "/token";
            let answer = async {
                match pull {
                    true => app.pull.answer(req).await,
                    false => app.route(req).await.unwrap_or_else(|e| match e {}),
                }
            };
            let resp = match timeout {
                Some(limit) => tokio::time::timeout(limit, answer)
                    .await
                    .unwrap_or_else(|_| StatusCode::GATEWAY_TIMEOUT.into_response()),
                None => answer.await,
            };
            app.log(&method, uri.path(), &resp, start);
            Ok(resp)
        })
    }
}

impl AppInner {
    /// Through the router: metrics, health, the console, other paths.
    async fn route<B>(&self, req: Request<B>) -> Result<Response, std::convert::Infallible>
    where
        B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        use tower::ServiceExt as _;
        self.router
            .clone()
            .oneshot(req.map(axum::body::Body::new))
            .await
    }

    /// Counts the response and writes its access line.
    fn log(&self, method: &axum::http::Method, path: &str, resp: &Response, start: Instant) {
        let status = resp.status().as_u16();
        let metrics = &self.state.metrics;
        metrics.request(method, status);
        let cache = resp
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        // Who it was for, as the pull service decided (principals by class in metrics).
        let access = resp.extensions().get::<AccessInfo>();
        if let Some(a) = access {
            metrics.access(a.class, a.decision);
        }
        crate::logging::access(&crate::logging::AccessLine {
            method: method.as_str(),
            path: clip(path),
            status,
            cache,
            principal: clip(access.map_or("-", |a| &a.principal)),
            elapsed_ms: start.elapsed().as_millis() as u64,
        });
    }
}

/// The web console over the state's cache, its overview fed by the
/// state's metrics (the store's quota included), `page_size` rows a page.
pub fn console(state: &AppState, page_size: usize) -> Console {
    let metrics = state.metrics.clone();
    Console::new(state.cache.clone())
        .page_size(page_size)
        .figures(move || metrics.figures())
}

/// [`console`] for the main listener: who may pull may look, and sees
/// what they may pull (the pull side's authentication, swapped on reload).
pub fn console_for_clients(state: &AppState, page_size: usize) -> Console {
    console(state, page_size).access(PullAuthAccess::new(state.auth.clone()))
}

/// `200` while the process serves at all.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `200` when the store answers and the server is not draining, else `503`
/// with the reason.
pub async fn readyz(State(st): State<AppState>) -> Response {
    if st.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let probe = cache_core::Digest::sha256_of(b"");
    match tokio::time::timeout(Duration::from_secs(2), st.cache.store().stat(&probe)).await {
        Ok(Ok(_)) => "ready\n".into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store: no answer within 2s\n",
        )
            .into_response(),
    }
}

/// At most the first 200 characters of `s`, for the log (a slice: no copy).
fn clip(s: &str) -> &str {
    if s.len() <= 200 {
        return s;
    }
    match s.char_indices().nth(200) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.cache.inflight()),
    )
        .into_response()
}
