//! PROXY protocol behind a real HAProxy (issue 9, section 1): the client's own address,
//! carried in the v1 or v2 header, drives the allowlist, the Received header and the logs;
//! headers from untrusted peers, malformed or missing headers close the connection, each
//! logged and counted.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;

use crate::harness::client::Dialog;
use crate::harness::haproxy::{Backend, Haproxy, HaproxyOpts, ProxyVersion};
use crate::harness::{DELIVERY, Opts, TestServer, logs, message, send_mail};

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const STRANGER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
/// HAProxy connects from 127.0.0.1: the only trusted sender.
const TRUSTED: &str = "proxy_protocol: {trusted: [127.0.0.1/32], required: true}";

/// The `legacy` listener (plain, `auth: none`) admitting only 127.0.0.2, behind HAProxy.
async fn legacy_behind_haproxy(version: ProxyVersion) -> (TestServer, Haproxy) {
    let server = TestServer::start(Opts {
        legacy_allow: "127.0.0.2/32".into(),
        legacy: TRUSTED.into(),
        ..Opts::default()
    })
    .await;
    let haproxy = Haproxy::start(HaproxyOpts {
        backends: vec![Backend::smtp(server.legacy)],
        version,
        health: false,
    })
    .await;
    (server, haproxy)
}

fn counted(scrape: &crate::harness::http::Scrape, listener: &str, result: &str) -> f64 {
    scrape.get(&format!(
        r#"postern_connections_total{{listener="{listener}",result="{result}"}}"#
    ))
}

/// The log lines of the session whose span names `client`.
fn session_lines(client: SocketAddr) -> Vec<Value> {
    let client = client.to_string();
    logs::lines()
        .into_iter()
        .filter(|l| l["span"]["client"] == client.as_str())
        .collect()
}

async fn allowlist_sees_the_real_client(version: ProxyVersion) {
    let (server, haproxy) = legacy_behind_haproxy(version).await;
    let mut d = Dialog::connect_from(CLIENT, haproxy.frontend).await;
    d.expect("220 ").await;
    let local = d.local_addr();
    d.ehlo("printer.test").await;
    server.sink().expect(1);
    let data = message(
        &format!("{version:?}"),
        "From: scanner@example.com\r\n",
        "hello\r\n",
    );
    send_mail(&mut d, "scanner@example.com", &["boss@example.net"], &data).await;
    d.cmd("QUIT", "221").await;
    let got = server.sink().wait(DELIVERY).await;
    let text = got[0].text();
    let received = text.lines().take(2).collect::<Vec<_>>().join("\n");
    assert!(
        received.starts_with("Received: from printer.test ([127.0.0.2])"),
        "{version:?}: {received}"
    );
    assert!(text.ends_with("hello\r\n"), "{text}");
    // The session's span names the client's own address and port, and the load balancer.
    let lines = session_lines(local);
    let start: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["event"] == "session_start")
        .collect();
    assert_eq!(start.len(), 1, "{version:?}: {lines:?}");
    assert_eq!(start[0]["fields"]["client_ip"], "127.0.0.2");
    let proxy = start[0]["span"]["proxy"].as_str().unwrap();
    assert!(proxy.starts_with("127.0.0.1:"), "{proxy}");

    // Another address behind the same balancer is refused by the allowlist.
    let mut other = Dialog::connect_from(STRANGER, haproxy.frontend).await;
    other.expect("554 5.7.1").await;
    other.expect_closed().await;
    let scrape = server
        .scrape_until(|s| counted(s, "legacy", "allowlist") >= 1.0)
        .await;
    assert_eq!(counted(&scrape, "legacy", "accepted"), 1.0);
    assert_eq!(counted(&scrape, "legacy", "allowlist"), 1.0);
    assert_eq!(counted(&scrape, "legacy", "proxy_invalid"), 0.0);
}

/// `send-proxy-v2`: 127.0.0.2 is admitted by `allow_networks: [127.0.0.2/32]`, its message
/// carries `[127.0.0.2]` in Received and the logs name it; 127.0.0.3 gets the `554`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_header_drives_allowlist_received_and_logs() {
    allowlist_sees_the_real_client(ProxyVersion::V2).await;
}

/// The same with the text header (`send-proxy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_header_drives_allowlist_received_and_logs() {
    allowlist_sees_the_real_client(ProxyVersion::V1).await;
}

