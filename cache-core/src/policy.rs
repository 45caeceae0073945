//! Per-rule freshness policies and admission hooks.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::manifest::{ParsedManifest, Platform};
use crate::names::{Reference, RepoName};
use crate::rules::Rule;
use crate::upstream::Manifest;

/// How a cached tag is kept fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagFreshness {
    /// Ask the upstream for the tag's digest on every request (a `HEAD`,
    /// which Docker Hub does not count against its pull limit); reuse the
    /// cached manifest when it is unchanged.
    Revalidate,
    /// Trust a cached tag for this long after it was last confirmed.
    Ttl(Duration),
    /// Never refresh a cached tag.
    Pinned,
}

impl TagFreshness {
    /// Parses `revalidate`, `pinned` or `ttl:DURATION` (`ttl:10m`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revalidate" => Some(TagFreshness::Revalidate),
            "pinned" => Some(TagFreshness::Pinned),
            _ => s
                .strip_prefix("ttl:")
                .and_then(parse_duration)
                .map(TagFreshness::Ttl),
        }
    }
}

/// Parses `30s`, `10m`, `24h`, `7d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// The caching policy of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePolicy {
    /// How tags are kept fresh.
    pub tag_freshness: TagFreshness,
    /// How long a cached tag may be served while the upstream fails.
    pub stale_if_error: Duration,
    /// Content not accessed for this long is removed by `gc`.
    pub content_ttl: Option<Duration>,
    /// Manifests must carry a cosign signature by one of these keys
    /// (see [`SignaturePolicy`]).
    pub signatures: Option<std::sync::Arc<SignaturePolicy>>,
}

/// A rule's signature policy: a manifest is served only if a cosign
/// signature by one of `keys` covers its digest (an index's signature
/// covers its platform manifests). Signatures are found under cosign's
/// `sha256-<hex>.sig` tag and through the upstream's referrers API.
///
/// Under it, a blob is served only as part of a manifest that passed: the
/// upstream's word that it has a blob (a `HEAD`) is not enough. Signature
/// and attestation artifacts themselves (manifests whose layers are all
/// signature payloads, never runnable content) pass unsigned, so `cosign
/// verify` works through the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// The public keys a signature may be made with.
    pub keys: Vec<crate::cosign::CosignKey>,
    /// Refuse (`Enforce`) or only log and count (`Audit`).
    pub mode: SignatureMode,
    /// How long a refusal stands before the signatures are looked up
    /// again, so one published later is picked up (default 60 s).
    pub recheck_refused: Duration,
    /// How long a verified signature stands before it is looked up again
    /// (default 1 hour).
    pub recheck_allowed: Duration,
}

impl SignaturePolicy {
    /// A policy of `keys` in `mode`, with the default re-check intervals.
    pub fn new(keys: Vec<crate::cosign::CosignKey>, mode: SignatureMode) -> Self {
        SignaturePolicy {
            keys,
            mode,
            recheck_refused: Duration::from_secs(60),
            recheck_allowed: Duration::from_secs(3600),
        }
    }

    /// Whether unsigned content is refused.
    pub fn enforcing(&self) -> bool {
        self.mode == SignatureMode::Enforce
    }
}

/// What a signature policy does with content it cannot verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMode {
    /// Refuse it: `403 DENIED` with the reason.
    Enforce,
    /// Serve it, but log and count the refusal it would have been.
    Audit,
}

impl Default for RulePolicy {
    fn default() -> Self {
        RulePolicy {
            tag_freshness: TagFreshness::Revalidate,
            stale_if_error: Duration::from_secs(24 * 3600),
            content_ttl: None,
            signatures: None,
        }
    }
}

/// What an admission hook decides about.
#[derive(Debug)]
pub struct AdmissionRequest<'a> {
    /// The rule the request came through.
    pub rule: &'a Rule,
    /// The local repository.
    pub repository: &'a RepoName,
    /// The reference asked for.
    pub reference: &'a Reference,
    /// The manifest, byte-exact.
    pub manifest: &'a Manifest,
    /// What it references.
    pub parsed: &'a ParsedManifest,
    /// The platform an index declared for this manifest, when known.
    pub platform: Option<&'a Platform>,
    /// Who asks.
    pub caller: &'a Caller,
}

/// Who a request comes from, as far as admission cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Caller {
    /// A client pulling: admission applies.
    #[default]
    Client,
    /// A vulnerability scanner pulling `repository` with the short-lived
    /// credential it was given to scan it: admission does not apply (the
    /// scan is how admission is decided), and what it reads grants nothing
    /// to anyone else. The server checks the credential's scope.
    Scanner {
        /// The one repository the credential may pull.
        repository: RepoName,
    },
}

/// Makes short-lived pull credentials for one repository: what a server
/// accepts as [`Caller::Scanner`] for that repository only. A vulnerability
/// scanner is handed one to pull the image it scans through the cache.
pub trait PullCredentials: Send + Sync + fmt::Debug {
    /// An `Authorization` header value that pulls `repository`, and nothing
    /// else, for `ttl`; after that the server refuses it.
    fn issue(&self, repository: &RepoName, ttl: Duration) -> crate::Secret;
}

