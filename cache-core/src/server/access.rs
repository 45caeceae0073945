//! Who may pull what: principals, and the grants that give them actions
//! on repositories.
//!
//! A [`Principal`] is who a request comes from: an htpasswd or
//! `[[auth.user]]` user, a robot token, a workload identity (an OIDC
//! token: `<provider>:<claim value>`), or `anonymous`. A [`Grant`] gives
//! the principals its [`PrincipalPattern`]s match an [`Action`] on the
//! repositories its patterns match (the language of rule targets:
//! `name`, `prefix/*`, `*`). Grants only add: a principal's action on a
//! repository is the strongest any of its grants gives, and without one it
//! has none. The htpasswd users and static tokens of `[auth]` have `pull`
//! on everything.
//!
//! [`Grants::action`] answers with an index built once per principal (a
//! bounded cache) and one hash probe per name component, whatever the
//! number of grants; its property test compares it with the plain reading
//! of the rules above.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use crate::names::RepoName;
use crate::policy::FetchPolicy;
use crate::rules::Pattern;

/// What a grant allows on a repository. `Pull` includes `PullCached`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Read what the cache holds, never causing an upstream request
    /// (`pull-cached`): a miss is a `404`.
    PullCached,
    /// Read, and have the cache fetch from the upstream what it lacks
    /// (`pull`).
    Pull,
}

