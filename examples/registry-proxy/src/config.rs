//! The TOML configuration: listen address, storage, upstream registries
//! with credentials, caching rules with their policies, pull-side auth.
//!
//! Every validation error names the key and the offending value.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cache_core::policy::parse_duration;
use cache_core::{RulePolicy, RuleSet, RuleSpec, TagFreshness};
use cache_upstream::{Credentials, PasswordSource, Secret};
use serde::Deserialize;

/// A configuration error, naming the key and the value.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: String) -> Result<T, ConfigError> {
    Err(ConfigError(msg))
}

/// The configuration file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `listen = "127.0.0.1:5000"`.
    pub listen: Option<String>,
    /// `[storage]`.
    #[serde(default)]
    pub storage: RawStorage,
    /// `[server]`.
    #[serde(default)]
    pub server: RawServer,
    /// `[upstream]`: how every registry is fetched from.
    #[serde(default)]
    pub upstream: RawUpstream,
    /// `[auth]`.
    pub auth: Option<RawAuth>,
    /// `[[registry]]`.
    #[serde(default)]
    pub registry: Vec<RawRegistry>,
    /// `[[credentials]]`: named credential sets that rules refer to.
    #[serde(default)]
    pub credentials: Vec<RawCredentials>,
    /// `[[rule]]`.
    #[serde(default)]
    pub rule: Vec<RawRule>,
    /// `[log]`.
    #[serde(default)]
    pub log: RawLog,
    /// `[tls]`.
    pub tls: Option<RawTls>,
    /// `[[scanner]]`: vulnerability scanners (Harbor Scanner Adapter API).
    #[serde(default)]
    pub scanner: Vec<RawScanner>,
}

/// `[[scanner]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScanner {
    /// The name rules use.
    pub name: String,
    /// The adapter's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// A bearer token for the adapter.
    pub token: Option<String>,
    /// An environment variable holding it.
    pub token_env: Option<String>,
    /// A file holding it.
    pub token_file: Option<PathBuf>,
    /// The URL the scanner reaches this proxy at, to pull what it scans
    /// (default: `http://`, or `https://` with `[tls]`, and the listen
    /// address, `127.0.0.1` for `0.0.0.0`).
    pub proxy_url: Option<String>,
}

/// `[log]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `"text"` (default) or `"json"`; `REGISTRY_PROXY_LOG_FORMAT` overrides it.
    pub format: Option<String>,
}

/// `[storage]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// `"fs"` (default), `"object"` or `"memory"`.
    pub backend: Option<String>,
    /// Directory of the filesystem store (default `cache-data`).
    pub path: Option<PathBuf>,
    /// The object store's URL (`az://container/prefix`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`), for `backend = "object"`.
    pub url: Option<String>,
    /// `object_store` options (`azure_storage_account_name`, `aws_region`,
    /// ...): a value, or `{ env = "VAR" }`, or `{ file = "path" }`.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, RawOption>,
    /// Where object-store writes are spooled while they are fetched
    /// (default: the system's temporary directory).
    pub spool: Option<PathBuf>,
    /// `"50GiB"`: gc keeps the store under this.
    pub quota: Option<String>,
    /// fsync committed files (default true).
    pub fsync: Option<bool>,
    /// How often gc runs when a quota or TTL is set (default `10m`).
    pub gc_interval: Option<String>,
    /// Object storage: how long a lease to fetch a digest or run gc lasts
    /// unless renewed (default `30s`).
    pub lease_ttl: Option<String>,
    /// Object storage: how long a fetch waits for another instance that
    /// is fetching the same digest before fetching too (default `5m`).
    pub lease_wait: Option<String>,
    /// Object storage: this instance's name in its leases (default: the
    /// `HOSTNAME`, the process id and a random part).
    pub instance_name: Option<String>,
    /// How often a blob's access time is written at most (default `60s`).
    /// On object storage, gc spares blobs read within twice this, and each
    /// instance renews it for what it is reading.
    pub touch_interval: Option<String>,
}

/// One `[storage.options]` value.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawOption {
    /// The value itself.
    Value(String),
    /// `{ env = "VAR" }`: an environment variable's value.
    Env {
        /// The variable.
        env: String,
    },
    /// `{ file = "path" }`: a file's contents.
    File {
        /// The file.
        file: PathBuf,
    },
}

/// `[server]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Time allowed until response headers (default `5m`).
    pub request_timeout: Option<String>,
    /// Time a client has to send a request's headers, on a new or an idle
    /// kept-alive connection, before it is closed (default `60s`).
    pub idle_timeout: Option<String>,
    /// Time a response write may make no progress before the connection
    /// is dropped (default `60s`).
    pub send_timeout: Option<String>,
    /// Connections open at once, at most (default 1024).
    pub max_connections: Option<usize>,
    /// Time given to transfers in progress at shutdown (default `30s`).
    pub shutdown_grace: Option<String>,
    /// After SIGTERM, how long to keep serving while `/readyz` says 503, so
    /// load balancers stop sending first (default `0s`).
    pub drain_delay: Option<String>,
    /// A loopback address for the admin endpoint (`POST /reload`, health);
    /// `registry-proxy reload` talks to it. Off by default.
    pub admin_listen: Option<String>,
    /// Moved to `[upstream]`; kept only to say so.
    pub max_concurrent_fetches: Option<usize>,
    /// Largest manifest accepted (default `4MiB`).
    pub max_manifest_size: Option<String>,
}

/// `[upstream]`: how every registry is fetched from.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Blob transfers at once per registry (default 32).
    pub max_concurrent_fetches: Option<usize>,
    /// Blob fetches waiting per registry before requests are refused with 503 (default 256).
    pub max_queued_fetches: Option<usize>,
    /// Retries and resumptions per fetch, on top of the first request (default 3).
    pub max_retries: Option<u32>,
    /// Back-off unit: the n-th retry waits n times this (default `200ms`).
    pub retry_backoff: Option<String>,
    /// Longest an upstream body may send nothing before it is resumed (default `60s`).
    pub stall_timeout: Option<String>,
    /// Longest wait for a connection (default `10s`).
    pub connect_timeout: Option<String>,
    /// Longest wait for response headers (default `30s`).
    pub response_timeout: Option<String>,
    /// Longest a manifest fetch may take (default `60s`).
    pub manifest_timeout: Option<String>,
    /// A tag confirmed upstream this recently is served without asking
    /// again (default `1s`; `0s` asks on every request that does not share
    /// a `HEAD` already in flight).
    pub revalidate_window: Option<String>,
}

/// `[auth]`: pull-side client authentication.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// An htpasswd file with bcrypt entries.
    pub htpasswd: Option<PathBuf>,
    /// Static bearer tokens.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// An environment variable holding comma-separated bearer tokens.
    pub tokens_env: Option<String>,
}

