//! Pull counts: how often, and when last, each tag (or manifest asked for
//! by digest) and each repository was pulled by clients.
//!
//! A pull costs no store request: it is counted in memory (a bounded map
//! of pending counts) and the counts are added to the store's records
//! (`keys::tag_pulls`, `keys::digest_pulls`, `keys::repo_pulls`) at most
//! every `FLUSH_EVERY` (10 s), by one task on the engine's spawner and clock.
//! On a shared store each instance adds its own counts with a
//! compare-and-swap, so instances do not overwrite each other's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt;

use super::{Inner, PullThroughCache, lock};
use crate::error::Result;
use crate::keys;
use crate::names::{Reference, RepoName};
use crate::store::{BlobStore, MetaKey};

/// Counts wait in memory at most this long before they are written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Distinct tags and digests counted in memory between two writes at
/// most; a pull of another one meanwhile is not counted (and the loss is
/// logged once per flush).
const MAX_PENDING: usize = 10_000;

/// How often, and when last, something was pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullStats {
    /// Pulls counted (manifests answered to clients).
    pub count: u64,
    /// The last one, if any.
    pub last: Option<SystemTime>,
}

impl PullStats {
    fn add(&mut self, other: PullStats) {
        self.count += other.count;
        self.last = self.last.max(other.last);
    }

    fn encode(&self) -> Bytes {
        let ms = self
            .last
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        Bytes::from(format!("{}\n{ms}\n", self.count))
    }

    /// `None` for anything malformed (a damaged record counts from zero).
    fn decode(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let mut it = s.lines();
        let count = it.next()?.parse().ok()?;
        let ms: u64 = it.next()?.parse().ok()?;
        Some(PullStats {
            count,
            last: (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms)),
        })
    }
}

/// Counts not written yet, by record key.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    inner: Mutex<PendingMap>,
}

/// What a pending count is for: a repository's tag or digest, or (`None`)
/// the repository as a whole. Its record key is made only when it is
/// written, so counting a pull formats nothing.
type PullKey = (RepoName, Option<Reference>);

/// The record a pending count is added to.
fn record_key((repo, reference): &PullKey) -> MetaKey {
    match reference {
        Some(Reference::Tag(t)) => keys::tag_pulls(repo, t),
        Some(Reference::Digest(d)) => keys::digest_pulls(repo, d),
        None => keys::repo_pulls(repo),
    }
}

#[derive(Debug, Default)]
struct PendingMap {
    counts: HashMap<PullKey, PullStats>,
    /// Whether a write is scheduled.
    scheduled: bool,
    /// Pulls not counted because the map was full, since the last write.
    lost: u64,
}

impl Pending {
    /// What is pending for `key`.
    fn get(&self, key: &PullKey) -> PullStats {
        lock(&self.inner)
            .counts
            .get(key)
            .copied()
            .unwrap_or_default()
    }
}

/// What one pull counts for: the tag (or the digest), and the repository.
fn keys_of(repo: &RepoName, reference: &Reference) -> [PullKey; 2] {
    [
        (repo.clone(), Some(reference.clone())),
        (repo.clone(), None),
    ]
}

impl Inner {
    /// Counts a client's pull of `reference` in `repo`, and schedules a
    /// write if none is.
    pub(crate) fn count_pull(self: &Arc<Self>, repo: &RepoName, reference: &Reference) {
        let now = self.clock.now();
        let one = PullStats {
            count: 1,
            last: Some(now),
        };
        let schedule = {
            let mut p = lock(&self.pulls.inner);
            for k in keys_of(repo, reference) {
                let full = p.counts.len() >= MAX_PENDING;
                match p.counts.get_mut(&k) {
                    Some(s) => s.add(one),
                    None if full => p.lost += 1,
                    None => {
                        p.counts.insert(k, one);
                    }
                }
            }
            !std::mem::replace(&mut p.scheduled, true)
        };
        if schedule {
            let weak = Arc::downgrade(self);
            let clock = self.clock.clone();
            self.spawner.spawn(
                async move {
                    clock.sleep(FLUSH_EVERY).await;
                    if let Some(inner) = weak.upgrade()
                        && let Err(e) = inner.flush_pulls().await
                    {
                        tracing::warn!(error = %e, "writing pull counts failed; they are lost");
                    }
                }
                .boxed(),
            );
        }
    }

    /// Adds the pending counts to the store's records.
    pub(crate) async fn flush_pulls(&self) -> Result<usize> {
        let (counts, lost) = {
            let mut p = lock(&self.pulls.inner);
            p.scheduled = false;
            (std::mem::take(&mut p.counts), std::mem::take(&mut p.lost))
        };
        if lost > 0 {
            tracing::warn!(
                lost,
                "pull counts: more distinct tags pulled between two writes than are kept ({MAX_PENDING}); some pulls were not counted"
            );
        }
        let n = counts.len();
        let mut first_error = None;
        for (key, add) in counts {
            if let Err(e) = add_to(&*self.store, &record_key(&key), add).await {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }
}

/// Adds `add` to the record under `key`: compare-and-swap on a shared
/// store (a few tries), a plain write on one that is not.
async fn add_to(store: &dyn BlobStore, key: &MetaKey, add: PullStats) -> Result<()> {
    for _ in 0..5 {
        let old = store.get_meta(key).await?;
        let mut stats = old
            .as_deref()
            .and_then(PullStats::decode)
            .unwrap_or_default();
        stats.add(add);
        if !store.shared() {
            return store.put_meta(key, stats.encode()).await;
        }
        let done = match &old {
            Some(old) => store.replace_meta(key, old, stats.encode()).await?,
            None => store.create_meta(key, stats.encode()).await?,
        };
        if done {
            return Ok(());
        }
    }
    tracing::warn!(%key, "pull counts: the record kept changing under other instances; these counts are lost");
    Ok(())
}

impl PullThroughCache {
    /// How often, and when last, clients pulled `reference` in `repo`
    /// (the counts in the store and those of this instance not written yet).
    pub async fn pull_stats(&self, repo: &RepoName, reference: &Reference) -> Result<PullStats> {
        let [key, _] = keys_of(repo, reference);
        self.stats_at(&key).await
    }

    /// How often, and when last, clients pulled anything in `repo`.
    pub async fn repository_pull_stats(&self, repo: &RepoName) -> Result<PullStats> {
        self.stats_at(&(repo.clone(), None)).await
    }

    async fn stats_at(&self, key: &PullKey) -> Result<PullStats> {
        let mut stats = self
            .inner
            .store
            .get_meta(&record_key(key))
            .await?
            .and_then(|b| PullStats::decode(&b))
            .unwrap_or_default();
        stats.add(self.inner.pulls.get(key));
        Ok(stats)
    }

    /// Writes the pull counts kept in memory now (they are written at most
    /// 10 s after a pull anyway): before a shutdown, or in a
    /// test. Returns how many records were updated.
    pub async fn flush_pull_stats(&self) -> Result<usize> {
        self.inner.flush_pulls().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_counts_from_zero() {
        let s = PullStats {
            count: 7,
            last: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
        };
        assert_eq!(PullStats::decode(&s.encode()), Some(s));
        assert_eq!(
            PullStats::decode(&PullStats::default().encode()),
            Some(PullStats::default())
        );
        assert_eq!(PullStats::decode(b"x\n1\n"), None);
    }
}
