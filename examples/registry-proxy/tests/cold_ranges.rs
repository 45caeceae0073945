//! Cold ranges through the running server: a lazy-pulling client asks for
//! the end of a layer nobody has pulled yet, from an upstream slowed to
//! 16 MiB/s (`HostileRegistry`, which records each request's `Range`).
//! Under `cold_ranges = "passthrough"` the range is answered straight away
//! by a ranged GET of its own, said to be unverified, while the one
//! whole-blob fetch goes on and is committed; under the default rule the
//! range waits for the whole blob, verified.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::Digest;
use cache_upstream::testing::HostileRegistry;
use common::{Proxy, http};

const SIZE: usize = 256 * 1024 * 1024;
const TAIL: usize = 1024 * 1024;

/// The upstream's blob GETs of `d`: (without `Range`, with `Range`).
fn gets(up: &HostileRegistry, d: &Digest) -> (usize, usize) {
    let seen: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/blobs/{d}")))
        .collect();
    let ranged = seen.iter().filter(|r| r.range.is_some()).count();
    (seen.len() - ranged, ranged)
}

/// GETs the last `TAIL` bytes of `d` through `repo`: the status, the
/// `x-content-verified` header, the body and when it was complete.
async fn tail(proxy: &Proxy, repo: &str, d: &Digest) -> (u16, Option<String>, Bytes, Duration) {
    let started = Instant::now();
    let r = http()
        .get(proxy.url(&format!("/v2/{repo}/blobs/{d}")))
        .header("range", format!("bytes=-{TAIL}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let verified = r
        .headers()
        .get("x-content-verified")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.bytes().await.unwrap();
    (status, verified, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_rule_answers_a_cold_range_at_once_and_the_default_waits_for_the_blob() {
    let up = HostileRegistry::start("127.0.0.1");
    let lazy = cache_core::testing::content(1, SIZE);
    let plain = cache_core::testing::content(2, SIZE);
    let (ld, pd) = (up.add_blob(lazy.clone()), up.add_blob(plain.clone()));
    up.set_rate(Some(16 * 1024 * 1024));
    let h = up.host();
    let proxy = Proxy::start(&format!(
        "[storage]\nbackend = \"fs\"\npath = \"cache-data\"\n\n\
         [[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n\n\
         [[rule]]\nname = \"lazy\"\nsource = \"{h}/lazy/*\"\ntarget = \"lazy/*\"\ncold_ranges = \"passthrough\"\n\n\
         [[rule]]\nname = \"plain\"\nsource = \"{h}/plain/*\"\ntarget = \"plain/*\"\n",
        u = up.url()
    ));

    // The default rule first: its range waits for the whole, verified blob.
    let waiting = {
        let (proxy_url, pd) = (proxy.url(""), pd.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http()
                .get(format!("{proxy_url}/v2/plain/app/blobs/{pd}"))
                .header("range", format!("bytes=-{TAIL}"))
                .send()
                .await
                .unwrap();
            let verified = r.headers().get("x-content-verified").cloned();
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap();
            (status, verified, body, started.elapsed())
        })
    };

    let (status, verified, body, took) = tail(&proxy, "lazy/app", &ld).await;
    assert_eq!(status, 206);
    assert_eq!(verified.as_deref(), Some("false"), "said to be unverified");
    assert!(body[..] == lazy[SIZE - TAIL..], "the right bytes");
    assert!(
        took < Duration::from_secs(1),
        "answered within 1 s, not after the 16 s transfer: {took:?}"
    );
    assert!(
        !proxy.stored_blob(&ld).exists(),
        "the whole blob is still on its way"
    );
    assert_eq!(gets(&up, &ld), (1, 1), "one whole-blob GET, one ranged GET");
    assert!(
        !waiting.is_finished(),
        "under the default rule the range is still waiting"
    );

    let (status, verified, body, took) = waiting.await.unwrap();
    assert_eq!(status, 206);
    assert!(verified.is_none(), "verified bytes carry no such header");
    assert!(body[..] == plain[SIZE - TAIL..]);
    assert!(
        took > Duration::from_secs(8),
        "it waited for the whole blob (16 s at 16 MiB/s): {took:?}"
    );
    assert_eq!(
        gets(&up, &pd),
        (1, 0),
        "one whole-blob GET, no range of its own"
    );

    // The passthrough rule's whole-blob fetch is committed once, verified.
    let stored = proxy.stored_blob(&ld);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stored.exists() {
        assert!(Instant::now() < deadline, "the whole blob is committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ld.verifies(&std::fs::read(&stored).unwrap()));
    assert_eq!(gets(&up, &ld), (1, 1), "and nothing more was asked");
    let (status, verified, body, _) = tail(&proxy, "lazy/app", &ld).await;
    assert_eq!(
        (status, verified),
        (206, None),
        "now from the store, verified"
    );
    assert!(body[..] == lazy[SIZE - TAIL..]);
    assert_eq!(gets(&up, &ld), (1, 1));
}
