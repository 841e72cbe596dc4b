//! Async SMTP client for one upstream connection: connect, TLS, EHLO, AUTH, and transactions
//! with per-recipient outcomes.
//!
//! This is postern's own engine rather than lettre: one refused recipient must not abort the
//! transaction for the others (RFC 5321 3.3), and "no reply after the final dot" must be told
//! apart from "refused" (BRIEF: no blind duplicates).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::smtp::reply_parser::{Capabilities, UpstreamReply};
use crate::upstream::conn::Conn;
use crate::upstream::error::{Error, Stage};

/// Bytes read from the body source and written to the upstream per step. The message is
/// streamed; it is never held whole in memory.
const CHUNK: usize = 64 * 1024;

/// Most commands written in one pipelined group before reading their replies (RFC 2920 3.1:
/// the client must not deadlock on a full window; replies of 100 commands fit any buffer).
const PIPELINE_GROUP: usize = 100;

/// RFC 5321 4.5.3.2.6: the client waits at least 10 minutes for the reply to the final dot.
const FINAL_DOT_MIN: Duration = Duration::from_secs(600);

/// How the connection is secured.
#[derive(Debug, Clone)]
pub enum Security {
    /// Plain text (loopback sinks, internal MTAs).
    Plain,
    /// STARTTLS, required (RFC 3207): no STARTTLS offered is [`Error::NoStartTls`].
    StartTls(TlsTarget),
    /// TLS from the first byte (RFC 8314).
    Implicit(TlsTarget),
}

/// What TLS needs: the client configuration and the name to verify (RFC 7817).
#[derive(Debug, Clone)]
pub struct TlsTarget {
    /// From [`crate::upstream::tls::client_config`].
    pub config: Arc<ClientConfig>,
    /// Verified against the certificate and sent as SNI when a DNS name.
    pub server_name: ServerName<'static>,
}

/// Upstream AUTH credentials. `Debug` hides the password.
#[derive(Clone)]
pub struct Credentials {
    /// Login name.
    pub username: String,
    /// Password (from `password` or `password_file`).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Client timeouts (RFC 5321 4.5.3.2).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Each command's reply, each write, and the TLS handshake (RFC: 5 minutes for most).
    pub command: Duration,
}

impl Timeouts {
    /// Wait for the reply to the final dot: at least 10 minutes (RFC 5321 4.5.3.2.6).
    pub fn final_dot(&self) -> Duration {
        self.command.max(FINAL_DOT_MIN)
    }
}

/// Everything needed to open a connection to one upstream.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The upstream's configured name (for errors and logs).
    pub name: String,
    /// Host name or IP address to connect to.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS mode and parameters.
    pub security: Security,
    /// Name sent in EHLO/HELO.
    pub helo_name: String,
    /// AUTH credentials, when configured.
    pub credentials: Option<Credentials>,
    /// Timeouts.
    pub timeouts: Timeouts,
}

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
    /// `prefix` plus body length, for the `SIZE=` parameter (RFC 1870).
    pub body_len: u64,
    /// The message has 8-bit content: send `BODY=8BITMIME` when offered (RFC 6152).
    pub body_8bit: bool,
    /// The envelope or headers need SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
}

impl fmt::Debug for Outgoing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("sender", &self.sender)
            .field("recipients", &self.recipients)
            .field("body_len", &self.body_len)
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
    Rejected(UpstreamReply),
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
}

