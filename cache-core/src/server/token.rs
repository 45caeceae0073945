//! The Docker registry token flow: a `401` names the token endpoint
//! (`WWW-Authenticate: Bearer realm=".../token",service="..."`); the client
//! asks it for a token for the scopes it needs (`GET
//! /token?service=...&scope=repository:ci/app:pull`, with Basic
//! credentials, an OIDC token as the password, or none for `anonymous`),
//! and gets a short-lived JWT (ES256) that carries exactly what its
//! grants give of what it asked: `pull`, `pull-cached` (a `pull` asked of
//! a principal granted only `pull-cached` gets that), or nothing (an entry
//! with no actions, which makes the request a `403`, or a `401` for
//! `anonymous`). Every request carrying one is verified: signature by a
//! key this server holds, `iss` and `aud` the service, `exp` and `nbf`
//! within the allowed clock skew. A token carries no more than
//! [`MAX_SCOPES`] repositories.
//!
//! The signing key is configured (a PEM file, P-256: the same on every
//! instance behind one name) or generated at start, and replaced on every
//! reload ([`PullAuth::succeed`](super::PullAuth::succeed)): the keys it
//! replaces verify the tokens they signed until those expire.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::access::{Action, Grants, Principal, PrincipalKind};
use super::oidc::MAX_TOKEN_BYTES;
use crate::rules::Pattern;

/// Repository scopes a token carries at most; a client asking for more
/// gets the first ones.
pub const MAX_SCOPES: usize = 32;
/// Repository patterns a token's catalog entry lists at most.
const MAX_CATALOG_PATTERNS: usize = 256;
/// Keys replaced by reloads that still verify, at most.
const MAX_PREVIOUS_KEYS: usize = 8;
/// Verified tokens remembered at most.
const MAX_REMEMBERED: usize = 10_000;

/// How the token flow runs: the service name tokens are issued for, where
/// the token endpoint is, how long tokens live, and the signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// The `service` of challenges and the `iss` and `aud` of tokens
    /// (default `pull-through-cache`).
    pub service: String,
    /// The token endpoint's absolute URL, as clients reach it (default:
    /// `/token` beside `/v2/`, on the scheme and `Host` of the request
    /// that was challenged).
    pub realm: Option<String>,
    /// How long a token is valid (default 5 minutes).
    pub ttl: Duration,
    /// The key tokens are signed with; `None`: one generated at start and
    /// on every reload.
    pub signing_key: Option<SigningKey>,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            service: "pull-through-cache".into(),
            realm: None,
            ttl: Duration::from_secs(300),
            signing_key: None,
        }
    }
}

/// An ECDSA P-256 private key that signs tokens. `Debug` shows its key id
/// only.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    pkcs8: Vec<u8>,
    /// The public point, uncompressed (`04 || x || y`).
    point: Vec<u8>,
    kid: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    fn from_secret(secret: p256::SecretKey) -> Self {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        use p256::pkcs8::EncodePrivateKey as _;
        let point = secret.public_key().to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (x, y) = (
            b64(point.x().map(|x| x.as_slice()).unwrap_or_default()),
            b64(point.y().map(|y| y.as_slice()).unwrap_or_default()),
        );
        // RFC 7638: the key's thumbprint names it.
        let thumb = Sha256::digest(format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#
        ));
        SigningKey {
            pkcs8: secret
                .to_pkcs8_der()
                .map(|d| d.as_bytes().to_vec())
                .unwrap_or_default(),
            point: point.as_bytes().to_vec(),
            kid: b64(&thumb),
        }
    }

    /// A new random key.
    ///
    /// ```
    /// let k = cache_core::server::SigningKey::generate();
    /// assert_eq!(k.kid().len(), 43);
    /// ```
    pub fn generate() -> Self {
        Self::from_secret(p256::SecretKey::random(&mut rand::rngs::OsRng))
    }

    /// A P-256 private key in PEM, PKCS#8 (`BEGIN PRIVATE KEY`, as
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
    /// writes) or SEC1 (`BEGIN EC PRIVATE KEY`); an error says why not.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        use p256::pkcs8::DecodePrivateKey as _;
        let secret = if text.contains("BEGIN EC PRIVATE KEY") {
            p256::SecretKey::from_sec1_pem(text).map_err(|e| e.to_string())
        } else {
            p256::SecretKey::from_pkcs8_pem(text).map_err(|e| e.to_string())
        };
        secret
            .map(Self::from_secret)
            .map_err(|e| format!("not a P-256 private key in PEM (PKCS#8 or SEC1): {e}"))
    }

    /// The key's id (its RFC 7638 thumbprint), the `kid` of its tokens.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// A key as the issuer uses it.
