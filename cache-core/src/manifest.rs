//! Just enough manifest parsing to know what a manifest references: its
//! config and layers, or an index's platform manifests.

use std::fmt;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::upstream::media_types;

/// A content descriptor inside a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The referenced content's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its media type, if given.
    pub media_type: Option<String>,
    /// Other places the content may be fetched from (`urls`; "foreign"
    /// layers). Such content is not the registry's to vouch for.
    pub urls: Vec<String>,
}

/// An OS/architecture pair from an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ... if given.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('/');
        let os = it.next().filter(|x| !x.is_empty())?.to_owned();
        let architecture = it.next().filter(|x| !x.is_empty())?.to_owned();
        let variant = it.next().map(str::to_owned);
        if it.next().is_some() {
            return None;
        }
        Some(Platform {
            os,
            architecture,
            variant,
        })
    }

    /// Whether `self` (a pattern) admits `other`: a pattern without a
    /// variant admits every variant.
    pub fn admits(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a manifest references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedManifest {
    /// The `mediaType` field, if present.
    pub media_type: Option<String>,
    /// An image manifest's config.
    pub config: Option<Descriptor>,
    /// An image manifest's layers.
    pub layers: Vec<Descriptor>,
    /// An index's manifests, with their platforms.
    pub manifests: Vec<(Descriptor, Option<Platform>)>,
    /// The `subject`, if any.
    pub subject: Option<Descriptor>,
}

impl ParsedManifest {
    /// Parses a manifest or index (OCI or Docker schema 2).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let invalid = |reason: String| Error::ManifestInvalid { reason };
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("not a JSON object".into()))?;
        let desc = |d: &serde_json::Value, what: &str| -> Result<Descriptor> {
            let digest = d
                .get("digest")
                .and_then(|x| x.as_str())
                .ok_or_else(|| invalid(format!("{what} has no digest")))?;
            let digest = Digest::parse(digest).map_err(|e| invalid(format!("{what}: {e}")))?;
            let size = d
                .get("size")
                .and_then(|x| x.as_u64())
                .ok_or_else(|| invalid(format!("{what} has no valid size")))?;
            Ok(Descriptor {
                digest,
                size,
                media_type: d
                    .get("mediaType")
                    .and_then(|x| x.as_str())
                    .map(str::to_owned),
                urls: d
                    .get("urls")
                    .and_then(|u| u.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        };
        let mut out = ParsedManifest {
            media_type: obj
                .get("mediaType")
                .and_then(|x| x.as_str())
                .map(str::to_owned),
            ..Default::default()
        };
        if let Some(c) = obj.get("config") {
            out.config = Some(desc(c, "config")?);
        }
        if let Some(ls) = obj.get("layers") {
            let ls = ls
                .as_array()
                .ok_or_else(|| invalid("layers is not an array".into()))?;
            for (i, l) in ls.iter().enumerate() {
                out.layers.push(desc(l, &format!("layer {i}"))?);
            }
        }
        if let Some(ms) = obj.get("manifests") {
            let ms = ms
                .as_array()
                .ok_or_else(|| invalid("manifests is not an array".into()))?;
            for (i, m) in ms.iter().enumerate() {
                let d = desc(m, &format!("manifest {i}"))?;
                let p = m.get("platform").and_then(|p| {
                    Some(Platform {
                        os: p.get("os")?.as_str()?.to_owned(),
                        architecture: p.get("architecture")?.as_str()?.to_owned(),
                        variant: p.get("variant").and_then(|v| v.as_str()).map(str::to_owned),
                    })
                });
                out.manifests.push((d, p));
            }
        }
        if let Some(s) = obj.get("subject") {
            out.subject = Some(desc(s, "subject")?);
        }
        if out.config.is_none() && out.manifests.is_empty() && obj.get("manifests").is_none() {
            return Err(invalid(
                "neither an image manifest (config) nor an index (manifests)".into(),
            ));
        }
        Ok(out)
    }

    /// Whether this is an index (a list of manifests).
    pub fn is_index(&self) -> bool {
        self.config.is_none()
    }

    /// Every digest this manifest references.
    pub fn referenced(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter())
            .chain(self.manifests.iter().map(|(d, _)| d))
            .chain(self.subject.iter())
    }

    /// The media type to serve this manifest with: the upstream's declared
    /// type when it is a manifest media type, else the document's own
    /// `mediaType` when that is one, else what its structure says (an OCI
    /// index or image manifest). Never anything a browser would render.
    pub fn served_media_type<'a>(&'a self, declared: &'a str) -> &'a str {
        let known = |t: &str| media_types::ALL_MANIFESTS.contains(&t);
        if known(declared) {
            return declared;
        }
        if let Some(t) = self.media_type.as_deref()
            && known(t)
        {
            return t;
        }
        if self.is_index() {
            media_types::OCI_INDEX
        } else {
            media_types::OCI_MANIFEST
        }
    }

    /// The size of an image: config plus layers (0 for an index).
    pub fn image_size(&self) -> u64 {
        self.config.as_ref().map_or(0, |c| c.size) + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_an_image_manifest_and_an_index() {
        let d = Digest::sha256_of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"digest":"{d}","size":10}},"layers":[{{"digest":"{d}","size":5}},{{"digest":"{d}","size":7}}]}}"#
        );
        let p = ParsedManifest::parse(m.as_bytes()).unwrap();
        assert!(!p.is_index());
        assert_eq!(p.image_size(), 22);
        assert_eq!(p.referenced().count(), 3);
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let p = ParsedManifest::parse(i.as_bytes()).unwrap();
        assert!(p.is_index());
        assert_eq!(
            p.manifests[0].1.as_ref().unwrap().to_string(),
            "linux/arm64/v8"
        );
    }

    #[test]
    fn refuses_malformed_manifests_with_manifest_invalid() {
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"config":{"digest":"sha256:zz","size":1}}"#,
            r#"{"config":{"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#,
            r#"{"manifests":{}}"#,
        ] {
            let e = ParsedManifest::parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::ManifestInvalid, "{bad}");
        }
    }

    #[test]
    fn platform_patterns_without_variant_admit_every_variant() {
        let p = Platform::parse("linux/arm64").unwrap();
        assert!(p.admits(&Platform::parse("linux/arm64/v8").unwrap()));
        assert!(
            !Platform::parse("linux/arm64/v7")
                .unwrap()
                .admits(&Platform::parse("linux/arm64/v8").unwrap())
        );
        assert!(Platform::parse("linux").is_none());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = ParsedManifest::parse(s.as_bytes());
        }
    }
}
