//! Notation (Notary Project) signatures, verified as `notation verify`
//! does, offline: the trust store (`x509/ca/<name>/*.pem`,
//! `x509/signingAuthority/<name>/...`) and the trust policy (`version`
//! 1.0: `registryScopes`, `signatureVerification.level` strict,
//! permissive, audit or skip with `override`, `trustStores`,
//! `trustedIdentities`), in notation's own formats; JWS
//! (`application/jose+json`) and COSE (`application/cose`) envelopes.
//!
//! The checks and what each level does with a failure (enforce, or log
//! and pass), as notation has them:
//!
//! | check | strict | permissive | audit |
//! |---|---|---|---|
//! | integrity: the signature verifies, the signed payload names the manifest | enforce | enforce | enforce |
//! | authenticity: the chain ends at a trust store certificate, the signer is a trusted identity | enforce | enforce | log |
//! | authentic timestamp: the certificates are valid now (`notary.x509`, no timestamp countersignature) or were at the authentic signing time (`notary.x509.signingAuthority`) | enforce | log | log |
//! | expiry: the signature's `io.cncf.notary.expiry` has not passed | enforce | log | log |
//!
//! Revocation (OCSP, CRL) needs the network and is not checked; the pull
//! path makes no call outside the upstream registry.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::SystemTime;

use coset::{CborSerializable as _, TaggedCborSerializable as _};

use super::cert::{Cert, ChainError, Hash, SigFormat, b64, b64url, validate_chain};
use super::root::rfc3339;
use crate::cosign::Unverified;
use crate::signatures::{Artifact, ArtifactKind, Role, Subject, Verifier};

/// The payload media type notation signs.
const PAYLOAD_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
const SIGNING_SCHEME: &str = "io.cncf.notary.signingScheme";
const SIGNING_TIME: &str = "io.cncf.notary.signingTime";
const AUTHENTIC_SIGNING_TIME: &str = "io.cncf.notary.authenticSigningTime";
const EXPIRY: &str = "io.cncf.notary.expiry";

/// What a level does with one check's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Enforce,
    Log,
    Skip,
}

/// Notation's verification checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Check {
    Authenticity,
    AuthenticTimestamp,
    Expiry,
    Revocation,
}

impl Check {
    fn parse(s: &str) -> Option<Check> {
        Some(match s {
            "authenticity" => Check::Authenticity,
            "authenticTimestamp" => Check::AuthenticTimestamp,
            "expiry" => Check::Expiry,
            "revocation" => Check::Revocation,
            _ => return None,
        })
    }
}

/// One trust policy of the document.
#[derive(Debug, Clone)]
struct Policy {
    name: String,
    scopes: Vec<String>,
    level: String,
    actions: BTreeMap<Check, Action>,
    /// (`ca` | `signingAuthority`, certificates) of each named store.
    stores: Vec<(String, String, Vec<Cert>)>,
    /// `None`: any identity (`*`); else the DN attribute sets.
    identities: Option<Vec<Vec<(String, String)>>>,
}

impl Policy {
    fn action(&self, c: Check) -> Action {
        self.actions.get(&c).copied().unwrap_or(Action::Skip)
    }
}

/// A trust store and trust policy, loaded and checked.
#[derive(Debug, Clone)]
pub struct NotationTrust {
    policies: Vec<Policy>,
}

fn level_actions(level: &str) -> Option<BTreeMap<Check, Action>> {
    use Action::*;
    let (a, t, e, r) = match level {
        "strict" => (Enforce, Enforce, Enforce, Enforce),
        "permissive" => (Enforce, Log, Log, Log),
        "audit" => (Log, Log, Log, Log),
        "skip" => (Skip, Skip, Skip, Skip),
        _ => return None,
    };
    Some(BTreeMap::from([
        (Check::Authenticity, a),
        (Check::AuthenticTimestamp, t),
        (Check::Expiry, e),
        (Check::Revocation, r),
    ]))
}

/// `C=US, ST=WA, O=acme, CN=signer` as attributes; `S` is `ST`.
fn parse_dn(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not ATTRIBUTE=value"))?;
        let k = match k.trim().to_ascii_uppercase().as_str() {
            "S" => "ST".to_owned(),
            "EMAILADDRESS" => "E".to_owned(),
            k => k.to_owned(),
        };
        out.push((k, v.trim().to_owned()));
    }
    for required in ["C", "ST", "O"] {
        if !out.iter().any(|(k, _)| k == required) {
            return Err(format!(
                "{s:?} lacks {required} (notation requires C, ST and O)"
            ));
        }
    }
    Ok(out)
}

