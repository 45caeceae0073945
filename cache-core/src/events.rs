//! Observability: the engine reports what it does to an [`EventSink`]
//! the embedder connects to any metrics system.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;
use crate::engine::GcReport;
use crate::error::ErrorCode;
use crate::names::{Reference, RepoName};
use crate::policy::Caller;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from the cache without asking the upstream.
    Hit,
    /// Fetched from the upstream (and cached).
    Miss,
    /// The upstream confirmed the cached tag is current (a `HEAD`).
    Revalidated,
    /// Served from the cache because the upstream failed (stale-if-error)
    /// or withdrew it (a rule's `serve_withdrawn`).
    Stale,
    /// Answered "not found" from memory: the upstream said so within the
    /// rule's `negative_ttl`, and was not asked again.
    Negative,
}

impl CacheStatus {
    /// `hit`, `miss`, `revalidated`, `stale` or `negative`, as in an
    /// `X-Cache` header.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
            CacheStatus::Negative => "negative",
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kind of request the engine made to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamCall {
    /// A manifest `GET`.
    Manifest,
    /// A manifest `HEAD` (tag revalidation, entitlement checks).
    ManifestHead,
    /// A blob `GET`, whole or ranged (first request, retry or resumption).
    Blob,
    /// A blob `HEAD`.
    BlobHead,
    /// A tag listing.
    Tags,
    /// A referrers listing (OCI 1.1 referrers API).
    Referrers,
    /// A page of the upstream's catalog (a sync of a wildcard rule).
    Catalog,
}

impl UpstreamCall {
    /// Every kind, for exporters that pre-register their series.
    pub const ALL: [UpstreamCall; 7] = [
        UpstreamCall::Manifest,
        UpstreamCall::ManifestHead,
        UpstreamCall::Blob,
        UpstreamCall::BlobHead,
        UpstreamCall::Tags,
        UpstreamCall::Referrers,
        UpstreamCall::Catalog,
    ];

    /// `manifest`, `manifest_head`, `blob`, `blob_head`, `tags`,
    /// `referrers` or `catalog`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamCall::Manifest => "manifest",
            UpstreamCall::ManifestHead => "manifest_head",
            UpstreamCall::Blob => "blob",
            UpstreamCall::BlobHead => "blob_head",
            UpstreamCall::Tags => "tags",
            UpstreamCall::Referrers => "referrers",
            UpstreamCall::Catalog => "catalog",
        }
    }
}

