//! A vulnerability scanner as configured (feature `serde`): its name, the
//! adapter's URL, its token, and where it reaches the cache.

use std::path::{Path, PathBuf};

use cache_core::config::{ConfigError, label};
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

use super::ScannerClient;
use crate::PasswordSource;
use crate::config::{http_url, secret_source};

/// One scanner (a Harbor Scanner Adapter): `name` (1 to 64 letters, digits,
/// `.`, `_`, `-`: rules name it, scan records and metrics carry it), `url`,
/// one of `token`, `token_env`, `token_file` (optional), and `proxy_url`,
/// the URL the scanner pulls through the cache at (optional: the program
/// knows where it listens).
///
/// ```
/// use cache_upstream::scanner::ScannerConfig;
///
/// let s: ScannerConfig = toml::from_str("name = \"trivy\"\nurl = \"http://127.0.0.1:8080\"\ntoken_env = \"TRIVY_TOKEN\"")?;
/// assert_eq!(s.name, "trivy");
/// let e = toml::from_str::<ScannerConfig>("name = \"a b\"\nurl = \"http://x\"").unwrap_err();
/// assert!(e.message().contains("name = \"a b\""), "{e}");
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannerConfig {
    /// The name rules use.
    pub name: String,
    /// The adapter's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// Its bearer token, if any.
    pub token: Option<PasswordSource>,
    /// Where the scanner reaches the cache, if not the program's default.
    pub proxy_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScanner {
    name: String,
    url: String,
    token: Option<String>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    proxy_url: Option<String>,
}

impl<'de> Deserialize<'de> for ScannerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawScanner::deserialize(d)?;
        (|| {
            label("name", &r.name)?;
            http_url("url", &r.url)?;
            if let Some(u) = &r.proxy_url {
                http_url("proxy_url", u)?;
            }
            Ok(ScannerConfig {
                token: secret_source(
                    ["token", "token_env", "token_file"],
                    r.token,
                    r.token_env,
                    r.token_file,
                )?,
                name: r.name,
                url: r.url,
                proxy_url: r.proxy_url,
            })
        })()
        .map_err(|e: ConfigError| D::Error::custom(e))
    }
}

impl ScannerConfig {
    /// Makes a relative token file relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        if let Some(t) = &mut self.token {
            t.rebase(base);
        }
    }

    /// A client of the scanner, its token read now; it pulls from the
    /// cache at `proxy_url`, or at `default_proxy_url` without one.
    pub fn client(&self, default_proxy_url: &str) -> Result<ScannerClient, ConfigError> {
        let token = self
            .token
            .as_ref()
            .map(|t| t.resolve())
            .transpose()
            .map_err(|e| ConfigError::new(format!("token: {e}")))?;
        let proxy = self.proxy_url.as_deref().unwrap_or(default_proxy_url);
        http_url("proxy_url", proxy)?;
        ScannerClient::new(&self.name, &self.url, token, proxy).map_err(ConfigError::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanners_are_checked_and_their_tokens_redacted() {
        let scanner =
            |text: &str| toml::from_str::<ScannerConfig>(text).map_err(|e| e.message().to_owned());
        let s = scanner("name = \"trivy\"\nurl = \"http://127.0.0.1:8080\"\ntoken = \"t0ken\"")
            .unwrap();
        assert!(!format!("{s:?}").contains("t0ken"), "token redacted");
        let c = s.client("http://127.0.0.1:5000").unwrap();
        assert!(!format!("{c:?}").contains("t0ken"));
        let e = s.client("").unwrap_err();
        assert!(e.message().starts_with("proxy_url = \"\""), "{e}");
        for (text, says) in [
            (
                "name = \"a b\"\nurl = \"http://x\"",
                "name = \"a b\": 1 to 64",
            ),
            ("name = \"s\"\nurl = \"ftp://x\"", "url = \"ftp://x\""),
            (
                "name = \"s\"\nurl = \"http://x\"\nproxy_url = \"x:5000\"",
                "proxy_url = \"x:5000\"",
            ),
            (
                "name = \"s\"\nurl = \"http://x\"\ntoken = \"a\"\ntoken_env = \"B\"",
                "only one of token, token_env, token_file",
            ),
        ] {
            let e = scanner(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
