//! Against a real `redis-server` ([`RedisServer`]): the GCRA script's decisions, expiry,
//! outages and recovery, a slow server, the password file.
//!
//! GCRA timing is on Redis's clock, so the limits here are per hour: nothing refills during
//! a test, and no assertion depends on how fast it runs.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::gcra::{Charge, Verdict};
use super::test_server::RedisServer;
use super::{Redis, Unavailable};
use crate::config::redis::RedisConfig;
use crate::config::units::Duration as CfgDuration;
use crate::telemetry::metrics::{Feature, Metrics};

const HOUR: Duration = Duration::from_secs(3600);

fn config(url: &str, password_file: Option<PathBuf>, timeout: Duration) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        username: None,
        password_file,
        tls: None,
        key_prefix: "test:".into(),
        command_timeout: CfgDuration(timeout),
        connect_timeout: CfgDuration(Duration::from_secs(2)),
    }
}

/// A handle on `server` with its prober running (until `stop`), up when returned.
async fn handle(server: &RedisServer, stop: &CancellationToken) -> (Redis, Metrics) {
    handle_with(config(&server.url(), None, Duration::from_secs(2)), stop).await
}

async fn handle_with(cfg: RedisConfig, stop: &CancellationToken) -> (Redis, Metrics) {
    let metrics = Metrics::new().unwrap();
    let redis = Redis::new(&cfg, metrics.redis.clone()).unwrap();
    tokio::spawn(redis.clone().watch(stop.clone()));
    until(|| redis.is_up(), "redis up").await;
    (redis, metrics)
}

/// Waits up to 10 s, every 20 ms, for `done`.
async fn until(done: impl Fn() -> bool, what: &str) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 10 s");
}

fn charge(redis: &Redis, name: &str, limit: u32) -> Charge {
    Charge {
        key: redis.key(&["rl", name, "alice"]),
        emission: HOUR / limit,
        burst: limit,
        cost: 1,
    }
}

fn metric(m: &Metrics, line: &str) -> bool {
    m.render().unwrap().lines().any(|l| l == line)
}

#[tokio::test]
async fn two_handles_share_one_budget() {
    let server = RedisServer::start();
    let stop = CancellationToken::new();
    let (a, _) = handle(&server, &stop).await;
    let (b, _) = handle(&server, &stop).await;
    let rule = [charge(&a, "shared", 3)];
    for (i, r) in [&a, &b, &a].into_iter().enumerate() {
        assert_eq!(r.gcra_check(&rule).await, Ok(Verdict::Admitted), "{i}");
    }
    let Ok(Verdict::Refused { index, retry_after }) = b.gcra_check(&rule).await else {
        panic!("the fourth must be refused");
    };
    assert_eq!(index, 0);
    // One cell comes back every 20 minutes.
    assert!(retry_after > Duration::from_secs(19 * 60) && retry_after <= HOUR / 3);
    stop.cancel();
}

#[tokio::test]
async fn a_refusal_charges_no_bucket() {
    let server = RedisServer::start();
    let stop = CancellationToken::new();
    let (r, _) = handle(&server, &stop).await;
    let wide = charge(&r, "wide", 100);
    let narrow = charge(&r, "narrow", 1);
    let both = [wide.clone(), narrow.clone()];
    assert_eq!(r.gcra_check(&both).await, Ok(Verdict::Admitted));
    let before = server.command(&format!("GET {}", wide.key));
    for _ in 0..3 {
        let verdict = r.gcra_check(&both).await.unwrap();
        assert!(
            matches!(verdict, Verdict::Refused { index: 1, .. }),
            "{verdict:?}"
        );
    }
    assert_eq!(server.command(&format!("GET {}", wide.key)), before);
    // Both keys expire on their own: the wide one when its single cell has come back.
    for key in [&wide.key, &narrow.key] {
        let pttl: i64 = server.command(&format!("PTTL {key}"))[1..].parse().unwrap();
        assert!(pttl > 0 && pttl <= 3_600_001, "{key}: {pttl}");
    }
    stop.cancel();
}

