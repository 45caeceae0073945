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

/// A cached tag: what it pointed to, when the upstream last confirmed it,
/// and since when the upstream refuses it (withdrawn: 404, 401, 403), if
/// it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagRecord {
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
    pub(crate) confirmed: SystemTime,
    pub(crate) withdrawn: Option<SystemTime>,
}

fn ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

impl TagRecord {
    /// A record of `digest` confirmed at `confirmed`, not withdrawn.
    pub(crate) fn new(digest: Digest, media_type: String, confirmed: SystemTime) -> Self {
        TagRecord {
            digest,
            media_type,
            confirmed,
            withdrawn: None,
        }
    }

    /// Digest, media type and confirmation time (unix ms) a line each,
    /// then the withdrawal time when there is one (records written before
    /// it existed have three lines, and read as not withdrawn).
    pub(crate) fn encode(&self) -> bytes::Bytes {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.digest,
            self.media_type,
            ms(self.confirmed)
        );
        if let Some(w) = self.withdrawn {
            s.push_str(&format!("{}\n", ms(w)));
        }
        bytes::Bytes::from(s)
    }

    /// `None` for anything malformed: a damaged record is a cache miss.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let mut it = s.lines();
        let digest = Digest::parse(it.next()?).ok()?;
        let media_type = it.next()?.to_owned();
        let ms: u64 = it.next()?.parse().ok()?;
        let withdrawn = match it.next() {
            None => None,
            Some(w) => Some(UNIX_EPOCH + Duration::from_millis(w.parse().ok()?)),
        };
        Some(TagRecord {
            digest,
            media_type,
            confirmed: UNIX_EPOCH + Duration::from_millis(ms),
            withdrawn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_records_round_trip_and_old_ones_read_as_not_withdrawn() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_225_600_123);
        let mut rec = TagRecord::new(Digest::sha256_of(b"m"), "a/b".into(), t);
        assert_eq!(TagRecord::decode(&rec.encode()), Some(rec.clone()));
        rec.withdrawn = Some(t + Duration::from_secs(5));
        assert_eq!(TagRecord::decode(&rec.encode()), Some(rec.clone()));
        let old = format!("{}\na/b\n1767225600123\n", rec.digest);
        assert_eq!(TagRecord::decode(old.as_bytes()).unwrap().withdrawn, None);
        let bad = format!("{}\na/b\n1767225600123\nsoon\n", rec.digest);
        assert_eq!(TagRecord::decode(bad.as_bytes()), None);
    }
}
