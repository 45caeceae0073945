//! Sending stored blobs straight from their files with `sendfile(2)`, for
//! any hyper HTTP/1 server.
//!
//! hyper writes a response body from the `Bytes` it is handed and cannot
//! send from a file descriptor, so a warm blob would cross user space twice
//! (read into a buffer, then written to the socket). Instead its body is
//! handed to hyper as *placeholder* chunks: slices of one static buffer that
//! is never read. Each HTTP/1 connection's socket is wrapped in
//! [`SendfileIo`], which recognises those slices by their address when
//! hyper writes them and sends the matching span of the blob's file in
//! their place, page cache to socket.
//!
//! The body queues one file span per chunk, in the order it yields them,
//! and hyper writes a connection's bytes in that order, so the n-th
//! placeholder byte written is the n-th queued file byte. Every placeholder
//! write is checked against the queue: its offset into the placeholder must
//! be where the front span has got to and it must not run past that span.
//! Anything else, and a file that ends early, fails the connection; no byte
//! that is not the blob's is ever sent in place of one.
//!
//! This relies on hyper queueing body chunks without copying them, which it
//! does for HTTP/1 when vectored writes are on. [`prepare`] is the one
//! place that sets that up for a connection: it turns `writev` on, wraps
//! the socket and makes the span queue; [`Spans::attach`] gives the queue to
//! HTTP/1 requests only (HTTP/2 copies data into frames, so its bodies are
//! streamed), and [`blob_body`] picks the file path when it can: a stored
//! blob's whole body ([`body`]), or the part of a miss a reader reads from
//! the staged file after falling behind its fetch ([`follow_body`]; the
//! rest of that body is ordinary bytes, queued in order). A tripwire
//! guards the scheme: ordinary bytes written while a file span waits (which
//! is what a copying writer would produce: the placeholder's zeros) fail
//! the connection instead of going out. [`bytes_sent`] counts what went out
//! from files, so a test can tell the path actually ran. A layer that
//! rewrites bodies (compression, say) must not be put in front of blob
//! responses served this way.
//!
//! [`serve_connections`](super::serve_connections) does all of this for
//! the connections it serves; a server of its own calls [`prepare`] per
//! accepted connection and [`Spans::attach`] per request:
//!
//! ```no_run
//! # async fn run(listener: tokio::net::TcpListener, app: axum::Router) -> std::io::Result<()> {
//! use cache_core::server::sendfile;
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::conn::auto::Builder;
//! use hyper_util::service::TowerToHyperService;
//!
//! let (tcp, _) = listener.accept().await?;
//! let mut builder = Builder::new(TokioExecutor::new());
//! let (io, spans) = sendfile::prepare(&mut builder, tcp);
//! let app = TowerToHyperService::new(app);
//! let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
//!     spans.attach(&mut req);
//!     hyper::service::Service::call(&app, req)
//! });
//! let _ = builder.serve_connection(TokioIo::new(io), svc).await;
//! # Ok(()) }
//! ```
//!
//! `sendfile` runs on the connection's runtime thread. A blob that is in
//! the page cache (the usual case for a hot cache) costs no wait; one that
//! is not holds that thread while the disk reads the next piece, as nginx
//! does without `aio threads`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll, ready};

use crate::{BlobBody, FileBody, FollowBody, Piece, StagedSpan};
use axum::body::Body;
use bytes::Bytes;
use futures::Stream;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The largest placeholder chunk, and so the most one `sendfile` call is asked for.
const CHUNK: usize = 4 << 20;

/// Bytes sent from files since the process started.
static SENT: AtomicU64 = AtomicU64::new(0);

/// Bytes sent from files with `sendfile(2)` since the process started, by
/// every connection [`prepare`]d for it: what a server exports as a metric
/// (`registry-proxy`'s `registry_proxy_sendfile_bytes_total`).
///
/// ```
/// let before = cache_core::server::sendfile::bytes_sent();
/// assert!(cache_core::server::sendfile::bytes_sent() >= before);
/// ```
pub fn bytes_sent() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// Sets a connection up for the file path: vectored HTTP/1 writes on the
/// builder that will serve it (so hyper queues body chunks rather than
/// copying them), the socket wrapped, and the connection's span queue,
/// which [`Spans::attach`] puts into each request read from it.
///
/// ```no_run
/// # async fn f(tcp: tokio::net::TcpStream) {
/// use hyper_util::rt::TokioExecutor;
/// use hyper_util::server::conn::auto::Builder;
///
/// let mut builder = Builder::new(TokioExecutor::new());
/// let (io, spans) = cache_core::server::sendfile::prepare(&mut builder, tcp);
/// # let _ = (io, spans);
/// # }
/// ```
pub fn prepare(builder: &mut Builder<TokioExecutor>, tcp: TcpStream) -> (SendfileIo, Spans) {
    builder.http1().writev(true);
    SendfileIo::new(tcp)
}

