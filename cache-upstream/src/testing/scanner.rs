//! A scanner adapter for tests, following Harbor's Scanner Adapter API
//! (pluggable-scanner-spec v1.1) to the letter: `GET /api/v1/metadata`,
//! `POST /api/v1/scan` (`202` with an id; the scan runs in the
//! background), `GET /api/v1/scan/{id}/report` (`302` with `Refresh-After`
//! until ready, then Harbor's vulnerability report).
//!
//! A scan pulls the manifest, its config and its layers **from the registry
//! the request names, with the `Authorization` it carries** (as a real
//! adapter does), checks each against its digest, and finds the packages listed in the
//! config label `org.example.packages` (`"openssl 3.0.1, zlib 1.2.13"`).
//! Its vulnerability database maps package names to advisories; a test
//! changes it with [`TestScanner::advise`] (a new CVE published). With
//! [`TestScanner::probe`], each scan also tries the same credential on
//! another repository and records the status it got.
//!
//! Every request body and every answer is checked against the spec's
//! schemas ([`spec_violations`]); what did not conform is kept for the
//! test to assert on ([`TestScanner::violations`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cache_core::Digest;
use serde_json::{Value, json};

/// What a scan request named, as the adapter received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenScan {
    /// `registry.url`.
    pub registry_url: String,
    /// `registry.authorization`.
    pub authorization: String,
    /// `artifact.repository`.
    pub repository: String,
    /// `artifact.digest`.
    pub digest: String,
    /// `artifact.mime_type`.
    pub mime_type: String,
    /// The status the probe of another repository got with the same
    /// credential (`None` without a probe).
    pub probe_status: Option<u16>,
}

#[derive(Debug, Default)]
struct State {
    fit: bool,
    down: bool,
    polls_before_ready: u32,
    advisories: HashMap<String, Vec<(String, String)>>,
    probe: Option<(String, String)>,
    scans: Vec<SeenScan>,
    /// Per scan id: polls left before ready, and the result once done.
    jobs: HashMap<String, (u32, Option<Result<Value, String>>)>,
    violations: Vec<String>,
    metadata_requests: usize,
    report_polls: usize,
    redirects: usize,
}

/// The running adapter; stops when dropped.
#[derive(Debug)]
pub struct TestScanner {
    state: Arc<Mutex<State>>,
    server: super::Served,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

const METADATA: &str = "application/vnd.scanner.adapter.metadata+json; version=1.0";
const SCAN_REQUEST: &str = "application/vnd.scanner.adapter.scan.request+json; version=1.0";
const SCAN_RESPONSE: &str = "application/vnd.scanner.adapter.scan.response+json; version=1.0";
/// The report types it produces: spec v1.1's and v1.2's names for Harbor's
/// vulnerability report.
const REPORTS: [&str; 2] = [
    "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.1",
    "application/vnd.security.vulnerability.report; version=1.1",
];
const ERROR: &str = "application/vnd.scanner.adapter.error+json; version=1.0";
/// The config label listing an image's packages.
pub const PACKAGES_LABEL: &str = "org.example.packages";

impl TestScanner {
    /// Starts one on 127.0.0.1 and a free port: fit for images, reports
    /// ready on the second poll (the first gets `302`).
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            fit: true,
            polls_before_ready: 1,
            ..State::default()
        }));
        let (m, s, r) = (state.clone(), state.clone(), state.clone());
        let server = super::Served::start("127.0.0.1", move |_| {
            axum::Router::new()
                .route(
                    "/api/v1/metadata",
                    axum::routing::get(move |h: HeaderMap| metadata(m.clone(), h)),
                )
                .route(
                    "/api/v1/scan",
                    axum::routing::post(move |req: Request| accept(s.clone(), req)),
                )
                .route(
                    "/api/v1/scan/{id}/report",
                    axum::routing::get(move |id: Path<String>, h: HeaderMap| {
                        report(r.clone(), id.0, h)
                    }),
                )
        });
        TestScanner { state, server }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Publishes an advisory: `package` (any version) has `id` at
    /// `severity` (`Critical`, `High`, ...).
    pub fn advise(&self, package: &str, id: &str, severity: &str) {
        lock(&self.state)
            .advisories
            .entry(package.to_owned())
            .or_default()
            .push((id.to_owned(), severity.to_owned()));
    }

    /// Withdraws every advisory.
    pub fn clear_advisories(&self) {
        lock(&self.state).advisories.clear();
    }

    /// Each scan also tries its credential on `repository:reference`.
    pub fn probe(&self, repository: &str, reference: &str) {
        lock(&self.state).probe = Some((repository.to_owned(), reference.to_owned()));
    }

    /// Whether metadata says it scans image manifests (default yes).
    pub fn set_fit(&self, fit: bool) {
        lock(&self.state).fit = fit;
    }

    /// Answers everything with `500` while down.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// `302`s a report poll gets before the report is ready.
    pub fn set_polls_before_ready(&self, n: u32) {
        lock(&self.state).polls_before_ready = n;
    }

    /// The scan requests received, in order.
    pub fn scans(&self) -> Vec<SeenScan> {
        lock(&self.state).scans.clone()
    }

    /// Scans received whose pulls and findings are done (their reports
    /// are ready once their `302`s are used up). A test on a manual clock
    /// waits for this before moving the clock past a `Refresh-After`, as
    /// real time would pass while the scanner works.
    pub fn scans_done(&self) -> usize {
        lock(&self.state)
            .jobs
            .values()
            .filter(|(_, result)| result.is_some())
            .count()
    }

    /// Report polls answered, and of those, `302`s.
    pub fn polls(&self) -> (usize, usize) {
        let s = lock(&self.state);
        (s.report_polls, s.redirects)
    }

    /// Metadata requests answered.
    pub fn metadata_requests(&self) -> usize {
        lock(&self.state).metadata_requests
    }

    /// What did not conform to the spec, in requests or answers.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.state).violations.clone()
    }
}

