//! Pull-side client authentication: htpasswd (bcrypt) basic auth, static
//! bearer tokens, and the short-lived repository-scoped credentials issued
//! to vulnerability scanners.
//!
//! bcrypt is slow on purpose, so it is kept from becoming a lever against
//! the server: a verified login is remembered for a while (keyed by a hash
//! of the password, never the password), so a pull does not pay bcrypt per
//! layer; a refused one is remembered too, so repeating it costs nothing;
//! at most one bcrypt runs at a time, with a short bounded queue, so a flood
//! of wrong passwords holds one core at most and never delays requests
//! with remembered credentials. Passwords longer than bcrypt's 72 bytes are
//! refused rather than silently truncated. Schemes are case-insensitive.
//! Tokens are compared in constant time (`subtle`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{HeaderMap, header};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::error::{Error, Result};
use crate::names::RepoName;
use crate::policy::PullCredentials;
use crate::secret::Secret;

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
/// Users an htpasswd text may name, at most.
const MAX_USERS: usize = 100_000;

/// Who may pull: htpasswd users (name -> bcrypt hash) and bearer tokens.
/// `Debug` names the users and counts the tokens; hashes and tokens never
/// print.
///
/// ```
/// use cache_core::Secret;
/// use cache_core::server::AuthConfig;
///
/// let cfg = AuthConfig::from_htpasswd("alice:$2y$05$abcdefghijklmnopqrstuuJ0hWZ7c6fHgVQkV2dK3Qk4H0nqK8bFq\n")?
///     .token(Secret::new("ci-token"));
/// assert!(cfg.htpasswd.contains_key("alice"));
/// assert!(!format!("{cfg:?}").contains("ci-token"));
/// # Ok::<(), cache_core::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// `user -> bcrypt hash` (`$2y$`, `$2b$` or `$2a$`).
    pub htpasswd: HashMap<String, String>,
    /// Accepted bearer tokens.
    pub tokens: Vec<Secret>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A bcrypt hash can be attacked offline: users by name only.
        let mut users: Vec<&String> = self.htpasswd.keys().collect();
        users.sort();
        f.debug_struct("AuthConfig")
            .field("users", &users)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl AuthConfig {
    /// The users of an htpasswd file's text (`USER:HASH` lines, bcrypt
    /// only, as `htpasswd -B` writes them; blank lines and `#` comments
    /// skipped). An error names the line and, where it has one, the user.
    ///
    /// ```
    /// use cache_core::server::AuthConfig;
    /// let e = AuthConfig::from_htpasswd("bob:{SHA}x\n").unwrap_err();
    /// assert!(e.to_string().contains("line 1 (user \"bob\")"), "{e}");
    /// ```
    pub fn from_htpasswd(text: &str) -> Result<Self> {
        let mut htpasswd = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line.split_once(':').ok_or_else(|| {
                Error::misconfigured(format!("htpasswd line {} is not USER:HASH", n + 1))
            })?;
            if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
                return Err(Error::misconfigured(format!(
                    "htpasswd line {} (user {user:?}) is not a bcrypt hash (use htpasswd -B)",
                    n + 1
                )));
            }
            if htpasswd.len() >= MAX_USERS {
                return Err(Error::misconfigured(format!(
                    "htpasswd line {}: more than {MAX_USERS} users",
                    n + 1
                )));
            }
            htpasswd.insert(user.to_owned(), hash.to_owned());
        }
        Ok(AuthConfig {
            htpasswd,
            tokens: Vec::new(),
        })
    }

    /// [`AuthConfig::from_htpasswd`] of the file at `path`; an error names
    /// the file.
    ///
    /// ```no_run
    /// let cfg = cache_core::server::AuthConfig::read_htpasswd("/etc/registry/htpasswd".as_ref())?;
    /// # Ok::<(), cache_core::Error>(())
    /// ```
    pub fn read_htpasswd(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::misconfigured(format!("htpasswd {}: {e}", path.display())))?;
        Self::from_htpasswd(&text).map_err(|e| match e {
            Error::Misconfigured { reason } => {
                Error::misconfigured(format!("{}: {reason}", path.display()))
            }
            other => other,
        })
    }

    /// Accepts `token` as `Authorization: Bearer <token>` too.
    ///
    /// ```
    /// let cfg = cache_core::server::AuthConfig::default().token(cache_core::Secret::new("t"));
    /// assert_eq!(cfg.tokens.len(), 1);
    /// ```
    pub fn token(mut self, token: Secret) -> Self {
        self.tokens.push(token);
        self
    }
}

