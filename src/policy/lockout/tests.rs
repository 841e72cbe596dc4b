//! Lockout tests on a paused tokio clock.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

use super::*;
use crate::config::units::Duration as ConfigDuration;

fn settings(attempts: u32, per_username: bool) -> AuthLockoutConfig {
    AuthLockoutConfig {
        attempts,
        window: ConfigDuration::secs(600),
        duration: ConfigDuration::secs(900),
        per_username,
        ..AuthLockoutConfig::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const MIN: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn the_nth_failure_locks_the_address_even_for_a_right_password() {
    let l = Lockout::new(&settings(3, false), &Clock::new());
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    for _ in 0..2 {
        assert_eq!(l.record_failure(a, "app1", true), None);
        assert_eq!(l.check(a, "app1"), Ok(()));
    }
    let started = l.record_failure(a, "app1", true).unwrap();
    assert_eq!(
        started,
        Locked {
            by: LockedBy::Address,
            remaining: 15 * MIN
        }
    );
    // Locked whoever logs in: the check comes before the password is looked at.
    tokio::time::advance(5 * MIN).await;
    let locked = l.check(a, "ops").unwrap_err();
    assert_eq!(
        locked,
        Locked {
            by: LockedBy::Address,
            remaining: 10 * MIN
        }
    );
    // More failures while locked neither extend nor restart it.
    assert_eq!(l.record_failure(a, "app1", true), None);
    assert_eq!(l.check(a, "app1").unwrap_err().remaining, 10 * MIN);
    // Another address is unaffected.
    assert_eq!(l.check(b, "app1"), Ok(()));
    tokio::time::advance(10 * MIN).await;
    assert_eq!(l.check(a, "app1"), Ok(()));
    // After the lockout the count starts again from zero.
    assert_eq!(l.record_failure(a, "app1", true), None);
    assert_eq!(l.check(a, "app1"), Ok(()));
}

/// The restart after a lockout is the lockout's doing, not the window's: with a window
/// longer than the lockout, the failures that locked are still inside it when the lockout
/// ends, and one more failure must not lock again.
#[tokio::test(start_paused = true)]
async fn a_new_count_after_the_lockout_even_inside_the_window() {
    let cfg = AuthLockoutConfig {
        window: ConfigDuration::secs(1800),
        ..settings(3, false)
    };
    let l = Lockout::new(&cfg, &Clock::new());
    let a = ip("192.0.2.1");
    for _ in 0..2 {
        assert_eq!(l.record_failure(a, "app1", true), None);
    }
    assert!(l.record_failure(a, "app1", true).is_some());
    tokio::time::advance(15 * MIN).await;
    assert_eq!(l.check(a, "app1"), Ok(()));
    assert_eq!(l.record_failure(a, "app1", true), None);
    assert_eq!(l.check(a, "app1"), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn failures_age_out_of_the_window() {
    let clock = Clock::new();
    let l = Lockout::new(&settings(3, false), &clock);
    let a = ip("2001:db8::1");
    l.record_failure(a, "x", false);
    l.record_failure(a, "x", false);
    // The injected clock's skew moves the window as tokio's pause does.
    clock.advance(10 * MIN);
    assert_eq!(l.record_failure(a, "x", false), None);
    assert_eq!(l.record_failure(a, "x", false), None);
    // Same /64: the same count.
    let locked = l.record_failure(ip("2001:db8::2"), "x", false).unwrap();
    assert_eq!(locked.by, LockedBy::Address);
    assert!(l.check(ip("2001:db8::ff"), "x").is_err());
    assert!(l.check(ip("2001:db8:0:1::1"), "x").is_ok());
}

#[tokio::test(start_paused = true)]
async fn per_username_across_addresses_only_for_known_users() {
    let l = Lockout::new(&settings(3, true), &Clock::new());
    for i in 1..=3u8 {
        let from = IpAddr::from([192, 0, 2, i]);
        let got = l.record_failure(from, "app1", true);
        assert_eq!(got.map(|g| g.by), (i == 3).then_some(LockedBy::Username));
        // Unknown usernames are never tracked by name.
        assert_eq!(l.record_failure(from, &format!("guess{i}"), false), None);
    }
    let fresh = ip("198.51.100.1");
    assert_eq!(l.check(fresh, "app1").unwrap_err().by, LockedBy::Username);
    assert_eq!(l.check(fresh, "app2"), Ok(()));
    // Three addresses with two failures each, and one username entry.
    assert_eq!(l.tracked(), 4);
}

#[tokio::test(start_paused = true)]
async fn off_with_zero_attempts_and_reconfigured_on() {
    let l = Lockout::new(&settings(0, false), &Clock::new());
    let a = ip("192.0.2.1");
    for _ in 0..20 {
        assert_eq!(l.record_failure(a, "app1", true), None);
    }
    assert_eq!((l.check(a, "app1"), l.tracked()), (Ok(()), 0));
    l.reconfigure(&settings(1, false));
    assert!(l.record_failure(a, "app1", true).is_some());
    assert!(l.check(a, "app1").is_err());
}

#[tokio::test(start_paused = true)]
async fn eviction_and_the_address_cap() {
    let l = Lockout::with_capacity(&settings(2, true), &Clock::new(), 3);
    for i in 1..=5u8 {
        l.record_failure(IpAddr::from([192, 0, 2, i]), "app1", true);
    }
    // Three addresses (the cap) plus the username, which locked at the second failure.
    assert_eq!(l.tracked(), 4);
    // A tracked address still counts and locks when the table is full.
    assert!(l.record_failure(ip("192.0.2.1"), "x", false).is_some());
    tokio::time::advance(10 * MIN).await;
    l.evict();
    // The counts aged out; the two lockouts (address .1, username) run to 15 minutes.
    assert_eq!(l.tracked(), 2);
    tokio::time::advance(5 * MIN).await;
    l.evict();
    assert_eq!(l.tracked(), 0);
    assert!(l.record_failure(ip("192.0.2.9"), "x", false).is_none());
    assert_eq!(l.tracked(), 1);
}

/// `scope: cluster` on an instance without a Redis handle (the `redis:` section came with a
/// reload and waits for a restart): the local table counts and its lockout is reported, so
/// the session is closed with `421` as with a local lockout.
#[tokio::test(start_paused = true)]
async fn a_cluster_lockout_without_redis_reports_the_local_lockout() {
    let cfg = AuthLockoutConfig {
        scope: Scope::Cluster,
        ..settings(2, false)
    };
    let l = Lockout::new(&cfg, &Clock::new());
    let a = ip("192.0.2.9");
    assert_eq!(l.record_failure_shared(None, a, "app1", true).await, None);
    let started = l.record_failure_shared(None, a, "app1", true).await;
    assert_eq!(
        started,
        Some(Locked {
            by: LockedBy::Address,
            remaining: 15 * MIN
        })
    );
    let refused = l.check_shared(None, a, "app1").await;
    assert!(
        matches!(refused, Err(LockRefusal::Locked(_))),
        "{refused:?}"
    );
}

/// With `per_username` in Redis, the user `a:fails` is not locked by `a`'s failure counter
/// (the key `...:user:a:fails`): usernames are escaped in keys.
#[tokio::test]
async fn a_username_cannot_name_another_users_counter() {
    use crate::cluster::test_server::{RedisServer, handle_on};
    let server = RedisServer::start();
    let (redis, stop) = handle_on(&server).await;
    let cfg = AuthLockoutConfig {
        scope: Scope::Cluster,
        ..settings(3, true)
    };
    let l = Lockout::new(&cfg, &Clock::new());
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    assert_eq!(
        l.record_failure_shared(Some(&redis), a, "a", true).await,
        None
    );
    assert_eq!(server.command("EXISTS test:lockout:user:a:fails"), ":1");
    assert_eq!(l.check_shared(Some(&redis), b, "a:fails").await, Ok(()));
    for _ in 0..3 {
        l.record_failure_shared(Some(&redis), b, "a:fails", true)
            .await;
    }
    assert_eq!(server.command("EXISTS test:lockout:user:a%3Afails"), ":1");
    assert_eq!(
        l.check_shared(Some(&redis), a, "a").await,
        Ok(()),
        "a is not locked"
    );
    stop.cancel();
}

/// In Redis an IPv6 client's failures count against its /64, under the key the cluster rate
/// limits write addresses with (`...:ip:2001:db8::/64`); another /64 counts apart.
#[tokio::test]
async fn a_cluster_lockout_counts_ipv6_clients_per_64() {
    use crate::cluster::test_server::{RedisServer, handle_on};
    let server = RedisServer::start();
    let (redis, stop) = handle_on(&server).await;
    let cfg = AuthLockoutConfig {
        scope: Scope::Cluster,
        ..settings(3, false)
    };
    let l = Lockout::new(&cfg, &Clock::new());
    for host in ["2001:db8::1", "2001:db8::2:3"] {
        l.record_failure_shared(Some(&redis), ip(host), "u", true)
            .await;
    }
    l.record_failure_shared(Some(&redis), ip("2001:db8:0:1::1"), "u", true)
        .await;
    // INCRBY 0 reads an integer counter without changing it.
    let count = |key: &str| server.command(&format!("INCRBY test:lockout:ip:{key}:fails 0"));
    assert_eq!(count("2001:db8::/64"), ":2");
    assert_eq!(count("2001:db8:0:1::/64"), ":1");
    stop.cancel();
}
