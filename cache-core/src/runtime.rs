//! What the engine needs from an async runtime, as two small traits: a
//! spawner for detached fetches and a clock for freshness, TTLs and
//! timeouts. With the `tokio` feature, `TokioRuntime` is tokio's; tests
//! can pass a manual clock (`testing::ManualClock`).
//!
//! Built on the two: [`Flights`], the workspace's one single-flight
//! (detached, bounded, time-limited, joiners share the result), and
//! [`timeout`].

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, Either, select};

mod flights;

pub use flights::{Aborted, Busy, Flight, Flights};

/// Runs futures to completion in the background.
pub trait Spawner: Send + Sync + fmt::Debug {
    /// Starts `fut`; it must run to completion even when nobody awaits it.
    fn spawn(&self, fut: BoxFuture<'static, ()>);

    /// Starts `fut` as [`Spawner::spawn`] does, but where the caller runs
    /// if the runtime has such a place (the caller's own thread or
    /// runtime), so that a fetch runs beside the request that started it
    /// and the readers on that thread take turns with it. The engine uses
    /// it for a fetch a request starts and nothing else. `fut` may be
    /// dropped unfinished if that place shuts down first; the engine then
    /// fails the fetch's readers. The default is [`Spawner::spawn`].
    fn spawn_near(&self, fut: BoxFuture<'static, ()>) {
        self.spawn(fut)
    }
}

/// Tells the time and sleeps.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// A future that completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

impl<T: Spawner + ?Sized> Spawner for std::sync::Arc<T> {
    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        (**self).spawn(fut)
    }

    fn spawn_near(&self, fut: BoxFuture<'static, ()>) {
        (**self).spawn_near(fut)
    }
}

impl<T: Clock + ?Sized> Clock for std::sync::Arc<T> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        (**self).sleep(d)
    }
}

/// Spawns onto a tokio runtime and tells time with the system clock and
/// tokio's timers (feature `tokio`).
#[cfg(feature = "tokio")]
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    /// `None`: the runtime each spawn is called from.
    handle: Option<tokio::runtime::Handle>,
    /// Whether [`Spawner::spawn_near`] also goes to `handle`, rather than
    /// to the runtime it is called from.
    pinned: bool,
}

#[cfg(feature = "tokio")]
impl TokioRuntime {
    /// The runtime this is called from. Panics outside a tokio runtime.
    /// [`Spawner::spawn_near`] spawns on the runtime *it* is called from
    /// (a connection thread's, with `server::ConnThreads`), falling back
    /// to this one.
    pub fn current() -> Self {
        TokioRuntime {
            handle: Some(tokio::runtime::Handle::current()),
            pinned: false,
        }
    }

    /// A specific runtime, for every spawn ([`Spawner::spawn_near`] too).
    pub fn with_handle(handle: tokio::runtime::Handle) -> Self {
        TokioRuntime {
            handle: Some(handle),
            pinned: true,
        }
    }

    /// The runtime each spawn is called from, as `tokio::spawn` (which
    /// panics outside one): a value that can be made before any runtime
    /// exists, for a default that is only used on one.
    pub fn ambient() -> Self {
        TokioRuntime {
            handle: None,
            pinned: false,
        }
    }
}

#[cfg(feature = "tokio")]
impl Spawner for TokioRuntime {
    fn spawn(&self, fut: BoxFuture<'static, ()>) {
        // Detached: the join handles are dropped.
        match &self.handle {
            Some(h) => {
                h.spawn(fut);
            }
            None => {
                tokio::spawn(fut);
            }
        }
    }

    /// On the runtime the caller runs on (a connection thread's, say:
    /// `server::ConnThreads`), else as [`Spawner::spawn`]; made with
    /// [`TokioRuntime::with_handle`], always as [`Spawner::spawn`].
    fn spawn_near(&self, fut: BoxFuture<'static, ()>) {
        match tokio::runtime::Handle::try_current() {
            Ok(h) if !self.pinned => {
                h.spawn(fut);
            }
            _ => self.spawn(fut),
        }
    }
}

#[cfg(feature = "tokio")]
impl Clock for TokioRuntime {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        use futures::FutureExt;
        tokio::time::sleep(d).boxed()
    }
}

/// `2024-05-01T12:34:56.789Z`: RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The civil date (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Runs `fut`, or gives up with `None` after `d` on `clock`.
pub async fn timeout<F: Future>(clock: &dyn Clock, d: Duration, fut: F) -> Option<F::Output> {
    let fut = std::pin::pin!(fut);
    match select(fut, clock.sleep(d)).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where `rt` runs a future given to `spawn_near` from a task on a
    /// runtime whose threads are named `caller`: the thread's name.
    #[cfg(feature = "tokio")]
    fn spawned_near_on(rt: TokioRuntime) -> String {
        use futures::FutureExt;
        let caller = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("caller")
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        caller.spawn(async move {
            rt.spawn_near(
                async move {
                    let name = std::thread::current().name().map(str::to_owned);
                    let _ = tx.send(name.unwrap_or_default());
                }
                .boxed(),
            );
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap()
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn spawn_near_runs_on_the_callers_runtime_unless_pinned_to_one() {
        let own = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("own")
            .build()
            .unwrap();
        let current = own.block_on(async { TokioRuntime::current() });
        assert_eq!(spawned_near_on(current), "caller");
        assert_eq!(spawned_near_on(TokioRuntime::ambient()), "caller");
        let pinned = TokioRuntime::with_handle(own.handle().clone());
        assert_eq!(spawned_near_on(pinned), "own", "with_handle: there");
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // a leap year's Feb 29
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_800); // 2100-01-01
        assert_eq!(rfc3339(t), "2100-01-01T00:00:00.000Z");
    }
}
