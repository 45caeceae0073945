//! A clock that moves only when told to, for time-dependent tests that
//! must not sleep.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::Clock;

#[derive(Debug)]
struct State {
    now: SystemTime,
    /// The pending sleeps (polled, not yet due) by id: deadline and waker.
    sleeps: HashMap<u64, (SystemTime, Waker)>,
    next_id: u64,
    /// Tasks in [`ManualClock::until_sleeps`], woken when `sleeps` changes.
    watchers: Vec<Waker>,
}

impl State {
    fn changed(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.watchers)
    }
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn wake(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

/// A [`Clock`] that starts at a fixed time and advances by [`ManualClock::advance`].
///
/// A test drives time-dependent code without sleeping: it waits until the
/// code is blocked on this clock ([`until_sleeps`](Self::until_sleeps),
/// [`sleeps`](Self::sleeps)), then moves the clock
/// ([`advance`](Self::advance), [`advance_to_next`](Self::advance_to_next)),
/// which wakes exactly the sleeps that came due. Clones share one clock.
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
                sleeps: HashMap::new(),
                next_id: 0,
                watchers: Vec::new(),
            })),
        }
    }

    /// Moves time forward by `d` and wakes the sleeps that came due.
    pub fn advance(&self, d: Duration) {
        let wakers = {
            let mut s = lock(&self.state);
            s.now += d;
            let now = s.now;
            let due: Vec<u64> = s
                .sleeps
                .iter()
                .filter(|(_, (deadline, _))| *deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            let mut wakers: Vec<Waker> = due
                .iter()
                .filter_map(|id| s.sleeps.remove(id).map(|(_, w)| w))
                .collect();
            if !wakers.is_empty() {
                wakers.extend(s.changed());
            }
            wakers
        };
        wake(wakers);
    }

    /// Moves time forward to the soonest pending sleep's deadline, waking
    /// it (and any due at the same time): how far it moved, or `None` (and
    /// no move) when nothing sleeps.
    pub fn advance_to_next(&self) -> Option<Duration> {
        let next = self.sleeps().first().copied()?;
        self.advance(next);
        Some(next)
    }

    /// The time left of each pending sleep (one polled at least once and
    /// not yet due nor dropped), soonest first.
    pub fn sleeps(&self) -> Vec<Duration> {
        let s = lock(&self.state);
        let mut left: Vec<Duration> = s
            .sleeps
            .values()
            .map(|(deadline, _)| deadline.duration_since(s.now).unwrap_or_default())
            .collect();
        left.sort();
        left
    }

    /// Completes once `pred` holds of [`sleeps`](Self::sleeps), checked now
    /// and each time a sleep starts, comes due or is dropped: a test awaits
    /// it to know the code under test is blocked on this clock (say, on a
    /// 30 s timeout: `until_sleeps(|s| s.contains(&thirty))`) before it
    /// advances the clock. It never completes if the code never sleeps so:
    /// put a real-time limit around it.
    pub fn until_sleeps(
        &self,
        mut pred: impl FnMut(&[Duration]) -> bool + Send + 'static,
    ) -> BoxFuture<'static, ()> {
        let this = self.clone();
        poll_fn(move |cx| {
            // Registered before looking, so no change between the two is missed.
            {
                let mut s = lock(&this.state);
                if !s.watchers.iter().any(|w| w.will_wake(cx.waker())) {
                    s.watchers.push(cx.waker().clone());
                }
            }
            if pred(&this.sleeps()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .boxed()
    }
}

/// One [`ManualClock::sleep`]: registered while pending, so the clock
/// can tell a test who sleeps; deregistered when due or dropped.
struct Sleep {
    state: Arc<Mutex<State>>,
    deadline: SystemTime,
    id: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut s = lock(&this.state);
        if s.now >= this.deadline {
            let mut watchers = Vec::new();
            if let Some(id) = this.id.take()
                && s.sleeps.remove(&id).is_some()
            {
                watchers = s.changed();
            }
            drop(s);
            wake(watchers);
            return Poll::Ready(());
        }
        let watchers = match this.id {
            Some(id) if s.sleeps.contains_key(&id) => {
                if let Some(entry) = s.sleeps.get_mut(&id) {
                    entry.1 = cx.waker().clone();
                }
                Vec::new()
            }
            _ => {
                let id = s.next_id;
                s.next_id += 1;
                s.sleeps.insert(id, (this.deadline, cx.waker().clone()));
                this.id = Some(id);
                s.changed()
            }
        };
        drop(s);
        wake(watchers);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let watchers = {
                let mut s = lock(&self.state);
                if s.sleeps.remove(&id).is_some() {
                    s.changed()
                } else {
                    Vec::new()
                }
            };
            wake(watchers);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        lock(&self.state).now
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Sleep {
            state: self.state.clone(),
            deadline: self.now() + d,
            id: None,
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once(f: &mut BoxFuture<'static, ()>) -> Poll<()> {
        f.as_mut()
            .poll(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }

    #[test]
    fn sleeps_wake_when_due_and_the_clock_tells_who_sleeps() {
        let clock = ManualClock::new();
        let mut short = clock.sleep(Duration::from_secs(1));
        let mut long = clock.sleep(Duration::from_secs(30));
        // Not polled yet: nobody sleeps.
        assert_eq!(clock.sleeps(), Vec::<Duration>::new());
        assert!(poll_once(&mut long).is_pending());
        assert!(poll_once(&mut short).is_pending());
        assert_eq!(
            clock.sleeps(),
            [Duration::from_secs(1), Duration::from_secs(30)]
        );
        let mut watch = clock.until_sleeps(|s| s.len() == 1);
        assert!(poll_once(&mut watch).is_pending());
        clock.advance(Duration::from_millis(999));
        assert!(poll_once(&mut short).is_pending());
        assert_eq!(clock.advance_to_next(), Some(Duration::from_millis(1)));
        assert!(poll_once(&mut watch).is_ready(), "one sleep left");
        assert!(poll_once(&mut short).is_ready());
        assert!(poll_once(&mut long).is_pending());
        assert_eq!(clock.sleeps(), [Duration::from_secs(29)]);
        // A dropped sleep sleeps no more.
        drop(long);
        assert_eq!(clock.sleeps(), Vec::<Duration>::new());
        assert_eq!(clock.advance_to_next(), None);
        // A sleep made now counts from now.
        let mut again = clock.sleep(Duration::from_secs(2));
        clock.advance(Duration::from_secs(1));
        assert!(poll_once(&mut again).is_pending());
        clock.advance(Duration::from_secs(1));
        assert!(poll_once(&mut again).is_ready());
    }
}
