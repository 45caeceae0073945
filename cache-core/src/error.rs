//! The crate's one error type and its mapping to OCI distribution error codes.

use std::fmt;
use std::time::Duration;

use crate::Digest;

/// A boxed error from a lower layer (filesystem, HTTP, object storage).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error codes of the OCI distribution specification, plus the few
/// the specification leaves to implementations (`RANGE_INVALID`, upstream failures).
///
/// This is the one place where an [`Error`] turns into something a registry
/// client understands; HTTP servers use [`ErrorCode::http_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN`: the blob is not known to the registry under this repository.
    BlobUnknown,
    /// `DIGEST_INVALID`: a digest did not parse, or content did not match it.
    DigestInvalid,
    /// `MANIFEST_INVALID`: the manifest is malformed or too large.
    ManifestInvalid,
    /// `MANIFEST_UNKNOWN`: the manifest is not known.
    ManifestUnknown,
    /// `NAME_INVALID`: the repository name is malformed.
    NameInvalid,
    /// `NAME_UNKNOWN`: no caching rule declares this repository.
    NameUnknown,
    /// `SIZE_INVALID`: content length did not match.
    SizeInvalid,
    /// `TAG_INVALID`: the tag is malformed.
    TagInvalid,
    /// `UNAUTHORIZED`: authentication required or refused.
    Unauthorized,
    /// `DENIED`: access to the resource is denied (by policy or upstream).
    Denied,
    /// `UNSUPPORTED`: the operation is not supported.
    Unsupported,
    /// `TOOMANYREQUESTS`: the client or the upstream is rate limited.
    TooManyRequests,
    /// `RANGE_INVALID`: a requested byte range cannot be satisfied (HTTP 416).
    RangeInvalid,
    /// The upstream failed or returned something unusable (HTTP 502).
    UpstreamError,
    /// The upstream or the store is temporarily unavailable (HTTP 503).
    Unavailable,
    /// The upstream did not answer in time (HTTP 504).
    Timeout,
    /// A fault of this cache itself (HTTP 500).
    Internal,
}

impl ErrorCode {
    /// The code as written in an OCI error body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::UpstreamError => "UPSTREAM_ERROR",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Internal => "INTERNAL_ERROR",
        }
    }

    /// Parses a code as found in an (upstream) OCI error body.
    pub fn from_oci_str(s: &str) -> Option<Self> {
        Some(match s {
            "BLOB_UNKNOWN" | "BLOB_UPLOAD_UNKNOWN" => ErrorCode::BlobUnknown,
            "DIGEST_INVALID" => ErrorCode::DigestInvalid,
            "MANIFEST_INVALID" | "MANIFEST_BLOB_UNKNOWN" => ErrorCode::ManifestInvalid,
            "MANIFEST_UNKNOWN" => ErrorCode::ManifestUnknown,
            "NAME_INVALID" => ErrorCode::NameInvalid,
            "NAME_UNKNOWN" => ErrorCode::NameUnknown,
            "SIZE_INVALID" => ErrorCode::SizeInvalid,
            "TAG_INVALID" => ErrorCode::TagInvalid,
            "UNAUTHORIZED" => ErrorCode::Unauthorized,
            "DENIED" => ErrorCode::Denied,
            "UNSUPPORTED" => ErrorCode::Unsupported,
            "TOOMANYREQUESTS" => ErrorCode::TooManyRequests,
            _ => return None,
        })
    }

    /// The HTTP status a registry answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown | ErrorCode::ManifestUnknown | ErrorCode::NameUnknown => 404,
            ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid
            | ErrorCode::TagInvalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 405,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::RangeInvalid => 416,
            ErrorCode::UpstreamError => 502,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kind of value failed to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKind {
    /// A content digest.
    Digest,
    /// A repository name.
    Name,
    /// A tag.
    Tag,
    /// A manifest reference (tag or digest).
    Reference,
    /// A registry host.
    Registry,
    /// An image reference (`registry/repository[:tag|@digest]`).
    ImageRef,
    /// A metadata key.
    MetaKey,
    /// A byte range.
    Range,
}

impl fmt::Display for InvalidKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidKind::Digest => "digest",
            InvalidKind::Name => "repository name",
            InvalidKind::Tag => "tag",
            InvalidKind::Reference => "reference",
            InvalidKind::Registry => "registry",
            InvalidKind::ImageRef => "image reference",
            InvalidKind::MetaKey => "metadata key",
            InvalidKind::Range => "byte range",
        })
    }
}

