//! A wire-level fault matrix: random schedules of flipped bytes,
//! truncation, stalls, 5xx, 429 and resets on the upstream, each trial with
//! 1 to 8 concurrent clients (HTTP/1 and HTTP/2, whole and ranged) through
//! the running server. Whatever happens:
//!
//! * no client ever receives a complete response with wrong bytes;
//! * every trial ends with the correct blob in the store, or nothing.
//!
//! `FAULT_TRIALS` sets the number of trials (CI runs 200; the documented
//! longer run is 1000); `FAULT_SEED` replays a run.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_upstream::testing::{HostileRegistry, WireFault};
use common::{Proxy, config_for};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug)]
enum Seen {
    /// A complete response: status and body.
    Complete(u16, Option<(u64, u64)>, Bytes),
    /// The transfer failed (reset, short body, timeout).
    Failed,
}

fn fault(rng: &mut StdRng, size: u64) -> WireFault {
    let at = |rng: &mut StdRng| if size == 0 { 0 } else { rng.gen_range(0..size) };
    match rng.gen_range(0..8) {
        0 => WireFault::FlipByte(at(rng)),
        1 => WireFault::Truncate(at(rng)),
        2 => WireFault::Stall(at(rng)),
        3 => WireFault::Status(503),
        4 => WireFault::Status(500),
        5 => WireFault::TooManyRequests(1),
        6 => WireFault::Reset,
        _ => WireFault::Drip {
            chunk: 16 * 1024,
            delay: Duration::from_millis(3),
        },
    }
}

/// `bytes a-b/size` into (a, b).
fn content_range(v: &str) -> Option<(u64, u64)> {
    let (span, _) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

async fn client(url: String, range: Option<String>, h2: bool) -> Seen {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if h2 {
        b = b.http2_prior_knowledge();
    }
    let c = b.build().unwrap();
    let mut req = c.get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(_) => return Seen::Failed,
    };
    let status = resp.status().as_u16();
    let span = resp
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(content_range);
    match resp.bytes().await {
        Ok(b) => Seen::Complete(status, span, b),
        Err(_) => Seen::Failed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_client_gets_a_complete_response_with_wrong_bytes_and_nothing_unverified_is_stored() {
    let trials: usize = std::env::var("FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("FAULT_SEED={seed} FAULT_TRIALS={trials}");
    let mut rng = StdRng::seed_from_u64(seed);
    let up = HostileRegistry::start("127.0.0.1");
    let proxy = Proxy::start(&config_for(
        &up.host(),
        &up.url(),
        "\n[upstream]\nstall_timeout = \"300ms\"\nmax_retries = 3\nretry_backoff = \"10ms\"\n",
    ));
    let (mut complete, mut correct_206, mut failed, mut stored) = (0, 0, 0, 0);
    let started = Instant::now();
    // Trials run four at a time, each on a blob of its own.
    for batch in 0..trials.div_ceil(4) {
        let mut running = Vec::new();
        for t in 0..4.min(trials - batch * 4) {
            let trial = batch * 4 + t;
            let size: u64 = match rng.gen_range(0..10) {
                0 => rng.gen_range(1..64),
                _ => rng.gen_range(1..300_000),
            };
            let blob = cache_core::testing::content(seed ^ trial as u64, size as usize);
            let d = up.add_blob(blob.clone());
            let faults: Vec<WireFault> = (0..rng.gen_range(0..=4))
                .map(|_| fault(&mut rng, size))
                .collect();
            up.fault(&format!("/blobs/{d}"), faults.clone());
            let url = proxy.url(&format!("/v2/library/app/blobs/{d}"));
            let mut clients = Vec::new();
            for _ in 0..rng.gen_range(1..=8) {
                let range = match rng.gen_range(0..4) {
                    0 => {
                        let a = rng.gen_range(0..size);
                        Some(format!("bytes={a}-"))
                    }
                    1 => {
                        let a = rng.gen_range(0..size);
                        let b = rng.gen_range(a..size);
                        Some(format!("bytes={a}-{b}"))
                    }
                    _ => None,
                };
                let h2 = rng.gen_bool(0.3);
                let (url, r) = (url.clone(), range.clone());
                clients.push((range, tokio::spawn(client(url, r, h2))));
            }
            running.push((trial, blob, faults, clients));
        }
        for (trial, blob, faults, clients) in running {
            for (range, c) in clients {
                match c.await.unwrap() {
                    Seen::Complete(200, _, body) => {
                        complete += 1;
                        assert!(
                            body == blob,
                            "trial {trial} (seed {seed}): a complete 200 with wrong bytes ({} of {}), faults {faults:?}",
                            body.len(),
                            blob.len()
                        );
                    }
                    Seen::Complete(206, Some((a, b)), body) => {
                        complete += 1;
                        correct_206 += 1;
                        assert!(
                            body == blob.slice(a as usize..=b as usize),
                            "trial {trial} (seed {seed}): a complete 206 {range:?} with wrong bytes, faults {faults:?}"
                        );
                    }
                    Seen::Complete(s, _, body) => {
                        assert!(
                            s >= 400,
                            "trial {trial}: status {s} with {} bytes",
                            body.len()
                        );
                        failed += 1;
                    }
                    Seen::Failed => failed += 1,
                }
            }
        }
        // Let the batch's fetches settle, then look at the store.
        let deadline = Instant::now() + Duration::from_secs(20);
        while proxy.metric("registry_proxy_fetches_in_flight").await > 0 {
            assert!(Instant::now() < deadline, "fetches settle");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every blob of every trial: the right bytes or none.
    let asked: std::collections::HashSet<String> = up
        .seen()
        .into_iter()
        .filter(|s| s.path.contains("/blobs/sha256:"))
        .map(|s| s.path.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    for digest in asked {
        let d = cache_core::Digest::parse(&digest).unwrap();
        let path = proxy.stored_blob(&d);
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(d.verifies(&bytes), "{d} is stored with wrong bytes");
            stored += 1;
        }
    }
    println!(
        "{trials} trials in {:?}: {complete} complete responses ({correct_206} ranged), {failed} failed transfers or errors, {stored} blob files checked",
        started.elapsed()
    );
    assert!(
        complete > 0 && failed > 0,
        "the matrix exercised both outcomes"
    );
}
