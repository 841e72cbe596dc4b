//! Several instances behind a real HAProxy, sharing limits in a real Redis (issue 9, the
//! scale-out tests): two `postern run` processes, each with its own config, spool and log,
//! behind Debian's haproxy with `send-proxy-v2`, and one redis-server, all on loopback.
//!
//! - the client's own address (a socket bound to 127.0.0.2) drives the allowlist and is
//!   what the log of whichever instance took the connection names;
//! - a user limit of 3 per hour holds across both: three messages go, the fourth is refused
//!   whichever instance takes it;
//! - a lockout earned on one instance refuses AUTH on the other;
//! - Redis stopped: a `deny` rule answers `451 4.3.0` on both; Redis back: mail flows again;
//! - an instance drained with mail in its queue fails `/readyz`, so HAProxy sends new
//!   sessions to the other; it delivers its whole queue, and exits 0 on SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::binary::{Postern, wait_listening};
use crate::harness::admin::{TOKEN, run_cli, stderr, stdout};
use crate::harness::ca::TestCa;
use crate::harness::client::Dialog;
use crate::harness::haproxy::{Backend, HAPROXY, Haproxy, HaproxyOpts, ProxyVersion};
use crate::harness::http::{Scrape, get};
use crate::harness::redis::RedisServer;
use crate::harness::sink::{Fault, Sink, SinkOptions, reserve_port};
use crate::harness::tools::{run, text};
use crate::harness::{DELIVERY, PLAIN_TOKEN, message, password_hash, send_mail};

/// The printer: the only address the legacy listeners admit.
const PRINTER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Not in the allowlist.
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// A guesser, locked out by its failures.
const GUESSER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
/// alice's sessions.
const ALICE_AT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
const X: &[&str] = &["x@example.org"];
/// `AUTH PLAIN` for alice with a wrong password.
const WRONG_PLAIN: &str = "AUTH PLAIN AGFsaWNlAHdyb25n";

/// One `postern run` process with its own directory, ports and log.
struct Instance {
    name: &'static str,
    dir: TempDir,
    config: PathBuf,
    submission: SocketAddr,
    legacy: SocketAddr,
    http: SocketAddr,
    process: Postern,
}

impl Instance {
    /// Writes the config (both SMTP listeners behind the load balancer at 127.0.0.1,
    /// `extra` top-level YAML appended) and starts the binary; returns once `/readyz` is 200.
    async fn start(name: &'static str, ca: &TestCa, sink: u16, extra: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let port = || SocketAddr::from(([127, 0, 0, 1], reserve_port()));
        let (submission, legacy, http) = (port(), port(), port());
        std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
        let config = dir.path().join("postern.yaml");
        let yaml = format!(
            r#"hostname: {name}.relay.test
listeners:
  - {{name: submission, address: "{submission}", tls: starttls, auth: required, {behind}}}
  - {{name: legacy, address: "{legacy}", tls: none, auth: none, allow_networks: [127.0.0.2/32], {behind}}}
tls: {{certificate: {cert}, private_key: {key}}}
users:
  - {{username: alice, password_hash: "{hash}", senders: ["alice@example.com"]}}
queue: {{directory: {d}/spool, min_backoff: 1s, max_backoff: 2s}}
upstreams:
  - {{name: sink, address: "127.0.0.1:{sink}", tls: none, connect_timeout: 2s}}
log: {{level: info, format: json}}
http: {{address: "{http}", admin_token_file: {d}/admin.token}}
{extra}"#,
            behind = "proxy_protocol: {trusted: [127.0.0.1/32], required: true}",
            cert = ca.cert_file.display(),
            key = ca.key_file.display(),
            hash = password_hash(),
            d = dir.path().display(),
        );
        std::fs::write(&config, yaml).unwrap();
        let mut process = Postern::run(&config, &dir.path().join("postern.log"));
        wait_listening(http, &mut process).await;
        let instance = Instance {
            name,
            dir,
            config,
            submission,
            legacy,
            http,
            process,
        };
        instance.wait_ready().await;
        instance
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if get(self.http, "/readyz").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{}: /readyz never answered 200", self.name);
    }

