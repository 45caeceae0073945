//! A hostile upstream registry, in process, for the faults a real registry
//! will not produce on demand: flipped bytes, truncated or stalled bodies,
//! resets, error statuses, redirects anywhere, lying headers, huge bodies,
//! token realms on other hosts. It serves the pull API over real HTTP on a
//! loopback address of the test's choosing (127.0.0.x), counts every
//! request, and records the `Authorization` each one carried.
//!
//! It runs on its own runtime thread, so synchronous and asynchronous tests
//! use it alike; it stops when dropped.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cache_core::{Digest, media_types};
use futures::StreamExt;

/// A misbehaviour applied to one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFault {
    /// Flip the lowest bit of the byte at this offset of the content.
    FlipByte(u64),
    /// Announce the whole length, send this many body bytes, then close.
    Truncate(u64),
    /// Send this many body bytes, then nothing more, keeping the connection open.
    Stall(u64),
    /// Send the headers, then reset the connection before any body byte.
    Reset,
    /// Never answer (no headers), keeping the connection open.
    Hang,
    /// Answer with this status and an OCI error body.
    Status(u16),
    /// Answer 429 with `Retry-After` of this many seconds.
    TooManyRequests(u64),
    /// Answer `307 Temporary Redirect` to this URL.
    Redirect(String),
    /// Send the body in pieces of `chunk` bytes with `delay` between them.
    Drip {
        /// Bytes per piece.
        chunk: usize,
        /// Pause between pieces.
        delay: Duration,
    },
    /// Serve the real content with this `Content-Type`.
    ContentType(String),
    /// Serve the real content with this `Docker-Content-Digest`.
    DigestHeader(String),
    /// Answer with this status and a body of this many (junk) bytes.
    HugeBody {
        /// The status.
        status: u16,
        /// The body's length.
        bytes: u64,
    },
    /// Answer 200 with this body instead of the real content.
    Body(Bytes),
}

/// One request as the registry saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    manifests: HashMap<String, (Bytes, String)>,
    tags: HashMap<String, String>,
    blobs: HashMap<String, Bytes>,
    faults: Vec<(String, VecDeque<WireFault>)>,
    seen: Vec<SeenRequest>,
    token_realm: Option<String>,
    token_body: Option<Bytes>,
    drip: Option<(usize, Duration)>,
    /// Content bodies at most this many bytes per second, each request.
    bytes_per_sec: Option<u64>,
    basic: Vec<String>,
    /// (limit, remaining, window seconds): Docker Hub's pull budget.
    rate: Option<(u64, u64, u64)>,
    /// `repo@digest` -> the referrers index the referrers API answers.
    referrers: HashMap<String, Bytes>,
}

/// What [`HostileRegistry::push_image`] created.
#[derive(Debug, Clone)]
pub struct HostileImage {
    /// The manifest's digest.
    pub manifest: Digest,
    /// The config blob's digest.
    pub config: Digest,
    /// The layers' digests and contents.
    pub layers: Vec<(Digest, Bytes)>,
}

/// The running hostile registry. See the module docs.
#[derive(Debug)]
pub struct HostileRegistry {
    state: Arc<Mutex<StateHandle>>,
    server: super::Served,
}

struct StateHandle(State);

impl std::fmt::Debug for StateHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

