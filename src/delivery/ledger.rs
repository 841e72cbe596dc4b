//! The queue's gauges: how many messages, how many bytes, and when the oldest was received.
//!
//! Kept by the runner's own task, which sees every message arrive (committed, recovered,
//! or back from an attempt to wait) and hears of every one that leaves, so it needs no
//! lock: the gauges it publishes are atomics that a scrape reads.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::spool::Envelope;
use crate::telemetry::metrics::QueueGauges;

/// The messages in the queue, oldest first.
#[derive(Debug)]
pub(super) struct Ledger {
    /// (received, queue id) to size.
    queued: BTreeMap<(u64, String), u64>,
    bytes: u64,
    gauges: QueueGauges,
}

impl Ledger {
    pub(super) fn new(gauges: QueueGauges) -> Ledger {
        Ledger {
            queued: BTreeMap::new(),
            bytes: 0,
            gauges,
        }
    }

    /// A message is in the queue (again: an envelope back from an attempt counts once).
    pub(super) fn arrived(&mut self, env: &Envelope) {
        let key = (env.received_unix, env.id.to_string());
        if self.queued.insert(key, env.size).is_none() {
            self.bytes = self.bytes.saturating_add(env.size);
            self.publish();
        }
    }

    /// A message left the queue.
    pub(super) fn left(&mut self, received_unix: u64, id: String) {
        if let Some(size) = self.queued.remove(&(received_unix, id)) {
            self.bytes = self.bytes.saturating_sub(size);
            self.publish();
        }
    }

    fn publish(&self) {
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.gauges.messages.set(to_i64(self.queued.len() as u64));
        self.gauges.bytes.set(to_i64(self.bytes));
        let oldest = self
            .queued
            .keys()
            .next()
            .map_or(0, |(received, _)| *received);
        self.gauges.oldest_received.store(oldest, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::spool::QueueId;
    use crate::telemetry::metrics::Metrics;

    fn env(id: &str, received: u64, size: u64) -> Envelope {
        Envelope {
            size,
            ..Envelope::new(
                id.parse::<QueueId>().unwrap(),
                received,
                String::new(),
                Vec::new(),
                "legacy".into(),
                "192.0.2.1".parse().unwrap(),
            )
        }
    }

    #[test]
    fn counts_each_message_once_and_tracks_the_oldest() {
        let m = Metrics::new().unwrap();
        let mut ledger = Ledger::new(m.queue.clone());
        let a = env("0000000000000001", 200, 10);
        let b = env("0000000000000002", 100, 5);
        ledger.arrived(&a);
        ledger.arrived(&b);
        ledger.arrived(&a);
        assert_eq!(m.queue.messages.get(), 2);
        assert_eq!(m.queue.bytes.get(), 15);
        assert_eq!(m.queue.oldest_received.load(Ordering::Relaxed), 100);
        ledger.left(100, b.id.to_string());
        ledger.left(100, b.id.to_string());
        assert_eq!(m.queue.messages.get(), 1);
        assert_eq!(m.queue.bytes.get(), 10);
        assert_eq!(m.queue.oldest_received.load(Ordering::Relaxed), 200);
        ledger.left(200, a.id.to_string());
        assert_eq!(m.queue.messages.get(), 0);
        assert_eq!(m.queue.oldest_received.load(Ordering::Relaxed), 0);
    }
}
