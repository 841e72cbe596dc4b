//! Live reload: a reload (what SIGHUP does) swaps the rules for new sessions and the next
//! delivery attempts, while open sessions finish under the rules they started with; a
//! broken file changes nothing; renewed certificate files are picked up without a signal;
//! settings bound at start are reported as needing a restart.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::binary::{Postern, wait_listening};
use crate::harness::ca::{Leaf, TestCa};
use crate::harness::client::{Dialog, STEP};
use crate::harness::sink::{Sink, SinkOptions, reserve_port};
use crate::harness::{
    DELIVERY, Opts, PLAIN_TOKEN, TestServer, USER, message, password_hash, send_mail,
};

/// The password a reload gives alice.
const NEW_PASSWORD: &str = "alice-new-pw";
/// `\0alice\0alice-new-pw` in base64.
const NEW_TOKEN: &str = "AGFsaWNlAGFsaWNlLW5ldy1wdw==";

/// A session on `server`'s submission listener after STARTTLS and EHLO; returns it with the
/// certificate the server presented.
async fn starttls_session(server: &TestServer) -> (Dialog, Vec<u8>) {
    let mut d = Dialog::connect(server.submission).await;
    d.ehlo("client.test").await;
    d.starttls(&server.ca).await;
    d.ehlo("client.test").await;
    let cert = d.peer_certificate().unwrap();
    (d, cert)
}

/// The certificate a new implicit-TLS handshake on `server` gets.
async fn presented(server: &TestServer) -> Vec<u8> {
    let d = Dialog::connect_tls(server.submissions, &server.ca).await;
    d.peer_certificate().unwrap()
}

/// Writes `leaf` over the server's certificate and key files.
fn install(ca: &TestCa, leaf: &Leaf) {
    std::fs::write(&ca.cert_file, &leaf.cert_pem).unwrap();
    std::fs::write(&ca.key_file, &leaf.key_pem).unwrap();
}

/// Waits (bounded) until a file in `dir` contains `needle`; returns its text.
async fn wait_for_file(dir: &Path, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + DELIVERY;
    loop {
        for entry in std::fs::read_dir(dir).into_iter().flatten() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle:?} did not arrive in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The config edits of the main reload test: alice's new password, the legacy listener's
/// allowlist moved to 127.0.0.2, and a directory upstream that now takes every sender but
/// `@alice.example`.
fn changed_config(yaml: String, outbox: &Path) -> String {
    let new_hash = postern::users::hash_password(NEW_PASSWORD).unwrap();
    let edited = yaml
        .replace(password_hash(), &new_hash)
        .replace(
            "allow_networks: [127.0.0.1/32]",
            "allow_networks: [127.0.0.2/32]",
        )
        .replace(
            "upstreams:\n",
            &format!(
                "upstreams:\n  - {{name: files, directory: {}}}\n",
                outbox.display()
            ),
        );
    assert_ne!(edited, yaml);
    format!(
        "{edited}routes:\n  - {{senders: [\"@alice.example\"], upstreams: [sink]}}\n  \
         - {{senders: [\"*\"], upstreams: [files]}}\n"
    )
}

/// One reload changes a password, an allowlist, a route and the certificate while sessions
/// are open. The open sessions keep the rules they started with (the old password's session
/// and the allowlisted printer still send); new sessions get the new ones (old password
/// `535`, new one `235`, 127.0.0.1 refused and 127.0.0.2 admitted, the new certificate in the
/// handshake); the next deliveries follow the new route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_to_new_sessions_and_open_ones_keep_their_rules() {
    let server = TestServer::start(Opts::default()).await;
    let outbox = server.dir.path().join("outbox");
    let (mut old_auth, old_cert) = starttls_session(&server).await;
    assert_eq!(old_cert, server.ca.leaf_der.to_vec());
    old_auth
        .cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "235 2.7.0")
        .await;
    let mut printer = server.legacy_session().await;

    let renewed = server.ca.renew();
    install(&server.ca, &renewed);
    server.edit_config(|yaml| changed_config(yaml, &outbox));
    let outcome = server.reload().await.unwrap();
    assert_eq!(
        (outcome.users_changed, outcome.auth_cache_cleared),
        (1, true)
    );
    assert_eq!(
        outcome.changed,
        ["listeners", "routes", "upstreams", "users"]
    );
    assert_eq!(
        outcome.upstreams_kept,
        ["sink"],
        "the sink's pool stays warm"
    );
    assert!(outcome.needs_restart.is_empty(), "{outcome}");

    // Open sessions: alice (old password) and the printer (old allowlist) still send.
    let tagged = message("open-auth", "", "sent after the reload\r\n");
    send_mail(
        &mut old_auth,
        "bob@alice.example",
        &["x@example.org"],
        &tagged,
    )
    .await;
    let printed = message("open-printer", "", "printed after the reload\r\n");
    send_mail(
        &mut printer,
        "scanner@example.net",
        &["x@example.org"],
        &printed,
    )
    .await;
    old_auth.cmd("QUIT", "221").await;
    printer.cmd("QUIT", "221").await;

    // New sessions: the new certificate, the new password only.
    let (mut d, cert) = starttls_session(&server).await;
    assert_eq!(
        cert,
        renewed.der.to_vec(),
        "new handshakes get the new certificate"
    );
    d.cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "535 5.7.8")
        .await;
    d.cmd(&format!("AUTH PLAIN {NEW_TOKEN}"), "235 2.7.0").await;
    let routed = message("new-route", "", "to the directory upstream\r\n");
    send_mail(
        &mut d,
        &format!("{USER}@example.com"),
        &["y@example.org"],
        &routed,
    )
    .await;
    assert_eq!(presented(&server).await, renewed.der.to_vec());

    // The allowlist: 127.0.0.1 is now refused, 127.0.0.2 admitted.
    let mut refused = Dialog::connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), server.legacy).await;
    refused.expect("554 5.7.1").await;
    let mut admitted =
        Dialog::connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), server.legacy).await;
    admitted.expect("220 ").await;

    // Routes: @alice.example still goes to the sink, everything else to the directory,
    // including the printer's message, accepted before the reload but delivered after it.
    let got = server
        .sink()
        .wait_for(DELIVERY, |all| {
            all.iter().any(|m| m.text().contains("X-Test: open-auth"))
        })
        .await;
    assert!(got.iter().all(|m| !m.text().contains("X-Test: new-route")));
    wait_for_file(&outbox, "X-Test: new-route").await;
    wait_for_file(&outbox, "X-Test: open-printer").await;
}

