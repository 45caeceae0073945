//! What keeping the cache fresh and complete costs a warm request, and
//! what the negative cache saves: through `PullThroughCache` on
//! `MemoryStore`, side by side in one run.
//!
//! - A warm manifest by digest (ten layers) with `prefetch` none,
//!   `platform` and `image`: after the first serve, a prefetch is claimed
//!   for the image for ten minutes, so later serves only look the claim up.
//! - A request for a tag the upstream does not have: remembered
//!   (`negative_ttl`, here 10 minutes so none expires during the run)
//!   against asked every time
//!   (`negative_ttl = 0`), and against a warm manifest hit. The upstream
//!   here is in process (no network), so the saving is understated: a real
//!   upstream 404 costs a round trip and, on Docker Hub, a pull.
//!
//! The machine is shared and noisy, so before criterion measures each case
//! on its own, an alternating pass times every case in turn, round after
//! round, and prints each one's median with its ratio to its group's
//! baseline: those ratios are of figures taken in the same moments.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::testing::{FakeUpstream, content};
use cache_core::{
    Accept, BlobStore, Prefetch, PullThroughCache, Reference, RepoName, RulePolicy, RuleSet,
    RuleSpec, Tag,
};
use cache_store::MemoryStore;
use criterion::{Criterion, criterion_group, criterion_main};

fn build(
    policy: RulePolicy,
) -> (
    PullThroughCache,
    RepoName,
    cache_core::Digest,
    Arc<FakeUpstream>,
) {
    let up = Arc::new(FakeUpstream::new(
        "up.example",
        Arc::new(cache_core::runtime::TokioRuntime::current()),
    ));
    let repo = RepoName::parse("library/app").unwrap();
    let layers: Vec<Bytes> = (0..10).map(|i| content(i, 4096)).collect();
    let img = up.push_image(&repo, &Tag::parse("v1").unwrap(), &layers);
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    let cache = PullThroughCache::builder()
        .rules(RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")]).unwrap())
        .store(store)
        .tokio()
        .upstream("up.example", up.clone())
        .policy("lib", policy)
        .build()
        .unwrap();
    (cache, repo, img.manifest, up)
}

async fn manifest(cache: &PullThroughCache, repo: &RepoName, r: &Reference) -> bool {
    cache.manifest(repo, r, &Accept::any()).await.is_ok()
}

async fn settle(cache: &PullThroughCache) {
    while cache.prefetching() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One measured request: its group, its name, and the engine and
/// reference it asks for.
struct Case {
    group: &'static str,
    name: &'static str,
    cache: PullThroughCache,
    repo: RepoName,
    reference: Reference,
    found: bool,
}

fn cases(rt: &tokio::runtime::Runtime) -> Vec<Case> {
    let mut out = Vec::new();
    for (name, prefetch) in [
        ("prefetch_none", Prefetch::None),
        ("prefetch_platform", Prefetch::Platform),
        ("prefetch_image", Prefetch::Image),
    ] {
        let (cache, repo, digest, up) = rt.block_on(async {
            build(RulePolicy {
                prefetch,
                ..RulePolicy::default()
            })
        });
        let reference = Reference::Digest(digest);
        // The first serve fetches it (and starts the prefetch); the rest are warm.
        rt.block_on(async {
            assert!(manifest(&cache, &repo, &reference).await);
            settle(&cache).await;
        });
        // Prefetched: the config and the ten layers.
        let blobs = up
            .calls
            .blob_gets
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(blobs, if prefetch == Prefetch::None { 0 } else { 11 });
        out.push(Case {
            group: "fresh_warm_manifest_by_digest",
            name,
            cache,
            repo,
            reference,
            found: true,
        });
    }
    let missing = Reference::Tag(Tag::parse("nope").unwrap());
    for (name, ttl) in [
        ("warm_manifest_hit_for_comparison", None),
        (
            "remembered_negative_ttl_10m",
            Some(Duration::from_secs(600)),
        ),
        ("asked_every_time_negative_ttl_0", Some(Duration::ZERO)),
    ] {
        let (cache, repo, digest, _) = rt.block_on(async {
            build(RulePolicy {
                negative_ttl: ttl.unwrap_or(Duration::from_secs(30)),
                ..RulePolicy::default()
            })
        });
        let reference = match ttl {
            None => Reference::Digest(digest),
            Some(_) => missing.clone(),
        };
        let found = ttl.is_none();
        rt.block_on(async { assert_eq!(manifest(&cache, &repo, &reference).await, found) });
        out.push(Case {
            group: "fresh_missing_tag",
            name,
            cache,
            repo,
            reference,
            found,
        });
    }
    out
}

fn once(rt: &tokio::runtime::Runtime, c: &Case) {
    let found = rt.block_on(manifest(&c.cache, &c.repo, &c.reference));
    debug_assert_eq!(found, c.found);
}

/// Every case in turn, `ROUNDS` times `PER_ROUND` requests: each case's
/// median time per request, and its ratio to the first case of its group.
fn alternating(rt: &tokio::runtime::Runtime, cases: &[Case]) {
    const ROUNDS: usize = 41;
    const PER_ROUND: u32 = 2_000;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, c) in cases.iter().enumerate() {
            let start = std::time::Instant::now();
            for _ in 0..PER_ROUND {
                once(rt, c);
            }
            times[i].push(start.elapsed().as_secs_f64() * 1e9 / f64::from(PER_ROUND));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    println!("alternating pass: {ROUNDS} rounds of {PER_ROUND} requests per case, medians");
    for (i, c) in cases.iter().enumerate() {
        let base = cases.iter().position(|b| b.group == c.group).unwrap();
        println!(
            "{}/{}: {:.0} ns, {:.2}x {}",
            c.group,
            c.name,
            medians[i],
            medians[i] / medians[base],
            cases[base].name
        );
    }
}

fn fresh(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cases = cases(&rt);
    alternating(&rt, &cases);
    for group in ["fresh_warm_manifest_by_digest", "fresh_missing_tag"] {
        let mut g = c.benchmark_group(group);
        for case in cases.iter().filter(|k| k.group == group) {
            g.bench_function(case.name, |b| b.iter(|| once(&rt, case)));
        }
        g.finish();
    }
}

criterion_group!(benches, fresh);
criterion_main!(benches);
