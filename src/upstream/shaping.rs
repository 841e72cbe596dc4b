//! Pacing to an upstream account's caps: at most `messages_per_minute` messages in any
//! minute and `recipients_per_day` recipients in any 24 hours, and a pause of the whole
//! upstream when it answers with a throttling reply.
//!
//! Providers count per account over rolling windows (Microsoft 365: 30 messages a minute
//! and 10,000 recipients a day per mailbox); mail sent past them comes back as `4xx` or, for
//! the daily quota, `554 5.2.0` for the rest of the day. So postern counts the same way and
//! holds mail back instead: a message over a cap waits in the queue, not as a failed attempt.
//!
//! Each cap is a [`Window`]: the sends of the last period, as (time, count) entries. A
//! message that cannot go now *books* the earliest future time at which it fits, and that
//! booking counts like a send: the next waiting message books after it, so a backlog is
//! spread over the following windows in arrival order instead of waking all at once when a
//! window frees up. Bookings only ever go after the latest entry, which keeps entries in
//! time order and makes "fits at `t`" hold for every later `t` as well.
//!
//! A throttling reply (`432 4.3.2`, `421 4.7.x`: the provider's "too many messages" or
//! "too many connections") pauses the upstream as a whole, for [`FIRST_PAUSE`], doubled on
//! each further one up to [`MAX_PAUSE`] and reset by a delivery, rather than leaving each
//! message to back off on its own schedule.
//!
//! Times are unix milliseconds from the injected clock; the state lives beside the
//! upstream's pool and survives a reload.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::policy::{OnRedisError, Scope};
use crate::smtp::reply_parser::UpstreamReply;

/// The first pause after a throttling reply.
pub const FIRST_PAUSE: Duration = Duration::from_secs(30);
/// The longest pause after repeated throttling replies.
pub const MAX_PAUSE: Duration = Duration::from_secs(15 * 60);

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 24 * 3_600_000;
/// Entries closer together than a window's period divided by this are merged (at the later
/// time, so an entry never leaves its window before its sends would), which bounds a window
/// to about this many entries whatever the traffic.
const GRAINS: u64 = 1024;

/// An upstream account's caps; `0` means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// Messages in any rolling minute.
    pub messages_per_minute: u32,
    /// Recipients in any rolling 24 hours.
    pub recipients_per_day: u32,
}

/// Which cap holds a message back (a metric label and the queue listing's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `messages_per_minute`.
    MessagesPerMinute,
    /// `recipients_per_day`.
    RecipientsPerDay,
    /// A throttling reply paused the upstream.
    Throttled,
    /// `shaping_scope: cluster` with `shaping_on_redis_error: deny`, and Redis cannot
    /// answer: the message waits until it can.
    RedisUnavailable,
}

impl Cap {
    /// Every cap, in declaration order (`cap as usize` indexes it).
    pub const ALL: [Cap; 4] = [
        Cap::MessagesPerMinute,
        Cap::RecipientsPerDay,
        Cap::Throttled,
        Cap::RedisUnavailable,
    ];

    /// The name used in metrics, logs and the queue listing.
    pub fn as_str(self) -> &'static str {
        match self {
            Cap::MessagesPerMinute => "messages_per_minute",
            Cap::RecipientsPerDay => "recipients_per_day",
            Cap::Throttled => "throttled",
            Cap::RedisUnavailable => "redis_unavailable",
        }
    }

    /// Whether a message held back by this cap has booked its time (a cap's wait is a
    /// booking; a pause or an unavailable Redis is not).
    pub fn books(self) -> bool {
        matches!(self, Cap::MessagesPerMinute | Cap::RecipientsPerDay)
    }
}

/// Whether a message may go to the upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes; it is counted against the caps.
    Go,
    /// Not before `until_ms` (unix milliseconds), because of `cap`. A capped message has
    /// booked that time; a throttled one has not (it may go elsewhere meanwhile).
    Wait {
        /// The earliest time it may go.
        until_ms: u64,
        /// What holds it back.
        cap: Cap,
    },
}

/// The sends of the last `period_ms`, oldest first.
#[derive(Debug)]
struct Window {
    limit: u64,
    period_ms: u64,
    grain_ms: u64,
    entries: VecDeque<(u64, u64)>,
    /// The sum of the entries' counts.
    total: u64,
}

impl Window {
    fn new(limit: u32, period_ms: u64) -> Window {
        Window {
            limit: u64::from(limit),
            period_ms,
            grain_ms: period_ms / GRAINS,
            entries: VecDeque::new(),
            total: 0,
        }
    }

