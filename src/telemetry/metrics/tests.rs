//! The registry's contents: every family registers, series exist at zero, counts land.

#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;
use crate::reason::Reason;
use crate::smtp::sasl::Mechanism;
use std::sync::atomic::Ordering;

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every family registers (no name clash, valid names), and labelled series exist at
/// zero before the first event.
#[test]
fn registers_and_preregisters() {
    let m = Metrics::new().unwrap();
    let l = m.listener("submission");
    m.register_upstreams(["relay"]);
    let text = m.render().unwrap();
    for series in [
        r#"postern_connections_total{listener="submission",result="accepted"}"#,
        r#"postern_messages_refused_total{listener="submission",reason="sender_not_owned"}"#,
        r#"postern_sessions_closed_total{listener="submission",reason="timeout"}"#,
        r#"postern_auth_attempts_total{listener="submission",mechanism="login",result="locked_out"}"#,
        r#"postern_delivery_attempts_total{result="maybe_delivered",upstream="relay"}"#,
        r#"postern_upstream_failures_total{stage="final_dot",upstream="relay"}"#,
        r#"postern_messages_completed_total{result="expired"}"#,
        r#"postern_messages_completed_total{result="deleted"}"#,
        r#"postern_connections_total{listener="submission",result="draining"}"#,
        r#"postern_connections_total{listener="submission",result="proxy_untrusted"}"#,
        r#"postern_connections_total{listener="submission",result="proxy_invalid"}"#,
        r#"postern_connections_total{listener="submission",result="proxy_missing"}"#,
        r#"postern_config_reloads_total{result="failure"}"#,
    ] {
        assert_eq!(value(&text, series), Some(0.0), "{series} in\n{text}");
    }
    assert_eq!(
        value(&text, r#"postern_upstream_up{upstream="relay"}"#),
        Some(1.0)
    );
    assert!(text.contains("postern_build_info{commit="), "{text}");
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    drop(l);
}

/// Counts land on the right series; a reason outside the pre-registered set still
/// counts; the session gauge follows its guards.
#[test]
fn counts_land_where_they_should() {
    let m = Metrics::new().unwrap();
    let l = Arc::new(m.listener("legacy"));
    l.connection(&ConnResult::Allowlist);
    l.message_refused(Reason::Size);
    l.message_refused(Reason::StaleRules);
    l.engine_refusal(Reason::Recipients);
    l.auth(Mechanism::Login, AuthResult::Cached);
    l.tls_handshake(Some(TlsVersion::Tls13));
    let guard = l.session();
    let _second = l.session();
    drop(guard);
    let u = m.upstream("mx");
    u.failure("connect", true);
    m.rate_limit_hit("ip-messages-1h");
    m.rate_limit_hit("ip-messages-1h");
    let text = m.render().unwrap();
    for (series, want) in [
        (
            r#"postern_connections_total{listener="legacy",result="allowlist"}"#,
            1.0,
        ),
        (
            r#"postern_messages_refused_total{listener="legacy",reason="size"}"#,
            1.0,
        ),
        (
            r#"postern_messages_refused_total{listener="legacy",reason="stale_rules"}"#,
            1.0,
        ),
        (
            r#"postern_recipients_total{listener="legacy",outcome="refused"}"#,
            1.0,
        ),
        (
            r#"postern_auth_attempts_total{listener="legacy",mechanism="login",result="cached"}"#,
            1.0,
        ),
        (
            r#"postern_tls_handshakes_total{listener="legacy",result="success",version="tls1_3"}"#,
            1.0,
        ),
        (r#"postern_sessions_active{listener="legacy"}"#, 1.0),
        (
            r#"postern_upstream_failures_total{stage="connect",upstream="mx"}"#,
            1.0,
        ),
        (r#"postern_upstream_up{upstream="mx"}"#, 0.0),
        (
            r#"postern_rate_limit_hits_total{rule="ip-messages-1h"}"#,
            2.0,
        ),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(!m.upstream("mx").is_up());
    m.upstream("mx").reached();
    assert!(m.upstream("mx").is_up());
}

#[test]
fn oldest_age_follows_the_clock() {
    let m = Metrics::new().unwrap();
    m.queue.refresh(1000);
    assert_eq!(m.queue.oldest_age.get(), 0);
    m.queue.oldest_received.store(900, Ordering::Relaxed);
    m.queue.refresh(1000);
    assert_eq!(m.queue.oldest_age.get(), 100);
}

/// An upstream a reload removed leaves the gauges (its `up` of 0 would keep an alert
/// firing) but keeps its counters; one that comes back starts up again.
#[test]
fn removed_upstreams_leave_the_gauges() {
    let m = Metrics::new().unwrap();
    m.register_upstreams(["kept", "gone"]);
    m.upstream("gone").failure("connect", true);
    m.upstream("gone").attempt(AttemptResult::Deferred);
    m.retain_upstreams(&["kept"]);
    let text = m.render().unwrap();
    assert_eq!(
        value(&text, r#"postern_upstream_up{upstream="gone"}"#),
        None
    );
    assert_eq!(
        value(&text, r#"postern_upstream_up{upstream="kept"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"postern_delivery_attempts_total{result="deferred",upstream="gone"}"#
        ),
        Some(1.0)
    );
    assert!(m.upstream("gone").is_up());
}

/// `value as usize` indexes the resolved handles: each `ALL` is in declaration order.
#[test]
fn label_arrays_are_in_declaration_order() {
    for (i, r) in AuthResult::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
    for (i, r) in AttemptResult::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
    for (i, r) in RcptOutcome::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
    for (i, r) in Completion::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
    for (i, a) in DsnAction::ALL.iter().enumerate() {
        assert_eq!(*a as usize, i, "{a:?}");
    }
    for (i, c) in crate::upstream::shaping::Cap::ALL.iter().enumerate() {
        assert_eq!(*c as usize, i, "{c:?}");
    }
}
