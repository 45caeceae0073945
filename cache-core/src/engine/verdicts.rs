//! Admission decisions kept for the people who run the cache: per
//! repository and manifest, the last decision of each policy (signatures,
//! each admission hook) with its reason and details, as the pull met it
//! (`keys::verdicts`, written when a decision is made, not when it is
//! remembered); and, in memory, the most recent refusals.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Inner, PullThroughCache, lock};
use crate::digest::Digest;
use crate::error::Result;
use crate::events::AdmissionOutcome;
use crate::keys;
use crate::names::RepoName;

/// Policies with a decision kept per manifest at most (the oldest goes).
const MAX_POLICIES: usize = 8;
/// Characters of a reason kept at most.
const MAX_REASON: usize = 2000;
/// Bytes of a decision's details (as JSON) kept at most; larger ones are
/// left out.
const MAX_DETAIL: usize = 16 * 1024;
/// Refusals remembered in memory at most (one entry per repository,
/// manifest and policy, however often it recurs).
pub(crate) const MAX_RECENT: usize = 100;
/// Verdict records read at most for one repository's refusals.
const MAX_REFUSED_READ: usize = 200;

/// One admission decision on a manifest, as a pull met it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionRecord {
    /// Which policy decided: `signatures`, or an admission hook's name
    /// (`vulnerability scan`).
    pub policy: String,
    /// What it decided.
    pub outcome: AdmissionOutcome,
    /// Why, in words.
    pub reason: String,
    /// Structured details of a refusal (the findings that denied an
    /// image, as in the error's `detail`), when small enough to keep.
    pub detail: Option<serde_json::Value>,
    /// The rule the pull came through.
    pub rule: String,
    /// The tag or digest the pull asked for.
    pub reference: String,
    /// When it was decided (on the engine's clock).
    pub at: SystemTime,
}

/// A refusal, as [`PullThroughCache::recent_denials`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The repository pulled.
    pub repository: RepoName,
    /// The manifest refused.
    pub digest: Digest,
    /// The decision (the latest, when it recurred).
    pub record: AdmissionRecord,
    /// How many pulls met it since this instance started (while it stayed
    /// among the recent ones).
    pub times: u64,
}

#[derive(Serialize, Deserialize)]
struct RawRecord {
    policy: String,
    outcome: String,
    reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<serde_json::Value>,
    rule: String,
    reference: String,
    at_ms: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct RawRecords {
    decisions: Vec<RawRecord>,
}

fn outcome_of(s: &str) -> Option<AdmissionOutcome> {
    AdmissionOutcome::ALL.into_iter().find(|o| o.as_str() == s)
}

impl From<&AdmissionRecord> for RawRecord {
    fn from(r: &AdmissionRecord) -> Self {
        RawRecord {
            policy: r.policy.clone(),
            outcome: r.outcome.as_str().to_owned(),
            reason: r.reason.clone(),
            detail: r.detail.clone(),
            rule: r.rule.clone(),
            reference: r.reference.clone(),
            at_ms: r
                .at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        }
    }
}

impl RawRecord {
    fn record(self) -> Option<AdmissionRecord> {
        Some(AdmissionRecord {
            outcome: outcome_of(&self.outcome)?,
            policy: self.policy,
            reason: self.reason,
            detail: self.detail,
            rule: self.rule,
            reference: self.reference,
            at: UNIX_EPOCH + Duration::from_millis(self.at_ms),
        })
    }

    /// Whether it says what `r` says (times aside).
    fn same_as(&self, r: &RawRecord) -> bool {
        (&self.outcome, &self.reason, &self.detail, &self.rule)
            == (&r.outcome, &r.reason, &r.detail, &r.rule)
    }
}

fn decode(b: &[u8]) -> Vec<AdmissionRecord> {
    serde_json::from_slice::<RawRecords>(b)
        .map(|r| {
            r.decisions
                .into_iter()
                .filter_map(RawRecord::record)
                .collect()
        })
        .unwrap_or_default()
}

/// `s` cut to at most `max` characters.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

impl AdmissionRecord {
    /// The record as kept: the reason cut short, details left out when large.
    pub(crate) fn bounded(mut self) -> Self {
        self.reason = cut(&self.reason, MAX_REASON);
        if self
            .detail
            .as_ref()
            .is_some_and(|d| d.to_string().len() > MAX_DETAIL)
        {
            self.detail = None;
        }
        self
    }
}

impl Inner {
    /// Keeps a decision about `digest` in `repo`: among the recent
    /// refusals when it refuses (or would, under audit), and, when it was
    /// `fresh`ly made, in the store's verdict record (not rewritten when it
    /// says what the record already says).
    pub(crate) async fn keep_verdict(
        &self,
        repo: &RepoName,
        digest: &Digest,
        record: AdmissionRecord,
        fresh: bool,
    ) {
        let record = record.bounded();
        if record.outcome != AdmissionOutcome::Allowed {
            let mut recent = lock(&self.recent_denials);
            let same = recent.iter().position(|d| {
                d.repository == *repo && d.digest == *digest && d.record.policy == record.policy
            });
            let times = match same.and_then(|i| recent.remove(i)) {
                Some(d) => d.times + 1,
                None => 1,
            };
            recent.push_front(Denial {
                repository: repo.clone(),
                digest: digest.clone(),
                record: record.clone(),
                times,
            });
            recent.truncate(MAX_RECENT);
        }
        if !fresh {
            return;
        }
        if let Err(e) = self.write_verdict(repo, digest, &record).await {
            tracing::warn!(repository = %repo, %digest, error = %e, "keeping an admission decision failed");
        }
    }

