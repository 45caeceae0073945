//! Fresh and complete without waiting for a pull, through the running
//! server over real HTTP, against the Debian distribution registry: the
//! negative cache, purge, whole-image prefetch, scheduled sync, serving
//! what the upstream withdrew, and upstream bandwidth caps.

mod common;

use std::time::{Duration, Instant};

use cache_upstream::testing::{TestRegistry, write_image};
use common::{Proxy, config, http};

/// Pushes a one-layer image as `repo:tag` (seed `seed`).
fn push(up: &TestRegistry, repo: &str, tag: &str, seed: u64) -> cache_upstream::testing::TestImage {
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), tag, seed, &[20_000]);
    up.push(&img.layout, tag, repo).unwrap();
    // The layout goes with the directory; what was pushed stays upstream.
    img
}

/// `GET` of a manifest through the proxy: the status and `X-Cache`.
async fn get_manifest(proxy: &Proxy, repo: &str, reference: &str) -> (u16, String) {
    let r = http()
        .get(proxy.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", cache_core::media_types::ALL_MANIFESTS.join(", "))
        .send()
        .await
        .unwrap();
    let cache = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pulls_of_a_missing_tag_cost_one_upstream_request_and_say_negative() {
    let up = TestRegistry::start().unwrap();
    push(&up, "library/app", "v1", 1);
    let proxy = Proxy::start(&config(&up, "negative_ttl = \"10m\"\n"));
    for i in 0..200 {
        let (status, cache) = get_manifest(&proxy, "library/app", "nope").await;
        assert_eq!(status, 404, "request {i}");
        if i > 0 {
            assert_eq!(cache, "negative", "request {i}");
        }
    }
    let asked = up.requests("GET", "/manifests/nope") + up.requests("HEAD", "/manifests/nope");
    assert_eq!(asked, 1, "{}", up.log());
    assert_eq!(
        proxy.metric("registry_proxy_negative_hits_total").await,
        199
    );
    // A tag that exists is not affected.
    assert_eq!(get_manifest(&proxy, "library/app", "v1").await.0, 200);
    let _ = Instant::now() + Duration::ZERO;
}
