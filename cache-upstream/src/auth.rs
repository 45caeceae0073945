//! Registry authentication: `WWW-Authenticate` challenges, credentials
//! that never print, and bearer tokens cached per (repository, action).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use cache_core::Secret;
use cache_core::{Error, Result};

/// Where a password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// The value itself.
    Value(Secret),
    /// An environment variable's value.
    Env(String),
    /// A file's contents (trailing newline removed).
    File(PathBuf),
}

impl PasswordSource {
    /// Reads the password now. Errors name the variable or file, never the value.
    pub fn resolve(&self) -> Result<Secret> {
        match self {
            PasswordSource::Value(s) => Ok(s.clone()),
            PasswordSource::Env(var) => std::env::var(var).map(Secret::new).map_err(|_| {
                Error::misconfigured(format!("environment variable {var} is not set"))
            }),
            PasswordSource::File(p) => std::fs::read_to_string(p)
                .map(|s| Secret::new(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|e| {
                    Error::misconfigured(format!("cannot read password file {}: {e}", p.display()))
                }),
        }
    }
}

/// A username and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

impl Credentials {
    /// Credentials from a user name and a password source.
    pub fn new(username: impl Into<String>, password: &PasswordSource) -> Result<Self> {
        Ok(Credentials {
            username: username.into(),
            password: password.resolve()?,
        })
    }

