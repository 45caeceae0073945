//! Configuration (feature `serde`): the engine's configurable types
//! deserialise and validate themselves, so every program that embeds the
//! engine gets the same checks and the same messages.
//!
//! ```
//! use cache_core::CacheOptions;
//!
//! let opts: CacheOptions = toml::from_str("max_retries = 5\nstall_timeout = \"30s\"")?;
//! assert_eq!(opts.max_retries, 5);
//! assert_eq!(opts.stall_timeout, std::time::Duration::from_secs(30));
//! // Bounds are checked, and the error names the key and the value.
//! let err = toml::from_str::<CacheOptions>("max_retries = 50").unwrap_err();
//! assert!(err.message().contains("max_retries = 50: at most 10"), "{err}");
//! # Ok::<(), toml::de::Error>(())
//! ```
//!
//! Durations are written as people write them (`"200ms"`, `"30s"`,
//! `"10m"`, `"24h"`, `"7d"`), byte sizes as a number of bytes or with a
//! unit (`512`, `"10KiB"`, `"50GiB"`, `"1.5GB"`). Every table refuses
//! unknown keys.
//!
//! Errors name the key, relative to the table being read, and the value:
//! `max_retries = 50: at most 10`. A program that nests a table under a
//! section (`[upstream]`, `rule[3]`) prefixes the section with
//! [`ConfigError::at`] or [`join_key`], which gives
//! `upstream.max_retries = 50: at most 10`. A value of the wrong type, or
//! not one of an enum's names, gets serde's own message (the variants or
//! the type expected), placed at the key by the format (toml shows the
//! line) or by `serde_path_to_error`, which gives the key's path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Error as _};

use crate::cosign::CosignKey;
use crate::engine::CacheOptions;
use crate::policy::{
    ColdRanges, MAX_SYNC_TAGS, Prefetch, RulePolicy, SignatureMode, SyncPolicy, TagFreshness,
    TagPattern, VersionReq, parse_duration,
};

mod signatures;
use crate::rules::{Rule, RuleSet, RuleSpec};
pub use signatures::{
    AttestationSpec, KeylessSpec, MatchSpec, NotationSpec, SignatureFiles, SignatureSpec,
};

/// A configuration error: the key (relative to the table read) and the
/// offending value, or what is wrong with the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }

    /// The same error for a table read at `path` (`upstream`, `rule[3]`):
    /// see [`join_key`].
    pub fn at(self, path: &str) -> Self {
        ConfigError(join_key(path, &self.0))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// `message` about something at `path`: a message that starts with a key
/// (`max_retries = 50: ...`, `cosign_keys: ...`) continues the path
/// (`upstream.max_retries = 50: ...`); one that starts with a value (a
/// scalar's own error, raised at the key's path: `"1y": ...`) gets
/// `path = `; anything else (serde's own messages) follows `path: `.
pub fn join_key(path: &str, message: &str) -> String {
    let path = path.trim_matches('.');
    if path.is_empty() {
        return message.to_owned();
    }
    if message.starts_with(['"', '-']) || message.starts_with(|c: char| c.is_ascii_digit()) {
        return format!("{path} = {message}");
    }
    let ident = message
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(message.len());
    let rest =
        message[ident..].trim_start_matches(|c: char| c.is_ascii_digit() || "[]".contains(c));
    let continues = ident > 0
        && [" = ", ": ", ".", " is ", " needs ", " and ", " entry "]
            .iter()
            .any(|s| rest.starts_with(s));
    if continues {
        format!("{path}.{message}")
    } else {
        format!("{path}: {message}")
    }
}

/// Parses `512`, `10KiB`, `50GiB`, `1.5GB`... into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let i = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = (&s[..i], s[i..].trim());
    let n: f64 = num.parse().ok()?;
    let mul: f64 = match unit {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = n * mul;
    (v.is_finite() && (0.0..1.8e19).contains(&v)).then_some(v as u64)
}

/// A byte size as written: a number of bytes, or a string with a unit
/// (see [`parse_size`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SizeText {
    /// `512`.
    Bytes(u64),
    /// `"50GiB"`.
    Text(String),
}

impl fmt::Display for SizeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeText::Bytes(n) => write!(f, "{n}"),
            SizeText::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// `key = "text"` as a duration, `default` when absent.
pub fn duration(
    key: &str,
    text: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(s) => parse_duration(s).ok_or_else(|| {
            ConfigError(format!(
                "{key} = {s:?}: not a duration (use e.g. 200ms, 30s, 10m, 24h, 7d)"
            ))
        }),
    }
}

/// As [`duration`], refusing zero.
pub fn positive(
    key: &str,
    text: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(key, text, default)?;
    if d.is_zero() {
        return Err(ConfigError(format!(
            "{key} = {:?}: must be more than 0",
            text.as_deref().unwrap_or_default()
        )));
    }
    Ok(d)
}

