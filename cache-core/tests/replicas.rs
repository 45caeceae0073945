//! Several engines on one shared store, as replicas on one object store
//! are: one upstream fetch per digest across them (a lease in the store),
//! takeover of a dead holder's lease, a bounded wait, and gc that one
//! instance runs at a time and that spares what any instance is reading.
//!
//! The store is a `MemoryStore` reporting itself shared; the server-level
//! tests run the same against Azurite with separate processes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cache_core::events::Counters;
use cache_core::keys::blob_lease;
use cache_core::testing::{FakeUpstream, ManualClock, content};
use cache_core::{
    BlobStore, BlobStoreExt, CacheOptions, Clock, Digest, PullThroughCache, RepoName, RuleSet,
    RuleSpec,
};
use cache_store::{MemoryStore, TokioRuntime};
use futures::StreamExt;

fn n(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn instance(
    name: &str,
    store: &MemoryStore,
    up: &Arc<FakeUpstream>,
    clock: Arc<dyn Clock>,
    opts: CacheOptions,
) -> (PullThroughCache, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let cache = PullThroughCache::builder()
        .rules(RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")]).unwrap())
        .store(store.as_shared())
        .spawner(TokioRuntime::current())
        .clock(clock)
        .upstream("up.example", up.clone())
        .events(counters.clone())
        .options(CacheOptions {
            instance_name: name.to_owned(),
            retry_backoff: Duration::ZERO,
            ..opts
        })
        .build()
        .unwrap();
    (cache, counters)
}

async fn read(cache: &PullThroughCache, d: &Digest) -> Vec<u8> {
    let r = cache.blob(&n("library/app"), d, None).await.unwrap();
    let mut s = r.body.into_stream();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    Counters::get(c)
}

fn gets(up: &FakeUpstream) -> u64 {
    count(&up.calls.blob_gets)
}

/// A lease value as another instance writes it: `holder expires-ms nonce`.
fn lease_value(holder: &str, expires: SystemTime) -> Bytes {
    let ms = expires
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Bytes::from(format!("{holder} {ms} 1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_readers_on_three_instances_cost_one_upstream_fetch() {
    let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::current());
    let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
    let data = content(1, 1024 * 1024);
    let d = up.add_blob(&n("library/app"), data.clone());
    // About half a second upstream, so every reader arrives mid-fetch.
    up.set_drip(Some((32 * 1024, Duration::from_millis(15))));
    let store = MemoryStore::new();
    let instances: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| instance(name, &store, &up, clock.clone(), CacheOptions::default()))
        .collect();
    let reads = (0..12).map(|i| {
        let cache = instances[i % 3].0.clone();
        let d = d.clone();
        tokio::spawn(async move { read(&cache, &d).await })
    });
    for r in futures::future::join_all(reads).await {
        assert!(r.unwrap() == data, "a reader got other bytes");
    }
    assert_eq!(gets(&up), 1, "one upstream GET for all three instances");
    let published: u64 = instances
        .iter()
        .map(|(_, c)| count(&c.peer_published))
        .sum();
    assert_eq!(
        published, 2,
        "the two other instances served what one published"
    );
    assert!(
        store.get_meta(&blob_lease(&d)).await.unwrap().is_none(),
        "the lease is released once the blob is published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_dead_holder_is_taken_over_once_it_lapses() {
    let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::current());
    let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
    let data = content(2, 200_000);
    let d = up.add_blob(&n("library/app"), data.clone());
    let store = MemoryStore::new();
    // An instance that took the lease and died: nobody renews it.
    let lapses = clock.now() + Duration::from_millis(600);
    store
        .put_meta(&blob_lease(&d), lease_value("dead/1/0", lapses))
        .await
        .unwrap();
    let opts = CacheOptions {
        lease_ttl: Duration::from_secs(2),
        ..CacheOptions::default()
    };
    let (cache, counters) = instance("b", &store, &up, clock.clone(), opts);
    assert!(read(&cache, &d).await == data);
    assert!(clock.now() >= lapses, "waited for the lease to lapse");
    assert_eq!(gets(&up), 1);
    assert_eq!(count(&counters.peer_taken_over), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_never_publishes_is_waited_for_only_lease_wait() {
    let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::current());
    let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
    let data = content(3, 100_000);
    let d = up.add_blob(&n("library/app"), data.clone());
    let store = MemoryStore::new();
    // A live lease (renewed, say) whose holder is stuck.
    store
        .put_meta(
            &blob_lease(&d),
            lease_value("stuck/1/0", clock.now() + Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let opts = CacheOptions {
        lease_wait: Duration::from_millis(400),
        ..CacheOptions::default()
    };
    let (cache, counters) = instance("b", &store, &up, clock.clone(), opts);
    assert!(
        read(&cache, &d).await == data,
        "the client is served, not failed"
    );
    assert_eq!(gets(&up), 1);
    assert_eq!(count(&counters.peer_waited_too_long), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_runs_on_the_instance_holding_the_gc_lease_only() {
    let manual = ManualClock::new();
    let clock: Arc<dyn Clock> = Arc::new(manual.clone());
    let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
    let store = MemoryStore::new();
    let (a, _) = instance("a", &store, &up, clock.clone(), CacheOptions::default());
    let old = content(4, 10_000);
    let d = Digest::sha256_of(&old);
    store.put(&d, old).await.unwrap();
    store.touch(&d, manual.now()).await.unwrap();
    manual.advance(Duration::from_secs(3600));
    let gc = cache_core::keys::gc_lease();
    store
        .put_meta(
            &gc,
            lease_value("other/1/0", manual.now() + Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let skipped = a.gc(Some(0)).await.unwrap();
    assert_eq!(skipped.lease_holder.as_deref(), Some("other/1/0"));
    assert_eq!(skipped.evicted, 0);
    assert!(store.stat(&d).await.unwrap().is_some(), "nothing removed");
    // The other instance died: its lease lapses and gc runs here.
    manual.advance(Duration::from_secs(31));
    let ran = a.gc(Some(0)).await.unwrap();
    assert_eq!(ran.lease_holder, None);
    assert_eq!(ran.evicted, 1);
    assert!(
        store.get_meta(&gc).await.unwrap().is_none(),
        "the gc lease is released after the run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_spares_a_blob_another_instance_is_still_reading() {
    let manual = ManualClock::new();
    let clock: Arc<dyn Clock> = Arc::new(manual.clone());
    let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
    let store = MemoryStore::new();
    let opts = CacheOptions {
        hot_bytes: 0,
        ..CacheOptions::default()
    };
    let (reader, _) = instance("reader", &store, &up, clock.clone(), opts.clone());
    let (collector, _) = instance("collector", &store, &up, clock.clone(), opts);
    let data = content(5, 300_000);
    let d = up.add_blob(&n("library/app"), data.clone());
    let idle = content(6, 300_000);
    let idle_d = up.add_blob(&n("library/app"), idle.clone());
    assert!(read(&reader, &d).await == data);
    assert!(read(&reader, &idle_d).await == idle);
    // A long read of `d` starts and stays open...
    let open = reader.blob(&n("library/app"), &d, None).await.unwrap();
    // ...for ten minutes, past any grace period; the reader renews the
    // access time of what it reads every touch_interval (60 s).
    for _ in 0..10 {
        manual.advance(Duration::from_secs(61));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = collector.gc(Some(0)).await.unwrap();
    assert!(
        store.stat(&d).await.unwrap().is_some(),
        "a blob being read on another instance is spared: {report:?}"
    );
    assert!(
        store.stat(&idle_d).await.unwrap().is_none(),
        "an idle blob is evicted: {report:?}"
    );
    assert_eq!(report.skipped_in_use, 1);
    drop(open);
}
