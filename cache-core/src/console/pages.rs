//! The console's pages as HTML (maud escapes every value written into
//! them: names, tags, reasons and findings come from upstreams and
//! scanners).

use std::time::SystemTime;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{Figures, Viewer};
use crate::engine::{
    AdmissionRecord, Denial, ImageView, ManifestView, PullStats, RepoPage, StoreUsage, TagRows,
};
use crate::events::AdmissionOutcome;
use crate::names::{Reference, RepoName};
use crate::policy::{RulePolicy, SignatureMode, TagFreshness};
use crate::rules::Rule;

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}header a:hover{text-decoration:underline}
header .viewer{margin-left:auto;opacity:.8;font-size:.9em}
main{padding:1em 1.2em;max-width:1400px}
h1{font-size:1.4em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .5em}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:.8em}
th,td{border:1px solid #d0d7de;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#eaeef2;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;min-width:11em}
.card .v{font-size:1.5em;font-weight:600}.card .k{color:#57606a;font-size:.85em}
.refused{color:#cf222e;font-weight:600}.allowed{color:#1a7f37;font-weight:600}.audit_only{color:#9a6700;font-weight:600}
.muted{color:#57606a}.bar{background:#eaeef2;height:.5em;border-radius:3px;overflow:hidden}
.bar>div{height:100%;background:#1f6feb}.bar>div.high{background:#cf222e}
form.inline{display:flex;gap:.5em;margin:.5em 0 1em}form.inline input[type=text]{flex:1;max-width:30em;padding:.3em}
nav.pages{margin:.5em 0}nav.pages a{margin-right:1em}
.box{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;margin:.5em 0 1em}
"#;

/// `1.5 GiB`, `312 KiB`, `17 B`.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `3 min ago`, with the exact time (UTC) as the title.
fn when(t: SystemTime) -> Markup {
    let ago = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    let text = match ago {
        0..60 => format!("{ago} s ago"),
        60..3600 => format!("{} min ago", ago / 60),
        3600..86_400 => format!("{} h ago", ago / 3600),
        _ => format!("{} d ago", ago / 86_400),
    };
    html! { span title=(crate::runtime::rfc3339(t)) { (text) } }
}

fn pulls(p: &PullStats) -> Markup {
    html! {
        td.num { (p.count) }
        td { @match p.last { Some(t) => (when(t)), None => span.muted { "never" } } }
    }
}

/// Percent-encodes a query value.
pub(super) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn short(d: &impl std::fmt::Display) -> String {
    let s = d.to_string();
    match s.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}", &hex[..12]),
        _ => s,
    }
}

fn outcome(o: AdmissionOutcome) -> Markup {
    let text = match o {
        AdmissionOutcome::Allowed => "allowed",
        AdmissionOutcome::Refused => "refused",
        AdmissionOutcome::AuditOnly => "audit only (served)",
    };
    html! { span class=(o.as_str()) { (text) } }
}

/// The whole page around `body`.
pub(super) fn layout(base: &str, title: &str, viewer: &Viewer, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · registry cache" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a href={ (base) "/" } { "Overview" }
                    a href={ (base) "/rules" } { "Rules" }
                    a href={ (base) "/repositories" } { "Repositories" }
                    span.viewer { "signed in as " (viewer.name) }
                }
                main { (body) }
            }
        }
    }
}

/// A page that says why there is nothing to show.
pub(super) fn message(title: &str, text: &str) -> Markup {
    html! { h1 { (title) } p #message { (text) } }
}

pub(super) fn image_href(base: &str, repo: &RepoName, reference: &str) -> String {
    format!(
        "{base}/image?name={}&ref={}",
        enc(repo.as_str()),
        enc(reference)
    )
}

fn repo_href(base: &str, repo: &RepoName) -> String {
    format!("{base}/repository?name={}", enc(repo.as_str()))
}

/// What the overview shows.
pub(super) struct Overview<'a> {
    pub(super) figures: Option<&'a Figures>,
    pub(super) inflight: usize,
    pub(super) usage: Option<StoreUsage>,
    pub(super) rules: usize,
    pub(super) denials: &'a [Denial],
}

