//! Per-rule freshness policies and admission hooks.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::manifest::{ParsedManifest, Platform};
use crate::names::{Reference, RepoName};
use crate::rules::Rule;
use crate::upstream::Manifest;

/// A version range (`>=1.2, <2`), as a sync's `semver` filter takes it.
pub use semver::VersionReq;

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
    /// How long an upstream's "not found" for a tag or a repository
    /// (`404`, `NAME_UNKNOWN`, `MANIFEST_UNKNOWN`) is remembered: asking
    /// again within this answers `404` from memory (`X-Cache: negative`)
    /// without contacting the upstream (default 30 s; zero: never
    /// remembered). A successful fetch of the tag, or a sync of the
    /// repository, forgets it.
    pub negative_ttl: Duration,
    /// What is fetched in the background after a manifest is served to a
    /// client (default [`Prefetch::None`]).
    pub prefetch: Prefetch,
    /// Tags fetched on a schedule, without a client pull (default none).
    pub sync: Option<std::sync::Arc<SyncPolicy>>,
    /// How long a cached tag is still served after the upstream withdrew
    /// it (answers `404`, `401` or `403` for it), counted from its first
    /// refusal: `X-Cache: stale`, an audit event and an
    /// [`Event::Withdrawn`](crate::Event::Withdrawn) each time; never
    /// for content the rule's policy refuses (admission runs as for any
    /// serve). Default `None`: a withdrawn tag is not served.
    pub serve_withdrawn: Option<Duration>,
    /// What a ranged request for a blob still being fetched gets
    /// (default [`ColdRanges::Wait`]).
    pub cold_ranges: ColdRanges,
}

/// What a ranged request for a blob that is still being fetched gets: the
/// rule-policy key `cold_ranges`.
///
/// Lazy-pulling clients (containerd's stargz and SOCI snapshotters, nydus,
/// image streaming) read a layer's footer, its table of contents, then
/// chunks, long before they need the whole layer; on a cold miss, waiting
/// for the whole-blob fetch to reach (and verify) a range can take the
/// whole transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColdRanges {
    /// Wait for the one whole-blob fetch: the range's bytes as they
    /// arrive, its last byte once the whole blob verified. Nothing
    /// unverified ever reaches a client complete. The default.
    #[default]
    Wait,
    /// Serve the range straight away, unverified: from what the
    /// whole-blob fetch has staged when it has got that far, else by a
    /// ranged `GET` of its own to the upstream, while the whole-blob fetch
    /// goes on and is verified and committed as always. The answer says
    /// so (`X-Content-Verified: false`); lazy-pull formats check each
    /// chunk against their own table of contents. Bounded by
    /// `CacheOptions::cold_range_max`, `cold_ranges_per_blob` and
    /// `cold_ranges_per_registry`; a range beyond those waits as under
    /// [`ColdRanges::Wait`].
    Passthrough,
}

impl ColdRanges {
    /// Parses `wait` or `passthrough`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "wait" => Some(ColdRanges::Wait),
            "passthrough" => Some(ColdRanges::Passthrough),
            _ => None,
        }
    }
}

/// The most tags one sync run fetches per repository, whatever `max_tags`.
pub const MAX_SYNC_TAGS: usize = 1000;

/// A rule's scheduled sync: every `interval`, the tags of each repository
/// that pass the filters are resolved and their images fetched, through the
/// same verified single-flight and admission as a pull.
///
/// ```
/// use cache_core::policy::{SyncPolicy, TagPattern, VersionReq};
/// use cache_core::Tag;
/// # use std::time::Duration;
///
/// let mut p = SyncPolicy::new(Duration::from_secs(600));
/// p.semver = Some(VersionReq::parse(">=1, <2").unwrap());
/// p.max_tags = Some(2);
/// let tags: Vec<Tag> = ["latest", "v1.0.0", "v1.1.0", "v1.10", "v2.0.0", "1.2.0-rc1"]
///     .iter()
///     .map(|t| Tag::parse(t).unwrap())
///     .collect();
/// let picked: Vec<String> = p.select(&tags).iter().map(|t| t.to_string()).collect();
/// assert_eq!(picked, ["v1.10", "v1.1.0"]); // newest first; no pre-release
/// p.tags = Some(TagPattern::new(r"v1\.1.*").unwrap());
/// assert_eq!(p.select(&tags).len(), 2);
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPolicy {
    /// How often (each run's start is spread by up to a tenth of it).
    pub interval: Duration,
    /// Only tags this regular expression matches, whole.
    pub tags: Option<TagPattern>,
    /// Only tags that read as versions (`1.2.3`, `v1.2`, `1`; missing
    /// parts are zero) in this range.
    pub semver: Option<VersionReq>,
    /// At most this many tags per repository: the newest by version, then
    /// by name (at most [`MAX_SYNC_TAGS`] whatever this says).
    pub max_tags: Option<usize>,
    /// Of an index, only these platforms (empty: all of them).
    pub platforms: Vec<Platform>,
    /// The local repositories a wildcard rule syncs (empty: an exact
    /// rule's one repository, or what the upstream's catalog lists under
    /// a wildcard rule's source).
    pub repositories: Vec<crate::names::RepoName>,
}

