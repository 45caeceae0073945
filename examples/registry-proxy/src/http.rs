//! The pull side of the OCI Distribution API, mapped onto the engine.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cache_core::{
    BlobResponse, ByteRange, CacheStatus, Digest, Error, ErrorCode, InvalidKind, PullThroughCache,
    Reference, Registry, RepoName, Tag, TagPage,
};

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

const API_VERSION: &str = "registry/2.0";

/// The router: `/v2/...`, `/metrics`.
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
            let mut r = oci_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"registry-proxy\""),
            );
            r
        }
        _ => next.run(req).await,
    };
    let status = resp.status().as_u16();
    st.metrics.request(method.as_str(), status);
    let cache = resp
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info!(%method, %path, status, cache, elapsed_ms = start.elapsed().as_millis() as u64, "request");
    resp
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.cache.inflight()),
    )
        .into_response()
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    r
}

/// Maps an engine error to an OCI error response: a client's mistake is a
/// 4xx with its code, an upstream failure a 502, 503 or 504 with the reason.
fn error_response(e: &Error) -> Response {
    let code = e.code();
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::warn!(error = %e, "request failed");
    }
    let mut r = oci_error(status, code.as_str(), &e.to_string());
    if let Some(d) = e.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
    }
    r
}

fn with_common(mut r: Response, status: Option<CacheStatus>) -> Response {
    let h = r.headers_mut();
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    if let Some(s) = status {
        h.insert("x-cache", HeaderValue::from_static(s.as_str()));
    }
    r
}

/// The request path, parsed. Names are never percent-decoded (an encoded
/// slash or dot is refused as an invalid name); references and digests are,
/// for clients that encode the `:`.
enum Route<'a> {
    Base,
    Manifest(&'a str, String),
    Blob(&'a str, String),
    Uploads,
    Tags(&'a str),
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    if path == "/v2" || path == "/v2/" {
        return Route::Base;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Unknown;
    };
    let decode = |s: &str| s.replace("%3A", ":").replace("%3a", ":");
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::Tags(name);
    }
    if let Some(i) = rest.rfind("/manifests/") {
        return Route::Manifest(&rest[..i], decode(&rest[i + "/manifests/".len()..]));
    }
    if rest.contains("/blobs/uploads") {
        return Route::Uploads;
    }
    if let Some(i) = rest.rfind("/blobs/") {
        return Route::Blob(&rest[..i], decode(&rest[i + "/blobs/".len()..]));
    }
    Route::Unknown
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The local repository a request means: the name itself, or for a mirror
/// request (`?ns=registry`, as containerd sends) the local name of the rule
/// whose source declares that upstream repository.
fn local_name(
    cache: &PullThroughCache,
    name: &str,
    query: Option<&str>,
) -> Result<RepoName, Error> {
    let repo = RepoName::parse(name)?;
    match query_param(query, "ns") {
        None => Ok(repo),
        Some(ns) => {
            let registry = Registry::parse(ns)?;
            Ok(cache.rules().resolve_upstream(&registry, &repo)?.local)
        }
    }
}

async fn dispatch(State(st): State<AppState>, req: Request) -> Response {
    // A pull has no body worth reading: keep the head, by value.
    let (parts, _) = req.into_parts();
    let (method, headers, extensions) = (parts.method, parts.headers, parts.extensions);
    let query = parts.uri.query();
    let path = parts.uri.path();
    let r = route(path);
    let read_only = method == Method::GET || method == Method::HEAD;
    match r {
        Route::Unknown => {
            return oci_error(
                StatusCode::NOT_FOUND,
                "UNSUPPORTED",
                &format!("no such endpoint: {path}"),
            );
        }
        Route::Uploads => {
            return oci_error(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported.as_str(),
                "this is a pull-through cache: push is not supported",
            );
        }
        _ if !read_only => {
            return oci_error(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported.as_str(),
                &format!("{method} is not supported by a pull-through cache"),
            );
        }
        _ => {}
    }
    let head = method == Method::HEAD;
    let result = match r {
        Route::Base => Ok(with_common(
            (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response(),
            None,
        )),
        Route::Manifest(name, reference) => {
            manifest(&st, name, &reference, query, &headers, head).await
        }
        Route::Blob(name, digest) => {
            blob(&st, name, &digest, query, &headers, &extensions, head).await
        }
        Route::Tags(name) => tags(&st, name, query).await,
        Route::Uploads | Route::Unknown => unreachable!("answered above"),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

fn accept_list(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

async fn manifest(
    st: &AppState,
    name: &str,
    reference: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, Error> {
    let name = local_name(&st.cache, name, query)?;
    let reference = Reference::parse(reference)?;
    let accept = accept_list(headers);
    let accept: Vec<&str> = accept.iter().map(String::as_str).collect();
    let m = st.cache.manifest(&name, &reference, &accept).await?;
    let len = m.bytes.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.bytes)
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&m.media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert("docker-content-digest", hv(m.digest.as_str()));
    h.insert(header::ETAG, hv(&format!("\"{}\"", m.digest)));
    Ok(with_common(r, Some(m.status)))
}

fn if_none_match(h: &HeaderMap, d: &Digest) -> bool {
    h.get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().trim_start_matches("W/").trim_matches('"') == d.as_str())
}

async fn blob(
    st: &AppState,
    name: &str,
    digest: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    extensions: &Extensions,
    head: bool,
) -> Result<Response, Error> {
    let name = local_name(&st.cache, name, query)?;
    let digest = Digest::parse(digest)?;
    if if_none_match(headers, &digest) {
        // The client already holds these bytes; the rule must still declare the name.
        st.cache.rules().resolve(&name)?;
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut()
            .insert(header::ETAG, hv(&format!("\"{digest}\"")));
        r.headers_mut()
            .insert("docker-content-digest", hv(digest.as_str()));
        return Ok(with_common(r, None));
    }
    let common = |r: &mut Response, d: &Digest| {
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert("docker-content-digest", hv(d.as_str()));
        h.insert(header::ETAG, hv(&format!("\"{d}\"")));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    };
    if head {
        let (size, status) = st.cache.head_blob(&name, &digest).await?;
        let mut r = Response::new(Body::empty());
        common(&mut r, &digest);
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        return Ok(with_common(r, Some(status)));
    }
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| Error::invalid(InvalidKind::Range, "<non-ASCII>", "not ASCII"))?;
            Some(ByteRange::parse_http(s)?)
        }
    };
    let b = st.cache.blob(&name, &digest, range).await?;
    let len = b.range.end - b.range.start;
    let (size, span, status) = (b.size, b.range.clone(), b.status);
    let mut r = Response::new(blob_body(b, extensions));
    common(&mut r, &digest);
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        r.headers_mut().insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {}-{}/{size}", span.start, span.end - 1)),
        );
    }
    Ok(with_common(r, Some(status)))
}

