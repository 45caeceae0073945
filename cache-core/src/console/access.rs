//! Who may see what in the console.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use http::HeaderMap;

use crate::names::RepoName;
use crate::server::{Principal, PullAuth};

/// Who is looking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// A name to show: the user, `token` for a bearer token, `anonymous`
    /// where no authentication is asked for, `operator` on an operator's
    /// own listener.
    pub name: String,
    /// The principal the pull side identified, whose grants decide what
    /// it may read (`None`: an operator, or no pull-side auth).
    pub principal: Option<Principal>,
}

impl Viewer {
    /// A viewer named `name`, with no principal.
    pub fn named(name: impl Into<String>) -> Self {
        Viewer {
            name: name.into(),
            principal: None,
        }
    }
}

/// Who may use the console, and what each viewer may see. Every page
/// shows only repositories (their tags, images, decisions, refusals) that
/// [`may_read`](Self::may_read) allows: this is the one place where
/// per-repository grants plug in.
#[async_trait]
pub trait ConsoleAccess: Send + Sync + fmt::Debug {
    /// The viewer a request comes from, or `None` when it may not use the
    /// console at all (it is answered `401` with a `Basic` challenge, so
    /// a browser asks for credentials).
    async fn viewer(&self, headers: &HeaderMap) -> Option<Viewer>;

    /// Whether `viewer` may read `repository`; what it may not read is
    /// not shown, and its pages answer as for a repository that does not
    /// exist.
    fn may_read(&self, viewer: &Viewer, repository: &RepoName) -> bool;
}

/// Everyone sees everything: for a listener only operators reach (the
/// server's loopback admin listener).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAccess;

#[async_trait]
impl ConsoleAccess for OpenAccess {
    async fn viewer(&self, _: &HeaderMap) -> Option<Viewer> {
        Some(Viewer::named("operator"))
    }

    fn may_read(&self, _: &Viewer, _: &RepoName) -> bool {
        true
    }
}

/// The pull side's authentication: where pulls need credentials, so does
/// the console (the same users, robot tokens and workload identities,
/// checked by the same [`PullAuth`], swapped on reload); where they do
/// not, anyone may look. A viewer reads the repositories its grants let
/// it pull (`pull` or `pull-cached`); an htpasswd user or a static token
/// of `[auth]` reads every one, as it pulls every one.
#[derive(Debug, Clone)]
pub struct PullAuthAccess {
    auth: Arc<ArcSwapOption<PullAuth>>,
}

impl PullAuthAccess {
    /// Access as `auth` (none: open) decides, read at each request.
    pub fn new(auth: Arc<ArcSwapOption<PullAuth>>) -> Self {
        PullAuthAccess { auth }
    }
}

#[async_trait]
impl ConsoleAccess for PullAuthAccess {
    async fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        match self.auth.load_full() {
            None => Some(Viewer::named("anonymous")),
            Some(auth) => match auth.identify(headers, None).await {
                Ok(p) if !p.is_anonymous() => Some(Viewer {
                    name: p.name().chars().take(64).collect(),
                    principal: Some(p),
                }),
                _ => None,
            },
        }
    }

    fn may_read(&self, viewer: &Viewer, repository: &RepoName) -> bool {
        match (self.auth.load_full(), &viewer.principal) {
            // No pull-side auth: anyone pulls anything, so reads anything.
            (None, _) => true,
            (Some(auth), Some(p)) => auth.action(p, repository.as_str()).is_some(),
            (Some(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Pattern;
    use crate::server::{
        Action, AuthConfig, Glob, Grant, PrincipalPattern, UserConfig, UserPassword,
    };

    fn basic(user: &str, pass: &str) -> HeaderMap {
        use base64::Engine as _;
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(
            http::header::AUTHORIZATION,
            format!("Basic {v}").parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn a_viewer_reads_what_its_grants_let_it_pull_and_a_full_access_user_everything() {
        let mut cfg = AuthConfig::default();
        cfg.users.push(UserConfig {
            name: "ci".into(),
            password: UserPassword::Plain(crate::Secret::new("ci-pw")),
        });
        cfg.htpasswd
            .insert("admin".into(), bcrypt::hash("admin-pw", 4).unwrap());
        cfg.grants.push(Grant {
            principals: vec![PrincipalPattern::Name(Glob::new("ci"))],
            repositories: vec![Pattern::parse_pattern("ci/*").unwrap()],
            action: Action::PullCached,
        });
        let access = PullAuthAccess::new(Arc::new(ArcSwapOption::from_pointee(PullAuth::new(cfg))));
        let repo = |s: &str| RepoName::parse(s).unwrap();
        let ci = access
            .viewer(&basic("ci", "ci-pw"))
            .await
            .expect("ci signs in");
        assert_eq!(ci.name, "ci");
        assert!(
            access.may_read(&ci, &repo("ci/app")),
            "pull-cached is reading"
        );
        assert!(!access.may_read(&ci, &repo("library/nginx")), "no grant");
        let admin = access.viewer(&basic("admin", "admin-pw")).await.unwrap();
        assert!(access.may_read(&admin, &repo("library/nginx")));
        assert!(access.viewer(&basic("ci", "wrong")).await.is_none());
        assert!(
            access.viewer(&HeaderMap::new()).await.is_none(),
            "anonymous"
        );
        // A viewer without a principal reads nothing where auth is on.
        assert!(!access.may_read(&Viewer::named("ci"), &repo("ci/app")));
        // Without pull-side auth everyone reads everything.
        let open = PullAuthAccess::new(Arc::new(ArcSwapOption::empty()));
        let v = open.viewer(&HeaderMap::new()).await.unwrap();
        assert!(open.may_read(&v, &repo("library/nginx")));
    }
}
