//! The TOML configuration file: sections are the libraries' types, which
//! validate themselves (`cache_core::config`, `cache_store::StorageConfig`,
//! `cache_upstream::RegistryConfig`, ...); here are the file's layout, what
//! refers to what, and loading. Errors name the key's path and the value.

mod load;
mod rules;
mod server;
mod storage;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cache_core::config::RuleConfig;
use cache_core::{CacheOptions, RulePolicy, RuleSet};
use cache_store::StorageConfig;
use cache_upstream::scanner::{ScanPolicy, ScannerConfig};
use cache_upstream::{ClientOptions, CredentialSet, Credentials, PreparedRegistry, RegistryConfig};
use serde::Deserialize;

use crate::logging::LogFormat;
use crate::tls::TlsFiles;

pub use cache_core::config::ConfigError;

/// What loading a configuration comes to.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;
pub use cache_core::server::AuthConfig;

/// The file as written. `[storage]`, `[server]` and `[upstream]` hold keys
/// of several types, so they are read as tables and split.
#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    storage: toml::Table,
    server: toml::Table,
    upstream: toml::Table,
    auth: Option<cache_core::server::AuthSpec>,
    registry: Vec<RegistryConfig>,
    credentials: Vec<CredentialSet>,
    rule: Vec<RuleConfig<ScanPolicy>>,
    log: Log,
    tls: Option<TlsFiles>,
    scanner: Vec<ScannerConfig>,
    webhook: Vec<cache_upstream::webhook::WebhookConfig>,
    console: cache_core::console::ConsoleConfig,
}

/// `[log]`.
#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Log {
    format: LogFormat,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The store.
    pub storage: StorageConfig,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// HTTPS, if configured.
    pub tls: Option<TlsFiles>,
    /// Vulnerability scanners.
    pub scanners: Vec<ScannerConfig>,
    /// Per rule, its vulnerability policy.
    pub scan_policies: HashMap<String, ScanPolicy>,
    /// Quota for gc.
    pub quota: Option<u64>,
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
    /// Threads serving client connections, each with a single-threaded
    /// runtime (one per core by default; `0`: the shared runtime's
    /// workers serve them).
    pub connection_threads: usize,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Serving on after SIGTERM, not ready.
    pub drain_delay: Duration,
    /// The admin endpoint's address, if any (loopback).
    pub admin_listen: Option<SocketAddr>,
    /// The engine's tunables, from `[upstream]`, `[storage]` and `[server]`.
    pub cache: CacheOptions,
    /// How registries are fetched from, before each one's own settings.
    pub client: ClientOptions,
    /// Upstreams, in the file's order.
    pub registries: Vec<PreparedRegistry>,
    /// Named credential sets.
    pub credentials: HashMap<String, Credentials>,
    /// The caching rules, validated and indexed.
    pub rules: Arc<RuleSet>,
    /// Per-rule policies, for the rules whose policy is not the default.
    pub policies: HashMap<String, RulePolicy>,
    /// Pull-side auth, if any.
    pub auth: Option<AuthConfig>,
    /// Where events go (`[[webhook]]`).
    pub webhooks: Vec<cache_upstream::webhook::WebhookConfig>,
    /// Where the web console is served (`[console]`).
    pub console: cache_core::console::ConsoleConfig,
    /// Peer streaming (`[storage] peer_*`), if configured.
    pub peer: Option<cache_core::peer::PeerConfig>,
}

/// The built-in default (`default.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../default.toml");

fn err<T>(msg: String) -> Result<T> {
    Err(ConfigError::new(msg))
}

/// The entries of the array of tables `what`, made by `make`, their `name`s
/// unique; an error names the entry (`registry[1] (host = "x")`).
fn named<T, U, C: FromIterator<U>>(
    what: &str,
    raw: Vec<T>,
    name: impl Fn(&T) -> (&'static str, String),
    mut make: impl FnMut(String, T) -> Result<U>,
) -> Result<C> {
    let mut seen = std::collections::HashSet::new();
    let mut entry = |(i, t)| {
        let (key, n) = name(&t);
        let at = format!("{what}[{i}] ({key} = {n:?})");
        if !seen.insert(n.clone()) {
            return err(format!("{at}: {key} appears twice"));
        }
        make(n, t).map_err(|e| ConfigError::new(format!("{at}: {e}")))
    };
    raw.into_iter().enumerate().map(&mut entry).collect()
}

impl Config {
    /// Parses and validates a configuration text. `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self> {
        Self::validate(load::parse(text)?, base)
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &base).map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))
    }

    fn validate(raw: RawConfig, base: &Path) -> Result<Self> {
        let listen_s = raw.listen.unwrap_or_else(|| "127.0.0.1:5000".into());
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            ConfigError::new(format!("listen = {listen_s:?}: not an IP:PORT address"))
        })?;
        let (server, max_manifest_size) = server::settings(raw.server)?;
        let storage = storage::section(raw.storage, base)?;
        let (cache, client) = upstream::options(raw.upstream, storage.cache, max_manifest_size)?;
        let registries = upstream::registries(raw.registry, &client, base)?;
        let credentials = upstream::credential_sets(raw.credentials, base)?;
        let scanners = rules::scanners(raw.scanner, base)?;
        let mut tls = raw.tls;
        if let Some(files) = &mut tls {
            files.rebase(base);
            files
                .check()
                .map_err(|e| ConfigError::new(format!("tls: {e}")))?;
        }
        let (rules, policies, scan_policies) =
            rules::rules(raw.rule, &registries, &credentials, &scanners, base)?;
        Ok(Config {
            listen,
            storage: storage.store,
            log_format: raw.log.format,
            tls,
            scanners,
            scan_policies,
            quota: storage.quota,
            gc_interval: storage.gc_interval,
            request_timeout: server.request_timeout,
            idle_timeout: server.idle_timeout,
            send_timeout: server.send_timeout,
            max_connections: server.max_connections,
            connection_threads: server.connection_threads,
            shutdown_grace: server.shutdown_grace,
            drain_delay: server.drain_delay,
            admin_listen: server.admin_listen,
            cache,
            client,
            registries,
            credentials,
            rules,
            policies,
            auth: raw
                .auth
                .map(|mut a| {
                    a.rebase(base);
                    a.load().map_err(|e| e.at("auth"))
                })
                .transpose()?,
            webhooks: cache_upstream::webhook::WebhookConfig::prepare(raw.webhook, base)?,
            console: raw.console,
            peer: storage.peer,
        })
    }
}
