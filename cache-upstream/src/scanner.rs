//! A vulnerability gate through Harbor's Scanner Adapter API (the
//! pluggable-scanner-spec, v1.1 and v1.2), which the Trivy, Clair, Anchore,
//! Aqua and Sysdig adapters implement.
//!
//! [`ScannerClient`] speaks the API: `GET /api/v1/metadata` (the adapter
//! must consume OCI or Docker image manifests and produce Harbor's
//! vulnerability report, whose type it then asks for), `POST /api/v1/scan` naming this cache as the
//! registry with a short-lived pull credential scoped to the one
//! repository (so the scanner pulls the image through the cache, which
//! fetches it once), then `GET /api/v1/scan/{id}/report` until it is ready
//! (`302` with `Refresh-After` meanwhile).
//!
//! [`ScanGate`] is the engine's admission hook: per rule, a manifest is
//! served once a scan of its digest says it has no finding at or above the
//! rule's severity (minus accepted risks). Findings are kept in the cache's
//! store (`scans/<scanner>/<alg>/<hex>`), so they survive restarts and
//! replicas on one store share them, and are refreshed every `rescan` by a
//! background task: a new CVE turns an allowed image into a denied one
//! without anyone pulling it first. A first pull waits for the scan at most
//! `wait`, then gets `503` with `Retry-After` while the scan goes on.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::policy::{Admission, AdmissionRequest, Verdict};
use cache_core::{BlobStore, Digest, Error, MetaKey, RepoName, Result, Rule};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::auth::Secret;

/// The report media type asked for when the scanner's metadata is not
/// known (spec v1.1's).
pub const REPORT_TYPE: &str =
    "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.1";
/// Harbor's vulnerability report as spec v1.2 names it (preferred when a
/// scanner lists it).
pub const SECURITY_REPORT_TYPE: &str = "application/vnd.security.vulnerability.report; version=1.1";
/// The family of spec v1.0/v1.1 report types.
const HARBOR_REPORT_FAMILY: &str = "application/vnd.scanner.adapter.vuln.report.harbor+json";
/// The scan request media type.
pub const SCAN_REQUEST_TYPE: &str =
    "application/vnd.scanner.adapter.scan.request+json; version=1.0";
/// The scan response media type.
pub const SCAN_RESPONSE_TYPE: &str =
    "application/vnd.scanner.adapter.scan.response+json; version=1.0";
/// The metadata media type.
pub const METADATA_TYPE: &str = "application/vnd.scanner.adapter.metadata+json; version=1.0";
/// Image manifest types a scanner must consume.
pub const IMAGE_MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// The most of a scanner's answer read (reports of big images are large).
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Findings kept per digest (the most severe first).
const MAX_FINDINGS: usize = 500;
/// Findings kept in memory (the store has them all).
const MAX_REMEMBERED: usize = 10_000;
/// How long findings are taken from memory before the store is read again
/// (another instance on the store may have rescanned).
const REMEMBER_FOR: Duration = Duration::from_secs(30);
/// Scans in progress at most (each holds a detached task and a credential).
const MAX_SCANS_IN_FLIGHT: usize = 256;
/// Findings named in a refusal.
const TOP_FINDINGS: usize = 5;

/// A vulnerability's severity, in the spec's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// Not yet rated.
    Unknown,
    /// Theoretical.
    Negligible,
    /// Hard to exploit.
    Low,
    /// Exploitable by many.
    Medium,
    /// Serious.
    High,
    /// World-burning.
    Critical,
}

