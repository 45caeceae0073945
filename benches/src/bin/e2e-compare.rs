//! End-to-end comparison on loopback: our `registry-proxy` (release build,
//! filesystem store) against the CNCF distribution registry in proxy mode,
//! both in front of the same upstream (the Debian distribution registry),
//! with nginx serving the same blob file as the ceiling for a warm read,
//! and [`benches::floor`] doing the least work a verifying, storing proxy
//! must do for a cold GET (in a child process: this binary with `--floor`)
//! as the floor for the proxy's CPU.
//!
//! Run with `scripts/bench-e2e.sh` (builds, installs what is missing, runs).
//! Every server listens on 127.0.0.1; every loop is bounded; every process
//! started here is stopped on exit, also on failure.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use benches::floor::{FloorRun, serve_one};
use benches::{cpu_seconds, machine, median, nginx, vm_hwm_kib};
use cache_upstream::testing::RegistryProxy;
use cache_upstream::testing::{TestRegistry, skopeo, write_image};
use futures::StreamExt;

/// Runs per measurement; `E2E_RUNS` overrides it (for quick looks, not for BENCHMARKS.md).
fn runs() -> usize {
    std::env::var("E2E_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5)
}
const READERS: usize = 16;
/// Warm GETs per run, each followed by one from nginx, so both are
/// measured in the same moments of a run. nginx's times on loopback are
/// bimodal (some GETs take half as long as others), so a median needs a few.
const WARM: usize = 5;
/// Rounds of (d) per run, each on a fresh cache and process.
const CONC_ROUNDS: usize = 2;
const LAYER: usize = 256 * 1024 * 1024;
const REPO: &str = "bench/big";

/// Which proxy a run measures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Ours,
    Distribution,
}

/// A proxy with a fresh, empty cache.
struct Running {
    port: u16,
    pid: u32,
    _ours: Option<RegistryProxy>,
    _dist: Option<TestRegistry>,
}

fn start(which: Which, up: &TestRegistry, bin: &Path) -> Result<Running, String> {
    match which {
        Which::Distribution => {
            let r = TestRegistry::start_proxy(&up.url())?;
            Ok(Running {
                port: r.port(),
                pid: r.pid(),
                _ours: None,
                _dist: Some(r),
            })
        }
        Which::Ours => {
            let body = format!(
                "[storage]\npath = \"store\"\n{extra}[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n[[rule]]\nname = \"bench\"\nsource = \"{h}/bench/*\"\ntarget = \"bench/*\"\n",
                h = up.host(),
                u = up.url(),
                extra = std::env::var("E2E_STORAGE_EXTRA").unwrap_or_default()
            );
            let p = RegistryProxy::start(bin, &body, "warn", false)?;
            let (port, pid) = (p.port, p.child.id());
            Ok(Running {
                port,
                pid,
                _ours: Some(p),
                _dist: None,
            })
        }
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Result<(Duration, u64), String> {
    let t = Instant::now();
    let r = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("GET {url}: {}", r.status()));
    }
    let mut n = 0u64;
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        n += c.map_err(|e| e.to_string())?.len() as u64;
    }
    Ok((t.elapsed(), n))
}

