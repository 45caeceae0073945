//! In-process peers: engines in one process that stream from each other
//! through [`PullThroughCache::peer_blob`], as instances do over HTTP
//! (`cache_core::server::PeerService`, `cache_upstream::PeerClient`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::engine::{PullThroughCache, WeakCache};
use crate::peer::PeerSource;
use crate::runtime::Clock;
use crate::{Digest, Error, Result, UpstreamBlob};

/// A [`PeerSource`] over engines registered by address: `register` each
/// engine under the address its `Peering` advertises. A peer marked down
/// ([`LocalPeers::set_down`]) refuses requests and ends the streams it is
/// sending, as a killed instance does; an address nobody registered
/// refuses too. An optional latency is slept (on the given clock) before
/// each answer. Counts requests.
#[derive(Debug, Clone, Default)]
pub struct LocalPeers {
    inner: Arc<Mutex<Peers>>,
}

#[derive(Debug, Default)]
struct Peers {
    caches: HashMap<String, WeakCache>,
    down: HashMap<String, Arc<std::sync::atomic::AtomicBool>>,
    latency: Option<(Duration, Arc<dyn Clock>)>,
    requests: u64,
}

impl LocalPeers {
    /// No peers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers requests for `addr` from `cache`.
    pub fn register(&self, addr: &str, cache: &PullThroughCache) {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        p.caches.insert(addr.to_owned(), cache.downgrade());
        p.down.insert(addr.to_owned(), Default::default());
    }

    /// Takes `addr` down (its streams end, requests fail) or back up.
    pub fn set_down(&self, addr: &str, down: bool) {
        let p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = p.down.get(addr) {
            d.store(down, std::sync::atomic::Ordering::Release);
        }
    }

    /// Sleeps `latency` on `clock` before each answer.
    pub fn set_latency(&self, latency: Duration, clock: Arc<dyn Clock>) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).latency = Some((latency, clock));
    }

    /// Requests made so far.
    pub fn requests(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
    }
}

#[async_trait]
impl PeerSource for LocalPeers {
    async fn blob(&self, peer: &str, digest: &Digest, from: u64) -> Result<UpstreamBlob> {
        let (cache, down, latency) = {
            let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            p.requests += 1;
            (
                p.caches.get(peer).and_then(WeakCache::upgrade),
                p.down.get(peer).cloned(),
                p.latency.clone(),
            )
        };
        let refused = || Error::upstream(peer, "peer: connection refused", true);
        if let Some((d, clock)) = latency {
            clock.sleep(d).await;
        }
        let (Some(cache), Some(down)) = (cache, down) else {
            return Err(refused());
        };
        if down.load(std::sync::atomic::Ordering::Acquire) {
            return Err(refused());
        }
        let wait = Duration::from_secs(30);
        let Some((size, stream)) = cache.peer_blob(digest, from, wait).await? else {
            return Err(Error::upstream(
                peer,
                "peer: 404, no fetch under a lease",
                true,
            ));
        };
        let stream = stream
            .take_while(move |_| {
                std::future::ready(!down.load(std::sync::atomic::Ordering::Acquire))
            })
            .boxed();
        Ok(UpstreamBlob {
            size,
            range: from..size,
            stream,
        })
    }
}