impl Severity {
    /// Parses `low`, `Medium`, ... (any case).
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s.to_ascii_lowercase().as_str() {
            "unknown" => Severity::Unknown,
            "negligible" => Severity::Negligible,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One finding of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `CVE-2024-0001`.
    pub id: String,
    /// How bad.
    pub severity: Severity,
    /// The package it is in.
    #[serde(default)]
    pub package: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// The version that fixes it, if any.
    #[serde(default)]
    pub fix_version: String,
}

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

/// Why a scan could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError(pub String);

/// Why a scanner is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    /// It did not answer usably (it may later).
    Unreachable(ScanError),
    /// It answered, and does not scan image manifests into Harbor's
    /// vulnerability report.
    Unfit(String),
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::Unreachable(e) => e.fmt(f),
            MetadataError::Unfit(m) => f.write_str(m),
        }
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A scanner adapter, spoken to over HTTP.
#[derive(Debug)]
pub struct ScannerClient {
    name: String,
    base: url::Url,
    http: reqwest::Client,
    token: Option<Secret>,
    registry_url: String,
    /// The report type its metadata offered (`None`: not known yet).
    report_type: Mutex<Option<String>>,
}

/// A scan to ask for.
#[derive(Debug, Clone)]
pub struct ScanTarget {
    /// The registry the scanner pulls from: this cache, as the scanner reaches it.
    pub registry_url: String,
    /// The `Authorization` header value the scanner pulls with.
    pub authorization: Secret,
    /// The repository.
    pub repository: RepoName,
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest's media type.
    pub mime_type: String,
}

impl ScannerClient {
    /// A client of the adapter at `url` (`http://127.0.0.1:8080`), named
    /// `name` in records and logs; `token` is sent as a bearer;
    /// `registry_url` is where the scanner reaches this cache to pull.
    pub fn new(
        name: &str,
        url: &str,
        token: Option<Secret>,
        registry_url: &str,
    ) -> std::result::Result<Self, String> {
        let mut base =
            url::Url::parse(url).map_err(|e| format!("scanner {name}: url {url:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("scanner {name}: url {url:?}: not http(s)"));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("scanner {name}: {e}"))?;
        Ok(ScannerClient {
            name: name.to_owned(),
            base,
            http,
            token,
            registry_url: registry_url.trim_end_matches('/').to_owned(),
            report_type: Mutex::new(None),
        })
    }

    /// The scanner's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = self.base.join(path).expect("a relative API path");
        let rb = self.http.request(method, url);
        match &self.token {
            Some(t) => rb.bearer_auth(t.expose()),
            None => rb,
        }
    }

    async fn body(&self, r: reqwest::Response) -> std::result::Result<Bytes, ScanError> {
        if r.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
            return Err(ScanError(format!(
                "scanner {}: answer too large",
                self.name
            )));
        }
        let b = r
            .bytes()
            .await
            .map_err(|e| ScanError(format!("scanner {}: {e}", self.name)))?;
        if b.len() > MAX_ANSWER {
            return Err(ScanError(format!(
                "scanner {}: answer too large",
                self.name
            )));
        }
        Ok(b)
    }

