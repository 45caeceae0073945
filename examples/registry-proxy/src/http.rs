//! The pull side of the OCI Distribution API: `cache_core::protocol`
//! answers each request; this module adds pull-side auth, metrics and the
//! access log, and sends blob bodies from files where it can.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cache_core::PullThroughCache;
use cache_core::protocol;

use crate::auth::PullAuth;
use crate::metrics::Metrics;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The engine.
    pub cache: PullThroughCache,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Pull-side auth, if configured.
    pub auth: Option<Arc<PullAuth>>,
}

/// The router: `/v2/...` and `/metrics`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(state.clone(), access))
        .with_state(state)
}

/// Authenticates `/v2` requests, counts and logs every response.
async fn access(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let needs_auth = path == "/v2" || path.starts_with("/v2/");
    let resp = match &st.auth {
        Some(auth) if needs_auth && !auth.check(req.headers()).await => {
            protocol::unauthorized_response("registry-proxy").map(Body::from)
        }
        _ => next.run(req).await,
    };
    let status = resp.status().as_u16();
    st.metrics.request(&method, status);
    let cache = resp
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info!(%method, path = %path.chars().take(200).collect::<String>(), status, cache, elapsed_ms = start.elapsed().as_millis() as u64, "request");
    resp
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.cache.inflight()),
    )
        .into_response()
}

async fn dispatch(State(st): State<AppState>, req: Request) -> Response {
    // A pull has no body worth reading: keep the head, by value.
    let (parts, _) = req.into_parts();
    let resp = protocol::handle(&st.cache, &parts.method, &parts.uri, &parts.headers).await;
    resp.map(|body| match body {
        protocol::Body::Empty => Body::empty(),
        protocol::Body::Bytes(b) => Body::from(b),
        protocol::Body::Blob(b) => crate::sendfile::blob_body(b, &parts.extensions),
    })
}
