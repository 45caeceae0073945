//! What operators install next to the server, checked: the Prometheus
//! alerting rules (`deploy/prometheus/alerts.yml`) pass `promtool check
//! rules` and their unit tests (`promtool test rules`, Debian's
//! `prometheus` package); the Grafana dashboard
//! (`deploy/grafana/registry-proxy.json`) is well formed, each of its
//! queries parses as PromQL (`promtool check rules` on them), and every
//! metric its queries and the alerts name is one a running server's
//! `/metrics` exports after some traffic.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cache_upstream::testing::{TestRegistry, require, write_image};
use common::{Proxy, http};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let bin = require("promtool", "prometheus").unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The metric names a PromQL expression reads: its identifiers that are
/// not functions, aggregations, keywords, the labels of `by (...)`,
/// `on (...)` and the like, label matchers, strings, ranges or numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 5] = ["and", "or", "unless", "bool", "offset"];
    // Aggregations may be followed by `by (...)` rather than `(`.
    const AGGREGATIONS: [&str; 12] = [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: &mut usize, close: char| {
        let mut quote = None;
        while *i < chars.len() {
            let c = chars[*i];
            *i += 1;
            match (quote, c) {
                (Some(_), '\\') => *i += 1,
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'' | '`') => quote = Some(c),
                (None, c) if c == close => return,
                _ => {}
            }
        }
        panic!("unclosed {close:?} in {expr}");
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => {
                i += 1;
                skip_to(&mut i, '}');
            }
            '[' => {
                i += 1;
                skip_to(&mut i, ']');
            }
            '"' | '\'' | '`' => {
                i += 1;
                skip_to(&mut i, c);
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || ".".contains(chars[i]))
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let called = chars.get(j) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if called {
                        i = j + 1;
                        skip_to(&mut i, ')');
                    }
                } else if !called
                    && !KEYWORDS.contains(&word.as_str())
                    && !AGGREGATIONS.contains(&word.as_str())
                {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_query_reader_finds_metrics_and_nothing_else() {
    let names = metric_names(
        r#"sum by (instance, code) (rate(a_total{code!~"X|Y", i=~"$instance"}[$__rate_interval])) / on (instance) group_left(job) b > 0.05 * 1e-3 and c unless ignoring(x) d offset 5m"#,
    );
    let want: BTreeSet<String> = ["a_total", "b", "c", "d"].map(String::from).into();
    assert_eq!(names, want);
    assert!(metric_names("topk(10, sum(x))").contains("x"));
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy().join("prometheus");
    let checked = promtool(&["check", "rules", "alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every `expr` of the dashboard's panels, and the template variables' queries.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("grafana/registry-proxy.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "registry-proxy");
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("a panel id")),
            "ids are unique"
        );
        let g = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(g[k].is_u64(), "gridPos.{k} of {}", p["title"]);
        }
        assert!(g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("a title").to_owned();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has a query");
        for t in targets {
            let expr = t["expr"].as_str().expect("an expr");
            assert!(!expr.trim().is_empty(), "{title}");
            out.push((title.clone(), expr.to_owned()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(metric, label): the metric.
            let metric = q
                .strip_prefix("label_values(")
                .and_then(|r| r.split(',').next())
                .expect("label_values(metric, label)");
            out.push((format!("variable {}", v["name"]), metric.trim().to_owned()));
        }
    }
    out
}

/// The expressions of the alerting rules.
fn alert_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in docs[0]["groups"].as_vec().unwrap() {
        for r in g["rules"].as_vec().unwrap() {
            out.push((
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

#[test]
fn every_dashboard_query_parses_as_promql() {
    // As recording rules, with Grafana's variables as Prometheus sees them.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        let quoted = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    let checked = promtool(&["check", "rules", "dashboard.yml"], dir.path());
    assert!(checked.contains("SUCCESS"), "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_read_is_exported() {
    let up = TestRegistry::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "v1", 1, &[10_000]);
    up.push(&img.layout, "v1", "library/app").unwrap();
    // Traffic that makes every family show: a pull, an unknown tag (an
    // upstream error), and a decision of a rule's vulnerability gate.
    let scanner = cache_upstream::testing::TestScanner::start();
    let extra = format!(
        "[[rule]]\nname = \"scanned\"\nsource = \"{h}/scanned/*\"\ntarget = \"scanned/*\"\n[rule.scan]\nscanner = \"t\"\n\n[[scanner]]\nname = \"t\"\nurl = \"{s}\"\n",
        h = up.host(),
        s = scanner.url()
    );
    up.push(&img.layout, "v1", "scanned/app").unwrap();
    let proxy = Proxy::start(&common::config(&up, &extra));
    let client = http();
    for path in [
        "/v2/library/app/manifests/v1",
        "/v2/library/app/manifests/no-such-tag",
        "/v2/scanned/app/manifests/v1",
    ] {
        client
            .get(proxy.url(path))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
    }
    let text = proxy.metrics().await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| match l.strip_prefix("# HELP ") {
            Some(rest) => rest.split(' ').next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .map(str::to_owned)
        .collect();
    assert!(exported.len() > 20, "{text}");
    let mut missing = Vec::new();
    let mut read = BTreeSet::new();
    for (what, expr) in dashboard_queries()
        .into_iter()
        .map(|(t, e)| (format!("dashboard panel {t:?}"), e))
        .chain(
            alert_queries()
                .into_iter()
                .map(|(a, e)| (format!("alert {a}"), e)),
        )
    {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{what} reads no metric: {expr}");
        for n in names {
            // `up` is Prometheus's own, per scraped target.
            if n != "up" && !exported.contains(&n) {
                missing.push(format!("{what}: {n}"));
            }
            read.insert(n);
        }
    }
    assert!(missing.is_empty(), "not in /metrics: {missing:#?}\n{text}");
    // The dashboard covers what operators look at first.
    for m in [
        "registry_proxy_cache_hits_total",
        "registry_proxy_upstream_ratelimit_remaining",
        "registry_proxy_store_bytes",
        "registry_proxy_store_quota_bytes",
        "registry_proxy_admissions_total",
        "registry_proxy_fetch_queue_full_total",
        "registry_proxy_webhook_notices_total",
    ] {
        assert!(read.contains(m), "{m} is read by no panel or alert");
    }
}
