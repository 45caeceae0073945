//! A rule's vulnerability policy: the severity scale, what denies, and
//! which manifests are scanned at all.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::gate::ScanRecord;

/// A vulnerability's severity, in the spec's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// Not yet rated.
    Unknown,
    /// Theoretical.
    Negligible,
    /// Hard to exploit.
    Low,
    /// Exploitable by many.
    Medium,
    /// Serious.
    High,
    /// World-burning.
    Critical,
}

impl Severity {
    /// Parses `low`, `Medium`, ... (any case).
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s.to_ascii_lowercase().as_str() {
            "unknown" => Severity::Unknown,
            "negligible" => Severity::Negligible,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One finding of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `CVE-2024-0001`.
    pub id: String,
    /// How bad.
    pub severity: Severity,
    /// The package it is in.
    #[serde(default)]
    pub package: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// The version that fixes it, if any.
    #[serde(default)]
    pub fix_version: String,
}

/// Refuse or only audit (`"enforce"`, `"audit"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum GateMode {
    /// Refuse what the policy denies: `403 DENIED` with the top findings.
    Enforce,
    /// Serve it, logging and counting the refusal it would have been.
    Audit,
}

/// What a scanner failure means (`"deny"`, `"allow"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum OnScannerError {
    /// Refuse (`403`), as for a denied image.
    Deny,
    /// Serve, logging it.
    Allow,
}

/// A rule's vulnerability policy.
///
/// With the `serde` feature it deserialises from a table and validates
/// itself: `scanner` (required), `deny_severity` (`low`, `medium`, `high`,
/// `critical`, any case; default `high`), `allow` (finding ids),
/// `mode` (`"enforce"` or `"audit"`), `rescan` (more than 0, default
/// `24h`), `on_scanner_error` (`"deny"` or `"allow"`) and `wait` (more
/// than 0, at most `10m`, default `60s`).
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use cache_upstream::scanner::{ScanPolicy, Severity};
///
/// let p: ScanPolicy = toml::from_str("scanner = \"trivy\"\ndeny_severity = \"Critical\"").unwrap();
/// assert_eq!(p.deny_severity, Severity::Critical);
/// let e = toml::from_str::<ScanPolicy>("scanner = \"trivy\"\nwait = \"1h\"").unwrap_err();
/// assert!(e.message().contains("wait = \"1h\": at most 10m"), "{e}");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPolicy {
    /// The scanner's name.
    pub scanner: String,
    /// Deny findings at or above this.
    pub deny_severity: Severity,
    /// Accepted risks: finding ids that never deny.
    pub allow: HashSet<String>,
    /// Enforce or audit.
    pub mode: GateMode,
    /// How old a scan may be before the digest is scanned again.
    pub rescan: Duration,
    /// What a scanner failure means.
    pub on_scanner_error: OnScannerError,
    /// How long a first pull waits for the scan before `503`.
    pub wait: Duration,
}

#[cfg(feature = "serde")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScan {
    scanner: String,
    deny_severity: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    mode: Option<GateMode>,
    rescan: Option<String>,
    on_scanner_error: Option<OnScannerError>,
    wait: Option<String>,
}

#[cfg(feature = "serde")]
impl<'de> Deserialize<'de> for ScanPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use cache_core::config::{ConfigError, positive};
        use serde::de::Error as _;
        let r = RawScan::deserialize(d)?;
        (|| {
            let deny_severity = match r.deny_severity.as_deref() {
                None => Severity::High,
                Some(s) => Severity::parse(s)
                    .filter(|s| *s >= Severity::Low)
                    .ok_or_else(|| {
                        ConfigError::new(format!(
                            "deny_severity = {s:?}: use low, medium, high or critical"
                        ))
                    })?,
            };
            let wait = positive("wait", &r.wait, Duration::from_secs(60))?;
            if wait > Duration::from_secs(600) {
                return Err(ConfigError::new(format!(
                    "wait = {:?}: at most 10m (clients give up sooner)",
                    r.wait.unwrap_or_default()
                )));
            }
            Ok(ScanPolicy {
                scanner: r.scanner,
                deny_severity,
                allow: r.allow.into_iter().collect(),
                mode: r.mode.unwrap_or(GateMode::Enforce),
                rescan: positive("rescan", &r.rescan, Duration::from_secs(86_400))?,
                on_scanner_error: r.on_scanner_error.unwrap_or(OnScannerError::Deny),
                wait,
            })
        })()
        .map_err(|e: ConfigError| D::Error::custom(e))
    }
}