struct KeyPair {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl KeyPair {
    fn new(k: &SigningKey) -> Self {
        KeyPair {
            kid: k.kid.clone(),
            encoding: EncodingKey::from_ec_der(&k.pkcs8),
            // jsonwebtoken's "DER" of an EC public key is the point ring takes.
            decoding: DecodingKey::from_ec_der(&k.point),
        }
    }
}

/// One entry of a token's `access` claim (the Docker token spec's
/// resource actions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    /// `repository`, or `registry` for the catalog.
    #[serde(rename = "type")]
    pub kind: String,
    /// The repository (`catalog` for the catalog).
    pub name: String,
    /// What was granted: `pull`, `pull-cached`, `*` (the catalog), or
    /// nothing.
    pub actions: Vec<String>,
    /// The catalog entry's repository patterns: what it may list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<AccessEntry>,
    /// The principal's kind (`anonymous`, `user`, `token`, `workload`).
    #[serde(default)]
    kind: String,
}

/// What a request may do, as a verified token says.
#[derive(Debug, Clone)]
pub(crate) struct TokenGrant {
    pub(crate) principal: Principal,
    access: Arc<Vec<AccessEntry>>,
}

/// What a token says of one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The token was not asked for it: the client should get another.
    NotAsked,
    /// It was asked, and this was granted (`None`: nothing).
    Granted(Option<Action>),
}

impl TokenGrant {
    pub(crate) fn scope(&self, repository: &str) -> Scope {
        let mut asked = false;
        let mut best = None;
        for e in self
            .access
            .iter()
            .filter(|e| e.kind == "repository" && e.name == repository)
        {
            asked = true;
            for a in e.actions.iter().filter_map(|a| Action::parse(a)) {
                best = best.max(Some(a));
            }
        }
        if asked {
            Scope::Granted(best)
        } else {
            Scope::NotAsked
        }
    }

    /// The catalog entry's patterns, if the token has one.
    pub(crate) fn catalog(&self) -> Option<Vec<Pattern>> {
        let e = self
            .access
            .iter()
            .find(|e| e.kind == "registry" && e.name == "catalog")?;
        Some(
            e.repositories
                .iter()
                .filter_map(|p| Pattern::parse_pattern(p).ok())
                .collect(),
        )
    }
}

/// A scope a client asked for: `type:name:actions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requested {
    kind: String,
    name: String,
    actions: Vec<String>,
}

/// The scopes of a token request's `scope` parameters (each may hold
/// several, space-separated), at most [`MAX_SCOPES`] + 1 (the catalog).
pub(crate) fn parse_scopes<'a>(params: impl IntoIterator<Item = &'a str>) -> Vec<Requested> {
    params
        .into_iter()
        .flat_map(|p| p.split(' '))
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            // `repository(plugin)`: the class does not matter here.
            let kind = kind.split('(').next().unwrap_or(kind);
            Some(Requested {
                kind: kind.to_owned(),
                name: name.to_owned(),
                actions: actions.split(',').take(8).map(str::to_owned).collect(),
            })
        })
        .take(MAX_SCOPES + 1)
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the token endpoint answers with (the Docker token spec's body).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Issued {
    pub(crate) token: String,
    pub(crate) access_token: String,
    pub(crate) expires_in: u64,
    pub(crate) issued_at: String,
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (UTC).
pub(crate) fn rfc3339(secs: u64) -> String {
    let rem = secs % 86_400;
    let (y, m, d) = crate::runtime::civil_from_days((secs / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch of `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ`
/// (UTC), the inverse of [`rfc3339`].
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, t.strip_suffix('Z')?),
        None => (s, "00:00:00"),
    };
    let num = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<i64>().ok())
            .flatten()
    };
    let mut dp = date.split('-');
    let (y, m, d) = (
        num(dp.next()?, 4)?,
        num(dp.next()?, 2)?,
        num(dp.next()?, 2)?,
    );
    let mut tp = time.split(':');
    let (hh, mm, ss) = (
        num(tp.next()?, 2)?,
        num(tp.next()?, 2)?,
        num(tp.next()?, 2)?,
    );
    if dp.next().is_some()
        || tp.next().is_some()
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
        || hh > 23
        || mm > 59
        || ss > 59
        || y < 1970
    {
        return None;
    }
    // days_from_civil.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let out = u64::try_from(secs).ok()?;
    // A day that does not exist (Feb 30) does not round-trip.
    (rfc3339(out) == format!("{date}T{time}Z")).then_some(out)
}

