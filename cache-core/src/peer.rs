//! Peer streaming between instances on one shared store: a follower reads
//! a blob from the instance that holds its fetch lease, as that instance
//! receives it, instead of waiting for it to be published.
//!
//! The lease holder names its peer address in the lease
//! (`engine/lease.rs`). An instance that finds a live lease with an
//! address, and was given [`Peering`] ([`CacheBuilder::peering`](crate::CacheBuilder::peering)),
//! reads the blob from that address through its [`PeerSource`] from the
//! offset it has, as a ranged, resumable stream. It stages and hashes the
//! bytes itself and holds its readers' last byte back until its own hash
//! checks out, exactly as on an upstream miss: a holder that sends wrong
//! bytes costs a failed transfer, never a wrong answer. If the holder
//! stops sending (killed, stalled past [`PeerConfig::timeout`]), the
//! follower continues from the store if the blob was published, or takes
//! the lease over once it lapses and resumes from the upstream with
//! `Range` at its offset. Without `Peering`, or for a lease that names no
//! address, followers wait for the blob to be published, as before.
//!
//! The engine side is here and in `engine/fetch.rs`; the peer endpoint is
//! `cache_core::server::PeerService` (feature `server`), the HTTP client
//! `cache_upstream::PeerClient`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::digest::Digest;
use crate::error::Result;
use crate::secret::Secret;
use crate::upstream::UpstreamBlob;

/// The path prefix of the peer API: `GET /peer/v1/blobs/<digest>`, with
/// `Range: bytes=N-` and `Authorization: Bearer <secret>`.
pub const PEER_PATH: &str = "/peer/v1/blobs/";

/// Where a follower reads a blob another instance is fetching.
#[async_trait]
pub trait PeerSource: Send + Sync + fmt::Debug {
    /// The bytes of `digest` from offset `from` to its end, from the
    /// instance at `peer` (the address its lease names), as that instance
    /// has received them so far and goes on receiving them.
    ///
    /// Contract: the answer's `size` is the whole blob's, its `range`
    /// starts at `from` (or earlier: the engine skips what it has) and
    /// ends at `size`. The bytes are unverified; the engine hashes them.
    /// The stream may end early or fail (the peer died, stalled or
    /// finished its fetch); the engine then resumes from where it got
    /// to, from the peer, the store or the upstream. A peer that holds no
    /// lease on `digest` (any more) answers with an error. One request
    /// per call: no retries here.
    async fn blob(&self, peer: &str, digest: &Digest, from: u64) -> Result<UpstreamBlob>;
}

/// What an engine needs to stream from its peers and to be streamed from.
#[derive(Debug, Clone)]
pub struct Peering {
    /// The address (`host:port`) this instance names in the leases it
    /// holds, where its peer endpoint answers.
    pub advertise: String,
    /// How this instance reads from the others.
    pub source: Arc<dyn PeerSource>,
    /// How long a peer may send nothing (or take to answer) before the
    /// follower gives up on it and resumes elsewhere.
    pub timeout: Duration,
}

/// `[storage] peer_*`: peer streaming between instances on one object
/// store. With the `serde` feature it deserialises from the keys
/// `peer_listen`, `peer_advertise`, `peer_secret`, `peer_timeout`,
/// `peer_max_connections` and, for mutual TLS, `peer_certificate`,
/// `peer_key`, `peer_ca` and `peer_server_name`, and validates itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Where the peer endpoint listens (`IP:PORT`).
    pub listen: SocketAddr,
    /// The address other instances reach it at (`host:port`), written
    /// into the leases this instance holds. In the configuration, the
    /// address or `{ env = "POD_IP", port = 5001 }` (the host from an
    /// environment variable, as a pod gets its IP from the downward API).
    pub advertise: String,
    /// The secret every instance presents to the others (`Authorization:
    /// Bearer`), at least 16 characters; printed as `<redacted>`. In the
    /// configuration, the value or `{ env = "VAR" }`.
    pub secret: Secret,
    /// How long a peer may send nothing before a follower resumes
    /// elsewhere (default 5 s).
    pub timeout: Duration,
    /// Peer connections served at once (default 64); peer streams at
    /// once are bounded by the same number.
    pub max_connections: usize,
    /// Mutual TLS between the instances (`peer_certificate`, `peer_key`,
    /// `peer_ca`, `peer_server_name`); `None` for plain HTTP.
    pub tls: Option<PeerTls>,
}

