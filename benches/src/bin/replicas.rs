//! Object storage through registry-proxy, side by side in one run, on
//! Azurite (the Azure Blob emulator) on loopback:
//!
//! * **Warm**: a 64 MiB layer through one instance (release build) against
//!   a direct ranged GET of the same object from Azurite, alternating:
//!   time to first byte and throughput, on the instance that fetched it and
//!   on a fresh instance that did not.
//! * **Cold**: 16 clients asking for a 64 MiB blob nobody has, from an
//!   upstream sending ~32 MiB/s per request, over three instances sharing
//!   the container (waiting for publication, and streaming from the lease
//!   holder: peer streaming, over plain HTTP and over mutual TLS) against
//!   all on one instance: time until every client has the whole blob, the
//!   slowest time to first byte of a client on an instance that does not
//!   hold the lease, and upstream GETs.
//!
//! Run with `scripts/bench-replicas.sh` (builds, installs Azurite if
//! missing). `REPLICA_ROUNDS` (default 5) runs per figure; medians are
//! reported. Loopback only; every run is bounded.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use benches::{machine, median};
use bytes::Bytes;
use cache_store::testing::Azurite;
use cache_upstream::testing::HostileRegistry;
use cache_upstream::testing::RegistryProxy;
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;

const WARM_LAYER: usize = 64 * 1024 * 1024;
const COLD_LAYER: usize = 64 * 1024 * 1024;
/// The cold upstream's pace per request, bytes a second.
const COLD_RATE: u64 = 32 * 1024 * 1024;
const CLIENTS: usize = 16;

/// A peer CA and one certificate from it for every instance (named
/// `registry-proxy-peer`, for server and client authentication), written
/// to `dir`; the `[storage]` keys that use them.
fn peer_tls_keys(dir: &std::path::Path) -> Result<String, String> {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let mut leaf = CertificateParams::new(vec![
        cache_core::peer::PeerTls::DEFAULT_SERVER_NAME.to_owned(),
    ])
    .map_err(e)?;
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).map_err(e)?;
    let mut keys = String::new();
    for (name, key_name, pem) in [
        ("ca.pem", "peer_ca", ca.pem()),
        ("peer.pem", "peer_certificate", leaf.pem()),
        ("peer-key.pem", "peer_key", key.serialize_pem()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(|e| e.to_string())?;
        keys.push_str(&format!("{key_name} = \"{}\"\n", path.display()));
    }
    Ok(keys)
}

