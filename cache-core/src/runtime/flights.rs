//! Single-flight: whoever asks for a key while a flight for it is up
//! joins it. The engine's manifest fetches and tag `HEAD`s fly this way,
//! and so do `cache-upstream`'s vulnerability scans.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};

use super::{Clock, Spawner, timeout};
use crate::error::Error;

/// A flight in progress: await it (any number of clones) for its result.
/// Dropping it cancels nothing.
pub type Flight<T, E = Error> = Shared<BoxFuture<'static, Result<T, E>>>;

type Map<T, E> = Arc<Mutex<HashMap<String, Flight<T, E>>>>;

/// The flights of one kind, by key, on one [`Spawner`] and [`Clock`].
///
/// The contract:
///
/// * **Joined.** One flight per key at a time: whoever asks for a key whose
///   flight is up joins it, and every joiner gets a clone of its one result
///   (`T` and `E` are `Clone`). Results are not kept: the flight leaves the
///   map as it ends (just before its result is handed out), so the next ask
///   starts a new one.
/// * **Detached.** A flight runs to completion on the spawner whether or
///   not anyone awaits it: a caller that gives up (drops its [`Flight`])
///   cancels nothing for the others, and a flight nobody awaits (a refresh
///   started in the background) still runs.
/// * **Time-limited.** A flight not finished within the limit, on the
///   clock, is dropped and ends with `E::from(`[`Aborted::TimedOut`]`)`.
/// * **Contained.** A flight that panics ends with
///   `E::from(`[`Aborted::Panicked`]`)`; the panic reaches no joiner.
/// * **Bounded.** At most `max` flights are up at once; asking for a new
///   key then is refused with [`Busy`] (nothing is queued), while joining
///   a flight that is up always works.
pub struct Flights<T, E = Error> {
    map: Map<T, E>,
    max: usize,
    limit: Duration,
    spawner: Arc<dyn Spawner>,
    clock: Arc<dyn Clock>,
}

impl<T, E> fmt::Debug for Flights<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flights")
            .field("up", &self.len())
            .field("max", &self.max)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// Why [`Flights::join_or_start`] started nothing: `max` flights are up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// The bound that was reached.
    pub max: usize,
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} flights are up", self.max)
    }
}

impl std::error::Error for Busy {}

/// Why a flight ended without a result of its own. `what` is the flight
/// as its starter described it (`manifest a/b:v1 from docker.io`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Aborted {
    /// It did not finish within its time limit, and was dropped.
    TimedOut {
        /// What flew.
        what: String,
        /// The limit it exceeded.
        limit: Duration,
    },
    /// It panicked.
    Panicked {
        /// What flew.
        what: String,
    },
}

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aborted::TimedOut { what, limit } => write!(f, "{what} took longer than {limit:?}"),
            Aborted::Panicked { what } => write!(f, "{what} failed unexpectedly (a panic)"),
        }
    }
}

impl std::error::Error for Aborted {}

impl From<Aborted> for Error {
    /// A time limit is an [`Error::Timeout`] (`504`); a panic is
    /// [`Error::Unavailable`] (`503`: another try starts a new flight).
    fn from(a: Aborted) -> Self {
        match a {
            Aborted::TimedOut { .. } => Error::timeout(a.to_string()),
            Aborted::Panicked { .. } => Error::unavailable(a.to_string(), None),
        }
    }
}

