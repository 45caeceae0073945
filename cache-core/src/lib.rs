//! # cache-core
//!
//! The engine of a container-registry pull-through cache, as a library.
//! [`PullThroughCache`] serves the pull side of the OCI Distribution API for
//! the repositories its caching rules declare: it fetches each manifest and
//! blob from its upstream once however many clients ask, verifies every
//! byte against its digest before a client receives the last one, keeps it
//! in a [`BlobStore`], and serves it from there afterwards. Anything no rule
//! declares is refused without touching an upstream.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use cache_core::prelude::*;
//! use cache_core::testing::{FakeUpstream, ManualClock, content};
//!
//! // An upstream with one image (cache_upstream::RegistryClient in real use).
//! let hub = std::sync::Arc::new(FakeUpstream::new("docker.io", std::sync::Arc::new(ManualClock::new())));
//! let img = hub.push_image(&RepoName::parse("library/app")?, &Tag::parse("v1")?, &[content(1, 1000)]);
//! let cache = PullThroughCache::builder()
//!     .rule(RuleSpec::new("hub", "docker.io/library/*", "library/*"))
//!     .store(cache_store::MemoryStore::new())
//!     .tokio()
//!     .upstream("docker.io", hub.clone())
//!     .build()?;
//! let name = RepoName::parse("library/app")?;
//! let m = cache.manifest(&name, &Reference::parse("v1")?, &Accept::any()).await?;
//! assert_eq!((m.digest, m.status), (img.manifest, CacheStatus::Miss));
//! let report = cache.pull_image(&name, &Reference::parse("v1")?, &[], 4).await?;
//! assert_eq!(report.blobs, 2); // config and layer, verified and stored
//! # Ok::<(), cache_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! What else is here:
//!
//! * validated OCI types ([`Digest`], [`RepoName`], [`Tag`], [`Reference`],
//!   [`Registry`], [`ImageRef`], [`ByteRange`]): inner code never
//!   re-validates, and never builds a path from a raw request string;
//! * caching rules ([`RuleSet`]): the allow-list that maps a local
//!   repository to an upstream one, indexed so a lookup does not scan;
//! * the traits the engine is built on: [`Upstream`] (where content comes
//!   from) and [`BlobStore`] (where it is kept), each with its contract, and
//!   [`Spawner`] and [`Clock`] (feature `tokio`: `runtime::TokioRuntime`),
//!   and on them [`runtime::Flights`], the one single-flight;
//! * `config` (feature `serde`): the configurable types (`CacheOptions`,
//!   rules and their policies) deserialise and validate themselves;
//! * `protocol` (feature `http`): the pull API sans IO, for any server;
//! * `console` (feature `console`): a read-only web console over what the
//!   engine holds (repositories, tags, images, decisions, rules);
//! * one error type, [`Error`], mapped to OCI error codes ([`ErrorCode`])
//!   and HTTP statuses;
//! * `testing` (feature `testing`): the store conformance suite, a
//!   fault-injecting upstream and a manual clock.
//!
//! `cache-core` depends on no async runtime, HTTP client or filesystem, so
//! it embeds in any service. Backends live in `cache-store`, the registry
//! client in `cache-upstream`.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

#[cfg(feature = "serde")]
pub mod config;
#[cfg(feature = "console")]
pub mod console;
pub mod cosign;
mod digest;
mod engine;
mod error;
pub mod events;
pub mod keys;
pub mod manifest;
mod names;
pub mod peer;
pub mod policy;
#[cfg(feature = "http")]
pub mod protocol;
mod range;
pub mod rules;
pub mod runtime;
mod secret;
#[cfg(feature = "server")]
pub mod server;
pub mod signatures;
mod store;
mod upstream;
mod verify;

#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "trust")]
pub mod trust;

pub use digest::{Algorithm, Digest, Hasher};
pub use engine::{
    AdmissionRecord, BlobBody, BlobResponse, CacheBuilder, CacheOptions, Catalog, Denial, FileBody,
    FollowBody, GcReport, ImagePlan, ImageView, LayerView, ManifestResponse, ManifestView,
    MemoryBody, Piece, PlatformView, PullReport, PullStats, PullThroughCache, PurgeReport,
    Referrers, RepoPage, RepoSummary, ScrubReport, StagedSpan, StoreUsage, SyncReport, TagList,
    TagRow, TagRows, WeakCache,
};
pub use error::{BoxError, Error, ErrorCode, InvalidKind, Result, SharedError};
pub use events::{AdmissionOutcome, CacheStatus, Event, EventSink, PeerFetch, UpstreamCall};
pub use names::{
    DOCKER_HUB, DOCKER_HUB_API_HOST, ImageRef, LocalRef, MAX_NAME_LEN, Reference, Registry,
    RepoName, Tag,
};
pub use policy::{
    Admission, AdmissionRequest, Caller, ColdRanges, FetchPolicy, MaxImageSize, PlatformAllowList,
    Prefetch, PullCredentials, RulePolicy, SignatureMode, SignaturePolicy, TagFreshness, Verdict,
};
pub use range::ByteRange;
pub use rules::{Explanation, Resolved, Rule, RuleSet, RuleSpec};
pub use runtime::{Clock, Spawner};
pub use secret::Secret;
pub use store::{
    BlobInfo, BlobPayload, BlobRead, BlobStore, BlobStoreExt, ByteStream, FileSpan, MetaKey,
    StagedBlob, StagedReader,
};
pub use upstream::{
    Accept, Manifest, ManifestHead, TagPage, Upstream, UpstreamBlob, manifest_from_bytes,
    media_types,
};
pub use verify::VerifyingStream;

/// What a program that embeds the engine uses most, in one import:
/// `use cache_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Accept, BlobBody, BlobResponse, BlobStore, BlobStoreExt, ByteRange, CacheOptions,
        CacheStatus, Digest, Error, ErrorCode, ManifestResponse, PullThroughCache, Reference,
        Registry, RepoName, Result, RulePolicy, RuleSet, RuleSpec, Tag, TagFreshness, TagPage,
        Upstream,
    };
}

/// The README's examples, compiled as doctests (they use the `server`
/// feature, which the workspace's test command turns on).
#[cfg(all(doctest, feature = "server"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
