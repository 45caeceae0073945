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
use crate::upstream::TagPage;

impl PullThroughCache {
    /// The repository's tags from the upstream; the cached tags when the
    /// upstream fails (but not when it says the repository does not exist).
    ///
    /// An upstream "not found" is remembered for the rule's
    /// `negative_ttl`, and answered again from memory meanwhile.
    pub async fn tags(&self, name: &RepoName, page: &TagPage) -> Result<TagList> {
        let ctx = self.ctx(name)?;
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
                let keys = self.inner.store.list_meta(Some(&keys::tags(name))).await?;
                let mut tags: Vec<Tag> = keys
                    .iter()
                    .filter_map(keys::parse_tag)
                    .filter(|(r, _)| r == name)
                    .map(|(_, t)| t)
                    .collect();
                if tags.is_empty() {
                    return Err(e);
                }
                tags.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                if let Some(last) = &page.last {
                    tags.retain(|t| t.as_str() > last.as_str());
                }
                if let Some(n) = page.limit {
                    tags.truncate(n);
                }
                Ok(TagList {
                    tags,
                    status: CacheStatus::Stale,
                })
            }
        }
    }
}
