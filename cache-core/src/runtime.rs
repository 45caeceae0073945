//! What the engine needs from an async runtime, as two small traits: a
//! spawner for detached fetches and a clock for freshness, TTLs and
//! timeouts. `cache-store` provides tokio's; tests can pass a manual clock.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, Either, select};

/// Runs futures to completion in the background.
pub trait Spawner: Send + Sync + fmt::Debug {
    /// Starts `fut`; it must run to completion even when nobody awaits it.
    fn spawn(&self, fut: BoxFuture<'static, ()>);
}

/// Tells the time and sleeps.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// A future that completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// Runs `fut`, or gives up with `None` after `d` on `clock`.
pub async fn timeout<F: Future>(clock: &dyn Clock, d: Duration, fut: F) -> Option<F::Output> {
    let fut = std::pin::pin!(fut);
    match select(fut, clock.sleep(d)).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}
