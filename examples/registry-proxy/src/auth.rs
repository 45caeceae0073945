//! Pull-side client authentication: htpasswd (bcrypt) basic auth and
//! static bearer tokens. Successful bcrypt checks are remembered briefly,
//! keyed by a hash of the password, so a pull does not pay bcrypt per layer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use sha2::{Digest as _, Sha256};

use crate::config::AuthConfig;

const REMEMBER: Duration = Duration::from_secs(300);

/// Checks `Authorization` headers against the configuration.
#[derive(Debug)]
pub struct PullAuth {
    cfg: AuthConfig,
    verified: Mutex<HashMap<(String, [u8; 32]), Instant>>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl PullAuth {
    /// Wraps a validated configuration.
    pub fn new(cfg: AuthConfig) -> Self {
        PullAuth {
            cfg,
            verified: Mutex::new(HashMap::new()),
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
        if let Some(token) = v.strip_prefix("Bearer ") {
            return self
                .cfg
                .tokens
                .iter()
                .any(|t| constant_time_eq(t.expose().as_bytes(), token.trim().as_bytes()));
        }
        let Some(b64) = v.strip_prefix("Basic ") else {
            return false;
        };
        use base64::Engine as _;
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        let Ok(raw) = String::from_utf8(raw) else {
            return false;
        };
        let Some((user, pass)) = raw.split_once(':') else {
            return false;
        };
        let Some(hash) = self.cfg.htpasswd.get(user).cloned() else {
            return false;
        };
        let key = (user.to_owned(), Sha256::digest(pass.as_bytes()).into());
        {
            let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            match v.get(&key) {
                Some(t) if t.elapsed() < REMEMBER => return true,
                Some(_) => {
                    v.remove(&key);
                }
                None => {}
            }
        }
        let pass = pass.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, Instant::now());
        }
        ok
    }
}
