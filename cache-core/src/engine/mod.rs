//! The pull-through engine: rule-gated, digest-verified, single-flight,
//! streaming.
//!
//! One module per concern: [`builder`] wires rules, store, upstreams and
//! policies; [`manifests`], [`blobs`] and [`tags`] answer requests;
//! [`fetch`] runs one shared upstream transfer per digest; [`queue`] bounds
//! those per upstream and holds the one retry layer; [`entitlement`] decides
//! which repository may read which content; [`image`] pulls whole images
//! ahead of time; [`maintenance`] is gc and scrub.

mod blobs;
mod builder;
mod entitlement;
mod fetch;
mod flights;
mod hot;
mod image;
mod inventory;
pub(crate) mod keys;
mod lease;
mod maintenance;
mod manifests;
mod negative;
mod pulls;
mod queue;
mod referrers;
mod response;
mod signatures;
mod store_only;
mod sync;
mod tags;
mod verdicts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use builder::CacheBuilder;
pub use image::{ImagePlan, PullReport};
pub use inventory::{
    ImageView, LayerView, ManifestView, PlatformView, RepoPage, RepoSummary, StoreUsage, TagRow,
    TagRows,
};
pub use maintenance::{GcReport, PurgeReport, ScrubReport};
pub use pulls::PullStats;
pub use response::{
    BlobBody, BlobResponse, Catalog, FileBody, FollowBody, ManifestResponse, MemoryBody, Piece,
    Referrers, StagedSpan, TagList,
};
pub use sync::SyncReport;
pub use verdicts::{AdmissionRecord, Denial};

use self::fetch::Fetch;
use self::flights::Flights;
use self::queue::FetchQueue;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::{Event, EventSink};
use crate::names::{Registry, RepoName};
use crate::policy::{Admission, RulePolicy};
use crate::rules::{Rule, RuleSet};
use crate::runtime::{Clock, Spawner};
use crate::store::BlobStore;
use crate::upstream::Upstream;

