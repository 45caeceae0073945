//! The server's configuration file: how its sections compose the
//! libraries' validated types, cross-references between sections, and the
//! batched parse of huge rule files. Each library type's own validation is
//! tested with the type.

use std::path::Path;

use registry_proxy::config::Config;

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
