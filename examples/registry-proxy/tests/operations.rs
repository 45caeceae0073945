//! Day-2 operations through the running server: reloading the
//! configuration under load (SIGHUP and `registry-proxy reload`), the
//! health endpoints, and draining on SIGTERM.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_upstream::testing::HostileRegistry;
use common::{Proxy, http, run};

fn config(up: &HostileRegistry, admin: u16, password: &str, rules: &str) -> String {
    format!(
        "[storage]\npath = \"cache-data\"\n[server]\nadmin_listen = \"127.0.0.1:{admin}\"\n\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\nusername = \"mirror\"\npassword = \"{password}\"\n\n{rules}",
        h = up.host(),
        u = up.url()
    )
}

fn rule(name: &str, up: &HostileRegistry, ns: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nsource = \"{}/{ns}/*\"\ntarget = \"{ns}/*\"\n",
        up.host()
    )
}

/// Rewrites the proxy's configuration file (keeping its listen line).
fn rewrite(proxy: &Proxy, body: &str) {
    let path = proxy.dir.path().join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let listen = text.lines().next().unwrap();
    std::fs::write(&path, format!("{listen}\n{body}")).unwrap();
}

#[derive(Debug)]
struct Seen {
    repo: &'static str,
    phase_before: usize,
    phase_after: usize,
    status: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_change_only_what_they_change() {
    let up = HostileRegistry::start("127.0.0.1");
    let layer = |i: u64| Bytes::from(cache_core::testing::content(i, 20_000).to_vec());
    up.push_image("library/a", "v1", &[layer(1)]);
    up.push_image("library/b", "v1", &[layer(2)]);
    up.push_image("team/c", "v1", &[layer(3)]);
    up.require_basic(&[("mirror", "old")]);
    let admin = cache_upstream::testing::free_port();
    let proxy = Proxy::start(&config(&up, admin, "old", &rule("lib", &up, "library")));

    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let within = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for repo in ["library/a", "library/b", "team/c"] {
        let (phase, stop, url, within) =
            (phase.clone(), stop.clone(), proxy.url(""), within.clone());
        load.push(tokio::spawn(async move {
            let c = http();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let before = phase.load(Ordering::Acquire);
                // A tag revalidates with the upstream each time (HEAD).
                let status = c
                    .get(format!("{url}/v2/{repo}/manifests/v1"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                let after = phase.load(Ordering::Acquire);
                seen.push(Seen {
                    repo,
                    phase_before: before,
                    phase_after: after,
                    status,
                });
                if before == after && before != usize::MAX {
                    within.fetch_add(1, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }));
    }
    // A phase lasts at least 400 ms and until three requests ran wholly
    // within it (a loaded machine may take longer than 400 ms for one).
    let settle = || {
        let within = within.clone();
        async move {
            let start = within.load(Ordering::Acquire);
            let (t0, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(30));
            while t0.elapsed() < Duration::from_millis(400)
                || within.load(Ordering::Acquire) < start + 3
            {
                assert!(
                    Instant::now() < deadline,
                    "no request completed within a phase in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    settle().await;

    // Requests that start or end while a change is under way see either
    // side of it; only those wholly within one phase are checked.
    const CHANGING: usize = usize::MAX;

    // 1: a rule added, by SIGHUP.
    phase.store(CHANGING, Ordering::Release);
    rewrite(
        &proxy,
        &config(
            &up,
            admin,
            "old",
            &format!(
                "{}{}",
                rule("lib", &up, "library"),
                rule("team", &up, "team")
            ),
        ),
    );
    let reloads = || async {
        proxy
            .metric("registry_proxy_config_reloads_total{result=\"applied\"}")
            .await
    };
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(proxy.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads().await < 1 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP reload applied:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    phase.store(1, Ordering::Release);
    settle().await;

    // 2: the credential rotated; the upstream accepts both while it happens.
    phase.store(CHANGING, Ordering::Release);
    up.require_basic(&[("mirror", "old"), ("mirror", "new")]);
    rewrite(
        &proxy,
        &config(
            &up,
            admin,
            "new",
            &format!(
                "{}{}",
                rule("lib", &up, "library"),
                rule("team", &up, "team")
            ),
        ),
    );
    let dir = proxy.dir.path().to_owned();
    let (ok, out) = tokio::task::spawn_blocking(move || run(&dir, &["reload"]))
        .await
        .unwrap();
    assert!(ok && out.contains("2 rules in force"), "{out}");
    up.require_basic(&[("mirror", "new")]);
    phase.store(2, Ordering::Release);
    settle().await;
    // From here on (transfers begun before the reload have had their
    // time), only the new credential may reach the upstream.
    let after_rotation = up.seen().len();

    // 3: a rule removed.
    phase.store(CHANGING, Ordering::Release);
    rewrite(
        &proxy,
        &config(&up, admin, "new", &rule("team", &up, "team")),
    );
    let dir = proxy.dir.path().to_owned();
    let (ok, out) = tokio::task::spawn_blocking(move || run(&dir, &["reload"]))
        .await
        .unwrap();
    assert!(ok, "{out}");
    phase.store(3, Ordering::Release);
    settle().await;

    // 4: an invalid file changes nothing.
    rewrite(
        &proxy,
        &config(
            &up,
            admin,
            "new",
            &format!("{}[[rule]]\nname = \"broken\"\n", rule("team", &up, "team")),
        ),
    );
    let dir = proxy.dir.path().to_owned();
    let (ok, out) = tokio::task::spawn_blocking(move || run(&dir, &["reload"]))
        .await
        .unwrap();
    assert!(!ok && out.contains("not reloaded"), "{out}");
    settle().await;
    stop.store(true, Ordering::Release);

    let mut all = Vec::new();
    for l in load {
        all.extend(l.await.unwrap());
    }
    let mut checked = 0;
    for s in all
        .iter()
        .filter(|s| s.phase_before == s.phase_after && s.phase_before != CHANGING)
    {
        let want = match (s.repo, s.phase_before) {
            ("team/c", 0) => 404,
            ("library/a" | "library/b", 3) => 404,
            _ => 200,
        };
        assert_eq!(s.status, want, "{s:?}\n{}", proxy.log());
        checked += 1;
    }
    assert!(
        checked > 30,
        "the load ran through every phase ({checked} requests)"
    );
    for p in 0..4 {
        assert!(
            all.iter()
                .any(|s| s.phase_before == p && s.phase_after == p),
            "phase {p}"
        );
    }
    assert_eq!(
        proxy
            .metric("registry_proxy_config_reloads_total{result=\"refused\"}")
            .await,
        1
    );
    // One more upstream request for certain: team/c's tag, once the
    // revalidation window (1 s) has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let status = http()
        .get(proxy.url("/v2/team/c/manifests/v1"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let seen = up.seen();
    let since: Vec<Option<&str>> = seen[after_rotation..]
        .iter()
        .map(|r| r.authorization.as_deref())
        .collect();
    assert!(
        since.iter().all(|a| *a != Some("Basic bWlycm9yOm9sZA==")),
        "the rotated credential is in use: {since:?}"
    );
    assert!(
        since.contains(&Some("Basic bWlycm9yOm5ldw==")),
        "the new credential is in use: {since:?}"
    );
    let log = proxy.log();
    assert!(
        !log.contains("\"new\"") && !log.contains("password"),
        "no secret in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer_outside_auth_and_readyz_fails_while_draining() {
    let up = HostileRegistry::start("127.0.0.1");
    let body = format!(
        "{}\n[server]\ndrain_delay = \"2s\"\nshutdown_grace = \"2s\"\n[auth]\ntokens = [\"t\"]\n",
        common::config_for(&up.host(), &up.url(), "")
    );
    let mut proxy = Proxy::start(&body);
    let c = http();
    let get = |p: &str| c.get(proxy.url(p)).send();
    assert_eq!(
        get("/healthz").await.unwrap().status(),
        200,
        "no auth needed"
    );
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    assert_eq!(get("/v2/").await.unwrap().status(), 401);
    let m = proxy.metrics().await;
    assert!(
        !m.contains("status=\"200\"} "),
        "probes are not counted: {m}"
    );
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(proxy.child.id() as i32, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 503, "draining: not ready");
    assert_eq!(
        c.get(proxy.url("/v2/"))
            .bearer_auth("t")
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "still serving while draining"
    );
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || proxy.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "exits after drain and grace"
    );
}

/// A configuration whose one registry has `endpoints` (in order) and
/// `extra` lines in its table; the rule `lib` maps `library/*`.
fn with_endpoints(host: &str, endpoints: &[String], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[storage]\npath = \"cache-data\"\n[upstream]\nresponse_timeout = \"1s\"\nconnect_timeout = \"1s\"\nmax_retries = 0\n\n[[registry]]\nhost = \"{host}\"\nendpoints = [{}]\n{extra}\n\n[[rule]]\nname = \"lib\"\nsource = \"{host}/library/*\"\ntarget = \"library/*\"\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_first_endpoint_falls_back_to_the_next_and_is_then_skipped() {
    use cache_upstream::testing::WireFault;
    let mirror = HostileRegistry::start("127.0.0.2");
    let origin = HostileRegistry::start("127.0.0.1");
    let images: Vec<_> = (0..6)
        .map(|i| {
            origin.push_image(
                &format!("library/app{i}"),
                "v1",
                &[Bytes::from(
                    cache_core::testing::content(50 + i, 5000).to_vec(),
                )],
            )
        })
        .collect();
    let refused = format!("http://127.0.0.3:{}", cache_upstream::testing::free_port());
    for (case, first) in [
        ("refuses connections", refused),
        ("answers 503", mirror.url()),
        ("hangs", mirror.url()),
    ] {
        match case {
            "answers 503" => {
                mirror.fault("/v2/", std::iter::repeat_n(WireFault::Status(503), 1000))
            }
            "hangs" => {
                mirror.clear_faults();
                mirror.fault("/manifests/", std::iter::repeat_n(WireFault::Hang, 1000));
            }
            _ => {}
        }
        let proxy = Proxy::start(&with_endpoints(&origin.host(), &[first, origin.url()], ""));
        let before = mirror.seen().len();
        let started = Instant::now();
        let r = http()
            .get(proxy.url("/v2/library/app0/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{case}: served by the second endpoint");
        assert_eq!(
            r.headers()["docker-content-digest"],
            images[0].manifest.as_str()
        );
        let first_took = started.elapsed();
        // The next requests skip the failed endpoint: quick, and it sees nothing.
        let after_first = mirror.seen().len();
        let started = Instant::now();
        for (i, img) in images.iter().enumerate().skip(1) {
            let r = http()
                .get(proxy.url(&format!("/v2/library/app{i}/manifests/v1")))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.headers()["docker-content-digest"],
                img.manifest.as_str(),
                "{case}"
            );
        }
        let rest = started.elapsed();
        assert_eq!(
            mirror.seen().len(),
            after_first,
            "{case}: the breaker skips the first endpoint"
        );
        // That nothing reached the failed endpoint (above) is what shows
        // the breaker skipped it; how long the pulls took depends on the
        // machine's load, and is not asserted.
        let _ = (rest, first_took);
        if case == "hangs" {
            assert!(
                first_took >= Duration::from_secs(1),
                "the first waited out the stall"
            );
        }
        assert!(
            proxy
                .logs(|l| l.contains("answered by a fallback endpoint"))
                .await,
            "{case}: logged"
        );
        if case != "refuses connections" {
            assert!(
                after_first > before,
                "{case}: the first endpoint was tried first"
            );
        }
        drop(proxy);
        mirror.clear_seen();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_budget_stops_at_the_reserve_cached_tags_go_stale_and_cold_misses_get_429() {
    let up = HostileRegistry::start("127.0.0.1");
    let layer = |i: u64| Bytes::from(cache_core::testing::content(i, 1000).to_vec());
    for i in 0..4 {
        up.push_image(&format!("library/app{i}"), "v1", &[layer(i)]);
    }
    up.set_rate_limit(100, 4, 3600);
    let proxy = Proxy::start(&with_endpoints(&up.host(), &[up.url()], "reserve = 2"));
    let get = |repo: String| {
        let url = proxy.url(&format!("/v2/{repo}/manifests/v1"));
        async move { http().get(url).send().await.unwrap() }
    };
    // Two cold pulls spend 4 -> 2: the reserve.
    for i in 0..2 {
        assert_eq!(get(format!("library/app{i}")).await.status(), 200);
    }
    let m = proxy.metrics().await;
    assert!(
        m.lines().any(
            |l| l.starts_with("registry_proxy_upstream_ratelimit_remaining{") && l.ends_with(" 2")
        ),
        "the gauge shows what is left:\n{m}"
    );
    // A cold miss now would spend the reserve: refused, with when to come back.
    let r = get("library/app2".into()).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (3000..=3600).contains(&retry),
        "Retry-After from the window: {retry}"
    );
    // A cached tag whose digest is unchanged revalidates with a HEAD (free).
    let gets = up.requests("GET", "/manifests/");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get("library/app0".into()).await;
    assert_eq!(
        (r.status(), &r.headers()["x-cache"]),
        (
            reqwest::StatusCode::OK,
            &"revalidated"
                .parse::<reqwest::header::HeaderValue>()
                .unwrap()
        )
    );
    // A cached tag that moved upstream is served stale rather than spent on.
    up.push_image("library/app1", "v1", &[layer(9)]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get("library/app1".into()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "stale");
    assert_eq!(
        up.requests("GET", "/manifests/"),
        gets,
        "no manifest GET spent past the reserve"
    );
    assert!(
        proxy
            .logs(|l| l.contains("pull budget at its reserve"))
            .await,
        "logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let up = HostileRegistry::start("127.0.0.1");
    up.push_image("library/a", "v1", &[Bytes::from_static(b"layer")]);
    let admin = cache_upstream::testing::free_port();
    let proxy = Proxy::start(&format!(
        "{}[log]\nformat = \"json\"\n",
        config(&up, admin, "", &rule("lib", &up, "library"))
    ));
    let r = http()
        .get(proxy.url("/v2/library/a/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The access log is written by a background thread.
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = proxy.log();
        if log.contains("/v2/library/a/manifests/v1") {
            break log;
        }
        assert!(Instant::now() < deadline, "no access log line:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!log.contains('\u{1b}'), "no ANSI codes:\n{log}");
    let mut requests = 0;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["message"] == "request" && v["path"] != "/v2/" {
            requests += 1;
            assert_eq!(v["method"], "GET", "{line}");
            assert_eq!(v["path"], "/v2/library/a/manifests/v1", "{line}");
            assert_eq!(v["status"], 200, "{line}");
            assert_eq!(v["cache"], "miss", "{line}");
            assert!(v["elapsed_ms"].is_u64(), "{line}");
        }
    }
    assert_eq!(requests, 1, "{log}");
}
