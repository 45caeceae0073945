//! One upstream fetch per digest, shared by every reader: the leader runs
//! detached, writes into a staged blob while hashing, and publishes; every
//! reader (the first included) streams the staged bytes as they arrive.

use std::collections::HashSet;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use super::{InUse, Inner};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::Event;
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
}

#[derive(Default)]
struct State {
    version: u64,
    written: u64,
    /// The most recently written chunks (offset, bytes), at most
    /// `follow_window` bytes: readers that keep up take zero-copy slices of
    /// these; readers that fall behind read the staged file.
    recent: std::collections::VecDeque<(u64, Bytes)>,
    recent_bytes: usize,
    total: Option<u64>,
    reader: Option<Arc<dyn StagedReader>>,
    outcome: Option<Outcome>,
    wakers: Vec<Waker>,
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
}

/// A fetch in flight.
pub(crate) struct Fetch {
    pub(crate) digest: Digest,
    state: Mutex<State>,
    /// Local repositories entitled to this blob (the starter's, and those
    /// that proved it is theirs).
    pub(crate) repos: Mutex<HashSet<RepoName>>,
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

impl Fetch {
    pub(crate) fn new(digest: Digest, repo: RepoName) -> Self {
        Fetch {
            digest,
            state: Mutex::new(State::default()),
            repos: Mutex::new(HashSet::from([repo])),
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

    pub(crate) fn is_entitled(&self, repo: &RepoName) -> bool {
        self.repos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(repo)
    }

    pub(crate) fn entitle(&self, repo: RepoName) {
        self.repos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(repo);
    }

    /// Waits until the blob's size is known, or it is found in the store,
    /// or the fetch failed.
    pub(crate) async fn ready(&self) -> Result<Ready> {
        loop {
            let seen = {
                let s = self.lock();
                match (&s.outcome, s.total) {
                    (Some(Outcome::Failed(e)), _) => return Err(e.duplicate()),
                    (Some(Outcome::InStore), _) => return Ok(Ready::InStore),
                    (_, Some(t)) if s.reader.is_some() => return Ok(Ready::Size(t)),
                    _ => s.version,
                }
            };
            self.changed(seen).await;
        }
    }

    /// A stream of `range` of the blob, following the fetch. It ends
    /// cleanly only once the whole blob is verified and committed.
    pub(crate) fn stream(
        self: Arc<Self>,
        inner: Arc<Inner>,
        range: std::ops::Range<u64>,
        guard: InUse,
    ) -> BoxStream<'static, Result<Bytes>> {
        struct St {
            fetch: Arc<Fetch>,
            inner: Arc<Inner>,
            pos: u64,
            end: u64,
            done: bool,
            _guard: InUse,
        }
        let st = St {
            fetch: self,
            inner,
            pos: range.start,
            end: range.end,
            done: false,
            _guard: guard,
        };
        futures::stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                let (seen, written, reader, failed, finished, recent) = {
                    let s = st.fetch.lock();
                    let failed = match &s.outcome {
                        Some(Outcome::Failed(e)) => Some(e.duplicate()),
                        _ => None,
                    };
                    let finished = matches!(s.outcome, Some(Outcome::Committed | Outcome::InStore));
                    let recent = (st.pos < st.end && st.pos < s.written)
                        .then(|| s.recent_slice(st.pos, st.end.min(s.written)))
                        .flatten();
                    (
                        s.version,
                        s.written,
                        s.reader.clone(),
                        failed,
                        finished,
                        recent,
                    )
                };
                if st.pos >= st.end {
                    // Every requested byte is out; end cleanly only once verified.
                    if finished {
                        return None;
                    }
                    if let Some(e) = failed {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                } else if let Some(b) = recent {
                    st.pos += b.len() as u64;
                    st.inner.events.event(&Event::BytesServed(b.len() as u64));
                    return Some((Ok(b), st));
                } else if st.pos < written
                    && let Some(reader) = reader
                {
                    let n = (written.min(st.end) - st.pos).min(st.inner.opts.read_chunk as u64);
                    match reader.read_at(st.pos, n as usize).await {
                        Ok(b) if !b.is_empty() => {
                            st.pos += b.len() as u64;
                            st.inner.events.event(&Event::BytesServed(b.len() as u64));
                            return Some((Ok(b), st));
                        }
                        Ok(_) => {
                            st.done = true;
                            let e = Error::Storage {
                                op: "read_staged",
                                message: format!("staged {} shorter than written", st.fetch.digest),
                                temporary: false,
                                source: None,
                            };
                            return Some((Err(e), st));
                        }
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                    }
                } else if let Some(e) = failed {
                    st.done = true;
                    return Some((Err(e), st));
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
    /// Nothing more: the body ended, failed, or stalled past the idle timeout.
    Stop,
}

/// Waits (at most the idle timeout) for the next chunk, then takes whatever
/// else is already there, up to `read_chunk` bytes, without waiting.
async fn next_batch(
    stream: &mut crate::store::ByteStream,
    clock: &dyn crate::runtime::Clock,
    opts: &super::CacheOptions,
) -> Batch {
    let first = match timeout(clock, opts.idle_timeout, stream.next()).await {
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

/// Everything the leader needs, owned, so it can run detached.
pub(crate) struct Job {
    pub(crate) inner: Arc<Inner>,
    pub(crate) fetch: Arc<Fetch>,
    pub(crate) upstream: Arc<dyn Upstream>,
    pub(crate) upstream_repo: RepoName,
    pub(crate) rule: Arc<str>,
}

impl Job {
    /// Runs the fetch to its end and publishes the outcome.
    pub(crate) async fn run(self) {
        let inner = self.inner.clone();
        inner.events.event(&Event::FetchStarted);
        let limit = inner.opts.fetch_timeout;
        let outcome = match timeout(&*inner.clock, limit, self.transfer()).await {
            Some(Ok(o)) => o,
            Some(Err(e)) => Outcome::Failed(e),
            None => Outcome::Failed(Error::Timeout {
                what: format!("fetch of {} exceeded {:?}", self.fetch.digest, limit),
            }),
        };
        let committed = matches!(outcome, Outcome::Committed);
        if let Outcome::Failed(e) = &outcome {
            tracing::warn!(rule = %self.rule, digest = %self.fetch.digest, error = %e, "blob fetch failed");
            inner.events.event(&Event::UpstreamError {
                rule: &self.rule,
                code: e.code(),
            });
        }
        if committed {
            // Access times steer eviction and TTLs, which run on the engine's clock.
            let _ = inner
                .store
                .touch(&self.fetch.digest, inner.clock.now())
                .await;
            let repos: Vec<RepoName> = self
                .fetch
                .repos
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            for r in repos {
                // A link that fails to write only costs a HEAD on a later request.
                let _ = inner.link(&r, &self.fetch.digest).await;
            }
        }
        self.fetch.update(|s| s.outcome = Some(outcome));
        inner.finish_fetch(&self.fetch);
        inner.events.event(&Event::FetchFinished { committed });
    }

    async fn transfer(&self) -> Result<Outcome> {
        let inner = &*self.inner;
        let d = &self.fetch.digest;
        if inner.store.stat(d).await?.is_some() {
            return Ok(Outcome::InStore);
        }
        let opts = &inner.opts;
        let _permit = inner.fetch_permits.acquire().await;
        let mut staged: Option<Box<dyn StagedBlob>> = None;
        let mut total: Option<u64> = None;
        let mut written: u64 = 0;
        let mut retries = 0u32;
        let mut resumes = 0u32;
        loop {
            let range = (written > 0).then_some(ByteRange::From(written));
            let read = match self.upstream.blob(&self.upstream_repo, d, range).await {
                Ok(r) => r,
                Err(e)
                    if e.is_temporary()
                        && e.code() != crate::ErrorCode::TooManyRequests
                        && retries < opts.max_retries =>
                {
                    retries += 1;
                    inner.clock.sleep(opts.retry_backoff * retries).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match total {
                None => total = Some(read.size),
                Some(t) if t != read.size => {
                    return Err(Error::Upstream {
                        registry: self.rule.to_string(),
                        message: format!(
                            "size of {d} changed from {t} to {} between requests",
                            read.size
                        ),
                        code: None,
                        temporary: false,
                        source: None,
                    });
                }
                Some(_) => {}
            }
            let size = read.size;
            if read.range.start > written || read.range.end != size {
                return Err(Error::Upstream {
                    registry: self.rule.to_string(),
                    message: format!(
                        "asked for {d} from byte {written}, got bytes {}..{} of {size}",
                        read.range.start, read.range.end
                    ),
                    code: None,
                    temporary: false,
                    source: None,
                });
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
            // A stall (idle timeout), an error or an early end all end this
            // loop; the outer loop then resumes with a Range request.
            while let Batch::Data {
                chunks: batch,
                bytes,
                ended,
            } = next
            {
                inner.events.event(&Event::BytesFromUpstream(bytes as u64));
                // An upstream that ignores Range restarts at 0: drop what we have.
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
            resumes += 1;
            if resumes > opts.max_resumes {
                return Err(Error::Upstream {
                    registry: self.rule.to_string(),
                    message: format!(
                        "transfer of {d} interrupted at byte {written} of {size}, {} resumptions exhausted",
                        opts.max_resumes
                    ),
                    code: None,
                    temporary: true,
                    source: None,
                });
            }
        }
        staged
            .expect("a transfer stages before it ends")
            .commit()
            .await?;
        Ok(Outcome::Committed)
    }
}
