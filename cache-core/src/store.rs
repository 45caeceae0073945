//! The storage traits: a content-addressed blob store with staged writes,
//! and a small metadata space.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::digest::Digest;
use crate::error::{Error, InvalidKind, Result};
use crate::range::ByteRange;

/// A stream of content bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// Facts about a committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last read or written, as far as the store tracks it.
    /// [`BlobStore::list`] reports it; [`BlobStore::stat`] may leave it
    /// `None` where it would cost another request (object storage keeps
    /// access records apart from the blob).
    pub last_access: Option<SystemTime>,
}

/// A read of (part of) a stored blob.
#[derive(Debug)]
pub struct BlobRead {
    /// The size of the whole blob.
    pub size: u64,
    /// The half-open byte span the payload holds.
    pub range: Range<u64>,
    /// The bytes of `range`.
    pub payload: BlobPayload,
}

/// The bytes of a read: a stream, or a span of a local file (in the spirit
/// of object_store's `GetResultPayload`).
pub enum BlobPayload {
    /// The bytes as a stream, in order.
    Stream(ByteStream),
    /// The bytes are a span of a local file, which a server may send
    /// straight from it (Linux `sendfile(2)`).
    File(FileSpan),
}

/// Bytes that are a span of an open local file.
pub struct FileSpan {
    /// The open file. Its handle keeps the content readable even if the
    /// blob is deleted meanwhile.
    pub file: Arc<std::fs::File>,
    /// The half-open span of the file that holds the bytes.
    pub range: Range<u64>,
    /// The same bytes as a stream, for callers that cannot send from a
    /// file. Stores make it lazy, so dropping it unread costs nothing.
    pub stream: ByteStream,
}

impl BlobPayload {
    /// The bytes as a stream, whichever the payload.
    pub fn into_stream(self) -> ByteStream {
        match self {
            BlobPayload::Stream(s) => s,
            BlobPayload::File(f) => f.stream,
        }
    }

    /// The file span, if the bytes are one.
    pub fn file(&self) -> Option<&FileSpan> {
        match self {
            BlobPayload::File(f) => Some(f),
            BlobPayload::Stream(_) => None,
        }
    }
}

impl fmt::Debug for BlobPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobPayload::Stream(_) => f.write_str("Stream"),
            BlobPayload::File(s) => f.debug_tuple("File").field(&s.range).finish(),
        }
    }
}

impl fmt::Debug for FileSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSpan")
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// A key in the metadata space: `/`-separated segments of
/// `[A-Za-z0-9._-]`, none empty, `.` or `..`; at most 1024 bytes.
/// Safe to map onto a path or an object name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetaKey(Arc<str>);

