//! What a signature policy judges, and the trait its verifiers implement.
//!
//! The engine (`engine/signatures.rs`) finds the signature material of a
//! manifest in its upstream repository: cosign's `sha256-<hex>.sig` and
//! `.att` tags, and the referrers of the manifest (the referrers API or
//! its tag schema), which is where Sigstore bundles and Notation
//! signatures are attached. Each layer it reads becomes an [`Artifact`].
//! [`judge`] then asks each [`Verifier`] of the policy about each artifact:
//! the image passes when a signature verifier accepts one of them (any
//! one: cosign keys, keyless identities, Notation) and every attestation
//! verifier accepts one of them.
//!
//! Verifiers are sans IO and offline: what they need (keys, trust roots,
//! trust stores) is loaded when the policy is built. This module and the
//! cosign key verifier are in the default build; keyless cosign, Sigstore
//! bundles, in-toto attestations and Notation are in
//! `cache_core::trust` (feature `trust`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::cosign::{self, CosignKey, Unverified};
use crate::digest::Digest;

/// The artifact type of a Sigstore bundle attached through the referrers
/// API (cosign 3, `cosign attest --new-bundle-format`, GitHub's
/// attestations).
pub const BUNDLE_ARTIFACT: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The artifact type of a Notation signature.
pub const NOTATION_ARTIFACT: &str = "application/vnd.cncf.notary.signature";
/// The media type of a DSSE envelope (cosign's attestations).
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The media type of a Notation JWS envelope.
pub const JWS_ENVELOPE: &str = "application/jose+json";
/// The media type of a Notation COSE envelope.
pub const COSE_ENVELOPE: &str = "application/cose";
/// The predicate type of cosign 3's image signatures (an in-toto statement
/// in a bundle's DSSE envelope): a signature, not an attestation.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// The largest envelope or bundle read (attestations carry provenance).
pub const MAX_ENVELOPE: usize = 1024 * 1024;

/// What a layer of signature material is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArtifactKind {
    /// A cosign simple signing payload, its signature (and certificate,
    /// chain, log entry) in the layer's annotations.
    SimpleSigning,
    /// A DSSE envelope of an in-toto statement (cosign's attestations),
    /// its certificate and log entry in the layer's annotations.
    Dsse,
    /// A Sigstore bundle (v0.1 to v0.3).
    Bundle,
    /// A Notation JWS envelope.
    Jws,
    /// A Notation COSE envelope.
    Cose,
}

impl ArtifactKind {
    /// The kind of a layer of this media type, if it is signature material.
    pub fn of_layer(media_type: &str) -> Option<ArtifactKind> {
        Some(match media_type {
            cosign::SIMPLE_SIGNING => ArtifactKind::SimpleSigning,
            DSSE_ENVELOPE => ArtifactKind::Dsse,
            JWS_ENVELOPE => ArtifactKind::Jws,
            COSE_ENVELOPE => ArtifactKind::Cose,
            t if t.starts_with("application/vnd.dev.sigstore.bundle") => ArtifactKind::Bundle,
            _ => return None,
        })
    }

    /// The largest layer of this kind that is read.
    pub fn max_size(self) -> usize {
        match self {
            ArtifactKind::SimpleSigning => cosign::MAX_PAYLOAD,
            _ => MAX_ENVELOPE,
        }
    }

    /// A short name, for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::SimpleSigning => "cosign signature",
            ArtifactKind::Dsse => "cosign attestation",
            ArtifactKind::Bundle => "sigstore bundle",
            ArtifactKind::Jws => "notation (JWS)",
            ArtifactKind::Cose => "notation (COSE)",
        }
    }
}

/// The manifest a policy judges.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Its digest.
    pub digest: &'a Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: &'a str,
    /// Where it comes from, as signers name it: the upstream
    /// `registry/repository` (`ghcr.io/acme/app`), which Notation's trust
    /// policy scopes match.
    pub scope: &'a str,
}

/// One layer of signature material found for a manifest.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// What it is.
    pub kind: ArtifactKind,
    /// Where it was found, for reports (`tag sha256-<hex>.sig`, `referrer sha256:...`).
    pub found: String,
    /// The layer's bytes, verified against its descriptor's digest.
    pub bytes: Bytes,
    /// The layer's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The annotations of the manifest that holds it.
    pub manifest_annotations: BTreeMap<String, String>,
}