/// As [`duration`], refusing less than `min`.
pub fn at_least(
    key: &str,
    text: &Option<String>,
    default: Duration,
    min: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(key, text, default)?;
    if d < min {
        let t = text.as_deref().unwrap_or_default();
        return Err(ConfigError(format!("{key} = {t:?}: at least {min:?}")));
    }
    Ok(d)
}

/// `key = size` in bytes.
pub fn bytes(key: &str, text: &SizeText) -> Result<u64, ConfigError> {
    match text {
        SizeText::Bytes(n) => Ok(*n),
        SizeText::Text(s) => parse_size(s).ok_or_else(|| {
            ConfigError(format!(
                "{key} = {text}: not a size (use e.g. 512, 10KiB, 50GiB, 1.5GB)"
            ))
        }),
    }
}

/// `n` bytes as a person writes them: `64MiB`, `1GiB`, `512`.
fn human_size(n: u64) -> String {
    match [(30, "GiB"), (20, "MiB"), (10, "KiB")]
        .iter()
        .find(|(s, _)| n >> s > 0 && n.is_multiple_of(1 << s))
    {
        Some((s, unit)) => format!("{}{unit}", n >> s),
        None => n.to_string(),
    }
}

/// `key = size` in bytes within `range`, `default` when absent.
pub fn size(
    key: &str,
    text: &Option<SizeText>,
    default: usize,
    range: std::ops::RangeInclusive<u64>,
) -> Result<usize, ConfigError> {
    let Some(t) = text else { return Ok(default) };
    let n = bytes(key, t)?;
    if !range.contains(&n) {
        let (lo, hi) = (range.start(), human_size(*range.end()));
        let from = if *lo > 0 {
            format!("from {} ", human_size(*lo))
        } else {
            String::new()
        };
        return Err(ConfigError(format!("{key} = {t}: a size {from}up to {hi}")));
    }
    usize::try_from(n).map_err(|_| ConfigError(format!("{key} = {t}: too large for this machine")))
}

/// A count, at least `min`.
pub fn count_at_least(
    key: &str,
    value: Option<usize>,
    default: usize,
    min: usize,
) -> Result<usize, ConfigError> {
    match value {
        Some(n) if n < min => Err(ConfigError(format!("{key} = {n}: must be at least {min}"))),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// A name that becomes a metrics label or a storage key (a credential
/// set's, a scanner's): 1 to 64 letters, digits, `.`, `_`, `-`.
pub fn label(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty()
        || value.len() > 64
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(ConfigError(format!(
            "{key} = {value:?}: 1 to 64 letters, digits, '.', '_', '-'"
        )));
    }
    Ok(())
}

/// Makes a relative path relative to `base` (the configuration file's
/// directory); an absolute one stays.
pub fn rebase(path: &mut PathBuf, base: &Path) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

fn custom<E: de::Error>(e: ConfigError) -> E {
    E::custom(e)
}

/// `[upstream]`-like tables: every key of [`CacheOptions`] by its field
/// name, optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCacheOptions {
    max_manifest_size: Option<SizeText>,
    fetch_timeout: Option<String>,
    manifest_timeout: Option<String>,
    stall_timeout: Option<String>,
    max_retries: Option<u32>,
    retry_backoff: Option<String>,
    touch_interval: Option<String>,
    read_chunk: Option<SizeText>,
    write_batch: Option<SizeText>,
    max_concurrent_fetches: Option<usize>,
    max_queued_fetches: Option<usize>,
    max_manifest_fetches: Option<usize>,
    revalidate_window: Option<String>,
    follow_window: Option<SizeText>,
    hot_bytes: Option<SizeText>,
    hot_max_item: Option<SizeText>,
    hot_validity: Option<String>,
    lease_ttl: Option<String>,
    lease_wait: Option<String>,
    instance_name: Option<String>,
    cold_range_max: Option<SizeText>,
    cold_ranges_per_blob: Option<usize>,
    cold_ranges_per_registry: Option<usize>,
}

const MIB: u64 = 1024 * 1024;

impl TryFrom<RawCacheOptions> for CacheOptions {
    type Error = ConfigError;

