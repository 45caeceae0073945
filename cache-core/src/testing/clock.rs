//! A clock that moves only when told to, for time-dependent tests that
//! must not sleep.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::Clock;

#[derive(Debug)]
struct State {
    now: SystemTime,
    wakers: Vec<Waker>,
}

/// A [`Clock`] that starts at a fixed time and advances by [`ManualClock::advance`].
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<State>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock at 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        ManualClock {
            state: Arc::new(Mutex::new(State {
                now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
                wakers: Vec::new(),
            })),
        }
    }

    /// Moves time forward and wakes the sleepers whose time has come.
    pub fn advance(&self, d: Duration) {
        let wakers = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.now += d;
            std::mem::take(&mut s.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).now
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        let state = self.state.clone();
        let deadline = self.now() + d;
        poll_fn(move |cx| {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if s.now >= deadline {
                Poll::Ready(())
            } else {
                s.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .boxed()
    }
}
