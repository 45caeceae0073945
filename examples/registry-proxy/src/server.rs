//! `registry-proxy serve`: the store, the cache, the router, the listener.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tower_http::timeout::TimeoutLayer;

use crate::auth::PullAuth;
use crate::config::Config;
use crate::conn::{ConnLimits, serve_connections};
use crate::http::{AppState, router};
use crate::metrics::Metrics;
use crate::{build_cache, open_store};

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Serves until SIGTERM or SIGINT. `path` is the configuration file, if
/// one was read.
pub async fn serve(cfg: Config, path: Option<PathBuf>) -> ExitCode {
    match &path {
        Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
        None => tracing::info!("no configuration file; using the built-in default"),
    }
    let store = match open_store(&cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("registry-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics = Arc::new(Metrics::default());
    let cache = match build_cache(&cfg, store, metrics.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("registry-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg.quota.is_some() || cfg.policies.values().any(|p| p.content_ttl.is_some()) {
        let (cache, quota, every) = (cache.clone(), cfg.quota, cfg.gc_interval);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match cache.gc(quota).await {
                    Ok(r) => tracing::info!(?r, "gc"),
                    Err(e) => tracing::warn!(error = %e, "gc failed"),
                }
            }
        });
    }
    let state = AppState {
        cache,
        metrics,
        auth: cfg.auth.clone().map(|a| Arc::new(PullAuth::new(a))),
    };
    let app = router(state).layer(TimeoutLayer::with_status_code(
        axum::http::StatusCode::GATEWAY_TIMEOUT,
        cfg.request_timeout,
    ));
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("registry-proxy: cannot listen on {}: {e}", cfg.listen);
            return ExitCode::from(2);
        }
    };
    tracing::info!(listen = %cfg.listen, rules = cfg.rules.len(), "registry-proxy serving");
    let limits = ConnLimits {
        idle_timeout: cfg.idle_timeout,
        send_timeout: cfg.send_timeout,
        max_connections: cfg.max_connections,
        shutdown_grace: cfg.shutdown_grace,
    };
    serve_connections(listener, app, limits, shutdown_signal()).await;
    ExitCode::SUCCESS
}
