//! Release at verification, over real HTTP: the pull service on
//! `serve_connections` (127.0.0.1), a filesystem store whose commits can
//! be held or failed after the bytes verified (`CommitFaults`), curl as
//! the client. The upstream is the Debian distribution registry, or
//! `HostileRegistry` for a flipped byte (a fault no real registry makes).
#![cfg(feature = "server")]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cache_core::events::Counters;
use cache_core::runtime::TokioRuntime;
use cache_core::server::{ConnLimits, PullService, serve_connections};
use cache_core::testing::CommitFaults;
use cache_core::{BlobStore, Digest, PullThroughCache, Registry, RuleSpec};
use cache_upstream::testing::{HostileRegistry, TestRegistry, WireFault, require, write_image};
use cache_upstream::{ClientOptions, RegistryClient};

struct Served {
    addr: std::net::SocketAddr,
    cache: PullThroughCache,
    store: Arc<CommitFaults>,
    fs: cache_store::FsStore,
    counters: Arc<Counters>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// The pull service for `bench/*` on upstream `host` at `url`, over a
/// filesystem store wrapped in [`CommitFaults`], on a loopback port.
async fn serve(host: &str, url: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let fs = cache_store::FsStore::open(dir.path()).await.unwrap();
    let store = CommitFaults::new(Arc::new(fs.clone()));
    let client = RegistryClient::new(
        Registry::parse(host).unwrap(),
        Some(url),
        None,
        ClientOptions::default(),
    )
    .unwrap();
    let counters = Arc::new(Counters::default());
    let cache = PullThroughCache::builder()
        .rule(RuleSpec::new("t", format!("{host}/t/*"), "t/*"))
        .store(store.clone() as Arc<dyn BlobStore>)
        .spawner(TokioRuntime::current())
        .clock(TokioRuntime::current())
        .upstream(host, Arc::new(client))
        .events(counters.clone())
        .build()
        .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = PullService::new(cache.clone()).into_router();
    tokio::spawn(serve_connections(
        l,
        app,
        ConnLimits::default(),
        None,
        async move {
            let _ = rx.await;
        },
    ));
    Served {
        addr,
        cache,
        store,
        fs,
        counters,
        _stop: tx,
        _dir: dir,
    }
}

/// curl's exit code and body for `args`, run off the runtime.
async fn curl(args: Vec<String>) -> (i32, Vec<u8>) {
    let bin = require("curl", "curl").unwrap();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(bin)
            .args(["-sS", "--max-time", "60"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), out.stdout)
    })
    .await
    .unwrap()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_completes_at_verification_and_a_flipped_byte_never_completes_one() {
    let up = HostileRegistry::start("127.0.0.1");
    let good = cache_core::testing::content(1, 3 * 1024 * 1024);
    let bad = cache_core::testing::content(2, 3 * 1024 * 1024);
    let gd = up.add_blob(good.clone());
    let bd = up.add_blob(bad.clone());
    let s = serve(&up.host(), &up.url()).await;
    let url = |d: &Digest| format!("http://{}/v2/t/app/blobs/{d}", s.addr);
    s.store.hold();

    // Verified: the response completes while the commit is still held.
    let (code, body) = curl(vec!["--http1.1".into(), url(&gd)]).await;
    assert_eq!(code, 0, "the answer completes before the commit");
    assert!(gd.verifies(&body));
    let store = s.store.clone();
    wait_until("the commit waits", move || store.waiting() == 1).await;
    assert!(!s.fs.blob_path(&gd).exists(), "not yet committed");

    // The last byte is wrong, so only the digest can tell; slow enough that
    // every client joins the one failing fetch.
    up.set_drip(Some((64 * 1024, Duration::from_millis(10))));
    up.fault(
        &format!("/blobs/{bd}"),
        [WireFault::FlipByte(bad.len() as u64 - 1)],
    );
    let ranged = format!("{}-", bad.len() - 1000);
    let clients: Vec<Vec<String>> = vec![
        vec!["--http1.1".into(), url(&bd)],
        vec!["--http2-prior-knowledge".into(), url(&bd)],
        vec!["--http1.1".into(), "-r".into(), ranged, url(&bd)],
        vec!["--http1.1".into(), "-r".into(), "0-".into(), url(&bd)],
    ];
    let runs: Vec<_> = clients
        .into_iter()
        .map(|a| tokio::spawn(async move { (a.join(" "), curl(a).await) }))
        .collect();
    for r in runs {
        let (args, (code, body)) = r.await.unwrap();
        assert_ne!(code, 0, "curl {args} must fail, got {} bytes", body.len());
        assert!(body.len() < bad.len(), "curl {args}: never every byte");
        assert!(!bd.verifies(&body));
    }
    assert_eq!(up.requests("GET", &format!("/blobs/{bd}")), 1, "one fetch");
    assert_eq!(
        s.store.waiting(),
        1,
        "no commit for what failed verification"
    );
    assert!(
        !s.fs.blob_path(&bd).exists(),
        "nothing unverified is stored"
    );
    assert_eq!(s.counters.commits_failed.load(Ordering::SeqCst), 0);

    s.store.release();
    let cache = s.cache.clone();
    wait_until("the fetches end", move || cache.inflight() == 0).await;
    assert!(gd.verifies(&std::fs::read(s.fs.blob_path(&gd)).unwrap()));
    up.set_drip(None);
    let (code, body) = curl(vec![url(&bd)]).await;
    assert_eq!(code, 0, "the fault is gone: fetched again, whole");
    assert!(bd.verifies(&body));
    assert_eq!(up.requests("GET", &format!("/blobs/{bd}")), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_failing_after_verification_is_counted_fails_unfinished_clients_and_is_fetched_again()
 {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    // Larger than what loopback socket buffers hold for a slow reader.
    let img = write_image(src.path(), "v1", 3, &[24 * 1024 * 1024]);
    up.push(&img.layout, "v1", "t/app").unwrap();
    let (d, size) = img.layers[0].clone();
    let s = serve(&up.host(), &up.url()).await;
    let url = format!("http://{}/v2/t/app/blobs/{d}", s.addr);
    s.store.hold();
    s.store.fail_next(1);
    let before = up.blob_gets();

    // A slow client starts the fetch and reads 1 MB/s; a fast one joins.
    let slow = {
        let url = url.clone();
        tokio::spawn(async move { curl(vec!["--limit-rate".into(), "1M".into(), url]).await })
    };
    let cache = s.cache.clone();
    wait_until("the fetch starts", move || cache.inflight() == 1).await;
    let (code, body) = curl(vec![url.clone()]).await;
    assert_eq!(code, 0, "the fast client's answer completes");
    assert_eq!(body.len() as u64, size);
    assert!(d.verifies(&body), "complete and correct");

    let store = s.store.clone();
    wait_until("the commit waits", move || store.waiting() == 1).await;
    s.store.release();
    let counters = s.counters.clone();
    wait_until("the failure is counted", move || {
        counters.commits_failed.load(Ordering::SeqCst) == 1
    })
    .await;
    let (code, body) = slow.await.unwrap();
    assert_ne!(code, 0, "the slow client, not finished, is failed");
    assert!((body.len() as u64) < size);
    assert!(!s.fs.blob_path(&d).exists(), "nothing was published");

    let (code, body) = curl(vec![url.clone()]).await;
    assert_eq!(code, 0);
    assert!(d.verifies(&body), "the next request fetches again");
    let cache = s.cache.clone();
    wait_until("the fetch ends", move || cache.inflight() == 0).await;
    assert_eq!(up.blob_gets() - before, 2, "one fetch each");
    assert!(d.verifies(&std::fs::read(s.fs.blob_path(&d)).unwrap()));
    assert_eq!(s.store.committed(), 1);
    assert_eq!(s.counters.commits_failed.load(Ordering::SeqCst), 1);
}
