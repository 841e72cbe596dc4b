//! Async SMTP client for one upstream connection: connect, TLS, EHLO, AUTH, and transactions
//! with per-recipient outcomes.
//!
//! This is postern's own engine rather than lettre: one refused recipient must not abort the
//! transaction for the others (RFC 5321 3.3), and "no reply after the final dot" must be told
//! apart from "refused" (BRIEF: no blind duplicates).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::smtp::dsn::{RcptParams, Ret};
use crate::smtp::reply_parser::{Capabilities, UpstreamReply};
use crate::upstream::conn::Conn;
use crate::upstream::error::{Capability, Error, Stage};
use crate::upstream::oauth2::sasl::Target;
use crate::upstream::probe::StepObserver;
pub use crate::upstream::settings::{
    AuthSecret, Credentials, Security, Settings, Timeouts, TlsTarget,
};
use crate::upstream::wrap::{Sink, Wrapper};

/// Bytes read from the body source and written to the upstream per step. The message is
/// streamed; it is never held whole in memory.
const CHUNK: usize = 64 * 1024;

/// Most commands written in one pipelined group before reading their replies (RFC 2920 3.1:
/// the client must not deadlock on a full window; replies of 100 commands fit any buffer).
const PIPELINE_GROUP: usize = 100;

/// One message to send.
pub struct Outgoing<'a> {
    /// Envelope sender, without angle brackets; `""` is the null sender.
    pub sender: &'a str,
    /// Envelope recipients, without angle brackets.
    pub recipients: &'a [String],
    /// Bytes sent before the body (postern's Received header and other fix-ups).
    pub prefix: &'a [u8],
    /// The message as spooled (CRLF line endings), read once, in chunks.
    pub body: &'a mut (dyn AsyncRead + Unpin + Send),
    /// The octets sent between the 354 and the final dot, before dot-stuffing (the message
    /// size of RFC 1870 5): declared as `SIZE=` and checked against the upstream's limit.
    /// Compute it with [`transmitted_size`], plus what wrapping lines over 998 octets adds
    /// ([`crate::upstream::wrap`]).
    pub size: u64,
    /// The body has 8-bit content (or was declared so): it needs `BODY=8BITMIME`, so an
    /// upstream without 8BITMIME cannot take it (RFC 6152 3). A `prefix` with 8-bit octets
    /// (a UTF-8 recipient in the Received field) counts too; the client checks that itself.
    pub body_8bit: bool,
    /// The envelope or headers need SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// The client's DSN parameters, carried to an upstream that offers DSN (RFC 3461).
    pub dsn: DsnParams<'a>,
    /// Set by [`Client::send`]: the upstream offered DSN, so it received the parameters
    /// and notifies from further down; when it did not, a success notice asked for with
    /// NOTIFY=SUCCESS is the relay's to send (RFC 3461 4.1, "relayed").
    pub upstream_dsn: bool,
}

/// RFC 3461 parameters to relay (5.2.1: a relay passes them on to a server that offers
/// DSN, and sends none to one that does not).
#[derive(Debug, Clone, Copy, Default)]
pub struct DsnParams<'a> {
    /// `RET=` for MAIL FROM.
    pub ret: Option<Ret>,
    /// `ENVID=` for MAIL FROM, xtext.
    pub envid: Option<&'a str>,
    /// `NOTIFY=` and `ORCPT=` per recipient, in the order of [`Outgoing::recipients`]
    /// (shorter or empty: the rest have none).
    pub rcpts: &'a [RcptParams],
}

impl fmt::Debug for Outgoing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("sender", &self.sender)
            .field("recipients", &self.recipients)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    /// Index into [`Outgoing::recipients`].
    pub index: usize,
    /// Accepted, or the reply that refused it.
    pub result: RcptResult,
}

/// A recipient's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// The upstream took responsibility for this recipient; holds its reply to the final
    /// dot as text (e.g. `250 2.0.0 Ok: queued as 4F2A`), for the log and DSNs.
    Accepted(String),
    /// Refused at RCPT, or at DATA / the final dot (then every recipient accepted at RCPT
    /// carries that reply). 4xx: retry later; 5xx: bounce.
    Rejected(UpstreamReply, Stage),
}

