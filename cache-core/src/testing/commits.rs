//! [`CommitFaults`]: a store decorator that holds or fails commits after
//! the bytes verified, for tests of what happens between verification and
//! durability, and holds staged writes, for tests of what readers get
//! before the store has written the bytes.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::{
    BlobInfo, BlobRead, BlobStore, ByteRange, Digest, Error, MetaKey, Result, StagedBlob,
    StagedReader,
};

#[derive(Default)]
struct State {
    hold: bool,
    hold_writes: bool,
    fail_next: usize,
    waiting: usize,
    writes_waiting: usize,
    committed: usize,
    failed: usize,
    wakers: Vec<Waker>,
}

/// Wraps a store; its staged writes verify as the inner store's do
/// ([`StagedBlob::verify`] is forwarded), and their commits can be held
/// until [`release`](Self::release)d ([`hold`](Self::hold)) or made to
/// fail after verifying, as a full disk or an object store that stops
/// answering would ([`fail_next`](Self::fail_next)). Staged writes can be
/// held too, as a slow disk would ([`hold_writes`](Self::hold_writes)).
/// Everything else is forwarded. Counts what its commits did.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use cache_core::{BlobStore, BlobStoreExt, Digest};
/// use cache_core::testing::CommitFaults;
///
/// let store = CommitFaults::new(Arc::new(cache_store::MemoryStore::new()));
/// let d = Digest::sha256_of(b"layer");
/// store.fail_next(1);
/// assert!(store.put(&d, bytes::Bytes::from_static(b"layer")).await.is_err());
/// assert!(store.stat(&d).await?.is_none(), "a failed commit publishes nothing");
/// store.put(&d, bytes::Bytes::from_static(b"layer")).await?;
/// assert_eq!((store.failed(), store.committed()), (1, 1));
/// # Ok::<(), cache_core::Error>(())
/// # }).unwrap();
/// ```
pub struct CommitFaults {
    inner: Arc<dyn BlobStore>,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for CommitFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitFaults")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CommitFaults {
    /// Wraps `inner`; commits go through until told otherwise.
    pub fn new(inner: Arc<dyn BlobStore>) -> Arc<Self> {
        Arc::new(CommitFaults {
            inner,
            state: Arc::default(),
        })
    }

    /// Holds every commit from now on, after its bytes verified, until
    /// [`release`](Self::release).
    pub fn hold(&self) {
        lock(&self.state).hold = true;
    }

    /// Lets held commits (and later ones) go on.
    pub fn release(&self) {
        self.set(|s| s.hold = false);
    }

    /// Holds every staged write from now on, before it reaches the inner
    /// store, until [`release_writes`](Self::release_writes).
    pub fn hold_writes(&self) {
        lock(&self.state).hold_writes = true;
    }

    /// Lets held writes (and later ones) go on.
    pub fn release_writes(&self) {
        self.set(|s| s.hold_writes = false);
    }

    /// Staged writes waiting to be released now.
    pub fn writes_waiting(&self) -> usize {
        lock(&self.state).writes_waiting
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        let wakers = {
            let mut s = lock(&self.state);
            f(&mut s);
            std::mem::take(&mut s.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Fails the next `n` commits after their bytes verified (a held
    /// commit fails once released); nothing of them is published.
    pub fn fail_next(&self, n: usize) {
        lock(&self.state).fail_next = n;
    }

    /// Commits waiting to be released now.
    pub fn waiting(&self) -> usize {
        lock(&self.state).waiting
    }

    /// Commits that published their blob.
    pub fn committed(&self) -> usize {
        lock(&self.state).committed
    }

    /// Commits failed on purpose.
    pub fn failed(&self) -> usize {
        lock(&self.state).failed
    }
}

#[async_trait]
impl BlobStore for CommitFaults {
    async fn stat(&self, d: &Digest) -> Result<Option<BlobInfo>> {
        self.inner.stat(d).await
    }
    async fn get(&self, d: &Digest, r: Option<ByteRange>) -> Result<BlobRead> {
        self.inner.get(d, r).await
    }
    async fn stage(&self, d: &Digest, size: Option<u64>) -> Result<Box<dyn StagedBlob>> {
        Ok(Box::new(Staged {
            inner: self.inner.stage(d, size).await?,
            state: self.state.clone(),
        }))
    }
    async fn delete(&self, d: &Digest) -> Result<bool> {
        self.inner.delete(d).await
    }
    async fn list(&self) -> Result<BoxStream<'static, Result<BlobInfo>>> {
        self.inner.list().await
    }
    async fn touch(&self, d: &Digest, at: SystemTime) -> Result<bool> {
        self.inner.touch(d, at).await
    }
    async fn get_meta(&self, k: &MetaKey) -> Result<Option<Bytes>> {
        self.inner.get_meta(k).await
    }
    async fn put_meta(&self, k: &MetaKey, v: Bytes) -> Result<()> {
        self.inner.put_meta(k, v).await
    }
    async fn delete_meta(&self, k: &MetaKey) -> Result<bool> {
        self.inner.delete_meta(k).await
    }
    async fn list_meta(&self, p: Option<&MetaKey>) -> Result<Vec<MetaKey>> {
        self.inner.list_meta(p).await
    }
    async fn create_meta(&self, k: &MetaKey, v: Bytes) -> Result<bool> {
        self.inner.create_meta(k, v).await
    }
    async fn replace_meta(&self, k: &MetaKey, old: &[u8], v: Bytes) -> Result<bool> {
        self.inner.replace_meta(k, old, v).await
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
}

/// Waits while `held`, counted meanwhile in the field `waiting` returns.
async fn gate(
    state: &Mutex<State>,
    held: fn(&State) -> bool,
    waiting: fn(&mut State) -> &mut usize,
) {
    *waiting(&mut lock(state)) += 1;
    poll_fn(|cx| {
        let mut s = lock(state);
        if held(&s) {
            s.wakers.push(cx.waker().clone());
            Poll::Pending
        } else {
            *waiting(&mut s) -= 1;
            Poll::Ready(())
        }
    })
    .await
}

struct Staged {
    inner: Box<dyn StagedBlob>,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for Staged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CommitFaults::Staged")
            .field(&self.inner)
            .finish()
    }
}

#[async_trait]
impl StagedBlob for Staged {
    fn digest(&self) -> &Digest {
        self.inner.digest()
    }
    fn written(&self) -> u64 {
        self.inner.written()
    }
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.write_chunks(vec![chunk]).await
    }
    async fn write_chunks(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        gate(&self.state, |s| s.hold_writes, |s| &mut s.writes_waiting).await;
        self.inner.write_chunks(chunks).await
    }
    async fn reader(&self) -> Result<Arc<dyn StagedReader>> {
        self.inner.reader().await
    }
    async fn verify(&mut self) -> Result<bool> {
        self.inner.verify().await
    }
    async fn commit(mut self: Box<Self>) -> Result<BlobInfo> {
        // Faults come after verification: only verified bytes get this far.
        self.inner.verify().await?;
        gate(&self.state, |s| s.hold, |s| &mut s.waiting).await;
        let fail = {
            let mut s = lock(&self.state);
            let fail = s.fail_next > 0;
            if fail {
                s.fail_next -= 1;
                s.failed += 1;
            }
            fail
        };
        if fail {
            let digest = self.inner.digest().clone();
            drop(self.inner);
            return Err(Error::storage_msg(
                "commit",
                format!("committing {digest} failed: no space left on device (injected)"),
            ));
        }
        let info = self.inner.commit().await?;
        lock(&self.state).committed += 1;
        Ok(info)
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}
