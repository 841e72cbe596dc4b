//! Delivery state survives a restart: the retry counter and due time of a deferred
//! message, and a maybe-delivered pin, are read back from the spool by the next process,
//! which carries on where the last one stopped instead of starting the message over.

use std::time::Duration;

use crate::harness::message;
use crate::harness::sink::{Fault, Sink, SinkOptions};
use crate::routing::{Relay, submit, upstream};

/// A message deferred once (a `451` to RCPT) and one left maybe delivered at `a` (the
/// connection dropped after the final dot) are both still queued after a restart with
/// their state: the deferred one keeps its attempt count and due time, the pinned one its
/// upstream. When they are due, the deferred one is delivered on its second attempt and the
/// pinned one goes to `a` only, though its route's backup is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_state_survives_a_restart() {
    let a = Sink::start(SinkOptions::default()).await;
    a.fault(Fault::DropAfterDot, Some(1));
    a.fault(
        Fault::Rcpt("later@one.example".into(), "451 4.3.0 try later".into()),
        Some(1),
    );
    let backup = Sink::start(SinkOptions::default()).await;
    let body = format!(
        "upstreams:\n{}{}routes:\n  - {{upstreams: [a, backup]}}\n",
        upstream("a", a.port(), ""),
        upstream("backup", backup.port(), ""),
    );
    let mut relay = Relay::start(&body).await;
    let mut d = relay.session("apps", None).await;
    let pinned = message("pinned", "", "maybe there\r\n");
    let pinned_id = submit(&mut d, "dev@example.net", &["x@one.example"], &pinned).await;
    let before = relay
        .queued(&pinned_id, "maybe delivered", |e| {
            !e.maybe_delivered.is_empty()
        })
        .await;
    let deferred = message("deferred", "", "try again\r\n");
    let deferred_id = submit(&mut d, "dev@example.net", &["later@one.example"], &deferred).await;
    let first = relay
        .queued(&deferred_id, "deferred once", |e| e.attempts == 1)
        .await;
    d.cmd("QUIT", "221").await;

    relay.restart().await;
    let after = relay
        .queued(&pinned_id, "pin after restart", |_| true)
        .await;
    assert_eq!(after.maybe_delivered, before.maybe_delivered);
    assert_eq!(after.maybe_delivered[0].upstream, "a");
    let again = relay
        .queued(&deferred_id, "state after restart", |_| true)
        .await;
    assert_eq!(again.attempts, 1);
    assert_eq!(again.next_attempt_unix, first.next_attempt_unix);

    // Past the backoff (1h, give or take its 10 % jitter) and queue.ambiguous_retry (10m).
    relay.clock.advance(Duration::from_secs(2 * 3600));
    a.expect(2);
    let got = a.wait(crate::harness::DELIVERY).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for (sent, rcpt) in [(&pinned, "x@one.example"), (&deferred, "later@one.example")] {
        let m = got.iter().find(|m| m.rcpt_to == [rcpt]).unwrap();
        crate::harness::split_prefix(&m.data, sent);
    }
    relay.drained().await;
    assert_eq!(backup.connections(), 0, "nothing failed over");
}
