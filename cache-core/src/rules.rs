//! Caching rules: the allow-list that maps local repository names to
//! upstream repositories.
//!
//! A rule maps a `source` (`registry/repository` upstream) to a `target`
//! (a local repository name). Exact rules map one repository; a trailing
//! `/*` on both sides maps a namespace, and the part matched by `*` (which
//! may contain `/`) carries over. An exact rule beats any wildcard; among
//! wildcards the longest target prefix wins. Lookups cost one hash probe per
//! component of the name, whatever the number of rules.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::names::{Registry, RepoName};

/// The default maximum number of rules in a [`RuleSet`].
pub const DEFAULT_MAX_RULES: usize = 100_000;

/// A caching rule as written in configuration, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// A unique name, used in logs, metrics and [`RuleSet::explain`].
    pub name: String,
    /// The upstream: `registry/repository` or `registry/prefix/*` or
    /// `registry/*`. As with `docker pull`, a first component that is not
    /// a host (no `.` or `:`, not `localhost`) means Docker Hub:
    /// `library/*` is `docker.io/library/*` and `nginx` is
    /// `docker.io/library/nginx`.
    pub source: String,
    /// The local repository: `name` or `prefix/*` or `*`.
    pub target: String,
    /// The name of a credential set for the upstream, if any.
    pub credentials: Option<String>,
}

impl RuleSpec {
    /// A rule without credentials.
    pub fn new(
        name: impl Into<String>,
        source: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        RuleSpec {
            name: name.into(),
            source: source.into(),
            target: target.into(),
            credentials: None,
        }
    }

    /// The same rule with a credential-set reference.
    pub fn with_credentials(mut self, credentials: impl Into<String>) -> Self {
        self.credentials = Some(credentials.into());
        self
    }
}

/// One side of a rule: a single repository, or everything below a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Exactly this repository.
    Exact(RepoName),
    /// Every repository below this prefix (`prefix/*`), or every
    /// repository at all (`*`, prefix `None`).
    Prefix(Option<RepoName>),
}

impl Pattern {
    fn parse(s: &str, rule: &str, side: &str) -> Result<Self> {
        Self::parse_pattern(s).map_err(|e| Error::invalid_rule(rule, format!("{side} {s:?}: {e}")))
    }

    /// A repository pattern as a rule's target is written (`name`,
    /// `prefix/*` or `*`), for what else speaks that language (access
    /// grants); the error says why not.
    ///
    /// ```
    /// use cache_core::rules::Pattern;
    /// let p = Pattern::parse_pattern("ci/*").unwrap();
    /// assert!(p.matches_name("ci/app/web") && !p.matches_name("ci") && !p.matches_name("cid/x"));
    /// assert!(Pattern::parse_pattern("ci/*/x").is_err());
    /// ```
    pub fn parse_pattern(s: &str) -> std::result::Result<Self, String> {
        if s == "*" {
            return Ok(Pattern::Prefix(None));
        }
        let (body, wild) = match s.strip_suffix("/*") {
            Some(b) => (b, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err("'*' is allowed only as a whole trailing component".into());
        }
        let name = RepoName::parse(body).map_err(|e| e.to_string())?;
        Ok(if wild {
            Pattern::Prefix(Some(name))
        } else {
            Pattern::Exact(name)
        })
    }

    /// Whether the repository `name` matches.
    pub fn matches_name(&self, name: &str) -> bool {
        self.matches(name).is_some()
    }

    /// Whether this pattern is a wildcard.
    pub fn is_wildcard(&self) -> bool {
        matches!(self, Pattern::Prefix(_))
    }

    /// If `name` matches, what `*` stands for (empty for an exact match).
    fn matches<'n>(&self, name: &'n str) -> Option<&'n str> {
        match self {
            Pattern::Exact(e) => (e.as_str() == name).then_some(""),
            Pattern::Prefix(None) => Some(name),
            Pattern::Prefix(Some(p)) => name
                .strip_prefix(p.as_str())
                .and_then(|r| r.strip_prefix('/')),
        }
    }

    fn expand(&self, rest: &str) -> Result<RepoName> {
        match self {
            Pattern::Exact(e) => Ok(e.clone()),
            Pattern::Prefix(None) => RepoName::parse(rest),
            Pattern::Prefix(Some(p)) => RepoName::parse(&format!("{p}/{rest}")),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(n) => n.fmt(f),
            Pattern::Prefix(None) => f.write_str("*"),
            Pattern::Prefix(Some(p)) => write!(f, "{p}/*"),
        }
    }
}

