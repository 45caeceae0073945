//! Tokio's implementations of the engine's [`Spawner`] and [`Clock`].

use std::time::{Duration, SystemTime};

use cache_core::{Clock, Spawner};
use futures::FutureExt;
use futures::future::BoxFuture;

/// Spawns onto a tokio runtime and tells time with the system clock and
/// tokio's timers.
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// The runtime this is called from. Panics outside a tokio runtime.
    pub fn current() -> Self {
        TokioRuntime {
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// A specific runtime.
    pub fn with_handle(handle: tokio::runtime::Handle) -> Self {
        TokioRuntime { handle }
    }
}

impl Spawner for TokioRuntime {
    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        self.handle.spawn(fut);
    }
}

impl Clock for TokioRuntime {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(d).boxed()
    }
}