impl Action {
    /// `pull` or `pull-cached`, as grants and token scopes write them.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pull" => Some(Action::Pull),
            "pull-cached" => Some(Action::PullCached),
            _ => None,
        }
    }

    /// The name grants and token scopes use.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::PullCached => "pull-cached",
        }
    }

    /// How far a request under this action may reach.
    pub fn fetch_policy(self) -> FetchPolicy {
        match self {
            Action::Pull => FetchPolicy::Upstream,
            Action::PullCached => FetchPolicy::StoreOnly,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of principal, the one label metrics give them (so the series
/// stay few whatever the number of principals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalKind {
    /// No credentials.
    Anonymous,
    /// A user with a password (htpasswd or `[[auth.user]]`).
    User,
    /// A robot token (`[[auth.token]]`) or a static token of `[auth]`.
    Token,
    /// A workload identity: a JWT from an OIDC issuer (`[[auth.oidc]]`).
    Workload,
}

impl PrincipalKind {
    /// Every kind, for exporters that show each from the start.
    pub const ALL: [PrincipalKind; 4] = [
        PrincipalKind::Anonymous,
        PrincipalKind::User,
        PrincipalKind::Token,
        PrincipalKind::Workload,
    ];

    /// `anonymous`, `user`, `token` or `workload`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Anonymous => "anonymous",
            PrincipalKind::User => "user",
            PrincipalKind::Token => "token",
            PrincipalKind::Workload => "workload",
        }
    }

    /// The kind of [`as_str`](Self::as_str)'s name.
    pub fn parse(s: &str) -> Option<Self> {
        PrincipalKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The name of the principal without credentials.
pub const ANONYMOUS: &str = "anonymous";

/// Who a request comes from.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    kind: PrincipalKind,
    name: Arc<str>,
    /// An htpasswd user or a static token of `[auth]`: `pull` everywhere.
    full: bool,
    /// A workload's provider and the claims grants may match.
    provider: Option<Arc<str>>,
    claims: Arc<BTreeMap<String, serde_json::Value>>,
    /// Tells principals with the same name and different claims apart
    /// (in the grant index's cache).
    fingerprint: [u8; 32],
    /// When the credential that identified it expires (a robot token's
    /// `expires`, a workload token's `exp`): a token of the token flow
    /// issued to it expires no later.
    expires: Option<std::time::SystemTime>,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Principal {
    fn make(
        kind: PrincipalKind,
        name: &str,
        full: bool,
        provider: Option<&str>,
        claims: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(kind.as_str());
        h.update([0]);
        h.update(name);
        h.update([0, full as u8]);
        h.update(provider.unwrap_or_default());
        h.update([0]);
        h.update(serde_json::to_vec(&claims).unwrap_or_default());
        Principal {
            kind,
            name: Arc::from(name),
            full,
            provider: provider.map(Arc::from),
            claims: Arc::new(claims),
            fingerprint: h.finalize().into(),
            expires: None,
        }
    }

    /// When the credential that identified this principal expires, if it
    /// does.
    pub fn expires(&self) -> Option<std::time::SystemTime> {
        self.expires
    }

    /// The principal, identified by a credential that expires at `at`.
    pub(crate) fn expiring(mut self, at: Option<std::time::SystemTime>) -> Self {
        self.expires = at;
        self
    }

    /// `anonymous`.
    pub fn anonymous() -> Self {
        Self::make(
            PrincipalKind::Anonymous,
            ANONYMOUS,
            false,
            None,
            BTreeMap::new(),
        )
    }

    /// A principal of `kind` named `name`, with the access its grants give.
    ///
    /// ```
    /// use cache_core::server::{Principal, PrincipalKind};
    /// let p = Principal::named(PrincipalKind::Token, "ci");
    /// assert_eq!((p.kind(), p.name()), (PrincipalKind::Token, "ci"));
    /// ```
    pub fn named(kind: PrincipalKind, name: &str) -> Self {
        Self::make(kind, name, false, None, BTreeMap::new())
    }

    /// A principal with `pull` on every repository whatever the grants:
    /// the htpasswd users and static tokens of `[auth]`.
    pub fn with_full_access(kind: PrincipalKind, name: &str) -> Self {
        Self::make(kind, name, true, None, BTreeMap::new())
    }

    /// A workload identity of OIDC provider `provider`, named
    /// `<provider>:<subject>`, with the `claims` grants may match.
    ///
    /// ```
    /// use cache_core::server::Principal;
    /// let claims = [("repository_owner".to_owned(), serde_json::json!("acme"))].into();
    /// let p = Principal::workload("github", "acme/app", claims);
    /// assert_eq!(p.name(), "github:acme/app");
    /// ```
    pub fn workload(
        provider: &str,
        subject: &str,
        claims: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        Self::make(
            PrincipalKind::Workload,
            &format!("{provider}:{subject}"),
            false,
            Some(provider),
            claims,
        )
    }

    /// Its kind.
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// Its name (audit events and access logs carry it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared.
    pub fn shared_name(&self) -> Arc<str> {
        self.name.clone()
    }

    /// Whether this is `anonymous`.
    pub fn is_anonymous(&self) -> bool {
        self.kind == PrincipalKind::Anonymous
    }

    /// Whether it has `pull` everywhere (an htpasswd user, a static token).
    pub fn has_full_access(&self) -> bool {
        self.full
    }
}

/// A glob: `*` stands for any run of characters (`/` and `:` included);
/// everything else is literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob(String);

impl Glob {
    /// The glob as written.
    pub fn new(s: &str) -> Self {
        Glob(s.to_owned())
    }

    /// Whether it has a `*`.
    pub fn is_literal(&self) -> bool {
        !self.0.contains('*')
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `s` matches, in time linear in their lengths' product at
    /// worst.
    ///
    /// ```
    /// use cache_core::server::Glob;
    /// assert!(Glob::new("k8s:system:serviceaccount:ci:*").matches("k8s:system:serviceaccount:ci:builder"));
    /// assert!(Glob::new("a*c*e").matches("abcde") && !Glob::new("a*c").matches("abcd"));
    /// ```
    pub fn matches(&self, s: &str) -> bool {
        let (p, s) = (self.0.as_bytes(), s.as_bytes());
        let (mut pi, mut si) = (0, 0);
        // Where the last '*' was, and where in `s` it was tried to end.
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if pi < p.len() && p[pi] == s[si] {
                pi += 1;
                si += 1;
            } else if let Some((sp, ss)) = star {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whom a grant applies to, as written in `principals = [...]`:
///
/// * `anonymous`: requests without credentials (and only those);
/// * `<provider>:<claim>=<glob>`: workload identities of that
///   `[[auth.oidc]]` provider whose claim matches (for an array claim,
///   any element; numbers and booleans as written in JSON);
/// * anything else: a glob over the names of authenticated principals
///   (users, robot tokens, workloads as `<provider>:<subject>`). A `*`
///   never matches `anonymous`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PrincipalPattern {
    /// `anonymous`.
    Anonymous,
    /// Authenticated principals whose name matches.
    Name(Glob),
    /// Workloads of `provider` whose `claim` matches `value`.
    Claim {
        /// The `[[auth.oidc]]` provider's name.
        provider: String,
        /// The claim.
        claim: String,
        /// What its value must match.
        value: Glob,
    },
}

impl PrincipalPattern {
    /// Parses a pattern as written (see the type's docs); `providers` are
    /// the configured OIDC providers' names, which a claim match must name.
    ///
    /// ```
    /// use cache_core::server::PrincipalPattern;
    /// let p = PrincipalPattern::parse("github:repository_owner=acme", &["github"]).unwrap();
    /// assert!(matches!(p, PrincipalPattern::Claim { .. }));
    /// assert!(PrincipalPattern::parse("gitlab:x=y", &["github"]).is_err());
    /// ```
    pub fn parse(s: &str, providers: &[&str]) -> Result<Self, String> {
        if s.is_empty() || s.len() > 256 {
            return Err("1 to 256 characters".into());
        }
        if s == ANONYMOUS {
            return Ok(PrincipalPattern::Anonymous);
        }
        if let Some((left, value)) = s.split_once('=') {
            let Some((provider, claim)) = left.split_once(':') else {
                return Err(
                    "a claim match is written <provider>:<claim>=<value> (a name has no '=')"
                        .into(),
                );
            };
            if !providers.contains(&provider) {
                return Err(format!("no [[auth.oidc]] is named {provider:?}"));
            }
            if claim.is_empty() || claim.contains(['*', ':']) {
                return Err(format!("claim {claim:?} is not a claim name"));
            }
            return Ok(PrincipalPattern::Claim {
                provider: provider.to_owned(),
                claim: claim.to_owned(),
                value: Glob::new(value),
            });
        }
        Ok(PrincipalPattern::Name(Glob::new(s)))
    }

    /// Whether `p` is one of those this pattern names.
    pub fn matches(&self, p: &Principal) -> bool {
        match self {
            PrincipalPattern::Anonymous => p.is_anonymous(),
            PrincipalPattern::Name(g) => !p.is_anonymous() && g.matches(p.name()),
            PrincipalPattern::Claim {
                provider,
                claim,
                value,
            } => {
                p.provider.as_deref() == Some(provider.as_str())
                    && p.claims.get(claim).is_some_and(|v| claim_matches(v, value))
            }
        }
    }
}

fn claim_matches(v: &serde_json::Value, g: &Glob) -> bool {
    match v {
        serde_json::Value::String(s) => g.matches(s),
        serde_json::Value::Array(items) => items.iter().take(64).any(|i| claim_matches(i, g)),
        serde_json::Value::Number(n) => g.matches(&n.to_string()),
        serde_json::Value::Bool(b) => g.matches(if *b { "true" } else { "false" }),
        _ => false,
    }
}

impl fmt::Display for PrincipalPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrincipalPattern::Anonymous => f.write_str(ANONYMOUS),
            PrincipalPattern::Name(g) => g.fmt(f),
            PrincipalPattern::Claim {
                provider,
                claim,
                value,
            } => write!(f, "{provider}:{claim}={value}"),
        }
    }
}

/// One grant: `action` on the repositories matching `repositories`, for
/// the principals matching `principals`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Whom it is for.
    pub principals: Vec<PrincipalPattern>,
    /// Which repositories (local names, as rule targets are written).
    pub repositories: Vec<Pattern>,
    /// What it allows.
    pub action: Action,
}

impl Grant {
    /// Whether it applies to `p`.
    pub fn applies_to(&self, p: &Principal) -> bool {
        self.principals.iter().any(|pat| pat.matches(p))
    }
}

/// One principal's grants, indexed: a repository's action costs one hash
/// probe per name component.
#[derive(Debug, Default)]
pub(crate) struct RepoIndex {
    all: Option<Action>,
    exact: HashMap<String, Action>,
    /// `prefix` of `prefix/*`.
    prefix: HashMap<String, Action>,
}

fn raise(slot: &mut Option<Action>, a: Action) {
    *slot = (*slot).max(Some(a));
}

impl RepoIndex {
    fn add(&mut self, p: &Pattern, a: Action) {
        match p {
            Pattern::Prefix(None) => raise(&mut self.all, a),
            Pattern::Prefix(Some(prefix)) => {
                let e = self.prefix.entry(prefix.as_str().to_owned()).or_insert(a);
                *e = (*e).max(a);
            }
            Pattern::Exact(n) => {
                let e = self.exact.entry(n.as_str().to_owned()).or_insert(a);
                *e = (*e).max(a);
            }
        }
    }

    pub(crate) fn action(&self, name: &str) -> Option<Action> {
        let mut best = self.all;
        if let Some(a) = self.exact.get(name) {
            raise(&mut best, *a);
        }
        for (i, _) in name.match_indices('/') {
            if best == Some(Action::Pull) {
                break;
            }
            if let Some(a) = self.prefix.get(&name[..i]) {
                raise(&mut best, *a);
            }
        }
        best
    }

    fn is_empty(&self) -> bool {
        self.all.is_none() && self.exact.is_empty() && self.prefix.is_empty()
    }

    /// The patterns and their actions, as a token's catalog claim lists them.
    pub(crate) fn patterns(&self) -> Vec<(String, Action)> {
        let mut v: Vec<(String, Action)> = Vec::new();
        if let Some(a) = self.all {
            v.push(("*".into(), a));
        }
        v.extend(self.prefix.iter().map(|(p, a)| (format!("{p}/*"), *a)));
        v.extend(self.exact.iter().map(|(n, a)| (n.clone(), *a)));
        v.sort();
        v
    }
}

/// Principals whose grant index is kept at once; when full, the cache
/// starts afresh (indexes are cheap to rebuild).
const MAX_INDEXED_PRINCIPALS: usize = 4096;

/// The grants in force, with a bounded cache of each principal's index.
#[derive(Debug, Default)]
pub struct Grants {
    grants: Vec<Grant>,
    indexes: Mutex<HashMap<[u8; 32], Arc<RepoIndex>>>,
}

impl Grants {
    /// These grants.
    pub fn new(grants: Vec<Grant>) -> Self {
        Grants {
            grants,
            indexes: Mutex::new(HashMap::new()),
        }
    }

    /// The grants as given.
    pub fn list(&self) -> &[Grant] {
        &self.grants
    }

    pub(crate) fn index(&self, p: &Principal) -> Arc<RepoIndex> {
        let mut m = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = m.get(&p.fingerprint) {
            return i.clone();
        }
        let mut index = RepoIndex::default();
        if p.full {
            index.all = Some(Action::Pull);
        }
        for g in self.grants.iter().filter(|g| g.applies_to(p)) {
            for r in &g.repositories {
                index.add(r, g.action);
            }
        }
        let index = Arc::new(index);
        if m.len() >= MAX_INDEXED_PRINCIPALS {
            m.clear();
        }
        m.insert(p.fingerprint, index.clone());
        index
    }

    /// What `p` may do with `repository`: the strongest action its grants
    /// give (`Pull` everywhere for a principal with full access), or
    /// `None`.
    ///
    /// ```
    /// use cache_core::rules::Pattern;
    /// use cache_core::server::{Action, Glob, Grant, Grants, Principal, PrincipalKind, PrincipalPattern};
    ///
    /// let grants = Grants::new(vec![Grant {
    ///     principals: vec![PrincipalPattern::Name(Glob::new("ci"))],
    ///     repositories: vec![Pattern::parse_pattern("ci/*").unwrap()],
    ///     action: Action::Pull,
    /// }]);
    /// let ci = Principal::named(PrincipalKind::Token, "ci");
    /// assert_eq!(grants.action(&ci, "ci/app"), Some(Action::Pull));
    /// assert_eq!(grants.action(&ci, "library/nginx"), None);
    /// ```
    pub fn action(&self, p: &Principal, repository: &str) -> Option<Action> {
        self.index(p).action(repository)
    }

    /// Whether `p` may do anything anywhere.
    pub fn grants_anything(&self, p: &Principal) -> bool {
        !self.index(p).is_empty()
    }

    /// Whether some grant names `anonymous`.
    pub fn anonymous_granted(&self) -> bool {
        self.grants_anything(&Principal::anonymous())
    }

    /// The claims of `provider`'s tokens that some grant matches.
    pub fn claims_of(&self, provider: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .grants
            .iter()
            .flat_map(|g| &g.principals)
            .filter_map(|p| match p {
                PrincipalPattern::Claim {
                    provider: pr,
                    claim,
                    ..
                } if pr == provider => Some(claim.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Whether `name` is a valid repository name a pattern could match (for
/// scopes named by clients).
pub(crate) fn repository(name: &str) -> Option<RepoName> {
    RepoName::parse(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rules as the module docs state them, read plainly: every grant,
    /// every pattern, the strongest action.
    fn naive(grants: &[Grant], p: &Principal, repo: &str) -> Option<Action> {
        let mut best = if p.has_full_access() {
            Some(Action::Pull)
        } else {
            None
        };
        for g in grants {
            let for_p = g.principals.iter().any(|pat| match pat {
                PrincipalPattern::Anonymous => p.is_anonymous(),
                PrincipalPattern::Name(glob) => {
                    !p.is_anonymous() && naive_glob(glob.as_str(), p.name())
                }
                PrincipalPattern::Claim {
                    provider,
                    claim,
                    value,
                } => {
                    p.provider.as_deref() == Some(provider.as_str())
                        && match p.claims.get(claim) {
                            Some(serde_json::Value::String(s)) => naive_glob(value.as_str(), s),
                            Some(serde_json::Value::Array(a)) => a
                                .iter()
                                .any(|v| v.as_str().is_some_and(|s| naive_glob(value.as_str(), s))),
                            _ => false,
                        }
                }
            });
            let on_repo = g.repositories.iter().any(|r| match r {
                Pattern::Exact(n) => n.as_str() == repo,
                Pattern::Prefix(None) => true,
                Pattern::Prefix(Some(pre)) => repo.starts_with(&format!("{pre}/")),
            });
            if for_p && on_repo && best.is_none_or(|b| g.action > b) {
                best = Some(g.action);
            }
        }
        best
    }

    /// Glob matching by recursion, the definition itself.
    fn naive_glob(p: &str, s: &str) -> bool {
        match p.chars().next() {
            None => s.is_empty(),
            Some('*') => (0..=s.len())
                .filter(|i| s.is_char_boundary(*i))
                .any(|i| naive_glob(&p[1..], &s[i..])),
            Some(c) => s.starts_with(c) && naive_glob(&p[c.len_utf8()..], &s[c.len_utf8()..]),
        }
    }

    fn principal() -> impl Strategy<Value = Principal> {
        prop_oneof![
            Just(Principal::anonymous()),
            "[a-c]{1,3}".prop_map(|n| Principal::named(PrincipalKind::User, &n)),
            "[a-c]{1,3}".prop_map(|n| Principal::named(PrincipalKind::Token, &n)),
            "[a-c]{1,2}".prop_map(|n| Principal::with_full_access(PrincipalKind::User, &n)),
            (
                "[pq]",
                "[a-c:/]{1,4}",
                proptest::collection::vec("[a-c]{1,2}", 0..3)
            )
                .prop_map(|(prov, sub, groups)| {
                    let mut claims = BTreeMap::new();
                    claims.insert("team".to_owned(), serde_json::json!(sub.clone()));
                    claims.insert("groups".to_owned(), serde_json::json!(groups));
                    Principal::workload(&prov, &sub, claims)
                }),
        ]
    }

    fn principal_pattern() -> impl Strategy<Value = PrincipalPattern> {
        prop_oneof![
            Just(PrincipalPattern::Anonymous),
            "[a-c*:]{0,4}".prop_map(|g| PrincipalPattern::Name(Glob::new(&g))),
            (
                "[pq]",
                prop_oneof![Just("team"), Just("groups"), Just("other")],
                "[a-c*/:]{0,3}"
            )
                .prop_map(|(provider, claim, v)| PrincipalPattern::Claim {
                    provider,
                    claim: claim.to_owned(),
                    value: Glob::new(&v),
                }),
        ]
    }

    fn repo_pattern() -> impl Strategy<Value = Pattern> {
        prop_oneof![
            Just("*".to_owned()),
            "[a-c]{1,2}(/[a-c]{1,2}){0,2}",
            "[a-c]{1,2}(/[a-c]{1,2}){0,2}/\\*",
        ]
        .prop_map(|s| Pattern::parse_pattern(&s).unwrap())
    }

    fn grant() -> impl Strategy<Value = Grant> {
        (
            proptest::collection::vec(principal_pattern(), 1..3),
            proptest::collection::vec(repo_pattern(), 1..3),
            prop_oneof![Just(Action::Pull), Just(Action::PullCached)],
        )
            .prop_map(|(principals, repositories, action)| Grant {
                principals,
                repositories,
                action,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]

        #[test]
        fn grant_evaluation_agrees_with_the_naive_reading(
            grants in proptest::collection::vec(grant(), 0..8),
            principals in proptest::collection::vec(principal(), 1..4),
            repos in proptest::collection::vec("[a-c]{1,2}(/[a-c]{1,2}){0,3}", 1..6),
        ) {
            let g = Grants::new(grants.clone());
            // Twice: the second answers come from the index cache.
            for _ in 0..2 {
                for p in &principals {
                    for r in &repos {
                        prop_assert_eq!(g.action(p, r), naive(&grants, p, r), "{:?} {}", p, r);
                    }
                }
            }
        }

        #[test]
        fn globs_agree_with_their_definition(p in "[ab*]{0,6}", s in "[ab]{0,8}") {
            prop_assert_eq!(Glob::new(&p).matches(&s), naive_glob(&p, &s));
        }
    }

    #[test]
    fn anonymous_is_matched_only_by_name_and_globs_leave_it_out() {
        let star = PrincipalPattern::Name(Glob::new("*"));
        assert!(!star.matches(&Principal::anonymous()));
        assert!(star.matches(&Principal::named(PrincipalKind::User, "x")));
        assert!(PrincipalPattern::Anonymous.matches(&Principal::anonymous()));
        assert!(
            !PrincipalPattern::Anonymous
                .matches(&Principal::named(PrincipalKind::User, "anonymous"))
        );
    }

    #[test]
    fn the_index_cache_stays_bounded() {
        let g = Grants::new(Vec::new());
        for i in 0..MAX_INDEXED_PRINCIPALS + 10 {
            g.action(
                &Principal::named(PrincipalKind::User, &format!("u{i}")),
                "a",
            );
        }
        assert!(g.indexes.lock().unwrap().len() <= MAX_INDEXED_PRINCIPALS);
    }

    #[test]
    fn principal_patterns_say_what_is_wrong() {
        let e = PrincipalPattern::parse("ci=x", &["gh"]).unwrap_err();
        assert!(e.contains("<provider>:<claim>=<value>"), "{e}");
        let e = PrincipalPattern::parse("gh:a*b=x", &["gh"]).unwrap_err();
        assert!(e.contains("not a claim name"), "{e}");
        assert_eq!(
            PrincipalPattern::parse("anonymous", &[]),
            Ok(PrincipalPattern::Anonymous)
        );
    }
}
