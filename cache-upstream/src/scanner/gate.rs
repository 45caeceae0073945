//! The admission hook: one scan per digest, findings kept in the store,
//! judged by the rule's policy, rescanned in the background.
//!
//! Every wait and every timestamp is on the gate's [`Clock`], its scans and
//! rescans run on its [`Spawner`], and its scans fly through the engine's
//! single-flight ([`Flights`]): a gate runs on `ManualClock` in tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::events::{AdmissionOutcome, Event, EventSink, NoEvents};
use cache_core::policy::{Admission, AdmissionRequest, PullCredentials, Verdict};
use cache_core::runtime::{Busy, Flight, Flights, TokioRuntime, timeout};
use cache_core::{BlobStore, Clock, Digest, Error, MetaKey, RepoName, Result, Rule, Spawner};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::client::{IMAGE_MANIFEST_TYPES, MetadataError, ScanError, ScanTarget, ScannerClient};
use super::policy::{Finding, GateMode, OnScannerError, ScanPolicy, Severity, denying, scannable};

/// Findings kept in memory (the store has them all).
const MAX_REMEMBERED: usize = 10_000;
/// How long findings are taken from memory before the store is read again
/// (another instance on the store may have rescanned).
const REMEMBER_FOR: Duration = Duration::from_secs(30);
/// Scans in progress at most (each holds a detached task and a credential).
const MAX_SCANS_IN_FLIGHT: usize = 256;
/// How long a scanner may take to have a report ready, and how long the
/// pull credential it is given lasts.
const REPORT_DEADLINE: Duration = Duration::from_secs(900);
/// The time limit of a whole scan: the report's deadline, and time to ask
/// for the scan and keep its findings.
const SCAN_LIMIT: Duration = Duration::from_secs(1200);
/// Findings named in a refusal.
const TOP_FINDINGS: usize = 5;

/// What a scanner answered for a digest, as kept in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRecord {
    /// When the scan finished (unix milliseconds).
    pub scanned_at_ms: u64,
    /// The repository it was scanned in (for rescans).
    pub repository: String,
    /// The manifest's media type (for rescans).
    pub mime_type: String,
    /// The findings, most severe first, at most 500.
    pub findings: Vec<Finding>,
}

impl ScanRecord {
    fn scanned_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.scanned_at_ms)
    }
}

/// One manifest of an image as [`ScanGate::scan_image`] found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageScan {
    /// The manifest scanned.
    pub digest: String,
    /// Its platform, for an entry of an index.
    pub platform: Option<String>,
    /// The scanner.
    pub scanner: String,
    /// Whether the rule's policy denies it (or, in audit mode, would).
    pub denied: bool,
    /// `enforce` or `audit`.
    pub mode: String,
    /// The policy's threshold.
    pub deny_severity: Severity,
    /// Every finding, most severe first.
    pub findings: Vec<Finding>,
    /// The ids of the findings that deny.
    pub denying: Vec<String>,
}

/// Why [`ScanGate::scan_image`] did not scan.
#[derive(Debug)]
pub enum ScanImageError {
    /// No rule declares the name, or its rule has no scan policy.
    NotCovered(String),
    /// The image could not be had (the cache's error, with its status).
    Cache(Error),
    /// The scanner failed.
    Scan(ScanError),
}

impl fmt::Display for ScanImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanImageError::NotCovered(m) => f.write_str(m),
            ScanImageError::Cache(e) => e.fmt(f),
            ScanImageError::Scan(e) => e.fmt(f),
        }
    }
}

/// Index entries scanned at most by [`ScanGate::scan_image`].
const MAX_SCANNED_ENTRIES: usize = 32;

type ScanFlight = Flight<ScanRecord, ScanError>;

/// Scanner names counted by name; more count under `other`.
const MAX_COUNTED_SCANNERS: usize = 64;

