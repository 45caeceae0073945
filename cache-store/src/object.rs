//! Object storage through the `object_store` crate: Azure Blob, S3 and
//! GCS, or any other [`ObjectStore`], the way several cache instances
//! share one store.
//!
//! Layout under the store's prefix:
//!
//! ```text
//! blobs/sha256/abcdef...                committed blobs, named by digest
//! access/sha256/abcdef.../<unix ms>     a blob's last recorded access
//! meta/tags/library/nginx/latest        metadata values
//! ```
//!
//! A staged write spools to an unnamed local temporary file (gone with the
//! process, whatever happens to it), hashed as it is written; readers
//! following a fetch read the spool. Commit verifies digest and size, then
//! uploads the spool under the blob's name in one `PUT`, or one multipart
//! upload for large blobs. An object store publishes an object whole or not
//! at all, so no reader ever sees part of a blob, and two instances
//! committing one digest write the same bytes.
//!
//! Access times are object names rather than object contents, so listing
//! every blob with its access time takes two listings and no reads.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::{
    BlobInfo, BlobPayload, BlobRead, BlobStore, ByteRange, Digest, Error, MetaKey, Result,
    StagedBlob, StagedReader,
};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion,
    WriteMultipart,
};

use crate::fs::{blocking, pread_exact};
use crate::staged::{self, HashingSpool};

/// Blobs up to this size are uploaded in one `PUT`; larger ones in parts of
/// this size (S3 needs at least 5 MiB per part but the last).
const PART: usize = 16 * 1024 * 1024;
/// Parts in flight at once during a multipart upload.
const PARTS_IN_FLIGHT: usize = 4;
/// The span of one ranged GET of a blob read.
const READ_CHUNK: u64 = 8 * 1024 * 1024;
/// Ranged GETs of one read in flight at once: the next piece always, and
/// up to two more while the store's read-ahead budget lasts.
const READ_AHEAD: usize = 3;
/// Default bytes of read-ahead all reads of one store may hold together.
const READ_AHEAD_BUDGET: usize = 128 * 1024 * 1024;
/// The span of a read's first GET, which is read whole before the read
/// answers: small, so the first byte is not kept waiting.
const FIRST_PIECE: u64 = 256 * 1024;

struct Inner {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    spool_dir: PathBuf,
    spools: AtomicUsize,
    /// Read-ahead beyond each read's next piece, in bytes (see `Pieces`).
    read_ahead: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The stores' own Debug prints credentials (an Azure key's bytes,
        // say); their Display names only the account and container.
        f.debug_struct("ObjectBlobStore")
            .field("store", &format_args!("{}", self.store))
            .field("prefix", &self.prefix.as_ref())
            .field("spool_dir", &self.spool_dir)
            .finish_non_exhaustive()
    }
}

/// A [`BlobStore`] on object storage. Cloning shares the store.
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    inner: Arc<Inner>,
}

