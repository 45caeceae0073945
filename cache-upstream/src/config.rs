//! Configuration (feature `serde`): [`ClientOptions`], a registry entry
//! ([`RegistryConfig`]) and a named credential set ([`CredentialSet`])
//! deserialise and validate themselves; errors name the key and the
//! value, as in `cache_core::config`.
//!
//! ```
//! use cache_upstream::{ClientOptions, RegistryConfig};
//!
//! let opts: ClientOptions = toml::from_str("connect_timeout = \"5s\"")?;
//! let hub: RegistryConfig = toml::from_str(
//!     "host = \"docker.io\"\nusername = \"me\"\npassword_env = \"HUB_TOKEN\"\nreserve = 10",
//! )?;
//! assert_eq!(hub.host.as_str(), "docker.io");
//! // What the entry names is read when the client is made:
//! // let client = hub.client(hub.options(&opts)?, hub.credentials()?)?;
//! # let _ = opts;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Paths are used as written; a program that reads them from a file makes
//! them relative to it with `rebase`.

use std::path::{Path, PathBuf};

use cache_core::Registry;
use cache_core::config::{ConfigError, SizeText, duration, positive, rebase, size};
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

use crate::auth::{Credentials, PasswordSource, Secret};
use crate::client::{ClientOptions, RegistryClient, TlsOptions};

/// Where a secret comes from, as three mutually exclusive keys (`password`,
/// `password_env`, `password_file`; `token`, ...): at most one.
pub(crate) fn secret_source(
    keys: [&str; 3],
    value: Option<String>,
    env: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<PasswordSource>, ConfigError> {
    match (value, env, file) {
        (None, None, None) => Ok(None),
        (Some(v), None, None) => Ok(Some(PasswordSource::Value(Secret::new(v)))),
        (None, Some(e), None) => Ok(Some(PasswordSource::Env(e))),
        (None, None, Some(f)) => Ok(Some(PasswordSource::File(f))),
        _ => Err(ConfigError::new(format!(
            "give only one of {}, {}, {}",
            keys[0], keys[1], keys[2]
        ))),
    }
}

/// Refuses an entry that is not a host name or address.
fn hosts(key: &str, list: &[String]) -> Result<(), ConfigError> {
    match list
        .iter()
        .find(|h| h.is_empty() || h.contains(['/', ' ', '@']))
    {
        Some(h) => Err(ConfigError::new(format!(
            "{key} entry {h:?} is not a host name or address"
        ))),
        None => Ok(()),
    }
}

/// An `http://` or `https://` URL.
pub(crate) fn http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(());
    }
    Err(ConfigError::new(format!(
        "{key} = {url:?} must start with http:// or https://"
    )))
}

