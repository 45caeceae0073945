//! Blobs: from the store when stored and entitled, else through one shared
//! upstream fetch per digest (see [`super::fetch`]).

use std::sync::Arc;

use futures::{FutureExt, StreamExt};

use super::fetch::{Fetch, Job, Ready};
use super::queue::UpstreamCall;
use super::response::{BlobBody, BlobResponse, FileBody};
use super::{Ctx, InUse, PullThroughCache, lock};
use crate::digest::Digest;
use crate::error::Result;
use crate::events::{CacheStatus, Event};
use crate::names::RepoName;
use crate::range::ByteRange;
use crate::store::{BlobPayload, BlobStoreExt};

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
        let ctx = self.ctx(name)?;
        let inner = &self.inner;
        let entitled = inner.is_entitled(&ctx.local, digest).await?;
        if self.stored_size(digest).await?.is_some() {
            if !entitled {
                self.confirm_blob(&ctx, digest).await?;
            }
            return self.serve_stored(&ctx, digest, range).await;
        }
        let (fetch, interest, slot) = {
            let mut m = lock(&inner.inflight);
            let joined = m.get(digest).and_then(|f| f.join().map(|i| (f.clone(), i)));
            match joined {
                Some((f, i)) => (f, i, None),
                None => {
                    let slot = ctx.queue.enter(ctx.rule.registry())?;
                    let f = Arc::new(Fetch::new(digest.clone(), name.clone()));
                    let i = f.join().expect("a new fetch has not been deserted");
                    m.insert(digest.clone(), f.clone());
                    (f, i, Some(slot))
                }
            }
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
            inner.spawner.spawn(job.run().boxed());
        } else if !entitled && !fetch.is_entitled(name) {
            // Another repository started this fetch: ours must vouch too.
            self.confirm_blob(&ctx, digest).await?;
            fetch.entitle(name.clone());
        }
        match fetch.ready().await? {
            Ready::InStore => self.serve_stored(&ctx, digest, range).await,
            Ready::Size(size) => {
                let span = match range {
                    Some(r) => r.resolve(size)?,
                    None => 0..size,
                };
                if span.is_empty() {
                    // No byte to hold back: the response head is the whole answer.
                    fetch.finished().await?;
                }
                let guard = InUse::new(inner, digest);
                inner.events.event(&Event::Blob {
                    rule: ctx.rule.name(),
                    status: CacheStatus::Miss,
                });
                Ok(BlobResponse {
                    size,
                    range: span.clone(),
                    status: CacheStatus::Miss,
                    body: BlobBody::Stream(fetch.stream(inner.clone(), span, (guard, interest))),
                })
            }
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
        let guard = InUse::new(inner, digest);
        self.touch_later(digest);
        inner.events.event(&Event::Blob {
            rule: ctx.rule.name(),
            status: CacheStatus::Hit,
        });
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
        let small = inner.hot.content(digest).map(|(b, _)| b);
        let small = match small {
            Some(b) => Some(b),
            None if range.is_none()
                && self
                    .stored_size(digest)
                    .await?
                    .is_some_and(|n| n as usize <= inner.hot.max_item()) =>
            {
                let b = inner.store.get_bytes(digest).await?;
                inner.hot.keep_content(digest, b.clone(), None);
                Some(b)
            }
            None => None,
        };
        if let Some(bytes) = small {
            let size = bytes.len() as u64;
            let span = match range {
                Some(r) => r.resolve(size)?,
                None => 0..size,
            };
            let part = bytes.slice(span.start as usize..span.end as usize);
            return Ok(BlobResponse {
                size,
                range: span,
                status: CacheStatus::Hit,
                body: BlobBody::Stream(counted(
                    futures::stream::once(async move { Ok(part) }).boxed(),
                )),
            });
        }
        let read = inner.store.get(digest, range).await?;
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
            body,
        })
    }

    /// A blob's size without its body: from the store, or from a `HEAD` to
    /// the upstream (which does not start a download).
    pub async fn head_blob(&self, name: &RepoName, digest: &Digest) -> Result<(u64, CacheStatus)> {
        let ctx = self.ctx(name)?;
        let inner = &self.inner;
        if let Some(size) = self.stored_size(digest).await? {
            self.ensure_entitled(&ctx, digest).await?;
            return Ok((size, CacheStatus::Hit));
        }
        let size = inner
            .call(UpstreamCall::BlobHead, || {
                ctx.upstream.head_blob(&ctx.upstream_repo, digest)
            })
            .await;
        match size {
            Ok(size) => {
                inner.entitle(name, digest).await?;
                Ok((size, CacheStatus::Miss))
            }
            Err(e) => {
                self.upstream_error(&ctx, &e);
                Err(e)
            }
        }
    }
}