    fn try_from(r: RawCacheOptions) -> Result<Self, ConfigError> {
        let d = CacheOptions::default();
        let max_retries = r.max_retries.unwrap_or(d.max_retries);
        if max_retries > 10 {
            return Err(ConfigError(format!(
                "max_retries = {max_retries}: at most 10"
            )));
        }
        if let Some(name) = &r.instance_name
            && (name.is_empty() || name.len() > 200 || !name.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError(format!(
                "instance_name = {name:?}: 1 to 200 visible ASCII characters, no spaces"
            )));
        }
        let lease_ttl = at_least(
            "lease_ttl",
            &r.lease_ttl,
            d.lease_ttl,
            Duration::from_secs(3),
        )
        .map_err(|e| ConfigError(format!("{e} (it is renewed every third of it)")))?;
        let count = |key, n, default| count_at_least(key, n, default, 1);
        Ok(CacheOptions {
            max_manifest_size: size(
                "max_manifest_size",
                &r.max_manifest_size,
                d.max_manifest_size,
                1..=64 * MIB,
            )?,
            fetch_timeout: positive("fetch_timeout", &r.fetch_timeout, d.fetch_timeout)?,
            manifest_timeout: positive(
                "manifest_timeout",
                &r.manifest_timeout,
                d.manifest_timeout,
            )?,
            stall_timeout: positive("stall_timeout", &r.stall_timeout, d.stall_timeout)?,
            max_retries,
            retry_backoff: duration("retry_backoff", &r.retry_backoff, d.retry_backoff)?,
            touch_interval: at_least(
                "touch_interval",
                &r.touch_interval,
                d.touch_interval,
                Duration::from_secs(1),
            )?,
            read_chunk: size("read_chunk", &r.read_chunk, d.read_chunk, 1..=64 * MIB)?,
            write_batch: size("write_batch", &r.write_batch, d.write_batch, 1..=64 * MIB)?,
            max_concurrent_fetches: count(
                "max_concurrent_fetches",
                r.max_concurrent_fetches,
                d.max_concurrent_fetches,
            )?,
            max_queued_fetches: r.max_queued_fetches.unwrap_or(d.max_queued_fetches),
            max_manifest_fetches: count(
                "max_manifest_fetches",
                r.max_manifest_fetches,
                d.max_manifest_fetches,
            )?,
            revalidate_window: duration(
                "revalidate_window",
                &r.revalidate_window,
                d.revalidate_window,
            )?,
            follow_window: size(
                "follow_window",
                &r.follow_window,
                d.follow_window,
                0..=1024 * MIB,
            )?,
            hot_bytes: size("hot_bytes", &r.hot_bytes, d.hot_bytes, 0..=u64::MAX)?,
            hot_max_item: size(
                "hot_max_item",
                &r.hot_max_item,
                d.hot_max_item,
                0..=64 * MIB,
            )?,
            hot_validity: duration("hot_validity", &r.hot_validity, d.hot_validity)?,
            lease_ttl,
            lease_wait: duration("lease_wait", &r.lease_wait, d.lease_wait)?,
            instance_name: r.instance_name.unwrap_or(d.instance_name),
            cold_range_max: size(
                "cold_range_max",
                &r.cold_range_max,
                d.cold_range_max,
                1..=1024 * MIB,
            )?,
            cold_ranges_per_blob: r.cold_ranges_per_blob.unwrap_or(d.cold_ranges_per_blob),
            cold_ranges_per_registry: r
                .cold_ranges_per_registry
                .unwrap_or(d.cold_ranges_per_registry),
        })
    }
}

/// Every key optional (today's defaults), unknown keys refused, each value
/// checked: `max_concurrent_fetches` and `max_manifest_fetches` at least 1,
/// `max_retries` at most 10, timeouts more than 0, `lease_ttl` at least 3s,
/// `touch_interval` at least 1s, `instance_name` 1 to 200 visible ASCII
/// characters, `max_manifest_size`, `read_chunk` and `write_batch` up to 64MiB,
/// `cold_range_max` up to 1GiB.
impl<'de> Deserialize<'de> for CacheOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawCacheOptions::deserialize(d)?.try_into().map_err(custom)
    }
}

/// `"revalidate"`, `"pinned"` or `"ttl:DURATION"`.
impl<'de> Deserialize<'de> for TagFreshness {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TagFreshness::parse(&s).ok_or_else(|| {
            D::Error::custom(format!(
                "{s:?}: use \"revalidate\", \"pinned\" or \"ttl:DURATION\" (e.g. \"ttl:10m\")"
            ))
        })
    }
}

/// `"none"`, `"platform"` or `"image"`.
impl<'de> Deserialize<'de> for Prefetch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Raw {
            None,
            Platform,
            Image,
        }
        Ok(match Raw::deserialize(d)? {
            Raw::None => Prefetch::None,
            Raw::Platform => Prefetch::Platform,
            Raw::Image => Prefetch::Image,
        })
    }
}

/// `"wait"` or `"passthrough"`.
impl<'de> Deserialize<'de> for ColdRanges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ColdRanges::parse(&s).ok_or_else(|| {
            D::Error::custom(format!(
                "{s:?}: use \"wait\" (the default: ranges follow the whole-blob fetch, verified) or \"passthrough\" (served at once, unverified)"
            ))
        })
    }
}

