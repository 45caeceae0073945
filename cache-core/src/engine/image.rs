//! Whole images: walk a manifest (and an index's platform manifests) and
//! pull every blob through the cache, verified, ahead of the first client.

use futures::StreamExt;

use super::PullThroughCache;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{ParsedManifest, Platform};
use crate::names::{Reference, RepoName};
use crate::upstream::Accept;

/// What an image consists of, as [`PullThroughCache::plan_image`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlan {
    /// The manifests fetched: the one asked for first, then the platform
    /// manifests of an index that the platform filter admitted.
    pub manifests: Vec<Digest>,
    /// The configs and layers those manifests reference, with their sizes,
    /// each once.
    pub blobs: Vec<(Digest, u64)>,
}

/// What [`PullThroughCache::pull_image`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Manifests fetched or found.
    pub manifests: usize,
    /// Blobs now stored, verified.
    pub blobs: usize,
    /// Bytes read through the cache.
    pub bytes: u64,
}

impl PullThroughCache {
    /// Fetches (and caches) the manifest `reference` of repository `name`
    /// and, for an index, the platform manifests `platforms` admits (all of
    /// them when `platforms` is empty; `os/arch` admits every variant), and
    /// lists the blobs they reference. An index offering none of the
    /// platforms is `MANIFEST_UNKNOWN`.
    pub async fn plan_image(
        &self,
        name: &RepoName,
        reference: &Reference,
        platforms: &[Platform],
    ) -> Result<ImagePlan> {
        let any = Accept::any();
        let top = self.manifest(name, reference, &any).await?;
        let parsed = ParsedManifest::parse(&top.bytes)?;
        let mut manifests = vec![top.digest.clone()];
        let mut images = Vec::new();
        if parsed.is_index() {
            for (d, p) in &parsed.manifests {
                let wanted = platforms.is_empty()
                    || p.as_ref()
                        .is_some_and(|p| platforms.iter().any(|a| a.admits(p)));
                if wanted {
                    let m = self
                        .manifest(name, &Reference::Digest(d.digest.clone()), &any)
                        .await?;
                    manifests.push(m.digest.clone());
                    images.push(ParsedManifest::parse(&m.bytes)?);
                }
            }
            if images.is_empty() {
                let wanted: Vec<String> = platforms.iter().map(ToString::to_string).collect();
                return Err(Error::manifest_unknown(
                    name,
                    format!("{reference} (no manifest for {})", wanted.join(", ")),
                ));
            }
        } else {
            images.push(parsed);
        }
        let mut blobs: Vec<(Digest, u64)> = images
            .iter()
            .flat_map(|m| m.config.iter().chain(m.layers.iter()))
            .filter(|d| d.urls.is_empty())
            .map(|d| (d.digest.clone(), d.size))
            .collect();
        blobs.sort();
        blobs.dedup();
        Ok(ImagePlan { manifests, blobs })
    }

    /// Reads blob `digest` of repository `name` through the cache to its
    /// end, so it is stored and verified, telling `progress` the size of
    /// each piece as it passes. Returns the bytes read.
    pub async fn prefetch_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        let r = self.blob(name, digest, None).await?;
        let mut stream = r.body.into_stream();
        let mut n = 0u64;
        while let Some(c) = stream.next().await {
            let c = c?;
            n += c.len() as u64;
            progress(c.len() as u64);
        }
        // The last byte came once the blob verified; stored is what was promised.
        self.settled(digest).await?;
        Ok(n)
    }

    /// Pulls a whole image through the cache: its manifests (see
    /// [`plan_image`](Self::plan_image)) and every blob they reference,
    /// `concurrency` at a time, each verified before it is stored. The
    /// first failure is returned; blobs already pulled stay cached.
    pub async fn pull_image(
        &self,
        name: &RepoName,
        reference: &Reference,
        platforms: &[Platform],
        concurrency: usize,
    ) -> Result<PullReport> {
        let plan = self.plan_image(name, reference, platforms).await?;
        let results: Vec<Result<u64>> = futures::stream::iter(plan.blobs.iter())
            .map(|(d, _)| self.prefetch_blob(name, d, |_| {}))
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut report = PullReport {
            manifests: plan.manifests.len(),
            ..PullReport::default()
        };
        for r in results {
            report.bytes += r?;
            report.blobs += 1;
        }
        Ok(report)
    }
}