impl RcptResult {
    /// Whether the recipient was accepted.
    pub fn is_accepted(&self) -> bool {
        matches!(self, RcptResult::Accepted(_))
    }
}

/// A connected, greeted (and, as configured, TLS-secured and authenticated) SMTP session.
#[derive(Debug)]
pub struct Client {
    conn: Conn,
    caps: Capabilities,
    /// Set when the dialogue may be out of step; such a client must not be reused.
    broken: bool,
    /// Counts this connection among its pool's open ones while it lives.
    counted: Option<OpenCount>,
    /// Transactions begun on this connection (MAIL sent).
    transactions: u32,
}

/// One open connection in its pool's count; dropped with the connection.
#[derive(Debug)]
pub(crate) struct OpenCount(Arc<AtomicUsize>);

impl OpenCount {
    /// Counts one more in `open`.
    pub(crate) fn new(open: &Arc<AtomicUsize>) -> OpenCount {
        open.fetch_add(1, Ordering::Relaxed);
        OpenCount(open.clone())
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Client {
    /// Connects, reads the greeting, says EHLO, does STARTTLS and AUTH as configured.
    pub async fn connect(s: &Settings) -> Result<Client, Error> {
        Client::connect_observed(s, None).await
    }

    /// [`Client::connect`] telling `observer` of each step (`postern probe`): the same
    /// session set-up as delivery, seen from outside.
    pub async fn probe(s: &Settings, observer: Arc<dyn StepObserver>) -> Result<Client, Error> {
        Client::connect_observed(s, Some(observer)).await
    }

    async fn connect_observed(
        s: &Settings,
        observer: Option<Arc<dyn StepObserver>>,
    ) -> Result<Client, Error> {
        if let Some(c) = &s.credentials
            && let AuthSecret::OAuth2(source) = &c.secret
        {
            // The login will need a token: have it (cached, or fetched now) before opening a
            // connection that would only be dropped while the token endpoint is down.
            source.token().await.map_err(|source| Error::Token {
                upstream: s.name.clone(),
                source,
            })?;
            if let Some(o) = &observer {
                o.token(source.token_url(), source.valid_for().await);
            }
        }
        let tcp = match timeout(
            s.timeouts.connect,
            TcpStream::connect((s.host.as_str(), s.port)),
        )
        .await
        {
            Err(_) => {
                return Err(Error::Timeout {
                    upstream: s.name.clone(),
                    stage: Stage::Connect,
                });
            }
            Ok(Err(source)) => {
                return Err(Error::Connect {
                    upstream: s.name.clone(),
                    source,
                });
            }
            Ok(Ok(tcp)) => tcp,
        };
        // Commands are small and answered one round trip at a time: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        if let (Some(o), Ok(peer)) = (&observer, tcp.peer_addr()) {
            o.connected(peer);
        }
        let mut conn = Conn::new(tcp, s.name.clone(), s.timeouts);
        conn.observer = observer;
        if let Security::Implicit(target) = &s.security {
            conn = conn.start_tls(target).await?;
        }
        // RFC 5321 4.3.1: 220 greets; 554 (or anything else) means no service.
        let greeting = conn.read_reply(Stage::Greeting, s.timeouts.command).await?;
        if greeting.code != 220 {
            return Err(conn.refused(Stage::Greeting, greeting));
        }
        let mut caps = conn.hello(&s.helo_name).await?;
        if let Security::StartTls(target) = &s.security {
            conn = conn.starttls(&caps, target).await?;
            // RFC 3207 4.2: forget what was learnt before TLS and say EHLO again.
            caps = conn.hello(&s.helo_name).await?;
        }
        if let Some(credentials) = &s.credentials {
            let target = Target {
                host: &s.host,
                port: s.port,
            };
            conn.authenticate(&caps, credentials, target).await?;
        }
        Ok(Client {
            conn,
            caps,
            broken: false,
            counted: None,
            transactions: 0,
        })
    }

    /// Transactions begun on this connection so far.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// Counts this connection in `open` for as long as it lives.
    pub(crate) fn count_in(&mut self, open: &Arc<AtomicUsize>) {
        self.counted = Some(OpenCount::new(open));
    }

    /// What the upstream advertised (after TLS, when TLS is used).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether this connection can carry another transaction.
    pub fn is_reusable(&self) -> bool {
        !self.broken
    }

    /// Sends one message and returns one outcome per recipient, in recipient order.
    ///
    /// `Err` means no recipient was delivered by this attempt (MAIL refused, connection
    /// failed, ...), or [`Error::MaybeDelivered`]. After `Err` the client must be dropped.
    /// [`Error::Unsupported`] and the local refusal of an unusable sender are the
    /// exceptions: they come before anything is written, and the client stays reusable.
    pub async fn send(&mut self, msg: &mut Outgoing<'_>) -> Result<Vec<RcptOutcome>, Error> {
        msg.upstream_dsn = self.caps.dsn;
        let mail = self.mail_command(msg)?;
        self.broken = true;
        self.transactions = self.transactions.saturating_add(1);
        let (mut outcomes, valid) = screen_recipients(msg.recipients);
        let valid: Vec<(usize, String)> = valid
            .into_iter()
            .map(|(i, rcpt)| (i, self.rcpt_command(msg, i, rcpt)))
            .collect();
        if valid.is_empty() {
            self.broken = false;
            return Ok(outcomes);
        }
        let data = if self.caps.pipelining {
            self.envelope_pipelined(&mail, &valid, &mut outcomes)
                .await?
        } else {
            self.envelope_serial(&mail, &valid, &mut outcomes).await?
        };
        let any_accepted = outcomes.iter().any(|o| o.result.is_accepted());
        match data {
            None => {}
            Some(reply) if reply.code != 354 => {
                reject_accepted(&mut outcomes, &reply, Stage::Data);
            }
            Some(_) if !any_accepted => {
                // A pipelined DATA that got 354 although no recipient was accepted (RFC 2920
                // says the server should answer 554): end the empty message; whatever the
                // upstream says, nobody can receive it.
                self.conn.write(b".\r\n", Stage::Body).await?;
                self.conn
                    .read_reply(Stage::FinalDot, self.conn.timeouts.final_dot())
                    .await?;
            }
            Some(_) => {
                let last = self.send_body(msg).await?;
                if last.is_positive() {
                    confirm_accepted(&mut outcomes, &last);
                } else {
                    reject_accepted(&mut outcomes, &last, Stage::FinalDot);
                }
            }
        }
        self.broken = false;
        Ok(outcomes)
    }

    /// RSET (RFC 5321 4.1.1.5): clears any transaction; also proves the connection alive
    /// before a pooled connection is reused.
    pub async fn reset(&mut self) -> Result<(), Error> {
        self.broken = true;
        let reply = self.conn.command("RSET", Stage::Rset).await?;
        if reply.code != 250 {
            return Err(self.conn.refused(Stage::Rset, reply));
        }
        self.broken = false;
        Ok(())
    }

    /// QUIT (RFC 5321 4.1.1.10), politely and briefly; errors are irrelevant at this point.
    pub async fn quit(mut self) {
        let limit = self.conn.timeouts.command.min(Duration::from_secs(10));
        let _ = timeout(limit, async {
            if let Some(o) = &self.conn.observer {
                o.sent(Stage::Rset, "QUIT");
            }
            self.conn.write(b"QUIT\r\n", Stage::Rset).await?;
            self.conn.read_reply(Stage::Rset, limit).await
        })
        .await;
        let _ = timeout(limit, self.conn.stream.shutdown()).await;
    }

    /// Builds `MAIL FROM:<sender> [SIZE=n] [BODY=8BITMIME] [SMTPUTF8] [RET=] [ENVID=]`, or
    /// refuses locally:
    /// [`Error::Unsupported`] when this upstream lacks what the message needs (another
    /// upstream of the route may have it), a permanent 501 when the sender cannot be written
    /// on a command line at all.
    fn mail_command(&self, msg: &Outgoing<'_>) -> Result<String, Error> {
        if !address_ok(msg.sender) {
            return Err(Error::Reply {
                upstream: self.conn.name.clone(),
                stage: Stage::Mail,
                reply: UpstreamReply::local(
                    501,
                    (5, 1, 7),
                    "sender address has characters SMTP cannot carry",
                ),
            });
        }
        if let Some(capability) = missing_capability(&self.caps, msg) {
            return Err(Error::Unsupported {
                upstream: self.conn.name.clone(),
                capability,
            });
        }
        let mut line = format!("MAIL FROM:<{}>", msg.sender);
        // RFC 1870 4: declare the size whenever SIZE is offered (and only then).
        if self.caps.size.is_some() {
            line.push_str(&format!(" SIZE={}", msg.size));
        }
        // RFC 6152 3: 8-bit content is announced; `missing_capability` made sure it may be.
        if needs_8bitmime(msg) {
            line.push_str(" BODY=8BITMIME");
        }
        if msg.smtputf8 {
            line.push_str(" SMTPUTF8");
        }
        // RFC 3461 4.3, 4.4, 5.2.1: only to a server that offers DSN.
        if self.caps.dsn {
            if let Some(ret) = msg.dsn.ret {
                line.push_str(&format!(" RET={}", ret.as_str()));
            }
            if let Some(envid) = msg.dsn.envid {
                line.push_str(&format!(" ENVID={envid}"));
            }
        }
        Ok(line)
    }

    /// `RCPT TO:<rcpt>`, with NOTIFY and ORCPT when the upstream offers DSN (RFC 3461
    /// 4.1, 4.2, 5.2.1).
    fn rcpt_command(&self, msg: &Outgoing<'_>, index: usize, rcpt: &str) -> String {
        let mut line = format!("RCPT TO:<{rcpt}>");
        let params = msg.dsn.rcpts.get(index).filter(|_| self.caps.dsn);
        if let Some(params) = params {
            if let Some(notify) = params.notify {
                line.push_str(&format!(" NOTIFY={notify}"));
            }
            if let Some(orcpt) = &params.orcpt {
                line.push_str(&format!(" ORCPT={}", orcpt.to_param()));
            }
        }
        line
    }

    /// RFC 2920 3.1: MAIL, the RCPTs and DATA in as few writes as possible, then the
    /// replies in order. Returns the DATA reply.
    async fn envelope_pipelined(
        &mut self,
        mail: &str,
        valid: &[(usize, String)],
        outcomes: &mut [RcptOutcome],
    ) -> Result<Option<UpstreamReply>, Error> {
        let mut commands = Vec::with_capacity(valid.len() + 2);
        commands.push((mail.to_owned(), Stage::Mail));
        commands.extend(valid.iter().map(|(_, rcpt)| (rcpt.clone(), Stage::Rcpt)));
        commands.push(("DATA".to_owned(), Stage::Data));
        let mut replies = Vec::with_capacity(commands.len());
        for group in commands.chunks(PIPELINE_GROUP) {
            let batch: String = group
                .iter()
                .map(|(line, _)| format!("{line}\r\n"))
                .collect();
            let stage = group.first().map_or(Stage::Rcpt, |(_, stage)| *stage);
            self.conn.write(batch.as_bytes(), stage).await?;
            for (_, stage) in group {
                replies.push(
                    self.conn
                        .read_reply(*stage, self.conn.timeouts.command)
                        .await?,
                );
            }
        }
        let mut replies = replies.into_iter();
        let mail_reply = replies
            .next()
            .unwrap_or_else(|| UpstreamReply::local(451, (4, 3, 0), ""));
        if mail_reply.code != 250 {
            return Err(self.conn.refused(Stage::Mail, mail_reply));
        }
        for (&(i, _), reply) in valid.iter().zip(replies.by_ref()) {
            record_rcpt(outcomes, i, reply);
        }
        Ok(replies.next())
    }

    /// Without PIPELINING: one command, one reply. DATA is not sent when no recipient was
    /// accepted. Returns the DATA reply, if DATA was sent.
    async fn envelope_serial(
        &mut self,
        mail: &str,
        valid: &[(usize, String)],
        outcomes: &mut [RcptOutcome],
    ) -> Result<Option<UpstreamReply>, Error> {
        let reply = self.conn.command(mail, Stage::Mail).await?;
        if reply.code != 250 {
            return Err(self.conn.refused(Stage::Mail, reply));
        }
        let mut accepted = false;
        for (i, rcpt) in valid {
            let i = *i;
            let reply = self.conn.command(rcpt, Stage::Rcpt).await?;
            accepted |= reply.is_positive();
            record_rcpt(outcomes, i, reply);
        }
        if !accepted {
            return Ok(None);
        }
        Ok(Some(self.conn.command("DATA", Stage::Data).await?))
    }

    /// Streams prefix and body, dot-stuffed, then the final dot; returns the final reply.
    /// From the moment the final dot is written, a failure is [`Error::MaybeDelivered`].
    ///
    /// Lines over 998 octets are wrapped on the way ([`Wrapper`]); `msg.size` must count
    /// the octets that adds (RFC 1870 5).
    async fn send_body(&mut self, msg: &mut Outgoing<'_>) -> Result<UpstreamReply, Error> {
        let mut wrapper = Wrapper::new();
        let mut stuffer = DotStuffer::new(Vec::with_capacity(CHUNK + CHUNK / 8));
        let mut chunk = vec![0; CHUNK];
        wrapper.push(msg.prefix, &mut stuffer);
        loop {
            if stuffer.out.len() >= CHUNK {
                self.conn.write(&stuffer.out, Stage::Body).await?;
                stuffer.out.clear();
            }
            let n = match msg.body.read(&mut chunk).await {
                Ok(n) => n,
                Err(source) => return Err(self.conn.io(Stage::Body, source)),
            };
            let Some(data) = chunk.get(..n).filter(|d| !d.is_empty()) else {
                break;
            };
            wrapper.push(data, &mut stuffer);
        }
        wrapper.finish(&mut stuffer);
        let out = stuffer.finish();
        self.conn.write(&out, Stage::Body).await?;
        // RFC 5321 4.1.1.4: the terminator, alone, so the "maybe" window is just these bytes.
        let maybe = |e: Error| Error::MaybeDelivered {
            upstream: e.upstream().to_owned(),
            cause: e.to_string(),
        };
        self.conn
            .write(b".\r\n", Stage::FinalDot)
            .await
            .map_err(maybe)?;
        self.conn
            .read_reply(Stage::FinalDot, self.conn.timeouts.final_dot())
            .await
            .map_err(maybe)
    }
}

/// What `caps` lacks for `msg`, checked in this order: SMTPUTF8, 8BITMIME, SIZE.
fn missing_capability(caps: &Capabilities, msg: &Outgoing<'_>) -> Option<Capability> {
    // RFC 6531 3.2: a message that needs SMTPUTF8 must not go to a server without it; the
    // RFC leaves the client to bounce it or to try another server, which is what the
    // delivery layer does with this answer.
    if msg.smtputf8 && !caps.smtputf8 {
        return Some(Capability::SmtpUtf8);
    }
    // RFC 6152 3: 8-bit content must not go to a server without 8BITMIME. The client may
    // either convert it to 7 bits (MIME quoted-printable/base64) or not relay it (a
    // non-delivery report). postern does not convert (that would rewrite, and break the
    // signatures of, a message it only relays): it tries the next upstream instead, and
    // reports non-delivery when none has 8BITMIME.
    if needs_8bitmime(msg) && !caps.eightbitmime {
        return Some(Capability::EightBitMime);
    }
    // RFC 1870 6: a message over the server's fixed maximum would be refused with 552;
    // SIZE 0 means no fixed maximum (RFC 1870 3).
    match caps.size {
        Some(limit) if limit > 0 && msg.size > limit => Some(Capability::Size {
            size: msg.size,
            limit,
        }),
        _ => None,
    }
}

/// Whether the content has (or was declared to have) octets over 127: the body, or the
/// prefix postern adds (RFC 6152 3 is about everything after DATA).
fn needs_8bitmime(msg: &Outgoing<'_>) -> bool {
    msg.body_8bit || !msg.prefix.is_ascii()
}

/// The octets the client sends between the 354 and the final dot, before dot-stuffing:
/// `prefix`, the body, and the CRLF [`DotStuffer::finish`] adds when the content does not
/// end in one. Lines over 998 octets add what wrapping inserts: the caller adds that
/// (recorded at acceptance, [`crate::spool::Envelope::wrap_octets`]). RFC 1870 5 defines the message size this way ("including CR-LF pairs, but
/// not the SMTP DATA command's terminating dot or doubled quoting dots").
///
/// `body_tail` is the body's last two octets (fewer only when the body is shorter).
pub fn transmitted_size(prefix: &[u8], body_len: u64, body_tail: &[u8]) -> u64 {
    let content = (prefix.len() as u64).saturating_add(body_len);
    let last = shift_last(shift_last(*b"\r\n", prefix), body_tail);
    if last == *b"\r\n" {
        content
    } else {
        content.saturating_add(2)
    }
}

/// Refuses locally the recipients that cannot be written as a command; returns the
/// outcome list (refused rows filled in) and the (index, address) pairs to send.
fn screen_recipients(recipients: &[String]) -> (Vec<RcptOutcome>, Vec<(usize, &str)>) {
    let mut outcomes = Vec::with_capacity(recipients.len());
    let mut valid = Vec::with_capacity(recipients.len());
    for (index, rcpt) in recipients.iter().enumerate() {
        let result = if address_ok(rcpt) && !rcpt.is_empty() {
            valid.push((index, rcpt.as_str()));
            // Provisional: replaced by the RCPT reply.
            RcptResult::Accepted(String::new())
        } else {
            let text = "recipient address has characters SMTP cannot carry";
            RcptResult::Rejected(UpstreamReply::local(501, (5, 1, 3), text), Stage::Rcpt)
        };
        outcomes.push(RcptOutcome { index, result });
    }
    (outcomes, valid)
}

/// Stores a RCPT reply as the recipient's outcome (RFC 5321 4.1.1.3: 250/251 accept).
fn record_rcpt(outcomes: &mut [RcptOutcome], index: usize, reply: UpstreamReply) {
    if let Some(o) = outcomes.get_mut(index) {
        o.result = if reply.is_positive() {
            RcptResult::Accepted(reply.to_string())
        } else {
            RcptResult::Rejected(reply, Stage::Rcpt)
        };
    }
}

/// A refusal at DATA or the final dot (`stage`) applies to every recipient accepted so far.
fn reject_accepted(outcomes: &mut [RcptOutcome], reply: &UpstreamReply, stage: Stage) {
    for o in outcomes.iter_mut().filter(|o| o.result.is_accepted()) {
        o.result = RcptResult::Rejected(reply.clone(), stage);
    }
}

/// The final 250 is what each accepted recipient's delivery rests on: keep it for the log.
fn confirm_accepted(outcomes: &mut [RcptOutcome], reply: &UpstreamReply) {
    let text = reply.to_string();
    for o in outcomes.iter_mut().filter(|o| o.result.is_accepted()) {
        o.result = RcptResult::Accepted(text.clone());
    }
}

/// An address we can put between angle brackets without breaking the command line or
/// changing its meaning (defence in depth: the inbound parser already validated it).
///
/// Addresses come from the spool as `Mailbox` displays them: a local part that is not a
/// dot-string is written as a Quoted-string (RFC 5321 4.1.2), and inside one, spaces, `<`,
/// `>`, `@` and `,` are ordinary characters (`"john doe"@example.net`). What SMTP cannot
/// carry at all is a control character (CR, LF, NUL, ... and DEL): qtextSMTP and
/// quoted-pairSMTP are %d32-126 (plus UTF-8, RFC 6531 3.3). Outside the quotes, a space or an
/// angle bracket would end the path early and turn the rest into parameters, so it is
/// refused there; so is an unterminated quote.
fn address_ok(addr: &str) -> bool {
    if addr.chars().any(char::is_control) {
        return false;
    }
    let rest = match addr.strip_prefix('"') {
        Some(quoted) => match closing_quote(quoted) {
            Some(end) => quoted.get(end + 1..).unwrap_or(""),
            None => return false,
        },
        None => addr,
    };
    !rest.contains(['<', '>', ' ', '"'])
}

/// The byte index of the quote that closes a Quoted-string whose opening quote was just
/// stripped; a backslash escapes the next character (RFC 5321 4.1.2 quoted-pairSMTP).
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// Dot-stuffing across chunk boundaries (RFC 5321 4.5.2): a line that begins with "." gets
/// one more. A line begins after LF, so even a stray bare LF followed by "." is stuffed and
/// cannot end the message early at a lenient upstream (smuggling, CVE-2023-51764 class).
///
/// Fed by a [`Wrapper`], whose pieces never hold an LF before their last octet: a piece
/// starts a line exactly when the one before it ended with LF, so only first octets need a
/// look (no second scan of the message).
#[derive(Debug)]
struct DotStuffer {
    /// The stuffed output not yet written.
    out: Vec<u8>,
    /// The next byte starts a line.
    at_line_start: bool,
    /// The last two bytes pushed; starts as CRLF (the DATA line's end), so an empty
    /// message is just the terminator.
    last: [u8; 2],
}

impl DotStuffer {
    fn new(out: Vec<u8>) -> Self {
        DotStuffer {
            out,
            at_line_start: true,
            last: *b"\r\n",
        }
    }

