//! Events out: the engine's events, as webhooks.
//!
//! [`Webhooks`] is an [`EventSink`] decorator: it passes every event on to
//! the sink it wraps (metrics, say) and, for the event types a webhook
//! subscribed to, queues a notice for it. Each webhook has a bounded queue
//! and a few delivery workers on the runtime's [`Spawner`]; an event that
//! finds the queue full is dropped and counted, never waited for, so a
//! slow or dead receiver does not slow a pull (the engine calls
//! [`EventSink::event`] inline). A delivery is an HTTP `POST`, retried
//! with exponential back-off (on the runtime's [`Clock`]) after a
//! connection failure, a timeout, a `408`, a `429` (its `Retry-After`
//! respected up to the back-off's cap) or a `5xx`, at most
//! `max_attempts` times; other answers are final.
//!
//! The body is a CloudEvents 1.0 event in the structured JSON mode
//! (`application/cloudevents+json`) or a plain JSON object
//! (`{"id", "type", "time", "source", "subject", "data"}`). With a secret,
//! a header (`X-Signature-256` unless configured) carries
//! `sha256=<hex HMAC-SHA256 of the body with the secret>`, as GitHub's
//! webhooks do. The URL goes through the same [`AddressPolicy`] as an
//! upstream's redirects: a loopback, private or link-local address, named
//! or resolved, is refused unless its host is in `allow_hosts`; redirects
//! are not followed.
//!
//! Event types: `pull.hit` (a manifest served from the cache: hit,
//! revalidated or stale), `pull.miss` (fetched from the upstream),
//! `fetch.finished` (an upstream blob fetch ended, committed or not),
//! `admission.denied` (a policy refused a manifest), `scan.verdict_changed`
//! (a vulnerability scan's verdict is not what the previous scan's was)
//! and `gc.finished`. Pulls by a vulnerability scanner's scoped
//! credential are not reported.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use cache_core::events::{Counters, EventSink};
//! use cache_core::runtime::TokioRuntime;
//! use cache_upstream::webhook::{EventType, Format, WebhookSettings, Webhooks};
//!
//! let metrics = Arc::new(Counters::default());
//! let mut settings = WebhookSettings::new("chat", "https://hooks.example.com/in".parse()?);
//! settings.events = vec![EventType::AdmissionDenied, EventType::ScanVerdictChanged];
//! settings.format = Format::CloudEvents;
//! let rt = TokioRuntime::current();
//! let sink: Arc<dyn EventSink> = Arc::new(
//!     Webhooks::new(metrics).with(settings, Arc::new(rt.clone()), Arc::new(rt))?,
//! );
//! // PullThroughCache::builder().events(sink) ...
//! # let _ = sink;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

#[cfg(feature = "serde")]
mod config;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cache_core::events::{AdmissionOutcome, CacheStatus, Event, EventSink};
use cache_core::runtime::{Clock, Spawner, rfc3339};
use cache_core::{Caller, Secret};
use futures::FutureExt;
use serde_json::{Value, json};
use url::{Host, Url};

use crate::policy::{AddressPolicy, GuardedResolver, is_public, refused_in};

#[cfg(feature = "serde")]
pub use config::WebhookConfig;

/// Webhooks a sink sends to at most (each has its own queue, workers and
/// metric series).
pub const MAX_WEBHOOKS: usize = 64;

/// The largest queue a webhook may have.
pub const MAX_QUEUE: usize = 100_000;

/// The most deliveries a webhook may make at once.
pub const MAX_CONCURRENCY: usize = 64;

/// The most attempts a delivery may make.
pub const MAX_ATTEMPTS: u32 = 20;

/// Bytes of a receiver's answer read at most (then the connection goes).
const MAX_ANSWER: usize = 4096;

