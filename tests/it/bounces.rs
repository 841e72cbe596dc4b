//! Delivery status notifications end to end (RFC 3461, 3464): postern bounces recipients
//! that fail for good to the envelope sender through its normal route (here the one sink),
//! warns of delays once, takes the DSN parameters on submission and relays them only to an
//! upstream that offers DSN. Every notification is parsed as MIME and its key fields are
//! compared byte for byte.

use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};

use crate::harness::client::Dialog;
use crate::harness::sink::{Fault, Received};
use crate::harness::{DELIVERY, Opts, TestServer, dot_stuff, eventually, message, queue_id};

const SENDER: &str = "dev@example.net";

/// The harness's quick retries (its `queue` option replaces them) plus `keys`.
fn queue(keys: &str) -> String {
    format!("min_backoff: 1s, max_backoff: 2s, ambiguous_retry: 1s, {keys}")
}
const BAD: &str = "nobody@example.org";

/// One transaction with exact MAIL and RCPT lines; returns the queue id.
async fn submit(d: &mut Dialog, mail: &str, rcpts: &[&str], data: &[u8]) -> String {
    d.cmd(mail, "250 2.1.0").await;
    for rcpt in rcpts {
        d.cmd(rcpt, "250 2.1.5").await;
    }
    d.cmd("DATA", "354").await;
    d.send([dot_stuff(data), b".\r\n".to_vec()].concat()).await;
    queue_id(d.expect("250 2.0.0").await.first())
}

/// The notifications among `got`: messages from the null sender.
fn notifications(got: &[Received]) -> Vec<&Received> {
    got.iter().filter(|m| m.mail_from.is_empty()).collect()
}

/// A server whose sink refuses [`BAD`] for good.
async fn refusing(opts: Opts) -> TestServer {
    let server = TestServer::start(opts).await;
    server.sink().fault(
        Fault::Rcpt(BAD.into(), "550 5.1.1 No such user".into()),
        None,
    );
    server
}

/// Waits until the message `id` is out of the queue and kept in `failed/` (queue.bounces
/// `both`): by then its bounce, if any, was committed (it is queued first).
async fn failed(server: &TestServer, id: &str) {
    let path = server.spool().join("failed").join(id);
    eventually("original in failed/", || path.is_file()).await;
}

/// The MIME structure of a notification: (content type of the whole, with report-type;
/// the three parts' types).
fn structure(data: &[u8]) -> (String, Vec<String>) {
    let msg = MessageParser::default()
        .parse(data)
        .expect("parses as MIME");
    let ct = msg.content_type().expect("has a Content-Type");
    let top = format!(
        "{}/{}; report-type={}",
        ct.ctype(),
        ct.subtype().unwrap_or_default(),
        ct.attribute("report-type").unwrap_or_default()
    );
    let subs = msg.parts[0].sub_parts().unwrap_or_default();
    let parts = subs
        .iter()
        .map(|&i| {
            let part = msg.part(i).expect("part");
            let ct = part.content_type().expect("part Content-Type");
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
        })
        .collect();
    (top, parts)
}

