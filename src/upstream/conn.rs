//! The connection under an SMTP client session: a plain or TLS stream, a bounded read
//! buffer, timeouts, and the session set-up steps (EHLO, STARTTLS, AUTH with a password
//! or an OAuth 2.0 token).
//!
//! Split from `client.rs` so that file holds the transaction logic only.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use crate::smtp::reply_parser::{Capabilities, UpstreamReply, parse_reply};
use crate::stream::Stream;
use crate::upstream::error::{Error, Stage};
use crate::upstream::oauth2::sasl::{self, Mechanism, Target};
use crate::upstream::oauth2::{AccessToken, TokenError, TokenSource};
use crate::upstream::probe::{self, StepObserver};
use crate::upstream::settings::{AuthSecret, Credentials, Timeouts, TlsTarget};

/// The connection below the SMTP dialogue: a stream, a read buffer, and timeouts.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    /// Bytes read but not yet parsed; bounded by the reply parser's caps.
    rbuf: Vec<u8>,
    /// Upstream name, for errors.
    pub(crate) name: String,
    pub(crate) timeouts: Timeouts,
    /// Told of each line and reply (`postern probe`); `None` in delivery.
    pub(crate) observer: Option<Arc<dyn StepObserver>>,
}

impl Conn {
    /// A plain connection over `tcp`.
    pub(crate) fn new(tcp: TcpStream, name: String, timeouts: Timeouts) -> Conn {
        Conn {
            stream: Stream::Plain(tcp),
            rbuf: Vec::new(),
            name,
            timeouts,
            observer: None,
        }
    }

    pub(crate) fn io(&self, stage: Stage, source: io::Error) -> Error {
        Error::Io {
            upstream: self.name.clone(),
            stage,
            source,
        }
    }

    pub(crate) fn refused(&self, stage: Stage, reply: UpstreamReply) -> Error {
        Error::Reply {
            upstream: self.name.clone(),
            stage,
            reply,
        }
    }

