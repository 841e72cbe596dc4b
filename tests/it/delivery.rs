//! End to end: client -> postern -> sink, byte for byte; the queue across upstream outages,
//! restarts and per-recipient outcomes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use lettre::transport::smtp::authentication::Mechanism;
use postern::spool::RcptStatus;

use crate::harness::client::{Dialog, Security, lettre_send, step, transport};
use crate::harness::sink::{Extensions, Fault, Sink, SinkOptions, reserve_port};
use crate::harness::{
    DELIVERY, Opts, PASSWORD, TestServer, UPSTREAM_CREDS, USER, Upstream, dot_stuff, eventually,
    field_names, message, queue_id, send_mail, split_prefix,
};

/// Test 1: each listener kind delivers the exact bytes with a Received header prefixed, and
/// Date / Message-ID are added only when missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_delivers_with_trace_and_missing_headers() {
    let server = TestServer::start(Opts::default()).await;
    let rows = [
        // (listener, security, credentials, Received "with" keyword)
        (
            "submission",
            Security::StartTls,
            Some(Mechanism::Plain),
            "ESMTPSA",
        ),
        (
            "submissions",
            Security::Implicit,
            Some(Mechanism::Login),
            "ESMTPSA",
        ),
        ("legacy", Security::Plain, None, "ESMTP"),
    ];
    let complete = "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <given@client.test>\r\n";
    for (listener, security, mech, with) in rows {
        let port = match listener {
            "submission" => server.submission.port(),
            "submissions" => server.submissions.port(),
            _ => server.legacy.port(),
        };
        let creds = mech.map(|m| (USER, PASSWORD, m));
        let t = transport(port, security, &server.ca, creds);
        for (headers, added) in [
            ("", vec!["Received", "Date", "Message-ID"]),
            (complete, vec!["Received"]),
        ] {
            let tag = format!("{listener}-{}", added.len());
            // lettre ends DATA with "\r\n.\r\n": the last line's CRLF is added by it.
            let sent = message(&tag, headers, "line one\r\nline two");
            let reply = lettre_send(&t, "alice@example.com", &["bob@example.org"], &sent).await;
            let reply = reply.unwrap_or_else(|e| panic!("{listener}: {e}"));
            assert!(reply.starts_with("250 2.0.0"), "{listener}: {reply}");
            let id = queue_id(&reply);
            server.sink().expect(1);
            let got = server.sink().wait(DELIVERY).await;
            assert_eq!(got.len(), 1, "{listener}");
            let m = &got[0];
            assert_eq!(
                (m.mail_from.as_str(), m.rcpt_to.as_slice()),
                ("alice@example.com", &["bob@example.org".to_owned()][..])
            );
            let prefix = split_prefix(&m.data, &[&sent[..], b"\r\n"].concat());
            assert_eq!(field_names(prefix), added, "{listener}: {prefix}");
            assert!(prefix.starts_with("Received: from "), "{prefix}");
            assert!(prefix.contains("([127.0.0.1])"), "{prefix}");
            assert!(
                prefix.contains(&format!("by relay.test (postern) with {with} id {id}")),
                "{prefix}"
            );
            assert!(prefix.contains("for <bob@example.org>"), "{prefix}");
        }
    }
    assert_eq!(server.sink().violations(), Vec::<String>::new());
}

/// Each upstream security mode: STARTTLS and implicit TLS with AUTH against the test CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_modes_deliver() {
    for upstream in [
        Upstream::Plain,
        Upstream::StartTlsAuth,
        Upstream::ImplicitAuth,
    ] {
        let server = TestServer::start(Opts {
            upstream,
            ..Opts::default()
        })
        .await;
        let mut d = server.legacy_session().await;
        let sent = message("up", "", "hello\r\n");
        send_mail(
            &mut d,
            "dev@example.net",
            &["x@example.org", "y@example.org"],
            &sent,
        )
        .await;
        server.sink().expect(1);
        let m = &server.sink().wait(DELIVERY).await[0];
        split_prefix(&m.data, &sent);
        assert_eq!(
            m.rcpt_to,
            ["x@example.org", "y@example.org"],
            "{upstream:?}"
        );
        let secure = upstream != Upstream::Plain;
        assert_eq!(m.tls, secure, "{upstream:?}");
        assert_eq!(
            m.auth.as_deref(),
            secure.then_some(UPSTREAM_CREDS.0),
            "{upstream:?}"
        );
        assert_eq!(
            server.sink().violations(),
            Vec::<String>::new(),
            "{upstream:?}"
        );
    }
}

