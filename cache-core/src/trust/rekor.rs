//! Transparency log entries (Rekor): the signed entry timestamp (SET) that
//! proves an entry's integrated time, the inclusion proof and its signed
//! checkpoint, and what an entry's body says was logged.

use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use super::cert::{Cert, SigFormat, b64, unix};
use super::root::{LogKey, TrustedRoot};

/// A Merkle inclusion proof with the checkpoint it leads to.
#[derive(Debug, Clone)]
pub(crate) struct InclusionProof {
    pub(crate) log_index: u64,
    pub(crate) tree_size: u64,
    pub(crate) root_hash: Vec<u8>,
    pub(crate) hashes: Vec<Vec<u8>>,
    /// The signed note of the log's tree head.
    pub(crate) checkpoint: Option<String>,
}

/// A transparency log entry as a signature carries it.
#[derive(Debug, Clone)]
pub(crate) struct TlogEntry {
    /// The canonicalised body, as logged.
    pub(crate) body: Vec<u8>,
    pub(crate) integrated_time: i64,
    pub(crate) log_index: i64,
    pub(crate) log_id: Vec<u8>,
    /// The signed entry timestamp (the log's promise of inclusion).
    pub(crate) set: Option<Vec<u8>>,
    pub(crate) proof: Option<InclusionProof>,
}

/// What an entry's body says was logged.
#[derive(Debug, Clone, Default)]
pub(crate) struct Logged {
    /// Signatures, decoded.
    pub(crate) signatures: Vec<Vec<u8>>,
    /// The signer's certificates or keys (PEM text).
    pub(crate) verifiers: Vec<String>,
    /// The hash (hex) of what was signed: the artifact (hashedrekord) or
    /// the DSSE payload.
    pub(crate) hash: Option<String>,
}

