//! Serving connections with bounds a hostile client cannot stretch
//! (connection cap, idle and send timeouts, TLS, graceful shutdown): the
//! library's, from [`cache_core::server::conn`], re-exported.

pub use cache_core::server::conn::{ConnLimits, SendTimeout, serve_connections};
