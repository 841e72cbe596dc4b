//! A real SMTP server on `127.0.0.1` for postern to deliver to (chasquid's `TestCourier` +
//! `FakeServer` in one): it records every accepted transaction (envelope and the exact DATA
//! bytes after dot-unstuffing, without the final `.\r\n`) and can be scripted to refuse.
//!
//! It is deliberately strict where postern's upstream client must be correct: commands must
//! end in CRLF, nothing may follow STARTTLS/DATA/EHLO in the same write, and nothing may be
//! pipelined unless PIPELINING was offered; MAIL parameters must have been offered
//! ([`Extensions`]); 8-bit content needs `BODY=8BITMIME` (RFC 6152 3) and non-ASCII
//! addresses `SMTPUTF8` (RFC 6531 3.4); no line may be over 998 octets (RFC 5322 2.1.1) and
//! a declared SIZE may not be smaller than the message (RFC 1870 5). Breaches are answered normally where possible
//! but recorded in [`Sink::violations`] so tests can assert there are none.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

mod oauth;
pub use oauth::SinkOAuth;

/// Largest command line or DATA the sink buffers; a client exceeding it is cut off.
const MAX_BUFFER: usize = 32 << 20;
/// The transcript keeps this many most recent lines (for failure messages).
const TRANSCRIPT_LINES: usize = 400;

/// What the sink offers and requires.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Advertise PIPELINING (RFC 2920). Default: on.
    pub pipelining: bool,
    /// Offer STARTTLS with this server config (or speak TLS from the first byte when
    /// `implicit_tls` is set).
    pub starttls: Option<Arc<rustls::ServerConfig>>,
    /// TLS from the first byte (RFC 8314) with the `starttls` config; STARTTLS is not offered.
    pub implicit_tls: bool,
    /// Refuse AUTH and MAIL before STARTTLS (`530 5.7.0`).
    pub require_tls: bool,
    /// Require AUTH PLAIN or LOGIN with this (username, password) before MAIL.
    pub auth: Option<(String, String)>,
    /// Require AUTH XOAUTH2 / OAUTHBEARER with a token the test endpoint issued.
    pub oauth: Option<SinkOAuth>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            pipelining: true,
            starttls: None,
            implicit_tls: false,
            require_tls: false,
            auth: None,
            oauth: None,
        }
    }
}

/// The MAIL extensions the sink advertises, all on by default; see [`Sink::start_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extensions {
    /// Advertise 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// Advertise SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// Advertise SIZE with this fixed maximum (RFC 1870; 0: no fixed maximum). A message
    /// declared or received larger is refused with `552 5.3.4`.
    pub size: Option<u64>,
    /// Advertise DSN (RFC 3461). Off by default, so a DSN parameter sent unasked is a
    /// violation in every test that does not turn it on.
    pub dsn: bool,
}

impl Default for Extensions {
    fn default() -> Self {
        Extensions {
            eightbitmime: true,
            smtputf8: true,
            size: Some(104_857_600),
            dsn: false,
        }
    }
}

/// A scripted misbehaviour; see [`Sink::fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer the greeting with this reply line (e.g. `421 4.3.2 busy`) and close.
    Greeting(String),
    /// Answer `RCPT TO:<addr>` (address compared case-insensitively) with this reply line.
    Rcpt(String, String),
    /// Answer the final dot with this reply line instead of 250 (nothing is recorded).
    DataEnd(String),
    /// Read the whole message, then close the connection without answering the final dot.
    DropAfterDot,
    /// Accept the next message, then send this line (if any, e.g. `421 4.4.2 idle
    /// timeout`) and close the connection, as a server whose idle timer fired while the
    /// client kept the connection for later.
    HangUpAfterMessage(Option<String>),
}

/// One accepted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The connection's sequence number (1-based) at this sink.
    pub conn: usize,
    /// The EHLO/HELO argument.
    pub helo: String,
    /// Whether the transaction ran under TLS.
    pub tls: bool,
    /// The authenticated username, if any.
    pub auth: Option<String>,
    /// The reverse path, without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// MAIL parameters, e.g. `BODY=8BITMIME`, as sent.
    pub mail_params: Vec<String>,
    /// The accepted forward paths in order, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// Each accepted recipient's parameters (e.g. `NOTIFY=NEVER`), as sent.
    pub rcpt_params: Vec<Vec<String>>,
    /// The message exactly as received after dot-unstuffing, without the final `.\r\n`.
    pub data: Vec<u8>,
}

