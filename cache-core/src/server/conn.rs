//! Serving connections with bounds a hostile client cannot stretch, for
//! any tower service (an axum `Router`, a [`PullService`](super::PullService)):
//!
//! * at most `max_connections` at once; more are closed as they arrive;
//! * a connection that sends no byte within `idle_timeout`, or starts no
//!   request for `idle_timeout` (HTTP/1 keep-alive and HTTP/2 alike, pings
//!   or not), is closed gracefully: a response in progress still finishes;
//! * HTTP/1 request headers must arrive within `idle_timeout`;
//! * a client that stops reading a response is cut off once a write has
//!   made no progress for `send_timeout`;
//! * on shutdown, connections are closed gracefully and given
//!   `shutdown_grace` to finish what they are sending;
//! * HTTP/1 and HTTP/2 (by protocol sniffing, or ALPN under TLS); plain
//!   HTTP/1 connections send stored blobs with `sendfile(2)`
//!   ([`sendfile`](super::sendfile)), TLS ones stream them.
//!
//! Connections are served as tasks on the runtime that serves them, or,
//! with [`serve_connections_on`], each on one of a set of
//! [`ConnThreads`]: threads with a single-threaded runtime each, as
//! nginx's workers, so that a connection's requests are read, answered and
//! written on one thread, without waking another.
//!
//! ```no_run
//! # async fn run(cache: cache_core::PullThroughCache) -> std::io::Result<()> {
//! use cache_core::server::{ConnLimits, PullService, serve_connections};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! let app = PullService::new(cache).into_router();
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! serve_connections(listener, app, ConnLimits::default(), None, shutdown).await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The bounds connections are served under. The default: 60 s idle and
/// send timeouts, 1024 connections, 30 s of shutdown grace.
///
/// ```
/// use std::time::Duration;
/// let limits = cache_core::server::ConnLimits {
///     max_connections: 64,
///     ..Default::default()
/// };
/// assert_eq!(limits.idle_timeout, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// No first byte, or no new request, for this long closes a connection.
    pub idle_timeout: Duration,
    /// A write that makes no progress for this long fails the connection.
    pub send_timeout: Duration,
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// Time given to responses in progress at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A connection's writes, failed once one makes no progress for `limit`
/// (the peer stopped reading); reads pass through. [`serve_connections`]
/// wraps every connection in one.
///
/// ```no_run
/// # async fn f(tcp: tokio::net::TcpStream) -> std::io::Result<()> {
/// use std::time::Duration;
/// use tokio::io::AsyncWriteExt;
/// let mut io = cache_core::server::conn::SendTimeout::new(tcp, Duration::from_secs(60));
/// io.write_all(b"a response").await?; // TimedOut if the peer reads nothing for 60 s
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SendTimeout<T> {
    inner: T,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> SendTimeout<T> {
    /// Wraps `inner`: a write (or flush) that stays pending for `limit`
    /// fails with [`io::ErrorKind::TimedOut`]; any progress restarts the clock.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use tokio::io::AsyncWriteExt;
    /// // A peer that never reads: a 64-byte pipe fills, then the write stalls.
    /// let (mut unread, _peer) = tokio::io::duplex(64);
    /// let mut io = cache_core::server::conn::SendTimeout::new(&mut unread, Duration::from_millis(50));
    /// let e = io.write_all(&[0u8; 1024]).await.unwrap_err();
    /// assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    /// # });
    /// ```
    pub fn new(inner: T, limit: Duration) -> Self {
        SendTimeout {
            inner,
            limit,
            stalled: None,
        }
    }

    /// `Pending` from a write: start (or keep) the clock, and fail once it ran out.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<R>(&mut self, r: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// When a connection last started or finished a request, and how many it
/// is handling. Touched twice per request: atomics, no lock.
#[derive(Debug)]
struct Activity {
    /// When the connection was accepted.
    start: Instant,
    /// Milliseconds after `start` of the last request's start or end.
    last_ms: AtomicU64,
    active: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Release);
    }

    fn idle_for(&self) -> Option<Duration> {
        (self.active.load(Ordering::Acquire) == 0).then(|| {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
            self.start.elapsed().saturating_sub(last)
        })
    }
}