/// A blob answer's body: from the stored file when the body is a file and
/// the request's connection can send from files (its [`Spans`] are in
/// `extensions`), else streamed.
///
/// ```no_run
/// # async fn f(cache: cache_core::PullThroughCache, req: axum::extract::Request) -> cache_core::Result<axum::body::Body> {
/// use cache_core::{Digest, RepoName};
///
/// let name = RepoName::parse("library/alpine")?;
/// let digest = Digest::parse(&format!("sha256:{}", "0".repeat(64)))?;
/// let blob = cache.blob(&name, &digest, None).await?;
/// Ok(cache_core::server::sendfile::blob_body(blob.body, req.extensions()))
/// # }
/// ```
pub fn blob_body(body: BlobBody, extensions: &http::Extensions) -> Body {
    match (body, extensions.get::<Spans>()) {
        (BlobBody::File(f), Some(spans)) => Body::from_stream(self::body(f, spans.clone())),
        (BlobBody::Follow(f), Some(spans)) => Body::from_stream(follow_body(f, spans.clone())),
        (BlobBody::Bytes(b), _) => Body::new(InMemory(b)),
        (other, _) => Body::from_stream(other.into_stream()),
    }
}

/// Small content in memory as one frame; keeps the blob in use (gc spares
/// it) until hyper has sent it and dropped the body.
struct InMemory(crate::MemoryBody);

impl hyper::body::Body for InMemory {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let bytes = std::mem::take(&mut self.0.bytes);
        std::task::Poll::Ready((!bytes.is_empty()).then(|| Ok(hyper::body::Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.bytes.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0.bytes.len() as u64)
    }
}

/// Never read: only its address range matters. A read-only mapping of its
/// own, so no other slice can point into it, and its zero pages, never
/// touched, cost no memory (a `static` array would add 4 MiB of binary).
static PLACEHOLDER: LazyLock<&'static [u8]> = LazyLock::new(|| {
    // SAFETY: a fresh private anonymous read-only mapping of CHUNK zero
    // bytes, never unmapped or written, so valid for reads for 'static.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            CHUNK,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Box::leak(vec![0u8; CHUNK].into_boxed_slice());
    }
    // SAFETY: as above; the mapping is CHUNK bytes long.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), CHUNK) }
});

/// Where `b` starts inside the placeholder, if it is a placeholder slice.
fn placeholder_offset(b: &[u8]) -> Option<usize> {
    let base = PLACEHOLDER.as_ptr() as usize;
    let p = b.as_ptr() as usize;
    (!b.is_empty() && p >= base && p < base + CHUNK).then(|| p - base)
}

#[derive(Debug)]
struct Span {
    file: Arc<File>,
    offset: u64,
    len: usize,
    sent: usize,
}

/// One connection's queue of file spans waiting to be sent, shared by
/// [`SendfileIo`] and the bodies of the responses on that connection.
/// Handlers find it in the request's extensions (HTTP/1 only).
///
/// ```
/// let spans = cache_core::server::sendfile::Spans::default();
/// let mut req = hyper::Request::new(());
/// spans.attach(&mut req);
/// let attached = req.extensions().get::<cache_core::server::sendfile::Spans>().is_some();
/// assert_eq!(attached, cache_core::server::sendfile::AVAILABLE);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Spans(Arc<Mutex<VecDeque<Span>>>);

impl Spans {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Span>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the queue to a request read from its connection, if the
    /// request's body may be sent from files (HTTP/1, on Linux); else the
    /// request is left as it is and its blob bodies are streamed.
    ///
    /// ```
    /// use cache_core::server::sendfile::Spans;
    /// let mut h2 = hyper::Request::builder().version(hyper::Version::HTTP_2).body(()).unwrap();
    /// Spans::default().attach(&mut h2);
    /// assert!(h2.extensions().get::<Spans>().is_none(), "HTTP/2 copies into frames");
    /// ```
    pub fn attach<B>(&self, req: &mut hyper::Request<B>) {
        if AVAILABLE && req.version() < hyper::Version::HTTP_2 {
            req.extensions_mut().insert(self.clone());
        }
    }
}

