//! Single byte ranges, as HTTP `Range` headers and store reads express them.

use std::fmt;
use std::ops::Range;

use crate::error::{Error, InvalidKind, Result};

/// One byte range over content of a size not yet known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteRange {
    /// From `start` to the end (`bytes=START-`).
    From(u64),
    /// From `start` to `end`, both inclusive (`bytes=START-END`).
    Inclusive(u64, u64),
    /// The last `n` bytes (`bytes=-N`).
    Suffix(u64),
}

impl ByteRange {
    /// Parses an HTTP `Range` header value holding exactly one `bytes` range.
    ///
    /// Multiple ranges are refused (registries do not serve multipart bodies).
    pub fn parse_http(header: &str) -> Result<Self> {
        let invalid = |reason| Error::invalid(InvalidKind::Range, header, reason);
        let spec = header
            .trim()
            .strip_prefix("bytes=")
            .ok_or_else(|| invalid("only 'bytes=' ranges are supported"))?;
        if spec.contains(',') {
            return Err(invalid("only a single range is supported"));
        }
        let (a, b) = spec
            .split_once('-')
            .ok_or_else(|| invalid("expected START-END, START- or -SUFFIX"))?;
        let num = |s: &str| -> Result<u64> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(invalid("range bounds must be decimal numbers"));
            }
            s.parse::<u64>()
                .map_err(|_| invalid("range bound too large"))
        };
        match (a.trim().is_empty(), b.trim().is_empty()) {
            (true, true) => Err(invalid("empty range")),
            (true, false) => Ok(ByteRange::Suffix(num(b)?)),
            (false, true) => Ok(ByteRange::From(num(a)?)),
            (false, false) => {
                let (s, e) = (num(a)?, num(b)?);
                if e < s {
                    return Err(invalid("end before start"));
                }
                Ok(ByteRange::Inclusive(s, e))
            }
        }
    }

    /// The half-open byte span this range selects in content of `size`
    /// bytes, with HTTP's rules: an end past the content is clamped, a
    /// start at or past the end is unsatisfiable, and so is an empty suffix.
    pub fn resolve(&self, size: u64) -> Result<Range<u64>> {
        let unsatisfiable = || Error::RangeNotSatisfiable {
            range: self.to_string(),
            size,
        };
        match *self {
            ByteRange::From(s) if s < size => Ok(s..size),
            ByteRange::Inclusive(s, e) if s < size && s <= e => {
                Ok(s..e.saturating_add(1).min(size))
            }
            ByteRange::Suffix(n) if n > 0 && size > 0 => Ok(size.saturating_sub(n)..size),
            _ => Err(unsatisfiable()),
        }
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ByteRange::From(s) => write!(f, "bytes={s}-"),
            ByteRange::Inclusive(s, e) => write!(f, "bytes={s}-{e}"),
            ByteRange::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn http_ranges_parse_and_resolve() {
        assert_eq!(
            ByteRange::parse_http("bytes=0-9")
                .unwrap()
                .resolve(100)
                .unwrap(),
            0..10
        );
        assert_eq!(
            ByteRange::parse_http("bytes=90-")
                .unwrap()
                .resolve(100)
                .unwrap(),
            90..100
        );
        assert_eq!(
            ByteRange::parse_http("bytes=-10")
                .unwrap()
                .resolve(100)
                .unwrap(),
            90..100
        );
        assert_eq!(
            ByteRange::parse_http("bytes=-1000")
                .unwrap()
                .resolve(100)
                .unwrap(),
            0..100
        );
        assert_eq!(
            ByteRange::parse_http("bytes=50-5000")
                .unwrap()
                .resolve(100)
                .unwrap(),
            50..100
        );
    }

    #[test]
    fn out_of_range_is_unsatisfiable_and_malformed_is_invalid() {
        for (h, size) in [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-0", 0)] {
            let e = ByteRange::parse_http(h).unwrap().resolve(size).unwrap_err();
            assert!(matches!(e, Error::RangeNotSatisfiable { .. }), "{h}");
            assert_eq!(e.code().http_status(), 416);
        }
        for h in [
            "",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-1",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=99999999999999999999-",
        ] {
            assert!(
                matches!(ByteRange::parse_http(h), Err(Error::Invalid { .. })),
                "{h}"
            );
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(h in "\\PC{0,40}", size in 0u64..1000) {
            if let Ok(r) = ByteRange::parse_http(&h) {
                let _ = r.resolve(size);
            }
        }

        #[test]
        fn resolved_spans_agree_with_a_naive_reference_and_lie_inside((size, h) in sized_range_like()) {
            let got = ByteRange::parse_http(&h).and_then(|r| r.resolve(size)).ok();
            prop_assert_eq!(&got, &naive_span(&h, size), "{:?} of {} bytes", h, size);
            if let Some(span) = got {
                prop_assert!(span.start < span.end && span.end <= size);
            }
        }

        #[test]
        fn display_round_trips(a in 0u64..1_000_000, b in 0u64..1_000_000, which in 0..3) {
            let r = match which { 0 => ByteRange::From(a), 1 => ByteRange::Inclusive(a.min(b), a.max(b)), _ => ByteRange::Suffix(a) };
            prop_assert_eq!(ByteRange::parse_http(&r.to_string()).unwrap(), r);
        }
    }

    /// RFC 9110's single byte range, as plainly as possible: the reference
    /// the parser and `resolve` are checked against.
    fn naive_span(h: &str, size: u64) -> Option<Range<u64>> {
        let re = regex::Regex::new(r"^\s*bytes=\s*([0-9]*)\s*-\s*([0-9]*)\s*$").unwrap();
        let c = re.captures(h)?;
        let num = |i: usize| -> Option<Option<u128>> {
            let t = c.get(i).unwrap().as_str();
            if t.is_empty() {
                Some(None)
            } else {
                // Bounds past u64 are refused, not clamped.
                t.parse::<u64>().ok().map(|n| Some(u128::from(n)))
            }
        };
        let (a, b, size) = (num(1)?, num(2)?, u128::from(size));
        let (start, end) = match (a, b) {
            (Some(a), Some(b)) if b >= a => (a, (b + 1).min(size)),
            (Some(a), None) => (a, size),
            (None, Some(n)) if n > 0 => (size.saturating_sub(n), size),
            _ => return None,
        };
        (start < end).then_some(start as u64..end as u64)
    }

    /// Strings shaped like `Range` headers: mostly `bytes=` with bounds
    /// around the content's size, some with the pieces that make them
    /// invalid (another unit, two ranges, letters, huge numbers).
    fn range_like(size: u64) -> impl Strategy<Value = String> {
        let near = prop_oneof![
            Just(0),
            Just(1),
            Just(size.saturating_sub(1)),
            Just(size),
            Just(size + 1),
            0..size + 2,
        ];
        let bound = prop_oneof![
            8 => near.prop_map(|n| n.to_string()),
            2 => Just(String::new()),
            1 => Just("99999999999999999999".to_owned()),
            1 => "[0-9a-x+]{1,3}",
        ];
        let unit = prop_oneof![12 => Just("bytes="), 1 => Just("items="), 1 => Just("bytes")];
        let pad = prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("\t")];
        let tail = prop_oneof![12 => Just(""), 1 => Just(",0-1"), 1 => Just("-")];
        (pad.clone(), unit, bound.clone(), pad, bound, tail)
            .prop_map(|(p, u, a, q, b, t)| format!("{p}{u}{a}{q}-{q}{b}{t}{p}"))
    }

    /// A content size, and a header shaped for it: bounds at, just inside
    /// and just outside its edges are as likely as any other.
    fn sized_range_like() -> impl Strategy<Value = (u64, String)> {
        prop_oneof![Just(0u64), Just(1), 2u64..1000]
            .prop_flat_map(|size| (Just(size), range_like(size)))
    }

    #[test]
    fn the_range_generator_yields_satisfiable_and_refused_ranges_alike() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = sized_range_like();
        let spans = (0..1000)
            .filter(|_| {
                let (size, h) = strategy.new_tree(&mut runner).unwrap().current();
                naive_span(&h, size).is_some()
            })
            .count();
        assert!((150..=850).contains(&spans), "{spans} of 1000 satisfiable");
    }
}