impl Received {
    /// The message as (lossy) text, for `contains` checks and failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

#[derive(Debug)]
struct State {
    opts: SinkOptions,
    /// The listening port (OAUTHBEARER names it).
    port: u16,
    extensions: Extensions,
    faults: Mutex<Vec<(Fault, Option<u32>)>>,
    messages: Mutex<Vec<Received>>,
    count: watch::Sender<usize>,
    expected: AtomicUsize,
    taken: AtomicUsize,
    connections: AtomicUsize,
    quits: AtomicUsize,
    violations: Mutex<Vec<String>>,
    transcript: Mutex<VecDeque<String>>,
}

impl State {
    fn note(&self, conn: usize, dir: &str, line: &[u8]) {
        let mut shown = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
        if line.len() > 120 {
            shown.push_str("...");
        }
        let mut t = self.transcript.lock().unwrap();
        if t.len() == TRANSCRIPT_LINES {
            t.pop_front();
        }
        t.push_back(format!("[{conn}] {dir} {shown}"));
    }

    fn violation(&self, conn: usize, what: impl Into<String>) {
        let what = what.into();
        self.note(conn, "!!", what.as_bytes());
        self.violations
            .lock()
            .unwrap()
            .push(format!("conn {conn}: {what}"));
    }

    /// The first matching fault, consuming one use of it.
    fn take_fault(&self, matches: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let i = faults.iter().position(|(f, _)| matches(f))?;
        let fault = faults[i].0.clone();
        match &mut faults[i].1 {
            Some(1) => {
                faults.remove(i);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Some(fault)
    }

    fn record(&self, msg: Received) {
        let n = {
            let mut messages = self.messages.lock().unwrap();
            messages.push(msg);
            messages.len()
        };
        // Notify only after the mutex is released: waiters take `messages` too, and holding
        // it across the watch's write lock (both std locks, blocking the runtime's workers)
        // deadlocked against a waiter holding the read lock. `max` keeps the count monotone
        // when two sessions record at once.
        self.count.send_modify(|c| *c = (*c).max(n));
    }
}

/// A running sink. Dropping it stops the listener and closes its connections.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    /// Starts a sink on an ephemeral port of 127.0.0.1.
    pub async fn start(opts: SinkOptions) -> Sink {
        Sink::start_on(0, opts).await
    }

    /// Starts a sink on `port` (e.g. one from [`reserve_port`] that postern is already
    /// failing to reach).
    pub async fn start_on(port: u16, opts: SinkOptions) -> Sink {
        Sink::start_with(port, opts, Extensions::default()).await
    }

    /// Starts a sink on `port` (0: ephemeral) that offers `extensions` from its first
    /// connection on.
    pub async fn start_with(port: u16, opts: SinkOptions, extensions: Extensions) -> Sink {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .unwrap();
        let listener = socket.listen(128).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            opts,
            port: addr.port(),
            extensions,
            faults: Mutex::new(Vec::new()),
            messages: Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
            expected: AtomicUsize::new(0),
            taken: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            quits: AtomicUsize::new(0),
            violations: Mutex::new(Vec::new()),
            transcript: Mutex::new(VecDeque::new()),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Sink { addr, state, task }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many QUIT commands arrived (postern closing pooled connections politely).
    pub fn quits(&self) -> usize {
        self.state.quits.load(Ordering::SeqCst)
    }

    /// Scripts `fault` for its next `times` occurrences (`None`: every time). Faults are
    /// matched in the order they were added.
    pub fn fault(&self, fault: Fault, times: Option<u32>) {
        self.state.faults.lock().unwrap().push((fault, times));
    }

    /// Drops every scripted fault: from now on the sink answers normally (an upstream that
    /// recovers).
    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// Announces `n` more messages for the next [`Sink::wait`].
    pub fn expect(&self, n: usize) {
        self.state.expected.fetch_add(n, Ordering::SeqCst);
    }

    /// Waits (at most `timeout`) until every expected message has arrived, and returns the
    /// messages that arrived since the previous `wait` (possibly more than expected).
    /// Panics with the transcript on timeout.
    pub async fn wait(&self, timeout: Duration) -> Vec<Received> {
        let target = self.state.expected.load(Ordering::SeqCst);
        let mut rx = self.state.count.subscribe();
        // Reduced to a bool at once: the borrow `wait_for` returns holds the watch's read lock.
        let reached = tokio::time::timeout(timeout, rx.wait_for(|n| *n >= target))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            let got = *self.state.count.borrow();
            panic!(
                "sink: expected {target} messages within {timeout:?}, got {got}\n{}",
                self.debug_dump()
            );
        }
        let messages = self.state.messages.lock().unwrap();
        let from = self.state.taken.swap(messages.len(), Ordering::SeqCst);
        messages[from..].to_vec()
    }

    /// Waits (at most `timeout`) until `done` holds for the messages accepted so far (all of
    /// them, not only those since the last `wait`), and returns them. Panics on timeout.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let mut rx = self.state.count.subscribe();
        let check = async {
            loop {
                // Mark the current count seen before checking, so a message recorded after
                // the check wakes `changed`. The borrow is dropped at once: `messages` must
                // never be locked under the watch's lock (see `State::record`).
                drop(rx.borrow_and_update());
                if done(&self.state.messages.lock().unwrap()) || rx.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(timeout, check).await.is_err() {
            let got = self.received().len();
            panic!(
                "sink: condition not met within {timeout:?} ({got} messages)\n{}",
                self.debug_dump()
            );
        }
        self.received()
    }

    /// Every message accepted so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state.messages.lock().unwrap().clone()
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Protocol breaches by clients (see the module doc).
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }

    /// The recent dialogue, for failure messages.
    pub fn debug_dump(&self) -> String {
        let t = self.state.transcript.lock().unwrap();
        let lines: Vec<&str> = t.iter().map(String::as_str).collect();
        format!(
            "sink transcript (last {} lines):\n{}",
            lines.len(),
            lines.join("\n")
        )
    }
}

/// A port on 127.0.0.1 that nothing listens on right now (bind, read, close), for an
/// upstream that is down until [`Sink::start_on`] brings it up.
pub fn reserve_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    // The JoinSet owns the sessions: aborting this task drops it, closing them all.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let id = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
                sessions.spawn(serve(tcp, state.clone(), id));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

async fn serve(tcp: TcpStream, state: Arc<State>, id: usize) {
    let _ = tcp.set_nodelay(true);
    if state.opts.implicit_tls {
        let Some(tls) = tls_accept(tcp, &state, id).await else {
            return;
        };
        let secure = Conn {
            io: tls,
            buf: Vec::new(),
            id,
            tls: true,
            state,
        };
        let _ = session(secure).await;
        return;
    }
    let plain = Conn {
        io: tcp,
        buf: Vec::new(),
        id,
        tls: false,
        state: state.clone(),
    };
    let Ok(Some(tcp)) = session(plain).await else {
        return;
    };
    let Some(tls) = tls_accept(tcp, &state, id).await else {
        return;
    };
    let secure = Conn {
        io: tls,
        buf: Vec::new(),
        id,
        tls: true,
        state,
    };
    let _ = session(secure).await;
}

async fn tls_accept(
    tcp: TcpStream,
    state: &State,
    id: usize,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let cfg = state.opts.starttls.clone()?;
    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp);
    match tokio::time::timeout(Duration::from_secs(10), accept).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            state.violation(id, format!("TLS handshake failed: {e}"));
            None
        }
        Err(_) => {
            state.violation(id, "TLS handshake timed out");
            None
        }
    }
}

