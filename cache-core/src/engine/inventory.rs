//! What the cache holds, for the people who run it: how much the store
//! holds.

use std::time::SystemTime;

use futures::StreamExt;

use super::{PullThroughCache, lock};
use crate::error::Result;

/// What the store held when it was last measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// Bytes of committed blobs.
    pub bytes: u64,
    /// Committed blobs.
    pub blobs: u64,
    /// When it was measured (on the engine's clock).
    pub measured_at: SystemTime,
}

impl PullThroughCache {
    /// Measures what the store holds by listing every blob (one pass of
    /// [`BlobStore::list`](crate::BlobStore::list): on object storage, a
    /// listing request per thousand blobs), and keeps it for
    /// [`store_usage`](Self::store_usage).
    pub async fn measure_usage(&self) -> Result<StoreUsage> {
        let mut listed = self.inner.store.list().await?;
        let (mut bytes, mut blobs) = (0u64, 0u64);
        while let Some(info) = listed.next().await {
            bytes += info?.size;
            blobs += 1;
        }
        let usage = StoreUsage {
            bytes,
            blobs,
            measured_at: self.inner.clock.now(),
        };
        *lock(&self.inner.usage) = Some(usage);
        Ok(usage)
    }

    /// What the store held when [`measure_usage`](Self::measure_usage)
    /// last measured it, if it did.
    pub fn store_usage(&self) -> Option<StoreUsage> {
        *lock(&self.inner.usage)
    }
}
