//! Scheduled sync: a rule's `sync` policy fetches the tags it selects
//! (regex, version range, newest first, at most `max_tags`) every
//! `interval`, without a client pull, so a new release is cached before
//! the first pod asks for it, and an upstream outage then does not fail
//! the rollout.
//!
//! A run lists each repository's tags (paginated, bounded), resolves each
//! selected tag and fetches its manifests and layers through the same
//! verified single-flight and admission as a pull (signature policy, the
//! scan gate): a sync never caches what a pull would refuse. Runs are
//! spread (the first within a minute of start, the next each `interval`
//! and up to a tenth more), at most [`MAX_SYNC_RUNS`] at once, one per
//! rule at a time. A run stops at the upstream's rate limit (its pull
//! budget and reserve are the pulls'). On a [shared](crate::BlobStore::shared)
//! store one instance runs a rule's sync at a time (the lease
//! `leases/sync/<rule>`), and the run's record (`syncs/<rule>`) tells the
//! others it is not due, so there is one run per interval in all. Each run
//! is an [`Event::Sync`] and an audit line; each tag it caches anew is an
//! audit line too. The scheduler runs on the engine's spawner and clock.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::keys::TagRecord;
use super::queue::UpstreamCall;
use super::{Ctx, Inner, PullThroughCache, Wiring, lease};
use crate::error::{Error, ErrorCode, Result};
use crate::events::Event;
use crate::keys;
use crate::manifest::ParsedManifest;
use crate::names::{RepoName, Tag};
use crate::policy::SyncPolicy;
use crate::rules::{Pattern, Rule};
use crate::upstream::TagPage;

/// Sync runs at once on one instance, all rules together; more wait.
pub(crate) const MAX_SYNC_RUNS: usize = 4;
/// Tags listed per repository per run, at most.
const MAX_LISTED_TAGS: usize = 10_000;
/// The page size tags are listed in.
const TAG_PAGE: usize = 1000;
/// Repositories a run syncs, at most (listed, or from the upstream's catalog).
const MAX_REPOSITORIES: usize = 1000;
/// Error messages a report keeps (all are counted).
const MAX_ERROR_MESSAGES: usize = 10;
/// The scheduler looks at the rules at least this often: a rule a reload
/// adds starts within this.
const MAX_TICK: Duration = Duration::from_secs(10);
/// Blobs a run fetches at once.
const SYNC_CONCURRENCY: usize = 4;

/// What one sync run of a rule did, or why it did not run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The rule.
    pub rule: String,
    /// The instance that ran it (`CacheOptions::instance_name`).
    pub instance: String,
    /// Repositories listed and synced (the last one only in part when
    /// the run stopped at the upstream's rate limit).
    pub repositories: usize,
    /// Tags the upstream listed.
    pub tags_listed: usize,
    /// Tags that passed the filters (the ones synced).
    pub tags_seen: usize,
    /// Of those, tags cached anew: not cached before, or moved upstream.
    pub tags_new: usize,
    /// Manifests resolved (tags, and the platform manifests of indexes).
    pub manifests: usize,
    /// Blobs fetched (those already cached are not counted).
    pub blobs: usize,
    /// Bytes fetched.
    pub bytes: u64,
    /// Failures (a repository that could not be listed, a tag that could
    /// not be fetched or was refused); the run goes on past each, but
    /// stops at the upstream's rate limit.
    pub errors: usize,
    /// The first few failures, as messages.
    pub error_messages: Vec<String>,
    /// Why the run did not happen: another instance holds the rule's
    /// sync lease.
    pub skipped: Option<String>,
}

impl SyncReport {
    fn error(&mut self, what: impl std::fmt::Display, e: &Error) {
        self.errors += 1;
        if self.error_messages.len() < MAX_ERROR_MESSAGES {
            self.error_messages.push(format!("{what}: {e}"));
        }
    }
}