/// Image config types: what a manifest an image scanner scans has.
const IMAGE_CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Whether a manifest is something a vulnerability scanner scans: an image
/// manifest (with an image config: not a Helm chart or another artifact)
/// whose layers are not all signature or attestation payloads.
pub(crate) fn scannable(parsed: &cache_core::manifest::ParsedManifest) -> bool {
    let image_config = parsed.config.as_ref().is_some_and(|c| {
        c.media_type
            .as_deref()
            .is_some_and(|t| IMAGE_CONFIG_TYPES.contains(&t))
    });
    image_config
        && !parsed.layers.is_empty()
        && !parsed.layers.iter().all(|l| {
            l.media_type
                .as_deref()
                .is_some_and(|t| cache_core::cosign::ARTIFACT_LAYER_TYPES.contains(&t))
        })
}

/// The findings that deny under `policy`, most severe first.
pub(crate) fn denying<'a>(policy: &ScanPolicy, rec: &'a ScanRecord) -> Vec<&'a Finding> {
    rec.findings
        .iter()
        .filter(|f| f.severity >= policy.deny_severity && !policy.allow.contains(&f.id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "serde")]
    #[test]
    fn scan_policies_read_every_key_and_name_the_offending_value() {
        let p: ScanPolicy = toml::from_str(
            "scanner = \"trivy\"\ndeny_severity = \"Critical\"\nallow = [\"CVE-1\"]\nmode = \"audit\"\nrescan = \"1h\"\non_scanner_error = \"allow\"\nwait = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(
            (
                p.deny_severity,
                p.mode,
                p.on_scanner_error,
                p.rescan,
                p.wait
            ),
            (
                Severity::Critical,
                GateMode::Audit,
                OnScannerError::Allow,
                Duration::from_secs(3600),
                Duration::from_secs(5)
            )
        );
        assert!(p.allow.contains("CVE-1"));
        let d: ScanPolicy = toml::from_str("scanner = \"trivy\"").unwrap();
        assert_eq!(
            (
                d.deny_severity,
                d.mode,
                d.on_scanner_error,
                d.rescan,
                d.wait
            ),
            (
                Severity::High,
                GateMode::Enforce,
                OnScannerError::Deny,
                Duration::from_secs(86_400),
                Duration::from_secs(60)
            )
        );
        for (extra, says) in [
            (
                "deny_severity = \"dire\"",
                "deny_severity = \"dire\": use low, medium, high or critical",
            ),
            (
                "deny_severity = \"negligible\"",
                "deny_severity = \"negligible\"",
            ),
            (
                "mode = \"strict\"",
                "unknown variant `strict`, expected `enforce` or `audit`",
            ),
            (
                "on_scanner_error = \"retry\"",
                "unknown variant `retry`, expected `deny` or `allow`",
            ),
            ("rescan = \"often\"", "rescan = \"often\": not a duration"),
            ("rescan = \"0s\"", "rescan = \"0s\": must be more than 0"),
            ("wait = \"1h\"", "wait = \"1h\": at most 10m"),
            ("colour = \"red\"", "unknown field `colour`"),
        ] {
            let e =
                toml::from_str::<ScanPolicy>(&format!("scanner = \"trivy\"\n{extra}")).unwrap_err();
            assert!(e.message().contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn images_are_scanned_and_other_artifacts_pass() {
        let parse = |config_type: &str, layer_type: &str| {
            let m = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": config_type, "digest": format!("sha256:{}", "a".repeat(64)), "size": 2},
                "layers": [{"mediaType": layer_type, "digest": format!("sha256:{}", "b".repeat(64)), "size": 3}],
            });
            cache_core::manifest::ParsedManifest::parse(m.to_string().as_bytes()).unwrap()
        };
        let oci = "application/vnd.oci.image.config.v1+json";
        let tar = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert!(scannable(&parse(oci, tar)));
        assert!(scannable(&parse(
            "application/vnd.docker.container.image.v1+json",
            tar
        )));
        // A Helm chart, a cosign signature: not images.
        assert!(!scannable(&parse(
            "application/vnd.cncf.helm.config.v1+json",
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
        )));
        assert!(!scannable(&parse(oci, cache_core::cosign::SIMPLE_SIGNING)));
        let index = serde_json::json!({"schemaVersion": 2, "manifests": []});
        assert!(!scannable(
            &cache_core::manifest::ParsedManifest::parse(index.to_string().as_bytes()).unwrap()
        ));
    }
}
