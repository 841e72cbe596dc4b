//! The SMTP server session: a sans-I/O state machine fed with bytes.
//!
//! The shell (`server/conn.rs`) reads bytes, calls [`Session::advance`],
//! writes [`Session::output`], spools [`Session::take_body`], and answers
//! each [`Step::Decide`] with a [`Verdict`] (go-smtp's engine/back-end seam:
//! the engine owns syntax, order and reply format, policy owns acceptance).
//!
//! The phase is an enum carrying the data valid in it; every transition takes
//! the old phase by value and returns the next one (see `verbs.rs`).

use std::fmt;

use crate::reason::Reason;
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::smtp::command::{self, CommandError, MailParams};
use crate::smtp::data::{BareLf, DataDecoder, DataEnd, LongLines};
use crate::smtp::dsn::RcptParams;
use crate::smtp::line::{AUTH_LINE_CAP, COMMAND_LINE_CAP, Frame, LineFramer};
use crate::smtp::reply::Reply;
use crate::smtp::sasl::{Mechanism, SaslStep};
use crate::smtp::verbs;

/// How the listener offers TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOffer {
    /// Plain text only; STARTTLS and AUTH are never offered.
    None,
    /// RFC 3207 STARTTLS upgrade.
    StartTls,
    /// RFC 8314 implicit TLS: the session starts with TLS active.
    Implicit,
}

/// Whether the listener authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    /// MAIL needs a successful AUTH first (RFC 6409 4.1).
    Required,
    /// AUTH is offered but not needed (e.g. IP-admitted devices).
    Optional,
    /// AUTH is not offered.
    None,
}

/// Per-listener settings the engine needs; built by the shell from config.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name, used in the banner, EHLO and 421 texts.
    pub hostname: String,
    /// The listener's TLS mode.
    pub tls: TlsOffer,
    /// The listener's AUTH policy.
    pub auth: AuthPolicy,
    /// SIZE advertised and enforced, in bytes of unstuffed content (RFC 1870).
    pub max_message_size: u64,
    /// Recipients per transaction before 452 4.5.3.
    pub max_recipients: usize,
    /// Client-caused error replies before `421 4.7.0` and close; 0 acts as 1.
    pub max_errors: u32,
    /// Policy for bare CR / LF in DATA.
    pub bare_line_endings: BareLf,
    /// Policy for lines over 998 octets in DATA (RFC 5322 2.1.1).
    pub long_lines: LongLines,
    /// Commands without progress (NOOP, RSET, VRFY, HELP) before `421 4.7.0` and close;
    /// the count restarts with each queued message. 0: no cap.
    pub max_junk_commands: u32,
}

/// What the shell must do after [`Session::advance`] or [`Session::answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// All complete input was consumed: write `output()`, then read more.
    NeedInput,
    /// Call [`Session::answer`]; the engine consumes no input until then.
    Decide(Question),
    /// `220 2.0.0 Ready to start TLS` is in `output()`: write it, DROP the
    /// unread input (CVE-2011-0411), handshake, call `tls_established()`.
    StartTls,
    /// The DATA just ended but was refused (reply queued) for this reason: drop the
    /// partial spool file, then call `advance` again with the remaining input.
    DiscardMessage(Reply, Reason),
    /// Write `output()` and close the connection; drop any open spool file
    /// (a message only counts once it got its 250).
    Close,
}

/// A decision the engine leaves to the shell (policy, users, spool).
#[derive(Clone, PartialEq, Eq)]
pub enum Question {
    /// Verify these credentials. Debug never shows the password.
    Auth {
        /// The mechanism used.
        mechanism: Mechanism,
        /// Authorization identity (empty when absent).
        authzid: String,
        /// Authentication identity.
        username: String,
        /// The password.
        password: String,
    },
    /// May this sender start a transaction?
    Mail {
        /// The reverse path.
        from: ReversePath,
        /// Its parameters.
        params: MailParams,
    },
    /// May this recipient be added?
    Rcpt {
        /// The forward path.
        to: ForwardPath,
    },
    /// DATA is valid: open a spool file; Accept sends 354.
    Data,
    /// The message ended; its body was streamed through `take_body()`
    /// (which may still hold the last bytes). Store it and its envelope.
    Message {
        /// The transaction's envelope.
        envelope: Envelope,
    },
}