pub(super) fn overview(base: &str, o: &Overview<'_>) -> Markup {
    let card = |k: &str, v: String, id: &str| {
        html! { div.card #(id) { div.v { (v) } div.k { (k) } } }
    };
    let quota = o.figures.and_then(|f| f.quota);
    html! {
        h1 { "Overview" }
        div.cards {
            @if let Some(f) = o.figures {
                @let answered = f.hits + f.misses;
                (card("hit ratio (manifests and blobs)", if answered == 0 { "–".into() } else { format!("{:.1} %", f.hits as f64 * 100.0 / answered as f64) }, "hit-ratio"))
                (card("served from the cache", f.hits.to_string(), "hits"))
                (card("fetched from upstreams", f.misses.to_string(), "misses"))
                (card("bytes served", bytes(f.bytes_served), "bytes-served"))
                (card("bytes fetched", bytes(f.bytes_fetched), "bytes-fetched"))
            }
            (card("fetches in progress", o.inflight.to_string(), "inflight"))
            (card("caching rules", o.rules.to_string(), "rule-count"))
        }
        h2 { "Store" }
        div.box #store {
            @match o.usage {
                Some(u) => {
                    p {
                        (bytes(u.bytes)) " in " (u.blobs) " blobs"
                        @if let Some(q) = quota { " of a quota of " (bytes(q)) " (" (format!("{:.1}", u.bytes as f64 * 100.0 / q.max(1) as f64)) " %)" }
                        span.muted { ", measured " (when(u.measured_at)) }
                    }
                    @if let Some(q) = quota {
                        @let pct = (u.bytes as f64 * 100.0 / q.max(1) as f64).min(100.0);
                        div.bar { div class=(if pct >= 90.0 { "high" } else { "" }) style=(format!("width:{pct:.1}%")) {} }
                    }
                }
                None => p.muted { "Not measured yet." }
            }
        }
        @if let Some(f) = o.figures && !f.budgets.is_empty() {
            h2 { "Pull budgets" }
            table #budgets {
                tr { th { "registry" } th { "credentials" } th.num { "remaining" } th.num { "limit" } th.num { "reserve" } }
                @for b in &f.budgets {
                    tr {
                        td { (b.registry) } td { (b.credentials) }
                        td.num { (b.remaining) } td.num { (b.limit) }
                        td.num { @match b.reserve { Some(r) => (r), None => span.muted { "none" } } }
                    }
                }
            }
        }
        @if let Some(f) = o.figures && !f.more.is_empty() {
            h2 { "More" }
            table #more { @for (k, v) in &f.more { tr { th { (k) } td { (v) } } } }
        }
        h2 { "Recent denials" }
        @if o.denials.is_empty() {
            p.muted #no-denials { "None since this instance started." }
        } @else {
            table #denials {
                tr { th { "when" } th { "image" } th { "policy" } th { "decision" } th { "reason" } th.num { "times" } }
                @for d in o.denials {
                    tr {
                        td { (when(d.record.at)) }
                        td { a href=(image_href(base, &d.repository, d.digest.as_str())) { (d.repository) ":" (d.record.reference) } br; code { (short(&d.digest)) } }
                        td { (d.record.policy) }
                        td { (outcome(d.record.outcome)) }
                        td { (d.record.reason) }
                        td.num { (d.times) }
                    }
                }
            }
        }
    }
}

/// `24h`, `10m`, `90s`, `1d12h`: as a configuration writes it.
pub(super) fn duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, v) in [
        ("d", s / 86_400),
        ("h", s % 86_400 / 3600),
        ("m", s % 3600 / 60),
        ("s", s % 60),
    ] {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    out
}

fn freshness(p: &RulePolicy) -> String {
    match p.tag_freshness {
        TagFreshness::Revalidate => "revalidate".into(),
        TagFreshness::Pinned => "pinned".into(),
        TagFreshness::Ttl(d) => format!("ttl {}", duration(d)),
    }
}

