//! Fresh and complete without waiting for a pull, through the running
//! server over real HTTP, against the Debian distribution registry: the
//! negative cache, purge, whole-image prefetch, scheduled sync, serving
//! what the upstream withdrew, and upstream bandwidth caps.

mod common;

use std::time::{Duration, Instant};

use cache_upstream::testing::{TestRegistry, write_image};
use common::{Proxy, config, http};

/// skopeo pulls `reference` through `proxy` (every platform with `all`),
/// and each of `layers` arrives.
fn pull_has_layers<T>(
    proxy: &Proxy,
    reference: &str,
    all: bool,
    layers: &[(cache_core::Digest, T)],
) {
    let dest = tempfile::tempdir().unwrap();
    tokio::task::block_in_place(|| common::pull(proxy, reference, dest.path(), all))
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    for (d, _) in layers {
        assert!(dest.path().join(d.hex()).exists(), "{d} pulled");
    }
}

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

thread_local! {
    /// One HTTP client per test (making one reads the system's
    /// certificates; a test's body runs on its own thread and runtime).
    static CLIENT: reqwest::Client = http();
}

fn client() -> reqwest::Client {
    CLIENT.with(Clone::clone)
}

/// `GET` of a manifest through the proxy: the status and `X-Cache`.
async fn get_manifest(proxy: &Proxy, repo: &str, reference: &str) -> (u16, String) {
    let r = client()
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
    // Nor a repository the upstream does not have (NAME_UNKNOWN): its
    // tag and its tag list are remembered too.
    for i in 0..50 {
        let (status, cache) = get_manifest(&proxy, "library/ghost", "v1").await;
        assert_eq!(status, 404, "request {i}");
        if i > 0 {
            assert_eq!(cache, "negative", "request {i}");
        }
        let list = client()
            .get(proxy.url("/v2/library/ghost/tags/list"))
            .send()
            .await
            .unwrap();
        assert_eq!(list.status(), 404, "request {i}");
    }
    assert_eq!(up.requests("GET", "/library/ghost/manifests/v1"), 1);
    assert_eq!(up.requests("GET", "/library/ghost/tags/list"), 1);
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
    assert!(
        proxy
            .logs(|l| l.contains("audit")
                && l.contains("purge")
                && l.contains("repository=library/app"))
            .await,
        "audited:\n{}",
        proxy.log()
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
    // The grants went with the records: a layer still stored (for
    // library/other) is served to library/app only once the upstream has
    // confirmed library/app holds it again.
    // library/other keeps its grant: served without asking.
    let (layer, _) = &shared.layers[0];
    let asked = |up: &TestRegistry, repo: &str| {
        let part = format!("/{repo}/blobs/{layer}");
        up.requests("GET", &part) + up.requests("HEAD", &part)
    };
    let before = asked(&up, "library/other");
    let (got, _) = timed_blob(&proxy, "library/other", layer).await;
    assert_eq!((&got, asked(&up, "library/other")), (layer, before));
    let before = asked(&up, "library/app");
    let (got, _) = timed_blob(&proxy, "library/app", layer).await;
    assert_eq!(&got, layer);
    assert!(
        asked(&up, "library/app") > before,
        "entitlement asked again:\n{}",
        up.log()
    );
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
    let reference = format!("library/multi@{}", img.digest);
    pull_has_layers(&proxy, &reference, true, &img.layers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_platform_caches_an_image_s_layers_after_only_its_manifest_was_served() {
    let mut up = TestRegistry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "v1", 120, &[30_000, 40_000, 50_000]);
    up.push(&img.layout, "v1", "library/app").unwrap();
    let proxy = Proxy::start(&config(&up, "prefetch = \"platform\"\n"));
    // The manifest alone, by tag, with curl: no client asks for a layer.
    let accept = format!(
        "accept: {}",
        cache_core::media_types::ALL_MANIFESTS.join(", ")
    );
    let url = proxy.url("/v2/library/app/manifests/v1");
    let head = curl(&["-D", "-", "-o", "/dev/null", "-H", &accept, &url]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let cached = eventually(Duration::from_secs(30), async || {
        img.layers
            .iter()
            .all(|(d, _)| proxy.stored_blob(d).exists())
    })
    .await;
    assert!(
        cached,
        "every layer prefetched:\n{}\n{}",
        up.log(),
        proxy.log()
    );
    for (d, _) in &img.layers {
        assert_eq!(up.requests("GET", &format!("/blobs/{d}")), 1, "{d} once");
    }
    up.stop();
    pull_has_layers(&proxy, "library/app:v1", false, &img.layers);
}

/// The `[rule.sync]` table of a rule syncing `library/app` every `interval`.
fn sync_table(interval: &str, filter: &str) -> String {
    format!("[rule.sync]\ninterval = \"{interval}\"\n{filter}\nrepositories = [\"library/app\"]\n")
}

/// Blob GETs the upstream saw of each of `img`'s layers and its manifest.
fn fetched(
    up: &TestRegistry,
    img: &cache_upstream::testing::TestImage,
    tag: &str,
) -> (usize, Vec<usize>) {
    let manifest = up.requests("GET", &format!("/library/app/manifests/{tag}"));
    let layers = img
        .layers
        .iter()
        .map(|(d, _)| up.requests("GET", &format!("/blobs/{d}")))
        .collect();
    (manifest, layers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_every_2s_caches_exactly_the_range_then_a_new_release_which_pulls_with_the_upstream_down()
 {
    let mut up = TestRegistry::start().unwrap();
    let tags = ["v1.0.0", "v1.1.0", "v2.0.0", "latest"];
    let images: Vec<_> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| push(&up, "library/app", t, 40 + i as u64))
        .collect();
    let proxy = Proxy::start(&config(&up, &sync_table("2s", "semver = \">=1, <2\"")));
    let synced = eventually(Duration::from_secs(30), async || {
        images[..2].iter().zip(tags).all(|(img, t)| {
            let (m, layers) = fetched(&up, img, t);
            m >= 1 && layers.iter().all(|n| *n >= 1)
        })
    })
    .await;
    assert!(
        synced,
        "v1.0.0 and v1.1.0 fetched:\n{}\n{}",
        up.log(),
        proxy.log()
    );
    // Let a second run go by: still nothing of v2.0.0 or latest.
    let runs = "registry_proxy_sync_runs_total{rule=\"lib\",outcome=\"ok\"}";
    let first = proxy.metric(runs).await;
    assert!(
        eventually(Duration::from_secs(20), async || proxy.metric(runs).await
            > first)
        .await
    );
    for (img, t) in images[2..].iter().zip(&tags[2..]) {
        assert_eq!(fetched(&up, img, t), (0, vec![0]), "{t} is out of range");
    }
    assert_eq!(
        up.requests("GET", "/manifests/"),
        2,
        "one GET per synced tag:\n{}",
        up.log()
    );
    assert_eq!(
        proxy
            .metric("registry_proxy_sync_tags_new_total{rule=\"lib\"}")
            .await,
        2
    );
    // Each run selected the two tags in range; what was fetched is their
    // layers and configs, once.
    // (Both read twice, in turn: a run may end in between, and then they
    // are read again.)
    let seen = "registry_proxy_sync_tags_seen_total{rule=\"lib\"}";
    let mut consistent = None;
    for _ in 0..10 {
        let (a, s) = (proxy.metric(runs).await, proxy.metric(seen).await);
        if (proxy.metric(runs).await, proxy.metric(seen).await) == (a, s) {
            consistent = Some((s, a));
            break;
        }
    }
    let (seen, runs_ok) = consistent.expect("the run counter held still once");
    assert_eq!(seen, 2 * runs_ok);
    let layer_bytes: u64 = images[..2]
        .iter()
        .flat_map(|i| i.layers.iter().map(|(_, n)| n))
        .sum();
    let bytes = proxy
        .metric("registry_proxy_sync_bytes_total{rule=\"lib\"}")
        .await;
    assert!(
        bytes >= layer_bytes && bytes < layer_bytes + 64 * 1024,
        "{bytes} bytes for {layer_bytes} bytes of layers"
    );
    // A release pushed now is cached by the next run.
    let v12 = push(&up, "library/app", "v1.2.0", 50);
    let cached = eventually(Duration::from_secs(20), async || {
        v12.layers
            .iter()
            .all(|(d, _)| proxy.stored_blob(d).exists())
            && proxy.stored_blob(&v12.digest).exists()
    })
    .await;
    assert!(cached, "v1.2.0 cached by a sync:\n{}", proxy.log());
    assert!(
        proxy.logs(|l| l.contains("sync cached a tag")).await,
        "audited"
    );
    assert_eq!(
        http().get(proxy.url("/v2/")).send().await.unwrap().status(),
        200
    );
    // No client pulled anything so far; now one does, with the upstream gone.
    up.stop();
    pull_has_layers(&proxy, "library/app:v1.2.0", false, &v12.layers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_misses_then_a_push_and_a_sync_and_the_tag_is_served() {
    let up = TestRegistry::start().unwrap();
    push(&up, "library/app", "v1", 60);
    let admin = cache_upstream::testing::free_port();
    let body = config_with_admin(
        &up,
        admin,
        "",
        &format!(
            "negative_ttl = \"10m\"\n{}",
            sync_table("1h", "tags = \"fresh\"")
        ),
    );
    let proxy = Proxy::start(&body);
    // A run now puts the next scheduled one an hour away (the run's record
    // says when it ran), so none interferes below.
    let sync = |proxy: &Proxy, rule: &'static str| {
        let dir = proxy.dir.path().to_owned();
        tokio::task::spawn_blocking(move || common::run(&dir, &["sync", rule]))
    };
    let (ok, out) = sync(&proxy, "lib").await.unwrap();
    assert!(ok, "{out}");
    for _ in 0..200 {
        assert_eq!(get_manifest(&proxy, "library/app", "fresh").await.0, 404);
    }
    let asked = |up: &TestRegistry| {
        up.requests("GET", "/manifests/fresh") + up.requests("HEAD", "/manifests/fresh")
    };
    assert_eq!(asked(&up), 1);
    push(&up, "library/app", "fresh", 61);
    // Still remembered as missing ...
    assert_eq!(
        get_manifest(&proxy, "library/app", "fresh").await,
        (404, "negative".to_owned())
    );
    // ... until a sync finds it.
    let (ok, out) = sync(&proxy, "lib").await.unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("1 selected, 1 new"), "{out}");
    assert_eq!(get_manifest(&proxy, "library/app", "fresh").await.0, 200);
    // No such rule is an error naming it.
    let (ok, out) = sync(&proxy, "nope").await.unwrap();
    assert!(!ok && out.contains("\"nope\""), "{out}");
}

/// An ECDSA P-256 key pair made by openssl: (private, public) PEM files.
fn keypair(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let openssl =
        cache_upstream::testing::require("openssl", "openssl").unwrap_or_else(|e| panic!("{e}"));
    let (private, public) = (dir.join("k.key"), dir.join("k.pub"));
    for args in [
        vec![
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            private.to_str().unwrap(),
        ],
        vec![
            "ec",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        let out = std::process::Command::new(&openssl)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (private, public)
}

/// Signs `signed` in `repo` as cosign does (a simple-signing payload under
/// the `sha256-<hex>.sig` tag), with openssl and `private`.
fn push_cosign_signature(
    up: &TestRegistry,
    repo: &str,
    signed: &cache_core::Digest,
    private: &std::path::Path,
) {
    let openssl = cache_upstream::testing::require("openssl", "openssl").unwrap();
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{repo}"}},"image":{{"docker-manifest-digest":"{signed}"}},"type":"cosign container image signature"}},"optional":null}}"#
    );
    let dir = tempfile::tempdir().unwrap();
    let (p, sig) = (dir.path().join("payload"), dir.path().join("sig.der"));
    std::fs::write(&p, &payload).unwrap();
    let run = |args: Vec<&std::ffi::OsStr>| {
        let out = std::process::Command::new(&openssl)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(vec![
        "dgst".as_ref(),
        "-sha256".as_ref(),
        "-sign".as_ref(),
        private.as_os_str(),
        "-out".as_ref(),
        sig.as_os_str(),
        p.as_os_str(),
    ]);
    let b64 = String::from_utf8(run(vec![
        "base64".as_ref(),
        "-A".as_ref(),
        "-in".as_ref(),
        sig.as_os_str(),
    ]))
    .unwrap();
    let tag = format!("sha256-{}.sig", signed.hex());
    let ann = format!(
        r#"{{"{}":"{}"}}"#,
        cache_core::cosign::SIGNATURE_ANNOTATION,
        b64.trim()
    );
    let layout = tempfile::tempdir().unwrap();
    cache_upstream::testing::write_artifact(
        layout.path(),
        &tag,
        &[(cache_core::cosign::SIMPLE_SIGNING, payload.as_bytes(), &ann)],
        None,
        None,
    );
    up.push(layout.path(), &tag, repo).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_under_a_signature_policy_caches_the_signed_tag_and_not_the_unsigned_one() {
    let up = TestRegistry::start().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path());
    let signed = push(&up, "library/app", "v1.0.0", 70);
    push_cosign_signature(&up, "library/app", &signed.digest, &private);
    let unsigned = push(&up, "library/app", "v1.1.0", 71);
    let admin = cache_upstream::testing::free_port();
    let rule = format!(
        "{}[rule.signatures]\ncosign_keys = [\"{}\"]\nmode = \"enforce\"\n",
        sync_table("1h", "semver = \">=1\""),
        public.display()
    );
    let proxy = Proxy::start(&config_with_admin(&up, admin, "", &rule));
    let dir = proxy.dir.path().to_owned();
    let (ok, out) = tokio::task::spawn_blocking(move || common::run(&dir, &["sync", "lib"]))
        .await
        .unwrap();
    assert!(!ok, "a refusal is a run's error: {out}");
    assert!(
        out.contains("2 selected, 1 new") && out.contains("1 error(s)"),
        "{out}"
    );
    assert!(
        out.contains("library/app:v1.1.0") && out.contains("no signature"),
        "{out}"
    );
    assert!(proxy.stored_blob(&signed.digest).exists());
    assert!(
        signed
            .layers
            .iter()
            .all(|(d, _)| proxy.stored_blob(d).exists())
    );
    assert!(
        !proxy.stored_blob(&unsigned.digest).exists(),
        "refused, never stored"
    );
    assert!(
        unsigned
            .layers
            .iter()
            .all(|(d, _)| up.requests("GET", &format!("/blobs/{d}")) == 0),
        "no layer of the unsigned image fetched"
    );
    assert_eq!(
        proxy
            .metric("registry_proxy_sync_errors_total{rule=\"lib\"}")
            .await,
        1
    );
    assert!(
        proxy
            .logs(|l| l.contains("audit") && l.contains("refused"))
            .await,
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_one_azurite_container_make_one_sync_run_per_interval_in_all() {
    let az = cache_store::testing::Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    az.create_container("sync").unwrap();
    let up = TestRegistry::start().unwrap();
    push(&up, "library/app", "v1.0.0", 80);
    let options: String = az
        .options()
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let body = |name: &str| {
        format!(
            "[storage]\nbackend = \"object\"\nurl = \"az://sync/cache\"\nspool = \"spool\"\ninstance_name = \"{name}\"\nlease_ttl = \"3s\"\n[storage.options]\n{options}\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n\n[[rule]]\nname = \"lib\"\nsource = \"{h}/library/*\"\ntarget = \"library/*\"\n{sync}",
            h = up.host(),
            u = up.url(),
            sync = sync_table("2s", "semver = \">=1\"")
        )
    };
    let start = Instant::now();
    let proxies: Vec<Proxy> = ["p0", "p1", "p2"]
        .iter()
        .map(|n| Proxy::start(&body(n)))
        .collect();
    tokio::time::sleep(Duration::from_secs(16)).await;
    let mut runs = Vec::new();
    for p in &proxies {
        let text = p.metrics().await;
        let n: u64 = ["ok", "errors"]
            .iter()
            .map(|o| {
                let series =
                    format!("registry_proxy_sync_runs_total{{rule=\"lib\",outcome=\"{o}\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&series)?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum();
        runs.push(n);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total: u64 = runs.iter().sum();
    eprintln!("sync runs per instance {runs:?} in {elapsed:.1} s, every 2 s");
    // Runs start at least an interval apart, whichever instance runs them.
    let most = (elapsed / 2.0).floor() as u64 + 1;
    assert!(
        total <= most,
        "{total} runs ({runs:?}) in {elapsed:.1}s: at most {most}"
    );
    assert!(total >= 4, "they ran: {runs:?}");
    // Each run listed the repository's tags once: the upstream agrees.
    let listed = up.requests("GET", "/library/app/tags/list") as u64;
    assert!(
        listed >= total && listed <= most + 1,
        "{listed} listings, {total} runs"
    );
    // One instance fetched the image; the others found it in the store.
    assert_eq!(up.requests("GET", "/manifests/v1.0.0"), 1, "{}", up.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_rule_without_a_repository_list_syncs_what_the_upstream_catalog_lists() {
    let up = TestRegistry::start().unwrap();
    let a = push(&up, "library/a", "v1", 90);
    let b = push(&up, "library/b", "v1", 91);
    push(&up, "other/c", "v1", 92);
    let admin = cache_upstream::testing::free_port();
    let rule = "[rule.sync]\ninterval = \"1h\"\n";
    let proxy = Proxy::start(&config_with_admin(&up, admin, "", rule));
    let dir = proxy.dir.path().to_owned();
    let (ok, out) = tokio::task::spawn_blocking(move || common::run(&dir, &["sync", "lib"]))
        .await
        .unwrap();
    assert!(ok, "{out}");
    assert!(
        out.contains("2 repositories, 2 tag(s) listed, 2 selected"),
        "{out}"
    );
    for img in [&a, &b] {
        assert!(proxy.stored_blob(&img.digest).exists());
    }
    assert!(up.requests("GET", "/v2/_catalog") >= 1, "{}", up.log());
    assert_eq!(up.requests("GET", "/other/c/"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_deleted_upstream_is_served_stale_and_audited_under_serve_withdrawn_and_404_without()
{
    let up = TestRegistry::start().unwrap();
    let kept = push(&up, "library/app", "v1", 95);
    push(&up, "plain/app", "v1", 96);
    let rules = format!(
        "{}serve_withdrawn = \"7d\"\n\n[[rule]]\nname = \"plain\"\nsource = \"{h}/plain/*\"\ntarget = \"plain/*\"\n",
        "",
        h = up.host()
    );
    let proxy = Proxy::start(&config(&up, &rules));
    for repo in ["library/app", "plain/app"] {
        let dest = tempfile::tempdir().unwrap();
        common::pull(&proxy, &format!("{repo}:v1"), dest.path(), false).unwrap();
    }
    // The distribution registry's delete API: both tags gone upstream.
    up.delete("library/app", "v1").unwrap();
    up.delete("plain/app", "v1").unwrap();
    let gone = client()
        .get(format!("{}/v2/library/app/manifests/v1", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404, "deleted upstream");
    // Past revalidate_window (1 s), within which a pulled tag is not asked about.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Revalidation finds the tag gone: served stale under the option ...
    assert_eq!(
        get_manifest(&proxy, "library/app", "v1").await,
        (200, "stale".to_owned())
    );
    // ... and pullable whole, from the cache.
    let dest = tempfile::tempdir().unwrap();
    common::pull(&proxy, "library/app:v1", dest.path(), false).unwrap();
    assert!(
        kept.layers
            .iter()
            .all(|(d, _)| dest.path().join(d.hex()).exists())
    );
    assert!(
        proxy
            .logs(|l| l.contains("audit")
                && l.contains("served a tag the upstream withdrew")
                && l.contains("repository=library/app"))
            .await,
        "audited:\n{}",
        proxy.log()
    );
    assert!(
        proxy
            .metric("registry_proxy_withdrawn_served_total{rule=\"lib\"}")
            .await
            >= 2
    );
    // ... and 404 without it.
    assert_eq!(get_manifest(&proxy, "plain/app", "v1").await.0, 404);
}

/// GETs blob `d` of `repo` through the proxy to its end: its SHA-256
/// digest and how long it took.
async fn timed_blob(
    proxy: &Proxy,
    repo: &str,
    d: &cache_core::Digest,
) -> (cache_core::Digest, Duration) {
    use futures::StreamExt;
    let start = Instant::now();
    let r = client()
        .get(proxy.url(&format!("/v2/{repo}/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut h = cache_core::Algorithm::Sha256.hasher();
    let mut body = r.bytes_stream();
    while let Some(c) = body.next().await {
        h.update(&c.unwrap());
    }
    (h.finish(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bandwidth_cap_holds_one_transfer_and_two_concurrent_ones_share_it() {
    let up = TestRegistry::start().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big = write_image(one.path(), "v1", 100, &[64 << 20]);
    up.push(&big.layout, "v1", "library/big").unwrap();
    let pair = write_image(two.path(), "v1", 101, &[32 << 20, 32 << 20]);
    up.push(&pair.layout, "v1", "library/pair").unwrap();
    let body = config(&up, "").replacen(
        &format!("endpoint = \"{}\"\n", up.url()),
        &format!("endpoint = \"{}\"\nmax_bandwidth = \"16MiB/s\"\n", up.url()),
        1,
    );
    let proxy = Proxy::start(&body);
    // 64 MiB at 16 MiB/s: four seconds, less a tenth of a second's burst.
    let (d, _) = &big.layers[0];
    let (got, took) = timed_blob(&proxy, "library/big", d).await;
    assert_eq!(&got, d);
    assert!(took >= Duration::from_millis(3500), "64 MiB in {took:?}");
    // Two 32 MiB blobs at once share the cap: together as long as one of
    // 64 MiB (each alone would take two seconds).
    let start = Instant::now();
    let (a, b) = tokio::join!(
        timed_blob(&proxy, "library/pair", &pair.layers[0].0),
        timed_blob(&proxy, "library/pair", &pair.layers[1].0)
    );
    let together = start.elapsed();
    assert_eq!((&a.0, &b.0), (&pair.layers[0].0, &pair.layers[1].0));
    assert!(
        together >= Duration::from_millis(3500),
        "2 x 32 MiB in {together:?}"
    );
    let registry = format!("registry=\"{}\"", up.host());
    let limit = format!("registry_proxy_upstream_bandwidth_limit_bytes{{{registry}}}");
    assert_eq!(proxy.metric(&limit).await, 16 << 20);
    let text = proxy.metrics().await;
    let waited: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "registry_proxy_upstream_bandwidth_wait_seconds_total{{{registry}}} "
            ))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(waited >= 3.0, "{waited}");
    // Served from the cache, a blob is not held to the upstream's cap.
    let (_, warm) = timed_blob(&proxy, "library/big", d).await;
    assert!(warm < took, "{warm:?}");
    eprintln!(
        "64 MiB at 16 MiB/s: {took:?}; 2 x 32 MiB at once: {together:?}; \
         waited for the cap {waited:.2} s in all; the 64 MiB again, warm: {warm:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_without_a_server_works_on_the_store_and_gc_then_takes_only_the_orphans() {
    let up = TestRegistry::start().unwrap();
    let shared = push(&up, "library/app", "v1", 110);
    push(&up, "library/other", "v1", 110); // the same image in another repository
    let own = push(&up, "library/app", "v2", 111);
    let store = tempfile::tempdir().unwrap();
    // No admin endpoint: the tools work on the store, once no server does.
    let body = config(&up, "").replacen(
        "path = \"cache-data\"",
        &format!("path = \"{}\"", store.path().display()),
        1,
    );
    let proxy = Proxy::start(&body);
    for image in ["library/app:v1", "library/app:v2", "library/other:v1"] {
        let dest = tempfile::tempdir().unwrap();
        common::pull(&proxy, image, dest.path(), false).unwrap();
    }
    let blob = |d: &cache_core::Digest| {
        let hex = d.hex();
        store
            .path()
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    };
    let blobs = |img: &cache_upstream::testing::TestImage| {
        let mut v: Vec<cache_core::Digest> = img.layers.iter().map(|(d, _)| d.clone()).collect();
        v.push(img.digest.clone());
        v
    };
    assert!(blobs(&own).iter().all(|d| blob(d).exists()));
    let port = proxy.port;
    drop(proxy);

    let tools = tempfile::tempdir().unwrap();
    std::fs::write(
        tools.path().join("proxy.toml"),
        format!("listen = \"127.0.0.1:{port}\"\n{body}"),
    )
    .unwrap();
    // A bad reference is refused, naming it, and drops nothing.
    let (ok, out) = common::run(tools.path(), &["purge", "library/app:no tag"]);
    assert!(!ok && out.contains("library/app:no tag"), "{out}");
    let (ok, out) = common::run(tools.path(), &["purge", "library/app:v2"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("purge library/app:v2: 1 tag(s), 1 manifest(s)"),
        "{out}"
    );
    // Purged records only: the blobs wait for gc.
    assert!(blobs(&own).iter().all(|d| blob(d).exists()));
    let (ok, out) = common::run(tools.path(), &["gc"]);
    assert!(ok, "{out}");
    assert!(!out.contains(" 0 purged"), "{out}");
    for d in blobs(&own) {
        assert!(!blob(&d).exists(), "{d} orphaned, so collected: {out}");
    }
    for d in blobs(&shared) {
        assert!(blob(&d).exists(), "{d} is still v1's and library/other's");
    }

    // Served again on the same store: v2 is a miss, v1 and library/other
    // are still whole in the cache.
    let proxy = Proxy::launch(tools, port);
    let gets = up.requests("GET", "/library/app/manifests/v2");
    assert_eq!(
        get_manifest(&proxy, "library/app", "v2").await,
        (200, "miss".to_owned())
    );
    assert_eq!(up.requests("GET", "/library/app/manifests/v2"), gets + 1);
    let blob_gets = up.blob_gets();
    for image in ["library/app:v1", "library/other:v1"] {
        let dest = tempfile::tempdir().unwrap();
        common::pull(&proxy, image, dest.path(), false).unwrap();
    }
    assert_eq!(up.blob_gets(), blob_gets, "{}", up.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_spends_the_pull_budget_down_to_the_reserve_and_stops_there() {
    // Docker Hub's pull budget: every manifest GET spends one; 4 left,
    // 2 kept in reserve for clients' pulls.
    let up = cache_upstream::testing::HostileRegistry::start("127.0.0.1");
    let layer = |i: u64| bytes::Bytes::from(cache_core::testing::content(i, 1000).to_vec());
    for (i, tag) in ["1.0.0", "2.0.0", "3.0.0", "4.0.0"].iter().enumerate() {
        up.push_image("library/app", tag, &[layer(130 + i as u64)]);
    }
    up.set_rate_limit(100, 4, 3600);
    let admin = cache_upstream::testing::free_port();
    let proxy = Proxy::start(&format!(
        "[server]\nadmin_listen = \"127.0.0.1:{admin}\"\n[storage]\npath = \"cache-data\"\n\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\nreserve = 2\n\n[[rule]]\nname = \"lib\"\nsource = \"{h}/library/*\"\ntarget = \"library/*\"\n{}",
        sync_table("1h", ""),
        h = up.host(),
        u = up.url(),
    ));
    let dir = proxy.dir.path().to_owned();
    let (ok, out) = tokio::task::spawn_blocking(move || common::run(&dir, &["sync", "lib"]))
        .await
        .unwrap();
    // Newest first: 4.0.0 and 3.0.0 spend the budget down to the reserve;
    // 2.0.0 would spend it, so the run stops there and 1.0.0 is not tried.
    assert!(!ok, "a run that stopped is a run with an error: {out}");
    assert!(
        out.contains("1 repository, 4 tag(s) listed, 4 selected, 2 new")
            && out.contains("1 error(s)")
            && out.contains("library/app:2.0.0: too many requests"),
        "{out}"
    );
    assert_eq!(up.requests("GET", "/manifests/"), 2, "two pulls spent");
    for tag in ["2.0.0", "1.0.0"] {
        let part = format!("/manifests/{tag}");
        assert_eq!(up.requests("GET", &part) + up.requests("HEAD", &part), 0);
    }
    assert!(
        proxy.logs(|l| l.contains("the run stops")).await,
        "{}",
        proxy.log()
    );
    assert_eq!(
        proxy
            .metric("registry_proxy_sync_runs_total{rule=\"lib\",outcome=\"errors\"}")
            .await,
        1
    );
    // What the run cached is served: the tag revalidates with a HEAD, free.
    for tag in ["4.0.0", "3.0.0"] {
        assert_eq!(get_manifest(&proxy, "library/app", tag).await.0, 200);
    }
    assert_eq!(up.requests("GET", "/manifests/"), 2, "no pull spent since");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_tag_the_rule_s_policy_now_refuses_is_not_served_stale() {
    let up = TestRegistry::start().unwrap();
    let unsigned = push(&up, "library/app", "v1", 140);
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = keypair(keys.path());
    let admin = cache_upstream::testing::free_port();
    let body = config_with_admin(&up, admin, "", "serve_withdrawn = \"7d\"\n");
    let proxy = Proxy::start(&body);
    let dest = tempfile::tempdir().unwrap();
    common::pull(&proxy, "library/app:v1", dest.path(), false).unwrap();
    up.delete("library/app", "v1").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get_manifest(&proxy, "library/app", "v1").await,
        (200, "stale".to_owned())
    );
    // The rule now requires a signature the cached image does not have.
    std::fs::write(
        proxy.dir.path().join("proxy.toml"),
        format!(
            "listen = \"127.0.0.1:{}\"\n{body}[rule.signatures]\ncosign_keys = [\"{}\"]\nmode = \"enforce\"\n",
            proxy.port,
            public.display()
        ),
    )
    .unwrap();
    let (ok, out) = common::run(proxy.dir.path(), &["reload"]);
    assert!(ok, "{out}");
    let served = "registry_proxy_withdrawn_served_total{rule=\"lib\"}";
    let before = proxy.metric(served).await;
    let (status, _) = get_manifest(&proxy, "library/app", "v1").await;
    assert_eq!(status, 403, "refused, withdrawn or not:\n{}", proxy.log());
    assert_eq!(proxy.metric(served).await, before, "nothing served");
    let digest = unsigned.digest.to_string();
    assert!(
        proxy
            .logs(|l| l.contains("audit") && l.contains("refused") && l.contains(&digest))
            .await,
        "the refusal is audited:\n{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_re_permissioned_upstream_is_served_stale_under_serve_withdrawn_and_fails_without() {
    // An upstream that starts refusing the proxy (401) for what it served.
    let up = cache_upstream::testing::HostileRegistry::start("127.0.0.1");
    let layer = |i: u64| bytes::Bytes::from(cache_core::testing::content(i, 1000).to_vec());
    up.push_image("library/app", "v1", &[layer(150)]);
    up.push_image("plain/app", "v1", &[layer(151)]);
    let proxy = Proxy::start(&format!(
        "[storage]\npath = \"cache-data\"\n[upstream]\nmax_retries = 0\n\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n\n[[rule]]\nname = \"lib\"\nsource = \"{h}/library/*\"\ntarget = \"library/*\"\nstale_if_error = \"0s\"\nserve_withdrawn = \"7d\"\n\n[[rule]]\nname = \"plain\"\nsource = \"{h}/plain/*\"\ntarget = \"plain/*\"\nstale_if_error = \"0s\"\n",
        h = up.host(),
        u = up.url(),
    ));
    for repo in ["library/app", "plain/app"] {
        assert_eq!(get_manifest(&proxy, repo, "v1").await.0, 200);
    }
    up.require_basic(&[("someone", "else")]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get_manifest(&proxy, "library/app", "v1").await,
        (200, "stale".to_owned())
    );
    let audited = proxy
        .logs(|l| {
            l.contains("audit")
                && l.contains("served a tag the upstream withdrew")
                && l.contains("repository=library/app")
                && l.contains("requires credentials")
        })
        .await;
    assert!(
        audited,
        "audited, with what the upstream said:\n{}",
        proxy.log()
    );
    assert_eq!(
        proxy
            .metric("registry_proxy_withdrawn_served_total{rule=\"lib\"}")
            .await,
        1
    );
    // Without the option (and no stale_if_error) the refusal is an
    // upstream failure: 502, not the cached tag.
    assert_eq!(get_manifest(&proxy, "plain/app", "v1").await.0, 502);
}
