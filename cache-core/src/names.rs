//! Validated names: repositories, tags, manifest references, registries and
//! upstream image references.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::digest::Digest;
use crate::error::{Error, InvalidKind, Result};

/// The longest repository name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A repository name per the OCI distribution specification:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`,
/// at most 255 bytes.
///
/// A parsed name has no empty, `.` or `..` segment and no character outside
/// `[a-z0-9._/-]`, so it is safe to use in storage keys.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(Arc<str>);

/// Checks one `/`-separated component against
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component_ok(c: &[u8]) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let n = c.len();
    loop {
        // An alphanumeric run, non-empty.
        let start = i;
        while i < n && alnum(c[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == n {
            return true;
        }
        // A separator: ".", "_", "__" or one or more "-".
        match c[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < n && c[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < n && c[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

impl RepoName {
    /// The name's shared allocation (for indexes keyed by it without a copy).
    pub(crate) fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// Parses and validates a repository name.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason| Error::invalid(InvalidKind::Name, s, reason);
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(invalid("longer than 255 characters"));
        }
        for comp in s.split('/') {
            if !component_ok(comp.as_bytes()) {
                return Err(invalid(
                    "each '/'-separated component must be lowercase alphanumerics joined by '.', '_', '__' or dashes",
                ));
            }
        }
        Ok(RepoName(Arc::from(s)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// `self/rest`, validated for length.
    pub fn join(&self, rest: &RepoName) -> Result<RepoName> {
        RepoName::parse(&format!("{}/{}", self.0, rest.0))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.0)
    }
}

impl FromStr for RepoName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RepoName::parse(s)
    }
}

impl AsRef<str> for RepoName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Arc<str>);

impl Tag {
    /// Parses and validates a tag.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason| Error::invalid(InvalidKind::Tag, s, reason);
        let b = s.as_bytes();
        let Some(&first) = b.first() else {
            return Err(invalid("empty"));
        };
        if b.len() > 128 {
            return Err(invalid("longer than 128 characters"));
        }
        if !(first.is_ascii_alphanumeric() || first == b'_') {
            return Err(invalid("must start with a letter, digit or '_'"));
        }
        if !b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        {
            return Err(invalid(
                "may contain only letters, digits, '_', '.' and '-'",
            ));
        }
        Ok(Tag(Arc::from(s)))
    }

    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

impl FromStr for Tag {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Tag::parse(s)
    }
}

/// The reference part of a manifest request: a tag or a digest.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable digest.
    Digest(Digest),
}

impl Reference {
    /// Parses a reference: anything with a `:` must be a digest, anything else a tag.
    pub fn parse(s: &str) -> Result<Self> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }

    /// The digest, if this is one.
    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        }
    }

    /// The tag, if this is one.
    pub fn as_tag(&self) -> Option<&Tag> {
        match self {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

impl From<Tag> for Reference {
    fn from(t: Tag) -> Self {
        Reference::Tag(t)
    }
}

impl From<Digest> for Reference {
    fn from(d: Digest) -> Self {
        Reference::Digest(d)
    }
}

/// The canonical name of Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// An upstream registry: a host name, IPv4 address or bracketed IPv6
/// address, with an optional port. Lowercased; Docker Hub's aliases
/// (`index.docker.io`, `registry-1.docker.io`) become `docker.io`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Registry(Arc<str>);

impl Registry {
    /// Parses and normalises a registry host.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason| Error::invalid(InvalidKind::Registry, s, reason);
        if s.is_empty() || s.len() > 255 {
            return Err(invalid("must be 1 to 255 characters"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| invalid("unclosed '[' in an IPv6 address"))?;
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid("not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid("junk after ']'"))?,
                ),
            };
            (&s[..v6.len() + 2], port)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if let Some(p) = port {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("port must be 1 to 65535"));
            }
            match p.parse::<u32>() {
                Ok(1..=65535) => {}
                _ => return Err(invalid("port must be 1 to 65535")),
            }
        }
        if !host.starts_with('[') && !dns_labels(host) {
            return Err(invalid(
                "host must be dot-separated labels of letters, digits and inner dashes",
            ));
        }
        let lower = s.to_ascii_lowercase();
        let canonical = match lower.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => lower,
        };
        Ok(Registry(Arc::from(canonical)))
    }

    /// Docker Hub.
    pub fn docker_hub() -> Self {
        Registry(Arc::from(DOCKER_HUB))
    }

    /// The registry as written in references (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is Docker Hub.
    pub fn is_docker_hub(&self) -> bool {
        &*self.0 == DOCKER_HUB
    }

    /// The host (and port) that serves the registry API: `registry-1.docker.io`
    /// for Docker Hub, the registry itself otherwise.
    pub fn api_host(&self) -> &str {
        if self.is_docker_hub() {
            DOCKER_HUB_API_HOST
        } else {
            &self.0
        }
    }

    /// Applies the registry's naming convention to a repository: on Docker
    /// Hub a one-component name means `library/NAME`.
    pub fn normalize_repo(&self, repo: RepoName) -> RepoName {
        if self.is_docker_hub() && !repo.as_str().contains('/') {
            RepoName(Arc::from(format!("library/{repo}")))
        } else {
            repo
        }
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Registry({})", self.0)
    }
}

