//! Reads criterion's estimates from the last `cargo bench -p benches` run
//! and writes the figures and ratios into the `core` section of
//! `BENCHMARKS.md` (between its `<!-- core:begin -->` and
//! `<!-- core:end -->` markers), with the date and the machine.
//!
//! Usage: `cargo run -p benches --bin bench-report [-- --print]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use benches::machine;

/// The median time of one benchmark, in nanoseconds.
fn median_ns(criterion: &Path, id: &str) -> Result<f64, String> {
    let path = criterion.join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (run `cargo bench -p benches` first)",
            path.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    v["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{}: no median", path.display()))
}

fn mib_s(ns: f64, bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0) / (ns / 1e9)
}

fn report(criterion: &Path) -> Result<String, String> {
    const BIG: f64 = 256.0 * 1024.0 * 1024.0;
    let mut out = String::new();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    out.push_str(&format!(
        "Measured {date} on {}, by `cargo bench -p benches --bench core` then `cargo run -p benches --bin bench-report`. Medians; ratios are of figures from the same run.\n\n",
        machine()
    ));

    let r10 = median_ns(criterion, "rule_lookup/10")?;
    let r1k = median_ns(criterion, "rule_lookup/1000")?;
    let r100k = median_ns(criterion, "rule_lookup/100000")?;
    out.push_str("| rule lookup (3 names: wildcard hit, exact hit, miss) | time | vs 10 rules |\n|---|---|---|\n");
    for (n, t) in [(10, r10), (1_000, r1k), (100_000, r100k)] {
        out.push_str(&format!("| {n} rules | {:.0} ns | {:.2}x |\n", t, t / r10));
    }
    let target = if r100k / r10 <= 2.0 { "met" } else { "MISSED" };
    out.push_str(&format!(
        "\nTarget: 100,000 rules <= 2x the time at 10 rules: {:.2}x, {target}.\n\n",
        r100k / r10
    ));

    let raw = median_ns(criterion, "hash_256MiB/raw_sha2")?;
    let ver = median_ns(criterion, "hash_256MiB/verifying_stream")?;
    out.push_str(
        "| 256 MiB in 1 MiB chunks | time | throughput | vs raw sha2 |\n|---|---|---|---|\n",
    );
    out.push_str(&format!(
        "| raw sha2 | {:.1} ms | {:.0} MiB/s | 1.00x |\n",
        raw / 1e6,
        mib_s(raw, BIG)
    ));
    out.push_str(&format!(
        "| VerifyingStream | {:.1} ms | {:.0} MiB/s | {:.3}x |\n",
        ver / 1e6,
        mib_s(ver, BIG),
        raw / ver
    ));
    let target = if raw / ver >= 0.95 { "met" } else { "MISSED" };
    out.push_str(&format!(
        "\nTarget: verifying stream >= 0.95x raw sha2 throughput: {:.3}x, {target}.\n\n",
        raw / ver
    ));

    let w = median_ns(criterion, "fs_store_256MiB/write_commit")?;
    let r = median_ns(criterion, "fs_store_256MiB/read")?;
    out.push_str("| FsStore, 256 MiB | time | throughput | vs raw sha2 |\n|---|---|---|---|\n");
    out.push_str(&format!(
        "| stage + write + verify + fsync + commit | {:.1} ms | {:.0} MiB/s | {:.2}x |\n",
        w / 1e6,
        mib_s(w, BIG),
        raw / w
    ));
    out.push_str(&format!(
        "| read (1 MiB chunks) | {:.1} ms | {:.0} MiB/s | {:.2}x |\n",
        r / 1e6,
        mib_s(r, BIG),
        raw / r
    ));
    Ok(out)
}

fn engine_report(criterion: &Path) -> Result<String, String> {
    const BIG: f64 = 256.0 * 1024.0 * 1024.0;
    let base = median_ns(criterion, "engine_256MiB/upstream_to_sha2")?;
    let mut out = String::from(
        "Measured by `cargo bench -p benches --bench engine` then `cargo run -p benches --bin bench-report`. \
         A synthetic in-process upstream serves 256 MiB in 64 KiB chunks; the baseline drains it straight into sha2, \
         which is what a verified direct download costs. Medians from one run.\n\n\
         | 256 MiB blob | time | throughput | vs upstream->sha2 |\n|---|---|---|---|\n",
    );
    for (id, label, bytes) in [
        (
            "upstream_to_sha2",
            "upstream drained into sha2 (baseline)",
            BIG,
        ),
        (
            "cold_memory",
            "cold, MemoryStore (fetch, verify, commit, stream)",
            BIG,
        ),
        (
            "cold_fs",
            "cold, FsStore (fetch, verify, fsync, rename, stream)",
            BIG,
        ),
        (
            "cold_fs_16_readers",
            "cold, FsStore, 16 concurrent readers (16 x 256 MiB delivered)",
            16.0 * BIG,
        ),
        (
            "warm_memory",
            "warm, MemoryStore (zero-copy slices of stored bytes: bookkeeping only)",
            BIG,
        ),
        ("warm_fs", "warm, FsStore", BIG),
    ] {
        let t = median_ns(criterion, &format!("engine_256MiB/{id}"))?;
        out.push_str(&format!(
            "| {label} | {:.1} ms | {:.0} MiB/s | {:.2}x |\n",
            t / 1e6,
            mib_s(t, bytes),
            base / t * (bytes / BIG)
        ));
    }
    Ok(out)
}

fn splice(doc: &str, section: &str, body: &str) -> Result<String, String> {
    let begin = format!("<!-- {section}:begin -->");
    let end = format!("<!-- {section}:end -->");
    let b = doc
        .find(&begin)
        .ok_or_else(|| format!("BENCHMARKS.md has no {begin} marker"))?;
    let e = doc
        .find(&end)
        .ok_or_else(|| format!("BENCHMARKS.md has no {end} marker"))?;
    Ok(format!("{}{begin}\n{body}{}", &doc[..b], &doc[e..]))
}

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let body = match report(&target.join("criterion")) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench-report: {e}");
            return ExitCode::FAILURE;
        }
    };
    if std::env::args().any(|a| a == "--print") {
        print!("{body}");
        return ExitCode::SUCCESS;
    }
    let engine = match engine_report(&target.join("criterion")) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("bench-report: engine section left as it is: {e}");
            None
        }
    };
    let path = root.join("BENCHMARKS.md");
    let result = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e}", path.display()))
        .and_then(|doc| splice(&doc, "core", &body))
        .and_then(|doc| match &engine {
            Some(e) => splice(&doc, "engine", e),
            None => Ok(doc),
        })
        .and_then(|doc| std::fs::write(&path, doc).map_err(|e| format!("{}: {e}", path.display())));
    match result {
        Ok(()) => {
            print!("{body}{}", engine.unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}