    /// Its JSON log lines so far.
    fn log(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("postern.log")).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `session_start` lines that name `ip` as the client.
    fn sessions_from(&self, ip: IpAddr) -> usize {
        self.log()
            .iter()
            .filter(|l| {
                l["fields"]["event"] == "session_start"
                    && l["fields"]["client_ip"] == ip.to_string().as_str()
            })
            .count()
    }

    async fn scrape(&self) -> Scrape {
        Scrape::from(self.http).await
    }

    /// Sessions this instance admitted on `listener`.
    async fn accepted(&self, listener: &str) -> f64 {
        self.scrape().await.get(&format!(
            r#"postern_connections_total{{listener="{listener}",result="accepted"}}"#
        ))
    }
}

/// HAProxy in front of one listener of each instance.
async fn balance(backends: Vec<Backend>, health: bool) -> Haproxy {
    let haproxy = Haproxy::start(HaproxyOpts {
        backends,
        version: ProxyVersion::V2,
        health,
    })
    .await;
    if health {
        haproxy.wait_servers(&["UP", "UP"]).await;
    }
    haproxy
}

/// A STARTTLS session through `front` from `from`, after EHLO, STARTTLS and EHLO.
async fn submission_from(from: IpAddr, front: SocketAddr, ca: &TestCa) -> Dialog {
    let mut d = Dialog::connect_from(from, front).await;
    d.expect("220 ").await;
    d.ehlo("client.test").await;
    d.starttls(ca).await;
    d.ehlo("client.test").await;
    d
}

/// Who answered: the greeting names the instance (`220 a.relay.test ...`).
fn greeted_by(greeting: &str) -> &str {
    greeting
        .split_whitespace()
        .nth(1)
        .and_then(|h| h.split('.').next())
        .unwrap_or("")
}

/// The printer behind HAProxy is admitted by whichever instance takes it, its address is in
/// the Received header and in that instance's log; a stranger gets the allowlist's `554`.
async fn printer_is_seen_as_itself(a: &Instance, b: &Instance, sink: &Sink) {
    let haproxy = balance(
        vec![Backend::smtp(a.legacy), Backend::smtp(b.legacy)],
        false,
    )
    .await;
    sink.expect(2);
    let mut served = Vec::new();
    for n in 0..2 {
        let mut d = Dialog::connect_from(PRINTER, haproxy.frontend).await;
        let greeting = d.expect("220 ").await;
        served.push(greeted_by(greeting.first()).to_owned());
        d.ehlo("printer.test").await;
        let data = message(&format!("printer-{n}"), "", "scan\r\n");
        send_mail(&mut d, "scanner@example.com", X, &data).await;
        d.cmd("QUIT", "221").await;
    }
    served.sort();
    assert_eq!(served, ["a", "b"], "round robin over both instances");
    for m in sink.wait(DELIVERY).await {
        let text = m.text();
        assert!(
            text.starts_with("Received: from printer.test ([127.0.0.2])"),
            "{text}"
        );
    }
    for instance in [a, b] {
        assert_eq!(instance.sessions_from(PRINTER), 1, "{}", instance.name);
    }
    let mut d = Dialog::connect_from(STRANGER, haproxy.frontend).await;
    d.expect("554 5.7.1").await;
    d.expect_closed().await;
}

/// alice may send 3 messages an hour across the cluster: 3 sessions over both instances
/// send one each, the fourth and fifth are refused whichever instance takes them.
async fn user_limit_is_shared(a: &Instance, b: &Instance, ca: &TestCa, front: SocketAddr) {
    let before = (
        a.accepted("submission").await,
        b.accepted("submission").await,
    );
    for n in 0..5 {
        let mut d = submission_from(ALICE_AT, front, ca).await;
        d.cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "235 2.7.0")
            .await;
        if n < 3 {
            let data = message(&format!("alice-{n}"), "", "hi\r\n");
            send_mail(&mut d, "alice@example.com", X, &data).await;
        } else {
            d.cmd(
                "MAIL FROM:<alice@example.com>",
                "450 4.7.1 Error: rate limit shared exceeded, try again in ",
            )
            .await;
        }
        d.cmd("QUIT", "221").await;
    }
    let after = (
        a.accepted("submission").await,
        b.accepted("submission").await,
    );
    assert!(
        after.0 - before.0 >= 2.0 && after.1 - before.1 >= 2.0,
        "both instances served: {before:?} -> {after:?}"
    );
    for instance in [a, b] {
        let hits = instance
            .scrape()
            .await
            .get(r#"postern_rate_limit_hits_total{rule="shared"}"#);
        assert!(hits >= 1.0, "{}: {hits}", instance.name);
    }
}

