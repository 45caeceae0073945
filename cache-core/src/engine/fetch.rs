//! One upstream fetch per digest, shared by every reader: the leader runs
//! detached, writes into a staged blob while hashing, and publishes; every
//! reader (the first included) streams the staged bytes as they arrive.
//!
//! The last byte of every span is held back until the whole blob has
//! verified, so a reader of content that turns out wrong never receives a
//! complete response: its stream ends with the error one byte short. It
//! goes out as soon as the blob verified, where the store can tell
//! ([`StagedBlob::verify`]); making it durable (fsync, rename, an upload)
//! follows without holding anyone. A commit that fails after that fails
//! the readers still streaming, publishes nothing, and is counted
//! ([`Event::CommitFailed`]); the next request fetches again.

use std::collections::{HashSet, VecDeque};
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use super::queue::{QueueSlot, UpstreamCall};
use super::response::bytes_only;
use super::{InUse, Inner, Piece, StagedSpan, lease};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::{Event, PeerFetch};
use crate::names::RepoName;
use crate::range::ByteRange;
use crate::runtime::timeout;
use crate::store::{StagedBlob, StagedReader};
use crate::upstream::{Upstream, UpstreamBlob};

#[derive(Debug)]
pub(crate) enum Outcome {
    /// Verified and published by this fetch.
    Committed,
    /// Already in the store when the fetch began: read it from there.
    InStore,
    /// Failed; every reader gets this error.
    Failed(Error),
    /// Every reader left while the fetch waited for its turn, so it never
    /// started. A reader that finds a deserted fetch starts a new one.
    Deserted,
}

#[derive(Default)]
struct State {
    version: u64,
    /// Bytes received so far: the window's end. Readers may have them (all
    /// but the last byte of their span before verification) while the store
    /// is still writing them.
    written: u64,
    /// Bytes the store has written so far, readable through `reader`: never
    /// past `written`.
    staged: u64,
    /// The most recently received chunks (offset, bytes): the last
    /// `follow_window` bytes, and any before them the store has not written
    /// yet (which its write queue holds anyway). Readers that keep up take
    /// zero-copy slices of these; readers that fall behind read the staged
    /// file, which always has what left the window.
    recent: VecDeque<(u64, Bytes)>,
    recent_bytes: usize,
    total: Option<u64>,
    reader: Option<Arc<dyn StagedReader>>,
    /// The whole blob hashed to its digest: every reader may have its
    /// last byte, though the commit may still be running.
    verified: bool,
    outcome: Option<Outcome>,
    wakers: Vec<Waker>,
    /// Readers waiting for or streaming this blob (see [`Interest`]).
    readers: usize,
}

impl State {
    /// A slice of the window starting at `pos`, at most up to `end`.
    fn recent_slice(&self, pos: u64, end: u64) -> Option<Bytes> {
        let i = self
            .recent
            .partition_point(|(off, b)| off + b.len() as u64 <= pos);
        let (off, b) = self.recent.get(i)?;
        if *off > pos {
            return None;
        }
        let from = (pos - off) as usize;
        let to = ((end - off) as usize).min(b.len());
        (from < to).then(|| b.slice(from..to))
    }

    /// Drops the oldest chunks past `window` bytes that the store has
    /// written: a chunk leaves memory only once the file has it.
    fn trim(&mut self, window: usize) {
        while self.recent_bytes > window {
            match self.recent.front() {
                Some((off, old)) if off + old.len() as u64 <= self.staged => {
                    self.recent_bytes -= old.len();
                    self.recent.pop_front();
                }
                _ => break,
            }
        }
    }

    fn finished(&self) -> bool {
        matches!(self.outcome, Some(Outcome::Committed | Outcome::InStore))
    }

    /// Whether readers may have the last byte: the blob verified, or is stored.
    fn released(&self) -> bool {
        self.verified || self.finished()
    }

    fn failure(&self) -> Option<Error> {
        match &self.outcome {
            Some(Outcome::Failed(e)) => Some(e.clone()),
            Some(Outcome::Deserted) => Some(Error::unavailable(
                "the fetch was abandoned before it started; retry",
                None,
            )),
            _ => None,
        }
    }
}

