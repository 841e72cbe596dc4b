//! The circuit breaker of one SMTP upstream: after `failures` failed attempts in a row it
//! opens, and the upstream is skipped (its route's next upstream is tried at once) for
//! `cooldown`; then one attempt goes through as a probe (half-open): its success closes the
//! breaker, its failure opens it again for another cool-down.
//!
//! What counts as a failure is the delivery layer's call (connect, TLS, greeting, EHLO,
//! AUTH, a `421`, a timeout before the final dot: the upstream could not take mail at all);
//! an answer for the message, whatever it says for its recipients, is a success.
//!
//! Pure state over an injected time: the caller passes `now` (from [`crate::clock::Clock`]),
//! so the cool-down is tested by moving the clock, not by waiting. Transitions are returned
//! for the caller to log and count once each.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::schema::CircuitBreakerConfig;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Attempts go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Attempts are skipped until `until`.
    Open { until: Instant },
    /// One probe is in flight; others are skipped until it reports, or until
    /// `probe_until` (a probe that never reports, its task stopped at shutdown, must not
    /// hold the breaker half-open for ever).
    HalfOpen { probe_until: Instant },
}

/// A state the breaker entered: log it and count it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It opened: the upstream is skipped for the cool-down.
    Opened {
        /// Failures in a row that opened it (1 for a failed probe).
        failures: u32,
        /// How long it is skipped.
        cooldown: Duration,
    },
    /// The cool-down is over: this attempt is the probe.
    HalfOpen,
    /// A probe (or any attempt) succeeded: the upstream is used again.
    Closed,
}

/// What the breaker says about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Pass,
    /// Go ahead: this attempt is the probe after the cool-down (log [`Transition::HalfOpen`]).
    Probe,
    /// Skip this upstream: the breaker is open (or a probe is in flight).
    Skip,
}

/// How an attempt at the upstream went, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream answered for the message.
    Success,
    /// It could not take mail at all.
    Failure,
    /// Neither (e.g. no reply to the final dot): the count stays as it is.
    Neutral,
}

/// The state shown in `/readyz` and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Closed.
    Closed,
    /// Open, or half-open with its probe in flight: the upstream takes nothing now.
    Open,
    /// The cool-down is over; the next attempt will be the probe.
    Waiting,
}

