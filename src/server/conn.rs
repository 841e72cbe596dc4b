//! One connection: drives an [`smtp::session::Session`] over a plain or TLS stream, carries
//! out its events (policy questions, spool writes, STARTTLS) and enforces timeouts.
//!
//! Memory per idle connection is kept small: the read buffer is allocated only while bytes
//! are waiting, and the spool writer only during DATA.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use tokio::time::Instant;

use crate::config::schema::{AuthMode, BareLineEndings, ListenerTls, LongLinesPolicy};
use crate::policy::Caps;
use crate::reason::Reason;
use crate::rules::{ListenerInfo, Rules};
use crate::server::Runtime;
use crate::server::backend::{Backend, SessionFacts};
use crate::server::deadline::{Deadlines, SlowClientLimits};
use crate::server::proxy::{self, Sniff};
use crate::shutdown::Shutdown;
use crate::smtp::data::{BareLf, LongLines};
use crate::smtp::reply::Reply;
use crate::smtp::session::{AuthPolicy, Question, Session, SessionConfig, Step, TlsOffer, Verdict};
use crate::stream::Stream;
use crate::telemetry::events::{self, SessionEnd, SessionSummary};
use crate::telemetry::metrics::{ConnResult, ListenerMetrics, TlsVersion};

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
    ProxyHeader,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Io(e) => write!(f, "i/o error: {e}"),
            End::Eof => f.write_str("client closed the connection"),
            End::Tls(e) => write!(f, "TLS: {e}"),
            End::WriteTimeout => f.write_str("client stopped reading replies (write timed out)"),
            End::ProxyHeader => f.write_str("PROXY header from an untrusted peer"),
        }
    }
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

/// One client connection: the engine, the stream, and the back end that answers for it.
pub struct Conn {
    session: Session,
    stream: Stream,
    buf: Vec<u8>,
    backend: Backend,
    peer: SocketAddr,
    /// The slow-client deadlines.
    deadlines: Deadlines,
    /// Every byte read from the client, for the DATA rate.
    bytes_read: u64,
    /// Until its first line is seen: a direct client on a listener that takes PROXY
    /// headers, which must not send one.
    watch_proxy: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("listener", &self.backend.listener.name)
            .field("peer", &self.peer)
            .finish()
    }
}

/// A connection as the accept loop hands it over.
#[derive(Debug)]
pub struct Accepted {
    /// The socket.
    pub tcp: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// A reply to send instead of the greeting (allowlist, connection caps), after the TLS
    /// handshake on implicit listeners.
    pub refusal: Option<Reply>,
    /// Close the connection if its first line is a PROXY header (a direct client on a
    /// listener with `proxy_protocol`, `required: false`).
    pub watch_proxy: bool,
    /// Time the implicit-TLS handshake already had: its first bytes were waited for before
    /// admission (see [`proxy::Client::waited`]). One `timeouts.tls_handshake` in all.
    pub hello_waited: Duration,
}

/// Serves one accepted connection to the end.
pub async fn serve(
    accepted: Accepted,
    rt: Arc<Runtime>,
    rules: Arc<Rules>,
    listener: Arc<ListenerInfo>,
    metrics: Arc<ListenerMetrics>,
    shutdown: Shutdown,
) {
    let Accepted {
        tcp,
        peer,
        refusal,
        watch_proxy,
        hello_waited,
    } = accepted;
    let _ = tcp.set_nodelay(true);
    // A refused connection is logged and counted where it was refused.
    let admitted = refusal.is_none();
    let _open = admitted.then(|| metrics.session());
    if admitted {
        events::session_start(&listener.name, peer, listener.tls == ListenerTls::Implicit);
    }
    let started = Instant::now();
    let stream = match open_stream(tcp, &rules, &listener, &metrics, admitted, hello_waited).await {
        Ok(stream) => stream,
        Err(e) => {
            debug!(error = %e, "TLS handshake failed");
            if admitted {
                events::session_end(&SessionSummary {
                    duration: started.elapsed(),
                    messages: 0,
                    closed_by: None,
                    end: SessionEnd::TlsError,
                });
            }
            return;
        }
    };
    let backend = Backend::new(rt, rules.clone(), listener.clone(), metrics, peer);
    let session = Session::new(
        session_config(&rules, &listener, backend.caps()),
        listener.tls == ListenerTls::Implicit,
    );
    let limits = SlowClientLimits {
        command: rules.timeouts.command.get(),
        data: rules.timeouts.data.get(),
        session: rules.timeouts.session.get(),
        min_data_rate: rules.limits.min_data_rate,
    };
    let mut conn = Conn {
        session,
        stream,
        buf: Vec::new(),
        backend,
        peer,
        deadlines: Deadlines::new(limits, Instant::now()),
        bytes_read: 0,
        watch_proxy,
    };
    let end = conn.run(refusal, shutdown).await;
    conn.finish(end, started, admitted);
}