/// A 5xx recipient: exactly one DSN, from `<>` to the sender, multipart/report with the
/// three parts, its header and per-recipient fields as RFC 3464 and 3834 want, the
/// original's header section returned without its body; the other recipient is
/// delivered, and the DSN's own delivery makes no DSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_bounces_once_with_the_headers() {
    let server = refusing(Opts::default()).await;
    let mut d = server.legacy_session().await;
    let sent = message("bounce", "", "the body text\r\n");
    let id = submit(
        &mut d,
        &format!("MAIL FROM:<{SENDER}> ENVID=QQ+2B1"),
        &[
            "RCPT TO:<ok@example.org>",
            &format!("RCPT TO:<{BAD}> ORCPT=rfc822;Nobody+2Bx@example.org"),
        ],
        &sent,
    )
    .await;
    failed(&server, &id).await;
    let got = server
        .sink()
        .wait_for(DELIVERY, |all| notifications(all).len() == 1)
        .await;
    let dsns = notifications(&got);
    assert_eq!(dsns.len(), 1, "{got:#?}");
    let dsn = dsns[0];
    assert_eq!(dsn.rcpt_to, [SENDER]);
    let text = dsn.text();
    for field in [
        "From: Mail Delivery System <MAILER-DAEMON@relay.test>\r\n",
        &format!("To: <{SENDER}>\r\n"),
        "Subject: Undelivered Mail Returned to Sender\r\n",
        "Auto-Submitted: auto-replied\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: multipart/report; report-type=delivery-status;\r\n",
        &format!("<{BAD}>: 550 5.1.1 No such user\r\n"),
        &format!(
            "Reporting-MTA: dns; relay.test\r\nX-Postern-Queue-ID: {id}\r\n\
             Original-Envelope-Id: QQ+1\r\nArrival-Date: "
        ),
        &format!(
            "\r\n\r\nFinal-Recipient: rfc822; {BAD}\r\n\
             Original-Recipient: rfc822; Nobody+x@example.org\r\n\
             Action: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; 127.0.0.1\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 No such user\r\nLast-Attempt-Date: "
        ),
        "Content-Type: text/rfc822-headers\r\n\r\nReceived: from ",
        "X-Test: bounce\r\nSubject: test bounce\r\n\r\n--=_postern_",
    ] {
        assert!(text.contains(field), "{field:?} not in\n{text}");
    }
    assert!(!text.contains("the body text"), "{text}");
    assert!(!text.contains("ok@example.org"), "{text}");
    // Date and Message-ID are there and well-formed.
    let parsed = MessageParser::default().parse(&dsn.data).unwrap();
    assert!(parsed.date().is_some(), "{text}");
    assert!(
        parsed
            .message_id()
            .is_some_and(|m| m.ends_with("@relay.test")),
        "{text}"
    );
    assert_eq!(
        structure(&dsn.data),
        (
            "multipart/report; report-type=delivery-status".to_owned(),
            vec![
                "text/plain".to_owned(),
                "message/delivery-status".to_owned(),
                "text/rfc822-headers".to_owned()
            ]
        )
    );
    // The bounce left the queue once the sink took it: nothing else to send.
    let queue = server.spool().join("queue");
    eventually("queue empty", || {
        std::fs::read_dir(&queue).map_or(0, |e| e.count()) == 0
    })
    .await;
    assert_eq!(notifications(&server.sink().received()).len(), 1);
    assert_eq!(server.sink().violations(), Vec::<String>::new());
    server.scrape().await.expect(&[
        (r#"postern_dsn_queued_total{action="failed"}"#, 1.0),
        (r#"postern_dsn_queued_total{action="delayed"}"#, 0.0),
        (r#"postern_dsn_queued_total{action="relayed"}"#, 0.0),
    ]);
}

/// RET=FULL returns the whole message as message/rfc822; RET=HDRS only its headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ret_full_returns_the_whole_message() {
    let server = refusing(Opts::default()).await;
    let mut d = server.legacy_session().await;
    let rows = [
        ("FULL", "message/rfc822", true),
        ("HDRS", "text/rfc822-headers", false),
    ];
    for (n, (ret, part, has_body)) in rows.into_iter().enumerate() {
        let sent = message(&format!("ret-{ret}"), "", "body line\r\n.leading dot\r\n");
        let mail = format!("MAIL FROM:<{SENDER}> RET={ret}");
        let id = submit(&mut d, &mail, &[&format!("RCPT TO:<{BAD}>")], &sent).await;
        failed(&server, &id).await;
        let got = server
            .sink()
            .wait_for(DELIVERY, |all| notifications(all).len() == n + 1)
            .await;
        let dsn = notifications(&got)[n];
        let (_, parts) = structure(&dsn.data);
        assert_eq!(parts[2], part, "RET={ret}");
        let text = dsn.text();
        let third = format!("Content-Type: {part}\r\n\r\nReceived: from ");
        assert!(text.contains(&third), "RET={ret}\n{text}");
        // The returned original is byte for byte what was stored: prefix, then the message.
        let whole = String::from_utf8_lossy(&sent).into_owned();
        let headers = whole.split("\r\n\r\n").next().unwrap().to_owned() + "\r\n";
        let want = if has_body { &whole } else { &headers };
        assert!(
            text.contains(&format!("{want}\r\n--=_postern_")),
            "RET={ret}\n{text}"
        );
        assert_eq!(text.contains("body line"), has_body, "RET={ret}");
    }
}

/// No bounce for a null-sender message, nor for a recipient whose NOTIFY is NEVER or
/// leaves FAILURE out; the message is still kept in `failed/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bounce_for_null_sender_or_unwanted_notify() {
    let server = refusing(Opts::default()).await;
    let mut d = server.legacy_session().await;
    let rows = [
        ("MAIL FROM:<>".to_owned(), format!("RCPT TO:<{BAD}>")),
        (
            format!("MAIL FROM:<{SENDER}>"),
            format!("RCPT TO:<{BAD}> NOTIFY=NEVER"),
        ),
        (
            format!("MAIL FROM:<{SENDER}>"),
            format!("RCPT TO:<{BAD}> NOTIFY=SUCCESS,DELAY"),
        ),
    ];
    for (i, (mail, rcpt)) in rows.iter().enumerate() {
        let sent = message(&format!("none-{i}"), "", "x\r\n");
        let id = submit(&mut d, mail, &[rcpt], &sent).await;
        failed(&server, &id).await;
        let state = std::fs::read(server.spool().join("failed").join(format!("{id}.state")));
        let state = String::from_utf8_lossy(&state.unwrap()).into_owned();
        assert!(state.contains(r#""reported":true"#), "{state}");
    }
    // Each bounce would have been committed before its original left the queue.
    assert_eq!(
        std::fs::read_dir(server.spool().join("queue"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(notifications(&server.sink().received()).len(), 0);
}

/// queue.max_age, end to end with the injected clock: a recipient the sink always defers
/// expires, the sender gets a DSN with Action: failed and the expiry text, the message is
/// kept in `failed/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_expiry_bounces_to_the_sender() {
    let server = TestServer::start(Opts {
        queue: queue("max_age: 1h"),
        ..Opts::default()
    })
    .await;
    let late = "late@example.org";
    server.sink().fault(
        Fault::Rcpt(late.into(), "451 4.3.0 Try again later".into()),
        None,
    );
    let mut d = server.legacy_session().await;
    let sent = message("expire", "", "x\r\n");
    let id = submit(
        &mut d,
        &format!("MAIL FROM:<{SENDER}>"),
        &[&format!("RCPT TO:<{late}>")],
        &sent,
    )
    .await;
    // At least one attempt was deferred before time moves on.
    let state = server.spool().join("queue").join(format!("{id}.state"));
    eventually("first deferral", || state.is_file()).await;
    server.clock.advance(Duration::from_secs(3601));
    failed(&server, &id).await;
    let got = server
        .sink()
        .wait_for(DELIVERY, |all| notifications(all).len() == 1)
        .await;
    let dsn = notifications(&got)[0];
    assert_eq!(dsn.rcpt_to, [SENDER]);
    let text = dsn.text();
    let block = format!(
        "\r\n\r\nFinal-Recipient: rfc822; {late}\r\nAction: failed\r\nStatus: 5.4.7\r\n\
         Diagnostic-Code: X-Postern; message expired in the queue (queue.max_age)\r\n\
         Last-Attempt-Date: "
    );
    assert!(text.contains(&block), "{text}");
    assert!(
        text.contains(&format!(
            "<{late}>: message expired in the queue (queue.max_age)\r\n"
        )),
        "{text}"
    );
    assert_eq!(got.iter().filter(|m| !m.mail_from.is_empty()).count(), 0);
}

/// queue.delay_warning: one `Action: delayed` notice once the message has waited that
/// long, recorded in its state so later attempts, even after a restart, send no second
/// one; only for a recipient that asked for DELAY (or gave no NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_warning_is_sent_once() {
    let mut server = TestServer::start(Opts {
        queue: queue("delay_warning: 1h"),
        ..Opts::default()
    })
    .await;
    let late = [
        "late1@example.org",
        "late2@example.org",
        "late3@example.org",
    ];
    for rcpt in late {
        server.sink().fault(
            Fault::Rcpt(rcpt.into(), "451 4.3.0 Try again later".into()),
            None,
        );
    }
    let mut d = server.legacy_session().await;
    let sent = message("delay", "", "x\r\n");
    let id = submit(
        &mut d,
        &format!("MAIL FROM:<{SENDER}>"),
        &[
            &format!("RCPT TO:<{}>", late[0]),
            &format!("RCPT TO:<{}> NOTIFY=DELAY", late[1]),
            &format!("RCPT TO:<{}> NOTIFY=FAILURE", late[2]),
        ],
        &sent,
    )
    .await;
    let state = server.spool().join("queue").join(format!("{id}.state"));
    eventually("first deferral", || state.is_file()).await;
    server.clock.advance(Duration::from_secs(3601));
    let got = server
        .sink()
        .wait_for(DELIVERY, |all| notifications(all).len() == 1)
        .await;
    let text = notifications(&got)[0].text();
    assert!(
        text.contains("Subject: Delayed Mail (still being retried)\r\n"),
        "{text}"
    );
    for (rcpt, listed) in [(late[0], true), (late[1], true), (late[2], false)] {
        let block =
            format!("Final-Recipient: rfc822; {rcpt}\r\nAction: delayed\r\nStatus: 4.0.0\r\n");
        assert_eq!(text.contains(&block), listed, "{rcpt}\n{text}");
    }
    eventually("delay warning recorded", || {
        std::fs::read(&state)
            .is_ok_and(|s| String::from_utf8_lossy(&s).contains(r#""delay_warned":true"#))
    })
    .await;
    server
        .scrape()
        .await
        .expect(&[(r#"postern_dsn_queued_total{action="delayed"}"#, 1.0)]);
    // A restart reads the state back; two more deferred attempts: still one warning.
    server.stop().await;
    server.restart().await;
    let attempts = |s: &str| s.matches(&format!("RCPT TO:<{}>", late[0])).count();
    let seen = attempts(&server.sink().debug_dump());
    eventually("two more attempts", || {
        attempts(&server.sink().debug_dump()) >= seen + 2
    })
    .await;
    assert_eq!(notifications(&server.sink().received()).len(), 1);
    // Counted since the restart: none.
    server
        .scrape()
        .await
        .expect(&[(r#"postern_dsn_queued_total{action="delayed"}"#, 0.0)]);
}

/// EHLO lists DSN; RET, ENVID, NOTIFY and ORCPT reach an upstream that offers DSN as the
/// client gave them, and none reaches one that does not (the sink counts any unoffered
/// parameter as a violation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_are_relayed_only_where_offered() {
    for offered in [true, false] {
        let server = TestServer::start(Opts {
            sink_dsn: offered,
            ..Opts::default()
        })
        .await;
        let mut d = Dialog::connect(server.legacy).await;
        let caps = d.ehlo("client.test").await;
        assert!(caps.iter().any(|c| c == "DSN"), "{caps:?}");
        let sent = message("relay", "", "x\r\n");
        submit(
            &mut d,
            &format!("MAIL FROM:<{SENDER}> RET=HDRS ENVID=env+2Bid"),
            &[
                "RCPT TO:<a@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A@example.org",
                "RCPT TO:<b@example.org>",
            ],
            &sent,
        )
        .await;
        server.sink().expect(1);
        let m = &server.sink().wait(DELIVERY).await[0];
        let (mail, rcpt): (Vec<&str>, Vec<Vec<String>>) = if offered {
            (
                vec!["RET=HDRS", "ENVID=env+2Bid"],
                vec![
                    vec![
                        "NOTIFY=SUCCESS,FAILURE".into(),
                        "ORCPT=rfc822;A@example.org".into(),
                    ],
                    vec![],
                ],
            )
        } else {
            (vec![], vec![vec![], vec![]])
        };
        let dsn_params: Vec<&str> = m
            .mail_params
            .iter()
            .map(String::as_str)
            .filter(|p| !p.starts_with("SIZE=") && !p.starts_with("BODY="))
            .collect();
        assert_eq!(dsn_params, mail, "offered {offered}");
        assert_eq!(m.rcpt_params, rcpt, "offered {offered}");
        assert_eq!(server.sink().violations(), Vec::<String>::new());
    }
}

/// RFC 3461 4.1: a NOTIFY=SUCCESS recipient handed to an upstream without DSN gets an
/// `Action: relayed` notice from postern (a recipient that did not ask gets none); an
/// upstream that offers DSN received the parameter and reports itself, so postern sends
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_success_is_relayed_only_without_upstream_dsn() {
    for offered in [false, true] {
        let server = TestServer::start(Opts {
            sink_dsn: offered,
            ..Opts::default()
        })
        .await;
        let mut d = server.legacy_session().await;
        let sent = message("relayed", "", "x\r\n");
        let id = submit(
            &mut d,
            &format!("MAIL FROM:<{SENDER}>"),
            &[
                "RCPT TO:<asked@example.org> NOTIFY=SUCCESS,FAILURE",
                "RCPT TO:<quiet@example.org>",
            ],
            &sent,
        )
        .await;
        let want = usize::from(!offered);
        let got = server
            .sink()
            .wait_for(DELIVERY, |all| {
                all.iter().any(|m| m.mail_from == SENDER) && notifications(all).len() == want
            })
            .await;
        // The notice is queued before the original leaves the queue: once the queue is
        // empty, nothing more can come.
        let queue = server.spool().join("queue");
        eventually("queue empty", || {
            std::fs::read_dir(&queue).map_or(0, |e| e.count()) == 0
        })
        .await;
        let got = if offered {
            server.sink().received()
        } else {
            got
        };
        let dsns = notifications(&got);
        assert_eq!(dsns.len(), want, "offered {offered}: {got:#?}");
        if let Some(dsn) = dsns.first() {
            assert_eq!(dsn.rcpt_to, [SENDER]);
            let text = dsn.text();
            for field in [
                "Subject: Successful Mail Delivery Report\r\n",
                &format!("X-Postern-Queue-ID: {id}\r\n"),
                "\r\n\r\nFinal-Recipient: rfc822; asked@example.org\r\nAction: relayed\r\n\
                 Status: 2.0.0\r\nRemote-MTA: dns; 127.0.0.1\r\nDiagnostic-Code: smtp; 250 ",
                "Content-Type: text/rfc822-headers\r\n",
            ] {
                assert!(text.contains(field), "{field:?} not in\n{text}");
            }
            assert!(!text.contains("quiet@example.org"), "{text}");
        }
        server
            .scrape()
            .await
            .expect(&[(r#"postern_dsn_queued_total{action="relayed"}"#, want as f64)]);
        assert_eq!(server.sink().violations(), Vec::<String>::new());
    }
}

/// queue.bounces: `dsn` bounces and removes the failed message; `dead_letter` keeps it in
/// `failed/` and sends no DSN (`both`, the default, is every other test here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_mode_chooses_dsn_or_dead_letter() {
    for (mode, dsn, kept) in [("dsn", 1, false), ("dead_letter", 0, true)] {
        let server = refusing(Opts {
            queue: queue(&format!("bounces: {mode}")),
            ..Opts::default()
        })
        .await;
        let mut d = server.legacy_session().await;
        let sent = message(mode, "", "x\r\n");
        let mail = format!("MAIL FROM:<{SENDER}>");
        let id = submit(&mut d, &mail, &[&format!("RCPT TO:<{BAD}>")], &sent).await;
        let spool = server.spool();
        let queue = spool.join("queue");
        // Done once the queue is empty: the original left, and any bounce was delivered.
        eventually(&format!("{mode}: queue empty"), || {
            std::fs::read_dir(&queue).map_or(0, |e| e.count()) == 0
        })
        .await;
        assert_eq!(spool.join("failed").join(&id).is_file(), kept, "{mode}");
        let got = server.sink().received();
        assert_eq!(notifications(&got).len(), dsn, "{mode}: {got:#?}");
        server
            .scrape()
            .await
            .expect(&[(r#"postern_dsn_queued_total{action="failed"}"#, dsn as f64)]);
    }
}

/// With `queue.bounces: dead_letter` a recipient that asked for failure notices with
/// `NOTIFY=FAILURE` still gets one (DSN is advertised: RFC 3461 4.1 makes the request
/// binding); the message is kept in `failed/` as the mode says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_still_honours_an_explicit_notify() {
    let server = refusing(Opts {
        queue: queue("bounces: dead_letter"),
        ..Opts::default()
    })
    .await;
    let mut d = server.legacy_session().await;
    let sent = message("asked", "", "x\r\n");
    let mail = format!("MAIL FROM:<{SENDER}>");
    let rcpt = format!("RCPT TO:<{BAD}> NOTIFY=FAILURE");
    let id = submit(&mut d, &mail, &[&rcpt], &sent).await;
    let spool = server.spool();
    let queue = spool.join("queue");
    eventually("queue empty", || {
        std::fs::read_dir(&queue).map_or(0, |e| e.count()) == 0
    })
    .await;
    assert!(spool.join("failed").join(&id).is_file());
    let got = server.sink().received();
    assert_eq!(notifications(&got).len(), 1, "{got:#?}");
    server
        .scrape()
        .await
        .expect(&[(r#"postern_dsn_queued_total{action="failed"}"#, 1.0)]);
}
