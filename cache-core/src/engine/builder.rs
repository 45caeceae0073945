//! Wiring a [`PullThroughCache`]: rules, store, runtime, upstreams, policies.

use std::time::Duration;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::flights::Flights;
use super::queue::FetchQueue;
use super::{CacheOptions, Inner, PullThroughCache, UpstreamSet, Wiring};
use crate::error::{Error, Result};
use crate::events::{EventSink, NoEvents};
use crate::names::Registry;
use crate::policy::{Admission, RulePolicy};
use crate::rules::{RuleSet, RuleSpec};
use crate::runtime::{Clock, Spawner};
use crate::store::BlobStore;
use crate::upstream::Upstream;

/// A registry's default client and its clients per credential set.
type Clients = (
    Option<Arc<dyn Upstream>>,
    HashMap<String, Arc<dyn Upstream>>,
);

/// Builds a [`PullThroughCache`] in named steps; see
/// [`PullThroughCache::builder`]. Every step takes its value by value
/// (an `Arc` of it works too: the traits are implemented for `Arc<T>`).
#[derive(Debug, Default)]
pub struct CacheBuilder {
    rules: Option<Arc<RuleSet>>,
    specs: Vec<RuleSpec>,
    store: Option<Arc<dyn BlobStore>>,
    spawner: Option<Arc<dyn Spawner>>,
    clock: Option<Arc<dyn Clock>>,
    upstreams: Vec<(String, Option<String>, Arc<dyn Upstream>)>,
    opts: CacheOptions,
    policies: HashMap<String, RulePolicy>,
    default_policy: RulePolicy,
    admission: Vec<Arc<dyn Admission>>,
    events: Option<Arc<dyn EventSink>>,
    peering: Option<crate::peer::Peering>,
}

impl PullThroughCache {
    /// Starts building a cache. It needs caching rules ([`rules`] or
    /// [`rule`]), a store, a runtime (`tokio()` with the `tokio` feature,
    /// or [`runtime`]) and an upstream for every registry the rules name.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use cache_core::prelude::*;
    /// use cache_core::testing::{FakeUpstream, ManualClock};
    /// use cache_store::MemoryStore;
    ///
    /// // Any `Upstream`: cache_upstream::RegistryClient in real use.
    /// let hub = FakeUpstream::new("docker.io", std::sync::Arc::new(ManualClock::new()));
    /// let cache = PullThroughCache::builder()
    ///     .rule(RuleSpec::new("hub", "docker.io/library/*", "library/*"))
    ///     .store(MemoryStore::new())
    ///     .tokio()
    ///     .upstream("docker.io", hub)
    ///     .build()?;
    /// // A name no rule declares is refused without asking any upstream.
    /// let err = cache
    ///     .manifest(&RepoName::parse("acme/app")?, &Reference::parse("v1")?, &Accept::any())
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(err.code(), ErrorCode::NameUnknown);
    /// # Ok::<(), cache_core::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// [`rules`]: CacheBuilder::rules
    /// [`rule`]: CacheBuilder::rule
    /// [`runtime`]: CacheBuilder::runtime
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }
}

fn missing(what: &str) -> Error {
    Error::Misconfigured {
        reason: format!("the cache builder was given no {what}"),
    }
}

impl CacheBuilder {
    /// The caching rules, validated and indexed (a `RuleSet`, or an
    /// `Arc` of one to share it without copying).
    pub fn rules(mut self, rules: impl Into<Arc<RuleSet>>) -> Self {
        self.rules = Some(rules.into());
        self
    }

    /// Adds one rule; the rules given this way are validated at
    /// [`build`](Self::build). Not to be mixed with [`rules`](Self::rules).
    pub fn rule(mut self, spec: RuleSpec) -> Self {
        self.specs.push(spec);
        self
    }

    /// Where content is kept.
    pub fn store(mut self, store: impl BlobStore + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// A runtime that spawns and tells time, for both.
    pub fn runtime<R: Spawner + Clock + Clone + 'static>(mut self, rt: R) -> Self {
        self.spawner = Some(Arc::new(rt.clone()));
        self.clock = Some(Arc::new(rt));
        self
    }

