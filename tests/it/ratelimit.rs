//! Rate limits over real sockets (`rate_limits`, and the per-identity overrides in `users[]`
//! and `networks[]` entries): each rule at its limit and one past it, the exact refusal
//! (`450 4.7.1` at MAIL / RCPT, `421 4.7.0` and close at connect, naming the rule and the
//! wait), and recovery once postern's clock has moved on by the interval.
//!
//! Time is moved with `server.clock.advance`, never waited out. The wait in a refusal depends
//! on how long the test took to get there, so it is asserted as a range: more than 0 s and at
//! most one emission interval (`interval / limit`), the time one spent cell takes to return.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::harness::client::Dialog;
use crate::harness::{
    Opts, PLAIN_TOKEN, TestServer, delivered, message, retry_in, rows, send_mail, user_entry,
};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Another loopback address: the submission listener has no allowlist (the legacy one only
/// admits 127.0.0.1).
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The one recipient of most messages here.
const X: &[&str] = &["x@example.org"];
/// `\0bob\0alice-pw` in base64: bob (see [`user_entry`]) shares alice's password.
const BOB_TOKEN: &str = "AGJvYgBhbGljZS1wdw==";

/// Sends `cmd` and asserts the exact refusal of rule `rule` (see [`refused_by`]).
async fn over_limit(d: &mut Dialog, cmd: &str, rule: &str, max_secs: u64) -> u64 {
    d.send(format!("{cmd}\r\n")).await;
    refused_by(d, rule, max_secs).await
}

/// Reads the next reply and asserts it is exactly the refusal of rule `rule`,
/// `450 4.7.1 ... try again in N s` with `0 < N <= max_secs`; returns `N`.
async fn refused_by(d: &mut Dialog, rule: &str, max_secs: u64) -> u64 {
    let reply = d.try_reply().await.expect("closed instead of a refusal");
    assert_eq!(reply.lines.len(), 1, "{:?}", reply.lines);
    let head = format!("450 4.7.1 Error: rate limit {rule} exceeded, try again in ");
    retry_in(reply.first(), &head, max_secs)
}

/// The message tagged `tag` that [`send`] and [`data`] write; a tag starting with `big`
/// carries over 3 KiB of body.
fn tagged(tag: &str) -> Vec<u8> {
    let body = if tag.starts_with("big") {
        "0123456789abcdef0123456789abcdef\r\n".repeat(90)
    } else {
        "body\r\n".to_owned()
    };
    message(tag, "", &body)
}

/// One whole transaction of the message tagged `tag`.
async fn send(d: &mut Dialog, from: &str, to: &[&str], tag: &str) {
    send_mail(d, from, to, &tagged(tag)).await;
}

/// DATA with the message tagged `tag`, in a transaction the caller opened; returns the
/// final reply's line.
async fn data(d: &mut Dialog, tag: &str) -> String {
    d.cmd("DATA", "354 ").await;
    d.send([tagged(tag).as_slice(), b".\r\n"].concat()).await;
    let reply = d.try_reply().await.expect("closed after the message");
    reply.first().to_owned()
}

/// A submission session from `from` (`None`: 127.0.0.1) after STARTTLS, EHLO and
/// `AUTH PLAIN token`.
async fn login(server: &TestServer, from: Option<IpAddr>, token: &str) -> Dialog {
    let mut d = server.starttls_session_from(from).await;
    d.cmd(&format!("AUTH PLAIN {token}"), "235 2.7.0 ").await;
    d
}

/// `{per: ip, messages: 3, interval: 1h}`: 127.0.0.1 gets three messages over any listener
/// and connection, the fourth MAIL is refused on both listeners (wait at most 20 min, one
/// emission interval), 127.0.0.2 has its own bucket, and after the interval 127.0.0.1 has
/// three again, not more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_ip() {
    let rule = "rate_limits: [{per: ip, messages: 3, interval: 1h}]\n";
    let server = TestServer::start(Opts::with(rule)).await;
    let dev = "dev@example.net";
    let mut d = server.legacy_session().await;
    send(&mut d, dev, X, "ip-1").await;
    send(&mut d, dev, X, "ip-2").await;
    let mut sub = login(&server, None, PLAIN_TOKEN).await;
    send(&mut sub, "alice@example.com", X, "ip-3").await;
    let mail_alice = "MAIL FROM:<alice@example.com>";
    over_limit(&mut sub, mail_alice, "per-ip-messages", 1200).await;
    over_limit(
        &mut d,
        &format!("MAIL FROM:<{dev}>"),
        "per-ip-messages",
        1200,
    )
    .await;

    let mut other = login(&server, Some(OTHER), PLAIN_TOKEN).await;
    send(&mut other, "alice@example.com", &["y@example.org"], "other").await;

    server.clock.advance(HOUR);
    for tag in ["later-1", "later-2", "later-3"] {
        send(&mut d, dev, X, tag).await;
    }
    over_limit(&mut sub, mail_alice, "per-ip-messages", 1200).await;
    let want = rows(&[
        ("ip-1", dev, X),
        ("ip-2", dev, X),
        ("ip-3", "alice@example.com", X),
        ("other", "alice@example.com", &["y@example.org"]),
        ("later-1", dev, X),
        ("later-2", dev, X),
        ("later-3", dev, X),
    ]);
    assert_eq!(delivered(server.sink(), 7, tagged).await, want);
}