impl TlogEntry {
    /// Reads cosign's `dev.sigstore.cosign/bundle` annotation:
    /// `{"SignedEntryTimestamp": ..., "Payload": {"body", "integratedTime", "logIndex", "logID"}}`.
    pub(crate) fn from_cosign_annotation(text: &str) -> Result<TlogEntry, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("log entry annotation: {e}"))?;
        let p = &v["Payload"];
        let body = b64(p["body"].as_str().ok_or("log entry without a body")?)?;
        let log_id = hex::decode(p["logID"].as_str().ok_or("log entry without a logID")?)
            .map_err(|e| format!("logID: {e}"))?;
        Ok(TlogEntry {
            body,
            integrated_time: p["integratedTime"]
                .as_i64()
                .ok_or("log entry without an integratedTime")?,
            log_index: p["logIndex"]
                .as_i64()
                .ok_or("log entry without a logIndex")?,
            log_id,
            set: v["SignedEntryTimestamp"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(b64)
                .transpose()?,
            proof: None,
        })
    }

    /// Reads a bundle's `tlogEntries[i]`.
    pub(crate) fn from_bundle(v: &serde_json::Value) -> Result<TlogEntry, String> {
        let int = |x: &serde_json::Value| -> Option<i64> {
            x.as_i64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        };
        let proof = match v.get("inclusionProof") {
            Some(p) if p.is_object() => Some(InclusionProof {
                log_index: int(&p["logIndex"]).ok_or("inclusionProof.logIndex")? as u64,
                tree_size: int(&p["treeSize"]).ok_or("inclusionProof.treeSize")? as u64,
                root_hash: b64(p["rootHash"].as_str().ok_or("inclusionProof.rootHash")?)?,
                hashes: p["hashes"]
                    .as_array()
                    .map(|h| h.iter().filter_map(|x| x.as_str().map(b64)).collect())
                    .transpose()?
                    .unwrap_or_default(),
                checkpoint: p["checkpoint"]["envelope"].as_str().map(str::to_owned),
            }),
            _ => None,
        };
        Ok(TlogEntry {
            body: b64(v["canonicalizedBody"]
                .as_str()
                .ok_or("log entry without a canonicalizedBody")?)?,
            integrated_time: int(&v["integratedTime"]).ok_or("log entry without integratedTime")?,
            log_index: int(&v["logIndex"]).ok_or("log entry without a logIndex")?,
            log_id: b64(v["logId"]["keyId"]
                .as_str()
                .ok_or("log entry without a logId")?)?,
            set: v["inclusionPromise"]["signedEntryTimestamp"]
                .as_str()
                .map(b64)
                .transpose()?,
            proof,
        })
    }

    pub(crate) fn integrated(&self) -> SystemTime {
        unix(self.integrated_time)
    }

    /// Checks the entry against the trust root: the log's key is known and
    /// was valid at the integrated time, an inclusion proof (where there is
    /// one) leads to a checkpoint the log signed, and the SET signs the
    /// entry with its integrated time (required: nothing else proves the
    /// time). Returns the integrated time.
    pub(crate) fn verify(&self, root: &TrustedRoot) -> Result<SystemTime, String> {
        let id = hex::encode(&self.log_id);
        let log = root.tlog(&self.log_id).ok_or_else(|| {
            format!("the log entry is signed by an unknown log key (log id {id})")
        })?;
        let t = self.integrated();
        if !log.valid.contains(t) {
            return Err(format!(
                "the log key {} was not valid at the entry's integrated time",
                log.base_url
            ));
        }
        // The inclusion proof shows the entry is in the log; only the
        // signed entry timestamp signs *when* it was integrated (the time
        // is in neither the entry body nor the checkpoint). Without a SET
        // the integrated time is the upstream's word, and a signature made
        // after its certificate expired would pass: refused, as
        // sigstore-go does without another signed timestamp.
        if let Some(proof) = &self.proof {
            verify_inclusion(&self.body, proof, log)?;
        }
        let Some(set) = &self.set else {
            return Err(
                "the log entry's integrated time is not signed (no signed entry timestamp): \
                 an inclusion proof shows it was logged, not when"
                    .into(),
            );
        };
        let canonical = format!(
            r#"{{"body":"{}","integratedTime":{},"logID":"{id}","logIndex":{}}}"#,
            base64_std(&self.body),
            self.integrated_time,
            self.log_index
        );
        log.key
            .verify(
                SigFormat::Der,
                log.key.default_hash(),
                canonical.as_bytes(),
                set,
            )
            .map_err(|_| {
                format!(
                    "the log entry's signed entry timestamp does not verify with the key of {}",
                    log.base_url
                )
            })?;
        Ok(t)
    }

    /// What the body says was logged.
    pub(crate) fn logged(&self) -> Result<Logged, String> {
        let v: serde_json::Value =
            serde_json::from_slice(&self.body).map_err(|e| format!("log entry body: {e}"))?;
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        let spec = &v["spec"];
        let mut out = Logged::default();
        let pem = |s: &str| b64(s).map(|b| String::from_utf8_lossy(&b).into_owned());
        match kind.as_str() {
            "hashedrekord" => {
                if let Some(s) = spec["signature"]["content"].as_str() {
                    out.signatures.push(b64(s)?);
                }
                if let Some(k) = spec["signature"]["publicKey"]["content"].as_str() {
                    out.verifiers.push(pem(k)?);
                }
                out.hash = spec["data"]["hash"]["value"].as_str().map(str::to_owned);
            }
            "dsse" => {
                for s in spec["signatures"].as_array().into_iter().flatten() {
                    if let Some(sig) = s["signature"].as_str() {
                        out.signatures.push(b64(sig)?);
                    }
                    if let Some(k) = s["verifier"].as_str() {
                        out.verifiers.push(pem(k)?);
                    }
                }
                out.hash = spec["payloadHash"]["value"].as_str().map(str::to_owned);
            }
            "intoto" => {
                let env = &spec["content"]["envelope"];
                for s in env["signatures"].as_array().into_iter().flatten() {
                    // intoto 0.0.2 double-encodes: base64 of the base64 signature.
                    if let Some(sig) = s["sig"].as_str() {
                        let once = b64(sig)?;
                        let twice = std::str::from_utf8(&once)
                            .ok()
                            .and_then(|t| b64(t).ok())
                            .unwrap_or(once);
                        out.signatures.push(twice);
                    }
                    if let Some(k) = s["publicKey"].as_str() {
                        out.verifiers.push(pem(k)?);
                    }
                }
                out.hash = spec["content"]["payloadHash"]["value"]
                    .as_str()
                    .map(str::to_owned);
            }
            other => return Err(format!("log entry of unsupported kind {other:?}")),
        }
        Ok(out)
    }

    /// Checks that the entry logged this signature, by this certificate,
    /// over content hashing (SHA-256) to `hash`.
    pub(crate) fn covers(&self, signature: &[u8], cert: &Cert, hash: &[u8]) -> Result<(), String> {
        let logged = self.logged()?;
        if !logged.signatures.iter().any(|s| s == signature) {
            return Err("the log entry is for another signature".into());
        }
        let by_cert = logged.verifiers.iter().any(|pem| {
            Cert::all_from_pem(pem)
                .map(|cs| cs.iter().any(|c| c.der == cert.der))
                .unwrap_or(false)
        });
        if !by_cert {
            return Err("the log entry names another certificate".into());
        }
        if logged.hash.as_deref() != Some(hex::encode(hash).as_str()) {
            return Err("the log entry is for other content".into());
        }
        Ok(())
    }
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn node(l: &[u8], r: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().to_vec()
}

