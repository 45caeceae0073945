//! Sending stored blobs straight from their files with `sendfile(2)`: the
//! library's, from [`cache_core::server::sendfile`], re-exported
//! ([`bytes_sent`] feeds `registry_proxy_sendfile_bytes_total`).

pub use cache_core::server::sendfile::{
    AVAILABLE, SendfileIo, Spans, blob_body, body, bytes_sent, prepare,
};
