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
    DELIVERY, Opts, PLAIN_TOKEN, TestServer, message, retry_in, send_mail, split_prefix, user_entry,
};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Another loopback address: the submission listener has no allowlist (the legacy one only
/// admits 127.0.0.1).
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// `\0bob\0alice-pw` in base64: bob (see [`user_entry`]) shares alice's password.
const BOB_TOKEN: &str = "AGJvYgBhbGljZS1wdw==";

/// What reached the sink: (X-Test tag, envelope sender, recipients).
type Delivered = Vec<(String, String, Vec<String>)>;

/// Sends `cmd` and asserts the exact refusal of rule `rule`, `450 4.7.1 ... try again in N s`
/// with `0 < N <= max_secs`; returns `N`.
async fn over_limit(d: &mut Dialog, cmd: &str, rule: &str, max_secs: u64) -> u64 {
    d.send(format!("{cmd}\r\n")).await;
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

/// Sends `cmd` and asserts the one-line reply is exactly `want`.
async fn exact(d: &mut Dialog, cmd: &str, want: &str) {
    let reply = d.cmd(cmd, "").await;
    assert_eq!(reply.lines, [want], "to {cmd:?}");
}

/// A submission session from `from` (`None`: 127.0.0.1) after STARTTLS, EHLO and
/// `AUTH PLAIN token`.
async fn login(server: &TestServer, from: Option<IpAddr>, token: &str) -> Dialog {
    let mut d = match from {
        Some(ip) => {
            let mut d = Dialog::connect_from(ip, server.submission).await;
            d.expect("220 ").await;
            d
        }
        None => Dialog::connect(server.submission).await,
    };
    d.ehlo("client.test").await;
    d.starttls(&server.ca).await;
    d.ehlo("client.test").await;
    d.cmd(&format!("AUTH PLAIN {token}"), "235 2.7.0 ").await;
    d
}

/// Waits until `n` messages reached the sink and returns them sorted by tag, after checking
/// that each carries the client's bytes intact (those [`send`] wrote for its tag).
async fn delivered(server: &TestServer, n: usize) -> Delivered {
    let got = server.sink().wait_for(DELIVERY, |m| m.len() >= n).await;
    assert_eq!(got.len(), n, "{}", server.sink().debug_dump());
    let mut rows: Delivered = got
        .iter()
        .map(|m| {
            let text = m.text();
            let tag = text
                .split("\r\n")
                .find_map(|l| l.strip_prefix("X-Test: "))
                .expect("no X-Test header")
                .to_owned();
            split_prefix(&m.data, &tagged(&tag));
            (tag, m.mail_from.clone(), m.rcpt_to.clone())
        })
        .collect();
    rows.sort();
    rows
}

/// The expected [`delivered`] rows, sorted by tag.
fn rows(items: &[(&str, &str, &[&str])]) -> Delivered {
    let mut rows: Delivered = items
        .iter()
        .map(|(tag, from, to)| {
            let to = to.iter().map(|s| (*s).to_owned()).collect();
            ((*tag).to_owned(), (*from).to_owned(), to)
        })
        .collect();
    rows.sort();
    rows
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
    send(&mut d, dev, &["x@example.org"], "ip-1").await;
    send(&mut d, dev, &["x@example.org"], "ip-2").await;
    let mut sub = login(&server, None, PLAIN_TOKEN).await;
    send(&mut sub, "alice@example.com", &["x@example.org"], "ip-3").await;
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
        send(&mut d, dev, &["x@example.org"], tag).await;
    }
    over_limit(&mut sub, mail_alice, "per-ip-messages", 1200).await;
    let x: &[&str] = &["x@example.org"];
    let want = rows(&[
        ("ip-1", dev, x),
        ("ip-2", dev, x),
        ("ip-3", "alice@example.com", x),
        ("other", "alice@example.com", &["y@example.org"]),
        ("later-1", dev, x),
        ("later-2", dev, x),
        ("later-3", dev, x),
    ]);
    assert_eq!(delivered(&server, 7).await, want);
}

/// `{per: ip, recipients: 3, interval: 1h}`: the fourth RCPT of a transaction is refused
/// and the transaction goes on with the three accepted ones, which are all the sink gets;
/// MAIL is not limited, a further RCPT is; after the interval three recipients pass again.
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

    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0 ").await;
    over_limit(&mut d, "RCPT TO:<e@example.org>", "per-ip-recipients", 1200).await;
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
    assert_eq!(delivered(&server, 2).await, want);
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
    send(&mut d, alice, &["x@example.org"], "user-1").await;
    send(&mut d, alice, &["x@example.org"], "user-2").await;
    over_limit(&mut d, mail, "per-user-messages", 1800).await;
    let mut other = login(&server, Some(OTHER), PLAIN_TOKEN).await;
    over_limit(&mut other, mail, "per-user-messages", 1800).await;

    let mut legacy = server.legacy_session().await;
    for tag in ["anon-1", "anon-2", "anon-3"] {
        send(&mut legacy, "dev@example.net", &["x@example.org"], tag).await;
    }

    server.clock.advance(HOUR);
    send(&mut other, alice, &["x@example.org"], "later-1").await;
    send(&mut d, alice, &["x@example.org"], "later-2").await;
    over_limit(&mut other, mail, "per-user-messages", 1800).await;
    let x: &[&str] = &["x@example.org"];
    let want = rows(&[
        ("user-1", alice, x),
        ("user-2", alice, x),
        ("anon-1", "dev@example.net", x),
        ("anon-2", "dev@example.net", x),
        ("anon-3", "dev@example.net", x),
        ("later-1", alice, x),
        ("later-2", alice, x),
    ]);
    assert_eq!(delivered(&server, 7).await, want);
}

