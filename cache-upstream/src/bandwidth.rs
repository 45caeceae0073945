//! A registry's bandwidth cap: one token bucket that every blob body
//! fetched from it draws from (all its clients, whichever credential set,
//! clients' pulls and the cache's own jobs alike), so together they
//! receive at most `rate` bytes a second, after a burst of a tenth of a
//! second's worth.
//!
//! A body is metered in pieces small enough that none waits long (a
//! fetch whose bytes stopped for the engine's `stall_timeout` would be
//! resumed): at most a quarter of a second's worth each. Concurrent
//! transfers share the rate: each piece waits until the bytes taken
//! before it, by any transfer, are paid for.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

/// The lowest cap accepted, in bytes a second.
pub const MIN_RATE: u64 = 1024;

/// A token bucket of `rate` bytes a second; see the [module](self).
pub struct Bandwidth {
    rate: u64,
    burst: f64,
    state: Mutex<State>,
    waited_ns: AtomicU64,
    bytes: AtomicU64,
}

struct State {
    /// Bytes that may pass now; negative: owed.
    tokens: f64,
    last: Instant,
}

impl fmt::Debug for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bandwidth")
            .field("rate", &self.rate)
            .field("waited", &self.waited())
            .finish_non_exhaustive()
    }
}

/// Two caps are the same when their rates are.
impl PartialEq for Bandwidth {
    fn eq(&self, other: &Self) -> bool {
        self.rate == other.rate
    }
}

impl Eq for Bandwidth {}

impl Bandwidth {
    /// A cap of `rate` bytes a second (at least [`MIN_RATE`]), starting
    /// with its burst available.
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(MIN_RATE);
        let burst = (rate as f64 / 10.0).max(64.0 * 1024.0);
        Bandwidth {
            rate,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: Instant::now(),
            }),
            waited_ns: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// The cap, in bytes a second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// How long transfers waited for the cap, in all.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// Bytes that passed the cap, in all.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The largest piece a body is metered in: a quarter of a second's
    /// worth, at most 64 KiB.
    fn piece(&self) -> usize {
        ((self.rate / 4) as usize).clamp(256, 64 * 1024)
    }

    /// Takes `n` bytes from the bucket, waiting until they are paid for.
    pub async fn take(&self, n: usize) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(s.last).as_secs_f64() * self.rate as f64;
            s.tokens = (s.tokens + refill).min(self.burst) - n as f64;
            s.last = now;
            (s.tokens < 0.0).then(|| Duration::from_secs_f64(-s.tokens / self.rate as f64))
        };
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        // A debt under a millisecond is paid by the next piece's wait.
        if let Some(wait) = wait.filter(|w| *w >= Duration::from_millis(1)) {
            tokio::time::sleep(wait).await;
            self.waited_ns
                .fetch_add(wait.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// `body` metered: each piece passes once the bucket has it.
    pub fn meter<E: Send + 'static>(
        self: &std::sync::Arc<Self>,
        body: BoxStream<'static, Result<Bytes, E>>,
    ) -> BoxStream<'static, Result<Bytes, E>> {
        let piece = self.piece();
        let bw = self.clone();
        body.flat_map(move |c| {
            let pieces: Vec<Result<Bytes, E>> = match c {
                Ok(b) => (0..b.len())
                    .step_by(piece)
                    .map(|i| Ok(b.slice(i..(i + piece).min(b.len()))))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(pieces)
        })
        .then(move |c| {
            let bw = bw.clone();
            async move {
                if let Ok(b) = &c {
                    bw.take(b.len()).await;
                }
                c
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn two_transfers_share_the_rate_and_pieces_stay_small() {
        // 1 MiB/s, 100 KiB burst; two transfers of 256 KiB each.
        let bw = Arc::new(Bandwidth::new(1024 * 1024));
        let body = || {
            let chunks: Vec<Result<Bytes, ()>> = (0..4)
                .map(|_| Ok(Bytes::from(vec![7u8; 64 * 1024])))
                .collect();
            futures::stream::iter(chunks).boxed()
        };
        let start = Instant::now();
        let drain = |s: BoxStream<'static, Result<Bytes, ()>>| async move {
            let mut s = s;
            let (mut n, mut biggest) = (0, 0);
            while let Some(c) = s.next().await {
                let c = c.unwrap();
                biggest = biggest.max(c.len());
                n += c.len();
            }
            (n, biggest)
        };
        let (a, b) = tokio::join!(drain(bw.meter(body())), drain(bw.meter(body())));
        let took = start.elapsed();
        assert_eq!((a.0, b.0), (256 * 1024, 256 * 1024));
        assert!(a.1 <= 64 * 1024 && b.1 <= 64 * 1024);
        // 512 KiB at 1 MiB/s, less the 100 KiB burst: at least 0.4 s.
        assert!(took >= Duration::from_millis(390), "{took:?}");
        assert_eq!(bw.bytes(), 512 * 1024);
        assert!(bw.waited() > Duration::ZERO);
    }

    #[tokio::test]
    async fn an_error_passes_through_the_meter() {
        let bw = Arc::new(Bandwidth::new(1024 * 1024));
        let body: Vec<Result<Bytes, &str>> = vec![Ok(Bytes::from_static(b"ab")), Err("cut")];
        let got: Vec<_> = bw
            .meter(futures::stream::iter(body).boxed())
            .collect()
            .await;
        assert_eq!(got, vec![Ok(Bytes::from_static(b"ab")), Err("cut")]);
    }
}
