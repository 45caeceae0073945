//! The server's own section, `[server]` (`[auth]` is the library's
//! `cache_core::server::AuthSpec`).

use std::net::SocketAddr;
use std::time::Duration;

use cache_core::config::{count_at_least, duration, positive};
use serde::Deserialize;

use super::{ConfigError, Result, err, load};

/// `[server]` without `max_manifest_size`, which is the engine's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    request_timeout: Option<String>,
    idle_timeout: Option<String>,
    send_timeout: Option<String>,
    max_connections: Option<usize>,
    connection_threads: Option<usize>,
    shutdown_grace: Option<String>,
    drain_delay: Option<String>,
    admin_listen: Option<String>,
    /// Moved to `[upstream]`; kept only to say so.
    max_concurrent_fetches: Option<usize>,
}

/// `[server]`, validated.
pub(super) struct Settings {
    pub(super) request_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) send_timeout: Duration,
    pub(super) max_connections: usize,
    pub(super) connection_threads: usize,
    pub(super) shutdown_grace: Duration,
    pub(super) drain_delay: Duration,
    pub(super) admin_listen: Option<SocketAddr>,
}

/// `[server]`: its own settings, and the engine's `max_manifest_size` as a
/// table of its own.
pub(super) fn settings(mut table: toml::Table) -> Result<(Settings, toml::Table)> {
    let engine = super::storage::take(&mut table, &["max_manifest_size"]);
    let r: RawServer = load::section("server", table)?;
    if r.max_concurrent_fetches.is_some() {
        return err("server.max_concurrent_fetches has moved: set upstream.max_concurrent_fetches (per registry)".into());
    }
    let admin_listen = r.admin_listen.as_deref().map(|a| {
        let why = match a.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => return Ok(addr),
            Ok(_) => "must be a loopback address (127.0.0.1:PORT)",
            Err(_) => "not an IP:PORT address",
        };
        err(format!("server.admin_listen = {a:?}: {why}"))
    });
    let admin_listen = admin_listen.transpose()?;
    let s = Duration::from_secs;
    let settings = (|| {
        Ok(Settings {
            request_timeout: positive("request_timeout", &r.request_timeout, s(300))?,
            idle_timeout: positive("idle_timeout", &r.idle_timeout, s(60))?,
            send_timeout: positive("send_timeout", &r.send_timeout, s(60))?,
            max_connections: count_at_least("max_connections", r.max_connections, 1024, 1)?,
            connection_threads: connection_threads(r.connection_threads)?,
            shutdown_grace: duration("shutdown_grace", &r.shutdown_grace, s(30))?,
            drain_delay: duration("drain_delay", &r.drain_delay, s(0))?,
            admin_listen,
        })
    })();
    Ok((settings.map_err(|e: ConfigError| e.at("server"))?, engine))
}

/// Threads serving client connections, at most this many.
const MAX_CONNECTION_THREADS: usize = 256;

/// `connection_threads`: by default one per core (at most
/// [`MAX_CONNECTION_THREADS`]), each serving its connections on a runtime
/// of its own (`cache_core::server::ConnThreads`), with the fetches their
/// requests start; `0` serves connections on the shared runtime's
/// workers. Threads serve small requests for less CPU, and a cold blob's
/// fetch runs beside its readers: BENCHMARKS.md, "Warm small requests".
fn connection_threads(set: Option<usize>) -> Result<usize> {
    match set {
        None => Ok(std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_CONNECTION_THREADS)),
        Some(n) if n <= MAX_CONNECTION_THREADS => Ok(n),
        Some(n) => err(format!(
            "connection_threads = {n}: at most {MAX_CONNECTION_THREADS} (0 serves on the shared runtime)"
        )),
    }
}
