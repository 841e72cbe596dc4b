//! The tracing subscriber: JSON (one object per line) or text, to stderr.
//!
//! Each session runs inside a span carrying `session` (its id), `listener` and `client`,
//! and each delivery attempt inside one carrying `queue_id`, so every line logged for a
//! session or a delivery names it: the JSON formatter prints the current span's fields on
//! each event (docs/observability.md, "Logs").

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::schema::{LogConfig, LogFormat};

/// Installs the global subscriber, writing to stderr. A second call (tests start several
/// servers in one process) is ignored.
pub fn init(cfg: &LogConfig) {
    init_with(cfg, std::io::stderr);
}

/// [`init`] with another destination (the tests capture the lines they check).
pub fn init_with<W>(cfg: &LogConfig, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}
