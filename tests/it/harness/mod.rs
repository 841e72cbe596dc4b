//! The test harness: postern started in-process on `127.0.0.1:0` (mini-redis
//! `start_server`), a real SMTP sink as its upstream, a throw-away CA, and clients.
//!
//! [`TestServer::start`] writes a YAML config into a fresh temporary directory (absolute
//! paths only), loads it through the same `config::load` path as the binary, and starts the
//! relay with three listeners:
//! - `submission`: STARTTLS, AUTH required (port 587 style);
//! - `submissions`: implicit TLS, AUTH required (port 465 style);
//! - `legacy`: plain text, no AUTH, only from 127.0.0.1/32 (the printer case).

pub mod admin;
pub mod ca;
pub mod client;
pub mod haproxy;
pub mod http;
pub mod logs;
pub mod redis;
pub mod sink;
pub mod token;
pub mod tools;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use postern::app::Running;
use postern::app::reload::{ReloadError, ReloadOutcome};
use tempfile::TempDir;

use self::ca::TestCa;
use self::client::Dialog;
use self::sink::{Extensions, Sink, SinkOAuth, SinkOptions, reserve_port};

/// The user every test server knows.
pub const USER: &str = "alice";
/// Her password.
pub const PASSWORD: &str = "alice-pw";
/// `\0alice\0alice-pw` in base64, for raw `AUTH PLAIN`.
pub const PLAIN_TOKEN: &str = "AGFsaWNlAGFsaWNlLXB3";
/// The credentials postern presents to an upstream that requires AUTH.
pub const UPSTREAM_CREDS: (&str, &str) = ("relay@example.com", "upstream-pw");
/// Bound for a message to cross postern into the sink (retries included: backoff is 1-2 s).
pub const DELIVERY: Duration = Duration::from_secs(20);

/// The argon2id hash of [`PASSWORD`], computed once per test process (~50 ms).
pub fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| postern::users::hash_password(PASSWORD).unwrap())
}

/// How postern reaches the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Plain SMTP, no AUTH (`tls: none`).
    Plain,
    /// STARTTLS required, AUTH required, verified against the test CA.
    StartTlsAuth,
    /// Implicit TLS, AUTH required, verified against the test CA.
    ImplicitAuth,
}

/// Test server options; `Opts::default()` is a plain upstream that is up.
#[derive(Debug, Clone)]
pub struct Opts {
    /// The upstream's TLS/AUTH mode.
    pub upstream: Upstream,
    /// Offer PIPELINING at the sink.
    pub sink_pipelining: bool,
    /// Leave the sink down (its port reserved but closed) until [`TestServer::sink_up`].
    pub sink_down: bool,
    /// YAML appended at the top level, e.g. `"smtp: {bare_line_endings: normalise}\n"`.
    pub extra: String,
    /// Extra keys for the `legacy` listener's flow mapping, e.g. `"max_connections: 1"`.
    pub legacy: String,
    /// The `legacy` listener's `allow_networks` (default `127.0.0.1/32`).
    pub legacy_allow: String,
    /// Extra keys for the `submission` listener's flow mapping.
    pub submission: String,
    /// Extra keys for the `submissions` (implicit TLS) listener's flow mapping.
    pub submissions: String,
    /// Extra keys for the top-level `tls` flow mapping, e.g. `"sni: [...]"`.
    pub tls: String,
    /// Extra keys for alice's `users` entry, e.g. `"max_recipients: 5"`.
    pub alice: String,
    /// More `users` entries, one YAML list item per line (see [`user_entry`]).
    pub users: String,
    /// Extra keys for the `sink` upstream's flow mapping, e.g. `"messages_per_minute: 2"`.
    pub upstream_keys: String,
    /// With [`Upstream::StartTlsAuth`]: the upstream's `auth` (and any further keys of its
    /// flow mapping) instead of the password, e.g. an `oauth2` section.
    pub upstream_auth: Option<String>,
    /// With [`Upstream::StartTlsAuth`]: the sink requires OAuth2 instead of a password.
    pub sink_oauth: Option<SinkOAuth>,
    /// The `queue` mapping's retry keys, replacing the quick default
    /// (`min_backoff: 1s, max_backoff: 2s, ambiguous_retry: 1s`), e.g. `"min_backoff: 1h,
    /// max_backoff: 1h"`.
    pub queue: String,
    /// Configure `http.admin_token_file` (holding [`admin::TOKEN`]): the admin API is on.
    pub admin_api: bool,
    /// The sink offers DSN (RFC 3461).
    pub sink_dsn: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            upstream: Upstream::Plain,
            sink_pipelining: true,
            sink_down: false,
            extra: String::new(),
            legacy: String::new(),
            legacy_allow: "127.0.0.1/32".to_owned(),
            submission: String::new(),
            submissions: String::new(),
            tls: String::new(),
            alice: String::new(),
            users: String::new(),
            upstream_keys: String::new(),
            upstream_auth: None,
            sink_oauth: None,
            queue: String::new(),
            admin_api: true,
            sink_dsn: false,
        }
    }
}

