//! # registry-proxy
//!
//! The OCI pull-through registry server built on `cache-core`,
//! `cache-store` and `cache-upstream`: configuration, wiring, metrics, the
//! access log, health and admin endpoints, reloads. Every caching
//! decision, the pull API (`cache_core::protocol`) and its HTTP service
//! with pull-side auth, connection limits and zero-copy sends
//! (`cache_core::server`) are the library's. The binary's subcommands
//! (`serve`, `check`, `explain`, `warm`, `gc`, `scrub`, `purge`, `reload`,
//! `scan`) share one configuration.
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
use cache_upstream::scanner::{ScanCounters, ScanGate};
use cache_upstream::{PreparedRegistry, RegistryClient};

use crate::config::{Config, ConfigError};
use cache_core::server::{AuthConfig, PullAuth, ScopedTokens};

/// The pull-side auth `cfg` describes, taking over from `previous` on a
/// reload (the token-signing keys it replaces keep verifying their tokens,
/// JWKS keys fetched and failed-login counts carry on), with the OIDC
/// providers' JWKS URLs fetched in the background under the address
/// policy (`cache_upstream::JwksClient`). Needs a tokio runtime.
pub fn pull_auth(cfg: &AuthConfig, previous: Option<&PullAuth>) -> PullAuth {
    let mut auth = PullAuth::new(cfg.clone());
    if let Some(old) = previous {
        auth = auth.succeed(old);
    }
    auth.fetch_jwks_with(Arc::new(cache_upstream::JwksClient::new()));
    if let Some(kid) = auth.signing_key_id() {
        tracing::info!(kid, "registry tokens are signed with this key");
    }
    auth
}

/// Opens the configured store (an object store is asked once now).
pub async fn open_store(cfg: &Config) -> Result<Arc<dyn BlobStore>, ConfigError> {
    cfg.storage.open().await.map_err(|e| e.at("storage"))
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

/// The engine tunables the configuration gives (`[upstream]`,
/// `[storage]`, `[server]`).
pub fn cache_options(cfg: &Config) -> CacheOptions {
    cfg.cache.clone()
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
    /// Where the gates report verdict changes (the engine's sink).
    pub events: Option<Arc<dyn EventSink>>,
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

/// Where a scanner reaches this proxy unless its `proxy_url` says: the
/// listen address (`127.0.0.1` for `0.0.0.0`), over https with `[tls]`.
pub fn proxy_url(cfg: &Config) -> String {
    let mut at = cfg.listen;
    if at.ip().is_unspecified() {
        at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{at}")
}

/// The vulnerability gate the configuration describes, if it has
/// `[[scanner]]`s (each scanner's token read now).
pub fn scan_gate(cfg: &Config, parts: &GateParts) -> Result<Option<ScanGate>, ConfigError> {
    if cfg.scanners.is_empty() {
        return Ok(None);
    }
    let (mut clients, default) = (Vec::with_capacity(cfg.scanners.len()), proxy_url(cfg));
    for s in &cfg.scanners {
        let client = s.client(&default);
        clients.push(client.map_err(|e| ConfigError::new(format!("scanner {:?}: {e}", s.name)))?);
    }
    ScanGate::new(
        clients,
        cfg.scan_policies.clone(),
        parts.store.clone(),
        parts.services.credentials.clone(),
    )
    .map(|g| {
        let g = g.with_counters(parts.services.counters.clone());
        Some(match &parts.services.events {
            Some(events) => g.with_events(events.clone()),
            None => g,
        })
    })
    .map_err(ConfigError::new)
}

/// The engine's event sink: `metrics`, and the configured webhooks (their
/// secrets read now, their workers started on this tokio runtime).
pub fn event_sink(
    cfg: &Config,
    metrics: Arc<dyn EventSink>,
) -> Result<Arc<cache_upstream::webhook::Webhooks>, ConfigError> {
    let rt = cache_core::runtime::TokioRuntime::current();
    let mut sink = cache_upstream::webhook::Webhooks::new(metrics);
    for (i, w) in cfg.webhooks.iter().enumerate() {
        let at = |e: String| {
            ConfigError::new(format!("webhook[{i}] (name = {:?}): {e}", w.webhook.name))
        };
        let settings = w.settings().map_err(|e| at(e.to_string()))?;
        sink = sink
            .with(settings, Arc::new(rt.clone()), Arc::new(rt.clone()))
            .map_err(at)?;
    }
    Ok(Arc::new(sink))
}

/// The rules, upstreams and policies the configuration describes: one
/// `RegistryClient` per `[[registry]]`, and one per credential set a rule
/// names on it; and with `gate`, the vulnerability gate as an admission
/// hook (tools that only fill or inspect the cache leave it out: the
/// server applies it when clients pull).
pub fn wiring(cfg: &Config, gate: Option<&GateParts>) -> Result<Wired, ConfigError> {
    let client = |u: &PreparedRegistry, creds| u.client(creds).map(Arc::new);
    let mut clients: Clients = Vec::new();
    let mut b = PullThroughCache::builder().rules(cfg.rules.clone());
    let by_host: HashMap<&cache_core::Registry, &PreparedRegistry> =
        cfg.registries.iter().map(|u| (&u.config.host, u)).collect();
    for u in &cfg.registries {
        let c = client(u, u.credentials.clone())?;
        clients.push((u.config.host.to_string(), "default".into(), c.clone()));
        b = b.upstream(u.config.host.as_str(), c);
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
            ConfigError::new(format!(
                "rule {:?}: no [[registry]] for {}",
                rule.name(),
                rule.registry()
            ))
        })?;
        let creds = cfg.credentials.get(name).cloned();
        let c = client(u, creds)?;
        clients.push((u.config.host.to_string(), name.to_owned(), c.clone()));
        b = b.upstream_with_credentials(u.config.host.as_str(), name, c);
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
    let mut builder = w.builder;
    if let Some(p) = &cfg.peer {
        // Peer streaming: the leases this instance holds name its peer
        // endpoint (served by `serve`), and it streams from the others'.
        let source = cache_upstream::PeerClient::from_config(p)
            .map_err(|e| ConfigError::new(e.to_string()))?;
        builder = builder.peering(cache_core::peer::Peering {
            advertise: p.advertise.clone(),
            source: Arc::new(source),
            timeout: p.timeout,
        });
    }
    builder
        .store(store)
        .tokio()
        .events(events)
        .options(cache_options(cfg))
        .build()
        .map(|c| (c, w.clients, w.gate))
        .map_err(|e| ConfigError::new(e.to_string()))
}
