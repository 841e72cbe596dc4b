//! The dialog scripts of `tests/dialogs/*.dialog`, played against a real listener over TCP
//! (STYLE.md: the same files drive the sans-I/O engine in `src/smtp/dialog_tests.rs` and a
//! real server). The format is documented there; this runner gives each directive its
//! real-server meaning:
//!
//! - `@ k=v ...` header: one postern with hostname `mx.test` and a single listener built from
//!   it (`tls`, `auth`; `max_size`, `max_recipients`, `max_errors`, `bare` become `limits:` and
//!   `smtp:`), the defaults of the in-process runner otherwise, user `app1` / `secret` allowed
//!   to send as `app1@corp.example`, `allow_networks: [127.0.0.1/32]` on `auth: none`, and a
//!   real sink as upstream. `tls=implicit` connects with TLS; `tls_active=yes` on a STARTTLS
//!   listener does EHLO + STARTTLS + handshake after the greeting, before the script goes on.
//! - `C:` / `R:` lines up to the next other directive are one `write`, as one packet.
//! - `S: prefix` matches the next reply line. The in-process runner's queue ids are
//!   placeholders, so `queued as X` matches `queued as <any id>`; the real id is kept.
//! - `E: close` needs EOF (nothing more sent); `E: open` needs `NOOP` to get `250 2.0.0`;
//!   `E: starttls` does the TLS handshake with the test CA (after the `220`, nothing may
//!   have arrived in plain text); `E: body <raw>` and `E: rcpts <n>` wait for the last queued
//!   message at the sink and compare the client's bytes (postern's prefix must be only
//!   Received/Date/Message-ID) and the recipient count. `E: identity`, `E: noidentity` and
//!   `E: discard` name engine state a client cannot see; the replies already pin them down,
//!   and the end-of-file check below covers `discard`.
//! - At the end: no reply may be left unmatched (a `QUIT` must be answered next by `221`
//!   unless the server closed), and the sink must hold exactly one message per `queued as`
//!   reply, each with the id that reply gave.
//!
//! Skip rule, checked per file and printed: a file is skipped when it has `D:` lines (verdicts
//! a real server only reaches through its real policy, spool and lockout state) or when its
//! header asks for a config the validator refuses (`max_size` under 1 KiB). The runner asserts
//! that at least [`MIN_RUN`] files ran, so it can never silently run none.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

#[path = "../dialogs/unescape.rs"]
mod script;
use script::unescape;

use crate::harness::ca::TestCa;
use crate::harness::client::{Dialog, step};
use crate::harness::sink::{Received, Sink, SinkOptions};
use crate::harness::{DELIVERY, field_names, split_prefix};

/// At least this many files must run (26 files today; 6 have `D:` lines, one has
/// `max_size=20`).
const MIN_RUN: usize = 19;
/// The password of `app1` in the scripts (`AGFwcDEAc2VjcmV0` is `\0app1\0secret`).
const APP1_PASSWORD: &str = "secret";

/// The argon2id hash of [`APP1_PASSWORD`], computed once per process.
fn app1_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| postern::users::hash_password(APP1_PASSWORD).unwrap())
}

/// The header of a script, with the in-process runner's defaults.
#[derive(Debug, Clone)]
struct Header {
    tls: String,
    auth: String,
    tls_active: Option<bool>,
    max_size: u64,
    max_recipients: usize,
    max_errors: u32,
    bare: String,
}

impl Header {
    fn parse(line: &str) -> Header {
        let mut h = Header {
            tls: "starttls".into(),
            auth: "required".into(),
            tls_active: None,
            max_size: 10240,
            max_recipients: 100,
            max_errors: 10,
            bare: "reject".into(),
        };
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "tls" => h.tls = v.into(),
                "auth" => h.auth = v.into(),
                "tls_active" => h.tls_active = Some(v == "yes"),
                "max_size" => h.max_size = v.parse().unwrap(),
                "max_recipients" => h.max_recipients = v.parse().unwrap(),
                "max_errors" => h.max_errors = v.parse().unwrap(),
                "bare" => h.bare = v.into(),
                _ => panic!("unknown header key {kv}"),
            }
        }
        h
    }

    /// TLS is up before the first command (implicit, or `tls_active=yes`).
    fn tls_active(&self) -> bool {
        self.tls_active.unwrap_or(self.tls == "implicit")
    }
}

/// One `.dialog` file: its header and numbered directive lines.
#[derive(Debug)]
struct Script {
    name: String,
    header: Header,
    lines: Vec<(usize, String)>,
}

impl Script {
    fn load(path: &Path) -> Script {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<(usize, String)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end().to_owned()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let header = match lines.first() {
            Some((_, l)) if l.starts_with('@') => Header::parse(&lines.remove(0).1[1..]),
            _ => Header::parse(""),
        };
        Script {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            header,
            lines,
        }
    }

    /// Why this file cannot run against a real server, if it cannot (the module's skip rule).
    fn skip_reason(&self) -> Option<String> {
        if self.lines.iter().any(|(_, l)| l.starts_with("D:")) {
            return Some("scripted verdicts (D: lines)".into());
        }
        if self.header.max_size < 1024 {
            return Some(format!(
                "max_size={} is under the validator's 1KiB minimum",
                self.header.max_size
            ));
        }
        None
    }
}

