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
use super::{InUse, Inner, lease};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::{Event, PeerFetch};
use crate::names::RepoName;
use crate::range::ByteRange;
use crate::runtime::timeout;
use crate::store::{StagedBlob, StagedReader};
use crate::upstream::Upstream;

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
    written: u64,
    /// The most recently written chunks (offset, bytes), at most
    /// `follow_window` bytes: readers that keep up take zero-copy slices of
    /// these; readers that fall behind read the staged file.
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

    /// Bytes staged so far.
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
        struct St {
            fetch: Arc<Fetch>,
            inner: Arc<Inner>,
            pos: u64,
            end: u64,
            done: bool,
            hold_back: bool,
            _guards: (InUse, Interest),
        }
        let st = St {
            fetch: self,
            inner,
            pos: range.start,
            end: range.end,
            done: false,
            hold_back,
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
                    (
                        s.version,
                        avail,
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
                    st.inner.events.event(&Event::BytesServed(b.len() as u64));
                    return Some((Ok(b), st));
                }
                if st.pos < avail
                    && let Some(reader) = reader
                {
                    let n = (avail - st.pos).min(st.inner.opts.read_chunk as u64);
                    match reader.read_at(st.pos, n as usize).await {
                        Ok(b) if !b.is_empty() => {
                            st.pos += b.len() as u64;
                            st.inner.events.event(&Event::BytesServed(b.len() as u64));
                            return Some((Ok(b), st));
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
/// else is already there, up to `read_chunk` bytes, without waiting.
async fn next_batch(
    stream: &mut crate::store::ByteStream,
    clock: &dyn crate::runtime::Clock,
    opts: &super::CacheOptions,
) -> Batch {
    let first = match timeout(clock, opts.stall_timeout, stream.next()).await {
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
    while bytes < opts.read_chunk {
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
    /// Runs the fetch to its end and publishes the outcome.
    pub(crate) async fn run(self) {
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
        let d = &self.fetch.digest;
        if inner.store.stat(d).await?.is_some() {
            return Ok(Outcome::InStore);
        }
        if !inner.store.shared() {
            return self.download().await;
        }
        let mut lease = match self.lead_or_follow().await? {
            Turn::Lead(l) => l,
            Turn::Published => return Ok(Outcome::InStore),
            Turn::Deserted => return Ok(Outcome::Deserted),
            Turn::Alone => return self.download().await,
        };
        let outcome = {
            let download = std::pin::pin!(self.download());
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
        // Released once the blob is published (or the fetch failed), so a
        // waiter finds the blob, or a free lease to fetch it itself.
        if let Err(e) = lease.release(&*inner.store).await {
            tracing::warn!(digest = %d, error = %e, "releasing the fetch lease failed; it lapses");
        }
        outcome
    }

    /// On a shared store: takes the digest's lease, or waits while another
    /// instance holds it until the blob is published, the lease lapses
    /// (then takes it over), every reader left, or `lease_wait` passed.
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
                match lease::claim(store, &key, &opts.instance_name, opts.lease_ttl, now).await? {
                    lease::Claim::Held(l) => {
                        if l.taken_over {
                            tracing::info!(digest = %d, "took over a lapsed fetch lease");
                            inner.events.event(&Event::PeerFetch(PeerFetch::TakenOver));
                        }
                        return Ok(Turn::Lead(l));
                    }
                    lease::Claim::Busy(rec) => {
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

    /// Fetches from the upstream into a staged blob, releases it to the
    /// readers once it verified, and commits it.
    async fn download(&self) -> Result<Outcome> {
        let inner = &*self.inner;
        let d = &self.fetch.digest;
        // Wait for a turn; give the place up if every reader leaves first.
        let _permit = {
            let acquire = std::pin::pin!(self.slot.acquire());
            let deserted = std::pin::pin!(self.fetch.deserted());
            match futures::future::select(acquire, deserted).await {
                futures::future::Either::Left((permit, _)) => permit,
                futures::future::Either::Right(_) => return Ok(Outcome::Deserted),
            }
        };
        inner.events.event(&Event::FetchStarted);
        let opts = &inner.opts;
        let upstream_error =
            |message: String, temporary: bool| Error::upstream(&self.registry, message, temporary);
        let mut staged: Option<Box<dyn StagedBlob>> = None;
        let mut total: Option<u64> = None;
        let mut written: u64 = 0;
        // One budget for retries after errors and resumptions after an
        // interrupted body: at most 1 + max_retries upstream requests.
        let mut requests = 0u32;
        loop {
            requests += 1;
            let range = (written > 0).then_some(ByteRange::From(written));
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
            match total {
                None => total = Some(read.size),
                Some(t) if t != read.size => {
                    return Err(upstream_error(
                        format!(
                            "size of {d} changed from {t} to {} between requests",
                            read.size
                        ),
                        false,
                    ));
                }
                Some(_) => {}
            }
            let size = read.size;
            if read.range.start > written || read.range.end != size {
                return Err(upstream_error(
                    format!(
                        "asked for {d} from byte {written}, got bytes {}..{} of {size}",
                        read.range.start, read.range.end
                    ),
                    false,
                ));
            }
            if staged.is_none() {
                let w = inner.store.stage(d, Some(size)).await?;
                let reader = w.reader().await?;
                staged = Some(w);
                self.fetch.update(|s| {
                    s.total = Some(size);
                    s.reader = Some(reader);
                });
            }
            let w = staged.as_mut().expect("staged above");
            // An upstream that ignores Range restarts at 0: skip what we have.
            let mut skip = written - read.range.start;
            let mut stream = read.stream;
            let mut next = next_batch(&mut stream, &*inner.clock, opts).await;
            // A stall, an error or an early end all end this loop; the outer
            // loop then resumes with a Range request while the budget lasts.
            while let Batch::Data {
                chunks: batch,
                bytes,
                ended,
            } = next
            {
                inner.events.event(&Event::BytesFromUpstream(bytes as u64));
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
                if chunks.len() > 1 {
                    // One copy here, shared by every reader, buys large
                    // zero-copy slices for them and one write to the store.
                    let mut b = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                    for c in &chunks {
                        b.extend_from_slice(c);
                    }
                    chunks = vec![b.freeze()];
                }
                // Write this batch while the next one arrives: hashing and
                // writing on one core, receiving on the other.
                let receive = async {
                    if ended {
                        Batch::Stop
                    } else {
                        next_batch(&mut stream, &*inner.clock, opts).await
                    }
                };
                if chunks.is_empty() {
                    next = receive.await;
                    continue;
                }
                let (wrote, following) =
                    futures::future::join(w.write_chunks(chunks.clone()), receive).await;
                // Overflow past the announced size fails here: the write is void.
                wrote?;
                let window = opts.follow_window;
                self.fetch.update(|s| {
                    for c in chunks {
                        let len = c.len();
                        s.recent.push_back((s.written, c));
                        s.written += len as u64;
                        s.recent_bytes += len;
                    }
                    while s.recent_bytes > window {
                        match s.recent.pop_front() {
                            Some((_, old)) => s.recent_bytes -= old.len(),
                            None => break,
                        }
                    }
                });
                written = self.fetch.lock().written;
                next = following;
            }
            if written == size {
                break;
            }
            if requests > opts.max_retries {
                return Err(upstream_error(
                    format!(
                        "transfer of {d} interrupted at byte {written} of {size} after {requests} requests",
                    ),
                    true,
                ));
            }
        }
        let mut staged = staged.expect("a transfer stages before it ends");
        if staged.verify().await? {
            // The bytes are the blob: every reader gets its last byte now,
            // and durability follows without holding them.
            self.fetch.update(|s| s.verified = true);
        }
        staged.commit().await?;
        Ok(Outcome::Committed)
    }
}
