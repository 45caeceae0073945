//! Whole images: walk a manifest (and an index's platform manifests) and
//! pull every blob through the cache, verified, ahead of the first client;
//! and a rule's prefetch, which does so in the background after a client
//! was served a manifest.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures::{FutureExt, StreamExt};

use super::response::ManifestResponse;
use super::{Ctx, PullThroughCache};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{ParsedManifest, Platform};
use crate::names::{Reference, RepoName};
use crate::policy::{Caller, Prefetch};
use crate::upstream::Accept;

/// Prefetches running at once; a manifest served while this many run
/// starts none (a later serve of it will).
pub(crate) const MAX_PREFETCH_JOBS: usize = 16;
/// Blobs one prefetch fetches at once.
const PREFETCH_CONCURRENCY: usize = 4;
/// Images remembered as prefetched (or being prefetched), so a manifest
/// served many times starts one prefetch; the oldest are forgotten first.
const MAX_PREFETCHED: usize = 10_000;
/// How long an image counts as prefetched: a manifest served again after
/// this checks its blobs again (a gc may have taken some).
const PREFETCHED_FOR: Duration = Duration::from_secs(600);

/// The prefetches this instance ran lately or runs now.
#[derive(Debug, Default)]
pub(crate) struct Prefetches {
    recent: Mutex<Recent>,
    running: AtomicUsize,
}

#[derive(Debug, Default)]
struct Recent {
    until: HashMap<(RepoName, Digest), SystemTime>,
    order: VecDeque<(RepoName, Digest)>,
}

fn lock(m: &Mutex<Recent>) -> std::sync::MutexGuard<'_, Recent> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Prefetches {
    /// Whether a prefetch of `d` for `repo` should start now: none ran
    /// lately, and fewer than [`MAX_PREFETCH_JOBS`] run. If so it counts
    /// as running until [`done`](Self::done).
    fn claim(&self, repo: &RepoName, d: &Digest, now: SystemTime) -> bool {
        let mut r = lock(&self.recent);
        let key = (repo.clone(), d.clone());
        if r.until.get(&key).is_some_and(|t| now < *t) {
            return false;
        }
        let running = self.running.fetch_add(1, Ordering::AcqRel);
        if running >= MAX_PREFETCH_JOBS {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if r.until.insert(key.clone(), now + PREFETCHED_FOR).is_none() {
            r.order.push_back(key);
        }
        while r.until.len() > MAX_PREFETCHED {
            let Some(old) = r.order.pop_front() else {
                break;
            };
            r.until.remove(&old);
        }
        true
    }

    /// A prefetch ended; one that failed may start again at the next serve.
    fn done(&self, repo: &RepoName, d: &Digest, ok: bool) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        if !ok {
            lock(&self.recent).until.remove(&(repo.clone(), d.clone()));
        }
    }

    /// Prefetches running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }
}

/// What an image consists of, as [`PullThroughCache::plan_image`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlan {
    /// The manifests fetched: the one asked for first, then the platform
    /// manifests of an index that the platform filter admitted.
    pub manifests: Vec<Digest>,
    /// The configs and layers those manifests reference, with their sizes,
    /// each once.
    pub blobs: Vec<(Digest, u64)>,
}

/// What [`PullThroughCache::pull_image`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Manifests fetched or found.
    pub manifests: usize,
    /// Blobs now stored, verified.
    pub blobs: usize,
    /// Bytes read through the cache.
    pub bytes: u64,
}

impl PullThroughCache {
    /// Fetches (and caches) the manifest `reference` of repository `name`
    /// and, for an index, the platform manifests `platforms` admits (all of
    /// them when `platforms` is empty; `os/arch` admits every variant), and
    /// lists the blobs they reference. An index offering none of the
    /// platforms is `MANIFEST_UNKNOWN`.
    pub async fn plan_image(
        &self,
        name: &RepoName,
        reference: &Reference,
        platforms: &[Platform],
    ) -> Result<ImagePlan> {
        let any = Accept::any();
        let (_, top) = self
            .manifest_answer(name, reference, &any, &Caller::Client)
            .await?;
        let parsed = ParsedManifest::parse(&top.bytes)?;
        let mut manifests = vec![top.digest.clone()];
        let mut images = Vec::new();
        if parsed.is_index() {
            for (d, p) in &parsed.manifests {
                let wanted = platforms.is_empty()
                    || p.as_ref()
                        .is_some_and(|p| platforms.iter().any(|a| a.admits(p)));
                if wanted {
                    let child = Reference::Digest(d.digest.clone());
                    let (_, m) = self
                        .manifest_answer(name, &child, &any, &Caller::Client)
                        .await?;
                    manifests.push(m.digest.clone());
                    images.push(ParsedManifest::parse(&m.bytes)?);
                }
            }
            if images.is_empty() {
                let wanted: Vec<String> = platforms.iter().map(ToString::to_string).collect();
                return Err(Error::manifest_unknown(
                    name,
                    format!("{reference} (no manifest for {})", wanted.join(", ")),
                ));
            }
        } else {
            images.push(parsed);
        }
        let mut blobs: Vec<(Digest, u64)> = images
            .iter()
            .flat_map(|m| m.config.iter().chain(m.layers.iter()))
            .filter(|d| d.urls.is_empty())
            .map(|d| (d.digest.clone(), d.size))
            .collect();
        blobs.sort();
        blobs.dedup();
        Ok(ImagePlan { manifests, blobs })
    }