/// Three wrong passwords on one instance lock the guesser's address on both: the right
/// password then gets `454 4.7.0` wherever it lands.
async fn lockout_is_shared(ca: &TestCa, front: SocketAddr) {
    let mut d = submission_from(GUESSER, front, ca).await;
    d.cmd(WRONG_PLAIN, "535 5.7.8 ").await;
    d.cmd(WRONG_PLAIN, "535 5.7.8 ").await;
    d.cmd(WRONG_PLAIN, "421 4.7.0 ").await;
    let mut greeted = Vec::new();
    for _ in 0..2 {
        let mut d = Dialog::connect_from(GUESSER, front).await;
        let greeting = d.expect("220 ").await;
        greeted.push(greeted_by(greeting.first()).to_owned());
        d.ehlo("client.test").await;
        d.starttls(ca).await;
        d.ehlo("client.test").await;
        d.cmd(
            &format!("AUTH PLAIN {PLAIN_TOKEN}"),
            "454 4.7.0 Error: too many authentication failures",
        )
        .await;
    }
    greeted.sort();
    assert_eq!(greeted, ["a", "b"], "refused on both instances");
}

/// Redis stops: the printers' `deny` rule answers `451 4.3.0` on each instance; Redis back:
/// the printer's mail is accepted again, without a restart.
async fn redis_outage_denies_then_recovers(redis: &mut RedisServer, front: SocketAddr) {
    redis.stop();
    for _ in 0..2 {
        let mut d = Dialog::connect_from(PRINTER, front).await;
        d.expect("220 ").await;
        d.ehlo("printer.test").await;
        d.cmd("MAIL FROM:<scanner@example.com>", "451 4.3.0 ").await;
    }
    redis.start_again().await;
    let mut recovered = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let mut d = Dialog::connect_from(PRINTER, front).await;
        let greeting = d.expect("220 ").await;
        d.ehlo("printer.test").await;
        d.send("MAIL FROM:<scanner@example.com>\r\n").await;
        if d.try_reply()
            .await
            .is_some_and(|r| r.first().starts_with("250 "))
        {
            recovered.insert(greeted_by(greeting.first()).to_owned());
            if recovered.len() == 2 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("mail never accepted again after Redis came back");
}

/// The shared-limits part of the scale-out tests: one Redis, two instances, HAProxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_haproxy_see_the_client_and_share_limits() {
    let mut redis = RedisServer::start().await;
    let shared = tempfile::tempdir().unwrap();
    let ca = TestCa::new(shared.path());
    let sink = Sink::start(SinkOptions::default()).await;
    let extra = format!(
        "redis: {{url: \"{}\", command_timeout: 200ms}}\n\
         rate_limits:\n\
         \x20 - {{name: shared, per: user, messages: 3, interval: 1h, scope: cluster}}\n\
         \x20 - {{name: printers, per: ip, messages: 1000, interval: 1h, scope: cluster, on_redis_error: deny, listeners: [legacy]}}\n\
         auth_lockout: {{attempts: 3, window: 10m, duration: 15m, scope: cluster}}\n",
        redis.url()
    );
    let a = Instance::start("a", &ca, sink.port(), &extra).await;
    let b = Instance::start("b", &ca, sink.port(), &extra).await;
    printer_is_seen_as_itself(&a, &b, &sink).await;
    let submission = balance(
        vec![Backend::smtp(a.submission), Backend::smtp(b.submission)],
        false,
    )
    .await;
    user_limit_is_shared(&a, &b, &ca, submission.frontend).await;
    lockout_is_shared(&ca, submission.frontend).await;
    let legacy = balance(
        vec![Backend::smtp(a.legacy), Backend::smtp(b.legacy)],
        false,
    )
    .await;
    redis_outage_denies_then_recovers(&mut redis, legacy.frontend).await;
}

