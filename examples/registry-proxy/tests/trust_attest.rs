//! Sigstore bundles and attestation policy through the running server:
//! cosign 3's signatures (a v0.3 bundle whose DSSE statement is cosign's
//! signature predicate) attached as referrers, found through the tag
//! schema on the Debian distribution registry and through the referrers
//! API on an in-process registry that has one; in-toto attestations as
//! `cosign attest` attaches them (the `.att` tag) and as bundles, required
//! per rule by predicate type, signer and predicate fields.

mod common;
mod trust_support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cache_core::Digest;
use cache_core::cosign::SIMPLE_SIGNING;
use cache_core::signatures::{BUNDLE_ARTIFACT, COSIGN_SIGN_PREDICATE, DSSE_ENVELOPE};
use cache_core::testing::trust::{
    Leaf, Logging, TestSigstore, bundle, cosign_attestation, cosign_signature, simple_signing,
    statement,
};
use cache_upstream::testing::{HostileRegistry, TestImage, TestRegistry};
use common::{Proxy, http};
use trust_support::*;

const GITHUB: &str = "https://token.actions.githubusercontent.com";
const RELEASE: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.2.3";
const BUILDER: &str = "https://github.com/acme/builder/.github/workflows/build.yml@refs/tags/v2";
const SLSA: &str = "https://slsa.dev/provenance/v1";
const BUNDLE_LAYER: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const MINUTE: Duration = Duration::from_secs(60);
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn provenance(builder: &str) -> serde_json::Value {
    serde_json::json!({
        "buildDefinition": {"buildType": "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1"},
        "runDetails": {"builder": {"id": builder}}
    })
}

struct Signer<'a> {
    sig: &'a TestSigstore,
    leaf: Leaf,
    now: SystemTime,
}

impl Signer<'_> {
    fn logging(&self, set: bool, proof: bool) -> Logging<'_> {
        Logging {
            log: &self.sig.rekor,
            integrated: self.now,
            set,
            proof,
        }
    }

    /// cosign (classic) keyless signature under the `.sig` tag.
    fn sign(&self, up: &TestRegistry, repo: &str, d: &Digest) {
        let payload = simple_signing(repo, d);
        let ann = cosign_signature(
            self.sig,
            &self.leaf,
            &payload,
            Some(self.logging(true, false)),
        );
        push_cosign(up, repo, d, "sig", SIMPLE_SIGNING, &payload, &ann);
    }

    /// cosign (classic) attestation under the `.att` tag.
    fn attest(&self, up: &TestRegistry, repo: &str, d: &Digest, about: &Digest, builder: &str) {
        let st = statement(about, SLSA, provenance(builder));
        let (env, ann) = cosign_attestation(
            self.sig,
            &self.leaf,
            &st,
            SLSA,
            Some(self.logging(true, false)),
        );
        push_cosign(up, repo, d, "att", DSSE_ENVELOPE, &env, &ann);
    }

    /// A v0.3 bundle of a statement about `about`.
    fn bundle(
        &self,
        about: &Digest,
        predicate_type: &str,
        predicate: serde_json::Value,
        set: bool,
    ) -> Vec<u8> {
        bundle(
            &self.leaf,
            &statement(about, predicate_type, predicate),
            self.logging(set, true),
        )
    }
}

