//! Blobs: from the store when stored and entitled, else through one shared
//! upstream fetch per digest (see [`super::fetch`]).

use std::sync::Arc;

use futures::{FutureExt, StreamExt};

use super::fetch::{Fetch, Job, Ready};
use super::queue::UpstreamCall;
use super::response::{BlobBody, BlobResponse, FileBody};
use super::{Ctx, InUse, Inner, PullThroughCache, lock};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::{CacheStatus, Event};
use crate::names::RepoName;
use crate::policy::{Caller, ColdRanges};
use crate::range::ByteRange;
use crate::store::BlobPayload;

impl PullThroughCache {
    /// A blob, whole or one range, from the store or through one shared
    /// upstream fetch.
    ///
    /// On a miss the answer comes as soon as the upstream announced the
    /// size; the stream then follows the fetch and yields the span's last
    /// byte only once the whole blob verified. If it does not verify, the
    /// stream ends with the error instead, so a server that announced the
    /// length never completes the response. A zero-length blob is answered
    /// only once verified. A full upstream queue is
    /// [`Error::Unavailable`](crate::Error::Unavailable).
    pub async fn blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobResponse> {
        self.blob_for(name, digest, range, &Caller::Client).await
    }

    /// [`blob`](Self::blob) for `caller`: a scanner scoped to the
    /// repository reads blobs of manifests not admitted yet, and what it
    /// reads grants nothing to anyone else.
    pub async fn blob_for(
        &self,
        name: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
        caller: &Caller,
    ) -> Result<BlobResponse> {
        let ctx = self.ctx_for(name, caller)?;
        let inner = &self.inner;
        let entitled = inner.is_entitled(&ctx.local, digest).await?;
        // Under a signature policy or a vulnerability gate a client gets a
        // blob only as part of a manifest that passed; the upstream's word
        // is not enough.
        let ungranted = ctx.restricts_blobs() && ctx.is_scanner();
        if !entitled && ctx.restricts_blobs() && !ctx.is_scanner() {
            return Err(Error::blob_unknown(digest));
        }
        if entitled {
            // Content a repository is entitled to is usually stored: read it
            // straight away (no separate existence check, so one request on
            // object storage) and fetch only if it is not.
            match self.serve_stored(&ctx, digest, range).await {
                Err(Error::BlobUnknown { .. }) => {}
                r => return r,
            }
        } else if !ctx.store_only() && self.stored_size(digest).await?.is_some() {
            self.vouch(&ctx, digest, ungranted).await?;
            return self.serve_stored(&ctx, digest, range).await;
        }
        if ctx.store_only() {
            // Not stored, or only this repository's upstream could vouch for it.
            return Err(super::store_only::blob_not_cached(digest));
        }
        let (fetch, interest, slot) = {
            let mut m = lock(&inner.inflight);
            let joined = m.get(digest).and_then(|f| f.join().map(|i| (f.clone(), i)));
            match joined {
                Some((f, i)) => (f, i, None),
                None => {
                    let slot = ctx.queue.enter(ctx.rule.registry()).inspect_err(|_| {
                        inner.events.event(&Event::FetchQueueFull {
                            registry: ctx.rule.registry().as_str(),
                        })
                    })?;
                    let f = Arc::new(Fetch::new(digest.clone(), name.clone()));
                    if ungranted {
                        f.ungrant();
                    }
                    let i = f.join().expect("a new fetch has not been deserted");
                    m.insert(digest.clone(), f.clone());
                    (f, i, Some(slot))
                }
            }
        };
        // Joining a fetch whose blob already verified (its commit still
        // running) waits for nothing upstream: a hit.
        let status = if slot.is_none() && fetch.is_released() {
            CacheStatus::Hit
        } else {
            CacheStatus::Miss
        };
        if let Some(slot) = slot {
            let job = Job {
                inner: inner.clone(),
                fetch: fetch.clone(),
                upstream: ctx.upstream.clone(),
                upstream_repo: ctx.upstream_repo.clone(),
                rule: Arc::from(ctx.rule.name()),
                registry: Arc::from(ctx.rule.registry().as_str()),
                slot,
            };
            inner.spawner.spawn_near(job.run().boxed());
        } else if !entitled && !fetch.is_entitled(name) {
            // Another repository started this fetch: ours must vouch too.
            self.vouch(&ctx, digest, ungranted).await?;
            if !ungranted {
                fetch.entitle(name.clone());
            }
        }
        match fetch.ready().await? {
            Ready::InStore => {
                // Published meanwhile, perhaps by another instance for
                // another repository: this one's upstream must vouch too.
                if !entitled && !inner.is_entitled(&ctx.local, digest).await? {
                    self.vouch(&ctx, digest, ungranted).await?;
                }
                self.serve_stored(&ctx, digest, range).await
            }
            Ready::Size(size) => {
                let span = match range {
                    Some(r) => r.resolve(size)?,
                    None => 0..size,
                };
                if span.is_empty() {
                    // No byte to hold back: the response head is the whole answer.
                    fetch.released().await?;
                }
                let guard = InUse::new(inner, digest);
                inner.events.event(&Event::Blob {
                    rule: ctx.rule.name(),
                    status,
                });
                if range.is_some()
                    && ctx.policy().cold_ranges == ColdRanges::Passthrough
                    && !fetch.is_released()
                {
                    let span_len = span.end - span.start;
                    if fetch.written() >= span.end {
                        // Received already: at once, without waiting for the rest.
                        let stream =
                            fetch.stream(inner.clone(), span.clone(), (guard, interest), false);
                        return Ok(unverified(size, span, stream));
                    }
                    if let Some(stream) = self
                        .passthrough(&ctx, &fetch, size, span.clone(), span_len)
                        .await
                    {
                        return Ok(unverified(size, span, stream));
                    }
                }
                // The first reads after a fill, while its commit runs: from
                // the verified staged file, as a hit would be.
                let file = (status == CacheStatus::Hit)
                    .then(|| fetch.verified_file())
                    .flatten();
                let body = match file {
                    Some(file) => BlobBody::File(FileBody {
                        file,
                        range: span.clone(),
                        events: inner.events.clone(),
                        stream: fetch.clone().stream(
                            inner.clone(),
                            span.clone(),
                            (guard, interest),
                            true,
                        ),
                        _in_use: InUse::new(inner, digest),
                    }),
                    None => BlobBody::Follow(fetch.clone().follow(
                        inner.clone(),
                        span.clone(),
                        (guard, interest),
                    )),
                };
                Ok(BlobResponse {
                    size,
                    range: span,
                    status,
                    verified: true,
                    body,
                })
            }
        }
    }