fn lock(s: &Mutex<StateHandle>) -> std::sync::MutexGuard<'_, StateHandle> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl HostileRegistry {
    /// Starts one on `ip` (a loopback address such as `127.0.0.2`) and a free port.
    pub fn start(ip: &str) -> Self {
        let state = Arc::new(Mutex::new(StateHandle(State::default())));
        let shared = state.clone();
        let server = super::Served::start(ip, move |addr| {
            axum::Router::new().fallback(move |req: Request| {
                let state = shared.clone();
                async move { Ok::<_, Infallible>(handle(state, addr, req).await) }
            })
        });
        HostileRegistry { state, server }
    }

    /// `IP:PORT`, the registry name rules use.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// `http://IP:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Serves `data` as a blob of every repository, under its digest.
    pub fn add_blob(&self, data: impl Into<Bytes>) -> Digest {
        let data = data.into();
        let d = Digest::sha256_of(&data);
        self.add_blob_as(&d, data);
        d
    }

    /// Serves `data` under `digest`, whatever it hashes to.
    pub fn add_blob_as(&self, digest: &Digest, data: impl Into<Bytes>) {
        lock(&self.state)
            .0
            .blobs
            .insert(digest.to_string(), data.into());
    }

    /// Stops serving a blob (a long-running harness keeps its memory flat).
    pub fn remove_blob(&self, digest: &Digest) {
        lock(&self.state).0.blobs.remove(digest.as_str());
        lock(&self.state)
            .0
            .faults
            .retain(|(part, _)| !part.contains(digest.as_str()));
    }

    /// Answers `GET /v2/<repo>/referrers/<digest>` with `index` (an OCI
    /// image index); without one, the referrers API answers 404 as a
    /// registry without it does.
    pub fn set_referrers(&self, repo: &str, digest: &Digest, index: impl Into<Bytes>) {
        lock(&self.state)
            .0
            .referrers
            .insert(format!("{repo}@{digest}"), index.into());
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.state).0.faults.clear();
    }

    /// Forgets the requests seen so far.
    pub fn clear_seen(&self) {
        lock(&self.state).0.seen.clear();
    }

    /// Serves a manifest in `repo` under its digest and, if given, `tag`.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        bytes: impl Into<Bytes>,
        media_type: &str,
    ) -> Digest {
        let bytes = bytes.into();
        let d = Digest::sha256_of(&bytes);
        let mut s = lock(&self.state);
        s.0.manifests
            .insert(format!("{repo}@{d}"), (bytes, media_type.to_owned()));
        if let Some(t) = tag {
            s.0.tags.insert(format!("{repo}:{t}"), d.to_string());
        }
        d
    }

    /// Adds an OCI image of `layers` as `repo:tag`.
    pub fn push_image(&self, repo: &str, tag: &str, layers: &[Bytes]) -> HostileImage {
        let config = Bytes::from(format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"layers":{}}}"#,
            layers.len()
        ));
        let config_d = self.add_blob(config.clone());
        let mut descs = Vec::new();
        let mut out = Vec::new();
        for l in layers {
            let d = self.add_blob(l.clone());
            descs.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                l.len()
            ));
            out.push((d, l.clone()));
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_d}","size":{}}},"layers":[{}]}}"#,
            media_types::OCI_MANIFEST,
            config.len(),
            descs.join(",")
        );
        let md = self.add_manifest(repo, Some(tag), manifest, media_types::OCI_MANIFEST);
        HostileImage {
            manifest: md,
            config: config_d,
            layers: out,
        }
    }

    /// Successive requests whose path contains `path_part` take these
    /// faults in order, one each; later ones are served normally.
    pub fn fault(&self, path_part: &str, faults: impl IntoIterator<Item = WireFault>) {
        lock(&self.state)
            .0
            .faults
            .push((path_part.to_owned(), faults.into_iter().collect()));
    }

    /// Sends every content body in pieces of `chunk` bytes with `delay`
    /// between them (on top of any fault), or at full speed for `None`.
    pub fn set_drip(&self, drip: Option<(usize, Duration)>) {
        lock(&self.state).0.drip = drip;
    }

    /// Sends every content body at most `bytes_per_sec` (each request on
    /// its own, paced from the first body byte; on top of any fault), or
    /// at full speed for `None`: a slow upstream.
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        lock(&self.state).0.bytes_per_sec = bytes_per_sec.filter(|r| *r > 0);
    }

    /// Sends Docker Hub's pull-budget headers (`ratelimit-limit`,
    /// `ratelimit-remaining`, `N;w=SECONDS`) on every answer; each manifest
    /// `GET` spends one pull (`HEAD`s, as on Docker Hub, do not).
    pub fn set_rate_limit(&self, limit: u64, remaining: u64, window_secs: u64) {
        lock(&self.state).0.rate = Some((limit, remaining, window_secs));
    }

    /// Requires Basic authentication with one of these user/password
    /// pairs for `/v2/` requests (none: no such requirement).
    pub fn require_basic(&self, accepted: &[(&str, &str)]) {
        use base64::Engine as _;
        lock(&self.state).0.basic = accepted
            .iter()
            .map(|(u, p)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            })
            .collect();
    }

    /// Requires a bearer token for `/v2/` requests, challenging with this
    /// realm (any URL: this registry's own `/token`, or another host's).
    pub fn require_token(&self, realm: &str) {
        lock(&self.state).0.token_realm = Some(realm.to_owned());
    }

    /// What this registry's `/token` endpoint answers (default: a token).
    pub fn set_token_body(&self, body: impl Into<Bytes>) {
        lock(&self.state).0.token_body = Some(body.into());
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.state).0.seen.clone()
    }

    /// Requests with `method` whose path contains `path_part`.
    pub fn requests(&self, method: &str, path_part: &str) -> usize {
        lock(&self.state)
            .0
            .seen
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_part))
            .count()
    }
}

const TOKEN: &str = "hostile-token";

fn oci_error(status: u16, code: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"errors":[{{"code":"{code}","message":"hostile registry says {status}"}}]}}"#),
    )
        .into_response()
}

/// `bytes=N-` or `bytes=N-M` into a span of content of `size` bytes.
fn range(h: &HeaderMap, size: u64) -> Option<std::ops::Range<u64>> {
    let v = h.get(header::RANGE)?.to_str().ok()?;
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size
    } else {
        b.parse::<u64>().ok()? + 1
    };
    (start < size).then(|| start..end.min(size))
}