/// Test 6: 8-bit bytes and dot-stuffing survive both hops unchanged; BODY=8BITMIME is passed
/// on (RFC 6152 section 3: 8-bit content must be announced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_body_and_dot_stuffing_round_trip() {
    let high: Vec<u8> = (0x80..=0xFFu8).collect();
    let mut body = b"X-Test: 8bit\r\nSubject: caf\xc3\xa9\r\n\r\n".to_vec();
    for chunk in high.chunks(32) {
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n..\r\n.x\r\n...\r\n .\r\nend .\r\n.\r\n");
    for upstream in [Upstream::Plain, Upstream::StartTlsAuth] {
        let server = TestServer::start(Opts {
            upstream,
            ..Opts::default()
        })
        .await;
        let mut d = server.legacy_session().await;
        d.cmd("MAIL FROM:<dev@example.net> BODY=8BITMIME", "250 2.1.0")
            .await;
        d.cmd("RCPT TO:<x@example.org>", "250 2.1.5").await;
        d.cmd("DATA", "354").await;
        d.send([crate::harness::dot_stuff(&body), b".\r\n".to_vec()].concat())
            .await;
        d.expect("250 2.0.0").await;
        server.sink().expect(1);
        let m = &server.sink().wait(DELIVERY).await[0];
        split_prefix(&m.data, &body);
        assert!(
            m.mail_params
                .iter()
                .any(|p| p.eq_ignore_ascii_case("BODY=8BITMIME")),
            "{:?}",
            m.mail_params
        );
    }
}

/// Test 10: with the upstream down the message is accepted and kept; once it is up, the
/// retry delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_then_up_delivers_on_retry() {
    let mut server = TestServer::start(Opts {
        sink_down: true,
        ..Opts::default()
    })
    .await;
    let mut d = server.legacy_session().await;
    let sent = message("down", "", "queued while down\r\n");
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &sent).await;
    d.cmd("QUIT", "221").await;
    assert!(spool_files(&server.spool()) > 0, "nothing in the spool");
    server.sink_up().await;
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 1);
    split_prefix(&got[0].data, &sent);
}

/// Test 11: messages queued while the upstream is down survive a restart and are delivered
/// exactly once each by the new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_delivers_spooled_messages_once() {
    let mut server = TestServer::start(Opts {
        sink_down: true,
        ..Opts::default()
    })
    .await;
    let mut sent = Vec::new();
    let mut d = server.legacy_session().await;
    for i in 0..3 {
        let m = message(&format!("spooled-{i}"), "", "survives a restart\r\n");
        send_mail(&mut d, "dev@example.net", &["x@example.org"], &m).await;
        sent.push(m);
    }
    d.cmd("QUIT", "221").await;
    server.stop().await;
    server.sink_up().await;
    server.restart().await;
    // A sentinel sent after the restart: once it is in, a duplicate would have had its chance.
    let sentinel = message("sentinel", "", "last\r\n");
    let mut d = server.legacy_session().await;
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &sentinel).await;
    server.sink().expect(4);
    let got = server.sink().wait_for(DELIVERY, |all| all.len() >= 4).await;
    for m in sent.iter().chain([&sentinel]) {
        let n = got.iter().filter(|g| g.data.ends_with(m)).count();
        assert_eq!(
            n,
            1,
            "{} arrived {n} times",
            String::from_utf8_lossy(&m[..20])
        );
    }
    assert_eq!(got.len(), 4);
}

