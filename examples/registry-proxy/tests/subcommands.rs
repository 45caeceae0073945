//! The subcommands besides `serve`, with real parts: `warm` fills a store
//! so that a following skopeo pull through the server is all hits
//! (`--platform` filters an index); `scrub`, `gc`, `check` and `explain`;
//! and the old `--check` flag still works.

mod common;

use cache_upstream::testing::{TestRegistry, skopeo, write_image, write_index};
use common::{Proxy, run, write_config};

fn body(up: &TestRegistry) -> String {
    format!(
        "[storage]\npath = \"store\"\n\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n\n[[rule]]\nname = \"lib\"\nsource = \"{h}/library/*\"\ntarget = \"library/*\"\ntag_freshness = \"ttl:1h\"\n",
        h = up.host(),
        u = up.url()
    )
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
    let port = write_config(dir.path(), &body(&up));

    let (ok, out) = run(
        dir.path(),
        &[
            "warm",
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
    let proxy = Proxy::launch(dir, port);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().to_owned();
    let host = proxy.host();
    tokio::task::spawn_blocking(move || {
        skopeo(&[
            "copy".into(),
            "--insecure-policy".into(),
            "--src-tls-verify=false".into(),
            format!("docker://{host}/library/demo:v1"),
            format!("dir:{}", dest.display()),
        ])
    })
    .await
    .unwrap()
    .unwrap();
    for (d, _) in &img.layers {
        assert!(d.verifies(&std::fs::read(out.path().join(d.hex())).unwrap()));
    }
    assert_eq!(
        proxy.metric("registry_proxy_cache_misses_total").await,
        0,
        "every answer was a hit"
    );
    assert!(
        proxy.metric("registry_proxy_cache_hits_total").await >= 4,
        "manifest, config and two layers"
    );
    assert_eq!(
        up.blob_gets(),
        gets_after_warm,
        "no upstream blob GET during the pull"
    );
}

#[test]
fn scrub_reports_and_removes_corruption_and_gc_applies_a_quota() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 23, &[60_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &body(&up));
    let dir = dir.path();
    let (ok, out) = run(dir, &["warm", &format!("{}/library/demo:v1", up.host())]);
    assert!(ok, "{out}");

    let (ok, out) = run(dir, &["scrub"]);
    assert!(ok && out.contains("0 corrupt"), "{out}");
    let d = &img.layers[0].0;
    let path = dir
        .join("store/blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (ok, out) = run(dir, &["scrub"]);
    assert!(!ok, "a scrub that found corruption exits non-zero: {out}");
    assert!(
        out.contains("1 corrupt") && out.contains(d.as_str()),
        "{out}"
    );
    assert!(!path.exists());

    let (ok, out) = run(dir, &["gc", "--quota", "0"]);
    assert!(ok, "{out}");
    assert!(out.contains("0 bytes remain"), "{out}");
    let (ok, out) = run(dir, &["gc", "--quota", "lots"]);
    assert!(!ok && out.contains("lots"), "{out}");
    let (ok, out) = run(dir, &["warm", "nope.example/unknown/image:v1"]);
    assert!(!ok && out.contains("not declared"), "{out}");
}

#[test]
fn check_and_explain_say_what_a_configuration_means() {
    let up = TestRegistry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &body(&up));
    let dir = dir.path();
    let (ok, out) = run(dir, &["check"]);
    assert!(ok && out.contains("valid: 1 rules"), "{out}");
    let (ok, out) = run(dir, &["--check"]);
    assert!(
        ok && out.contains("valid"),
        "the old flag still works: {out}"
    );
    let (ok, out) = run(dir, &["explain", "library/nginx"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("\"lib\"") && out.contains(&format!("{}/library/nginx", up.host())),
        "{out}"
    );
    let (ok, out) = run(dir, &["explain", &format!("{}/library/nginx", up.host())]);
    assert!(ok && out.contains("served as library/nginx"), "{out}");
    let (ok, out) = run(dir, &["explain", "acme/app"]);
    assert!(!ok && out.contains("no rule declares"), "{out}");
    let (ok, out) = run(dir, &["explain", "Not/Valid"]);
    assert!(!ok && out.contains("invalid"), "{out}");
}