/// `"enforce"` or `"audit"`.
impl<'de> Deserialize<'de> for SignatureMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Mode {
            Enforce,
            Audit,
        }
        Ok(match Mode::deserialize(d)? {
            Mode::Enforce => SignatureMode::Enforce,
            Mode::Audit => SignatureMode::Audit,
        })
    }
}

/// The most repositories a rule's `sync.repositories` lists.
pub const MAX_SYNC_REPOSITORIES: usize = 1000;

/// A rule's `sync` table: `interval` (required, at least `1s`), `tags` (a
/// regular expression the whole tag matches), `semver` (a version range:
/// `">=1.2, <2"`), `max_tags` (1 to 1000), `platforms` (`os/arch[/variant]`)
/// and, for a wildcard rule, `repositories` (local names under its target,
/// at most 1000). Each error names the key and the value.
///
/// ```
/// use cache_core::config::RuleConfig;
///
/// let rule: RuleConfig = toml::from_str(
///     "name = \"hub\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n\
///      [sync]\ninterval = \"10m\"\nsemver = \">=1.27, <2\"\nrepositories = [\"library/nginx\"]\n",
/// )?;
/// let sync = rule.policy(|_| unreachable!())?.sync.unwrap();
/// assert_eq!(sync.interval, std::time::Duration::from_secs(600));
/// let bad = toml::from_str::<RuleConfig>(
///     "name = \"hub\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n[sync]\ninterval = \"10m\"\nsemver = \"one\"\n",
/// ).unwrap_err();
/// assert!(bad.message().contains("semver = \"one\""), "{bad}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSpec(pub SyncPolicy);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    interval: Option<String>,
    tags: Option<String>,
    semver: Option<String>,
    max_tags: Option<usize>,
    #[serde(default)]
    platforms: Vec<String>,
    #[serde(default)]
    repositories: Vec<String>,
}

impl<'de> Deserialize<'de> for SyncSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawSync::deserialize(d)?;
        (|| {
            let interval = r
                .interval
                .as_ref()
                .map(|_| {
                    at_least(
                        "interval",
                        &r.interval,
                        Duration::ZERO,
                        Duration::from_secs(1),
                    )
                })
                .ok_or_else(|| ConfigError::new("interval is missing (how often: \"10m\")"))??;
            let mut p = SyncPolicy::new(interval);
            if let Some(t) = &r.tags {
                p.tags = Some(TagPattern::new(t).map_err(|e| {
                    ConfigError(format!(
                        "tags = {t:?}: not a usable regular expression: {e}"
                    ))
                })?);
            }
            if let Some(v) = &r.semver {
                p.semver = Some(VersionReq::parse(v).map_err(|e| {
                    ConfigError(format!(
                        "semver = {v:?}: not a version range ({e}; e.g. \">=1.2, <2\")"
                    ))
                })?);
            }
            if let Some(n) = r.max_tags
                && !(1..=MAX_SYNC_TAGS).contains(&n)
            {
                return Err(ConfigError(format!(
                    "max_tags = {n}: from 1 to {MAX_SYNC_TAGS}"
                )));
            }
            p.max_tags = r.max_tags;
            for s in &r.platforms {
                let platform = crate::manifest::Platform::parse(s).ok_or_else(|| {
                    ConfigError(format!("platforms: {s:?} is not os/arch[/variant]"))
                })?;
                p.platforms.push(platform);
            }
            if r.repositories.len() > MAX_SYNC_REPOSITORIES {
                return Err(ConfigError(format!(
                    "repositories: {} entries, at most {MAX_SYNC_REPOSITORIES}",
                    r.repositories.len()
                )));
            }
            for s in &r.repositories {
                let repo = crate::names::RepoName::parse(s)
                    .map_err(|e| ConfigError(format!("repositories: {s:?}: {e}")))?;
                p.repositories.push(repo);
            }
            Ok(SyncSpec(p))
        })()
        .map_err(custom)
    }
}

impl SyncSpec {
    /// Checks the repositories against the rule's `target`: only a wildcard
    /// rule lists them, each under its target; an error names the key.
    pub fn check_target(&self, target: &str) -> Result<(), ConfigError> {
        let repos = &self.0.repositories;
        let Some(first) = repos.first() else {
            return Ok(());
        };
        let Some(prefix) = target.strip_suffix('*') else {
            return Err(ConfigError(format!(
                "sync.repositories: {:?} and the rest: only a wildcard rule lists repositories (this one's target is {target:?})",
                first.as_str()
            )));
        };
        match repos.iter().find(|r| !r.as_str().starts_with(prefix)) {
            Some(r) => Err(ConfigError(format!(
                "sync.repositories: {:?} is not under the rule's target {target:?}",
                r.as_str()
            ))),
            None => Ok(()),
        }
    }
}