/// A validated caching rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    name: Arc<str>,
    registry: Registry,
    source: Pattern,
    target: Pattern,
    credentials: Option<Arc<str>>,
}

/// Whether the first component of a reference names a registry host rather
/// than a Docker Hub namespace: Docker's rule (a `.` or `:`, or `localhost`).
fn looks_like_host(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost"
}

impl Rule {
    /// Validates one rule on its own (uniqueness is checked by the set).
    pub fn from_spec(spec: &RuleSpec) -> Result<Self> {
        let err = |reason: String| Error::invalid_rule(spec.name.clone(), reason);
        if spec.name.trim().is_empty() {
            return Err(err("a rule needs a non-empty name".into()));
        }
        let (registry, repo) = match spec.source.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (
                Registry::parse(first)
                    .map_err(|e| err(format!("source {:?}: {e}", spec.source)))?,
                rest,
            ),
            None if looks_like_host(&spec.source) => {
                return Err(err(format!(
                    "source {:?} names a registry but no repository: use REGISTRY/REPOSITORY, REGISTRY/PREFIX/* or REGISTRY/*",
                    spec.source
                )));
            }
            // Docker's convention: no host means Docker Hub.
            _ => (
                Registry::parse(crate::names::DOCKER_HUB).expect("a valid host"),
                spec.source.as_str(),
            ),
        };
        let mut source = Pattern::parse(repo, &spec.name, "source")?;
        if let Pattern::Exact(n) = source {
            source = Pattern::Exact(registry.normalize_repo(n));
        }
        let target = Pattern::parse(&spec.target, &spec.name, "target")?;
        if source.is_wildcard() != target.is_wildcard() {
            return Err(err(format!(
                "source {:?} and target {:?} must both end in '/*' or neither",
                spec.source, spec.target
            )));
        }
        if let Some(c) = &spec.credentials
            && c.trim().is_empty()
        {
            return Err(err("credentials reference is empty".into()));
        }
        Ok(Rule {
            name: Arc::from(spec.name.as_str()),
            registry,
            source,
            target,
            credentials: spec.credentials.as_deref().map(Arc::from),
        })
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The upstream registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The upstream side.
    pub fn source(&self) -> &Pattern {
        &self.source
    }

    /// The local side.
    pub fn target(&self) -> &Pattern {
        &self.target
    }

    /// The credential-set reference, if any.
    pub fn credentials(&self) -> Option<&str> {
        self.credentials.as_deref()
    }

    /// Maps what the target's `*` matched onto the upstream repository,
    /// applying the registry's naming convention.
    fn upstream_for(&self, rest: &str) -> Result<RepoName> {
        Ok(self.registry.normalize_repo(self.source.expand(rest)?))
    }
}

/// The outcome of a successful lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The rule that matched.
    pub rule: &'a Rule,
    /// The local repository name.
    pub local: RepoName,
    /// The upstream registry.
    pub registry: &'a Registry,
    /// The repository to ask the upstream for.
    pub upstream: RepoName,
    /// The credential-set reference of the rule.
    pub credentials: Option<&'a str>,
}

/// Why a name resolved, or did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Explanation {
    /// An exact rule matched.
    Exact {
        /// The rule's name.
        rule: String,
        /// The upstream it maps to.
        upstream: String,
    },
    /// A wildcard rule matched.
    Wildcard {
        /// The rule's name.
        rule: String,
        /// The target prefix that matched (`*` for the catch-all).
        target: String,
        /// What `*` stood for.
        matched: String,
        /// The upstream it maps to.
        upstream: String,
    },
    /// No rule matched.
    NoMatch {
        /// The name.
        name: String,
        /// The target patterns looked up, most specific first.
        tried: Vec<String>,
    },
    /// A rule matched, but the upstream name it produced is invalid (too long).
    Invalid {
        /// The rule's name.
        rule: String,
        /// The error.
        reason: String,
    },
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Explanation::Exact { rule, upstream } => {
                write!(f, "exact rule {rule:?} maps it to {upstream}")
            }
            Explanation::Wildcard {
                rule,
                target,
                matched,
                upstream,
            } => write!(
                f,
                "wildcard rule {rule:?} (target {target}) matches with '*' = {matched:?} and maps it to {upstream}"
            ),
            Explanation::NoMatch { name, tried } => write!(
                f,
                "no rule declares {name:?}: no exact rule, and no wildcard among {}",
                tried.join(", ")
            ),
            Explanation::Invalid { rule, reason } => {
                write!(
                    f,
                    "rule {rule:?} matches but gives an invalid upstream name: {reason}"
                )
            }
        }
    }
}

