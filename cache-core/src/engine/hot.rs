//! What the warm path knows without asking the store: small stored content
//! (manifests, config blobs) and facts about stored blobs (their size; which
//! repositories are entitled to them), in memory, bounded.
//!
//! Stored content is verified and immutable, so a copy of it never goes
//! wrong; it only takes memory, which `hot_bytes` bounds. Facts may go out
//! of date when gc removes a blob or its records, so they are trusted only
//! for `hot_validity`; and gc forgets what it removes. A cache miss costs
//! what the warm path cost before: the store answers.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::keys::TagRecord;
use crate::digest::Digest;
use crate::manifest::Platform;
use crate::names::RepoName;
use crate::store::MetaKey;

/// A map bounded by entries and by bytes, evicting the oldest insertions
/// first, whose entries may expire.
struct Bounded<K, V> {
    map: HashMap<K, (V, usize, Option<Instant>)>,
    order: VecDeque<K>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    fn get(&mut self, k: &K) -> Option<V> {
        match self.map.get(k) {
            Some((_, _, Some(expires))) if *expires <= Instant::now() => {
                self.remove(k);
                None
            }
            Some((v, _, _)) => Some(v.clone()),
            None => None,
        }
    }

    fn insert(&mut self, k: K, v: V, size: usize, expires: Option<Instant>) {
        if size > self.max_bytes || self.max_entries == 0 {
            return;
        }
        if let Some((_, old, _)) = self.map.insert(k.clone(), (v, size, expires)) {
            self.bytes -= old;
        } else {
            self.order.push_back(k);
        }
        self.bytes += size;
        while self.map.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, n, _)) = self.map.remove(&oldest) {
                self.bytes -= n;
            }
        }
    }

    fn remove(&mut self, k: &K) {
        if let Some((_, n, _)) = self.map.remove(k) {
            self.bytes -= n;
            // The order queue drops the key lazily, when it reaches the front.
        }
        if self.order.len() > self.map.len().saturating_mul(2).max(64) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
}

/// Per-entry overhead counted against the byte bound (keys, bookkeeping).
const ENTRY: usize = 128;

