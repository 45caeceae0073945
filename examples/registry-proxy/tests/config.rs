//! The server's configuration file: how its sections compose the
//! libraries' validated types, cross-references between sections, and the
//! batched parse of huge rule files. Each library type's own validation is
//! tested with the type.

mod common;

use std::path::Path;
use std::time::Duration;

use cache_store::{OptionValue, StorageConfig};
use cache_upstream::scanner::Severity;
use registry_proxy::config::{Config, DEFAULT_CONFIG};

fn parse(s: &str) -> Result<Config, String> {
    Config::parse(s, Path::new("/base")).map_err(|e| e.to_string())
}

const REGISTRY: &str = "[[registry]]\nhost = \"docker.io\"\n";

fn rule_with_credentials(name: &str) -> String {
    format!(
        "[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\ncredentials = {name:?}\n"
    )
}

#[test]
fn credential_set_names_are_metric_labels_and_must_be_plain() {
    // The name becomes the `credentials` label of the upstream gauges: a
    // quote or a newline in it would break the Prometheus exposition.
    for bad in ["hub\"x", "hub\nx", "", "a b", &"x".repeat(65)] {
        let text = format!(
            "{REGISTRY}[[credentials]]\nname = {bad:?}\nusername = \"u\"\npassword = \"p\"\n{}",
            rule_with_credentials(bad)
        );
        let e = parse(&text).expect_err(bad);
        assert!(
            e.contains("credentials[0].name") && e.contains(&format!("{bad:?}")),
            "{bad:?}: {e}"
        );
    }
    let ok = format!(
        "{REGISTRY}[[credentials]]\nname = \"hub.ro_1-x\"\nusername = \"u\"\npassword = \"p\"\n{}",
        rule_with_credentials("hub.ro_1-x")
    );
    parse(&ok).unwrap();
}

const RULE: &str =
    "[[rule]]\nname = \"r\"\nsource = \"docker.io/library/*\"\ntarget = \"library/*\"\n";

#[test]
fn the_built_in_default_is_valid() {
    let c = Config::parse(DEFAULT_CONFIG, Path::new("/base")).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
    assert_eq!(
        c.storage,
        StorageConfig::Fs {
            path: "/base/cache-data".into(),
            fsync: true
        }
    );
    assert!(c.rules.get("hub-library").is_some());
}

#[test]
fn the_example_file_is_valid_and_means_what_it_says() {
    // The example names HUB_TOKEN; point it at a file instead of mutating the environment.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hub-token"), "x\n").unwrap();
    let text = include_str!("../registry-proxy.example.toml").replace(
        "password_env = \"HUB_TOKEN\"",
        &format!(
            "password_file = \"{}\"",
            dir.path().join("hub-token").display()
        ),
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.quota, Some(50 * 1024 * 1024 * 1024));
    assert_eq!(c.registries[0].options.rate_limit_reserve, Some(10));
    assert_eq!(
        c.registries[0]
            .credentials
            .as_ref()
            .unwrap()
            .password
            .expose(),
        "x"
    );
    assert_eq!(
        c.policies["acme"].tag_freshness,
        cache_core::TagFreshness::Ttl(Duration::from_secs(600))
    );
    // The engine's keys of [upstream], [storage] and [server] all reach it.
    let o = registry_proxy::cache_options(&c);
    assert_eq!(
        (
            o.max_concurrent_fetches,
            o.max_retries,
            o.touch_interval,
            o.max_manifest_size
        ),
        (32, 3, Duration::from_secs(60), 4 * 1024 * 1024)
    );
    // The client reads bodies with the engine's stall timeout.
    assert_eq!(
        (c.client.connect_timeout, c.client.read_timeout),
        (Duration::from_secs(10), Duration::from_secs(60))
    );
}

#[test]
fn the_deployed_configuration_is_valid() {
    let text = include_str!("../../../deploy/container/config.toml");
    let c = parse(text).unwrap();
    assert_eq!(c.drain_delay, Duration::from_secs(5));
}

