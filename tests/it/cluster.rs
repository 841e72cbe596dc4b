//! Several instances sharing limits through a real Redis (`redis-server`, started by
//! [`RedisServer`] on loopback): the connection and its failures, the shared budgets, the
//! fallbacks while Redis is down or slow, recovery without a restart.

use crate::harness::http::get;
use crate::harness::redis::RedisServer;
use crate::harness::{Opts, TestServer, eventually_async, logs};

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
