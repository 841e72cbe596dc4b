//! A real SMTP sink for the tests: a scripted server on 127.0.0.1:0 that records what it
//! gets (chasquid `FakeServer`/`TestCourier` in spirit).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// What the sink offers and how it answers.
#[derive(Clone, Debug)]
pub(crate) struct Script {
    pub pipelining: bool,
    /// Offer SIZE with this limit.
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    /// Offer DSN (RFC 3461).
    pub dsn: bool,
    /// Offer STARTTLS with this config.
    pub starttls: Option<Arc<ServerConfig>>,
    /// TLS from the first byte with this config.
    pub implicit: Option<Arc<ServerConfig>>,
    /// AUTH mechanisms to offer; accepted credentials are user/secret.
    pub auth: &'static [&'static str],
    /// (recipient, reply) for recipients to refuse.
    pub rcpt_replies: Vec<(&'static str, &'static str)>,
    pub mail_reply: &'static str,
    pub final_reply: &'static str,
    /// Close the connection instead of answering the final dot.
    pub drop_after_dot: bool,
    /// Answer DATA with 354 even with no recipient.
    pub always_354: bool,
    /// Refuse EHLO with 502 (HELO-only server).
    pub ehlo_502: bool,
    /// Send a fake reply right behind the STARTTLS 220.
    pub inject_after_starttls: bool,
    /// Accept connections and never say anything.
    pub silent: bool,
    /// After answering a message's final dot, send this line (if not empty) and close,
    /// as a server whose idle timer fired.
    pub hang_up_after_message: Option<&'static str>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            pipelining: false,
            size: None,
            eightbitmime: false,
            smtputf8: false,
            dsn: false,
            starttls: None,
            implicit: None,
            auth: &[],
            rcpt_replies: Vec::new(),
            mail_reply: "250 2.1.0 Ok",
            final_reply: "250 2.0.0 Ok: queued",
            drop_after_dot: false,
            always_354: false,
            ehlo_502: false,
            inject_after_starttls: false,
            silent: false,
            hang_up_after_message: None,
        }
    }
}

/// One command line as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub text: String,
    /// More bytes were already buffered behind it (the client pipelined).
    pub ahead: bool,
    pub tls: bool,
}

/// One message as received (after dot-unstuffing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub mail: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
}

/// Everything the sink saw.
#[derive(Debug, Default)]
pub(crate) struct Record {
    pub connections: usize,
    pub lines: Vec<Line>,
    pub messages: Vec<Message>,
    /// Decoded AUTH exchanges: "PLAIN authz|user|pass" or "LOGIN user|pass".
    pub auth: Vec<String>,
}

pub(crate) type Shared = Arc<Mutex<Record>>;

/// Starts a sink; returns its address and record.
pub(crate) async fn start(script: Script) -> (SocketAddr, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Shared::default();
    let rec2 = rec.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            rec2.lock().unwrap().connections += 1;
            tokio::spawn(handle(tcp, script.clone(), rec2.clone()));
        }
    });
    (addr, rec)
}

async fn handle(tcp: TcpStream, script: Script, rec: Shared) {
    if script.silent {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        return;
    }
    if let Some(cfg) = &script.implicit {
        if let Ok(tls) = TlsAcceptor::from(cfg.clone()).accept(tcp).await {
            session(tls, &script, &rec, true, true).await;
        }
        return;
    }
    let Some(tcp) = session(tcp, &script, &rec, false, true).await else {
        return;
    };
    let Some(cfg) = &script.starttls else { return };
    if let Ok(tls) = TlsAcceptor::from(cfg.clone()).accept(tcp).await {
        session(tls, &script, &rec, true, false).await;
    }
}

fn ehlo(script: &Script, tls: bool) -> String {
    let size = script.size.map(|limit| format!("SIZE {limit}"));
    let offered = [
        (script.pipelining, "PIPELINING"),
        (size.is_some(), size.as_deref().unwrap_or_default()),
        (script.eightbitmime, "8BITMIME"),
        (script.smtputf8, "SMTPUTF8"),
        (script.dsn, "DSN"),
        (script.starttls.is_some() && !tls, "STARTTLS"),
    ];
    let mut lines = vec!["sink.test greets you".to_string()];
    lines.extend(
        offered
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, kw)| kw.to_string()),
    );
    if !script.auth.is_empty() {
        lines.push(format!("AUTH {}", script.auth.join(" ")));
    }
    lines.push("ENHANCEDSTATUSCODES".into());
    let last = lines.len() - 1;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
        .collect()
}

async fn read_line<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Option<String> {
    let mut buf = Vec::new();
    match io.read_until(b'\n', &mut buf).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(
            String::from_utf8_lossy(&buf)
                .trim_end_matches("\r\n")
                .to_string(),
        ),
    }
}

/// Reads DATA lines up to the lone dot and un-stuffs them (RFC 5321 4.5.2).
async fn read_data<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if io.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        if line == b".\r\n" {
            return Some(data);
        }
        let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
        data.extend_from_slice(unstuffed);
    }
}

