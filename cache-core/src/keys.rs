//! The metadata-key layout: every key the engine and its admission hooks
//! keep in a [`BlobStore`](crate::BlobStore)'s metadata space is built
//! here, and parsed back here, so that the layout has one home.
//!
//! ```text
//! repos/<repo>/_tags/<tag>              a cached tag (digest, media type, when confirmed)
//! repos/<repo>/_links/<alg>/<hex>       a grant: the repository may read the content
//! repos/<repo>/_referrers/<alg>/<hex>   the referrers of a manifest, as last fetched
//! manifests/<alg>/<hex>                 a stored manifest's media type
//! platforms/<alg>/<hex>                 the platform an index declared for a manifest
//! leases/blobs/<alg>/<hex>              which instance fetches the blob
//! leases/gc                             which instance runs gc
//! scans/<scanner>/<alg>/<hex>           a vulnerability scanner's findings on a manifest
//! purged/<alg>/<hex>                    a blob a purge took grants of: gc removes it unless re-granted
//! leases/sync/<rule>                    which instance runs a rule's sync
//! syncs/<rule>                          a rule's last sync run (when, where, what it did)
//! repos/<repo>/_pulls/all               how often and when last the repository was pulled
//! repos/<repo>/_pulls/tags/<tag>        ... a tag of it (a manifest pulled by tag)
//! repos/<repo>/_pulls/digests/<alg>/<hex>  ... a manifest pulled by digest
//! repos/<repo>/_verdicts/<alg>/<hex>    the admission decisions on a manifest, as pulls met them
//! ```
//!
//! A rule's name stands in a key as itself when it is one key segment
//! (letters, digits, `.`, `_`, `-`), else as `sha256-` and the hex of its
//! SHA-256.
//!
//! Repository components never start with `_`, so `_tags`, `_links`,
//! `_referrers`, `_pulls` and `_verdicts` cannot collide with a nested
//! repository. Keys are built
//! from validated names and digests only; the one raw input, a scanner's
//! name, is checked ([`scans_of`]).
//!
//! ```
//! use cache_core::{Digest, RepoName, keys};
//!
//! let repo = RepoName::parse("library/nginx")?;
//! let d = Digest::sha256_of(b"{}");
//! let k = keys::grant(&repo, &d);
//! assert_eq!(k.as_str(), format!("repos/library/nginx/_links/sha256/{}", d.hex()));
//! assert_eq!(keys::parse_grant(&k), Some((repo, d.clone())));
//! assert!(k.starts_with(&keys::repos()));
//! assert!(keys::scan_record("trivy", &d).is_ok());
//! assert!(keys::scan_record("not/one/segment", &d).is_err());
//! # Ok::<(), cache_core::Error>(())
//! ```

use crate::digest::Digest;
use crate::error::{Error, InvalidKind, Result};
use crate::names::{RepoName, Tag};
use crate::store::MetaKey;

fn key(s: String) -> MetaKey {
    MetaKey::parse(&s).expect("keys are built from validated names and digests")
}

/// `<alg>/<hex>` of a digest, as it stands at the end of a key.
fn digest_part(d: &Digest) -> String {
    format!("{}/{}", d.algorithm(), d.hex())
}

