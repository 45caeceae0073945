//! The pull-through engine against an in-process upstream that counts
//! requests and injects faults.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use cache_core::events::Counters;
use cache_core::manifest::Platform;
use cache_core::media_types as mt;
use cache_core::testing::{CommitFaults, FakeUpstream, Fault, ManualClock, PanicUpstream, content};
use cache_core::{
    Accept, BlobBody, BlobStore, BlobStoreExt, ByteRange, CacheOptions, CacheStatus, Clock,
    ColdRanges, Digest, Error, ErrorCode, ManifestResponse, MaxImageSize, PlatformAllowList,
    PullThroughCache, Reference, RepoName, RulePolicy, RuleSet, RuleSpec, Spawner, Tag,
    TagFreshness, TagPage,
};
use cache_store::{FsStore, MemoryStore, TokioRuntime};
use futures::StreamExt;

fn n(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn t(s: &str) -> Tag {
    Tag::parse(s).unwrap()
}

struct Env {
    cache: PullThroughCache,
    up: Arc<FakeUpstream>,
    private: Arc<FakeUpstream>,
    store: Arc<dyn BlobStore>,
    clock: ManualClock,
    counters: Arc<Counters>,
}

struct Setup {
    policy: RulePolicy,
    opts: CacheOptions,
    real_time: bool,
    store: Option<Arc<dyn BlobStore>>,
    admission: Vec<Arc<dyn cache_core::Admission>>,
    /// Tokio's on the test's runtime unless set.
    spawner: Option<Arc<dyn Spawner>>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            policy: RulePolicy::default(),
            opts: CacheOptions {
                // No back-off: most tests run on a manual clock.
                retry_backoff: Duration::ZERO,
                stall_timeout: Duration::from_millis(300),
                ..CacheOptions::default()
            },
            real_time: false,
            store: None,
            admission: Vec::new(),
            spawner: None,
        }
    }
}

fn env_with(s: Setup) -> Env {
    let manual = ManualClock::new();
    let clock: Arc<dyn Clock> = if s.real_time {
        Arc::new(TokioRuntime::current())
    } else {
        Arc::new(manual.clone())
    };
    let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
    let private = Arc::new(FakeUpstream::new("private.example", clock.clone()));
    let rules = RuleSet::new(&[
        RuleSpec::new("lib", "up.example/library/*", "library/*"),
        RuleSpec::new("priv", "private.example/team/*", "team/*"),
    ])
    .unwrap();
    let store = s.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
    let counters = Arc::new(Counters::default());
    let mut b = PullThroughCache::builder()
        .rules(rules)
        .store(store.clone())
        .spawner(
            s.spawner
                .unwrap_or_else(|| Arc::new(TokioRuntime::current())),
        )
        .clock(clock)
        .upstream("up.example", up.clone())
        .upstream("private.example", private.clone())
        .policy("lib", s.policy.clone())
        .policy("priv", s.policy)
        .events(counters.clone())
        .options(s.opts);
    for a in s.admission {
        b = b.admission(a);
    }
    Env {
        cache: b.build().unwrap(),
        up,
        private,
        store,
        clock: manual,
        counters,
    }
}

/// A real-time environment over a memory store wrapped in
/// [`CommitFaults`], with `opts`.
fn env_with_faults(opts: CacheOptions) -> (Arc<CommitFaults>, Env) {
    let store = CommitFaults::new(Arc::new(MemoryStore::new()));
    let e = env_with(Setup {
        real_time: true,
        store: Some(store.clone()),
        opts,
        ..Setup::default()
    });
    (store, e)
}

fn env() -> Env {
    env_with(Setup::default())
}

/// The manifest `repo:tag`, any media type accepted.
async fn by_tag(e: &Env, repo: &str, tag: &str) -> Result<ManifestResponse, Error> {
    e.cache
        .manifest(&n(repo), &Reference::Tag(t(tag)), &Accept::any())
        .await
}

/// The manifest `repo@d`, any media type accepted.
async fn by_digest(e: &Env, repo: &str, d: &Digest) -> Result<ManifestResponse, Error> {
    e.cache
        .manifest(&n(repo), &Reference::Digest(d.clone()), &Accept::any())
        .await
}

/// A real-time environment over a memory store.
fn live_env() -> Env {
    env_with(Setup {
        real_time: true,
        ..Setup::default()
    })
}

/// `len` bytes of content `seed`, a blob of `library/app` upstream: the
/// bytes and their digest.
fn app_blob(e: &Env, seed: u64, len: usize) -> (Bytes, Digest) {
    let layer = content(seed, len);
    let d = e.up.add_blob(&n("library/app"), layer.clone());
    (layer, d)
}

async fn drain(
    mut s: futures::stream::BoxStream<'static, cache_core::Result<Bytes>>,
) -> (Vec<u8>, Option<Error>) {
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        match c {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => {
                assert!(s.next().await.is_none(), "a stream ends after its error");
                return (out, Some(e));
            }
        }
    }
    (out, None)
}

/// Reads a whole blob through the cache, then waits for its fetch (if
/// any) to end: answers complete once the blob verified, and its commit,
/// access time and grants follow.
async fn pull(e: &Env, repo: &str, d: &Digest) -> (Vec<u8>, Option<Error>) {
    let got = match e.cache.blob(&n(repo), d, None).await {
        Ok(r) => drain(r.body.into_stream()).await,
        Err(err) => panic!("{repo}@{d}: {err}"),
    };
    wait_until(|| e.cache.inflight() == 0).await;
    got
}

