//! Lines too long for the wire (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6): postern never sends a
//! line over 998 octets. By default it wraps them (header fields folded at whitespace, a
//! header without whitespace and body lines broken with CRLF SPACE, as Postfix does);
//! `smtp.long_lines: reject` refuses the message at the end of DATA with `550 5.6.0`.
//!
//! The sink records a violation for any line over 998 octets and for a SIZE smaller than
//! what arrived.

use crate::harness::client::Dialog;
use crate::harness::{DELIVERY, Opts, TestServer, send_mail, split_prefix};

/// One folding unit of the long header: a space and nine octets.
const SEG: &str = " wwwwwwwww";

/// The client's message: a 5,007-octet field with spaces, a 5,009-octet field without
/// (after its name), a 5,000-octet body line that starts with a dot, and lines around.
fn long_message() -> Vec<u8> {
    format!(
        "X-Test: long\r\nX-Long:{}\r\nX-Token: {}\r\nSubject: long lines\r\n\r\n\
         short line\r\n.{}\r\nend\r\n",
        SEG.repeat(500),
        "t".repeat(5000),
        "b".repeat(4999),
    )
    .into_bytes()
}

/// What the upstream must get for [`long_message`], written out by hand.
fn long_message_wrapped() -> Vec<u8> {
    // Folded before the space that leaves the most on each line (997, then 990 octets).
    let x_long = format!(
        "X-Long:{}\r\n{}{}\r\n",
        SEG.repeat(99),
        format!("{}\r\n", SEG.repeat(99)).repeat(4),
        SEG.repeat(5)
    );
    // Folded at its only space, then broken the Postfix way: 997 octets after the space.
    let t = "t".repeat(997);
    let x_token = format!(
        "X-Token:\r\n {t}{}\r\n {}\r\n",
        format!("\r\n {t}").repeat(4),
        "t".repeat(15)
    );
    // Body: 998 octets, then CRLF SPACE + 997 octets, as often as needed.
    let b = "b".repeat(997);
    let body = format!(
        ".{b}{}\r\n {}\r\n",
        format!("\r\n {b}").repeat(4),
        "b".repeat(14)
    );
    format!(
        "X-Test: long\r\n{x_long}{x_token}Subject: long lines\r\n\r\nshort line\r\n{body}end\r\n"
    )
    .into_bytes()
}

/// The default (`wrap`): the exact wrapped bytes arrive, no line over 998 octets, SIZE
/// declared exactly; postern's own Received field, made long by a 980-octet EHLO name, is
/// folded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_wrapped_on_the_way_out() {
    let server = TestServer::start(Opts::default()).await;
    let helo = "h".repeat(980);
    let mut d = Dialog::connect(server.legacy).await;
    d.ehlo(&helo).await;
    let sent = long_message();
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &sent).await;
    d.cmd("QUIT", "221").await;

    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 1, "{}", server.sink().debug_dump());
    let m = &got[0];
    let prefix = split_prefix(&m.data, &long_message_wrapped());
    assert!(
        prefix.starts_with(&format!("Received: from {helo}\r\n ([127.0.0.1])\r\n")),
        "{prefix}"
    );
    // RFC 1870 5: the declared size is what was sent, wrapping included.
    let size = format!("SIZE={}", m.data.len());
    assert!(m.mail_params.contains(&size), "{:?} {size}", m.mail_params);
    assert_eq!(server.sink().violations(), Vec::<String>::new());
}

/// `smtp.long_lines: reject`: 550 5.6.0 at the end of DATA, counted as `long_line`,
/// nothing queued; the session goes on and the next (normal) message is the only one that
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_rejected_when_configured() {
    let server = TestServer::start(Opts::with("smtp: {long_lines: reject}\n")).await;
    let mut d = server.legacy_session().await;
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0").await;
    d.cmd("RCPT TO:<x@example.org>", "250 2.1.5").await;
    d.cmd("DATA", "354").await;
    d.send(
        [
            crate::harness::dot_stuff(&long_message()),
            b".\r\n".to_vec(),
        ]
        .concat(),
    )
    .await;
    let reply = d.expect("550 5.6.0").await;
    assert_eq!(
        reply.first(),
        "550 5.6.0 Error: message has a line longer than 998 octets (RFC 5322 2.1.1)"
    );
    let queue = server.spool().join("queue");
    assert_eq!(std::fs::read_dir(&queue).unwrap().count(), 0, "queued");

    // A line of exactly 998 octets is fine.
    let ok = format!("X-Test: ok\r\nSubject: fits\r\n\r\n{}\r\n", "o".repeat(998)).into_bytes();
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &ok).await;
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 1, "{}", server.sink().debug_dump());
    split_prefix(&got[0].data, &ok);
    let scrape = server.scrape().await;
    scrape.expect(&[
        (
            r#"postern_messages_refused_total{listener="legacy",reason="long_line"}"#,
            1.0,
        ),
        (r#"postern_messages_accepted_total{listener="legacy"}"#, 1.0),
    ]);
    assert_eq!(server.sink().violations(), Vec::<String>::new());
}
