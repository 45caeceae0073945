//! What the engine keeps and tells about what it holds: pull counts, the
//! admission decisions as pulls met them, recent refusals, store use, and
//! the browsing of repositories, tags and images (from the store alone).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::testing::{FakeUpstream, ManualClock, content};
use cache_core::{
    Accept, AdmissionOutcome, BlobStore, Caller, Clock, ManifestView, MaxImageSize,
    PullThroughCache, Reference, RepoName, RuleSet, RuleSpec, Tag, media_types,
};
use cache_store::{MemoryStore, TokioRuntime};

fn n(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

struct Env {
    cache: PullThroughCache,
    up: Arc<FakeUpstream>,
    store: Arc<dyn BlobStore>,
    clock: ManualClock,
}

/// Rules `lib` (library/*) and `small` (small/*, whose images may be at
/// most 1000 bytes: an admission hook that refuses) on one upstream.
fn env_on(store: Arc<dyn BlobStore>) -> Env {
    let clock = ManualClock::new();
    let up = Arc::new(FakeUpstream::new("up.example", Arc::new(clock.clone())));
    let rules = RuleSet::new(&[
        RuleSpec::new("lib", "up.example/library/*", "library/*"),
        RuleSpec::new("small", "up.example/small/*", "small/*"),
    ])
    .unwrap();
    #[derive(Debug)]
    struct OnlySmall(MaxImageSize);
    #[async_trait::async_trait]
    impl cache_core::Admission for OnlySmall {
        async fn admit(
            &self,
            req: &cache_core::AdmissionRequest<'_>,
        ) -> cache_core::Result<cache_core::Verdict> {
            if req.rule.name() == "small" {
                self.0.admit(req).await
            } else {
                Ok(cache_core::Verdict::Pass)
            }
        }
        fn name(&self) -> &str {
            "image size"
        }
    }
    let cache = PullThroughCache::builder()
        .rules(rules)
        .store(store.clone())
        .spawner(TokioRuntime::current())
        .clock(Arc::new(clock.clone()) as Arc<dyn Clock>)
        .upstream("up.example", up.clone())
        .admission(Arc::new(OnlySmall(MaxImageSize::new(1000))))
        .build()
        .unwrap();
    Env {
        cache,
        up,
        store,
        clock,
    }
}

fn env() -> Env {
    env_on(Arc::new(MemoryStore::new()))
}

async fn pull(e: &Env, repo: &str, reference: &str) -> cache_core::Result<()> {
    e.cache
        .manifest(&n(repo), &r(reference), &Accept::any())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_are_counted_in_memory_then_written_and_a_scanner_s_reads_are_not_pulls() {
    let e = env();
    let img = e.up.push_image(
        &n("library/app"),
        &Tag::parse("v1").unwrap(),
        &[content(1, 100)],
    );
    for _ in 0..3 {
        pull(&e, "library/app", "v1").await.unwrap();
    }
    pull(&e, "library/app", img.manifest.as_ref())
        .await
        .unwrap();
    let scanner = Caller::Scanner {
        repository: n("library/app"),
    };
    e.cache
        .manifest_for(&n("library/app"), &r("v1"), &Accept::any(), &scanner)
        .await
        .unwrap();

    let tag = e
        .cache
        .pull_stats(&n("library/app"), &r("v1"))
        .await
        .unwrap();
    assert_eq!(tag.count, 3, "from memory, before any write");
    assert_eq!(tag.last, Some(e.clock.now()));
    let by_digest = e
        .cache
        .pull_stats(&n("library/app"), &Reference::Digest(img.manifest.clone()))
        .await
        .unwrap();
    assert_eq!(by_digest.count, 1);
    let repo = e
        .cache
        .repository_pull_stats(&n("library/app"))
        .await
        .unwrap();
    assert_eq!(repo.count, 4);
    assert_eq!(
        e.store
            .get_meta(&cache_core::keys::tag_pulls(
                &n("library/app"),
                &Tag::parse("v1").unwrap()
            ))
            .await
            .unwrap(),
        None,
        "nothing written yet"
    );

    // The write is due 10 s (on the engine's clock) after the first pull.
    let ten = Duration::from_secs(10);
    tokio::time::timeout(
        Duration::from_secs(5),
        e.clock.until_sleeps(move |s| s.contains(&ten)),
    )
    .await
    .expect("a write is scheduled");
    e.clock.advance(ten);
    let key = cache_core::keys::tag_pulls(&n("library/app"), &Tag::parse("v1").unwrap());
    for _ in 0..500 {
        if e.store.get_meta(&key).await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(e.store.get_meta(&key).await.unwrap().is_some(), "written");
    assert_eq!(
        e.cache
            .pull_stats(&n("library/app"), &r("v1"))
            .await
            .unwrap()
            .count,
        3,
        "counted once, from the store now"
    );

    // Another engine on the same store sees them, and adds to them.
    let again = env_on(e.store.clone());
    again.up.push_image(
        &n("library/app"),
        &Tag::parse("v1").unwrap(),
        &[content(1, 100)],
    );
    pull(&again, "library/app", "v1").await.unwrap();
    again.cache.flush_pull_stats().await.unwrap();
    assert_eq!(
        again
            .cache
            .pull_stats(&n("library/app"), &r("v1"))
            .await
            .unwrap()
            .count,
        4
    );
    assert_eq!(
        again
            .cache
            .repository_pull_stats(&n("library/app"))
            .await
            .unwrap()
            .count,
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_kept_with_its_reason_as_the_pull_met_it_and_listed_among_recent_denials() {
    let e = env();
    let big = e.up.push_image(
        &n("small/big"),
        &Tag::parse("v1").unwrap(),
        &[content(2, 5000)],
    );
    let fine = e.up.push_image(
        &n("small/fine"),
        &Tag::parse("v1").unwrap(),
        &[content(3, 10)],
    );
    for _ in 0..3 {
        let err = pull(&e, "small/big", "v1").await.unwrap_err();
        assert!(err.to_string().contains("exceeds the maximum"), "{err}");
    }
    pull(&e, "small/fine", "v1").await.unwrap();

    let kept = e
        .cache
        .verdicts(&n("small/big"), &big.manifest)
        .await
        .unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].policy, "image size");
    assert_eq!(kept[0].outcome, AdmissionOutcome::Refused);
    assert_eq!(kept[0].rule, "small");
    assert_eq!(kept[0].reference, "v1");
    assert!(
        kept[0].reason.contains("exceeds the maximum of 1000 bytes"),
        "{kept:?}"
    );
    // A hook that passes says nothing, and nothing is kept for it.
    assert!(
        e.cache
            .verdicts(&n("small/fine"), &fine.manifest)
            .await
            .unwrap()
            .is_empty()
    );

    let recent = e.cache.recent_denials();
    assert_eq!(
        recent.len(),
        1,
        "one entry however often it recurs: {recent:?}"
    );
    assert_eq!(recent[0].repository, n("small/big"));
    assert_eq!(recent[0].digest, big.manifest);
    assert_eq!(recent[0].times, 3);

    let refused = e.cache.refused_in(&n("small/big")).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, big.manifest);
    assert!(
        e.cache
            .refused_in(&n("small/fine"))
            .await
            .unwrap()
            .is_empty()
    );

    // The refused image is no content, but its repository is listed, with
    // its decision; and its view has the decision and no manifest.
    let page = e
        .cache
        .browse_repositories("", None, 50, &|_| true)
        .await
        .unwrap();
    let names: Vec<&str> = page.repositories.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["small/big", "small/fine"]);
    assert_eq!(
        (page.repositories[0].tags, page.repositories[0].decided),
        (0, 1)
    );
    let view = e
        .cache
        .image_view(&n("small/big"), &Reference::Digest(big.manifest.clone()))
        .await
        .unwrap();
    assert!(
        view.manifest.is_none(),
        "a refused manifest is never stored"
    );
    assert_eq!(view.verdicts, kept);
    let by_tag = e.cache.image_view(&n("small/big"), &r("v1")).await.unwrap();
    assert_eq!(by_tag.digest, None, "no tag was cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_page_in_order_with_sizes_pulls_and_a_filter() {
    let e = env();
    let repo = n("library/many");
    for i in 0..30u64 {
        let tag = Tag::parse(&format!("v{i:02}")).unwrap();
        e.up.push_image(&repo, &tag, &[content(i, 100 + i as usize)]);
        pull(&e, "library/many", tag.as_str()).await.unwrap();
    }
    pull(&e, "library/many", "v07").await.unwrap();
    let first = e.cache.browse_tags(&repo, "", None, 10).await.unwrap();
    assert_eq!(first.total, 30);
    assert!(first.more);
    let tags: Vec<&str> = first.rows.iter().map(|r| r.tag.as_str()).collect();
    assert_eq!(
        tags,
        (0..10).map(|i| format!("v{i:02}")).collect::<Vec<_>>()
    );
    let seven = &first.rows[7];
    assert_eq!(seven.pulls.count, 2);
    assert_eq!(seven.media_type, media_types::OCI_MANIFEST);
    let view = e.cache.image_view(&repo, &r("v07")).await.unwrap();
    let Some(ManifestView::Image {
        size,
        layers,
        config,
        ..
    }) = &view.manifest
    else {
        panic!("{view:?}");
    };
    assert_eq!(seven.size, Some(*size));
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].size, 107);
    assert!(
        !config.stored && !layers[0].stored,
        "a manifest pull fetches no blob"
    );
    assert_eq!(seven.digest, view.digest.clone().unwrap());
    e.cache.pull_image(&repo, &r("v07"), &[], 2).await.unwrap();
    let view = e.cache.image_view(&repo, &r("v07")).await.unwrap();
    let Some(ManifestView::Image { layers, config, .. }) = &view.manifest else {
        panic!("{view:?}");
    };
    assert!(config.stored && layers[0].stored, "{view:?}");

    let last = e
        .cache
        .browse_tags(&repo, "", Some("v19"), 10)
        .await
        .unwrap();
    assert_eq!(last.rows.first().map(|r| r.tag.as_str()), Some("v20"));
    assert!(!last.more);
    let found = e.cache.browse_tags(&repo, "1", None, 50).await.unwrap();
    let tags: Vec<&str> = found.rows.iter().map(|r| r.tag.as_str()).collect();
    assert_eq!(
        tags,
        [
            "v01", "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", "v19", "v21"
        ]
    );
    assert_eq!(found.total, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_page_filter_and_show_only_what_the_viewer_may_read() {
    let e = env();
    for name in ["library/a", "library/b", "library/c", "library/team/d"] {
        e.up.push_image(&n(name), &Tag::parse("v1").unwrap(), &[content(9, 10)]);
        pull(&e, name, "v1").await.unwrap();
    }
    let all = |_: &RepoName| true;
    let p = e
        .cache
        .browse_repositories("", None, 2, &all)
        .await
        .unwrap();
    let names: Vec<&str> = p.repositories.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        (names, p.total, p.more),
        (vec!["library/a", "library/b"], 4, true)
    );
    let p = e
        .cache
        .browse_repositories("", Some(&n("library/b")), 2, &all)
        .await
        .unwrap();
    let names: Vec<&str> = p.repositories.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        (names, p.more),
        (vec!["library/c", "library/team/d"], false)
    );
    let p = e
        .cache
        .browse_repositories("team", None, 50, &all)
        .await
        .unwrap();
    assert_eq!(p.total, 1);
    let not_b = |r: &RepoName| r.as_str() != "library/b";
    let p = e
        .cache
        .browse_repositories("", None, 50, &not_b)
        .await
        .unwrap();
    assert!(
        p.repositories
            .iter()
            .all(|r| r.name.as_str() != "library/b")
    );
    assert_eq!(p.total, 3);
    assert_eq!(p.repositories[0].tags, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_shows_its_platforms_and_the_store_is_measured() {
    let e = env();
    let repo = n("library/multi");
    let amd =
        e.up.push_image(&repo, &Tag::parse("amd").unwrap(), &[content(5, 300)]);
    let arm =
        e.up.push_image(&repo, &Tag::parse("arm").unwrap(), &[content(6, 400)]);
    let index = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{m}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{m}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
        media_types::OCI_INDEX,
        amd.manifest,
        amd.manifest_bytes.len(),
        arm.manifest,
        arm.manifest_bytes.len(),
        m = media_types::OCI_MANIFEST,
    ));
    e.up.add_manifest(
        &repo,
        Some(&Tag::parse("v1").unwrap()),
        index,
        media_types::OCI_INDEX,
    );
    pull(&e, "library/multi", "v1").await.unwrap();
    pull(&e, "library/multi", amd.manifest.as_ref())
        .await
        .unwrap();
    let view = e.cache.image_view(&repo, &r("v1")).await.unwrap();
    let Some(ManifestView::Index { platforms }) = &view.manifest else {
        panic!("{view:?}");
    };
    assert_eq!(platforms.len(), 2);
    assert_eq!(platforms[0].platform.as_deref(), Some("linux/amd64"));
    assert_eq!(platforms[1].platform.as_deref(), Some("linux/arm64/v8"));
    assert!(platforms[0].stored && !platforms[1].stored, "{platforms:?}");
    assert!(platforms[0].size.is_some_and(|s| s > 300));
    let rows = e.cache.browse_tags(&repo, "", None, 10).await.unwrap();
    assert_eq!(rows.rows[0].platforms, Some(2));

    let usage = e.cache.measure_usage().await.unwrap();
    let stored: u64 = e.store.list_all_sizes().await;
    assert_eq!(usage.bytes, stored);
    assert_eq!(e.cache.store_usage(), Some(usage));
}

/// Sums what the store lists.
trait Sizes {
    async fn list_all_sizes(&self) -> u64;
}

impl Sizes for Arc<dyn BlobStore> {
    async fn list_all_sizes(&self) -> u64 {
        use cache_core::BlobStoreExt;
        self.list_all().await.unwrap().iter().map(|i| i.size).sum()
    }
}
