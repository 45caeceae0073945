//! The scanner adapter's HTTP API (Harbor's pluggable-scanner-spec):
//! metadata, scan requests and reports, each answer bounded.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cache_core::runtime::{Aborted, TokioRuntime};
use cache_core::{Clock, Digest, RepoName};
use reqwest::StatusCode;

use super::policy::Severity;
use crate::auth::Secret;

use super::policy::Finding;

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

impl From<Aborted> for ScanError {
    /// A scan that took longer than its time limit, or failed on a bug.
    fn from(a: Aborted) -> Self {
        ScanError(a.to_string())
    }
}

/// A scanner adapter, spoken to over HTTP.
///
/// Report polling waits on its [`Clock`] (tokio's unless
/// [`with_clock`](Self::with_clock) says otherwise; a `ScanGate` hands its
/// scanners its own); each HTTP request is bounded by the HTTP client's
/// own timeouts (5 s to connect, 30 s in all).
#[derive(Debug)]
pub struct ScannerClient {
    pub(crate) name: String,
    base: url::Url,
    http: reqwest::Client,
    token: Option<Secret>,
    pub(crate) registry_url: String,
    /// The report type its metadata offered (`None`: not known yet).
    report_type: Mutex<Option<String>>,
    pub(super) clock: Arc<dyn Clock>,
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
            clock: Arc::new(TokioRuntime::ambient()),
        })
    }

    /// Polls for reports on `clock` (the engine's, a manual one in tests)
    /// instead of tokio's timers and the system clock.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
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

    /// `GET /api/v1/scan/{id}/report` until ready: the findings, most
    /// severe first. While the report is not ready (`302`), the next poll
    /// is `Refresh-After` seconds later (1 s to 60 s; 1 s when missing or
    /// unreadable) on the client's clock; a poll that would come later than
    /// `deadline` after the first is not made, and the report is given up.
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
        let until = self.clock.now() + deadline;
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
                    let after = Duration::from_secs(after);
                    if self.clock.now() + after > until {
                        return Err(err(format!("not ready within {deadline:?}")));
                    }
                    self.clock.sleep(after).await;
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
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use axum::http::StatusCode as S;
    use axum::response::IntoResponse;
    use cache_core::testing::ManualClock;

    /// Runs `fut` to its end on `clock`, moving the clock to each sleep it
    /// waits on as soon as it waits: its output, and how long each sleep
    /// was. Real time barely passes (at most 10 s, or the test fails).
    async fn drive<T>(clock: &ManualClock, fut: impl Future<Output = T>) -> (T, Vec<Duration>) {
        let run = async {
            let mut fut = std::pin::pin!(fut);
            let mut slept = Vec::new();
            loop {
                tokio::select! {
                    out = &mut fut => return (out, slept),
                    () = clock.until_sleeps(|s| !s.is_empty()) => {
                        slept.extend(clock.advance_to_next());
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("finished on the manual clock")
    }

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
        let clock = ManualClock::new();
        let c = client(&serve(app).await).with_clock(clock.clone());
        let e = c.metadata().await.unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        let e = c.scan(&target()).await.unwrap_err().0;
        assert!(e.contains("no usable id"), "{e}");
        let (r, slept) = drive(&clock, c.report("abc", Duration::from_secs(3))).await;
        let e = r.unwrap_err().0;
        assert!(e.contains("not ready within"), "{e}");
        // Refresh-After 0 is read as 1 s: polls at 0, 1, 2 and 3 s, not a spin.
        assert_eq!(slept, [Duration::from_secs(1); 3]);
    }

    #[tokio::test]
    async fn report_polling_waits_refresh_after_on_the_clock_and_gives_up_at_the_deadline() {
        let started = std::time::Instant::now();
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let app = axum::Router::new().route(
            "/api/v1/scan/{id}/report",
            axum::routing::get(
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        match id.as_str() {
                            // Ready at the third poll.
                            "third" if n == 3 => r#"{"vulnerabilities":[]}"#.into_response(),
                            "third" => (S::FOUND, [("Refresh-After", "7")]).into_response(),
                            "hour" => (S::FOUND, [("Refresh-After", "3600")]).into_response(),
                            _ => (S::FOUND, [("Refresh-After", "5")]).into_response(),
                        }
                    }
                },
            ),
        );
        let clock = ManualClock::new();
        let c = client(&serve(app).await).with_clock(clock.clone());
        let t0 = clock.now();

        // Polls at 0, 5 and 10 s; the next would be at 15 s, past 12 s.
        let (r, slept) = drive(&clock, c.report("slow", Duration::from_secs(12))).await;
        let e = r.unwrap_err().0;
        assert!(e.contains("report slow: not ready within 12s"), "{e}");
        assert_eq!(slept, [Duration::from_secs(5); 2]);
        assert_eq!(polls.swap(0, Ordering::SeqCst), 3);
        assert_eq!(
            clock.now().duration_since(t0).unwrap(),
            Duration::from_secs(10)
        );

        // No poll before Refresh-After has passed on the clock.
        let report = tokio::spawn({
            let c = client(c.base.as_ref()).with_clock(clock.clone());
            async move { c.report("third", Duration::from_secs(60)).await }
        });
        let seven = [Duration::from_secs(7)];
        tokio::time::timeout(
            Duration::from_secs(10),
            clock.until_sleeps(move |s| s == seven),
        )
        .await
        .unwrap();
        clock.advance(Duration::from_secs(6));
        assert_eq!(clock.sleeps(), [Duration::from_secs(1)], "still waiting");
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        let (r, slept) = drive(&clock, report).await;
        assert_eq!(r.unwrap(), Ok(vec![]));
        assert_eq!(slept, [Duration::from_secs(1), Duration::from_secs(7)]);
        assert_eq!(polls.swap(0, Ordering::SeqCst), 3);

        // Refresh-After is capped at 60 s.
        let (r, slept) = drive(&clock, c.report("hour", Duration::from_secs(100))).await;
        assert!(r.is_err());
        assert_eq!(slept, [Duration::from_secs(60)]);

        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?} of real time for 94 s on the clock",
            started.elapsed()
        );
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
