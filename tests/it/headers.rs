//! Sender identity in the headers (`sender_check: header`) and sender rewriting
//! (`rewrite_mode: header | collapse`), over real sessions, asserting what reached the sink
//! byte for byte.
//!
//! alice may send as `alice@example.com` and `@alice.example`; the legacy client
//! (127.0.0.1) is made a device identity where rewriting is tested.

use crate::harness::client::Dialog;
use crate::harness::{DELIVERY, Opts, PLAIN_TOKEN, TestServer, dot_stuff, split_prefix};

/// Header sections (fields only; the test adds the empty line and a body) that alice may
/// send under `sender_check: header`.
const ACCEPTED: &[&str] = &[
    "From: Alice <alice@example.com>\r\n",
    "From: alice@example.com (Alice at work)\r\n",
    "From: Alice\r\n  <alice@example.com>\r\n",
    "From: =?UTF-8?B?w4FsaWNl?= <alice@example.com>\r\n",
    "From: \"ceo@corp.example, the boss\" <alice@example.com>\r\n",
    "From: Team: alice@example.com, bob@alice.example;\r\n",
    "From: alice@example.com, Bob <bob@alice.example>\r\nSender: alice@example.com\r\n",
    "Subject: no originator fields at all\r\n",
    "from: ALICE@EXAMPLE.COM\r\n",
];

/// Header sections she may not send, with the field and address the refusal names.
const REFUSED: &[(&str, &str)] = &[
    (
        "From: ceo@corp.example\r\n",
        "From: header address <ceo@corp.example>",
    ),
    (
        "From: alice@example.com\r\nFrom: ceo@corp.example\r\n",
        "From: header address <ceo@corp.example>",
    ),
    (
        "From: Team: alice@example.com, ceo@corp.example;\r\n",
        "From: header address <ceo@corp.example>",
    ),
    (
        "From: \"alice@example.com\" <ceo@corp.example>\r\n",
        "From: header address <ceo@corp.example>",
    ),
    (
        "From: Alice\r\n <ceo@corp.example>\r\n",
        "From: header address <ceo@corp.example>",
    ),
    (
        "From: alice@example.com\r\nSender: ceo@corp.example\r\n",
        "Sender: header address <ceo@corp.example>",
    ),
    (
        "From: =?UTF-8?B?Y2VvQGNvcnAuZXhhbXBsZQ==?=\r\n",
        "From: header address",
    ),
    ("From: undisclosed\r\n", "From: header address"),
];

/// Sends `data` (not yet dot-stuffed) after MAIL and RCPT; returns the final reply's line.
async fn submit(d: &mut crate::harness::client::Dialog, from: &str, data: &[u8]) -> String {
    d.cmd(&format!("MAIL FROM:<{from}>"), "250 2.1.0").await;
    d.cmd("RCPT TO:<x@example.org>", "250 2.1.5").await;
    d.cmd("DATA", "354").await;
    d.send([dot_stuff(data), b".\r\n".to_vec()].concat()).await;
    d.try_reply().await.expect("closed").first().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_senders_accepted_and_refused() {
    let server = TestServer::start(Opts::with("sender_check: header\n")).await;
    let mut d = server.submission_session().await;
    let mut sent = Vec::new();
    for (i, fields) in ACCEPTED.iter().enumerate() {
        let data = format!("{fields}X-Row: {i}\r\n\r\nbody {i}\r\n").into_bytes();
        let reply = submit(&mut d, "alice@example.com", &data).await;
        assert!(
            reply.starts_with("250 2.0.0"),
            "row {i} {fields:?}: {reply}"
        );
        sent.push(data);
    }
    for (i, (fields, names)) in REFUSED.iter().enumerate() {
        let data = format!("{fields}X-Refused: {i}\r\n\r\nbody\r\n").into_bytes();
        let reply = submit(&mut d, "alice@example.com", &data).await;
        let want = format!("550 5.7.1 Error: {names}");
        assert!(reply.starts_with(&want), "row {i} {fields:?}: {reply}");
        // RFC 5321 4.1.1.4: the refusal clears the transaction; the session goes on.
        d.cmd("NOOP", "250 2.0.0").await;
    }
    // A last accepted message, committed after every refused one: once it has arrived,
    // a refused message that had been queued would have had its chance to arrive too.
    let sentinel = b"From: alice@example.com\r\nX-Sentinel: last\r\n\r\nend\r\n";
    let reply = submit(&mut d, "alice@example.com", sentinel).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    d.cmd("QUIT", "221").await;
    let got = server
        .sink()
        .wait_for(DELIVERY, |m| {
            m.len() > ACCEPTED.len() && m.iter().any(|m| m.text().contains("X-Sentinel"))
        })
        .await;
    assert_eq!(
        got.len(),
        ACCEPTED.len() + 1,
        "a refused message was delivered"
    );
    assert!(!got.iter().any(|m| m.text().contains("X-Refused")));
    for data in &sent {
        let m = got
            .iter()
            .find(|m| m.data.ends_with(data))
            .expect("missing");
        split_prefix(&m.data, data);
    }
}

/// The envelope check alone (the default) lets a foreign From through; `sender_check` on
/// the listener turns the header check on for it only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_check_is_opt_in_per_listener() {
    let server = TestServer::start(Opts::with("")).await;
    let mut d = server.submission_session().await;
    let data = b"From: ceo@corp.example\r\n\r\nbody\r\n";
    let reply = submit(&mut d, "alice@example.com", data).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let server = TestServer::start(Opts {
        submission: "sender_check: header".into(),
        ..Opts::default()
    })
    .await;
    let mut d = server.submission_session().await;
    let reply = submit(&mut d, "alice@example.com", data).await;
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    // The other listeners keep the top-level envelope check.
    let mut implicit = Dialog::connect_tls(server.submissions, &server.ca).await;
    implicit.ehlo("client.test").await;
    implicit
        .cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "235 2.7.0")
        .await;
    let reply = submit(&mut implicit, "alice@example.com", data).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
}