/// A postern with one listener shaped by a script's header, and its sink.
impl Drop for DialogServer {
    /// Nothing this server logged may carry a secret (see `harness::logs`).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            crate::harness::logs::assert_no_secrets();
        }
    }
}

struct DialogServer {
    _dir: tempfile::TempDir,
    ca: TestCa,
    sink: Sink,
    addr: SocketAddr,
    running: Option<postern::app::Running>,
}

impl DialogServer {
    async fn start(h: &Header) -> DialogServer {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let sink = Sink::start(SinkOptions::default()).await;
        let allow = if h.auth == "none" {
            ", allow_networks: [127.0.0.1/32]"
        } else {
            ""
        };
        let yaml = format!(
            r#"hostname: mx.test
listeners:
  - {{name: dialog, address: "127.0.0.1:0", tls: {tls}, auth: {auth}{allow}}}
tls: {{certificate: {cert}, private_key: {key}}}
users:
  - {{username: app1, password_hash: "{hash}", senders: ["app1@corp.example"]}}
limits: {{max_message_size: {size}, max_recipients: {rcpts}, max_errors: {errors}}}
smtp: {{bare_line_endings: {bare}}}
queue: {{directory: {spool}, min_backoff: 1s, max_backoff: 2s}}
upstreams:
  - {{name: sink, address: "127.0.0.1:{sink}", tls: none, connect_timeout: 2s}}
shutdown_grace: 2s
log: {{level: error}}
"#,
            tls = h.tls,
            auth = h.auth,
            cert = ca.cert_file.display(),
            key = ca.key_file.display(),
            hash = app1_hash(),
            size = h.max_size,
            rcpts = h.max_recipients,
            errors = h.max_errors,
            bare = h.bare,
            spool = dir.path().join("spool").display(),
            sink = sink.port(),
        );
        let path: PathBuf = dir.path().join("postern.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let cfg = postern::config::load::load_str(&yaml, &path).unwrap();
        crate::harness::logs::capture();
        let running = step("postern start", postern::app::start(cfg))
            .await
            .unwrap();
        let addr = running.addr("dialog").unwrap();
        DialogServer {
            _dir: dir,
            ca,
            sink,
            addr,
            running: Some(running),
        }
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            step("postern shutdown", running.shutdown()).await;
        }
        // `self` (its directory included) is dropped here, after the shutdown.
    }
}

/// The message at the sink whose Received field carries queue id `id`.
fn by_id<'a>(all: &'a [Received], id: &str) -> Option<&'a Received> {
    let (a, b) = (format!(" id {id}\r\n"), format!(" id {id};"));
    all.iter().find(|m| {
        let text = m.text();
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        head.contains(&a) || head.contains(&b)
    })
}

/// One script being played.
struct Player<'a> {
    name: &'a str,
    server: &'a DialogServer,
    d: Dialog,
    /// Reply lines read but not yet matched by `S:`.
    pending: VecDeque<String>,
    /// Queue ids from `250 ... queued as <id>`, in order.
    queued: Vec<String>,
    /// The last reply line matched, to know whether the server is closing.
    last: String,
}