    /// The `Authorization: Basic ...` value.
    pub(crate) fn basic_header(&self) -> String {
        use base64::Engine as _;
        let raw = format!("{}:{}", self.username, self.password.expose());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`.
    Bearer {
        /// Where to ask for a token.
        realm: String,
        /// The `service` parameter, if any.
        service: Option<String>,
        /// The `scope` parameter, if any.
        scope: Option<String>,
    },
}

/// Parses the parameters after a scheme: `k="v", k2=v2`, with quoted
/// strings that may contain commas and escaped quotes.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\t') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = s[ks..i].trim().to_ascii_lowercase();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut chars = s[i..].char_indices();
            let mut end = s.len() - i;
            let mut escaped = false;
            for (j, c) in chars.by_ref() {
                if escaped {
                    val.push(c);
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = j + 1;
                    break;
                } else {
                    val.push(c);
                }
            }
            i += end;
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = s[vs..i].trim().to_owned();
        }
        if !key.is_empty() {
            out.insert(key, val);
        }
    }
    out
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value. Returns `None` for schemes this
    /// client does not speak or a Bearer challenge without a realm.
    pub fn parse(header: &str) -> Option<Self> {
        let h = header.trim();
        let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => {
                let mut p = parse_params(rest);
                let realm = p.remove("realm").filter(|r| !r.is_empty())?;
                Some(Challenge::Bearer {
                    realm,
                    service: p.remove("service"),
                    scope: p.remove("scope"),
                })
            }
            _ => None,
        }
    }
}

/// A cached bearer token.
#[derive(Clone)]
struct Token {
    value: Secret,
    expires: Instant,
}

/// Tokens cached per (repository, action) until they expire, at most
/// `max` at once.
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<(String, String), Token>>,
    max: usize,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.tokens.lock().map(|t| t.len()).unwrap_or(0);
        write!(f, "TokenCache({n} tokens)")
    }
}

impl TokenCache {
    pub(crate) fn new(max: usize) -> Self {
        TokenCache {
            tokens: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    pub(crate) fn get(&self, repo: &str, action: &str) -> Option<Secret> {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let key = (repo.to_owned(), action.to_owned());
        match t.get(&key) {
            Some(tok) if tok.expires > Instant::now() => Some(tok.value.clone()),
            Some(_) => {
                t.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps a token; when full, expired tokens go first, then the one
    /// closest to expiry.
    pub(crate) fn put(&self, repo: &str, action: &str, value: Secret, ttl: Duration) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() >= self.max {
            let now = Instant::now();
            t.retain(|_, tok| tok.expires > now);
            while t.len() >= self.max {
                let Some(k) = t
                    .iter()
                    .min_by_key(|(_, tok)| tok.expires)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                t.remove(&k);
            }
        }
        t.insert(
            (repo.to_owned(), action.to_owned()),
            Token {
                value,
                expires: Instant::now() + ttl,
            },
        );
    }

    pub(crate) fn forget(&self, repo: &str, action: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(repo.to_owned(), action.to_owned()));
    }
}

/// A token endpoint's answer: `token` or `access_token`, `expires_in`.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    pub(crate) token: Option<String>,
    pub(crate) access_token: Option<String>,
    pub(crate) expires_in: Option<u64>,
}

/// The lifetime left on a JWT, from its `exp` claim (seconds since the
/// epoch). `None` for anything that is not a JWT with an `exp`.
pub(crate) fn jwt_ttl(token: &str, now: std::time::SystemTime) -> Option<Duration> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    let exp = v.get("exp")?.as_u64()?;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_docker_hub_and_distribution_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        // Quoted commas and escapes, odd spacing and case.
        let c = Challenge::parse(
            r#"bearer  Realm="https://a/t", scope="repository:a/b:pull,push", service=reg"#,
        )
        .unwrap();
        assert!(matches!(c, Challenge::Bearer { ref scope, ref service, .. }
            if scope.as_deref() == Some("repository:a/b:pull,push") && service.as_deref() == Some("reg")));
        assert_eq!(Challenge::parse("Bearer service=x"), None, "no realm");
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }

    #[test]
    fn secrets_never_print() {
        let c = Credentials {
            username: "me".into(),
            password: Secret::new("hunter2"),
        };
        let shown = format!("{c:?} {}", c.password);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn password_sources_name_what_is_missing_but_not_the_value() {
        let e = PasswordSource::Env("SURELY_UNSET_PTC_VAR".into())
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("SURELY_UNSET_PTC_VAR"));
        let e = PasswordSource::File("/nonexistent/pw".into())
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/pw"));
    }

    #[test]
    fn the_token_cache_is_bounded_and_evicts_the_soonest_to_expire() {
        let c = TokenCache::new(3);
        for (i, secs) in [(0, 300), (1, 100), (2, 200), (3, 400)] {
            c.put(
                &format!("r{i}"),
                "pull",
                Secret::new("t"),
                Duration::from_secs(secs),
            );
        }
        assert!(
            c.get("r1", "pull").is_none(),
            "the one closest to expiry went"
        );
        for i in [0, 2, 3] {
            assert!(c.get(&format!("r{i}"), "pull").is_some(), "r{i}");
        }
        assert_eq!(c.tokens.lock().unwrap().len(), 3);
    }

    #[test]
    fn expired_tokens_are_dropped() {
        let c = TokenCache::new(10);
        c.put("a", "pull", Secret::new("t"), Duration::from_secs(60));
        assert!(c.get("a", "pull").is_some());
        assert!(c.get("a", "push").is_none());
        c.put("b", "pull", Secret::new("t"), Duration::ZERO);
        assert!(c.get("b", "pull").is_none());
    }

    #[test]
    fn jwt_exp_gives_the_lifetime() {
        use base64::Engine as _;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let tok = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"none"}"#),
            enc(r#"{"exp":1000300}"#)
        );
        assert_eq!(jwt_ttl(&tok, now), Some(Duration::from_secs(300)));
        assert_eq!(jwt_ttl("opaque-token", now), None);
        assert_eq!(jwt_ttl(&format!("a.{}.c", enc("{}")), now), None);
    }

    proptest! {
        #[test]
        fn challenge_parser_never_panics(s in "\\PC{0,200}") {
            let _ = Challenge::parse(&s);
        }

        #[test]
        fn quoted_values_round_trip(realm in "[ -~]{1,40}", scope in "[ -~]{0,40}") {
            let q = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
            let h = format!("Bearer realm=\"{}\",scope=\"{}\"", q(&realm), q(&scope));
            let c = Challenge::parse(&h).unwrap();
            prop_assert_eq!(c, Challenge::Bearer { realm, service: None, scope: Some(scope) });
        }
    }
}
