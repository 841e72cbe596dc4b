//! Who may connect, authenticate and send as whom: AUTH (RFC 4954, 4616), the STARTTLS
//! requirement (RFC 3207, 6409), listener allowlists and sender identities.

use std::net::{IpAddr, Ipv4Addr};

use crate::harness::client::Dialog;
use crate::harness::{DELIVERY, Opts, PLAIN_TOKEN, TestServer, message, send_mail, split_prefix};

/// When a row's script runs: on the plain connection or after STARTTLS + EHLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    BeforeTls,
    AfterTls,
}

/// One dialogue: (name, stage, [(client line, reply prefix)]).
type Row<'a> = (&'a str, Stage, Vec<(&'a str, &'a str)>);

/// Test 2: AUTH good and bad, malformed responses, and the order rules, on the submission
/// listener. Each row is a fresh connection: (name, stage, [(client line, reply prefix)]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_dialogues() {
    let server = TestServer::start(Opts::default()).await;
    let plain_ok = format!("AUTH PLAIN {PLAIN_TOKEN}");
    let rows: Vec<Row<'_>> = vec![
        (
            "AUTH before TLS",
            Stage::BeforeTls,
            vec![(plain_ok.as_str(), "530 5.7.0")],
        ),
        (
            "MAIL before TLS",
            Stage::BeforeTls,
            vec![("MAIL FROM:<alice@example.com>", "530 5.7.0")],
        ),
        (
            "MAIL before AUTH",
            Stage::AfterTls,
            vec![("MAIL FROM:<alice@example.com>", "530 5.7.0")],
        ),
        (
            "PLAIN good, then MAIL",
            Stage::AfterTls,
            vec![
                (plain_ok.as_str(), "235 2.7.0"),
                ("MAIL FROM:<alice@example.com>", "250 2.1.0"),
            ],
        ),
        (
            // RFC 4616 2: alice may not authorize as bob.
            "PLAIN with another authorization identity",
            Stage::AfterTls,
            vec![("AUTH PLAIN Ym9iAGFsaWNlAGFsaWNlLXB3", "535 5.7.8")],
        ),
        (
            "PLAIN bad password",
            Stage::AfterTls,
            vec![("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8")],
        ),
        (
            "PLAIN unknown user",
            Stage::AfterTls,
            vec![("AUTH PLAIN AG1hbGxvcnkAYWxpY2UtcHc=", "535 5.7.8")],
        ),
        (
            "PLAIN without IR",
            Stage::AfterTls,
            vec![("AUTH PLAIN", "334"), (PLAIN_TOKEN, "235 2.7.0")],
        ),
        (
            "PLAIN bad base64",
            Stage::AfterTls,
            vec![("AUTH PLAIN !!!not-base64!!!", "501 5.5.2")],
        ),
        (
            "PLAIN bad base64 after 334",
            Stage::AfterTls,
            vec![("AUTH PLAIN", "334"), ("%%%", "501 5.5.2")],
        ),
        (
            "LOGIN good",
            Stage::AfterTls,
            vec![
                ("AUTH LOGIN", "334 VXNlcm5hbWU6"),
                ("YWxpY2U=", "334 UGFzc3dvcmQ6"),
                ("YWxpY2UtcHc=", "235 2.7.0"),
            ],
        ),
        (
            "LOGIN with IR",
            Stage::AfterTls,
            vec![
                ("AUTH LOGIN YWxpY2U=", "334 UGFzc3dvcmQ6"),
                ("YWxpY2UtcHc=", "235 2.7.0"),
            ],
        ),
        (
            "LOGIN bad password",
            Stage::AfterTls,
            vec![
                ("AUTH LOGIN", "334 VXNlcm5hbWU6"),
                ("YWxpY2U=", "334 UGFzc3dvcmQ6"),
                ("d3Jvbmc=", "535 5.7.8"),
            ],
        ),
        (
            "LOGIN bad base64",
            Stage::AfterTls,
            vec![("AUTH LOGIN", "334 VXNlcm5hbWU6"), ("@@@", "501 5.5.2")],
        ),
        (
            "cancelled",
            Stage::AfterTls,
            vec![("AUTH LOGIN", "334"), ("*", "501")],
        ),
        (
            "unknown mechanism",
            Stage::AfterTls,
            vec![("AUTH CRAM-MD5", "504 5.5.4")],
        ),
        (
            "AUTH twice",
            Stage::AfterTls,
            vec![
                (plain_ok.as_str(), "235 2.7.0"),
                (plain_ok.as_str(), "503 5.5.1"),
            ],
        ),
        (
            "retry after failure",
            Stage::AfterTls,
            vec![
                ("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8"),
                (plain_ok.as_str(), "235 2.7.0"),
            ],
        ),
    ];
    for (name, stage, script) in rows {
        let mut d = Dialog::connect(server.submission).await;
        d.ehlo("client.test").await;
        if stage == Stage::AfterTls {
            d.starttls(&server.ca).await;
            d.ehlo("client.test").await;
        }
        for (line, want) in script {
            d.send(format!("{line}\r\n")).await;
            let reply = d
                .try_reply()
                .await
                .unwrap_or_else(|| panic!("{name}: closed after {line:?}"));
            assert!(
                reply.first().starts_with(want),
                "{name}: {line:?} -> {:?}, want {want:?}",
                reply.lines
            );
        }
        // The session is still in step after every row.
        d.cmd("NOOP", "250 2.0.0").await;
    }
}

