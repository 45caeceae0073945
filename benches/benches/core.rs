//! Library benchmarks: rule lookup scaling, the verifying stream against raw
//! sha2 on the same chunks, and FsStore write+commit and read of 256 MiB.

use std::hint::black_box;

use benches::{chunks, rule_specs};
use cache_core::{BlobStore, Digest, RepoName, RuleSet, VerifyingStream};
use cache_store::FsStore;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use sha2::Digest as _;

const BIG: usize = 256 * 1024 * 1024;
const MIB: usize = 1024 * 1024;

fn rule_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("rule_lookup");
    for n in [10usize, 1_000, 100_000] {
        let set = RuleSet::new(&rule_specs(n)).unwrap();
        // A wildcard hit three components deep, an exact hit, and a miss:
        // the mix a server sees.
        let names: Vec<RepoName> = [
            format!("mirror/org{}/app/api", if n > 1 { n - 1 } else { 1 }),
            "team0/service".to_string(),
            "nobody/declared/this".to_string(),
        ]
        .iter()
        .map(|s| RepoName::parse(s).unwrap())
        .collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &names, |b, names| {
            b.iter(|| {
                for name in names {
                    let _ = black_box(set.resolve(black_box(name)));
                }
            })
        });
    }
    g.finish();
}

fn verifying_stream(c: &mut Criterion) {
    let data = chunks(BIG, MIB);
    let mut h = sha2::Sha256::new();
    for c in &data {
        h.update(c);
    }
    let digest = Digest::parse(&format!("sha256:{:x}", h.finalize())).unwrap();
    let mut g = c.benchmark_group("hash_256MiB");
    g.throughput(Throughput::Bytes(BIG as u64));
    g.sample_size(10);
    g.bench_function("raw_sha2", |b| {
        b.iter(|| {
            let mut h = sha2::Sha256::new();
            for c in &data {
                h.update(c);
            }
            black_box(h.finalize())
        })
    });
    g.bench_function("verifying_stream", |b| {
        b.iter(|| {
            let s = futures::stream::iter(data.iter().cloned().map(Ok::<_, cache_core::Error>));
            let mut v = VerifyingStream::new(s, digest.clone(), Some(BIG as u64));
            futures::executor::block_on(async {
                let mut n = 0usize;
                while let Some(c) = v.next().await {
                    n += c.unwrap().len();
                }
                assert_eq!(n, BIG);
            })
        })
    });
    g.finish();
}

fn fs_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = chunks(BIG, MIB);
    let digest = {
        let mut h = cache_core::Algorithm::Sha256.hasher();
        for c in &data {
            h.update(c);
        }
        h.finish()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(FsStore::open(dir.path())).unwrap();
    let mut g = c.benchmark_group("fs_store_256MiB");
    g.throughput(Throughput::Bytes(BIG as u64));
    g.sample_size(10);
    g.bench_function("write_commit", |b| {
        b.iter(|| {
            rt.block_on(async {
                store.delete(&digest).await.unwrap();
                let mut w = store.stage(&digest, Some(BIG as u64)).await.unwrap();
                for c in &data {
                    w.write(c.clone()).await.unwrap();
                }
                w.commit().await.unwrap();
            })
        })
    });
    rt.block_on(async {
        if store.stat(&digest).await.unwrap().is_none() {
            let mut w = store.stage(&digest, None).await.unwrap();
            for c in &data {
                w.write(c.clone()).await.unwrap();
            }
            w.commit().await.unwrap();
        }
    });
    g.bench_function("read", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = store.get(&digest, None).await.unwrap();
                let mut n = 0usize;
                let mut s = r.payload.into_stream();
                while let Some(c) = s.next().await {
                    n += c.unwrap().len();
                }
                assert_eq!(n, BIG);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, rule_lookup, verifying_stream, fs_store);
criterion_main!(benches);
