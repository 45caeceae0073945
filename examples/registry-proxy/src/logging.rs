//! Logs: to stderr, filtered by `RUST_LOG`, ANSI colours only on a terminal.
//!
//! The server writes through a non-blocking writer: a per-request access
//! log must not make requests wait on a slow log consumer (a pipe, a
//! container runtime), so lines go to a background thread through a
//! bounded queue, and are dropped, not waited for, when it is full.

use tracing_appender::non_blocking::WorkerGuard;

/// Starts logging; the server logs at `info` by default, the tools at `warn`.
/// Keep the guard until the process ends: dropping it flushes the lines
/// still queued.
pub fn init(server: bool) -> Option<WorkerGuard> {
    use std::io::IsTerminal as _;
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal();
    if server {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .finish(std::io::stderr());
        tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_writer(writer)
            .with_env_filter(filter)
            .init();
        Some(guard)
    } else {
        tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
        None
    }
}
