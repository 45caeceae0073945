//! `[[rule]]` and `[[scanner]]`: what each rule refers to must exist, key
//! files are read once however many rules name them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cache_core::config::RuleConfig;
use cache_core::cosign::CosignKey;
use cache_core::{RulePolicy, RuleSet};
use cache_upstream::Credentials;
use cache_upstream::scanner::{ScanPolicy, ScannerConfig};

use super::{ConfigError, Upstream, err};

/// The scanners, each with the URL it reaches this proxy at (by default
/// the listen address, `127.0.0.1` for `0.0.0.0`).
pub(super) fn scanners(
    raw: Vec<ScannerConfig>,
    listen: SocketAddr,
    https: bool,
    base: &Path,
) -> Result<Vec<ScannerConfig>, ConfigError> {
    let mut at = listen;
    if at.ip().is_unspecified() {
        at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let default = format!("{}://{at}", if https { "https" } else { "http" });
    let mut out: Vec<ScannerConfig> = Vec::with_capacity(raw.len());
    for (i, mut s) in raw.into_iter().enumerate() {
        if out.iter().any(|o| o.name == s.name) {
            return err(format!(
                "scanner[{i}] (name = {:?}): the name appears twice",
                s.name
            ));
        }
        s.rebase(base);
        s.proxy_url.get_or_insert_with(|| default.clone());
        out.push(s);
    }
    Ok(out)
}

/// The rules, indexed; their policies where not the default.
pub(super) struct Rules {
    pub(super) set: Arc<RuleSet>,
    pub(super) policies: HashMap<String, RulePolicy>,
    pub(super) scan_policies: HashMap<String, ScanPolicy>,
}

pub(super) fn rules(
    raw: Vec<RuleConfig<ScanPolicy>>,
    registries: &[Upstream],
    credentials: &HashMap<String, Credentials>,
    scanners: &[ScannerConfig],
    base: &Path,
) -> Result<Rules, ConfigError> {
    let mut keys: HashMap<PathBuf, CosignKey> = HashMap::new();
    let mut load = |path: &Path| -> Result<CosignKey, String> {
        if let Some(k) = keys.get(path) {
            return Ok(k.clone());
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = CosignKey::from_pem(path.display().to_string(), &text)?;
        keys.insert(path.to_owned(), key.clone());
        Ok(key)
    };
    let mut specs = Vec::with_capacity(raw.len());
    let (mut policies, mut scan_policies) = (HashMap::new(), HashMap::new());
    for (i, mut r) in raw.into_iter().enumerate() {
        let key = format!("rule[{i}] (name = {:?})", r.spec.name);
        if let Some(c) = &r.spec.credentials
            && !credentials.contains_key(c)
        {
            return err(format!(
                "{key}: credentials = {c:?} names no [[credentials]] entry"
            ));
        }
        if let Some(s) = &mut r.signatures {
            s.rebase(base);
        }
        let policy = r
            .policy(&mut load)
            .map_err(|e| ConfigError::new(format!("{key}: {e}")))?;
        if policy != RulePolicy::default() {
            policies.insert(r.spec.name.clone(), policy);
        }
        if let Some(scan) = r.scan {
            if !scanners.iter().any(|s| s.name == scan.scanner) {
                return err(format!(
                    "{key}: scan.scanner = {:?} names no [[scanner]]",
                    scan.scanner
                ));
            }
            scan_policies.insert(r.spec.name.clone(), *scan);
        }
        // The strings move into the spec: a large file is not held twice.
        specs.push(r.spec);
    }
    if specs.is_empty() {
        return err("no [[rule]]: the proxy would refuse every request".into());
    }
    // The rule set reports rule errors (duplicates, bad names), naming the rule.
    let set = RuleSet::from_specs(specs).map_err(|e| ConfigError::new(e.to_string()))?;
    let hosts: HashSet<&cache_core::Registry> = registries.iter().map(|u| &u.config.host).collect();
    for (i, rule) in set.rules().iter().enumerate() {
        if !hosts.contains(rule.registry()) {
            return err(format!(
                "rule[{i}] (name = {:?}): source \"{}/{}\" names registry {}, which has no [[registry]] entry",
                rule.name(),
                rule.registry(),
                rule.source(),
                rule.registry()
            ));
        }
    }
    Ok(Rules {
        set: Arc::new(set),
        policies,
        scan_policies,
    })
}
