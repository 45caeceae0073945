//! End to end with real parts: the Debian distribution registry as the
//! upstream, images pushed with skopeo, `registry-proxy` started as a
//! separate process on a free loopback port, and skopeo pulling through it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use cache_upstream::testing::{TestRegistry, write_image, write_index};
use common::{Proxy, code_of, config, http, pull};

#[test]
fn skopeo_pulls_cold_then_warm_with_the_upstreams_layer_digests() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 11, &[300_000, 40_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let proxy = Proxy::start(&config(&up, ""));
    let before = up.blob_gets();

    let cold = tempfile::tempdir().unwrap();
    pull(&proxy, "library/demo:v1", cold.path(), false).unwrap();
    for (d, size) in &img.layers {
        let f = cold.path().join(d.hex());
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(bytes.len() as u64, *size);
        assert!(d.verifies(&bytes));
    }
    let after_cold = up.blob_gets();
    assert_eq!(
        after_cold - before,
        3,
        "config and two layers, once each:\n{}",
        up.log()
    );

    let warm = tempfile::tempdir().unwrap();
    pull(&proxy, "library/demo:v1", warm.path(), false).unwrap();
    assert_eq!(
        up.blob_gets(),
        after_cold,
        "a warm pull fetches no blob upstream"
    );
    for (d, _) in &img.layers {
        assert_eq!(
            std::fs::read(cold.path().join(d.hex())).unwrap(),
            std::fs::read(warm.path().join(d.hex())).unwrap()
        );
    }
    assert!(
        proxy.logs_blocking(|l| l.contains("cache=\"hit\"")),
        "{}",
        proxy.log()
    );
}

