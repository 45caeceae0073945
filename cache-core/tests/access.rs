//! `PullService`'s access paths in process (against a fake upstream that
//! counts its requests): the token endpoint and its methods, a scanner's
//! credential through the token flow, the realm a challenge names (scheme,
//! host, mount prefix), bounds on what a client sends, and the
//! `AccessInfo` each response carries.
#![cfg(all(feature = "server", feature = "serde"))]

use std::sync::Arc;

use cache_core::runtime::TokioRuntime;
use cache_core::server::{AccessInfo, AuthSpec, PullAuth, PullService, ScopedTokens, Tls};
use cache_core::testing::{FakeUpstream, content};
use cache_core::{PullCredentials, PullThroughCache, RepoName, RuleSpec, Tag};
use http::{Request, Response};

struct World {
    pull: PullService,
    up: Arc<FakeUpstream>,
    scoped: Arc<ScopedTokens>,
}

fn world(auth: &str) -> World {
    let up = Arc::new(FakeUpstream::new(
        "up.example",
        Arc::new(TokioRuntime::current()),
    ));
    up.push_image(
        &RepoName::parse("library/app").unwrap(),
        &Tag::parse("v1").unwrap(),
        &[content(1, 1000)],
    );
    let cache = PullThroughCache::builder()
        .rule(RuleSpec::new("lib", "up.example/library/*", "library/*"))
        .store(cache_store::MemoryStore::new())
        .tokio()
        .upstream("up.example", up.clone())
        .build()
        .unwrap();
    let spec: AuthSpec = toml::from_str(auth).unwrap();
    let scoped = Arc::new(ScopedTokens::new());
    let pull = PullService::new(cache)
        .auth(PullAuth::new(spec.load().unwrap()))
        .scoped(scoped.clone())
        .realm("test-realm");
    World { pull, up, scoped }
}

const AUTH: &str = r#"
service = "svc"
[[token]]
name = "ci"
sha256 = "948b8c2427cd29047839b8e4a27a08763f8befbafa86be5cce8e46217d75e58a"
[[grant]]
principals = ["ci", "anonymous"]
repositories = ["library/*"]
actions = ["pull"]
"#;
/// The token whose SHA-256 `AUTH` holds.
const CI: &str = "ci-token";

fn req(method: &str, uri: &str, auth: Option<&str>) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(()).unwrap()
}

async fn body(r: Response<axum::body::Body>) -> serde_json::Value {
    let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&b).unwrap_or_default()
}