impl Client {
    /// Connects, reads the greeting, says EHLO, does STARTTLS and AUTH as configured.
    pub async fn connect(s: &Settings) -> Result<Client, Error> {
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
        let mut conn = Conn::new(tcp, s.name.clone(), s.timeouts);
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
            conn.authenticate(&caps, credentials).await?;
        }
        Ok(Client {
            conn,
            caps,
            broken: false,
        })
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
    pub async fn send(&mut self, msg: &mut Outgoing<'_>) -> Result<Vec<RcptOutcome>, Error> {
        self.broken = true;
        let mail = self.mail_command(msg)?;
        let (mut outcomes, valid) = screen_recipients(msg.recipients);
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
            Some(reply) if reply.code != 354 => reject_accepted(&mut outcomes, &reply),
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
                    reject_accepted(&mut outcomes, &last);
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
            self.conn.write(b"QUIT\r\n", Stage::Rset).await?;
            self.conn.read_reply(Stage::Rset, limit).await
        })
        .await;
        let _ = timeout(limit, self.conn.stream.shutdown()).await;
    }

    /// Builds `MAIL FROM:<sender> [SIZE=n] [BODY=8BITMIME] [SMTPUTF8]`, or refuses locally.
    fn mail_command(&self, msg: &Outgoing<'_>) -> Result<String, Error> {
        let local = |code, enh, text: &str| Error::Reply {
            upstream: self.conn.name.clone(),
            stage: Stage::Mail,
            reply: UpstreamReply::local(code, enh, text),
        };
        if !address_ok(msg.sender) {
            return Err(local(
                501,
                (5, 1, 7),
                "sender address has characters SMTP cannot carry",
            ));
        }
        // RFC 6531 3.2: without SMTPUTF8 at the upstream, a message that needs it cannot go.
        if msg.smtputf8 && !self.caps.smtputf8 {
            return Err(local(553, (5, 6, 7), "upstream does not support SMTPUTF8"));
        }
        let mut line = format!("MAIL FROM:<{}>", msg.sender);
        // RFC 1870 4/6: declare the size; refuse here what the upstream announced it refuses.
        if let Some(limit) = self.caps.size {
            if limit > 0 && msg.body_len > limit {
                return Err(local(
                    552,
                    (5, 3, 4),
                    "message exceeds the upstream's size limit",
                ));
            }
            line.push_str(&format!(" SIZE={}", msg.body_len));
        }
        // RFC 6152 3: BODY=8BITMIME only where offered. Where it is not, the 8-bit message is
        // sent anyway (Postfix does the same; nearly every server copes), not downgraded.
        if msg.body_8bit && self.caps.eightbitmime {
            line.push_str(" BODY=8BITMIME");
        }
        if msg.smtputf8 {
            line.push_str(" SMTPUTF8");
        }
        Ok(line)
    }

    /// RFC 2920 3.1: MAIL, the RCPTs and DATA in as few writes as possible, then the
    /// replies in order. Returns the DATA reply.
    async fn envelope_pipelined(
        &mut self,
        mail: &str,
        valid: &[(usize, &str)],
        outcomes: &mut [RcptOutcome],
    ) -> Result<Option<UpstreamReply>, Error> {
        let mut commands = Vec::with_capacity(valid.len() + 2);
        commands.push((mail.to_owned(), Stage::Mail));
        commands.extend(
            valid
                .iter()
                .map(|(_, rcpt)| (format!("RCPT TO:<{rcpt}>"), Stage::Rcpt)),
        );
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
        valid: &[(usize, &str)],
        outcomes: &mut [RcptOutcome],
    ) -> Result<Option<UpstreamReply>, Error> {
        let reply = self.conn.command(mail, Stage::Mail).await?;
        if reply.code != 250 {
            return Err(self.conn.refused(Stage::Mail, reply));
        }
        let mut accepted = false;
        for &(i, rcpt) in valid {
            let reply = self
                .conn
                .command(&format!("RCPT TO:<{rcpt}>"), Stage::Rcpt)
                .await?;
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
    async fn send_body(&mut self, msg: &mut Outgoing<'_>) -> Result<UpstreamReply, Error> {
        let mut stuffer = DotStuffer::new();
        let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
        let mut chunk = vec![0; CHUNK];
        stuffer.push(msg.prefix, &mut out);
        loop {
            if out.len() >= CHUNK {
                self.conn.write(&out, Stage::Body).await?;
                out.clear();
            }
            let n = match msg.body.read(&mut chunk).await {
                Ok(n) => n,
                Err(source) => return Err(self.conn.io(Stage::Body, source)),
            };
            let Some(data) = chunk.get(..n).filter(|d| !d.is_empty()) else {
                break;
            };
            stuffer.push(data, &mut out);
        }
        stuffer.finish(&mut out);
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
            RcptResult::Rejected(UpstreamReply::local(501, (5, 1, 3), text))
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
            RcptResult::Rejected(reply)
        };
    }
}

/// A refusal at DATA or the final dot applies to every recipient accepted so far.
fn reject_accepted(outcomes: &mut [RcptOutcome], reply: &UpstreamReply) {
    for o in outcomes.iter_mut().filter(|o| o.result.is_accepted()) {
        o.result = RcptResult::Rejected(reply.clone());
    }
}

/// The final 250 is what each accepted recipient's delivery rests on: keep it for the log.
fn confirm_accepted(outcomes: &mut [RcptOutcome], reply: &UpstreamReply) {
    let text = reply.to_string();
    for o in outcomes.iter_mut().filter(|o| o.result.is_accepted()) {
        o.result = RcptResult::Accepted(text.clone());
    }
}

/// An address we can put between angle brackets without breaking the command line
/// (defence in depth: the inbound parser already validated it).
fn address_ok(addr: &str) -> bool {
    !addr
        .bytes()
        .any(|b| b.is_ascii_control() || matches!(b, b'<' | b'>' | b' '))
}

/// Dot-stuffing across chunk boundaries (RFC 5321 4.5.2): a line that begins with "." gets
/// one more. A line begins after LF, so even a stray bare LF followed by "." is stuffed and
/// cannot end the message early at a lenient upstream (smuggling, CVE-2023-51764 class).
#[derive(Debug)]
struct DotStuffer {
    /// The next byte starts a line.
    at_line_start: bool,
    /// The last two bytes pushed; starts as CRLF (the DATA line's end), so an empty
    /// message is just the terminator.
    last: [u8; 2],
}

impl DotStuffer {
    fn new() -> Self {
        DotStuffer {
            at_line_start: true,
            last: *b"\r\n",
        }
    }

    /// Appends `data`, stuffed, to `out`.
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        for piece in data.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start && piece.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(piece);
            self.at_line_start = piece.last() == Some(&b'\n');
        }
        match data {
            [] => {}
            [b] => self.last = [self.last[1], *b],
            [.., a, b] => self.last = [*a, *b],
        }
    }

    /// Makes sure the content ends with CRLF, so the terminator that follows is a line.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.last != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
            self.last = *b"\r\n";
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                let mut stuffer = DotStuffer::new();
                let mut out = Vec::new();
                stuffer.push(&input[..cut], &mut out);
                stuffer.push(&input[cut..], &mut out);
                stuffer.finish(&mut out);
                assert_eq!(out, *expected, "input {input:?} cut {cut}");
            }
        }
    }

    #[test]
    fn address_screening() {
        let rows = [
            ("a@b.example", true),
            ("", true),
            ("ü@b.example", true),
            ("a b@c", false),
            ("a@b>\r\nRSET", false),
            ("<a@b>", false),
            ("a\0@b", false),
        ];
        for (addr, ok) in rows {
            assert_eq!(address_ok(addr), ok, "{addr:?}");
        }
    }
}
