//! Session admission and lifetime over real sockets: the global, per-listener and per-IP
//! connection caps (`421 4.7.0` and close, a slot freed when a session ends), the
//! command / DATA timeouts (`421 4.4.2` and close, RFC 5321 4.5.3.2), and how a TLS session
//! is closed (RFC 8446 6.1 `close_notify`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::harness::client::Dialog;
use crate::harness::{Opts, PLAIN_TOKEN, TestServer};

/// The refusal for a connection over any cap (`Reply::too_many_connections`).
const TOO_MANY: &str = "421 4.7.0 Error: too many connections";
/// The reply to a silent client (`Reply::timeout`, hostname `relay.test`).
const TIMED_OUT: &str = "421 4.4.2 relay.test Error: timeout exceeded";

/// Connects (from `from`, or the default 127.0.0.1) without reading the greeting.
async fn connect(from: Option<IpAddr>, addr: SocketAddr) -> Dialog {
    match from {
        Some(ip) => Dialog::connect_from(ip, addr).await,
        None => Dialog::connect_silent(addr).await,
    }
}

/// Asserts the next connection to `addr` is refused over a cap: `421 4.7.0`, then EOF.
async fn assert_refused(from: Option<IpAddr>, addr: SocketAddr) {
    let mut d = connect(from, addr).await;
    d.expect(TOO_MANY).await;
    d.expect_closed().await;
}

/// Asserts a connection to `addr` is admitted (greeted, and answers EHLO).
async fn assert_admitted(from: Option<IpAddr>, addr: SocketAddr) -> Dialog {
    let mut d = connect(from, addr).await;
    d.expect("220 ").await;
    d.ehlo("client.test").await;
    d
}

/// Ends `d` with QUIT, then waits until a new connection to `addr` is admitted: the slot is
/// released when the server's session task ends, after the client has seen its EOF, so
/// each try may still be refused (bounded: 500 tries, 10 ms apart). Returns the session.
async fn release_and_readmit(mut d: Dialog, from: Option<IpAddr>, addr: SocketAddr) -> Dialog {
    d.cmd("QUIT", "221 2.0.0").await;
    d.expect_closed().await;
    for _ in 0..500 {
        let mut next = connect(from, addr).await;
        let reply = next.try_reply().await.expect("closed without a reply");
        if reply.code == 220 {
            next.ehlo("client.test").await;
            return next;
        }
        assert!(reply.first().starts_with(TOO_MANY), "{:?}", reply.lines);
        next.expect_closed().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr}: the freed slot was not reused within 5 s");
}

/// `limits.max_connections: 2` counts sessions on every listener together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_connection_cap() {
    let server = TestServer::start(Opts::with("limits: {max_connections: 2}\n")).await;
    let first = assert_admitted(None, server.legacy).await;
    let _second = assert_admitted(None, server.submission).await;
    assert_refused(None, server.legacy).await;
    assert_refused(None, server.submission).await;
    let _third = release_and_readmit(first, None, server.submission).await;
    assert_refused(None, server.legacy).await;
}

/// On a listener without `proxy_protocol` the allowlist is checked before the caps: at the
/// global cap, an address outside `allow_networks` is still told `554 5.7.1` (and counted
/// as `allowlist`), not `421` (`connection_cap`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_refusal_comes_before_the_caps() {
    let server = TestServer::start(Opts::with("limits: {max_connections: 1}\n")).await;
    let _holder = assert_admitted(None, server.submission).await;
    let stranger = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let mut d = connect(stranger, server.legacy).await;
    d.expect("554 5.7.1").await;
    d.expect_closed().await;
    assert_refused(None, server.legacy).await;
    let count = |s: &crate::harness::http::Scrape, result: &str| {
        s.get(&format!(
            r#"postern_connections_total{{listener="legacy",result="{result}"}}"#
        ))
    };
    let scrape = server
        .scrape_until(|s| count(s, "connection_cap") >= 1.0)
        .await;
    assert_eq!(count(&scrape, "allowlist"), 1.0);
    assert_eq!(count(&scrape, "connection_cap"), 1.0);
}