impl fmt::Debug for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Question::Auth {
                mechanism,
                authzid,
                username,
                ..
            } => f
                .debug_struct("Auth")
                .field("mechanism", mechanism)
                .field("authzid", authzid)
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Question::Mail { from, params } => f
                .debug_struct("Mail")
                .field("from", from)
                .field("params", params)
                .finish(),
            Question::Rcpt { to } => f.debug_struct("Rcpt").field("to", to).finish(),
            Question::Data => f.write_str("Data"),
            Question::Message { envelope } => f
                .debug_struct("Message")
                .field("envelope", envelope)
                .finish(),
        }
    }
}

/// The shell's answer to a [`Question`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Mail: 250 2.1.0; Rcpt: 250 2.1.5; Data: 354.
    Accept,
    /// Auth: 235 2.7.0; the username becomes the identity.
    Authenticated,
    /// Message: 250 2.0.0 Ok: queued as <id>.
    Queued(String),
    /// Any question: send this reply; the phase stays consistent. Counts as a client error
    /// towards `max_errors`.
    Reject(Reply),
    /// Like `Reject`, for a temporary failure on the server's side (the argon2 queue is full,
    /// the spool cannot be written): the client did nothing wrong, so it is not counted
    /// towards `max_errors` and a client that retries is not disconnected for it.
    Defer(Reply),
    /// Send this reply and close (e.g. lockout 421).
    RejectAndClose(Reply),
}

/// The envelope of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL FROM.
    pub from: ReversePath,
    /// MAIL FROM parameters.
    pub params: MailParams,
    /// Accepted recipients, in order.
    pub rcpts: Vec<Rcpt>,
    /// The longest line of the message as received, in octets without CRLF: over 998
    /// (RFC 5322 2.1.1), it will be wrapped on the way out, which adds to its size.
    pub longest_line: usize,
}

/// One accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt {
    /// RCPT TO.
    pub to: ForwardPath,
    /// Its parameters (RFC 3461 NOTIFY, ORCPT).
    pub params: RcptParams,
}

/// The client's EHLO/HELO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Helo {
    /// The name the client gave.
    pub(super) name: String,
    /// EHLO (true) or HELO.
    pub(super) esmtp: bool,
}

/// An open mail transaction (RFC 5321 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Transaction {
    pub(super) from: ReversePath,
    pub(super) params: MailParams,
    pub(super) rcpts: Vec<Rcpt>,
}

/// What a [`Phase::Deciding`] waits for, with what the answer needs.
#[derive(Debug)]
pub(super) enum Pending {
    Auth {
        username: String,
    },
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        tx: Transaction,
        rcpt: Rcpt,
    },
    Data {
        tx: Transaction,
    },
    Message,
}

/// The dialogue phase, carrying the data valid in it.
#[derive(Debug)]
pub(super) enum Phase {
    /// Banner sent (or TLS just started): EHLO/HELO expected.
    Greeted,
    /// EHLO/HELO done, no transaction.
    Ready { helo: Helo },
    /// MAIL accepted; RCPTs being collected.
    Transaction { helo: Helo, tx: Transaction },
    /// Reading the message after 354.
    Receiving {
        helo: Helo,
        tx: Transaction,
        decoder: DataDecoder,
    },
    /// In a SASL exchange; the next line is a response, not a command.
    Sasl {
        helo: Helo,
        mechanism: Mechanism,
        step: SaslStep,
    },
    /// A [`Step::Decide`] is out; waiting for [`Session::answer`].
    Deciding { helo: Helo, pending: Pending },
    /// The session is over.
    Closing,
}

impl Phase {
    fn helo(&self) -> Option<&Helo> {
        match self {
            Phase::Ready { helo }
            | Phase::Transaction { helo, .. }
            | Phase::Receiving { helo, .. }
            | Phase::Sasl { helo, .. }
            | Phase::Deciding { helo, .. } => Some(helo),
            Phase::Greeted | Phase::Closing => None,
        }
    }
}