/// Waits (at most 20 s) until the proxy `pid` is done with a miss: the
/// upstream's blob GETs and the proxy's CPU time both unchanged for half a
/// second. Returns the GETs so far and the proxy's CPU seconds then.
async fn settle(up: &TestRegistry, pid: u32) -> (usize, f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (up.blob_gets(), cpu_seconds(pid));
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = (up.blob_gets(), cpu_seconds(pid));
        if (now.0 == last.0 && now.1 - last.1 < 0.005) || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[derive(Default)]
struct Series {
    cold: Vec<f64>,
    /// CPU seconds the proxy, the upstream and this client spent on a cold GET.
    cold_cpu: Vec<[f64; 3]>,
    /// The proxy's CPU seconds from the cold GET until it was done with the
    /// miss (its blob stored).
    stored_cpu: Vec<f64>,
    warm: Vec<f64>,
    /// nginx's warm GETs, each right after one of `warm`.
    nginx: Vec<f64>,
    conc: Vec<f64>,
    /// CPU seconds the proxy, the upstream and this client spent on (d).
    conc_cpu: Vec<[f64; 3]>,
    conc_gets: Vec<f64>,
    cold_gets: Vec<f64>,
    rss: Vec<f64>,
    skopeo_cold: Vec<f64>,
    skopeo_warm: Vec<f64>,
}

async fn measure(
    which: Which,
    up: &TestRegistry,
    bin: &Path,
    (blob, size): (&str, u64),
    nginx_url: &str,
    s: &mut Series,
) -> Result<(), String> {
    let client = reqwest::Client::new();
    // (b) cold and (c) warm, on a fresh cache.
    let p = start(which, up, bin)?;
    let url = format!("http://127.0.0.1:{}/v2/{REPO}/blobs/{blob}", p.port);
    let before = up.blob_gets();
    let me = std::process::id();
    let cpu = || [cpu_seconds(p.pid), cpu_seconds(up.pid()), cpu_seconds(me)];
    let cpu0 = cpu();
    let (t, n) = get(&client, &url).await?;
    if n != size {
        return Err(format!("{which:?} cold GET returned {n} of {size} bytes"));
    }
    s.cold.push(t.as_secs_f64());
    let cpu1 = cpu();
    s.cold_cpu.push(std::array::from_fn(|i| cpu1[i] - cpu0[i]));
    // Distribution stores the blob after serving it, from a second upstream
    // GET of its own; ours commits after the last byte. Count both, and
    // the CPU, once each proxy is done.
    let (gets, stored_cpu) = settle(up, p.pid).await;
    s.cold_gets.push((gets - before) as f64);
    s.stored_cpu.push(stored_cpu - cpu0[0]);
    for _ in 0..WARM {
        let (t, n) = get(&client, &url).await?;
        if n != size {
            return Err(format!("{which:?} warm GET returned {n} of {size} bytes"));
        }
        s.warm.push(t.as_secs_f64());
        let (t, n) = get(&client, nginx_url).await?;
        if n != size {
            return Err(format!("nginx returned {n} of {size} bytes"));
        }
        s.nginx.push(t.as_secs_f64());
    }
    drop(p);

    // (d) 16 concurrent cold GETs, on a fresh cache and process; (f) its peak RSS.
    for _ in 0..CONC_ROUNDS {
        let p = start(which, up, bin)?;
        let url = format!("http://127.0.0.1:{}/v2/{REPO}/blobs/{blob}", p.port);
        let before = up.blob_gets();
        let cpu = || [cpu_seconds(p.pid), cpu_seconds(up.pid()), cpu_seconds(me)];
        let cpu0 = cpu();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..READERS {
            let (c, u) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move { get(&c, &u).await }));
        }
        for task in tasks {
            let (_, n) = task.await.map_err(|e| e.to_string())??;
            if n != size {
                return Err(format!(
                    "{which:?} concurrent GET returned {n} of {size} bytes"
                ));
            }
        }
        s.conc.push(t.elapsed().as_secs_f64());
        let cpu1 = cpu();
        s.conc_cpu.push(std::array::from_fn(|i| cpu1[i] - cpu0[i]));
        s.rss.push(vm_hwm_kib(p.pid) as f64 / 1024.0);
        let (gets, _) = settle(up, p.pid).await;
        s.conc_gets.push((gets - before) as f64);
        drop(p);
    }

    // (e) skopeo copy of the whole image, cold then warm.
    let p = start(which, up, bin)?;
    for cold in [true, false] {
        let dest = tempfile::tempdir().map_err(|e| e.to_string())?;
        let t = Instant::now();
        let args = vec![
            "copy".to_owned(),
            "--insecure-policy".to_owned(),
            "--src-tls-verify=false".to_owned(),
            format!("docker://127.0.0.1:{}/{REPO}:v1", p.port),
            format!("dir:{}", dest.path().display()),
        ];
        tokio::task::spawn_blocking(move || skopeo(&args))
            .await
            .map_err(|e| e.to_string())??;
        let secs = t.elapsed().as_secs_f64();
        if cold {
            s.skopeo_cold.push(secs)
        } else {
            s.skopeo_warm.push(secs)
        }
    }
    drop(p);
    Ok(())
}

