//! `FetchPolicy::StoreOnly` (a server's `pull-cached`): a caller that may
//! read only what the store holds, against an upstream that counts every
//! request it gets.

use std::sync::Arc;
use std::time::Duration;

use cache_core::testing::{FakeUpstream, ManualClock, content};
use cache_core::{
    Accept, BlobStore, CacheOptions, CacheStatus, Caller, Clock, ErrorCode, FetchPolicy,
    PullThroughCache, Reference, RepoName, RulePolicy, RuleSet, RuleSpec, Tag, TagFreshness,
    TagPage,
};
use cache_store::{MemoryStore, TokioRuntime};
use futures::StreamExt;

fn n(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

fn cached_only() -> Caller {
    Caller::principal("anonymous", FetchPolicy::StoreOnly)
}

struct Env {
    cache: PullThroughCache,
    up: Arc<FakeUpstream>,
    clock: ManualClock,
}

fn env(freshness: TagFreshness) -> Env {
    let clock = ManualClock::new();
    let up = Arc::new(FakeUpstream::new("up.example", Arc::new(clock.clone())));
    let rules = RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")]).unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    let policy = RulePolicy {
        tag_freshness: freshness,
        ..RulePolicy::default()
    };
    let cache = PullThroughCache::builder()
        .rules(rules)
        .store(store)
        .spawner(TokioRuntime::current())
        .clock(Arc::new(clock.clone()) as Arc<dyn Clock>)
        .upstream("up.example", up.clone())
        .policy("lib", policy)
        .options(CacheOptions {
            retry_backoff: Duration::ZERO,
            // Facts are asked of the store each time: what is read comes from it.
            hot_bytes: 0,
            ..CacheOptions::default()
        })
        .build()
        .unwrap();
    Env { cache, up, clock }
}