impl PasswordSource {
    /// Makes a relative password file relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        if let PasswordSource::File(p) = self {
            rebase(p, base);
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientOptions {
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    read_timeout: Option<String>,
    max_manifest_size: Option<SizeText>,
    max_tag_list_size: Option<SizeText>,
    max_token_size: Option<SizeText>,
    max_cached_tokens: Option<usize>,
    default_token_ttl: Option<String>,
    #[serde(default)]
    redirect_hosts: Vec<String>,
    #[serde(default)]
    token_hosts: Vec<String>,
    endpoint_backoff: Option<String>,
    rate_limit_reserve: Option<u64>,
    user_agent: Option<String>,
}

const MIB: u64 = 1024 * 1024;

/// Every key optional (today's defaults), unknown keys refused: timeouts
/// more than 0, sizes from 1 byte up to 64MiB, `max_cached_tokens` at
/// least 1, host lists of host names, a visible ASCII `user_agent`. The
/// TLS settings are a registry's ([`RegistryConfig`]).
impl<'de> Deserialize<'de> for ClientOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawClientOptions::deserialize(d)?;
        (|| {
            let o = ClientOptions::default();
            let sz =
                |key, t: &Option<SizeText>, default: usize| size(key, t, default, 1..=64 * MIB);
            hosts("redirect_hosts", &r.redirect_hosts)?;
            hosts("token_hosts", &r.token_hosts)?;
            if let Some(ua) = &r.user_agent
                && (ua.is_empty() || !ua.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
            {
                return Err(ConfigError::new(format!(
                    "user_agent = {ua:?}: visible ASCII characters"
                )));
            }
            Ok(ClientOptions {
                connect_timeout: positive(
                    "connect_timeout",
                    &r.connect_timeout,
                    o.connect_timeout,
                )?,
                response_timeout: positive(
                    "response_timeout",
                    &r.response_timeout,
                    o.response_timeout,
                )?,
                read_timeout: positive("read_timeout", &r.read_timeout, o.read_timeout)?,
                max_manifest_size: sz(
                    "max_manifest_size",
                    &r.max_manifest_size,
                    o.max_manifest_size,
                )?,
                max_tag_list_size: sz(
                    "max_tag_list_size",
                    &r.max_tag_list_size,
                    o.max_tag_list_size,
                )?,
                max_token_size: sz("max_token_size", &r.max_token_size, o.max_token_size)?,
                max_cached_tokens: cache_core::config::count_at_least(
                    "max_cached_tokens",
                    r.max_cached_tokens,
                    o.max_cached_tokens,
                    1,
                )?,
                default_token_ttl: positive(
                    "default_token_ttl",
                    &r.default_token_ttl,
                    o.default_token_ttl,
                )?,
                redirect_hosts: r.redirect_hosts,
                token_hosts: r.token_hosts,
                endpoint_backoff: duration(
                    "endpoint_backoff",
                    &r.endpoint_backoff,
                    o.endpoint_backoff,
                )?,
                rate_limit_reserve: r.rate_limit_reserve,
                user_agent: r.user_agent.unwrap_or(o.user_agent),
                tls: o.tls,
            })
        })()
        .map_err(D::Error::custom)
    }
}

/// One upstream registry as configured: its name, endpoints, credentials,
/// the hosts it may redirect to or take tokens from, and its TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The name rule sources use (`host`: `docker.io`, `127.0.0.1:5001`).
    pub host: Registry,
    /// Its endpoints, tried in order (`endpoint`, or `endpoints`, mirrors
    /// first); empty: `https://HOST`.
    pub endpoints: Vec<String>,
    /// Stop spending the upstream's pull budget at this many left (`reserve`).
    pub reserve: Option<u64>,
    /// `username`, with `password`, `password_env` or `password_file`.
    pub credentials: Option<(String, PasswordSource)>,
    /// Hosts besides the endpoint's that redirects may lead to although
    /// they resolve to non-public addresses (`redirect_hosts`).
    pub redirect_hosts: Vec<String>,
    /// Token realm hosts that may receive the credentials (`token_hosts`).
    pub token_hosts: Vec<String>,
    /// PEM certificates of a private CA to trust (`ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Whether the system's roots are trusted too (`system_roots`, default
    /// true; `false` needs a `ca_file`).
    pub system_roots: bool,
    /// A client certificate chain and its key, PEM files
    /// (`client_certificate`, `client_key`: both or neither).
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// The most bytes a second all blob transfers from this registry
    /// receive together (`max_bandwidth = "200MiB/s"`; a number is bytes a
    /// second; at least 1KiB/s).
    pub max_bandwidth: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    host: String,
    endpoint: Option<String>,
    #[serde(default)]
    endpoints: Vec<String>,
    reserve: Option<u64>,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default)]
    redirect_hosts: Vec<String>,
    #[serde(default)]
    token_hosts: Vec<String>,
    ca_file: Option<PathBuf>,
    system_roots: Option<bool>,
    client_certificate: Option<PathBuf>,
    client_key: Option<PathBuf>,
    max_bandwidth: Option<SizeText>,
}

const PASSWORD_KEYS: [&str; 3] = ["password", "password_env", "password_file"];

impl TryFrom<RawRegistry> for RegistryConfig {
    type Error = ConfigError;

