//! What keeps the cache fresh and complete without a client pull, and what
//! keeps the upstream from being asked in vain: the negative cache, purge,
//! prefetch, scheduled sync and serving what the upstream withdrew, against
//! an in-process upstream that counts its requests, on a manual clock.

use std::sync::Arc;
use std::time::Duration;

use cache_core::events::Counters;
use cache_core::testing::{Calls, FakeUpstream, Fault, ManualClock, content};
use cache_core::{
    Accept, CacheOptions, CacheStatus, Clock, ErrorCode, PullThroughCache, Reference, RepoName,
    RulePolicy, RuleSet, RuleSpec, Tag, TagPage,
};
use cache_store::{MemoryStore, TokioRuntime};

fn n(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn t(s: &str) -> Tag {
    Tag::parse(s).unwrap()
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

struct Env {
    cache: PullThroughCache,
    up: Arc<FakeUpstream>,
    store: Arc<MemoryStore>,
    clock: ManualClock,
    counters: Arc<Counters>,
}

fn env(policy: RulePolicy) -> Env {
    let clock = ManualClock::new();
    let up = Arc::new(FakeUpstream::new("up.example", Arc::new(clock.clone())));
    instance(
        policy,
        &up,
        Arc::new(MemoryStore::new()),
        &clock,
        "solo",
        None,
    )
}

/// An engine on `store` and `up`, named `name`, with `hook` if any.
fn instance(
    policy: RulePolicy,
    up: &Arc<FakeUpstream>,
    store: Arc<MemoryStore>,
    clock: &ManualClock,
    name: &str,
    hook: Option<Arc<dyn cache_core::Admission>>,
) -> Env {
    let counters = Arc::new(Counters::default());
    let mut b = PullThroughCache::builder()
        .rules(RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")]).unwrap())
        .store(store.clone())
        .spawner(TokioRuntime::current())
        .clock(clock.clone())
        .upstream("up.example", up.clone())
        .policy("lib", policy)
        .events(counters.clone())
        .options(CacheOptions {
            retry_backoff: Duration::ZERO,
            instance_name: name.to_owned(),
            ..CacheOptions::default()
        });
    if let Some(h) = hook {
        b = b.admission(h);
    }
    Env {
        cache: b.build().unwrap(),
        up: up.clone(),
        store,
        clock: clock.clone(),
        counters,
    }
}

fn gets(up: &FakeUpstream) -> u64 {
    Calls::get(&up.calls.manifest_gets)
}

#[tokio::test]
async fn a_missing_tag_costs_one_upstream_request_per_negative_ttl() {
    let e = env(RulePolicy::default());
    let (app, missing) = (n("library/app"), r("nope"));
    let any = Accept::any();
    for i in 0..200 {
        let err = e.cache.manifest(&app, &missing, &any).await.unwrap_err();
        assert_eq!(
            (err.code(), err.http_status()),
            (ErrorCode::ManifestUnknown, 404)
        );
        let said = if i == 0 {
            None
        } else {
            Some(CacheStatus::Negative)
        };
        assert_eq!(err.cache_status(), said, "request {i}: {err}");
    }
    assert_eq!(gets(&e.up), 1, "199 answers came from memory");
    assert_eq!(Counters::get(&e.counters.negative), 199);
    // Once negative_ttl (30 s by default) has passed, the upstream is asked again.
    e.clock.advance(Duration::from_secs(31));
    e.cache.manifest(&app, &missing, &any).await.unwrap_err();
    assert_eq!(gets(&e.up), 2);
    // A tag pushed since is found once the entry lapses; another tag was never remembered.
    e.up.push_image(&app, &t("nope"), &[content(1, 100)]);
    e.cache.manifest(&app, &r("other"), &any).await.unwrap_err();
    assert_eq!(gets(&e.up), 3);
    e.clock.advance(Duration::from_secs(31));
    let m = e.cache.manifest(&app, &missing, &any).await.unwrap();
    assert_eq!(m.status, CacheStatus::Miss);
}

#[tokio::test]
async fn negative_ttl_zero_asks_the_upstream_every_time() {
    let e = env(RulePolicy {
        negative_ttl: Duration::ZERO,
        ..RulePolicy::default()
    });
    let any = Accept::any();
    for _ in 0..5 {
        let err = e
            .cache
            .manifest(&n("library/app"), &r("nope"), &any)
            .await
            .unwrap_err();
        assert_eq!(err.cache_status(), None);
    }
    assert_eq!(gets(&e.up), 5);
}

#[tokio::test]
async fn only_not_found_is_remembered_not_an_outage() {
    let e = env(RulePolicy::default());
    let (app, v1) = (n("library/app"), r("v1"));
    e.up.push_image(&app, &t("v1"), &[content(2, 100)]);
    e.up.set_down(true);
    let err = e
        .cache
        .manifest(&app, &v1, &Accept::any())
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 503, "{err}");
    e.up.set_down(false);
    // Asked again at once: a 503 says nothing about whether the tag exists.
    let m = e.cache.manifest(&app, &v1, &Accept::any()).await.unwrap();
    assert_eq!(m.status, CacheStatus::Miss);
}

#[tokio::test]
async fn a_cached_tag_deleted_upstream_is_remembered_as_missing() {
    let e = env(RulePolicy::default());
    let (app, v1) = (n("library/app"), r("v1"));
    e.up.push_image(&app, &t("v1"), &[content(3, 100)]);
    e.cache.manifest(&app, &v1, &Accept::any()).await.unwrap();
    e.clock.advance(Duration::from_secs(2));
    // The next revalidation finds it gone (a 404 to the HEAD).
    e.up.fail_next_manifest(Fault::NotFound);
    let first = e
        .cache
        .manifest(&app, &v1, &Accept::any())
        .await
        .unwrap_err();
    assert_eq!((first.http_status(), first.cache_status()), (404, None));
    let heads = Calls::get(&e.up.calls.manifest_heads);
    for _ in 0..20 {
        let err = e
            .cache
            .manifest(&app, &v1, &Accept::any())
            .await
            .unwrap_err();
        assert_eq!(err.cache_status(), Some(CacheStatus::Negative));
    }
    assert_eq!(Calls::get(&e.up.calls.manifest_heads), heads);
    assert_eq!(gets(&e.up), 1, "only the first pull fetched");
}

#[tokio::test]
async fn a_missing_repository_listing_is_remembered_and_a_listing_that_works_forgets_it() {
    let e = env(RulePolicy::default());
    let ghost = n("library/ghost");
    for i in 0..10 {
        let err = e.cache.tags(&ghost, &TagPage::default()).await.unwrap_err();
        assert_eq!(err.http_status(), 404);
        assert_eq!(err.cache_status().is_some(), i > 0);
    }
    assert_eq!(Calls::get(&e.up.calls.tag_lists), 1);
    e.up.push_image(&ghost, &t("v1"), &[content(4, 100)]);
    e.clock.advance(Duration::from_secs(30));
    let list = e.cache.tags(&ghost, &TagPage::default()).await.unwrap();
    assert_eq!(list.tags, vec![t("v1")]);
    let _ = (&e.store, e.clock.now());
}

/// `repo:tag` with these layers, pushed and pulled whole through the cache.
async fn cached_image(
    e: &Env,
    repo: &str,
    tag: &str,
    layers: &[bytes::Bytes],
) -> cache_core::testing::PushedImage {
    let img = e.up.push_image(&n(repo), &t(tag), layers);
    e.cache.pull_image(&n(repo), &r(tag), &[], 4).await.unwrap();
    img
}

async fn stored(e: &Env, d: &cache_core::Digest) -> bool {
    use cache_core::BlobStore;
    e.store.stat(d).await.unwrap().is_some()
}

#[tokio::test]
async fn purging_a_tag_makes_its_next_pull_a_miss_and_gc_takes_only_what_nothing_else_holds() {
    let e = env(RulePolicy::default());
    let (l1, l2, l3, l4) = (
        content(11, 500),
        content(12, 500),
        content(13, 500),
        content(14, 500),
    );
    let v1 = cached_image(
        &e,
        "library/app",
        "v1",
        &[l1.clone(), l2.clone(), l4.clone()],
    )
    .await;
    let v2 = cached_image(&e, "library/app", "v2", &[l2.clone(), l3.clone()]).await;
    let other = cached_image(&e, "library/other", "v1", std::slice::from_ref(&l1)).await;
    let report = e
        .cache
        .purge(&n("library/app"), Some(&r("v1")))
        .await
        .unwrap();
    // The tag, its manifest, its config, l1 and l4 (l2 stays with v2).
    assert_eq!(
        (report.tags, report.manifests, report.grants),
        (1, 1, 4),
        "{report:?}"
    );
    let gc = e.cache.gc(None).await.unwrap();
    // l1 stays for library/other.
    assert_eq!(gc.purged, 3, "{gc:?}");
    assert!(!stored(&e, &v1.manifest).await && !stored(&e, &v1.config).await);
    assert!(!stored(&e, &v1.layers[2].0).await, "l4 was only v1's");
    for d in [
        &v1.layers[0].0,
        &v1.layers[1].0,
        &v2.manifest,
        &other.manifest,
    ] {
        assert!(stored(&e, d).await, "{d} is still held");
    }
    // What stays is served without the upstream.
    let (gets_before, blobs_before) = (gets(&e.up), Calls::get(&e.up.calls.blob_gets));
    e.cache
        .pull_image(&n("library/app"), &r("v2"), &[], 4)
        .await
        .unwrap();
    e.cache
        .pull_image(&n("library/other"), &r("v1"), &[], 4)
        .await
        .unwrap();
    assert_eq!(gets(&e.up), gets_before, "no manifest fetched again");
    assert_eq!(
        Calls::get(&e.up.calls.blob_gets),
        blobs_before,
        "no blob fetched again"
    );
    // The purged tag is a miss, and what gc took is fetched again.
    let gets_before = gets(&e.up);
    let blobs_before = Calls::get(&e.up.calls.blob_gets);
    let m = e
        .cache
        .manifest(&n("library/app"), &r("v1"), &Accept::any())
        .await
        .unwrap();
    assert_eq!(m.status, CacheStatus::Miss);
    assert_eq!(gets(&e.up), gets_before + 1);
    e.cache
        .pull_image(&n("library/app"), &r("v1"), &[], 4)
        .await
        .unwrap();
    assert_eq!(
        Calls::get(&e.up.calls.blob_gets),
        blobs_before + 2,
        "config and l4"
    );
}

#[tokio::test]
async fn purging_a_repository_drops_every_record_of_it_and_only_it() {
    let e = env(RulePolicy::default());
    let shared = content(21, 700);
    let app = cached_image(&e, "library/app", "v1", &[shared.clone(), content(22, 700)]).await;
    cached_image(&e, "library/app", "v2", &[content(23, 700)]).await;
    let nested = cached_image(&e, "library/app/sub", "v1", std::slice::from_ref(&shared)).await;
    // A client's pull of each is counted (a warm is not); written, each
    // repository has its record.
    for repo in ["library/app", "library/app/sub"] {
        e.cache
            .manifest(&n(repo), &r("v1"), &Accept::any())
            .await
            .unwrap();
    }
    e.cache.flush_pull_stats().await.unwrap();
    let pulls = |r: &str| {
        let (store, key) = (e.cache.store().clone(), cache_core::keys::repo_pulls(&n(r)));
        async move { store.get_meta(&key).await.unwrap().is_some() }
    };
    assert!(pulls("library/app").await && pulls("library/app/sub").await);
    let report = e.cache.purge(&n("library/app"), None).await.unwrap();
    assert_eq!((report.tags, report.manifests), (2, 2), "{report:?}");
    assert!(!pulls("library/app").await, "its pull counts go with it");
    assert!(
        pulls("library/app/sub").await,
        "the nested repository's stay"
    );
    let gc = e.cache.gc(None).await.unwrap();
    assert_eq!(
        gc.purged, 5,
        "two manifests, two configs, one layer: {gc:?}"
    );
    assert!(
        stored(&e, &app.layers[0].0).await,
        "the nested repository holds it"
    );
    assert!(stored(&e, &nested.manifest).await);
    let list = e.cache.catalog(None, None).await.unwrap();
    assert_eq!(list.repositories, vec![n("library/app/sub")]);
    // A second gc has nothing left to do.
    assert_eq!(e.cache.gc(None).await.unwrap().purged, 0);
}

#[tokio::test]
async fn purging_an_index_drops_its_platform_manifests_unless_pulled_on_their_own() {
    let e = env(RulePolicy::default());
    let app = n("library/app");
    let (a, b) = (
        e.up.push_image(&app, &t("amd"), &[content(41, 300)]),
        e.up.push_image(&app, &t("arm"), &[content(42, 300)]),
    );
    let entry = |m: &cache_core::testing::PushedImage, arch: &str| {
        format!(
            r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
            cache_core::media_types::OCI_MANIFEST,
            m.manifest,
            m.manifest_bytes.len()
        )
    };
    let index = bytes::Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{},{}]}}"#,
        cache_core::media_types::OCI_INDEX,
        entry(&a, "amd64"),
        entry(&b, "arm64")
    ));
    let i = e.up.add_manifest(
        &app,
        Some(&t("multi")),
        index,
        cache_core::media_types::OCI_INDEX,
    );
    e.cache.pull_image(&app, &r("multi"), &[], 4).await.unwrap();
    // The arm64 image was also pulled on its own, by its tag.
    e.cache.pull_image(&app, &r("arm"), &[], 4).await.unwrap();
    let report = e
        .cache
        .purge(&app, Some(&Reference::Digest(i.clone())))
        .await
        .unwrap();
    // The index and the amd64 image (manifest, layer; its config is the
    // same as arm64's, which stays).
    assert_eq!(
        (report.tags, report.manifests, report.grants),
        (1, 2, 3),
        "{report:?}"
    );
    assert_eq!(e.cache.gc(None).await.unwrap().purged, 3);
    assert!(stored(&e, &b.manifest).await && stored(&e, &b.layers[0].0).await);
    assert!(!stored(&e, &a.manifest).await && !stored(&e, &a.layers[0].0).await);
}

