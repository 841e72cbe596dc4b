//! Several instances sharing limits through a real Redis (`redis-server`, started by
//! [`RedisServer`] on loopback): the connection and its failures, the shared budgets, the
//! fallbacks while Redis is down or slow, recovery without a restart.

use crate::harness::client::Dialog;
use crate::harness::http::get;
use crate::harness::redis::RedisServer;
use crate::harness::{
    Opts, PLAIN_TOKEN, TestServer, eventually_async, logs, message, retry_in, send_mail,
};

/// The one recipient here.
const X: &[&str] = &["x@example.org"];
/// `AUTH PLAIN` for alice with a wrong password.
const WRONG_PLAIN: &str = "AUTH PLAIN AGFsaWNlAHdyb25n";

/// The password of the password-protected Redis (also in the log scanner's secrets).
pub const REDIS_PASSWORD: &str = "redis-secret-pw";

/// The `redis:` section for `server`, with `more` keys.
fn redis_section(server: &RedisServer, more: &str) -> String {
    format!(
        "redis: {{url: \"{}\", command_timeout: 200ms{more}}}\n",
        server.url()
    )
}

/// Waits until `postern_redis_up` is `want`.
async fn redis_up_is(server: &TestServer, want: f64) {
    eventually_async("postern_redis_up", || async {
        server.scrape().await.get("postern_redis_up") == want
    })
    .await;
}

/// Up once Redis answers; an outage shows in the gauge (the heartbeat PING) and in
/// `/readyz`'s body while it stays 200 (limits fall back, the instance still serves);
/// recovery needs no restart.
#[tokio::test]
async fn redis_outage_shows_but_keeps_the_instance_ready() {
    let mut redis = RedisServer::start().await;
    let server = TestServer::start(Opts::with(&redis_section(&redis, ""))).await;
    redis_up_is(&server, 1.0).await;
    assert_eq!(
        get(server.http, "/readyz").await,
        (200, "ready\n".to_owned())
    );
    redis.stop();
    redis_up_is(&server, 0.0).await;
    let (status, body) = get(server.http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("redis: unavailable"), "{body}");
    let url = redis.url();
    let down: Vec<_> = logs::lines()
        .into_iter()
        .filter(|l| l["fields"]["url"] == url.as_str() && l["level"] == "WARN")
        .collect();
    assert_eq!(down.len(), 1, "one warning per outage: {down:?}");
    redis.start_again().await;
    redis_up_is(&server, 1.0).await;
}

