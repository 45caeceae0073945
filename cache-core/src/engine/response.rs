//! What the engine answers with.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::InUse;
use crate::digest::Digest;
use crate::error::Result;
use crate::events::{CacheStatus, Event, EventSink};
use crate::names::{RepoName, Tag};

/// A manifest answer.
#[derive(Clone, PartialEq, Eq)]
pub struct ManifestResponse {
    /// The manifest, byte-exact as the upstream sent it.
    pub bytes: Bytes,
    /// The upstream's media type.
    pub media_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
    /// Where it came from.
    pub status: CacheStatus,
}

impl std::fmt::Debug for ManifestResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestResponse")
            .field("digest", &self.digest)
            .field("media_type", &self.media_type)
            .field("len", &self.bytes.len())
            .field("status", &self.status)
            .finish()
    }
}

/// A blob answer: its size, the span being answered, and its bytes.
#[derive(Debug)]
pub struct BlobResponse {
    /// The whole blob's size.
    pub size: u64,
    /// The half-open span `body` holds.
    pub range: Range<u64>,
    /// Where it came from.
    pub status: CacheStatus,
    /// Whether the bytes are checked against the digest: `false` only for
    /// a passthrough range (a rule's `cold_ranges = "passthrough"`), served
    /// before the blob verified, which a server should say
    /// (`X-Content-Verified: false`).
    pub verified: bool,
    /// The bytes.
    pub body: BlobBody,
}

/// The bytes of a blob answer.
pub enum BlobBody {
    /// A stream. On a miss it follows the upstream fetch and ends with an
    /// error, never cleanly, if the blob fails verification (and before
    /// the span's last byte).
    Stream(BoxStream<'static, Result<Bytes>>),
    /// A verified stored blob kept in a local file, which a server may
    /// send straight from it (Linux `sendfile(2)`); see [`FileBody`].
    File(FileBody),
    /// Small verified content held in memory (a config blob, say): a
    /// server sends it as one piece; see [`MemoryBody`].
    Bytes(MemoryBody),
}

impl BlobBody {
    /// The bytes as a stream, whichever the body.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        match self {
            BlobBody::Stream(s) => s,
            BlobBody::File(f) => f.stream,
            BlobBody::Bytes(b) => futures::stream::once(async move { Ok(b.bytes) }).boxed(),
        }
    }
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobBody::Stream(_) => f.write_str("Stream"),
            BlobBody::File(b) => f.debug_tuple("File").field(b).finish(),
            BlobBody::Bytes(b) => f.debug_tuple("Bytes").field(&b.bytes.len()).finish(),
        }
    }
}

/// Small verified content held in memory, already counted as served.
///
/// It holds no file, so unlike a [`FileBody`] or a stream it does not keep
/// garbage collection from the blob: what it sends is already in memory.
pub struct MemoryBody {
    pub(crate) bytes: Bytes,
}

impl MemoryBody {
    /// The content (the span asked for, whole).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The content.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

impl std::fmt::Debug for MemoryBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBody")
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A stored blob's bytes as a span of an open local file.
///
/// While it lives, garbage collection leaves the blob alone, as it does
/// for a stream being read. A server that sends from the file reports what
/// it sent with [`sent`](Self::sent), so the served-bytes counter stays
/// true; one that cannot takes [`into_stream`](Self::into_stream).
pub struct FileBody {
    pub(crate) file: Arc<std::fs::File>,
    pub(crate) range: Range<u64>,
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) stream: BoxStream<'static, Result<Bytes>>,
    pub(crate) _in_use: InUse,
}

impl FileBody {
    /// The open file. Its bytes [`range`](Self::range) are the content;
    /// nothing else of it may be sent. A file shorter than that (cut by
    /// something outside the store) must fail the transfer, not pad it.
    pub fn file(&self) -> &Arc<std::fs::File> {
        &self.file
    }

    /// The half-open span of the file to send.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// Records `n` bytes as sent to the client.
    pub fn sent(&self, n: u64) {
        self.events.event(&Event::BytesServed(n));
    }

    /// The same bytes as a stream (read by the store), counted as served.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        self.stream
    }
}

impl std::fmt::Debug for FileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBody")
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// A tag listing answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagList {
    /// The tags, in lexical order.
    pub tags: Vec<Tag>,
    /// `Miss` when the upstream answered, `Stale` when cached tags stood in.
    pub status: CacheStatus,
}

/// A referrers answer: an OCI image index of the manifests whose
/// `subject` is the digest asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrers {
    /// The image index, byte-exact as served.
    pub index: Bytes,
    /// Whether it was filtered by `artifactType`.
    pub filtered: bool,
    /// `Hit` from the cache, `Miss` fetched, `Stale` cached while the
    /// upstream fails.
    pub status: CacheStatus,
}

/// A page of the catalog: local repositories with content in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// The repositories, in lexical order.
    pub repositories: Vec<RepoName>,
    /// Whether more follow.
    pub more: bool,
}
