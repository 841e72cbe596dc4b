//! The runner's book of the messages it holds: waiting for their due time (queued,
//! deferred, or shaped: waiting for an upstream's cap, as `Envelope::shaped` records), in an
//! attempt, or held. Kept by the runner's task alone, so it needs no
//! lock; the admin commands ([`Command`]) reach it through the runner's channel and are
//! answered from here.
//!
//! The due times sit in a heap of `(due, id, generation)`; rescheduling a message bumps its
//! generation, so stale heap entries are skipped when they surface (lazy deletion) instead of
//! searched for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::delivery::view::{MessageView, State};
use crate::spool::{Envelope, QueueId};

/// An administrator's command to the runner (the admin API's queue endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Every message, oldest first.
    List,
    /// One message.
    Show(QueueId),
    /// Make one message (or, with `None`, every waiting one) due now; attempts are kept.
    Retry(Option<QueueId>),
    /// Hold a message: it is not attempted until released. Persisted in its state file.
    Hold(QueueId),
    /// Release a held message; it is due at once.
    Release(QueueId),
    /// Remove a message from the spool, undelivered.
    Delete(QueueId),
    /// Fail a message's pending recipients with an administrator's reason; it then leaves
    /// the queue as any failed message does (dead letter, bounce).
    Bounce(QueueId),
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The listing.
    List(Vec<MessageView>),
    /// One message, as it is after the command.
    One(Box<MessageView>),
    /// How many messages the command touched (`retry` of all).
    Count(usize),
}

/// Why a command could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlError {
    /// No message with this id in the queue.
    NotFound(String),
    /// The message is not in a state the command applies to (e.g. releasing one that is
    /// not held, or holding one during an attempt); says why.
    Conflict(String),
    /// The spool could not record the change; nothing changed.
    Spool(String),
    /// The runner has stopped (postern is shutting down).
    Stopped,
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::NotFound(id) => write!(f, "no message {id} in the queue"),
            ControlError::Conflict(why) | ControlError::Spool(why) => f.write_str(why),
            ControlError::Stopped => f.write_str("the delivery runner has stopped"),
        }
    }
}

impl std::error::Error for ControlError {}

/// Where a message is.
#[derive(Debug)]
pub(super) enum Place {
    /// Waiting until `due` (unix seconds): its retry time, or when its upstream's cap
    /// allows it (then `env.shaped` says which).
    Waiting { due: u64 },
    /// In an attempt; the envelope is the one the attempt started with.
    Active,
    /// Held; never attempted until released.
    Held,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) env: Envelope,
    pub(super) place: Place,
    generation: u64,
}

/// The messages the runner holds, by id, and their due times.
#[derive(Debug, Default)]
pub(super) struct Queue {
    entries: HashMap<String, Entry>,
    due: BinaryHeap<Reverse<(u64, String, u64)>>,
    generation: u64,
}

impl Queue {
    /// Takes in a message (new, recovered, or back from an attempt). Returns it when it is
    /// due now, marked active: the caller starts its attempt.
    pub(super) fn arrive(&mut self, env: Envelope, now: u64) -> Option<Envelope> {
        let id = env.id.to_string();
        if env.held.is_some() {
            self.put(id, env, Place::Held);
            None
        } else if env.next_attempt_unix > now {
            let due = env.next_attempt_unix;
            self.wait(id, env, due);
            None
        } else {
            self.put(id, env.clone(), Place::Active);
            Some(env)
        }
    }

    /// Puts a message back where its envelope says: held, or waiting for its next attempt.
    pub(super) fn put_back(&mut self, env: Envelope) {
        let id = env.id.to_string();
        if env.held.is_some() {
            self.put(id, env, Place::Held);
        } else {
            let due = env.next_attempt_unix;
            self.wait(id, env, due);
        }
    }

    /// Puts a message to wait until `due`.
    pub(super) fn wait(&mut self, id: String, env: Envelope, due: u64) {
        self.put(id.clone(), env, Place::Waiting { due });
        self.due.push(Reverse((due, id, self.generation)));
    }

    fn put(&mut self, id: String, env: Envelope, place: Place) {
        self.generation += 1;
        let entry = Entry {
            env,
            place,
            generation: self.generation,
        };
        self.entries.insert(id, entry);
    }

