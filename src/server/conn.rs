//! One connection: drives an [`smtp::session::Session`] over a plain or TLS stream, carries
//! out its events (policy questions, spool writes, STARTTLS) and enforces timeouts.
//!
//! Memory per idle connection is kept small: the read buffer is allocated only while bytes
//! are waiting, and the spool writer only during DATA.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use crate::config::schema::{AuthMode, BareLineEndings, ListenerTls};
use crate::message::{self, HeaderScan, Trace};
use crate::policy::{Identity, MailRefusal, networks};
use crate::server::{ListenerInfo, Shared};
use crate::shutdown::Shutdown;
use crate::smtp::command::BodyType;
use crate::smtp::data::BareLf;
use crate::smtp::reply::Reply;
use crate::smtp::session::{
    AuthPolicy, Envelope, Question, Session, SessionConfig, Step, TlsOffer, Verdict,
};
use crate::spool::{self, SpoolWriter};
use crate::stream::Stream;
use crate::telemetry::events::{self, MessageSummary};
use crate::users::AuthCheck;

/// How many bytes one read may add to the buffer.
const READ_CHUNK: usize = 16 * 1024;

/// The longest TLS handshake a refused client on an implicit-TLS listener gets before its
/// `421`/`554` (the configured `timeouts.tls_handshake` if shorter).
const REFUSAL_HANDSHAKE: Duration = Duration::from_secs(5);

/// Why a session ended early; logged at debug, never sent to anyone.
#[derive(Debug)]
enum End {
    Io(io::Error),
    Eof,
    Tls(String),
    WriteTimeout,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Io(e) => write!(f, "i/o error: {e}"),
            End::Eof => f.write_str("client closed the connection"),
            End::Tls(e) => write!(f, "TLS: {e}"),
            End::WriteTimeout => f.write_str("client stopped reading replies (write timed out)"),
        }
    }
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

/// The transaction-scoped state the shell keeps beside the engine's.
#[derive(Debug, Default)]
struct Tx {
    /// The envelope sender after policy (and rewrite).
    sender: String,
    /// The spool file being written, during DATA.
    writer: Option<SpoolWriter>,
    /// A spool write failed: the message will be refused with 451 at the end.
    write_failed: bool,
    /// Watches the header section for Date / Message-ID.
    scan: HeaderScan,
    /// The body has an octet above 127, declared or not (RFC 6152: the upstream must then
    /// be told `BODY=8BITMIME`, or not be given the message).
    eight_bit: bool,
}

/// One client connection.
pub struct Conn {
    session: Session,
    stream: Stream,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    listener: Arc<ListenerInfo>,
    peer: SocketAddr,
    identity: Identity,
    /// The listener's allowlist vouches for this client (non-empty list containing it).
    allowlisted: bool,
    tx: Tx,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("listener", &self.listener.name)
            .field("peer", &self.peer)
            .finish()
    }
}

/// Serves one accepted connection to the end. `refusal` is a reply to send instead of the
/// greeting (allowlist, connection caps), after the TLS handshake on implicit listeners.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    listener: Arc<ListenerInfo>,
    refusal: Option<Reply>,
    shutdown: Shutdown,
) {
    let _ = tcp.set_nodelay(true);
    let implicit = listener.tls == ListenerTls::Implicit;
    // A refused client is owed one reply, not a patient handshake: it gets a short one.
    let limit = match refusal {
        Some(_) => REFUSAL_HANDSHAKE.min(shared.timeouts.tls_handshake.get()),
        None => shared.timeouts.tls_handshake.get(),
    };
    let stream = if implicit {
        match handshake(tcp, &shared, limit).await {
            Ok(tls) => Stream::from(tls),
            Err(e) => {
                debug!(error = %e, "TLS handshake failed");
                return;
            }
        }
    } else {
        Stream::Plain(tcp)
    };
    let ip = networks::canonical(peer.ip());
    let identity = shared.policy.connect_identity(ip);
    let allowlisted = !listener.allow_networks.is_empty()
        && networks::allowed(&listener.allow_networks, ip)
        || matches!(identity, Identity::Device(_));
    let session = Session::new(session_config(&shared, &listener), implicit);
    let mut conn = Conn {
        session,
        stream,
        buf: Vec::new(),
        shared,
        listener,
        peer,
        identity,
        allowlisted,
        tx: Tx::default(),
    };
    let end = conn.run(refusal, shutdown).await;
    if let Some(writer) = conn.tx.writer.take() {
        writer.abort();
    }
    match end {
        Ok(()) => debug!("session closed"),
        Err(e) => debug!(reason = %e, "session ended"),
    }
}

