//! The peer endpoint: what this instance fetches under a lease, streamed
//! to the other instances on its store ([`crate::peer`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::digest::Digest;
use crate::engine::PullThroughCache;
use crate::secret::Secret;

pub use crate::peer::PEER_PATH;

/// The peer endpoint as a `tower::Service`: `GET /peer/v1/blobs/<digest>`
/// with `Authorization: Bearer <secret>` and an optional `Range:
/// bytes=N-` answers the blob from byte N as this instance receives it
/// ([`PullThroughCache::peer_blob`]), `206` with `Content-Range: bytes
/// N-(size-1)/size` (`200` from 0).
///
/// * Callers without the shared secret get `401` (compared in constant
///   time, on hashes, so neither the secret nor its length leaks).
/// * A digest this instance does not fetch under its lease now gets
///   `404`: the endpoint serves only what a lease it holds asked it to
///   fetch, never stored content and never anything else.
/// * At most `max_streams` answers stream at once (`503` beyond); each
///   is a window of the fetch's bounded memory or its staged file, sent
///   as the peer reads it. Serve it with
///   [`serve_connections`](super::serve_connections) and a connection cap.
/// * Anything but `GET`/`HEAD` is `405`, other paths `404`, a malformed
///   digest or range `400`, a range beyond the blob `416`.
#[derive(Clone)]
pub struct PeerService {
    cache: PullThroughCache,
    secret: Arc<[u8; 32]>,
    streams: Arc<Semaphore>,
    wait: Duration,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService")
            .field("secret", &"<redacted>")
            .field("streams", &self.streams.available_permits())
            .finish_non_exhaustive()
    }
}

fn hash(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn plain(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = status;
    r
}

impl PeerService {
    /// The peer endpoint of `cache`, for callers presenting `secret`, at
    /// most `max_streams` answers at once (at least 1). A request waits at
    /// most `wait` for a fetch to learn its blob's size.
    pub fn new(
        cache: PullThroughCache,
        secret: &Secret,
        max_streams: usize,
        wait: Duration,
    ) -> Self {
        PeerService {
            cache,
            secret: Arc::new(hash(secret.expose().as_bytes())),
            streams: Arc::new(Semaphore::new(max_streams.max(1))),
            wait,
        }
    }

    /// Whether `headers` carry the shared secret.
    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        hash(token).ct_eq(&self.secret[..]).into()
    }

    /// Answers one request (what `Service::call` does).
    pub async fn answer<B>(&self, req: Request<B>) -> Response<Body> {
        let (parts, _) = req.into_parts();
        if !self.authorized(&parts.headers) {
            let mut r = plain(StatusCode::UNAUTHORIZED, "peer secret required\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"peer\""),
            );
            return r;
        }
        let Some(d) = parts.uri.path().strip_prefix(PEER_PATH) else {
            return plain(StatusCode::NOT_FOUND, "not a peer path\n");
        };
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        let Ok(digest) = Digest::parse(d) else {
            return plain(StatusCode::BAD_REQUEST, "not a digest\n");
        };
        let from = match parts.headers.get(header::RANGE) {
            None => 0,
            Some(v) => match v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("bytes="))
                .and_then(|s| s.strip_suffix('-'))
                .and_then(|s| s.parse::<u64>().ok())
            {
                Some(n) => n,
                None => return plain(StatusCode::BAD_REQUEST, "Range must be bytes=N-\n"),
            },
        };
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "too many peer streams\n");
        };
        let (size, stream) = match self.cache.peer_blob(&digest, from, self.wait).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return plain(
                    StatusCode::NOT_FOUND,
                    "no fetch of this digest under a lease here\n",
                );
            }
            Err(crate::Error::RangeNotSatisfiable { .. }) => {
                return plain(StatusCode::RANGE_NOT_SATISFIABLE, "beyond the blob\n");
            }
            Err(e) => {
                tracing::debug!(digest = %digest, error = %e, "peer request for a failed fetch");
                return plain(StatusCode::BAD_GATEWAY, "the fetch failed\n");
            }
        };
        let len = size - from;
        let mut r = if parts.method == Method::HEAD {
            Response::new(Body::empty())
        } else {
            // The permit lives as long as the body streams.
            let body = stream.map(move |c| {
                let _ = &permit;
                c.map_err(std::io::Error::other)
            });
            Response::new(Body::from_stream(body))
        };
        let h = r.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if from > 0 || parts.headers.contains_key(header::RANGE) {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let range = if len == 0 {
                format!("bytes */{size}")
            } else {
                format!("bytes {from}-{}/{size}", size - 1)
            };
            if let Ok(v) = HeaderValue::from_str(&range) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        r
    }

    /// An axum `Router` that is this service at every path.
    pub fn into_router(self) -> axum::Router {
        axum::Router::new().fallback_service(self)
    }
}

impl<B: Send + 'static> tower::Service<Request<B>> for PeerService {
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
