//! A webhook as configured (feature `serde`): `[[webhook]]`.

use std::path::{Path, PathBuf};

use cache_core::config::{ConfigError, duration, label, positive};
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};
use url::Url;

use super::{EventType, Format, WebhookSettings, check_url};
use crate::PasswordSource;
use crate::config::secret_source;

/// One `[[webhook]]`: `name` (1 to 64 letters, digits, `.`, `_`, `-`;
/// logs and metrics carry it), `url`, `events` (default: every type),
/// `format` (`cloudevents`, the default, or `json`), one of `secret`,
/// `secret_env`, `secret_file` (optional: the body's HMAC-SHA256 goes in
/// `signature_header`, default `X-Signature-256`), `source` (the
/// CloudEvents source), `queue`, `concurrency`, `max_attempts`, `timeout`,
/// `backoff`, `max_backoff`, and `allow_hosts` (hosts that may be
/// internal addresses: without it a loopback or private receiver is
/// refused). Errors name the key and the value.
///
/// ```
/// use cache_upstream::webhook::WebhookConfig;
///
/// let w: WebhookConfig = toml::from_str(r#"
///     name = "chat"
///     url = "https://hooks.example.com/registry"
///     events = ["admission.denied", "scan.verdict_changed"]
///     secret_env = "WEBHOOK_SECRET"
/// "#)?;
/// assert_eq!(w.webhook.name, "chat");
/// let e = toml::from_str::<WebhookConfig>("name = \"x\"\nurl = \"http://10.0.0.7/in\"").unwrap_err();
/// assert!(e.message().contains("allow_hosts"), "{e}");
/// let e = toml::from_str::<WebhookConfig>("name = \"x\"\nurl = \"https://h.example\"\nevents = [\"pull\"]").unwrap_err();
/// assert!(e.message().contains("events = [\"pull\"]"), "{e}");
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The webhook as configured, but for its secret (`None` here: it is
    /// read by [`settings`](Self::settings)).
    pub webhook: WebhookSettings,
    /// Where the signature's key comes from, if notices are signed.
    pub secret: Option<PasswordSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: String,
    url: String,
    events: Option<Vec<String>>,
    format: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    signature_header: Option<String>,
    source: Option<String>,
    queue: Option<usize>,
    concurrency: Option<usize>,
    max_attempts: Option<u32>,
    timeout: Option<String>,
    backoff: Option<String>,
    max_backoff: Option<String>,
    #[serde(default)]
    allow_hosts: Vec<String>,
}

impl<'de> Deserialize<'de> for WebhookConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawWebhook::deserialize(d)?;
        (|| {
            label("name", &r.name)?;
            let url = Url::parse(&r.url)
                .map_err(|e| ConfigError::new(format!("url = {:?}: {e}", r.url)))?;
            if let Some(h) = r
                .allow_hosts
                .iter()
                .find(|h| h.is_empty() || h.contains(['/', ' ', '@']))
            {
                return Err(ConfigError::new(format!(
                    "allow_hosts entry {h:?} is not a host name or address"
                )));
            }
            check_url(&url, &r.allow_hosts).map_err(ConfigError::new)?;
            let events = match &r.events {
                None => EventType::ALL.to_vec(),
                Some(list) => {
                    let mut out = Vec::new();
                    for name in list {
                        let t = EventType::parse(name).ok_or_else(|| {
                            let known: Vec<&str> =
                                EventType::ALL.iter().map(|t| t.as_str()).collect();
                            ConfigError::new(format!(
                                "events = {list:?}: {name:?} is not an event type ({})",
                                known.join(", ")
                            ))
                        })?;
                        if !out.contains(&t) {
                            out.push(t);
                        }
                    }
                    out
                }
            };
            let format = match r.format.as_deref() {
                None | Some("cloudevents") => Format::CloudEvents,
                Some("json") => Format::Json,
                Some(f) => {
                    return Err(ConfigError::new(format!(
                        "format = {f:?}: \"cloudevents\" or \"json\""
                    )));
                }
            };
            let defaults = WebhookSettings::new(&r.name, url.clone());
            let mut s = WebhookSettings {
                events,
                format,
                signature_header: r
                    .signature_header
                    .unwrap_or(defaults.signature_header.clone()),
                source: r.source.unwrap_or(defaults.source.clone()),
                queue: r.queue.unwrap_or(defaults.queue),
                concurrency: r.concurrency.unwrap_or(defaults.concurrency),
                max_attempts: r.max_attempts.unwrap_or(defaults.max_attempts),
                timeout: positive("timeout", &r.timeout, defaults.timeout)?,
                backoff: duration("backoff", &r.backoff, defaults.backoff)?,
                max_backoff: duration("max_backoff", &r.max_backoff, defaults.max_backoff)?,
                allow_hosts: r.allow_hosts,
                ..defaults
            };
            s.max_backoff = s.max_backoff.max(s.backoff);
            s.check().map_err(ConfigError::new)?;
            Ok(WebhookConfig {
                secret: secret_source(
                    ["secret", "secret_env", "secret_file"],
                    r.secret,
                    r.secret_env,
                    r.secret_file,
                )?,
                webhook: s,
            })
        })()
        .map_err(|e: ConfigError| D::Error::custom(e))
    }
}