#[test]
fn rules_refer_to_scanners_registries_and_credentials_that_exist() {
    let head = "listen = \"0.0.0.0:5000\"\n[[registry]]\nhost = \"docker.io\"\n[[scanner]]\nname = \"trivy\"\nurl = \"http://127.0.0.1:8080\"\ntoken = \"t\"\n";
    let scan = "[rule.scan]\nscanner = \"trivy\"\n";
    let c = parse(&format!("{head}{RULE}{scan}deny_severity = \"critical\"\n")).unwrap();
    assert_eq!(c.scan_policies["r"].deny_severity, Severity::Critical);
    // The scanner pulls from the listen address; 0.0.0.0 means loopback.
    assert_eq!(registry_proxy::proxy_url(&c), "http://127.0.0.1:5000");
    assert!(
        !format!("{:?}", c.scanners).contains("\"t\""),
        "token redacted"
    );
    for (text, says) in [
        (
            format!("{head}{RULE}{}", scan.replace("trivy", "clair")),
            "rule[0] (name = \"r\"): scan.scanner = \"clair\" names no [[scanner]]",
        ),
        (
            format!("{head}{RULE}{scan}mode = \"strict\"\n"),
            "rule[0].scan.mode: unknown variant `strict`",
        ),
        (
            format!("{head}{RULE}{scan}wait = \"1h\"\n"),
            "rule[0].scan.wait = \"1h\": at most 10m",
        ),
        (
            format!("{head}{RULE}{scan}colour = \"red\"\n"),
            "rule[0].scan.colour: unknown field `colour`",
        ),
        (
            format!("{head}[[scanner]]\nname = \"trivy\"\nurl = \"http://x\"\n{RULE}"),
            "scanner[1] (name = \"trivy\"): name appears twice",
        ),
        (
            format!("{head}[[scanner]]\nname = \"a b\"\nurl = \"http://x\"\n{RULE}"),
            "scanner[1].name = \"a b\": 1 to 64",
        ),
        (
            format!("{head}{RULE}credentials = \"hub\"\n"),
            "rule[0] (name = \"r\"): credentials = \"hub\" names no [[credentials]] entry",
        ),
        (
            format!("{head}[[rule]]\nname = \"q\"\nsource = \"quay.io/*\"\ntarget = \"q/*\"\n"),
            "names registry quay.io, which has no [[registry]] entry",
        ),
        (format!("{head}{RULE}{RULE}"), "\"r\""),
        (head.to_owned(), "no [[rule]]"),
    ] {
        let e = parse(&text).unwrap_err();
        assert!(e.contains(says), "{says}: {e}");
    }
}