/// What a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A manifest was served from the cache (hit, revalidated or stale).
    PullHit,
    /// A manifest was fetched from the upstream for a pull.
    PullMiss,
    /// An upstream blob fetch ended, committed or not.
    FetchFinished,
    /// A policy (signatures, a vulnerability gate, an admission hook)
    /// refused a manifest.
    AdmissionDenied,
    /// A vulnerability scan's verdict is not what the previous scan's was
    /// (a first scan, or a rescan that changed it).
    ScanVerdictChanged,
    /// Garbage collection ran.
    GcFinished,
}

impl EventType {
    /// Every type, in the order the docs list them.
    pub const ALL: [EventType; 6] = [
        EventType::PullHit,
        EventType::PullMiss,
        EventType::FetchFinished,
        EventType::AdmissionDenied,
        EventType::ScanVerdictChanged,
        EventType::GcFinished,
    ];

    /// `pull.hit`, `pull.miss`, `fetch.finished`, `admission.denied`,
    /// `scan.verdict_changed` or `gc.finished`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PullHit => "pull.hit",
            EventType::PullMiss => "pull.miss",
            EventType::FetchFinished => "fetch.finished",
            EventType::AdmissionDenied => "admission.denied",
            EventType::ScanVerdictChanged => "scan.verdict_changed",
            EventType::GcFinished => "gc.finished",
        }
    }

    /// Parses what [`as_str`](Self::as_str) writes.
    pub fn parse(s: &str) -> Option<Self> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The type of an engine event, if webhooks report it.
    pub fn of(e: &Event<'_>) -> Option<Self> {
        match e {
            // A scanner's reads are how admission is decided, not pulls.
            Event::Manifest { caller, status, .. } => match (caller, status) {
                (Caller::Scanner { .. }, _) => None,
                (_, CacheStatus::Miss) => Some(EventType::PullMiss),
                _ => Some(EventType::PullHit),
            },
            Event::FetchFinished { .. } => Some(EventType::FetchFinished),
            Event::Admission {
                outcome: AdmissionOutcome::Refused,
                ..
            } => Some(EventType::AdmissionDenied),
            Event::ScanVerdict { .. } => Some(EventType::ScanVerdictChanged),
            Event::GcFinished(_) => Some(EventType::GcFinished),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a notice is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// CloudEvents 1.0, structured JSON mode (`application/cloudevents+json`).
    #[default]
    CloudEvents,
    /// A plain JSON object (`application/json`).
    Json,
}

/// The prefix of the CloudEvents `type` attribute: `pull-through-cache.pull.miss`.
pub const CLOUDEVENTS_TYPE_PREFIX: &str = "pull-through-cache.";

/// One webhook: where, what, how.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Its name, in logs and metrics.
    pub name: String,
    /// Where notices are `POST`ed.
    pub url: Url,
    /// What it subscribes to (default: every type).
    pub events: Vec<EventType>,
    /// How notices are written (default: CloudEvents).
    pub format: Format,
    /// The key of the body's HMAC-SHA256 signature, if the receiver checks one.
    pub secret: Option<Secret>,
    /// The header the signature goes in (default `X-Signature-256`).
    pub signature_header: String,
    /// The CloudEvents `source` (default `/pull-through-cache`).
    pub source: String,
    /// Notices waiting at most; more are dropped and counted (default 1000).
    pub queue: usize,
    /// Deliveries at once (default 2).
    pub concurrency: usize,
    /// Attempts per notice, the first included (default 5).
    pub max_attempts: u32,
    /// How long one attempt may take, connecting included (default 10 s).
    pub timeout: Duration,
    /// The wait before the first retry, doubled for each next one (default 1 s).
    pub backoff: Duration,
    /// The longest wait between attempts (default 60 s).
    pub max_backoff: Duration,
    /// Hosts that may be (or resolve to) loopback, private or link-local
    /// addresses: a receiver inside the network must be listed.
    pub allow_hosts: Vec<String>,
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("events", &self.events)
            .field("format", &self.format)
            // Secret prints as <redacted>.
            .field("secret", &self.secret)
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("allow_hosts", &self.allow_hosts)
            .finish_non_exhaustive()
    }
}

