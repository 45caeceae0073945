//! The Kubernetes manifests under `deploy/kubernetes/` and the image's
//! default configuration: every manifest parses as YAML with the fields
//! its kind needs, Deployments are wired to what they mount and probe,
//! and every configuration they carry passes `registry-proxy check`, with
//! the files of the certificates cert-manager issues where they are
//! mounted.

mod common;

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn manifests() -> Vec<(PathBuf, Yaml)> {
    let mut files = Vec::new();
    let mut dirs = vec![deploy().join("kubernetes")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let parsed =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!parsed.is_empty(), "{}: no document", f.display());
        for d in parsed {
            docs.push((f.clone(), d));
        }
    }
    docs
}

fn s<'a>(y: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    let mut cur = y;
    for k in path {
        cur = &cur[*k];
    }
    cur.as_str()
}

/// `registry-proxy check` on a configuration: whether it passed, and what it said.
fn check(config: &str) -> (bool, String) {
    check_with(config, &[])
}

/// [`check`] with these environment variables set, as a pod would have them.
fn check_with(config: &str, env: &[(String, String)]) -> (bool, String) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("proxy.toml"), config).unwrap();
    common::run_with_env(d.path(), &["check"], env)
}

/// The environment the Deployments in `dir` give their container, with
/// stand-ins for what Kubernetes fills in: a pod IP for `status.podIP`, a
/// 32-character value for each Secret key.
fn pod_env(docs: &[(PathBuf, Yaml)], dir: &Path) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (f, d) in docs {
        if f.parent() != Some(dir) || s(d, &["kind"]) != Some("Deployment") {
            continue;
        }
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_vec()
            .into_iter()
            .flatten()
        {
            for e in c["env"].as_vec().into_iter().flatten() {
                let name = s(e, &["name"]).unwrap_or_else(|| panic!("{}: env name", f.display()));
                let value = if let Some(v) = s(e, &["value"]) {
                    v.to_owned()
                } else if s(e, &["valueFrom", "fieldRef", "fieldPath"]) == Some("status.podIP") {
                    "10.1.2.3".to_owned()
                } else if s(e, &["valueFrom", "secretKeyRef", "name"]).is_some() {
                    "stand-in-secret-0123456789abcdef".to_owned()
                } else {
                    panic!("{}: env {name}: no value this test knows", f.display())
                };
                env.push((name.to_owned(), value));
            }
        }
    }
    env
}

/// For each cert-manager `Certificate` in `dir` whose Secret a Deployment
/// there mounts: the mount path, and a directory holding what the Secret
/// will (`tls.crt` and `tls.key` issued for the Certificate's `dnsNames`,
/// `ca.crt`). A Certificate for the peers must be for both ends of a
/// connection (`server auth` and `client auth`) and name the default
/// `peer_server_name`.
fn certificate_secrets(docs: &[(PathBuf, Yaml)], dir: &Path) -> Vec<(String, tempfile::TempDir)> {
    let here = |f: &PathBuf| f.parent() == Some(dir);
    let mut out = Vec::new();
    for (f, d) in docs
        .iter()
        .filter(|(f, d)| here(f) && s(d, &["kind"]) == Some("Certificate"))
    {
        let (Some(secret), false) = (
            s(d, &["spec", "secretName"]),
            d["spec"]["isCA"].as_bool() == Some(true),
        ) else {
            continue;
        };
        let list = |k: &str| -> Vec<&str> {
            d["spec"][k]
                .as_vec()
                .into_iter()
                .flatten()
                .filter_map(Yaml::as_str)
                .collect()
        };
        let (names, usages) = (list("dnsNames"), list("usages"));
        let mut mounts = Vec::new();
        for (_, d) in docs
            .iter()
            .filter(|(g, d)| here(g) && s(d, &["kind"]) == Some("Deployment"))
        {
            let pod = &d["spec"]["template"]["spec"];
            let volumes = pod["volumes"].as_vec().into_iter().flatten();
            let Some(volume) = volumes
                .filter(|v| s(v, &["secret", "secretName"]) == Some(secret))
                .find_map(|v| s(v, &["name"]))
            else {
                continue;
            };
            for c in pod["containers"].as_vec().into_iter().flatten() {
                for m in c["volumeMounts"].as_vec().into_iter().flatten() {
                    if s(m, &["name"]) == Some(volume) {
                        mounts.push(s(m, &["mountPath"]).unwrap().to_owned());
                    }
                }
            }
        }
        if mounts.is_empty() {
            continue;
        }
        if secret.contains("peer") {
            assert!(
                usages.contains(&"server auth") && usages.contains(&"client auth"),
                "{}: the peers' certificate is for both ends: {usages:?}",
                f.display()
            );
            assert!(
                names.contains(&cache_core::peer::PeerTls::DEFAULT_SERVER_NAME),
                "{}: the peers' certificate names {}: {names:?}",
                f.display(),
                cache_core::peer::PeerTls::DEFAULT_SERVER_NAME
            );
        }
        let ca = common::TestCa::new("stand-in CA");
        for mount in mounts {
            let files = tempfile::tempdir().unwrap();
            let (cert, key) = ca.issue_peer_files(files.path(), "issued", &names);
            std::fs::rename(cert, files.path().join("tls.crt")).unwrap();
            std::fs::rename(key, files.path().join("tls.key")).unwrap();
            ca.write_to(files.path(), "ca.crt");
            out.push((mount, files));
        }
    }
    out
}

