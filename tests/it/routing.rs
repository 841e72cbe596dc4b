//! Routing and failover (issue 8, part 5) against real sinks on loopback: routes by
//! recipient, listener and identity with a message split per route; failover to the
//! route's next upstream on a refused connection and on `421`, but not on a live upstream's
//! `451`; the circuit breaker opening after N failures in a row (metric, log line,
//! `/readyz`), skipping the upstream without touching it, and closing after the cool-down
//! (the injected clock moved, no sleeping) once a probe goes through.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use postern::clock::Clock;

use crate::harness::client::{Dialog, step};
use crate::harness::http::{Scrape, get};
use crate::harness::sink::{Fault, Received, Sink, SinkOptions, reserve_port};
use crate::harness::{DELIVERY, dot_stuff, eventually, logs, message, queue_id, split_prefix};

/// A relay with the upstreams and routes a test gives, two plain listeners (`apps` and
/// `printers`, both open to 127.0.0.0/8), the HTTP endpoint, and a clock the test moves.
pub(crate) struct Relay {
    dir: tempfile::TempDir,
    running: Option<postern::app::Running>,
    pub(crate) clock: Clock,
}

impl Relay {
    /// `body`: the YAML from `upstreams:` on (upstreams, routes, networks, ...). `queue`
    /// backoff is an hour: what arrives within the deadline arrived on the first attempt.
    pub(crate) async fn start(body: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            r#"hostname: relay.test
listeners:
  - {{name: apps, address: "127.0.0.1:0", tls: none, auth: none, allow_networks: [127.0.0.0/8]}}
  - {{name: printers, address: "127.0.0.1:0", tls: none, auth: none, allow_networks: [127.0.0.0/8]}}
queue: {{directory: {d}/spool, min_backoff: 1h, max_backoff: 1h}}
http: {{address: "127.0.0.1:0"}}
log: {{level: warn}}
{body}"#,
            d = dir.path().display(),
        );
        let config = dir.path().join("postern.yaml");
        std::fs::write(&config, &yaml).unwrap();
        let cfg = postern::config::load::load_str(&yaml, &config).unwrap();
        logs::capture();
        let clock = Clock::new();
        let start = postern::app::start_with(cfg, clock.clone());
        let running = step("postern start", start).await.unwrap();
        Relay {
            dir,
            running: Some(running),
            clock,
        }
    }

    fn running(&self) -> &postern::app::Running {
        self.running.as_ref().unwrap()
    }

    /// Stops postern gracefully (as SIGTERM) and starts it again on the same config,
    /// spool and clock; listeners get new ports.
    pub(crate) async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            step("postern shutdown", running.shutdown()).await;
        }
        let config = self.dir.path().join("postern.yaml");
        let yaml = std::fs::read_to_string(&config).unwrap();
        let cfg = postern::config::load::load_str(&yaml, &config).unwrap();
        let start = postern::app::start_with(cfg, self.clock.clone());
        self.running = Some(step("postern restart", start).await.unwrap());
    }

    fn http(&self) -> SocketAddr {
        self.running().http_addr().unwrap()
    }

    /// A session on `listener` from `from` (127.0.0.1 when `None`), after EHLO.
    pub(crate) async fn session(&self, listener: &str, from: Option<IpAddr>) -> Dialog {
        let addr = self.running().addr(listener).unwrap();
        let mut d = match from {
            Some(ip) => Dialog::connect_from(ip, addr).await,
            None => Dialog::connect_silent(addr).await,
        };
        d.expect("220").await;
        d.ehlo("client.test").await;
        d
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The envelope of a queued message, once it is recorded and `done` holds for it.
    pub(crate) async fn queued(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&postern::spool::Envelope) -> bool,
    ) -> postern::spool::Envelope {
        let path = self.spool().join("queue").join(format!("{id}.state"));
        let read = || {
            let bytes = std::fs::read(&path).ok()?;
            postern::spool::record::decode_state(&bytes).ok()
        };
        let deadline = tokio::time::Instant::now() + DELIVERY;
        loop {
            if let Some(env) = read().filter(|e| done(e)) {
                return env;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {DELIVERY:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the queue is empty and nothing failed.
    pub(crate) async fn drained(&self) {
        let queue = self.spool().join("queue");
        let empty = || std::fs::read_dir(&queue).map_or(true, |mut d| d.next().is_none());
        eventually("queue empty", empty).await;
        let failed = self.spool().join("failed");
        assert!(std::fs::read_dir(&failed).map_or(true, |mut d| d.next().is_none()));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            logs::assert_no_secrets();
        }
    }
}

/// An SMTP upstream entry on 127.0.0.1:`port`, plain, with `extra` keys.
pub(crate) fn upstream(name: &str, port: u16, extra: &str) -> String {
    format!(
        "  - {{name: {name}, address: \"127.0.0.1:{port}\", tls: none, connect_timeout: 2s{extra}}}\n"
    )
}

/// One transaction; returns the queue id.
pub(crate) async fn submit(d: &mut Dialog, from: &str, rcpts: &[&str], data: &[u8]) -> String {
    d.cmd(&format!("MAIL FROM:<{from}>"), "250 2.1.0").await;
    for rcpt in rcpts {
        d.cmd(&format!("RCPT TO:<{rcpt}>"), "250 2.1.5").await;
    }
    d.cmd("DATA", "354").await;
    d.send([dot_stuff(data), b".\r\n".to_vec()].concat()).await;
    queue_id(d.expect("250 2.0.0").await.first())
}

/// The one message `sink` got next: its envelope and the exact bytes sent.
async fn one(sink: &Sink, from: &str, rcpts: &[&str], sent: &[u8]) -> Received {
    sink.expect(1);
    let got = sink.wait(DELIVERY).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let m = got.into_iter().next().unwrap();
    assert_eq!(m.mail_from, from);
    assert_eq!(m.rcpt_to, rcpts);
    split_prefix(&m.data, sent);
    m
}

/// Route matching on recipient domain, listener and identity, with a message whose
/// recipients take three routes arriving as three transactions, each sink getting only
/// its recipients and the whole message byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_recipient_listener_and_identity_and_split() {
    let main = Sink::start(SinkOptions::default()).await;
    let partner = Sink::start(SinkOptions::default()).await;
    let scans = Sink::start(SinkOptions::default()).await;
    let body = format!(
        "networks:\n  - {{network: 127.0.0.2/32}}\nupstreams:\n{}{}{}routes:
  - {{recipients: [\"@partner.example\", \"@*.partner.example\"], upstreams: [partner]}}
  - {{listeners: [printers], identities: [\"network:127.0.0.2/32\"], upstreams: [scans]}}
  - {{senders: [\"*\"], upstreams: [main]}}
",
        upstream("main", main.port(), ""),
        upstream("partner", partner.port(), ""),
        upstream("scans", scans.port(), ""),
    );
    let relay = Relay::start(&body).await;
    let device: IpAddr = "127.0.0.2".parse().unwrap();
    // The device on the printers listener: three recipients on two routes, and one more
    // at a partner subdomain.
    let mut d = relay.session("printers", Some(device)).await;
    let sent = message("split", "", "one message, two routes\r\n");
    let rcpts = [
        "a@x.example",
        "b@partner.example",
        "c@y.example",
        "d@eu.partner.example",
    ];
    submit(&mut d, "scan@print.example", &rcpts, &sent).await;
    one(
        &scans,
        "scan@print.example",
        &["a@x.example", "c@y.example"],
        &sent,
    )
    .await;
    one(
        &partner,
        "scan@print.example",
        &["b@partner.example", "d@eu.partner.example"],
        &sent,
    )
    .await;
    relay.drained().await;
    // The device on the apps listener, and another client on printers: not the scans route.
    let mut d = relay.session("apps", Some(device)).await;
    let sent = message("apps", "", "via apps\r\n");
    submit(&mut d, "scan@print.example", &["e@x.example"], &sent).await;
    one(&main, "scan@print.example", &["e@x.example"], &sent).await;
    let mut d = relay.session("printers", None).await;
    let sent = message("other", "", "not the device\r\n");
    submit(&mut d, "who@print.example", &["f@x.example"], &sent).await;
    one(&main, "who@print.example", &["f@x.example"], &sent).await;
    relay.drained().await;
    assert_eq!(scans.received().len(), 1);
    assert_eq!(partner.received().len(), 1);
    assert_eq!(main.received().len(), 2);
    for sink in [&main, &partner, &scans] {
        assert_eq!(sink.violations(), Vec::<String>::new());
    }
}

/// The primary refuses connections, or answers `421` (to the greeting, to MAIL's
/// recipients, to the final dot): the backup gets the message at once, byte for byte, and
/// the primary has nothing. A `451` to RCPT from a live primary defers the message
/// instead: the backup never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_backup() {
    // (what the primary does, whether the backup takes the message)
    let refused = None;
    let rows: Vec<(Option<Fault>, bool)> = vec![
        (refused, true),
        (Some(Fault::Greeting("421 4.3.2 primary busy".into())), true),
        (
            Some(Fault::Rcpt(
                "x@example.org".into(),
                "421 4.4.2 closing".into(),
            )),
            true,
        ),
        (Some(Fault::DataEnd("421 4.3.0 shutting down".into())), true),
        (
            Some(Fault::Rcpt(
                "x@example.org".into(),
                "451 4.7.1 greylisted".into(),
            )),
            false,
        ),
    ];
    for (fault, fails_over) in rows {
        let row = format!("{fault:?}");
        let (primary, primary_port) = match &fault {
            None => (None, reserve_port()),
            Some(f) => {
                let sink = Sink::start(SinkOptions::default()).await;
                sink.fault(f.clone(), None);
                let port = sink.port();
                (Some(sink), port)
            }
        };
        let backup = Sink::start(SinkOptions::default()).await;
        let body = format!(
            "upstreams:\n{}{}routes:\n  - {{senders: [\"*\"], upstreams: [primary, backup]}}\n",
            upstream("primary", primary_port, ""),
            upstream("backup", backup.port(), ""),
        );
        let relay = Relay::start(&body).await;
        let mut d = relay.session("apps", None).await;
        let sent = message("failover", "", "to the backup\r\n");
        let id = submit(&mut d, "dev@example.net", &["x@example.org"], &sent).await;
        if fails_over {
            one(&backup, "dev@example.net", &["x@example.org"], &sent).await;
            relay.drained().await;
        } else {
            let env = relay.queued(&id, &row, |e| e.attempts >= 1).await;
            assert_eq!(
                env.recipients[0].status,
                postern::spool::RcptStatus::Pending,
                "{row}"
            );
            assert_eq!(backup.connections(), 0, "{row}");
        }
        if let Some(primary) = &primary {
            assert!(primary.connections() >= 1, "{row}");
            assert_eq!(primary.received(), [], "{row}");
            assert_eq!(primary.violations(), Vec::<String>::new(), "{row}");
        }
        assert_eq!(backup.violations(), Vec::<String>::new(), "{row}");
    }
}

/// Circuit-breaker log lines for `upstream`, as (state) in order.
fn breaker_states(upstream: &str) -> Vec<String> {
    logs::lines()
        .into_iter()
        .filter(|l| {
            l["fields"]["event"] == "circuit_breaker" && l["fields"]["upstream"] == upstream
        })
        .map(|l| l["fields"]["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The primary fails twice in a row (`failures: 2`): its breaker opens, once (log line,
/// counter, gauge), and `/readyz` fails for the route that has only the primary. The next
/// message goes straight to the backup without a connection to the primary, though it is
/// back up. Once the cool-down is over (the clock moved, nothing slept) one message probes
/// the primary, which takes it: the breaker closes and the route is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_opens_skips_and_closes_after_the_cooldown() {
    let primary_port = reserve_port();
    let backup = Sink::start(SinkOptions::default()).await;
    // A name no other test uses: the log lines are process-wide.
    let name = "breaker-primary";
    let body = format!(
        "upstreams:\n{}{}routes:
  - {{recipients: [\"@solo.example\"], upstreams: [{name}]}}
  - {{senders: [\"*\"], upstreams: [{name}, backup]}}
",
        upstream(
            name,
            primary_port,
            ", circuit_breaker: {failures: 2, cooldown: 1m}"
        ),
        upstream("backup", backup.port(), ""),
    );
    let relay = Relay::start(&body).await;
    let mut d = relay.session("apps", None).await;
    let gauge = format!("postern_upstream_circuit_open{{upstream=\"{name}\"}}");
    let openings = format!("postern_upstream_circuit_openings_total{{upstream=\"{name}\"}}");
    for (i, (opened, open)) in [(0.0, 0.0), (1.0, 1.0)].into_iter().enumerate() {
        let sent = message(&format!("down{i}"), "", "primary refuses\r\n");
        submit(&mut d, "dev@example.net", &["x@example.org"], &sent).await;
        one(&backup, "dev@example.net", &["x@example.org"], &sent).await;
        relay.drained().await;
        Scrape::from(relay.http())
            .await
            .expect(&[(&openings, opened), (&gauge, open)]);
    }
    assert_eq!(breaker_states(name), ["open"]);
    let (status, text) = get(relay.http(), "/readyz").await;
    assert_eq!(status, 503, "{text}");
    let want = format!("routes[0]: every upstream is failing ({name}: circuit breaker open)");
    assert!(text.lines().any(|l| l == want), "{text}");
    assert!(!text.contains("routes[1]"), "{text}");
    // Back up, but the breaker is open: skipped without a connection.
    let primary = Sink::start_on(primary_port, SinkOptions::default()).await;
    let sent = message("skipped", "", "straight to the backup\r\n");
    submit(&mut d, "dev@example.net", &["x@example.org"], &sent).await;
    one(&backup, "dev@example.net", &["x@example.org"], &sent).await;
    relay.drained().await;
    assert_eq!(primary.connections(), 0);
    // The cool-down is over: the next message probes the primary, and it takes it.
    relay.clock.advance(Duration::from_secs(61));
    let sent = message("probe", "", "primary again\r\n");
    submit(&mut d, "dev@example.net", &["x@example.org"], &sent).await;
    one(&primary, "dev@example.net", &["x@example.org"], &sent).await;
    relay.drained().await;
    assert_eq!(breaker_states(name), ["open", "half_open", "closed"]);
    Scrape::from(relay.http())
        .await
        .expect(&[(&openings, 1.0), (&gauge, 0.0)]);
    let (status, text) = get(relay.http(), "/readyz").await;
    assert_eq!((status, text.as_str()), (200, "ready\n"));
    assert_eq!(backup.received().len(), 3);
    assert_eq!(primary.violations(), Vec::<String>::new());
    assert_eq!(backup.violations(), Vec::<String>::new());
}

/// No blind duplicates, per route: a message split over two routes, where the first
/// route's upstream takes the final dot and drops the connection. Only that group is
/// pinned (the pin names its recipients), the other group is delivered; after
/// `queue.ambiguous_retry` (the clock moved) the pinned recipients go to the same upstream
/// only, though their route has a backup, and the other route's sink never sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maybe_delivered_pins_only_the_group_that_was_sent() {
    let a = Sink::start(SinkOptions::default()).await;
    a.fault(Fault::DropAfterDot, Some(1));
    let backup = Sink::start(SinkOptions::default()).await;
    let other = Sink::start(SinkOptions::default()).await;
    let body = format!(
        "upstreams:\n{}{}{}routes:
  - {{recipients: [\"@one.example\"], upstreams: [a, backup]}}
  - {{upstreams: [other]}}
",
        upstream("a", a.port(), ""),
        upstream("backup", backup.port(), ""),
        upstream("other", other.port(), ""),
    );
    let relay = Relay::start(&body).await;
    let mut d = relay.session("apps", None).await;
    let sent = message("pinned", "", "half maybe\r\n");
    let rcpts = ["x@one.example", "y@two.example", "z@one.example"];
    let id = submit(&mut d, "dev@example.net", &rcpts, &sent).await;
    one(&other, "dev@example.net", &["y@two.example"], &sent).await;
    let env = relay
        .queued(&id, "maybe delivered recorded", |e| {
            !e.maybe_delivered.is_empty()
        })
        .await;
    assert_eq!(env.maybe_delivered.len(), 1);
    assert_eq!(env.maybe_delivered[0].upstream, "a");
    assert_eq!(
        env.maybe_delivered[0].recipients,
        ["x@one.example", "z@one.example"]
    );
    let delivered = |i: usize| matches!(&env.recipients[i].status, postern::spool::RcptStatus::Delivered { upstream, .. } if upstream == "other");
    assert!(delivered(1), "{:?}", env.recipients);
    assert_eq!(
        env.recipients[0].status,
        postern::spool::RcptStatus::Pending
    );
    assert_eq!(
        env.recipients[2].status,
        postern::spool::RcptStatus::Pending
    );
    // Past queue.ambiguous_retry (10m); a new message wakes the runner to see it due.
    relay.clock.advance(Duration::from_secs(11 * 60));
    let wake = message("wake", "", "wake up\r\n");
    submit(&mut d, "dev@example.net", &["w@two.example"], &wake).await;
    one(&other, "dev@example.net", &["w@two.example"], &wake).await;
    one(
        &a,
        "dev@example.net",
        &["x@one.example", "z@one.example"],
        &sent,
    )
    .await;
    relay.drained().await;
    assert_eq!(backup.connections(), 0);
    assert_eq!(other.received().len(), 2);
    for sink in [&a, &backup, &other] {
        assert_eq!(sink.violations(), Vec::<String>::new());
    }
}

/// With only recipient- and listener-bound routes, the client learns at once what has no
/// route: MAIL on a listener no route serves, RCPT to a recipient no route takes (each
/// `550 5.7.1`, counted as `no_route`), while the rest of the transaction goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_refused_at_mail_or_rcpt() {
    let partner = Sink::start(SinkOptions::default()).await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{recipients: [\"@partner.example\"], listeners: [apps], upstreams: [partner]}}\n",
        upstream("partner", partner.port(), ""),
    );
    let relay = Relay::start(&body).await;
    let mut d = relay.session("printers", None).await;
    d.exact(
        "MAIL FROM:<dev@example.net>",
        "550 5.7.1 Sender address rejected: no route for this sender",
    )
    .await;
    let mut d = relay.session("apps", None).await;
    d.cmd("MAIL FROM:<dev@example.net>", "250 2.1.0").await;
    d.exact(
        "RCPT TO:<x@other.example>",
        "550 5.7.1 Recipient address rejected: no route for this recipient",
    )
    .await;
    d.cmd("RCPT TO:<y@partner.example>", "250 2.1.5").await;
    d.cmd("DATA", "354").await;
    let sent = message("partial", "", "one of two\r\n");
    d.send([dot_stuff(&sent), b".\r\n".to_vec()].concat()).await;
    d.expect("250 2.0.0").await;
    one(&partner, "dev@example.net", &["y@partner.example"], &sent).await;
    relay.drained().await;
    Scrape::from(relay.http()).await.expect(&[
        (
            r#"postern_messages_refused_total{listener="printers",reason="no_route"}"#,
            1.0,
        ),
        (
            r#"postern_messages_refused_total{listener="apps",reason="no_route"}"#,
            1.0,
        ),
        (
            r#"postern_recipients_total{listener="apps",outcome="refused"}"#,
            1.0,
        ),
        (
            r#"postern_recipients_total{listener="apps",outcome="accepted"}"#,
            1.0,
        ),
    ]);
}
