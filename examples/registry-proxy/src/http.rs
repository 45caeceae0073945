//! The server's own HTTP surface around the library's pull service
//! ([`cache_core::server::PullService`]: pull-side auth, scanner scoping,
//! the pull API, blobs sent from files): health endpoints, `/metrics`, the
//! web console at `/ui/` where configured (`cache_core::console`), and
//! the access log and request metrics as a layer around it all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
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

/// The router: `/metrics`, the health endpoints, and everything else
/// (`/v2/...`) answered by the library's [`PullService`], with the
/// state's auth (swapped on reload) and scoped credentials.
pub fn router(state: AppState) -> Router {
    router_with(state, None)
}

/// [`router`], with the web console at `/ui/` when one is given (behind
/// the pull side's authentication: [`console_for_clients`]).
pub fn router_with(state: AppState, console: Option<Console>) -> Router {
    let pull = PullService::new(state.cache.clone())
        .auth_from(state.auth.clone())
        .scoped(state.scoped.clone())
        .realm("registry-proxy");
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if let Some(c) = console {
        app = app.nest_service("/ui", c.router());
    }
    app.fallback_service(pull)
        .layer(middleware::from_fn_with_state(state.clone(), access))
        .with_state(state)
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

/// Counts and logs every response but the health probes'.
async fn access(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    // A clone of the URI shares its bytes: no copy of the path per request.
    let uri = req.uri().clone();
    let path = uri.path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    st.metrics.request(&method, status);
    let cache = resp
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    // Who it was for, as the pull service decided (principals by class in metrics).
    let access = resp.extensions().get::<AccessInfo>();
    if let Some(a) = access {
        st.metrics.access(a.class, a.decision);
    }
    let principal: String = access
        .map_or("-", |a| &a.principal)
        .chars()
        .take(200)
        .collect();
    tracing::info!(%method, path = %Truncated(path), status, cache, principal, elapsed_ms = start.elapsed().as_millis() as u64, "request");
    resp
}

/// At most the first 200 characters of a path, for the log.
struct Truncated<'a>(&'a str);

impl std::fmt::Display for Truncated<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(200) {
            Some((end, _)) => f.write_str(&self.0[..end]),
            None => f.write_str(self.0),
        }
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.cache.inflight()),
    )
        .into_response()
}
