//! `/metrics` through the running server: fixed traffic (pulls that are
//! scanned, one denied, blob hits and misses, unknown names, a method the
//! server refuses, two credential sets on an upstream that sends pull-budget
//! headers, a reload) gives an exposition whose series (name, labels, type),
//! help texts and values (each run the same) match `tests/metrics.golden`,
//! captured from the hand-written exposition before it moved to
//! `prometheus-client`. `UPDATE_GOLDEN=1` rewrites the file.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use cache_upstream::testing::{HostileRegistry, TestRegistry, TestScanner, free_port};
use common::{Proxy, http};

/// One parsed exposition: per series (`name{sorted labels}`) its type and
/// value, and per family its help text.
#[derive(Debug, Default, PartialEq)]
struct Exposition {
    series: BTreeMap<String, (String, String)>,
    help: BTreeMap<String, String>,
}

/// Reads a label set `{k="v",...}` (with the text format's escapes) from
/// the start of `s`: the pairs and the rest of the line.
fn labels(s: &str) -> (Vec<(String, String)>, &str) {
    let mut out = Vec::new();
    let mut rest = s.strip_prefix('{').expect("a label set");
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return (out, r);
        }
        rest = rest.strip_prefix(',').unwrap_or(rest);
        let (key, r) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("a closing quote");
            match c {
                '"' => break i,
                '\\' => match chars.next().expect("an escaped character").1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        out.push((key.to_owned(), value));
        rest = &r[end + 1..];
    }
}

/// Parses the text format; `hosts` are replaced by fixed names in label
/// values (their ports change from run to run).
fn parse(text: &str, hosts: &[(&str, &str)]) -> Exposition {
    let mut types = BTreeMap::new();
    let mut e = Exposition::default();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("# HELP name text");
            e.help.insert(name.to_owned(), help.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').expect("# TYPE name type");
            types.insert(name.to_owned(), t.to_owned());
        } else if line.starts_with('#') {
            continue;
        } else {
            let name_end = line.find(['{', ' ']).expect("a sample");
            let name = &line[..name_end];
            let (mut ls, rest) = if line[name_end..].starts_with('{') {
                labels(&line[name_end..])
            } else {
                (Vec::new(), &line[name_end..])
            };
            for (_, v) in &mut ls {
                for (host, fixed) in hosts {
                    *v = v.replace(host, fixed);
                }
            }
            ls.sort();
            let value = rest.trim().to_owned();
            let key = format!(
                "{name}{{{}}}",
                ls.iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            samples.push((name.to_owned(), key, value));
        }
    }
    for (name, key, value) in samples {
        // The family a sample belongs to: its own name, or its name less
        // a suffix the format adds (OpenMetrics names counters without `_total`).
        let family = [name.as_str(), name.trim_end_matches("_total")]
            .into_iter()
            .find(|f| types.contains_key(*f))
            .unwrap_or_else(|| panic!("{name} has no # TYPE line"));
        let prev = e.series.insert(key.clone(), (types[family].clone(), value));
        assert!(prev.is_none(), "{key} appears twice");
    }
    e
}

/// Renders a parsed exposition as stable text, for the golden file.
fn render(e: &Exposition) -> String {
    let mut out = String::new();
    for (family, help) in &e.help {
        out.push_str(&format!("# HELP {family} {help}\n"));
    }
    for (key, (t, v)) in &e.series {
        out.push_str(&format!("{key} {t} {v}\n"));
    }
    out
}

/// Reads the golden file back into an [`Exposition`].
fn read_golden(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            e.help.insert(name.to_owned(), help.to_owned());
        } else {
            let (rest, v) = line.rsplit_once(' ').unwrap();
            let (key, t) = rest.rsplit_once(' ').unwrap();
            e.series
                .insert(key.to_owned(), (t.to_owned(), v.to_owned()));
        }
    }
    e
}