    /// A passthrough range: `span` of the blob `fetch` is fetching, by a
    /// ranged upstream `GET` of its own, when the bounds allow one now
    /// (`cold_range_max`, `cold_ranges_per_registry` with a free running
    /// transfer, `cold_ranges_per_blob`). `None` when they do not, or the
    /// upstream failed or did not answer that range: the caller then waits
    /// for the whole-blob fetch. The stream ends with an error, never
    /// cleanly, if the upstream sends fewer or more bytes than the span,
    /// or stalls for `stall_timeout`.
    async fn passthrough(
        &self,
        ctx: &Ctx,
        fetch: &Arc<Fetch>,
        size: u64,
        span: std::ops::Range<u64>,
        span_len: u64,
    ) -> Option<crate::store::ByteStream> {
        let inner = &self.inner;
        let opts = &inner.opts;
        if span_len > opts.cold_range_max as u64 {
            return None;
        }
        let slot = ctx.queue.try_range(opts.cold_ranges_per_registry)?;
        if !fetch.take_range(opts.cold_ranges_per_blob) {
            return None;
        }
        let digest = &fetch.digest;
        let asked = ByteRange::Inclusive(span.start, span.end - 1);
        let read = inner
            .call(UpstreamCall::Blob, || {
                ctx.upstream.blob(&ctx.upstream_repo, digest, Some(asked))
            })
            .await;
        let read = match read {
            Ok(r) if r.size == size && r.range == span => r,
            Ok(r) => {
                tracing::debug!(%digest, asked = %asked, got = ?r.range, size = r.size,
                    "the upstream did not answer the range asked for; waiting for the whole blob");
                return None;
            }
            Err(e) => {
                self.upstream_error(ctx, &e);
                tracing::debug!(%digest, error = %e, "a passthrough range failed; waiting for the whole blob");
                return None;
            }
        };
        struct St {
            stream: crate::store::ByteStream,
            left: u64,
            inner: Arc<Inner>,
            registry: Arc<str>,
            _places: (super::queue::RangeSlot, InUse),
        }
        let st = St {
            stream: read.stream,
            left: span_len,
            inner: inner.clone(),
            registry: Arc::from(ctx.rule.registry().as_str()),
            _places: (slot, InUse::new(inner, digest)),
        };
        Some(
            futures::stream::unfold(Some(st), |st| async move {
                let mut st = st?;
                let stall = st.inner.opts.stall_timeout;
                let next = crate::runtime::timeout(&*st.inner.clock, stall, st.stream.next()).await;
                let upstream = |m: String| Error::upstream(&st.registry, m, true);
                let item = match next {
                    None => Err(upstream(format!(
                        "a passthrough range stalled for {stall:?}"
                    ))),
                    Some(None) if st.left == 0 => return None,
                    Some(None) => Err(upstream(format!(
                        "a passthrough range ended {} bytes short",
                        st.left
                    ))),
                    Some(Some(Ok(b))) if b.len() as u64 > st.left => Err(upstream(
                        "a passthrough range sent more than asked for".to_owned(),
                    )),
                    Some(Some(Ok(b))) => {
                        st.left -= b.len() as u64;
                        let n = b.len() as u64;
                        st.inner.events.event(&Event::BytesFromUpstream(n));
                        st.inner.events.event(&Event::BytesServed(n));
                        Ok(b)
                    }
                    Some(Some(Err(e))) => Err(e),
                };
                // After an error the stream ends: a failed transfer, not a short answer.
                match item {
                    Ok(b) => Some((Ok(b), Some(st))),
                    Err(e) => Some((Err(e), None)),
                }
            })
            .boxed(),
        )
    }