/// `limits.max_header_size` bounds the header section held back: a larger one is refused
/// with `552 5.3.4`, the session goes on, and nothing is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_section_is_refused() {
    let server = TestServer::start(Opts::with(
        "sender_check: header\nlimits: {max_header_size: 1KiB}\n",
    ))
    .await;
    let mut d = server.submission_session().await;
    let pad = "a".repeat(1024);
    let data = format!("From: alice@example.com\r\nX-Pad: {pad}\r\n\r\nbody\r\n");
    let reply = submit(&mut d, "alice@example.com", data.as_bytes()).await;
    assert_eq!(reply, "552 5.3.4 Error: message header section too large");
    let small = b"From: alice@example.com\r\n\r\nbody\r\n";
    let reply = submit(&mut d, "alice@example.com", small).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let got = server.sink().wait_for(DELIVERY, |m| !m.is_empty()).await;
    assert_eq!(got.len(), 1);
    split_prefix(&got[0].data, small);
}

/// The printer case: a device network rewrites `scanner@localhost` to the relay account in
/// the envelope and in `From:`, keeping the display name; every other byte is the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_rewrite_envelope_and_from() {
    let server = TestServer::start(Opts::with(
        "networks:\n  - {network: 127.0.0.1/32, senders: [\"@localhost\"], \
         rewrite_sender: scans@corp.example, rewrite_mode: header}\n",
    ))
    .await;
    let mut d = server.legacy_session().await;
    let head = "Subject: Scan 42\r\nFrom: \"Scanner, 3rd floor\" <scanner@localhost>\r\n";
    let tail = "X-Device: mfp\r\n\r\nscan attached\r\n.leading dot\r\n";
    let data = format!("{head}{tail}");
    let reply = submit(&mut d, "scanner@localhost", data.as_bytes()).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let got = server.sink().wait_for(DELIVERY, |m| !m.is_empty()).await;
    assert_eq!(got[0].mail_from, "scans@corp.example");
    let want =
        format!("Subject: Scan 42\r\nFrom: \"Scanner, 3rd floor\" <scans@corp.example>\r\n{tail}");
    split_prefix(&got[0].data, want.as_bytes());
}

/// Collapse: `From:` becomes the mailbox and the original goes to `Reply-To:`, unless the
/// message has one already; the null sender stays null in the envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_collapse_to_one_mailbox() {
    let server = TestServer::start(Opts::with("")).await;
    server.edit_config(|cfg| {
        cfg.replace(
            "senders: [\"alice@example.com\", \"@alice.example\"]}",
            "senders: [\"alice@example.com\", \"@alice.example\"], \
             rewrite_sender: relay@example.com, rewrite_mode: collapse}",
        )
    });
    server.reload().await.unwrap();
    let mut d = server.submission_session().await;
    let plain = "From: Alerts <alerts@alice.example>\r\nSubject: disk\r\n\r\nfull\r\n";
    let reply = submit(&mut d, "alerts@alice.example", plain.as_bytes()).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let with_reply_to = "From: alice@example.com\r\nReply-To: team@alice.example\r\n\r\nhi\r\n";
    let reply = submit(&mut d, "", with_reply_to.as_bytes()).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let got = server.sink().wait_for(DELIVERY, |m| m.len() == 2).await;
    let first = got
        .iter()
        .find(|m| m.mail_from == "relay@example.com")
        .unwrap();
    split_prefix(
        &first.data,
        b"From: Alerts <relay@example.com>\r\nReply-To: Alerts <alerts@alice.example>\r\n\
          Subject: disk\r\n\r\nfull\r\n",
    );
    let bounce = got.iter().find(|m| m.mail_from.is_empty()).unwrap();
    split_prefix(
        &bounce.data,
        b"From: relay@example.com\r\nReply-To: team@alice.example\r\n\r\nhi\r\n",
    );
}