/// `{per: ip, recipients: 3, interval: 1h}`: the fourth RCPT of a transaction is refused
/// and the transaction goes on with the three accepted ones, which are all the sink gets;
/// MAIL is not limited, a further RCPT is (pipelined: DATA then finds no recipient); after the interval three recipients pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_per_ip() {
    let rule = "rate_limits: [{per: ip, recipients: 3, interval: 1h}]\n";
    let server = TestServer::start(Opts::with(rule)).await;
    let mut d = server.legacy_session().await;
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0 ").await;
    for rcpt in ["a", "b", "c"] {
        d.cmd(&format!("RCPT TO:<{rcpt}@example.org>"), "250 2.1.5 ")
            .await;
    }
    over_limit(&mut d, "RCPT TO:<d@example.org>", "per-ip-recipients", 1200).await;
    assert!(data(&mut d, "rcpts").await.starts_with("250 2.0.0 "));

    // Pipelined (RFC 2920): the refused RCPT leaves no recipient, so DATA gets 554.
    d.send("MAIL FROM:<dev@example.net>\r\nRCPT TO:<e@example.org>\r\nDATA\r\n")
        .await;
    d.expect("250 2.1.0 ").await;
    refused_by(&mut d, "per-ip-recipients", 1200).await;
    d.expect("554 5.5.1 Error: no valid recipients").await;
    d.cmd("RSET", "250 2.0.0 ").await;

    server.clock.advance(HOUR);
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0 ").await;
    for rcpt in ["d", "e", "f"] {
        d.cmd(&format!("RCPT TO:<{rcpt}@example.org>"), "250 2.1.5 ")
            .await;
    }
    over_limit(&mut d, "RCPT TO:<g@example.org>", "per-ip-recipients", 1200).await;
    assert!(data(&mut d, "later").await.starts_with("250 2.0.0 "));
    let want = rows(&[
        (
            "rcpts",
            "dev@example.net",
            &["a@example.org", "b@example.org", "c@example.org"],
        ),
        (
            "later",
            "dev@example.net",
            &["d@example.org", "e@example.org", "f@example.org"],
        ),
    ]);
    assert_eq!(delivered(server.sink(), 2, tagged).await, want);
}