/// Cross-phase facts and the output buffer: everything but the phase.
#[derive(Debug)]
pub(super) struct Ctx {
    pub(super) cfg: SessionConfig,
    pub(super) tls: bool,
    pub(super) identity: Option<String>,
    pub(super) errors: u32,
    /// Commands without progress since the last queued message.
    pub(super) junk: u32,
    /// Why the server is closing the session, once it decided to.
    pub(super) closed_for: Option<Reason>,
    /// The policy reasons of the refusals the engine itself made (size, recipients, AUTH
    /// required), until the shell takes them for its log lines.
    pub(super) refused: Vec<Reason>,
    pub(super) out: Vec<u8>,
}

/// A transition's result: the next phase and, if the loop must stop, why.
pub(super) type Next = (Phase, Option<Step>);

impl Ctx {
    /// Queues a reply.
    pub(super) fn send(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    /// Queues a client-caused error reply and counts it; at `max_errors`
    /// adds `421 4.7.0 too many errors` and closes (Postfix smtpd_hard_error_limit).
    pub(super) fn reject(&mut self, reply: Reply, phase: Phase) -> Next {
        self.send(&reply);
        self.errors = self.errors.saturating_add(1);
        if self.errors >= self.cfg.max_errors.max(1) {
            let bye = Reply::too_many_errors(&self.cfg.hostname);
            self.close_for(&bye, Reason::TooManyErrors)
        } else {
            (phase, None)
        }
    }

    /// Queues `reply` and ends the session for `reason`.
    pub(super) fn close_for(&mut self, reply: &Reply, reason: Reason) -> Next {
        self.closed_for = Some(reason);
        self.close_with(reply)
    }

    /// Queues `reply` and ends the session.
    pub(super) fn close_with(&mut self, reply: &Reply) -> Next {
        self.send(reply);
        (Phase::Closing, Some(Step::Close))
    }

    /// An impossible phase/event pairing: 421 4.3.0 and close, never panic.
    pub(super) fn logic_error(&mut self) -> Next {
        let reply = Reply::internal_error(&self.cfg.hostname);
        self.close_with(&reply)
    }
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    ctx: Ctx,
    framer: LineFramer,
    body: Vec<u8>,
    /// Command and SASL lines completed so far (over-long ones included).
    lines: u64,
}

impl Session {
    /// A new session; `tls_active` is true once implicit TLS is established.
    pub fn new(cfg: SessionConfig, tls_active: bool) -> Session {
        Session {
            phase: Phase::Greeted,
            ctx: Ctx {
                cfg,
                tls: tls_active,
                identity: None,
                errors: 0,
                junk: 0,
                closed_for: None,
                refused: Vec::new(),
                out: Vec::new(),
            },
            framer: LineFramer::new(),
            body: Vec::new(),
            lines: 0,
        }
    }

    /// Queues the `220 <host> ESMTP postern` banner (RFC 5321 4.3.1).
    pub fn greet(&mut self) {
        let banner = Reply::greeting(&self.ctx.cfg.hostname);
        self.ctx.send(&banner);
    }

    /// Refuses the connection instead of greeting (RFC 5321 3.1: 554 or 421).
    pub fn refuse(&mut self, reply: Reply) -> Step {
        self.close(&reply)
    }

    /// Processes input in order until a decision, STARTTLS, the end of the
    /// input or close (RFC 2920: pipelined commands are handled one by one).
    /// Returns the bytes consumed; the shell keeps the rest for next time.
    ///
    /// Output grows by at most one reply per consumed line (the longest,
    /// EHLO, is under 200 bytes), so it stays proportional to the input.
    pub fn advance(&mut self, input: &[u8]) -> (usize, Step) {
        let mut consumed = 0;
        loop {
            let rest = input.get(consumed..).unwrap_or_default();
            let (n, stop) = self.advance_once(rest);
            consumed += n;
            match stop {
                Some(step) => return (consumed, step),
                None if n == 0 => return (consumed, Step::NeedInput),
                None => {}
            }
        }
    }

