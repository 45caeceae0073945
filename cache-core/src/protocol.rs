//! The pull side of the OCI Distribution API, sans IO: a request head in,
//! a typed [`PullRequest`] out; an engine answer in, a response head out.
//!
//! Any server (axum, actix, hyper, a serverless handler) can serve the
//! pull API with it. [`handle`] does a whole request: it parses the head
//! into a [`PullRequest`], resolves the name, calls the
//! [`PullThroughCache`] and shapes the answer, whose [`Body`] the server
//! turns into its own body type (a blob's bytes as a stream, or a file it
//! may send with `sendfile(2)`). The pieces are public too, for servers
//! that want to add to them. Every malformed input becomes the OCI error
//! the distribution spec names, never a panic or a 5xx:
//!
//! | input | answer |
//! |---|---|
//! | a method other than `GET`/`HEAD` | `405 UNSUPPORTED` |
//! | a push endpoint (`/blobs/uploads/`) | `405 UNSUPPORTED` |
//! | a path that is no pull endpoint | `404 UNSUPPORTED` |
//! | an invalid repository name | `400 NAME_INVALID` |
//! | an invalid blob digest | `400 DIGEST_INVALID` |
//! | a manifest reference that is neither tag nor digest | `404 MANIFEST_UNKNOWN` |
//! | a non-numeric `n` | `400 PAGINATION_NUMBER_INVALID` |
//! | a malformed `Range` | ignored: the whole blob (RFC 9110 §14.2) |
//!
//! Requires the `http` feature.
//!
//! [`PullThroughCache`]: crate::PullThroughCache

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri};

use crate::digest::Digest;
use crate::engine::{
    BlobBody, BlobResponse, Catalog, ManifestResponse, PullThroughCache, Referrers, TagList,
};
use crate::error::{Error, ErrorCode, Result};
use crate::events::CacheStatus;
use crate::names::{Reference, Registry, RepoName, Tag};
use crate::policy::Caller;
use crate::range::ByteRange;
use crate::rules::RuleSet;
use crate::upstream::{Accept, TagPage};

/// `Docker-Distribution-API-Version: registry/2.0`, on every answer.
pub const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// At most this many media types of an `Accept` header are considered.
const MAX_ACCEPT: usize = 64;

/// What a pull request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// The repository as the client named it.
        name: RepoName,
        /// A tag or a digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// The repository as the client named it.
        name: RepoName,
        /// The blob.
        digest: Digest,
    },
    /// `/v2/<name>/tags/list?n=&last=`.
    Tags {
        /// The repository as the client named it.
        name: RepoName,
        /// Which page.
        page: TagPage,
    },
    /// `/v2/<name>/referrers/<digest>?artifactType=`: the OCI 1.1
    /// referrers API.
    Referrers {
        /// The repository as the client named it.
        name: RepoName,
        /// The manifest referred to.
        digest: Digest,
        /// Only referrers of this artifact type.
        artifact_type: Option<String>,
    },
    /// `/v2/_catalog?n=&last=`: the repositories with content in the cache.
    Catalog {
        /// At most this many (`n`).
        limit: Option<usize>,
        /// Only those after this one (`last`).
        last: Option<RepoName>,
    },
}

impl Route {
    /// The repository the request names, if any.
    pub fn name(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog { .. } => None,
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Tags { name, .. }
            | Route::Referrers { name, .. } => Some(name),
        }
    }

    /// A short label for logs and metrics: `base`, `manifest`, `blob`,
    /// `tags`, `referrers`, `catalog`.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
            Route::Catalog { .. } => "catalog",
        }
    }
}

/// A parsed pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// What it asks for.
    pub route: Route,
    /// `HEAD` rather than `GET`.
    pub head: bool,
    /// The upstream registry a mirror request names (`?ns=docker.io`, as
    /// containerd sends): the name is then an upstream repository.
    pub ns: Option<Registry>,
    /// A blob request's single byte range; a malformed one is dropped.
    pub range: Option<ByteRange>,
    /// The manifest media types the client accepts.
    pub accept: Accept,
    /// Digests the client says it holds (`If-None-Match`).
    pub if_none_match: Vec<String>,
}