/// `{per: user, messages: 2, interval: 1h}`: alice's third MAIL is refused, also from
/// another address (the key is the user); the anonymous legacy client is not counted; after
/// the interval alice has two again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_user() {
    let rule = "rate_limits: [{per: user, messages: 2, interval: 1h}]\n";
    let server = TestServer::start(Opts::with(rule)).await;
    let alice = "alice@example.com";
    let mail = "MAIL FROM:<alice@example.com>";
    let mut d = login(&server, None, PLAIN_TOKEN).await;
    send(&mut d, alice, X, "user-1").await;
    send(&mut d, alice, X, "user-2").await;
    over_limit(&mut d, mail, "per-user-messages", 1800).await;
    let mut other = login(&server, Some(OTHER), PLAIN_TOKEN).await;
    over_limit(&mut other, mail, "per-user-messages", 1800).await;

    let mut legacy = server.legacy_session().await;
    for tag in ["anon-1", "anon-2", "anon-3"] {
        send(&mut legacy, "dev@example.net", X, tag).await;
    }

    server.clock.advance(HOUR);
    send(&mut other, alice, X, "later-1").await;
    send(&mut d, alice, X, "later-2").await;
    over_limit(&mut other, mail, "per-user-messages", 1800).await;
    let want = rows(&[
        ("user-1", alice, X),
        ("user-2", alice, X),
        ("anon-1", "dev@example.net", X),
        ("anon-2", "dev@example.net", X),
        ("anon-3", "dev@example.net", X),
        ("later-1", alice, X),
        ("later-2", alice, X),
    ]);
    assert_eq!(delivered(server.sink(), 7, tagged).await, want);
}

/// `{per: sender_domain, messages: 2, interval: 1h}`: the third sender at one.example (in
/// any case) is refused, two.example is unaffected, the null sender is not counted; after
/// the interval one.example passes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_sender_domain() {
    let rule = "rate_limits: [{per: sender_domain, messages: 2, interval: 1h}]\n";
    let server = TestServer::start(Opts::with(rule)).await;
    let mut d = server.legacy_session().await;
    send(&mut d, "a@one.example", X, "one-1").await;
    send(&mut d, "b@One.Example", X, "one-2").await;
    let mail = "MAIL FROM:<c@ONE.EXAMPLE>";
    over_limit(&mut d, mail, "per-sender-domain-messages", 1800).await;
    send(&mut d, "a@two.example", X, "two-1").await;
    for _ in 0..3 {
        d.cmd("MAIL FROM:<>", "250 2.1.0 ").await;
        d.cmd("RSET", "250 2.0.0 ").await;
    }

    server.clock.advance(HOUR);
    send(&mut d, "c@one.example", X, "one-later").await;
    let want = rows(&[
        ("one-1", "a@one.example", X),
        ("one-2", "b@One.Example", X),
        ("two-1", "a@two.example", X),
        ("one-later", "c@one.example", X),
    ]);
    assert_eq!(delivered(server.sink(), 4, tagged).await, want);
}

/// `{per: listener, messages: 2, interval: 1h}`: the legacy listener's third MAIL is
/// refused in any session on it, while the submission listener has its own two; after the
/// interval the legacy listener passes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_listener() {
    let rule = "rate_limits: [{per: listener, messages: 2, interval: 1h}]\n";
    let server = TestServer::start(Opts::with(rule)).await;
    let dev = "dev@example.net";
    let mail = "MAIL FROM:<dev@example.net>";
    let mut d = server.legacy_session().await;
    send(&mut d, dev, X, "legacy-1").await;
    send(&mut d, dev, X, "legacy-2").await;
    over_limit(&mut d, mail, "per-listener-messages", 1800).await;
    let mut again = server.legacy_session().await;
    over_limit(&mut again, mail, "per-listener-messages", 1800).await;

    let alice = "alice@example.com";
    let mut sub = login(&server, None, PLAIN_TOKEN).await;
    send(&mut sub, alice, X, "sub-1").await;
    send(&mut sub, alice, X, "sub-2").await;
    let mail_alice = "MAIL FROM:<alice@example.com>";
    over_limit(&mut sub, mail_alice, "per-listener-messages", 1800).await;

    server.clock.advance(HOUR);
    send(&mut again, dev, X, "legacy-later").await;
    let want = rows(&[
        ("legacy-1", dev, X),
        ("legacy-2", dev, X),
        ("sub-1", alice, X),
        ("sub-2", alice, X),
        ("legacy-later", dev, X),
    ]);
    assert_eq!(delivered(server.sink(), 5, tagged).await, want);
}