impl ObjectBlobStore {
    /// A store under `prefix` (may be empty) of `store`, spooling staged
    /// writes to unnamed temporary files in `spool_dir`, which must exist.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        spool_dir: impl Into<PathBuf>,
    ) -> Result<Self> {
        let prefix = Path::parse(prefix)
            .map_err(|e| Error::storage("open", format!("object store prefix {prefix:?}"), e))?;
        Ok(ObjectBlobStore {
            inner: Arc::new(Inner {
                store,
                prefix,
                spool_dir: spool_dir.into(),
                spools: AtomicUsize::new(0),
                read_ahead: Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_BUDGET)),
            }),
        })
    }

    /// A store at `url` (`az://container/prefix` with the `azure` feature,
    /// `s3://bucket/prefix` with `aws`, `gs://bucket/prefix` with `gcp`,
    /// `memory:///` always), configured with `object_store`'s option names
    /// (`azure_storage_account_name`, `aws_region`, ...). A scheme whose
    /// feature is off is an error naming the URL.
    pub fn from_url(
        url: &str,
        options: impl IntoIterator<Item = (String, String)>,
        spool_dir: impl Into<PathBuf>,
    ) -> Result<Self> {
        let bad = |message: String, e: Box<dyn std::error::Error + Send + Sync>| {
            Error::storage("open", format!("{message}: {e}"), e)
        };
        let parsed =
            url::Url::parse(url).map_err(|e| bad(format!("object store URL {url:?}"), e.into()))?;
        let (store, path) = object_store::parse_url_opts(&parsed, options)
            .map_err(|e| bad(format!("object store URL {url:?}"), e.into()))?;
        // object_store drops the first path segment of `az://` URLs (it
        // takes it for the container, while the builder takes the host):
        // where the host or user names the bucket, the whole path is ours.
        let prefix = match parsed.scheme() {
            "http" | "https" => path,
            _ => Path::from_url_path(parsed.path())
                .map_err(|e| bad(format!("object store URL {url:?}"), e.into()))?,
        };
        ObjectBlobStore::new(Arc::from(store), prefix.as_ref(), spool_dir)
    }

    /// Staged writes whose spool file is still open (for tests: 0 whenever
    /// no staged write or reader of one is alive).
    pub fn open_spools(&self) -> usize {
        self.inner.spools.load(Ordering::SeqCst)
    }

    fn path(&self, parts: &[&str]) -> Path {
        let mut p = self.inner.prefix.clone();
        for part in parts {
            p = p.child(*part);
        }
        p
    }

    fn blob_path(&self, d: &Digest) -> Path {
        self.path(&["blobs", d.algorithm().as_str(), d.hex()])
    }

    fn access_dir(&self, d: &Digest) -> Path {
        self.path(&["access", d.algorithm().as_str(), d.hex()])
    }

    fn meta_path(&self, key: &MetaKey) -> Path {
        let mut p = self.path(&["meta"]);
        for seg in key.as_str().split('/') {
            p = p.child(seg);
        }
        p
    }

    /// Everything under `dir`, as (the path's parts after `dir`, meta).
    async fn list_under(&self, dir: &Path) -> Result<Vec<(Vec<String>, object_store::ObjectMeta)>> {
        let depth = dir.parts().count();
        let metas: Vec<_> = self
            .inner
            .store
            .list(Some(dir))
            .try_collect()
            .await
            .map_err(|e| os_err("list", dir, e))?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let rest = m
                    .location
                    .parts()
                    .skip(depth)
                    .map(|p| p.as_ref().to_owned())
                    .collect();
                (rest, m)
            })
            .collect())
    }
}

/// The pieces of a read after its first, as a stream: one ranged GET per
/// `READ_CHUNK`, each read whole by a task of its own, so a request never
/// waits on a slow client and none outlives object_store's request timeout
/// however long the transfer takes. The next piece is always in flight;
/// up to `READ_AHEAD - 1` more while the store-wide read-ahead budget has
/// room for them, so the store's time to first byte is paid once rather
/// than per piece, and memory stays bounded: one piece per read, plus the
/// budget. Nothing is requested until the stream is polled; dropping it
/// cancels what is in flight. The first error ends it.
struct Pieces {
    store: Arc<dyn ObjectStore>,
    path: Path,
    budget: Arc<tokio::sync::Semaphore>,
    next: u64,
    end: u64,
    inflight: std::collections::VecDeque<Piece>,
    failed: bool,
}

/// One piece in flight, and the read-ahead budget it holds, if any.
struct Piece {
    task: tokio::task::JoinHandle<Result<Bytes>>,
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Piece {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pieces {
    fn start(&mut self, budget: Option<tokio::sync::OwnedSemaphorePermit>) {
        let (from, to) = (self.next, self.end.min(self.next + READ_CHUNK));
        self.next = to;
        let (store, path) = (self.store.clone(), self.path.clone());
        let task = tokio::spawn(async move {
            let bytes = store
                .get_range(&path, from..to)
                .await
                .map_err(|e| os_err("get", &path, e))?;
            if bytes.len() as u64 != to - from {
                return Err(Error::storage_busy(
                    "get",
                    format!("{path}: {} bytes for range {from}..{to}", bytes.len()),
                ));
            }
            Ok(bytes)
        });
        self.inflight.push_back(Piece {
            task,
            _budget: budget,
        });
    }
}

impl futures::Stream for Pieces {
    type Item = Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        if this.inflight.is_empty() && this.next < this.end {
            this.start(None);
        }
        while this.inflight.len() < READ_AHEAD && this.next < this.end {
            let want = (this.end.min(this.next + READ_CHUNK) - this.next) as u32;
            match this.budget.clone().try_acquire_many_owned(want) {
                Ok(permit) => this.start(Some(permit)),
                Err(_) => break,
            }
        }
        let Some(head) = this.inflight.front_mut() else {
            return Poll::Ready(None);
        };
        let done = match std::pin::Pin::new(&mut head.task).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r.unwrap_or_else(|e| {
                Err(Error::storage_msg("get", format!("a read task ended: {e}")))
            }),
        };
        this.inflight.pop_front();
        this.failed = done.is_err();
        Poll::Ready(Some(done))
    }
}

