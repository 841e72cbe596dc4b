//! GCRA (the generic cell rate algorithm) in one Lua script, on the Redis server's clock.
//!
//! Each bucket is one key holding its *theoretical arrival time* (TAT), in microseconds of
//! the server's `TIME`, so the instances' own clocks and their skew play no part. A bucket
//! with emission interval `T` (the interval divided by the limit) and burst `B` admits a
//! request of cost `c` when `max(TAT, now) + c·T − B·T ≤ now`; admitting sets
//! `TAT = max(TAT, now) + c·T`. From empty, `B` requests of cost 1 pass back to back, then
//! one per `T`.
//!
//! # Several buckets, one round trip, a real two-phase check
//! [`Redis::gcra_check`] passes every bucket of one decision (all the cluster rules that
//! apply to a MAIL, say) to one EVALSHA. The script computes every bucket's new TAT first
//! and writes them only when all admit; otherwise it writes nothing and returns the bucket
//! with the longest wait, and that wait. Unlike the local limiter (governor, whose only
//! operation takes a cell), a refused request charges no bucket. A script runs atomically,
//! so instances racing for the last cell cannot both get it.
//!
//! [`Redis::gcra_reserve`] always books (for shaping, where mail waits rather than fails)
//! and returns how long the caller must wait before its turn.
//!
//! # Expiry
//! Each write sets the key's expiry (`SET ... PX`) to the time until its bucket is full
//! again (TAT − now, rounded up, plus 1 ms): a key that has expired is indistinguishable
//! from a full bucket, so Redis forgets idle clients by itself.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Redis, Unavailable};

/// The script; ARGV\[1\] is `check` or `reserve`, then three values per key: emission
/// interval (µs, may be fractional), burst, cost. Returns `{admitted, index, wait_us}`:
/// `index` is the 1-based key with the longest wait (0 when none waits).
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local reserve = ARGV[1] == 'reserve'
local tats = {}
local worst, worst_wait = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 1])
  local burst = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local wait = new_tat - burst * interval - now
  if wait > worst_wait then worst, worst_wait = i, wait end
  tats[i] = new_tat
end
if worst > 0 and not reserve then
  return {0, worst, math.ceil(worst_wait)}
end
for i = 1, #KEYS do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
end
return {1, worst, math.ceil(worst_wait)}
";

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));

/// The script, for the prober to load when Redis comes up.
pub(super) fn script() -> &'static Script {
    &GCRA
}

/// One bucket charged by a check.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// The full key ([`Redis::key`]).
    pub key: String,
    /// The interval divided by the limit: one cell comes back every `emission`.
    pub emission: Duration,
    /// How many cells the bucket holds.
    pub burst: u32,
    /// Cells this request takes.
    pub cost: u32,
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every bucket admitted and was charged.
    Admitted,
    /// No bucket was charged; `index` (into the charges) waits longest, `retry_after`.
    Refused {
        /// Which charge refused.
        index: usize,
        /// When all of them would admit, at the earliest.
        retry_after: Duration,
    },
}

/// What a reservation booked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// How long until the booked turn (zero: now).
    pub wait: Duration,
    /// The charge that waits longest, when one waits.
    pub index: Option<usize>,
}

impl Redis {
    /// Charges every bucket of `charges` if all admit, else none (see the module
    /// documentation). An empty list is admitted without a round trip.
    pub async fn gcra_check(&self, charges: &[Charge]) -> Result<Verdict, Unavailable> {
        if charges.is_empty() {
            return Ok(Verdict::Admitted);
        }
        let (admitted, index, wait) = self.gcra("check", charges).await?;
        if admitted {
            return Ok(Verdict::Admitted);
        }
        Ok(Verdict::Refused {
            index: index.saturating_sub(1),
            retry_after: wait,
        })
    }

    /// Books every bucket of `charges` and returns how long to wait before the turn it
    /// booked (zero when there is room now), and which charge waits longest.
    pub async fn gcra_reserve(&self, charges: &[Charge]) -> Result<Reservation, Unavailable> {
        if charges.is_empty() {
            return Ok(Reservation::default());
        }
        let (_, index, wait) = self.gcra("reserve", charges).await?;
        Ok(Reservation {
            wait,
            index: index.checked_sub(1),
        })
    }

    async fn gcra(
        &self,
        mode: &str,
        charges: &[Charge],
    ) -> Result<(bool, usize, Duration), Unavailable> {
        let mut invocation = GCRA.prepare_invoke();
        invocation.arg(mode);
        for c in charges {
            invocation
                .key(&c.key)
                .arg(c.emission.as_secs_f64() * 1e6)
                .arg(c.burst)
                .arg(c.cost);
        }
        let (admitted, index, wait): (i64, i64, i64) = self.run(&invocation).await?;
        let index = usize::try_from(index).unwrap_or(0);
        let wait = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
        Ok((admitted == 1, index, wait))
    }
}