/// `{per: ip, messages: 4, interval: 1h, burst: 2}`: only two at once; one more comes back
/// every 15 minutes; a whole interval of quiet refills the burst (two), not the limit (four).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_smaller_than_limit() {
    let rule = "rate_limits: [{per: ip, messages: 4, interval: 1h, burst: 2}]\n";
    let server = TestServer::start(Opts::with(rule)).await;
    let dev = "dev@example.net";
    let mail = "MAIL FROM:<dev@example.net>";
    let mut d = server.legacy_session().await;
    send(&mut d, dev, X, "burst-1").await;
    send(&mut d, dev, X, "burst-2").await;
    over_limit(&mut d, mail, "per-ip-messages", 900).await;

    server.clock.advance(15 * MINUTE);
    send(&mut d, dev, X, "quarter").await;
    over_limit(&mut d, mail, "per-ip-messages", 900).await;

    server.clock.advance(HOUR);
    send(&mut d, dev, X, "refill-1").await;
    send(&mut d, dev, X, "refill-2").await;
    over_limit(&mut d, mail, "per-ip-messages", 900).await;
    let want = rows(&[
        ("burst-1", dev, X),
        ("burst-2", dev, X),
        ("quarter", dev, X),
        ("refill-1", dev, X),
        ("refill-2", dev, X),
    ]);
    assert_eq!(delivered(server.sink(), 5, tagged).await, want);
}

/// `{per: identity, messages: 1, interval: 1h}` with a `networks` entry for 127.0.0.1/32:
/// from the same address the legacy device (`network:127.0.0.1/32`), alice and bob each
/// have their own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_identity() {
    let server = TestServer::start(Opts {
        extra: "networks: [{network: 127.0.0.1/32}]\n\
                rate_limits: [{per: identity, messages: 1, interval: 1h}]\n"
            .into(),
        users: user_entry("bob", ""),
        ..Opts::default()
    })
    .await;
    let rule = "per-identity-messages";
    let mut device = server.legacy_session().await;
    send(&mut device, "dev@example.net", X, "device").await;
    over_limit(&mut device, "MAIL FROM:<dev@example.net>", rule, 3600).await;
    let mut alice = login(&server, None, PLAIN_TOKEN).await;
    send(&mut alice, "alice@example.com", X, "alice").await;
    over_limit(&mut alice, "MAIL FROM:<alice@example.com>", rule, 3600).await;
    let mut bob = login(&server, None, BOB_TOKEN).await;
    send(&mut bob, "bob@example.com", X, "bob").await;
    over_limit(&mut bob, "MAIL FROM:<bob@example.com>", rule, 3600).await;
    let want = rows(&[
        ("device", "dev@example.net", X),
        ("alice", "alice@example.com", X),
        ("bob", "bob@example.com", X),
    ]);
    assert_eq!(delivered(server.sink(), 3, tagged).await, want);
}

/// A named rule with `listeners: [legacy]` limits the legacy listener only: the same
/// address sends freely on submission, and the refusal carries the configured name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_for_one_listener() {
    let rule = "rate_limits: [{name: printers, per: ip, messages: 1, interval: 1h, \
                listeners: [legacy]}]\n";
    let server = TestServer::start(Opts::with(rule)).await;
    let dev = "dev@example.net";
    let mut d = server.legacy_session().await;
    send(&mut d, dev, X, "legacy").await;
    over_limit(&mut d, "MAIL FROM:<dev@example.net>", "printers", 3600).await;

    let alice = "alice@example.com";
    let mut sub = login(&server, None, PLAIN_TOKEN).await;
    for tag in ["sub-1", "sub-2", "sub-3"] {
        send(&mut sub, alice, X, tag).await;
    }
    let want = rows(&[
        ("legacy", dev, X),
        ("sub-1", alice, X),
        ("sub-2", alice, X),
        ("sub-3", alice, X),
    ]);
    assert_eq!(delivered(server.sink(), 4, tagged).await, want);
}

