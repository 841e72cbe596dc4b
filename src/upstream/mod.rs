//! The upstream side: where accepted mail goes.
//!
//! [`Upstreams`] is the facade the delivery layer uses: built once from the config, it
//! routes a sender to an ordered list of upstream names ([`route::Router`]) and delivers a
//! message to one named upstream, over a pooled SMTP connection ([`pool::Pool`] →
//! [`client::Client`]) or into a directory ([`directory::Directory`]). Failover across the
//! list, retries and backoff belong to the delivery layer: it sees per-recipient outcomes and
//! classified errors ([`error::Error::is_permanent`], [`error::Error::is_maybe_delivered`]).
//!
//! # Layout
//! - `client.rs`: one SMTP session's transactions: envelope, per-recipient outcomes,
//!   dot-stuffed streaming.
//! - `conn.rs`: the stream under it: timeouts, reply reading, EHLO, STARTTLS, AUTH.
//! - `pool.rs`: per-upstream connection cap and idle reuse.
//! - `tls.rs`: rustls client configuration (RFC 7817).
//! - `route.rs`: sender → upstream names.
//! - `directory.rs`: the `directory:` upstream.
//! - `error.rs`: the error enum and its classification.

pub mod client;
mod conn;
pub mod directory;
pub mod error;
pub mod pool;
pub mod route;
pub mod tls;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::schema::{Config, UpstreamAuth, UpstreamConfig, UpstreamTls};
use crate::upstream::client::{
    Credentials, Outgoing, RcptOutcome, Security, Settings, Timeouts, TlsTarget,
};
use crate::upstream::directory::Directory;
use crate::upstream::error::{Error, Stage};
use crate::upstream::pool::Pool;
use crate::upstream::route::Router;
use crate::upstream::tls::TlsError;

