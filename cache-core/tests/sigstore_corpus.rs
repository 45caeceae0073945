//! A public corpus, verified offline: the test data of the `sigstore`
//! crate (sigstore-rs 0.15.0 on crates.io), which are real Sigstore
//! bundles signed by the public-good Fulcio and logged in the public Rekor
//! (a cosign 3 image signature of kubewarden-controller v1.34.0, and the
//! SLSA provenance of the npm package sigstore 5.0.0), with the trusted
//! root they verify against, and the public-good instance's
//! `trusted_root.json`. Each bundle is verified whole (Fulcio chain, SCT
//! from the public CT log, Rekor's signed entry timestamp, the inclusion
//! proof and its signed checkpoint, the DSSE signature, the identity),
//! then altered one way at a time to show each check refuses.
//!
//! `scripts/test.sh` fetches the crate's source (nothing is compiled) into
//! `.tools/sigstore-corpus`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use cache_core::Digest;
use cache_core::cosign::Unverified;
use cache_core::signatures::{Artifact, ArtifactKind, Subject, Verifier};
use cache_core::trust::{Attestation, Identity, Pattern, Signers, SigstoreSignatures, TrustedRoot};

const GITHUB: &str = "https://token.actions.githubusercontent.com";
const KUBEWARDEN: &str = "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0";
const KUBEWARDEN_IMAGE: &str =
    "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172";
const SIGSTORE_JS: &str =
    "https://github.com/sigstore/sigstore-js/.github/workflows/release.yml@refs/heads/main";
const SIGSTORE_NPM: &str = "sha512:849a897e81bf7b8a8541a6ae40bd3473a27a16b1cb0462ad905bd6dc96d34881053a12eb4a375233f81677fc9439f628fe0b0445e8535c60b5559597fbd5f80e";

fn corpus(file: &str) -> Vec<u8> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/sigstore-corpus/sigstore-0.15.0");
    let p = dir.join(file);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the Sigstore corpus is fetched by scripts/test.sh (the sigstore 0.15.0 crate's test data, from crates.io)",
            p.display()
        )
    })
}

fn root() -> Arc<TrustedRoot> {
    Arc::new(TrustedRoot::from_json(&corpus("tests/data/sigstore_trusted_root.json")).unwrap())
}

fn identity(issuer: &str, subject: &str) -> Identity {
    Identity {
        issuer: Pattern::Exact(issuer.into()),
        subject: Pattern::Exact(subject.into()),
    }
}

fn signers(id: Identity) -> Signers {
    Signers::keyless(vec![id], root())
}

fn artifact(bytes: Vec<u8>) -> Artifact {
    Artifact {
        kind: ArtifactKind::Bundle,
        found: "corpus".into(),
        bytes: Bytes::from(bytes),
        annotations: BTreeMap::new(),
        manifest_annotations: BTreeMap::new(),
    }
}

fn check(v: &dyn Verifier, digest: &str, bundle: &serde_json::Value) -> Result<String, Unverified> {
    let d = Digest::parse(digest).unwrap();
    let s = Subject {
        digest: &d,
        size: 0,
        media_type: "application/vnd.oci.image.manifest.v1+json",
        scope: "corpus",
    };
    v.verify(
        &s,
        &artifact(bundle.to_string().into_bytes()),
        SystemTime::now(),
    )
    .expect("the verifier judges the bundle")
}

fn json(file: &str) -> serde_json::Value {
    serde_json::from_slice(&corpus(file)).unwrap()
}

