//! The pull side of the OCI Distribution API: `cache_core::protocol` parses
//! each request and shapes each answer; this module only calls the engine
//! and attaches bodies.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Extensions, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cache_core::protocol::{self, PullRequest, Route};
use cache_core::{Error, PullThroughCache};

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
    match serve(
        &st.cache,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &parts.extensions,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            if !e.is_client_error() {
                tracing::warn!(error = %e, "request failed");
            }
            protocol::error_response(&e).map(Body::from)
        }
    }
}

async fn serve(
    cache: &PullThroughCache,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
    extensions: &Extensions,
) -> Result<Response, Error> {
    let req = PullRequest::parse(method, uri, headers)?;
    let name = req.local_name(cache.rules())?;
    let (route, name) = match (&req.route, name) {
        (Route::Base, _) => return Ok(protocol::base_response().map(Body::from)),
        (route, Some(name)) => (route, name),
        (_, None) => unreachable!("every route but Base names a repository"),
    };
    match route {
        Route::Manifest { reference, .. } => {
            let m = cache
                .manifest(&name, reference, &req.accept.as_strs())
                .await?;
            Ok(protocol::manifest_response(&m, req.head).map(Body::from))
        }
        Route::Blob { digest, .. } if req.holds(digest) => {
            // The client already holds these bytes; a rule must still declare the name.
            cache.rules().resolve(&name)?;
            Ok(protocol::not_modified_response(digest).map(|()| Body::empty()))
        }
        Route::Blob { digest, .. } if req.head => {
            let (size, status) = cache.head_blob(&name, digest).await?;
            Ok(protocol::blob_head_response(digest, size, status).map(|()| Body::empty()))
        }
        Route::Blob { digest, .. } => {
            let b = cache.blob(&name, digest, req.range).await?;
            let head = protocol::blob_response(digest, &b, req.range.is_some());
            Ok(head.map(|()| crate::sendfile::blob_body(b.body, extensions)))
        }
        Route::Tags { name: asked, page } => {
            let list = cache.tags(&name, page).await?;
            Ok(protocol::tags_response(asked, &list).map(Body::from))
        }
        Route::Base => unreachable!("answered above"),
    }
}