/// The digest of an `<alg>/<hex>` tail.
fn parse_digest_part(tail: &str) -> Option<Digest> {
    let (alg, hex) = tail.split_once('/')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// `repos`: everything kept per repository (tags, grants, referrers).
pub fn repos() -> MetaKey {
    key("repos".to_owned())
}

/// `repos/<repo>`: everything kept for a repository, and for the
/// repositories nested under it (filter with [`repo_of`]).
pub fn repo(repo: &RepoName) -> MetaKey {
    key(format!("repos/{repo}"))
}

/// `repos/<repo>/_links`: every grant of a repository.
pub fn grants(repo: &RepoName) -> MetaKey {
    key(format!("repos/{repo}/_links"))
}

/// `repos/<repo>/_tags/<tag>`: the tag's record.
pub fn tag(repo: &RepoName, tag: &Tag) -> MetaKey {
    key(format!("repos/{repo}/_tags/{tag}"))
}

/// `repos/<repo>/_tags`: every cached tag of a repository.
pub fn tags(repo: &RepoName) -> MetaKey {
    key(format!("repos/{repo}/_tags"))
}

/// `repos/<repo>/_links/<alg>/<hex>`: a grant, the repository is entitled
/// to the content.
pub fn grant(repo: &RepoName, d: &Digest) -> MetaKey {
    key(format!("repos/{repo}/_links/{}", digest_part(d)))
}

/// `repos/<repo>/_referrers/<alg>/<hex>`: the referrers of a manifest, as
/// last fetched.
pub fn referrers(repo: &RepoName, d: &Digest) -> MetaKey {
    key(format!("repos/{repo}/_referrers/{}", digest_part(d)))
}

/// `repos/<repo>/_pulls/all`: how often and when last the repository was
/// pulled (manifests asked for by clients).
pub fn repo_pulls(repo: &RepoName) -> MetaKey {
    key(format!("repos/{repo}/_pulls/all"))
}

/// `repos/<repo>/_pulls/tags/<tag>`: how often and when last a tag was pulled.
pub fn tag_pulls(repo: &RepoName, tag: &Tag) -> MetaKey {
    key(format!("repos/{repo}/_pulls/tags/{tag}"))
}

/// `repos/<repo>/_pulls/digests/<alg>/<hex>`: how often and when last a
/// manifest was pulled by digest.
pub fn digest_pulls(repo: &RepoName, d: &Digest) -> MetaKey {
    key(format!("repos/{repo}/_pulls/digests/{}", digest_part(d)))
}

/// `repos/<repo>/_verdicts/<alg>/<hex>`: the admission decisions on a
/// manifest (one per policy), as pulls through the repository met them.
pub fn verdicts(repo: &RepoName, d: &Digest) -> MetaKey {
    key(format!("repos/{repo}/_verdicts/{}", digest_part(d)))
}

/// `repos/<repo>/_verdicts`: every verdict record of a repository.
pub fn verdicts_of(repo: &RepoName) -> MetaKey {
    key(format!("repos/{repo}/_verdicts"))
}

/// A verdict record key's repository and digest.
pub fn parse_verdicts(k: &MetaKey) -> Option<(RepoName, Digest)> {
    let rest = k.as_str().strip_prefix("repos/")?;
    let (repo, tail) = rest.split_once("/_verdicts/")?;
    Some((RepoName::parse(repo).ok()?, parse_digest_part(tail)?))
}

/// The repository a `_pulls` or `_verdicts` record is about (what the
/// people who run the cache look at, not content: [`repo_of`] says `None`).
pub fn record_repo(k: &MetaKey) -> Option<RepoName> {
    let rest = k.as_str().strip_prefix("repos/")?;
    let (repo, _) = ["/_pulls/", "/_verdicts/"]
        .iter()
        .find_map(|sep| rest.split_once(sep))?;
    RepoName::parse(repo).ok()
}

/// `manifests/<alg>/<hex>`: a stored manifest's media type.
pub fn manifest(d: &Digest) -> MetaKey {
    key(format!("manifests/{}", digest_part(d)))
}

/// `platforms`: every platform record.
pub fn platforms() -> MetaKey {
    key("platforms".to_owned())
}

/// `platforms/<alg>/<hex>`: the platform an index declared for a manifest.
pub fn platform(d: &Digest) -> MetaKey {
    key(format!("platforms/{}", digest_part(d)))
}

/// `leases/blobs/<alg>/<hex>`: which instance fetches the blob (stores
/// shared by several instances).
pub fn blob_lease(d: &Digest) -> MetaKey {
    key(format!("leases/blobs/{}", digest_part(d)))
}

/// `leases/gc`: which instance runs gc.
pub fn gc_lease() -> MetaKey {
    key("leases/gc".to_owned())
}

/// A rule's name as one key segment.
fn rule_segment(rule: &str) -> String {
    let plain = !rule.is_empty()
        && rule.len() <= 128
        && rule != "."
        && rule != ".."
        && rule
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if plain {
        rule.to_owned()
    } else {
        format!("sha256-{}", Digest::sha256_of(rule.as_bytes()).hex())
    }
}

/// `leases/sync/<rule>`: which instance runs the rule's sync.
pub fn sync_lease(rule: &str) -> MetaKey {
    key(format!("leases/sync/{}", rule_segment(rule)))
}

/// `syncs/<rule>`: the rule's last sync run.
pub fn sync_record(rule: &str) -> MetaKey {
    key(format!("syncs/{}", rule_segment(rule)))
}

/// `scans`: every scanner's findings.
pub fn scans() -> MetaKey {
    key("scans".to_owned())
}

/// `scans/<scanner>`: one scanner's findings. The name must be one key
/// segment (letters, digits, `.`, `_`, `-`); anything else is an error
/// naming it.
pub fn scans_of(scanner: &str) -> Result<MetaKey> {
    if scanner.contains('/') {
        return Err(Error::invalid(
            InvalidKind::MetaKey,
            scanner,
            "a scanner name is one segment: letters, digits, '.', '_' and '-'",
        ));
    }
    MetaKey::parse(&format!("scans/{scanner}")).map_err(|_| {
        Error::invalid(
            InvalidKind::MetaKey,
            scanner,
            "a scanner name is one segment: letters, digits, '.', '_' and '-'",
        )
    })
}

/// `scans/<scanner>/<alg>/<hex>`: a scanner's findings on a manifest; an
/// error for a scanner name [`scans_of`] refuses.
pub fn scan_record(scanner: &str, d: &Digest) -> Result<MetaKey> {
    Ok(key(format!("{}/{}", scans_of(scanner)?, digest_part(d))))
}

/// `purged`: every purge mark.
pub fn purged_all() -> MetaKey {
    key("purged".to_owned())
}

/// `purged/<alg>/<hex>`: a blob whose grants a purge withdrew; the next
/// gc removes it unless some repository is granted it again.
pub fn purged(d: &Digest) -> MetaKey {
    key(format!("purged/{}", digest_part(d)))
}

/// The digest a purge mark is about.
pub fn parse_purged(k: &MetaKey) -> Option<Digest> {
    parse_digest_part(k.as_str().strip_prefix("purged/")?)
}

/// The repository a key under `repos/` is about (a tag, a grant or a
/// referrers record).
pub fn repo_of(k: &MetaKey) -> Option<RepoName> {
    let rest = k.as_str().strip_prefix("repos/")?;
    let (repo, _) = ["/_links/", "/_tags/", "/_referrers/"]
        .iter()
        .find_map(|sep| rest.split_once(sep))?;
    RepoName::parse(repo).ok()
}

/// A grant key's repository and digest.
pub fn parse_grant(k: &MetaKey) -> Option<(RepoName, Digest)> {
    let rest = k.as_str().strip_prefix("repos/")?;
    let (repo, tail) = rest.split_once("/_links/")?;
    Some((RepoName::parse(repo).ok()?, parse_digest_part(tail)?))
}

/// A tag key's repository and tag.
pub fn parse_tag(k: &MetaKey) -> Option<(RepoName, Tag)> {
    let rest = k.as_str().strip_prefix("repos/")?;
    let (repo, tag) = rest.split_once("/_tags/")?;
    Some((RepoName::parse(repo).ok()?, Tag::parse(tag).ok()?))
}

/// The digest a platform key is about.
pub fn parse_platform(k: &MetaKey) -> Option<Digest> {
    parse_digest_part(k.as_str().strip_prefix("platforms/")?)
}

/// A scan record key's scanner and digest.
pub fn parse_scan_record(k: &MetaKey) -> Option<(&str, Digest)> {
    let (scanner, tail) = k.as_str().strip_prefix("scans/")?.split_once('/')?;
    Some((scanner, parse_digest_part(tail)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest(seed: u8) -> Digest {
        Digest::sha256_of(&[seed])
    }

    #[test]
    fn every_key_parses_back_to_what_built_it() {
        let repo = RepoName::parse("acme/team/app").unwrap();
        let t = Tag::parse("v1.2").unwrap();
        let d = digest(1);
        assert_eq!(parse_tag(&tag(&repo, &t)), Some((repo.clone(), t.clone())));
        assert_eq!(
            parse_grant(&grant(&repo, &d)),
            Some((repo.clone(), d.clone()))
        );
        assert_eq!(parse_platform(&platform(&d)), Some(d.clone()));
        assert_eq!(parse_purged(&purged(&d)), Some(d.clone()));
        assert_eq!(repo_of(&referrers(&repo, &d)), Some(repo.clone()));
        assert_eq!(parse_purged(&platform(&d)), None);
        assert_eq!(
            parse_verdicts(&verdicts(&repo, &d)),
            Some((repo.clone(), d.clone()))
        );
        assert_eq!(parse_verdicts(&grant(&repo, &d)), None);
        assert_eq!(parse_tag(&tag_pulls(&repo, &t)), None);
        assert_eq!(parse_grant(&digest_pulls(&repo, &d)), None);
        assert_eq!(
            repo_of(&repo_pulls(&repo)),
            None,
            "pull counts are no content"
        );
        let scan = scan_record("trivy-1.0", &d).unwrap();
        assert_eq!(parse_scan_record(&scan), Some(("trivy-1.0", d.clone())));
        assert_eq!(repo_of(&tag(&repo, &t)), Some(repo.clone()));
        assert_eq!(repo_of(&grant(&repo, &d)), Some(repo.clone()));
        // One kind of key does not parse as another.
        assert_eq!(parse_tag(&grant(&repo, &d)), None);
        assert_eq!(parse_grant(&tag(&repo, &t)), None);
        assert_eq!(parse_platform(&manifest(&d)), None);
        assert_eq!(parse_scan_record(&blob_lease(&d)), None);
    }

    #[test]
    fn keys_lie_under_their_prefixes() {
        let repo = RepoName::parse("library/nginx").unwrap();
        let d = digest(2);
        assert!(tag(&repo, &Tag::parse("latest").unwrap()).starts_with(&tags(&repo)));
        assert!(verdicts(&repo, &d).starts_with(&verdicts_of(&repo)));
        for k in [
            tags(&repo),
            grant(&repo, &d),
            referrers(&repo, &d),
            repo_pulls(&repo),
            verdicts(&repo, &d),
        ] {
            assert!(k.starts_with(&repos()), "{k}");
            assert!(k.starts_with(&self::repo(&repo)), "{k}");
        }
        assert!(grant(&repo, &d).starts_with(&grants(&repo)));
        assert!(!grant(&repo, &d).starts_with(&grants(&RepoName::parse("library").unwrap())));
        assert!(purged(&d).starts_with(&purged_all()));
        assert!(platform(&d).starts_with(&platforms()));
        assert!(
            scan_record("s", &d)
                .unwrap()
                .starts_with(&scans_of("s").unwrap())
        );
        assert!(scans_of("s").unwrap().starts_with(&scans()));
        assert!(
            !scan_record("s", &d)
                .unwrap()
                .starts_with(&scans_of("s2").unwrap())
        );
    }

    #[test]
    fn any_rule_name_makes_a_sync_key_and_different_names_different_keys() {
        let names = [
            "hub-library",
            "a/b",
            "..",
            "",
            "with space",
            "ünï",
            "hub-library ",
        ];
        let keys: std::collections::HashSet<String> = names
            .iter()
            .map(|n| sync_record(n).as_str().to_owned())
            .collect();
        assert_eq!(keys.len(), names.len());
        assert_eq!(sync_record("hub-library").as_str(), "syncs/hub-library");
        assert_eq!(
            sync_lease("hub-library").as_str(),
            "leases/sync/hub-library"
        );
        assert!(
            sync_lease("a/b")
                .as_str()
                .starts_with("leases/sync/sha256-")
        );
    }

    #[test]
    fn scanner_names_that_are_not_one_segment_are_refused_by_name() {
        for bad in ["", "a/b", "..", ".", "a b", "a\"b", "a\nb"] {
            let e = scan_record(bad, &digest(3)).unwrap_err();
            assert!(e.to_string().contains("scanner name"), "{bad:?}: {e}");
        }
    }

    proptest! {
        #[test]
        fn scan_records_round_trip_for_every_accepted_name(name in "[A-Za-z0-9._/-]{0,12}", seed: u8) {
            let d = digest(seed);
            match scan_record(&name, &d) {
                Ok(k) => prop_assert_eq!(parse_scan_record(&k), Some((name.as_str(), d))),
                Err(_) => prop_assert!(
                    name.is_empty() || name.contains('/') || name == "." || name == ".."
                ),
            }
        }
    }
}
