//! Rate limits: GCRA buckets (governor) per configured rule and per key (client address,
//! user, identity, sender domain or listener), checked at three points: a connection
//! accepted, each MAIL, each RCPT.
//!
//! # Several rules, one decision
//! governor's only operation is `check_key`, which takes a cell when it admits: there is no
//! "peek, then commit". When rule B refuses after rule A admitted, A has already been charged
//! for an attempt that was refused. Rather than reimplementing GCRA to get a two-phase check,
//! the rules are checked narrowest key first (user, or the identity of a user, then the
//! client address, then a device's network identity, the sender domain, the listener) and
//! the check stops at the first refusal. So a client retrying against its own exhausted
//! bucket charges nothing to the buckets it shares with others (a listener, a NATed address);
//! the over-count, one cell per refused attempt, lands only on the narrower buckets of the
//! client that was refused, when a wider rule refuses it.
//!
//! # Per-identity rules
//! A `users[]` or `networks[]` entry with its own `rate_limits` gets a [`RuleSet`]: the
//! global rules minus those with the same `per` and quantity as one of its own (whatever
//! their `listeners`), plus its own, each with its own bucket. The server looks the set up
//! once per session and identity with [`RateLimits::overrides_for`] (a hash lookup by username
//! or by the network the device identity carries) and passes it to every check.
//!
//! # Reload and eviction
//! A [`RateLimits`] is immutable: [`RateLimits::reconfigure`] builds the next one from a new
//! config, reusing the bucket state of every rule that did not change (same owner, `per`,
//! quantity, limit, interval, burst and listeners; a rename keeps it too) and dropping the
//! rest. A changed rule starts empty. The runtime swaps the new value in (`ArcSwap`) and calls
//! [`RateLimits::evict`] every [`EVICT_PERIOD`]: a key whose bucket has refilled (idle for
//! at most `interval × burst / limit`, plus one emission interval) is indistinguishable from a
//! new one and is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Reference;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use crate::clock::Clock;
use crate::config::policy::{OnRedisError, RateLimitRule, RatePer, RateQuantity, Scope};
use crate::config::schema::Config;
use crate::policy::Identity;
use crate::policy::networks::client_prefix;

/// How often the runtime should call [`RateLimits::evict`].
pub const EVICT_PERIOD: Duration = Duration::from_secs(60);

/// What is being counted: the stage the server is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counted {
    /// A connection was accepted (refusal: `421 4.7.0`, then close).
    Connection,
    /// A MAIL command (refusal: `450 4.7.1`).
    Message,
    /// A RCPT command (refusal: `450 4.7.1`).
    Recipient,
}

impl From<RateQuantity> for Counted {
    fn from(q: RateQuantity) -> Counted {
        match q {
            RateQuantity::Connections => Counted::Connection,
            RateQuantity::Messages => Counted::Message,
            RateQuantity::Recipients => Counted::Recipient,
        }
    }
}

/// What the server knows about the client at a check; absent keys skip the rules keyed by
/// them (no user for an anonymous client, no sender domain for the null sender).
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a> {
    /// The client address (counted per /64 for IPv6, see [`client_prefix`]).
    pub ip: IpAddr,
    /// The listener's name.
    pub listener: &'a str,
    /// The identity label ([`Identity::label`]): the username, or `network:CIDR`.
    pub identity: Option<&'a str>,
    /// The AUTH username.
    pub user: Option<&'a str>,
    /// The MAIL FROM domain (any case).
    pub sender_domain: Option<&'a str>,
}

impl<'a> Keys<'a> {
    /// The keys known at accept: address, listener and a device identity if any.
    pub fn connection(ip: IpAddr, listener: &'a str, identity: Option<&'a str>) -> Keys<'a> {
        Keys {
            ip,
            listener,
            identity,
            user: None,
            sender_domain: None,
        }
    }

    /// These keys with the domain of `sender` (`local@domain`; `""` has none).
    pub fn with_sender(self, sender: &'a str) -> Keys<'a> {
        let domain = sender.rsplit_once('@').map(|(_, d)| d);
        Keys {
            sender_domain: domain.filter(|d| !d.is_empty()),
            ..self
        }
    }
}