/// The root an inclusion proof leads to (RFC 9162, 2.1.3.2).
pub(crate) fn root_from_proof(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[Vec<u8>],
) -> Option<Vec<u8>> {
    if index >= size {
        return None;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = leaf.to_vec();
    for p in proof {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

/// The leaf hash of a body: SHA-256(0x00 || body).
pub(crate) fn leaf_hash(body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().to_vec()
}

fn verify_inclusion(body: &[u8], proof: &InclusionProof, log: &LogKey) -> Result<(), String> {
    let root = root_from_proof(
        proof.log_index,
        proof.tree_size,
        &leaf_hash(body),
        &proof.hashes,
    )
    .ok_or("the inclusion proof is malformed")?;
    if root != proof.root_hash {
        return Err("the inclusion proof does not lead to its root hash".into());
    }
    let note = proof
        .checkpoint
        .as_deref()
        .ok_or("the inclusion proof has no checkpoint")?;
    let (size, hash) = verify_checkpoint(note, log)?;
    if size != proof.tree_size || hash != proof.root_hash {
        return Err("the checkpoint is for another tree than the inclusion proof".into());
    }
    Ok(())
}

/// Verifies a signed note (a log checkpoint) with the log's key: returns
/// the tree size and root hash it signs.
pub(crate) fn verify_checkpoint(note: &str, log: &LogKey) -> Result<(u64, Vec<u8>), String> {
    let (text, sigs) = note
        .split_once("\n\n")
        .ok_or("the checkpoint is not a signed note")?;
    let text = format!("{text}\n");
    let signed = sigs
        .lines()
        .filter_map(|l| l.strip_prefix("\u{2014} "))
        .any(|l| {
            let Some((_, sig)) = l.rsplit_once(' ') else {
                return false;
            };
            let Ok(raw) = b64(sig) else { return false };
            raw.len() > 4
                && raw[..4] == log.id[..4]
                && log
                    .key
                    .verify(
                        SigFormat::Der,
                        log.key.default_hash(),
                        text.as_bytes(),
                        &raw[4..],
                    )
                    .is_ok()
        });
    if !signed {
        return Err(format!(
            "the checkpoint is not signed by the key of {}",
            log.base_url
        ));
    }
    let mut lines = text.lines();
    let _origin = lines.next();
    let size = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or("the checkpoint has no tree size")?;
    let hash = lines
        .next()
        .and_then(|l| b64(l).ok())
        .ok_or("the checkpoint has no root hash")?;
    Ok((size, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree of RFC 9162's examples, leaves d0..d6: every inclusion
    /// proof of every size leads to the root of that size.
    #[test]
    fn inclusion_proofs_lead_to_the_root_of_every_tree_size() {
        use crate::testing::trust::{inclusion_path as path, merkle_root as mth};
        let leaves: Vec<Vec<u8>> = (0..7u8).map(|i| leaf_hash(&[i])).collect();
        for n in 1..=leaves.len() {
            let root = mth(&leaves[..n]);
            for m in 0..n {
                let p = path(m, &leaves[..n]);
                assert_eq!(
                    root_from_proof(m as u64, n as u64, &leaves[m], &p),
                    Some(root.clone()),
                    "leaf {m} of {n}"
                );
                assert_ne!(
                    root_from_proof(m as u64, n as u64, &leaf_hash(b"other"), &p),
                    Some(root.clone())
                );
            }
        }
        assert_eq!(root_from_proof(3, 3, &leaves[0], &[]), None);
    }
}
