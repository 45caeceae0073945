//! The vulnerability gate on a `ManualClock`: the first pull's `wait`, a
//! verdict's staleness, the 30 s re-read of kept findings, the rescan
//! period and the report polling are all clock time, so minutes and hours
//! pass here in well under a second of real time.
//!
//! Real parts where they exist: `TestScanner` (Harbor's Scanner Adapter
//! API on loopback) pulls what it scans through the cache, served on
//! loopback by `cache_core::protocol` with a credential scoped to the
//! repository; the upstream is `FakeUpstream`, the store `MemoryStore`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use cache_core::policy::{Caller, PullCredentials};
use cache_core::protocol::{Body, handle_for};
use cache_core::runtime::TokioRuntime;
use cache_core::testing::{FakeUpstream, ManualClock, content};
use cache_core::{
    Accept, BlobStore, CacheOptions, Clock, Digest, ManifestResponse, MetaKey, PullThroughCache,
    Reference, RepoName, RuleSpec, Secret, Tag, media_types,
};
use cache_store::MemoryStore;
use cache_upstream::scanner::{
    GateMode, OnScannerError, ScanGate, ScanPolicy, ScanRecord, ScannerClient, Severity,
};
use cache_upstream::testing::{PACKAGES_LABEL, TestScanner};

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Real time a test may take: the clock time each exercises is far longer.
const REAL_LIMIT: Duration = Duration::from_secs(10);

/// `Scanner <repository>`: what the test server takes for a scanner's
/// credential scoped to that repository.
#[derive(Debug)]
struct Scoped;

impl PullCredentials for Scoped {
    fn issue(&self, repository: &RepoName, _ttl: Duration) -> Secret {
        Secret::new(format!("Scanner {repository}"))
    }
}

fn policy(mode: GateMode, rescan: Duration, wait: Duration) -> ScanPolicy {
    ScanPolicy {
        scanner: "test".into(),
        deny_severity: Severity::High,
        allow: Default::default(),
        mode,
        rescan,
        on_scanner_error: OnScannerError::Deny,
        wait,
    }
}

/// A cache with the gate, on one manual clock.
struct Gated {
    clock: ManualClock,
    up: Arc<FakeUpstream>,
    store: Arc<dyn BlobStore>,
    cache: PullThroughCache,
    gate: ScanGate,
    scanner: TestScanner,
    started: Instant,
}

/// Rule `NAME` maps `up.example/NAME/*` to `NAME/*` under its policy; the
/// cache is served on loopback for the scanner's pulls.
async fn gated(rules: &[(&str, ScanPolicy)]) -> Gated {
    let started = Instant::now();
    let clock = ManualClock::new();
    let up = Arc::new(FakeUpstream::new("up.example", Arc::new(clock.clone())));
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    let scanner = TestScanner::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cache_url = format!("http://{}", listener.local_addr().unwrap());
    let client = ScannerClient::new("test", &scanner.url(), None, &cache_url).unwrap();
    let policies: HashMap<String, ScanPolicy> = rules
        .iter()
        .map(|(name, p)| ((*name).to_owned(), p.clone()))
        .collect();
    let gate = ScanGate::new(vec![client], policies, store.clone(), Arc::new(Scoped))
        .unwrap()
        .with_runtime(TokioRuntime::current(), clock.clone());
    let mut b = PullThroughCache::builder()
        .store(store.clone())
        .spawner(TokioRuntime::current())
        .clock(clock.clone())
        .upstream("up.example", up.clone())
        .admission(gate.clone())
        .options(CacheOptions {
            // Longer than any `wait` here: a first pull is admitted inside
            // its manifest fetch.
            manifest_timeout: 10 * MINUTE,
            ..CacheOptions::default()
        });
    for (name, _) in rules {
        b = b.rule(RuleSpec::new(
            *name,
            format!("up.example/{name}/*"),
            format!("{name}/*"),
        ));
    }
    let cache = b.build().unwrap();
    gate.revoke_through(&cache);
    serve(listener, cache.clone());
    Gated {
        clock,
        up,
        store,
        cache,
        gate,
        scanner,
        started,
    }
}

