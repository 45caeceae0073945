//! The whole router, in process, against arbitrary requests: methods,
//! paths, queries and headers a hostile client might send. Whatever comes
//! in, the answer is never a 5xx (the upstream here is healthy, so every
//! failure is the client's) and never a panic, and the metrics keep a
//! bounded set of series. `PROPTEST_CASES` raises the number of cases.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request};
use bytes::Bytes;
use cache_core::server::PullAuth;
use cache_core::testing::{FakeUpstream, content};
use cache_core::{PullThroughCache, RepoName, RuleSet, RuleSpec, Tag};
use cache_store::{MemoryStore, TokioRuntime};
use proptest::prelude::*;
use registry_proxy::config::AuthConfig;
use registry_proxy::http::{App, AppState, app};
use registry_proxy::metrics::Metrics;
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    app: App,
    metrics: Arc<Metrics>,
    layer: String,
    manifest: String,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (app, metrics, layer, manifest) = rt.block_on(async {
            let tokio_rt = Arc::new(TokioRuntime::current());
            let up = Arc::new(FakeUpstream::new("up.example", tokio_rt.clone()));
            let img = up.push_image(
                &RepoName::parse("library/app").unwrap(),
                &Tag::parse("v1").unwrap(),
                &[content(1, 3000)],
            );
            let rules =
                RuleSet::new(&[RuleSpec::new("lib", "up.example/library/*", "library/*")]).unwrap();
            let metrics = Arc::new(Metrics::default());
            let cache = PullThroughCache::builder()
                .rules(rules)
                .store(MemoryStore::new())
                .tokio()
                .upstream("up.example", up)
                .events(metrics.clone())
                .build()
                .unwrap();
            let mut auth = AuthConfig::default();
            auth.tokens.push(cache_upstream::Secret::new("good-token"));
            let state = AppState {
                cache,
                metrics: metrics.clone(),
                auth: Arc::new(arc_swap::ArcSwapOption::from_pointee(PullAuth::new(auth))),
                draining: Arc::default(),
                scoped: Arc::default(),
            };
            (
                app(state),
                metrics,
                img.layers[0].0.to_string(),
                img.manifest.to_string(),
            )
        });
        World {
            rt,
            app,
            metrics,
            layer,
            manifest,
        }
    })
}

