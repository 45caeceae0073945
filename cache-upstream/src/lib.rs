//! # cache-upstream
//!
//! Implementations of [`cache_core::Upstream`]:
//!
//! * [`RegistryClient`]: the OCI Distribution API over HTTP (reqwest with
//!   rustls): bearer-token and basic authentication with tokens cached per
//!   repository until they expire, every manifest media type in `Accept`,
//!   verified manifests, streamed and ranged blobs, redirects that never
//!   carry credentials to another host nor lead to internal addresses,
//!   credentials sent to a token realm only on the registry's own domain
//!   ([`AddressPolicy`]), every buffered body capped, 429 as
//!   `TOOMANYREQUESTS` with its `Retry-After`, timeouts, and typed errors
//!   from upstream OCI error bodies, and a registry's bandwidth cap
//!   ([`Bandwidth`], shared by its clients). It makes one request per
//!   call: the engine is the one retry layer;
//! * [`OciLayout`]: an OCI image-layout directory, for offline use,
//!   air-gapped import and tests;
//! * [`scanner`]: the vulnerability gate: a client of Harbor's Scanner
//!   Adapter API (`ScannerClient`) and `ScanGate`, the engine's admission
//!   hook that scans each new image once (on the engine's `Flights`,
//!   `Spawner` and `Clock`), keeps findings in the store, judges them by a
//!   rule's `ScanPolicy` and rescans in the background;
//! * [`webhook`]: events out: `Webhooks`, an `EventSink` decorator that
//!   sends the engine's events (pulls, fetches, denials, scan verdicts,
//!   gc) to HTTP receivers as CloudEvents or plain JSON, signed with
//!   HMAC-SHA256, through a bounded queue with retries, past the same
//!   address policy as upstream redirects.
//!
//! With the `serde` feature, [`ClientOptions`], a registry entry
//! (`RegistryConfig`), a credential set (`CredentialSet`), a scanner
//! (`scanner::ScannerConfig`), a rule's vulnerability policy
//! (`scanner::ScanPolicy`) and a webhook (`webhook::WebhookConfig`) deserialise and validate themselves, with
//! errors that name the key and the value.
//!
//! With the `testing` feature, the `testing` module is the workspace's test
//! kit: it starts the Debian distribution registry on loopback, builds and
//! pushes deterministic test images, runs `HostileRegistry` (an upstream
//! that misbehaves on demand) and `TestScanner` (a scanner adapter), and
//! launches the `registry-proxy` binary for tests and benches
//! (`RegistryProxy`).
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod auth;
pub mod bandwidth;
mod client;
#[cfg(feature = "serde")]
mod config;
#[cfg(feature = "jwks")]
mod jwks;
mod layout;
mod peer;
mod pem;
mod policy;
pub mod scanner;
pub mod stamp;
pub mod webhook;

#[cfg(feature = "testing")]
pub mod testing;

pub use auth::{Challenge, Credentials, PasswordSource, Secret};
pub use bandwidth::Bandwidth;
pub use client::{ClientOptions, RateLimit, RegistryClient, TlsOptions};
#[cfg(feature = "serde")]
pub use config::{CredentialSet, PreparedRegistry, RegistryConfig};
#[cfg(feature = "jwks")]
pub use jwks::JwksClient;
pub use layout::OciLayout;
pub use peer::{PeerClient, peer_client_tls};
pub use policy::{AddressPolicy, Refused, is_public};
