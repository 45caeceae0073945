//! The filesystem [`BlobStore`], the default backend.
//!
//! Layout under the root:
//!
//! ```text
//! .lock                         held (flock) while a store is open
//! blobs/sha256/ab/abcdef...     committed blobs, named by digest
//! meta/tags/library/nginx/latest@   metadata values ('@' never occurs in a key)
//! staging/                      writes in progress, same filesystem
//! ```
//!
//! A write goes to a `create_new` file in `staging/`, is hashed as it is
//! written, and on commit is fsynced, renamed into place, and its directory
//! fsynced (the fsyncs can be turned off). Opening a store removes whatever
//! a crashed process left in `staging/`. Blob access times are kept as the
//! files' modification times, which reads never change.

use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::{
    Algorithm, BlobInfo, BlobPayload, BlobRead, BlobStore, ByteRange, Digest, Error, FileSpan,
    MetaKey, Result, StagedBlob, StagedReader,
};
use futures::stream::{self, BoxStream, StreamExt};

use crate::staged::{self, HashingSpool};

/// Size of the reads a blob stream makes.
const READ_CHUNK: usize = 1024 * 1024;

/// Options of an [`FsStore`].
#[derive(Debug, Clone)]
pub struct FsStoreOptions {
    /// fsync each committed file and its directory (default `true`). Turning
    /// it off trades crash durability (not atomicity) for speed.
    pub fsync: bool,
}

impl Default for FsStoreOptions {
    fn default() -> Self {
        FsStoreOptions { fsync: true }
    }
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    opts: FsStoreOptions,
    counter: AtomicU64,
    /// Holds the advisory lock on `.lock` for the store's lifetime.
    _lock: File,
    /// Serialises conditional metadata writes. The advisory lock keeps
    /// other processes out, so a lock within this one makes them atomic.
    cas: std::sync::Mutex<()>,
}

/// A [`BlobStore`] on a local filesystem. Cloning shares the store.
#[derive(Debug, Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