/// One side of a connection: the stream, unread bytes, and who we are.
struct Conn<S> {
    io: S,
    buf: Vec<u8>,
    id: usize,
    tls: bool,
    state: Arc<State>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// The next CRLF-terminated line without its CRLF; `None` at EOF.
    async fn line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].windows(2).position(|w| w == b"\r\n") {
                let end = scanned + pos;
                let line = self.buf[..end].to_vec();
                self.buf.drain(..end + 2);
                return Ok(Some(line));
            }
            scanned = self.buf.len().saturating_sub(1);
            if self.buf.len() > MAX_BUFFER {
                return Err(std::io::Error::other("line too long"));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn reply(&mut self, line: &str) -> std::io::Result<()> {
        self.state.note(self.id, "S:", line.as_bytes());
        self.io.write_all(line.as_bytes()).await?;
        self.io.write_all(b"\r\n").await?;
        self.io.flush().await
    }

    /// Reads DATA lines up to the lone dot, undoing dot-stuffing (RFC 5321 4.5.2).
    async fn data(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut data = Vec::new();
        loop {
            let Some(line) = self.line().await? else {
                return Ok(None);
            };
            if line == b"." {
                self.state.note(
                    self.id,
                    "C:",
                    format!("<{} octets> .", data.len()).as_bytes(),
                );
                return Ok(Some(data));
            }
            let body = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(body);
            data.extend_from_slice(b"\r\n");
            if data.len() > MAX_BUFFER {
                return Err(std::io::Error::other("message too big"));
            }
        }
    }
}

