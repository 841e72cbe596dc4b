//! SIGTERM on the `postern` binary (BRIEF.md: "SIGTERM drains gracefully"; Postfix-like):
//! listeners close, a session between transactions is told `421 4.3.2` at once, a session
//! inside a transaction may finish it within `shutdown_grace`, and whoever is still inside
//! one when the grace period ends is told `421 4.3.2` and loses only the unacknowledged
//! message. The process exits 0 either way, and nothing that got a 250 is lost.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::binary::{Postern, legacy_config, wait_listening};
use crate::harness::client::{Dialog, STEP};
use crate::harness::sink::{Received, Sink, SinkOptions, reserve_port};
use crate::harness::{DELIVERY, Opts, TestServer, message, send_mail, split_prefix};

/// The whole `421` line a draining server sends (`Reply::shutting_down`, hostname `relay.test`).
const SHUTTING_DOWN: &str = "421 4.3.2 relay.test Service shutting down";
/// How long the process may take to exit once nothing holds it any more.
const EXIT: Duration = Duration::from_secs(10);

/// Writes a legacy-only config (plain, no AUTH, loopback) relaying to the sink, on a reserved
/// port; returns the file and the listener's address.
fn drain_config(dir: &Path, sink: u16, grace: &str) -> (PathBuf, SocketAddr) {
    let port = reserve_port();
    let extra = format!("shutdown_grace: {grace}\n");
    let path = legacy_config(dir, port, sink, &extra);
    (path, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Runs the binary and waits until it listens on `addr`.
async fn start(config: &Path, addr: SocketAddr, log: &str) -> Postern {
    let mut postern = Postern::run(config, &config.with_file_name(log));
    wait_listening(addr, &mut postern).await;
    postern
}

/// Names of the files in `dir` (the spool's `queue/` or `tmp/`), sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Waits (bounded: 500 tries, 10 ms apart) until connecting to `addr` is refused, i.e. the
/// listener is closed. The listener and the sessions see the shutdown signal concurrently, so
/// a connection may still slip in just before the listener closes: such a one must not be
/// served, only reset, or greeted and told `421 4.3.2`.
async fn wait_refused(addr: SocketAddr) {
    for _ in 0..500 {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            // Completed by the kernel into the backlog, then reset as the listener closed.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connect to the draining server: {e}"),
            Ok(mut tcp) => {
                let mut got = Vec::new();
                let read = tokio::time::timeout(STEP, tcp.read_to_end(&mut got)).await;
                assert!(read.is_ok(), "a connection during the drain stayed open");
                let text = String::from_utf8_lossy(&got);
                assert!(
                    text.lines()
                        .all(|l| l.starts_with("220 ") || l.starts_with(SHUTTING_DOWN)),
                    "a connection during the drain was served: {text:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections 5 s after SIGTERM");
}

/// Sends one message through a fresh session on `addr` and returns its bytes.
async fn send_sentinel(addr: SocketAddr, tag: &str) -> Vec<u8> {
    let mut d = Dialog::connect(addr).await;
    d.ehlo("client.test").await;
    let body = message(tag, "", "after the restart\r\n");
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &body).await;
    d.cmd("QUIT", "221 2.0.0").await;
    body
}

/// The one message at the sink whose client bytes are `body`.
fn find<'a>(all: &'a [Received], body: &[u8]) -> Option<&'a Received> {
    all.iter().find(|m| m.data.ends_with(body))
}

/// SIGTERM with one idle and one mid-DATA session: the idle one gets `421 4.3.2` and is
/// closed at once, new connections are refused, the other finishes its message (`250 2.0.0`,
/// then `421 4.3.2`), and the process exits 0 well inside the 60 s grace period. The
/// acknowledged message is in the spool or at the sink; after a restart on the same spool it
/// reaches the sink byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_transaction_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default()).await;
    let (config, addr) = drain_config(dir.path(), sink.port(), "60s");
    let mut postern = start(&config, addr, "postern-1.log").await;

    let mut idle = Dialog::connect(addr).await;
    idle.ehlo("idle.test").await;
    let mut busy = Dialog::connect(addr).await;
    busy.ehlo("busy.test").await;
    busy.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0").await;
    busy.cmd("RCPT TO:<x@example.org>", "250 2.1.5").await;
    busy.cmd("DATA", "354").await;
    let body = message("drained", "", "first line\r\nsecond line\r\n");
    // Cut mid-line, so the server is inside the message, not at a line boundary.
    let (head, tail) = body.split_at(body.len() - 8);
    busy.send(head).await;

    postern.sigterm();
    idle.expect(SHUTTING_DOWN).await;
    idle.expect_closed().await;
    wait_refused(addr).await;
    assert!(
        postern.exited().is_none(),
        "postern exited with a transaction still open"
    );

    busy.send([tail, b".\r\n"].concat()).await;
    busy.expect("250 2.0.0").await;
    busy.expect(SHUTTING_DOWN).await;
    busy.expect_closed().await;
    let status = postern.wait_exit(EXIT).await;
    assert_eq!(status.code(), Some(0), "exit status after the drain");

    // The 250 meant "fsynced in the spool": the message is there unless it already left.
    let spool = dir.path().join("spool");
    let queued = files(&spool.join("queue"));
    let delivered = find(&sink.received(), &body).is_some();
    assert!(
        delivered || queued.len() == 1,
        "acknowledged message neither delivered nor queued: queue/ holds {queued:?}"
    );

    // The next start delivers it from the spool.
    let mut postern = start(&config, addr, "postern-2.log").await;
    let got = sink
        .wait_for(DELIVERY, |all| find(all, &body).is_some())
        .await;
    let m = find(&got, &body).unwrap();
    split_prefix(&m.data, &body);
    assert_eq!(m.mail_from, "dev@example.net");
    assert_eq!(m.rcpt_to, ["x@example.org"]);
    assert_eq!(sink.violations(), Vec::<String>::new());

    // With no session open, SIGTERM stops it at once, again with status 0.
    postern.sigterm();
    assert_eq!(postern.wait_exit(EXIT).await.code(), Some(0));
}