/// Scans finished and failed, by scanner, and scans in progress: for
/// metrics. One set may be shared by the gates a server replaces on
/// reload ([`ScanGate::with_counters`]), so the counts only grow.
#[derive(Debug, Default)]
pub struct ScanCounters {
    by_scanner: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
    in_progress: std::sync::atomic::AtomicUsize,
}

/// Counts a scan in progress while it lives, and as failed if it ends
/// without a result (its flight's time limit dropped it).
struct InProgress {
    counters: Arc<ScanCounters>,
    scanner: String,
    counted: bool,
}

impl InProgress {
    fn new(counters: Arc<ScanCounters>, scanner: &str) -> Self {
        counters
            .in_progress
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InProgress {
            counters,
            scanner: scanner.to_owned(),
            counted: false,
        }
    }

    fn finish(mut self, ok: bool) {
        self.counters.count(&self.scanner, ok);
        self.counted = true;
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        if !self.counted {
            self.counters.count(&self.scanner, false);
        }
        self.counters
            .in_progress
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ScanCounters {
    fn count(&self, scanner: &str, ok: bool) {
        let mut m = self.by_scanner.lock().unwrap_or_else(|p| p.into_inner());
        let name = if m.contains_key(scanner) || m.len() < MAX_COUNTED_SCANNERS {
            scanner
        } else {
            "other"
        };
        let e = m.entry(name.to_owned()).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    /// Per scanner: scans finished, scans failed.
    pub fn by_scanner(&self) -> Vec<(String, u64, u64)> {
        self.by_scanner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, (ok, failed))| (k.clone(), *ok, *failed))
            .collect()
    }

    /// Scans in progress.
    pub fn in_progress(&self) -> usize {
        self.in_progress.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The admission hook: see the module docs. Clones share one gate.
#[derive(Debug, Clone)]
pub struct ScanGate {
    inner: Arc<GateInner>,
}

struct GateInner {
    scanners: HashMap<String, ScannerClient>,
    policies: HashMap<String, ScanPolicy>,
    store: Arc<dyn BlobStore>,
    credentials: Arc<dyn PullCredentials>,
    /// Findings read or made, with when (on `clock`) they were.
    remembered: Mutex<HashMap<(String, Digest), (ScanRecord, SystemTime)>>,
    cache: std::sync::OnceLock<cache_core::WeakCache>,
    /// One scan per (scanner, digest); keyed `"{scanner} {digest}"`.
    flights: Flights<ScanRecord, ScanError>,
    counters: Arc<ScanCounters>,
    /// Where verdict changes are reported.
    events: Arc<dyn EventSink>,
    spawner: Arc<dyn Spawner>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for GateInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanGate")
            .field("scanners", &self.scanners.keys().collect::<Vec<_>>())
            .field("rules", &self.policies.len())
            .finish_non_exhaustive()
    }
}

fn record_key(scanner: &str, d: &Digest) -> MetaKey {
    cache_core::keys::scan_record(scanner, d)
        .expect("scanner names are checked at construction; digests are valid")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// How long ago `then` was; zero when the clock says it is still to come.
fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

fn scan_flights(
    spawner: &Arc<dyn Spawner>,
    clock: &Arc<dyn Clock>,
) -> Flights<ScanRecord, ScanError> {
    Flights::new(
        MAX_SCANS_IN_FLIGHT,
        SCAN_LIMIT,
        spawner.clone(),
        clock.clone(),
    )
}

impl ScanGate {
    /// A gate with `scanners`, the rules' `policies` (by rule name), the
    /// cache's `store` for findings, and `credentials` for the scanners'
    /// pulls. It runs on tokio (the runtime each call is made from,
    /// `TokioRuntime::ambient()`) until [`with_runtime`](Self::with_runtime)
    /// gives it the engine's spawner and clock.
    pub fn new(
        scanners: Vec<ScannerClient>,
        policies: HashMap<String, ScanPolicy>,
        store: Arc<dyn BlobStore>,
        credentials: Arc<dyn PullCredentials>,
    ) -> std::result::Result<ScanGate, String> {
        let spawner: Arc<dyn Spawner> = Arc::new(TokioRuntime::ambient());
        let clock: Arc<dyn Clock> = Arc::new(TokioRuntime::ambient());
        let scanners: HashMap<String, ScannerClient> = scanners
            .into_iter()
            .map(|mut s| {
                s.clock = clock.clone();
                (s.name.clone(), s)
            })
            .collect();
        for (name, s) in &scanners {
            if cache_core::keys::scans_of(name).is_err() {
                return Err(format!(
                    "scanner name {:?}: letters, digits, . _ - only",
                    s.name
                ));
            }
        }
        for (rule, p) in &policies {
            if !scanners.contains_key(&p.scanner) {
                return Err(format!(
                    "rule {rule:?}: scan.scanner = {:?} names no [[scanner]]",
                    p.scanner
                ));
            }
        }
        Ok(ScanGate {
            inner: Arc::new(GateInner {
                scanners,
                policies,
                store,
                credentials,
                remembered: Mutex::new(HashMap::new()),
                cache: std::sync::OnceLock::new(),
                flights: scan_flights(&spawner, &clock),
                counters: Arc::default(),
                events: Arc::new(NoEvents),
                spawner,
                clock,
            }),
        })
    }

    /// Runs the gate's scans and rescans on `spawner`, and tells its time
    /// on `clock`: how long a first pull waits, how old a verdict is, when
    /// kept findings are read again, when rescans are due, when a record
    /// was made, and its scanners' report polling. Pass the engine's (a
    /// `ManualClock` in tests). Only before the gate is cloned: a gate
    /// already shared keeps its runtime (and this says so in the log).
    pub fn with_runtime(
        mut self,
        spawner: impl Spawner + 'static,
        clock: impl Clock + 'static,
    ) -> Self {
        let (spawner, clock): (Arc<dyn Spawner>, Arc<dyn Clock>) =
            (Arc::new(spawner), Arc::new(clock));
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                for s in inner.scanners.values_mut() {
                    s.clock = clock.clone();
                }
                inner.flights = scan_flights(&spawner, &clock);
                inner.spawner = spawner;
                inner.clock = clock;
            }
            None => tracing::warn!(
                "ScanGate::with_runtime on a gate already cloned: it keeps its runtime"
            ),
        }
        self
    }

    /// Counts into `counters` (shared with the gate this one replaces, so
    /// the counts survive a reload). Only before the gate is cloned.
    pub fn with_counters(mut self, counters: Arc<ScanCounters>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.counters = counters;
        }
        self
    }

