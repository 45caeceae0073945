//! A read-only web console over the engine (feature `console`): what an
//! operator looks at when asked "why did this pod fail to pull?".
//!
//! Server-rendered HTML, no JavaScript: an overview (hit ratio, bytes
//! served and fetched, the store against its quota, pull budgets, fetches
//! in progress, recent denials), the caching rules (source, target,
//! registry, freshness, policies) with a box that explains which rule
//! serves a name, the repositories and their cached tags (size, last
//! pulled, pull count), and each image (its platforms or its config and
//! layers, and the signature and scan decisions with their reasons and
//! top findings, as the pull met them). Lists are searchable and paged
//! (50 rows a page unless configured), so they stay fast with 100,000
//! rules and 100,000 tags. Nothing here asks an upstream.
//!
//! [`Console::router`] is an axum `Router` to nest under a path (`/ui`
//! unless [`Console::mounted_at`] says otherwise). Who may use it, and
//! which repositories each viewer sees, is a [`ConsoleAccess`]:
//! [`OpenAccess`] for an operator's own listener, [`PullAuthAccess`]
//! behind the pull side's authentication.
//!
//! ```no_run
//! # async fn run(cache: cache_core::PullThroughCache) -> std::io::Result<()> {
//! use cache_core::console::{Console, OpenAccess};
//! use cache_core::server::PullService;
//!
//! let console = Console::new(cache.clone()).access(OpenAccess);
//! let app = axum::Router::new()
//!     .nest("/ui", console.router())
//!     .fallback_service(PullService::new(cache));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5001").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod access;
#[cfg(feature = "serde")]
mod config;
mod pages;

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::Markup;

pub use access::{ConsoleAccess, OpenAccess, PullAuthAccess, Viewer};
#[cfg(feature = "serde")]
pub use config::ConsoleConfig;

use crate::engine::PullThroughCache;
use crate::names::{ImageRef, Reference, RepoName};
use crate::protocol::query_param;

/// The most rows a page may have.
pub const MAX_PAGE_SIZE: usize = 500;

/// An overview measures the store again when it was measured longer ago.
const REMEASURE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// What the overview shows that the engine does not count itself: the
/// program's counters, pull budgets, the quota.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// Manifests and blobs served from the cache.
    pub hits: u64,
    /// Manifests and blobs fetched from upstreams.
    pub misses: u64,
    /// Blob bytes delivered to clients.
    pub bytes_served: u64,
    /// Bytes received from upstreams.
    pub bytes_fetched: u64,
    /// The store's quota, if it has one.
    pub quota: Option<u64>,
    /// Each upstream's pull budget, where it announced one.
    pub budgets: Vec<Budget>,
    /// Other figures, as (what, value) in words.
    pub more: Vec<(String, String)>,
}

/// An upstream's pull budget (Docker Hub's rate limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The registry.
    pub registry: String,
    /// The credential set (`default` for the registry's own).
    pub credentials: String,
    /// Pulls left in the window.
    pub remaining: u64,
    /// Pulls per window.
    pub limit: u64,
    /// The pulls kept in reserve, if configured.
    pub reserve: Option<u64>,
}

type FiguresFn = dyn Fn() -> Figures + Send + Sync;