/// Per-session protocol state (reset by STARTTLS, as RFC 3207 4.2 requires).
#[derive(Debug, Default)]
struct Session {
    helo: Option<String>,
    auth: Option<String>,
    tx: Option<Received>,
}

/// Runs the dialogue; returns the stream when the client asked for STARTTLS.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(mut c: Conn<S>) -> std::io::Result<Option<S>> {
    if !c.tls || c.state.opts.implicit_tls {
        if let Some(Fault::Greeting(reply)) =
            c.state.take_fault(|f| matches!(f, Fault::Greeting(_)))
        {
            c.reply(&reply).await?;
            return Ok(None);
        }
        c.reply("220 sink.test ESMTP test sink").await?;
    }
    let mut s = Session::default();
    loop {
        let Some(line) = c.line().await? else {
            return Ok(None);
        };
        c.state.note(c.id, "C:", &line);
        if line.contains(&b'\n') || line.contains(&b'\r') {
            c.state.violation(c.id, "bare CR or LF in a command line");
            c.reply("500 5.5.2 Bare CR or LF").await?;
            continue;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_owned()),
            None => (text.to_ascii_uppercase(), String::new()),
        };
        let must_be_last = ["EHLO", "HELO", "DATA", "STARTTLS", "QUIT", "NOOP"];
        if !c.buf.is_empty() && (!c.state.opts.pipelining || must_be_last.contains(&verb.as_str()))
        {
            c.state
                .violation(c.id, format!("bytes pipelined after {verb}"));
        }
        match verb.as_str() {
            "EHLO" | "HELO" => {
                s = Session {
                    helo: Some(arg),
                    ..Session::default()
                };
                let ext = c.state.extensions;
                let ehlo = ehlo_lines(&c.state.opts, ext, c.tls, verb == "EHLO");
                for l in ehlo {
                    c.reply(&l).await?;
                }
            }
            "STARTTLS" => {
                if c.tls || c.state.opts.starttls.is_none() {
                    c.reply("502 5.5.1 STARTTLS not available").await?;
                    continue;
                }
                c.reply("220 2.0.0 Ready to start TLS").await?;
                return Ok(Some(c.io));
            }
            "AUTH" => auth(&mut c, &mut s, &arg).await?,
            "MAIL" => mail(&mut c, &mut s, &arg).await?,
            "RCPT" => rcpt(&mut c, &mut s, &arg).await?,
            "DATA" => {
                if !data(&mut c, &mut s).await? {
                    return Ok(None);
                }
            }
            "RSET" => {
                s.tx = None;
                c.reply("250 2.0.0 Ok").await?;
            }
            "NOOP" => c.reply("250 2.0.0 Ok").await?,
            "QUIT" => {
                c.state.quits.fetch_add(1, Ordering::SeqCst);
                c.reply("221 2.0.0 Bye").await?;
                return Ok(None);
            }
            _ => c.reply("500 5.5.2 Unknown command").await?,
        }
    }
}

fn ehlo_lines(opts: &SinkOptions, ext: Extensions, tls: bool, extended: bool) -> Vec<String> {
    if !extended {
        return vec!["250 sink.test".into()];
    }
    let mut caps = vec!["sink.test".to_owned()];
    if opts.pipelining {
        caps.push("PIPELINING".into());
    }
    if ext.eightbitmime {
        caps.push("8BITMIME".into());
    }
    if ext.smtputf8 {
        caps.push("SMTPUTF8".into());
    }
    if let Some(limit) = ext.size {
        caps.push(format!("SIZE {limit}"));
    }
    if ext.dsn {
        caps.push("DSN".into());
    }
    if opts.starttls.is_some() && !tls {
        caps.push("STARTTLS".into());
    }
    if opts.auth.is_some() && (tls || !opts.require_tls) {
        caps.push("AUTH PLAIN LOGIN".into());
    }
    if let Some(o) = &opts.oauth
        && (tls || !opts.require_tls)
    {
        caps.push(format!("AUTH {}", o.mechanisms.join(" ")));
    }
    caps.push("ENHANCEDSTATUSCODES".into());
    let last = caps.len() - 1;
    caps.iter()
        .enumerate()
        .map(|(i, c)| format!("250{}{c}", if i == last { ' ' } else { '-' }))
        .collect()
}

