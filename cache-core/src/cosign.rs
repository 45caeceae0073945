//! Cosign signatures, as the classic scheme stores them: for a manifest
//! `sha256:<hex>`, an image manifest tagged `sha256-<hex>.sig` in the same
//! repository (or, on registries with the referrers API, a manifest whose
//! `subject` is the signed manifest), whose layers are *simple signing*
//! payloads, each with its signature in the
//! `dev.cosignproject.cosign/signature` annotation: base64 of an ASN.1 DER
//! ECDSA signature over the payload's bytes. The payload is JSON naming
//! what it signs: `critical.image.docker-manifest-digest`.
//!
//! This module checks one signature against public keys (ECDSA P-256 with
//! SHA-256, PEM `PUBLIC KEY`, as `cosign generate-key-pair` and `openssl`
//! write them); the engine finds signatures and caches verdicts
//! (`engine/signatures.rs`).

use std::fmt;

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;

use crate::digest::Digest;
use crate::names::Tag;

/// The annotation of a signature layer that holds the signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The media type of a simple signing payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The artifact type of a signature found through the referrers API.
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// The largest payload read: simple signing payloads are a few hundred bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Layer media types of signature and attestation artifacts: content that
/// is read, never run. A manifest whose layers are all of these is itself
/// signature material.
pub const ARTIFACT_LAYER_TYPES: &[&str] = &[
    SIMPLE_SIGNING,
    "application/vnd.dsse.envelope.v1+json",
    "application/vnd.in-toto+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle.v0.2+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
    // Notation's signature envelopes.
    "application/jose+json",
    "application/cose",
];

/// The layer annotation that holds a keyless signature's certificate (PEM).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// The layer annotation that holds the certificate's chain (PEM).
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
/// The layer annotation that holds the transparency log entry: the signed
/// entry timestamp and what it signs.
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
/// The layer annotation that names an attestation's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";

/// A public key signatures are checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct CosignKey {
    name: String,
    key: VerifyingKey,
}

impl fmt::Debug for CosignKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CosignKey")
            .field("name", &self.name)
            .finish()
    }
}

impl CosignKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of an ECDSA P-256
    /// key; `name` (its file, say) names it in verdicts and errors.
    pub fn from_pem(name: impl Into<String>, pem: &str) -> Result<CosignKey, String> {
        let name = name.into();
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| format!("{name}: not a PEM ECDSA P-256 public key: {e}"))?;
        Ok(CosignKey { name, key })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The tag cosign's classic scheme keeps `d`'s signatures under,
/// `sha256-<hex>.sig`; `None` for a digest too long for a tag (sha512).
pub fn signature_tag(d: &Digest) -> Option<Tag> {
    Tag::parse(&format!("{}-{}.sig", d.algorithm(), d.hex())).ok()
}

/// Why a signature does not vouch for a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unverified {
    /// No signature was found.
    NoSignature,
    /// The signature does not verify with any configured key (signed by
    /// another key, or the payload was altered).
    UnknownKey,
    /// The signature is valid but its payload names another digest.
    OtherDigest(String),
    /// The signature or its payload could not be read.
    Malformed(String),
    /// The signature verifies, but not as the policy wants: another
    /// identity, a chain to an unknown root, no transparency log entry, a
    /// certificate expired when it was logged... The text says what was
    /// wanted and what was found.
    Untrusted(String),
    /// No verified attestation of this predicate type covers the digest.
    NoAttestation(String),
}

impl Unverified {
    /// How telling a reason is, to keep the most telling of several: any
    /// finding beats "none", a verified signature that is not trusted
    /// beats one that does not verify.
    pub fn rank(&self) -> u8 {
        match self {
            Unverified::NoSignature | Unverified::NoAttestation(_) => 0,
            Unverified::Malformed(_) => 1,
            Unverified::UnknownKey => 2,
            Unverified::OtherDigest(_) | Unverified::Untrusted(_) => 3,
        }
    }
}

impl fmt::Display for Unverified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unverified::NoSignature => f.write_str("no signature"),
            Unverified::UnknownKey => f.write_str("no signature verifies with a configured key"),
            Unverified::OtherDigest(d) => {
                write!(f, "the signed payload is for another digest ({d})")
            }
            Unverified::Malformed(why) => write!(f, "malformed signature: {why}"),
            Unverified::Untrusted(why) => f.write_str(why),
            Unverified::NoAttestation(t) => {
                write!(f, "no verified attestation of type {t} covers the digest")
            }
        }
    }
}