fn parse_millis(s: &str) -> Option<SystemTime> {
    let ms: u64 = s.parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

fn os_err(op: &'static str, path: &Path, e: object_store::Error) -> Error {
    // The cause in the message too: servers log errors by their Display.
    let message = format!("{path}: {e}");
    if matches!(e, object_store::Error::Generic { .. }) {
        Error::storage_temporary(op, message, e)
    } else {
        Error::storage(op, message, e)
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let path = self.blob_path(digest);
        let meta = match self.inner.store.head(&path).await {
            Ok(m) => m,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(os_err("stat", &path, e)),
        };
        // One HEAD: the access records would cost a listing more, and
        // only `list` (for gc) needs them.
        Ok(Some(BlobInfo {
            digest: digest.clone(),
            size: meta.size,
            last_access: None,
        }))
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead> {
        let path = self.blob_path(digest);
        // The first piece comes with the blob's size (Content-Range), so a
        // read costs no HEAD; a blob that turns out empty, or a range past
        // its end, is answered after one.
        let first = match range {
            None => Some(0..FIRST_PIECE),
            Some(ByteRange::From(s)) => Some(s..s.saturating_add(FIRST_PIECE)),
            Some(ByteRange::Inclusive(s, e)) if s <= e => {
                Some(s..e.saturating_add(1).min(s.saturating_add(FIRST_PIECE)))
            }
            Some(_) => None,
        };
        let mut piece = None;
        if let Some(want) = first {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(want.clone())),
                ..GetOptions::default()
            };
            match self.inner.store.get_opts(&path, opts).await {
                Ok(r) => {
                    let (size, got) = (r.meta.size, r.range.clone());
                    let bytes = r.bytes().await.map_err(|e| os_err("get", &path, e))?;
                    piece = Some((size, got, bytes));
                }
                Err(e) if is_not_found(&e) => return Err(Error::blob_unknown(digest)),
                // Empty, or the range starts past the end: the HEAD below says.
                Err(_) => {}
            }
        }
        let (size, head) = match piece {
            Some((size, got, bytes)) => (size, Some((got, bytes))),
            None => match self.inner.store.head(&path).await {
                Ok(m) => (m.size, None),
                Err(e) if is_not_found(&e) => return Err(Error::blob_unknown(digest)),
                Err(e) => return Err(os_err("get", &path, e)),
            },
        };
        let span = match range {
            Some(r) => r.resolve(size)?,
            None => 0..size,
        };
        let mut pos = span.start;
        let mut first_piece = None;
        if let Some((got, bytes)) = head {
            if got.start != span.start
                || got.end > span.end
                || bytes.len() as u64 != got.end - got.start
            {
                return Err(Error::storage_busy(
                    "get",
                    format!(
                        "{path}: {} bytes for range {got:?} of {span:?}",
                        bytes.len()
                    ),
                ));
            }
            pos = got.end;
            first_piece = Some(bytes);
        }
        // Then the rest in pieces, fetched ahead (see `Pieces`).
        let rest = Pieces {
            store: self.inner.store.clone(),
            path,
            budget: self.inner.read_ahead.clone(),
            next: pos,
            end: span.end,
            inflight: std::collections::VecDeque::new(),
            failed: false,
        };
        let stream = stream::iter(first_piece.map(Ok)).chain(rest).boxed();
        Ok(BlobRead {
            size,
            range: span,
            payload: BlobPayload::Stream(stream),
        })
    }

    async fn stage(&self, digest: &Digest, size: Option<u64>) -> Result<Box<dyn StagedBlob>> {
        let dir = self.inner.spool_dir.clone();
        let file = blocking(move || {
            tempfile::tempfile_in(&dir)
                .map_err(|e| Error::storage("stage", format!("spool file in {}", dir.display()), e))
        })
        .await?;
        self.inner.spools.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(ObjectStaged {
            store: self.clone(),
            spool: HashingSpool::new(
                digest,
                size,
                Arc::new(Spool {
                    file,
                    store: self.inner.clone(),
                }),
                "spool file".to_owned(),
            ),
        }))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        let existed = self.exists("delete", &path).await?;
        for (_, m) in self.list_under(&self.access_dir(digest)).await? {
            delete_quietly(&*self.inner.store, &m.location).await?;
        }
        delete_quietly(&*self.inner.store, &path).await?;
        Ok(existed)
    }

    async fn list(&self) -> Result<BoxStream<'static, Result<BlobInfo>>> {
        let mut access: HashMap<(String, String), SystemTime> = HashMap::new();
        for (rest, _) in self.list_under(&self.path(&["access"])).await? {
            if let [alg, hex, ms] = &rest[..]
                && let Some(t) = parse_millis(ms)
            {
                let e = access.entry((alg.clone(), hex.clone())).or_insert(t);
                *e = (*e).max(t);
            }
        }
        let mut out = Vec::new();
        for (rest, m) in self.list_under(&self.path(&["blobs"])).await? {
            let [alg, hex] = &rest[..] else { continue };
            // Anything that is not a digest's name is not a blob of ours.
            let Ok(digest) = Digest::parse(&format!("{alg}:{hex}")) else {
                continue;
            };
            let last = access
                .get(&(alg.clone(), hex.clone()))
                .copied()
                .unwrap_or_else(|| SystemTime::from(m.last_modified));
            out.push(Ok(BlobInfo {
                digest,
                size: m.size,
                last_access: Some(last),
            }));
        }
        Ok(stream::iter(out).boxed())
    }

    async fn touch(&self, digest: &Digest, at: SystemTime) -> Result<bool> {
        if self.exists("touch", &self.blob_path(digest)).await? {
            let ms = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let name = format!("{ms:020}");
            let dir = self.access_dir(digest);
            let old = self.list_under(&dir).await?;
            let record = dir.child(name.as_str());
            self.inner
                .store
                .put(&record, PutPayload::new())
                .await
                .map_err(|e| os_err("touch", &record, e))?;
            // Only older records go (names are zero-padded milliseconds):
            // a touch racing this one, here or on another instance, may
            // have written a later one, and the latest must survive.
            for (rest, m) in old {
                if rest.first().is_some_and(|r| r.as_str() < name.as_str()) {
                    delete_quietly(&*self.inner.store, &m.location).await?;
                }
            }
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn get_meta(&self, key: &MetaKey) -> Result<Option<Bytes>> {
        let path = self.meta_path(key);
        match self.inner.store.get(&path).await {
            Ok(r) => Ok(Some(
                r.bytes().await.map_err(|e| os_err("get_meta", &path, e))?,
            )),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(os_err("get_meta", &path, e)),
        }
    }

    async fn put_meta(&self, key: &MetaKey, value: Bytes) -> Result<()> {
        let path = self.meta_path(key);
        self.inner
            .store
            .put(&path, PutPayload::from(value))
            .await
            .map(|_| ())
            .map_err(|e| os_err("put_meta", &path, e))
    }

    async fn delete_meta(&self, key: &MetaKey) -> Result<bool> {
        let path = self.meta_path(key);
        let existed = self.exists("delete_meta", &path).await?;
        delete_quietly(&*self.inner.store, &path).await?;
        Ok(existed)
    }

    async fn list_meta(&self, prefix: Option<&MetaKey>) -> Result<Vec<MetaKey>> {
        let root = self.path(&["meta"]);
        let dir = prefix.map_or_else(|| root.clone(), |p| self.meta_path(p));
        let mut keys: Vec<MetaKey> = self
            .list_under(&dir)
            .await?
            .into_iter()
            .filter_map(|(_, m)| {
                let rest: Vec<String> = m
                    .location
                    .parts()
                    .skip(root.parts().count())
                    .map(|p| p.as_ref().to_owned())
                    .collect();
                MetaKey::parse(&rest.join("/")).ok()
            })
            .collect();
        // A key equal to the prefix is "beneath" it too.
        if let Some(p) = prefix
            && !keys.contains(p)
            && self.get_meta(p).await?.is_some()
        {
            keys.push(p.clone());
        }
        Ok(keys)
    }

    async fn create_meta(&self, key: &MetaKey, value: Bytes) -> Result<bool> {
        let path = self.meta_path(key);
        let opts = PutOptions::from(PutMode::Create);
        match self.inner.store.put_opts(&path, value.into(), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(os_err("create_meta", &path, e)),
        }
    }

    async fn replace_meta(&self, key: &MetaKey, expected: &[u8], value: Bytes) -> Result<bool> {
        let path = self.meta_path(key);
        let current = match self.inner.store.get(&path).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(os_err("replace_meta", &path, e)),
        };
        let version = UpdateVersion {
            e_tag: current.meta.e_tag.clone(),
            version: current.meta.version.clone(),
        };
        let bytes = current
            .bytes()
            .await
            .map_err(|e| os_err("replace_meta", &path, e))?;
        if bytes.as_ref() != expected {
            return Ok(false);
        }
        // Written only if nobody wrote since the read (If-Match).
        let opts = PutOptions::from(PutMode::Update(version));
        match self.inner.store.put_opts(&path, value.into(), opts).await {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(false),
            Err(e) => Err(os_err("replace_meta", &path, e)),
        }
    }

    fn shared(&self) -> bool {
        true
    }
}