    /// One line, or one DATA chunk.
    fn advance_once(&mut self, rest: &[u8]) -> (usize, Option<Step>) {
        match &mut self.phase {
            Phase::Closing => return (rest.len(), Some(Step::Close)),
            Phase::Deciding { .. } => {
                // The shell must answer before feeding more input.
                let next = self.ctx.logic_error();
                return (0, self.set(next));
            }
            Phase::Receiving { decoder, .. } => {
                let (n, end) = decoder.feed(rest, &mut self.body);
                return match end {
                    None => (n, None),
                    Some(end) => (n, self.data_end(end)),
                };
            }
            _ => {}
        }
        let cap = if matches!(self.phase, Phase::Sasl { .. }) || starts_with_auth(rest) {
            AUTH_LINE_CAP
        } else {
            COMMAND_LINE_CAP
        };
        let (n, frame) = self.framer.next(rest, cap);
        let stop = match frame {
            Frame::Incomplete => None,
            Frame::TooLong => {
                self.lines += 1;
                self.transition(verbs::line_too_long)
            }
            Frame::Line(line) => {
                self.lines += 1;
                self.line(line)
            }
        };
        (n, stop)
    }

    /// Dispatches one complete line: a SASL response or a command.
    fn line(&mut self, line: &[u8]) -> Option<Step> {
        if matches!(self.phase, Phase::Sasl { .. }) {
            return self.transition(|ctx, phase| verbs::sasl_response(ctx, phase, line));
        }
        match command::parse(line) {
            Ok(cmd) => self.transition(|ctx, phase| verbs::command(ctx, phase, cmd)),
            Err(CommandError::Http) => {
                let reply = Reply::http_refused(&self.ctx.cfg.hostname);
                Some(self.close(&reply))
            }
            Err(CommandError::Syntax(reply)) => {
                self.transition(|ctx, phase| ctx.reject(reply, phase))
            }
        }
    }

    /// The DATA decoder reached the terminator.
    fn data_end(&mut self, end: DataEnd) -> Option<Step> {
        let phase = std::mem::replace(&mut self.phase, Phase::Closing);
        let Phase::Receiving { helo, tx, decoder } = phase else {
            let next = self.ctx.logic_error();
            return self.set(next);
        };
        let (refusal, reason) = match end {
            DataEnd::Complete => {
                let envelope = Envelope {
                    from: tx.from,
                    params: tx.params,
                    rcpts: tx.rcpts,
                    longest_line: decoder.longest_line(),
                };
                let pending = Pending::Message;
                self.phase = Phase::Deciding { helo, pending };
                return Some(Step::Decide(Question::Message { envelope }));
            }
            DataEnd::TooBig => (Reply::message_too_big(), Reason::Size),
            DataEnd::BareLineEnding => (Reply::bare_line_ending(), Reason::BareLineEnding),
            DataEnd::LongLine => (Reply::long_line(), Reason::LongLine),
        };
        // RFC 5321 4.1.1.4: a failed DATA clears the transaction.
        self.body.clear();
        let next = self.ctx.reject(refusal.clone(), Phase::Ready { helo });
        match self.set(next) {
            None => Some(Step::DiscardMessage(refusal, reason)),
            // The refusal was the last error the session may make: the shell learns of it
            // through the refusals, and drops the message file when the session ends.
            Some(step) => {
                self.ctx.refused.push(reason);
                Some(step)
            }
        }
    }

    /// Runs a transition over the phase taken by value.
    fn transition(&mut self, f: impl FnOnce(&mut Ctx, Phase) -> Next) -> Option<Step> {
        let phase = std::mem::replace(&mut self.phase, Phase::Closing);
        let next = f(&mut self.ctx, phase);
        self.set(next)
    }

    fn set(&mut self, (phase, step): Next) -> Option<Step> {
        self.phase = phase;
        step
    }