impl Player<'_> {
    async fn next_line(&mut self, at: &str, want: &str) -> String {
        if self.pending.is_empty() {
            let Some(reply) = self.d.try_reply().await else {
                panic!("{at}: server closed, want {want:?}")
            };
            self.pending.extend(reply.lines);
        }
        self.pending.pop_front().unwrap()
    }

    async fn expect_line(&mut self, at: &str, want: &str) {
        let got = self.next_line(at, want).await;
        const QUEUED: &str = "queued as ";
        let want_prefix = match want.find(QUEUED) {
            Some(i) => &want[..i + QUEUED.len()],
            None => want,
        };
        assert!(
            got.starts_with(want_prefix),
            "{at}: got {got:?}, want prefix {want:?}"
        );
        if let Some(id) = got.strip_prefix("250 2.0.0 Ok: queued as ") {
            self.queued.push(id.to_owned());
        }
        self.last = got;
    }

    fn assert_all_matched(&self, at: &str) {
        assert!(
            self.pending.is_empty(),
            "{at}: unmatched replies {:?}",
            self.pending
        );
    }

    /// The last queued message, once it has reached the sink.
    async fn last_message(&self, at: &str) -> Received {
        let Some(id) = self.queued.last() else {
            panic!("{at}: no message was queued")
        };
        let all = self
            .server
            .sink
            .wait_for(DELIVERY, |all| by_id(all, id).is_some())
            .await;
        by_id(&all, id).unwrap().clone()
    }

    async fn event(&mut self, at: &str, arg: &str) {
        let (what, rest) = arg.split_once(' ').unwrap_or((arg, ""));
        match what {
            "close" => {
                self.assert_all_matched(at);
                self.d.expect_closed().await;
                self.last = "closed".into();
            }
            "open" => {
                self.assert_all_matched(at);
                self.d.cmd("NOOP", "250 2.0.0").await;
            }
            "starttls" => {
                self.assert_all_matched(at);
                self.d.tls_handshake(&self.server.ca).await;
            }
            "body" => {
                let m = self.last_message(at).await;
                let prefix = split_prefix(&m.data, &unescape(rest));
                let names = field_names(prefix);
                assert!(
                    names.first().map(String::as_str) == Some("Received")
                        && names
                            .iter()
                            .all(|n| ["Received", "Date", "Message-ID"].contains(&n.as_str())),
                    "{at}: postern's prefix {prefix:?}"
                );
            }
            "rcpts" => {
                let m = self.last_message(at).await;
                assert_eq!(m.rcpt_to.len().to_string(), rest, "{at}: {:?}", m.rcpt_to);
            }
            // Engine state a client cannot observe; see the module doc.
            "identity" | "noidentity" | "discard" => {}
            _ => panic!("{at}: unknown expectation {arg}"),
        }
    }

    /// The end-of-file checks of the module doc.
    async fn finish(&mut self) {
        let at = format!("{}: end", self.name);
        self.assert_all_matched(&at);
        if self.last != "closed" && !self.last.starts_with("221 ") && !self.last.starts_with("421 ")
        {
            self.d.send("QUIT\r\n").await;
            let reply = self.d.try_reply().await;
            let first = reply.as_ref().map(|r| r.first().to_owned());
            assert!(
                first.as_deref().is_some_and(|l| l.starts_with("221 2.0.0")),
                "{at}: QUIT got {first:?}: an extra reply was pending"
            );
        }
        self.d.expect_closed().await;
        let want = self.queued.len();
        let all = self
            .server
            .sink
            .wait_for(DELIVERY, |all| all.len() >= want)
            .await;
        assert_eq!(all.len(), want, "{at}: messages at the sink");
        for id in &self.queued {
            assert!(
                by_id(&all, id).is_some(),
                "{at}: queue id {id} not delivered"
            );
        }
    }
}

/// Plays `script` against `server`.
async fn play(script: &Script, server: &DialogServer) {
    let h = &script.header;
    let mut d = if h.tls == "implicit" {
        Dialog::connect_tls_silent(server.addr, &server.ca).await
    } else {
        Dialog::connect_silent(server.addr).await
    };
    let mut pending = VecDeque::new();
    if h.tls_active() && h.tls != "implicit" {
        // The greeting belongs to the script; the upgrade happens behind its back.
        let greeting = d.try_reply().await.expect("no greeting");
        pending.extend(greeting.lines);
        d.cmd("EHLO runner.test", "250").await;
        d.starttls(&server.ca).await;
    }
    let mut p = Player {
        name: &script.name,
        server,
        d,
        pending,
        queued: Vec::new(),
        last: String::new(),
    };
    let mut packet: Vec<u8> = Vec::new();
    for (no, line) in &script.lines {
        let at = format!("{}:{no}", script.name);
        let (tag, arg) = line
            .split_once(": ")
            .unwrap_or((line.trim_end_matches(':'), ""));
        match tag {
            "C" => {
                packet.extend(unescape(arg));
                packet.extend_from_slice(b"\r\n");
                continue;
            }
            "R" => {
                packet.extend(unescape(arg));
                continue;
            }
            _ => {}
        }
        if !packet.is_empty() {
            p.d.send(std::mem::take(&mut packet)).await;
        }
        match tag {
            "S" => p.expect_line(&at, arg).await,
            "E" => p.event(&at, arg).await,
            _ => panic!("{at}: unknown directive {line:?}"),
        }
    }
    if !packet.is_empty() {
        p.d.send(packet).await;
    }
    p.finish().await;
}

/// Every runnable script against a fresh server of its own; all failures are reported
/// together, then the count of files run is checked against [`MIN_RUN`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialog_scripts_over_tcp() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dialogs");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dialog"))
        .collect();
    paths.sort();
    let (mut ran, mut skipped, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for path in &paths {
        let script = Script::load(path);
        if let Some(why) = script.skip_reason() {
            skipped.push(format!("{}: {why}", script.name));
            continue;
        }
        // Each file in its own task, so one failure does not hide the others.
        let name = script.name.clone();
        let outcome = tokio::spawn(async move {
            let server = DialogServer::start(&script.header).await;
            // The whole file is bounded too: every step is, but a script has many.
            let played = tokio::time::timeout(Duration::from_secs(60), play(&script, &server));
            assert!(played.await.is_ok(), "{}: over 60 s", script.name);
            server.stop().await;
        })
        .await;
        match outcome {
            Ok(()) => ran.push(name),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    eprintln!(
        "dialogs over TCP: ran {} of {}; skipped:\n  {}",
        ran.len(),
        paths.len(),
        skipped.join("\n  ")
    );
    assert!(
        failed.is_empty(),
        "{} dialog file(s) failed over TCP (panic messages above):\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
    assert!(
        ran.len() >= MIN_RUN,
        "only {} dialog files ran over TCP, want at least {MIN_RUN}",
        ran.len()
    );
}
