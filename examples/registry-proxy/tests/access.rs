//! Who may pull what, through the running server: principals (a bcrypt
//! user, a robot token, anonymous), grants with `pull` and `pull-cached`,
//! the registry token flow (skopeo with credentials, tokens read and
//! tampered with), the catalog and tag lists as each principal sees them,
//! throttled logins, and the principal in access logs, audit events and
//! metrics. The upstream is the Debian distribution registry; its access
//! log counts what the cache asked of it.

mod access_kit;
mod common;

use std::time::Duration;

use access_kit::{
    bcrypt, claims_of, ec_key, es256, header_of, now, pull_as, sha256_hex, upstream_requests,
    with_claims,
};
use cache_upstream::testing::{TestImage, TestRegistry, skopeo, write_image};
use common::{Proxy, code_of, http};

const CI_TOKEN: &str = "ci-robot-token-3f9a1c7e5b2d4f60";
const SERVICE: &str = "registry-proxy-test";

struct Env {
    up: TestRegistry,
    proxy: Proxy,
    cached: TestImage,
    uncached: TestImage,
    /// The token-signing key the server was configured with (PKCS#8 PEM).
    key: std::path::PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

fn push(
    up: &TestRegistry,
    repo: &str,
    seed: u64,
    sizes: &[usize],
) -> (TestImage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "v1", seed, sizes);
    up.push(&img.layout, "v1", repo).unwrap();
    (img, dir)
}

/// The upstream with `ci/app`, `library/cached`, `library/uncached` and
/// `library/nginx`; the proxy with rules `lib` (`library/*`) and `ci`
/// (`ci/*`, its signature policy auditing), and `[auth]`: user `puller`
/// (bcrypt) with `pull` everywhere, robot token `ci` with `pull` on
/// `ci/*`, `anonymous` with `pull-cached` on `library/*`; `extra_auth`
/// goes into `[auth]`.
fn start(extra_auth: &str) -> Env {
    let up = TestRegistry::start().unwrap_or_else(|e| panic!("{e}"));
    let (_, d1) = push(&up, "ci/app", 1, &[30_000]);
    let (cached, d2) = push(&up, "library/cached", 2, &[40_000, 10_000]);
    let (uncached, d3) = push(&up, "library/uncached", 3, &[20_000]);
    let (_, d4) = push(&up, "library/nginx", 4, &[20_000]);
    let keys = tempfile::tempdir().unwrap();
    let key = ec_key(keys.path(), "token-key.pem");
    let cosign = ec_key(keys.path(), "cosign.pem");
    let cosign_pub = keys.path().join("cosign.pub");
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&cosign)
        .arg("-out")
        .arg(&cosign_pub)
        .output()
        .unwrap();
    assert!(out.status.success());
    let body = common::config_for(
        &up.host(),
        &up.url(),
        &format!(
            "\n[[rule]]\nname = \"ci\"\nsource = \"{h}/ci/*\"\ntarget = \"ci/*\"\n[rule.signatures]\ncosign_keys = [\"{pubkey}\"]\nmode = \"audit\"\n\n\
             [auth]\nservice = \"{SERVICE}\"\nsigning_key = \"{key}\"\n{extra_auth}\n\
             [[auth.user]]\nname = \"puller\"\nbcrypt = \"{hash}\"\n\
             [[auth.token]]\nname = \"ci\"\nsha256 = \"{sha}\"\n\
             [[auth.grant]]\nprincipals = [\"ci\"]\nrepositories = [\"ci/*\"]\nactions = [\"pull\"]\n\
             [[auth.grant]]\nprincipals = [\"puller\"]\nrepositories = [\"*\"]\nactions = [\"pull\"]\n\
             [[auth.grant]]\nprincipals = [\"anonymous\"]\nrepositories = [\"library/*\"]\nactions = [\"pull-cached\"]\n",
            h = up.host(),
            pubkey = cosign_pub.display(),
            key = key.display(),
            hash = bcrypt("puller-pw"),
            sha = sha256_hex(CI_TOKEN),
        ),
    );
    let proxy = Proxy::start(&body);
    Env {
        up,
        proxy,
        cached,
        uncached,
        key,
        _dirs: vec![d1, d2, d3, d4, keys],
    }
}

