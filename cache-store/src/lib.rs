//! # cache-store
//!
//! Storage backends implementing [`cache_core::BlobStore`]:
//!
//! * [`MemoryStore`]: everything in memory, for tests and small deployments;
//! * [`FsStore`]: a local directory, the default: staged writes in the same
//!   filesystem, verified, fsynced and renamed into place, so that nothing
//!   partial is ever visible, not even after a crash;
//! * [`ObjectBlobStore`]: object storage through `object_store` (Azure
//!   Blob, S3, GCS), so that several cache instances can share one store.
//!
//! With the `serde` feature, `StorageConfig` is the store as configured
//! (`backend = "fs" | "object" | "memory"` and its keys), validated when
//! read, with an `open()` that returns the store.
//!
//! [`TokioRuntime`] hands the engine tokio's spawner and timers.
//!
//! Every backend passes the conformance suite in `cache_core::testing`.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

#[cfg(feature = "serde")]
mod config;
mod fs;
mod memory;
mod object;
mod runtime;
mod staged;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "serde")]
pub use config::{Backend, OptionValue, StorageConfig};
pub use fs::{FsStore, FsStoreOptions};
pub use memory::MemoryStore;
pub use object::ObjectBlobStore;
pub use runtime::TokioRuntime;
