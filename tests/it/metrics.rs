//! Observability through real sessions: the counters each outcome moves (read back from
//! `/metrics`), the queue gauges, `/healthz` and `/readyz` check by check, and the JSON log
//! of one message from the session that submitted it to the upstream that took it.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::client::Dialog;
use crate::harness::http::get;
use crate::harness::sink::Fault;
use crate::harness::{
    DELIVERY, Opts, PLAIN_TOKEN, TestServer, USER, logs, message, queue_id, send_mail,
};

/// `AUTH PLAIN` for alice with a wrong password.
const WRONG_PLAIN: &str = "AUTH PLAIN AGFsaWNlAHdyb25n";

/// The captured JSON log lines of `event` about queue id `id`.
fn events_of(event: &str, id: &str) -> Vec<serde_json::Value> {
    logs::lines()
        .into_iter()
        .filter(|l| l["fields"]["event"] == event && l["fields"]["queue_id"] == id)
        .collect()
}

/// Each outcome moves its own series, by listener and reason, and nothing else's.
#[tokio::test]
async fn counters_follow_each_outcome() {
    let extra = "limits: {max_message_size: 2KiB}\n\
                 rate_limits: [{per: ip, messages: 1, interval: 1h, name: one-an-hour, listeners: [submission]}]\n";
    let server = TestServer::start(Opts::with(extra)).await;
    server.sink().expect(1);
    accept_one_refuse_three(&server).await;
    server.sink().wait(DELIVERY).await;
    // A wrong password, then a client outside the legacy allowlist.
    let mut bad = server.submission_session_unauthenticated().await;
    bad.cmd(WRONG_PLAIN, "535 5.7.8").await;
    bad.cmd("QUIT", "221").await;
    let outsider: IpAddr = "127.0.0.2".parse().unwrap();
    let mut refused = Dialog::connect_from(outsider, server.legacy).await;
    refused.expect("554 5.7.1").await;

    let s = server
        .scrape_until(|s| {
            s.get(r#"postern_messages_completed_total{result="delivered"}"#) >= 1.0
                && s.get(r#"postern_sessions_active{listener="submission"}"#) == 0.0
        })
        .await;
    s.expect(&[
        (r#"postern_messages_accepted_total{listener="submission"}"#, 1.0),
        (r#"postern_messages_refused_total{listener="submission",reason="sender_not_owned"}"#, 1.0),
        (r#"postern_messages_refused_total{listener="submission",reason="size"}"#, 1.0),
        (r#"postern_messages_refused_total{listener="submission",reason="rate_limit"}"#, 1.0),
        (r#"postern_messages_refused_total{listener="submission",reason="no_route"}"#, 0.0),
        (r#"postern_rate_limit_hits_total{rule="one-an-hour"}"#, 1.0),
        (r#"postern_recipients_total{listener="submission",outcome="accepted"}"#, 1.0),
        (r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="success"}"#, 1.0),
        (r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="failure"}"#, 1.0),
        (r#"postern_connections_total{listener="submission",result="accepted"}"#, 2.0),
        (r#"postern_connections_total{listener="legacy",result="allowlist"}"#, 1.0),
        (r#"postern_tls_handshakes_total{listener="submission",result="success",version="tls1_3"}"#, 2.0),
        (r#"postern_sessions_active{listener="submission"}"#, 0.0),
        (r#"postern_message_size_bytes_count{listener="submission"}"#, 1.0),
    ]);
    // Delivered: one attempt, one recipient, its latency observed, the queue empty again,
    // the connection kept in the pool.
    s.expect(&[
        (
            r#"postern_delivery_attempts_total{result="delivered",upstream="sink"}"#,
            1.0,
        ),
        (
            r#"postern_delivery_recipients_total{result="delivered",upstream="sink"}"#,
            1.0,
        ),
        (
            r#"postern_delivery_latency_seconds_count{upstream="sink"}"#,
            1.0,
        ),
        (r#"postern_upstream_up{upstream="sink"}"#, 1.0),
        (r#"postern_upstream_connections_open{upstream="sink"}"#, 1.0),
        (r#"postern_upstream_connections_busy{upstream="sink"}"#, 0.0),
        ("postern_queue_messages", 0.0),
        ("postern_queue_bytes", 0.0),
        ("postern_spool_commit_batch_messages_count", 1.0),
        ("postern_spool_commit_batch_messages_sum", 1.0),
        ("postern_ready", 1.0),
    ]);
    assert!(
        s.get(r#"postern_tls_certificate_expiry_timestamp_seconds{certificate="tls"}"#) > 1.7e9
    );
}

/// Alice sends one message over STARTTLS with AUTH, then is refused at MAIL three times: a
/// sender she does not own, over the size cap, over the rate rule (the first MAIL used its
/// one message; the two refusals before this one were not counted against it).
async fn accept_one_refuse_three(server: &TestServer) {
    let mut d = server.submission_session().await;
    let from = format!("{USER}@example.com");
    let data = message("m1", "", "hi\r\n");
    send_mail(&mut d, &from, &["rcpt@example.net"], &data).await;
    d.cmd("MAIL FROM:<mallory@elsewhere.example>", "553 5.7.1")
        .await;
    d.cmd(&format!("MAIL FROM:<{from}> SIZE=999999"), "552 5.3.4")
        .await;
    d.cmd(&format!("MAIL FROM:<{from}>"), "450 4.7.1").await;
    d.cmd("QUIT", "221").await;
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
    legacy_refusals(&server).await;
    server.sink().wait(DELIVERY).await;
    let first = Dialog::connect_tls(server.submissions, &server.ca).await;
    let mut second = Dialog::connect_tls_silent(server.submissions, &server.ca).await;
    second.expect("421 4.7.0").await;
    let mut guess = server.submission_session_unauthenticated().await;
    guess.cmd(WRONG_PLAIN, "535 5.7.8").await;
    guess.cmd(WRONG_PLAIN, "421 4.7.0").await;
    let mut locked = server.submission_session_unauthenticated().await;
    locked
        .cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "454 4.7.0")
        .await;

    let s = server
        .scrape_until(|s| {
            s.get(r#"postern_sessions_closed_total{listener="submission",reason="lockout"}"#) >= 1.0
        })
        .await;
    s.expect(&[
        (r#"postern_messages_refused_total{listener="legacy",reason="no_route"}"#, 1.0),
        (r#"postern_messages_refused_total{listener="legacy",reason="bare_line_ending"}"#, 1.0),
        (r#"postern_messages_refused_total{listener="legacy",reason="size"}"#, 0.0),
        (r#"postern_recipients_total{listener="legacy",outcome="refused"}"#, 1.0),
        (r#"postern_recipients_total{listener="legacy",outcome="accepted"}"#, 2.0),
        (r#"postern_messages_accepted_total{listener="legacy"}"#, 1.0),
        (r#"postern_sessions_closed_total{listener="legacy",reason="too_many_messages"}"#, 1.0),
        (r#"postern_sessions_closed_total{listener="legacy",reason="too_many_errors"}"#, 1.0),
        (r#"postern_connections_total{listener="submissions",result="connection_rate"}"#, 1.0),
        (r#"postern_rate_limit_hits_total{rule="one-connection"}"#, 1.0),
        (r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="failure"}"#, 2.0),
        (r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="locked_out"}"#, 1.0),
        (r#"postern_auth_lockouts_total{listener="submission"}"#, 1.0),
        (r#"postern_sessions_closed_total{listener="submission",reason="lockout"}"#, 1.0),
    ]);
    drop(first);
}

/// On the legacy listener: no route, a recipient over the cap, a bare LF, one message
/// queued then the session's message cap; then a session closed for its errors.
async fn legacy_refusals(server: &TestServer) {
    let mut d = server.legacy_session().await;
    d.cmd("MAIL FROM:<dev@nowhere.example>", "550 5.7.1").await;
    d.cmd("MAIL FROM:<dev@example.com>", "250").await;
    d.cmd("RCPT TO:<a@example.net>", "250").await;
    d.cmd("RCPT TO:<b@example.net>", "452 4.5.3").await;
    d.cmd("DATA", "354").await;
    d.send(b"Subject: x\r\n\r\nbare\nLF\r\n.\r\n").await;
    d.expect("550 5.6.0").await;
    let data = message("k1", "", "ok\r\n");
    send_mail(&mut d, "dev@example.com", &["a@example.net"], &data).await;
    d.cmd("MAIL FROM:<dev@example.com>", "421 4.7.0").await;
    let mut errors = server.legacy_session().await;
    for _ in 0..3 {
        errors.cmd("BOGUS", "500").await;
    }
    errors.cmd("BOGUS", "421 4.7.0").await;
}

/// A delivery that is deferred once then succeeds: both attempts counted, the failure's
/// stage named, the queue gauges while it waits.
#[tokio::test]
async fn deferred_then_delivered() {
    let server = TestServer::start(Opts::default()).await;
    let id = send_deferred_once(&server).await;
    let waiting = server
        .scrape_until(|s| {
            s.get(r#"postern_delivery_attempts_total{result="deferred",upstream="sink"}"#) >= 1.0
        })
        .await;
    waiting.expect(&[("postern_queue_messages", 1.0)]);
    assert!(waiting.get("postern_queue_bytes") > 0.0);
    server.clock.advance(Duration::from_secs(600));
    let aged = server.scrape().await;
    assert!(
        aged.get("postern_queue_oldest_age_seconds") >= 600.0,
        "{}",
        aged.text
    );

    server.sink().wait(DELIVERY).await;
    let s = server
        .scrape_until(|s| s.get("postern_queue_messages") == 0.0)
        .await;
    s.expect(&[
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
    ]);
    assert_log_joins(&id);
}

/// Sends one message to two recipients on the legacy listener, with the sink set to
/// answer its first final dot `451`; returns its queue id.
async fn send_deferred_once(server: &TestServer) -> String {
    server
        .sink()
        .fault(Fault::DataEnd("451 4.3.0 Try again".into()), Some(1));
    server.sink().expect(1);
    let mut d = server.legacy_session().await;
    let rcpts = ["a@example.net", "b@example.net"];
    let data = message("d1", "", "x\r\n");
    let reply = send_mail(&mut d, "dev@example.com", &rcpts, &data).await;
    d.cmd("QUIT", "221").await;
    queue_id(reply.first())
}

/// The JSON log of message `id`, joined by its queue id: its summary line names the
/// session, whose start names the client; two attempts (451, then 250), four recipient
/// lines, one completion.
fn assert_log_joins(id: &str) {
    let summary = events_of("message", id);
    assert_eq!(summary.len(), 1, "{summary:#?}");
    assert_eq!(summary[0]["fields"]["outcome"], "queued");
    assert_eq!(summary[0]["fields"]["listener"], "legacy");
    let session = summary[0]["span"]["session"].as_str().unwrap();
    let start: Vec<_> = logs::lines()
        .into_iter()
        .filter(|l| l["fields"]["event"] == "session_start" && l["span"]["session"] == session)
        .collect();
    assert_eq!(start.len(), 1);
    assert_eq!(start[0]["fields"]["client_ip"], "127.0.0.1");
    let attempts: Vec<_> = events_of("delivery_attempt", id)
        .iter()
        .map(|a| {
            let f = &a["fields"];
            let (n, code, tried) = (
                f["attempt"].as_u64(),
                f["code"].as_u64(),
                f["recipients"].as_u64(),
            );
            (
                n,
                f["result"].as_str().map(str::to_owned),
                code,
                tried,
                f["upstream"] == "sink",
            )
        })
        .collect();
    let result = |r: &str| Some(r.to_owned());
    assert_eq!(
        attempts,
        [
            (Some(1), result("deferred"), Some(451), Some(2), true),
            (Some(2), result("delivered"), Some(250), Some(2), true),
        ]
    );
    assert_eq!(events_of("recipient", id).len(), 4);
    let done = events_of("completed", id);
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
    let mut d = server.legacy_session().await;
    failing_route_then_recovery(&mut server, &mut d).await;
    unwritable_spool(&server).await;

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

/// The upstream is down: once an attempt fails to connect, its only route is not ready;
/// once it is back and takes the message, ready again.
async fn failing_route_then_recovery(server: &mut TestServer, d: &mut Dialog) {
    let data = message("r1", "", "x\r\n");
    send_mail(d, "dev@example.com", &["a@example.net"], &data).await;
    let s = server.scrape_until(|s| s.get("postern_ready") == 0.0).await;
    s.expect(&[
        (r#"postern_upstream_up{upstream="sink"}"#, 0.0),
        (
            r#"postern_upstream_failures_total{stage="connect",upstream="sink"}"#,
            1.0,
        ),
    ]);
    let (status, body) = get(server.http, "/readyz").await;
    let want = "not ready\nroutes[0]: every upstream is failing (sink: down)\n";
    assert_eq!((status, body.as_str()), (503, want));
    server.sink_up().await;
    server.sink().expect(1);
    server.sink().wait(DELIVERY).await;
    server.scrape_until(|s| s.get("postern_ready") == 1.0).await;
    assert_eq!(get(server.http, "/readyz").await.0, 200);
}

/// The spool cannot take a file while its `tmp/` is gone: `/readyz` says so (once the
/// previous check, reused for a second, is stale), and a message is refused `451` and
/// counted.
async fn unwritable_spool(server: &TestServer) {
    let tmp = server.spool().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    let (status, body) = readyz_until(server, 503).await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready\nspool: not writable: "),
        "{body}"
    );
    let mut d = server.legacy_session().await;
    d.cmd("MAIL FROM:<dev@example.com>", "250").await;
    d.cmd("RCPT TO:<a@example.net>", "250").await;
    d.cmd("DATA", "451 4.3.0").await;
    d.cmd("QUIT", "221").await;
    let s = server.scrape().await;
    s.expect(&[(
        r#"postern_messages_refused_total{listener="legacy",reason="queue_error"}"#,
        1.0,
    )]);
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(readyz_until(server, 200).await.0, 200);
}

/// `/readyz` polled (bounded) until it answers `status`; the last answer.
async fn readyz_until(server: &TestServer, status: u16) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(server.http, "/readyz").await;
        if answer.0 == status || tokio::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A refusal at the end of DATA that is also the session's last allowed error is counted
/// by its reason, and the close by its own.
#[tokio::test]
async fn refusal_that_ends_the_session_is_counted() {
    let server = TestServer::start(Opts::with("limits: {max_errors: 1}\n")).await;
    let mut d = server.legacy_session().await;
    d.cmd("MAIL FROM:<dev@example.com>", "250").await;
    d.cmd("RCPT TO:<a@example.net>", "250").await;
    d.cmd("DATA", "354").await;
    d.send(b"Subject: x\r\n\r\nbare\nLF\r\n.\r\n").await;
    d.expect("550 5.6.0").await;
    d.expect("421 4.7.0").await;
    let s = server
        .scrape_until(|s| {
            s.get(r#"postern_sessions_closed_total{listener="legacy",reason="too_many_errors"}"#)
                >= 1.0
        })
        .await;
    s.expect(&[
        (
            r#"postern_messages_refused_total{listener="legacy",reason="bare_line_ending"}"#,
            1.0,
        ),
        (
            r#"postern_sessions_closed_total{listener="legacy",reason="too_many_errors"}"#,
            1.0,
        ),
    ]);
}

/// A cached AUTH, a failed TLS handshake, and a delivery whose final dot got no answer
/// ("maybe delivered": retried at the same upstream, never failed over).
#[tokio::test]
async fn cached_auth_failed_handshake_and_maybe_delivered() {
    let server = TestServer::start(Opts::default()).await;
    for _ in 0..2 {
        let mut d = server.submission_session().await;
        d.cmd("QUIT", "221").await;
    }
    // Plain text to the implicit-TLS listener: rustls answers with an alert and closes.
    let mut plain = tokio::net::TcpStream::connect(server.submissions)
        .await
        .unwrap();
    plain.write_all(b"EHLO not-tls\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DELIVERY, plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    server.sink().fault(Fault::DropAfterDot, Some(1));
    server.sink().expect(1);
    let mut d = server.legacy_session().await;
    let data = message("md", "", "x\r\n");
    send_mail(&mut d, "dev@example.com", &["a@example.net"], &data).await;
    server.sink().wait(DELIVERY).await;
    let s = server
        .scrape_until(|s| s.get("postern_queue_messages") == 0.0)
        .await;
    s.expect(&[
        (r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="success"}"#, 1.0),
        (r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="cached"}"#, 1.0),
        (r#"postern_tls_handshakes_total{listener="submissions",result="failure",version="none"}"#, 1.0),
        (r#"postern_delivery_attempts_total{result="maybe_delivered",upstream="sink"}"#, 1.0),
        (r#"postern_delivery_attempts_total{result="delivered",upstream="sink"}"#, 1.0),
        (r#"postern_upstream_failures_total{stage="final_dot",upstream="sink"}"#, 1.0),
    ]);
}

/// A message that outlives `queue.max_age` leaves the queue as expired: counted, logged
/// with its recipients failed locally, and kept in `failed/`; its bounce to the sender is
/// the one message left in the queue (the upstream is still down).
#[tokio::test]
async fn expiry_is_counted_and_logged() {
    let server = TestServer::start(Opts {
        sink_down: true,
        ..Opts::default()
    })
    .await;
    let mut d = server.legacy_session().await;
    let data = message("e1", "", "x\r\n");
    let reply = send_mail(&mut d, "dev@example.com", &["a@example.net"], &data).await;
    let id = queue_id(reply.first());
    server
        .scrape_until(|s| {
            s.get(r#"postern_delivery_attempts_total{result="deferred",upstream="sink"}"#) >= 1.0
        })
        .await;
    server.clock.advance(Duration::from_secs(30 * 86_400));
    // The bounce is queued before the original leaves, so once the gauge is back to one
    // message that message is the bounce (checked in the spool below).
    let s = server
        .scrape_until(|s| {
            s.get(r#"postern_messages_completed_total{result="expired"}"#) >= 1.0
                && s.get("postern_queue_messages") == 1.0
        })
        .await;
    s.expect(&[
        (r#"postern_messages_completed_total{result="expired"}"#, 1.0),
        ("postern_queue_messages", 1.0),
    ]);
    let queued: Vec<String> = std::fs::read_dir(server.spool().join("queue"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".state"))
        .collect();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_ne!(queued[0], id);
    let done = events_of("completed", &id);
    assert_eq!(done.len(), 1, "{done:#?}");
    assert_eq!(done[0]["fields"]["result"], "expired");
    let failed: Vec<_> = events_of("recipient", &id)
        .into_iter()
        .filter(|l| l["fields"]["result"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["fields"]["upstream"], "-");
    assert!(server.spool().join("failed").join(&id).is_file());
}