/// A TCP connection that sends placeholder chunks from their files; every
/// other byte goes out as written. Made by [`prepare`] (or
/// [`SendfileIo::new`] when the builder is set up elsewhere).
///
/// ```no_run
/// # async fn f(tcp: tokio::net::TcpStream) -> std::io::Result<()> {
/// use tokio::io::AsyncWriteExt;
/// let (mut io, _spans) = cache_core::server::sendfile::SendfileIo::new(tcp);
/// io.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SendfileIo {
    tcp: TcpStream,
    spans: Spans,
    /// Whether `TCP_CORK` is on: while a file body is being sent, only full
    /// segments go out (the socket has `TCP_NODELAY` for everything else),
    /// as nginx does with `tcp_nopush`.
    corked: bool,
}

impl SendfileIo {
    /// Wraps an accepted connection; the [`Spans`] handle goes into the
    /// extensions of each HTTP/1 request read from it. The hyper builder
    /// serving it must have HTTP/1 vectored writes on ([`prepare`] does both).
    ///
    /// ```no_run
    /// # async fn f(tcp: tokio::net::TcpStream) {
    /// let (io, spans) = cache_core::server::sendfile::SendfileIo::new(tcp);
    /// # let _ = (io, spans);
    /// # }
    /// ```
    pub fn new(tcp: TcpStream) -> (Self, Spans) {
        let spans = Spans::default();
        (
            SendfileIo {
                tcp,
                spans: spans.clone(),
                corked: false,
            },
            spans,
        )
    }

    /// Sends `buf`, a placeholder slice starting `at` bytes into the
    /// placeholder, from the front span's file.
    fn poll_send_span(
        &mut self,
        cx: &mut Context<'_>,
        at: usize,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut q = self.spans.lock();
        let Some(span) = q.front_mut() else {
            return Poll::Ready(Err(io::Error::other(
                "placeholder bytes written with no file span queued",
            )));
        };
        if at != span.sent || buf.len() > span.len - span.sent {
            return Poll::Ready(Err(io::Error::other(format!(
                "placeholder write out of step: {} bytes at {at}, span has sent {} of {}",
                buf.len(),
                span.sent,
                span.len
            ))));
        }
        let (file, offset) = (span.file.clone(), span.offset + span.sent as u64);
        if !self.corked {
            // Best effort: without it the bytes still go out, in smaller segments.
            self.corked = set_cork(&self.tcp, true).is_ok();
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_io(Interest::WRITABLE, || {
                send_from_file(&self.tcp, &file, offset, buf.len())
            }) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stored blob file ended before its recorded size",
                    )));
                }
                Ok(n) => {
                    SENT.fetch_add(n as u64, Ordering::Relaxed);
                    span.sent += n;
                    if span.sent == span.len {
                        q.pop_front();
                    }
                    if q.is_empty() && self.corked {
                        // The body's last bytes: uncorking sends the partial
                        // segment now. Should that fail, the kernel still
                        // sends it within 200 ms; the bytes are out either way.
                        self.corked = false;
                        let _ = set_cork(&self.tcp, false);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Whether this platform sends from files; elsewhere the server leaves
/// [`Spans`] out of requests and every body is streamed.
///
/// ```
/// assert_eq!(cache_core::server::sendfile::AVAILABLE, cfg!(target_os = "linux"));
/// ```
pub const AVAILABLE: bool = cfg!(target_os = "linux");

/// One `sendfile(2)` call: up to `len` bytes of `file` from `offset` to
/// the socket. 0 means the file ends at `offset`.
#[cfg(target_os = "linux")]
fn send_from_file(tcp: &TcpStream, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    let mut off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::other("file offset out of range"))?;
    // SAFETY: both descriptors are open for the duration of the call (the
    // socket is borrowed, the file held by an Arc), and `off` is a valid
    // off_t the kernel updates.
    let n = unsafe { libc::sendfile(tcp.as_raw_fd(), file.as_raw_fd(), &mut off, len) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Turns `TCP_CORK` on or off.
#[cfg(target_os = "linux")]
fn set_cork(tcp: &TcpStream, on: bool) -> io::Result<()> {
    let v: libc::c_int = on.into();
    // SAFETY: the socket is open (borrowed) and `v` is a c_int of the size passed.
    let r = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_cork(_: &TcpStream, _: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn send_from_file(_: &TcpStream, _: &File, _: u64, _: usize) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "sendfile is used on Linux only",
    ))
}

impl AsyncRead for SendfileIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Ordinary bytes up to the first placeholder slice go out as they
        // are; a placeholder slice at the front goes out from its file.
        let first = bufs
            .iter()
            .enumerate()
            .find_map(|(k, b)| placeholder_offset(b).map(|at| (k, at)));
        match first {
            // A file span waits for its placeholder: ordinary bytes now can
            // only be a copy of it (zeros), never the file's. Refuse them.
            None if !self.spans.lock().is_empty() && bufs.iter().any(|b| !b.is_empty()) => {
                Poll::Ready(Err(io::Error::other(
                    "ordinary bytes written while a file span is queued (is writev off?)",
                )))
            }
            None => Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs),
            Some((k, at)) if bufs[..k].iter().all(|b| b.is_empty()) => {
                let b: &[u8] = &bufs[k];
                self.poll_send_span(cx, at, b)
            }
            Some((k, _)) => Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..k]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A response body that sends `file` through the connection's [`Spans`]:
/// placeholder chunks, each matched by a queued file span. Only for a
/// response on the connection those spans belong to (see [`blob_body`],
/// which picks this or a stream).
///
/// ```no_run
/// # fn f(file: cache_core::FileBody, spans: cache_core::server::sendfile::Spans) {
/// let body = axum::body::Body::from_stream(cache_core::server::sendfile::body(file, spans));
/// # let _ = body;
/// # }
/// ```
pub fn body(file: FileBody, spans: Spans) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let range = file.range();
    FileChunks {
        pos: range.start,
        end: range.end,
        file,
        spans,
    }
}