    /// The earliest due time of a waiting message.
    pub(super) fn next_due(&mut self) -> Option<u64> {
        while let Some(Reverse((due, id, generation))) = self.due.peek() {
            if self.is_current(id, *generation) {
                return Some(*due);
            }
            self.due.pop();
        }
        None
    }

    fn is_current(&self, id: &str, generation: u64) -> bool {
        self.entries
            .get(id)
            .is_some_and(|e| e.generation == generation && matches!(e.place, Place::Waiting { .. }))
    }

    /// The waiting messages due by `now`, marked active.
    pub(super) fn take_due(&mut self, now: u64) -> Vec<Envelope> {
        let mut out = Vec::new();
        while let Some(due) = self.next_due() {
            if due > now {
                break;
            }
            if let Some(Reverse((_, id, _))) = self.due.pop()
                && let Some(entry) = self.entries.get_mut(&id)
            {
                entry.place = Place::Active;
                out.push(entry.env.clone());
            }
        }
        out
    }

    /// Forgets a message that left the queue.
    pub(super) fn remove(&mut self, id: &str) -> Option<Entry> {
        self.entries.remove(id)
    }

    /// The message `id`, if the runner holds it.
    pub(super) fn get(&self, id: &QueueId) -> Result<&Entry, ControlError> {
        self.entries
            .get(id.as_str())
            .ok_or_else(|| ControlError::NotFound(id.to_string()))
    }

    /// Messages waiting (not held, not in an attempt).
    pub(super) fn waiting_ids(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e.place, Place::Waiting { .. }))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every message's view, oldest first.
    pub(super) fn list(&self, now: u64) -> Vec<MessageView> {
        let mut all: Vec<MessageView> = self.entries.values().map(|e| view(e, now)).collect();
        all.sort_by(|a, b| (a.received_unix, &a.id).cmp(&(b.received_unix, &b.id)));
        all
    }

    /// How many messages there are.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The view of one entry: the envelope's own state, refined by where the runner has it.
pub(super) fn view(entry: &Entry, now: u64) -> MessageView {
    let mut v = MessageView::of(&entry.env, now);
    match &entry.place {
        Place::Active => {
            v.state = State::Active;
            v.next_attempt_unix = None;
        }
        Place::Waiting { due } => v.next_attempt_unix = Some(*due),
        Place::Held => {}
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::spool::Held;

    fn env(n: u64, due: u64) -> Envelope {
        Envelope {
            attempts: 1,
            next_attempt_unix: due,
            size: 1,
            ..Envelope::new(
                format!("{n:016x}").parse::<QueueId>().unwrap(),
                n,
                String::new(),
                Vec::new(),
                "legacy".into(),
                "192.0.2.1".parse().unwrap(),
            )
        }
    }

    /// Due messages come out in due order, once each; a rescheduled one comes out at its
    /// new time only; a held one never.
    #[test]
    fn due_order_reschedule_and_hold() {
        let mut q = Queue::default();
        assert!(q.arrive(env(1, 30), 10).is_none());
        assert!(q.arrive(env(2, 20), 10).is_none());
        let mut held = env(3, 0);
        held.held = Some(Held {
            at_unix: 5,
            reason: "admin".into(),
        });
        assert!(q.arrive(held, 10).is_none());
        assert_eq!(q.arrive(env(4, 10), 10).unwrap().received_unix, 4);
        assert_eq!(q.next_due(), Some(20));
        // Message 1 is made due now (a retry): its old heap entry is stale.
        let e1 = q.remove(&format!("{:016x}", 1)).unwrap().env;
        q.wait(format!("{:016x}", 1), e1, 11);
        let due: Vec<u64> = q.take_due(25).iter().map(|e| e.received_unix).collect();
        assert_eq!(due, [1, 2]);
        assert!(q.take_due(1000).is_empty());
        assert_eq!(q.len(), 4);
        let states: Vec<State> = q.list(100).iter().map(|v| v.state).collect();
        assert_eq!(
            states,
            [State::Active, State::Active, State::Held, State::Active]
        );
    }
}