fn session_config(shared: &Shared, listener: &ListenerInfo) -> SessionConfig {
    SessionConfig {
        hostname: shared.hostname.clone(),
        tls: match listener.tls {
            ListenerTls::None => TlsOffer::None,
            ListenerTls::Starttls => TlsOffer::StartTls,
            ListenerTls::Implicit => TlsOffer::Implicit,
        },
        auth: match listener.auth {
            AuthMode::Required => AuthPolicy::Required,
            AuthMode::Optional => AuthPolicy::Optional,
            AuthMode::None => AuthPolicy::None,
        },
        max_message_size: shared.max_message_size,
        max_recipients: shared.max_recipients,
        max_errors: shared.max_errors,
        bare_line_endings: match shared.bare_line_endings {
            BareLineEndings::Reject => BareLf::Reject,
            BareLineEndings::Normalise => BareLf::Normalise,
        },
    }
}

async fn handshake(
    tcp: TcpStream,
    shared: &Shared,
    limit: Duration,
) -> Result<TlsStream<TcpStream>, End> {
    let Some(cfg) = shared.tls.clone() else {
        return Err(End::Tls("no TLS configuration".into()));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(End::Tls(e.to_string())),
        Err(_) => Err(End::Tls("handshake timed out".into())),
    }
}

impl Conn {
    async fn run(&mut self, refusal: Option<Reply>, shutdown: Shutdown) -> Result<(), End> {
        if let Some(reply) = refusal {
            let step = self.session.refuse(reply);
            return self.perform(step).await.map(|_| ());
        }
        self.session.greet();
        loop {
            if self.process_input(&shutdown).await? {
                return Ok(());
            }
            self.flush().await?;
            let wait = if self.session.in_data() {
                self.shared.timeouts.data.get()
            } else {
                self.shared.timeouts.command.get()
            };
            tokio::select! {
                read = tokio::time::timeout(wait, self.read_more()) => match read {
                    Ok(Ok(0)) => return Err(End::Eof),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(End::Io(e)),
                    Err(_) => {
                        info!(timeout = ?wait, "session timed out");
                        let step = self.session.timed_out();
                        return self.perform(step).await.map(|_| ());
                    }
                },
                // Draining: a session between transactions is told 421 now; one inside a
                // transaction may finish it within the grace period (Postfix does the same).
                () = shutdown.stop.cancelled(), if !self.session.in_transaction() => {
                    let step = self.session.shutting_down();
                    return self.perform(step).await.map(|_| ());
                }
                () = shutdown.force.cancelled() => {
                    let step = self.session.shutting_down();
                    return self.perform(step).await.map(|_| ());
                }
            }
        }
    }

    /// Reads once into the buffer; returns the byte count (0 = EOF).
    async fn read_more(&mut self) -> io::Result<usize> {
        if let Stream::Plain(tcp) = &self.stream {
            // Wait for readiness before reserving buffer space, so an idle connection
            // holds no read buffer at all.
            tcp.readable().await?;
        }
        self.buf.reserve(READ_CHUNK);
        let spare = READ_CHUNK.min(self.buf.capacity() - self.buf.len());
        let mut limited = (&mut self.stream).take(spare as u64);
        limited.read_buf(&mut self.buf).await
    }

    /// Writes pending replies. A client that stops reading gets the command timeout for its
    /// socket to drain (as Postfix's `smtpd_timeout` covers writes too), so it cannot hold
    /// a connection slot forever by pipelining commands and never reading the replies.
    async fn flush(&mut self) -> Result<(), End> {
        let out = self.session.output();
        if out.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(out);
        let stream = &mut self.stream;
        let write = async {
            stream.write_all(&bytes).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.shared.timeouts.command.get(), write).await {
            Ok(written) => written?,
            Err(_) => return Err(End::WriteTimeout),
        }
        // Give the (now empty) allocation back to the engine for the next replies unless
        // it grew large (a long EHLO or HELP reply), so idle sessions stay small.
        let mut bytes = bytes;
        bytes.clear();
        if bytes.capacity() <= 1024 {
            *self.session.output() = bytes;
        }
        Ok(())
    }

