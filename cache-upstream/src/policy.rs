//! Where an upstream may send us, and where our credentials may go.
//!
//! An upstream is not trusted to name hosts: a redirect or a token realm
//! could point the cache at an internal service (SSRF) or collect the
//! credentials configured for the registry (as in containerd's
//! CVE-2020-15157). So:
//!
//! * Loopback, private, link-local, unique-local, CGNAT and unspecified
//!   addresses are reached only through the endpoint's own host or a host
//!   the configuration lists. The check runs on the addresses a name
//!   *resolves to*, when connecting ([`GuardedResolver`]), so a public name
//!   that resolves to 10.0.0.1 is refused too; IP literals are checked
//!   before the request ([`AddressPolicy::check_url`]).
//! * Credentials go to a token realm only on the endpoint's host, its
//!   registrable domain (`auth.docker.io` for `registry-1.docker.io`), or a
//!   listed token host, and only over https unless the endpoint itself is
//!   http ([`AddressPolicy::may_send_credentials`]).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

/// A connection target refused by the address policy.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The host as the upstream named it.
    pub host: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused to connect to {}: {}", self.host, self.reason)
    }
}

impl std::error::Error for Refused {}

/// Whether an address is one anybody on the internet could reach: not
/// loopback, private, link-local, unique-local, shared (CGNAT),
/// unspecified, multicast, broadcast or documentation space.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0, 0]))
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240) // reserved
}

/// The hosts one registry client may reach on non-public addresses, and
/// the rule for sending credentials.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    /// Lower-cased host names and IP literals (as `url` prints them).
    trusted: Arc<HashSet<String>>,
    token_hosts: Arc<HashSet<String>>,
}

fn host_key(h: &str) -> String {
    h.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

impl AddressPolicy {
    /// The policy of a client for `endpoint`: its own host, `redirect_hosts`
    /// and `token_hosts` may be internal; `token_hosts` may also receive
    /// credentials.
    pub fn new(endpoint: &Url, redirect_hosts: &[String], token_hosts: &[String]) -> Self {
        Self::for_endpoints(std::slice::from_ref(endpoint), redirect_hosts, token_hosts)
    }

    /// As [`new`](Self::new), for a client with several endpoints: each
    /// one's host may be internal.
    pub fn for_endpoints(
        endpoints: &[Url],
        redirect_hosts: &[String],
        token_hosts: &[String],
    ) -> Self {
        let mut trusted: HashSet<String> = redirect_hosts.iter().map(|h| host_key(h)).collect();
        trusted.extend(token_hosts.iter().map(|h| host_key(h)));
        trusted.extend(endpoints.iter().filter_map(|e| e.host_str()).map(host_key));
        AddressPolicy {
            trusted: Arc::new(trusted),
            token_hosts: Arc::new(token_hosts.iter().map(|h| host_key(h)).collect()),
        }
    }

    /// Whether `host` may resolve to non-public addresses.
    pub fn is_trusted(&self, host: &str) -> bool {
        self.trusted.contains(&host_key(host))
    }

    /// Checks a URL an upstream named (redirect target, token realm) before
    /// any request: http(s), and an IP literal must be public unless the
    /// host is trusted. Names are checked when they resolve.
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        let refuse = |reason: &str| Refused {
            host: url.host_str().unwrap_or("").to_owned(),
            reason: reason.to_owned(),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse("not an http(s) URL"));
        }
        let ip = match url.host() {
            None => return Err(refuse("no host")),
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        };
        if is_public(ip) || self.is_trusted(url.host_str().unwrap_or("")) {
            Ok(())
        } else {
            Err(refuse(
                "a non-public address that is neither the registry's endpoint nor listed in its redirect_hosts",
            ))
        }
    }

    /// Whether the credentials configured for this registry may be sent to
    /// a token realm that `endpoint` named: `Err` says why not.
    pub fn may_send_credentials(&self, endpoint: &Url, realm: &Url) -> Result<(), String> {
        let Some(host) = realm.host_str().map(host_key) else {
            return Err("the realm has no host".into());
        };
        let endpoint_host = endpoint.host_str().map(host_key).unwrap_or_default();
        if realm.scheme() != "https" && endpoint.scheme() == "https" {
            return Err(format!(
                "the realm {realm} is not https while the registry endpoint is"
            ));
        }
        if host == endpoint_host || self.token_hosts.contains(&host) {
            return Ok(());
        }
        let same_domain = matches!(realm.host(), Some(Host::Domain(_)))
            && matches!(endpoint.host(), Some(Host::Domain(_)))
            && psl::domain_str(&host).is_some()
            && psl::domain_str(&host) == psl::domain_str(&endpoint_host);
        if same_domain {
            Ok(())
        } else {
            Err(format!(
                "the realm's host {host} is neither the registry's ({endpoint_host}), on its registrable domain, nor listed in token_hosts"
            ))
        }
    }
}

