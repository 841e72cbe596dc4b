//! Rate limit tests on a paused tokio clock.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

use std::path::Path;

use super::*;
use crate::config::load::load_str;
use crate::smtp::reply::Reply;

const HASH: &str =
    "$argon2id$v=19$m=8,t=1,p=1$cG9zdGVybmZpeHR1cmU$WiHTSMJpezvihM+Zu2J3QgDBVs0LMf1Ru/2h60OsR9I";

/// A valid config with listeners `a` and `b`, users `app1` and `app2`, and `extra` appended
/// (top-level keys; `USERS` and `NETS` are replaced by the users' and networks' extra keys).
fn config(extra: &str, user_extra: &str, net_extra: &str) -> Config {
    let yaml = format!(
        "listeners:\n\
         \x20 - {{name: a, address: \"127.0.0.1:0\", tls: none, auth: none, allow_networks: [127.0.0.0/8]}}\n\
         \x20 - {{name: b, address: \"127.0.0.1:1\", tls: none, auth: none, allow_networks: [127.0.0.0/8]}}\n\
         users:\n\
         \x20 - {{username: app1, password_hash: \"{HASH}\", senders: [\"*\"]{user_extra}}}\n\
         \x20 - {{username: app2, password_hash: \"{HASH}\", senders: [\"*\"]}}\n\
         networks:\n\
         \x20 - {{network: 10.20.30.0/24{net_extra}}}\n\
         queue: {{directory: q}}\n\
         upstreams: [{{name: u, directory: o}}]\n\
         {extra}\n"
    );
    load_str(&yaml, Path::new("t.yaml")).unwrap()
}

