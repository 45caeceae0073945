//! A stream adapter that hashes content as it passes and refuses to end
//! cleanly when the content does not match its digest.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use crate::digest::{Digest, Hasher};
use crate::error::Error;

/// Wraps a byte stream, passes every chunk through unchanged (no copy), and
/// hashes it on the way.
///
/// A stream whose content matches `expected` (and `expected_size`, when
/// given) ends with `None`. Otherwise the last item is an error:
/// [`Error::DigestMismatch`] or [`Error::SizeMismatch`]; a consumer must
/// treat that as "everything received is void". A source that yields more
/// bytes than `expected_size` fails as soon as the excess arrives. An error
/// from the source is passed on and ends the stream.
#[derive(Debug)]
pub struct VerifyingStream<S> {
    inner: S,
    hasher: Option<Hasher>,
    expected: Digest,
    expected_size: Option<u64>,
    seen: u64,
}

impl<S> VerifyingStream<S> {
    /// Verifies `inner` against `expected`, and its length against
    /// `expected_size` if known.
    pub fn new(inner: S, expected: Digest, expected_size: Option<u64>) -> Self {
        let hasher = Some(expected.algorithm().hasher());
        VerifyingStream {
            inner,
            hasher,
            expected,
            expected_size,
            seen: 0,
        }
    }

    /// Bytes passed through so far.
    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Bytes, Error>>> {
        self.hasher = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl<S, E> Stream for VerifyingStream<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Error>,
{
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.hasher.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if let Some(size) = this.expected_size
                    && this.seen > size
                {
                    let e = Error::SizeMismatch {
                        digest: this.expected.clone(),
                        expected: size,
                        actual: this.seen,
                    };
                    return this.fail(e);
                }
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(e.into()),
            Poll::Ready(None) => {
                let hasher = this.hasher.take().expect("checked above");
                if let Some(size) = this.expected_size
                    && this.seen != size
                {
                    return Poll::Ready(Some(Err(Error::SizeMismatch {
                        digest: this.expected.clone(),
                        expected: size,
                        actual: this.seen,
                    })));
                }
                let actual = hasher.finish();
                if actual != this.expected {
                    return Poll::Ready(Some(Err(Error::DigestMismatch {
                        expected: this.expected.clone(),
                        actual,
                    })));
                }
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, executor::block_on, stream};

    fn chunks(data: &[u8], n: usize) -> Vec<Result<Bytes, Error>> {
        data.chunks(n.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    fn run(data: &[u8], expected: Digest, size: Option<u64>) -> (Vec<u8>, Option<Error>) {
        let mut s = VerifyingStream::new(stream::iter(chunks(data, 7)), expected, size);
        block_on(async {
            let mut out = Vec::new();
            while let Some(item) = s.next().await {
                match item {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(e) => {
                        assert!(s.next().await.is_none(), "stream must end after an error");
                        return (out, Some(e));
                    }
                }
            }
            (out, None)
        })
    }

    #[test]
    fn matching_content_passes_through_and_ends_cleanly() {
        let data = b"hello, registry".repeat(10);
        let (out, err) = run(&data, Digest::sha256_of(&data), Some(data.len() as u64));
        assert_eq!(out, data);
        assert!(err.is_none());
    }

    #[test]
    fn flipped_byte_ends_in_digest_mismatch_naming_both_digests() {
        let data = b"hello, registry".repeat(10);
        let mut bad = data.clone();
        bad[3] ^= 1;
        let (_, err) = run(&bad, Digest::sha256_of(&data), None);
        match err {
            Some(Error::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, Digest::sha256_of(&data));
                assert_eq!(actual, Digest::sha256_of(&bad));
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
    }

    #[test]
    fn short_and_long_content_end_in_size_mismatch() {
        let data = b"0123456789".to_vec();
        let d = Digest::sha256_of(&data);
        let (_, err) = run(&data[..5], d.clone(), Some(10));
        assert!(matches!(err, Some(Error::SizeMismatch { actual: 5, .. })));
        let (out, err) = run(&data, d, Some(4));
        assert!(matches!(err, Some(Error::SizeMismatch { expected: 4, .. })));
        assert!(out.len() < 10, "overflow is refused as soon as it arrives");
    }

    #[test]
    fn source_errors_pass_through_and_end_the_stream() {
        let items: Vec<Result<Bytes, Error>> = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(Error::Timeout {
                what: "read".into(),
            }),
            Ok(Bytes::from_static(b"cd")),
        ];
        let mut s = VerifyingStream::new(stream::iter(items), Digest::sha256_of(b"abcd"), None);
        block_on(async {
            assert!(s.next().await.unwrap().is_ok());
            assert!(matches!(s.next().await, Some(Err(Error::Timeout { .. }))));
            assert!(s.next().await.is_none());
        });
    }

    #[test]
    fn chunks_are_passed_without_copying() {
        let chunk = Bytes::from(vec![7u8; 1024]);
        let ptr = chunk.as_ptr();
        let mut s = VerifyingStream::new(
            stream::iter(vec![Ok::<_, Error>(chunk.clone())]),
            Digest::sha256_of(&chunk),
            None,
        );
        let out = block_on(s.next()).unwrap().unwrap();
        assert_eq!(out.as_ptr(), ptr);
    }
}