fn info(r: &Response<axum::body::Body>) -> AccessInfo {
    r.extensions()
        .get::<AccessInfo>()
        .cloned()
        .expect("AccessInfo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_answers_get_only_and_its_tokens_open_the_repositories_they_name() {
    assert!(AUTH.contains(cache_core::Digest::sha256_of(CI.as_bytes()).hex()));
    let w = world(AUTH);
    let r = w.pull.answer(req("POST", "/token", None)).await;
    assert_eq!(
        (r.status().as_u16(), r.headers()["allow"].to_str().unwrap()),
        (405, "GET, HEAD")
    );
    let r = w
        .pull
        .answer(req(
            "GET",
            "/token?scope=repository:library/app:pull",
            Some(&format!("Bearer {CI}")),
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!((info(&r).class, &*info(&r).principal), ("token", "ci"));
    let token = body(r).await["token"].as_str().unwrap().to_owned();
    let r = w
        .pull
        .answer(req(
            "GET",
            "/v2/library/app/manifests/v1",
            Some(&format!("Bearer {token}")),
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(info(&r).decision, "pull");
    assert_eq!(w.up.calls.total(), 1, "one manifest fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanners_credential_through_the_token_flow_still_reads_its_one_repository() {
    let w = world(AUTH);
    let repo = RepoName::parse("library/app").unwrap();
    let credential = w.scoped.issue(&repo, std::time::Duration::from_secs(60));
    let r = w
        .pull
        .answer(req(
            "GET",
            "/token?scope=repository:library/app:pull",
            Some(credential.expose()),
        ))
        .await;
    assert_eq!(r.status(), 200);
    let token = body(r).await["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let r = w
        .pull
        .answer(req("GET", "/v2/library/app/manifests/v1", Some(&bearer)))
        .await;
    assert_eq!((r.status().as_u16(), info(&r).class), (200, "scanner"));
    let r = w
        .pull
        .answer(req("GET", "/v2/library/other/manifests/v1", Some(&bearer)))
        .await;
    assert_eq!(r.status(), 403, "its one repository only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_challenge_names_the_token_endpoint_where_the_client_reached_the_service() {
    let w = world(AUTH);
    let challenge = |r: Response<axum::body::Body>| {
        assert_eq!(r.status(), 401);
        r.headers()["www-authenticate"].to_str().unwrap().to_owned()
    };
    let mut plain = req("GET", "/v2/", None);
    plain
        .headers_mut()
        .insert("host", "cache.example:5000".parse().unwrap());
    assert_eq!(
        challenge(w.pull.answer(plain).await),
        "Bearer realm=\"http://cache.example:5000/token\",service=\"svc\""
    );
    let mut tls = req("GET", "/v2/", None);
    tls.headers_mut()
        .insert("host", "cache.example".parse().unwrap());
    tls.extensions_mut().insert(Tls);
    assert!(
        challenge(w.pull.answer(tls).await)
            .starts_with("Bearer realm=\"https://cache.example/token\"")
    );
    // A Host with characters a URL has no business with: not echoed.
    let mut odd = req("GET", "/v2/", None);
    odd.headers_mut().insert("host", "evil\"x".parse().unwrap());
    assert!(
        challenge(w.pull.answer(odd).await).starts_with("Bearer realm=\"http://localhost/token\"")
    );
    // Mounted under a prefix: the token endpoint is under it too.
    let app = axum::Router::new().nest_service("/mirror", w.pull.clone());
    let mut nested = req("GET", "/mirror/v2/", None);
    nested.headers_mut().insert("host", "h".parse().unwrap());
    let r = tower::ServiceExt::oneshot(app.clone(), nested.map(|()| axum::body::Body::empty()))
        .await
        .unwrap();
    assert!(challenge(r).starts_with("Bearer realm=\"http://h/mirror/token\""));
    let token = tower::ServiceExt::oneshot(
        app,
        req("GET", "/mirror/token", Some(&format!("Bearer {CI}")))
            .map(|()| axum::body::Body::empty()),
    )
    .await
    .unwrap();
    assert_eq!(token.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_credentials_are_a_401_never_a_5xx() {
    let w = world(AUTH);
    let big = format!(
        "Bearer {}.{}.{}",
        "a".repeat(4000),
        "b".repeat(4000),
        "c".repeat(4000)
    );
    for auth in [
        big.as_str(),
        "Bearer ",
        "Basic !!!",
        "Basic Zm9v",
        "Digest x",
        "Bearer a.b.c",
    ] {
        let r = w
            .pull
            .answer(req("GET", "/v2/library/app/manifests/v1", Some(auth)))
            .await;
        assert_eq!(r.status(), 401, "{auth:.40}");
        assert_eq!(info(&r).decision, "unauthorized");
        let r = w.pull.answer(req("GET", "/token", Some(auth))).await;
        assert_eq!(r.status(), 401, "{auth:.40} at /token");
    }
    assert_eq!(w.up.calls.total(), 0);
    // Anonymous, granted: its request goes through as `anonymous`.
    let r = w
        .pull
        .answer(req("GET", "/v2/library/app/manifests/v1", None))
        .await;
    assert_eq!(
        (r.status().as_u16(), &*info(&r).principal, info(&r).class),
        (200, "anonymous", "anonymous")
    );
    // Too many scopes: the token carries at most MAX_SCOPES of them.
    let scopes: Vec<String> = (0..100)
        .map(|i| format!("scope=repository:library/r{i}:pull"))
        .collect();
    let r = w
        .pull
        .answer(req(
            "GET",
            &format!("/token?{}", scopes.join("&")),
            Some(&format!("Bearer {CI}")),
        ))
        .await;
    let token = body(r).await["token"].as_str().unwrap().to_owned();
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["access"].as_array().unwrap().len(),
        cache_core::server::MAX_SCOPES
    );
}
