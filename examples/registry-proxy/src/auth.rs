//! Pull-side client authentication (htpasswd users, bearer tokens) and the
//! scanners' repository-scoped credentials: the library's, from
//! [`cache_core::server`], re-exported where the server's modules and
//! tests have always found them.

pub use cache_core::server::{PullAuth, ScopedTokens};
