//! The checks every backend's staged write makes, in one place: the
//! announced size while writing, then size and digest at commit.

use cache_core::{Digest, Error, Hasher, Result};

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
