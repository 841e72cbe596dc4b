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
