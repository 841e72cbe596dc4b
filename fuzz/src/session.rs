//! `session_raw`, and the shell both session targets share: a [`Session`]
//! driven the way `server/conn.rs` drives it, with the engine's promises
//! checked at every step.
//!
//! Checked throughout:
//! - `advance` never consumes more than it was given, and writes at most two
//!   replies per consumed byte; `answer` writes at most two replies.
//! - After `NeedInput` the unconsumed input is under the AUTH line cap (the
//!   shell's read buffer is bounded); the body a message streams through
//!   `take_body` never exceeds `max_message_size`.
//! - A password is only asked about over TLS, MAIL only reaches policy after
//!   AUTH where AUTH is required, a message has 1..=max_recipients
//!   recipients, and `Question` Debug never shows a password.
//! - Replies that grant something (235, 354, `250 2.1.0`, `250 2.1.5`,
//!   queued) only follow the matching verdict, each answer starts with the
//!   reply its verdict calls for, AUTH is only offered over TLS and STARTTLS
//!   only outside it.
//! - Everything written parses as whole replies with the upstream reply
//!   parser; `421 4.3.0` (the engine's "impossible state") never appears
//!   unless the shell itself broke the protocol (answered with the wrong kind
//!   of verdict); nothing is written after `Close`.
//! - Unless STARTTLS (which drops buffered input by design) happened, the
//!   transcript is the same when the whole input arrives in one read.

use postern::smtp::data::{BareLf, LongLines};
use postern::smtp::line::AUTH_LINE_CAP;
use postern::smtp::reply::Reply;
use postern::smtp::reply_parser::parse_reply;
use postern::smtp::session::{
    AuthPolicy, Envelope, Question, Session, SessionConfig, Step, TlsOffer, Verdict,
};

use crate::input::{Input, Rng, chunks, crlf_only};

/// Upper bound of one reply's size (the EHLO reply is the longest, < 200).
const REPLY_MAX: usize = 256;

/// One fuzz case for a session.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The listener's settings.
    pub cfg: SessionConfig,
    /// TLS already up when the session starts.
    pub tls_active: bool,
    /// The client's bytes, as they arrive read by read.
    pub reads: Vec<&'a [u8]>,
    /// Seeds the verdict for each question.
    pub verdict_seed: u8,
    /// What happens after the last read: 0/3 nothing, 1 timeout, 2 shutdown.
    pub ending: u8,
}

/// Everything a run produced that must not depend on read boundaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Transcript {
    out: Vec<u8>,
    questions: Vec<Question>,
    messages: Vec<(Envelope, Vec<u8>)>,
    discarded: usize,
    closed: bool,
    starttls: bool,
    /// The shell answered a question with a verdict of the wrong kind.
    misbehaved: bool,
}

/// Reads the listener settings from three header bytes (byte 0: TLS offer,
/// AUTH policy, TLS already started, bare-LF policy, long-line policy; byte 1: size cap and
/// recipient cap; byte 2: error cap).
pub fn session_config(input: &mut Input<'_>) -> (SessionConfig, bool) {
    let b = input.byte();
    let tls = [TlsOffer::StartTls, TlsOffer::Implicit, TlsOffer::None][usize::from(b % 3)];
    let auth =
        [AuthPolicy::Required, AuthPolicy::Optional, AuthPolicy::None][usize::from(b / 3 % 3)];
    let started = b / 9 % 2 == 1;
    let bare_line_endings = if b / 18 % 2 == 1 {
        BareLf::Normalise
    } else {
        BareLf::Reject
    };
    let long_lines = if b / 36 % 2 == 1 {
        LongLines::Reject
    } else {
        LongLines::Wrap
    };
    let b = usize::from(input.byte());
    let max_message_size = [10240, 0, 1, 16, 100, 1000, 35_882_577][b % 7];
    let max_recipients = [100, 0, 1, 2][b / 7 % 4];
    let max_errors = [10, 0, 1, 3, 1000][usize::from(input.byte() % 5)];
    let cfg = SessionConfig {
        hostname: "mx.fuzz.example".to_owned(),
        tls,
        auth,
        max_message_size,
        max_recipients,
        max_errors,
        bare_line_endings,
        long_lines,
        max_junk_commands: [100, 0, 1, 3][usize::from(input.byte() % 4)],
    };
    let tls_active = tls == TlsOffer::Implicit || (tls == TlsOffer::StartTls && started);
    (cfg, tls_active)
}