fn lock<T, E>(
    m: &Mutex<HashMap<String, Flight<T, E>>>,
) -> MutexGuard<'_, HashMap<String, Flight<T, E>>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T, E> Flights<T, E> {
    /// At most `max` (at least 1) flights at once, each within `limit` on
    /// `clock`, run on `spawner`.
    pub fn new(
        max: usize,
        limit: Duration,
        spawner: Arc<dyn Spawner>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
            max: max.max(1),
            limit,
            spawner,
            clock,
        }
    }

    /// How many flights are up.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no flight is up.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most flights up at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The time limit of each flight.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl<T, E> Flights<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + From<Aborted> + 'static,
{
    /// The flight for `key`: the one up, joined, or else a new one of the
    /// future `start()` makes, started now (detached, so it runs whether
    /// or not the returned [`Flight`] is awaited) and ending with
    /// [`Aborted::TimedOut`] naming `what()` after the limit. `start` and
    /// `what` are called only for a new flight, while these flights are
    /// locked: they make the future and its description, and must not ask
    /// these flights for anything. [`Busy`] when a new one is needed and
    /// `max` are up.
    pub fn join_or_start<F>(
        &self,
        key: String,
        what: impl FnOnce() -> String,
        start: impl FnOnce() -> F,
    ) -> Result<Flight<T, E>, Busy>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let mut map = lock(&self.map);
        if let Some(f) = map.get(&key) {
            return Ok(f.clone());
        }
        if map.len() >= self.max {
            return Err(Busy { max: self.max });
        }
        let fut = start();
        let what = what();
        let (flights, clock, limit, flight_key) = (
            self.map.clone(),
            self.clock.clone(),
            self.limit,
            key.clone(),
        );
        let flight = async move {
            let r = match timeout(&*clock, limit, AssertUnwindSafe(fut).catch_unwind()).await {
                Some(Ok(r)) => r,
                Some(Err(_panic)) => Err(E::from(Aborted::Panicked { what })),
                None => Err(E::from(Aborted::TimedOut { what, limit })),
            };
            lock(&flights).remove(&flight_key);
            r
        }
        .boxed()
        .shared();
        map.insert(key, flight.clone());
        drop(map);
        let driver = flight.clone();
        self.spawner.spawn(
            async move {
                let _ = driver.await;
            }
            .boxed(),
        );
        Ok(flight)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::runtime::TokioRuntime;
    use crate::testing::ManualClock;

    const LIMIT: Duration = Duration::from_secs(60);

    fn flights(max: usize, clock: &ManualClock) -> Flights<u32> {
        Flights::new(
            max,
            LIMIT,
            Arc::new(TokioRuntime::current()),
            Arc::new(clock.clone()),
        )
    }

    /// A flight that counts its start, sleeps `d` on `clock`, and answers 7.
    fn sleeper(
        clock: &ManualClock,
        d: Duration,
        starts: &Arc<AtomicUsize>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<u32, Error>> {
        let (clock, starts) = (clock.clone(), starts.clone());
        move || {
            async move {
                starts.fetch_add(1, Ordering::SeqCst);
                clock.sleep(d).await;
                Ok(7)
            }
            .boxed()
        }
    }

    /// Waits (in real time, briefly) until `clock` has `n` sleeps pending
    /// (a flight of [`sleeper`] has two: its own and its limit's).
    async fn sleeping(clock: &ManualClock, n: usize) {
        tokio::time::timeout(
            Duration::from_secs(10),
            clock.until_sleeps(move |s| s.len() == n),
        )
        .await
        .expect("the flights sleep on the clock");
    }

    #[tokio::test]
    async fn joiners_share_one_run_and_its_result() {
        let clock = ManualClock::new();
        let f = flights(4, &clock);
        let starts = Arc::new(AtomicUsize::new(0));
        let a = f
            .join_or_start(
                "k".into(),
                || "a".into(),
                sleeper(&clock, Duration::from_secs(5), &starts),
            )
            .unwrap();
        let b = f
            .join_or_start("k".into(), || unreachable!(), || async { Ok(8) }.boxed())
            .unwrap();
        sleeping(&clock, 2).await;
        assert_eq!(f.len(), 1);
        clock.advance(Duration::from_secs(5));
        assert_eq!((a.await.unwrap(), b.await.unwrap()), (7, 7));
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert!(f.is_empty(), "a finished flight leaves the map");
        // The next ask starts afresh.
        let c = f
            .join_or_start("k".into(), || "c".into(), || async { Ok(9) }.boxed())
            .unwrap();
        assert_eq!(c.await.unwrap(), 9);
    }

    #[tokio::test]
    async fn a_flight_nobody_awaits_runs_to_its_end() {
        let clock = ManualClock::new();
        let f = flights(4, &clock);
        let done = Arc::new(AtomicUsize::new(0));
        let (c, d) = (clock.clone(), done.clone());
        drop(
            f.join_or_start(
                "k".into(),
                || "k".into(),
                move || {
                    async move {
                        c.sleep(Duration::from_secs(5)).await;
                        d.fetch_add(1, Ordering::SeqCst);
                        Ok(1)
                    }
                    .boxed()
                },
            )
            .unwrap(),
        );
        sleeping(&clock, 2).await;
        clock.advance(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(10), async {
            while done.load(Ordering::SeqCst) == 0 || !f.is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the detached flight finished");
    }

    #[tokio::test]
    async fn new_keys_are_refused_at_the_bound_and_joins_are_not() {
        let clock = ManualClock::new();
        let f = flights(1, &clock);
        let starts = Arc::new(AtomicUsize::new(0));
        let a = f
            .join_or_start(
                "a".into(),
                || "a".into(),
                sleeper(&clock, Duration::from_secs(5), &starts),
            )
            .unwrap();
        let refused = f.join_or_start("b".into(), || "b".into(), || async { Ok(1) }.boxed());
        assert_eq!(refused.err(), Some(Busy { max: 1 }));
        let joined = f
            .join_or_start("a".into(), || "a".into(), || async { Ok(2) }.boxed())
            .unwrap();
        sleeping(&clock, 2).await;
        clock.advance(Duration::from_secs(5));
        assert_eq!((a.await.unwrap(), joined.await.unwrap()), (7, 7));
        let b = f
            .join_or_start("b".into(), || "b".into(), || async { Ok(1) }.boxed())
            .unwrap();
        assert_eq!(b.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_panicking_flight_fails_its_joiners_and_the_next_ask_starts_afresh() {
        let clock = ManualClock::new();
        let f = flights(4, &clock);
        let a = f
            .join_or_start(
                "k".into(),
                || "manifest a:v1".into(),
                || async { panic!("a bug in the flight") }.boxed(),
            )
            .unwrap();
        let e = a.clone().await.unwrap_err();
        assert!(
            e.to_string().contains("manifest a:v1 failed unexpectedly"),
            "{e}"
        );
        assert_eq!(e.http_status(), 503);
        assert!(
            a.await.is_err(),
            "every joiner gets the error, not the panic"
        );
        assert!(f.is_empty());
        let b = f
            .join_or_start("k".into(), || "b".into(), || async { Ok(3) }.boxed())
            .unwrap();
        assert_eq!(b.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_flight_past_its_limit_times_out_on_the_clock_and_is_dropped() {
        let started = std::time::Instant::now();
        let clock = ManualClock::new();
        let f = flights(4, &clock);
        let starts = Arc::new(AtomicUsize::new(0));
        let a = f
            .join_or_start(
                "k".into(),
                || "manifest a:v1".into(),
                sleeper(&clock, Duration::from_secs(3600), &starts),
            )
            .unwrap();
        // The flight's own sleep and its limit.
        sleeping(&clock, 2).await;
        assert_eq!(clock.sleeps(), [LIMIT, Duration::from_secs(3600)]);
        clock.advance(LIMIT - Duration::from_secs(1));
        assert!(a.clone().now_or_never().is_none(), "not yet");
        clock.advance(Duration::from_secs(1));
        let e = a.await.unwrap_err();
        assert!(
            e.to_string().contains("manifest a:v1 took longer than 60s"),
            "{e}"
        );
        assert_eq!(e.http_status(), 504);
        assert!(f.is_empty());
        assert_eq!(
            clock.sleeps(),
            Vec::<Duration>::new(),
            "the flight was dropped with its sleep"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