/// One rule's row data.
pub(super) struct RuleRow<'a> {
    pub(super) rule: &'a Rule,
    pub(super) policy: Option<RulePolicy>,
    pub(super) hooks: Vec<String>,
}

/// The rules page: the explain box, its answer, a search, a page of rules.
pub(super) struct RulesPage<'a> {
    pub(super) explain: Option<(&'a str, Result<String, String>)>,
    pub(super) query: &'a str,
    pub(super) rows: Vec<RuleRow<'a>>,
    pub(super) total: usize,
    pub(super) page: usize,
    pub(super) pages: usize,
}

pub(super) fn rules(base: &str, r: &RulesPage<'_>) -> Markup {
    let page_href = |p: usize| format!("{base}/rules?q={}&page={p}", enc(r.query));
    html! {
        h1 { "Caching rules" }
        div.box {
            form.inline method="get" action={ (base) "/rules" } #explain-form {
                label for="explain" { "Which rule serves" }
                input #explain type="text" name="explain" placeholder="library/nginx or docker.io/library/nginx" value=(r.explain.as_ref().map_or("", |e| e.0));
                button type="submit" { "Explain" }
            }
            @if let Some((name, answer)) = &r.explain {
                p #explain-result {
                    code { (name) } ": "
                    @match answer { Ok(a) => span.allowed { (a) }, Err(e) => span.refused { (e) } }
                }
            }
        }
        form.inline method="get" action={ (base) "/rules" } #rule-search {
            input type="text" name="q" placeholder="search name, source or target" value=(r.query);
            button type="submit" { "Search" }
        }
        p.muted #rule-total { (r.total) " rule(s)" @if !r.query.is_empty() { " matching " code { (r.query) } } }
        table #rules {
            tr { th { "name" } th { "source" } th { "target" } th { "credentials" } th { "tag freshness" } th { "stale if error" } th { "content TTL" } th { "policies" } }
            @for row in &r.rows {
                tr {
                    td { (row.rule.name()) }
                    td { code { (row.rule.registry()) "/" (row.rule.source()) } }
                    td { code { (row.rule.target()) } }
                    td { (row.rule.credentials().unwrap_or("–")) }
                    @if let Some(p) = &row.policy {
                        td { (freshness(p)) }
                        td { (duration(p.stale_if_error)) }
                        td { @match p.content_ttl { Some(t) => (duration(t)), None => "–" } }
                        td {
                            @if let Some(s) = &p.signatures {
                                div { "signatures: " (match s.mode { SignatureMode::Enforce => "enforced", SignatureMode::Audit => "audited" }) ", " (s.keys.len()) " key(s)" }
                            }
                            @for h in &row.hooks { div { (h) } }
                            @if p.signatures.is_none() && row.hooks.is_empty() { span.muted { "none" } }
                        }
                    } @else {
                        td colspan="4" { span.muted { "–" } }
                    }
                }
            }
        }
        nav.pages {
            @if r.page > 1 { a #prev href=(page_href(r.page - 1)) { "← previous" } }
            span.muted { "page " (r.page) " of " (r.pages.max(1)) }
            " "
            @if r.page < r.pages { a #next href=(page_href(r.page + 1)) { "next →" } }
        }
    }
}

pub(super) fn repositories(base: &str, query: &str, page: &RepoPage) -> Markup {
    html! {
        h1 { "Repositories" }
        form.inline method="get" action={ (base) "/repositories" } #repository-search {
            input type="text" name="q" placeholder="search repositories" value=(query);
            button type="submit" { "Search" }
        }
        p.muted #repository-total { (page.total) " repositories" @if !query.is_empty() { " matching " code { (query) } } }
        table #repositories {
            tr { th { "repository" } th.num { "cached tags" } th.num { "images decided by a policy" } }
            @for r in &page.repositories {
                tr {
                    td { a href=(repo_href(base, &r.name)) { (r.name) } }
                    td.num { (r.tags) }
                    td.num { (r.decided) }
                }
            }
        }
        @if page.more && let Some(last) = page.repositories.last() {
            nav.pages { a #next href=(format!("{base}/repositories?q={}&after={}", enc(query), enc(last.name.as_str()))) { "next →" } }
        }
    }
}