/// A DNS resolver for reqwest that drops non-public addresses of hosts the
/// policy does not trust, and refuses a name left with none.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: AddressPolicy,
    /// What a refusal says of the host, after "it resolves only to
    /// non-public addresses (...) and".
    pub(crate) hint: &'static str,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let trusted = self.policy.is_trusted(&host);
        let hint = self.hint;
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| trusted || is_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                let shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                return Err(Box::new(Refused {
                    host: host.clone(),
                    reason: format!(
                        "it resolves only to non-public addresses ({}) and {hint}",
                        shown.join(", ")
                    ),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The [`Refused`] somewhere in an error's source chain.
pub(crate) fn refused_in(e: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip(a)), "{a}");
        }
        for a in ["8.8.8.8", "104.18.1.1", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(ip(a)), "{a}");
        }
    }

    #[test]
    fn literal_redirect_targets_are_checked_and_listed_hosts_pass() {
        let ep = Url::parse("http://127.0.0.1:5000").unwrap();
        let p = AddressPolicy::new(&ep, &["127.0.0.3".into()], &[]);
        let ok = |u: &str| p.check_url(&Url::parse(u).unwrap());
        assert!(
            ok("http://127.0.0.1:9/x").is_ok(),
            "the endpoint's own host"
        );
        assert!(ok("http://127.0.0.3:9/x").is_ok(), "listed");
        assert!(ok("https://8.8.8.8/x").is_ok(), "public");
        assert!(
            ok("https://cdn.example.com/x").is_ok(),
            "names resolve later"
        );
        let e = ok("http://127.0.0.2:9/x").unwrap_err();
        assert_eq!(e.host, "127.0.0.2");
        assert!(ok("http://[::1]:9/x").is_err());
        assert!(ok("http://169.254.169.254/latest/meta-data").is_err());
        assert!(ok("file:///etc/passwd").is_err());
    }

    #[test]
    fn credentials_go_only_to_the_registrys_own_domain_or_listed_hosts() {
        let hub_url = Url::parse("https://registry-1.docker.io").unwrap();
        let hub = AddressPolicy::new(&hub_url, &[], &[]);
        let ok = |p: &AddressPolicy, u: &str| {
            let ep = if u.contains("docker") || u.contains("evil") {
                hub_url.clone()
            } else if u.starts_with("http://127") {
                Url::parse("http://127.0.0.1:5000").unwrap()
            } else {
                Url::parse("https://registry.example.co.uk").unwrap()
            };
            p.may_send_credentials(&ep, &Url::parse(u).unwrap())
        };
        assert!(ok(&hub, "https://auth.docker.io/token").is_ok());
        assert!(ok(&hub, "https://registry-1.docker.io/token").is_ok());
        assert!(
            ok(&hub, "http://auth.docker.io/token").is_err(),
            "not https"
        );
        assert!(ok(&hub, "https://evil.example/token").is_err());
        assert!(ok(&hub, "https://docker.io.evil.example/token").is_err());
        let uk = AddressPolicy::new(
            &Url::parse("https://registry.example.co.uk").unwrap(),
            &[],
            &["login.example.net".into()],
        );
        assert!(ok(&uk, "https://auth.example.co.uk/t").is_ok());
        assert!(
            ok(&uk, "https://other.co.uk/t").is_err(),
            "a public suffix is not a domain"
        );
        assert!(ok(&uk, "https://login.example.net/t").is_ok(), "listed");
        let plain = AddressPolicy::new(&Url::parse("http://127.0.0.1:5000").unwrap(), &[], &[]);
        assert!(ok(&plain, "http://127.0.0.1:5000/token").is_ok());
        assert!(ok(&plain, "http://127.0.0.2:5000/token").is_err());
    }
}
