//! The pull-through engine: rule-gated, digest-verified, single-flight,
//! streaming.

mod fetch;
pub(crate) mod keys;
mod maintenance;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::BoxStream;

pub use maintenance::{GcReport, ScrubReport};

use self::fetch::{Fetch, Job, Ready};
use self::keys::TagRecord;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::{CacheStatus, Event, EventSink, NoEvents};
use crate::manifest::{ParsedManifest, Platform};
use crate::names::{Reference, Registry, RepoName, Tag};
use crate::policy::{Admission, AdmissionRequest, RulePolicy, TagFreshness};
use crate::range::ByteRange;
use crate::rules::{Rule, RuleSet};
use crate::runtime::{Clock, Spawner};
use crate::store::{BlobInfo, BlobStore, BlobStoreExt};
use crate::upstream::{Manifest, TagPage, Upstream, media_types};

/// Tunables of a [`PullThroughCache`].
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Largest manifest accepted from an upstream (default 4 MiB).
    pub max_manifest_size: usize,
    /// Longest a whole blob fetch may take (default 1 hour).
    pub fetch_timeout: Duration,
    /// Longest an upstream transfer may stall before it is resumed (default 60 s).
    pub idle_timeout: Duration,
    /// How many times an interrupted transfer is resumed with `Range` (default 3).
    pub max_resumes: u32,
    /// How many times a failed request for a blob is retried on a temporary error (default 2).
    pub max_retries: u32,
    /// Back-off unit between retries; the n-th retry waits n times this (default 200 ms).
    pub retry_backoff: Duration,
    /// A blob's access time is updated at most this often (default 60 s).
    pub touch_interval: Duration,
    /// Size of the pieces a blob is streamed to readers in, and of the
    /// batches the leader writes (default 256 KiB).
    pub read_chunk: usize,
    /// Upstream blob transfers running at once, at most (default 64); more
    /// wait their turn, and their readers with them.
    pub max_concurrent_fetches: usize,
    /// Bytes of the latest upstream chunks each fetch keeps in memory for
    /// its readers to share without copying (default 4 MiB); readers that
    /// fall further behind read the staged file.
    pub follow_window: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            max_manifest_size: 4 * 1024 * 1024,
            fetch_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(60),
            max_resumes: 3,
            max_retries: 2,
            retry_backoff: Duration::from_millis(200),
            touch_interval: Duration::from_secs(60),
            read_chunk: 256 * 1024,
            max_concurrent_fetches: 64,
            follow_window: 4 * 1024 * 1024,
        }
    }
}

/// A manifest answer.
#[derive(Clone, PartialEq, Eq)]
pub struct ManifestResponse {
    /// The manifest, byte-exact as the upstream sent it.
    pub bytes: Bytes,
    /// The upstream's media type.
    pub media_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
    /// Where it came from.
    pub status: CacheStatus,
}

impl std::fmt::Debug for ManifestResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestResponse")
            .field("digest", &self.digest)
            .field("media_type", &self.media_type)
            .field("len", &self.bytes.len())
            .field("status", &self.status)
            .finish()
    }
}

/// A blob answer: its size, the span being streamed, and the stream.
pub struct BlobResponse {
    /// The whole blob's size.
    pub size: u64,
    /// The half-open span `stream` yields.
    pub range: Range<u64>,
    /// Where it came from.
    pub status: CacheStatus,
    /// The bytes. On a miss, the stream follows the upstream fetch and ends
    /// with an error, never cleanly, if the blob fails verification.
    pub stream: BoxStream<'static, Result<Bytes>>,
    /// On a hit from a store that keeps blobs in local files, the same
    /// bytes as a span of an open file, for a server that sends them
    /// straight from it (Linux `sendfile(2)`) instead of copying them
    /// through `stream`. Use one or the other: `stream` is lazy, so
    /// dropping it unread costs nothing.
    pub file: Option<FileBody>,
}

/// A stored blob's bytes as a span of an open local file; see
/// [`BlobResponse::file`].
///
/// While it lives, garbage collection leaves the blob alone, as it does
/// for a stream being read. Report what is sent with
/// [`sent`](Self::sent) so the served-bytes counter stays true.
pub struct FileBody {
    file: Arc<std::fs::File>,
    range: Range<u64>,
    events: Arc<dyn EventSink>,
    _in_use: InUse,
}