/// A repository's page: its tags, and what policies refused in it.
pub(super) struct RepositoryPage<'a> {
    pub(super) name: &'a RepoName,
    pub(super) query: &'a str,
    pub(super) rows: &'a TagRows,
    pub(super) pulls: PullStats,
    pub(super) refused: &'a [(crate::Digest, Vec<AdmissionRecord>)],
}

pub(super) fn repository(base: &str, r: &RepositoryPage<'_>) -> Markup {
    let href = |after: &str| {
        format!(
            "{base}/repository?name={}&q={}&after={}",
            enc(r.name.as_str()),
            enc(r.query),
            enc(after)
        )
    };
    html! {
        h1 { (r.name) }
        p.muted #repository-pulls {
            (r.pulls.count) " pull(s)"
            @if let Some(t) = r.pulls.last { ", the last " (when(t)) }
        }
        @if !r.refused.is_empty() {
            h2 { "Refused by a policy" }
            table #refused {
                tr { th { "image" } th { "policy" } th { "decision" } th { "reason" } th { "when" } }
                @for (digest, records) in r.refused {
                    @for rec in records.iter().filter(|x| x.outcome != AdmissionOutcome::Allowed) {
                        tr {
                            td { a href=(image_href(base, r.name, digest.as_str())) { (rec.reference) } br; code { (short(digest)) } }
                            td { (rec.policy) }
                            td { (outcome(rec.outcome)) }
                            td.reason { (rec.reason) }
                            td { (when(rec.at)) }
                        }
                    }
                }
            }
        }
        h2 { "Tags" }
        form.inline method="get" action={ (base) "/repository" } #tag-search {
            input type="hidden" name="name" value=(r.name);
            input type="text" name="q" placeholder="search tags" value=(r.query);
            button type="submit" { "Search" }
        }
        p.muted #tag-total { (r.rows.total) " cached tag(s)" @if !r.query.is_empty() { " matching " code { (r.query) } } }
        table #tags {
            tr { th { "tag" } th { "digest" } th.num { "size" } th.num { "pulls" } th { "last pulled" } th { "confirmed by the upstream" } }
            @for t in &r.rows.rows {
                tr {
                    td { a href=(image_href(base, r.name, t.tag.as_str())) { (t.tag) } }
                    td { code { (short(&t.digest)) } }
                    td.num {
                        @match (t.size, t.platforms) {
                            (Some(s), _) => (bytes(s)),
                            (None, Some(n)) => { "index, " (n) " platform(s)" },
                            _ => span.muted { "–" },
                        }
                    }
                    (pulls(&t.pulls))
                    td { (when(t.confirmed)) }
                }
            }
        }
        @if r.rows.more && let Some(last) = r.rows.rows.last() {
            nav.pages { a #next href=(href(last.tag.as_str())) { "next →" } }
        }
    }
}

/// The findings in a decision's details (the vulnerability gate's
/// `{"findings": [{"id", "severity", "package", "version", "fix_version"}]}`).
fn findings(rec: &AdmissionRecord) -> Markup {
    let list = rec
        .detail
        .as_ref()
        .and_then(|d| d.get("findings"))
        .and_then(|f| f.as_array());
    let field =
        |f: &serde_json::Value, k: &str| f.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    html! {
        @if let Some(list) = list && !list.is_empty() {
            table.findings {
                tr { th { "finding" } th { "severity" } th { "package" } th { "version" } th { "fixed in" } }
                @for f in list.iter().take(20) {
                    tr {
                        td { (field(f, "id")) } td { (field(f, "severity")) } td { (field(f, "package")) }
                        td { (field(f, "version")) } td { (field(f, "fix_version")) }
                    }
                }
            }
        }
    }
}

fn verdict_table(id: &str, records: &[AdmissionRecord]) -> Markup {
    html! {
        table #(id) {
            tr { th { "policy" } th { "decision" } th { "reason and top findings" } th { "as pulled" } th { "when" } }
            @for rec in records {
                tr {
                    td { (rec.policy) }
                    td { (outcome(rec.outcome)) }
                    td { div.reason { (rec.reason) } (findings(rec)) }
                    td { "rule " (rec.rule) ", " code { (rec.reference) } }
                    td { (when(rec.at)) }
                }
            }
        }
    }
}

