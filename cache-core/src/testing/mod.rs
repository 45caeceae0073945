//! Test support: the [`BlobStore`] conformance suite, an in-process
//! [`FakeUpstream`] with fault injection, a [`ManualClock`], and
//! [`CommitFaults`], a store whose commits can be held or failed.
//!
//! The [`BlobStore`] conformance suite. Every backend runs all of it
//! ([`CHECKS`], one list), through
//! [`blob_store_conformance!`](crate::blob_store_conformance), which expands
//! to one `#[tokio::test]` per check inside the caller's module (so test
//! names read `memory_store::conformance::ranged_reads`), or through
//! [`all_checks`] for stores whose setup is shared by every check.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;

use crate::{BlobStore, BlobStoreExt, ByteRange, Digest, Error, MetaKey};

mod clock;
mod commits;
mod fake;
mod peers;

#[cfg(feature = "trust")]
pub mod trust;

pub use clock::ManualClock;
pub use commits::CommitFaults;
pub use fake::{Calls, FakeUpstream, Fault, PanicUpstream, PushedImage};
pub use peers::LocalPeers;

/// A store under test, with what the suite needs to look behind it.
pub struct Harness {
    /// The store.
    pub store: Arc<dyn BlobStore>,
    /// Counts what staged writes left behind (staging files, buffers);
    /// must be 0 whenever no staged write is alive.
    pub staged_leftovers: Box<dyn Fn() -> usize + Send + Sync>,
    /// Kept alive for the test's duration (a temporary directory, a server).
    pub guard: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// A free TCP port on 127.0.0.1 (the one helper every crate's test kit
/// uses: `cache_upstream::testing` and `cache_store::testing` re-use it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Deterministic test content of `len` bytes, different for each `seed`.
pub fn content(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

async fn read_all(
    store: &dyn BlobStore,
    d: &Digest,
    range: Option<ByteRange>,
) -> crate::Result<Vec<u8>> {
    let r = store.get(d, range).await?;
    // A file payload's span must hold exactly the bytes its stream yields.
    let from_file = r.payload.file().map(|f| {
        assert_eq!(f.range, r.range, "the file span is the read's range");
        let mut buf = vec![0u8; (f.range.end - f.range.start) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&*f.file, &mut buf, f.range.start)
            .expect("the file holds the whole span");
        buf
    });
    let mut out = Vec::new();
    let mut stream = r.payload.into_stream();
    while let Some(c) = stream.next().await {
        out.extend_from_slice(&c?);
    }
    assert_eq!(
        out.len() as u64,
        r.range.end - r.range.start,
        "stream length matches the announced range"
    );
    if let Some(f) = from_file {
        assert!(f == out, "the file span and the stream agree");
    }
    Ok(out)
}

/// put, get, stat, list, delete, and delete again.
pub async fn put_get_stat_delete_list(h: &Harness) {
    let s = &*h.store;
    let data = content(1, 100_000);
    let d = Digest::sha256_of(&data);
    assert!(s.stat(&d).await.unwrap().is_none());
    let info = s.put(&d, data.clone()).await.unwrap();
    assert_eq!((info.digest.clone(), info.size), (d.clone(), 100_000));
    assert_eq!(s.stat(&d).await.unwrap().unwrap().size, 100_000);
    assert_eq!(read_all(s, &d, None).await.unwrap(), data);
    let listed = s.list_all().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|i| (&i.digest, i.size))
            .collect::<Vec<_>>(),
        vec![(&d, 100_000)]
    );
    assert!(s.delete(&d).await.unwrap());
    assert!(!s.delete(&d).await.unwrap(), "delete is idempotent");
    assert!(s.stat(&d).await.unwrap().is_none());
    assert!(s.list_all().await.unwrap().is_empty());
}

/// Unknown digests are `BlobUnknown`, never an empty success.
pub async fn unknown_blob_is_blob_unknown(h: &Harness) {
    let d = Digest::sha256_of(b"never stored");
    let e = h.store.get(&d, None).await.unwrap_err();
    assert!(matches!(e, Error::BlobUnknown { .. }), "{e}");
    assert!(!h.store.touch(&d, SystemTime::now()).await.unwrap());
}

