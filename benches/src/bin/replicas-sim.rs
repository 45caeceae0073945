//! The lease protocol at scale, simulated: N in-process engines (N = 1,
//! 3, 10, 30, 100) on one in-memory object store that answers every
//! request after an injected latency (20 ms, like a cloud store), M
//! concurrent clients per instance asking for the same cold blob from an
//! upstream that sends it at a fixed pace. Each N runs twice: followers
//! waiting for publication (no peering), and streaming from the lease
//! holder (peering through `cache_core::testing::LocalPeers`, with a
//! network latency of its own). Reports upstream GETs, object-store
//! requests by kind, and the slowest client's time relative to one
//! instance.
//!
//! `cargo run --release -p benches --bin replicas-sim`; `SIM_CLIENTS`
//! (default 4) clients per instance, `SIM_LATENCY_MS` (default 20) store
//! latency, `SIM_SIZES` (default `1,3,10,30,100`). Everything is bounded:
//! one blob of 2 MiB per run, each run in a fresh store.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::events::Counters;
use cache_core::peer::Peering;
use cache_core::testing::{FakeUpstream, LocalPeers, content};
use cache_core::{
    BlobInfo, BlobRead, BlobStore, ByteRange, CacheOptions, Clock, Digest, MetaKey,
    PullThroughCache, RepoName, Result, RuleSet, RuleSpec, StagedBlob, StagedReader,
};
use cache_store::{MemoryStore, TokioRuntime};
use futures::StreamExt;
use futures::stream::BoxStream;

const BLOB: usize = 2 * 1024 * 1024;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Object-store requests by kind.
#[derive(Debug, Default)]
struct Requests(Mutex<BTreeMap<&'static str, u64>>);

impl Requests {
    fn add(&self, kind: &'static str) {
        *self.0.lock().unwrap().entry(kind).or_default() += 1;
    }
    fn get(&self, kind: &str) -> u64 {
        self.0.lock().unwrap().get(kind).copied().unwrap_or(0)
    }
}

/// A shared store whose every request waits `latency` first and is
/// counted: a cloud object store, in memory.
#[derive(Debug, Clone)]
struct SlowStore {
    inner: MemoryStore,
    latency: Duration,
    requests: Arc<Requests>,
}

impl SlowStore {
    async fn hop(&self, kind: &'static str) {
        self.requests.add(kind);
        tokio::time::sleep(self.latency).await;
    }
}

#[async_trait]
impl BlobStore for SlowStore {
    async fn stat(&self, d: &Digest) -> Result<Option<BlobInfo>> {
        self.hop("HEAD blob").await;
        self.inner.stat(d).await
    }
    async fn get(&self, d: &Digest, r: Option<ByteRange>) -> Result<BlobRead> {
        self.hop("GET blob").await;
        self.inner.get(d, r).await
    }
    async fn stage(&self, d: &Digest, s: Option<u64>) -> Result<Box<dyn StagedBlob>> {
        // Staging is local (a spool file); the upload is the commit.
        Ok(Box::new(SlowStaged {
            inner: self.inner.stage(d, s).await?,
            store: self.clone(),
        }))
    }
    async fn delete(&self, d: &Digest) -> Result<bool> {
        self.hop("DELETE").await;
        self.inner.delete(d).await
    }
    async fn list(&self) -> Result<BoxStream<'static, Result<BlobInfo>>> {
        self.hop("LIST").await;
        self.inner.list().await
    }
    async fn touch(&self, d: &Digest, at: SystemTime) -> Result<bool> {
        self.hop("PUT access time").await;
        self.inner.touch(d, at).await
    }
    async fn get_meta(&self, k: &MetaKey) -> Result<Option<Bytes>> {
        self.hop("GET meta").await;
        self.inner.get_meta(k).await
    }
    async fn put_meta(&self, k: &MetaKey, v: Bytes) -> Result<()> {
        self.hop("PUT meta").await;
        self.inner.put_meta(k, v).await
    }
    async fn delete_meta(&self, k: &MetaKey) -> Result<bool> {
        self.hop("DELETE").await;
        self.inner.delete_meta(k).await
    }
    async fn list_meta(&self, p: Option<&MetaKey>) -> Result<Vec<MetaKey>> {
        self.hop("LIST").await;
        self.inner.list_meta(p).await
    }
    async fn create_meta(&self, k: &MetaKey, v: Bytes) -> Result<bool> {
        self.hop("conditional PUT").await;
        self.inner.create_meta(k, v).await
    }
    async fn replace_meta(&self, k: &MetaKey, old: &[u8], v: Bytes) -> Result<bool> {
        self.hop("conditional PUT").await;
        self.inner.replace_meta(k, old, v).await
    }
    fn shared(&self) -> bool {
        true
    }
}

struct SlowStaged {
    inner: Box<dyn StagedBlob>,
    store: SlowStore,
}

impl fmt::Debug for SlowStaged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlowStaged").finish_non_exhaustive()
    }
}

