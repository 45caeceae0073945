//! The TOML configuration: listen address, storage, upstream registries
//! with credentials, caching rules with their policies, pull-side auth.
//!
//! Every validation error names the key and the offending value.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cache_core::policy::parse_duration;
use cache_core::{RulePolicy, RuleSpec, TagFreshness};
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
    /// Time given to transfers in progress at shutdown (default `30s`).
    pub shutdown_grace: Option<String>,
    /// Upstream blob transfers at once (default 64).
    pub max_concurrent_fetches: Option<usize>,
    /// Largest manifest accepted (default `4MiB`).
    pub max_manifest_size: Option<String>,
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
    /// A user name.
    pub username: Option<String>,
    /// The password itself.
    pub password: Option<String>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// A file holding the password.
    pub password_file: Option<PathBuf>,
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
    },
}

/// One upstream registry, ready to connect.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The registry name rules use.
    pub host: cache_core::Registry,
    /// Its endpoint, if not the default.
    pub endpoint: Option<String>,
    /// Its credentials.
    pub credentials: Option<Credentials>,
}

/// Pull-side authentication.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `user -> bcrypt hash`.
    pub htpasswd: HashMap<String, String>,
    /// Accepted bearer tokens.
    pub tokens: Vec<Secret>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The store.
    pub storage: Storage,
    /// Quota for gc.
    pub quota: Option<u64>,
    /// gc period.
    pub gc_interval: Duration,
    /// Until-headers timeout.
    pub request_timeout: Duration,
    /// Header-read (idle connection) timeout.
    pub idle_timeout: Duration,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Fetch cap.
    pub max_concurrent_fetches: usize,
    /// Manifest size cap.
    pub max_manifest_size: usize,
    /// Upstreams by host.
    pub registries: Vec<UpstreamConfig>,
    /// Named credential sets.
    pub credentials: HashMap<String, Credentials>,
    /// Rules, validated by `cache_core::RuleSet` when the cache is built.
    pub rules: Vec<RuleSpec>,
    /// Per-rule policies.
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
    /// Parses and validates a configuration text. `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError(format!("invalid configuration: {e}")))?;
        Self::validate(raw, base)
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &base).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    fn validate(raw: RawConfig, base: &Path) -> Result<Self, ConfigError> {
        let listen_s = raw.listen.unwrap_or_else(|| "127.0.0.1:5000".into());
        let listen: SocketAddr = listen_s
            .parse()
            .map_err(|_| ConfigError(format!("listen = {listen_s:?}: not an IP:PORT address")))?;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let storage = match raw.storage.backend.as_deref().unwrap_or("fs") {
            "memory" => Storage::Memory,
            "fs" => Storage::Fs {
                path: abs(raw
                    .storage
                    .path
                    .clone()
                    .unwrap_or_else(|| "cache-data".into())),
                fsync: raw.storage.fsync.unwrap_or(true),
            },
            "object" => {
                let Some(url) = raw.storage.url.clone() else {
                    return err("storage.backend = \"object\" needs storage.url (e.g. \"az://container/prefix\")".into());
                };
                let options = raw
                    .storage
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
                Storage::Object {
                    url,
                    options,
                    spool: raw
                        .storage
                        .spool
                        .clone()
                        .map_or_else(std::env::temp_dir, abs),
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
                ("url", raw.storage.url.is_some()),
                ("options", !raw.storage.options.is_empty()),
                ("spool", raw.storage.spool.is_some()),
            ] {
                if set {
                    return err(format!(
                        "storage.{key} is for backend = \"object\", not {:?}",
                        raw.storage.backend.as_deref().unwrap_or("fs")
                    ));
                }
            }
        }
        let quota = match &raw.storage.quota {
            None => None,
            Some(q) => Some(parse_size(q).ok_or_else(|| {
                ConfigError(format!(
                    "storage.quota = {q:?}: not a size (use e.g. 50GiB)"
                ))
            })?),
        };
        let gc_interval = duration(
            "storage.gc_interval",
            &raw.storage.gc_interval,
            Duration::from_secs(600),
        )?;
        let request_timeout = duration(
            "server.request_timeout",
            &raw.server.request_timeout,
            Duration::from_secs(300),
        )?;
        let idle_timeout = duration(
            "server.idle_timeout",
            &raw.server.idle_timeout,
            Duration::from_secs(60),
        )?;
        let shutdown_grace = duration(
            "server.shutdown_grace",
            &raw.server.shutdown_grace,
            Duration::from_secs(30),
        )?;
        let max_concurrent_fetches = match raw.server.max_concurrent_fetches {
            Some(0) => return err("server.max_concurrent_fetches = 0: must be at least 1".into()),
            Some(n) => n,
            None => 64,
        };
        let max_manifest_size = match &raw.server.max_manifest_size {
            None => 4 * 1024 * 1024,
            Some(s) => parse_size(s)
                .filter(|&n| n > 0 && n <= 64 * 1024 * 1024)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "server.max_manifest_size = {s:?}: a size up to 64MiB"
                    ))
                })? as usize,
        };

        let mut registries = Vec::new();
        for (i, r) in raw.registry.iter().enumerate() {
            let key = format!("registry[{i}] (host = {:?})", r.host);
            let host = cache_core::Registry::parse(&r.host)
                .map_err(|e| ConfigError(format!("{key}: {e}")))?;
            if registries.iter().any(|u: &UpstreamConfig| u.host == host) {
                return err(format!("{key}: host {:?} appears twice", r.host));
            }
            if let Some(ep) = &r.endpoint
                && !(ep.starts_with("http://") || ep.starts_with("https://"))
            {
                return err(format!(
                    "{key}: endpoint = {ep:?} must start with http:// or https://"
                ));
            }
            let pw = password(&key, &r.password, &r.password_env, &r.password_file)?;
            registries.push(UpstreamConfig {
                host,
                endpoint: r.endpoint.clone(),
                credentials: creds(&key, &r.username, pw)?,
            });
        }
        let mut credentials = HashMap::new();
        for (i, c) in raw.credentials.iter().enumerate() {
            let key = format!("credentials[{i}] (name = {:?})", c.name);
            let pw = password(&key, &c.password, &c.password_env, &c.password_file)?;
            let cr = creds(&key, &Some(c.username.clone()), pw)?.expect("username given");
            if credentials.insert(c.name.clone(), cr).is_some() {
                return err(format!("{key}: the name is used twice"));
            }
        }
        let mut rules = Vec::new();
        let mut policies = HashMap::new();
        for (i, r) in raw.rule.iter().enumerate() {
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
            let content_ttl = match &r.content_ttl {
                None => None,
                Some(_) => Some(duration(
                    &format!("{key}: content_ttl"),
                    &r.content_ttl,
                    Duration::ZERO,
                )?),
            };
            if let Some(c) = &r.credentials
                && !credentials.contains_key(c)
            {
                return err(format!(
                    "{key}: credentials = {c:?} names no [[credentials]] entry"
                ));
            }
            let registry = r
                .source
                .split_once('/')
                .map(|(h, _)| h)
                .unwrap_or(&r.source);
            let reg = cache_core::Registry::parse(registry)
                .map_err(|e| ConfigError(format!("{key}: source = {:?}: {e}", r.source)))?;
            if !registries.iter().any(|u| u.host == reg) {
                return err(format!(
                    "{key}: source = {:?} names registry {reg}, which has no [[registry]] entry",
                    r.source
                ));
            }
            let mut spec = RuleSpec::new(r.name.clone(), r.source.clone(), r.target.clone());
            spec.credentials = r.credentials.clone();
            rules.push(spec);
            policies.insert(
                r.name.clone(),
                RulePolicy {
                    tag_freshness,
                    stale_if_error,
                    content_ttl,
                },
            );
        }
        if rules.is_empty() {
            return err("no [[rule]]: the proxy would refuse every request".into());
        }
        // Let the rule set report rule errors (duplicates, bad names) now, naming the rule.
        cache_core::RuleSet::new(&rules).map_err(|e| ConfigError(e.to_string()))?;

        let auth = match raw.auth {
            None => None,
            Some(a) => {
                let mut cfg = AuthConfig::default();
                if let Some(p) = &a.htpasswd {
                    let p = abs(p.clone());
                    let text = std::fs::read_to_string(&p).map_err(|e| {
                        ConfigError(format!(
                            "auth.htpasswd = {:?}: {e}",
                            p.display().to_string()
                        ))
                    })?;
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
                        if !(h.starts_with("$2y$")
                            || h.starts_with("$2b$")
                            || h.starts_with("$2a$"))
                        {
                            return err(format!(
                                "auth.htpasswd {}: line {} (user {u:?}) is not a bcrypt hash (use htpasswd -B)",
                                p.display(),
                                n + 1
                            ));
                        }
                        cfg.htpasswd.insert(u.to_owned(), h.to_owned());
                    }
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
                    return err(
                        "[auth] is present but names no htpasswd users and no tokens".into(),
                    );
                }
                Some(cfg)
            }
        };
        Ok(Config {
            listen,
            storage,
            quota,
            gc_interval,
            request_timeout,
            idle_timeout,
            shutdown_grace,
            max_concurrent_fetches,
            max_manifest_size,
            registries,
            credentials,
            rules,
            policies,
            auth,
        })
    }
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
        assert_eq!(c.rules[0].target, "library/*");
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
        } = &c.storage
        else {
            panic!("{:?}", c.storage);
        };
        assert_eq!(
            (url.as_str(), spool.as_path()),
            ("az://cache/proxy", Path::new("/base/spool"))
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
        ];
        for (text, needle) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
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
}
