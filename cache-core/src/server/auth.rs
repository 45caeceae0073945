//! Pull-side client authentication: who a request comes from
//! ([`Principal`]), and the short-lived repository-scoped credentials
//! issued to vulnerability scanners.
//!
//! A request is identified by its `Authorization` header:
//!
//! * none: `anonymous`;
//! * `Basic USER:PASSWORD`: an htpasswd user or an `[[auth.user]]` (bcrypt
//!   or a password file), a robot token (`NAME:TOKEN`), or an OIDC token as
//!   the password (any user name, as with ECR and GAR);
//! * `Bearer TOKEN`: a token from this server's token flow, an OIDC token,
//!   a robot token or a static token.
//!
//! bcrypt is slow on purpose, so it is kept from becoming a lever against
//! the server: a verified login is remembered for a while (keyed by a hash
//! of the password, never the password), so a pull does not pay bcrypt per
//! layer; a refused one is remembered too, so repeating it costs nothing;
//! at most one bcrypt runs at a time, with a short bounded queue, so a flood
//! of wrong passwords holds one core at most and never delays requests
//! with remembered credentials. Passwords longer than bcrypt's 72 bytes are
//! refused rather than silently truncated. Schemes are case-insensitive.
//! Tokens and passwords are compared in constant time (`subtle`), robot
//! tokens by their SHA-256 (only that is configured). Failed logins with
//! passwords and token secrets are throttled per source address and per
//! user name ([`ThrottleSettings`]); a JWT cannot be guessed, so a refused
//! one is only refused.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{HeaderMap, header};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::access::{Action, Grant, Grants, Principal, PrincipalKind};
use super::oidc::{self, JwksFetch, OidcConfig, Provider};
use super::throttle::{Throttle, ThrottleSettings};
use super::token::{Issuer, Scope, TokenGrant, TokenSettings};
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
/// The name static tokens (`[auth] tokens`) go by.
pub const STATIC_TOKEN: &str = "static-token";
/// The largest allowed clock skew.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// How an `[[auth.user]]` proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserPassword {
    /// A bcrypt hash (`$2y$`, `$2b$` or `$2a$`).
    Bcrypt(String),
    /// The password itself (read from a file), compared in constant time.
    Plain(Secret),
}

/// An `[[auth.user]]`: a name and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConfig {
    /// The user's name (its principal's).
    pub name: String,
    /// Its password.
    pub password: UserPassword,
}

/// An `[[auth.token]]`: a robot token, kept as its SHA-256 only, valid
/// until `expires` if given.
#[derive(Clone, PartialEq, Eq)]
pub struct RobotToken {
    /// The token's name (its principal's, and the user name it is sent
    /// with as Basic credentials).
    pub name: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
    /// When it stops being accepted.
    pub expires: Option<SystemTime>,
}

impl fmt::Debug for RobotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RobotToken")
            .field("name", &self.name)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl RobotToken {
    /// A robot token named `name` whose token is `token` (hashed here).
    ///
    /// ```
    /// let t = cache_core::server::RobotToken::new("ci", "s3cret-token", None);
    /// assert!(!format!("{t:?}").contains("s3cret"));
    /// ```
    pub fn new(name: &str, token: &str, expires: Option<SystemTime>) -> Self {
        RobotToken {
            name: name.to_owned(),
            sha256: Sha256::digest(token.as_bytes()).into(),
            expires,
        }
    }
}

