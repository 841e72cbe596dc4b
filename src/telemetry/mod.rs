//! Logs: the subscriber set-up and the fixed vocabulary of mail-log lines.

pub mod events;
pub mod log;