#[tokio::test]
async fn purging_a_manifest_drops_the_tags_naming_it() {
    let e = env(RulePolicy::default());
    let img = cached_image(&e, "library/app", "v1", &[content(31, 300)]).await;
    e.up.retag(&n("library/app"), &t("latest"), &img.manifest);
    e.cache
        .manifest(&n("library/app"), &r("latest"), &Accept::any())
        .await
        .unwrap();
    let d = Reference::Digest(img.manifest.clone());
    let report = e.cache.purge(&n("library/app"), Some(&d)).await.unwrap();
    assert_eq!(
        (report.tags, report.manifests, report.grants),
        (2, 1, 3),
        "{report:?}"
    );
    // Nothing held: a purge of something not cached is no error.
    let again = e.cache.purge(&n("library/app"), Some(&d)).await.unwrap();
    assert_eq!(again, cache_core::PurgeReport::default());
    assert_eq!(e.cache.gc(None).await.unwrap().purged, 3);
}

/// Waits (in real time, at most 10 s) until no prefetch runs.
async fn prefetches_done(cache: &PullThroughCache) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while cache.prefetching() > 0 {
        assert!(std::time::Instant::now() < end, "prefetches still running");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A two-platform index of two one-layer images, tagged `tag`.
fn push_index(
    e: &Env,
    repo: &str,
    tag: &str,
    seed: u64,
) -> (cache_core::Digest, Vec<cache_core::testing::PushedImage>) {
    let repo = n(repo);
    let images: Vec<_> = (0..2u64)
        .map(|i| {
            let layers = [
                content(seed * 10 + i, 2_000),
                content(seed * 10 + 5 + i, 3_000 + i as usize),
            ];
            e.up.push_image(&repo, &t(&format!("{tag}-p{i}")), &layers)
        })
        .collect();
    let entries: Vec<String> = images
        .iter()
        .zip(["amd64", "arm64"])
        .map(|(m, arch)| {
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
                cache_core::media_types::OCI_MANIFEST,
                m.manifest,
                m.manifest_bytes.len()
            )
        })
        .collect();
    let index = bytes::Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
        cache_core::media_types::OCI_INDEX,
        entries.join(",")
    ));
    let d = e.up.add_manifest(
        &repo,
        Some(&t(tag)),
        index,
        cache_core::media_types::OCI_INDEX,
    );
    (d, images)
}

