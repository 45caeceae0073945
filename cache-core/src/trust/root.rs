//! Sigstore's `TrustedRoot` (`trusted_root.json`, media type
//! `application/vnd.dev.sigstore.trustedroot+json;version=0.1`): the
//! Fulcio certificate authorities, the transparency logs' keys (Rekor) and
//! the certificate transparency logs' keys, each with the time it is
//! valid for. The file `cosign` and `sigstore-python` keep (from TUF); the
//! public-good instance's is what most users point at.

use std::fmt;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::cert::{Cert, PublicKey, b64};

/// A time window: from `start`, until `end` if there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) start: Option<SystemTime>,
    pub(crate) end: Option<SystemTime>,
}

impl Window {
    pub(crate) fn contains(&self, t: SystemTime) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t <= e)
    }
}

/// A Fulcio CA: its chain, issuing certificate first, root last.
#[derive(Debug, Clone)]
pub(crate) struct CertificateAuthority {
    pub(crate) chain: Vec<Cert>,
    pub(crate) valid: Window,
}

/// A log's key: a Rekor instance or a CT log.
#[derive(Debug, Clone)]
pub(crate) struct LogKey {
    pub(crate) base_url: String,
    /// The log's id: as the trust root gives it (Rekor v1 and CT logs: the
    /// SHA-256 of the key's SubjectPublicKeyInfo; other logs derive it
    /// otherwise), else that SHA-256.
    pub(crate) id: Vec<u8>,
    pub(crate) key: PublicKey,
    pub(crate) valid: Window,
}

/// A Sigstore trust root, parsed and checked.
#[derive(Clone)]
pub struct TrustedRoot {
    pub(crate) cas: Vec<CertificateAuthority>,
    pub(crate) tlogs: Vec<LogKey>,
    pub(crate) ctlogs: Vec<LogKey>,
}

impl fmt::Debug for TrustedRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedRoot")
            .field("certificate_authorities", &self.cas.len())
            .field("tlogs", &self.tlogs.len())
            .field("ctlogs", &self.ctlogs.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoot {
    media_type: Option<String>,
    #[serde(default)]
    tlogs: Vec<RawLog>,
    #[serde(default)]
    certificate_authorities: Vec<RawCa>,
    #[serde(default)]
    ctlogs: Vec<RawLog>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLog {
    #[serde(default)]
    base_url: String,
    public_key: RawKey,
    log_id: Option<RawLogId>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKey {
    raw_bytes: String,
    valid_for: Option<RawWindow>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawWindow {
    start: Option<String>,
    end: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCa {
    cert_chain: RawChain,
    valid_for: Option<RawWindow>,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCert {
    raw_bytes: String,
}

/// An RFC 3339 time.
pub(crate) fn rfc3339(s: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

fn window(w: &Option<RawWindow>) -> Result<Window, String> {
    let Some(w) = w else {
        return Ok(Window {
            start: None,
            end: None,
        });
    };
    Ok(Window {
        start: w.start.as_deref().map(rfc3339).transpose()?,
        end: w.end.as_deref().map(rfc3339).transpose()?,
    })
}

fn log(raw: &RawLog, what: &str, i: usize) -> Result<LogKey, String> {
    let at = |e: String| format!("{what}[{i}]: {e}");
    let der = b64(&raw.public_key.raw_bytes).map_err(|e| at(format!("publicKey: {e}")))?;
    let key = PublicKey::from_spki_der(&der).map_err(|e| at(format!("publicKey: {e}")))?;
    let id = match &raw.log_id {
        Some(l) => b64(&l.key_id).map_err(|e| at(format!("logId: {e}")))?,
        None => Sha256::digest(&der).to_vec(),
    };
    if id.len() < 4 {
        return Err(at("logId.keyId is too short".into()));
    }
    Ok(LogKey {
        base_url: raw.base_url.clone(),
        id,
        key,
        valid: window(&raw.public_key.valid_for).map_err(at)?,
    })
}

impl TrustedRoot {
    /// Parses a `trusted_root.json`: every key and certificate must read.
    pub fn from_json(text: &[u8]) -> Result<TrustedRoot, String> {
        let raw: RawRoot = serde_json::from_slice(text)
            .map_err(|e| format!("not a Sigstore trusted root: {e}"))?;
        if let Some(t) = &raw.media_type
            && !t.starts_with("application/vnd.dev.sigstore.trustedroot")
        {
            return Err(format!("mediaType {t:?} is not a Sigstore trusted root"));
        }
        let mut cas = Vec::new();
        for (i, ca) in raw.certificate_authorities.iter().enumerate() {
            let at = |e: String| format!("certificateAuthorities[{i}]: {e}");
            let chain = ca
                .cert_chain
                .certificates
                .iter()
                .map(|c| b64(&c.raw_bytes).and_then(|d| Cert::from_der(&d)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(at)?;
            if chain.is_empty() {
                return Err(at("certChain is empty".into()));
            }
            cas.push(CertificateAuthority {
                chain,
                valid: window(&ca.valid_for).map_err(at)?,
            });
        }
        let tlogs = raw
            .tlogs
            .iter()
            .enumerate()
            .map(|(i, l)| log(l, "tlogs", i))
            .collect::<Result<Vec<_>, _>>()?;
        let ctlogs = raw
            .ctlogs
            .iter()
            .enumerate()
            .map(|(i, l)| log(l, "ctlogs", i))
            .collect::<Result<Vec<_>, _>>()?;
        if cas.is_empty() {
            return Err(
                "no certificateAuthorities: nothing to verify keyless certificates with".into(),
            );
        }
        if tlogs.is_empty() {
            return Err("no tlogs: nothing to verify transparency log entries with".into());
        }
        Ok(TrustedRoot { cas, tlogs, ctlogs })
    }

    /// The transparency log whose key has this id.
    pub(crate) fn tlog(&self, id: &[u8]) -> Option<&LogKey> {
        self.tlogs.iter().find(|l| l.id == id)
    }

    /// The certificate transparency log whose key has this id.
    pub(crate) fn ctlog(&self, id: &[u8]) -> Option<&LogKey> {
        self.ctlogs.iter().find(|l| l.id == id)
    }

    /// How many CAs, transparency logs and CT logs it holds.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.cas.len(), self.tlogs.len(), self.ctlogs.len())
    }
}