#[tokio::test]
async fn reserve_always_books_and_returns_the_wait() {
    let server = RedisServer::start();
    let stop = CancellationToken::new();
    let (r, _) = handle(&server, &stop).await;
    let cap = [charge(&r, "per-minute", 1)];
    let first = r.gcra_reserve(&cap).await.unwrap();
    assert_eq!((first.wait, first.index), (Duration::ZERO, None));
    let second = r.gcra_reserve(&cap).await.unwrap();
    assert_eq!(second.index, Some(0));
    let (second, third) = (second.wait, r.gcra_reserve(&cap).await.unwrap().wait);
    assert!(
        second > Duration::from_secs(59 * 60) && second <= HOUR,
        "{second:?}"
    );
    assert!(third > second + Duration::from_secs(59 * 60), "{third:?}");
    stop.cancel();
}

#[tokio::test]
async fn an_outage_is_skipped_at_once_and_recovered_without_restart() {
    let mut server = RedisServer::start();
    let stop = CancellationToken::new();
    let (r, metrics) = handle(&server, &stop).await;
    let rule = [charge(&r, "outage", 10)];
    assert_eq!(r.gcra_check(&rule).await, Ok(Verdict::Admitted));
    assert!(metric(&metrics, "postern_redis_up 1"));
    server.stop();
    assert_eq!(r.gcra_check(&rule).await, Err(Unavailable::Error));
    assert!(!r.is_up());
    assert_eq!(r.gcra_check(&rule).await, Err(Unavailable::Down));
    assert!(metric(&metrics, "postern_redis_up 0"));
    assert!(metric(
        &metrics,
        r#"postern_redis_commands_total{result="error"} 1"#
    ));
    assert!(metric(
        &metrics,
        r#"postern_redis_commands_total{result="skipped"} 1"#
    ));
    server.start_again();
    until(|| r.is_up(), "redis up again").await;
    // The restarted server has lost the script and the key: loaded again, counted afresh.
    assert_eq!(r.gcra_check(&rule).await, Ok(Verdict::Admitted));
    assert!(metric(&metrics, "postern_redis_up 1"));
    stop.cancel();
}

/// Each fallback is counted, but only the first of each kind in one outage is to be logged
/// at `info`: a flood of sessions while Redis is down must not be a flood of log lines.
#[tokio::test]
async fn a_fallback_is_logged_once_per_outage_and_counted_each_time() {
    let mut server = RedisServer::start();
    let stop = CancellationToken::new();
    let (r, metrics) = handle(&server, &stop).await;
    let rule = [charge(&r, "flood", 10)];
    for _ in 0..2 {
        server.stop();
        assert_eq!(r.gcra_check(&rule).await, Err(Unavailable::Error));
        let first: Vec<bool> = (0..3)
            .map(|_| r.fallback(Feature::RateLimit, false))
            .collect();
        assert_eq!(first, [true, false, false]);
        assert!(r.fallback(Feature::RateLimit, true), "another decision");
        assert!(r.fallback(Feature::Lockout, false), "another feature");
        assert!(!r.fallback(Feature::Lockout, false));
        server.start_again();
        until(|| r.is_up(), "redis up again").await;
        assert_eq!(r.gcra_check(&rule).await, Ok(Verdict::Admitted));
    }
    assert!(metric(
        &metrics,
        r#"postern_redis_fallbacks_total{decision="deny",feature="rate_limit"} 6"#
    ));
    stop.cancel();
}

#[tokio::test]
async fn a_slow_redis_answers_within_the_command_timeout() {
    let server = RedisServer::start();
    let stop = CancellationToken::new();
    let cfg = config(&server.url(), None, Duration::from_millis(100));
    let (r, metrics) = handle_with(cfg, &stop).await;
    let rule = [charge(&r, "slow", 10)];
    // CLIENT PAUSE answers once the pause is in force: every later command waits (no
    // head start to guess, as a DEBUG SLEEP sent from another connection would need).
    assert_eq!(server.command("CLIENT PAUSE 3000 ALL"), "+OK");
    let started = std::time::Instant::now();
    assert_eq!(r.gcra_check(&rule).await, Err(Unavailable::Timeout));
    // Well before the pause ends (3 s): the timeout (100 ms) answered, not Redis.
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    assert!(metric(
        &metrics,
        r#"postern_redis_commands_total{result="timeout"} 1"#
    ));
    until(|| r.is_up(), "redis up after the pause").await;
    assert_eq!(r.gcra_check(&rule).await, Ok(Verdict::Admitted));
    stop.cancel();
}

