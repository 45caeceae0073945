//! `cache_core::server` over real sockets: the pull service mounted at
//! the root and under a prefix, pull-side auth and scoped scanner
//! credentials, warm blobs sent from their files, connection limits and
//! shutdown.
#![cfg(feature = "server")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use cache_core::runtime::TokioRuntime;
use cache_core::server::{
    AuthConfig, ConnLimits, ConnThreads, PullAuth, PullService, ScopedTokens, sendfile,
    serve_connections, serve_connections_on,
};
use cache_core::testing::{FakeUpstream, Fault, PushedImage, content};
use cache_core::{
    Admission, AdmissionRequest, BlobStore, PullCredentials, PullThroughCache, RepoName, RuleSpec,
    Secret, Tag, Verdict,
};

/// Refuses every manifest a client asks for.
#[derive(Debug)]
struct RefuseAll;

#[async_trait::async_trait]
impl Admission for RefuseAll {
    async fn admit(&self, _: &AdmissionRequest<'_>) -> cache_core::Result<Verdict> {
        Err(cache_core::Error::denied("refused by policy"))
    }
}

struct World {
    pull: PullService,
    pull_cache: PullThroughCache,
    img: PushedImage,
    scoped: Arc<ScopedTokens>,
    _dir: tempfile::TempDir,
}

/// A cache over a filesystem store (so warm blobs are files) with
/// `library/app:v1` (a 300 KB layer) upstream, token auth and scoped
/// credentials; `refuse` adds a hook refusing every client's manifest.
async fn world(refuse: bool) -> World {
    let up = Arc::new(FakeUpstream::new(
        "up.example",
        Arc::new(TokioRuntime::current()),
    ));
    let img = up.push_image(
        &RepoName::parse("library/app").unwrap(),
        &Tag::parse("v1").unwrap(),
        &[content(7, 300_000)],
    );
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(cache_store::FsStore::open(dir.path()).await.unwrap());
    let mut b = PullThroughCache::builder()
        .rule(RuleSpec::new("lib", "up.example/library/*", "library/*"))
        .store(store)
        .tokio()
        .upstream("up.example", up);
    if refuse {
        b = b.admission(RefuseAll);
    }
    let scoped = Arc::new(ScopedTokens::new());
    let cache = b.build().unwrap();
    let pull = PullService::new(cache.clone())
        .auth(PullAuth::new(
            AuthConfig::default().token(Secret::new("good")),
        ))
        .scoped(scoped.clone())
        .realm("test-realm");
    World {
        pull,
        pull_cache: cache,
        img,
        scoped,
        _dir: dir,
    }
}

