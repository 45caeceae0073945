//! `[auth]` as configured (features `server` and `serde`): the table
//! deserialises and validates itself ([`AuthSpec`]), naming the key and
//! the value in its errors; [`AuthSpec::load`] reads the files it names
//! (htpasswd, password files, JWKS files, the signing key) into an
//! [`AuthConfig`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

use super::access::{ANONYMOUS, Action, Grant, PrincipalPattern};
use super::auth::{self, AuthConfig, MAX_CLOCK_SKEW, RobotToken, UserConfig, UserPassword};
use super::oidc::OidcConfig;
use super::throttle::ThrottleSettings;
use super::token::{self, SigningKey, TokenSettings};
use crate::config::{ConfigError, count_at_least, duration, label, rebase};
use crate::rules::Pattern;
use crate::secret::Secret;

/// The `[auth]` table, validated but for its files, which
/// [`load`](Self::load) reads. Every key, with its default:
///
/// ```toml
/// htpasswd = "htpasswd"          # bcrypt users (htpasswd -B) with pull on everything
/// tokens = ["..."]               # static bearer tokens with pull on everything
/// tokens_env = "PROXY_TOKENS"    # ... or comma-separated in this variable
/// token_flow = true              # the registry token flow at /token (false: Basic only)
/// service = "pull-through-cache" # its service name (iss and aud of tokens)
/// realm = "https://cache.example/token"  # its URL (default: from the request)
/// token_ttl = "5m"               # 10s to 1h
/// signing_key = "token-key.pem"  # P-256 PEM (default: generated, new on each reload)
/// clock_skew = "60s"             # at most 5m
///
/// [auth.throttle]                # failed logins allowed per window
/// per_source = 10
/// per_principal = 20
/// window = "1m"
///
/// [[auth.user]]
/// name = "alice"
/// bcrypt = "$2y$..."             # or password_file = "alice.password"
///
/// [[auth.token]]                 # a robot token, as its SHA-256
/// name = "ci"
/// sha256 = "9f86d08..."          # printf %s "$TOKEN" | sha256sum
/// expires = "2027-01-01"         # or "2027-01-01T12:00:00Z"
///
/// [[auth.oidc]]
/// name = "k8s"                   # principals are "k8s:<subject>"
/// issuer = "https://kubernetes.default.svc.cluster.local"
/// audience = "registry-proxy"    # or a list
/// jwks_file = "k8s-jwks.json"    # re-read on reload
/// jwks_url = "https://kubernetes.default.svc/openid/v1/jwks"  # fetched in the background
/// jwks_hosts = ["kubernetes.default.svc"]  # internal hosts the URL may reach
/// jwks_refresh = "10m"
/// principal = "sub"              # the claim that names the principal
///
/// [[auth.grant]]
/// principals = ["ci", "k8s:system:serviceaccount:ci:*", "github:repository_owner=acme"]
/// repositories = ["ci/*"]
/// actions = ["pull"]             # or ["pull-cached"]
/// ```
///
/// ```
/// use cache_core::server::AuthSpec;
///
/// let spec: AuthSpec = toml::from_str(r#"
///     [[grant]]
///     principals = ["anonymous"]
///     repositories = ["library/*"]
///     actions = ["pull-cached"]
/// "#)?;
/// let cfg = spec.load().unwrap();
/// assert_eq!(cfg.grants.len(), 1);
/// let e = toml::from_str::<AuthSpec>("[[grant]]\nprincipals = [\"ci\"]\nrepositories = [\"ci/*\"]\nactions = [\"push\"]").unwrap_err();
/// assert!(e.message().contains("grant[0].actions[0] = \"push\""), "{e}");
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSpec {
    htpasswd: Option<PathBuf>,
    tokens: Vec<Secret>,
    users: Vec<(String, UserSource)>,
    robots: Vec<RobotToken>,
    oidc: Vec<OidcSpec>,
    grants: Vec<Grant>,
    token_flow: Option<TokenSettings>,
    signing_key: Option<PathBuf>,
    clock_skew: Duration,
    throttle: ThrottleSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UserSource {
    Bcrypt(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OidcSpec {
    cfg: OidcConfig,
    jwks_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    bcrypt: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRobot {
    name: String,
    sha256: String,
    expires: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    name: String,
    issuer: String,
    audience: OneOrMany,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    #[serde(default)]
    jwks_hosts: Vec<String>,
    jwks_refresh: Option<String>,
    principal: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    principals: Vec<String>,
    repositories: Vec<String>,
    actions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    per_source: Option<usize>,
    per_principal: Option<usize>,
    window: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    htpasswd: Option<PathBuf>,
    tokens: Vec<String>,
    tokens_env: Option<String>,
    user: Vec<RawUser>,
    token: Vec<RawRobot>,
    oidc: Vec<RawOidc>,
    grant: Vec<RawGrant>,
    token_flow: Option<bool>,
    service: Option<String>,
    realm: Option<String>,
    token_ttl: Option<String>,
    signing_key: Option<PathBuf>,
    clock_skew: Option<String>,
    throttle: Option<RawThrottle>,
}

fn err<T>(msg: String) -> Result<T, ConfigError> {
    Err(ConfigError::new(msg))
}

/// A user's or robot token's name: 1 to 64 letters, digits, `.`, `_`,
/// `-`, `@`; never `anonymous` (nor anything an OIDC principal could be:
/// those have a `:`).
fn principal_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
        return err(format!(
            "{key} = {name:?}: 1 to 64 letters, digits, '.', '_', '-', '@'"
        ));
    }
    if name == ANONYMOUS {
        return err(format!(
            "{key} = {name:?}: the name of requests without credentials"
        ));
    }
    Ok(())
}

/// The host of an `http(s)://HOST[:PORT]/...` URL, if it is one.
fn url_host(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then_some((scheme, host))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl RawOidc {
    fn validate(self, i: usize) -> Result<OidcSpec, ConfigError> {
        let at = |m: String| ConfigError::new(format!("oidc[{i}].{m}"));
        label("name", &self.name).map_err(|e| at(e.message().to_owned()))?;
        if self.issuer.trim().is_empty() {
            return Err(at("issuer is empty".into()));
        }
        let audiences = match self.audience {
            OneOrMany::One(a) => vec![a],
            OneOrMany::Many(v) => v,
        };
        if audiences.is_empty() || audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(at("audience: give one or more non-empty audiences".into()));
        }
        if self.jwks_file.is_none() && self.jwks_url.is_none() {
            return Err(at(
                "jwks_file or jwks_url: give at least one (where the issuer's keys are)".into(),
            ));
        }
        if let Some(u) = &self.jwks_url {
            match url_host(u) {
                Some(("https", _)) => {}
                Some(("http", h)) if is_loopback(h) => {}
                Some(("http", _)) => {
                    return Err(at(format!(
                        "jwks_url = {u:?}: keys that sign tokens must come over https (http only on loopback)"
                    )));
                }
                _ => return Err(at(format!("jwks_url = {u:?}: not an http(s) URL"))),
            }
        }
        let principal_claim = self.principal.unwrap_or_else(|| "sub".into());
        if principal_claim.is_empty() {
            return Err(at(
                "principal is empty: name the claim that names the principal".into(),
            ));
        }
        let refresh = duration("jwks_refresh", &self.jwks_refresh, Duration::from_secs(600))
            .map_err(|e| at(e.message().to_owned()))?;
        if refresh < Duration::from_secs(30) {
            return Err(at(format!(
                "jwks_refresh = {:?}: at least 30s",
                self.jwks_refresh.unwrap_or_default()
            )));
        }
        Ok(OidcSpec {
            cfg: OidcConfig {
                name: self.name,
                issuer: self.issuer,
                audiences,
                principal_claim,
                jwks_file: None,
                jwks_url: self.jwks_url,
                jwks_hosts: self.jwks_hosts,
                jwks_refresh: refresh,
            },
            jwks_file: self.jwks_file,
        })
    }
}

impl RawGrant {
    fn validate(self, i: usize, providers: &[&str]) -> Result<Grant, ConfigError> {
        let at = |m: String| ConfigError::new(format!("grant[{i}].{m}"));
        if self.principals.is_empty() {
            return Err(at("principals is empty: name whom it is for".into()));
        }
        if self.repositories.is_empty() {
            return Err(at("repositories is empty: name what it is for".into()));
        }
        if self.actions.is_empty() {
            return Err(at(
                "actions is empty: give [\"pull\"] or [\"pull-cached\"]".into()
            ));
        }
        let principals = self
            .principals
            .iter()
            .enumerate()
            .map(|(j, p)| {
                PrincipalPattern::parse(p, providers)
                    .map_err(|e| at(format!("principals[{j}] = {p:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let repositories = self
            .repositories
            .iter()
            .enumerate()
            .map(|(j, r)| {
                Pattern::parse_pattern(r).map_err(|e| at(format!("repositories[{j}] = {r:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let mut action = Action::PullCached;
        for (j, a) in self.actions.iter().enumerate() {
            match Action::parse(a) {
                Some(a) => action = action.max(a),
                None => {
                    return Err(at(format!(
                        "actions[{j}] = {a:?}: a pull-through cache grants \"pull\" and \"pull-cached\" only"
                    )));
                }
            }
        }
        Ok(Grant {
            principals,
            repositories,
            action,
        })
    }
}

impl RawAuth {
    fn validate(self) -> Result<AuthSpec, ConfigError> {
        if let Some(i) = self.tokens.iter().position(|t| t.trim().is_empty()) {
            return err(format!(
                "tokens[{i}] is empty: a token must have characters"
            ));
        }
        let mut tokens: Vec<Secret> = self.tokens.into_iter().map(Secret::new).collect();
        if let Some(var) = &self.tokens_env {
            let v = std::env::var(var)
                .map_err(|_| ConfigError::new(format!("tokens_env = {var:?}: not set")))?;
            let more = v.split(',').map(str::trim).filter(|t| !t.is_empty());
            tokens.extend(more.map(Secret::new));
        }
        let mut names = HashSet::new();
        let mut users = Vec::new();
        for (i, u) in self.user.into_iter().enumerate() {
            principal_name(&format!("user[{i}].name"), &u.name)?;
            if !names.insert(u.name.clone()) {
                return err(format!("user[{i}].name = {:?}: named twice", u.name));
            }
            let source = match (u.bcrypt, u.password_file) {
                (Some(h), None) if auth::is_bcrypt(&h) => UserSource::Bcrypt(h),
                (Some(_), None) => {
                    return err(format!(
                        "user[{i}].bcrypt is not a bcrypt hash ($2y$..., as htpasswd -nB writes)"
                    ));
                }
                (None, Some(p)) => UserSource::File(p),
                _ => {
                    return err(format!(
                        "user[{i}] (name = {:?}): give bcrypt or password_file, one of them",
                        u.name
                    ));
                }
            };
            users.push((u.name, source));
        }
        let mut robots = Vec::new();
        for (i, r) in self.token.into_iter().enumerate() {
            principal_name(&format!("token[{i}].name"), &r.name)?;
            if !names.insert(r.name.clone()) {
                return err(format!(
                    "token[{i}].name = {:?}: named twice (users and tokens share names)",
                    r.name
                ));
            }
            let mut sha256 = [0u8; 32];
            if r.sha256.len() != 64 || hex::decode_to_slice(&r.sha256, &mut sha256).is_err() {
                return err(format!(
                    "token[{i}].sha256: not 64 hex digits (the token's SHA-256: printf %s \"$TOKEN\" | sha256sum)"
                ));
            }
            let expires = match &r.expires {
                None => None,
                Some(e) => Some(auth::epoch(token::parse_rfc3339(e).ok_or_else(|| {
                    ConfigError::new(format!(
                        "token[{i}].expires = {e:?}: not a date (2027-01-01 or 2027-01-01T12:00:00Z, UTC)"
                    ))
                })?)),
            };
            robots.push(RobotToken {
                name: r.name,
                sha256,
                expires,
            });
        }
        let mut oidc: Vec<OidcSpec> = Vec::new();
        for (i, o) in self.oidc.into_iter().enumerate() {
            let o = o.validate(i)?;
            if oidc.iter().any(|x| x.cfg.name == o.cfg.name) {
                return err(format!("oidc[{i}].name = {:?}: named twice", o.cfg.name));
            }
            if oidc.iter().any(|x| x.cfg.issuer == o.cfg.issuer) {
                return err(format!(
                    "oidc[{i}].issuer = {:?}: another [[auth.oidc]] has it (a token's iss names one provider)",
                    o.cfg.issuer
                ));
            }
            oidc.push(o);
        }
        let providers: Vec<&str> = oidc.iter().map(|o| o.cfg.name.as_str()).collect();
        let grants = self
            .grant
            .into_iter()
            .enumerate()
            .map(|(i, g)| g.validate(i, &providers))
            .collect::<Result<Vec<_>, _>>()?;
        let clock_skew = duration("clock_skew", &self.clock_skew, Duration::from_secs(60))?;
        if clock_skew > MAX_CLOCK_SKEW {
            return err(format!(
                "clock_skew = {:?}: at most 5m",
                self.clock_skew.unwrap_or_default()
            ));
        }
        let throttle = match self.throttle {
            None => ThrottleSettings::default(),
            Some(t) => {
                let d = ThrottleSettings::default();
                let at = |e: ConfigError| e.at("throttle");
                let window = duration("window", &t.window, d.window).map_err(at)?;
                if window < Duration::from_secs(1) {
                    return err(format!(
                        "throttle.window = {:?}: at least 1s",
                        t.window.unwrap_or_default()
                    ));
                }
                let count = |key, v, dflt: u32| {
                    count_at_least(key, v, dflt as usize, 1)
                        .map(|n| n.min(u32::MAX as usize) as u32)
                        .map_err(at)
                };
                ThrottleSettings {
                    per_source: count("per_source", t.per_source, d.per_source)?,
                    per_principal: count("per_principal", t.per_principal, d.per_principal)?,
                    window,
                }
            }
        };
        let token_flow = if self.token_flow.unwrap_or(true) {
            let d = TokenSettings::default();
            let service = self.service.unwrap_or(d.service);
            if service.is_empty() || service.len() > 255 || service.contains(['"', '\\']) {
                return err(format!(
                    "service = {service:?}: 1 to 255 characters, no quotes"
                ));
            }
            if let Some(r) = &self.realm
                && !matches!(url_host(r), Some(("http" | "https", _)))
            {
                return err(format!(
                    "realm = {r:?}: not an http(s) URL (the token endpoint's)"
                ));
            }
            let ttl = duration("token_ttl", &self.token_ttl, d.ttl)?;
            if !(Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&ttl) {
                return err(format!(
                    "token_ttl = {:?}: from 10s to 1h",
                    self.token_ttl.unwrap_or_default()
                ));
            }
            Some(TokenSettings {
                service,
                realm: self.realm,
                ttl,
                signing_key: None,
            })
        } else {
            None
        };
        if token_flow.is_none() && self.signing_key.is_some() {
            return err("signing_key is set while token_flow = false".into());
        }
        Ok(AuthSpec {
            htpasswd: self.htpasswd,
            tokens,
            users,
            robots,
            oidc,
            grants,
            token_flow,
            signing_key: self.signing_key,
            clock_skew,
            throttle,
        })
    }
}

impl<'de> Deserialize<'de> for AuthSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawAuth::deserialize(d)?
            .validate()
            .map_err(D::Error::custom)
    }
}

fn read(key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(format!("{key} = {:?}: {e}", path.display().to_string())))
}

impl AuthSpec {
    /// Makes relative paths relative to `base` (the configuration file's
    /// directory).
    pub fn rebase(&mut self, base: &Path) {
        for p in self
            .htpasswd
            .iter_mut()
            .chain(self.signing_key.iter_mut())
            .chain(self.oidc.iter_mut().filter_map(|o| o.jwks_file.as_mut()))
        {
            rebase(p, base);
        }
        for (_, u) in &mut self.users {
            if let UserSource::File(p) = u {
                rebase(p, base);
            }
        }
    }

    /// Reads the files it names (the htpasswd file, password files, JWKS
    /// files, the signing key) and checks what needs them: an error names
    /// the key and the file. A grant that names a principal exactly must
    /// name a user, a robot token or an htpasswd user (a typo would grant
    /// nothing), or a workload of a configured provider (`<provider>:...`).
    pub fn load(&self) -> Result<AuthConfig, ConfigError> {
        let mut cfg = match &self.htpasswd {
            None => AuthConfig::default(),
            Some(p) => AuthConfig::read_htpasswd(p).map_err(|e| match e {
                crate::Error::Misconfigured { reason } => {
                    ConfigError::new(format!("htpasswd = {reason}"))
                }
                e => ConfigError::new(format!("htpasswd: {e}")),
            })?,
        };
        cfg.tokens = self.tokens.clone();
        for (i, (name, source)) in self.users.iter().enumerate() {
            if cfg.htpasswd.contains_key(name) {
                return err(format!(
                    "user[{i}].name = {name:?}: the htpasswd file has this user too"
                ));
            }
            let password = match source {
                UserSource::Bcrypt(h) => UserPassword::Bcrypt(h.clone()),
                UserSource::File(p) => {
                    let text = read(&format!("user[{i}].password_file"), p)?;
                    let pw = text.trim_end_matches(['\n', '\r']);
                    if pw.is_empty() {
                        return err(format!(
                            "user[{i}].password_file = {:?}: empty",
                            p.display().to_string()
                        ));
                    }
                    UserPassword::Plain(Secret::new(pw))
                }
            };
            cfg.users.push(UserConfig {
                name: name.clone(),
                password,
            });
        }
        if let Some(r) = self
            .robots
            .iter()
            .find(|r| cfg.htpasswd.contains_key(&r.name))
        {
            return err(format!(
                "token name {:?}: the htpasswd file has this user too",
                r.name
            ));
        }
        cfg.robots = self.robots.clone();
        for (i, o) in self.oidc.iter().enumerate() {
            let mut c = o.cfg.clone();
            if let Some(p) = &o.jwks_file {
                let key = format!("oidc[{i}].jwks_file");
                let text = read(&key, p)?;
                super::oidc::parse_jwks(text.as_bytes()).map_err(|e| {
                    ConfigError::new(format!("{key} = {:?}: {e}", p.display().to_string()))
                })?;
                c.jwks_file = Some((p.clone(), text));
            }
            cfg.oidc.push(c);
        }
        for (i, g) in self.grants.iter().enumerate() {
            for (j, p) in g.principals.iter().enumerate() {
                let PrincipalPattern::Name(glob) = p else {
                    continue;
                };
                let n = glob.as_str();
                let known = !glob.is_literal()
                    || cfg.htpasswd.contains_key(n)
                    || cfg.users.iter().any(|u| u.name == n)
                    || cfg.robots.iter().any(|r| r.name == n)
                    || n == auth::STATIC_TOKEN
                    || cfg
                        .oidc
                        .iter()
                        .any(|o| n.strip_prefix(&o.name).is_some_and(|r| r.starts_with(':')));
                if !known {
                    return err(format!(
                        "grant[{i}].principals[{j}] = {n:?}: no user, token or [[auth.oidc]] workload has this name"
                    ));
                }
            }
        }
        cfg.grants = self.grants.clone();
        cfg.clock_skew = self.clock_skew;
        cfg.throttle = self.throttle;
        cfg.token_flow = self.token_flow.clone();
        if let (Some(t), Some(p)) = (&mut cfg.token_flow, &self.signing_key) {
            let text = read("signing_key", p)?;
            t.signing_key = Some(SigningKey::from_pem(&text).map_err(|e| {
                ConfigError::new(format!("signing_key = {:?}: {e}", p.display().to_string()))
            })?);
        }
        let anonymous = cfg
            .grants
            .iter()
            .any(|g| g.principals.contains(&PrincipalPattern::Anonymous));
        if cfg.htpasswd.is_empty()
            && cfg.tokens.is_empty()
            && cfg.users.is_empty()
            && cfg.robots.is_empty()
            && cfg.oidc.is_empty()
            && !anonymous
        {
            return err("[auth] is present but lets no one in: give htpasswd, tokens, [[auth.user]], [[auth.token]], [[auth.oidc]] or a grant to anonymous".into());
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<AuthSpec, String> {
        toml::from_str::<AuthSpec>(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        for (text, says) in [
            ("tokens = [\"\"]", "tokens[0] is empty"),
            (
                "[[user]]\nname = \"a b\"\nbcrypt = \"$2y$x\"",
                "user[0].name = \"a b\"",
            ),
            (
                "[[user]]\nname = \"anonymous\"\nbcrypt = \"$2y$x\"",
                "the name of requests without credentials",
            ),
            ("[[user]]\nname = \"a\"", "give bcrypt or password_file"),
            (
                "[[user]]\nname = \"a\"\nbcrypt = \"plain\"",
                "user[0].bcrypt is not a bcrypt hash",
            ),
            (
                "[[token]]\nname = \"ci\"\nsha256 = \"xyz\"",
                "token[0].sha256: not 64 hex digits",
            ),
            (
                "[[token]]\nname = \"ci\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nexpires = \"tomorrow\"",
                "token[0].expires = \"tomorrow\"",
            ),
            (
                "[[user]]\nname = \"ci\"\nbcrypt = \"$2y$x\"\n[[token]]\nname = \"ci\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"",
                "token[0].name = \"ci\": named twice",
            ),
            (
                "[[oidc]]\nname = \"k8s\"\nissuer = \"i\"\naudience = \"a\"",
                "oidc[0].jwks_file or jwks_url",
            ),
            (
                "[[oidc]]\nname = \"k8s\"\nissuer = \"i\"\naudience = []\njwks_file = \"f\"",
                "oidc[0].audience",
            ),
            (
                "[[oidc]]\nname = \"k8s\"\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"http://keys.example/jwks\"",
                "over https",
            ),
            (
                "[[oidc]]\nname = \"k8s\"\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"f\"\n[[oidc]]\nname = \"k9s\"\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"f\"",
                "oidc[1].issuer = \"i\": another",
            ),
            (
                "[[grant]]\nprincipals = [\"gh:repo=x\"]\nrepositories = [\"a\"]\nactions = [\"pull\"]",
                "grant[0].principals[0] = \"gh:repo=x\": no [[auth.oidc]] is named \"gh\"",
            ),
            (
                "[[grant]]\nprincipals = [\"a\"]\nrepositories = [\"a/*/b\"]\nactions = [\"pull\"]",
                "grant[0].repositories[0] = \"a/*/b\"",
            ),
            (
                "[[grant]]\nprincipals = []\nrepositories = [\"a\"]\nactions = [\"pull\"]",
                "grant[0].principals is empty",
            ),
            ("clock_skew = \"10m\"", "clock_skew = \"10m\": at most 5m"),
            ("token_ttl = \"2h\"", "token_ttl = \"2h\": from 10s to 1h"),
            ("realm = \"ftp://x\"", "realm = \"ftp://x\""),
            ("[throttle]\nper_source = 0", "throttle.per_source = 0"),
            (
                "token_flow = false\nsigning_key = \"k.pem\"",
                "signing_key is set while token_flow = false",
            ),
        ] {
            let e = spec(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn loading_reads_the_files_and_checks_what_grants_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alice.pw"), "s3cret\n").unwrap();
        std::fs::write(dir.path().join("htpasswd"), "carol:$2y$05$abc\n").unwrap();
        let mut s = spec(
            "htpasswd = \"htpasswd\"\n[[user]]\nname = \"alice\"\npassword_file = \"alice.pw\"\n[[grant]]\nprincipals = [\"alice\", \"carol\", \"ci-*\"]\nrepositories = [\"*\"]\nactions = [\"pull-cached\", \"pull\"]",
        )
        .unwrap();
        s.rebase(dir.path());
        let cfg = s.load().unwrap();
        assert_eq!(
            cfg.users[0].password,
            UserPassword::Plain(Secret::new("s3cret"))
        );
        assert_eq!(
            cfg.grants[0].action,
            Action::Pull,
            "the strongest action named"
        );
        assert!(cfg.token_flow.is_some(), "on by default");
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let mut s = spec("[[grant]]\nprincipals = [\"alcie\"]\nrepositories = [\"*\"]\nactions = [\"pull\"]\n[[user]]\nname = \"alice\"\nbcrypt = \"$2y$05$abc\"").unwrap();
        s.rebase(dir.path());
        let e = s.load().unwrap_err();
        assert!(
            e.message()
                .contains("grant[0].principals[0] = \"alcie\": no user"),
            "{e}"
        );
        let mut s = spec("[[user]]\nname = \"x\"\npassword_file = \"missing\"").unwrap();
        s.rebase(dir.path());
        let e = s.load().unwrap_err();
        assert!(e.message().starts_with("user[0].password_file = "), "{e}");
        let mut s = spec(
            "[[oidc]]\nname = \"k8s\"\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"alice.pw\"",
        )
        .unwrap();
        s.rebase(dir.path());
        let e = s.load().unwrap_err();
        assert!(
            e.message().contains("oidc[0].jwks_file") && e.message().contains("not JSON"),
            "{e}"
        );
        let e = spec("service = \"x\"").unwrap().load().unwrap_err();
        assert!(e.message().contains("lets no one in"), "{e}");
    }
}
