//! Webhooks through the running server: images pushed with skopeo to the
//! Debian distribution registry and pulled through the proxy with skopeo
//! and HTTP; notices received by an HTTP receiver in the test on
//! 127.0.0.1, their HMAC checked with `openssl dgst -hmac`; a receiver
//! that hangs or answers 500 does not hold pulls up, and what it misses is
//! counted in `/metrics`; the address policy keeps notices off internal
//! addresses the configuration does not list.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use cache_upstream::testing::{TestRegistry, TestScanner, require, write_image};
use common::{Proxy, http, pull, push_labeled};

/// What a receiver does with a notice.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    /// Never answers.
    Hang,
    /// `500 Internal Server Error`.
    Fail,
}

/// One notice as received.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// An HTTP receiver on 127.0.0.1 that records every `POST` and answers as
/// told; stops with the test's runtime.
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: bytes::Bytes| {
                let s = s.clone();
                async move {
                    s.lock().unwrap().push(Received { headers, body });
                    match answer {
                        Answer::Ok => StatusCode::NO_CONTENT,
                        Answer::Fail => StatusCode::INTERNAL_SERVER_ERROR,
                        Answer::Hang => {
                            std::future::pending::<()>().await;
                            StatusCode::OK
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (at most 20 s) until `done` holds for what was received.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: received {:#?}",
                got.iter().map(|r| r.json()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `sha256=<hex>` of `body` keyed with `secret`, as `openssl dgst -hmac`
/// computes it.
fn openssl_hmac(secret: &str, body: &[u8]) -> String {
    let openssl = require("openssl", "openssl").unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("body");
    std::fs::write(&f, body).unwrap();
    let out = Command::new(openssl)
        .args(["dgst", "-sha256", "-hmac", secret, "-r"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(out.status.success());
    let hex = String::from_utf8(out.stdout).unwrap();
    format!("sha256={}", hex.split_whitespace().next().unwrap())
}

fn push(up: &TestRegistry, repo: &str, seed: u64) -> (cache_core::Digest, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "v1", seed, &[20_000]);
    up.push(&img.layout, "v1", repo).unwrap();
    (img.digest, dir)
}

fn of_type<'a>(got: &'a [Received], t: &str) -> Vec<&'a Received> {
    got.iter().filter(|r| r.json()["type"] == t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cloudevents_arrive_for_a_miss_a_denial_and_a_scan_verdict() {
    let up = TestRegistry::start().unwrap_or_else(|e| panic!("{e}"));
    let scanner = TestScanner::start();
    scanner.advise("openssl", "CVE-2099-0001", "Critical");
    let (served, _a) = push(&up, "library/app", 1);
    let (unsigned, _b) = push(&up, "signed/app", 2);
    let (vulnerable, _c) = push_labeled(&up, "scanned/app", 3, "openssl 3.0.1");
    let receiver = Receiver::start(Answer::Ok).await;
    let keys = tempfile::tempdir().unwrap();
    let key = common::cosign_public_key(keys.path());
    let h = up.host();
    let extra = format!(
        "[[rule]]\nname = \"signed\"\nsource = \"{h}/signed/*\"\ntarget = \"signed/*\"\n[rule.signatures]\ncosign_keys = [\"{key}\"]\nmode = \"enforce\"\n\n\
         [[rule]]\nname = \"scanned\"\nsource = \"{h}/scanned/*\"\ntarget = \"scanned/*\"\n[rule.scan]\nscanner = \"test\"\ndeny_severity = \"critical\"\n\n\
         [[scanner]]\nname = \"test\"\nurl = \"{s}\"\n\n\
         [[webhook]]\nname = \"ci\"\nurl = \"{r}\"\nevents = [\"pull.miss\", \"admission.denied\", \"scan.verdict_changed\"]\nsecret = \"s3cret-key\"\nsource = \"/proxy-under-test\"\nallow_hosts = [\"127.0.0.1\"]\n",
        key = key.display(),
        s = scanner.url(),
        r = receiver.url(),
    );
    let proxy = Proxy::start(&common::config(&up, &extra));

    let out = tempfile::tempdir().unwrap();
    pull(&proxy, "library/app:v1", out.path(), false).unwrap_or_else(|e| panic!("{e}"));
    let refused = pull(&proxy, "signed/app:v1", out.path(), false).unwrap_err();
    assert!(refused.contains("no signature"), "{refused}");
    let denied = pull(&proxy, "scanned/app:v1", out.path(), false).unwrap_err();
    assert!(denied.contains("CVE-2099-0001"), "{denied}");
    // A hit is not subscribed to: it sends nothing.
    pull(&proxy, "library/app:v1", out.path(), false).unwrap();

    let got = receiver
        .wait_for("a miss, two denials and a scan verdict", |got| {
            let t = |k| of_type(got, k).len();
            t("pull-through-cache.pull.miss") >= 1
                && t("pull-through-cache.admission.denied") >= 2
                && t("pull-through-cache.scan.verdict_changed") >= 1
        })
        .await;
    let mut ids = std::collections::HashSet::new();
    for r in &got {
        let e = r.json();
        assert_eq!(
            r.header("content-type"),
            "application/cloudevents+json; charset=utf-8"
        );
        assert_eq!(
            r.header("x-signature-256"),
            openssl_hmac("s3cret-key", &r.body),
            "the HMAC of the body as received"
        );
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "/proxy-under-test");
        assert_eq!(e["datacontenttype"], "application/json");
        let time = e["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        assert!(
            ids.insert(e["id"].as_str().unwrap().to_owned()),
            "ids are unique"
        );
        assert_eq!(r.header("x-webhook-id"), e["id"].as_str().unwrap());
        assert_ne!(e["type"], "pull-through-cache.pull.hit");
    }
    let miss = of_type(&got, "pull-through-cache.pull.miss");
    let miss = miss
        .iter()
        .map(|r| r.json())
        .find(|e| e["data"]["repository"] == "library/app")
        .expect("the miss of library/app");
    assert_eq!(miss["subject"], "library/app:v1");
    assert_eq!(miss["data"]["digest"], served.to_string());
    assert_eq!(miss["data"]["cache"], "miss");
    assert_eq!(miss["data"]["rule"], "lib");

    let denials: Vec<serde_json::Value> = of_type(&got, "pull-through-cache.admission.denied")
        .iter()
        .map(|r| r.json())
        .collect();
    let sig = denials
        .iter()
        .find(|e| e["data"]["repository"] == "signed/app")
        .expect("the signature denial");
    assert_eq!(sig["data"]["digest"], unsigned.to_string());
    assert_eq!(sig["data"]["policy"], "signatures");
    assert_eq!(sig["data"]["reason"], "no signature");
    assert_eq!(sig["subject"], "signed/app:v1");
    let scan = denials
        .iter()
        .find(|e| e["data"]["repository"] == "scanned/app")
        .expect("the scan denial");
    assert_eq!(scan["data"]["policy"], "vulnerability scan");
    assert_eq!(scan["data"]["digest"], vulnerable.digest.to_string());
    assert_eq!(
        scan["data"]["detail"]["findings"][0]["id"], "CVE-2099-0001",
        "{scan}"
    );

    let verdict = of_type(&got, "pull-through-cache.scan.verdict_changed")[0].json();
    assert_eq!(verdict["data"]["scanner"], "test");
    assert_eq!(verdict["data"]["rule"], "scanned");
    assert_eq!(verdict["data"]["verdict"], "refused");
    assert_eq!(
        verdict["data"]["previous"],
        serde_json::Value::Null,
        "a first scan"
    );
    assert_eq!(verdict["data"]["digest"], vulnerable.digest.to_string());
    assert!(
        verdict["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("CVE-2099-0001")
    );

    // Every notice sent is counted as delivered, none dropped or failed.
    let delivered = proxy
        .metric("registry_proxy_webhook_notices_total{webhook=\"ci\",outcome=\"delivered\"}")
        .await;
    assert_eq!(delivered as usize, receiver.received().len());
    for outcome in ["failed", "dropped"] {
        let n = proxy
            .metric(&format!(
                "registry_proxy_webhook_notices_total{{webhook=\"ci\",outcome=\"{outcome}\"}}"
            ))
            .await;
        assert_eq!(n, 0, "{outcome}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_or_failing_receiver_holds_no_pull_up_and_what_it_misses_is_counted() {
    let up = TestRegistry::start().unwrap_or_else(|e| panic!("{e}"));
    let (_, _img) = push(&up, "library/app", 4);
    let hanging = Receiver::start(Answer::Hang).await;
    let failing = Receiver::start(Answer::Fail).await;
    let extra = format!(
        "[[webhook]]\nname = \"hangs\"\nurl = \"{}\"\nevents = [\"pull.hit\", \"pull.miss\"]\nformat = \"json\"\nqueue = 4\nconcurrency = 1\ntimeout = \"5m\"\nmax_attempts = 1\nallow_hosts = [\"127.0.0.1\"]\n\n\
         [[webhook]]\nname = \"fails\"\nurl = \"{}\"\nevents = [\"pull.hit\", \"pull.miss\"]\nqueue = 4\nconcurrency = 1\nmax_attempts = 3\nbackoff = \"20ms\"\nallow_hosts = [\"127.0.0.1\"]\n",
        hanging.url(),
        failing.url()
    );
    let proxy = Proxy::start(&common::config(&up, &extra));
    const PULLS: usize = 300;
    let client = http();
    // Every pull answers while both receivers misbehave; the bound is only
    // there to fail instead of hang if the sink waited for a receiver.
    let all = async {
        for _ in 0..PULLS {
            let r = client
                .get(proxy.url("/v2/library/app/manifests/v1"))
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("pulls went on while the receivers misbehaved");

    let m = |name: &'static str, outcome: &'static str| {
        let p = &proxy;
        async move {
            p.metric(&format!(
                "registry_proxy_webhook_notices_total{{webhook=\"{name}\",outcome=\"{outcome}\"}}"
            ))
            .await as usize
        }
    };
    // The hanging receiver holds one notice (one delivery at a time), four
    // wait in its queue, the rest were dropped and counted.
    hanging.wait_for("one delivery", |g| g.len() == 1).await;
    let dropped = m("hangs", "dropped").await;
    assert!(
        (PULLS - 5..=PULLS - 4).contains(&dropped),
        "{dropped} of {PULLS} dropped"
    );
    assert_eq!(m("hangs", "delivered").await, 0);
    assert_eq!(hanging.received().len(), 1, "one delivery at a time, held");
    let queued = proxy
        .metric("registry_proxy_webhook_queued{webhook=\"hangs\"}")
        .await;
    assert!((3..=4).contains(&queued), "{queued}");

    // The failing receiver: every notice it got was tried three times and
    // given up on; while it retried, the queue filled and the rest dropped.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (failed, dropped) = (m("fails", "failed").await, m("fails", "dropped").await);
        if failed + dropped == PULLS {
            assert!(failed >= 5, "{failed}");
            assert_eq!(failing.received().len(), failed * 3, "three attempts each");
            let retries = proxy
                .metric("registry_proxy_webhook_retries_total{webhook=\"fails\"}")
                .await as usize;
            assert_eq!(retries, failed * 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed {failed} + dropped {dropped} != {PULLS}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(m("fails", "delivered").await, 0);
    let log = proxy.log();
    assert!(
        log.contains("webhook delivery failed; notice dropped") && log.contains("500"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_go_to_internal_addresses_only_when_listed() {
    let up = TestRegistry::start().unwrap_or_else(|e| panic!("{e}"));
    let (_, _img) = push(&up, "library/app", 5);
    let receiver = Receiver::start(Answer::Ok).await;

    // A literal loopback address, not listed: the configuration is refused,
    // naming the entry and the key.
    let dir = tempfile::tempdir().unwrap();
    let body = common::config(
        &up,
        &format!("[[webhook]]\nname = \"in\"\nurl = \"{}\"\n", receiver.url()),
    );
    common::write_config(dir.path(), &body);
    let (ok, said) = common::run(dir.path(), &["check"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("webhook[0]") && said.contains("127.0.0.1") && said.contains("allow_hosts"),
        "{said}"
    );

    // A name that resolves to it, not listed: nothing is sent there; the
    // notice fails at once (no retries) and is counted.
    let named = format!("http://localhost:{}/hook", receiver.port);
    let extra = format!(
        "[[webhook]]\nname = \"in\"\nurl = \"{named}\"\nevents = [\"pull.miss\"]\nbackoff = \"10ms\"\n"
    );
    let proxy = Proxy::start(&common::config(&up, &extra));
    let out = tempfile::tempdir().unwrap();
    pull(&proxy, "library/app:v1", out.path(), false).unwrap();
    let failed = "registry_proxy_webhook_notices_total{webhook=\"in\",outcome=\"failed\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.metric(failed).await == 0 {
        assert!(Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.metric(failed).await, 1);
    assert_eq!(
        proxy
            .metric("registry_proxy_webhook_retries_total{webhook=\"in\"}")
            .await,
        0,
        "a refused address is final"
    );
    assert!(receiver.received().is_empty());
    assert!(
        proxy.logs(|l| l.contains("allow_hosts")).await,
        "the log says why: {}",
        proxy.log()
    );

    // Listed, it is delivered.
    let extra = format!(
        "[[webhook]]\nname = \"in\"\nurl = \"{named}\"\nevents = [\"pull.miss\"]\nformat = \"json\"\nallow_hosts = [\"localhost\"]\n"
    );
    let proxy = Proxy::start(&common::config(&up, &extra));
    pull(&proxy, "library/app:v1", out.path(), false).unwrap();
    let got = receiver.wait_for("the miss", |g| !g.is_empty()).await;
    let e = got[0].json();
    assert_eq!(got[0].header("content-type"), "application/json");
    assert_eq!(e["type"], "pull.miss");
    assert_eq!(e["subject"], "library/app:v1");
    assert!(
        got[0].headers.get("x-signature-256").is_none(),
        "no secret, no signature"
    );
}
