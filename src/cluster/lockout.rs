//! The AUTH lockout in one Lua script, for `auth_lockout.scope: cluster`: failures counted
//! and locks held in Redis, so that a lockout earned on one instance refuses AUTH on all.
//!
//! Each *subject* (the client address, and the username with `per_username`) has two keys:
//! `<prefix>lockout:<kind>:<id>:fails`, a counter that expires `window` after its first
//! failure (the local table's counting window), and `<prefix>lockout:<kind>:<id>`, present
//! while the subject is locked and expiring with the lockout (`duration`). The failure that
//! reaches `attempts` sets the lock and drops the count. Both keys expire on their own.
//!
//! - `check`: the first subject whose lock is in force, and its time left (`PTTL`).
//! - `fail`: counts one failure for every subject not locked already; returns the first
//!   lockout it started.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Redis, Unavailable};

/// KEYS: lock key then count key per subject. ARGV: mode (`check` / `fail`), attempts,
/// window (ms), duration (ms). Returns `{subject, ms}` (1-based; `{0, 0}` for none).
const LOCKOUT_LUA: &str = r"
local check = ARGV[1] == 'check'
local attempts = tonumber(ARGV[2])
local started, started_ms = 0, 0
for i = 1, #KEYS, 2 do
  local subject = (i + 1) / 2
  local left = redis.call('PTTL', KEYS[i])
  if check then
    if left > 0 then return {subject, left} end
  elseif left <= 0 then
    local n = redis.call('INCR', KEYS[i + 1])
    if n == 1 then redis.call('PEXPIRE', KEYS[i + 1], ARGV[3]) end
    if n >= attempts then
      redis.call('SET', KEYS[i], '1', 'PX', ARGV[4])
      redis.call('DEL', KEYS[i + 1])
      if started == 0 then started, started_ms = subject, tonumber(ARGV[4]) end
    end
  end
end
return {started, started_ms}
";

static LOCKOUT: LazyLock<Script> = LazyLock::new(|| Script::new(LOCKOUT_LUA));

/// The script, for the prober to load when Redis comes up.
pub(super) fn script() -> &'static Script {
    &LOCKOUT
}

/// The lockout settings the script applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutRule {
    /// Failures that lock.
    pub attempts: u32,
    /// The counting window, from the first failure.
    pub window: Duration,
    /// How long a lock lasts.
    pub duration: Duration,
}

/// A lock found or started: which subject (index into the subjects given) and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    /// Index into the subjects.
    pub subject: usize,
    /// Time left (check) or the lock's length (a failure that started it).
    pub remaining: Duration,
}

impl Redis {
    /// The key of a lockout subject: `<prefix>lockout:<kind>:<id>` (`kind` is `ip` or
    /// `user`).
    pub fn lockout_key(&self, kind: &str, id: &str) -> String {
        self.key(&["lockout", kind, id])
    }

    /// The first of `subjects` (keys from [`Redis::lockout_key`]) locked now, if any.
    pub async fn lockout_check(&self, subjects: &[String]) -> Result<Option<Lock>, Unavailable> {
        self.lockout("check", subjects, None).await
    }

    /// Counts one failure for each of `subjects`; returns the first lockout it started.
    pub async fn lockout_fail(
        &self,
        subjects: &[String],
        rule: LockoutRule,
    ) -> Result<Option<Lock>, Unavailable> {
        self.lockout("fail", subjects, Some(rule)).await
    }

    async fn lockout(
        &self,
        mode: &str,
        subjects: &[String],
        rule: Option<LockoutRule>,
    ) -> Result<Option<Lock>, Unavailable> {
        let mut invocation = LOCKOUT.prepare_invoke();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let (attempts, window, duration) =
            rule.map_or((0, 1, 1), |r| (r.attempts, ms(r.window), ms(r.duration)));
        invocation.arg(mode).arg(attempts).arg(window).arg(duration);
        for subject in subjects {
            invocation.key(subject).key(format!("{subject}:fails"));
        }
        let (index, ms): (i64, i64) = self.run(&invocation).await?;
        let Some(subject) = usize::try_from(index).ok().and_then(|i| i.checked_sub(1)) else {
            return Ok(None);
        };
        Ok(Some(Lock {
            subject,
            remaining: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
        }))
    }
}