/// Checks one signature: `signature_b64` over `payload` by one of `keys`,
/// and the payload naming `digest`. Returns the key that signed.
pub fn verify<'k>(
    payload: &[u8],
    signature_b64: &str,
    digest: &Digest,
    keys: &'k [CosignKey],
) -> Result<&'k CosignKey, Unverified> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|e| Unverified::Malformed(format!("signature is not base64: {e}")))?;
    let sig = Signature::from_der(&raw)
        .or_else(|_| Signature::from_slice(&raw))
        .map_err(|e| Unverified::Malformed(format!("signature is not ECDSA: {e}")))?;
    let key = keys
        .iter()
        .find(|k| k.key.verify(payload, &sig).is_ok())
        .ok_or(Unverified::UnknownKey)?;
    let doc: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| Unverified::Malformed(format!("payload is not JSON: {e}")))?;
    let named = doc["critical"]["image"]["docker-manifest-digest"]
        .as_str()
        .ok_or_else(|| {
            Unverified::Malformed("payload names no critical.image.docker-manifest-digest".into())
        })?;
    if named != digest.as_str() {
        return Err(Unverified::OtherDigest(named.chars().take(80).collect()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    fn keypair(seed: u8) -> (SigningKey, CosignKey) {
        let sk = SigningKey::from_slice(&[seed; 32]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        (sk, CosignKey::from_pem(format!("key{seed}"), &pem).unwrap())
    }

    fn payload(d: &Digest) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    fn sign(sk: &SigningKey, msg: &[u8]) -> String {
        let sig: Signature = sk.sign(msg);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }

    #[test]
    fn a_signature_by_a_configured_key_over_the_right_digest_verifies() {
        let d = Digest::sha256_of(b"manifest");
        let (sk, k) = keypair(1);
        let (_, other) = keypair(2);
        let p = payload(&d);
        let keys = [other, k];
        assert_eq!(
            verify(&p, &sign(&sk, &p), &d, &keys).unwrap().name(),
            "key1"
        );
    }

    #[test]
    fn each_failure_has_its_reason() {
        let d = Digest::sha256_of(b"manifest");
        let (sk, k) = keypair(1);
        let (sk2, _) = keypair(2);
        let keys = [k];
        let p = payload(&d);
        assert_eq!(
            verify(&p, &sign(&sk2, &p), &d, &keys).unwrap_err(),
            Unverified::UnknownKey
        );
        let mut tampered = p.clone();
        tampered[10] ^= 1;
        assert_eq!(
            verify(&tampered, &sign(&sk, &p), &d, &keys).unwrap_err(),
            Unverified::UnknownKey
        );
        let other = Digest::sha256_of(b"other");
        let po = payload(&other);
        assert!(matches!(
            verify(&po, &sign(&sk, &po), &d, &keys),
            Err(Unverified::OtherDigest(_))
        ));
        assert!(matches!(
            verify(&p, "not base64!", &d, &keys),
            Err(Unverified::Malformed(_))
        ));
        assert!(matches!(
            verify(&p, "AAAA", &d, &keys),
            Err(Unverified::Malformed(_))
        ));
        let junk = b"not json";
        assert!(matches!(
            verify(junk, &sign(&sk, junk), &d, &keys),
            Err(Unverified::Malformed(_))
        ));
    }

    #[test]
    fn keys_that_are_not_p256_public_keys_are_refused_with_their_name() {
        let e = CosignKey::from_pem(
            "keys/bad.pub",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap_err();
        assert!(e.starts_with("keys/bad.pub: "), "{e}");
        assert!(CosignKey::from_pem("x", "").is_err());
    }

    #[test]
    fn the_signature_tag_follows_cosign() {
        let d = Digest::sha256_of(b"m");
        assert_eq!(
            signature_tag(&d).unwrap().as_str(),
            format!("sha256-{}.sig", d.hex())
        );
        let long = Digest::parse(&format!("sha512:{}", "a".repeat(128))).unwrap();
        assert!(signature_tag(&long).is_none());
    }
}