/// A miss's body following its fetch, through the connection's
/// [`Spans`]: bytes from the fetch's window go out as they are, and what a
/// reader that fell behind the window reads goes out from the staged file
/// (placeholder chunks, as in [`body`]). A failure ends the stream with
/// the error, as the body's would, so the response never completes.
///
/// ```no_run
/// # fn f(follow: cache_core::FollowBody, spans: cache_core::server::sendfile::Spans) {
/// let body = axum::body::Body::from_stream(cache_core::server::sendfile::follow_body(follow, spans));
/// # let _ = body;
/// # }
/// ```
pub fn follow_body(
    body: FollowBody,
    spans: Spans,
) -> impl Stream<Item = crate::Result<Bytes>> + Send {
    FollowChunks {
        pieces: body.into_pieces(),
        file: None,
        spans,
    }
}

struct FollowChunks {
    pieces: futures::stream::BoxStream<'static, crate::Result<Piece>>,
    /// The rest of a file span that did not fit one placeholder chunk.
    file: Option<StagedSpan>,
    spans: Spans,
}

impl Stream for FollowChunks {
    type Item = crate::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let me = self.get_mut();
        let mut f = match me.file.take() {
            Some(f) => f,
            None => match ready!(me.pieces.as_mut().poll_next(cx)) {
                Some(Ok(Piece::File(f))) if f.len > 0 => f,
                Some(Ok(Piece::File(_))) => return Poll::Ready(Some(Ok(Bytes::new()))),
                Some(Ok(Piece::Bytes(b))) => return Poll::Ready(Some(Ok(b))),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            },
        };
        // One queued span per placeholder chunk, queued as it is yielded.
        let n = f.len.min(CHUNK);
        me.spans.lock().push_back(Span {
            file: f.file.clone(),
            offset: f.offset,
            len: n,
            sent: 0,
        });
        if n < f.len {
            f.offset += n as u64;
            f.len -= n;
            me.file = Some(f);
        }
        Poll::Ready(Some(Ok(Bytes::from_static(&PLACEHOLDER[..n]))))
    }
}

struct FileChunks {
    file: FileBody,
    pos: u64,
    end: u64,
    spans: Spans,
}