/// A refusal: which rule, in words, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The rule's name (configured or derived, e.g. `per-user-messages`).
    pub rule: String,
    /// The rule in words, e.g. `100 messages per 1h per user`, for logs.
    pub description: String,
    /// The earliest time the same check can succeed.
    pub retry_after: Duration,
}

/// governor's time: a tokio instant taken from [`Clock::now`], so both tokio's paused clock
/// and [`Clock::advance`] move the buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(tokio::time::Instant);

impl Add<Nanos> for Tick {
    type Output = Tick;
    fn add(self, n: Nanos) -> Tick {
        // Overflow needs a state centuries ahead; keep the instant rather than panic.
        Tick(self.0.checked_add(n.into()).unwrap_or(self.0))
    }
}

impl Reference for Tick {
    fn duration_since(&self, earlier: Tick) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }
    fn saturating_sub(&self, n: Nanos) -> Tick {
        Tick(self.0.checked_sub(n.into()).unwrap_or(self.0))
    }
}

/// [`Clock`] as a governor clock.
#[derive(Debug, Clone)]
struct GovClock(Clock);

impl governor::clock::Clock for GovClock {
    type Instant = Tick;
    fn now(&self) -> Tick {
        Tick(self.0.now())
    }
}

/// One bucket's key. A rule has one `per`, so its keys never mix kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    Name(Box<str>),
}

/// The buckets of one rule.
type Buckets = RateLimiter<Key, DashMapStateStore<Key>, GovClock, NoOpMiddleware<Tick>>;

/// Whose list a rule came from: its bucket is reused on reload only by the same owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    Global,
    User(String),
    Network(IpNet),
}

/// What makes two rules the same for reload (everything but the name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Spec {
    per: RatePer,
    counted: Counted,
    limit: u32,
    interval: Duration,
    burst: u32,
    listeners: Vec<String>,
    scope: Scope,
}

/// One rule and its buckets (unused by a `scope: cluster` rule, whose buckets are in
/// Redis).
#[derive(Debug)]
struct Limiter {
    name: String,
    description: String,
    owner: Owner,
    spec: Spec,
    /// With `scope: cluster`: what to do while Redis cannot answer.
    on_redis_error: OnRedisError,
    buckets: Arc<Buckets>,
}

impl Limiter {
    /// A refusal by this rule.
    fn hit(&self, retry_after: Duration) -> Hit {
        Hit {
            rule: self.name.clone(),
            description: self.description.clone(),
            retry_after,
        }
    }
}

/// The rules that apply to one identity (or to everyone): see the module documentation.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Limiter>>,
    /// Whether any of them has `scope: cluster`: when none has, a check never looks for
    /// Redis work (decided once here, not per MAIL and RCPT).
    cluster: bool,
}

impl RuleSet {
    fn new(rules: Vec<Arc<Limiter>>) -> RuleSet {
        let cluster = rules.iter().any(|lim| lim.spec.scope == Scope::Cluster);
        RuleSet { rules, cluster }
    }
}

/// Every rate limit of one config, with its state. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct RateLimits {
    clock: Clock,
    global: RuleSet,
    users: HashMap<String, RuleSet>,
    networks: HashMap<IpNet, RuleSet>,
    /// Every distinct limiter, for eviction and counting.
    all: Vec<Arc<Limiter>>,
}

impl RateLimits {
    /// Builds the limits of a validated config with empty buckets.
    pub fn new(cfg: &Config, clock: &Clock) -> RateLimits {
        Builder::new(clock.clone(), HashMap::new()).build(cfg)
    }

    /// Builds the limits of `cfg`, keeping the buckets of rules that did not change (see the
    /// module documentation). Sessions holding `self` keep using it until they end.
    pub fn reconfigure(&self, cfg: &Config) -> RateLimits {
        let mut pool: Pool = HashMap::new();
        for lim in &self.all {
            let id = (lim.owner.clone(), lim.spec.clone());
            pool.entry(id).or_default().push(lim.buckets.clone());
        }
        Builder::new(self.clock.clone(), pool).build(cfg)
    }

