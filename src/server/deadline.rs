//! When a session's next wait for input must end, and why: the slow-client rules.
//!
//! - A command line must arrive whole within `timeouts.command`, counted from the end of
//!   the previous line (or the greeting), not from the last byte: a client trickling one
//!   byte at a time cannot stretch it (RFC 5321 4.5.3.2.7 bounds the wait for a command).
//! - In DATA, each read may wait `timeouts.data` (RFC 5321 4.5.3.2.6), and the whole
//!   message must keep up `limits.min_data_rate`: after a head start of `timeouts.data`,
//!   each byte received earns `1/min_data_rate` s more (Postfix's `smtpd_min_data_rate`).
//! - The session as a whole ends at `timeouts.session`; a message being received then gets
//!   up to `timeouts.data` more to finish.
//!
//! Pure over `tokio::time::Instant`, so tests pause tokio's clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::reason::Reason;

/// The limits, from the rules snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SlowClientLimits {
    /// `timeouts.command`.
    pub command: Duration,
    /// `timeouts.data`.
    pub data: Duration,
    /// `timeouts.session`.
    pub session: Duration,
    /// `limits.min_data_rate`, bytes per second (0: off).
    pub min_data_rate: u64,
}

/// Where a DATA phase started.
#[derive(Debug, Clone, Copy)]
struct DataStart {
    at: Instant,
    bytes: u64,
}

/// The deadline state of one session.
#[derive(Debug, Clone)]
pub struct Deadlines {
    limits: SlowClientLimits,
    session_end: Instant,
    /// When the command now awaited started (the previous line ended).
    command_since: Instant,
    /// The engine's completed-line count when `command_since` was set.
    lines: u64,
    data: Option<DataStart>,
}

impl Deadlines {
    /// A session that starts (is greeted) at `now`.
    pub fn new(limits: SlowClientLimits, now: Instant) -> Deadlines {
        Deadlines {
            limits,
            session_end: now + limits.session,
            command_since: now,
            lines: 0,
            data: None,
        }
    }

    /// The deadline of the next wait for input and the reason it would be hit.
    /// `lines` is the engine's count of completed lines, `in_data` whether a message is
    /// being received, `bytes_read` every byte read from the client so far.
    pub fn next(
        &mut self,
        now: Instant,
        lines: u64,
        in_data: bool,
        bytes_read: u64,
    ) -> (Instant, Reason) {
        if lines != self.lines {
            // A line completed: the next command's time starts now, and a DATA phase after
            // it is a new message with its own head start (a message pipelined right
            // behind another must not inherit the previous one's start or credit).
            self.lines = lines;
            self.command_since = now;
            self.data = None;
        }
        let (mut at, mut why) = if in_data {
            let start = *self.data.get_or_insert(DataStart {
                at: now,
                bytes: bytes_read,
            });
            let gap = now + self.limits.data;
            match self.rate_deadline(start, bytes_read) {
                Some(rate) if rate < gap => (rate, Reason::DataRate),
                _ => (gap, Reason::Timeout),
            }
        } else {
            if self.data.take().is_some() {
                // The message just ended: the next command's time starts now.
                self.command_since = now;
            }
            (self.command_since + self.limits.command, Reason::Timeout)
        };
        // A message being received gets up to `timeouts.data` past the session cap to
        // finish; no longer, so a message that never ends cannot outlive the cap.
        let cap = if in_data {
            self.session_end + self.limits.data
        } else {
            self.session_end
        };
        if cap < at {
            (at, why) = (cap, Reason::SessionDuration);
        }
        (at, why)
    }

    /// DATA must not fall behind `min_data_rate` after its head start of `timeouts.data`.
    fn rate_deadline(&self, start: DataStart, bytes_read: u64) -> Option<Instant> {
        let rate = self.limits.min_data_rate;
        if rate == 0 {
            return None;
        }
        let received = bytes_read.saturating_sub(start.bytes);
        let earned = Duration::from_secs_f64(received as f64 / rate as f64);
        Some(start.at + self.limits.data + earned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SlowClientLimits = SlowClientLimits {
        command: Duration::from_secs(300),
        data: Duration::from_secs(180),
        session: Duration::from_secs(3600),
        min_data_rate: 500,
    };

    #[tokio::test(start_paused = true)]
    async fn command_deadline_counts_from_the_previous_line_not_the_last_byte() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(LIMITS, t0);
        // Bytes trickle in for four minutes without completing a line.
        for i in 1..=4 {
            tokio::time::advance(Duration::from_secs(60)).await;
            let (at, why) = d.next(Instant::now(), 0, false, i);
            assert_eq!((at, why), (t0 + LIMITS.command, Reason::Timeout));
        }
        // A line completes: the next one gets the full timeout from now.
        let (at, _) = d.next(Instant::now(), 1, false, 10);
        assert_eq!(at, Instant::now() + LIMITS.command);
    }

    #[tokio::test(start_paused = true)]
    async fn data_keeps_up_the_minimum_rate_after_its_head_start() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(LIMITS, t0);
        assert_eq!(
            d.next(t0, 3, true, 100),
            (t0 + LIMITS.data, Reason::Timeout)
        );
        // 170 s later, 5,000 bytes have come: 10 s earned past the head start.
        tokio::time::advance(Duration::from_secs(170)).await;
        let (at, why) = d.next(Instant::now(), 3, true, 5_100);
        assert_eq!(
            (at, why),
            (t0 + LIMITS.data + Duration::from_secs(10), Reason::DataRate)
        );
        // A message pipelined right behind (its MAIL, RCPT and DATA lines completed in the
        // same read) gets its own head start, not the slow one's deadline.
        let mut next = d.clone();
        let (at, why) = next.next(Instant::now(), 6, true, 5_100);
        assert_eq!((at, why), (Instant::now() + LIMITS.data, Reason::Timeout));
        // A fast client's deadline is the gap timeout.
        let (at, why) = d.next(Instant::now(), 3, true, 1_000_100);
        assert_eq!((at, why), (Instant::now() + LIMITS.data, Reason::Timeout));
        // After the message the command clock restarts.
        tokio::time::advance(Duration::from_secs(5)).await;
        let (at, why) = d.next(Instant::now(), 3, false, 1_000_105);
        assert_eq!(
            (at, why),
            (Instant::now() + LIMITS.command, Reason::Timeout)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_rate_rule_when_zero_and_the_session_cap_waits_for_the_message() {
        let t0 = Instant::now();
        let limits = SlowClientLimits {
            min_data_rate: 0,
            session: Duration::from_secs(100),
            ..LIMITS
        };
        let mut d = Deadlines::new(limits, t0);
        // DATA is not cut at the session cap but `timeouts.data` after it; no rate rule.
        assert_eq!(d.next(t0, 0, true, 0), (t0 + limits.data, Reason::Timeout));
        tokio::time::advance(Duration::from_secs(150)).await;
        let (at, why) = d.next(Instant::now(), 0, true, 10);
        assert_eq!(
            (at, why),
            (t0 + limits.session + limits.data, Reason::SessionDuration)
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            d.next(Instant::now(), 9, false, 0),
            (t0 + limits.session, Reason::SessionDuration)
        );
    }
}