    /// Tokio's spawner and the system clock, from the current runtime
    /// (feature `tokio`). Panics outside a tokio runtime.
    #[cfg(feature = "tokio")]
    pub fn tokio(self) -> Self {
        self.runtime(crate::runtime::TokioRuntime::current())
    }

    /// Where detached fetches run.
    pub fn spawner(mut self, spawner: impl Spawner + 'static) -> Self {
        self.spawner = Some(Arc::new(spawner));
        self
    }

    /// The clock freshness, TTLs and timeouts run on (a manual one in tests).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The upstream for `registry` (as rule sources name it: `docker.io`,
    /// `ghcr.io`, `registry.example.com:5000`), used by rules without
    /// credentials and by rules whose credential set has no client of its
    /// own. An invalid host is reported by [`build`](Self::build).
    pub fn upstream(mut self, registry: &str, upstream: impl Upstream + 'static) -> Self {
        self.upstreams
            .push((registry.to_owned(), None, Arc::new(upstream)));
        self
    }

    /// The upstream for `registry` used by rules naming the credential set
    /// `credentials`.
    pub fn upstream_with_credentials(
        mut self,
        registry: &str,
        credentials: &str,
        upstream: impl Upstream + 'static,
    ) -> Self {
        self.upstreams.push((
            registry.to_owned(),
            Some(credentials.to_owned()),
            Arc::new(upstream),
        ));
        self
    }

    /// The policy of the rule named `rule`.
    pub fn policy(mut self, rule: &str, policy: RulePolicy) -> Self {
        self.policies.insert(rule.to_owned(), policy);
        self
    }

    /// The policy of rules without their own (by default: revalidate tags,
    /// serve a cached tag for 24 h while the upstream fails, no content TTL).
    pub fn default_policy(mut self, policy: RulePolicy) -> Self {
        self.default_policy = policy;
        self
    }

    /// Adds an admission hook; every hook must admit a manifest.
    pub fn admission(mut self, hook: impl Admission + 'static) -> Self {
        self.admission.push(Arc::new(hook));
        self
    }

    /// Where events go (none by default).
    pub fn events(mut self, sink: impl EventSink + 'static) -> Self {
        self.events = Some(Arc::new(sink));
        self
    }