#[test]
fn engine_keys_are_composed_from_three_sections_and_refused_in_others() {
    let object = "[storage]\nbackend = \"object\"\nurl = \"az://c/p\"\n";
    let c = parse(&format!(
        "{object}lease_ttl = \"10s\"\nlease_wait = \"0s\"\ninstance_name = \"pod-7\"\ntouch_interval = \"5s\"\n[server]\nmax_manifest_size = \"8MiB\"\n[upstream]\nmax_retries = 5\n{REGISTRY}{RULE}"
    ))
    .unwrap();
    let o = registry_proxy::cache_options(&c);
    assert_eq!(
        (
            o.lease_ttl,
            o.lease_wait,
            o.instance_name.as_str(),
            o.touch_interval
        ),
        (
            Duration::from_secs(10),
            Duration::ZERO,
            "pod-7",
            Duration::from_secs(5)
        )
    );
    assert_eq!((o.max_manifest_size, o.max_retries), (8 << 20, 5));
    assert_eq!(c.client.max_manifest_size, 8 << 20);
    for (text, says) in [
        (
            format!("{object}lease_ttl = \"1s\"\n"),
            "storage.lease_ttl = \"1s\": at least 3s",
        ),
        (
            format!("{object}lease_wait = \"soon\"\n"),
            "storage.lease_wait = \"soon\": not a duration",
        ),
        (
            format!("{object}instance_name = \"pod 7\"\n"),
            "storage.instance_name = \"pod 7\"",
        ),
        (
            format!("{object}instance_name = \"\"\n"),
            "storage.instance_name = \"\"",
        ),
        (
            "[storage]\ntouch_interval = \"10ms\"\n".into(),
            "storage.touch_interval = \"10ms\": at least 1s",
        ),
        (
            "[storage]\nlease_ttl = \"10s\"\n".into(),
            "storage.lease_ttl is for backend = \"object\", not \"fs\"",
        ),
        (
            "[storage]\nmax_retries = 3\n".into(),
            "storage.max_retries: unknown field `max_retries`",
        ),
        (
            "[upstream]\nlease_ttl = \"10s\"\n".into(),
            "upstream: unknown field `lease_ttl`, expected one of",
        ),
        (
            "[server]\ntouch_interval = \"10s\"\n".into(),
            "server.touch_interval: unknown field `touch_interval`",
        ),
        (
            "[upstream]\nmax_retries = 11\n".into(),
            "upstream.max_retries = 11: at most 10",
        ),
        (
            "[upstream]\nmax_concurrent_fetches = 0\n".into(),
            "upstream.max_concurrent_fetches = 0: must be at least 1",
        ),
        (
            "[upstream]\nstall_timeout = \"soon\"\n".into(),
            "upstream.stall_timeout = \"soon\"",
        ),
        (
            "[upstream]\nconnect_timeout = \"0s\"\n".into(),
            "upstream.connect_timeout = \"0s\": must be more than 0",
        ),
        (
            "[upstream]\nmax_retries = \"3\"\n".into(),
            "upstream.max_retries: invalid type: string \"3\"",
        ),
        (
            "[server]\nmax_manifest_size = \"65MiB\"\n".into(),
            "server.max_manifest_size = \"65MiB\"",
        ),
        (
            "[server]\nmax_concurrent_fetches = 8\n".into(),
            "upstream.max_concurrent_fetches",
        ),
    ] {
        let e = parse(&format!("{text}{REGISTRY}{RULE}")).unwrap_err();
        assert!(e.contains(says), "{says}: {e}");
    }
}

#[test]
fn relative_paths_are_relative_to_the_file() {
    let text = "[storage]\nbackend = \"object\"\nurl = \"az://cache/proxy\"\nspool = \"spool\"\n[storage.options]\nazure_storage_account_key = { env = \"CACHE_KEY\" }\nazure_storage_token = { file = \"token\" }\n";
    let c = parse(&format!("{text}{REGISTRY}{RULE}")).unwrap();
    let StorageConfig::Object { spool, options, .. } = &c.storage else {
        panic!("{:?}", c.storage);
    };
    assert_eq!(spool, Path::new("/base/spool"));
    assert_eq!(options[1].1, OptionValue::File("/base/token".into()));
}

