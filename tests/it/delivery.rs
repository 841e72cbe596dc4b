//! End to end: client -> postern -> sink, byte for byte; the queue across upstream outages,
//! restarts and per-recipient outcomes.

use lettre::transport::smtp::authentication::Mechanism;

use crate::harness::client::{Security, lettre_send, transport};
use crate::harness::sink::Fault;
use crate::harness::{
    DELIVERY, Opts, PASSWORD, TestServer, UPSTREAM_CREDS, USER, Upstream, field_names, message,
    send_mail, split_prefix,
};

/// Test 1: each listener kind delivers the exact bytes with a Received header prefixed, and
/// Date / Message-ID are added only when missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_delivers_with_trace_and_missing_headers() {
    let server = TestServer::start(Opts::default()).await;
    let rows = [
        // (listener, security, credentials, Received "with" keyword)
        (
            "submission",
            Security::StartTls,
            Some(Mechanism::Plain),
            "ESMTPSA",
        ),
        (
            "submissions",
            Security::Implicit,
            Some(Mechanism::Login),
            "ESMTPSA",
        ),
        ("legacy", Security::Plain, None, "ESMTP"),
    ];
    let complete = "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <given@client.test>\r\n";
    for (listener, security, mech, with) in rows {
        let port = match listener {
            "submission" => server.submission.port(),
            "submissions" => server.submissions.port(),
            _ => server.legacy.port(),
        };
        let creds = mech.map(|m| (USER, PASSWORD, m));
        let t = transport(port, security, &server.ca, creds);
        for (headers, added) in [
            ("", vec!["Received", "Date", "Message-ID"]),
            (complete, vec!["Received"]),
        ] {
            let tag = format!("{listener}-{}", added.len());
            // lettre ends DATA with "\r\n.\r\n": the last line's CRLF is added by it.
            let sent = message(&tag, headers, "line one\r\nline two");
            let reply = lettre_send(&t, "alice@example.com", &["bob@example.org"], &sent).await;
            let reply = reply.unwrap_or_else(|e| panic!("{listener}: {e}"));
            assert!(reply.starts_with("250 2.0.0"), "{listener}: {reply}");
            let id = reply.rsplit_once("queued as ").unwrap().1.trim().to_owned();
            server.sink().expect(1);
            let got = server.sink().wait(DELIVERY).await;
            assert_eq!(got.len(), 1, "{listener}");
            let m = &got[0];
            assert_eq!(
                (m.mail_from.as_str(), m.rcpt_to.as_slice()),
                ("alice@example.com", &["bob@example.org".to_owned()][..])
            );
            let prefix = split_prefix(&m.data, &[&sent[..], b"\r\n"].concat());
            assert_eq!(field_names(prefix), added, "{listener}: {prefix}");
            assert!(prefix.starts_with("Received: from "), "{prefix}");
            assert!(prefix.contains("([127.0.0.1])"), "{prefix}");
            assert!(
                prefix.contains(&format!("by relay.test (postern) with {with} id {id}")),
                "{prefix}"
            );
            assert!(prefix.contains("for <bob@example.org>"), "{prefix}");
        }
    }
    assert_eq!(server.sink().violations(), Vec::<String>::new());
}

/// Each upstream security mode: STARTTLS and implicit TLS with AUTH against the test CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_modes_deliver() {
    for upstream in [
        Upstream::Plain,
        Upstream::StartTlsAuth,
        Upstream::ImplicitAuth,
    ] {
        let server = TestServer::start(Opts {
            upstream,
            ..Opts::default()
        })
        .await;
        let mut d = server.legacy_session().await;
        let sent = message("up", "", "hello\r\n");
        send_mail(
            &mut d,
            "dev@example.net",
            &["x@example.org", "y@example.org"],
            &sent,
        )
        .await;
        server.sink().expect(1);
        let m = &server.sink().wait(DELIVERY).await[0];
        split_prefix(&m.data, &sent);
        assert_eq!(
            m.rcpt_to,
            ["x@example.org", "y@example.org"],
            "{upstream:?}"
        );
        let secure = upstream != Upstream::Plain;
        assert_eq!(m.tls, secure, "{upstream:?}");
        assert_eq!(
            m.auth.as_deref(),
            secure.then_some(UPSTREAM_CREDS.0),
            "{upstream:?}"
        );
        assert_eq!(
            server.sink().violations(),
            Vec::<String>::new(),
            "{upstream:?}"
        );
    }
}

/// Test 6: 8-bit bytes and dot-stuffing survive both hops unchanged; BODY=8BITMIME is passed
/// on (RFC 6152 section 3: 8-bit content must be announced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_body_and_dot_stuffing_round_trip() {
    let high: Vec<u8> = (0x80..=0xFFu8).collect();
    let mut body = b"X-Test: 8bit\r\nSubject: caf\xc3\xa9\r\n\r\n".to_vec();
    for chunk in high.chunks(32) {
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n..\r\n.x\r\n...\r\n .\r\nend .\r\n.\r\n");
    for upstream in [Upstream::Plain, Upstream::StartTlsAuth] {
        let server = TestServer::start(Opts {
            upstream,
            ..Opts::default()
        })
        .await;
        let mut d = server.legacy_session().await;
        d.cmd("MAIL FROM:<dev@example.net> BODY=8BITMIME", "250 2.1.0")
            .await;
        d.cmd("RCPT TO:<x@example.org>", "250 2.1.5").await;
        d.cmd("DATA", "354").await;
        d.send([crate::harness::dot_stuff(&body), b".\r\n".to_vec()].concat())
            .await;
        d.expect("250 2.0.0").await;
        server.sink().expect(1);
        let m = &server.sink().wait(DELIVERY).await[0];
        split_prefix(&m.data, &body);
        assert!(
            m.mail_params
                .iter()
                .any(|p| p.eq_ignore_ascii_case("BODY=8BITMIME")),
            "{:?}",
            m.mail_params
        );
    }
}