    fn try_from(r: RawRegistry) -> Result<Self, ConfigError> {
        let host = Registry::parse(&r.host)
            .map_err(|e| ConfigError::new(format!("host = {:?}: {e}", r.host)))?;
        if r.endpoint.is_some() && !r.endpoints.is_empty() {
            return Err(ConfigError::new("give endpoint or endpoints, not both"));
        }
        let endpoints: Vec<String> = r.endpoint.into_iter().chain(r.endpoints).collect();
        for ep in &endpoints {
            http_url("endpoint", ep)?;
        }
        hosts("redirect_hosts", &r.redirect_hosts)?;
        hosts("token_hosts", &r.token_hosts)?;
        let password = secret_source(PASSWORD_KEYS, r.password, r.password_env, r.password_file)?;
        let credentials = match (r.username, password) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "username needs a password, password_env or password_file",
                ));
            }
            (None, Some(_)) => return Err(ConfigError::new("a password needs a username")),
            (Some(u), Some(p)) => Some((u, p)),
        };
        let system_roots = r.system_roots.unwrap_or(true);
        if !system_roots && r.ca_file.is_none() {
            return Err(ConfigError::new(
                "system_roots = false needs a ca_file to trust instead",
            ));
        }
        let client_identity = match (r.client_certificate, r.client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c, k)),
            _ => {
                return Err(ConfigError::new(
                    "client_certificate and client_key go together",
                ));
            }
        };
        let max_bandwidth = match &r.max_bandwidth {
            None => None,
            Some(t) => {
                let rate = match t {
                    SizeText::Bytes(n) => Some(*n),
                    SizeText::Text(s) => parse_rate(s),
                };
                match rate {
                    Some(n) if n >= crate::bandwidth::MIN_RATE => Some(n),
                    Some(_) => {
                        return Err(ConfigError::new(format!(
                            "max_bandwidth = {t}: at least 1KiB/s"
                        )));
                    }
                    None => {
                        return Err(ConfigError::new(format!(
                            "max_bandwidth = {t}: not a rate (use e.g. \"200MiB/s\", \"1.5GB/s\")"
                        )));
                    }
                }
            }
        };
        Ok(RegistryConfig {
            host,
            endpoints,
            reserve: r.reserve,
            max_bandwidth,
            credentials,
            redirect_hosts: r.redirect_hosts,
            token_hosts: r.token_hosts,
            ca_file: r.ca_file,
            system_roots,
            client_identity,
        })
    }
}

/// A rate as written: bytes a second as a number, or a size with a unit
/// and an optional `/s` (`"200MiB/s"`, `"1.5GB/s"`, `"64KiB"`).
fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim();
    cache_core::config::parse_size(s.strip_suffix("/s").unwrap_or(s))
}

/// A `[[registry]]`-like table: `host` (required), `endpoint` or
/// `endpoints`, `reserve`, `max_bandwidth`, `username` with one of
/// `password`, `password_env`, `password_file`, `redirect_hosts`,
/// `token_hosts`, `ca_file`, `system_roots`, `client_certificate` with
/// `client_key`.
impl<'de> Deserialize<'de> for RegistryConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawRegistry::deserialize(d)?
            .try_into()
            .map_err(D::Error::custom)
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    crate::pem::read(key, path).map_err(ConfigError::new)
}

