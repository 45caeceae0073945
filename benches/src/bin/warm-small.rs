//! The warm small-request path, side by side in one run: a rollout is
//! thousands of small requests (manifests by digest, config blobs, blob
//! HEADs, tags). `wrk` (64 connections, 2 threads; HEADs with the same
//! closed loop in `benches::load`, as wrk cannot do HEAD) against the release
//! `registry-proxy` (filesystem store, warm), nginx serving the very same
//! bytes as static files, and the distribution registry's proxy mode; and a
//! tag under `revalidate` against the same manifest by digest, counting the
//! upstream HEADs. Runs alternate (`WARM_ROUNDS`, default 2, of `WARM_SECS`,
//! default 5, each) and the medians are reported.
//!
//! Both servers log each request to a file, as they would deployed:
//! registry-proxy's access log at `info` (`WARM_RUST_LOG`), nginx's
//! `access_log`. `WARM_HOLD=<secs>` sets everything up warm, prints the
//! URLs and holds, for a plain `wrk` run or a profile by hand.
//! `WARM_PROXY=<path>` measures another registry-proxy build instead of
//! the one beside this binary (an earlier commit's, to compare two).
//!
//! Run with `scripts/bench-warm.sh`. Loopback only; every run is bounded.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use benches::{cpu_seconds, machine, median, nginx_with, tree_cpu_seconds};
use cache_upstream::testing::RegistryProxy;
use cache_upstream::testing::{TestRegistry, require, write_image};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One run's requests per second and 99th-percentile latency (ms): wrk
/// for GETs, `benches::load` for HEADs (wrk waits for a HEAD's body).
fn wrk(url: &str, head: bool, accept: bool, secs: u64) -> Result<(f64, f64), String> {
    if head {
        return benches::load(url, "HEAD", 64, secs);
    }
    let bin = require("wrk", "wrk")?;
    let mut cmd = Command::new(bin);
    cmd.args(["-t2", "-c64", &format!("-d{secs}s"), "--latency"]);
    if accept {
        cmd.args(["-H", &format!("Accept: {MANIFEST}")]);
    }
    let out = cmd
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        return Err(format!("{url}: non-2xx answers:\n{text}"));
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec from wrk:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| {
            let v = v.trim();
            let (n, mul) = if let Some(n) = v.strip_suffix("us") {
                (n, 0.001)
            } else if let Some(n) = v.strip_suffix("ms") {
                (n, 1.0)
            } else {
                (v.strip_suffix('s')?, 1000.0)
            };
            n.parse::<f64>().ok().map(|n| n * mul)
        })
        .unwrap_or(f64::NAN);
    Ok((rps, p99))
}

fn proxy(bin: &Path, up: &TestRegistry) -> Result<RegistryProxy, String> {
    let body = format!(
        "[storage]\npath = \"store\"\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n[[rule]]\nname = \"bench\"\nsource = \"{h}/bench/*\"\ntarget = \"bench/*\"\n",
        h = up.host(),
        u = up.url()
    );
    let log = std::env::var("WARM_RUST_LOG").unwrap_or_else(|_| "info".into());
    // Its log goes to a file, as deployed (to /dev/null it would cost
    // nothing, and flatter it against an outside measurement).
    RegistryProxy::start(bin, &body, &log, true)
}

