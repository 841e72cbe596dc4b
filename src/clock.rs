//! The injected clock: policy (rate limits, lockouts) and delivery take the time from a
//! [`Clock`] instead of reading it themselves, so their tests move time on instead of
//! waiting for it.
//!
//! Two ways to move it, for two kinds of test:
//! - `tokio::time::pause` / `advance`: [`Clock::now`] follows tokio's clock, so a unit test
//!   on a paused runtime sees time jump;
//! - [`Clock::advance`]: adds a skew on top of both the monotonic and the wall clock, for a
//!   test that drives the real server over real sockets (where a paused runtime would fire
//!   every I/O timeout while argon2 or an fsync runs on another thread).
//!
//! In production the skew stays zero and [`Clock::now`] is `tokio::time::Instant::now()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;

/// A source of time shared by everything that needs it; cheap to clone.
#[derive(Debug, Clone)]
pub struct Clock {
    /// Nanoseconds added to both clocks by [`Clock::advance`].
    skew: Arc<AtomicU64>,
    /// Told each time [`Clock::advance`] moves the clock, so that a loop sleeping until a
    /// due time recomputes it ([`Clock::moved`]).
    moved: Arc<watch::Sender<()>>,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock {
            skew: Arc::default(),
            moved: Arc::new(watch::channel(()).0),
        }
    }
}

impl Clock {
    /// The real clock (and tokio's, when a test pauses it).
    pub fn new() -> Clock {
        Clock::default()
    }

    fn skew(&self) -> Duration {
        Duration::from_nanos(self.skew.load(Ordering::Relaxed))
    }

    /// Monotonic now: for intervals, limits and timers.
    pub fn now(&self) -> Instant {
        Instant::now() + self.skew()
    }

    /// Wall-clock now: for what is stored or shown (queue times, headers).
    pub fn wall(&self) -> SystemTime {
        SystemTime::now() + self.skew()
    }

    /// Seconds since the Unix epoch, by [`Clock::wall`].
    pub fn unix(&self) -> u64 {
        self.wall()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }

    /// Milliseconds since the Unix epoch, by [`Clock::wall`].
    pub fn unix_millis(&self) -> u64 {
        let since = self
            .wall()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// Moves this clock (and every clone of it) `by` into the future. For tests.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.skew.fetch_add(nanos, Ordering::Relaxed);
        self.moved.send_replace(());
    }

    /// A receiver that sees a change each time [`Clock::advance`] moves the clock: a timer
    /// computed from this clock (a tokio sleep, which does not see the skew) is recomputed
    /// when it changes. Never changes in production.
    pub fn moved(&self) -> watch::Receiver<()> {
        self.moved.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_pause_and_its_own_skew() {
        let clock = Clock::new();
        let clone = clock.clone();
        let t0 = clock.now();
        let w0 = clock.unix();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(clock.now() - t0, Duration::from_secs(10));
        clone.advance(Duration::from_secs(3600));
        assert_eq!(clock.now() - t0, Duration::from_secs(3610));
        // The wall clock takes the skew (tokio's pause does not reach SystemTime).
        assert!(clock.unix() >= w0 + 3600);
    }
}