#[test]
fn a_two_platform_index_copied_with_all_comes_through_byte_identical() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_index(src.path(), "multi", 12, 20_000);
    up.push(&img.layout, "multi", "library/multi").unwrap();
    let proxy = Proxy::start(&config(&up, ""));
    let out = tempfile::tempdir().unwrap();
    pull(&proxy, "library/multi:multi", out.path(), true).unwrap();
    let index = std::fs::read(src.path().join("blobs/sha256").join(img.digest.hex())).unwrap();
    assert_eq!(
        std::fs::read(out.path().join("manifest.json")).unwrap(),
        index
    );
    for (d, _) in &img.layers {
        assert!(d.verifies(&std::fs::read(out.path().join(d.hex())).unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_upstream_down_cached_images_pull_and_uncached_ones_get_5xx() {
    let mut up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 13, &[50_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    // Every request asks the upstream (none is served on a confirmation
    // from a moment ago), so each one meets the outage.
    let proxy = Proxy::start(&config(&up, "\n[upstream]\nrevalidate_window = \"0s\"\n"));
    let first = tempfile::tempdir().unwrap();
    pull(&proxy, "library/demo:v1", first.path(), false).unwrap();
    up.stop();
    let again = tempfile::tempdir().unwrap();
    pull(&proxy, "library/demo:v1", again.path(), false)
        .expect("the cached image pulls while the upstream is down");
    let r = http()
        .get(proxy.url("/v2/library/demo/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "stale");
    let (status, code) = code_of(
        http()
            .get(proxy.url("/v2/library/other/manifests/v1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        status == 502 || status == 503,
        "uncached with the upstream down: {status} {code}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmatched_name_is_404_name_unknown_and_the_upstream_sees_nothing() {
    let up = TestRegistry::start().unwrap();
    let proxy = Proxy::start(&config(&up, ""));
    let before = up
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/") || l.contains("\"HEAD /v2/"))
        .count();
    for path in [
        "/v2/acme/app/manifests/v1",
        "/v2/nginx/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "/v2/x/tags/list",
    ] {
        let (status, code) = code_of(http().get(proxy.url(path)).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (404, "NAME_UNKNOWN"), "{path}");
    }
    let after = up
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/") || l.contains("\"HEAD /v2/"))
        .count();
    assert_eq!(
        before,
        after,
        "no upstream request for undeclared names:\n{}",
        up.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_cold_gets_of_a_large_blob_make_one_upstream_get() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 14, &[24 * 1024 * 1024]);
    up.push(&img.layout, "v1", "library/big").unwrap();
    let proxy = Proxy::start(&config(&up, ""));
    let (d, size) = img.layers[0].clone();
    let before = up.blob_gets();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let url = proxy.url(&format!("/v2/library/big/blobs/{d}"));
        tasks.push(tokio::spawn(async move {
            let r = http().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        }));
    }
    for t in tasks {
        let body = t.await.unwrap();
        assert_eq!(body.len() as u64, size);
        assert!(d.verifies(&body));
    }
    assert_eq!(
        up.blob_gets() - before,
        1,
        "one upstream blob GET for 16 clients:\n{}",
        up.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_head_if_none_match_and_bad_input_get_the_right_answers() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 15, &[100_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let proxy = Proxy::start(&config(&up, ""));
    let (d, size) = img.layers[0].clone();
    let blob = proxy.url(&format!("/v2/library/demo/blobs/{d}"));
    let c = http();

    let r = c
        .get(&blob)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 10-19/{size}").as_str()
    );
    let part = r.bytes().await.unwrap();
    let whole = c.get(&blob).send().await.unwrap();
    assert_eq!(whole.headers()["docker-content-digest"], d.as_str());
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    let whole = whole.bytes().await.unwrap();
    assert_eq!(part, whole.slice(10..20));
    let r = c
        .get(&blob)
        .header("Range", format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);

    let r = c.head(&blob).send().await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["content-length"].to_str().unwrap()
        ),
        (200, size.to_string().as_str())
    );
    let r = c
        .get(&blob)
        .header("If-None-Match", format!("\"{d}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let m = c
        .get(proxy.url("/v2/library/demo/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        m.headers()["content-type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(m.headers()["docker-content-digest"], img.digest.as_str());
    assert_eq!(
        m.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let h = c
        .head(proxy.url("/v2/library/demo/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(h.headers()["docker-content-digest"], img.digest.as_str());

    let cases: &[(&str, u16, &str)] = &[
        (
            "/v2/library/demo/blobs/sha256:nothex",
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/library/demo/blobs/md5:abc", 400, "DIGEST_INVALID"),
        ("/v2/library/Demo/manifests/v1", 400, "NAME_INVALID"),
        // The distribution spec: a reference that is no tag names no manifest.
        (
            "/v2/library/demo/manifests/bad!tag",
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/library/demo/manifests/.INVALID_MANIFEST_NAME",
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/library%2Fdemo/manifests/v1", 400, "NAME_INVALID"),
        (
            "/v2/library/demo/tags/list?n=lots",
            400,
            "PAGINATION_NUMBER_INVALID",
        ),
    ];
    for (path, status, code) in cases {
        let got = code_of(c.get(proxy.url(path)).send().await.unwrap()).await;
        assert_eq!((got.0, got.1.as_str()), (*status, *code), "{path}");
    }
    // Traversal attempts that HTTP clients would normalise away, sent as is.
    for raw in [
        "/v2/library/../../../etc/passwd/manifests/v1",
        "/v2/library/%2e%2e/%2e%2e/manifests/v1",
        "/v2/library/demo/blobs/..%2f..%2fetc",
        "/v2/library/demo/blobs/sha256:..%2F..%2Fsecret",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.write_all(format!("GET {raw} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(
            resp.starts_with("HTTP/1.0 400") || resp.starts_with("HTTP/1.1 400"),
            "{raw}: {resp}"
        );
    }

    let (status, code) = code_of(
        c.put(proxy.url("/v2/library/demo/manifests/v1"))
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (405, "UNSUPPORTED"));
    let (status, _) = code_of(
        c.post(proxy.url("/v2/library/demo/blobs/uploads/"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    // Nothing was written outside the store: every file under the proxy's directory is ours.
    for entry in std::fs::read_dir(proxy.dir.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            ["proxy.toml", "proxy.log", "cache-data"].contains(&name.as_str()),
            "unexpected {name}"
        );
    }
    assert!(proxy.store().join("blobs/sha256").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_mode_metrics_and_pull_side_auth() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 16, &[10_000]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let htpasswd =
        Command::new(cache_upstream::testing::require("htpasswd", "apache2-utils").unwrap())
            .args(["-Bbn", "puller", "right-pw"])
            .output()
            .unwrap();
    let hp = dir.path().join("htpasswd");
    std::fs::write(&hp, htpasswd.stdout).unwrap();
    let proxy = Proxy::start(&format!(
        "{}\n[auth]\nhtpasswd = \"{}\"\ntokens = [\"tok-123\"]\n",
        config(&up, ""),
        hp.display()
    ));
    let c = http();
    let url = proxy.url(&format!("/v2/library/demo/manifests/v1?ns={}", up.host()));
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = c
        .get(&url)
        .basic_auth("puller", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(&url)
        .basic_auth("puller", Some("right-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "mirror request with ?ns= resolves through the rule"
    );
    assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str());
    let r = c
        .get(proxy.url("/v2/"))
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(proxy.url("/v2/demo/manifests/v1?ns=quay.io"))
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await.0, 404);

    let m = proxy.metrics().await;
    assert!(
        proxy.metric("registry_proxy_cache_misses_total").await >= 1,
        "{m}"
    );
    assert!(
        m.contains("registry_proxy_requests_total{method=\"GET\",status=\"401\"}"),
        "{m}"
    );
    assert!(m.contains("registry_proxy_fetches_in_flight 0"), "{m}");
}

#[test]
fn an_invalid_configuration_exits_non_zero_naming_the_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    let rule = "[[registry]]\nhost = \"docker.io\"\n[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n";
    let cases = [
        (
            "[storage]\nbackend = \"tape\"\n".to_owned(),
            ["storage.backend", "tape"],
        ),
        // A URL no object store answers to is refused at start, named.
        (
            format!("[storage]\nbackend = \"object\"\nurl = \"ftp://files/cache\"\n{rule}"),
            ["storage.url", "ftp://files/cache"],
        ),
    ];
    for (body, needles) in cases {
        std::fs::write(&p, format!("listen = \"127.0.0.1:5000\"\n{body}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_registry-proxy"))
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{body}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(needles.iter().all(|n| err.contains(n)), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_htpasswd_upstream_pulls_with_configured_credentials_and_a_wrong_password_is_502() {
    let up = TestRegistry::start_with_auth("mirror", "upstream-pw").unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 17, &[30_000]);
    up.push(&img.layout, "v1", "library/private").unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let with = |pw: &str| {
        // The password reaches the proxy through a file, as a mounted secret would.
        let file = secrets.path().join(pw);
        std::fs::write(
            &file,
            format!("{}\n", if pw == "good" { "upstream-pw" } else { "nope" }),
        )
        .unwrap();
        format!(
            "[storage]\npath = \"cache-data\"\n\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\nusername = \"mirror\"\npassword_file = \"{f}\"\n\n[[rule]]\nname = \"lib\"\nsource = \"{h}/library/*\"\ntarget = \"library/*\"\n",
            h = up.host(),
            u = up.url(),
            f = file.display()
        )
    };
    let good = Proxy::start(&with("good"));
    let out = tempfile::tempdir().unwrap();
    pull(&good, "library/private:v1", out.path(), false).unwrap();
    assert!(
        img.layers[0]
            .0
            .verifies(&std::fs::read(out.path().join(img.layers[0].0.hex())).unwrap())
    );
    assert!(
        !good.log().contains("upstream-pw"),
        "the password never reaches the log"
    );

    let bad = Proxy::start(&with("bad"));
    let (status, code) = code_of(
        http()
            .get(bad.url("/v2/library/private/manifests/v1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (502, "UPSTREAM_ERROR"),
        "the upstream refusing our credentials is not the client's 401"
    );
}

#[test]
fn idle_and_slow_header_connections_are_closed_after_the_idle_timeout() {
    let up = TestRegistry::start().unwrap();
    let proxy = Proxy::start(&format!(
        "[server]\nidle_timeout = \"1s\"\n{}",
        config(&up, "")
    ));
    for first in ["", "GET /v2/ HTTP/1.1\r\n"] {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(first.as_bytes()).unwrap();
        let t = Instant::now();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let waited = t.elapsed();
        assert!(
            waited < Duration::from_secs(5),
            "closed after {waited:?} for {first:?}"
        );
        assert!(
            !String::from_utf8_lossy(&buf).contains("200 OK"),
            "{first:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transfer_in_progress_finish_then_exits_cleanly() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 18, &[16 * 1024 * 1024]);
    up.push(&img.layout, "v1", "library/big").unwrap();
    let mut proxy = Proxy::start(&config(&up, ""));
    let (d, size) = img.layers[0].clone();
    let resp = http()
        .get(proxy.url(&format!("/v2/library/big/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status = Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len() as u64, size, "the transfer in progress finished");
    assert!(d.verifies(&body));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = proxy.child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st:?}\n{}", proxy.log());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running after SIGTERM:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_err(),
        "no longer listening"
    );
}

/// What the proxy has sent from files (`sendfile`), as its metrics count it.
const SENT_FROM_FILES: &str = "registry_proxy_sendfile_bytes_total";

/// Warm blobs go out from the store's file (`sendfile` on HTTP/1, in 4 MiB
/// pieces); what arrives must be the blob, whole and in ranges across those
/// pieces, on a kept-alive connection that then still frames a manifest
/// right, and over HTTP/2 too (streamed there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_blobs_arrive_byte_exact_over_http1_and_http2_whole_and_in_ranges() {
    const PIECE: u64 = 4 << 20;
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 21, &[9 * 1024 * 1024 + 123]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let proxy = Proxy::start(&config(&up, ""));
    let original = |hex: &str| std::fs::read(src.path().join("blobs/sha256").join(hex)).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&original(img.digest.hex())).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut blobs: Vec<String> = img.layers.iter().map(|(d, _)| d.to_string()).collect();
    blobs.push(config_digest);
    let h1 = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut served = 0u64;
    for d in &blobs {
        let want = original(d.strip_prefix("sha256:").unwrap());
        let size = want.len() as u64;
        let url = proxy.url(&format!("/v2/library/demo/blobs/{d}"));
        for expect in ["miss", "hit", "hit"] {
            let before = proxy.metric(SENT_FROM_FILES).await;
            if expect == "hit" {
                // The fetch commits (fsync, rename) just after its last byte goes out.
                let deadline = Instant::now() + Duration::from_secs(10);
                while h1.head(&url).send().await.unwrap().headers()["x-cache"] != "hit" {
                    assert!(Instant::now() < deadline, "{d} never committed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let r = h1.get(&url).send().await.unwrap();
            assert_eq!(
                (
                    r.status().as_u16(),
                    r.headers()["x-cache"].to_str().unwrap()
                ),
                (200, expect)
            );
            let got = r.bytes().await.unwrap();
            assert!(
                got == want,
                "{d} ({expect}): {} bytes, not the blob",
                got.len()
            );
            served += size;
            if expect == "hit" && size > 64 * 1024 {
                // Small blobs (the config) are served from memory; a miss
                // is streamed as it arrives.
                let from_files = proxy.metric(SENT_FROM_FILES).await - before;
                assert!(
                    from_files >= size,
                    "{d} ({expect}): {from_files} of {size} bytes sent from a file"
                );
            }
        }
        let mut ranges = vec![(0, 0), (size - 1, size - 1), (1, size - 2)];
        if size > PIECE + 10 {
            ranges.push((PIECE - 10, PIECE + 10));
            ranges.push((PIECE, size - 1));
        }
        for (a, b) in ranges {
            let r = h1
                .get(&url)
                .header("Range", format!("bytes={a}-{b}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206, "{d} bytes={a}-{b}");
            let got = r.bytes().await.unwrap();
            assert!(
                got[..] == want[a as usize..=b as usize],
                "{d} bytes={a}-{b}: wrong bytes"
            );
            served += b - a + 1;
        }
        let r = h2.get(&url).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert!(r.bytes().await.unwrap() == want, "{d} over HTTP/2");
        served += size;
    }
    let m = h1
        .get(proxy.url("/v2/library/demo/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(m.headers()["docker-content-digest"], img.digest.as_str());
    assert!(m.bytes().await.unwrap() == original(img.digest.hex()));
    // Pipelined: three requests in one write, answered in order, each body
    // exactly its blob (file bodies queue their spans on one connection).
    let order = [&blobs[0], &blobs[1], &blobs[0]];
    let wants: Vec<Vec<u8>> = order
        .iter()
        .map(|d| original(d.strip_prefix("sha256:").unwrap()))
        .collect();
    let mut req = String::new();
    for d in order {
        req.push_str(&format!(
            "GET /v2/library/demo/blobs/{d} HTTP/1.1\r\nHost: {}\r\n\r\n",
            proxy.host()
        ));
    }
    let port = proxy.port;
    let bodies = tokio::task::spawn_blocking(move || pipelined(port, &req, 3))
        .await
        .unwrap();
    for (i, (got, want)) in bodies.iter().zip(&wants).enumerate() {
        assert!(
            got == want,
            "pipelined response {i}: {} bytes, not its blob",
            got.len()
        );
        served += want.len() as u64;
    }
    let counted = proxy.metric("registry_proxy_bytes_served_total").await;
    assert_eq!(counted, served, "bytes served, as counted");
}

/// On the object storage backend (Azurite): skopeo pulls cold, every blob
/// lands verified in the container (the large layer as a multipart upload),
/// and a second proxy on the same container, as a second instance would be,
/// serves the image without fetching one blob from the upstream.
#[test]
fn two_proxies_on_one_azurite_container_share_what_either_fetched() {
    let az = cache_store::testing::Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    az.create_container("proxy").unwrap();
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 31, &[300_000, 20 * 1024 * 1024]);
    up.push(&img.layout, "v1", "library/demo").unwrap();
    let options: String = az
        .options()
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let cfg = config(&up, "").replace(
        "[storage]\nbackend = \"fs\"\npath = \"cache-data\"\n",
        &format!(
            "[storage]\nbackend = \"object\"\nurl = \"az://proxy/cache\"\nspool = \"spool\"\n[storage.options]\n{options}"
        ),
    );
    assert!(cfg.contains("az://proxy/cache"), "{cfg}");
    let first = Proxy::start(&cfg);
    let before = up.blob_gets();
    let cold = tempfile::tempdir().unwrap();
    pull(&first, "library/demo:v1", cold.path(), false).unwrap();
    let fetched = up.blob_gets() - before;
    assert_eq!(fetched, 3, "config and two layers, once each");
    for (d, size) in &img.layers {
        let bytes = std::fs::read(cold.path().join(d.hex())).unwrap();
        assert!(bytes.len() as u64 == *size && d.verifies(&bytes));
    }

    let spool = tempfile::tempdir().unwrap();
    let stored =
        cache_store::ObjectBlobStore::from_url("az://proxy/cache", az.options(), spool.path())
            .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listed = rt.block_on(async {
        use cache_core::BlobStoreExt as _;
        stored.list_all().await.unwrap()
    });
    for (d, size) in &img.layers {
        assert!(
            listed.iter().any(|b| &b.digest == d && b.size == *size),
            "{d} not in the container: {listed:?}"
        );
    }

    let second = Proxy::start(&cfg);
    let warm = tempfile::tempdir().unwrap();
    pull(&second, "library/demo:v1", warm.path(), false).unwrap();
    assert_eq!(
        up.blob_gets() - before,
        fetched,
        "the second instance fetched no blob upstream:\n{}",
        second.log()
    );
    for (d, _) in &img.layers {
        assert!(
            std::fs::read(cold.path().join(d.hex())).unwrap()
                == std::fs::read(warm.path().join(d.hex())).unwrap()
        );
    }
    assert!(
        second.logs_blocking(|l| l.contains("cache=\"hit\"")),
        "{}",
        second.log()
    );
}

/// Sends `req` (several requests) in one write and reads `n` responses off
/// the one connection, returning their bodies (Content-Length framed).
fn pipelined(port: u16, req: &str, n: usize) -> Vec<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut bodies = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while bodies.len() < n {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let k = s.read(&mut chunk).unwrap();
            assert!(k > 0, "connection closed after {} responses", bodies.len());
            buf.extend_from_slice(&chunk[..k]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no content-length in {head}"));
        while buf.len() < head_end + len {
            let k = s.read(&mut chunk).unwrap();
            assert!(k > 0, "connection closed inside a body");
            buf.extend_from_slice(&chunk[..k]);
        }
        bodies.push(buf[head_end..head_end + len].to_vec());
        buf.drain(..head_end + len);
    }
    bodies
}
