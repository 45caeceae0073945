//! What a warm read costs on object storage, counted request by request:
//! an instance that did not fetch an image (another instance on the same
//! store did) serves a layer and a manifest by digest with at most one
//! metadata request before the data.

use std::sync::Arc;
use std::time::Duration;

use cache_core::testing::{FakeUpstream, content};
use cache_core::{
    Accept, CacheOptions, Clock, PullThroughCache, Reference, RepoName, RuleSet, RuleSpec, Tag,
};
use cache_store::testing::RecordingObjectStore;
use cache_store::{ObjectBlobStore, TokioRuntime};
use futures::StreamExt;
use object_store::memory::InMemory;

fn n(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn instance(
    name: &str,
    objects: &Arc<RecordingObjectStore>,
    up: &Arc<FakeUpstream>,
    spool: &std::path::Path,
) -> PullThroughCache {
    let store = ObjectBlobStore::new(objects.clone(), "cache", spool).unwrap();
    PullThroughCache::builder()
        .rules(RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")]).unwrap())
        .store(store)
        .tokio()
        .upstream("up.example", up.clone())
        .options(CacheOptions {
            instance_name: name.to_owned(),
            ..CacheOptions::default()
        })
        .build()
        .unwrap()
}

/// Requests before the first one for the content itself.
fn before_data<'a>(log: &'a [String], data_path: &str) -> Vec<&'a String> {
    log.iter().take_while(|l| !l.ends_with(data_path)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_read_on_another_instance_costs_one_metadata_request() {
    let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::current());
    let up = Arc::new(FakeUpstream::new("up.example", clock));
    let layer = content(1, 8 * 1024 * 1024);
    let image = up.push_image(
        &n("library/app"),
        &Tag::parse("v1").unwrap(),
        std::slice::from_ref(&layer),
    );
    let objects = Arc::new(RecordingObjectStore::new(Arc::new(InMemory::new())));
    let spool = tempfile::tempdir().unwrap();
    let a = instance("a", &objects, &up, spool.path());
    let b = instance("b", &objects, &up, spool.path());

    // Instance a pulls the image.
    let m = a
        .manifest(
            &n("library/app"),
            &Reference::Tag(Tag::parse("v1").unwrap()),
            &Accept::any(),
        )
        .await
        .unwrap();
    assert_eq!(m.digest, image.manifest);
    let (d, _) = &image.layers[0];
    let mut s = a
        .blob(&n("library/app"), d, None)
        .await
        .unwrap()
        .body
        .into_stream();
    while s.next().await.is_some() {}
    // Let a's access-time records settle before counting b's requests.
    tokio::time::sleep(Duration::from_millis(200)).await;
    objects.take();

    // Instance b serves the layer.
    let r = b.blob(&n("library/app"), d, None).await.unwrap();
    let mut body = Vec::new();
    let mut s = r.body.into_stream();
    while let Some(c) = s.next().await {
        body.extend_from_slice(&c.unwrap());
    }
    assert!(body == layer[..], "wrong bytes");
    let log = objects.take();
    let blob_path = format!("cache/blobs/sha256/{}", d.hex());
    let meta = before_data(&log, &blob_path);
    assert!(
        meta.len() <= 1,
        "metadata requests before the data: {meta:?}"
    );
    let reads = log
        .iter()
        .filter(|l| **l == format!("get_range {blob_path}"))
        .count();
    // 256 KiB first (read whole before the answer), then the rest (pieces
    // of 8 MiB).
    assert_eq!(reads, 2, "{log:?}");
    // Recording the access (a HEAD, a listing, a PUT) happens off the
    // request path, once per touch_interval.
    assert_eq!(
        up.calls.blob_gets.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // And a manifest by digest: the grant names its media type.
    tokio::time::sleep(Duration::from_millis(200)).await;
    objects.take();
    let m = b
        .manifest(
            &n("library/app"),
            &Reference::Digest(image.manifest.clone()),
            &Accept::any(),
        )
        .await
        .unwrap();
    assert!(m.bytes == image.manifest_bytes);
    assert_eq!(m.media_type, cache_core::media_types::OCI_MANIFEST);
    let log = objects.take();
    let manifest_path = format!("cache/blobs/sha256/{}", image.manifest.hex());
    let meta = before_data(&log, &manifest_path);
    assert!(
        meta.len() <= 1,
        "metadata requests before the manifest: {meta:?}"
    );
    let total: Vec<_> = log.iter().filter(|l| !l.contains("/access/")).collect();
    assert!(total.len() <= 2, "one grant and one read in all: {total:?}");
}