/// A fetch in flight.
pub(crate) struct Fetch {
    pub(crate) digest: Digest,
    state: Mutex<State>,
    /// Local repositories entitled to this blob (the starter's, and those
    /// whose upstream confirmed it has the blob).
    entitled: Mutex<HashSet<RepoName>>,
    /// Passthrough ranges fetched from the upstream for this blob so far.
    ranges: std::sync::atomic::AtomicUsize,
    /// Whether this instance holds the digest's lease on a shared store
    /// and fetches it: only then does it serve the blob to its peers.
    leading: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetch")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// What a reader waits for before it can stream.
pub(crate) enum Ready {
    Size(u64),
    InStore,
}

/// A reader's interest in a fetch: while any exists, a queued fetch will
/// run; once the last is dropped before the transfer starts, it will not.
pub(crate) struct Interest(Arc<Fetch>);

impl Drop for Interest {
    fn drop(&mut self) {
        self.0.update(|s| s.readers -= 1);
    }
}

impl Fetch {
    pub(crate) fn new(digest: Digest, repo: RepoName) -> Self {
        Fetch {
            digest,
            state: Mutex::new(State::default()),
            entitled: Mutex::new(HashSet::from([repo])),
            ranges: std::sync::atomic::AtomicUsize::new(0),
            leading: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let wakers = {
            let mut s = self.lock();
            f(&mut s);
            s.version += 1;
            std::mem::take(&mut s.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// The store wrote everything up to `n`: chunks past the window that
    /// it wrote may leave memory. Nobody waits for this (a reader behind
    /// the window finds its bytes in the file), so nobody is woken.
    fn staged_to(&self, n: u64, window: usize) {
        let mut s = self.lock();
        s.staged = n;
        s.trim(window);
    }

    async fn changed(&self, seen: u64) {
        poll_fn(|cx| {
            let mut s = self.lock();
            if s.version != seen {
                Poll::Ready(())
            } else {
                s.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Registers a reader, unless the fetch was deserted (then `None`: the
    /// caller starts a new fetch). Called under the engine's in-flight lock,
    /// so a fetch cannot be deserted between this check and the caller's use.
    pub(crate) fn join(self: &Arc<Self>) -> Option<Interest> {
        let mut s = self.lock();
        if matches!(s.outcome, Some(Outcome::Deserted)) {
            return None;
        }
        s.readers += 1;
        Some(Interest(self.clone()))
    }

    /// Completes once no reader is left, marking the fetch deserted in the
    /// same step so no reader can join it afterwards.
    async fn deserted(&self) {
        loop {
            let seen = {
                let mut s = self.lock();
                if s.readers == 0 {
                    s.outcome = Some(Outcome::Deserted);
                    return;
                }
                s.version
            };
            self.changed(seen).await;
        }
    }

    /// Grants nothing when it is published (a scanner's fetch).
    pub(crate) fn ungrant(&self) {
        self.entitled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether the blob verified (or was found stored): a reader joining
    /// now waits for nothing from the upstream.
    pub(crate) fn is_released(&self) -> bool {
        self.lock().released()
    }

    fn set_leading(&self, on: bool) {
        self.leading.store(on, std::sync::atomic::Ordering::Release);
    }

    /// Whether this instance fetches the blob under the digest's lease
    /// (and so may serve it to its peers).
    pub(crate) fn is_leading(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Bytes received so far (readers can have them; see [`State::written`]).
    pub(crate) fn written(&self) -> u64 {
        self.lock().written
    }

    /// Takes one of the `cap` passthrough ranges this blob may fetch from
    /// the upstream on its own; `false` once they are spent.
    pub(crate) fn take_range(&self, cap: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.ranges
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// The staged bytes as a local file, once the whole blob verified and
    /// where the store stages to one: a server may send it from there
    /// while the commit runs.
    pub(crate) fn verified_file(&self) -> Option<Arc<std::fs::File>> {
        let s = self.lock();
        if !s.verified || s.failure().is_some() {
            return None;
        }
        s.reader.as_ref()?.file()
    }

    pub(crate) fn is_entitled(&self, repo: &RepoName) -> bool {
        self.entitled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(repo)
    }

    pub(crate) fn entitle(&self, repo: RepoName) {
        self.entitled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(repo);
    }

    fn entitled(&self) -> Vec<RepoName> {
        self.entitled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Waits until the blob's size is known, or it is found in the store,
    /// or the fetch failed.
    pub(crate) async fn ready(&self) -> Result<Ready> {
        loop {
            let seen = {
                let s = self.lock();
                if let Some(e) = s.failure() {
                    return Err(e);
                }
                match (&s.outcome, s.total) {
                    (Some(Outcome::InStore), _) => return Ok(Ready::InStore),
                    (_, Some(t)) if s.reader.is_some() => return Ok(Ready::Size(t)),
                    _ => s.version,
                }
            };
            self.changed(seen).await;
        }
    }

    /// Waits until the fetch is over: `Ok` once the blob is stored, the
    /// fetch's error (a failed commit included) otherwise.
    pub(crate) async fn finished(&self) -> Result<()> {
        loop {
            let seen = {
                let s = self.lock();
                if let Some(e) = s.failure() {
                    return Err(e);
                }
                if s.finished() {
                    return Ok(());
                }
                s.version
            };
            self.changed(seen).await;
        }
    }

    /// Waits until the blob verified (or was found stored): `Ok` then, the
    /// fetch's error if it failed first.
    pub(crate) async fn released(&self) -> Result<()> {
        loop {
            let seen = {
                let s = self.lock();
                if s.released() {
                    return Ok(());
                }
                if let Some(e) = s.failure() {
                    return Err(e);
                }
                s.version
            };
            self.changed(seen).await;
        }
    }

    /// A stream of `range` of the blob, following the fetch. Every byte but
    /// the last of `range` flows as it arrives; the last only once the whole
    /// blob verified. On failure (a commit that fails after verification
    /// included, for a reader that has not had its last byte) the stream
    /// ends with the error instead, so a server sending it never completes
    /// the response. Without `hold_back` (a passthrough range, served
    /// unverified) the last byte flows as it arrives too.
    pub(crate) fn stream(
        self: Arc<Self>,
        inner: Arc<Inner>,
        range: std::ops::Range<u64>,
        guards: (InUse, Interest),
        hold_back: bool,
    ) -> BoxStream<'static, Result<Bytes>> {
        bytes_only(self.stream_for(inner, range, guards, hold_back, true, false))
    }

    /// [`Fetch::stream`] with hold-back, as a body a server may take as
    /// pieces: with files, what a reader that fell behind the window
    /// reads comes as spans of the staged file, not copied into memory.
    pub(crate) fn follow(
        self: Arc<Self>,
        inner: Arc<Inner>,
        range: std::ops::Range<u64>,
        guards: (InUse, Interest),
    ) -> super::FollowBody {
        super::FollowBody {
            make: Box::new(move |files| self.stream_for(inner, range, guards, true, true, files)),
        }
    }

    /// As [`Fetch::stream`] without hold-back, for another instance (peer
    /// streaming): what it sends is not counted as served to a client.
    pub(crate) fn stream_to_peer(
        self: Arc<Self>,
        inner: Arc<Inner>,
        range: std::ops::Range<u64>,
        guards: (InUse, Interest),
    ) -> BoxStream<'static, Result<Bytes>> {
        bytes_only(self.stream_for(inner, range, guards, false, false, false))
    }

    /// The reader behind [`Fetch::stream`], [`Fetch::follow`] and
    /// [`Fetch::stream_to_peer`]: with `files`, bytes behind the window
    /// come as spans of the staged file when the store stages into one.
    fn stream_for(
        self: Arc<Self>,
        inner: Arc<Inner>,
        range: std::ops::Range<u64>,
        guards: (InUse, Interest),
        hold_back: bool,
        to_client: bool,
        files: bool,
    ) -> BoxStream<'static, Result<Piece>> {
        struct St {
            fetch: Arc<Fetch>,
            inner: Arc<Inner>,
            pos: u64,
            end: u64,
            done: bool,
            hold_back: bool,
            to_client: bool,
            files: bool,
            _guards: (InUse, Interest),
        }
        impl St {
            fn served(&self, n: usize) {
                if self.to_client {
                    self.inner.events.event(&Event::BytesServed(n as u64));
                }
            }
        }
        let st = St {
            fetch: self,
            inner,
            pos: range.start,
            end: range.end,
            done: false,
            hold_back,
            to_client,
            files,
            _guards: guards,
        };
        futures::stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                let (seen, avail, reader, failed, released, recent) = {
                    let s = st.fetch.lock();
                    let released = s.released() || (!st.hold_back && s.written >= st.end);
                    // Until the blob verified, the span's last byte stays back.
                    let avail = if released {
                        st.end
                    } else if st.hold_back {
                        s.written.min(st.end.saturating_sub(1))
                    } else {
                        s.written.min(st.end)
                    };
                    let recent = (st.pos < avail)
                        .then(|| s.recent_slice(st.pos, avail))
                        .flatten();
                    // Behind the window, the file: chunks leave the window
                    // only once the store wrote them, so it has them.
                    let readable = if recent.is_some() || s.released() {
                        avail
                    } else {
                        avail.min(s.staged)
                    };
                    (
                        s.version,
                        readable,
                        s.reader.clone(),
                        s.failure(),
                        released,
                        recent,
                    )
                };
                if st.pos >= st.end && released {
                    // Every byte went out, the last after verification: a
                    // commit failing later does not undo a complete answer.
                    return None;
                }
                if let Some(e) = failed {
                    // Bytes already streamed stay a partial response: fail now.
                    st.done = true;
                    return Some((Err(e), st));
                }
                if let Some(b) = recent {
                    st.pos += b.len() as u64;
                    st.served(b.len());
                    return Some((Ok(Piece::Bytes(b)), st));
                }
                if st.pos < avail
                    && let Some(reader) = reader
                {
                    // Behind the window: the store wrote these bytes, and a
                    // staged file never changes what it holds, so a server
                    // that sends from files takes them as they lie there.
                    if st.files
                        && let Some(file) = reader.file()
                    {
                        let len = (avail - st.pos).min(FILE_SPAN_MAX) as usize;
                        let span = StagedSpan {
                            file,
                            offset: st.pos,
                            len,
                        };
                        st.pos += len as u64;
                        st.served(len);
                        return Some((Ok(Piece::File(span)), st));
                    }
                    let n = (avail - st.pos).min(st.inner.opts.read_chunk as u64);
                    match reader.read_at(st.pos, n as usize).await {
                        Ok(b) if !b.is_empty() => {
                            st.pos += b.len() as u64;
                            st.served(b.len());
                            return Some((Ok(Piece::Bytes(b)), st));
                        }
                        Ok(_) => {
                            st.done = true;
                            let e = Error::storage_msg(
                                "read_staged",
                                format!("staged {} shorter than written", st.fetch.digest),
                            );
                            return Some((Err(e), st));
                        }
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                    }
                }
                st.fetch.changed(seen).await;
            }
        })
        .boxed()
    }
}

/// The most one file span of a following body covers: what a reader
/// that fell behind gets at once (a server sends it in pieces of its own).
const FILE_SPAN_MAX: u64 = 4 << 20;

/// Batches whose chunks average less than this are copied into one
/// buffer; larger chunks go to readers and the store as they came.
const COALESCE_BELOW: usize = 64 * 1024;

/// What the upstream sent next.
enum Batch {
    /// Chunks that were ready together (the first one waited for), their
    /// total size, and whether the body ended right after them.
    Data {
        chunks: Vec<Bytes>,
        bytes: usize,
        ended: bool,
    },
    /// Nothing more: the body ended, failed, or stalled past the stall timeout.
    Stop,
}

/// Waits (at most the stall timeout) for the next chunk, then takes whatever
/// else is already there, up to `write_batch` bytes, without waiting.
async fn next_batch(
    stream: &mut crate::store::ByteStream,
    clock: &dyn crate::runtime::Clock,
    opts: &super::CacheOptions,
    stall: std::time::Duration,
) -> Batch {
    let first = match timeout(clock, stall, stream.next()).await {
        Some(Some(Ok(c))) => c,
        None | Some(None) | Some(Some(Err(_))) => return Batch::Stop,
    };
    let mut bytes = first.len();
    let mut chunks = vec![first];
    let mut ended = false;
    // Gather for a moment: a batch of a few KiB costs a store hop and a
    // frame per reader, while 1 ms is nothing to a follower.
    let gather = clock.sleep(std::time::Duration::from_millis(1));
    let mut gather = std::pin::pin!(gather);
    while bytes < opts.write_batch {
        let next = match stream.next().now_or_never() {
            Some(item) => item,
            None => match futures::future::select(stream.next(), gather.as_mut()).await {
                futures::future::Either::Left((item, _)) => item,
                futures::future::Either::Right(_) => break,
            },
        };
        match next {
            Some(Ok(c)) => {
                bytes += c.len();
                chunks.push(c);
            }
            Some(Err(_)) | None => {
                ended = true;
                break;
            }
        }
    }
    Batch::Data {
        chunks,
        bytes,
        ended,
    }
}

/// Whose turn it is to fetch, on a shared store.
enum Turn {
    /// Ours: we hold the digest's lease.
    Lead(lease::Lease),
    /// Another instance published the blob meanwhile.
    Published,
    /// Every reader left while we waited.
    Deserted,
    /// Another instance holds the lease still, past `lease_wait`.
    Alone,
    /// Another instance holds the lease and serves its peers here: stream
    /// from it.
    Peer(String),
}

/// Where the next bytes of a transfer come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Upstream,
    /// The lease holder's peer endpoint.
    Peer(String),
    /// The store, where the lease holder published the blob.
    Store,
}

/// A transfer so far: the staged bytes, whatever source they came from.
#[derive(Default)]
struct Progress {
    staged: Option<Box<dyn StagedBlob>>,
    total: Option<u64>,
    written: u64,
}

impl Progress {
    fn done(&self) -> bool {
        self.total == Some(self.written) && self.staged.is_some()
    }
}

/// Fails a fetch whose job was dropped before it published an outcome.
struct Unfinished(Arc<Fetch>, Arc<Inner>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Unfinished(fetch, inner) = self;
        if fetch.lock().outcome.is_some() {
            return;
        }
        // Out of the in-flight set before its readers hear of it.
        inner.finish_fetch(fetch);
        fetch.update(|s| {
            s.outcome.get_or_insert_with(|| {
                Outcome::Failed(Error::unavailable(
                    format!("the fetch of {} stopped unfinished; retry", fetch.digest),
                    None,
                ))
            });
        });
    }
}

/// Everything the leader needs, owned, so it can run detached.
pub(crate) struct Job {
    pub(crate) inner: Arc<Inner>,
    pub(crate) fetch: Arc<Fetch>,
    pub(crate) upstream: Arc<dyn Upstream>,
    pub(crate) upstream_repo: RepoName,
    pub(crate) rule: Arc<str>,
    pub(crate) registry: Arc<str>,
    /// This fetch's place in its upstream's queue, held until it ends.
    pub(crate) slot: QueueSlot,
}

impl Job {
    /// Runs the fetch to its end and publishes the outcome. Dropped
    /// unfinished, even before its first poll (its runtime shut down), it
    /// fails its readers and leaves the in-flight set, so no later request
    /// joins a fetch nobody runs.
    pub(crate) fn run(self) -> impl Future<Output = ()> + Send + 'static {
        let unfinished = Unfinished(self.fetch.clone(), self.inner.clone());
        async move {
            self.run_to_end().await;
            drop(unfinished);
        }
    }

    async fn run_to_end(self) {
        let inner = self.inner.clone();
        let limit = inner.opts.fetch_timeout;
        let outcome = match timeout(&*inner.clock, limit, self.transfer()).await {
            Some(Ok(o)) => o,
            Some(Err(e)) => Outcome::Failed(e),
            None => Outcome::Failed(Error::timeout(format!(
                "fetch of {} exceeded {limit:?}",
                self.fetch.digest
            ))),
        };
        self.fetch.set_leading(false);
        let committed = matches!(outcome, Outcome::Committed);
        if let Outcome::Failed(e) = &outcome {
            if self.fetch.lock().verified {
                // Only the commit comes after verification.
                tracing::error!(rule = %self.rule, digest = %self.fetch.digest, error = %e,
                    "a blob verified and was served, then its commit failed; the next request fetches it again");
                inner.events.event(&Event::CommitFailed);
            } else {
                tracing::warn!(rule = %self.rule, digest = %self.fetch.digest, error = %e, "blob fetch failed");
                inner.events.event(&Event::UpstreamError {
                    rule: &self.rule,
                    code: e.code(),
                });
            }
        }
        if committed {
            // Access times steer eviction and TTLs, which run on the engine's clock.
            let _ = inner
                .store
                .touch(&self.fetch.digest, inner.clock.now())
                .await;
            for r in self.fetch.entitled() {
                // A grant that fails to write only costs a HEAD on a later request.
                let _ = inner.entitle(&r, &self.fetch.digest).await;
            }
        }
        let deserted = matches!(outcome, Outcome::Deserted);
        let error = match &outcome {
            Outcome::Failed(e) => Some(e.to_string()),
            _ => None,
        };
        self.fetch.update(|s| {
            // `deserted()` already recorded its outcome.
            if !deserted {
                s.outcome = Some(outcome);
            }
        });
        inner.finish_fetch(&self.fetch);
        if !deserted {
            inner.events.event(&Event::FetchFinished {
                committed,
                rule: &self.rule,
                registry: &self.registry,
                repository: &self.upstream_repo,
                digest: &self.fetch.digest,
                error: error.as_deref(),
            });
        }
    }

    async fn transfer(&self) -> Result<Outcome> {
        let inner = &*self.inner;
        if inner.store.stat(&self.fetch.digest).await?.is_some() {
            return Ok(Outcome::InStore);
        }
        if !inner.store.shared() {
            return self.upstream_to_end(Progress::default()).await;
        }
        match self.lead_or_follow().await? {
            Turn::Lead(l) => self.lead(l, Progress::default()).await,
            Turn::Published => Ok(Outcome::InStore),
            Turn::Deserted => Ok(Outcome::Deserted),
            Turn::Alone => self.upstream_to_end(Progress::default()).await,
            Turn::Peer(addr) => self.follow(addr).await,
        }
    }

    /// Fetches from the upstream (from where `p` got to) and commits.
    async fn upstream_to_end(&self, p: Progress) -> Result<Outcome> {
        match self.download(p).await? {
            Some(p) => self.finish(p, false).await,
            None => Ok(Outcome::Deserted),
        }
    }

    /// Holding the lease: fetches from the upstream from where `p` got to,
    /// renewing the lease, serving peers (the fetch is `leading`), and
    /// releases it once the blob is published or the fetch failed.
    async fn lead(&self, mut lease: lease::Lease, p: Progress) -> Result<Outcome> {
        let inner = &*self.inner;
        let d = &self.fetch.digest;
        self.fetch.set_leading(true);
        let outcome = {
            let download = std::pin::pin!(self.upstream_to_end(p));
            let renew = std::pin::pin!(async {
                loop {
                    inner.clock.sleep(lease.renew_every()).await;
                    match lease.renew(&*inner.store, inner.clock.now()).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(digest = %d, "lost the fetch lease to another instance; fetching on");
                            std::future::pending::<()>().await;
                        }
                        Err(e) => {
                            tracing::warn!(digest = %d, error = %e, "renewing the fetch lease failed");
                        }
                    }
                }
            });
            match futures::future::select(download, renew).await {
                futures::future::Either::Left((o, _)) => o,
                // Renewal does not end; were it to, the download goes on.
                futures::future::Either::Right(((), download)) => download.await,
            }
        };
        self.fetch.set_leading(false);
        // Released once the blob is published (or the fetch failed), so a
        // waiter finds the blob, or a free lease to fetch it itself.
        if let Err(e) = lease.release(&*inner.store).await {
            tracing::warn!(digest = %d, error = %e, "releasing the fetch lease failed; it lapses");
        }
        outcome
    }

    fn claim_as(&self) -> (&str, Option<&str>) {
        let inner = &*self.inner;
        (
            &inner.opts.instance_name,
            inner.peering.as_ref().map(|p| p.advertise.as_str()),
        )
    }

    /// On a shared store: takes the digest's lease, or waits while another
    /// instance holds it until the blob is published, the lease lapses
    /// (then takes it over), every reader left, or `lease_wait` passed.
    /// With peering, a lease that names its holder's peer address is
    /// followed at once ([`Turn::Peer`]).
    async fn lead_or_follow(&self) -> Result<Turn> {
        let inner = &*self.inner;
        let (store, clock, opts) = (&*inner.store, &*inner.clock, &inner.opts);
        let d = &self.fetch.digest;
        let key = crate::keys::blob_lease(d);
        let started = clock.now();
        let mut lapses: Option<std::time::SystemTime> = None;
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            let now = clock.now();
            if lapses.is_none_or(|t| now >= t) {
                match lease::claim(store, &key, self.claim_as(), opts.lease_ttl, now).await? {
                    lease::Claim::Held(l) => {
                        if l.taken_over {
                            tracing::info!(digest = %d, "took over a lapsed fetch lease");
                            inner.events.event(&Event::PeerFetch(PeerFetch::TakenOver));
                        }
                        return Ok(Turn::Lead(l));
                    }
                    lease::Claim::Busy(rec) => {
                        if let (Some(addr), Some(_)) = (&rec.peer, &inner.peering) {
                            tracing::debug!(digest = %d, holder = %rec.holder, peer = %addr, "another instance is fetching; streaming from it");
                            return Ok(Turn::Peer(addr.clone()));
                        }
                        if lapses.is_none() {
                            tracing::debug!(digest = %d, holder = %rec.holder, "another instance is fetching; waiting for it");
                        }
                        lapses = Some(rec.expires);
                    }
                }
            }
            if now.duration_since(started).unwrap_or_default() >= opts.lease_wait {
                tracing::warn!(digest = %d, waited = ?opts.lease_wait, "another instance is still fetching; fetching as well");
                inner
                    .events
                    .event(&Event::PeerFetch(PeerFetch::WaitedTooLong));
                return Ok(Turn::Alone);
            }
            {
                let sleep = std::pin::pin!(clock.sleep(delay));
                let deserted = std::pin::pin!(self.fetch.deserted());
                if let futures::future::Either::Right(_) =
                    futures::future::select(sleep, deserted).await
                {
                    return Ok(Turn::Deserted);
                }
            }
            if store.stat(d).await?.is_some() {
                inner.events.event(&Event::PeerFetch(PeerFetch::Published));
                return Ok(Turn::Published);
            }
            delay = (delay * 2).min(std::time::Duration::from_millis(250));
        }
    }

    /// Streams the blob from the lease holder's peer endpoint at `addr`,
    /// staging and hashing it here. When the peer stops sending before the
    /// end (it died, stalled, or finished and published), goes on from
    /// where this got to: from the store if the blob is published, from
    /// the upstream if the lease lapsed (taken over) or `lease_wait`
    /// passed, else from the peer the lease names now, after a pause.
    async fn follow(&self, addr: String) -> Result<Outcome> {
        let inner = &*self.inner;
        let (store, clock, opts) = (&*inner.store, &*inner.clock, &inner.opts);
        let peering = inner.peering.as_ref().expect("followed with peering only");
        let d = &self.fetch.digest;
        let key = crate::keys::blob_lease(d);
        inner.events.event(&Event::PeerFetch(PeerFetch::Streamed));
        let started = clock.now();
        let mut p = Progress::default();
        let mut src = Source::Peer(addr);
        let mut first_refusal = true;
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            let before = p.written;
            let read = match &src {
                Source::Peer(a) => {
                    match timeout(clock, peering.timeout, peering.source.blob(a, d, p.written))
                        .await
                    {
                        Some(Ok(r)) => Some(r),
                        Some(Err(e)) => {
                            // The first refusal says so: a wrong secret or
                            // an unreachable address should not go unseen.
                            if std::mem::take(&mut first_refusal) {
                                tracing::warn!(digest = %d, peer = %a, error = %e, "the lease holder's peer endpoint refused; trying again, then the store or the upstream");
                            } else {
                                tracing::debug!(digest = %d, peer = %a, error = %e, "peer stream refused");
                            }
                            None
                        }
                        None => None,
                    }
                }
                Source::Store => {
                    let r = store.get(d, Some(ByteRange::From(p.written))).await?;
                    Some(UpstreamBlob {
                        size: r.size,
                        range: r.range,
                        stream: r.payload.into_stream(),
                    })
                }
                Source::Upstream => unreachable!("the upstream is read by download"),
            };
            if let Some(read) = read {
                self.pump(&mut p, read, &src).await?;
            }
            if p.done() {
                return self.finish(p, true).await;
            }
            if src == Source::Store {
                return Err(Error::storage_msg(
                    "get",
                    format!("stored {d} ended at byte {} of {:?}", p.written, p.total),
                ));
            }
            if p.written > before {
                delay = std::time::Duration::from_millis(50);
            }
            // The peer stopped short: the store, the lease, or the peer again.
            if store.stat(d).await?.is_some() {
                tracing::debug!(digest = %d, at = p.written, "the peer published; reading on from the store");
                src = Source::Store;
                continue;
            }
            let now = clock.now();
            match lease::claim(store, &key, self.claim_as(), opts.lease_ttl, now).await? {
                lease::Claim::Held(l) => {
                    tracing::info!(digest = %d, at = p.written, "took over a lapsed fetch lease; resuming from the upstream");
                    inner.events.event(&Event::PeerFetch(PeerFetch::TakenOver));
                    return self.lead(l, p).await;
                }
                lease::Claim::Busy(rec) => {
                    if now.duration_since(started).unwrap_or_default() >= opts.lease_wait {
                        tracing::warn!(digest = %d, waited = ?opts.lease_wait, "another instance is still fetching; fetching as well");
                        inner
                            .events
                            .event(&Event::PeerFetch(PeerFetch::WaitedTooLong));
                        return self.upstream_to_end(p).await;
                    }
                    if let Some(a) = rec.peer {
                        src = Source::Peer(a);
                    }
                }
            }
            clock.sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// Sends `read`'s body into the staged blob from where `p` got to,
    /// until it ends, fails or stalls (the source's timeout). An error
    /// here is one of the store's, or a source that contradicts itself
    /// (another size, a range that skips bytes).
    async fn pump(&self, p: &mut Progress, read: UpstreamBlob, src: &Source) -> Result<()> {
        let inner = &*self.inner;
        let d = &self.fetch.digest;
        let opts = &inner.opts;
        let fault = |message: String| match src {
            Source::Upstream => Error::upstream(&self.registry, message, false),
            Source::Peer(a) => Error::upstream(a, format!("peer: {message}"), false),
            Source::Store => Error::storage_msg("get", message),
        };
        match p.total {
            None => p.total = Some(read.size),
            Some(t) if t != read.size => {
                return Err(fault(format!(
                    "size of {d} changed from {t} to {} between requests",
                    read.size
                )));
            }
            Some(_) => {}
        }
        let size = read.size;
        let written = p.written;
        if read.range.start > written || read.range.end != size {
            return Err(fault(format!(
                "asked for {d} from byte {written}, got bytes {}..{} of {size}",
                read.range.start, read.range.end
            )));
        }
        if p.staged.is_none() {
            let w = inner.store.stage(d, Some(size)).await?;
            let reader = w.reader().await?;
            p.staged = Some(w);
            self.fetch.update(|s| {
                s.total = Some(size);
                s.reader = Some(reader);
            });
        }
        let stall = match (src, &inner.peering) {
            (Source::Peer(_), Some(peering)) => peering.timeout,
            _ => opts.stall_timeout,
        };
        let w = p.staged.as_mut().expect("staged above");
        // Two loops joined: one receives, hands each batch to the readers
        // at once and queues it for the store; the other writes whatever
        // is queued. The store's writer need not wait for this task to
        // come round to receiving the next batch. Receiving runs ahead of
        // the store by about half the window, bytes the window holds
        // anyway: a quarter of it in one write, the rest queued (the
        // channel's slots, its sender's own slot, and the batch waiting to
        // go in). Half the window measured as fast as the whole, with a
        // lower peak RSS under sixteen readers.
        let step = opts.write_batch.max(1);
        let quarter = (opts.follow_window / 4).max(step);
        let depth = (quarter / step).saturating_sub(2).max(1);
        let (mut queue, mut queued) = futures::channel::mpsc::channel::<Vec<Bytes>>(depth);
        let start = written;
        let receive = async move {
            // A source that ignores Range restarts at 0: skip what we have.
            let mut skip = written - read.range.start;
            let mut stream = read.stream;
            let mut received = start;
            // A stall, an error or an early end all end this loop; the
            // caller then resumes while its budget lasts.
            while let Batch::Data {
                chunks: batch,
                bytes,
                ended,
            } = next_batch(&mut stream, &*inner.clock, opts, stall).await
            {
                match src {
                    Source::Upstream => inner.events.event(&Event::BytesFromUpstream(bytes as u64)),
                    Source::Peer(_) => inner.events.event(&Event::BytesFromPeer(bytes as u64)),
                    Source::Store => {}
                }
                let mut chunks = Vec::with_capacity(batch.len());
                for mut c in batch {
                    if skip > 0 {
                        let n = skip.min(c.len() as u64);
                        skip -= n;
                        c = c.slice(n as usize..);
                    }
                    if !c.is_empty() {
                        chunks.push(c);
                    }
                }
                if chunks.len() > 1 && bytes / chunks.len() < COALESCE_BELOW {
                    // One copy here, shared by every reader, buys large
                    // zero-copy slices for them and one write to the store.
                    let mut b = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                    for c in &chunks {
                        b.extend_from_slice(c);
                    }
                    chunks = vec![b.freeze()];
                }
                if !chunks.is_empty() {
                    // Readers have the batch at once, before the store
                    // hashes and writes it: their sends need not wait for
                    // the disk. The last byte of a span still waits for
                    // verification, so nothing here completes a response.
                    let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                    received += len;
                    let within = received <= size;
                    if within {
                        let window = opts.follow_window;
                        self.fetch.update(|s| {
                            for c in chunks.iter().cloned() {
                                let len = c.len();
                                s.recent.push_back((s.written, c));
                                s.written += len as u64;
                                s.recent_bytes += len;
                            }
                            s.trim(window);
                        });
                    }
                    // Past the announced size the store's write fails and
                    // voids the fetch: such bytes went to no reader. A
                    // closed queue: the store failed, and says why below.
                    if futures::SinkExt::send(&mut queue, chunks).await.is_err() || !within {
                        break;
                    }
                }
                if ended {
                    break;
                }
            }
        };
        let write = async {
            let mut stored = start;
            while let Some(mut chunks) = queued.next().await {
                // Whatever else is queued goes in the same write, up to a
                // quarter of the window: a writer that fell behind catches
                // up in fewer, larger steps.
                let mut bytes: usize = chunks.iter().map(Bytes::len).sum();
                while bytes < quarter {
                    match queued.try_recv() {
                        Ok(more) => {
                            bytes += more.iter().map(Bytes::len).sum::<usize>();
                            chunks.extend(more);
                        }
                        _ => break,
                    }
                }
                // Overflow past the announced size fails here: the write is void.
                w.write_chunks(chunks).await?;
                stored += bytes as u64;
                // Readers behind the window need not wait for the next
                // batch from a slow upstream.
                self.fetch.staged_to(stored, opts.follow_window);
            }
            Ok::<_, Error>(stored)
        };
        let ((), stored) = futures::future::try_join(receive.map(Ok), write).await?;
        p.written = stored;
        Ok(())
    }

    /// Fetches from the upstream into the staged blob from where `p` got
    /// to, until the whole blob is staged. `None`: every reader left
    /// while the fetch waited for its turn (it is deserted).
    async fn download(&self, mut p: Progress) -> Result<Option<Progress>> {
        let inner = &*self.inner;
        let d = &self.fetch.digest;
        // Wait for a turn; give the place up if every reader leaves first.
        let _permit = {
            let acquire = std::pin::pin!(self.slot.acquire());
            let deserted = std::pin::pin!(self.fetch.deserted());
            match futures::future::select(acquire, deserted).await {
                futures::future::Either::Left((permit, _)) => permit,
                futures::future::Either::Right(_) => return Ok(None),
            }
        };
        inner.events.event(&Event::FetchStarted);
        let opts = &inner.opts;
        // One budget for retries after errors and resumptions after an
        // interrupted body: at most 1 + max_retries upstream requests.
        let mut requests = 0u32;
        loop {
            requests += 1;
            let range = (p.written > 0).then_some(ByteRange::From(p.written));
            inner.events.event(&Event::UpstreamRequest {
                call: UpstreamCall::Blob,
            });
            let read = match self.upstream.blob(&self.upstream_repo, d, range).await {
                Ok(r) => r,
                Err(e) if super::queue::retryable(&e) && requests <= opts.max_retries => {
                    inner.backoff(requests).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.pump(&mut p, read, &Source::Upstream).await?;
            if p.done() {
                return Ok(Some(p));
            }
            if requests > opts.max_retries {
                return Err(Error::upstream(
                    &self.registry,
                    format!(
                        "transfer of {d} interrupted at byte {} of {} after {requests} requests",
                        p.written,
                        p.total.unwrap_or_default()
                    ),
                    true,
                ));
            }
        }
    }

    /// Verifies the staged blob, releases it to the readers, and commits
    /// it. A follower (`follower`) that verified first waits (bounded by
    /// `lease_wait`) for the lease holder to publish, and commits only if
    /// it does not: one upload per blob, not one per instance.
    async fn finish(&self, p: Progress, follower: bool) -> Result<Outcome> {
        let mut staged = p.staged.expect("a transfer stages before it ends");
        if staged.verify().await? {
            // The bytes are the blob: every reader gets its last byte now,
            // and durability follows without holding them.
            self.fetch.update(|s| s.verified = true);
            if follower && self.published_by_holder().await? {
                // Readers keep reading the staged bytes after an abort.
                let _ = staged.abort().await;
                return Ok(Outcome::Committed);
            }
        }
        staged.commit().await?;
        Ok(Outcome::Committed)
    }

    /// Waits while another instance holds the digest's lease (it is
    /// publishing), then says whether the blob is in the store.
    async fn published_by_holder(&self) -> Result<bool> {
        let inner = &*self.inner;
        let (store, clock) = (&*inner.store, &*inner.clock);
        let d = &self.fetch.digest;
        let key = crate::keys::blob_lease(d);
        let started = clock.now();
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            if store.stat(d).await?.is_some() {
                return Ok(true);
            }
            let now = clock.now();
            let held = store
                .get_meta(&key)
                .await?
                .and_then(|v| lease::LeaseRecord::decode(&v))
                .is_some_and(|r| r.expires > now);
            if !held || now.duration_since(started).unwrap_or_default() >= inner.opts.lease_wait {
                return Ok(store.stat(d).await?.is_some());
            }
            clock.sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_millis(250));
        }
    }
}