#[test]
fn errors_name_the_key_and_the_value() {
    let cases = [
        ("listen = \"nope\"\n", "listen = \"nope\""),
        (
            "[storage]\nbackend = \"s3\"\n",
            "storage.backend: unknown variant `s3`",
        ),
        (
            "[storage]\nquota = \"lots\"\n",
            "storage.quota = \"lots\": not a size",
        ),
        (
            "[storage]\nbackend = \"object\"\n",
            "storage.backend = \"object\" needs url",
        ),
        (
            "[storage]\nurl = \"az://c/p\"\n",
            "storage.url is for backend = \"object\", not \"fs\"",
        ),
        (
            "[storage]\ngc_interval = \"0s\"\n",
            "storage.gc_interval = \"0s\": at least 1s",
        ),
        ("[auth]\ntokens = [\"\"]\n", "auth.tokens[0] is empty"),
        (
            "[auth]\n[[auth.grant]]\nprincipals = [\"ci\"]\nrepositories = [\"ci/*\"]\nactions = [\"push\"]\n",
            "auth.grant[0].actions[0] = \"push\": a pull-through cache grants",
        ),
        (
            "[auth]\n[[auth.user]]\nname = \"alice\"\nbcrypt = \"$2y$05$abc\"\n[[auth.grant]]\nprincipals = [\"alcie\"]\nrepositories = [\"*\"]\nactions = [\"pull\"]\n",
            "auth.grant[0].principals[0] = \"alcie\": no user, token",
        ),
        (
            "[auth]\ntokens = [\"t\"]\nclock_skew = \"1h\"\n",
            "auth.clock_skew = \"1h\": at most 5m",
        ),
        (
            "[server]\nsend_timeout = \"0s\"\n",
            "server.send_timeout = \"0s\": must be more than 0",
        ),
        (
            "[server]\nmax_connections = 0\n",
            "server.max_connections = 0: must be at least 1",
        ),
        (
            "[server]\nconnection_threads = 1000\n",
            "server.connection_threads = 1000: at most 256",
        ),
        (
            "[server]\nadmin_listen = \"0.0.0.0:9000\"\n",
            "must be a loopback address",
        ),
        (
            "[log]\nformat = \"xml\"\n",
            "log.format: unknown variant `xml`",
        ),
        ("bogus = 1\n", "unknown field `bogus`"),
    ];
    for (text, needle) in cases {
        let e = parse(&format!("{text}{REGISTRY}{RULE}")).unwrap_err();
        assert!(e.contains(needle), "{e:?} should contain {needle:?}");
    }
    let registry = |extra: &str| parse(&format!("{REGISTRY}{extra}\n{RULE}")).unwrap_err();
    for (extra, needle) in [
        ("username = \"me\"", "registry[0].username needs a password"),
        (
            "endpoint = \"ftp://x\"",
            "registry[0].endpoint = \"ftp://x\" must start with http",
        ),
        (
            "redirect_hosts = [\"http://x/\"]",
            "redirect_hosts entry \"http://x/\"",
        ),
        (
            "password_env = \"PTC_SURELY_UNSET\"\nusername = \"me\"",
            "registry[0] (host = \"docker.io\"): misconfigured: environment variable PTC_SURELY_UNSET",
        ),
    ] {
        let e = registry(extra);
        assert!(e.contains(needle), "{e:?} should contain {needle:?}");
    }
    let rule = |extra: &str| parse(&format!("{REGISTRY}{RULE}{extra}\n")).unwrap_err();
    for (extra, needle) in [
        (
            "tag_freshness = \"sometimes\"",
            "rule[0].tag_freshness = \"sometimes\": use \"revalidate\"",
        ),
        (
            "stale_if_error = \"1y\"",
            "rule[0].stale_if_error = \"1y\": not a duration",
        ),
        ("bogus = 1", "rule[0].bogus: unknown field `bogus`"),
        (
            "[rule.signatures]\ncosign_keys = []",
            "rule[0].signatures.cosign_keys is empty",
        ),
    ] {
        let e = rule(extra);
        assert!(e.contains(needle), "{e:?} should contain {needle:?}");
    }
}

#[test]
fn a_large_file_parses_in_batches_to_the_same_configuration() {
    let mut text = format!("listen = \"127.0.0.1:5000\"\n{REGISTRY}");
    for i in 0..3000 {
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\nsource = \"docker.io/ns{i}/*\"\ntarget = \"ns{i}/*\" # rule {i}\n"
        ));
        if i % 3 == 0 {
            text.push_str("tag_freshness = \"ttl:10m\"\n");
        }
        if i == 1500 {
            // Other tables between rules stay with the main document.
            text.push_str("[server]\nidle_timeout = \"30s\"\n");
        }
    }
    let pad = "# padding to pass the batching threshold\n".repeat((1 << 20) / 40);
    let whole = parse(&text).unwrap();
    let batched = parse(&format!("{text}{pad}")).unwrap();
    assert_eq!(batched.rules.len(), 3000);
    assert_eq!(batched.policies, whole.policies);
    assert_eq!(batched.idle_timeout, Duration::from_secs(30));
    for r in whole.rules.rules() {
        assert_eq!(batched.rules.get(r.name()).unwrap().target(), r.target());
    }
    // A syntax error names the line in the file.
    let broken = text.replace("target = \"ns2000/*\" # rule 2000", "target = ns2000");
    let line = broken.lines().position(|l| l == "target = ns2000").unwrap() + 1;
    let e = parse(&format!("{broken}{pad}")).unwrap_err();
    assert!(e.contains(&format!("line {line}")), "{e}");
    // A bad value names the rule's index in the file, not in its batch.
    let bad = text.replace(
        "target = \"ns2500/*\" # rule 2500",
        "target = \"ns2500/*\"\nstale_if_error = \"1y\"",
    );
    let e = parse(&format!("{bad}{pad}")).unwrap_err();
    assert!(e.contains("rule[2500].stale_if_error = \"1y\""), "{e}");
    let e = parse(&bad).unwrap_err();
    assert!(e.contains("rule[2500].stale_if_error = \"1y\""), "{e}");
}

