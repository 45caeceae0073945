//! Logs: to stderr, filtered by `RUST_LOG`; text with ANSI colours only on
//! a terminal, or JSON, one object per line, for log pipelines (`[log]
//! format = "json"`, or `REGISTRY_PROXY_LOG_FORMAT=json`, which wins).
//!
//! The server writes through a non-blocking writer: a per-request access
//! log must not make requests wait on a slow log consumer (a pipe, a
//! container runtime), so lines go to a background thread through a
//! bounded queue, and are dropped, not waited for, when it is full.

use tracing_appender::non_blocking::WorkerGuard;

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
pub fn init(server: bool, format: LogFormat) -> Option<WorkerGuard> {
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
    let (writer, guard) = if server {
        let (w, g) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .finish(std::io::stderr());
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(w),
            Some(g),
        )
    } else {
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            None,
        )
    };
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
    guard
}