/// Differences between `want` and `got`, one line each.
fn differences(want: &Exposition, got: &Exposition) -> Vec<String> {
    let mut d = Vec::new();
    for (k, (t, v)) in &want.series {
        match got.series.get(k) {
            None => d.push(format!("missing: {k} {t} {v}")),
            Some((gt, _)) if gt != t => d.push(format!("type: {k} was {t}, now {gt}")),
            Some((_, gv)) if gv != v => d.push(format!("value: {k} was {v}, now {gv}")),
            Some(_) => {}
        }
    }
    for k in got.series.keys().filter(|k| !want.series.contains_key(*k)) {
        d.push(format!("new: {k}"));
    }
    for (f, h) in &want.help {
        match got.help.get(f) {
            Some(g) if g == h => {}
            g => d.push(format!("help of {f}: was {h:?}, now {g:?}")),
        }
    }
    for f in got.help.keys().filter(|f| !want.help.contains_key(*f)) {
        d.push(format!("new family: {f}"));
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_for_fixed_traffic_matches_the_golden_file() {
    let up = TestRegistry::start().unwrap_or_else(|e| panic!("{e}"));
    let scanner = TestScanner::start();
    scanner.advise("openssl", "CVE-2099-0001", "Critical");
    let (app, _a) = common::push_labeled(&up, "lib/app", 1, "curl 8.0");
    let (_bad, _b) = common::push_labeled(&up, "lib/bad", 2, "openssl 3.0.1");
    let budget = HostileRegistry::start("127.0.0.1");
    let layer = |i: u64| Bytes::from(cache_core::testing::content(i, 1000).to_vec());
    budget.push_image("library/x", "v1", &[layer(1)]);
    budget.push_image("team/y", "v1", &[layer(2)]);
    budget.set_rate_limit(100, 50, 3600);

    let admin = free_port();
    let cfg = format!(
        "[storage]\nbackend = \"fs\"\npath = \"cache-data\"\n\
         [server]\nadmin_listen = \"127.0.0.1:{admin}\"\n\n\
         [[registry]]\nhost = \"{uh}\"\nendpoint = \"{uu}\"\n\n\
         [[registry]]\nhost = \"{bh}\"\nendpoint = \"{bu}\"\n\n\
         [[credentials]]\nname = \"team\"\nusername = \"u\"\npassword = \"p\"\n\n\
         [[scanner]]\nname = \"test\"\nurl = \"{su}\"\n\n\
         [[rule]]\nname = \"lib\"\nsource = \"{uh}/lib/*\"\ntarget = \"lib/*\"\n\
         [rule.scan]\nscanner = \"test\"\ndeny_severity = \"critical\"\n\n\
         [[rule]]\nname = \"hub\"\nsource = \"{bh}/library/*\"\ntarget = \"hub/*\"\n\n\
         [[rule]]\nname = \"team\"\nsource = \"{bh}/team/*\"\ntarget = \"team/*\"\ncredentials = \"team\"\n",
        uh = up.host(),
        uu = up.url(),
        bh = budget.host(),
        bu = budget.url(),
        su = scanner.url(),
    );
    let proxy = Proxy::start(&cfg);
    let (ok, out) = common::run(proxy.dir.path(), &["reload"]);
    assert!(ok, "{out}");

    let c = http();
    let send = |method: reqwest::Method, path: String| {
        let req = c
            .request(method, proxy.url(&path))
            .header("accept", "application/vnd.oci.image.manifest.v1+json");
        async move { req.send().await.unwrap().status().as_u16() }
    };
    use reqwest::Method;
    assert_eq!(send(Method::GET, "/v2/".into()).await, 200);
    assert_eq!(
        send(Method::GET, "/v2/lib/app/manifests/v1".into()).await,
        200
    );
    assert_eq!(
        send(Method::GET, "/v2/lib/bad/manifests/v1".into()).await,
        403
    );
    let (layer_digest, _) = &app.layers[0];
    let blob = format!("/v2/lib/app/blobs/{layer_digest}");
    assert_eq!(send(Method::GET, blob.clone()).await, 200);
    assert_eq!(send(Method::GET, blob.clone()).await, 200);
    assert_eq!(send(Method::HEAD, blob).await, 200);
    assert_eq!(send(Method::GET, "/v2/nope/manifests/v1".into()).await, 404);
    assert_eq!(
        send(Method::GET, "/v2/lib/missing/manifests/v1".into()).await,
        404
    );
    assert_eq!(
        send(Method::DELETE, "/v2/lib/app/manifests/v1".into()).await,
        405
    );
    assert_eq!(
        send(Method::GET, "/v2/hub/x/manifests/v1".into()).await,
        200
    );
    assert_eq!(
        send(Method::GET, "/v2/team/y/manifests/v1".into()).await,
        200
    );

    let text = proxy.metrics().await;
    let got = parse(
        &text,
        &[
            (up.host().as_str(), "<registry>"),
            (budget.host().as_str(), "<budget>"),
        ],
    );
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metrics.golden");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, render(&got)).unwrap();
        return;
    }
    let want = read_golden(&std::fs::read_to_string(&golden).unwrap());
    let diff = differences(&want, &got);
    assert!(
        diff.is_empty(),
        "the exposition differs from tests/metrics.golden:\n{}\n\nwhole exposition:\n{text}",
        diff.join("\n")
    );
}

#[test]
fn the_parser_reads_escaped_label_values_and_suffixed_counter_families() {
    let e = parse(
        "# HELP a_total A.\n# TYPE a counter\na_total{x=\"q\\\"\\\\\\n\",b=\"1\"} 3\n# EOF\n",
        &[],
    );
    assert_eq!(
        e.series.get("a_total{b=\"1\",x=\"q\\\"\\\\\\n\"}"),
        Some(&("counter".to_owned(), "3".to_owned())),
        "{e:?}"
    );
}
