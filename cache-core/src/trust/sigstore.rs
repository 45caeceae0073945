//! Cosign and Sigstore verification: keyless signatures (a Fulcio
//! certificate chain to a root of the trust root, the signer's identity
//! from the certificate, the signing time proven by a transparency log
//! entry, the embedded SCT), key signatures, Sigstore bundles, and in-toto
//! attestations as cosign attaches them (`.att` tag, DSSE) and as bundles.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use regex::Regex;
use sha2::{Digest as _, Sha256};

use super::bundle::{Bundle, Content};
use super::cert::{Cert, ChainError, PublicKey, SigFormat, b64, validate_chain};
use super::dsse::{Envelope, Statement};
use super::rekor::TlogEntry;
use super::root::TrustedRoot;
use super::sct;
use crate::cosign::{self, Unverified};
use crate::signatures::{Artifact, ArtifactKind, COSIGN_SIGN_PREDICATE, Role, Subject, Verifier};

/// Fulcio's OIDC issuer extension (DER UTF8String).
const ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
/// Fulcio's first OIDC issuer extension (the raw string).
const ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";

/// A value an identity names: exactly, or by a pattern that must match
/// the whole value.
#[derive(Clone)]
pub enum Pattern {
    /// This value exactly.
    Exact(String),
    /// A regular expression, matched against the whole value (as if
    /// written `^(?:...)$`).
    Regex(Regex),
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(s) => write!(f, "{s}"),
            Pattern::Regex(r) => {
                let s = r.as_str();
                write!(f, "~{}", &s[4..s.len() - 2])
            }
        }
    }
}

impl Pattern {
    /// A pattern of a regular expression, anchored at both ends.
    pub fn regex(re: &str) -> Result<Pattern, String> {
        Regex::new(&format!("^(?:{re})$"))
            .map(Pattern::Regex)
            .map_err(|e| e.to_string())
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Exact(s) => s == v,
            Pattern::Regex(r) => r.is_match(v),
        }
    }
}

/// A keyless signer: the OIDC issuer and the subject (a SAN of the
/// certificate: a workflow URI, an e-mail address) cosign's
/// `--certificate-oidc-issuer(-regexp)` and `--certificate-identity(-regexp)`
/// name.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The OIDC issuer.
    pub issuer: Pattern,
    /// The subject.
    pub subject: Pattern,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "issuer {} subject {}", self.issuer, self.subject)
    }
}

impl Identity {
    fn matches(&self, issuer: &str, sans: &[String]) -> bool {
        self.issuer.matches(issuer) && sans.iter().any(|s| self.subject.matches(s))
    }
}

/// The OIDC issuer a Fulcio certificate names.
fn oidc_issuer(leaf: &Cert) -> Option<String> {
    if let Some(raw) = leaf.extension(ISSUER_V2) {
        use x509_cert::der::Decode as _;
        if let Ok(s) = x509_cert::der::asn1::Utf8StringRef::from_der(raw) {
            return Some(s.to_string());
        }
    }
    leaf.extension(ISSUER_V1)
        .map(|raw| String::from_utf8_lossy(raw).into_owned())
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Who may sign: cosign public keys, and keyless identities under a
/// Sigstore trust root.
#[derive(Debug, Clone, Default)]
pub struct Signers {
    /// Public keys, by name.
    pub(crate) keys: Vec<(String, PublicKey)>,
    /// Keyless identities.
    pub identities: Vec<Identity>,
    /// The trust root keyless certificates and log entries are checked against.
    pub root: Option<Arc<TrustedRoot>>,
}

/// What was signed.
pub(crate) enum Message<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// A message of which only the SHA-256 is known.
    Sha256(&'a [u8]),
}

/// A signature with what it carries to be verified.
pub(crate) struct Signed<'a> {
    pub(crate) message: Message<'a>,
    pub(crate) signature: &'a [u8],
    pub(crate) certificate: Option<Cert>,
    pub(crate) tlog: Vec<TlogEntry>,
    /// The SHA-256 the log entry must name (of the payload).
    pub(crate) logged_hash: Vec<u8>,
    pub(crate) needs_proof: bool,
}

