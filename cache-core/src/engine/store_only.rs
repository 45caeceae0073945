//! Requests that may read only what the store holds
//! ([`FetchPolicy::StoreOnly`](crate::FetchPolicy::StoreOnly), a server's
//! `pull-cached`).
//!
//! Each answering path checks [`Ctx::store_only`] before it would reach
//! the upstream, and answers from the store (a stored tag as recorded, the
//! tags recorded, the referrers kept) or refuses with a not-found. As a
//! backstop, the request's context carries [`NoUpstream`] in place of the
//! rule's upstream: a path that would still ask an upstream (a signature
//! lookup for a verdict no longer remembered, say) gets a refusal instead
//! of a request, so no request of such a caller ever leaves the cache.

use async_trait::async_trait;

use super::Ctx;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::names::{Reference, RepoName, Tag};
use crate::range::ByteRange;
use crate::upstream::{Manifest, ManifestHead, TagPage, Upstream, UpstreamBlob};

/// Why a store-only read found nothing, appended to the reference.
const NOT_CACHED: &str = "not in the cache, and this caller may read only cached content";

/// A manifest a store-only caller asked for and the store does not give
/// it: `MANIFEST_UNKNOWN` naming the reason.
pub(super) fn manifest_not_cached(ctx: &Ctx, reference: &Reference) -> Error {
    Error::manifest_unknown(&ctx.local, format!("{reference} ({NOT_CACHED})"))
}

/// The same for a blob: `BLOB_UNKNOWN`.
pub(super) fn blob_not_cached(digest: &Digest) -> Error {
    Error::blob_unknown(digest)
}

/// The upstream of a store-only request: refuses everything without a
/// request. Its refusals are `DENIED` rather than not-found, so that no
/// caller mistakes one for the upstream's word (a signature lookup must
/// not record "no signature" from it).
#[derive(Debug)]
pub(super) struct NoUpstream;

fn refused(what: String) -> Error {
    Error::denied(format!(
        "{what} would need the upstream, and this caller may read only cached content"
    ))
}

#[async_trait]
impl Upstream for NoUpstream {
    async fn manifest(&self, repo: &RepoName, r: &Reference, _: &[&str]) -> Result<Manifest> {
        Err(refused(format!("manifest {repo}:{r}")))
    }

    async fn head_manifest(
        &self,
        repo: &RepoName,
        r: &Reference,
        _: &[&str],
    ) -> Result<ManifestHead> {
        Err(refused(format!("manifest {repo}:{r}")))
    }

    async fn blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        _: Option<ByteRange>,
    ) -> Result<UpstreamBlob> {
        Err(refused(format!("blob {repo}@{d}")))
    }

    async fn head_blob(&self, repo: &RepoName, d: &Digest) -> Result<u64> {
        Err(refused(format!("blob {repo}@{d}")))
    }

    async fn tags(&self, repo: &RepoName, _: &TagPage) -> Result<Vec<Tag>> {
        Err(refused(format!("the tag list of {repo}")))
    }

    async fn referrers(&self, repo: &RepoName, d: &Digest) -> Result<Option<Manifest>> {
        Err(refused(format!("the referrers of {repo}@{d}")))
    }
}
