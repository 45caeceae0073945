//! What the vulnerability gate adds to a warm pull: a manifest by tag and
//! its config blob through `PullThroughCache` with no admission hook,
//! against the same with `ScanGate` whose verdict (from the store) is
//! remembered, in one run. The image has ten layers, so the gate's grant
//! check covers eleven digests per manifest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cache_core::PullCredentials;
use cache_core::testing::{FakeUpstream, content};
use cache_core::{
    Accept, BlobStore, PullThroughCache, Reference, RepoName, RuleSet, RuleSpec, Tag,
};
use cache_store::MemoryStore;
use cache_upstream::Secret;
use cache_upstream::scanner::{
    GateMode, OnScannerError, ScanGate, ScanPolicy, ScannerClient, Severity,
};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;

#[derive(Debug)]
struct NoCredentials;

impl PullCredentials for NoCredentials {
    fn issue(&self, _: &RepoName, _: Duration) -> Secret {
        Secret::new("Basic none")
    }
}

fn build(gated: bool) -> (PullThroughCache, RepoName, Tag, cache_core::Digest) {
    let up = Arc::new(FakeUpstream::new(
        "up.example",
        Arc::new(cache_core::runtime::TokioRuntime::current()),
    ));
    let repo = RepoName::parse("library/app").unwrap();
    let tag = Tag::parse("v1").unwrap();
    let layers: Vec<Bytes> = (0..10).map(|i| content(i, 4096)).collect();
    let img = up.push_image(&repo, &tag, &layers);
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    let mut b = PullThroughCache::builder()
        .rules(RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")]).unwrap())
        .store(store.clone())
        .tokio()
        .upstream("up.example", up);
    if gated {
        let policy = ScanPolicy {
            scanner: "s".into(),
            deny_severity: Severity::High,
            allow: Default::default(),
            mode: GateMode::Enforce,
            rescan: Duration::from_secs(86_400),
            on_scanner_error: OnScannerError::Deny,
            wait: Duration::from_secs(1),
        };
        // A verdict already in the store: the scanner is never asked.
        let record = serde_json::json!({
            "scanned_at_ms": SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
            "repository": "library/app",
            "mime_type": "application/vnd.oci.image.manifest.v1+json",
            "findings": [{"id": "CVE-1", "severity": "Low", "package": "p", "version": "1", "fix_version": ""}],
        });
        let key = cache_core::keys::scan_record("s", &img.manifest).unwrap();
        futures::executor::block_on(store.put_meta(&key, Bytes::from(record.to_string()))).unwrap();
        let client =
            ScannerClient::new("s", "http://127.0.0.1:9", None, "http://127.0.0.1:5000").unwrap();
        let gate = ScanGate::new(
            vec![client],
            HashMap::from([("lib".to_owned(), policy)]),
            store,
            Arc::new(NoCredentials),
        )
        .unwrap();
        b = b.admission(gate);
    }
    (b.build().unwrap(), repo, tag, img.config)
}

async fn warm_pull(
    cache: &PullThroughCache,
    repo: &RepoName,
    tag: &Tag,
    config: &cache_core::Digest,
) {
    let m = cache
        .manifest(repo, &Reference::Tag(tag.clone()), &Accept::any())
        .await
        .unwrap();
    assert!(!m.bytes.is_empty());
    let mut s = cache
        .blob(repo, config, None)
        .await
        .unwrap()
        .body
        .into_stream();
    while let Some(c) = s.next().await {
        c.unwrap();
    }
}

fn gate_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("gate_warm_pull");
    for (name, gated) in [("no_gate", false), ("scan_gate_remembered", true)] {
        let (cache, repo, tag, config) = rt.block_on(async { build(gated) });
        // The first pull fetches (and admits); the rest are warm.
        rt.block_on(warm_pull(&cache, &repo, &tag, &config));
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(warm_pull(&cache, &repo, &tag, &config)))
        });
    }
    g.finish();
}

criterion_group!(benches, gate_benches);
criterion_main!(benches);
