//! Slow and greedy clients over real sockets: a command line must arrive whole within
//! `timeouts.command` (a trickle of bytes does not stretch it), DATA must keep up
//! `limits.min_data_rate`, a session ends at `timeouts.session`, and the caps on messages
//! per session and on commands without progress close abusers with `421` and a reason.
//!
//! The timeouts are set to the validator's one-second minimum; each test asserts on the
//! reply the server sends, and each would get a different reply (or none) without the rule.

use std::time::Duration;

use crate::harness::client::Dialog;
use crate::harness::{DELIVERY, Opts, TestServer, message, send_mail};

const GAP: Duration = Duration::from_millis(200);

/// `timeouts.command: 1s` bounds the whole line: `NOOP` trickled a byte every 200 ms (each
/// gap well under the timeout) is cut off with `421 4.4.2` before its CRLF arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_command_line_is_cut_off() {
    let server = TestServer::start(Opts::with("timeouts: {command: 1s}\n")).await;
    let mut d = server.legacy_session().await;
    let reply = d.trickle(b"NOOP trickle-trickle-trickle\r\n", GAP).await;
    let reply = reply.expect("closed without a reply");
    assert_eq!(
        reply.first(),
        "421 4.4.2 relay.test Error: timeout exceeded"
    );
    d.expect_closed().await;
}

/// A server with `timeouts.data: 1s` and `limits.min_data_rate: 100`, and a legacy session
/// on it past `DATA`'s 354.
async fn in_data_at_min_rate() -> (TestServer, Dialog) {
    let server = TestServer::start(Opts::with(
        "timeouts: {data: 1s}\nlimits: {min_data_rate: 100}\n",
    ))
    .await;
    let mut d = server.legacy_session().await;
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0").await;
    d.cmd("RCPT TO:<x@example.org>", "250 2.1.5").await;
    d.cmd("DATA", "354").await;
    (server, d)
}

/// `limits.min_data_rate: 100` with `timeouts.data: 1s`: message bytes trickled at about 5
/// per second (each gap under the data timeout) fall behind after the one-second head start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_data_is_cut_off() {
    let (server, mut d) = in_data_at_min_rate().await;
    let body = "Subject: slow\r\n\r\n".repeat(20);
    let reply = d.trickle(body.as_bytes(), GAP).await;
    let reply = reply.expect("closed without a reply");
    assert_eq!(
        reply.first(),
        "421 4.4.2 relay.test Error: data arrived too slowly"
    );
    d.expect_closed().await;
    assert!(server.sink().received().is_empty());
}

/// Each byte earns time: a client that keeps up `min_data_rate` (here 300 B/s against
/// 100) sends for well past the one-second head start and is queued. Without the earning it
/// would be cut at one second; with the default 500 B/s instead of the configured rate, at
/// about 2.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_data_earns_its_time() {
    // The server is held (not dropped) to the end of the test.
    let (_server, mut d) = in_data_at_min_rate().await;
    let started = std::time::Instant::now();
    d.send("Subject: paced\r\n\r\n").await;
    let line = format!("{}\r\n", "x".repeat(58));
    for _ in 0..15 {
        tokio::time::sleep(GAP).await;
        d.send(&line).await;
    }
    d.send(".\r\n").await;
    d.expect("250 2.0.0").await;
    assert!(started.elapsed() >= Duration::from_millis(2800));
}

/// A client fast enough for `min_data_rate` is not cut off by it: the same message sent
/// at once is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_data_passes_the_rate_rule() {
    let server = TestServer::start(Opts::with(
        "timeouts: {data: 1s}\nlimits: {min_data_rate: 100}\n",
    ))
    .await;
    let mut d = server.legacy_session().await;
    let data = message("fast", "", &"line\r\n".repeat(2000));
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &data).await;
}

/// `timeouts.session: 2s`: a client that keeps the session busy with NOOPs (each answered)
/// is closed when the session's time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_time_limit() {
    let server = TestServer::start(Opts::with("timeouts: {session: 2s}\n")).await;
    let mut d = server.legacy_session().await;
    let started = std::time::Instant::now();
    for _ in 0..50 {
        d.send("NOOP\r\n").await;
        let reply = d.try_reply().await.expect("closed without a reply");
        if reply.code == 421 {
            // Not before its time.
            assert!(started.elapsed() >= Duration::from_millis(1900));
            assert_eq!(
                reply.first(),
                "421 4.4.2 relay.test Error: session time limit exceeded"
            );
            d.expect_closed().await;
            return;
        }
        assert_eq!(reply.first(), "250 2.0.0 Ok");
        tokio::time::sleep(GAP).await;
    }
    panic!("the session outlived timeouts.session");
}

/// `limits.max_junk_commands: 3`: three commands without progress are answered, the
/// fourth closes the session; a queued message restarts the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_commands_are_capped() {
    let server = TestServer::start(Opts::with("limits: {max_junk_commands: 3}\n")).await;
    let mut d = server.legacy_session().await;
    d.cmd("NOOP", "250 2.0.0").await;
    d.cmd("RSET", "250 2.0.0").await;
    d.cmd("VRFY someone", "252").await;
    let data = message("junk", "", "body\r\n");
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &data).await;
    d.cmd("NOOP", "250 2.0.0").await;
    d.cmd("NOOP", "250 2.0.0").await;
    d.cmd("HELP", "214").await;
    // A MAIL is no progress until a message is queued: the count does not restart.
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0").await;
    d.cmd(
        "NOOP",
        "421 4.7.0 relay.test Error: too many commands without progress",
    )
    .await;
    d.expect_closed().await;
}

/// `limits.max_messages_per_session: 2`: the third MAIL gets `421 4.7.0` and the session
/// closes; the two queued messages are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_session_are_capped() {
    let server = TestServer::start(Opts::with("limits: {max_messages_per_session: 2}\n")).await;
    let mut d = server.legacy_session().await;
    for tag in ["one", "two"] {
        let data = message(tag, "", "body\r\n");
        send_mail(&mut d, "dev@example.net", &["x@example.org"], &data).await;
    }
    d.cmd(
        "MAIL FROM:<dev@example.net>",
        "421 4.7.0 relay.test Error: too many messages in one session",
    )
    .await;
    d.expect_closed().await;
    server.sink().wait_for(DELIVERY, |m| m.len() == 2).await;
}