    /// Reports to `events` each scan whose verdict under its rule's
    /// policy is not the previous scan's (a first scan, a rescan that
    /// turns an image denied or allowed): [`Event::ScanVerdict`]. The rule
    /// is found through the cache [`revoke_through`](Self::revoke_through)
    /// names. Only before the gate is cloned.
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.events = events;
        }
        self
    }

    /// Scans finished and failed, and in progress.
    pub fn counters(&self) -> &Arc<ScanCounters> {
        &self.inner.counters
    }

    /// Lets the gate withdraw grants from `cache` (which it admits for):
    /// when a scan (a rescan, mostly) denies a manifest under an enforcing
    /// rule, what clients of its repository were granted by reading it
    /// earlier is withdrawn, so its layers are refused by digest too. Set
    /// once; the gate does not keep the cache alive.
    pub fn revoke_through(&self, cache: &cache_core::PullThroughCache) {
        let _ = self.inner.cache.set(cache.downgrade());
    }

    /// Checks every scanner's metadata: what it is, or why it will not do.
    pub async fn check_scanners(
        &self,
    ) -> Vec<(String, std::result::Result<String, MetadataError>)> {
        let mut out = Vec::new();
        for (name, s) in &self.inner.scanners {
            out.push((name.clone(), s.metadata().await));
        }
        out
    }

    /// The kept findings for `d` by `scanner`, if scanned.
    pub async fn record(&self, scanner: &str, d: &Digest) -> Result<Option<ScanRecord>> {
        self.inner.record(scanner, d).await
    }

    /// Starts the background rescans on the gate's spawner: each kept
    /// scan older than the `rescan` of its scanner's rules is run again,
    /// checked every quarter of the shortest `rescan` (1 s to 5 min) on the
    /// gate's clock. Ends when the gate is dropped (a reload that replaces
    /// it).
    pub fn spawn_rescans(&self) {
        let Some(shortest) = self.inner.policies.values().map(|p| p.rescan).min() else {
            return;
        };
        let every = (shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        let weak = Arc::downgrade(&self.inner);
        let clock = self.inner.clock.clone();
        self.inner.spawner.spawn(
            async move {
                loop {
                    clock.sleep(every).await;
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = inner.rescan_due().await {
                        tracing::warn!(error = %e, "rescans failed; trying again later");
                    }
                }
            }
            .boxed(),
        );
    }

    /// The policy of rule `rule`, if it has one.
    pub fn policy(&self, rule: &str) -> Option<&ScanPolicy> {
        self.inner.policies.get(rule)
    }

    /// The findings of `rec` that deny under `policy`, most severe first.
    pub fn denying<'a>(policy: &ScanPolicy, rec: &'a ScanRecord) -> Vec<&'a Finding> {
        denying(policy, rec)
    }

    /// Scans the image `name:reference` of `cache` now, ahead of any pull:
    /// the manifest (each platform's, for an index, at most 32; attestation
    /// entries skipped) is fetched as the scanner would (no admission), each
    /// is scanned and its findings kept as a pull's would be, and judged by
    /// the policy of the rule `name` falls under.
    pub async fn scan_image(
        &self,
        cache: &cache_core::PullThroughCache,
        name: &RepoName,
        reference: &cache_core::Reference,
    ) -> std::result::Result<Vec<ImageScan>, ScanImageError> {
        let rule = {
            let rules = cache.rules();
            let resolved = rules
                .resolve(name)
                .map_err(|e| ScanImageError::NotCovered(e.to_string()))?;
            resolved.rule.name().to_owned()
        };
        let policy = self
            .policy(&rule)
            .ok_or_else(|| {
                ScanImageError::NotCovered(format!("rule {rule:?} has no [rule.scan] policy"))
            })?
            .clone();
        let caller = cache_core::Caller::Scanner {
            repository: name.clone(),
        };
        let m = cache
            .manifest_for(name, reference, &cache_core::Accept::any(), &caller)
            .await
            .map_err(ScanImageError::Cache)?;
        let parsed =
            cache_core::manifest::ParsedManifest::parse(&m.bytes).map_err(ScanImageError::Cache)?;
        let targets: Vec<(Digest, String, Option<String>)> = if parsed.is_index() {
            parsed
                .manifests
                .iter()
                .filter(|(_, p)| p.as_ref().is_none_or(|p| p.os != "unknown"))
                .take(MAX_SCANNED_ENTRIES)
                .map(|(d, p)| {
                    let mt = d
                        .media_type
                        .clone()
                        .unwrap_or_else(|| IMAGE_MANIFEST_TYPES[0].to_owned());
                    (d.digest.clone(), mt, p.as_ref().map(ToString::to_string))
                })
                .collect()
        } else {
            vec![(m.digest.clone(), m.media_type.clone(), None)]
        };
        let mut out = Vec::with_capacity(targets.len());
        for (digest, mime_type, platform) in targets {
            let rec = self
                .scan_now(&policy.scanner, name, &digest, &mime_type)
                .await
                .map_err(ScanImageError::Scan)?;
            let denying = denying(&policy, &rec)
                .iter()
                .map(|f| f.id.clone())
                .collect::<Vec<_>>();
            out.push(ImageScan {
                digest: digest.to_string(),
                platform,
                scanner: policy.scanner.clone(),
                denied: !denying.is_empty(),
                mode: match policy.mode {
                    GateMode::Enforce => "enforce".into(),
                    GateMode::Audit => "audit".into(),
                },
                deny_severity: policy.deny_severity,
                findings: rec.findings,
                denying,
            });
        }
        Ok(out)
    }

    /// Scans `d` in `repository` now (however fresh the kept scan), waiting
    /// for the report: the findings.
    pub async fn scan_now(
        &self,
        scanner: &str,
        repository: &RepoName,
        d: &Digest,
        mime_type: &str,
    ) -> std::result::Result<ScanRecord, ScanError> {
        match self.inner.flight(scanner, repository, d, mime_type) {
            Ok(f) => f.await,
            Err(Busy { max }) => Err(ScanError(format!(
                "{max} scans are in progress; try again later"
            ))),
        }
    }
}