/// A broken file on reload changes nothing: the error names the file, the key and the
/// problem, and new sessions are served by the running rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_keeps_the_running_one() {
    let server = TestServer::start(Opts::default()).await;
    let rows = [
        (
            "limits: {max_recipients: lots}\n",
            "limits.max_recipients: invalid type: string \"lots\", expected a whole number",
        ),
        ("listeners: [}\n", "(syntax):"),
    ];
    for (broken, want) in rows {
        server.edit_config(|yaml| {
            let new_hash = postern::users::hash_password(NEW_PASSWORD).unwrap();
            format!("{}{broken}", yaml.replace(password_hash(), &new_hash))
        });
        let err = server.reload().await.unwrap_err().to_string();
        let file = server.config.display().to_string();
        assert!(err.starts_with(&file) && err.contains(want), "{err}");
        let (mut d, _) = starttls_session(&server).await;
        d.cmd(&format!("AUTH PLAIN {NEW_TOKEN}"), "535 5.7.8").await;
        d.cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "235 2.7.0")
            .await;
        let body = message("after-broken", "", "still relaying\r\n");
        send_mail(&mut d, "alice@example.com", &["x@example.org"], &body).await;
        server.edit_config(|yaml| yaml.replace(broken, ""));
    }
    // A valid pair of files is not enough: a certificate whose key does not match is refused.
    let renewed = server.ca.renew();
    std::fs::write(&server.ca.cert_file, &renewed.cert_pem).unwrap();
    let err = server.reload().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            ": tls.private_key: {:?} is not the private key of the certificate in {:?}",
            server.ca.key_file, server.ca.cert_file
        )),
        "{err}"
    );
    assert_eq!(presented(&server).await, server.ca.leaf_der.to_vec());
}