    /// Every rule's name (for the metrics' series), without repeats.
    pub fn rule_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for lim in &self.all {
            if !names.contains(&lim.name.as_str()) {
                names.push(&lim.name);
            }
        }
        names
    }

    /// The rule set of an identity with its own `rate_limits`; `None` means the global rules.
    pub fn overrides_for(&self, who: &Identity) -> Option<&RuleSet> {
        match who {
            Identity::User(user) => self.users.get(user),
            Identity::Device(net) => self.networks.get(net),
            Identity::Anonymous => None,
        }
    }

    /// Counts one `what` against every local rule of `overrides` (or the global rules) that
    /// counts it, applies on `keys.listener`, and has its key in `keys`; narrowest key first,
    /// stopping at the first refusal (see the module documentation for what a refusal
    /// costs). Rules with `scope: cluster` are left to [`RateLimits::check_shared`].
    pub fn check(
        &self,
        what: Counted,
        keys: &Keys<'_>,
        overrides: Option<&RuleSet>,
    ) -> Result<(), Hit> {
        for (lim, key) in self.applicable(what, keys, overrides, Scope::Local) {
            if let Err(not_until) = lim.buckets.check_key(&key) {
                let retry_after = not_until.wait_time_from(Tick(self.clock.now()));
                return Err(lim.hit(retry_after));
            }
        }
        Ok(())
    }

    /// The rules of `scope` that count `what` for these keys, with each one's key, narrowest
    /// key first.
    fn applicable<'s>(
        &'s self,
        what: Counted,
        keys: &'s Keys<'_>,
        overrides: Option<&'s RuleSet>,
        scope: Scope,
    ) -> impl Iterator<Item = (&'s Limiter, Key)> + 's {
        let set = overrides.unwrap_or(&self.global);
        (0..RANKS).flat_map(move |rank| {
            set.rules.iter().filter_map(move |lim| {
                let spec = &lim.spec;
                let wanted = spec.scope == scope
                    && spec.counted == what
                    && breadth(spec.per, keys) == rank
                    && (spec.listeners.is_empty()
                        || spec.listeners.iter().any(|l| l == keys.listener));
                if !wanted {
                    return None;
                }
                key_for(spec.per, keys).map(|key| (lim.as_ref(), key))
            })
        })
    }

    /// Drops the keys whose buckets are full again and returns their memory to the maps.
    pub fn evict(&self) {
        for lim in &self.all {
            lim.buckets.retain_recent();
            lim.buckets.shrink_to_fit();
        }
    }

    /// Keys held over all rules (for metrics and tests).
    pub fn tracked_keys(&self) -> usize {
        self.all.iter().map(|lim| lim.buckets.len()).sum()
    }
}

/// Number of breadth ranks, see [`breadth`].
const RANKS: u8 = 5;

/// How many clients share a key, as a rank: checks run narrowest first. An identity is a
/// user's own when the client logged in, and a device network (wider than an address) when not.
fn breadth(per: RatePer, keys: &Keys<'_>) -> u8 {
    match per {
        RatePer::User => 0,
        RatePer::Identity if keys.user.is_some() => 0,
        RatePer::Ip => 1,
        RatePer::Identity => 2,
        RatePer::SenderDomain => 3,
        RatePer::Listener => 4,
    }
}

/// The bucket key of a rule for these keys, if the client has one.
fn key_for(per: RatePer, keys: &Keys<'_>) -> Option<Key> {
    let name = |s: &str| Key::Name(s.into());
    match per {
        RatePer::Ip => Some(Key::Ip(client_prefix(keys.ip))),
        RatePer::User => keys.user.map(name),
        RatePer::Identity => keys.identity.map(name),
        RatePer::SenderDomain => keys
            .sender_domain
            .map(|d| Key::Name(d.to_ascii_lowercase().into())),
        RatePer::Listener => Some(name(keys.listener)),
    }
}

/// Buckets of the previous config that may be reused, by owner and spec.
type Pool = HashMap<(Owner, Spec), Vec<Arc<Buckets>>>;

/// Builds a [`RateLimits`], drawing unchanged buckets from the pool.
struct Builder {
    clock: Clock,
    pool: Pool,
    all: Vec<Arc<Limiter>>,
}