impl GateInner {
    async fn record(&self, scanner: &str, d: &Digest) -> Result<Option<ScanRecord>> {
        let key = (scanner.to_owned(), d.clone());
        if let Some((r, at)) = self
            .remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            // A clock set back makes memory stale, not fresh for longer.
            && self.clock.now().duration_since(*at).is_ok_and(|a| a < REMEMBER_FOR)
        {
            return Ok(Some(r.clone()));
        }
        let rec = self
            .store
            .get_meta(&record_key(scanner, d))
            .await?
            .and_then(|b| serde_json::from_slice::<ScanRecord>(&b).ok());
        if let Some(r) = &rec {
            self.remember(key, r.clone());
        }
        Ok(rec)
    }

    fn remember(&self, key: (String, Digest), r: ScanRecord) {
        let mut m = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_REMEMBERED && !m.contains_key(&key) {
            // Forget an arbitrary one: the store still has it.
            if let Some(k) = m.keys().next().cloned() {
                m.remove(&k);
            }
        }
        m.insert(key, (r, self.clock.now()));
    }

    /// One scan of `d` by `scanner` at a time, however many ask; it runs
    /// detached, so a client that stops waiting does not cancel it, and
    /// within [`SCAN_LIMIT`]. [`Busy`] when 256 other scans are in progress.
    fn flight(
        self: &Arc<Self>,
        scanner: &str,
        repository: &RepoName,
        d: &Digest,
        mime_type: &str,
    ) -> std::result::Result<ScanFlight, Busy> {
        self.flights.join_or_start(
            format!("{scanner} {d}"),
            || format!("the scan of {repository}@{d} by {scanner}"),
            || {
                let (this, scanner, repo, digest, mt) = (
                    self.clone(),
                    scanner.to_owned(),
                    repository.clone(),
                    d.clone(),
                    mime_type.to_owned(),
                );
                let progress = InProgress::new(self.counters.clone(), &scanner);
                async move {
                    let r = this.run_scan(&scanner, &repo, &digest, &mt).await;
                    progress.finish(r.is_ok());
                    r
                }
            },
        )
    }