/// AUTH PLAIN (RFC 4616) and LOGIN, with or without an initial response.
async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    s: &mut Session,
    arg: &str,
) -> std::io::Result<()> {
    if let Some(o) = c.state.opts.oauth.clone() {
        let (mech, initial) = match arg.split_once(' ') {
            Some((m, ir)) => (m.to_ascii_uppercase(), Some(ir.to_owned())),
            None => (arg.to_ascii_uppercase(), None),
        };
        if !o.mechanisms.contains(&mech.as_str()) {
            c.state
                .violation(c.id, format!("AUTH {mech} was not offered"));
            return c.reply("504 5.5.4 Unrecognized authentication type").await;
        }
        if (c.state.opts.require_tls && !c.tls) || s.helo.is_none() || s.auth.is_some() {
            c.state.violation(c.id, "AUTH out of sequence");
            return c.reply("503 5.5.1 Bad sequence of commands").await;
        }
        return oauth::auth(c, s, &o, &mech, initial).await;
    }
    let Some((user, pass)) = c.state.opts.auth.clone() else {
        return c.reply("502 5.5.1 AUTH not available").await;
    };
    if c.state.opts.require_tls && !c.tls {
        return c
            .reply("530 5.7.0 Must issue a STARTTLS command first")
            .await;
    }
    if s.helo.is_none() || s.auth.is_some() || s.tx.is_some() {
        return c.reply("503 5.5.1 Bad sequence of commands").await;
    }
    let (mech, initial) = match arg.split_once(' ') {
        Some((m, ir)) => (m.to_ascii_uppercase(), Some(ir.to_owned())),
        None => (arg.to_ascii_uppercase(), None),
    };
    let given = match mech.as_str() {
        "PLAIN" => {
            let Some(resp) = challenge(c, initial, "").await? else {
                return Ok(());
            };
            let mut parts = resp.split(|b| *b == 0);
            let (_authz, authc, pw) = (parts.next(), parts.next(), parts.next());
            authc.zip(pw).map(|(a, p)| (a.to_vec(), p.to_vec()))
        }
        "LOGIN" => {
            let Some(u) = challenge(c, initial, "VXNlcm5hbWU6").await? else {
                return Ok(());
            };
            let Some(p) = challenge(c, None, "UGFzc3dvcmQ6").await? else {
                return Ok(());
            };
            Some((u, p))
        }
        _ => return c.reply("504 5.5.4 Unrecognized authentication type").await,
    };
    if given == Some((user.clone().into_bytes(), pass.into_bytes())) {
        s.auth = Some(user);
        c.reply("235 2.7.0 Authentication successful").await
    } else {
        c.reply("535 5.7.8 Authentication credentials invalid")
            .await
    }
}

/// One SASL step: the initial response if given, else a `334` prompt and the client's line.
/// `None` means the exchange ended (already answered).
async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    initial: Option<String>,
    prompt: &str,
) -> std::io::Result<Option<Vec<u8>>> {
    let encoded = match initial {
        Some(ir) => ir.into_bytes(),
        None => {
            c.reply(&format!("334 {prompt}")).await?;
            let Some(line) = c.line().await? else {
                return Ok(None);
            };
            c.state.note(c.id, "C:", b"<sasl response>");
            line
        }
    };
    if encoded == b"*" {
        c.reply("501 5.7.0 Authentication cancelled").await?;
        return Ok(None);
    }
    let decoded = if encoded == b"=" {
        Ok(Vec::new())
    } else {
        B64.decode(&encoded)
    };
    match decoded {
        Ok(d) => Ok(Some(d)),
        Err(_) => {
            c.reply("501 5.5.2 Cannot decode response").await?;
            Ok(None)
        }
    }
}

/// Whether `params` has `name` (as `name` or `name=value`), ignoring case.
fn has_param(params: &[String], name: &str) -> bool {
    params.iter().any(|p| {
        let key = p.split_once('=').map_or(p.as_str(), |(k, _)| k);
        key.eq_ignore_ascii_case(name)
    })
}