impl Opts {
    /// Default options plus `extra` YAML.
    pub fn with(extra: &str) -> Opts {
        Opts {
            extra: extra.to_owned(),
            ..Opts::default()
        }
    }
}

/// A running postern with its sink, CA and directory.
pub struct TestServer {
    /// Holds the config, certificates and spool; removed on drop.
    pub dir: TempDir,
    /// The CA that signed postern's and the sink's certificate.
    pub ca: TestCa,
    /// The config file.
    pub config: PathBuf,
    /// The upstream's port (reserved even while the sink is down).
    pub sink_port: u16,
    /// STARTTLS + AUTH required.
    pub submission: SocketAddr,
    /// Implicit TLS + AUTH required.
    pub submissions: SocketAddr,
    /// Plain, no AUTH, 127.0.0.1 only.
    pub legacy: SocketAddr,
    /// The HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub http: SocketAddr,
    /// postern's clock: tests move policy time on with `clock.advance` (rate limits,
    /// lockouts) instead of waiting.
    pub clock: postern::clock::Clock,
    sink: Option<Sink>,
    sink_opts: SinkOptions,
    sink_ext: Extensions,
    running: Option<Running>,
}

impl Drop for TestServer {
    /// Every test that ran a server checks that nothing it logged carried a secret.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            logs::assert_no_secrets();
        }
    }
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("config", &self.config)
            .finish()
    }
}

impl TestServer {
    /// Writes the config, starts the sink (unless `sink_down`) and postern.
    pub async fn start(opts: Opts) -> TestServer {
        logs::capture();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let sink_opts = sink_options(&ca, &opts);
        let sink_ext = Extensions {
            dsn: opts.sink_dsn,
            ..Extensions::default()
        };
        let (sink, sink_port) = if opts.sink_down {
            (None, reserve_port())
        } else {
            let sink = Sink::start_with(0, sink_opts.clone(), sink_ext).await;
            let port = sink.port();
            (Some(sink), port)
        };
        let config = dir.path().join("postern.yaml");
        std::fs::write(
            dir.path().join("admin.token"),
            format!("{}\n", admin::TOKEN),
        )
        .unwrap();
        std::fs::write(&config, config_yaml(dir.path(), &ca, sink_port, &opts)).unwrap();
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = TestServer {
            dir,
            ca,
            config,
            sink_port,
            submission: unbound,
            submissions: unbound,
            legacy: unbound,
            http: unbound,
            clock: postern::clock::Clock::new(),
            sink,
            sink_opts,
            sink_ext,
            running: None,
        };
        server.restart().await;
        server
    }

