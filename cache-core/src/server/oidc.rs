//! Workload identities: JWTs from OIDC issuers (Kubernetes service-account
//! tokens, CI tokens such as GitHub Actions'), verified against the
//! issuer's public keys (a JWKS) without any shared secret.
//!
//! A token is accepted when its header names an asymmetric algorithm the
//! key allows (never `none` or an HMAC one, so a token "signed" with a
//! public key as HMAC secret gets nowhere), its signature verifies with a
//! key of the provider its `iss` names, its `aud` holds one of the
//! provider's audiences, and its `exp` (required), `nbf` and `iat` hold
//! within the allowed clock skew. It is at most [`MAX_TOKEN_BYTES`] long.
//! The principal is `<provider>:<value of the mapped claim>` (`sub` by
//! default). Keys come from a JWKS file (re-read on reload) and, if
//! configured, a JWKS URL fetched in the background through a
//! [`JwksFetch`] (the server's HTTP client, which applies the address
//! policy). Verified tokens are remembered until they expire, in a bounded
//! map per provider that a key change clears.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest as _, Sha256};

use super::access::Principal;

/// The longest JWT accepted, in bytes (GitHub's are about 1.5 KiB,
/// Kubernetes' about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The largest JWKS document read, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys taken from one JWKS document at most.
const MAX_KEYS: usize = 64;
/// Verified tokens remembered per provider at most.
const MAX_REMEMBERED: usize = 10_000;
/// The longest claim value that becomes a principal's name.
const MAX_SUBJECT: usize = 256;

/// Fetches the JWKS document of an OIDC provider that names a
/// `jwks_url`. `cache-upstream`'s `JwksClient` is the implementation, with
/// the address policy the upstream client applies to redirects.
#[async_trait]
pub trait JwksFetch: Send + Sync + fmt::Debug {
    /// `GET url`: the body, at most `max_bytes` long (longer is an error).
    /// `internal_hosts` are the hosts it may reach on loopback, private or
    /// link-local addresses; any other host, the URL's and every
    /// redirect's, must resolve to public addresses. An error is a
    /// sentence naming the URL.
    async fn fetch(
        &self,
        url: &str,
        internal_hosts: &[String],
        max_bytes: usize,
    ) -> Result<bytes::Bytes, String>;
}

/// One `[[auth.oidc]]` provider, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// Its name: principals are `<name>:<subject>`, grants' claim matches
    /// name it.
    pub name: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Accepted `aud` values (a token must carry one).
    pub audiences: Vec<String>,
    /// The claim whose value names the principal (default `sub`).
    pub principal_claim: String,
    /// The JWKS file's path and text, read when the configuration was.
    pub jwks_file: Option<(std::path::PathBuf, String)>,
    /// A JWKS URL fetched in the background.
    pub jwks_url: Option<String>,
    /// Hosts the URL (and its redirects) may reach on internal addresses.
    pub jwks_hosts: Vec<String>,
    /// How often the URL is fetched (default 10 minutes).
    pub jwks_refresh: Duration,
}

/// A verifying key and the algorithms it may be used with.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The keys of one JWKS document.
#[derive(Clone, Default)]
pub(crate) struct KeySet(Vec<VerifyKey>);

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self
            .0
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect();
        f.debug_tuple("KeySet").field(&kids).finish()
    }
}

impl KeySet {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    fn ids(&self) -> Vec<Option<String>> {
        self.0.iter().map(|k| k.kid.clone()).collect()
    }
}

/// The algorithms a JWK may verify: the one it names, or those of its
/// key type; never an HMAC one, and nothing for a key not for signatures.
fn algorithms_of(jwk: &Jwk) -> Vec<Algorithm> {
    use jsonwebtoken::jwk::PublicKeyUse;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Vec::new();
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => Vec::new(),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => Vec::new(),
    };
    let named = jwk.common.key_algorithm.and_then(|a| match a {
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::ES384 => Some(Algorithm::ES384),
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::RS384 => Some(Algorithm::RS384),
        KeyAlgorithm::RS512 => Some(Algorithm::RS512),
        KeyAlgorithm::PS256 => Some(Algorithm::PS256),
        KeyAlgorithm::PS384 => Some(Algorithm::PS384),
        KeyAlgorithm::PS512 => Some(Algorithm::PS512),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    });
    match (jwk.common.key_algorithm, named) {
        (None, _) => by_type,
        // It names an algorithm: that one, if it fits the key.
        (Some(_), Some(a)) if by_type.contains(&a) => vec![a],
        (Some(_), _) => Vec::new(),
    }
}

/// Parses a JWKS document (`{"keys":[...]}`): the usable signature keys
/// in it (keys of other types are skipped). An error says what is wrong;
/// a document with no usable key is one.
pub(crate) fn parse_jwks(text: &[u8]) -> Result<KeySet, String> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(keys) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err("not a JWKS document: no \"keys\" array".into());
    };
    let mut out = Vec::new();
    for k in keys.iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
            continue;
        };
        let algorithms = algorithms_of(&jwk);
        if algorithms.is_empty() {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        });
    }
    if out.is_empty() {
        return Err("no usable signature key (RSA, EC P-256/P-384 or Ed25519)".into());
    }
    Ok(KeySet(out))
}

/// Why a JWT was refused (for logs; clients get a plain `401`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) String);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The unverified claims of a JWT, to see which provider it claims to be
/// from; `None` for anything that is not a JWT.
pub(crate) fn peek_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

/// Whether `token` looks like a JWT (three base64url parts, a JSON header).
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN_BYTES
        && token.split('.').count() == 3
        && jsonwebtoken::decode_header(token).is_ok()
}

