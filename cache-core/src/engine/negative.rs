//! The negative cache: an upstream's "not found" for a tag or a whole
//! repository, remembered for the rule's `negative_ttl`, so a misspelt
//! image in a crash-looping pod costs one upstream request per
//! `negative_ttl` instead of one per pull.
//!
//! It is this instance's memory (on the engine's clock), bounded in
//! entries; the oldest entry goes first when it is full. A successful
//! fetch of the tag, a tag listing that finds the repository, or a sync of
//! the repository forgets what it contradicts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::error::{Error, ErrorCode};
use crate::names::{RepoName, Tag};

/// Entries kept at once, all rules together.
pub(crate) const MAX_NEGATIVE: usize = 10_000;

/// A rule, a local repository, and a tag (`None`: the whole repository).
type Key = (Arc<str>, RepoName, Option<Tag>);

#[derive(Debug, Clone, Copy)]
struct Entry {
    said: SystemTime,
    until: SystemTime,
    code: ErrorCode,
}

#[derive(Debug, Default)]
struct Map {
    entries: HashMap<Key, Entry>,
    order: VecDeque<Key>,
}

/// What the upstream said was not there, until when.
#[derive(Debug, Default)]
pub(crate) struct Negative {
    map: Mutex<Map>,
}

fn lock(m: &Mutex<Map>) -> std::sync::MutexGuard<'_, Map> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Negative {
    /// The remembered answer for `tag` of `repo` under `rule` (`None`:
    /// for the repository's tag listing), as the error to answer with, if
    /// one is remembered at `now`. A repository whose listing was "not
    /// found" does not answer for its tags: a registry may not list tags
    /// and still serve them.
    pub(crate) fn check(
        &self,
        rule: &str,
        repo: &RepoName,
        tag: Option<&Tag>,
        now: SystemTime,
    ) -> Option<Error> {
        let mut m = lock(&self.map);
        let key = (Arc::from(rule), repo.clone(), tag.cloned());
        let e = m.entries.get(&key).copied()?;
        if now >= e.until {
            m.entries.remove(&key);
            return None;
        }
        let error = match (tag, e.code) {
            (Some(t), _) => Error::manifest_unknown(repo, t),
            (None, ErrorCode::NameUnknown) => Error::NameUnknown {
                name: repo.to_string(),
            },
            (None, _) => Error::manifest_unknown(repo, "(repository)"),
        };
        Some(Error::Remembered {
            error: Box::new(error),
            age: now.duration_since(e.said).unwrap_or_default(),
        })
    }

    /// Remembers, for `ttl` from `now`, that the upstream does not have
    /// `tag` of `repo` (or the repository, for `None`). A zero `ttl`
    /// remembers nothing.
    pub(crate) fn remember(
        &self,
        rule: &str,
        repo: &RepoName,
        tag: Option<&Tag>,
        code: ErrorCode,
        now: SystemTime,
        ttl: Duration,
    ) {
        if ttl.is_zero() {
            return;
        }
        let key = (Arc::from(rule), repo.clone(), tag.cloned());
        let mut m = lock(&self.map);
        let entry = Entry {
            said: now,
            until: now + ttl,
            code,
        };
        if m.entries.insert(key.clone(), entry).is_none() {
            m.order.push_back(key);
        }
        while m.entries.len() > MAX_NEGATIVE {
            let Some(old) = m.order.pop_front() else {
                break;
            };
            m.entries.remove(&old);
        }
    }

    /// Forgets what was remembered about `tag` of `repo` (and about the
    /// whole repository): the upstream has it after all.
    pub(crate) fn forget(&self, rule: &str, repo: &RepoName, tag: Option<&Tag>) {
        let rule: Arc<str> = Arc::from(rule);
        let mut m = lock(&self.map);
        m.entries.remove(&(rule.clone(), repo.clone(), None));
        if let Some(t) = tag {
            m.entries.remove(&(rule, repo.clone(), Some(t.clone())));
        }
        compact(&mut m);
    }

    /// Forgets everything remembered about `repo`, under any rule (a sync
    /// of it, a purge).
    pub(crate) fn forget_repo(&self, repo: &RepoName) {
        let mut m = lock(&self.map);
        m.entries.retain(|(_, r, _), _| r != repo);
        compact(&mut m);
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.map).entries.len()
    }
}

/// Drops keys of removed entries from the order queue once it holds many.
fn compact(m: &mut Map) {
    if m.order.len() > m.entries.len().saturating_mul(2).max(64) {
        let Map { entries, order } = m;
        order.retain(|k| entries.contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    fn tag(s: &str) -> Tag {
        Tag::parse(s).unwrap()
    }

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn a_remembered_tag_answers_until_its_ttl_then_not() {
        let n = Negative::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (r, v1) = (repo("library/app"), tag("v1"));
        n.remember("lib", &r, Some(&v1), ErrorCode::ManifestUnknown, t0, TTL);
        let e = n
            .check("lib", &r, Some(&v1), t0 + Duration::from_secs(3))
            .unwrap();
        assert_eq!(
            (e.code(), e.http_status()),
            (ErrorCode::ManifestUnknown, 404)
        );
        assert_eq!(e.cache_status(), Some(crate::CacheStatus::Negative));
        assert!(e.to_string().contains("3s ago"), "{e}");
        // Another tag, another rule: nothing remembered.
        assert!(n.check("lib", &r, Some(&tag("v2")), t0).is_none());
        assert!(n.check("other", &r, Some(&v1), t0).is_none());
        assert!(n.check("lib", &r, Some(&v1), t0 + TTL).is_none());
        assert_eq!(n.len(), 0, "an expired entry is dropped when looked at");
    }

    #[test]
    fn a_missing_repository_answers_for_its_listing_and_a_fetch_forgets_it() {
        let n = Negative::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let r = repo("library/nope");
        n.remember("lib", &r, None, ErrorCode::NameUnknown, t0, TTL);
        assert!(n.check("lib", &r, Some(&tag("any")), t0).is_none());
        assert_eq!(
            n.check("lib", &r, None, t0).unwrap().code(),
            ErrorCode::NameUnknown
        );
        n.forget("lib", &r, Some(&tag("any")));
        assert!(n.check("lib", &r, None, t0).is_none());
    }

    #[test]
    fn zero_ttl_remembers_nothing_and_the_map_keeps_its_bound() {
        let n = Negative::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let r = repo("a");
        n.remember(
            "lib",
            &r,
            Some(&tag("x")),
            ErrorCode::ManifestUnknown,
            t0,
            Duration::ZERO,
        );
        assert_eq!(n.len(), 0);
        for i in 0..MAX_NEGATIVE + 50 {
            let t = tag(&format!("t{i}"));
            n.remember("lib", &r, Some(&t), ErrorCode::ManifestUnknown, t0, TTL);
        }
        assert_eq!(n.len(), MAX_NEGATIVE);
        assert!(
            n.check("lib", &r, Some(&tag("t1")), t0).is_none(),
            "the oldest went first"
        );
        assert!(n.check("lib", &r, Some(&tag("t0")), t0).is_none());
        assert!(
            n.check(
                "lib",
                &r,
                Some(&tag(&format!("t{}", MAX_NEGATIVE + 49))),
                t0
            )
            .is_some()
        );
    }
}