/// Listener addresses, connection caps and the like were bound at start: a reload names
/// them as needing a restart, keeps them, and applies the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_changes_are_reported_and_the_rest_applies() {
    let server = TestServer::start(Opts::default()).await;
    server.edit_config(|yaml| {
        let moved = yaml.replacen("127.0.0.1:0", "127.0.0.1:1", 1);
        format!("{moved}limits: {{max_connections: 5, max_recipients: 1}}\n")
    });
    let outcome = server.reload().await.unwrap();
    assert_eq!(
        outcome.needs_restart,
        ["listeners[submission].address", "limits.max_connections"]
    );
    // The submission listener still serves where it was bound; the recipient cap applies.
    let mut d = server.submission_session().await;
    d.cmd("MAIL FROM:<alice@example.com>", "250").await;
    d.cmd("RCPT TO:<a@example.org>", "250").await;
    d.cmd("RCPT TO:<b@example.org>", "452 4.5.3").await;
}

/// Renewed certificate files are used for new handshakes without a reload: the watcher
/// checks them every `tls.check_interval`. The renewal writes the files by rename, the way
/// cert-manager does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_files_are_picked_up_without_a_signal() {
    let server = TestServer::start(Opts::default()).await;
    server.edit_config(|yaml| {
        yaml.replace(
            "tls: {certificate",
            "tls: {check_interval: 100ms, certificate",
        )
    });
    server.reload().await.unwrap();
    let renewed = server.ca.renew();
    for (file, pem) in [
        (&server.ca.key_file, &renewed.key_pem),
        (&server.ca.cert_file, &renewed.cert_pem),
    ] {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, file).unwrap();
    }
    let deadline = tokio::time::Instant::now() + STEP;
    while presented(&server).await != renewed.der.to_vec() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A renewal caught half done (the certificate written, its key not yet) is not swapped in:
/// handshakes keep the running pair until the key follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_renewed_certificate_is_not_swapped_in() {
    let server = TestServer::start(Opts::default()).await;
    // Checks off, so that only the test's explicit checks run.
    server.edit_config(|yaml| {
        yaml.replace("tls: {certificate", "tls: {check_interval: 0s, certificate")
    });
    server.reload().await.unwrap();
    let renewed = server.ca.renew();
    std::fs::write(&server.ca.cert_file, &renewed.cert_pem).unwrap();
    assert!(!server.running().check_certificate().await);
    assert!(
        !server.running().check_certificate().await,
        "retried, still refused"
    );
    assert_eq!(presented(&server).await, server.ca.leaf_der.to_vec());
    std::fs::write(&server.ca.key_file, &renewed.key_pem).unwrap();
    assert!(server.running().check_certificate().await);
    assert_eq!(presented(&server).await, renewed.der.to_vec());
    assert!(
        !server.running().check_certificate().await,
        "nothing changed since"
    );
}

/// A submission-only config for the binary: STARTTLS + AUTH on `port`, alice with `hash`,
/// relaying to the sink; logs at info so the reload lines show.
fn submission_config(dir: &Path, ca: &TestCa, port: u16, sink: u16, hash: &str) -> String {
    format!(
        r#"hostname: relay.test
listeners:
  - {{name: submission, address: "127.0.0.1:{port}", tls: starttls, auth: required}}
tls: {{certificate: {cert}, private_key: {key}}}
users:
  - {{username: {USER}, password_hash: "{hash}", senders: ["{USER}@example.com"]}}
queue: {{directory: {d}/spool, min_backoff: 1s, max_backoff: 2s}}
upstreams:
  - {{name: sink, address: "127.0.0.1:{sink}", tls: none, connect_timeout: 2s}}
log: {{level: info}}
"#,
        cert = ca.cert_file.display(),
        key = ca.key_file.display(),
        d = dir.display(),
    )
}