fn typed(content_type: &str, status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    typed(ERROR, status, &json!({"error": {"message": message}}))
}

async fn metadata(state: Arc<Mutex<State>>, _h: HeaderMap) -> Response {
    let mut s = lock(&state);
    s.metadata_requests += 1;
    if s.down {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "down");
    }
    let consumes = if s.fit {
        json!([
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json"
        ])
    } else {
        json!(["application/vnd.cncf.helm.chart.v1+json"])
    };
    let body = json!({
        "scanner": {"name": "test-scanner", "vendor": "cache tests", "version": "1.0"},
        "capabilities": [{
            "consumes_mime_types": consumes,
            "produces_mime_types": REPORTS
        }],
        "properties": {"harbor.scanner-adapter/scanner-type": "os-package-vulnerability"}
    });
    for v in spec_violations("ScannerAdapterMetadata", &body) {
        s.violations.push(format!("metadata answer: {v}"));
    }
    typed(METADATA, StatusCode::OK, &body)
}

async fn accept(state: Arc<Mutex<State>>, req: Request) -> Response {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let mut s = lock(&state);
    if s.down {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "down");
    }
    if content_type != SCAN_REQUEST {
        s.violations
            .push(format!("scan request: Content-Type {content_type:?}"));
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        s.violations.push("scan request: not JSON".into());
        return error(StatusCode::BAD_REQUEST, "not JSON");
    };
    let bad = spec_violations("ScanRequest", &v);
    if !bad.is_empty() {
        s.violations
            .extend(bad.iter().map(|b| format!("scan request: {b}")));
        return error(StatusCode::UNPROCESSABLE_ENTITY, &bad.join("; "));
    }
    let field = |a: &str, b: &str| v[a][b].as_str().unwrap_or("").to_owned();
    let seen = SeenScan {
        registry_url: field("registry", "url"),
        authorization: field("registry", "authorization"),
        repository: field("artifact", "repository"),
        digest: field("artifact", "digest"),
        mime_type: field("artifact", "mime_type"),
        probe_status: None,
    };
    let id = format!("scan-{}", s.scans.len() + 1);
    s.scans.push(seen.clone());
    let polls = s.polls_before_ready;
    s.jobs.insert(id.clone(), (polls, None));
    let probe = s.probe.clone();
    drop(s);
    let (st, job) = (state.clone(), id.clone());
    tokio::spawn(async move {
        let result = scan(&st, &seen, probe).await;
        let mut s = lock(&st);
        if let Some(j) = s.jobs.get_mut(&job) {
            j.1 = Some(result);
        }
    });
    let answer = json!({ "id": id });
    typed(SCAN_RESPONSE, StatusCode::ACCEPTED, &answer)
}

