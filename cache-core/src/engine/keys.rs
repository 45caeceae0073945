//! The engine's metadata layout. Repository components never start with
//! `_`, so `_tags` and `_links` cannot collide with a nested repository.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::digest::Digest;
use crate::names::{RepoName, Tag};
use crate::store::MetaKey;

fn key(s: String) -> MetaKey {
    MetaKey::parse(&s).expect("keys are built from validated names and digests")
}

/// `repos/<repo>/_tags/<tag>`: the tag's current digest.
pub(crate) fn tag(repo: &RepoName, tag: &Tag) -> MetaKey {
    key(format!("repos/{repo}/_tags/{tag}"))
}

/// `repos/<repo>/_tags`: every cached tag of a repository.
pub(crate) fn tags_prefix(repo: &RepoName) -> MetaKey {
    key(format!("repos/{repo}/_tags"))
}

/// `repos/<repo>/_links/<algo>/<hex>`: the repository is entitled to the
/// content (see the `entitlement` module).
pub(crate) fn entitlement(repo: &RepoName, d: &Digest) -> MetaKey {
    key(format!("repos/{repo}/_links/{}/{}", d.algorithm(), d.hex()))
}

/// `manifests/<algo>/<hex>`: a stored manifest's media type.
pub(crate) fn manifest(d: &Digest) -> MetaKey {
    key(format!("manifests/{}/{}", d.algorithm(), d.hex()))
}

/// `platforms/<algo>/<hex>`: the platform an index declared for a manifest.
pub(crate) fn platform(d: &Digest) -> MetaKey {
    key(format!("platforms/{}/{}", d.algorithm(), d.hex()))
}

/// `repos/<repo>/_referrers/<algo>/<hex>`: the referrers of a manifest,
/// as last fetched (see [`ReferrersRecord`]).
pub(crate) fn referrers(repo: &RepoName, d: &Digest) -> MetaKey {
    key(format!(
        "repos/{repo}/_referrers/{}/{}",
        d.algorithm(),
        d.hex()
    ))
}

/// The repository a key under `repos/` is about.
pub(crate) fn repo_of(k: &MetaKey) -> Option<RepoName> {
    let rest = k.as_str().strip_prefix("repos/")?;
    let (repo, _) = ["/_links/", "/_tags/"]
        .iter()
        .find_map(|sep| rest.split_once(sep))?;
    RepoName::parse(repo).ok()
}

/// A referrers index and when the upstream gave it: the time in unix
/// milliseconds on the first line, then the index's bytes.
pub(crate) struct ReferrersRecord {
    pub(crate) fetched: SystemTime,
    pub(crate) index: bytes::Bytes,
}

impl ReferrersRecord {
    pub(crate) fn encode(&self) -> bytes::Bytes {
        let ms = self
            .fetched
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut v = format!("{ms}\n").into_bytes();
        v.extend_from_slice(&self.index);
        bytes::Bytes::from(v)
    }

    pub(crate) fn decode(b: &bytes::Bytes) -> Option<ReferrersRecord> {
        let nl = b.iter().position(|c| *c == b'\n')?;
        let ms: u64 = std::str::from_utf8(&b[..nl]).ok()?.parse().ok()?;
        Some(ReferrersRecord {
            fetched: UNIX_EPOCH + Duration::from_millis(ms),
            index: b.slice(nl + 1..),
        })
    }
}

/// `leases/blobs/<algo>/<hex>`: which instance fetches the blob (stores
/// shared by several instances; see the `lease` module).
pub(crate) fn blob_lease(d: &Digest) -> MetaKey {
    key(format!("leases/blobs/{}/{}", d.algorithm(), d.hex()))
}

/// `leases/gc`: which instance runs gc.
pub(crate) fn gc_lease() -> MetaKey {
    key("leases/gc".to_owned())
}

/// Splits an entitlement key back into repository and digest.
pub(crate) fn parse_entitlement(k: &MetaKey) -> Option<(RepoName, Digest)> {
    let rest = k.as_str().strip_prefix("repos/")?;
    let (repo, tail) = rest.split_once("/_links/")?;
    let (alg, hex) = tail.split_once('/')?;
    Some((
        RepoName::parse(repo).ok()?,
        Digest::parse(&format!("{alg}:{hex}")).ok()?,
    ))
}

/// The digest a platform key is about.
pub(crate) fn parse_platform(k: &MetaKey) -> Option<Digest> {
    let (alg, hex) = k.as_str().strip_prefix("platforms/")?.split_once('/')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// Splits a tag key back into repository and tag.
pub(crate) fn parse_tag(k: &MetaKey) -> Option<(RepoName, Tag)> {
    let rest = k.as_str().strip_prefix("repos/")?;
    let (repo, tag) = rest.split_once("/_tags/")?;
    Some((RepoName::parse(repo).ok()?, Tag::parse(tag).ok()?))
}

/// A cached tag: what it pointed to and when the upstream last confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagRecord {
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
    pub(crate) confirmed: SystemTime,
}

impl TagRecord {
    pub(crate) fn encode(&self) -> bytes::Bytes {
        let ms = self
            .confirmed
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        bytes::Bytes::from(format!("{}\n{}\n{ms}\n", self.digest, self.media_type))
    }

    /// `None` for anything malformed: a damaged record is a cache miss.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let mut it = s.lines();
        let digest = Digest::parse(it.next()?).ok()?;
        let media_type = it.next()?.to_owned();
        let ms: u64 = it.next()?.parse().ok()?;
        Some(TagRecord {
            digest,
            media_type,
            confirmed: UNIX_EPOCH + Duration::from_millis(ms),
        })
    }
}