/// A hash index from a pattern's exact name or prefix to rule indices.
/// `""` is the key of the catch-all `*`. Keys share the patterns' own
/// allocations, so an index costs a table entry per rule and no copy.
#[derive(Debug, Default, Clone)]
struct PrefixIndex {
    exact: HashMap<Arc<str>, u32>,
    prefix: HashMap<Arc<str>, u32>,
}

impl PrefixIndex {
    /// Inserts unless the key is taken; returns the index holding the key.
    fn insert(&mut self, pat: &Pattern, idx: usize) -> usize {
        let (map, key) = match pat {
            Pattern::Exact(n) => (&mut self.exact, n.shared()),
            Pattern::Prefix(None) => (&mut self.prefix, Arc::from("")),
            Pattern::Prefix(Some(p)) => (&mut self.prefix, p.shared()),
        };
        *map.entry(key).or_insert(idx as u32) as usize
    }

    /// Exact first, then the longest prefix ending at a component boundary,
    /// then the catch-all. One probe per component, no allocation.
    fn lookup(&self, name: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(name) {
            return Some(i as usize);
        }
        if self.prefix.is_empty() {
            return None;
        }
        let mut end = name.len();
        while let Some(slash) = name[..end].rfind('/') {
            if let Some(&i) = self.prefix.get(&name[..slash]) {
                return Some(i as usize);
            }
            end = slash;
        }
        self.prefix.get("").map(|&i| i as usize)
    }
}

/// A validated, indexed set of caching rules.
///
/// An exact rule beats any wildcard; among wildcards the longest target
/// prefix wins; what `*` matched (slashes included) carries over.
///
/// ```
/// use cache_core::{RepoName, RuleSet, RuleSpec};
///
/// let rules = RuleSet::new(&[
///     RuleSpec::new("hub", "docker.io/library/*", "library/*"),
///     RuleSpec::new("acme", "ghcr.io/acme/*", "acme/*").with_credentials("ghcr"),
///     RuleSpec::new("nginx", "docker.io/nginx", "nginx"),
/// ])?;
/// let r = rules.resolve(&RepoName::parse("acme/team/app")?)?;
/// assert_eq!((r.registry.as_str(), r.upstream.as_str()), ("ghcr.io", "acme/team/app"));
/// assert_eq!(r.credentials, Some("ghcr"));
/// // Docker Hub's one-component names are library/NAME upstream.
/// let r = rules.resolve(&RepoName::parse("nginx")?)?;
/// assert_eq!(r.upstream.as_str(), "library/nginx");
/// // Anything else is NAME_UNKNOWN, and `explain` says what was tried.
/// let unknown = RepoName::parse("other/app")?;
/// assert!(rules.resolve(&unknown).is_err());
/// println!("{}", rules.explain(&unknown));
/// # Ok::<(), cache_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    by_name: HashMap<Arc<str>, u32>,
    by_target: PrefixIndex,
    /// Sources by registry, for mirror requests (`?ns=registry`).
    by_source: HashMap<Registry, PrefixIndex>,
}

impl RuleSet {
    /// Builds a rule set with the default size limit.
    pub fn new(specs: &[RuleSpec]) -> Result<Self> {
        Self::with_limit(specs, DEFAULT_MAX_RULES)
    }

    /// As [`new`](Self::new), consuming the specs: each spec's strings are
    /// freed as its rule is built, so a large set is not held twice.
    pub fn from_specs(specs: Vec<RuleSpec>) -> Result<Self> {
        Self::build(specs.len(), specs.into_iter(), DEFAULT_MAX_RULES)
    }

    /// Builds a rule set, refusing more than `max_rules` rules.
    ///
    /// Errors name the offending rule: an invalid source or target, a
    /// wildcard on one side only, a duplicate name, a duplicate target.
    pub fn with_limit(specs: &[RuleSpec], max_rules: usize) -> Result<Self> {
        Self::build(specs.len(), specs.iter().cloned(), max_rules)
    }

