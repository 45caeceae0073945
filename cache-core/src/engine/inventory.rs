//! What the cache holds, for the people who run it (a console, reports):
//! how much the store holds; its repositories, their tags with sizes and
//! pulls, and an image's platforms, layers and admission decisions, read
//! from the store alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use super::keys::TagRecord;
use super::{AdmissionRecord, PullStats, PullThroughCache, lock};
use crate::digest::Digest;
use crate::error::Result;
use crate::keys;
use crate::manifest::{ParsedManifest, Platform};
use crate::names::{Reference, RepoName, Tag};
use crate::policy::RulePolicy;

/// What the store held when it was last measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// Bytes of committed blobs.
    pub bytes: u64,
    /// Committed blobs.
    pub blobs: u64,
    /// When it was measured (on the engine's clock).
    pub measured_at: SystemTime,
}

impl PullThroughCache {
    /// Measures what the store holds by listing every blob (one pass of
    /// [`BlobStore::list`](crate::BlobStore::list): on object storage, a
    /// listing request per thousand blobs), and keeps it for
    /// [`store_usage`](Self::store_usage).
    pub async fn measure_usage(&self) -> Result<StoreUsage> {
        let mut listed = self.inner.store.list().await?;
        let (mut bytes, mut blobs) = (0u64, 0u64);
        while let Some(info) = listed.next().await {
            bytes += info?.size;
            blobs += 1;
        }
        let usage = StoreUsage {
            bytes,
            blobs,
            measured_at: self.inner.clock.now(),
        };
        *lock(&self.inner.usage) = Some(usage);
        Ok(usage)
    }

    /// What the store held when [`measure_usage`](Self::measure_usage)
    /// last measured it, if it did.
    pub fn store_usage(&self) -> Option<StoreUsage> {
        *lock(&self.inner.usage)
    }
}

/// How long a listing of the repositories is used before the store is
/// listed again.
const REPO_INDEX_VALIDITY: Duration = Duration::from_secs(30);

/// Rows of a page at most.
pub(crate) const MAX_PAGE: usize = 500;

/// A repository the cache holds something of (or has refused something
/// for), with how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSummary {
    /// Its name.
    pub name: RepoName,
    /// Cached tags.
    pub tags: usize,
    /// Manifests with an admission decision kept (passed or refused).
    pub decided: usize,
}

/// A page of repositories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoPage {
    /// The repositories, in lexical order.
    pub repositories: Vec<RepoSummary>,
    /// How many match, on every page.
    pub total: usize,
    /// Whether a next page follows.
    pub more: bool,
}

/// A cached tag, as a list of them shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    /// The tag.
    pub tag: Tag,
    /// The manifest it names.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// When the upstream last confirmed it.
    pub confirmed: SystemTime,
    /// An image's size (config and layers), when its manifest is stored.
    pub size: Option<u64>,
    /// An index's platform count, when it is one.
    pub platforms: Option<usize>,
    /// Its pulls.
    pub pulls: PullStats,
}

/// A page of a repository's tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagRows {
    /// The tags, in lexical order.
    pub rows: Vec<TagRow>,
    /// How many match, on every page.
    pub total: usize,
    /// Whether a next page follows.
    pub more: bool,
}

/// A blob an image is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerView {
    /// Its digest.
    pub digest: Digest,
    /// Its size, as the manifest says.
    pub size: u64,
    /// Its media type, as the manifest says.
    pub media_type: Option<String>,
    /// Whether the store holds it.
    pub stored: bool,
}

/// One platform of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformView {
    /// `os/architecture[/variant]`, as the index declares it.
    pub platform: Option<String>,
    /// The platform's manifest.
    pub digest: Digest,
    /// Its image's size, when its manifest is stored.
    pub size: Option<u64>,
    /// Whether its manifest is stored.
    pub stored: bool,
    /// The admission decisions kept about it.
    pub verdicts: Vec<AdmissionRecord>,
}

/// What a stored manifest is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestView {
    /// An image: its config and layers.
    Image {
        /// The config blob.
        config: LayerView,
        /// The layers, in order.
        layers: Vec<LayerView>,
        /// Config and layers together.
        size: u64,
        /// The platform an index declared for it, when known.
        platform: Option<String>,
    },
    /// An index: its platforms.
    Index {
        /// The entries, in order.
        platforms: Vec<PlatformView>,
    },
}

/// Everything the cache knows of one image, from the store only (no
/// upstream is asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageView {
    /// The repository.
    pub repository: RepoName,
    /// The tag or digest asked about.
    pub reference: Reference,
    /// The rule the repository falls under, if one does.
    pub rule: Option<String>,
    /// The manifest's digest, when known (a cached tag's, or the one asked for).
    pub digest: Option<Digest>,
    /// Its media type, when stored.
    pub media_type: Option<String>,
    /// When the upstream last confirmed the tag, for a cached tag.
    pub confirmed: Option<SystemTime>,
    /// What it is made of, when the manifest is stored (a refused one never is).
    pub manifest: Option<ManifestView>,
    /// The admission decisions kept about it.
    pub verdicts: Vec<AdmissionRecord>,
    /// Its pulls (of the tag, or of the digest).
    pub pulls: PullStats,
}