/// One cold GET through the floor ([`benches::floor`]), in a child
/// process of its own (this binary again, with `--floor`), so that its CPU
/// is only the floor's. Returns what the child measured.
async fn floor_get(
    client: &reqwest::Client,
    up: &TestRegistry,
    path: &str,
    size: u64,
) -> Result<FloorRun, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--floor", &format!("127.0.0.1:{}", up.port()), path])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = async {
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let port: u16 = line
            .trim()
            .parse()
            .map_err(|_| format!("floor: expected a port, got {line:?}"))?;
        let (_, n) = get(client, &format!("http://127.0.0.1:{port}{path}")).await?;
        if n != size {
            return Err(format!("floor GET returned {n} of {size} bytes"));
        }
        line.clear();
        // The child exits once its file is durable; its sockets time out
        // after 30 s, so this read ends.
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        FloorRun::from_line(line.trim())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The child side of [`floor_get`]: `--floor <upstream host:port> <path>`.
fn floor_child(upstream: &str, path: &str) -> Result<(), String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    println!("{port}");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let run = serve_one(&listener, upstream, path, dir.path())?;
    println!("{}", run.to_line());
    Ok(())
}

async fn run() -> Result<String, String> {
    let started = Instant::now();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("registry-proxy");
    if !bin.is_file() {
        return Err(format!(
            "{} not found: run scripts/bench-e2e.sh (it builds it)",
            bin.display()
        ));
    }
    eprintln!(
        "e2e-compare: building a test image with a {} MiB layer",
        LAYER >> 20
    );
    let src = tempfile::tempdir().map_err(|e| e.to_string())?;
    let img = write_image(src.path(), "v1", 99, &[LAYER]);
    let up = TestRegistry::start()?;
    up.push(&img.layout, "v1", REPO)?;
    let (blob, size) = img.layers[0].clone();
    // nginx serves the very same bytes, from the layout.
    let root = src.path().join("blobs/sha256");
    let (_nginx, nginx_port) = nginx(&root)?;

    let client = reqwest::Client::new();
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/{}", blob.hex());
    let mut direct = Vec::new();
    let mut direct_cpu = Vec::new();
    let mut floors = Vec::new();
    let mut ours = Series::default();
    let mut dist = Series::default();
    for i in 0..runs() {
        eprintln!(
            "e2e-compare: run {}/{} ({:.0} s so far)",
            i + 1,
            runs(),
            started.elapsed().as_secs_f64()
        );
        // (a) direct from the upstream.
        let me = std::process::id();
        let cpu0 = [cpu_seconds(up.pid()), cpu_seconds(me)];
        let (t, n) = get(&client, &format!("{}/v2/{REPO}/blobs/{blob}", up.url())).await?;
        if n != size {
            return Err(format!("direct GET returned {n} of {size} bytes"));
        }
        direct.push(t.as_secs_f64());
        direct_cpu.push([cpu_seconds(up.pid()) - cpu0[0], cpu_seconds(me) - cpu0[1]]);
        // The floor's GET, just before the proxies' cold GETs.
        let path = format!("/v2/{REPO}/blobs/{blob}");
        floors.push(floor_get(&client, &up, &path, size).await?);
        // Alternate which proxy goes first.
        let order = if i % 2 == 0 {
            [Which::Ours, Which::Distribution]
        } else {
            [Which::Distribution, Which::Ours]
        };
        for w in order {
            let s = if w == Which::Ours {
                &mut ours
            } else {
                &mut dist
            };
            measure(w, &up, &bin, (blob.as_str(), size), &nginx_url, s).await?;
        }
        if started.elapsed() > Duration::from_secs(270) {
            eprintln!(
                "e2e-compare: stopping after {} runs to stay under 5 minutes",
                i + 1
            );
            break;
        }
    }
    let mib = size as f64 / (1024.0 * 1024.0);
    let d = median(&mut direct);
    let fl = |f: fn(&FloorRun) -> f64| median(&mut floors.iter().map(f).collect::<Vec<_>>());
    let (f_wall, f_served, f_stored) = (fl(|r| r.wall), fl(|r| r.served_cpu), fl(|r| r.stored_cpu));
    // nginx's figure is taken from the GETs interleaved with ours.
    let ng = median(&mut ours.nginx);
    let col = |v: &[[f64; 3]], i: usize| median(&mut v.iter().map(|c| c[i]).collect::<Vec<_>>());
    let (d_up, d_client) = (
        median(&mut direct_cpu.iter().map(|c| c[0]).collect::<Vec<_>>()),
        median(&mut direct_cpu.iter().map(|c| c[1]).collect::<Vec<_>>()),
    );
    let (oc_proxy, oc_up, oc_client) = (
        col(&ours.cold_cpu, 0),
        col(&ours.cold_cpu, 1),
        col(&ours.cold_cpu, 2),
    );
    let (dc_proxy, dc_up, dc_client) = (
        col(&dist.cold_cpu, 0),
        col(&dist.cold_cpu, 1),
        col(&dist.cold_cpu, 2),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let floor = (oc_proxy + oc_up + oc_client) / cores;
    let m = |v: &mut Vec<f64>| median(v);
    let (oc, dc) = (m(&mut ours.cold), m(&mut dist.cold));
    let (ow, dw) = (m(&mut ours.warm), m(&mut dist.warm));
    let (o16, d16) = (m(&mut ours.conc), m(&mut dist.conc));
    let o16c: [f64; 3] = std::array::from_fn(|i| col(&ours.conc_cpu, i));
    let d16c: [f64; 3] = std::array::from_fn(|i| col(&dist.conc_cpu, i));
    let (og, dg) = (m(&mut ours.cold_gets), m(&mut dist.cold_gets));
    let (os, ds) = (m(&mut ours.stored_cpu), m(&mut dist.stored_cpu));
    let (og16, dg16) = (m(&mut ours.conc_gets), m(&mut dist.conc_gets));
    let (orss, drss) = (m(&mut ours.rss), m(&mut dist.rss));
    let top = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (orss_max, drss_max) = (top(&ours.rss), top(&dist.rss));
    let (osc, dsc) = (m(&mut ours.skopeo_cold), m(&mut dist.skopeo_cold));
    let (osw, dsw) = (m(&mut ours.skopeo_warm), m(&mut dist.skopeo_warm));
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {date} on {}, loopback, by `scripts/bench-e2e.sh`: a {mib:.0} MiB layer, medians of {} runs, the two proxies alternating run by run, each cold figure on a fresh cache and process ({CONC_ROUNDS} rounds of the concurrent GETs per run); warm figures are medians of {WARM} GETs per run, each followed by one from nginx, so ours and nginx's are measured in the same moments. CPU is user + system time of each process (all threads) read from /proc around the GET, and for the proxy also until it is done with the miss (upstream GETs and its CPU unchanged for 0.5 s), when the upstream GETs are counted too. Ours hashes and stores the bytes as they pass and sends the last one only once the blob verified; distribution streams the client's bytes from one upstream GET unchecked and stores the blob from a second GET, after the client's. Took {:.0} s.\n",
        machine(),
        ours.cold.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| measurement | registry-proxy | distribution proxy | ours / distribution |\n|---|---|---|---|"
    );
    let _ = writeln!(out, "| (a) direct GET from the upstream | {d:.3} s | | |");
    let _ = writeln!(
        out,
        "| (b) cold GET | {oc:.3} s ({:.2}x direct) | {dc:.3} s ({:.2}x direct) | {:.2}x time |",
        oc / d,
        dc / d,
        oc / dc
    );
    let _ = writeln!(
        out,
        "| (a) CPU seconds during a direct GET: upstream + client | {d_up:.2} + {d_client:.2} | | |"
    );
    let _ = writeln!(
        out,
        "| (b) CPU seconds during a cold GET: proxy + upstream + client | {oc_proxy:.2} + {oc_up:.2} + {oc_client:.2} | {dc_proxy:.2} + {dc_up:.2} + {dc_client:.2} | {:.2}x proxy CPU |",
        oc_proxy / dc_proxy
    );
    // The same floor for the direct GET and for distribution's cold GET:
    // how close a transfer with no proxy, and the peer, come to theirs.
    let d_floor = (d_up + d_client) / cores;
    let d_cold_floor = (dc_proxy + dc_up + dc_client) / cores;
    let _ = writeln!(
        out,
        "| (a) direct GET's CPU floor on {cores:.0} cores ((upstream + client CPU) / cores) | {d_floor:.3} s (the direct GET took {:.2}x it) | | |",
        d / d_floor
    );
    let _ = writeln!(
        out,
        "| (b) cold GET's CPU floor on {cores:.0} cores (all CPU above / cores) | {floor:.3} s (the GET took {:.2}x it) | {d_cold_floor:.3} s (the GET took {:.2}x it) | |",
        oc / floor,
        dc / d_cold_floor
    );
    let _ = writeln!(
        out,
        "| (b) proxy CPU seconds per cold miss, until its blob is stored | {os:.2} | {ds:.2} | {:.2}x |",
        os / ds
    );
    let _ = writeln!(
        out,
        "| (b) the floor, measured: one thread receiving, hashing, writing the file, sending, then fsync and rename (`benches::floor`) | {f_stored:.2} CPU seconds ({f_served:.2} until the last byte), its GET {f_wall:.3} s (our cold GET took {:.2}x it) | | |",
        oc / f_wall
    );
    let _ = writeln!(
        out,
        "| (b) proxy CPU per cold miss / the measured floor's | {:.2}x until stored, {:.2}x until the last byte | {:.2}x until stored | |",
        os / f_stored,
        oc_proxy / f_served,
        ds / f_stored
    );
    let _ = writeln!(
        out,
        "| (b) upstream blob GETs per cold miss | {og:.0} | {dg:.0} | |"
    );
    let _ = writeln!(
        out,
        "| (c) warm GET | {ow:.3} s, {:.0} MiB/s | {dw:.3} s, {:.0} MiB/s | {:.2}x throughput |",
        mib / ow,
        mib / dw,
        dw / ow
    );
    let _ = writeln!(
        out,
        "| (d) {READERS} concurrent cold GETs, wall time | {o16:.3} s | {d16:.3} s | {:.2}x time |",
        o16 / d16
    );
    let _ = writeln!(
        out,
        "| (d) CPU seconds during them: proxy + upstream + clients | {:.2} + {:.2} + {:.2} | {:.2} + {:.2} + {:.2} | {:.2}x proxy CPU |",
        o16c[0],
        o16c[1],
        o16c[2],
        d16c[0],
        d16c[1],
        d16c[2],
        o16c[0] / d16c[0]
    );
    let _ = writeln!(
        out,
        "| (d) upstream blob GETs for {READERS} cold clients | {og16:.0} | {dg16:.0} | |"
    );
    let _ = writeln!(
        out,
        "| (e) skopeo copy, cold | {osc:.3} s | {dsc:.3} s | {:.2}x time |",
        osc / dsc
    );
    let _ = writeln!(
        out,
        "| (e) skopeo copy, warm | {osw:.3} s | {dsw:.3} s | {:.2}x time |",
        osw / dsw
    );
    let _ = writeln!(
        out,
        "| (f) peak RSS (VmHWM) during (d): median, highest | {orss:.1} MiB, {orss_max:.1} MiB | {drss:.1} MiB, {drss_max:.1} MiB | {:.2}x |",
        orss / drss
    );
    let _ = writeln!(
        out,
        "| (g) warm GET from nginx (sendfile), interleaved with ours | {ng:.3} s, {:.0} MiB/s | | ours {:.2}x nginx throughput |",
        mib / ng,
        ng / ow
    );
    // Each proxy against the nginx GETs taken in its own moments: the two
    // proxies' warm GETs run minutes apart, and single GETs vary.
    let ng_d = median(&mut dist.nginx);
    let _ = writeln!(
        out,
        "| (g) warm GET from nginx, interleaved with distribution's | | {ng_d:.3} s, {:.0} MiB/s | distribution {:.2}x nginx throughput |",
        mib / ng_d,
        ng_d / dw
    );
    let _ = writeln!(
        out,
        "\nTargets: 1 upstream GET per cold miss ({og:.0}) and for {READERS} clients ({og16:.0}); cold <= 1.0x distribution ({:.2}x) and within 1.2x of the CPU floor (the proxy's CPU per miss {:.2}x the measured floor's; the GET's time {:.2}x all CPU over {cores:.0} cores); {READERS}-concurrent <= 0.4x distribution ({:.2}x); warm >= 1.2x distribution ({:.2}x) and >= 0.9x nginx ({:.2}x); peak RSS <= 32 MiB (at most {orss_max:.1} MiB).",
        oc / dc,
        os / f_stored,
        oc / floor,
        o16 / d16,
        dw / ow,
        ng / ow
    );
    Ok(out)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, upstream, path] = &args[..]
        && flag == "--floor"
    {
        return match floor_child(upstream, path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("e2e-compare --floor: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let table = match run().await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("e2e-compare: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{table}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let Ok(doc) = std::fs::read_to_string(&path) else {
        return ExitCode::SUCCESS;
    };
    let (b, e) = ("<!-- e2e:begin -->", "<!-- e2e:end -->");
    if let (Some(i), Some(j)) = (doc.find(b), doc.find(e)) {
        let _ = std::fs::write(&path, format!("{}{b}\n{table}{}", &doc[..i], &doc[j..]));
    }
    ExitCode::SUCCESS
}
