//! The async shell on the inbound side: accept loops, one task per connection driving the
//! sans-I/O engine, TLS.
//!
//! State is in two parts: the [`Runtime`], which lives as long as the process (spool,
//! delivery, argon2 workers, the clock), and the rules snapshot in it, swapped whole on
//! reload (`crate::rules`). Each session loads the snapshot once when it starts.

pub mod admission;
pub mod backend;
pub mod conn;
pub mod deadline;
mod fdlimit;
pub mod headers;
pub mod listener;
pub mod proxy;
pub mod tls;

use std::sync::Arc;

use crate::clock::Clock;
use crate::cluster::Redis;
use crate::delivery::DeliveryHandle;
use crate::policy::lockout::Lockout;
pub use crate::rules::ListenerInfo;
use crate::rules::{LiveRules, Rules};
use crate::spool::Spool;
use crate::telemetry::metrics::Metrics;
use crate::users::Verifier;

/// What lives as long as the process and every session shares.
#[derive(Debug)]
pub struct Runtime {
    /// The current rules; sessions load them once at their start.
    pub rules: LiveRules,
    /// The durable queue.
    pub spool: Spool,
    /// Where committed messages are handed for delivery.
    pub delivery: DeliveryHandle,
    /// argon2 workers and the AUTH success cache.
    pub verifier: Verifier,
    /// The time source for policy and delivery.
    pub clock: Clock,
    /// AUTH failure counts and lockouts, across connections.
    pub lockout: Lockout,
    /// The Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The shared Redis (`redis:`), for limits with `scope: cluster`; set at start only
    /// (the `redis` section needs a restart).
    pub redis: Option<Redis>,
}

impl Runtime {
    /// The current rules snapshot.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }
}