/// What one repository has, counted from keys alone.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    tags: usize,
    decided: usize,
    content: bool,
}

/// What each repository has, by name.
type Repos = Arc<BTreeMap<RepoName, Counts>>;

/// Every repository the store has records of, and when it was listed.
#[derive(Debug, Default)]
pub(crate) struct RepoIndex {
    built: async_lock::Mutex<Option<(SystemTime, Repos)>>,
}

fn platform_string(p: &Platform) -> String {
    p.to_string()
}

impl PullThroughCache {
    /// The repositories with cached content or kept admission decisions
    /// that a rule still declares, `visible` ones only, whose name contains
    /// `filter`, in lexical order after `after`: at most `limit` (at most
    /// 500). The store's keys are listed at most every 30 s; a
    /// page in between costs no store request.
    pub async fn browse_repositories(
        &self,
        filter: &str,
        after: Option<&RepoName>,
        limit: usize,
        visible: &(dyn Fn(&RepoName) -> bool + Sync),
    ) -> Result<RepoPage> {
        let index = self.repo_index().await?;
        let rules = self.rules();
        let matching = index.iter().filter(|(name, _)| {
            name.as_str().contains(filter) && rules.resolve(name).is_ok() && visible(name)
        });
        let mut page = RepoPage::default();
        let limit = limit.clamp(1, MAX_PAGE);
        for (name, c) in matching {
            page.total += 1;
            if after.is_some_and(|a| name.as_str() <= a.as_str()) {
                continue;
            }
            if page.repositories.len() == limit {
                page.more = true;
                continue;
            }
            page.repositories.push(RepoSummary {
                name: name.clone(),
                tags: c.tags,
                decided: c.decided,
            });
        }
        Ok(page)
    }

    async fn repo_index(&self) -> Result<Repos> {
        let mut built = self.inner.repo_index.built.lock().await;
        let now = self.inner.clock.now();
        if let Some((at, index)) = &*built
            && now
                .duration_since(*at)
                .is_ok_and(|age| age < REPO_INDEX_VALIDITY)
        {
            return Ok(index.clone());
        }
        let mut index: BTreeMap<RepoName, Counts> = BTreeMap::new();
        for key in self.inner.store.list_meta(Some(&keys::repos())).await? {
            if let Some((repo, _)) = keys::parse_tag(&key) {
                let c = index.entry(repo).or_default();
                c.tags += 1;
                c.content = true;
            } else if let Some((repo, _)) = keys::parse_verdicts(&key) {
                index.entry(repo).or_default().decided += 1;
            } else if let Some(repo) = keys::repo_of(&key) {
                index.entry(repo).or_default().content = true;
            }
        }
        index.retain(|_, c| c.content || c.decided > 0);
        let index = Arc::new(index);
        *built = Some((now, index.clone()));
        Ok(index)
    }

