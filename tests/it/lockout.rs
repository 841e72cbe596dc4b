//! The AUTH-failure lockout over real sockets (`auth_lockout`): failures counted per client
//! address across connections, the failure that reaches `attempts` answered `421 4.7.0` and
//! the session closed, then `454 4.7.0` with the time left for any AUTH from that address
//! (the right password too) until `duration` has passed; other addresses unaffected unless
//! `per_username` locks the username itself.
//!
//! All on the submission listener (STARTTLS, then AUTH PLAIN). Time is moved with
//! `server.clock.advance`, never waited out.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::harness::client::Dialog;
use crate::harness::{
    Opts, PLAIN_TOKEN, TestServer, delivered, message, retry_in, rows, send_mail, user_entry,
};

/// Three failures within ten minutes lock the address for fifteen.
const LOCKOUT: &str = "auth_lockout: {attempts: 3, window: 10m, duration: 15m}\n";
const WINDOW: Duration = Duration::from_secs(600);
const DURATION: Duration = Duration::from_secs(900);
/// alice with a wrong password: `\0alice\0wrong`.
const WRONG: &str = "AUTH PLAIN AGFsaWNlAHdyb25n";
/// bob (see [`user_entry`]) with the right password: `\0bob\0alice-pw`.
const BOB: &str = "AUTH PLAIN AGJvYgBhbGljZS1wdw==";
const FAILED: &str = "535 5.7.8 Error: authentication failed";
const LOCKS: &str = "421 4.7.0 Error: too many authentication failures";
const LOCKED: &str = "454 4.7.0 Error: too many authentication failures, try again in ";
const HOME: Option<IpAddr> = None;
const SECOND: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
const THIRD: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));

/// The one recipient of every message here.
const X: &[&str] = &["x@example.org"];

/// `AUTH PLAIN` as alice with her password.
fn right() -> String {
    format!("AUTH PLAIN {PLAIN_TOKEN}")
}

/// A wrong password that starts the lockout: `421 4.7.0`, then the server closes the TLS
/// session cleanly (`close_notify`, RFC 8446 6.1).
async fn fail_and_close(d: &mut Dialog) {
    d.exact(WRONG, LOCKS).await;
    d.expect_clean_close().await;
}

/// Sends `cmd` (an AUTH) and asserts the exact `454 4.7.0` of a lockout with at most
/// `max_secs` left; returns the seconds left.
async fn locked(d: &mut Dialog, cmd: &str, max_secs: u64) -> u64 {
    let reply = d.cmd(cmd, "").await;
    assert_eq!(reply.lines.len(), 1, "{:?}", reply.lines);
    retry_in(reply.first(), LOCKED, max_secs)
}

/// Sends the message tagged `tag` from `from` on an authenticated session.
async fn send(d: &mut Dialog, from: &str, tag: &str) {
    send_mail(d, from, X, &sent(tag)).await;
}

/// What [`send`] wrote for `tag`.
fn sent(tag: &str) -> Vec<u8> {
    message(tag, "", "body\r\n")
}

/// `attempts: 3` over two connections from 127.0.0.1: two `535`s, then the third failure
/// (in a new connection) gets `421 4.7.0` and the close. After that the right password from
/// 127.0.0.1 gets `454 4.7.0` with at most 15 min left, on the implicit-TLS listener too,
/// and the session stays unauthenticated (MAIL `530`); 127.0.0.2 logs in and sends. Ten seconds before the end
/// the lockout still holds (at most 10 s left); at the end a failure starts a new count
/// (`535`, not another lockout) and the right password passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_across_connections_and_expiry() {
    let server = TestServer::start(Opts::with(LOCKOUT)).await;
    let mut first = server.starttls_session_from(HOME).await;
    first.exact(WRONG, FAILED).await;
    first.exact(WRONG, FAILED).await;
    first.cmd("QUIT", "221 2.0.0 ").await;
    first.expect_closed().await;
    fail_and_close(&mut server.starttls_session_from(HOME).await).await;

    let mut d = server.starttls_session_from(HOME).await;
    locked(&mut d, &right(), 900).await;
    d.cmd("MAIL FROM:<alice@example.com>", "530 5.7.0 ").await;
    let mut implicit = Dialog::connect_tls(server.submissions, &server.ca).await;
    implicit.ehlo("client.test").await;
    locked(&mut implicit, &right(), 900).await;

    let mut other = server.starttls_session_from(SECOND).await;
    other.cmd(&right(), "235 2.7.0 ").await;
    send(&mut other, "alice@example.com", "other-address").await;

    server.clock.advance(DURATION - Duration::from_secs(10));
    locked(&mut d, &right(), 10).await;
    server.clock.advance(Duration::from_secs(10));
    let mut after = server.starttls_session_from(HOME).await;
    after.exact(WRONG, FAILED).await;
    after.cmd(&right(), "235 2.7.0 ").await;
    send(&mut after, "alice@example.com", "expired").await;
    let alice = "alice@example.com";
    let want = rows(&[("other-address", alice, X), ("expired", alice, X)]);
    assert_eq!(delivered(server.sink(), 2, sent).await, want);
}

