//! # registry-proxy
//!
//! The OCI pull-through registry server built on `cache-core`,
//! `cache-store` and `cache-upstream`: configuration, wiring, metrics, the
//! access log, health and admin endpoints, reloads. Every caching
//! decision, the pull API (`cache_core::protocol`) and its HTTP service
//! with pull-side auth, connection limits and zero-copy sends
//! (`cache_core::server`) are the library's. The binary's subcommands
//! (`serve`, `check`, `explain`, `warm`, `gc`, `scrub`, `reload`, `scan`)
//! share one configuration.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod cli;
pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cache_core::{BlobStore, CacheBuilder, CacheOptions, EventSink, PullThroughCache};
use cache_store::{FsStore, FsStoreOptions, MemoryStore, ObjectBlobStore};
use cache_upstream::{ClientOptions, RegistryClient};

use cache_upstream::scanner::{ScanCounters, ScanGate, ScannerClient};

use crate::config::{Config, ConfigError, Storage};
use cache_core::server::ScopedTokens;

/// Opens the configured store.
pub async fn open_store(cfg: &Config) -> Result<Arc<dyn BlobStore>, ConfigError> {
    Ok(match &cfg.storage {
        Storage::Memory => Arc::new(MemoryStore::new()),
        Storage::Fs { path, fsync } => Arc::new(
            FsStore::open_with(path, FsStoreOptions { fsync: *fsync })
                .await
                .map_err(|e| {
                    ConfigError(format!(
                        "storage.path = {:?}: {e}",
                        path.display().to_string()
                    ))
                })?,
        ),
        Storage::Object {
            url,
            options,
            spool,
            ..
        } => {
            let mut resolved = Vec::with_capacity(options.len());
            for (k, v) in options {
                let value = v
                    .resolve()
                    .map_err(|e| ConfigError(format!("storage.options.{k}: {e}")))?;
                resolved.push((k.clone(), value.expose().to_owned()));
            }
            std::fs::create_dir_all(spool).map_err(|e| {
                ConfigError(format!(
                    "storage.spool = {:?}: {e}",
                    spool.display().to_string()
                ))
            })?;
            let store = ObjectBlobStore::from_url(url, resolved, spool)
                .map_err(|e| ConfigError(format!("storage.url = {url:?}: {e}")))?;
            // Fail at start, not on the first pull: one HEAD shows that the
            // store answers and takes the credentials.
            store
                .stat(&cache_core::Digest::sha256_of(b""))
                .await
                .map_err(|e| ConfigError(format!("storage.url = {url:?}: {e}")))?;
            Arc::new(store)
        }
    })
}

/// Gives memory freed by a large passing allocation (parsing a
/// configuration, an old rule set after a reload) back to the system, so
/// resident memory reflects what is held, not what was once parsed.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The engine tunables the configuration gives (`[upstream]`, `[server]`).
pub fn cache_options(cfg: &Config) -> CacheOptions {
    let up = &cfg.upstream;
    let mut opts = CacheOptions::default();
    if let config::Storage::Object {
        lease_ttl,
        lease_wait,
        instance_name,
        ..
    } = &cfg.storage
    {
        opts.lease_ttl = *lease_ttl;
        opts.lease_wait = *lease_wait;
        if let Some(name) = instance_name {
            opts.instance_name = name.clone();
        }
    }
    CacheOptions {
        max_concurrent_fetches: up.max_concurrent_fetches,
        max_queued_fetches: up.max_queued_fetches,
        max_retries: up.max_retries,
        retry_backoff: up.retry_backoff,
        stall_timeout: up.stall_timeout,
        manifest_timeout: up.manifest_timeout,
        revalidate_window: up.revalidate_window,
        max_manifest_size: cfg.max_manifest_size,
        touch_interval: cfg.touch_interval,
        ..opts
    }
}

/// The registry clients a configuration made, labelled by registry and
/// credential set (`default` for the registry's own), for their gauges.
pub type Clients = Vec<(String, String, Arc<RegistryClient>)>;

/// What [`wiring`] makes of a configuration.
#[derive(Debug)]
pub struct Wired {
    /// Rules, upstreams, policies and admission hooks, ready for
    /// [`CacheBuilder::build`] or `PullThroughCache::reconfigure`.
    pub builder: CacheBuilder,
    /// The registry clients, for their gauges.
    pub clients: Clients,
    /// The vulnerability gate, when scanners are configured and a gate was
    /// asked for (its rescans are the caller's to start).
    pub gate: Option<ScanGate>,
}

/// What the server lends its vulnerability gates, kept across reloads:
/// the credentials their scanners are issued, and where scans are counted.
#[derive(Debug, Clone, Default)]
pub struct GateServices {
    /// Scoped pull credentials the server accepts.
    pub credentials: Arc<ScopedTokens>,
    /// Scans finished, failed and in progress, for `/metrics`.
    pub counters: Arc<ScanCounters>,
}