impl Artifact {
    /// An annotation of the layer.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// What a verifier's acceptance stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A signature over the image: any one signature verifier suffices.
    Signature,
    /// An attestation of this predicate type: each one is required.
    Attestation(String),
}

/// Accepts or rejects signature material for a manifest, offline.
pub trait Verifier: Send + Sync + fmt::Debug {
    /// What its acceptance stands for. Constant for a verifier.
    fn role(&self) -> &Role;

    /// What it accepts, for reasons and reports: `cosign keys
    /// keys/release.pub`, `keyless issuer https://... subject ...`.
    fn wants(&self) -> String;

    /// The kinds of artifact it reads; the engine fetches no other kind
    /// for it. Constant for a verifier.
    fn reads(&self) -> &[ArtifactKind];

    /// Judges one artifact of a kind it reads: `Some(Ok)` with who
    /// vouched (`signed with keys/release.pub`, a keyless identity) when it
    /// verifies and covers `subject`, `Some(Err)` with why not, `None` when
    /// the artifact is not what this verifier judges (an attestation of
    /// another predicate type, a key signature for a keyless verifier).
    /// `now` is the time certificates and signatures are judged at where
    /// no signed time applies. Must not block: no IO.
    fn verify(
        &self,
        subject: &Subject<'_>,
        artifact: &Artifact,
        now: SystemTime,
    ) -> Option<Result<String, Unverified>>;
}

/// The cosign key verifier: a simple signing payload whose signature
/// verifies with one of the keys (see [`cosign::verify`]).
#[derive(Debug, Clone)]
pub struct CosignKeys {
    keys: Vec<CosignKey>,
}

impl CosignKeys {
    /// A verifier of these keys.
    pub fn new(keys: Vec<CosignKey>) -> Self {
        CosignKeys { keys }
    }
}

const SIGNATURE: &Role = &Role::Signature;

impl Verifier for CosignKeys {
    fn role(&self) -> &Role {
        SIGNATURE
    }

    fn wants(&self) -> String {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name()).collect();
        format!("a signature by a cosign key ({})", names.join(", "))
    }

    fn reads(&self) -> &[ArtifactKind] {
        &[ArtifactKind::SimpleSigning]
    }

    fn verify(
        &self,
        subject: &Subject<'_>,
        artifact: &Artifact,
        _now: SystemTime,
    ) -> Option<Result<String, Unverified>> {
        let Some(sig) = artifact.annotation(cosign::SIGNATURE_ANNOTATION) else {
            return Some(Err(Unverified::Malformed("no signature annotation".into())));
        };
        Some(
            cosign::verify(&artifact.bytes, sig, subject.digest, &self.keys)
                .map(|k| format!("signed with {}", k.name())),
        )
    }
}

/// One verifier's answer about one artifact.
#[derive(Debug, Clone)]
pub struct Check {
    /// The artifact's index in what was judged.
    pub artifact: usize,
    /// What the verifier accepts ([`Verifier::wants`]).
    pub verifier: String,
    /// Its role.
    pub role: Role,
    /// Who vouched, or why not.
    pub outcome: Result<String, Unverified>,
}

/// A policy's judgement of one manifest.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// Passed (with who vouched for it, each requirement once), or the
    /// most telling reason it did not.
    pub verdict: Result<String, Unverified>,
    /// Who signed, when the signature requirement was met (whether or not
    /// the attestations were): an index's signature covers its platforms'
    /// signature requirement even when each platform has its own
    /// attestations.
    pub signed: Option<String>,
    /// Every verifier's answer about every artifact it reads.
    pub checks: Vec<Check>,
}

/// Judges `artifacts` for `subject` by `verifiers`: passes when some
/// signature verifier accepts an artifact (or there is none) and every
/// attestation verifier accepts one. A failure names what was wanted and
/// the most telling reason found.
pub fn judge(
    verifiers: &[Arc<dyn Verifier>],
    subject: &Subject<'_>,
    artifacts: &[Artifact],
    now: SystemTime,
) -> Judgement {
    judge_with(verifiers, subject, artifacts, now, None)
}