    /// Reads blob `digest` of repository `name` through the cache to its
    /// end, so it is stored and verified, telling `progress` the size of
    /// each piece as it passes. Returns the bytes read.
    pub async fn prefetch_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        let r = self.blob(name, digest, None).await?;
        let mut stream = r.body.into_stream();
        let mut n = 0u64;
        while let Some(c) = stream.next().await {
            let c = c?;
            n += c.len() as u64;
            progress(c.len() as u64);
        }
        // The last byte came once the blob verified; stored is what was promised.
        self.settled(digest).await?;
        Ok(n)
    }

    /// Pulls a whole image through the cache: its manifests (see
    /// [`plan_image`](Self::plan_image)) and every blob they reference,
    /// `concurrency` at a time, each verified before it is stored. The
    /// first failure is returned; blobs already pulled stay cached.
    pub async fn pull_image(
        &self,
        name: &RepoName,
        reference: &Reference,
        platforms: &[Platform],
        concurrency: usize,
    ) -> Result<PullReport> {
        let plan = self.plan_image(name, reference, platforms).await?;
        let results: Vec<Result<u64>> = futures::stream::iter(plan.blobs.iter())
            .map(|(d, _)| self.prefetch_blob(name, d, |_| {}))
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut report = PullReport {
            manifests: plan.manifests.len(),
            ..PullReport::default()
        };
        for r in results {
            report.bytes += r?;
            report.blobs += 1;
        }
        Ok(report)
    }
}

impl PullThroughCache {
    /// Background prefetches running now (see [`Prefetch`]).
    pub fn prefetching(&self) -> usize {
        self.inner.prefetches.running()
    }

    /// Under the rule's [`Prefetch`] policy, starts fetching in the
    /// background what a client just served `m` will likely want next:
    /// for an image manifest its config and layers, for an index
    /// (`Prefetch::Image`) every platform manifest and theirs. Through the
    /// same single-flight and admission as a pull; bounded (at most
    /// [`MAX_PREFETCH_JOBS`] at once, each [`PREFETCH_CONCURRENCY`] blobs
    /// at a time); once per image in [`PREFETCHED_FOR`].
    pub(super) fn prefetch_after(&self, ctx: &Ctx, m: &ManifestResponse) {
        let mode = ctx.policy().prefetch;
        if mode == Prefetch::None {
            return;
        }
        // Claimed first: a manifest served often is parsed once a while.
        let inner = &self.inner;
        if !inner
            .prefetches
            .claim(&ctx.local, &m.digest, inner.clock.now())
        {
            return;
        }
        let (this, ctx, digest, bytes) =
            (self.clone(), ctx.clone(), m.digest.clone(), m.bytes.clone());
        inner.spawner.spawn(
            async move {
                let name = &ctx.local;
                let r = match ParsedManifest::parse(&bytes) {
                    // Under "platform" an index starts nothing: the client
                    // asks for a platform's manifest next.
                    Ok(p) if p.is_index() && mode != Prefetch::Image => Ok(PullReport::default()),
                    Ok(p) => this.fill_image(&ctx, p, &[], PREFETCH_CONCURRENCY).await,
                    Err(e) => Err(e),
                };
                match &r {
                    Ok(report) => {
                        tracing::debug!(repository = %name, %digest, ?report, "prefetched")
                    }
                    Err(e) => {
                        tracing::info!(repository = %name, %digest, error = %e, "prefetch failed; the next pull tries again")
                    }
                }
                this.inner.prefetches.done(name, &digest, r.is_ok());
            }
            .boxed(),
        );
    }

    /// Fetches into the cache what `parsed` references (for an index:
    /// the platform manifests `platforms` admits, all for none, and what
    /// they reference), `concurrency` blobs at a time, skipping what the
    /// repository already holds: the manifests resolved and the blobs and
    /// bytes fetched.
    pub(super) async fn fill_image(
        &self,
        ctx: &Ctx,
        parsed: ParsedManifest,
        platforms: &[Platform],
        concurrency: usize,
    ) -> Result<PullReport> {
        let mut report = PullReport::default();
        let mut images = Vec::new();
        if parsed.is_index() {
            for (d, p) in parsed.manifests.iter().filter(|(d, _)| d.urls.is_empty()) {
                let wanted = platforms.is_empty()
                    || p.as_ref()
                        .is_some_and(|p| platforms.iter().any(|a| a.admits(p)));
                if !wanted {
                    continue;
                }
                let m = self.manifest_by_digest(ctx, &d.digest).await?;
                images.push(ParsedManifest::parse(&m.bytes)?);
                report.manifests += 1;
            }
        } else {
            images.push(parsed);
        }
        let mut blobs: Vec<Digest> = images
            .iter()
            .flat_map(|m| m.config.iter().chain(m.layers.iter()))
            .filter(|d| d.urls.is_empty())
            .map(|d| d.digest.clone())
            .collect();
        blobs.sort();
        blobs.dedup();
        let results: Vec<Result<Option<u64>>> = futures::stream::iter(blobs)
            .map(|d| {
                let (this, name) = (self.clone(), ctx.local.clone());
                async move {
                    let inner = &this.inner;
                    if inner.is_entitled(&name, &d).await? && inner.store.stat(&d).await?.is_some()
                    {
                        return Ok(None);
                    }
                    this.prefetch_blob(&name, &d, |_| {}).await.map(Some)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for r in results {
            if let Some(n) = r? {
                report.bytes += n;
                report.blobs += 1;
            }
        }
        Ok(report)
    }
}
