//! An in-process upstream for faults a real registry will not produce on
//! demand: flipped bytes, truncation, stalls, error statuses, slow drips.
//! It counts every request so tests can assert how many were made.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::upstream::{
    Manifest, ManifestHead, TagPage, Upstream, UpstreamBlob, manifest_from_bytes, media_types,
};
use crate::{ByteRange, Clock, Digest, Error, Reference, RepoName, Result, Tag};

/// A fault applied to the next blob GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Flip the lowest bit of the byte at this offset of the blob.
    FlipByte(u64),
    /// End the body cleanly after this many bytes of the response.
    Truncate(u64),
    /// Send this many bytes of the response, then never send another.
    Stall(u64),
    /// Answer with HTTP 5xx (a temporary upstream error).
    ServerError,
    /// Answer 404.
    NotFound,
    /// Answer 429 with a Retry-After.
    TooManyRequests,
    /// Send the body in chunks of this many bytes, sleeping between them.
    Drip {
        /// Bytes per chunk.
        chunk: usize,
        /// Pause between chunks.
        delay: Duration,
    },
}

#[derive(Debug, Default)]
struct Repo {
    tags: BTreeMap<Tag, Digest>,
    manifests: HashMap<Digest, (Bytes, String)>,
    blobs: HashSet<Digest>,
}

#[derive(Debug, Default)]
struct State {
    repos: HashMap<RepoName, Repo>,
    blobs: HashMap<Digest, Bytes>,
    blob_faults: VecDeque<Fault>,
    manifest_faults: VecDeque<Fault>,
    drip: Option<(usize, Duration)>,
    down: bool,
}

/// Request counters of a [`FakeUpstream`].
#[derive(Debug, Default)]
pub struct Calls {
    /// Blob GETs (whole or ranged).
    pub blob_gets: AtomicU64,
    /// Blob GETs that carried a Range.
    pub ranged_blob_gets: AtomicU64,
    /// Blob HEADs.
    pub blob_heads: AtomicU64,
    /// Manifest GETs.
    pub manifest_gets: AtomicU64,
    /// Manifest HEADs.
    pub manifest_heads: AtomicU64,
    /// Tag list requests.
    pub tag_lists: AtomicU64,
}

impl Calls {
    /// Every request of any kind.
    pub fn total(&self) -> u64 {
        [
            &self.blob_gets,
            &self.blob_heads,
            &self.manifest_gets,
            &self.manifest_heads,
            &self.tag_lists,
        ]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum()
    }

    /// Reads one counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }
}

/// An in-process upstream registry with fault injection and request counts.
#[derive(Debug)]
pub struct FakeUpstream {
    name: String,
    state: Mutex<State>,
    /// What was asked of it.
    pub calls: Calls,
    chunk: usize,
    clock: Arc<dyn Clock>,
}

