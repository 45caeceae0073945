//! The `Upstream` trait: where content comes from on a miss.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::Digest;
use crate::error::Result;
use crate::names::{Reference, RepoName, Tag};
use crate::range::ByteRange;
use crate::store::ByteStream;

/// Manifest media types a pull-through cache asks for.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Every manifest type, for an `Accept` header.
    pub const ALL_MANIFESTS: &[&str] = &[
        OCI_INDEX,
        OCI_MANIFEST,
        DOCKER_MANIFEST_LIST,
        DOCKER_MANIFEST,
    ];
}

/// The manifest media types a client accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept(Vec<String>);

impl Accept {
    /// Any media type (a client that sent no `Accept`, or `*/*`).
    pub fn any() -> Self {
        Accept(Vec::new())
    }

    /// These media types; `*/*` among them means any, and none means any.
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        let types: Vec<String> = types.into_iter().map(Into::into).collect();
        if types.iter().any(|t| t == "*/*") {
            return Accept::any();
        }
        Accept(types)
    }

    /// Whether a manifest of `media_type` may be served.
    pub fn admits(&self, media_type: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|t| t == media_type)
    }
}

/// A manifest as the upstream sent it.
#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The exact bytes; their digest is `digest`.
    pub bytes: Bytes,
    /// The media type the upstream declared (`Content-Type`).
    pub media_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("digest", &self.digest)
            .field("media_type", &self.media_type)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Manifest {
    /// What a `HEAD` of this manifest tells.
    pub fn head(&self) -> ManifestHead {
        ManifestHead {
            digest: self.digest.clone(),
            media_type: self.media_type.clone(),
            size: self.bytes.len() as u64,
        }
    }
}

/// What a manifest `HEAD` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A blob (or a span of it) as an upstream sends it.
pub struct UpstreamBlob {
    /// The size of the whole blob.
    pub size: u64,
    /// The half-open byte span `stream` yields.
    pub range: std::ops::Range<u64>,
    /// The bytes of `range`, in order, unverified.
    pub stream: ByteStream,
}

impl fmt::Debug for UpstreamBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBlob")
            .field("size", &self.size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// One page of a tag listing request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagPage {
    /// At most this many tags (`n`).
    pub limit: Option<usize>,
    /// Only tags after this one, in lexical order (`last`).
    pub last: Option<Tag>,
}