/// Something the engine did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A manifest was answered: a pull.
    Manifest {
        /// The rule's name.
        rule: &'a str,
        /// The local repository.
        repository: &'a RepoName,
        /// The tag or digest asked for.
        reference: &'a Reference,
        /// The manifest's digest.
        digest: &'a Digest,
        /// Where it came from.
        status: CacheStatus,
        /// Who asked (a client, or a scanner reading what it scans).
        caller: &'a Caller,
    },
    /// A manifest request was answered `404` from the negative cache: the
    /// upstream said, within the rule's `negative_ttl`, that it has no
    /// such tag (`X-Cache: negative`).
    NegativeHit {
        /// The rule's name.
        rule: &'a str,
    },
    /// A blob was answered (the body may still be streaming).
    Blob {
        /// The rule's name.
        rule: &'a str,
        /// Where it came from.
        status: CacheStatus,
    },
    /// Bytes were delivered to a reader from the store or a staged fetch.
    BytesServed(u64),
    /// Bytes arrived from an upstream.
    BytesFromUpstream(u64),
    /// Bytes arrived from another instance that is fetching the blob
    /// (peer streaming), not from an upstream.
    BytesFromPeer(u64),
    /// An upstream blob fetch started.
    FetchStarted,
    /// An upstream blob fetch ended, committed or not.
    FetchFinished {
        /// Whether the blob was verified and committed.
        committed: bool,
        /// The rule of the request that started it.
        rule: &'a str,
        /// The upstream registry.
        registry: &'a str,
        /// The upstream repository it was fetched from.
        repository: &'a RepoName,
        /// The blob.
        digest: &'a Digest,
        /// Why it failed, when it did.
        error: Option<&'a str>,
    },
    /// A blob fetch was refused because its registry's fetch queue was
    /// full (`503` with `Retry-After`).
    FetchQueueFull {
        /// The upstream registry.
        registry: &'a str,
    },
    /// A blob verified and was released to its readers, then its commit to
    /// the store failed (a full disk, an object store that did not
    /// answer): readers still streaming it were failed, nothing was
    /// published, and the next request fetches it again. Followed by
    /// `FetchFinished { committed: false }`.
    CommitFailed,
    /// A request to an upstream is about to be made (retries and
    /// resumptions each count).
    UpstreamRequest {
        /// What kind of request.
        call: UpstreamCall,
    },
    /// An upstream call failed.
    UpstreamError {
        /// The rule's name.
        rule: &'a str,
        /// The error's OCI code.
        code: ErrorCode,
    },
    /// Garbage collection or scrub removed a blob.
    Evicted {
        /// Its size.
        bytes: u64,
    },
    /// On a shared store, a fetch found another instance fetching the
    /// same digest, and this is how it ended.
    PeerFetch(PeerFetch),
    /// A cached tag the upstream withdrew (404, 401, 403) was served,
    /// under the rule's `serve_withdrawn`.
    Withdrawn {
        /// The rule's name.
        rule: &'a str,
    },
    /// A rule's sync ran (or found another instance running it).
    Sync {
        /// The rule's name.
        rule: &'a str,
        /// What it did.
        report: &'a crate::SyncReport,
    },
    /// A manifest was admitted or refused by the rule's policy (signature
    /// policy, admission hooks).
    Admission {
        /// The rule's name.
        rule: &'a str,
        /// The decision.
        outcome: AdmissionOutcome,
        /// The local repository.
        repository: &'a RepoName,
        /// The tag or digest asked for.
        reference: &'a Reference,
        /// The manifest decided on.
        digest: &'a Digest,
        /// Which policy decided: `signatures`, or the hook's
        /// [`name`](crate::policy::Admission::name).
        policy: &'a str,
        /// Why.
        reason: &'a str,
        /// Structured details of a refusal (the findings that denied an
        /// image, say), as in the error's `detail`.
        detail: Option<&'a serde_json::Value>,
        /// Decided just now, rather than remembered from an earlier
        /// decision.
        fresh: bool,
    },
    /// A vulnerability scan finished and its verdict under the rule's
    /// policy is not what the previous scan's was (or there was none).
    ScanVerdict {
        /// The scanner.
        scanner: &'a str,
        /// The rule whose policy judged it.
        rule: &'a str,
        /// The repository it was scanned in.
        repository: &'a RepoName,
        /// The manifest scanned.
        digest: &'a Digest,
        /// The verdict now: `Allowed`, `Refused`, or `AuditOnly` (it would
        /// be refused, the policy only audits).
        outcome: AdmissionOutcome,
        /// The verdict of the scan before, if there was one.
        previous: Option<AdmissionOutcome>,
        /// Why, in words.
        reason: &'a str,
        /// The findings that deny (at most a few), when any do.
        detail: Option<&'a serde_json::Value>,
    },
    /// Garbage collection finished.
    GcFinished(&'a GcReport),
}

