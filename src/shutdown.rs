//! One shutdown signal that every loop selects on, and a tracker that the drain waits on
//! (mini-redis `Shutdown` / `shutdown_complete`), built from tokio-util's token and tracker.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by every task: `stop` asks loops to finish; `tracker` counts the tasks that must
/// end before the process exits.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled when listeners must stop accepting and idle sessions must close.
    pub stop: CancellationToken,
    /// Cancelled after the grace period: sessions still open are told 421 and closed.
    pub force: CancellationToken,
    /// Session and delivery tasks.
    pub tracker: TaskTracker,
    /// Set while a queue drain runs (`postern queue drain`): listeners answer new
    /// connections `421 4.3.2` and `/readyz` fails, while delivery goes on. Unlike `stop`
    /// it can be undone (`DELETE /api/v1/drain`).
    pub draining: Arc<AtomicBool>,
}
