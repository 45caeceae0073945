//! Entitlement: which local repository may read which stored content.
//!
//! Content is stored once per digest, whichever rule fetched it. A digest
//! is served under repository R only if R is *entitled* to it, and R is
//! entitled only to what R's own upstream vouched for in R's upstream
//! repository:
//!
//! * a manifest that upstream served for R;
//! * the config, the layers and the index children of such a manifest,
//!   except descriptors with `urls` (foreign content the registry does not
//!   hold) and never the `subject` (OCI 1.1 lets anyone push a manifest
//!   whose subject names any digest, including another rule's private layer);
//! * a blob that upstream served for R, or confirmed with a `HEAD`.
//!
//! So guessing a digest cached through another rule gets nothing: either
//! R's upstream confirms it has the blob too, or the answer is
//! `BLOB_UNKNOWN`. Grants are kept in the store's metadata
//! (`repos/<repo>/_links/<alg>/<hex>`), so they survive restarts and are
//! shared by instances on one store.

use bytes::Bytes;

use super::queue::UpstreamCall;
use super::{Ctx, Inner, PullThroughCache};
use crate::digest::Digest;
use crate::error::Result;
use crate::keys;
use crate::manifest::ParsedManifest;
use crate::names::{Reference, RepoName};
use crate::upstream::{ManifestHead, media_types};

impl Inner {
    /// Records that `repo` may read `d`. A grant already there (which may
    /// name a manifest's media type) is kept.
    pub(crate) async fn entitle(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        self.store
            .create_meta(&keys::grant(repo, d), Bytes::new())
            .await?;
        self.hot.keep_entitled(repo, d);
        Ok(())
    }

    /// Records that `repo` may read the manifest `d`, served as
    /// `media_type`: the grant carries the media type, so a manifest by
    /// digest costs one metadata read before its bytes.
    pub(crate) async fn entitle_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        media_type: &str,
    ) -> Result<()> {
        self.entitle_with(repo, d, Bytes::from(media_type.to_owned()))
            .await
    }

    async fn entitle_with(&self, repo: &RepoName, d: &Digest, value: Bytes) -> Result<()> {
        self.store.put_meta(&keys::grant(repo, d), value).await?;
        self.hot.keep_entitled(repo, d);
        Ok(())
    }

    /// Whether `repo` may read `d` without asking its upstream.
    pub(crate) async fn is_entitled(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        Ok(self.entitlement(repo, d).await?.is_some())
    }

    /// `repo`'s grant for `d`, if it has one: empty, or a manifest's media
    /// type (empty too when the grant is known from memory).
    pub(crate) async fn entitlement(&self, repo: &RepoName, d: &Digest) -> Result<Option<Bytes>> {
        if self.hot.is_entitled(repo, d) {
            return Ok(Some(Bytes::new()));
        }
        let grant = self.store.get_meta(&keys::grant(repo, d)).await?;
        if grant.is_some() {
            self.hot.keep_entitled(repo, d);
        }
        Ok(grant)
    }

    /// Entitles `repo` to everything a manifest its upstream served vouches for.
    pub(crate) async fn entitle_referenced(
        &self,
        repo: &RepoName,
        parsed: &ParsedManifest,
    ) -> Result<()> {
        for d in vouched_by(parsed) {
            self.entitle(repo, d).await?;
        }
        Ok(())
    }

    /// Withdraws `repo`'s grants to what a manifest vouches for, if it
    /// has them: whether it had. A manifest's grants are written together,
    /// so the first one (its config, for an image) answers for all: one
    /// grant read when there is nothing to withdraw. Digests another
    /// manifest of `repo` shares are granted again when that manifest is
    /// next admitted.
    pub(crate) async fn revoke_referenced(
        &self,
        repo: &RepoName,
        parsed: &ParsedManifest,
    ) -> Result<bool> {
        let Some(first) = vouched_by(parsed).next() else {
            return Ok(false);
        };
        if !self.is_entitled(repo, first).await? {
            return Ok(false);
        }
        for d in vouched_by(parsed) {
            self.hot.forget_entitled(repo, d);
            self.store.delete_meta(&keys::grant(repo, d)).await?;
        }
        Ok(true)
    }
}