/// The password comes from `password_file`; a wrong one keeps Redis down and is logged
/// (without the password).
#[tokio::test]
async fn redis_password_file_is_used_and_a_wrong_one_reported() {
    let redis = RedisServer::with_password(REDIS_PASSWORD).await;
    let good = redis.dir().join("good.pw");
    let bad = redis.dir().join("bad.pw");
    std::fs::write(&good, format!("{REDIS_PASSWORD}\n")).unwrap();
    std::fs::write(&bad, "not-the-password\n").unwrap();
    let with = |file: &std::path::Path| {
        redis_section(&redis, &format!(", password_file: \"{}\"", file.display()))
    };
    let server = TestServer::start(Opts::with(&with(&good))).await;
    redis_up_is(&server, 1.0).await;
    let wrong = TestServer::start(Opts::with(&with(&bad))).await;
    let url = redis.url();
    eventually_async("the wrong password is logged", || async {
        logs::lines().iter().any(|l| {
            l["fields"]["url"] == url.as_str()
                && l["level"] == "WARN"
                && l["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("authentication failed"))
        })
    })
    .await;
    assert_eq!(wrong.scrape().await.get("postern_redis_up"), 0.0);
}

/// Two instances (two TestServers, their own users and listeners) sharing one Redis.
async fn pair(redis: &RedisServer, extra: &str) -> (TestServer, TestServer) {
    let yaml = format!("{}{extra}", redis_section(redis, ""));
    let a = TestServer::start(Opts::with(&yaml)).await;
    let b = TestServer::start(Opts::with(&yaml)).await;
    redis_up_is(&a, 1.0).await;
    redis_up_is(&b, 1.0).await;
    (a, b)
}

/// A session as alice on `server`'s submission listener.
async fn alice(server: &TestServer) -> Dialog {
    server.submission_session().await
}

/// `{per: user, messages: 3, scope: cluster}` on two instances: three MAILs pass over both,
/// the fourth is refused on either with the local rule's exact reply (one emission
/// interval, 20 min, at most) and counted as the same rate-limit hit; the bucket's key
/// expires on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limit_holds_across_two_instances() {
    let redis = RedisServer::start().await;
    let rule =
        "rate_limits: [{name: shared, per: user, messages: 3, interval: 1h, scope: cluster}]\n";
    let (a, b) = pair(&redis, rule).await;
    let (mut da, mut db) = (alice(&a).await, alice(&b).await);
    send_mail(
        &mut da,
        "alice@example.com",
        X,
        &message("a-1", "", "1\r\n"),
    )
    .await;
    send_mail(
        &mut db,
        "alice@example.com",
        X,
        &message("b-1", "", "2\r\n"),
    )
    .await;
    send_mail(
        &mut da,
        "alice@example.com",
        X,
        &message("a-2", "", "3\r\n"),
    )
    .await;
    for d in [&mut db, &mut da] {
        d.send("MAIL FROM:<alice@example.com>\r\n").await;
        let reply = d.try_reply().await.expect("a refusal");
        let head = "450 4.7.1 Error: rate limit shared exceeded, try again in ";
        retry_in(reply.first(), head, 1200);
    }
    for server in [&a, &b] {
        let hits = server.scrape().await;
        hits.expect(&[(r#"postern_rate_limit_hits_total{rule="shared"}"#, 1.0)]);
    }
    let pttl = redis.command("PTTL postern:rl:shared:alice").await;
    let ms: i64 = pttl.trim_start_matches(':').parse().unwrap();
    assert!(ms > 0 && ms <= 3_600_001, "{pttl}");
}

/// `auth_lockout: {attempts: 3, scope: cluster}`: three failures on one instance lock the
/// address on the other, where the right password then gets `454 4.7.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockout_earned_on_one_instance_refuses_auth_on_the_other() {
    let redis = RedisServer::start().await;
    let lockout = "auth_lockout: {attempts: 3, window: 10m, duration: 15m, scope: cluster}\n";
    let (a, b) = pair(&redis, lockout).await;
    let mut d = a.submission_session_unauthenticated().await;
    for _ in 0..2 {
        d.cmd(WRONG_PLAIN, "535 5.7.8 ").await;
    }
    // The third failure starts the lockout: 421 and close, as locally.
    d.cmd(WRONG_PLAIN, "421 4.7.0 ").await;
    let mut other = b.submission_session_unauthenticated().await;
    let reply = other
        .cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "454 4.7.0 ")
        .await;
    let head = "454 4.7.0 Error: too many authentication failures, try again in ";
    retry_in(reply.first(), head, 900);
    let pttl = redis.command("PTTL postern:lockout:ip:127.0.0.1").await;
    let ms: i64 = pttl.trim_start_matches(':').parse().unwrap();
    assert!(ms > 0 && ms <= 900_000, "{pttl}");
}

/// The two fallbacks, with Redis stopped mid-test: a rule with `on_redis_error: allow`
/// admits (submission), one with `deny` refuses with `451 4.3.0` (legacy); every decision
/// counted, each kind logged once for the outage (not once per session: no log flood).
/// Redis started again: the cluster limit is enforced again, without a restart (the
/// restarted Redis has lost the keys: two messages pass again, the third is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_allows_or_denies_per_rule_and_recovers() {
    let mut redis = RedisServer::start().await;
    let rules = "rate_limits:\n\
        \x20 - {name: open, per: user, messages: 100, scope: cluster, on_redis_error: allow, listeners: [submission]}\n\
        \x20 - {name: strict-once, per: ip, messages: 2, interval: 1h, scope: cluster, on_redis_error: deny, listeners: [legacy]}\n";
    let yaml = format!("{}{rules}", redis_section(&redis, ""));
    let server = TestServer::start(Opts::with(&yaml)).await;
    redis_up_is(&server, 1.0).await;
    let dev = "dev@example.net";
    let mut legacy = server.legacy_session().await;
    send_mail(&mut legacy, dev, X, &message("before", "", "0\r\n")).await;
    redis.stop();
    let mut sub = alice(&server).await;
    send_mail(
        &mut sub,
        "alice@example.com",
        X,
        &message("allowed", "", "1\r\n"),
    )
    .await;
    let reply = legacy
        .cmd(&format!("MAIL FROM:<{dev}>"), "451 4.3.0 ")
        .await;
    assert_eq!(
        reply.first(),
        "451 4.3.0 Error: rate limit strict-once cannot be checked now, try again later"
    );
    for _ in 0..2 {
        let mut again = server.legacy_session().await;
        again.cmd(&format!("MAIL FROM:<{dev}>"), "451 4.3.0 ").await;
    }
    let logged = logs::lines()
        .into_iter()
        .filter(|l| l["fields"]["rule"] == "strict-once" && l["level"] == "INFO")
        .count();
    assert_eq!(logged, 1, "one line for the outage, not one per session");
    server.scrape().await.expect(&[
        (
            r#"postern_redis_fallbacks_total{decision="allow",feature="rate_limit"}"#,
            1.0,
        ),
        (
            r#"postern_redis_fallbacks_total{decision="deny",feature="rate_limit"}"#,
            3.0,
        ),
        ("postern_redis_up", 0.0),
    ]);
    redis.start_again().await;
    redis_up_is(&server, 1.0).await;
    for tag in ["after-1", "after-2"] {
        send_mail(&mut legacy, dev, X, &message(tag, "", "2\r\n")).await;
    }
    legacy.send(format!("MAIL FROM:<{dev}>\r\n")).await;
    let reply = legacy.try_reply().await.expect("a refusal");
    retry_in(
        reply.first(),
        "450 4.7.1 Error: rate limit strict-once exceeded, try again in ",
        1800,
    );
}