impl FromStr for Registry {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Registry::parse(s)
    }
}

/// A fully qualified upstream image reference:
/// `registry/repository[:tag][@digest]`, normalised the way Docker does it
/// (`nginx` is `docker.io/library/nginx:latest`).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ImageRef {
    /// The registry.
    pub registry: Registry,
    /// The repository within the registry, normalised.
    pub repository: RepoName,
    /// The tag, if one was given.
    pub tag: Option<Tag>,
    /// The digest, if one was given; it wins over the tag.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses an image reference.
    ///
    /// The first component is a registry when it contains `.` or `:` or is
    /// `localhost`; otherwise the registry is Docker Hub.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason| Error::invalid(InvalidKind::ImageRef, s, reason);
        let (name, tag, digest) = split_reference(s)?;
        if name.is_empty() {
            return Err(invalid("no repository"));
        }
        let (registry, repo) = match name.split_once('/') {
            Some((first, repo)) if ImageRef::names_registry(first) => {
                (Registry::parse(first)?, repo)
            }
            _ => (Registry::docker_hub(), name),
        };
        let repository = registry.normalize_repo(RepoName::parse(repo)?);
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Whether `component`, the first `/`-separated component of a
    /// reference, names a registry rather than a repository: it contains
    /// `.` or `:`, or is `localhost` (as Docker reads references).
    pub fn names_registry(component: &str) -> bool {
        component.contains(['.', ':']) || component == "localhost"
    }

    /// What to ask the registry for: the digest if given, else the tag, else `latest`.
    pub fn reference(&self) -> Reference {
        reference_of(self.tag.as_ref(), self.digest.as_ref())
    }
}

/// The digest if given, else the tag, else `latest`.
fn reference_of(tag: Option<&Tag>, digest: Option<&Digest>) -> Reference {
    match (digest, tag) {
        (Some(d), _) => Reference::Digest(d.clone()),
        (None, Some(t)) => Reference::Tag(t.clone()),
        (None, None) => Reference::Tag(Tag(Arc::from("latest"))),
    }
}

/// Splits `name[:tag][@digest]` (the one splitter of image references):
/// the name as written, and the tag and digest, validated. A `:` is a
/// tag's only after the last `/`, so a registry's port stays in the name.
fn split_reference(s: &str) -> Result<(&str, Option<Tag>, Option<Digest>)> {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(Digest::parse(d)?)),
        None => (s, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(i) => (
            &rest[..last_slash + i],
            Some(Tag::parse(&rest[last_slash + i + 1..])?),
        ),
        None => (rest, None),
    };
    Ok((name, tag, digest))
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ImageRef::parse(s)
    }
}

/// A reference to an image in the cache's own namespace, as its clients
/// name it: `repository[:tag][@digest]` (`library/alpine:3.20`,
/// `library/alpine@sha256:...`, `library/alpine`). Unlike [`ImageRef`]
/// there is no registry part and no Docker Hub normalisation: the name is
/// the local repository as it is written.
///
/// ```
/// use cache_core::{LocalRef, Reference};
///
/// let r = LocalRef::parse("library/alpine:3.20")?;
/// assert_eq!((r.repository.as_str(), r.reference().to_string().as_str()), ("library/alpine", "3.20"));
/// assert_eq!(LocalRef::parse("library/alpine")?.reference().to_string(), "latest");
/// assert!(LocalRef::parse("Library/Alpine").is_err());
/// # Ok::<(), cache_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct LocalRef {
    /// The local repository.
    pub repository: RepoName,
    /// The tag, if one was given.
    pub tag: Option<Tag>,
    /// The digest, if one was given; it wins over the tag.
    pub digest: Option<Digest>,
}

