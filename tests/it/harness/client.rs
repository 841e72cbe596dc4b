//! Clients: a raw SMTP [`Dialog`] for tests where bytes and reply codes matter (pipelining,
//! smuggling, STARTTLS injection), and lettre for happy-path submission with real TLS + AUTH.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ca::{self, TestCa};

/// How long any single read, write or handshake may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

/// One reply: the code and each line's text (after `NNN-` / `NNN `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The raw lines without CRLF, e.g. `250-PIPELINING`.
    pub lines: Vec<String>,
}

impl Reply {
    /// The first line (code, enhanced code and text).
    pub fn first(&self) -> &str {
        self.lines.first().map_or("", String::as_str)
    }

    /// The text of each line, without the code and separator (EHLO keywords).
    pub fn texts(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|l| l.get(4..).unwrap_or("").to_owned())
            .collect()
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Closed,
}

/// A raw SMTP client: write exact bytes, read whole replies, assert codes.
pub struct Dialog {
    stream: Stream,
    buf: Vec<u8>,
    /// The recent dialogue (`C:`/`S:` lines, truncated), for failure messages.
    log: Vec<String>,
}

impl std::fmt::Debug for Dialog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialog")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl Dialog {
    /// Connects in plain text and reads the greeting (asserting `220`).
    pub async fn connect(addr: SocketAddr) -> Dialog {
        let mut d = Dialog::connect_silent(addr).await;
        d.expect("220").await;
        d
    }

    /// Connects without reading the greeting.
    pub async fn connect_silent(addr: SocketAddr) -> Dialog {
        let tcp = step("connect", TcpStream::connect(addr)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Dialog {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2), without reading the greeting.
    pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> Dialog {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        let tcp = step("connect", socket.connect(addr)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Dialog {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Connects with implicit TLS (RFC 8314) and reads the greeting.
    pub async fn connect_tls(addr: SocketAddr, ca: &TestCa) -> Dialog {
        let mut d = Dialog::connect_tls_silent(addr, ca).await;
        d.expect("220").await;
        d
    }

    /// Connects with implicit TLS without reading the greeting.
    pub async fn connect_tls_silent(addr: SocketAddr, ca: &TestCa) -> Dialog {
        let tcp = step("connect", TcpStream::connect(addr)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Dialog::from_tls(handshake(tcp, ca).await)
    }

    /// A dialog over a TLS stream the caller set up.
    pub fn from_tls(tls: TlsStream<TcpStream>) -> Dialog {
        Dialog {
            stream: Stream::Tls(Box::new(tls)),
            buf: Vec::new(),
            log: Vec::new(),
        }
    }

    fn io(&mut self) -> &mut (dyn AsyncStream + '_) {
        match &mut self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.as_mut(),
            Stream::Closed => panic!("dialog: stream already closed"),
        }
    }

    /// Writes `bytes` exactly, in one write call.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        self.note("C:", bytes);
        let io = self.io();
        step("write", async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .unwrap();
    }

    /// Reads one complete (possibly multi-line) reply; `None` if the server closed first.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            let last = line.len() < 4 || line.as_bytes()[3] == b' ';
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else {
                panic!("malformed reply line {line:?}")
            };
            lines.push(line);
            if last {
                return Some(Reply { code, lines });
            }
        }
    }

    /// Reads one reply and asserts its first line starts with `prefix` (e.g. `"250 2.0.0"`).
    pub async fn expect(&mut self, prefix: &str) -> Reply {
        let reply = self.try_reply().await;
        let Some(reply) = reply else {
            panic!("expected {prefix:?}, server closed")
        };
        assert!(
            reply.first().starts_with(prefix),
            "expected {prefix:?}, got {:?}",
            reply.lines
        );
        reply
    }

    /// Sends `line` + CRLF and expects a reply starting with `prefix`.
    pub async fn cmd(&mut self, line: &str, prefix: &str) -> Reply {
        self.send(format!("{line}\r\n")).await;
        self.expect(prefix).await
    }

    /// Sends `line` + CRLF and asserts the reply is exactly the one line `want`.
    pub async fn exact(&mut self, line: &str, want: &str) {
        let reply = self.cmd(line, "").await;
        assert_eq!(reply.lines, [want], "reply to {line:?}");
    }

    /// `EHLO name`; returns the keywords (lines after the first).
    pub async fn ehlo(&mut self, name: &str) -> Vec<String> {
        let reply = self.cmd(&format!("EHLO {name}"), "250").await;
        reply.texts().into_iter().skip(1).collect()
    }

    /// STARTTLS (expects `220`) and the handshake; asserts the server sent nothing more in
    /// plain text.
    pub async fn starttls(&mut self, ca: &TestCa) {
        self.cmd("STARTTLS", "220").await;
        self.tls_handshake(ca).await;
    }

    /// The TLS handshake on the plain stream (after a `220` to STARTTLS was read); asserts
    /// nothing else arrived in plain text before it.
    pub async fn tls_handshake(&mut self, ca: &TestCa) {
        assert!(
            self.buf.is_empty(),
            "plaintext after the 220: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            panic!("STARTTLS on a TLS stream");
        };
        self.stream = Stream::Tls(Box::new(handshake(tcp, ca).await));
    }

    /// The client side's address (its port names the session in postern's logs).
    pub fn local_addr(&self) -> SocketAddr {
        match &self.stream {
            Stream::Plain(tcp) => tcp.local_addr().unwrap(),
            Stream::Tls(tls) => tls.get_ref().0.local_addr().unwrap(),
            Stream::Closed => panic!("dialog: stream already closed"),
        }
    }

    /// The certificate the server presented (leaf first), once TLS is up.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let Stream::Tls(tls) = &self.stream else {
            return None;
        };
        let leaf = tls.get_ref().1.peer_certificates()?.first()?;
        Some(leaf.to_vec())
    }

    /// Asserts the server closes the connection (EOF) without sending anything more.
    pub async fn expect_closed(&mut self) {
        if let Some(reply) = self.try_reply().await {
            panic!("expected close, got {:?}", reply.lines);
        }
    }

    /// Asserts the server ends the connection cleanly and sends nothing more: a read gives
    /// EOF, not an error. Under TLS that means a `close_notify` alert came first (RFC 8446
    /// 6.1: each party MUST send one before closing its write side); on plain TCP, a FIN
    /// rather than a reset.
    pub async fn expect_clean_close(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread bytes before the close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 512];
        let io = self.io();
        let read = tokio::time::timeout(STEP, io.read(&mut chunk)).await;
        let Ok(read) = read else {
            panic!("no close within {STEP:?}")
        };
        match read {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected close, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) => panic!(
                "the connection was not closed cleanly: {e} ({:?})",
                e.kind()
            ),
        }
    }

    /// Writes `bytes` one octet at a time, `gap` apart, until the server replies; returns
    /// the reply (`None`: closed without one). Bounded by `bytes`; a write that fails (the
    /// server closed) ends the trickle and the reply is then read.
    pub async fn trickle(&mut self, bytes: &[u8], gap: Duration) -> Option<Reply> {
        for &b in bytes {
            let io = self.io();
            if io.write_all(&[b]).await.is_err() || io.flush().await.is_err() {
                break;
            }
            if !self.buf.is_empty() {
                break;
            }
            let mut chunk = [0u8; 512];
            let io = self.io();
            match tokio::time::timeout(gap, io.read(&mut chunk)).await {
                Err(_) => continue,
                Ok(Ok(n)) if n > 0 => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    break;
                }
                Ok(_) => break,
            }
        }
        self.try_reply().await
    }

    /// The bytes received but not yet consumed as a reply.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Keeps the last 60 dialogue lines, each cut to 160 characters.
    fn note(&mut self, dir: &str, bytes: &[u8]) {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(160)]);
        let more = if bytes.len() > 160 { "..." } else { "" };
        if self.log.len() == 60 {
            self.log.remove(0);
        }
        self.log.push(format!("{dir} {text:?}{more}"));
    }

    async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                self.note("S:", line.as_bytes());
                return Some(line);
            }
            let mut chunk = [0u8; 8192];
            let io = self.io();
            // A reset counts as a close: servers may RST after their last reply.
            let read = tokio::time::timeout(STEP, io.read(&mut chunk)).await;
            let Ok(read) = read else {
                panic!(
                    "read: no reply within {STEP:?}; dialogue:\n{}",
                    self.log.join("\n")
                );
            };
            let n = read.unwrap_or(0);
            if n == 0 {
                assert!(
                    self.buf.is_empty(),
                    "partial reply before close: {:?}",
                    self.buf
                );
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

async fn handshake(tcp: TcpStream, ca: &TestCa) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(ca.client_config());
    step("TLS handshake", connector.connect(ca::server_name(), tcp))
        .await
        .unwrap()
}