/// A Redis that does not answer (`CLIENT PAUSE`, in force once it answers): the MAIL gets
/// its answer within the command timeout (200 ms; asserted well under the 3 s pause), not
/// after the pause: the deny rule's `451 4.3.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_does_not_stall_the_session() {
    let redis = RedisServer::start().await;
    let rule = "rate_limits: [{name: strict, per: ip, messages: 100, scope: cluster, on_redis_error: deny}]\n";
    let yaml = format!("{}{rule}", redis_section(&redis, ""));
    let server = TestServer::start(Opts::with(&yaml)).await;
    redis_up_is(&server, 1.0).await;
    let mut legacy = server.legacy_session().await;
    assert_eq!(redis.command("CLIENT PAUSE 3000 ALL").await, "+OK");
    let started = std::time::Instant::now();
    legacy
        .cmd("MAIL FROM:<dev@example.net>", "451 4.3.0 ")
        .await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(2),
        "answered after {took:?}"
    );
    // At least this call; the heartbeat PING may have met the pause too.
    let scrape = server.scrape().await;
    let timeouts = scrape.get(r#"postern_redis_commands_total{result="timeout"}"#);
    assert!(timeouts >= 1.0, "{timeouts}");
}

/// `auth_lockout` with `scope: cluster, on_redis_error: deny`: while Redis is down AUTH
/// gets `454 4.7.0` (temporary), counted; with `allow` this instance's own failures still
/// lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_without_redis_denies_or_falls_back_to_the_local_table() {
    let mut redis = RedisServer::start().await;
    let deny = "auth_lockout: {attempts: 2, scope: cluster, on_redis_error: deny}\n";
    let allow = "auth_lockout: {attempts: 2, scope: cluster, on_redis_error: allow}\n";
    let strict =
        TestServer::start(Opts::with(&format!("{}{deny}", redis_section(&redis, "")))).await;
    let open =
        TestServer::start(Opts::with(&format!("{}{allow}", redis_section(&redis, "")))).await;
    redis_up_is(&strict, 1.0).await;
    redis_up_is(&open, 1.0).await;
    redis.stop();
    let mut d = strict.submission_session_unauthenticated().await;
    d.cmd(
        &format!("AUTH PLAIN {PLAIN_TOKEN}"),
        "454 4.7.0 Temporary authentication failure",
    )
    .await;
    strict.scrape().await.expect(&[(
        r#"postern_redis_fallbacks_total{decision="deny",feature="lockout"}"#,
        1.0,
    )]);
    let mut d = open.submission_session_unauthenticated().await;
    d.cmd(WRONG_PLAIN, "535 5.7.8 ").await;
    d.cmd(WRONG_PLAIN, "421 4.7.0 ").await;
    let mut d = open.submission_session_unauthenticated().await;
    d.cmd(
        &format!("AUTH PLAIN {PLAIN_TOKEN}"),
        "454 4.7.0 Error: too many authentication failures",
    )
    .await;
}

