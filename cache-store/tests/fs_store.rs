//! Filesystem-specific behaviour beyond the conformance suite.

use bytes::Bytes;
use cache_core::testing::content;
use cache_core::{BlobStore, BlobStoreExt, Digest, Error};
use cache_store::FsStore;

#[tokio::test]
async fn blobs_live_under_algorithm_and_two_hex_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).await.unwrap();
    let data = content(1, 1000);
    let d = Digest::sha256_of(&data);
    store.put(&d, data.clone()).await.unwrap();
    let expected = dir
        .path()
        .join("blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex());
    assert_eq!(store.blob_path(&d), expected);
    assert_eq!(std::fs::read(&expected).unwrap(), data);
}

#[tokio::test]
async fn a_second_open_of_the_same_root_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = FsStore::open(dir.path()).await.unwrap();
    let err = FsStore::open(dir.path()).await.unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    FsStore::open(dir.path()).await.unwrap();
}

#[tokio::test]
async fn opening_removes_leftover_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("staging")).unwrap();
    std::fs::write(dir.path().join("staging/sha256-abc.1-0.tmp"), b"partial").unwrap();
    let store = FsStore::open(dir.path()).await.unwrap();
    assert_eq!(store.staging_count(), 0);
    assert!(store.list_all().await.unwrap().is_empty());
}

#[tokio::test]
async fn foreign_files_in_the_blob_tree_are_not_listed_as_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).await.unwrap();
    std::fs::create_dir_all(dir.path().join("blobs/sha256/ab")).unwrap();
    std::fs::write(dir.path().join("blobs/sha256/ab/not-a-digest"), b"x").unwrap();
    std::fs::write(dir.path().join("blobs/sha256/ab/ABCDEF"), b"x").unwrap();
    assert!(store.list_all().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_truncated_blob_file_ends_its_stream_in_an_error_not_a_clean_end() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).await.unwrap();
    let data = content(2, 3 * 1024 * 1024);
    let d = Digest::sha256_of(&data);
    store.put(&d, data).await.unwrap();
    let read = store.get(&d, None).await.unwrap();
    // Someone truncates the file under a reader that already knows its size.
    std::fs::OpenOptions::new()
        .write(true)
        .open(store.blob_path(&d))
        .unwrap()
        .set_len(1024 * 1024 + 10)
        .unwrap();
    let mut saw_error = false;
    let mut stream = read.payload.into_stream();
    while let Some(c) = stream.next().await {
        if c.is_err() {
            saw_error = true;
        }
    }
    assert!(saw_error);
}

#[tokio::test]
async fn metadata_keys_and_their_prefixes_coexist() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).await.unwrap();
    let a = cache_core::MetaKey::parse("a").unwrap();
    let ab = cache_core::MetaKey::parse("a/b").unwrap();
    store.put_meta(&a, Bytes::from_static(b"1")).await.unwrap();
    store.put_meta(&ab, Bytes::from_static(b"2")).await.unwrap();
    assert_eq!(
        store.get_meta(&a).await.unwrap().unwrap(),
        Bytes::from_static(b"1")
    );
    let mut keys = store.list_meta(Some(&a)).await.unwrap();
    keys.sort();
    assert_eq!(keys, vec![a, ab]);
    assert_eq!(store.staging_count(), 0);
}
