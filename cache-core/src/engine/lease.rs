//! Leases in a [shared](crate::BlobStore::shared) store: how instances on
//! one object store agree that one of them fetches a digest, or runs gc.
//!
//! A lease is a small metadata value, `holder expires-ms nonce`, created
//! with [`create_meta`](crate::BlobStore::create_meta) (exactly one of
//! several racing instances succeeds). Its holder renews it with
//! [`replace_meta`](crate::BlobStore::replace_meta) while it works and
//! deletes it when done. A lease whose expiry passed (its holder died or
//! stalled) is taken over with `replace_meta` from the value that was
//! read, so of several instances that see it expire, one takes it.
//!
//! Expiries are wall-clock times from the holder's clock; instances whose
//! clocks disagree by much less than the lease's validity behave. Leases
//! only save work: content is verified by whoever fetches it, so two
//! holders at once (after a clock jump, say) cost a duplicate fetch, never
//! wrong bytes.
//!
//! A holder that serves its peers (peer streaming, [`crate::peer`]) names
//! its peer address in the holder field, `name@host:port`: an instance
//! that does not know peers reads the field as an opaque name, so mixed
//! versions on one store still agree on who holds what.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::error::Result;
use crate::store::{BlobStore, MetaKey};

/// A lease's value, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    /// Who holds it (an instance's name).
    pub(crate) holder: String,
    /// Where the holder serves what it fetches to its peers, if it does.
    pub(crate) peer: Option<String>,
    /// When it lapses unless renewed.
    pub(crate) expires: SystemTime,
}

impl LeaseRecord {
    fn encode(&self, nonce: u64) -> Bytes {
        let ms = self
            .expires
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        match &self.peer {
            Some(p) => Bytes::from(format!("{}@{p} {ms} {nonce}", self.holder)),
            None => Bytes::from(format!("{} {ms} {nonce}", self.holder)),
        }
    }

    /// `None` for anything that is not a lease value (treated as lapsed).
    pub(crate) fn decode(b: &[u8]) -> Option<LeaseRecord> {
        let s = std::str::from_utf8(b).ok()?;
        let mut it = s.split(' ');
        let (holder, ms, _nonce) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || holder.is_empty() {
            return None;
        }
        let ms: u64 = ms.parse().ok()?;
        // An address that does not check out is no address: wait for publication.
        let (holder, peer) = match holder.rsplit_once('@') {
            Some((h, p))
                if !h.is_empty() && crate::peer::PeerConfig::check_advertise(p).is_ok() =>
            {
                (h, Some(p.to_owned()))
            }
            _ => (holder, None),
        };
        Some(LeaseRecord {
            holder: holder.to_owned(),
            peer,
            expires: SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))?,
        })
    }
}

/// What [`claim`] found.
#[derive(Debug)]
pub(crate) enum Claim {
    /// This instance holds the lease now.
    Held(Lease),
    /// Another holds it, until the given time unless renewed.
    Busy(LeaseRecord),
}

/// A lease this instance holds.
#[derive(Debug)]
pub(crate) struct Lease {
    key: MetaKey,
    value: Bytes,
    holder: String,
    peer: Option<String>,
    ttl: Duration,
    /// Whether it was taken over from a lapsed holder.
    pub(crate) taken_over: bool,
}

/// Tries to take the lease `key` for `ttl` as `holder` (serving peers at
/// `peer`, if given): creates it, or takes it over if it lapsed.
pub(crate) async fn claim(
    store: &dyn BlobStore,
    key: &MetaKey,
    (holder, peer): (&str, Option<&str>),
    ttl: Duration,
    now: SystemTime,
) -> Result<Claim> {
    let peer = peer.map(str::to_owned);
    let value = LeaseRecord {
        holder: holder.to_owned(),
        peer: peer.clone(),
        expires: now + ttl,
    }
    .encode(nonce());
    let held = |taken_over| Lease {
        key: key.clone(),
        value: value.clone(),
        holder: holder.to_owned(),
        peer: peer.clone(),
        ttl,
        taken_over,
    };
    // A few rounds: the lease may be released or taken between our reads.
    for _ in 0..3 {
        if store.create_meta(key, value.clone()).await? {
            return Ok(Claim::Held(held(false)));
        }
        let Some(current) = store.get_meta(key).await? else {
            continue;
        };
        match LeaseRecord::decode(&current) {
            Some(rec) if rec.expires > now => return Ok(Claim::Busy(rec)),
            _ => {
                if store.replace_meta(key, &current, value.clone()).await? {
                    return Ok(Claim::Held(held(true)));
                }
            }
        }
    }
    // Still contended: someone else keeps winning; report them as holder.
    match store
        .get_meta(key)
        .await?
        .and_then(|b| LeaseRecord::decode(&b))
    {
        Some(rec) => Ok(Claim::Busy(rec)),
        None => Ok(Claim::Busy(LeaseRecord {
            holder: "unknown".into(),
            peer: None,
            expires: now + ttl,
        })),
    }
}

impl Lease {
    /// Extends the lease to `now + ttl`. Returns `false` if it is no longer
    /// ours (it lapsed and another instance took it over).
    pub(crate) async fn renew(&mut self, store: &dyn BlobStore, now: SystemTime) -> Result<bool> {
        let value = LeaseRecord {
            holder: self.holder.clone(),
            peer: self.peer.clone(),
            expires: now + self.ttl,
        }
        .encode(nonce());
        if store
            .replace_meta(&self.key, &self.value, value.clone())
            .await?
        {
            self.value = value;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// How often to renew: a third of the validity, so two renewals may
    /// fail before the lease lapses.
    pub(crate) fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Gives the lease up, if it is still ours.
    pub(crate) async fn release(self, store: &dyn BlobStore) -> Result<()> {
        // A read and a delete: a lease taken over between them is deleted
        // too, which costs its holder's peers at most a duplicate fetch.
        if store.get_meta(&self.key).await?.as_deref() == Some(&self.value[..]) {
            store.delete_meta(&self.key).await?;
        }
        Ok(())
    }
}

/// A value unlikely to repeat, so no two lease values are equal.
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}

/// A name for this instance in the leases it holds: the `HOSTNAME` (a
/// pod's name) and the process id, then a random part, so two processes
/// never share one.
pub(crate) fn default_instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "instance".into());
    format!("{host}/{}/{:08x}", std::process::id(), nonce() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_junk_is_no_lease() {
        let mut r = LeaseRecord {
            holder: "pod-1/42/abcd".into(),
            peer: None,
            expires: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        };
        assert_eq!(LeaseRecord::decode(&r.encode(7)), Some(r.clone()));
        r.peer = Some("10.0.0.7:5001".into());
        let v = r.encode(7);
        assert!(v.starts_with(b"pod-1/42/abcd@10.0.0.7:5001 "));
        assert_eq!(LeaseRecord::decode(&v), Some(r.clone()));
        // What is not an address stays part of the name.
        let odd = LeaseRecord::decode(b"me@not an address 1 2");
        assert_eq!(odd, None, "spaces split fields");
        let odd = LeaseRecord::decode(b"me@http://x 1 2").unwrap();
        assert_eq!((odd.holder.as_str(), odd.peer), ("me@http://x", None));
        for junk in [
            &b""[..],
            b"x",
            b"a b",
            b"a 12 3 4",
            b" 12 3",
            b"a x 3",
            b"\xff 1 2",
        ] {
            assert_eq!(LeaseRecord::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn instance_names_differ_and_have_no_spaces() {
        let (a, b) = (default_instance_name(), default_instance_name());
        assert_ne!(a, b);
        assert!(!a.contains(' '));
    }
}
