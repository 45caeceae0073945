//! Logs: to stderr, filtered by `RUST_LOG`, ANSI colours only on a terminal.

/// Starts logging; the server logs at `info` by default, the tools at `warn`.
pub fn init(server: bool) {
    use std::io::IsTerminal as _;
    let default = if server { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
}
