//! The web console's pages at scale, timed as the server spends them (the
//! console's router through tower's `oneshot`: engine reads and rendering,
//! no socket): 100,000 rules, 100,000 cached tags on an `FsStore`, one
//! repository of 10,000 tags. The target is the first page of that
//! repository's tags in under 200 ms.
//!
//! The store is filled through the engine itself (manifest pulls by tag
//! from an in-process upstream; `fsync` off while filling), so every
//! record the pages read is the one a pull writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use benches::rule_specs;
use cache_core::console::Console;
use cache_core::testing::FakeUpstream;
use cache_core::{
    Accept, BlobStore, Clock, PullThroughCache, Reference, RepoName, RuleSet, RuleSpec, Tag,
};
use cache_store::{FsStore, FsStoreOptions, TokioRuntime};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use tower::ServiceExt;

/// Tags in the one large repository.
const BIG_TAGS: usize = 10_000;
/// Other repositories, and tags in each: 90,000 more tags.
const REPOS: usize = 900;
const TAGS_EACH: usize = 100;
/// Rules in all.
const RULES: usize = 100_000;
/// Rows per page, the console's default.
const PAGE: usize = 50;

fn n(s: &str) -> RepoName {
    RepoName::parse(s).expect("static name")
}

fn t(s: &str) -> Tag {
    Tag::parse(s).expect("static tag")
}

/// 100,000 rules: the one the cached repositories come through, and the
/// rest shaped like a large organisation's configuration.
fn rules() -> Arc<RuleSet> {
    let mut specs = vec![RuleSpec::new("bench", "fake.example/bench/*", "bench/*")];
    specs.extend(rule_specs(RULES - 1));
    Arc::new(RuleSet::new(&specs).expect("valid rules"))
}

fn engine(
    rt: &tokio::runtime::Runtime,
    rules: Arc<RuleSet>,
    store: Arc<dyn BlobStore>,
    up: Arc<FakeUpstream>,
) -> PullThroughCache {
    let mut b = PullThroughCache::builder()
        .rules(rules)
        .store(store)
        .runtime(TokioRuntime::with_handle(rt.handle().clone()));
    // rule_specs spreads its rules over these registries; nothing here
    // asks them anything.
    for reg in [
        "fake.example",
        "docker.io",
        "ghcr.io",
        "quay.io",
        "registry.example.com:5000",
    ] {
        b = b.upstream(reg, up.clone());
    }
    b.build().expect("every rule has its upstream")
}

/// Pulls every tag of `tags` in `repo` through `cache`, 64 at a time.
async fn pull_all(cache: &PullThroughCache, repo: &RepoName, tags: Vec<Tag>) {
    let any = Accept::any();
    futures::stream::iter(tags)
        .map(|tag| {
            let any = &any;
            async move {
                cache
                    .manifest(repo, &Reference::Tag(tag), any)
                    .await
                    .expect("a manifest pull")
            }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
}

/// A page's status and size, asserting it rendered and shows `expect`.
async fn get(router: &axum::Router, uri: &str, expect: &str) -> usize {
    let resp = router
        .clone()
        .oneshot(
            http::Request::get(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(resp.status(), 200, "{uri}");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 26)
        .await
        .expect("body");
    let text = std::str::from_utf8(&body).expect("utf-8");
    assert!(text.contains(expect), "{uri}: no {expect:?}");
    body.len()
}

fn console_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = rt
        .block_on(FsStore::open_with(
            dir.path(),
            FsStoreOptions { fsync: false },
        ))
        .expect("store");
    let store: Arc<dyn BlobStore> = Arc::new(store);
    let rules = rules();
    let clock = Arc::new(TokioRuntime::with_handle(rt.handle().clone())) as Arc<dyn Clock>;
    let up = Arc::new(FakeUpstream::new("fake.example", clock));

    // Fill: one image, 10,000 tags of it in bench/big and 100 in each of
    // 900 more repositories; every tag pulled once through the engine.
    let started = Instant::now();
    let cache = rt.block_on(async {
        let cache = engine(&rt, rules.clone(), store.clone(), up.clone());
        let big = n("bench/big");
        let image = up.push_image(&big, &t("t00000"), &[cache_core::testing::content(1, 4096)]);
        let big_tags: Vec<Tag> = (0..BIG_TAGS).map(|i| t(&format!("t{i:05}"))).collect();
        for tag in &big_tags {
            up.retag(&big, tag, &image.manifest);
        }
        pull_all(&cache, &big, big_tags).await;
        for r in 0..REPOS {
            let repo = n(&format!("bench/r{r:03}"));
            up.add_manifest(
                &repo,
                None,
                image.manifest_bytes.clone(),
                cache_core::media_types::OCI_MANIFEST,
            );
            let tags: Vec<Tag> = (0..TAGS_EACH).map(|i| t(&format!("v{i:03}"))).collect();
            for tag in &tags {
                up.retag(&repo, tag, &image.manifest);
            }
            pull_all(&cache, &repo, tags).await;
        }
        cache.flush_pull_stats().await.expect("pull counts written");
        cache
    });
    eprintln!(
        "filled {} tags in {} repositories under {} rules in {:.1} s",
        BIG_TAGS + REPOS * TAGS_EACH,
        REPOS + 1,
        RULES,
        started.elapsed().as_secs_f64()
    );

    let router = Console::new(cache.clone()).page_size(PAGE).router();
    // What each page weighs, for the record.
    let pages: [(&str, &str, &str); 9] = [
        ("overview", "/", "caching rules"),
        ("rules_first_page", "/rules", "exact-0"),
        ("rules_search", "/rules?q=org99997", "ns-99997"),
        (
            "rules_explain",
            "/rules?explain=mirror/org99997/app",
            "ns-99997",
        ),
        ("repositories_first_page", "/repositories", "bench/big"),
        (
            "tags_first_page_of_10000",
            "/repository?name=bench/big",
            "t00049",
        ),
        (
            "tags_search_of_10000",
            "/repository?name=bench/big&q=t0999",
            "t09999",
        ),
        (
            "tags_last_page_of_10000",
            "/repository?name=bench/big&after=t09949",
            "t09999",
        ),
        ("image", "/image?name=bench/big&ref=t05000", "layer(s)"),
    ];
    for (what, uri, expect) in &pages {
        let size = rt.block_on(get(&router, uri, expect));
        eprintln!("{what}: {uri} weighs {:.1} KiB", size as f64 / 1024.0);
    }

    let mut g = c.benchmark_group("console");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    for (what, uri, expect) in pages {
        g.bench_function(what, |b| b.iter(|| rt.block_on(get(&router, uri, expect))));
    }
    // The repository list as a fresh process sees it: the store's keys
    // listed once (100,000 tag records), then kept for 30 s.
    g.sample_size(10);
    g.bench_function("repositories_first_page_listing_the_store", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let fresh = engine(&rt, rules.clone(), store.clone(), up.clone());
                    let router = Console::new(fresh).page_size(PAGE).router();
                    let start = Instant::now();
                    rt.block_on(get(&router, "/repositories", "bench/big"));
                    start.elapsed()
                })
                .sum()
        })
    });
    g.finish();
    drop(router);
    drop(cache);
}

criterion_group!(benches, console_benches);
criterion_main!(benches);
