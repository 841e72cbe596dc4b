//! The mail sent through postern (one accepted message, one refused sender, one failed AUTH,
//! one message the upstream defers once), its assertions, and the counters it implies.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{POLL, WAIT};
use crate::harness::sink::Fault;
use crate::harness::{TestServer, delivered, message, rows, send_mail};

/// The counters after the mail, each series named as /metrics prints it (labels sorted),
/// with the least value the mail implies.
pub(super) const COUNTERS: [(&str, f64); 15] = [
    (
        r#"postern_messages_accepted_total{listener="submission"}"#,
        1.0,
    ),
    (r#"postern_messages_accepted_total{listener="legacy"}"#, 1.0),
    (
        r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="failure"}"#,
        1.0,
    ),
    (
        r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="success"}"#,
        1.0,
    ),
    (
        r#"postern_messages_refused_total{listener="submission",reason="sender_not_owned"}"#,
        1.0,
    ),
    (
        r#"postern_delivery_attempts_total{result="deferred",upstream="sink"}"#,
        1.0,
    ),
    (
        r#"postern_delivery_attempts_total{result="delivered",upstream="sink"}"#,
        2.0,
    ),
    (
        r#"postern_delivery_attempts_total{result="failed",upstream="sink"}"#,
        0.0,
    ),
    (
        r#"postern_delivery_attempts_total{result="maybe_delivered",upstream="sink"}"#,
        0.0,
    ),
    (
        r#"postern_upstream_failures_total{stage="final_dot",upstream="sink"}"#,
        1.0,
    ),
    (
        r#"postern_messages_completed_total{result="delivered"}"#,
        2.0,
    ),
    (r#"postern_messages_completed_total{result="failed"}"#, 0.0),
    (r#"postern_upstream_up{upstream="sink"}"#, 1.0),
    ("postern_queue_messages", 0.0),
    ("postern_ready", 1.0),
];

/// Sends the mail, checks what reached the sink, and waits until postern's counters are
/// final; returns that moment, in unix seconds.
pub(super) async fn run(server: &TestServer) -> f64 {
    send(server).await;
    wait_settled(server).await;
    unix_now()
}

/// The mail: accepted, refused, failed AUTH, deferred then delivered; both messages must
/// reach the sink, exactly, and the sink must have seen no protocol violation.
async fn send(server: &TestServer) {
    let sink = server.sink();
    // 1. Accepted and delivered at once (submission: STARTTLS + AUTH).
    let mut d = server.submission_session().await;
    let first = message("first", "From: alice@example.com\r\n", "hello\r\n");
    send_mail(&mut d, "alice@example.com", &["bob@example.org"], &first).await;
    sink.wait_for(crate::harness::DELIVERY, |m| !m.is_empty())
        .await;
    // 2. Refused: alice does not own mallory's address.
    d.cmd("MAIL FROM:<mallory@example.com>", "553 5.7.1").await;
    d.cmd("QUIT", "221").await;
    // 3. A failed AUTH: alice with a wrong password (`\0alice\0wrong`).
    let mut d = server.starttls_session_from(None).await;
    d.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8").await;
    d.cmd("QUIT", "221").await;
    // 4. Deferred once by the upstream (451 to the final dot), delivered by the retry
    //    (backoff 1-2 s); through the legacy listener.
    sink.fault(Fault::DataEnd("451 4.3.0 Try again".into()), Some(1));
    let mut d = server.legacy_session().await;
    let second = message("second", "From: printer@example.net\r\n", "again\r\n");
    send_mail(
        &mut d,
        "printer@example.net",
        &["carol@example.org"],
        &second,
    )
    .await;
    d.cmd("QUIT", "221").await;
    let got = delivered(sink, 2, |tag| match tag {
        "first" => first.clone(),
        _ => second.clone(),
    })
    .await;
    assert_eq!(
        got,
        rows(&[
            ("first", "alice@example.com", &["bob@example.org"]),
            ("second", "printer@example.net", &["carol@example.org"]),
        ])
    );
    assert!(sink.violations().is_empty(), "{:?}", sink.violations());
}

/// The sink records a message before postern reads its 250: waits until postern has
/// counted both deliveries and emptied its queue, so that the counters are final.
async fn wait_settled(server: &TestServer) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = server.scrape().await;
        let completed = s.get(r#"postern_messages_completed_total{result="delivered"}"#);
        if completed >= 2.0 && s.get("postern_queue_messages") == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postern never settled:\n{}",
            s.text
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Now, in unix seconds (Prometheus' sample timestamps run on the same clock).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
