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
    /// `PAGINATION_NUMBER_INVALID`: the `n` of a listing is not a number.
    PaginationNumberInvalid,
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
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
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
            "PAGINATION_NUMBER_INVALID" => ErrorCode::PaginationNumberInvalid,
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
            | ErrorCode::TagInvalid
            | ErrorCode::PaginationNumberInvalid => 400,
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
    /// A listing's page size (`n`).
    Pagination,
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
            InvalidKind::Pagination => "page size",
        })
    }
}

/// The error type of `cache-core` and of the traits it defines.
///
/// Every variant carries the offending value or enough context to act on it.
/// [`Error::code`] maps it to an OCI error code and so to the HTTP status a
/// server answers with; [`Error::is_temporary`], [`Error::is_client_error`]
/// and [`Error::is_not_found`] agree with that status. Errors are cheap to
/// clone (lower-layer sources are shared), so one upstream failure can reach
/// every reader of a shared fetch. Build them with the constructors
/// ([`Error::upstream`], [`Error::storage`], ...), which keep messages uniform.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// A caching rule, or the engine's wiring for one, is invalid.
    #[error("invalid caching rule {rule:?}: {reason}")]
    InvalidRule {
        /// The rule's name.
        rule: String,
        /// Why it was refused, naming the offending value.
        reason: String,
    },
    /// The engine was wired wrongly (a builder step missing, an invalid
    /// upstream host): a fault of the embedding program.
    #[error("misconfigured: {reason}")]
    Misconfigured {
        /// What is wrong.
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
    /// A "not found" the upstream gave within the rule's `negative_ttl`,
    /// answered again from memory without asking it: the same code and
    /// status as `error`, and `X-Cache: negative`
    /// ([`cache_status`](Error::cache_status)).
    #[error("{error} (as the upstream answered {}s ago; not asked again yet)", age.as_secs())]
    Remembered {
        /// What the upstream answered.
        error: Box<Error>,
        /// How long ago.
        age: Duration,
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
    /// The client must authenticate (to this cache, not to an upstream:
    /// an upstream refusing the cache's credentials is [`Error::Upstream`]).
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
        /// Structured details for the OCI error body's `detail` (the
        /// findings that refused an image, say), if any.
        detail: Option<Box<serde_json::Value>>,
    },
    /// The operation is not supported (a push, a method other than
    /// `GET`/`HEAD`): HTTP 405.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What was attempted.
        what: String,
    },
    /// The path is no endpoint of the pull API: HTTP 404 (code `UNSUPPORTED`).
    #[error("no such endpoint: {path}")]
    UnknownEndpoint {
        /// The path, truncated.
        path: String,
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
        source: Option<SharedError>,
    },
    /// This cache cannot take the request now (a full fetch queue, a fetch
    /// abandoned by its readers); retrying later should succeed.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// When to try again, if known.
        retry_after: Option<Duration>,
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
        source: Option<SharedError>,
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

    /// An [`Error::Upstream`] for `registry` without a lower-layer source.
    pub fn upstream(
        registry: impl fmt::Display,
        message: impl Into<String>,
        temporary: bool,
    ) -> Self {
        Error::Upstream {
            registry: registry.to_string(),
            message: message.into(),
            code: None,
            temporary,
            source: None,
        }
    }

    /// An [`Error::Upstream`] caused by a lower-layer error (HTTP, I/O).
    pub fn upstream_with(
        registry: impl fmt::Display,
        message: impl Into<String>,
        temporary: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Upstream {
            registry: registry.to_string(),
            message: message.into(),
            code: None,
            temporary,
            source: Some(SharedError::from(source.into())),
        }
    }

    /// An [`Error::Storage`] caused by a lower-layer error; permanent.
    pub fn storage(
        op: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::storage_caused(op, message.into(), false, source.into())
    }

    /// An [`Error::Storage`] caused by a lower-layer error that may pass.
    pub fn storage_temporary(
        op: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::storage_caused(op, message.into(), true, source.into())
    }

    fn storage_caused(
        op: &'static str,
        message: String,
        temporary: bool,
        source: BoxError,
    ) -> Self {
        Error::Storage {
            op,
            message,
            temporary,
            source: Some(SharedError::from(source)),
        }
    }

    /// An [`Error::Storage`] with a message only; permanent.
    pub fn storage_msg(op: &'static str, message: impl Into<String>) -> Self {
        Error::Storage {
            op,
            message: message.into(),
            temporary: false,
            source: None,
        }
    }

    /// An [`Error::Storage`] with a message only, that may pass (a store in
    /// use, a short read).
    pub fn storage_busy(op: &'static str, message: impl Into<String>) -> Self {
        Error::Storage {
            op,
            message: message.into(),
            temporary: true,
            source: None,
        }
    }

    /// An [`Error::NameUnknown`].
    pub fn name_unknown(name: impl fmt::Display) -> Self {
        Error::NameUnknown {
            name: name.to_string(),
        }
    }

    /// An [`Error::Misconfigured`].
    pub fn misconfigured(reason: impl Into<String>) -> Self {
        Error::Misconfigured {
            reason: reason.into(),
        }
    }

    /// An [`Error::Timeout`].
    pub fn timeout(what: impl Into<String>) -> Self {
        Error::Timeout { what: what.into() }
    }

    /// An [`Error::Unavailable`].
    pub fn unavailable(reason: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Error::Unavailable {
            reason: reason.into(),
            retry_after,
        }
    }

    /// An [`Error::Denied`].
    pub fn denied(reason: impl Into<String>) -> Self {
        Error::Denied {
            reason: reason.into(),
            detail: None,
        }
    }

    /// An [`Error::Denied`] with structured details, which the pull API
    /// puts in the OCI error body's `detail`.
    pub fn denied_with(reason: impl Into<String>, detail: serde_json::Value) -> Self {
        Error::Denied {
            reason: reason.into(),
            detail: Some(Box::new(detail)),
        }
    }

    /// The structured details of the error, for the OCI error body's
    /// `detail` (`None`: `null`).
    pub fn detail(&self) -> Option<&serde_json::Value> {
        match self {
            Error::Denied { detail, .. } => detail.as_deref(),
            _ => None,
        }
    }

    /// An [`Error::ManifestInvalid`].
    pub fn manifest_invalid(reason: impl Into<String>) -> Self {
        Error::ManifestInvalid {
            reason: reason.into(),
        }
    }

    /// An [`Error::ManifestUnknown`].
    pub fn manifest_unknown(repository: impl fmt::Display, reference: impl fmt::Display) -> Self {
        Error::ManifestUnknown {
            repository: repository.to_string(),
            reference: reference.to_string(),
        }
    }

    /// An [`Error::BlobUnknown`].
    pub fn blob_unknown(digest: &Digest) -> Self {
        Error::BlobUnknown {
            digest: digest.clone(),
        }
    }

    /// An [`Error::InvalidRule`].
    pub fn invalid_rule(rule: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidRule {
            rule: rule.into(),
            reason: reason.into(),
        }
    }

    /// This error as the fault of the upstream `registry` that produced it:
    /// content that fails verification, or a manifest that does not parse,
    /// is the upstream's doing (a 502), not the client's (a 400). Other
    /// errors are returned unchanged.
    pub fn blame_upstream(self, registry: impl fmt::Display) -> Self {
        match self {
            Error::DigestMismatch { .. }
            | Error::SizeMismatch { .. }
            | Error::ManifestInvalid { .. }
            | Error::Invalid { .. } => Error::upstream(registry, self.to_string(), false),
            e => e,
        }
    }

    /// How long the client should wait before retrying, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::TooManyRequests { retry_after } | Error::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The OCI error code for this error; its
    /// [`http_status`](ErrorCode::http_status) is what a server answers.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid { kind, .. } => match kind {
                InvalidKind::Digest => ErrorCode::DigestInvalid,
                InvalidKind::Tag => ErrorCode::TagInvalid,
                InvalidKind::Reference => ErrorCode::ManifestInvalid,
                InvalidKind::Range => ErrorCode::RangeInvalid,
                InvalidKind::Pagination => ErrorCode::PaginationNumberInvalid,
                InvalidKind::Name
                | InvalidKind::Registry
                | InvalidKind::ImageRef
                | InvalidKind::MetaKey => ErrorCode::NameInvalid,
            },
            Error::InvalidRule { .. } | Error::Misconfigured { .. } => ErrorCode::Internal,
            Error::NameUnknown { .. } => ErrorCode::NameUnknown,
            Error::ManifestUnknown { .. } => ErrorCode::ManifestUnknown,
            Error::Remembered { error, .. } => error.code(),
            Error::ManifestInvalid { .. } => ErrorCode::ManifestInvalid,
            Error::BlobUnknown { .. } => ErrorCode::BlobUnknown,
            Error::DigestMismatch { .. } => ErrorCode::DigestInvalid,
            Error::SizeMismatch { .. } => ErrorCode::SizeInvalid,
            Error::RangeNotSatisfiable { .. } => ErrorCode::RangeInvalid,
            Error::Unauthorized { .. } => ErrorCode::Unauthorized,
            Error::Denied { .. } => ErrorCode::Denied,
            Error::Unsupported { .. } | Error::UnknownEndpoint { .. } => ErrorCode::Unsupported,
            Error::TooManyRequests { .. } => ErrorCode::TooManyRequests,
            Error::Upstream {
                temporary, code, ..
            } => match code {
                Some(ErrorCode::TooManyRequests) => ErrorCode::TooManyRequests,
                _ if *temporary => ErrorCode::Unavailable,
                _ => ErrorCode::UpstreamError,
            },
            Error::Unavailable { .. } => ErrorCode::Unavailable,
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

    /// Where the answer came from, when an error answer says so (an
    /// `X-Cache` header): [`CacheStatus::Negative`](crate::CacheStatus::Negative)
    /// for a "not found" remembered from the upstream.
    pub fn cache_status(&self) -> Option<crate::CacheStatus> {
        match self {
            Error::Remembered { .. } => Some(crate::CacheStatus::Negative),
            _ => None,
        }
    }

    /// The HTTP status a server answers this error with: its code's
    /// status, except an unknown endpoint, which is a 404.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::UnknownEndpoint { .. } => 404,
            Error::Remembered { error, .. } => error.http_status(),
            _ => self.code().http_status(),
        }
    }

    /// Whether the same operation may succeed if retried later.
    ///
    /// True for rate limits, timeouts, an overloaded cache, and upstream or
    /// storage faults marked temporary; false for every error caused by the
    /// request itself or by content that does not verify.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::TooManyRequests { .. } | Error::Timeout { .. } | Error::Unavailable { .. } => {
                true
            }
            Error::Upstream { temporary, .. } | Error::Storage { temporary, .. } => *temporary,
            _ => false,
        }
    }

    /// Whether this is a "not found" of any kind (name, manifest or blob):
    /// exactly the errors a server answers with 404.
    pub fn is_not_found(&self) -> bool {
        self.http_status() == 404
    }

    /// Whether this error is the client's mistake or refusal: exactly the
    /// errors a server answers with a 4xx. Upstream faults are never
    /// client errors, whatever the upstream answered (a 429 from the
    /// upstream is passed on as a 429, and counts as a client error here
    /// because that is what the client sees).
    pub fn is_client_error(&self) -> bool {
        (400..500).contains(&self.http_status())
    }
}