/// The client's stream: after the TLS handshake on an implicit-TLS listener (a short one
/// for a client about to be refused: it is owed one reply, not a patient handshake).
async fn open_stream(
    tcp: TcpStream,
    rules: &Rules,
    listener: &ListenerInfo,
    metrics: &ListenerMetrics,
    admitted: bool,
    waited: Duration,
) -> Result<Stream, End> {
    if listener.tls != ListenerTls::Implicit {
        return Ok(Stream::Plain(tcp));
    }
    let limit = handshake_limit(rules, admitted).saturating_sub(waited);
    handshake(tcp, rules, &listener.name, limit, metrics)
        .await
        .map(Stream::from)
}

/// The time an implicit-TLS handshake gets, counted from the connection.
pub fn handshake_limit(rules: &Rules, admitted: bool) -> Duration {
    match admitted {
        true => rules.timeouts.tls_handshake.get(),
        false => REFUSAL_HANDSHAKE.min(rules.timeouts.tls_handshake.get()),
    }
}

fn session_config(rules: &Rules, listener: &ListenerInfo, caps: Caps) -> SessionConfig {
    let limits = &rules.limits;
    SessionConfig {
        hostname: rules.hostname.clone(),
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
        max_message_size: caps.max_message_size,
        max_recipients: caps.max_recipients,
        max_errors: limits.max_errors,
        bare_line_endings: match limits.bare_line_endings {
            BareLineEndings::Reject => BareLf::Reject,
            BareLineEndings::Normalise => BareLf::Normalise,
        },
        long_lines: match limits.long_lines {
            LongLinesPolicy::Wrap => LongLines::Wrap,
            LongLinesPolicy::Reject => LongLines::Reject,
        },
        max_junk_commands: limits.max_junk_commands,
    }
}

/// The server side of a TLS handshake (implicit, or after STARTTLS), counted by version
/// and result.
async fn handshake(
    tcp: TcpStream,
    rules: &Rules,
    listener: &str,
    limit: Duration,
    metrics: &ListenerMetrics,
) -> Result<TlsStream<TcpStream>, End> {
    let Some(cfg) = rules.tls.for_listener(listener) else {
        return Err(End::Tls("no TLS configuration".into()));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let result = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(End::Tls(e.to_string())),
        Err(_) => Err(End::Tls("handshake timed out".into())),
    };
    let version =
        result
            .as_ref()
            .ok()
            .and_then(|tls| match tls.get_ref().1.protocol_version()? {
                rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
                _ => Some(TlsVersion::Tls12),
            });
    metrics.tls_handshake(version);
    result
}