/// Test 10: with the upstream down the message is accepted and kept; once it is up, the
/// retry delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_then_up_delivers_on_retry() {
    let mut server = TestServer::start(Opts {
        sink_down: true,
        ..Opts::default()
    })
    .await;
    let mut d = server.legacy_session().await;
    let sent = message("down", "", "queued while down\r\n");
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &sent).await;
    d.cmd("QUIT", "221").await;
    assert!(spool_files(&server.spool()) > 0, "nothing in the spool");
    server.sink_up().await;
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 1);
    split_prefix(&got[0].data, &sent);
}

/// Test 11: messages queued while the upstream is down survive a restart and are delivered
/// exactly once each by the new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_delivers_spooled_messages_once() {
    let mut server = TestServer::start(Opts {
        sink_down: true,
        ..Opts::default()
    })
    .await;
    let mut sent = Vec::new();
    let mut d = server.legacy_session().await;
    for i in 0..3 {
        let m = message(&format!("spooled-{i}"), "", "survives a restart\r\n");
        send_mail(&mut d, "dev@example.net", &["x@example.org"], &m).await;
        sent.push(m);
    }
    d.cmd("QUIT", "221").await;
    server.stop().await;
    server.sink_up().await;
    server.restart().await;
    // A sentinel sent after the restart: once it is in, a duplicate would have had its chance.
    let sentinel = message("sentinel", "", "last\r\n");
    let mut d = server.legacy_session().await;
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &sentinel).await;
    server.sink().expect(4);
    let got = server.sink().wait_for(DELIVERY, |all| all.len() >= 4).await;
    for m in sent.iter().chain([&sentinel]) {
        let n = got.iter().filter(|g| g.data.ends_with(m)).count();
        assert_eq!(
            n,
            1,
            "{} arrived {n} times",
            String::from_utf8_lossy(&m[..20])
        );
    }
    assert_eq!(got.len(), 4);
}

/// Test 12a: one recipient refused with 5xx does not fail the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_rcpt_failure_spares_the_others() {
    let server = TestServer::start(Opts::default()).await;
    let bad = "nobody@example.org";
    server.sink().fault(
        Fault::Rcpt(bad.into(), "550 5.1.1 No such user".into()),
        None,
    );
    let mut d = server.legacy_session().await;
    let sent = message("perm", "", "to three\r\n");
    send_mail(
        &mut d,
        "dev@example.net",
        &["a@example.org", bad, "b@example.org"],
        &sent,
    )
    .await;
    let got = server
        .sink()
        .wait_for(DELIVERY, |all| {
            all.iter().any(|m| m.mail_from == "dev@example.net")
        })
        .await;
    let delivered: Vec<_> = got
        .iter()
        .filter(|m| m.mail_from == "dev@example.net")
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].rcpt_to, ["a@example.org", "b@example.org"]);
    split_prefix(&delivered[0].data, &sent);
}

/// Test 12b: a recipient deferred with 4xx is retried alone, and arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_rcpt_failure_is_retried_alone() {
    let server = TestServer::start(Opts::default()).await;
    let later = "later@example.org";
    server.sink().fault(
        Fault::Rcpt(later.into(), "450 4.2.1 Mailbox busy".into()),
        Some(1),
    );
    let mut d = server.legacy_session().await;
    let sent = message("temp", "", "to two\r\n");
    send_mail(
        &mut d,
        "dev@example.net",
        &["now@example.org", later],
        &sent,
    )
    .await;
    server.sink().expect(2);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].rcpt_to, ["now@example.org"]);
    assert_eq!(got[1].rcpt_to, [later]);
    for m in &got {
        split_prefix(&m.data, &sent);
    }
}

/// A 4xx after the final dot is retried; a drop after the dot ("maybe delivered") too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_end_failures_are_retried() {
    // (fault, connections the sink must have seen: a drop forces a new one)
    for (fault, conns) in [
        (Fault::DataEnd("451 4.3.0 Try again".into()), 1),
        (Fault::DropAfterDot, 2),
    ] {
        let server = TestServer::start(Opts::default()).await;
        server.sink().fault(fault.clone(), Some(1));
        let mut d = server.legacy_session().await;
        let sent = message("retry", "", "again\r\n");
        send_mail(&mut d, "dev@example.net", &["x@example.org"], &sent).await;
        server.sink().expect(1);
        let got = server.sink().wait(DELIVERY).await;
        assert_eq!(got.len(), 1, "{fault:?}");
        split_prefix(&got[0].data, &sent);
        assert!(server.sink().connections() >= conns, "{fault:?}");
    }
}

/// Counts regular files under `dir`, recursively (bounded depth).
pub fn spool_files(dir: &std::path::Path) -> usize {
    fn walk(dir: &std::path::Path, depth: u32) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                if path.is_dir() && depth < 4 {
                    walk(&path, depth + 1)
                } else {
                    usize::from(path.is_file())
                }
            })
            .sum()
    }
    walk(dir, 0)
}