/// Mutual TLS for peer traffic: every instance serves its peer endpoint
/// with `certificate` and presents the same certificate to the others,
/// and accepts only certificates that chain to `ca`, in both directions.
/// Instances are reached at addresses that change (pod IPs), so a peer's
/// certificate is checked against `server_name`, not against the address
/// it was reached at. The certificate needs both the `serverAuth` and the
/// `clientAuth` extended key usage (or none). The files are PEM; reading
/// them is the server's and the client's business (this crate reads no
/// files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// This instance's certificate chain, leaf first.
    pub certificate: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
    /// The CA certificates every instance's certificate chains to.
    pub ca: std::path::PathBuf,
    /// The name every instance's certificate is valid for (default
    /// [`PeerTls::DEFAULT_SERVER_NAME`]).
    pub server_name: String,
}

impl PeerTls {
    /// The default `server_name`.
    pub const DEFAULT_SERVER_NAME: &'static str = "registry-proxy-peer";

    /// Makes relative paths relative to `base` (the configuration file's
    /// directory).
    #[cfg(feature = "serde")]
    pub fn rebase(&mut self, base: &std::path::Path) {
        for p in [&mut self.certificate, &mut self.key, &mut self.ca] {
            crate::config::rebase(p, base);
        }
    }
}

impl PeerConfig {
    /// The default `timeout`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default `max_connections`.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
    /// The shortest secret accepted.
    pub const MIN_SECRET: usize = 16;
    /// The configuration keys, as written in `[storage]`.
    pub const KEYS: &'static [&'static str] = &[
        "peer_listen",
        "peer_advertise",
        "peer_secret",
        "peer_timeout",
        "peer_max_connections",
        "peer_certificate",
        "peer_key",
        "peer_ca",
        "peer_server_name",
    ];

    /// Checks an advertised address: `host:port`, the host a DNS name or
    /// an IP address (IPv6 in brackets), no scheme, path or user part.
    pub fn check_advertise(addr: &str) -> std::result::Result<(), String> {
        let bad = || {
            format!(
                "{addr:?}: not a host:port address (e.g. \"10.0.0.7:5001\", \"proxy-0.proxy:5001\")"
            )
        };
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        if port.parse::<u16>().map_or(true, |p| p == 0) || host.is_empty() || addr.len() > 255 {
            return Err(bad());
        }
        let ok_host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        };
        if ok_host { Ok(()) } else { Err(bad()) }
    }
}

#[cfg(feature = "serde")]
mod de {
    use serde::{Deserialize, Deserializer};

    use super::*;
    use crate::config::{ConfigError, at_least};