    /// Writes and flushes `bytes` within the command timeout.
    pub(crate) async fn write(&mut self, bytes: &[u8], stage: Stage) -> Result<(), Error> {
        let stream = &mut self.stream;
        let io = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        match timeout(self.timeouts.command, io).await {
            Err(_) => Err(Error::Timeout {
                upstream: self.name.clone(),
                stage,
            }),
            Ok(Err(source)) => Err(self.io(stage, source)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Reads one complete reply within `limit`.
    pub(crate) async fn read_reply(
        &mut self,
        stage: Stage,
        limit: Duration,
    ) -> Result<UpstreamReply, Error> {
        match timeout(limit, self.read_reply_inner(stage)).await {
            Err(_) => Err(Error::Timeout {
                upstream: self.name.clone(),
                stage,
            }),
            Ok(result) => {
                if let (Some(o), Ok(reply)) = (&self.observer, &result) {
                    o.reply(stage, reply);
                }
                result
            }
        }
    }

    async fn read_reply_inner(&mut self, stage: Stage) -> Result<UpstreamReply, Error> {
        loop {
            match parse_reply(&self.rbuf) {
                Ok(Some((reply, used))) => {
                    self.rbuf.drain(..used.min(self.rbuf.len()));
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => {
                    let detail = e.to_string();
                    return Err(Error::Protocol {
                        upstream: self.name.clone(),
                        stage,
                        detail,
                    });
                }
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    let eof = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed by upstream",
                    );
                    return Err(self.io(stage, eof));
                }
                Ok(_) => {}
                Err(source) => return Err(self.io(stage, source)),
            }
        }
    }

    /// Sends one command line and reads its reply. Never logs the line (it may be AUTH).
    pub(crate) async fn command(
        &mut self,
        line: &str,
        stage: Stage,
    ) -> Result<UpstreamReply, Error> {
        if let Some(o) = &self.observer {
            o.sent(stage, &probe::redact(stage, line));
        }
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write(&bytes, stage).await?;
        self.read_reply(stage, self.timeouts.command).await
    }

    /// EHLO, or HELO when EHLO is refused with 5xx (RFC 5321 3.2); returns what was offered.
    pub(crate) async fn hello(&mut self, name: &str) -> Result<Capabilities, Error> {
        let reply = self.command(&format!("EHLO {name}"), Stage::Ehlo).await?;
        if reply.code == 250 {
            return Ok(Capabilities::from_ehlo(&reply));
        }
        if !reply.is_permanent() {
            return Err(self.refused(Stage::Ehlo, reply));
        }
        let reply = self.command(&format!("HELO {name}"), Stage::Ehlo).await?;
        if reply.code != 250 {
            return Err(self.refused(Stage::Ehlo, reply));
        }
        Ok(Capabilities::default())
    }

    /// RFC 3207 4: STARTTLS, 220, then the handshake. Required: never fall back to plain.
    pub(crate) async fn starttls(
        mut self,
        caps: &Capabilities,
        target: &TlsTarget,
    ) -> Result<Conn, Error> {
        if !caps.starttls {
            return Err(Error::NoStartTls {
                upstream: self.name.clone(),
            });
        }
        let reply = self.command("STARTTLS", Stage::StartTls).await?;
        if reply.code != 220 {
            return Err(self.refused(Stage::StartTls, reply));
        }
        // Bytes after the 220 were sent in plain text before the handshake: an injection
        // attempt (the client-side CVE-2011-0411 class). They must never be read as replies.
        if !self.rbuf.is_empty() {
            let detail = "unexpected bytes after the STARTTLS reply".to_owned();
            return Err(Error::Protocol {
                upstream: self.name.clone(),
                stage: Stage::StartTls,
                detail,
            });
        }
        self.start_tls(target).await
    }

    /// Wraps the plain TCP stream in TLS; consumes the plain connection.
    pub(crate) async fn start_tls(self, target: &TlsTarget) -> Result<Conn, Error> {
        let Conn {
            stream,
            rbuf,
            name,
            timeouts,
            observer,
        } = self;
        let Stream::Plain(tcp) = stream else {
            let detail = "TLS requested on a TLS connection".to_owned();
            return Err(Error::Protocol {
                upstream: name,
                stage: Stage::TlsHandshake,
                detail,
            });
        };
        let connector = TlsConnector::from(target.config.clone());
        let handshake = connector.connect(target.server_name.clone(), tcp);
        let tls = match timeout(timeouts.command, handshake).await {
            Err(_) => {
                return Err(Error::Timeout {
                    upstream: name,
                    stage: Stage::TlsHandshake,
                });
            }
            Ok(Err(source)) => {
                return Err(Error::Tls {
                    upstream: name,
                    source,
                });
            }
            Ok(Ok(tls)) => tls,
        };
        if let Some(o) = &observer {
            o.tls(&probe::tls_info(tls.get_ref().1));
        }
        Ok(Conn {
            stream: Stream::from(tls),
            rbuf,
            name,
            timeouts,
            observer,
        })
    }

    /// RFC 4954 AUTH with `c`: a password by PLAIN or LOGIN, a token by XOAUTH2 or
    /// OAUTHBEARER (`target`: where the token is presented, for OAUTHBEARER). 235 = success.
    pub(crate) async fn authenticate(
        &mut self,
        caps: &Capabilities,
        c: &Credentials,
        target: Target<'_>,
    ) -> Result<(), Error> {
        match &c.secret {
            AuthSecret::Password(password) => self.auth_password(caps, &c.username, password).await,
            AuthSecret::OAuth2(source) => self.auth_oauth2(caps, &c.username, source, target).await,
        }
    }

    /// AUTH PLAIN (RFC 4616) when offered, else AUTH LOGIN.
    async fn auth_password(
        &mut self,
        caps: &Capabilities,
        username: &str,
        password: &str,
    ) -> Result<(), Error> {
        let offered = |m: &str| caps.auth.iter().any(|a| a == m);
        let reply = if offered("PLAIN") {
            // RFC 4616 2: authzid NUL authcid NUL passwd, with an empty authzid.
            let token = BASE64.encode(format!("\0{username}\0{password}"));
            self.command(&format!("AUTH PLAIN {token}"), Stage::Auth)
                .await?
        } else if offered("LOGIN") {
            self.auth_login(username, password).await?
        } else {
            let detail = "upstream offers no supported AUTH mechanism (PLAIN, LOGIN)".to_owned();
            return Err(self.protocol(Stage::Auth, detail));
        };
        self.auth_result(reply)
    }

    /// 235 is success; another challenge is a protocol error; the rest is a refusal.
    fn auth_result(&self, reply: UpstreamReply) -> Result<(), Error> {
        match reply.code {
            235 => Ok(()),
            334 => Err(self.protocol(Stage::Auth, "unexpected AUTH challenge".to_owned())),
            _ => Err(Error::Auth {
                upstream: self.name.clone(),
                reply,
            }),
        }
    }

    fn token_error(&self, source: TokenError) -> Error {
        Error::Token {
            upstream: self.name.clone(),
            source,
        }
    }

    fn protocol(&self, stage: Stage, detail: String) -> Error {
        Error::Protocol {
            upstream: self.name.clone(),
            stage,
            detail,
        }
    }

    /// XOAUTH2 when offered, else OAUTHBEARER (RFC 7628), with the cached token. A `535`
    /// may mean the token was revoked or expired early: one fresh token, one more try.
    async fn auth_oauth2(
        &mut self,
        caps: &Capabilities,
        username: &str,
        source: &TokenSource,
        target: Target<'_>,
    ) -> Result<(), Error> {
        let Some(mechanism) = Mechanism::pick(caps.auth.iter().map(String::as_str)) else {
            let detail = "upstream offers no OAuth2 AUTH mechanism (XOAUTH2, OAUTHBEARER)";
            return Err(self.protocol(Stage::Auth, detail.to_owned()));
        };
        let token = source.token().await.map_err(|e| self.token_error(e))?;
        let reply = self.bearer(mechanism, username, &token, target).await?;
        if reply.code != 535 {
            return self.auth_result(reply);
        }
        // RFC 4954 4: after a failed AUTH the client may try again on the same session.
        info!(upstream = %self.name, "OAuth2 token refused with 535; fetching a new one and trying once more");
        let fresh = source
            .after_rejection(&token)
            .await
            .map_err(|e| self.token_error(e))?;
        let reply = self.bearer(mechanism, username, &fresh, target).await?;
        self.auth_result(reply)
    }

    /// One `AUTH <mechanism> <initial response>` exchange. A `334` carries the server's
    /// error (base64 JSON): it is logged and answered as the mechanism requires, and the
    /// final reply is returned.
    async fn bearer(
        &mut self,
        mechanism: Mechanism,
        username: &str,
        token: &AccessToken,
        target: Target<'_>,
    ) -> Result<UpstreamReply, Error> {
        let ir = sasl::initial_response(mechanism, username, token.expose(), target);
        let reply = self
            .command(&format!("AUTH {} {ir}", mechanism.as_str()), Stage::Auth)
            .await?;
        if reply.code != 334 {
            return Ok(reply);
        }
        let challenge = reply.lines.first().and_then(|l| sasl::decode_error(l));
        warn!(
            upstream = %self.name,
            mechanism = mechanism.as_str(),
            challenge = challenge.as_deref().unwrap_or("(not readable)"),
            "upstream refused the OAuth2 token"
        );
        self.command(mechanism.error_ack(), Stage::Auth).await
    }

    /// The LOGIN exchange: 334 for the user name, 334 for the password, then the result.
    async fn auth_login(&mut self, username: &str, password: &str) -> Result<UpstreamReply, Error> {
        let mut reply = self.command("AUTH LOGIN", Stage::Auth).await?;
        for secret in [username, password] {
            if reply.code != 334 {
                return Ok(reply);
            }
            reply = self.command(&BASE64.encode(secret), Stage::Auth).await?;
        }
        Ok(reply)
    }
}
