//! Pull-side client authentication: htpasswd (bcrypt) basic auth and
//! static bearer tokens.
//!
//! bcrypt is slow on purpose, so it is kept from becoming a lever against
//! the server: a verified login is remembered for a while (keyed by a hash
//! of the password, never the password), so a pull does not pay bcrypt per
//! layer; a refused one is remembered too, so repeating it costs nothing;
//! at most one bcrypt runs at a time, with a short bounded queue, so a flood
//! of wrong passwords holds one core at most and never delays requests
//! with remembered credentials. Passwords longer than bcrypt's 72 bytes are
//! refused rather than silently truncated. Schemes are case-insensitive.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use sha2::{Digest as _, Sha256};

use cache_core::PullCredentials;
use cache_core::RepoName;
use cache_upstream::Secret;

use crate::config::AuthConfig;

/// How long a verified login is remembered.
const REMEMBER_OK: Duration = Duration::from_secs(300);
/// How long a refused login is remembered.
const REMEMBER_BAD: Duration = Duration::from_secs(60);
/// Logins remembered at once, each way.
const MAX_REMEMBERED: usize = 10_000;
/// bcrypt checks waiting for their turn, at most; more are refused at once.
const MAX_WAITING: usize = 32;
/// bcrypt uses the first 72 bytes of a password and ignores the rest.
const BCRYPT_MAX_PASSWORD: usize = 72;

type Key = (String, [u8; 32]);

/// Checks `Authorization` headers against the configuration.
#[derive(Debug)]
pub struct PullAuth {
    cfg: AuthConfig,
    verified: Mutex<HashMap<Key, Instant>>,
    refused: Mutex<HashMap<Key, Instant>>,
    bcrypt: tokio::sync::Semaphore,
    waiting: AtomicUsize,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `key` was remembered within `ttl`; forgets it if it is older.
fn recall(m: &Mutex<HashMap<Key, Instant>>, key: &Key, ttl: Duration) -> bool {
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    match m.get(key) {
        Some(t) if t.elapsed() < ttl => true,
        Some(_) => {
            m.remove(key);
            false
        }
        None => false,
    }
}

fn remember(m: &Mutex<HashMap<Key, Instant>>, key: Key, ttl: Duration) {
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() >= MAX_REMEMBERED {
        m.retain(|_, t| t.elapsed() < ttl);
        if m.len() >= MAX_REMEMBERED {
            m.clear();
        }
    }
    m.insert(key, Instant::now());
}

impl PullAuth {
    /// Wraps a validated configuration.
    pub fn new(cfg: AuthConfig) -> Self {
        PullAuth {
            cfg,
            verified: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            bcrypt: tokio::sync::Semaphore::new(1),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Whether the request carries valid credentials.
    pub async fn check(&self, headers: &HeaderMap) -> bool {
        let Some(v) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let (scheme, credentials) = v.trim().split_once(' ').unwrap_or((v, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return !credentials.is_empty()
                && self
                    .cfg
                    .tokens
                    .iter()
                    .any(|t| constant_time_eq(t.expose().as_bytes(), credentials.as_bytes()));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        use base64::Engine as _;
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
            return false;
        };
        let Ok(raw) = String::from_utf8(raw) else {
            return false;
        };
        let Some((user, pass)) = raw.split_once(':') else {
            return false;
        };
        if pass.len() > BCRYPT_MAX_PASSWORD {
            return false;
        }
        let Some(hash) = self.cfg.htpasswd.get(user).cloned() else {
            return false;
        };
        let key: Key = (user.to_owned(), Sha256::digest(pass.as_bytes()).into());
        if recall(&self.verified, &key, REMEMBER_OK) {
            return true;
        }
        if recall(&self.refused, &key, REMEMBER_BAD) {
            return false;
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let permit = self.bcrypt.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(_permit) = permit else { return false };
        let pass = pass.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            remember(&self.verified, key, REMEMBER_OK);
        } else {
            remember(&self.refused, key, REMEMBER_BAD);
        }
        ok
    }
}

/// Scoped pull credentials issued at most at once (a scan holds one for
/// at most its time to live).
const MAX_SCOPED: usize = 4096;

/// Short-lived pull credentials scoped to one repository, issued to
/// vulnerability scanners so they pull what they scan through this cache
/// (as [`Caller::Scanner`](cache_core::Caller::Scanner)). The credential is `Basic` with user `scanner`
/// and a random 256-bit password (scanners built on go-containerregistry
/// send Basic credentials as-is); the same password as a `Bearer` token is
/// accepted too. Only a hash of each password is kept, in a bounded map;
/// expired ones are forgotten.
#[derive(Debug, Default)]
pub struct ScopedTokens {
    issued: Mutex<HashMap<[u8; 32], (RepoName, Instant)>>,
}

impl ScopedTokens {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The repository the request's credential is scoped to, if it carries
    /// an unexpired scoped credential.
    pub fn scope(&self, headers: &HeaderMap) -> Option<RepoName> {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, credentials) = v.trim().split_once(' ')?;
        let credentials = credentials.trim();
        let password = if scheme.eq_ignore_ascii_case("bearer") {
            credentials.to_owned()
        } else if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .ok()?;
            let raw = String::from_utf8(raw).ok()?;
            let (user, pass) = raw.split_once(':')?;
            if user != "scanner" {
                return None;
            }
            pass.to_owned()
        } else {
            return None;
        };
        if password.len() != 64 {
            return None;
        }
        let key: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let mut m = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(&key) {
            Some((repo, until)) if Instant::now() < *until => Some(repo.clone()),
            Some(_) => {
                m.remove(&key);
                None
            }
            None => None,
        }
    }
}

impl PullCredentials for ScopedTokens {
    fn issue(&self, repository: &RepoName, ttl: Duration) -> Secret {
        use rand::RngCore as _;
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let password = hex::encode(raw);
        let key: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let now = Instant::now();
        let mut m = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_SCOPED {
            m.retain(|_, (_, until)| now < *until);
            if m.len() >= MAX_SCOPED {
                // The oldest goes: its scan has waited longest.
                if let Some(k) = m
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| *k)
                {
                    m.remove(&k);
                }
            }
        }
        m.insert(key, (repository.clone(), now + ttl));
        use base64::Engine as _;
        Secret::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("scanner:{password}"))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> PullAuth {
        let mut cfg = AuthConfig::default();
        cfg.htpasswd
            .insert("alice".into(), bcrypt::hash("a".repeat(72), 4).unwrap());
        cfg.tokens.push(Secret::new("tok"));
        PullAuth::new(cfg)
    }

