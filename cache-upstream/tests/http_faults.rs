//! `RegistryClient` against an in-test server for what a real registry
//! will not do on demand: token servers, 401 loops, cross-host redirects,
//! 503s, 429s. Every server here listens on 127.0.0.1 (or `localhost`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cache_core::{Digest, Error, ErrorCode, Reference, Registry, RepoName, Tag, Upstream};
use cache_upstream::{ClientOptions, Credentials, PasswordSource, RegistryClient, Secret};
use futures::StreamExt;

#[derive(Default)]
struct Stats {
    token_requests: Vec<(HashMap<String, String>, Option<String>)>,
    registry_auth: Vec<Option<String>>,
    redirected_headers: Vec<Option<String>>,
    flaky_left: u32,
    flaky_calls: u32,
}

#[derive(Clone)]
struct App {
    stats: Arc<Mutex<Stats>>,
    port: u16,
    other_port: u16,
    expires_in: u64,
    always_401: bool,
    token_field: &'static str,
    required_user: Option<(&'static str, &'static str)>,
}

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;

fn challenge(app: &App) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            format!(
                r#"Bearer realm="http://127.0.0.1:{}/token",service="test-registry",scope="repository:team/app:pull""#,
                app.port
            ),
        )],
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
    )
        .into_response()
}

async fn token(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    let auth = h
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let n = {
        let mut s = app.stats.lock().unwrap();
        s.token_requests.push((q, auth.clone()));
        s.token_requests.len()
    };
    if let Some((u, p)) = app.required_user {
        use base64::Engine as _;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        );
        if auth.as_deref() != Some(want.as_str()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    format!(
        r#"{{"{}":"tok-{n}","expires_in":{}}}"#,
        app.token_field, app.expires_in
    )
    .into_response()
}

fn bearer_ok(app: &App, h: &HeaderMap) -> bool {
    let auth = h
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned());
    app.stats.lock().unwrap().registry_auth.push(auth.clone());
    !app.always_401 && auth.is_some_and(|a| a.starts_with("Bearer tok-"))
}

async fn manifest(State(app): State<App>, h: HeaderMap) -> Response {
    if !bearer_ok(&app, &h) {
        return challenge(&app);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json",
        )],
        MANIFEST,
    )
        .into_response()
}

async fn redirected_blob(State(app): State<App>, h: HeaderMap) -> Response {
    if !bearer_ok(&app, &h) {
        return challenge(&app);
    }
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(
            header::LOCATION,
            format!("http://localhost:{}/storage/blob", app.other_port),
        )],
    )
        .into_response()
}

async fn storage(State(app): State<App>, h: HeaderMap) -> Response {
    let auth = h
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned());
    app.stats.lock().unwrap().redirected_headers.push(auth);
    "hello".into_response()
}

async fn flaky(State(app): State<App>) -> Response {
    let mut s = app.stats.lock().unwrap();
    s.flaky_calls += 1;
    if s.flaky_left > 0 {
        s.flaky_left -= 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    "hello".into_response()
}

async fn limited() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::RETRY_AFTER, "7"),
            (
                header::HeaderName::from_static("ratelimit-remaining"),
                "0;w=21600",
            ),
            (
                header::HeaderName::from_static("ratelimit-limit"),
                "100;w=21600",
            ),
        ],
        "slow down",
    )
        .into_response()
}

async fn fallback(uri: Uri) -> Response {
    (StatusCode::NOT_FOUND, format!("no route for {uri}")).into_response()
}

struct Server {
    app: App,
}

async fn serve(configure: impl FnOnce(&mut App)) -> Server {
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut app = App {
        stats: Arc::default(),
        port: l1.local_addr().unwrap().port(),
        other_port: l2.local_addr().unwrap().port(),
        expires_in: 300,
        always_401: false,
        token_field: "token",
        required_user: None,
    };
    configure(&mut app);
    let router = Router::new()
        .route("/token", get(token))
        .route("/v2/team/app/manifests/{r}", get(manifest).head(manifest))
        .route("/v2/team/app/blobs/{d}", get(redirected_blob))
        .route("/v2/team/flaky/blobs/{d}", get(flaky))
        .route("/v2/team/limited/manifests/{r}", get(limited))
        .fallback(fallback)
        .with_state(app.clone());
    let storage_router = Router::new()
        .route("/storage/blob", get(storage))
        .with_state(app.clone());
    tokio::spawn(async move { axum::serve(l1, router).await.unwrap() });
    tokio::spawn(async move { axum::serve(l2, storage_router).await.unwrap() });
    Server { app }
}

fn client(port: u16, creds: Option<Credentials>) -> RegistryClient {
    client_with(port, creds, ClientOptions::default())
}