/// A listener's own `max_connections: 1` refuses its second session while the other
/// listeners still admit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_listener_connection_cap() {
    let server = TestServer::start(Opts {
        legacy: "max_connections: 1".into(),
        ..Opts::default()
    })
    .await;
    let first = assert_admitted(None, server.legacy).await;
    assert_refused(None, server.legacy).await;
    let _other = assert_admitted(None, server.submission).await;
    let _again = release_and_readmit(first, None, server.legacy).await;
    assert_refused(None, server.legacy).await;
}

/// `limits.max_connections_per_ip: 2` counts one client address over all listeners; another
/// loopback address (127.0.0.2) is still admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connection_cap() {
    let server = TestServer::start(Opts::with("limits: {max_connections_per_ip: 2}\n")).await;
    let other = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let first = assert_admitted(None, server.legacy).await;
    let _second = assert_admitted(None, server.submission).await;
    assert_refused(None, server.submission).await;
    assert_refused(None, server.legacy).await;
    // The legacy listener only allows 127.0.0.1, so the other address uses submission.
    let _other1 = assert_admitted(other, server.submission).await;
    let _other2 = assert_admitted(other, server.submission).await;
    assert_refused(other, server.submission).await;
    let _back = release_and_readmit(first, None, server.legacy).await;
    assert_refused(None, server.submission).await;
}

/// With `timeouts: {command: 1s, data: 1s}` (1 s is the validator's minimum), a client that
/// goes silent after the greeting, after EHLO or inside DATA gets `421 4.4.2` and is closed.
/// The timeout is a guard: the assertion is on the reply, not on elapsed time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_times_out() {
    let server = TestServer::start(Opts::with("timeouts: {command: 1s, data: 1s}\n")).await;
    let greeted = async {
        let mut d = Dialog::connect(server.legacy).await;
        d.expect(TIMED_OUT).await;
        d.expect_closed().await;
    };
    let after_ehlo = async {
        let mut d = server.legacy_session().await;
        d.expect(TIMED_OUT).await;
        d.expect_closed().await;
    };
    let in_data = async {
        let mut d = server.legacy_session().await;
        d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0").await;
        d.cmd("RCPT TO:<x@example.org>", "250 2.1.5").await;
        d.cmd("DATA", "354").await;
        d.send("Subject: cut off\r\n\r\nhalf a li").await;
        d.expect(TIMED_OUT).await;
        d.expect_closed().await;
    };
    tokio::join!(greeted, after_ehlo, in_data);
}

/// A client that pipelines commands and never reads the replies cannot hold its slot: once
/// the socket buffers are full the server's write times out (the command timeout covers
/// writes too) and the session ends. With the legacy listener capped at one session, a new
/// client is admitted again only if the stalled one was let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_let_go() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(Opts {
        extra: "timeouts: {command: 1s}\n".into(),
        legacy: "max_connections: 1".into(),
        ..Opts::default()
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(server.legacy).await.unwrap();
    let mut greeting = [0u8; 3];
    tcp.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"220");
    // Each NOOP (6 octets) is answered with 14: write until the server stops reading
    // (bounded: at most 64 MiB, each write given 3 s).
    let chunk = b"NOOP\r\n".repeat(10_000);
    let mut stalled = false;
    for _ in 0..(64 << 20) / chunk.len() {
        let write = tokio::time::timeout(Duration::from_secs(3), tcp.write_all(&chunk));
        // A write that hangs (the server stopped reading) or fails (it already closed).
        if !matches!(write.await, Ok(Ok(()))) {
            stalled = true;
            break;
        }
    }
    assert!(
        stalled,
        "the server kept reading: its replies never filled the buffers"
    );
    // Wait (bounded) for the stalled session's slot to be freed; before writes had a
    // timeout it never was.
    for _ in 0..500 {
        let mut next = connect(None, server.legacy).await;
        let reply = next.try_reply().await.expect("closed without a reply");
        if reply.code == 220 {
            drop(tcp);
            return;
        }
        next.expect_closed().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the session of a client that never reads was never ended");
}