/// A rule's last run, as kept in the store (`syncs/<rule>`).
#[derive(Debug, Serialize, Deserialize)]
struct SyncRecord {
    started_ms: u64,
    finished_ms: Option<u64>,
    instance: String,
    report: Option<SyncReport>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// What the engine keeps about sync: runs under way, the schedule.
#[derive(Debug)]
pub(crate) struct SyncState {
    /// Per rule, held while its run is under way here.
    running: Mutex<HashMap<String, std::sync::Arc<async_lock::Mutex<()>>>>,
    slots: async_lock::Semaphore,
    next: Mutex<HashMap<String, SystemTime>>,
    started: AtomicBool,
    seed: std::collections::hash_map::RandomState,
    draws: AtomicU64,
}

impl Default for SyncState {
    fn default() -> Self {
        SyncState {
            running: Mutex::new(HashMap::new()),
            slots: async_lock::Semaphore::new(MAX_SYNC_RUNS),
            next: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
            seed: Default::default(),
            draws: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SyncState {
    /// A random fraction in [0, 1) (a process-random hash of a counter).
    fn random(&self) -> f64 {
        let h = self
            .seed
            .hash_one(self.draws.fetch_add(1, Ordering::Relaxed));
        (h >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The wait before a rule's first run: up to `interval`, at most a minute.
    fn first_delay(&self, interval: Duration) -> Duration {
        interval.min(Duration::from_secs(60)).mul_f64(self.random())
    }

    /// The spread added to each interval: up to a tenth of it, at most a minute.
    fn jitter(&self, interval: Duration) -> Duration {
        (interval / 10)
            .min(Duration::from_secs(60))
            .mul_f64(self.random())
    }
}

/// Whether a run goes on after a repository.
enum Go {
    On,
    /// The upstream's rate limit was reached.
    Stop,
}

/// How a scheduled run came out.
enum Outcome {
    /// It ran, or found another instance running it (the report says).
    Ran(SyncReport),
    /// Another run of it started less than an interval ago: due then.
    NotDue(SystemTime),
}

impl PullThroughCache {
    /// Runs rule `rule`'s sync now, whenever it last ran, and says what it
    /// did. A run of the rule under way here is waited for first. On a
    /// shared store, if another instance holds the rule's sync lease,
    /// nothing runs and the report says who
    /// ([`skipped`](SyncReport::skipped)). A rule that does not exist or
    /// has no sync policy is an error naming it.
    pub async fn sync(&self, rule: &str) -> Result<SyncReport> {
        match self.run_sync(rule, true).await? {
            Outcome::Ran(r) => Ok(r),
            Outcome::NotDue(_) => unreachable!("a forced run is always due"),
        }
    }

    /// The rules that have a sync policy now, with their policies.
    pub fn synced_rules(&self) -> Vec<(String, std::sync::Arc<SyncPolicy>)> {
        synced(&self.inner.wiring.load())
    }

    /// Starts the scheduler (once; later calls do nothing): every rule
    /// with a sync policy runs every `interval`, spread, on the engine's
    /// spawner and clock; rules a reload adds or changes are picked up
    /// within ten seconds. It ends when the engine is dropped. Tools that
    /// only fill or inspect the cache do not start it.
    pub fn start_sync(&self) {
        if self.inner.sync.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = std::sync::Arc::downgrade(&self.inner);
        self.inner.spawner.spawn(schedule(weak).boxed());
    }

    async fn run_sync(&self, rule: &str, force: bool) -> Result<Outcome> {
        let inner = &self.inner;
        let wiring = inner.wiring.load_full();
        let r = wiring
            .rules
            .get(rule)
            .ok_or_else(|| Error::invalid_rule(rule, "no such rule"))?
            .clone();
        let policy = wiring
            .policy(&r)
            .sync
            .clone()
            .ok_or_else(|| Error::invalid_rule(rule, "the rule has no sync policy"))?;
        let mut report = SyncReport {
            rule: rule.to_owned(),
            instance: inner.opts.instance_name.clone(),
            ..SyncReport::default()
        };
        let state = &inner.sync;
        let one = lock(&state.running)
            .entry(rule.to_owned())
            .or_default()
            .clone();
        // A scheduled run gives way to one under way; a forced one waits for it.
        let _running = match (one.try_lock(), force) {
            (Some(g), _) => g,
            (None, true) => one.lock().await,
            (None, false) => return Ok(Outcome::NotDue(inner.clock.now() + policy.interval)),
        };
        let _slot = state.slots.acquire().await;
        let (store, opts) = (&*inner.store, &inner.opts);
        let mut held = None;
        if store.shared() {
            let key = keys::sync_lease(rule);
            let now = inner.clock.now();
            match lease::claim(
                store,
                &key,
                (&opts.instance_name, None),
                opts.lease_ttl,
                now,
            )
            .await?
            {
                lease::Claim::Held(l) => held = Some(l),
                lease::Claim::Busy(rec) => {
                    report.skipped = Some(format!("instance {} is running it", rec.holder));
                    inner.events.event(&Event::Sync {
                        rule,
                        report: &report,
                    });
                    return Ok(Outcome::Ran(report));
                }
            }
        }
        let outcome = self
            .run_holding(&r, &policy, force, report, held.as_mut())
            .await;
        if let Some(l) = held
            && let Err(e) = l.release(store).await
        {
            tracing::warn!(rule, error = %e, "sync: releasing the sync lease failed; it lapses");
        }
        outcome
    }

    /// A run, with the rule's lease held (on a shared store): due unless
    /// forced, recorded before and after.
    async fn run_holding(
        &self,
        rule: &Rule,
        policy: &SyncPolicy,
        force: bool,
        mut report: SyncReport,
        held: Option<&mut lease::Lease>,
    ) -> Result<Outcome> {
        let (inner, name) = (&self.inner, rule.name());
        let store = &*inner.store;
        let key = keys::sync_record(name);
        let started = inner.clock.now();
        if !force {
            let last = store
                .get_meta(&key)
                .await?
                .and_then(|b| serde_json::from_slice::<SyncRecord>(&b).ok());
            if let Some(last) = last {
                let due = UNIX_EPOCH + Duration::from_millis(last.started_ms) + policy.interval;
                if started < due {
                    return Ok(Outcome::NotDue(due));
                }
            }
        }
        let record = |finished: Option<SystemTime>, report: Option<&SyncReport>| {
            let r = SyncRecord {
                started_ms: millis(started),
                finished_ms: finished.map(millis),
                instance: inner.opts.instance_name.clone(),
                report: report.cloned(),
            };
            bytes::Bytes::from(serde_json::to_vec(&r).unwrap_or_default())
        };
        store.put_meta(&key, record(None, None)).await?;
        {
            let run = std::pin::pin!(self.run_rule(rule, policy, &mut report));
            match held {
                None => run.await,
                Some(lease) => {
                    let renew = std::pin::pin!(async {
                        loop {
                            inner.clock.sleep(lease.renew_every()).await;
                            if !matches!(lease.renew(store, inner.clock.now()).await, Ok(true)) {
                                tracing::warn!(
                                    rule = name,
                                    "sync: could not renew the sync lease; another instance may sync this rule too"
                                );
                            }
                        }
                    });
                    match futures::future::select(run, renew).await {
                        futures::future::Either::Left(((), _)) => {}
                        futures::future::Either::Right(((), run)) => run.await,
                    }
                }
            }
        }
        let finished = inner.clock.now();
        if let Err(e) = store
            .put_meta(&key, record(Some(finished), Some(&report)))
            .await
        {
            tracing::warn!(rule = name, error = %e, "sync: recording the run failed");
        }
        let took_ms = finished
            .duration_since(started)
            .unwrap_or_default()
            .as_millis() as u64;
        let log = |r: &SyncReport| {
            tracing::info!(
                target: "audit",
                rule = name,
                instance = %r.instance,
                repositories = r.repositories,
                tags_seen = r.tags_seen,
                tags_new = r.tags_new,
                blobs = r.blobs,
                bytes = r.bytes,
                errors = r.errors,
                took_ms,
                "sync"
            )
        };
        log(&report);
        if report.errors > 0 {
            tracing::warn!(rule = name, errors = ?report.error_messages, "sync: some of the run failed");
        }
        inner.events.event(&Event::Sync {
            rule: name,
            report: &report,
        });
        Ok(Outcome::Ran(report))
    }

    /// Syncs every repository of the rule, recording into `report`.
    async fn run_rule(&self, rule: &Rule, policy: &SyncPolicy, report: &mut SyncReport) {
        let repos = match self.sync_repositories(rule, policy).await {
            Ok(r) => r,
            Err(e) => {
                report.error("repositories", &e);
                return;
            }
        };
        for repo in repos {
            let limited = match self.sync_repository(rule, policy, &repo, report).await {
                Ok(Go::On) => {
                    report.repositories += 1;
                    false
                }
                Ok(Go::Stop) => {
                    // Listed, and synced up to the rate limit.
                    report.repositories += 1;
                    true
                }
                Err(e) => {
                    report.error(&repo, &e);
                    e.code() == ErrorCode::TooManyRequests
                }
            };
            if limited {
                tracing::warn!(
                    rule = rule.name(),
                    "sync: the upstream's rate limit (or its reserve) is reached; the run stops"
                );
                return;
            }
        }
    }

    /// The local repositories the rule syncs: its `repositories`, an exact
    /// rule's one, or those a wildcard rule's upstream lists in its catalog
    /// under its source (at most [`MAX_REPOSITORIES`]).
    async fn sync_repositories(&self, rule: &Rule, policy: &SyncPolicy) -> Result<Vec<RepoName>> {
        if !policy.repositories.is_empty() {
            return Ok(policy.repositories.clone());
        }
        let prefix = match (rule.target(), rule.source()) {
            (Pattern::Exact(local), _) => return Ok(vec![local.clone()]),
            (_, Pattern::Prefix(p)) => p.clone(),
            (_, Pattern::Exact(_)) => unreachable!("both sides of a rule are wildcards or neither"),
        };
        let wiring = self.inner.wiring.load_full();
        let set = wiring
            .upstreams
            .get(rule.registry())
            .ok_or_else(|| Error::invalid_rule(rule.name(), "no upstream for its registry"))?;
        let upstream = rule
            .credentials()
            .and_then(|c| set.by_credentials.get(c))
            .or(set.default.as_ref())
            .cloned()
            .ok_or_else(|| Error::invalid_rule(rule.name(), "no upstream for its registry"))?;
        let mut out = Vec::new();
        let mut last: Option<RepoName> = None;
        loop {
            let page = self
                .inner
                .call(UpstreamCall::Catalog, || {
                    upstream.catalog(last.as_ref(), TAG_PAGE)
                })
                .await?;
            let Some(page) = page else {
                return Err(Error::invalid_rule(
                    rule.name(),
                    "a wildcard rule syncs the repositories its sync.repositories lists: the upstream offers no catalog",
                ));
            };
            let full = page.len() >= TAG_PAGE;
            last = page.last().cloned();
            for up in page {
                let under = prefix
                    .as_ref()
                    .is_none_or(|p| up.as_str().starts_with(&format!("{p}/")));
                if !under {
                    continue;
                }
                if let Ok(r) = wiring.rules.resolve_upstream(rule.registry(), &up)
                    && r.rule.name() == rule.name()
                {
                    out.push(r.local);
                }
                if out.len() >= MAX_REPOSITORIES {
                    return Ok(out);
                }
            }
            if !full || last.is_none() {
                return Ok(out);
            }
        }
    }

    /// Lists one repository's tags and fetches those the policy selects,
    /// recording each tag's failure: whether the run may go on (not at
    /// the upstream's rate limit). `Err` when the tags cannot be listed.
    async fn sync_repository(
        &self,
        rule: &Rule,
        policy: &SyncPolicy,
        repo: &RepoName,
        report: &mut SyncReport,
    ) -> Result<Go> {
        let mut ctx = self.ctx_for(repo, &crate::policy::Caller::Client)?;
        if ctx.rule.name() != rule.name() {
            return Err(Error::invalid_rule(
                rule.name(),
                format!("{repo} is served by rule {:?}", ctx.rule.name()),
            ));
        }
        ctx.job = true;
        let listed = self.list_all_tags(&ctx).await?;
        report.tags_listed += listed.len();
        self.inner.negative.forget_repo(repo);
        let selected = policy.select(&listed);
        report.tags_seen += selected.len();
        for tag in selected {
            if let Err(e) = self.sync_tag(&ctx, policy, &tag, report).await {
                report.error(format_args!("{repo}:{tag}"), &e);
                if e.code() == ErrorCode::TooManyRequests {
                    return Ok(Go::Stop);
                }
            }
        }
        Ok(Go::On)
    }

    /// Every tag of the repository, a page at a time, at most
    /// [`MAX_LISTED_TAGS`].
    async fn list_all_tags(&self, ctx: &Ctx) -> Result<Vec<Tag>> {
        let mut all: Vec<Tag> = Vec::new();
        loop {
            let page = TagPage {
                limit: Some(TAG_PAGE),
                last: all.last().cloned(),
            };
            let got = self
                .inner
                .call(UpstreamCall::Tags, || {
                    ctx.upstream.tags(&ctx.upstream_repo, &page)
                })
                .await?;
            let n = got.len();
            // A page must move on: an upstream that repeats itself ends the listing.
            let fresh: Vec<Tag> = got
                .into_iter()
                .filter(|t| page.last.as_ref().is_none_or(|l| t.as_str() > l.as_str()))
                .collect();
            let progressed = !fresh.is_empty();
            all.extend(fresh);
            if n < TAG_PAGE || !progressed || all.len() >= MAX_LISTED_TAGS {
                all.truncate(MAX_LISTED_TAGS);
                return Ok(all);
            }
        }
    }

    /// Resolves one tag (asking the upstream, unless the rule pins tags)
    /// and fetches its image.
    async fn sync_tag(
        &self,
        ctx: &Ctx,
        policy: &SyncPolicy,
        tag: &Tag,
        report: &mut SyncReport,
    ) -> Result<()> {
        let key = keys::tag(&ctx.local, tag);
        let before = self
            .inner
            .store
            .get_meta(&key)
            .await?
            .and_then(|b| TagRecord::decode(&b))
            .map(|r| r.digest);
        let m = self.manifest_by_tag(ctx, tag).await?;
        report.manifests += 1;
        if before.as_ref() != Some(&m.digest) {
            report.tags_new += 1;
            tracing::info!(
                target: "audit",
                rule = ctx.rule.name(),
                repository = %ctx.local,
                %tag,
                digest = %m.digest,
                "sync cached a tag"
            );
        }
        let parsed = ParsedManifest::parse(&m.bytes)?;
        let filled = self
            .fill_image(ctx, parsed, &policy.platforms, SYNC_CONCURRENCY)
            .await?;
        report.manifests += filled.manifests;
        report.blobs += filled.blobs;
        report.bytes += filled.bytes;
        Ok(())
    }
}

/// The rules with a sync policy in `wiring`.
fn synced(wiring: &Wiring) -> Vec<(String, std::sync::Arc<SyncPolicy>)> {
    let mut v: Vec<_> = wiring
        .policies
        .iter()
        .filter_map(|(name, p)| p.sync.clone().map(|s| (name.clone(), s)))
        .collect();
    if let Some(s) = &wiring.default_policy.sync {
        v.extend(
            wiring
                .rules
                .rules()
                .iter()
                .filter(|r| !wiring.policies.contains_key(r.name()))
                .map(|r| (r.name().to_owned(), s.clone())),
        );
    }
    v
}

/// The scheduler: starts each synced rule's run when it is due, then
/// sleeps until the next is (at most [`MAX_TICK`]), holding the engine
/// only while it looks.
async fn schedule(weak: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let this = PullThroughCache { inner };
        let (state, clock) = (&this.inner.sync, this.inner.clock.clone());
        let now = clock.now();
        let rules = synced(&this.inner.wiring.load());
        let mut wait = MAX_TICK;
        lock(&state.running).retain(|name, _| rules.iter().any(|(n, _)| n == name));
        {
            let mut next = lock(&state.next);
            next.retain(|name, _| rules.iter().any(|(n, _)| n == name));
            for (name, policy) in &rules {
                let at = *next
                    .entry(name.clone())
                    .or_insert_with(|| now + state.first_delay(policy.interval));
                if now < at {
                    wait = wait.min(at.duration_since(now).unwrap_or_default());
                    continue;
                }
                // Provisional: a run that finds it is not due yet corrects it.
                let then = now + policy.interval + state.jitter(policy.interval);
                next.insert(name.clone(), then);
                wait = wait.min(policy.interval);
                let (run, name, interval) = (this.clone(), name.clone(), policy.interval);
                this.inner.spawner.spawn(
                    async move {
                        match run.run_sync(&name, false).await {
                            Ok(Outcome::NotDue(due)) => {
                                let state = &run.inner.sync;
                                let at = due + state.jitter(interval);
                                lock(&state.next).insert(name, at);
                            }
                            Ok(Outcome::Ran(_)) => {}
                            Err(e) => tracing::warn!(rule = %name, error = %e, "sync failed"),
                        }
                    }
                    .boxed(),
                );
            }
        }
        drop(this);
        clock.sleep(wait.max(Duration::from_millis(50))).await;
    }
}
