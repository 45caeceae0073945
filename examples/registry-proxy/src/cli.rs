//! The subcommands besides `serve`: `check`, `explain`, `warm`, `gc`,
//! `scrub`, `purge`, `verify`, and the calls to the running server
//! (`reload`, `scan`, `sync`). Exit codes: 0 done, 1 the work failed, 2 the input is wrong.

use std::process::ExitCode;
use std::sync::Arc;

use cache_core::events::NoEvents;
use cache_core::manifest::Platform;
use cache_core::{Digest, ImageRef, LocalRef, PullThroughCache, RepoName};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::{build_cache, open_store};
use cache_core::config::parse_size;

fn usage(msg: String) -> ExitCode {
    eprintln!("registry-proxy: {msg}");
    ExitCode::from(2)
}

/// The largest answer an admin call reads.
const MAX_ADMIN_ANSWER: usize = 64 * 1024 * 1024;
/// How long connecting to the admin endpoint may take.
const ADMIN_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `server.admin_listen` of a configuration text, read on its own (so a
/// file that does not validate still names where its server listens).
pub fn admin_listen_of(text: &str) -> Option<std::net::SocketAddr> {
    let v: toml::Value = toml::from_str(text).ok()?;
    v.get("server")?
        .get("admin_listen")?
        .as_str()?
        .parse()
        .ok()
        .filter(|a: &std::net::SocketAddr| a.ip().is_loopback())
}

/// `POST target` to the running server's admin endpoint (the file's
/// `server.admin_listen`), with hyper's HTTP/1.1 client: whether it
/// answered 200, and the body (at most 64 MiB; the whole exchange within
/// `wait`). Only that key is read here: the server validates the file and
/// says what it thinks.
fn admin_post(
    path: Option<&std::path::Path>,
    what: &str,
    target: &str,
    wait: std::time::Duration,
) -> Result<(bool, String), ExitCode> {
    admin_call(path, what, hyper::Method::POST, target, wait)
}

/// The file's loopback `server.admin_listen`, if it names one.
fn admin_address(path: Option<&std::path::Path>) -> Option<std::net::SocketAddr> {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| admin_listen_of(&text))
}

/// [`admin_post`] with another method.
fn admin_call(
    path: Option<&std::path::Path>,
    what: &str,
    method: hyper::Method,
    target: &str,
    wait: std::time::Duration,
) -> Result<(bool, String), ExitCode> {
    let Some(addr) = admin_address(path) else {
        return Err(usage(format!(
            "{what} needs server.admin_listen (a loopback address) in the configuration file"
        )));
    };
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(request(addr, method, target, wait)));
    answer.map_err(|e| {
        eprintln!("registry-proxy: no answer from the server at {addr}: {e}");
        ExitCode::FAILURE
    })
}

/// One `POST target` with an empty body to `addr`: whether the answer is
/// 200, and its body as text.
#[cfg(test)]
async fn post(
    addr: std::net::SocketAddr,
    target: &str,
    wait: std::time::Duration,
) -> Result<(bool, String), String> {
    request(addr, hyper::Method::POST, target, wait).await
}

