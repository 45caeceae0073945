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

/// Refuse or only audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateMode {
    /// Refuse what the policy denies: `403 DENIED` with the top findings.
    Enforce,
    /// Serve it, logging and counting the refusal it would have been.
    Audit,
}

/// What a scanner failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnScannerError {
    /// Refuse (`403`), as for a denied image.
    Deny,
    /// Serve, logging it.
    Allow,
}

/// A rule's vulnerability policy.
#[derive(Debug, Clone)]
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