/// `[[registry]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// The name rule sources use (`docker.io`, `ghcr.io`, `127.0.0.1:5001`).
    pub host: String,
    /// The API endpoint, when not `https://HOST`.
    pub endpoint: Option<String>,
    /// Several endpoints, tried in order (mirrors first): instead of `endpoint`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Stop spending the upstream's pull budget (its `ratelimit-remaining`)
    /// at this many pulls left.
    pub reserve: Option<u64>,
    /// A user name.
    pub username: Option<String>,
    /// The password itself.
    pub password: Option<String>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// A file holding the password.
    pub password_file: Option<PathBuf>,
    /// Hosts besides the endpoint's that redirects may lead to although
    /// they resolve to non-public addresses (an internal blob store).
    #[serde(default)]
    pub redirect_hosts: Vec<String>,
    /// Token realm hosts besides the endpoint's own domain that may
    /// receive this registry's credentials.
    #[serde(default)]
    pub token_hosts: Vec<String>,
    /// PEM certificates of a private CA to trust for this registry.
    pub ca_file: Option<PathBuf>,
    /// Whether the system's roots are trusted too (default true); `false`
    /// trusts `ca_file` only.
    pub system_roots: Option<bool>,
    /// A client certificate chain (PEM) for an upstream that wants mutual TLS.
    pub client_certificate: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
}

/// `[tls]`: serve HTTPS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The certificate chain (PEM), leaf first.
    pub certificate: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates must chain to: with it,
    /// clients must present one (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// `[[credentials]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    /// The name rules refer to.
    pub name: String,
    /// A user name.
    pub username: String,
    /// The password itself.
    pub password: Option<String>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// A file holding the password.
    pub password_file: Option<PathBuf>,
}

/// `[[rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name.
    pub name: String,
    /// `registry/repository`, `registry/prefix/*` or `registry/*`.
    pub source: String,
    /// `name`, `prefix/*` or `*`.
    pub target: String,
    /// A `[[credentials]]` name.
    pub credentials: Option<String>,
    /// `revalidate` (default), `ttl:10m` or `pinned`.
    pub tag_freshness: Option<String>,
    /// How long a cached tag is served while the upstream fails (default `24h`).
    pub stale_if_error: Option<String>,
    /// Content not accessed for this long is removed by gc.
    pub content_ttl: Option<String>,
    /// `[rule.signatures]`: serve only what a cosign signature covers.
    pub signatures: Option<RawSignatures>,
    /// `[rule.scan]`: serve only what a vulnerability scan allows.
    pub scan: Option<RawScan>,
}

/// `[rule.scan]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScan {
    /// A `[[scanner]]` name.
    pub scanner: String,
    /// Deny findings at or above: `low`, `medium`, `high` (default), `critical`.
    pub deny_severity: Option<String>,
    /// Accepted risks: finding ids that never deny.
    #[serde(default)]
    pub allow: Vec<String>,
    /// `"enforce"` (default) or `"audit"`.
    pub mode: Option<String>,
    /// How old a scan may be before it is run again (default `24h`).
    pub rescan: Option<String>,
    /// `"deny"` (default) or `"allow"`: what a failing scanner means.
    pub on_scanner_error: Option<String>,
    /// How long a first pull waits for its scan before `503` (default `60s`).
    pub wait: Option<String>,
}

/// `[rule.signatures]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignatures {
    /// PEM public keys (ECDSA P-256), as `cosign generate-key-pair` writes.
    pub cosign_keys: Vec<PathBuf>,
    /// `"enforce"` (default) or `"audit"`.
    pub mode: Option<String>,
    /// How long a refusal stands before signatures are looked up again
    /// (default `60s`).
    pub recheck_refused: Option<String>,
}

/// Where content is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory.
    Memory,
    /// A filesystem directory.
    Fs {
        /// The directory.
        path: PathBuf,
        /// fsync on commit.
        fsync: bool,
    },
    /// Object storage through `object_store`.
    Object {
        /// `az://container/prefix`, `s3://bucket/prefix`, ...
        url: String,
        /// `object_store` options; values are read when the store opens
        /// and print as `<redacted>`.
        options: Vec<(String, PasswordSource)>,
        /// Where writes are spooled while they are fetched.
        spool: PathBuf,
        /// Validity of leases between instances.
        lease_ttl: Duration,
        /// Longest wait for another instance's fetch.
        lease_wait: Duration,
        /// This instance's name in leases, if given.
        instance_name: Option<String>,
    },
}

/// One `[[scanner]]`, validated.
#[derive(Debug, Clone)]
pub struct ScannerConfig {
    /// Its name.
    pub name: String,
    /// The adapter's URL.
    pub url: String,
    /// Its bearer token, if any.
    pub token: Option<PasswordSource>,
    /// Where the scanner reaches this proxy.
    pub proxy_url: String,
}

/// One upstream registry, ready to connect.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The registry name rules use.
    pub host: cache_core::Registry,
    /// Its endpoints, tried in order (empty: the default, `https://HOST`).
    pub endpoints: Vec<String>,
    /// The pull budget's reserve, if any.
    pub reserve: Option<u64>,
    /// Its credentials.
    pub credentials: Option<Credentials>,
    /// Hosts redirects may lead to although internal.
    pub redirect_hosts: Vec<String>,
    /// Token realm hosts that may receive the credentials.
    pub token_hosts: Vec<String>,
    /// Certificates to trust, and the client certificate to present.
    pub tls: cache_upstream::TlsOptions,
}

/// `[upstream]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// Blob transfers at once per registry.
    pub max_concurrent_fetches: usize,
    /// Blob fetches waiting per registry.
    pub max_queued_fetches: usize,
    /// Retries and resumptions per fetch.
    pub max_retries: u32,
    /// Back-off unit between retries.
    pub retry_backoff: Duration,
    /// Body stall before a resumption.
    pub stall_timeout: Duration,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Time to response headers.
    pub response_timeout: Duration,
    /// Time for a whole manifest fetch.
    pub manifest_timeout: Duration,
    /// How recently a confirmed tag is served without asking again.
    pub revalidate_window: Duration,
}

pub use cache_core::server::AuthConfig;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The store.
    pub storage: Storage,
    /// How log lines are written.
    pub log_format: crate::logging::LogFormat,
    /// HTTPS, if configured.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Vulnerability scanners: name, URL, token, and the URL they reach
    /// this proxy at.
    pub scanners: Vec<ScannerConfig>,
    /// Per rule, its vulnerability policy.
    pub scan_policies: HashMap<String, cache_upstream::scanner::ScanPolicy>,
    /// Quota for gc.
    pub quota: Option<u64>,
    /// How often access times are written at most.
    pub touch_interval: Duration,
    /// gc period.
    pub gc_interval: Duration,
    /// Until-headers timeout.
    pub request_timeout: Duration,
    /// Header-read (idle connection) timeout.
    pub idle_timeout: Duration,
    /// Write-stall timeout.
    pub send_timeout: Duration,
    /// Connection cap.
    pub max_connections: usize,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Serving on after SIGTERM, not ready.
    pub drain_delay: Duration,
    /// The admin endpoint's address, if any (loopback).
    pub admin_listen: Option<SocketAddr>,
    /// Manifest size cap.
    pub max_manifest_size: usize,
    /// How upstreams are fetched from.
    pub upstream: UpstreamLimits,
    /// Upstreams by host.
    pub registries: Vec<UpstreamConfig>,
    /// Named credential sets.
    pub credentials: HashMap<String, Credentials>,
    /// The caching rules, validated and indexed.
    pub rules: Arc<RuleSet>,
    /// Per-rule policies, for the rules whose policy is not the default.
    pub policies: HashMap<String, RulePolicy>,
    /// Pull-side auth, if any.
    pub auth: Option<AuthConfig>,
}

/// The built-in default: 127.0.0.1:5000, `./cache-data`, Docker Hub
/// official images under `library/*`.
pub const DEFAULT_CONFIG: &str = r#"
listen = "127.0.0.1:5000"

