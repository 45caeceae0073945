//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`, and
//! v0.1, v0.2): the signature or DSSE envelope, the signer's certificate
//! (or a key hint) and the transparency log entries, in one document.

use super::cert::{Cert, b64};
use super::dsse::Envelope;
use super::rekor::TlogEntry;

/// What a bundle signs.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    /// A signature over a message of which the bundle gives the digest.
    Message {
        algorithm: String,
        digest: Vec<u8>,
        signature: Vec<u8>,
    },
    /// A DSSE envelope.
    Dsse(Envelope),
}

/// A parsed bundle.
#[derive(Debug, Clone)]
pub(crate) struct Bundle {
    /// The signing certificate, when keyless.
    pub(crate) certificate: Option<Cert>,
    pub(crate) tlog: Vec<TlogEntry>,
    pub(crate) content: Content,
    /// v0.2 and later require inclusion proofs.
    pub(crate) needs_proof: bool,
}

impl Bundle {
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Bundle, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("bundle: {e}"))?;
        let media_type = v["mediaType"].as_str().unwrap_or_default();
        if !media_type.starts_with("application/vnd.dev.sigstore.bundle") {
            return Err(format!(
                "{media_type:?} is not a Sigstore bundle media type"
            ));
        }
        let needs_proof = !media_type.ends_with("version=0.1") && !media_type.contains("v0.1");
        let vm = &v["verificationMaterial"];
        let certificate = if let Some(raw) = vm["certificate"]["rawBytes"].as_str() {
            Some(Cert::from_der(&b64(raw)?)?)
        } else if let Some(first) = vm["x509CertificateChain"]["certificates"]
            .as_array()
            .and_then(|c| c.first())
        {
            let raw = first["rawBytes"]
                .as_str()
                .ok_or("certificate without rawBytes")?;
            Some(Cert::from_der(&b64(raw)?)?)
        } else {
            None
        };
        let tlog = vm["tlogEntries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(TlogEntry::from_bundle)
            .collect::<Result<Vec<_>, _>>()?;
        let content = if let Some(ms) = v.get("messageSignature").filter(|m| m.is_object()) {
            Content::Message {
                algorithm: ms["messageDigest"]["algorithm"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                digest: b64(ms["messageDigest"]["digest"]
                    .as_str()
                    .ok_or("messageSignature without a messageDigest")?)?,
                signature: b64(ms["signature"]
                    .as_str()
                    .ok_or("messageSignature without a signature")?)?,
            }
        } else if let Some(env) = v.get("dsseEnvelope").filter(|e| e.is_object()) {
            Content::Dsse(Envelope::from_json(env)?)
        } else {
            return Err("bundle with neither a messageSignature nor a dsseEnvelope".into());
        };
        Ok(Bundle {
            certificate,
            tlog,
            content,
            needs_proof,
        })
    }
}
