//! The admin commands, carried out by the runner's task on its [`Queue`]: list, show, retry,
//! hold, release, delete, bounce. A command that changes a message's durable state (hold,
//! release) writes its state file first and changes nothing when that fails; a message in an
//! attempt is left alone (the command answers a conflict and can be repeated a moment later).

use std::time::Duration;

use crate::telemetry::events;

use crate::delivery::queue::{Answer, Command, ControlError, Place, Queue, view};
use crate::delivery::{After, Runner, fail_pending};
use crate::spool::{Envelope, Held, QueueId};
use crate::telemetry::metrics::Completion;

/// The reason recorded for recipients failed by `postern queue bounce` (and reported in the
/// bounce).
pub const BOUNCED_BY_ADMIN: &str =
    "554 5.0.0 bounced by the postern administrator (postern queue bounce); not delivered";

/// The reason shown for a message held by `postern queue hold`.
pub const HELD_BY_ADMIN: &str = "held by an administrator (postern queue hold)";

impl Runner {
    /// Carries out `cmd` on `queue`.
    pub(super) async fn control(
        &self,
        queue: &mut Queue,
        cmd: Command,
    ) -> Result<Answer, ControlError> {
        let now = self.clock.unix();
        match cmd {
            Command::List => Ok(Answer::List(queue.list(now))),
            Command::Show(id) => Ok(Answer::One(Box::new(view(queue.get(&id)?, now)))),
            Command::Retry(None) => {
                let ids = queue.waiting_ids();
                let count = ids.len();
                for id in ids {
                    if let Some(entry) = queue.remove(&id) {
                        self.due_now(queue, entry.env, now);
                    }
                }
                events::admin("retry", "-", &format!("{count} waiting messages due now"));
                Ok(Answer::Count(count))
            }
            Command::Retry(Some(id)) => {
                let env = self.take(queue, &id, Want::Waiting)?;
                self.due_now(queue, env, now);
                events::admin("retry", id.as_str(), "due now");
                Ok(Answer::One(Box::new(view(queue.get(&id)?, now))))
            }
            Command::Hold(id) => self.hold(queue, &id, now),
            Command::Release(id) => self.release(queue, &id, now),
            Command::Delete(id) => self.delete(queue, &id, now),
            Command::Bounce(id) => self.bounce(queue, &id, now).await,
        }
    }

    /// Reschedules `env` for now; attempts are kept.
    fn due_now(&self, queue: &mut Queue, mut env: Envelope, now: u64) {
        env.next_attempt_unix = now;
        queue.wait(env.id.to_string(), env, now);
    }

    /// Takes the message out of `queue` when it is where `want` says; puts nothing back.
    fn take(&self, queue: &mut Queue, id: &QueueId, want: Want) -> Result<Envelope, ControlError> {
        let entry = queue.get(id)?;
        let ok = match (&entry.place, want) {
            (Place::Active, _) => {
                return Err(ControlError::Conflict(format!(
                    "message {id} is being delivered right now; try again in a moment"
                )));
            }
            (Place::Waiting { .. }, Want::Waiting | Want::Any) => true,
            (Place::Held, Want::Held | Want::Any) => true,
            (Place::Waiting { .. }, Want::Held) => false,
            (Place::Held, Want::Waiting) => false,
        };
        if !ok {
            let why = match want {
                Want::Held => format!("message {id} is not held"),
                _ => format!("message {id} is held: release it first"),
            };
            return Err(ControlError::Conflict(why));
        }
        queue
            .remove(id.as_str())
            .map(|e| e.env)
            .ok_or_else(|| ControlError::NotFound(id.to_string()))
    }

    fn hold(&self, queue: &mut Queue, id: &QueueId, now: u64) -> Result<Answer, ControlError> {
        if matches!(queue.get(id)?.place, Place::Held) {
            // Already held: holding again changes nothing.
            return Ok(Answer::One(Box::new(view(queue.get(id)?, now))));
        }
        let original = self.take(queue, id, Want::Waiting)?;
        let mut env = original.clone();
        env.held = Some(Held {
            at_unix: now,
            reason: HELD_BY_ADMIN.to_owned(),
        });
        if let Err(e) = self.spool.update(&env) {
            queue.put_back(original);
            return Err(ControlError::Spool(format!("cannot record the hold: {e}")));
        }
        events::admin("hold", id.as_str(), "held; not attempted until released");
        queue.put_back(env);
        Ok(Answer::One(Box::new(view(queue.get(id)?, now))))
    }

    fn release(&self, queue: &mut Queue, id: &QueueId, now: u64) -> Result<Answer, ControlError> {
        let original = self.take(queue, id, Want::Held)?;
        let mut env = original.clone();
        env.held = None;
        env.next_attempt_unix = now;
        if let Err(e) = self.spool.update(&env) {
            queue.put_back(original);
            return Err(ControlError::Spool(format!(
                "cannot record the release: {e}"
            )));
        }
        events::admin("release", id.as_str(), "released; due now");
        self.due_now(queue, env, now);
        Ok(Answer::One(Box::new(view(queue.get(id)?, now))))
    }

    fn delete(&self, queue: &mut Queue, id: &QueueId, now: u64) -> Result<Answer, ControlError> {
        let env = self.take(queue, id, Want::Any)?;
        let shown = crate::delivery::view::MessageView::of(&env, now);
        if let Err(e) = self.spool.remove(&env.id) {
            queue.put_back(env);
            return Err(ControlError::Spool(format!("cannot remove it: {e}")));
        }
        let detail = format!(
            "deleted from the queue undelivered ({} pending recipients)",
            shown.pending.len()
        );
        events::admin("delete", id.as_str(), &detail);
        let age = Duration::from_secs(now.saturating_sub(env.received_unix));
        self.completed(&env, Completion::Deleted, age);
        Ok(Answer::One(Box::new(shown)))
    }

    async fn bounce(
        &self,
        queue: &mut Queue,
        id: &QueueId,
        now: u64,
    ) -> Result<Answer, ControlError> {
        let mut env = self.take(queue, id, Want::Any)?;
        events::admin("bounce", id.as_str(), "pending recipients failed");
        fail_pending(&mut env, "-", BOUNCED_BY_ADMIN);
        env.held = None;
        let mut shown = crate::delivery::view::MessageView::of(&env, now);
        shown.state = crate::delivery::view::State::Failed;
        shown.next_attempt_unix = None;
        // The normal path for a message with failed recipients: bounce, dead letter, count.
        // Awaited, so the answer comes once the message is in `failed/` and its DSN queued
        // (the runner's loop waits for that one spool commit: admin commands are rare).
        self.finish(env, self.rules.load().timing, After::Backoff)
            .await;
        Ok(Answer::One(Box::new(shown)))
    }
}

/// Where a command needs the message to be.
#[derive(Debug, Clone, Copy)]
enum Want {
    Waiting,
    Held,
    Any,
}