async fn get(proxy: &Proxy, path: &str, auth: Auth<'_>) -> reqwest::Response {
    let r = http()
        .get(proxy.url(path))
        .header("accept", "application/vnd.oci.image.manifest.v1+json");
    let r = match auth {
        Auth::None => r,
        Auth::Basic(u, p) => r.basic_auth(u, Some(p)),
        Auth::Bearer(t) => r.bearer_auth(t),
    };
    r.send().await.unwrap()
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

/// A token from the proxy's token endpoint for `scopes`.
async fn token(proxy: &Proxy, scopes: &[&str], auth: Auth<'_>) -> reqwest::Response {
    let q: Vec<String> = scopes.iter().map(|s| format!("scope={s}")).collect();
    get(
        proxy,
        &format!("/token?service={SERVICE}&{}", q.join("&")),
        auth,
    )
    .await
}

async fn token_string(proxy: &Proxy, scopes: &[&str], auth: Auth<'_>) -> String {
    let r = token(proxy, scopes, auth).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = json(r).await;
    assert_eq!(v["token"], v["access_token"]);
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ci_robot_token_reads_ci_app_and_gets_403_on_library_nginx() {
    let e = start("");
    let out = tempfile::tempdir().unwrap();
    let creds = format!("ci:{CI_TOKEN}");
    pull_as(&e.proxy.host(), "ci/app:v1", out.path(), Some(&creds))
        .unwrap_or_else(|err| panic!("{err}\n{}", e.proxy.log()));
    let refused = pull_as(
        &e.proxy.host(),
        "library/nginx:v1",
        out.path(),
        Some(&creds),
    )
    .unwrap_err();
    assert!(
        refused.contains("ci may not pull library/nginx"),
        "{refused}"
    );
    // Straight, without the token flow: the robot token as Bearer or as Basic.
    for auth in [Auth::Bearer(CI_TOKEN), Auth::Basic("ci", CI_TOKEN)] {
        let r = get(&e.proxy, "/v2/ci/app/manifests/v1", auth).await;
        assert_eq!(r.status(), 200);
        let r = get(&e.proxy, "/v2/library/nginx/manifests/v1", auth).await;
        assert_eq!(code_of(r).await, (403, "DENIED".into()));
    }
    assert_eq!(
        e.up.requests("GET", "library/nginx/"),
        0,
        "a refusal asks the upstream nothing"
    );
    // Wrong credentials are a 401 with the challenge that names the token endpoint.
    let r = get(
        &e.proxy,
        "/v2/ci/app/manifests/v1",
        Auth::Bearer("not-a-token"),
    )
    .await;
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"http://{}/token\",service=\"{SERVICE}\"",
            e.proxy.host()
        )
    );
    // The principal is in the access log, the audit event and the metrics.
    let log = e.proxy.log();
    assert!(
        log.lines().any(|l| l.contains("request")
            && l.contains("principal=\"ci\"")
            && l.contains("/v2/ci/app/manifests/v1")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("principal=\"ci\"")
            && l.contains("audit_only")),
        "{log}"
    );
    assert!(
        e.proxy
            .metric("registry_proxy_access_total{class=\"token\",decision=\"pull\"}")
            .await
            >= 3
    );
    assert!(
        e.proxy
            .metric("registry_proxy_access_total{class=\"token\",decision=\"denied\"}")
            .await
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pull_cached_reads_what_is_cached_and_nothing_else_without_an_upstream_request() {
    let e = start("");
    let host = e.proxy.host();
    let user = "puller:puller-pw";
    let before = upstream_requests(&e.up);
    let by_user = tempfile::tempdir().unwrap();
    pull_as(&host, "library/cached:v1", by_user.path(), Some(user))
        .unwrap_or_else(|err| panic!("{err}\n{}", e.proxy.log()));
    // A user with `pull` causes exactly one fetch of each piece.
    assert_eq!(
        e.up.requests("GET", "library/cached/manifests/v1"),
        1,
        "{}",
        e.up.log()
    );
    for (d, _) in &e.cached.layers {
        assert_eq!(
            e.up.requests("GET", &format!("library/cached/blobs/{d}")),
            1,
            "{d}"
        );
    }
    assert!(upstream_requests(&e.up) > before);

    let counted = upstream_requests(&e.up);
    let anon = tempfile::tempdir().unwrap();
    pull_as(&host, "library/cached:v1", anon.path(), None)
        .unwrap_or_else(|err| panic!("{err}\n{}", e.proxy.log()));
    for (d, _) in &e.cached.layers {
        assert!(d.verifies(&std::fs::read(anon.path().join(d.hex())).unwrap()));
    }
    let refused = pull_as(&host, "library/uncached:v1", anon.path(), None).unwrap_err();
    assert!(refused.contains("not in the cache"), "{refused}");
    // Straight: a cached tag, a cached blob, an uncached manifest and blob.
    let r = get(&e.proxy, "/v2/library/cached/manifests/v1", Auth::None).await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-cache"].to_str().unwrap()
        ),
        (200, "hit")
    );
    let layer = &e.cached.layers[0].0;
    assert_eq!(
        get(
            &e.proxy,
            &format!("/v2/library/cached/blobs/{layer}"),
            Auth::None
        )
        .await
        .status(),
        200
    );
    let r = get(&e.proxy, "/v2/library/uncached/manifests/v1", Auth::None).await;
    assert_eq!(code_of(r).await, (404, "MANIFEST_UNKNOWN".into()));
    let layer = &e.uncached.layers[0].0;
    let r = get(
        &e.proxy,
        &format!("/v2/library/uncached/blobs/{layer}"),
        Auth::None,
    )
    .await;
    assert_eq!(code_of(r).await, (404, "BLOB_UNKNOWN".into()));
    let r = get(&e.proxy, "/v2/library/uncached/tags/list", Auth::None).await;
    let v: serde_json::Value = json(r).await;
    assert_eq!(
        v["tags"],
        serde_json::json!([]),
        "only what the cache recorded"
    );
    let r = get(&e.proxy, "/v2/library/cached/tags/list", Auth::None).await;
    let v: serde_json::Value = json(r).await;
    assert_eq!(v["tags"], serde_json::json!(["v1"]));
    // Nothing anonymous did reached the upstream (its access log says so).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream_requests(&e.up), counted, "{}", e.up.log());
    // Outside its grants anonymous is asked to log in.
    let r = get(&e.proxy, "/v2/ci/app/manifests/v1", Auth::None).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .ends_with(",scope=\"repository:ci/app:pull\"")
    );
    assert!(
        e.proxy
            .metric("registry_proxy_access_total{class=\"anonymous\",decision=\"pull-cached\"}")
            .await
            >= 5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_carry_exactly_the_granted_scopes_and_edited_or_expired_ones_are_refused() {
    let e = start("token_ttl = \"5m\"\nclock_skew = \"30s\"");
    let ci = Auth::Basic("ci", CI_TOKEN);
    let t = token_string(
        &e.proxy,
        &[
            "repository:ci/app:pull,push",
            "repository:library/nginx:pull",
        ],
        ci,
    )
    .await;
    let c = claims_of(&t);
    assert_eq!(
        c["access"],
        serde_json::json!([
            {"type": "repository", "name": "ci/app", "actions": ["pull"]},
            {"type": "repository", "name": "library/nginx", "actions": []},
        ]),
        "the token names only what was granted of what was asked"
    );
    assert_eq!(
        (c["sub"].as_str(), c["iss"].as_str(), c["aud"].as_str()),
        (Some("ci"), Some(SERVICE), Some(SERVICE))
    );
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
    assert_eq!(header_of(&t)["alg"], "ES256");
    assert_eq!(
        get(&e.proxy, "/v2/ci/app/manifests/v1", Auth::Bearer(&t))
            .await
            .status(),
        200
    );
    let r = get(&e.proxy, "/v2/library/nginx/manifests/v1", Auth::Bearer(&t)).await;
    assert_eq!(code_of(r).await, (403, "DENIED".into()));
    let r = get(&e.proxy, "/v2/ci/other/manifests/v1", Auth::Bearer(&t)).await;
    assert_eq!(r.status(), 401, "not in the token: ask for another");
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .ends_with(",scope=\"repository:ci/other:pull\",error=\"insufficient_scope\"")
    );

    // Widened by hand: the signature no longer holds.
    let mut wide = c.clone();
    wide["access"][1]["actions"] = serde_json::json!(["pull"]);
    let edited = with_claims(&t, &wide);
    let r = get(
        &e.proxy,
        "/v2/library/nginx/manifests/v1",
        Auth::Bearer(&edited),
    )
    .await;
    assert_eq!(r.status(), 401);
    // Signed with the configured key (as another instance would): accepted
    // while valid, refused once expired (past the 30 s of skew) ...
    let kid = header_of(&t)["kid"].as_str().unwrap().to_owned();
    let minted = |exp: u64| {
        let mut m = wide.clone();
        m["exp"] = exp.into();
        m["iat"] = (exp - 300).into();
        m["nbf"] = (exp - 300).into();
        es256(&e.key, Some(&kid), &m)
    };
    let valid = minted(now() + 60);
    assert_eq!(
        get(
            &e.proxy,
            "/v2/library/nginx/manifests/v1",
            Auth::Bearer(&valid)
        )
        .await
        .status(),
        200
    );
    let expired = minted(now() - 60);
    let r = get(
        &e.proxy,
        "/v2/library/nginx/manifests/v1",
        Auth::Bearer(&expired),
    )
    .await;
    assert_eq!(r.status(), 401);
    // ... and a key the server does not hold signs nothing it accepts.
    let other = tempfile::tempdir().unwrap();
    let foreign = es256(&ec_key(other.path(), "k.pem"), Some(&kid), &wide);
    assert_eq!(
        get(
            &e.proxy,
            "/v2/library/nginx/manifests/v1",
            Auth::Bearer(&foreign)
        )
        .await
        .status(),
        401
    );

    // A user's token; anonymous gets pull-cached of what it asked pull of;
    // wrong credentials get no token.
    let t = token_string(&e.proxy, &["repository:library/cached:pull"], Auth::None).await;
    assert_eq!(
        claims_of(&t)["access"][0]["actions"],
        serde_json::json!(["pull-cached"])
    );
    assert_eq!(claims_of(&t)["sub"], "anonymous");
    let r = token(
        &e.proxy,
        &["repository:ci/app:pull"],
        Auth::Basic("puller", "wrong"),
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = token(
        &e.proxy,
        &["repository:ci/app:pull"],
        Auth::Basic("puller", "puller-pw"),
    )
    .await;
    assert_eq!(r.status(), 200);

    // skopeo logs in through the token flow, and not with a wrong token.
    let auth = tempfile::tempdir().unwrap();
    let authfile = auth.path().join("auth.json").display().to_string();
    let login = |password: &str| {
        skopeo(&[
            "login".into(),
            "--tls-verify=false".into(),
            format!("--authfile={authfile}"),
            "-u".into(),
            "ci".into(),
            "-p".into(),
            password.into(),
            e.proxy.host(),
        ])
    };
    login(CI_TOKEN).unwrap_or_else(|err| panic!("{err}"));
    assert!(login("wrong-token").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_and_tag_lists_differ_as_the_principals_grants_do() {
    let e = start("");
    let out = tempfile::tempdir().unwrap();
    for image in ["library/cached:v1", "ci/app:v1"] {
        pull_as(&e.proxy.host(), image, out.path(), Some("puller:puller-pw"))
            .unwrap_or_else(|err| panic!("{err}"));
    }
    let catalog = |auth| {
        let proxy = &e.proxy;
        async move {
            let r = get(proxy, "/v2/_catalog", auth).await;
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = json(r).await;
            v["repositories"].clone()
        }
    };
    assert_eq!(
        catalog(Auth::Basic("puller", "puller-pw")).await,
        serde_json::json!(["ci/app", "library/cached"])
    );
    assert_eq!(
        catalog(Auth::Bearer(CI_TOKEN)).await,
        serde_json::json!(["ci/app"])
    );
    assert_eq!(
        catalog(Auth::None).await,
        serde_json::json!(["library/cached"])
    );
    // Through the token flow: the catalog scope lists what the grants cover.
    let t = token_string(
        &e.proxy,
        &["registry:catalog:*"],
        Auth::Basic("ci", CI_TOKEN),
    )
    .await;
    assert_eq!(
        claims_of(&t)["access"],
        serde_json::json!([{"type": "registry", "name": "catalog", "actions": ["*"], "repositories": ["ci/*"]}])
    );
    assert_eq!(
        catalog(Auth::Bearer(&t)).await,
        serde_json::json!(["ci/app"])
    );
    let t = token_string(
        &e.proxy,
        &["repository:ci/app:pull"],
        Auth::Basic("ci", CI_TOKEN),
    )
    .await;
    let r = get(&e.proxy, "/v2/_catalog", Auth::Bearer(&t)).await;
    assert_eq!(r.status(), 401, "a token without the catalog scope");
    // Tag lists and referrers: only of granted repositories.
    let r = get(
        &e.proxy,
        "/v2/library/cached/tags/list",
        Auth::Bearer(CI_TOKEN),
    )
    .await;
    assert_eq!(code_of(r).await, (403, "DENIED".into()));
    let d = &e.cached.digest;
    let r = get(
        &e.proxy,
        &format!("/v2/library/cached/referrers/{d}"),
        Auth::Bearer(CI_TOKEN),
    )
    .await;
    assert_eq!(code_of(r).await, (403, "DENIED".into()));
    let r = get(&e.proxy, "/v2/ci/app/tags/list", Auth::Bearer(CI_TOKEN)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_source() {
    let e = start("[auth.throttle]\nper_source = 3\nper_principal = 100\nwindow = \"1m\"");
    for i in 0..3 {
        let r = get(
            &e.proxy,
            "/v2/ci/app/manifests/v1",
            Auth::Basic("puller", &format!("guess-{i}")),
        )
        .await;
        assert_eq!(r.status(), 401);
    }
    let r = get(
        &e.proxy,
        "/v2/ci/app/manifests/v1",
        Auth::Basic("puller", "puller-pw"),
    )
    .await;
    assert_eq!(r.status(), 429, "throttled, right password or not");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(code_of(r).await.1, "TOOMANYREQUESTS");
    let r = token(
        &e.proxy,
        &["repository:ci/app:pull"],
        Auth::Basic("puller", "puller-pw"),
    )
    .await;
    assert_eq!(r.status(), 429, "at the token endpoint too");
    // A robot's token is a generated secret checked at the cost of a hash:
    // the right one passes from a throttled source (guessers cannot lock
    // a robot out), a wrong one is still throttled.
    let r = get(
        &e.proxy,
        "/v2/ci/app/manifests/v1",
        Auth::Basic("ci", CI_TOKEN),
    )
    .await;
    assert_eq!(r.status(), 200, "the robot's right token");
    let r = get(
        &e.proxy,
        "/v2/ci/app/manifests/v1",
        Auth::Basic("ci", "not-the-token"),
    )
    .await;
    assert_eq!(r.status(), 429, "a wrong robot token");
    // A token issued before, and anonymous reads, go on.
    assert!(
        e.proxy
            .metric("registry_proxy_access_total{class=\"anonymous\",decision=\"throttled\"}")
            .await
            >= 2
    );
    let r = get(&e.proxy, "/v2/library/cached/tags/list", Auth::None).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_users_and_static_tokens_keep_full_access_through_the_token_flow() {
    let up = TestRegistry::start().unwrap();
    let (_, _d) = push(&up, "library/demo", 7, &[10_000]);
    let dir = tempfile::tempdir().unwrap();
    let hp = dir.path().join("htpasswd");
    std::fs::write(&hp, format!("old:{}\n", bcrypt("old-pw"))).unwrap();
    let proxy = Proxy::start(&format!(
        "{}\n[auth]\nhtpasswd = \"{}\"\ntokens = [\"static-tok\"]\n",
        common::config(&up, ""),
        hp.display()
    ));
    let out = tempfile::tempdir().unwrap();
    pull_as(
        &proxy.host(),
        "library/demo:v1",
        out.path(),
        Some("old:old-pw"),
    )
    .unwrap_or_else(|err| panic!("{err}\n{}", proxy.log()));
    let r = get(
        &proxy,
        "/v2/library/demo/manifests/v1",
        Auth::Bearer("static-tok"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = get(&proxy, "/v2/library/demo/manifests/v1", Auth::None).await;
    assert_eq!(r.status(), 401, "no grant names anonymous");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_a_generated_signing_key_and_tokens_it_signed_stay_valid() {
    let up = TestRegistry::start().unwrap();
    let (_, _d) = push(&up, "ci/app", 9, &[10_000]);
    let proxy = Proxy::start(&common::config_for(
        &up.host(),
        &up.url(),
        &format!(
            "\n[[rule]]\nname = \"ci\"\nsource = \"{h}/ci/*\"\ntarget = \"ci/*\"\n\
             [auth]\n[[auth.token]]\nname = \"ci\"\nsha256 = \"{sha}\"\n\
             [[auth.grant]]\nprincipals = [\"ci\"]\nrepositories = [\"ci/*\"]\nactions = [\"pull\"]\n",
            h = up.host(),
            sha = sha256_hex(CI_TOKEN),
        ),
    ));
    let ci = Auth::Basic("ci", CI_TOKEN);
    let first = token_string(&proxy, &["repository:ci/app:pull"], ci).await;
    let reloads = || proxy.metric("registry_proxy_config_reloads_total{result=\"applied\"}");
    let before = reloads().await;
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(proxy.child.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reloads().await == before {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = token_string(&proxy, &["repository:ci/app:pull"], ci).await;
    assert_ne!(
        header_of(&first)["kid"],
        header_of(&second)["kid"],
        "a new key"
    );
    for t in [&first, &second] {
        let r = get(&proxy, "/v2/ci/app/manifests/v1", Auth::Bearer(t)).await;
        assert_eq!(r.status(), 200, "{}", proxy.log());
    }
}