/// The bundle with `edit` applied.
fn altered(b: &serde_json::Value, edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut b = b.clone();
    edit(&mut b);
    b
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn flip_b64(v: &mut serde_json::Value) {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap();
    let mut raw = raw;
    let i = raw.len() / 2;
    raw[i] ^= 1;
    *v = b64(&raw).into();
}

#[test]
fn the_public_good_trusted_roots_parse() {
    for f in [
        "trust_root/prod/trusted_root.json",
        "tests/data/sigstore_trusted_root.json",
    ] {
        let r = TrustedRoot::from_json(&corpus(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let (cas, tlogs, ctlogs) = r.counts();
        assert!(
            cas >= 2 && tlogs >= 1 && ctlogs >= 1,
            "{f}: {cas} {tlogs} {ctlogs}"
        );
    }
}

#[test]
fn real_bundles_verify_and_every_alteration_is_refused() {
    let kw = json("tests/data/bundle_v03.json");
    let npm = json("tests/data/npm_slsa_bundle_v03.json");
    let sig = SigstoreSignatures::new(signers(identity(GITHUB, KUBEWARDEN)));
    let slsa = |fields: &[(&str, &str)]| {
        Attestation::new(
            "https://slsa.dev/provenance/v1",
            signers(identity(GITHUB, SIGSTORE_JS)),
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    };
    let mut passed = 0;
    let mut cases = 0;
    let mut case = |name: &str, got: Result<String, Unverified>, want: Result<&str, &str>| {
        cases += 1;
        match (&got, want) {
            (Ok(who), Ok(says)) if who.contains(says) => passed += 1,
            (Err(why), Err(says)) if why.to_string().contains(says) => passed += 1,
            _ => panic!("{name}: got {got:?}, wanted {want:?}"),
        }
    };

    // The cosign 3 image signature, whole.
    case(
        "kubewarden signature",
        check(&sig, KUBEWARDEN_IMAGE, &kw),
        Ok("keyless https://github.com/kubewarden/kubewarden-controller/"),
    );
    // The inclusion proof and checkpoint alone prove the entry was logged,
    // but nothing signs its integrated time: refused.
    let proof_only = altered(&kw, |b| {
        b["verificationMaterial"]["tlogEntries"][0]
            .as_object_mut()
            .unwrap()
            .remove("inclusionPromise");
    });
    case(
        "inclusion proof alone",
        check(&sig, KUBEWARDEN_IMAGE, &proof_only),
        Err("integrated time is not signed"),
    );
    case(
        "another identity",
        check(
            &SigstoreSignatures::new(signers(identity(
                GITHUB,
                "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v9",
            ))),
            KUBEWARDEN_IMAGE,
            &kw,
        ),
        Err(
            "signed by issuer https://token.actions.githubusercontent.com subject https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0, wanted",
        ),
    );
    case(
        "another issuer",
        check(
            &SigstoreSignatures::new(signers(identity("https://accounts.google.com", KUBEWARDEN))),
            KUBEWARDEN_IMAGE,
            &kw,
        ),
        Err("wanted issuer https://accounts.google.com"),
    );
    case(
        "another image",
        check(&sig, &format!("sha256:{}", "0".repeat(64)), &kw),
        Err("for another digest"),
    );
    case(
        "altered statement",
        check(
            &sig,
            KUBEWARDEN_IMAGE,
            &altered(&kw, |b| {
                let p = &mut b["dsseEnvelope"]["payload"];
                let text = String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(p.as_str().unwrap())
                        .unwrap(),
                )
                .unwrap()
                .replace("\"annotations\"", "\"annotationz\"");
                *p = b64(text.as_bytes()).into();
            }),
        ),
        Err("does not verify with its certificate's key"),
    );
    case(
        "altered signed entry timestamp",
        check(
            &sig,
            KUBEWARDEN_IMAGE,
            &altered(&kw, |b| {
                flip_b64(
                    &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]["signedEntryTimestamp"],
                )
            }),
        ),
        Err("signed entry timestamp does not verify"),
    );
    case(
        "altered integrated time, inclusion proof alone",
        check(
            &sig,
            KUBEWARDEN_IMAGE,
            &altered(&proof_only, |b| {
                b["verificationMaterial"]["tlogEntries"][0]["integratedTime"] = "1775719999".into()
            }),
        ),
        Err("integrated time is not signed"),
    );
    case(
        "altered integrated time",
        check(
            &sig,
            KUBEWARDEN_IMAGE,
            &altered(&kw, |b| {
                b["verificationMaterial"]["tlogEntries"][0]["integratedTime"] = "1775719999".into()
            }),
        ),
        Err("signed entry timestamp does not verify"),
    );
    case(
        "altered inclusion proof",
        check(
            &sig,
            KUBEWARDEN_IMAGE,
            &altered(&proof_only, |b| {
                flip_b64(
                    &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["hashes"][0],
                )
            }),
        ),
        Err("the inclusion proof does not lead to its root hash"),
    );
    case(
        "altered checkpoint signature",
        check(
            &sig,
            KUBEWARDEN_IMAGE,
            &altered(&proof_only, |b| {
                let e = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]
                    ["envelope"];
                let note = e.as_str().unwrap().to_owned();
                let (text, sig) = note.rsplit_once(' ').unwrap();
                let mut raw = base64::engine::general_purpose::STANDARD
                    .decode(sig.trim())
                    .unwrap();
                let n = raw.len();
                raw[n - 3] ^= 1;
                *e = format!("{text} {}\n", b64(&raw)).into();
            }),
        ),
        Err("the checkpoint is not signed by the key of https://rekor.sigstore.dev"),
    );
    case(
        "no inclusion proof in a v0.3 bundle",
        check(
            &sig,
            KUBEWARDEN_IMAGE,
            &altered(&kw, |b| {
                b["verificationMaterial"]["tlogEntries"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("inclusionProof");
            }),
        ),
        Err("no inclusion proof"),
    );
    case(
        "no log entry",
        check(
            &sig,
            KUBEWARDEN_IMAGE,
            &altered(&kw, |b| {
                b["verificationMaterial"]["tlogEntries"] = serde_json::json!([])
            }),
        ),
        Err("no transparency log entry"),
    );
    case(
        "another trust root",
        check(
            &SigstoreSignatures::new(Signers::keyless(
                vec![identity(GITHUB, KUBEWARDEN)],
                Arc::new(
                    TrustedRoot::from_json(
                        cache_core::testing::trust::TestSigstore::new("corpus")
                            .trusted_root()
                            .as_bytes(),
                    )
                    .unwrap(),
                ),
            )),
            KUBEWARDEN_IMAGE,
            &kw,
        ),
        Err("signed by an unknown log key"),
    );

    // The npm SLSA provenance, an attestation about a sha512 digest.
    case(
        "npm provenance",
        check(&slsa(&[]), SIGSTORE_NPM, &npm),
        Ok("keyless https://github.com/sigstore/sigstore-js/"),
    );
    case(
        "npm provenance with a predicate field",
        check(
            &slsa(&[(
                "buildDefinition.externalParameters.workflow.repository",
                "https://github.com/sigstore/sigstore-js",
            )]),
            SIGSTORE_NPM,
            &npm,
        ),
        Ok("keyless"),
    );
    case(
        "npm provenance with another predicate field value",
        check(
            &slsa(&[(
                "buildDefinition.externalParameters.workflow.ref",
                "refs/tags/v1",
            )]),
            SIGSTORE_NPM,
            &npm,
        ),
        Err(
            "the attestation's predicate has buildDefinition.externalParameters.workflow.ref = \"refs/heads/main\"",
        ),
    );
    case(
        "npm provenance for another package",
        check(&slsa(&[]), &format!("sha512:{}", "1".repeat(128)), &npm),
        Err("for another digest"),
    );
    // Neither is the other's kind: a signature verifier leaves an
    // attestation alone, an attestation verifier a signature.
    let d = Digest::parse(SIGSTORE_NPM).unwrap();
    let s = Subject {
        digest: &d,
        size: 0,
        media_type: "x",
        scope: "corpus",
    };
    assert!(
        sig.verify(
            &s,
            &artifact(npm.to_string().into_bytes()),
            SystemTime::now()
        )
        .is_none()
    );
    assert!(
        slsa(&[])
            .verify(
                &s,
                &artifact(kw.to_string().into_bytes()),
                SystemTime::now()
            )
            .is_none()
    );
    println!("sigstore corpus: {passed} of {cases} cases pass");
    assert_eq!(passed, cases);
}