#[tokio::test]
async fn prefetch_image_after_an_index_fetches_every_platform_then_serves_them_with_the_upstream_down()
 {
    let e = env(RulePolicy {
        prefetch: cache_core::Prefetch::Image,
        ..RulePolicy::default()
    });
    let (index, images) = push_index(&e, "library/multi", "v1", 5);
    let app = n("library/multi");
    // Only the index, by digest.
    let m = e
        .cache
        .manifest(&app, &Reference::Digest(index.clone()), &Accept::any())
        .await
        .unwrap();
    assert_eq!(m.status, CacheStatus::Miss);
    prefetches_done(&e.cache).await;
    // Two platform manifests; a config (the same for both) and four layers.
    assert_eq!(gets(&e.up), 3);
    assert_eq!(Calls::get(&e.up.calls.blob_gets), 5);
    e.up.set_down(true);
    for img in &images {
        let report = e
            .cache
            .pull_image(&app, &Reference::Digest(img.manifest.clone()), &[], 4)
            .await
            .unwrap();
        assert_eq!(report.blobs, 3);
    }
    assert_eq!(e.up.calls.total(), 8, "all of it from the cache");
    // Served again: no second prefetch, nothing asked.
    e.up.set_down(false);
    e.cache
        .manifest(&app, &Reference::Digest(index), &Accept::any())
        .await
        .unwrap();
    prefetches_done(&e.cache).await;
    assert_eq!(e.up.calls.total(), 8);
}