/// Awaits `fut` for at most [`STEP`], panicking with `what` on timeout.
pub async fn step<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no progress within {STEP:?}"),
    }
}

/// How lettre reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain text, no AUTH.
    Plain,
    /// STARTTLS required.
    StartTls,
    /// Implicit TLS.
    Implicit,
}

/// A lettre transport to 127.0.0.1:`port` trusting `ca` (certificate name `localhost`),
/// authenticating with `creds` by `mechanism` when given.
pub fn transport(
    port: u16,
    security: Security,
    ca: &TestCa,
    creds: Option<(&str, &str, Mechanism)>,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let params = TlsParameters::builder("localhost".to_owned())
        .add_root_certificate(Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    let tls = match security {
        Security::Plain => Tls::None,
        Security::StartTls => Tls::Required(params),
        Security::Implicit => Tls::Wrapper(params),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(tls)
        .timeout(Some(STEP));
    if let Some((user, pass, mech)) = creds {
        builder = builder
            .credentials(Credentials::new(user.to_owned(), pass.to_owned()))
            .authentication(vec![mech]);
    }
    builder.build()
}

/// Sends `message` byte for byte with lettre; returns the server's final reply's first line.
pub async fn lettre_send(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    from: &str,
    to: &[&str],
    message: &[u8],
) -> Result<String, lettre::transport::smtp::Error> {
    let to = to.iter().map(|a| a.parse().unwrap()).collect();
    let envelope = Envelope::new(Some(from.parse().unwrap()), to).unwrap();
    let response = step("lettre send", transport.send_raw(&envelope, message)).await?;
    let text: Vec<&str> = response.message().collect();
    Ok(format!("{} {}", response.code(), text.join(" ")))
}