    async fn run_scan(
        &self,
        scanner: &str,
        repository: &RepoName,
        d: &Digest,
        mime_type: &str,
    ) -> std::result::Result<ScanRecord, ScanError> {
        let client = self
            .scanners
            .get(scanner)
            .ok_or_else(|| ScanError(format!("no scanner {scanner}")))?;
        let target = ScanTarget {
            registry_url: client.registry_url.clone(),
            authorization: self.credentials.issue(repository, REPORT_DEADLINE),
            repository: repository.clone(),
            digest: d.clone(),
            mime_type: mime_type.to_owned(),
        };
        let id = client.scan(&target).await?;
        let findings = client.report(&id, REPORT_DEADLINE).await?;
        // What the scan before said, for the verdict change (memory or store).
        let previous = self.record(scanner, d).await.ok().flatten();
        let rec = ScanRecord {
            scanned_at_ms: unix_ms(self.clock.now()),
            repository: repository.to_string(),
            mime_type: mime_type.to_owned(),
            findings,
        };
        let bytes = Bytes::from(serde_json::to_vec(&rec).expect("a record serialises"));
        if let Err(e) = self.store.put_meta(&record_key(scanner, d), bytes).await {
            tracing::warn!(error = %e, digest = %d, "scan findings not stored; kept in memory");
        }
        self.remember((scanner.to_owned(), d.clone()), rec.clone());
        tracing::info!(target: "audit", scanner, repository = %repository, digest = %d, findings = rec.findings.len(), "scan finished");
        self.report_change(scanner, repository, d, previous.as_ref(), &rec);
        self.revoke_if_denied(scanner, repository, d, &rec).await;
        Ok(rec)
    }