async fn body(cache: &PullThroughCache, repo: &str, d: &cache_core::Digest, c: &Caller) -> Vec<u8> {
    let b = cache.blob_for(&n(repo), d, None, c).await.unwrap();
    let mut s = b.body.into_stream();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_only_miss_is_not_found_and_sends_no_request_upstream() {
    let e = env(TagFreshness::Revalidate);
    let img = e.up.push_image(
        &n("library/app"),
        &Tag::parse("v1").unwrap(),
        &[content(1, 5000)],
    );
    let c = cached_only();
    let by_tag = e
        .cache
        .manifest_for(&n("library/app"), &r("v1"), &Accept::any(), &c)
        .await
        .unwrap_err();
    assert_eq!(by_tag.code(), ErrorCode::ManifestUnknown, "{by_tag}");
    assert!(
        by_tag.to_string().contains("may read only cached content"),
        "{by_tag}"
    );
    let by_digest = e
        .cache
        .manifest_for(
            &n("library/app"),
            &Reference::Digest(img.manifest.clone()),
            &Accept::any(),
            &c,
        )
        .await
        .unwrap_err();
    assert_eq!(by_digest.http_status(), 404);
    let layer = &img.layers[0].0;
    let blob = e
        .cache
        .blob_for(&n("library/app"), layer, None, &c)
        .await
        .err()
        .unwrap();
    assert_eq!(blob.code(), ErrorCode::BlobUnknown);
    let head = e
        .cache
        .head_blob_for(&n("library/app"), layer, &c)
        .await
        .unwrap_err();
    assert_eq!(head.code(), ErrorCode::BlobUnknown);
    let tags = e
        .cache
        .tags_for(&n("library/app"), &TagPage::default(), &c)
        .await
        .unwrap();
    assert!(tags.tags.is_empty(), "nothing recorded: {:?}", tags.tags);
    let referrers = e
        .cache
        .referrers_for(&n("library/app"), &img.manifest, None, &c)
        .await
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&referrers.index).unwrap();
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(0));
    assert_eq!(e.up.calls.total(), 0, "the upstream was asked nothing");
    assert_eq!(e.cache.inflight(), 0, "no fetch was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_only_caller_reads_what_a_client_cached_without_asking_the_upstream() {
    let e = env(TagFreshness::Revalidate);
    let img = e.up.push_image(
        &n("library/app"),
        &Tag::parse("v1").unwrap(),
        &[content(2, 300_000)],
    );
    let client = Caller::principal("ci", FetchPolicy::Upstream);
    let name = n("library/app");
    let m = e
        .cache
        .manifest_for(&name, &r("v1"), &Accept::any(), &client)
        .await
        .unwrap();
    assert_eq!(m.status, CacheStatus::Miss);
    let (layer, bytes) = &img.layers[0];
    assert_eq!(
        &body(&e.cache, "library/app", layer, &client).await[..],
        &bytes[..]
    );
    body(&e.cache, "library/app", &img.config, &client).await;
    e.clock.advance(Duration::from_secs(3600));
    let before = e.up.calls.total();

    let c = cached_only();
    // Under `revalidate` a client would HEAD the tag now; this caller takes it as recorded.
    let m = e
        .cache
        .manifest_for(&name, &r("v1"), &Accept::any(), &c)
        .await
        .unwrap();
    assert_eq!(
        (m.digest.clone(), m.status),
        (img.manifest.clone(), CacheStatus::Hit)
    );
    let by_digest = Reference::Digest(img.manifest.clone());
    assert_eq!(
        e.cache
            .manifest_for(&name, &by_digest, &Accept::any(), &c)
            .await
            .unwrap()
            .status,
        CacheStatus::Hit
    );
    assert_eq!(
        &body(&e.cache, "library/app", layer, &c).await[..],
        &bytes[..]
    );
    let ranged = e
        .cache
        .blob_for(
            &name,
            layer,
            Some(cache_core::ByteRange::Inclusive(10, 19)),
            &c,
        )
        .await
        .unwrap();
    assert_eq!(ranged.range, 10..20);
    assert_eq!(
        e.cache.head_blob_for(&name, layer, &c).await.unwrap(),
        (bytes.len() as u64, CacheStatus::Hit)
    );
    let tags = e
        .cache
        .tags_for(&name, &TagPage::default(), &c)
        .await
        .unwrap();
    assert_eq!(tags.tags, vec![Tag::parse("v1").unwrap()]);
    assert_eq!(tags.status, CacheStatus::Hit);
    assert_eq!(e.up.calls.total(), before, "not one request upstream");

    // A client under the same rule does revalidate: the freshness policy still holds for it.
    e.cache
        .manifest_for(&name, &r("v1"), &Accept::any(), &client)
        .await
        .unwrap();
    assert_eq!(e.up.calls.total(), before + 1, "the client's HEAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_cached_through_another_repository_is_not_cached_for_a_store_only_caller() {
    let e = env(TagFreshness::Pinned);
    let shared = content(3, 4000);
    let a = e.up.push_image(
        &n("library/a"),
        &Tag::parse("v1").unwrap(),
        std::slice::from_ref(&shared),
    );
    e.up.push_image(&n("library/b"), &Tag::parse("v1").unwrap(), &[shared]);
    let client = Caller::Client;
    e.cache
        .manifest_for(&n("library/a"), &r("v1"), &Accept::any(), &client)
        .await
        .unwrap();
    body(&e.cache, "library/a", &a.layers[0].0, &client).await;
    let before = e.up.calls.total();
    // Stored, but library/b's upstream never vouched for it: only a request could say.
    let refused = e
        .cache
        .blob_for(&n("library/b"), &a.layers[0].0, None, &cached_only())
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), ErrorCode::BlobUnknown);
    let refused = e
        .cache
        .manifest_for(
            &n("library/b"),
            &Reference::Digest(a.manifest.clone()),
            &Accept::any(),
            &cached_only(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::ManifestUnknown);
    assert_eq!(e.up.calls.total(), before, "no HEAD to vouch for it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_only_caller_joins_no_fetch_in_flight_and_leaves_it_running() {
    let e = env(TagFreshness::Pinned);
    let img = e.up.push_image(
        &n("library/app"),
        &Tag::parse("v1").unwrap(),
        &[content(4, 1_000_000)],
    );
    let name = n("library/app");
    e.cache
        .manifest(&name, &r("v1"), &Accept::any())
        .await
        .unwrap();
    e.up.set_drip(Some((64 * 1024, Duration::from_millis(20))));
    let layer = img.layers[0].0.clone();
    let first = e.cache.blob(&name, &layer, None).await.unwrap();
    assert_eq!(first.status, CacheStatus::Miss);
    assert_eq!(e.cache.inflight(), 1);
    let refused = e
        .cache
        .blob_for(&name, &layer, None, &cached_only())
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), ErrorCode::BlobUnknown);
    // The client's transfer is whole.
    let mut s = first.body.into_stream();
    let mut got = 0;
    let drive = async {
        while let Some(c) = s.next().await {
            got += c.unwrap().len();
        }
    };
    // The drips sleep on the manual clock: advance it while reading.
    let clock = e.clock.clone();
    let ticking = async move {
        loop {
            clock.advance(Duration::from_millis(20));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::select! { _ = drive => {}, _ = ticking => unreachable!() }
    assert_eq!(got, 1_000_000);
    assert_eq!(
        e.up.calls
            .blob_gets
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_only_tag_lists_page_through_the_recorded_tags() {
    let e = env(TagFreshness::Pinned);
    let name = n("library/app");
    for t in ["b", "a", "c"] {
        e.up.push_image(&name, &Tag::parse(t).unwrap(), &[content(5, 100)]);
        e.cache
            .manifest(&name, &r(t), &Accept::any())
            .await
            .unwrap();
    }
    let before = e.up.calls.total();
    let page = TagPage {
        limit: Some(1),
        last: Some(Tag::parse("a").unwrap()),
    };
    let listed = e
        .cache
        .tags_for(&name, &page, &cached_only())
        .await
        .unwrap();
    assert_eq!(listed.tags, vec![Tag::parse("b").unwrap()]);
    assert_eq!(e.up.calls.total(), before);
    // A client asks the upstream.
    e.cache.tags(&name, &TagPage::default()).await.unwrap();
    assert_eq!(e.up.calls.total(), before + 1);
}
