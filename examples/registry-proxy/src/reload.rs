//! Reloading the configuration while serving (SIGHUP, `POST /reload` on the
//! admin endpoint, `registry-proxy reload`).
//!
//! The new file is read and validated as at start. If it is invalid,
//! nothing changes and the error is logged, counted and returned. If it is
//! valid (and no scanner it names answers that it cannot scan images), the
//! rules, registries, credentials, policies, scanners and pull-side auth
//! (its files re-read: htpasswd, password files, JWKS files, the token
//! signing key, a new one when generated) are swapped at once; requests
//! and transfers in progress finish under the configuration they started
//! with. Settings that only a restart can
//! change (listen address, storage, `[server]`, `[upstream]`,
//! `[[webhook]]`) keep their
//! running values, and the reload says which of them differ.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use cache_core::PullThroughCache;

use cache_upstream::scanner::ScanGate;

use crate::config::{Config, DEFAULT_CONFIG};
use crate::metrics::Metrics;
use cache_core::server::PullAuth;

/// Swaps a running server's configuration.
#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    running: Mutex<Config>,
    cache: PullThroughCache,
    auth: Arc<ArcSwapOption<PullAuth>>,
    metrics: Arc<Metrics>,
    certificates: Vec<Arc<crate::tls::Certificates>>,
    services: crate::GateServices,
    gate: ArcSwapOption<ScanGate>,
}

fn read(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => {
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            Config::parse(DEFAULT_CONFIG, &cwd).map_err(|e| e.to_string())
        }
    }
}

/// The settings that differ between `old` and `new` and only take effect
/// on a restart (a reload leaves them as they are).
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let server = |c: &Config| {
        let t = (c.request_timeout, c.idle_timeout, c.send_timeout);
        (
            t,
            c.shutdown_grace,
            c.max_connections,
            c.connection_threads,
            c.drain_delay,
            c.admin_listen,
        )
    };
    [
        ("listen", old.listen == new.listen),
        ("storage", old.storage == new.storage),
        ("log.format", old.log_format == new.log_format),
        ("[tls] files", old.tls == new.tls),
        (
            "storage.quota / storage.gc_interval",
            (old.quota, old.gc_interval) == (new.quota, new.gc_interval),
        ),
        ("[server]", server(old) == server(new)),
        ("[[webhook]]", old.webhooks == new.webhooks),
        ("storage.peer_*", old.peer == new.peer),
        (
            "[upstream] / storage lease and touch settings / server.max_manifest_size",
            (&old.cache, &old.client) == (&new.cache, &new.client),
        ),
    ]
    .into_iter()
    .filter_map(|(key, same)| (!same).then_some(key))
    .collect()
}

impl Reloader {
    /// A reloader for a server started from `path` (the built-in default
    /// for `None`) with `running`.
    pub fn new(
        path: Option<PathBuf>,
        running: Config,
        cache: PullThroughCache,
        auth: Arc<ArcSwapOption<PullAuth>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reloader {
            path,
            running: Mutex::new(running),
            cache,
            auth,
            metrics,
            certificates: Vec::new(),
            services: crate::GateServices::default(),
            gate: ArcSwapOption::empty(),
        }
    }

    /// The vulnerability gate in force, and what the server lends the
    /// gates a reload makes (the credentials their scanners are issued,
    /// the scan counters).
    pub fn with_gate(mut self, gate: Option<ScanGate>, services: crate::GateServices) -> Self {
        self.gate = ArcSwapOption::from(gate.map(Arc::new));
        self.services = services;
        self
    }

    /// The vulnerability gate in force, if scanners are configured.
    pub fn gate(&self) -> Option<Arc<ScanGate>> {
        self.gate.load_full()
    }

    /// Re-reads these TLS files on each reload too (the listener's, the
    /// peer endpoint's).
    pub fn with_certificates(
        mut self,
        c: impl IntoIterator<Item = Arc<crate::tls::Certificates>>,
    ) -> Self {
        self.certificates = c.into_iter().collect();
        self
    }

    /// Re-reads the configuration and swaps what can be swapped. `Ok` says
    /// what changed; `Err` says why nothing did.
    pub fn reload(&self) -> Result<String, String> {
        let outcome = self.try_reload();
        crate::release_freed_memory();
        self.metrics.reload(outcome.is_ok());
        match &outcome {
            Ok(msg) => tracing::info!(%msg, "configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded; the running one stays")
            }
        }
        outcome
    }

    fn try_reload(&self) -> Result<String, String> {
        let new = read(&self.path)?;
        let parts = crate::GateParts {
            store: self.cache.store().clone(),
            services: self.services.clone(),
        };
        let wired = crate::wiring(&new, Some(&parts)).map_err(|e| e.to_string())?;
        // A scanner that answers and cannot scan images is refused, as at
        // start (reloads run on a blocking thread of the runtime).
        if let (Some(g), Ok(rt)) = (&wired.gate, tokio::runtime::Handle::try_current()) {
            for (_, checked) in rt.block_on(g.check_scanners()) {
                if let Err(cache_upstream::scanner::MetadataError::Unfit(e)) = checked {
                    return Err(e);
                }
            }
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        self.cache
            .reconfigure(wired.builder)
            .map_err(|e| e.to_string())?;
        self.metrics.set_clients(wired.clients);
        // The old gate's rescans end with it.
        if let Some(g) = &wired.gate {
            g.revoke_through(&self.cache);
            g.spawn_rescans();
        }
        self.gate.store(wired.gate.map(Arc::new));
        let previous = self.auth.load_full();
        self.auth.store(
            new.auth
                .as_ref()
                .map(|a| Arc::new(crate::pull_auth(a, previous.as_deref()))),
        );
        let restart = restart_only_changes(&running, &new);
        let rules = new.rules.len();
        running.rules = new.rules;
        running.policies = new.policies;
        running.registries = new.registries;
        running.credentials = new.credentials;
        running.auth = new.auth;
        running.scanners = new.scanners;
        running.scan_policies = new.scan_policies;
        let mut msg = format!("{rules} rules in force");
        // Each set of TLS files is re-read. They were checked with the
        // configuration above, so one that fails now changed since: it
        // keeps what it served and is reported here, and the configuration
        // is in force all the same.
        let failed: Vec<String> = self
            .certificates
            .iter()
            .filter_map(|c| c.reload().err())
            .collect();
        match (self.certificates.is_empty(), failed.is_empty()) {
            (true, _) => {}
            (false, true) => msg.push_str("; TLS certificate re-read"),
            (false, false) => msg.push_str(&format!(
                "; TLS files not re-read, the ones in use stay: {}",
                failed.join("; ")
            )),
        }
        if !restart.is_empty() {
            tracing::warn!(
                settings = %restart.join(", "),
                "these settings changed in the file and take effect only on a restart"
            );
            msg.push_str(&format!(
                "; changed but kept until a restart: {}",
                restart.join(", ")
            ));
        }
        Ok(msg)
    }
}