    fn build(
        count: usize,
        specs: impl Iterator<Item = RuleSpec>,
        max_rules: usize,
    ) -> Result<Self> {
        let mut specs = specs.peekable();
        if count > max_rules {
            let rule = specs.nth(max_rules).map(|s| s.name).unwrap_or_default();
            return Err(Error::invalid_rule(
                rule,
                format!("{count} rules exceed the limit of {max_rules}"),
            ));
        }
        let mut set = RuleSet::default();
        let mut credentials: std::collections::HashSet<Arc<str>> = Default::default();
        set.by_name.reserve(count);
        set.rules.reserve_exact(count);
        for (i, spec) in specs.enumerate() {
            let mut rule = Rule::from_spec(&spec)?;
            if let Some(&j) = set.by_name.get(spec.name.as_str()) {
                return Err(Error::invalid_rule(
                    spec.name.clone(),
                    format!("the name is already used by rule #{}", j + 1),
                ));
            }
            set.by_name.insert(rule.name.clone(), i as u32);
            // One registry value per host, shared by its rules.
            let sources = match set.by_source.get_key_value(&rule.registry) {
                Some((shared, _)) => {
                    rule.registry = shared.clone();
                    set.by_source.get_mut(&rule.registry).expect("present")
                }
                None => set.by_source.entry(rule.registry.clone()).or_default(),
            };
            // Several rules may share a source; the first declared serves mirror requests.
            sources.insert(&rule.source, i);
            // One allocation per credential-set name, shared by its rules.
            if let Some(c) = &rule.credentials {
                match credentials.get(c) {
                    Some(shared) => rule.credentials = Some(shared.clone()),
                    None => {
                        credentials.insert(c.clone());
                    }
                }
            }
            let holder = set.by_target.insert(&rule.target, i);
            if holder != i {
                return Err(Error::invalid_rule(
                    spec.name.clone(),
                    format!(
                        "target {:?} is already used by rule {:?}",
                        spec.target, set.rules[holder].name
                    ),
                ));
            }
            set.rules.push(rule);
        }
        Ok(set)
    }

