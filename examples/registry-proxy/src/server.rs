//! `registry-proxy serve`: the store, the cache, the router, the listener;
//! reloads on SIGHUP or `POST /reload` at the admin endpoint, which also
//! scans (`POST /scan`), syncs (`POST /sync`) and purges (`DELETE /purge`);
//! scheduled syncs; on SIGTERM, not ready for `drain_delay`, then a
//! graceful shutdown.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};

use cache_core::server::{
    ConnLimits, ConnThreads, PeerService, ScopedTokens, serve_connections, serve_connections_on,
};
use cache_upstream::scanner::{MetadataError, ScanImageError};

use crate::config::Config;
use crate::http::{App, AppState, healthz, readyz};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::tls::Certificates;
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

/// Reloads on every SIGHUP, in the background.
fn reload_on_sighup(reloader: Arc<Reloader>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; reload through the admin endpoint");
            return;
        };
        while hup.recv().await.is_some() {
            let r = reloader.clone();
            // Reading and indexing a large rule file is blocking work.
            let _ = tokio::task::spawn_blocking(move || r.reload()).await;
        }
    });
}

/// `POST /reload`: 200 with what changed, or 400 with why nothing did.
async fn admin_reload(State((reloader, _)): State<(Arc<Reloader>, AppState)>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(msg)) => (StatusCode::OK, format!("reloaded: {msg}\n")),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, format!("not reloaded: {e}\n")),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {e}\n"),
        ),
    }
}

/// `POST /scan?image=NAME:TAG` (or `NAME@DIGEST`): scans the image now
/// through the vulnerability gate; 200 with a JSON list of
/// [`ImageScan`](cache_upstream::scanner::ImageScan)s, 400 for a bad name
/// or an image no scan policy covers, 502 when the scan fails.
async fn admin_scan(
    State((reloader, st)): State<(Arc<Reloader>, AppState)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    let bad = |m: String| (StatusCode::BAD_REQUEST, format!("{m}\n")).into_response();
    let Some(image) = cache_core::protocol::query_param(query.as_deref(), "image") else {
        return bad("give the image: POST /scan?image=NAME:TAG".into());
    };
    let (name, reference) = match cache_core::LocalRef::parse(&image) {
        Ok(r) => (r.repository.clone(), r.reference()),
        Err(e) => return bad(format!("image {image:?}: {e}")),
    };
    let Some(gate) = reloader.gate() else {
        return bad("no [[scanner]] is configured".into());
    };
    let scanned = gate.scan_image(&st.cache, &name, &reference).await;
    match scanned {
        Ok(list) => axum::Json(list).into_response(),
        Err(ScanImageError::NotCovered(m)) => bad(m),
        Err(ScanImageError::Cache(e)) => {
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, format!("{e}\n")).into_response()
        }
        Err(e @ ScanImageError::Scan(_)) => {
            (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response()
        }
    }
}

/// `DELETE /purge?image=NAME[:TAG|@DIGEST]`: drops the cache's records of
/// a whole repository (a name alone), a tag or a manifest
/// (`PullThroughCache::purge`); 200 with a JSON
/// [`PurgeReport`](cache_core::PurgeReport), 400 for a bad name.
async fn admin_purge(
    State((_, st)): State<(Arc<Reloader>, AppState)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    let bad = |m: String| (StatusCode::BAD_REQUEST, format!("{m}\n")).into_response();
    let Some(image) = cache_core::protocol::query_param(query.as_deref(), "image") else {
        return bad("give the image: DELETE /purge?image=NAME[:TAG|@DIGEST]".into());
    };
    let local = match cache_core::LocalRef::parse(&image) {
        Ok(r) => r,
        Err(e) => return bad(format!("image {image:?}: {e}")),
    };
    let reference = match (&local.digest, &local.tag) {
        (Some(d), _) => Some(cache_core::Reference::Digest(d.clone())),
        (None, Some(t)) => Some(cache_core::Reference::Tag(t.clone())),
        (None, None) => None,
    };
    match st.cache.purge(&local.repository, reference.as_ref()).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, format!("{e}\n")).into_response()
        }
    }
}