    fn header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    fn basic(user: &str, pass: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    }

    #[tokio::test]
    async fn schemes_are_case_insensitive_and_empty_tokens_never_pass() {
        let a = auth();
        assert!(a.check(&header("Bearer tok")).await);
        assert!(a.check(&header("bearer tok")).await);
        assert!(!a.check(&header("Bearer ")).await);
        assert!(!a.check(&header("Bearer tok2")).await);
        let good = basic("alice", &"a".repeat(72));
        assert!(a.check(&header(&format!("basic {good}"))).await);
        assert!(a.check(&header(&format!("BASIC {good}"))).await);
    }

    #[test]
    fn scoped_credentials_name_their_repository_and_expire() {
        let t = ScopedTokens::new();
        let repo = RepoName::parse("library/alpine").unwrap();
        let issued = t.issue(&repo, Duration::from_secs(60));
        assert_eq!(t.scope(&header(issued.expose())), Some(repo.clone()));
        let password = {
            use base64::Engine as _;
            let b64 = issued.expose().strip_prefix("Basic ").unwrap();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            String::from_utf8(raw)
                .unwrap()
                .split_once(':')
                .unwrap()
                .1
                .to_owned()
        };
        assert_eq!(
            t.scope(&header(&format!("Bearer {password}"))),
            Some(repo.clone())
        );
        assert_eq!(
            t.scope(&header(&format!("Bearer {}", "0".repeat(64)))),
            None
        );
        assert_eq!(
            t.scope(&header(&format!("Basic {}", basic("alice", &password)))),
            None
        );
        let gone = t.issue(&repo, Duration::ZERO);
        assert_eq!(t.scope(&header(gone.expose())), None, "expired");
    }

    #[tokio::test]
    async fn bytes_past_bcrypts_72_are_not_ignored() {
        let a = auth();
        let longer = basic("alice", &format!("{}anything", "a".repeat(72)));
        assert!(!a.check(&header(&format!("Basic {longer}"))).await);
    }

    #[tokio::test]
    async fn a_repeated_wrong_password_is_refused_without_bcrypt() {
        let a = auth();
        let bad = header(&format!("Basic {}", basic("alice", "wrong")));
        assert!(!a.check(&bad).await);
        // Holding the only bcrypt permit: a check that needed bcrypt would wait.
        let _hold = a.bcrypt.acquire().await.unwrap();
        let again = tokio::time::timeout(Duration::from_secs(1), a.check(&bad)).await;
        assert_eq!(again.ok(), Some(false), "answered from memory");
    }
}