    /// `GET /api/v1/metadata`: the scanner's name and version, after
    /// checking it scans image manifests into Harbor's report.
    pub async fn metadata(&self) -> std::result::Result<String, MetadataError> {
        let err = |m: String| {
            MetadataError::Unreachable(ScanError(format!("scanner {}: metadata: {m}", self.name)))
        };
        let r = self
            .request(reqwest::Method::GET, "api/v1/metadata")
            .header(reqwest::header::ACCEPT, METADATA_TYPE)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if r.status() != StatusCode::OK {
            return Err(err(format!("HTTP {}", r.status())));
        }
        let body = self.body(r).await.map_err(MetadataError::Unreachable)?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| err(e.to_string()))?;
        let Some(report_type) = pick_report_type(&v) else {
            return Err(MetadataError::Unfit(format!(
                "scanner {}: it does not scan image manifests into Harbor's vulnerability report",
                self.name
            )));
        };
        *self.report_type.lock().unwrap_or_else(|p| p.into_inner()) = Some(report_type);
        Ok(format!(
            "{} {}",
            v["scanner"]["name"].as_str().unwrap_or("?"),
            v["scanner"]["version"].as_str().unwrap_or("?")
        ))
    }

    /// `POST /api/v1/scan`: the scan's id.
    pub async fn scan(&self, target: &ScanTarget) -> std::result::Result<String, ScanError> {
        let err = |m: String| ScanError(format!("scanner {}: scan request: {m}", self.name));
        let body = serde_json::json!({
            "registry": {
                "url": target.registry_url,
                "authorization": target.authorization.expose(),
            },
            "artifact": {
                "repository": target.repository.as_str(),
                "digest": target.digest.as_str(),
                "mime_type": target.mime_type,
            },
        });
        let r = self
            .request(reqwest::Method::POST, "api/v1/scan")
            .header(reqwest::header::CONTENT_TYPE, SCAN_REQUEST_TYPE)
            .header(reqwest::header::ACCEPT, SCAN_RESPONSE_TYPE)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if r.status() != StatusCode::ACCEPTED {
            return Err(err(format!("HTTP {}", r.status())));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&self.body(r).await?).map_err(|e| err(e.to_string()))?;
        v["id"]
            .as_str()
            .filter(|id| !id.is_empty() && id.len() <= 256 && !id.contains('/'))
            .map(str::to_owned)
            .ok_or_else(|| err("no usable id".into()))
    }

    /// `GET /api/v1/scan/{id}/report` until ready (following
    /// `Refresh-After`, at most `deadline`): the findings, most severe first.
    pub async fn report(
        &self,
        id: &str,
        deadline: Duration,
    ) -> std::result::Result<Vec<Finding>, ScanError> {
        let err = |m: String| ScanError(format!("scanner {}: report {id}: {m}", self.name));
        let known = || {
            self.report_type
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        if known().is_none() {
            // Not answering at start: learn what it produces now (a failure
            // here shows again below).
            let _ = self.metadata().await;
        }
        let accept = known().unwrap_or_else(|| REPORT_TYPE.to_owned());
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let r = self
                .request(reqwest::Method::GET, &format!("api/v1/scan/{id}/report"))
                .header(reqwest::header::ACCEPT, &accept)
                .send()
                .await
                .map_err(|e| err(e.to_string()))?;
            match r.status() {
                StatusCode::OK => {
                    let v: serde_json::Value = serde_json::from_slice(&self.body(r).await?)
                        .map_err(|e| err(format!("not JSON: {e}")))?;
                    return parse_findings(&v).map_err(err);
                }
                StatusCode::FOUND => {
                    let after = r
                        .headers()
                        .get("refresh-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(1)
                        .clamp(1, 60);
                    let next = tokio::time::Instant::now() + Duration::from_secs(after);
                    if next > until {
                        return Err(err(format!("not ready within {deadline:?}")));
                    }
                    tokio::time::sleep_until(next).await;
                }
                s => return Err(err(format!("HTTP {s}"))),
            }
        }
    }
}

