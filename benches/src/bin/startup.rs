//! Start-up and reload of the release `registry-proxy` with 10, 10,000,
//! 30,000 and 100,000 caching rules: wall time until it answers, the CPU
//! seconds that took, peak RSS, and the wall time of a reload of the same
//! file (SIGHUP, measured until the reload counter moves). Rules are shaped
//! like a large organisation's (half exact, half namespace wildcards, some
//! with credentials, some with their own policy), over four registries.
//!
//! Run: `cargo build --release -p registry-proxy -p benches --bin startup`
//! then `target/release/startup`. Loopback only; every loop is bounded.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use benches::{cpu_seconds, machine, vm_hwm_kib};
use cache_upstream::testing::free_port;

fn config(n: usize, port: u16) -> String {
    let mut s = format!("listen = \"127.0.0.1:{port}\"\n[storage]\nbackend = \"memory\"\n");
    for reg in [
        "docker.io",
        "ghcr.io",
        "quay.io",
        "registry.example.com:5000",
    ] {
        let _ = write!(s, "[[registry]]\nhost = \"{reg}\"\n");
    }
    s.push_str("[[credentials]]\nname = \"team\"\nusername = \"u\"\npassword = \"p\"\n");
    for (i, spec) in benches::rule_specs(n).into_iter().enumerate() {
        let _ = write!(
            s,
            "[[rule]]\nname = \"{}\"\nsource = \"{}\"\ntarget = \"{}\"\n",
            spec.name, spec.source, spec.target
        );
        if i % 10 == 0 {
            s.push_str("credentials = \"team\"\n");
        }
        if i % 7 == 0 {
            s.push_str("tag_freshness = \"ttl:10m\"\n");
        }
    }
    s
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Resident memory (VmRSS) of a process, in KiB; 0 if unreadable.
fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn reloads(port: u16) -> u64 {
    get(port, "/metrics")
        .and_then(|m| {
            m.lines()
                .find_map(|l| {
                    l.strip_prefix("registry_proxy_config_reloads_total{result=\"applied\"} ")
                })
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let bin = std::env::var("REGISTRY_PROXY_BIN")
        .unwrap_or_else(|_| "target/release/registry-proxy".to_owned());
    println!("Measured on {}, release build, memory store.\n", machine());
    println!(
        "| rules | config file | until it answers | CPU until then | RSS then / peak | reload (SIGHUP) | RSS after the reload / peak |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in [10usize, 10_000, 30_000, 100_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let path = dir.path().join("proxy.toml");
        let text = config(n, port);
        std::fs::write(&path, &text).expect("config");
        let started = Instant::now();
        let mut child = match Command::new(&bin)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "startup: cannot run {bin}: {e} (cargo build --release -p registry-proxy)"
                );
                return ExitCode::FAILURE;
            }
        };
        let pid = child.id();
        let deadline = started + Duration::from_secs(300);
        while get(port, "/v2/").is_none() {
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                eprintln!("startup: {n} rules: the server did not come up");
                let _ = child.kill();
                return ExitCode::FAILURE;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let up = started.elapsed();
        let cpu = cpu_seconds(pid);
        let rss = vm_hwm_kib(pid);
        let resident = vm_rss_kib(pid);
        // Reload the same file and time until the counter moves.
        let reload_started = Instant::now();
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        while reloads(port) < 1 && reload_started.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let reload = reload_started.elapsed();
        let hwm_after = vm_hwm_kib(pid);
        let resident_after = vm_rss_kib(pid);
        println!(
            "| {n} | {:.1} MiB | {:.3} s | {cpu:.2} s | {:.1} / {:.1} MiB | {:.3} s | {:.1} / {:.1} MiB |",
            text.len() as f64 / (1 << 20) as f64,
            up.as_secs_f64(),
            resident as f64 / 1024.0,
            rss as f64 / 1024.0,
            reload.as_secs_f64(),
            resident_after as f64 / 1024.0,
            hwm_after as f64 / 1024.0,
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    ExitCode::SUCCESS
}