/// A blob response's body: sent straight from the stored file where the
/// connection can do that (HTTP/1 on Linux, see [`crate::sendfile`]),
/// else streamed.
fn blob_body(b: BlobResponse, extensions: &Extensions) -> Body {
    if let (Some(file), Some(spans)) = (b.file, extensions.get::<crate::sendfile::Spans>()) {
        return Body::from_stream(crate::sendfile::body(file, spans.clone()));
    }
    Body::from_stream(b.stream)
}

async fn tags(st: &AppState, name: &str, query: Option<&str>) -> Result<Response, Error> {
    let local = local_name(&st.cache, name, query)?;
    let limit = match query_param(query, "n") {
        None => None,
        Some(n) => match n.parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => {
                return Ok(oci_error(
                    StatusCode::BAD_REQUEST,
                    "PAGINATION_NUMBER_INVALID",
                    &format!("n = {n:?} is not a number"),
                ));
            }
        },
    };
    let last = query_param(query, "last").map(Tag::parse).transpose()?;
    let list = st.cache.tags(&local, &TagPage { limit, last }).await?;
    let body = serde_json::json!({
        "name": name,
        "tags": list.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
    });
    Ok(with_common(
        axum::Json(body).into_response(),
        Some(list.status),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_nested_names_and_refuse_encoded_slashes() {
        assert!(matches!(route("/v2/"), Route::Base));
        assert!(
            matches!(route("/v2/a/b/manifests/latest"), Route::Manifest("a/b", ref r) if r == "latest")
        );
        assert!(
            matches!(route("/v2/a/blobs/sha256%3Aab"), Route::Blob("a", ref d) if d == "sha256:ab")
        );
        assert!(matches!(route("/v2/a/tags/list"), Route::Tags("a")));
        assert!(matches!(route("/v2/a/blobs/uploads/"), Route::Uploads));
        assert!(matches!(
            route("/v2/a%2Fb/manifests/x"),
            Route::Manifest("a%2Fb", _)
        ));
        assert!(RepoName::parse("a%2Fb").is_err());
        assert!(matches!(route("/etc/passwd"), Route::Unknown));
    }
}
