//! What pull-side access adds to a warm request, and what grant lookups
//! cost as grants multiply, side by side in one run:
//!
//! * `access_warm_manifest`: a warm manifest `GET` through `PullService`
//!   with no auth, against the same with each kind of credential: a static
//!   token (full access), a robot token (its hash looked up, its grant
//!   index probed), a token of the token flow (its verification
//!   remembered), and an htpasswd user (its bcrypt check remembered);
//! * `grant_lookup`: `Grants::action` for a principal with 10, 1,000 and
//!   10,000 grants (each on a namespace of its own): a hit three
//!   components deep and a miss per iteration. The index is built once per
//!   principal and probes one hash map per name component, so the cost
//!   must not grow with the number of grants.

use std::sync::Arc;

use base64::Engine as _;
use cache_core::rules::Pattern;
use cache_core::server::{
    Action, AuthSpec, Glob, Grant, Grants, Principal, PrincipalKind, PrincipalPattern, PullAuth,
    PullService,
};
use cache_core::testing::{FakeUpstream, content};
use cache_core::{PullThroughCache, RepoName, RuleSpec, Tag};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// `printf %s ci-token | sha256sum`.
const CI_SHA: &str = "948b8c2427cd29047839b8e4a27a08763f8befbafa86be5cce8e46217d75e58a";

fn service(auth: Option<&str>) -> PullService {
    let up = Arc::new(FakeUpstream::new(
        "up.example",
        Arc::new(cache_core::runtime::TokioRuntime::current()),
    ));
    up.push_image(
        &RepoName::parse("library/app").unwrap(),
        &Tag::parse("v1").unwrap(),
        &[content(1, 4096)],
    );
    let cache = PullThroughCache::builder()
        .rule(RuleSpec::new("lib", "up.example/library/*", "library/*"))
        .store(cache_store::MemoryStore::new())
        .tokio()
        .upstream("up.example", up)
        .build()
        .unwrap();
    let pull = PullService::new(cache);
    match auth {
        None => pull,
        Some(text) => {
            let spec: AuthSpec = toml::from_str(text).unwrap();
            pull.auth(PullAuth::new(spec.load().unwrap()))
        }
    }
}

async fn get(
    pull: &PullService,
    path: &str,
    auth: Option<&str>,
) -> http::Response<axum::body::Body> {
    let mut b =
        http::Request::get(path).header("accept", "application/vnd.oci.image.manifest.v1+json");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    pull.answer(b.body(()).unwrap()).await
}

fn warm_manifest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hp = dir.path().join("htpasswd");
    std::fs::write(&hp, format!("old:{}\n", bcrypt_hash("old-pw"))).unwrap();
    let auth = format!(
        "htpasswd = \"{}\"\ntokens = [\"static-tok\"]\n[[token]]\nname = \"ci\"\nsha256 = \"{CI_SHA}\"\n[[grant]]\nprincipals = [\"ci\"]\nrepositories = [\"library/*\"]\nactions = [\"pull\"]\n",
        hp.display()
    );
    let open = rt.block_on(async { service(None) });
    let guarded = rt.block_on(async { service(Some(&auth)) });
    let path = "/v2/library/app/manifests/v1";
    let token = rt.block_on(async {
        let r = get(
            &guarded,
            "/token?scope=repository:library/app:pull",
            Some("Bearer ci-token"),
        )
        .await;
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        format!("Bearer {}", v["token"].as_str().unwrap())
    });
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("old:old-pw")
    );
    let cases: [(&str, &PullService, Option<&str>); 5] = [
        ("open", &open, None),
        ("static_token", &guarded, Some("Bearer static-tok")),
        ("robot_token", &guarded, Some("Bearer ci-token")),
        ("issued_token_remembered", &guarded, Some(&token)),
        ("htpasswd_user_remembered", &guarded, Some(&basic)),
    ];
    let mut g = c.benchmark_group("access_warm_manifest");
    for (name, pull, auth) in cases {
        // The first request fetches (and verifies); the rest are warm.
        rt.block_on(async {
            let r = get(pull, path, auth).await;
            assert_eq!(r.status(), 200, "{name}");
        });
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(async { assert_eq!(get(pull, path, auth).await.status(), 200) }))
        });
    }
    g.finish();
}

fn bcrypt_hash(password: &str) -> String {
    let out = std::process::Command::new("htpasswd")
        .args(["-nbB", "-C", "4", "u", password])
        .output()
        .expect("htpasswd (apt-get install apache2-utils)");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .strip_prefix("u:")
        .unwrap()
        .to_owned()
}

fn grant_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("grant_lookup");
    let ci = Principal::named(PrincipalKind::Token, "ci");
    for n in [10usize, 1000, 10_000] {
        let grants = Grants::new(
            (0..n)
                .map(|i| Grant {
                    principals: vec![PrincipalPattern::Name(Glob::new("ci"))],
                    repositories: vec![Pattern::parse_pattern(&format!("team{i}/*")).unwrap()],
                    action: if i % 2 == 0 {
                        Action::Pull
                    } else {
                        Action::PullCached
                    },
                })
                .collect(),
        );
        let hit = format!("team{}/app/web", n / 2);
        assert!(grants.action(&ci, &hit).is_some());
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                assert!(grants.action(&ci, &hit).is_some());
                assert!(grants.action(&ci, "elsewhere/app/web").is_none());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, warm_manifest, grant_lookup);
criterion_main!(benches);
