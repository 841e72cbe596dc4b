//! The harness checked on its own (no postern): the sink against lettre and raw dialogues,
//! so a failure elsewhere is postern's, not the sink's.

use std::time::Duration;

use lettre::transport::smtp::authentication::Mechanism;

use crate::harness::ca::TestCa;
use crate::harness::client::{Dialog, Security, lettre_send, transport};
use crate::harness::sink::{Fault, Sink, SinkOptions, reserve_port};

const WAIT: Duration = Duration::from_secs(10);

fn secure_sink_opts(ca: &TestCa) -> SinkOptions {
    SinkOptions {
        starttls: Some(ca.server_config()),
        require_tls: true,
        auth: Some(("relay".into(), "s3cret".into())),
        ..SinkOptions::default()
    }
}

#[tokio::test]
async fn sink_records_lettre_tls_auth_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    // lettre always ends DATA with "\r\n.\r\n", so a body without a final CRLF gets one.
    let body = b"Subject: hi\r\n\r\n.leading dot\r\n..two\r\n.\r\n8bit \xe9\xff";
    for security in [Security::StartTls, Security::Implicit] {
        let opts = SinkOptions {
            implicit_tls: security == Security::Implicit,
            ..secure_sink_opts(&ca)
        };
        let sink = Sink::start(opts).await;
        for mech in [Mechanism::Plain, Mechanism::Login] {
            let t = transport(sink.port(), security, &ca, Some(("relay", "s3cret", mech)));
            let to = ["b@example.org", "c@example.org"];
            let reply = lettre_send(&t, "a@example.com", &to, body).await.unwrap();
            assert!(reply.starts_with("250 "), "{reply}");
        }
        sink.expect(2);
        let got = sink.wait(WAIT).await;
        assert_eq!(got.len(), 2);
        for m in &got {
            assert_eq!(m.data, [&body[..], b"\r\n"].concat());
            assert_eq!(m.mail_from, "a@example.com");
            assert_eq!(m.rcpt_to, ["b@example.org", "c@example.org"]);
            assert!(m.tls);
            assert_eq!(m.auth.as_deref(), Some("relay"));
        }
        assert_eq!(sink.violations(), Vec::<String>::new());
    }
}

#[tokio::test]
async fn sink_enforces_tls_and_auth_order() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let sink = Sink::start(secure_sink_opts(&ca)).await;
    let mut d = Dialog::connect(sink.addr()).await;
    let caps = d.ehlo("t").await;
    assert!(caps.contains(&"STARTTLS".to_owned()), "{caps:?}");
    assert!(!caps.iter().any(|c| c.starts_with("AUTH")), "{caps:?}");
    d.cmd("AUTH PLAIN AHJlbGF5AHMzY3JldA==", "530 5.7.0").await;
    d.cmd("MAIL FROM:<a@example.com>", "530 5.7.0").await;
    d.starttls(&ca).await;
    d.cmd("MAIL FROM:<a@example.com>", "530 5.7.0").await;
    let caps = d.ehlo("t").await;
    assert!(caps.contains(&"AUTH PLAIN LOGIN".to_owned()), "{caps:?}");
    d.cmd("AUTH PLAIN AHJlbGF5AHdyb25n", "535 5.7.8").await;
    d.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    d.cmd("cmVsYXk=", "334 UGFzc3dvcmQ6").await;
    d.cmd("czNjcmV0", "235 2.7.0").await;
    d.cmd("QUIT", "221").await;
    d.expect_closed().await;
}

#[tokio::test]
async fn sink_pipelining_and_faults() {
    let sink = Sink::start(SinkOptions::default()).await;
    sink.fault(
        Fault::Rcpt("bad@example.org".into(), "550 5.1.1 No such user".into()),
        None,
    );
    sink.fault(
        Fault::Rcpt("later@example.org".into(), "450 4.2.0 Try later".into()),
        Some(1),
    );
    sink.fault(Fault::DataEnd("451 4.3.0 Oops".into()), Some(1));
    let mut d = Dialog::connect(sink.addr()).await;
    d.ehlo("t").await;
    let tx = "MAIL FROM:<a@example.com> BODY=8BITMIME\r\nRCPT TO:<bad@example.org>\r\n\
              RCPT TO:<later@example.org>\r\nRCPT TO:<ok@example.org>\r\nDATA\r\n";
    d.send(tx).await;
    for prefix in ["250 2.1.0", "550 5.1.1", "450 4.2.0", "250 2.1.5", "354"] {
        d.expect(prefix).await;
    }
    d.send("x\r\n.\r\n").await;
    d.expect("451 4.3.0").await;
    d.send(tx).await;
    for prefix in ["250 2.1.0", "550 5.1.1", "250 2.1.5", "250 2.1.5", "354"] {
        d.expect(prefix).await;
    }
    d.send("x\r\n..\r\n.\r\n").await;
    d.expect("250 2.0.0").await;
    sink.expect(1);
    let got = sink.wait(WAIT).await;
    assert_eq!(got[0].rcpt_to, ["later@example.org", "ok@example.org"]);
    assert_eq!(got[0].mail_params, ["BODY=8BITMIME"]);
    assert_eq!(got[0].data, b"x\r\n.\r\n");
    assert_eq!(sink.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn sink_drop_after_dot_and_greeting_fault() {
    let sink = Sink::start(SinkOptions {
        pipelining: false,
        ..SinkOptions::default()
    })
    .await;
    sink.fault(Fault::Greeting("421 4.3.2 Busy".into()), Some(1));
    sink.fault(Fault::DropAfterDot, Some(1));
    let mut d = Dialog::connect_silent(sink.addr()).await;
    d.expect("421 4.3.2").await;
    d.expect_closed().await;
    let mut d = Dialog::connect(sink.addr()).await;
    d.ehlo("t").await;
    d.cmd("MAIL FROM:<>", "250").await;
    d.cmd("RCPT TO:<x@example.org>", "250").await;
    d.cmd("DATA", "354").await;
    d.send("body\r\n.\r\n").await;
    d.expect_closed().await;
    assert!(sink.received().is_empty());
    // Without PIPELINING offered, a pipelined group is recorded as a violation.
    let mut d = Dialog::connect(sink.addr()).await;
    d.send("EHLO t\r\nNOOP\r\n").await;
    d.expect("250").await;
    d.expect("250 2.0.0").await;
    assert_eq!(sink.connections(), 3);
    assert_eq!(sink.violations().len(), 1, "{:?}", sink.violations());
}

#[tokio::test]
async fn sink_reserved_port_refuses_until_started() {
    let port = reserve_port();
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err());
    let sink = Sink::start_on(port, SinkOptions::default()).await;
    assert_eq!(sink.port(), port);
    let mut d = Dialog::connect(sink.addr()).await;
    d.cmd("QUIT", "221").await;
    drop(sink);
    // Dropping the sink closes its listener; the port refuses again (bounded retries while
    // the aborted accept task is torn down).
    let mut closed = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(closed);
}