[storage]
backend = "fs"
path = "cache-data"

[[registry]]
host = "docker.io"

[[rule]]
name = "hub-library"
source = "docker.io/library/*"
target = "library/*"
"#;

/// Files at least this large have their `[[rule]]` tables parsed in
/// batches: a TOML document in memory costs many times its text, and a
/// file with a hundred thousand rules would otherwise need hundreds of
/// megabytes for a moment.
const BATCHED_ABOVE: usize = 1 << 20;

/// Rule tables parsed per batch.
const RULES_PER_BATCH: usize = 1000;

/// Whether a line is a table header (`[name]`, `[[name]]`, `[a.b]`), as
/// opposed to a value line (an array element such as `[1, 2],`).
fn table_header(line: &str) -> Option<&str> {
    let t = line.trim();
    let t = t.split_once('#').map_or(t, |(h, _)| h).trim_end();
    let inner = t
        .strip_prefix("[[")
        .and_then(|x| x.strip_suffix("]]"))
        .or_else(|| t.strip_prefix('[').and_then(|x| x.strip_suffix(']')))?;
    inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '"'))
        .then(|| inner.trim())
}

/// Parses a large configuration in pieces: everything but the rule tables
/// as one document (rule lines blanked, so its line numbers stay right),
/// then the rule tables (with their `[rule.x]` sub-tables) in batches.
fn parse_batched(text: &str) -> Result<RawConfig, ConfigError> {
    let mut main = String::with_capacity(text.len() / 8);
    // (first line number, text) of each rule table, in order.
    let mut blocks: Vec<(usize, String)> = Vec::new();
    let mut in_rule = false;
    let mut in_multiline = false;
    for (n, line) in text.lines().enumerate() {
        if !in_multiline && let Some(h) = table_header(line) {
            if h == "rule" && line.trim_start().starts_with("[[") {
                in_rule = true;
                blocks.push((n + 1, String::new()));
            } else if !h.starts_with("rule.") {
                in_rule = false;
            }
        }
        // Multi-line strings: an odd number of delimiters opens or closes one.
        if (line.matches("\"\"\"").count() + line.matches("'''").count()) % 2 == 1 {
            in_multiline = !in_multiline;
        }
        if in_rule {
            let block = &mut blocks.last_mut().expect("a rule block is open").1;
            block.push_str(line);
            block.push('\n');
            main.push('\n');
        } else {
            main.push_str(line);
            main.push('\n');
        }
    }
    let mut raw: RawConfig =
        toml::from_str(&main).map_err(|e| ConfigError(format!("invalid configuration: {e}")))?;
    drop(main);
    #[derive(Deserialize)]
    struct Batch {
        #[serde(default)]
        rule: Vec<RawRule>,
    }
    raw.rule.reserve_exact(blocks.len());
    for chunk in blocks.chunks(RULES_PER_BATCH) {
        let mut batch = String::new();
        let mut starts = Vec::with_capacity(chunk.len());
        let mut lines = 0;
        for (line, block) in chunk {
            starts.push((lines, *line));
            lines += block.lines().count();
            batch.push_str(block);
        }
        let parsed: Batch = toml::from_str(&batch).map_err(|e| {
            // Name the line in the file, not in the batch.
            let at = e
                .span()
                .map(|s| batch[..s.start.min(batch.len())].lines().count().max(1) - 1)
                .unwrap_or(0);
            let (offset, first) = starts
                .iter()
                .rev()
                .find(|(o, _)| *o <= at)
                .copied()
                .unwrap_or((0, chunk[0].0));
            ConfigError(format!(
                "invalid configuration at line {}: {}",
                first + at - offset,
                e.message()
            ))
        })?;
        raw.rule.extend(parsed.rule);
    }
    Ok(raw)
}

/// `server.admin_listen` of a configuration text, read on its own (so a
/// file that does not validate still names where its server listens).
pub fn admin_listen_of(text: &str) -> Option<SocketAddr> {
    let v: toml::Value = toml::from_str(text).ok()?;
    v.get("server")?
        .get("admin_listen")?
        .as_str()?
        .parse()
        .ok()
        .filter(|a: &SocketAddr| a.ip().is_loopback())
}

/// Parses `512`, `10KiB`, `50GiB`, `1.5GB`...
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

fn duration(key: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_or_else(
            || {
                err(format!(
                    "{key} = {s:?}: not a duration (use e.g. 30s, 10m, 24h, 7d)"
                ))
            },
            Ok,
        ),
    }
}

/// A duration that must not be zero.
fn positive(key: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let d = duration(key, v, default)?;
    if d.is_zero() {
        return err(format!(
            "{key} = {:?}: must be more than 0",
            v.as_deref().unwrap_or_default()
        ));
    }
    Ok(d)
}