/// Reads the certificates of a trust store directory (PEM or DER files).
fn read_store(dir: &Path) -> Result<Vec<Cert>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut certs = Vec::new();
    let mut names: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in names.iter().filter(|p| p.is_file()).take(1000) {
        let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let found = match std::str::from_utf8(&bytes) {
            Ok(text) if text.contains("-----BEGIN") => Cert::all_from_pem(text),
            _ => Cert::from_der(&bytes).map(|c| vec![c]),
        }
        .map_err(|e| format!("{}: {e}", p.display()))?;
        certs.extend(found);
    }
    if certs.is_empty() {
        return Err(format!("{}: no certificate", dir.display()));
    }
    Ok(certs)
}

impl NotationTrust {
    /// Loads `trust_policy` (notation's `trustpolicy.json`) and the stores
    /// of `trust_store` (the directory holding `x509/`) it names. Errors
    /// name the file and the policy.
    pub fn load(trust_store: &Path, trust_policy: &Path) -> Result<NotationTrust, String> {
        let text =
            std::fs::read(trust_policy).map_err(|e| format!("{}: {e}", trust_policy.display()))?;
        NotationTrust::from_policy(&text, |kind, name| {
            read_store(&trust_store.join("x509").join(kind).join(name))
        })
        .map_err(|e| format!("{}: {e}", trust_policy.display()))
    }

    /// Parses a trust policy document, reading each store it names with
    /// `store(kind, name)` (`kind` is `ca` or `signingAuthority`).
    pub(crate) fn from_policy(
        text: &[u8],
        mut store: impl FnMut(&str, &str) -> Result<Vec<Cert>, String>,
    ) -> Result<NotationTrust, String> {
        let v: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| format!("not a trust policy: {e}"))?;
        if v["version"].as_str() != Some("1.0") {
            return Err(format!("version = {}: only \"1.0\" is known", v["version"]));
        }
        let list = v["trustPolicies"].as_array().ok_or("no trustPolicies")?;
        let mut policies = Vec::new();
        let mut names = HashSet::new();
        let mut scopes_seen = HashSet::new();
        for (i, p) in list.iter().enumerate() {
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            let at = |e: String| format!("trustPolicies[{i}] (name = {name:?}): {e}");
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(at("a name, unique".into()));
            }
            let scopes: Vec<String> = p["registryScopes"]
                .as_array()
                .ok_or_else(|| at("no registryScopes".into()))?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            if scopes.is_empty() || (scopes.len() > 1 && scopes.iter().any(|s| s == "*")) {
                return Err(at("registryScopes: \"*\" alone, or repositories".into()));
            }
            for s in &scopes {
                if !scopes_seen.insert(s.clone()) {
                    return Err(at(format!("registry scope {s:?} is in two policies")));
                }
            }
            let sv = &p["signatureVerification"];
            let level = sv["level"].as_str().unwrap_or_default().to_owned();
            let mut actions = level_actions(&level).ok_or_else(|| {
                at(format!(
                    "signatureVerification.level = {level:?}: strict, permissive, audit or skip"
                ))
            })?;
            if let Some(o) = sv["override"].as_object() {
                if level == "skip" {
                    return Err(at("a skip level takes no override".into()));
                }
                for (k, a) in o {
                    let check = Check::parse(k).ok_or_else(|| {
                        at(format!(
                            "override: {k:?} is not a check that can be overridden"
                        ))
                    })?;
                    let action = match a.as_str() {
                        Some("enforce") => Action::Enforce,
                        Some("log") => Action::Log,
                        Some("skip") => Action::Skip,
                        _ => return Err(at(format!("override.{k} = {a}: enforce, log or skip"))),
                    };
                    if check == Check::Authenticity && action == Action::Skip {
                        return Err(at("authenticity cannot be skipped".into()));
                    }
                    actions.insert(check, action);
                }
            }
            let store_names: Vec<&str> = p["trustStores"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .collect();
            let idents: Vec<&str> = p["trustedIdentities"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .collect();
            let mut stores = Vec::new();
            let identities;
            if level == "skip" {
                if !store_names.is_empty() || !idents.is_empty() {
                    return Err(at(
                        "a skip level takes no trustStores or trustedIdentities".into()
                    ));
                }
                identities = None;
            } else {
                if store_names.is_empty() {
                    return Err(at("no trustStores".into()));
                }
                for s in store_names {
                    let (kind, n) = s
                        .split_once(':')
                        .filter(|(k, _)| matches!(*k, "ca" | "signingAuthority" | "tsa"))
                        .ok_or_else(|| {
                            at(format!(
                                "trustStores: {s:?} is not ca:NAME, signingAuthority:NAME or tsa:NAME"
                            ))
                        })?;
                    if n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.') {
                        return Err(at(format!("trustStores: {s:?}: a bad store name")));
                    }
                    if kind == "tsa" {
                        continue;
                    }
                    stores.push((
                        kind.to_owned(),
                        n.to_owned(),
                        store(kind, n).map_err(|e| at(format!("trust store {s}: {e}")))?,
                    ));
                }
                if idents.is_empty() {
                    return Err(at("no trustedIdentities (\"*\" trusts any)".into()));
                }
                if idents.contains(&"*") {
                    if idents.len() > 1 {
                        return Err(at("trustedIdentities: \"*\" alone".into()));
                    }
                    identities = None;
                } else {
                    let mut sets = Vec::new();
                    for id in idents {
                        let dn = id.strip_prefix("x509.subject:").ok_or_else(|| {
                            at(format!(
                                "trustedIdentities: {id:?} is not \"x509.subject: DN\" or \"*\""
                            ))
                        })?;
                        sets.push(parse_dn(dn).map_err(|e| at(format!("trustedIdentities: {e}")))?);
                    }
                    identities = Some(sets);
                }
            }
            policies.push(Policy {
                name,
                scopes,
                level,
                actions,
                stores,
                identities,
            });
        }
        Ok(NotationTrust { policies })
    }

    /// The policy for an artifact from `scope` (`registry/repository`):
    /// the one naming it, else the `*` one.
    fn policy(&self, scope: &str) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|p| p.scopes.iter().any(|s| s == scope))
            .or_else(|| self.policies.iter().find(|p| p.scopes[0] == "*"))
    }
}

