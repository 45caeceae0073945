//! The engine inside an existing axum application: caching rules, a
//! filesystem store, one upstream, and the library's pull service
//! (`cache_core::server`) with pull-side auth and the vulnerability gate,
//! mounted next to the application's own routes and served with the
//! library's connection limits and zero-copy blob sends.
//!
//! `embed [UPSTREAM_ENDPOINT] [LISTEN] [IMAGE_TO_WARM]`; by default Docker
//! Hub, 127.0.0.1:5001, nothing warmed. With `EMBED_HTPASSWD=FILE`, pulls
//! need the credentials of a user in that htpasswd (bcrypt) file; with
//! `EMBED_SCANNER=URL`, an image is served only once the Harbor scanner
//! adapter there finds no High or Critical vulnerability in it (the
//! scanner pulls it from this server with a credential scoped to its
//! repository).

use std::collections::HashMap;
use std::future::pending;
use std::sync::Arc;

use axum::routing::get;
use cache_core::LocalRef;
use cache_core::prelude::*;
use cache_core::server::{
    AuthConfig, ConnLimits, PullAuth, PullService, ScopedTokens, serve_connections,
};
use cache_store::FsStore;
use cache_upstream::scanner::{ScanGate, ScanPolicy, ScannerClient};
use cache_upstream::{ClientOptions, RegistryClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next();
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:5001".into());
    let warm = args.next();
    // The upstream's name, as rules write it: the endpoint's host[:port], or Docker Hub.
    let host = match &endpoint {
        Some(e) => url::Url::parse(e)?.authority().to_owned(),
        None => "docker.io".to_owned(),
    };
    let opts = ClientOptions::default();
    let client = RegistryClient::new(Registry::parse(&host)?, endpoint.as_deref(), None, opts)?;
    let store: Arc<dyn BlobStore> = Arc::new(FsStore::open("embed-cache").await?);
    let scoped = Arc::new(ScopedTokens::new());
    let rule = RuleSpec::new("library", format!("{host}/library/*"), "library/*");
    let mut builder = PullThroughCache::builder()
        .rule(rule)
        .store(store.clone())
        .tokio()
        .upstream(&host, client);
    if let Ok(url) = std::env::var("EMBED_SCANNER") {
        let scanner = ScannerClient::new("scanner", &url, None, &format!("http://{listen}"))?;
        // Deny at High and above (the defaults), as a configuration file says it.
        let policy: ScanPolicy = toml::from_str(r#"scanner = "scanner""#)?;
        let policies = HashMap::from([("library".to_owned(), policy)]);
        let gate = ScanGate::new(vec![scanner], policies, store, scoped.clone())?;
        builder = builder.admission(gate);
    }
    let cache = builder.build()?;
    let mut pull = PullService::new(cache.clone()).scoped(scoped);
    if let Ok(file) = std::env::var("EMBED_HTPASSWD") {
        pull = pull.auth(PullAuth::new(AuthConfig::read_htpasswd(file.as_ref())?));
    }
    // The application's own routes; the pull API (`/v2/...`) answers the rest.
    let app = axum::Router::new()
        .route("/", get(|| async { "the host application" }))
        .fallback_service(pull);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    // Zero-copy blob sends, a connection cap, idle and send timeouts; until killed.
    let server = serve_connections(listener, app, ConnLimits::default(), None, pending());
    let served = tokio::spawn(server);
    println!("serving on {listen}");
    if let Some(image) = warm {
        // After the listener: a gate's scanner pulls what it scans from here.
        let local = LocalRef::parse(&image)?;
        let report = cache
            .pull_image(&local.repository, &local.reference(), &[], 4)
            .await?;
        println!("warmed {image}: {report:?}");
    }
    served.await?;
    Ok(())
}