/// Waits (bounded) until the log has `needle` at least `count` times; returns the log.
async fn wait_for_log(log: &Path, needle: &str, count: usize) -> String {
    for _ in 0..250 {
        let text = std::fs::read_to_string(log).unwrap();
        if text.matches(needle).count() >= count {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{needle:?} not logged {count} times:\n{}",
        std::fs::read_to_string(log).unwrap()
    );
}

/// AUTH PLAIN with `token` on a new STARTTLS session at `port`; expects `reply`.
async fn try_auth(port: u16, ca: &TestCa, token: &str, reply: &str) {
    let mut d = Dialog::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
    d.ehlo("client.test").await;
    d.starttls(ca).await;
    d.ehlo("client.test").await;
    d.cmd(&format!("AUTH PLAIN {token}"), reply).await;
}

/// The binary: SIGHUP with a changed password takes effect; SIGHUP with a broken file is
/// logged with file, key and problem, and the relay keeps serving the last good config;
/// SIGTERM still drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_and_survives_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let sink = Sink::start(SinkOptions::default()).await;
    let port = reserve_port();
    let config: PathBuf = dir.path().join("postern.yaml");
    let write = |hash: &str, extra: &str| {
        let yaml = submission_config(dir.path(), &ca, port, sink.port(), hash);
        std::fs::write(&config, format!("{yaml}{extra}")).unwrap();
    };
    write(password_hash(), "");
    let log = dir.path().join("postern.log");
    let mut postern = Postern::run(&config, &log);
    wait_listening(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        &mut postern,
    )
    .await;
    try_auth(port, &ca, PLAIN_TOKEN, "235 2.7.0").await;

    let new_hash = postern::users::hash_password(NEW_PASSWORD).unwrap();
    write(&new_hash, "");
    postern.signal(rustix::process::Signal::HUP);
    wait_for_log(&log, "configuration reloaded", 1).await;
    try_auth(port, &ca, PLAIN_TOKEN, "535 5.7.8").await;
    try_auth(port, &ca, NEW_TOKEN, "235 2.7.0").await;

    write(password_hash(), "limits: {max_recipients: lots}\n");
    postern.signal(rustix::process::Signal::HUP);
    let text = wait_for_log(&log, "configuration reload failed", 1).await;
    let line = text
        .lines()
        .find(|l| l.contains("configuration reload failed"))
        .unwrap();
    assert!(
        line.contains(&config.display().to_string())
            && line.contains("limits.max_recipients")
            && line.contains("expected a whole number"),
        "{line}"
    );
    assert!(postern.exited().is_none(), "SIGHUP ended postern");
    try_auth(port, &ca, NEW_TOKEN, "235 2.7.0").await;
    try_auth(port, &ca, PLAIN_TOKEN, "535 5.7.8").await;

    postern.sigterm();
    assert!(postern.wait_exit(Duration::from_secs(10)).await.success());
}

/// A reload that changes a rate rule while a session is open: the open session keeps the
/// rule it started with (its snapshot), new sessions count against the new one; a rule the
/// reload leaves unchanged keeps its counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_a_rate_rule_for_new_sessions_only() {
    let server = TestServer::start(Opts::with(
        "rate_limits:\n  - {name: loose, per: ip, messages: 4, interval: 1h, listeners: [legacy]}\n  \
         - {name: kept, per: listener, messages: 5, interval: 1h, listeners: [submission]}\n",
    ))
    .await;
    let mut open = server.legacy_session().await;
    let data = message("before", "", "body\r\n");
    send_mail(&mut open, "dev@example.net", &["x@example.org"], &data).await;
    let mut sub = server.submission_session().await;
    for tag in ["k1", "k2", "k3"] {
        let data = message(tag, "", "body\r\n");
        send_mail(&mut sub, "alice@example.com", &["x@example.org"], &data).await;
    }
    server.edit_config(|yaml| {
        yaml.replace(
            "{name: loose, per: ip, messages: 4",
            "{name: tight, per: ip, messages: 1",
        )
    });
    let outcome = server.reload().await.unwrap();
    assert!(outcome.to_string().contains("rate_limits"), "{outcome}");
    // The open session still counts against `loose` only.
    for tag in ["open-1", "open-2", "open-3"] {
        let data = message(tag, "", "body\r\n");
        send_mail(&mut open, "dev@example.net", &["x@example.org"], &data).await;
    }
    // ... and is held to it: its fifth message is over `loose` (not over `tight`, whose
    // bucket it never touched).
    open.cmd(
        "MAIL FROM:<dev@example.net>",
        "450 4.7.1 Error: rate limit loose exceeded",
    )
    .await;
    // A new session: one message under `tight`, then 450 naming it.
    let mut new = server.legacy_session().await;
    let data = message("new-1", "", "body\r\n");
    send_mail(&mut new, "dev@example.net", &["x@example.org"], &data).await;
    let refused = new.cmd("MAIL FROM:<dev@example.net>", "450 4.7.1").await;
    assert!(
        refused
            .first()
            .starts_with("450 4.7.1 Error: rate limit tight exceeded, try again in "),
        "{:?}",
        refused.lines
    );
    // `kept` did not change: its three counted messages stay counted (5 allowed in all).
    let mut sub = server.submission_session().await;
    for tag in ["k4", "k5"] {
        let data = message(tag, "", "body\r\n");
        send_mail(&mut sub, "alice@example.com", &["x@example.org"], &data).await;
    }
    sub.cmd(
        "MAIL FROM:<alice@example.com>",
        "450 4.7.1 Error: rate limit kept exceeded",
    )
    .await;
    let got = server.sink().wait_for(DELIVERY, |m| m.len() == 10).await;
    assert_eq!(got.len(), 10);
}