impl Event<'_> {
    /// The event's kind as a short name: `manifest`, `negative_hit`,
    /// `blob`, `bytes_served`, `bytes_from_upstream`, `bytes_from_peer`,
    /// `fetch_started`,
    /// `fetch_finished`, `fetch_queue_full`, `commit_failed`,
    /// `upstream_request`, `upstream_error`, `evicted`, `peer_fetch`,
    /// `withdrawn`, `sync`, `admission`, `scan_verdict` or `gc_finished`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Manifest { .. } => "manifest",
            Event::NegativeHit { .. } => "negative_hit",
            Event::Blob { .. } => "blob",
            Event::BytesServed(_) => "bytes_served",
            Event::BytesFromUpstream(_) => "bytes_from_upstream",
            Event::BytesFromPeer(_) => "bytes_from_peer",
            Event::FetchStarted => "fetch_started",
            Event::FetchFinished { .. } => "fetch_finished",
            Event::FetchQueueFull { .. } => "fetch_queue_full",
            Event::CommitFailed => "commit_failed",
            Event::UpstreamRequest { .. } => "upstream_request",
            Event::UpstreamError { .. } => "upstream_error",
            Event::Evicted { .. } => "evicted",
            Event::PeerFetch(_) => "peer_fetch",
            Event::Withdrawn { .. } => "withdrawn",
            Event::Sync { .. } => "sync",
            Event::Admission { .. } => "admission",
            Event::ScanVerdict { .. } => "scan_verdict",
            Event::GcFinished(_) => "gc_finished",
        }
    }
}

/// An admission decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdmissionOutcome {
    /// Served: it passed.
    Allowed,
    /// Refused: `403 DENIED`.
    Refused,
    /// It would have been refused, but the policy only audits: served.
    AuditOnly,
}

impl AdmissionOutcome {
    /// Every outcome, for exporters that pre-register their series.
    pub const ALL: [AdmissionOutcome; 3] = [
        AdmissionOutcome::Allowed,
        AdmissionOutcome::Refused,
        AdmissionOutcome::AuditOnly,
    ];

    /// `allowed`, `refused` or `audit_only`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionOutcome::Allowed => "allowed",
            AdmissionOutcome::Refused => "refused",
            AdmissionOutcome::AuditOnly => "audit_only",
        }
    }
}

/// How a fetch that found another instance's lease on its digest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerFetch {
    /// The other instance published the blob; it was served from the store.
    Published,
    /// The other instance's lease lapsed (it died or stalled); this one
    /// took the lease over and fetched.
    TakenOver,
    /// The other instance took longer than `lease_wait`; this one fetched
    /// as well.
    WaitedTooLong,
    /// The blob was streamed from the other instance as it fetched it
    /// (peer streaming), verified here.
    Streamed,
}

impl PeerFetch {
    /// Every outcome, for exporters that pre-register their series.
    pub const ALL: [PeerFetch; 4] = [
        PeerFetch::Published,
        PeerFetch::TakenOver,
        PeerFetch::WaitedTooLong,
        PeerFetch::Streamed,
    ];

    /// `published`, `taken_over`, `waited_too_long` or `streamed`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerFetch::Published => "published",
            PeerFetch::TakenOver => "taken_over",
            PeerFetch::WaitedTooLong => "waited_too_long",
            PeerFetch::Streamed => "streamed",
        }
    }
}

