//! Single-flight for small upstream requests (manifest GETs, tag HEADs):
//! whoever asks for a key while a flight for it is up joins it. A flight
//! runs detached and within a time limit, so a caller that gives up
//! neither cancels it for the others nor leaves it half done for the next
//! one; at most `max` fly at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};

use crate::error::{Error, Result};
use crate::runtime::{Clock, Spawner, timeout};

type Flight<T> = Shared<BoxFuture<'static, Result<T>>>;

/// The flights of one kind, keyed.
pub(crate) struct Flights<T> {
    map: Mutex<HashMap<String, Flight<T>>>,
    max: usize,
}

impl<T> Flights<T> {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Flights {
            map: Mutex::new(HashMap::new()),
            max: max.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight<T>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// Joins the flight for `key`, or starts one from `start()`, detached
    /// on `spawner`, failing with a timeout naming `what` after `limit`.
    pub(crate) async fn join_or_start<F>(
        self: &Arc<Self>,
        key: String,
        spawner: &dyn Spawner,
        clock: Arc<dyn Clock>,
        limit: Duration,
        what: impl FnOnce() -> String,
        start: impl FnOnce() -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let flight = {
            let mut map = self.lock();
            if let Some(f) = map.get(&key) {
                f.clone()
            } else {
                if map.len() >= self.max {
                    return Err(Error::unavailable(
                        format!(
                            "{} upstream requests are in flight; try again shortly",
                            self.max
                        ),
                        Some(Duration::from_secs(1)),
                    ));
                }
                let fut = start();
                let what = what();
                let flights = self.clone();
                let flight_key = key.clone();
                let flight = async move {
                    let r = timeout(&*clock, limit, fut).await.unwrap_or_else(|| {
                        Err(Error::timeout(format!("{what} took longer than {limit:?}")))
                    });
                    flights.lock().remove(&flight_key);
                    r
                }
                .boxed()
                .shared();
                map.insert(key, flight.clone());
                let driver = flight.clone();
                spawner.spawn(
                    async move {
                        let _ = driver.await;
                    }
                    .boxed(),
                );
                flight
            }
        };
        flight.await
    }
}
