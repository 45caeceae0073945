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
    /// A miss following the fetch, which a server able to send from files
    /// may take as [`Piece`]s: what a reader that fell behind the fetch's
    /// in-memory window reads comes as spans of the staged file, for
    /// `sendfile(2)`, instead of being copied into memory first. Same
    /// bytes, same hold-back and failure as [`BlobBody::Stream`]; see
    /// [`FollowBody`].
    Follow(FollowBody),
}

impl BlobBody {
    /// The bytes as a stream, whichever the body.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        match self {
            BlobBody::Stream(s) => s,
            BlobBody::File(f) => f.stream,
            BlobBody::Bytes(b) => futures::stream::once(async move { Ok(b.bytes) }).boxed(),
            BlobBody::Follow(f) => f.into_stream(),
        }
    }
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobBody::Stream(_) => f.write_str("Stream"),
            BlobBody::File(b) => f.debug_tuple("File").field(b).finish(),
            BlobBody::Bytes(b) => f.debug_tuple("Bytes").field(&b.bytes.len()).finish(),
            BlobBody::Follow(_) => f.write_str("Follow"),
        }
    }
}

/// A body following a fetch in progress. Read it as bytes
/// ([`into_stream`](Self::into_stream)), or, to send from files, as
/// [`Piece`]s ([`into_pieces`](Self::into_pieces)). Either way the span's
/// last byte comes only once the blob verified, and a failure ends the
/// stream with the error, so a response built from it never completes
/// with bytes of a blob that failed.
pub struct FollowBody {
    pub(crate) make: Box<dyn FnOnce(bool) -> BoxStream<'static, Result<Piece>> + Send>,
}

impl FollowBody {
    /// The bytes as a stream: what falls behind the fetch's window is read
    /// from the store into memory.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        bytes_only((self.make)(false))
    }

    /// The body as pieces: bytes from the fetch's window, and spans of the
    /// staged file for what fell behind it, when the store stages into a
    /// local file ([`StagedReader::file`](crate::StagedReader::file)).
    /// Each piece is counted as served when it is yielded, so a server
    /// sends every piece it takes.
    pub fn into_pieces(self) -> BoxStream<'static, Result<Piece>> {
        (self.make)(true)
    }
}

impl std::fmt::Debug for FollowBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FollowBody")
    }
}

/// Pieces made without files, as bytes.
pub(crate) fn bytes_only(
    pieces: BoxStream<'static, Result<Piece>>,
) -> BoxStream<'static, Result<Bytes>> {
    pieces
        .map(|p| match p? {
            Piece::Bytes(b) => Ok(b),
            // Never made without files; refuse rather than send nothing.
            Piece::File(f) => Err(crate::Error::storage_msg(
                "follow",
                format!("a file span ({} bytes) where bytes were asked for", f.len),
            )),
        })
        .boxed()
}

/// One piece of a [`FollowBody`].
#[derive(Debug)]
pub enum Piece {
    /// Bytes in memory.
    Bytes(Bytes),
    /// The next bytes of the body, in a local file.
    File(StagedSpan),
}

/// Bytes `offset..offset + len` of a local file: the store wrote them
/// before this span was made, and nothing writes them again (a staged
/// file only grows, and keeps its bytes after commit or abort). A file
/// found shorter than that must fail the transfer, not pad it.
#[derive(Debug, Clone)]
pub struct StagedSpan {
    /// The file.
    pub file: Arc<std::fs::File>,
    /// Where the span starts in it.
    pub offset: u64,
    /// How many bytes it has.
    pub len: usize,
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