/// Completes once the connection has started no request for `idle`.
async fn idle(activity: &Activity, idle: Duration) {
    loop {
        match activity.idle_for() {
            Some(d) if d >= idle => return,
            Some(d) => tokio::time::sleep(idle - d).await,
            None => tokio::time::sleep(idle).await,
        }
    }
}

/// Accepts connections from `listener` and serves `service` on them
/// under `limits` until `shutdown` completes; then closes them
/// gracefully, giving them `shutdown_grace`, and returns. With `tls`, each
/// connection is a TLS one (the handshake within `idle_timeout`; HTTP/2
/// by ALPN when the acceptor offers it); without, plain HTTP/1 sends
/// stored blobs with `sendfile(2)`.
///
/// A connection over `max_connections` is closed as it arrives; a failed
/// `accept` (out of file descriptors, say) is logged and retried after
/// 50 ms. Runs on tokio; each connection is a task of its own.
///
/// ```no_run
/// # async fn run(cache: cache_core::PullThroughCache) -> std::io::Result<()> {
/// use axum::routing::get;
/// use cache_core::server::{ConnLimits, PullService, serve_connections};
///
/// let app = axum::Router::new()
///     .route("/healthz", get(|| async { "ok" }))
///     .fallback_service(PullService::new(cache));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
/// serve_connections(listener, app, ConnLimits::default(), None, std::future::pending()).await;
/// # Ok(()) }
/// ```
pub async fn serve_connections<S>(
    listener: tokio::net::TcpListener,
    service: S,
    limits: ConnLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) where
    S: ConnService,
{
    serve(listener, service, limits, tls, shutdown, None).await
}

/// [`serve_connections`], with each connection served on one of `threads`
/// (the one with the fewest open connections when it arrives) from its
/// first byte to its last, instead of on the runtime this is awaited on.
/// Everything else is the same: the limits, TLS, the graceful shutdown.
/// The threads stop when this returns.
///
/// What a request spawns runs on its connection's thread too (a
/// `tokio::spawn`, a `spawn_blocking`, and the engine's fetches, which
/// it starts with [`Spawner::spawn_near`](crate::Spawner::spawn_near)):
/// async work takes turns with the other connections there, so work that
/// would hold the thread (a large computation) belongs on a blocking
/// thread or a runtime of its own.
///
/// ```no_run
/// # async fn run(cache: cache_core::PullThroughCache) -> std::io::Result<()> {
/// use cache_core::server::{ConnLimits, ConnThreads, PullService, serve_connections_on};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
/// let threads = ConnThreads::new(std::thread::available_parallelism()?.get())?;
/// let app = PullService::new(cache).into_router();
/// let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
/// serve_connections_on(threads, listener, app, ConnLimits::default(), None, shutdown).await;
/// # Ok(()) }
/// ```
pub async fn serve_connections_on<S>(
    threads: ConnThreads,
    listener: tokio::net::TcpListener,
    service: S,
    limits: ConnLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) where
    S: ConnService,
{
    serve(listener, service, limits, tls, shutdown, Some(&threads)).await
}

/// Threads that serve connections, each with a single-threaded tokio
/// runtime of its own (timers and I/O included; its blocking pool holds at
/// most 512 threads split between them, at least 8 each). For
/// [`serve_connections_on`]; dropping the set stops the threads, and the
/// connections still on them are closed.
///
/// On a small machine under many small requests this makes a warm
/// request cheaper: with a work-stealing runtime, readiness found by one
/// worker wakes another, a seventh of a small request's CPU here
/// (BENCHMARKS.md, "Warm small requests"). A fetch a request starts runs
/// on that request's thread too (the engine spawns it with
/// [`Spawner::spawn_near`](crate::Spawner::spawn_near), which
/// `TokioRuntime` does on the caller's runtime), so the readers there take
/// turns with it; had it run on another runtime, it would run ahead of
/// readers slowed by their sends, and push them out of its window onto
/// reading the staged file (BENCHMARKS.md, "Issue 21's targets").
#[derive(Debug)]
pub struct ConnThreads {
    threads: Vec<ConnThread>,
}