/// Ranged reads, including past the end and of the last byte.
pub async fn ranged_reads(h: &Harness) {
    let s = &*h.store;
    let data = content(2, 10_000);
    let d = Digest::sha256_of(&data);
    s.put(&d, data.clone()).await.unwrap();
    let cases = [
        (ByteRange::Inclusive(0, 0), 0..1),
        (ByteRange::Inclusive(10, 19), 10..20),
        (ByteRange::From(9_999), 9_999..10_000),
        (ByteRange::Inclusive(9_000, 20_000), 9_000..10_000),
        (ByteRange::Suffix(100), 9_900..10_000),
        (ByteRange::Suffix(50_000), 0..10_000),
    ];
    for (r, span) in cases {
        let got = read_all(s, &d, Some(r)).await.unwrap();
        assert_eq!(got, &data[span.start as usize..span.end as usize], "{r}");
        assert_eq!(s.get(&d, Some(r)).await.unwrap().range, span, "{r}");
    }
    for r in [
        ByteRange::From(10_000),
        ByteRange::Inclusive(20_000, 30_000),
        ByteRange::Suffix(0),
    ] {
        let e = s.get(&d, Some(r)).await.unwrap_err();
        assert!(
            matches!(e, Error::RangeNotSatisfiable { size: 10_000, .. }),
            "{r}: {e}"
        );
    }
}

/// A staged write that is never committed is invisible, and dropping it
/// leaves nothing behind.
pub async fn uncommitted_write_is_invisible_and_leaves_nothing(h: &Harness) {
    let s = &*h.store;
    let data = content(3, 50_000);
    let d = Digest::sha256_of(&data);
    let mut w = s.stage(&d, Some(50_000)).await.unwrap();
    w.write(data.slice(..20_000)).await.unwrap();
    assert_eq!(w.written(), 20_000);
    assert!(s.stat(&d).await.unwrap().is_none());
    assert!(matches!(
        s.get(&d, None).await,
        Err(Error::BlobUnknown { .. })
    ));
    assert!(
        s.list_all().await.unwrap().is_empty(),
        "listing never shows staged data"
    );
    drop(w);
    assert_eq!(
        (h.staged_leftovers)(),
        0,
        "a dropped staged write leaves nothing"
    );
    let w = s.stage(&d, None).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(
        (h.staged_leftovers)(),
        0,
        "an aborted staged write leaves nothing"
    );
    assert!(s.stat(&d).await.unwrap().is_none());
}

/// Two writers of one digest, interleaved, both succeed; one blob remains.
pub async fn concurrent_writers_of_one_digest_both_succeed(h: &Harness) {
    let s = &*h.store;
    let data = content(4, 64 * 1024);
    let d = Digest::sha256_of(&data);
    let mut a = s.stage(&d, Some(data.len() as u64)).await.unwrap();
    let mut b = s.stage(&d, Some(data.len() as u64)).await.unwrap();
    for chunk in 0..4 {
        let part = data.slice(chunk * 16 * 1024..(chunk + 1) * 16 * 1024);
        a.write(part.clone()).await.unwrap();
        b.write(part).await.unwrap();
    }
    let (ra, rb) = futures::future::join(a.commit(), b.commit()).await;
    ra.unwrap();
    rb.unwrap();
    assert_eq!(s.list_all().await.unwrap().len(), 1);
    assert_eq!(read_all(s, &d, None).await.unwrap(), data);
    assert_eq!((h.staged_leftovers)(), 0);
}

/// A commit whose content does not match its digest or announced size is
/// refused, publishes nothing and leaves nothing.
pub async fn mismatched_commit_is_refused(h: &Harness) {
    let s = &*h.store;
    let data = content(5, 4096);
    let d = Digest::sha256_of(&data);
    // Flipped byte.
    let mut bad = data.to_vec();
    bad[100] ^= 0x01;
    let mut w = s.stage(&d, None).await.unwrap();
    w.write(Bytes::from(bad)).await.unwrap();
    let e = w.commit().await.unwrap_err();
    assert!(
        matches!(&e, Error::DigestMismatch { expected, .. } if *expected == d),
        "{e}"
    );
    // Short.
    let mut w = s.stage(&d, Some(4096)).await.unwrap();
    w.write(data.slice(..4000)).await.unwrap();
    let e = w.commit().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::SizeMismatch {
                expected: 4096,
                actual: 4000,
                ..
            }
        ),
        "{e}"
    );
    // Long: refused at write time.
    let mut w = s.stage(&d, Some(4000)).await.unwrap();
    let e = w.write(data.clone()).await.unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    drop(w);
    assert!(s.stat(&d).await.unwrap().is_none());
    assert!(s.list_all().await.unwrap().is_empty());
    assert_eq!((h.staged_leftovers)(), 0);
}