/// `{per: ip, connections: 2, scope: cluster}`: one connection greeted by each instance,
/// the third, on either, gets `421 4.7.0` naming the rule in place of the greeting; each
/// connection is counted once, as `accepted` or `connection_rate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_rate_holds_across_two_instances() {
    let redis = RedisServer::start().await;
    let rule =
        "rate_limits: [{name: conns, per: ip, connections: 2, interval: 1h, scope: cluster}]\n";
    let (a, b) = pair(&redis, rule).await;
    let _first = a.legacy_session().await;
    let _second = b.legacy_session().await;
    for server in [&a, &b] {
        let mut d = Dialog::connect_silent(server.legacy).await;
        let reply = d.try_reply().await.expect("closed without a reply");
        let head = "421 4.7.0 Error: connection rate limit conns exceeded, try again in ";
        retry_in(reply.first(), head, 1800);
        d.expect_closed().await;
        server.scrape().await.expect(&[
            (
                r#"postern_connections_total{listener="legacy",result="accepted"}"#,
                1.0,
            ),
            (
                r#"postern_connections_total{listener="legacy",result="connection_rate"}"#,
                1.0,
            ),
            (r#"postern_rate_limit_hits_total{rule="conns"}"#, 1.0),
        ]);
    }
}

/// The `legacy` sender's messages tagged `tag-0..n` on `server`.
async fn submit(server: &TestServer, tag: &str, n: usize) {
    let mut d = server.legacy_session().await;
    for i in 0..n {
        let data = message(&format!("{tag}-{i}"), "", "shaped\r\n");
        send_mail(&mut d, "printer@example.com", X, &data).await;
    }
}

const SHAPED: &str = r#"postern_upstream_shaped_total{cap="messages_per_minute",upstream="sink"}"#;

/// `messages_per_minute: 2, shaping_scope: cluster` on two instances sending through one
/// account (their sinks stand for it): two messages from one instance go at once, the one
/// from the other is held back (booked 30 s later on Redis's clock), not attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cap_holds_across_two_instances() {
    let redis = RedisServer::start().await;
    let section = redis_section(&redis, "");
    let opts = Opts {
        extra: section,
        upstream_keys: "messages_per_minute: 2, shaping_scope: cluster".to_owned(),
        ..Opts::default()
    };
    let a = TestServer::start(opts.clone()).await;
    let b = TestServer::start(opts).await;
    redis_up_is(&a, 1.0).await;
    redis_up_is(&b, 1.0).await;
    a.sink().expect(2);
    submit(&a, "a", 2).await;
    a.sink().wait(crate::harness::DELIVERY).await;
    submit(&b, "b", 1).await;
    let s = b.scrape_until(|s| s.get(SHAPED) == 1.0).await;
    s.expect(&[
        (SHAPED, 1.0),
        (
            r#"postern_delivery_attempts_total{result="delivered",upstream="sink"}"#,
            0.0,
        ),
    ]);
    assert!(b.sink().received().is_empty());
    let pttl = redis
        .command("PTTL postern:shape:sink:messages_per_minute")
        .await;
    let ms: i64 = pttl.trim_start_matches(':').parse().unwrap();
    assert!(ms > 0 && ms <= 90_001, "{pttl}");
}

