//! `[[rule]]` and `[[scanner]]`: what each rule refers to must exist; the
//! files signature policies name are read once however many rules name them.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use cache_core::config::RuleConfig;
use cache_core::{RulePolicy, RuleSet};
use cache_upstream::Credentials;
use cache_upstream::scanner::{ScanPolicy, ScannerConfig};

use super::{ConfigError, Result, err, named};

/// The scanners, their names unique.
pub(super) fn scanners(mut raw: Vec<ScannerConfig>, base: &Path) -> Result<Vec<ScannerConfig>> {
    raw.iter_mut().for_each(|s| s.rebase(base));
    named("scanner", raw, |s| ("name", s.name.clone()), |_, s| Ok(s))
}

/// The rules, their policies where not the default, their scan policies.
type Rules = (Arc<RuleSet>, Policies<RulePolicy>, Policies<ScanPolicy>);
type Policies<P> = HashMap<String, P>;

/// The rules, each checked against the sections it refers to.
pub(super) fn rules(
    raw: Vec<RuleConfig<ScanPolicy>>,
    registries: &[cache_upstream::PreparedRegistry],
    credentials: &HashMap<String, Credentials>,
    scanners: &[ScannerConfig],
    base: &Path,
) -> Result<Rules> {
    // Key files, trust roots and trust stores: each read once.
    let mut files = cache_core::trust::TrustFiles::default();
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
            .policy_with(&mut files)
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
    Ok((Arc::new(set), policies, scan_policies))
}
