//! Shaping to the upstream account's caps, through the real server and sink: mail over a
//! cap waits in the queue and goes when the cap allows, in arrival order, without being
//! counted as an attempt; a throttling reply pauses the whole upstream. Time moves with the
//! server's injected clock, never by waiting.

use std::time::Duration;

use crate::harness::sink::Fault;
use crate::harness::{
    DELIVERY, Opts, TestServer, eventually, logs, message, queue_id, send_mail, split_prefix,
};

const SHAPED_PER_MINUTE: &str =
    r#"postern_upstream_shaped_total{cap="messages_per_minute",upstream="sink"}"#;
const SHAPED_THROTTLED: &str = r#"postern_upstream_shaped_total{cap="throttled",upstream="sink"}"#;

/// The `completed` log line of queue id `id`, once it is logged (bounded).
async fn completed(id: &str) -> serde_json::Value {
    let line = || {
        logs::lines()
            .into_iter()
            .find(|l| l["fields"]["event"] == "completed" && l["fields"]["queue_id"] == id)
    };
    eventually(&format!("completed line for {id}"), || line().is_some()).await;
    line().unwrap_or_default()
}

/// Submits `n` messages on the legacy listener; returns their bytes and queue ids.
async fn submit(server: &TestServer, tag: &str, n: usize) -> Vec<(Vec<u8>, String)> {
    let mut d = server.legacy_session().await;
    let mut sent = Vec::new();
    for i in 0..n {
        let data = message(&format!("{tag}-{i}"), "", &format!("message {i}\r\n"));
        let reply = send_mail(&mut d, "printer@example.com", &["x@example.org"], &data).await;
        sent.push((data, queue_id(reply.first())));
    }
    d.cmd("QUIT", "221").await;
    sent
}

/// `messages_per_minute: 2`: of five messages two go at once, the next two when the first
/// minute is over, the last a minute later; each exactly once, in the order they came. The
/// ones held back were never attempted (no deferred attempt, no attempt counted in their
/// state), and the log says why they wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_minute_holds_mail_back_in_order() {
    let opts = Opts {
        upstream_keys: "messages_per_minute: 2".to_owned(),
        ..Opts::default()
    };
    let server = TestServer::start(opts).await;
    let sent = submit(&server, "pace", 5).await;
    server.sink().expect(2);
    server.sink().wait(DELIVERY).await;
    let s = server
        .scrape_until(|s| s.get(SHAPED_PER_MINUTE) == 3.0)
        .await;
    s.expect(&[
        (SHAPED_PER_MINUTE, 3.0),
        (
            r#"postern_delivery_attempts_total{result="delivered",upstream="sink"}"#,
            2.0,
        ),
        (
            r#"postern_delivery_attempts_total{result="deferred",upstream="sink"}"#,
            0.0,
        ),
        (SHAPED_THROTTLED, 0.0),
    ]);
    assert_eq!(
        server.sink().received().len(),
        2,
        "the rest wait for the minute"
    );
    for (_, id) in &sent[2..] {
        let held = logs::lines().into_iter().any(|l| {
            l["fields"]["message"] == "held back for the upstream's cap; not an attempt"
                && l["span"]["queue_id"] == id.as_str()
                && l["fields"]["cap"] == "messages_per_minute"
        });
        assert!(held, "no held-back line for {id}");
    }

    server.clock.advance(Duration::from_secs(61));
    server.sink().expect(2);
    server.sink().wait(DELIVERY).await;
    server.clock.advance(Duration::from_secs(60));
    server.sink().expect(1);
    server.sink().wait(DELIVERY).await;

    let got = server.sink().received();
    assert_eq!(got.len(), 5);
    // Each minute's batch is the next in arrival order (within a batch they go at once,
    // over several connections, in any order).
    for (batch, range) in [(0..2), (2..4), (4..5)].into_iter().enumerate() {
        for (data, id) in &sent[range.clone()] {
            let arrived = got[range.clone()].iter().find(|r| r.data.ends_with(data));
            let arrived = arrived.unwrap_or_else(|| panic!("{id} is not in batch {batch}"));
            split_prefix(&arrived.data, data);
        }
    }
    let s = server
        .scrape_until(|s| s.get(r#"postern_messages_completed_total{result="delivered"}"#) == 5.0)
        .await;
    s.expect(&[
        (
            r#"postern_messages_completed_total{result="delivered"}"#,
            5.0,
        ),
        (
            r#"postern_delivery_attempts_total{result="delivered",upstream="sink"}"#,
            5.0,
        ),
        (
            r#"postern_delivery_attempts_total{result="deferred",upstream="sink"}"#,
            0.0,
        ),
        (SHAPED_PER_MINUTE, 3.0),
    ]);
    // One attempt each: waiting was not an attempt.
    for (_, id) in &sent {
        assert_eq!(completed(id).await["fields"]["attempts"], 1);
    }
    assert_eq!(server.sink().violations(), Vec::<String>::new());
}

/// A `432 4.3.2` to the final dot pauses the whole upstream: the next message waits for
/// the pause without the sink seeing it, and both go when it is over; neither counts
/// the wait against its retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_reply_pauses_the_whole_upstream() {
    let server = TestServer::start(Opts::default()).await;
    let busy = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded";
    server
        .sink()
        .fault(Fault::DataEnd(busy.to_owned()), Some(1));
    let first = submit(&server, "throttled", 1).await;
    let throttled = r#"postern_upstream_throttled_total{upstream="sink"}"#;
    server
        .scrape_until(|s| s.get(throttled) == 1.0)
        .await
        .expect(&[(throttled, 1.0)]);
    let connections = server.sink().connections();
    let second = submit(&server, "waits", 1).await;
    let s = server
        .scrape_until(|s| s.get(SHAPED_THROTTLED) == 1.0)
        .await;
    s.expect(&[
        (SHAPED_THROTTLED, 1.0),
        (
            r#"postern_delivery_attempts_total{result="deferred",upstream="sink"}"#,
            1.0,
        ),
        (
            r#"postern_delivery_attempts_total{result="delivered",upstream="sink"}"#,
            0.0,
        ),
    ]);
    assert_eq!(server.sink().received().len(), 0);
    assert_eq!(
        server.sink().connections(),
        connections,
        "the paused upstream was not dialled"
    );
    let paused = logs::lines().into_iter().any(|l| {
        l["fields"]["message"] == "the upstream asked to slow down; pausing it"
            && l["fields"]["pause_ms"]
                .as_u64()
                .is_some_and(|ms| ms > 29_000 && ms <= 30_000)
    });
    assert!(paused, "no pause line");

    server.clock.advance(Duration::from_secs(31));
    server.sink().expect(2);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 2);
    let mut ids = Vec::new();
    for (data, id) in first.iter().chain(&second) {
        assert!(
            got.iter().any(|r| r.data.ends_with(data)),
            "{id} not delivered intact"
        );
        ids.push(id.clone());
    }
    for id in &ids {
        let completed = completed(id).await;
        // A throttling reply is the upstream's state, not the message's: it does not count
        // against the message's retries (its delivery_attempt line is logged all the same).
        assert_eq!(completed["fields"]["attempts"], 1, "{completed}");
    }
}