impl ObjectBlobStore {
    /// Whether an object is at `path` (one HEAD).
    async fn exists(&self, op: &'static str, path: &Path) -> Result<bool> {
        match self.inner.store.head(path).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(os_err(op, path, e)),
        }
    }
}

/// Deletes `path`; an object already gone is not an error.
async fn delete_quietly(store: &dyn ObjectStore, path: &Path) -> Result<()> {
    match store.delete(path).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(os_err("delete", path, e)),
    }
}

/// A staged write's local spool file, shared with its readers; counted
/// while open.
#[derive(Debug)]
struct Spool {
    file: File,
    store: Arc<Inner>,
}

impl staged::SpoolFile for Spool {
    fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.store.spools.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct ObjectStaged {
    store: ObjectBlobStore,
    spool: HashingSpool<Spool>,
}

impl ObjectStaged {
    /// Uploads the spool under `path`: one PUT, or a multipart upload of
    /// `PART`-sized parts read one at a time (memory stays bounded).
    async fn upload(&self, path: &Path) -> Result<()> {
        let store = &self.store.inner.store;
        let written = self.spool.written();
        let read = |pos: u64, len: usize| {
            let spool = self.spool.file().clone();
            blocking(move || {
                pread_exact(&spool.file, len, pos)
                    .map_err(|e| Error::storage("commit", "reading the spool file", e))
            })
        };
        if written <= PART as u64 {
            let body = read(0, written as usize).await?;
            store
                .put(path, PutPayload::from(body))
                .await
                .map_err(|e| os_err("commit", path, e))?;
            return Ok(());
        }
        let upload = store
            .put_multipart(path)
            .await
            .map_err(|e| os_err("commit", path, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut pos = 0u64;
        while pos < written {
            let len = (written - pos).min(PART as u64) as usize;
            let part = match read(pos, len).await {
                Ok(p) if p.len() == len => p,
                Ok(_) | Err(_) => {
                    let _ = w.abort().await;
                    return Err(Error::storage_msg(
                        "commit",
                        format!("spool file of {} unreadable at {pos}", self.spool.digest()),
                    ));
                }
            };
            if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = w.abort().await;
                return Err(os_err("commit", path, e));
            }
            w.put(part);
            pos += len as u64;
        }
        w.finish()
            .await
            .map(|_| ())
            .map_err(|e| os_err("commit", path, e))
    }
}

#[async_trait]
impl StagedBlob for ObjectStaged {
    fn digest(&self) -> &Digest {
        self.spool.digest()
    }