impl Signers {
    /// Signers of these keys (PEM `PUBLIC KEY` texts, by name).
    pub fn with_keys(keys: &[(String, String)]) -> Result<Signers, String> {
        let keys = keys
            .iter()
            .map(|(name, pem)| {
                PublicKey::from_pem(pem)
                    .map(|k| (name.clone(), k))
                    .map_err(|e| format!("{name}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Signers {
            keys,
            ..Signers::default()
        })
    }

    /// Keyless signers: these identities under this trust root.
    pub fn keyless(identities: Vec<Identity>, root: Arc<TrustedRoot>) -> Signers {
        Signers {
            identities,
            root: Some(root),
            ..Signers::default()
        }
    }

    /// Whether any signer is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.identities.is_empty()
    }

    /// What they accept, for messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.identities.iter().map(|i| i.to_string()).collect();
        if !self.keys.is_empty() {
            let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
            parts.push(format!("key {}", names.join(", ")));
        }
        parts.join(" or ")
    }

    /// Verifies a signature: by a key, or keyless (certificate chain at
    /// the logged time, identity, log entry, SCT). Returns who signed.
    pub(crate) fn verify(&self, s: &Signed<'_>) -> Result<String, Unverified> {
        let untrusted = |m: String| Unverified::Untrusted(m);
        let check = |k: &PublicKey| match s.message {
            Message::Bytes(m) => k.verify(SigFormat::Der, k.default_hash(), m, s.signature),
            Message::Sha256(d) => k.verify_prehash(d, s.signature),
        };
        let Some(leaf) = &s.certificate else {
            return self
                .keys
                .iter()
                .find(|(_, k)| check(k).is_ok())
                .map(|(name, _)| format!("signed with {name}"))
                .ok_or(Unverified::UnknownKey);
        };
        let Some(root) = &self.root else {
            return Err(untrusted(
                "a keyless signature, but no keyless identity is configured".into(),
            ));
        };
        if self.identities.is_empty() {
            return Err(untrusted(
                "a keyless signature, but no keyless identity is configured".into(),
            ));
        }
        let key = leaf
            .key()
            .map_err(|e| Unverified::Malformed(format!("certificate key: {e}")))?;
        if check(&key).is_err() {
            return Err(untrusted(
                "the signature does not verify with its certificate's key (altered payload?)"
                    .into(),
            ));
        }
        let issuer = oidc_issuer(leaf).unwrap_or_default();
        let sans = leaf.sans();
        if !self.identities.iter().any(|i| i.matches(&issuer, &sans)) {
            return Err(untrusted(format!(
                "signed by issuer {} subject {}, wanted {}",
                if issuer.is_empty() { "(none)" } else { &issuer },
                if sans.is_empty() {
                    "(none)".to_owned()
                } else {
                    sans.join(", ")
                },
                self.describe()
            )));
        }
        // When it was signed: the transparency log's integrated time.
        if s.tlog.is_empty() {
            return Err(untrusted(
                "no transparency log entry proves when the keyless signature was made".into(),
            ));
        }
        let mut at = None;
        let mut why = String::new();
        for e in &s.tlog {
            if s.needs_proof && e.proof.is_none() {
                why = "the bundle's log entry has no inclusion proof".into();
                continue;
            }
            match e
                .verify(root)
                .and_then(|t| e.covers(s.signature, leaf, &s.logged_hash).map(|()| t))
            {
                Ok(t) => {
                    at = Some(t);
                    break;
                }
                Err(e) => why = e,
            }
        }
        let t = at.ok_or_else(|| untrusted(why))?;
        if !leaf.valid_at(t) {
            let state = if t > leaf.not_after() {
                "had expired"
            } else {
                "was not yet valid"
            };
            return Err(untrusted(format!(
                "the certificate (valid {} to {}) {state} at the log's integrated time {}",
                rfc3339(leaf.not_before()),
                rfc3339(leaf.not_after()),
                rfc3339(t)
            )));
        }
        let mut chain_err = ChainError::UnknownRoot;
        let mut ok_ca = None;
        for ca in root.cas.iter().filter(|ca| ca.valid.contains(t)) {
            let (inter, top) = ca.chain.split_at(ca.chain.len() - 1);
            match validate_chain(leaf, inter, top, t, true) {
                Ok(()) => {
                    ok_ca = Some(ca);
                    break;
                }
                Err(ChainError::UnknownRoot) => {}
                Err(e) => chain_err = e,
            }
        }
        let Some(ca) = ok_ca else {
            return Err(untrusted(match chain_err {
                ChainError::UnknownRoot => {
                    "the certificate chain leads to no Fulcio root of the trusted root".into()
                }
                ChainError::Expired => format!(
                    "a certificate of the chain was not valid at the log's integrated time {}",
                    rfc3339(t)
                ),
                ChainError::Invalid(e) => format!("the certificate chain is invalid: {e}"),
            }));
        };
        if sct::has_scts(leaf) {
            let issuer_name = leaf.issuer_der();
            let issuers: Vec<&Cert> = ca
                .chain
                .iter()
                .filter(|c| c.subject_der() == issuer_name)
                .collect();
            sct::verify_embedded(leaf, &issuers, root).map_err(untrusted)?;
        }
        Ok(format!(
            "keyless {} ({issuer}), logged {}",
            sans.first().map(String::as_str).unwrap_or_default(),
            rfc3339(t)
        ))
    }
}