/// Implicit TLS behind HAProxy in TCP mode: the header comes before the ClientHello, and
/// the handshake, AUTH and a message go through; Received names 127.0.0.2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_behind_haproxy() {
    let server = TestServer::start(Opts {
        submissions: TRUSTED.into(),
        ..Opts::default()
    })
    .await;
    let haproxy = Haproxy::start(HaproxyOpts {
        backends: vec![Backend::smtp(server.submissions)],
        version: ProxyVersion::V2,
        health: false,
    })
    .await;
    let mut d = Dialog::connect_from(CLIENT, haproxy.frontend).await;
    d.tls_handshake(&server.ca).await;
    d.expect("220 ").await;
    d.ehlo("laptop.test").await;
    d.cmd(
        &format!("AUTH PLAIN {}", crate::harness::PLAIN_TOKEN),
        "235 2.7.0",
    )
    .await;
    server.sink().expect(1);
    let data = message("tls", "From: alice@example.com\r\n", "over TLS\r\n");
    send_mail(&mut d, "alice@example.com", &["bob@example.net"], &data).await;
    d.cmd("QUIT", "221").await;
    let got = server.sink().wait(DELIVERY).await;
    let text = got[0].text();
    assert!(
        text.starts_with("Received: from laptop.test ([127.0.0.2])"),
        "{text}"
    );
    let scrape = server.scrape().await;
    assert_eq!(counted(&scrape, "submissions", "accepted"), 1.0);
}

/// With the `/readyz` health check on, HAProxy sees the instance UP (its checks are plain
/// HTTP to the HTTP port, without a header) and a session goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checked_backend_is_up_and_serves() {
    let server = TestServer::start(Opts {
        legacy_allow: "127.0.0.2/32".into(),
        legacy: TRUSTED.into(),
        ..Opts::default()
    })
    .await;
    let haproxy = Haproxy::start(HaproxyOpts {
        backends: vec![Backend {
            smtp: server.legacy,
            http: Some(server.http),
        }],
        version: ProxyVersion::V2,
        health: true,
    })
    .await;
    haproxy.wait_servers(&["UP"]).await;
    let mut d = Dialog::connect_from(CLIENT, haproxy.frontend).await;
    d.expect("220 ").await;
    d.cmd("QUIT", "221").await;
}

/// A direct client (untrusted, `required: false`) is served at its TCP address; one that
/// sends a PROXY header itself, v1 or v2, is closed and counted, on a plain listener (its
/// first line, after the banner) and on an implicit-TLS one (before the handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peers_are_served_directly_but_not_believed() {
    let optional = "proxy_protocol: {trusted: [192.0.2.0/24], required: false}";
    let server = TestServer::start(Opts {
        legacy: optional.into(),
        submissions: optional.into(),
        ..Opts::default()
    })
    .await;
    // Served directly: a whole message, with its own address in Received.
    let mut d = server.legacy_session().await;
    server.sink().expect(1);
    let data = message("direct", "From: printer@example.com\r\n", "direct\r\n");
    send_mail(&mut d, "printer@example.com", &["boss@example.net"], &data).await;
    let got = server.sink().wait(DELIVERY).await;
    assert!(
        got[0]
            .text()
            .starts_with("Received: from client.test ([127.0.0.1])"),
        "{}",
        got[0].text()
    );
    d.cmd("QUIT", "221").await;
    // A header as the first line, claiming another address: closed without a reply.
    let v1 = b"PROXY TCP4 127.0.0.1 127.0.0.1 4000 25\r\nEHLO x\r\n".to_vec();
    let v2 = ppp_v2_local();
    for header in [v1.clone(), v2] {
        let mut d = Dialog::connect(server.legacy).await;
        d.send(&header).await;
        d.expect_closed().await;
    }
    let mut tls = Dialog::connect_silent(server.submissions).await;
    tls.send(&v1).await;
    tls.expect_closed().await;
    let scrape = server
        .scrape_until(|s| counted(s, "submissions", "proxy_untrusted") >= 1.0)
        .await;
    assert_eq!(counted(&scrape, "legacy", "proxy_untrusted"), 2.0);
    assert_eq!(counted(&scrape, "submissions", "proxy_untrusted"), 1.0);
    assert_eq!(counted(&scrape, "submissions", "accepted"), 0.0);
    assert!(
        server.sink().received().len() == 1,
        "nothing else was delivered"
    );
    let warned = logs::lines()
        .into_iter()
        .filter(|l| {
            l["level"] == "WARN"
                && l["fields"]["reason"] == "proxy_untrusted"
                && l["fields"]["tcp_peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:"))
        })
        .count();
    assert!(warned >= 3, "each close is logged with its peer and reason");
}