impl WebhookSettings {
    /// A webhook named `name` to `url` with the defaults: every event
    /// type, CloudEvents, no signature, a queue of 1000, 2 deliveries at
    /// once, 5 attempts of at most 10 s, back-off from 1 s to 60 s.
    pub fn new(name: &str, url: Url) -> Self {
        WebhookSettings {
            name: name.to_owned(),
            url,
            events: EventType::ALL.to_vec(),
            format: Format::CloudEvents,
            secret: None,
            signature_header: "X-Signature-256".to_owned(),
            source: "/pull-through-cache".to_owned(),
            queue: 1000,
            concurrency: 2,
            max_attempts: 5,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            allow_hosts: Vec::new(),
        }
    }

    /// Checks the settings: an http(s) URL whose host, if an IP literal,
    /// is public or listed in `allow_hosts`; a signature header that is a
    /// header name; bounds on the queue, concurrency and attempts.
    pub fn check(&self) -> Result<(), String> {
        check_url(&self.url, &self.allow_hosts)?;
        if reqwest::header::HeaderName::from_bytes(self.signature_header.as_bytes()).is_err() {
            return Err(format!(
                "signature_header = {:?}: not a header name",
                self.signature_header
            ));
        }
        if !(1..=MAX_QUEUE).contains(&self.queue) {
            return Err(format!("queue = {}: from 1 to {MAX_QUEUE}", self.queue));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "concurrency = {}: from 1 to {MAX_CONCURRENCY}",
                self.concurrency
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(format!(
                "max_attempts = {}: from 1 to {MAX_ATTEMPTS}",
                self.max_attempts
            ));
        }
        if self.timeout.is_zero() {
            return Err("timeout must be more than 0".into());
        }
        if self.events.is_empty() {
            return Err("events is empty: the webhook would get nothing".into());
        }
        Ok(())
    }
}

/// Refuses a URL that is not http(s), and a host that is a non-public IP
/// literal not listed in `allow_hosts` (names are checked as they resolve).
pub fn check_url(url: &Url, allow_hosts: &[String]) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url = {:?}: not an http(s) URL", url.as_str()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "url = {:?}: credentials in the URL would be logged; use secret for a signature",
            redacted(url)
        ));
    }
    let ip = match url.host() {
        None => return Err(format!("url = {:?}: no host", url.as_str())),
        Some(Host::Domain(_)) => return Ok(()),
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    let policy = AddressPolicy::for_endpoints(&[], allow_hosts, &[]);
    if is_public(ip) || policy.is_trusted(url.host_str().unwrap_or("")) {
        Ok(())
    } else {
        Err(format!(
            "url = {:?}: {ip} is a non-public address; list the host in allow_hosts to send there",
            url.as_str()
        ))
    }
}

/// A URL without its user information, for messages.
fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// One webhook's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Its name.
    pub name: String,
    /// Notices waiting now.
    pub queued: u64,
    /// Notices the receiver accepted (a `2xx`).
    pub delivered: u64,
    /// Notices given up on: attempts exhausted, or a final answer (a
    /// `4xx` other than `408` and `429`, a redirect, an address the
    /// policy refuses).
    pub failed: u64,
    /// Notices dropped because the queue was full.
    pub dropped: u64,
    /// Attempts after a first one.
    pub retries: u64,
}

/// A notice as queued: the body and what its headers need.
#[derive(Debug)]
struct Notice {
    body: Bytes,
    content_type: &'static str,
    id: String,
    kind: EventType,
}

#[derive(Default, Debug)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
}

