//! `registry-proxy`: serves the pull side of the OCI Distribution API for
//! the repositories its caching rules declare, fetching each image from its
//! upstream once, verified, and serving it from the cache afterwards.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use registry_proxy::auth::PullAuth;
use registry_proxy::config::{Config, DEFAULT_CONFIG};
use registry_proxy::conn::{ConnLimits, serve_connections};
use registry_proxy::http::{AppState, router};
use registry_proxy::metrics::Metrics;
use registry_proxy::{build_cache, open_store};
use tower_http::timeout::TimeoutLayer;

/// An OCI pull-through registry cache.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file. Without it, `registry-proxy.toml` in the
    /// working directory if present, else the built-in default (listen on
    /// 127.0.0.1:5000, store in ./cache-data, Docker Hub official images
    /// under library/*).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn load(args: &Args) -> Result<Config, String> {
    let path = args.config.clone().or_else(|| {
        let p = PathBuf::from("registry-proxy.toml");
        p.is_file().then_some(p)
    });
    match path {
        Some(p) => {
            tracing::info!(config = %p.display(), "loading configuration");
            Config::load(&p).map_err(|e| e.to_string())
        }
        None => {
            tracing::info!("no configuration file; using the built-in default");
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            Config::parse(DEFAULT_CONFIG, &cwd).map_err(|e| e.to_string())
        }
    }
}

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

fn main() -> ExitCode {
    // Blob I/O runs on tokio's blocking threads; glibc would give each its
    // own malloc arena, and peak RSS would grow with the thread count rather
    // than with anything the server holds. Two arenas keep it flat. This has
    // to happen before the runtime starts its threads.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator, and no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(serve()),
        Err(e) => {
            eprintln!("registry-proxy: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> ExitCode {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("registry-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("configuration is valid: {} rules", cfg.rules.len());
        return ExitCode::SUCCESS;
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