/// Test 12a: one recipient refused with 5xx does not fail the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_rcpt_failure_spares_the_others() {
    let server = TestServer::start(Opts::default()).await;
    let bad = "nobody@example.org";
    server.sink().fault(
        Fault::Rcpt(bad.into(), "550 5.1.1 No such user".into()),
        None,
    );
    let mut d = server.legacy_session().await;
    let sent = message("perm", "", "to three\r\n");
    send_mail(
        &mut d,
        "dev@example.net",
        &["a@example.org", bad, "b@example.org"],
        &sent,
    )
    .await;
    let got = server
        .sink()
        .wait_for(DELIVERY, |all| {
            all.iter().any(|m| m.mail_from == "dev@example.net")
        })
        .await;
    let delivered: Vec<_> = got
        .iter()
        .filter(|m| m.mail_from == "dev@example.net")
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].rcpt_to, ["a@example.org", "b@example.org"]);
    split_prefix(&delivered[0].data, &sent);
}

/// Test 12b: a recipient deferred with 4xx is retried alone, and arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_rcpt_failure_is_retried_alone() {
    let server = TestServer::start(Opts::default()).await;
    let later = "later@example.org";
    server.sink().fault(
        Fault::Rcpt(later.into(), "450 4.2.1 Mailbox busy".into()),
        Some(1),
    );
    let mut d = server.legacy_session().await;
    let sent = message("temp", "", "to two\r\n");
    send_mail(
        &mut d,
        "dev@example.net",
        &["now@example.org", later],
        &sent,
    )
    .await;
    server.sink().expect(2);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].rcpt_to, ["now@example.org"]);
    assert_eq!(got[1].rcpt_to, [later]);
    for m in &got {
        split_prefix(&m.data, &sent);
    }
}

/// A 4xx after the final dot is retried; a drop after the dot ("maybe delivered") too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_end_failures_are_retried() {
    // (fault, connections the sink must have seen: a drop forces a new one)
    for (fault, conns) in [
        (Fault::DataEnd("451 4.3.0 Try again".into()), 1),
        (Fault::DropAfterDot, 2),
    ] {
        let server = TestServer::start(Opts::default()).await;
        server.sink().fault(fault.clone(), Some(1));
        let mut d = server.legacy_session().await;
        let sent = message("retry", "", "again\r\n");
        send_mail(&mut d, "dev@example.net", &["x@example.org"], &sent).await;
        server.sink().expect(1);
        let got = server.sink().wait(DELIVERY).await;
        assert_eq!(got.len(), 1, "{fault:?}");
        split_prefix(&got[0].data, &sent);
        assert!(server.sink().connections() >= conns, "{fault:?}");
    }
}

/// Counts regular files under `dir`, recursively (bounded depth).
pub fn spool_files(dir: &std::path::Path) -> usize {
    fn walk(dir: &std::path::Path, depth: u32) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                if path.is_dir() && depth < 4 {
                    walk(&path, depth + 1)
                } else {
                    usize::from(path.is_file())
                }
            })
            .sum()
    }
    walk(dir, 0)
}

/// postern with one route `*` over upstreams of its own, in order (the harness's
/// [`TestServer`] has exactly one upstream): a plain, unauthenticated `legacy` listener.
impl Drop for Routed {
    /// Nothing this server logged may carry a secret (see `harness::logs`).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            crate::harness::logs::assert_no_secrets();
        }
    }
}

struct Routed {
    dir: tempfile::TempDir,
    legacy: SocketAddr,
    running: Option<postern::app::Running>,
}

/// What a [`Routed`] relay is configured with besides its upstreams.
#[derive(Debug, Clone, Copy)]
struct RouteOpts {
    /// `queue.min_backoff` and `max_backoff`: `1h` makes "delivered within the deadline"
    /// mean "delivered by the first attempt".
    backoff: &'static str,
    /// Every upstream's `idle_timeout`.
    idle_timeout: &'static str,
    /// `queue.bounces`.
    bounces: &'static str,
}