/// `session_raw`. Header: three settings bytes, a split seed (see
/// [`chunks`]), a verdict seed and the ending; the rest is the client's bytes.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let (cfg, tls_active) = session_config(&mut input);
    let split_seed = input.byte();
    let verdict_seed = input.byte();
    let ending = input.byte();
    let stream = input.rest();
    check_plan(&Plan {
        cfg,
        tls_active,
        reads: chunks(stream, split_seed),
        verdict_seed,
        ending,
    });
}

/// Runs a plan, then the same bytes in one read, and compares.
pub fn check_plan(plan: &Plan<'_>) {
    let split = run(plan);
    if split.starttls || plan.reads.len() < 2 {
        return;
    }
    let whole: Vec<u8> = plan.reads.concat();
    let single = Plan {
        reads: vec![&whole],
        ..plan.clone()
    };
    let one = run(&single);
    if one.starttls {
        return;
    }
    assert_eq!(
        String::from_utf8_lossy(&split.out),
        String::from_utf8_lossy(&one.out),
        "replies depend on read boundaries"
    );
    assert_eq!(split, one, "transcript depends on read boundaries");
}

fn run(plan: &Plan<'_>) -> Transcript {
    let mut shell = Shell::new(plan);
    for read in &plan.reads {
        if shell.t.closed {
            break;
        }
        shell.feed(read);
    }
    shell.finish(plan.ending);
    shell.t
}

/// The in-memory shell.
struct Shell {
    s: Session,
    cfg: SessionConfig,
    buf: Vec<u8>,
    /// Body bytes of the message being received.
    spool: Vec<u8>,
    /// A DATA was accepted and its message has not ended yet.
    spool_open: bool,
    verdicts: Rng,
    t: Transcript,
}

impl Shell {
    fn new(plan: &Plan<'_>) -> Shell {
        let mut s = Session::new(plan.cfg.clone(), plan.tls_active);
        s.greet();
        let mut shell = Shell {
            s,
            cfg: plan.cfg.clone(),
            buf: Vec::new(),
            spool: Vec::new(),
            spool_open: false,
            verdicts: Rng::new(u64::from(plan.verdict_seed)),
            t: Transcript::default(),
        };
        shell.collect(0);
        assert!(shell.t.out.starts_with(b"220 "), "no greeting");
        shell
    }

    fn feed(&mut self, read: &[u8]) {
        self.buf.extend_from_slice(read);
        loop {
            let (n, mut step) = self.s.advance(&self.buf);
            assert!(n <= self.buf.len(), "consumed {n} of {}", self.buf.len());
            self.buf.drain(..n);
            let written = self.collect(n);
            assert!(
                written.len() <= 2 * REPLY_MAX * n,
                "{} bytes of replies for {n} bytes of input",
                written.len()
            );
            self.check_unprompted(&written);
            // After an answer the engine goes on with the buffered input,
            // so `NeedInput` only ends the loop when `advance` said it.
            let mut answered = false;
            while let Step::Decide(question) = step {
                step = self.decide(question);
                answered = true;
            }
            match step {
                Step::NeedInput | Step::Decide(_) if answered => {}
                Step::NeedInput | Step::Decide(_) => break,
                Step::StartTls => {
                    assert!(
                        self.t.out.ends_with(b"220 2.0.0 Ready to start TLS\r\n"),
                        "StartTls without its 220"
                    );
                    // RFC 3207 / CVE-2011-0411: plaintext after STARTTLS is dropped.
                    self.buf.clear();
                    self.s.tls_established();
                    assert!(self.s.is_tls() && self.s.helo().is_none());
                    self.t.starttls = true;
                }
                Step::DiscardMessage(reply, _) => {
                    assert!(reply.is_error(), "discarded with {reply:?}");
                    self.spool.clear();
                    self.spool_open = false;
                    self.t.discarded += 1;
                }
                Step::Close => {
                    self.t.closed = true;
                    return;
                }
            }
        }
        assert!(
            self.buf.len() < AUTH_LINE_CAP,
            "{} unconsumed bytes after NeedInput",
            self.buf.len()
        );
    }