    /// Reports the scan's verdict when it is not the previous scan's,
    /// under the policy of the rule `repository` falls under (if it uses
    /// `scanner`).
    fn report_change(
        &self,
        scanner: &str,
        repository: &RepoName,
        d: &Digest,
        previous: Option<&ScanRecord>,
        rec: &ScanRecord,
    ) {
        let Some(cache) = self.cache.get().and_then(|w| w.upgrade()) else {
            return;
        };
        let rules = cache.rules();
        let Ok(resolved) = rules.resolve(repository) else {
            return;
        };
        let rule = resolved.rule.name();
        let Some(policy) = self.policies.get(rule).filter(|p| p.scanner == scanner) else {
            return;
        };
        let now = judge(policy, rec, rule, d);
        let before = previous.map(|p| judge(policy, p, rule, d).outcome);
        if before == Some(now.outcome) {
            return;
        }
        self.events.event(&Event::ScanVerdict {
            scanner,
            rule,
            repository,
            digest: d,
            outcome: now.outcome,
            previous: before,
            reason: &now.reason,
            detail: now.detail.as_ref(),
        });
    }

    /// Withdraws the grants of `d` in `repository` when the rule it falls
    /// under enforces a policy of `scanner` that `rec` denies.
    async fn revoke_if_denied(
        &self,
        scanner: &str,
        repository: &RepoName,
        d: &Digest,
        rec: &ScanRecord,
    ) {
        let Some(cache) = self.cache.get().and_then(|w| w.upgrade()) else {
            return;
        };
        let rule = match cache.rules().resolve(repository) {
            Ok(r) => r.rule.name().to_owned(),
            Err(_) => return,
        };
        let Some(policy) = self.policies.get(&rule) else {
            return;
        };
        if policy.scanner != scanner
            || policy.mode != GateMode::Enforce
            || denying(policy, rec).is_empty()
        {
            return;
        }
        match cache.revoke_grants(repository, d).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(target: "audit", rule, repository = %repository, digest = %d, "denied by a scan: grants withdrawn")
            }
            Err(e) => {
                tracing::warn!(repository = %repository, digest = %d, error = %e, "denied by a scan; withdrawing its grants failed")
            }
        }
    }

    /// Rescans every kept scan older than the shortest `rescan` of the
    /// rules that use its scanner.
    async fn rescan_due(self: &Arc<Self>) -> Result<()> {
        let keys = self
            .store
            .list_meta(Some(&cache_core::keys::scans()))
            .await?;
        let now = self.clock.now();
        for key in keys {
            let Some((scanner, d)) = cache_core::keys::parse_scan_record(&key) else {
                continue;
            };
            let Some(every) = self
                .policies
                .values()
                .filter(|p| p.scanner == scanner)
                .map(|p| p.rescan)
                .min()
            else {
                continue;
            };
            // Known fresh from memory: no read (a rescan elsewhere since
            // only makes it fresher).
            let fresh_in_memory = self
                .remembered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(scanner.to_owned(), d.clone()))
                .is_some_and(|(r, _)| age(now, r.scanned_at()) < every);
            if fresh_in_memory {
                continue;
            }
            let Some(rec) = self
                .store
                .get_meta(&key)
                .await?
                .and_then(|b| serde_json::from_slice::<ScanRecord>(&b).ok())
            else {
                continue;
            };
            if age(now, rec.scanned_at()) < every {
                self.remember((scanner.to_owned(), d.clone()), rec);
                continue;
            }
            // Only what the cache holds is rescanned. A verdict on a
            // manifest it does not hold (gc removed it, or it was refused
            // and never kept) goes: its next pull is scanned afresh.
            if self.store.stat(&d).await?.is_none() {
                self.store.delete_meta(&key).await?;
                self.remembered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(scanner.to_owned(), d.clone()));
                continue;
            }
            let Ok(repo) = RepoName::parse(&rec.repository) else {
                continue;
            };
            tracing::info!(scanner, digest = %d, "rescanning");
            let Ok(f) = self.flight(scanner, &repo, &d, &rec.mime_type) else {
                tracing::warn!("too many scans in progress; the remaining rescans wait");
                return Ok(());
            };
            if let Err(e) = f.await {
                tracing::warn!(scanner, digest = %d, error = %e, "rescan failed; the kept findings stand");
            }
        }
        Ok(())
    }
}