/// `verify` before `commit` agrees with `commit`: where a store verifies
/// early (`Ok(true)`), the blob stays invisible until committed, verifying
/// again repeats the success, a write afterwards fails and voids the write,
/// and commit publishes the bytes; a mismatch fails `verify` as it would
/// fail `commit`, and nothing is published or left behind.
pub async fn verify_before_commit_agrees_with_commit(h: &Harness) {
    let s = &*h.store;
    let data = content(10, 50_000);
    let d = Digest::sha256_of(&data);
    let mut w = s.stage(&d, Some(50_000)).await.unwrap();
    w.write(data.slice(..20_000)).await.unwrap();
    w.write(data.slice(20_000..)).await.unwrap();
    if w.verify().await.unwrap() {
        assert!(w.verify().await.unwrap(), "a success repeats");
    }
    assert!(
        s.stat(&d).await.unwrap().is_none(),
        "verified is not yet published"
    );
    w.commit().await.unwrap();
    assert_eq!(read_all(s, &d, None).await.unwrap(), data);

    let other = content(11, 1000);
    let od = Digest::sha256_of(&other);
    let mut w = s.stage(&od, None).await.unwrap();
    w.write(other.clone()).await.unwrap();
    if w.verify().await.unwrap() {
        assert!(
            w.write(Bytes::from_static(b"more")).await.is_err(),
            "nothing may follow verified bytes"
        );
        assert!(w.commit().await.is_err(), "the write is void");
        assert!(s.stat(&od).await.unwrap().is_none());
    }

    let good = content(12, 3000);
    let gd = Digest::sha256_of(&good);
    let mut bad = good.to_vec();
    bad[2999] ^= 0x01;
    let mut w = s.stage(&gd, Some(3000)).await.unwrap();
    w.write(Bytes::from(bad)).await.unwrap();
    let e = match w.verify().await {
        Err(e) => {
            assert!(w.commit().await.is_err(), "a failed verify voids the write");
            e
        }
        Ok(early) => {
            assert!(!early, "a flipped byte never verifies");
            w.commit().await.unwrap_err()
        }
    };
    assert!(
        matches!(&e, Error::DigestMismatch { expected, .. } if *expected == gd),
        "{e}"
    );
    assert!(s.stat(&gd).await.unwrap().is_none());
    assert_eq!((h.staged_leftovers)(), 0);
}

/// A staged reader sees what has been written, as it is written, and keeps
/// working after commit.
pub async fn staged_reader_follows_the_writer(h: &Harness) {
    let s = &*h.store;
    let data = content(6, 30_000);
    let d = Digest::sha256_of(&data);
    let mut w = s.stage(&d, Some(30_000)).await.unwrap();
    let r = w.reader().await.unwrap();
    assert!(r.read_at(0, 100).await.unwrap().is_empty());
    w.write(data.slice(..10_000)).await.unwrap();
    assert_eq!(r.read_at(0, 100).await.unwrap(), data.slice(..100));
    assert_eq!(
        r.read_at(9_990, 100).await.unwrap(),
        data.slice(9_990..10_000)
    );
    assert!(r.read_at(10_000, 100).await.unwrap().is_empty());
    w.write(data.slice(10_000..)).await.unwrap();
    w.commit().await.unwrap();
    let mut got = Vec::new();
    while got.len() < data.len() {
        let c = r.read_at(got.len() as u64, 7_000).await.unwrap();
        assert!(!c.is_empty());
        got.extend_from_slice(&c);
    }
    assert_eq!(got, data);
}

/// `write_chunks` appends in order, like `write` one chunk at a time.
pub async fn write_chunks_appends_in_order(h: &Harness) {
    let s = &*h.store;
    let data = content(9, 70_000);
    let d = Digest::sha256_of(&data);
    let mut w = s.stage(&d, Some(70_000)).await.unwrap();
    w.write(data.slice(..10)).await.unwrap();
    w.write_chunks(vec![
        data.slice(10..30_000),
        Bytes::new(),
        data.slice(30_000..),
    ])
    .await
    .unwrap();
    assert_eq!(w.written(), 70_000);
    w.commit().await.unwrap();
    assert_eq!(read_all(s, &d, None).await.unwrap(), data);
    let mut w = s.stage(&d, Some(10)).await.unwrap();
    let e = w
        .write_chunks(vec![data.slice(..8), data.slice(8..16)])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
}