/// The error type of `cache-core` and of the traits it defines.
///
/// Every variant carries the offending value or enough context to act on it.
/// [`Error::code`] maps it to an OCI error code, [`Error::is_temporary`]
/// says whether retrying later can succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value from outside failed validation.
    #[error("invalid {kind} {value:?}: {reason}")]
    Invalid {
        /// What was being parsed.
        kind: InvalidKind,
        /// The offending input, verbatim (truncated to 300 characters).
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A caching-rule set could not be built.
    #[error("invalid caching rule {rule:?}: {reason}")]
    InvalidRule {
        /// The rule's name.
        rule: String,
        /// Why it was refused, naming the offending value.
        reason: String,
    },
    /// No caching rule declares this repository; no upstream was contacted.
    #[error("repository {name:?} is not declared by any caching rule")]
    NameUnknown {
        /// The local repository name that did not match.
        name: String,
    },
    /// The manifest is not known (locally or upstream).
    #[error("manifest unknown: {repository}:{reference}")]
    ManifestUnknown {
        /// The repository.
        repository: String,
        /// The tag or digest asked for.
        reference: String,
    },
    /// The manifest is malformed, too large or otherwise unusable.
    #[error("manifest invalid: {reason}")]
    ManifestInvalid {
        /// Why.
        reason: String,
    },
    /// The blob is not known under this repository, or not in the store.
    #[error("blob unknown: {digest}")]
    BlobUnknown {
        /// The digest asked for.
        digest: Digest,
    },
    /// Content did not hash to the digest it was addressed by.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the content was expected to have.
        expected: Digest,
        /// The digest the content actually has.
        actual: Digest,
    },
    /// Content was longer or shorter than announced.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The digest of the content.
        digest: Digest,
        /// The announced size.
        expected: u64,
        /// The number of bytes seen (for an overflow: at least this many).
        actual: u64,
    },
    /// A byte range lies outside the content.
    #[error("range not satisfiable: {range} of {size} bytes")]
    RangeNotSatisfiable {
        /// The requested range as written.
        range: String,
        /// The content's size.
        size: u64,
    },
    /// Authentication is required or was refused.
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// Details (never a secret).
        reason: String,
    },
    /// Access is denied, by policy or by the upstream.
    #[error("denied: {reason}")]
    Denied {
        /// Details, e.g. the admission hook's reason.
        reason: String,
    },
    /// The operation is not supported.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What was attempted.
        what: String,
    },
    /// The upstream is rate limiting.
    #[error("too many requests{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    TooManyRequests {
        /// How long the upstream asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The upstream failed or sent something unusable.
    #[error("upstream {registry}: {message}")]
    Upstream {
        /// The upstream registry host.
        registry: String,
        /// What went wrong.
        message: String,
        /// The OCI code the upstream sent, if any and if known.
        code: Option<ErrorCode>,
        /// Whether retrying later may succeed (5xx, connection errors).
        temporary: bool,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// An operation did not finish in time.
    #[error("timed out: {what}")]
    Timeout {
        /// What timed out.
        what: String,
    },
    /// A storage backend failed.
    #[error("storage {op} failed: {message}")]
    Storage {
        /// The store operation, e.g. `"commit"`.
        op: &'static str,
        /// Context, e.g. the key or path concerned.
        message: String,
        /// Whether retrying later may succeed.
        temporary: bool,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Builds an [`Error::Invalid`], truncating very long values.
    pub fn invalid(kind: InvalidKind, value: &str, reason: &'static str) -> Self {
        const MAX: usize = 300;
        let value = if value.len() > MAX {
            let mut end = MAX;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &value[..end])
        } else {
            value.to_owned()
        };
        Error::Invalid {
            kind,
            value,
            reason,
        }
    }

    /// Builds an [`Error::Storage`] from a lower-layer error.
    pub fn storage(
        op: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Storage {
            op,
            message: message.into(),
            temporary: false,
            source: Some(source.into()),
        }
    }

    /// A copy of this error for another caller (one upstream failure
    /// reaches every reader of a shared fetch). Variants and their fields
    /// are kept; a lower-layer `source` is kept as its message only.
    pub fn duplicate(&self) -> Error {
        let src =
            |s: &Option<BoxError>| -> Option<BoxError> { s.as_ref().map(|e| e.to_string().into()) };
        match self {
            Error::Invalid {
                kind,
                value,
                reason,
            } => Error::Invalid {
                kind: *kind,
                value: value.clone(),
                reason,
            },
            Error::InvalidRule { rule, reason } => Error::InvalidRule {
                rule: rule.clone(),
                reason: reason.clone(),
            },
            Error::NameUnknown { name } => Error::NameUnknown { name: name.clone() },
            Error::ManifestUnknown {
                repository,
                reference,
            } => Error::ManifestUnknown {
                repository: repository.clone(),
                reference: reference.clone(),
            },
            Error::ManifestInvalid { reason } => Error::ManifestInvalid {
                reason: reason.clone(),
            },
            Error::BlobUnknown { digest } => Error::BlobUnknown {
                digest: digest.clone(),
            },
            Error::DigestMismatch { expected, actual } => Error::DigestMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            },
            Error::SizeMismatch {
                digest,
                expected,
                actual,
            } => Error::SizeMismatch {
                digest: digest.clone(),
                expected: *expected,
                actual: *actual,
            },
            Error::RangeNotSatisfiable { range, size } => Error::RangeNotSatisfiable {
                range: range.clone(),
                size: *size,
            },
            Error::Unauthorized { reason } => Error::Unauthorized {
                reason: reason.clone(),
            },
            Error::Denied { reason } => Error::Denied {
                reason: reason.clone(),
            },
            Error::Unsupported { what } => Error::Unsupported { what: what.clone() },
            Error::TooManyRequests { retry_after } => Error::TooManyRequests {
                retry_after: *retry_after,
            },
            Error::Upstream {
                registry,
                message,
                code,
                temporary,
                source,
            } => Error::Upstream {
                registry: registry.clone(),
                message: message.clone(),
                code: *code,
                temporary: *temporary,
                source: src(source),
            },
            Error::Timeout { what } => Error::Timeout { what: what.clone() },
            Error::Storage {
                op,
                message,
                temporary,
                source,
            } => Error::Storage {
                op,
                message: message.clone(),
                temporary: *temporary,
                source: src(source),
            },
        }
    }

    /// The OCI error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid { kind, .. } => match kind {
                InvalidKind::Digest => ErrorCode::DigestInvalid,
                InvalidKind::Tag => ErrorCode::TagInvalid,
                InvalidKind::Reference => ErrorCode::ManifestInvalid,
                InvalidKind::Range => ErrorCode::RangeInvalid,
                InvalidKind::Name
                | InvalidKind::Registry
                | InvalidKind::ImageRef
                | InvalidKind::MetaKey => ErrorCode::NameInvalid,
            },
            Error::InvalidRule { .. } => ErrorCode::Internal,
            Error::NameUnknown { .. } => ErrorCode::NameUnknown,
            Error::ManifestUnknown { .. } => ErrorCode::ManifestUnknown,
            Error::ManifestInvalid { .. } => ErrorCode::ManifestInvalid,
            Error::BlobUnknown { .. } => ErrorCode::BlobUnknown,
            Error::DigestMismatch { .. } => ErrorCode::DigestInvalid,
            Error::SizeMismatch { .. } => ErrorCode::SizeInvalid,
            Error::RangeNotSatisfiable { .. } => ErrorCode::RangeInvalid,
            Error::Unauthorized { .. } => ErrorCode::Unauthorized,
            Error::Denied { .. } => ErrorCode::Denied,
            Error::Unsupported { .. } => ErrorCode::Unsupported,
            Error::TooManyRequests { .. } => ErrorCode::TooManyRequests,
            Error::Upstream {
                temporary, code, ..
            } => match code {
                Some(ErrorCode::TooManyRequests) => ErrorCode::TooManyRequests,
                _ if *temporary => ErrorCode::Unavailable,
                _ => ErrorCode::UpstreamError,
            },
            Error::Timeout { .. } => ErrorCode::Timeout,
            Error::Storage { temporary, .. } => {
                if *temporary {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::Internal
                }
            }
        }
    }

    /// Whether the same operation may succeed if retried later.
    ///
    /// True for rate limits, timeouts, and upstream or storage faults marked
    /// temporary; false for every error caused by the request itself or by
    /// content that does not verify.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::TooManyRequests { .. } | Error::Timeout { .. } => true,
            Error::Upstream { temporary, .. } | Error::Storage { temporary, .. } => *temporary,
            _ => false,
        }
    }

    /// Whether this is a "not found" of any kind (name, manifest or blob).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::NameUnknown { .. } | Error::ManifestUnknown { .. } | Error::BlobUnknown { .. }
        )
    }

    /// Whether this error is the client's mistake (a 4xx), as opposed to a
    /// fault of this cache, its store, or the upstream.
    pub fn is_client_error(&self) -> bool {
        (400..500).contains(&self.code().http_status()) && !matches!(self, Error::Upstream { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_invalid_values_are_truncated_on_a_char_boundary() {
        let v = "é".repeat(400);
        let e = Error::invalid(InvalidKind::Name, &v, "too long");
        let Error::Invalid { value, .. } = e else {
            panic!("wrong variant")
        };
        assert!(value.len() <= 303 + 3);
        assert!(value.ends_with("..."));
    }

    #[test]
    fn client_mistakes_are_4xx_and_upstream_faults_are_5xx() {
        let bad = Error::invalid(InvalidKind::Digest, "sha256:zz", "not hex");
        assert_eq!(bad.code(), ErrorCode::DigestInvalid);
        assert_eq!(bad.code().http_status(), 400);
        assert!(bad.is_client_error());
        let up = Error::Upstream {
            registry: "r".into(),
            message: "503".into(),
            code: None,
            temporary: true,
            source: None,
        };
        assert_eq!(up.code().http_status(), 503);
        assert!(up.is_temporary());
        assert!(!up.is_client_error());
    }

    #[test]
    fn every_oci_code_round_trips_through_its_string() {
        for c in [
            ErrorCode::BlobUnknown,
            ErrorCode::DigestInvalid,
            ErrorCode::ManifestInvalid,
            ErrorCode::ManifestUnknown,
            ErrorCode::NameInvalid,
            ErrorCode::NameUnknown,
            ErrorCode::SizeInvalid,
            ErrorCode::TagInvalid,
            ErrorCode::Unauthorized,
            ErrorCode::Denied,
            ErrorCode::Unsupported,
            ErrorCode::TooManyRequests,
        ] {
            assert_eq!(ErrorCode::from_oci_str(c.as_str()), Some(c));
        }
    }
}
