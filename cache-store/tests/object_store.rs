//! The object storage backend against Azurite, Microsoft's Azure Storage
//! emulator (npm), and moto's S3 server (PyPI), each started on a free
//! loopback port: the whole conformance suite (conditional writes
//! included) on both, a multipart upload, and errors that name what is
//! wrong.

use std::sync::Arc;

use bytes::Bytes;
use cache_core::testing::{self, Harness, content};
use cache_core::{BlobStore, BlobStoreExt, ByteRange, Digest};
use cache_store::ObjectBlobStore;
use cache_store::testing::{Azurite, MotoS3};
use futures::StreamExt;

fn azurite() -> Azurite {
    Azurite::start().unwrap_or_else(|e| panic!("{e}"))
}

fn store_in(
    az: &Azurite,
    container: &str,
    prefix: &str,
    spool: &std::path::Path,
) -> ObjectBlobStore {
    ObjectBlobStore::from_url(&format!("az://{container}/{prefix}"), az.options(), spool).unwrap()
}

fn harness(store: ObjectBlobStore, spool: tempfile::TempDir) -> Harness {
    let probe = store.clone();
    Harness {
        store: Arc::new(store),
        staged_leftovers: Box::new(move || probe.open_spools()),
        guard: Box::new(spool),
    }
}

/// Every check of the suite, each under a prefix of its own in one container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_passes_the_conformance_suite() {
    let az = azurite();
    az.create_container("conformance").unwrap();
    let h = |name: &str| {
        let spool = tempfile::tempdir().unwrap();
        harness(store_in(&az, "conformance", name, spool.path()), spool)
    };
    testing::all_checks(h).await;
}

/// The same suite on S3 (moto's server), through the `s3://` URL a user
/// would configure: conditional create and replace use S3's
/// `If-None-Match` and `If-Match`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_on_moto_passes_the_conformance_suite() {
    let s3 = MotoS3::start().unwrap_or_else(|e| panic!("{e}"));
    s3.create_bucket("conformance").unwrap();
    let h = |name: &str| {
        let spool = tempfile::tempdir().unwrap();
        let store = ObjectBlobStore::from_url(
            &format!("s3://conformance/{name}"),
            s3.options(),
            spool.path(),
        )
        .unwrap();
        harness(store, spool)
    };
    testing::all_checks(h).await;
}

async fn read(store: &dyn BlobStore, d: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let r = store.get(d, range).await.unwrap();
    let mut out = Vec::new();
    let mut s = r.payload.into_stream();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

/// A blob of several upload parts, written in odd-sized chunks, reads back
/// whole and in a range across a part boundary; two stores on one
/// container (two cache instances) see each other's blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_blob_round_trips_and_a_second_instance_sees_it() {
    let az = azurite();
    az.create_container("shared").unwrap();
    let spool = tempfile::tempdir().unwrap();
    let a = store_in(&az, "shared", "cache", spool.path());
    let b = store_in(&az, "shared", "cache", spool.path());
    let data = content(1, 40 * 1024 * 1024 + 17);
    let d = Digest::sha256_of(&data);
    let mut w = a.stage(&d, Some(data.len() as u64)).await.unwrap();
    for c in data.chunks(3 * 1024 * 1024 + 5) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    w.commit().await.unwrap();
    assert_eq!(a.open_spools(), 0);
    let info = b
        .stat(&d)
        .await
        .unwrap()
        .expect("the other instance sees it");
    assert_eq!(info.size, data.len() as u64);
    assert!(read(&b, &d, None).await == data[..]);
    let edge = 16 * 1024 * 1024;
    let r = ByteRange::parse_http(&format!("bytes={}-{}", edge - 100, edge + 100)).unwrap();
    assert!(read(&b, &d, Some(r)).await == data[edge - 100..=edge + 100]);
    assert!(b.delete(&d).await.unwrap());
    assert!(a.stat(&d).await.unwrap().is_none());
    assert!(a.list_all().await.unwrap().is_empty());
}

#[test]
fn debug_output_names_the_store_but_never_its_key() {
    let spool = std::env::temp_dir();
    let options = vec![
        ("azure_storage_account_name".to_owned(), "acct".to_owned()),
        (
            "azure_storage_account_key".to_owned(),
            cache_store::testing::ACCOUNT_KEY.to_owned(),
        ),
    ];
    let store = ObjectBlobStore::from_url("az://box/p", options, &spool).unwrap();
    let shown = format!("{store:?}");
    assert!(shown.contains("acct") && shown.contains("box"), "{shown}");
    for needle in ["Eby8vdM02x", "AccessKey"] {
        assert!(!shown.contains(needle), "{shown}");
    }
}

