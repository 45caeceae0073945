//! Who may see what in the console.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use base64::Engine;
use http::HeaderMap;

use crate::names::RepoName;
use crate::server::PullAuth;

/// Who is looking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// A name to show: the user, `token` for a bearer token, `anonymous`
    /// where no authentication is asked for, `operator` on an operator's
    /// own listener.
    pub name: String,
}

impl Viewer {
    /// A viewer named `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Viewer { name: name.into() }
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
/// the console (the same htpasswd users and bearer tokens, checked by the
/// same [`PullAuth`], swapped on reload); where they do not, anyone may
/// look. A viewer who may pull may read: today an authenticated viewer
/// reads every repository, as an authenticated client pulls every one.
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

/// The user of a `Basic` header, or `token` for a `Bearer` one.
fn who(headers: &HeaderMap) -> String {
    let v = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("basic")
        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(rest.trim())
        && let Some((user, _)) = String::from_utf8_lossy(&raw).split_once(':')
    {
        return user.chars().take(64).collect();
    }
    "token".into()
}

#[async_trait]
impl ConsoleAccess for PullAuthAccess {
    async fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        match self.auth.load_full() {
            None => Some(Viewer::named("anonymous")),
            Some(auth) if auth.check(headers).await => Some(Viewer::named(who(headers))),
            Some(_) => None,
        }
    }

    fn may_read(&self, _: &Viewer, _: &RepoName) -> bool {
        // Authenticated (or no authentication asked): every repository,
        // as for pulls. Per-repository grants decide here once they exist.
        true
    }
}
