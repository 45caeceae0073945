//! A registry's bandwidth cap (`cache_upstream::Bandwidth`): what metering
//! costs a transfer that is never held back, against the same transfer
//! unmetered; and how close a capped transfer comes to its cap, alone and
//! sharing it with a second one.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_upstream::Bandwidth;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use futures::stream::BoxStream;

const CHUNK: usize = 64 * 1024;
const MIB: usize = 1024 * 1024;

/// `total` bytes in 64 KiB chunks, as a blob body arrives.
fn body(total: usize) -> BoxStream<'static, Result<Bytes, ()>> {
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    futures::stream::iter((0..total / CHUNK).map(move |_| Ok(chunk.clone()))).boxed()
}

async fn drain(mut s: BoxStream<'static, Result<Bytes, ()>>) -> usize {
    let mut n = 0;
    while let Some(c) = s.next().await {
        n += black_box(c.unwrap()).len();
    }
    n
}

fn bandwidth(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("bandwidth");
    g.throughput(Throughput::Bytes(256 * MIB as u64));
    g.bench_function("unmetered_256MiB", |b| {
        b.iter(|| rt.block_on(drain(body(256 * MIB))))
    });
    // A cap far above the transfer: every piece is metered, none waits.
    let wide = Arc::new(Bandwidth::new(1 << 50));
    g.bench_function("metered_uncapped_256MiB", |b| {
        b.iter(|| rt.block_on(drain(wide.meter(body(256 * MIB)))))
    });
    g.finish();

    // 32 MiB at 64 MiB/s: half a second, less the burst (6.4 MiB).
    let mut g = c.benchmark_group("bandwidth_cap");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(32 * MIB as u64));
    g.bench_function("capped_64MiBps_32MiB", |b| {
        b.iter(|| {
            // A fresh bucket each time: each transfer starts with the burst.
            let cap = Arc::new(Bandwidth::new(64 * MIB as u64));
            rt.block_on(drain(cap.meter(body(32 * MIB))))
        })
    });
    // Two transfers of 16 MiB at once through one 64 MiB/s bucket: they
    // share the cap, so together they take as long as the one of 32 MiB.
    g.bench_function("capped_64MiBps_2x16MiB_concurrent", |b| {
        b.iter(|| {
            let cap = Arc::new(Bandwidth::new(64 * MIB as u64));
            rt.block_on(async {
                let (x, y) = tokio::join!(
                    drain(cap.meter(body(16 * MIB))),
                    drain(cap.meter(body(16 * MIB)))
                );
                x + y
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bandwidth);
criterion_main!(benches);