    /// Starts postern (again) from the same config file and spool; listeners get new ports.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "postern is already running");
        let yaml = std::fs::read_to_string(&self.config).unwrap();
        let cfg = postern::config::load::load_str(&yaml, &self.config).unwrap();
        let start = postern::app::start_file(&self.config, cfg, self.clock.clone());
        let running = client::step("postern start", start).await.unwrap();
        self.submission = running.addr("submission").unwrap();
        self.submissions = running.addr("submissions").unwrap();
        self.legacy = running.addr("legacy").unwrap();
        self.http = running.http_addr().unwrap();
        self.running = Some(running);
    }

    /// Scrapes until `done` holds, or [`DELIVERY`] has passed (then returns the last scrape,
    /// for the caller's assertions to report), for what happens after a reply: delivery,
    /// the end of a session.
    pub async fn scrape_until(&self, done: impl Fn(&http::Scrape) -> bool) -> http::Scrape {
        let deadline = tokio::time::Instant::now() + DELIVERY;
        loop {
            let scrape = self.scrape().await;
            if done(&scrape) || tokio::time::Instant::now() > deadline {
                return scrape;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Re-reads the config file, as SIGHUP does.
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let running = self.running.as_ref().expect("postern is not running");
        client::step("postern reload", running.reload()).await
    }

    /// The running relay.
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("postern is not running")
    }

    /// Rewrites the config file with `edit` applied to its text (for a reload).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let yaml = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(yaml)).unwrap();
    }

    /// Graceful shutdown (sessions are closed; the spool keeps what is undelivered).
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            client::step("postern shutdown", running.shutdown()).await;
        }
    }

    /// Scrapes `/metrics`.
    pub async fn scrape(&self) -> http::Scrape {
        http::Scrape::from(self.http).await
    }

    /// The sink; panics while it is down.
    pub fn sink(&self) -> &Sink {
        self.sink.as_ref().expect("the sink is down")
    }

    /// Brings the sink up on its reserved port.
    pub async fn sink_up(&mut self) {
        assert!(self.sink.is_none(), "the sink is already up");
        let sink = Sink::start_with(self.sink_port, self.sink_opts.clone(), self.sink_ext).await;
        self.sink = Some(sink);
    }

    /// The spool directory.
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// A plain session on the legacy listener, after EHLO.
    pub async fn legacy_session(&self) -> Dialog {
        let mut d = Dialog::connect(self.legacy).await;
        d.ehlo("client.test").await;
        d
    }

    /// A session on the submission listener from `from` (`None`: 127.0.0.1) after EHLO,
    /// STARTTLS and EHLO again, not authenticated.
    pub async fn starttls_session_from(&self, from: Option<IpAddr>) -> Dialog {
        let mut d = match from {
            Some(ip) => {
                let mut d = Dialog::connect_from(ip, self.submission).await;
                d.expect("220 ").await;
                d
            }
            None => Dialog::connect(self.submission).await,
        };
        d.ehlo("client.test").await;
        d.starttls(&self.ca).await;
        d.ehlo("client.test").await;
        d
    }

    /// A session on the submission listener after STARTTLS and EHLO, before AUTH.
    pub async fn submission_session_unauthenticated(&self) -> Dialog {
        let mut d = Dialog::connect(self.submission).await;
        d.ehlo("client.test").await;
        d.starttls(&self.ca).await;
        d.ehlo("client.test").await;
        d
    }

    /// A session on the submission listener after STARTTLS, EHLO and AUTH PLAIN as alice.
    pub async fn submission_session(&self) -> Dialog {
        let mut d = Dialog::connect(self.submission).await;
        d.ehlo("client.test").await;
        d.starttls(&self.ca).await;
        d.ehlo("client.test").await;
        d.cmd(&format!("AUTH PLAIN {PLAIN_TOKEN}"), "235 2.7.0")
            .await;
        d
    }
}

fn sink_options(ca: &TestCa, opts: &Opts) -> SinkOptions {
    let secure = opts.upstream != Upstream::Plain;
    SinkOptions {
        pipelining: opts.sink_pipelining,
        starttls: secure.then(|| ca.server_config()),
        implicit_tls: opts.upstream == Upstream::ImplicitAuth,
        require_tls: secure,
        auth: (secure && opts.sink_oauth.is_none())
            .then(|| (UPSTREAM_CREDS.0.to_owned(), UPSTREAM_CREDS.1.to_owned())),
        oauth: opts.sink_oauth.clone().filter(|_| secure),
    }
}