fn rounds() -> usize {
    std::env::var("REPLICA_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5)
}

/// A release registry-proxy on the container's `prefix`, named `name`.
fn proxy(
    bin: &std::path::Path,
    az: &Azurite,
    up: &HostileRegistry,
    prefix: &str,
    name: &str,
) -> Result<RegistryProxy, String> {
    proxy_with(bin, az, up, prefix, name, "")
}

/// As [`proxy`], with `storage` added to `[storage]`.
fn proxy_with(
    bin: &std::path::Path,
    az: &Azurite,
    up: &HostileRegistry,
    prefix: &str,
    name: &str,
    storage: &str,
) -> Result<RegistryProxy, String> {
    let options: String = az
        .options()
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let body = format!(
        "[storage]\nbackend = \"object\"\nurl = \"az://bench/{prefix}\"\nspool = \"spool\"\ninstance_name = \"{name}\"\n{storage}[storage.options]\n{options}\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n[[rule]]\nname = \"bench\"\nsource = \"{h}/bench/*\"\ntarget = \"bench/*\"\n",
        h = up.host(),
        u = up.url()
    );
    RegistryProxy::start(bin, &body, "warn", false)
}

/// Time to the first body byte and in all (seconds), and bytes read.
async fn timed(
    first: impl std::future::Future<
        Output = Result<futures::stream::BoxStream<'static, Result<Bytes, String>>, String>,
    >,
) -> Result<(f64, f64, usize), String> {
    let t = Instant::now();
    let mut s = first.await?;
    let mut ttfb = None;
    let mut n = 0;
    while let Some(c) = s.next().await {
        let c = c?;
        if ttfb.is_none() && !c.is_empty() {
            ttfb = Some(t.elapsed().as_secs_f64());
        }
        n += c.len();
    }
    Ok((ttfb.unwrap_or_default(), t.elapsed().as_secs_f64(), n))
}

async fn via_proxy(
    client: &reqwest::Client,
    port: u16,
    d: &cache_core::Digest,
) -> Result<(f64, f64, usize), String> {
    let url = format!("http://127.0.0.1:{port}/v2/bench/app/blobs/{d}");
    timed(async {
        let r = client.get(url).send().await.map_err(|e| e.to_string())?;
        if r.status() != 200 {
            return Err(format!("status {}", r.status()));
        }
        Ok(r.bytes_stream()
            .map(|c| c.map_err(|e| e.to_string()))
            .boxed())
    })
    .await
}

async fn direct(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    len: usize,
) -> Result<(f64, f64, usize), String> {
    timed(async {
        let r = store
            .get_opts(
                path,
                object_store::GetOptions {
                    range: Some(object_store::GetRange::Bounded(0..len as u64)),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.into_stream()
            .map(|c| c.map_err(|e| e.to_string()))
            .boxed())
    })
    .await
}

async fn in_process(
    store: &cache_store::ObjectBlobStore,
    d: &cache_core::Digest,
) -> Result<(f64, f64, usize), String> {
    use cache_core::BlobStore as _;
    timed(async {
        let r = store.get(d, None).await.map_err(|e| e.to_string())?;
        Ok(r.payload
            .into_stream()
            .map(|c| c.map_err(|e| e.to_string()))
            .boxed())
    })
    .await
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match rt.block_on(run()) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("replicas: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("registry-proxy");
    if !bin.is_file() {
        return Err(format!(
            "{} not found: run scripts/bench-replicas.sh",
            bin.display()
        ));
    }
    let az = Azurite::start()?;
    az.create_container("bench")?;
    let up = HostileRegistry::start("127.0.0.1");
    let client = reqwest::Client::new();
    let rounds = rounds();
    let mut out = format!(
        "Measured on {}, loopback, release build, by `scripts/bench-replicas.sh` ({rounds} rounds, medians).\n\n",
        machine()
    );

    // Warm: one instance fetches the layer; then direct GETs from Azurite
    // alternate with GETs through it, and through a fresh instance.
    let layer = Bytes::from(cache_core::testing::content(1, WARM_LAYER).to_vec());
    let d = up.add_blob(layer.clone());
    let p0 = proxy(&bin, &az, &up, "warm", "p0")?;
    let port0 = p0.port;
    let (_, _, n) = via_proxy(&client, port0, &d).await?;
    if n != WARM_LAYER {
        return Err(format!("cold read of {n} bytes"));
    }
    let path = ObjectPath::from(format!("warm/blobs/sha256/{}", d.hex()));
    let raw: Arc<dyn ObjectStore> = {
        let url = url::Url::parse("az://bench/").map_err(|e| e.to_string())?;
        let (s, _) = object_store::parse_url_opts(&url, az.options()).map_err(|e| e.to_string())?;
        Arc::from(s)
    };
    // The answer completes once the blob verified; the upload follows.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while raw.head(&path).await.is_err() {
        if Instant::now() > deadline {
            return Err("the warm layer was not uploaded within 60 s".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("direct ranged GET from Azurite", vec![], vec![]),
        ("through the instance that fetched it", vec![], vec![]),
        ("through a fresh instance", vec![], vec![]),
        ("ObjectBlobStore::get in this process", vec![], vec![]),
    ];
    let spool = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lib = cache_store::ObjectBlobStore::new(raw.clone(), "warm", spool.path())
        .map_err(|e| e.to_string())?;
    for i in 0..rounds {
        let fresh = proxy(&bin, &az, &up, "warm", &format!("fresh{i}"))?;
        for (row, r) in [
            (0, direct(&raw, &path, WARM_LAYER).await?),
            (1, via_proxy(&client, port0, &d).await?),
            (2, via_proxy(&client, fresh.port, &d).await?),
            (3, in_process(&lib, &d).await?),
        ] {
            if r.2 != WARM_LAYER {
                return Err(format!("{}: {} bytes", rows[row].0, r.2));
            }
            rows[row].1.push(r.0 * 1000.0);
            rows[row].2.push(WARM_LAYER as f64 / 1048576.0 / r.1);
        }
    }
    let base = (
        median(&mut rows[0].1.clone()),
        median(&mut rows[0].2.clone()),
    );
    out.push_str("| warm 64 MiB blob | time to first byte | vs direct | throughput | vs direct |\n|---|---|---|---|---|\n");
    for (name, ttfb, mibs) in &rows {
        let (t, m) = (median(&mut ttfb.clone()), median(&mut mibs.clone()));
        out.push_str(&format!(
            "| {name} | {t:.1} ms | {:.2}x | {m:.0} MiB/s | {:.2}x |\n",
            t / base.0,
            m / base.1
        ));
    }

    // Cold: a new blob each round, 16 clients, one instance or three
    // (waiting for publication, or streaming from the holder).
    up.set_rate(Some(COLD_RATE));
    // Per row: its name, and per round the time until all were done, the
    // slowest first byte on a non-holding instance, and upstream GETs.
    type Row<'a> = (&'a str, Vec<f64>, Vec<f64>, Vec<usize>);
    let mut cold: Vec<Row> = vec![
        ("16 clients on one instance", vec![], vec![], vec![]),
        (
            "16 clients over three instances, waiting for publication",
            vec![],
            vec![],
            vec![],
        ),
        (
            "16 clients over three instances, peer streaming",
            vec![],
            vec![],
            vec![],
        ),
        (
            "16 clients over three instances, peer streaming over mutual TLS",
            vec![],
            vec![],
            vec![],
        ),
    ];
    // A new blob (content) per round and row, so no two share a digest.
    let rows = cold.len();
    let certs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let peer_tls = peer_tls_keys(certs.path())?;
    for i in 0..rounds {
        for (row, instances, peers) in [
            (0usize, 1usize, None),
            (1, 3, None),
            (2, 3, Some("")),
            (3, 3, Some(peer_tls.as_str())),
        ] {
            let prefix = format!("cold{i}-{row}");
            let procs: Vec<RegistryProxy> = (0..instances)
                .map(|k| {
                    let port = cache_core::testing::free_port();
                    let storage = match peers {
                        Some(tls) => format!("peer_listen = \"127.0.0.1:{port}\"\npeer_advertise = \"127.0.0.1:{port}\"\npeer_secret = \"bench-peer-secret-0123\"\n{tls}"),
                        None => String::new(),
                    };
                    proxy_with(&bin, &az, &up, &prefix, &format!("c{k}"), &storage)
                })
                .collect::<Result<_, _>>()?;
            let blob = Bytes::from(
                cache_core::testing::content(100 + (i * rows + row) as u64, COLD_LAYER).to_vec(),
            );
            let d = up.add_blob(blob);
            let t = Instant::now();
            let reads = (0..CLIENTS).map(|c| {
                let (client, port, d) = (client.clone(), procs[c % instances].port, d.clone());
                async move { (c % instances, via_proxy(&client, port, &d).await) }
            });
            let mut ttfb = vec![0f64; instances];
            for (k, r) in futures::future::join_all(reads).await {
                let (first, _, n) = r?;
                if n != COLD_LAYER {
                    return Err(format!("cold read of {n} bytes"));
                }
                ttfb[k] = ttfb[k].max(first);
            }
            cold[row].1.push(t.elapsed().as_secs_f64());
            // The holder is the instance that fetched: the others counted
            // a peer fetch (streamed, or served once published).
            let mut worst_follower = 0f64;
            for (k, p) in procs.iter().enumerate() {
                let m = client
                    .get(format!("http://127.0.0.1:{}/metrics", p.port))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .text()
                    .await
                    .map_err(|e| e.to_string())?;
                let followed = m.lines().any(|l| {
                    l.starts_with("registry_proxy_peer_fetches_total{") && !l.ends_with(" 0")
                });
                if followed {
                    worst_follower = worst_follower.max(ttfb[k]);
                }
            }
            cold[row].2.push(worst_follower);
            cold[row].3.push(up.requests("GET", d.as_str()));
            up.remove_blob(&d);
        }
    }
    up.set_rate(None);
    let base = median(&mut cold[0].1.clone());
    out.push_str(&format!(
        "\n| cold 64 MiB blob, upstream ~{} MiB/s | all clients done | vs one instance | slowest first byte on a non-holding instance | upstream GETs per round |\n|---|---|---|---|---|\n",
        COLD_RATE >> 20
    ));
    for (row, (name, secs, ttfb, gets)) in cold.iter().enumerate() {
        let s = median(&mut secs.clone());
        let t = if row == 0 {
            "-".to_owned()
        } else {
            format!("{:.0} ms", median(&mut ttfb.clone()) * 1000.0)
        };
        out.push_str(&format!(
            "| {name} | {:.0} ms | {:.2}x | {t} | {} |\n",
            s * 1000.0,
            s / base,
            gets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(out)
}
