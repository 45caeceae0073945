//! Fresh and complete without waiting for a pull, through the running
//! server over real HTTP, against the Debian distribution registry: the
//! negative cache, purge, whole-image prefetch, scheduled sync, serving
//! what the upstream withdrew, and upstream bandwidth caps.

mod common;

use std::time::{Duration, Instant};

use cache_upstream::testing::{TestRegistry, write_image};
use common::{Proxy, config, http};

/// A configuration like [`config`]'s with a loopback admin endpoint on
/// `admin` and `storage` added to `[storage]`.
fn config_with_admin(up: &TestRegistry, admin: u16, storage: &str, rule: &str) -> String {
    format!(
        "[server]\nadmin_listen = \"127.0.0.1:{admin}\"\n\n{}",
        config(up, rule).replacen(
            "path = \"cache-data\"\n",
            &format!("path = \"cache-data\"\n{storage}"),
            1
        )
    )
}

/// Waits (at most `limit`) until `done` holds; whether it did.
async fn eventually(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done().await
}

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_purge_the_next_pull_is_a_miss_and_gc_takes_only_the_orphans() {
    let up = TestRegistry::start().unwrap();
    let shared = push(&up, "library/app", "v1", 2);
    push(&up, "library/other", "v1", 2); // the same image in another repository
    let own = push(&up, "library/app", "v2", 3);
    let admin = cache_upstream::testing::free_port();
    let proxy = Proxy::start(&config_with_admin(&up, admin, "gc_interval = \"1s\"\n", ""));
    for image in ["library/app:v1", "library/app:v2", "library/other:v1"] {
        let dest = tempfile::tempdir().unwrap();
        common::pull(&proxy, image, dest.path(), false).unwrap();
    }
    let blobs = |img: &cache_upstream::testing::TestImage| {
        let mut v: Vec<cache_core::Digest> = img.layers.iter().map(|(d, _)| d.clone()).collect();
        v.push(img.digest.clone());
        v
    };
    for d in blobs(&shared).iter().chain(blobs(&own).iter()) {
        assert!(proxy.stored_blob(d).exists(), "{d} cached");
    }
    // A bad name is the client's mistake.
    let bad = http()
        .delete(format!("http://127.0.0.1:{admin}/purge?image=Library/App"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // The whole repository, with the CLI, through the running server.
    let dir = proxy.dir.path().to_owned();
    let (ok, out) =
        tokio::task::spawn_blocking(move || common::run(&dir, &["purge", "library/app"]))
            .await
            .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("2 tag(s), 2 manifest(s)"), "{out}");
    let log = proxy.log();
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("purge")
            && l.contains("repository=library/app")),
        "audited:\n{log}"
    );
    // The server's gc (every second here) takes v2's content, which no
    // other repository holds, and nothing of library/other's.
    let gone = eventually(Duration::from_secs(30), async || {
        blobs(&own).iter().all(|d| !proxy.stored_blob(d).exists())
    })
    .await;
    assert!(gone, "gc removed v2's blobs:\n{}", proxy.log());
    for d in blobs(&shared) {
        assert!(proxy.stored_blob(&d).exists(), "{d} is library/other's too");
    }
    // The next pull of a purged tag is a miss, and asks the upstream.
    let gets = up.requests("GET", "/library/app/manifests/v2");
    assert_eq!(
        get_manifest(&proxy, "library/app", "v2").await,
        (200, "miss".to_owned())
    );
    assert_eq!(up.requests("GET", "/library/app/manifests/v2"), gets + 1);
    // library/other is untouched: a warm pull, no upstream blob GET.
    let blob_gets = up.blob_gets();
    let dest = tempfile::tempdir().unwrap();
    common::pull(&proxy, "library/other:v1", dest.path(), false).unwrap();
    assert_eq!(up.blob_gets(), blob_gets);
    // One tag, through the endpoint.
    let one = http()
        .delete(format!(
            "http://127.0.0.1:{admin}/purge?image=library/app:v2"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let report: serde_json::Value = serde_json::from_slice(&one.bytes().await.unwrap()).unwrap();
    assert_eq!(report["tags"], 1, "{report}");
}

/// `curl` (the binary) with `args`: its standard output; a missing curl
/// is an error that says how to install it.
fn curl(args: &[&str]) -> String {
    let bin = cache_upstream::testing::require("curl", "curl").unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(bin)
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_image_makes_both_platforms_of_an_index_pullable_after_only_its_manifest_was() {
    let mut up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = cache_upstream::testing::write_index(src.path(), "multi", 21, 30_000);
    up.push(&img.layout, "multi", "library/multi").unwrap();
    let proxy = Proxy::start(&config(&up, "prefetch = \"image\"\n"));
    // The index alone, by digest, with curl.
    let url = proxy.url(&format!("/v2/library/multi/manifests/{}", img.digest));
    let accept = format!("accept: {}", cache_core::media_types::OCI_INDEX);
    let head = curl(&["-D", "-", "-o", "/dev/null", "-H", &accept, &url]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The proxy fetches both platforms' manifests, configs and layers itself.
    let layers: Vec<String> = img.layers.iter().map(|(d, _)| d.to_string()).collect();
    let fetched = eventually(Duration::from_secs(30), async || {
        layers
            .iter()
            .all(|d| up.requests("GET", &format!("/blobs/{d}")) >= 1)
    })
    .await;
    assert!(fetched, "every layer prefetched:\n{}", up.log());
    let prefetched_platforms = img
        .platforms
        .iter()
        .all(|(d, _)| up.requests("GET", &format!("/manifests/{d}")) >= 1);
    assert!(prefetched_platforms, "{}", up.log());
    // Let the last blob's commit land, then take the upstream away.
    assert!(
        eventually(Duration::from_secs(30), async || {
            img.layers
                .iter()
                .all(|(d, _)| proxy.stored_blob(d).exists())
        })
        .await
    );
    up.stop();
    let dest = tempfile::tempdir().unwrap();
    let reference = format!("library/multi@{}", img.digest);
    let pulled = tokio::task::spawn_blocking({
        let dest = dest.path().to_owned();
        let host = proxy.host();
        move || {
            cache_upstream::testing::skopeo(&[
                "copy".into(),
                "--insecure-policy".into(),
                "--src-tls-verify=false".into(),
                "--all".into(),
                format!("docker://{host}/{reference}"),
                format!("dir:{}", dest.display()),
            ])
        }
    })
    .await
    .unwrap();
    pulled.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    for (d, _) in &img.layers {
        assert!(dest.path().join(d.hex()).exists(), "{d} pulled");
    }
}
