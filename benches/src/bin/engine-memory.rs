//! Peak memory of 16 concurrent cold readers of one blob through the engine
//! on FsStore, for two blob sizes, each in a fresh child process (VmHWM is
//! per process). Bounded memory means the peak does not grow with the blob.
//!
//! Usage: `cargo run --release -p benches --bin engine-memory` prints the
//! table and writes it into the `memory` section of BENCHMARKS.md.

use std::process::{Command, ExitCode};
use std::sync::Arc;

use benches::{SyntheticUpstream, engine, pull, vm_hwm_kib};
use cache_store::FsStore;

const READERS: usize = 16;

fn child(mib: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let up = Arc::new(SyntheticUpstream::new(mib * 1024 * 1024, 64 * 1024));
    let d = up.digest().clone();
    let before = vm_hwm_kib(std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    rt.block_on(async {
        let store = Arc::new(FsStore::open(dir.path()).await.unwrap());
        let cache = engine(store, up.clone());
        let mut tasks = Vec::new();
        for _ in 0..READERS {
            let cache = cache.clone();
            let d = d.clone();
            tasks.push(tokio::spawn(async move { pull(&cache, &d).await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), mib * 1024 * 1024);
        }
    });
    let gets = up.blob_gets.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "{mib} {before} {} {gets} {:.3}",
        vm_hwm_kib(std::process::id()),
        start.elapsed().as_secs_f64()
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(args[i + 1].parse().expect("size in MiB"));
        return ExitCode::SUCCESS;
    }
    let exe = std::env::current_exe().expect("own path");
    let mut table = String::from(
        "| blob | readers | upstream GETs | wall time | peak RSS (VmHWM) | peak RSS with MALLOC_ARENA_MAX=2 | RSS before the pull |\n|---|---|---|---|---|---|---|\n",
    );
    let mut peaks: Vec<(u64, u64)> = Vec::new();
    for mib in [64u64, 256, 1024] {
        let run = |arenas: Option<&str>| -> Result<Vec<String>, String> {
            let mut cmd = Command::new(&exe);
            cmd.args(["--child", &mib.to_string()]);
            if let Some(a) = arenas {
                cmd.env("MALLOC_ARENA_MAX", a);
            }
            let out = cmd.output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            Ok(String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect())
        };
        let (f, g) = match (run(None), run(Some("2"))) {
            (Ok(f), Ok(g)) => (f, g),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("engine-memory: child for {mib} MiB failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        let kib = |v: &str| v.parse::<f64>().unwrap_or(0.0) / 1024.0;
        peaks.push((
            f[2].parse::<u64>().unwrap_or(0),
            g[2].parse::<u64>().unwrap_or(0),
        ));
        table.push_str(&format!(
            "| {mib} MiB | {READERS} | {} | {} s | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
            f[3],
            f[4],
            kib(&f[2]),
            kib(&g[2]),
            kib(&f[1])
        ));
    }
    let (first, last) = (peaks[0], peaks[peaks.len() - 1]);
    table.push_str(&format!(
        "\nPeak at 1024 MiB / peak at 64 MiB: {:.2}x by default, {:.2}x with two malloc arenas (flat means memory does not grow with the blob: \
         followers read the shared window or the staged file, never a copy of the blob). \
         glibc gives blocking-pool threads their own arenas, which can inflate the default column; registry-proxy caps arenas at two. \
         Command: `cargo run --release -p benches --bin engine-memory`.\n",
        last.0 as f64 / first.0 as f64,
        last.1 as f64 / first.1 as f64
    ));
    print!("{table}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).expect("BENCHMARKS.md");
    let (b, e) = ("<!-- memory:begin -->", "<!-- memory:end -->");
    match (doc.find(b), doc.find(e)) {
        (Some(i), Some(j)) => {
            let new = format!("{}{b}\n{table}{}", &doc[..i], &doc[j..]);
            std::fs::write(&path, new).expect("write BENCHMARKS.md");
        }
        _ => eprintln!("engine-memory: BENCHMARKS.md has no memory markers; printed only"),
    }
    ExitCode::SUCCESS
}
