//! An upstream's pause after a throttling reply, shared by every instance
//! (`shaping_scope: cluster`): one key, `<prefix>shape:<upstream>:pause`, present while the
//! upstream is paused and expiring with the pause. Setting it never shortens a pause in
//! force. The caps themselves are GCRA buckets booked in reserve mode ([`super::gcra`]),
//! `<prefix>shape:<upstream>:messages_per_minute` and `...:recipients_per_day`.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Redis, Unavailable};

/// KEYS\[1\]: the pause key. ARGV: `get`, or `set` and the pause (ms). Returns the time left
/// (ms; 0 when not paused).
const PAUSE_LUA: &str = r"
local left = redis.call('PTTL', KEYS[1])
if ARGV[1] == 'set' and tonumber(ARGV[2]) > left then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
  return tonumber(ARGV[2])
end
if left < 0 then return 0 end
return left
";

static PAUSE: LazyLock<Script> = LazyLock::new(|| Script::new(PAUSE_LUA));

/// The script, for the prober to load when Redis comes up.
pub(super) fn script() -> &'static Script {
    &PAUSE
}

impl Redis {
    /// The key of one of `upstream`'s shared shaping states (`pause`, or a cap's name).
    pub fn shaping_key(&self, upstream: &str, what: &str) -> String {
        self.key(&["shape", upstream, what])
    }

    /// How long `upstream` stays paused (zero: it is not).
    pub async fn paused_for(&self, upstream: &str) -> Result<Duration, Unavailable> {
        self.pause(upstream, "get", Duration::ZERO).await
    }

    /// Pauses `upstream` for `pause` (unless a longer pause is in force); returns the time
    /// left.
    pub async fn pause_upstream(
        &self,
        upstream: &str,
        pause: Duration,
    ) -> Result<Duration, Unavailable> {
        self.pause(upstream, "set", pause).await
    }

    async fn pause(
        &self,
        upstream: &str,
        mode: &str,
        pause: Duration,
    ) -> Result<Duration, Unavailable> {
        let mut invocation = PAUSE.prepare_invoke();
        let ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX).max(1);
        invocation
            .key(self.shaping_key(upstream, "pause"))
            .arg(mode)
            .arg(ms);
        let left: i64 = self.run(&invocation).await?;
        Ok(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
    }
}