#[tokio::test]
async fn the_password_file_is_used_and_a_wrong_one_reported() {
    let server = RedisServer::with_password("s3cret-pass");
    let good = server.dir().join("good");
    let bad = server.dir().join("bad");
    std::fs::write(&good, "s3cret-pass\n").unwrap();
    std::fs::write(&bad, "xyzzy-not-it\n").unwrap();
    let stop = CancellationToken::new();
    let cfg = config(&server.url(), Some(good), Duration::from_secs(2));
    let (r, _) = handle_with(cfg, &stop).await;
    assert_eq!(
        r.gcra_check(&[charge(&r, "pw", 5)]).await,
        Ok(Verdict::Admitted)
    );
    let cfg = config(&server.url(), Some(bad), Duration::from_secs(2));
    let wrong = Redis::new(&cfg, Metrics::new().unwrap().redis.clone()).unwrap();
    let error = wrong.probe().await.unwrap_err();
    assert!(
        error.to_lowercase().contains("authentication failed"),
        "{error}"
    );
    assert!(
        !error.contains("xyzzy"),
        "the password must not be in the error: {error}"
    );
    assert!(!format!("{wrong:?}").contains("xyzzy"));
    stop.cancel();
}

#[tokio::test]
async fn the_lockout_script_counts_locks_and_expires() {
    let server = RedisServer::start();
    let stop = CancellationToken::new();
    let (r, _) = handle(&server, &stop).await;
    let rule = super::lockout::LockoutRule {
        attempts: 3,
        window: Duration::from_secs(600),
        duration: Duration::from_secs(900),
    };
    let ip = r.lockout_key("ip", "192.0.2.1");
    let user = r.lockout_key("user", "alice");
    let both = [ip.clone(), user.clone()];
    assert_eq!(r.lockout_check(&both).await, Ok(None));
    for _ in 0..2 {
        assert_eq!(r.lockout_fail(&both, rule).await, Ok(None));
    }
    let pttl: i64 = server.command(&format!("PTTL {ip}:fails"))[1..]
        .parse()
        .unwrap();
    assert!(pttl > 0 && pttl <= 600_000, "{pttl}");
    // The third failure locks both subjects; the address is reported first.
    let started = r.lockout_fail(&both, rule).await.unwrap().unwrap();
    assert_eq!((started.subject, started.remaining), (0, rule.duration));
    let found = r
        .lockout_check(std::slice::from_ref(&user))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.subject, 0);
    assert!(found.remaining > Duration::from_secs(899) && found.remaining <= rule.duration);
    // Locked: a further failure counts nothing.
    assert_eq!(r.lockout_fail(&both, rule).await, Ok(None));
    assert_eq!(server.command(&format!("EXISTS {ip}:fails")), ":0");
    stop.cancel();
}

#[tokio::test]
async fn an_upstream_pause_is_shared_and_never_shortened() {
    let server = RedisServer::start();
    let stop = CancellationToken::new();
    let (r, _) = handle(&server, &stop).await;
    assert_eq!(r.paused_for("m365").await, Ok(Duration::ZERO));
    let long = Duration::from_secs(120);
    assert_eq!(r.pause_upstream("m365", long).await, Ok(long));
    let kept = r
        .pause_upstream("m365", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(kept > Duration::from_secs(119) && kept <= long, "{kept:?}");
    let left = r.paused_for("m365").await.unwrap();
    assert!(left > Duration::from_secs(119) && left <= long, "{left:?}");
    stop.cancel();
}

/// A Redis that answers PING but refuses every script (here a replica: `READONLY`) must not
/// make postern flap up and down as fast as calls come: each short-lived recovery makes the
/// prober wait longer (100 ms doubling to 2 s) before it tries again, so the failed calls
/// (each a warning and a recovery in the log) stay few. The bound is an upper one: a slower
/// machine only makes fewer calls.
#[tokio::test]
async fn a_redis_that_refuses_every_script_does_not_flap_at_the_call_rate() {
    let server = RedisServer::start();
    let stop = CancellationToken::new();
    let (r, metrics) = handle(&server, &stop).await;
    // A replica of nothing: PING and SCRIPT LOAD answer, writes get READONLY.
    assert_eq!(server.command("REPLICAOF 127.0.0.1 1"), "+OK");
    let rule = [charge(&r, "flap", 10)];
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let answer = r.gcra_check(&rule).await;
        assert!(answer.is_err(), "{answer:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let text = metrics.render().unwrap();
    let errors: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"postern_redis_commands_total{result="error"} "#))
        .unwrap()
        .parse()
        .unwrap();
    assert!((1.0..=10.0).contains(&errors), "{errors} failed calls");
    stop.cancel();
}