/// A lower-layer error shared by every copy of an [`Error`].
pub type SharedError = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

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
        let up = Error::upstream("r", "503", true);
        assert_eq!(up.code().http_status(), 503);
        assert!(up.is_temporary());
        assert!(!up.is_client_error());
        let refused = Error::upstream("r", "refused our credentials", false);
        assert_eq!(refused.code().http_status(), 502);
        assert!(!refused.is_client_error());
        let full = Error::unavailable("queue full", Some(Duration::from_secs(2)));
        assert_eq!(full.code().http_status(), 503);
        assert!(full.is_temporary());
        assert_eq!(full.retry_after(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn predicates_agree_with_the_http_status() {
        let d = Digest::sha256_of(b"x");
        for e in [
            Error::invalid(InvalidKind::Name, "A", "upper case"),
            Error::blob_unknown(&d),
            Error::manifest_unknown("a", "b"),
            Error::denied("policy"),
            Error::upstream("r", "x", true),
            Error::upstream("r", "x", false),
            Error::timeout("x"),
            Error::storage_msg("commit", "disk"),
            Error::TooManyRequests { retry_after: None },
            Error::UnknownEndpoint { path: "/x".into() },
            Error::Unsupported {
                what: "push".into(),
            },
        ] {
            let s = e.http_status();
            assert_eq!(e.is_client_error(), (400..500).contains(&s), "{e}");
            assert_eq!(e.is_not_found(), s == 404, "{e}");
            let copy = e.clone();
            assert_eq!(copy.to_string(), e.to_string());
        }
    }

    #[test]
    fn content_that_fails_verification_is_blamed_on_the_upstream() {
        let d = Digest::sha256_of(b"x");
        let e = Error::DigestMismatch {
            expected: d.clone(),
            actual: Digest::sha256_of(b"y"),
        }
        .blame_upstream("up.example");
        assert_eq!(e.code().http_status(), 502);
        assert!(e.to_string().contains("up.example") && e.to_string().contains(d.as_str()));
        let e = Error::blob_unknown(&d).blame_upstream("up.example");
        assert_eq!(e.code().http_status(), 404);
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
            ErrorCode::PaginationNumberInvalid,
        ] {
            assert_eq!(ErrorCode::from_oci_str(c.as_str()), Some(c));
        }
    }
}