/// Signature verification of the material cosign and Sigstore bundles
/// carry: classic `.sig` layers with a certificate (keyless), and bundles
/// (keyless or by key) whose DSSE statement is cosign's signature
/// predicate or whose message digest is the manifest's.
#[derive(Debug, Clone)]
pub struct SigstoreSignatures {
    signers: Signers,
}

impl SigstoreSignatures {
    /// A verifier of these signers.
    pub fn new(signers: Signers) -> Self {
        SigstoreSignatures { signers }
    }
}

const SIGNATURE: &Role = &Role::Signature;

impl Verifier for SigstoreSignatures {
    fn role(&self) -> &Role {
        SIGNATURE
    }

    fn wants(&self) -> String {
        format!("a signature by {}", self.signers.describe())
    }

    fn reads(&self) -> &[ArtifactKind] {
        if self.signers.identities.is_empty() {
            &[ArtifactKind::Bundle]
        } else {
            &[ArtifactKind::SimpleSigning, ArtifactKind::Bundle]
        }
    }

    fn verify(
        &self,
        subject: &Subject<'_>,
        artifact: &Artifact,
        _now: SystemTime,
    ) -> Option<Result<String, Unverified>> {
        match artifact.kind {
            ArtifactKind::SimpleSigning => {
                // Key signatures are the cosign key verifier's.
                let pem = artifact.annotation(cosign::CERTIFICATE_ANNOTATION)?;
                Some(self.classic(subject, artifact, pem))
            }
            ArtifactKind::Bundle => {
                let bundle = match Bundle::from_json(&artifact.bytes) {
                    Ok(b) => b,
                    Err(e) => return Some(Err(Unverified::Malformed(e))),
                };
                match &bundle.content {
                    Content::Dsse(env) => {
                        let st = match env.statement() {
                            Ok(s) => s,
                            Err(e) => return Some(Err(Unverified::Malformed(e))),
                        };
                        if st.predicate_type != COSIGN_SIGN_PREDICATE {
                            return None; // an attestation
                        }
                        if !st.covers(subject.digest) {
                            return Some(Err(Unverified::OtherDigest(st.subjects_text())));
                        }
                        Some(verify_dsse(&self.signers, env, &bundle))
                    }
                    Content::Message {
                        algorithm,
                        digest,
                        signature,
                    } => {
                        let alg = algorithm.to_ascii_lowercase().replace(['_', '-'], "");
                        if alg != "sha2256" && alg != "sha256" {
                            return Some(Err(Unverified::Malformed(format!(
                                "message digest algorithm {algorithm}"
                            ))));
                        }
                        if subject.digest.algorithm().as_str() != "sha256"
                            || hex::encode(digest) != subject.digest.hex()
                        {
                            return Some(Err(Unverified::OtherDigest(format!(
                                "sha256:{}",
                                hex::encode(digest)
                            ))));
                        }
                        Some(self.signers.verify(&Signed {
                            message: super::sigstore::Message::Sha256(digest),
                            signature,
                            certificate: bundle.certificate.clone(),
                            tlog: bundle.tlog.clone(),
                            logged_hash: digest.clone(),
                            needs_proof: bundle.needs_proof,
                        }))
                    }
                }
            }
            _ => None,
        }
    }
}