/// Tunables of a [`PullThroughCache`]. With the `serde` feature, a table
/// of them deserialises and validates itself (see `cache_core::config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// Largest manifest accepted from an upstream (default 4 MiB).
    pub max_manifest_size: usize,
    /// Longest a whole blob fetch may take (default 1 hour).
    pub fetch_timeout: Duration,
    /// Longest a manifest fetch may take, however many wait for it
    /// (default 60 s). It runs detached, so a client that gives up does
    /// not leave it holding an upstream connection.
    pub manifest_timeout: Duration,
    /// Longest an upstream blob body may send nothing before the transfer
    /// is resumed with `Range` (default 60 s).
    pub stall_timeout: Duration,
    /// Upstream requests a fetch may spend on retries after a temporary
    /// error and resumptions after an interrupted body, on top of the first
    /// (default 3). This is the only retry layer: upstream clients do not
    /// retry on their own.
    pub max_retries: u32,
    /// Back-off unit between retries; the n-th retry waits n times this
    /// (default 200 ms; zero retries at once).
    pub retry_backoff: Duration,
    /// A blob's access time is updated at most this often (default 60 s).
    pub touch_interval: Duration,
    /// Size of the pieces a blob is read from the store in, for readers
    /// that fell behind a fetch and whose server does not send them the
    /// staged file itself (default 256 KiB; see [`FollowBody`]).
    pub read_chunk: usize,
    /// The most a fetch gathers from its upstream at a time, which its
    /// readers get as one step and the store writes (default 512 KiB; a
    /// store that fell behind writes several at once, up to a quarter of
    /// `follow_window`). Each step costs a hand-off between threads, so
    /// larger batches spend less CPU per byte.
    pub write_batch: usize,
    /// Blob transfers running at once per upstream registry (default 32).
    pub max_concurrent_fetches: usize,
    /// Blob fetches waiting for a turn per upstream registry (default 256).
    /// A request that would queue beyond this is refused as
    /// [`Error::Unavailable`] (503 with `Retry-After`); a queued fetch whose
    /// readers all left is dropped before it starts.
    pub max_queued_fetches: usize,
    /// Manifest fetches in flight at once, all upstreams together
    /// (default 1024); more are refused as [`Error::Unavailable`]. Tag
    /// revalidations (`HEAD`s) have a bound of the same size of their own.
    pub max_manifest_fetches: usize,
    /// Under `revalidate`, a tag the upstream confirmed less than this long
    /// ago is served without asking again (default 1 s); concurrent
    /// requests for one tag share one `HEAD` whatever this is. Zero asks
    /// on every request that does not share a `HEAD` in flight.
    pub revalidate_window: Duration,
    /// Bytes of the latest upstream chunks each fetch keeps in memory for
    /// its readers to share without copying (default 4 MiB); readers that
    /// fall further behind read the staged file. Receiving runs ahead of
    /// the store's writes by at most about half this much, and a chunk
    /// stays in memory until the store wrote it, so a fetch holds about
    /// this much whatever the blob's size.
    pub follow_window: usize,
    /// Memory for small stored content (manifests, config blobs) served
    /// without asking the store (default 32 MiB; 0 turns the warm-path
    /// cache off, facts included).
    pub hot_bytes: usize,
    /// The largest content kept in that memory (default 64 KiB).
    pub hot_max_item: usize,
    /// How long facts about stored blobs (size, entitlement) are trusted
    /// without asking the store again (default 10 s).
    pub hot_validity: Duration,
    /// On a [shared](crate::BlobStore::shared) store, how long a lease
    /// (to fetch a digest, to run gc) lasts unless its holder renews it
    /// (default 30 s; renewed every third of that). A holder that dies
    /// is replaced this long after its last renewal.
    pub lease_ttl: Duration,
    /// On a shared store, how long a fetch waits for another instance
    /// that holds the digest's lease to publish it before fetching it
    /// itself (default 5 minutes).
    pub lease_wait: Duration,
    /// This instance's name in the leases it holds (default: `HOSTNAME`,
    /// process id and a random part).
    pub instance_name: String,
    /// Under a rule with `cold_ranges = "passthrough"`: the largest range
    /// fetched from the upstream on its own while the whole blob is still
    /// being fetched (default 16 MiB). A larger range waits for the
    /// whole-blob fetch.
    pub cold_range_max: usize,
    /// Passthrough ranges fetched from the upstream per blob, over the
    /// whole-blob fetch's life (default 8); later ones wait for it.
    pub cold_ranges_per_blob: usize,
    /// Passthrough ranges in flight at once per upstream registry (default
    /// 32); more wait for their whole-blob fetch. Each also needs a free
    /// place among the registry's `max_concurrent_fetches`.
    pub cold_ranges_per_registry: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            max_manifest_size: 4 * 1024 * 1024,
            fetch_timeout: Duration::from_secs(3600),
            manifest_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            max_retries: 3,
            retry_backoff: Duration::from_millis(200),
            touch_interval: Duration::from_secs(60),
            read_chunk: 256 * 1024,
            write_batch: 512 * 1024,
            max_concurrent_fetches: 32,
            max_queued_fetches: 256,
            max_manifest_fetches: 1024,
            revalidate_window: Duration::from_secs(1),
            follow_window: 4 * 1024 * 1024,
            hot_bytes: 32 * 1024 * 1024,
            hot_max_item: 64 * 1024,
            hot_validity: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(30),
            lease_wait: Duration::from_secs(300),
            instance_name: lease::default_instance_name(),
            cold_range_max: 16 * 1024 * 1024,
            cold_ranges_per_blob: 8,
            cold_ranges_per_registry: 32,
        }
    }
}

/// The upstream clients and fetch queue of one registry.
#[derive(Debug)]
struct UpstreamSet {
    /// Rules without credentials, and rules whose credential set has no
    /// client of its own, use this one.
    default: Option<Arc<dyn Upstream>>,
    /// One client per credential set name.
    by_credentials: HashMap<String, Arc<dyn Upstream>>,
    queue: Arc<FetchQueue>,
}

/// What a reload replaces, all at once: the caching rules, the upstreams,
/// the per-rule policies and the admission hooks. A request takes one
/// snapshot and keeps it to its end.
pub(crate) struct Wiring {
    rules: Arc<RuleSet>,
    upstreams: HashMap<Registry, UpstreamSet>,
    policies: HashMap<String, RulePolicy>,
    default_policy: RulePolicy,
    admission: Vec<Arc<dyn Admission>>,
}

impl Wiring {
    fn policy(&self, rule: &Rule) -> &RulePolicy {
        self.policies
            .get(rule.name())
            .unwrap_or(&self.default_policy)
    }
}