/// `{per: sender_domain, messages: 2, interval: 1h}`: the third sender at one.example (in
/// any case) is refused, two.example is unaffected, the null sender is not counted; after
/// the interval one.example passes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_sender_domain() {
    let rule = "rate_limits: [{per: sender_domain, messages: 2, interval: 1h}]\n";
    let server = TestServer::start(Opts::with(rule)).await;
    let mut d = server.legacy_session().await;
    send(&mut d, "a@one.example", &["x@example.org"], "one-1").await;
    send(&mut d, "b@One.Example", &["x@example.org"], "one-2").await;
    let mail = "MAIL FROM:<c@ONE.EXAMPLE>";
    over_limit(&mut d, mail, "per-sender-domain-messages", 1800).await;
    send(&mut d, "a@two.example", &["x@example.org"], "two-1").await;
    for _ in 0..3 {
        d.cmd("MAIL FROM:<>", "250 2.1.0 ").await;
        d.cmd("RSET", "250 2.0.0 ").await;
    }

    server.clock.advance(HOUR);
    send(&mut d, "c@one.example", &["x@example.org"], "one-later").await;
    let x: &[&str] = &["x@example.org"];
    let want = rows(&[
        ("one-1", "a@one.example", x),
        ("one-2", "b@One.Example", x),
        ("two-1", "a@two.example", x),
        ("one-later", "c@one.example", x),
    ]);
    assert_eq!(delivered(&server, 4).await, want);
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
    send(&mut d, dev, &["x@example.org"], "legacy-1").await;
    send(&mut d, dev, &["x@example.org"], "legacy-2").await;
    over_limit(&mut d, mail, "per-listener-messages", 1800).await;
    let mut again = server.legacy_session().await;
    over_limit(&mut again, mail, "per-listener-messages", 1800).await;

    let alice = "alice@example.com";
    let mut sub = login(&server, None, PLAIN_TOKEN).await;
    send(&mut sub, alice, &["x@example.org"], "sub-1").await;
    send(&mut sub, alice, &["x@example.org"], "sub-2").await;
    let mail_alice = "MAIL FROM:<alice@example.com>";
    over_limit(&mut sub, mail_alice, "per-listener-messages", 1800).await;

    server.clock.advance(HOUR);
    send(&mut again, dev, &["x@example.org"], "legacy-later").await;
    let x: &[&str] = &["x@example.org"];
    let want = rows(&[
        ("legacy-1", dev, x),
        ("legacy-2", dev, x),
        ("sub-1", alice, x),
        ("sub-2", alice, x),
        ("legacy-later", dev, x),
    ]);
    assert_eq!(delivered(&server, 5).await, want);
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
    send(&mut d, dev, &["x@example.org"], "burst-1").await;
    send(&mut d, dev, &["x@example.org"], "burst-2").await;
    over_limit(&mut d, mail, "per-ip-messages", 900).await;

    server.clock.advance(15 * MINUTE);
    send(&mut d, dev, &["x@example.org"], "quarter").await;
    over_limit(&mut d, mail, "per-ip-messages", 900).await;

    server.clock.advance(HOUR);
    send(&mut d, dev, &["x@example.org"], "refill-1").await;
    send(&mut d, dev, &["x@example.org"], "refill-2").await;
    over_limit(&mut d, mail, "per-ip-messages", 900).await;
    let x: &[&str] = &["x@example.org"];
    let want = rows(&[
        ("burst-1", dev, x),
        ("burst-2", dev, x),
        ("quarter", dev, x),
        ("refill-1", dev, x),
        ("refill-2", dev, x),
    ]);
    assert_eq!(delivered(&server, 5).await, want);
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
    send(&mut d, dev, &["x@example.org"], "legacy").await;
    over_limit(&mut d, "MAIL FROM:<dev@example.net>", "printers", 3600).await;

    let alice = "alice@example.com";
    let mut sub = login(&server, None, PLAIN_TOKEN).await;
    for tag in ["sub-1", "sub-2", "sub-3"] {
        send(&mut sub, alice, &["x@example.org"], tag).await;
    }
    let x: &[&str] = &["x@example.org"];
    let want = rows(&[
        ("legacy", dev, x),
        ("sub-1", alice, x),
        ("sub-2", alice, x),
        ("sub-3", alice, x),
    ]);
    assert_eq!(delivered(&server, 4).await, want);
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
    exact(&mut bob, "RCPT TO:<c@example.org>", too_many).await;
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
    exact(&mut d, "RCPT TO:<e@example.org>", too_many).await;
    assert!(data(&mut d, "alice-1").await.starts_with("250 2.0.0 "));
    send(&mut d, alice, &["x@example.org"], "alice-2").await;
    send(&mut d, alice, &["x@example.org"], "alice-3").await;
    let mail_alice = "MAIL FROM:<alice@example.com>";
    over_limit(&mut d, mail_alice, "alice-messages", 1200).await;
    let x: &[&str] = &["x@example.org"];
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
        ("alice-2", alice, x),
        ("alice-3", alice, x),
    ]);
    assert_eq!(delivered(&server, 4).await, want);
}