/// Serves `app` on 127.0.0.1 with [`serve_connections`] until the
/// returned sender is dropped.
async fn serve(
    app: axum::Router,
    limits: ConnLimits,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_connections(l, app, limits, None, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// One HTTP/1.1 request on a fresh connection: status, head, body.
async fn get(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> (u16, String, Bytes) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, Bytes::copy_from_slice(&raw[split + 4..]))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn mounted_under_a_prefix_and_at_the_root_it_answers_the_same() {
    let w = world(false).await;
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "home" }))
        .nest_service("/mirror", w.pull.clone())
        .fallback_service(w.pull.clone());
    let (addr, _stop) = serve(app, ConnLimits::default()).await;
    let (status, _, body) = get(addr, "/", None).await;
    assert_eq!(
        (status, &body[..]),
        (200, &b"home"[..]),
        "the app's own route"
    );
    for prefix in ["", "/mirror"] {
        let manifest = format!("{prefix}/v2/library/app/manifests/v1");
        let (status, head, _) = get(addr, &manifest, None).await;
        assert_eq!(status, 401, "{prefix}: no credentials");
        assert_eq!(
            header(&head, "www-authenticate"),
            Some("Basic realm=\"test-realm\""),
            "{prefix}"
        );
        let (status, head, body) = get(addr, &manifest, Some("Bearer good")).await;
        assert_eq!(status, 200, "{prefix}: {head}");
        assert_eq!(
            header(&head, "docker-content-digest"),
            Some(w.img.manifest.as_str()),
            "{prefix}"
        );
        assert!(w.img.manifest.verifies(&body), "{prefix}");
        let (status, _, _) = get(addr, &format!("{prefix}/v2/"), Some("Bearer good")).await;
        assert_eq!(status, 200, "{prefix}: the API base");
        let (status, _, _) = get(addr, &format!("{prefix}/v2/"), Some("Bearer bad")).await;
        assert_eq!(status, 401, "{prefix}: a wrong token");
    }
    // Outside /v2 nothing is challenged: it is the API's 404.
    let (status, _, _) = get(addr, "/mirror/other", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_scoped_credential_reads_its_repository_and_nothing_else() {
    let w = world(false).await;
    let issued = w.scoped.issue(
        &RepoName::parse("library/app").unwrap(),
        Duration::from_secs(60),
    );
    let cred = issued.expose();
    let (addr, _stop) = serve(w.pull.clone().into_router(), ConnLimits::default()).await;
    let (status, head, _) = get(addr, "/v2/library/app/manifests/v1", Some(cred)).await;
    assert_eq!(
        status, 200,
        "its repository, without the auth token: {head}"
    );
    let (status, _, _) = get(addr, "/v2/", Some(cred)).await;
    assert_eq!(status, 200, "the API base");
    for other in [
        "/v2/library/other/manifests/v1",
        "/v2/library/app/manifests/v1?ns=up.example",
        "/v2/_catalog",
    ] {
        let (status, _, body) = get(addr, other, Some(cred)).await;
        assert_eq!(status, 403, "{other}");
        assert!(
            String::from_utf8_lossy(&body).contains("this credential pulls library/app only"),
            "{other}"
        );
    }
}

#[tokio::test]
async fn a_scoped_credential_reads_as_the_scanner_past_admission() {
    let w = world(true).await;
    let (addr, _stop) = serve(w.pull.clone().into_router(), ConnLimits::default()).await;
    let (status, _, _) = get(addr, "/v2/library/app/manifests/v1", Some("Bearer good")).await;
    assert_eq!(status, 403, "a client is refused by the hook");
    let issued = w.scoped.issue(
        &RepoName::parse("library/app").unwrap(),
        Duration::from_secs(60),
    );
    let (status, _, body) = get(addr, "/v2/library/app/manifests/v1", Some(issued.expose())).await;
    assert_eq!(status, 200, "the scanner reads what it is to scan");
    assert!(w.img.manifest.verifies(&body));
}

#[tokio::test]
async fn warm_blobs_go_out_from_their_files_through_serve_connections() {
    let w = world(false).await;
    let (addr, _stop) = serve(w.pull.clone().into_router(), ConnLimits::default()).await;
    let (d, bytes) = &w.img.layers[0];
    let path = format!("/v2/library/app/blobs/{d}");
    let (status, head, cold) = get(addr, &path, Some("Bearer good")).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(&cold, bytes, "a miss, streamed");
    let before = sendfile::bytes_sent();
    let (status, head, warm) = get(addr, &path, Some("Bearer good")).await;
    assert_eq!((status, header(&head, "x-cache")), (200, Some("hit")));
    assert!(warm == *bytes, "byte-exact from the file");
    if sendfile::AVAILABLE {
        assert!(
            sendfile::bytes_sent() - before >= bytes.len() as u64,
            "the warm blob went out with sendfile"
        );
    }
}

/// The size of the largest file under `dir`, at any depth.
fn largest_file(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => largest_file(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .max()
        .unwrap_or(0)
}

/// A client that reads a miss of a 16 MiB blob slowly, behind a 64 KiB
/// window: a little at first, then nothing until the store has 8 MiB of
/// it (or the fetch is done), then the rest as fast as it comes. With
/// `fault`, the upstream drips the blob (256 KiB every 10 ms) and
/// applies the fault. Returns the response's head, its body as far as it
/// came, the blob, and the bytes sent from files meanwhile.
async fn read_behind(fault: Option<Fault>) -> (String, Vec<u8>, Bytes, u64) {
    let up = Arc::new(FakeUpstream::new(
        "up.example",
        Arc::new(TokioRuntime::current()),
    ));
    let blob = content(23, 16 << 20);
    let d = up.add_blob(&RepoName::parse("library/big").unwrap(), blob.clone());
    if let Some(f) = fault {
        up.set_drip(Some((256 * 1024, Duration::from_millis(10))));
        up.fail_next_blob(f);
    }
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(cache_store::FsStore::open(dir.path()).await.unwrap());
    let cache = PullThroughCache::builder()
        .rule(RuleSpec::new("lib", "up.example/library/*", "library/*"))
        .store(store)
        .tokio()
        .upstream("up.example", up)
        .options(cache_core::CacheOptions {
            follow_window: 64 * 1024,
            write_batch: 32 * 1024,
            max_retries: 0,
            ..Default::default()
        })
        .build()
        .unwrap();
    let router = PullService::new(cache.clone()).into_router();
    // Small socket buffers on both ends (an accepted socket takes its
    // listener's), so that what the kernel holds for this reader is a
    // few hundred KiB whatever the machine's autotuning would give, and
    // the rest falls behind the window. With autotuning, one CI machine
    // buffered 12 of the 16 MiB.
    let l = tokio::net::TcpSocket::new_v4().unwrap();
    l.set_send_buffer_size(128 * 1024).unwrap();
    l.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = l.listen(16).unwrap();
    let addr = l.local_addr().unwrap();
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_connections(
        l,
        router,
        ConnLimits::default(),
        None,
        async move {
            let _ = rx.await;
        },
    ));

    let before = sendfile::bytes_sent();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let req = format!(
        "GET /v2/library/big/blobs/{d} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 64 * 1024];
    let n = s.read(&mut first).await.unwrap();
    assert!(n > 0, "the response began");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache.inflight() > 0 && largest_file(dir.path()) < 8 << 20 {
        assert!(Instant::now() < deadline, "the fetch got on");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut raw = first[..n].to_vec();
    // A failed response ends with the connection cut: keep what came.
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    (head, body, blob, sendfile::bytes_sent() - before)
}

/// What a reader behind a miss's window reads goes out from the staged
/// file with `sendfile`, after the window's bytes, byte-exact. (Before,
/// those bytes were read from the file into memory and copied out.)
#[tokio::test]
async fn a_reader_behind_a_miss_gets_the_staged_file_sent_byte_exact() {
    let (head, body, blob, sent) = read_behind(None).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body == blob[..],
        "byte-exact ({} of {} bytes)",
        body.len(),
        blob.len()
    );
    if sendfile::AVAILABLE {
        assert!(
            sent >= 8 << 20,
            "what fell behind went out from the staged file: {sent} bytes"
        );
    }
}

/// The same with the upstream's last byte flipped: the file's bytes go
/// out up to the held-back last byte, and the response never completes.
#[tokio::test]
async fn a_reader_behind_a_miss_that_fails_verification_never_gets_a_complete_response() {
    let (head, body, blob, sent) = read_behind(Some(Fault::FlipByte((16 << 20) - 1))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.len() < blob.len(),
        "an incomplete response: {} of {} bytes",
        body.len(),
        blob.len()
    );
    assert!(
        body[..] == blob[..body.len()],
        "what came is the blob's prefix"
    );
    if sendfile::AVAILABLE {
        assert!(sent >= 4 << 20, "from the staged file: {sent} bytes");
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_idle_ones_too() {
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let limits = ConnLimits {
        max_connections: 1,
        idle_timeout: Duration::from_millis(300),
        ..ConnLimits::default()
    };
    let (addr, _stop) = serve(app, limits).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The one connection allowed is open: the next is closed unanswered.
    let mut second = TcpStream::connect(addr).await.unwrap();
    let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "over the cap");
    // The first, idle past the limit, is closed by the server.
    let start = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .expect("the idle connection was closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_returns() {
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve_connections(
        l,
        app,
        ConnLimits::default(),
        None,
        async move {
            let _ = rx.await;
        },
    ));
    assert_eq!(get(addr, "/", None).await.0, 200);
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("returned after shutdown")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

/// A request on an open connection: the body of its `200` (a thread's
/// name, `conn-N`), or `None` if the server closed the connection unanswered.
async fn ask(s: &mut TcpStream) -> Option<String> {
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let mut text = String::new();
    let mut buf = [0u8; 1024];
    while !(text.contains("\r\n\r\n") && text.ends_with(|c: char| c.is_ascii_digit())) {
        let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered or closed, not left hanging")
            .unwrap_or(0);
        if got == 0 {
            assert!(text.is_empty(), "closed mid-response: {text:?}");
            return None;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..got]));
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.rsplit("\r\n").next().map(str::to_owned)
}

#[tokio::test]
async fn on_conn_threads_a_connection_stays_on_the_least_busy_thread_under_the_same_limits() {
    // Answers with the name of the thread that serves it.
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { std::thread::current().name().unwrap_or("?").to_owned() }),
    );
    let limits = ConnLimits {
        max_connections: 2,
        ..ConnLimits::default()
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let threads = ConnThreads::new(2).unwrap();
    assert_eq!(threads.len(), 2);
    let served = tokio::spawn(serve_connections_on(
        threads,
        l,
        app,
        limits,
        None,
        async move {
            let _ = rx.await;
        },
    ));
    let mut a = TcpStream::connect(addr).await.unwrap();
    let on_a = ask(&mut a).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    let on_b = ask(&mut b).await.unwrap();
    let mut names = [on_a.as_str(), on_b.as_str()];
    names.sort();
    assert_eq!(names, ["conn-0", "conn-1"], "one connection on each thread");
    // Keep-alive requests stay where their connection is.
    for _ in 0..3 {
        assert_eq!(ask(&mut a).await.as_ref(), Some(&on_a));
        assert_eq!(ask(&mut b).await.as_ref(), Some(&on_b));
    }
    // The cap counts the connections on every thread.
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut c).await, None, "over the cap");
    // Once b is gone, its thread is the least busy one again.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    let on_next = loop {
        let mut next = TcpStream::connect(addr).await.unwrap();
        if let Some(name) = ask(&mut next).await {
            break name;
        }
        assert!(Instant::now() < deadline, "b's place was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(on_next, on_b);
    // Shutdown closes the connections on the threads and returns.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("returned after shutdown")
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut [0u8; 64]))
        .await
        .expect("a closed at shutdown")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn auth_added_to_a_clone_leaves_the_original_as_it_was() {
    let w = world(false).await;
    let open = PullService::new(w.pull_cache.clone());
    let guarded = open
        .clone()
        .auth(PullAuth::new(AuthConfig::default().token(Secret::new("t"))));
    let base = || http::Request::get("/v2/").body(()).unwrap();
    assert_eq!(guarded.answer(base()).await.status(), 401);
    assert_eq!(open.answer(base()).await.status(), 200, "still open");
}