    /// Feeds buffered input to the engine until it needs more; returns true when the
    /// session is over.
    async fn process_input(&mut self, shutdown: &Shutdown) -> Result<bool, End> {
        let mut pos = 0;
        let result = loop {
            // Draining: once a transaction is over, commands pipelined behind it are left
            // unread, and the caller answers 421 instead of opening another transaction.
            if shutdown.stop.is_cancelled() && !self.session.in_transaction() {
                break Ok(false);
            }
            let (used, step) = self.session.advance(&self.buf[pos..]);
            pos += used;
            self.spool_body();
            match self.perform(step).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::NeedInput) => break Ok(false),
                Ok(Flow::Closed) => break Ok(true),
                Ok(Flow::StartTls) => {
                    // RFC 3207 section 4 / CVE-2011-0411: anything the client pipelined
                    // after STARTTLS was sent in plain text and must not be acted on.
                    self.buf = Vec::new();
                    self.start_tls().await?;
                    return Ok(false);
                }
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..pos.min(self.buf.len()));
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
        result
    }

    /// Appends body bytes the engine decoded to the spool file.
    fn spool_body(&mut self) {
        let body = self.session.take_body();
        if body.is_empty() {
            return;
        }
        if let Some(writer) = self.tx.writer.as_mut() {
            self.tx.scan.feed(body);
            self.tx.eight_bit = self.tx.eight_bit || !body.is_ascii();
            if !self.tx.write_failed
                && let Err(e) = writer.write(body)
            {
                warn!(error = %e, "spool write failed");
                self.tx.write_failed = true;
            }
        }
        body.clear();
    }

    async fn start_tls(&mut self) -> Result<(), End> {
        self.flush().await?;
        let Some(tcp) = self.stream.take_plain() else {
            return Err(End::Tls(
                "STARTTLS on a stream that is not plain TCP".into(),
            ));
        };
        let tls = handshake(tcp, &self.shared, self.shared.timeouts.tls_handshake.get()).await?;
        self.stream = Stream::from(tls);
        self.session.tls_established();
        Ok(())
    }

    async fn perform(&mut self, step: Step) -> Result<Flow, End> {
        match step {
            Step::NeedInput => Ok(Flow::NeedInput),
            Step::Close => {
                self.flush().await?;
                // A TLS close_notify is a write too: bounded like the replies.
                let close = self.stream.shutdown();
                let _ = tokio::time::timeout(self.shared.timeouts.command.get(), close).await;
                Ok(Flow::Closed)
            }
            Step::StartTls => Ok(Flow::StartTls),
            Step::DiscardMessage(refusal) => {
                let tx = std::mem::take(&mut self.tx);
                let size = tx.writer.as_ref().map_or(0, SpoolWriter::written);
                if let Some(writer) = tx.writer {
                    writer.abort();
                }
                // The one summary line per message covers refusals too, so an admin can
                // see why a device's mail never arrived.
                let outcome = format!("refused: {} {}", refusal.code(), refusal.text());
                events::message(&MessageSummary {
                    queue_id: "-",
                    listener: &self.listener.name,
                    client_ip: networks::canonical(self.peer.ip()),
                    identity: self.identity.label().as_deref(),
                    sender: &tx.sender,
                    recipients: 0,
                    size,
                    outcome: &outcome,
                });
                Ok(Flow::Continue)
            }
            Step::Decide(question) => {
                let verdict = self.decide(question).await?;
                let next = self.session.answer(verdict);
                // RFC 2920: the engine stopped for the decision, not for lack of input, so
                // commands the client pipelined behind this one are still in the buffer and
                // must be fed now; reading first would stall a client waiting for replies.
                if next == Step::NeedInput {
                    return Ok(Flow::Continue);
                }
                Box::pin(self.perform(next)).await
            }
        }
    }

    async fn decide(&mut self, question: Question) -> Result<Verdict, End> {
        Ok(match question {
            Question::Auth {
                authzid,
                username,
                password,
                ..
            } => {
                // RFC 4616 2: an authorization identity other than the authentication
                // identity asks to act as someone else; no account here may do that.
                if !authzid.is_empty() && authzid != username {
                    warn!(user = %username, authzid = %authzid, "AUTH asked for another authorization identity");
                    return Ok(Verdict::Reject(Reply::auth_failed()));
                }
                // argon2 may take tens of milliseconds: send what is pending first.
                self.flush().await?;
                self.auth(&username, &password).await
            }
            Question::Mail { from, .. } => self.mail(&from.to_string()),
            Question::Rcpt { .. } => Verdict::Accept,
            Question::Data => self.data(),
            Question::Message { envelope } => {
                self.flush().await?;
                self.message(envelope).await
            }
        })
    }

    async fn auth(&mut self, username: &str, password: &str) -> Verdict {
        match self.shared.users.verify(username, password).await {
            AuthCheck::Valid => {
                info!(user = username, "authenticated");
                self.identity = Identity::User(username.to_owned());
                Verdict::Authenticated
            }
            AuthCheck::Invalid => {
                // The password is never logged, only that this user failed.
                warn!(user = username, "authentication failed");
                Verdict::Reject(Reply::auth_failed())
            }
            AuthCheck::Busy => {
                // RFC 4954 6: 454 when the check cannot be done now; not counted as a
                // failure, the client retries.
                warn!(
                    user = username,
                    "authentication deferred: verifier queue full"
                );
                Verdict::Defer(Reply::temp_auth_failure())
            }
        }
    }

    fn mail(&mut self, from: &str) -> Verdict {
        let sender = match self
            .shared
            .policy
            .mail(&self.identity, self.allowlisted, from)
        {
            Ok(sender) => sender,
            Err(MailRefusal::SenderNotOwned) => {
                info!(sender = from, identity = ?self.identity.label(), "sender not allowed");
                return Verdict::Reject(Reply::sender_not_allowed());
            }
            Err(_) => return Verdict::Reject(Reply::auth_required()),
        };
        if self.shared.router.route(&sender).is_none() {
            return Verdict::Reject(Reply::no_route());
        }
        self.tx = Tx {
            sender,
            ..Tx::default()
        };
        Verdict::Accept
    }

    fn data(&mut self) -> Verdict {
        match self.shared.spool.begin() {
            Ok(writer) => {
                self.tx.writer = Some(writer);
                self.tx.write_failed = false;
                self.tx.scan = HeaderScan::default();
                self.tx.eight_bit = false;
                Verdict::Accept
            }
            Err(e) => {
                warn!(error = %e, "cannot create a spool file");
                Verdict::Defer(Reply::queue_error())
            }
        }
    }

    async fn message(&mut self, envelope: Envelope) -> Verdict {
        let tx = std::mem::take(&mut self.tx);
        let Some(writer) = tx.writer else {
            return Verdict::Defer(Reply::queue_error());
        };
        if tx.write_failed {
            writer.abort();
            return Verdict::Defer(Reply::queue_error());
        }
        let id = writer.id().to_string();
        let recipients: Vec<String> = envelope.rcpts.iter().map(|r| r.to_string()).collect();
        let now = SystemTime::now();
        // RFC 6531 3.4: a sender rewritten to a UTF-8 address needs SMTPUTF8 upstream even
        // when the client's own envelope was ASCII.
        let smtputf8 = envelope.params.smtputf8
            || !tx.sender.is_ascii()
            || recipients.iter().any(|r| !r.is_ascii());
        let trace = Trace {
            helo: self.session.helo().unwrap_or("unknown"),
            client_ip: networks::canonical(self.peer.ip()),
            hostname: &self.shared.hostname,
            esmtp: self.session.esmtp(),
            tls: self.session.is_tls(),
            authenticated: self.session.identity().is_some(),
            utf8: smtputf8,
            queue_id: &id,
            single_rcpt: (recipients.len() == 1).then(|| recipients[0].as_str()),
            now,
        };
        let headers = &self.shared.headers;
        let prefix = message::prefix(
            &trace,
            headers.add_date && !tx.scan.has_date,
            headers.add_message_id && !tx.scan.has_message_id,
        );
        let env = spool::Envelope {
            id: writer.id().clone(),
            received_unix: now
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs(),
            sender: tx.sender,
            recipients: recipients
                .iter()
                .map(|a| spool::Recipient {
                    address: a.clone(),
                    status: spool::RcptStatus::Pending,
                })
                .collect(),
            listener: self.listener.name.clone(),
            client_ip: networks::canonical(self.peer.ip()),
            identity: self.identity.label(),
            smtputf8,
            body_8bit: envelope.params.body == Some(BodyType::EightBitMime) || tx.eight_bit,
            attempts: 0,
            next_attempt_unix: 0,
            size: prefix.len() as u64 + writer.written(),
        };
        let summary = |outcome: &str| {
            events::message(&MessageSummary {
                queue_id: &id,
                listener: &self.listener.name,
                client_ip: env.client_ip,
                identity: env.identity.as_deref(),
                sender: &env.sender,
                recipients: env.recipients.len(),
                size: env.size,
                outcome,
            })
        };
        match writer.commit(env.clone(), prefix).await {
            Ok(()) => {
                summary("queued");
                self.shared.delivery.submit(env);
                Verdict::Queued(id)
            }
            Err(e) => {
                summary("refused: queue write error");
                warn!(error = %e, "spool commit failed");
                Verdict::Defer(Reply::queue_error())
            }
        }
    }
}

/// What the input loop does next.
enum Flow {
    Continue,
    NeedInput,
    StartTls,
    Closed,
}