/// What a policy makes of a scan's findings.
struct Judged {
    outcome: AdmissionOutcome,
    reason: String,
    /// The findings that deny (the first few), when any do.
    detail: Option<serde_json::Value>,
}

/// Judges `rec` by `policy` (of rule `rule`): allowed, refused, or (in
/// audit mode) audit-only, why, and the top findings that deny.
fn judge(policy: &ScanPolicy, rec: &ScanRecord, rule: &str, d: &Digest) -> Judged {
    let bad = denying(policy, rec);
    if bad.is_empty() {
        return Judged {
            outcome: AdmissionOutcome::Allowed,
            reason: format!(
                "scanned by {}: no finding at or above {}",
                policy.scanner, policy.deny_severity
            ),
            detail: None,
        };
    }
    let top: Vec<String> = bad
        .iter()
        .take(TOP_FINDINGS)
        .map(|f| format!("{} ({}, {} {})", f.id, f.severity, f.package, f.version))
        .collect();
    let reason = format!(
        "{} finding(s) at or above {}: {}{}",
        bad.len(),
        policy.deny_severity,
        top.join(", "),
        if bad.len() > TOP_FINDINGS {
            ", ..."
        } else {
            ""
        }
    );
    Judged {
        outcome: match policy.mode {
            GateMode::Enforce => AdmissionOutcome::Refused,
            GateMode::Audit => AdmissionOutcome::AuditOnly,
        },
        reason,
        detail: Some(serde_json::json!({
            "rule": rule,
            "scanner": policy.scanner,
            "digest": d.as_str(),
            "deny_severity": policy.deny_severity,
            "denying": bad.len(),
            "findings": bad.iter().take(TOP_FINDINGS).collect::<Vec<_>>(),
        })),
    }
}

