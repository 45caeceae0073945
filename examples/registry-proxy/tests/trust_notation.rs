//! Notation signatures through the running server: a Notation CA made
//! here, a trust store (`x509/ca/<name>/*.pem`) and a trust policy in
//! notation's formats written for the proxy, images pushed with skopeo to
//! the Debian distribution registry, signed with JWS and COSE envelopes
//! attached as notation attaches them (artifact type
//! `application/vnd.cncf.notary.signature`, found through the referrers
//! tag schema), pulled through the proxy.

mod common;
mod trust_support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use cache_core::signatures::{COSE_ENVELOPE, JWS_ENVELOPE, NOTATION_ARTIFACT};
use cache_core::testing::trust::{NotationSigner, TestNotation, notation_cose, notation_jws};
use cache_upstream::testing::{TestImage, TestRegistry};
use common::Proxy;
use trust_support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DAY: Duration = Duration::from_secs(86_400);

async fn sign(
    up: &TestRegistry,
    repo: &str,
    img: &TestImage,
    signer: &NotationSigner,
    cose: bool,
    signed: SystemTime,
    expiry: Option<SystemTime>,
) {
    let size = manifest_size(img, &img.digest);
    let (envelope, media_type) = if cose {
        (
            notation_cose(signer, OCI_MANIFEST, &img.digest, size, signed, expiry),
            COSE_ENVELOPE,
        )
    } else {
        (
            notation_jws(signer, OCI_MANIFEST, &img.digest, size, signed, expiry),
            JWS_ENVELOPE,
        )
    };
    attach(
        up,
        repo,
        (&img.digest, size, OCI_MANIFEST),
        NOTATION_ARTIFACT,
        media_type,
        &envelope,
        &BTreeMap::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notation_signatures_pass_by_trust_store_identity_and_level() {
    let ca = TestNotation::new("acme root");
    let rogue = TestNotation::new("rogue root");
    let now = SystemTime::now();
    let release = ca.signer("acme", "release", now - DAY, now + DAY);
    let release_rsa = ca.rsa_signer("acme", "release", now - DAY, now + DAY);
    let intern = ca.signer("acme", "intern", now - DAY, now + DAY);
    let lapsed = ca.signer("acme", "release", now - 3 * DAY, now - DAY);
    let outsider = rogue.signer("acme", "release", now - DAY, now + DAY);
    let up = TestRegistry::start().unwrap();
    let mut keep = Vec::new();
    let mut img = |repo: &str, seed: u64| {
        let (i, d) = push(&up, repo, seed);
        keep.push(d);
        i
    };
    let cases: Vec<(&str, TestImage, Option<&str>)> = vec![
        ("notary/jws", img("notary/jws", 300), None),
        ("notary/cose", img("notary/cose", 301), None),
        (
            "notary/untrusted",
            img("notary/untrusted", 302),
            Some(
                "notation signer C=US, ST=WA, O=acme, CN=intern is not a trusted identity of trust policy \\\"acme-strict\\\"",
            ),
        ),
        (
            "notary/unknownca",
            img("notary/unknownca", 303),
            Some("does not end at a certificate of trust store ca:acme"),
        ),
        (
            "notary/expired",
            img("notary/expired", 304),
            Some("is not valid now"),
        ),
        (
            "notary/sigexpired",
            img("notary/sigexpired", 305),
            Some("the notation signature expired at"),
        ),
        (
            "notary/otherdigest",
            img("notary/otherdigest", 306),
            Some("the signed payload is for another digest"),
        ),
        ("lenient/expired", img("lenient/expired", 307), None),
        ("lenient/jws", img("lenient/jws", 308), None),
        ("notary/none", img("notary/none", 309), Some("no signature")),
        ("notary/rsa", img("notary/rsa", 310), None),
        // Under an `audit` level nothing establishes who signed: a rogue
        // CA's signature must not pass an enforced requirement.
        (
            "audited/rogue",
            img("audited/rogue", 311),
            Some("does not establish who signed"),
        ),
    ];
    for (repo, i, _) in &cases {
        match *repo {
            "notary/jws" | "lenient/jws" => sign(&up, repo, i, &release, false, now, None).await,
            "notary/cose" => sign(&up, repo, i, &release, true, now, Some(now + DAY)).await,
            "notary/untrusted" => sign(&up, repo, i, &intern, false, now, None).await,
            "notary/unknownca" | "audited/rogue" => {
                sign(&up, repo, i, &outsider, true, now, None).await
            }
            "notary/expired" | "lenient/expired" => {
                sign(&up, repo, i, &lapsed, false, now - 2 * DAY, None).await
            }
            "notary/sigexpired" => {
                sign(
                    &up,
                    repo,
                    i,
                    &release,
                    true,
                    now - DAY / 2,
                    Some(now - DAY / 4),
                )
                .await
            }
            "notary/otherdigest" => {
                let other = TestImage {
                    digest: cases[0].1.digest.clone(),
                    ..i.clone()
                };
                // The envelope names another image; it is attached to this one.
                let size = manifest_size(i, &i.digest);
                let env = notation_jws(&release, OCI_MANIFEST, &other.digest, size, now, None);
                attach(
                    &up,
                    repo,
                    (&i.digest, size, OCI_MANIFEST),
                    NOTATION_ARTIFACT,
                    JWS_ENVELOPE,
                    &env,
                    &BTreeMap::new(),
                )
                .await;
            }
            "notary/none" => {}
            "notary/rsa" => sign(&up, repo, i, &release_rsa, false, now, None).await,
            other => unreachable!("{other}"),
        }
    }
    let files = tempfile::tempdir().unwrap();
    write(
        files.path(),
        "truststore/x509/ca/acme/root.pem",
        &ca.root_pem(),
    );
    let h = up.host();
    let strict: Vec<String> = cases
        .iter()
        .filter(|(r, _, _)| r.starts_with("notary/"))
        .map(|(r, _, _)| format!("{h}/{r}"))
        .collect();
    let policy = serde_json::json!({
        "version": "1.0",
        "trustPolicies": [
            {
                "name": "acme-strict",
                "registryScopes": strict,
                "signatureVerification": {"level": "strict"},
                "trustStores": ["ca:acme"],
                "trustedIdentities": ["x509.subject: C=US, ST=WA, O=acme, CN=release"]
            },
            {
                "name": "audit-only",
                "registryScopes": [format!("{h}/audited/rogue")],
                "signatureVerification": {"level": "audit"},
                "trustStores": ["ca:acme"],
                "trustedIdentities": ["*"]
            },
            {
                "name": "acme-permissive",
                "registryScopes": ["*"],
                "signatureVerification": {"level": "permissive"},
                "trustStores": ["ca:acme"],
                "trustedIdentities": ["x509.subject: C=US, ST=WA, O=acme, CN=release"]
            }
        ]
    });
    let tp = write(files.path(), "trustpolicy.json", &policy.to_string());
    let ts = files.path().join("truststore").display().to_string();
    let table = format!("notation = {{ trust_store = \"{ts}\", trust_policy = \"{tp}\" }}\n");
    let rules = [
        rule(&up, "notary", &table),
        rule(&up, "lenient", &table),
        rule(&up, "audited", &table),
    ]
    .concat();
    let proxy = Proxy::start(&proxy_config(&up, &rules));
    for (repo, i, refused) in &cases {
        let out = tempfile::tempdir().unwrap();
        let pulled = common::pull(&proxy, &format!("{repo}:v1"), out.path(), false);
        match refused {
            None => {
                pulled.unwrap_or_else(|e| panic!("{repo}: {e}\n{}", proxy.log()));
            }
            Some(reason) => {
                assert!(pulled.is_err(), "{repo} is refused");
                let (status, body) = get_manifest(&proxy, repo, "v1").await;
                assert_eq!(status, 403, "{repo}: {body}");
                assert!(body.contains(reason), "{repo}: wanted {reason:?} in {body}");
                assert_eq!(layer_gets(&up, i), 0, "{repo}: no layer fetched upstream");
            }
        }
    }
    // Permissive logs what strict enforces.
    let log = proxy.log();
    let lenient = log
        .lines()
        .find(|l| l.contains("repository=\"lenient/expired\"") && l.contains("admission"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        lenient.contains("outcome=\"allowed\"")
            && lenient.contains("acme-permissive")
            && lenient.contains("logged: the notation certificate")
            && lenient.contains("is not valid now"),
        "{lenient}"
    );
}

#[test]
fn a_bad_trust_policy_is_a_configuration_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let ca = TestNotation::new("acme root");
    write(d.path(), "ts/x509/ca/acme/root.pem", &ca.root_pem());
    let ts = d.path().join("ts").display().to_string();
    for (policy, says) in [
        (
            r#"{"version":"2.0","trustPolicies":[]}"#,
            "version = \"2.0\"",
        ),
        (
            r#"{"version":"1.0","trustPolicies":[{"name":"p","registryScopes":["*"],"signatureVerification":{"level":"strictest"},"trustStores":["ca:acme"],"trustedIdentities":["*"]}]}"#,
            "signatureVerification.level = \"strictest\"",
        ),
        (
            r#"{"version":"1.0","trustPolicies":[{"name":"p","registryScopes":["*"],"signatureVerification":{"level":"strict"},"trustStores":["ca:missing"],"trustedIdentities":["*"]}]}"#,
            "trust store ca:missing",
        ),
        (
            r#"{"version":"1.0","trustPolicies":[{"name":"p","registryScopes":["*"],"signatureVerification":{"level":"strict"},"trustStores":["ca:acme"],"trustedIdentities":["x509.subject: CN=x"]}]}"#,
            "lacks C",
        ),
    ] {
        let tp = write(d.path(), "tp.json", policy);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("proxy.toml"),
            format!(
                "[[registry]]\nhost = \"docker.io\"\n[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n[rule.signatures]\nnotation = {{ trust_store = \"{ts}\", trust_policy = \"{tp}\" }}\n"
            ),
        )
        .unwrap();
        let (ok, out) = common::run(dir.path(), &["check"]);
        assert!(
            !ok && out.contains(says) && out.contains("signatures.notation"),
            "{says}: {out}"
        );
    }
}