/// Metadata values round-trip, replace, list by prefix and delete.
pub async fn metadata_round_trips(h: &Harness) {
    let s = &*h.store;
    let k1 = MetaKey::parse("tags/library/nginx/latest").unwrap();
    let k2 = MetaKey::parse("tags/library/nginx/1.27").unwrap();
    let k3 = MetaKey::parse("tags/library/nginx-extra/latest").unwrap();
    assert!(s.get_meta(&k1).await.unwrap().is_none());
    s.put_meta(&k1, Bytes::from_static(b"one")).await.unwrap();
    s.put_meta(&k1, Bytes::from_static(b"two")).await.unwrap();
    s.put_meta(&k2, Bytes::from_static(b"")).await.unwrap();
    s.put_meta(&k3, Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(
        s.get_meta(&k1).await.unwrap().unwrap(),
        Bytes::from_static(b"two")
    );
    assert_eq!(s.get_meta(&k2).await.unwrap().unwrap(), Bytes::new());
    let mut keys = s
        .list_meta(Some(&MetaKey::parse("tags/library/nginx").unwrap()))
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys, vec![k2.clone(), k1.clone()]);
    assert_eq!(s.list_meta(None).await.unwrap().len(), 3);
    assert!(s.delete_meta(&k1).await.unwrap());
    assert!(!s.delete_meta(&k1).await.unwrap());
    assert!(s.get_meta(&k1).await.unwrap().is_none());
    assert!(
        s.list_all().await.unwrap().is_empty(),
        "metadata is not listed as blobs"
    );
}

/// `touch` records access times that `stat` and `list` report.
pub async fn touch_records_access_time(h: &Harness) {
    let s = &*h.store;
    let data = content(7, 10);
    let d = Digest::sha256_of(&data);
    s.put(&d, data).await.unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert!(s.touch(&d, t).await.unwrap());
    let at = s.list_all().await.unwrap()[0].last_access.unwrap();
    let diff = at.duration_since(t).unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_secs(1), "{at:?} vs {t:?}");
    if let Some(stat) = s.stat(&d).await.unwrap().unwrap().last_access {
        assert_eq!(stat, at, "stat and list disagree");
    }
}

/// Empty and sha512-addressed blobs are ordinary blobs.
pub async fn empty_and_sha512_blobs(h: &Harness) {
    let s = &*h.store;
    let e = Digest::sha256_of(b"");
    s.put(&e, Bytes::new()).await.unwrap();
    assert_eq!(s.stat(&e).await.unwrap().unwrap().size, 0);
    assert!(read_all(s, &e, None).await.unwrap().is_empty());
    assert!(matches!(
        s.get(&e, Some(ByteRange::From(0))).await,
        Err(Error::RangeNotSatisfiable { .. })
    ));
    let data = content(8, 1000);
    let d = Digest::compute(crate::Algorithm::Sha512, &data);
    s.put(&d, data.clone()).await.unwrap();
    assert_eq!(read_all(s, &d, None).await.unwrap(), data);
    assert_eq!(s.list_all().await.unwrap().len(), 2);
}

/// Reads of a blob larger than any one piece a store reads at a time:
/// whole and in ranges that start and end inside later pieces.
pub async fn large_reads_in_pieces(h: &Harness) {
    let s = &*h.store;
    let len = 17 * 1024 * 1024 + 123;
    let data = content(11, len);
    let d = Digest::sha256_of(&data);
    s.put(&d, data.clone()).await.unwrap();
    let n = len as u64;
    let cases = [
        (None, 0..n),
        (Some(ByteRange::From(300_000)), 300_000..n),
        (Some(ByteRange::Inclusive(100, 9_500_000)), 100..9_500_001),
        (Some(ByteRange::Inclusive(9_200_000, n + 10)), 9_200_000..n),
        (Some(ByteRange::Suffix(10_000_000)), n - 10_000_000..n),
    ];
    for (r, span) in cases {
        let got = read_all(s, &d, r).await.unwrap();
        assert!(
            got == data[span.start as usize..span.end as usize],
            "{r:?}: wrong bytes"
        );
    }
}