/// One request with an empty body to `addr`: whether the answer is 200,
/// and its body as text.
async fn request(
    addr: std::net::SocketAddr,
    method: hyper::Method,
    target: &str,
    wait: std::time::Duration,
) -> Result<(bool, String), String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let stream = tokio::time::timeout(ADMIN_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting took over {ADMIN_CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(target)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| format!("{target:?}: {e}"))?;
        // The connection runs beside the exchange; it ends with the runtime.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let ok = resp.status() == hyper::StatusCode::OK;
        let body = Limited::new(resp.into_body(), MAX_ADMIN_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((ok, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(wait, exchange)
        .await
        .map_err(|_| format!("no answer within {wait:?}"))?
}

/// `reload`: asks the running server to re-read its configuration file,
/// and prints its answer. (SIGHUP does the same.)
pub fn reload(path: Option<&std::path::Path>) -> ExitCode {
    match admin_post(
        path,
        "reload",
        "/reload",
        std::time::Duration::from_secs(120),
    ) {
        Ok((ok, body)) => {
            print!("{body}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(code) => code,
    }
}

/// `scan IMAGE`: asks the running server to scan the image now through
/// its vulnerability gate, and prints the findings: 0 when the policy
/// serves it, 1 when it denies it (or the scan failed).
pub fn scan(path: Option<&std::path::Path>, image: &str) -> ExitCode {
    // Parsed here, so what goes into the query is a validated name, tag
    // and digest only (no `&`, `#`, `%` or space can reach it).
    let local = match LocalRef::parse(image) {
        Ok(r) => r,
        Err(e) => return usage(format!("image {image:?}: {e}")),
    };
    let target = format!("/scan?image={local}");
    let (ok, body) = match admin_post(path, "scan", &target, std::time::Duration::from_secs(1800)) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if !ok {
        eprint!("registry-proxy: {body}");
        return ExitCode::FAILURE;
    }
    let scans: Vec<cache_upstream::scanner::ImageScan> = match serde_json::from_str(&body) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("registry-proxy: the server's answer is not a scan list: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", findings_table(image, &scans));
    if scans.iter().any(|s| s.denied && s.mode == "enforce") {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The findings of `scans` as a text table, one block per manifest.
pub fn findings_table(image: &str, scans: &[cache_upstream::scanner::ImageScan]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for s in scans {
        let verdict = match (s.denied, s.mode.as_str()) {
            (false, _) => "allowed".to_owned(),
            (true, "audit") => "would be denied (audit mode: served)".to_owned(),
            (true, _) => "denied".to_owned(),
        };
        let _ = writeln!(
            out,
            "{image}{} {}\nscanner {}: {} finding(s); {verdict} (denies at or above {})",
            s.platform
                .as_deref()
                .map(|p| format!(" [{p}]"))
                .unwrap_or_default(),
            s.digest,
            s.scanner,
            s.findings.len(),
            s.deny_severity,
        );
        if s.findings.is_empty() {
            out.push('\n');
            continue;
        }
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:<24} {:<16} {:<16} DENIES",
            "ID", "SEVERITY", "PACKAGE", "VERSION", "FIXED IN"
        );
        for f in &s.findings {
            let _ = writeln!(
                out,
                "{:<20} {:<10} {:<24} {:<16} {:<16} {}",
                f.id,
                f.severity.to_string(),
                f.package,
                f.version,
                f.fix_version,
                if s.denying.contains(&f.id) {
                    "yes"
                } else {
                    "no"
                }
            );
        }
        out.push('\n');
    }
    out
}

/// `sync [RULE]`: asks the running server to run a rule's sync now (every
/// rule's with a sync policy, without one) and prints what each run did:
/// 0 when every run went without an error, 1 otherwise.
pub fn sync(path: Option<&std::path::Path>, rule: Option<&str>) -> ExitCode {
    let target = match rule {
        // Percent-encoded: a rule's name may hold any character.
        Some(r) => format!("/sync?rule={}", percent_encode(r)),
        None => "/sync".to_owned(),
    };
    let wait = std::time::Duration::from_secs(24 * 3600);
    let (ok, body) = match admin_post(path, "sync", &target, wait) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if !ok {
        eprint!("registry-proxy sync: {body}");
        return ExitCode::FAILURE;
    }
    let reports: Vec<cache_core::SyncReport> = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "registry-proxy sync: the server's answer is not a list of sync reports: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    if reports.is_empty() {
        println!("sync: no rule has a sync policy");
    }
    let mut failed = false;
    for r in &reports {
        if let Some(why) = &r.skipped {
            println!("sync {:?}: not run: {why}", r.rule);
            continue;
        }
        println!(
            "sync {:?}: {} repositor{}, {} tag(s) listed, {} selected, {} new; {} blob(s), {} bytes fetched; {} error(s)",
            r.rule,
            r.repositories,
            if r.repositories == 1 { "y" } else { "ies" },
            r.tags_listed,
            r.tags_seen,
            r.tags_new,
            r.blobs,
            r.bytes,
            r.errors
        );
        for m in &r.error_messages {
            println!("  failed: {m}");
        }
        failed |= r.errors > 0;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `s` with every byte but unreserved ones percent-encoded, for a query.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `purge NAME[:TAG|@DIGEST]`: drops the cache's records of a repository,
/// a tag or a manifest (see `PullThroughCache::purge`), through the
/// running server's admin endpoint when the file names one, else on the
/// store directly (a filesystem store only while no server uses it).
pub async fn purge(cfg: &Config, path: Option<&std::path::Path>, image: &str) -> ExitCode {
    let local = match LocalRef::parse(image) {
        Ok(r) => r,
        Err(e) => return usage(format!("image {image:?}: {e}")),
    };
    let report: cache_core::PurgeReport = if admin_address(path).is_some() {
        // Parsed above: the query holds a validated name, tag and digest only.
        let target = format!("/purge?image={local}");
        let wait = std::time::Duration::from_secs(600);
        let path = path.map(std::path::Path::to_path_buf);
        let call = tokio::task::spawn_blocking(move || {
            admin_call(
                path.as_deref(),
                "purge",
                hyper::Method::DELETE,
                &target,
                wait,
            )
        });
        let (ok, body) = match call.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(code)) => return code,
            Err(e) => {
                eprintln!("registry-proxy purge: {e}");
                return ExitCode::FAILURE;
            }
        };
        if !ok {
            eprint!("registry-proxy purge: {body}");
            return ExitCode::FAILURE;
        }
        match serde_json::from_str(&body) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("registry-proxy purge: the server's answer is not a purge report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let cache = match open(cfg).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let reference = match (&local.digest, &local.tag) {
            (Some(d), _) => Some(cache_core::Reference::Digest(d.clone())),
            (None, Some(t)) => Some(cache_core::Reference::Tag(t.clone())),
            (None, None) => None,
        };
        match cache.purge(&local.repository, reference.as_ref()).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("registry-proxy purge: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    println!(
        "purge {local}: {} tag(s), {} manifest(s), {} grant(s) dropped; {} blob(s) left for the next gc",
        report.tags, report.manifests, report.grants, report.marked
    );
    ExitCode::SUCCESS
}

/// `check`: the configuration parsed and validated (the rules included).
pub fn check(cfg: &Config) -> ExitCode {
    println!("configuration is valid: {} rules", cfg.rules.len());
    ExitCode::SUCCESS
}

/// `explain NAME`: which rule a local or upstream repository name goes
/// through, and what it maps to.
pub fn explain(cfg: &Config, name: &str) -> ExitCode {
    let rules = &cfg.rules;
    // An upstream name starts with a registry host, as Docker reads names.
    if let Ok(image) = ImageRef::parse(name)
        && name.split('/').next().is_some_and(ImageRef::names_registry)
    {
        return match rules.resolve_upstream(&image.registry, &image.repository) {
            Ok(r) => {
                println!(
                    "{}/{} is served as {} through rule {:?}",
                    image.registry,
                    r.upstream,
                    r.local,
                    r.rule.name()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    match RepoName::parse(name) {
        Ok(n) => {
            let e = rules.explain(&n);
            println!("{n}: {e}");
            if matches!(e, cache_core::Explanation::NoMatch { .. }) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => usage(e.to_string()),
    }
}

async fn open(cfg: &Config) -> Result<PullThroughCache, ExitCode> {
    let store = open_store(cfg).await.map_err(|e| usage(e.to_string()))?;
    // The vulnerability gate is the server's: it applies when clients pull.
    build_cache(cfg, store, Arc::new(NoEvents), None)
        .map(|(cache, _, _)| cache)
        .map_err(|e| usage(e.to_string()))
}

/// `warm`: every image's manifests and blobs (filtered by platform),
/// through the rules, with progress bars.
pub async fn warm(
    cfg: &Config,
    images: &[String],
    platforms: &[String],
    concurrency: usize,
) -> ExitCode {
    let mut pats = Vec::new();
    for p in platforms {
        match Platform::parse(p) {
            Some(p) => pats.push(p),
            None => return usage(format!("--platform {p:?}: expected os/arch[/variant]")),
        }
    }
    let cache = match open(cfg).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut failures = Vec::new();
    let mut work: Vec<(RepoName, Digest, u64)> = Vec::new();
    for image in images {
        let planned = async {
            let r = ImageRef::parse(image).map_err(|e| e.to_string())?;
            let local = cache
                .rules()
                .resolve_upstream(&r.registry, &r.repository)
                .map_err(|e| e.to_string())?
                .local;
            let plan = cache
                .plan_image(&local, &r.reference(), &pats)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((local, plan))
        };
        match planned.await {
            Ok((local, plan)) => {
                work.extend(plan.blobs.into_iter().map(|(d, s)| (local.clone(), d, s)))
            }
            Err(e) => failures.push(format!("{image}: {e}")),
        }
    }
    work.sort_by(|a, b| a.1.cmp(&b.1));
    work.dedup_by(|a, b| a.1 == b.1);
    let total_bytes: u64 = work.iter().map(|w| w.2).sum();
    let bars = MultiProgress::new();
    let total = bars.add(ProgressBar::new(total_bytes));
    total.set_style(
        ProgressStyle::with_template(
            "total {bytes}/{total_bytes} [{bar:40}] {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let style = ProgressStyle::with_template("{msg:20} {bytes}/{total_bytes} [{bar:30}]")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let results: Vec<Result<u64, String>> = futures::stream::iter(work.iter())
        .map(|(local, d, size)| {
            let bar = bars.insert_before(&total, ProgressBar::new(*size));
            bar.set_style(style.clone());
            bar.set_message(d.hex()[..12].to_owned());
            let (cache, total) = (&cache, total.clone());
            async move {
                let n = cache
                    .prefetch_blob(local, d, |n| {
                        bar.inc(n);
                        total.inc(n);
                    })
                    .await
                    .map_err(|e| format!("{d}: {e}"))?;
                bar.finish_and_clear();
                Ok(n)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    total.finish_and_clear();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let bytes: u64 = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    failures.extend(results.into_iter().filter_map(Result::err));
    println!(
        "warm: {} image(s), {ok} of {} blob(s) cached, {bytes} bytes transferred or verified; {} failure(s)",
        images.len(),
        work.len(),
        failures.len()
    );
    for f in &failures {
        println!("  failed: {f}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `gc`: TTLs, then the quota (the flag's, else the configuration's).
pub async fn gc(cfg: &Config, quota: Option<&str>) -> ExitCode {
    let quota = match quota.map(|q| parse_size(q).ok_or(q)) {
        None => cfg.quota,
        Some(Ok(q)) => Some(q),
        Some(Err(q)) => return usage(format!("--quota {q:?}: not a size (use e.g. 50GiB)")),
    };
    let cache = match open(cfg).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cache.gc(quota).await {
        Ok(r) if r.lease_holder.is_some() => {
            println!(
                "gc: another instance ({}) is running gc on this store; nothing done",
                r.lease_holder.unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!(
                "gc: {} expired, {} evicted, {} purged, {} bytes freed, {} bytes remain, {} in use skipped, {} stale records dropped",
                r.expired,
                r.evicted,
                r.purged,
                r.freed_bytes,
                r.remaining_bytes,
                r.skipped_in_use,
                r.dropped_records
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("registry-proxy gc: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `scrub`: re-verify every stored blob; exits 1 when any was corrupt.
pub async fn scrub(cfg: &Config) -> ExitCode {
    let cache = match open(cfg).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cache.scrub().await {
        Ok(r) => {
            println!(
                "scrub: {} blob(s), {} bytes checked; {} corrupt and removed",
                r.checked,
                r.bytes_checked,
                r.removed.len()
            );
            for d in &r.removed {
                println!("  removed: {d}");
            }
            if r.removed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("registry-proxy scrub: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `verify`: every signature and attestation of an image (per platform of
/// an index) as its rule's signature policy judges them, fetched from the
/// upstream now (no store is opened, no verdict remembered, so it runs
/// beside the server). Exits 1 when the policy would refuse the image.
pub async fn verify(cfg: &Config, image: &str) -> ExitCode {
    let local = match LocalRef::parse(image) {
        Ok(l) => l,
        Err(e) => return usage(format!("{image:?}: {e}")),
    };
    let store: Arc<dyn cache_core::BlobStore> = Arc::new(cache_store::MemoryStore::new());
    let cache = match build_cache(cfg, store, Arc::new(NoEvents), None) {
        Ok((c, _, _)) => c,
        Err(e) => return usage(e.to_string()),
    };
    let report = match cache
        .inspect_signatures(&local.repository, &local.reference())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("registry-proxy: {image}: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", verify_text(image, &report));
    if report.passes() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The report as `verify` prints it.
pub fn verify_text(image: &str, r: &cache_core::signatures::SignatureReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{image}: rule {:?}, upstream {}", r.rule, r.upstream);
    if r.wants.is_empty() {
        let _ = writeln!(out, "the rule has no signature policy: nothing is required");
    } else {
        let mode = if r.audit { "audit" } else { "enforce" };
        let _ = writeln!(out, "policy ({mode}) wants: {}", r.wants.join("; and "));
    }
    for (i, m) in r.manifests.iter().enumerate() {
        let what = match (&m.platform, i) {
            (Some(p), _) => format!("platform {p}"),
            (None, 0) if r.manifests.len() > 1 => "index".to_owned(),
            (None, 0) => "manifest".to_owned(),
            (None, _) => "manifest (no platform)".to_owned(),
        };
        let _ = writeln!(out, "\n{what} {}", m.digest);
        if m.artifacts.is_empty() {
            let _ = writeln!(out, "  nothing found (no .sig/.att tag, no referrer)");
        }
        for (a, (kind, found)) in m.artifacts.iter().enumerate() {
            let _ = writeln!(out, "  {} at {found}", kind.as_str());
            let checks: Vec<_> = m.checks.iter().filter(|c| c.artifact == a).collect();
            if checks.is_empty() {
                let _ = writeln!(out, "    not judged: no verifier of the policy reads it");
            }
            for c in checks {
                match &c.outcome {
                    Ok(who) => {
                        let role = match &c.role {
                            cache_core::signatures::Role::Signature => "a signature".to_owned(),
                            cache_core::signatures::Role::Attestation(t) => {
                                format!("an attestation of type {t}")
                            }
                        };
                        let _ = writeln!(out, "    verified as {role}: {who}");
                    }
                    Err(why) => {
                        let _ = writeln!(out, "    failed ({}): {why}", c.verifier);
                    }
                }
            }
        }
        if !r.wants.is_empty() {
            match &m.verdict {
                Ok(who) => {
                    let _ = writeln!(out, "  verdict: passes ({who})");
                }
                Err(why) => {
                    let _ = writeln!(out, "  verdict: refused: {why}");
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        match (r.passes(), r.audit) {
            (true, _) => "result: the image passes",
            (false, false) => "result: the image is refused",
            (false, true) => "result: the image would be refused (audit mode: it is served)",
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A one-connection server on a loopback port that reads the request
    /// head, then writes `answer` (unless `None`: it then stalls).
    fn serve_once(answer: Option<Vec<u8>>) -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&b[..n]);
            }
            assert!(head.starts_with(b"POST /reload HTTP/1.1\r\n"));
            match answer {
                Some(a) => {
                    let _ = s.write_all(&a);
                }
                None => std::thread::sleep(Duration::from_secs(5)),
            }
        });
        addr
    }

    fn post(addr: std::net::SocketAddr, wait: Duration) -> Result<(bool, String), String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(super::post(addr, "/reload", wait))
    }

    #[test]
    fn an_admin_call_reads_the_status_and_the_body() {
        let ok = serve_once(Some(
            b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nreloaded: 3\n".to_vec(),
        ));
        assert_eq!(
            post(ok, Duration::from_secs(10)),
            Ok((true, "reloaded: 3\n".to_owned()))
        );
        let refused = serve_once(Some(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 4\r\n\r\nbad\n".to_vec(),
        ));
        assert_eq!(
            post(refused, Duration::from_secs(10)),
            Ok((false, "bad\n".to_owned()))
        );
    }

    #[test]
    fn an_admin_call_gives_up_after_its_wait() {
        let stalls = serve_once(None);
        let e = post(stalls, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("no answer within"), "{e}");
    }

    #[test]
    fn an_admin_answer_over_the_bound_is_refused() {
        let len = super::MAX_ADMIN_ANSWER + 1;
        let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").into_bytes();
        answer.resize(answer.len() + len, b'x');
        let huge = serve_once(Some(answer));
        let e = post(huge, Duration::from_secs(60)).unwrap_err();
        assert!(e.contains("reading the answer"), "{e}");
    }
}