#[test]
fn the_example_s_freshness_keys_uncommented_mean_what_they_say_and_bad_ones_are_named() {
    // The example file's commented keys that keep a rule fresh and complete
    // (and a registry's bandwidth cap), uncommented, as a user would.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hub-token"), "x\n").unwrap();
    let mut text = include_str!("../registry-proxy.example.toml").replace(
        "password_env = \"HUB_TOKEN\"",
        &format!(
            "password_file = \"{}\"",
            dir.path().join("hub-token").display()
        ),
    );
    // The sync table's keys are uncommented where that table is (other
    // sections comment out keys of the same names, [[auth.grant]]'s
    // `repositories` say).
    let sync_at = text
        .find("\n# [rule.sync]")
        .expect("the example shows [rule.sync]");
    let mut tail = text.split_off(sync_at);
    for key in ["max_bandwidth", "serve_withdrawn"] {
        let commented = format!("\n# {key} ");
        assert!(
            text.contains(&commented) || tail.contains(&commented),
            "the example shows {key}"
        );
        text = text.replacen(&commented, &format!("\n{key} "), 1);
    }
    for key in [
        "[rule.sync]",
        "interval",
        "semver",
        "tags",
        "max_tags",
        "platforms",
        "repositories",
    ] {
        let commented = format!("\n# {key} ");
        assert!(tail.contains(&commented), "the example shows {key}");
        tail = tail.replacen(&commented, &format!("\n{key} "), 1);
    }
    text.push_str(&tail);
    let c = parse(&text).unwrap();
    assert_eq!(
        c.registries[0].bandwidth.as_ref().map(|b| b.rate()),
        Some(200 * 1024 * 1024)
    );
    let p = &c.policies["hub-library"];
    assert_eq!(p.negative_ttl, Duration::from_secs(30));
    assert_eq!(p.prefetch, cache_core::Prefetch::None);
    assert_eq!(p.serve_withdrawn, Some(Duration::from_secs(7 * 86_400)));
    let s = p.sync.as_ref().expect("the rule syncs");
    assert_eq!(s.interval, Duration::from_secs(600));
    assert_eq!(s.max_tags, Some(5));
    assert_eq!(s.repositories[0].as_str(), "library/nginx");
    assert!(s.admits(&cache_core::Tag::parse("1.27.3").unwrap()));
    assert!(!s.admits(&cache_core::Tag::parse("2.0.0").unwrap()));

    // Bad values, in the server's file, are named with their place in it.
    let bad = |extra: &str| parse(&format!("{REGISTRY}{RULE}{extra}\n")).unwrap_err();
    for (extra, says) in [
        (
            "negative_ttl = \"soon\"",
            "rule[0].negative_ttl = \"soon\": not a duration",
        ),
        (
            "prefetch = \"all\"",
            "rule[0].prefetch: unknown variant `all`",
        ),
        (
            "[rule.sync]\ninterval = \"1m\"\nsemver = \"~>1\"",
            "rule[0].sync.semver = \"~>1\": not a version range",
        ),
        ("[rule.sync]\nsemver = \">=1\"", "rule[0].sync"),
    ] {
        let e = bad(extra);
        assert!(e.contains(says), "{extra}: {e}");
    }
    let e = parse(&format!(
        "[[registry]]\nhost = \"docker.io\"\nmax_bandwidth = \"fast\"\n{RULE}"
    ))
    .unwrap_err();
    assert!(
        e.contains("registry[0]") && e.contains("max_bandwidth = \"fast\": not a rate"),
        "{e}"
    );
}