    async fn write_verdict(
        &self,
        repo: &RepoName,
        digest: &Digest,
        record: &AdmissionRecord,
    ) -> Result<()> {
        let key = keys::verdicts(repo, digest);
        let mut kept: RawRecords = self
            .store
            .get_meta(&key)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let new = RawRecord::from(record);
        if let Some(i) = kept.decisions.iter().position(|r| r.policy == new.policy) {
            if kept.decisions[i].same_as(&new) {
                return Ok(());
            }
            kept.decisions.remove(i);
        }
        kept.decisions.push(new);
        if kept.decisions.len() > MAX_POLICIES {
            kept.decisions.remove(0);
        }
        let bytes = serde_json::to_vec(&kept).expect("records serialise");
        self.store.put_meta(&key, Bytes::from(bytes)).await
    }
}

impl PullThroughCache {
    /// The admission decisions kept about `digest` in `repo`, one per
    /// policy, in the order they were made.
    pub async fn verdicts(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<AdmissionRecord>> {
        Ok(self
            .inner
            .store
            .get_meta(&keys::verdicts(repo, digest))
            .await?
            .map(|b| decode(&b))
            .unwrap_or_default())
    }

    /// The manifests of `repo` a policy refused (or, under audit, would
    /// have) at their latest decision, newest first, with their decisions;
    /// at most 200 records are read.
    pub async fn refused_in(&self, repo: &RepoName) -> Result<Vec<(Digest, Vec<AdmissionRecord>)>> {
        let keys = self
            .inner
            .store
            .list_meta(Some(&keys::verdicts_of(repo)))
            .await?;
        let mut out = Vec::new();
        for key in keys.iter().take(MAX_REFUSED_READ) {
            let Some((r, digest)) = keys::parse_verdicts(key) else {
                continue;
            };
            if r != *repo {
                continue;
            }
            let Some(bytes) = self.inner.store.get_meta(key).await? else {
                continue;
            };
            let records = decode(&bytes);
            if records
                .iter()
                .any(|r| r.outcome != AdmissionOutcome::Allowed)
            {
                out.push((digest, records));
            }
        }
        let latest = |rs: &[AdmissionRecord]| rs.iter().map(|r| r.at).max();
        out.sort_by_key(|b| std::cmp::Reverse(latest(&b.1)));
        Ok(out)
    }

    /// The most recent refusals on this instance (at most 100: one per
    /// repository, manifest and policy, with how often it recurred),
    /// newest first.
    pub fn recent_denials(&self) -> Vec<Denial> {
        lock(&self.inner.recent_denials).iter().cloned().collect()
    }
}

/// The kept recent refusals.
pub(crate) type RecentDenials = std::sync::Mutex<VecDeque<Denial>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(reason: &str) -> AdmissionRecord {
        AdmissionRecord {
            policy: "signatures".into(),
            outcome: AdmissionOutcome::Refused,
            reason: reason.into(),
            detail: Some(serde_json::json!({"findings": ["CVE-1"]})),
            rule: "r".into(),
            reference: "v1".into(),
            at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
        }
    }

    #[test]
    fn records_round_trip_and_are_bounded() {
        let r = record("no signature");
        let raw = RawRecords {
            decisions: vec![RawRecord::from(&r)],
        };
        assert_eq!(decode(&serde_json::to_vec(&raw).unwrap()), vec![r]);
        assert!(decode(b"not json").is_empty());
        let long = record(&"x".repeat(5000)).bounded();
        assert_eq!(long.reason.chars().count(), MAX_REASON + 3);
        let mut big = record("r");
        big.detail = Some(serde_json::json!({"x": "y".repeat(MAX_DETAIL)}));
        assert_eq!(big.bounded().detail, None);
    }
}
