//! # cache-upstream
//!
//! Implementations of [`cache_core::Upstream`]: `RegistryClient`, an OCI
//! Distribution API client with registry token and basic authentication,
//! and `OciLayout`, which serves an OCI image-layout directory for offline
//! use and tests. Both arrive with the upstream-client work; this crate is
//! the place they live.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub use cache_core::Upstream;