impl FileBody {
    /// The open file. Its bytes [`range`](Self::range) are the content;
    /// nothing else of it may be sent. A file shorter than that (cut by
    /// something outside the store) must fail the transfer, not pad it.
    pub fn file(&self) -> &Arc<std::fs::File> {
        &self.file
    }

    /// The half-open span of the file to send.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// Records `n` bytes as sent to the client.
    pub fn sent(&self, n: u64) {
        self.events.event(&Event::BytesServed(n));
    }
}

impl std::fmt::Debug for FileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBody")
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for BlobResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobResponse")
            .field("size", &self.size)
            .field("range", &self.range)
            .field("status", &self.status)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// A tag listing answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagList {
    /// The tags, in lexical order.
    pub tags: Vec<Tag>,
    /// `Miss` when the upstream answered, `Stale` when cached tags stood in.
    pub status: CacheStatus,
}

type SharedManifest = Shared<BoxFuture<'static, std::result::Result<Manifest, Arc<Error>>>>;

pub(crate) struct Inner {
    rules: RuleSet,
    upstreams: HashMap<(Registry, Option<String>), Arc<dyn Upstream>>,
    pub(crate) store: Arc<dyn BlobStore>,
    spawner: Arc<dyn Spawner>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) opts: CacheOptions,
    policies: HashMap<String, RulePolicy>,
    default_policy: RulePolicy,
    admission: Vec<Arc<dyn Admission>>,
    pub(crate) events: Arc<dyn EventSink>,
    inflight: Mutex<HashMap<Digest, Arc<Fetch>>>,
    manifest_flights: Mutex<HashMap<String, SharedManifest>>,
    in_use: Mutex<HashMap<Digest, usize>>,
    pub(crate) fetch_permits: async_lock::Semaphore,
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
    pub(crate) async fn link(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        self.store
            .put_meta(&keys::link(repo, d), Bytes::new())
            .await
    }

    async fn is_linked(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        Ok(self.store.get_meta(&keys::link(repo, d)).await?.is_some())
    }

    pub(crate) fn finish_fetch(&self, fetch: &Arc<Fetch>) {
        let mut m = lock(&self.inflight);
        if m.get(&fetch.digest).is_some_and(|f| Arc::ptr_eq(f, fetch)) {
            m.remove(&fetch.digest);
        }
    }

    pub(crate) fn is_busy(&self, d: &Digest) -> bool {
        lock(&self.inflight).contains_key(d) || lock(&self.in_use).contains_key(d)
    }

    fn policy(&self, rule: &Rule) -> &RulePolicy {
        self.policies
            .get(rule.name())
            .unwrap_or(&self.default_policy)
    }
}

/// Builds a [`PullThroughCache`].
#[derive(Debug)]
pub struct CacheBuilder {
    rules: RuleSet,
    store: Arc<dyn BlobStore>,
    spawner: Arc<dyn Spawner>,
    clock: Arc<dyn Clock>,
    upstreams: HashMap<(Registry, Option<String>), Arc<dyn Upstream>>,
    opts: CacheOptions,
    policies: HashMap<String, RulePolicy>,
    default_policy: RulePolicy,
    admission: Vec<Arc<dyn Admission>>,
    events: Arc<dyn EventSink>,
}

impl CacheBuilder {
    /// The upstream for `registry` (for rules without credentials, and for
    /// rules whose credential set has no upstream of its own).
    pub fn upstream(mut self, registry: Registry, upstream: Arc<dyn Upstream>) -> Self {
        self.upstreams.insert((registry, None), upstream);
        self
    }

    /// The upstream for `registry` used by rules naming `credentials`.
    pub fn upstream_with_credentials(
        mut self,
        registry: Registry,
        credentials: &str,
        upstream: Arc<dyn Upstream>,
    ) -> Self {
        self.upstreams
            .insert((registry, Some(credentials.to_owned())), upstream);
        self
    }