impl MetaKey {
    /// Parses and validates a key.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason| Error::invalid(InvalidKind::MetaKey, s, reason);
        if s.is_empty() || s.len() > 1024 {
            return Err(invalid("must be 1 to 1024 bytes"));
        }
        for seg in s.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(invalid("segments must not be empty, '.' or '..'"));
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(invalid(
                    "segments may hold only letters, digits, '.', '_' and '-'",
                ));
            }
        }
        Ok(MetaKey(Arc::from(s)))
    }

    /// Builds a key from segments that are each validated.
    pub fn from_segments<'a>(segs: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let joined: Vec<&str> = segs.into_iter().collect();
        MetaKey::parse(&joined.join("/"))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` is `prefix` or lies beneath it.
    pub fn starts_with(&self, prefix: &MetaKey) -> bool {
        self.0 == prefix.0
            || (self.0.starts_with(&*prefix.0) && self.0.as_bytes()[prefix.0.len()] == b'/')
    }
}

impl fmt::Display for MetaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MetaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MetaKey({})", self.0)
    }
}

/// A content-addressed blob store with staged writes and a metadata space.
///
/// Contracts every implementation keeps (the conformance suite in
/// `cache_core::testing` checks them):
///
/// * Only committed blobs are visible to [`stat`](Self::stat),
///   [`get`](Self::get) and [`list`](Self::list). A staged write is
///   invisible to them until [`StagedBlob::commit`] returns `Ok`, and then
///   the whole blob is visible at once (publication is atomic). A crash at
///   any point leaves either the whole verified blob or nothing.
/// * A blob is committed only if the bytes written hash to its digest and,
///   when a size was announced, have that size.
/// * Concurrent staged writes of the same digest all succeed; one blob remains.
/// * Deleting is idempotent. Reads already under way when a blob is deleted
///   either finish with the whole content or fail; they never yield other bytes.
///
/// A new backend runs the conformance suite (`cache_core::testing`, feature
/// `testing`), as `cache-store`'s backends do. Behaviour added on top of
/// any store (metrics, limits) is a decorator that forwards:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::time::SystemTime;
///
/// use async_trait::async_trait;
/// use bytes::Bytes;
/// use cache_core::{BlobInfo, BlobRead, BlobStore, ByteRange, Digest, MetaKey, Result, StagedBlob};
/// use futures::stream::BoxStream;
///
/// /// Counts reads of committed blobs.
/// #[derive(Debug)]
/// struct Counting<S> { inner: S, reads: AtomicU64 }
///
/// #[async_trait]
/// impl<S: BlobStore> BlobStore for Counting<S> {
///     async fn get(&self, d: &Digest, r: Option<ByteRange>) -> Result<BlobRead> {
///         self.reads.fetch_add(1, Ordering::Relaxed);
///         self.inner.get(d, r).await
///     }
///     async fn stat(&self, d: &Digest) -> Result<Option<BlobInfo>> { self.inner.stat(d).await }
///     async fn stage(&self, d: &Digest, s: Option<u64>) -> Result<Box<dyn StagedBlob>> { self.inner.stage(d, s).await }
///     async fn delete(&self, d: &Digest) -> Result<bool> { self.inner.delete(d).await }
///     async fn list(&self) -> Result<BoxStream<'static, Result<BlobInfo>>> { self.inner.list().await }
///     async fn touch(&self, d: &Digest, at: SystemTime) -> Result<bool> { self.inner.touch(d, at).await }
///     async fn get_meta(&self, k: &MetaKey) -> Result<Option<Bytes>> { self.inner.get_meta(k).await }
///     async fn put_meta(&self, k: &MetaKey, v: Bytes) -> Result<()> { self.inner.put_meta(k, v).await }
///     async fn delete_meta(&self, k: &MetaKey) -> Result<bool> { self.inner.delete_meta(k).await }
///     async fn list_meta(&self, p: Option<&MetaKey>) -> Result<Vec<MetaKey>> { self.inner.list_meta(p).await }
///     async fn create_meta(&self, k: &MetaKey, v: Bytes) -> Result<bool> { self.inner.create_meta(k, v).await }
///     async fn replace_meta(&self, k: &MetaKey, old: &[u8], v: Bytes) -> Result<bool> { self.inner.replace_meta(k, old, v).await }
///     fn shared(&self) -> bool { self.inner.shared() }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use cache_core::BlobStoreExt;
/// let store = Counting { inner: cache_store::MemoryStore::new(), reads: AtomicU64::new(0) };
/// let d = Digest::sha256_of(b"hello");
/// store.put(&d, Bytes::from_static(b"hello")).await?;
/// assert_eq!(store.get_bytes(&d).await?, "hello");
/// assert_eq!(store.reads.load(Ordering::Relaxed), 1);
/// // Content that does not hash to its digest is never committed.
/// assert!(store.put(&d, Bytes::from_static(b"hellO")).await.is_err());
/// # Ok::<(), cache_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Facts about a committed blob, or `None` if it is not stored.
    async fn stat(&self, digest: &Digest) -> Result<Option<BlobInfo>>;

    /// Reads a committed blob, whole or one range of it.
    ///
    /// Fails with [`Error::BlobUnknown`] if absent and
    /// [`Error::RangeNotSatisfiable`] if `range` lies outside the blob.
    /// Does not update the access time; see [`touch`](Self::touch).
    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead>;

    /// Starts a staged write of the blob `digest`, announcing its size if known.
    ///
    /// Nothing written is visible through this store until commit. Dropping
    /// the handle without committing discards the staged bytes and leaves
    /// nothing behind.
    async fn stage(&self, digest: &Digest, size: Option<u64>) -> Result<Box<dyn StagedBlob>>;

    /// Removes a committed blob. Returns whether it existed. Idempotent.
    async fn delete(&self, digest: &Digest) -> Result<bool>;

    /// Lists committed blobs, in no particular order. Never lists staged data.
    async fn list(&self) -> Result<BoxStream<'static, Result<BlobInfo>>>;

    /// Records an access at `at` (for least-recently-used eviction).
    /// Returns whether the blob exists.
    async fn touch(&self, digest: &Digest, at: SystemTime) -> Result<bool>;

    /// Reads a metadata value.
    async fn get_meta(&self, key: &MetaKey) -> Result<Option<Bytes>>;

    /// Writes a metadata value, replacing any previous one atomically: a
    /// reader sees the old value or the new one, never a mix.
    async fn put_meta(&self, key: &MetaKey, value: Bytes) -> Result<()>;

    /// Removes a metadata value. Returns whether it existed. Idempotent.
    async fn delete_meta(&self, key: &MetaKey) -> Result<bool>;

    /// Lists the metadata keys equal to `prefix` or beneath it (all keys
    /// for `None`), in no particular order.
    async fn list_meta(&self, prefix: Option<&MetaKey>) -> Result<Vec<MetaKey>>;

    /// Writes `value` under `key` only if no value is there, atomically
    /// for everyone who uses the store (object storage: a conditional
    /// `PUT`). Returns whether this call wrote it; of several callers
    /// racing for one absent key, exactly one gets `true`.
    async fn create_meta(&self, key: &MetaKey, value: Bytes) -> Result<bool>;

    /// Replaces the value under `key` with `value` only if it is still
    /// `expected` (compare-and-swap), atomically for everyone who uses the
    /// store. Returns whether this call replaced it: `false` if the value
    /// is another or there is none. Of several callers racing to replace
    /// one value, at most one gets `true`.
    async fn replace_meta(&self, key: &MetaKey, expected: &[u8], value: Bytes) -> Result<bool>;

    /// Whether other processes may use this store at the same time
    /// (instances sharing an object store). The engine then coordinates
    /// through it, with leases made by [`create_meta`](Self::create_meta)
    /// and [`replace_meta`](Self::replace_meta): one upstream fetch per
    /// digest across instances, one gc at a time. A decorator forwards it.
    fn shared(&self) -> bool;
}

/// A write in progress. Created by [`BlobStore::stage`].
#[async_trait]
pub trait StagedBlob: Send + Sync + fmt::Debug {
    /// The digest the content must hash to.
    fn digest(&self) -> &Digest;

    /// Bytes written so far.
    fn written(&self) -> u64;

    /// Appends a chunk. Once this returns, the chunk is readable through
    /// every [`StagedReader`] of this write. Writing past an announced size
    /// fails with [`Error::SizeMismatch`] and the write is void.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Appends several chunks in order, as [`write`](Self::write) would
    /// one by one, with the same contract. Backends override it to save
    /// per-call overhead without copying the chunks together.
    async fn write_chunks(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        for c in chunks {
            self.write(c).await?;
        }
        Ok(())
    }

    /// A reader of the bytes written so far, for callers that stream a blob
    /// while it is being fetched. It keeps working after commit or abort.
    async fn reader(&self) -> Result<Arc<dyn StagedReader>>;

    /// Checks everything written against the digest (and the announced
    /// size) without publishing, so a caller may act on verified bytes
    /// (release them to readers) while [`commit`](Self::commit) makes
    /// them durable.
    ///
    /// * `Ok(true)`: the bytes written are the blob. No write may follow
    ///   (one fails and voids the write); `commit` publishes exactly these
    ///   bytes without hashing them again. It can still fail (a full disk,
    ///   an object store that does not answer), and then publishes nothing.
    /// * `Ok(false)`: this store checks only in `commit`; nothing is known
    ///   yet. The default, so a store that does not implement this method
    ///   is never taken to have verified anything.
    /// * A mismatch is [`Error::DigestMismatch`] or
    ///   [`Error::SizeMismatch`], as from `commit`, and voids the write:
    ///   `commit` then fails and publishes nothing.
    ///
    /// Calling it again after `Ok(true)` returns `Ok(true)`.
    async fn verify(&mut self) -> Result<bool> {
        Ok(false)
    }

    /// Verifies the digest (and announced size) of everything written,
    /// unless [`verify`](Self::verify) already did, and publishes the blob
    /// atomically. On a mismatch nothing is published, the staged bytes
    /// are discarded, and the error is [`Error::DigestMismatch`] or
    /// [`Error::SizeMismatch`]. Committing a blob that is already stored
    /// succeeds.
    async fn commit(self: Box<Self>) -> Result<BlobInfo>;

    /// Discards the staged bytes. Equivalent to dropping, but reports errors.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Reads the bytes of a staged write, as far as they have been written.
#[async_trait]
pub trait StagedReader: Send + Sync + fmt::Debug {
    /// Up to `max` bytes from `offset`. Returns fewer when fewer have been
    /// written so far, and an empty buffer at the current end; the caller
    /// learns how far the writer has got from the writer, not from here.
    async fn read_at(&self, offset: u64, max: usize) -> Result<Bytes>;

    /// The local file the staged bytes are written to, when they are one
    /// (a filesystem store's staging file, an object store's spool), so
    /// that once the blob verified a server may send it straight from the
    /// file (`sendfile(2)`) before the commit is done. The file holds the
    /// bytes written so far from offset 0, keeps them after commit or
    /// abort, and is never written by the caller. `None` (the default)
    /// where the bytes are not in a local file.
    fn file(&self) -> Option<Arc<std::fs::File>> {
        None
    }
}

/// Conveniences on top of [`BlobStore`], for every store.
#[async_trait]
pub trait BlobStoreExt: BlobStore {
    /// Stages `data`, verifies it against `digest`, and commits it.
    async fn put(&self, digest: &Digest, data: Bytes) -> Result<BlobInfo> {
        let mut w = self.stage(digest, Some(data.len() as u64)).await?;
        w.write(data).await?;
        w.commit().await
    }

    /// Reads a whole blob into memory. For small content (manifests, tests).
    async fn get_bytes(&self, digest: &Digest) -> Result<Bytes> {
        let r = self.get(digest, None).await?;
        let mut buf = Vec::with_capacity(usize::try_from(r.size).unwrap_or(0));
        let mut stream = r.payload.into_stream();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(buf))
    }

    /// Collects [`list`](BlobStore::list) into a vector.
    async fn list_all(&self) -> Result<Vec<BlobInfo>> {
        let mut s = self.list().await?;
        let mut out = Vec::new();
        while let Some(i) = s.next().await {
            out.push(i?);
        }
        Ok(out)
    }
}

impl<T: BlobStore + ?Sized> BlobStoreExt for T {}

macro_rules! forward_blob_store {
    ($ptr:ty) => {
        #[async_trait]
        impl<T: BlobStore + ?Sized> BlobStore for $ptr {
            async fn stat(&self, d: &Digest) -> Result<Option<BlobInfo>> {
                (**self).stat(d).await
            }
            async fn get(&self, d: &Digest, r: Option<ByteRange>) -> Result<BlobRead> {
                (**self).get(d, r).await
            }
            async fn stage(&self, d: &Digest, s: Option<u64>) -> Result<Box<dyn StagedBlob>> {
                (**self).stage(d, s).await
            }
            async fn delete(&self, d: &Digest) -> Result<bool> {
                (**self).delete(d).await
            }
            async fn list(&self) -> Result<BoxStream<'static, Result<BlobInfo>>> {
                (**self).list().await
            }
            async fn touch(&self, d: &Digest, at: SystemTime) -> Result<bool> {
                (**self).touch(d, at).await
            }
            async fn get_meta(&self, k: &MetaKey) -> Result<Option<Bytes>> {
                (**self).get_meta(k).await
            }
            async fn put_meta(&self, k: &MetaKey, v: Bytes) -> Result<()> {
                (**self).put_meta(k, v).await
            }
            async fn delete_meta(&self, k: &MetaKey) -> Result<bool> {
                (**self).delete_meta(k).await
            }
            async fn list_meta(&self, p: Option<&MetaKey>) -> Result<Vec<MetaKey>> {
                (**self).list_meta(p).await
            }
            async fn create_meta(&self, k: &MetaKey, v: Bytes) -> Result<bool> {
                (**self).create_meta(k, v).await
            }
            async fn replace_meta(&self, k: &MetaKey, old: &[u8], v: Bytes) -> Result<bool> {
                (**self).replace_meta(k, old, v).await
            }
            fn shared(&self) -> bool {
                (**self).shared()
            }
        }
    };
}

forward_blob_store!(Arc<T>);
forward_blob_store!(Box<T>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_keys_refuse_traversal_and_odd_characters() {
        MetaKey::parse("tags/library/nginx/Latest_1.2-x").unwrap();
        for bad in [
            "", "/a", "a/", "a//b", "a/../b", ".", "a/./b", "a b", "a\\b", "a%2fb",
        ] {
            assert!(MetaKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn meta_key_prefixes_respect_segment_boundaries() {
        let k = MetaKey::parse("tags/library/nginx").unwrap();
        assert!(k.starts_with(&MetaKey::parse("tags").unwrap()));
        assert!(k.starts_with(&MetaKey::parse("tags/library/nginx").unwrap()));
        assert!(!k.starts_with(&MetaKey::parse("tags/lib").unwrap()));
    }
}