#[async_trait]
impl StagedBlob for SlowStaged {
    fn digest(&self) -> &Digest {
        self.inner.digest()
    }
    fn written(&self) -> u64 {
        self.inner.written()
    }
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.inner.write(chunk).await
    }
    async fn write_chunks(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        self.inner.write_chunks(chunks).await
    }
    async fn reader(&self) -> Result<Arc<dyn StagedReader>> {
        self.inner.reader().await
    }
    async fn verify(&mut self) -> Result<bool> {
        self.inner.verify().await
    }
    async fn commit(self: Box<Self>) -> Result<BlobInfo> {
        self.store.hop("PUT blob").await;
        self.inner.commit().await
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

struct Run {
    instances: usize,
    peering: bool,
    slowest: f64,
    slowest_first_byte: f64,
    upstream_gets: u64,
    requests: Arc<Requests>,
    streamed: u64,
}

async fn run(instances: usize, clients: usize, latency: Duration, peering: bool) -> Run {
    let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::current());
    let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
    let repo = RepoName::parse("library/app").unwrap();
    let data = content(instances as u64 * 2 + u64::from(peering), BLOB);
    let d = up.add_blob(&repo, data.clone());
    // About 32 MiB/s from the upstream: 2 MiB in ~64 ms plus the answer.
    up.set_drip(Some((64 * 1024, Duration::from_millis(2))));
    let requests = Arc::new(Requests::default());
    let store = SlowStore {
        inner: MemoryStore::new().as_shared(),
        latency,
        requests: requests.clone(),
    };
    let peers = LocalPeers::new();
    peers.set_latency(Duration::from_millis(1), clock.clone());
    let counters: Vec<Arc<Counters>> = (0..instances).map(|_| Arc::default()).collect();
    let caches: Vec<PullThroughCache> = (0..instances)
        .map(|i| {
            let mut b = PullThroughCache::builder()
                .rules(
                    RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")])
                        .unwrap(),
                )
                .store(store.clone())
                .spawner(TokioRuntime::current())
                .clock(clock.clone())
                .upstream("up.example", up.clone())
                .events(counters[i].clone())
                .options(CacheOptions {
                    instance_name: format!("i{i}"),
                    hot_bytes: 0,
                    ..CacheOptions::default()
                });
            if peering {
                b = b.peering(Peering {
                    advertise: format!("i{i}:1"),
                    source: Arc::new(peers.clone()),
                    timeout: Duration::from_secs(5),
                });
            }
            let c = b.build().unwrap();
            peers.register(&format!("i{i}:1"), &c);
            c
        })
        .collect();
    let t = Instant::now();
    let reads = (0..instances * clients).map(|k| {
        let (cache, d, repo, data) = (
            caches[k % instances].clone(),
            d.clone(),
            repo.clone(),
            data.clone(),
        );
        tokio::spawn(async move {
            let r = cache.blob(&repo, &d, None).await.unwrap();
            let mut s = r.body.into_stream();
            let (mut n, mut first) = (0usize, None);
            let mut h = d.algorithm().hasher();
            while let Some(c) = s.next().await {
                let c = c.unwrap();
                first.get_or_insert_with(|| t.elapsed().as_secs_f64());
                n += c.len();
                h.update(&c);
            }
            assert_eq!(n, data.len(), "a client got {n} bytes");
            assert!(h.finish() == d, "a client got other bytes");
            (t.elapsed().as_secs_f64(), first.unwrap_or_default())
        })
    });
    let done = futures::future::join_all(reads).await;
    let slowest = done
        .iter()
        .map(|r| r.as_ref().unwrap().0)
        .fold(0.0, f64::max);
    let slowest_first_byte = done
        .iter()
        .map(|r| r.as_ref().unwrap().1)
        .fold(0.0, f64::max);
    // Let the holder's commit and the followers' last steps finish.
    for _ in 0..200 {
        if caches.iter().all(|c| c.inflight() == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Run {
        instances,
        peering,
        slowest,
        slowest_first_byte,
        upstream_gets: get(&up.calls.blob_gets),
        requests,
        streamed: counters.iter().map(|c| get(&c.peer_streamed)).sum(),
    }
}

fn main() {
    let clients = env("SIM_CLIENTS", 4).clamp(1, 64) as usize;
    let latency = Duration::from_millis(env("SIM_LATENCY_MS", 20).min(1000));
    let sizes: Vec<usize> = std::env::var("SIM_SIZES")
        .unwrap_or_else(|_| "1,3,10,30,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| (1..=200).contains(n))
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let kinds = [
        "HEAD blob",
        "GET blob",
        "PUT blob",
        "GET meta",
        "PUT meta",
        "conditional PUT",
        "DELETE",
        "PUT access time",
    ];
    println!(
        "Simulated on {}: one cold 2 MiB blob, upstream ~32 MiB/s, object store {latency:?} per request, {clients} clients per instance, `cargo run --release -p benches --bin replicas-sim`.\n",
        benches::machine()
    );
    print!(
        "| instances | followers | slowest client | vs 1 | slowest first byte | upstream GETs | streamed |"
    );
    for k in kinds {
        print!(" {k} |");
    }
    println!(
        "\n|---|---|---|---|---|---|---|{}",
        "---|".repeat(kinds.len())
    );
    for peering in [false, true] {
        let mut base = None;
        for &n in &sizes {
            let r = rt.block_on(run(n, clients, latency, peering));
            let base = *base.get_or_insert(r.slowest);
            print!(
                "| {} | {} | {:.0} ms | {:.2}x | {:.0} ms | {} | {} |",
                r.instances,
                if r.peering {
                    "stream from the holder"
                } else {
                    "wait for publication"
                },
                r.slowest * 1000.0,
                r.slowest / base,
                r.slowest_first_byte * 1000.0,
                r.upstream_gets,
                r.streamed,
            );
            for k in kinds {
                print!(" {} |", r.requests.get(k));
            }
            println!();
        }
    }
}
