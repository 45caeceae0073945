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
        let hasher = blocking(move || {
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