    /// Moves the session's output and body into the transcript and spool;
    /// returns the reply bytes written. `consumed` bounds the body growth.
    fn collect(&mut self, consumed: usize) -> Vec<u8> {
        let out = std::mem::take(self.s.output());
        self.t.out.extend_from_slice(&out);
        let body = std::mem::take(self.s.take_body());
        assert!(
            body.is_empty() || self.spool_open,
            "body bytes outside DATA"
        );
        assert!(
            body.len() <= 2 * consumed + 3,
            "body grew faster than input"
        );
        self.spool.extend_from_slice(&body);
        assert!(
            self.spool.len() as u64 <= self.cfg.max_message_size,
            "spooled {} bytes over the cap {}",
            self.spool.len(),
            self.cfg.max_message_size
        );
        out
    }

    /// Replies the engine wrote on its own, without a verdict: never one
    /// that only a positive verdict may produce, and never an AUTH offer in
    /// clear text (RFC 4954 4, RFC 8314) or a STARTTLS offer inside TLS.
    fn check_unprompted(&self, out: &[u8]) {
        for line in out.split(|&b| b == b'\n') {
            for granted in [
                &b"235 "[..],
                b"354 ",
                b"250 2.1.0",
                b"250 2.1.5",
                b"250 2.0.0 Ok: queued",
            ] {
                assert!(
                    !line.starts_with(granted),
                    "{:?} without a verdict",
                    String::from_utf8_lossy(line)
                );
            }
            let keyword = line.get(4..).unwrap_or_default();
            if line.starts_with(b"250") && keyword.starts_with(b"AUTH") {
                assert!(self.s.is_tls(), "AUTH offered without TLS");
            }
            if line.starts_with(b"250") && keyword.starts_with(b"STARTTLS") {
                assert!(!self.s.is_tls(), "STARTTLS offered inside TLS");
            }
        }
    }

    /// Checks a question, answers it and returns the session's next step.
    fn decide(&mut self, question: Question) -> Step {
        self.check_question(&question);
        let matching = match question {
            Question::Auth { .. } => Verdict::Authenticated,
            Question::Message { .. } => Verdict::Queued("FUZZ".to_owned()),
            _ => Verdict::Accept,
        };
        let verdict = match self.verdicts.below(16) {
            0 => Verdict::Reject(Reply::new(550, (5, 7, 1), "fuzz: refused")),
            1 => Verdict::Reject(Reply::new(451, (4, 7, 1), "fuzz: try later")),
            2 => Verdict::RejectAndClose(Reply::new(421, (4, 7, 0), "fuzz: closing")),
            3 => {
                let any = [
                    Verdict::Accept,
                    Verdict::Authenticated,
                    Verdict::Queued("FUZZ".to_owned()),
                ];
                let v = any[self.verdicts.below(any.len())].clone();
                self.t.misbehaved |= v != matching;
                v
            }
            _ => matching.clone(),
        };
        if let Question::Message { envelope } = &question {
            self.collect(0);
            let body = std::mem::take(&mut self.spool);
            assert!(self.spool_open, "message without an accepted DATA");
            assert!(crlf_only(&body), "bare CR or LF in a message body");
            assert!(
                body.is_empty() || body.ends_with(b"\r\n"),
                "body without CRLF"
            );
            self.spool_open = false;
            if matches!(verdict, Verdict::Queued(_)) {
                self.t.messages.push((envelope.clone(), body));
            }
        }
        // The reply the verdict calls for comes first.
        let want = match (&verdict, &question) {
            (Verdict::Reject(r) | Verdict::RejectAndClose(r), _) => r.code(),
            _ if verdict != matching => 421,
            (_, Question::Data) => 354,
            (_, Question::Auth { .. }) => 235,
            _ => 250,
        };
        let is_data = question == Question::Data;
        self.t.questions.push(question);
        let step = self.s.answer(verdict.clone());
        let written = self.collect(0);
        assert!(written.len() <= 2 * REPLY_MAX, "{written:?} for one answer");
        let code = written
            .get(..3)
            .map(|c| String::from_utf8_lossy(c).into_owned());
        assert_eq!(
            code,
            Some(want.to_string()),
            "{verdict:?} answered with {written:?}"
        );
        if is_data && verdict == Verdict::Accept {
            assert!(self.s.in_data(), "accepted DATA but not receiving");
            self.spool_open = true;
        }
        step
    }