fn config_yaml(dir: &Path, ca: &TestCa, sink_port: u16, opts: &Opts) -> String {
    let d = dir.display();
    let upstream_security = match opts.upstream {
        Upstream::Plain => "tls: none".to_owned(),
        Upstream::StartTlsAuth | Upstream::ImplicitAuth => {
            let mode = if opts.upstream == Upstream::StartTlsAuth {
                "starttls"
            } else {
                "implicit"
            };
            let auth = opts.upstream_auth.clone().unwrap_or_else(|| {
                format!(
                    "auth: {{username: \"{}\", password: \"{}\"}}",
                    UPSTREAM_CREDS.0, UPSTREAM_CREDS.1
                )
            });
            format!(
                "tls: {mode}, ca_file: {}, server_name: localhost, {auth}",
                ca.ca_file.display(),
            )
        }
    };
    format!(
        r#"hostname: relay.test
listeners:
  - {{name: submission, address: "127.0.0.1:0", tls: starttls, auth: required{submission}}}
  - {{name: submissions, address: "127.0.0.1:0", tls: implicit, auth: required{submissions}}}
  - {{name: legacy, address: "127.0.0.1:0", tls: none, auth: none, allow_networks: [{legacy_allow}]{legacy}}}
tls: {{certificate: {cert}, private_key: {key}{tls}}}
users:
  - {{username: {USER}, password_hash: "{hash}", senders: ["{USER}@example.com", "@alice.example"]{alice}}}
{users}queue: {{directory: {d}/spool, {queue}}}
upstreams:
  - {{name: sink, address: "127.0.0.1:{sink_port}", connect_timeout: 2s, {upstream_security}{upstream_keys}}}
log: {{level: warn}}
http: {{address: "127.0.0.1:0"{token}}}
{extra}"#,
        queue = if opts.queue.is_empty() {
            "min_backoff: 1s, max_backoff: 2s, ambiguous_retry: 1s"
        } else {
            &opts.queue
        },
        token = if opts.admin_api {
            format!(", admin_token_file: {d}/admin.token")
        } else {
            String::new()
        },
        cert = ca.cert_file.display(),
        key = ca.key_file.display(),
        hash = password_hash(),
        extra = opts.extra,
        submission = more_keys(&opts.submission),
        tls = more_keys(&opts.tls),
        legacy = more_keys(&opts.legacy),
        legacy_allow = opts.legacy_allow,
        submissions = more_keys(&opts.submissions),
        alice = more_keys(&opts.alice),
        users = opts.users,
        upstream_keys = more_keys(&opts.upstream_keys),
    )
}

/// `", keys"` to extend a flow mapping, or nothing.
fn more_keys(keys: &str) -> String {
    if keys.is_empty() {
        String::new()
    } else {
        format!(", {keys}")
    }
}

/// A `users` list item for [`Opts::users`]: `username` with alice's password ([`PASSWORD`]),
/// sending as `username@example.com`, plus `keys` (flow-mapping keys, may be empty).
pub fn user_entry(username: &str, keys: &str) -> String {
    format!(
        "  - {{username: {username}, password_hash: \"{hash}\", senders: [\"{username}@example.com\"]{more}}}\n",
        hash = password_hash(),
        more = more_keys(keys),
    )
}

/// A message with a unique `X-Test` header and the given headers and body lines.
pub fn message(tag: &str, headers: &str, body: &str) -> Vec<u8> {
    format!("X-Test: {tag}\r\n{headers}Subject: test {tag}\r\n\r\n{body}").into_bytes()
}

/// Asserts that `text` has a line starting with each of `wants`, in that order (other
/// lines may come between).
pub fn assert_lines_in_order(text: &str, wants: &[&str]) {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0;
    for want in wants {
        match lines[at..].iter().position(|l| l.starts_with(want)) {
            Some(i) => at += i + 1,
            None => panic!("{want:?} missing (in order) from:\n{text}"),
        }
    }
}

