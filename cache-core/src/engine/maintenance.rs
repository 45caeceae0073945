//! Eviction (quota by least-recent use, per-rule content TTL, what a purge
//! left unreferenced), scrub (re-verify stored content) and purge (drop a
//! repository's, a tag's or a manifest's cached records).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use super::{PullThroughCache, keys as records, lease};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::keys;
use crate::names::{Reference, RepoName, Tag};
use crate::store::{BlobInfo, BlobStoreExt, MetaKey};
use crate::verify::VerifyingStream;

/// What [`PullThroughCache::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed because their rule's content TTL passed.
    pub expired: usize,
    /// Blobs removed to get under the quota.
    pub evicted: usize,
    /// Bytes freed in all.
    pub freed_bytes: u64,
    /// Bytes still stored.
    pub remaining_bytes: u64,
    /// Blobs that would have been removed but were being read or fetched.
    pub skipped_in_use: usize,
    /// Metadata records about blobs no longer stored, removed.
    pub dropped_records: usize,
    /// Blobs removed because a purge left no repository granted them.
    pub purged: usize,
    /// On a shared store, the instance that held the gc lease when this
    /// one would have run: then nothing was done.
    pub lease_holder: Option<String>,
}

/// What [`PullThroughCache::scrub`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Blobs re-hashed.
    pub checked: usize,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Blobs that did not match their digest (or size) and were removed.
    pub removed: Vec<Digest>,
    /// Blobs skipped because they were in use.
    pub skipped_in_use: usize,
}

impl PullThroughCache {
    async fn remove_blob(&self, info: &BlobInfo) -> Result<bool> {
        let store = &self.inner.store;
        self.inner.hot.forget(&info.digest);
        let existed = store.delete(&info.digest).await?;
        // A manifest's media type is meaningless once its bytes are gone.
        store.delete_meta(&keys::manifest(&info.digest)).await?;
        if existed {
            self.inner
                .events
                .event(&Event::Evicted { bytes: info.size });
        }
        Ok(existed)
    }

    /// Removes content whose rule's TTL has passed since its last access,
    /// then the least recently used content until at most `quota` bytes
    /// remain. Never removes a blob that is being fetched or read. Records
    /// about blobs no longer stored (entitlements, platforms) go too, so
    /// the metadata stays in proportion to what is stored.
    ///
    /// On a [shared](crate::BlobStore::shared) store, one instance at a
    /// time runs gc: whoever takes the store's gc lease (renewed while gc
    /// runs); the others return at once with
    /// [`lease_holder`](GcReport::lease_holder) set. Blobs that any
    /// instance read within twice `touch_interval` are in use too: each
    /// instance renews the access time of what it is reading or fetching
    /// every half `touch_interval`.
    pub async fn gc(&self, quota: Option<u64>) -> Result<GcReport> {
        let inner = &self.inner;
        if !inner.store.shared() {
            return self.gc_now(quota).await.inspect(|r| self.gc_done(r));
        }
        let (store, opts) = (&*inner.store, &inner.opts);
        let key = keys::gc_lease();
        let mut lease = match lease::claim(
            store,
            &key,
            (&opts.instance_name, None),
            opts.lease_ttl,
            inner.clock.now(),
        )
        .await?
        {
            lease::Claim::Held(l) => l,
            lease::Claim::Busy(rec) => {
                tracing::info!(holder = %rec.holder, "gc: another instance holds the gc lease; skipping this run");
                return Ok(GcReport {
                    lease_holder: Some(rec.holder),
                    ..GcReport::default()
                });
            }
        };
        tracing::info!(instance = %opts.instance_name, taken_over = lease.taken_over, "gc: took the gc lease");
        let report = {
            let run = std::pin::pin!(self.gc_now(quota));
            let renew = std::pin::pin!(async {
                loop {
                    inner.clock.sleep(lease.renew_every()).await;
                    if !matches!(lease.renew(store, inner.clock.now()).await, Ok(true)) {
                        tracing::warn!(
                            "gc: could not renew the gc lease; another instance may start gc too"
                        );
                    }
                }
            });
            match futures::future::select(run, renew).await {
                futures::future::Either::Left((r, _)) => r,
                futures::future::Either::Right(((), run)) => run.await,
            }
        };
        if let Err(e) = lease.release(store).await {
            tracing::warn!(error = %e, "gc: releasing the gc lease failed; it lapses");
        }
        tracing::info!(?report, "gc: released the gc lease");
        report.inspect(|r| self.gc_done(r))
    }