/// Why the upstreams could not be built from the config. Each names the upstream.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// Not exactly one of `address` and `directory` is set.
    AddressOrDirectory {
        /// Upstream name.
        upstream: String,
    },
    /// `address` is not `host:port`.
    Address {
        /// Upstream name.
        upstream: String,
        /// The configured value.
        address: String,
    },
    /// The TLS configuration failed (CA file, server name).
    Tls {
        /// Upstream name.
        upstream: String,
        /// The cause.
        source: TlsError,
    },
    /// Not exactly one of `auth.password` and `auth.password_file` is set.
    Password {
        /// Upstream name.
        upstream: String,
    },
    /// `auth.password_file` or `directory` could not be read or created.
    File {
        /// Upstream name.
        upstream: String,
        /// The config key (`auth.password_file` or `directory`).
        key: &'static str,
        /// The resolved path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Two upstreams share a name.
    Duplicate {
        /// The repeated name.
        upstream: String,
    },
    /// A route names an upstream that is not configured.
    UnknownUpstream {
        /// The unknown name.
        upstream: String,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::AddressOrDirectory { upstream } => {
                write!(
                    f,
                    "upstreams[{upstream}]: set exactly one of address and directory"
                )
            }
            BuildError::Address { upstream, address } => {
                write!(
                    f,
                    "upstreams[{upstream}].address: {address:?} is not host:port"
                )
            }
            BuildError::Tls { upstream, source } => write!(f, "upstreams[{upstream}]: {source}"),
            BuildError::Password { upstream } => write!(
                f,
                "upstreams[{upstream}].auth: set exactly one of password and password_file"
            ),
            BuildError::File {
                upstream,
                key,
                path,
                source,
            } => {
                write!(
                    f,
                    "upstreams[{upstream}].{key}: {}: {source}",
                    path.display()
                )
            }
            BuildError::Duplicate { upstream } => {
                write!(f, "upstreams: the name {upstream:?} is used twice")
            }
            BuildError::UnknownUpstream { upstream } => {
                write!(
                    f,
                    "routes: upstream {upstream:?} is not defined in upstreams"
                )
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// One configured upstream.
#[derive(Debug)]
enum Target {
    /// Boxed: a pool is large and there are few upstreams, so the indirection is free.
    Smtp(Box<Pool>),
    Directory(Directory),
}

/// All upstreams and the router: what the delivery layer talks to.
#[derive(Debug)]
pub struct Upstreams {
    router: Router,
    targets: HashMap<String, Target>,
}

impl Upstreams {
    /// Builds every upstream from a config whose paths are already resolved (as
    /// `config::load` does); relative paths are taken from the working directory.
    pub fn new(cfg: &Config) -> Result<Upstreams, BuildError> {
        Upstreams::with_base_dir(cfg, Path::new(""))
    }

    /// Builds every upstream from the config. Relative paths (`ca_file`, `password_file`,
    /// `directory`) are resolved against `base_dir`, the config file's directory. Password
    /// files are read here, once; a directory upstream's directory is created if absent.
    pub fn with_base_dir(cfg: &Config, base_dir: &Path) -> Result<Upstreams, BuildError> {
        let mut targets = HashMap::new();
        for u in &cfg.upstreams {
            let target = build_target(u, &cfg.hostname, base_dir)?;
            if targets.insert(u.name.clone(), target).is_some() {
                return Err(BuildError::Duplicate {
                    upstream: u.name.clone(),
                });
            }
        }
        let names: Vec<String> = cfg.upstreams.iter().map(|u| u.name.clone()).collect();
        let router = Router::new(&cfg.routes, &names);
        if let Some(unknown) = router
            .used_upstreams()
            .into_iter()
            .find(|n| !targets.contains_key(*n))
        {
            return Err(BuildError::UnknownUpstream {
                upstream: unknown.to_owned(),
            });
        }
        Ok(Upstreams { router, targets })
    }

    /// The sender router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Delivers one message to the upstream named `upstream`. `queue_id` names the files of
    /// a directory upstream.
    pub async fn deliver(
        &self,
        upstream: &str,
        queue_id: &str,
        msg: &mut Outgoing<'_>,
    ) -> Result<Vec<RcptOutcome>, Error> {
        match self.targets.get(upstream) {
            Some(Target::Smtp(pool)) => pool.deliver(msg).await,
            Some(Target::Directory(dir)) => dir.deliver(queue_id, msg).await,
            None => Err(Error::Protocol {
                upstream: upstream.to_owned(),
                stage: Stage::Connect,
                detail: "no such upstream".to_owned(),
            }),
        }
    }

    /// The connection pool of an SMTP upstream (for metrics).
    pub fn pool(&self, upstream: &str) -> Option<&Pool> {
        match self.targets.get(upstream) {
            Some(Target::Smtp(pool)) => Some(pool),
            _ => None,
        }
    }

    /// Closes idle connections past their `idle_timeout`, all upstreams at once; call it
    /// every [`Upstreams::reap_period`].
    pub async fn reap_idle(&self) {
        let expired = self.pools().flat_map(Pool::take_expired).collect();
        pool::quit_all(expired).await;
    }

    /// Closes every idle connection, all upstreams at once (shutdown).
    pub async fn close_idle(&self) {
        let all = self.pools().flat_map(Pool::take_all).collect();
        pool::quit_all(all).await;
    }

    /// How often to call [`Upstreams::reap_idle`]: half the shortest `idle_timeout`, so no
    /// connection stays idle much beyond its limit (at most 1.5 times it), but no more
    /// often than every second and at least every [`MAX_REAP_PERIOD`].
    pub fn reap_period(&self) -> Duration {
        self.pools()
            .map(|p| p.idle_timeout() / 2)
            .min()
            .unwrap_or(MAX_REAP_PERIOD)
            .clamp(MIN_REAP_PERIOD, MAX_REAP_PERIOD)
    }

    fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.targets.values().filter_map(|t| match t {
            Target::Smtp(pool) => Some(pool.as_ref()),
            Target::Directory(_) => None,
        })
    }
}

/// Lower bound of [`Upstreams::reap_period`].
const MIN_REAP_PERIOD: Duration = Duration::from_secs(1);
/// Upper bound of [`Upstreams::reap_period`].
pub const MAX_REAP_PERIOD: Duration = Duration::from_secs(30);

fn build_target(u: &UpstreamConfig, hostname: &str, base: &Path) -> Result<Target, BuildError> {
    match (&u.address, &u.directory) {
        (Some(address), None) => {
            let settings = settings(u, address, hostname, base)?;
            let pool = Pool::new(settings, u.max_connections, u.idle_timeout.get());
            Ok(Target::Smtp(Box::new(pool)))
        }
        (None, Some(dir)) => {
            let path = base.join(dir);
            std::fs::create_dir_all(&path).map_err(|source| BuildError::File {
                upstream: u.name.clone(),
                key: "directory",
                path: path.clone(),
                source,
            })?;
            Ok(Target::Directory(Directory::new(&u.name, path)))
        }
        _ => Err(BuildError::AddressOrDirectory {
            upstream: u.name.clone(),
        }),
    }
}

/// Connection settings of an SMTP upstream.
fn settings(
    u: &UpstreamConfig,
    address: &str,
    hostname: &str,
    base: &Path,
) -> Result<Settings, BuildError> {
    let bad_address = || BuildError::Address {
        upstream: u.name.clone(),
        address: address.to_owned(),
    };
    let (host, port) = split_address(address).ok_or_else(bad_address)?;
    let target = || -> Result<TlsTarget, BuildError> {
        let tls_err = |source| BuildError::Tls {
            upstream: u.name.clone(),
            source,
        };
        let ca_file = u.ca_file.as_ref().map(|p| base.join(p));
        let config = tls::client_config(ca_file.as_deref(), u.tls_verify).map_err(tls_err)?;
        // RFC 7817 3: the reference identity is the configured name, else the host we dial.
        let name = u.server_name.as_deref().unwrap_or(host);
        let server_name = tls::server_name(name).map_err(tls_err)?;
        Ok(TlsTarget {
            config,
            server_name,
        })
    };
    let security = match u.tls {
        UpstreamTls::None => Security::Plain,
        UpstreamTls::Starttls => Security::StartTls(target()?),
        UpstreamTls::Implicit => Security::Implicit(target()?),
    };
    let credentials = u
        .auth
        .as_ref()
        .map(|a| credentials(&u.name, a, base))
        .transpose()?;
    Ok(Settings {
        name: u.name.clone(),
        host: host.to_owned(),
        port,
        security,
        helo_name: u.helo_name.clone().unwrap_or_else(|| hostname.to_owned()),
        credentials,
        timeouts: Timeouts {
            connect: u.connect_timeout.get(),
            command: u.command_timeout.get(),
        },
    })
}

/// Credentials with the password inline or read from `password_file` (trailing newline
/// dropped, as editors and `echo` add one).
fn credentials(upstream: &str, a: &UpstreamAuth, base: &Path) -> Result<Credentials, BuildError> {
    let password = match (&a.password, &a.password_file) {
        (Some(p), None) => p.clone(),
        (None, Some(file)) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|source| BuildError::File {
                upstream: upstream.to_owned(),
                key: "auth.password_file",
                path,
                source,
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            text.strip_suffix('\r').unwrap_or(text).to_owned()
        }
        _ => {
            return Err(BuildError::Password {
                upstream: upstream.to_owned(),
            });
        }
    };
    Ok(Credentials {
        username: a.username.clone(),
        password,
    })
}

/// Splits `host:port`, `1.2.3.4:port` or `[v6]:port`; the port is required.
fn split_address(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        // An unbracketed host with a colon is an IPv6 address without brackets: ambiguous.
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then_some((host, port))
}

/// A real SMTP sink for the tests: a scripted server on 127.0.0.1:0 that records what it
/// gets (chasquid `FakeServer`/`TestCourier` in spirit).
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "test harness")]
pub(crate) mod sink {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
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