fn limits(rules: &str) -> RateLimits {
    RateLimits::new(&config(rules, "", ""), &Clock::new())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn user<'a>(name: &'a str, listener: &'a str) -> Keys<'a> {
    Keys {
        ip: ip("192.0.2.1"),
        listener,
        identity: Some(name),
        user: Some(name),
        sender_domain: None,
    }
}

/// Admits `n` checks, then refuses the next.
fn admits_exactly(l: &RateLimits, what: Counted, keys: &Keys<'_>, n: usize) -> Hit {
    for i in 0..n {
        assert_eq!(l.check(what, keys, None), Ok(()), "check {} of {n}", i + 1);
    }
    l.check(what, keys, None).unwrap_err()
}

#[tokio::test(start_paused = true)]
async fn each_kind_admits_n_and_refuses_n_plus_one() {
    let l = limits(
        "rate_limits:\n\
         \x20 - {per: user, messages: 3}\n\
         \x20 - {per: sender_domain, recipients: 4, interval: 1m}\n\
         \x20 - {per: ip, connections: 2, interval: 10s}\n",
    );
    let hit = admits_exactly(&l, Counted::Message, &user("app1", "a"), 3);
    assert_eq!(hit.rule, "per-user-messages");
    assert_eq!(hit.description, "3 messages per 1h per user");
    // One message comes back every 1h / 3.
    assert_eq!(hit.retry_after, Duration::from_secs(1200));
    assert_eq!(
        Reply::rate_limit(&hit.rule, hit.retry_after).to_string(),
        "450 4.7.1 Error: rate limit per-user-messages exceeded, try again in 1200 s"
    );
    let rcpt = user("app1", "a").with_sender("x@Corp.Example");
    let hit = admits_exactly(&l, Counted::Recipient, &rcpt, 4);
    assert_eq!(hit.description, "4 recipients per 1m per sender domain");
    // Same domain in another case, another user: the same bucket.
    let other = user("app2", "b").with_sender("y@corp.example");
    assert!(l.check(Counted::Recipient, &other, None).is_err());
    let conn = Keys::connection(ip("192.0.2.9"), "a", None);
    let hit = admits_exactly(&l, Counted::Connection, &conn, 2);
    assert_eq!(
        Reply::connection_rate(&hit.rule, hit.retry_after).to_string(),
        "421 4.7.0 Error: connection rate limit per-ip-connections exceeded, try again in 5 s"
    );
}

#[tokio::test(start_paused = true)]
async fn recovers_over_the_interval() {
    let l = limits("rate_limits: [{per: user, messages: 2, interval: 1m}]");
    let keys = user("app1", "a");
    admits_exactly(&l, Counted::Message, &keys, 2);
    tokio::time::advance(Duration::from_secs(29)).await;
    let hit = l.check(Counted::Message, &keys, None).unwrap_err();
    assert_eq!(hit.retry_after, Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(1)).await;
    admits_exactly(&l, Counted::Message, &keys, 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    admits_exactly(&l, Counted::Message, &keys, 2);
}

#[tokio::test(start_paused = true)]
async fn burst_and_the_injected_clock_skew() {
    let clock = Clock::new();
    let cfg = config("rate_limits: [{per: ip, messages: 60, burst: 1}]", "", "");
    let l = RateLimits::new(&cfg, &clock);
    let keys = Keys::connection(ip("2001:db8::1"), "a", None);
    let hit = admits_exactly(&l, Counted::Message, &keys, 1);
    assert_eq!(hit.description, "60 messages per 1h per ip (burst 1)");
    assert_eq!(hit.retry_after, Duration::from_secs(60));
    // Another address in the same /64 shares the bucket; another /64 does not.
    let same64 = Keys::connection(ip("2001:db8::2"), "a", None);
    assert!(l.check(Counted::Message, &same64, None).is_err());
    let other64 = Keys::connection(ip("2001:db8:0:1::1"), "a", None);
    assert!(l.check(Counted::Message, &other64, None).is_ok());
    clock.advance(Duration::from_secs(60));
    admits_exactly(&l, Counted::Message, &keys, 1);
}

#[tokio::test(start_paused = true)]
async fn listener_restriction_and_absent_keys() {
    let l = limits(
        "rate_limits:\n\
         \x20 - {per: listener, messages: 1, listeners: [b]}\n\
         \x20 - {per: user, messages: 1}\n",
    );
    let anon = |listener| Keys::connection(ip("192.0.2.1"), listener, None);
    // No user: the per-user rule is skipped; listener a has no rule.
    for _ in 0..5 {
        assert!(l.check(Counted::Message, &anon("a"), None).is_ok());
    }
    let hit = admits_exactly(&l, Counted::Message, &anon("b"), 1);
    assert_eq!(hit.rule, "per-listener-messages");
    // Messages rules do not count connections or recipients.
    assert!(l.check(Counted::Connection, &anon("b"), None).is_ok());
    assert!(l.check(Counted::Recipient, &anon("b"), None).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_refusal_by_a_narrow_rule_costs_the_shared_rules_nothing() {
    let l = limits(
        "rate_limits:\n\
         \x20 - {per: listener, messages: 2}\n\
         \x20 - {per: user, messages: 1}\n",
    );
    admits_exactly(&l, Counted::Message, &user("app1", "a"), 1);
    for _ in 0..10 {
        let hit = l.check(Counted::Message, &user("app1", "a"), None);
        assert_eq!(hit.unwrap_err().rule, "per-user-messages");
    }
    // The listener spent one cell on app1, not eleven.
    admits_exactly(&l, Counted::Message, &user("app2", "a"), 1);
    let hit = l
        .check(Counted::Message, &user("app3", "a"), None)
        .unwrap_err();
    assert_eq!(hit.rule, "per-listener-messages");
}

#[tokio::test(start_paused = true)]
async fn identity_overrides_replace_and_add() {
    let cfg = config(
        "rate_limits:\n\
         \x20 - {per: user, messages: 2}\n\
         \x20 - {per: ip, connections: 100}\n",
        ", rate_limits: [{per: user, messages: 5, name: app1-quota}]",
        ", rate_limits: [{per: identity, connections: 1}]",
    );
    let l = RateLimits::new(&cfg, &Clock::new());
    let app1 = l.overrides_for(&Identity::User("app1".into()));
    assert!(l.overrides_for(&Identity::User("app2".into())).is_none());
    assert!(l.overrides_for(&Identity::Anonymous).is_none());
    for _ in 0..5 {
        assert!(l.check(Counted::Message, &user("app1", "a"), app1).is_ok());
    }
    let hit = l.check(Counted::Message, &user("app1", "a"), app1);
    assert_eq!(hit.unwrap_err().rule, "app1-quota");
    admits_exactly(&l, Counted::Message, &user("app2", "a"), 2);
    // The device network adds a per-identity connection rule and keeps the global one.
    let net: IpNet = "10.20.30.0/24".parse().unwrap();
    let printers = l.overrides_for(&Identity::Device(net));
    let label = Identity::Device(net).label().unwrap();
    let conn = Keys::connection(ip("10.20.30.7"), "a", Some(&label));
    assert!(l.check(Counted::Connection, &conn, printers).is_ok());
    let hit = l.check(Counted::Connection, &conn, printers).unwrap_err();
    assert_eq!(hit.description, "1 connections per 1h per identity");
    // What each set holds: the replaced global rule is gone, the others are kept.
    let names = |set: Option<&RuleSet>| -> Vec<String> {
        set.map(|s| s.rules.iter().map(|r| r.name.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(names(app1), ["per-ip-connections", "app1-quota"]);
    assert_eq!(
        names(printers),
        [
            "per-user-messages",
            "per-ip-connections",
            "per-identity-connections"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn eviction_drops_idle_keys() {
    let l = limits("rate_limits: [{per: ip, messages: 10, interval: 1m}]");
    for i in 0..100u8 {
        let keys = Keys::connection(IpAddr::from([192, 0, 2, i]), "a", None);
        assert!(l.check(Counted::Message, &keys, None).is_ok());
    }
    assert_eq!(l.tracked_keys(), 100);
    l.evict();
    assert_eq!(l.tracked_keys(), 100, "recent keys stay");
    tokio::time::advance(Duration::from_secs(61)).await;
    l.evict();
    assert_eq!(l.tracked_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn reconfigure_keeps_unchanged_buckets_only() {
    let rules = "rate_limits:\n\
                 \x20 - {per: user, messages: 1}\n\
                 \x20 - {per: ip, messages: 1}\n";
    let l = limits(rules);
    let keys = user("app1", "a");
    admits_exactly(&l, Counted::Message, &keys, 1);
    // Unchanged (and renamed): still spent.
    let renamed = "rate_limits:\n\
                   \x20 - {per: user, messages: 1, name: renamed}\n\
                   \x20 - {per: ip, messages: 1}\n";
    let l = l.reconfigure(&config(renamed, "", ""));
    assert_eq!(
        l.check(Counted::Message, &keys, None).unwrap_err().rule,
        "renamed"
    );
    // The per-user rule changed: a fresh bucket; the per-ip one is still spent.
    let changed = "rate_limits:\n\
                   \x20 - {per: user, messages: 2}\n\
                   \x20 - {per: ip, messages: 1}\n";
    let l = l.reconfigure(&config(changed, "", ""));
    let hit = l.check(Counted::Message, &keys, None).unwrap_err();
    assert_eq!(hit.rule, "per-ip-messages");
    assert_eq!(l.tracked_keys(), 2);
    // Removed rules are gone.
    let l = l.reconfigure(&config("", "", ""));
    assert_eq!((l.tracked_keys(), l.all.len()), (0, 0));
    assert!(l.check(Counted::Message, &keys, None).is_ok());
}

#[test]
fn human_durations() {
    let rows = [
        (3_600_000, "1h"),
        (90_000, "90s"),
        (86_400_000, "1d"),
        (250, "250ms"),
    ];
    for (ms, want) in rows {
        assert_eq!(human(Duration::from_millis(ms)), want);
    }
}

/// A `scope: cluster` rule in a real redis-server: IPv6 clients share the bucket of their
/// /64 (key `...:2001:db8::/64`), another /64 has its own, and the local check alone
/// ([`RateLimits::check`]) leaves the cluster rule to Redis.
#[tokio::test]
async fn a_cluster_rule_counts_ipv6_clients_per_64_in_redis() {
    use crate::cluster::test_server::{RedisServer, handle_on};
    let server = RedisServer::start();
    let (redis, stop) = handle_on(&server).await;
    let cfg = config(
        "redis: {url: \"redis://127.0.0.1:1\"}\n\
         rate_limits: [{name: v6, per: ip, messages: 2, interval: 1h, scope: cluster}]",
        "",
        "",
    );
    let l = RateLimits::new(&cfg, &Clock::new());
    let keys = |a: &str| Keys::connection(ip(a), "a", None);
    let in_redis = async |a: &str| {
        let k = keys(a);
        l.check_shared(Some(&redis), Counted::Message, &k, None)
            .await
    };
    for a in ["2001:db8::1", "2001:db8::2"] {
        assert_eq!(in_redis(a).await, Ok(()), "{a}");
    }
    let third = in_redis("2001:db8::ffff").await;
    assert!(
        matches!(&third, Err(shared::Refusal::Limit(h)) if h.rule == "v6"),
        "{third:?}"
    );
    assert!(
        l.check(Counted::Message, &keys("2001:db8::3"), None)
            .is_ok()
    );
    assert_eq!(in_redis("2001:db8:0:1::1").await, Ok(()));
    assert_eq!(server.command("EXISTS test:rl:v6:2001:db8::/64"), ":1");
    assert_eq!(server.command("EXISTS test:rl:v6:2001:db8:0:1::/64"), ":1");
    stop.cancel();
}