fn gets(up: &FakeUpstream) -> u64 {
    up.calls.blob_gets.load(Ordering::SeqCst)
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

/// Pushes `layer` as the one layer of `repo:v1`, pulls the manifest, and
/// has the upstream drip the next blob it sends (256 KiB every `delay`),
/// so that readers arrive while its fetch runs. Returns the layer's digest.
async fn dripping_layer(e: &Env, repo: &str, layer: &Bytes, delay: Duration) -> Digest {
    let img =
        e.up.push_image(&n(repo), &t("v1"), std::slice::from_ref(layer));
    e.cache
        .manifest(&n(repo), &Reference::Tag(t("v1")), &Accept::any())
        .await
        .unwrap();
    e.up.fail_next_blob(Fault::Drip {
        chunk: 256 * 1024,
        delay,
    });
    img.layers[0].0.clone()
}

/// `readers` GETs of blob `d` of `repo` at once, each read to its end;
/// asserts that every one got exactly `want`.
async fn concurrent_readers(e: &Env, repo: &str, d: &Digest, readers: usize, want: &Bytes) {
    let tasks: Vec<_> = (0..readers)
        .map(|_| {
            let (c, repo, d) = (e.cache.clone(), n(repo), d.clone());
            tokio::spawn(async move {
                let r = c.blob(&repo, &d, None).await.unwrap();
                drain(r.body.into_stream()).await
            })
        })
        .collect();
    for task in tasks {
        let (bytes, err) = task.await.unwrap();
        assert!(err.is_none(), "{err:?}");
        assert!(bytes == want[..], "every reader gets the exact bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_name_is_name_unknown_and_contacts_no_upstream() {
    let rules = RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")]).unwrap();
    let cache = PullThroughCache::builder()
        .rules(rules)
        .store(MemoryStore::new())
        .spawner(TokioRuntime::current())
        .clock(ManualClock::new())
        .upstream("up.example", PanicUpstream)
        .build()
        .unwrap();
    let d = Digest::sha256_of(b"x");
    let e = cache
        .manifest(&n("other/app"), &Reference::Tag(t("v1")), &Accept::any())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NameUnknown);
    assert!(e.to_string().contains("other/app"));
    assert_eq!(
        cache.blob(&n("nginx"), &d, None).await.unwrap_err().code(),
        ErrorCode::NameUnknown
    );
    assert_eq!(
        cache.head_blob(&n("x/y"), &d).await.unwrap_err().code(),
        ErrorCode::NameUnknown
    );
    assert_eq!(
        cache
            .tags(&n("x"), &TagPage::default())
            .await
            .unwrap_err()
            .code(),
        ErrorCode::NameUnknown
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_without_an_upstream_is_a_build_error_naming_it() {
    let rules = RuleSet::new(&[RuleSpec::new("lonely", "nowhere.example/*", "nw/*")]).unwrap();
    let e = PullThroughCache::builder()
        .rules(rules)
        .store(MemoryStore::new())
        .tokio()
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("lonely"), "{e}");
    let e = PullThroughCache::builder()
        .rule(RuleSpec::new("r", "up.example/*", "u/*"))
        .tokio()
        .upstream("up.example", PanicUpstream)
        .build()
        .unwrap_err();
    assert!(
        e.to_string().contains("no store"),
        "a missing step is named: {e}"
    );
    let e = PullThroughCache::builder()
        .rule(RuleSpec::new("r", "up.example/*", "u/*"))
        .store(MemoryStore::new())
        .tokio()
        .upstream("not a host!", PanicUpstream)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("not a host!"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_by_tag_is_fetched_once_then_revalidated_with_head() {
    let e = env();
    let img =
        e.up.push_image(&n("library/app"), &t("v1"), &[content(1, 1000)]);
    let r = by_tag(&e, "library/app", "v1").await.unwrap();
    assert_eq!(
        (r.status, &r.digest, &r.bytes),
        (CacheStatus::Miss, &img.manifest, &img.manifest_bytes)
    );
    assert_eq!(r.media_type, mt::OCI_MANIFEST);
    e.clock.advance(Duration::from_secs(2));
    let r = by_tag(&e, "library/app", "v1").await.unwrap();
    assert_eq!(r.status, CacheStatus::Revalidated);
    assert_eq!(e.up.calls.manifest_gets.load(Ordering::SeqCst), 1);
    assert_eq!(e.up.calls.manifest_heads.load(Ordering::SeqCst), 1);
    // The tag moves upstream: the next request sees the new manifest.
    let img2 =
        e.up.push_image(&n("library/app"), &t("v1"), &[content(2, 1000)]);
    e.clock.advance(Duration::from_secs(2));
    let r = by_tag(&e, "library/app", "v1").await.unwrap();
    assert_eq!((r.status, &r.digest), (CacheStatus::Miss, &img2.manifest));
    // By digest: immutable, served without asking.
    let before = e.up.calls.total();
    let r = by_digest(&e, "library/app", &img.manifest).await.unwrap();
    assert_eq!((r.status, r.bytes), (CacheStatus::Hit, img.manifest_bytes));
    assert_eq!(e.up.calls.total(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_tags_never_refresh_and_ttl_tags_refresh_after_their_ttl() {
    let e = env_with(Setup {
        policy: RulePolicy {
            tag_freshness: TagFreshness::Pinned,
            ..RulePolicy::default()
        },
        ..Setup::default()
    });
    e.up.push_image(&n("library/app"), &t("v1"), &[content(1, 10)]);
    let first = by_tag(&e, "library/app", "v1").await.unwrap();
    e.up.push_image(&n("library/app"), &t("v1"), &[content(2, 10)]);
    e.clock.advance(Duration::from_secs(365 * 86_400));
    let r = by_tag(&e, "library/app", "v1").await.unwrap();
    assert_eq!((r.status, r.digest), (CacheStatus::Hit, first.digest));
    assert_eq!(e.up.calls.total(), 1);

    let e = env_with(Setup {
        policy: RulePolicy {
            tag_freshness: TagFreshness::Ttl(Duration::from_secs(600)),
            ..RulePolicy::default()
        },
        ..Setup::default()
    });
    e.up.push_image(&n("library/app"), &t("v1"), &[content(1, 10)]);
    by_tag(&e, "library/app", "v1").await.unwrap();
    e.clock.advance(Duration::from_secs(599));
    let r = by_tag(&e, "library/app", "v1").await.unwrap();
    assert_eq!(r.status, CacheStatus::Hit);
    assert_eq!(e.up.calls.total(), 1);
    e.clock.advance(Duration::from_secs(2));
    let r = by_tag(&e, "library/app", "v1").await.unwrap();
    assert_eq!(r.status, CacheStatus::Revalidated);
    assert_eq!(e.up.calls.manifest_heads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_serves_cached_tag_within_stale_if_error_then_errors() {
    let e = env_with(Setup {
        policy: RulePolicy {
            stale_if_error: Duration::from_secs(3600),
            ..RulePolicy::default()
        },
        ..Setup::default()
    });
    let img =
        e.up.push_image(&n("library/app"), &t("v1"), &[content(1, 10)]);
    by_tag(&e, "library/app", "v1").await.unwrap();
    e.up.set_down(true);
    e.clock.advance(Duration::from_secs(3000));
    let r = by_tag(&e, "library/app", "v1").await.unwrap();
    assert_eq!((r.status, r.digest), (CacheStatus::Stale, img.manifest));
    assert_eq!(Counters::get(&e.counters.stale), 1);
    e.clock.advance(Duration::from_secs(601));
    let err = by_tag(&e, "library/app", "v1").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Upstream {
                temporary: true,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.code().http_status(),
        503,
        "an outage is not hidden behind a 404"
    );
    // An uncached tag is an explicit upstream error too.
    let err = by_tag(&e, "library/other", "v1").await.unwrap_err();
    assert_eq!(err.code().http_status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_manifest_requests_make_one_upstream_get() {
    let e = env();
    e.up.push_image(&n("library/app"), &t("v1"), &[content(1, 10)]);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = e.cache.clone();
        tasks.push(tokio::spawn(async move {
            c.manifest(&n("library/app"), &Reference::Tag(t("v1")), &Accept::any())
                .await
                .unwrap()
                .digest
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(e.up.calls.manifest_gets.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_cold_readers_share_one_upstream_fetch() {
    let e = live_env();
    let layer = content(7, 3 * 1024 * 1024 + 17);
    // Slow the upstream so every reader arrives while the fetch runs.
    let d = dripping_layer(&e, "library/big", &layer, Duration::from_millis(5)).await;
    concurrent_readers(&e, "library/big", &d, 32, &layer).await;
    assert_eq!(gets(&e.up), 1, "exactly one upstream blob GET");
    // Answers complete at verification; the commit follows.
    let cache = e.cache.clone();
    wait_until(move || cache.inflight() == 0).await;
    assert_eq!(e.store.get_bytes(&d).await.unwrap(), layer);
    let r = e.cache.blob(&n("library/big"), &d, None).await.unwrap();
    assert_eq!(r.status, CacheStatus::Hit);
    assert_eq!(gets(&e.up), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_receive_bytes_before_the_fetch_finishes() {
    let e = live_env();
    let (layer, d) = app_blob(&e, 8, 1024 * 1024);
    e.up.fail_next_blob(Fault::Drip {
        chunk: 64 * 1024,
        delay: Duration::from_millis(20),
    });
    let r = e.cache.blob(&n("library/app"), &d, None).await.unwrap();
    assert_eq!(r.status, CacheStatus::Miss);
    let mut s = r.body.into_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    assert_eq!(
        e.cache.inflight(),
        1,
        "the first bytes arrived while the fetch was still running"
    );
    let (rest, err) = drain(s).await;
    assert!(err.is_none());
    assert_eq!([first.to_vec(), rest].concat(), layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_have_a_batch_while_the_store_still_writes_it() {
    let (store, e) = env_with_faults(Setup::default().opts);
    let (layer, d) = app_blob(&e, 9, 300_000);
    store.hold_writes();
    let r = e.cache.blob(&n("library/app"), &d, None).await.unwrap();
    let mut s = r.body.into_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("the first bytes do not wait for the store's write")
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    // Held since before the fetch began: the store has not written them.
    let held = store.clone();
    wait_until(move || held.writes_waiting() == 1).await;
    // Whatever else the window holds, but never the last byte while the
    // store cannot write and verify the blob.
    let mut got = first.to_vec();
    while let Ok(c) = tokio::time::timeout(Duration::from_millis(200), s.next()).await {
        got.extend_from_slice(&c.expect("the stream goes on").unwrap());
    }
    assert!(got.len() < layer.len(), "the last byte waits for the store");
    release_and_finish(&store, &e, s, got, &layer, &d).await;
}

/// Releases the store's held writes, then checks that the reader of `s`,
/// which had `got` so far, gets the rest of `layer` and that the store
/// commits it.
async fn release_and_finish(
    store: &CommitFaults,
    e: &Env,
    s: futures::stream::BoxStream<'static, cache_core::Result<Bytes>>,
    got: Vec<u8>,
    layer: &[u8],
    d: &Digest,
) {
    store.release_writes();
    let (rest, err) = drain(s).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!([got, rest].concat(), layer);
    let cache = e.cache.clone();
    wait_until(move || cache.inflight() == 0).await;
    assert_eq!(e.store.get_bytes(d).await.unwrap(), layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiving_runs_ahead_of_a_held_store_write_by_about_half_the_window_and_no_further() {
    let (window, batch) = (1024 * 1024, 64 * 1024);
    let (store, e) = env_with_faults(CacheOptions {
        follow_window: window,
        write_batch: batch,
        stall_timeout: Duration::from_secs(30),
        ..CacheOptions::default()
    });
    let (layer, d) = app_blob(&e, 11, 8 * 1024 * 1024);
    store.hold_writes();
    let r = e.cache.blob(&n("library/app"), &d, None).await.unwrap();
    let mut s = r.body.into_stream();
    let held = store.clone();
    wait_until(move || held.writes_waiting() == 1).await;
    let mut got = Vec::new();
    while let Ok(c) = tokio::time::timeout(Duration::from_millis(300), s.next()).await {
        got.extend_from_slice(&c.expect("the stream goes on").unwrap());
    }
    // The store writes nothing, yet readers have several times the batch
    // it holds: receiving does not wait for each write.
    assert!(
        got.len() >= window / 4 + batch,
        "only {} bytes reached the reader while the store held one write",
        got.len()
    );
    // Nor does it run further ahead than half the window: memory stays
    // bounded however slow the store.
    assert!(
        got.len() <= window / 2 + batch,
        "{} bytes received past a held write of a {window}-byte window",
        got.len()
    );
    assert_eq!(store.writes_waiting(), 1, "one write at a time");
    release_and_finish(&store, &e, s, got, &layer, &d).await;
    assert_eq!(gets(&e.up), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_leave_the_window_only_once_the_store_wrote_them_so_no_reader_waits_for_it() {
    let (store, e) = env_with_faults(CacheOptions {
        // The window keeps nothing for its own sake: only what the store
        // has not written yet stays in memory.
        follow_window: 1,
        stall_timeout: Duration::from_secs(30),
        ..CacheOptions::default()
    });
    let (layer, d) = app_blob(&e, 10, 192 * 1024);
    // Three chunks, long apart, so each is its own write.
    e.up.fail_next_blob(Fault::Drip {
        chunk: 64 * 1024,
        delay: Duration::from_secs(2),
    });
    store.hold_writes();
    let r = e.cache.blob(&n("library/app"), &d, None).await.unwrap();
    let mut s = r.body.into_stream();
    let held = store.clone();
    wait_until(move || held.writes_waiting() == 1).await;
    // Past the one-byte window, and not in the file: still in memory.
    let first = tokio::time::timeout(Duration::from_millis(500), s.next())
        .await
        .expect("a chunk the store has not written is still in the window")
        .unwrap()
        .unwrap();
    assert_eq!(first, layer[..first.len()]);
    // Written, the chunk leaves memory: a reader that starts now reads
    // it from the file, at once, while the next chunk is on its way.
    store.release_writes();
    let cache = e.cache.clone();
    let late = tokio::time::timeout(Duration::from_millis(1500), async move {
        let r = cache.blob(&n("library/app"), &d, None).await.unwrap();
        r.body.into_stream().next().await.unwrap().unwrap()
    })
    .await
    .expect("a late reader has the first chunk before the next arrives");
    assert_eq!(late, layer[..64 * 1024]);
    let (rest, err) = drain(s).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!([first.to_vec(), rest].concat(), layer);
    assert_eq!(gets(&e.up), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_dropped_after_one_byte_does_not_stop_the_fetch() {
    let e = live_env();
    let (layer, d) = app_blob(&e, 9, 2 * 1024 * 1024);
    e.up.fail_next_blob(Fault::Drip {
        chunk: 128 * 1024,
        delay: Duration::from_millis(5),
    });
    let r = e.cache.blob(&n("library/app"), &d, None).await.unwrap();
    let mut s = r.body.into_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(s);
    let store = e.store.clone();
    let cache = e.cache.clone();
    wait_until(move || cache.inflight() == 0).await;
    assert_eq!(
        store.get_bytes(&d).await.unwrap(),
        layer,
        "the blob landed, verified"
    );
    assert_eq!(gets(&e.up), 1);
}

/// Spawns as tokio does, but a request's fetch (`spawn_near`) onto the
/// runtime it holds, which the test shuts down; once it holds none, as
/// tokio does.
#[derive(Debug)]
struct NearOn(std::sync::Mutex<Option<tokio::runtime::Handle>>);

impl Spawner for NearOn {
    fn spawn(&self, fut: futures::future::BoxFuture<'static, ()>) {
        tokio::spawn(fut);
    }

    fn spawn_near(&self, fut: futures::future::BoxFuture<'static, ()>) {
        match &*self.0.lock().unwrap() {
            Some(h) => drop(h.spawn(fut)),
            None => drop(tokio::spawn(fut)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_whose_runtime_shuts_down_fails_its_readers_and_the_next_request_fetches_again() {
    let near = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let spawner = Arc::new(NearOn(std::sync::Mutex::new(Some(near.handle().clone()))));
    let e = env_with(Setup {
        real_time: true,
        spawner: Some(spawner.clone()),
        ..Setup::default()
    });
    let (layer, d) = app_blob(&e, 10, 2 * 1024 * 1024);
    e.up.fail_next_blob(Fault::Drip {
        chunk: 64 * 1024,
        delay: Duration::from_millis(20),
    });
    let r = e.cache.blob(&n("library/app"), &d, None).await.unwrap();
    let mut s = r.body.into_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(!first.is_empty() && first.len() < layer.len());
    // The fetch's runtime goes away mid-transfer, its task with it.
    near.shutdown_background();
    let (_, err) = tokio::time::timeout(Duration::from_secs(5), drain(s))
        .await
        .expect("the reader is told, not left waiting");
    let err = err.expect("an unfinished fetch never completes a response");
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert_eq!(
        e.cache.inflight(),
        0,
        "nobody joins a fetch that no longer runs"
    );
    // A fetch spawned onto the dead runtime is dropped before it ever
    // runs: its reader is told too.
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        e.cache.blob(&n("library/app"), &d, None),
    )
    .await
    .expect("the reader is told, not left waiting")
    .expect_err("a fetch that never ran serves nothing");
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert_eq!(e.cache.inflight(), 0);
    assert!(
        e.store.stat(&d).await.unwrap().is_none(),
        "nothing is stored"
    );
    assert_eq!(gets(&e.up), 1, "the fetch that never ran asked no upstream");
    // On a live runtime the next request fetches the blob whole.
    *spawner.0.lock().unwrap() = None;
    let (got, err) = pull(&e, "library/app", &d).await;
    assert!(err.is_none(), "{err:?}");
    assert!(got == layer, "the blob, whole");
    assert_eq!(gets(&e.up), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_commits_nothing_fails_every_reader_and_is_fetched_again() {
    let e = live_env();
    let (layer, d) = app_blob(&e, 10, 512 * 1024);
    // Slow enough that all four readers join the one failing fetch.
    e.up.set_drip(Some((64 * 1024, Duration::from_millis(20))));
    e.up.fail_next_blob(Fault::FlipByte(1000));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let c = e.cache.clone();
        let d = d.clone();
        readers.push(tokio::spawn(async move {
            match c.blob(&n("library/app"), &d, None).await {
                Ok(r) => drain(r.body.into_stream()).await,
                Err(e) => (Vec::new(), Some(e)),
            }
        }));
    }
    for r in readers {
        let (bytes, err) = r.await.unwrap();
        assert!(
            matches!(err, Some(Error::DigestMismatch { .. })),
            "every reader errors: {err:?}"
        );
        assert!(
            bytes.len() < layer.len(),
            "a reader never receives every byte of content that failed verification"
        );
    }
    assert!(
        e.store.stat(&d).await.unwrap().is_none(),
        "nothing committed"
    );
    assert_eq!(gets(&e.up), 1, "the four readers shared one fetch");
    let (bytes, err) = pull(&e, "library/app", &d).await;
    assert!(
        err.is_none() && bytes == layer,
        "the next request fetches again, correctly"
    );
    assert_eq!(gets(&e.up), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_byte_goes_out_once_verified_while_the_commit_is_still_held() {
    let (store, e) = env_with_faults(Setup::default().opts);
    let (layer, d) = app_blob(&e, 41, 700_000);
    store.hold();
    let ranges = [
        None,
        Some(ByteRange::Suffix(1)),
        Some(ByteRange::Inclusive(0, 9)),
    ];
    for r in ranges {
        let (bytes, err) = tokio::time::timeout(
            Duration::from_secs(10),
            read_blob(&e.cache, "library/app", &d, r),
        )
        .await
        .expect("a verified blob is not held back by its commit");
        assert!(err.is_none(), "{r:?}: {err:?}");
        let span = r.map_or(0..layer.len() as u64, |r| {
            r.resolve(layer.len() as u64).unwrap()
        });
        assert_eq!(
            bytes,
            layer[span.start as usize..span.end as usize],
            "{r:?}"
        );
    }
    let held = store.clone();
    wait_until(move || held.waiting() == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.waiting(), 1, "the commit is still held");
    assert!(
        e.store.stat(&d).await.unwrap().is_none(),
        "not yet published"
    );
    assert_eq!(e.cache.inflight(), 1);
    store.release();
    let cache = e.cache.clone();
    wait_until(move || cache.inflight() == 0).await;
    assert_eq!(store.committed(), 1);
    assert_eq!(e.store.get_bytes(&d).await.unwrap(), layer);
    assert_eq!(gets(&e.up), 1, "every reader shared the one fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_while_a_verified_blob_commits_is_a_hit_from_the_staged_file() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn BlobStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    let store = CommitFaults::new(fs);
    let e = env_with(Setup {
        real_time: true,
        store: Some(store.clone()),
        ..Setup::default()
    });
    let (layer, d) = app_blob(&e, 43, 300_000);
    store.hold();
    let (bytes, err) = read_blob(&e.cache, "library/app", &d, None).await;
    assert!(err.is_none() && bytes == layer);
    let held = store.clone();
    wait_until(move || held.waiting() == 1).await;
    let r = e
        .cache
        .blob(&n("library/app"), &d, Some(ByteRange::From(1000)))
        .await
        .unwrap();
    assert_eq!(r.status, CacheStatus::Hit, "nothing to wait for upstream");
    let BlobBody::File(file) = r.body else {
        panic!("a verified staged file is offered for sending");
    };
    assert_eq!(file.range(), 1000..300_000);
    let mut buf = vec![0; 299_000];
    file.file().read_exact_at(&mut buf, 1000).unwrap();
    assert!(buf[..] == layer[1000..]);
    drop(file);
    store.release();
    wait_until(|| e.cache.inflight() == 0).await;
    assert_eq!(gets(&e.up), 1);
    assert_eq!(e.store.get_bytes(&d).await.unwrap(), layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_failing_after_verification_fails_unfinished_readers_is_counted_and_refetched() {
    let (store, e) = env_with_faults(Setup::default().opts);
    let (layer, d) = app_blob(&e, 42, 2 * 1024 * 1024);
    store.hold();
    store.fail_next(1);
    // A slow reader: it takes one piece, then waits.
    let slow = e.cache.blob(&n("library/app"), &d, None).await.unwrap();
    let mut slow = slow.body.into_stream();
    let first = slow.next().await.unwrap().unwrap();
    assert!(first.len() < layer.len());
    let (bytes, err) = read_blob(&e.cache, "library/app", &d, None).await;
    assert!(err.is_none(), "{err:?}");
    assert!(
        bytes == layer,
        "the first client's answer is whole and right"
    );
    let held = store.clone();
    wait_until(move || held.waiting() == 1).await;
    store.release();
    let cache = e.cache.clone();
    wait_until(move || cache.inflight() == 0).await;
    assert_eq!(store.failed(), 1);
    assert_eq!(e.counters.commits_failed.load(Ordering::SeqCst), 1);
    assert_eq!(e.counters.fetches_failed.load(Ordering::SeqCst), 1);
    assert_eq!(
        e.counters.upstream_errors.load(Ordering::SeqCst),
        0,
        "a store's failure is not the upstream's"
    );
    let (rest, err) = drain(slow).await;
    assert!(
        err.is_some(),
        "a reader that had not finished is failed ({} more bytes)",
        rest.len()
    );
    assert!(first.len() + rest.len() < layer.len());
    assert!(
        e.store.stat(&d).await.unwrap().is_none(),
        "nothing published"
    );
    let (bytes, err) = read_blob(&e.cache, "library/app", &d, None).await;
    assert!(
        err.is_none() && bytes == layer,
        "the next request fetches again"
    );
    assert_eq!(gets(&e.up), 2);
    let cache = e.cache.clone();
    wait_until(move || cache.inflight() == 0).await;
    assert_eq!(
        e.store.get_bytes(&d).await.unwrap(),
        layer,
        "committed this time"
    );
}

fn passthrough_env(opts: CacheOptions) -> Env {
    env_with(Setup {
        real_time: true,
        policy: RulePolicy {
            cold_ranges: ColdRanges::Passthrough,
            ..RulePolicy::default()
        },
        opts,
        ..Setup::default()
    })
}

/// Slows the next whole-blob fetch to 64 KiB every 40 ms (1.6 MiB/s): a
/// 3 MiB blob takes about 1.9 s, so what must happen before its end has
/// about a second of slack on a loaded machine.
fn trickle(e: &Env) {
    e.up.fail_next_blob(Fault::Drip {
        chunk: 64 * 1024,
        delay: Duration::from_millis(40),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_range_beyond_the_fetch_is_served_at_once_by_a_ranged_get_of_its_own() {
    let e = passthrough_env(Setup::default().opts);
    let (layer, d) = app_blob(&e, 44, 3 * 1024 * 1024);
    trickle(&e);
    let started = std::time::Instant::now();
    let r = e
        .cache
        .blob(&n("library/app"), &d, Some(ByteRange::Suffix(1024 * 1024)))
        .await
        .unwrap();
    assert!(!r.verified, "said to be unverified");
    assert_eq!(r.status, CacheStatus::Miss);
    let tail = 2 * 1024 * 1024..3 * 1024 * 1024;
    assert_eq!(r.range, tail.start as u64..tail.end as u64);
    let (bytes, err) = drain(r.body.into_stream()).await;
    assert!(err.is_none(), "{err:?}");
    assert!(bytes[..] == layer[tail], "the right bytes");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "not after the whole blob: {:?}",
        started.elapsed()
    );
    assert_eq!(e.cache.inflight(), 1, "the whole-blob fetch goes on");
    assert_eq!(e.up.calls.ranged_blob_gets.load(Ordering::SeqCst), 1);

    // A range the fetch has staged already: at once, no request of its own.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = e
        .cache
        .blob(&n("library/app"), &d, Some(ByteRange::Inclusive(0, 9_999)))
        .await
        .unwrap();
    assert!(!r.verified);
    let (bytes, err) = drain(r.body.into_stream()).await;
    assert!(err.is_none() && bytes[..] == layer[..10_000]);
    assert_eq!(e.cache.inflight(), 1, "before the blob verified");
    assert_eq!(e.up.calls.ranged_blob_gets.load(Ordering::SeqCst), 1);

    wait_until(|| e.cache.inflight() == 0).await;
    assert_eq!(
        e.store.get_bytes(&d).await.unwrap(),
        layer,
        "committed, whole"
    );
    assert_eq!(gets(&e.up), 2, "one whole-blob GET and one ranged GET");
    let r = e
        .cache
        .blob(&n("library/app"), &d, Some(ByteRange::Suffix(10)))
        .await
        .unwrap();
    assert!(
        r.verified && r.status == CacheStatus::Hit,
        "then from the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_range_under_the_default_rule_waits_for_the_whole_verified_blob() {
    let e = live_env();
    let (layer, d) = app_blob(&e, 45, 3 * 1024 * 1024);
    trickle(&e);
    let r = e
        .cache
        .blob(&n("library/app"), &d, Some(ByteRange::Suffix(1024 * 1024)))
        .await
        .unwrap();
    assert!(r.verified);
    let read = tokio::spawn(drain(r.body.into_stream()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!read.is_finished(), "it waits for the whole blob");
    let (bytes, err) = read.await.unwrap();
    assert!(err.is_none() && bytes[..] == layer[2 * 1024 * 1024..]);
    assert_eq!(gets(&e.up), 1);
    assert_eq!(e.up.calls.ranged_blob_gets.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_ranges_are_bounded_in_size_and_count_and_then_wait() {
    let e = passthrough_env(CacheOptions {
        cold_range_max: 64 * 1024,
        cold_ranges_per_blob: 1,
        ..Setup::default().opts
    });
    let (layer, d) = app_blob(&e, 46, 3 * 1024 * 1024);
    trickle(&e);
    let big = e
        .cache
        .blob(
            &n("library/app"),
            &d,
            Some(ByteRange::Suffix(64 * 1024 + 1)),
        )
        .await
        .unwrap();
    assert!(big.verified, "over cold_range_max: it waits");
    let one = e
        .cache
        .blob(&n("library/app"), &d, Some(ByteRange::Suffix(1000)))
        .await
        .unwrap();
    assert!(!one.verified, "within the bounds: passed through");
    let (bytes, err) = drain(one.body.into_stream()).await;
    assert!(err.is_none() && bytes[..] == layer[layer.len() - 1000..]);
    let two = e
        .cache
        .blob(&n("library/app"), &d, Some(ByteRange::Suffix(2000)))
        .await
        .unwrap();
    assert!(two.verified, "cold_ranges_per_blob spent: it waits");
    let (bytes, err) = drain(two.body.into_stream()).await;
    assert!(err.is_none() && bytes[..] == layer[layer.len() - 2000..]);
    drop(big);
    assert_eq!(e.up.calls.ranged_blob_gets.load(Ordering::SeqCst), 1);
    assert_eq!(gets(&e.up), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_transfer_is_resumed_with_range() {
    let e = env();
    let (layer, d) = app_blob(&e, 11, 700_000);
    e.up.fail_next_blob(Fault::Truncate(300_000));
    let (bytes, err) = pull(&e, "library/app", &d).await;
    assert!(err.is_none(), "{err:?}");
    assert!(bytes == layer);
    assert_eq!(gets(&e.up), 2);
    assert_eq!(e.up.calls.ranged_blob_gets.load(Ordering::SeqCst), 1);
    // The answer completed at verification; the commit follows.
    let cache = e.cache.clone();
    wait_until(move || cache.inflight() == 0).await;
    assert_eq!(e.store.get_bytes(&d).await.unwrap(), layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transfer_is_resumed_after_the_idle_timeout() {
    let e = live_env();
    let (layer, d) = app_blob(&e, 12, 400_000);
    e.up.fail_next_blob(Fault::Stall(100_000));
    let (bytes, err) = pull(&e, "library/app", &d).await;
    assert!(err.is_none(), "{err:?}");
    assert!(bytes == layer);
    assert_eq!(e.up.calls.ranged_blob_gets.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_truncation_gives_up_after_the_resume_limit_and_commits_nothing() {
    let e = env();
    let layer = content(13, 100_000);
    let d = e.up.add_blob(&n("library/app"), layer);
    for _ in 0..10 {
        e.up.fail_next_blob(Fault::Truncate(10));
    }
    // A fetch that fails before the reader starts reports its error from
    // `blob`; one that fails later, at the end of the stream. Either is right.
    let err = match e.cache.blob(&n("library/app"), &d, None).await {
        Ok(r) => drain(r.body.into_stream()).await.1,
        Err(e) => Some(e),
    };
    assert!(matches!(err, Some(Error::Upstream { .. })), "{err:?}");
    assert_eq!(gets(&e.up), 4, "the first GET and three resumptions");
    assert!(e.store.stat(&d).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_404_and_429_are_not() {
    // Back-off sleeps on the engine's clock: real time here, 1 ms units.
    let e = live_env();
    let (layer, d) = app_blob(&e, 14, 1000);
    e.up.fail_next_blob(Fault::ServerError);
    let (bytes, err) = pull(&e, "library/app", &d).await;
    assert!(err.is_none() && bytes == layer);
    assert_eq!(gets(&e.up), 2);

    let missing = Digest::sha256_of(b"missing");
    let err = e
        .cache
        .blob(&n("library/app"), &missing, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BlobUnknown);

    let d2 = e.up.add_blob(&n("library/app"), content(15, 10));
    e.up.fail_next_blob(Fault::TooManyRequests);
    let before = gets(&e.up);
    let err = e
        .cache
        .blob(&n("library/app"), &d2, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooManyRequests);
    assert_eq!(gets(&e.up), before + 1, "429 is surfaced, not hammered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_request_on_a_miss_makes_one_whole_blob_fetch() {
    let e = env();
    let (layer, d) = app_blob(&e, 16, 500_000);
    let r = e
        .cache
        .blob(
            &n("library/app"),
            &d,
            Some(ByteRange::Inclusive(1000, 1999)),
        )
        .await
        .unwrap();
    assert_eq!((r.size, r.range.clone()), (500_000, 1000..2000));
    let (bytes, err) = drain(r.body.into_stream()).await;
    assert!(err.is_none());
    assert_eq!(bytes, &layer[1000..2000]);
    let r = e
        .cache
        .blob(&n("library/app"), &d, Some(ByteRange::Suffix(10)))
        .await
        .unwrap();
    assert_eq!(drain(r.body.into_stream()).await.0, &layer[499_990..]);
    assert_eq!(gets(&e.up), 1);
    let err = e
        .cache
        .blob(&n("library/app"), &d, Some(ByteRange::From(500_000)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RangeInvalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_cached_through_another_rule_is_blob_unknown() {
    let e = env();
    let secret = content(17, 5000);
    let d = e.private.add_blob(&n("team/secret"), secret.clone());
    let (bytes, _) = pull(&e, "team/secret", &d).await;
    assert_eq!(bytes, secret);
    // Guessing the digest through the public rule: its upstream does not vouch for it.
    let err = e.cache.blob(&n("library/app"), &d, None).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BlobUnknown);
    assert_eq!(
        e.cache
            .head_blob(&n("library/app"), &d)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::BlobUnknown
    );
    // Another repository under the same rule is vouched for by the upstream, not by the cache.
    assert_eq!(
        e.cache
            .blob(&n("team/other"), &d, None)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::BlobUnknown
    );
    // And a manifest by digest likewise.
    let m = e
        .private
        .push_image(&n("team/secret"), &t("v1"), &[content(18, 10)]);
    by_tag(&e, "team/secret", "v1").await.unwrap();
    let err = by_digest(&e, "library/app", &m.manifest).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ManifestUnknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_named_by_a_pulled_manifest_need_no_extra_upstream_check() {
    let e = env();
    let img =
        e.up.push_image(&n("library/app"), &t("v1"), &[content(19, 20_000)]);
    by_tag(&e, "library/app", "v1").await.unwrap();
    let d = &img.layers[0].0;
    pull(&e, "library/app", d).await;
    let r = e.cache.blob(&n("library/app"), d, None).await.unwrap();
    assert_eq!(r.status, CacheStatus::Hit);
    assert_eq!(e.up.calls.blob_heads.load(Ordering::SeqCst), 0);
    assert_eq!(
        e.cache.head_blob(&n("library/app"), d).await.unwrap(),
        (20_000, CacheStatus::Hit)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_stored_byte_exact_and_platform_manifests_when_requested() {
    let e = env();
    let a =
        e.up.push_image(&n("library/multi"), &t("amd64"), &[content(20, 100)]);
    let b =
        e.up.push_image(&n("library/multi"), &t("arm64"), &[content(21, 100)]);
    let index = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
        mt::OCI_INDEX,
        mt::OCI_MANIFEST,
        a.manifest,
        a.manifest_bytes.len(),
        mt::OCI_MANIFEST,
        b.manifest,
        b.manifest_bytes.len()
    ));
    let id = e.up.add_manifest(
        &n("library/multi"),
        Some(&t("latest")),
        index.clone(),
        mt::OCI_INDEX,
    );
    let r = by_tag(&e, "library/multi", "latest").await.unwrap();
    assert_eq!(
        (r.digest, r.bytes, r.media_type.as_str()),
        (id, index, mt::OCI_INDEX)
    );
    assert!(
        e.store.stat(&a.manifest).await.unwrap().is_none(),
        "children are cached when requested"
    );
    let r = by_digest(&e, "library/multi", &b.manifest).await.unwrap();
    assert_eq!((r.status, r.bytes), (CacheStatus::Miss, b.manifest_bytes));
    assert!(e.store.stat(&b.manifest).await.unwrap().is_some());
    // A client that does not accept indexes is told so, as distribution does.
    let err = e
        .cache
        .manifest(
            &n("library/multi"),
            &Reference::Tag(t("latest")),
            &Accept::only([mt::DOCKER_MANIFEST]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ManifestUnknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifests_are_an_upstream_error_and_not_cached() {
    let e = env_with(Setup {
        opts: CacheOptions {
            max_manifest_size: 100,
            ..CacheOptions::default()
        },
        ..Setup::default()
    });
    let img =
        e.up.push_image(&n("library/app"), &t("v1"), &[content(22, 10)]);
    let err = by_tag(&e, "library/app", "v1").await.unwrap_err();
    assert_eq!(
        err.code(),
        ErrorCode::UpstreamError,
        "a 502, not a 400: {err}"
    );
    assert!(err.to_string().contains("limit"), "{err}");
    assert!(e.store.stat(&img.manifest).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_hooks_refuse_with_denied_and_nothing_is_cached() {
    let e = env_with(Setup {
        admission: vec![
            Arc::new(MaxImageSize::new(1000)),
            Arc::new(PlatformAllowList::new(vec![
                Platform::parse("linux/amd64").unwrap(),
            ])),
        ],
        ..Setup::default()
    });
    let big =
        e.up.push_image(&n("library/big"), &t("v1"), &[content(23, 5000)]);
    let err = by_tag(&e, "library/big", "v1").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Denied);
    assert!(err.to_string().contains("exceeds"), "{err}");
    assert!(e.store.stat(&big.manifest).await.unwrap().is_none());

    let arm =
        e.up.push_image(&n("library/multi"), &t("arm"), &[content(24, 10)]);
    let amd =
        e.up.push_image(&n("library/multi"), &t("amd"), &[content(25, 10)]);
    let index = Bytes::from(format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"arm64"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        arm.manifest,
        arm.manifest_bytes.len(),
        amd.manifest,
        amd.manifest_bytes.len()
    ));
    e.up.add_manifest(
        &n("library/multi"),
        Some(&t("latest")),
        index,
        mt::OCI_INDEX,
    );
    by_tag(&e, "library/multi", "latest").await.unwrap();
    by_digest(&e, "library/multi", &amd.manifest).await.unwrap();
    let err = by_digest(&e, "library/multi", &arm.manifest)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Denied);
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    assert!(e.store.stat(&arm.manifest).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_list_falls_back_to_cached_tags_when_the_upstream_fails() {
    let e = env();
    for tag in ["v1", "v2", "v3"] {
        e.up.push_image(&n("library/app"), &t(tag), &[content(26, 10)]);
    }
    let page = TagPage::default();
    let l = e.cache.tags(&n("library/app"), &page).await.unwrap();
    assert_eq!((l.tags.len(), l.status), (3, CacheStatus::Miss));
    for tag in ["v1", "v3"] {
        e.cache
            .manifest(&n("library/app"), &Reference::Tag(t(tag)), &Accept::any())
            .await
            .unwrap();
    }
    e.up.set_down(true);
    let l = e.cache.tags(&n("library/app"), &page).await.unwrap();
    assert_eq!(
        (l.tags, l.status),
        (vec![t("v1"), t("v3")], CacheStatus::Stale)
    );
    let l = e
        .cache
        .tags(
            &n("library/app"),
            &TagPage {
                limit: Some(1),
                last: Some(t("v1")),
            },
        )
        .await
        .unwrap();
    assert_eq!(l.tags, vec![t("v3")]);
    let err = e.cache.tags(&n("library/never"), &page).await.unwrap_err();
    assert_eq!(err.code().http_status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_the_quota_by_least_recent_use_and_spares_blobs_in_use() {
    let e = env();
    let mut ds = Vec::new();
    for i in 0..4 {
        let d = e.up.add_blob(&n("library/app"), content(30 + i, 10_000));
        pull(&e, "library/app", &d).await;
        e.clock.advance(Duration::from_secs(3600));
        ds.push(d);
    }
    // Least recently used first: 0 and 1 go, 2 and 3 stay.
    let report = e.cache.gc(Some(25_000)).await.unwrap();
    assert_eq!(
        (report.evicted, report.freed_bytes, report.remaining_bytes),
        (2, 20_000, 20_000)
    );
    assert!(e.store.stat(&ds[0]).await.unwrap().is_none());
    assert!(e.store.stat(&ds[1]).await.unwrap().is_none());
    assert!(e.store.stat(&ds[2]).await.unwrap().is_some());
    // A blob being read from its file survives even a quota of zero.
    let big = e.up.add_blob(&n("library/app"), content(40, 100_000));
    pull(&e, "library/app", &big).await;
    let reading = e.cache.blob(&n("library/app"), &big, None).await.unwrap();
    assert!(
        !matches!(reading.body, BlobBody::Bytes(_)),
        "above hot_max_item"
    );
    // Small content is sent from memory: it holds no file, and gc may
    // remove the stored blob under it without changing what it sends.
    let small = e.cache.blob(&n("library/app"), &ds[3], None).await.unwrap();
    assert!(matches!(small.body, BlobBody::Bytes(_)));
    let report = e.cache.gc(Some(0)).await.unwrap();
    assert_eq!((report.evicted, report.skipped_in_use), (2, 1));
    assert!(e.store.stat(&ds[2]).await.unwrap().is_none());
    assert!(e.store.stat(&ds[3]).await.unwrap().is_none());
    assert!(
        e.store.stat(&big).await.unwrap().is_some(),
        "in-use blob spared"
    );
    assert_eq!(
        drain(small.body.into_stream()).await.0,
        content(33, 10_000),
        "sent whole from memory"
    );
    assert_eq!(drain(reading.body.into_stream()).await.0.len(), 100_000);
    // Evicted content is fetched again on demand.
    pull(&e, "library/app", &ds[1]).await;
    assert!(e.store.stat(&ds[1]).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_content_past_its_rules_ttl() {
    let e = env_with(Setup {
        policy: RulePolicy {
            content_ttl: Some(Duration::from_secs(86_400)),
            ..RulePolicy::default()
        },
        ..Setup::default()
    });
    let old = e.up.add_blob(&n("library/app"), content(40, 100));
    pull(&e, "library/app", &old).await;
    e.clock.advance(Duration::from_secs(2 * 86_400));
    let new = e.up.add_blob(&n("library/app"), content(41, 100));
    pull(&e, "library/app", &new).await;
    let report = e.cache.gc(None).await.unwrap();
    assert_eq!(report.expired, 1);
    assert!(e.store.stat(&old).await.unwrap().is_none());
    assert!(e.store.stat(&new).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_removes_a_corrupted_file() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsStore::open(dir.path()).await.unwrap();
    let e = env_with(Setup {
        store: Some(Arc::new(fs.clone())),
        ..Setup::default()
    });
    let good = e.up.add_blob(&n("library/app"), content(50, 50_000));
    let bad = e.up.add_blob(&n("library/app"), content(51, 50_000));
    for d in [&good, &bad] {
        pull(&e, "library/app", d).await;
    }
    // Answers complete at verification; the commits follow.
    let cache = e.cache.clone();
    wait_until(move || cache.inflight() == 0).await;
    let path = fs.blob_path(&bad);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[12_345] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let report = e.cache.scrub().await.unwrap();
    assert_eq!(
        (report.checked, report.removed.clone()),
        (2, vec![bad.clone()])
    );
    assert!(fs.stat(&bad).await.unwrap().is_none());
    assert!(fs.stat(&good).await.unwrap().is_some());
    // The next request fetches a good copy.
    let (bytes, err) = pull(&e, "library/app", &bad).await;
    assert!(err.is_none() && bytes == content(51, 50_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_works_on_the_filesystem_store() {
    let dir = tempfile::tempdir().unwrap();
    let e = env_with(Setup {
        store: Some(Arc::new(FsStore::open(dir.path()).await.unwrap())),
        real_time: true,
        ..Setup::default()
    });
    let layer = content(60, 2 * 1024 * 1024 + 3);
    let d = dripping_layer(&e, "library/app", &layer, Duration::from_millis(2)).await;
    concurrent_readers(&e, "library/app", &d, 8, &layer).await;
    assert_eq!(gets(&e.up), 1);
    assert_eq!(e.up.calls.blob_heads.load(Ordering::SeqCst), 0);
}

/// A hit from a store that keeps files offers the file span for sendfile;
/// while that is held gc spares the blob, and what it reports counts as served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_on_the_filesystem_store_offers_its_file_span_and_keeps_the_blob_in_use() {
    use std::os::unix::fs::FileExt as _;
    let dir = tempfile::tempdir().unwrap();
    let e = env_with(Setup {
        store: Some(Arc::new(FsStore::open(dir.path()).await.unwrap())),
        real_time: true,
        ..Setup::default()
    });
    let blob = content(61, 100_000);
    let d = e.up.add_blob(&n("library/app"), blob.clone());
    let miss = e.cache.blob(&n("library/app"), &d, None).await.unwrap();
    let BlobBody::Follow(miss) = miss.body else {
        panic!("a miss streams from the fetch");
    };
    drain(miss.into_stream()).await;
    wait_until(|| e.cache.inflight() == 0).await;
    let range = ByteRange::parse_http("bytes=10-20009").unwrap();
    let hit = e
        .cache
        .blob(&n("library/app"), &d, Some(range))
        .await
        .unwrap();
    assert_eq!(hit.status, CacheStatus::Hit);
    let BlobBody::File(file) = hit.body else {
        panic!("the filesystem store offers its file");
    };
    assert_eq!(file.range(), 10..20_010);
    let mut buf = vec![0; 20_000];
    file.file().read_exact_at(&mut buf, 10).unwrap();
    assert!(buf[..] == blob[10..20_010]);
    let served = Counters::get(&e.counters.bytes_served);
    file.sent(20_000);
    assert_eq!(Counters::get(&e.counters.bytes_served), served + 20_000);
    let report = e.cache.gc(Some(0)).await.unwrap();
    assert_eq!(report.skipped_in_use, 1, "held file span keeps the blob");
    assert!(e.store.stat(&d).await.unwrap().is_some());
    drop(file);
    assert_eq!(e.cache.gc(Some(0)).await.unwrap().evicted, 1);
    // A store without files offers none.
    let e = env();
    let d = e.up.add_blob(&n("library/app"), content(62, 1000));
    pull(&e, "library/app", &d).await;
    wait_until(|| e.cache.inflight() == 0).await;
    let hit = e.cache.blob(&n("library/app"), &d, None).await.unwrap();
    assert_eq!(hit.status, CacheStatus::Hit);
    assert!(
        !matches!(hit.body, BlobBody::File(_)),
        "a store without files offers none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_events_count_hits_misses_and_bytes() {
    let e = env();
    let d = e.up.add_blob(&n("library/app"), content(70, 1000));
    pull(&e, "library/app", &d).await;
    pull(&e, "library/app", &d).await;
    let c = &e.counters;
    assert_eq!((Counters::get(&c.misses), Counters::get(&c.hits)), (1, 1));
    assert_eq!(Counters::get(&c.bytes_from_upstream), 1000);
    assert_eq!(Counters::get(&c.bytes_served), 2000);
    assert_eq!(Counters::get(&c.fetches_started), 1);
    // Answers complete at verification; the fetch ends with its commit.
    wait_until(|| e.cache.inflight() == 0).await;
    assert_eq!(Counters::get(&c.fetches_finished), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetch_cap_makes_extra_transfers_wait_their_turn() {
    let e = env_with(Setup {
        real_time: true,
        opts: CacheOptions {
            max_concurrent_fetches: 1,
            ..Setup::default().opts
        },
        ..Setup::default()
    });
    e.up.set_drip(Some((32 * 1024, Duration::from_millis(10))));
    let a = e.up.add_blob(&n("library/app"), content(80, 256 * 1024));
    let b = e.up.add_blob(&n("library/app"), content(81, 256 * 1024));
    let ca = e.cache.clone();
    let first = tokio::spawn(async move {
        drain(
            ca.blob(&n("library/app"), &a, None)
                .await
                .unwrap()
                .body
                .into_stream(),
        )
        .await
    });
    let up = e.up.clone();
    wait_until(move || gets(&up) == 1).await;
    let cb = e.cache.clone();
    let second = tokio::spawn(async move {
        drain(
            cb.blob(&n("library/app"), &b, None)
                .await
                .unwrap()
                .body
                .into_stream(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(e.cache.inflight(), 2, "both fetches exist");
    assert_eq!(gets(&e.up), 1, "but only one transfer runs");
    assert!(first.await.unwrap().1.is_none());
    assert!(second.await.unwrap().1.is_none());
    assert_eq!(gets(&e.up), 2);
}

async fn read_blob(
    c: &PullThroughCache,
    repo: &str,
    d: &Digest,
    range: Option<ByteRange>,
) -> (Vec<u8>, Option<Error>) {
    match c.blob(&n(repo), d, range).await {
        Ok(r) => drain(r.body.into_stream()).await,
        Err(e) => (Vec::new(), Some(e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reader_of_content_that_fails_verification_gets_its_whole_span() {
    let e = live_env();
    let (layer, d) = app_blob(&e, 40, 300_000);
    e.up.set_drip(Some((32 * 1024, Duration::from_millis(10))));
    // The very last byte is wrong: only the digest can tell.
    e.up.fail_next_blob(Fault::FlipByte(layer.len() as u64 - 1));
    let ranges = [
        None,
        Some(ByteRange::From(100_000)),
        Some(ByteRange::Suffix(10)),
        Some(ByteRange::Inclusive(0, 999)),
        Some(ByteRange::Inclusive(299_999, 299_999)),
    ];
    let mut readers = Vec::new();
    for r in ranges {
        let c = e.cache.clone();
        let d = d.clone();
        readers.push(tokio::spawn(async move {
            (r, read_blob(&c, "library/app", &d, r).await)
        }));
    }
    for h in readers {
        let (r, (bytes, err)) = h.await.unwrap();
        let span = r.map_or(0..layer.len() as u64, |r| {
            r.resolve(layer.len() as u64).unwrap()
        });
        assert!(err.is_some(), "{r:?}: the stream ends with an error");
        assert!(
            (bytes.len() as u64) < span.end - span.start,
            "{r:?}: {} of {} bytes, never all",
            bytes.len(),
            span.end - span.start
        );
    }
    assert_eq!(gets(&e.up), 1, "every reader shared the one failing fetch");
    assert!(e.store.stat(&d).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_for_a_non_empty_digest_is_refused_before_any_answer() {
    let e = env();
    let d = Digest::sha256_of(b"not empty");
    e.up.add_blob_as(&n("library/app"), &d, Bytes::new());
    let err = e
        .cache
        .blob(&n("library/app"), &d, None)
        .await
        .expect_err("no response head for an empty body that does not verify");
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(e.store.stat(&d).await.unwrap().is_none());
    // The real empty blob is served, once verified.
    let empty = e.up.add_blob(&n("library/app"), Bytes::new());
    let r = e.cache.blob(&n("library/app"), &empty, None).await.unwrap();
    assert_eq!(
        (r.size, drain(r.body.into_stream()).await.1.is_none()),
        (0, true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_subject_or_foreign_layer_entitles_nothing() {
    let e = env();
    let secret_bytes = content(41, 5000);
    let secret = e.private.add_blob(&n("team/secret"), secret_bytes.clone());
    let (got, err) = read_blob(&e.cache, "team/secret", &secret, None).await;
    assert!(
        err.is_none() && got == secret_bytes,
        "cached through its own rule"
    );
    // A public manifest whose subject, and a foreign layer, name the private digest.
    let config = e.up.add_blob(&n("library/pub"), Bytes::from_static(b"{}"));
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{secret}","size":5000,"urls":["https://example.com/l"]}}],"subject":{{"mediaType":"{}","digest":"{secret}","size":5000}}}}"#,
        mt::OCI_MANIFEST,
        mt::OCI_MANIFEST
    );
    e.up.add_manifest(
        &n("library/pub"),
        Some(&t("v1")),
        Bytes::from(m),
        mt::OCI_MANIFEST,
    );
    by_tag(&e, "library/pub", "v1").await.unwrap();
    let (got, err) = read_blob(&e.cache, "library/pub", &secret, None).await;
    assert!(got.is_empty());
    assert_eq!(err.map(|e| e.code()), Some(ErrorCode::BlobUnknown));
    assert_eq!(
        (gets(&e.up), e.up.calls.blob_heads.load(Ordering::SeqCst)),
        (0, 1),
        "the public upstream was asked with a HEAD and said no"
    );
    // The config it does vouch for is served.
    let (got, err) = read_blob(&e.cache, "library/pub", &config, None).await;
    assert!(err.is_none() && got == b"{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_upstream_queue_refuses_at_once_and_other_upstreams_are_unaffected() {
    let e = env_with(Setup {
        real_time: true,
        opts: CacheOptions {
            max_concurrent_fetches: 1,
            max_queued_fetches: 1,
            ..Setup::default().opts
        },
        ..Setup::default()
    });
    let blobs: Vec<Digest> = (0..3)
        .map(|i| e.up.add_blob(&n("library/app"), content(50 + i, 200_000)))
        .collect();
    e.up.set_drip(Some((20_000, Duration::from_millis(20))));
    let mut running = Vec::new();
    for d in &blobs[..2] {
        let (c, d) = (e.cache.clone(), d.clone());
        running.push(tokio::spawn(async move {
            read_blob(&c, "library/app", &d, None).await
        }));
    }
    wait_until(|| e.cache.inflight() == 2).await;
    let err = e
        .cache
        .blob(&n("library/app"), &blobs[2], None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(err.retry_after().is_some());
    // Another registry has its own queue.
    let other = e.private.add_blob(&n("team/x"), content(60, 1000));
    let (got, err) = tokio::time::timeout(
        Duration::from_secs(2),
        read_blob(&e.cache, "team/x", &other, None),
    )
    .await
    .expect("not stuck behind the other upstream's queue");
    assert!(err.is_none() && got.len() == 1000);
    for h in running {
        let (got, err) = h.await.unwrap();
        assert!(err.is_none() && got.len() == 200_000);
    }
    let (_, err) = read_blob(&e.cache, "library/app", &blobs[2], None).await;
    assert!(err.is_none(), "a place is free again: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_fetch_whose_readers_all_left_never_reaches_the_upstream() {
    let e = env_with(Setup {
        real_time: true,
        opts: CacheOptions {
            max_concurrent_fetches: 1,
            ..Setup::default().opts
        },
        ..Setup::default()
    });
    let first = e.up.add_blob(&n("library/app"), content(70, 100_000));
    let second = e.up.add_blob(&n("library/app"), content(71, 100_000));
    e.up.set_drip(Some((10_000, Duration::from_millis(20))));
    let (c, d) = (e.cache.clone(), first.clone());
    let running = tokio::spawn(async move { read_blob(&c, "library/app", &d, None).await });
    wait_until(|| e.cache.inflight() == 1).await;
    let (c, d) = (e.cache.clone(), second.clone());
    let queued = tokio::spawn(async move { read_blob(&c, "library/app", &d, None).await });
    wait_until(|| e.cache.inflight() == 2).await;
    queued.abort();
    let _ = queued.await;
    wait_until(|| e.cache.inflight() == 1).await;
    assert!(running.await.unwrap().1.is_none());
    assert_eq!(gets(&e.up), 1, "the deserted fetch was never sent upstream");
    e.up.set_drip(None);
    let (got, err) = read_blob(&e.cache, "library/app", &second, None).await;
    assert!(
        err.is_none() && got.len() == 100_000,
        "asked again, it runs"
    );
    assert_eq!(gets(&e.up), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_manifest_fetch_ends_within_its_timeout_and_is_not_reused() {
    let e = env_with(Setup {
        real_time: true,
        opts: CacheOptions {
            manifest_timeout: Duration::from_millis(300),
            ..Setup::default().opts
        },
        ..Setup::default()
    });
    let img =
        e.up.push_image(&n("library/app"), &t("v1"), &[content(80, 100)]);
    e.up.fail_next_manifest(Fault::Stall(0));
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        e.cache
            .manifest(&n("library/app"), &Reference::Tag(t("v1")), &Accept::any()),
    )
    .await;
    assert!(gave_up.is_err(), "the caller gave up first");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let m = by_tag(&e, "library/app", "v1")
        .await
        .expect("a new flight, not the stalled one");
    assert_eq!(m.digest, img.manifest);
    assert_eq!(e.up.calls.manifest_gets.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_retry_budget_bounds_the_upstream_requests_of_every_operation() {
    let e = env();
    let img =
        e.up.push_image(&n("library/app"), &t("v1"), &[content(90, 100)]);
    e.up.set_down(true);
    let budget = 1 + CacheOptions::default().max_retries as u64;
    let (_, err) = read_blob(&e.cache, "library/app", &img.layers[0].0, None).await;
    assert_eq!(err.map(|e| e.code()), Some(ErrorCode::Unavailable));
    assert_eq!(gets(&e.up), budget, "one request and max_retries retries");
    let err = by_digest(&e, "library/app", &img.manifest)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert_eq!(e.up.calls.manifest_gets.load(Ordering::SeqCst), budget);
    assert_eq!(
        e.counters.upstream_requests.load(Ordering::SeqCst),
        2 * budget,
        "every request is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_drops_the_records_of_blobs_it_evicts_so_metadata_stays_bounded() {
    let e = env();
    let ds: Vec<Digest> = (0..5)
        .map(|i| e.up.add_blob(&n("library/app"), content(100 + i, 1000)))
        .collect();
    for d in &ds {
        let (_, err) = read_blob(&e.cache, "library/app", d, None).await;
        assert!(err.is_none());
    }
    wait_until(|| e.cache.inflight() == 0).await;
    let records = |store: Arc<dyn BlobStore>| async move {
        store
            .list_meta(Some(&cache_core::keys::repos()))
            .await
            .unwrap()
            .len()
    };
    assert_eq!(
        records(e.store.clone()).await,
        5,
        "one entitlement per blob"
    );
    let report = e.cache.gc(Some(0)).await.unwrap();
    assert_eq!((report.evicted, report.dropped_records), (5, 5));
    assert_eq!(
        records(e.store.clone()).await,
        0,
        "no record outlives its blob"
    );
    // And the blobs are fetched again on demand.
    let (got, err) = read_blob(&e.cache, "library/app", &ds[0], None).await;
    assert!(err.is_none() && got.len() == 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_swaps_rules_at_once_and_a_fetch_in_progress_finishes_under_the_old_ones() {
    let e = live_env();
    let (layer, d) = app_blob(&e, 110, 200_000);
    e.up.set_drip(Some((20_000, Duration::from_millis(20))));
    let r = e.cache.blob(&n("library/app"), &d, None).await.unwrap();
    // New wiring: `library/*` is gone, `lib2/*` maps the same upstream.
    e.cache
        .reconfigure(
            PullThroughCache::builder()
                .rule(RuleSpec::new("lib2", "up.example/library/*", "lib2/*"))
                .upstream("up.example", e.up.clone()),
        )
        .unwrap();
    let (got, err) = drain(r.body.into_stream()).await;
    assert!(
        err.is_none() && got == layer,
        "the transfer in progress finished"
    );
    let err = by_tag(&e, "library/app", "v1").await.unwrap_err();
    assert_eq!(
        err.code(),
        ErrorCode::NameUnknown,
        "the removed rule is gone"
    );
    assert_eq!(e.cache.rules().len(), 1);
    let (got, err) = read_blob(&e.cache, "lib2/app", &d, None).await;
    assert!(err.is_none() && got == layer, "the new rule serves");
    // A wiring that does not check out changes nothing.
    let bad = e
        .cache
        .reconfigure(PullThroughCache::builder().rule(RuleSpec::new(
            "x",
            "nowhere.example/*",
            "x/*",
        )));
    assert!(bad.unwrap_err().to_string().contains("nowhere.example"));
    assert!(
        e.cache.rules().get("lib2").is_some(),
        "the old wiring stands"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revalidations_of_one_tag_share_one_head_and_a_fresh_one_is_reused() {
    let e = env_with(Setup {
        real_time: true,
        opts: CacheOptions {
            revalidate_window: Duration::from_millis(300),
            ..Setup::default().opts
        },
        ..Setup::default()
    });
    e.up.push_image(&n("library/app"), &t("v1"), &[content(120, 100)]);
    let get = |c: PullThroughCache| async move {
        c.manifest(&n("library/app"), &Reference::Tag(t("v1")), &Accept::any())
            .await
            .unwrap()
            .status
    };
    assert_eq!(get(e.cache.clone()).await, CacheStatus::Miss);
    // Within the window: nobody asks the upstream.
    for _ in 0..10 {
        assert_eq!(get(e.cache.clone()).await, CacheStatus::Revalidated);
    }
    assert_eq!(e.up.calls.manifest_heads.load(Ordering::SeqCst), 0);
    // Past it, 32 at once: one HEAD, held open until all have joined.
    tokio::time::sleep(Duration::from_millis(400)).await;
    e.up.fail_next_manifest(Fault::Drip {
        chunk: 1,
        delay: Duration::from_millis(200),
    });
    let all: Vec<_> = (0..32)
        .map(|_| tokio::spawn(get(e.cache.clone())))
        .collect();
    for h in all {
        assert_eq!(h.await.unwrap(), CacheStatus::Revalidated);
    }
    assert_eq!(e.up.calls.manifest_heads.load(Ordering::SeqCst), 1);
    assert_eq!(e.up.calls.manifest_gets.load(Ordering::SeqCst), 1);
}

/// An admission hook that takes its time (a vulnerability scan) and then
/// says "not yet": 503 with `Retry-After`.
#[derive(Debug, Default)]
struct SlowJudge {
    clock: std::sync::OnceLock<ManualClock>,
}

#[async_trait::async_trait]
impl cache_core::Admission for SlowJudge {
    async fn admit(
        &self,
        _: &cache_core::AdmissionRequest<'_>,
    ) -> cache_core::Result<cache_core::Verdict> {
        let clock = self.clock.get().expect("clock set").clone();
        cache_core::Clock::sleep(&clock, Duration::from_secs(61)).await;
        Err(Error::unavailable(
            "the judge is not finished",
            Some(Duration::from_secs(5)),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_time_does_not_count_against_the_manifest_fetch_limit() {
    // The manifest arrives at once; its admission takes longer than
    // manifest_timeout (60 s by default, as a gate's default wait): the
    // hook's answer (503) reaches the client, not a fetch timeout (504).
    let judge = Arc::new(SlowJudge::default());
    let e = env_with(Setup {
        admission: vec![judge.clone()],
        ..Setup::default()
    });
    judge.clock.set(e.clock.clone()).unwrap();
    e.up.push_image(&n("library/app"), &t("v1"), &[content(41, 10)]);
    let cache = e.cache.clone();
    let pull = tokio::spawn(async move {
        cache
            .manifest(&n("library/app"), &Reference::Tag(t("v1")), &Accept::any())
            .await
    });
    let sixty_one = Duration::from_secs(61);
    tokio::time::timeout(
        Duration::from_secs(5),
        e.clock.until_sleeps(move |s| s.contains(&sixty_one)),
    )
    .await
    .expect("the judge is asked");
    // Time passes as it does: a minute, then the second the judge needs.
    e.clock.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.clock.advance(Duration::from_secs(1));
    let err = tokio::time::timeout(Duration::from_secs(5), pull)
        .await
        .expect("answered")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.http_status(), 503, "{err}");
    assert!(err.to_string().contains("judge"), "{err}");
}