    /// The policy of the rule named `rule`.
    pub fn policy(mut self, rule: &str, policy: RulePolicy) -> Self {
        self.policies.insert(rule.to_owned(), policy);
        self
    }

    /// The policy of rules without their own.
    pub fn default_policy(mut self, policy: RulePolicy) -> Self {
        self.default_policy = policy;
        self
    }

    /// Adds an admission hook; every hook must admit a manifest.
    pub fn admission(mut self, hook: Arc<dyn Admission>) -> Self {
        self.admission.push(hook);
        self
    }

    /// Where events go.
    pub fn events(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.events = sink;
        self
    }

    /// Tunables.
    pub fn options(mut self, opts: CacheOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Checks that every rule has an upstream and every policy a rule.
    pub fn build(self) -> Result<PullThroughCache> {
        for rule in self.rules.rules() {
            let key = (
                rule.registry().clone(),
                rule.credentials().map(str::to_owned),
            );
            if !self.upstreams.contains_key(&key)
                && !self
                    .upstreams
                    .contains_key(&(rule.registry().clone(), None))
            {
                return Err(Error::InvalidRule {
                    rule: rule.name().to_owned(),
                    reason: format!("no upstream configured for registry {}", rule.registry()),
                });
            }
        }
        for name in self.policies.keys() {
            if self.rules.get(name).is_none() {
                return Err(Error::InvalidRule {
                    rule: name.clone(),
                    reason: "a policy names a rule that does not exist".into(),
                });
            }
        }
        Ok(PullThroughCache {
            inner: Arc::new(Inner {
                rules: self.rules,
                upstreams: self.upstreams,
                store: self.store,
                spawner: self.spawner,
                clock: self.clock,
                policies: self.policies,
                default_policy: self.default_policy,
                admission: self.admission,
                events: self.events,
                inflight: Mutex::new(HashMap::new()),
                manifest_flights: Mutex::new(HashMap::new()),
                in_use: Mutex::new(HashMap::new()),
                fetch_permits: async_lock::Semaphore::new(self.opts.max_concurrent_fetches.max(1)),
                opts: self.opts,
            }),
        })
    }
}

/// A pull-through cache: caching rules, one upstream per registry, a store.
///
/// Cloning is cheap and shares everything.
#[derive(Clone)]
pub struct PullThroughCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PullThroughCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullThroughCache")
            .field("rules", &self.inner.rules.len())
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

/// What one request resolved to.
struct Ctx {
    rule: Rule,
    local: RepoName,
    upstream_repo: RepoName,
    upstream: Arc<dyn Upstream>,
}

impl PullThroughCache {
    /// Starts building a cache from rules, a store, and a runtime's spawner and clock.
    pub fn builder(
        rules: RuleSet,
        store: Arc<dyn BlobStore>,
        spawner: Arc<dyn Spawner>,
        clock: Arc<dyn Clock>,
    ) -> CacheBuilder {
        CacheBuilder {
            rules,
            store,
            spawner,
            clock,
            upstreams: HashMap::new(),
            opts: CacheOptions::default(),
            policies: HashMap::new(),
            default_policy: RulePolicy::default(),
            admission: Vec::new(),
            events: Arc::new(NoEvents),
        }
    }

    /// The caching rules.
    pub fn rules(&self) -> &RuleSet {
        &self.inner.rules
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.inner.store
    }

    /// Upstream blob fetches in flight.
    pub fn inflight(&self) -> usize {
        lock(&self.inner.inflight).len()
    }

    fn ctx(&self, name: &RepoName) -> Result<Ctx> {
        let r = self.inner.rules.resolve(name)?;
        let key = (r.registry.clone(), r.credentials.map(str::to_owned));
        let upstream = self
            .inner
            .upstreams
            .get(&key)
            .or_else(|| self.inner.upstreams.get(&(r.registry.clone(), None)))
            .cloned()
            .ok_or_else(|| Error::InvalidRule {
                rule: r.rule.name().to_owned(),
                reason: format!("no upstream configured for registry {}", r.registry),
            })?;
        Ok(Ctx {
            rule: r.rule.clone(),
            local: name.clone(),
            upstream_repo: r.upstream,
            upstream,
        })
    }