impl Stream for FileChunks {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let me = self.get_mut();
        if me.pos >= me.end {
            return Poll::Ready(None);
        }
        let n = (me.end - me.pos).min(CHUNK as u64) as usize;
        me.spans.lock().push_back(Span {
            file: me.file.file().clone(),
            offset: me.pos,
            len: n,
            sent: 0,
        });
        me.pos += n as u64;
        me.file.sent(n as u64);
        Poll::Ready(Some(Ok(Bytes::from_static(&PLACEHOLDER[..n]))))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.end - self.pos).div_ceil(CHUNK as u64) as usize;
        (n, Some(n))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write as _;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;

    /// A wrapped server side and a task reading everything the peer gets.
    async fn pair() -> (SendfileIo, Spans, JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let (io, spans) = SendfileIo::new(s);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = peer.read_to_end(&mut got).await;
            got
        });
        (io, spans, reader)
    }

    fn file_with(bytes: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        Arc::new(f)
    }

    fn queue(spans: &Spans, file: &Arc<File>, offset: u64, len: usize) {
        spans.lock().push_back(Span {
            file: file.clone(),
            offset,
            len,
            sent: 0,
        });
    }

    #[tokio::test]
    async fn ordinary_bytes_and_file_spans_go_out_in_order() {
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let file = file_with(&content);
        let (mut io, spans, reader) = pair().await;
        let (len_a, len_b) = (2_500_000, 1000);
        queue(&spans, &file, 7, len_a);
        queue(&spans, &file, 0, len_b);
        // A head and a placeholder in one vectored write: the head goes alone first.
        let n = io
            .write_vectored(&[IoSlice::new(b"HEAD"), IoSlice::new(&PLACEHOLDER[..len_a])])
            .await
            .unwrap();
        assert_eq!(n, 4);
        // write_all resumes a partial write from where it stopped, as hyper does.
        io.write_all(&PLACEHOLDER[..len_a]).await.unwrap();
        // The next response's head travels with its first placeholder.
        let n = io
            .write_vectored(&[IoSlice::new(b"-"), IoSlice::new(&PLACEHOLDER[..len_b])])
            .await
            .unwrap();
        assert_eq!(n, 1);
        io.write_all(&PLACEHOLDER[..len_b]).await.unwrap();
        io.write_all(b"TAIL").await.unwrap();
        assert!(spans.lock().is_empty());
        assert!(!io.corked, "uncorked after the last span");
        io.shutdown().await.unwrap();
        drop(io);
        let got = reader.await.unwrap();
        let mut want = b"HEAD".to_vec();
        want.extend_from_slice(&content[7..7 + len_a]);
        want.push(b'-');
        want.extend_from_slice(&content[..len_b]);
        want.extend_from_slice(b"TAIL");
        assert!(
            got == want,
            "{} bytes received, not the expected ones",
            got.len()
        );
    }

    #[tokio::test]
    async fn placeholder_bytes_without_a_matching_span_fail_instead_of_going_out() {
        let file = file_with(&[7u8; 100]);
        let (mut io, spans, reader) = pair().await;
        let e = io.write(&PLACEHOLDER[..10]).await.unwrap_err();
        assert!(e.to_string().contains("no file span"), "{e}");
        queue(&spans, &file, 0, 10);
        let e = io.write(&PLACEHOLDER[5..10]).await.unwrap_err();
        assert!(e.to_string().contains("out of step"), "{e}");
        let e = io.write(&PLACEHOLDER[..20]).await.unwrap_err();
        assert!(e.to_string().contains("out of step"), "{e}");
        drop(io);
        assert!(reader.await.unwrap().is_empty(), "nothing was sent");
    }

    #[tokio::test]
    async fn ordinary_bytes_while_a_span_waits_fail_instead_of_going_out() {
        let file = file_with(&[7u8; 100]);
        let (mut io, spans, reader) = pair().await;
        queue(&spans, &file, 0, 100);
        // What a writer that copies the body would send: head and zeros in one buffer.
        let mut copied = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        copied.extend_from_slice(&[0u8; 100]);
        let e = io.write(&copied).await.unwrap_err();
        assert!(e.to_string().contains("span is queued"), "{e}");
        drop(io);
        assert!(reader.await.unwrap().is_empty(), "nothing was sent");
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_span_fails_the_write_after_its_real_bytes() {
        let file = file_with(b"0123456789");
        let (mut io, spans, reader) = pair().await;
        queue(&spans, &file, 4, 20);
        let e = io.write_all(&PLACEHOLDER[..20]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        drop(io);
        assert_eq!(
            reader.await.unwrap(),
            b"456789",
            "the real bytes, nothing padded"
        );
    }
}