/// A user's own rule replaces the global one with the same `per` and quantity, and her own
/// `max_recipients` the global cap. Globally `{per: user, messages: 1}` and
/// `max_recipients: 2`: bob (no overrides) gets one message of two recipients; alice
/// (`alice-messages`: 3, `max_recipients: 4`) three, the first to four recipients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_override_raises_limits() {
    let server = TestServer::start(Opts {
        extra: "limits: {max_recipients: 2}\n\
                rate_limits: [{per: user, messages: 1, interval: 1h}]\n"
            .into(),
        alice: "max_recipients: 4, rate_limits: [{name: alice-messages, per: user, \
                messages: 3, interval: 1h}]"
            .into(),
        users: user_entry("bob", ""),
        ..Opts::default()
    })
    .await;
    let too_many = "452 4.5.3 Error: too many recipients";
    let mut bob = login(&server, None, BOB_TOKEN).await;
    bob.cmd("MAIL FROM:<bob@example.com>", "250 2.1.0 ").await;
    bob.cmd("RCPT TO:<a@example.org>", "250 2.1.5 ").await;
    bob.cmd("RCPT TO:<b@example.org>", "250 2.1.5 ").await;
    bob.exact("RCPT TO:<c@example.org>", too_many).await;
    assert!(data(&mut bob, "bob").await.starts_with("250 2.0.0 "));
    let mail_bob = "MAIL FROM:<bob@example.com>";
    over_limit(&mut bob, mail_bob, "per-user-messages", 3600).await;

    let alice = "alice@example.com";
    let mut d = login(&server, None, PLAIN_TOKEN).await;
    d.cmd("MAIL FROM:<alice@example.com>", "250 2.1.0 ").await;
    for rcpt in ["a", "b", "c", "d"] {
        d.cmd(&format!("RCPT TO:<{rcpt}@example.org>"), "250 2.1.5 ")
            .await;
    }
    d.exact("RCPT TO:<e@example.org>", too_many).await;
    assert!(data(&mut d, "alice-1").await.starts_with("250 2.0.0 "));
    send(&mut d, alice, X, "alice-2").await;
    send(&mut d, alice, X, "alice-3").await;
    let mail_alice = "MAIL FROM:<alice@example.com>";
    over_limit(&mut d, mail_alice, "alice-messages", 1200).await;
    let four: &[&str] = &[
        "a@example.org",
        "b@example.org",
        "c@example.org",
        "d@example.org",
    ];
    let want = rows(&[
        (
            "bob",
            "bob@example.com",
            &["a@example.org", "b@example.org"],
        ),
        ("alice-1", alice, four),
        ("alice-2", alice, X),
        ("alice-3", alice, X),
    ]);
    assert_eq!(delivered(server.sink(), 4, tagged).await, want);
}