/// `POST /sync?rule=NAME`: runs that rule's sync now; without `rule`,
/// every rule that has one, one after another. 200 with a JSON list of
/// [`SyncReport`](cache_core::SyncReport)s; 400 for a rule that does not
/// exist or has no sync policy.
async fn admin_sync(
    State((_, st)): State<(Arc<Reloader>, AppState)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    let rules: Vec<String> = match cache_core::protocol::query_param(query.as_deref(), "rule") {
        Some(r) => vec![r],
        None => st
            .cache
            .synced_rules()
            .into_iter()
            .map(|(n, _)| n)
            .collect(),
    };
    let mut reports = Vec::with_capacity(rules.len());
    for rule in rules {
        match st.cache.sync(&rule).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                let status = if matches!(e, cache_core::Error::InvalidRule { .. }) {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY)
                };
                return (status, format!("{e}\n")).into_response();
            }
        }
    }
    axum::Json(reports).into_response()
}

/// Serves until SIGTERM or SIGINT. `path` is the configuration file, if
/// one was read (a reload reads it again).
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
    // Events go to the metrics and, through their queues, the webhooks.
    let events = match crate::event_sink(&cfg, metrics.clone()) {
        Ok(w) => {
            metrics.set_webhooks(w.clone());
            w
        }
        Err(e) => {
            eprintln!("registry-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let services = crate::GateServices {
        credentials: Arc::new(ScopedTokens::new()),
        counters: metrics.scans.clone(),
        events: Some(events.clone()),
    };
    let (cache, gate) = match build_cache(&cfg, store, events, Some(services.clone())) {
        Ok((cache, clients, gate)) => {
            metrics.set_clients(clients);
            (cache, gate)
        }
        Err(e) => {
            eprintln!("registry-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(g) = &gate {
        // A scanner that answers and cannot scan images is a configuration
        // error; one that does not answer yet may later (on_scanner_error
        // says what pulls get meanwhile).
        for (name, checked) in g.check_scanners().await {
            match checked {
                Ok(what) => tracing::info!(scanner = %name, %what, "vulnerability scanner ready"),
                Err(MetadataError::Unfit(e)) => {
                    eprintln!("registry-proxy: {e}");
                    return ExitCode::from(2);
                }
                Err(MetadataError::Unreachable(e)) => {
                    tracing::warn!(scanner = %name, error = %e, "vulnerability scanner not answering")
                }
            }
        }
        g.revoke_through(&cache);
        g.spawn_rescans();
    }
    metrics.set_quota(cfg.quota);
    {
        // What the store holds, for /metrics and the console: before
        // serving (so the first scrape has it; a store too large to list
        // in 10 s is measured in the background) and every gc_interval.
        let (cache, metrics, every) = (cache.clone(), metrics.clone(), cfg.gc_interval);
        let first = tokio::time::timeout(Duration::from_secs(10), cache.measure_usage()).await;
        let measured = matches!(first, Ok(Ok(_)));
        if let Ok(Ok(u)) = first {
            metrics.set_store_usage(u);
        }
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + if measured { every } else { Duration::ZERO };
            let mut tick = tokio::time::interval_at(start, every);
            loop {
                tick.tick().await;
                match cache.measure_usage().await {
                    Ok(u) => metrics.set_store_usage(u),
                    Err(e) => tracing::warn!(error = %e, "measuring the store failed"),
                }
            }
        });
    }
    {
        // Every gc_interval: with a quota or content TTLs, and whenever a
        // purge (through any instance or tool) left blobs for gc.
        let always = cfg.quota.is_some() || cfg.policies.values().any(|p| p.content_ttl.is_some());
        let (cache, quota, every) = (cache.clone(), cfg.quota, cfg.gc_interval);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if !always && !cache.purge_pending().await.unwrap_or(false) {
                    continue;
                }
                match cache.gc(quota).await {
                    Ok(r) => tracing::info!(?r, "gc"),
                    Err(e) => tracing::warn!(error = %e, "gc failed"),
                }
            }
        });
    }
    // Rules with a [sync] run on schedule (a reload's are picked up).
    cache.start_sync();
    let state = AppState {
        cache: cache.clone(),
        metrics: metrics.clone(),
        auth: Arc::new(ArcSwapOption::from(
            cfg.auth
                .as_ref()
                .map(|a| Arc::new(crate::pull_auth(a, None))),
        )),
        draining: Arc::new(AtomicBool::new(false)),
        scoped: services.credentials.clone(),
    };
    // What serving needs of the configuration, before the reloader owns it
    // (holding a copy here would keep the first rule set alive after a reload).
    let (listen, admin_listen, request_timeout, drain_delay, connection_threads) = (
        cfg.listen,
        cfg.admin_listen,
        cfg.request_timeout,
        cfg.drain_delay,
        cfg.connection_threads,
    );
    let console_cfg = cfg.console;
    let rules = cfg.rules.len();
    let (peer, cache_for_peers) = (cfg.peer.clone(), cache.clone());
    let limits = ConnLimits {
        idle_timeout: cfg.idle_timeout,
        send_timeout: cfg.send_timeout,
        max_connections: cfg.max_connections,
        shutdown_grace: cfg.shutdown_grace,
    };
    // Files that change are re-read (and on SIGHUP): new handshakes get
    // the new certificate.
    let (certificates, tls) = match cfg.tls.clone().map(Certificates::serve).transpose() {
        Ok(served) => served.unzip(),
        Err(e) => {
            eprintln!("registry-proxy: tls: {e}");
            return ExitCode::from(2);
        }
    };
    // Mutual TLS between instances: the peer certificate served, and
    // peers' certificates required to chain to the peer CA.
    let (peer_certificates, peer_tls) = match peer
        .as_ref()
        .and_then(|p| p.tls.as_ref())
        .map(|t| Certificates::serve(crate::tls::TlsFiles::for_peers(t)))
        .transpose()
    {
        Ok(served) => served.unzip(),
        Err(e) => {
            eprintln!("registry-proxy: storage.peer_certificate: {e}");
            return ExitCode::from(2);
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let reloader = Arc::new(
        Reloader::new(path, cfg, cache, state.auth.clone(), metrics)
            .with_certificates(certificates.into_iter().chain(peer_certificates))
            .with_gate(gate, services),
    );
    crate::release_freed_memory();
    reload_on_sighup(reloader.clone());
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("registry-proxy: cannot listen on {listen}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = admin_listen {
        let admin = axum::Router::new()
            .route("/reload", post(admin_reload))
            .route("/scan", post(admin_scan))
            .route("/purge", axum::routing::delete(admin_purge))
            .route("/sync", post(admin_sync))
            .route("/healthz", get(|| async { healthz().await }))
            .route(
                "/readyz",
                get(|State((_, st)): State<(Arc<Reloader>, AppState)>| readyz(State(st))),
            )
            .with_state((reloader.clone(), state.clone()));
        // The console, open to whoever reaches this loopback listener.
        let admin = match console_cfg.admin_listener {
            true => admin.nest_service(
                "/ui",
                crate::http::console(&state, console_cfg.page_size).router(),
            ),
            false => admin,
        };
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(admin = %addr, "admin endpoint: POST /reload");
                tokio::spawn(async move {
                    let _ = axum::serve(l, admin).await;
                });
            }
            Err(e) => {
                eprintln!("registry-proxy: cannot listen on server.admin_listen {addr}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(peer) = peer {
        // The peer endpoint: what this instance fetches under a lease, for
        // the other instances on the store, behind the shared secret.
        let service = PeerService::new(
            cache_for_peers,
            &peer.secret,
            peer.max_connections,
            peer.timeout,
        );
        let limits = ConnLimits {
            max_connections: peer.max_connections,
            ..limits
        };
        match tokio::net::TcpListener::bind(peer.listen).await {
            Ok(l) => {
                tracing::info!(peer_listen = %peer.listen, advertise = %peer.advertise, mutual_tls = peer.tls.is_some(), "peer endpoint serving");
                let app = service.into_router();
                tokio::spawn(serve_connections(
                    l,
                    app,
                    limits,
                    peer_tls,
                    std::future::pending(),
                ));
            }
            Err(e) => {
                eprintln!(
                    "registry-proxy: cannot listen on storage.peer_listen {}: {e}",
                    peer.listen
                );
                return ExitCode::from(2);
            }
        }
    }
    let draining = state.draining.clone();
    let console = console_cfg
        .main_listener
        .then(|| crate::http::console_for_clients(&state, console_cfg.page_size));
    let app = App::new(state, console).timeout(request_timeout);
    tracing::info!(%listen, scheme, rules, connection_threads, "registry-proxy serving");
    let shutdown = async move {
        shutdown_signal().await;
        draining.store(true, Ordering::Release);
        if !drain_delay.is_zero() {
            tracing::info!(?drain_delay, "draining: not ready, still serving");
            tokio::time::sleep(drain_delay).await;
        }
    };
    if connection_threads == 0 {
        serve_connections(listener, app, limits, tls, shutdown).await;
        return ExitCode::SUCCESS;
    }
    let threads = match ConnThreads::new(connection_threads) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("registry-proxy: cannot start {connection_threads} connection threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    serve_connections_on(threads, listener, app, limits, tls, shutdown).await;
    ExitCode::SUCCESS
}