/// The vulnerability report type to ask a scanner for, from its metadata:
/// of a capability that consumes image manifests (and is not of another
/// `type` than `vulnerability`), Harbor's report as spec v1.2 names it if
/// listed, else a spec v1.0/v1.1 one. `None`: it does not scan images into
/// Harbor's vulnerability report.
pub fn pick_report_type(metadata: &serde_json::Value) -> Option<String> {
    let caps = metadata["capabilities"].as_array()?;
    let strings = |c: &serde_json::Value, k: &str| -> Vec<String> {
        c[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut fallback = None;
    for c in caps {
        if c["type"].as_str().is_some_and(|t| t != "vulnerability") {
            continue;
        }
        if !strings(c, "consumes_mime_types")
            .iter()
            .any(|t| IMAGE_MANIFEST_TYPES.contains(&t.as_str()))
        {
            continue;
        }
        let produces = strings(c, "produces_mime_types");
        if produces.iter().any(|t| t == SECURITY_REPORT_TYPE) {
            return Some(SECURITY_REPORT_TYPE.to_owned());
        }
        if fallback.is_none() {
            fallback = produces
                .into_iter()
                .find(|t| t.starts_with(HARBOR_REPORT_FAMILY));
        }
    }
    fallback
}

/// The findings of a Harbor vulnerability report, most severe first.
pub fn parse_findings(v: &serde_json::Value) -> std::result::Result<Vec<Finding>, String> {
    let items = v["vulnerabilities"]
        .as_array()
        .ok_or("no vulnerabilities list")?;
    let mut out = Vec::with_capacity(items.len().min(MAX_FINDINGS));
    for item in items {
        let id = item["id"].as_str().ok_or("a finding without an id")?;
        let severity = item["severity"]
            .as_str()
            .and_then(Severity::parse)
            .ok_or_else(|| format!("finding {id}: no known severity"))?;
        let s = |k: &str| item[k].as_str().unwrap_or("").chars().take(200).collect();
        out.push(Finding {
            id: id.chars().take(200).collect(),
            severity,
            package: s("package"),
            version: s("version"),
            fix_version: s("fix_version"),
        });
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
    out.truncate(MAX_FINDINGS);
    Ok(out)
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

/// Refuse or only audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateMode {
    /// Refuse what the policy denies: `403 DENIED` with the top findings.
    Enforce,
    /// Serve it, logging and counting the refusal it would have been.
    Audit,
}

/// What a scanner failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnScannerError {
    /// Refuse (`403`), as for a denied image.
    Deny,
    /// Serve, logging it.
    Allow,
}

/// A rule's vulnerability policy.
#[derive(Debug, Clone)]
pub struct ScanPolicy {
    /// The scanner's name.
    pub scanner: String,
    /// Deny findings at or above this.
    pub deny_severity: Severity,
    /// Accepted risks: finding ids that never deny.
    pub allow: HashSet<String>,
    /// Enforce or audit.
    pub mode: GateMode,
    /// How old a scan may be before the digest is scanned again.
    pub rescan: Duration,
    /// What a scanner failure means.
    pub on_scanner_error: OnScannerError,
    /// How long a first pull waits for the scan before `503`.
    pub wait: Duration,
}

/// Makes short-lived pull credentials for one repository, which the server
/// accepts as [`Caller::Scanner`](cache_core::Caller::Scanner) for that
/// repository only.
pub trait PullCredentials: Send + Sync + fmt::Debug {
    /// An `Authorization` header value that pulls `repository` for `ttl`.
    fn issue(&self, repository: &RepoName, ttl: Duration) -> Secret;
}

type Flight = Shared<BoxFuture<'static, std::result::Result<ScanRecord, ScanError>>>;

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
    scanners: HashMap<String, Arc<ScannerClient>>,
    policies: HashMap<String, ScanPolicy>,
    store: Arc<dyn BlobStore>,
    credentials: Arc<dyn PullCredentials>,
    remembered: Mutex<HashMap<(String, Digest), (ScanRecord, std::time::Instant)>>,
    cache: std::sync::OnceLock<cache_core::WeakCache>,
    flights: Mutex<HashMap<(String, Digest), Flight>>,
    counters: Arc<ScanCounters>,
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
    MetaKey::parse(&format!("scans/{scanner}/{}/{}", d.algorithm(), d.hex()))
        .expect("scanner names are checked at construction; digests are valid")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl ScanGate {
    /// A gate with `scanners`, the rules' `policies` (by rule name), the
    /// cache's `store` for findings, and `credentials` for the scanners'
    /// pulls.
    pub fn new(
        scanners: Vec<ScannerClient>,
        policies: HashMap<String, ScanPolicy>,
        store: Arc<dyn BlobStore>,
        credentials: Arc<dyn PullCredentials>,
    ) -> std::result::Result<ScanGate, String> {
        let scanners: HashMap<String, Arc<ScannerClient>> = scanners
            .into_iter()
            .map(|s| (s.name.clone(), Arc::new(s)))
            .collect();
        for (name, s) in &scanners {
            if MetaKey::parse(&format!("scans/{name}")).is_err() {
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
                flights: Mutex::new(HashMap::new()),
                counters: Arc::default(),
            }),
        })
    }

    /// Counts into `counters` (shared with the gate this one replaces, so
    /// the counts survive a reload). Only before the gate is cloned.
    pub fn with_counters(mut self, counters: Arc<ScanCounters>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.counters = counters;
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

    /// Starts the background rescans: each kept scan older than the
    /// `rescan` of its scanner's rules is run again, checked every quarter
    /// of the shortest `rescan` (1 s to 5 min). Ends when the gate is
    /// dropped (a reload that replaces it).
    pub fn spawn_rescans(&self) {
        let Some(shortest) = self.inner.policies.values().map(|p| p.rescan).min() else {
            return;
        };
        let every = (shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = inner.rescan_due().await {
                    tracing::warn!(error = %e, "rescans failed; trying again later");
                }
            }
        });
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
        match self.inner.clone().flight(scanner, repository, d, mime_type) {
            Some(f) => f.await,
            None => Err(ScanError(format!(
                "{MAX_SCANS_IN_FLIGHT} scans are in progress; try again later"
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
            && at.elapsed() < REMEMBER_FOR
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
        m.insert(key, (r, std::time::Instant::now()));
    }

    /// One scan of `d` by `scanner` at a time, however many ask; it runs
    /// detached, so a client that stops waiting does not cancel it. `None`
    /// when 256 other scans are in progress.
    fn flight(
        self: Arc<Self>,
        scanner: &str,
        repository: &RepoName,
        d: &Digest,
        mime_type: &str,
    ) -> Option<Flight> {
        let key = (scanner.to_owned(), d.clone());
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = flights.get(&key) {
            return Some(f.clone());
        }
        if flights.len() >= MAX_SCANS_IN_FLIGHT {
            return None;
        }
        let (this, scanner_name, repo, digest, mt) = (
            self.clone(),
            scanner.to_owned(),
            repository.clone(),
            d.clone(),
            mime_type.to_owned(),
        );
        let counters = self.counters.clone();
        counters
            .in_progress
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let job = async move {
            let r = this.run_scan(&scanner_name, &repo, &digest, &mt).await;
            this.counters.count(&scanner_name, r.is_ok());
            this.counters
                .in_progress
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            this.flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(scanner_name, digest));
            r
        };
        let handle = tokio::spawn(job);
        let f: Flight = async move {
            handle
                .await
                .unwrap_or_else(|e| Err(ScanError(format!("scan task ended: {e}"))))
        }
        .boxed()
        .shared();
        flights.insert(key, f.clone());
        Some(f)
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
            authorization: self.credentials.issue(repository, Duration::from_secs(900)),
            repository: repository.clone(),
            digest: d.clone(),
            mime_type: mime_type.to_owned(),
        };
        let id = client.scan(&target).await?;
        let findings = client.report(&id, Duration::from_secs(900)).await?;
        let rec = ScanRecord {
            scanned_at_ms: now_ms(),
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
        self.revoke_if_denied(scanner, repository, d, &rec).await;
        Ok(rec)
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
        let prefix = MetaKey::parse("scans").expect("static key");
        let keys = self.store.list_meta(Some(&prefix)).await?;
        let now = SystemTime::now();
        for key in keys {
            let parts: Vec<&str> = key.as_str().split('/').collect();
            let [_, scanner, alg, hex] = parts[..] else {
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
            let Ok(d) = Digest::parse(&format!("{alg}:{hex}")) else {
                continue;
            };
            // Known fresh from memory: no read (a rescan elsewhere since
            // only makes it fresher).
            let fresh_in_memory = self
                .remembered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(scanner.to_owned(), d.clone()))
                .is_some_and(|(r, _)| {
                    now.duration_since(r.scanned_at()).unwrap_or_default() < every
                });
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
            if now.duration_since(rec.scanned_at()).unwrap_or_default() < every {
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
            let Some(f) = self.clone().flight(scanner, &repo, &d, &rec.mime_type) else {
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

/// Image config types: what a manifest an image scanner scans has.
const IMAGE_CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Whether a manifest is something a vulnerability scanner scans: an image
/// manifest (with an image config: not a Helm chart or another artifact)
/// whose layers are not all signature or attestation payloads.
fn scannable(parsed: &cache_core::manifest::ParsedManifest) -> bool {
    let image_config = parsed.config.as_ref().is_some_and(|c| {
        c.media_type
            .as_deref()
            .is_some_and(|t| IMAGE_CONFIG_TYPES.contains(&t))
    });
    image_config
        && !parsed.layers.is_empty()
        && !parsed.layers.iter().all(|l| {
            l.media_type
                .as_deref()
                .is_some_and(|t| cache_core::cosign::ARTIFACT_LAYER_TYPES.contains(&t))
        })
}

/// The findings that deny under `policy`, most severe first.
fn denying<'a>(policy: &ScanPolicy, rec: &'a ScanRecord) -> Vec<&'a Finding> {
    rec.findings
        .iter()
        .filter(|f| f.severity >= policy.deny_severity && !policy.allow.contains(&f.id))
        .collect()
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
        let stale = kept.as_ref().is_none_or(|r| {
            SystemTime::now()
                .duration_since(r.scanned_at())
                .unwrap_or_default()
                >= policy.rescan
        });
        let (rec, fresh) = match kept {
            // Fresh, or stale with a rescan under way in the background.
            Some(r) if !stale => (r, false),
            Some(r) => {
                // The scan runs detached; the kept findings answer meanwhile.
                let _rescan = inner.clone().flight(
                    &policy.scanner,
                    req.repository,
                    d,
                    &req.manifest.media_type,
                );
                (r, false)
            }
            None => {
                let Some(f) = inner.clone().flight(
                    &policy.scanner,
                    req.repository,
                    d,
                    &req.manifest.media_type,
                ) else {
                    return Err(Error::unavailable(
                        format!(
                            "{} {}: too many vulnerability scans in progress; retry",
                            req.repository, req.reference
                        ),
                        Some(Duration::from_secs(10)),
                    ));
                };
                match tokio::time::timeout(policy.wait, f).await {
                    Ok(Ok(r)) => (r, true),
                    Ok(Err(e)) => {
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
                    Err(_) if policy.mode == GateMode::Audit => {
                        return Ok(Verdict::Allowed {
                            reason: format!(
                                "the vulnerability scan of {d} is not finished within {:?}; audit mode serves",
                                policy.wait
                            ),
                            fresh: true,
                        });
                    }
                    Err(_) => {
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
        let bad = denying(policy, &rec);
        if bad.is_empty() {
            return Ok(Verdict::Allowed {
                reason: format!(
                    "scanned by {}: no finding at or above {}",
                    policy.scanner, policy.deny_severity
                ),
                fresh,
            });
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
        match policy.mode {
            GateMode::Enforce => Err(Error::denied_with(
                format!(
                    "{} {} refused by the vulnerability policy of rule {:?}: {reason}",
                    req.repository,
                    req.reference,
                    req.rule.name()
                ),
                serde_json::json!({
                    "rule": req.rule.name(),
                    "scanner": policy.scanner,
                    "digest": d.as_str(),
                    "deny_severity": policy.deny_severity,
                    "denying": bad.len(),
                    "findings": bad.iter().take(TOP_FINDINGS).collect::<Vec<_>>(),
                }),
            )),
            GateMode::Audit => Ok(Verdict::AuditOnly { reason, fresh }),
        }
    }

    fn restricts_blobs(&self, rule: &Rule) -> bool {
        self.inner
            .policies
            .get(rule.name())
            .is_some_and(|p| p.mode == GateMode::Enforce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_most_severe_first_and_junk_is_refused() {
        let v = serde_json::json!({"vulnerabilities": [
            {"id": "CVE-1", "severity": "Low", "package": "a", "version": "1"},
            {"id": "CVE-2", "severity": "Critical", "package": "b", "version": "2"},
            {"id": "CVE-3", "severity": "Medium"},
        ]});
        let f = parse_findings(&v).unwrap();
        assert_eq!(
            f.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
            ["CVE-2", "CVE-3", "CVE-1"]
        );
        assert!(parse_findings(&serde_json::json!({})).is_err());
        assert!(
            parse_findings(
                &serde_json::json!({"vulnerabilities": [{"id": "x", "severity": "Dire"}]})
            )
            .is_err()
        );
        assert!(Severity::Critical > Severity::High && Severity::Low > Severity::Negligible);
        assert_eq!(Severity::parse("HIGH"), Some(Severity::High));
    }

    #[test]
    fn images_are_scanned_and_other_artifacts_pass() {
        let parse = |config_type: &str, layer_type: &str| {
            let m = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": config_type, "digest": format!("sha256:{}", "a".repeat(64)), "size": 2},
                "layers": [{"mediaType": layer_type, "digest": format!("sha256:{}", "b".repeat(64)), "size": 3}],
            });
            cache_core::manifest::ParsedManifest::parse(m.to_string().as_bytes()).unwrap()
        };
        let oci = "application/vnd.oci.image.config.v1+json";
        let tar = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert!(scannable(&parse(oci, tar)));
        assert!(scannable(&parse(
            "application/vnd.docker.container.image.v1+json",
            tar
        )));
        // A Helm chart, a cosign signature: not images.
        assert!(!scannable(&parse(
            "application/vnd.cncf.helm.config.v1+json",
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
        )));
        assert!(!scannable(&parse(oci, cache_core::cosign::SIMPLE_SIGNING)));
        let index = serde_json::json!({"schemaVersion": 2, "manifests": []});
        assert!(!scannable(
            &cache_core::manifest::ParsedManifest::parse(index.to_string().as_bytes()).unwrap()
        ));
    }

    #[test]
    fn the_report_type_is_negotiated_from_the_metadata() {
        let oci = "application/vnd.oci.image.manifest.v1+json";
        let meta =
            |caps: serde_json::Value| serde_json::json!({"scanner": {}, "capabilities": caps});
        // Spec v1.1 adapters.
        let v11 = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.1";
        assert_eq!(
            pick_report_type(&meta(serde_json::json!([
                {"consumes_mime_types": [oci], "produces_mime_types": ["application/vnd.scanner.adapter.vuln.report.raw", v11]}
            ]))),
            Some(v11.to_owned())
        );
        // Spec v1.2 adapters (Trivy's): the security report is preferred; an
        // SBOM capability is not a vulnerability scanner.
        assert_eq!(
            pick_report_type(&meta(serde_json::json!([
                {"type": "sbom", "consumes_mime_types": [oci], "produces_mime_types": ["application/vnd.security.sbom.report+json; version=1.0"]},
                {"type": "vulnerability", "consumes_mime_types": [oci], "produces_mime_types": [
                    "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0", SECURITY_REPORT_TYPE]}
            ]))),
            Some(SECURITY_REPORT_TYPE.to_owned())
        );
        for unfit in [
            serde_json::json!([{"type": "sbom", "consumes_mime_types": [oci], "produces_mime_types": [SECURITY_REPORT_TYPE]}]),
            serde_json::json!([{"consumes_mime_types": ["application/vnd.cncf.helm.chart.v1+json"], "produces_mime_types": [v11]}]),
            serde_json::json!([{"consumes_mime_types": [oci], "produces_mime_types": ["application/vnd.scanner.adapter.vuln.report.raw"]}]),
            serde_json::json!([]),
        ] {
            assert_eq!(pick_report_type(&meta(unfit.clone())), None, "{unfit}");
        }
        assert_eq!(pick_report_type(&serde_json::json!({})), None);
    }
}

/// The client against a scanner that misbehaves: every answer it gives is
/// bounded or refused with a message, never a hang or a crash.
#[cfg(test)]
mod hostile_scanner {
    use super::*;
    use axum::http::StatusCode as S;
    use axum::response::IntoResponse;

    /// Serves `app` on 127.0.0.1 for the test's lifetime: its base URL.
    async fn serve(app: axum::Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        format!("http://{addr}")
    }

    fn client(url: &str) -> ScannerClient {
        ScannerClient::new("hostile", url, None, "http://127.0.0.1:5000").unwrap()
    }

    fn target() -> ScanTarget {
        ScanTarget {
            registry_url: "http://127.0.0.1:5000".into(),
            authorization: Secret::new("Basic eDp5"),
            repository: RepoName::parse("library/app").unwrap(),
            digest: Digest::sha256_of(b"m"),
            mime_type: IMAGE_MANIFEST_TYPES[0].into(),
        }
    }

    #[tokio::test]
    async fn oversized_answers_bad_ids_and_endless_polling_are_refused() {
        let huge = "x".repeat(MAX_ANSWER + 1);
        let app = axum::Router::new()
            .route(
                "/api/v1/metadata",
                axum::routing::get(move || {
                    let huge = huge.clone();
                    async move { huge }
                }),
            )
            .route(
                "/api/v1/scan",
                axum::routing::post(|| async {
                    (S::ACCEPTED, r#"{"id":"../../admin"}"#).into_response()
                }),
            )
            .route(
                "/api/v1/scan/{id}/report",
                axum::routing::get(|| async {
                    // Not ready, and says to ask again at once, forever.
                    (S::FOUND, [("Refresh-After", "0")]).into_response()
                }),
            );
        let c = client(&serve(app).await);
        let e = c.metadata().await.unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        let e = c.scan(&target()).await.unwrap_err().0;
        assert!(e.contains("no usable id"), "{e}");
        let started = tokio::time::Instant::now();
        let e = c.report("abc", Duration::from_secs(3)).await.unwrap_err().0;
        assert!(e.contains("not ready within"), "{e}");
        // Refresh-After 0 is read as 1 s: three polls at most, not a spin.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn reports_are_checked_and_bounded() {
        let many: Vec<serde_json::Value> = (0..2000)
            .map(|i| {
                let severity = if i % 1000 == 7 { "Critical" } else { "Low" };
                serde_json::json!({"id": format!("CVE-{i}"), "severity": severity, "package": "p".repeat(1000)})
            })
            .collect();
        let report = serde_json::json!({ "vulnerabilities": many }).to_string();
        let app = axum::Router::new().route(
            "/api/v1/scan/{id}/report",
            axum::routing::get(
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let report = report.clone();
                    async move {
                        match id.as_str() {
                            "many" => report.into_response(),
                            "dire" => r#"{"vulnerabilities":[{"id":"X","severity":"Dire"}]}"#
                                .into_response(),
                            "html" => "<html>".into_response(),
                            _ => S::NOT_FOUND.into_response(),
                        }
                    }
                },
            ),
        );
        let c = client(&serve(app).await);
        let f = c.report("many", Duration::from_secs(5)).await.unwrap();
        assert_eq!(f.len(), MAX_FINDINGS);
        assert_eq!(
            f.iter()
                .take(2)
                .map(|f| (f.id.as_str(), f.severity))
                .collect::<Vec<_>>(),
            [
                ("CVE-1007", Severity::Critical),
                ("CVE-7", Severity::Critical)
            ],
            "the most severe are kept"
        );
        assert!(f.iter().all(|f| f.package.len() <= 200));
        for (id, says) in [
            ("dire", "no known severity"),
            ("html", "not JSON"),
            ("gone", "HTTP 404"),
        ] {
            let e = c.report(id, Duration::from_secs(5)).await.unwrap_err().0;
            assert!(e.contains(says), "{id}: {e}");
        }
    }
}
