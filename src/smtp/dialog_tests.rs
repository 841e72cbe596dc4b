//! Test support: an in-process shell ([`Harness`]) and the runner for the
//! chasquid-style dialog scripts in `tests/dialogs/*.dialog`.
//!
//! Script format, one directive per line (`#` comments, blank lines ignored):
//!
//! ```text
//! @ tls=starttls auth=required tls_active=no max_recipients=100 max_errors=10 max_size=10240 bare=reject
//! C: EHLO client.example      client line, CRLF appended
//! R: a\nb\r\n                 raw client bytes: escapes \r \n \t \\ and ${N*c} (c repeated N times)
//! S: 250-                     next server reply line must start with this
//! D: reject 550 5.7.1 text    answer the next Decide with Reject (also: close <reply>, accept,
//!                             authenticated, queued <id>); default answers accept everything
//! E: close | open | discard | starttls | identity <u> | noidentity | body <raw> | rcpts <n>
//! ```
//!
//! Consecutive C:/R: lines form one packet fed to a single `advance` call
//! (that is how pipelining is tested); any other directive flushes the packet.
//! At the end every server line must have been matched.

use std::collections::VecDeque;

/// The escape syntax of `C:`/`R:` lines, shared with the TCP runner in `tests/it/dialogs.rs`.
#[path = "../../tests/dialogs/unescape.rs"]
mod script;
pub(super) use script::unescape;

use crate::smtp::data::{BareLf, LongLines};
use crate::smtp::reply::Reply;
use crate::smtp::session::{
    AuthPolicy, Envelope, Question, Session, SessionConfig, Step, TlsOffer, Verdict,
};

/// A tiny in-memory shell that behaves like `server/conn.rs` should.
pub(super) struct Harness {
    pub(super) s: Session,
    buf: Vec<u8>,
    pub(super) verdicts: VecDeque<Verdict>,
    pub(super) out: Vec<u8>,
    spool: Vec<u8>,
    pub(super) messages: Vec<(Envelope, Vec<u8>)>,
    pub(super) events: Vec<&'static str>,
    pub(super) closed: bool,
}

impl Harness {
    pub(super) fn new(cfg: SessionConfig, tls_active: bool) -> Harness {
        let mut s = Session::new(cfg, tls_active);
        s.greet();
        let mut h = Harness {
            s,
            buf: Vec::new(),
            verdicts: VecDeque::new(),
            out: Vec::new(),
            spool: Vec::new(),
            messages: Vec::new(),
            events: Vec::new(),
            closed: false,
        };
        h.drain_output();
        h
    }

    fn drain_output(&mut self) {
        self.out.append(self.s.output());
        self.spool.append(self.s.take_body());
    }

    fn verdict(&mut self, q: &Question) -> Verdict {
        if let Some(v) = self.verdicts.pop_front() {
            return v;
        }
        match q {
            Question::Auth { .. } => Verdict::Authenticated,
            Question::Message { .. } => Verdict::Queued("TESTID".to_owned()),
            _ => Verdict::Accept,
        }
    }

    /// Feeds one packet and runs the session until it needs more input.
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let (n, step) = self.s.advance(&self.buf);
            assert!(n <= self.buf.len(), "consumed more than given");
            self.buf.drain(..n);
            self.drain_output();
            let step = match step {
                Step::NeedInput => break,
                Step::Decide(q) => {
                    let verdict = self.verdict(&q);
                    if matches!(q, Question::Data) {
                        self.spool.clear();
                    }
                    if let (Question::Message { envelope }, Verdict::Queued(_)) = (&q, &verdict) {
                        self.messages
                            .push((envelope.clone(), std::mem::take(&mut self.spool)));
                    }
                    let step = self.s.answer(verdict);
                    self.drain_output();
                    step
                }
                other => other,
            };
            match step {
                Step::NeedInput | Step::Decide(_) => {}
                Step::StartTls => {
                    // CVE-2011-0411: pipelined plaintext after STARTTLS is dropped.
                    self.buf.clear();
                    self.s.tls_established();
                    self.events.push("starttls");
                }
                Step::DiscardMessage(..) => {
                    self.spool.clear();
                    self.events.push("discard");
                }
                Step::Close => {
                    self.events.push("close");
                    self.closed = true;
                    break;
                }
            }
        }
        // The shell's buffer stays within the largest line cap.
        assert!(
            self.buf.len() < crate::smtp::line::AUTH_LINE_CAP,
            "read buffer grew"
        );
    }

    /// The output as lines without CRLF.
    pub(super) fn lines(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.out);
        text.split_terminator("\r\n").map(str::to_owned).collect()
    }
}