/// Receives engine events. Called inline: keep it cheap and non-blocking.
pub trait EventSink: Send + Sync + fmt::Debug {
    /// Records one event.
    fn event(&self, e: &Event<'_>);
}

impl<T: EventSink + ?Sized> EventSink for std::sync::Arc<T> {
    fn event(&self, e: &Event<'_>) {
        (**self).event(e)
    }
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn event(&self, _: &Event<'_>) {}
}

/// Counts events in atomics; a ready sink for tests and simple exporters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Manifests and blobs served from the cache.
    pub hits: AtomicU64,
    /// Manifests and blobs fetched from the upstream.
    pub misses: AtomicU64,
    /// Tags confirmed current by the upstream.
    pub revalidations: AtomicU64,
    /// Answers served stale because the upstream failed.
    pub stale: AtomicU64,
    /// "Not found" answered from the negative cache, without the upstream.
    pub negative: AtomicU64,
    /// Bytes delivered to readers.
    pub bytes_served: AtomicU64,
    /// Bytes received from upstreams.
    pub bytes_from_upstream: AtomicU64,
    /// Upstream blob fetches started.
    pub fetches_started: AtomicU64,
    /// Upstream blob fetches that ended (committed or not).
    pub fetches_finished: AtomicU64,
    /// Upstream blob fetches that failed verification, transfer or commit.
    pub fetches_failed: AtomicU64,
    /// Blobs that verified and were served, and then failed to commit.
    pub commits_failed: AtomicU64,
    /// Blob fetches refused because their registry's queue was full.
    pub fetch_queue_full: AtomicU64,
    /// Upstream errors.
    pub upstream_errors: AtomicU64,
    /// Requests made to upstreams, of every kind.
    pub upstream_requests: AtomicU64,
    /// Bytes evicted by gc or scrub.
    pub evicted_bytes: AtomicU64,
    /// Fetches served from what another instance published.
    pub peer_published: AtomicU64,
    /// Fetches that took over a lapsed lease of another instance.
    pub peer_taken_over: AtomicU64,
    /// Fetches that stopped waiting for another instance and fetched too.
    pub peer_waited_too_long: AtomicU64,
    /// Fetches streamed from the instance holding the lease.
    pub peer_streamed: AtomicU64,
    /// Bytes received from other instances (peer streaming).
    pub bytes_from_peers: AtomicU64,
    /// Admission decisions that served.
    pub admitted: AtomicU64,
    /// Admission decisions that refused.
    pub refused: AtomicU64,
    /// Admission decisions that would have refused, under an audit-only policy.
    pub audit_only: AtomicU64,
    /// Cached tags served although the upstream withdrew them.
    pub withdrawn_served: AtomicU64,
    /// Sync runs that ran (not those another instance was running).
    pub sync_runs: AtomicU64,
    /// Tags sync runs found cached anew (new, or moved upstream).
    pub sync_tags_new: AtomicU64,
}

impl Counters {
    /// Reads one counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

impl EventSink for Counters {
    fn event(&self, e: &Event<'_>) {
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        match e {
            Event::Manifest { status, .. } | Event::Blob { status, .. } => match status {
                CacheStatus::Hit => add(&self.hits, 1),
                CacheStatus::Miss => add(&self.misses, 1),
                CacheStatus::Revalidated => add(&self.revalidations, 1),
                CacheStatus::Stale => add(&self.stale, 1),
                CacheStatus::Negative => add(&self.negative, 1),
            },
            Event::NegativeHit { .. } => add(&self.negative, 1),
            Event::BytesServed(n) => add(&self.bytes_served, *n),
            Event::BytesFromUpstream(n) => add(&self.bytes_from_upstream, *n),
            Event::FetchStarted => add(&self.fetches_started, 1),
            Event::FetchFinished { committed, .. } => {
                add(&self.fetches_finished, 1);
                if !committed {
                    add(&self.fetches_failed, 1);
                }
            }
            Event::CommitFailed => add(&self.commits_failed, 1),
            Event::FetchQueueFull { .. } => add(&self.fetch_queue_full, 1),
            Event::UpstreamError { .. } => add(&self.upstream_errors, 1),
            Event::UpstreamRequest { .. } => add(&self.upstream_requests, 1),
            Event::Evicted { bytes } => add(&self.evicted_bytes, *bytes),
            Event::PeerFetch(PeerFetch::Published) => add(&self.peer_published, 1),
            Event::PeerFetch(PeerFetch::TakenOver) => add(&self.peer_taken_over, 1),
            Event::PeerFetch(PeerFetch::WaitedTooLong) => add(&self.peer_waited_too_long, 1),
            Event::Withdrawn { .. } => add(&self.withdrawn_served, 1),
            Event::Sync { report, .. } => {
                if report.skipped.is_none() {
                    add(&self.sync_runs, 1);
                    add(&self.sync_tags_new, report.tags_new as u64);
                }
            }
            Event::PeerFetch(PeerFetch::Streamed) => add(&self.peer_streamed, 1),
            Event::BytesFromPeer(n) => add(&self.bytes_from_peers, *n),
            Event::Admission { outcome, .. } => match outcome {
                AdmissionOutcome::Allowed => add(&self.admitted, 1),
                AdmissionOutcome::Refused => add(&self.refused, 1),
                AdmissionOutcome::AuditOnly => add(&self.audit_only, 1),
            },
            Event::ScanVerdict { .. } | Event::GcFinished(_) => {}
        }
    }
}