fn subject(img: &TestImage) -> (&Digest, u64, &str) {
    (&img.digest, manifest_size(img, &img.digest), OCI_MANIFEST)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_as_referrers_and_required_attestations_decide_what_is_served() {
    let sig = TestSigstore::new("fulcio-att");
    let files = tempfile::tempdir().unwrap();
    let root = write(files.path(), "trusted_root.json", &sig.trusted_root());
    let up = TestRegistry::start().unwrap();
    let now = SystemTime::now();
    let leaf = |subject: &str| sig.leaf(GITHUB, subject, now - 5 * MINUTE, now + 5 * MINUTE, true);
    let release = Signer {
        sig: &sig,
        leaf: leaf(RELEASE),
        now,
    };
    let intruder = Signer {
        sig: &sig,
        leaf: leaf("https://github.com/evil/app/.github/workflows/release.yml@refs/tags/v1"),
        now,
    };
    let none = BTreeMap::new();
    let mut keep = Vec::new();
    let mut push_img = |repo: &str, seed: u64| {
        let (img, dir) = push(&up, repo, seed);
        keep.push(dir);
        img
    };

    // Bundles as cosign 3 attaches signatures: referrers, no .sig tag.
    let b_good = push_img("bundled/good", 200);
    let b = release.bundle(
        &b_good.digest,
        COSIGN_SIGN_PREDICATE,
        serde_json::json!({}),
        true,
    );
    attach(
        &up,
        "bundled/good",
        subject(&b_good),
        BUNDLE_ARTIFACT,
        BUNDLE_LAYER,
        &b,
        &none,
    )
    .await;
    // An inclusion proof (and the checkpoint the log signed), no SET: the
    // integrated time is unsigned, so refused.
    let b_proof = push_img("bundled/proofonly", 201);
    let b = release.bundle(
        &b_proof.digest,
        COSIGN_SIGN_PREDICATE,
        serde_json::json!({}),
        false,
    );
    attach(
        &up,
        "bundled/proofonly",
        subject(&b_proof),
        BUNDLE_ARTIFACT,
        BUNDLE_LAYER,
        &b,
        &none,
    )
    .await;
    // A bundle that signs another image.
    let b_other = push_img("bundled/other", 202);
    let b = release.bundle(
        &b_good.digest,
        COSIGN_SIGN_PREDICATE,
        serde_json::json!({}),
        true,
    );
    attach(
        &up,
        "bundled/other",
        subject(&b_other),
        BUNDLE_ARTIFACT,
        BUNDLE_LAYER,
        &b,
        &none,
    )
    .await;

    // Attestations required: signed and attested.
    let a_good = push_img("attested/good", 210);
    release.sign(&up, "attested/good", &a_good.digest);
    release.attest(
        &up,
        "attested/good",
        &a_good.digest,
        &a_good.digest,
        BUILDER,
    );
    // The attestation as a bundle among the referrers.
    let a_bundle = push_img("attested/bundle", 211);
    release.sign(&up, "attested/bundle", &a_bundle.digest);
    let b = release.bundle(&a_bundle.digest, SLSA, provenance(BUILDER), true);
    let ann = BTreeMap::from([(
        "dev.sigstore.bundle.predicateType".to_owned(),
        SLSA.to_owned(),
    )]);
    attach(
        &up,
        "attested/bundle",
        subject(&a_bundle),
        BUNDLE_ARTIFACT,
        BUNDLE_LAYER,
        &b,
        &ann,
    )
    .await;
    // Signed, not attested.
    let a_missing = push_img("attested/missing", 212);
    release.sign(&up, "attested/missing", &a_missing.digest);
    // Attested, but the statement is about another image.
    let a_other = push_img("attested/otherdigest", 213);
    release.sign(&up, "attested/otherdigest", &a_other.digest);
    release.attest(
        &up,
        "attested/otherdigest",
        &a_other.digest,
        &a_good.digest,
        BUILDER,
    );
    // Attested by another builder.
    let a_builder = push_img("attested/builder", 214);
    release.sign(&up, "attested/builder", &a_builder.digest);
    release.attest(
        &up,
        "attested/builder",
        &a_builder.digest,
        &a_builder.digest,
        "https://evil.example/builder",
    );
    // Attested by someone else.
    let a_signer = push_img("attested/signer", 215);
    release.sign(&up, "attested/signer", &a_signer.digest);
    intruder.attest(
        &up,
        "attested/signer",
        &a_signer.digest,
        &a_signer.digest,
        BUILDER,
    );
    // Attestation only: a rule that requires no signature.
    let only = push_img("attonly/app", 216);
    release.attest(&up, "attonly/app", &only.digest, &only.digest, BUILDER);

    let keyless = format!(
        "keyless = [{{ issuer = \"{GITHUB}\", subject = \"{RELEASE}\" }}]\ntrusted_root = \"{root}\"\n"
    );
    let require = format!(
        "require_attestations = [{{ predicate_type = \"{SLSA}\", predicate = {{ \"runDetails.builder.id\" = \"{BUILDER}\" }} }}]\n"
    );
    let rules = [
        rule(&up, "bundled", &keyless),
        rule(&up, "attested", &format!("{keyless}{require}")),
        rule(
            &up,
            "attonly",
            &format!(
                "trusted_root = \"{root}\"\nrequire_attestations = [{{ predicate_type = \"{SLSA}\", keyless = [{{ issuer = \"{GITHUB}\", subject_regex = \"https://github.com/acme/.*\" }}] }}]\n"
            ),
        ),
    ]
    .concat();
    let proxy = Proxy::start(&proxy_config(&up, &rules));
    let cases: [(&str, &TestImage, Option<&str>); 10] = [
        ("bundled/good", &b_good, None),
        (
            "bundled/proofonly",
            &b_proof,
            Some("integrated time is not signed"),
        ),
        (
            "bundled/other",
            &b_other,
            Some("the signed payload is for another digest"),
        ),
        ("attested/good", &a_good, None),
        ("attested/bundle", &a_bundle, None),
        (
            "attested/missing",
            &a_missing,
            Some(
                "no verified attestation of type https://slsa.dev/provenance/v1 covers the digest",
            ),
        ),
        (
            "attested/otherdigest",
            &a_other,
            Some(
                "no attestation of type https://slsa.dev/provenance/v1 verifies: the signed payload is for another digest (the attestation's subject is sha256:",
            ),
        ),
        (
            "attested/builder",
            &a_builder,
            Some("runDetails.builder.id = \\\"https://evil.example/builder\\\", wanted"),
        ),
        (
            "attested/signer",
            &a_signer,
            Some(
                "signed by issuer https://token.actions.githubusercontent.com subject https://github.com/evil/app/",
            ),
        ),
        ("attonly/app", &only, None),
    ];
    for (repo, img, refused) in cases {
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
                assert_eq!(layer_gets(&up, img), 0, "{repo}: no layer fetched upstream");
            }
        }
    }
    // The signature and attestation artifacts themselves pass unsigned.
    let r = http()
        .get(proxy.url(&format!(
            "/v2/attested/good/manifests/sha256-{}.att",
            a_good.digest.hex()
        )))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .get(proxy.url(&format!("/v2/bundled/good/referrers/{}", b_good.digest)))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["manifests"][0]["artifactType"], BUNDLE_ARTIFACT, "{v}");
    let reason = proxy.log();
    assert!(
        reason.contains("attestation https://slsa.dev/provenance/v1 keyless"),
        "{reason}"
    );

    // `registry-proxy verify` prints what it found and what each verifier said.
    let dir = tempfile::tempdir().unwrap();
    common::write_config(dir.path(), &proxy_config(&up, &rules));
    let (ok, out) = common::run(dir.path(), &["verify", "attested/good:v1"]);
    assert!(ok, "{out}");
    for line in [
        "attested/good:v1: rule \"attested\"",
        &format!("cosign signature at tag sha256-{}.sig", a_good.digest.hex()),
        &format!(
            "cosign attestation at tag sha256-{}.att",
            a_good.digest.hex()
        ),
        "verified as a signature: keyless https://github.com/acme/app/",
        "verified as an attestation of type https://slsa.dev/provenance/v1: keyless",
        "verdict: passes (keyless",
        "attestation https://slsa.dev/provenance/v1 keyless",
        "result: the image passes",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    let (ok, out) = common::run(dir.path(), &["verify", "attested/builder:v1"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("failed (an attestation of type https://slsa.dev/provenance/v1")
            && out.contains("runDetails.builder.id = \"https://evil.example/builder\"")
            && out.contains("result: the image is refused"),
        "{out}"
    );
    let (ok, out) = common::run(dir.path(), &["verify", "bundled/good:v1"]);
    assert!(
        ok && out.contains("sigstore bundle at referrer sha256:"),
        "{out}"
    );
    let (ok, out) = common::run(dir.path(), &["verify", "nowhere/app:v1"]);
    assert!(!ok && out.contains("nowhere/app"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_found_through_the_referrers_api_verifies() {
    let sig = TestSigstore::new("fulcio-api");
    let files = tempfile::tempdir().unwrap();
    let root = write(files.path(), "trusted_root.json", &sig.trusted_root());
    let now = SystemTime::now();
    let release = Signer {
        sig: &sig,
        leaf: sig.leaf(GITHUB, RELEASE, now - 5 * MINUTE, now + 5 * MINUTE, true),
        now,
    };
    let up = HostileRegistry::start("127.0.0.1");
    let img = up.push_image("bundled/api", "v1", &[Bytes::from_static(b"a layer")]);
    let unsigned = up.push_image(
        "bundled/none",
        "v1",
        &[Bytes::from_static(b"another layer")],
    );
    let manifest = reqwest::get(format!("{}/v2/bundled/api/manifests/v1", up.url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let b = release.bundle(
        &img.manifest,
        COSIGN_SIGN_PREDICATE,
        serde_json::json!({}),
        true,
    );
    let bd = up.add_blob(Bytes::from(b.clone()));
    let config = up.add_blob(Bytes::from_static(b"{}"));
    let art = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{BUNDLE_ARTIFACT}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"{BUNDLE_LAYER}","digest":"{bd}","size":{}}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}}}"#,
        b.len(),
        img.manifest,
        manifest.len()
    );
    let ad = up.add_manifest("bundled/api", None, art.clone(), OCI_MANIFEST);
    up.set_referrers(
        "bundled/api",
        &img.manifest,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{ad}","size":{},"artifactType":"{BUNDLE_ARTIFACT}"}}]}}"#,
            art.len()
        ),
    );
    let keyless = format!(
        "keyless = [{{ issuer = \"{GITHUB}\", subject = \"{RELEASE}\" }}]\ntrusted_root = \"{root}\"\n"
    );
    let rules = format!(
        "[[rule]]\nname = \"bundled\"\nsource = \"{h}/bundled/*\"\ntarget = \"bundled/*\"\n[rule.signatures]\n{keyless}",
        h = up.host()
    );
    let proxy = Proxy::start(&format!(
        "[storage]\npath = \"cache-data\"\n\n[[registry]]\nhost = \"{}\"\nendpoint = \"{}\"\n\n{rules}",
        up.host(),
        up.url()
    ));
    let r = http()
        .get(proxy.url("/v2/bundled/api/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", proxy.log());
    let r = http()
        .get(proxy.url(&format!("/v2/bundled/api/blobs/{}", img.layers[0].0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .get(proxy.url("/v2/bundled/none/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("no signature"));
    assert_eq!(up.requests("GET", unsigned.layers[0].0.hex()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_signature_covers_its_platforms_which_bring_their_own_attestations() {
    let sig = TestSigstore::new("fulcio-multi");
    let files = tempfile::tempdir().unwrap();
    let root = write(files.path(), "trusted_root.json", &sig.trusted_root());
    let up = TestRegistry::start().unwrap();
    let now = SystemTime::now();
    let release = Signer {
        sig: &sig,
        leaf: sig.leaf(GITHUB, RELEASE, now - 5 * MINUTE, now + 5 * MINUTE, true),
        now,
    };
    // As `cosign sign` on an index and a builder's per-platform provenance.
    let dir = tempfile::tempdir().unwrap();
    let index = cache_upstream::testing::write_index(dir.path(), "v1", 41, 20_000);
    up.push(&index.layout, "v1", "attested/multi").unwrap();
    release.sign(&up, "attested/multi", &index.digest);
    let (amd64, _) = &index.platforms[0];
    release.attest(&up, "attested/multi", amd64, amd64, BUILDER);
    let keyless = format!(
        "keyless = [{{ issuer = \"{GITHUB}\", subject = \"{RELEASE}\" }}]\ntrusted_root = \"{root}\"\nrequire_attestations = [{{ predicate_type = \"{SLSA}\" }}]\n"
    );
    let rules = rule(&up, "attested", &keyless);
    let proxy = Proxy::start(&proxy_config(&up, &rules));
    let pull_arch = |arch: &str| {
        let out = tempfile::tempdir().unwrap();
        cache_upstream::testing::skopeo(&[
            "copy".into(),
            "--insecure-policy".into(),
            "--src-tls-verify=false".into(),
            format!("--override-arch={arch}"),
            format!("docker://{}/attested/multi:v1", proxy.host()),
            format!("dir:{}", out.path().display()),
        ])
    };
    pull_arch("amd64").unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let e = pull_arch("arm64").expect_err("arm64 has no attestation");
    assert!(
        e.contains("no verified attestation of type https://slsa.dev/provenance/v1"),
        "{e}"
    );
    let log = proxy.log();
    assert!(
        log.contains("covered by the signed index")
            && log.contains("attestation https://slsa.dev/provenance/v1 keyless"),
        "{log}"
    );
    let dir = tempfile::tempdir().unwrap();
    common::write_config(dir.path(), &proxy_config(&up, &rules));
    let (ok, out) = common::run(dir.path(), &["verify", "attested/multi:v1"]);
    assert!(!ok, "{out}");
    let arm = out.find("platform linux/arm64").expect(&out);
    assert!(
        out[..arm].contains("verdict: passes (covered by the signed index"),
        "{out}"
    );
    assert!(
        out[arm..].contains("refused: no verified attestation"),
        "{out}"
    );
}
