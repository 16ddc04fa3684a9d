//! Logging. Level policy: `error` — a user-visible action failed; `warn` — something degraded
//! (a peer unreachable, a retry); `info` — rare, operator-relevant events (leader elected,
//! membership changed, snapshot taken); `debug`/`trace` — for developers.
//! `RUST_LOG` overrides the default `info`.
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .try_init();
}
