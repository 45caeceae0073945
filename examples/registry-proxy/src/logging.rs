//! Logs: to stderr, filtered by `RUST_LOG`; text with ANSI colours only on
//! a terminal, or JSON, one object per line, for log pipelines (`[log]
//! format = "json"`, or `REGISTRY_PROXY_LOG_FORMAT=json`, which wins).
//!
//! The server writes through a non-blocking, batching writer: a
//! per-request access log must not make requests wait on a slow log
//! consumer (a pipe, a container runtime), nor cost each request a wakeup
//! of another thread and a `write(2)`. Lines are appended to a bounded
//! buffer; a background thread writes what gathered in one `write`. An
//! idle writer is woken by the first line (so a lone line goes out at
//! once); after each write it pauses [`PAUSE`], so under load lines are
//! written in batches, at most one write per pause. Lines that do not fit
//! are dropped, not waited for, and their number is logged.
//!
//! The access line of each request ([`access`]) is the same event as any
//! other (target `registry_proxy::http`, level `info`, message `request`),
//! but where the server writes through that writer without colours it is
//! formatted here, as `tracing-subscriber` would format it, straight into
//! the batch: its generic formatter was about a twelfth of a warm
//! request's CPU. A test holds the two to the same lines.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// How long the writer pauses after a write, gathering lines: the longest
/// a line waits under load.
pub const PAUSE: Duration = Duration::from_millis(10);

/// Bytes of log lines held at most between two writes.
const BATCH_CAP: usize = 4 * 1024 * 1024;

/// Lines waiting to be written, shared by every thread that logs and the
/// thread that writes them.
#[derive(Debug, Default)]
struct Batch {
    state: Mutex<State>,
    wake: Condvar,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    buf: Vec<u8>,
    /// The writer is waiting for a line (so the next one wakes it).
    idle: bool,
    stop: bool,
}

