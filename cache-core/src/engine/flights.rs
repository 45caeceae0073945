//! The engine's single-flight is [`crate::runtime::Flights`] (manifest
//! fetches and tag `HEAD`s); here is what a client is told when it is full.

use std::time::Duration;

use crate::runtime::Busy;
pub(crate) use crate::runtime::Flights;

use crate::error::Error;

/// `503` with a short `Retry-After`: too many manifest requests are up.
pub(crate) fn busy(b: Busy) -> Error {
    Error::unavailable(
        format!(
            "{} upstream requests are in flight; try again shortly",
            b.max
        ),
        Some(Duration::from_secs(1)),
    )
}
