//! What the queue tools show of a message (`postern queue list`, `GET /api/v1/queue`): one
//! [`MessageView`] per message, built from its envelope and where the runner has it. The same
//! shape serves the live listing (through the admin API) and the read-only listing of a
//! stopped relay's spool, so scripts read one format.

use serde::{Deserialize, Serialize};

use crate::spool::{Ambiguous, Envelope, Held, RcptStatus, Shaped};

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Not tried yet, waiting for its first attempt.
    Queued,
    /// Tried, waiting for the next attempt (backoff).
    Deferred,
    /// An attempt is in progress.
    Active,
    /// Waiting for an upstream's sending cap (upstream shaping); `reason` says which.
    Shaped,
    /// Held: never attempted until released (`reason` says by whom).
    Held,
    /// Its final dot got no reply: it waits `queue.ambiguous_retry` and is tried again at
    /// that upstream only (`maybe_delivered` says where and when).
    MaybeDelivered,
    /// A dead letter in `failed/`.
    Failed,
}

impl State {
    /// The name shown in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Deferred => "deferred",
            State::Active => "active",
            State::Shaped => "shaped",
            State::Held => "held",
            State::MaybeDelivered => "maybe_delivered",
            State::Failed => "failed",
        }
    }
}

/// A recipient that failed for good, with the reply to report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRecipient {
    /// The forward-path.
    pub address: String,
    /// The permanent reply, or the local reason.
    pub reply: String,
}

/// One message as the queue tools show it. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// The queue id.
    pub id: String,
    /// Where it stands.
    pub state: State,
    /// Why it waits, when there is more to say than the state (held by whom, which
    /// upstream cap it waits for, where it may have been delivered).
    pub reason: Option<String>,
    /// When it was accepted.
    pub received_unix: u64,
    /// Seconds since then.
    pub age_secs: u64,
    /// The envelope sender (`""`: the null reverse-path).
    pub sender: String,
    /// Prefix and body bytes.
    pub size: u64,
    /// Recipients still to deliver.
    pub pending: Vec<String>,
    /// Recipients failed for good.
    pub failed: Vec<FailedRecipient>,
    /// Recipients delivered.
    pub delivered: Vec<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When it is next tried; `null` while held or in an attempt, or for a dead letter.
    pub next_attempt_unix: Option<u64>,
    /// The latest attempt's deciding reply.
    pub last_reply: Option<String>,
    /// Where and when it (some of its recipients) may have been delivered: one entry per
    /// upstream transaction left without a reply to its final dot.
    pub maybe_delivered: Vec<Ambiguous>,
    /// Since when and why it is held.
    pub held: Option<Held>,
}

impl MessageView {
    /// The view of `env` at `now`, in the state its envelope alone tells (queued,
    /// deferred, held or maybe delivered); the runner overrides it for active and shaped
    /// messages.
    pub fn of(env: &Envelope, now: u64) -> MessageView {
        let mut pending = Vec::new();
        let mut failed = Vec::new();
        let mut delivered = Vec::new();
        for r in &env.recipients {
            match &r.status {
                RcptStatus::Pending => pending.push(r.address.clone()),
                RcptStatus::Delivered { .. } => delivered.push(r.address.clone()),
                RcptStatus::Failed { reply } => failed.push(FailedRecipient {
                    address: r.address.clone(),
                    reply: reply.clone(),
                }),
            }
        }
        // Held wins (nothing happens until release); then what the next attempt waits for.
        let maybe: Vec<String> = env.maybe_delivered.iter().map(maybe_text).collect();
        let (state, reason) = match (&env.held, &env.shaped) {
            (Some(h), _) => (State::Held, Some(h.reason.clone())),
            (None, Some(s)) => (State::Shaped, Some(shaped_text(s))),
            (None, None) if !maybe.is_empty() => (State::MaybeDelivered, Some(maybe.join("; "))),
            (None, None) if env.attempts == 0 => (State::Queued, None),
            (None, None) => (State::Deferred, None),
        };
        MessageView {
            id: env.id.to_string(),
            state,
            reason,
            received_unix: env.received_unix,
            age_secs: now.saturating_sub(env.received_unix),
            sender: env.sender.clone(),
            size: env.size,
            pending,
            failed,
            delivered,
            attempts: env.attempts,
            next_attempt_unix: env.held.is_none().then_some(env.next_attempt_unix),
            last_reply: env.last_reply.clone(),
            maybe_delivered: env.maybe_delivered.clone(),
            held: env.held.clone(),
        }
    }

