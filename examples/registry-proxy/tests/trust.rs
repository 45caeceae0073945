//! Trust at the cache, through the running server: a rule's cosign
//! signature policy (keys and signatures made by `openssl`, signature
//! manifests built here and pushed with skopeo to the Debian distribution
//! registry next to the images), the referrers API through the cache, the
//! catalog, and the audit trail.
//!
//! The Debian distribution registry has no referrers API, so the cases
//! that need one run against the in-process registry (`HostileRegistry`),
//! which answers `GET /v2/<name>/referrers/<digest>` where a test sets it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use cache_core::Digest;
use cache_core::cosign::{SIGNATURE_ANNOTATION, SIGNATURE_ARTIFACT, SIMPLE_SIGNING};
use cache_upstream::testing::{
    HostileRegistry, TestImage, TestRegistry, require, skopeo, write_artifact, write_image,
    write_index,
};
use common::{Proxy, http};

/// The body of a response as JSON (reqwest here has no `json` feature).
trait JsonBody {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

/// An ECDSA P-256 key pair made by openssl: (private PEM, public PEM) files.
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let openssl = require("openssl", "openssl").unwrap_or_else(|e| panic!("{e}"));
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let run = |args: &[&str]| {
        let out = Command::new(&openssl).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        private.to_str().unwrap(),
    ]);
    run(&[
        "ec",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (private, public)
}

/// openssl's ECDSA-SHA256 signature of `payload`, base64 (as cosign writes it).
fn sign(private: &Path, payload: &[u8]) -> String {
    let openssl = require("openssl", "openssl").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (p, sig) = (dir.path().join("payload"), dir.path().join("sig.der"));
    std::fs::write(&p, payload).unwrap();
    let out = Command::new(&openssl)
        .args(["dgst", "-sha256", "-sign"])
        .arg(private)
        .arg("-out")
        .arg(&sig)
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&openssl)
        .args(["base64", "-A", "-in"])
        .arg(&sig)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A simple signing payload naming `d`, as cosign writes it.
fn payload(repo: &str, d: &Digest) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{repo}"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

fn annotations(sig: &str) -> String {
    format!(r#"{{"{SIGNATURE_ANNOTATION}":"{sig}"}}"#)
}

/// Pushes a signature manifest for `signed` (payload and signature as
/// given) under cosign's tag `sha256-<hex>.sig` in `repo`.
fn push_signature(up: &TestRegistry, repo: &str, signed: &Digest, payload: &[u8], sig: &str) {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("sha256-{}.sig", signed.hex());
    let ann = annotations(sig);
    write_artifact(
        dir.path(),
        &tag,
        &[(SIMPLE_SIGNING, payload, &ann)],
        None,
        None,
    );
    up.push(dir.path(), &tag, repo).unwrap();
}

fn push(up: &TestRegistry, repo: &str, seed: u64) -> (TestImage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "v1", seed, &[30_000]);
    up.push(&img.layout, "v1", repo).unwrap();
    (img, dir)
}

fn rules(host: &str, public: &Path) -> String {
    format!(
        "[[rule]]\nname = \"signed\"\nsource = \"{host}/signed/*\"\ntarget = \"signed/*\"\n[rule.signatures]\ncosign_keys = [\"{k}\"]\nmode = \"enforce\"\n\n[[rule]]\nname = \"audited\"\nsource = \"{host}/audited/*\"\ntarget = \"audited/*\"\n[rule.signatures]\ncosign_keys = [\"{k}\"]\nmode = \"audit\"\n",
        k = public.display()
    )
}

fn proxy_config(up_host: &str, up_url: &str, rules: &str) -> String {
    format!(
        "[storage]\npath = \"cache-data\"\n\n[[registry]]\nhost = \"{up_host}\"\nendpoint = \"{up_url}\"\n\n{rules}"
    )
}

fn pull_arch(proxy: &Proxy, reference: &str, arch: &str) -> Result<(), String> {
    let out = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy".into(),
        "--insecure-policy".into(),
        "--src-tls-verify=false".into(),
        format!("--override-arch={arch}"),
        format!("docker://{}/{reference}", proxy.host()),
        format!("dir:{}", out.path().display()),
    ])
}

