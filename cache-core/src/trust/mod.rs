//! Signature verification beyond cosign keys (feature `trust`), offline:
//!
//! * **keyless cosign** ([`SigstoreSignatures`]): a Fulcio certificate
//!   that chains to a CA of a Sigstore [`TrustedRoot`] (at the time the
//!   transparency log entry proves the signature was made: its signed
//!   entry timestamp, or an inclusion proof to a checkpoint the log key
//!   signed), whose embedded SCT verifies with a CT log key of the root
//!   where it has one, and whose identity (the SAN and Fulcio's OIDC
//!   issuer extension, `1.3.6.1.4.1.57264.1.8` or `.1.1`) matches an
//!   [`Identity`]; found in cosign's `.sig` layers (the
//!   `dev.sigstore.cosign/certificate`, `chain` and `bundle` annotations)
//!   and in Sigstore bundles (v0.1 to v0.3) attached as referrers;
//! * **attestations** ([`Attestation`]): in-toto statements in DSSE
//!   envelopes, as cosign attaches them (`.att` tag) and as bundles, of a
//!   predicate type, about the manifest, signed by the given signers,
//!   with optional predicate field values;
//! * **Notation** ([`Notation`]): JWS and COSE envelopes checked against a
//!   trust store and trust policy in notation's own formats.
//!
//! Nothing here makes a network call: trust roots, trust stores and keys
//! are files, read when the policy is built ([`TrustFiles`]) and again on
//! each reload. Operators refresh `trusted_root.json` from Sigstore's TUF
//! repository out of band (`cosign trusted-root create`, or the file
//! `sigstore-python` or `cosign initialize` keep), then reload.
//!
//! Built on well-kept crates rather than a Sigstore client:
//! `x509-cert` (parsing), `rustls-webpki` (chain validation at a given
//! time, code-signing usage), `ring` (signatures), `p256`/`p384` (ECDSA
//! over a digest), `coset` (COSE), `time` (RFC 3339), `regex` (identity
//! patterns). sigstore-rs's `sigstore` crate was not used: its verifying
//! features bring HTTP clients (Fulcio, Rekor, OAuth, a browser opener),
//! tokio, pre-release RustCrypto crates beside ours, and a crypto backend
//! that is OpenSSL or aws-lc, and its cosign verification is tied to its
//! own registry client.

mod bundle;
mod cert;
mod dsse;
mod notation;
mod rekor;
mod root;
mod sct;
mod sigstore;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use notation::{Notation, NotationTrust};
pub use root::TrustedRoot;
pub use sigstore::{Attestation, Identity, Pattern, Signers, SigstoreSignatures};

use crate::config::{ConfigError, KeylessSpec, MatchSpec, SignatureFiles, SignatureSpec};
use crate::cosign::CosignKey;
use crate::signatures::Verifier;

/// Reads the files signature policies name, each once however many rules
/// name it: cosign keys, Sigstore trust roots, Notation trust stores and
/// policies. Build a new one to re-read them (a reload).
#[derive(Debug, Default)]
pub struct TrustFiles {
    keys: HashMap<PathBuf, (CosignKey, String)>,
    roots: HashMap<PathBuf, Arc<TrustedRoot>>,
    notation: HashMap<(PathBuf, PathBuf), Arc<NotationTrust>>,
}

impl TrustFiles {
    fn key(&mut self, path: &Path) -> Result<(CosignKey, String), String> {
        if let Some(k) = self.keys.get(path) {
            return Ok(k.clone());
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = CosignKey::from_pem(path.display().to_string(), &text)?;
        let entry = (key, text);
        self.keys.insert(path.to_owned(), entry.clone());
        Ok(entry)
    }

    /// The trust root in `path`.
    pub fn trusted_root(&mut self, path: &Path) -> Result<Arc<TrustedRoot>, String> {
        if let Some(r) = self.roots.get(path) {
            return Ok(r.clone());
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let root = Arc::new(
            TrustedRoot::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))?,
        );
        self.roots.insert(path.to_owned(), root.clone());
        Ok(root)
    }

    fn signers(
        &mut self,
        keys: &[PathBuf],
        ids: &[KeylessSpec],
        root: &Option<Arc<TrustedRoot>>,
        at: &str,
    ) -> Result<Signers, ConfigError> {
        let pems = keys
            .iter()
            .map(|p| self.key(p).map(|(k, pem)| (k.name().to_owned(), pem)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::new(format!("{at}cosign_keys: {e}")))?;
        let mut s = Signers::with_keys(&pems)
            .map_err(|e| ConfigError::new(format!("{at}cosign_keys: {e}")))?;
        s.identities = ids
            .iter()
            .enumerate()
            .map(|(i, k)| {
                identity(k).map_err(|e| ConfigError::new(format!("{at}keyless[{i}]: {e}")))
            })
            .collect::<Result<_, _>>()?;
        s.root = root.clone();
        Ok(s)
    }
}

/// A certificate from DER, for the test kit's trust stores.
#[cfg(test)]
pub(crate) fn cert_for_tests(der: &[u8]) -> cert::Cert {
    cert::Cert::from_der(der).expect("certificate")
}

fn pattern(m: &MatchSpec) -> Result<Pattern, String> {
    match m {
        MatchSpec::Exact(s) => Ok(Pattern::Exact(s.clone())),
        MatchSpec::Regex(r) => Pattern::regex(r),
    }
}

fn identity(k: &KeylessSpec) -> Result<Identity, String> {
    Ok(Identity {
        issuer: pattern(&k.issuer)?,
        subject: pattern(&k.subject)?,
    })
}

impl SignatureFiles for TrustFiles {
    fn cosign_key(&mut self, path: &Path) -> Result<CosignKey, String> {
        self.key(path).map(|(k, _)| k)
    }

    fn verifiers(&mut self, spec: &SignatureSpec) -> Result<Vec<Arc<dyn Verifier>>, ConfigError> {
        let root = spec
            .trusted_root
            .as_deref()
            .map(|p| self.trusted_root(p))
            .transpose()
            .map_err(|e| ConfigError::new(format!("trusted_root: {e}")))?;
        let mut out: Vec<Arc<dyn Verifier>> = Vec::new();
        let table = self.signers(&spec.cosign_keys, &spec.keyless, &root, "")?;
        if !table.is_empty() {
            out.push(Arc::new(SigstoreSignatures::new(table.clone())));
        }
        if let Some(n) = &spec.notation {
            let key = (n.trust_store.clone(), n.trust_policy.clone());
            let trust = match self.notation.get(&key) {
                Some(t) => t.clone(),
                None => {
                    let t = Arc::new(
                        NotationTrust::load(&n.trust_store, &n.trust_policy)
                            .map_err(|e| ConfigError::new(format!("notation: {e}")))?,
                    );
                    self.notation.insert(key, t.clone());
                    t
                }
            };
            out.push(Arc::new(Notation::new(trust)));
        }
        for (i, a) in spec.require_attestations.iter().enumerate() {
            let at = format!("require_attestations[{i}].");
            let signers = if a.keyless.is_empty() && a.cosign_keys.is_empty() {
                table.clone()
            } else {
                self.signers(&a.cosign_keys, &a.keyless, &root, &at)?
            };
            out.push(Arc::new(Attestation::new(
                &a.predicate_type,
                signers,
                a.predicate.clone(),
            )));
        }
        Ok(out)
    }
}