impl SigstoreSignatures {
    fn classic(
        &self,
        subject: &Subject<'_>,
        artifact: &Artifact,
        pem: &str,
    ) -> Result<String, Unverified> {
        let sig = artifact
            .annotation(cosign::SIGNATURE_ANNOTATION)
            .ok_or_else(|| Unverified::Malformed("no signature annotation".into()))?;
        let sig = b64(sig).map_err(|e| Unverified::Malformed(format!("signature is {e}")))?;
        let leaf = Cert::from_pem(pem)
            .map_err(|e| Unverified::Malformed(format!("certificate annotation: {e}")))?;
        let tlog = match artifact.annotation(cosign::BUNDLE_ANNOTATION) {
            Some(b) => vec![TlogEntry::from_cosign_annotation(b).map_err(Unverified::Malformed)?],
            None => Vec::new(),
        };
        let who = self.signers.verify(&Signed {
            message: Message::Bytes(&artifact.bytes),
            signature: &sig,
            certificate: Some(leaf),
            tlog,
            logged_hash: Sha256::digest(&artifact.bytes).to_vec(),
            needs_proof: false,
        })?;
        let doc: serde_json::Value = serde_json::from_slice(&artifact.bytes)
            .map_err(|e| Unverified::Malformed(format!("payload is not JSON: {e}")))?;
        let named = doc["critical"]["image"]["docker-manifest-digest"]
            .as_str()
            .unwrap_or_default();
        if named != subject.digest.as_str() {
            return Err(Unverified::OtherDigest(named.chars().take(80).collect()));
        }
        Ok(who)
    }
}

/// Verifies a DSSE envelope's signature by the signers, with the log
/// entries and certificate of the bundle (or cosign's annotations).
fn verify_dsse(signers: &Signers, env: &Envelope, bundle: &Bundle) -> Result<String, Unverified> {
    let pae = env.pae();
    let hash = Sha256::digest(&env.payload).to_vec();
    let mut best = Unverified::UnknownKey;
    for sig in &env.signatures {
        match signers.verify(&Signed {
            message: Message::Bytes(&pae),
            signature: sig,
            certificate: bundle.certificate.clone(),
            tlog: bundle.tlog.clone(),
            logged_hash: hash.clone(),
            needs_proof: bundle.needs_proof,
        }) {
            Ok(who) => return Ok(who),
            Err(e) if e.rank() >= best.rank() => best = e,
            Err(_) => {}
        }
    }
    Err(best)
}

/// An attestation requirement: a verified in-toto statement of
/// `predicate_type`, signed by one of the signers, whose subject is the
/// manifest, and whose predicate has the given field values.
#[derive(Debug, Clone)]
pub struct Attestation {
    role: Role,
    predicate_type: String,
    signers: Signers,
    fields: BTreeMap<String, String>,
}