    fn upstream_error(&self, ctx: &Ctx, e: &Error) {
        self.inner.events.event(&Event::UpstreamError {
            rule: ctx.rule.name(),
            code: e.code(),
        });
    }

    // ----- manifests -----

    /// A manifest by tag or digest. `accept` lists the media types the
    /// client takes (empty: any); a manifest of another type is refused as
    /// `MANIFEST_UNKNOWN`, as the distribution registry does.
    pub async fn manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestResponse> {
        let ctx = self.ctx(name)?;
        let resp = match reference {
            Reference::Digest(d) => self.manifest_by_digest(&ctx, d).await?,
            Reference::Tag(t) => self.manifest_by_tag(&ctx, t).await?,
        };
        if !accept.is_empty() && !accept.iter().any(|a| *a == resp.media_type || *a == "*/*") {
            return Err(Error::ManifestUnknown {
                repository: name.to_string(),
                reference: format!("{reference} (is {}, not in Accept)", resp.media_type),
            });
        }
        self.inner.events.event(&Event::Manifest {
            rule: ctx.rule.name(),
            status: resp.status,
        });
        Ok(resp)
    }

    async fn load_manifest(&self, d: &Digest) -> Result<Option<Manifest>> {
        let Some(mt) = self.inner.store.get_meta(&keys::manifest(d)).await? else {
            return Ok(None);
        };
        let bytes = match self.inner.store.get_bytes(d).await {
            Ok(b) => b,
            Err(Error::BlobUnknown { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Manifest {
            bytes,
            media_type: String::from_utf8_lossy(&mt).into_owned(),
            digest: d.clone(),
        }))
    }

    /// Runs the admission hooks over a manifest that is about to be served or cached.
    async fn admit(&self, ctx: &Ctx, reference: &Reference, m: &Manifest) -> Result<()> {
        if self.inner.admission.is_empty() {
            return Ok(());
        }
        let parsed = ParsedManifest::parse(&m.bytes)?;
        let platform = self
            .inner
            .store
            .get_meta(&keys::platform(&m.digest))
            .await?
            .and_then(|b| std::str::from_utf8(&b).ok().and_then(Platform::parse));
        let req = AdmissionRequest {
            rule: &ctx.rule,
            repository: &ctx.local,
            reference,
            manifest: m,
            parsed: &parsed,
            platform: platform.as_ref(),
        };
        for hook in &self.inner.admission {
            if let Err(reason) = hook.admit(&req).await {
                return Err(Error::Denied { reason });
            }
        }
        Ok(())
    }

    fn respond(m: Manifest, status: CacheStatus) -> ManifestResponse {
        ManifestResponse {
            bytes: m.bytes,
            media_type: m.media_type,
            digest: m.digest,
            status,
        }
    }

    async fn manifest_by_digest(&self, ctx: &Ctx, d: &Digest) -> Result<ManifestResponse> {
        let reference = Reference::Digest(d.clone());
        if let Some(m) = self.load_manifest(d).await? {
            if !self.inner.is_linked(&ctx.local, d).await? {
                // Stored through another repository: this one's upstream must vouch for it.
                if let Err(e) = ctx
                    .upstream
                    .head_manifest(&ctx.upstream_repo, &reference, media_types::ALL_MANIFESTS)
                    .await
                {
                    self.upstream_error(ctx, &e);
                    return Err(e);
                }
                self.inner.link(&ctx.local, d).await?;
            }
            self.admit(ctx, &reference, &m).await?;
            return Ok(Self::respond(m, CacheStatus::Hit));
        }
        let m = self.fetch_manifest(ctx, &reference, None).await?;
        Ok(Self::respond(m, CacheStatus::Miss))
    }

    async fn manifest_by_tag(&self, ctx: &Ctx, tag: &Tag) -> Result<ManifestResponse> {
        let inner = &self.inner;
        let key = keys::tag(&ctx.local, tag);
        let record = inner
            .store
            .get_meta(&key)
            .await?
            .and_then(|b| TagRecord::decode(&b));
        let policy = inner.policy(&ctx.rule).clone();
        let now = inner.clock.now();
        let reference = Reference::Tag(tag.clone());
        let mut cached = None;
        let mut age = Duration::MAX;
        if let Some(rec) = &record
            && let Some(m) = self.load_manifest(&rec.digest).await?
        {
            age = now.duration_since(rec.confirmed).unwrap_or_default();
            let fresh = match policy.tag_freshness {
                TagFreshness::Pinned => true,
                TagFreshness::Ttl(ttl) => age < ttl,
                TagFreshness::Revalidate => false,
            };
            if fresh {
                self.admit(ctx, &reference, &m).await?;
                return Ok(Self::respond(m, CacheStatus::Hit));
            }
            match ctx
                .upstream
                .head_manifest(&ctx.upstream_repo, &reference, media_types::ALL_MANIFESTS)
                .await
            {
                Ok(head) if head.digest == m.digest => {
                    let rec = TagRecord {
                        confirmed: now,
                        ..rec.clone()
                    };
                    inner.store.put_meta(&key, rec.encode()).await?;
                    self.admit(ctx, &reference, &m).await?;
                    return Ok(Self::respond(m, CacheStatus::Revalidated));
                }
                Ok(_) => {}
                Err(e) if matches!(e, Error::ManifestUnknown { .. }) => {
                    self.upstream_error(ctx, &e);
                    return Err(e);
                }
                Err(e) => {
                    self.upstream_error(ctx, &e);
                    if age <= policy.stale_if_error {
                        tracing::warn!(repo = %ctx.local, %tag, error = %e, "upstream failed; serving cached tag");
                        self.admit(ctx, &reference, &m).await?;
                        return Ok(Self::respond(m, CacheStatus::Stale));
                    }
                    return Err(e);
                }
            }
            cached = Some(m);
        }
        let observed = record.as_ref().map(|r| r.digest.clone());
        match self.fetch_manifest(ctx, &reference, observed).await {
            Ok(m) => Ok(Self::respond(m, CacheStatus::Miss)),
            Err(e) => match cached {
                Some(m)
                    if !matches!(e, Error::ManifestUnknown { .. } | Error::Denied { .. })
                        && age <= policy.stale_if_error =>
                {
                    self.admit(ctx, &reference, &m).await?;
                    Ok(Self::respond(m, CacheStatus::Stale))
                }
                _ => Err(e),
            },
        }
    }

    /// Fetches a manifest from the upstream, once however many ask at the
    /// same time, verifies, admits and stores it (and, for a tag, records
    /// it). `observed` is the tag's digest when the caller looked.
    async fn fetch_manifest(
        &self,
        ctx: &Ctx,
        reference: &Reference,
        observed: Option<Digest>,
    ) -> Result<Manifest> {
        let key = format!(
            "{}/{}@{}->{}",
            ctx.rule.registry(),
            ctx.upstream_repo,
            reference,
            ctx.local
        );
        let fut = {
            let mut flights = lock(&self.inner.manifest_flights);
            flights
                .entry(key.clone())
                .or_insert_with(|| {
                    let this = self.clone();
                    let ctx = Ctx {
                        rule: ctx.rule.clone(),
                        local: ctx.local.clone(),
                        upstream_repo: ctx.upstream_repo.clone(),
                        upstream: ctx.upstream.clone(),
                    };
                    let reference = reference.clone();
                    let key = key.clone();
                    async move {
                        let r = this.fetch_manifest_once(&ctx, &reference, observed).await;
                        lock(&this.inner.manifest_flights).remove(&key);
                        r.map_err(Arc::new)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        fut.await.map_err(|e| e.duplicate())
    }

    async fn fetch_manifest_once(
        &self,
        ctx: &Ctx,
        reference: &Reference,
        observed: Option<Digest>,
    ) -> Result<Manifest> {
        let inner = &self.inner;
        if let Reference::Tag(tag) = reference {
            // A tag that changed since the caller looked was refreshed by a
            // flight that just ended: use it instead of asking again.
            let rec = inner
                .store
                .get_meta(&keys::tag(&ctx.local, tag))
                .await?
                .and_then(|b| TagRecord::decode(&b));
            if let Some(rec) = rec
                && Some(&rec.digest) != observed.as_ref()
                && let Some(m) = self.load_manifest(&rec.digest).await?
            {
                return Ok(m);
            }
        }
        let m = match ctx
            .upstream
            .manifest(&ctx.upstream_repo, reference, media_types::ALL_MANIFESTS)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                self.upstream_error(ctx, &e);
                return Err(e);
            }
        };
        if m.bytes.len() > inner.opts.max_manifest_size {
            return Err(Error::ManifestInvalid {
                reason: format!(
                    "manifest of {} bytes exceeds the limit of {} bytes",
                    m.bytes.len(),
                    inner.opts.max_manifest_size
                ),
            });
        }
        // The upstream says which digest the bytes have; never trust it:
        // hash once, against what was asked for (or what it announced).
        let expected = match reference {
            Reference::Digest(d) => d,
            Reference::Tag(_) => &m.digest,
        };
        let actual = Digest::compute(expected.algorithm(), &m.bytes);
        if actual != *expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let parsed = ParsedManifest::parse(&m.bytes)?;
        self.admit(ctx, reference, &m).await?;
        let store = &inner.store;
        store.put(&m.digest, m.bytes.clone()).await?;
        store.touch(&m.digest, inner.clock.now()).await?;
        store
            .put_meta(
                &keys::manifest(&m.digest),
                Bytes::from(m.media_type.clone()),
            )
            .await?;
        inner.link(&ctx.local, &m.digest).await?;
        for (desc, platform) in &parsed.manifests {
            if let Some(p) = platform {
                store
                    .put_meta(&keys::platform(&desc.digest), Bytes::from(p.to_string()))
                    .await?;
            }
        }
        for desc in parsed.referenced() {
            inner.link(&ctx.local, &desc.digest).await?;
        }
        if let Reference::Tag(tag) = reference {
            let rec = TagRecord {
                digest: m.digest.clone(),
                media_type: m.media_type.clone(),
                confirmed: inner.clock.now(),
            };
            store
                .put_meta(&keys::tag(&ctx.local, tag), rec.encode())
                .await?;
        }
        Ok(m)
    }

    // ----- blobs -----

    /// Confirms with this repository's upstream that it has the blob, and
    /// records it as known under the repository.
    async fn vouch(&self, ctx: &Ctx, d: &Digest) -> Result<()> {
        if let Err(e) = ctx.upstream.head_blob(&ctx.upstream_repo, d).await {
            self.upstream_error(ctx, &e);
            return Err(e);
        }
        self.inner.link(&ctx.local, d).await
    }

    /// Whether the blob is linked to the request's repository, and its
    /// stored facts if it is stored and this repository may see it: stored
    /// content not yet linked here must be vouched for by the upstream.
    async fn stored_under(&self, ctx: &Ctx, digest: &Digest) -> Result<(bool, Option<BlobInfo>)> {
        let linked = self.inner.is_linked(&ctx.local, digest).await?;
        let stored = self.inner.store.stat(digest).await?;
        if stored.is_some() && !linked {
            self.vouch(ctx, digest).await?;
        }
        Ok((linked, stored))
    }

    /// A blob, whole or one range, from the store or through one shared
    /// upstream fetch.
    pub async fn blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobResponse> {
        let ctx = self.ctx(name)?;
        let inner = &self.inner;
        let (linked, stored) = self.stored_under(&ctx, digest).await?;
        if let Some(info) = stored {
            return self
                .serve_stored(&ctx, digest, info.last_access, range)
                .await;
        }
        let (fetch, leader) = {
            let mut m = lock(&inner.inflight);
            match m.get(digest) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Fetch::new(digest.clone(), name.clone()));
                    m.insert(digest.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if leader {
            let job = Job {
                inner: inner.clone(),
                fetch: fetch.clone(),
                upstream: ctx.upstream.clone(),
                upstream_repo: ctx.upstream_repo.clone(),
                rule: Arc::from(ctx.rule.name()),
            };
            inner.spawner.spawn(job.run().boxed());
        } else if !linked && !fetch.is_entitled(name) {
            self.vouch(&ctx, digest).await?;
            fetch.entitle(name.clone());
        }
        match fetch.ready().await? {
            Ready::InStore => self.serve_stored(&ctx, digest, None, range).await,
            Ready::Size(size) => {
                let span = match range {
                    Some(r) => r.resolve(size)?,
                    None => 0..size,
                };
                let guard = InUse::new(inner, digest);
                inner.events.event(&Event::Blob {
                    rule: ctx.rule.name(),
                    status: CacheStatus::Miss,
                });
                Ok(BlobResponse {
                    size,
                    range: span.clone(),
                    status: CacheStatus::Miss,
                    stream: fetch.stream(inner.clone(), span, guard),
                    file: None,
                })
            }
        }
    }

    async fn serve_stored(
        &self,
        ctx: &Ctx,
        digest: &Digest,
        last_access: Option<SystemTime>,
        range: Option<ByteRange>,
    ) -> Result<BlobResponse> {
        let inner = &self.inner;
        let guard = InUse::new(inner, digest);
        let read = inner.store.get(digest, range).await?;
        let now = inner.clock.now();
        let stale_access = last_access
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= inner.opts.touch_interval);
        if stale_access {
            // Access times only steer eviction; failing to record one must not fail a read.
            let _ = inner.store.touch(digest, now).await;
        }
        inner.events.event(&Event::Blob {
            rule: ctx.rule.name(),
            status: CacheStatus::Hit,
        });
        let file = read.file.map(|file| FileBody {
            file,
            range: read.range.clone(),
            events: inner.events.clone(),
            _in_use: InUse::new(inner, digest),
        });
        let events = inner.events.clone();
        let stream = read
            .stream
            .map(move |c| {
                let _keep = &guard;
                if let Ok(b) = &c {
                    events.event(&Event::BytesServed(b.len() as u64));
                }
                c
            })
            .boxed();
        Ok(BlobResponse {
            size: read.size,
            range: read.range,
            status: CacheStatus::Hit,
            stream,
            file,
        })
    }

    /// A blob's size without its body: from the store, or from a `HEAD` to
    /// the upstream (which does not start a download).
    pub async fn head_blob(&self, name: &RepoName, digest: &Digest) -> Result<(u64, CacheStatus)> {
        let ctx = self.ctx(name)?;
        let inner = &self.inner;
        if let (_, Some(info)) = self.stored_under(&ctx, digest).await? {
            return Ok((info.size, CacheStatus::Hit));
        }
        match ctx.upstream.head_blob(&ctx.upstream_repo, digest).await {
            Ok(size) => {
                inner.link(name, digest).await?;
                Ok((size, CacheStatus::Miss))
            }
            Err(e) => {
                self.upstream_error(&ctx, &e);
                Err(e)
            }
        }
    }

    // ----- tags -----

    /// The repository's tags from the upstream; the cached tags when the
    /// upstream fails (but not when it says the repository does not exist).
    pub async fn tags(&self, name: &RepoName, page: &TagPage) -> Result<TagList> {
        let ctx = self.ctx(name)?;
        match ctx.upstream.tags(&ctx.upstream_repo, page).await {
            Ok(tags) => Ok(TagList {
                tags,
                status: CacheStatus::Miss,
            }),
            Err(e) if e.is_not_found() => Err(e),
            Err(e) => {
                self.upstream_error(&ctx, &e);
                let keys = self
                    .inner
                    .store
                    .list_meta(Some(&keys::tags_prefix(name)))
                    .await?;
                let mut tags: Vec<Tag> = keys
                    .iter()
                    .filter_map(keys::parse_tag)
                    .filter(|(r, _)| r == name)
                    .map(|(_, t)| t)
                    .collect();
                if tags.is_empty() {
                    return Err(e);
                }
                tags.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                if let Some(last) = &page.last {
                    tags.retain(|t| t.as_str() > last.as_str());
                }
                if let Some(n) = page.limit {
                    tags.truncate(n);
                }
                Ok(TagList {
                    tags,
                    status: CacheStatus::Stale,
                })
            }
        }
    }
}