    /// Makes sure the content ends with CRLF, so the terminator that follows is a line;
    /// returns the output.
    fn finish(mut self) -> Vec<u8> {
        if self.last != *b"\r\n" {
            self.out.extend_from_slice(b"\r\n");
        }
        self.out
    }
}

impl Sink for DotStuffer {
    fn put(&mut self, piece: &[u8]) {
        let Some(&end) = piece.last() else {
            return;
        };
        if self.at_line_start && piece.first() == Some(&b'.') {
            self.out.push(b'.');
        }
        self.out.extend_from_slice(piece);
        self.at_line_start = end == b'\n';
        self.last = shift_last(self.last, piece);
    }
}

/// The last two octets after `data` follows `last`.
fn shift_last(last: [u8; 2], data: &[u8]) -> [u8; 2] {
    match data {
        [] => last,
        [b] => [last[1], *b],
        [.., a, b] => [*a, *b],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `send_body` writes between the 354 and the final dot for these pieces.
    fn wrap_and_stuff(pieces: &[&[u8]]) -> Vec<u8> {
        let mut wrapper = Wrapper::new();
        let mut stuffer = DotStuffer::new(Vec::new());
        for piece in pieces {
            wrapper.push(piece, &mut stuffer);
        }
        wrapper.finish(&mut stuffer);
        stuffer.finish()
    }

    /// Removes the transparency dots (RFC 5321 4.5.2) from `wire`, checking that no line
    /// is then over 998 octets (RFC 5321 4.5.3.1.6 does not count the doubled dot).
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in wire.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_prefix(b".").unwrap_or(line);
            let content = line.strip_suffix(b"\r\n").unwrap_or(line);
            assert!(
                content.len() <= crate::upstream::wrap::MAX_LINE,
                "{}",
                content.len()
            );
            out.extend_from_slice(line);
        }
        out
    }