/// Issues and verifies tokens.
pub(crate) struct Issuer {
    pub(crate) settings: TokenSettings,
    skew: Duration,
    /// The key in use; the settings' if configured.
    key: SigningKey,
    current: Arc<KeyPair>,
    /// Keys replaced by reloads, and until when they verify.
    previous: Mutex<Vec<(Arc<KeyPair>, u64)>>,
    verified: Mutex<HashMap<[u8; 32], (TokenGrant, u64)>>,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("service", &self.settings.service)
            .field("kid", &self.current.kid)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    pub(crate) fn new(settings: TokenSettings, skew: Duration) -> Self {
        let key = settings
            .signing_key
            .clone()
            .unwrap_or_else(SigningKey::generate);
        let current = Arc::new(KeyPair::new(&key));
        Issuer {
            settings,
            skew,
            key,
            current,
            previous: Mutex::new(Vec::new()),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps `old`'s keys verifying the tokens they signed until those
    /// expire (the key in use, if it changed, and those `old` kept).
    pub(crate) fn take_keys(&self, old: &Issuer) {
        let now = now_secs();
        let mut prev = self.previous.lock().unwrap_or_else(|p| p.into_inner());
        let until = now + old.settings.ttl.as_secs() + old.skew.as_secs();
        if old.current.kid != self.current.kid {
            prev.push((old.current.clone(), until));
        }
        let kept = old.previous.lock().unwrap_or_else(|p| p.into_inner());
        prev.extend(
            kept.iter()
                .filter(|(k, u)| *u > now && k.kid != self.current.kid)
                .cloned(),
        );
        prev.sort_by_key(|(_, u)| std::cmp::Reverse(*u));
        prev.truncate(MAX_PREVIOUS_KEYS);
    }

    /// The key in use (for tests and logs).
    pub(crate) fn kid(&self) -> &str {
        self.key.kid()
    }

    /// Whether this issuer knows the key `kid` (its own, or one it replaced).
    pub(crate) fn knows(&self, kid: &str) -> bool {
        self.current.kid == kid
            || self
                .previous
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|(k, u)| k.kid == kid && *u > now_secs())
    }

    /// A token for `p` with what `grants` give of `requested`.
    pub(crate) fn issue(
        &self,
        p: &Principal,
        grants: &Grants,
        requested: &[Requested],
    ) -> Result<Issued, String> {
        let mut access: Vec<AccessEntry> = Vec::new();
        let index = grants.index(p);
        for r in requested {
            match r.kind.as_str() {
                "repository" => {
                    if access.iter().filter(|e| e.kind == "repository").count() >= MAX_SCOPES {
                        continue;
                    }
                    let Some(repo) = super::access::repository(&r.name) else {
                        continue;
                    };
                    let wants = |a: &str| r.actions.iter().any(|x| x == a || x == "*");
                    let actions = match index.action(repo.as_str()) {
                        Some(Action::Pull) if wants("pull") => vec!["pull"],
                        Some(_) if wants("pull") || wants("pull-cached") => vec!["pull-cached"],
                        _ => vec![],
                    };
                    access.retain(|e| !(e.kind == "repository" && e.name == repo.as_str()));
                    access.push(AccessEntry {
                        kind: "repository".into(),
                        name: repo.to_string(),
                        actions: actions.into_iter().map(str::to_owned).collect(),
                        repositories: Vec::new(),
                    });
                }
                "registry" if r.name == "catalog" => {
                    let patterns: Vec<String> = index
                        .patterns()
                        .into_iter()
                        .map(|(p, _)| p)
                        .take(MAX_CATALOG_PATTERNS)
                        .collect();
                    access.retain(|e| e.kind != "registry");
                    access.push(AccessEntry {
                        kind: "registry".into(),
                        name: "catalog".into(),
                        actions: if patterns.is_empty() {
                            vec![]
                        } else {
                            vec!["*".into()]
                        },
                        repositories: patterns,
                    });
                }
                _ => {}
            }
        }
        let now = now_secs();
        // No longer than the credential it was issued for (a robot token
        // or a workload token that expires sooner).
        let until = p
            .expires()
            .and_then(|e| e.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|e| e.as_secs());
        let ttl = match until {
            Some(e) => self.settings.ttl.as_secs().min(e.saturating_sub(now)),
            None => self.settings.ttl.as_secs(),
        };
        let jti = {
            use rand::RngCore as _;
            let mut raw = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            hex::encode(raw)
        };
        let claims = Claims {
            iss: self.settings.service.clone(),
            sub: p.name().to_owned(),
            aud: self.settings.service.clone(),
            exp: now + ttl,
            nbf: now,
            iat: now,
            jti,
            access,
            kind: p.kind().as_str().to_owned(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.current.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.current.encoding)
            .map_err(|e| format!("signing a token failed: {e}"))?;
        Ok(Issued {
            access_token: token.clone(),
            token,
            expires_in: ttl,
            issued_at: rfc3339(now),
        })
    }

    /// What a token this server verified lately grants, if it is one
    /// (and has not expired since).
    pub(crate) fn remembered(&self, token: &str) -> Option<TokenGrant> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let m = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&fingerprint)
            .filter(|(_, until)| now_secs() <= *until)
            .map(|(g, _)| g.clone())
    }