pub(crate) struct Inner {
    wiring: arc_swap::ArcSwap<Wiring>,
    pub(crate) store: Arc<dyn BlobStore>,
    spawner: Arc<dyn Spawner>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) opts: CacheOptions,
    pub(crate) events: Arc<dyn EventSink>,
    inflight: Mutex<HashMap<Digest, Arc<Fetch>>>,
    manifest_flights: Arc<Flights<crate::upstream::Manifest>>,
    head_flights: Arc<Flights<crate::upstream::ManifestHead>>,
    pub(crate) hot: hot::Hot,
    in_use: Mutex<HashMap<Digest, usize>>,
    verdicts: signatures::Verdicts,
    /// Upstream "not found"s remembered (per rule's `negative_ttl`).
    negative: negative::Negative,
    /// Background prefetches (per rule's `prefetch`).
    prefetches: image::Prefetches,
    /// Scheduled sync: runs under way, the schedule.
    sync: sync::SyncState,
    /// What the store held when last measured.
    usage: Mutex<Option<StoreUsage>>,
    /// Pull counts not written yet.
    pulls: pulls::Pending,
    /// The latest refusals.
    recent_denials: verdicts::RecentDenials,
    /// The repositories, as last listed.
    repo_index: inventory::RepoIndex,
    pub(crate) peering: Option<crate::peer::Peering>,
}

/// Marks a digest as being read, so gc leaves it alone.
pub(crate) struct InUse {
    inner: Arc<Inner>,
    digest: Digest,
}

impl InUse {
    fn new(inner: &Arc<Inner>, digest: &Digest) -> Self {
        *lock(&inner.in_use).entry(digest.clone()).or_insert(0) += 1;
        InUse {
            inner: inner.clone(),
            digest: digest.clone(),
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut m = lock(&self.inner.in_use);
        if let Some(n) = m.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.digest);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub(crate) fn finish_fetch(&self, fetch: &Arc<Fetch>) {
        let mut m = lock(&self.inflight);
        if m.get(&fetch.digest).is_some_and(|f| Arc::ptr_eq(f, fetch)) {
            m.remove(&fetch.digest);
        }
    }

    pub(crate) fn is_busy(&self, d: &Digest) -> bool {
        lock(&self.inflight).contains_key(d) || lock(&self.in_use).contains_key(d)
    }

    /// On a shared store: every half `touch_interval`, records an access
    /// to each blob this instance is reading or fetching (gc spares what
    /// was accessed within twice `touch_interval`), so gc on another
    /// instance sees them in use however long the transfer takes. Ends
    /// when the engine is dropped.
    async fn renew_access_times(inner: std::sync::Weak<Inner>) {
        let Some((clock, every)) = inner.upgrade().map(|i| {
            (
                i.clock.clone(),
                (i.opts.touch_interval / 2).max(Duration::from_millis(500)),
            )
        }) else {
            return;
        };
        loop {
            clock.sleep(every).await;
            let Some(this) = inner.upgrade() else { return };
            let busy: Vec<Digest> = {
                let mut v: Vec<Digest> = lock(&this.in_use).keys().cloned().collect();
                v.extend(lock(&this.inflight).keys().cloned());
                v
            };
            let now = this.clock.now();
            for d in busy {
                // Only steers gc; a failure is retried next round.
                let _ = this.store.touch(&d, now).await;
            }
        }
    }
}

/// A pull-through cache: caching rules, one upstream per registry, a store.
///
/// Build one with [`PullThroughCache::builder`]; cloning is cheap and
/// shares everything. [`manifest`](Self::manifest), [`blob`](Self::blob),
/// [`head_blob`](Self::head_blob) and [`tags`](Self::tags) answer the pull
/// API; [`gc`](Self::gc) and [`scrub`](Self::scrub) maintain the store.
#[derive(Clone)]
pub struct PullThroughCache {
    inner: Arc<Inner>,
}

/// A handle on a [`PullThroughCache`] that does not keep it alive (for
/// what the cache itself holds, such as an admission hook that calls back).
#[derive(Clone, Debug)]
pub struct WeakCache(std::sync::Weak<Inner>);

impl WeakCache {
    /// The cache, if it still exists.
    pub fn upgrade(&self) -> Option<PullThroughCache> {
        self.0.upgrade().map(|inner| PullThroughCache { inner })
    }
}

impl PullThroughCache {
    /// A handle that does not keep the cache alive.
    pub fn downgrade(&self) -> WeakCache {
        WeakCache(Arc::downgrade(&self.inner))
    }
}

impl std::fmt::Debug for PullThroughCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullThroughCache")
            .field("rules", &self.inner.wiring.load().rules.len())
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

/// What one request resolved to, under one snapshot of the wiring.
#[derive(Clone)]
pub(crate) struct Ctx {
    rule: Rule,
    local: RepoName,
    upstream_repo: RepoName,
    upstream: Arc<dyn Upstream>,
    queue: Arc<FetchQueue>,
    wiring: Arc<Wiring>,
    caller: crate::policy::Caller,
    /// A background job (a sync) rather than a client: it asks the
    /// upstream whatever the negative cache or the tag's freshness says,
    /// and a failure is its error, never a stale answer.
    job: bool,
}

impl Ctx {
    /// Whether the request comes from a scanner scoped to this repository
    /// (admission does not apply; what it reads grants nothing).
    fn is_scanner(&self) -> bool {
        matches!(&self.caller, crate::policy::Caller::Scanner { repository } if *repository == self.local)
    }

