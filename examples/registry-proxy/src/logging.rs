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

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
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