pub(super) fn image(base: &str, v: &ImageView) -> Markup {
    let shown = match &v.reference {
        Reference::Tag(t) => format!("{}:{t}", v.repository),
        Reference::Digest(d) => format!("{}@{}", v.repository, short(d)),
    };
    html! {
        h1 { a href=(repo_href(base, &v.repository)) { (v.repository) } (shown.strip_prefix(v.repository.as_str()).unwrap_or("")) }
        table #facts {
            tr { th { "digest" } td { @match &v.digest { Some(d) => code { (d) }, None => span.muted { "not cached" } } } }
            @if let Some(mt) = &v.media_type { tr { th { "media type" } td { code { (mt) } } } }
            @if let Some(rule) = &v.rule { tr { th { "rule" } td { (rule) } } }
            @if let Some(t) = v.confirmed { tr { th { "confirmed by the upstream" } td { (when(t)) } } }
            tr { th { "pulls" } td #pulls { (v.pulls.count) @if let Some(t) = v.pulls.last { ", the last " (when(t)) } } }
        }
        h2 { "Admission" }
        @if v.verdicts.is_empty() {
            p.muted #no-verdicts { "No policy decided on this manifest (or it passed from memory)." }
        } @else {
            (verdict_table("verdicts", &v.verdicts))
        }
        @match &v.manifest {
            None => {
                @if v.digest.is_some() {
                    p.muted #not-stored { "The manifest is not stored: a refused manifest never is." }
                }
            }
            Some(ManifestView::Index { platforms }) => {
                h2 { "Platforms" }
                table #platforms {
                    tr { th { "platform" } th { "manifest" } th.num { "size" } th { "admission" } }
                    @for p in platforms {
                        tr {
                            td { (p.platform.as_deref().unwrap_or("–")) }
                            td { a href=(image_href(base, &v.repository, p.digest.as_str())) { code { (short(&p.digest)) } } @if !p.stored { " " span.muted { "(not cached)" } } }
                            td.num { @match p.size { Some(s) => (bytes(s)), None => span.muted { "–" } } }
                            td { @for rec in &p.verdicts { div { (rec.policy) ": " (outcome(rec.outcome)) } } }
                        }
                    }
                }
            }
            Some(ManifestView::Image { config, layers, size, platform }) => {
                h2 { "Layers" }
                p #image-size { (bytes(*size)) " in " (layers.len()) " layer(s)" @if let Some(p) = platform { ", " (p) } }
                table #layers {
                    tr { th { "" } th { "digest" } th { "media type" } th.num { "size" } th { "cached" } }
                    tr {
                        td { "config" } td { code { (config.digest) } } td { code { (config.media_type.as_deref().unwrap_or("")) } }
                        td.num { (bytes(config.size)) } td { (if config.stored { "yes" } else { "no" }) }
                    }
                    @for (i, l) in layers.iter().enumerate() {
                        tr {
                            td { (i + 1) } td { code { (l.digest) } } td { code { (l.media_type.as_deref().unwrap_or("")) } }
                            td.num { (bytes(l.size)) } td { (if l.stored { "yes" } else { "no" }) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(17), "17 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(1536 * 1024 * 1024), "1.5 GiB");
        assert_eq!(bytes(300 * 1024 * 1024), "300 MiB");
    }

    #[test]
    fn durations_read_as_configurations_write_them() {
        use std::time::Duration;
        assert_eq!(duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(duration(Duration::from_secs(600)), "10m");
        assert_eq!(duration(Duration::from_secs(129_661)), "1d12h1m1s");
        assert_eq!(duration(Duration::from_millis(200)), "200ms");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(enc("library/app"), "library/app");
        assert_eq!(enc("a b&c=d#e"), "a%20b%26c%3Dd%23e");
        assert_eq!(enc("sha256:ab"), "sha256:ab");
    }
}