fn password(
    key: &str,
    value: &Option<String>,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<PasswordSource>, ConfigError> {
    let n = value.is_some() as u8 + env.is_some() as u8 + file.is_some() as u8;
    if n > 1 {
        return err(format!(
            "{key}: give only one of password, password_env, password_file"
        ));
    }
    Ok(value
        .as_ref()
        .map(|v| PasswordSource::Value(Secret::new(v.clone())))
        .or_else(|| env.as_ref().map(|e| PasswordSource::Env(e.clone())))
        .or_else(|| file.as_ref().map(|f| PasswordSource::File(f.clone()))))
}

fn creds(
    key: &str,
    user: &Option<String>,
    pw: Option<PasswordSource>,
) -> Result<Option<Credentials>, ConfigError> {
    match (user, pw) {
        (None, None) => Ok(None),
        (Some(_), None) => err(format!(
            "{key}: username needs a password, password_env or password_file"
        )),
        (None, Some(_)) => err(format!("{key}: a password needs a username")),
        (Some(u), Some(p)) => Credentials::new(u.clone(), &p)
            .map(Some)
            .map_err(|e| ConfigError(format!("{key}: {e}"))),
    }
}

impl Config {
    /// The settings that differ between `self` and `new` and only take
    /// effect on a restart (a reload leaves them as they are).
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |key, same: bool| {
            if !same {
                changed.push(key);
            }
        };
        check("listen", self.listen == new.listen);
        check("storage", self.storage == new.storage);
        check("log.format", self.log_format == new.log_format);
        check("[tls] files", self.tls == new.tls);
        check(
            "storage.quota / storage.gc_interval / storage.touch_interval",
            (self.quota, self.gc_interval, self.touch_interval)
                == (new.quota, new.gc_interval, new.touch_interval),
        );
        check(
            "[server]",
            (
                self.request_timeout,
                self.idle_timeout,
                self.send_timeout,
                self.max_connections,
                self.shutdown_grace,
                self.drain_delay,
                self.admin_listen,
                self.max_manifest_size,
            ) == (
                new.request_timeout,
                new.idle_timeout,
                new.send_timeout,
                new.max_connections,
                new.shutdown_grace,
                new.drain_delay,
                new.admin_listen,
                new.max_manifest_size,
            ),
        );
        check("[upstream]", self.upstream == new.upstream);
        changed
    }

    /// Parses and validates a configuration text. `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw = if text.len() < BATCHED_ABOVE {
            toml::from_str(text).map_err(|e| ConfigError(format!("invalid configuration: {e}")))?
        } else {
            parse_batched(text)?
        };
        Self::validate(raw, base)
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &base).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    fn validate(mut raw: RawConfig, base: &Path) -> Result<Self, ConfigError> {
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let listen_s = raw.listen.unwrap_or_else(|| "127.0.0.1:5000".into());
        let listen: SocketAddr = listen_s
            .parse()
            .map_err(|_| ConfigError(format!("listen = {listen_s:?}: not an IP:PORT address")))?;
        let storage = storage(&raw.storage, &abs)?;
        let tls = match &raw.tls {
            None => None,
            Some(t) => {
                let files = crate::tls::TlsFiles {
                    certificate: abs(t.certificate.clone()),
                    key: abs(t.key.clone()),
                    client_ca: t.client_ca.clone().map(&abs),
                };
                files
                    .check()
                    .map_err(|e| ConfigError(format!("tls: {e}")))?;
                Some(files)
            }
        };
        let log_format = match raw.log.format.as_deref() {
            None => crate::logging::LogFormat::default(),
            Some(f) => crate::logging::LogFormat::parse(f).ok_or_else(|| {
                ConfigError(format!("log.format = {f:?}: use \"text\" or \"json\""))
            })?,
        };
        let (quota, gc_interval) = gc(&raw.storage)?;
        let touch_interval = duration(
            "storage.touch_interval",
            &raw.storage.touch_interval,
            cache_core::CacheOptions::default().touch_interval,
        )?;
        if touch_interval < Duration::from_secs(1) {
            return err(format!(
                "storage.touch_interval = {:?}: at least 1s",
                raw.storage.touch_interval.as_deref().unwrap_or_default()
            ));
        }
        let server = server(&raw.server)?;
        let upstream = upstream(&raw.upstream)?;
        let registries = registries(&raw.registry, &abs)?;
        let credentials = credential_sets(&raw.credentials)?;
        let scan_raw: Vec<(String, RawScan)> = raw
            .rule
            .iter_mut()
            .filter_map(|r| r.scan.take().map(|sc| (r.name.clone(), sc)))
            .collect();
        let (rules, policies) = rules(raw.rule, &registries, &credentials, &abs)?;
        let scanners = scanners(&raw.scanner, listen, tls.is_some(), &abs)?;
        let scan_policies = scan_policies(scan_raw, &scanners)?;
        let auth = raw.auth.map(|a| auth(a, &abs)).transpose()?;
        Ok(Config {
            listen,
            storage,
            quota,
            tls,
            scanners,
            scan_policies,
            log_format,
            gc_interval,
            touch_interval,
            request_timeout: server.request_timeout,
            idle_timeout: server.idle_timeout,
            send_timeout: server.send_timeout,
            max_connections: server.max_connections,
            shutdown_grace: server.shutdown_grace,
            drain_delay: server.drain_delay,
            admin_listen: server.admin_listen,
            max_manifest_size: server.max_manifest_size,
            upstream,
            registries,
            credentials,
            rules,
            policies,
            auth,
        })
    }
}

fn storage(raw: &RawStorage, abs: &impl Fn(PathBuf) -> PathBuf) -> Result<Storage, ConfigError> {
    let backend = raw.backend.as_deref().unwrap_or("fs");
    let storage = match backend {
        "memory" => Storage::Memory,
        "fs" => Storage::Fs {
            path: abs(raw.path.clone().unwrap_or_else(|| "cache-data".into())),
            fsync: raw.fsync.unwrap_or(true),
        },
        "object" => {
            let Some(url) = raw.url.clone() else {
                return err("storage.backend = \"object\" needs storage.url (e.g. \"az://container/prefix\")".into());
            };
            let options = raw
                .options
                .iter()
                .map(|(k, v)| {
                    let source = match v {
                        RawOption::Value(v) => PasswordSource::Value(Secret::new(v.clone())),
                        RawOption::Env { env } => PasswordSource::Env(env.clone()),
                        RawOption::File { file } => PasswordSource::File(abs(file.clone())),
                    };
                    (k.clone(), source)
                })
                .collect();
            let defaults = cache_core::CacheOptions::default();
            let lease_ttl = positive("storage.lease_ttl", &raw.lease_ttl, defaults.lease_ttl)?;
            if lease_ttl < Duration::from_secs(3) {
                return err(format!(
                    "storage.lease_ttl = {:?}: at least 3s (it is renewed every third of it)",
                    raw.lease_ttl.as_deref().unwrap_or_default()
                ));
            }
            if let Some(name) = &raw.instance_name
                && (name.is_empty()
                    || name.len() > 200
                    || !name.bytes().all(|b| b.is_ascii_graphic()))
            {
                return err(format!(
                    "storage.instance_name = {name:?}: 1 to 200 visible ASCII characters, no spaces"
                ));
            }
            Storage::Object {
                url,
                options,
                spool: raw.spool.clone().map_or_else(std::env::temp_dir, abs),
                lease_ttl,
                lease_wait: duration("storage.lease_wait", &raw.lease_wait, defaults.lease_wait)?,
                instance_name: raw.instance_name.clone(),
            }
        }
        other => {
            return err(format!(
                "storage.backend = {other:?}: use \"fs\", \"object\" or \"memory\""
            ));
        }
    };
    if !matches!(storage, Storage::Object { .. }) {
        for (key, set) in [
            ("url", raw.url.is_some()),
            ("options", !raw.options.is_empty()),
            ("spool", raw.spool.is_some()),
            ("lease_ttl", raw.lease_ttl.is_some()),
            ("lease_wait", raw.lease_wait.is_some()),
            ("instance_name", raw.instance_name.is_some()),
        ] {
            if set {
                return err(format!(
                    "storage.{key} is for backend = \"object\", not {backend:?}"
                ));
            }
        }
    }
    Ok(storage)
}

fn gc(raw: &RawStorage) -> Result<(Option<u64>, Duration), ConfigError> {
    let quota = raw
        .quota
        .as_ref()
        .map(|q| {
            parse_size(q).ok_or_else(|| {
                ConfigError(format!(
                    "storage.quota = {q:?}: not a size (use e.g. 50GiB)"
                ))
            })
        })
        .transpose()?;
    let interval = duration(
        "storage.gc_interval",
        &raw.gc_interval,
        Duration::from_secs(600),
    )?;
    if interval < Duration::from_secs(1) {
        return err(format!(
            "storage.gc_interval = {:?}: must be at least 1s",
            raw.gc_interval.as_deref().unwrap_or_default()
        ));
    }
    Ok((quota, interval))
}

struct ServerSettings {
    request_timeout: Duration,
    idle_timeout: Duration,
    send_timeout: Duration,
    max_connections: usize,
    shutdown_grace: Duration,
    drain_delay: Duration,
    admin_listen: Option<SocketAddr>,
    max_manifest_size: usize,
}