impl RegistryConfig {
    /// Makes relative file paths (password, certificates) relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        if let Some((_, p)) = &mut self.credentials {
            p.rebase(base);
        }
        if let Some(ca) = &mut self.ca_file {
            rebase(ca, base);
        }
        if let Some((c, k)) = &mut self.client_identity {
            rebase(c, base);
            rebase(k, base);
        }
    }

    /// The credentials, with the password read now (an error names the
    /// variable or file, never the value).
    pub fn credentials(&self) -> Result<Option<Credentials>, ConfigError> {
        self.credentials
            .as_ref()
            .map(|(user, pw)| {
                Credentials::new(user.clone(), pw).map_err(|e| ConfigError::new(e.to_string()))
            })
            .transpose()
    }

    /// `base` with this registry's hosts, reserve and TLS settings; the
    /// certificate files are read and checked now, so a file that does not
    /// parse (or a key that is not the certificate's) is an error naming it.
    pub fn options(&self, base: &ClientOptions) -> Result<ClientOptions, ConfigError> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut tls = TlsOptions {
            system_roots: self.system_roots,
            ..TlsOptions::default()
        };
        let certificates =
            |key: &str, path: &Path| crate::pem::certificates(key, path).map_err(ConfigError::new);
        if let Some(ca) = &self.ca_file {
            let (pem, _) = certificates("ca_file", ca)?;
            tls.ca_pem.push(String::from_utf8_lossy(&pem).into_owned());
        }
        if let Some((cert, key)) = &self.client_identity {
            let (chain, certs) = certificates("client_certificate", cert)?;
            let pem = read("client_key", key)?;
            let bad =
                |why: String| ConfigError::new(format!("client_certificate / client_key: {why}"));
            let der = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| bad(format!("{}: no usable private key: {e}", key.display())))?;
            let provider = rustls::crypto::ring::default_provider();
            rustls::sign::CertifiedKey::from_der(certs, der, &provider)
                .map_err(|e| bad(format!("{} and {}: {e}", cert.display(), key.display())))?;
            let both = format!(
                "{}\n{}",
                String::from_utf8_lossy(&chain),
                String::from_utf8_lossy(&pem)
            );
            tls.client_identity = Some(Secret::new(both));
        }
        Ok(ClientOptions {
            redirect_hosts: self.redirect_hosts.clone(),
            token_hosts: self.token_hosts.clone(),
            rate_limit_reserve: self.reserve,
            tls,
            ..base.clone()
        })
    }

    /// A client of this registry with `opts` (see [`options`](Self::options))
    /// and `credentials` (this entry's, or a credential set's).
    pub fn client(
        &self,
        opts: ClientOptions,
        credentials: Option<Credentials>,
    ) -> Result<RegistryClient, ConfigError> {
        let made = if self.endpoints.is_empty() {
            RegistryClient::new(self.host.clone(), None, credentials, opts)
        } else {
            let endpoints: Vec<&str> = self.endpoints.iter().map(String::as_str).collect();
            RegistryClient::with_endpoints(self.host.clone(), &endpoints, credentials, opts)
        };
        made.map_err(|e| ConfigError::new(format!("registry {}: {e}", self.host)))
    }
}

/// A registry entry with what it names read once: its client options
/// (certificate files), its own credentials (password) and its bandwidth
/// cap; it makes as many clients as it is asked for (one per credential
/// set, say), which share the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedRegistry {
    /// As configured.
    pub config: RegistryConfig,
    /// Its client options.
    pub options: ClientOptions,
    /// Its own credentials.
    pub credentials: Option<Credentials>,
    /// The bandwidth cap every client of it draws from, if configured.
    pub bandwidth: Option<std::sync::Arc<crate::Bandwidth>>,
}

impl RegistryConfig {
    /// Reads what the entry names, on `base` options (see
    /// [`options`](Self::options) and [`credentials`](Self::credentials)).
    pub fn prepare(self, base: &ClientOptions) -> Result<PreparedRegistry, ConfigError> {
        Ok(PreparedRegistry {
            options: self.options(base)?,
            credentials: self.credentials()?,
            bandwidth: self
                .max_bandwidth
                .map(|r| std::sync::Arc::new(crate::Bandwidth::new(r))),
            config: self,
        })
    }
}

impl PreparedRegistry {
    /// A client with `credentials` (the entry's own, or a credential
    /// set's), drawing from the registry's bandwidth cap.
    pub fn client(&self, credentials: Option<Credentials>) -> Result<RegistryClient, ConfigError> {
        let client = self.config.client(self.options.clone(), credentials)?;
        Ok(match &self.bandwidth {
            Some(cap) => client.with_bandwidth(cap.clone()),
            None => client,
        })
    }
}