impl WebhookConfig {
    /// The `[[webhook]]` entries of a file: their names unique, their
    /// secret files relative to `base`. An error names the entry
    /// (`webhook[1] (name = "chat")`).
    pub fn prepare(mut list: Vec<WebhookConfig>, base: &Path) -> Result<Vec<Self>, ConfigError> {
        if list.len() > super::MAX_WEBHOOKS {
            return Err(ConfigError::new(format!(
                "{} [[webhook]] entries: at most {}",
                list.len(),
                super::MAX_WEBHOOKS
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, w) in list.iter_mut().enumerate() {
            if !seen.insert(w.webhook.name.clone()) {
                return Err(ConfigError::new(format!(
                    "webhook[{i}] (name = {:?}): name appears twice",
                    w.webhook.name
                )));
            }
            w.rebase(base);
        }
        Ok(list)
    }

    /// Makes a relative secret file relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        if let Some(s) = &mut self.secret {
            s.rebase(base);
        }
    }

    /// The webhook's settings, its secret read now (an error names the
    /// variable or file, never the value).
    pub fn settings(&self) -> Result<WebhookSettings, ConfigError> {
        let secret = self
            .secret
            .as_ref()
            .map(|s| s.resolve())
            .transpose()
            .map_err(|e| ConfigError::new(format!("secret: {e}")))?;
        Ok(WebhookSettings {
            secret,
            ..self.webhook.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hook(text: &str) -> Result<WebhookConfig, String> {
        toml::from_str::<WebhookConfig>(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn defaults_and_every_key() {
        let w = hook("name = \"a\"\nurl = \"https://h.example/in\"").unwrap();
        assert_eq!(w.webhook.events, EventType::ALL.to_vec());
        assert_eq!(w.webhook.format, Format::CloudEvents);
        assert_eq!(
            (
                w.webhook.queue,
                w.webhook.concurrency,
                w.webhook.max_attempts
            ),
            (1000, 2, 5)
        );
        let w = hook(
            "name = \"a\"\nurl = \"http://127.0.0.1:9/in\"\nevents = [\"pull.miss\", \"gc.finished\"]\nformat = \"json\"\nsecret = \"s3cret\"\nsignature_header = \"X-Hub-Signature-256\"\nsource = \"/proxy-a\"\nqueue = 10\nconcurrency = 1\nmax_attempts = 2\ntimeout = \"2s\"\nbackoff = \"100ms\"\nmax_backoff = \"1s\"\nallow_hosts = [\"127.0.0.1\"]",
        )
        .unwrap();
        assert_eq!(
            w.webhook.events,
            vec![EventType::PullMiss, EventType::GcFinished]
        );
        assert_eq!(w.webhook.format, Format::Json);
        assert_eq!(w.webhook.timeout, Duration::from_secs(2));
        assert!(!format!("{w:?}").contains("s3cret"), "secret redacted");
        let s = w.settings().unwrap();
        assert_eq!(s.secret.unwrap().expose(), "s3cret");
        assert_eq!(s.signature_header, "X-Hub-Signature-256");
    }

    #[test]
    fn bad_values_are_refused_by_key_and_value() {
        for (text, says) in [
            (
                "name = \"a b\"\nurl = \"https://h.example\"",
                "name = \"a b\"",
            ),
            (
                "name = \"a\"\nurl = \"h.example/in\"",
                "url = \"h.example/in\"",
            ),
            (
                "name = \"a\"\nurl = \"http://192.168.1.2/in\"",
                "allow_hosts",
            ),
            (
                "name = \"a\"\nurl = \"https://h.example\"\nformat = \"xml\"",
                "format = \"xml\"",
            ),
            (
                "name = \"a\"\nurl = \"https://h.example\"\nqueue = 0",
                "queue = 0",
            ),
            (
                "name = \"a\"\nurl = \"https://h.example\"\ntimeout = \"0s\"",
                "timeout = \"0s\"",
            ),
            (
                "name = \"a\"\nurl = \"https://h.example\"\nsecret = \"a\"\nsecret_env = \"B\"",
                "only one of secret, secret_env, secret_file",
            ),
            (
                "name = \"a\"\nurl = \"https://h.example\"\nallow_hosts = [\"a/b\"]",
                "allow_hosts entry \"a/b\"",
            ),
            (
                "name = \"a\"\nurl = \"https://h.example\"\nevents = []",
                "events is empty",
            ),
            (
                "name = \"a\"\nurl = \"https://h.example\"\ncolour = 1",
                "colour",
            ),
        ] {
            let e = hook(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let w = hook(
            "name = \"a\"\nurl = \"https://h.example\"\nsecret_env = \"NO_SUCH_VAR_FOR_THIS_TEST\"",
        )
        .unwrap();
        let e = w.settings().unwrap_err().to_string();
        assert!(e.contains("NO_SUCH_VAR_FOR_THIS_TEST"), "{e}");
    }
}