/// Revocation does not wait for a reconnect: after a reload changes alice's password, a
/// session opened before it (and not yet authenticated) is refused the old password and
/// accepted with the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_password_applies_to_auth_in_open_sessions() {
    let server = TestServer::start(Opts::default()).await;
    let (mut open, _) = starttls_session(&server).await;
    let new_hash = postern::users::hash_password(NEW_PASSWORD).unwrap();
    server.edit_config(|yaml| yaml.replace(password_hash(), &new_hash));
    server.reload().await.unwrap();
    open.cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "535 5.7.8")
        .await;
    open.cmd(&format!("AUTH PLAIN {NEW_TOKEN}"), "235 2.7.0")
        .await;
}

/// A queued message whose route a reload removes is kept and retried, not failed: once a
/// later reload puts the route back (and the upstream is up), it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_removed_by_reload_does_not_fail_queued_mail() {
    let routes = "routes:\n  - {senders: [\"@example.net\"], upstreams: [sink]}\n";
    let mut server = TestServer::start(Opts {
        sink_down: true,
        extra: routes.into(),
        ..Opts::default()
    })
    .await;
    let mut d = server.legacy_session().await;
    let data = message("kept", "", "body\r\n");
    send_mail(&mut d, "dev@example.net", &["x@example.org"], &data).await;
    server.edit_config(|yaml| yaml.replace("[\"@example.net\"]", "[\"@other.example\"]"));
    server.reload().await.unwrap();
    // Retries run every 1-2 s here: give the runner a few attempts under the new routes.
    for _ in 0..3 {
        server.clock.advance(Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let failed = server.spool().join("failed");
        let n = std::fs::read_dir(&failed).map_or(0, |d| d.count());
        assert_eq!(n, 0, "the message was failed for want of a route");
    }
    server.edit_config(|yaml| yaml.replace("[\"@other.example\"]", "[\"@example.net\"]"));
    server.reload().await.unwrap();
    server.sink_up().await;
    let got = server.sink().wait_for(DELIVERY, |m| !m.is_empty()).await;
    assert_eq!(got[0].mail_from, "dev@example.net");
}

/// An account a reload adds cannot be used in a session opened before the reload (the
/// session's rules have no sender patterns for it): `421 4.7.0` asks the client to
/// reconnect, and a new session sends as it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_added_by_reload_needs_a_new_session() {
    let server = TestServer::start(Opts::default()).await;
    let (mut open, _) = starttls_session(&server).await;
    server.edit_config(|yaml| {
        let bob = crate::harness::user_entry("bob", "");
        yaml.replacen("queue:", &format!("{bob}queue:"), 1)
    });
    let yaml = std::fs::read_to_string(&server.config).unwrap();
    assert!(yaml.contains("username: bob"), "{yaml}");
    server.reload().await.unwrap();
    // `\0bob\0alice-pw`
    let bob = "AGJvYgBhbGljZS1wdw==";
    open.cmd(
        &format!("AUTH PLAIN {bob}"),
        "421 4.7.0 relay.test Error: account added since this session began, reconnect",
    )
    .await;
    open.expect_clean_close().await;
    let (mut new, _) = starttls_session(&server).await;
    new.cmd(&format!("AUTH PLAIN {bob}"), "235 2.7.0").await;
    let data = message("bob", "", "body\r\n");
    send_mail(&mut new, "bob@example.com", &["x@example.org"], &data).await;
}