    /// Waits for the fetch of `digest` in flight, if any, to end: `Ok`
    /// once it committed (or there is none), its error if it failed. An
    /// answer completes when its blob verified, before the commit; a
    /// caller that needs the blob stored (a prefetch) waits here.
    pub(crate) async fn settled(&self, digest: &Digest) -> Result<()> {
        let fetch = lock(&self.inner.inflight).get(digest).cloned();
        match fetch {
            Some(f) => f.finished().await,
            None => Ok(()),
        }
    }

    /// The size of a stored blob (from memory when known lately), or `None`.
    async fn stored_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let inner = &self.inner;
        if let Some(size) = inner.hot.size(digest) {
            return Ok(Some(size));
        }
        let info = inner.store.stat(digest).await?;
        if let Some(i) = &info {
            inner.hot.keep_size(digest, i.size);
        }
        Ok(info.map(|i| i.size))
    }

    /// Records a read's access time, off the request path and at most once
    /// per `touch_interval` per blob.
    fn touch_later(&self, digest: &Digest) {
        let inner = &self.inner;
        if inner.hot.should_touch(digest) {
            let (store, d, now) = (inner.store.clone(), digest.clone(), inner.clock.now());
            // Access times only steer eviction; failing to record one must not fail a read.
            inner.spawner.spawn(
                async move {
                    let _ = store.touch(&d, now).await;
                }
                .boxed(),
            );
        }
    }

    async fn serve_stored(
        &self,
        ctx: &Ctx,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobResponse> {
        let inner = &self.inner;
        // Counted and touched once the blob turned out to be stored.
        let hit = || {
            self.touch_later(digest);
            inner.events.event(&Event::Blob {
                rule: ctx.rule.name(),
                status: CacheStatus::Hit,
            });
        };
        if let Some((bytes, _)) = inner.hot.content(digest) {
            hit();
            return Self::small_response(bytes, range, &*inner.events);
        }
        let guard = InUse::new(inner, digest);
        let events = inner.events.clone();
        // The stream counts what it serves and keeps the blob in use.
        let counted = |s: crate::store::ByteStream| {
            s.map(move |c| {
                let _keep = &guard;
                if let Ok(b) = &c {
                    events.event(&Event::BytesServed(b.len() as u64));
                }
                c
            })
            .boxed()
        };
        let read = inner.store.get(digest, range).await?;
        hit();
        inner.hot.keep_size(digest, read.size);
        if range.is_none() && read.size as usize <= inner.hot.max_item() {
            // Small and whole: keep it in memory for the next request.
            let bytes = collect_small(read.payload.into_stream(), digest, read.size).await?;
            inner.hot.keep_content(digest, bytes.clone(), None);
            return Self::small_response(bytes, range, &*inner.events);
        }
        let body = match read.payload {
            BlobPayload::Stream(s) => BlobBody::Stream(counted(s)),
            BlobPayload::File(f) => BlobBody::File(FileBody {
                file: f.file,
                range: f.range,
                events: inner.events.clone(),
                stream: counted(f.stream),
                _in_use: InUse::new(inner, digest),
            }),
        };
        Ok(BlobResponse {
            size: read.size,
            range: read.range,
            status: CacheStatus::Hit,
            verified: true,
            body,
        })
    }

    /// A response of small content held in memory, counted as served.
    fn small_response(
        bytes: bytes::Bytes,
        range: Option<ByteRange>,
        events: &dyn crate::events::EventSink,
    ) -> Result<BlobResponse> {
        let size = bytes.len() as u64;
        let span = match range {
            Some(r) => r.resolve(size)?,
            None => 0..size,
        };
        let part = bytes.slice(span.start as usize..span.end as usize);
        events.event(&Event::BytesServed(part.len() as u64));
        Ok(BlobResponse {
            size,
            range: span,
            status: CacheStatus::Hit,
            verified: true,
            body: BlobBody::Bytes(super::MemoryBody { bytes: part }),
        })
    }

    /// A blob's size without its body: from the store, or from a `HEAD` to
    /// the upstream (which does not start a download).
    pub async fn head_blob(&self, name: &RepoName, digest: &Digest) -> Result<(u64, CacheStatus)> {
        self.head_blob_for(name, digest, &Caller::Client).await
    }

    /// [`head_blob`](Self::head_blob) for `caller` (see [`blob_for`](Self::blob_for)).
    pub async fn head_blob_for(
        &self,
        name: &RepoName,
        digest: &Digest,
        caller: &Caller,
    ) -> Result<(u64, CacheStatus)> {
        let ctx = self.ctx_for(name, caller)?;
        let inner = &self.inner;
        let ungranted = ctx.restricts_blobs() && ctx.is_scanner();
        let entitled = inner.is_entitled(&ctx.local, digest).await?;
        if ctx.restricts_blobs() && !ctx.is_scanner() && !entitled {
            return Err(Error::blob_unknown(digest));
        }
        if ctx.store_only() && !entitled {
            return Err(super::store_only::blob_not_cached(digest));
        }
        if let Some(size) = self.stored_size(digest).await? {
            if !entitled {
                self.vouch(&ctx, digest, ungranted).await?;
            }
            return Ok((size, CacheStatus::Hit));
        }
        if ctx.store_only() {
            return Err(super::store_only::blob_not_cached(digest));
        }
        let size = inner
            .call(UpstreamCall::BlobHead, || {
                ctx.upstream.head_blob(&ctx.upstream_repo, digest)
            })
            .await;
        match size {
            Ok(size) => {
                if !ungranted {
                    inner.entitle(name, digest).await?;
                }
                Ok((size, CacheStatus::Miss))
            }
            Err(e) => {
                self.upstream_error(&ctx, &e);
                Err(e)
            }
        }
    }

    /// Has the request's upstream confirm it has blob `d` (a `HEAD`): a
    /// grant for the repository, unless `ungranted` (a scanner's read).
    async fn vouch(&self, ctx: &Ctx, d: &Digest, ungranted: bool) -> Result<()> {
        if !ungranted {
            return self.confirm_blob(ctx, d).await;
        }
        let r = self
            .inner
            .call(UpstreamCall::BlobHead, || {
                ctx.upstream.head_blob(&ctx.upstream_repo, d)
            })
            .await;
        if let Err(e) = &r {
            self.upstream_error(ctx, e);
        }
        r.map(|_| ())
    }
}

/// A passthrough range's answer: a miss, not verified.
fn unverified(
    size: u64,
    span: std::ops::Range<u64>,
    stream: crate::store::ByteStream,
) -> BlobResponse {
    BlobResponse {
        size,
        range: span,
        status: CacheStatus::Miss,
        verified: false,
        body: BlobBody::Stream(stream),
    }
}

/// Reads a small stored blob of `size` bytes into one buffer; a store that
/// yields another length is an error, not a short or long answer.
async fn collect_small(
    mut stream: crate::store::ByteStream,
    digest: &Digest,
    size: u64,
) -> Result<bytes::Bytes> {
    let mut buf = bytes::BytesMut::with_capacity(size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if (buf.len() + chunk.len()) as u64 > size {
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.len() as u64 != size {
        return Err(Error::storage_msg(
            "get",
            format!("stored {digest} is not {size} bytes long"),
        ));
    }
    Ok(buf.freeze())
}