    async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        io: &mut BufReader<S>,
        text: &str,
    ) -> Option<()> {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::client::{Client, RcptResult, transmitted_size};
    use super::error::Capability;
    use super::sink::{self, Line, Message, Script};
    use super::*;
    use crate::smtp::reply_parser::UpstreamReply;

    fn settings(addr: SocketAddr, security: Security) -> Settings {
        Settings {
            name: "sink".into(),
            host: addr.ip().to_string(),
            port: addr.port(),
            security,
            helo_name: "relay.test".into(),
            credentials: None,
            timeouts: Timeouts {
                connect: Duration::from_secs(5),
                command: Duration::from_secs(5),
            },
        }
    }

    fn creds(password: &str) -> Option<Credentials> {
        Some(Credentials {
            username: "user".into(),
            password: password.into(),
        })
    }

    /// A TLS target trusting the test CA (or not verifying at all).
    fn target(pki: &sink::Pki, verify: bool, dir: &tempfile::TempDir) -> TlsTarget {
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        TlsTarget {
            config: tls::client_config(Some(&ca), verify).unwrap(),
            server_name: tls::server_name("localhost").unwrap(),
        }
    }

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn accepted(index: usize) -> RcptOutcome {
        RcptOutcome {
            index,
            result: RcptResult::Accepted("250 2.0.0 Ok: queued".into()),
        }
    }

    fn rejected(index: usize, code: u16, enh: (u8, u16, u16), text: &str) -> RcptOutcome {
        RcptOutcome {
            index,
            result: RcptResult::Rejected(UpstreamReply::local(code, enh, text)),
        }
    }

    /// Sends one message over a fresh connection.
    async fn send(
        s: &Settings,
        to: &[String],
        prefix: &[u8],
        body: &[u8],
    ) -> Result<Vec<RcptOutcome>, Error> {
        let mut client = Client::connect(s).await?;
        let mut source = body;
        let mut msg = Outgoing {
            sender: "app@corp.example",
            recipients: to,
            prefix,
            body: &mut source,
            size: transmitted_size(
                prefix,
                body.len() as u64,
                &body[body.len().saturating_sub(2)..],
            ),
            body_8bit: prefix.iter().chain(body).any(|b| *b >= 0x80),
            smtputf8: false,
        };
        client.send(&mut msg).await
    }

    fn lines(rec: &sink::Shared) -> Vec<Line> {
        rec.lock().unwrap().lines.clone()
    }

    fn texts(rec: &sink::Shared) -> Vec<String> {
        lines(rec).into_iter().map(|l| l.text).collect()
    }

    fn messages(rec: &sink::Shared) -> Vec<Message> {
        rec.lock().unwrap().messages.clone()
    }

    /// Byte-exact bodies after the sink un-stuffs them: (prefix, body, what the sink must get).
    #[tokio::test]
    async fn body_bytes_arrive_exactly() {
        let mut big = vec![b'a'; 64 * 1024 - 2];
        big.extend_from_slice(b"\r\n.starts the second chunk\r\n");
        let rows: Vec<(&[u8], Vec<u8>, Vec<u8>)> = vec![
            (
                b"",
                b"Subject: x\r\n\r\nhi\r\n".to_vec(),
                b"Subject: x\r\n\r\nhi\r\n".to_vec(),
            ),
            (
                b"",
                b".\r\n..\r\n.x\r\nmid.dle\r\n".to_vec(),
                b".\r\n..\r\n.x\r\nmid.dle\r\n".to_vec(),
            ),
            (
                b"Received: by r\r\n",
                b".dot after prefix\r\n".to_vec(),
                b"Received: by r\r\n.dot after prefix\r\n".to_vec(),
            ),
            (
                b"",
                b"caf\xc3\xa9 \xff\x00\x80\r\n".to_vec(),
                b"caf\xc3\xa9 \xff\x00\x80\r\n".to_vec(),
            ),
            (
                b"",
                b"no final newline".to_vec(),
                b"no final newline\r\n".to_vec(),
            ),
            (b"", b"ends in CR\r".to_vec(), b"ends in CR\r\r\n".to_vec()),
            (b"", Vec::new(), Vec::new()),
            (b"", big.clone(), big),
        ];
        for pipelining in [true, false] {
            let (addr, rec) = sink::start(Script {
                pipelining,
                eightbitmime: true,
                ..Default::default()
            })
            .await;
            for (prefix, body, _) in &rows {
                let out = send(
                    &settings(addr, Security::Plain),
                    &rcpts(&["a@x.example"]),
                    prefix,
                    body,
                )
                .await;
                assert_eq!(out.unwrap(), vec![accepted(0)]);
            }
            let got: Vec<Vec<u8>> = messages(&rec).into_iter().map(|m| m.data).collect();
            let want: Vec<Vec<u8>> = rows.iter().map(|r| r.2.clone()).collect();
            assert_eq!(got, want, "pipelining {pipelining}");
        }
    }

    /// One refused recipient does not fail the others, with and without PIPELINING; with
    /// PIPELINING, MAIL/RCPT/DATA arrive in one write.
    #[tokio::test]
    async fn per_recipient_outcomes() {
        for pipelining in [true, false] {
            let script = Script {
                pipelining,
                size: Some(1_000_000),
                eightbitmime: true,
                rcpt_replies: vec![("bad@x.example", "550 5.1.1 <bad@x.example>: User unknown")],
                ..Default::default()
            };
            let (addr, rec) = sink::start(script).await;
            let to = rcpts(&["a@x.example", "bad@x.example", "c@y.example"]);
            let out = send(
                &settings(addr, Security::Plain),
                &to,
                b"",
                "hé\r\n".as_bytes(),
            )
            .await
            .unwrap();
            let refused = rejected(1, 550, (5, 1, 1), "<bad@x.example>: User unknown");
            assert_eq!(out, vec![accepted(0), refused, accepted(2)]);
            let msgs = messages(&rec);
            assert_eq!(msgs.len(), 1);
            assert_eq!(
                msgs[0].mail,
                "MAIL FROM:<app@corp.example> SIZE=5 BODY=8BITMIME"
            );
            assert_eq!(msgs[0].rcpts, ["a@x.example", "c@y.example"]);
            let seen = lines(&rec);
            let envelope: Vec<(&str, bool)> = seen[1..6]
                .iter()
                .map(|l| (l.text.as_str(), l.ahead))
                .collect();
            // Pipelined: every line but DATA had more bytes behind it.
            let p = pipelining;
            assert_eq!(
                envelope,
                [
                    ("MAIL FROM:<app@corp.example> SIZE=5 BODY=8BITMIME", p),
                    ("RCPT TO:<a@x.example>", p),
                    ("RCPT TO:<bad@x.example>", p),
                    ("RCPT TO:<c@y.example>", p),
                    ("DATA", false),
                ]
            );
        }
    }

    /// More recipients than one pipelined group: replies still line up with recipients.
    #[tokio::test]
    async fn many_recipients_pipelined_in_groups() {
        let script = Script {
            pipelining: true,
            rcpt_replies: vec![("r120@x", "550 5.1.1 no")],
            ..Default::default()
        };
        let (addr, rec) = sink::start(script).await;
        let to: Vec<String> = (0..250).map(|i| format!("r{i}@x")).collect();
        let out = send(&settings(addr, Security::Plain), &to, b"", b"x\r\n")
            .await
            .unwrap();
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o.index, i);
            assert_eq!(o.result.is_accepted(), i != 120, "recipient {i}");
        }
        assert_eq!(out[120], rejected(120, 550, (5, 1, 1), "no"));
        assert_eq!(messages(&rec)[0].rcpts.len(), 249);
    }

    /// All recipients refused: no body goes out, every outcome is a rejection.
    #[tokio::test]
    async fn all_recipients_refused() {
        let rows = [(true, false), (false, false), (true, true)];
        for (pipelining, always_354) in rows {
            let script = Script {
                pipelining,
                always_354,
                rcpt_replies: vec![("a@x", "550 5.1.1 no"), ("b@x", "450 4.2.1 later")],
                ..Default::default()
            };
            let (addr, rec) = sink::start(script).await;
            let out = send(
                &settings(addr, Security::Plain),
                &rcpts(&["a@x", "b@x"]),
                b"",
                b"body\r\n",
            )
            .await;
            let expected = vec![
                rejected(0, 550, (5, 1, 1), "no"),
                rejected(1, 450, (4, 2, 1), "later"),
            ];
            assert_eq!(
                out.unwrap(),
                expected,
                "pipelining {pipelining} always_354 {always_354}"
            );
            let t = texts(&rec);
            // Without PIPELINING, DATA is never sent; with it, DATA is refused (554) or, when a
            // broken server says 354, an empty message is ended at once.
            assert_eq!(t.contains(&"DATA".to_string()), pipelining);
            let bodies: Vec<Vec<u8>> = messages(&rec).into_iter().map(|m| m.data).collect();
            let want: Vec<Vec<u8>> = if always_354 {
                vec![Vec::new()]
            } else {
                Vec::new()
            };
            assert_eq!(bodies, want);
        }
    }

    /// Replies that refuse the whole message: MAIL (Err, permanent or not), the final dot
    /// (every accepted recipient carries the reply).
    #[tokio::test]
    async fn whole_message_refusals() {
        let (addr, _) = sink::start(Script {
            mail_reply: "550 5.7.1 Sender denied",
            ..Default::default()
        })
        .await;
        let err = send(
            &settings(addr, Security::Plain),
            &rcpts(&["a@x"]),
            b"",
            b"x\r\n",
        )
        .await
        .unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(
            err.to_string(),
            "upstream sink: mail refused: 550 5.7.1 Sender denied"
        );

        let (addr, _) = sink::start(Script {
            mail_reply: "451 4.3.0 busy",
            pipelining: true,
            ..Default::default()
        })
        .await;
        let err = send(
            &settings(addr, Security::Plain),
            &rcpts(&["a@x"]),
            b"",
            b"x\r\n",
        )
        .await
        .unwrap_err();
        assert!(!err.is_permanent());

        for final_reply in ["451 4.7.1 try later", "554 5.7.1 spam"] {
            let script = Script {
                final_reply,
                rcpt_replies: vec![("b@x", "550 5.1.1 no")],
                ..Default::default()
            };
            let (addr, _) = sink::start(script).await;
            let out = send(
                &settings(addr, Security::Plain),
                &rcpts(&["a@x", "b@x"]),
                b"",
                b"x\r\n",
            )
            .await;
            let (reply, _) =
                crate::smtp::reply_parser::parse_reply(format!("{final_reply}\r\n").as_bytes())
                    .unwrap()
                    .unwrap();
            let expected = vec![
                RcptOutcome {
                    index: 0,
                    result: RcptResult::Rejected(reply),
                },
                rejected(1, 550, (5, 1, 1), "no"),
            ];
            assert_eq!(out.unwrap(), expected);
        }
    }

    /// A lost connection after the final dot is "maybe delivered", never a plain failure.
    #[tokio::test]
    async fn drop_after_dot_is_maybe_delivered() {
        let (addr, rec) = sink::start(Script {
            drop_after_dot: true,
            ..Default::default()
        })
        .await;
        let err = send(
            &settings(addr, Security::Plain),
            &rcpts(&["a@x"]),
            b"",
            b"x\r\n",
        )
        .await
        .unwrap_err();
        assert!(err.is_maybe_delivered(), "{err}");
        assert!(!err.is_permanent());
        assert_eq!(err.stage(), Stage::FinalDot);
        assert!(texts(&rec).contains(&"DATA".to_string()));
    }

    /// Local refusals, before anything is written: SMTPUTF8 or 8BITMIME needed but not
    /// offered, or over the advertised SIZE, are [`Error::Unsupported`] (not permanent, the
    /// connection stays usable); an address that would break the command line is a
    /// permanent 501. Nothing reaches the upstream.
    #[tokio::test]
    async fn local_refusals() {
        let (addr, rec) = sink::start(Script {
            size: Some(1_000_000),
            ..Default::default()
        })
        .await;
        let s = settings(addr, Security::Plain);
        let mut client = Client::connect(&s).await.unwrap();
        let to = rcpts(&["a@x"]);
        struct Row {
            prefix: &'static [u8],
            smtputf8: bool,
            body_8bit: bool,
            size: u64,
            sender: &'static str,
            missing: Option<Capability>,
            shown: &'static str,
        }
        let ok = Row {
            prefix: b"",
            smtputf8: false,
            body_8bit: false,
            size: 10,
            sender: "app@x",
            missing: None,
            shown: "",
        };
        let rows = [
            Row {
                smtputf8: true,
                missing: Some(Capability::SmtpUtf8),
                shown: "upstream sink: cannot take this message: SMTPUTF8 needed but not offered",
                ..ok
            },
            Row {
                body_8bit: true,
                missing: Some(Capability::EightBitMime),
                shown: "upstream sink: cannot take this message: 8BITMIME needed but not offered",
                ..ok
            },
            // postern's own prefix counts as content too (a UTF-8 recipient in Received).
            Row {
                prefix: "Received: for <\u{fc}@x>\r\n".as_bytes(),
                missing: Some(Capability::EightBitMime),
                shown: "upstream sink: cannot take this message: 8BITMIME needed but not offered",
                ..ok
            },
            Row {
                size: 1_000_001,
                missing: Some(Capability::Size {
                    size: 1_000_001,
                    limit: 1_000_000,
                }),
                shown: "upstream sink: cannot take this message: message of 1000001 octets exceeds SIZE 1000000",
                ..ok
            },
            Row {
                sender: "a\r\nRSET@x",
                shown: "upstream sink: mail refused: 501 5.1.7 sender address has characters SMTP cannot carry",
                ..ok
            },
        ];
        for row in rows {
            let Row {
                prefix,
                smtputf8,
                body_8bit,
                size,
                sender,
                missing,
                shown,
            } = row;
            let mut source: &[u8] = b"x";
            let mut msg = Outgoing {
                sender,
                recipients: &to,
                prefix,
                body: &mut source,
                size,
                body_8bit,
                smtputf8,
            };
            let err = client.send(&mut msg).await.unwrap_err();
            assert_eq!(err.is_permanent(), missing.is_none(), "{err}");
            assert_eq!(err.unsupported(), missing.as_ref());
            assert_eq!(err.to_string(), shown);
            assert!(client.is_reusable(), "{err}");
        }
        assert_eq!(texts(&rec), ["EHLO relay.test"]);
        // At exactly the limit the message goes, declaring its size.
        let mut source: &[u8] = b"x";
        let mut msg = Outgoing {
            sender: "app@x",
            recipients: &to,
            prefix: b"",
            body: &mut source,
            size: 1_000_000,
            body_8bit: false,
            smtputf8: false,
        };
        assert_eq!(client.send(&mut msg).await.unwrap(), vec![accepted(0)]);
        assert_eq!(texts(&rec)[1], "MAIL FROM:<app@x> SIZE=1000000");
        // A recipient with CRLF is refused alone; the other is delivered.
        // A quoted local part with a space and brackets is carried as it is.
        let to = rcpts(&["x@y>\r\nDATA", "\"john <doe>\"@y", "ok@y"]);
        let out = send(&s, &to, b"", b"x\r\n").await.unwrap();
        let text = "recipient address has characters SMTP cannot carry";
        assert_eq!(
            out,
            vec![rejected(0, 501, (5, 1, 3), text), accepted(1), accepted(2)]
        );
        let t = texts(&rec);
        assert!(
            !t.iter().any(|l| l.contains("RSET") || l.contains("x@y")),
            "{t:?}"
        );
        assert!(
            t.contains(&"RCPT TO:<\"john <doe>\"@y>".to_string()),
            "{t:?}"
        );
    }

    /// STARTTLS: used when offered and required; missing is an error; injected bytes
    /// behind the 220 are refused; AUTH PLAIN and LOGIN carry the right secrets, after TLS.
    #[tokio::test]
    async fn starttls_and_auth() {
        let pki = sink::pki();
        let dir = tempfile::tempdir().unwrap();
        let tls = target(&pki, true, &dir);
        let rows: [(&'static [&'static str], &str); 3] = [
            (&["LOGIN", "PLAIN"], "PLAIN |user|secret"),
            (&["LOGIN"], "LOGIN user|secret"),
            (&["PLAIN"], "PLAIN |user|wrong"),
        ];
        for (mechs, auth_seen) in rows {
            let script = Script {
                starttls: Some(pki.server.clone()),
                auth: mechs,
                ..Default::default()
            };
            let (addr, rec) = sink::start(script).await;
            let mut s = settings(addr, Security::StartTls(tls.clone()));
            let wrong = auth_seen.ends_with("wrong");
            s.credentials = creds(if wrong { "wrong" } else { "secret" });
            let out = send(&s, &rcpts(&["a@x"]), b"", b"x\r\n").await;
            assert_eq!(rec.lock().unwrap().auth, [auth_seen]);
            if wrong {
                let err = out.unwrap_err();
                assert!(
                    matches!(err, Error::Auth { .. }) && !err.is_permanent(),
                    "{err}"
                );
                continue;
            }
            assert_eq!(out.unwrap(), vec![accepted(0)]);
            let seen = lines(&rec);
            let first: Vec<(&str, bool)> =
                seen[..3].iter().map(|l| (l.text.as_str(), l.tls)).collect();
            assert_eq!(
                first,
                [
                    ("EHLO relay.test", false),
                    ("STARTTLS", false),
                    ("EHLO relay.test", true)
                ]
            );
            assert!(seen[3..].iter().all(|l| l.tls));
        }

        let (addr, rec) = sink::start(Script::default()).await;
        let err = Client::connect(&settings(addr, Security::StartTls(tls.clone())))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "upstream sink: upstream does not offer STARTTLS"
        );
        assert_eq!(texts(&rec), ["EHLO relay.test"]);

        let script = Script {
            starttls: Some(pki.server.clone()),
            inject_after_starttls: true,
            ..Default::default()
        };
        let (addr, _) = sink::start(script).await;
        let err = Client::connect(&settings(addr, Security::StartTls(tls)))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Protocol {
                    stage: Stage::StartTls,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// RFC 7817: a certificate from an unknown CA fails; `tls_verify: false` accepts it;
    /// implicit TLS works from the first byte.
    #[tokio::test]
    async fn certificate_verification() {
        let pki = sink::pki();
        let other = sink::pki();
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            (target(&other, true, &dir), true),
            (target(&other, false, &dir), false),
            (target(&pki, true, &dir), false),
        ];
        for (tls, fails) in rows {
            for implicit in [false, true] {
                let script = if implicit {
                    Script {
                        implicit: Some(pki.server.clone()),
                        ..Default::default()
                    }
                } else {
                    Script {
                        starttls: Some(pki.server.clone()),
                        ..Default::default()
                    }
                };
                let (addr, _) = sink::start(script).await;
                let security = if implicit {
                    Security::Implicit(tls.clone())
                } else {
                    Security::StartTls(tls.clone())
                };
                let out = send(&settings(addr, security), &rcpts(&["a@x"]), b"", b"x\r\n").await;
                match out {
                    Err(Error::Tls { .. }) if fails => {}
                    Ok(o) if !fails => assert_eq!(o, vec![accepted(0)]),
                    other => panic!("implicit {implicit} fails {fails}: {other:?}"),
                }
            }
        }
        // The name is checked too: the certificate is for localhost and 127.0.0.1 only.
        let (addr, _) = sink::start(Script {
            implicit: Some(pki.server.clone()),
            ..Default::default()
        })
        .await;
        let mut tls = target(&pki, true, &dir);
        tls.server_name = tls::server_name("smtp.example.com").unwrap();
        let err = send(
            &settings(addr, Security::Implicit(tls)),
            &rcpts(&["a@x"]),
            b"",
            b"x",
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err}");
    }

    /// HELO fallback, greeting timeout.
    #[tokio::test]
    async fn helo_fallback_and_timeout() {
        let (addr, rec) = sink::start(Script {
            ehlo_502: true,
            pipelining: true,
            ..Default::default()
        })
        .await;
        let out = send(
            &settings(addr, Security::Plain),
            &rcpts(&["a@x"]),
            b"",
            b"x\r\n",
        )
        .await
        .unwrap();
        assert_eq!(out, vec![accepted(0)]);
        let t = texts(&rec);
        assert_eq!(
            t[..3],
            [
                "EHLO relay.test",
                "HELO relay.test",
                "MAIL FROM:<app@corp.example>"
            ]
        );
        // HELO means no PIPELINING: the RCPT waited for the MAIL reply.
        assert!(lines(&rec).iter().all(|l| !l.ahead));

        let (addr, _) = sink::start(Script {
            silent: true,
            ..Default::default()
        })
        .await;
        let mut s = settings(addr, Security::Plain);
        s.timeouts.command = Duration::from_millis(200);
        let err = Client::connect(&s).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    stage: Stage::Greeting,
                    ..
                }
            ),
            "{err}"
        );
    }

    async fn pool_send(pool: &Pool, to: &[String]) -> Result<Vec<RcptOutcome>, Error> {
        let mut source: &[u8] = b"pooled\r\n";
        let mut msg = Outgoing {
            sender: "app@corp.example",
            recipients: to,
            prefix: b"",
            body: &mut source,
            size: 8,
            body_8bit: false,
            smtputf8: false,
        };
        pool.deliver(&mut msg).await
    }

    /// Two messages, one TCP connection (RSET between, no second EHLO); an expired idle
    /// connection is not reused; a failed one is dropped.
    #[tokio::test]
    async fn pool_reuses_connections() {
        let script = Script {
            pipelining: true,
            rcpt_replies: vec![("bad@x", "550 5.1.1 no")],
            ..Default::default()
        };
        let (addr, rec) = sink::start(script).await;
        let pool = Pool::new(settings(addr, Security::Plain), 2, Duration::from_secs(30));
        assert_eq!(
            pool_send(&pool, &rcpts(&["a@x"])).await.unwrap(),
            vec![accepted(0)]
        );
        assert_eq!(
            pool_send(&pool, &rcpts(&["bad@x"])).await.unwrap(),
            vec![rejected(0, 550, (5, 1, 1), "no")]
        );
        assert_eq!(
            pool_send(&pool, &rcpts(&["b@x"])).await.unwrap(),
            vec![accepted(0)]
        );
        assert_eq!(rec.lock().unwrap().connections, 1);
        assert_eq!(pool.connections_opened(), 1);
        let t = texts(&rec);
        assert_eq!(t.iter().filter(|l| l.starts_with("EHLO")).count(), 1);
        assert_eq!(t.iter().filter(|l| *l == "RSET").count(), 2);
        assert_eq!(messages(&rec).len(), 2);
        assert_eq!(pool.idle_count(), 1);
        pool.close_idle().await;
        assert_eq!(pool.idle_count(), 0);

        let (addr, rec) = sink::start(Script::default()).await;
        let pool = Pool::new(settings(addr, Security::Plain), 1, Duration::ZERO);
        pool_send(&pool, &rcpts(&["a@x"])).await.unwrap();
        pool_send(&pool, &rcpts(&["a@x"])).await.unwrap();
        assert_eq!(pool.connections_opened(), 2);
        assert_eq!(rec.lock().unwrap().connections, 2);

        let (addr, rec) = sink::start(Script {
            mail_reply: "451 4.3.0 busy",
            ..Default::default()
        })
        .await;
        let pool = Pool::new(settings(addr, Security::Plain), 1, Duration::from_secs(30));
        assert!(pool_send(&pool, &rcpts(&["a@x"])).await.is_err());
        assert_eq!(pool.idle_count(), 0);
        assert!(pool_send(&pool, &rcpts(&["a@x"])).await.is_err());
        assert_eq!(rec.lock().unwrap().connections, 2);
    }

    /// An upstream that lacks an extension keeps its connection: nothing was sent on it,
    /// and the next message that does not need the extension reuses it.
    #[tokio::test]
    async fn pool_keeps_connection_after_unsupported() {
        let (addr, rec) = sink::start(Script::default()).await;
        let pool = Pool::new(settings(addr, Security::Plain), 1, Duration::from_secs(30));
        let to = rcpts(&["a@x"]);
        let mut source: &[u8] = b"x\r\n";
        let mut msg = Outgoing {
            sender: "app@corp.example",
            recipients: &to,
            prefix: b"",
            body: &mut source,
            size: 3,
            body_8bit: false,
            smtputf8: true,
        };
        let err = pool.deliver(&mut msg).await.unwrap_err();
        assert_eq!(err.unsupported(), Some(&Capability::SmtpUtf8));
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(pool_send(&pool, &to).await.unwrap(), vec![accepted(0)]);
        assert_eq!(rec.lock().unwrap().connections, 1);
        assert_eq!(
            texts(&rec)[..3],
            ["EHLO relay.test", "RSET", "MAIL FROM:<app@corp.example>"]
        );
    }

    /// The upstream closes a pooled connection while it is idle (with a 421 first, or
    /// just EOF): the next delivery notices at the RSET and uses a new connection, and
    /// succeeds the first time.
    #[tokio::test]
    async fn pool_replaces_connection_closed_while_idle() {
        for last_words in ["421 4.4.2 sink.test idle timeout, closing", ""] {
            let (addr, rec) = sink::start(Script {
                hang_up_after_message: Some(last_words),
                ..Default::default()
            })
            .await;
            let pool = Pool::new(settings(addr, Security::Plain), 1, Duration::from_secs(30));
            let to = rcpts(&["a@x"]);
            for _ in 0..3 {
                assert_eq!(
                    pool_send(&pool, &to).await.unwrap(),
                    vec![accepted(0)],
                    "{last_words:?}"
                );
            }
            assert_eq!(messages(&rec).len(), 3);
            assert_eq!(rec.lock().unwrap().connections, 3);
            assert_eq!(pool.connections_opened(), 3);
        }
    }

    /// `reap_idle` says QUIT to connections idle past `idle_timeout` and keeps the others;
    /// `close_idle` says QUIT to all.
    #[tokio::test]
    async fn reap_and_close_idle_say_quit() {
        // (idle_timeout, QUITs after reap_idle, QUITs after close_idle)
        let rows = [(Duration::ZERO, 1, 1), (Duration::from_secs(30), 0, 1)];
        for (idle_timeout, after_reap, after_close) in rows {
            let (addr, rec) = sink::start(Script::default()).await;
            let pool = Pool::new(settings(addr, Security::Plain), 1, idle_timeout);
            pool_send(&pool, &rcpts(&["a@x"])).await.unwrap();
            assert_eq!(pool.idle_count(), 1);
            let quits = || texts(&rec).iter().filter(|l| *l == "QUIT").count();
            pool.reap_idle().await;
            assert_eq!(quits(), after_reap, "{idle_timeout:?}");
            pool.close_idle().await;
            assert_eq!(quits(), after_close, "{idle_timeout:?}");
            assert_eq!(pool.idle_count(), 0);
        }
    }

    /// Half the shortest idle_timeout, within [1s, 30s]; directory upstreams do not count.
    #[test]
    fn reap_period() {
        let dir = tempfile::tempdir().unwrap();
        // (idle timeouts, period in milliseconds)
        let rows: &[(&[&str], u64)] = &[
            (&["30s"], 15_000),
            (&["1s"], 1_000),
            (&["3s"], 1_500),
            (&["10m"], 30_000),
            (&["90s", "4s"], 2_000),
            (&[], 30_000),
        ];
        for (timeouts, millis) in rows {
            let mut upstreams: Vec<String> = timeouts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    format!("{{name: u{i}, address: \"h:25\", tls: none, idle_timeout: {t}}}")
                })
                .collect();
            upstreams.push("{name: files, directory: out}".into());
            let yaml = format!(
                "listeners: [{{name: s, address: \"127.0.0.1:25\"}}]\nqueue: {{directory: q}}\nupstreams: [{}]\n",
                upstreams.join(", ")
            );
            let cfg: Config = serde_yaml::from_str(&yaml).unwrap();
            let ups = Upstreams::with_base_dir(&cfg, dir.path()).unwrap();
            assert_eq!(
                ups.reap_period(),
                Duration::from_millis(*millis),
                "{timeouts:?}"
            );
        }
    }

    /// At most `max_connections` at once, however many deliveries run concurrently.
    #[tokio::test]
    async fn pool_caps_connections() {
        let (addr, rec) = sink::start(Script {
            pipelining: true,
            ..Default::default()
        })
        .await;
        let pool = Pool::new(settings(addr, Security::Plain), 2, Duration::from_secs(30));
        let to = rcpts(&["a@x"]);
        let sends = (0..6).map(|_| pool_send(&pool, &to));
        let results = futures_join(sends).await;
        assert!(results.iter().all(|r| r.is_ok()));
        assert!(
            pool.connections_opened() <= 2,
            "{}",
            pool.connections_opened()
        );
        assert_eq!(messages(&rec).len(), 6);
    }

    /// Joins futures on the current task (no extra crate).
    async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in futs {
            set.push(Box::pin(f));
        }
        let mut out = Vec::new();
        let mut pending: Vec<_> = set.into_iter().map(Some).collect();
        let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut done = true;
            for (i, slot) in pending.iter_mut().enumerate() {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => {
                            results[i] = Some(v);
                            *slot = None;
                        }
                        std::task::Poll::Pending => done = false,
                    }
                }
            }
            if done {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        out.extend(results.into_iter().map(Option::unwrap));
        out
    }

    const CONFIG: &str = r#"
