//! Prometheus text-format metrics fed by the engine's events and the HTTP layer.
//!
//! Every label takes values from a fixed set (methods are `GET`, `HEAD` or
//! `other`; statuses are the few this server answers with; codes and call
//! kinds are enums), so no client or upstream can grow the series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use axum::http::Method;
use cache_core::events::{Counters, Event, EventSink};
use cache_core::{PeerFetch, UpstreamCall};

/// Rules named in admission metrics; decisions of further rules count
/// under `other`, so the series stay bounded with any number of rules.
const MAX_RULE_LABELS: usize = 500;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    engine: Counters,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    upstream_errors: Mutex<BTreeMap<&'static str, u64>>,
    upstream_requests: Mutex<BTreeMap<&'static str, u64>>,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
    /// Admission decisions by (rule, outcome); at most `MAX_RULE_LABELS`
    /// rules by name, the rest as `other`.
    admissions: Mutex<BTreeMap<(String, &'static str), u64>>,
    clients: Mutex<crate::Clients>,
    /// Vulnerability scans, counted by the gates.
    pub scans: std::sync::Arc<cache_upstream::scanner::ScanCounters>,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(k)
        .or_default() += 1;
}

impl EventSink for Metrics {
    fn event(&self, e: &Event<'_>) {
        self.engine.event(e);
        match e {
            Event::UpstreamError { code, .. } => bump(&self.upstream_errors, code.as_str()),
            Event::UpstreamRequest { call } => bump(&self.upstream_requests, call.as_str()),
            Event::Admission { rule, outcome } => {
                let mut m = self.admissions.lock().unwrap_or_else(|p| p.into_inner());
                let known = m.keys().any(|(r, _)| r == rule);
                let rules = m
                    .keys()
                    .map(|(r, _)| r)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
                let label = if known || rules < MAX_RULE_LABELS {
                    (*rule).to_owned()
                } else {
                    "other".to_owned()
                };
                *m.entry((label, outcome.as_str())).or_default() += 1;
            }
            _ => {}
        }
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
    /// Counts one HTTP response.
    pub fn request(&self, method: &Method, status: u16) {
        bump(&self.requests, (method_label(method), status));
    }

    /// The registry clients whose pull budgets are shown (a reload replaces them).
    pub fn set_clients(&self, clients: crate::Clients) {
        *self.clients.lock().unwrap_or_else(|p| p.into_inner()) = clients;
    }

    /// Counts one configuration reload, applied or refused.
    pub fn reload(&self, applied: bool) {
        bump(&self.reloads, if applied { "applied" } else { "refused" });
    }

    /// The engine's counters.
    pub fn engine(&self) -> &Counters {
        &self.engine
    }

    /// Renders every metric; `inflight` is the engine's current fetch count.
    pub fn render(&self, inflight: usize) -> String {
        let mut out = String::new();
        let c = &self.engine;
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        out.push_str("# HELP registry_proxy_requests_total HTTP responses by method and status.\n# TYPE registry_proxy_requests_total counter\n");
        for ((m, s), v) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "registry_proxy_requests_total{{method=\"{m}\",status=\"{s}\"}} {v}"
            );
        }
        counter(
            &mut out,
            "registry_proxy_cache_hits_total",
            "Manifests and blobs served from the cache.",
            Counters::get(&c.hits),
        );
        counter(
            &mut out,
            "registry_proxy_cache_misses_total",
            "Manifests and blobs fetched from an upstream.",
            Counters::get(&c.misses),
        );
        counter(
            &mut out,
            "registry_proxy_revalidations_total",
            "Tags confirmed current by the upstream.",
            Counters::get(&c.revalidations),
        );
        counter(
            &mut out,
            "registry_proxy_stale_served_total",
            "Answers served stale because the upstream failed.",
            Counters::get(&c.stale),
        );
        counter(
            &mut out,
            "registry_proxy_bytes_served_total",
            "Blob bytes delivered to clients.",
            Counters::get(&c.bytes_served),
        );
        counter(
            &mut out,
            "registry_proxy_upstream_bytes_total",
            "Bytes received from upstreams.",
            Counters::get(&c.bytes_from_upstream),
        );
        counter(
            &mut out,
            "registry_proxy_fetches_total",
            "Upstream blob fetches started.",
            Counters::get(&c.fetches_started),
        );
        counter(
            &mut out,
            "registry_proxy_fetches_failed_total",
            "Upstream blob fetches that failed.",
            Counters::get(&c.fetches_failed),
        );
        counter(
            &mut out,
            "registry_proxy_evicted_bytes_total",
            "Bytes removed by gc and scrub.",
            Counters::get(&c.evicted_bytes),
        );
        counter(
            &mut out,
            "registry_proxy_sendfile_bytes_total",
            "Blob bytes sent straight from stored files (sendfile).",
            crate::sendfile::bytes_sent(),
        );
        out.push_str("# HELP registry_proxy_admissions_total Admission decisions (signature policy, admission hooks) by rule and outcome (allowed, refused, audit_only).\n# TYPE registry_proxy_admissions_total counter\n");
        for ((rule, outcome), v) in self
            .admissions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let rule = rule.replace(['\\', '"', '\n'], "_");
            let _ = writeln!(
                out,
                "registry_proxy_admissions_total{{rule=\"{rule}\",outcome=\"{outcome}\"}} {v}"
            );
        }
        out.push_str("# HELP registry_proxy_scans_total Vulnerability scans by scanner and outcome (finished, failed).\n# TYPE registry_proxy_scans_total counter\n");
        for (scanner, finished, failed) in self.scans.by_scanner() {
            for (outcome, v) in [("finished", finished), ("failed", failed)] {
                let _ = writeln!(
                    out,
                    "registry_proxy_scans_total{{scanner=\"{scanner}\",outcome=\"{outcome}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP registry_proxy_scans_in_progress Vulnerability scans running now.\n# TYPE registry_proxy_scans_in_progress gauge\nregistry_proxy_scans_in_progress {}",
            self.scans.in_progress()
        );
        out.push_str("# HELP registry_proxy_peer_fetches_total Blob fetches that found another instance fetching the same digest (shared object store), by how they ended.\n# TYPE registry_proxy_peer_fetches_total counter\n");
        for (outcome, v) in [
            (PeerFetch::Published, &c.peer_published),
            (PeerFetch::TakenOver, &c.peer_taken_over),
            (PeerFetch::WaitedTooLong, &c.peer_waited_too_long),
        ] {
            let _ = writeln!(
                out,
                "registry_proxy_peer_fetches_total{{outcome=\"{}\"}} {}",
                outcome.as_str(),
                Counters::get(v)
            );
        }
        let _ = writeln!(
            out,
            "# HELP registry_proxy_fetches_in_flight Upstream blob fetches running now.\n# TYPE registry_proxy_fetches_in_flight gauge\nregistry_proxy_fetches_in_flight {inflight}"
        );
        out.push_str("# HELP registry_proxy_upstream_requests_total Requests made to upstreams by kind (retries and resumptions included).\n# TYPE registry_proxy_upstream_requests_total counter\n");
        {
            let m = self
                .upstream_requests
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for call in UpstreamCall::ALL {
                let v = m.get(call.as_str()).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "registry_proxy_upstream_requests_total{{call=\"{}\"}} {v}",
                    call.as_str()
                );
            }
        }
        out.push_str("# HELP registry_proxy_upstream_ratelimit_remaining Pulls left in the upstream's window, as it last said (ratelimit-remaining).\n# TYPE registry_proxy_upstream_ratelimit_remaining gauge\n");
        let budgets: Vec<(String, String, cache_upstream::RateLimit)> = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(r, c, client)| client.rate_limit().map(|l| (r.clone(), c.clone(), l)))
            .collect();
        for (registry, creds, l) in &budgets {
            let _ = writeln!(
                out,
                "registry_proxy_upstream_ratelimit_remaining{{registry=\"{registry}\",credentials=\"{creds}\"}} {}",
                l.remaining
            );
        }
        out.push_str("# HELP registry_proxy_upstream_ratelimit_limit Pulls allowed per window (ratelimit-limit).\n# TYPE registry_proxy_upstream_ratelimit_limit gauge\n");
        for (registry, creds, l) in &budgets {
            let _ = writeln!(
                out,
                "registry_proxy_upstream_ratelimit_limit{{registry=\"{registry}\",credentials=\"{creds}\"}} {}",
                l.limit
            );
        }
        out.push_str("# HELP registry_proxy_config_reloads_total Configuration reloads, applied or refused (invalid).\n# TYPE registry_proxy_config_reloads_total counter\n");
        {
            let m = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
            for result in ["applied", "refused"] {
                let v = m.get(result).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "registry_proxy_config_reloads_total{{result=\"{result}\"}} {v}"
                );
            }
        }
        out.push_str("# HELP registry_proxy_upstream_errors_total Upstream errors by OCI code.\n# TYPE registry_proxy_upstream_errors_total counter\n");
        for (code, v) in self
            .upstream_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "registry_proxy_upstream_errors_total{{code=\"{code}\"}} {v}"
            );
        }
        out
    }
}