/// SIGTERM with a session that stays silent mid-DATA past a 1 s `shutdown_grace`: it gets
/// `421 4.3.2` and is closed, the process exits 0, and the partial message is neither
/// queued nor delivered (not even after a restart on the same spool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_grace_expiry_drops_unfinished_message() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default()).await;
    let (config, addr) = drain_config(dir.path(), sink.port(), "1s");
    let mut postern = start(&config, addr, "postern-1.log").await;

    let mut busy = Dialog::connect(addr).await;
    busy.ehlo("busy.test").await;
    busy.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0").await;
    busy.cmd("RCPT TO:<x@example.org>", "250 2.1.5").await;
    busy.cmd("DATA", "354").await;
    busy.send("X-Test: partial\r\nSubject: never finished\r\n\r\nhalf a li")
        .await;
    postern.sigterm();
    busy.expect(SHUTTING_DOWN).await;
    busy.expect_closed().await;
    let status = postern.wait_exit(EXIT).await;
    assert_eq!(status.code(), Some(0), "exit status after the grace period");

    let spool = dir.path().join("spool");
    assert_eq!(files(&spool.join("queue")), Vec::<String>::new(), "queue/");
    assert_eq!(files(&spool.join("tmp")), Vec::<String>::new(), "tmp/");

    // A restart on the same spool has nothing to deliver: a sentinel sent afterwards is
    // the only message the sink ever sees.
    let mut postern = start(&config, addr, "postern-2.log").await;
    let sentinel = send_sentinel(addr, "sentinel").await;
    let got = sink
        .wait_for(DELIVERY, |all| find(all, &sentinel).is_some())
        .await;
    assert_eq!(got.len(), 1, "the sink got more than the sentinel");
    assert!(!got[0].text().contains("X-Test: partial"));
    postern.sigterm();
    assert_eq!(postern.wait_exit(EXIT).await.code(), Some(0));
}

/// While draining, a client that pipelines its next MAIL behind the final dot (RFC 2920) is
/// between transactions once the dot is answered, so that MAIL must get `421 4.3.2` and the
/// session must close (RFC 5321 4.2.3: 421 may answer any command when the service must shut
/// down), as `conn.rs` intends for sessions between transactions. (It once got `250 2.1.0`: the
/// buffered MAIL was fed to the engine before the shutdown signal was looked at.)
/// In-process: `TestServer::stop` is the `Running::shutdown` the SIGTERM handler calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_mail_pipelined_after_the_dot() {
    let mut server = TestServer::start(Opts::with("shutdown_grace: 2s\n")).await;
    let mut idle = server.legacy_session().await;
    let mut busy = server.legacy_session().await;
    busy.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0").await;
    busy.cmd("RCPT TO:<x@example.org>", "250 2.1.5").await;
    busy.cmd("DATA", "354").await;
    let body = message("pipelined", "", "last message before the drain\r\n");
    let client = async {
        // The idle session's 421 shows the drain has begun.
        idle.expect(SHUTTING_DOWN).await;
        busy.send([&body[..], b".\r\nMAIL FROM:<dev@example.net>\r\n"].concat())
            .await;
        busy.expect("250 2.0.0").await;
        busy.expect(SHUTTING_DOWN).await;
        busy.expect_closed().await;
    };
    tokio::join!(server.stop(), client);
}
