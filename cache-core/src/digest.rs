//! Content digests: the only way content is addressed.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest as _, Sha256, Sha512};

use crate::error::{Error, InvalidKind, Result};

/// A digest algorithm this cache accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Algorithm {
    /// SHA-256, 64 lowercase hex characters.
    Sha256,
    /// SHA-512, 128 lowercase hex characters.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as written before the `:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The number of hex characters of an encoded digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// A fresh incremental hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated content digest: `sha256:` + 64 lowercase hex, or
/// `sha512:` + 128 lowercase hex.
///
/// Once parsed, the string is safe to use as a storage key or path component:
/// it contains only the algorithm name, one `:`, and lowercase hex.
/// Cloning is cheap (the string is shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    full: Arc<str>,
}

impl Digest {
    /// Parses and validates a digest string.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason| Error::invalid(InvalidKind::Digest, s, reason);
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| invalid("expected ALGORITHM:HEX"))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(invalid("unsupported algorithm (sha256 and sha512 are)")),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(invalid(match algorithm {
                Algorithm::Sha256 => "sha256 needs exactly 64 hex characters",
                Algorithm::Sha512 => "sha512 needs exactly 128 hex characters",
            }));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("the encoded part must be lowercase hex"));
        }
        Ok(Digest {
            algorithm,
            full: Arc::from(s),
        })
    }

    /// The SHA-256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Self {
        let mut h = Algorithm::Sha256.hasher();
        h.update(data);
        h.finish()
    }

    /// The digest of `data` under `algorithm`.
    pub fn compute(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut h = algorithm.hasher();
        h.update(data);
        h.finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part after the `:`.
    pub fn hex(&self) -> &str {
        &self.full[self.algorithm.as_str().len() + 1..]
    }

    /// The whole digest, `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// Whether `data` hashes to this digest.
    pub fn verifies(&self, data: &[u8]) -> bool {
        Digest::compute(self.algorithm, data) == *self
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.full)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

impl From<Digest> for oci_spec::image::Digest {
    fn from(d: Digest) -> Self {
        // Our grammar is a strict subset of oci-spec's, so this cannot fail.
        oci_spec::image::Digest::from_str(d.as_str())
            .expect("a validated sha256/sha512 digest is a valid oci-spec digest")
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = Error;
    fn try_from(d: &oci_spec::image::Digest) -> Result<Self> {
        Digest::parse(d.as_ref())
    }
}

/// An incremental hasher producing a [`Digest`].
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state (boxed: it is large).
    Sha512(Box<Sha512>),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hasher::Sha256(_) => "Hasher(sha256)",
            Hasher::Sha512(_) => "Hasher(sha512)",
        })
    }
}

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// Finishes and returns the digest of everything fed.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest {
            algorithm,
            full: Arc::from(format!("{}:{hex}", algorithm.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sha256_of_empty_input_is_the_well_known_digest() {
        assert_eq!(Digest::sha256_of(b"").as_str(), EMPTY);
        assert!(Digest::parse(EMPTY).unwrap().verifies(b""));
    }

    #[test]
    fn refuses_uppercase_short_long_unknown_and_path_like_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            &EMPTY.to_uppercase(),
            &EMPTY[..EMPTY.len() - 1],
            &format!("{EMPTY}0"),
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:../../../../etc/passwd",
            &format!("sha384:{}", "a".repeat(96)),
            &format!("sha512:{}", "a".repeat(64)),
        ] {
            let err = Digest::parse(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Invalid {
                        kind: InvalidKind::Digest,
                        ..
                    }
                ),
                "{bad}"
            );
            assert_eq!(err.code(), crate::ErrorCode::DigestInvalid);
        }
    }

    #[test]
    fn sha512_digests_parse_and_verify() {
        let d = Digest::compute(Algorithm::Sha512, b"abc");
        assert_eq!(d.hex().len(), 128);
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        assert!(d.verifies(b"abc"));
        assert!(!d.verifies(b"abd"));
    }

    #[test]
    fn converts_to_and_from_oci_spec() {
        let d = Digest::sha256_of(b"x");
        let o: oci_spec::image::Digest = d.clone().into();
        assert_eq!(Digest::try_from(&o).unwrap(), d);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = Digest::parse(&s);
        }

        #[test]
        fn accepted_digests_round_trip(hex in "[0-9a-f]{64}", long in "[0-9a-f]{128}", pick in any::<bool>()) {
            let s = if pick { format!("sha256:{hex}") } else { format!("sha512:{long}") };
            let d = Digest::parse(&s).unwrap();
            prop_assert_eq!(d.to_string(), s.clone());
            prop_assert_eq!(Digest::parse(d.as_ref()).unwrap(), d);
        }

        #[test]
        fn parse_agrees_with_a_naive_reference_and_what_parses_is_a_safe_path_component(s in digest_like()) {
            match Digest::parse(&s) {
                Ok(d) => {
                    prop_assert!(naive_valid(&s), "accepted {s:?}");
                    prop_assert!(d.hex().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                    prop_assert_eq!(d.hex().len(), d.algorithm().hex_len());
                    prop_assert_eq!(d.as_str(), s.as_str());
                }
                Err(e) => {
                    prop_assert!(!naive_valid(&s), "refused {s:?}: {e}");
                    prop_assert!(e.is_client_error());
                }
            }
        }
    }

    /// What a digest is, written as plainly as possible: the reference the
    /// parser is checked against.
    fn naive_valid(s: &str) -> bool {
        let Some((alg, hex)) = s.split_once(':') else {
            return false;
        };
        let len = match alg {
            "sha256" => 64,
            "sha512" => 128,
            _ => return false,
        };
        hex.len() == len && hex.chars().all(|c| "0123456789abcdef".contains(c))
    }

    /// Strings shaped like digests: the right algorithms (and wrong ones),
    /// the right lengths (and off by one), all hex or with one character
    /// that does not belong, so that valid and invalid digests are both
    /// common.
    fn digest_like() -> impl Strategy<Value = String> {
        let any_alg = prop_oneof![
            Just("sha256"),
            Just("sha512"),
            Just("SHA256"),
            Just("md5"),
            Just(""),
        ];
        let odd_len = prop_oneof![
            prop_oneof![Just(63usize), Just(65), Just(127), Just(129), Just(0)],
            0usize..140,
        ];
        let shape = prop_oneof![
            3 => Just(("sha256", 64usize)),
            3 => Just(("sha512", 128usize)),
            2 => (any_alg, odd_len),
        ];
        let intruder = proptest::option::weighted(
            0.4,
            (
                any::<prop::sample::Index>(),
                "[A-Fg-z./:%\\\\ \\x00-\\x1f\\u{e9}]",
            ),
        );
        (shape, "[0-9a-f]{140}", intruder).prop_map(|((alg, len), hex, intruder)| {
            let mut hex = hex[..len].to_owned();
            if let Some((at, c)) = intruder
                && len > 0
            {
                let i = at.index(len);
                hex.replace_range(i..i + 1, &c);
            }
            format!("{alg}:{hex}")
        })
    }

    #[test]
    fn the_digest_generator_yields_valid_and_invalid_digests_alike() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = digest_like();
        let valid = (0..1000)
            .filter(|_| naive_valid(&strategy.new_tree(&mut runner).unwrap().current()))
            .count();
        assert!((150..=850).contains(&valid), "{valid} of 1000 valid");
    }
}