impl Batch {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, line: &[u8]) {
        let mut st = self.lock();
        if st.buf.len() + line.len() > BATCH_CAP {
            drop(st);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        st.buf.extend_from_slice(line);
        if st.idle {
            st.idle = false;
            drop(st);
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_one();
    }

    /// Writes what gathered, until stopped and empty.
    fn run(&self, mut out: impl std::io::Write) {
        let mut batch = Vec::new();
        loop {
            let stop = {
                let mut st = self.lock();
                while st.buf.is_empty() && !st.stop {
                    st.idle = true;
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.idle = false;
                std::mem::swap(&mut st.buf, &mut batch);
                st.stop
            };
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                let _ = writeln!(
                    batch,
                    "registry-proxy: {dropped} log lines dropped: the log's reader is slower than the server"
                );
            }
            if !batch.is_empty() {
                // Nowhere to report a failed write of the log itself.
                let _ = out.write_all(&batch);
                let _ = out.flush();
                batch.clear();
            }
            if stop {
                if self.lock().buf.is_empty() {
                    return;
                }
            } else {
                std::thread::sleep(PAUSE);
            }
        }
    }
}

/// Where the server's log lines go: appended to the [`Batch`].
#[derive(Debug, Clone)]
struct BatchWriter(Arc<Batch>);

impl std::io::Write for &BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Keeps the server's log writer running; dropping it writes the lines
/// still waiting and stops the writer.
#[derive(Debug)]
pub struct LogGuard {
    batch: Arc<Batch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.batch.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How log lines are written (`"text"` or `"json"` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event: `timestamp`, `level`, `target`, the
    /// message as `message` and every field at the top level.
    Json,
}

impl LogFormat {
    /// `"text"` or `"json"`.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The environment variable that chooses the format over the configuration.
pub const FORMAT_ENV: &str = "REGISTRY_PROXY_LOG_FORMAT";

/// Starts logging in `format` (unless `REGISTRY_PROXY_LOG_FORMAT` says
/// otherwise); the server logs at `info` by default, the tools at `warn`.
/// Keep the guard until the process ends: dropping it flushes the lines
/// still queued.
pub fn init(server: bool, format: LogFormat) -> Option<LogGuard> {
    use std::io::IsTerminal as _;
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let format = match std::env::var(FORMAT_ENV) {
        Ok(v) => LogFormat::parse(&v).unwrap_or_else(|| {
            eprintln!(
                "registry-proxy: {FORMAT_ENV}={v:?}: use \"text\" or \"json\"; logging as text"
            );
            LogFormat::Text
        }),
        Err(_) => format,
    };
    let ansi = format == LogFormat::Text && std::io::stderr().is_terminal();
    if !server {
        install(std::io::stderr, filter, format, ansi);
        return None;
    }
    let batch = Arc::new(Batch::default());
    let runs = batch.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || runs.run(std::io::stderr()));
    match thread {
        Ok(t) => {
            install(BatchWriter(batch.clone()), filter, format, ansi);
            if !ansi {
                let _ = ACCESS.set((batch.clone(), format));
            }
            Some(LogGuard {
                batch,
                thread: Some(t),
            })
        }
        // No thread for it: write each line as it comes.
        Err(_) => {
            install(std::io::stderr, filter, format, ansi);
            None
        }
    }
}

/// Installs the global subscriber writing to `writer` (a concrete type,
/// so no event pays for boxing its writer).
fn install<W>(writer: W, filter: tracing_subscriber::EnvFilter, format: LogFormat, ansi: bool)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::util::SubscriberInitExt as _;
    subscriber(writer, filter, format, ansi).init();
}

/// The subscriber the server and the tools log through.
fn subscriber<W>(
    writer: W,
    filter: tracing_subscriber::EnvFilter,
    format: LogFormat,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// The target access lines are logged under (the `RUST_LOG` directive
/// that filters them).
pub const ACCESS_TARGET: &str = "registry_proxy::http";

/// Where [`access`] writes its lines itself: the server's batch and format,
/// set by [`init`] when the server logs without colours.
static ACCESS: OnceLock<(Arc<Batch>, LogFormat)> = OnceLock::new();

/// One request's access line.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    /// The request's method.
    pub method: &'a str,
    /// Its path (at most 200 characters of it).
    pub path: &'a str,
    /// The response's status.
    pub status: u16,
    /// The response's `X-Cache` (`HIT`, `MISS`, ...) or `-`.
    pub cache: &'a str,
    /// Who it was for, as the pull service decided, or `-`.
    pub principal: &'a str,
    /// Milliseconds until the response head.
    pub elapsed_ms: u64,
}

/// Logs `line` at `info` under [`ACCESS_TARGET`], as the event
/// `request method=.. path=.. status=.. cache=".." principal=".."
/// elapsed_ms=..`; `RUST_LOG` filters it like any other.
pub fn access(line: &AccessLine<'_>) {
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    match ACCESS.get() {
        // Control characters in the unquoted fields are escaped by
        // tracing's formatter: leave such a (hostile) line to it.
        Some((batch, format)) if !has_control(line) => {
            LINE.with_borrow_mut(|buf| {
                buf.clear();
                format_access(buf, SystemTime::now(), *format, line);
                batch.push(buf);
            });
        }
        _ => emit_access(line),
    }
}

/// The access line as a `tracing` event.
fn emit_access(line: &AccessLine<'_>) {
    tracing::info!(
        target: ACCESS_TARGET,
        method = %line.method,
        path = %line.path,
        status = line.status,
        cache = line.cache,
        principal = line.principal,
        elapsed_ms = line.elapsed_ms,
        "request"
    );
}

fn has_control(line: &AccessLine<'_>) -> bool {
    [line.method, line.path, line.cache]
        .iter()
        .any(|s| s.bytes().any(|b| b < 0x20 || b == 0x7f))
}

thread_local! {
    /// The line being formatted, reused.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The whole second last formatted, and its text.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// `line` as `tracing-subscriber`'s full text format or its flattened
/// JSON writes the event, logged at `now`.
fn format_access(buf: &mut Vec<u8>, now: SystemTime, format: LogFormat, line: &AccessLine<'_>) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let micros = since.subsec_micros();
    let json = format == LogFormat::Json;
    if json {
        buf.extend_from_slice(b"{\"timestamp\":\"");
    }
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = utc_seconds(secs);
        }
        buf.extend_from_slice(&text[..]);
    });
    let _ = write!(buf, ".{micros:06}Z");
    let AccessLine {
        method,
        path,
        status,
        cache,
        principal,
        elapsed_ms,
    } = *line;
    if json {
        buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
        let _ = serde_json::to_writer(&mut *buf, method);
        buf.extend_from_slice(b",\"path\":");
        let _ = serde_json::to_writer(&mut *buf, path);
        let _ = write!(buf, ",\"status\":{status},\"cache\":");
        let _ = serde_json::to_writer(&mut *buf, cache);
        buf.extend_from_slice(b",\"principal\":");
        let _ = serde_json::to_writer(&mut *buf, principal);
        let _ = writeln!(
            buf,
            ",\"elapsed_ms\":{elapsed_ms},\"target\":\"{ACCESS_TARGET}\"}}"
        );
    } else {
        let _ = writeln!(
            buf,
            "  INFO {ACCESS_TARGET}: request method={method} path={path} status={status} cache={cache:?} principal={principal:?} elapsed_ms={elapsed_ms}"
        );
    }
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC for `secs` since the Unix epoch (made
/// once a second).
fn utc_seconds(secs: u64) -> [u8; 19] {
    let text = cache_core::runtime::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
    let mut out = [b'0'; 19];
    if let Some(head) = text.as_bytes().get(..19) {
        out.copy_from_slice(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(b);
            s.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What tracing's own formatter writes for the access line, and
    /// what `format_access` writes, each without its timestamp.
    fn both_ways(format: LogFormat, line: &AccessLine<'_>) -> (String, String) {
        let sink = Sink::default();
        let out = sink.clone();
        let sub = subscriber(
            move || out.clone(),
            tracing_subscriber::EnvFilter::new("info"),
            format,
            false,
        );
        tracing::subscriber::with_default(sub, || emit_access(line));
        let theirs = String::from_utf8(sink.0.lock().unwrap().0.clone()).unwrap();
        let mut ours = Vec::new();
        format_access(&mut ours, SystemTime::now(), format, line);
        let ours = String::from_utf8(ours).unwrap();
        let untimed = |l: &str| {
            let (at, rest) = match format {
                LogFormat::Text => l.split_at(l.find(' ').expect("a space after the time")),
                LogFormat::Json => {
                    let start = "{\"timestamp\":\"".len();
                    let end = l.find("\",\"level\"").expect("a level after the time");
                    (&l[start..end], &l[end..])
                }
            };
            // 2026-12-03T17:02:03.123456Z
            let b = at.as_bytes();
            assert!(
                b.len() == 27 && b[10] == b'T' && b[19] == b'.' && b[26] == b'Z',
                "a timestamp: {at:?} in {l:?}"
            );
            rest.to_owned()
        };
        (untimed(&theirs), untimed(&ours))
    }

    fn line<'a>(principal: &'a str, path: &'a str) -> AccessLine<'a> {
        AccessLine {
            method: "GET",
            path,
            status: 200,
            cache: "HIT",
            principal,
            elapsed_ms: 3,
        }
    }

    #[test]
    fn the_access_line_is_what_tracing_would_write_in_text_and_json() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let l = line("-", "/v2/library/app/manifests/v1");
            let (theirs, ours) = both_ways(format, &l);
            assert_eq!(ours, theirs, "{format:?}");
        }
        let (theirs, _) = both_ways(LogFormat::Text, &line("ci", "/v2/"));
        assert!(
            theirs.contains(" request method=GET path=/v2/ status=200 cache=\"HIT\" principal=\"ci\" elapsed_ms=3"),
            "{theirs}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_access_line_is_what_tracing_would_write(
            principal in "\\PC{0,20}|[\\x00-\\x7f]{0,20}|.{0,20}",
            path in "/v2/[!-~]{0,40}|/[\\x21-\\x7e\\u{a0}-\\u{10ffff}]{0,20}",
            method in proptest::sample::select(vec!["GET", "HEAD", "POST", "PATCH", "M-SEARCH"]),
            cache in proptest::sample::select(vec!["HIT", "MISS", "-", "REVALIDATED", "x\"y\\z"]),
            status in proptest::prelude::any::<u16>(),
            elapsed_ms in proptest::prelude::any::<u64>(),
            json in proptest::prelude::any::<bool>(),
        ) {
            let format = if json { LogFormat::Json } else { LogFormat::Text };
            let l = AccessLine { method, path: &path, status, cache, principal: &principal, elapsed_ms };
            proptest::prop_assert!(!has_control(&l), "the generator makes lines the fast path writes");
            let (theirs, ours) = both_ways(format, &l);
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn lines_with_control_characters_are_left_to_tracing() {
        assert!(has_control(&line("-", "/v2/a\x1b[31m")));
        assert!(has_control(&AccessLine {
            cache: "\x7f",
            ..line("-", "/")
        }));
        assert!(
            !has_control(&line("\x1b[31m", "/v2/")),
            "the principal is quoted"
        );
    }

    #[test]
    fn seconds_become_utc_dates() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_709_164_800, "2024-02-29T00:00:00"),
            (1_709_251_199, "2024-02-29T23:59:59"),
            (4_107_542_400, "2100-03-01T00:00:00"),
            (1_796_317_323, "2026-12-03T17:02:03"),
            (253_402_300_799, "9999-12-31T23:59:59"),
        ] {
            assert_eq!(std::str::from_utf8(&utc_seconds(secs)).unwrap(), want);
        }
    }

    #[test]
    fn lines_are_written_in_batches_in_order_and_all_by_the_guard() {
        let batch = Arc::new(Batch::default());
        let sink = Sink::default();
        let (runs, out) = (batch.clone(), sink.clone());
        let guard = LogGuard {
            batch: batch.clone(),
            thread: Some(std::thread::spawn(move || runs.run(out))),
        };
        let mut w = &BatchWriter(batch.clone());
        for i in 0..1000 {
            writeln!(w, "line {i}").unwrap();
        }
        drop(guard);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            text, want,
            "every line, in order, written by the guard's drop"
        );
        assert!(writes < 10, "{writes} writes for 1000 lines");
    }

    #[test]
    fn a_lone_line_is_written_at_once_by_an_idle_writer() {
        let batch = Arc::new(Batch::default());
        let sink = Sink::default();
        let (runs, out) = (batch.clone(), sink.clone());
        let guard = LogGuard {
            batch: batch.clone(),
            thread: Some(std::thread::spawn(move || runs.run(out))),
        };
        let mut took: Vec<Duration> = Vec::new();
        for i in 0..5 {
            // Let the writer go idle, then log one line.
            std::thread::sleep(PAUSE * 3);
            let start = std::time::Instant::now();
            writeln!(&BatchWriter(batch.clone()), "line {i}").unwrap();
            while sink.0.lock().unwrap().1 <= i {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "line {i} not written"
                );
                std::thread::yield_now();
            }
            took.push(start.elapsed());
        }
        drop(guard);
        took.sort();
        // Woken by the line, not by a timer (the machine may be busy once).
        assert!(took[2] < PAUSE, "waits {took:?}");
    }

    #[test]
    fn lines_beyond_the_cap_are_dropped_and_counted_never_waited_for() {
        let batch = Batch::default();
        let line = vec![b'x'; 1024 * 1024];
        for _ in 0..6 {
            batch.push(&line);
        }
        assert_eq!(batch.lock().buf.len(), BATCH_CAP);
        assert_eq!(batch.dropped.load(Ordering::Relaxed), 2);
        batch.stop();
        let sink = Sink::default();
        batch.run(sink.clone());
        let (bytes, _) = sink.0.lock().unwrap().clone();
        assert!(String::from_utf8_lossy(&bytes[BATCH_CAP..]).contains("2 log lines dropped"));
    }
}