    /// Forgets the entries that left the window ending at `now_ms`.
    fn prune(&mut self, now_ms: u64) {
        while let Some(&(t, n)) = self.entries.front()
            && t.saturating_add(self.period_ms) <= now_ms
        {
            self.total -= n;
            self.entries.pop_front();
        }
    }

    /// The earliest time, not before `from_ms` nor before the latest entry, at which `n`
    /// more fit in the window ending there. A count above the limit is taken as the limit
    /// (a message with more recipients than a day allows waits for an empty window, then
    /// goes: the upstream decides the rest).
    fn earliest(&self, from_ms: u64, n: u64) -> u64 {
        let n = n.min(self.limit);
        let mut t = self
            .entries
            .back()
            .map_or(from_ms, |&(last, _)| last.max(from_ms));
        let mut inside = self.total;
        for &(at, count) in &self.entries {
            if at.saturating_add(self.period_ms) <= t {
                inside -= count;
                continue;
            }
            if inside + n <= self.limit {
                break;
            }
            // This entry must leave the window first.
            inside -= count;
            t = at.saturating_add(self.period_ms);
        }
        t
    }

    /// Records `n` sends at `t_ms` (never before the latest entry).
    fn add(&mut self, t_ms: u64, n: u64) {
        self.total += n;
        match self.entries.back_mut() {
            Some((last, count)) if t_ms.saturating_sub(*last) < self.grain_ms => {
                *last = t_ms.max(*last);
                *count += n;
            }
            _ => self.entries.push_back((t_ms, n)),
        }
    }
}

#[derive(Debug)]
struct State {
    minute: Option<Window>,
    day: Option<Window>,
    /// No message goes before this (a throttling reply).
    paused_until_ms: u64,
    /// The next pause's length.
    next_pause: Duration,
    /// The caps in force.
    caps: Caps,
    /// Where the caps and the pause are kept (`shaping_scope`).
    sharing: Sharing,
}

/// Where an upstream's caps and pause are kept: `shaping_scope` and
/// `shaping_on_redis_error` (see `delivery/shape_cluster.rs` for `cluster`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sharing {
    /// `local` or `cluster`.
    pub scope: Scope,
    /// With `cluster`, while Redis cannot answer: shape locally, or hold the mail.
    pub on_redis_error: OnRedisError,
}

/// The caps and pause of one upstream.
#[derive(Debug)]
pub struct Shaper {
    state: Mutex<State>,
}

impl Shaper {
    /// A shaper enforcing `caps`.
    pub fn new(caps: Caps) -> Shaper {
        let window = |limit: u32, period| (limit > 0).then(|| Window::new(limit, period));
        Shaper {
            state: Mutex::new(State {
                minute: window(caps.messages_per_minute, MINUTE_MS),
                day: window(caps.recipients_per_day, DAY_MS),
                paused_until_ms: 0,
                next_pause: FIRST_PAUSE,
                caps,
                sharing: Sharing::default(),
            }),
        }
    }

    /// Applies new caps (a reload), keeping the counts of the caps that stay.
    pub fn set_caps(&self, caps: Caps) {
        let mut s = self.lock();
        keep_or_replace(&mut s.minute, caps.messages_per_minute, MINUTE_MS);
        keep_or_replace(&mut s.day, caps.recipients_per_day, DAY_MS);
        s.caps = caps;
    }

    /// The caps in force.
    pub fn caps(&self) -> Caps {
        self.lock().caps
    }

    /// Sets where the caps and the pause are kept (at build and on reload).
    pub fn set_sharing(&self, sharing: Sharing) {
        self.lock().sharing = sharing;
    }