pub(crate) struct Hot {
    /// Small stored content, and a manifest's media type.
    content: Mutex<Bounded<Digest, (Bytes, Option<String>)>>,
    /// Stored blobs' sizes.
    sizes: Mutex<Bounded<Digest, u64>>,
    /// Entitlements known to exist.
    entitled: Mutex<Bounded<(RepoName, Digest), ()>>,
    /// Blobs whose access time was recorded within `touch_interval`.
    touched: Mutex<Bounded<Digest, ()>>,
    /// Tag records, by metadata key, trusted for `tag_validity`.
    tags: Mutex<Bounded<MetaKey, TagRecord>>,
    /// A manifest's platform as its index named it (`None`: none named).
    platforms: Mutex<Bounded<Digest, Option<Platform>>>,
    tag_validity: Duration,
    validity: Duration,
    touch_interval: Duration,
    max_item: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hot {
    /// `bytes` of memory for content, items up to `max_item` bytes, facts
    /// trusted for `validity`. Zero `bytes` turns it off.
    pub(crate) fn new(
        bytes: usize,
        max_item: usize,
        validity: Duration,
        touch_interval: Duration,
        tag_validity: Duration,
    ) -> Self {
        let facts = if bytes == 0 { 0 } else { 100_000 };
        Hot {
            tags: Mutex::new(Bounded::new(facts, usize::MAX)),
            platforms: Mutex::new(Bounded::new(facts, usize::MAX)),
            tag_validity,
            content: Mutex::new(Bounded::new(usize::MAX, bytes)),
            sizes: Mutex::new(Bounded::new(facts, usize::MAX)),
            entitled: Mutex::new(Bounded::new(facts, usize::MAX)),
            touched: Mutex::new(Bounded::new(100_000, usize::MAX)),
            validity,
            touch_interval,
            max_item,
        }
    }

    /// Whether a read of `d` should record its access time now (not done
    /// within `touch_interval`, as far as this instance knows); if so, it
    /// counts as done.
    pub(crate) fn should_touch(&self, d: &Digest) -> bool {
        let mut t = lock(&self.touched);
        if t.get(d).is_some() {
            return false;
        }
        t.insert(
            d.clone(),
            (),
            ENTRY,
            Some(Instant::now() + self.touch_interval),
        );
        true
    }

    /// A tag's record, if written or read within the tag validity.
    pub(crate) fn tag(&self, key: &MetaKey) -> Option<TagRecord> {
        if self.tag_validity.is_zero() {
            return None;
        }
        lock(&self.tags).get(key)
    }

    pub(crate) fn keep_tag(&self, key: &MetaKey, rec: &TagRecord) {
        if !self.tag_validity.is_zero() {
            let expires = Some(Instant::now() + self.tag_validity);
            lock(&self.tags).insert(key.clone(), rec.clone(), ENTRY, expires);
        }
    }

    /// Forgets a tag's record (a purge removed it).
    pub(crate) fn forget_tag(&self, key: &MetaKey) {
        lock(&self.tags).remove(key);
    }

    /// The largest content kept.
    pub(crate) fn max_item(&self) -> usize {
        self.max_item
    }

    fn expiry(&self) -> Option<Instant> {
        Some(Instant::now() + self.validity)
    }

    pub(crate) fn content(&self, d: &Digest) -> Option<(Bytes, Option<String>)> {
        lock(&self.content).get(d)
    }

    pub(crate) fn keep_content(&self, d: &Digest, bytes: Bytes, media_type: Option<String>) {
        if bytes.len() <= self.max_item {
            let size = bytes.len() + ENTRY + media_type.as_ref().map_or(0, String::len);
            lock(&self.content).insert(d.clone(), (bytes, media_type), size, None);
        }
    }

    /// `d`'s platform record, if read within the validity: `Some(None)`
    /// when it has none.
    pub(crate) fn platform(&self, d: &Digest) -> Option<Option<Platform>> {
        lock(&self.platforms).get(d)
    }

    pub(crate) fn keep_platform(&self, d: &Digest, p: Option<Platform>) {
        lock(&self.platforms).insert(d.clone(), p, ENTRY, self.expiry());
    }

    pub(crate) fn size(&self, d: &Digest) -> Option<u64> {
        lock(&self.sizes).get(d)
    }

    pub(crate) fn keep_size(&self, d: &Digest, size: u64) {
        lock(&self.sizes).insert(d.clone(), size, ENTRY, self.expiry());
    }

    pub(crate) fn is_entitled(&self, repo: &RepoName, d: &Digest) -> bool {
        lock(&self.entitled)
            .get(&(repo.clone(), d.clone()))
            .is_some()
    }

    pub(crate) fn keep_entitled(&self, repo: &RepoName, d: &Digest) {
        lock(&self.entitled).insert((repo.clone(), d.clone()), (), ENTRY, self.expiry());
    }

    /// Forgets that `repo` may read `d` (a grant withdrawn).
    pub(crate) fn forget_entitled(&self, repo: &RepoName, d: &Digest) {
        lock(&self.entitled).remove(&(repo.clone(), d.clone()));
    }

    /// Forgets a blob gc removed: its size and bytes (its entitlements
    /// expire on their own, and matter only for stored blobs).
    pub(crate) fn forget(&self, d: &Digest) {
        lock(&self.content).remove(d);
        lock(&self.sizes).remove(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_cache_keeps_to_its_byte_bound_and_drops_the_oldest() {
        let hot = Hot::new(
            3 * (100 + ENTRY),
            1000,
            Duration::from_secs(60),
            Duration::ZERO,
            Duration::ZERO,
        );
        let ds: Vec<Digest> = (0..5u8).map(|i| Digest::sha256_of(&[i])).collect();
        for d in &ds {
            hot.keep_content(d, Bytes::from(vec![0u8; 100]), None);
        }
        assert!(hot.content(&ds[0]).is_none() && hot.content(&ds[1]).is_none());
        assert!(ds[2..].iter().all(|d| hot.content(d).is_some()));
        assert!(lock(&hot.content).bytes <= 3 * (100 + ENTRY));
        // Too large for an item: never kept.
        hot.keep_content(&ds[0], Bytes::from(vec![0u8; 2000]), None);
        assert!(hot.content(&ds[0]).is_none());
    }

    #[test]
    fn facts_expire() {
        let hot = Hot::new(
            1 << 20,
            1000,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        let d = Digest::sha256_of(b"x");
        hot.keep_size(&d, 5);
        assert_eq!(hot.size(&d), None, "trusted for no time at all");
        let hot = Hot::new(
            1 << 20,
            1000,
            Duration::from_secs(60),
            Duration::ZERO,
            Duration::ZERO,
        );
        hot.keep_size(&d, 5);
        assert_eq!(hot.size(&d), Some(5));
        hot.forget(&d);
        assert_eq!(hot.size(&d), None);
    }
}