/// Serves the pull API of `cache`; a `Scanner <repo>` credential is the
/// scanner's, scoped to that repository.
fn serve(listener: tokio::net::TcpListener, cache: PullThroughCache) {
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let cache = cache.clone();
        async move {
            let (parts, _) = req.into_parts();
            let caller = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Scanner "))
                .and_then(|r| RepoName::parse(r).ok())
                .map_or(Caller::Client, |repository| Caller::Scanner { repository });
            handle_for(&cache, &caller, &parts.method, &parts.uri, &parts.headers)
                .await
                .map(|b| match b {
                    Body::Empty => axum::body::Body::empty(),
                    Body::Bytes(b) => axum::body::Body::from(b),
                    Body::Blob(b) => axum::body::Body::from_stream(b.into_stream()),
                })
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

impl Gated {
    /// An image whose config lists `packages`, pushed as `repo:v1`: its
    /// manifest's digest.
    fn push(&self, repo: &str, packages: &str) -> Digest {
        let repo = RepoName::parse(repo).unwrap();
        let config = Bytes::from(
            serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {PACKAGES_LABEL: packages}},
                "rootfs": {"type": "layers", "diff_ids": []},
            })
            .to_string(),
        );
        let layer = content(7, 2000);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": self.up.add_blob(&repo, config.clone()).as_str(),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": self.up.add_blob(&repo, layer.clone()).as_str(),
                "size": layer.len(),
            }],
        });
        self.up.add_manifest(
            &repo,
            Some(&Tag::parse("v1").unwrap()),
            Bytes::from(manifest.to_string()),
            media_types::OCI_MANIFEST,
        )
    }

    /// A client's pull of `repo:v1`'s manifest.
    fn pull(
        &self,
        repo: &str,
    ) -> impl Future<Output = cache_core::Result<ManifestResponse>> + Send + 'static {
        let (cache, repo) = (self.cache.clone(), RepoName::parse(repo).unwrap());
        async move {
            cache
                .manifest(&repo, &Reference::parse("v1").unwrap(), &Accept::any())
                .await
        }
    }

    /// Runs `fut` while the scanner's reports come in: whenever something
    /// sleeps a second or less on the clock (a report poll's
    /// `Refresh-After`; the waits, periods and ages tested are longer), the
    /// clock moves on to it once the scanner finished the scans it was
    /// asked for (it works in real time, as the clock would pass then).
    async fn with_polls<T>(&self, fut: impl Future<Output = T>) -> T {
        let run = async {
            let mut fut = std::pin::pin!(fut);
            loop {
                tokio::select! {
                    out = &mut fut => return out,
                    () = self.clock.until_sleeps(|s| s.first().is_some_and(|d| *d <= SECOND)) => {
                        while self.scanner.scans_done() < self.scanner.scans().len() {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        self.clock.advance_to_next();
                    }
                }
            }
        };
        tokio::time::timeout(REAL_LIMIT, run)
            .await
            .expect("finished on the manual clock")
    }

    /// Waits (briefly, in real time) until `pred` holds of the clock's
    /// pending sleeps.
    async fn until_sleeps(&self, pred: impl FnMut(&[Duration]) -> bool + Send + 'static) {
        if tokio::time::timeout(REAL_LIMIT, self.clock.until_sleeps(pred))
            .await
            .is_err()
        {
            panic!(
                "the code under test does not sleep so on the clock; it sleeps {:?}",
                self.clock.sleeps()
            );
        }
    }

    /// Waits (briefly, in real time) until the scanner received `n` scan
    /// requests.
    async fn scans_reach(&self, n: usize) {
        tokio::time::timeout(REAL_LIMIT, async {
            while self.scanner.scans().len() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the scan was asked for");
    }

    async fn record(&self, d: &Digest) -> ScanRecord {
        self.gate.record("test", d).await.unwrap().expect("kept")
    }

    /// Writes findings for `d` into the store, as another instance on it would.
    async fn put_record(&self, d: &Digest, repo: &str, critical: &[&str]) {
        let findings: Vec<serde_json::Value> = critical
            .iter()
            .map(|id| serde_json::json!({"id": id, "severity": "Critical", "package": "openssl", "version": "3.0.1", "fix_version": ""}))
            .collect();
        let rec = serde_json::json!({
            "scanned_at_ms": unix_ms(&self.clock),
            "repository": repo,
            "mime_type": media_types::OCI_MANIFEST,
            "findings": findings,
        });
        let key = MetaKey::parse(&format!("scans/test/{}/{}", d.algorithm(), d.hex())).unwrap();
        self.store
            .put_meta(&key, Bytes::from(rec.to_string()))
            .await
            .unwrap();
    }

    fn assert_quick(&self, clock_time: Duration) {
        let real = self.started.elapsed();
        assert!(
            real < REAL_LIMIT && real < clock_time / 4,
            "{real:?} of real time for {clock_time:?} on the clock"
        );
        assert_eq!(self.scanner.violations(), Vec::<String>::new());
    }
}

fn unix_ms(clock: &ManualClock) -> u64 {
    clock.now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_pull_waits_at_most_wait_then_gets_503_or_in_audit_mode_is_served() {
    for mode in [GateMode::Enforce, GateMode::Audit] {
        let g = gated(&[("lib", policy(mode, HOUR, MINUTE))]).await;
        let d = g.push("lib/app", "openssl 3.0.1");
        // A scan that takes long: its report is not ready for 1000 polls.
        g.scanner.set_polls_before_ready(1000);
        let t0 = g.clock.now();
        let pull = tokio::spawn(g.pull("lib/app"));
        // The pull waits `wait` for the scan, which waits on Refresh-After.
        g.until_sleeps(|s| s.contains(&MINUTE) && s.contains(&SECOND))
            .await;
        g.clock.advance(MINUTE - SECOND);
        // A poll came due meanwhile and went back to sleep; the pull waits on.
        g.until_sleeps(|s| s.iter().filter(|d| **d == SECOND).count() >= 2)
            .await;
        assert!(!pull.is_finished(), "{mode:?}: answered before `wait`");
        g.clock.advance(SECOND);
        let answer = tokio::time::timeout(REAL_LIMIT, pull)
            .await
            .expect("answered at `wait`")
            .unwrap();
        assert_eq!(g.clock.now().duration_since(t0).unwrap(), MINUTE);
        match mode {
            GateMode::Enforce => {
                let e = answer.unwrap_err();
                assert_eq!(e.http_status(), 503, "{e}");
                assert!(e.to_string().contains("is not finished; retry"), "{e}");
            }
            GateMode::Audit => assert_eq!(answer.unwrap().digest, d),
        }
        // One scan was asked for, and it still runs (the next pull joins it).
        assert_eq!(g.scanner.scans().len(), 1);
        assert!(g.gate.record("test", &d).await.unwrap().is_none());
        g.assert_quick(MINUTE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_verdict_is_served_while_one_rescan_runs_and_the_rescan_then_decides() {
    let g = gated(&[("lib", policy(GateMode::Enforce, HOUR, MINUTE))]).await;
    let d = g.push("lib/app", "openssl 3.0.1");
    let repo = RepoName::parse("lib/app").unwrap();
    // The first pull is scanned: clean.
    assert_eq!(g.with_polls(g.pull("lib/app")).await.unwrap().digest, d);
    assert_eq!(g.scanner.scans().len(), 1);
    let first = g.record(&d).await;
    assert_eq!(
        first.scanned_at_ms,
        unix_ms(&g.clock),
        "stamped on the clock"
    );
    assert!(first.findings.is_empty());

    // A new advisory. For an hour on the clock the verdict is fresh: no
    // rescan; then it is stale.
    g.scanner.advise("openssl", "CVE-2099-0001", "Critical");
    g.clock.advance(HOUR - SECOND);
    assert_eq!(g.pull("lib/app").await.unwrap().digest, d);
    assert_eq!(g.gate.counters().in_progress(), 0, "fresh: no rescan");
    g.clock.advance(SECOND);
    // Pulls are answered from the kept verdict at once, while one rescan
    // runs (its report polls wait on the clock, which nobody moves).
    for _ in 0..3 {
        assert_eq!(g.pull("lib/app").await.unwrap().digest, d);
    }
    g.scans_reach(2).await;
    g.until_sleeps(|s| s.contains(&SECOND)).await;
    assert_eq!(g.pull("lib/app").await.unwrap().digest, d);
    assert_eq!(g.scanner.scans().len(), 2, "one rescan for all the pulls");
    assert_eq!(g.gate.counters().in_progress(), 1);

    // Joined, the rescan finishes as the clock moves, and decides.
    let rescanned = g
        .with_polls(
            g.gate
                .scan_now("test", &repo, &d, media_types::OCI_MANIFEST),
        )
        .await
        .unwrap();
    assert_eq!(g.scanner.scans().len(), 2, "scan_now joined the rescan");
    assert_eq!(rescanned.findings[0].id, "CVE-2099-0001");
    assert!(rescanned.scanned_at_ms >= first.scanned_at_ms + HOUR.as_millis() as u64);
    let e = g.pull("lib/app").await.unwrap_err();
    assert_eq!(e.http_status(), 403, "{e}");
    assert!(e.to_string().contains("CVE-2099-0001"), "{e}");
    g.assert_quick(HOUR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_findings_are_read_again_from_the_store_after_30_s_of_clock_time() {
    let g = gated(&[("lib", policy(GateMode::Enforce, HOUR, MINUTE))]).await;
    let d = g.push("lib/app", "openssl 3.0.1");
    // Findings already in the store (a scan on another instance): clean.
    g.put_record(&d, "lib/app", &[]).await;
    assert_eq!(g.pull("lib/app").await.unwrap().digest, d);
    // The other instance rescans: now denied, in the store.
    g.put_record(&d, "lib/app", &["CVE-2099-0002"]).await;
    g.clock.advance(Duration::from_secs(29));
    assert_eq!(
        g.pull("lib/app").await.unwrap().digest,
        d,
        "within 30 s the findings in memory answer"
    );
    g.clock.advance(SECOND);
    let e = g.pull("lib/app").await.unwrap_err();
    assert_eq!(e.http_status(), 403, "{e}");
    assert!(e.to_string().contains("CVE-2099-0002"), "{e}");
    assert_eq!(g.scanner.scans().len(), 0, "no scan: the store had them");
    assert_eq!(
        g.gate.counters().in_progress(),
        0,
        "nor a rescan: they are fresh"
    );
    g.assert_quick(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescan_loop_tick_rescans_what_is_due_and_only_that() {
    let rescan = 20 * MINUTE;
    let g = gated(&[("lib", policy(GateMode::Enforce, rescan, MINUTE))]).await;
    let d = g.push("lib/app", "openssl 3.0.1");
    assert_eq!(g.with_polls(g.pull("lib/app")).await.unwrap().digest, d);
    let first = g.record(&d).await;
    g.scanner.advise("openssl", "CVE-2099-0003", "Critical");
    // Checked every quarter of `rescan` (at most 5 min).
    let tick = rescan / 4;
    g.gate.spawn_rescans();
    for _ in 0..3 {
        g.until_sleeps(move |s| s.contains(&tick)).await;
        g.clock.advance(tick);
        // The loop looked (nothing was due) and sleeps again.
        g.until_sleeps(move |s| s.contains(&tick)).await;
        assert_eq!(g.scanner.scans().len(), 1, "not due before `rescan`");
    }
    // The fourth tick: `rescan` old, due; rescanned without a pull.
    g.clock.advance(tick);
    g.with_polls(g.until_sleeps(move |s| s.contains(&tick)))
        .await;
    assert_eq!(g.scanner.scans().len(), 2);
    let rescanned = g.record(&d).await;
    assert!(rescanned.scanned_at_ms >= first.scanned_at_ms + rescan.as_millis() as u64);
    assert_eq!(rescanned.findings[0].id, "CVE-2099-0003");
    // The verdict turned: the next pull is refused without another scan.
    let e = g.pull("lib/app").await.unwrap_err();
    assert_eq!(e.http_status(), 403, "{e}");
    assert_eq!(g.scanner.scans().len(), 2);
    g.assert_quick(rescan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_may_only_pull_what_is_cached_starts_no_scan() {
    let g = gated(&[("lib", policy(GateMode::Enforce, HOUR, MINUTE))]).await;
    let d = g.push("lib/app", "openssl 3.0.1");
    let repo = RepoName::parse("lib/app").unwrap();
    let v1 = Reference::parse("v1").unwrap();
    let cached_only = Caller::principal("anonymous", cache_core::FetchPolicy::StoreOnly);
    let pull_cached = || {
        let (cache, repo, v1, caller) = (
            g.cache.clone(),
            repo.clone(),
            v1.clone(),
            cached_only.clone(),
        );
        async move {
            cache
                .manifest_for(&repo, &v1, &Accept::any(), &caller)
                .await
        }
    };
    // A client's pull is scanned and caches the image.
    assert_eq!(g.with_polls(g.pull("lib/app")).await.unwrap().digest, d);
    assert_eq!(g.scanner.scans().len(), 1);
    // Stale after an hour: a client's pull would start a rescan; a
    // pull-cached caller is answered from the kept findings, no rescan.
    g.clock.advance(HOUR);
    assert_eq!(pull_cached().await.unwrap().digest, d);
    assert_eq!(g.gate.counters().in_progress(), 0, "no rescan started");
    assert_eq!(g.scanner.scans().len(), 1);
    // The findings gone (and the memory of them aged out): refused with
    // the reason, and still no scan asked for.
    let key = MetaKey::parse(&format!("scans/test/{}/{}", d.algorithm(), d.hex())).unwrap();
    g.store.delete_meta(&key).await.unwrap();
    g.clock.advance(31 * SECOND);
    let e = pull_cached().await.unwrap_err();
    assert_eq!(e.http_status(), 403, "{e}");
    assert!(e.to_string().contains("starts no scan"), "{e}");
    assert_eq!(g.scanner.scans().len(), 1);
    assert_eq!(g.gate.counters().in_progress(), 0);
    // A client's pull of the same does start one.
    let _ = g.with_polls(g.pull("lib/app")).await;
    assert_eq!(g.scanner.scans().len(), 2);
}