/// A `networks` entry for 127.0.0.1/32 makes the legacy client a device with lower caps
/// than the global ones: 2 recipients (the third `452 4.5.3`, the two delivered), 2 KiB
/// (`SIZE` advertised as 2048, `SIZE=4096` refused at MAIL, a 3 KiB body after DATA) and
/// its own `{per: ip, messages: 2}` in place of the global `messages: 10`. alice, logged in
/// from the same address, is a user and keeps the global caps and bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_entry_lowers_limits() {
    let extra = "networks:\n  - {network: 127.0.0.1/32, max_recipients: 2, \
                 max_message_size: 2KiB, \
                 rate_limits: [{per: ip, messages: 2, interval: 1h, name: printer-messages}]}\n\
                 rate_limits: [{per: ip, messages: 10, interval: 1h}]\n";
    let server = TestServer::start(Opts::with(extra)).await;
    let mut d = Dialog::connect(server.legacy).await;
    let keywords = d.ehlo("client.test").await;
    assert!(keywords.contains(&"SIZE 2048".to_owned()), "{keywords:?}");
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0 ").await;
    d.cmd("RCPT TO:<a@example.org>", "250 2.1.5 ").await;
    d.cmd("RCPT TO:<b@example.org>", "250 2.1.5 ").await;
    d.exact(
        "RCPT TO:<c@example.org>",
        "452 4.5.3 Error: too many recipients",
    )
    .await;
    assert!(data(&mut d, "device").await.starts_with("250 2.0.0 "));

    let size = "MAIL FROM:<dev@example.net> SIZE=4096";
    d.exact(size, "552 5.3.4 Message size exceeds fixed limit")
        .await;
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0 ").await;
    d.cmd("RCPT TO:<a@example.org>", "250 2.1.5 ").await;
    let too_big = data(&mut d, "big-device").await;
    assert_eq!(too_big, "552 5.3.4 Error: message file too big");
    // The network's own rule replaced the global one with the same per and quantity.
    let mail = "MAIL FROM:<dev@example.net>";
    over_limit(&mut d, mail, "printer-messages", 1800).await;

    let alice = "alice@example.com";
    let mut sub = login(&server, None, PLAIN_TOKEN).await;
    sub.cmd("MAIL FROM:<alice@example.com> SIZE=4096", "250 2.1.0 ")
        .await;
    for rcpt in ["a", "b", "c"] {
        sub.cmd(&format!("RCPT TO:<{rcpt}@example.org>"), "250 2.1.5 ")
            .await;
    }
    assert!(data(&mut sub, "big-alice").await.starts_with("250 2.0.0 "));
    let want = rows(&[
        (
            "device",
            "dev@example.net",
            &["a@example.org", "b@example.org"],
        ),
        (
            "big-alice",
            alice,
            &["a@example.org", "b@example.org", "c@example.org"],
        ),
    ]);
    assert_eq!(delivered(server.sink(), 2, tagged).await, want);
}

/// Connects from `from` (`None`: 127.0.0.1) and asserts the exact connection-rate refusal
/// of `per-ip-connections` in place of the greeting (wait at most `max_secs`), then EOF.
async fn connection_refused(from: Option<IpAddr>, addr: std::net::SocketAddr, max_secs: u64) {
    let mut d = match from {
        Some(ip) => Dialog::connect_from(ip, addr).await,
        None => Dialog::connect_silent(addr).await,
    };
    let reply = d.try_reply().await.expect("closed without a reply");
    assert_eq!(reply.lines.len(), 1, "{:?}", reply.lines);
    retry_in(reply.first(), CONNECTION_RATE, max_secs);
    d.expect_closed().await;
}

/// The connection-rate refusal of `per-ip-connections`, before its wait.
const CONNECTION_RATE: &str =
    "421 4.7.0 Error: connection rate limit per-ip-connections exceeded, try again in ";

/// `{per: ip, connections: 2, interval: 1m}`: two connections from 127.0.0.1 are greeted
/// (one already closed: the rule counts connections made, not open); the third, on any
/// listener, gets `421 4.7.0` naming the rule in place of the greeting (after the handshake
/// on the implicit-TLS one, then `close_notify`) and is closed; 127.0.0.2 is greeted; a
/// minute later 127.0.0.1 is greeted again and can send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip() {
    let rule = "rate_limits: [{per: ip, connections: 2, interval: 1m}]\n";
    let server = TestServer::start(Opts::with(rule)).await;
    let _open = server.legacy_session().await;
    let mut closed = server.legacy_session().await;
    closed.cmd("QUIT", "221 2.0.0 ").await;
    closed.expect_closed().await;
    connection_refused(None, server.legacy, 30).await;
    connection_refused(None, server.submission, 30).await;
    let mut implicit = Dialog::connect_tls_silent(server.submissions, &server.ca).await;
    let reply = implicit.try_reply().await.expect("closed without a reply");
    retry_in(reply.first(), CONNECTION_RATE, 30);
    implicit.expect_clean_close().await;
    let mut other = Dialog::connect_from(OTHER, server.submission).await;
    other.expect("220 ").await;
    other.ehlo("client.test").await;

    server.clock.advance(MINUTE);
    let mut d = server.legacy_session().await;
    send(&mut d, "dev@example.net", X, "later").await;
    let want = rows(&[("later", "dev@example.net", X)]);
    assert_eq!(delivered(server.sink(), 1, tagged).await, want);
}