/// The `scan` of a rule in a program without a vulnerability scanner: a
/// rule that has one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoScan {}

impl<'de> Deserialize<'de> for NoScan {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(D::Error::custom(
            "this program has no vulnerability scanner",
        ))
    }
}

/// One caching rule as a table: `name`, `source`, `target`, `credentials`,
/// its caching policy (`tag_freshness`, default `"revalidate"`;
/// `stale_if_error`, default `24h`; `content_ttl`; `negative_ttl`, default
/// `30s`; `prefetch`, default `"none"`; `serve_withdrawn`; `cold_ranges`,
/// default `"wait"`), its `signatures` and `scan` policies, and its
/// scheduled `sync` ([`SyncSpec`]). `S` is the program's vulnerability policy
/// (`cache_upstream::scanner::ScanPolicy`); the default refuses `scan`.
///
/// The rule itself is validated with the rule set it joins
/// ([`RuleSet::from_specs`] names the offending rule).
///
/// ```
/// use cache_core::config::RuleConfig;
///
/// let rule: RuleConfig = toml::from_str(
///     "name = \"hub\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\ntag_freshness = \"ttl:10m\"",
/// )?;
/// assert_eq!(rule.spec.target, "library/*");
/// let policy = rule.policy(|_| unreachable!("no signature keys"))?;
/// assert_eq!(policy.tag_freshness, cache_core::TagFreshness::Ttl(std::time::Duration::from_secs(600)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig<S = NoScan> {
    /// Name, source, target and credential set.
    pub spec: RuleSpec,
    /// How tags are kept fresh.
    pub tag_freshness: TagFreshness,
    /// How long a cached tag is served while the upstream fails.
    pub stale_if_error: Duration,
    /// Content not accessed for this long is removed by gc.
    pub content_ttl: Option<Duration>,
    /// What a ranged request for a blob still being fetched gets.
    pub cold_ranges: ColdRanges,
    /// Serve only what a cosign signature covers.
    pub signatures: Option<Box<SignatureSpec>>,
    /// Serve only what a vulnerability scan allows.
    pub scan: Option<Box<S>>,
    /// How long an upstream's "not found" is remembered (`negative_ttl`,
    /// default `30s`; `"0s"` turns it off).
    pub negative_ttl: Duration,
    /// What is fetched in the background after a manifest is served
    /// (`prefetch`: `"none"`, the default, `"platform"` or `"image"`).
    pub prefetch: Prefetch,
    /// Tags fetched on a schedule (`[sync]`).
    pub sync: Option<Box<SyncSpec>>,
    /// How long a tag the upstream withdrew is still served
    /// (`serve_withdrawn`; default: not at all; `"0s"` is the same).
    pub serve_withdrawn: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule<S> {
    name: String,
    source: String,
    target: String,
    credentials: Option<String>,
    tag_freshness: Option<TagFreshness>,
    stale_if_error: Option<String>,
    content_ttl: Option<String>,
    cold_ranges: Option<ColdRanges>,
    signatures: Option<Box<SignatureSpec>>,
    scan: Option<Box<S>>,
    negative_ttl: Option<String>,
    prefetch: Option<Prefetch>,
    sync: Option<Box<SyncSpec>>,
    serve_withdrawn: Option<String>,
}

impl<'de, S: Deserialize<'de>> Deserialize<'de> for RuleConfig<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawRule::<S>::deserialize(d)?;
        let default = RulePolicy::default();
        let stale_if_error = duration("stale_if_error", &r.stale_if_error, default.stale_if_error)
            .map_err(custom)?;
        let content_ttl = match &r.content_ttl {
            None => None,
            t => Some(duration("content_ttl", t, Duration::ZERO).map_err(custom)?),
        };
        if let Some(sync) = &r.sync {
            sync.check_target(&r.target).map_err(custom)?;
        }
        Ok(RuleConfig {
            spec: RuleSpec {
                name: r.name,
                source: r.source,
                target: r.target,
                credentials: r.credentials,
            },
            tag_freshness: r.tag_freshness.unwrap_or(default.tag_freshness),
            stale_if_error,
            content_ttl,
            cold_ranges: r.cold_ranges.unwrap_or(default.cold_ranges),
            signatures: r.signatures,
            scan: r.scan,
            negative_ttl: duration("negative_ttl", &r.negative_ttl, default.negative_ttl)
                .map_err(custom)?,
            prefetch: r.prefetch.unwrap_or_default(),
            sync: r.sync,
            serve_withdrawn: match &r.serve_withdrawn {
                None => None,
                t => Some(duration("serve_withdrawn", t, Duration::ZERO).map_err(custom)?)
                    .filter(|d| !d.is_zero()),
            },
        })
    }
}

