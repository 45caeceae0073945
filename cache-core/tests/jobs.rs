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
    let store = Arc::new(MemoryStore::new());
    let counters = Arc::new(Counters::default());
    let cache = PullThroughCache::builder()
        .rules(RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")]).unwrap())
        .store(store.clone())
        .spawner(TokioRuntime::current())
        .clock(clock.clone())
        .upstream("up.example", up.clone())
        .policy("lib", policy)
        .events(counters.clone())
        .options(CacheOptions {
            retry_backoff: Duration::ZERO,
            ..CacheOptions::default()
        })
        .build()
        .unwrap();
    Env {
        cache,
        up,
        store,
        clock,
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
