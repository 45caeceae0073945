//! A soak of the release `registry-proxy`: 64 clients mix warm hits, cold
//! misses and misses whose upstream transfer is faulted (flipped byte,
//! truncation, stall, 503, reset) for `SOAK_SECS` seconds (default 600),
//! while gc keeps a 256 MiB quota. Every complete response is checked
//! byte for byte; the proxy's RSS and open file descriptors are sampled
//! every 10 s. Prints a Markdown table for BENCHMARKS.md.
//!
//! Run with `scripts/soak.sh`. Everything listens on 127.0.0.1; every loop
//! is bounded by the deadline and per-request timeouts.

use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::Digest;
use cache_upstream::testing::{HostileRegistry, WireFault, free_port};
use rand::{Rng, SeedableRng};

const CLIENTS: usize = 64;
const WARM_BLOBS: usize = 200;

#[derive(Default)]
struct Tally {
    hits: AtomicU64,
    misses: AtomicU64,
    faulted: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
    bytes: AtomicU64,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn blob(seed: u64, len: usize) -> Bytes {
    cache_core::testing::content(seed, len)
}

async fn get(c: &reqwest::Client, url: &str) -> Option<Bytes> {
    let r = c.get(url).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    r.bytes().await.ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let bin = std::env::var("REGISTRY_PROXY_BIN")
        .unwrap_or_else(|_| "target/release/registry-proxy".to_owned());
    let up = Arc::new(HostileRegistry::start("127.0.0.1"));
    let warm: Vec<(Digest, Bytes)> = (0..WARM_BLOBS)
        .map(|i| {
            let b = blob(i as u64, 1024 + (i * 7919) % (512 * 1024));
            (up.add_blob(b.clone()), b)
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = format!(
        "listen = \"127.0.0.1:{port}\"\n[storage]\npath = \"{}\"\nquota = \"256MiB\"\ngc_interval = \"10s\"\n[upstream]\nstall_timeout = \"500ms\"\nretry_backoff = \"20ms\"\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n[[rule]]\nname = \"lib\"\nsource = \"{h}/library/*\"\ntarget = \"library/*\"\n",
        dir.path().join("store").display(),
        h = up.host(),
        u = up.url()
    );
    std::fs::write(dir.path().join("proxy.toml"), cfg).expect("config");
    let child = match Command::new(&bin)
        .arg("--config")
        .arg(dir.path().join("proxy.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => Proc(c),
        Err(e) => {
            eprintln!(
                "soak: cannot start {bin}: {e} (build it with `cargo build --release -p registry-proxy`)"
            );
            return ExitCode::FAILURE;
        }
    };
    let pid = child.0.id();
    let base = format!("http://127.0.0.1:{port}/v2/library/app/blobs/");
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    let ready = Instant::now() + Duration::from_secs(15);
    while c
        .get(format!("http://127.0.0.1:{port}/v2/"))
        .send()
        .await
        .is_err()
    {
        if Instant::now() > ready {
            eprintln!("soak: the proxy did not start");
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (d, _) in &warm {
        let _ = get(&c, &format!("{base}{d}")).await;
    }
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let fresh = Arc::new(AtomicU64::new(1_000_000));
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let (c, up, warm, tally, base, fresh) = (
            c.clone(),
            up.clone(),
            warm.clone(),
            tally.clone(),
            base.clone(),
            fresh.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
            while Instant::now() < deadline {
                let roll = rng.gen_range(0..100);
                if roll < 60 {
                    let (d, want) = &warm[rng.gen_range(0..warm.len())];
                    match get(&c, &format!("{base}{d}")).await {
                        Some(b) if b == want => {
                            tally.hits.fetch_add(1, Ordering::Relaxed);
                            tally.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                        }
                        Some(_) => {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                let seed = fresh.fetch_add(1, Ordering::Relaxed);
                let want = blob(seed, rng.gen_range(1..256 * 1024));
                let d = up.add_blob(want.clone());
                let faulted = roll >= 85;
                if faulted {
                    let at = rng.gen_range(0..want.len() as u64);
                    let f = match rng.gen_range(0..5) {
                        0 => WireFault::FlipByte(at),
                        1 => WireFault::Truncate(at),
                        2 => WireFault::Stall(at),
                        3 => WireFault::Status(503),
                        _ => WireFault::Reset,
                    };
                    up.fault(&format!("/blobs/{d}"), [f]);
                    tally.faulted.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.misses.fetch_add(1, Ordering::Relaxed);
                }
                match get(&c, &format!("{base}{d}")).await {
                    Some(b) if b == want => {
                        tally.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    Some(_) => {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                up.remove_blob(&d);
            }
        }));
    }
    println!("| elapsed | requests | wrong bytes | proxy RSS | open fds |");
    println!("|---|---|---|---|---|");
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline - Instant::now())).await;
        up.clear_seen();
        let n = tally.hits.load(Ordering::Relaxed)
            + tally.misses.load(Ordering::Relaxed)
            + tally.faulted.load(Ordering::Relaxed);
        let rss = status_field(pid, "VmRSS:");
        let f = fds(pid);
        samples.push((rss, f));
        println!(
            "| {:>4} s | {n} | {} | {:.1} MiB | {f} |",
            started.elapsed().as_secs(),
            tally.wrong.load(Ordering::Relaxed),
            rss as f64 / 1024.0
        );
    }
    for t in tasks {
        let _ = t.await;
    }
    let t = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let wrong = t(&tally.wrong);
    let (rss_first, fd_first) = samples.first().copied().unwrap_or_default();
    let rss_max = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let (rss_last, fd_last) = samples.last().copied().unwrap_or_default();
    let fd_max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    println!();
    println!(
        "{} s, {CLIENTS} clients: {} warm hits, {} cold misses, {} faulted misses, {} failed transfers (faults or their errors), {wrong} complete responses with wrong bytes, {:.1} GiB delivered. Proxy RSS first/last/max sample: {:.1} / {:.1} / {:.1} MiB; open fds first/last/max: {fd_first} / {fd_last} / {fd_max}; peak RSS (VmHWM) {:.1} MiB.",
        started.elapsed().as_secs(),
        t(&tally.hits),
        t(&tally.misses),
        t(&tally.faulted),
        t(&tally.failed),
        t(&tally.bytes) as f64 / (1u64 << 30) as f64,
        rss_first as f64 / 1024.0,
        rss_last as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        status_field(pid, "VmHWM:") as f64 / 1024.0,
    );
    drop(child);
    if wrong > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