impl PullThroughCache {
    /// Withdraws what clients of `repo` were granted by reading the stored
    /// manifest `manifest` (its config, layers and index children), for an
    /// admission hook whose verdict on it turned to a refusal after it was
    /// served (a vulnerability found by a rescan): under a rule that gives
    /// clients blobs only as parts of admitted manifests, its layers are
    /// then refused by digest too. Whether there were grants to withdraw
    /// (`false` too when the manifest is not stored).
    pub async fn revoke_grants(&self, repo: &RepoName, manifest: &Digest) -> Result<bool> {
        let Some(m) = self.load_manifest(manifest).await? else {
            return Ok(false);
        };
        let parsed = ParsedManifest::parse(&m.bytes)?;
        self.inner.revoke_referenced(repo, &parsed).await
    }
}

/// The digests a manifest vouches for in its repository: config, layers
/// and index children, without foreign (`urls`) descriptors or `subject`.
pub(crate) fn vouched_by(parsed: &ParsedManifest) -> impl Iterator<Item = &Digest> {
    parsed
        .config
        .iter()
        .chain(parsed.layers.iter())
        .chain(parsed.manifests.iter().map(|(d, _)| d))
        .filter(|d| d.urls.is_empty())
        .map(|d| &d.digest)
}

impl PullThroughCache {
    /// Asks the request's upstream whether it has blob `d` in its
    /// repository (a `HEAD`) and, if so, entitles the repository to it.
    pub(crate) async fn confirm_blob(&self, ctx: &Ctx, d: &Digest) -> Result<()> {
        let r = self
            .inner
            .call(UpstreamCall::BlobHead, || {
                ctx.upstream.head_blob(&ctx.upstream_repo, d)
            })
            .await;
        if let Err(e) = r {
            self.upstream_error(ctx, &e);
            return Err(e);
        }
        self.inner.entitle(&ctx.local, d).await
    }

    /// As [`confirm_blob`](Self::confirm_blob), for a manifest.
    pub(crate) async fn confirm_manifest(&self, ctx: &Ctx, d: &Digest) -> Result<()> {
        self.head_manifest_upstream(ctx, &Reference::Digest(d.clone()))
            .await?;
        self.inner.entitle(&ctx.local, d).await
    }

    /// A manifest `HEAD` to the request's upstream, through the retry
    /// layer; a failure is counted as the rule's upstream error.
    pub(crate) async fn head_manifest_upstream(
        &self,
        ctx: &Ctx,
        reference: &Reference,
    ) -> Result<ManifestHead> {
        let r = self
            .inner
            .call(UpstreamCall::ManifestHead, || {
                ctx.upstream.head_manifest(
                    &ctx.upstream_repo,
                    reference,
                    media_types::ALL_MANIFESTS,
                )
            })
            .await;
        if let Err(e) = &r {
            self.upstream_error(ctx, e);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_and_foreign_layers_vouch_for_nothing() {
        let (c, l, f, s) = (
            Digest::sha256_of(b"config"),
            Digest::sha256_of(b"layer"),
            Digest::sha256_of(b"foreign"),
            Digest::sha256_of(b"subject"),
        );
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"a/b","digest":"{c}","size":1}},"layers":[{{"mediaType":"a/b","digest":"{l}","size":1}},{{"mediaType":"a/b","digest":"{f}","size":1,"urls":["https://example.com/f"]}}],"subject":{{"mediaType":"a/b","digest":"{s}","size":1}}}}"#
        );
        let p = ParsedManifest::parse(m.as_bytes()).unwrap();
        let v: Vec<&Digest> = vouched_by(&p).collect();
        assert_eq!(v, vec![&c, &l]);
    }
}