/// The `Accept` headers of a request as an [`Accept`] set (comma-separated
/// media types, parameters dropped; `*/*` means any).
pub fn accept_from_headers(h: &HeaderMap) -> Accept {
    let types: Vec<&str> = h
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .filter(|t| !t.is_empty())
        .take(MAX_ACCEPT)
        .collect();
    Accept::only(types)
}

/// Decodes `%XX` escapes; anything malformed is kept as it is.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') && !s.contains('+') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first value of query parameter `key`, decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn unsupported(what: String) -> Error {
    Error::Unsupported { what }
}

impl PullRequest {
    /// Parses a request head. Names are never percent-decoded (an encoded
    /// slash or dot is an invalid name); references and digests are, for
    /// clients that encode the `:`.
    pub fn parse(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Self> {
        let path = uri.path();
        let query = uri.query();
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                return Err(unsupported(format!(
                    "{} is not supported by a pull-through cache",
                    truncate(method.as_str())
                )));
            }
        };
        let route = Self::route(path, query)?;
        let ns = match query_param(query, "ns") {
            Some(ns) if !matches!(route, Route::Base) => Some(Registry::parse(&ns)?),
            _ => None,
        };
        let range = match route {
            Route::Blob { .. } => headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| ByteRange::parse_http(v).ok()),
            _ => None,
        };
        let if_none_match = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| {
                t.trim()
                    .trim_start_matches("W/")
                    .trim_matches('"')
                    .to_owned()
            })
            .filter(|t| !t.is_empty())
            .take(MAX_ACCEPT)
            .collect();
        Ok(PullRequest {
            route,
            head,
            ns,
            range,
            accept: accept_from_headers(headers),
            if_none_match,
        })
    }

    fn route(path: &str, query: Option<&str>) -> Result<Route> {
        if path == "/v2" || path == "/v2/" {
            return Ok(Route::Base);
        }
        let unknown = || Error::UnknownEndpoint {
            path: truncate(path),
        };
        let rest = path.strip_prefix("/v2/").ok_or_else(unknown)?;
        fn decode(s: &str) -> std::borrow::Cow<'_, str> {
            if s.contains('%') {
                s.replace("%3A", ":").replace("%3a", ":").into()
            } else {
                s.into()
            }
        }
        let limit = |query| match query_param(query, "n") {
            None => Ok(None),
            Some(n) => n.parse::<usize>().map(Some).map_err(|_| {
                Error::invalid(
                    crate::error::InvalidKind::Pagination,
                    &n,
                    "n must be a non-negative number",
                )
            }),
        };
        if rest == "_catalog" {
            let last = query_param(query, "last")
                .filter(|l| !l.is_empty())
                .map(|l| RepoName::parse(&l))
                .transpose()?;
            return Ok(Route::Catalog {
                limit: limit(query)?,
                last,
            });
        }
        if let Some(i) = rest.rfind("/referrers/") {
            let name = RepoName::parse(&rest[..i])?;
            let digest = Digest::parse(&decode(&rest[i + "/referrers/".len()..]))?;
            // A media type has no spaces: a `+` decoded as one (form
            // encoding) was a `+` (application/vnd...+json).
            let artifact_type = query_param(query, "artifactType")
                .filter(|t| !t.is_empty())
                .map(|t| truncate(&t.replace(' ', "+")));
            return Ok(Route::Referrers {
                name,
                digest,
                artifact_type,
            });
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            let name = RepoName::parse(name)?;
            let limit = limit(query)?;
            let last = query_param(query, "last")
                .filter(|l| !l.is_empty())
                .map(|l| Tag::parse(&l))
                .transpose()?;
            return Ok(Route::Tags {
                name,
                page: TagPage { limit, last },
            });
        }
        if let Some(i) = rest.rfind("/manifests/") {
            let name = RepoName::parse(&rest[..i])?;
            let raw = decode(&rest[i + "/manifests/".len()..]);
            // The distribution spec: a reference that is neither a valid tag
            // nor a digest names no manifest.
            let reference = Reference::parse(&raw)
                .map_err(|_| Error::manifest_unknown(&name, truncate(&raw)))?;
            return Ok(Route::Manifest { name, reference });
        }
        if rest.contains("/blobs/uploads") {
            return Err(unsupported(
                "this is a pull-through cache: push is not supported".into(),
            ));
        }
        if let Some(i) = rest.rfind("/blobs/") {
            let name = RepoName::parse(&rest[..i])?;
            let digest = Digest::parse(&decode(&rest[i + "/blobs/".len()..]))?;
            return Ok(Route::Blob { name, digest });
        }
        Err(unknown())
    }

    /// The local repository this request means: its name, or for a mirror
    /// request (`?ns=`) the local name of the rule whose source declares
    /// that upstream repository. `NAME_UNKNOWN` when no rule does.
    pub fn local_name(&self, rules: &RuleSet) -> Result<Option<RepoName>> {
        let Some(name) = self.route.name() else {
            return Ok(None);
        };
        match &self.ns {
            None => Ok(Some(name.clone())),
            Some(registry) => Ok(Some(rules.resolve_upstream(registry, name)?.local)),
        }
    }

    /// Whether the client already holds `digest` (`If-None-Match`).
    pub fn holds(&self, digest: &Digest) -> bool {
        self.if_none_match.iter().any(|t| t == digest.as_str())
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

// Header names built once: a name outside the standard table is copied
// into a fresh allocation each time it is made from a `&str`.
const DIGEST_HEADER: HeaderName = HeaderName::from_static("docker-content-digest");
const CACHE_HEADER: HeaderName = HeaderName::from_static("x-cache");

/// `"<digest>"`, an entity tag, made in one allocation.
fn etag(digest: &Digest) -> HeaderValue {
    let d = digest.as_str();
    let mut b = bytes::BytesMut::with_capacity(d.len() + 2);
    b.extend_from_slice(b"\"");
    b.extend_from_slice(d.as_bytes());
    b.extend_from_slice(b"\"");
    // A digest is validated: lowercase hex, letters, digits and ':'.
    HeaderValue::from_maybe_shared(b.freeze())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A media type as a header value, without a copy for the common ones.
fn media_type_value(t: &str) -> HeaderValue {
    use crate::media_types as mt;
    for known in [
        "application/octet-stream",
        mt::OCI_MANIFEST,
        mt::OCI_INDEX,
        mt::DOCKER_MANIFEST,
        mt::DOCKER_MANIFEST_LIST,
    ] {
        if t == known {
            return HeaderValue::from_static(known);
        }
    }
    hv(t)
}

fn response<B>(status: StatusCode, body: B) -> Response<B> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    // Room for every header an answer carries, so the map never grows.
    h.reserve(12);
    h.insert(
        HeaderName::from_static(API_VERSION.0),
        HeaderValue::from_static(API_VERSION.1),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn cache_status<B>(r: &mut Response<B>, status: CacheStatus) {
    r.headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(status.as_str()));
}

fn content_headers<B>(r: &mut Response<B>, digest: &Digest, content_type: &str, len: u64) {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, media_type_value(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(DIGEST_HEADER, hv(digest.as_str()));
    h.insert(header::ETAG, etag(digest));
}

/// `200 {}` for `/v2/`.
pub fn base_response() -> Response<Bytes> {
    let mut r = response(StatusCode::OK, Bytes::from_static(b"{}"));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A manifest answer; the body is empty for a `HEAD`.
pub fn manifest_response(m: &ManifestResponse, head: bool) -> Response<Bytes> {
    let body = if head { Bytes::new() } else { m.bytes.clone() };
    let mut r = response(StatusCode::OK, body);
    content_headers(&mut r, &m.digest, &m.media_type, m.bytes.len() as u64);
    cache_status(&mut r, m.status);
    r
}

/// The head of a blob answer: `200`, or `206` with `Content-Range` when
/// `ranged`. The server sends `b`'s bytes (its stream or file) as the body.
pub fn blob_response(digest: &Digest, b: &BlobResponse, ranged: bool) -> Response<()> {
    let status = if ranged {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut r = response(status, ());
    content_headers(
        &mut r,
        digest,
        "application/octet-stream",
        b.range.end - b.range.start,
    );
    r.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if ranged {
        r.headers_mut().insert(
            header::CONTENT_RANGE,
            hv(&format!(
                "bytes {}-{}/{}",
                b.range.start,
                b.range.end.saturating_sub(1),
                b.size
            )),
        );
    }
    cache_status(&mut r, b.status);
    if !b.verified {
        // A passthrough range (cold_ranges = "passthrough"): the bytes came
        // from the upstream before the blob was checked against its digest.
        r.headers_mut()
            .insert(VERIFIED_HEADER, HeaderValue::from_static("false"));
    }
    r
}

/// The header a blob answer carries, `false`, when its bytes were served
/// before the blob was checked against its digest: a passthrough range of
/// a rule with `cold_ranges = "passthrough"` (see
/// [`ColdRanges`](crate::ColdRanges)).
pub const VERIFIED_HEADER: &str = "x-content-verified";

/// A blob `HEAD` answer.
pub fn blob_head_response(digest: &Digest, size: u64, status: CacheStatus) -> Response<()> {
    let mut r = response(StatusCode::OK, ());
    content_headers(&mut r, digest, "application/octet-stream", size);
    r.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    cache_status(&mut r, status);
    r
}

/// `304 Not Modified` for a client that already holds `digest`.
pub fn not_modified_response(digest: &Digest) -> Response<()> {
    let mut r = response(StatusCode::NOT_MODIFIED, ());
    let h = r.headers_mut();
    h.insert(header::ETAG, etag(digest));
    h.insert(DIGEST_HEADER, hv(digest.as_str()));
    r
}

/// A tag list answer, `{"name": ..., "tags": [...]}`, under the name the
/// client asked for.
pub fn tags_response(name: &RepoName, list: &TagList) -> Response<Bytes> {
    let body = serde_json::json!({
        "name": name.as_str(),
        "tags": list.tags.iter().map(Tag::as_str).collect::<Vec<_>>(),
    });
    let mut r = response(StatusCode::OK, Bytes::from(body.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    cache_status(&mut r, list.status);
    r
}

/// A referrers answer: the image index, and `OCI-Filters-Applied:
/// artifactType` when it was filtered.
pub fn referrers_response(r: &Referrers) -> Response<Bytes> {
    let mut resp = response(StatusCode::OK, r.index.clone());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::media_types::OCI_INDEX),
    );
    if r.filtered {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    cache_status(&mut resp, r.status);
    resp
}

/// A catalog page: `{"repositories":[...]}`, with a `Link` to the next
/// page when there is one.
pub fn catalog_response(page: &Catalog, limit: Option<usize>) -> Response<Bytes> {
    let body = serde_json::json!({
        "repositories": page.repositories.iter().map(RepoName::as_str).collect::<Vec<_>>(),
    });
    let mut r = response(StatusCode::OK, Bytes::from(body.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if page.more
        && let Some(last) = page.repositories.last()
    {
        let n = limit.map(|n| format!("&n={n}")).unwrap_or_default();
        r.headers_mut().insert(
            header::LINK,
            hv(&format!("</v2/_catalog?last={last}{n}>; rel=\"next\"")),
        );
    }
    r
}

/// An OCI error body: `{"errors":[{"code":..,"message":..,"detail":null}]}`.
pub fn error_body(code: &str, message: &str) -> Bytes {
    error_body_with(code, message, None)
}

/// An OCI error body with `detail` (`null` for `None`).
pub fn error_body_with(code: &str, message: &str, detail: Option<&serde_json::Value>) -> Bytes {
    Bytes::from(
        serde_json::json!({"errors": [{"code": code, "message": message, "detail": detail}]})
            .to_string(),
    )
}

/// The answer to an error: its HTTP status, an OCI error body, and
/// `Retry-After` when the error says when to try again.
pub fn error_response(e: &Error) -> Response<Bytes> {
    let code = e.code();
    let status = e.http_status();
    let mut r = response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        error_body_with(code.as_str(), &e.to_string(), e.detail()),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(d) = e.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
    }
    if let Some(status) = e.cache_status() {
        cache_status(&mut r, status);
    }
    r
}

/// `401 UNAUTHORIZED` asking for credentials, with `WWW-Authenticate`
/// offering basic auth in `realm`.
pub fn unauthorized_response(realm: &str) -> Response<Bytes> {
    let mut r = response(
        StatusCode::UNAUTHORIZED,
        error_body(ErrorCode::Unauthorized.as_str(), "authentication required"),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        hv(&format!("Basic realm=\"{}\"", realm.replace('"', ""))),
    );
    r
}

/// `401 UNAUTHORIZED` sending the client to a token endpoint (the Docker
/// registry token flow): `WWW-Authenticate: Bearer realm="<realm>",
/// service="<service>"`, with the `scope` it needs and
/// `error="insufficient_scope"` when its token was not for it. Quotes and
/// backslashes are dropped from the values.
///
/// ```
/// let r = cache_core::protocol::bearer_challenge_response(
///     "https://cache.example/token", "cache.example", Some("repository:ci/app:pull"), false);
/// assert_eq!(r.status(), 401);
/// assert_eq!(
///     r.headers()["www-authenticate"],
///     "Bearer realm=\"https://cache.example/token\",service=\"cache.example\",scope=\"repository:ci/app:pull\""
/// );
/// ```
pub fn bearer_challenge_response(
    realm: &str,
    service: &str,
    scope: Option<&str>,
    insufficient_scope: bool,
) -> Response<Bytes> {
    let clean = |s: &str| s.replace(['"', '\\'], "");
    let mut challenge = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        clean(realm),
        clean(service)
    );
    if let Some(scope) = scope {
        challenge.push_str(&format!(",scope=\"{}\"", clean(scope)));
    }
    if insufficient_scope {
        challenge.push_str(",error=\"insufficient_scope\"");
    }
    let message = if insufficient_scope {
        "the token does not name this repository: ask the token endpoint for one that does"
    } else {
        "authentication required"
    };
    let mut r = response(
        StatusCode::UNAUTHORIZED,
        error_body(ErrorCode::Unauthorized.as_str(), message),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, hv(&challenge));
    r
}

/// The body of a pull API answer.
#[derive(Debug)]
pub enum Body {
    /// No body (`HEAD`, `304`).
    Empty,
    /// A small body in memory: a manifest, a tag list, an error.
    Bytes(Bytes),
    /// A blob's bytes: a stream, or a stored file.
    Blob(BlobBody),
}

/// Answers one pull request: parses the head, resolves the repository
/// through the caching rules, asks the cache, and shapes the answer. A
/// failure is an OCI error answer (a fault of the cache or an upstream is
/// also logged).
pub async fn handle(
    cache: &PullThroughCache,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response<Body> {
    handle_for(cache, &Caller::Client, method, uri, headers).await
}

/// [`handle`] for `caller`, whom the server authenticated (a scanner's
/// scoped credential, a principal that may read only cached content; see
/// [`Caller`]). The catalog is answered whole: a server that shows each
/// caller only its own repositories answers it with
/// [`PullThroughCache::catalog_where`] and [`catalog_response`].
pub async fn handle_for(
    cache: &PullThroughCache,
    caller: &Caller,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response<Body> {
    match answer(cache, caller, method, uri, headers).await {
        Ok(r) => r,
        Err(e) => {
            if !e.is_client_error() {
                tracing::warn!(error = %e, "request failed");
            }
            error_response(&e).map(Body::Bytes)
        }
    }
}

async fn answer(
    cache: &PullThroughCache,
    caller: &Caller,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response<Body>> {
    let req = PullRequest::parse(method, uri, headers)?;
    if let Route::Catalog { limit, last } = &req.route {
        let page = cache.catalog(*limit, last.as_ref()).await?;
        return Ok(catalog_response(&page, *limit).map(Body::Bytes));
    }
    let Some(name) = req.local_name(&cache.rules())? else {
        return Ok(base_response().map(Body::Bytes));
    };
    let empty = |r: Response<()>| r.map(|()| Body::Empty);
    match &req.route {
        Route::Manifest { reference, .. } => {
            let m = cache
                .manifest_for(&name, reference, &req.accept, caller)
                .await?;
            Ok(manifest_response(&m, req.head).map(Body::Bytes))
        }
        Route::Blob { digest, .. } if req.holds(digest) => {
            // The client already holds these bytes; a rule must still declare the name.
            cache.rules().resolve(&name)?;
            Ok(empty(not_modified_response(digest)))
        }
        Route::Blob { digest, .. } if req.head => {
            let (size, status) = cache.head_blob_for(&name, digest, caller).await?;
            Ok(empty(blob_head_response(digest, size, status)))
        }
        Route::Blob { digest, .. } => {
            let b = cache.blob_for(&name, digest, req.range, caller).await?;
            let head = blob_response(digest, &b, req.range.is_some());
            Ok(head.map(|()| Body::Blob(b.body)))
        }
        Route::Tags { name: asked, page } => {
            let list = cache.tags_for(&name, page, caller).await?;
            Ok(tags_response(asked, &list).map(Body::Bytes))
        }
        Route::Referrers {
            digest,
            artifact_type,
            ..
        } => {
            let r = cache
                .referrers_for(&name, digest, artifact_type.as_deref(), caller)
                .await?;
            let mut resp = referrers_response(&r);
            if req.head {
                *resp.body_mut() = Bytes::new();
            }
            Ok(resp.map(Body::Bytes))
        }
        Route::Base | Route::Catalog { .. } => Ok(base_response().map(Body::Bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(method: &str, uri: &str) -> Result<PullRequest> {
        parse_with(method, uri, &HeaderMap::new())
    }

    fn parse_with(method: &str, uri: &str, h: &HeaderMap) -> Result<PullRequest> {
        PullRequest::parse(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &uri.parse().unwrap(),
            h,
        )
    }

    fn status(r: Result<PullRequest>) -> (u16, &'static str) {
        let e = r.unwrap_err();
        (e.http_status(), e.code().as_str())
    }

    #[test]
    fn routes_parse_nested_names_and_refuse_encoded_slashes() {
        assert_eq!(parse("GET", "/v2/").unwrap().route, Route::Base);
        let r = parse("GET", "/v2/a/b/manifests/latest").unwrap();
        assert_eq!(r.route.name().unwrap().as_str(), "a/b");
        let r = parse("HEAD", "/v2/a/blobs/sha256%3A".to_owned().as_str());
        assert_eq!(status(r), (400, "DIGEST_INVALID"));
        let d = Digest::sha256_of(b"x");
        let r = parse(
            "GET",
            &format!("/v2/a/blobs/{}", d.as_str().replace(':', "%3A")),
        )
        .unwrap();
        assert_eq!(
            r.route,
            Route::Blob {
                name: RepoName::parse("a").unwrap(),
                digest: d
            }
        );
        assert_eq!(
            status(parse("GET", "/v2/a%2Fb/manifests/x")),
            (400, "NAME_INVALID")
        );
        assert_eq!(status(parse("GET", "/etc/passwd")), (404, "UNSUPPORTED"));
        assert_eq!(
            status(parse("POST", "/v2/a/blobs/uploads/")),
            (405, "UNSUPPORTED")
        );
        assert_eq!(
            status(parse("PUT", "/v2/a/manifests/x")),
            (405, "UNSUPPORTED")
        );
        assert_eq!(
            status(parse("GET", "/v2/a/blobs/uploads/x")),
            (405, "UNSUPPORTED")
        );
    }

    #[test]
    fn an_invalid_reference_is_manifest_unknown_as_in_the_distribution_spec() {
        assert_eq!(
            status(parse("GET", "/v2/a/manifests/.INVALID_MANIFEST_NAME")),
            (404, "MANIFEST_UNKNOWN")
        );
        assert_eq!(
            status(parse("GET", "/v2/a/manifests/sha256:zz")),
            (404, "MANIFEST_UNKNOWN")
        );
    }

    #[test]
    fn queries_give_pages_and_mirror_namespaces() {
        let r = parse("GET", "/v2/a/tags/list?n=5&last=v1").unwrap();
        assert_eq!(
            r.route,
            Route::Tags {
                name: RepoName::parse("a").unwrap(),
                page: TagPage {
                    limit: Some(5),
                    last: Some(Tag::parse("v1").unwrap())
                }
            }
        );
        assert_eq!(
            status(parse("GET", "/v2/a/tags/list?n=lots")),
            (400, "PAGINATION_NUMBER_INVALID")
        );
        let r = parse("GET", "/v2/library/nginx/manifests/latest?ns=docker.io").unwrap();
        assert_eq!(r.ns.unwrap().as_str(), "docker.io");
        assert_eq!(
            status(parse("GET", "/v2/a/manifests/x?ns=%2F%2F")),
            (400, "NAME_INVALID")
        );
    }

    #[test]
    fn a_malformed_range_is_ignored_and_a_valid_one_kept() {
        let d = Digest::sha256_of(b"x");
        let uri = format!("/v2/a/blobs/{d}");
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=oops"));
        assert_eq!(parse_with("GET", &uri, &h).unwrap().range, None);
        h.insert(header::RANGE, HeaderValue::from_static("bytes=5-"));
        assert_eq!(
            parse_with("GET", &uri, &h).unwrap().range,
            Some(ByteRange::From(5))
        );
    }

    #[test]
    fn accept_lists_drop_parameters_and_star_means_any() {
        let mut h = HeaderMap::new();
        h.append(header::ACCEPT, HeaderValue::from_static("a/b; q=0.5, c/d"));
        let a = accept_from_headers(&h);
        assert!(a.admits("a/b") && a.admits("c/d") && !a.admits("e/f"));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accept_from_headers(&h).admits("e/f"));
        assert!(
            accept_from_headers(&HeaderMap::new()).admits("e/f"),
            "no header: any"
        );
    }

    #[test]
    fn error_responses_carry_the_code_status_and_retry_after() {
        let e = Error::unavailable("full", Some(std::time::Duration::from_secs(3)));
        let r = error_response(&e);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
    }

    /// The path a route came from, for the round trip.
    fn path_of(r: &Route) -> String {
        match r {
            Route::Base => "/v2/".into(),
            Route::Manifest { name, reference } => format!("/v2/{name}/manifests/{reference}"),
            Route::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
            Route::Tags { name, page } => {
                let mut q = Vec::new();
                if let Some(n) = page.limit {
                    q.push(format!("n={n}"));
                }
                if let Some(l) = &page.last {
                    q.push(format!("last={l}"));
                }
                let q = if q.is_empty() {
                    String::new()
                } else {
                    format!("?{}", q.join("&"))
                };
                format!("/v2/{name}/tags/list{q}")
            }
            Route::Referrers {
                name,
                digest,
                artifact_type,
            } => match artifact_type {
                Some(t) => format!("/v2/{name}/referrers/{digest}?artifactType={t}"),
                None => format!("/v2/{name}/referrers/{digest}"),
            },
            Route::Catalog { limit, last } => {
                let mut q = Vec::new();
                if let Some(n) = limit {
                    q.push(format!("n={n}"));
                }
                if let Some(l) = last {
                    q.push(format!("last={l}"));
                }
                format!("/v2/_catalog?{}", q.join("&"))
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]

        #[test]
        fn no_request_head_makes_the_parser_panic(
            method in "[A-Z]{1,8}",
            path in "(/v2/)?[ -~]{0,120}",
            query in proptest::option::of("[ -~]{0,60}"),
            range in proptest::option::of("[ -~]{0,40}"),
        ) {
            let uri = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
            let Ok(uri) = uri.parse::<Uri>() else { return Ok(()); };
            let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Ok(()); };
            let mut h = HeaderMap::new();
            if let Some(r) = range.and_then(|r| HeaderValue::from_str(&r).ok()) {
                h.insert(header::RANGE, r);
            }
            if let Err(e) = PullRequest::parse(&method, &uri, &h) {
                prop_assert!(e.is_client_error(), "{} for {uri}", e);
            }
        }

        #[test]
        fn every_accepted_path_round_trips(
            name in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}",
            kind in 0u8..7,
            tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
            n in proptest::option::of(0usize..1000),
        ) {
            let path = match kind {
                0 => "/v2/".to_owned(),
                1 => format!("/v2/{name}/manifests/{tag}"),
                2 => format!("/v2/{name}/blobs/{}", Digest::sha256_of(tag.as_bytes())),
                3 => format!("/v2/{name}/tags/list{}", n.map(|n| format!("?n={n}")).unwrap_or_default()),
                4 => format!("/v2/{name}/referrers/{}", Digest::sha256_of(tag.as_bytes())),
                5 => format!(
                    "/v2/{name}/referrers/{}?artifactType=application/vnd.{tag}+json",
                    Digest::sha256_of(tag.as_bytes())
                ),
                _ => format!("/v2/_catalog?last={name}{}", n.map(|n| format!("&n={n}")).unwrap_or_default()),
            };
            let r = parse("GET", &path).unwrap();
            let again = parse("GET", &path_of(&r.route)).unwrap();
            prop_assert_eq!(r.route, again.route);
        }
    }
}