fn server(raw: &RawServer) -> Result<ServerSettings, ConfigError> {
    if raw.max_concurrent_fetches.is_some() {
        return err(
            "server.max_concurrent_fetches has moved: set upstream.max_concurrent_fetches (per registry)".into(),
        );
    }
    let admin_listen = match &raw.admin_listen {
        None => None,
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Some(addr),
            Ok(_) => {
                return err(format!(
                    "server.admin_listen = {a:?}: must be a loopback address (127.0.0.1:PORT)"
                ));
            }
            Err(_) => {
                return err(format!(
                    "server.admin_listen = {a:?}: not an IP:PORT address"
                ));
            }
        },
    };
    let max_connections = match raw.max_connections {
        Some(0) => return err("server.max_connections = 0: must be at least 1".into()),
        Some(n) => n,
        None => 1024,
    };
    let max_manifest_size = match &raw.max_manifest_size {
        None => 4 * 1024 * 1024,
        Some(s) => parse_size(s)
            .filter(|&n| n > 0 && n <= 64 * 1024 * 1024)
            .ok_or_else(|| {
                ConfigError(format!(
                    "server.max_manifest_size = {s:?}: a size up to 64MiB"
                ))
            })? as usize,
    };
    Ok(ServerSettings {
        request_timeout: positive(
            "server.request_timeout",
            &raw.request_timeout,
            Duration::from_secs(300),
        )?,
        idle_timeout: positive(
            "server.idle_timeout",
            &raw.idle_timeout,
            Duration::from_secs(60),
        )?,
        send_timeout: positive(
            "server.send_timeout",
            &raw.send_timeout,
            Duration::from_secs(60),
        )?,
        max_connections,
        shutdown_grace: duration(
            "server.shutdown_grace",
            &raw.shutdown_grace,
            Duration::from_secs(30),
        )?,
        drain_delay: duration("server.drain_delay", &raw.drain_delay, Duration::ZERO)?,
        admin_listen,
        max_manifest_size,
    })
}

fn upstream(raw: &RawUpstream) -> Result<UpstreamLimits, ConfigError> {
    let defaults = cache_core::CacheOptions::default();
    let max_concurrent_fetches = match raw.max_concurrent_fetches {
        Some(0) => return err("upstream.max_concurrent_fetches = 0: must be at least 1".into()),
        Some(n) => n,
        None => defaults.max_concurrent_fetches,
    };
    let max_retries = raw.max_retries.unwrap_or(defaults.max_retries);
    if max_retries > 10 {
        return err(format!("upstream.max_retries = {max_retries}: at most 10"));
    }
    Ok(UpstreamLimits {
        max_concurrent_fetches,
        max_queued_fetches: raw
            .max_queued_fetches
            .unwrap_or(defaults.max_queued_fetches),
        max_retries,
        retry_backoff: duration(
            "upstream.retry_backoff",
            &raw.retry_backoff,
            defaults.retry_backoff,
        )?,
        stall_timeout: positive(
            "upstream.stall_timeout",
            &raw.stall_timeout,
            defaults.stall_timeout,
        )?,
        connect_timeout: positive(
            "upstream.connect_timeout",
            &raw.connect_timeout,
            Duration::from_secs(10),
        )?,
        response_timeout: positive(
            "upstream.response_timeout",
            &raw.response_timeout,
            Duration::from_secs(30),
        )?,
        manifest_timeout: positive(
            "upstream.manifest_timeout",
            &raw.manifest_timeout,
            defaults.manifest_timeout,
        )?,
        revalidate_window: duration(
            "upstream.revalidate_window",
            &raw.revalidate_window,
            defaults.revalidate_window,
        )?,
    })
}

fn registries(
    raw: &[RawRegistry],
    abs: &impl Fn(PathBuf) -> PathBuf,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let mut out: Vec<UpstreamConfig> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("registry[{i}] (host = {:?})", r.host);
        let host =
            cache_core::Registry::parse(&r.host).map_err(|e| ConfigError(format!("{key}: {e}")))?;
        if out.iter().any(|u| u.host == host) {
            return err(format!("{key}: host {:?} appears twice", r.host));
        }
        if r.endpoint.is_some() && !r.endpoints.is_empty() {
            return err(format!("{key}: give endpoint or endpoints, not both"));
        }
        let endpoints: Vec<String> = r.endpoint.iter().chain(&r.endpoints).cloned().collect();
        for ep in &endpoints {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return err(format!(
                    "{key}: endpoint = {ep:?} must start with http:// or https://"
                ));
            }
        }
        for (field, hosts) in [
            ("redirect_hosts", &r.redirect_hosts),
            ("token_hosts", &r.token_hosts),
        ] {
            if let Some(h) = hosts
                .iter()
                .find(|h| h.is_empty() || h.contains(['/', ' ', '@']))
            {
                return err(format!(
                    "{key}: {field} entry {h:?} is not a host name or address"
                ));
            }
        }
        let pw = password(&key, &r.password, &r.password_env, &r.password_file)?;
        let tls = upstream_tls(&key, r, abs)?;
        out.push(UpstreamConfig {
            host,
            endpoints,
            reserve: r.reserve,
            credentials: creds(&key, &r.username, pw)?,
            redirect_hosts: r.redirect_hosts.clone(),
            token_hosts: r.token_hosts.clone(),
            tls,
        });
    }
    Ok(out)
}

/// A registry's TLS settings, with the files read and checked now, so a
/// file that does not parse is a configuration error naming it.
fn upstream_tls(
    key: &str,
    r: &RawRegistry,
    abs: &impl Fn(PathBuf) -> PathBuf,
) -> Result<cache_upstream::TlsOptions, ConfigError> {
    let bad = |e: String| ConfigError(format!("{key}: {e}"));
    let mut tls = cache_upstream::TlsOptions {
        system_roots: r.system_roots.unwrap_or(true),
        ..Default::default()
    };
    if let Some(ca) = &r.ca_file {
        let path = abs(ca.clone());
        crate::tls::read_certificates(&path).map_err(|e| bad(format!("ca_file: {e}")))?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad(format!("ca_file: {}: {e}", path.display())))?;
        tls.ca_pem.push(text);
    } else if !tls.system_roots {
        return Err(bad(
            "system_roots = false needs a ca_file to trust instead".into()
        ));
    }
    match (&r.client_certificate, &r.client_key) {
        (None, None) => {}
        (Some(c), Some(k)) => {
            let files = crate::tls::TlsFiles {
                certificate: abs(c.clone()),
                key: abs(k.clone()),
                client_ca: None,
            };
            files
                .load()
                .map_err(|e| bad(format!("client_certificate / client_key: {e}")))?;
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| bad(format!("{}: {e}", p.display())))
            };
            let pem = format!("{}\n{}", read(&files.certificate)?, read(&files.key)?);
            tls.client_identity = Some(cache_upstream::Secret::new(pem));
        }
        _ => {
            return Err(bad("client_certificate and client_key go together".into()));
        }
    }
    Ok(tls)
}

fn credential_sets(raw: &[RawCredentials]) -> Result<HashMap<String, Credentials>, ConfigError> {
    let mut out = HashMap::new();
    for (i, c) in raw.iter().enumerate() {
        let key = format!("credentials[{i}] (name = {:?})", c.name);
        let pw = password(&key, &c.password, &c.password_env, &c.password_file)?;
        let cr = creds(&key, &Some(c.username.clone()), pw)?.expect("username given");
        if out.insert(c.name.clone(), cr).is_some() {
            return err(format!("{key}: the name is used twice"));
        }
    }
    Ok(out)
}