/// Runs the dialogue; returns the stream when the client asked for STARTTLS.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    script: &Script,
    rec: &Shared,
    tls: bool,
    greet: bool,
) -> Option<S> {
    let mut io = BufReader::new(stream);
    if greet {
        send(&mut io, "220 sink.test ESMTP\r\n").await?;
    }
    let mut tx = Message {
        mail: String::new(),
        rcpts: Vec::new(),
        data: Vec::new(),
    };
    loop {
        let text = read_line(&mut io).await?;
        let ahead = !io.buffer().is_empty();
        let line = Line {
            text: text.clone(),
            ahead,
            tls,
        };
        rec.lock().unwrap().lines.push(line);
        let upper = text.to_ascii_uppercase();
        let reply = match upper.as_str() {
            u if u.starts_with("EHLO ") && script.ehlo_502 => {
                "502 5.5.1 EHLO not supported\r\n".into()
            }
            u if u.starts_with("EHLO ") => ehlo(script, tls),
            u if u.starts_with("HELO ") => "250 sink.test\r\n".into(),
            "STARTTLS" if script.inject_after_starttls => {
                "220 2.0.0 Ready\r\n250 injected\r\n".into()
            }
            "STARTTLS" => {
                send(&mut io, "220 2.0.0 Ready\r\n").await?;
                return Some(io.into_inner());
            }
            u if u.starts_with("AUTH PLAIN ") => auth_plain(text.get(11..)?, rec),
            "AUTH LOGIN" => auth_login(&mut io, rec).await?,
            u if u.starts_with("MAIL FROM:") => {
                tx.mail = text.clone();
                format!("{}\r\n", script.mail_reply)
            }
            u if u.starts_with("RCPT TO:<") => rcpt(text.get(9..)?, script, &mut tx),
            "DATA" => {
                let reply = data(&mut io, script, rec, &mut tx).await?;
                match script.hang_up_after_message {
                    Some(last) if reply.starts_with("250") => {
                        send(&mut io, &reply).await?;
                        if !last.is_empty() {
                            send(&mut io, &format!("{last}\r\n")).await?;
                        }
                        return None;
                    }
                    _ => reply,
                }
            }
            "RSET" => {
                tx = Message {
                    mail: String::new(),
                    rcpts: Vec::new(),
                    data: Vec::new(),
                };
                "250 2.0.0 Ok\r\n".into()
            }
            "QUIT" => {
                send(&mut io, "221 2.0.0 Bye\r\n").await?;
                return None;
            }
            _ => "500 5.5.2 Error: command not recognized\r\n".into(),
        };
        send(&mut io, &reply).await?;
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(io: &mut BufReader<S>, text: &str) -> Option<()> {
    io.get_mut().write_all(text.as_bytes()).await.ok()
}

fn rcpt(rest: &str, script: &Script, tx: &mut Message) -> String {
    let addr = rest.split('>').next().unwrap_or_default().to_string();
    match script.rcpt_replies.iter().find(|(r, _)| *r == addr) {
        Some((_, reply)) => format!("{reply}\r\n"),
        None => {
            tx.rcpts.push(addr);
            "250 2.1.5 Ok\r\n".into()
        }
    }
}

/// DATA: 554 without recipients (unless scripted otherwise), else 354, the content,
/// and the final reply. `None` drops the connection (scripted, or the client went away).
async fn data<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    script: &Script,
    rec: &Shared,
    tx: &mut Message,
) -> Option<String> {
    if tx.rcpts.is_empty() && !script.always_354 {
        return Some("554 5.5.1 No valid recipients\r\n".into());
    }
    send(io, "354 End data with <CR><LF>.<CR><LF>\r\n").await?;
    let data = read_data(io).await?;
    if script.drop_after_dot {
        return None;
    }
    let msg = Message {
        mail: std::mem::take(&mut tx.mail),
        rcpts: std::mem::take(&mut tx.rcpts),
        data,
    };
    let empty = msg.rcpts.is_empty();
    rec.lock().unwrap().messages.push(msg);
    Some(if empty {
        "554 5.5.1 No valid recipients\r\n".into()
    } else {
        format!("{}\r\n", script.final_reply)
    })
}

fn auth_plain(token: &str, rec: &Shared) -> String {
    let raw = BASE64.decode(token).unwrap_or_default();
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    rec.lock()
        .unwrap()
        .auth
        .push(format!("PLAIN {}", parts.join("|")));
    auth_result(parts.get(1), parts.get(2))
}

async fn auth_login<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    rec: &Shared,
) -> Option<String> {
    send(io, "334 VXNlcm5hbWU6\r\n").await?;
    let user = decode(&read_line(io).await?);
    send(io, "334 UGFzc3dvcmQ6\r\n").await?;
    let pass = decode(&read_line(io).await?);
    rec.lock()
        .unwrap()
        .auth
        .push(format!("LOGIN {user}|{pass}"));
    Some(auth_result(Some(&user), Some(&pass)))
}

fn decode(b64: &str) -> String {
    String::from_utf8_lossy(&BASE64.decode(b64).unwrap_or_default()).into_owned()
}

fn auth_result(user: Option<&String>, pass: Option<&String>) -> String {
    if user.map(String::as_str) == Some("user") && pass.map(String::as_str) == Some("secret") {
        "235 2.7.0 Authentication successful\r\n".into()
    } else {
        "535 5.7.8 Error: authentication failed\r\n".into()
    }
}

/// A test CA and a server config for `localhost` / 127.0.0.1 signed by it.
#[derive(Debug)]
pub(crate) struct Pki {
    pub ca_pem: String,
    pub server: Arc<ServerConfig>,
}

pub(crate) fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "postern test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}
