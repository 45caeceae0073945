//! Keyless cosign through the running server: trust material made here
//! (`cache_core::testing::trust`: a Fulcio-like CA with an intermediate,
//! leaf certificates with Fulcio's OIDC issuer extension and an embedded
//! SCT, a Rekor-like log signing entry timestamps and checkpoints, a CT
//! log), a `trusted_root.json` written for the proxy, images pushed with
//! skopeo to the Debian distribution registry and signed as `cosign sign`
//! lays signatures out (the `sha256-<hex>.sig` tag, the certificate, chain
//! and log entry in the layer's annotations), pulled through the proxy.

mod common;
mod trust_support;

use std::time::{Duration, SystemTime};

use cache_core::cosign::SIMPLE_SIGNING;
use cache_core::testing::trust::{
    Leaf, Logging, TestLog, TestSigstore, cosign_signature, simple_signing,
};
use cache_upstream::testing::{TestImage, TestRegistry, skopeo, write_index};
use common::Proxy;
use trust_support::*;

const GITHUB: &str = "https://token.actions.githubusercontent.com";
const RELEASE: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.2.3";
const MINUTE: Duration = Duration::from_secs(60);

fn keyless_table(root: &str, subject: &str) -> String {
    format!("keyless = [{{ issuer = \"{GITHUB}\", {subject} }}]\ntrusted_root = \"{root}\"\n")
}