impl Builder {
    fn new(clock: Clock, pool: Pool) -> Builder {
        Builder {
            clock,
            pool,
            all: Vec::new(),
        }
    }

    fn build(mut self, cfg: &Config) -> RateLimits {
        let global = self.rules(&Owner::Global, &cfg.rate_limits);
        let mut users = HashMap::new();
        for u in cfg.users.iter().filter(|u| !u.rate_limits.is_empty()) {
            let own = self.rules(&Owner::User(u.username.clone()), &u.rate_limits);
            users.insert(u.username.clone(), merge(&global, own));
        }
        let mut networks = HashMap::new();
        for n in cfg.networks.iter().filter(|n| !n.rate_limits.is_empty()) {
            let own = self.rules(&Owner::Network(n.network), &n.rate_limits);
            networks.insert(n.network, merge(&global, own));
        }
        RateLimits {
            clock: self.clock,
            global: RuleSet::new(global),
            users,
            networks,
            all: self.all,
        }
    }

    /// The limiters of one list; a rule validation would have refused is skipped.
    fn rules(&mut self, owner: &Owner, rules: &[RateLimitRule]) -> Vec<Arc<Limiter>> {
        let built: Vec<_> = rules
            .iter()
            .filter_map(|r| self.limiter(owner, r))
            .collect();
        self.all.extend(built.iter().cloned());
        built
    }

    fn limiter(&mut self, owner: &Owner, rule: &RateLimitRule) -> Option<Arc<Limiter>> {
        let (quantity, limit) = rule.quantity()?;
        let limit = NonZeroU32::new(limit)?;
        let burst = rule.burst.map_or(Some(limit), NonZeroU32::new)?;
        let interval = rule.interval.get();
        let spec = Spec {
            per: rule.per,
            counted: quantity.into(),
            limit: limit.get(),
            interval,
            burst: burst.get(),
            listeners: rule.listeners.clone(),
            scope: rule.scope,
        };
        let reused = self
            .pool
            .get_mut(&(owner.clone(), spec.clone()))
            .and_then(Vec::pop);
        let buckets = match reused {
            Some(b) => b,
            None => {
                // One cell comes back every interval / limit (at least 1ns, governor's floor).
                let period = (interval / limit.get()).max(Duration::from_nanos(1));
                let quota = Quota::with_period(period)?.allow_burst(burst);
                let clock = GovClock(self.clock.clone());
                Arc::new(RateLimiter::dashmap_with_clock(quota, clock))
            }
        };
        Some(Arc::new(Limiter {
            name: rule.display_name(),
            description: describe(&spec, quantity),
            owner: owner.clone(),
            spec,
            on_redis_error: rule.on_redis_error.unwrap_or_default(),
            buckets,
        }))
    }
}

/// The global rules an identity's own do not replace, then its own.
fn merge(global: &[Arc<Limiter>], own: Vec<Arc<Limiter>>) -> RuleSet {
    let replaced = |g: &Limiter| {
        own.iter()
            .any(|o| o.spec.per == g.spec.per && o.spec.counted == g.spec.counted)
    };
    let mut rules: Vec<_> = global.iter().filter(|g| !replaced(g)).cloned().collect();
    rules.extend(own);
    RuleSet::new(rules)
}

/// `100 messages per 1h per user`, with ` (burst 200)` when the burst is not the limit.
fn describe(spec: &Spec, quantity: RateQuantity) -> String {
    let per = spec.per.as_str().replace('_', " ");
    let mut s = format!(
        "{} {} per {} per {per}",
        spec.limit,
        quantity.as_str(),
        human(spec.interval)
    );
    if spec.burst != spec.limit {
        s.push_str(&format!(" (burst {})", spec.burst));
    }
    if spec.scope == Scope::Cluster {
        s.push_str(" across the cluster");
    }
    s
}

/// A duration in the largest unit that divides it: `1h`, `90s`, `1d`, `250ms`.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    let units = [
        (604_800_000, "w"),
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
    ];
    for (size, unit) in units {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

mod shared;
#[cfg(test)]
mod tests;

pub use shared::Refusal;
