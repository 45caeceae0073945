//! # cache-core
//!
//! The engine of a container-registry pull-through cache, as a library:
//!
//! * validated OCI types ([`Digest`], [`RepoName`], [`Tag`], [`Reference`],
//!   [`Registry`], [`ImageRef`], [`ByteRange`]): inner code never
//!   re-validates, and never builds a path from a raw request string;
//! * caching rules ([`RuleSet`]): the allow-list that maps a local
//!   repository to an upstream one, indexed so a lookup does not scan;
//! * [`VerifyingStream`], which hashes content as it streams and refuses a
//!   clean end when the bytes do not match their digest;
//! * the traits the engine is built on: [`Upstream`] (where content comes
//!   from) and [`BlobStore`] (where it is kept), each with its contract;
//! * one error type, [`Error`], mapped to OCI error codes ([`ErrorCode`]).
//!
//! `cache-core` depends on no async runtime, HTTP client or filesystem, so
//! it embeds in any service. Backends live in `cache-store`, the registry
//! client in `cache-upstream`.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod digest;
mod engine;
mod error;
pub mod events;
pub mod manifest;
mod names;
pub mod policy;
#[cfg(feature = "http")]
pub mod protocol;
mod range;
pub mod rules;
pub mod runtime;
mod store;
mod upstream;
mod verify;

#[cfg(feature = "testing")]
pub mod testing;

pub use digest::{Algorithm, Digest, Hasher};
pub use engine::{
    BlobBody, BlobResponse, CacheBuilder, CacheOptions, FileBody, GcReport, ImagePlan,
    ManifestResponse, PullReport, PullThroughCache, ScrubReport, TagList,
};
pub use error::{BoxError, Error, ErrorCode, InvalidKind, Result, SharedError};
pub use events::{CacheStatus, Event, EventSink, UpstreamCall};
pub use names::{
    DOCKER_HUB, DOCKER_HUB_API_HOST, ImageRef, MAX_NAME_LEN, Reference, Registry, RepoName, Tag,
};
pub use policy::{
    Admission, AdmissionRequest, MaxImageSize, PlatformAllowList, RulePolicy, TagFreshness,
};
pub use range::ByteRange;
pub use rules::{Explanation, Resolved, Rule, RuleSet, RuleSpec};
pub use runtime::{Clock, Spawner};
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

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