const QUICK_RETRY: RouteOpts = RouteOpts {
    backoff: "1s",
    idle_timeout: "30s",
    bounces: "both",
};

const NO_RETRY: RouteOpts = RouteOpts {
    backoff: "1h",
    idle_timeout: "30s",
    bounces: "both",
};

impl Routed {
    /// Starts postern routing every sender over `upstreams` (name, port), in that order.
    async fn start(upstreams: &[(&str, u16)], opts: RouteOpts) -> Routed {
        let dir = tempfile::tempdir().unwrap();
        let list: String = upstreams
            .iter()
            .map(|(name, port)| {
                format!(
                    "  - {{name: {name}, address: \"127.0.0.1:{port}\", tls: none, connect_timeout: 2s, idle_timeout: {}}}\n",
                    opts.idle_timeout
                )
            })
            .collect();
        let names: Vec<&str> = upstreams.iter().map(|(name, _)| *name).collect();
        let yaml = format!(
            r#"hostname: relay.test
listeners:
  - {{name: legacy, address: "127.0.0.1:0", tls: none, auth: none, allow_networks: [127.0.0.1/32]}}
queue: {{directory: {d}/spool, min_backoff: {b}, max_backoff: {b}, ambiguous_retry: {b}, bounces: {bounces}}}
upstreams:
{list}routes:
  - {{senders: ["*"], upstreams: [{names}]}}
log: {{level: warn}}
"#,
            d = dir.path().display(),
            b = opts.backoff,
            bounces = opts.bounces,
            names = names.join(", "),
        );
        let config = dir.path().join("postern.yaml");
        std::fs::write(&config, &yaml).unwrap();
        let cfg = postern::config::load::load_str(&yaml, &config).unwrap();
        crate::harness::logs::capture();
        let running = step("postern start", postern::app::start(cfg))
            .await
            .unwrap();
        let legacy = running.addr("legacy").unwrap();
        Routed {
            dir,
            legacy,
            running: Some(running),
        }
    }

    /// A legacy session after EHLO.
    async fn session(&self) -> Dialog {
        let mut d = Dialog::connect(self.legacy).await;
        d.ehlo("client.test").await;
        d
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Graceful shutdown, as SIGTERM.
    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            step("postern shutdown", running.shutdown()).await;
        }
    }
}

/// One transaction with an exact MAIL line; returns the queue id from the final 250.
async fn submit(d: &mut Dialog, mail: &str, rcpts: &[&str], data: &[u8]) -> String {
    d.cmd(mail, "250 2.1.0").await;
    for rcpt in rcpts {
        d.cmd(&format!("RCPT TO:<{rcpt}>"), "250 2.1.5").await;
    }
    d.cmd("DATA", "354").await;
    d.send([dot_stuff(data), b".\r\n".to_vec()].concat()).await;
    queue_id(d.expect("250 2.0.0").await.first())
}

/// The file names in `dir`, sorted (none if it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until the spool holds nothing: every message delivered and none failed.
async fn spool_drained(spool: &Path) {
    eventually("queue empty", || names_in(&spool.join("queue")).is_empty()).await;
    assert_eq!(names_in(&spool.join("failed")), Vec::<String>::new());
}

/// The envelope recorded in a state file (`queue/ID.state` or `failed/ID.state`).
fn state(path: &Path) -> Option<postern::spool::Envelope> {
    let bytes = std::fs::read(path).ok()?;
    postern::spool::record::decode_state(&bytes).ok()
}