/// [`judge`], with the signature requirement already met by `signed`
/// (a platform manifest of a signed index): only the attestation
/// verifiers are asked.
pub fn judge_with(
    verifiers: &[Arc<dyn Verifier>],
    subject: &Subject<'_>,
    artifacts: &[Artifact],
    now: SystemTime,
    signed: Option<&str>,
) -> Judgement {
    let mut checks = Vec::new();
    // (role, accepted by, best failure, wants)
    let mut signature: Option<(Option<String>, Unverified, Vec<String>)> = None;
    let mut attestations: Vec<(String, Option<String>, Unverified, String)> = Vec::new();
    if let Some(by) = signed {
        signature = Some((Some(by.to_owned()), Unverified::NoSignature, Vec::new()));
    }
    for v in verifiers {
        if signed.is_some() && *v.role() == Role::Signature {
            continue;
        }
        let mut accepted = None;
        let mut best = match v.role() {
            Role::Signature => Unverified::NoSignature,
            Role::Attestation(t) => Unverified::NoAttestation(t.clone()),
        };
        for (i, a) in artifacts.iter().enumerate() {
            if !v.reads().contains(&a.kind) {
                continue;
            }
            let Some(outcome) = v.verify(subject, a, now) else {
                continue;
            };
            match &outcome {
                Ok(by) if accepted.is_none() => accepted = Some(by.clone()),
                Ok(_) => {}
                Err(why) if why.rank() > best.rank() => best = why.clone(),
                Err(_) => {}
            }
            checks.push(Check {
                artifact: i,
                verifier: v.wants(),
                role: v.role().clone(),
                outcome,
            });
        }
        match v.role() {
            Role::Signature => {
                let s = signature.get_or_insert((None, Unverified::NoSignature, Vec::new()));
                s.2.push(v.wants());
                if s.0.is_none() {
                    s.0 = accepted;
                }
                if best.rank() > s.1.rank() {
                    s.1 = best;
                }
            }
            Role::Attestation(t) => attestations.push((t.clone(), accepted, best, v.wants())),
        }
    }
    let mut by = Vec::new();
    let mut signed_by = None;
    if let Some((accepted, best, wants)) = signature {
        match accepted {
            Some(who) => {
                signed_by = Some(who.clone());
                by.push(who);
            }
            None => {
                return Judgement {
                    verdict: Err(explain(best, &wants)),
                    signed: None,
                    checks,
                };
            }
        }
    }
    for (t, accepted, best, wants) in attestations {
        match accepted {
            Some(who) => by.push(format!("attestation {t} {who}")),
            None => {
                let why = match best {
                    Unverified::NoAttestation(_) => best,
                    other => Unverified::Untrusted(format!(
                        "no attestation of type {t} verifies: {}",
                        explain(other, &[wants])
                    )),
                };
                return Judgement {
                    verdict: Err(why),
                    signed: signed_by,
                    checks,
                };
            }
        }
    }
    if by.is_empty() {
        by.push("nothing required".into());
    }
    Judgement {
        verdict: Ok(by.join("; ")),
        signed: signed_by,
        checks,
    }
}

/// A failure, with what was wanted where the reason alone does not say.
fn explain(why: Unverified, wants: &[String]) -> Unverified {
    match why {
        Unverified::Untrusted(found) if !found.contains("wanted") => {
            Unverified::Untrusted(format!("{found} (wanted {})", wants.join(" or ")))
        }
        other => other,
    }
}

/// What [`PullThroughCache::inspect_signatures`](crate::PullThroughCache::inspect_signatures)
/// found and decided about one manifest.
#[derive(Debug, Clone)]
pub struct ManifestReport {
    /// The manifest.
    pub digest: Digest,
    /// Its platform, for a platform manifest of an index.
    pub platform: Option<String>,
    /// The signature material found: kind and where.
    pub artifacts: Vec<(ArtifactKind, String)>,
    /// Each verifier's answer about each artifact it reads.
    pub checks: Vec<Check>,
    /// The policy's verdict on this manifest alone: who vouched, or why not.
    pub verdict: Result<String, Unverified>,
}