#[test]
fn bad_urls_and_prefixes_are_errors_that_name_them() {
    let spool = std::env::temp_dir();
    let e = ObjectBlobStore::from_url("ftp://host/x", Vec::new(), &spool).unwrap_err();
    assert!(e.to_string().contains("ftp://host/x"), "{e}");
    let e = ObjectBlobStore::from_url("not a url", Vec::new(), &spool).unwrap_err();
    assert!(e.to_string().contains("not a url"), "{e}");
    let e = ObjectBlobStore::new(
        Arc::new(object_store::memory::InMemory::new()),
        "a//b",
        &spool,
    )
    .unwrap_err();
    assert!(e.to_string().contains("a//b"), "{e}");
}

/// The URL's whole path is the store's prefix (object_store alone would
/// drop the first segment of an `az://` path): stores under different
/// prefixes of one container never see each other's blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_url_path_is_a_prefix_of_its_own() {
    let az = azurite();
    az.create_container("prefixes").unwrap();
    let spool = tempfile::tempdir().unwrap();
    let deep = store_in(&az, "prefixes", "team/a", spool.path());
    let other = store_in(&az, "prefixes", "a", spool.path());
    let root = store_in(&az, "prefixes", "", spool.path());
    let data = content(2, 1000);
    let d = Digest::sha256_of(&data);
    deep.put(&d, data).await.unwrap();
    assert!(deep.stat(&d).await.unwrap().is_some());
    assert!(other.stat(&d).await.unwrap().is_none());
    assert!(root.stat(&d).await.unwrap().is_none());
    assert!(other.list_all().await.unwrap().is_empty());
}

/// A reader slower than object_store's request timeout still gets the
/// whole blob: each piece is its own short request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_slower_than_the_request_timeout_still_reads_everything() {
    let az = azurite();
    az.create_container("slow").unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut options = az.options();
    options.push(("timeout".into(), "1s".into()));
    let store = ObjectBlobStore::from_url("az://slow/cache", options, spool.path()).unwrap();
    let data = content(3, 9 * 1024 * 1024);
    let d = Digest::sha256_of(&data);
    store.put(&d, data.clone()).await.unwrap();
    let r = store.get(&d, None).await.unwrap();
    let mut got = Vec::new();
    let mut s = r.payload.into_stream();
    while let Some(c) = s.next().await {
        got.extend_from_slice(&c.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    }
    assert!(got == data[..]);
}

/// Instances on one store record accesses to a blob at the same time (a
/// reader's renewal on one, a read starting on another): however their
/// requests interleave, the latest access stays recorded, so gc elsewhere
/// never takes a blob in use for an idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_touches_from_two_instances_keep_the_latest_access() {
    let az = azurite();
    az.create_container("touches").unwrap();
    let spools = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let stores: Vec<Arc<ObjectBlobStore>> = spools
        .iter()
        .map(|s| Arc::new(store_in(&az, "touches", "shared", s.path())))
        .collect();
    let data = content(21, 1000);
    let d = Digest::sha256_of(&data);
    stores[0].put(&d, data).await.unwrap();
    // Far from now, so the blob's own modification time cannot pass for it.
    // Whole milliseconds: access records keep milliseconds.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let base = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms + 86_400_000);
    for round in 0..20u64 {
        let times: Vec<std::time::SystemTime> = (0..8u64)
            .map(|i| base + std::time::Duration::from_millis(round * 100 + i))
            .collect();
        let touches = times.iter().enumerate().map(|(i, t)| {
            let (s, d, t) = (stores[i % 2].clone(), d.clone(), *t);
            tokio::spawn(async move { s.touch(&d, t).await.unwrap() })
        });
        for t in futures::future::join_all(touches).await {
            assert!(t.unwrap(), "the blob exists");
        }
        let listed: Vec<_> = stores[1].list_all().await.unwrap();
        let info = listed.iter().find(|b| b.digest == d).unwrap();
        assert_eq!(
            info.last_access,
            times.iter().max().copied(),
            "round {round}: the latest access is recorded"
        );
    }
}