fn io_err(op: &'static str, path: &Path, e: io::Error) -> Error {
    staged::io_err(op, &path.display().to_string(), e)
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::storage("spawn_blocking", "a filesystem task failed", e))?
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root` with default options.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(root, FsStoreOptions::default()).await
    }

    /// Opens (creating if needed) a store rooted at `root`.
    ///
    /// Takes an exclusive advisory lock on the root (a second open of the
    /// same root fails until the first store is dropped), and removes
    /// leftover staging files of a previous process.
    pub async fn open_with(root: impl Into<PathBuf>, opts: FsStoreOptions) -> Result<Self> {
        let root = root.into();
        blocking(move || {
            for d in ["blobs/sha256", "blobs/sha512", "meta", "staging"] {
                let p = root.join(d);
                fs::create_dir_all(&p).map_err(|e| io_err("open", &p, e))?;
            }
            let lock_path = root.join(".lock");
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| io_err("open", &lock_path, e))?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(Error::storage_busy(
                        "open",
                        format!("{} is in use by another store", root.display()),
                    ));
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path, e)),
            }
            let staging = root.join("staging");
            let mut removed = 0usize;
            for entry in fs::read_dir(&staging).map_err(|e| io_err("open", &staging, e))? {
                let entry = entry.map_err(|e| io_err("open", &staging, e))?;
                fs::remove_file(entry.path()).map_err(|e| io_err("open", &entry.path(), e))?;
                removed += 1;
            }
            if removed > 0 {
                tracing::info!(removed, root = %root.display(), "removed leftover staging files");
            }
            Ok(FsStore {
                inner: Arc::new(Inner {
                    root,
                    opts,
                    counter: AtomicU64::new(0),
                    _lock: lock,
                    cas: std::sync::Mutex::new(()),
                }),
            })
        })
        .await
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The path of a committed blob. Built only from a validated [`Digest`].
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.inner.root, digest)
    }

    /// Files currently in the staging directory.
    pub fn staging_count(&self) -> usize {
        fs::read_dir(self.inner.root.join("staging")).map_or(0, |d| d.count())
    }

    fn staging_path(&self, tag: &str) -> PathBuf {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        self.inner
            .root
            .join("staging")
            .join(format!("{tag}.{}-{n}.tmp", std::process::id()))
    }

    /// Writes `value` under `key` if the current value is `expected`
    /// (`None`: if there is none). Returns whether it wrote.
    async fn write_meta_if(
        &self,
        key: &MetaKey,
        expected: Option<Bytes>,
        value: Bytes,
    ) -> Result<bool> {
        let (this, key) = (self.clone(), key.clone());
        let target = self.meta_path(&key);
        let staging = self.staging_path("meta");
        blocking(move || {
            let _held = this.inner.cas.lock().unwrap_or_else(|p| p.into_inner());
            let current = match fs::read(&target) {
                Ok(v) => Some(v),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("write_meta_if", &target, e)),
            };
            if current.as_deref() != expected.as_deref() {
                return Ok(false);
            }
            let write = || -> io::Result<()> {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&staging)?;
                f.write_all(&value)?;
                publish(&staging, Some(&f), &target, this.inner.opts.fsync)
            };
            write().map_err(|e| {
                let _ = fs::remove_file(&staging);
                io_err("write_meta_if", &target, e)
            })?;
            Ok(true)
        })
        .await
    }

    fn meta_path(&self, key: &MetaKey) -> PathBuf {
        // Keys never contain '@', so "a@" (a value) never collides with "a/" (a directory).
        self.inner.root.join("meta").join(format!("{key}@"))
    }
}

fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join("blobs")
        .join(digest.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
}

/// Moves a finished staging file into place: fsync the file, rename, fsync
/// the directory (and the shard's parent if the shard was created). The
/// one place that publishes.
fn publish(staging: &Path, file: Option<&File>, target: &Path, fsync: bool) -> io::Result<()> {
    if fsync && let Some(f) = file {
        f.sync_all()?;
    }
    let dir = target.parent().expect("targets live in a directory");
    let created = if dir.exists() {
        false
    } else {
        fs::create_dir_all(dir)?;
        true
    };
    fs::rename(staging, target)?;
    if fsync {
        fsync_dir(dir)?;
        if created && let Some(parent) = dir.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

fn info_from(digest: Digest, md: &fs::Metadata) -> BlobInfo {
    BlobInfo {
        digest,
        size: md.len(),
        last_access: md.modified().ok(),
    }
}

#[async_trait]
impl BlobStore for FsStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let path = self.blob_path(digest);
        let d = digest.clone();
        blocking(move || match fs::metadata(&path) {
            Ok(md) => Ok(Some(info_from(d, &md))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path, e)),
        })
        .await
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead> {
        let path = self.blob_path(digest);
        let d = digest.clone();
        let (file, size) = blocking(move || match File::open(&path) {
            Ok(f) => {
                let len = f.metadata().map_err(|e| io_err("get", &path, e))?.len();
                Ok((f, len))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::BlobUnknown { digest: d }),
            Err(e) => Err(io_err("get", &path, e)),
        })
        .await?;
        let span = match range {
            Some(r) => r.resolve(size)?,
            None => 0..size,
        };
        let file = Arc::new(file);
        Ok(BlobRead {
            size,
            range: span.clone(),
            payload: BlobPayload::File(FileSpan {
                stream: file_stream(file.clone(), span.start, span.end, self.blob_path(digest)),
                file,
                range: span,
            }),
        })
    }

    async fn stage(&self, digest: &Digest, size: Option<u64>) -> Result<Box<dyn StagedBlob>> {
        let path = self.staging_path(&format!("{}-{}", digest.algorithm(), digest.hex()));
        let p = path.clone();
        let file = blocking(move || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .map_err(|e| io_err("stage", &p, e))
        })
        .await?;
        Ok(Box::new(FsStaged {
            store: self.clone(),
            spool: HashingSpool::new(digest, size, Arc::new(file), path.display().to_string()),
            path,
            done: false,
        }))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("delete", &path, e)),
        })
        .await
    }

    async fn list(&self) -> Result<BoxStream<'static, Result<BlobInfo>>> {
        let root = self.inner.root.clone();
        let infos = blocking(move || {
            let mut out = Vec::new();
            for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                let dir = root.join("blobs").join(alg.as_str());
                let shards = match fs::read_dir(&dir) {
                    Ok(s) => s,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("list", &dir, e)),
                };
                for shard in shards {
                    let shard = shard.map_err(|e| io_err("list", &dir, e))?;
                    let Ok(files) = fs::read_dir(shard.path()) else {
                        continue;
                    };
                    for f in files {
                        let f = f.map_err(|e| io_err("list", &shard.path(), e))?;
                        let name = f.file_name();
                        // Anything that is not a digest-named file is not ours to list.
                        let Some(d) = name
                            .to_str()
                            .and_then(|n| Digest::parse(&format!("{}:{n}", alg.as_str())).ok())
                        else {
                            continue;
                        };
                        match f.metadata() {
                            Ok(md) if md.is_file() => out.push(Ok(info_from(d, &md))),
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => out.push(Err(io_err("list", &f.path(), e))),
                        }
                    }
                }
            }
            Ok(out)
        })
        .await?;
        Ok(stream::iter(infos).boxed())
    }

    async fn touch(&self, digest: &Digest, at: SystemTime) -> Result<bool> {
        let path = self.blob_path(digest);
        blocking(move || {
            let f = match File::options().write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err("touch", &path, e)),
            };
            f.set_times(FileTimes::new().set_modified(at))
                .map_err(|e| io_err("touch", &path, e))?;
            Ok(true)
        })
        .await
    }

    async fn get_meta(&self, key: &MetaKey) -> Result<Option<Bytes>> {
        let path = self.meta_path(key);
        blocking(move || match fs::read(&path) {
            Ok(v) => Ok(Some(Bytes::from(v))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("get_meta", &path, e)),
        })
        .await
    }

    async fn put_meta(&self, key: &MetaKey, value: Bytes) -> Result<()> {
        let target = self.meta_path(key);
        let staging = self.staging_path("meta");
        let fsync = self.inner.opts.fsync;
        blocking(move || {
            let write = || -> io::Result<()> {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&staging)?;
                f.write_all(&value)?;
                publish(&staging, Some(&f), &target, fsync)
            };
            write().map_err(|e| {
                let _ = fs::remove_file(&staging);
                io_err("put_meta", &target, e)
            })
        })
        .await
    }

    async fn delete_meta(&self, key: &MetaKey) -> Result<bool> {
        let path = self.meta_path(key);
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("delete_meta", &path, e)),
        })
        .await
    }

    async fn create_meta(&self, key: &MetaKey, value: Bytes) -> Result<bool> {
        self.write_meta_if(key, None, value).await
    }

    async fn replace_meta(&self, key: &MetaKey, expected: &[u8], value: Bytes) -> Result<bool> {
        self.write_meta_if(key, Some(Bytes::copy_from_slice(expected)), value)
            .await
    }

    fn shared(&self) -> bool {
        // The advisory lock on `.lock` admits one process at a time.
        false
    }

    async fn list_meta(&self, prefix: Option<&MetaKey>) -> Result<Vec<MetaKey>> {
        let base = self.inner.root.join("meta");
        let prefix = prefix.cloned();
        blocking(move || {
            let mut out = Vec::new();
            let start = match &prefix {
                Some(p) => {
                    if base.join(format!("{p}@")).is_file() {
                        out.push(p.clone());
                    }
                    base.join(p.as_str())
                }
                None => base.clone(),
            };
            let mut stack = vec![start];
            while let Some(dir) = stack.pop() {
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("list_meta", &dir, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| io_err("list_meta", &dir, e))?;
                    let path = entry.path();
                    let ft = entry
                        .file_type()
                        .map_err(|e| io_err("list_meta", &path, e))?;
                    if ft.is_dir() {
                        stack.push(path);
                    } else if let Some(rel) = path
                        .strip_prefix(&base)
                        .ok()
                        .and_then(|r| r.to_str())
                        .and_then(|r| r.strip_suffix('@'))
                        && let Ok(k) = MetaKey::parse(rel)
                    {
                        out.push(k);
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Reads up to `len` bytes at `pos` into a fresh buffer without zero-filling
/// it first (the buffer is what a blob read streams out; zeroing 1 MiB per
/// chunk is measurable). Returns fewer bytes only at end of file.
pub(crate) fn pread_exact(file: &File, len: usize, pos: u64) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let mut v: Vec<u8> = Vec::with_capacity(len);
    let mut filled = 0usize;
    while filled < len {
        let spare = v.spare_capacity_mut();
        let off = libc::off_t::try_from(pos + filled as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: the pointer and length describe `spare`, the vector's unused
        // capacity, which pread only writes to; `set_len` below covers exactly
        // the bytes pread reported as written.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                off,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        filled += n as usize;
        // SAFETY: pread initialised `n` more bytes after the first `filled - n`.
        unsafe { v.set_len(filled) };
    }
    Ok(Bytes::from(v))
}

/// Streams `[start, end)` of a file in `READ_CHUNK` reads off the runtime's
/// worker threads, one copy (kernel to the chunk's buffer) per byte.
fn file_stream(
    file: Arc<File>,
    start: u64,
    end: u64,
    path: PathBuf,
) -> BoxStream<'static, Result<Bytes>> {
    stream::try_unfold(start, move |pos| {
        let file = file.clone();
        let path = path.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let want = (end - pos).min(READ_CHUNK as u64) as usize;
            let chunk = blocking(move || {
                let buf = pread_exact(&file, want, pos).map_err(|e| io_err("get", &path, e))?;
                if buf.len() < want {
                    return Err(Error::storage_msg(
                        "get",
                        format!("{} ended early", path.display()),
                    ));
                }
                Ok(buf)
            })
            .await?;
            let next = pos + chunk.len() as u64;
            Ok(Some((chunk, next)))
        }
    })
    .boxed()
}

#[derive(Debug)]
struct FsStaged {
    store: FsStore,
    spool: HashingSpool<File>,
    path: PathBuf,
    /// Committed or aborted: nothing left to clean up.
    done: bool,
}

impl Drop for FsStaged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[async_trait]
impl StagedBlob for FsStaged {
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
        let path = self.path.clone();
        let file =
            blocking(move || File::open(&path).map_err(|e| io_err("reader", &path, e))).await?;
        Ok(Arc::new(FsReader {
            file: Arc::new(file),
            path: self.path.clone(),
        }))
    }

    async fn verify(&mut self) -> Result<bool> {
        self.spool.verify()?;
        Ok(true)
    }

    async fn commit(mut self: Box<Self>) -> Result<BlobInfo> {
        self.spool.verify()?;
        let digest = self.spool.digest().clone();
        let target = self.store.blob_path(&digest);
        let staging = self.path.clone();
        let fsync = self.store.inner.opts.fsync;
        let file = self.spool.file().clone();
        let info = blocking(move || {
            publish(&staging, Some(&file), &target, fsync)
                .map_err(|e| io_err("commit", &target, e))?;
            let md = fs::metadata(&target).map_err(|e| io_err("commit", &target, e))?;
            Ok(info_from(digest, &md))
        })
        .await?;
        self.done = true;
        Ok(info)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        let path = self.path.clone();
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("abort", &path, e)),
        })
        .await
    }
}

#[derive(Debug)]
struct FsReader {
    file: Arc<File>,
    path: PathBuf,
}

#[async_trait]
impl StagedReader for FsReader {
    async fn read_at(&self, offset: u64, max: usize) -> Result<Bytes> {
        let file = self.file.clone();
        let path = self.path.clone();
        blocking(move || pread_exact(&file, max, offset).map_err(|e| io_err("read_at", &path, e)))
            .await
    }

    fn file(&self) -> Option<Arc<File>> {
        // The staging file; after commit the same inode is the blob's file.
        Some(self.file.clone())
    }
}