async fn handle(state: Arc<Mutex<StateHandle>>, addr: SocketAddr, req: Request) -> Response {
    let spends =
        req.method() == axum::http::Method::GET && req.uri().path().contains("/manifests/");
    let rate = {
        let mut s = lock(&state);
        if let Some((_, remaining, _)) = s.0.rate.as_mut()
            && spends
        {
            *remaining = remaining.saturating_sub(1);
        }
        s.0.rate
    };
    let mut resp = serve(state, addr, req).await;
    if let Some((limit, remaining, w)) = rate {
        let h = resp.headers_mut();
        h.insert(
            "ratelimit-limit",
            HeaderValue::from_str(&format!("{limit};w={w}")).expect("ascii"),
        );
        h.insert(
            "ratelimit-remaining",
            HeaderValue::from_str(&format!("{remaining};w={w}")).expect("ascii"),
        );
    }
    resp
}

async fn serve(state: Arc<Mutex<StateHandle>>, addr: SocketAddr, req: Request) -> Response {
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let range_header = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (fault, realm, token_body, drip, basic, rate) = {
        let mut s = lock(&state);
        s.0.seen.push(SeenRequest {
            method: method.clone(),
            path: path.clone(),
            authorization: auth.clone(),
            range: range_header,
        });
        let fault =
            s.0.faults
                .iter_mut()
                .find(|(part, q)| path.contains(part.as_str()) && !q.is_empty())
                .and_then(|(_, q)| q.pop_front());
        (
            fault,
            s.0.token_realm.clone(),
            s.0.token_body.clone(),
            s.0.drip,
            s.0.basic.clone(),
            s.0.bytes_per_sec,
        )
    };
    let p = req.uri().path().to_owned();
    if p == "/token" {
        if let Some(r) = fault_response(&fault) {
            return r;
        }
        let body = token_body
            .unwrap_or_else(|| Bytes::from(format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#)));
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    if let Some(realm) = realm
        && p.starts_with("/v2/")
        && auth.as_deref() != Some(&format!("Bearer {TOKEN}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!(r#"Bearer realm="{realm}",service="hostile""#),
            )],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#,
        )
            .into_response();
    }
    if !basic.is_empty()
        && p.starts_with("/v2/")
        && !auth.as_ref().is_some_and(|a| basic.contains(a))
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Basic realm="hostile""#)],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"credentials required"}]}"#,
        )
            .into_response();
    }
    if fault == Some(WireFault::Hang) {
        std::future::pending::<()>().await;
    }
    if let Some(r) = fault_response(&fault) {
        return r;
    }
    let _ = addr;
    let head = method == "HEAD";
    if p == "/v2/" || p == "/v2" {
        return (StatusCode::OK, "{}").into_response();
    }
    let Some(rest) = p.strip_prefix("/v2/") else {
        return oci_error(404, "NOT_FOUND");
    };
    let (content, content_type, digest) = if let Some(i) = rest.rfind("/manifests/") {
        let (repo, reference) = (&rest[..i], &rest[i + "/manifests/".len()..]);
        let s = lock(&state);
        let digest = if reference.contains(':') {
            reference.to_owned()
        } else {
            match s.0.tags.get(&format!("{repo}:{reference}")) {
                Some(d) => d.clone(),
                None => return oci_error(404, "MANIFEST_UNKNOWN"),
            }
        };
        match s.0.manifests.get(&format!("{repo}@{digest}")) {
            Some((b, mt)) => (b.clone(), mt.clone(), digest),
            None => return oci_error(404, "MANIFEST_UNKNOWN"),
        }
    } else if let Some(i) = rest.rfind("/blobs/") {
        let digest = rest[i + "/blobs/".len()..].to_owned();
        match lock(&state).0.blobs.get(&digest) {
            Some(b) => (b.clone(), "application/octet-stream".to_owned(), digest),
            None => return oci_error(404, "BLOB_UNKNOWN"),
        }
    } else if let Some(i) = rest.rfind("/referrers/") {
        // The OCI 1.1 referrers API, which the Debian distribution
        // registry does not have: answered only where one was set.
        let key = format!("{}@{}", &rest[..i], &rest[i + "/referrers/".len()..]);
        return match lock(&state).0.referrers.get(&key) {
            Some(index) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, media_types::OCI_INDEX)],
                index.clone(),
            )
                .into_response(),
            None => oci_error(404, "NOT_FOUND"),
        };
    } else if rest.ends_with("/tags/list") {
        let name = rest.trim_end_matches("/tags/list");
        let s = lock(&state);
        let mut tags: Vec<&str> =
            s.0.tags
                .keys()
                .filter_map(|k| k.strip_prefix(&format!("{name}:")))
                .collect();
        tags.sort_unstable();
        return axum::Json(serde_json::json!({"name": name, "tags": tags})).into_response();
    } else {
        return oci_error(404, "NOT_FOUND");
    };
    serve_content(
        content,
        content_type,
        digest,
        req.headers(),
        head,
        fault,
        (drip, rate),
    )
}

