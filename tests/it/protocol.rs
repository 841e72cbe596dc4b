//! The SMTP dialogue over real sockets: pipelining (RFC 2920), smuggling (bare CR/LF in
//! DATA), limits that keep the dialogue in step, and the STARTTLS injection rule.

use crate::harness::client::Dialog;
use crate::harness::{
    DELIVERY, Opts, PLAIN_TOKEN, TestServer, dot_stuff, message, send_mail, split_prefix,
};

/// Test 5: a pipelined MAIL/RCPT/RCPT/DATA group is answered in order, then two more
/// transactions pipelined back to back behind each final dot; plain and implicit TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transactions_answer_in_order() {
    let server = TestServer::start(Opts::default()).await;
    for listener in ["legacy", "submissions"] {
        let mut d = if listener == "legacy" {
            server.legacy_session().await
        } else {
            let mut d = Dialog::connect_tls(server.submissions, &server.ca).await;
            d.ehlo("client.test").await;
            d.cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "235 2.7.0")
                .await;
            d
        };
        let from = "alice@example.com";
        let bodies: Vec<Vec<u8>> = (0..3)
            .map(|i| message(&format!("{listener}-{i}"), "", &format!("body {i}\r\n")))
            .collect();
        let group = |rcpts: &[&str]| {
            let mut g = format!("MAIL FROM:<{from}>\r\n");
            for r in rcpts {
                g.push_str(&format!("RCPT TO:<{r}>\r\n"));
            }
            g.push_str("DATA\r\n");
            g.into_bytes()
        };
        d.send(group(&["a@example.org", "b@example.org"])).await;
        for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"] {
            d.expect(want).await;
        }
        for (i, body) in bodies.iter().take(2).enumerate() {
            let next = group(&[&format!("n{i}@example.org")]);
            d.send([dot_stuff(body), b".\r\n".to_vec(), next].concat())
                .await;
            for want in ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354"] {
                d.expect(want).await;
            }
        }
        d.send([dot_stuff(&bodies[2]), b".\r\nQUIT\r\n".to_vec()].concat())
            .await;
        d.expect("250 2.0.0").await;
        d.expect("221").await;
        d.expect_closed().await;
        server.sink().expect(3);
        let got = server.sink().wait(DELIVERY).await;
        let want_rcpts: [&[&str]; 3] = [
            &["a@example.org", "b@example.org"],
            &["n0@example.org"],
            &["n1@example.org"],
        ];
        for (body, rcpts) in bodies.iter().zip(want_rcpts) {
            let m = got
                .iter()
                .find(|m| m.data.ends_with(body))
                .expect("a pipelined message is missing");
            assert_eq!(m.rcpt_to, rcpts, "{listener}");
            split_prefix(&m.data, body);
        }
    }
}

/// Each way a bare CR or LF could fake the end of DATA (CVE-2023-51764 class).
const SMUGGLES: [&str; 5] = ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r\n.\r"];

/// A message with `seq` and a whole second transaction inside its body; the client adds
/// the real `.\r\n` after it.
fn smuggling_body(i: usize, seq: &str) -> Vec<u8> {
    let inner =
        "MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n";
    let body = message(&format!("smuggle-{i}"), "", &format!("before{seq}{inner}"));
    // The attempt must rely on the bare CR/LF alone, with no real end of data of its own.
    assert!(
        !body.windows(5).any(|w| w == b"\r\n.\r\n"),
        "test body ends early"
    );
    body
}

/// Every bare CR or bare LF becomes CRLF (what `normalise` promises).
fn normalised(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        match (data[i], data.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            (b'\r' | b'\n', _) => out.extend_from_slice(b"\r\n"),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    out
}

/// Sends one smuggling attempt on a fresh legacy session; returns the final reply.
async fn smuggle(server: &TestServer, body: &[u8]) -> (Dialog, String) {
    let mut d = server.legacy_session().await;
    d.send("MAIL FROM:<dev@example.net>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n")
        .await;
    for want in ["250 2.1.0", "250 2.1.5", "354"] {
        d.expect(want).await;
    }
    d.send([body, b".\r\n"].concat()).await;
    let reply = d.try_reply().await.expect("closed after the final dot");
    (d, reply.first().to_owned())
}

/// Test 7 (reject, the default): ONE 550 5.6.0, the dialogue stays in step, and nothing
/// reaches the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_rejected_by_default() {
    let server = TestServer::start(Opts::default()).await;
    for (i, seq) in SMUGGLES.iter().enumerate() {
        let (mut d, reply) = smuggle(&server, &smuggling_body(i, seq)).await;
        assert!(reply.starts_with("550 5.6.0"), "{seq:?}: {reply}");
        // Exactly one reply: the next one answers our NOOP, not a smuggled command.
        d.cmd("NOOP", "250 2.0.0 Ok").await;
        assert!(
            d.buffered().is_empty(),
            "{seq:?}: extra replies {:?}",
            d.buffered()
        );
    }
    // A clean message after the attempts: once it is in, nothing else was queued before it.
    let mut d = server.legacy_session().await;
    let sentinel = message("sentinel", "", "clean\r\n");
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &sentinel).await;
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 1);
    split_prefix(&got[0].data, &sentinel);
}

