//! The OCI 1.1 referrers API through the cache, and the catalog of what
//! it holds.
//!
//! Referrers come from the upstream's referrers API or, where it has none,
//! from the tag schema (the image index tagged `sha256-<hex>`), and are
//! kept under the rule's tag freshness: `pinned` serves what was fetched,
//! `ttl` for its duration, `revalidate` asks each time (a moment's
//! confirmation aside) and serves the kept index while the upstream fails,
//! within `stale_if_error`. The manifests they list then pull through the
//! cache like any other.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;

use super::keys::ReferrersRecord;
use super::queue::UpstreamCall;
use super::response::{Catalog, Referrers};
use super::{Ctx, PullThroughCache};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::CacheStatus;
use crate::keys;
use crate::names::{Reference, RepoName, Tag};
use crate::policy::{Caller, TagFreshness};
use crate::upstream::media_types;

/// The largest catalog page.
pub(crate) const MAX_CATALOG_PAGE: usize = 1000;
/// The catalog page size when the client gives none.
pub(crate) const DEFAULT_CATALOG_PAGE: usize = 100;

fn empty_index() -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
        media_types::OCI_INDEX
    ))
}

/// Keeps the entries of `index` with `artifactType` `t`.
fn filter(index: &Bytes, t: &str) -> Result<Bytes> {
    let mut doc: serde_json::Value = serde_json::from_slice(index)
        .map_err(|e| Error::manifest_invalid(format!("referrers index: {e}")))?;
    if let Some(list) = doc.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        list.retain(|e| e["artifactType"].as_str() == Some(t));
    }
    Ok(Bytes::from(doc.to_string()))
}

/// The tag schema's tag for `d`: `<alg>-<hex>`, the algorithm cut to 32
/// characters and the hex to 64, as the distribution spec has it (so a
/// sha512 digest fits a tag's 128 characters).
/// The answer: `index`, filtered to `artifact_type` when given.
fn filtered(index: Bytes, artifact_type: Option<&str>, status: CacheStatus) -> Result<Referrers> {
    let (index, filtered) = match artifact_type {
        Some(t) => (filter(&index, t)?, true),
        None => (index, false),
    };
    Ok(Referrers {
        index,
        filtered,
        status,
    })
}

fn fallback_tag(d: &Digest) -> Option<Tag> {
    let alg: String = d.algorithm().as_str().chars().take(32).collect();
    let hex: String = d.hex().chars().take(64).collect();
    Tag::parse(&format!("{alg}-{hex}")).ok()
}