    /// Whether the request may read only what the store holds (see
    /// [`store_only`]); its context then has no upstream.
    fn store_only(&self) -> bool {
        self.caller.fetch_policy() == crate::policy::FetchPolicy::StoreOnly
    }

    /// Whether, under this rule, a client gets blobs only as parts of
    /// admitted manifests: an enforcing signature policy, or a hook that
    /// says so (a vulnerability gate).
    fn restricts_blobs(&self) -> bool {
        self.enforces_signatures()
            || self
                .wiring
                .admission
                .iter()
                .any(|h| h.restricts_blobs(&self.rule))
    }

    fn policy(&self) -> &RulePolicy {
        self.wiring.policy(&self.rule)
    }

    /// Whether the rule refuses content no signature vouches for.
    fn enforces_signatures(&self) -> bool {
        self.policy()
            .signatures
            .as_ref()
            .is_some_and(|s| s.enforcing())
    }
}

impl PullThroughCache {
    /// The caching rules in force now (a reload replaces them).
    pub fn rules(&self) -> Arc<RuleSet> {
        self.inner.wiring.load().rules.clone()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.inner.store
    }

    /// Upstream blob fetches in flight (running or queued).
    pub fn inflight(&self) -> usize {
        lock(&self.inner.inflight).len()
    }

    /// For a peer endpoint ([`crate::peer`]): the blob `digest` from byte
    /// `from` to its end, as this instance receives it from the upstream,
    /// if it fetches it under the digest's lease now; `Ok(None)` otherwise
    /// (no fetch here, a fetch that follows another instance, one whose
    /// lease was released, or the size not known within `wait`). The
    /// answer is `(size, stream)`; the bytes are unverified and flow as
    /// they arrive, the last included (the reader verifies). The stream
    /// fails if the fetch does. `from` beyond the size is
    /// [`Error::RangeNotSatisfiable`].
    pub async fn peer_blob(
        &self,
        digest: &Digest,
        from: u64,
        wait: Duration,
    ) -> Result<
        Option<(
            u64,
            futures::stream::BoxStream<'static, Result<bytes::Bytes>>,
        )>,
    > {
        let inner = &self.inner;
        let (fetch, interest) = {
            let m = lock(&inner.inflight);
            let Some(f) = m.get(digest).filter(|f| f.is_leading()).cloned() else {
                return Ok(None);
            };
            let Some(i) = f.join() else { return Ok(None) };
            (f, i)
        };
        let size = match crate::runtime::timeout(&*inner.clock, wait, fetch.ready()).await {
            Some(Ok(fetch::Ready::Size(n))) if fetch.is_leading() => n,
            Some(Err(e)) => return Err(e),
            _ => return Ok(None),
        };
        if from > size {
            return Err(Error::RangeNotSatisfiable {
                range: format!("bytes={from}-"),
                size,
            });
        }
        let guards = (InUse::new(inner, digest), interest);
        Ok(Some((
            size,
            fetch.stream_to_peer(inner.clone(), from..size, guards),
        )))
    }

    fn ctx_for(&self, name: &RepoName, caller: &crate::policy::Caller) -> Result<Ctx> {
        let wiring = self.inner.wiring.load_full();
        let r = wiring.rules.resolve(name)?;
        let missing = || {
            Error::invalid_rule(
                r.rule.name(),
                format!("no upstream configured for registry {}", r.registry),
            )
        };
        let set = wiring.upstreams.get(r.registry).ok_or_else(missing)?;
        let upstream = r
            .credentials
            .and_then(|c| set.by_credentials.get(c))
            .or(set.default.as_ref())
            .cloned()
            .ok_or_else(missing)?;
        let (rule, upstream_repo, queue) = (r.rule.clone(), r.upstream, set.queue.clone());
        let upstream = match caller.fetch_policy() {
            crate::policy::FetchPolicy::Upstream => upstream,
            crate::policy::FetchPolicy::StoreOnly => Arc::new(store_only::NoUpstream),
        };
        Ok(Ctx {
            rule,
            local: name.clone(),
            upstream_repo,
            upstream,
            queue,
            wiring,
            caller: caller.clone(),
            job: false,
        })
    }

    fn upstream_error(&self, ctx: &Ctx, e: &Error) {
        self.inner.events.event(&Event::UpstreamError {
            rule: ctx.rule.name(),
            code: e.code(),
        });
    }
}
