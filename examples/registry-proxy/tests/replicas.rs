//! Three registry-proxy processes on one Azurite container act as one
//! cache: a cold blob costs one upstream GET however many instances are
//! asked for it, a killed lease holder is replaced, and gc runs on every
//! instance without deleting what another instance is serving.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::testing::content;
use cache_core::{BlobStore, BlobStoreExt, Digest};
use cache_store::ObjectBlobStore;
use cache_store::testing::Azurite;
use cache_upstream::testing::{HostileRegistry, WireFault};
use common::{Proxy, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn azurite(container: &str) -> Azurite {
    let az = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    az.create_container(container).unwrap();
    az
}

/// Instance `name`'s configuration: the container's `cache/` prefix,
/// 3-second leases; `storage` is added to `[storage]`.
fn config(
    up: &HostileRegistry,
    az: &Azurite,
    container: &str,
    name: &str,
    storage: &str,
) -> String {
    let options: String = az
        .options()
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    format!(
        "[storage]\nbackend = \"object\"\nurl = \"az://{container}/cache\"\nspool = \"spool\"\ninstance_name = \"{name}\"\nlease_ttl = \"3s\"\n{storage}\n[storage.options]\n{options}\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n\n[[rule]]\nname = \"lib\"\nsource = \"{h}/library/*\"\ntarget = \"library/*\"\n",
        h = up.host(),
        u = up.url()
    )
}

/// The store the instances share, opened as a fourth party.
fn shared_store(az: &Azurite, container: &str, spool: &std::path::Path) -> ObjectBlobStore {
    ObjectBlobStore::from_url(&format!("az://{container}/cache"), az.options(), spool).unwrap()
}

/// `library/app:v1` on `up`, of one layer: `len` bytes of content `seed`.
fn app_image(
    up: &HostileRegistry,
    seed: u64,
    len: usize,
) -> (Bytes, cache_upstream::testing::HostileImage) {
    let layer = Bytes::from(content(seed, len).to_vec());
    let img = up.push_image("library/app", "v1", std::slice::from_ref(&layer));
    (layer, img)
}

/// GETs a blob through `proxy`: the body, or the error that ended it.
async fn get_blob(url: String) -> Result<Bytes, String> {
    let r = http().get(url).send().await.map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    r.bytes().await.map_err(|e| e.to_string())
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twelve_cold_clients_on_three_instances_cost_one_upstream_get() {
    let az = azurite("one");
    let up = HostileRegistry::start("127.0.0.1");
    let (layer, img) = app_image(&up, 1, 8 * 1024 * 1024);
    // About two seconds per blob body, so every client arrives mid-fetch.
    up.set_drip(Some((64 * 1024, Duration::from_millis(15))));
    let proxies: Vec<Proxy> = (0..3)
        .map(|i| Proxy::start(&config(&up, &az, "one", &format!("p{i}"), "")))
        .collect();
    let (d, _) = &img.layers[0];
    all_get(&proxies, d, 12, &layer).await;
    assert_eq!(
        up.requests("GET", d.as_str()),
        1,
        "one upstream GET of the blob for all three instances"
    );
    let mut published = 0;
    for p in &proxies {
        published += metric(
            &p.metrics().await,
            "registry_proxy_peer_fetches_total{outcome=\"published\"}",
        );
    }
    assert_eq!(
        published, 2,
        "two instances served what the third published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_holder_killed_mid_fetch_is_replaced_and_nothing_partial_is_published() {
    let az = azurite("kill");
    let up = HostileRegistry::start("127.0.0.1");
    let (layer, img) = app_image(&up, 2, 8 * 1024 * 1024);
    up.set_drip(Some((64 * 1024, Duration::from_millis(15))));
    let mut proxies: Vec<Proxy> = (0..3)
        .map(|i| Proxy::start(&config(&up, &az, "kill", &format!("p{i}"), "")))
        .collect();
    let (d, _) = &img.layers[0];
    let clients = start_gets(&proxies, d, 6);

    // Find the holder in the lease object, and kill it mid-fetch.
    let spool = tempfile::tempdir().unwrap();
    let store = shared_store(&az, "kill", spool.path());
    let lease = cache_core::keys::blob_lease(d);
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = loop {
        if let Some(v) = store.get_meta(&lease).await.unwrap() {
            break String::from_utf8_lossy(&v)
                .split(' ')
                .next()
                .unwrap()
                .to_owned();
        }
        assert!(Instant::now() < deadline, "no instance took the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed: usize = holder.strip_prefix('p').unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxies[killed].child.kill().unwrap();
    proxies[killed].child.wait().unwrap();

    survivors_get(clients, killed, &layer).await;
    assert_eq!(
        up.requests("GET", d.as_str()),
        2,
        "the killed holder's GET and one by the instance that took over"
    );
    let took_over = proxies
        .iter()
        .enumerate()
        .filter(|(i, p)| *i != killed && p.log().contains("took over a lapsed fetch lease"))
        .count();
    assert_eq!(took_over, 1, "one survivor took the lease over");
    // What is stored is the whole blob; the lease is gone.
    let stored = store.get_bytes(d).await.unwrap();
    assert!(stored == layer, "the published blob is whole and verified");
    assert!(store.get_meta(&lease).await.unwrap().is_none());
}

/// Reads a blob through `port` slowly (a client on a slow link), with a
/// small receive buffer so the server cannot finish sending long before
/// the client finishes reading. Returns the body.
async fn slow_read(port: u16, digest: &Digest) -> Vec<u8> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let mut s = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let req = format!(
        "GET /v2/library/app/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let head_end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&all[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    all.split_off(head_end)
}

async fn stored_bytes(store: &ObjectBlobStore) -> u64 {
    store.list_all().await.unwrap().iter().map(|b| b.size).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_on_every_instance_spares_what_another_is_serving_and_keeps_the_quota() {
    let az = azurite("gcrun");
    let up = HostileRegistry::start("127.0.0.1");
    let big = Bytes::from(content(3, 16 * 1024 * 1024).to_vec());
    let small = [
        Bytes::from(content(4, 3 * 1024 * 1024).to_vec()),
        Bytes::from(content(5, 3 * 1024 * 1024).to_vec()),
    ];
    let img = up.push_image(
        "library/app",
        "v1",
        &[big.clone(), small[0].clone(), small[1].clone()],
    );
    let quota = 8 * 1024 * 1024;
    let storage = "quota = \"8MiB\"\ngc_interval = \"1s\"\ntouch_interval = \"2s\"\n";
    let proxies: Vec<Proxy> = (0..3)
        .map(|i| Proxy::start(&config(&up, &az, "gcrun", &format!("p{i}"), storage)))
        .collect();
    let spool = tempfile::tempdir().unwrap();
    let store = shared_store(&az, "gcrun", spool.path());
    let d_big = img.layers[0].0.clone();

    // p0 fetches all three layers; p1 then serves the big one, slowly,
    // while gc runs every second on each instance. The small layers are
    // idle and go; the big one would be evicted by whichever instance runs
    // gc unless it knew p1 is reading it. (A read that starts in the very
    // moment a gc run lists an idle blob can still lose it: that window is
    // not what this tests.)
    // The big layer last, so its access time is the freshest when the
    // slow read begins: on a loaded machine the other fetches can take
    // longer than the grace period.
    for (d, _) in img.layers.iter().rev() {
        get_blob(proxies[0].url(&format!("/v2/library/app/blobs/{d}")))
            .await
            .unwrap();
    }
    // Answers complete once a blob verified; the upload follows.
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.stat(&d_big).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the big layer is uploaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The read starts at once and lasts longer than the grace period (4 s): the
    // idle layers age past it meanwhile; the big one stays in use.
    // A watcher notes if the blob ever leaves the store while it is read
    // (read-ahead could otherwise hide it from the reader).
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (reading, d) = (reading.clone(), d_big.clone());
        let spool = tempfile::tempdir().unwrap();
        let store = shared_store(&az, "gcrun", spool.path());
        tokio::spawn(async move {
            let _spool = spool;
            let mut vanished = false;
            while reading.load(std::sync::atomic::Ordering::Acquire) {
                vanished |= store.stat(&d).await.unwrap().is_none();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            vanished
        })
    };
    let body = slow_read(proxies[1].port, &d_big).await;
    reading.store(false, std::sync::atomic::Ordering::Release);
    assert!(
        !watcher.await.unwrap(),
        "the blob was deleted while another instance was serving it"
    );
    assert!(
        body == big,
        "the slow read got {} bytes; the blob was deleted under it",
        body.len()
    );
    // The idle layers go, and once nobody reads it the big layer too:
    // the quota holds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut idle_left = 0;
        for (d, _) in &img.layers[1..] {
            idle_left += usize::from(store.stat(d).await.unwrap().is_some());
        }
        if idle_left == 0 && stored_bytes(&store).await <= quota {
            break;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = proxies.iter().map(Proxy::log).collect();
            panic!(
                "{idle_left} idle layers left, {} bytes stored:\n{}",
                stored_bytes(&store).await,
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs: Vec<String> = proxies.iter().map(Proxy::log).collect();
    let runs: usize = logs
        .iter()
        .map(|l| l.matches("gc: took the gc lease").count())
        .sum();
    assert!(
        runs >= 3,
        "each gc run takes the lease and says so:\n{}",
        logs.join("\n")
    );
    assert!(
        logs.iter()
            .filter(|l| l.contains("gc: took the gc lease"))
            .count()
            >= 2,
        "gc ran on more than one instance"
    );
}

/// The secret the peered instances share.
const PEER_SECRET: &str = "replicas-test-peer-secret";

/// Three instances on `container` that stream from each other: each with
/// a peer endpoint on a free loopback port, advertised as such. Returns
/// them and their peer ports.
fn peered(up: &HostileRegistry, az: &Azurite, container: &str) -> (Vec<Proxy>, Vec<u16>) {
    peered_with(up, az, container, "")
}

/// As [`peered`], with `extra` added to each instance's peer keys.
fn peered_with(
    up: &HostileRegistry,
    az: &Azurite,
    container: &str,
    extra: &str,
) -> (Vec<Proxy>, Vec<u16>) {
    let ports: Vec<u16> = (0..3).map(|_| cache_core::testing::free_port()).collect();
    let proxies = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let peer = format!(
                "peer_listen = \"127.0.0.1:{port}\"\npeer_advertise = \"127.0.0.1:{port}\"\npeer_secret = \"{PEER_SECRET}\"\npeer_timeout = \"2s\"\n{extra}"
            );
            Proxy::start(&config(up, az, container, &format!("p{i}"), &peer))
        })
        .collect();
    (proxies, ports)
}

/// Waits for the blob's lease; the holder's index (`p<i>`) and the value.
async fn holder_of(store: &ObjectBlobStore, d: &Digest) -> (usize, String) {
    let lease = cache_core::keys::blob_lease(d);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = store.get_meta(&lease).await.unwrap() {
            let v = String::from_utf8_lossy(&v).into_owned();
            let name = v.split(['@', ' ']).next().unwrap();
            return (name.strip_prefix('p').unwrap().parse().unwrap(), v);
        }
        assert!(Instant::now() < deadline, "no instance took the lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Get = tokio::task::JoinHandle<Result<Bytes, String>>;

/// `clients` GETs at once of blob `d` in library/app, spread over
/// `proxies` in turn: each with the index of the instance it went to.
fn start_gets(proxies: &[Proxy], d: &Digest, clients: usize) -> Vec<(usize, Get)> {
    (0..clients)
        .map(|i| {
            let at = i % proxies.len();
            let url = proxies[at].url(&format!("/v2/library/app/blobs/{d}"));
            (at, tokio::spawn(get_blob(url)))
        })
        .collect()
}

/// [`start_gets`], then asserts that each got exactly `want`.
async fn all_get(proxies: &[Proxy], d: &Digest, clients: usize, want: &Bytes) {
    for (i, (_, c)) in start_gets(proxies, d, clients).into_iter().enumerate() {
        let body = c
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert!(body == want, "client {i} got other bytes");
    }
}

/// Asserts that every client of an instance other than `killed` got
/// exactly `want` (the killed one's may fail, never with wrong bytes).
async fn survivors_get(clients: Vec<(usize, Get)>, killed: usize, want: &Bytes) {
    for (i, (proxy, c)) in clients.into_iter().enumerate() {
        match c.await.unwrap() {
            Ok(body) => assert!(body == want, "client {i} got other bytes"),
            Err(e) => assert_eq!(
                proxy, killed,
                "client {i} of a surviving instance failed: {e}"
            ),
        }
    }
}

async fn sum_metric(proxies: &[&Proxy], series: &str) -> u64 {
    let mut n = 0;
    for p in proxies {
        n += metric(&p.metrics().await, series);
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_on_three_instances_stream_from_the_lease_holder() {
    let az = azurite("peers");
    let up = HostileRegistry::start("127.0.0.1");
    let (layer, img) = app_image(&up, 21, 16 * 1024 * 1024);
    up.set_rate(Some(8 * 1024 * 1024));
    let (proxies, _) = peered(&up, &az, "peers");
    let (d, _) = &img.layers[0];
    all_get(&proxies, d, 16, &layer).await;
    assert_eq!(up.requests("GET", d.as_str()), 1, "one upstream GET in all");
    let all: Vec<&Proxy> = proxies.iter().collect();
    let streamed = sum_metric(
        &all,
        "registry_proxy_peer_fetches_total{outcome=\"streamed\"}",
    )
    .await;
    let published = sum_metric(
        &all,
        "registry_proxy_peer_fetches_total{outcome=\"published\"}",
    )
    .await;
    assert_eq!(
        (streamed, published),
        (2, 0),
        "the two other instances streamed from the holder rather than wait for publication"
    );
    let spool = tempfile::tempdir().unwrap();
    let store = shared_store(&az, "peers", spool.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.stat(d).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the holder publishes the blob");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.get_bytes(d).await.unwrap() == layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_holder_killed_half_way_costs_the_others_no_restart_and_no_wrong_byte() {
    let az = azurite("peerkill");
    let up = HostileRegistry::start("127.0.0.1");
    let size = 16 * 1024 * 1024;
    let (layer, img) = app_image(&up, 22, size);
    up.set_rate(Some(8 * 1024 * 1024));
    let (mut proxies, _) = peered(&up, &az, "peerkill");
    let (d, _) = &img.layers[0];
    let clients = start_gets(&proxies, d, 12);
    let spool = tempfile::tempdir().unwrap();
    let store = shared_store(&az, "peerkill", spool.path());
    let (killed, lease) = holder_of(&store, d).await;
    assert!(
        lease.contains('@'),
        "the holder names its peer address: {lease}"
    );
    // SIGKILL once the holder has half the blob.
    let deadline = Instant::now() + Duration::from_secs(20);
    let at_kill = loop {
        let got = metric(
            &proxies[killed].metrics().await,
            "registry_proxy_upstream_bytes_total",
        );
        if got >= size as u64 / 2 {
            break got;
        }
        assert!(Instant::now() < deadline, "the holder gets half the blob");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    proxies[killed].child.kill().unwrap();
    proxies[killed].child.wait().unwrap();

    survivors_get(clients, killed, &layer).await;
    // The survivors went on from where they were: one took the lease over
    // and asked the upstream for the rest only.
    let gets: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(d.as_str()))
        .collect();
    assert_eq!(gets.len(), 2, "the holder's GET and the rest: {gets:?}");
    let resumed_at: u64 = gets[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("the takeover asked for a range: {gets:?}"));
    assert!(
        resumed_at >= size as u64 * 2 / 5,
        "resumed at byte {resumed_at}, not near where the holder died ({at_kill})"
    );
    let survivors: Vec<&Proxy> = proxies
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != killed)
        .map(|(_, p)| p)
        .collect();
    let after = sum_metric(&survivors, "registry_proxy_upstream_bytes_total").await;
    let total = at_kill + after;
    eprintln!(
        "killed at {at_kill} bytes; resumed at byte {resumed_at}; upstream bytes {total} = {:.2}x the blob",
        total as f64 / size as f64
    );
    assert!(
        total as f64 <= 1.6 * size as f64,
        "{total} bytes from the upstream for a blob of {size} ({:.2}x)",
        total as f64 / size as f64
    );
    // Answers complete at verification; the upload follows.
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.stat(d).await.unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the new holder publishes the blob"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        store.get_bytes(d).await.unwrap() == layer,
        "the published blob is whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_in_the_holders_transfer_completes_no_client_anywhere() {
    let az = azurite("peerflip");
    let up = HostileRegistry::start("127.0.0.1");
    let (layer, img) = app_image(&up, 23, 8 * 1024 * 1024);
    let (d, _) = &img.layers[0];
    up.set_rate(Some(8 * 1024 * 1024));
    up.fault(d.as_str(), [WireFault::FlipByte(5 * 1024 * 1024)]);
    let (proxies, _) = peered(&up, &az, "peerflip");
    let first = tokio::spawn(get_blob(
        proxies[0].url(&format!("/v2/library/app/blobs/{d}")),
    ));
    let spool = tempfile::tempdir().unwrap();
    let store = shared_store(&az, "peerflip", spool.path());
    holder_of(&store, d).await;
    let others: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(get_blob(
                proxies[1 + i % 2].url(&format!("/v2/library/app/blobs/{d}")),
            ))
        })
        .collect();
    let mut all = vec![first];
    all.extend(others);
    for (i, c) in all.into_iter().enumerate() {
        if let Ok(body) = c.await.unwrap() {
            panic!(
                "client {i} got a complete answer of {} bytes ({})",
                body.len(),
                if body == layer {
                    "right, so the fault never hit"
                } else {
                    "wrong"
                }
            );
        }
    }
    assert!(store.stat(d).await.unwrap().is_none(), "nothing published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_endpoint_refuses_strangers_and_digests_it_holds_no_lease_for() {
    let az = azurite("peerauth");
    let up = HostileRegistry::start("127.0.0.1");
    let (layer, img) = app_image(&up, 24, 8 * 1024 * 1024);
    let stored = Bytes::from(content(25, 1000).to_vec());
    let d_stored = up.add_blob(stored.clone());
    up.set_rate(Some(4 * 1024 * 1024));
    let (proxies, ports) = peered(&up, &az, "peerauth");
    let (d, _) = &img.layers[0];
    // A blob the first instance stored earlier: not served to peers either.
    let url = proxies[0].url(&format!("/v2/library/app/blobs/{d_stored}"));
    assert!(get_blob(url).await.unwrap() == stored);
    let fetch = tokio::spawn(get_blob(
        proxies[0].url(&format!("/v2/library/app/blobs/{d}")),
    ));
    let spool = tempfile::tempdir().unwrap();
    let store = shared_store(&az, "peerauth", spool.path());
    let (holder, _) = holder_of(&store, d).await;
    let follower = tokio::spawn(get_blob(
        proxies[(holder + 1) % 3].url(&format!("/v2/library/app/blobs/{d}")),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peer_url =
        |i: usize, d: &Digest| format!("http://127.0.0.1:{}/peer/v1/blobs/{d}", ports[i]);
    let status = |rb: reqwest::RequestBuilder| async move {
        rb.header("range", "bytes=0-")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // The holder answers its peers, from any offset.
    let ok = http()
        .get(peer_url(holder, d))
        .bearer_auth(PEER_SECRET)
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 206);
    let expect = format!("bytes 1000-{}/{}", layer.len() - 1, layer.len());
    assert_eq!(ok.headers()["content-range"].to_str().unwrap(), expect);
    drop(ok);
    // Not without the secret, nor with another one.
    assert_eq!(status(http().get(peer_url(holder, d))).await, 401);
    assert_eq!(
        status(
            http()
                .get(peer_url(holder, d))
                .bearer_auth("replicas-test-peer-secreT")
        )
        .await,
        401
    );
    assert_eq!(
        status(
            http()
                .get(peer_url(holder, d))
                .basic_auth("x", Some(PEER_SECRET))
        )
        .await,
        401
    );
    // Not what this instance holds no lease for: stored content, another
    // instance's fetch, content nobody fetches; nor other paths.
    let signed = |i: usize, d: &Digest| http().get(peer_url(i, d)).bearer_auth(PEER_SECRET);
    assert_eq!(status(signed(holder, &d_stored)).await, 404);
    for other in (0..3).filter(|i| *i != holder) {
        assert_eq!(
            status(signed(other, d)).await,
            404,
            "instance {other} holds no lease"
        );
    }
    let unknown = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
    assert_eq!(status(signed(holder, &unknown)).await, 404);
    let v2 = http()
        .get(format!(
            "http://127.0.0.1:{}/v2/library/app/blobs/{d}",
            ports[holder]
        ))
        .bearer_auth(PEER_SECRET);
    assert_eq!(
        status(v2).await,
        404,
        "the peer port serves the peer API only"
    );
    assert!(fetch.await.unwrap().unwrap() == layer);
    assert!(follower.await.unwrap().unwrap() == layer);
    let log = proxies.iter().map(Proxy::log).collect::<String>();
    assert!(!log.contains(PEER_SECRET), "the secret reached a log");
}

/// Mutual TLS between the instances: with one certificate from the peer
/// CA (named `registry-proxy-peer`, reached at any address), the three
/// instances stream a blob to each other over HTTPS; the peer endpoint
/// refuses plain HTTP, a client with no certificate and one from another
/// CA; a follower refuses an endpoint whose certificate does not name the
/// configured `peer_server_name`; and a client presents a rotated
/// certificate, and trusts a changed peer CA, once their files change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_with_mutual_tls_stream_to_each_other_and_refuse_everyone_else() {
    use cache_core::peer::{PeerSource, PeerTls};
    use cache_upstream::{PeerClient, peer_client_tls};
    let az = azurite("peertls");
    let up = HostileRegistry::start("127.0.0.1");
    let (layer, img) = app_image(&up, 24, 8 * 1024 * 1024);
    up.set_rate(Some(8 * 1024 * 1024));
    let ca = common::TestCa::new("peer CA");
    let files = tempfile::tempdir().unwrap();
    let ca_pem = ca.write_to(files.path(), "peer-ca.pem");
    let (cert, key) = ca.issue_peer_files(
        files.path(),
        "peer",
        &[PeerTls::DEFAULT_SERVER_NAME, "127.0.0.1"],
    );
    let tls_keys = format!(
        "peer_certificate = \"{}\"\npeer_key = \"{}\"\npeer_ca = \"{}\"\n",
        cert.display(),
        key.display(),
        ca_pem.display()
    );
    let (proxies, ports) = peered_with(&up, &az, "peertls", &tls_keys);
    let (d, _) = &img.layers[0];
    all_get(&proxies, d, 6, &layer).await;
    assert_eq!(up.requests("GET", d.as_str()), 1, "one upstream GET in all");
    let all: Vec<&Proxy> = proxies.iter().collect();
    assert_eq!(
        sum_metric(
            &all,
            "registry_proxy_peer_fetches_total{outcome=\"streamed\"}"
        )
        .await,
        2,
        "the two followers streamed from the holder over TLS"
    );
    assert!(sum_metric(&all, "registry_proxy_peer_bytes_total").await >= layer.len() as u64);

    // Straight at a peer endpoint, for a digest it holds no lease for: a
    // client it accepts gets its 404, any other no answer at all.
    let secret = cache_core::Secret::new(PEER_SECRET.to_owned());
    let peer = format!("127.0.0.1:{}", ports[0]);
    let nothing = Digest::sha256_of(b"no lease on this");
    let tls = PeerTls {
        certificate: cert.clone(),
        key: key.clone(),
        ca: ca_pem.clone(),
        server_name: PeerTls::DEFAULT_SERVER_NAME.to_owned(),
    };
    let ask = |client: PeerClient| {
        let (peer, nothing) = (peer.clone(), nothing.clone());
        async move {
            match client.blob(&peer, &nothing, 0).await {
                Ok(_) => "an answer".to_owned(),
                Err(e) => e.to_string(),
            }
        }
    };
    let t = Duration::from_secs(2);
    let mine = PeerClient::with_tls(secret.clone(), t, peer_client_tls(&tls).unwrap()).unwrap();
    let e = ask(mine).await;
    assert!(e.contains("answered 404"), "accepted: {e}");
    let plain = PeerClient::new(secret.clone(), t).unwrap();
    let e = ask(plain).await;
    assert!(e.contains("request failed"), "plain HTTP: {e}");
    let strangers = common::TestCa::new("stranger CA");
    let (scert, skey) =
        strangers.issue_peer_files(files.path(), "stranger", &[PeerTls::DEFAULT_SERVER_NAME]);
    let stranger = PeerTls {
        certificate: scert,
        key: skey,
        ..tls.clone()
    };
    let e =
        ask(PeerClient::with_tls(secret.clone(), t, peer_client_tls(&stranger).unwrap()).unwrap())
            .await;
    assert!(
        e.contains("request failed"),
        "a certificate from another CA: {e}"
    );
    // The presented certificate is read again when its files change: the
    // same client, refused with the stranger's, is accepted once the
    // files hold the peer CA's.
    let rotating = PeerTls {
        certificate: files.path().join("rotating.pem"),
        key: files.path().join("rotating-key.pem"),
        ..tls.clone()
    };
    std::fs::copy(&stranger.certificate, &rotating.certificate).unwrap();
    std::fs::copy(&stranger.key, &rotating.key).unwrap();
    let client =
        PeerClient::with_tls(secret.clone(), t, peer_client_tls(&rotating).unwrap()).unwrap();
    let e = ask(client.clone()).await;
    assert!(e.contains("request failed"), "before the rotation: {e}");
    std::fs::copy(&cert, &rotating.certificate).unwrap();
    std::fs::copy(&key, &rotating.key).unwrap();
    let e = ask(client).await;
    assert!(e.contains("answered 404"), "after the rotation: {e}");
    // So is the peer CA: a client trusting only the strangers' CA refuses
    // the endpoint, then, once its file holds the peer CA, accepts it.
    let changing = PeerTls {
        ca: files.path().join("changing-ca.pem"),
        ..tls.clone()
    };
    std::fs::write(&changing.ca, strangers.pem()).unwrap();
    let client =
        PeerClient::with_tls(secret.clone(), t, peer_client_tls(&changing).unwrap()).unwrap();
    let e = ask(client.clone()).await;
    assert!(e.contains("request failed"), "before the CA changed: {e}");
    std::fs::copy(&ca_pem, &changing.ca).unwrap();
    let e = ask(client).await;
    assert!(e.contains("answered 404"), "after the CA changed: {e}");
    // And the other way: a peer it trusted is refused once the CA file
    // no longer holds its CA, by a new connection that could have resumed
    // the trusted one's session (two clients, one TLS configuration).
    let config = peer_client_tls(&changing).unwrap();
    let first = PeerClient::with_tls(secret.clone(), t, config.clone()).unwrap();
    let e = ask(first).await;
    assert!(
        e.contains("answered 404"),
        "before the CA changed back: {e}"
    );
    std::fs::write(&changing.ca, strangers.pem()).unwrap();
    let second = PeerClient::with_tls(secret.clone(), t, config).unwrap();
    let e = ask(second).await;
    assert!(
        e.contains("request failed"),
        "after the CA changed back: {e}"
    );
    let other_name = PeerTls {
        server_name: "someone-else".to_owned(),
        ..tls.clone()
    };
    let e =
        ask(PeerClient::with_tls(secret, t, peer_client_tls(&other_name).unwrap()).unwrap()).await;
    assert!(e.contains("request failed"), "a peer not named so: {e}");
    // No client certificate at all, the server's checked as usual.
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca_pem).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let r = anonymous
        .get(format!("https://{peer}/peer/v1/blobs/{nothing}"))
        .bearer_auth(PEER_SECRET)
        .send()
        .await;
    assert!(r.is_err(), "no client certificate: {r:?}");
}