/// `per_username: true`: failures for alice from different addresses add up (two from
/// 127.0.0.1, the third from 127.0.0.2 gets `421` and the close), and then alice is locked
/// from every address (the right password from 127.0.0.3 gets `454`) while bob logs in
/// from there; after `duration` alice logs in from 127.0.0.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_username_locks_the_user_everywhere() {
    let server = TestServer::start(Opts {
        extra: "auth_lockout: {attempts: 3, window: 10m, duration: 15m, per_username: true}\n"
            .into(),
        users: user_entry("bob", ""),
        ..Opts::default()
    })
    .await;
    let mut first = server.starttls_session_from(HOME).await;
    first.exact(WRONG, FAILED).await;
    first.exact(WRONG, FAILED).await;
    fail_and_close(&mut server.starttls_session_from(SECOND).await).await;

    let mut d = server.starttls_session_from(THIRD).await;
    locked(&mut d, &right(), 900).await;
    locked(&mut first, &right(), 900).await;
    d.cmd(BOB, "235 2.7.0 ").await;
    send(&mut d, "bob@example.com", "bob").await;

    server.clock.advance(DURATION);
    let mut after = server.starttls_session_from(THIRD).await;
    after.cmd(&right(), "235 2.7.0 ").await;
    send(&mut after, "alice@example.com", "alice").await;
    let want = rows(&[
        ("bob", "bob@example.com", X),
        ("alice", "alice@example.com", X),
    ]);
    assert_eq!(delivered(server.sink(), 2, sent).await, want);
}

/// With the default `per_username: false` a success does not clear an address's count
/// (failures only age out of the window): two failures, then the right password (235, two
/// are under the limit) and a success from 127.0.0.2; the next failure from 127.0.0.1 is
/// still the third and locks. The two failures from 127.0.0.2 around it never add up with
/// 127.0.0.1's: they are `535`, and 127.0.0.2 still logs in afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_does_not_reset_the_count() {
    let server = TestServer::start(Opts::with(LOCKOUT)).await;
    let alice = "alice@example.com";
    let mut first = server.starttls_session_from(HOME).await;
    first.exact(WRONG, FAILED).await;
    first.exact(WRONG, FAILED).await;
    first.cmd(&right(), "235 2.7.0 ").await;
    send(&mut first, alice, "between").await;

    let mut other = server.starttls_session_from(SECOND).await;
    other.exact(WRONG, FAILED).await;
    other.exact(WRONG, FAILED).await;
    other.cmd(&right(), "235 2.7.0 ").await;
    send(&mut other, alice, "elsewhere").await;

    fail_and_close(&mut server.starttls_session_from(HOME).await).await;
    locked(&mut server.starttls_session_from(HOME).await, &right(), 900).await;
    let mut again = server.starttls_session_from(SECOND).await;
    again.cmd(&right(), "235 2.7.0 ").await;
    let want = rows(&[("between", alice, X), ("elsewhere", alice, X)]);
    assert_eq!(delivered(server.sink(), 2, sent).await, want);
}

/// Failures are counted over `window` from the first one: two failures, the window passes,
/// and two more are still `535` (a new count; one of them by AUTH LOGIN, which counts the
/// same); the third of the new count, in the same session, gets `421` and the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_age_out_of_the_window() {
    let server = TestServer::start(Opts::with(LOCKOUT)).await;
    let mut d = server.starttls_session_from(HOME).await;
    d.exact(WRONG, FAILED).await;
    d.exact(WRONG, FAILED).await;
    server.clock.advance(WINDOW);
    d.exact(WRONG, FAILED).await;
    d.exact("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    d.exact("YWxpY2U=", "334 UGFzc3dvcmQ6").await;
    d.exact("d3Jvbmc=", FAILED).await;
    fail_and_close(&mut d).await;
    let mut after = server.starttls_session_from(HOME).await;
    locked(&mut after, &right(), 900).await;
}

/// Every AUTH from a locked-out address gets `454`, including one that asks for another
/// authorization identity (RFC 4616 2; alice's right password, authzid `bob`), which would
/// otherwise get `535` without any password check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_address_gets_454_for_any_auth() {
    let server = TestServer::start(Opts::with(LOCKOUT)).await;
    let mut d = server.starttls_session_from(HOME).await;
    d.exact(WRONG, FAILED).await;
    d.exact(WRONG, FAILED).await;
    fail_and_close(&mut d).await;
    let mut d = server.starttls_session_from(HOME).await;
    locked(&mut d, "AUTH PLAIN Ym9iAGFsaWNlAGFsaWNlLXB3", 900).await;
}