impl Attestation {
    /// A requirement of `predicate_type` by `signers`, with predicate
    /// fields (dotted paths, `runDetails.builder.id`) equal to values.
    pub fn new(predicate_type: &str, signers: Signers, fields: BTreeMap<String, String>) -> Self {
        Attestation {
            role: Role::Attestation(predicate_type.to_owned()),
            predicate_type: predicate_type.to_owned(),
            signers,
            fields,
        }
    }

    fn judge(
        &self,
        subject: &Subject<'_>,
        env: &Envelope,
        bundle: &Bundle,
    ) -> Option<Result<String, Unverified>> {
        let st = match env.statement() {
            Ok(s) => s,
            Err(e) => return Some(Err(Unverified::Malformed(e))),
        };
        if st.predicate_type != self.predicate_type {
            return None;
        }
        Some(
            self.check(subject, &st)
                .and_then(|()| verify_dsse(&self.signers, env, bundle)),
        )
    }

    fn check(&self, subject: &Subject<'_>, st: &Statement) -> Result<(), Unverified> {
        if !st.covers(subject.digest) {
            return Err(Unverified::OtherDigest(format!(
                "the attestation's subject is {}",
                st.subjects_text()
            )));
        }
        for (path, want) in &self.fields {
            let got = st.field(path);
            if got.as_deref() != Some(want.as_str()) {
                return Err(Unverified::Untrusted(format!(
                    "the attestation's predicate has {path} = {}, wanted {want:?}",
                    got.map_or("nothing".to_owned(), |g| format!("{g:?}"))
                )));
            }
        }
        Ok(())
    }
}

impl Verifier for Attestation {
    fn role(&self) -> &Role {
        &self.role
    }

    fn wants(&self) -> String {
        let mut s = format!(
            "an attestation of type {} by {}",
            self.predicate_type,
            self.signers.describe()
        );
        for (k, v) in &self.fields {
            s.push_str(&format!(" with {k} = {v:?}"));
        }
        s
    }

    fn reads(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Dsse, ArtifactKind::Bundle]
    }

    fn verify(
        &self,
        subject: &Subject<'_>,
        artifact: &Artifact,
        _now: SystemTime,
    ) -> Option<Result<String, Unverified>> {
        match artifact.kind {
            ArtifactKind::Dsse => {
                let parsed = serde_json::from_slice(&artifact.bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|v| Envelope::from_json(&v));
                let env = match parsed {
                    Ok(e) => e,
                    Err(e) => return Some(Err(Unverified::Malformed(format!("attestation: {e}")))),
                };
                let certificate = match artifact.annotation(cosign::CERTIFICATE_ANNOTATION) {
                    Some(pem) => match Cert::from_pem(pem) {
                        Ok(c) => Some(c),
                        Err(e) => return Some(Err(Unverified::Malformed(e))),
                    },
                    None => None,
                };
                let tlog = match artifact
                    .annotation(cosign::BUNDLE_ANNOTATION)
                    .map(TlogEntry::from_cosign_annotation)
                    .transpose()
                {
                    Ok(t) => t.into_iter().collect(),
                    Err(e) => return Some(Err(Unverified::Malformed(e))),
                };
                let bundle = Bundle {
                    certificate,
                    tlog,
                    content: Content::Dsse(env.clone()),
                    needs_proof: false,
                };
                self.judge(subject, &env, &bundle)
            }
            ArtifactKind::Bundle => {
                let bundle = match Bundle::from_json(&artifact.bytes) {
                    Ok(b) => b,
                    Err(e) => return Some(Err(Unverified::Malformed(e))),
                };
                match &bundle.content {
                    Content::Dsse(env) => self.judge(subject, env, &bundle),
                    Content::Message { .. } => None,
                }
            }
            _ => None,
        }
    }
}
