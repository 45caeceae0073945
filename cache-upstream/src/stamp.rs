//! Telling a file's versions apart without reading it: what the TLS
//! files' re-reading compares (the peer client's here, a server's
//! certificate and client CA in `registry-proxy`).

use std::path::Path;
use std::time::SystemTime;

/// A file's version, as far as its metadata tells: its inode (a rename,
/// or a Kubernetes Secret volume's symlink swap, gives a new one), its
/// length, and its modification and change times (a copy can keep the
/// first, not the second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    inode: u64,
    len: u64,
    modified: SystemTime,
    changed: (i64, i64),
}

impl FileStamp {
    /// The stamp of the file at `path` now, links followed; `None` for a
    /// file that is not there (or whose metadata cannot be read).
    pub fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            inode: m.ino(),
            len: m.len(),
            modified: m.modified().ok()?,
            changed: (m.ctime(), m.ctime_nsec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::FileStamp;

    #[test]
    fn a_rewrite_that_keeps_length_and_modification_time_is_still_a_new_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "first").unwrap();
        let before = FileStamp::of(&p).unwrap();
        assert_eq!(FileStamp::of(&p), Some(before), "unchanged, the same");
        let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Same length, the modification time put back (as `cp -p` does).
        std::fs::write(&p, "other").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(modified).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), modified);
        assert_ne!(FileStamp::of(&p), Some(before));
        // A file moved into place (a new inode).
        let q = dir.path().join("new.pem");
        std::fs::write(&q, "other").unwrap();
        let again = FileStamp::of(&p).unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert_ne!(FileStamp::of(&p), Some(again));
        std::fs::remove_file(&p).unwrap();
        assert_eq!(FileStamp::of(&p), None);
    }
}