    /// The rules, in declaration order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// A rule by name.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.by_name.get(name).map(|&i| &self.rules[i as usize])
    }

    /// Resolves a local repository name to its rule and upstream.
    ///
    /// Fails with [`Error::NameUnknown`] when no rule declares the name.
    pub fn resolve(&self, name: &RepoName) -> Result<Resolved<'_>> {
        let i = self
            .by_target
            .lookup(name.as_str())
            .ok_or_else(|| Error::name_unknown(name))?;
        let rule = &self.rules[i];
        let rest = rule
            .target
            .matches(name.as_str())
            .expect("the index only returns matching rules");
        Ok(Resolved {
            rule,
            local: name.clone(),
            registry: &rule.registry,
            upstream: rule.upstream_for(rest)?,
            credentials: rule.credentials(),
        })
    }

    /// Resolves a mirror request: `upstream` is a repository on `registry`
    /// (as containerd sends with `?ns=registry`). Finds the rule whose source
    /// declares it (exact first, then the longest source prefix) and the
    /// local name it is cached under.
    pub fn resolve_upstream(
        &self,
        registry: &Registry,
        upstream: &RepoName,
    ) -> Result<Resolved<'_>> {
        let upstream = registry.normalize_repo(upstream.clone());
        let unknown = || Error::name_unknown(format!("{registry}/{upstream}"));
        let i = self
            .by_source
            .get(registry)
            .and_then(|index| index.lookup(upstream.as_str()))
            .ok_or_else(unknown)?;
        let rule = &self.rules[i];
        let rest = rule.source.matches(upstream.as_str()).ok_or_else(unknown)?;
        Ok(Resolved {
            rule,
            local: rule.target.expand(rest)?,
            registry: &rule.registry,
            upstream,
            credentials: rule.credentials(),
        })
    }

    /// Says which rule matches `name` and what it maps to, or why none does.
    pub fn explain(&self, name: &RepoName) -> Explanation {
        match self.resolve(name) {
            Ok(r) => match &r.rule.target {
                Pattern::Exact(_) => Explanation::Exact {
                    rule: r.rule.name.to_string(),
                    upstream: format!("{}/{}", r.registry, r.upstream),
                },
                t => Explanation::Wildcard {
                    rule: r.rule.name.to_string(),
                    target: t.to_string(),
                    matched: t.matches(name.as_str()).unwrap_or_default().to_owned(),
                    upstream: format!("{}/{}", r.registry, r.upstream),
                },
            },
            Err(Error::NameUnknown { .. }) => {
                let mut tried = Vec::new();
                let s = name.as_str();
                let mut end = s.len();
                while let Some(slash) = s[..end].rfind('/') {
                    tried.push(format!("{}/*", &s[..slash]));
                    end = slash;
                }
                tried.push("*".into());
                Explanation::NoMatch {
                    name: name.to_string(),
                    tried,
                }
            }
            Err(e) => Explanation::Invalid {
                rule: self
                    .by_target
                    .lookup(name.as_str())
                    .map(|i| self.rules[i].name.to_string())
                    .unwrap_or_default(),
                reason: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    fn set(rules: &[(&str, &str, &str)]) -> RuleSet {
        RuleSet::new(
            &rules
                .iter()
                .map(|(a, b, c)| RuleSpec::new(*a, *b, *c))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn wildcard_carries_the_matched_part_including_slashes() {
        let s = set(&[
            ("hub", "docker.io/library/*", "library/*"),
            ("acme", "ghcr.io/acme/*", "acme/*"),
        ]);
        let r = s.resolve(&n("library/nginx")).unwrap();
        assert_eq!(
            (r.rule.name(), r.registry.as_str(), r.upstream.as_str()),
            ("hub", "docker.io", "library/nginx")
        );
        let r = s.resolve(&n("acme/team/app")).unwrap();
        assert_eq!(r.upstream.as_str(), "acme/team/app");
        assert_eq!(r.registry.api_host(), "ghcr.io");
    }

    #[test]
    fn exact_beats_wildcard_and_longest_prefix_wins() {
        let s = set(&[
            ("all", "quay.io/*", "*"),
            ("q", "quay.io/*", "quay/*"),
            ("qp", "quay.io/prometheus/*", "quay/prometheus/*"),
            (
                "pin",
                "quay.io/prometheus/node-exporter",
                "quay/prometheus/node-exporter",
            ),
        ]);
        assert_eq!(
            s.resolve(&n("quay/prometheus/node-exporter"))
                .unwrap()
                .rule
                .name(),
            "pin"
        );
        assert_eq!(
            s.resolve(&n("quay/prometheus/alertmanager"))
                .unwrap()
                .rule
                .name(),
            "qp"
        );
        let r = s.resolve(&n("quay/coreos/etcd")).unwrap();
        assert_eq!((r.rule.name(), r.upstream.as_str()), ("q", "coreos/etcd"));
        assert_eq!(s.resolve(&n("other/x")).unwrap().rule.name(), "all");
        // `quay/*` needs something after `quay/`.
        assert_eq!(s.resolve(&n("quay")).unwrap().rule.name(), "all");
    }

    #[test]
    fn docker_hub_one_component_names_mean_library() {
        let s = set(&[
            ("hub", "docker.io/*", "hub/*"),
            ("ng", "docker.io/nginx", "nginx"),
        ]);
        assert_eq!(
            s.resolve(&n("hub/redis")).unwrap().upstream.as_str(),
            "library/redis"
        );
        assert_eq!(
            s.resolve(&n("hub/bitnami/redis"))
                .unwrap()
                .upstream
                .as_str(),
            "bitnami/redis"
        );
        assert_eq!(
            s.resolve(&n("nginx")).unwrap().upstream.as_str(),
            "library/nginx"
        );
    }

    #[test]
    fn unmatched_names_are_name_unknown_and_explained() {
        let s = set(&[("hub", "docker.io/library/*", "library/*")]);
        let e = s.resolve(&n("acme/app")).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::NameUnknown);
        assert!(e.to_string().contains("acme/app"));
        let x = s.explain(&n("acme/app"));
        assert!(
            matches!(&x, Explanation::NoMatch { tried, .. } if tried == &["acme/*", "*"]),
            "{x}"
        );
        let x = s.explain(&n("library/nginx"));
        assert!(x.to_string().contains("\"hub\""), "{x}");
    }

    #[test]
    fn a_source_without_a_host_is_docker_hub_as_with_docker_pull() {
        let s = RuleSet::new(&[
            RuleSpec::new("ns", "library/*", "lib/*"),
            RuleSpec::new("one", "nginx", "nginx"),
            RuleSpec::new("local", "localhost/team/*", "local/*"),
        ])
        .unwrap();
        let r = s.resolve(&n("lib/alpine")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.upstream.as_str()),
            ("docker.io", "library/alpine")
        );
        let r = s.resolve(&n("nginx")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.upstream.as_str()),
            ("docker.io", "library/nginx")
        );
        let r = s.resolve(&n("local/app")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.upstream.as_str()),
            ("localhost", "team/app")
        );
    }

    #[test]
    fn load_errors_name_the_rule() {
        type Case<'a> = (&'a [(&'a str, &'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                &[("a", "docker.io/x", "x"), ("b", "docker.io/y", "x")],
                "\"b\"",
            ),
            (
                &[("a", "docker.io/x", "x"), ("a", "docker.io/y", "y")],
                "\"a\"",
            ),
            (&[("bad", "docker.io/X", "x")], "\"bad\""),
            (&[("bad", "docker.io/x", "Up")], "\"bad\""),
            (&[("bad", "docker.io/x/*", "x")], "\"bad\""),
            (&[("bad", "docker.io", "x")], "\"bad\""),
            (&[("bad", "docker.io/a/*/b", "a/*/b")], "\"bad\""),
            (&[("bad", "bad host/x", "x")], "\"bad\""),
            (&[("", "docker.io/x", "x")], "\"\""),
        ];
        for (rules, named) in cases {
            let specs: Vec<RuleSpec> = rules
                .iter()
                .map(|(a, b, c)| RuleSpec::new(*a, *b, *c))
                .collect();
            let e = RuleSet::new(&specs).unwrap_err();
            assert!(matches!(e, Error::InvalidRule { .. }), "{e}");
            assert!(e.to_string().contains(named), "{e} should name {named}");
        }
        let specs: Vec<RuleSpec> = (0..3)
            .map(|i| RuleSpec::new(format!("r{i}"), format!("docker.io/r{i}"), format!("r{i}")))
            .collect();
        let e = RuleSet::with_limit(&specs, 2).unwrap_err();
        assert!(
            e.to_string().contains("\"r2\"") && e.to_string().contains("limit of 2"),
            "{e}"
        );
    }

    #[test]
    fn mirror_requests_resolve_by_upstream_registry() {
        let s = set(&[
            ("hub", "docker.io/library/*", "library/*"),
            ("gh", "ghcr.io/acme/*", "gh/acme/*"),
        ]);
        let hub = Registry::parse("docker.io").unwrap();
        let r = s.resolve_upstream(&hub, &n("nginx")).unwrap();
        assert_eq!(
            (r.local.as_str(), r.upstream.as_str()),
            ("library/nginx", "library/nginx")
        );
        let gh = Registry::parse("ghcr.io").unwrap();
        assert_eq!(
            s.resolve_upstream(&gh, &n("acme/app"))
                .unwrap()
                .local
                .as_str(),
            "gh/acme/app"
        );
        assert!(s.resolve_upstream(&gh, &n("other/app")).is_err());
        assert!(
            s.resolve_upstream(&Registry::parse("quay.io").unwrap(), &n("acme/app"))
                .is_err()
        );
    }

    /// The obvious linear scan, as the oracle for the index.
    fn naive(rules: &[Rule], name: &str) -> Option<String> {
        if let Some(r) = rules
            .iter()
            .find(|r| matches!(&r.target, Pattern::Exact(e) if e.as_str() == name))
        {
            return Some(r.name.to_string());
        }
        rules
            .iter()
            .filter(|r| r.target.is_wildcard() && r.target.matches(name).is_some())
            .max_by_key(|r| match &r.target {
                Pattern::Prefix(Some(p)) => p.as_str().len() as i64,
                _ => -1,
            })
            .map(|r| r.name.to_string())
    }

    fn comp() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "ab", "b-c"]).prop_map(str::to_owned)
    }

    fn path(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(comp(), 1..=max).prop_map(|v| v.join("/"))
    }

    proptest! {
        #[test]
        fn index_agrees_with_a_linear_scan(
            targets in prop::collection::vec((path(3), any::<bool>()), 0..24),
            star in any::<bool>(),
            names in prop::collection::vec(path(4), 1..16),
        ) {
            let mut specs = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (i, (t, wild)) in targets.into_iter().enumerate() {
                let target = if wild { format!("{t}/*") } else { t.clone() };
                if !seen.insert(target.clone()) { continue; }
                let source = if wild { format!("reg.io/up{i}/*") } else { format!("reg.io/up{i}") };
                specs.push(RuleSpec::new(format!("r{i}"), source, target));
            }
            if star {
                specs.push(RuleSpec::new("star", "reg.io/*", "*"));
            }
            let set = RuleSet::new(&specs).unwrap();
            for name in names {
                let got = set.resolve(&n(&name)).ok().map(|r| r.rule.name().to_owned());
                prop_assert_eq!(got, naive(set.rules(), &name), "name {}", name);
            }
        }
    }
}