/// `create_meta` writes only what is absent and `replace_meta` only over
/// the value it expects; of racing callers exactly one wins each.
pub async fn conditional_metadata_writes(h: &Harness) {
    let s = &*h.store;
    let k = MetaKey::parse("leases/blobs/sha256/abc").unwrap();
    assert!(s.create_meta(&k, Bytes::from_static(b"one")).await.unwrap());
    assert!(!s.create_meta(&k, Bytes::from_static(b"two")).await.unwrap());
    assert_eq!(s.get_meta(&k).await.unwrap().unwrap(), "one");
    assert!(
        !s.replace_meta(&k, b"two", Bytes::from_static(b"three"))
            .await
            .unwrap()
    );
    assert_eq!(s.get_meta(&k).await.unwrap().unwrap(), "one");
    assert!(
        s.replace_meta(&k, b"one", Bytes::from_static(b"three"))
            .await
            .unwrap()
    );
    assert_eq!(s.get_meta(&k).await.unwrap().unwrap(), "three");
    let absent = MetaKey::parse("leases/none").unwrap();
    assert!(
        !s.replace_meta(&absent, b"", Bytes::from_static(b"x"))
            .await
            .unwrap()
    );
    assert!(s.get_meta(&absent).await.unwrap().is_none());

    let racing = MetaKey::parse("leases/race").unwrap();
    let creates = (0..8u8).map(|i| s.create_meta(&racing, Bytes::from(vec![i])));
    let won: Vec<bool> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let winner = won.iter().position(|w| *w).unwrap() as u8;
    assert_eq!(s.get_meta(&racing).await.unwrap().unwrap(), vec![winner]);
    let replaces = (10..18u8)
        .map(|i| s.replace_meta(&racing, std::slice::from_ref(&winner), Bytes::from(vec![i])));
    let won: Vec<bool> = futures::future::join_all(replaces)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let winner = 10 + won.iter().position(|w| *w).unwrap() as u8;
    assert_eq!(s.get_meta(&racing).await.unwrap().unwrap(), vec![winner]);
}

/// The conformance checks, listed once: [`all_checks`], [`CHECKS`] and
/// [`blob_store_conformance!`](crate::blob_store_conformance) all expand
/// from this list, so a check cannot run on one backend and be skipped on
/// another. A check is a `pub async fn NAME(h: &Harness)` in this module;
/// a test fails if one is missing here.
#[doc(hidden)]
#[macro_export]
macro_rules! __blob_store_checks {
    (@expand [tests $harness:path] $($name:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let h = $harness().await;
                $crate::testing::$name(&h).await;
            }
        )*
    };
    (@expand [all] $($name:ident,)*) => {
        /// The name of every conformance check, in the order they run.
        pub const CHECKS: &[&str] = &[$(stringify!($name)),*];

        /// Runs every conformance check in turn, each on a fresh harness
        /// `make` gives for the check's name (for stores whose setup is
        /// costly, such as an emulator shared by all checks: a prefix or
        /// container per check). The list is the one
        /// [`blob_store_conformance!`](crate::blob_store_conformance) expands.
        pub async fn all_checks(make: impl Fn(&str) -> Harness) {
            $( $name(&make(stringify!($name))).await; )*
        }
    };
    ($($mode:tt)*) => {
        $crate::__blob_store_checks!(@expand [$($mode)*]
            put_get_stat_delete_list,
            unknown_blob_is_blob_unknown,
            ranged_reads,
            uncommitted_write_is_invisible_and_leaves_nothing,
            concurrent_writers_of_one_digest_both_succeed,
            mismatched_commit_is_refused,
            verify_before_commit_agrees_with_commit,
            staged_reader_follows_the_writer,
            write_chunks_appends_in_order,
            metadata_round_trips,
            touch_records_access_time,
            empty_and_sha512_blobs,
            large_reads_in_pieces,
            conditional_metadata_writes,
        );
    };
}

crate::__blob_store_checks!(all);

/// Expands to one `#[tokio::test]` per conformance check (the list of
/// [`CHECKS`]). The argument is an async function returning a
/// [`Harness`]; the caller's crate needs `tokio` with the `macros` and
/// `rt` features.
#[macro_export]
macro_rules! blob_store_conformance {
    ($harness:path) => {
        $crate::__blob_store_checks!(tests $harness);
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The check functions this module defines: every public `async fn`
    /// at its top level taking only a `&Harness`.
    fn defined_checks(src: &str) -> BTreeSet<&str> {
        src.lines()
            .filter(|l| l.contains(": &Harness)"))
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .filter_map(|rest| rest.split('(').next())
            .collect()
    }

    #[test]
    fn every_check_function_is_in_the_one_list() {
        let defined = defined_checks(include_str!("mod.rs"));
        let listed: BTreeSet<&str> = super::CHECKS.iter().copied().collect();
        assert_eq!(
            defined, listed,
            "a check defined here is missing from __blob_store_checks (or the reverse)"
        );
        assert_eq!(listed.len(), super::CHECKS.len(), "a check is listed twice");
    }

    #[test]
    fn the_scan_finds_a_check_that_is_not_listed() {
        let src = "pub async fn listed(h: &Harness) {}\npub async fn forgotten(h: &Harness) {}\npub async fn helper(x: u8) {}\n";
        assert_eq!(defined_checks(src), BTreeSet::from(["listed", "forgotten"]));
    }
}