/// Signs `img` keyless in `repo` with `leaf`, logged as `logging` says;
/// `tamper` alters the payload after signing.
fn sign(
    up: &TestRegistry,
    sig: &TestSigstore,
    repo: &str,
    img: &TestImage,
    leaf: &Leaf,
    logging: Option<Logging<'_>>,
    tamper: bool,
) {
    let payload = simple_signing(repo, &img.digest);
    let ann = cosign_signature(sig, leaf, &payload, logging);
    let payload = if tamper {
        String::from_utf8(payload)
            .unwrap()
            .replace("image signature", "image signaturE")
            .into_bytes()
    } else {
        payload
    };
    push_cosign(up, repo, &img.digest, "sig", SIMPLE_SIGNING, &payload, &ann);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_signatures_pass_only_with_the_wanted_identity_a_trusted_chain_and_a_log_entry() {
    let sig = TestSigstore::new("fulcio");
    let elsewhere = TestSigstore::new("elsewhere");
    let rogue_log = TestLog::new("rogue", "https://rogue.test");
    let files = tempfile::tempdir().unwrap();
    let root = write(files.path(), "trusted_root.json", &sig.trusted_root());
    let root_other_ct = write(
        files.path(),
        "other-ct.json",
        &sig.trusted_root_of(&[&sig.rekor], &[&rogue_log]),
    );
    let up = TestRegistry::start().unwrap();
    let now = SystemTime::now();
    let logged = |log: &'static TestLog| Logging {
        log,
        integrated: now,
        set: true,
        proof: false,
    };
    // 'static logs for the closure above.
    let rekor: &'static TestLog = Box::leak(Box::new(sig.rekor.clone()));
    let rogue: &'static TestLog = Box::leak(Box::new(rogue_log.clone()));
    let leaf = |s: &TestSigstore, issuer: &str, subject: &str| {
        s.leaf(issuer, subject, now - 5 * MINUTE, now + 5 * MINUTE, true)
    };

    let mut pushed = Vec::new();
    // (repo, signature) and what the proxy must say; None: served.
    type Case<'a> = (&'a str, Option<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        ("keyless/good", None),
        ("keylessre/tool", None),
        (
            "keylessre/fork",
            Some(
                "signed by issuer https://token.actions.githubusercontent.com subject https://github.com/evil/app/",
            ),
        ),
        (
            "keyless/wrongissuer",
            Some(
                "signed by issuer https://accounts.google.com subject https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.2.3, wanted issuer https://token.actions.githubusercontent.com subject https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.2.3",
            ),
        ),
        (
            "keyless/wrongsubject",
            Some(
                "subject https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main, wanted",
            ),
        ),
        (
            "keyless/expired",
            Some("had expired at the log's integrated time"),
        ),
        ("keyless/nolog", Some("no transparency log entry")),
        ("keyless/unknownlog", Some("signed by an unknown log key")),
        (
            "keyless/unknownroot",
            Some("leads to no Fulcio root of the trusted root"),
        ),
        (
            "keyless/tampered",
            Some("does not verify with its certificate's key"),
        ),
        ("keylessct/app", Some("SCT is from an unknown CT log")),
    ];
    for (i, (repo, _)) in cases.iter().enumerate() {
        let (img, dir) = push(&up, repo, 100 + i as u64);
        let good = leaf(&sig, GITHUB, RELEASE);
        match *repo {
            "keyless/good" | "keylessct/app" => {
                sign(&up, &sig, repo, &img, &good, Some(logged(rekor)), false)
            }
            "keylessre/tool" => {
                let l = leaf(
                    &sig,
                    GITHUB,
                    "https://github.com/acme/tool/.github/workflows/release.yml@refs/tags/v9.0.0",
                );
                sign(&up, &sig, repo, &img, &l, Some(logged(rekor)), false)
            }
            "keylessre/fork" => {
                let l = leaf(
                    &sig,
                    GITHUB,
                    "https://github.com/evil/app/.github/workflows/release.yml@refs/tags/v1.0.0",
                );
                sign(&up, &sig, repo, &img, &l, Some(logged(rekor)), false)
            }
            "keyless/wrongissuer" => {
                let l = leaf(&sig, "https://accounts.google.com", RELEASE);
                sign(&up, &sig, repo, &img, &l, Some(logged(rekor)), false)
            }
            "keyless/wrongsubject" => {
                let l = leaf(
                    &sig,
                    GITHUB,
                    "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main",
                );
                sign(&up, &sig, repo, &img, &l, Some(logged(rekor)), false)
            }
            "keyless/expired" => {
                // Fulcio's ten minutes were over an hour before the entry.
                let l = sig.leaf(
                    GITHUB,
                    RELEASE,
                    now - 120 * MINUTE,
                    now - 110 * MINUTE,
                    true,
                );
                sign(&up, &sig, repo, &img, &l, Some(logged(rekor)), false)
            }
            "keyless/nolog" => sign(&up, &sig, repo, &img, &good, None, false),
            "keyless/unknownlog" => sign(&up, &sig, repo, &img, &good, Some(logged(rogue)), false),
            "keyless/unknownroot" => {
                let l = leaf(&elsewhere, GITHUB, RELEASE);
                sign(&up, &elsewhere, repo, &img, &l, Some(logged(rekor)), false)
            }
            "keyless/tampered" => sign(&up, &sig, repo, &img, &good, Some(logged(rekor)), true),
            other => unreachable!("{other}"),
        }
        pushed.push((img, dir));
    }
    let rules = [
        rule(&up, "keyless", &keyless_table(&root, &format!("subject = \"{RELEASE}\""))),
        rule(
            &up,
            "keylessre",
            &keyless_table(
                &root,
                r#"subject_regex = "https://github\\.com/acme/[^/]+/\\.github/workflows/release\\.yml@refs/tags/v.+""#,
            ),
        ),
        rule(&up, "keylessct", &keyless_table(&root_other_ct, &format!("subject = \"{RELEASE}\""))),
    ]
    .concat();
    let proxy = Proxy::start(&proxy_config(&up, &rules));

    for ((repo, refused), (img, _)) in cases.iter().zip(&pushed) {
        let out = tempfile::tempdir().unwrap();
        let pulled = common::pull(&proxy, &format!("{repo}:v1"), out.path(), false);
        match refused {
            None => {
                pulled.unwrap_or_else(|e| panic!("{repo}: {e}\n{}", proxy.log()));
                for (d, _) in &img.layers {
                    assert!(d.verifies(&std::fs::read(out.path().join(d.hex())).unwrap()));
                }
            }
            Some(reason) => {
                let e = pulled.expect_err(&format!("{repo} is refused"));
                assert!(e.contains("denied"), "{repo}: {e}");
                let (status, body) = get_manifest(&proxy, repo, "v1").await;
                assert_eq!(status, 403, "{repo}: {body}");
                assert!(
                    body.contains("DENIED") && body.contains(reason),
                    "{repo}: wanted {reason:?} in {body}"
                );
                assert_eq!(layer_gets(&up, img), 0, "{repo}: no layer fetched upstream");
                common::assert_layers_refused(&proxy, repo, img, "a layer of a refused image")
                    .await;
            }
        }
    }
    let refused = proxy
        .metric("registry_proxy_admissions_total{rule=\"keyless\",outcome=\"refused\"}")
        .await;
    assert!(refused >= 7, "{refused}");
    let log = proxy.log();
    assert!(
        log.lines().any(|l| l.contains("outcome=\"allowed\"")
            && l.contains("keyless https://github.com/acme/app/")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_index_signature_covers_its_platforms_and_audit_mode_serves_and_counts() {
    let sig = TestSigstore::new("fulcio-index");
    let files = tempfile::tempdir().unwrap();
    let root = write(files.path(), "trusted_root.json", &sig.trusted_root());
    let up = TestRegistry::start().unwrap();
    let now = SystemTime::now();
    let leaf = sig.leaf(GITHUB, RELEASE, now - 5 * MINUTE, now + 5 * MINUTE, true);
    let logging = || {
        Some(Logging {
            log: &sig.rekor,
            integrated: now,
            set: true,
            proof: false,
        })
    };
    // A signed index: both platforms pass through it.
    let d1 = tempfile::tempdir().unwrap();
    let signed = write_index(d1.path(), "v1", 31, 20_000);
    up.push(&signed.layout, "v1", "keyless/multi").unwrap();
    sign(&up, &sig, "keyless/multi", &signed, &leaf, logging(), false);
    // An unsigned index with one signed platform: that one only.
    let d2 = tempfile::tempdir().unwrap();
    let partly = write_index(d2.path(), "v1", 32, 20_000);
    up.push(&partly.layout, "v1", "keyless/partly").unwrap();
    let amd64 = TestImage {
        digest: partly.platforms[0].0.clone(),
        ..partly.clone()
    };
    sign(&up, &sig, "keyless/partly", &amd64, &leaf, logging(), false);
    // Audit mode: an unsigned image is served, and the refusal it would
    // have been is logged and counted.
    let (unsigned, _u) = push(&up, "audited/app", 33);
    let table = keyless_table(&root, &format!("subject = \"{RELEASE}\""));
    let rules = format!(
        "{}{}",
        rule(&up, "keyless", &table),
        rule(&up, "audited", &format!("{table}mode = \"audit\"\n"))
    );
    let proxy = Proxy::start(&proxy_config(&up, &rules));
    let pull_arch = |reference: &str, arch: &str| {
        let out = tempfile::tempdir().unwrap();
        skopeo(&[
            "copy".into(),
            "--insecure-policy".into(),
            "--src-tls-verify=false".into(),
            format!("--override-arch={arch}"),
            format!("docker://{}/{reference}", proxy.host()),
            format!("dir:{}", out.path().display()),
        ])
    };
    for arch in ["amd64", "arm64"] {
        pull_arch("keyless/multi:v1", arch)
            .unwrap_or_else(|e| panic!("{arch}: {e}\n{}", proxy.log()));
    }
    pull_arch("keyless/partly:v1", "amd64").unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let e = pull_arch("keyless/partly:v1", "arm64").expect_err("arm64 is unsigned");
    assert!(e.contains("no signature"), "{e}");

    // `verify` shows each platform: one signed, one with nothing.
    let dir = tempfile::tempdir().unwrap();
    common::write_config(dir.path(), &proxy_config(&up, &rules));
    let (ok, out) = common::run(dir.path(), &["verify", "keyless/partly:v1"]);
    assert!(!ok, "{out}");
    let amd = out.find("platform linux/amd64").expect(&out);
    let arm = out.find("platform linux/arm64").expect(&out);
    assert!(
        out[amd..arm].contains("verified as a signature: keyless"),
        "{out}"
    );
    assert!(
        out[arm..].contains("nothing found") && out[arm..].contains("refused: no signature"),
        "{out}"
    );
    let (ok, out) = common::run(dir.path(), &["verify", "keyless/multi:v1"]);
    assert!(ok && out.contains("index sha256:"), "{out}");

    let out = tempfile::tempdir().unwrap();
    common::pull(&proxy, "audited/app:v1", out.path(), false).unwrap();
    assert!(layer_gets(&up, &unsigned) > 0);
    assert!(
        proxy
            .metric("registry_proxy_admissions_total{rule=\"audited\",outcome=\"audit_only\"}")
            .await
            >= 1
    );
    assert!(proxy.logs(|l| l.contains("outcome=\"audit_only\"")).await);
}

#[test]
fn a_bad_trust_root_or_identity_is_a_configuration_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let bad_root = write(
        d.path(),
        "root.json",
        "{\"mediaType\": \"application/vnd.dev.sigstore.trustedroot+json;version=0.1\"}",
    );
    for (signatures, says) in [
        (
            format!(
                "keyless = [{{ issuer = \"{GITHUB}\", subject = \"x\" }}]\ntrusted_root = \"{bad_root}\""
            ),
            "trusted_root: ",
        ),
        (
            format!(
                "keyless = [{{ issuer = \"{GITHUB}\", subject_regex = \"(\" }}]\ntrusted_root = \"{bad_root}\""
            ),
            "keyless[0].subject_regex = \"(\"",
        ),
        (
            format!("keyless = [{{ issuer = \"{GITHUB}\", subject = \"x\" }}]"),
            "keyless needs trusted_root",
        ),
        (
            format!(
                "keyless = [{{ issuer = \"{GITHUB}\", subject = \"x\" }}]\ntrusted_root = \"{}/missing.json\"",
                d.path().display()
            ),
            "missing.json",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("proxy.toml"),
            format!(
                "[[registry]]\nhost = \"docker.io\"\n[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n[rule.signatures]\n{signatures}\n"
            ),
        )
        .unwrap();
        let (ok, out) = common::run(dir.path(), &["check"]);
        assert!(
            !ok && out.contains(says) && out.contains("rule[0]"),
            "{says}: {out}"
        );
    }
}
