//! The engine on 256 MiB: cold and warm through MemoryStore and FsStore,
//! 16 concurrent cold readers, against draining the upstream into sha2
//! (the cost of a verified direct download) in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{SyntheticUpstream, engine, pull};
use cache_core::{BlobStore, Upstream};
use cache_store::{FsStore, MemoryStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;

const BIG: u64 = 256 * 1024 * 1024;
const UPSTREAM_CHUNK: usize = 64 * 1024;

fn engine_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let up = Arc::new(SyntheticUpstream::new(BIG, UPSTREAM_CHUNK));
    let d = up.digest().clone();
    let mut g = c.benchmark_group("engine_256MiB");
    g.throughput(Throughput::Bytes(BIG));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));

    g.bench_function("upstream_to_sha2", |b| {
        b.iter(|| {
            rt.block_on(async {
                let repo = cache_core::RepoName::parse("bench/app").unwrap();
                let mut s = up.blob(&repo, &d, None).await.unwrap().stream;
                let mut h = cache_core::Algorithm::Sha256.hasher();
                while let Some(c) = s.next().await {
                    h.update(&c.unwrap());
                }
                assert_eq!(h.finish(), d);
            })
        })
    });

    let cold = |fs: bool, readers: usize| {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlobStore> = if fs {
            Arc::new(rt.block_on(FsStore::open(dir.path())).unwrap())
        } else {
            Arc::new(MemoryStore::new())
        };
        let cache = rt.block_on(async { engine(store, up.clone()) });
        let start = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..readers {
                let cache = cache.clone();
                let d = d.clone();
                tasks.push(tokio::spawn(async move { pull(&cache, &d).await }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap(), BIG);
            }
        });
        let took = start.elapsed();
        // Let the detached fetch publish before the store is dropped.
        rt.block_on(async {
            while cache.inflight() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        took
    };

    g.bench_function("cold_memory", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| cold(false, 1)).sum())
    });
    g.bench_function("cold_fs", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| cold(true, 1)).sum())
    });
    g.bench_function("cold_fs_16_readers", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| cold(true, 16)).sum())
    });

    let warm_dir = tempfile::tempdir().unwrap();
    for (name, store) in [
        (
            "warm_memory",
            Arc::new(MemoryStore::new()) as Arc<dyn BlobStore>,
        ),
        (
            "warm_fs",
            Arc::new(rt.block_on(FsStore::open(warm_dir.path())).unwrap()) as Arc<dyn BlobStore>,
        ),
    ] {
        let cache = rt.block_on(async { engine(store, up.clone()) });
        rt.block_on(async {
            pull(&cache, &d).await;
            while cache.inflight() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(async { assert_eq!(pull(&cache, &d).await, BIG) }))
        });
    }
    g.finish();
}

criterion_group!(benches, engine_benches);
criterion_main!(benches);