    fn check_question(&self, question: &Question) {
        match question {
            Question::Auth { .. } => {
                // RFC 4954 4 / RFC 8314: never a password in clear text.
                assert!(self.s.is_tls(), "AUTH credentials asked about without TLS");
                assert!(self.cfg.auth != AuthPolicy::None && self.cfg.tls != TlsOffer::None);
                let mut redacted = question.clone();
                if let Question::Auth { password, .. } = &mut redacted {
                    *password = "\u{1}".to_owned();
                }
                assert_eq!(
                    format!("{question:?}"),
                    format!("{redacted:?}"),
                    "Question Debug shows the password"
                );
            }
            Question::Mail { from, params } => {
                assert!(self.s.helo().is_some(), "MAIL before EHLO");
                if self.cfg.auth == AuthPolicy::Required {
                    assert!(self.s.identity().is_some(), "MAIL without AUTH");
                }
                assert!(params.size.is_none_or(|s| s <= self.cfg.max_message_size));
                assert!(params.smtputf8 || from.is_ascii());
            }
            Question::Rcpt { .. } | Question::Data => {
                assert!(
                    self.s.in_transaction(),
                    "{question:?} outside a transaction"
                );
            }
            Question::Message { envelope } => {
                let n = envelope.rcpts.len();
                assert!(n >= 1 && n <= self.cfg.max_recipients, "{n} recipients");
                if !envelope.params.smtputf8 {
                    assert!(envelope.from.is_ascii());
                    assert!(envelope.rcpts.iter().all(|r| r.to.0.is_ascii()));
                }
            }
        }
    }

    /// The connection's end, then the checks on the whole transcript.
    fn finish(&mut self, ending: u8) {
        if !self.t.closed {
            let step = match ending % 4 {
                1 => Some(self.s.timed_out()),
                2 => Some(self.s.shutting_down()),
                _ => None,
            };
            if let Some(step) = step {
                assert_eq!(step, Step::Close);
                self.collect(0);
                assert!(self.t.out.ends_with(b"\r\n") && self.t.out.starts_with(b"220"));
                self.t.closed = true;
            }
        }
        if self.t.closed {
            // Nothing more is read or said once the session is over.
            let (_, step) = self.s.advance(b"NOOP\r\n");
            assert_eq!(step, Step::Close, "session reopened after Close");
            assert!(self.s.output().is_empty(), "output after Close");
        }
        let mut rest = self.t.out.as_slice();
        while !rest.is_empty() {
            let (reply, n) = match parse_reply(rest) {
                Ok(Some(parsed)) => parsed,
                other => panic!("output {rest:?} is not whole replies: {other:?}"),
            };
            let internal = reply.code == 421 && reply.enhanced == Some((4, 3, 0));
            assert!(
                !internal || self.t.misbehaved,
                "internal error with a well-behaved shell"
            );
            rest = &rest[n..];
        }
    }
}