    /// What follows a gc run that ran: its event.
    fn gc_done(&self, report: &GcReport) {
        self.inner.events.event(&Event::GcFinished(report));
    }

    async fn gc_now(&self, quota: Option<u64>) -> Result<GcReport> {
        let inner = &self.inner;
        let wiring = inner.wiring.load_full();
        let now = inner.clock.now();
        let mut report = GcReport::default();
        // Listed before the blobs, so that with no purge pending nothing
        // lies between listing the blobs and deciding what goes; a mark
        // made meanwhile waits for the next gc.
        let marks = inner.store.list_meta(Some(&keys::purged_all())).await?;
        let mut blobs: HashMap<Digest, BlobInfo> = inner
            .store
            .list_all()
            .await?
            .into_iter()
            .map(|i| (i.digest.clone(), i))
            .collect();
        let age = |t: Option<SystemTime>| {
            t.map_or(Duration::MAX, |t| now.duration_since(t).unwrap_or_default())
        };

        // On a shared store, what another instance reads lately is in use
        // too: readers renew access times every half touch_interval.
        let grace = if inner.store.shared() {
            inner.opts.touch_interval * 2
        } else {
            Duration::ZERO
        };
        let in_use = |i: &BlobInfo| inner.is_busy(&i.digest) || age(i.last_access) < grace;
        let stored: HashSet<Digest> = blobs.keys().cloned().collect();
        let dangling = |d: &Digest| !stored.contains(d) && !inner.is_busy(d);
        // Per-rule TTLs apply to content known under the rule's repositories.
        let repos = keys::repos();
        let meta = inner.store.list_meta(Some(&repos)).await?;
        for key in &meta {
            if let Some((repo, d)) = keys::parse_grant(key) {
                if dangling(&d) {
                    inner.store.delete_meta(key).await?;
                    report.dropped_records += 1;
                    continue;
                }
                let Ok(r) = wiring.rules.resolve(&repo) else {
                    continue;
                };
                let Some(ttl) = wiring.policy(r.rule).content_ttl else {
                    continue;
                };
                let Some(info) = blobs.get(&d) else { continue };
                if age(info.last_access) <= ttl {
                    continue;
                }
                if in_use(info) {
                    report.skipped_in_use += 1;
                    continue;
                }
                let info = blobs.remove(&d).expect("checked above");
                if self.remove_blob(&info).await? {
                    report.expired += 1;
                    report.freed_bytes += info.size;
                }
                inner.store.delete_meta(key).await?;
            } else if let Some((repo, _)) = keys::parse_tag(key) {
                let Ok(r) = wiring.rules.resolve(&repo) else {
                    continue;
                };
                let Some(ttl) = wiring.policy(r.rule).content_ttl else {
                    continue;
                };
                let stale = inner
                    .store
                    .get_meta(key)
                    .await?
                    .and_then(|b| records::TagRecord::decode(&b))
                    .is_none_or(|rec| age(Some(rec.confirmed)) > ttl);
                if stale {
                    inner.store.delete_meta(key).await?;
                }
            }
        }

        let platforms = keys::platforms();
        for key in inner.store.list_meta(Some(&platforms)).await? {
            if keys::parse_platform(&key).is_some_and(|d| dangling(&d)) {
                inner.store.delete_meta(&key).await?;
                report.dropped_records += 1;
            }
        }

        // Blobs a purge took grants of go, unless a repository holds them
        // again (granted since, or all along through another repository).
        let granted: HashSet<Digest> = meta
            .iter()
            .filter_map(keys::parse_grant)
            .map(|(_, d)| d)
            .collect();
        for key in marks {
            let Some(d) = keys::parse_purged(&key) else {
                continue;
            };
            if granted.contains(&d) || !blobs.contains_key(&d) {
                inner.store.delete_meta(&key).await?;
                continue;
            }
            let info = &blobs[&d];
            if in_use(info) {
                report.skipped_in_use += 1;
                continue;
            }
            // A repository granted it after the listing above (a pull racing
            // this gc) finds it gone and fetches it again, verified.
            let info = blobs.remove(&d).expect("checked above");
            if self.remove_blob(&info).await? {
                report.purged += 1;
                report.freed_bytes += info.size;
            }
            inner.store.delete_meta(&key).await?;
        }

        let mut evicted: HashSet<Digest> = HashSet::new();
        let mut total: u64 = blobs.values().map(|i| i.size).sum();
        if let Some(quota) = quota
            && total > quota
        {
            let mut order: Vec<BlobInfo> = blobs.into_values().collect();
            // Oldest access first; unknown access times count as oldest.
            order.sort_by_key(|i| i.last_access.unwrap_or(SystemTime::UNIX_EPOCH));
            for info in order {
                if total <= quota {
                    break;
                }
                if in_use(&info) {
                    report.skipped_in_use += 1;
                    continue;
                }
                if self.remove_blob(&info).await? {
                    report.evicted += 1;
                    report.freed_bytes += info.size;
                }
                total -= info.size;
                evicted.insert(info.digest);
            }
        }
        for key in &meta {
            if keys::parse_grant(key).is_some_and(|(_, d)| evicted.contains(&d)) {
                inner.store.delete_meta(key).await?;
                report.dropped_records += 1;
            }
        }
        report.remaining_bytes = total;
        Ok(report)
    }