/// One upstream's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    /// Failures in a row that open it; 0: never opens.
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker with the configured threshold and cool-down.
    pub fn new(cfg: &CircuitBreakerConfig) -> Breaker {
        Breaker {
            threshold: cfg.failures,
            cooldown: cfg.cooldown.get(),
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a Copy value written whole: a poisoned lock still holds a valid one.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether an attempt may go to the upstream at `now`.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admission::Pass,
            State::Open { until } | State::HalfOpen { probe_until: until } if now < until => {
                Admission::Skip
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen {
                    probe_until: now + self.cooldown,
                };
                Admission::Probe
            }
        }
    }

    /// Records how an attempt went; returns the transition it caused, if any.
    pub fn record(&self, verdict: Verdict, now: Instant) -> Option<Transition> {
        let mut state = self.lock();
        match (verdict, *state) {
            (Verdict::Neutral, State::HalfOpen { .. }) => {
                // The probe settled nothing: let the next attempt probe at once.
                *state = State::HalfOpen { probe_until: now };
                None
            }
            (Verdict::Neutral, _) => None,
            (Verdict::Success, State::Closed { .. }) => {
                *state = State::Closed { failures: 0 };
                None
            }
            (Verdict::Success, _) => {
                *state = State::Closed { failures: 0 };
                Some(Transition::Closed)
            }
            (Verdict::Failure, State::Closed { failures }) => {
                let failures = failures.saturating_add(1);
                if self.threshold == 0 || failures < self.threshold {
                    *state = State::Closed { failures };
                    return None;
                }
                *state = State::Open {
                    until: now + self.cooldown,
                };
                Some(Transition::Opened {
                    failures,
                    cooldown: self.cooldown,
                })
            }
            // A failed probe, or a failure that raced the opening: open (again).
            (Verdict::Failure, State::HalfOpen { .. } | State::Open { .. }) => {
                let reopened = matches!(*state, State::HalfOpen { .. });
                *state = State::Open {
                    until: now + self.cooldown,
                };
                reopened.then_some(Transition::Opened {
                    failures: 1,
                    cooldown: self.cooldown,
                })
            }
        }
    }

    /// The state at `now`, for `/readyz` and the gauge.
    pub fn shown(&self, now: Instant) -> Shown {
        match *self.lock() {
            State::Closed { .. } => Shown::Closed,
            State::Open { until } | State::HalfOpen { probe_until: until } if now < until => {
                Shown::Open
            }
            State::Open { .. } | State::HalfOpen { .. } => Shown::Waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Duration as Span;

    fn breaker(failures: u32) -> Breaker {
        Breaker::new(&CircuitBreakerConfig {
            failures,
            cooldown: Span::secs(60),
        })
    }

    const MIN: Duration = Duration::from_secs(60);

    /// Closed → open after N failures in a row (a success in between resets the count) →
    /// skipped for the cool-down → one probe (the rest skipped) → closed on success.
    #[test]
    fn opens_after_n_in_a_row_and_closes_after_a_good_probe() {
        let b = breaker(3);
        let t0 = Instant::now();
        assert_eq!(b.record(Verdict::Failure, t0), None);
        assert_eq!(b.record(Verdict::Failure, t0), None);
        assert_eq!(b.record(Verdict::Success, t0), None);
        assert_eq!(b.record(Verdict::Failure, t0), None);
        assert_eq!(b.record(Verdict::Neutral, t0), None);
        assert_eq!(b.record(Verdict::Failure, t0), None);
        assert_eq!(b.admit(t0), Admission::Pass);
        assert_eq!(
            b.record(Verdict::Failure, t0),
            Some(Transition::Opened {
                failures: 3,
                cooldown: MIN
            })
        );
        assert_eq!(b.shown(t0), Shown::Open);
        // Attempts that were already in flight fail too: no second opening.
        assert_eq!(b.record(Verdict::Failure, t0), None);
        let t1 = t0 + MIN - Duration::from_millis(1);
        assert_eq!(b.admit(t1), Admission::Skip);
        let t2 = t0 + MIN;
        assert_eq!(b.shown(t2), Shown::Waiting);
        assert_eq!(b.admit(t2), Admission::Probe);
        assert_eq!(b.shown(t2), Shown::Open);
        assert_eq!(b.admit(t2), Admission::Skip, "one probe at a time");
        assert_eq!(b.record(Verdict::Success, t2), Some(Transition::Closed));
        assert_eq!(b.shown(t2), Shown::Closed);
        assert_eq!(b.admit(t2), Admission::Pass);
    }

    /// A failed probe opens it for another full cool-down; a probe that never reports
    /// lets another through after a cool-down; a neutral probe lets the next one through.
    #[test]
    fn failed_lost_and_neutral_probes() {
        let b = breaker(1);
        let t0 = Instant::now();
        assert!(matches!(
            b.record(Verdict::Failure, t0),
            Some(Transition::Opened { failures: 1, .. })
        ));
        let t1 = t0 + MIN;
        assert_eq!(b.admit(t1), Admission::Probe);
        assert!(matches!(
            b.record(Verdict::Failure, t1),
            Some(Transition::Opened { failures: 1, .. })
        ));
        assert_eq!(b.admit(t1 + MIN / 2), Admission::Skip);
        let t2 = t1 + MIN;
        assert_eq!(b.admit(t2), Admission::Probe);
        // That probe never reports: the next gets through a cool-down later.
        assert_eq!(b.admit(t2 + MIN / 2), Admission::Skip);
        assert_eq!(b.admit(t2 + MIN), Admission::Probe);
        assert_eq!(b.record(Verdict::Neutral, t2 + MIN), None);
        assert_eq!(b.admit(t2 + MIN), Admission::Probe);
    }

    /// `failures: 0` turns the breaker off.
    #[test]
    fn zero_never_opens() {
        let b = breaker(0);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(b.record(Verdict::Failure, t0), None);
        }
        assert_eq!(b.admit(t0), Admission::Pass);
        assert_eq!(b.shown(t0), Shown::Closed);
    }
}