    /// The secret as written, or `{ env = "VAR" }`.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum RawSecret {
        Value(String),
        Env { env: String },
    }

    /// The advertised address as written, or `{ env = "POD_IP", port =
    /// 5001 }`: the host from an environment variable (a pod's IP, from
    /// the downward API), the port given.
    enum RawAdvertise {
        Value(String),
        Env { env: String, port: u16 },
    }

    impl<'de> Deserialize<'de> for RawAdvertise {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct FromEnv {
                env: String,
                port: u16,
            }
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Form {
                Value(String),
                Env(FromEnv),
            }
            match Form::deserialize(d) {
                Ok(Form::Value(a)) => Ok(RawAdvertise::Value(a)),
                Ok(Form::Env(FromEnv { env, port })) => Ok(RawAdvertise::Env { env, port }),
                Err(_) => Err(serde::de::Error::custom(
                    "peer_advertise: \"host:port\" or { env = \"VAR\", port = 1 to 65535 }",
                )),
            }
        }
    }

    impl RawAdvertise {
        /// `host:port`, an IPv6 host in brackets.
        fn resolve(self) -> std::result::Result<String, ConfigError> {
            match self {
                RawAdvertise::Value(a) => Ok(a),
                RawAdvertise::Env { env, port } => {
                    let host = std::env::var(&env).map_err(|_| {
                        ConfigError::new(format!(
                            "peer_advertise = {{ env = {env:?} }}: the variable is not set"
                        ))
                    })?;
                    let host = host.trim();
                    Ok(match host.parse::<std::net::Ipv6Addr>() {
                        Ok(v6) => format!("[{v6}]:{port}"),
                        Err(_) => format!("{host}:{port}"),
                    })
                }
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        peer_listen: Option<String>,
        peer_advertise: Option<RawAdvertise>,
        peer_secret: Option<RawSecret>,
        peer_timeout: Option<String>,
        peer_max_connections: Option<usize>,
        peer_certificate: Option<std::path::PathBuf>,
        peer_key: Option<std::path::PathBuf>,
        peer_ca: Option<std::path::PathBuf>,
        peer_server_name: Option<String>,
    }

    /// The keys of [`PeerConfig::KEYS`]: `peer_listen`, `peer_advertise`
    /// and `peer_secret` all required, `peer_timeout` at least 100ms,
    /// `peer_max_connections` at least 1, `peer_certificate`, `peer_key`
    /// and `peer_ca` all or none, `peer_server_name` (a DNS name) only
    /// with them, unknown keys refused. Errors
    /// name the key and value (the secret's value never). Read it only
    /// when one of the keys is given: peer streaming is off otherwise.
    impl<'de> Deserialize<'de> for PeerConfig {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            let r = Raw::deserialize(d)?;
            match r.check() {
                Ok(Some(c)) => Ok(c),
                Ok(None) => Err(serde::de::Error::custom(
                    "peer streaming needs peer_listen, peer_advertise and peer_secret",
                )),
                Err(e) => Err(serde::de::Error::custom(e.message())),
            }
        }
    }

    /// "`what` needs a, b and c together; missing ...": for keys given
    /// only in part (`keys`: each key and whether it was given).
    fn together(what: &str, keys: [(&str, bool); 3]) -> ConfigError {
        let names = keys.map(|(k, _)| k);
        let missing: Vec<&str> = keys
            .into_iter()
            .filter_map(|(k, given)| (!given).then_some(k))
            .collect();
        ConfigError::new(format!(
            "{what} needs {}, {} and {} together; missing {}",
            names[0],
            names[1],
            names[2],
            missing.join(", ")
        ))
    }

    /// A DNS name: dot-separated labels of letters, digits and inner
    /// hyphens, 1 to 63 characters each, 253 at most in all.
    fn valid_server_name(name: &str) -> bool {
        name.len() <= 253 && crate::names::dns_labels(name)
    }

    impl Raw {
        fn check(self) -> std::result::Result<Option<PeerConfig>, ConfigError> {
            let (listen, advertise, secret) =
                match (self.peer_listen, self.peer_advertise, self.peer_secret) {
                    (None, None, None) => {
                        let others = [
                            ("peer_timeout", self.peer_timeout.is_some()),
                            ("peer_max_connections", self.peer_max_connections.is_some()),
                            ("peer_certificate", self.peer_certificate.is_some()),
                            ("peer_key", self.peer_key.is_some()),
                            ("peer_ca", self.peer_ca.is_some()),
                            ("peer_server_name", self.peer_server_name.is_some()),
                        ];
                        if let Some((key, _)) = others.iter().find(|(_, given)| *given) {
                            return Err(ConfigError::new(format!(
                                "{key} needs peer_listen, peer_advertise and peer_secret"
                            )));
                        }
                        return Ok(None);
                    }
                    (Some(l), Some(a), Some(s)) => (l, a, s),
                    (l, a, s) => {
                        return Err(together(
                            "peer streaming",
                            [
                                ("peer_listen", l.is_some()),
                                ("peer_advertise", a.is_some()),
                                ("peer_secret", s.is_some()),
                            ],
                        ));
                    }
                };
            let secret = match secret {
                RawSecret::Value(s) => s,
                RawSecret::Env { env } => std::env::var(&env).map_err(|_| {
                    ConfigError::new(format!(
                        "peer_secret = {{ env = {env:?} }}: the variable is not set"
                    ))
                })?,
            };
            let listen: SocketAddr = listen.parse().map_err(|_| {
                ConfigError::new(format!("peer_listen = {listen:?}: not an IP:PORT address"))
            })?;
            let advertise = advertise.resolve()?;
            PeerConfig::check_advertise(&advertise)
                .map_err(|e| ConfigError::new(format!("peer_advertise = {e}")))?;
            if secret.chars().count() < PeerConfig::MIN_SECRET || secret.trim() != secret {
                return Err(ConfigError::new(format!(
                    "peer_secret = <redacted>: at least {} characters, no surrounding spaces",
                    PeerConfig::MIN_SECRET
                )));
            }
            let timeout = at_least(
                "peer_timeout",
                &self.peer_timeout,
                PeerConfig::DEFAULT_TIMEOUT,
                Duration::from_millis(100),
            )?;
            let max_connections = self
                .peer_max_connections
                .unwrap_or(PeerConfig::DEFAULT_MAX_CONNECTIONS);
            if max_connections == 0 {
                return Err(ConfigError::new("peer_max_connections = 0: at least 1"));
            }
            let tls = match (self.peer_certificate, self.peer_key, self.peer_ca) {
                (None, None, None) => {
                    if self.peer_server_name.is_some() {
                        return Err(ConfigError::new(
                            "peer_server_name needs peer_certificate, peer_key and peer_ca",
                        ));
                    }
                    None
                }
                (Some(certificate), Some(key), Some(ca)) => {
                    let server_name = self
                        .peer_server_name
                        .unwrap_or_else(|| PeerTls::DEFAULT_SERVER_NAME.to_owned());
                    if !valid_server_name(&server_name) {
                        return Err(ConfigError::new(format!(
                            "peer_server_name = {server_name:?}: a DNS name"
                        )));
                    }
                    Some(PeerTls {
                        certificate,
                        key,
                        ca,
                        server_name,
                    })
                }
                (c, k, a) => {
                    return Err(together(
                        "peer TLS",
                        [
                            ("peer_certificate", c.is_some()),
                            ("peer_key", k.is_some()),
                            ("peer_ca", a.is_some()),
                        ],
                    ));
                }
            };
            Ok(Some(PeerConfig {
                listen,
                advertise,
                secret: Secret::new(secret),
                timeout,
                max_connections,
                tls,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_are_host_and_port() {
        for ok in ["127.0.0.1:5001", "proxy-0.proxy.ns.svc:5001", "[::1]:9"] {
            assert_eq!(PeerConfig::check_advertise(ok), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "http://a:1",
            "a:0",
            "a:x",
            ":5",
            "a b:1",
            "u@h:1",
            "h/p:1",
            "[zz]:1",
        ] {
            assert!(PeerConfig::check_advertise(bad).is_err(), "{bad}");
        }
    }

    #[cfg(feature = "serde")]
    use serde::Deserialize;

    #[cfg(feature = "serde")]
    #[test]
    fn keys_validate_and_the_secret_never_prints() {
        let parse = |t: &str| -> std::result::Result<Option<PeerConfig>, String> {
            let table: toml::Table = toml::from_str(t).unwrap();
            PeerConfig::deserialize(toml::Value::Table(table))
                .map(Some)
                .map_err(|e| e.to_string())
        };
        assert!(parse("").unwrap_err().contains("needs peer_listen"));
        let c = parse(
            "peer_listen = \"127.0.0.1:5001\"\npeer_advertise = \"a:5001\"\npeer_secret = \"0123456789abcdef\"\npeer_timeout = \"2s\"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.max_connections, 64);
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        let e = parse("peer_listen = \"127.0.0.1:5001\"").unwrap_err();
        assert!(e.contains("missing peer_advertise, peer_secret"), "{e}");
        let e = parse(
            "peer_listen = \"127.0.0.1:5001\"\npeer_advertise = \"a:5001\"\npeer_secret = \"short-secret\"",
        )
        .unwrap_err();
        assert!(
            e.contains("peer_secret = <redacted>") && !e.contains("short-secret"),
            "{e}"
        );
        let e = parse(
            "peer_listen = \"x\"\npeer_advertise = \"a:5001\"\npeer_secret = \"0123456789abcdef\"",
        )
        .unwrap_err();
        assert!(e.contains("peer_listen = \"x\""), "{e}");
        let e = parse("peer_listen = \"127.0.0.1:1\"\npeer_advertise = \"http://a\"\npeer_secret = \"0123456789abcdef\"")
            .unwrap_err();
        assert!(e.contains("peer_advertise = \"http://a\""), "{e}");
        let e = parse("peer_listen = \"127.0.0.1:1\"\npeer_advertise = \"a:1\"\npeer_secret = { env = \"PTC_PEER_SURELY_UNSET\" }")
            .unwrap_err();
        assert!(e.contains("PTC_PEER_SURELY_UNSET"), "{e}");
        let e = parse("peer_listen = \"127.0.0.1:1\"\npeer_advertise = { env = \"PTC_POD_IP_SURELY_UNSET\", port = 5001 }\npeer_secret = \"0123456789abcdef\"")
            .unwrap_err();
        assert!(
            e.contains("peer_advertise = { env = \"PTC_POD_IP_SURELY_UNSET\" }"),
            "{e}"
        );
        // A variable every test process has: its value is no host, so the
        // address it makes is refused, naming what was made.
        let e = parse("peer_listen = \"127.0.0.1:1\"\npeer_advertise = { env = \"PATH\", port = 5001 }\npeer_secret = \"0123456789abcdef\"")
            .unwrap_err();
        assert!(
            e.contains("peer_advertise = ") && e.contains(":5001\""),
            "{e}"
        );
        for bad in [
            "{ env = \"POD_IP\" }",
            "{ env = \"POD_IP\", port = 70000 }",
            "{ env = \"POD_IP\", port = 1, host = \"x\" }",
        ] {
            let e = parse(&format!("peer_listen = \"127.0.0.1:1\"\npeer_advertise = {bad}\npeer_secret = \"0123456789abcdef\""))
                .unwrap_err();
            assert!(
                e.contains("{ env = \"VAR\", port = 1 to 65535 }"),
                "{bad}: {e}"
            );
        }
        let e = parse("peer_timeout = \"1s\"").unwrap_err();
        assert!(e.contains("peer_timeout needs peer_listen"), "{e}");
        let e = parse("peer_ca = \"ca.pem\"").unwrap_err();
        assert!(e.contains("peer_ca needs peer_listen"), "{e}");
        let e = parse("peer_secrets = \"x\"").unwrap_err();
        assert!(e.contains("peer_secrets"), "{e}");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn peer_tls_takes_its_three_files_together_and_a_dns_name() {
        let base = "peer_listen = \"127.0.0.1:5001\"\npeer_advertise = \"a:5001\"\npeer_secret = \"0123456789abcdef\"\n";
        let parse = |extra: &str| -> std::result::Result<PeerConfig, String> {
            let table: toml::Table = toml::from_str(&format!("{base}{extra}")).unwrap();
            PeerConfig::deserialize(toml::Value::Table(table)).map_err(|e| e.to_string())
        };
        assert_eq!(parse("").unwrap().tls, None);
        let files =
            "peer_certificate = \"peer.pem\"\npeer_key = \"peer-key.pem\"\npeer_ca = \"ca.pem\"\n";
        let mut tls = parse(files).unwrap().tls.unwrap();
        assert_eq!(tls.server_name, PeerTls::DEFAULT_SERVER_NAME);
        tls.rebase(std::path::Path::new("/etc/proxy"));
        assert_eq!(tls.key, std::path::Path::new("/etc/proxy/peer-key.pem"));
        let named = parse(&format!("{files}peer_server_name = \"peers.cache.svc\"\n")).unwrap();
        assert_eq!(named.tls.unwrap().server_name, "peers.cache.svc");
        let e = parse("peer_certificate = \"peer.pem\"\n").unwrap_err();
        assert!(e.contains("missing peer_key, peer_ca"), "{e}");
        let e = parse("peer_server_name = \"x\"\n").unwrap_err();
        assert!(e.contains("peer_server_name needs peer_certificate"), "{e}");
        for bad in ["", "a..b", "-a", "a b", "10.0.0.1:5001", &"x".repeat(64)] {
            let e = parse(&format!("{files}peer_server_name = {bad:?}\n")).unwrap_err();
            assert!(
                e.contains("peer_server_name = ") && e.contains("a DNS name"),
                "{bad}: {e}"
            );
        }
    }
}