#[tokio::test]
async fn prefetch_platform_fetches_an_image_s_layers_but_not_an_index_s_platforms() {
    let e = env(RulePolicy {
        prefetch: cache_core::Prefetch::Platform,
        ..RulePolicy::default()
    });
    let (index, images) = push_index(&e, "library/multi", "v1", 6);
    let app = n("library/multi");
    e.cache
        .manifest(&app, &Reference::Digest(index), &Accept::any())
        .await
        .unwrap();
    prefetches_done(&e.cache).await;
    assert_eq!(e.up.calls.total(), 1, "an index alone starts nothing");
    e.cache
        .manifest(
            &app,
            &Reference::Digest(images[1].manifest.clone()),
            &Accept::any(),
        )
        .await
        .unwrap();
    prefetches_done(&e.cache).await;
    assert_eq!(
        Calls::get(&e.up.calls.blob_gets),
        3,
        "its config and two layers"
    );
    for (d, _) in &images[1].layers {
        let b = e.cache.blob(&app, d, None).await.unwrap();
        assert_eq!(b.status, CacheStatus::Hit);
    }
}

#[tokio::test]
async fn an_identified_caller_that_may_fetch_starts_a_prefetch_and_one_that_reads_the_store_only_does_not()
 {
    use cache_core::{Caller, FetchPolicy};
    let e = env(RulePolicy {
        prefetch: cache_core::Prefetch::Platform,
        ..RulePolicy::default()
    });
    let (_, images) = push_index(&e, "library/multi", "v1", 8);
    let app = n("library/multi");
    let by_digest = |i: usize| Reference::Digest(images[i].manifest.clone());
    // Platform 0 is cached by a client, without its layers.
    e.cache
        .manifest(&app, &by_digest(0), &Accept::any())
        .await
        .unwrap();
    prefetches_done(&e.cache).await;
    let after_client = Calls::get(&e.up.calls.blob_gets);
    assert_eq!(after_client, 3, "a client's pull prefetches");
    // Platform 1, first by a principal that may only read what is cached:
    // refused (not cached) and nothing fetched.
    let cached_only = Caller::principal("anonymous", FetchPolicy::StoreOnly);
    assert!(
        e.cache
            .manifest_for(&app, &by_digest(1), &Accept::any(), &cached_only)
            .await
            .is_err()
    );
    // Then by a principal with `pull`: served, and its layers prefetched.
    let ci = Caller::principal("ci", FetchPolicy::Upstream);
    e.cache
        .manifest_for(&app, &by_digest(1), &Accept::any(), &ci)
        .await
        .unwrap();
    prefetches_done(&e.cache).await;
    assert_eq!(
        Calls::get(&e.up.calls.blob_gets),
        after_client + 2,
        "a principal that may fetch prefetches like a client (two layers; the config is shared)"
    );
}