/// `shaping_on_redis_error: deny` with Redis down: the message is held
/// (`cap="redis_unavailable"`, counted as a fallback) and goes once Redis is back; with
/// `allow` it goes at once, shaped by the instance's own counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaping_without_redis_holds_or_goes_per_upstream() {
    let mut redis = RedisServer::start().await;
    let opts = |fallback: &str| Opts {
        extra: redis_section(&redis, ""),
        upstream_keys: format!(
            "messages_per_minute: 100, shaping_scope: cluster, shaping_on_redis_error: {fallback}"
        ),
        ..Opts::default()
    };
    let strict = TestServer::start(opts("deny")).await;
    let open = TestServer::start(opts("allow")).await;
    redis_up_is(&strict, 1.0).await;
    redis_up_is(&open, 1.0).await;
    redis.stop();
    open.sink().expect(1);
    submit(&open, "open", 1).await;
    open.sink().wait(crate::harness::DELIVERY).await;
    submit(&strict, "strict", 1).await;
    let held = r#"postern_upstream_shaped_total{cap="redis_unavailable",upstream="sink"}"#;
    let deny = r#"postern_redis_fallbacks_total{decision="deny",feature="shaping"}"#;
    let s = strict.scrape_until(|s| s.get(held) >= 1.0).await;
    assert!(s.get(held) >= 1.0 && s.get(deny) >= 1.0, "{}", s.text);
    assert!(strict.sink().received().is_empty());
    strict.sink().expect(1);
    redis.start_again().await;
    strict.sink().wait(crate::harness::DELIVERY).await;
}

/// `rediss://` with `tls.ca_file`: postern reaches Redis over TLS (rustls, ring), checks
/// the certificate against the CA and shares a limit through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::harness::ca::TestCa::new(certs.path());
    let redis = RedisServer::with_tls(&ca.cert_file, &ca.key_file).await;
    let yaml = format!(
        "redis: {{url: \"{}\", tls: {{ca_file: \"{}\"}}}}\n\
         rate_limits: [{{name: tls, per: user, messages: 1, interval: 1h, scope: cluster}}]\n",
        redis.tls_url(),
        ca.ca_file.display()
    );
    let server = TestServer::start(Opts::with(&yaml)).await;
    redis_up_is(&server, 1.0).await;
    let mut d = alice(&server).await;
    send_mail(&mut d, "alice@example.com", X, &message("tls", "", "1\r\n")).await;
    d.cmd(
        "MAIL FROM:<alice@example.com>",
        "450 4.7.1 Error: rate limit tls exceeded",
    )
    .await;
    let pttl = redis.command("PTTL postern:rl:tls:alice").await;
    assert!(
        pttl.trim_start_matches(':').parse::<i64>().unwrap() > 0,
        "{pttl}"
    );
}

/// A Redis certificate from another CA than `tls.ca_file` is refused: Redis stays down
/// (the TLS error logged), the instance serves on its fallbacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_refuses_a_certificate_from_another_ca() {
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::harness::ca::TestCa::new(certs.path());
    let other = tempfile::tempdir().unwrap();
    let stranger = crate::harness::ca::TestCa::new(other.path());
    let redis = RedisServer::with_tls(&stranger.cert_file, &stranger.key_file).await;
    let yaml = format!(
        "redis: {{url: \"{}\", tls: {{ca_file: \"{}\"}}}}\n",
        redis.tls_url(),
        ca.ca_file.display()
    );
    let server = TestServer::start(Opts::with(&yaml)).await;
    let url = redis.tls_url();
    eventually_async("the TLS failure is logged", || async {
        logs::lines()
            .iter()
            .any(|l| l["fields"]["url"] == url.as_str() && l["level"] == "WARN")
    })
    .await;
    assert_eq!(server.scrape().await.get("postern_redis_up"), 0.0);
}