/// A `networks` entry for 127.0.0.1/32 makes the legacy client a device with lower caps
/// than the global ones: 2 recipients (the third `452 4.5.3`, the two delivered), 2 KiB
/// (`SIZE` advertised as 2048, `SIZE=4096` refused at MAIL, a 3 KiB body after DATA) and
/// its own `{per: ip, messages: 2}` in place of the global `messages: 10`. alice, logged in
/// from the same address, is a user and keeps the global caps and bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_entry_lowers_limits() {
    let extra = "networks:\n  - {network: 127.0.0.1/32, max_recipients: 2, \
                 max_message_size: 2KiB, rate_limits: [{per: ip, messages: 2, interval: 1h}]}\n\
                 rate_limits: [{per: ip, messages: 10, interval: 1h}]\n";
    let server = TestServer::start(Opts::with(extra)).await;
    let mut d = Dialog::connect(server.legacy).await;
    let keywords = d.ehlo("client.test").await;
    assert!(keywords.contains(&"SIZE 2048".to_owned()), "{keywords:?}");
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0 ").await;
    d.cmd("RCPT TO:<a@example.org>", "250 2.1.5 ").await;
    d.cmd("RCPT TO:<b@example.org>", "250 2.1.5 ").await;
    exact(
        &mut d,
        "RCPT TO:<c@example.org>",
        "452 4.5.3 Error: too many recipients",
    )
    .await;
    assert!(data(&mut d, "device").await.starts_with("250 2.0.0 "));

    let size = "MAIL FROM:<dev@example.net> SIZE=4096";
    exact(&mut d, size, "552 5.3.4 Message size exceeds fixed limit").await;
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0 ").await;
    d.cmd("RCPT TO:<a@example.org>", "250 2.1.5 ").await;
    let too_big = data(&mut d, "big-device").await;
    assert_eq!(too_big, "552 5.3.4 Error: message file too big");
    let mail = "MAIL FROM:<dev@example.net>";
    over_limit(&mut d, mail, "per-ip-messages", 1800).await;

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
    assert_eq!(delivered(&server, 2).await, want);
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
    let head = "421 4.7.0 Error: connection rate limit per-ip-connections exceeded, try again in ";
    retry_in(reply.first(), head, max_secs);
    d.expect_closed().await;
}

/// `{per: ip, connections: 2, interval: 1m}`: two connections from 127.0.0.1 are greeted
/// (one already closed: the rule counts connections made, not open); the third, on either
/// listener, gets `421 4.7.0` naming the rule and is closed; 127.0.0.2 is greeted; a
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
    let mut other = Dialog::connect_from(OTHER, server.submission).await;
    other.expect("220 ").await;
    other.ehlo("client.test").await;

    server.clock.advance(MINUTE);
    let mut d = server.legacy_session().await;
    send(&mut d, "dev@example.net", &["x@example.org"], "later").await;
    let want = rows(&[("later", "dev@example.net", &["x@example.org"])]);
    assert_eq!(delivered(&server, 1).await, want);
}