fn client_with(port: u16, creds: Option<Credentials>, opts: ClientOptions) -> RegistryClient {
    RegistryClient::new(
        Registry::parse(&format!("127.0.0.1:{port}")).unwrap(),
        Some(&format!("http://127.0.0.1:{port}")),
        creds,
        opts,
    )
    .unwrap()
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn latest() -> Reference {
    Reference::Tag(Tag::parse("latest").unwrap())
}

#[tokio::test]
async fn anonymous_bearer_flow_sends_the_scope_and_reuses_the_token() {
    let s = serve(|_| {}).await;
    let c = client(s.app.port, None);
    for _ in 0..3 {
        let m = c.manifest(&repo("team/app"), &latest(), &[]).await.unwrap();
        assert_eq!(m.bytes.as_ref(), MANIFEST.as_bytes());
    }
    let st = s.app.stats.lock().unwrap();
    assert_eq!(st.token_requests.len(), 1, "the cached token is reused");
    let (q, auth) = &st.token_requests[0];
    assert_eq!(
        q.get("scope").map(String::as_str),
        Some("repository:team/app:pull")
    );
    assert_eq!(q.get("service").map(String::as_str), Some("test-registry"));
    assert_eq!(
        auth, &None,
        "anonymous: no credentials sent to the token server"
    );
}

#[tokio::test]
async fn credentials_go_to_the_token_server_and_access_token_shape_works() {
    let s = serve(|a| {
        a.token_field = "access_token";
        a.required_user = Some(("bob", "pw"));
    })
    .await;
    let creds = Credentials::new("bob", &PasswordSource::Value(Secret::new("pw"))).unwrap();
    let c = client(s.app.port, Some(creds));
    c.manifest(&repo("team/app"), &latest(), &[]).await.unwrap();
    let bad = Credentials::new("bob", &PasswordSource::Value(Secret::new("nope"))).unwrap();
    let e = client(s.app.port, Some(bad))
        .manifest(&repo("team/app"), &latest(), &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.code().http_status(),
        502,
        "the upstream refusing our credentials is not the client's to fix: {e}"
    );
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(
        !format!("{e} {e:?}").contains("nope"),
        "no password in errors"
    );
}

#[tokio::test]
async fn token_expiry_is_honoured() {
    let s = serve(|a| a.expires_in = 0).await;
    let c = client(s.app.port, None);
    c.manifest(&repo("team/app"), &latest(), &[]).await.unwrap();
    c.manifest(&repo("team/app"), &latest(), &[]).await.unwrap();
    assert_eq!(
        s.app.stats.lock().unwrap().token_requests.len(),
        2,
        "an expired token is not reused"
    );
}

#[tokio::test]
async fn a_401_loop_is_stopped_after_one_refresh() {
    let s = serve(|a| a.always_401 = true).await;
    let c = client(s.app.port, None);
    let e = c
        .manifest(&repo("team/app"), &latest(), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().http_status(), 502, "{e}");
    let st = s.app.stats.lock().unwrap();
    assert_eq!(
        st.registry_auth.len(),
        2,
        "one try, one retry with a token, then stop"
    );
    assert_eq!(st.token_requests.len(), 1);
}

#[tokio::test]
async fn a_redirect_to_another_host_does_not_carry_the_authorization() {
    let s = serve(|_| {}).await;
    // The storage host is `localhost`, a loopback name: it must be listed.
    let c = client_with(
        s.app.port,
        None,
        ClientOptions {
            redirect_hosts: vec!["localhost".into()],
            ..ClientOptions::default()
        },
    );
    let d = Digest::sha256_of(b"hello");
    let b = c.blob(&repo("team/app"), &d, None).await.unwrap();
    let mut out = Vec::new();
    let mut stream = b.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(out, b"hello");
    let st = s.app.stats.lock().unwrap();
    assert!(
        st.registry_auth
            .iter()
            .any(|a| a.as_deref().is_some_and(|a| a.starts_with("Bearer")))
    );
    assert_eq!(
        st.redirected_headers,
        vec![None],
        "storage host got no Authorization"
    );
}

#[tokio::test]
async fn a_503_is_one_request_and_a_temporary_error_for_the_engine_to_retry() {
    let s = serve(|_| {}).await;
    s.app.stats.lock().unwrap().flaky_left = 1;
    let c = client(s.app.port, None);
    let e = c
        .blob(&repo("team/flaky"), &Digest::sha256_of(b"hello"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Upstream {
                temporary: true,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        s.app.stats.lock().unwrap().flaky_calls,
        1,
        "the client does not retry on its own"
    );
    let b = c
        .blob(&repo("team/flaky"), &Digest::sha256_of(b"hello"), None)
        .await
        .unwrap();
    assert_eq!(b.size, 5);
}

#[tokio::test]
async fn a_429_is_toomanyrequests_with_retry_after_and_rate_limit_headers() {
    let s = serve(|_| {}).await;
    let c = client(s.app.port, None);
    let e = c
        .manifest(&repo("team/limited"), &latest(), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::TooManyRequests { retry_after: Some(d) } if d == Duration::from_secs(7)),
        "{e}"
    );
    assert_eq!(e.code(), ErrorCode::TooManyRequests);
    let rl = c.rate_limit().unwrap();
    assert_eq!(
        (rl.limit, rl.remaining, rl.window),
        (100, 0, Duration::from_secs(21600))
    );
}

#[tokio::test]
async fn connection_refused_is_a_typed_temporary_error() {
    let port = cache_upstream::testing::free_port();
    let c = client(port, None);
    let e = c
        .manifest(&repo("team/app"), &latest(), &[])
        .await
        .unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert_eq!(e.code().http_status(), 503);
}

#[tokio::test]
async fn a_manifest_that_does_not_match_the_requested_digest_is_refused() {
    let s = serve(|_| {}).await;
    let c = client(s.app.port, None);
    let wrong = Digest::sha256_of(b"something else");
    let e = c
        .manifest(&repo("team/app"), &Reference::Digest(wrong.clone()), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().http_status(), 502, "the upstream's fault: {e}");
    assert!(e.to_string().contains(wrong.as_str()), "{e}");
}
