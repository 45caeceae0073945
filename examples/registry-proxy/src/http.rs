//! The pull side of the OCI Distribution API: `cache_core::protocol`
//! answers each request; this module adds pull-side auth, metrics and the
//! access log, and sends blob bodies from files where it can.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cache_core::protocol;
use cache_core::{Caller, Error, PullThroughCache};

use crate::auth::{PullAuth, ScopedTokens};
use crate::metrics::Metrics;

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

/// The router: `/v2/...`, `/metrics`, and the health endpoints.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(state.clone(), access))
        .with_state(state)
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

/// Authenticates `/v2` requests, counts and logs every response but the
/// health probes'.
///
/// A scanner's scoped credential (see [`ScopedTokens`]) makes the request a
/// [`Caller::Scanner`] for its repository, with or without pull-side auth;
/// it reads that repository and the API base, and nothing else (`403`).
async fn access(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let needs_auth = path == "/v2" || path.starts_with("/v2/");
    let scope = if needs_auth {
        st.scoped.scope(req.headers())
    } else {
        None
    };
    let auth = st.auth.load_full();
    let resp = match (scope, auth) {
        (Some(repository), _) => {
            let parsed = protocol::PullRequest::parse(req.method(), req.uri(), req.headers());
            let within = match &parsed {
                Ok(p) => {
                    p.ns.is_none()
                        && match p.route.name() {
                            Some(name) => *name == repository,
                            None => p.route == protocol::Route::Base,
                        }
                }
                // The handler answers a malformed request as for anyone.
                Err(_) => true,
            };
            if within {
                req.extensions_mut().insert(Caller::Scanner { repository });
                next.run(req).await
            } else {
                protocol::error_response(&Error::denied(format!(
                    "this credential pulls {repository} only"
                )))
                .map(Body::from)
            }
        }
        (None, Some(auth)) if needs_auth && !auth.check(req.headers()).await => {
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
    let caller = parts
        .extensions
        .get::<Caller>()
        .cloned()
        .unwrap_or_default();
    let resp = protocol::handle_for(
        &st.cache,
        &caller,
        &parts.method,
        &parts.uri,
        &parts.headers,
    )
    .await;
    resp.map(|body| match body {
        protocol::Body::Empty => Body::empty(),
        protocol::Body::Bytes(b) => Body::from(b),
        protocol::Body::Blob(b) => crate::sendfile::blob_body(b, &parts.extensions),
    })
}
