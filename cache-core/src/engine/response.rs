//! What the engine answers with.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;

use super::InUse;
use crate::digest::Digest;
use crate::error::Result;
use crate::events::{CacheStatus, Event, EventSink};
use crate::names::Tag;

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

/// A blob answer: its size, the span being streamed, and the stream.
pub struct BlobResponse {
    /// The whole blob's size.
    pub size: u64,
    /// The half-open span `stream` yields.
    pub range: Range<u64>,
    /// Where it came from.
    pub status: CacheStatus,
    /// The bytes. On a miss, the stream follows the upstream fetch and ends
    /// with an error, never cleanly, if the blob fails verification.
    pub stream: BoxStream<'static, Result<Bytes>>,
    /// On a hit from a store that keeps blobs in local files, the same
    /// bytes as a span of an open file, for a server that sends them
    /// straight from it (Linux `sendfile(2)`) instead of copying them
    /// through `stream`. Use one or the other: `stream` is lazy, so
    /// dropping it unread costs nothing.
    pub file: Option<FileBody>,
}

/// A stored blob's bytes as a span of an open local file; see
/// [`BlobResponse::file`].
///
/// While it lives, garbage collection leaves the blob alone, as it does
/// for a stream being read. Report what is sent with
/// [`sent`](Self::sent) so the served-bytes counter stays true.
pub struct FileBody {
    pub(crate) file: Arc<std::fs::File>,
    pub(crate) range: Range<u64>,
    pub(crate) events: Arc<dyn EventSink>,
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
}

impl std::fmt::Debug for FileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBody")
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for BlobResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobResponse")
            .field("size", &self.size)
            .field("range", &self.range)
            .field("status", &self.status)
            .field("file", &self.file)
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