/// Waits (at most [`DELIVERY`]) until `done` holds, checking every 20 ms; panics naming
/// `what` when it does not.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DELIVERY;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {DELIVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for a check that has to wait on I/O itself.
pub async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + DELIVERY;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {DELIVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one whole transaction on `d` (already greeted and, if needed, authenticated):
/// MAIL, each RCPT, DATA, `data` + `.\r\n`; returns the final reply after asserting `250`.
/// `data` must end in CRLF and must not be dot-stuffed yet.
pub async fn send_mail(d: &mut Dialog, from: &str, to: &[&str], data: &[u8]) -> client::Reply {
    d.cmd(&format!("MAIL FROM:<{from}>"), "250 2.1.0").await;
    for rcpt in to {
        d.cmd(&format!("RCPT TO:<{rcpt}>"), "250 2.1.5").await;
    }
    d.cmd("DATA", "354").await;
    d.send([dot_stuff(data), b".\r\n".to_vec()].concat()).await;
    d.expect("250 2.0.0").await
}

/// The queue id in postern's `250 2.0.0 Ok: queued as ID` reply line.
pub fn queue_id(reply: &str) -> String {
    match reply.rsplit_once("queued as ") {
        Some((_, id)) => id.trim().to_owned(),
        None => panic!("not a queued reply: {reply:?}"),
    }
}

/// RFC 5321 4.5.2: a leading dot on a line is doubled.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// What reached the sink, one row per message: (`X-Test` tag, envelope sender, recipients).
pub type Delivered = Vec<(String, String, Vec<String>)>;

/// Waits until `n` messages reached `sink` and returns them as rows sorted by tag, after
/// checking that each carries intact the bytes the client sent for its tag, `sent(tag)`
/// (messages built by [`message`]).
pub async fn delivered(sink: &Sink, n: usize, sent: impl Fn(&str) -> Vec<u8>) -> Delivered {
    let got = sink.wait_for(DELIVERY, |m| m.len() >= n).await;
    assert_eq!(got.len(), n, "{}", sink.debug_dump());
    let mut rows: Delivered = got
        .iter()
        .map(|m| {
            let text = m.text();
            let tag = text.split("\r\n").find_map(|l| l.strip_prefix("X-Test: "));
            let tag = tag.expect("no X-Test header").to_owned();
            split_prefix(&m.data, &sent(&tag));
            (tag, m.mail_from.clone(), m.rcpt_to.clone())
        })
        .collect();
    rows.sort();
    rows
}

/// Expected [`delivered`] rows, sorted by tag.
pub fn rows(items: &[(&str, &str, &[&str])]) -> Delivered {
    let mut rows: Delivered = items
        .iter()
        .map(|(tag, from, to)| {
            let to = to.iter().map(|s| (*s).to_owned()).collect();
            ((*tag).to_owned(), (*from).to_owned(), to)
        })
        .collect();
    rows.sort();
    rows
}

/// Splits what the sink got into postern's prefix (the header fields it added) and the
/// client's bytes, which must be exactly `sent`.
pub fn split_prefix<'a>(got: &'a [u8], sent: &[u8]) -> &'a str {
    assert!(
        got.ends_with(sent),
        "the client's bytes did not arrive intact:\n got: {:?}\nsent: {:?}",
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(sent)
    );
    std::str::from_utf8(&got[..got.len() - sent.len()]).unwrap()
}

/// The names of the header fields in a prefix (continuation lines skipped).
pub fn field_names(prefix: &str) -> Vec<String> {
    assert!(
        prefix.is_empty() || prefix.ends_with("\r\n"),
        "prefix not CRLF-terminated: {prefix:?}"
    );
    prefix
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t']))
        .map(|l| l.split_once(':').map_or(l, |(name, _)| name).to_owned())
        .collect()
}

/// Asserts `line` is exactly `head` + `N s` with `0 < N <= max_secs`, and returns `N`: the
/// "try again in" of the rate-limit and lockout refusals, which depends on how long the test
/// took to get there (rounded up to whole seconds, so never 0).
pub fn retry_in(line: &str, head: &str, max_secs: u64) -> u64 {
    let secs = line
        .strip_prefix(head)
        .and_then(|rest| rest.strip_suffix(" s"))
        .and_then(|n| n.parse::<u64>().ok());
    let Some(secs) = secs else {
        panic!("expected {head:?} + \"N s\", got {line:?}")
    };
    assert!(
        (1..=max_secs).contains(&secs),
        "retry time out of (0, {max_secs}] s: {line:?}"
    );
    secs
}
