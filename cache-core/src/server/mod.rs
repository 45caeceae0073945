//! The server half of a pull-through cache, for any hyper or axum server
//! (feature `server`):
//!
//! * [`PullService`]: the pull API (`/v2/...`, answered by
//!   [`protocol`](crate::protocol)) as a `tower::Service`, with pull-side
//!   access ([`AuthConfig`], [`PullAuth`]; with `serde`, [`AuthSpec`]
//!   reads `[auth]`): [`Principal`]s (users, robot tokens, OIDC workload
//!   identities verified against a JWKS, `anonymous`, and the htpasswd
//!   users and static tokens with full access), [`Grant`]s of
//!   [`Action::Pull`] or [`Action::PullCached`] (which reads only what the
//!   store holds) on repository patterns, the registry token flow
//!   (`/token`, short-lived ES256 tokens of exactly the granted scopes,
//!   [`TokenSettings`]), failed logins throttled ([`ThrottleSettings`]);
//!   and caller scoping (a scanner's [`ScopedTokens`] credential reads its
//!   one repository as [`Caller::Scanner`](crate::Caller::Scanner), `403`
//!   elsewhere); it mounts at the root or under any path with axum's
//!   `nest_service`;
//! * [`PeerService`]: the peer endpoint, from which the other instances
//!   on a shared store stream what this one fetches under a lease
//!   ([`crate::peer`]), behind a shared secret;
//! * the transport: [`sendfile`] (stored blobs sent from their files,
//!   zero-copy, on HTTP/1) and [`conn`] ([`serve_connections`]: a
//!   connection cap, idle and send timeouts, TLS, graceful shutdown).
//!
//! The whole server, mounted next to an application's own routes:
//!
//! ```no_run
//! # async fn run(cache: cache_core::PullThroughCache) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use axum::routing::get;
//! use cache_core::server::{AuthConfig, ConnLimits, PullAuth, PullService, ScopedTokens, serve_connections};
//!
//! let users = AuthConfig::read_htpasswd("htpasswd".as_ref()).map_err(std::io::Error::other)?;
//! let scanners = Arc::new(ScopedTokens::new()); // a ScanGate's PullCredentials
//! let pull = PullService::new(cache).auth(PullAuth::new(users)).scoped(scanners);
//! let app = axum::Router::new()
//!     .route("/", get(|| async { "the host application" }))
//!     .nest_service("/mirror", pull.clone()) // /mirror/v2/... as well
//!     .fallback_service(pull);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! serve_connections(listener, app, ConnLimits::default(), None, std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! `cache-core`'s default build has none of this, nor its dependencies
//! (axum, hyper, tower, tokio's networking, bcrypt, rustls, jsonwebtoken).

mod access;
mod auth;
#[cfg(feature = "serde")]
mod auth_config;
pub mod conn;
mod oidc;
mod peer;
pub mod sendfile;
mod service;
mod throttle;
mod token;

pub use access::{
    ANONYMOUS, Action, Glob, Grant, Grants, Principal, PrincipalKind, PrincipalPattern,
};
pub use auth::{
    AuthConfig, MAX_CLOCK_SKEW, PullAuth, RobotToken, STATIC_TOKEN, ScopedTokens, UserConfig,
    UserPassword,
};
#[cfg(feature = "serde")]
pub use auth_config::AuthSpec;
pub use conn::{
    ConnBody, ConnLimits, ConnService, ConnThreads, Tls, serve_connections, serve_connections_on,
};
pub use oidc::{JwksFetch, MAX_JWKS_BYTES, MAX_TOKEN_BYTES, OidcConfig};
pub use peer::{PEER_PATH, PeerService};
pub use service::{AccessInfo, PullService};
pub use throttle::ThrottleSettings;
pub use token::{AccessEntry, MAX_SCOPES, SigningKey, TokenSettings};