    /// Wrapped pieces and dot-stuffing together: a long line that starts with "." is
    /// stuffed once, its continuation lines (which start with the inserted space) never,
    /// and un-stuffing gives exactly the wrapped message, at every split point.
    #[test]
    fn dot_stuffing_of_wrapped_lines() {
        let dots = vec![b'.'; 2500];
        let input = [b"Subject: x\r\n\r\n".as_slice(), &dots, b"\r\n.\r\n"].concat();
        let mut wrapped = Vec::new();
        let mut wrapper = Wrapper::new();
        wrapper.push(&input, &mut wrapped);
        wrapper.finish(&mut wrapped);
        let expected_wrapped = [
            b"Subject: x\r\n\r\n".as_slice(),
            &dots[..998],
            b"\r\n ",
            &dots[..997],
            b"\r\n ",
            &dots[..505],
            b"\r\n.\r\n",
        ]
        .concat();
        assert_eq!(wrapped, expected_wrapped);
        for cut in (0..=input.len()).step_by(7) {
            let wire = wrap_and_stuff(&[&input[..cut], &input[cut..]]);
            let stuffed_lines = wire
                .split_inclusive(|&b| b == b'\n')
                .filter(|l| l.starts_with(b".."))
                .count();
            assert_eq!(stuffed_lines, 2, "cut {cut}");
            assert_eq!(unstuff(&wire), expected_wrapped, "cut {cut}");
        }
    }