/// Submits one message from the printer through `front`; returns which instance took it.
async fn print(front: SocketAddr, tag: &str) -> String {
    let mut d = Dialog::connect_from(PRINTER, front).await;
    let greeting = d.expect("220 ").await;
    d.ehlo("printer.test").await;
    send_mail(
        &mut d,
        "scanner@example.com",
        X,
        &message(tag, "", "scan\r\n"),
    )
    .await;
    d.cmd("QUIT", "221").await;
    greeted_by(greeting.first()).to_owned()
}

impl Instance {
    /// `postern_queue_messages`.
    async fn queued(&self) -> f64 {
        self.scrape().await.get("postern_queue_messages")
    }

    /// Waits (bounded: 200 scrapes, 50 ms apart) until `n` messages are queued.
    async fn wait_queued(&self, n: f64) {
        for _ in 0..200 {
            if self.queued().await == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{}: never {n} messages queued", self.name);
    }
}

/// A rolling restart: instance a has mail queued (the upstream answers `451` for now) when
/// `postern queue drain` runs on it. `/readyz` fails, HAProxy's health check takes it out,
/// new mail goes to b; when the upstream recovers a delivers its whole queue, the drain
/// exits 0, and SIGTERM stops a with status 0. Every message arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instance_leaves_the_pool_delivers_its_queue_and_exits() {
    let shared = tempfile::tempdir().unwrap();
    let ca = TestCa::new(shared.path());
    let sink = Sink::start(SinkOptions::default()).await;
    sink.fault(Fault::DataEnd("451 4.3.0 not now".into()), None);
    let mut a = Instance::start("a", &ca, sink.port(), "").await;
    let b = Instance::start("b", &ca, sink.port(), "").await;
    let backends = [&a, &b]
        .iter()
        .map(|i| Backend {
            smtp: i.legacy,
            http: Some(i.http),
        })
        .collect();
    let haproxy = balance(backends, true).await;
    let mut tags = Vec::new();
    for n in 0..4 {
        let tag = format!("before-{n}");
        print(haproxy.frontend, &tag).await;
        tags.push(tag);
    }
    a.wait_queued(2.0).await;

    let drain = tokio::spawn(run_cli(
        &["queue", "drain", "--deadline", "60s", "--retry-every", "1s"],
        a.config.clone(),
    ));
    haproxy.wait_servers(&["DOWN", "UP"]).await;
    for n in 0..2 {
        let tag = format!("during-{n}");
        assert_eq!(print(haproxy.frontend, &tag).await, "b", "{tag}");
        tags.push(tag);
    }
    sink.clear_faults();
    sink.expect(tags.len());
    let out = drain.await.unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("queue drained"), "{}", stdout(&out));
    assert_eq!(a.queued().await, 0.0);
    a.process.sigterm();
    let status = a.process.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    let got = sink.wait(DELIVERY).await;
    let mut arrived: Vec<String> = got
        .iter()
        .filter_map(|m| {
            let text = m.text();
            let tag = text.lines().find_map(|l| l.strip_prefix("X-Test: "))?;
            Some(tag.to_owned())
        })
        .collect();
    arrived.sort();
    tags.sort();
    assert_eq!(arrived, tags, "each message exactly once");
    drop(b);
}

/// The example in `deploy/haproxy/` is a valid HAProxy configuration (`haproxy -c`), and it
/// sends the v2 header and health-checks `/readyz`, as the README says.
#[test]
fn the_haproxy_example_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
    let out = run(HAPROXY, &["-c", "-f", path], "Debian package haproxy");
    assert!(out.status.success(), "{}", text(&out));
    let text = std::fs::read_to_string(path).unwrap();
    for want in ["mode tcp", "send-proxy-v2", "option httpchk GET /readyz"] {
        assert!(text.contains(want), "{want}");
    }
}
