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
    /// Parses a manifest or index (OCI or Docker schema 2) with
    /// `oci-spec`'s image types, which Docker schema 2 shares the shape of.
    /// The bytes themselves are never re-serialized: what is stored and
    /// served is what the upstream sent.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        use oci_spec::image::{ImageIndex, ImageManifest};
        let invalid = |reason: String| Error::ManifestInvalid { reason };
        /// Which kind of document this is, without parsing it twice.
        #[derive(serde::Deserialize)]
        struct Kind {
            manifests: Option<serde::de::IgnoredAny>,
            config: Option<serde::de::IgnoredAny>,
        }
        let kind: Kind = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not a JSON object: {e}")))?;
        let desc = |d: &oci_spec::image::Descriptor, what: &str| -> Result<Descriptor> {
            Ok(Descriptor {
                digest: Digest::parse(d.digest().as_ref())
                    .map_err(|e| invalid(format!("{what}: {e}")))?,
                size: d.size(),
                media_type: Some(d.media_type().to_string()),
                urls: d.urls().clone().unwrap_or_default(),
            })
        };
        match (kind.manifests.is_some(), kind.config.is_some()) {
            (true, _) => {
                let index: ImageIndex = serde_json::from_slice(bytes)
                    .map_err(|e| invalid(format!("not an image index: {e}")))?;
                let mut manifests = Vec::with_capacity(index.manifests().len());
                for (i, m) in index.manifests().iter().enumerate() {
                    let platform = m.platform().as_ref().map(|p| Platform {
                        os: p.os().to_string(),
                        architecture: p.architecture().to_string(),
                        variant: p.variant().clone(),
                    });
                    manifests.push((desc(m, &format!("manifest {i}"))?, platform));
                }
                Ok(ParsedManifest {
                    media_type: index.media_type().as_ref().map(ToString::to_string),
                    config: None,
                    layers: Vec::new(),
                    manifests,
                    subject: index
                        .subject()
                        .as_ref()
                        .map(|s| desc(s, "subject"))
                        .transpose()?,
                })
            }
            (false, true) => {
                let m: ImageManifest = serde_json::from_slice(bytes)
                    .map_err(|e| invalid(format!("not an image manifest: {e}")))?;
                let layers = m
                    .layers()
                    .iter()
                    .enumerate()
                    .map(|(i, l)| desc(l, &format!("layer {i}")))
                    .collect::<Result<Vec<_>>>()?;
                Ok(ParsedManifest {
                    media_type: m.media_type().as_ref().map(ToString::to_string),
                    config: Some(desc(m.config(), "config")?),
                    layers,
                    manifests: Vec::new(),
                    subject: m
                        .subject()
                        .as_ref()
                        .map(|s| desc(s, "subject"))
                        .transpose()?,
                })
            }
            (false, false) => Err(invalid(
                "neither an image manifest (config) nor an index (manifests)".into(),
            )),
        }
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
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":5}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":7}}]}}"#
        );
        let p = ParsedManifest::parse(m.as_bytes()).unwrap();
        assert!(!p.is_index());
        assert_eq!(p.image_size(), 22);
        assert_eq!(p.referenced().count(), 3);
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let p = ParsedManifest::parse(i.as_bytes()).unwrap();
        assert!(p.is_index());
        assert_eq!(
            p.manifests[0].1.as_ref().unwrap().to_string(),
            "linux/arm64/v8"
        );
    }

    #[test]
    fn parses_docker_schema_2_manifests_and_lists() {
        let d = Digest::sha256_of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":7023,"digest":"{d}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":32654,"digest":"{d}"}},{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","size":1,"digest":"{d}","urls":["https://mcr.microsoft.com/l"]}}]}}"#,
            media_types::DOCKER_MANIFEST
        );
        let p = ParsedManifest::parse(m.as_bytes()).unwrap();
        assert_eq!(p.media_type.as_deref(), Some(media_types::DOCKER_MANIFEST));
        assert_eq!((p.layers.len(), p.image_size()), (2, 7023 + 32654 + 1));
        assert_eq!(
            p.layers[1].urls,
            vec!["https://mcr.microsoft.com/l".to_owned()]
        );
        let l = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","size":7143,"digest":"{d}","platform":{{"architecture":"ppc64le","os":"linux","features":["sse4"]}}}}]}}"#,
            media_types::DOCKER_MANIFEST_LIST,
            media_types::DOCKER_MANIFEST
        );
        let p = ParsedManifest::parse(l.as_bytes()).unwrap();
        assert!(p.is_index());
        assert_eq!(
            p.manifests[0].1.as_ref().unwrap().to_string(),
            "linux/ppc64le"
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