#[tokio::test]
async fn without_prefetch_a_served_manifest_fetches_nothing_more() {
    let e = env(RulePolicy::default());
    let (index, _) = push_index(&e, "library/multi", "v1", 7);
    e.cache
        .manifest(
            &n("library/multi"),
            &Reference::Digest(index),
            &Accept::any(),
        )
        .await
        .unwrap();
    prefetches_done(&e.cache).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(e.up.calls.total(), 1);
}

/// A sync policy: every `interval`, the tags in `range`, of `repos`.
fn syncing(interval: u64, range: &str, repos: &[&str]) -> RulePolicy {
    let mut p = cache_core::policy::SyncPolicy::new(Duration::from_secs(interval));
    p.semver = Some(cache_core::policy::VersionReq::parse(range).unwrap());
    p.repositories = repos.iter().map(|r| n(r)).collect();
    RulePolicy {
        sync: Some(Arc::new(p)),
        ..RulePolicy::default()
    }
}

/// Pushes v1.0.0, v1.1.0, v2.0.0 and latest to `repo`, each its own image.
fn push_releases(up: &FakeUpstream, repo: &str) -> Vec<cache_core::testing::PushedImage> {
    ["v1.0.0", "v1.1.0", "v2.0.0", "latest"]
        .iter()
        .enumerate()
        .map(|(i, tag)| up.push_image(&n(repo), &t(tag), &[content(100 + i as u64, 1_000)]))
        .collect()
}