/// The response a fault replaces the real one with, if it does.
fn fault_response(fault: &Option<WireFault>) -> Option<Response> {
    Some(match fault.as_ref()? {
        WireFault::Status(s) => oci_error(*s, "HOSTILE"),
        WireFault::TooManyRequests(secs) => {
            let mut r = oci_error(429, "TOOMANYREQUESTS");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            r
        }
        WireFault::Redirect(url) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, url.clone())],
        )
            .into_response(),
        WireFault::HugeBody { status, bytes } => {
            let total = *bytes;
            let piece = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures::stream::unfold(0u64, move |sent| {
                let piece = piece.clone();
                async move {
                    (sent < total).then(|| {
                        let n = (total - sent).min(piece.len() as u64);
                        (Ok::<_, Infallible>(piece.slice(..n as usize)), sent + n)
                    })
                }
            });
            let mut r = Response::new(Body::from_stream(stream));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
            r
        }
        WireFault::Body(b) => {
            ([(header::CONTENT_TYPE, "application/json")], b.clone()).into_response()
        }
        _ => return None,
    })
}

fn serve_content(
    content: Bytes,
    content_type: String,
    digest: String,
    headers: &HeaderMap,
    head: bool,
    fault: Option<WireFault>,
    (drip, rate): (Option<(usize, Duration)>, Option<u64>),
) -> Response {
    let size = content.len() as u64;
    let span = range(headers, size);
    let (status, span) = match span {
        Some(s) => (StatusCode::PARTIAL_CONTENT, s),
        None => (StatusCode::OK, 0..size),
    };
    let body = content.slice(span.start as usize..span.end as usize);
    let mut content_type = content_type;
    let mut digest_header = digest;
    let (mut chunk, mut delay) = match drip {
        Some((c, d)) => (c.max(1), Some(d)),
        None => (64 * 1024, None),
    };
    let (mut cut, mut stall, mut reset) = (None, None, false);
    let mut body = body;
    match fault {
        Some(WireFault::FlipByte(at)) if at >= span.start && at < span.end => {
            // A copy only for the fault: bodies are zero-copy slices otherwise.
            let mut copy = body.to_vec();
            copy[(at - span.start) as usize] ^= 1;
            body = Bytes::from(copy);
        }
        Some(WireFault::Truncate(n)) => cut = Some(n as usize),
        Some(WireFault::Stall(n)) => stall = Some(n as usize),
        Some(WireFault::Reset) => reset = true,
        Some(WireFault::Drip { chunk: c, delay: d }) => {
            chunk = c.max(1);
            delay = Some(d);
        }
        Some(WireFault::ContentType(ct)) => content_type = ct,
        Some(WireFault::DigestHeader(d)) => digest_header = d,
        _ => {}
    }
    let len = body.len();
    let limit = cut.or(stall).unwrap_or(len).min(len);
    let pieces: Vec<Bytes> = (0..limit)
        .step_by(chunk)
        .map(|i| body.slice(i..(i + chunk).min(limit)))
        .collect();
    // Paced from the first piece: piece n leaves once the bytes before it
    // took their time at `rate`.
    let mut paced = (None::<tokio::time::Instant>, 0u64);
    let stream = futures::stream::iter(pieces)
        .then(move |c| {
            let (start, sent) = &mut paced;
            let start = *start.get_or_insert_with(tokio::time::Instant::now);
            let due = rate.map(|r| start + Duration::from_secs_f64(*sent as f64 / r as f64));
            *sent += c.len() as u64;
            async move {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                if let Some(due) = due {
                    tokio::time::sleep_until(due).await;
                }
                Ok::<_, std::io::Error>(c)
            }
        })
        .boxed();
    let broken = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "hostile");
    let stream = if reset {
        futures::stream::once(async move { Err(broken()) }).boxed()
    } else if cut.is_some() {
        stream
            .chain(futures::stream::once(async move { Err(broken()) }))
            .boxed()
    } else if stall.is_some() {
        stream.chain(futures::stream::pending()).boxed()
    } else {
        stream
    };
    let mut r = Response::new(if head {
        Body::empty()
    } else {
        Body::from_stream(stream)
    });
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len as u64));
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest_header) {
        h.insert("docker-content-digest", v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let v = format!("bytes {}-{}/{size}", span.start, span.end.saturating_sub(1));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&v).expect("ascii"),
        );
    }
    r
}