fn rules(
    raw: Vec<RawRule>,
    registries: &[UpstreamConfig],
    credentials: &HashMap<String, Credentials>,
    abs: &impl Fn(PathBuf) -> PathBuf,
) -> Result<(Arc<RuleSet>, HashMap<String, RulePolicy>), ConfigError> {
    // Key files are read once however many rules name them.
    let mut keys: HashMap<PathBuf, cache_core::cosign::CosignKey> = HashMap::new();
    let hosts: std::collections::HashSet<&cache_core::Registry> =
        registries.iter().map(|u| &u.host).collect();
    let mut rules = Vec::with_capacity(raw.len());
    let mut policies = HashMap::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("rule[{i}] (name = {:?})", r.name);
        let tag_freshness = match &r.tag_freshness {
            None => TagFreshness::Revalidate,
            Some(s) => TagFreshness::parse(s).ok_or_else(|| {
                ConfigError(format!("{key}: tag_freshness = {s:?}: use \"revalidate\", \"pinned\" or \"ttl:DURATION\""))
            })?,
        };
        let stale_if_error = duration(
            &format!("{key}: stale_if_error"),
            &r.stale_if_error,
            Duration::from_secs(86_400),
        )?;
        let content_ttl = r
            .content_ttl
            .as_ref()
            .map(|_| {
                duration(
                    &format!("{key}: content_ttl"),
                    &r.content_ttl,
                    Duration::ZERO,
                )
            })
            .transpose()?;
        if let Some(c) = &r.credentials
            && !credentials.contains_key(c)
        {
            return err(format!(
                "{key}: credentials = {c:?} names no [[credentials]] entry"
            ));
        }
        let signatures = match &r.signatures {
            None => None,
            Some(sig) => Some(Arc::new(signature_policy(&key, sig, abs, &mut keys)?)),
        };
        let policy = RulePolicy {
            tag_freshness,
            stale_if_error,
            content_ttl,
            signatures,
        };
        if policy != RulePolicy::default() {
            policies.insert(r.name.clone(), policy);
        }
        // The strings move into the spec: a large file is not held twice.
        let mut spec = RuleSpec::new(r.name, r.source, r.target);
        spec.credentials = r.credentials;
        rules.push(spec);
    }
    if rules.is_empty() {
        return err("no [[rule]]: the proxy would refuse every request".into());
    }
    // The rule set reports rule errors (duplicates, bad names), naming the rule.
    let set = RuleSet::from_specs(rules).map_err(|e| ConfigError(e.to_string()))?;
    for (i, rule) in set.rules().iter().enumerate() {
        if !hosts.contains(rule.registry()) {
            return err(format!(
                "rule[{i}] (name = {:?}): source \"{}/{}\" names registry {}, which has no [[registry]] entry",
                rule.name(),
                rule.registry(),
                rule.source(),
                rule.registry()
            ));
        }
    }
    Ok((Arc::new(set), policies))
}

fn scanners(
    raw: &[RawScanner],
    listen: SocketAddr,
    https: bool,
    abs: &impl Fn(PathBuf) -> PathBuf,
) -> Result<Vec<ScannerConfig>, ConfigError> {
    let mut out: Vec<ScannerConfig> = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let key = format!("scanner[{i}] (name = {:?})", s.name);
        if s.name.is_empty()
            || s.name.len() > 64
            || !s
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return err(format!(
                "{key}: name: 1 to 64 letters, digits, '.', '_', '-'"
            ));
        }
        if out.iter().any(|o| o.name == s.name) {
            return err(format!("{key}: the name appears twice"));
        }
        for (field, u) in [("url", Some(&s.url)), ("proxy_url", s.proxy_url.as_ref())] {
            if let Some(u) = u
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return err(format!(
                    "{key}: {field} = {u:?} must start with http:// or https://"
                ));
            }
        }
        let token = match (&s.token, &s.token_env, &s.token_file) {
            (None, None, None) => None,
            (Some(t), None, None) => Some(PasswordSource::Value(Secret::new(t.clone()))),
            (None, Some(e), None) => Some(PasswordSource::Env(e.clone())),
            (None, None, Some(f)) => Some(PasswordSource::File(abs(f.clone()))),
            _ => {
                return err(format!(
                    "{key}: give only one of token, token_env, token_file"
                ));
            }
        };
        let proxy_url = s.proxy_url.clone().unwrap_or_else(|| {
            let mut at = listen;
            if at.ip().is_unspecified() {
                at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("{}://{at}", if https { "https" } else { "http" })
        });
        out.push(ScannerConfig {
            name: s.name.clone(),
            url: s.url.clone(),
            token,
            proxy_url,
        });
    }
    Ok(out)
}

fn scan_policies(
    raw: Vec<(String, RawScan)>,
    scanners: &[ScannerConfig],
) -> Result<HashMap<String, cache_upstream::scanner::ScanPolicy>, ConfigError> {
    use cache_upstream::scanner::{GateMode, OnScannerError, ScanPolicy, Severity};
    let mut out = HashMap::new();
    for (rule, sc) in raw {
        let key = format!("rule {rule:?}: scan");
        if !scanners.iter().any(|s| s.name == sc.scanner) {
            return err(format!(
                "{key}.scanner = {:?} names no [[scanner]]",
                sc.scanner
            ));
        }
        let deny_severity = match sc.deny_severity.as_deref() {
            None => Severity::High,
            Some(s) => Severity::parse(s)
                .filter(|s| *s >= Severity::Low)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "{key}.deny_severity = {s:?}: use low, medium, high or critical"
                    ))
                })?,
        };
        let mode = match sc.mode.as_deref() {
            None | Some("enforce") => GateMode::Enforce,
            Some("audit") => GateMode::Audit,
            Some(m) => return err(format!("{key}.mode = {m:?}: use \"enforce\" or \"audit\"")),
        };
        let on_scanner_error = match sc.on_scanner_error.as_deref() {
            None | Some("deny") => OnScannerError::Deny,
            Some("allow") => OnScannerError::Allow,
            Some(m) => {
                return err(format!(
                    "{key}.on_scanner_error = {m:?}: use \"deny\" or \"allow\""
                ));
            }
        };
        let rescan = positive(
            &format!("{key}.rescan"),
            &sc.rescan,
            Duration::from_secs(86_400),
        )?;
        let wait = positive(&format!("{key}.wait"), &sc.wait, Duration::from_secs(60))?;
        if wait > Duration::from_secs(600) {
            return err(format!("{key}.wait: at most 10m (clients give up sooner)"));
        }
        out.insert(
            rule,
            ScanPolicy {
                scanner: sc.scanner,
                deny_severity,
                allow: sc.allow.into_iter().collect(),
                mode,
                rescan,
                on_scanner_error,
                wait,
            },
        );
    }
    Ok(out)
}

/// A rule's `[rule.signatures]`, with its key files read (a bad one is an
/// error naming the file).
fn signature_policy(
    key: &str,
    raw: &RawSignatures,
    abs: &impl Fn(PathBuf) -> PathBuf,
    loaded: &mut HashMap<PathBuf, cache_core::cosign::CosignKey>,
) -> Result<cache_core::SignaturePolicy, ConfigError> {
    if raw.cosign_keys.is_empty() {
        return err(format!("{key}: signatures.cosign_keys is empty"));
    }
    let mut keys = Vec::with_capacity(raw.cosign_keys.len());
    for p in &raw.cosign_keys {
        let path = abs(p.clone());
        if let Some(k) = loaded.get(&path) {
            keys.push(k.clone());
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError(format!(
                "{key}: signatures.cosign_keys: {}: {e}",
                path.display()
            ))
        })?;
        let k = cache_core::cosign::CosignKey::from_pem(p.display().to_string(), &text)
            .map_err(|e| ConfigError(format!("{key}: signatures.cosign_keys: {e}")))?;
        loaded.insert(path, k.clone());
        keys.push(k);
    }
    let mode = match raw.mode.as_deref() {
        None | Some("enforce") => cache_core::SignatureMode::Enforce,
        Some("audit") => cache_core::SignatureMode::Audit,
        Some(m) => {
            return err(format!(
                "{key}: signatures.mode = {m:?}: use \"enforce\" or \"audit\""
            ));
        }
    };
    let mut policy = cache_core::SignaturePolicy::new(keys, mode);
    if raw.recheck_refused.is_some() {
        policy.recheck_refused = duration(
            &format!("{key}: signatures.recheck_refused"),
            &raw.recheck_refused,
            policy.recheck_refused,
        )?;
    }
    Ok(policy)
}