/// A source of manifests and blobs: a remote registry, a layout directory.
///
/// Repository names given to an upstream are upstream names (already mapped
/// by the caching rules). Implementations must be safe to call concurrently,
/// make one request per call (the engine retries, within one budget per
/// operation), and need not verify blobs (the engine does).
///
/// ```
/// use async_trait::async_trait;
/// use bytes::Bytes;
/// use cache_core::{
///     ByteRange, Digest, Error, Manifest, ManifestHead, Reference, RepoName, Result, Tag,
///     TagPage, Upstream, UpstreamBlob,
/// };
///
/// /// Serves one blob, and nothing else, from memory.
/// #[derive(Debug)]
/// struct OneBlob(Bytes);
///
/// #[async_trait]
/// impl Upstream for OneBlob {
///     async fn blob(&self, _: &RepoName, d: &Digest, range: Option<ByteRange>) -> Result<UpstreamBlob> {
///         if !d.verifies(&self.0) {
///             return Err(Error::blob_unknown(d));
///         }
///         let size = self.0.len() as u64;
///         let span = match range { Some(r) => r.resolve(size)?, None => 0..size };
///         let bytes = self.0.slice(span.start as usize..span.end as usize);
///         let stream = Box::pin(futures::stream::once(async move { Ok(bytes) }));
///         Ok(UpstreamBlob { size, range: span, stream })
///     }
///     async fn head_blob(&self, _: &RepoName, d: &Digest) -> Result<u64> {
///         if d.verifies(&self.0) { Ok(self.0.len() as u64) } else { Err(Error::blob_unknown(d)) }
///     }
///     async fn manifest(&self, repo: &RepoName, r: &Reference, _: &[&str]) -> Result<Manifest> {
///         Err(Error::manifest_unknown(repo, r))
///     }
///     async fn head_manifest(&self, repo: &RepoName, r: &Reference, _: &[&str]) -> Result<ManifestHead> {
///         Err(Error::manifest_unknown(repo, r))
///     }
///     async fn tags(&self, _: &RepoName, _: &TagPage) -> Result<Vec<Tag>> {
///         Ok(Vec::new())
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use cache_core::prelude::*;
/// let data = Bytes::from_static(b"layer bytes");
/// let d = Digest::sha256_of(&data);
/// let cache = PullThroughCache::builder()
///     .rule(RuleSpec::new("mem", "mem.example/*", "mem/*"))
///     .store(cache_store::MemoryStore::new())
///     .tokio()
///     .upstream("mem.example", OneBlob(data))
///     .build()?;
/// let n = cache.prefetch_blob(&RepoName::parse("mem/any")?, &d, |_| {}).await?;
/// assert_eq!(n, 11);
/// # Ok::<(), cache_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait Upstream: Send + Sync + fmt::Debug {
    /// Fetches a manifest by tag or digest, asking for the media types in
    /// `accept`.
    ///
    /// The returned `digest` is computed over the returned bytes. When
    /// `reference` is a digest, bytes that do not hash to it are refused
    /// with [`Error::DigestMismatch`](crate::Error::DigestMismatch). A
    /// missing manifest is [`Error::ManifestUnknown`](crate::Error::ManifestUnknown).
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Manifest>;

    /// Asks for a manifest's digest, media type and size without its body
    /// (a `HEAD`, which Docker Hub does not count against pull limits).
    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestHead>;

    /// Streams a blob, whole or one range of it.
    ///
    /// The stream yields exactly the bytes of the returned `range`; it is
    /// not verified here (the caller verifies whole blobs against the
    /// digest). A missing blob is [`Error::BlobUnknown`](crate::Error::BlobUnknown).
    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<UpstreamBlob>;

    /// The size of a blob, without its body (a `HEAD`). A missing blob is
    /// [`Error::BlobUnknown`](crate::Error::BlobUnknown).
    async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64>;

    /// Lists tags of a repository, in lexical order, one page at a time.
    async fn tags(&self, repo: &RepoName, page: &TagPage) -> Result<Vec<Tag>>;

    /// The referrers of `digest` through the OCI 1.1 referrers API: the
    /// image index the upstream answers (unfiltered), or `None` when it
    /// has no referrers API; the caller then falls back to the tag schema
    /// (`sha256-<hex>`). The default has no referrers API.
    async fn referrers(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Manifest>> {
        let _ = (repo, digest);
        Ok(None)
    }

    /// One page of the repositories the upstream lists in its catalog
    /// (`/v2/_catalog`): at most `limit`, after `last`, in lexical order;
    /// `None` when it offers no catalog (many registries do not, or not
    /// to these credentials). A scheduled sync of a wildcard rule without
    /// a list of repositories reads it. The default offers none.
    async fn catalog(
        &self,
        last: Option<&RepoName>,
        limit: usize,
    ) -> Result<Option<Vec<RepoName>>> {
        let _ = (last, limit);
        Ok(None)
    }
}

#[async_trait]
impl<T: Upstream + ?Sized> Upstream for std::sync::Arc<T> {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Manifest> {
        (**self).manifest(repo, reference, accept).await
    }
    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestHead> {
        (**self).head_manifest(repo, reference, accept).await
    }
    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<UpstreamBlob> {
        (**self).blob(repo, digest, range).await
    }
    async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        (**self).head_blob(repo, digest).await
    }
    async fn tags(&self, repo: &RepoName, page: &TagPage) -> Result<Vec<Tag>> {
        (**self).tags(repo, page).await
    }
    async fn referrers(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Manifest>> {
        (**self).referrers(repo, digest).await
    }
    async fn catalog(
        &self,
        last: Option<&RepoName>,
        limit: usize,
    ) -> Result<Option<Vec<RepoName>>> {
        (**self).catalog(last, limit).await
    }
}

/// A convenience for implementations: builds a [`Manifest`] from bytes,
/// checking them against a requested digest.
pub fn manifest_from_bytes(
    bytes: Bytes,
    media_type: String,
    requested: &Reference,
) -> Result<Manifest> {
    let digest = match requested {
        Reference::Digest(d) => {
            let actual = Digest::compute(d.algorithm(), &bytes);
            if actual != *d {
                return Err(crate::Error::DigestMismatch {
                    expected: d.clone(),
                    actual,
                });
            }
            actual
        }
        Reference::Tag(_) => Digest::sha256_of(&bytes),
    };
    Ok(Manifest {
        bytes,
        media_type,
        digest,
    })
}