    fn written(&self) -> u64 {
        self.spool.written()
    }

    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.write_chunks(vec![chunk]).await
    }

    async fn write_chunks(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        self.spool.write_chunks(chunks).await
    }

    async fn reader(&self) -> Result<Arc<dyn StagedReader>> {
        Ok(Arc::new(SpoolReader {
            spool: self.spool.file().clone(),
        }))
    }

    async fn verify(&mut self) -> Result<bool> {
        self.spool.verify()?;
        Ok(true)
    }

    async fn commit(mut self: Box<Self>) -> Result<BlobInfo> {
        self.spool.verify()?;
        let path = self.store.blob_path(self.spool.digest());
        // Content-addressed: a blob already stored is this one.
        if !self.store.exists("commit", &path).await? {
            self.upload(&path).await?;
        }
        Ok(BlobInfo {
            digest: self.spool.digest().clone(),
            size: self.spool.written(),
            last_access: Some(SystemTime::now()),
        })
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct SpoolReader {
    spool: Arc<Spool>,
}

#[async_trait]
impl StagedReader for SpoolReader {
    async fn read_at(&self, offset: u64, max: usize) -> Result<Bytes> {
        let spool = self.spool.clone();
        blocking(move || {
            pread_exact(&spool.file, max, offset)
                .map_err(|e| Error::storage("read_at", "spool file", e))
        })
        .await
    }

    fn file(&self) -> Option<Arc<File>> {
        // A second handle on the spool: it stays readable however long a
        // send from it takes, after the spool itself is gone.
        self.spool.file.try_clone().ok().map(Arc::new)
    }
}