    /// Re-hashes every stored blob that is not in use and removes those that
    /// do not match their digest.
    pub async fn scrub(&self) -> Result<ScrubReport> {
        let inner = &self.inner;
        let mut report = ScrubReport::default();
        for info in inner.store.list_all().await? {
            if inner.is_busy(&info.digest) {
                report.skipped_in_use += 1;
                continue;
            }
            let read = match inner.store.get(&info.digest, None).await {
                Ok(r) => r,
                Err(Error::BlobUnknown { .. }) => continue,
                Err(e) => return Err(e),
            };
            let mut v = VerifyingStream::new(
                read.payload.into_stream(),
                info.digest.clone(),
                Some(info.size),
            );
            let mut bad = false;
            while let Some(c) = v.next().await {
                match c {
                    Ok(_) => {}
                    Err(Error::DigestMismatch { .. } | Error::SizeMismatch { .. }) => bad = true,
                    Err(e) => return Err(e),
                }
            }
            report.checked += 1;
            report.bytes_checked += v.bytes_seen();
            if bad {
                tracing::warn!(digest = %info.digest, "scrub: stored content does not match its digest; removing");
                self.remove_blob(&info).await?;
                report.removed.push(info.digest.clone());
            }
        }
        Ok(report)
    }
}

/// What [`PullThroughCache::purge`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PurgeReport {
    /// Tag records removed.
    pub tags: usize,
    /// Manifests the repository no longer holds.
    pub manifests: usize,
    /// Grants withdrawn (what the repository may read), manifests included.
    pub grants: usize,
    /// Blobs marked for the next gc, which removes each unless some
    /// repository is granted it again by then.
    pub marked: usize,
}

impl PullThroughCache {
    /// Drops what the cache holds for repository `repo`: with `None` every
    /// record of it (tags, grants, referrers); with a tag, that tag's
    /// record, and the manifest it named with what it references unless
    /// something the repository still holds (another tag, a manifest
    /// pulled by digest) references them too; with a digest, that
    /// manifest (and an index's platform manifests) the same way, and the
    /// tags naming it. The next pull of what was dropped is a miss.
    ///
    /// Content itself goes at the next [`gc`](Self::gc): each blob whose
    /// grants this withdrew is marked, and gc removes it unless some
    /// repository (this one again, or another that shares it) is granted
    /// it by then. Nothing another repository references is lost.
    /// Repositories nested under `repo` are not touched. Audited (`target:
    /// "audit"`).
    pub async fn purge(&self, repo: &RepoName, what: Option<&Reference>) -> Result<PurgeReport> {
        let report = match what {
            None => self.purge_repository(repo).await?,
            Some(r) => self.purge_part(repo, r).await?,
        };
        self.inner.negative.forget_repo(repo);
        let what = what.map_or_else(|| "(repository)".to_owned(), ToString::to_string);
        tracing::info!(
            target: "audit",
            repository = %repo,
            reference = %what,
            tags = report.tags,
            manifests = report.manifests,
            grants = report.grants,
            marked = report.marked,
            "purge"
        );
        Ok(report)
    }

    /// Whether a purge left blobs for gc to remove (marks in the store,
    /// whichever instance or tool purged).
    pub async fn purge_pending(&self) -> Result<bool> {
        let marks = keys::purged_all();
        Ok(!self.inner.store.list_meta(Some(&marks)).await?.is_empty())
    }

    /// Withdraws `repo`'s grant of `d` and marks `d` for gc.
    async fn withdraw_and_mark(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        let store = &self.inner.store;
        self.inner.hot.forget_entitled(repo, d);
        store.delete_meta(&keys::grant(repo, d)).await?;
        store
            .put_meta(&keys::purged(d), bytes::Bytes::from(repo.to_string()))
            .await
    }

