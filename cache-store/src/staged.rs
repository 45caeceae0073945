//! The checks every backend's staged write makes, in one place: the
//! announced size while writing, then size and digest at commit; and
//! [`HashingSpool`], the hashing write to a local file that the filesystem
//! and object stores share.

use std::fs::File;
use std::io::{self, Write as _};
use std::sync::Arc;

use bytes::Bytes;
use cache_core::{Digest, Error, Hasher, Result};

use crate::fs::blocking;

/// A storage error of `op` on `what` (a path, a spool file): temporary
/// for the kinds of I/O error that may pass.
pub(crate) fn io_err(op: &'static str, what: &str, e: io::Error) -> Error {
    let temporary = matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    );
    if temporary {
        Error::storage_temporary(op, what.to_owned(), e)
    } else {
        Error::storage(op, what.to_owned(), e)
    }
}

/// Fails a write that would carry the blob `digest` to `new_len` bytes,
/// past its announced `size`. The caller then voids the staged write.
pub(crate) fn check_room(digest: &Digest, size: Option<u64>, new_len: u64) -> Result<()> {
    match size {
        Some(size) if new_len > size => Err(Error::SizeMismatch {
            digest: digest.clone(),
            expected: size,
            actual: new_len,
        }),
        _ => Ok(()),
    }
}