fn layer_gets(up: &TestRegistry, img: &TestImage) -> usize {
    img.layers
        .iter()
        .map(|(d, _)| up.requests("GET", d.hex()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforcing_rule_serves_signed_images_and_refuses_the_rest_without_fetching_a_layer() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path(), "release");
    let (other_private, _) = keypair(keys.path(), "other");
    let up = TestRegistry::start().unwrap();

    let (good, _g) = push(&up, "signed/good", 1);
    let p = payload("signed/good", &good.digest);
    push_signature(&up, "signed/good", &good.digest, &p, &sign(&private, &p));

    let (none, _n) = push(&up, "signed/none", 2);

    let (wrong, _w) = push(&up, "signed/wrongkey", 3);
    let p = payload("signed/wrongkey", &wrong.digest);
    push_signature(
        &up,
        "signed/wrongkey",
        &wrong.digest,
        &p,
        &sign(&other_private, &p),
    );

    let (elsewhere, _e) = push(&up, "signed/otherdigest", 4);
    let p = payload("signed/otherdigest", &good.digest);
    push_signature(
        &up,
        "signed/otherdigest",
        &elsewhere.digest,
        &p,
        &sign(&private, &p),
    );

    let (tampered, _t) = push(&up, "signed/tampered", 5);
    let p = payload("signed/tampered", &tampered.digest);
    let sig = sign(&private, &p);
    let altered = String::from_utf8(p)
        .unwrap()
        .replace(
            "cosign container image signature",
            "cosign container image signaturE",
        )
        .into_bytes();
    push_signature(&up, "signed/tampered", &tampered.digest, &altered, &sig);

    let (unsigned_audited, _a) = push(&up, "audited/none", 6);

    let proxy = Proxy::start(&proxy_config(
        &up.host(),
        &up.url(),
        &rules(&up.host(), &public),
    ));

    let out = tempfile::tempdir().unwrap();
    common::pull(&proxy, "signed/good:v1", out.path(), false)
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    for (d, _) in &good.layers {
        assert!(d.verifies(&std::fs::read(out.path().join(d.hex())).unwrap()));
    }

    for (repo, img, reason) in [
        ("signed/none", &none, "no signature"),
        (
            "signed/wrongkey",
            &wrong,
            "no signature verifies with a configured key",
        ),
        ("signed/otherdigest", &elsewhere, "for another digest"),
        (
            "signed/tampered",
            &tampered,
            "no signature verifies with a configured key",
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let e = common::pull(&proxy, &format!("{repo}:v1"), out.path(), false)
            .expect_err(&format!("{repo} is refused"));
        assert!(e.contains("denied") && e.contains(reason), "{repo}: {e}");
        assert_eq!(layer_gets(&up, img), 0, "{repo}: no layer fetched upstream");
        // The manifest by digest and the layers by digest are refused too.
        let r = http()
            .get(proxy.url(&format!("/v2/{repo}/manifests/{}", img.digest)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{repo}");
        assert!(r.text().await.unwrap().contains("DENIED"));
        common::assert_layers_refused(&proxy, repo, img, "a layer of a refused image").await;
        assert_eq!(layer_gets(&up, img), 0, "{repo}: still no layer fetched");
    }

    // Audit mode serves and counts.
    let out = tempfile::tempdir().unwrap();
    common::pull(&proxy, "audited/none:v1", out.path(), false).unwrap();
    assert!(layer_gets(&up, &unsigned_audited) > 0);

    let metrics = proxy.metrics().await;
    let count = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(count("registry_proxy_admissions_total{rule=\"signed\",outcome=\"allowed\"}") >= 1);
    assert!(count("registry_proxy_admissions_total{rule=\"signed\",outcome=\"refused\"}") >= 4);
    assert!(count("registry_proxy_admissions_total{rule=\"audited\",outcome=\"audit_only\"}") >= 1);
    // The audit trail: one event per decision, with its fields.
    let log = proxy.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admission") && l.contains("outcome=\"refused\""))
        .collect();
    assert!(refusals.len() >= 4, "{log}");
    for l in &refusals {
        for field in ["rule=", "repository=", "reference=", "digest=", "reason="] {
            assert!(l.contains(field), "{field} in {l}");
        }
    }
    assert!(log.contains("outcome=\"audit_only\""), "{log}");
    assert!(log.contains("signed with"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_on_one_platform_manifest_admits_that_platform_only() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path(), "release");
    let up = TestRegistry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index = write_index(dir.path(), "v1", 7, 20_000);
    up.push(&index.layout, "v1", "signed/multi").unwrap();
    let (amd64, _) = &index.platforms[0];
    let p = payload("signed/multi", amd64);
    push_signature(&up, "signed/multi", amd64, &p, &sign(&private, &p));
    let proxy = Proxy::start(&proxy_config(
        &up.host(),
        &up.url(),
        &rules(&up.host(), &public),
    ));

    pull_arch(&proxy, "signed/multi:v1", "amd64")
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let e =
        pull_arch(&proxy, "signed/multi:v1", "arm64").expect_err("the arm64 manifest is unsigned");
    assert!(e.contains("no signature"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_published_later_is_picked_up_after_the_recheck_interval() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path(), "release");
    let up = TestRegistry::start().unwrap();
    let (img, _d) = push(&up, "signed/late", 8);
    let rules = rules(&up.host(), &public).replace(
        "mode = \"enforce\"\n",
        "mode = \"enforce\"\nrecheck_refused = \"1s\"\n",
    );
    let proxy = Proxy::start(&proxy_config(&up.host(), &up.url(), &rules));
    let url = proxy.url("/v2/signed/late/manifests/v1");
    assert_eq!(http().get(&url).send().await.unwrap().status(), 403);
    let p = payload("signed/late", &img.digest);
    push_signature(&up, "signed/late", &img.digest, &p, &sign(&private, &p));
    // Still refused within the interval, then admitted.
    assert_eq!(http().get(&url).send().await.unwrap().status(), 403);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_and_referrers_through_an_upstream_with_the_referrers_api() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path(), "release");
    let up = HostileRegistry::start("127.0.0.1");
    let img = up.push_image("signed/ref", "v1", &[Bytes::from_static(b"a layer")]);
    let manifest = reqwest::get(format!("{}/v2/signed/ref/manifests/v1", up.url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    // A signature manifest whose subject is the image, found only through
    // the referrers API (no .sig tag).
    let p = payload("signed/ref", &img.manifest);
    let sig = sign(&private, &p);
    let pd = up.add_blob(Bytes::from(p.clone()));
    let config = up.add_blob(Bytes::from_static(b"{}"));
    let sig_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"{SIGNATURE_ARTIFACT}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"{pd}","size":{},"annotations":{}}}],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{}}}}}"#,
        p.len(),
        annotations(&sig),
        img.manifest,
        manifest.len()
    );
    let sd = up.add_manifest(
        "signed/ref",
        None,
        sig_manifest.clone(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{sd}","size":{},"artifactType":"{SIGNATURE_ARTIFACT}"}}]}}"#,
        sig_manifest.len()
    );
    up.set_referrers("signed/ref", &img.manifest, index);
    // Referrers kept for an hour (the rule's tag freshness).
    let rules = rules(&up.host(), &public).replacen(
        "[rule.signatures]\n",
        "tag_freshness = \"ttl:1h\"\n[rule.signatures]\n",
        1,
    );
    let proxy = Proxy::start(&proxy_config(&up.host(), &up.url(), &rules));

    let r = http()
        .get(proxy.url("/v2/signed/ref/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", proxy.log());

    // The referrers API through the cache: cold, then warm from the cache.
    let url = proxy.url(&format!("/v2/signed/ref/referrers/{}", img.manifest));
    let before = up.requests("GET", "/referrers/");
    for expect in ["miss", "hit"] {
        let r = http().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-cache"], expect);
        assert_eq!(
            r.headers()["content-type"],
            "application/vnd.oci.image.index.v1+json"
        );
        let v: serde_json::Value = r.json_value().await;
        assert_eq!(v["manifests"][0]["digest"], sd.as_str());
    }
    assert_eq!(
        up.requests("GET", "/referrers/") - before,
        1,
        "the warm answer came from the cache"
    );
    let r = http()
        .get(format!("{url}?artifactType={SIGNATURE_ARTIFACT}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let v: serde_json::Value = r.json_value().await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    let r = http()
        .get(format!("{url}?artifactType=application/example"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json_value().await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 0);

    // The signature manifest and its payload pull through the cache (a
    // signature needs no signature), as `cosign verify` would fetch them.
    let r = http()
        .get(proxy.url(&format!("/v2/signed/ref/manifests/{sd}")))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", proxy.log());
    assert_eq!(r.bytes().await.unwrap(), sig_manifest.as_bytes());
    let r = http()
        .get(proxy.url(&format!("/v2/signed/ref/blobs/{pd}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_fall_back_to_the_tag_schema_where_the_upstream_has_no_api() {
    let up = TestRegistry::start().unwrap();
    let (img, _d) = push(&up, "library/app", 9);
    // A referrer (an attestation-like artifact) and the fallback index
    // tagged sha256-<hex>, as clients of registries without the API push.
    let art = tempfile::tempdir().unwrap();
    let size = std::fs::read(img.layout.join("blobs/sha256").join(img.digest.hex()))
        .unwrap()
        .len();
    let a = write_artifact(
        art.path(),
        "att",
        &[("application/vnd.in-toto+json", b"{\"statement\":1}", "{}")],
        Some("application/vnd.example.sbom"),
        Some((
            &img.digest,
            size,
            "application/vnd.oci.image.manifest.v1+json",
        )),
    );
    up.push(art.path(), "att", "library/app").unwrap();
    let a_size = std::fs::read(art.path().join("blobs/sha256").join(a.digest.hex()))
        .unwrap()
        .len();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{a_size},"artifactType":"application/vnd.example.sbom"}}]}}"#,
        a.digest
    );
    // skopeo will not copy an index of artifacts with digests preserved:
    // PUT it as a client of the tag schema does.
    let r = http()
        .put(format!(
            "{}/v2/library/app/manifests/sha256-{}",
            up.url(),
            img.digest.hex()
        ))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let proxy = Proxy::start(&common::config(&up, ""));
    let r = http()
        .get(proxy.url(&format!("/v2/library/app/referrers/{}", img.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json_value().await;
    assert_eq!(v["manifests"][0]["digest"], a.digest.as_str(), "{v}");
    // A manifest nothing refers to: an empty index, not an error.
    let r = http()
        .get(proxy.url(&format!("/v2/library/app/referrers/{}", a.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json_value().await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_lists_pulled_repositories_a_rule_declares_one_page_at_a_time() {
    let up = TestRegistry::start().unwrap();
    let mut dirs = Vec::new();
    for (i, repo) in ["library/a", "library/b", "team/c"].iter().enumerate() {
        dirs.push(push(&up, repo, 20 + i as u64));
    }
    let both = format!(
        "[[rule]]\nname = \"team\"\nsource = \"{h}/team/*\"\ntarget = \"team/*\"\n",
        h = up.host()
    );
    let store = tempfile::tempdir().unwrap();
    let on_store = |extra: &str| {
        common::config(&up, extra).replace(
            "path = \"cache-data\"",
            &format!("path = \"{}\"", store.path().display()),
        )
    };
    let proxy = Proxy::start(&on_store(&both));
    let empty: serde_json::Value = http()
        .get(proxy.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json_value()
        .await;
    assert_eq!(
        empty["repositories"].as_array().unwrap().len(),
        0,
        "nothing pulled yet"
    );
    for repo in ["library/a", "library/b", "team/c"] {
        let out = tempfile::tempdir().unwrap();
        common::pull(&proxy, &format!("{repo}:v1"), out.path(), false).unwrap();
    }
    let all: serde_json::Value = http()
        .get(proxy.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json_value()
        .await;
    assert_eq!(
        all["repositories"],
        serde_json::json!(["library/a", "library/b", "team/c"])
    );
    // Pages of one, following Link.
    let mut seen = Vec::new();
    let mut next = Some("/v2/_catalog?n=1".to_owned());
    while let Some(path) = next.take() {
        let r = http().get(proxy.url(&path)).send().await.unwrap();
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            l[l.find('<').unwrap() + 1..l.find('>').unwrap()].to_owned()
        });
        let v: serde_json::Value = r.json_value().await;
        let page = v["repositories"].as_array().unwrap();
        assert!(page.len() <= 1);
        seen.extend(page.iter().map(|r| r.as_str().unwrap().to_owned()));
        assert!(seen.len() <= 3, "pagination ends");
    }
    assert_eq!(seen, ["library/a", "library/b", "team/c"]);
    let bad = http()
        .get(proxy.url("/v2/_catalog?n=lots"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Restarted on the same store without the team rule: team/c is not
    // the caller's to pull any more, so it is not listed.
    let dir = tempfile::tempdir().unwrap();
    let port = proxy.port;
    std::fs::write(
        dir.path().join("proxy.toml"),
        format!("listen = \"127.0.0.1:{port}\"\n{}", on_store("")),
    )
    .unwrap();
    drop(proxy);
    let again = Proxy::launch(dir, port);
    let v: serde_json::Value = http()
        .get(again.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json_value()
        .await;
    assert_eq!(
        v["repositories"],
        serde_json::json!(["library/a", "library/b"])
    );

    // Behind pull-side auth, the catalog is too.
    let htpasswd = tempfile::tempdir().unwrap();
    let hp = htpasswd.path().join("htpasswd");
    let out = Command::new(require("htpasswd", "apache2-utils").unwrap())
        .args(["-Bbn", "u", "p"])
        .output()
        .unwrap();
    std::fs::write(&hp, out.stdout).unwrap();
    let authed = Proxy::start(&format!(
        "{}\n[auth]\nhtpasswd = \"{}\"\n",
        common::config(&up, ""),
        hp.display()
    ));
    let r = http().get(authed.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(authed.url("/v2/_catalog"))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_bad_key_file_is_a_configuration_error_naming_it() {
    let keys = tempfile::tempdir().unwrap();
    let bad = keys.path().join("bad.pub");
    std::fs::write(
        &bad,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let missing = keys.path().join("missing.pub");
    for (key, says) in [(&bad, "bad.pub"), (&missing, "missing.pub")] {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("proxy.toml"),
            format!(
                "[[registry]]\nhost = \"docker.io\"\n[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n[rule.signatures]\ncosign_keys = [\"{}\"]\n",
                key.display()
            ),
        )
        .unwrap();
        let (ok, out) = common::run(d.path(), &["check"]);
        assert!(
            !ok && out.contains(says) && out.contains("cosign_keys"),
            "{out}"
        );
    }
}
