//! The durable queue: every message that got a 250 lives here until an upstream accepted it or
//! it failed for good. The spool knows envelopes and files, not sessions or config.
//!
//! # Layout on disk
//!
//! ```text
//! <dir>/tmp/           files being written (SpoolWriter) and state files being replaced;
//!                      everything here is garbage after a restart and is removed by Spool::open
//! <dir>/queue/ID       committed messages (format in record.rs)
//! <dir>/queue/ID.state latest delivery status of ID, if it changed since commit
//! <dir>/failed/        dead letters (ID + ID.state), kept for the admin, never read back
//! <dir>/lock           flock(2)ed while a Spool is open: one process per spool
//! ```
//!
//! # Durability
//!
//! A message is acknowledged only after `SpoolWriter::commit` returns, and that happens only once
//! its data is synced, the file renamed into `queue/` and `queue/` itself synced (commit.rs). All
//! concurrent commits share one committer thread, so they share the directory sync and, with
//! `SyncFs`, the data sync too (group commit). Syncing goes through the `Durability` trait, the
//! one seam where tests inject faults (STYLE.md habit 11).
//!
//! # Modules
//!
//! - `record`: data model (`Envelope`, `QueueId`) and versioned on-disk formats.
//! - `store`: the `Spool` facade: open/recover, begin/write/commit, update, remove, dead letters.
//! - `commit`: the group-commit thread and the `Durability` implementations.
//! - `schedule`: pure retry backoff.
//! - `notify`: the DSN parameters and which notifications were sent.

pub mod commit;
pub mod inspect;
pub mod notify;
pub mod record;
pub mod schedule;
pub mod store;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use commit::{CommitObserver, Durability, FdatasyncEach, SyncFs, SyncMode};
pub use notify::{MessageDsn, RcptDsn};
pub use record::{Ambiguous, Envelope, Held, QueueId, RcptStatus, Recipient, RecordError, Shaped};
pub use store::{Spool, SpoolWriter, StoredBody};

/// Everything that can go wrong in the spool. The SMTP side answers any of these to a DATA
/// commit with `451 4.3.0` (temporary: the client keeps the message and retries).
#[derive(Debug)]
#[non_exhaustive]
pub enum SpoolError {
    /// A filesystem operation failed.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file in the spool is not a valid record.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: RecordError,
    },
    /// Text that is not a queue id (at most 64 characters of it are kept).
    InvalidId {
        /// The rejected text.
        text: String,
    },
    /// `commit` was given an envelope whose id is not the writer's.
    IdMismatch {
        /// The writer's id.
        expected: QueueId,
        /// The envelope's id.
        found: QueueId,
    },
    /// Another process (or another open `Spool`) holds the spool directory's lock.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The committer thread is gone (it panicked or could not be started); nothing can be made
    /// durable any more.
    CommitterStopped,
}

impl SpoolError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> SpoolError {
        SpoolError::Io {
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Io { path, source } => write!(f, "spool: {}: {source}", path.display()),
            SpoolError::Corrupt { path, reason } => {
                write!(f, "spool: {}: corrupt record: {reason}", path.display())
            }
            SpoolError::InvalidId { text } => write!(f, "spool: invalid queue id {text:?}"),
            SpoolError::IdMismatch { expected, found } => {
                write!(
                    f,
                    "spool: envelope id {found} committed through writer {expected}"
                )
            }
            SpoolError::Locked { path } => {
                write!(f, "spool: {} is locked by another instance", path.display())
            }
            SpoolError::CommitterStopped => f.write_str("spool: committer thread stopped"),
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