hostname: relay.test
listeners: [{name: sub, address: "127.0.0.1:2525"}]
queue: {directory: spool}
upstreams:
  - {name: smart, address: "ADDR", tls: none, auth: {username: user, password_file: secret.txt}}
  - {name: files, directory: out}
routes:
  - {senders: ["@corp.example"], upstreams: [smart, files]}
  - {senders: ["*"], upstreams: [files]}
"#;

    /// The facade end to end: config → router → SMTP upstream (password file, AUTH) and
    /// directory upstream.
    #[tokio::test]
    async fn facade_from_config() {
        let (addr, rec) = sink::start(Script {
            auth: &["PLAIN"],
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.txt"), "secret\n").unwrap();
        let cfg: Config = serde_yaml::from_str(&CONFIG.replace("ADDR", &addr.to_string())).unwrap();
        let ups = Upstreams::with_base_dir(&cfg, dir.path()).unwrap();
        assert_eq!(
            ups.router().route("a@CORP.example").unwrap(),
            ["smart", "files"]
        );
        assert_eq!(ups.router().route("").unwrap(), ["files"]);
        let to = rcpts(&["r@x"]);
        let rows = [
            ("smart", "250 2.0.0 Ok: queued"),
            ("files", "250 2.0.0 Ok: saved as Q1.eml"),
        ];
        for (upstream, reply) in rows {
            let mut source: &[u8] = b"body\r\n";
            let mut msg = Outgoing {
                sender: "a@corp.example",
                recipients: &to,
                prefix: b"H: v\r\n",
                body: &mut source,
                size: 12,
                body_8bit: false,
                smtputf8: false,
            };
            assert_eq!(
                ups.deliver(upstream, "Q1", &mut msg).await.unwrap(),
                vec![RcptOutcome {
                    index: 0,
                    result: RcptResult::Accepted(reply.into())
                }]
            );
        }
        assert_eq!(rec.lock().unwrap().auth, ["PLAIN |user|secret"]);
        assert_eq!(messages(&rec)[0].data, b"H: v\r\nbody\r\n");
        assert_eq!(
            std::fs::read(dir.path().join("out/Q1.eml")).unwrap(),
            b"H: v\r\nbody\r\n"
        );
        let mut source: &[u8] = b"";
        let mut msg = Outgoing {
            sender: "",
            recipients: &to,
            prefix: b"",
            body: &mut source,
            size: 0,
            body_8bit: false,
            smtputf8: false,
        };
        assert!(ups.deliver("nope", "Q2", &mut msg).await.is_err());
        assert!(ups.pool("smart").is_some() && ups.pool("files").is_none());
    }

    /// One error per broken upstream config, naming the key.
    #[test]
    fn build_errors() {
        let dir = tempfile::tempdir().unwrap();
        let rows: &[(&str, &str)] = &[
            (
                "upstreams: [{name: a, address: \"h:25\", directory: d}]",
                "upstreams[a]: set exactly one of address and directory",
            ),
            (
                "upstreams: [{name: a}]",
                "upstreams[a]: set exactly one of address and directory",
            ),
            (
                "upstreams: [{name: a, address: \"h\", tls: none}]",
                "upstreams[a].address: \"h\" is not host:port",
            ),
            (
                "upstreams: [{name: a, address: \"::1:25\", tls: none}]",
                "upstreams[a].address: \"::1:25\" is not host:port",
            ),
            (
                "upstreams: [{name: a, address: \"h:25\", tls: none, auth: {username: u}}]",
                "upstreams[a].auth: set exactly one of password and password_file",
            ),
            (
                "upstreams: [{name: a, address: \"h:25\", tls: none}, {name: a, address: \"h:26\", tls: none}]",
                "upstreams: the name \"a\" is used twice",
            ),
            (
                "upstreams: [{name: a, address: \"h:25\", tls: none}]\nroutes: [{senders: [\"*\"], upstreams: [b]}]",
                "routes: upstream \"b\" is not defined in upstreams",
            ),
            (
                "upstreams: [{name: a, address: \"h:25\", tls: starttls, ca_file: none.pem}]",
                "upstreams[a]: cannot read CA file",
            ),
        ];
        for (upstreams, expected) in rows {
            let yaml = format!(
                "listeners: [{{name: s, address: \"127.0.0.1:25\"}}]\nqueue: {{directory: q}}\n{upstreams}\n"
            );
            let cfg: Config = serde_yaml::from_str(&yaml).unwrap();
            let err = Upstreams::with_base_dir(&cfg, dir.path())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{err}");
        }
    }

    #[test]
    fn addresses() {
        let rows: &[(&str, Option<(&str, u16)>)] = &[
            ("smtp.office365.com:587", Some(("smtp.office365.com", 587))),
            ("10.0.0.1:25", Some(("10.0.0.1", 25))),
            ("[::1]:2525", Some(("::1", 2525))),
            ("::1:25", None),
            ("host", None),
            ("host:0", None),
            ("host:99999", None),
            (":25", None),
            ("[::1:25", None),
        ];
        for (input, expected) in rows {
            assert_eq!(split_address(input), *expected, "{input}");
        }
    }
}