/// Verifies a finished staged write of `written` bytes hashed by `hasher`:
/// the announced size first, then the digest.
pub(crate) fn verify(
    digest: &Digest,
    size: Option<u64>,
    written: u64,
    hasher: Hasher,
) -> Result<()> {
    if let Some(size) = size
        && size != written
    {
        return Err(Error::SizeMismatch {
            digest: digest.clone(),
            expected: size,
            actual: written,
        });
    }
    let actual = hasher.finish();
    if actual != *digest {
        return Err(Error::DigestMismatch {
            expected: digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// The error of a write to, or commit of, a staged write that an earlier
/// failure voided.
pub(crate) fn void(digest: &Digest) -> Error {
    Error::storage_msg(
        "write",
        format!("staged write of {digest} is void: an earlier write failed"),
    )
}

/// How far ahead of a spool's writes its file is allocated.
const RESERVE_AHEAD: u64 = 32 * 1024 * 1024;

/// Allocates bytes `from..to` of `file` without changing its length, so
/// the writes that fill them find their blocks allocated: on ext4, about
/// a third less CPU per byte written than allocating block by block
/// (BENCHMARKS.md, Issue 21's ninth stop).
/// Only an optimisation: a filesystem that cannot, or a full disk, leaves
/// the writes to allocate (and fail) as they would have.
fn reserve(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if let (Ok(off), Ok(len)) = (
            libc::off_t::try_from(from),
            libc::off_t::try_from(to - from),
        ) {
            // SAFETY: fallocate only reads its integer arguments; the
            // descriptor is the open file's, borrowed for the call.
            let _ =
                unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, off, len) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}

/// The file a staged write spools to: the staging file itself, or a
/// wrapper that also counts it.
pub(crate) trait SpoolFile: Send + Sync + 'static {
    /// The file the bytes are appended to.
    fn file(&self) -> &File;
}

impl SpoolFile for File {
    fn file(&self) -> &File {
        self
    }
}

/// A staged write's bytes on their way to a local file, hashed as they
/// are written, with the announced size enforced: the one implementation
/// the filesystem store and the object store's spool share. A failed
/// write voids it (every later write and the commit fail).
#[derive(Debug)]
pub(crate) struct HashingSpool<S> {
    digest: Digest,
    size: Option<u64>,
    file: Arc<S>,
    /// What the file is, for errors (a path, or "spool file").
    what: String,
    /// `None` while a write runs on a blocking thread, once one failed,
    /// or once the spool was verified.
    hasher: Option<Hasher>,
    written: u64,
    /// Bytes of the file allocated ahead of the writes so far (see
    /// [`reserve`]): never past the announced size.
    reserved: u64,
    /// The bytes written hashed to the digest and had the announced size;
    /// nothing may be written since.
    verified: bool,
}

impl<S: SpoolFile> HashingSpool<S> {
    /// Spools the blob `digest` (of `size` bytes, when announced) to `file`.
    pub(crate) fn new(digest: &Digest, size: Option<u64>, file: Arc<S>, what: String) -> Self {
        HashingSpool {
            digest: digest.clone(),
            size,
            file,
            what,
            hasher: Some(digest.algorithm().hasher()),
            written: 0,
            reserved: 0,
            verified: false,
        }
    }

    /// The blob's digest.
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// The spool file.
    pub(crate) fn file(&self) -> &Arc<S> {
        &self.file
    }

    /// Appends `chunks` in order and hashes them, on a blocking thread;
    /// past the announced size nothing is written and the write is void.
    pub(crate) async fn write_chunks(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        if self.verified {
            // Verified bytes are the blob: anything more voids the write.
            self.verified = false;
            return Err(void(&self.digest));
        }
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let new_len = self.written + len;
        if let Err(e) = check_room(&self.digest, self.size, new_len) {
            self.hasher = None;
            return Err(e);
        }
        let mut hasher = self.hasher.take().ok_or_else(|| void(&self.digest))?;
        let (file, what) = (self.file.clone(), self.what.clone());
        // Allocate the announced size a step ahead of the writes, never
        // past it: an upstream that claims a huge blob reserves no more
        // disk than it has sent plus one step.
        let ahead = match self.size {
            Some(size) if new_len > self.reserved => {
                let to = size.min(new_len.saturating_add(RESERVE_AHEAD));
                let from = self.reserved;
                self.reserved = to;
                Some((from, to))
            }
            _ => None,
        };
        let hasher = blocking(move || {
            if let Some((from, to)) = ahead {
                reserve(file.file(), from, to);
            }
            let mut f = file.file();
            for c in &chunks {
                f.write_all(c).map_err(|e| io_err("write", &what, e))?;
                hasher.update(c);
            }
            Ok(hasher)
        })
        .await?;
        self.hasher = Some(hasher);
        self.written = new_len;
        Ok(())
    }

    /// Checks the finished write: the announced size, then the digest.
    /// Afterwards nothing more can be written, whatever the outcome; once
    /// it succeeded, it succeeds again without hashing anything (a commit
    /// after [`StagedBlob::verify`](cache_core::StagedBlob::verify)).
    pub(crate) fn verify(&mut self) -> Result<()> {
        if self.verified {
            return Ok(());
        }
        let hasher = self.hasher.take().ok_or_else(|| void(&self.digest))?;
        verify(&self.digest, self.size, self.written, hasher)?;
        self.verified = true;
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Bytes the file has allocated on disk.
    fn allocated(f: &File) -> u64 {
        f.metadata().unwrap().blocks() * 512
    }

    fn spool_of(size: u64) -> (tempfile::TempDir, Arc<File>, HashingSpool<File>) {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("spool")).unwrap());
        let d = Digest::sha256_of(b"never verified here");
        let spool = HashingSpool::new(&d, Some(size), file.clone(), "spool".into());
        (dir, file, spool)
    }

    #[tokio::test]
    async fn a_spool_allocates_one_step_ahead_of_its_writes_and_never_past_the_announced_size() {
        // An upstream that announces 10 GiB and has sent 1 MiB reserves
        // that and one step, not 10 GiB.
        let (_dir, file, mut spool) = spool_of(10 * 1024 * MIB);
        spool
            .write_chunks(vec![Bytes::from(vec![7u8; MIB as usize])])
            .await
            .unwrap();
        assert_eq!(
            file.metadata().unwrap().len(),
            MIB,
            "the length is what was written"
        );
        let held = allocated(&file);
        assert!(
            (MIB + RESERVE_AHEAD..=2 * MIB + RESERVE_AHEAD).contains(&held),
            "{held} bytes allocated after 1 MiB written of 10 GiB announced"
        );
        // A small blob: its announced size, no more.
        let (_dir, file, mut spool) = spool_of(3 * MIB);
        spool
            .write_chunks(vec![Bytes::from(vec![7u8; MIB as usize])])
            .await
            .unwrap();
        let held = allocated(&file);
        assert!(
            (3 * MIB..3 * MIB + 64 * 1024).contains(&held),
            "{held} bytes allocated for a 3 MiB blob"
        );
    }
}