    /// Un-stuffing the output of one `push` of the whole input must equal what comes out when
    /// the input is pushed in two pieces, at every split point (RFC 5321 4.5.2).
    #[test]
    fn dot_stuffing_at_every_split_point() {
        let rows: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b".", b"..\r\n"),
            (b"a\r\n.b\r\n", b"a\r\n..b\r\n"),
            (b".\r\n.\r\n", b"..\r\n..\r\n"),
            (b"a.b\r\n..c", b"a.b\r\n...c\r\n"),
            (b"bare\n.lf\r\n", b"bare\n..lf\r\n"),
            (b"cr\r.not a line start\r\n", b"cr\r.not a line start\r\n"),
            (b"x\r", b"x\r\r\n"),
            (b"x\r\n", b"x\r\n"),
        ];
        for (input, expected) in rows {
            for cut in 0..=input.len() {
                let out = wrap_and_stuff(&[&input[..cut], &input[cut..]]);
                assert_eq!(out, *expected, "input {input:?} cut {cut}");
            }
        }
    }

    /// What `address_ok` lets through is exactly what survives the trip through angle
    /// brackets: quoted local parts keep their spaces and brackets (RFC 5321 4.1.2);
    /// controls never pass; outside quotes nothing may end the path early.
    #[test]
    fn address_screening() {
        let rows = [
            ("a@b.example", true),
            ("", true),
            ("postmaster", true),
            ("ü@b.example", true),
            ("\"john doe\"@example.net", true),
            ("\"<odd>\"@example.net", true),
            ("\"a\\\"b\"@example.net", true),
            ("\"a\\\\\"@example.net", true),
            ("\"a,b@c\"@example.net", true),
            ("\"é ü\"@example.net", true),
            ("a b@c", false),
            ("a@b>\r\nRSET", false),
            ("<a@b>", false),
            ("a@b> SIZE=1", false),
            ("a\0@b", false),
            ("\"a\0b\"@c", false),
            ("\"a\r\nRSET\"@c", false),
            ("\"tab\there\"@c", false),
            ("\"del\u{7f}\"@c", false),
            ("\"unterminated@c", false),
            ("\"a\\\"@c", false),
            ("\"a\"@c> SIZE=1", false),
            ("\"a\" b\"@c", false),
            ("a\"b@c", false),
            ("a@\u{85}b", false),
        ];
        for (addr, ok) in rows {
            assert_eq!(address_ok(addr), ok, "{addr:?}");
        }
    }

    /// `transmitted_size` counts exactly the octets the stuffer emits, before stuffing: a
    /// stuffer over (prefix, body) whose dots are then removed again yields that many.
    #[test]
    fn transmitted_size_matches_the_stuffer() {
        let rows: &[(&[u8], &[u8], u64)] = &[
            (b"", b"", 0),
            (b"", b"x\r\n", 3),
            (b"", b"x", 3),
            (b"", b"x\r", 4),
            (b"", b"\n", 3),
            (b"", b"\r\n", 2),
            (b"Received: r\r\n", b"", 13),
            (b"Received: r\r\n", b"body\r\n", 19),
            (b"Received: r\r\n", b".dots\r\n..\r\n", 24),
            (b"Received: r\r\n", b"no end", 21),
            (b"Received: r\r", b"\n", 13),
            (b"P\r\n", b"\n", 6),
        ];
        for &(prefix, body, expected) in rows {
            let tail = &body[body.len().saturating_sub(2)..];
            let size = transmitted_size(prefix, body.len() as u64, tail);
            assert_eq!(size, expected, "{prefix:?} {body:?}");
            let out = wrap_and_stuff(&[prefix, body]);
            let unstuffed = out
                .split_inclusive(|&b| b == b'\n')
                .map(|line| line.strip_prefix(b".").unwrap_or(line).len() as u64)
                .sum::<u64>();
            assert_eq!(unstuffed, expected, "{prefix:?} {body:?}");
        }
    }
}
