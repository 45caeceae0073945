//! Prometheus metrics fed by the engine's events and the HTTP layer, in
//! the Prometheus text format (version 0.0.4) written by
//! `prometheus-client`, which also escapes label values (`\\`, `"` and
//! newline), so names from the configuration (rules, registries,
//! credential sets, scanners) cannot break the exposition.
//!
//! Every label takes values from a bounded set (methods are `GET`, `HEAD`
//! or `other`; statuses are the few this server answers with; codes and
//! call kinds are enums; rules beyond [`MAX_RULE_LABELS`] count as
//! `other`), so no client or upstream can grow the series.
//!
//! The series the HTTP layer and the engine's events count are
//! `prometheus-client` families; what is kept elsewhere (the engine's
//! atomic counters, the scan counters, the registry clients' pull budgets,
//! the fetches in flight) is read on each scrape by a [`Collector`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
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
    upstream_errors: Family<CodeLabels, Counter>,
    upstream_requests: Family<CallLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    /// Admission decisions by (rule, outcome).
    admissions: Family<AdmissionLabels, Counter>,
    /// The rules admissions are counted under by name: at most
    /// [`MAX_RULE_LABELS`].
    admission_rules: Mutex<BTreeSet<String>>,
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
            upstream_errors: Family::default(),
            upstream_requests: Family::default(),
            reloads: Family::default(),
            admissions: Family::default(),
            admission_rules: Mutex::new(BTreeSet::new()),
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
            "registry_proxy_upstream_errors",
            "Upstream errors by OCI code.",
            &m.upstream_errors,
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
            Event::Admission { rule, outcome } => {
                let rule = {
                    let mut named = lock(&self.admission_rules);
                    if named.contains(*rule) || named.len() < MAX_RULE_LABELS {
                        named.insert((*rule).to_owned());
                        (*rule).to_owned()
                    } else {
                        "other".to_owned()
                    }
                };
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
        self.requests
            .get_or_create(&RequestLabels {
                method: method_label(method),
                status,
            })
            .inc();
    }

    /// The registry clients whose pull budgets are shown (a reload replaces them).
    pub fn set_clients(&self, clients: crate::Clients) {
        *lock(&self.read.clients) = clients;
    }

    /// Counts one configuration reload, applied or refused.
    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
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

        let budgets: Vec<(String, String, cache_upstream::RateLimit)> = lock(&self.clients)
            .iter()
            .filter_map(|(r, c, client)| client.rate_limit().map(|l| (r.clone(), c.clone(), l)))
            .collect();
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
        m.event(&Event::Admission {
            rule: AWKWARD,
            outcome: AdmissionOutcome::Allowed,
        });
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
            m.event(&Event::Admission {
                rule: &format!("rule-{i}"),
                outcome: AdmissionOutcome::Refused,
            });
        }
        // A rule already named keeps its name.
        m.event(&Event::Admission {
            rule: "rule-0",
            outcome: AdmissionOutcome::Allowed,
        });
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