    fn close(&mut self, reply: &Reply) -> Step {
        let next = self.ctx.close_with(reply);
        self.set(next).unwrap_or(Step::Close)
    }

    /// Applies the shell's verdict on the pending question.
    pub fn answer(&mut self, verdict: Verdict) -> Step {
        self.transition(|ctx, phase| verbs::answer(ctx, phase, verdict))
            .unwrap_or(Step::NeedInput)
    }

    /// Reply bytes to write; the shell clears the vector after writing.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.ctx.out
    }

    /// Unstuffed DATA bytes since the last call; the shell appends them to
    /// the spool file and clears the vector.
    pub fn take_body(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }

    /// TLS is up: RFC 3207 4.2 forget everything learnt before it; the client
    /// must EHLO again.
    pub fn tls_established(&mut self) {
        self.ctx.tls = true;
        self.phase = Phase::Greeted;
        self.framer = LineFramer::new();
    }

    /// The command or DATA timeout fired (RFC 5321 4.5.3.2).
    pub fn timed_out(&mut self) -> Step {
        let reply = Reply::timeout(&self.ctx.cfg.hostname);
        self.close_for(reply, Reason::Timeout)
    }

    /// The server is draining.
    pub fn shutting_down(&mut self) -> Step {
        let reply = Reply::shutting_down(&self.ctx.cfg.hostname);
        self.close_for(reply, Reason::ShuttingDown)
    }

    /// The shell ends the session with `reply` for `reason` (a slow client, a session
    /// over its time, a lockout).
    pub fn close_for(&mut self, reply: Reply, reason: Reason) -> Step {
        let next = self.ctx.close_for(&reply, reason);
        self.set(next).unwrap_or(Step::Close)
    }

    /// The reasons of the policy refusals the engine made since the last call (size,
    /// recipients, AUTH required), one per refused command, for the shell's log lines.
    /// Bounded by the input consumed: one entry per command line.
    pub fn take_refusals(&mut self) -> Vec<Reason> {
        std::mem::take(&mut self.ctx.refused)
    }

    /// Why the server closed the session, when it did (not for QUIT or a client gone).
    pub fn closed_for(&self) -> Option<Reason> {
        self.ctx.closed_for
    }

    /// Command and SASL lines completed so far: the shell restarts its command deadline
    /// when this moves (a command line must arrive whole within the command timeout).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Replaces the size and recipient caps (an identity with its own, known after AUTH).
    /// EHLO keeps advertising what it did; the new caps apply from the next MAIL.
    pub fn set_caps(&mut self, max_message_size: u64, max_recipients: usize) {
        self.ctx.cfg.max_message_size = max_message_size;
        self.ctx.cfg.max_recipients = max_recipients;
    }

    /// Our hostname, for the shell's own 421 texts.
    pub fn hostname(&self) -> &str {
        &self.ctx.cfg.hostname
    }

    /// True while reading a message (the shell uses the DATA timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Receiving { .. })
    }

    /// True while a mail transaction is open (after MAIL, through DATA) or a decision is
    /// pending: a draining server lets it finish before closing the session.
    pub fn in_transaction(&self) -> bool {
        matches!(
            self.phase,
            Phase::Transaction { .. } | Phase::Receiving { .. } | Phase::Deciding { .. }
        )
    }

    /// The client's EHLO/HELO name, for the Received header.
    pub fn helo(&self) -> Option<&str> {
        self.phase.helo().map(|h| h.name.as_str())
    }

    /// True once TLS is active.
    pub fn is_tls(&self) -> bool {
        self.ctx.tls
    }

    /// The authenticated username.
    pub fn identity(&self) -> Option<&str> {
        self.ctx.identity.as_deref()
    }

    /// True after EHLO, false after HELO or before either.
    pub fn esmtp(&self) -> bool {
        self.phase.helo().is_some_and(|h| h.esmtp)
    }
}

/// RFC 4954 4: the AUTH line may carry a 12288-octet initial response, so it
/// gets the larger cap.
fn starts_with_auth(buf: &[u8]) -> bool {
    buf.get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"AUTH "))
}