/// MAIL parameters against what was offered: an unoffered extension or a non-ASCII sender
/// without SMTPUTF8 is a violation; a declared SIZE over the maximum is refused as RFC 1870
/// 6 says. Returns the refusal, if any.
fn check_mail_params<S>(c: &Conn<S>, from: &str, params: &[String]) -> Option<&'static str> {
    let ext = c.state.extensions;
    let mut refusal = None;
    for p in params {
        let (key, value) = p.split_once('=').unwrap_or((p.as_str(), ""));
        let offered = match key.to_ascii_uppercase().as_str() {
            "BODY" => value.eq_ignore_ascii_case("7BIT") || ext.eightbitmime,
            "SMTPUTF8" => ext.smtputf8,
            "SIZE" => {
                let limit = ext.size.unwrap_or(0);
                let declared: u64 = value.parse().unwrap_or(u64::MAX);
                if limit > 0 && declared > limit {
                    refusal = Some("552 5.3.4 Message size exceeds fixed maximum message size");
                }
                ext.size.is_some()
            }
            // RFC 3461 4.3, 4.4.
            "RET" | "ENVID" => ext.dsn,
            _ => false,
        };
        if !offered {
            c.state
                .violation(c.id, format!("MAIL parameter {p} was not offered"));
            refusal = Some("555 5.5.4 Unsupported option");
        }
    }
    if !from.is_ascii() && !has_param(params, "SMTPUTF8") {
        c.state
            .violation(c.id, format!("non-ASCII sender {from:?} without SMTPUTF8"));
        refusal = Some("553 5.6.7 SMTPUTF8 required");
    }
    refusal
}

/// Splits `FROM:<path> params` / `TO:<path> params` into the path and parameters.
fn path_and_params(arg: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    // The path ends at the first `>` outside a quoted local part (RFC 5321 4.1.2:
    // `"x<y>z"@example.org` is one mailbox).
    let (mut quoted, mut escaped) = (false, false);
    let end = rest.char_indices().find_map(|(i, ch)| {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
        None
    })?;
    let (path, params) = (&rest[..end], &rest[end + 1..]);
    Some((
        path.to_owned(),
        params.split_whitespace().map(str::to_owned).collect(),
    ))
}

async fn mail<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    s: &mut Session,
    arg: &str,
) -> std::io::Result<()> {
    if c.state.opts.require_tls && !c.tls {
        return c
            .reply("530 5.7.0 Must issue a STARTTLS command first")
            .await;
    }
    if (c.state.opts.auth.is_some() || c.state.opts.oauth.is_some()) && s.auth.is_none() {
        return c.reply("530 5.7.0 Authentication required").await;
    }
    let Some(helo) = s.helo.clone() else {
        return c.reply("503 5.5.1 Send EHLO first").await;
    };
    if s.tx.is_some() {
        return c.reply("503 5.5.1 Nested MAIL command").await;
    }
    let Some((from, params)) = path_and_params(arg, "FROM:") else {
        return c.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await;
    };
    if let Some(refusal) = check_mail_params(c, &from, &params) {
        return c.reply(refusal).await;
    }
    s.tx = Some(Received {
        conn: c.id,
        helo,
        tls: c.tls,
        auth: s.auth.clone(),
        mail_from: from,
        mail_params: params,
        rcpt_to: Vec::new(),
        rcpt_params: Vec::new(),
        data: Vec::new(),
    });
    c.reply("250 2.1.0 Ok").await
}

async fn rcpt<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    s: &mut Session,
    arg: &str,
) -> std::io::Result<()> {
    let Some(tx) = s.tx.as_mut() else {
        return c.reply("503 5.5.1 Need MAIL command").await;
    };
    let Some((to, params)) = path_and_params(arg, "TO:") else {
        return c.reply("501 5.5.4 Syntax: RCPT TO:<address>").await;
    };
    if !to.is_ascii() && !has_param(&tx.mail_params, "SMTPUTF8") {
        c.state
            .violation(c.id, format!("non-ASCII recipient {to:?} without SMTPUTF8"));
        return c.reply("553 5.6.7 SMTPUTF8 required").await;
    }
    let scripted = c
        .state
        .take_fault(|f| matches!(f, Fault::Rcpt(a, _) if a.eq_ignore_ascii_case(&to)));
    if let Some(Fault::Rcpt(_, reply)) = scripted {
        return c.reply(&reply).await;
    }
    // RFC 3461 4.1, 4.2: NOTIFY and ORCPT only when DSN was offered.
    let dsn = c.state.extensions.dsn;
    for p in &params {
        let key = p.split_once('=').map_or(p.as_str(), |(k, _)| k);
        let known = key.eq_ignore_ascii_case("NOTIFY") || key.eq_ignore_ascii_case("ORCPT");
        if !(known && dsn) {
            c.state
                .violation(c.id, format!("RCPT parameter {p} was not offered"));
            return c.reply("555 5.5.4 Unsupported option").await;
        }
    }
    tx.rcpt_to.push(to);
    tx.rcpt_params.push(params);
    c.reply("250 2.1.5 Ok").await
}

