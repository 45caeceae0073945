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
use cache_core::peer::Peering;
use cache_core::testing::{FakeUpstream, LocalPeers, ManualClock, content};
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

/// Three engines on one shared store that stream from each other through
/// [`LocalPeers`] (peer streaming, in process); `a` leads by reading first.
fn peered(
    store: &MemoryStore,
    ups: [&Arc<FakeUpstream>; 3],
    opts: CacheOptions,
) -> (Vec<(PullThroughCache, Arc<Counters>)>, LocalPeers) {
    let peers = LocalPeers::new();
    let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::current());
    let instances: Vec<_> = ["a", "b", "c"]
        .iter()
        .zip(ups)
        .map(|(name, up)| {
            let counters = Arc::new(Counters::default());
            let cache = PullThroughCache::builder()
                .rules(
                    RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")])
                        .unwrap(),
                )
                .store(store.as_shared())
                .spawner(TokioRuntime::current())
                .clock(clock.clone())
                .upstream("up.example", up.clone())
                .events(counters.clone())
                .options(CacheOptions {
                    instance_name: (*name).to_owned(),
                    retry_backoff: Duration::ZERO,
                    ..opts.clone()
                })
                .peering(Peering {
                    advertise: format!("{name}:1"),
                    source: Arc::new(peers.clone()),
                    timeout: Duration::from_millis(300),
                })
                .build()
                .unwrap();
            peers.register(&format!("{name}:1"), &cache);
            (cache, counters)
        })
        .collect();
    (instances, peers)
}

/// Reads a blob; the body, or the error that ended it; and when its first
/// byte came.
async fn try_read(
    cache: PullThroughCache,
    d: Digest,
) -> (Result<Vec<u8>, String>, Option<std::time::Instant>) {
    let r = match cache.blob(&n("library/app"), &d, None).await {
        Ok(r) => r,
        Err(e) => return (Err(e.to_string()), None),
    };
    let mut s = r.body.into_stream();
    let (mut out, mut first) = (Vec::new(), None);
    while let Some(c) = s.next().await {
        match c {
            Ok(c) => {
                first.get_or_insert_with(std::time::Instant::now);
                out.extend_from_slice(&c);
            }
            Err(e) => return (Err(format!("after {} bytes: {e}", out.len())), first),
        }
    }
    (Ok(out), first)
}

