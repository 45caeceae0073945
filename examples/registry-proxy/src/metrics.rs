//! Prometheus metrics fed by the engine's events and the HTTP layer, in
//! the Prometheus text format (version 0.0.4) written by
//! `prometheus-client`, which also escapes label values (`\\`, `"` and
//! newline), so names from the configuration (rules, registries,
//! credential sets, scanners) cannot break the exposition.
//!
//! Every label takes values from a bounded set (methods are `GET`, `HEAD`
//! or `other`; statuses are the few this server answers with; codes and
//! call kinds are enums; principals by class, never by name; rules beyond
//! [`MAX_RULE_LABELS`] count as `other`), so no client or upstream can
//! grow the series.
//!
//! The series the HTTP layer and the engine's events count are
//! `prometheus-client` families; what is kept elsewhere (the engine's
//! atomic counters, the scan counters, the registry clients' pull budgets,
//! the fetches in flight) is read on each scrape by a [`Collector`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::Method;
use cache_core::events::{Counters, Event, EventSink};
use cache_core::{PeerFetch, UpstreamCall};
use cache_upstream::scanner::ScanCounters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Rules named in admission metrics; decisions of further rules count
/// under `other`, so the series stay bounded with any number of rules.
pub const MAX_RULE_LABELS: usize = 500;