fn main() -> ExitCode {
    match run() {
        Ok(table) => {
            println!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warm-small: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, String> {
    let secs: u64 = std::env::var("WARM_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rounds: usize = std::env::var("WARM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // Another build (an earlier commit's, say) to compare with this one.
    let bin = std::env::var_os("WARM_PROXY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| exe.with_file_name("registry-proxy"));
    if !bin.is_file() {
        return Err(format!(
            "{} not found: run scripts/bench-warm.sh",
            bin.display()
        ));
    }
    let src = tempfile::tempdir().map_err(|e| e.to_string())?;
    let img = write_image(src.path(), "v1", 77, &[4096]);
    let up = TestRegistry::start()?;
    up.push(&img.layout, "v1", "bench/small")?;
    let blobs = src.path().join("blobs/sha256");
    let manifest_bytes = std::fs::read(blobs.join(img.digest.hex())).map_err(|e| e.to_string())?;
    let m: serde_json::Value =
        serde_json::from_slice(&manifest_bytes).map_err(|e| e.to_string())?;
    let config = m["config"]["digest"]
        .as_str()
        .ok_or("no config")?
        .to_owned();
    let config_size = m["config"]["size"].as_u64().unwrap_or(0);
    // nginx as deployed: its access log on (its default), to a file too.
    let (nginx_proc, ng_port) = nginx_with(&blobs, true)?;
    let running = proxy(&bin, &up)?;
    let port = running.port;
    let dist = TestRegistry::start_proxy(&up.url())?;
    let ours = format!("http://127.0.0.1:{port}/v2/bench/small");
    let theirs = format!("http://127.0.0.1:{}/v2/bench/small", dist.port());
    let ng = format!("http://127.0.0.1:{ng_port}");
    let by_digest = format!("{ours}/manifests/{}", img.digest);
    let by_tag = format!("{ours}/manifests/v1");
    let config_url = format!("{ours}/blobs/{config}");
    let layer_url = format!("{ours}/blobs/{}", img.layers[0].0);
    // Warm both proxies.
    let c = reqwest::blocking::Client::new();
    for u in [&by_digest, &by_tag, &config_url, &layer_url] {
        let _ = c
            .get(u)
            .header("Accept", MANIFEST)
            .send()
            .map_err(|e| e.to_string())?
            .bytes();
        let _ = c
            .get(u.replace(&ours, &theirs))
            .header("Accept", MANIFEST)
            .send()
            .map_err(|e| e.to_string())?
            .bytes();
    }
    std::thread::sleep(Duration::from_millis(500));
    if let Some(secs) = std::env::var("WARM_HOLD")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        // For profiling by hand: everything warm and running, nothing measured.
        eprintln!(
            "warm-small: holding {secs} s\n  ours (pid {}): {by_digest}\n  {config_url}\n  nginx: {ng}/{}\n  {ng}/{}",
            running.child.id(),
            img.digest.hex(),
            config.trim_start_matches("sha256:")
        );
        std::thread::sleep(Duration::from_secs(secs.min(3600)));
        return Ok(String::new());
    }
    type Case<'a> = (&'a str, String, bool, bool);
    let cases: Vec<Case> = vec![
        ("ours: manifest by digest", by_digest.clone(), false, true),
        (
            "nginx: the same manifest",
            format!("{ng}/{}", img.digest.hex()),
            false,
            false,
        ),
        (
            "distribution: manifest by digest",
            by_digest.replace(&ours, &theirs),
            false,
            true,
        ),
        ("ours: config blob GET", config_url.clone(), false, false),
        (
            "nginx: the same config",
            format!("{ng}/{}", config.trim_start_matches("sha256:")),
            false,
            false,
        ),
        (
            "distribution: config blob GET",
            config_url.replace(&ours, &theirs),
            false,
            false,
        ),
        ("ours: blob HEAD", layer_url.clone(), true, false),
        (
            "nginx: HEAD of the same file",
            format!("{ng}/{}", img.layers[0].0.hex()),
            true,
            false,
        ),
        (
            "distribution: blob HEAD",
            layer_url.replace(&ours, &theirs),
            true,
            false,
        ),
        (
            "ours: manifest by tag (revalidate)",
            by_tag.clone(),
            false,
            true,
        ),
    ];
    // Whose CPU each case spends: ours, nginx's master and workers, or the
    // distribution proxy's.
    let (our_pid, ng_pid, dist_pid) = (running.child.id(), nginx_proc.child.id(), dist.pid());
    let server_cpu = |name: &str| {
        if name.starts_with("nginx") {
            tree_cpu_seconds(ng_pid)
        } else if name.starts_with("distribution") {
            cpu_seconds(dist_pid)
        } else {
            cpu_seconds(our_pid)
        }
    };
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); cases.len()];
    let mut cpu_per_request: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut heads_per_sec = Vec::new();
    let started = Instant::now();
    for _ in 0..rounds {
        for (i, (name, url, head, accept)) in cases.iter().enumerate() {
            let before = up.requests("HEAD", "/manifests/");
            let cpu0 = server_cpu(name);
            let (rps, p99) = wrk(url, *head, *accept, secs).map_err(|e| format!("{name}: {e}"))?;
            let requests = rps * secs as f64;
            if requests > 0.0 {
                cpu_per_request[i].push((server_cpu(name) - cpu0) / requests * 1e6);
            }
            if name.contains("by tag") {
                let heads = up.requests("HEAD", "/manifests/") - before;
                heads_per_sec.push(heads as f64 / secs as f64);
            }
            results[i].0.push(rps);
            results[i].1.push(p99);
        }
    }
    let rps: Vec<f64> = results.iter().map(|r| median(&mut r.0.clone())).collect();
    let p99: Vec<f64> = results.iter().map(|r| median(&mut r.1.clone())).collect();
    let cpu: Vec<f64> = cpu_per_request
        .iter()
        .map(|c| median(&mut c.clone()))
        .collect();
    let mut t = format!(
        "Measured on {}, loopback, by `scripts/bench-warm.sh`: wrk -t2 -c64, {rounds} rounds of {secs} s per case, alternating; medians. Manifest {} B, config blob {config_size} B. Took {} s.\n\n",
        machine(),
        manifest_bytes.len(),
        started.elapsed().as_secs()
    );
    t.push_str(
        "| request | requests/s | p99 | server CPU per request | vs nginx | vs distribution |\n|---|---|---|---|---|---|\n",
    );
    for (i, (name, ..)) in cases.iter().enumerate() {
        let group = i / 3;
        let vs_nginx = if name.starts_with("ours") && i < 9 {
            format!("{:.2}x", rps[i] / rps[group * 3 + 1])
        } else {
            String::new()
        };
        let vs_dist = if name.starts_with("ours") && i < 9 {
            format!("{:.2}x", rps[i] / rps[group * 3 + 2])
        } else {
            String::new()
        };
        t.push_str(&format!(
            "| {name} | {:.0} | {:.2} ms | {:.1} µs | {vs_nginx} | {vs_dist} |\n",
            rps[i], p99[i], cpu[i]
        ));
    }
    t.push_str(&format!(
        "\nTag under revalidate vs the same manifest by digest: {:.2}x the throughput; {:.1} upstream HEADs/s for the one hot tag.\n",
        rps[9] / rps[0],
        median(&mut heads_per_sec)
    ));
    Ok(t)
}