    /// The cached tags of `repo` whose name contains `filter`, in lexical
    /// order after `after`: at most `limit` (at most 500), each
    /// with its manifest's size or platforms and its pulls. Costs a listing
    /// of the repository's tag keys and a few reads per row shown, from
    /// memory where the engine has them; never an upstream request.
    pub async fn browse_tags(
        &self,
        repo: &RepoName,
        filter: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<TagRows> {
        let mut tags: Vec<Tag> = self
            .inner
            .store
            .list_meta(Some(&keys::tags(repo)))
            .await?
            .iter()
            .filter_map(keys::parse_tag)
            .filter(|(r, t)| r == repo && t.as_str().contains(filter))
            .map(|(_, t)| t)
            .collect();
        tags.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        let total = tags.len();
        let start = after.map_or(0, |a| tags.partition_point(|t| t.as_str() <= a));
        let limit = limit.clamp(1, MAX_PAGE);
        let page: Vec<Tag> = tags.into_iter().skip(start).take(limit + 1).collect();
        let more = page.len() > limit;
        let rows = futures::stream::iter(page.into_iter().take(limit))
            .map(|t| self.tag_row(repo, t))
            .buffered(16)
            .collect::<Vec<_>>()
            .await;
        Ok(TagRows {
            rows: rows
                .into_iter()
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect(),
            total,
            more,
        })
    }

    async fn tag_record(&self, repo: &RepoName, tag: &Tag) -> Result<Option<TagRecord>> {
        let key = keys::tag(repo, tag);
        if let Some(r) = self.inner.hot.tag(&key) {
            return Ok(Some(r));
        }
        Ok(self
            .inner
            .store
            .get_meta(&key)
            .await?
            .and_then(|b| TagRecord::decode(&b)))
    }

    async fn tag_row(&self, repo: &RepoName, tag: Tag) -> Result<Option<TagRow>> {
        let Some(rec) = self.tag_record(repo, &tag).await? else {
            // Removed since it was listed.
            return Ok(None);
        };
        let parsed = self
            .load_manifest(&rec.digest)
            .await?
            .and_then(|m| ParsedManifest::parse(&m.bytes).ok());
        let (size, platforms) = match &parsed {
            Some(p) if p.is_index() => (None, Some(p.manifests.len())),
            Some(p) => (Some(p.image_size()), None),
            None => (None, None),
        };
        let pulls = self.pull_stats(repo, &Reference::Tag(tag.clone())).await?;
        Ok(Some(TagRow {
            tag,
            digest: rec.digest,
            media_type: rec.media_type,
            confirmed: rec.confirmed,
            size,
            platforms,
            pulls,
        }))
    }

    /// Everything the cache knows of `repo`'s image `reference`, from the
    /// store alone: its manifest's parts (each platform of an index, the
    /// config and layers of an image, with what is stored), the admission
    /// decisions kept about it (and about each platform's manifest), its
    /// pulls. A tag the cache does not hold has no digest; a digest whose
    /// manifest was refused has only its decisions.
    pub async fn image_view(&self, repo: &RepoName, reference: &Reference) -> Result<ImageView> {
        let rule = self
            .rules()
            .resolve(repo)
            .ok()
            .map(|r| r.rule.name().to_owned());
        let (digest, confirmed) = match reference {
            Reference::Digest(d) => (Some(d.clone()), None),
            Reference::Tag(t) => match self.tag_record(repo, t).await? {
                Some(rec) => (Some(rec.digest), Some(rec.confirmed)),
                None => (None, None),
            },
        };
        let mut view = ImageView {
            repository: repo.clone(),
            reference: reference.clone(),
            rule,
            digest: digest.clone(),
            media_type: None,
            confirmed,
            manifest: None,
            verdicts: Vec::new(),
            pulls: self.pull_stats(repo, reference).await?,
        };
        let Some(digest) = digest else {
            return Ok(view);
        };
        view.verdicts = self.verdicts(repo, &digest).await?;
        let Some(m) = self.load_manifest(&digest).await? else {
            return Ok(view);
        };
        view.media_type = Some(m.media_type.clone());
        let parsed = ParsedManifest::parse(&m.bytes)?;
        view.manifest = Some(if parsed.is_index() {
            let mut platforms = Vec::new();
            for (d, p) in &parsed.manifests {
                let child = self
                    .load_manifest(&d.digest)
                    .await?
                    .and_then(|m| ParsedManifest::parse(&m.bytes).ok());
                platforms.push(PlatformView {
                    platform: p.as_ref().map(platform_string),
                    digest: d.digest.clone(),
                    size: child
                        .as_ref()
                        .filter(|c| !c.is_index())
                        .map(|c| c.image_size()),
                    stored: child.is_some(),
                    verdicts: self.verdicts(repo, &d.digest).await?,
                });
            }
            ManifestView::Index { platforms }
        } else {
            let config = match &parsed.config {
                Some(c) => self.layer_view(c).await?,
                None => unreachable!("an image manifest has a config"),
            };
            let mut layers = Vec::with_capacity(parsed.layers.len());
            for l in &parsed.layers {
                layers.push(self.layer_view(l).await?);
            }
            let platform = self
                .inner
                .store
                .get_meta(&keys::platform(&digest))
                .await?
                .and_then(|b| String::from_utf8(b.to_vec()).ok());
            ManifestView::Image {
                config,
                layers,
                size: parsed.image_size(),
                platform,
            }
        });
        Ok(view)
    }

    async fn layer_view(&self, d: &crate::manifest::Descriptor) -> Result<LayerView> {
        Ok(LayerView {
            digest: d.digest.clone(),
            size: d.size,
            media_type: d.media_type.clone(),
            stored: self.inner.store.stat(&d.digest).await?.is_some(),
        })
    }

    /// The policy rule `name` is served under (its freshness, stale-if-error,
    /// content TTL, signature policy), if the rule exists.
    pub fn rule_policy(&self, name: &str) -> Option<RulePolicy> {
        let wiring = self.inner.wiring.load();
        let rule = wiring.rules.get(name)?;
        Some(wiring.policy(rule).clone())
    }

    /// What the admission hooks do under rule `name`, as each describes it
    /// ([`Admission::describe`](crate::policy::Admission::describe)).
    pub fn hooks_for(&self, name: &str) -> Vec<String> {
        let wiring = self.inner.wiring.load();
        let Some(rule) = wiring.rules.get(name) else {
            return Vec::new();
        };
        wiring
            .admission
            .iter()
            .filter_map(|h| h.describe(rule))
            .collect()
    }
}