/// The `Content-Type` of what [`Metrics::render`] writes: the Prometheus
/// text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    rule: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncRunLabels {
    rule: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccessLabels {
    class: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Counters for `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// The counters of `requests` and `access` most counted, found
    /// without the family's lock and hash.
    hot_requests: HotCounters<RequestLabels>,
    hot_access: HotCounters<AccessLabels>,
    upstream_errors: Family<CodeLabels, Counter>,
    upstream_requests: Family<CallLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    /// Requests by principal class and access decision (both bounded sets).
    access: Family<AccessLabels, Counter>,
    /// Admission decisions by (rule, outcome).
    admissions: Family<AdmissionLabels, Counter>,
    /// The rules admissions and syncs are counted under by name: at most
    /// [`MAX_RULE_LABELS`].
    admission_rules: Mutex<BTreeSet<String>>,
    /// Cached tags served although the upstream withdrew them, by rule.
    withdrawn: Family<RuleLabels, Counter>,
    /// Sync runs by (rule, outcome: ok, errors, skipped).
    sync_runs: Family<SyncRunLabels, Counter>,
    /// What sync runs saw, cached anew, fetched and failed at, by rule.
    sync_tags_seen: Family<RuleLabels, Counter>,
    sync_tags_new: Family<RuleLabels, Counter>,
    sync_bytes: Family<RuleLabels, Counter>,
    sync_errors: Family<RuleLabels, Counter>,
    read: Arc<ReadOnScrape>,
    /// Vulnerability scans, counted by the gates.
    pub scans: Arc<ScanCounters>,
}

/// What a scrape reads from where it is kept.
#[derive(Debug, Default)]
struct ReadOnScrape {
    engine: Counters,
    clients: Mutex<crate::Clients>,
    scans: Arc<ScanCounters>,
    /// The engine's fetch count, as [`Metrics::render`] was given it.
    inflight: AtomicUsize,
    /// The webhooks' counts.
    webhooks: Mutex<Option<Arc<cache_upstream::webhook::Webhooks>>>,
    /// What the store held when last measured, and its quota.
    store: Mutex<(Option<cache_core::StoreUsage>, Option<u64>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers `family` as `name` with `help` (one sentence, its period
/// included: the registry adds it).
fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    family: &M,
) {
    registry.register(name, help.trim_end_matches('.'), family.clone());
}

impl Default for Metrics {
    fn default() -> Self {
        let scans = Arc::new(ScanCounters::default());
        let read = Arc::new(ReadOnScrape {
            scans: scans.clone(),
            ..ReadOnScrape::default()
        });
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            hot_requests: HotCounters::default(),
            hot_access: HotCounters::default(),
            upstream_errors: Family::default(),
            upstream_requests: Family::default(),
            reloads: Family::default(),
            access: Family::default(),
            admissions: Family::default(),
            admission_rules: Mutex::new(BTreeSet::new()),
            withdrawn: Family::default(),
            sync_runs: Family::default(),
            sync_tags_seen: Family::default(),
            sync_tags_new: Family::default(),
            sync_bytes: Family::default(),
            sync_errors: Family::default(),
            read,
            scans,
        };
        // Shown at 0 before anything happened, as a dashboard expects.
        for call in UpstreamCall::ALL {
            m.upstream_requests.get_or_create_owned(&CallLabels {
                call: call.as_str(),
            });
        }
        for result in ["applied", "refused"] {
            m.reloads.get_or_create_owned(&ReloadLabels { result });
        }
        let mut registry = Registry::default();
        register(
            &mut registry,
            "registry_proxy_requests",
            "HTTP responses by method and status.",
            &m.requests,
        );
        registry.register_collector(Box::new(m.read.clone()));
        register(
            &mut registry,
            "registry_proxy_admissions",
            "Admission decisions (signature policy, admission hooks) by rule and outcome (allowed, refused, audit_only).",
            &m.admissions,
        );
        register(
            &mut registry,
            "registry_proxy_upstream_requests",
            "Requests made to upstreams by kind (retries and resumptions included).",
            &m.upstream_requests,
        );
        register(
            &mut registry,
            "registry_proxy_config_reloads",
            "Configuration reloads, applied or refused (invalid).",
            &m.reloads,
        );
        register(
            &mut registry,
            "registry_proxy_access",
            "Requests under /v2 and to /token by principal class (anonymous, user, token, workload, scanner; none without pull-side auth) and access decision (pull, pull-cached, allowed where no repository is named, denied, unauthorized, throttled; open without pull-side auth).",
            &m.access,
        );
        register(
            &mut registry,
            "registry_proxy_upstream_errors",
            "Upstream errors by OCI code.",
            &m.upstream_errors,
        );
        register(
            &mut registry,
            "registry_proxy_withdrawn_served",
            "Cached tags served although the upstream withdrew them (404, 401, 403), under the rule's serve_withdrawn, by rule.",
            &m.withdrawn,
        );
        register(
            &mut registry,
            "registry_proxy_sync_runs",
            "Scheduled or requested sync runs by rule and outcome (ok, errors, skipped: another instance held the rule's sync lease).",
            &m.sync_runs,
        );
        register(
            &mut registry,
            "registry_proxy_sync_tags_seen",
            "Tags sync runs selected (listed upstream and passing the rule's filters), by rule.",
            &m.sync_tags_seen,
        );
        register(
            &mut registry,
            "registry_proxy_sync_tags_new",
            "Tags sync runs cached anew (not cached before, or moved upstream), by rule.",
            &m.sync_tags_new,
        );
        register(
            &mut registry,
            "registry_proxy_sync_bytes",
            "Blob bytes sync runs fetched, by rule.",
            &m.sync_bytes,
        );
        register(
            &mut registry,
            "registry_proxy_sync_errors",
            "Failures in sync runs (a repository not listed, a tag not fetched or refused), by rule.",
            &m.sync_errors,
        );
        Metrics { registry, ..m }
    }
}

impl EventSink for Metrics {
    fn event(&self, e: &Event<'_>) {
        self.read.engine.event(e);
        match e {
            Event::UpstreamError { code, .. } => {
                self.upstream_errors
                    .get_or_create(&CodeLabels {
                        code: code.as_str(),
                    })
                    .inc();
            }
            Event::UpstreamRequest { call } => {
                self.upstream_requests
                    .get_or_create(&CallLabels {
                        call: call.as_str(),
                    })
                    .inc();
            }
            Event::Withdrawn { rule } => {
                let rule = self.rule_label(rule);
                self.withdrawn.get_or_create(&RuleLabels { rule }).inc();
            }
            Event::Sync { rule, report } => {
                let rule = self.rule_label(rule);
                let outcome = match (&report.skipped, report.errors) {
                    (Some(_), _) => "skipped",
                    (None, 0) => "ok",
                    (None, _) => "errors",
                };
                let labels = SyncRunLabels {
                    rule: rule.clone(),
                    outcome,
                };
                self.sync_runs.get_or_create(&labels).inc();
                let by_rule = RuleLabels { rule };
                for (family, n) in [
                    (&self.sync_tags_seen, report.tags_seen as u64),
                    (&self.sync_tags_new, report.tags_new as u64),
                    (&self.sync_bytes, report.bytes),
                    (&self.sync_errors, report.errors as u64),
                ] {
                    family.get_or_create(&by_rule).inc_by(n);
                }
            }
            Event::Admission { rule, outcome, .. } => {
                let rule = self.rule_label(rule);
                self.admissions
                    .get_or_create(&AdmissionLabels {
                        rule,
                        outcome: outcome.as_str(),
                    })
                    .inc();
            }
            _ => {}
        }
    }
}

/// Handles on the first [`HOT_SLOTS`] series of a family a request
/// counts in, so that counting one of them is an atomic add: every
/// request counts in two families, and their lock and hash were a visible
/// share of a warm request's CPU. The rest are counted through the family.
/// A handle shares its series with the family: `/metrics` shows one count.
#[derive(Debug)]
struct HotCounters<L> {
    slots: [OnceLock<(L, Counter)>; HOT_SLOTS],
}

/// Series per family with a handle: enough for the usual few (`GET` and
/// `HEAD` answered `200`, `206`, `304`, `404`).
const HOT_SLOTS: usize = 8;

impl<L> Default for HotCounters<L> {
    fn default() -> Self {
        HotCounters {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl<L> HotCounters<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    /// Counts one in `family`'s series `labels`.
    fn inc(&self, family: &Family<L, Counter>, labels: L) {
        for slot in &self.slots {
            let (l, counter) =
                slot.get_or_init(|| (labels.clone(), family.get_or_create(&labels).clone()));
            if *l == labels {
                counter.inc();
                return;
            }
        }
        family.get_or_create(&labels).inc();
    }
}

/// The method label: one of a fixed few, whatever the client sent.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

impl Metrics {
    /// `rule` as a label value: its name for the first [`MAX_RULE_LABELS`]
    /// rules named, `other` for the rest.
    fn rule_label(&self, rule: &str) -> String {
        let mut named = lock(&self.admission_rules);
        if named.contains(rule) || named.len() < MAX_RULE_LABELS {
            named.insert(rule.to_owned());
            rule.to_owned()
        } else {
            "other".to_owned()
        }
    }

    /// Counts one HTTP response.
    pub fn request(&self, method: &Method, status: u16) {
        let labels = RequestLabels {
            method: method_label(method),
            status,
        };
        self.hot_requests.inc(&self.requests, labels);
    }

    /// Counts one request's access decision for a class of principal
    /// (the library's `AccessInfo`: both from fixed sets).
    pub fn access(&self, class: &'static str, decision: &'static str) {
        self.hot_access
            .inc(&self.access, AccessLabels { class, decision });
    }

    /// The registry clients whose pull budgets are shown (a reload replaces them).
    pub fn set_clients(&self, clients: crate::Clients) {
        *lock(&self.read.clients) = clients;
    }

    /// The webhooks whose deliveries are shown.
    pub fn set_webhooks(&self, webhooks: Arc<cache_upstream::webhook::Webhooks>) {
        *lock(&self.read.webhooks) = Some(webhooks);
    }

    /// The store's quota, if it has one.
    pub fn set_quota(&self, quota: Option<u64>) {
        lock(&self.read.store).1 = quota;
    }

    /// What the store held when last measured.
    pub fn set_store_usage(&self, usage: cache_core::StoreUsage) {
        lock(&self.read.store).0 = Some(usage);
    }

    /// Counts one configuration reload, applied or refused.
    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// What the web console's overview shows of these: the cache's
    /// counters, each registry's pull budget, the quota, the webhooks.
    pub fn figures(&self) -> cache_core::console::Figures {
        let c = &self.read.engine;
        let budgets = lock(&self.read.clients)
            .iter()
            .filter_map(|(registry, creds, client)| {
                let l = client.rate_limit()?;
                Some(cache_core::console::Budget {
                    registry: registry.clone(),
                    credentials: creds.clone(),
                    remaining: l.remaining,
                    limit: l.limit,
                    reserve: client.rate_limit_reserve(),
                })
            })
            .collect();
        let more = lock(&self.read.webhooks)
            .as_ref()
            .map(|w| w.stats())
            .unwrap_or_default()
            .into_iter()
            .map(|h| {
                let v = format!(
                    "{} delivered, {} failed, {} dropped, {} waiting",
                    h.delivered, h.failed, h.dropped, h.queued
                );
                (format!("webhook {}", h.name), v)
            })
            .collect();
        cache_core::console::Figures {
            hits: Counters::get(&c.hits),
            misses: Counters::get(&c.misses),
            bytes_served: Counters::get(&c.bytes_served),
            bytes_fetched: Counters::get(&c.bytes_from_upstream),
            quota: lock(&self.read.store).1,
            budgets,
            more,
        }
    }

    /// The engine's counters.
    pub fn engine(&self) -> &Counters {
        &self.read.engine
    }

    /// Renders every metric in the text format ([`CONTENT_TYPE`]);
    /// `inflight` is the engine's current fetch count.
    pub fn render(&self, inflight: usize) -> String {
        self.read.inflight.store(inflight, Ordering::Relaxed);
        let mut out = String::new();
        // Writing to a String fails only if an encoder does, and ours do not.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// One counter without labels.
fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// One gauge without labels.
fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for ReadOnScrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let c = &self.engine;
        for (name, help, v) in [
            (
                "registry_proxy_cache_hits",
                "Manifests and blobs served from the cache.",
                &c.hits,
            ),
            (
                "registry_proxy_cache_misses",
                "Manifests and blobs fetched from an upstream.",
                &c.misses,
            ),
            (
                "registry_proxy_revalidations",
                "Tags confirmed current by the upstream.",
                &c.revalidations,
            ),
            (
                "registry_proxy_stale_served",
                "Answers served stale because the upstream failed.",
                &c.stale,
            ),
            (
                "registry_proxy_negative_hits",
                "Not-found answers given from memory (within the rule's negative_ttl) without asking the upstream.",
                &c.negative,
            ),
            (
                "registry_proxy_bytes_served",
                "Blob bytes delivered to clients.",
                &c.bytes_served,
            ),
            (
                "registry_proxy_upstream_bytes",
                "Bytes received from upstreams.",
                &c.bytes_from_upstream,
            ),
            (
                "registry_proxy_peer_bytes",
                "Blob bytes received from other instances on the store (peer streaming).",
                &c.bytes_from_peers,
            ),
            (
                "registry_proxy_fetches",
                "Upstream blob fetches started.",
                &c.fetches_started,
            ),
            (
                "registry_proxy_fetches_failed",
                "Upstream blob fetches that failed.",
                &c.fetches_failed,
            ),
            (
                "registry_proxy_commits_failed",
                "Blobs that verified and were served, then failed to commit to the store (the next request fetches them again).",
                &c.commits_failed,
            ),
            (
                "registry_proxy_fetch_queue_full",
                "Blob fetches refused (503) because their registry's fetch queue was full.",
                &c.fetch_queue_full,
            ),
            (
                "registry_proxy_evicted_bytes",
                "Bytes removed by gc and scrub.",
                &c.evicted_bytes,
            ),
        ] {
            counter(&mut e, name, help, Counters::get(v))?;
        }
        counter(
            &mut e,
            "registry_proxy_sendfile_bytes",
            "Blob bytes sent straight from stored files (sendfile).",
            cache_core::server::sendfile::bytes_sent(),
        )?;

        let mut scans = e.encode_descriptor(
            "registry_proxy_scans",
            "Vulnerability scans by scanner and outcome (finished, failed).",
            None,
            MetricType::Counter,
        )?;
        for (scanner, finished, failed) in self.scans.by_scanner() {
            for (outcome, v) in [("finished", finished), ("failed", failed)] {
                let labels = [("scanner", scanner.as_str()), ("outcome", outcome)];
                ConstCounter::new(v).encode(scans.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut e,
            "registry_proxy_scans_in_progress",
            "Vulnerability scans running now.",
            self.scans.in_progress() as u64,
        )?;

        let mut peers = e.encode_descriptor(
            "registry_proxy_peer_fetches",
            "Blob fetches that found another instance fetching the same digest (shared object store), by how they ended.",
            None,
            MetricType::Counter,
        )?;
        for (outcome, v) in [
            (PeerFetch::Published, &c.peer_published),
            (PeerFetch::TakenOver, &c.peer_taken_over),
            (PeerFetch::WaitedTooLong, &c.peer_waited_too_long),
            (PeerFetch::Streamed, &c.peer_streamed),
        ] {
            ConstCounter::new(Counters::get(v))
                .encode(peers.encode_family(&[("outcome", outcome.as_str())])?)?;
        }
        gauge(
            &mut e,
            "registry_proxy_fetches_in_flight",
            "Upstream blob fetches running now.",
            self.inflight.load(Ordering::Relaxed) as u64,
        )?;

        // A registry's clients share its cap: one series per registry.
        let mut caps: Vec<(String, std::sync::Arc<cache_upstream::Bandwidth>)> = Vec::new();
        for (registry, _, client) in lock(&self.clients).iter() {
            if let Some(cap) = client.bandwidth()
                && !caps.iter().any(|(r, _)| r == registry)
            {
                caps.push((registry.clone(), cap.clone()));
            }
        }
        let mut limit = e.encode_descriptor(
            "registry_proxy_upstream_bandwidth_limit_bytes",
            "A registry's bandwidth cap (max_bandwidth), in bytes a second.",
            None,
            MetricType::Gauge,
        )?;
        for (registry, cap) in &caps {
            ConstGauge::new(cap.rate() as i64)
                .encode(limit.encode_family(&[("registry", registry.as_str())])?)?;
        }
        let mut waited = e.encode_descriptor(
            "registry_proxy_upstream_bandwidth_wait_seconds",
            "Time blob transfers from a registry waited for its bandwidth cap.",
            None,
            MetricType::Counter,
        )?;
        for (registry, cap) in &caps {
            ConstCounter::new(cap.waited().as_secs_f64())
                .encode(waited.encode_family(&[("registry", registry.as_str())])?)?;
        }
        let (usage, quota) = *lock(&self.store);
        for (name, help, v) in [
            (
                "registry_proxy_store_bytes",
                "Bytes of blobs in the store, as last measured (at start and every storage.gc_interval).",
                usage.map(|u| u.bytes),
            ),
            (
                "registry_proxy_store_blobs",
                "Blobs in the store, as last measured.",
                usage.map(|u| u.blobs),
            ),
            (
                "registry_proxy_store_quota_bytes",
                "The store's quota (storage.quota), when one is set.",
                quota,
            ),
        ] {
            let g = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            if let Some(v) = v {
                ConstGauge::new(v).encode(g)?;
            }
        }

        let hooks = lock(&self.webhooks)
            .as_ref()
            .map(|w| w.stats())
            .unwrap_or_default();
        let mut notices = e.encode_descriptor(
            "registry_proxy_webhook_notices",
            "Webhook notices by webhook and outcome (delivered, failed after retries or on a final answer, dropped because the queue was full).",
            None,
            MetricType::Counter,
        )?;
        for h in &hooks {
            for (outcome, v) in [
                ("delivered", h.delivered),
                ("failed", h.failed),
                ("dropped", h.dropped),
            ] {
                let labels = [("webhook", h.name.as_str()), ("outcome", outcome)];
                ConstCounter::new(v).encode(notices.encode_family(&labels)?)?;
            }
        }
        let mut retries = e.encode_descriptor(
            "registry_proxy_webhook_retries",
            "Webhook delivery attempts after a first one.",
            None,
            MetricType::Counter,
        )?;
        for h in &hooks {
            ConstCounter::new(h.retries)
                .encode(retries.encode_family(&[("webhook", h.name.as_str())])?)?;
        }
        let mut queued = e.encode_descriptor(
            "registry_proxy_webhook_queued",
            "Webhook notices waiting to be delivered.",
            None,
            MetricType::Gauge,
        )?;
        for h in &hooks {
            ConstGauge::new(h.queued)
                .encode(queued.encode_family(&[("webhook", h.name.as_str())])?)?;
        }

        let budgets: Vec<(String, String, cache_upstream::RateLimit)> = lock(&self.clients)
            .iter()
            .filter_map(|(r, c, client)| client.rate_limit().map(|l| (r.clone(), c.clone(), l)))
            .collect();
        let reserves: Vec<(String, String, u64)> = lock(&self.clients)
            .iter()
            .filter_map(|(r, c, client)| {
                client
                    .rate_limit_reserve()
                    .map(|n| (r.clone(), c.clone(), n))
            })
            .collect();
        let mut g = e.encode_descriptor(
            "registry_proxy_upstream_ratelimit_reserve",
            "Pulls of the upstream's window kept in reserve (a registry's reserve): at this, cold misses get 429.",
            None,
            MetricType::Gauge,
        )?;
        for (registry, creds, n) in &reserves {
            let labels = [
                ("registry", registry.as_str()),
                ("credentials", creds.as_str()),
            ];
            ConstGauge::new(*n).encode(g.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "registry_proxy_upstream_ratelimit_remaining",
                "Pulls left in the upstream's window, as it last said (ratelimit-remaining).",
                (|l: &cache_upstream::RateLimit| l.remaining)
                    as fn(&cache_upstream::RateLimit) -> u64,
            ),
            (
                "registry_proxy_upstream_ratelimit_limit",
                "Pulls allowed per window (ratelimit-limit).",
                |l: &cache_upstream::RateLimit| l.limit,
            ),
        ] {
            let mut g = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (registry, creds, l) in &budgets {
                let labels = [
                    ("registry", registry.as_str()),
                    ("credentials", creds.as_str()),
                ];
                ConstGauge::new(value(l)).encode(g.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cache_core::events::{AdmissionOutcome, Event, EventSink};
    use cache_core::{Reference, Registry, RepoName, Upstream};
    use cache_upstream::testing::HostileRegistry;
    use cache_upstream::{ClientOptions, RegistryClient};

    use super::Metrics;

    static REPO: std::sync::LazyLock<RepoName> =
        std::sync::LazyLock::new(|| RepoName::parse("library/x").unwrap());
    static REFERENCE: std::sync::LazyLock<Reference> =
        std::sync::LazyLock::new(|| Reference::parse("v1").unwrap());
    static DIGEST: std::sync::LazyLock<cache_core::Digest> =
        std::sync::LazyLock::new(|| cache_core::Digest::sha256_of(b"{}"));

    /// An admission decision of `rule`.
    fn admission(rule: &str, outcome: AdmissionOutcome) -> Event<'_> {
        Event::Admission {
            rule,
            outcome,
            repository: &REPO,
            reference: &REFERENCE,
            digest: &DIGEST,
            policy: "signatures",
            reason: "a test",
            detail: None,
            fresh: true,
        }
    }

    /// A label value with every character the text format must escape.
    const AWKWARD: &str = "we\"ird\\name\nnext";
    /// It escaped: `\"`, `\\` and `\n`.
    const ESCAPED: &str = r#"we\"ird\\name\nnext""#;

    /// Every line is `# HELP`, `# TYPE` or a sample
    /// `name{label="value",...} number` whose label values hold no raw
    /// quote, backslash or newline except as the format's escapes.
    fn assert_well_formed(text: &str) {
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line == "# EOF" {
                continue;
            }
            let name_end = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or_else(|| panic!("no value: {line:?}"));
            assert!(name_end > 0, "no metric name: {line:?}");
            let mut rest = &line[name_end..];
            if let Some(mut labels) = rest.strip_prefix('{') {
                loop {
                    if let Some(r) = labels.strip_prefix('}') {
                        rest = r;
                        break;
                    }
                    labels = labels.strip_prefix(',').unwrap_or(labels);
                    let key_end = labels
                        .find("=\"")
                        .unwrap_or_else(|| panic!("no label value: {line:?}"));
                    assert!(
                        labels[..key_end]
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "bad label name: {line:?}"
                    );
                    let value = &labels[key_end + 2..];
                    let mut chars = value.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((i, '"')) => break i,
                            Some((_, '\\')) => assert!(
                                matches!(chars.next(), Some((_, '\\' | '"' | 'n'))),
                                "bad escape: {line:?}"
                            ),
                            Some(_) => {}
                            None => panic!("unterminated label value: {line:?}"),
                        }
                    };
                    labels = &value[end + 1..];
                }
            }
            let value = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("no space before the value: {line:?}"));
            assert!(value.parse::<f64>().is_ok(), "bad value: {line:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn label_values_from_configuration_are_escaped() {
        let up = HostileRegistry::start("127.0.0.1");
        up.push_image("library/x", "v1", &[bytes::Bytes::from_static(b"layer")]);
        up.set_rate_limit(100, 7, 3600);
        let client = RegistryClient::with_endpoints(
            Registry::parse(&up.host()).unwrap(),
            &[&up.url()],
            None,
            ClientOptions::default(),
        )
        .unwrap();
        client
            .manifest(
                &RepoName::parse("library/x").unwrap(),
                &Reference::parse("v1").unwrap(),
                &[cache_core::media_types::OCI_MANIFEST],
            )
            .await
            .unwrap();
        assert!(client.rate_limit().is_some(), "the budget was seen");
        let m = Metrics::default();
        m.set_clients(vec![(
            AWKWARD.to_owned(),
            AWKWARD.to_owned(),
            Arc::new(client),
        )]);
        m.event(&admission(AWKWARD, AdmissionOutcome::Allowed));
        let text = m.render(0);
        assert_well_formed(&text);
        for label in ["registry", "credentials", "rule"] {
            assert!(
                text.contains(&format!("{label}=\"{ESCAPED}")),
                "{label} escaped in:\n{text}"
            );
        }
    }

    #[test]
    fn admissions_name_at_most_the_rule_cap_and_count_the_rest_as_other() {
        let m = Metrics::default();
        for i in 0..super::MAX_RULE_LABELS + 100 {
            m.event(&admission(&format!("rule-{i}"), AdmissionOutcome::Refused));
        }
        // A rule already named keeps its name.
        m.event(&admission("rule-0", AdmissionOutcome::Allowed));
        let text = m.render(0);
        let rules: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("registry_proxy_admissions_total{"))
            .filter_map(|l| l.split("rule=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(rules.len(), super::MAX_RULE_LABELS + 1, "{rules:?}");
        assert!(rules.contains("other"));
        assert!(
            text.contains(
                "registry_proxy_admissions_total{rule=\"other\",outcome=\"refused\"} 100"
            ),
            "{text}"
        );
        assert!(
            text.contains("registry_proxy_admissions_total{rule=\"rule-0\",outcome=\"allowed\"} 1")
        );
    }

    proptest::proptest! {
        /// Counted from two threads, through the handles and past them,
        /// each series shows what a plain tally of the same requests says.
        #[test]
        fn requests_count_the_same_through_the_hot_handles(
            requests in proptest::collection::vec((0usize..3, 0usize..8), 0..200)
        ) {
            use axum::http::Method;
            const STATUSES: [u16; 8] = [200, 206, 304, 404, 401, 500, 503, 416];
            let methods = [Method::GET, Method::HEAD, Method::POST];
            let m = Metrics::default();
            std::thread::scope(|s| {
                for half in requests.chunks(requests.len().div_ceil(2).max(1)) {
                    let (m, methods) = (&m, &methods);
                    s.spawn(move || {
                        for &(i, j) in half {
                            m.request(&methods[i], STATUSES[j]);
                        }
                    });
                }
            });
            let mut tally = std::collections::BTreeMap::new();
            for &(i, j) in &requests {
                let method = ["GET", "HEAD", "other"][i];
                *tally.entry((method, STATUSES[j])).or_insert(0u64) += 1;
            }
            let text = m.render(0);
            let mut shown = std::collections::BTreeMap::new();
            for line in text.lines().filter(|l| l.starts_with("registry_proxy_requests_total{")) {
                let label = |k: &str| line.split(&format!("{k}=\"")).nth(1).unwrap().split('"').next().unwrap().to_owned();
                let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
                let method = ["GET", "HEAD", "other"].into_iter().find(|x| *x == label("method")).unwrap();
                shown.insert((method, label("status").parse::<u16>().unwrap()), n);
            }
            proptest::prop_assert_eq!(shown, tally);
        }
    }

    #[test]
    fn the_checker_refuses_what_breaks_the_format() {
        for bad in [
            "a{x=\"q\"\"} 1",
            "a{x=\"q\nb\"} 1",
            "a{x=\"q\\t\"} 1",
            "a 1 2",
            "a{x=\"q\"}1",
        ] {
            let caught = std::panic::catch_unwind(|| assert_well_formed(bad));
            assert!(caught.is_err(), "{bad:?} passed");
        }
        assert_well_formed("# HELP a A.\n# TYPE a counter\na{x=\"q\\\"\\\\\\n\",y=\"\"} 3\nb 0\n");
    }
}
