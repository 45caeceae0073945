//! What the engine keeps under its metadata keys (the keys themselves,
//! and their layout, are `crate::keys`): tag records and referrers records.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::digest::Digest;

/// A referrers index and when the upstream gave it: the time in unix
/// milliseconds on the first line, then the index's bytes.
pub(crate) struct ReferrersRecord {
    pub(crate) fetched: SystemTime,
    pub(crate) index: bytes::Bytes,
}

impl ReferrersRecord {
    pub(crate) fn encode(&self) -> bytes::Bytes {
        let ms = self
            .fetched
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut v = format!("{ms}\n").into_bytes();
        v.extend_from_slice(&self.index);
        bytes::Bytes::from(v)
    }

    pub(crate) fn decode(b: &bytes::Bytes) -> Option<ReferrersRecord> {
        let nl = b.iter().position(|c| *c == b'\n')?;
        let ms: u64 = std::str::from_utf8(&b[..nl]).ok()?.parse().ok()?;
        Some(ReferrersRecord {
            fetched: UNIX_EPOCH + Duration::from_millis(ms),
            index: b.slice(nl + 1..),
        })
    }
}

/// A cached tag: what it pointed to and when the upstream last confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagRecord {
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
    pub(crate) confirmed: SystemTime,
}

impl TagRecord {
    pub(crate) fn encode(&self) -> bytes::Bytes {
        let ms = self
            .confirmed
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        bytes::Bytes::from(format!("{}\n{}\n{ms}\n", self.digest, self.media_type))
    }

    /// `None` for anything malformed: a damaged record is a cache miss.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let mut it = s.lines();
        let digest = Digest::parse(it.next()?).ok()?;
        let media_type = it.next()?.to_owned();
        let ms: u64 = it.next()?.parse().ok()?;
        Some(TagRecord {
            digest,
            media_type,
            confirmed: UNIX_EPOCH + Duration::from_millis(ms),
        })
    }
}
