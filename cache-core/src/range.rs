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
        fn parse_never_panics_and_resolved_spans_lie_inside(h in "\\PC{0,40}", size in 0u64..1000) {
            if let Ok(r) = ByteRange::parse_http(&h)
                && let Ok(span) = r.resolve(size)
            {
                prop_assert!(span.start < span.end && span.end <= size);
            }
        }

        #[test]
        fn display_round_trips(a in 0u64..1_000_000, b in 0u64..1_000_000, which in 0..3) {
            let r = match which { 0 => ByteRange::From(a), 1 => ByteRange::Inclusive(a.min(b), a.max(b)), _ => ByteRange::Suffix(a) };
            prop_assert_eq!(ByteRange::parse_http(&r.to_string()).unwrap(), r);
        }
    }
}