/// RFC 5322 2.1.1 / RFC 5321 4.5.3.1.6: no line over 998 octets plus CRLF (the dot doubled
/// for transparency not counted: `body` is already un-stuffed); RFC 1870 5: a declared
/// SIZE is not smaller than what was sent. Either breach is a violation.
fn check_lines_and_size<S>(c: &Conn<S>, tx: &Received, body: &[u8]) {
    for (i, line) in body.split_inclusive(|&b| b == b'\n').enumerate() {
        let content = line.strip_suffix(b"\r\n").unwrap_or(line);
        if content.len() > 998 {
            c.state.violation(
                c.id,
                format!("line {} is {} octets (over 998)", i + 1, content.len()),
            );
        }
    }
    let declared = tx.mail_params.iter().find_map(|p| {
        let (key, value) = p.split_once('=')?;
        key.eq_ignore_ascii_case("SIZE")
            .then(|| value.parse::<u64>().ok())?
    });
    if let Some(declared) = declared
        && (body.len() as u64) > declared
    {
        c.state.violation(
            c.id,
            format!("SIZE={declared} declared but {} octets sent", body.len()),
        );
    }
}

/// DATA through the final reply; `false` when the connection is to be dropped.
async fn data<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    s: &mut Session,
) -> std::io::Result<bool> {
    match &s.tx {
        None => {
            c.reply("503 5.5.1 Need MAIL command").await?;
            return Ok(true);
        }
        Some(tx) if tx.rcpt_to.is_empty() => {
            c.reply("554 5.5.1 No valid recipients").await?;
            return Ok(true);
        }
        Some(_) => {}
    }
    c.reply("354 End data with <CR><LF>.<CR><LF>").await?;
    let Some(body) = c.data().await? else {
        return Ok(false);
    };
    let Some(mut tx) = s.tx.take() else {
        return Ok(true);
    };
    // RFC 6152 3: octets over 127 only in a transaction declared BODY=8BITMIME.
    let declared_8bit = tx
        .mail_params
        .iter()
        .any(|p| p.eq_ignore_ascii_case("BODY=8BITMIME"));
    if body.iter().any(|b| *b >= 0x80) && !declared_8bit {
        c.state
            .violation(c.id, "8-bit content without BODY=8BITMIME");
    }
    check_lines_and_size(c, &tx, &body);
    let limit = c.state.extensions.size.unwrap_or(0);
    if limit > 0 && body.len() as u64 > limit {
        c.reply("552 5.3.4 Message size exceeds fixed maximum message size")
            .await?;
        return Ok(true);
    }
    let fault = c
        .state
        .take_fault(|f| matches!(f, Fault::DataEnd(_) | Fault::DropAfterDot));
    match fault {
        Some(Fault::DropAfterDot) => {
            c.state
                .note(c.id, "!!", b"dropping the connection after the dot");
            return Ok(false);
        }
        Some(Fault::DataEnd(reply)) => {
            c.reply(&reply).await?;
            return Ok(true);
        }
        _ => {}
    }
    tx.data = body;
    c.state.record(tx);
    let n = c.state.messages.lock().unwrap().len();
    c.reply(&format!("250 2.0.0 Ok: queued as sink-{n}"))
        .await?;
    let hang_up = c
        .state
        .take_fault(|f| matches!(f, Fault::HangUpAfterMessage(_)));
    if let Some(Fault::HangUpAfterMessage(last_words)) = hang_up {
        if let Some(line) = last_words {
            c.reply(&line).await?;
        }
        c.state.note(c.id, "!!", b"hanging up after the message");
        return Ok(false);
    }
    Ok(true)
}