/// A parsed envelope, either format.
struct Envelope {
    alg: (SigFormat, Hash),
    /// Certificates, leaf first.
    chain: Vec<Cert>,
    payload: Vec<u8>,
    signature: Vec<u8>,
    signed: Vec<u8>,
    scheme: String,
    signing_time: Option<SystemTime>,
    authentic_time: Option<SystemTime>,
    expiry: Option<SystemTime>,
}

fn jws_alg(a: &str) -> Result<(SigFormat, Hash), String> {
    Ok(match a {
        "PS256" => (SigFormat::Fixed, Hash::Sha256),
        "PS384" => (SigFormat::Fixed, Hash::Sha384),
        "PS512" => (SigFormat::Fixed, Hash::Sha512),
        "ES256" => (SigFormat::Fixed, Hash::Sha256),
        "ES384" => (SigFormat::Fixed, Hash::Sha384),
        a => return Err(format!("unsupported signature algorithm {a:?}")),
    })
}

fn check_crit(crit: &[String], present: &[&str]) -> Result<(), String> {
    const KNOWN: &[&str] = &[
        SIGNING_SCHEME,
        EXPIRY,
        AUTHENTIC_SIGNING_TIME,
        "io.cncf.notary.verificationPlugin",
        "io.cncf.notary.verificationPluginMinVersion",
    ];
    for c in crit {
        if !KNOWN.contains(&c.as_str()) {
            return Err(format!("unknown critical header {c:?}"));
        }
        if c.starts_with("io.cncf.notary.verificationPlugin") {
            return Err("the signature needs a verification plugin".into());
        }
    }
    for p in present {
        if [SIGNING_SCHEME, EXPIRY, AUTHENTIC_SIGNING_TIME].contains(p)
            && !crit.iter().any(|c| c == p)
        {
            return Err(format!("{p} is not marked critical"));
        }
    }
    Ok(())
}