/// The signatures and attestations of an image, as a rule's policy sees
/// them: the manifest asked for and, for an index, each platform manifest.
#[derive(Debug, Clone)]
pub struct SignatureReport {
    /// The rule the image is pulled through.
    pub rule: String,
    /// The upstream repository (`registry/repository`).
    pub upstream: String,
    /// What the policy accepts (each verifier's [`Verifier::wants`]); empty
    /// when the rule has no signature policy.
    pub wants: Vec<String>,
    /// Whether the policy only audits.
    pub audit: bool,
    /// The manifest asked for, then the platform manifests of an index.
    pub manifests: Vec<ManifestReport>,
}

impl SignatureReport {
    /// Whether a pull of the image would pass: the top manifest passes
    /// (an index's signature covers its platforms), or it is an index
    /// nothing was found for and every platform passes. Always true
    /// without a policy.
    pub fn passes(&self) -> bool {
        if self.wants.is_empty() {
            return true;
        }
        let Some((top, platforms)) = self.manifests.split_first() else {
            return false;
        };
        match &top.verdict {
            Ok(_) => true,
            Err(Unverified::NoSignature | Unverified::NoAttestation(_))
                if !platforms.is_empty() =>
            {
                platforms.iter().all(|m| m.verdict.is_ok())
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Role, Result<String, Unverified>);

    impl Verifier for Fixed {
        fn role(&self) -> &Role {
            &self.0
        }
        fn wants(&self) -> String {
            "fixed".into()
        }
        fn reads(&self) -> &[ArtifactKind] {
            &[ArtifactKind::Bundle]
        }
        fn verify(
            &self,
            _: &Subject<'_>,
            _: &Artifact,
            _: SystemTime,
        ) -> Option<Result<String, Unverified>> {
            Some(self.1.clone())
        }
    }

    fn bundle() -> Artifact {
        Artifact {
            kind: ArtifactKind::Bundle,
            found: "referrer".into(),
            bytes: Bytes::new(),
            annotations: BTreeMap::new(),
            manifest_annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn any_signature_verifier_suffices_and_every_attestation_is_required() {
        let d = Digest::sha256_of(b"m");
        let s = Subject {
            digest: &d,
            size: 1,
            media_type: "x",
            scope: "r/x",
        };
        let ok = |r: Role| Arc::new(Fixed(r, Ok("by me".into()))) as Arc<dyn Verifier>;
        let bad = |r: Role| {
            Arc::new(Fixed(r, Err(Unverified::Untrusted("issuer x".into())))) as Arc<dyn Verifier>
        };
        let att = || Role::Attestation("slsa".into());
        let now = SystemTime::now();
        let arts = [bundle()];
        let j = judge(&[bad(Role::Signature), ok(Role::Signature)], &s, &arts, now);
        assert_eq!(j.verdict.unwrap(), "by me");
        assert_eq!(j.checks.len(), 2);
        let j = judge(&[ok(Role::Signature), bad(att())], &s, &arts, now);
        let e = j.verdict.unwrap_err().to_string();
        assert!(
            e.contains("no attestation of type slsa verifies: issuer x (wanted fixed)"),
            "{e}"
        );
        let j = judge(&[ok(Role::Signature), ok(att())], &s, &[], now);
        assert_eq!(j.verdict.unwrap_err(), Unverified::NoSignature);
        let j = judge(&[ok(att())], &s, &[], now);
        assert_eq!(
            j.verdict.unwrap_err(),
            Unverified::NoAttestation("slsa".into())
        );
        let j = judge(&[ok(Role::Signature), ok(att())], &s, &arts, now);
        assert_eq!(j.verdict.unwrap(), "by me; attestation slsa by me");
        // A signature met elsewhere (a signed index): only attestations asked.
        let j = judge(&[ok(Role::Signature), bad(att())], &s, &arts, now);
        assert_eq!(j.signed.as_deref(), Some("by me"));
        assert!(j.verdict.is_err());
        let j = judge_with(
            &[bad(Role::Signature), ok(att())],
            &s,
            &arts,
            now,
            Some("index"),
        );
        assert_eq!(j.verdict.unwrap(), "index; attestation slsa by me");
        assert_eq!(j.checks.len(), 1);
    }
}