    async fn purge_repository(&self, repo: &RepoName) -> Result<PurgeReport> {
        let store = &self.inner.store;
        let mut report = PurgeReport::default();
        for key in store.list_meta(Some(&keys::repo(repo))).await? {
            // Its pull counts and kept decisions go with it.
            if keys::record_repo(&key).as_ref() == Some(repo) {
                store.delete_meta(&key).await?;
                continue;
            }
            if keys::repo_of(&key).as_ref() != Some(repo) {
                continue; // a nested repository's
            }
            if let Some((_, d)) = keys::parse_grant(&key) {
                if store.get_meta(&keys::manifest(&d)).await?.is_some() {
                    report.manifests += 1;
                }
                self.withdraw_and_mark(repo, &d).await?;
                report.grants += 1;
                report.marked += 1;
                continue;
            }
            if keys::parse_tag(&key).is_some() {
                self.inner.hot.forget_tag(&key);
                report.tags += 1;
            }
            store.delete_meta(&key).await?;
        }
        Ok(report)
    }

    async fn purge_part(&self, repo: &RepoName, what: &Reference) -> Result<PurgeReport> {
        let store = &self.inner.store;
        let mut report = PurgeReport::default();
        // The repository's tags, and what each names.
        let mut tags: Vec<(Tag, MetaKey, Digest)> = Vec::new();
        for key in store.list_meta(Some(&keys::tags(repo))).await? {
            let Some((r, t)) = keys::parse_tag(&key) else {
                continue;
            };
            let rec = store
                .get_meta(&key)
                .await?
                .and_then(|b| records::TagRecord::decode(&b));
            if let (true, Some(rec)) = (r == *repo, rec) {
                tags.push((t, key, rec.digest));
            }
        }
        let (gone, kept): (Vec<_>, Vec<_>) = tags.into_iter().partition(|(t, _, d)| match what {
            Reference::Tag(x) => t == x,
            Reference::Digest(x) => d == x,
        });
        for (t, key, _) in &gone {
            self.inner.hot.forget_tag(key);
            store.delete_meta(key).await?;
            store.delete_meta(&keys::tag_pulls(repo, t)).await?;
            report.tags += 1;
        }
        // What the repository may read, and what each stored manifest of it
        // references.
        let granted: HashSet<Digest> = store
            .list_meta(Some(&keys::grants(repo)))
            .await?
            .iter()
            .filter_map(keys::parse_grant)
            .filter(|(r, _)| r == repo)
            .map(|(_, d)| d)
            .collect();
        let mut children: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for d in &granted {
            if let Some(m) = self.load_manifest(d).await? {
                let parsed = crate::manifest::ParsedManifest::parse(&m.bytes)?;
                let refs = super::entitlement::vouched_by(&parsed).cloned().collect();
                children.insert(d.clone(), refs);
            }
        }
        let closure = |roots: Vec<Digest>| {
            let mut seen: HashSet<Digest> = HashSet::new();
            let mut todo = roots;
            while let Some(d) = todo.pop() {
                if seen.insert(d.clone()) {
                    todo.extend(children.get(&d).into_iter().flatten().cloned());
                }
            }
            seen
        };
        // A tag purged leaves its manifest to any other tag naming it.
        let roots: Vec<Digest> = match what {
            Reference::Digest(d) => vec![d.clone()],
            Reference::Tag(_) => gone
                .iter()
                .map(|(_, _, d)| d.clone())
                .filter(|d| !kept.iter().any(|(_, _, k)| k == d))
                .collect(),
        };
        let dropped = closure(roots);
        // What stays: the remaining tags' manifests, and the manifests
        // the repository holds that the purge does not reach (pulled by
        // digest), with all they reference.
        let mut stays: Vec<Digest> = kept.iter().map(|(_, _, d)| d.clone()).collect();
        stays.extend(children.keys().filter(|d| !dropped.contains(*d)).cloned());
        let stays = closure(stays);
        for d in dropped.iter().filter(|d| !stays.contains(*d)) {
            if children.contains_key(d) {
                report.manifests += 1;
                store.delete_meta(&keys::referrers(repo, d)).await?;
                store.delete_meta(&keys::verdicts(repo, d)).await?;
                store.delete_meta(&keys::digest_pulls(repo, d)).await?;
            }
            if granted.contains(d) {
                self.withdraw_and_mark(repo, d).await?;
                report.grants += 1;
                report.marked += 1;
            }
        }
        Ok(report)
    }
}
