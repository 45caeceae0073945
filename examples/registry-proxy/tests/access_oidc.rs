//! Workload identities through the running server: JWTs the tests mint
//! with their own RSA keys, verified against a JWKS file (re-read on
//! reload) and a JWKS URL the server fetches in the background (under the
//! address policy: an internal host only when listed).

mod access_kit;
mod common;

use std::time::{Duration, Instant};

use access_kit::{RsaKey, b64url, jwks, now, pull_as, rs256, rsa_key};
use cache_upstream::testing::{TestRegistry, write_image};
use common::{Proxy, code_of, http};

const K8S: &str = "https://kubernetes.default.svc.cluster.local";
const GH: &str = "https://token.actions.githubusercontent.com";

/// The claims of a Kubernetes service-account token for `sa` in `ns`.
fn service_account(ns: &str, sa: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": K8S,
        "aud": ["registry-proxy"],
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "exp": now() + 600,
        "iat": now(),
        "nbf": now(),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "0b9e"}},
    })
}

/// The claims of a GitHub Actions token of `owner/app`.
fn workflow(owner: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": GH,
        "aud": "registry-proxy",
        "sub": format!("repo:{owner}/app:ref:refs/heads/main"),
        "repository": format!("{owner}/app"),
        "repository_owner": owner,
        "exp": now() + 600,
        "iat": now(),
    })
}

