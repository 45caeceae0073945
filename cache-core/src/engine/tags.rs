//! Tag listings: asked of the upstream each time; the cached tags stand in
//! when the upstream fails (but not when it says the repository is unknown,
//! which is remembered for the rule's `negative_ttl`).

use super::PullThroughCache;
use super::queue::UpstreamCall;
use super::response::TagList;
use crate::error::Result;
use crate::events::CacheStatus;
use crate::keys;
use crate::names::{RepoName, Tag};
use crate::policy::Caller;
use crate::upstream::TagPage;

impl PullThroughCache {
    /// The repository's tags from the upstream; the cached tags when the
    /// upstream fails (but not when it says the repository does not exist).
    ///
    /// An upstream "not found" is remembered for the rule's
    /// `negative_ttl`, and answered again from memory meanwhile.
    pub async fn tags(&self, name: &RepoName, page: &TagPage) -> Result<TagList> {
        self.tags_for(name, page, &Caller::Client).await
    }

    /// [`tags`](Self::tags) for `caller`: one that may read only what the
    /// store holds ([`FetchPolicy::StoreOnly`](crate::FetchPolicy::StoreOnly))
    /// gets the tags recorded in the cache (`X-Cache: hit`), the upstream
    /// unasked.
    pub async fn tags_for(
        &self,
        name: &RepoName,
        page: &TagPage,
        caller: &Caller,
    ) -> Result<TagList> {
        let ctx = self.ctx_for(name, caller)?;
        if ctx.store_only() {
            return Ok(TagList {
                tags: paged(self.recorded_tags(name).await?, page),
                status: CacheStatus::Hit,
            });
        }
        let (negative, now) = (&self.inner.negative, self.inner.clock.now());
        if let Some(e) = negative.check(ctx.rule.name(), name, None, now) {
            return Err(e);
        }
        let listed = self
            .inner
            .call(UpstreamCall::Tags, || {
                ctx.upstream.tags(&ctx.upstream_repo, page)
            })
            .await;
        match listed {
            Ok(tags) => {
                negative.forget(ctx.rule.name(), name, None);
                Ok(TagList {
                    tags,
                    status: CacheStatus::Miss,
                })
            }
            Err(e) if e.is_not_found() => {
                let ttl = ctx.policy().negative_ttl;
                negative.remember(ctx.rule.name(), name, None, e.code(), now, ttl);
                Err(e)
            }
            Err(e) => {
                self.upstream_error(&ctx, &e);
                let tags = self.recorded_tags(name).await?;
                if tags.is_empty() {
                    return Err(e);
                }
                Ok(TagList {
                    tags: paged(tags, page),
                    status: CacheStatus::Stale,
                })
            }
        }
    }

    /// The tags the cache recorded for `name`, in lexical order.
    async fn recorded_tags(&self, name: &RepoName) -> Result<Vec<Tag>> {
        let keys = self.inner.store.list_meta(Some(&keys::tags(name))).await?;
        let mut tags: Vec<Tag> = keys
            .iter()
            .filter_map(keys::parse_tag)
            .filter(|(r, _)| r == name)
            .map(|(_, t)| t)
            .collect();
        tags.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(tags)
    }
}

/// One page of `tags` (in lexical order): after `last`, at most `limit`.
fn paged(mut tags: Vec<Tag>, page: &TagPage) -> Vec<Tag> {
    if let Some(last) = &page.last {
        tags.retain(|t| t.as_str() > last.as_str());
    }
    if let Some(n) = page.limit {
        tags.truncate(n);
    }
    tags
}
