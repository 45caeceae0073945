//! Eviction (quota by least-recent use, per-rule content TTL) and scrub
//! (re-verify stored content).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use super::{PullThroughCache, keys as records, lease};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::keys;
use crate::store::{BlobInfo, BlobStoreExt};
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
            return self.gc_now(quota).await;
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
        report
    }

    async fn gc_now(&self, quota: Option<u64>) -> Result<GcReport> {
        let inner = &self.inner;
        let wiring = inner.wiring.load_full();
        let now = inner.clock.now();
        let mut report = GcReport::default();
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
