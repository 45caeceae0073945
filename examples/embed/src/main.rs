//! The engine inside an existing axum application, wired by hand: caching
//! rules, a filesystem store, one upstream, an image pulled ahead of time,
//! and the pull API mounted next to the application's own routes.
//!
//! `embed [UPSTREAM_ENDPOINT] [LISTEN] [IMAGE_TO_WARM]`; by default Docker
//! Hub, 127.0.0.1:5001, nothing warmed.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::routing::{any, get};
use cache_core::prelude::*;
use cache_core::protocol;
use cache_store::FsStore;
use cache_upstream::{ClientOptions, RegistryClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next();
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:5001".into());
    let warm = args.next();
    // The upstream's name, as rules write it: the endpoint's host, or Docker Hub.
    let host = match &endpoint {
        Some(e) => e
            .split("://")
            .nth(1)
            .unwrap_or(e)
            .trim_end_matches('/')
            .to_owned(),
        None => "docker.io".to_owned(),
    };
    let client = RegistryClient::new(
        Registry::parse(&host)?,
        endpoint.as_deref(),
        None,
        ClientOptions::default(),
    )?;
    let cache = PullThroughCache::builder()
        .rule(RuleSpec::new(
            "library",
            format!("{host}/library/*"),
            "library/*",
        ))
        .store(FsStore::open("embed-cache").await?)
        .tokio()
        .upstream(&host, client)
        .build()?;
    if let Some(image) = warm {
        let (name, tag) = image.split_once(':').unwrap_or((&image, "latest"));
        let report = cache
            .pull_image(&RepoName::parse(name)?, &Reference::parse(tag)?, &[], 4)
            .await?;
        println!("warmed {image}: {report:?}");
    }
    // The application's own routes, and the pull API under /v2/.
    let app = axum::Router::new()
        .route("/", get(|| async { "the host application" }))
        .route("/v2", any(pull_api))
        .route("/v2/{*rest}", any(pull_api))
        .with_state(cache);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("serving on {listen}");
    axum::serve(listener, app).await?;
    Ok(())
}

/// The whole pull API: `cache_core::protocol` answers, axum carries.
async fn pull_api(State(cache): State<PullThroughCache>, req: Request) -> axum::response::Response {
    let r = protocol::handle(&cache, req.method(), req.uri(), req.headers()).await;
    r.map(|body| match body {
        protocol::Body::Empty => Body::empty(),
        protocol::Body::Bytes(b) => Body::from(b),
        protocol::Body::Blob(b) => Body::from_stream(b.into_stream()),
    })
}