/// A v2 LOCAL header (what a health check would send), for a peer that must not send one.
fn ppp_v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

/// `required: true`: a peer outside `trusted` is closed at once, before any banner. The
/// setting applies on reload, to the next connection.
#[tokio::test]
async fn required_refuses_untrusted_peers_at_once() {
    let server = TestServer::start(Opts::default()).await;
    let mut before = server.legacy_session().await;
    let required = "proxy_protocol: {trusted: [192.0.2.0/24], required: true}";
    server.edit_config(|yaml| {
        yaml.replace(
            "allow_networks: [127.0.0.1/32]",
            &format!("allow_networks: [127.0.0.1/32], {required}"),
        )
    });
    let outcome = server.reload().await.unwrap();
    assert!(outcome.needs_restart.is_empty(), "{outcome:?}");
    let mut d = Dialog::connect_silent(server.legacy).await;
    d.expect_closed().await;
    // The session that began before the reload goes on.
    before.cmd("NOOP", "250").await;
    let scrape = server
        .scrape_until(|s| counted(s, "legacy", "proxy_untrusted") >= 1.0)
        .await;
    assert_eq!(counted(&scrape, "legacy", "proxy_untrusted"), 1.0);
    assert_eq!(counted(&scrape, "legacy", "accepted"), 1.0);
}

/// A trusted peer that sends SMTP instead of a header is closed (`proxy_invalid`); one
/// that sends nothing is closed after `timeouts.proxy_header` (`proxy_missing`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peers_without_a_valid_header_are_closed() {
    let server = TestServer::start(Opts {
        legacy: "proxy_protocol: {trusted: [127.0.0.1/32], required: true}".into(),
        extra: "timeouts: {proxy_header: 1s}\n".into(),
        ..Opts::default()
    })
    .await;
    let mut garbage = Dialog::connect_silent(server.legacy).await;
    garbage.send("EHLO client.test\r\n").await;
    garbage.expect_closed().await;
    let mut silent = Dialog::connect_silent(server.legacy).await;
    let started = tokio::time::Instant::now();
    silent.expect_closed().await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the deadline"
    );
    let scrape = server
        .scrape_until(|s| counted(s, "legacy", "proxy_missing") >= 1.0)
        .await;
    assert_eq!(counted(&scrape, "legacy", "proxy_invalid"), 1.0);
    assert_eq!(counted(&scrape, "legacy", "proxy_missing"), 1.0);
    assert_eq!(counted(&scrape, "legacy", "accepted"), 0.0);
}

/// `limits.max_connections_per_ip` counts the client named in the header, not the balancer
/// every connection comes from: behind HAProxy, 127.0.0.2's second session is refused with
/// `421 4.7.0` while 127.0.0.3 (same TCP peer, 127.0.0.1) is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_counts_the_real_client() {
    let server = TestServer::start(Opts {
        legacy_allow: "127.0.0.0/29".into(),
        legacy: TRUSTED.into(),
        extra: "limits: {max_connections_per_ip: 1}\n".into(),
        ..Opts::default()
    })
    .await;
    let haproxy = Haproxy::start(HaproxyOpts {
        backends: vec![Backend::smtp(server.legacy)],
        version: ProxyVersion::V2,
        health: false,
    })
    .await;
    let mut first = Dialog::connect_from(CLIENT, haproxy.frontend).await;
    first.expect("220 ").await;
    first.ehlo("printer.test").await;
    let mut second = Dialog::connect_from(CLIENT, haproxy.frontend).await;
    second.expect("421 4.7.0").await;
    second.expect_closed().await;
    let mut other = Dialog::connect_from(STRANGER, haproxy.frontend).await;
    other.expect("220 ").await;
    other.ehlo("scanner.test").await;
    let scrape = server
        .scrape_until(|s| counted(s, "legacy", "accepted") >= 2.0)
        .await;
    assert_eq!(counted(&scrape, "legacy", "accepted"), 2.0);
    assert_eq!(counted(&scrape, "legacy", "connection_cap"), 1.0);
    first.cmd("QUIT", "221").await;
    other.cmd("QUIT", "221").await;
}