    /// Tunables.
    pub fn options(mut self, opts: CacheOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Peer streaming on a shared store ([`crate::peer`]): this instance
    /// names `peering.advertise` in the fetch leases it holds (serve the
    /// blobs it fetches there, e.g. with `cache_core::server::PeerService`),
    /// and streams from the instance whose lease names an address instead
    /// of waiting for it to publish. Without it (the default), followers
    /// wait for publication. A store that is not shared ignores it.
    pub fn peering(mut self, peering: crate::peer::Peering) -> Self {
        self.peering = Some(peering);
        self
    }

    /// Checks the wiring: rules, store and runtime given; every registry
    /// host valid; every rule with an upstream; every policy with a rule.
    pub fn build(mut self) -> Result<PullThroughCache> {
        let store = self.store.take().ok_or_else(|| missing("store"))?;
        let spawner = self
            .spawner
            .take()
            .ok_or_else(|| missing("spawner (runtime)"))?;
        let clock = self
            .clock
            .take()
            .ok_or_else(|| missing("clock (runtime)"))?;
        let events = self.events.take().unwrap_or_else(|| Arc::new(NoEvents));
        let opts = std::mem::take(&mut self.opts);
        let peering = self.peering.take();
        let wiring = self.wiring(&opts, None)?;
        fn flights<T>(
            opts: &CacheOptions,
            admission: Duration,
            spawner: &Arc<dyn Spawner>,
            clock: &Arc<dyn Clock>,
        ) -> Arc<Flights<T>> {
            Arc::new(Flights::new(
                opts.max_manifest_fetches,
                opts.manifest_timeout + admission,
                spawner.clone(),
                clock.clone(),
            ))
        }
        let (manifest_flights, head_flights) = (
            flights(&opts, super::manifests::MAX_ADMISSION, &spawner, &clock),
            flights(&opts, Duration::ZERO, &spawner, &clock),
        );
        let cache = PullThroughCache {
            inner: Arc::new(Inner {
                wiring: arc_swap::ArcSwap::from_pointee(wiring),
                store,
                spawner,
                clock,
                events,
                inflight: Mutex::new(HashMap::new()),
                manifest_flights,
                head_flights,
                hot: super::hot::Hot::new(
                    opts.hot_bytes,
                    opts.hot_max_item,
                    opts.hot_validity,
                    opts.touch_interval,
                    opts.revalidate_window,
                ),
                in_use: Mutex::new(HashMap::new()),
                verdicts: Default::default(),
                negative: Default::default(),
                prefetches: Default::default(),
                sync: Default::default(),
                usage: Mutex::new(None),
                pulls: Default::default(),
                recent_denials: Default::default(),
                repo_index: Default::default(),
                peering,
                opts,
            }),
        };
        if cache.inner.store.shared() {
            cache
                .inner
                .spawner
                .spawn(futures::FutureExt::boxed(super::Inner::renew_access_times(
                    Arc::downgrade(&cache.inner),
                )));
        }
        Ok(cache)
    }

    /// The rules, upstreams, policies and hooks, checked. Fetch queues of
    /// registries `old` already had are kept, so their bounds hold across
    /// a reload.
    fn wiring(self, opts: &CacheOptions, old: Option<&Wiring>) -> Result<Wiring> {
        let rules = match (self.rules, self.specs.is_empty()) {
            (Some(_), false) => {
                return Err(Error::misconfigured(
                    "the cache builder was given both rules() and rule()",
                ));
            }
            (Some(r), true) => r,
            (None, false) => Arc::new(RuleSet::new(&self.specs)?),
            (None, true) => return Err(missing("caching rules")),
        };
        let mut clients: HashMap<Registry, Clients> = HashMap::new();
        for (host, creds, upstream) in self.upstreams {
            let registry = Registry::parse(&host)
                .map_err(|e| Error::misconfigured(format!("upstream for {host:?}: {e}")))?;
            let entry = clients.entry(registry).or_default();
            match creds {
                None => entry.0 = Some(upstream),
                Some(c) => {
                    entry.1.insert(c, upstream);
                }
            }
        }
        for rule in rules.rules() {
            let found = clients
                .get(rule.registry())
                .is_some_and(|(default, by_creds)| {
                    default.is_some()
                        || rule.credentials().is_some_and(|c| by_creds.contains_key(c))
                });
            if !found {
                return Err(Error::invalid_rule(
                    rule.name(),
                    format!("no upstream configured for registry {}", rule.registry()),
                ));
            }
        }
        for name in self.policies.keys() {
            if rules.get(name).is_none() {
                return Err(Error::invalid_rule(
                    name.clone(),
                    "a policy names a rule that does not exist",
                ));
            }
        }
        let upstreams = clients
            .into_iter()
            .map(|(registry, (default, by_credentials))| {
                let queue = old
                    .and_then(|w| w.upstreams.get(&registry))
                    .map(|u| u.queue.clone())
                    .unwrap_or_else(|| {
                        FetchQueue::new(opts.max_concurrent_fetches, opts.max_queued_fetches)
                    });
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
        Ok(Wiring {
            rules,
            upstreams,
            policies: self.policies,
            default_policy: self.default_policy,
            admission: self.admission,
        })
    }
}

impl PullThroughCache {
    /// Replaces the caching rules, upstreams, policies and admission hooks
    /// with those of `builder`, all at once, checked as
    /// [`CacheBuilder::build`] checks them; on an error nothing changes.
    /// The store, runtime, options and event sink stay as they are (a
    /// builder for this needs none of them). Requests and fetches in
    /// progress finish under the wiring they started with.
    pub fn reconfigure(&self, builder: CacheBuilder) -> Result<()> {
        let old = self.inner.wiring.load_full();
        let wiring = builder.wiring(&self.inner.opts, Some(&old))?;
        self.inner.wiring.store(Arc::new(wiring));
        Ok(())
    }
}