/// Parses a header `@ k=v ...` into a config and the initial TLS state.
pub(super) fn config(header: &str) -> (SessionConfig, bool) {
    let mut cfg = SessionConfig {
        hostname: "mx.test".to_owned(),
        tls: TlsOffer::StartTls,
        auth: AuthPolicy::Required,
        max_message_size: 10240,
        max_recipients: 100,
        max_errors: 10,
        bare_line_endings: BareLf::Reject,
        long_lines: LongLines::Wrap,
        max_junk_commands: 100,
    };
    let mut tls_active = None;
    for kv in header.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match (k, v) {
            ("tls", "none") => cfg.tls = TlsOffer::None,
            ("tls", "starttls") => cfg.tls = TlsOffer::StartTls,
            ("tls", "implicit") => cfg.tls = TlsOffer::Implicit,
            ("auth", "required") => cfg.auth = AuthPolicy::Required,
            ("auth", "optional") => cfg.auth = AuthPolicy::Optional,
            ("auth", "none") => cfg.auth = AuthPolicy::None,
            ("tls_active", v) => tls_active = Some(v == "yes"),
            ("max_recipients", v) => cfg.max_recipients = v.parse().unwrap_or(0),
            ("max_errors", v) => cfg.max_errors = v.parse().unwrap_or(0),
            ("max_size", v) => cfg.max_message_size = v.parse().unwrap_or(0),
            ("bare", "reject") => cfg.bare_line_endings = BareLf::Reject,
            ("bare", "normalise") => cfg.bare_line_endings = BareLf::Normalise,
            _ => panic!("unknown header key {kv}"),
        }
    }
    let active = tls_active.unwrap_or(cfg.tls == TlsOffer::Implicit);
    (cfg, active)
}

/// Parses `<code> <x.y.z> text` into a reply.
fn parse_reply(s: &str) -> Reply {
    let mut parts = s.splitn(3, ' ');
    let code: u16 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let enh: Vec<u16> = parts
        .next()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    let text = parts.next().unwrap_or("").to_owned();
    Reply::new(code, (enh[0] as u8, enh[1], enh[2]), text)
}

fn parse_verdict(s: &str) -> Verdict {
    let (kind, rest) = s.split_once(' ').unwrap_or((s, ""));
    match kind {
        "reject" => Verdict::Reject(parse_reply(rest)),
        "close" => Verdict::RejectAndClose(parse_reply(rest)),
        "defer" => Verdict::Defer(parse_reply(rest)),
        "accept" => Verdict::Accept,
        "authenticated" => Verdict::Authenticated,
        "queued" => Verdict::Queued(rest.to_owned()),
        _ => panic!("unknown verdict {s}"),
    }
}

/// Runs one script; panics with file:line on the first mismatch.
pub(super) fn run_script(name: &str, script: &str) {
    let mut lines = script.lines().enumerate().peekable();
    let header = match lines.peek() {
        Some((_, l)) if l.starts_with('@') => lines.next().map(|(_, l)| l[1..].to_owned()),
        _ => None,
    };
    let (cfg, tls) = config(header.as_deref().unwrap_or(""));
    let mut h = Harness::new(cfg, tls);
    let mut packet: Vec<u8> = Vec::new();
    let mut seen = 0;
    for (no, line) in lines {
        let at = format!("{name}:{}", no + 1);
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
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
        h.feed(&std::mem::take(&mut packet));
        match tag {
            "S" => {
                let got = h.lines();
                let line = got
                    .get(seen)
                    .unwrap_or_else(|| panic!("{at}: no reply, want {arg:?}"));
                assert!(
                    line.starts_with(arg),
                    "{at}: got {line:?}, want prefix {arg:?}"
                );
                seen += 1;
            }
            "D" => h.verdicts.push_back(parse_verdict(arg)),
            "E" => expect(&h, &at, arg),
            _ => panic!("{at}: unknown directive {line:?}"),
        }
    }
    h.feed(&packet);
    let got = h.lines();
    assert_eq!(
        got.len(),
        seen,
        "{name}: unexpected extra replies {:?}",
        &got[seen.min(got.len())..]
    );
    assert!(h.verdicts.is_empty(), "{name}: unused D: verdicts");
}

fn expect(h: &Harness, at: &str, arg: &str) {
    let (what, rest) = arg.split_once(' ').unwrap_or((arg, ""));
    match what {
        "close" => assert!(h.closed, "{at}: expected close"),
        "open" => assert!(!h.closed, "{at}: expected open"),
        "discard" | "starttls" => assert!(h.events.contains(&what), "{at}: no {what}"),
        "identity" => assert_eq!(h.s.identity(), Some(rest), "{at}"),
        "noidentity" => assert_eq!(h.s.identity(), None, "{at}"),
        "body" => {
            let body = h.messages.last().map(|(_, b)| b.clone());
            assert_eq!(body, Some(unescape(rest)), "{at}: body");
        }
        "rcpts" => {
            let n = h.messages.last().map(|(e, _)| e.rcpts.len());
            assert_eq!(
                n.map(|n| n.to_string()).as_deref(),
                Some(rest),
                "{at}: rcpts"
            );
        }
        _ => panic!("{at}: unknown expectation {arg}"),
    }
}

#[test]
fn dialog_scripts() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dialogs");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dialog"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "expected at least 15 dialog files, found {}",
        files.len()
    );
    for path in files {
        let script = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        run_script(&name, &script);
    }
}