/// The MAIL parameters postern must send to an upstream offering everything for content
/// `data` (as the sink received it): the exact size (RFC 1870 5: the octets transmitted,
/// before dot-stuffing, which is what the sink holds after un-stuffing), BODY=8BITMIME
/// for 8-bit content (RFC 6152 3), SMTPUTF8 when the message needs it (RFC 6531 3.4).
fn expected_params(data: &[u8], smtputf8: bool) -> Vec<String> {
    let mut params = vec![format!("SIZE={}", data.len())];
    if !data.is_ascii() {
        params.push("BODY=8BITMIME".to_owned());
    }
    if smtputf8 {
        params.push("SMTPUTF8".to_owned());
    }
    params
}

/// A body of about `n` octets with lines that need dot-stuffing, so the size on the wire
/// (stuffed) and the size declared (unstuffed) differ.
fn dotted_body(tag: &str, n: usize, eight_bit: bool) -> Vec<u8> {
    let mut body = message(tag, "", ".leading dot\r\n..two\r\n");
    if eight_bit {
        body.extend_from_slice("caf\u{e9} \u{fc}ber\r\n".as_bytes());
    }
    while body.len() < n {
        body.extend_from_slice(b"filler line of text\r\n.\r\n");
    }
    body
}

/// A message that needs something of its upstream.
struct Needs {
    /// Names the table row in failure messages.
    row: &'static str,
    /// MAIL parameters from the client, with a leading space.
    params: &'static str,
    /// The one recipient that matters.
    rcpt: &'static str,
    /// The client's content.
    sent: Vec<u8>,
    /// The message needs SMTPUTF8.
    smtputf8: bool,
}

impl Needs {
    /// Needs SMTPUTF8: a UTF-8 recipient (RFC 6531 3.4).
    fn smtputf8() -> Needs {
        Needs {
            row: "smtputf8",
            params: " SMTPUTF8",
            rcpt: "\u{fc}ser@example.org",
            sent: dotted_body("utf8", 300, false),
            smtputf8: true,
        }
    }

    /// Needs 8BITMIME: 8-bit content, declared (RFC 6152 3).
    fn eightbitmime() -> Needs {
        Needs {
            row: "8bitmime",
            params: " BODY=8BITMIME",
            rcpt: "x@example.org",
            sent: dotted_body("8bit", 300, true),
            smtputf8: false,
        }
    }

    /// Needs a SIZE above 600 octets, content only.
    fn size() -> Needs {
        Needs {
            row: "size",
            params: "",
            rcpt: "x@example.org",
            sent: dotted_body("size", 600, false),
            smtputf8: false,
        }
    }
}

/// Everything offered, except as `change` says.
fn offering(change: impl FnOnce(&mut Extensions)) -> Extensions {
    let mut ext = Extensions::default();
    change(&mut ext);
    ext
}

/// RFC 6531 3.2 / RFC 6152 3 / RFC 1870 6: an upstream that lacks what the message needs
/// is passed over; the next upstream of the route gets the message, with the parameters
/// declaring exactly what it is. The first upstream gets no transaction at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_lacking_an_extension_is_passed_over() {
    // (the message, what the first upstream `a` offers; `b` offers everything)
    let size = Needs::size();
    // The client's bytes alone would fit; with postern's Received, Date and Message-ID
    // they do not (RFC 1870 5: the whole transmitted content counts).
    let just_too_small = size.sent.len() as u64 + 16;
    let rows = [
        (Needs::smtputf8(), offering(|e| e.smtputf8 = false)),
        (Needs::eightbitmime(), offering(|e| e.eightbitmime = false)),
        (size, offering(|e| e.size = Some(just_too_small))),
    ];
    for (needs, a_offers) in rows {
        let row = needs.row;
        let a = Sink::start_with(0, SinkOptions::default(), a_offers).await;
        let b = Sink::start(SinkOptions::default()).await;
        let relay = Routed::start(&[("a", a.port()), ("b", b.port())], QUICK_RETRY).await;
        let mut d = relay.session().await;
        let mail = format!("MAIL FROM:<dev@example.net>{}", needs.params);
        submit(&mut d, &mail, &[needs.rcpt], &needs.sent).await;
        b.expect(1);
        let got = b.wait(DELIVERY).await;
        assert_eq!(got.len(), 1, "{row}");
        let m = &got[0];
        split_prefix(&m.data, &needs.sent);
        assert_eq!(m.mail_from, "dev@example.net", "{row}");
        assert_eq!(m.rcpt_to, [needs.rcpt], "{row}");
        let params = expected_params(&m.data, needs.smtputf8);
        assert_eq!(m.mail_params, params, "{row}");
        spool_drained(&relay.spool()).await;
        assert!(a.connections() >= 1, "{row}: a was not tried first");
        assert_eq!(a.received(), [], "{row}");
        assert_eq!(a.violations(), Vec::<String>::new(), "{row}");
        assert_eq!(b.violations(), Vec::<String>::new(), "{row}");
    }
}