/// A provider at run time: its configuration, its keys, what it verified.
pub(crate) struct Provider {
    pub(crate) cfg: OidcConfig,
    file_keys: KeySet,
    url_keys: ArcSwap<KeySet>,
    /// Claims grants match, kept in the principal.
    claims: Vec<String>,
    skew: Duration,
    verified: Mutex<HashMap<[u8; 32], (Principal, u64)>>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.cfg.name)
            .field("issuer", &self.cfg.issuer)
            .field("file_keys", &self.file_keys)
            .field("url_keys", &self.url_keys.load())
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// `cfg`'s provider; `claims` are those grants match.
    pub(crate) fn new(cfg: OidcConfig, claims: Vec<String>, skew: Duration) -> Self {
        // Validated when the configuration was read.
        let file_keys = cfg
            .jwks_file
            .as_ref()
            .and_then(|(_, text)| parse_jwks(text.as_bytes()).ok())
            .unwrap_or_default();
        Provider {
            cfg,
            file_keys,
            url_keys: ArcSwap::from_pointee(KeySet::default()),
            claims,
            skew,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the URL's keys of `old` (the same provider before a reload),
    /// so there is no gap until the first fetch.
    pub(crate) fn take_url_keys(&self, old: &Provider) {
        if old.cfg.jwks_url == self.cfg.jwks_url {
            self.url_keys.store(old.url_keys.load_full());
        }
    }

    fn set_url_keys(&self, keys: KeySet) {
        let changed = keys.ids() != self.url_keys.load().ids();
        self.url_keys.store(Arc::new(keys));
        if changed {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    /// Verifies `token`, which names this provider's issuer.
    pub(crate) fn verify(&self, token: &str) -> Result<Principal, Refused> {
        let refuse = |why: &str| Refused(format!("{} token: {why}", self.cfg.name));
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refuse("too long"));
        }
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_secs();
        {
            let m = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((p, until)) = m.get(&fingerprint)
                && now <= *until
            {
                return Ok(p.clone());
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| refuse(&e.to_string()))?;
        let url_keys = self.url_keys.load_full();
        let candidates: Vec<&VerifyKey> = self
            .file_keys
            .0
            .iter()
            .chain(url_keys.0.iter())
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .filter(|k| k.algorithms.contains(&header.alg))
            .collect();
        if candidates.is_empty() {
            return Err(refuse(&format!(
                "no key for kid {:?} and algorithm {:?}",
                header.kid, header.alg
            )));
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.skew.as_secs();
        v.validate_nbf = true;
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&self.cfg.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = String::from("no key verifies it");
        for k in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, &k.key, &v,
            ) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims
                        .get("iat")
                        .and_then(|i| i.as_u64())
                        .is_some_and(|iat| iat > now + self.skew.as_secs())
                    {
                        return Err(refuse("issued in the future"));
                    }
                    let exp = claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(now);
                    let subject = match claims.get(&self.cfg.principal_claim) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(serde_json::Value::Number(n)) => n.to_string(),
                        _ => {
                            return Err(refuse(&format!(
                                "no string claim {:?} to name the principal",
                                self.cfg.principal_claim
                            )));
                        }
                    };
                    if subject.is_empty() || subject.len() > MAX_SUBJECT {
                        return Err(refuse("the principal's claim is empty or too long"));
                    }
                    let kept: BTreeMap<String, serde_json::Value> = self
                        .claims
                        .iter()
                        .filter_map(|c| claims.get(c).map(|v| (c.clone(), v.clone())))
                        .collect();
                    let p = Principal::workload(&self.cfg.name, &subject, kept).expiring(Some(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp),
                    ));
                    let mut m = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                    if m.len() >= MAX_REMEMBERED {
                        m.retain(|_, (_, until)| now <= *until);
                        if m.len() >= MAX_REMEMBERED {
                            m.clear();
                        }
                    }
                    m.insert(fingerprint, (p.clone(), exp + self.skew.as_secs()));
                    return Ok(p);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(refuse(&last))
    }

    /// Fetches the JWKS URL now and every `jwks_refresh` (every 30 s
    /// while it fails, keeping the keys it had), until the provider is
    /// dropped (a reload replaced it).
    pub(crate) async fn refresh(this: Weak<Provider>, fetch: Arc<dyn JwksFetch>) {
        loop {
            let Some(p) = this.upgrade() else { return };
            let Some(url) = p.cfg.jwks_url.clone() else {
                return;
            };
            let got = fetch.fetch(&url, &p.cfg.jwks_hosts, MAX_JWKS_BYTES).await;
            let wait = match got.and_then(|b| parse_jwks(&b).map_err(|e| format!("{url}: {e}"))) {
                Ok(keys) => {
                    tracing::debug!(provider = %p.cfg.name, keys = keys.len(), "JWKS fetched");
                    p.set_url_keys(keys);
                    p.cfg.jwks_refresh
                }
                Err(e) => {
                    tracing::warn!(provider = %p.cfg.name, error = %e, "JWKS fetch failed; keeping the keys held");
                    p.cfg.jwks_refresh.min(Duration::from_secs(30))
                }
            };
            drop(p);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_without_a_signature_algorithm_are_skipped_and_none_at_all_is_an_error() {
        let e = parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap_err();
        assert!(e.contains("no usable signature key"), "{e}");
        assert!(parse_jwks(b"[]").unwrap_err().contains("no \"keys\""));
        assert!(parse_jwks(b"nope").unwrap_err().starts_with("not JSON"));
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(parse_jwks(&big).unwrap_err().contains("larger than"));
    }

    #[test]
    fn peeking_needs_three_parts_and_a_json_payload() {
        assert!(peek_claims("a.b").is_none());
        assert!(peek_claims("a.b.c.d").is_none());
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"iss":"x"}"#);
        let c = peek_claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!(c["iss"], "x");
        assert!(!looks_like_jwt("plain-token"));
    }
}