fn auth(a: RawAuth, abs: &impl Fn(PathBuf) -> PathBuf) -> Result<AuthConfig, ConfigError> {
    let mut cfg = AuthConfig::default();
    if let Some(p) = &a.htpasswd {
        cfg.htpasswd = htpasswd(&abs(p.clone()))?;
    }
    if let Some(i) = a.tokens.iter().position(|t| t.trim().is_empty()) {
        return err(format!(
            "auth.tokens[{i}] is empty: a token must have characters"
        ));
    }
    cfg.tokens = a.tokens.into_iter().map(Secret::new).collect();
    if let Some(var) = &a.tokens_env {
        let v = std::env::var(var)
            .map_err(|_| ConfigError(format!("auth.tokens_env = {var:?}: not set")))?;
        cfg.tokens.extend(
            v.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Secret::new),
        );
    }
    if cfg.htpasswd.is_empty() && cfg.tokens.is_empty() {
        return err("[auth] is present but names no htpasswd users and no tokens".into());
    }
    Ok(cfg)
}

fn htpasswd(p: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(p).map_err(|e| {
        ConfigError(format!(
            "auth.htpasswd = {:?}: {e}",
            p.display().to_string()
        ))
    })?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (u, h) = line.split_once(':').ok_or_else(|| {
            ConfigError(format!(
                "auth.htpasswd {}: line {} is not USER:HASH",
                p.display(),
                n + 1
            ))
        })?;
        if !(h.starts_with("$2y$") || h.starts_with("$2b$") || h.starts_with("$2a$")) {
            return err(format!(
                "auth.htpasswd {}: line {} (user {u:?}) is not a bcrypt hash (use htpasswd -B)",
                p.display(),
                n + 1
            ));
        }
        out.insert(u.to_owned(), h.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/base"))
    }

    #[test]
    fn the_built_in_default_is_valid() {
        let c = parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(
            c.storage,
            Storage::Fs {
                path: "/base/cache-data".into(),
                fsync: true
            }
        );
        assert!(c.rules.get("hub-library").is_some());
    }

    #[test]
    fn the_example_file_is_valid() {
        // The example names HUB_TOKEN; point it at a file instead of mutating the environment.
        let dir = std::env::temp_dir().join(format!("ptc-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hub-token"), "x\n").unwrap();
        let text = include_str!("../registry-proxy.example.toml").replace(
            "password_env = \"HUB_TOKEN\"",
            &format!("password_file = \"{}\"", dir.join("hub-token").display()),
        );
        let c = parse(&text).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(c.quota.is_some());
    }

    #[test]
    fn scan_policies_and_scanners_are_checked_and_name_the_offending_value() {
        use cache_upstream::scanner::{GateMode, OnScannerError, Severity};
        let head = "listen = \"0.0.0.0:5000\"\n[[registry]]\nhost = \"docker.io\"\n[[scanner]]\nname = \"trivy\"\nurl = \"http://127.0.0.1:8080\"\ntoken = \"t\"\n";
        let rule = "[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n[rule.scan]\nscanner = \"trivy\"\n";
        let c = parse(&format!(
            "{head}{rule}deny_severity = \"Critical\"\nallow = [\"CVE-1\"]\nmode = \"audit\"\nrescan = \"1h\"\non_scanner_error = \"allow\"\nwait = \"5s\"\n"
        ))
        .unwrap();
        let p = &c.scan_policies["r"];
        assert_eq!(
            (
                p.deny_severity,
                p.mode,
                p.on_scanner_error,
                p.rescan,
                p.wait
            ),
            (
                Severity::Critical,
                GateMode::Audit,
                OnScannerError::Allow,
                Duration::from_secs(3600),
                Duration::from_secs(5)
            )
        );
        assert!(p.allow.contains("CVE-1"));
        // The scanner pulls from the listen address; 0.0.0.0 means loopback.
        assert_eq!(c.scanners[0].proxy_url, "http://127.0.0.1:5000");
        assert!(
            !format!("{:?}", c.scanners).contains("\"t\""),
            "token redacted"
        );
        let d = parse(&format!("{head}{rule}")).unwrap();
        let p = &d.scan_policies["r"];
        assert_eq!(
            (p.deny_severity, p.mode, p.on_scanner_error),
            (Severity::High, GateMode::Enforce, OnScannerError::Deny)
        );
        for (extra, says) in [
            ("deny_severity = \"dire\"", "scan.deny_severity = \"dire\""),
            (
                "deny_severity = \"negligible\"",
                "scan.deny_severity = \"negligible\"",
            ),
            ("mode = \"strict\"", "scan.mode = \"strict\""),
            (
                "on_scanner_error = \"retry\"",
                "scan.on_scanner_error = \"retry\"",
            ),
            ("rescan = \"often\"", "scan.rescan"),
            ("wait = \"1h\"", "scan.wait: at most 10m"),
            ("colour = \"red\"", "colour"),
        ] {
            let e = parse(&format!("{head}{rule}{extra}\n")).unwrap_err().0;
            assert!(e.contains(says), "{extra}: {e}");
        }
        let e = parse(&format!(
            "{head}{}",
            rule.replace("scanner = \"trivy\"", "scanner = \"clair\"")
        ))
        .unwrap_err()
        .0;
        assert!(
            e.contains("scan.scanner = \"clair\" names no [[scanner]]"),
            "{e}"
        );
        for (scanner, says) in [
            ("name = \"a b\"\nurl = \"http://x\"", "name: 1 to 64"),
            ("name = \"s\"\nurl = \"ftp://x\"", "url = \"ftp://x\""),
            (
                "name = \"s\"\nurl = \"http://x\"\ntoken = \"a\"\ntoken_env = \"B\"",
                "only one of token, token_env, token_file",
            ),
            (
                "name = \"trivy\"\nurl = \"http://x\"",
                "the name appears twice",
            ),
        ] {
            let e = parse(&format!("{head}[[scanner]]\n{scanner}\n{rule}"))
                .unwrap_err()
                .0;
            assert!(e.contains(says), "{scanner}: {e}");
        }
    }

    #[test]
    fn lease_settings_are_checked_and_belong_to_the_object_backend() {
        let object = "[storage]\nbackend = \"object\"\nurl = \"az://c/p\"\n";
        let rest = "[[registry]]\nhost = \"docker.io\"\n[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n";
        let c = parse(&format!(
            "{object}lease_ttl = \"10s\"\nlease_wait = \"0s\"\ninstance_name = \"pod-7\"\ntouch_interval = \"5s\"\n{rest}"
        ))
        .unwrap();
        let opts = crate::cache_options(&c);
        assert_eq!(
            (
                opts.lease_ttl,
                opts.lease_wait,
                opts.instance_name.as_str(),
                opts.touch_interval
            ),
            (
                Duration::from_secs(10),
                Duration::ZERO,
                "pod-7",
                Duration::from_secs(5)
            )
        );
        for (line, says) in [
            (
                "lease_ttl = \"1s\"",
                "storage.lease_ttl = \"1s\": at least 3s",
            ),
            ("lease_wait = \"soon\"", "storage.lease_wait"),
            (
                "instance_name = \"pod 7\"",
                "storage.instance_name = \"pod 7\"",
            ),
            ("instance_name = \"\"", "storage.instance_name = \"\""),
            (
                "touch_interval = \"10ms\"",
                "storage.touch_interval = \"10ms\": at least 1s",
            ),
        ] {
            let e = parse(&format!("{object}{line}\n{rest}")).unwrap_err().0;
            assert!(e.contains(says), "{line}: {e}");
        }
        let e = parse(&format!("[storage]\nlease_ttl = \"10s\"\n{rest}"))
            .unwrap_err()
            .0;
        assert!(
            e.contains("storage.lease_ttl is for backend = \"object\""),
            "{e}"
        );
    }

    #[test]
    fn the_object_backend_reads_its_url_options_and_spool_and_redacts_values() {
        let text = r#"
[storage]
backend = "object"
url = "az://cache/proxy"
spool = "spool"
[storage.options]
azure_storage_account_name = "acct"
azure_storage_account_key = { env = "CACHE_KEY" }
azure_storage_token = { file = "token" }
[[registry]]
host = "docker.io"
[[rule]]
name = "r"
source = "docker.io/library/*"
target = "library/*"
"#;
        let c = parse(text).unwrap();
        let Storage::Object {
            url,
            options,
            spool,
            lease_ttl,
            lease_wait,
            instance_name,
        } = &c.storage
        else {
            panic!("{:?}", c.storage);
        };
        assert_eq!(
            (url.as_str(), spool.as_path()),
            ("az://cache/proxy", Path::new("/base/spool"))
        );
        assert_eq!(
            (*lease_ttl, *lease_wait, instance_name.as_deref()),
            (Duration::from_secs(30), Duration::from_secs(300), None)
        );
        assert_eq!(
            options,
            &vec![
                (
                    "azure_storage_account_key".to_owned(),
                    PasswordSource::Env("CACHE_KEY".into())
                ),
                (
                    "azure_storage_account_name".to_owned(),
                    PasswordSource::Value(Secret::new("acct"))
                ),
                (
                    "azure_storage_token".to_owned(),
                    PasswordSource::File("/base/token".into())
                ),
            ]
        );
        let shown = format!("{:?}", c.storage);
        assert!(
            !shown.contains("acct") && shown.contains("<redacted>"),
            "{shown}"
        );
        let c = parse(&text.replace("spool = \"spool\"\n", "")).unwrap();
        assert!(
            matches!(c.storage, Storage::Object { spool, .. } if spool == std::env::temp_dir())
        );
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let base = "[[registry]]\nhost = \"docker.io\"\n";
        let rule =
            "[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n";
        let cases = [
            (
                format!("listen = \"nope\"\n{base}{rule}"),
                "listen = \"nope\"",
            ),
            (
                format!("[storage]\nbackend = \"s3\"\n{base}{rule}"),
                "storage.backend = \"s3\"",
            ),
            (
                format!("[storage]\nquota = \"lots\"\n{base}{rule}"),
                "storage.quota = \"lots\"",
            ),
            (
                format!("{base}{rule}tag_freshness = \"sometimes\"\n"),
                "tag_freshness = \"sometimes\"",
            ),
            (
                format!("{base}{rule}stale_if_error = \"1y\"\n"),
                "stale_if_error = \"1y\"",
            ),
            (
                format!("{base}[[rule]]\nname = \"r\"\nsource = \"quay.io/*\"\ntarget = \"q/*\"\n"),
                "quay.io",
            ),
            (format!("{base}{rule}{rule}"), "\"r\""),
            (format!("{base}{rule}bogus = 1\n"), "bogus"),
            (
                format!("[[registry]]\nhost = \"docker.io\"\nusername = \"me\"\n{rule}"),
                "username needs a password",
            ),
            (
                format!("[[registry]]\nhost = \"docker.io\"\nendpoint = \"ftp://x\"\n{rule}"),
                "ftp://x",
            ),
            (base.to_string(), "no [[rule]]"),
            (
                format!("[storage]\nbackend = \"object\"\n{base}{rule}"),
                "needs storage.url",
            ),
            (
                format!("[storage]\nurl = \"az://c/p\"\n{base}{rule}"),
                "storage.url is for backend = \"object\", not \"fs\"",
            ),
            (
                format!("[storage]\ngc_interval = \"0s\"\n{base}{rule}"),
                "storage.gc_interval = \"0s\": must be at least 1s",
            ),
            (
                format!("[auth]\ntokens = [\"\"]\n{base}{rule}"),
                "auth.tokens[0] is empty",
            ),
            (
                format!("[server]\nmax_concurrent_fetches = 8\n{base}{rule}"),
                "upstream.max_concurrent_fetches",
            ),
            (
                format!("[server]\nsend_timeout = \"0s\"\n{base}{rule}"),
                "server.send_timeout",
            ),
            (
                format!("[upstream]\nstall_timeout = \"soon\"\n{base}{rule}"),
                "upstream.stall_timeout = \"soon\"",
            ),
            (
                format!("[server]\nadmin_listen = \"0.0.0.0:9000\"\n{base}{rule}"),
                "must be a loopback address",
            ),
            (
                format!(
                    "[[registry]]\nhost = \"docker.io\"\nredirect_hosts = [\"http://x/\"]\n{rule}"
                ),
                "redirect_hosts entry \"http://x/\"",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
        }
    }

    #[test]
    fn a_large_file_parses_in_batches_to_the_same_configuration() {
        let mut text =
            String::from("listen = \"127.0.0.1:5000\"\n[[registry]]\nhost = \"docker.io\"\n");
        for i in 0..3000 {
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\nsource = \"docker.io/ns{i}/*\"\ntarget = \"ns{i}/*\" # rule {i}\n"
            ));
            if i % 3 == 0 {
                text.push_str("tag_freshness = \"ttl:10m\"\n");
            }
            if i == 1500 {
                // Other tables between rules stay with the main document.
                text.push_str("[server]\nidle_timeout = \"30s\"\n");
            }
        }
        let pad = "# padding to pass the batching threshold\n".repeat(BATCHED_ABOVE / 40);
        let whole = parse(&text).unwrap();
        let batched = parse(&format!("{text}{pad}")).unwrap();
        assert_eq!(batched.rules.len(), 3000);
        assert_eq!(batched.policies, whole.policies);
        assert_eq!(batched.idle_timeout, Duration::from_secs(30));
        for r in whole.rules.rules() {
            assert_eq!(batched.rules.get(r.name()).unwrap().target(), r.target());
        }
        // An error names the line in the file.
        let broken = text.replace("target = \"ns2000/*\" # rule 2000", "target = ns2000");
        let line = broken.lines().position(|l| l == "target = ns2000").unwrap() + 1;
        let e = parse(&format!("{broken}{pad}")).unwrap_err().to_string();
        assert!(e.contains(&format!("line {line}")), "{e}");
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
}