/// Pulls the manifest and config as the request says, and finds the
/// packages' advisories.
async fn scan(
    state: &Mutex<State>,
    seen: &SeenScan,
    probe: Option<(String, String)>,
) -> Result<Value, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let base = seen.registry_url.trim_end_matches('/');
    let get = |path: String, accept: &str| {
        let mut rb = http
            .get(format!("{base}{path}"))
            .header(header::ACCEPT.as_str(), accept);
        if !seen.authorization.is_empty() {
            rb = rb.header(header::AUTHORIZATION.as_str(), &seen.authorization);
        }
        rb.send()
    };
    if let Some((repo, reference)) = probe {
        let status = get(format!("/v2/{repo}/manifests/{reference}"), "*/*")
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        let mut s = lock(state);
        if let Some(last) = s.scans.iter_mut().rev().find(|x| x.digest == seen.digest) {
            last.probe_status = Some(status);
        }
    }
    let fetch = |what: &'static str, path: String, accept: String, digest: String| {
        let get = &get;
        async move {
            let r = get(path, &accept)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            if r.status() != reqwest::StatusCode::OK {
                return Err(format!("{what}: HTTP {}", r.status()));
            }
            let b = r.bytes().await.map_err(|e| format!("{what}: {e}"))?;
            let want = Digest::parse(&digest).map_err(|e| format!("{what}: {e}"))?;
            if Digest::sha256_of(&b) != want {
                return Err(format!("{what}: bytes do not match {digest}"));
            }
            Ok::<_, String>(b)
        }
    };
    let manifest = fetch(
        "manifest",
        format!("/v2/{}/manifests/{}", seen.repository, seen.digest),
        seen.mime_type.clone(),
        seen.digest.clone(),
    )
    .await?;
    let m: Value = serde_json::from_slice(&manifest).map_err(|e| format!("manifest: {e}"))?;
    let config_digest = m["config"]["digest"]
        .as_str()
        .ok_or("manifest: no config")?
        .to_owned();
    let config = fetch(
        "config",
        format!("/v2/{}/blobs/{config_digest}", seen.repository),
        "*/*".into(),
        config_digest.clone(),
    )
    .await?;
    let c: Value = serde_json::from_slice(&config).map_err(|e| format!("config: {e}"))?;
    // Every layer too, as a real scanner unpacks the image.
    for layer in m["layers"].as_array().into_iter().flatten() {
        let d = layer["digest"]
            .as_str()
            .ok_or("manifest: a layer without a digest")?;
        fetch(
            "layer",
            format!("/v2/{}/blobs/{d}", seen.repository),
            "*/*".into(),
            d.to_owned(),
        )
        .await?;
    }
    let packages = c["config"]["Labels"][PACKAGES_LABEL]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let s = lock(state);
    let mut vulnerabilities = Vec::new();
    for p in packages.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, version) = p.split_once(' ').unwrap_or((p, ""));
        for (id, severity) in s.advisories.get(name).into_iter().flatten() {
            vulnerabilities.push(json!({
                "id": id,
                "package": name,
                "version": version,
                "fix_version": "",
                "severity": severity,
                "description": format!("{id} in {name}"),
                "links": [format!("https://example.invalid/{id}")],
            }));
        }
    }
    let order = ["Unknown", "Negligible", "Low", "Medium", "High", "Critical"];
    let top = vulnerabilities
        .iter()
        .filter_map(|v| order.iter().position(|o| v["severity"] == *o))
        .max()
        .map_or("Unknown", |i| order[i]);
    Ok(json!({
        "generated_at": "2026-01-01T00:00:00Z",
        "artifact": {
            "repository": seen.repository,
            "digest": seen.digest,
            "mime_type": seen.mime_type,
        },
        "scanner": {"name": "test-scanner", "vendor": "cache tests", "version": "1.0"},
        "severity": top,
        "vulnerabilities": vulnerabilities,
    }))
}