async fn manifest(proxy: &Proxy, token: &str) -> reqwest::Response {
    http()
        .get(proxy.url("/v2/ci/app/manifests/v1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn status(proxy: &Proxy, token: &str) -> u16 {
    manifest(proxy, token).await.status().as_u16()
}

/// Serves `body` at `/jwks` on 127.0.0.1: the URL.
async fn serve_jwks(body: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/jwks", axum::routing::get(move || async move { body }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{port}/jwks")
}

struct Keys {
    k1: RsaKey,
    k2: RsaKey,
    k3: RsaKey,
    dir: tempfile::TempDir,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    Keys {
        k1: rsa_key(dir.path(), "k1.pem"),
        k2: rsa_key(dir.path(), "k2.pem"),
        k3: rsa_key(dir.path(), "k3.pem"),
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_tokens_pull_by_their_grants_and_forged_ones_are_refused() {
    let up = TestRegistry::start().unwrap();
    let src = tempfile::tempdir().unwrap();
    let img = write_image(src.path(), "v1", 11, &[20_000]);
    up.push(&img.layout, "v1", "ci/app").unwrap();
    let k = keys();
    let jwks_file = k.dir.path().join("k8s-jwks.json");
    std::fs::write(&jwks_file, jwks(&[("k1", &k.k1)])).unwrap();
    let url = serve_jwks(jwks(&[("k3", &k.k3)])).await;
    let body = format!(
        "[storage]\nbackend = \"fs\"\npath = \"cache-data\"\n[[registry]]\nhost = \"{h}\"\nendpoint = \"{u}\"\n\
         [[rule]]\nname = \"ci\"\nsource = \"{h}/ci/*\"\ntarget = \"ci/*\"\n\
         [auth]\nservice = \"registry-proxy-test\"\n\
         [[auth.oidc]]\nname = \"k8s\"\nissuer = \"{K8S}\"\naudience = [\"registry-proxy\"]\njwks_file = \"{jf}\"\n\
         [[auth.oidc]]\nname = \"gh\"\nissuer = \"{GH}\"\naudience = \"registry-proxy\"\njwks_url = \"{url}\"\njwks_hosts = [\"127.0.0.1\"]\nprincipal = \"repository\"\n\
         [[auth.oidc]]\nname = \"blocked\"\nissuer = \"https://blocked.example\"\naudience = \"registry-proxy\"\njwks_url = \"{url}\"\n\
         [[auth.grant]]\nprincipals = [\"k8s:system:serviceaccount:ci:*\", \"gh:repository_owner=acme\", \"blocked:*\"]\nrepositories = [\"ci/*\"]\nactions = [\"pull\"]\n",
        h = up.host(),
        u = up.url(),
        jf = jwks_file.display(),
    );
    let proxy = Proxy::start(&body);

    // A service-account token with the right audience pulls, as a Bearer
    // token and through the token flow as the password (skopeo).
    let good = rs256(&k.k1, "k1", &service_account("ci", "builder"));
    assert_eq!(status(&proxy, &good).await, 200, "{}", proxy.log());
    let out = tempfile::tempdir().unwrap();
    pull_as(
        &proxy.host(),
        "ci/app:v1",
        out.path(),
        Some(&format!("oauth2accesstoken:{good}")),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert!(
        proxy
            .log()
            .contains("principal=\"k8s:system:serviceaccount:ci:builder\""),
        "{}",
        proxy.log()
    );
    // Another namespace's service account: authenticated, not granted.
    let prod = rs256(&k.k1, "k1", &service_account("prod", "web"));
    assert_eq!(
        code_of(manifest(&proxy, &prod).await).await,
        (403, "DENIED".into())
    );

    // Refused: wrong audience, wrong issuer, a key of another issuer,
    // expired, unsigned, and HS256 "signed" with the public key.
    let mut wrong_aud = service_account("ci", "builder");
    wrong_aud["aud"] = serde_json::json!(["someone-else"]);
    let mut wrong_iss = service_account("ci", "builder");
    wrong_iss["iss"] = "https://evil.example".into();
    let mut other_issuer = service_account("ci", "builder");
    other_issuer["iss"] = GH.into();
    other_issuer["repository_owner"] = "acme".into();
    other_issuer["repository"] = "acme/app".into();
    let mut expired = service_account("ci", "builder");
    expired["exp"] = (now() - 600).into();
    expired["iat"] = (now() - 1200).into();
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(service_account("ci", "builder").to_string().as_bytes())
    );
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("k1".into());
        let key = jsonwebtoken::EncodingKey::from_secret(&k.k1.public_pem);
        jsonwebtoken::encode(&h, &service_account("ci", "builder"), &key).unwrap()
    };
    for (what, token) in [
        ("wrong audience", rs256(&k.k1, "k1", &wrong_aud)),
        ("wrong issuer", rs256(&k.k1, "k1", &wrong_iss)),
        ("another issuer's key", rs256(&k.k1, "k3", &other_issuer)),
        ("expired", rs256(&k.k1, "k1", &expired)),
        ("alg none", none),
        ("HS256 with the public key as secret", hs256),
    ] {
        assert_eq!(status(&proxy, &token).await, 401, "{what}");
        // As a password at the token endpoint too.
        let r = http()
            .get(proxy.url("/token?scope=repository:ci/app:pull"))
            .basic_auth("oauth2accesstoken", Some(&token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what} at /token");
    }

    // The JWKS URL, fetched in the background: a workflow of `acme` pulls,
    // one of another owner is not granted.
    let acme = rs256(&k.k3, "k3", &workflow("acme"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&proxy, &acme).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the JWKS URL's key never took effect\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        proxy
            .logs(|l| l.contains("principal=\"gh:acme/app\""))
            .await
    );
    let evil = rs256(&k.k3, "k3", &workflow("evil"));
    assert_eq!(status(&proxy, &evil).await, 403);
    // The same URL for a provider that does not list 127.0.0.1: not fetched.
    let mut blocked = workflow("acme");
    blocked["iss"] = "https://blocked.example".into();
    assert_eq!(status(&proxy, &rs256(&k.k3, "k3", &blocked)).await, 401);
    assert!(
        proxy
            .logs(|l| l.contains("refused to connect to 127.0.0.1"))
            .await,
        "{}",
        proxy.log()
    );

    // A rotation through reload: k2 replaces k1 in the file, without a restart.
    let rotated = rs256(&k.k2, "k2", &service_account("ci", "builder"));
    assert_eq!(status(&proxy, &rotated).await, 401, "not yet in the file");
    std::fs::write(&jwks_file, jwks(&[("k2", &k.k2)])).unwrap();
    let reloads = proxy
        .metric("registry_proxy_config_reloads_total{result=\"applied\"}")
        .await;
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(proxy.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy
        .metric("registry_proxy_config_reloads_total{result=\"applied\"}")
        .await
        == reloads
    {
        assert!(Instant::now() < deadline, "no reload\n{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&proxy, &rotated).await, 200, "{}", proxy.log());
    assert_eq!(status(&proxy, &good).await, 401, "k1 left the file");
    assert_eq!(
        status(&proxy, &acme).await,
        200,
        "the URL's keys carried over the reload"
    );
}
