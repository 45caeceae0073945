//! The HTTP client of peer streaming: reads a blob from the instance that
//! holds its fetch lease (`cache_core::peer`), at the address the lease
//! names, from its peer endpoint (`cache_core::server::PeerService`).

use std::time::Duration;

use async_trait::async_trait;
use cache_core::peer::{PeerConfig, PeerSource};
use cache_core::{Digest, Error, Result, Secret, UpstreamBlob};
use futures::StreamExt;
use reqwest::{StatusCode, header};

/// A [`PeerSource`] over HTTP: `GET http://<peer>/peer/v1/blobs/<digest>`
/// with `Range: bytes=N-` and the shared secret as a bearer token. No
/// redirects, no proxy, no retries (the engine resumes), a connect and
/// answer timeout, idle connections kept per peer (at most 8).
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: Secret,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    /// A client presenting `secret`, giving up on a peer that does not
    /// connect or answer within `timeout`.
    pub fn new(secret: Secret, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .pool_max_idle_per_host(8)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::misconfigured(format!("peer client: {e}")))?;
        Ok(PeerClient { http, secret })
    }

    /// The client for `config` (its secret and timeout).
    pub fn from_config(config: &PeerConfig) -> Result<Self> {
        Self::new(config.secret.clone(), config.timeout)
    }
}

#[async_trait]
impl PeerSource for PeerClient {
    async fn blob(&self, peer: &str, digest: &Digest, from: u64) -> Result<UpstreamBlob> {
        PeerConfig::check_advertise(peer)
            .map_err(|e| Error::upstream(peer, format!("peer address {e}"), false))?;
        let url = format!("http://{peer}{}{digest}", cache_core::peer::PEER_PATH);
        let fail = |m: String| Error::upstream(peer, format!("peer: {m}"), true);
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.secret.expose())
            .header(header::RANGE, format!("bytes={from}-"))
            .send()
            .await
            .map_err(|e| fail(format!("request failed: {e}")))?;
        let (size, span) = match resp.status() {
            StatusCode::OK => {
                let size = resp
                    .content_length()
                    .ok_or_else(|| fail("200 without a length".into()))?;
                (size, 0..size)
            }
            StatusCode::PARTIAL_CONTENT => {
                let v = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let (a, b, total) = crate::client::content_range(v)
                    .filter(|(a, b, t)| a <= b && b < t)
                    .ok_or_else(|| fail(format!("206 with Content-Range {v:?}")))?;
                (total, a..b + 1)
            }
            StatusCode::UNAUTHORIZED => {
                return Err(fail("401: it does not know our peer_secret".into()));
            }
            s => return Err(fail(format!("answered {s} for {digest}"))),
        };
        let peer = peer.to_owned();
        let stream = resp
            .bytes_stream()
            .map(move |c| {
                c.map_err(|e| Error::upstream_with(&peer, "peer stream interrupted", true, e))
            })
            .boxed();
        Ok(UpstreamBlob {
            size,
            range: span,
            stream,
        })
    }
}