impl<S> RuleConfig<S> {
    /// The rule's caching policy, its signature keys from `key` (see
    /// [`SignatureSpec::policy`]); errors name `signatures.cosign_keys`.
    pub fn policy(
        &self,
        mut key: impl FnMut(&Path) -> Result<CosignKey, String>,
    ) -> Result<RulePolicy, ConfigError> {
        self.policy_with(&mut key)
    }

    /// The rule's caching policy, the files its signature policy names
    /// read by `files` (`cache_core::trust::TrustFiles` reads them all;
    /// see [`SignatureSpec::policy_with`]); errors name `signatures.KEY`.
    pub fn policy_with(&self, files: &mut dyn SignatureFiles) -> Result<RulePolicy, ConfigError> {
        let signatures = match &self.signatures {
            None => None,
            Some(s) => Some(std::sync::Arc::new(
                s.policy_with(files).map_err(|e| e.at("signatures"))?,
            )),
        };
        Ok(RulePolicy {
            tag_freshness: self.tag_freshness,
            stale_if_error: self.stale_if_error,
            content_ttl: self.content_ttl,
            signatures,
            negative_ttl: self.negative_ttl,
            prefetch: self.prefetch,
            sync: self.sync.as_ref().map(|s| std::sync::Arc::new(s.0.clone())),
            serve_withdrawn: self.serve_withdrawn,
            cold_ranges: self.cold_ranges,
        })
    }
}

/// `name`, `source`, `target`, `credentials` (optional); validated by the
/// [`RuleSet`] it joins, or by [`Rule`]'s own deserialisation.
impl<'de> Deserialize<'de> for RuleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            name: String,
            source: String,
            target: String,
            credentials: Option<String>,
        }
        let r = Raw::deserialize(d)?;
        Ok(RuleSpec {
            name: r.name,
            source: r.source,
            target: r.target,
            credentials: r.credentials,
        })
    }
}