/// Path segments, from valid to hostile.
fn segment() -> impl Strategy<Value = String> {
    let w = world();
    prop_oneof![
        Just("library".to_owned()),
        Just("app".to_owned()),
        Just("manifests".to_owned()),
        Just("blobs".to_owned()),
        Just("tags".to_owned()),
        Just("list".to_owned()),
        Just("uploads".to_owned()),
        Just("referrers".to_owned()),
        Just("v1".to_owned()),
        Just(w.layer.clone()),
        Just(w.manifest.clone()),
        Just(w.layer.replace(':', "%3A")),
        Just("sha256:".to_owned() + &"0".repeat(64)),
        Just("..".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("a%2Fb".to_owned()),
        Just("%00".to_owned()),
        Just("".to_owned()),
        "[a-zA-Z0-9._~%:-]{1,30}",
        "[ -~]{0,20}",
    ]
}

fn request() -> impl Strategy<Value = (String, String, Vec<(String, String)>)> {
    let method = prop_oneof![
        Just("GET".to_owned()),
        Just("HEAD".to_owned()),
        Just("POST".to_owned()),
        Just("PUT".to_owned()),
        Just("DELETE".to_owned()),
        Just("PATCH".to_owned()),
        Just("OPTIONS".to_owned()),
        "[A-Z]{1,12}",
    ];
    let w = world();
    let name = prop_oneof![
        Just("library/app".to_owned()),
        Just("library/other".to_owned()),
        Just("nope".to_owned()),
        Just("Library/App".to_owned()),
        Just("library/../app".to_owned()),
        segment(),
    ];
    let reference = prop_oneof![
        Just("v1".to_owned()),
        Just("latest".to_owned()),
        Just(w.manifest.clone()),
        Just(".INVALID".to_owned()),
        segment(),
    ];
    let digest = prop_oneof![
        Just(w.layer.clone()),
        Just(w.manifest.clone()),
        Just(w.layer.replace(':', "%3A")),
        Just("sha256:".to_owned() + &"a".repeat(64)),
        Just("sha512:".to_owned() + &"b".repeat(128)),
        Just("md5:abc".to_owned()),
        segment(),
    ];
    // Route shapes with hostile holes, and free-form paths.
    let shaped = (0u8..6, name, reference, digest).prop_map(|(k, n, r, d)| match k {
        0 => format!("/v2/{n}/manifests/{r}"),
        1 => format!("/v2/{n}/blobs/{d}"),
        2 => format!("/v2/{n}/tags/list"),
        3 => format!("/v2/{n}/blobs/uploads/"),
        4 => format!("/v2/{n}/referrers/{d}"),
        _ => "/v2/_catalog".to_owned(),
    });
    let free = (
        prop_oneof![
            Just("/v2/"),
            Just("/v2"),
            Just("/"),
            Just("/metrics"),
            Just("/v2//")
        ],
        proptest::collection::vec(segment(), 0..6),
    )
        .prop_map(|(root, segs)| format!("{root}{}", segs.join("/")));
    let path = prop_oneof![3 => shaped, 1 => free];
    let query = proptest::option::of(proptest::collection::vec(
        (
            prop_oneof![
                Just("n"),
                Just("last"),
                Just("ns"),
                Just("artifactType"),
                Just("x")
            ],
            prop_oneof![
                Just("up.example".to_owned()),
                Just("5".to_owned()),
                Just("-1".to_owned()),
                Just("99999999999999999999999".to_owned()),
                "[ -~]{0,20}",
            ],
        ),
        0..4,
    ));
    let header = (
        prop_oneof![
            Just("range"),
            Just("accept"),
            Just("if-none-match"),
            Just("authorization"),
            Just("x-anything"),
        ],
        prop_oneof![
            Just("Bearer good-token".to_owned()),
            Just("bytes=0-10".to_owned()),
            Just("bytes=-5".to_owned()),
            Just("bytes=5000-".to_owned()),
            Just("*/*".to_owned()),
            "[ -~]{0,40}",
        ],
    );
    (method, path, query, proptest::collection::vec(header, 0..5)).prop_map(|(m, p, q, h)| {
        let q = q
            .map(|kv| {
                let kv: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{k}={}", v.replace(['&', '#', ' '], "")))
                    .collect();
                format!("?{}", kv.join("&"))
            })
            .unwrap_or_default();
        (
            m,
            format!("{p}{q}"),
            h.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
    ))]

    #[test]
    fn no_client_input_gets_a_5xx_or_a_panic((method, uri, headers) in request()) {
        let w = world();
        let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Ok(()); };
        let Ok(uri) = uri.parse::<axum::http::Uri>() else { return Ok(()); };
        let mut req = Request::builder().method(method).uri(uri.clone());
        // Most requests authenticate, so they reach the handlers.
        if !headers.iter().any(|(k, _)| k == "authorization") {
            req = req.header("authorization", "Bearer good-token");
        }
        for (k, v) in &headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                req = req.header(k.as_str(), v);
            }
        }
        let req = req.body(Body::empty()).unwrap();
        let resp = w.rt.block_on(async {
            let r = w.app.clone().oneshot(req).await.unwrap();
            let status = r.status();
            let body: Bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap_or_default();
            (status, body)
        });
        prop_assert!(
            resp.0.as_u16() < 500,
            "{uri} with {headers:?}: {} {}",
            resp.0,
            String::from_utf8_lossy(&resp.1)
        );
    }
}

#[test]
fn after_thousands_of_hostile_requests_the_metrics_are_still_a_bounded_set() {
    // Runs the property test's world with its own hostile methods first.
    let w = world();
    w.rt.block_on(async {
        for i in 0..500 {
            let method = Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
            let req = Request::builder()
                .method(method)
                .uri(format!("/v2/library/app/manifests/t{i}"))
                .header("authorization", "Bearer good-token")
                .body(Body::empty())
                .unwrap();
            let r = w.app.clone().oneshot(req).await.unwrap();
            assert_eq!(r.status(), 405);
        }
    });
    let text = w.metrics.render(0);
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series < 100, "{series} series:\n{text}");
    assert!(!text.contains("M1X"));
}