#[tokio::test]
async fn the_peer_service_answers_only_signed_gets_for_a_fetch_under_its_lease() {
    use cache_core::server::PeerService;
    let up = Arc::new(FakeUpstream::new(
        "up.example",
        Arc::new(TokioRuntime::current()),
    ));
    let data = content(31, 300_000);
    let d = up.add_blob(&cache_core::RepoName::parse("library/app").unwrap(), data);
    let store = cache_store::MemoryStore::new();
    let cache = PullThroughCache::builder()
        .rule(RuleSpec::new("lib", "up.example/library/*", "library/*"))
        .store(store.as_shared())
        .tokio()
        .upstream("up.example", up.clone())
        .build()
        .unwrap();
    let secret = cache_core::Secret::new("0123456789abcdef-peer");
    let svc = PeerService::new(cache, &secret, 2, Duration::from_millis(200));
    assert!(!format!("{svc:?}").contains("0123456789abcdef"));
    let req = |method: &str, path: String, auth: Option<&str>, range: Option<&str>| {
        let mut b = http::Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        if let Some(r) = range {
            b = b.header("range", r);
        }
        b.body(()).unwrap()
    };
    let path = format!("/peer/v1/blobs/{d}");
    let good = "Bearer 0123456789abcdef-peer";
    for (r, status) in [
        (req("GET", path.clone(), None, None), 401),
        (
            req(
                "GET",
                path.clone(),
                Some("Bearer 0123456789abcdef-pee"),
                None,
            ),
            401,
        ),
        (
            req(
                "GET",
                path.clone(),
                Some("Basic MDEyMzQ1Njc4OWFiY2RlZi1wZWVy"),
                None,
            ),
            401,
        ),
        (req("GET", path.clone(), Some(good), None), 404),
        (
            req("GET", path.clone(), Some(good), Some("bytes=0-10")),
            400,
        ),
        (req("POST", path.clone(), Some(good), None), 405),
        (
            req("GET", "/peer/v1/blobs/sha256:x".into(), Some(good), None),
            400,
        ),
        (req("GET", "/v2/".into(), Some(good), None), 404),
    ] {
        let what = format!("{} {} {:?}", r.method(), r.uri(), r.headers());
        assert_eq!(svc.answer(r).await.status(), status, "{what}");
    }
    assert_eq!(
        cache_core::testing::Calls::get(&up.calls.blob_gets),
        0,
        "a peer request never starts a fetch"
    );
}