/// Waits until some instance holds `d`'s lease.
async fn lease_taken(store: &MemoryStore, d: &Digest) -> String {
    for _ in 0..500 {
        if let Some(v) = store.get_meta(&blob_lease(d)).await.unwrap() {
            return String::from_utf8_lossy(&v).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no instance took the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_stream_from_the_holder_as_it_fetches_and_verify_themselves() {
    let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::current());
    let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
    let data = content(11, 1024 * 1024);
    let d = up.add_blob(&n("library/app"), data.clone());
    // About a second upstream.
    up.set_drip(Some((32 * 1024, Duration::from_millis(30))));
    let store = MemoryStore::new();
    let (inst, peers) = peered(&store, [&up, &up, &up], CacheOptions::default());
    let started = std::time::Instant::now();
    let lead = tokio::spawn(try_read(inst[0].0.clone(), d.clone()));
    let lease = lease_taken(&store, &d).await;
    assert!(
        lease.starts_with("a@a:1 "),
        "the holder names its peer address: {lease}"
    );
    let followers: Vec<_> = (0..6)
        .map(|i| tokio::spawn(try_read(inst[1 + i % 2].0.clone(), d.clone())))
        .collect();
    let (body, _) = lead.await.unwrap();
    assert!(body.unwrap() == data);
    let leader_done = std::time::Instant::now();
    for f in followers {
        let (body, first) = f.await.unwrap();
        assert!(body.unwrap() == data, "a follower got other bytes");
        let first = first.unwrap();
        assert!(
            first < leader_done - Duration::from_millis(300),
            "a follower's first byte came {:?} after the start, the leader finished at {:?}: it waited for publication",
            first - started,
            leader_done - started
        );
    }
    assert_eq!(gets(&up), 1, "one upstream GET for the three instances");
    let streamed: u64 = inst.iter().map(|(_, c)| count(&c.peer_streamed)).sum();
    let published: u64 = inst.iter().map(|(_, c)| count(&c.peer_published)).sum();
    assert_eq!((streamed, published), (2, 0), "b and c streamed from a");
    let from_peers: u64 = inst.iter().map(|(_, c)| count(&c.bytes_from_peers)).sum();
    assert_eq!(from_peers, 2 * data.len() as u64);
    assert_eq!(
        count(&inst[0].1.bytes_served),
        data.len() as u64,
        "what the holder sent its peers is not counted as served to its clients"
    );
    assert!(peers.requests() >= 2);
    // Published once; the lease is gone; the peer endpoint serves nothing now.
    assert!(store.get_bytes(&d).await.unwrap() == data);
    assert!(store.get_meta(&blob_lease(&d)).await.unwrap().is_none());
    let wait = Duration::from_millis(100);
    assert!(inst[0].0.peer_blob(&d, 0, wait).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_endpoint_serves_only_what_its_instance_fetches_under_a_lease() {
    let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::current());
    let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
    let data = content(12, 512 * 1024);
    let d = up.add_blob(&n("library/app"), data.clone());
    let other = up.add_blob(&n("library/app"), content(13, 1000));
    up.set_drip(Some((16 * 1024, Duration::from_millis(30))));
    let store = MemoryStore::new();
    let (inst, _peers) = peered(&store, [&up, &up, &up], CacheOptions::default());
    let lead = tokio::spawn(try_read(inst[0].0.clone(), d.clone()));
    lease_taken(&store, &d).await;
    let follow = tokio::spawn(try_read(inst[1].0.clone(), d.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wait = Duration::from_millis(100);
    // The holder serves it, from any offset up to its size.
    let (size, _) = inst[0].0.peer_blob(&d, 1000, wait).await.unwrap().unwrap();
    assert_eq!(size, data.len() as u64);
    let e = inst[0].0.peer_blob(&d, size + 1, wait).await.err().unwrap();
    assert!(e.to_string().contains("range not satisfiable"), "{e}");
    // A follower does not (it holds no lease), nor anyone for a digest
    // nobody fetches.
    assert!(inst[1].0.peer_blob(&d, 0, wait).await.unwrap().is_none());
    assert!(inst[2].0.peer_blob(&d, 0, wait).await.unwrap().is_none());
    assert!(
        inst[0]
            .0
            .peer_blob(&other, 0, wait)
            .await
            .unwrap()
            .is_none()
    );
    assert!(lead.await.unwrap().0.unwrap() == data);
    assert!(follow.await.unwrap().0.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_at_the_holder_reaches_no_client_complete_on_any_instance() {
    let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::current());
    let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
    let data = content(14, 512 * 1024);
    let d = up.add_blob(&n("library/app"), data.clone());
    up.set_drip(Some((16 * 1024, Duration::from_millis(20))));
    up.fail_next_blob(cache_core::testing::Fault::FlipByte(300_000));
    let store = MemoryStore::new();
    let opts = CacheOptions {
        max_retries: 0,
        ..CacheOptions::default()
    };
    let (inst, _peers) = peered(&store, [&up, &up, &up], opts);
    let lead = tokio::spawn(try_read(inst[0].0.clone(), d.clone()));
    lease_taken(&store, &d).await;
    let followers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(try_read(inst[1 + i % 2].0.clone(), d.clone())))
        .collect();
    let mut all = vec![lead];
    all.extend(followers);
    for (i, r) in futures::future::join_all(all).await.into_iter().enumerate() {
        let (body, _) = r.unwrap();
        // Failed before its first byte, or one byte short at the latest.
        if let Ok(b) = body {
            panic!("reader {i} got a complete body of {} bytes", b.len());
        }
    }
    assert!(store.stat(&d).await.unwrap().is_none(), "nothing published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_holder_is_left_after_lease_wait_and_the_follower_resumes_upstream_at_its_offset()
{
    let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::current());
    let (up_a, up_b) = (
        Arc::new(FakeUpstream::new("up.example", clock.clone())),
        Arc::new(FakeUpstream::new("up.example", clock.clone())),
    );
    let data = content(15, 1024 * 1024);
    let d = up_a.add_blob(&n("library/app"), data.clone());
    up_b.add_blob(&n("library/app"), data.clone());
    up_a.set_drip(Some((32 * 1024, Duration::from_millis(10))));
    // The holder's upstream sends half, then nothing (for longer than the test).
    up_a.fail_next_blob(cache_core::testing::Fault::Stall(512 * 1024));
    let store = MemoryStore::new();
    let opts = CacheOptions {
        lease_wait: Duration::from_secs(2),
        ..CacheOptions::default()
    };
    let (inst, _peers) = peered(&store, [&up_a, &up_b, &up_b], opts);
    let _lead = tokio::spawn(try_read(inst[0].0.clone(), d.clone()));
    lease_taken(&store, &d).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (body, _) = try_read(inst[1].0.clone(), d.clone()).await;
    assert!(
        body.unwrap() == data,
        "the follower's reader got every byte, right"
    );
    let b = &inst[1].1;
    assert_eq!(count(&b.peer_streamed), 1);
    assert_eq!(count(&b.peer_waited_too_long), 1);
    assert_eq!(
        (gets(&up_b), count(&up_b.calls.ranged_blob_gets)),
        (1, 1),
        "one upstream GET by the follower, ranged"
    );
    let (peer, upstream) = (count(&b.bytes_from_peers), count(&b.bytes_from_upstream));
    assert!(peer >= 256 * 1024, "{peer} bytes came from the holder");
    assert_eq!(peer + upstream, data.len() as u64, "no byte fetched twice");
}