#[async_trait]
impl Admission for ScanGate {
    async fn admit(&self, req: &AdmissionRequest<'_>) -> Result<Verdict> {
        let inner = &self.inner;
        let Some(policy) = inner.policies.get(req.rule.name()) else {
            return Ok(Verdict::Pass);
        };
        if !scannable(req.parsed) {
            return Ok(Verdict::Pass);
        }
        let d = &req.manifest.digest;
        let kept = inner.record(&policy.scanner, d).await?;
        let now = inner.clock.now();
        let stale = kept
            .as_ref()
            .is_none_or(|r| age(now, r.scanned_at()) >= policy.rescan);
        // A caller that may read only what the cache holds starts no scan:
        // the scanner would pull whatever layers are missing from the
        // upstream on its behalf. The kept findings answer, however old.
        let store_only = req.caller.fetch_policy() == cache_core::FetchPolicy::StoreOnly;
        let (rec, fresh) = match kept {
            // Fresh, or stale with a rescan under way in the background.
            Some(r) if !stale || store_only => (r, false),
            None if store_only => {
                let reason = format!(
                    "{} {}: not scanned yet, and a caller that may only pull what is cached starts no scan",
                    req.repository, req.reference
                );
                return match policy.mode {
                    GateMode::Audit => Ok(Verdict::AuditOnly {
                        reason,
                        fresh: true,
                    }),
                    GateMode::Enforce => Err(Error::denied(reason)),
                };
            }
            Some(r) => {
                // The scan runs detached; the kept findings answer meanwhile.
                let _rescan =
                    inner.flight(&policy.scanner, req.repository, d, &req.manifest.media_type);
                (r, false)
            }
            None => {
                let Ok(f) =
                    inner.flight(&policy.scanner, req.repository, d, &req.manifest.media_type)
                else {
                    return Err(Error::unavailable(
                        format!(
                            "{} {}: too many vulnerability scans in progress; retry",
                            req.repository, req.reference
                        ),
                        Some(Duration::from_secs(10)),
                    ));
                };
                match timeout(&*inner.clock, policy.wait, f).await {
                    Some(Ok(r)) => (r, true),
                    Some(Err(e)) => {
                        return match (policy.on_scanner_error, policy.mode) {
                            (OnScannerError::Allow, _) => Ok(Verdict::Allowed {
                                reason: format!(
                                    "vulnerability scan failed ({e}); on_scanner_error = allow"
                                ),
                                fresh: true,
                            }),
                            (OnScannerError::Deny, GateMode::Audit) => Ok(Verdict::AuditOnly {
                                reason: format!(
                                    "vulnerability scan failed ({e}); on_scanner_error = deny"
                                ),
                                fresh: true,
                            }),
                            (OnScannerError::Deny, GateMode::Enforce) => {
                                Err(Error::denied(format!(
                                    "{} {}: vulnerability scan failed ({e}); on_scanner_error = deny",
                                    req.repository, req.reference
                                )))
                            }
                        };
                    }
                    // Audit mode never holds a pull up: it is served, and
                    // the scan's verdict is logged when a later pull meets it.
                    None if policy.mode == GateMode::Audit => {
                        return Ok(Verdict::Allowed {
                            reason: format!(
                                "the vulnerability scan of {d} is not finished within {:?}; audit mode serves",
                                policy.wait
                            ),
                            fresh: true,
                        });
                    }
                    None => {
                        return Err(Error::unavailable(
                            format!(
                                "{} {}: the vulnerability scan of {d} is not finished; retry",
                                req.repository, req.reference
                            ),
                            Some(Duration::from_secs(5)),
                        ));
                    }
                }
            }
        };
        let Judged {
            outcome,
            reason,
            detail,
        } = judge(policy, &rec, req.rule.name(), d);
        match (outcome, detail) {
            (AdmissionOutcome::Refused, Some(detail)) => Err(Error::denied_with(
                format!(
                    "{} {} refused by the vulnerability policy of rule {:?}: {reason}",
                    req.repository,
                    req.reference,
                    req.rule.name()
                ),
                detail,
            )),
            (AdmissionOutcome::AuditOnly, _) => Ok(Verdict::AuditOnly { reason, fresh }),
            _ => Ok(Verdict::Allowed { reason, fresh }),
        }
    }

    fn name(&self) -> &str {
        "vulnerability scan"
    }

    fn describe(&self, rule: &Rule) -> Option<String> {
        let p = self.inner.policies.get(rule.name())?;
        let mode = match p.mode {
            GateMode::Enforce => "refuses",
            GateMode::Audit => "audits (serves)",
        };
        let accepted = if p.allow.is_empty() {
            String::new()
        } else {
            format!(", {} accepted finding(s)", p.allow.len())
        };
        Some(format!(
            "vulnerability scan by {}: {mode} findings at or above {}{accepted}; rescans after {}s; a failing scanner {}",
            p.scanner,
            p.deny_severity,
            p.rescan.as_secs(),
            match p.on_scanner_error {
                OnScannerError::Allow => "allows",
                OnScannerError::Deny => "denies",
            }
        ))
    }

    fn restricts_blobs(&self, rule: &Rule) -> bool {
        self.inner
            .policies
            .get(rule.name())
            .is_some_and(|p| p.mode == GateMode::Enforce)
    }
}