/// Waits in real time (at most 10 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < end, "waited 10 s for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_sync_caches_exactly_the_tags_its_range_selects_without_a_client_pull() {
    let e = env(syncing(600, ">=1, <2", &["library/app"]));
    let images = push_releases(&e.up, "library/app");
    let report = e.cache.sync("lib").await.unwrap();
    assert_eq!(
        (
            report.repositories,
            report.tags_listed,
            report.tags_seen,
            report.tags_new
        ),
        (1, 4, 2, 2),
        "{report:?}"
    );
    // Two manifests, and each image's config and layer (the configs are alike).
    assert_eq!(
        (report.manifests, report.blobs, report.errors),
        (2, 3, 0),
        "{report:?}"
    );
    assert_eq!(gets(&e.up), 2);
    for (i, img) in images.iter().enumerate() {
        assert_eq!(stored(&e, &img.manifest).await, i < 2, "image {i}");
        assert_eq!(
            stored(&e, &img.layers[0].0).await,
            i < 2,
            "image {i}'s layer"
        );
    }
    // With the upstream down, the synced tags pull whole from the cache.
    e.up.set_down(true);
    for tag in ["v1.0.0", "v1.1.0"] {
        e.cache
            .pull_image(&n("library/app"), &r(tag), &[], 4)
            .await
            .unwrap();
    }
    e.cache
        .pull_image(&n("library/app"), &r("v2.0.0"), &[], 4)
        .await
        .unwrap_err();
    // A second run finds nothing new, and fetches no blob again.
    e.up.set_down(false);
    let blobs = Calls::get(&e.up.calls.blob_gets);
    let again = e.cache.sync("lib").await.unwrap();
    assert_eq!(
        (again.tags_seen, again.tags_new, again.blobs),
        (2, 0, 0),
        "{again:?}"
    );
    assert_eq!(Calls::get(&e.up.calls.blob_gets), blobs);
    assert_eq!(Counters::get(&e.counters.sync_runs), 2);
}

#[tokio::test]
async fn a_wildcard_rule_without_repositories_syncs_what_the_upstream_catalog_lists() {
    let e = env(syncing(600, ">=1", &[]));
    push_releases(&e.up, "library/app");
    push_releases(&e.up, "library/db");
    e.up.push_image(&n("other/x"), &t("v1"), &[content(9, 10)]);
    let report = e.cache.sync("lib").await.unwrap();
    assert_eq!((report.repositories, report.tags_new), (2, 6), "{report:?}");
    assert_eq!(Calls::get(&e.up.calls.manifest_gets), 6);
}

