//! Out of descriptors: when `accept` fails because the process (`EMFILE`) or the system
//! (`ENFILE`) has no descriptor left, the connection waiting in the backlog would stay
//! there, and accept would fail again at once, in a loop. Instead a spare descriptor, held
//! from the start for this, is given up for a moment: the waiting connection is accepted,
//! told `421 4.3.2` (RFC 5321 3.8: the service is not available, try later) and closed, and
//! the spare is taken again (the spare-descriptor technique of libev and nginx).

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tracing::warn;

use crate::smtp::reply::Reply;
use crate::telemetry::metrics::{ConnResult, ListenerMetrics};

/// Longest wait for the connection whose arrival made accept fail (it is in the backlog).
const ACCEPT_WAIT: Duration = Duration::from_millis(100);
/// At most one log line per this long; the others are counted into the next one.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The reserved descriptor and the log's rate limit, per listener.
#[derive(Debug)]
pub(super) struct Spare {
    file: Option<File>,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Spare {
    /// Takes the spare descriptor (`/dev/null`, read-only).
    pub(super) fn new() -> Spare {
        Spare {
            file: File::open("/dev/null").ok(),
            last_log: None,
            unlogged: 0,
        }
    }

    /// Whether `e` is accept failing for want of descriptors.
    pub(super) fn is_exhaustion(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
                || code == rustix::io::Errno::NFILE.raw_os_error()
        )
    }

    /// Refuses the connection waiting in `socket`'s backlog with `421 4.3.2` through the
    /// spare descriptor; false when there is no spare to give up (the caller backs off).
    pub(super) async fn refuse_one(
        &mut self,
        socket: &TcpListener,
        hostname: &str,
        listener: &str,
        metrics: &ListenerMetrics,
    ) -> bool {
        if self.file.take().is_none() {
            self.file = File::open("/dev/null").ok();
            return false;
        }
        let accepted = tokio::time::timeout(ACCEPT_WAIT, socket.accept()).await;
        if let Ok(Ok((tcp, peer))) = accepted {
            let mut reply = Vec::new();
            Reply::out_of_descriptors(hostname).write_to(&mut reply);
            // Best effort: a fresh socket's send buffer takes one line without waiting.
            let _ = tcp.try_write(&reply);
            drop(tcp);
            metrics.connection(&ConnResult::FdLimit);
            self.log(listener, peer);
        }
        self.file = File::open("/dev/null").ok();
        true
    }

    fn log(&mut self, listener: &str, peer: std::net::SocketAddr) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|at| now.duration_since(at) < LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        warn!(
            listener = %listener,
            client = %peer,
            also_refused = self.unlogged,
            "out of file descriptors: connection refused with 421 4.3.2"
        );
        self.last_log = Some(now);
        self.unlogged = 0;
    }
}
