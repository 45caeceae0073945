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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use cache_upstream::Secret;

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