fn parse_jws(bytes: &[u8]) -> Result<Envelope, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("JWS envelope: {e}"))?;
    let protected_b64 = v["protected"]
        .as_str()
        .ok_or("JWS without a protected header")?;
    let payload_b64 = v["payload"].as_str().ok_or("JWS without a payload")?;
    let h: serde_json::Value = serde_json::from_slice(&b64url(protected_b64)?)
        .map_err(|e| format!("JWS protected header: {e}"))?;
    if h["cty"].as_str() != Some(PAYLOAD_TYPE) {
        return Err(format!(
            "content type {} is not notation's payload",
            h["cty"]
        ));
    }
    let crit: Vec<String> = h["crit"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    let present: Vec<&str> = h
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    check_crit(&crit, &present)?;
    let time = |k: &str| h[k].as_str().map(rfc3339).transpose();
    let chain = v["header"]["x5c"]
        .as_array()
        .ok_or("JWS without an x5c certificate chain")?
        .iter()
        .map(|c| {
            c.as_str()
                .ok_or_else(|| "x5c entry is not a string".to_owned())
                .and_then(b64)
                .and_then(|d| Cert::from_der(&d))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Envelope {
        alg: jws_alg(h["alg"].as_str().unwrap_or_default())?,
        chain,
        payload: b64url(payload_b64)?,
        signature: b64url(v["signature"].as_str().ok_or("JWS without a signature")?)?,
        signed: format!("{protected_b64}.{payload_b64}").into_bytes(),
        scheme: h[SIGNING_SCHEME].as_str().unwrap_or_default().to_owned(),
        signing_time: time(SIGNING_TIME)?,
        authentic_time: time(AUTHENTIC_SIGNING_TIME)?,
        expiry: time(EXPIRY)?,
    })
}

fn cbor_time(v: &coset::cbor::value::Value) -> Option<SystemTime> {
    use coset::cbor::value::Value;
    let secs = match v {
        Value::Tag(1, inner) => match inner.as_ref() {
            Value::Integer(i) => i64::try_from(*i).ok()?,
            Value::Float(f) => *f as i64,
            _ => return None,
        },
        Value::Integer(i) => i64::try_from(*i).ok()?,
        _ => return None,
    };
    Some(super::cert::unix(secs))
}

fn parse_cose(bytes: &[u8]) -> Result<Envelope, String> {
    use coset::cbor::value::Value;
    use coset::iana::{self, EnumI64 as _};
    let s1 = coset::CoseSign1::from_tagged_slice(bytes)
        .or_else(|_| coset::CoseSign1::from_slice(bytes))
        .map_err(|e| format!("COSE envelope: {e:?}"))?;
    let h = &s1.protected.header;
    let alg = match &h.alg {
        Some(coset::RegisteredLabelWithPrivate::Assigned(a)) => match *a {
            iana::Algorithm::PS256 => (SigFormat::Fixed, Hash::Sha256),
            iana::Algorithm::PS384 => (SigFormat::Fixed, Hash::Sha384),
            iana::Algorithm::PS512 => (SigFormat::Fixed, Hash::Sha512),
            iana::Algorithm::ES256 => (SigFormat::Fixed, Hash::Sha256),
            iana::Algorithm::ES384 => (SigFormat::Fixed, Hash::Sha384),
            a => return Err(format!("unsupported COSE algorithm {}", a.to_i64())),
        },
        other => return Err(format!("unsupported COSE algorithm {other:?}")),
    };
    match &h.content_type {
        Some(coset::ContentType::Text(t)) if t == PAYLOAD_TYPE => {}
        other => return Err(format!("content type {other:?} is not notation's payload")),
    }
    let crit: Vec<String> = h
        .crit
        .iter()
        .map(|c| match c {
            coset::RegisteredLabel::Text(t) => t.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    let text = |k: &str| {
        h.rest.iter().find_map(|(l, v)| match l {
            coset::Label::Text(t) if t == k => Some(v.clone()),
            _ => None,
        })
    };
    let present: Vec<&str> = [SIGNING_SCHEME, EXPIRY, AUTHENTIC_SIGNING_TIME, SIGNING_TIME]
        .into_iter()
        .filter(|k| text(k).is_some())
        .collect();
    check_crit(&crit, &present)?;
    let chain_value = s1
        .unprotected
        .rest
        .iter()
        .find_map(|(l, v)| (*l == coset::Label::Int(33)).then(|| v.clone()))
        .ok_or("COSE envelope without an x5chain")?;
    let ders: Vec<Vec<u8>> = match chain_value {
        Value::Bytes(b) => vec![b],
        Value::Array(a) => a
            .into_iter()
            .filter_map(|v| match v {
                Value::Bytes(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => return Err("x5chain is not certificates".into()),
    };
    let chain = ders
        .iter()
        .map(|d| Cert::from_der(d))
        .collect::<Result<Vec<_>, _>>()?;
    let payload = s1
        .payload
        .clone()
        .ok_or("COSE envelope without a payload")?;
    Ok(Envelope {
        alg,
        chain,
        signed: s1.tbs_data(b""),
        signature: s1.signature.clone(),
        payload,
        scheme: match text(SIGNING_SCHEME) {
            Some(Value::Text(t)) => t,
            _ => String::new(),
        },
        signing_time: text(SIGNING_TIME).as_ref().and_then(cbor_time),
        authentic_time: text(AUTHENTIC_SIGNING_TIME).as_ref().and_then(cbor_time),
        expiry: text(EXPIRY).as_ref().and_then(cbor_time),
    })
}

fn time_text(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The Notation verifier: a signature of the manifest that passes the
/// trust policy for its repository.
#[derive(Debug, Clone)]
pub struct Notation {
    trust: std::sync::Arc<NotationTrust>,
}

impl Notation {
    /// A verifier of this trust store and policy.
    pub fn new(trust: std::sync::Arc<NotationTrust>) -> Self {
        Notation { trust }
    }

    fn judge(
        &self,
        subject: &Subject<'_>,
        env: Envelope,
        now: SystemTime,
    ) -> Result<String, Unverified> {
        let untrusted = Unverified::Untrusted;
        // Integrity, always enforced.
        let leaf = env
            .chain
            .first()
            .ok_or_else(|| Unverified::Malformed("an empty certificate chain".into()))?;
        let key = leaf
            .key()
            .map_err(|e| Unverified::Malformed(format!("signing certificate: {e}")))?;
        if key
            .verify(env.alg.0, env.alg.1, &env.signed, &env.signature)
            .is_err()
        {
            return Err(untrusted(
                "the notation signature does not verify with its certificate's key".into(),
            ));
        }
        for pair in env.chain.windows(2) {
            if !pair[0].signed_by(&pair[1]) {
                return Err(untrusted(
                    "the notation certificate chain is out of order or broken".into(),
                ));
            }
        }
        let payload: serde_json::Value = serde_json::from_slice(&env.payload)
            .map_err(|e| Unverified::Malformed(format!("notation payload: {e}")))?;
        let target = &payload["targetArtifact"];
        let named = target["digest"].as_str().unwrap_or_default();
        if named != subject.digest.as_str() {
            return Err(Unverified::OtherDigest(named.chars().take(80).collect()));
        }
        if target["size"].as_u64() != Some(subject.size)
            || target["mediaType"].as_str() != Some(subject.media_type)
        {
            return Err(untrusted(
                "the notation payload names the digest with another size or media type".into(),
            ));
        }
        let policy = self.trust.policy(subject.scope).ok_or_else(|| {
            untrusted(format!(
                "no notation trust policy applies to {}",
                subject.scope
            ))
        })?;
        // Under `audit` or `skip` a rogue CA's signature would pass: such a
        // level says nothing about who signed, so it never meets a rule's
        // signature requirement (a rule's `mode = "audit"` is how to serve
        // and log instead).
        if policy.action(Check::Authenticity) != Action::Enforce {
            return Err(untrusted(format!(
                "notation trust policy {:?} has level {:?}, which does not establish who signed",
                policy.name, policy.level
            )));
        }
        let mut logged = Vec::new();
        let mut fail = |check: Check, why: String| -> Result<(), Unverified> {
            match policy.action(check) {
                Action::Enforce => Err(Unverified::Untrusted(why)),
                Action::Log => {
                    logged.push(why);
                    Ok(())
                }
                Action::Skip => Ok(()),
            }
        };
        let kind = match env.scheme.as_str() {
            "notary.x509" => "ca",
            "notary.x509.signingAuthority" => "signingAuthority",
            s => {
                return Err(Unverified::Malformed(format!("signing scheme {s:?}")));
            }
        };
        let signed_at = if kind == "ca" {
            env.signing_time
        } else {
            env.authentic_time
        }
        .unwrap_or(now);
        // Authenticity: the chain ends at a certificate of the policy's stores.
        if policy.action(Check::Authenticity) != Action::Skip {
            let top = env.chain.last().expect("non-empty");
            let anchored = policy
                .stores
                .iter()
                .filter(|(k, _, _)| k == kind)
                .any(|(_, _, certs)| certs.iter().any(|c| c.der == top.der));
            if !anchored {
                fail(
                    Check::Authenticity,
                    format!(
                        "the notation certificate chain does not end at a certificate of trust store {}",
                        policy
                            .stores
                            .iter()
                            .map(|(k, n, _)| format!("{k}:{n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )?;
            } else {
                // The chain's structure, at a time when its certificates
                // were valid: time is the authentic timestamp's check.
                let (inter, root) = env.chain.split_at(env.chain.len() - 1);
                let mut r = validate_chain(leaf, inter, root, signed_at, false);
                if r == Err(ChainError::Expired) {
                    let t = env
                        .chain
                        .iter()
                        .map(Cert::not_before)
                        .max()
                        .unwrap_or(signed_at);
                    r = validate_chain(leaf, inter, root, t, false);
                }
                if let Err(e) = r {
                    fail(
                        Check::Authenticity,
                        format!("the notation certificate chain is invalid: {e:?}"),
                    )?;
                }
            }
            let attrs = leaf.subject_attributes();
            let trusted = match &policy.identities {
                None => true,
                Some(sets) => sets.iter().any(|set| set.iter().all(|a| attrs.contains(a))),
            };
            if !trusted {
                fail(
                    Check::Authenticity,
                    format!(
                        "notation signer {} is not a trusted identity of trust policy {:?}",
                        leaf.subject(),
                        policy.name
                    ),
                )?;
            }
        }
        // Authentic timestamp.
        let (when, at) = if kind == "ca" {
            ("now", now)
        } else {
            ("at the authentic signing time", signed_at)
        };
        if let Some(c) = env.chain.iter().find(|c| !c.valid_at(at)) {
            fail(
                Check::AuthenticTimestamp,
                format!(
                    "the notation certificate {} (valid {} to {}) is not valid {when}",
                    c.subject(),
                    time_text(c.not_before()),
                    time_text(c.not_after())
                ),
            )?;
        }
        // Expiry.
        if let Some(exp) = env.expiry
            && now > exp
        {
            fail(
                Check::Expiry,
                format!("the notation signature expired at {}", time_text(exp)),
            )?;
        }
        let mut who = format!(
            "notation {} (trust policy {:?}, {})",
            leaf.subject(),
            policy.name,
            policy.level
        );
        if !logged.is_empty() {
            who.push_str(&format!("; logged: {}", logged.join("; ")));
        }
        Ok(who)
    }
}

const SIGNATURE: &Role = &Role::Signature;

impl Verifier for Notation {
    fn role(&self) -> &Role {
        SIGNATURE
    }

    fn wants(&self) -> String {
        let names: Vec<&str> = self
            .trust
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        format!(
            "a notation signature trusted by policy {}",
            names.join(", ")
        )
    }

    fn reads(&self) -> &[ArtifactKind] {
        &[ArtifactKind::Jws, ArtifactKind::Cose]
    }

    fn verify(
        &self,
        subject: &Subject<'_>,
        artifact: &Artifact,
        now: SystemTime,
    ) -> Option<Result<String, Unverified>> {
        let env = match artifact.kind {
            ArtifactKind::Jws => parse_jws(&artifact.bytes),
            ArtifactKind::Cose => parse_cose(&artifact.bytes),
            _ => return None,
        };
        Some(match env {
            Ok(env) => self.judge(subject, env, now),
            Err(e) => Err(Unverified::Malformed(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(p: serde_json::Value) -> Result<NotationTrust, String> {
        let doc = serde_json::json!({"version": "1.0", "trustPolicies": [p]});
        NotationTrust::from_policy(doc.to_string().as_bytes(), |_, _| Ok(Vec::new()))
    }

    fn base(level: &str) -> serde_json::Value {
        serde_json::json!({
            "name": "p",
            "registryScopes": ["r.example/app"],
            "signatureVerification": {"level": level},
            "trustStores": ["ca:acme"],
            "trustedIdentities": ["x509.subject: C=US, ST=WA, O=acme"]
        })
    }

    #[test]
    fn levels_and_overrides_decide_what_is_enforced() {
        let strict = policy(base("strict")).unwrap();
        let p = &strict.policies[0];
        assert_eq!(p.action(Check::AuthenticTimestamp), Action::Enforce);
        let permissive = policy(base("permissive")).unwrap();
        let p = &permissive.policies[0];
        assert_eq!(
            (p.action(Check::Authenticity), p.action(Check::Expiry)),
            (Action::Enforce, Action::Log)
        );
        let audit = policy(base("audit")).unwrap();
        assert_eq!(audit.policies[0].action(Check::Authenticity), Action::Log);
        let mut o = base("strict");
        o["signatureVerification"]["override"] = serde_json::json!({"expiry": "log"});
        let t = policy(o).unwrap();
        assert_eq!(t.policies[0].action(Check::Expiry), Action::Log);
        assert_eq!(
            t.policies[0].action(Check::AuthenticTimestamp),
            Action::Enforce
        );
        let mut o = base("strict");
        o["signatureVerification"]["override"] = serde_json::json!({"authenticity": "skip"});
        assert!(
            policy(o)
                .unwrap_err()
                .contains("authenticity cannot be skipped")
        );
        let mut o = base("strict");
        o["signatureVerification"]["override"] = serde_json::json!({"integrity": "log"});
        assert!(
            policy(o)
                .unwrap_err()
                .contains("\"integrity\" is not a check")
        );
    }

    #[test]
    fn scopes_pick_a_policy_and_bad_documents_are_refused() {
        let mut global = base("audit");
        global["name"] = "g".into();
        global["registryScopes"] = serde_json::json!(["*"]);
        let doc = serde_json::json!({"version": "1.0", "trustPolicies": [base("strict"), global]});
        let t =
            NotationTrust::from_policy(doc.to_string().as_bytes(), |_, _| Ok(Vec::new())).unwrap();
        assert_eq!(t.policy("r.example/app").unwrap().name, "p");
        assert_eq!(t.policy("r.example/other").unwrap().name, "g");
        for (edit, says) in [
            (
                serde_json::json!({"registryScopes": ["*", "r/x"]}),
                "\"*\" alone",
            ),
            (
                serde_json::json!({"trustStores": ["acme"]}),
                "is not ca:NAME",
            ),
            (
                serde_json::json!({"trustStores": ["ca:../x"]}),
                "a bad store name",
            ),
            (
                serde_json::json!({"trustedIdentities": []}),
                "no trustedIdentities",
            ),
            (
                serde_json::json!({"trustedIdentities": ["*", "x509.subject: C=US, ST=WA, O=a"]}),
                "\"*\" alone",
            ),
            (
                serde_json::json!({"trustedIdentities": ["CN=x"]}),
                "is not \"x509.subject: DN\"",
            ),
            (
                serde_json::json!({"trustedIdentities": ["x509.subject: CN=x"]}),
                "lacks C",
            ),
        ] {
            let mut p = base("strict");
            for (k, v) in edit.as_object().unwrap() {
                p[k] = v.clone();
            }
            let e = policy(p).unwrap_err();
            assert!(e.contains(says), "{edit}: {e}");
        }
        let mut skip = base("skip");
        assert!(
            policy(skip.clone())
                .unwrap_err()
                .contains("a skip level takes no trustStores")
        );
        skip.as_object_mut().unwrap().remove("trustStores");
        skip.as_object_mut().unwrap().remove("trustedIdentities");
        policy(skip).unwrap();
        let dup =
            serde_json::json!({"version": "1.0", "trustPolicies": [base("strict"), base("audit")]});
        let e = NotationTrust::from_policy(dup.to_string().as_bytes(), |_, _| Ok(Vec::new()))
            .unwrap_err();
        assert!(e.contains("a name, unique"), "{e}");
    }

    #[test]
    fn distinguished_names_parse_as_notation_writes_them() {
        assert_eq!(
            parse_dn("C=US, S=WA, O=acme, CN=release").unwrap(),
            [
                ("C".to_owned(), "US".to_owned()),
                ("ST".to_owned(), "WA".to_owned()),
                ("O".to_owned(), "acme".to_owned()),
                ("CN".to_owned(), "release".to_owned())
            ]
        );
        assert!(parse_dn("C=US, ST=WA").unwrap_err().contains("lacks O"));
        assert!(parse_dn("nonsense").is_err());
    }
}