/// One webhook's sending half, and what its workers share.
struct Hook {
    settings: WebhookSettings,
    mask: u8,
    tx: tokio::sync::mpsc::Sender<Arc<Notice>>,
    counts: Arc<Counts>,
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The sink that sends webhooks; see the module docs. Dropping it (with
/// the engine that holds it) ends its workers once their current
/// deliveries end.
#[derive(Debug)]
pub struct Webhooks {
    inner: Arc<dyn EventSink>,
    hooks: Vec<Hook>,
    /// Every hook's subscriptions together: one test per event.
    wanted: u8,
    /// Notices get `<prefix>-<sequence>` ids, unique per sink.
    id_prefix: String,
    sequence: AtomicU64,
}

impl Webhooks {
    /// A sink that passes every event to `inner` and sends none yet.
    pub fn new(inner: Arc<dyn EventSink>) -> Self {
        Webhooks {
            inner,
            hooks: Vec::new(),
            wanted: 0,
            id_prefix: format!("{:016x}", rand::random::<u64>()),
            sequence: AtomicU64::new(0),
        }
    }

    /// Adds a webhook, checked ([`WebhookSettings::check`]); its workers
    /// start on `spawner` and wait out back-off on `clock`.
    pub fn with(
        mut self,
        settings: WebhookSettings,
        spawner: Arc<dyn Spawner>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let at = |e: String| format!("webhook {:?}: {e}", settings.name);
        settings.check().map_err(at)?;
        if self.hooks.len() >= MAX_WEBHOOKS {
            return Err(at(format!("more than {MAX_WEBHOOKS} webhooks")));
        }
        if self.hooks.iter().any(|h| h.settings.name == settings.name) {
            return Err(at("the name is taken".into()));
        }
        let policy = AddressPolicy::for_endpoints(&[], &settings.allow_hosts, &[]);
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("pull-through-cache/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                policy,
                hint: "is not listed in the webhook's allow_hosts",
            }))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| at(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Arc<Notice>>(settings.queue);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mask = settings.events.iter().fold(0, |m, t| m | t.bit());
        let counts = Arc::new(Counts::default());
        let worker = Worker {
            settings: Arc::new(settings.clone()),
            http,
            counts: counts.clone(),
            clock,
        };
        for _ in 0..settings.concurrency {
            let (w, rx) = (worker.clone(), rx.clone());
            spawner.spawn(
                async move {
                    loop {
                        // The lock is held only while waiting for the next notice.
                        let next = rx.lock().await.recv().await;
                        let Some(n) = next else { return };
                        w.deliver(&n).await;
                    }
                }
                .boxed(),
            );
        }
        self.wanted |= mask;
        self.hooks.push(Hook {
            settings,
            mask,
            tx,
            counts,
        });
        Ok(self)
    }

    /// Each webhook's counts, in the order they were added.
    pub fn stats(&self) -> Vec<WebhookStats> {
        self.hooks
            .iter()
            .map(|h| WebhookStats {
                name: h.settings.name.clone(),
                queued: (h.tx.max_capacity() - h.tx.capacity()) as u64,
                delivered: h.counts.delivered.load(Ordering::Relaxed),
                failed: h.counts.failed.load(Ordering::Relaxed),
                dropped: h.counts.dropped.load(Ordering::Relaxed),
                retries: h.counts.retries.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Whether any webhook is configured.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    fn notices(&self, kind: EventType, e: &Event<'_>) {
        let (subject, data) = describe(e);
        let id = format!(
            "{}-{}",
            self.id_prefix,
            self.sequence.fetch_add(1, Ordering::Relaxed)
        );
        let time = rfc3339(SystemTime::now());
        // One body per format, shared by the webhooks that use it.
        let mut bodies: [Option<Arc<Notice>>; 2] = [None, None];
        for h in self.hooks.iter().filter(|h| h.mask & kind.bit() != 0) {
            let slot = match h.settings.format {
                Format::CloudEvents => 0,
                Format::Json => 1,
            };
            let notice = bodies[slot]
                .get_or_insert_with(|| {
                    let (body, content_type) = match h.settings.format {
                        Format::CloudEvents => (
                            json!({
                                "specversion": "1.0",
                                "id": id,
                                "source": h.settings.source,
                                "type": format!("{CLOUDEVENTS_TYPE_PREFIX}{kind}"),
                                "time": time,
                                "subject": subject,
                                "datacontenttype": "application/json",
                                "data": data,
                            }),
                            "application/cloudevents+json; charset=utf-8",
                        ),
                        Format::Json => (
                            json!({
                                "id": id,
                                "type": kind.as_str(),
                                "time": time,
                                "source": h.settings.source,
                                "subject": subject,
                                "data": data,
                            }),
                            "application/json",
                        ),
                    };
                    Arc::new(Notice {
                        body: Bytes::from(body.to_string()),
                        content_type,
                        id: id.clone(),
                        kind,
                    })
                })
                .clone();
            if h.tx.try_send(notice).is_err() {
                h.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl EventSink for Webhooks {
    fn event(&self, e: &Event<'_>) {
        self.inner.event(e);
        if let Some(kind) = EventType::of(e)
            && self.wanted & kind.bit() != 0
        {
            self.notices(kind, e);
        }
    }
}

/// The subject (`repository:tag`, `repository@digest`, a digest) and data
/// of an event webhooks report.
fn describe(e: &Event<'_>) -> (Option<String>, Value) {
    match e {
        Event::Manifest {
            rule,
            repository,
            reference,
            digest,
            status,
            ..
        } => (
            Some(image(repository, &reference.to_string())),
            json!({
                "rule": rule,
                "repository": repository.as_str(),
                "reference": reference.to_string(),
                "digest": digest.as_str(),
                "cache": status.as_str(),
            }),
        ),
        Event::FetchFinished {
            committed,
            rule,
            registry,
            repository,
            digest,
            error,
        } => (
            Some(digest.to_string()),
            json!({
                "rule": rule,
                "registry": registry,
                "repository": repository.as_str(),
                "digest": digest.as_str(),
                "committed": committed,
                "error": error,
            }),
        ),
        Event::Admission {
            rule,
            outcome,
            repository,
            reference,
            digest,
            policy,
            reason,
            detail,
            ..
        } => (
            Some(image(repository, &reference.to_string())),
            json!({
                "rule": rule,
                "repository": repository.as_str(),
                "reference": reference.to_string(),
                "digest": digest.as_str(),
                "policy": policy,
                "outcome": outcome.as_str(),
                "reason": reason,
                "detail": detail,
            }),
        ),
        Event::ScanVerdict {
            scanner,
            rule,
            repository,
            digest,
            outcome,
            previous,
            reason,
            detail,
        } => (
            Some(format!("{repository}@{digest}")),
            json!({
                "scanner": scanner,
                "rule": rule,
                "repository": repository.as_str(),
                "digest": digest.as_str(),
                "verdict": outcome.as_str(),
                "previous": previous.map(|p| p.as_str()),
                "reason": reason,
                "detail": detail,
            }),
        ),
        Event::GcFinished(r) => (
            None,
            json!({
                "expired": r.expired,
                "evicted": r.evicted,
                "freed_bytes": r.freed_bytes,
                "remaining_bytes": r.remaining_bytes,
                "skipped_in_use": r.skipped_in_use,
                "dropped_records": r.dropped_records,
            }),
        ),
        _ => (None, Value::Null),
    }
}

/// `repository:tag` or `repository@digest`.
fn image(repository: &cache_core::RepoName, reference: &str) -> String {
    if reference.contains(':') {
        format!("{repository}@{reference}")
    } else {
        format!("{repository}:{reference}")
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` with `secret`, as the
/// signature header carries it. A receiver computes the same over the raw
/// body and compares in constant time.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

/// What a delivery worker has.
#[derive(Clone)]
struct Worker {
    settings: Arc<WebhookSettings>,
    http: reqwest::Client,
    counts: Arc<Counts>,
    clock: Arc<dyn Clock>,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another try, after at least this long (a `Retry-After`).
    Retry(String, Option<Duration>),
    Final(String),
}

impl Worker {
    async fn deliver(&self, n: &Notice) {
        let s = &*self.settings;
        let mut wait = s.backoff;
        for attempt in 1..=s.max_attempts {
            let pause = match self.attempt(n).await {
                Attempt::Delivered => {
                    self.counts.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Attempt::Final(why) => {
                    self.give_up(n, attempt, &why);
                    return;
                }
                Attempt::Retry(why, after) => {
                    if attempt == s.max_attempts {
                        self.give_up(n, attempt, &why);
                        return;
                    }
                    let pause = after.unwrap_or(wait).min(s.max_backoff);
                    tracing::debug!(webhook = %s.name, id = %n.id, attempt, error = %why, ?pause, "webhook delivery failed; retrying");
                    pause
                }
            };
            self.counts.retries.fetch_add(1, Ordering::Relaxed);
            self.clock.sleep(pause).await;
            wait = (wait * 2).min(s.max_backoff);
        }
    }

    fn give_up(&self, n: &Notice, attempts: u32, why: &str) {
        self.counts.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(webhook = %self.settings.name, id = %n.id, event = %n.kind, attempts, error = %why, "webhook delivery failed; notice dropped");
    }

    async fn attempt(&self, n: &Notice) -> Attempt {
        let s = &*self.settings;
        let mut req = self
            .http
            .post(s.url.clone())
            .header(reqwest::header::CONTENT_TYPE, n.content_type)
            .header("X-Webhook-Id", &n.id)
            .header("X-Webhook-Event", n.kind.as_str());
        if let Some(secret) = &s.secret {
            req = req.header(s.signature_header.as_str(), signature(secret, &n.body));
        }
        let resp = match req.body(n.body.clone()).send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(refused) = refused_in(&e) {
                    return Attempt::Final(refused.to_string());
                }
                return Attempt::Retry(e.to_string(), None);
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // A little of the answer says why; the rest is not waited for.
        let mut answer = Vec::new();
        let mut stream = resp.bytes_stream();
        while answer.len() < MAX_ANSWER {
            match futures::StreamExt::next(&mut stream).await {
                Some(Ok(c)) => answer.extend_from_slice(&c[..c.len().min(MAX_ANSWER)]),
                _ => break,
            }
        }
        if status.is_success() {
            return Attempt::Delivered;
        }
        let why = format!(
            "{status}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)]).trim()
        );
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Attempt::Retry(why, retry_after)
        } else {
            Attempt::Final(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_as_github_writes_them() {
        // RFC 4231 test case 2.
        let s = signature(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn event_types_parse_back() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("pull"), None);
    }

    #[test]
    fn internal_literal_urls_are_refused_unless_listed() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(check_url(&u("https://hooks.example.com/x"), &[]).is_ok());
        assert!(check_url(&u("https://8.8.8.8/x"), &[]).is_ok());
        for bad in [
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest",
            "http://10.0.0.1/x",
        ] {
            let e = check_url(&u(bad), &[]).unwrap_err();
            assert!(e.contains("allow_hosts"), "{bad}: {e}");
        }
        assert!(check_url(&u("http://127.0.0.1:9/x"), &["127.0.0.1".into()]).is_ok());
        assert!(check_url(&u("ftp://example.com/x"), &[]).is_err());
        let e = check_url(&u("https://user:pw@hooks.example.com/x"), &[]).unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn settings_are_bounded() {
        let ok = WebhookSettings::new("a", Url::parse("https://h.example/x").unwrap());
        assert!(ok.check().is_ok());
        for (edit, says) in [
            (
                (|s: &mut WebhookSettings| s.queue = 0) as fn(&mut WebhookSettings),
                "queue = 0",
            ),
            (|s| s.queue = MAX_QUEUE + 1, "queue"),
            (|s| s.concurrency = 0, "concurrency = 0"),
            (|s| s.max_attempts = 0, "max_attempts = 0"),
            (|s| s.timeout = Duration::ZERO, "timeout"),
            (|s| s.events.clear(), "events is empty"),
            (|s| s.signature_header = "a b".into(), "signature_header"),
        ] {
            let mut s = ok.clone();
            edit(&mut s);
            let e = s.check().unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let with_secret = WebhookSettings {
            secret: Some(Secret::new("hush")),
            ..ok
        };
        assert!(!format!("{with_secret:?}").contains("hush"));
    }
}