impl LocalRef {
    /// Parses a local image reference; an error names what is wrong with
    /// the repository, the tag or the digest.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, tag, digest) = split_reference(s)?;
        Ok(LocalRef {
            repository: RepoName::parse(name)?,
            tag,
            digest,
        })
    }

    /// What to ask for: the digest if given, else the tag, else `latest`.
    pub fn reference(&self) -> Reference {
        reference_of(self.tag.as_ref(), self.digest.as_ref())
    }
}

impl fmt::Display for LocalRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.repository.as_str())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for LocalRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        LocalRef::parse(s)
    }
}

/// Whether `host` is dot-separated DNS labels: letters, digits and inner
/// dashes, 1 to 63 characters each.
pub(crate) fn dns_labels(host: &str) -> bool {
    host.split('.').all(|l| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_names_registries_use() {
        for ok in [
            "nginx",
            "library/nginx",
            "a/b/c/d",
            "foo_bar",
            "foo__bar",
            "foo---bar",
            "foo.bar",
            "0",
            "bitnami/postgresql-repmgr",
        ] {
            RepoName::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn refuses_malformed_names_with_name_invalid() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "Nginx",
            "/nginx",
            "nginx/",
            "a//b",
            "..",
            "a/../b",
            "a/./b",
            "%2e%2e",
            "a___b",
            "a._b",
            "-a",
            "a-",
            "a b",
            long.as_str(),
        ] {
            let e = RepoName::parse(bad).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::NameInvalid, "{bad}");
        }
    }

    #[test]
    fn tags_follow_the_distribution_grammar() {
        Tag::parse("v1.2.3-alpine_X").unwrap();
        Tag::parse("_x").unwrap();
        Tag::parse(&"a".repeat(128)).unwrap();
        for bad in ["", ".x", "-x", "a:b", "a/b", &"a".repeat(129)] {
            assert_eq!(
                Tag::parse(bad).unwrap_err().code(),
                crate::ErrorCode::TagInvalid
            );
        }
    }

    #[test]
    fn references_with_a_colon_must_be_digests() {
        assert!(matches!(
            Reference::parse("latest").unwrap(),
            Reference::Tag(_)
        ));
        let d = Digest::sha256_of(b"");
        assert_eq!(Reference::parse(d.as_str()).unwrap(), Reference::Digest(d));
        assert!(Reference::parse("sha256:nothex").is_err());
    }

    #[test]
    fn docker_hub_short_names_normalise() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx");
        assert_eq!(r.reference().to_string(), "latest");
        let r = ImageRef::parse("index.docker.io/bitnami/redis:7").unwrap();
        assert_eq!(r.to_string(), "docker.io/bitnami/redis:7");
        assert_eq!(r.registry.api_host(), "registry-1.docker.io");
        let r = ImageRef::parse("ghcr.io/acme/app:1.0").unwrap();
        assert_eq!(r.registry.as_str(), "ghcr.io");
        assert_eq!(r.repository.as_str(), "acme/app");
        let r = ImageRef::parse("localhost:5000/x@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
        assert_eq!(r.registry.as_str(), "localhost:5000");
        assert!(matches!(r.reference(), Reference::Digest(_)));
        let r = ImageRef::parse("127.0.0.1:5000/demo:v1").unwrap();
        assert_eq!(r.registry.as_str(), "127.0.0.1:5000");
        assert_eq!(r.repository.as_str(), "demo");
    }

    #[test]
    fn registries_validate_host_and_port() {
        Registry::parse("[::1]:5000").unwrap();
        Registry::parse("Quay.IO")
            .map(|r| assert_eq!(r.as_str(), "quay.io"))
            .unwrap();
        for bad in [
            "", "a:0", "a:65536", "a:", "-a.com", "a..b", "[::1", "[zz]", "a/b", "a_b.com",
        ] {
            assert!(Registry::parse(bad).is_err(), "{bad}");
        }
    }

    /// The specification's own regular expression, as the oracle.
    fn spec_name_ok(s: &str) -> bool {
        static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
        let re = RE.get_or_init(|| {
            regex::Regex::new(
                r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$",
            )
            .unwrap()
        });
        s.len() <= 255 && re.is_match(s)
    }

    /// The oracle: the grammar `repository[:tag][@digest]` read the plain
    /// way, a `@` first, then the last `:` unless a `/` follows it.
    fn naive_local(s: &str) -> Option<LocalRef> {
        let (rest, digest) = match s.find('@') {
            Some(i) => (&s[..i], Some(Digest::parse(&s[i + 1..]).ok()?)),
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => {
                (&rest[..i], Some(Tag::parse(&rest[i + 1..]).ok()?))
            }
            _ => (rest, None),
        };
        Some(LocalRef {
            repository: RepoName::parse(name).ok()?,
            tag,
            digest,
        })
    }

    /// Texts shaped like local references, valid or nearly so: names,
    /// tags and digests drawn from their alphabets with stray separators.
    fn local_ref_text() -> impl Strategy<Value = String> {
        let digest = prop_oneof![
            Just(Digest::sha256_of(b"x").to_string()),
            "sha256:[0-9a-f]{62,66}",
            "[a-z0-9:@/]{0,8}",
        ];
        (
            "[a-z0-9._/-]{0,16}",
            proptest::option::of("[A-Za-z0-9_.:/-]{0,10}"),
            proptest::option::of(digest),
        )
            .prop_map(|(name, tag, digest)| {
                let mut s = name;
                if let Some(t) = tag {
                    s.push(':');
                    s.push_str(&t);
                }
                if let Some(d) = digest {
                    s.push('@');
                    s.push_str(&d);
                }
                s
            })
    }

    #[test]
    fn local_references_name_tag_and_digest() {
        let d = Digest::sha256_of(b"");
        let r = LocalRef::parse(&format!("library/alpine:3.20@{d}")).unwrap();
        assert_eq!(r.repository.as_str(), "library/alpine");
        assert_eq!(r.tag.as_ref().map(Tag::as_str), Some("3.20"));
        assert_eq!(r.reference(), Reference::Digest(d.clone()));
        let r = LocalRef::parse("nginx").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.reference().to_string()),
            ("nginx", "latest".to_owned())
        );
        // No Docker Hub normalisation, no registry.
        assert!(LocalRef::parse("127.0.0.1:5000/app:v1").is_err());
        assert!(LocalRef::parse("app:").is_err());
        assert!(LocalRef::parse("app@sha256:nothex").is_err());
    }

    proptest! {
        #[test]
        fn name_parser_agrees_with_the_spec_regex(s in "[a-z0-9._/-]{0,24}") {
            prop_assert_eq!(RepoName::parse(&s).is_ok(), spec_name_ok(&s), "{}", s);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}") {
            let _ = RepoName::parse(&s);
            let _ = Tag::parse(&s);
            let _ = Reference::parse(&s);
            let _ = Registry::parse(&s);
            let _ = ImageRef::parse(&s);
            let _ = LocalRef::parse(&s);
        }

        #[test]
        fn local_references_agree_with_a_naive_split(s in local_ref_text()) {
            prop_assert_eq!(LocalRef::parse(&s).ok(), naive_local(&s), "{}", s);
            if let Ok(r) = LocalRef::parse(&s) {
                prop_assert_eq!(LocalRef::parse(&r.to_string()).unwrap(), r);
            }
        }

        #[test]
        fn accepted_values_round_trip(s in "[a-z0-9][a-z0-9._/-]{0,30}", t in "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}") {
            if let Ok(n) = RepoName::parse(&s) {
                prop_assert_eq!(RepoName::parse(n.as_str()).unwrap(), n);
            }
            let tag = Tag::parse(&t).unwrap();
            prop_assert_eq!(tag.as_str(), t.as_str());
            if let Ok(r) = ImageRef::parse(&format!("{s}:{t}")) {
                prop_assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
            }
        }
    }
}