/// Who may pull, and what: htpasswd users (name -> bcrypt hash) and static
/// bearer tokens with full access (`[auth] htpasswd` and `tokens`);
/// `[[auth.user]]`s, robot tokens and OIDC providers, whose access the
/// grants give; and the token flow. With the `serde` feature, `[auth]`
/// deserialises into an [`AuthSpec`](super::AuthSpec), which reads its
/// files into one of these. `Debug` names users, tokens and providers and
/// counts the static tokens; hashes and tokens never print.
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
#[derive(Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// `user -> bcrypt hash` (`$2y$`, `$2b$` or `$2a$`): full access.
    pub htpasswd: HashMap<String, String>,
    /// Accepted bearer tokens: full access.
    pub tokens: Vec<Secret>,
    /// Users whose access the grants give.
    pub users: Vec<UserConfig>,
    /// Robot tokens whose access the grants give.
    pub robots: Vec<RobotToken>,
    /// OIDC providers whose workloads the grants give access.
    pub oidc: Vec<OidcConfig>,
    /// What principals may do.
    pub grants: Vec<Grant>,
    /// The registry token flow (`None`: off, and a `401` asks for Basic
    /// credentials).
    pub token_flow: Option<TokenSettings>,
    /// How far clocks may disagree when checking a token's times
    /// (default 60 s, at most 5 minutes).
    pub clock_skew: Duration,
    /// How failed logins are throttled.
    pub throttle: ThrottleSettings,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: HashMap::new(),
            tokens: Vec::new(),
            users: Vec::new(),
            robots: Vec::new(),
            oidc: Vec::new(),
            grants: Vec::new(),
            token_flow: None,
            clock_skew: Duration::from_secs(60),
            throttle: ThrottleSettings::default(),
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A bcrypt hash can be attacked offline: users by name only.
        let mut users: Vec<&String> = self.htpasswd.keys().collect();
        users.sort();
        users.extend(self.users.iter().map(|u| &u.name));
        let robots: Vec<&String> = self.robots.iter().map(|r| &r.name).collect();
        let oidc: Vec<&String> = self.oidc.iter().map(|o| &o.name).collect();
        f.debug_struct("AuthConfig")
            .field("users", &users)
            .field("tokens", &self.tokens.len())
            .field("robots", &robots)
            .field("oidc", &oidc)
            .field("grants", &self.grants.len())
            .field("token_flow", &self.token_flow)
            .finish_non_exhaustive()
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
            if !is_bcrypt(hash) {
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
            ..AuthConfig::default()
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

    /// Adds a grant.
    pub fn grant(mut self, grant: Grant) -> Self {
        self.grants.push(grant);
        self
    }

    /// Adds a robot token.
    pub fn robot(mut self, robot: RobotToken) -> Self {
        self.robots.push(robot);
        self
    }

    /// Turns the registry token flow on with `settings`.
    pub fn with_token_flow(mut self, settings: TokenSettings) -> Self {
        self.token_flow = Some(settings);
        self
    }
}

/// Whether `hash` is a bcrypt hash htpasswd writes.
pub(crate) fn is_bcrypt(hash: &str) -> bool {
    hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")
}

type Key = (String, [u8; 32]);

/// Who a request comes from, and how its access is decided.
#[derive(Debug, Clone)]
pub(crate) enum Identity {
    /// A principal whose grants decide.
    Principal(Principal),
    /// A token from this server's token flow, whose scopes decide.
    Token(TokenGrant),
}

impl Identity {
    pub(crate) fn principal(&self) -> &Principal {
        match self {
            Identity::Principal(p) => p,
            Identity::Token(t) => &t.principal,
        }
    }
}

/// Why a request was not identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its credentials are wrong (the reason is for logs, never clients).
    Invalid(String),
    /// Too many failed logins from its source or as its user: try again
    /// after this long.
    Throttled(Duration),
}

/// What a principal may do with one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// This.
    Allow(Action),
    /// Nothing.
    Deny,
    /// Its token was not asked for this repository: it should get another.
    AskAgain,
}

/// Checks requests against an [`AuthConfig`] (see the module docs).
/// Requires a tokio runtime.
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
    verified: Mutex<HashMap<Key, (Principal, Instant)>>,
    refused: Mutex<HashMap<Key, (Principal, Instant)>>,
    bcrypt: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    grants: Grants,
    robots_by_hash: HashMap<[u8; 32], usize>,
    providers: Vec<Arc<Provider>>,
    issuer: Option<Issuer>,
    throttle: Throttle,
    /// Users' and robot tokens' principals, made once.
    principals: HashMap<String, Principal>,
    static_token: Principal,
}

