//! Property: whatever faults the upstream injects, every committed blob
//! hashes to its digest, and no reader ever sees a clean end of stream with
//! wrong bytes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::testing::{FakeUpstream, Fault, content};
use cache_core::{BlobStoreExt, CacheOptions, PullThroughCache, RepoName, RuleSpec};
use cache_store::{MemoryStore, TokioRuntime};
use futures::StreamExt;
use proptest::prelude::*;

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0u64..40_000).prop_map(Fault::FlipByte),
        (0u64..40_000).prop_map(Fault::Truncate),
        (0u64..40_000).prop_map(Fault::Stall),
        Just(Fault::ServerError),
        Just(Fault::TooManyRequests),
        Just(Fault::NotFound),
        (1usize..9_000).prop_map(|chunk| Fault::Drip {
            chunk,
            delay: Duration::from_millis(1)
        }),
    ]
}

async fn read_all(
    cache: PullThroughCache,
    repo: RepoName,
    d: cache_core::Digest,
) -> (Vec<u8>, bool) {
    match cache.blob(&repo, &d, None).await {
        Err(_) => (Vec::new(), false),
        Ok(r) => {
            let mut s = r.body.into_stream();
            let mut out = Vec::new();
            while let Some(c) = s.next().await {
                match c {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(_) => return (out, false),
                }
            }
            (out, true)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn no_fault_schedule_yields_a_clean_end_with_wrong_bytes_or_a_bad_commit(
        size in 1usize..40_000,
        faults in prop::collection::vec(fault(), 0..6),
        readers in 1usize..5,
        rounds in 1usize..3,
        window in prop_oneof![Just(0usize), 1usize..20_000, Just(4 * 1024 * 1024)],
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let clock = Arc::new(TokioRuntime::current());
            let up = Arc::new(FakeUpstream::new("up.example", clock.clone()));
            let repo = RepoName::parse("library/app").unwrap();
            let data: Bytes = content(size as u64, size);
            let d = up.add_blob(&repo, data.clone());
            for f in faults {
                up.fail_next_blob(f);
            }
            let store = Arc::new(MemoryStore::new());
            let cache = PullThroughCache::builder()
                .rule(RuleSpec::new("lib", "up.example/library/*", "library/*"))
                .store(store.clone())
                .runtime(clock)
                .upstream("up.example", up.clone())
            .options(CacheOptions {
                stall_timeout: Duration::from_millis(50),
                retry_backoff: Duration::from_millis(1),
                follow_window: window,
                ..CacheOptions::default()
            })
            .build()
            .unwrap();
            for _ in 0..rounds {
                let mut tasks = Vec::new();
                for _ in 0..readers {
                    tasks.push(tokio::spawn(read_all(cache.clone(), repo.clone(), d.clone())));
                }
                for t in tasks {
                    let (bytes, clean) = t.await.unwrap();
                    if clean {
                        assert!(bytes == data, "a clean end with wrong bytes ({} of {} bytes)", bytes.len(), data.len());
                    }
                }
                for _ in 0..200 {
                    if cache.inflight() == 0 { break; }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                for info in store.list_all().await.unwrap() {
                    let stored = store.get_bytes(&info.digest).await.unwrap();
                    assert!(info.digest.verifies(&stored), "a committed blob does not hash to its digest");
                }
            }
        });
    }
}
