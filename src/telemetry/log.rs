//! The tracing subscriber: JSON (one object per line) or text, to stderr.
//!
//! Each session runs inside a span carrying `session` (its id), `listener` and `client`,
//! so every line logged for a session names it: the JSON formatter prints the current
//! span's fields on each event.

use tracing_subscriber::EnvFilter;

use crate::config::schema::{LogConfig, LogFormat};

/// Installs the global subscriber. A second call (tests start several servers in one
/// process) is ignored.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}