/// What [`FakeUpstream::push_image`] created.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// The manifest's digest.
    pub manifest: Digest,
    /// The manifest bytes.
    pub manifest_bytes: Bytes,
    /// The config blob's digest.
    pub config: Digest,
    /// The layers' digests and contents.
    pub layers: Vec<(Digest, Bytes)>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeUpstream {
    /// An empty upstream named `name` (used in its errors), streaming blobs
    /// in 64 KiB chunks and sleeping on `clock` for drips.
    pub fn new(name: &str, clock: Arc<dyn Clock>) -> Self {
        FakeUpstream {
            name: name.to_owned(),
            state: Mutex::new(State::default()),
            calls: Calls::default(),
            chunk: 64 * 1024,
            clock,
        }
    }

    /// Adds a blob to a repository.
    pub fn add_blob(&self, repo: &RepoName, data: Bytes) -> Digest {
        let d = Digest::sha256_of(&data);
        let mut s = lock(&self.state);
        s.blobs.insert(d.clone(), data);
        s.repos
            .entry(repo.clone())
            .or_default()
            .blobs
            .insert(d.clone());
        d
    }

    /// Adds a manifest to a repository, tagged if `tag` is given.
    pub fn add_manifest(
        &self,
        repo: &RepoName,
        tag: Option<&Tag>,
        bytes: Bytes,
        media_type: &str,
    ) -> Digest {
        let d = Digest::sha256_of(&bytes);
        let mut s = lock(&self.state);
        let r = s.repos.entry(repo.clone()).or_default();
        r.manifests
            .insert(d.clone(), (bytes, media_type.to_owned()));
        if let Some(t) = tag {
            r.tags.insert(t.clone(), d.clone());
        }
        d
    }

    /// Serves `data` as the blob `digest` of a repository, whatever `data`
    /// hashes to: an upstream that lies about content.
    pub fn add_blob_as(&self, repo: &RepoName, digest: &Digest, data: Bytes) {
        let mut s = lock(&self.state);
        s.blobs.insert(digest.clone(), data);
        s.repos
            .entry(repo.clone())
            .or_default()
            .blobs
            .insert(digest.clone());
    }

    /// Builds and adds an OCI image with the given layers, tagged `tag`.
    pub fn push_image(&self, repo: &RepoName, tag: &Tag, layers: &[Bytes]) -> PushedImage {
        let config = Bytes::from(format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"layers":{}}}"#,
            layers.len()
        ));
        let config_d = self.add_blob(repo, config.clone());
        let mut descs = Vec::new();
        let mut out_layers = Vec::new();
        for l in layers {
            let d = self.add_blob(repo, l.clone());
            descs.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#,
                l.len()
            ));
            out_layers.push((d, l.clone()));
        }
        let manifest = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_d}","size":{}}},"layers":[{}]}}"#,
            media_types::OCI_MANIFEST,
            config.len(),
            descs.join(",")
        ));
        let md = self.add_manifest(repo, Some(tag), manifest.clone(), media_types::OCI_MANIFEST);
        PushedImage {
            manifest: md,
            manifest_bytes: manifest,
            config: config_d,
            layers: out_layers,
        }
    }

    /// Points `tag` at a manifest already added.
    pub fn retag(&self, repo: &RepoName, tag: &Tag, d: &Digest) {
        lock(&self.state)
            .repos
            .entry(repo.clone())
            .or_default()
            .tags
            .insert(tag.clone(), d.clone());
    }

    /// Removes `tag`: the upstream answers 404 for it from now on.
    pub fn untag(&self, repo: &RepoName, tag: &Tag) {
        if let Some(r) = lock(&self.state).repos.get_mut(repo) {
            r.tags.remove(tag);
        }
    }

    /// Applies `fault` to the next blob GET (faults queue up in order).
    pub fn fail_next_blob(&self, fault: Fault) {
        lock(&self.state).blob_faults.push_back(fault);
    }

    /// Applies `fault` to the next manifest GET or HEAD: `ServerError`,
    /// `NotFound`, `TooManyRequests`, `Stall(_)` (never answer), or
    /// `Drip { delay, .. }` (answer after `delay`, on the upstream's clock).
    pub fn fail_next_manifest(&self, fault: Fault) {
        lock(&self.state).manifest_faults.push_back(fault);
    }

    /// Sends every blob body in chunks of `chunk` bytes with `delay`
    /// between them (on top of any queued fault), or at full speed for `None`.
    pub fn set_drip(&self, drip: Option<(usize, Duration)>) {
        lock(&self.state).drip = drip;
    }

    /// While down, every request fails with a temporary upstream error (503).
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    fn err(&self, status: u16) -> Error {
        Error::upstream(&self.name, format!("HTTP {status}"), status >= 500)
    }

    fn check_down(&self) -> Result<()> {
        if lock(&self.state).down {
            Err(self.err(503))
        } else {
            Ok(())
        }
    }

    /// Takes the next manifest fault, failing or stalling as it says.
    async fn manifest_fault(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let fault = lock(&self.state).manifest_faults.pop_front();
        match fault {
            Some(Fault::ServerError) => Err(self.err(503)),
            Some(Fault::NotFound) => Err(Error::manifest_unknown(repo, reference)),
            Some(Fault::TooManyRequests) => Err(Error::TooManyRequests {
                retry_after: Some(Duration::from_secs(30)),
            }),
            Some(Fault::Stall(_)) => futures::future::pending().await,
            Some(Fault::Drip { delay, .. }) => {
                self.clock.sleep(delay).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn find_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<(Bytes, String)> {
        let s = lock(&self.state);
        let unknown = || Error::manifest_unknown(repo, reference);
        let r = s.repos.get(repo).ok_or_else(unknown)?;
        let d = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => r.tags.get(t).cloned().ok_or_else(unknown)?,
        };
        r.manifests.get(&d).cloned().ok_or_else(unknown)
    }

    fn find_blob(&self, repo: &RepoName, d: &Digest) -> Result<Bytes> {
        let s = lock(&self.state);
        s.repos
            .get(repo)
            .filter(|r| r.blobs.contains(d) || r.manifests.contains_key(d))
            .and_then(|_| {
                s.blobs.get(d).cloned().or_else(|| {
                    s.repos
                        .get(repo)
                        .and_then(|r| r.manifests.get(d))
                        .map(|(b, _)| b.clone())
                })
            })
            .ok_or_else(|| Error::blob_unknown(d))
    }
}

#[async_trait]
impl Upstream for FakeUpstream {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        _accept: &[&str],
    ) -> Result<Manifest> {
        self.calls.manifest_gets.fetch_add(1, Ordering::SeqCst);
        self.check_down()?;
        self.manifest_fault(repo, reference).await?;
        let (bytes, mt) = self.find_manifest(repo, reference)?;
        manifest_from_bytes(bytes, mt, reference)
    }

    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        _accept: &[&str],
    ) -> Result<ManifestHead> {
        self.calls.manifest_heads.fetch_add(1, Ordering::SeqCst);
        self.check_down()?;
        self.manifest_fault(repo, reference).await?;
        let (bytes, media_type) = self.find_manifest(repo, reference)?;
        Ok(ManifestHead {
            digest: Digest::sha256_of(&bytes),
            media_type,
            size: bytes.len() as u64,
        })
    }

    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<UpstreamBlob> {
        self.calls.blob_gets.fetch_add(1, Ordering::SeqCst);
        if range.is_some() {
            self.calls.ranged_blob_gets.fetch_add(1, Ordering::SeqCst);
        }
        self.check_down()?;
        let (fault, drip) = {
            let mut s = lock(&self.state);
            (s.blob_faults.pop_front(), s.drip)
        };
        match fault {
            Some(Fault::ServerError) => return Err(self.err(503)),
            Some(Fault::NotFound) => {
                return Err(Error::blob_unknown(digest));
            }
            Some(Fault::TooManyRequests) => {
                return Err(Error::TooManyRequests {
                    retry_after: Some(Duration::from_secs(30)),
                });
            }
            _ => {}
        }
        let data = self.find_blob(repo, digest)?;
        let size = data.len() as u64;
        let span = match range {
            Some(r) => r.resolve(size)?,
            None => 0..size,
        };
        let mut body = data.slice(span.start as usize..span.end as usize).to_vec();
        let (mut chunk, mut delay) = match drip {
            Some((c, d)) => (c.max(1), Some(d)),
            None => (self.chunk, None),
        };
        let mut stall_after = None;
        match fault {
            Some(Fault::FlipByte(at)) if at >= span.start && at < span.end => {
                body[(at - span.start) as usize] ^= 1;
            }
            Some(Fault::Truncate(n)) => body.truncate(n as usize),
            Some(Fault::Stall(n)) => stall_after = Some(n as usize),
            Some(Fault::Drip { chunk: c, delay: d }) => {
                chunk = c.max(1);
                delay = Some(d);
            }
            _ => {}
        }
        let body = Bytes::from(body);
        let mut chunks: Vec<Bytes> = (0..body.len())
            .step_by(chunk)
            .map(|i| body.slice(i..(i + chunk).min(body.len())))
            .collect();
        if let Some(n) = stall_after {
            let mut sent = 0usize;
            chunks.retain(|c| {
                let keep = sent < n;
                sent += c.len();
                keep
            });
        }
        let clock = self.clock.clone();
        let stream: BoxStream<'static, Result<Bytes>> = futures::stream::iter(chunks)
            .then(move |c| {
                let sleep = delay.map(|d| clock.sleep(d));
                async move {
                    if let Some(s) = sleep {
                        s.await;
                    }
                    Ok(c)
                }
            })
            .boxed();
        let stream = if stall_after.is_some() {
            stream.chain(futures::stream::pending()).boxed()
        } else {
            stream
        };
        Ok(UpstreamBlob {
            size,
            range: span,
            stream,
        })
    }

    async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.calls.blob_heads.fetch_add(1, Ordering::SeqCst);
        self.check_down()?;
        Ok(self.find_blob(repo, digest)?.len() as u64)
    }

    async fn tags(&self, repo: &RepoName, page: &TagPage) -> Result<Vec<Tag>> {
        self.calls.tag_lists.fetch_add(1, Ordering::SeqCst);
        self.check_down()?;
        let s = lock(&self.state);
        let r = s.repos.get(repo).ok_or_else(|| Error::name_unknown(repo))?;
        Ok(r.tags
            .keys()
            .filter(|t| page.last.as_ref().is_none_or(|l| t.as_str() > l.as_str()))
            .take(page.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn catalog(
        &self,
        last: Option<&RepoName>,
        limit: usize,
    ) -> Result<Option<Vec<RepoName>>> {
        self.check_down()?;
        let s = lock(&self.state);
        let mut repos: Vec<RepoName> = s
            .repos
            .keys()
            .filter(|r| last.is_none_or(|l| r.as_str() > l.as_str()))
            .cloned()
            .collect();
        repos.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        repos.truncate(limit);
        Ok(Some(repos))
    }
}

/// An upstream that refuses everything with an error code, for tests that
/// need "the upstream must not be called" to be loud.
#[derive(Debug, Default)]
pub struct PanicUpstream;

#[async_trait]
impl Upstream for PanicUpstream {
    async fn manifest(&self, _: &RepoName, _: &Reference, _: &[&str]) -> Result<Manifest> {
        panic!("PanicUpstream::manifest called")
    }
    async fn head_manifest(&self, _: &RepoName, _: &Reference, _: &[&str]) -> Result<ManifestHead> {
        panic!("PanicUpstream::head_manifest called")
    }
    async fn blob(&self, _: &RepoName, _: &Digest, _: Option<ByteRange>) -> Result<UpstreamBlob> {
        panic!("PanicUpstream::blob called")
    }
    async fn head_blob(&self, _: &RepoName, _: &Digest) -> Result<u64> {
        panic!("PanicUpstream::head_blob called")
    }
    async fn tags(&self, _: &RepoName, _: &TagPage) -> Result<Vec<Tag>> {
        panic!("PanicUpstream::tags called")
    }
}