    /// Where the caps and the pause are kept.
    pub fn sharing(&self) -> Sharing {
        self.lock().sharing
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain counters; a panic elsewhere leaves them usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a message of `recipients` may go now; when it may not because of a cap, the
    /// earliest time it fits is booked for it (see the module doc).
    pub fn admit(&self, now_ms: u64, recipients: usize) -> Admission {
        let mut s = self.lock();
        if s.paused_until_ms > now_ms {
            return Admission::Wait {
                until_ms: s.paused_until_ms,
                cap: Cap::Throttled,
            };
        }
        let rcpts = u64::try_from(recipients).unwrap_or(u64::MAX);
        let mut at = now_ms;
        let mut cap = None;
        if let Some(w) = s.minute.as_mut() {
            w.prune(now_ms);
            let t = w.earliest(now_ms, 1);
            if t > at {
                (at, cap) = (t, Some(Cap::MessagesPerMinute));
            }
        }
        if let Some(w) = s.day.as_mut() {
            w.prune(now_ms);
            let t = w.earliest(at, rcpts);
            if t > at {
                (at, cap) = (t, Some(Cap::RecipientsPerDay));
            }
        }
        // Both windows only get fuller towards their latest entry, so `at` fits both.
        if let Some(w) = s.minute.as_mut() {
            w.add(at, 1);
        }
        if let Some(w) = s.day.as_mut() {
            w.add(at, rcpts);
        }
        match cap {
            None => Admission::Go,
            Some(cap) => Admission::Wait { until_ms: at, cap },
        }
    }

    /// Until when the upstream is paused by a throttling reply, if it is at `now_ms`.
    pub fn paused_until(&self, now_ms: u64) -> Option<u64> {
        let until = self.lock().paused_until_ms;
        (until > now_ms).then_some(until)
    }

    /// A throttling reply: pauses the upstream and returns until when.
    pub fn throttled(&self, now_ms: u64) -> u64 {
        let mut s = self.lock();
        let pause = u64::try_from(s.next_pause.as_millis()).unwrap_or(u64::MAX);
        s.paused_until_ms = s.paused_until_ms.max(now_ms.saturating_add(pause));
        s.next_pause = (s.next_pause * 2).min(MAX_PAUSE);
        s.paused_until_ms
    }

    /// A delivery went through: the next throttling reply starts from the first pause again.
    pub fn delivered(&self) {
        self.lock().next_pause = FIRST_PAUSE;
    }
}

fn keep_or_replace(window: &mut Option<Window>, limit: u32, period_ms: u64) {
    match window {
        Some(w) if limit > 0 => w.limit = u64::from(limit),
        _ => *window = (limit > 0).then(|| Window::new(limit, period_ms)),
    }
}

/// Whether a reply is a provider's "slow down": `432 4.3.2` (RFC 3463: system not accepting
/// network messages; Microsoft 365's concurrency and rate limits) or `421 4.7.x`
/// (service not available for a policy reason: too many connections or messages).
pub fn is_throttling(reply: &UpstreamReply) -> bool {
    matches!(
        (reply.code, reply.enhanced),
        (432, Some((4, 3, 2))) | (421, Some((4, 7, _)))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(per_minute: u32, per_day: u32) -> Shaper {
        Shaper::new(Caps {
            messages_per_minute: per_minute,
            recipients_per_day: per_day,
        })
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn no_caps_always_admits() {
        let s = caps(0, 0);
        for i in 0..10_000 {
            assert_eq!(s.admit(T0 + i, 100), Admission::Go);
        }
    }

    /// 30 a minute: the first 30 go, the next 30 book the next minute in order, and never
    /// more than 30 fall in any minute.
    #[test]
    fn messages_per_minute_books_the_next_windows() {
        let s = caps(30, 0);
        let mut times = Vec::new();
        for i in 0..90 {
            // 100 ms apart: more than a grain, so no two sends merge.
            let now = T0 + i * 100;
            match s.admit(now, 1) {
                Admission::Go => times.push(now),
                Admission::Wait { until_ms, cap } => {
                    assert_eq!(cap, Cap::MessagesPerMinute);
                    assert!(until_ms > now);
                    times.push(until_ms);
                }
            }
        }
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "in arrival order");
        for (i, &t) in times.iter().enumerate() {
            let in_window = times[i..].iter().filter(|&&u| u < t + MINUTE_MS).count();
            assert!(in_window <= 30, "{in_window} in the minute from {t}");
        }
        assert_eq!(times[29], T0 + 2_900);
        assert_eq!(
            times[30],
            T0 + MINUTE_MS,
            "the 31st waits for the first to leave"
        );
        assert_eq!(times[60], T0 + 2 * MINUTE_MS);
    }

    #[test]
    fn window_frees_as_time_passes() {
        let s = caps(2, 0);
        assert_eq!(s.admit(T0, 1), Admission::Go);
        assert_eq!(s.admit(T0 + 1_000, 1), Admission::Go);
        assert_eq!(
            s.admit(T0 + 2_000, 1),
            Admission::Wait {
                until_ms: T0 + MINUTE_MS,
                cap: Cap::MessagesPerMinute
            }
        );
        // At T0+61s the first two have left; the booking at T0+60s has not.
        assert_eq!(s.admit(T0 + 61_000, 1), Admission::Go);
        assert_eq!(
            s.admit(T0 + 61_001, 1),
            Admission::Wait {
                until_ms: T0 + 2 * MINUTE_MS,
                cap: Cap::MessagesPerMinute
            }
        );
    }

    #[test]
    fn recipients_per_day_counts_recipients() {
        let s = caps(0, 100);
        assert_eq!(s.admit(T0, 60), Admission::Go);
        // Within a grain (84 s for a day) of the first: merged at the later time, which
        // errs on the safe side.
        assert_eq!(s.admit(T0 + 1, 40), Admission::Go);
        match s.admit(T0 + 2, 1) {
            Admission::Wait { until_ms, cap } => {
                assert_eq!(cap, Cap::RecipientsPerDay);
                assert_eq!(
                    until_ms,
                    T0 + 1 + DAY_MS,
                    "waits for the first 100 to leave"
                );
            }
            Admission::Go => panic!("over the daily cap"),
        }
        // More recipients than a whole day allows: waits for an empty window.
        let big = caps(0, 10);
        assert_eq!(big.admit(T0, 5), Admission::Go);
        assert!(matches!(
            big.admit(T0 + 1, 500),
            Admission::Wait { until_ms, .. } if until_ms == T0 + DAY_MS
        ));
    }

    #[test]
    fn both_caps_book_one_time_that_fits_both() {
        let s = caps(1, 3);
        assert_eq!(s.admit(T0, 2), Admission::Go);
        // Minute cap says T0+60s; the day cap then needs the 2 of T0 to leave.
        match s.admit(T0 + 5, 2) {
            Admission::Wait { until_ms, cap } => {
                assert_eq!((until_ms, cap), (T0 + DAY_MS, Cap::RecipientsPerDay));
            }
            Admission::Go => panic!("capped"),
        }
    }

    #[test]
    fn throttling_pauses_the_upstream_and_backs_off() {
        let s = caps(0, 0);
        let until = s.throttled(T0);
        assert_eq!(until, T0 + 30_000);
        assert_eq!(
            s.admit(T0 + 1, 1),
            Admission::Wait {
                until_ms: until,
                cap: Cap::Throttled
            }
        );
        assert_eq!(s.admit(until, 1), Admission::Go);
        assert_eq!(s.throttled(until), until + 60_000, "doubled");
        s.delivered();
        assert_eq!(s.throttled(until + 60_000), until + 90_000, "reset");
        let mut t = T0;
        for _ in 0..20 {
            let next = s.throttled(t);
            assert!(next - t <= MAX_PAUSE.as_millis() as u64);
            t = next;
        }
    }

    #[test]
    fn reload_keeps_counts() {
        let s = caps(2, 0);
        assert_eq!(s.admit(T0, 1), Admission::Go);
        assert_eq!(s.admit(T0, 1), Admission::Go);
        s.set_caps(Caps {
            messages_per_minute: 3,
            recipients_per_day: 0,
        });
        assert_eq!(s.admit(T0 + 1, 1), Admission::Go);
        assert!(matches!(s.admit(T0 + 2, 1), Admission::Wait { .. }));
        s.set_caps(Caps::default());
        assert_eq!(s.admit(T0 + 3, 1), Admission::Go);
    }

    /// Memory stays bounded whatever the traffic: entries merge within a grain.
    #[test]
    fn window_entries_are_bounded() {
        let s = caps(0, 1_000_000);
        for i in 0..200_000u64 {
            let _ = s.admit(T0 + i * 400, 1);
        }
        let len = s.lock().day.as_ref().map_or(0, |w| w.entries.len());
        assert!(len <= GRAINS as usize + 2, "{len} entries");
    }

    #[test]
    fn throttling_replies() {
        let reply = |code, enhanced| UpstreamReply {
            code,
            enhanced,
            lines: vec!["x".into()],
        };
        assert!(is_throttling(&reply(432, Some((4, 3, 2)))));
        assert!(is_throttling(&reply(421, Some((4, 7, 0)))));
        assert!(is_throttling(&reply(421, Some((4, 7, 66)))));
        assert!(!is_throttling(&reply(421, Some((4, 3, 2)))));
        assert!(!is_throttling(&reply(421, None)));
        assert!(!is_throttling(&reply(451, Some((4, 3, 0)))));
        assert!(!is_throttling(&reply(554, Some((5, 2, 0)))));
    }
}