/// Refusals hold no connection slot, so they have their own cap (64 in flight): on the
/// implicit-TLS listener each is owed a handshake, and a flood of silent refused clients
/// must not cost unbounded descriptors. Past the cap a refused client is closed without a
/// handshake; once the silent ones leave, refusals get their handshake and `421` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_in_flight_are_capped() {
    let server = TestServer::start(Opts::with("limits: {max_connections: 1}\n")).await;
    let _holder = assert_admitted(None, server.legacy).await;
    let tls = tokio_rustls::TlsConnector::from(server.ca.client_config());
    let try_tls = async || {
        let tcp = tokio::net::TcpStream::connect(server.submissions)
            .await
            .unwrap();
        let handshake = tls.connect(crate::harness::ca::server_name(), tcp);
        tokio::time::timeout(Duration::from_secs(10), handshake)
            .await
            .expect("handshake hung")
    };
    // 64 refused clients that never send a ClientHello: each holds a refusal for the
    // server's short handshake timeout.
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(
            tokio::net::TcpStream::connect(server.submissions)
                .await
                .unwrap(),
        );
    }
    // The server takes them in order; once it has, the next one gets no handshake at all.
    let mut closed_unheard = false;
    for _ in 0..100 {
        if try_tls().await.is_err() {
            closed_unheard = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        closed_unheard,
        "a 65th refusal in flight still got a TLS handshake"
    );
    drop(silent);
    for _ in 0..500 {
        if let Ok(stream) = try_tls().await {
            let mut d = Dialog::from_tls(stream);
            d.expect(TOO_MANY).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("refusals never got their handshake back after the silent clients left");
}

/// A TLS session the server ends after QUIT, or after `limits.max_errors`, ends with a TLS
/// `close_notify` before the TCP close (RFC 8446 6.1), so the client can tell the end from a
/// truncation. (The control for the test below.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_session_close_sends_close_notify() {
    let server = TestServer::start(Opts::with("limits: {max_errors: 1}\n")).await;
    let mut d = Dialog::connect_tls(server.submissions, &server.ca).await;
    d.ehlo("client.test").await;
    d.cmd("QUIT", "221 2.0.0").await;
    d.expect_clean_close().await;

    let mut d = Dialog::connect_tls(server.submissions, &server.ca).await;
    d.cmd("BOGUS", "500 5.5.2").await;
    d.expect("421 4.7.0 relay.test Error: too many errors")
        .await;
    d.expect_clean_close().await;
}

/// The server's other `421` closes on a TLS session must end the same way: the command
/// timeout, the over-cap refusal on the implicit-TLS listener (sent after the handshake) and
/// the drain at shutdown (each once closed TCP without `close_notify`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_421_closes_send_close_notify() {
    // Command timeout.
    let server = TestServer::start(Opts::with(
        "timeouts: {command: 1s}\nlimits: {max_connections: 2}\n",
    ))
    .await;
    let mut timed = Dialog::connect_tls(server.submissions, &server.ca).await;
    timed.ehlo("client.test").await;
    timed.expect(TIMED_OUT).await;
    timed.expect_clean_close().await;

    // Over the global cap: refused after the handshake on the implicit listener.
    let _one = Dialog::connect(server.legacy).await;
    let _two = Dialog::connect(server.legacy).await;
    let mut refused = Dialog::connect_tls_silent(server.submissions, &server.ca).await;
    refused.expect(TOO_MANY).await;
    refused.expect_clean_close().await;

    // Draining: an idle authenticated session is told 421 4.3.2.
    let mut server = TestServer::start(Opts::default()).await;
    let mut idle = Dialog::connect_tls(server.submissions, &server.ca).await;
    idle.ehlo("client.test").await;
    idle.cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "235 2.7.0")
        .await;
    let client = async {
        idle.expect("421 4.3.2 relay.test Service shutting down")
            .await;
        idle.expect_clean_close().await;
    };
    tokio::join!(server.stop(), client);
}
