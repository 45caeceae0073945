//! An in-memory [`BlobStore`], for tests and small deployments.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cache_core::{
    BlobInfo, BlobPayload, BlobRead, BlobStore, ByteRange, Digest, Error, Hasher, MetaKey, Result,
    StagedBlob, StagedReader,
};
use futures::stream::{self, BoxStream, StreamExt};

use crate::staged;

/// Chunk size of the streams [`MemoryStore::get`] returns (slices, not copies).
const CHUNK: usize = 256 * 1024;

#[derive(Debug)]
struct Entry {
    data: Bytes,
    last_access: SystemTime,
}

#[derive(Debug, Default)]
struct Inner {
    blobs: Mutex<HashMap<Digest, Entry>>,
    meta: Mutex<BTreeMap<MetaKey, Bytes>>,
    staged: AtomicUsize,
}

/// A [`BlobStore`] that keeps everything in memory. Cloning shares the store.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
    shared: bool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// This store, reporting itself [shared](BlobStore::shared): engines
    /// given clones of it coordinate as instances on one object store do
    /// (for tests of that coordination within one process).
    pub fn as_shared(&self) -> Self {
        MemoryStore {
            inner: self.inner.clone(),
            shared: true,
        }
    }

    /// Staged writes currently alive (for tests).
    pub fn staged_count(&self) -> usize {
        self.inner.staged.load(Ordering::SeqCst)
    }

    /// Total bytes of committed blobs.
    pub fn total_bytes(&self) -> u64 {
        lock(&self.inner.blobs)
            .values()
            .map(|e| e.data.len() as u64)
            .sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means another thread panicked mid-update of plain maps;
    // the maps themselves are still consistent (every update is one insert).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        Ok(lock(&self.inner.blobs).get(digest).map(|e| BlobInfo {
            digest: digest.clone(),
            size: e.data.len() as u64,
            last_access: Some(e.last_access),
        }))
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead> {
        let data = lock(&self.inner.blobs)
            .get(digest)
            .map(|e| e.data.clone())
            .ok_or_else(|| Error::blob_unknown(digest))?;
        let size = data.len() as u64;
        let span = match range {
            Some(r) => r.resolve(size)?,
            None => 0..size,
        };
        let body = data.slice(span.start as usize..span.end as usize);
        let chunks: Vec<Result<Bytes>> = (0..body.len())
            .step_by(CHUNK)
            .map(|i| Ok(body.slice(i..(i + CHUNK).min(body.len()))))
            .collect();
        Ok(BlobRead {
            size,
            range: span,
            payload: BlobPayload::Stream(stream::iter(chunks).boxed()),
        })
    }

    async fn stage(&self, digest: &Digest, size: Option<u64>) -> Result<Box<dyn StagedBlob>> {
        self.inner.staged.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(MemStaged {
            store: self.inner.clone(),
            digest: digest.clone(),
            size,
            hasher: Some(digest.algorithm().hasher()),
            buf: Arc::new(RwLock::new(Chunks::default())),
            written: 0,
            failed: false,
            verified: false,
        }))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        Ok(lock(&self.inner.blobs).remove(digest).is_some())
    }

    async fn list(&self) -> Result<BoxStream<'static, Result<BlobInfo>>> {
        let infos: Vec<Result<BlobInfo>> = lock(&self.inner.blobs)
            .iter()
            .map(|(d, e)| {
                Ok(BlobInfo {
                    digest: d.clone(),
                    size: e.data.len() as u64,
                    last_access: Some(e.last_access),
                })
            })
            .collect();
        Ok(stream::iter(infos).boxed())
    }

    async fn touch(&self, digest: &Digest, at: SystemTime) -> Result<bool> {
        Ok(match lock(&self.inner.blobs).get_mut(digest) {
            Some(e) => {
                e.last_access = at;
                true
            }
            None => false,
        })
    }

    async fn get_meta(&self, key: &MetaKey) -> Result<Option<Bytes>> {
        Ok(lock(&self.inner.meta).get(key).cloned())
    }

    async fn put_meta(&self, key: &MetaKey, value: Bytes) -> Result<()> {
        lock(&self.inner.meta).insert(key.clone(), value);
        Ok(())
    }

    async fn delete_meta(&self, key: &MetaKey) -> Result<bool> {
        Ok(lock(&self.inner.meta).remove(key).is_some())
    }

    async fn list_meta(&self, prefix: Option<&MetaKey>) -> Result<Vec<MetaKey>> {
        Ok(lock(&self.inner.meta)
            .keys()
            .filter(|k| prefix.is_none_or(|p| k.starts_with(p)))
            .cloned()
            .collect())
    }

    async fn create_meta(&self, key: &MetaKey, value: Bytes) -> Result<bool> {
        let mut m = lock(&self.inner.meta);
        if m.contains_key(key) {
            return Ok(false);
        }
        m.insert(key.clone(), value);
        Ok(true)
    }

    async fn replace_meta(&self, key: &MetaKey, expected: &[u8], value: Bytes) -> Result<bool> {
        let mut m = lock(&self.inner.meta);
        match m.get_mut(key) {
            Some(v) if v.as_ref() == expected => {
                *v = value;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn shared(&self) -> bool {
        self.shared
    }
}

/// Written chunks with their start offsets, shared with readers.
#[derive(Debug, Default)]
struct Chunks {
    starts: Vec<u64>,
    chunks: Vec<Bytes>,
    len: u64,
}

#[derive(Debug)]
struct MemStaged {
    store: Arc<Inner>,
    digest: Digest,
    size: Option<u64>,
    hasher: Option<Hasher>,
    buf: Arc<RwLock<Chunks>>,
    written: u64,
    failed: bool,
    /// The bytes written are the blob; nothing may be written since.
    verified: bool,
}

impl MemStaged {
    /// Checks size and digest once; later calls repeat a success.
    fn check(&mut self) -> Result<()> {
        if self.verified {
            return Ok(());
        }
        if self.failed {
            return Err(Error::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size.unwrap_or(0),
                actual: self.written,
            });
        }
        let hasher = self
            .hasher
            .take()
            .ok_or_else(|| staged::void(&self.digest))?;
        staged::verify(&self.digest, self.size, self.written, hasher)?;
        self.verified = true;
        Ok(())
    }
}

impl Drop for MemStaged {
    fn drop(&mut self) {
        self.store.staged.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl StagedBlob for MemStaged {
    fn digest(&self) -> &Digest {
        &self.digest
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.failed {
            return Err(Error::Unsupported {
                what: "writing to a staged blob after a failed write".into(),
            });
        }
        if self.verified {
            // Verified bytes are the blob: anything more voids the write.
            self.verified = false;
            self.failed = true;
            return Err(staged::void(&self.digest));
        }
        let new_len = self.written + chunk.len() as u64;
        if let Err(e) = staged::check_room(&self.digest, self.size, new_len) {
            self.failed = true;
            return Err(e);
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(&chunk);
        }
        if !chunk.is_empty() {
            let mut b = self.buf.write().unwrap_or_else(|p| p.into_inner());
            let start = b.len;
            b.starts.push(start);
            b.len += chunk.len() as u64;
            b.chunks.push(chunk);
        }
        self.written = new_len;
        Ok(())
    }

    async fn reader(&self) -> Result<Arc<dyn StagedReader>> {
        Ok(Arc::new(MemReader {
            buf: self.buf.clone(),
        }))
    }

    async fn verify(&mut self) -> Result<bool> {
        self.check()?;
        Ok(true)
    }

    async fn commit(mut self: Box<Self>) -> Result<BlobInfo> {
        self.check()?;
        let data = {
            let b = self.buf.read().unwrap_or_else(|p| p.into_inner());
            match b.chunks.as_slice() {
                [] => Bytes::new(),
                [one] => one.clone(),
                many => {
                    let mut out = BytesMut::with_capacity(b.len as usize);
                    for c in many {
                        out.extend_from_slice(c);
                    }
                    out.freeze()
                }
            }
        };
        let now = SystemTime::now();
        let size = data.len() as u64;
        lock(&self.store.blobs)
            .entry(self.digest.clone())
            .or_insert(Entry {
                data,
                last_access: now,
            });
        Ok(BlobInfo {
            digest: self.digest.clone(),
            size,
            last_access: Some(now),
        })
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct MemReader {
    buf: Arc<RwLock<Chunks>>,
}

#[async_trait]
impl StagedReader for MemReader {
    async fn read_at(&self, offset: u64, max: usize) -> Result<Bytes> {
        let b = self.buf.read().unwrap_or_else(|p| p.into_inner());
        if offset >= b.len || max == 0 {
            return Ok(Bytes::new());
        }
        let i = match b.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let within = (offset - b.starts[i]) as usize;
        let c = &b.chunks[i];
        Ok(c.slice(within..c.len().min(within + max)))
    }
}