impl Conn {
    /// After the dialogue: drops an unfinished spool file, counts a server-side close and
    /// logs the end of an admitted session.
    fn finish(&mut self, end: Result<(), End>, started: Instant, admitted: bool) {
        self.backend.abort();
        let closed_by = self.session.closed_for().or(self.backend.closed_for());
        if let Some(reason) = closed_by {
            info!(%reason, "session closed by the server");
            self.backend.metrics.session_closed(reason);
        }
        if let Err(e) = &end {
            debug!(reason = %e, "session ended");
        }
        if !admitted {
            return;
        }
        events::session_end(&SessionSummary {
            duration: started.elapsed(),
            messages: self.backend.messages(),
            closed_by,
            end: match end {
                Ok(()) if closed_by.is_some() => SessionEnd::ServerClosed,
                Ok(()) => SessionEnd::Quit,
                Err(End::Eof) => SessionEnd::ClientClosed,
                Err(End::Io(_)) => SessionEnd::IoError,
                Err(End::Tls(_)) => SessionEnd::TlsError,
                Err(End::WriteTimeout) => SessionEnd::WriteTimeout,
                Err(End::ProxyHeader) => SessionEnd::ServerClosed,
            },
        });
    }

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
            let (deadline, why) = self.deadlines.next(
                Instant::now(),
                self.session.lines(),
                self.session.in_data(),
                self.bytes_read,
            );
            tokio::select! {
                read = tokio::time::timeout_at(deadline, self.read_more()) => match read {
                    Ok(Ok(0)) => return Err(End::Eof),
                    Ok(Ok(n)) => self.bytes_read += n as u64,
                    Ok(Err(e)) => return Err(End::Io(e)),
                    Err(_) => return self.expire(why).await,
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

    /// A deadline passed: `421` for `why`, and close.
    async fn expire(&mut self, why: Reason) -> Result<(), End> {
        let host = self.session.hostname().to_owned();
        let step = match why {
            Reason::DataRate => self.session.close_for(Reply::data_too_slow(&host), why),
            Reason::SessionDuration => self.session.close_for(Reply::session_too_long(&host), why),
            _ => self.session.timed_out(),
        };
        self.perform(step).await.map(|_| ())
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
        match tokio::time::timeout(self.backend.rules.timeouts.command.get(), write).await {
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
        if self.watch_proxy && !self.first_line_is_not_a_proxy_header()? {
            return Ok(false);
        }
        let mut pos = 0;
        let result = loop {
            // Draining: once a transaction is over, commands pipelined behind it are left
            // unread, and the caller answers 421 instead of opening another transaction.
            if shutdown.stop.is_cancelled() && !self.session.in_transaction() {
                break Ok(false);
            }
            let (used, step) = self.session.advance(&self.buf[pos..]);
            pos += used;
            for reason in self.session.take_refusals() {
                info!(%reason, "refused");
                self.backend.metrics.engine_refusal(reason);
            }
            let body = self.session.take_body();
            if !body.is_empty() {
                self.backend.body(body);
                body.clear();
            }
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

    /// For a watched client (see [`Accepted::watch_proxy`]): `Ok(true)` once its first
    /// bytes are not a PROXY header, `Ok(false)` while too few have come to tell, and an
    /// error (logged and counted) when they are one: a peer that is not trusted could name
    /// any address in it.
    fn first_line_is_not_a_proxy_header(&mut self) -> Result<bool, End> {
        match proxy::sniff(&self.buf) {
            Sniff::No => {
                self.watch_proxy = false;
                Ok(true)
            }
            Sniff::Undecided => Ok(false),
            Sniff::Header => {
                let result = ConnResult::ProxyUntrusted;
                warn!(listener = %self.backend.listener.name, tcp_peer = %self.peer, reason = result.as_str(), "PROXY protocol: header from an untrusted peer, connection closed");
                self.backend.metrics.connection(&result);
                Err(End::ProxyHeader)
            }
        }
    }

    async fn start_tls(&mut self) -> Result<(), End> {
        self.flush().await?;
        let Some(tcp) = self.stream.take_plain() else {
            return Err(End::Tls(
                "STARTTLS on a stream that is not plain TCP".into(),
            ));
        };
        let rules = &self.backend.rules;
        let limit = rules.timeouts.tls_handshake.get();
        let listener = &self.backend.listener.name;
        let tls = handshake(tcp, rules, listener, limit, &self.backend.metrics).await?;
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
                let _ =
                    tokio::time::timeout(self.backend.rules.timeouts.command.get(), close).await;
                Ok(Flow::Closed)
            }
            Step::StartTls => Ok(Flow::StartTls),
            Step::DiscardMessage(refusal, reason) => {
                self.backend.discard(&refusal, reason);
                Ok(Flow::Continue)
            }
            Step::Decide(question) => {
                // AUTH may run argon2 and the message waits for the spool's fsync: send
                // what is pending first.
                if matches!(question, Question::Auth { .. } | Question::Message { .. }) {
                    self.flush().await?;
                }
                let facts = SessionFacts {
                    helo: self.session.helo(),
                    esmtp: self.session.esmtp(),
                    tls: self.session.is_tls(),
                    authenticated: self.session.identity().is_some(),
                };
                let verdict = self.backend.decide(question, facts).await;
                if verdict == Verdict::Authenticated {
                    // The identity's own caps apply from now on.
                    let caps = self.backend.caps();
                    self.session
                        .set_caps(caps.max_message_size, caps.max_recipients);
                }
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
}

/// What the input loop does next.
enum Flow {
    Continue,
    NeedInput,
    StartTls,
    Closed,
}
