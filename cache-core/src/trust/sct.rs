//! Signed certificate timestamps embedded in a certificate (RFC 6962,
//! 3.3): a certificate transparency log's promise that it logged the
//! precertificate. Fulcio embeds one in each certificate it issues.

use sha2::{Digest as _, Sha256};
use x509_cert::der::asn1::OctetString;
use x509_cert::der::{Decode, Encode};

use super::cert::{Cert, Hash, SigFormat};
use super::root::TrustedRoot;

/// The embedded SCT list extension.
pub(crate) const SCT_EXTENSION: &str = "1.3.6.1.4.1.11129.2.4.2";

struct Sct<'a> {
    log_id: &'a [u8],
    timestamp: u64,
    extensions: &'a [u8],
    hash: u8,
    signature: &'a [u8],
}

/// A reader of TLS-encoded structures.
struct Tls<'a>(&'a [u8]);

impl<'a> Tls<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated SCT".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | *b as u64))
    }
    fn vec(&mut self, len_bytes: usize) -> Result<&'a [u8], String> {
        let n = self.uint(len_bytes)? as usize;
        self.take(n)
    }
}

fn parse_list(ext: &[u8]) -> Result<Vec<Sct<'_>>, String> {
    let mut outer = Tls(ext);
    let mut list = Tls(outer.vec(2)?);
    let mut out = Vec::new();
    while !list.0.is_empty() {
        let mut s = Tls(list.vec(2)?);
        if s.uint(1)? != 0 {
            continue; // only v1 is defined
        }
        out.push(Sct {
            log_id: s.take(32)?,
            timestamp: s.uint(8)?,
            extensions: s.vec(2)?,
            hash: s.uint(1)? as u8,
            signature: {
                let _sig_alg = s.uint(1)?;
                s.vec(2)?
            },
        });
    }
    Ok(out)
}

/// The precertificate's TBS: the certificate's without the SCT extension.
fn precert_tbs(leaf: &Cert) -> Result<Vec<u8>, String> {
    let mut tbs = leaf.cert.tbs_certificate.clone();
    if let Some(exts) = &mut tbs.extensions {
        exts.retain(|e| e.extn_id.to_string() != SCT_EXTENSION);
    }
    tbs.to_der()
        .map_err(|e| format!("re-encoding the certificate: {e}"))
}

/// Whether `leaf` embeds SCTs.
pub(crate) fn has_scts(leaf: &Cert) -> bool {
    leaf.extension(SCT_EXTENSION).is_some()
}

/// Checks that one of the SCTs embedded in `leaf` (issued by `issuer`)
/// verifies with a CT log key of the trust root. Returns the log's URL.
pub(crate) fn verify_embedded(
    leaf: &Cert,
    issuers: &[&Cert],
    root: &TrustedRoot,
) -> Result<String, String> {
    let raw = leaf
        .extension(SCT_EXTENSION)
        .ok_or("the certificate has no SCT")?;
    let list = OctetString::from_der(raw).map_err(|e| format!("SCT extension: {e}"))?;
    let scts = parse_list(list.as_bytes())?;
    let tbs = precert_tbs(leaf)?;
    let mut why = "the certificate's SCT list is empty".to_owned();
    for sct in &scts {
        let Some(log) = root.ctlog(sct.log_id) else {
            why = format!(
                "the certificate's SCT is from an unknown CT log ({})",
                hex::encode(sct.log_id)
            );
            continue;
        };
        let hash = match sct.hash {
            4 => Hash::Sha256,
            5 => Hash::Sha384,
            6 => Hash::Sha512,
            _ => continue,
        };
        for issuer in issuers {
            let issuer_key_hash = Sha256::digest(issuer.spki_der());
            let mut signed = Vec::with_capacity(tbs.len() + 64);
            signed.extend_from_slice(&[0, 0]); // v1, certificate_timestamp
            signed.extend_from_slice(&sct.timestamp.to_be_bytes());
            signed.extend_from_slice(&[0, 1]); // precert_entry
            signed.extend_from_slice(&issuer_key_hash);
            signed.extend_from_slice(&(tbs.len() as u32).to_be_bytes()[1..]);
            signed.extend_from_slice(&tbs);
            signed.extend_from_slice(&(sct.extensions.len() as u16).to_be_bytes());
            signed.extend_from_slice(sct.extensions);
            if log
                .key
                .verify(SigFormat::Der, hash, &signed, sct.signature)
                .is_ok()
            {
                return Ok(log.base_url.clone());
            }
        }
        why = format!(
            "the certificate's SCT does not verify with the key of {}",
            log.base_url
        );
    }
    Err(why)
}