/// A named credential set that rules refer to: `name` (1 to 64 letters,
/// digits, `.`, `_`, `-`: it becomes a metrics label), `username` and one
/// of `password`, `password_env`, `password_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSet {
    /// The name rules use.
    pub name: String,
    /// The user name.
    pub username: String,
    /// Where the password comes from.
    pub password: PasswordSource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentialSet {
    name: String,
    username: String,
    password: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for CredentialSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawCredentialSet::deserialize(d)?;
        (|| {
            cache_core::config::label("name", &r.name)?;
            let password =
                secret_source(PASSWORD_KEYS, r.password, r.password_env, r.password_file)?
                    .ok_or_else(|| {
                        ConfigError::new("username needs a password, password_env or password_file")
                    })?;
            Ok(CredentialSet {
                name: r.name,
                username: r.username,
                password,
            })
        })()
        .map_err(|e: ConfigError| D::Error::custom(e))
    }
}

impl CredentialSet {
    /// Makes a relative password file relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        self.password.rebase(base);
    }

    /// The credentials, with the password read now.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        Credentials::new(self.username.clone(), &self.password)
            .map_err(|e| ConfigError::new(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn registry(text: &str) -> Result<RegistryConfig, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn a_bandwidth_cap_reads_as_a_rate_shared_by_the_registry_s_clients() {
        for (text, rate) in [
            ("\"200MiB/s\"", 200 * 1024 * 1024),
            ("\"16MiB\"", 16 * 1024 * 1024),
            ("\"1.5GB/s\"", 1_500_000_000),
            ("4096", 4096),
        ] {
            let r = registry(&format!("host = \"h.io\"\nmax_bandwidth = {text}")).unwrap();
            assert_eq!(r.max_bandwidth, Some(rate), "{text}");
        }
        for (text, says) in [
            ("\"fast\"", "max_bandwidth = \"fast\": not a rate"),
            ("\"10MiB/h\"", "max_bandwidth = \"10MiB/h\": not a rate"),
            ("100", "max_bandwidth = 100: at least 1KiB/s"),
        ] {
            let e = registry(&format!("host = \"h.io\"\nmax_bandwidth = {text}")).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let r = registry(
            "host = \"h.io\"\nendpoint = \"http://127.0.0.1:1\"\nmax_bandwidth = \"1MiB/s\"",
        )
        .unwrap()
        .prepare(&ClientOptions::default())
        .unwrap();
        let (a, b) = (r.client(None).unwrap(), r.client(None).unwrap());
        let (a, b) = (a.bandwidth().unwrap(), b.bandwidth().unwrap());
        assert!(std::sync::Arc::ptr_eq(a, b), "one bucket for the registry");
        assert_eq!(a.rate(), 1024 * 1024);
        assert!(
            registry("host = \"h.io\"")
                .unwrap()
                .prepare(&ClientOptions::default())
                .unwrap()
                .bandwidth
                .is_none()
        );
    }

    #[test]
    fn client_options_read_their_keys_and_refuse_bad_values() {
        let o: ClientOptions = toml::from_str(
            "connect_timeout = \"5s\"\nresponse_timeout = \"1m\"\nmax_token_size = \"64KiB\"\nredirect_hosts = [\"blobs.internal\"]",
        )
        .unwrap();
        assert_eq!(
            (o.connect_timeout, o.response_timeout, o.max_token_size),
            (Duration::from_secs(5), Duration::from_secs(60), 64 * 1024)
        );
        assert_eq!(o.redirect_hosts, ["blobs.internal"]);
        for (text, says) in [
            (
                "connect_timeout = \"0s\"",
                "connect_timeout = \"0s\": must be more than 0",
            ),
            (
                "response_timeout = \"soon\"",
                "response_timeout = \"soon\": not a duration",
            ),
            (
                "max_manifest_size = \"1GiB\"",
                "max_manifest_size = \"1GiB\": a size",
            ),
            ("token_hosts = [\"a b\"]", "token_hosts entry \"a b\""),
            ("user_agent = \"\"", "user_agent = \"\""),
            ("tls = 1", "unknown field `tls`"),
        ] {
            let e = toml::from_str::<ClientOptions>(text).unwrap_err();
            assert!(e.message().contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn a_registry_entry_is_checked_and_names_the_offending_value() {
        let r = registry("host = \"docker.io\"\nendpoints = [\"https://m\", \"https://registry-1.docker.io\"]\nusername = \"me\"\npassword_file = \"pw\"\nreserve = 10").unwrap();
        assert_eq!(r.endpoints.len(), 2);
        assert_eq!(r.reserve, Some(10));
        let mut r2 = r.clone();
        r2.rebase(Path::new("/etc/proxy"));
        assert_eq!(
            r2.credentials.as_ref().unwrap().1,
            PasswordSource::File("/etc/proxy/pw".into())
        );
        for (text, says) in [
            (
                "host = \"docker.io\"\nusername = \"me\"",
                "username needs a password",
            ),
            (
                "host = \"docker.io\"\npassword = \"p\"",
                "a password needs a username",
            ),
            (
                "host = \"docker.io\"\nusername = \"me\"\npassword = \"a\"\npassword_env = \"B\"",
                "give only one of password, password_env, password_file",
            ),
            (
                "host = \"docker.io\"\nendpoint = \"ftp://x\"",
                "endpoint = \"ftp://x\" must start with http",
            ),
            (
                "host = \"docker.io\"\nendpoint = \"https://a\"\nendpoints = [\"https://b\"]",
                "endpoint or endpoints, not both",
            ),
            (
                "host = \"docker.io\"\nredirect_hosts = [\"http://x/\"]",
                "redirect_hosts entry \"http://x/\"",
            ),
            (
                "host = \"docker.io\"\nsystem_roots = false",
                "system_roots = false needs a ca_file",
            ),
            (
                "host = \"docker.io\"\nclient_certificate = \"c.pem\"",
                "client_certificate and client_key go together",
            ),
            ("host = \"not a host\"", "host = \"not a host\""),
            ("host = \"docker.io\"\ncolour = 1", "unknown field `colour`"),
        ] {
            let e = registry(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn certificate_files_are_read_when_options_are_made_and_errors_name_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
        let mut r = registry("host = \"r.example\"\nca_file = \"junk.pem\"").unwrap();
        r.rebase(dir.path());
        let e = r
            .options(&ClientOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca_file") && e.contains("junk.pem"), "{e}");
        let mut r = registry("host = \"r.example\"\nca_file = \"missing.pem\"").unwrap();
        r.rebase(dir.path());
        let e = r
            .options(&ClientOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca_file") && e.contains("missing.pem"), "{e}");
        let r = registry("host = \"r.example\"\nreserve = 3\ntoken_hosts = [\"auth.example\"]")
            .unwrap();
        let o = r.options(&ClientOptions::default()).unwrap();
        assert_eq!(
            (o.rate_limit_reserve, o.token_hosts.as_slice()),
            (Some(3), &["auth.example".to_owned()][..])
        );
    }

    #[test]
    fn credential_set_names_are_label_safe() {
        let set = |name: &str| {
            toml::from_str::<CredentialSet>(&format!(
                "name = {name:?}\nusername = \"u\"\npassword = \"p\""
            ))
            .map_err(|e| e.message().to_owned())
        };
        assert_eq!(
            set("hub.ro_1-x").unwrap().credentials().unwrap().username,
            "u"
        );
        for bad in ["a\"b", "a\nb", "", "a b", &"x".repeat(65)] {
            let e = set(bad).unwrap_err();
            assert!(e.contains(&format!("name = {bad:?}")), "{bad:?}: {e}");
        }
        let e = toml::from_str::<CredentialSet>("name = \"n\"\nusername = \"u\"").unwrap_err();
        assert!(e.message().contains("username needs a password"), "{e}");
        assert!(
            !format!("{:?}", set("n").unwrap()).contains("\"p\""),
            "redacted"
        );
    }
}