#[test]
fn every_manifest_parses_with_the_fields_its_kind_needs() {
    let docs = manifests();
    let kinds: Vec<&str> = docs.iter().filter_map(|(_, d)| s(d, &["kind"])).collect();
    for want in [
        "Deployment",
        "Service",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Kustomization",
    ] {
        assert!(kinds.contains(&want), "no {want} among {kinds:?}");
    }
    for (f, d) in &docs {
        let f = f.display();
        assert!(s(d, &["apiVersion"]).is_some(), "{f}: apiVersion");
        let kind = s(d, &["kind"]).unwrap_or_else(|| panic!("{f}: kind"));
        if kind == "Kustomization" {
            for r in d["resources"]
                .as_vec()
                .unwrap_or_else(|| panic!("{f}: resources"))
            {
                let p = Path::new(&f.to_string())
                    .parent()
                    .unwrap()
                    .join(r.as_str().unwrap());
                assert!(p.is_file(), "{f}: resource {} missing", p.display());
            }
            continue;
        }
        assert!(s(d, &["metadata", "name"]).is_some(), "{f}: metadata.name");
        match kind {
            "Deployment" => deployment(&f.to_string(), d),
            "Service" => {
                assert!(!d["spec"]["selector"].is_badvalue(), "{f}: selector");
                assert!(
                    d["spec"]["ports"].as_vec().is_some_and(|p| !p.is_empty()),
                    "{f}: ports"
                );
            }
            "PersistentVolumeClaim" => {
                assert!(
                    s(d, &["spec", "resources", "requests", "storage"]).is_some(),
                    "{f}"
                )
            }
            "ConfigMap" => {
                let text = s(d, &["data", "config.toml"])
                    .unwrap_or_else(|| panic!("{f}: data.config.toml"));
                let dir = Path::new(&f.to_string()).parent().unwrap().to_owned();
                let env = pod_env(&docs, &dir);
                // The files of the certificates' Secrets, where the
                // Deployment mounts them: stand-ins in a directory here.
                let secrets = certificate_secrets(&docs, &dir);
                let mut config = text.to_owned();
                for (mount, files) in &secrets {
                    config = config.replace(
                        &format!("\"{mount}/"),
                        &format!("\"{}/", files.path().display()),
                    );
                }
                let config = config.as_str();
                let (ok, out) = check_with(config, &env);
                assert!(ok, "{f}: the configuration does not pass check:\n{out}");
                // Every variable the configuration reads, its Deployment sets.
                for read in config.split("env = \"").skip(1) {
                    let name = read.split('"').next().unwrap();
                    assert!(
                        env.iter().any(|(k, _)| k == name),
                        "{f}: the configuration reads {name}, which no Deployment beside it sets"
                    );
                }
                if config.contains("peer_advertise = { env = \"POD_IP\"") {
                    let without: Vec<_> =
                        env.iter().filter(|(k, _)| k != "POD_IP").cloned().collect();
                    let (ok, out) = check_with(config, &without);
                    assert!(
                        !ok && out.contains("POD_IP"),
                        "{f}: without POD_IP the check should fail naming it:\n{out}"
                    );
                }
            }
            _ => {}
        }
    }
}

fn deployment(f: &str, d: &Yaml) {
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    let selector = d["spec"]["selector"]["matchLabels"]
        .as_hash()
        .unwrap_or_else(|| panic!("{f}: selector.matchLabels"));
    for (k, v) in selector {
        assert_eq!(
            &labels[k.as_str().unwrap()],
            v,
            "{f}: the selector matches the pod labels"
        );
    }
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true),
        "{f}: non-root"
    );
    let volumes: Vec<&str> = pod["volumes"]
        .as_vec()
        .unwrap_or_else(|| panic!("{f}: volumes"))
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let containers = pod["containers"]
        .as_vec()
        .unwrap_or_else(|| panic!("{f}: containers"));
    assert_eq!(containers.len(), 1, "{f}");
    let c = &containers[0];
    assert!(
        s(c, &["image"]).is_some_and(|i| i.contains("registry-proxy")),
        "{f}: image"
    );
    assert_eq!(
        c["ports"][0]["containerPort"].as_i64(),
        Some(5000),
        "{f}: port"
    );
    assert_eq!(
        s(c, &["livenessProbe", "httpGet", "path"]),
        Some("/healthz"),
        "{f}"
    );
    assert_eq!(
        s(c, &["readinessProbe", "httpGet", "path"]),
        Some("/readyz"),
        "{f}"
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{f}: read-only root filesystem"
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{f}"
    );
    for r in ["cpu", "memory"] {
        assert!(
            s(c, &["resources", "requests", r]).is_some(),
            "{f}: requests.{r}"
        );
    }
    assert!(
        s(c, &["resources", "limits", "memory"]).is_some(),
        "{f}: limits.memory"
    );
    let mounts = c["volumeMounts"]
        .as_vec()
        .unwrap_or_else(|| panic!("{f}: mounts"));
    for m in mounts {
        let name = m["name"].as_str().unwrap();
        assert!(volumes.contains(&name), "{f}: mount {name} has no volume");
    }
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"].as_str() == Some("/etc/registry-proxy")),
        "{f}: the configuration is mounted where the image reads it"
    );
}

#[test]
fn the_image_default_configuration_passes_check_and_listens_on_every_interface() {
    let config = std::fs::read_to_string(deploy().join("container/config.toml")).unwrap();
    assert!(config.contains("listen = \"0.0.0.0:5000\""));
    assert!(config.contains("path = \"/data\""));
    let (ok, out) = check(&config);
    assert!(ok, "{out}");
}
