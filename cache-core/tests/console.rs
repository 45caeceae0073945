//! The console's pages through its router (tower's `oneshot`, no socket):
//! what each shows, that a viewer sees only what `ConsoleAccess` lets it
//! read, that it asks for credentials when it must, and that what
//! upstreams and policies say is escaped.

use std::sync::Arc;

use axum::body::Body;
use cache_core::console::{Console, ConsoleAccess, Figures, OpenAccess, Viewer};
use cache_core::testing::{FakeUpstream, ManualClock, content};
use cache_core::{
    Accept, Admission, AdmissionRequest, Clock, Error, PullThroughCache, Reference, RepoName,
    RuleSet, RuleSpec, Tag, Verdict,
};
use cache_store::{MemoryStore, TokioRuntime};
use http::{HeaderMap, Request, StatusCode};
use tower::ServiceExt;

fn n(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

/// Refuses everything under rule `strict`, with a reason that tries to
/// be markup.
#[derive(Debug)]
struct Hostile;

#[async_trait::async_trait]
impl Admission for Hostile {
    async fn admit(&self, req: &AdmissionRequest<'_>) -> cache_core::Result<Verdict> {
        if req.rule.name() == "strict" {
            return Err(Error::denied(
                "<script>alert(1)</script> finding CVE-2099-0001".to_owned(),
            ));
        }
        Ok(Verdict::Pass)
    }
    fn name(&self) -> &str {
        "hostile hook"
    }
    fn describe(&self, rule: &cache_core::Rule) -> Option<String> {
        (rule.name() == "strict").then(|| "refuses <everything>".to_owned())
    }
}

async fn cache() -> (PullThroughCache, Arc<FakeUpstream>) {
    let clock = ManualClock::new();
    let up = Arc::new(FakeUpstream::new("up.example", Arc::new(clock.clone())));
    let mut specs = vec![
        RuleSpec::new("lib", "up.example/library/*", "library/*"),
        RuleSpec::new("strict", "up.example/strict/*", "strict/*"),
    ];
    for i in 0..120 {
        specs.push(RuleSpec::new(
            format!("extra-{i:03}"),
            format!("up.example/extra{i}/*"),
            format!("extra{i}/*"),
        ));
    }
    let c = PullThroughCache::builder()
        .rules(RuleSet::new(&specs).unwrap())
        .store(MemoryStore::new())
        .spawner(TokioRuntime::current())
        .clock(Arc::new(clock) as Arc<dyn Clock>)
        .upstream("up.example", up.clone())
        .admission(Arc::new(Hostile))
        .build()
        .unwrap();
    for repo in ["library/app", "library/secret", "strict/app"] {
        up.push_image(&n(repo), &Tag::parse("v1").unwrap(), &[content(1, 2048)]);
        let _ = c
            .manifest(&n(repo), &Reference::parse("v1").unwrap(), &Accept::any())
            .await;
    }
    (c, up)
}

async fn get(
    console: &Console,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = console
        .clone()
        .router()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_what_the_cache_holds_and_why_it_refused() {
    let (cache, _up) = cache().await;
    let console = Console::new(cache).figures(|| Figures {
        hits: 3,
        misses: 1,
        bytes_served: 4096,
        ..Figures::default()
    });
    let (s, h, overview) = get(&console, "/", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(overview.contains("75.0 %"), "hit ratio: {overview}");
    assert!(overview.contains("id=\"denials\""), "{overview}");
    assert!(overview.contains("strict/app"));

    let (_, _, repos) = get(&console, "/repositories", &[]).await;
    for r in ["library/app", "library/secret", "strict/app"] {
        assert!(repos.contains(&format!(">{r}</a>")), "{r}: {repos}");
    }
    let (s, _, strict) = get(&console, "/repository?name=strict/app", &[]).await;
    assert_eq!(s, 200);
    assert!(strict.contains("id=\"refused\""), "{strict}");
    assert!(strict.contains("hostile hook"));
    // What a policy said is text, never markup.
    assert!(!strict.contains("<script>"), "{strict}");
    assert!(strict.contains("&lt;script&gt;alert(1)&lt;/script&gt; finding CVE-2099-0001"));

    let (_, _, app) = get(&console, "/repository?name=library/app", &[]).await;
    assert!(app.contains("id=\"tags\""));
    assert!(app.contains(">v1</a>"), "{app}");
    let (s, _, img) = get(&console, "/image?name=library/app&ref=v1", &[]).await;
    assert_eq!(s, 200, "{img}");
    assert!(
        img.contains("id=\"layers\"") && img.contains("2.0 KiB"),
        "{img}"
    );
    assert!(img.contains("id=\"pulls\""));

    let (_, _, rules) = get(&console, "/rules?explain=library/nginx", &[]).await;
    assert!(rules.contains("id=\"explain-result\""));
    assert!(rules.contains("wildcard rule &quot;lib&quot;"), "{rules}");
    assert!(
        rules.contains("refuses &lt;everything&gt;"),
        "a hook's description: {rules}"
    );
    let (_, _, upstream) = get(&console, "/rules?explain=up.example/strict/x", &[]).await;
    assert!(
        upstream.contains("is served as strict/x through rule &quot;strict&quot;"),
        "{upstream}"
    );
    let (_, _, none) = get(&console, "/rules?explain=nothing/here", &[]).await;
    assert!(none.contains("no rule declares"), "{none}");
    // 122 rules: three pages of 50; a search narrows them.
    assert!(rules.contains("page 1 of 3"), "{rules}");
    let (_, _, third) = get(&console, "/rules?page=3", &[]).await;
    assert!(
        third.contains("extra-119") && !third.contains(">lib<"),
        "{third}"
    );
    let (_, _, found) = get(&console, "/rules?q=extra11", &[]).await;
    assert!(
        found.contains("11 rule(s)"),
        "extra11 and extra110..119: {found}"
    );

    // A client's mistake is a 400 naming the value, not a 500.
    let (s, _, bad) = get(&console, "/repository?name=Bad..Name", &[]).await;
    assert_eq!(s, 400);
    assert!(bad.contains("Bad..Name"), "{bad}");
    let (s, _, _) = get(&console, "/image?name=library/app&ref=no%20such", &[]).await;
    assert_eq!(s, 400);
    let (s, _, _) = get(&console, "/image?name=library/app&ref=v9", &[]).await;
    assert_eq!(s, 404);
}

/// Lets in only requests with `x-user`, and shows `library/secret` to
/// nobody but `admin`: how per-repository grants plug in.
#[derive(Debug)]
struct Grants;

#[async_trait::async_trait]
impl ConsoleAccess for Grants {
    async fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        headers
            .get("x-user")
            .map(|u| Viewer::named(u.to_str().unwrap()))
    }
    fn may_read(&self, viewer: &Viewer, repository: &RepoName) -> bool {
        repository.as_str() != "library/secret" || viewer.name == "admin"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_only_what_it_may_read_and_strangers_are_asked_to_sign_in() {
    let (cache, _up) = cache().await;
    let console = Console::new(cache).access(Grants);
    let (s, h, _) = get(&console, "/repositories", &[]).await;
    assert_eq!(s, 401);
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    let (_, _, repos) = get(&console, "/repositories", &[("x-user", "dev")]).await;
    assert!(repos.contains(">library/app</a>"));
    assert!(!repos.contains("library/secret"), "{repos}");
    assert!(repos.contains("2 repositories"), "{repos}");
    for page in [
        "/repository?name=library/secret",
        "/image?name=library/secret&ref=v1",
    ] {
        let (s, _, body) = get(&console, page, &[("x-user", "dev")]).await;
        assert_eq!(s, 404, "{page}");
        assert!(!body.contains("v1</a>"), "{body}");
    }
    let (_, _, repos) = get(&console, "/repositories", &[("x-user", "admin")]).await;
    assert!(repos.contains(">library/secret</a>"));
    // Denials of what the viewer may not read are not shown either.
    let strict_only = Console::new(console_cache().await).access(Grants);
    let (_, _, overview) = get(&strict_only, "/", &[("x-user", "dev")]).await;
    assert!(overview.contains("strict/app"));
    let _ = OpenAccess;
}

async fn console_cache() -> PullThroughCache {
    cache().await.0
}