    /// Verifies a token this server issued: what it grants, or why not.
    pub(crate) fn verify(&self, token: &str) -> Result<TokenGrant, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long".into());
        }
        if let Some(g) = self.remembered(token) {
            return Ok(g);
        }
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_secs();
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        if header.alg != Algorithm::ES256 {
            return Err(format!("algorithm {:?} is not this server's", header.alg));
        }
        let kid = header.kid.unwrap_or_default();
        let key = if self.current.kid == kid {
            self.current.clone()
        } else {
            let prev = self.previous.lock().unwrap_or_else(|p| p.into_inner());
            prev.iter()
                .find(|(k, u)| k.kid == kid && *u > now)
                .map(|(k, _)| k.clone())
                .ok_or("signed with a key this server does not hold")?
        };
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = self.skew.as_secs();
        v.validate_nbf = true;
        v.set_issuer(&[&self.settings.service]);
        v.set_audience(&[&self.settings.service]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v)
            .map_err(|e| e.to_string())?
            .claims;
        let kind = PrincipalKind::parse(&claims.kind).unwrap_or(PrincipalKind::User);
        let principal = match kind {
            PrincipalKind::Anonymous => Principal::anonymous(),
            k => Principal::named(k, &claims.sub),
        };
        let grant = TokenGrant {
            principal,
            access: Arc::new(claims.access),
        };
        let mut m = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_REMEMBERED {
            m.retain(|_, (_, until)| now <= *until);
            if m.len() >= MAX_REMEMBERED {
                m.clear();
            }
        }
        m.insert(
            fingerprint,
            (grant.clone(), claims.exp + self.skew.as_secs()),
        );
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::access::{Glob, Grant, PrincipalPattern};

    fn grants() -> Grants {
        Grants::new(vec![
            Grant {
                principals: vec![PrincipalPattern::Name(Glob::new("ci"))],
                repositories: vec![Pattern::parse_pattern("ci/*").unwrap()],
                action: Action::Pull,
            },
            Grant {
                principals: vec![PrincipalPattern::Anonymous],
                repositories: vec![Pattern::parse_pattern("library/*").unwrap()],
                action: Action::PullCached,
            },
        ])
    }

    fn claims_of(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_token_carries_exactly_what_was_asked_and_granted() {
        let issuer = Issuer::new(TokenSettings::default(), Duration::from_secs(60));
        let ci = Principal::named(PrincipalKind::Token, "ci");
        let asked = parse_scopes([
            "repository:ci/app:pull,push",
            "repository:library/nginx:pull repository:ci/other:pull-cached",
        ]);
        let t = issuer.issue(&ci, &grants(), &asked).unwrap();
        let c = claims_of(&t.token);
        assert_eq!(
            c["access"],
            serde_json::json!([
                {"type": "repository", "name": "ci/app", "actions": ["pull"]},
                {"type": "repository", "name": "library/nginx", "actions": []},
                {"type": "repository", "name": "ci/other", "actions": ["pull-cached"]},
            ])
        );
        assert_eq!(
            (c["sub"].as_str(), c["kind"].as_str()),
            (Some("ci"), Some("token"))
        );
        let g = issuer.verify(&t.token).unwrap();
        assert_eq!(g.scope("ci/app"), Scope::Granted(Some(Action::Pull)));
        assert_eq!(g.scope("library/nginx"), Scope::Granted(None));
        assert_eq!(g.scope("ci/x"), Scope::NotAsked);
        // Anonymous, asking pull of what it may only read cached: pull-cached.
        let t = issuer
            .issue(
                &Principal::anonymous(),
                &grants(),
                &parse_scopes(["repository:library/a:pull"]),
            )
            .unwrap();
        assert_eq!(
            claims_of(&t.token)["access"][0]["actions"],
            serde_json::json!(["pull-cached"])
        );
    }

    #[test]
    fn a_token_expires_no_later_than_the_credential_it_was_issued_for() {
        let issuer = Issuer::new(TokenSettings::default(), Duration::from_secs(60));
        let soon = std::time::SystemTime::now() + Duration::from_secs(90);
        let ci = Principal::named(PrincipalKind::Token, "ci").expiring(Some(soon));
        let t = issuer.issue(&ci, &grants(), &[]).unwrap();
        let exp = claims_of(&t.token)["exp"].as_u64().unwrap();
        let soon_secs = soon
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(exp <= soon_secs, "exp {exp} after the robot's {soon_secs}");
        assert!(t.expires_in <= 90, "{}", t.expires_in);
        assert!(
            TokenSettings::default().ttl.as_secs() > 90,
            "the default ttl is what is capped"
        );
        // A credential that does not expire: the configured ttl.
        let t = issuer
            .issue(
                &Principal::named(PrincipalKind::Token, "ci"),
                &grants(),
                &[],
            )
            .unwrap();
        assert_eq!(t.expires_in, TokenSettings::default().ttl.as_secs());
    }

    #[test]
    fn an_edited_token_a_foreign_key_and_an_expired_token_are_refused() {
        let issuer = Issuer::new(TokenSettings::default(), Duration::ZERO);
        let ci = Principal::named(PrincipalKind::Token, "ci");
        let t = issuer
            .issue(&ci, &grants(), &parse_scopes(["repository:ci/app:pull"]))
            .unwrap()
            .token;
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let mut c = claims_of(&t);
        c["access"][0]["name"] = "library/nginx".into();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string());
        assert!(issuer.verify(&parts.join(".")).is_err(), "edited");
        let other = Issuer::new(TokenSettings::default(), Duration::ZERO);
        assert!(other.verify(&t).is_err(), "another server's key");
        let short = Issuer::new(
            TokenSettings {
                ttl: Duration::from_secs(1),
                ..TokenSettings::default()
            },
            Duration::ZERO,
        );
        let t = short.issue(&ci, &grants(), &[]).unwrap().token;
        assert!(short.verify(&t).is_ok());
        std::thread::sleep(Duration::from_millis(2100));
        let e = short.verify(&t).unwrap_err();
        assert!(e.contains("Expired"), "{e}");
    }

    #[test]
    fn keys_replaced_by_a_reload_verify_their_tokens_until_they_expire() {
        let old = Issuer::new(TokenSettings::default(), Duration::ZERO);
        let ci = Principal::named(PrincipalKind::Token, "ci");
        let t = old.issue(&ci, &grants(), &[]).unwrap().token;
        let new = Issuer::new(TokenSettings::default(), Duration::ZERO);
        assert_ne!(new.kid(), old.kid(), "rotated");
        assert!(new.verify(&t).is_err());
        new.take_keys(&old);
        assert!(
            new.verify(&t).is_ok(),
            "the old key still verifies its tokens"
        );
        assert!(new.knows(old.kid()));
    }

    #[test]
    fn configured_keys_read_from_pkcs8_and_sec1_and_keep_their_id() {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        use p256::pkcs8::EncodePrivateKey as _;
        let pkcs8 = secret.to_pkcs8_pem(Default::default()).unwrap();
        let sec1 = secret.to_sec1_pem(Default::default()).unwrap();
        let a = SigningKey::from_pem(&pkcs8).unwrap();
        let b = SigningKey::from_pem(&sec1).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(
            format!("{a:?}"),
            format!("SigningKey {{ kid: {:?} }}", a.kid()),
            "the id only"
        );
        assert!(SigningKey::from_pem("nope").unwrap_err().contains("P-256"));
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_rfc3339("2027-01-01"), Some(1_798_761_600));
        assert_eq!(parse_rfc3339("2027-02-30"), None);
        assert_eq!(parse_rfc3339("2027-1-01"), None);
        assert_eq!(parse_rfc3339("2027-01-01T25:00:00Z"), None);
        for s in [0u64, 86_399, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(s)), Some(s));
        }
    }
}
