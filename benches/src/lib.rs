//! # benches
//!
//! Criterion benchmarks of the library (`cargo bench -p benches`) and the
//! tools that turn their results into the ratios recorded in
//! `BENCHMARKS.md` (`cargo run -p benches --bin bench-report`).
//!
//! The helpers here build the inputs the benches share, so that every
//! compared pair runs on the same data in the same process.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

use bytes::Bytes;
use cache_core::RuleSpec;

/// `n` rules shaped like a large organisation's configuration: half exact
/// repositories, half namespace wildcards, spread over several registries.
pub fn rule_specs(n: usize) -> Vec<RuleSpec> {
    (0..n)
        .map(|i| {
            let reg = [
                "docker.io",
                "ghcr.io",
                "quay.io",
                "registry.example.com:5000",
            ][i % 4];
            if i % 2 == 0 {
                RuleSpec::new(
                    format!("exact-{i}"),
                    format!("{reg}/team{i}/service"),
                    format!("team{i}/service"),
                )
            } else {
                RuleSpec::new(
                    format!("ns-{i}"),
                    format!("{reg}/org{i}/*"),
                    format!("mirror/org{i}/*"),
                )
            }
        })
        .collect()
}

/// Deterministic content of `len` bytes, as 1 MiB `Bytes` chunks.
pub fn chunks(len: usize, chunk: usize) -> Vec<Bytes> {
    let data = cache_core_content(len);
    (0..len)
        .step_by(chunk)
        .map(|i| data.slice(i..(i + chunk).min(len)))
        .collect()
}

fn cache_core_content(len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    Bytes::from(v)
}
