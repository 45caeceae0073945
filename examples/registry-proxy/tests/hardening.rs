//! The server against a hostile upstream and hostile clients, over real
//! HTTP: `registry-proxy` runs as its own process; the upstream is
//! `HostileRegistry` (in this process, on 127.0.0.x), which misbehaves on
//! demand and counts what it was asked; clients are curl, skopeo, reqwest
//! and raw sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::Digest;
use cache_upstream::testing::{HostileRegistry, WireFault, require, skopeo};
use common::{Proxy, code_of, config_for, http};

fn content(seed: u64, len: usize) -> Bytes {
    cache_core::testing::content(seed, len)
}

/// curl's exit code and the body it wrote.
fn curl(args: &[&str]) -> (i32, Vec<u8>) {
    let bin = require("curl", "curl").unwrap();
    let out = Command::new(bin)
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), out.stdout)
}

fn proxy_for(up: &HostileRegistry, extra: &str) -> Proxy {
    Proxy::start(&config_for(&up.host(), &up.url(), extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_fails_verification_never_completes_a_response_for_any_client() {
    let up = HostileRegistry::start("127.0.0.1");
    let layer = content(1, 2 * 1024 * 1024);
    let img = up.push_image("library/app", "v1", std::slice::from_ref(&layer));
    let (d, _) = img.layers[0].clone();
    // The last byte is wrong, so only the digest can tell; slow enough that
    // every client joins the one failing fetch.
    up.set_drip(Some((64 * 1024, Duration::from_millis(25))));
    up.fault(
        &format!("/blobs/{d}"),
        [WireFault::FlipByte(layer.len() as u64 - 1)],
    );
    let proxy = proxy_for(&up, "");
    let url = proxy.url(&format!("/v2/library/app/blobs/{d}"));
    let ranged_from = (layer.len() - 1000).to_string() + "-";
    let mut clients = Vec::new();
    for args in [
        vec!["--http1.1"],
        vec!["--http2-prior-knowledge"],
        vec!["--http1.1", "-r", ranged_from.as_str()],
        vec!["--http2-prior-knowledge", "-r", "0-"],
    ] {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.push(url.clone());
        clients.push(std::thread::spawn(move || {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            (a.join(" "), curl(&a))
        }));
    }
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "the response starts before the fetch ends");
    let reqwest_result = r.bytes().await;
    assert!(
        reqwest_result.is_err(),
        "reqwest sees a failed body, not {} bytes",
        reqwest_result.map(|b| b.len()).unwrap_or(0)
    );
    for c in clients {
        let (args, (code, body)) = c.join().unwrap();
        assert_ne!(code, 0, "curl {args} must fail, got {} bytes", body.len());
        assert!(body.len() < layer.len(), "curl {args}: never every byte");
        assert!(!d.verifies(&body));
    }
    assert!(
        !proxy.stored_blob(&d).exists(),
        "nothing unverified is committed"
    );
    // The faults were used up: a retry now gets the right bytes, whole.
    let (code, body) = curl(&[url.as_str()]);
    assert_eq!(code, 0);
    assert!(d.verifies(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_reports_a_failed_pull_and_pulls_correctly_once_the_upstream_behaves() {
    let up = HostileRegistry::start("127.0.0.1");
    let layer = content(2, 300_000);
    let img = up.push_image("library/app", "v1", std::slice::from_ref(&layer));
    let (d, _) = img.layers[0].clone();
    up.fault(
        &format!("/blobs/{d}"),
        [WireFault::FlipByte(layer.len() as u64 - 1)],
    );
    let proxy = proxy_for(&up, "");
    let copy = |out: &std::path::Path| {
        skopeo(&[
            "copy".into(),
            "--insecure-policy".into(),
            "--src-tls-verify=false".into(),
            "--retry-times=0".into(),
            format!("docker://{}/library/app:v1", proxy.host()),
            format!("dir:{}", out.display()),
        ])
    };
    let first = tempfile::tempdir().unwrap();
    let started = Instant::now();
    assert!(
        copy(first.path()).is_err(),
        "skopeo must not finish the copy"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it fails, it does not hang"
    );
    assert!(
        !proxy.stored_blob(&d).exists(),
        "nothing unverified is committed"
    );
    let second = tempfile::tempdir().unwrap();
    copy(second.path()).expect("the fault is gone: the pull succeeds");
    assert!(d.verifies(&std::fs::read(second.path().join(d.hex())).unwrap()));
    // Answers complete once the blob verified; the commit follows.
    let stored = proxy.stored_blob(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stored.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.verifies(&std::fs::read(stored).unwrap()));
    assert_eq!(up.requests("GET", &format!("/blobs/{d}")), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_reach_internal_addresses_only_through_listed_hosts() {
    let up = HostileRegistry::start("127.0.0.1");
    let internal = HostileRegistry::start("127.0.0.2");
    let layer = content(3, 10_000);
    let d = internal.add_blob(layer.clone());
    up.add_blob_as(&d, layer.clone());
    let to_literal = format!("{}/v2/library/app/blobs/{d}", internal.url());
    let to_name = format!(
        "http://localhost:{}/v2/library/app/blobs/{d}",
        internal.host().rsplit(':').next().unwrap()
    );
    let path = format!("/blobs/{d}");
    up.fault(
        &path,
        [
            WireFault::Redirect(to_literal.clone()),
            WireFault::Redirect(to_name),
        ],
    );

    let proxy = proxy_for(&up, "");
    let url = proxy.url(&format!("/v2/library/app/blobs/{d}"));
    for target in ["127.0.0.2", "localhost"] {
        let r = http().get(&url).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 502, "{target}: {body}");
        assert!(body.contains(target), "the refusal names {target}: {body}");
    }
    assert_eq!(
        internal.requests("GET", "/blobs/"),
        0,
        "the internal host never saw a request"
    );
    drop(proxy);

    up.fault(&path, [WireFault::Redirect(to_literal)]);
    let listed = Proxy::start(&with_registry_lines(
        &up,
        "redirect_hosts = [\"127.0.0.2\"]",
    ));
    let r = http()
        .get(listed.url(&format!("/v2/library/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer);
    assert_eq!(
        internal.requests("GET", "/blobs/"),
        1,
        "followed once listed"
    );
}

/// A configuration for `up` with extra lines in its `[[registry]]` table.
fn with_registry_lines(up: &HostileRegistry, lines: &str) -> String {
    config_for(&up.host(), &up.url(), "").replacen(
        "\n\n[[rule]]",
        &format!("\n{lines}\n\n[[rule]]"),
        1,
    )
}

fn registry_with_credentials(up: &HostileRegistry, lines: &str) -> String {
    with_registry_lines(
        up,
        &format!("username = \"mirror\"\npassword = \"upstream-secret\"\n{lines}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_go_to_a_token_realm_on_another_host() {
    let up = HostileRegistry::start("127.0.0.1");
    let realm = HostileRegistry::start("127.0.0.2");
    let img = up.push_image("library/app", "v1", &[content(4, 1000)]);
    up.require_token(&format!("{}/token", realm.url()));
    let manifest = format!("/v2/library/app/manifests/{}", img.manifest);

    // Not listed at all: an internal realm is not even asked.
    let p = Proxy::start(&registry_with_credentials(&up, ""));
    let r = http().get(p.url(&manifest)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("127.0.0.2"));
    assert_eq!(realm.requests("GET", "/token"), 0);
    drop(p);

    // Reachable (listed for redirects) but not a token host: asked anonymously.
    let p = Proxy::start(&registry_with_credentials(
        &up,
        "redirect_hosts = [\"127.0.0.2\"]",
    ));
    let r = http().get(p.url(&manifest)).send().await.unwrap();
    assert_eq!(r.status(), 200, "the realm's anonymous token works here");
    let seen = realm.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|s| s.authorization.is_none()),
        "no credentials to another host: {seen:?}"
    );
    assert!(!p.log().contains("upstream-secret"));
    drop(p);

    // Listed as a token host: it gets them.
    let p = Proxy::start(&registry_with_credentials(
        &up,
        "token_hosts = [\"127.0.0.2\"]",
    ));
    let r = http()
        .get(p.url(&format!("/v2/library/app/blobs/{}", img.config)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let last = realm.seen().pop().unwrap();
    assert!(
        last.authorization.is_some_and(|a| a.starts_with("Basic ")),
        "a listed token host receives the credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_upstream_bodies_are_cut_off_and_memory_stays_flat() {
    let up = HostileRegistry::start("127.0.0.1");
    let img = up.push_image("library/app", "v1", &[content(5, 1000)]);
    let missing = Digest::sha256_of(b"missing");
    let proxy = proxy_for(&up, "");
    let rss_before = proxy.peak_rss();
    let huge = |status, bytes: u64| WireFault::HugeBody { status, bytes };
    let cases = [
        (
            "/v2/library/app/manifests/v1".to_owned(),
            huge(200, 300 << 20),
            502,
        ),
        (
            format!("/v2/library/app/blobs/{missing}"),
            huge(404, 400 << 20),
            404,
        ),
        (
            "/v2/library/app/tags/list".to_owned(),
            huge(200, 15 << 20),
            502,
        ),
    ];
    for (path, fault, want) in cases {
        up.fault(&path, [fault]);
        let started = Instant::now();
        let r = http().get(proxy.url(&path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path}: not read whole"
        );
    }
    // A token response of 64 MiB.
    up.require_token(&format!("{}/token", up.url()));
    up.fault("/token", [huge(200, 64 << 20)]);
    let r = http()
        .get(proxy.url(&format!("/v2/library/app/manifests/{}", img.manifest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let grew = proxy.peak_rss().saturating_sub(rss_before);
    assert!(
        grew < 32 << 20,
        "peak RSS grew by {} MiB reading hostile bodies",
        grew >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_manifests_subject_does_not_unlock_another_rules_blob() {
    let public = HostileRegistry::start("127.0.0.1");
    let private = HostileRegistry::start("127.0.0.2");
    let secret = content(6, 5000);
    let secret_img = private.push_image("team/app", "v1", std::slice::from_ref(&secret));
    let (sd, _) = secret_img.layers[0].clone();
    let config_d = public.add_blob(Bytes::from_static(b"{}"));
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_d}","size":2}},"layers":[],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{sd}","size":5000}}}}"#
    );
    public.add_manifest(
        "library/pub",
        Some("v1"),
        m,
        "application/vnd.oci.image.manifest.v1+json",
    );
    let cfg = format!(
        "{}\n[[registry]]\nhost = \"{ph}\"\nendpoint = \"{pu}\"\n\n[[rule]]\nname = \"private\"\nsource = \"{ph}/team/*\"\ntarget = \"team/*\"\n",
        config_for(&public.host(), &public.url(), ""),
        ph = private.host(),
        pu = private.url()
    );
    let proxy = Proxy::start(&cfg);
    let r = http()
        .get(proxy.url(&format!("/v2/team/app/blobs/{sd}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.bytes().await.unwrap(),
        secret,
        "cached through its own rule"
    );
    let r = http()
        .get(proxy.url("/v2/library/pub/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, code) = code_of(
        http()
            .get(proxy.url(&format!("/v2/library/pub/blobs/{sd}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"));
    assert_eq!(public.requests("GET", &format!("/blobs/{sd}")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_fetches_queue_per_upstream_and_a_full_queue_is_503_with_retry_after() {
    let slow = HostileRegistry::start("127.0.0.1");
    let other = HostileRegistry::start("127.0.0.2");
    let blobs: Vec<Digest> = (0..4)
        .map(|i| slow.add_blob(content(10 + i, 50_000)))
        .collect();
    for d in &blobs {
        slow.fault(
            &format!("/blobs/{d}"),
            [WireFault::Drip {
                chunk: 5_000,
                delay: Duration::from_millis(100),
            }],
        );
    }
    let quick = other.add_blob(content(20, 1000));
    let cfg = format!(
        "{}\n[[registry]]\nhost = \"{oh}\"\nendpoint = \"{ou}\"\n\n[[rule]]\nname = \"other\"\nsource = \"{oh}/team/*\"\ntarget = \"team/*\"\n\n[upstream]\nmax_concurrent_fetches = 1\nmax_queued_fetches = 2\n",
        config_for(&slow.host(), &slow.url(), ""),
        oh = other.host(),
        ou = other.url()
    );
    let proxy = Proxy::start(&cfg);
    let mut first = Vec::new();
    for d in &blobs[..3] {
        let url = proxy.url(&format!("/v2/library/app/blobs/{d}"));
        first.push(tokio::spawn(async move {
            http()
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .map(|b| b.len())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.metric("registry_proxy_fetches_in_flight").await < 3 {
        assert!(Instant::now() < deadline, "three fetches admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http()
        .get(proxy.url(&format!("/v2/library/app/blobs/{}", blobs[3])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let started = Instant::now();
    let r = http()
        .get(proxy.url(&format!("/v2/team/app/blobs/{quick}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "another upstream is not stuck behind the slow one's queue"
    );
    for t in first {
        assert_eq!(t.await.unwrap().unwrap(), 50_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_fetch_whose_clients_left_never_reaches_the_upstream() {
    let up = HostileRegistry::start("127.0.0.1");
    let a = up.add_blob(content(30, 40_000));
    let b = up.add_blob(content(31, 40_000));
    up.fault(
        &format!("/blobs/{a}"),
        [WireFault::Drip {
            chunk: 4_000,
            delay: Duration::from_millis(100),
        }],
    );
    let proxy = proxy_for(&up, "\n[upstream]\nmax_concurrent_fetches = 1\n");
    let url_a = proxy.url(&format!("/v2/library/app/blobs/{a}"));
    let running =
        tokio::spawn(async move { http().get(url_a).send().await.unwrap().bytes().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A client that asks for b and gives up while b waits for its turn.
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.write_all(format!("GET /v2/library/app/blobs/{b} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    assert_eq!(running.await.unwrap().unwrap().len(), 40_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        up.requests("GET", &format!("/blobs/{b}")),
        0,
        "nobody wanted it any more"
    );
    assert_eq!(proxy.metric("registry_proxy_fetches_in_flight").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_keeps_failing_costs_one_request_plus_the_retry_budget() {
    let up = HostileRegistry::start("127.0.0.1");
    let d = up.add_blob(content(40, 1000));
    up.fault(
        &format!("/blobs/{d}"),
        std::iter::repeat_n(WireFault::Status(503), 100),
    );
    let proxy = proxy_for(&up, "\n[upstream]\nmax_retries = 2\n");
    let r = http()
        .get(proxy.url(&format!("/v2/library/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        up.requests("GET", &format!("/blobs/{d}")),
        3,
        "1 + max_retries"
    );
    assert_eq!(
        proxy
            .metric("registry_proxy_upstream_requests_total{call=\"blob\"}")
            .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_fetch_abandoned_by_the_request_timeout_is_not_reused() {
    let up = HostileRegistry::start("127.0.0.1");
    let img = up.push_image("library/app", "v1", &[content(50, 100)]);
    up.fault("/manifests/v1", [WireFault::Stall(0)]);
    let proxy = proxy_for(
        &up,
        "\n[server]\nrequest_timeout = \"1s\"\n[upstream]\nmanifest_timeout = \"2s\"\n",
    );
    let url = proxy.url("/v2/library/app/manifests/v1");
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 504, "the request timed out");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "a new fetch, not the stalled one's result");
    assert_eq!(r.headers()["docker-content-digest"], img.manifest.as_str());
    assert_eq!(up.requests("GET", "/manifests/v1"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_lies_are_502s_and_manifests_are_served_only_as_manifests() {
    let up = HostileRegistry::start("127.0.0.1");
    let img = up.push_image("library/app", "v1", &[content(60, 100)]);
    up.fault(
        "/manifests/v1",
        [WireFault::DigestHeader(
            Digest::sha256_of(b"lie").to_string(),
        )],
    );
    up.fault(
        "/manifests/sha256",
        [WireFault::ContentType("text/html".into())],
    );
    let proxy = proxy_for(&up, "");
    let (status, code) = code_of(
        http()
            .get(proxy.url("/v2/library/app/manifests/v1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (502, "UPSTREAM_ERROR"),
        "a lying digest is the upstream's fault"
    );
    let r = http()
        .get(proxy.url(&format!("/v2/library/app/manifests/{}", img.manifest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.manifest.v1+json",
        "never the upstream's text/html"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    // A malformed Range is ignored: the whole blob, 200.
    let (d, bytes) = img.layers[0].clone();
    let r = http()
        .get(proxy.url(&format!("/v2/library/app/blobs/{d}")))
        .header("Range", "bytes=banana")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_labels_stay_bounded_whatever_methods_clients_invent() {
    let up = HostileRegistry::start("127.0.0.1");
    let proxy = proxy_for(&up, "");
    for i in 0..300 {
        let method = format!("X{i}{}", "Y".repeat(2000));
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.write_all(format!("{method} /v2/ HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
    }
    let m = proxy.metrics().await;
    assert!(!m.contains("YYYY"), "no client-made label values");
    assert!(m.len() < 16 * 1024, "metrics stay small: {} bytes", m.len());
    assert!(
        m.contains("registry_proxy_requests_total{method=\"other\",status=\"405\"} 300"),
        "{m}"
    );
}

/// Opens an HTTP/2 (h2c, prior knowledge) connection and sends nothing
/// after the preface and an empty SETTINGS frame.
fn idle_h2c(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    // The server's SETTINGS, read exactly and acknowledged: it has accepted
    // this connection and serves it (however loaded the machine), so the
    // connection counts against the cap from here on.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).expect("the server's first frame");
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).unwrap();
    s
}

/// Whether the server closed `s` within `within`, behaving as a live but
/// idle HTTP/2 client meanwhile: SETTINGS and PINGs are acknowledged, so
/// only an idle timeout can end the connection, not a ping timeout.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
        // Answer complete frames: 9-byte header (length, type, flags, stream).
        while pending.len() >= 9 {
            let len = u32::from_be_bytes([0, pending[0], pending[1], pending[2]]) as usize;
            if pending.len() < 9 + len {
                break;
            }
            let (kind, flags) = (pending[3], pending[4]);
            let payload = pending[9..9 + len].to_vec();
            pending.drain(..9 + len);
            let reply = match (kind, flags & 1) {
                (4, 0) => Some([&[0, 0, 0, 4, 1, 0, 0, 0, 0][..]].concat()),
                (6, 0) => Some([&[0, 0, 8, 6, 1, 0, 0, 0, 0][..], &payload].concat()),
                _ => None,
            };
            if let Some(r) = reply
                && s.write_all(&r).is_err()
            {
                return true;
            }
        }
    }
    false
}

#[test]
fn idle_http2_connections_are_closed_and_connections_are_capped() {
    let up = HostileRegistry::start("127.0.0.1");
    let proxy = proxy_for(
        &up,
        // Long enough that no idle connection can close while the over-cap
        // one is tried, however loaded the machine.
        "\n[server]\nidle_timeout = \"3s\"\nmax_connections = 8\n",
    );
    let mut idle: Vec<TcpStream> = (0..8).map(|_| idle_h2c(proxy.port)).collect();
    std::thread::sleep(Duration::from_millis(200));
    // Over the cap: closed as it arrives.
    let mut ninth = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    let _ = ninth.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    ninth
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = ninth.read_to_end(&mut answer);
    assert!(answer.is_empty(), "over the cap: closed without an answer");
    // Idle, though answering every ping: closed after idle_timeout.
    let handles: Vec<_> = idle
        .drain(..)
        .map(|mut s| std::thread::spawn(move || closed_within(&mut s, Duration::from_secs(10))))
        .collect();
    for h in handles {
        assert!(h.join().unwrap(), "an idle HTTP/2 connection is closed");
    }
    // With the idle ones gone, a normal request is served.
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
}

#[test]
fn on_connection_threads_and_on_the_shared_runtime_blobs_come_whole_cold_and_warm_under_the_same_cap()
 {
    // Two threads of their own (the default on two cores) and 0: the shared runtime.
    for (threads, seed) in [(2, 71), (0, 72)] {
        blobs_come_whole_cold_and_warm_under_the_same_cap(threads, seed);
    }
}

fn blobs_come_whole_cold_and_warm_under_the_same_cap(threads: usize, seed: u64) {
    let up = HostileRegistry::start("127.0.0.1");
    let size = 3 << 20;
    let d = up.add_blob(content(seed, size));
    // Slow enough that both clients read the one fetch as it goes.
    up.set_rate(Some(8 << 20));
    let proxy = proxy_for(
        &up,
        &format!(
            "\n[server]\nconnection_threads = {threads}\nmax_connections = 3\nidle_timeout = \"3s\"\n"
        ),
    );
    let (port, path) = (proxy.port, format!("/v2/library/app/blobs/{d}"));
    let get = move |path: String| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&all[..split]).into_owned();
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        (head, all[split + 4..].to_vec())
    };
    // Cold (streamed from the fetch, which runs beside the request that
    // started it), then warm (sent from the file), by two clients at once:
    // on both threads, when connections have threads of their own.
    let both: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || get(path))
        })
        .collect();
    for h in both {
        let (_, body) = h.join().unwrap();
        assert!(
            body == content(seed, size),
            "cold, {threads} threads: whole and right"
        );
    }
    assert_eq!(
        up.requests("GET", &format!("/blobs/{d}")),
        1,
        "one fetch for both"
    );
    let (head, body) = get(path);
    assert!(head.contains("x-cache: hit"), "{head}");
    assert!(
        body == content(seed, size),
        "warm, {threads} threads: whole and right"
    );
    // The cap counts connections on every thread. The server counts a
    // connection out a moment after closing it: until the three before
    // are counted out, one of these may be refused, so try again.
    let open = || {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).ok()?;
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).ok()?;
        assert_eq!(&buf, b"HTTP/1.1 200");
        Some(s)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let idle: Vec<TcpStream> = loop {
        if let Some(all) = (0..3).map(|_| open()).collect::<Option<Vec<_>>>() {
            break all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "three connections under a cap of three ({threads} threads)"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut fourth = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    let _ = fourth.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    fourth
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = fourth.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "over the cap, {threads} threads: closed without an answer"
    );
    drop(idle);
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let up = HostileRegistry::start("127.0.0.1");
    let size = 48 << 20;
    let d = up.add_blob(content(70, size));
    let proxy = proxy_for(&up, "\n[server]\nsend_timeout = \"1s\"\n");
    let request = format!("GET /v2/library/app/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n");
    // Warm the cache first, reading everything.
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.write_all(request.replace("HTTP/1.1", "HTTP/1.0").as_bytes())
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert!(all.len() > size);
    // Now ask and read nothing for a while.
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.len() < size,
        "the connection was dropped: {} of {size} bytes arrived",
        got.len()
    );
}