type Key = (String, [u8; 32]);

/// Checks `Authorization` headers against an [`AuthConfig`] (see the
/// module docs for how bcrypt is kept cheap). Requires a tokio runtime.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use cache_core::Secret;
/// use cache_core::server::{AuthConfig, PullAuth};
///
/// let auth = PullAuth::new(AuthConfig::default().token(Secret::new("s3cret")));
/// let mut headers = http::HeaderMap::new();
/// headers.insert("authorization", "Bearer s3cret".parse().unwrap());
/// assert!(auth.check(&headers).await);
/// headers.insert("authorization", "Bearer guess".parse().unwrap());
/// assert!(!auth.check(&headers).await);
/// # });
/// ```
#[derive(Debug)]
pub struct PullAuth {
    cfg: AuthConfig,
    verified: Mutex<HashMap<Key, Instant>>,
    refused: Mutex<HashMap<Key, Instant>>,
    bcrypt: tokio::sync::Semaphore,
    waiting: AtomicUsize,
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
    /// Checks against `cfg`.
    ///
    /// ```
    /// let auth = cache_core::server::PullAuth::new(Default::default());
    /// # let _ = auth;
    /// ```
    pub fn new(cfg: AuthConfig) -> Self {
        PullAuth {
            cfg,
            verified: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            bcrypt: tokio::sync::Semaphore::new(1),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Whether the request carries valid credentials: `Bearer` with one of
    /// the tokens, or `Basic` with an htpasswd user and its password. A
    /// missing or malformed header, an unknown user, a password past
    /// bcrypt's 72 bytes, or a full bcrypt queue is `false`.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let auth = cache_core::server::PullAuth::new(Default::default());
    /// assert!(!auth.check(&http::HeaderMap::new()).await, "no header, no entry");
    /// # });
    /// ```
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
            // Every token is compared, so the time taken says nothing of which matched.
            let matched = self
                .cfg
                .tokens
                .iter()
                .fold(subtle::Choice::from(0), |acc, t| {
                    acc | t.expose().as_bytes().ct_eq(credentials.as_bytes())
                });
            return !credentials.is_empty() && bool::from(matched);
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
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
/// (as [`Caller::Scanner`](crate::Caller::Scanner)): the server half of
/// [`PullCredentials`], which a gate (`cache_upstream::scanner::ScanGate`)
/// is handed. The credential is `Basic` with user `scanner` and a random
/// 256-bit password (scanners built on go-containerregistry send Basic
/// credentials as-is); the same password as a `Bearer` token is accepted
/// too. Only a hash of each password is kept, in a bounded map (4096; the
/// one nearest expiry goes first); expired ones are forgotten.
/// [`PullService::scoped`](super::PullService::scoped) is where a server
/// honours them.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{PullCredentials, RepoName};
/// use cache_core::server::ScopedTokens;
///
/// let tokens = ScopedTokens::new();
/// let repo = RepoName::parse("library/alpine")?;
/// let credential = tokens.issue(&repo, Duration::from_secs(300));
/// let mut headers = http::HeaderMap::new();
/// headers.insert("authorization", credential.expose().parse().unwrap());
/// assert_eq!(tokens.scope(&headers), Some(repo));
/// # Ok::<(), cache_core::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct ScopedTokens {
    issued: Mutex<HashMap<[u8; 32], (RepoName, Instant)>>,
}

impl ScopedTokens {
    /// An empty set.
    ///
    /// ```
    /// let tokens = std::sync::Arc::new(cache_core::server::ScopedTokens::new());
    /// # let _ = tokens;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The repository the request's credential is scoped to, if it carries
    /// an unexpired scoped credential; `None` for any other header (a
    /// client's credentials included).
    ///
    /// ```
    /// let tokens = cache_core::server::ScopedTokens::new();
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("authorization", format!("Bearer {}", "0".repeat(64)).parse().unwrap());
    /// assert_eq!(tokens.scope(&headers), None, "never issued");
    /// ```
    pub fn scope(&self, headers: &HeaderMap) -> Option<RepoName> {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, credentials) = v.trim().split_once(' ')?;
        let credentials = credentials.trim();
        let password = if scheme.eq_ignore_ascii_case("bearer") {
            credentials.to_owned()
        } else if scheme.eq_ignore_ascii_case("basic") {
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
        Secret::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("scanner:{password}"))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    }

    #[tokio::test]
    async fn schemes_are_case_insensitive_and_empty_tokens_never_pass() {
        let a = auth();
        assert!(a.check(&header("Bearer tok")).await);
        assert!(a.check(&header("bearer tok")).await);
        assert!(!a.check(&header("Bearer ")).await);
        assert!(!a.check(&header("Bearer tok2")).await);
        assert!(
            !a.check(&header("Bearer to")).await,
            "a prefix is not the token"
        );
        let good = basic("alice", &"a".repeat(72));
        assert!(a.check(&header(&format!("basic {good}"))).await);
        assert!(a.check(&header(&format!("BASIC {good}"))).await);
    }

    #[tokio::test]
    async fn any_of_several_tokens_passes() {
        let a = PullAuth::new(
            AuthConfig::default()
                .token(Secret::new("first"))
                .token(Secret::new("second")),
        );
        assert!(a.check(&header("Bearer first")).await);
        assert!(a.check(&header("Bearer second")).await);
        assert!(!a.check(&header("Bearer third")).await);
    }

    #[test]
    fn scoped_credentials_name_their_repository_and_expire() {
        let t = ScopedTokens::new();
        let repo = RepoName::parse("library/alpine").unwrap();
        let issued = t.issue(&repo, Duration::from_secs(60));
        assert_eq!(t.scope(&header(issued.expose())), Some(repo.clone()));
        let password = {
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

    #[test]
    fn htpasswd_text_parses_and_its_errors_name_the_line() {
        let cfg = AuthConfig::from_htpasswd(
            "# users\n\nalice:$2y$05$abc\n  bob:$2b$05$def  \ncarol:$2a$05$ghi\n",
        )
        .unwrap();
        assert_eq!(cfg.htpasswd.len(), 3);
        assert_eq!(cfg.htpasswd["bob"], "$2b$05$def");
        let e = AuthConfig::from_htpasswd("alice:$2y$05$abc\nnocolon\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "misconfigured: htpasswd line 2 is not USER:HASH"
        );
        let e = AuthConfig::from_htpasswd("dave:$apr1$x$y\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("htpasswd line 1 (user \"dave\") is not a bcrypt hash"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_htpasswd_file_is_an_error_naming_it() {
        let e = AuthConfig::read_htpasswd(Path::new("/nonexistent/htpasswd")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/htpasswd"), "{e}");
    }

    #[test]
    fn debug_shows_users_not_hashes_or_tokens() {
        let cfg = AuthConfig::from_htpasswd("alice:$2y$05$secrethash\n")
            .unwrap()
            .token(Secret::new("tok-value"));
        let shown = format!("{cfg:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(
            !shown.contains("secrethash") && !shown.contains("tok-value"),
            "{shown}"
        );
    }
}