impl SyncPolicy {
    /// Every `interval`, every tag (up to [`MAX_SYNC_TAGS`]), every platform.
    pub fn new(interval: Duration) -> Self {
        SyncPolicy {
            interval,
            tags: None,
            semver: None,
            max_tags: None,
            platforms: Vec::new(),
            repositories: Vec::new(),
        }
    }

    /// Whether `tag` passes the filters.
    pub fn admits(&self, tag: &crate::names::Tag) -> bool {
        self.tags.as_ref().is_none_or(|p| p.matches(tag.as_str()))
            && self
                .semver
                .as_ref()
                .is_none_or(|r| tag_version(tag.as_str()).is_some_and(|v| r.matches(&v)))
    }

    /// The tags of `listed` a run syncs: those that pass the filters,
    /// newest first (by version, then tags that are no version by name,
    /// descending), at most `max_tags` (and [`MAX_SYNC_TAGS`]).
    pub fn select(&self, listed: &[crate::names::Tag]) -> Vec<crate::names::Tag> {
        let mut picked: Vec<(Option<semver::Version>, &crate::names::Tag)> = listed
            .iter()
            .filter(|t| self.admits(t))
            .map(|t| (tag_version(t.as_str()), t))
            .collect();
        picked.sort_by(|(va, a), (vb, b)| match (va, vb) {
            (Some(x), Some(y)) => y.cmp(x).then_with(|| b.as_str().cmp(a.as_str())),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => b.as_str().cmp(a.as_str()),
        });
        let max = self.max_tags.unwrap_or(MAX_SYNC_TAGS).min(MAX_SYNC_TAGS);
        picked
            .into_iter()
            .take(max)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

/// A tag read as a version: an optional `v`, then one to three numbers
/// (missing ones are zero), then an optional `-pre-release` and
/// `+build`. `None` for anything else (`latest`, `1.2.3.4`, `2024-05-01`).
pub fn tag_version(tag: &str) -> Option<semver::Version> {
    let s = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
    let end = s.find(['-', '+']).unwrap_or(s.len());
    let (core, rest) = s.split_at(end);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut full = parts.join(".");
    for _ in parts.len()..3 {
        full.push_str(".0");
    }
    semver::Version::parse(&format!("{full}{rest}")).ok()
}

/// A regular expression a whole tag must match (`v1\..*` matches
/// `v1.2`, not `xv1.2`), of bounded size.
#[derive(Debug, Clone)]
pub struct TagPattern {
    pattern: String,
    re: regex::Regex,
}

impl TagPattern {
    /// Compiles `pattern`, anchored at both ends; an error says why it
    /// does not compile (or is too large: more than 64 KiB compiled).
    pub fn new(pattern: &str) -> Result<Self, String> {
        let re = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(64 * 1024)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(TagPattern {
            pattern: pattern.to_owned(),
            re,
        })
    }

    /// Whether the whole of `tag` matches.
    pub fn matches(&self, tag: &str) -> bool {
        self.re.is_match(tag)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

impl PartialEq for TagPattern {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for TagPattern {}

/// What a rule fetches in the background after serving a client a
/// manifest, so the cache holds whole images although clients pull one
/// platform, or skip the layers they have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefetch {
    /// Nothing: only what clients ask for is fetched.
    #[default]
    None,
    /// After an image manifest, its config and layers.
    Platform,
    /// After an image manifest, its config and layers; after an index,
    /// every platform manifest it lists and their configs and layers.
    Image,
}

/// How long a rule remembers an upstream's "not found" unless configured.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// A rule's signature policy: a manifest is served only if a signature
/// accepted by one of its verifiers covers its digest (cosign `keys`, and
/// the `verifiers` of `cache_core::trust`: keyless identities, Notation),
/// and every attestation it requires does (an index's signature covers its
/// platform manifests). Signatures are found under cosign's
/// `sha256-<hex>.sig` (and `.att`) tags and through the upstream's
/// referrers API or its tag schema (see [`crate::signatures`]).
///
/// Under it, a blob is served only as part of a manifest that passed: the
/// upstream's word that it has a blob (a `HEAD`) is not enough. Signature
/// and attestation artifacts themselves (manifests whose layers are all
/// signature payloads, never runnable content) pass unsigned, so `cosign
/// verify` works through the cache.
#[derive(Debug, Clone)]
pub struct SignaturePolicy {
    /// The public keys a cosign signature may be made with.
    pub keys: Vec<crate::cosign::CosignKey>,
    /// Further verifiers: keyless identities, Notation, required
    /// attestations (`cache_core::trust`).
    pub verifiers: Vec<std::sync::Arc<dyn crate::signatures::Verifier>>,
    /// Refuse (`Enforce`) or only log and count (`Audit`).
    pub mode: SignatureMode,
    /// How long a refusal stands before the signatures are looked up
    /// again, so one published later is picked up (default 60 s).
    pub recheck_refused: Duration,
    /// How long a verified signature stands before it is looked up again
    /// (default 1 hour).
    pub recheck_allowed: Duration,
}

/// Equal when the keys, modes and intervals are, and the verifiers are the
/// same objects.
impl PartialEq for SignaturePolicy {
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys
            && self.mode == other.mode
            && self.recheck_refused == other.recheck_refused
            && self.recheck_allowed == other.recheck_allowed
            && self.verifiers.len() == other.verifiers.len()
            && self
                .verifiers
                .iter()
                .zip(&other.verifiers)
                .all(|(a, b)| std::sync::Arc::ptr_eq(a, b))
    }
}

impl Eq for SignaturePolicy {}

impl SignaturePolicy {
    /// A policy of `keys` in `mode`, with the default re-check intervals.
    pub fn new(keys: Vec<crate::cosign::CosignKey>, mode: SignatureMode) -> Self {
        SignaturePolicy {
            keys,
            verifiers: Vec::new(),
            mode,
            recheck_refused: Duration::from_secs(60),
            recheck_allowed: Duration::from_secs(3600),
        }
    }

    /// The same policy with these verifiers besides the keys.
    pub fn with_verifiers(
        mut self,
        verifiers: Vec<std::sync::Arc<dyn crate::signatures::Verifier>>,
    ) -> Self {
        self.verifiers = verifiers;
        self
    }

    /// Every verifier: the keys' (when there are keys), then the others.
    pub fn all_verifiers(&self) -> Vec<std::sync::Arc<dyn crate::signatures::Verifier>> {
        let mut all: Vec<std::sync::Arc<dyn crate::signatures::Verifier>> = Vec::new();
        if !self.keys.is_empty() {
            all.push(std::sync::Arc::new(crate::signatures::CosignKeys::new(
                self.keys.clone(),
            )));
        }
        all.extend(self.verifiers.iter().cloned());
        all
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
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            prefetch: Prefetch::None,
            sync: None,
            serve_withdrawn: None,
            cold_ranges: ColdRanges::Wait,
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

/// How far a request may reach for what it asks: the store only, or the
/// upstream too. A server decides it per caller (a principal granted
/// `pull` or only `pull-cached`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FetchPolicy {
    /// The rule's policy applies in full: content missing from the store
    /// is fetched, tags are revalidated, grants are confirmed with the
    /// upstream (`pull`).
    #[default]
    Upstream,
    /// Only what the store already holds, and never a request to an
    /// upstream (`pull-cached`): a stored tag is served as it was last
    /// recorded, whatever the rule's freshness; a manifest or blob the
    /// store lacks, or that this repository was never granted, is
    /// `MANIFEST_UNKNOWN`/`BLOB_UNKNOWN` (404); tag lists are the tags
    /// recorded; referrers are the index kept (an empty one when none is).
    /// The request starts no fetch and joins none; its reads still grant
    /// and admit as a client's do.
    StoreOnly,
}

/// Who a request comes from, as far as the engine cares: admission, what
/// a read grants, and how far it may reach ([`FetchPolicy`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Caller {
    /// A client pulling: admission applies, and it may cause upstream
    /// fetches.
    #[default]
    Client,
    /// A client the server identified (a user, a robot token, a workload
    /// identity, `anonymous`): a [`Caller::Client`] that reaches only as
    /// far as `fetch` allows, and whose name audit events carry.
    Principal {
        /// The principal's name, as audit events and logs show it.
        name: std::sync::Arc<str>,
        /// How far its requests may reach.
        fetch: FetchPolicy,
    },
    /// A vulnerability scanner pulling `repository` with the short-lived
    /// credential it was given to scan it: admission does not apply (the
    /// scan is how admission is decided), and what it reads grants nothing
    /// to anyone else. The server checks the credential's scope.
    Scanner {
        /// The one repository the credential may pull.
        repository: RepoName,
    },
}

impl Caller {
    /// A [`Caller::Principal`].
    ///
    /// ```
    /// use cache_core::{Caller, FetchPolicy};
    /// let c = Caller::principal("ci", FetchPolicy::StoreOnly);
    /// assert_eq!(c.fetch_policy(), FetchPolicy::StoreOnly);
    /// assert_eq!(c.name(), Some("ci"));
    /// assert_eq!(Caller::Client.fetch_policy(), FetchPolicy::Upstream);
    /// ```
    pub fn principal(name: impl AsRef<str>, fetch: FetchPolicy) -> Self {
        Caller::Principal {
            name: std::sync::Arc::from(name.as_ref()),
            fetch,
        }
    }

    /// How far this caller's requests may reach: a principal's own
    /// policy; [`FetchPolicy::Upstream`] for anyone else.
    pub fn fetch_policy(&self) -> FetchPolicy {
        match self {
            Caller::Principal { fetch, .. } => *fetch,
            Caller::Client | Caller::Scanner { .. } => FetchPolicy::Upstream,
        }
    }

    /// The name audit events carry: a principal's name, `scanner` for a
    /// scanner's credential, `None` for an unnamed client.
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Principal { name, .. } => Some(name),
            Caller::Scanner { .. } => Some("scanner"),
            Caller::Client => None,
        }
    }
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
    fn tags_read_as_versions_leniently_and_nothing_else_does() {
        for (tag, v) in [
            ("1.2.3", "1.2.3"),
            ("v1.2.3", "1.2.3"),
            ("V2", "2.0.0"),
            ("1.2", "1.2.0"),
            ("1.2.0-rc.1", "1.2.0-rc.1"),
            ("v1-alpine", "1.0.0-alpine"),
            ("3.20.1+build5", "3.20.1+build5"),
        ] {
            assert_eq!(
                tag_version(tag),
                Some(semver::Version::parse(v).unwrap()),
                "{tag}"
            );
        }
        for tag in [
            "latest",
            "1.2.3.4",
            "2024.05.01.1",
            "v",
            "x1.2",
            "1..2",
            "stable-1",
        ] {
            assert_eq!(tag_version(tag), None, "{tag}");
        }
    }

    #[test]
    fn a_sync_selects_by_both_filters_newest_first_and_at_most_max_tags() {
        let t = |s: &str| crate::names::Tag::parse(s).unwrap();
        let listed: Vec<_> = [
            "latest",
            "v1.0.0",
            "v1.1.0",
            "v2.0.0",
            "v1.2.0-rc1",
            "b",
            "a",
        ]
        .iter()
        .map(|s| t(s))
        .collect();
        let mut p = SyncPolicy::new(Duration::from_secs(2));
        let all: Vec<String> = p.select(&listed).iter().map(|t| t.to_string()).collect();
        assert_eq!(
            all,
            [
                "v2.0.0",
                "v1.2.0-rc1",
                "v1.1.0",
                "v1.0.0",
                "latest",
                "b",
                "a"
            ]
        );
        p.semver = Some(VersionReq::parse(">=1, <2").unwrap());
        let v1: Vec<String> = p.select(&listed).iter().map(|t| t.to_string()).collect();
        assert_eq!(v1, ["v1.1.0", "v1.0.0"], "a range admits no pre-release");
        p.tags = Some(TagPattern::new("v1\\.0.*").unwrap());
        assert_eq!(p.select(&listed), vec![t("v1.0.0")]);
        p.semver = None;
        p.tags = Some(TagPattern::new("[a-z]+").unwrap());
        p.max_tags = Some(2);
        let names: Vec<String> = p.select(&listed).iter().map(|t| t.to_string()).collect();
        assert_eq!(names, ["latest", "b"]);
        assert!(!TagPattern::new("v1").unwrap().matches("v10"), "anchored");
        assert!(TagPattern::new("(").is_err());
        assert!(TagPattern::new(&"a{1000}".repeat(100)).is_err(), "bounded");
    }

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