/// The console: see the module docs. Cloning is cheap.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    cache: PullThroughCache,
    /// Whether the store is being measured for an overview.
    measuring: Arc<std::sync::atomic::AtomicBool>,
    access: Arc<dyn ConsoleAccess>,
    figures: Option<Arc<FiguresFn>>,
    page_size: usize,
    base: String,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("access", &self.inner.access)
            .field("page_size", &self.inner.page_size)
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console over `cache`, open to everyone ([`OpenAccess`]), 50 rows
    /// a page, mounted at `/ui`.
    pub fn new(cache: PullThroughCache) -> Self {
        Console {
            inner: Arc::new(Inner {
                cache,
                measuring: Arc::default(),
                access: Arc::new(OpenAccess),
                figures: None,
                page_size: 50,
                base: "/ui".into(),
            }),
        }
    }

    fn edit(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            cache: shared.cache.clone(),
            measuring: shared.measuring.clone(),
            access: shared.access.clone(),
            figures: shared.figures.clone(),
            page_size: shared.page_size,
            base: shared.base.clone(),
        });
        f(&mut inner);
        Console {
            inner: Arc::new(inner),
        }
    }

    /// Who may use it and what each viewer sees.
    pub fn access(self, access: impl ConsoleAccess + 'static) -> Self {
        self.edit(|i| i.access = Arc::new(access))
    }

    /// Where the overview's counters, pull budgets and quota come from
    /// (called for each overview).
    pub fn figures(self, f: impl Fn() -> Figures + Send + Sync + 'static) -> Self {
        self.edit(|i| i.figures = Some(Arc::new(f)))
    }

    /// Rows per page (1 to 500).
    pub fn page_size(self, n: usize) -> Self {
        self.edit(|i| i.page_size = n.clamp(1, MAX_PAGE_SIZE))
    }

    /// The path the router is nested at, for the pages' links (default
    /// `/ui`).
    pub fn mounted_at(self, base: &str) -> Self {
        let base = base.trim_end_matches('/').to_owned();
        self.edit(|i| i.base = base)
    }

    /// The pages, to nest at the path given to
    /// [`mounted_at`](Self::mounted_at): `/` (overview), `/rules`
    /// (`?q=`, `?page=`, `?explain=NAME`), `/repositories` (`?q=`,
    /// `?after=`), `/repository?name=` (`&q=`, `&after=`) and
    /// `/image?name=&ref=TAG|DIGEST`. Only `GET` and `HEAD`.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/", get(overview))
            .route("/rules", get(rules))
            .route("/repositories", get(repositories))
            .route("/repository", get(repository))
            .route("/image", get(image))
            .with_state(self)
    }

    /// The viewer, or the `401` that asks for credentials.
    async fn viewer(&self, headers: &HeaderMap) -> Result<Viewer, Response> {
        match self.inner.access.viewer(headers).await {
            Some(v) => Ok(v),
            None => {
                let mut r = page(
                    StatusCode::UNAUTHORIZED,
                    pages::message(
                        "Sign in",
                        "The console needs the credentials you pull with.",
                    ),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Basic realm=\"registry cache console\", charset=\"UTF-8\"",
                    ),
                );
                Err(r)
            }
        }
    }

    fn render(&self, status: StatusCode, title: &str, viewer: &Viewer, body: Markup) -> Response {
        page(status, pages::layout(&self.inner.base, title, viewer, body))
    }

    fn oops(&self, viewer: &Viewer, e: &crate::Error) -> Response {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        tracing::warn!(error = %e, "console page failed");
        self.render(
            status,
            "Error",
            viewer,
            pages::message("Something failed", &e.to_string()),
        )
    }

    fn not_found(&self, viewer: &Viewer, what: &str) -> Response {
        self.render(
            StatusCode::NOT_FOUND,
            "Not found",
            viewer,
            pages::message("Not found", what),
        )
    }

    fn bad(&self, viewer: &Viewer, what: String) -> Response {
        self.render(
            StatusCode::BAD_REQUEST,
            "Bad request",
            viewer,
            pages::message("Bad request", &what),
        )
    }
}