/// A [`RuleSpec`] table, validated on its own.
impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Rule::from_spec(&RuleSpec::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A sequence of [`RuleSpec`] tables, validated together (unique names and
/// targets, at most [`DEFAULT_MAX_RULES`](crate::rules::DEFAULT_MAX_RULES)).
impl<'de> Deserialize<'de> for RuleSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RuleSet::from_specs(Vec::<RuleSpec>::deserialize(d)?).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(text: &str) -> Result<CacheOptions, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn cache_options_default_when_empty_and_read_every_key() {
        let o = opts("").unwrap();
        let d = CacheOptions::default();
        assert_eq!(
            (o.max_retries, o.lease_ttl, o.max_manifest_size),
            (d.max_retries, d.lease_ttl, d.max_manifest_size)
        );
        let o = opts(
            "max_manifest_size = \"8MiB\"\nmax_retries = 10\nretry_backoff = \"0s\"\nlease_ttl = \"10s\"\nlease_wait = \"0s\"\ninstance_name = \"pod-7\"\ntouch_interval = \"5s\"\nhot_bytes = 0\nmax_concurrent_fetches = 4\n",
        )
        .unwrap();
        assert_eq!(
            (
                o.max_manifest_size,
                o.max_retries,
                o.retry_backoff,
                o.lease_ttl,
                o.lease_wait
            ),
            (
                8 * 1024 * 1024,
                10,
                Duration::ZERO,
                Duration::from_secs(10),
                Duration::ZERO
            )
        );
        assert_eq!(
            (
                o.instance_name.as_str(),
                o.touch_interval,
                o.hot_bytes,
                o.max_concurrent_fetches
            ),
            ("pod-7", Duration::from_secs(5), 0, 4)
        );
    }

    #[test]
    fn cache_options_refuse_out_of_bounds_values_naming_key_and_value() {
        for (text, says) in [
            (
                "max_concurrent_fetches = 0",
                "max_concurrent_fetches = 0: must be at least 1",
            ),
            ("max_retries = 11", "max_retries = 11: at most 10"),
            (
                "stall_timeout = \"soon\"",
                "stall_timeout = \"soon\": not a duration",
            ),
            (
                "stall_timeout = \"0s\"",
                "stall_timeout = \"0s\": must be more than 0",
            ),
            (
                "manifest_timeout = \"0s\"",
                "manifest_timeout = \"0s\": must be more than 0",
            ),
            ("lease_ttl = \"1s\"", "lease_ttl = \"1s\": at least 3s"),
            ("lease_wait = \"soon\"", "lease_wait = \"soon\""),
            (
                "touch_interval = \"10ms\"",
                "touch_interval = \"10ms\": at least 1s",
            ),
            ("instance_name = \"pod 7\"", "instance_name = \"pod 7\""),
            ("instance_name = \"\"", "instance_name = \"\""),
            (
                "max_manifest_size = \"65MiB\"",
                "max_manifest_size = \"65MiB\": a size from 1 up to 64MiB",
            ),
            (
                "max_manifest_size = \"lots\"",
                "max_manifest_size = \"lots\": not a size",
            ),
            (
                "read_chunk = 0",
                "read_chunk = 0: a size from 1 up to 64MiB",
            ),
            (
                "write_batch = \"65MiB\"",
                "write_batch = \"65MiB\": a size from 1 up to 64MiB",
            ),
            (
                "cold_range_max = \"2GiB\"",
                "cold_range_max = \"2GiB\": a size from 1 up to 1GiB",
            ),
            ("colour = \"red\"", "unknown field `colour`"),
        ] {
            let e = opts(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("50GiB"), Some(50 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1.5KiB"), Some(1536));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5 PB"), None);
    }

    #[test]
    fn nested_paths_join_keys_values_and_serde_messages() {
        assert_eq!(
            join_key("upstream", "max_retries = 11: at most 10"),
            "upstream.max_retries = 11: at most 10"
        );
        assert_eq!(
            join_key("rule[3].tag_freshness", "\"x\": use"),
            "rule[3].tag_freshness = \"x\": use"
        );
        assert_eq!(
            join_key("rule[3]", "unknown field `bogus`"),
            "rule[3]: unknown field `bogus`"
        );
        assert_eq!(
            join_key("rule[3].signatures", "cosign_keys is empty"),
            "rule[3].signatures.cosign_keys is empty"
        );
        assert_eq!(join_key("", "listen = \"x\""), "listen = \"x\"");
        assert_eq!(
            join_key("scan", "invalid type: integer `1`"),
            "scan: invalid type: integer `1`"
        );
    }

    #[test]
    fn rules_read_their_policy_and_refuse_bad_values_and_keys() {
        let head = "name = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n";
        let rule = |extra: &str| {
            toml::from_str::<RuleConfig>(&format!("{head}{extra}"))
                .map_err(|e| e.message().to_owned())
        };
        let r = rule("credentials = \"hub\"\nstale_if_error = \"1h\"\ncontent_ttl = \"30d\"\ntag_freshness = \"pinned\"\n").unwrap();
        assert_eq!(r.spec.credentials.as_deref(), Some("hub"));
        let p = r.policy(|_| unreachable!()).unwrap();
        assert_eq!(
            (p.tag_freshness, p.stale_if_error, p.content_ttl),
            (
                TagFreshness::Pinned,
                Duration::from_secs(3600),
                Some(Duration::from_secs(30 * 86_400))
            )
        );
        assert_eq!(
            rule("").unwrap().policy(|_| unreachable!()).unwrap(),
            RulePolicy::default()
        );
        assert_eq!(RulePolicy::default().cold_ranges, ColdRanges::Wait);
        let p = rule("cold_ranges = \"passthrough\"\n")
            .unwrap()
            .policy(|_| unreachable!())
            .unwrap();
        assert_eq!(p.cold_ranges, ColdRanges::Passthrough);
        for (extra, says) in [
            (
                "tag_freshness = \"sometimes\"",
                "\"sometimes\": use \"revalidate\"",
            ),
            (
                "stale_if_error = \"1y\"",
                "stale_if_error = \"1y\": not a duration",
            ),
            ("content_ttl = \"later\"", "content_ttl = \"later\""),
            ("cold_ranges = \"eager\"", "\"eager\": use \"wait\""),
            ("bogus = 1", "unknown field `bogus`"),
            ("[scan]\nscanner = \"x\"", "no vulnerability scanner"),
            ("[signatures]\ncosign_keys = []", "cosign_keys is empty"),
            (
                "[signatures]\ncosign_keys = [\"k.pub\"]\nmode = \"strict\"",
                "unknown variant `strict`",
            ),
            (
                "[signatures]\ncosign_keys = [\"k.pub\"]\nrecheck_refused = \"x\"",
                "recheck_refused = \"x\"",
            ),
        ] {
            let e = rule(extra).unwrap_err();
            assert!(e.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn the_keys_that_keep_a_rule_fresh_read_and_refuse_bad_values_by_name() {
        let head = "name = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n";
        let rule = |extra: &str| {
            toml::from_str::<RuleConfig>(&format!("{head}{extra}"))
                .map_err(|e| e.message().to_owned())
        };
        let p = rule("negative_ttl = \"0s\"\nprefetch = \"image\"\nserve_withdrawn = \"7d\"\n")
            .unwrap()
            .policy(|_| unreachable!())
            .unwrap();
        assert_eq!(p.serve_withdrawn, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(
            (p.negative_ttl, p.prefetch),
            (Duration::ZERO, Prefetch::Image)
        );
        let d = RulePolicy::default();
        assert_eq!(
            (d.negative_ttl, d.prefetch),
            (Duration::from_secs(30), Prefetch::None)
        );
        for (extra, says) in [
            (
                "negative_ttl = \"soon\"",
                "negative_ttl = \"soon\": not a duration",
            ),
            ("prefetch = \"all\"", "unknown variant `all`"),
            (
                "serve_withdrawn = \"ever\"",
                "serve_withdrawn = \"ever\": not a duration",
            ),
        ] {
            let e = rule(extra).unwrap_err();
            assert!(e.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn a_sync_table_reads_and_refuses_bad_values_naming_the_key() {
        let rule = |target: &str, sync: &str| {
            toml::from_str::<RuleConfig>(&format!(
                "name = \"r\"\nsource = \"docker.io/{target}\"\ntarget = \"{target}\"\n[sync]\n{sync}"
            ))
            .map_err(|e| e.message().to_owned())
        };
        let p = rule(
            "library/*",
            "interval = \"2s\"\ntags = \"v.*\"\nsemver = \">=1, <2\"\nmax_tags = 3\nplatforms = [\"linux/arm64/v8\"]\nrepositories = [\"library/a/b\"]\n",
        )
        .unwrap()
        .policy(|_| unreachable!())
        .unwrap();
        let s = p.sync.unwrap();
        assert_eq!(
            (
                s.interval,
                s.max_tags,
                s.platforms.len(),
                s.repositories.len()
            ),
            (Duration::from_secs(2), Some(3), 1, 1)
        );
        assert_eq!(s.tags.as_ref().unwrap().as_str(), "v.*");
        for (target, sync, says) in [
            ("library/*", "", "interval is missing"),
            (
                "library/*",
                "interval = \"0s\"",
                "interval = \"0s\": at least 1s",
            ),
            (
                "library/*",
                "interval = \"1m\"\ntags = \"(\"",
                "tags = \"(\": not a usable regular expression",
            ),
            (
                "library/*",
                "interval = \"1m\"\nsemver = \"~>1\"",
                "semver = \"~>1\": not a version range",
            ),
            (
                "library/*",
                "interval = \"1m\"\nmax_tags = 0",
                "max_tags = 0: from 1 to 1000",
            ),
            (
                "library/*",
                "interval = \"1m\"\nplatforms = [\"linux\"]",
                "platforms: \"linux\" is not os/arch",
            ),
            (
                "library/*",
                "interval = \"1m\"\nrepositories = [\"Bad\"]",
                "repositories: \"Bad\"",
            ),
            (
                "library/*",
                "interval = \"1m\"\nrepositories = [\"other/x\"]",
                "\"other/x\" is not under the rule's target \"library/*\"",
            ),
            (
                "library/nginx",
                "interval = \"1m\"\nrepositories = [\"library/nginx\"]",
                "only a wildcard rule lists repositories",
            ),
            (
                "library/*",
                "interval = \"1m\"\nevery = 1",
                "unknown field `every`",
            ),
        ] {
            let e = rule(target, sync).unwrap_err();
            assert!(e.contains(says), "{sync}: {e}");
        }
    }

    #[test]
    fn signature_keys_come_from_the_caller_and_errors_name_them() {
        let mut r: RuleConfig = toml::from_str(
            "name = \"r\"\nsource = \"a\"\ntarget = \"a\"\n[signatures]\ncosign_keys = [\"k.pub\", \"/abs/j.pub\"]\nmode = \"audit\"\nrecheck_refused = \"5s\"\n",
        )
        .unwrap();
        r.signatures
            .as_mut()
            .unwrap()
            .rebase(Path::new("/etc/proxy"));
        let mut asked = Vec::new();
        let e = r
            .policy(|p| {
                asked.push(p.to_owned());
                Err(format!("{}: no such file", p.display()))
            })
            .unwrap_err();
        assert_eq!(asked, [PathBuf::from("/etc/proxy/k.pub")]);
        assert_eq!(
            e.message(),
            "signatures.cosign_keys: /etc/proxy/k.pub: no such file"
        );
    }

    #[test]
    fn a_rule_set_deserialises_and_validates_its_rules_together() {
        #[derive(Deserialize)]
        struct File {
            rule: RuleSet,
        }
        let one =
            "[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n";
        let f: File = toml::from_str(one).unwrap();
        assert_eq!(f.rule.len(), 1);
        let e = toml::from_str::<File>(&format!("{one}{one}"))
            .err()
            .unwrap();
        assert!(e.message().contains("\"r\""), "{e}");
    }
}