/// `recipients_per_day: 3` counts recipients over a rolling day, and a reload that changes
/// the upstream (a new pool) keeps what was sent today: a two-recipient message goes, the
/// next one waits a day (after the reload as before it), then goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_per_day_survives_a_reload() {
    let opts = Opts {
        upstream_keys: "recipients_per_day: 3".to_owned(),
        ..Opts::default()
    };
    let server = TestServer::start(opts).await;
    let rcpts = ["a@example.org", "b@example.org"];
    let mut d = server.legacy_session().await;
    let first = message("day-1", "", "first\r\n");
    send_mail(&mut d, "printer@example.com", &rcpts, &first).await;
    server.sink().expect(1);
    server.sink().wait(DELIVERY).await;
    server.edit_config(|yaml| {
        yaml.replace(
            "recipients_per_day: 3",
            "recipients_per_day: 3, idle_timeout: 20s",
        )
    });
    server.reload().await.unwrap();
    let second = message("day-2", "", "second\r\n");
    send_mail(&mut d, "printer@example.com", &rcpts, &second).await;
    d.cmd("QUIT", "221").await;
    let per_day = r#"postern_upstream_shaped_total{cap="recipients_per_day",upstream="sink"}"#;
    server
        .scrape_until(|s| s.get(per_day) == 1.0)
        .await
        .expect(&[(per_day, 1.0)]);
    server.clock.advance(Duration::from_secs(23 * 3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.sink().received().len(),
        1,
        "a rolling day is not over after 23 h"
    );
    server.clock.advance(Duration::from_secs(3600 + 120));
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 1);
    split_prefix(&got[0].data, &second);
    assert_eq!(got[0].rcpt_to, rcpts);
}

/// A throttling reply to one recipient after another was taken: the upstream is paused,
/// and what the transaction settled is recorded at once, so a restart during the pause
/// sends only the recipient that is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_after_a_recipient_was_taken_records_it() {
    let mut server = TestServer::start(Opts::default()).await;
    let busy = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded";
    server
        .sink()
        .fault(Fault::Rcpt("b@example.org".into(), busy.into()), Some(1));
    let mut d = server.legacy_session().await;
    let data = message("partly", "", "two recipients\r\n");
    let reply = send_mail(
        &mut d,
        "printer@example.com",
        &["a@example.org", "b@example.org"],
        &data,
    )
    .await;
    let id = queue_id(reply.first());
    d.cmd("QUIT", "221").await;
    server.sink().expect(1);
    let first = server.sink().wait(DELIVERY).await;
    assert_eq!(first[0].rcpt_to, ["a@example.org"]);
    let state = server.spool().join("queue").join(format!("{id}.state"));
    let recorded = || {
        let bytes = std::fs::read(&state).ok()?;
        postern::spool::record::decode_state(&bytes).ok()
    };
    eventually("a recorded as delivered", || {
        recorded().is_some_and(|env| {
            matches!(
                env.recipients[0].status,
                postern::spool::RcptStatus::Delivered { .. }
            )
        })
    })
    .await;
    assert_eq!(recorded().unwrap().attempts, 0, "a pause is not an attempt");
    server.stop().await;
    server.restart().await;
    // Its recorded next attempt is the end of the pause.
    server.clock.advance(Duration::from_secs(31));
    server.sink().expect(1);
    let second = server.sink().wait(DELIVERY).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].rcpt_to, ["b@example.org"]);
    split_prefix(&second[0].data, &data);
}