/// What an admission hook decided, when it did not refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The hook has nothing to say about this manifest.
    Pass,
    /// Allowed, for this reason; `fresh` when decided just now (audit
    /// events are written for fresh decisions, counted for all).
    Allowed {
        /// Why.
        reason: String,
        /// Decided just now rather than remembered.
        fresh: bool,
    },
    /// It would be refused, but the policy only audits: served.
    AuditOnly {
        /// Why it would have been refused.
        reason: String,
        /// Decided just now rather than remembered.
        fresh: bool,
    },
}

/// Accepts or refuses a manifest before it is cached or served.
#[async_trait]
pub trait Admission: Send + Sync + fmt::Debug {
    /// A [`Verdict`] admits; an error refuses: [`Error::Denied`](crate::Error::Denied) reaches
    /// the client as `403 DENIED` with the reason, and any other error
    /// (say [`Error::Unavailable`](crate::Error::Unavailable) while a verdict is not known yet) with
    /// its own status.
    async fn admit(&self, req: &AdmissionRequest<'_>) -> crate::Result<Verdict>;

    /// What the hook judges, in a word or two (`vulnerability scan`,
    /// `platforms`): how its decisions are labelled in audit events, the
    /// engine's verdict records and a console. Default: `admission hook`.
    fn name(&self) -> &str {
        "admission hook"
    }

    /// What the hook does under `rule`, in a sentence for people (a
    /// console's rule list), or `None` when it does nothing there.
    /// Default: `None`.
    fn describe(&self, rule: &Rule) -> Option<String> {
        let _ = rule;
        None
    }

    /// Whether, under `rule`, blobs may be served only as parts of
    /// manifests this hook admitted (not on the upstream's word that it
    /// has them). Default: no.
    fn restricts_blobs(&self, rule: &Rule) -> bool {
        let _ = rule;
        false
    }
}

#[async_trait]
impl<T: Admission + ?Sized> Admission for std::sync::Arc<T> {
    async fn admit(&self, req: &AdmissionRequest<'_>) -> crate::Result<Verdict> {
        (**self).admit(req).await
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn describe(&self, rule: &Rule) -> Option<String> {
        (**self).describe(rule)
    }
    fn restricts_blobs(&self, rule: &Rule) -> bool {
        (**self).restricts_blobs(rule)
    }
}

/// Admits only the listed platforms: an index must offer at least one of
/// them, and a manifest an index declared for another platform is refused.
#[derive(Debug, Clone)]
pub struct PlatformAllowList {
    allowed: Vec<Platform>,
}

impl PlatformAllowList {
    /// Admits these platforms (`linux/amd64`, `linux/arm64`; a pattern
    /// without a variant admits every variant).
    pub fn new(allowed: Vec<Platform>) -> Self {
        PlatformAllowList { allowed }
    }

    fn admitted(&self, p: &Platform) -> bool {
        self.allowed.iter().any(|a| a.admits(p))
    }

    fn list(&self) -> String {
        self.allowed
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[async_trait]
impl Admission for PlatformAllowList {
    async fn admit(&self, req: &AdmissionRequest<'_>) -> crate::Result<Verdict> {
        if req.parsed.is_index() {
            // Entries without a platform, or "unknown/unknown" (attestations), do not count.
            let platforms: Vec<&Platform> = req
                .parsed
                .manifests
                .iter()
                .filter_map(|(_, p)| p.as_ref())
                .filter(|p| p.os != "unknown")
                .collect();
            if !platforms.is_empty() && !platforms.iter().any(|p| self.admitted(p)) {
                return Err(crate::Error::denied(format!(
                    "index offers none of the allowed platforms ({})",
                    self.list()
                )));
            }
            return Ok(Verdict::Pass);
        }
        match req.platform {
            Some(p) if p.os != "unknown" && !self.admitted(p) => Err(crate::Error::denied(
                format!("platform {p} is not allowed (allowed: {})", self.list()),
            )),
            _ => Ok(Verdict::Pass),
        }
    }

    fn name(&self) -> &str {
        "platforms"
    }
}

/// Refuses images whose config and layers add up to more than a maximum.
#[derive(Debug, Clone, Copy)]
pub struct MaxImageSize {
    max: u64,
}

impl MaxImageSize {
    /// Refuses images larger than `max` bytes.
    pub fn new(max: u64) -> Self {
        MaxImageSize { max }
    }
}

#[async_trait]
impl Admission for MaxImageSize {
    async fn admit(&self, req: &AdmissionRequest<'_>) -> crate::Result<Verdict> {
        let size = req.parsed.image_size();
        if size > self.max {
            return Err(crate::Error::denied(format!(
                "image of {size} bytes exceeds the maximum of {} bytes",
                self.max
            )));
        }
        Ok(Verdict::Pass)
    }

    fn name(&self) -> &str {
        "image size"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_freshness_parse() {
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(
            TagFreshness::parse("ttl:10m"),
            Some(TagFreshness::Ttl(Duration::from_secs(600)))
        );
        assert_eq!(TagFreshness::parse("pinned"), Some(TagFreshness::Pinned));
        assert_eq!(TagFreshness::parse("ttl:"), None);
        assert_eq!(TagFreshness::parse("sometimes"), None);
    }
}