/// When no upstream of the route can take the message, it fails for good at once (no
/// retries), with the enhanced code of what was missing: 5.6.7 (RFC 6531 3.5), 5.6.3
/// (RFC 6152 3, RFC 3463), 5.3.4 (RFC 1870 6); it moves to `failed/` with that reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_no_upstream_can_take_fails_for_good() {
    let no_8bit = offering(|e| e.eightbitmime = false);
    // (the message, what each upstream of the route offers, the reply every recipient
    // fails with)
    let rows = [
        (
            Needs::smtputf8(),
            vec![offering(|e| e.smtputf8 = false)],
            "553 5.6.7 ",
        ),
        (Needs::eightbitmime(), vec![no_8bit, no_8bit], "554 5.6.3 "),
        (
            Needs::size(),
            vec![offering(|e| e.size = Some(200))],
            "552 5.3.4 ",
        ),
    ];
    let names = ["a", "b"];
    for (needs, offers, reply) in rows {
        let row = needs.row;
        let mut sinks = Vec::new();
        for ext in offers {
            sinks.push(Sink::start_with(0, SinkOptions::default(), ext).await);
        }
        let route: Vec<(&str, u16)> = names
            .iter()
            .copied()
            .zip(sinks.iter().map(Sink::port))
            .collect();
        // No retry within the test: a failure must be decided by the first attempt. No
        // bounce either (tests/it/bounces.rs has those): only the dead letter is checked.
        let dead_letter = RouteOpts {
            bounces: "dead_letter",
            ..NO_RETRY
        };
        let relay = Routed::start(&route, dead_letter).await;
        let mut d = relay.session().await;
        let mail = format!("MAIL FROM:<dev@example.net>{}", needs.params);
        let rcpts = [needs.rcpt, "other@example.org"];
        let id = submit(&mut d, &mail, &rcpts, &needs.sent).await;
        let failed = relay.spool().join("failed");
        let failed_state = failed.join(format!("{id}.state"));
        eventually(&format!("{row}: {id} in failed/"), || {
            state(&failed_state).is_some()
        })
        .await;
        assert_eq!(
            names_in(&failed),
            [id.clone(), format!("{id}.state")],
            "{row}"
        );
        assert_eq!(names_in(&relay.spool().join("queue")), Vec::<String>::new());
        let env = state(&failed_state).unwrap();
        assert_eq!(env.recipients.len(), 2, "{row}");
        for r in &env.recipients {
            let RcptStatus::Failed { reply: why } = &r.status else {
                panic!("{row}: {} is {:?}", r.address, r.status);
            };
            assert!(why.starts_with(reply), "{row}: {why}");
            for name in &names[..sinks.len()] {
                assert!(why.contains(&format!("{name}: ")), "{row}: {why}");
            }
        }
        for sink in &sinks {
            assert!(sink.connections() >= 1, "{row}");
            assert_eq!(sink.received(), [], "{row}");
            assert_eq!(sink.violations(), Vec::<String>::new(), "{row}");
        }
    }
}