/// The principal remembered for `key` within `ttl`; forgets it if older.
fn recall(
    m: &Mutex<HashMap<Key, (Principal, Instant)>>,
    key: &Key,
    ttl: Duration,
) -> Option<Principal> {
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    match m.get(key) {
        Some((p, t)) if t.elapsed() < ttl => Some(p.clone()),
        Some(_) => {
            m.remove(key);
            None
        }
        None => None,
    }
}

fn remember(m: &Mutex<HashMap<Key, (Principal, Instant)>>, key: Key, p: Principal, ttl: Duration) {
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() >= MAX_REMEMBERED {
        m.retain(|_, (_, t)| t.elapsed() < ttl);
        if m.len() >= MAX_REMEMBERED {
            m.clear();
        }
    }
    m.insert(key, (p, Instant::now()));
}

/// `a == b` in constant time.
fn same(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// The peer address a request came from, if the server recorded it
/// ([`serve_connections`](super::serve_connections) does, as axum's
/// `ConnectInfo`).
pub(crate) fn source_of(ext: &http::Extensions) -> Option<IpAddr> {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

impl PullAuth {
    /// Checks against `cfg`.
    ///
    /// ```
    /// let auth = cache_core::server::PullAuth::new(Default::default());
    /// # let _ = auth;
    /// ```
    pub fn new(cfg: AuthConfig) -> Self {
        let grants = Grants::new(cfg.grants.clone());
        let skew = cfg.clock_skew.min(MAX_CLOCK_SKEW);
        let providers = cfg
            .oidc
            .iter()
            .map(|o| Arc::new(Provider::new(o.clone(), grants.claims_of(&o.name), skew)))
            .collect();
        let robots_by_hash = cfg
            .robots
            .iter()
            .enumerate()
            .map(|(i, r)| (r.sha256, i))
            .collect();
        let principals = cfg
            .users
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    Principal::named(PrincipalKind::User, &u.name),
                )
            })
            .chain(cfg.robots.iter().map(|r| {
                (
                    r.name.clone(),
                    Principal::named(PrincipalKind::Token, &r.name),
                )
            }))
            .collect();
        PullAuth {
            principals,
            static_token: Principal::with_full_access(PrincipalKind::Token, STATIC_TOKEN),
            issuer: cfg.token_flow.clone().map(|t| Issuer::new(t, skew)),
            throttle: Throttle::new(cfg.throttle),
            cfg,
            verified: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            bcrypt: tokio::sync::Semaphore::new(1),
            waiting: AtomicUsize::new(0),
            grants,
            robots_by_hash,
            providers,
        }
    }

    /// This, taking over from `previous` (the same server before a
    /// reload): the token-signing keys `previous` held keep verifying the
    /// tokens they signed until those expire (this one signs with its own:
    /// the configured key, or a new one), the keys `previous` fetched from
    /// JWKS URLs serve until the first fetch, and failed-login counts
    /// carry on.
    pub fn succeed(self, previous: &PullAuth) -> Self {
        if let (Some(new), Some(old)) = (&self.issuer, &previous.issuer) {
            new.take_keys(old);
        }
        for p in &self.providers {
            if let Some(old) = previous.providers.iter().find(|o| o.cfg.name == p.cfg.name) {
                p.take_url_keys(old);
            }
        }
        self.throttle.take_counts(&previous.throttle);
        self
    }

    /// Starts fetching the JWKS URLs of the OIDC providers that name one,
    /// now and then every `jwks_refresh`, through `fetch`, until this is
    /// dropped. Needs a tokio runtime.
    pub fn fetch_jwks_with(&self, fetch: Arc<dyn JwksFetch>) {
        for p in self.providers.iter().filter(|p| p.cfg.jwks_url.is_some()) {
            tokio::spawn(Provider::refresh(Arc::downgrade(p), fetch.clone()));
        }
    }

    /// The configuration it checks against.
    pub fn config(&self) -> &AuthConfig {
        &self.cfg
    }

    /// Whether the registry token flow is on.
    pub fn token_flow(&self) -> Option<&TokenSettings> {
        self.issuer.as_ref().map(|i| &i.settings)
    }

    /// The id of the key tokens are signed with now, when the token flow
    /// is on.
    pub fn signing_key_id(&self) -> Option<&str> {
        self.issuer.as_ref().map(|i| i.kid())
    }

    /// Whether the request carries valid credentials of someone (not
    /// `anonymous`): what [`PullAuth::identify`] says. A missing or
    /// malformed header, an unknown user, a password past bcrypt's 72
    /// bytes, a full bcrypt queue or a throttled login is `false`.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let auth = cache_core::server::PullAuth::new(Default::default());
    /// assert!(!auth.check(&http::HeaderMap::new()).await, "no header, no entry");
    /// # });
    /// ```
    pub async fn check(&self, headers: &HeaderMap) -> bool {
        matches!(self.identify(headers, None).await, Ok(p) if !p.is_anonymous())
    }

    /// Who the request is from: `anonymous` without credentials, the
    /// principal its credentials prove, or an error saying why they do
    /// not (never naming a secret). `source` is the client's address, for
    /// throttling.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        source: Option<IpAddr>,
    ) -> std::result::Result<Principal, String> {
        match self.identity(headers, source).await {
            Ok(i) => Ok(i.principal().clone()),
            Err(Refusal::Invalid(why)) => Err(why),
            Err(Refusal::Throttled(d)) => Err(format!(
                "too many failed logins; try again in {}s",
                d.as_secs().max(1)
            )),
        }
    }

    /// What `p` may do with `repository` under the grants.
    pub fn action(&self, p: &Principal, repository: &str) -> Option<Action> {
        self.grants.action(p, repository)
    }

    pub(crate) fn grants(&self) -> &Grants {
        &self.grants
    }

    pub(crate) fn issuer(&self) -> Option<&Issuer> {
        self.issuer.as_ref()
    }

    /// What `id` may do with `repository`.
    pub(crate) fn decide(&self, id: &Identity, repository: &str) -> Decision {
        match id {
            Identity::Principal(p) => match self.grants.action(p, repository) {
                Some(a) => Decision::Allow(a),
                None => Decision::Deny,
            },
            Identity::Token(t) => match t.scope(repository) {
                Scope::NotAsked => Decision::AskAgain,
                Scope::Granted(Some(a)) => Decision::Allow(a),
                Scope::Granted(None) => Decision::Deny,
            },
        }
    }

    /// Who the request is from (see [`PullAuth::identify`]).
    pub(crate) async fn identity(
        &self,
        headers: &HeaderMap,
        source: Option<IpAddr>,
    ) -> std::result::Result<Identity, Refusal> {
        let invalid = |why: &str| Err(Refusal::Invalid(why.to_owned()));
        let Some(v) = headers.get(header::AUTHORIZATION) else {
            return Ok(Identity::Principal(Principal::anonymous()));
        };
        let Ok(v) = v.to_str() else {
            return invalid("the Authorization header is not text");
        };
        let (scheme, credentials) = v.trim().split_once(' ').unwrap_or((v, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.bearer(credentials, source);
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return invalid("neither Basic nor Bearer credentials");
        }
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
            return invalid("Basic credentials that are not base64");
        };
        let Ok(raw) = String::from_utf8(raw) else {
            return invalid("Basic credentials that are not UTF-8");
        };
        let Some((user, pass)) = raw.split_once(':') else {
            return invalid("Basic credentials without a ':'");
        };
        if oidc::looks_like_jwt(pass) {
            return self.jwt(pass).map(Identity::Principal);
        }
        self.basic(user, pass, source)
            .await
            .map(Identity::Principal)
    }

    fn bearer(
        &self,
        token: &str,
        source: Option<IpAddr>,
    ) -> std::result::Result<Identity, Refusal> {
        if token.is_empty() {
            return Err(Refusal::Invalid("an empty bearer token".into()));
        }
        // The usual case, a token of ours verified lately: one hash, one probe.
        if let Some(g) = self.issuer.as_ref().and_then(|i| i.remembered(token)) {
            return Ok(Identity::Token(g));
        }
        if oidc::looks_like_jwt(token) {
            let ours = jsonwebtoken::decode_header(token)
                .ok()
                .and_then(|h| h.kid)
                .zip(self.issuer.as_ref())
                .filter(|(kid, i)| i.knows(kid));
            if let Some((_, issuer)) = ours {
                return issuer
                    .verify(token)
                    .map(Identity::Token)
                    .map_err(|e| Refusal::Invalid(format!("token: {e}")));
            }
            return self.jwt(token).map(Identity::Principal);
        }
        if let Some(wait) = self.throttle.blocked(source, None) {
            return Err(Refusal::Throttled(wait));
        }
        // Every static token is compared, so the time taken says nothing of which matched.
        let matched = self
            .cfg
            .tokens
            .iter()
            .fold(subtle::Choice::from(0), |acc, t| {
                acc | t.expose().as_bytes().ct_eq(token.as_bytes())
            });
        if bool::from(matched) {
            return Ok(Identity::Principal(self.static_token.clone()));
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(r) = self.robots_by_hash.get(&hash).map(|i| &self.cfg.robots[*i]) {
            return self.robot(r, source);
        }
        self.throttle.fail(source, None);
        Err(Refusal::Invalid("an unknown bearer token".into()))
    }

    /// A robot token whose hash matched: valid unless it expired.
    fn robot(
        &self,
        r: &RobotToken,
        source: Option<IpAddr>,
    ) -> std::result::Result<Identity, Refusal> {
        if r.expires.is_some_and(|e| SystemTime::now() >= e) {
            self.throttle.fail(source, Some(&r.name));
            return Err(Refusal::Invalid(format!(
                "robot token {:?} has expired",
                r.name
            )));
        }
        let p = self.principals.get(&r.name).cloned();
        Ok(Identity::Principal(
            p.unwrap_or_else(|| Principal::named(PrincipalKind::Token, &r.name))
                .expiring(r.expires),
        ))
    }

    /// An OIDC token, verified by the provider its `iss` names.
    fn jwt(&self, token: &str) -> std::result::Result<Principal, Refusal> {
        let iss = oidc::peek_claims(token)
            .and_then(|c| c.get("iss").and_then(|i| i.as_str().map(str::to_owned)));
        let Some(provider) =
            iss.and_then(|iss| self.providers.iter().find(|p| p.cfg.issuer == iss))
        else {
            return Err(Refusal::Invalid(
                "a JWT from an issuer no [[auth.oidc]] names".into(),
            ));
        };
        provider.verify(token).map_err(|e| Refusal::Invalid(e.0))
    }

    async fn basic(
        &self,
        user: &str,
        pass: &str,
        source: Option<IpAddr>,
    ) -> std::result::Result<Principal, Refusal> {
        let invalid = |why: String| Err(Refusal::Invalid(why));
        let key: Key = (user.to_owned(), Sha256::digest(pass.as_bytes()).into());
        // Verified lately: accepted, throttled or not.
        if let Some(p) = recall(&self.verified, &key, REMEMBER_OK) {
            return Ok(p);
        }
        // A robot's token is a generated secret checked in constant time
        // at the cost of one hash: the right one passes even while its
        // name is throttled, so nobody locks a robot out by guessing.
        if let Some(r) = self.cfg.robots.iter().find(|r| r.name == user)
            && same(&r.sha256, &key.1)
        {
            return self.robot(r, source).map(|i| i.principal().clone());
        }
        if let Some(wait) = self.throttle.blocked(source, Some(user)) {
            return Err(Refusal::Throttled(wait));
        }
        if self.cfg.robots.iter().any(|r| r.name == user) {
            self.throttle.fail(source, Some(user));
            return invalid(format!("a wrong token for robot {user:?}"));
        }
        let (hash, principal) = match self.cfg.users.iter().find(|u| u.name == user) {
            Some(u) => match &u.password {
                UserPassword::Plain(p) => {
                    let expected: [u8; 32] = Sha256::digest(p.expose().as_bytes()).into();
                    if same(&expected, &key.1) {
                        let p = self
                            .principals
                            .get(user)
                            .cloned()
                            .unwrap_or_else(|| Principal::named(PrincipalKind::User, user));
                        // Remembered like a bcrypt login: a user who logged
                        // in lately passes while guessers throttle the name.
                        remember(&self.verified, key, p.clone(), REMEMBER_OK);
                        return Ok(p);
                    }
                    self.throttle.fail(source, Some(user));
                    return invalid(format!("a wrong password for user {user:?}"));
                }
                UserPassword::Bcrypt(h) => (h.clone(), Principal::named(PrincipalKind::User, user)),
            },
            None => match self.cfg.htpasswd.get(user) {
                Some(h) => (
                    h.clone(),
                    Principal::with_full_access(PrincipalKind::User, user),
                ),
                None => {
                    self.throttle.fail(source, Some(user));
                    return invalid(format!("an unknown user {user:?}"));
                }
            },
        };
        if pass.len() > BCRYPT_MAX_PASSWORD {
            self.throttle.fail(source, Some(user));
            return invalid(format!(
                "a password of user {user:?} longer than bcrypt's 72 bytes"
            ));
        }
        if recall(&self.refused, &key, REMEMBER_BAD).is_some() {
            self.throttle.fail(source, Some(user));
            return invalid(format!("a wrong password for user {user:?}"));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return invalid("too many password checks at once".into());
        }
        let permit = self.bcrypt.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(_permit) = permit else {
            return invalid("password checks are closed".into());
        };
        let pass = pass.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            remember(&self.verified, key, principal.clone(), REMEMBER_OK);
            Ok(principal)
        } else {
            remember(&self.refused, key, principal, REMEMBER_BAD);
            self.throttle.fail(source, Some(user));
            invalid(format!("a wrong password for user {user:?}"))
        }
    }
}