/// Test 2: AUTH is advertised only under TLS; STARTTLS only before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehlo_advertises_auth_only_under_tls() {
    let server = TestServer::start(Opts::default()).await;
    let has_auth = |caps: &[String]| {
        caps.iter()
            .any(|c| c.to_ascii_uppercase().starts_with("AUTH"))
    };
    let mechs_ok = |caps: &[String]| {
        caps.iter().any(|c| {
            let c = c.to_ascii_uppercase();
            c.starts_with("AUTH ") && c.contains("PLAIN") && c.contains("LOGIN")
        })
    };
    let mut d = Dialog::connect(server.submission).await;
    let caps = d.ehlo("client.test").await;
    assert!(
        !has_auth(&caps) && caps.contains(&"STARTTLS".to_owned()),
        "{caps:?}"
    );
    d.starttls(&server.ca).await;
    let caps = d.ehlo("client.test").await;
    assert!(
        mechs_ok(&caps) && !caps.contains(&"STARTTLS".to_owned()),
        "{caps:?}"
    );

    let mut d = Dialog::connect_tls(server.submissions, &server.ca).await;
    let caps = d.ehlo("client.test").await;
    assert!(
        mechs_ok(&caps) && !caps.contains(&"STARTTLS".to_owned()),
        "{caps:?}"
    );

    let mut d = Dialog::connect(server.legacy).await;
    let caps = d.ehlo("client.test").await;
    assert!(
        !has_auth(&caps) && !caps.contains(&"STARTTLS".to_owned()),
        "{caps:?}"
    );
    assert!(
        caps.contains(&"PIPELINING".to_owned()) && caps.contains(&"8BITMIME".to_owned()),
        "{caps:?}"
    );
}

/// Test 3: a client outside the legacy listener's allowlist gets 554 5.7.1 and is closed;
/// 127.0.0.1 is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_refuses_other_addresses() {
    let server = TestServer::start(Opts::default()).await;
    let rows = [
        (Ipv4Addr::new(127, 0, 0, 2), false),
        (Ipv4Addr::new(127, 0, 0, 1), true),
    ];
    for (from, admitted) in rows {
        let mut d = Dialog::connect_from(IpAddr::V4(from), server.legacy).await;
        if admitted {
            d.expect("220 ").await;
            d.cmd("EHLO client.test", "250").await;
            d.cmd("QUIT", "221").await;
        } else {
            d.expect("554 5.7.1").await;
            d.expect_closed().await;
        }
    }
}

/// Test 4: an authenticated user may send only as the addresses configured for her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_identity_is_enforced() {
    let server = TestServer::start(Opts::default()).await;
    let rows = [
        ("alice@example.com", "250 2.1.0"),
        ("anyone@alice.example", "250 2.1.0"),
        ("mallory@example.com", "553 5.7.1"),
        ("alice@example.org", "553 5.7.1"),
        ("alice@example.com.evil.test", "553 5.7.1"),
    ];
    let mut d = server.submission_session().await;
    for (sender, want) in rows {
        d.cmd(&format!("MAIL FROM:<{sender}>"), want).await;
        d.cmd("RSET", "250").await;
    }
    let sent = message("identity", "", "as alice\r\n");
    send_mail(&mut d, "anyone@alice.example", &["bob@example.org"], &sent).await;
    server.sink().expect(1);
    let m = &server.sink().wait(DELIVERY).await[0];
    assert_eq!(m.mail_from, "anyone@alice.example");
    split_prefix(&m.data, &sent);
}

/// The printer case: a device identity limits its senders and rewrites the envelope sender
/// (only the envelope: the message bytes are untouched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_identity_rewrites_sender() {
    let extra = "networks:\n  - {network: 127.0.0.1/32, senders: [\"@printer.example\"], rewrite_sender: scans@example.com}\n";
    let server = TestServer::start(Opts::with(extra)).await;
    let mut d = server.legacy_session().await;
    d.cmd("MAIL FROM:<evil@other.example>", "553 5.7.1").await;
    d.cmd("RSET", "250").await;
    let sent = message("scan", "From: scanner@printer.example\r\n", "scanned\r\n");
    send_mail(
        &mut d,
        "scanner@printer.example",
        &["boss@example.org"],
        &sent,
    )
    .await;
    server.sink().expect(1);
    let m = &server.sink().wait(DELIVERY).await[0];
    assert_eq!(m.mail_from, "scans@example.com");
    split_prefix(&m.data, &sent);
}