/// One upstream of the route is down, the other lacks SMTPUTF8: that is not "no upstream
/// can take it" (the one that is down may), so the message stays queued and is retried,
/// and arrives once the first upstream is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incapable_and_down_is_retried_not_failed() {
    let a_port = reserve_port();
    let no_utf8 = offering(|e| e.smtputf8 = false);
    let b = Sink::start_with(0, SinkOptions::default(), no_utf8).await;
    let relay = Routed::start(&[("a", a_port), ("b", b.port())], QUICK_RETRY).await;
    let mut d = relay.session().await;
    let sent = dotted_body("later", 200, false);
    let rcpt = "\u{fc}ser@example.org";
    let id = submit(
        &mut d,
        "MAIL FROM:<dev@example.net> SMTPUTF8",
        &[rcpt],
        &sent,
    )
    .await;
    let queued_state = relay.spool().join("queue").join(format!("{id}.state"));
    eventually("first attempt recorded", || {
        state(&queued_state).is_some_and(|env| env.attempts >= 1)
    })
    .await;
    let env = state(&queued_state).unwrap();
    assert_eq!(env.recipients[0].status, RcptStatus::Pending);
    assert_eq!(
        names_in(&relay.spool().join("failed")),
        Vec::<String>::new()
    );
    assert!(b.connections() >= 1);
    let a = Sink::start_on(a_port, SinkOptions::default()).await;
    a.expect(1);
    let got = a.wait(DELIVERY).await;
    assert_eq!(got.len(), 1);
    split_prefix(&got[0].data, &sent);
    assert_eq!(got[0].rcpt_to, [rcpt]);
    assert_eq!(got[0].mail_params, expected_params(&got[0].data, true));
    spool_drained(&relay.spool()).await;
    assert_eq!(b.received(), []);
    assert_eq!(a.violations(), Vec::<String>::new());
    assert_eq!(b.violations(), Vec::<String>::new());
}

/// No blind duplicates: `a` is down, `b` takes the final dot and drops the connection, so
/// `b` may have the message. It is recorded as such in the message's state, and retried at
/// `b` only, after `queue.ambiguous_retry`, even though `a`, the route's first choice, is
/// back by then: `a` never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maybe_delivered_is_retried_at_the_same_upstream_only() {
    let a_port = reserve_port();
    let b = Sink::start(SinkOptions::default()).await;
    b.fault(Fault::DropAfterDot, Some(1));
    let relay = Routed::start(&[("a", a_port), ("b", b.port())], QUICK_RETRY).await;
    let mut d = relay.session().await;
    let sent = message("ambiguous", "", "only once\r\n");
    let id = submit(
        &mut d,
        "MAIL FROM:<dev@example.net>",
        &["x@example.org"],
        &sent,
    )
    .await;
    let queued_state = relay.spool().join("queue").join(format!("{id}.state"));
    eventually("maybe delivered recorded", || {
        state(&queued_state).is_some_and(|env| !env.maybe_delivered.is_empty())
    })
    .await;
    let pins = state(&queued_state).unwrap().maybe_delivered;
    assert_eq!(pins.len(), 1, "{pins:?}");
    let amb = &pins[0];
    assert_eq!(amb.upstream, "b");
    assert_eq!(amb.recipients, ["x@example.org"]);
    assert!(amb.bytes > sent.len() as u64, "{amb:?}");
    let a = Sink::start_on(a_port, SinkOptions::default()).await;
    b.expect(1);
    let got = b.wait(DELIVERY).await;
    assert_eq!(got.len(), 1);
    split_prefix(&got[0].data, &sent);
    spool_drained(&relay.spool()).await;
    assert_eq!(a.received(), []);
    assert_eq!(a.connections(), 0);
    assert_eq!(b.violations(), Vec::<String>::new());
}