/// An HTML response that cannot run script or be framed, and is not kept.
fn page(status: StatusCode, body: Markup) -> Response {
    let mut r = (status, body.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A query parameter, at most 256 characters of it (a search box is not
/// a place for a document).
fn param(q: &Option<String>, key: &str) -> String {
    query_param(q.as_deref(), key)
        .unwrap_or_default()
        .chars()
        .take(256)
        .collect()
}

async fn overview(State(c): State<Console>, headers: HeaderMap) -> Response {
    let viewer = match c.viewer(&headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let cache = &c.inner.cache;
    let figures = c.inner.figures.as_ref().map(|f| f());
    let denials: Vec<_> = cache
        .recent_denials()
        .into_iter()
        .filter(|d| c.inner.access.may_read(&viewer, &d.repository))
        .collect();
    let usage = cache.store_usage();
    // A store measured more than a minute ago is measured again, in the
    // background (one listing at a time): the next overview shows it.
    let old = usage.is_none_or(|u| {
        std::time::SystemTime::now()
            .duration_since(u.measured_at)
            .is_ok_and(|age| age > REMEASURE_AFTER)
    });
    if old
        && !c
            .inner
            .measuring
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        let (cache, measuring) = (cache.clone(), c.inner.measuring.clone());
        tokio::spawn(async move {
            if let Err(e) = cache.measure_usage().await {
                tracing::warn!(error = %e, "measuring the store failed");
            }
            measuring.store(false, std::sync::atomic::Ordering::Release);
        });
    }
    let o = pages::Overview {
        figures: figures.as_ref(),
        inflight: cache.inflight(),
        usage,
        rules: cache.rules().len(),
        denials: &denials,
    };
    c.render(
        StatusCode::OK,
        "Overview",
        &viewer,
        pages::overview(&c.inner.base, &o),
    )
}

/// What `explain` says of a name: a local name's rule, or the local name
/// an upstream one (starting with a registry host) is served as.
fn explain(rules: &crate::RuleSet, name: &str) -> Result<String, String> {
    if name.split('/').next().is_some_and(ImageRef::names_registry)
        && let Ok(image) = ImageRef::parse(name)
    {
        return match rules.resolve_upstream(&image.registry, &image.repository) {
            Ok(r) => Ok(format!(
                "{}/{} is served as {} through rule {:?}",
                image.registry,
                r.upstream,
                r.local,
                r.rule.name()
            )),
            Err(e) => Err(e.to_string()),
        };
    }
    match RepoName::parse(name) {
        Ok(n) => match rules.explain(&n) {
            e @ (crate::Explanation::Exact { .. } | crate::Explanation::Wildcard { .. }) => {
                Ok(e.to_string())
            }
            e => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    }
}

async fn rules(State(c): State<Console>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let viewer = match c.viewer(&headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let cache = &c.inner.cache;
    let set = cache.rules();
    let query = param(&q, "q");
    let asked = param(&q, "explain");
    let explained = (!asked.trim().is_empty()).then(|| {
        let name = asked.trim();
        (name, explain(&set, name))
    });
    let size = c.inner.page_size;
    let matching: Vec<&crate::Rule> = set
        .rules()
        .iter()
        .filter(|r| {
            query.is_empty()
                || r.name().contains(query.as_str())
                || r.target().to_string().contains(query.as_str())
                || format!("{}/{}", r.registry(), r.source()).contains(query.as_str())
        })
        .collect();
    let pages_n = matching.len().div_ceil(size);
    let page_no = param(&q, "page")
        .parse::<usize>()
        .unwrap_or(1)
        .clamp(1, pages_n.max(1));
    let rows = matching
        .iter()
        .skip((page_no - 1) * size)
        .take(size)
        .map(|r| pages::RuleRow {
            rule: r,
            policy: cache.rule_policy(r.name()),
            hooks: cache.hooks_for(r.name()),
        })
        .collect();
    let page_data = pages::RulesPage {
        explain: explained,
        query: &query,
        rows,
        total: matching.len(),
        page: page_no,
        pages: pages_n,
    };
    c.render(
        StatusCode::OK,
        "Rules",
        &viewer,
        pages::rules(&c.inner.base, &page_data),
    )
}

async fn repositories(
    State(c): State<Console>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let viewer = match c.viewer(&headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let query = param(&q, "q");
    let after = param(&q, "after");
    let after = (!after.is_empty())
        .then(|| RepoName::parse(&after).ok())
        .flatten();
    let access = c.inner.access.clone();
    let visible = |r: &RepoName| access.may_read(&viewer, r);
    match c
        .inner
        .cache
        .browse_repositories(&query, after.as_ref(), c.inner.page_size, &visible)
        .await
    {
        Ok(page_data) => c.render(
            StatusCode::OK,
            "Repositories",
            &viewer,
            pages::repositories(&c.inner.base, &query, &page_data),
        ),
        Err(e) => c.oops(&viewer, &e),
    }
}

/// The repository named by `name`, if the viewer may read it.
fn readable(c: &Console, viewer: &Viewer, q: &Option<String>) -> Result<RepoName, Box<Response>> {
    let raw = param(q, "name");
    let name = RepoName::parse(&raw)
        .map_err(|e| Box::new(c.bad(viewer, format!("name = {raw:?}: {e}"))))?;
    if !c.inner.access.may_read(viewer, &name) {
        let what = format!("No repository {name} that you may read.");
        return Err(Box::new(c.not_found(viewer, &what)));
    }
    Ok(name)
}

async fn repository(
    State(c): State<Console>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let viewer = match c.viewer(&headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = match readable(&c, &viewer, &q) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let cache = &c.inner.cache;
    let query = param(&q, "q");
    let after = param(&q, "after");
    let after = (!after.is_empty()).then_some(after.as_str());
    let (rows, pulls, refused) = match futures::future::try_join3(
        cache.browse_tags(&name, &query, after, c.inner.page_size),
        cache.repository_pull_stats(&name),
        cache.refused_in(&name),
    )
    .await
    {
        Ok(x) => x,
        Err(e) => return c.oops(&viewer, &e),
    };
    if rows.total == 0 && refused.is_empty() && pulls.count == 0 && query.is_empty() {
        return c.not_found(&viewer, &format!("The cache holds nothing of {name}."));
    }
    let r = pages::RepositoryPage {
        name: &name,
        query: &query,
        rows: &rows,
        pulls,
        refused: &refused,
    };
    c.render(
        StatusCode::OK,
        name.as_str(),
        &viewer,
        pages::repository(&c.inner.base, &r),
    )
}

async fn image(State(c): State<Console>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let viewer = match c.viewer(&headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = match readable(&c, &viewer, &q) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let raw = param(&q, "ref");
    let reference = match Reference::parse(&raw) {
        Ok(r) => r,
        Err(e) => return c.bad(&viewer, format!("ref = {raw:?}: {e}")),
    };
    match c.inner.cache.image_view(&name, &reference).await {
        Ok(v) if v.digest.is_none() && v.pulls.count == 0 => {
            c.not_found(&viewer, &format!("The cache holds no {name}:{raw}."))
        }
        Ok(v) => c.render(
            StatusCode::OK,
            &format!("{name} {raw}"),
            &viewer,
            pages::image(&c.inner.base, &v),
        ),
        Err(e) => c.oops(&viewer, &e),
    }
}