#[tokio::test]
async fn the_scheduler_runs_each_interval_on_the_engine_clock_and_picks_up_a_new_release() {
    let e = env(syncing(60, ">=1, <2", &["library/app"]));
    push_releases(&e.up, "library/app");
    e.cache.start_sync();
    e.cache.start_sync(); // once is enough
    let runs = |e: &Env| Counters::get(&e.counters.sync_runs);
    // The first run comes within the first interval (spread), not before.
    e.clock.until_sleeps(|s| !s.is_empty()).await;
    assert_eq!(runs(&e), 0);
    e.clock.advance(Duration::from_secs(61));
    until("the first run", || runs(&e) == 1).await;
    assert_eq!(Counters::get(&e.counters.sync_tags_new), 2);
    // A release pushed meanwhile is cached by the next run.
    let v12 =
        e.up.push_image(&n("library/app"), &t("v1.2.0"), &[content(200, 500)]);
    e.clock.advance(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(runs(&e), 1, "not before its interval");
    e.clock.advance(Duration::from_secs(37));
    until("the second run", || runs(&e) == 2).await;
    assert!(stored(&e, &v12.manifest).await && stored(&e, &v12.layers[0].0).await);
    assert_eq!(Counters::get(&e.counters.sync_tags_new), 3);
}

#[tokio::test]
async fn a_sync_never_caches_what_admission_refuses() {
    let clock = ManualClock::new();
    let up = Arc::new(FakeUpstream::new("up.example", Arc::new(clock.clone())));
    let small = Arc::new(cache_core::MaxImageSize::new(2_000));
    let e = instance(
        syncing(600, ">=1", &["library/app"]),
        &up,
        Arc::new(MemoryStore::new()),
        &clock,
        "solo",
        Some(small),
    );
    let ok = up.push_image(&n("library/app"), &t("v1.0.0"), &[content(1, 500)]);
    let big = up.push_image(&n("library/app"), &t("v1.1.0"), &[content(2, 5_000)]);
    let report = e.cache.sync("lib").await.unwrap();
    assert_eq!(
        (report.tags_seen, report.tags_new, report.errors),
        (2, 1, 1),
        "{report:?}"
    );
    assert!(report.error_messages[0].contains("denied"), "{report:?}");
    assert!(stored(&e, &ok.manifest).await);
    assert!(!stored(&e, &big.manifest).await, "refused, never stored");
    assert!(!stored(&e, &big.layers[0].0).await, "nor its layer");
}

#[tokio::test]
async fn a_sync_stops_at_the_upstream_rate_limit_and_keeps_pinned_tags_where_they_are() {
    let e = env(RulePolicy {
        tag_freshness: cache_core::TagFreshness::Pinned,
        ..syncing(600, ">=1", &["library/app"])
    });
    let images = push_releases(&e.up, "library/app");
    e.cache
        .manifest(&n("library/app"), &r("v1.0.0"), &Accept::any())
        .await
        .unwrap();
    // v2.0.0 is asked first (newest), and the upstream says stop.
    e.up.fail_next_manifest(Fault::TooManyRequests);
    let report = e.cache.sync("lib").await.unwrap();
    assert_eq!(
        (report.errors, report.tags_new, report.repositories),
        (1, 0, 1),
        "listed, then stopped: {report:?}"
    );
    assert!(!stored(&e, &images[1].manifest).await, "the run stopped");
    // Moved upstream, a pinned tag stays as cached; the others come.
    e.up.retag(&n("library/app"), &t("v1.0.0"), &images[2].manifest);
    let report = e.cache.sync("lib").await.unwrap();
    assert_eq!((report.errors, report.tags_new), (0, 2), "{report:?}");
    let m = e
        .cache
        .manifest(&n("library/app"), &r("v1.0.0"), &Accept::any())
        .await
        .unwrap();
    assert_eq!(m.digest, images[0].manifest);
}

#[tokio::test]
async fn three_instances_on_one_shared_store_make_one_run_per_interval_in_all() {
    let clock = ManualClock::new();
    let up = Arc::new(FakeUpstream::new("up.example", Arc::new(clock.clone())));
    push_releases(&up, "library/app");
    let store = Arc::new(MemoryStore::new().as_shared());
    let all: Vec<Env> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            instance(
                syncing(60, ">=1", &["library/app"]),
                &up,
                store.clone(),
                &clock,
                name,
                None,
            )
        })
        .collect();
    for e in &all {
        e.cache.start_sync();
    }
    clock.until_sleeps(|s| s.len() >= 3).await;
    let runs = || {
        all.iter()
            .map(|e| Counters::get(&e.counters.sync_runs))
            .sum::<u64>()
    };
    // Small steps, so every instance's scheduler looks often; runs start
    // at least an interval (60 s) apart, whichever instance runs them.
    let mut elapsed = 0;
    for _ in 0..80 {
        clock.advance(Duration::from_secs(9));
        elapsed += 9;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let done = runs();
        assert!(done <= elapsed / 60 + 1, "{done} runs in {elapsed} s");
    }
    assert!(runs() >= 8, "it ran: {}", runs());
    let by: Vec<u64> = all
        .iter()
        .map(|e| Counters::get(&e.counters.sync_runs))
        .collect();
    assert_eq!(by.iter().sum::<u64>(), runs(), "{by:?}");
}

#[tokio::test]
async fn a_sync_of_a_rule_without_one_or_of_no_rule_is_an_error_naming_it() {
    let e = env(RulePolicy::default());
    let err = e.cache.sync("lib").await.unwrap_err();
    assert!(
        err.to_string().contains("\"lib\"") && err.to_string().contains("no sync"),
        "{err}"
    );
    let err = e.cache.sync("nope").await.unwrap_err();
    assert!(err.to_string().contains("\"nope\""), "{err}");
}

/// Denies every manifest while `deny` is set.
#[derive(Debug, Default)]
struct Toggle {
    deny: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl cache_core::Admission for Toggle {
    async fn admit(
        &self,
        _: &cache_core::AdmissionRequest<'_>,
    ) -> cache_core::Result<cache_core::Verdict> {
        if self.deny.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(cache_core::Error::denied("the policy changed its mind"));
        }
        Ok(cache_core::Verdict::Pass)
    }
}