/// RFC 5321 4.1.2: a quoted local part may hold spaces and angle brackets; it is accepted,
/// spooled and handed upstream with its quotes intact, for sender and recipients alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_local_parts_are_delivered_intact() {
    let sink = Sink::start(SinkOptions::default()).await;
    let relay = Routed::start(&[("a", sink.port())], NO_RETRY).await;
    let mut d = relay.session().await;
    let sent = message("quoted", "", "hello\r\n");
    let rcpts = [
        "\"john doe\"@example.org",
        "\"x<y>z\"@example.org",
        "\"a\\\"b\"@example.org",
        "plain@example.org",
    ];
    submit(
        &mut d,
        "MAIL FROM:<\"jane doe\"@example.net>",
        &rcpts,
        &sent,
    )
    .await;
    sink.expect(1);
    let got = sink.wait(DELIVERY).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "\"jane doe\"@example.net");
    assert_eq!(got[0].rcpt_to, rcpts);
    split_prefix(&got[0].data, &sent);
    spool_drained(&relay.spool()).await;
    assert_eq!(sink.violations(), Vec::<String>::new());
}

/// The upstream closes a pooled connection while postern keeps it idle (a 421 and close,
/// or just a close, after its own idle timer): the next message still goes on its first
/// attempt (retries are an hour away here), over a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_closed_while_idle_is_replaced() {
    for last_words in [Some("421 4.4.2 sink.test idle timeout".to_owned()), None] {
        let sink = Sink::start(SinkOptions::default()).await;
        sink.fault(Fault::HangUpAfterMessage(last_words.clone()), Some(1));
        let relay = Routed::start(&[("a", sink.port())], NO_RETRY).await;
        let mut d = relay.session().await;
        let first = message("first", "", "one\r\n");
        submit(
            &mut d,
            "MAIL FROM:<dev@example.net>",
            &["x@example.org"],
            &first,
        )
        .await;
        sink.expect(1);
        sink.wait(DELIVERY).await;
        // Once the spool is empty, the connection is back in the pool (it is returned
        // before the message is removed), and the sink has hung up on it.
        spool_drained(&relay.spool()).await;
        let second = message("second", "", "two\r\n");
        submit(
            &mut d,
            "MAIL FROM:<dev@example.net>",
            &["x@example.org"],
            &second,
        )
        .await;
        sink.expect(1);
        let got = sink.wait(DELIVERY).await;
        assert_eq!(got.len(), 1, "{last_words:?}");
        split_prefix(&got[0].data, &second);
        assert_eq!(got[0].conn, 2, "{last_words:?}");
        assert_eq!(sink.connections(), 2, "{last_words:?}");
        spool_drained(&relay.spool()).await;
        assert_eq!(sink.violations(), Vec::<String>::new());
    }
}

/// Idle pooled connections get a QUIT: periodically once past `idle_timeout`, and all of
/// them when postern shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_reaped_and_closed_at_shutdown() {
    // (idle_timeout, QUITs before shutdown; after it, the one connection had exactly one)
    for (idle_timeout, reaped) in [("1s", 1), ("10m", 0)] {
        let sink = Sink::start(SinkOptions::default()).await;
        let opts = RouteOpts {
            idle_timeout,
            ..NO_RETRY
        };
        let mut relay = Routed::start(&[("a", sink.port())], opts).await;
        let mut d = relay.session().await;
        let sent = message("idle", "", "then idle\r\n");
        submit(
            &mut d,
            "MAIL FROM:<dev@example.net>",
            &["x@example.org"],
            &sent,
        )
        .await;
        sink.expect(1);
        sink.wait(DELIVERY).await;
        spool_drained(&relay.spool()).await;
        if reaped > 0 {
            eventually("idle connection reaped", || sink.quits() == reaped).await;
        }
        assert_eq!(sink.quits(), reaped, "{idle_timeout}");
        d.cmd("QUIT", "221").await;
        relay.stop().await;
        // The drain said QUIT to whatever was still idle (and waited for the reply).
        assert_eq!(sink.quits(), 1, "{idle_timeout}");
        assert_eq!(sink.connections(), 1, "{idle_timeout}");
    }
}
