//! Observability through real sessions: the counters each outcome moves (read back from
//! `/metrics`), the queue gauges, `/healthz` and `/readyz` check by check, and the JSON log
//! of one message from the session that submitted it to the upstream that took it.

use std::net::IpAddr;
use std::time::Duration;

use crate::harness::client::Dialog;
use crate::harness::http::{Scrape, get};
use crate::harness::sink::Fault;
use crate::harness::{DELIVERY, Opts, TestServer, USER, logs, message, send_mail};

/// Scrapes until `done` holds (bounded), for what happens after a reply: delivery, the
/// end of a session.
async fn scrape_until(server: &TestServer, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + DELIVERY;
    loop {
        let scrape = server.scrape().await;
        if done(&scrape) || tokio::time::Instant::now() > deadline {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each outcome moves its own series, by listener and reason, and nothing else's.
#[tokio::test]
async fn counters_follow_each_outcome() {
    let extra = "limits: {max_message_size: 2KiB}\n\
                 rate_limits: [{per: ip, messages: 1, interval: 1h, name: one-an-hour, listeners: [submission]}]\n";
    let server = TestServer::start(Opts::with(extra)).await;
    server.sink().expect(1);

    // Accepted: one message, one recipient, over STARTTLS with AUTH.
    let mut d = server.submission_session().await;
    let from = format!("{USER}@example.com");
    send_mail(
        &mut d,
        &from,
        &["rcpt@example.net"],
        &message("m1", "", "hi\r\n"),
    )
    .await;
    // Refused at MAIL: a sender alice does not own; over the size cap; over the rate rule
    // (the first MAIL used its one message; the two refusals before it were not counted).
    d.cmd("MAIL FROM:<mallory@elsewhere.example>", "553 5.7.1")
        .await;
    d.cmd(&format!("MAIL FROM:<{from}> SIZE=999999"), "552 5.3.4")
        .await;
    d.cmd(&format!("MAIL FROM:<{from}>"), "450 4.7.1").await;
    d.cmd("QUIT", "221").await;
    server.sink().wait(DELIVERY).await;

    // A wrong password, then a client outside the legacy allowlist.
    let mut bad = Dialog::connect(server.submission).await;
    bad.ehlo("client.test").await;
    bad.starttls(&server.ca).await;
    bad.ehlo("client.test").await;
    bad.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8").await;
    bad.cmd("QUIT", "221").await;
    let outsider: IpAddr = "127.0.0.2".parse().unwrap();
    let mut refused = Dialog::connect_from(outsider, server.legacy).await;
    refused.expect("554 5.7.1").await;

    let s = scrape_until(&server, |s| {
        s.get(r#"postern_messages_completed_total{result="delivered"}"#) >= 1.0
            && s.get(r#"postern_sessions_active{listener="submission"}"#) == 0.0
    })
    .await;
    let sub =
        |name: &str, labels: &str| s.get(&format!("{name}{{listener=\"submission\"{labels}}}"));
    assert_eq!(sub("postern_messages_accepted_total", ""), 1.0);
    for (reason, n) in [
        ("sender_not_owned", 1.0),
        ("size", 1.0),
        ("rate_limit", 1.0),
        ("no_route", 0.0),
    ] {
        assert_eq!(
            sub(
                "postern_messages_refused_total",
                &format!(",reason=\"{reason}\"")
            ),
            n,
            "{reason}"
        );
    }
    assert_eq!(
        s.get(r#"postern_rate_limit_hits_total{rule="one-an-hour"}"#),
        1.0
    );
    assert_eq!(
        sub("postern_recipients_total", r#",outcome="accepted""#),
        1.0
    );
    assert_eq!(
        sub(
            "postern_auth_attempts_total",
            r#",mechanism="plain",result="success""#
        ),
        1.0
    );
    assert_eq!(
        sub(
            "postern_auth_attempts_total",
            r#",mechanism="plain",result="failure""#
        ),
        1.0
    );
    assert_eq!(
        sub("postern_connections_total", r#",result="accepted""#),
        2.0
    );
    assert_eq!(
        sub(
            "postern_tls_handshakes_total",
            r#",result="success",version="tls1_3""#
        ),
        2.0
    );
    assert_eq!(sub("postern_sessions_active", ""), 0.0);
    assert_eq!(sub("postern_message_size_bytes_count", ""), 1.0);
    assert_eq!(
        s.get(r#"postern_connections_total{listener="legacy",result="allowlist"}"#),
        1.0
    );
    // Delivered: one attempt, one recipient, its latency observed, the queue empty again.
    assert_eq!(
        s.get(r#"postern_delivery_attempts_total{result="delivered",upstream="sink"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"postern_delivery_recipients_total{result="delivered",upstream="sink"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"postern_delivery_latency_seconds_count{upstream="sink"}"#),
        1.0
    );
    assert_eq!(s.get(r#"postern_upstream_up{upstream="sink"}"#), 1.0);
    assert_eq!(s.get("postern_queue_messages"), 0.0);
    assert_eq!(s.get("postern_queue_bytes"), 0.0);
    assert!(s.get("postern_spool_commit_batch_messages_count") >= 1.0);
    assert_eq!(s.get("postern_spool_commit_batch_messages_sum"), 1.0);
    assert_eq!(
        s.get(r#"postern_upstream_connections_open{upstream="sink"}"#),
        1.0
    );
    assert_eq!(
        s.get(r#"postern_upstream_connections_busy{upstream="sink"}"#),
        0.0
    );
    assert_eq!(s.get("postern_ready"), 1.0);
    assert!(s.get("postern_tls_certificate_expiry_timestamp_seconds") > 1.7e9);
}

/// Each kind of refusal lands in its family with its reason: a recipient over the cap, a
/// message with a bare LF, a sender with no route, too many messages or errors in one
/// session, a lockout and the AUTH it refuses, a connection over its rate.
#[tokio::test]
async fn each_refusal_kind_has_its_series() {
    let extra = "limits: {max_recipients: 1, max_messages_per_session: 1, max_errors: 3}\n\
                 auth_lockout: {attempts: 2, window: 10m, duration: 15m}\n\
                 rate_limits: [{per: ip, connections: 1, interval: 1h, name: one-connection, listeners: [submissions]}]\n\
                 routes: [{senders: [\"@example.com\", \"@alice.example\"], upstreams: [sink]}]\n";
    let server = TestServer::start(Opts::with(extra)).await;
    server.sink().expect(1);

    let mut d = server.legacy_session().await;
    d.cmd("MAIL FROM:<dev@nowhere.example>", "550 5.7.1").await;
    d.cmd("MAIL FROM:<dev@example.com>", "250").await;
    d.cmd("RCPT TO:<a@example.net>", "250").await;
    d.cmd("RCPT TO:<b@example.net>", "452 4.5.3").await;
    d.cmd("DATA", "354").await;
    d.send(b"Subject: x\r\n\r\nbare\nLF\r\n.\r\n").await;
    d.expect("550 5.6.0").await;
    send_mail(
        &mut d,
        "dev@example.com",
        &["a@example.net"],
        &message("k1", "", "ok\r\n"),
    )
    .await;
    d.cmd("MAIL FROM:<dev@example.com>", "421 4.7.0").await;
    server.sink().wait(DELIVERY).await;

    let mut errors = server.legacy_session().await;
    for _ in 0..3 {
        errors.cmd("BOGUS", "500").await;
    }
    errors.cmd("BOGUS", "421 4.7.0").await;

    let first = Dialog::connect_tls(server.submissions, &server.ca).await;
    let mut second = Dialog::connect_tls_silent(server.submissions, &server.ca).await;
    second.expect("421 4.7.0").await;

    let mut guess = Dialog::connect(server.submission).await;
    guess.ehlo("client.test").await;
    guess.starttls(&server.ca).await;
    guess.ehlo("client.test").await;
    guess.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8").await;
    guess.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "421 4.7.0").await;
    let mut locked = server.submission_session_unauthenticated().await;
    locked
        .cmd(
            &format!("AUTH PLAIN {}", crate::harness::PLAIN_TOKEN),
            "454 4.7.0",
        )
        .await;

    let s = scrape_until(&server, |s| {
        s.get(r#"postern_sessions_closed_total{listener="submission",reason="lockout"}"#) >= 1.0
    })
    .await;
    for (series, want) in [
        (
            r#"postern_messages_refused_total{listener="legacy",reason="no_route"}"#,
            1.0,
        ),
        (
            r#"postern_messages_refused_total{listener="legacy",reason="bare_line_ending"}"#,
            1.0,
        ),
        (
            r#"postern_recipients_total{listener="legacy",outcome="refused"}"#,
            1.0,
        ),
        (
            r#"postern_recipients_total{listener="legacy",outcome="accepted"}"#,
            2.0,
        ),
        (r#"postern_messages_accepted_total{listener="legacy"}"#, 1.0),
        (
            r#"postern_sessions_closed_total{listener="legacy",reason="too_many_messages"}"#,
            1.0,
        ),
        (
            r#"postern_sessions_closed_total{listener="legacy",reason="too_many_errors"}"#,
            1.0,
        ),
        (
            r#"postern_connections_total{listener="submissions",result="connection_rate"}"#,
            1.0,
        ),
        (
            r#"postern_rate_limit_hits_total{rule="one-connection"}"#,
            1.0,
        ),
        (
            r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="failure"}"#,
            2.0,
        ),
        (
            r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="locked_out"}"#,
            1.0,
        ),
        (r#"postern_auth_lockouts_total{listener="submission"}"#, 1.0),
        (
            r#"postern_sessions_closed_total{listener="submission",reason="lockout"}"#,
            1.0,
        ),
        (
            r#"postern_messages_refused_total{listener="legacy",reason="size"}"#,
            0.0,
        ),
    ] {
        assert_eq!(s.get(series), want, "{series}");
    }
    drop(first);
}

/// A delivery that is deferred once then succeeds: both attempts counted, the failure's
/// stage named, the queue gauges while it waits, and its log joined by queue id from the
/// submitting session to the upstream's 250.
#[tokio::test]
async fn deferred_then_delivered_with_its_log() {
    let server = TestServer::start(Opts::default()).await;
    server
        .sink()
        .fault(Fault::DataEnd("451 4.3.0 Try again".into()), Some(1));
    server.sink().expect(1);
    let mut d = server.legacy_session().await;
    let reply = send_mail(
        &mut d,
        "dev@example.com",
        &["a@example.net", "b@example.net"],
        &message("d1", "", "x\r\n"),
    )
    .await;
    let id = reply.first().rsplit(' ').next().unwrap().to_owned();
    d.cmd("QUIT", "221").await;

    let waiting = scrape_until(&server, |s| {
        s.get(r#"postern_delivery_attempts_total{result="deferred",upstream="sink"}"#) >= 1.0
    })
    .await;
    assert_eq!(waiting.get("postern_queue_messages"), 1.0);
    assert!(waiting.get("postern_queue_bytes") > 0.0);
    server.clock.advance(Duration::from_secs(600));
    let aged = server.scrape().await;
    assert!(
        aged.get("postern_queue_oldest_age_seconds") >= 600.0,
        "{}",
        aged.text
    );

    server.sink().wait(DELIVERY).await;
    let s = scrape_until(&server, |s| s.get("postern_queue_messages") == 0.0).await;
    for (series, want) in [
        (
            r#"postern_delivery_attempts_total{result="deferred",upstream="sink"}"#,
            1.0,
        ),
        (
            r#"postern_delivery_attempts_total{result="delivered",upstream="sink"}"#,
            1.0,
        ),
        (
            r#"postern_delivery_recipients_total{result="deferred",upstream="sink"}"#,
            2.0,
        ),
        (
            r#"postern_delivery_recipients_total{result="delivered",upstream="sink"}"#,
            2.0,
        ),
        (
            r#"postern_upstream_failures_total{stage="final_dot",upstream="sink"}"#,
            1.0,
        ),
        (
            r#"postern_upstream_failures_total{stage="connect",upstream="sink"}"#,
            0.0,
        ),
        (r#"postern_upstream_up{upstream="sink"}"#, 1.0),
        (
            r#"postern_messages_completed_total{result="delivered"}"#,
            1.0,
        ),
        ("postern_queue_oldest_age_seconds", 0.0),
    ] {
        assert_eq!(s.get(series), want, "{series}");
    }

    // The log: this message's lines, and the session that submitted it.
    let lines = logs::lines();
    let of = |event: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["event"] == event && l["fields"]["queue_id"] == id.as_str())
            .collect()
    };
    let summary = of("message");
    assert_eq!(summary.len(), 1, "{lines:#?}");
    assert_eq!(summary[0]["fields"]["outcome"], "queued");
    assert_eq!(summary[0]["fields"]["listener"], "legacy");
    let session = summary[0]["span"]["session"].as_str().unwrap();
    let start: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["event"] == "session_start" && l["span"]["session"] == session)
        .collect();
    assert_eq!(start.len(), 1);
    assert_eq!(start[0]["fields"]["client_ip"], "127.0.0.1");
    let attempts = of("delivery_attempt");
    let shown: Vec<_> = attempts
        .iter()
        .map(|a| {
            let f = &a["fields"];
            (
                f["attempt"].as_u64(),
                f["result"].as_str(),
                f["code"].as_u64(),
                f["upstream"].as_str(),
                f["recipients"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (Some(1), Some("deferred"), Some(451), Some("sink"), Some(2)),
            (Some(2), Some("delivered"), Some(250), Some("sink"), Some(2)),
        ]
    );
    assert_eq!(of("recipient").len(), 4);
    let done = of("completed");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["fields"]["result"], "delivered");
    assert_eq!(done[0]["fields"]["attempts"], 2);
}

/// `/healthz` answers while the process serves; `/readyz` names each failed check: a
/// route whose upstreams all failed, a spool that cannot be written, the drain.
#[tokio::test]
async fn readiness_names_each_failed_check() {
    let mut server = TestServer::start(Opts {
        sink_down: true,
        extra: "shutdown_grace: 5s\n".into(),
        ..Opts::default()
    })
    .await;
    assert_eq!(get(server.http, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(
        get(server.http, "/readyz").await,
        (200, "ready\n".to_owned())
    );
    assert_eq!(get(server.http, "/nothing").await.0, 404);

    // The upstream is down: once an attempt fails to connect, its only route is not ready.
    let mut d = server.legacy_session().await;
    send_mail(
        &mut d,
        "dev@example.com",
        &["a@example.net"],
        &message("r1", "", "x\r\n"),
    )
    .await;
    let s = scrape_until(&server, |s| s.get("postern_ready") == 0.0).await;
    assert_eq!(s.get(r#"postern_upstream_up{upstream="sink"}"#), 0.0);
    assert_eq!(
        s.get(r#"postern_upstream_failures_total{stage="connect",upstream="sink"}"#),
        1.0
    );
    let (status, body) = get(server.http, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "not ready\nroutes[0]: every upstream is failing (sink)\n"
        )
    );
    server.sink_up().await;
    server.sink().expect(1);
    server.sink().wait(DELIVERY).await;
    scrape_until(&server, |s| s.get("postern_ready") == 1.0).await;
    assert_eq!(get(server.http, "/readyz").await.0, 200);

    // The spool cannot take a file.
    let tmp = server.spool().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    let (status, body) = get(server.http, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready\nspool: not writable: "),
        "{body}"
    );
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(get(server.http, "/readyz").await.0, 200);

    // Draining: a session inside a transaction holds the drain open; meanwhile /readyz
    // says why traffic should go elsewhere, and /healthz still answers.
    d.cmd("MAIL FROM:<dev@example.com>", "250").await;
    let http = server.http;
    let probe = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = get(http, "/readyz").await;
            if status == 503 || tokio::time::Instant::now() > deadline {
                let health = get(http, "/healthz").await.0;
                d.cmd("QUIT", "221").await;
                return (status, body, health);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (_, (status, body, health)) = tokio::join!(server.stop(), probe);
    assert_eq!(status, 503);
    assert!(
        body.contains("draining: shutting down, not taking new sessions\n"),
        "{body}"
    );
    assert!(body.contains("listeners: 0 of 3 accepting\n"), "{body}");
    assert_eq!(health, 200);
}

/// A message that outlives `queue.max_age` leaves the queue as expired: counted, logged
/// with its recipients failed locally, and the queue gauges back to empty.
#[tokio::test]
async fn expiry_is_counted_and_logged() {
    let server = TestServer::start(Opts {
        sink_down: true,
        ..Opts::default()
    })
    .await;
    let mut d = server.legacy_session().await;
    let reply = send_mail(
        &mut d,
        "dev@example.com",
        &["a@example.net"],
        &message("e1", "", "x\r\n"),
    )
    .await;
    let id = reply.first().rsplit(' ').next().unwrap().to_owned();
    scrape_until(&server, |s| {
        s.get(r#"postern_delivery_attempts_total{result="deferred",upstream="sink"}"#) >= 1.0
    })
    .await;
    server.clock.advance(Duration::from_secs(30 * 86_400));
    let s = scrape_until(&server, |s| {
        s.get(r#"postern_messages_completed_total{result="expired"}"#) >= 1.0
    })
    .await;
    assert_eq!(
        s.get(r#"postern_messages_completed_total{result="expired"}"#),
        1.0
    );
    assert_eq!(s.get("postern_queue_messages"), 0.0);
    let lines = logs::lines();
    let mine = |event: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["event"] == event && l["fields"]["queue_id"] == id.as_str())
            .collect()
    };
    let done = mine("completed");
    assert_eq!(done.len(), 1, "{lines:#?}");
    assert_eq!(done[0]["fields"]["result"], "expired");
    let failed: Vec<_> = mine("recipient")
        .into_iter()
        .filter(|l| l["fields"]["result"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["fields"]["upstream"], "-");
    assert!(server.spool().join("failed").join(&id).is_file());
}