#[derive(Debug)]
struct ConnThread {
    handle: tokio::runtime::Handle,
    /// Connections on this thread now.
    open: Arc<AtomicUsize>,
    /// Dropped (with the set) to end the thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ConnThreads {
    /// `n` threads (at least one), named `conn-0`, `conn-1`, ...
    pub fn new(n: usize) -> io::Result<Self> {
        let n = n.max(1);
        let blocking = (512 / n).max(8);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            // The runtime is made and dropped on its thread: a runtime
            // must not be dropped where this may be called, in async code.
            let (started, start) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("conn-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .max_blocking_threads(blocking)
                        .thread_name(format!("conn-{i}-blocking"))
                        .build();
                    let rt = match rt {
                        Ok(rt) => rt,
                        Err(e) => return drop(started.send(Err(e))),
                    };
                    let _ = started.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                    // Files being read for a response may still be open
                    // on the blocking pool: not waited for long.
                    rt.shutdown_timeout(Duration::from_secs(1));
                })?;
            let handle = start
                .recv()
                .map_err(|_| io::Error::other("a connection thread ended as it started"))??;
            threads.push(ConnThread {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(ConnThreads { threads })
    }

    /// How many threads there are.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Always false: there is at least one thread.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// The thread with the fewest connections open.
    fn least_busy(&self) -> &ConnThread {
        let mut best = &self.threads[0];
        for t in &self.threads[1..] {
            if t.open.load(Ordering::Relaxed) < best.open.load(Ordering::Relaxed) {
                best = t;
            }
        }
        best
    }
}

async fn serve<S>(
    listener: tokio::net::TcpListener,
    service: S,
    limits: ConnLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    threads: Option<&ConnThreads>,
) where
    S: ConnService,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.idle_timeout)
        .max_concurrent_streams(256);
    let open = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
                    open.fetch_sub(1, Ordering::AcqRel);
                    tracing::debug!(max = limits.max_connections, "connection limit reached; closing a new connection");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let mut conn = Connection {
                    builder: builder.clone(),
                    app: service.clone(),
                    limits,
                    tls: tls.clone(),
                    stop: stop_rx.clone(),
                    open: open.clone(),
                    on_thread: None,
                    peer,
                };
                let Some(threads) = threads else {
                    tokio::spawn(conn.run(stream));
                    continue;
                };
                let thread = threads.least_busy();
                thread.open.fetch_add(1, Ordering::Relaxed);
                conn.on_thread = Some(thread.open.clone());
                // Off this runtime's reactor, onto the thread's.
                match stream.into_std() {
                    Ok(stream) => {
                        thread.handle.spawn(async move {
                            match tokio::net::TcpStream::from_std(stream) {
                                Ok(stream) => conn.run(stream).await,
                                Err(e) => tracing::debug!(error = %e, "cannot serve a connection on its thread"),
                            }
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot hand a connection to its thread"),
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(grace = ?limits.shutdown_grace, "shutting down; letting transfers in progress finish");
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + limits.shutdown_grace;
    while open.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if open.load(Ordering::Acquire) > 0 {
        tracing::warn!("shutdown grace period over; exiting");
    } else {
        tracing::info!("all connections closed");
    }
}

struct Connection<S> {
    builder: Builder<TokioExecutor>,
    app: S,
    limits: ConnLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// Connections open (counted down when this is dropped).
    open: Arc<AtomicUsize>,
    /// Connections open on the [`ConnThreads`] thread this is served on.
    on_thread: Option<Arc<AtomicUsize>>,
    peer: std::net::SocketAddr,
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        // The thread's count first: a connection admitted in this one's
        // place sees its thread as free again.
        if let Some(n) = &self.on_thread {
            n.fetch_sub(1, Ordering::Relaxed);
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`serve_connections`] serves: a cloneable tower service answering
/// hyper requests with responses whose bodies are [`ConnBody`], its future
/// sendable to another thread. Every such service has it (an axum
/// `Router`, a [`PullService`](super::PullService) and the services built
/// from them); there is nothing to implement.
pub trait ConnService:
    tower::Service<
        hyper::Request<Incoming>,
        Response = hyper::Response<Self::Body>,
        Future: Send + 'static,
        Error: Into<crate::BoxError>,
    > + Clone
    + Send
    + 'static
{
    /// The responses' body.
    type Body: ConnBody;
}

impl<S, B> ConnService for S
where
    S: tower::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<crate::BoxError>,
    B: ConnBody,
{
    type Body = B;
}

/// A response body [`serve_connections`] can send: hyper's `Body`, movable
/// to another thread with its data, its errors convertible to a
/// [`BoxError`](crate::BoxError). Every such body has it (axum's `Body`,
/// `http_body_util`'s); there is nothing to implement.
pub trait ConnBody:
    hyper::body::Body<Data: Send, Error: Into<crate::BoxError>> + Send + 'static
{
}

impl<B> ConnBody for B
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<crate::BoxError>,
{
}

/// In the extensions of a request [`serve_connections`] received over
/// TLS (beside axum's `ConnectInfo<SocketAddr>`, the client's address,
/// which every request it serves carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tls;

impl<S> Connection<S>
where
    S: ConnService,
{
    async fn run(mut self, stream: tokio::net::TcpStream) {
        let idle_limit = self.limits.idle_timeout;
        // hyper's header timer starts with the first byte, and the protocol
        // sniffing before it has none: a connection that never sends a byte
        // is closed here.
        let mut first = [0u8; 1];
        if matches!(
            tokio::time::timeout(idle_limit, stream.peek(&mut first)).await,
            Ok(Ok(1..))
        ) {
            self.serve(stream).await;
        }
    }

    async fn serve(&mut self, stream: tokio::net::TcpStream) {
        let Some(acceptor) = self.tls.clone() else {
            let (io, spans) = super::sendfile::prepare(&mut self.builder, stream);
            return self.serve_io(io, Some(spans)).await;
        };
        // The handshake within the idle limit too; TLS bodies are streamed
        // (sendfile cannot encrypt).
        match tokio::time::timeout(self.limits.idle_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => self.serve_io(tls, None).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    async fn serve_io<I>(&mut self, io: I, spans: Option<super::sendfile::Spans>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = SendTimeout::new(io, self.limits.send_timeout);
        let activity = Arc::new(Activity::new());
        let tower = TowerToHyperService::new(self.app.clone());
        let seen = activity.clone();
        // Only TLS connections come without sendfile spans.
        let (peer, tls) = (self.peer, spans.is_none());
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            if let Some(spans) = &spans {
                spans.attach(&mut req);
            }
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            if tls {
                req.extensions_mut().insert(Tls);
            }
            seen.active.fetch_add(1, Ordering::AcqRel);
            seen.touch();
            let done = RequestDone(seen.clone());
            let fut = hyper::service::Service::call(&tower, req);
            async move {
                let r = fut.await;
                drop(done);
                r
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned();
        let mut conn = std::pin::pin!(conn);
        let idle_limit = self.limits.idle_timeout;
        let mut closing = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = idle(&activity, idle_limit), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = self.stop.wait_for(|s| *s), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Marks a request as finished when dropped (answered or abandoned).
struct RequestDone(Arc<Activity>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}