/// Test 7 (normalise): exactly ONE message per attempt, containing the smuggled text with
/// each bare CR/LF turned into CRLF; the fake end survives as a dot line at the sink (so
/// it was dot-stuffed upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_normalised_stays_one_message() {
    let server = TestServer::start(Opts::with("smtp: {bare_line_endings: normalise}\n")).await;
    let mut sent = Vec::new();
    for (i, seq) in SMUGGLES.iter().enumerate() {
        let body = smuggling_body(i, seq);
        let (mut d, reply) = smuggle(&server, &body).await;
        assert!(reply.starts_with("250 2.0.0"), "{seq:?}: {reply}");
        d.cmd("NOOP", "250 2.0.0 Ok").await;
        assert!(
            d.buffered().is_empty(),
            "{seq:?}: extra replies {:?}",
            d.buffered()
        );
        sent.push(normalised(&body));
    }
    server.sink().expect(SMUGGLES.len());
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), SMUGGLES.len());
    for (want, seq) in sent.iter().zip(SMUGGLES) {
        let m = got.iter().find(|m| m.data.ends_with(want));
        let m = m.unwrap_or_else(|| {
            panic!(
                "{seq:?}: no message ends with {:?}",
                String::from_utf8_lossy(want)
            )
        });
        assert_eq!(
            (m.mail_from.as_str(), m.rcpt_to.as_slice()),
            ("dev@example.net", &["x@example.org".to_owned()][..])
        );
        assert!(
            m.text()
                .contains("\r\n.\r\nMAIL FROM:<evil@example.net>\r\n"),
            "{seq:?}"
        );
    }
}

/// Test 8: over-long command lines, oversize messages and too many recipients are refused
/// and the session carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_and_keep_the_dialogue_in_step() {
    let server = TestServer::start(Opts::with(
        "limits: {max_message_size: 2KiB, max_recipients: 100}\n",
    ))
    .await;
    let mut d = server.legacy_session().await;
    d.send(format!("NOOP {}\r\n", "x".repeat(1495))).await;
    d.expect("500 5.5.2").await;
    d.cmd("NOOP", "250 2.0.0").await;

    // RFC 1870: a declared SIZE over the limit is refused at MAIL.
    d.cmd("MAIL FROM:<dev@example.net> SIZE=10240", "552 5.3.4")
        .await;
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0").await;
    d.cmd("RCPT TO:<x@example.org>", "250 2.1.5").await;
    d.cmd("DATA", "354").await;
    let line = format!("{}\r\n", "y".repeat(98));
    let big = format!("X-Test: big\r\n\r\n{}", line.repeat(100));
    d.send(format!("{big}.\r\n")).await;
    d.expect("552 5.3.4").await;
    d.cmd("NOOP", "250 2.0.0").await;

    // 101 recipients, pipelined: the first 100 are taken, the 101st gets 452 4.5.3.
    d.send("MAIL FROM:<dev@example.net>\r\n").await;
    d.expect("250 2.1.0").await;
    let rcpts: String = (1..=101)
        .map(|i| format!("RCPT TO:<r{i}@example.org>\r\n"))
        .collect();
    d.send(rcpts).await;
    for i in 1..=100 {
        let r = d.expect("250").await;
        assert!(
            r.first().starts_with("250 2.1.5"),
            "rcpt {i}: {:?}",
            r.lines
        );
    }
    d.expect("452 4.5.3").await;
    let small = message("small", "", "fits\r\n");
    d.cmd("DATA", "354").await;
    d.send([dot_stuff(&small), b".\r\n".to_vec()].concat())
        .await;
    d.expect("250 2.0.0").await;
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 1);
    let want: Vec<String> = (1..=100).map(|i| format!("r{i}@example.org")).collect();
    assert_eq!(got[0].rcpt_to, want);
    split_prefix(&got[0].data, &small);
}

/// After `limits.max_errors` error replies the session gets 421 4.7.0 and is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_errors_close_the_session() {
    let server = TestServer::start(Opts::with("limits: {max_errors: 3}\n")).await;
    let mut d = server.legacy_session().await;
    for _ in 0..3 {
        d.cmd("BOGUS", "500 5.5.2").await;
    }
    d.expect("421 4.7.0").await;
    d.expect_closed().await;
}

/// Test 9: bytes after STARTTLS in the same write are discarded (CVE-2011-0411 class), and
/// after TLS the session starts over and needs EHLO (RFC 3207 4.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_discards_pipelined_plaintext() {
    let server = TestServer::start(Opts::default()).await;
    let mut d = Dialog::connect(server.submission).await;
    d.ehlo("client.test").await;
    d.send(format!(
        "STARTTLS\r\nMAIL FROM:<alice@example.com>\r\nAUTH PLAIN {PLAIN_TOKEN}\r\n"
    ))
    .await;
    d.expect("220 2.0.0").await;
    d.tls_handshake(&server.ca).await;
    // The first reply under TLS answers this NOOP: the injected commands were never run.
    d.cmd("NOOP", "250 2.0.0 Ok").await;
    d.cmd("MAIL FROM:<alice@example.com>", "503 5.5.1").await;
    let caps = d.ehlo("client.test").await;
    assert!(caps.iter().any(|c| c.starts_with("AUTH ")), "{caps:?}");
    d.cmd("MAIL FROM:<alice@example.com>", "530 5.7.0").await;
    d.cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "235 2.7.0")
        .await;
    d.cmd("MAIL FROM:<alice@example.com>", "250 2.1.0").await;
}