/// What a vulnerability gate needs besides the configuration: the store
/// its findings are kept in, and the server's services.
#[derive(Debug, Clone)]
pub struct GateParts {
    /// The cache's store.
    pub store: Arc<dyn BlobStore>,
    /// Credentials and counters.
    pub services: GateServices,
}

/// The vulnerability gate the configuration describes, if it has
/// `[[scanner]]`s (each scanner's token read now).
pub fn scan_gate(cfg: &Config, parts: &GateParts) -> Result<Option<ScanGate>, ConfigError> {
    if cfg.scanners.is_empty() {
        return Ok(None);
    }
    let mut clients = Vec::with_capacity(cfg.scanners.len());
    for s in &cfg.scanners {
        let token = s
            .token
            .as_ref()
            .map(|t| t.resolve())
            .transpose()
            .map_err(|e| ConfigError(format!("scanner {:?}: token: {e}", s.name)))?;
        clients
            .push(ScannerClient::new(&s.name, &s.url, token, &s.proxy_url).map_err(ConfigError)?);
    }
    ScanGate::new(
        clients,
        cfg.scan_policies.clone(),
        parts.store.clone(),
        parts.services.credentials.clone(),
    )
    .map(|g| Some(g.with_counters(parts.services.counters.clone())))
    .map_err(ConfigError)
}

/// The rules, upstreams and policies the configuration describes: one
/// `RegistryClient` per `[[registry]]`, and one per credential set a rule
/// names on it; and with `gate`, the vulnerability gate as an admission
/// hook (tools that only fill or inspect the cache leave it out: the
/// server applies it when clients pull).
pub fn wiring(cfg: &Config, gate: Option<&GateParts>) -> Result<Wired, ConfigError> {
    let up = &cfg.upstream;
    let client = |u: &config::UpstreamConfig, creds| {
        let endpoints: Vec<&str> = u.endpoints.iter().map(String::as_str).collect();
        let opts = ClientOptions {
            max_manifest_size: cfg.max_manifest_size,
            connect_timeout: up.connect_timeout,
            response_timeout: up.response_timeout,
            read_timeout: up.stall_timeout,
            redirect_hosts: u.redirect_hosts.clone(),
            token_hosts: u.token_hosts.clone(),
            rate_limit_reserve: u.reserve,
            tls: u.tls.clone(),
            ..ClientOptions::default()
        };
        let made = if endpoints.is_empty() {
            RegistryClient::new(u.host.clone(), None, creds, opts)
        } else {
            RegistryClient::with_endpoints(u.host.clone(), &endpoints, creds, opts)
        };
        made.map(Arc::new)
            .map_err(|e| ConfigError(format!("registry {}: {e}", u.host)))
    };
    let mut clients: Clients = Vec::new();
    let mut b = PullThroughCache::builder().rules(cfg.rules.clone());
    let by_host: HashMap<&cache_core::Registry, &config::UpstreamConfig> =
        cfg.registries.iter().map(|u| (&u.host, u)).collect();
    for u in &cfg.registries {
        let c = client(u, u.credentials.clone())?;
        clients.push((u.host.to_string(), "default".into(), c.clone()));
        b = b.upstream(u.host.as_str(), c);
    }
    let mut named = HashSet::new();
    for rule in cfg.rules.rules() {
        let Some(name) = rule.credentials() else {
            continue;
        };
        if !named.insert((rule.registry(), name)) {
            continue;
        }
        let u = by_host.get(rule.registry()).ok_or_else(|| {
            ConfigError(format!(
                "rule {:?}: no [[registry]] for {}",
                rule.name(),
                rule.registry()
            ))
        })?;
        let creds = cfg.credentials.get(name).cloned();
        let c = client(u, creds)?;
        clients.push((u.host.to_string(), name.to_owned(), c.clone()));
        b = b.upstream_with_credentials(u.host.as_str(), name, c);
    }
    for (name, p) in &cfg.policies {
        b = b.policy(name, p.clone());
    }
    let gate = match gate {
        Some(parts) => scan_gate(cfg, parts)?,
        None => None,
    };
    if let Some(g) = &gate {
        b = b.admission(g.clone());
    }
    Ok(Wired {
        builder: b,
        clients,
        gate,
    })
}

/// Builds the cache the configuration describes on `store` (with the
/// vulnerability gate when the server lends it `services`); and its
/// registry clients and gate.
pub fn build_cache(
    cfg: &Config,
    store: Arc<dyn BlobStore>,
    events: Arc<dyn EventSink>,
    services: Option<GateServices>,
) -> Result<(PullThroughCache, Clients, Option<ScanGate>), ConfigError> {
    let parts = services.map(|services| GateParts {
        store: store.clone(),
        services,
    });
    let w = wiring(cfg, parts.as_ref())?;
    w.builder
        .store(store)
        .tokio()
        .events(events)
        .options(cache_options(cfg))
        .build()
        .map(|c| (c, w.clients, w.gate))
        .map_err(|e| ConfigError(e.to_string()))
}