#[tokio::test]
async fn a_withdrawn_tag_is_served_stale_for_serve_withdrawn_then_not_and_never_against_policy() {
    let clock = ManualClock::new();
    let up = Arc::new(FakeUpstream::new("up.example", Arc::new(clock.clone())));
    let toggle = Arc::new(Toggle::default());
    let e = instance(
        RulePolicy {
            serve_withdrawn: Some(Duration::from_secs(3600)),
            ..RulePolicy::default()
        },
        &up,
        Arc::new(MemoryStore::new()),
        &clock,
        "solo",
        Some(toggle.clone()),
    );
    let (app, v1) = (n("library/app"), r("v1"));
    let img = up.push_image(&app, &t("v1"), &[content(1, 100)]);
    e.cache.manifest(&app, &v1, &Accept::any()).await.unwrap();
    up.untag(&app, &t("v1"));
    clock.advance(Duration::from_secs(2));
    // Served, from the first refusal on, for an hour.
    for _ in 0..3 {
        let m = e.cache.manifest(&app, &v1, &Accept::any()).await.unwrap();
        assert_eq!((m.status, &m.digest), (CacheStatus::Stale, &img.manifest));
    }
    assert_eq!(Counters::get(&e.counters.withdrawn_served), 3);
    assert_eq!(
        Calls::get(&up.calls.manifest_heads),
        1,
        "the rest remembered as gone"
    );
    // A policy that now refuses it wins.
    toggle.deny.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = e
        .cache
        .manifest(&app, &v1, &Accept::any())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Denied, "{err}");
    toggle
        .deny
        .store(false, std::sync::atomic::Ordering::SeqCst);
    clock.advance(Duration::from_secs(1800));
    assert_eq!(
        e.cache
            .manifest(&app, &v1, &Accept::any())
            .await
            .unwrap()
            .status,
        CacheStatus::Stale
    );
    // Past the hour from the first refusal: the upstream's 404.
    clock.advance(Duration::from_secs(1801));
    let err = e
        .cache
        .manifest(&app, &v1, &Accept::any())
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 404);
    // Back upstream: served and confirmed, no longer withdrawn.
    up.retag(&app, &t("v1"), &img.manifest);
    clock.advance(Duration::from_secs(31));
    let m = e.cache.manifest(&app, &v1, &Accept::any()).await.unwrap();
    assert_eq!(m.status, CacheStatus::Revalidated);
    up.untag(&app, &t("v1"));
    clock.advance(Duration::from_secs(2));
    let m = e.cache.manifest(&app, &v1, &Accept::any()).await.unwrap();
    assert_eq!(
        m.status,
        CacheStatus::Stale,
        "a new refusal starts a new window"
    );
}

#[tokio::test]
async fn without_serve_withdrawn_a_deleted_tag_is_404() {
    let e = env(RulePolicy::default());
    let (app, v1) = (n("library/app"), r("v1"));
    e.up.push_image(&app, &t("v1"), &[content(1, 100)]);
    e.cache.manifest(&app, &v1, &Accept::any()).await.unwrap();
    e.up.untag(&app, &t("v1"));
    e.clock.advance(Duration::from_secs(2));
    let err = e
        .cache
        .manifest(&app, &v1, &Accept::any())
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 404);
    assert_eq!(Counters::get(&e.counters.withdrawn_served), 0);
}

#[tokio::test]
async fn a_sync_fetches_only_the_platforms_it_names_of_an_index() {
    let mut p = cache_core::policy::SyncPolicy::new(Duration::from_secs(600));
    p.repositories = vec![n("library/multi")];
    p.tags = Some(cache_core::policy::TagPattern::new("v1").unwrap());
    p.platforms = vec![cache_core::manifest::Platform::parse("linux/arm64").unwrap()];
    let e = env(RulePolicy {
        sync: Some(Arc::new(p)),
        ..RulePolicy::default()
    });
    let (index, images) = push_index(&e, "library/multi", "v1", 8);
    let report = e.cache.sync("lib").await.unwrap();
    // The index, and of it arm64's manifest, config and two layers.
    assert_eq!(
        (
            report.tags_seen,
            report.manifests,
            report.blobs,
            report.errors
        ),
        (1, 2, 3, 0),
        "{report:?}"
    );
    assert!(stored(&e, &index).await && stored(&e, &images[1].manifest).await);
    for (d, _) in &images[1].layers {
        assert!(stored(&e, d).await, "arm64's layer {d}");
    }
    assert!(
        !stored(&e, &images[0].manifest).await,
        "amd64 is not synced"
    );
    assert!(!stored(&e, &images[0].layers[0].0).await);
}

#[tokio::test]
async fn a_sync_policy_a_reload_adds_is_scheduled() {
    let e = env(RulePolicy::default());
    push_releases(&e.up, "library/app");
    e.cache.start_sync();
    e.clock.until_sleeps(|s| !s.is_empty()).await;
    let rules = RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")]).unwrap();
    e.cache
        .reconfigure(
            PullThroughCache::builder()
                .rules(rules)
                .upstream("up.example", e.up.clone())
                .policy("lib", syncing(60, ">=1", &["library/app"])),
        )
        .unwrap();
    assert_eq!(e.cache.synced_rules().len(), 1);
    // The scheduler looks again within ten seconds; the first run comes
    // within the interval after that.
    for _ in 0..10 {
        e.clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until("a run", || Counters::get(&e.counters.sync_runs) >= 1).await;
}