#[test]
fn peer_streaming_keys_are_for_an_object_store_and_validate_themselves() {
    let object = "[storage]\nbackend = \"object\"\nurl = \"az://c/p\"\n";
    let peer = "peer_listen = \"127.0.0.1:5001\"\npeer_advertise = \"proxy-0.proxy:5001\"\npeer_secret = \"a-secret-of-some-length\"\n";
    let c = parse(&format!(
        "{object}{peer}peer_timeout = \"2s\"\n{REGISTRY}{RULE}"
    ))
    .unwrap();
    let p = c.peer.as_ref().expect("peer streaming configured");
    assert_eq!(p.listen.to_string(), "127.0.0.1:5001");
    assert_eq!(p.advertise, "proxy-0.proxy:5001");
    assert_eq!(p.timeout, Duration::from_secs(2));
    assert!(
        !format!("{c:?}").contains("a-secret-of-some-length"),
        "the secret prints"
    );
    assert!(
        parse(&format!("{object}{REGISTRY}{RULE}"))
            .unwrap()
            .peer
            .is_none()
    );
    for (text, says) in [
        (
            format!("[storage]\n{peer}"),
            "storage.peer_listen is for backend = \"object\"",
        ),
        (
            format!("{object}peer_listen = \"127.0.0.1:5001\"\n"),
            "missing peer_advertise, peer_secret",
        ),
        (
            format!("{object}{}", peer.replace("127.0.0.1:5001", "localhost")),
            "peer_listen = \"localhost\": not an IP:PORT address",
        ),
        (
            format!(
                "{object}{}",
                peer.replace("a-secret-of-some-length", "short")
            ),
            "peer_secret = <redacted>: at least 16 characters",
        ),
        (
            format!("{object}{peer}peer_max_connections = 0\n"),
            "peer_max_connections = 0: at least 1",
        ),
    ] {
        let e = parse(&format!("{text}{REGISTRY}{RULE}")).unwrap_err();
        assert!(e.contains(says), "{text}: {e}");
        assert!(!e.contains("short\""), "the secret in an error: {e}");
    }
}

/// Peer TLS files are found relative to the configuration's directory
/// and read when it loads: one that is missing, or a key that is not the
/// certificate's, is an error naming the file.
#[test]
fn peer_tls_files_load_with_the_configuration_and_errors_name_them() {
    let ca = common::TestCa::new("peer CA");
    let dir = ca.dir.path();
    ca.write_to(dir, "ca.pem");
    ca.issue_peer_files(dir, "peer", &["registry-proxy-peer"]);
    ca.issue_peer_files(dir, "other", &["registry-proxy-peer"]);
    let text = |cert: &str, key: &str| {
        format!(
            "[storage]\nbackend = \"object\"\nurl = \"az://c/p\"\npeer_listen = \"127.0.0.1:5001\"\npeer_advertise = \"p:5001\"\npeer_secret = \"a-secret-of-some-length\"\npeer_certificate = \"{cert}\"\npeer_key = \"{key}\"\npeer_ca = \"ca.pem\"\n{REGISTRY}{RULE}"
        )
    };
    let c = Config::parse(&text("peer.pem", "peer-key.pem"), dir).unwrap();
    let other = Config::parse(&text("other.pem", "other-key.pem"), dir).unwrap();
    assert_eq!(
        registry_proxy::reload::restart_only_changes(&c, &other),
        vec!["storage.peer_*"],
        "the peer listener and client are set up at start"
    );
    let tls = c.peer.unwrap().tls.unwrap();
    assert_eq!(tls.ca, dir.join("ca.pem"));
    assert_eq!(tls.server_name, "registry-proxy-peer");
    let e = Config::parse(&text("missing.pem", "peer-key.pem"), dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pem"), "{e}");
    let e = Config::parse(&text("peer.pem", "other-key.pem"), dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("peer.pem") && e.contains("other-key.pem"), "{e}");
}

#[test]
fn connection_threads_default_to_one_per_core_and_change_only_on_a_restart() {
    let default = parse(&format!("{REGISTRY}{RULE}")).unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(default.connection_threads, cores.min(256), "one per core");
    let shared = parse(&format!(
        "[server]\nconnection_threads = 0\n{REGISTRY}{RULE}"
    ))
    .unwrap();
    assert_eq!(shared.connection_threads, 0, "0: the shared runtime");
    assert_eq!(
        registry_proxy::reload::restart_only_changes(&shared, &default),
        vec!["[server]"]
    );
    assert!(registry_proxy::reload::restart_only_changes(&default, &default).is_empty());
}
