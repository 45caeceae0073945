//! `cache-warm` fills a store so that a following skopeo pull through the
//! server is all hits; `--platform` filters an index; `scrub` and `gc`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use cache_core::events::Counters;
use cache_upstream::testing::{TestRegistry, skopeo, write_image, write_index};
use registry_proxy::config::Config;
use registry_proxy::http::{AppState, router};
use registry_proxy::metrics::Metrics;
use registry_proxy::{build_cache, open_store};

fn write_config(dir: &Path, up: &TestRegistry) -> std::path::PathBuf {
    let p = dir.join("proxy.toml");
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:0\"\n[storage]\npath = \"store\"\n\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n\n[[rule]]\nname = \"lib\"\nsource = \"{h}/library/*\"\ntarget = \"library/*\"\ntag_freshness = \"ttl:1h\"\n",
            h = up.host(),
            u = up.url()
        ),
    )
    .unwrap();
    p
}

fn warm(cfg: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cache-warm"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmed_store_serves_a_skopeo_pull_entirely_from_cache() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(&src.path().join("demo"), "v1", 21, &[120_000, 30_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let multi = write_index(&src.path().join("multi"), "multi", 22, 40_000);
    up.push(&multi.layout, "multi", "library/multi").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up);

    let (ok, out) = warm(
        &cfg,
        &[
            "pull",
            "--platform",
            "linux/amd64",
            &format!("{}/library/demo:v1", up.host()),
            &format!("{}/library/multi:multi", up.host()),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("0 failure(s)"), "{out}");
    // demo: config + 2 layers; multi, amd64 only: config + 1 layer.
    let gets_after_warm = up.blob_gets();
    assert_eq!(gets_after_warm, 5, "{}", up.log());
    let store = dir.path().join("store/blobs/sha256");
    let arm_layer = &multi.layers[1].0;
    assert!(
        !store
            .join(&arm_layer.hex()[..2])
            .join(arm_layer.hex())
            .exists(),
        "arm64 was filtered out"
    );

    // The server, on the same configuration and store.
    let config = Config::load(&cfg).unwrap();
    let metrics = Arc::new(Metrics::default());
    let cache = build_cache(&config, open_store(&config).await.unwrap(), metrics.clone()).unwrap();
    let app = router(AppState {
        cache,
        metrics: metrics.clone(),
        auth: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().to_owned();
    tokio::task::spawn_blocking(move || {
        skopeo(&[
            "copy".into(),
            "--insecure-policy".into(),
            "--src-tls-verify=false".into(),
            format!("docker://127.0.0.1:{port}/library/demo:v1"),
            format!("dir:{}", dest.display()),
        ])
    })
    .await
    .unwrap()
    .unwrap();
    for (d, _) in &img.layers {
        assert!(d.verifies(&std::fs::read(out.path().join(d.hex())).unwrap()));
    }
    let c = metrics.engine();
    assert_eq!(Counters::get(&c.misses), 0, "every answer was a hit");
    assert!(
        Counters::get(&c.hits) >= 4,
        "manifest, config and two layers"
    );
    assert_eq!(
        up.blob_gets(),
        gets_after_warm,
        "no upstream blob GET during the pull"
    );
    server.abort();
}

#[test]
fn scrub_reports_and_removes_corruption_and_gc_applies_a_quota() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 23, &[60_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up);
    let (ok, out) = warm(&cfg, &["pull", &format!("{}/library/demo:v1", up.host())]);
    assert!(ok, "{out}");

    let (ok, out) = warm(&cfg, &["scrub"]);
    assert!(ok && out.contains("0 corrupt"), "{out}");
    let d = &img.layers[0].0;
    let path = dir
        .path()
        .join("store/blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (ok, out) = warm(&cfg, &["scrub"]);
    assert!(!ok, "a scrub that found corruption exits non-zero: {out}");
    assert!(
        out.contains("1 corrupt") && out.contains(d.as_str()),
        "{out}"
    );
    assert!(!path.exists());

    let (ok, out) = warm(&cfg, &["gc", "--quota", "0"]);
    assert!(ok, "{out}");
    assert!(out.contains("0 bytes remain"), "{out}");
    let (ok, out) = warm(&cfg, &["gc", "--quota", "lots"]);
    assert!(!ok && out.contains("lots"), "{out}");
    let (ok, out) = warm(&cfg, &["pull", "nope.example/unknown/image:v1"]);
    assert!(!ok && out.contains("not declared"), "{out}");
}