async fn report(state: Arc<Mutex<State>>, id: String, h: HeaderMap) -> Response {
    let mut s = lock(&state);
    s.report_polls += 1;
    if s.down {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "down");
    }
    let accept = h
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !REPORTS.contains(&accept.as_str()) {
        s.violations
            .push(format!("report request: Accept {accept:?}"));
        return error(StatusCode::NOT_IMPLEMENTED, "no such report type");
    }
    let Some(job) = s.jobs.get_mut(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if job.0 > 0 || job.1.is_none() {
        job.0 = job.0.saturating_sub(1);
        s.redirects += 1;
        return (StatusCode::FOUND, [("Refresh-After", "1")]).into_response();
    }
    match job.1.clone().expect("checked") {
        Ok(body) => {
            for v in spec_violations("HarborVulnerabilityReport", &body) {
                s.violations.push(format!("report answer: {v}"));
            }
            typed(&accept, StatusCode::OK, &body)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// The spec's schemas (components of scanner-adapter-openapi-v1.1), in
/// the JSON Schema subset [`spec_violations`] checks: `type`, `required`,
/// `properties`, `items`, `enum`, `$ref`, `format` (`url`, `date-time`).
pub fn spec_schemas() -> Value {
    let s = |t: &str| json!({"type": t});
    json!({
        "Scanner": {"type": "object", "properties": {
            "name": s("string"), "vendor": s("string"), "version": s("string")}},
        "ScannerCapability": {"type": "object",
            "required": ["consumes_mime_types", "produces_mime_types"],
            "properties": {
                "consumes_mime_types": {"type": "array", "items": s("string")},
                "produces_mime_types": {"type": "array", "items": s("string")}}},
        "ScannerAdapterMetadata": {"type": "object", "required": ["scanner", "capabilities"],
            "properties": {
                "scanner": {"$ref": "Scanner"},
                "capabilities": {"type": "array", "items": {"$ref": "ScannerCapability"}},
                "properties": {"type": "object"}}},
        "Registry": {"type": "object", "properties": {
            "url": {"type": "string", "format": "url"},
            "authorization": s("string")}},
        "Artifact": {"type": "object", "properties": {
            "repository": s("string"), "digest": s("string"), "tag": s("string"),
            "mime_type": s("string")}},
        "ScanRequest": {"type": "object", "required": ["registry", "artifact"],
            "properties": {"registry": {"$ref": "Registry"}, "artifact": {"$ref": "Artifact"}}},
        "ScanResponse": {"type": "object", "required": ["id"], "properties": {"id": s("string")}},
        "Severity": {"type": "string",
            "enum": ["Unknown", "Negligible", "Low", "Medium", "High", "Critical"]},
        "VulnerabilityItem": {"type": "object", "properties": {
            "id": s("string"), "package": s("string"), "version": s("string"),
            "fix_version": s("string"), "severity": {"$ref": "Severity"},
            "description": s("string"),
            "links": {"type": "array", "items": {"type": "string", "format": "url"}}}},
        "HarborVulnerabilityReport": {"type": "object", "properties": {
            "generated_at": {"type": "string", "format": "date-time"},
            "artifact": {"$ref": "Artifact"}, "scanner": {"$ref": "Scanner"},
            "severity": {"$ref": "Severity"},
            "vulnerabilities": {"type": "array", "items": {"$ref": "VulnerabilityItem"}}}},
    })
}

/// Where `value` departs from the spec's schema `name` (empty: it conforms).
pub fn spec_violations(name: &str, value: &Value) -> Vec<String> {
    let schemas = spec_schemas();
    let mut out = Vec::new();
    check(&schemas, &schemas[name], value, name, &mut out);
    out
}

fn check(all: &Value, schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        return check(all, &all[r], v, at, out);
    }
    if schema.is_null() {
        out.push(format!("{at}: no such schema"));
        return;
    }
    let ok = match schema["type"].as_str() {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        _ => true,
    };
    if !ok {
        out.push(format!("{at}: not {}", schema["type"]));
        return;
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(v)
    {
        out.push(format!("{at}: {v} is not one of {}", schema["enum"]));
    }
    match (schema["format"].as_str(), v.as_str()) {
        (Some("url"), Some(s)) if url::Url::parse(s).is_err() => {
            out.push(format!("{at}: {s:?} is not a URL"));
        }
        (Some("date-time"), Some(s))
            if !(s.len() >= 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T') =>
        {
            out.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
        }
        _ => {}
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        let key = r.as_str().unwrap_or("");
        if v.get(key).is_none() {
            out.push(format!("{at}: {key} is required"));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            if let Some(x) = v.get(k) {
                check(all, s, x, &format!("{at}.{k}"), out);
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(all, items, x, &format!("{at}[{i}]"), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_check_catches_what_departs_from_the_spec() {
        let good = json!({
            "registry": {"url": "http://127.0.0.1:5000", "authorization": "Basic eDp5"},
            "artifact": {"repository": "library/a", "digest": "sha256:00",
                         "mime_type": "application/vnd.oci.image.manifest.v1+json"}
        });
        assert_eq!(spec_violations("ScanRequest", &good), Vec::<String>::new());
        let mut no_artifact = good.clone();
        no_artifact.as_object_mut().unwrap().remove("artifact");
        assert_eq!(
            spec_violations("ScanRequest", &no_artifact),
            ["ScanRequest: artifact is required"]
        );
        let mut bad_url = good.clone();
        bad_url["registry"]["url"] = json!("not a url");
        assert_eq!(spec_violations("ScanRequest", &bad_url).len(), 1);
        let report = json!({"generated_at": "2026-01-01T00:00:00Z",
            "vulnerabilities": [{"id": "CVE-1", "severity": "Dire"}]});
        assert_eq!(
            spec_violations("HarborVulnerabilityReport", &report),
            [
                r#"HarborVulnerabilityReport.vulnerabilities[0].severity: "Dire" is not one of ["Unknown","Negligible","Low","Medium","High","Critical"]"#
            ]
        );
        assert_eq!(
            spec_violations("ScanResponse", &json!({"id": 7})),
            [r#"ScanResponse.id: not "string""#]
        );
    }
}