impl PullThroughCache {
    /// The referrers of manifest `digest` in repository `name`, filtered
    /// to `artifact_type` when given.
    pub async fn referrers(
        &self,
        name: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers> {
        self.referrers_for(name, digest, artifact_type, &Caller::Client)
            .await
    }

    /// [`referrers`](Self::referrers) for `caller`: one that may read only
    /// what the store holds ([`FetchPolicy::StoreOnly`](crate::FetchPolicy::StoreOnly))
    /// gets the index kept, however old, or an empty one (the referrers
    /// API answers no `404`), the upstream unasked.
    pub async fn referrers_for(
        &self,
        name: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
        caller: &Caller,
    ) -> Result<Referrers> {
        let ctx = self.ctx_for(name, caller)?;
        let inner = &self.inner;
        let key = keys::referrers(&ctx.local, digest);
        let kept = inner
            .store
            .get_meta(&key)
            .await?
            .and_then(|b| ReferrersRecord::decode(&b));
        let now = inner.clock.now();
        let policy = ctx.policy();
        let age = kept.as_ref().map_or(Duration::MAX, |k| {
            now.duration_since(k.fetched).unwrap_or_default()
        });
        if ctx.store_only() && kept.is_none() {
            return filtered(empty_index(), artifact_type, CacheStatus::Hit);
        }
        let fresh = kept.is_some()
            && (ctx.store_only()
                || age < inner.opts.revalidate_window
                || match policy.tag_freshness {
                    TagFreshness::Pinned => true,
                    TagFreshness::Ttl(ttl) => age < ttl,
                    TagFreshness::Revalidate => false,
                });
        let (index, status) = match kept {
            Some(k) if fresh => (k.index, CacheStatus::Hit),
            kept => match self.fetch_referrers(&ctx, digest).await {
                Ok(index) => {
                    let rec = ReferrersRecord {
                        fetched: now,
                        index: index.clone(),
                    };
                    inner.store.put_meta(&key, rec.encode()).await?;
                    (index, CacheStatus::Miss)
                }
                Err(e) => match kept {
                    Some(k) if age <= policy.stale_if_error && !e.is_client_error() => {
                        tracing::warn!(repo = %ctx.local, %digest, error = %e, "upstream failed; serving kept referrers");
                        (k.index, CacheStatus::Stale)
                    }
                    _ => return Err(e),
                },
            },
        };
        filtered(index, artifact_type, status)
    }

    /// The upstream's referrers index for `digest`: from its referrers
    /// API, else the tag schema's index, else an empty index.
    pub(super) async fn fetch_referrers(&self, ctx: &Ctx, digest: &Digest) -> Result<Bytes> {
        let inner = &self.inner;
        let api = inner
            .call(UpstreamCall::Referrers, || {
                ctx.upstream.referrers(&ctx.upstream_repo, digest)
            })
            .await
            .map_err(|e| e.blame_upstream(ctx.rule.registry()))?;
        if let Some(index) = api {
            return Ok(index.bytes);
        }
        let Some(tag) = fallback_tag(digest) else {
            return Ok(empty_index());
        };
        let tag = Reference::Tag(tag);
        let fallback = inner
            .call(UpstreamCall::Manifest, || {
                ctx.upstream
                    .manifest(&ctx.upstream_repo, &tag, &[media_types::OCI_INDEX])
            })
            .await;
        match fallback {
            Ok(m) if m.bytes.len() <= inner.opts.max_manifest_size => {
                let parsed = crate::manifest::ParsedManifest::parse(&m.bytes)?;
                if parsed.is_index() {
                    Ok(m.bytes)
                } else {
                    Ok(empty_index())
                }
            }
            Ok(_) => Err(Error::manifest_invalid("referrers index too large")),
            Err(Error::ManifestUnknown { .. }) => Ok(empty_index()),
            Err(e) => Err(e.blame_upstream(ctx.rule.registry())),
        }
    }

    /// A page of the local repositories that have content in the store
    /// and that a rule still declares, in lexical order: at most `limit`
    /// (default 100, at most 1000), after `last`.
    pub async fn catalog(&self, limit: Option<usize>, last: Option<&RepoName>) -> Result<Catalog> {
        self.catalog_where(limit, last, |_| true).await
    }

    /// [`catalog`](Self::catalog) of the repositories `visible` keeps (the
    /// ones a caller is granted, say), filtered before the page is cut, so
    /// a page is as full as the caller's view allows and `more` speaks of
    /// that view.
    pub async fn catalog_where(
        &self,
        limit: Option<usize>,
        last: Option<&RepoName>,
        visible: impl Fn(&RepoName) -> bool,
    ) -> Result<Catalog> {
        let limit = limit.unwrap_or(DEFAULT_CATALOG_PAGE).min(MAX_CATALOG_PAGE);
        let rules = self.rules();
        let prefix = keys::repos();
        let repos: BTreeSet<RepoName> = self
            .inner
            .store
            .list_meta(Some(&prefix))
            .await?
            .iter()
            .filter_map(keys::repo_of)
            .filter(|r| last.is_none_or(|l| r.as_str() > l.as_str()))
            .filter(|r| rules.resolve(r).is_ok() && visible(r))
            .collect();
        let more = repos.len() > limit;
        Ok(Catalog {
            repositories: repos.into_iter().take(limit).collect(),
            more,
        })
    }
}
