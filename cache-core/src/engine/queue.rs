//! Bounds on upstream work: a fetch queue per upstream registry, so one
//! busy or hostile upstream cannot starve the others, and the engine's one
//! retry layer with its per-operation budget.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::{Error, ErrorCode, Result};
use crate::events::Event;
pub(crate) use crate::events::UpstreamCall;

use super::Inner;

/// Blob transfers of one upstream registry: at most `running` at once, at
/// most `running + queued` admitted (running or waiting) at once.
#[derive(Debug)]
pub(crate) struct FetchQueue {
    permits: Arc<async_lock::Semaphore>,
    admitted: AtomicUsize,
    cap: usize,
    /// Passthrough ranges in flight (see [`FetchQueue::try_range`]).
    ranges: AtomicUsize,
}

/// A fetch's place in its queue; released when dropped.
pub(crate) struct QueueSlot {
    queue: Arc<FetchQueue>,
}

/// What a client is told to wait when the queue is full: long enough for a
/// typical layer transfer to finish and free a place.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(5);

impl FetchQueue {
    pub(crate) fn new(running: usize, queued: usize) -> Arc<Self> {
        let running = running.max(1);
        Arc::new(FetchQueue {
            permits: Arc::new(async_lock::Semaphore::new(running)),
            admitted: AtomicUsize::new(0),
            cap: running.saturating_add(queued),
            ranges: AtomicUsize::new(0),
        })
    }

    /// A place in the queue, or `Error::Unavailable` when it is full.
    pub(crate) fn enter(self: &Arc<Self>, registry: &impl std::fmt::Display) -> Result<QueueSlot> {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .map_err(|_| {
                Error::unavailable(
                    format!(
                        "{} blob fetches from {registry} are running or queued; try again shortly",
                        self.cap
                    ),
                    Some(FULL_RETRY_AFTER),
                )
            })?;
        Ok(QueueSlot {
            queue: self.clone(),
        })
    }
}

/// A passthrough range's places: one of the registry's running transfers
/// and one of its range places; released when dropped.
pub(crate) struct RangeSlot {
    queue: Arc<FetchQueue>,
    _running: async_lock::SemaphoreGuardArc,
}

impl Drop for RangeSlot {
    fn drop(&mut self) {
        self.queue.ranges.fetch_sub(1, Ordering::AcqRel);
    }
}

impl FetchQueue {
    /// Places for one passthrough range, if free right now: fewer than
    /// `cap` ranges in flight and a running transfer free (ranges count
    /// against the registry's bound like whole-blob fetches, and never
    /// queue: a range that cannot start at once waits for its blob).
    pub(crate) fn try_range(self: &Arc<Self>, cap: usize) -> Option<RangeSlot> {
        self.ranges
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        match self.permits.try_acquire_arc() {
            Some(running) => Some(RangeSlot {
                queue: self.clone(),
                _running: running,
            }),
            None => {
                self.ranges.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }
}

impl QueueSlot {
    /// Waits for a turn to run.
    pub(crate) async fn acquire(&self) -> async_lock::SemaphoreGuard<'_> {
        self.queue.permits.acquire().await
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.queue.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether an upstream error is worth another request: temporary faults,
/// but not a rate limit (asking again only spends more of it).
pub(crate) fn retryable(e: &Error) -> bool {
    e.is_temporary() && e.code() != ErrorCode::TooManyRequests
}

impl Inner {
    /// Waits before the `n`-th retry: `n` times the back-off unit; no wait
    /// at all for a zero unit.
    pub(crate) async fn backoff(&self, n: u32) {
        if !self.opts.retry_backoff.is_zero() {
            self.clock.sleep(self.opts.retry_backoff * n).await;
        }
    }

    /// Calls the upstream through the one retry layer: at most
    /// `1 + max_retries` requests, each counted as an event.
    pub(crate) async fn call<T, F, Fut>(&self, call: UpstreamCall, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut requests = 0u32;
        loop {
            requests += 1;
            self.events.event(&Event::UpstreamRequest { call });
            match f().await {
                Err(e) if retryable(&e) && requests <= self.opts.max_retries => {
                    tracing::debug!(error = %e, requests, "retrying an upstream request");
                    self.backoff(requests).await;
                }
                r => return r,
            }
        }
    }
}
