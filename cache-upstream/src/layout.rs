//! `OciLayout`: an OCI image-layout directory (`oci-layout`, `index.json`,
//! `blobs/`) as an upstream, for offline use, air-gapped import and tests.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cache_core::{
    ByteRange, Digest, Error, Manifest, ManifestHead, Reference, RepoName, Result, Tag, TagPage,
    Upstream, UpstreamBlob, manifest_from_bytes, media_types,
};
use futures::StreamExt;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory serving every repository name it is asked
/// for: tags are the `org.opencontainers.image.ref.name` annotations of
/// `index.json` (`v1`, or `repo:v1` to serve several repositories).
#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::upstream(
        format!("oci-layout:{}", path.display()),
        e.to_string(),
        false,
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::upstream("oci-layout", format!("task failed: {e}"), false))?
}

impl OciLayout {
    /// Opens a layout directory; it must hold `oci-layout` and `index.json`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for f in ["oci-layout", "index.json"] {
            let p = root.join(f);
            if !p.is_file() {
                return Err(io(
                    &p,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "not an OCI image layout"),
                ));
            }
        }
        Ok(OciLayout { root })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    /// `(ref name, digest, media type)` of every entry in `index.json`.
    async fn index(&self) -> Result<Vec<(Option<String>, Digest, Option<String>)>> {
        let p = self.root.join("index.json");
        let bytes = tokio::fs::read(&p).await.map_err(|e| io(&p, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::upstream(
                format!("oci-layout:{}", self.root.display()),
                format!("index.json is not JSON: {e}"),
                false,
            )
        })?;
        Ok(v.get("manifests")
            .and_then(|m| m.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|m| {
                        let d = Digest::parse(m.get("digest")?.as_str()?).ok()?;
                        let name = m
                            .get("annotations")
                            .and_then(|x| x.get(REF_NAME))
                            .and_then(|x| x.as_str())
                            .map(str::to_owned);
                        let mt = m
                            .get("mediaType")
                            .and_then(|x| x.as_str())
                            .map(str::to_owned);
                        Some((name, d, mt))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn tag_matches(name: &str, repo: &RepoName, tag: &str) -> bool {
        name == tag
            || name
                .strip_suffix(tag)
                .and_then(|p| p.strip_suffix(':'))
                .is_some_and(|p| p == repo.as_str() || p.ends_with(&format!("/{repo}")))
    }

    async fn resolve(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, Option<String>)> {
        match reference {
            Reference::Digest(d) => Ok((d.clone(), None)),
            Reference::Tag(t) => self
                .index()
                .await?
                .into_iter()
                .find(|(n, _, _)| {
                    n.as_deref()
                        .is_some_and(|n| Self::tag_matches(n, repo, t.as_str()))
                })
                .map(|(_, d, mt)| (d, mt))
                .ok_or_else(|| Error::manifest_unknown(repo, reference)),
        }
    }
}

#[async_trait]
impl Upstream for OciLayout {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        _accept: &[&str],
    ) -> Result<Manifest> {
        let (d, mt) = self.resolve(repo, reference).await?;
        let p = self.blob_path(&d);
        let bytes = match tokio::fs::read(&p).await {
            Ok(b) => Bytes::from(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::manifest_unknown(repo, reference));
            }
            Err(e) => return Err(io(&p, e)),
        };
        let media_type = mt
            .or_else(|| {
                cache_core::manifest::ParsedManifest::parse(&bytes)
                    .ok()
                    .and_then(|p| p.media_type)
            })
            .unwrap_or_else(|| media_types::OCI_MANIFEST.to_owned());
        // The layout's file is addressed by digest: verify it whatever the reference.
        manifest_from_bytes(bytes, media_type, &Reference::Digest(d))
    }

    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestHead> {
        Ok(self.manifest(repo, reference, accept).await?.head())
    }

    async fn blob(
        &self,
        _repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<UpstreamBlob> {
        let p = self.blob_path(digest);
        let d = digest.clone();
        let (file, size) = blocking(move || match std::fs::File::open(&p) {
            Ok(f) => {
                let size = f.metadata().map_err(|e| io(&p, e))?.len();
                Ok((f, size))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::blob_unknown(&d)),
            Err(e) => Err(io(&p, e)),
        })
        .await?;
        let span = match range {
            Some(r) => r.resolve(size)?,
            None => 0..size,
        };
        let path = self.blob_path(digest);
        let state = (Some(file), span.start, span.end, path);
        let stream = futures::stream::unfold(state, |(file, pos, end, path)| async move {
            let mut file = file?;
            if pos >= end {
                return None;
            }
            let want = (end - pos).min(1024 * 1024) as usize;
            let p2 = path.clone();
            let r = blocking(move || {
                let mut buf = BytesMut::zeroed(want);
                file.seek(SeekFrom::Start(pos)).map_err(|e| io(&p2, e))?;
                file.read_exact(&mut buf).map_err(|e| io(&p2, e))?;
                Ok((file, buf.freeze()))
            })
            .await;
            match r {
                Ok((file, chunk)) => Some((Ok(chunk), (Some(file), pos + want as u64, end, path))),
                Err(e) => Some((Err(e), (None, end, end, path))),
            }
        })
        .boxed();
        Ok(UpstreamBlob {
            size,
            range: span,
            stream,
        })
    }

    async fn head_blob(&self, _repo: &RepoName, digest: &Digest) -> Result<u64> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::BlobUnknown {
                digest: digest.clone(),
            }),
            Err(e) => Err(io(&self.blob_path(digest), e)),
        }
    }

    async fn tags(&self, repo: &RepoName, page: &TagPage) -> Result<Vec<Tag>> {
        let mut tags: Vec<Tag> = self
            .index()
            .await?
            .into_iter()
            .filter_map(|(n, _, _)| n)
            .filter_map(|n| {
                let t = n.rsplit(':').next().unwrap_or(&n).to_owned();
                (Self::tag_matches(&n, repo, &t))
                    .then(|| Tag::parse(&t).ok())
                    .flatten()
            })
            .collect();
        tags.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        tags.dedup();
        if let Some(l) = &page.last {
            tags.retain(|t| t.as_str() > l.as_str());
        }
        if let Some(n) = page.limit {
            tags.truncate(n);
        }
        Ok(tags)
    }
}