    /// The view of a dead letter (from `failed/`).
    pub fn dead_letter(env: &Envelope, now: u64) -> MessageView {
        let mut view = MessageView::of(env, now);
        view.state = State::Failed;
        view.next_attempt_unix = None;
        view
    }
}

/// "waiting for upstream U's CAP until T".
pub fn shaped_text(s: &Shaped) -> String {
    format!(
        "waiting for upstream {}'s {} until {} (upstream shaping)",
        s.upstream,
        s.cap,
        s.until_ms.div_ceil(1000)
    )
}

/// "maybe delivered at upstream U at T (N bytes sent, ...)" [" for a@x, b@y"].
pub fn maybe_text(amb: &Ambiguous) -> String {
    let to = match amb.recipients.is_empty() {
        true => String::new(),
        false => format!(" for {}", amb.recipients.join(", ")),
    };
    format!(
        "maybe delivered at upstream {} at {}{to} ({} bytes sent, no reply to the final dot)",
        amb.upstream, amb.at_unix, amb.bytes
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::spool::{QueueId, Recipient};

    fn env() -> Envelope {
        let recipients = vec![
            Recipient {
                address: "p@example.org".into(),
                status: RcptStatus::Pending,
                dsn: Default::default(),
            },
            Recipient {
                address: "f@example.org".into(),
                status: RcptStatus::Failed {
                    reply: "550 5.1.1 no".into(),
                },
                dsn: Default::default(),
            },
        ];
        Envelope {
            next_attempt_unix: 160,
            size: 10,
            ..Envelope::new(
                "0000000000000001".parse::<QueueId>().unwrap(),
                100,
                "a@example.com".into(),
                recipients,
                "legacy".into(),
                "192.0.2.1".parse().unwrap(),
            )
        }
    }

    /// The state follows from the envelope: held wins over maybe delivered, which wins over
    /// queued (no attempt yet) and deferred.
    #[test]
    fn shaped_shows_the_upstream_and_cap() {
        let mut e = env();
        e.attempts = 1;
        e.shaped = Some(Box::new(Shaped {
            upstream: "m365".into(),
            until_ms: 170_500,
            cap: "messages_per_minute",
            booked: true,
        }));
        let v = MessageView::of(&e, 165);
        assert_eq!(v.state, State::Shaped);
        assert_eq!(
            v.reason.as_deref(),
            Some("waiting for upstream m365's messages_per_minute until 171 (upstream shaping)")
        );
    }

    #[test]
    fn state_from_the_envelope() {
        let amb = Ambiguous {
            upstream: "b".into(),
            at_unix: 150,
            bytes: 42,
            recipients: Vec::new(),
        };
        let held = Held {
            at_unix: 155,
            reason: "held by an administrator".into(),
        };
        let rows: [(u32, Vec<Ambiguous>, Option<Held>, State); 4] = [
            (0, vec![], None, State::Queued),
            (2, vec![], None, State::Deferred),
            (1, vec![amb.clone()], None, State::MaybeDelivered),
            (1, vec![amb], Some(held), State::Held),
        ];
        for (attempts, maybe, held, state) in rows {
            let mut e = env();
            e.attempts = attempts;
            e.maybe_delivered = maybe;
            e.held = held.clone();
            let v = MessageView::of(&e, 200);
            assert_eq!(v.state, state);
            assert_eq!(v.age_secs, 100);
            assert_eq!(v.pending, ["p@example.org"]);
            assert_eq!(v.failed[0].reply, "550 5.1.1 no");
            assert_eq!(v.next_attempt_unix, held.is_none().then_some(160));
        }
    }
}
