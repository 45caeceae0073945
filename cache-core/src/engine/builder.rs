//! Wiring a [`PullThroughCache`]: rules, store, runtime, upstreams, policies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::queue::FetchQueue;
use super::{CacheOptions, Inner, PullThroughCache, UpstreamSet};
use crate::error::{Error, Result};
use crate::events::{EventSink, NoEvents};
use crate::names::Registry;
use crate::policy::{Admission, RulePolicy};
use crate::rules::RuleSet;
use crate::runtime::{Clock, Spawner};
use crate::store::BlobStore;
use crate::upstream::Upstream;

/// A registry's default client and its clients per credential set.
type Clients = (
    Option<Arc<dyn Upstream>>,
    HashMap<String, Arc<dyn Upstream>>,
);

/// Builds a [`PullThroughCache`].
#[derive(Debug)]
pub struct CacheBuilder {
    rules: RuleSet,
    store: Arc<dyn BlobStore>,
    spawner: Arc<dyn Spawner>,
    clock: Arc<dyn Clock>,
    upstreams: HashMap<Registry, Clients>,
    opts: CacheOptions,
    policies: HashMap<String, RulePolicy>,
    default_policy: RulePolicy,
    admission: Vec<Arc<dyn Admission>>,
    events: Arc<dyn EventSink>,
}

impl PullThroughCache {
    /// Starts building a cache from rules, a store, and a runtime's spawner and clock.
    pub fn builder(
        rules: RuleSet,
        store: Arc<dyn BlobStore>,
        spawner: Arc<dyn Spawner>,
        clock: Arc<dyn Clock>,
    ) -> CacheBuilder {
        CacheBuilder {
            rules,
            store,
            spawner,
            clock,
            upstreams: HashMap::new(),
            opts: CacheOptions::default(),
            policies: HashMap::new(),
            default_policy: RulePolicy::default(),
            admission: Vec::new(),
            events: Arc::new(NoEvents),
        }
    }
}

impl CacheBuilder {
    /// The upstream for `registry` (for rules without credentials, and for
    /// rules whose credential set has no upstream of its own).
    pub fn upstream(mut self, registry: Registry, upstream: Arc<dyn Upstream>) -> Self {
        self.upstreams.entry(registry).or_default().0 = Some(upstream);
        self
    }

    /// The upstream for `registry` used by rules naming `credentials`.
    pub fn upstream_with_credentials(
        mut self,
        registry: Registry,
        credentials: &str,
        upstream: Arc<dyn Upstream>,
    ) -> Self {
        self.upstreams
            .entry(registry)
            .or_default()
            .1
            .insert(credentials.to_owned(), upstream);
        self
    }

    /// The policy of the rule named `rule`.
    pub fn policy(mut self, rule: &str, policy: RulePolicy) -> Self {
        self.policies.insert(rule.to_owned(), policy);
        self
    }

    /// The policy of rules without their own.
    pub fn default_policy(mut self, policy: RulePolicy) -> Self {
        self.default_policy = policy;
        self
    }

    /// Adds an admission hook; every hook must admit a manifest.
    pub fn admission(mut self, hook: Arc<dyn Admission>) -> Self {
        self.admission.push(hook);
        self
    }

    /// Where events go.
    pub fn events(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.events = sink;
        self
    }

    /// Tunables.
    pub fn options(mut self, opts: CacheOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Checks that every rule has an upstream and every policy a rule.
    pub fn build(self) -> Result<PullThroughCache> {
        for rule in self.rules.rules() {
            let set = self.upstreams.get(rule.registry());
            let found = set.is_some_and(|(default, by_creds)| {
                default.is_some() || rule.credentials().is_some_and(|c| by_creds.contains_key(c))
            });
            if !found {
                return Err(Error::invalid_rule(
                    rule.name(),
                    format!("no upstream configured for registry {}", rule.registry()),
                ));
            }
        }
        for name in self.policies.keys() {
            if self.rules.get(name).is_none() {
                return Err(Error::invalid_rule(
                    name.clone(),
                    "a policy names a rule that does not exist",
                ));
            }
        }
        let upstreams = self
            .upstreams
            .into_iter()
            .map(|(registry, (default, by_credentials))| {
                let queue = FetchQueue::new(
                    self.opts.max_concurrent_fetches,
                    self.opts.max_queued_fetches,
                );
                (
                    registry,
                    UpstreamSet {
                        default,
                        by_credentials,
                        queue,
                    },
                )
            })
            .collect();
        Ok(PullThroughCache {
            inner: Arc::new(Inner {
                rules: self.rules,
                upstreams,
                store: self.store,
                spawner: self.spawner,
                clock: self.clock,
                policies: self.policies,
                default_policy: self.default_policy,
                admission: self.admission,
                events: self.events,
                inflight: Mutex::new(HashMap::new()),
                manifest_flights: Mutex::new(HashMap::new()),
                in_use: Mutex::new(HashMap::new()),
                opts: self.opts,
            }),
        })
    }
}
