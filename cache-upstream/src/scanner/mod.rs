//! A vulnerability gate through Harbor's Scanner Adapter API (the
//! pluggable-scanner-spec, v1.1 and v1.2), which the Trivy, Clair, Anchore,
//! Aqua and Sysdig adapters implement.
//!
//! [`ScannerClient`] speaks the API: `GET /api/v1/metadata` (the adapter
//! must consume OCI or Docker image manifests and produce Harbor's
//! vulnerability report, whose type it then asks for), `POST /api/v1/scan` naming this cache as the
//! registry with a short-lived pull credential scoped to the one
//! repository (so the scanner pulls the image through the cache, which
//! fetches it once), then `GET /api/v1/scan/{id}/report` until it is ready
//! (`302` with `Refresh-After` meanwhile).
//!
//! [`ScanGate`] is the engine's admission hook: per rule, a manifest is
//! served once a scan of its digest says it has no finding at or above the
//! rule's severity (minus accepted risks). Findings are kept in the cache's
//! store (`scans/<scanner>/<alg>/<hex>`), so they survive restarts and
//! replicas on one store share them, and are refreshed every `rescan` by a
//! background task: a new CVE turns an allowed image into a denied one
//! without anyone pulling it first. A first pull waits for the scan at most
//! `wait`, then gets `503` with `Retry-After` while the scan goes on.
//!
//! The gate runs on the engine's parts: its scans fly through the engine's
//! single-flight (`cache_core::runtime::Flights`: one scan per digest,
//! detached, bounded, time-limited), and it waits, stamps records and
//! paces rescans and report polls on the [`Clock`](cache_core::Clock) and
//! [`Spawner`](cache_core::Spawner) it is handed
//! ([`ScanGate::with_runtime`]; tokio's by default), so it runs on
//! `cache_core::testing::ManualClock` in tests.

mod client;
#[cfg(feature = "serde")]
mod config;
mod gate;
mod policy;

pub use client::*;
#[cfg(feature = "serde")]
pub use config::*;
pub use gate::*;
pub use policy::*;
