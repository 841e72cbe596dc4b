//! Observability: the log subscriber, the fixed vocabulary of mail-log lines, and the
//! Prometheus metrics.

pub mod events;
pub mod log;
pub mod metrics;