/// Seconds since the epoch, for configuration that names dates.
pub(crate) fn epoch(t: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t)
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
        self.scoped(headers).map(|(repo, _)| repo)
    }

    /// The repository and password of the request's scoped credential.
    pub(crate) fn scoped(&self, headers: &HeaderMap) -> Option<(RepoName, String)> {
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
            Some((repo, until)) if Instant::now() < *until => Some((repo.clone(), password)),
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

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, n]))
    }

    #[tokio::test]
    async fn robot_tokens_pass_as_bearer_or_as_basic_under_their_name_until_they_expire() {
        let a = PullAuth::new(
            AuthConfig::default()
                .robot(RobotToken::new("ci", "robot-secret", None))
                .robot(RobotToken::new("old", "old-secret", Some(epoch(1)))),
        );
        let p = a
            .identify(&header("Bearer robot-secret"), None)
            .await
            .unwrap();
        assert_eq!((p.kind(), p.name()), (PrincipalKind::Token, "ci"));
        assert!(!p.has_full_access(), "its grants decide");
        let p = a
            .identify(
                &header(&format!("Basic {}", basic("ci", "robot-secret"))),
                None,
            )
            .await
            .unwrap();
        assert_eq!(p.name(), "ci");
        let e = a
            .identify(
                &header(&format!("Basic {}", basic("other", "robot-secret"))),
                None,
            )
            .await
            .unwrap_err();
        assert!(e.contains("unknown user"), "{e}");
        let e = a
            .identify(&header("Bearer old-secret"), None)
            .await
            .unwrap_err();
        assert!(e.contains("expired"), "{e}");
    }

    #[tokio::test]
    async fn a_password_file_user_is_checked_in_constant_time_and_named() {
        let mut cfg = AuthConfig::default();
        cfg.users.push(UserConfig {
            name: "bob".into(),
            password: UserPassword::Plain(Secret::new("pw")),
        });
        let a = PullAuth::new(cfg);
        let p = a
            .identify(&header(&format!("Basic {}", basic("bob", "pw"))), None)
            .await
            .unwrap();
        assert_eq!((p.kind(), p.name()), (PrincipalKind::User, "bob"));
        assert!(
            a.identify(&header(&format!("Basic {}", basic("bob", "pw2"))), None)
                .await
                .is_err()
        );
        let anon = a.identify(&HeaderMap::new(), None).await.unwrap();
        assert!(anon.is_anonymous());
    }

    #[tokio::test]
    async fn failed_logins_are_throttled_per_source_and_per_user_and_remembered_logins_pass() {
        let mut cfg = AuthConfig {
            throttle: ThrottleSettings {
                per_source: 3,
                per_principal: 5,
                window: Duration::from_secs(60),
            },
            ..AuthConfig::default()
        };
        cfg.htpasswd
            .insert("alice".into(), bcrypt::hash("right", 4).unwrap());
        cfg.users.push(UserConfig {
            name: "bob".into(),
            password: UserPassword::Plain(Secret::new("pw")),
        });
        let a = PullAuth::new(cfg);
        let good = header(&format!("Basic {}", basic("alice", "right")));
        assert!(
            a.identify(&good, ip(1)).await.is_ok(),
            "remembered from now on"
        );
        for i in 0..3 {
            let bad = header(&format!("Basic {}", basic("bob", &format!("guess{i}"))));
            assert!(
                a.identify(&bad, ip(1))
                    .await
                    .unwrap_err()
                    .contains("wrong password")
            );
        }
        let right = header(&format!("Basic {}", basic("bob", "pw")));
        let e = a.identify(&right, ip(1)).await.unwrap_err();
        assert!(e.contains("too many failed logins"), "{e}");
        assert!(a.identify(&right, ip(2)).await.is_ok(), "another source");
        assert!(
            a.identify(&good, ip(1)).await.is_ok(),
            "a login verified lately still passes"
        );
        // Per user: two more failures from other sources lock bob out everywhere.
        for n in 3..5 {
            let bad = header(&format!("Basic {}", basic("bob", "nope")));
            let _ = a.identify(&bad, ip(n)).await;
        }
        let e = a
            .identify(&header(&format!("Basic {}", basic("bob", "again"))), ip(9))
            .await
            .unwrap_err();
        assert!(e.contains("too many failed logins"), "{e}");
        // Bob logged in lately (from source 2): remembered, he still passes.
        assert!(a.identify(&right, ip(9)).await.is_ok(), "remembered login");
        // A robot's name locked by guesses: its right token still passes.
        let r = PullAuth::new(AuthConfig {
            throttle: ThrottleSettings {
                per_source: 100,
                per_principal: 2,
                window: Duration::from_secs(60),
            },
            robots: vec![RobotToken::new("ci", "robot-secret-1", None)],
            ..AuthConfig::default()
        });
        for n in 0..4 {
            let bad = header(&format!("Basic {}", basic("ci", "guess")));
            assert!(r.identify(&bad, ip(n)).await.is_err());
        }
        let bad = header(&format!("Basic {}", basic("ci", "guess")));
        let e = r.identify(&bad, ip(5)).await.unwrap_err();
        assert!(e.contains("too many failed logins"), "{e}");
        let robot = header(&format!("Basic {}", basic("ci", "robot-secret-1")));
        assert!(r.identify(&robot, ip(5)).await.is_ok(), "not locked out");
        // A bearer guess counts against its source.
        let b = PullAuth::new(AuthConfig {
            throttle: ThrottleSettings {
                per_source: 1,
                ..ThrottleSettings::default()
            },
            ..AuthConfig::default().token(Secret::new("t"))
        });
        assert!(b.identify(&header("Bearer wrong"), ip(1)).await.is_err());
        let e = b.identify(&header("Bearer t"), ip(1)).await.unwrap_err();
        assert!(e.contains("too many"), "{e}");
        assert!(b.identify(&header("Bearer t"), ip(2)).await.is_ok());
    }

    #[tokio::test]
    async fn htpasswd_users_and_static_tokens_have_full_access() {
        let a = auth();
        let p = a.identify(&header("Bearer tok"), None).await.unwrap();
        assert!(p.has_full_access());
        assert_eq!(p.name(), STATIC_TOKEN);
        assert_eq!(a.action(&p, "any/repo"), Some(Action::Pull));
        let p = a
            .identify(
                &header(&format!("Basic {}", basic("alice", &"a".repeat(72)))),
                None,
            )
            .await
            .unwrap();
        assert_eq!((p.name(), a.action(&p, "x")), ("alice", Some(Action::Pull)));
        assert_eq!(a.action(&Principal::anonymous(), "x"), None);
    }
}
