//! The step observer behind `postern probe upstream NAME`: the real client
//! ([`crate::upstream::client::Client::probe`]) reports each step of its session set-up here,
//! so the probe shows exactly what delivery does, with no second SMTP client. Lines that
//! carry credentials (the AUTH exchange) are redacted before any observer sees them.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::smtp::reply_parser::UpstreamReply;
use crate::upstream::error::Stage;

/// The negotiated TLS session and the upstream's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1_3`, ...
    pub version: String,
    /// The cipher suite.
    pub cipher: String,
    /// The leaf certificate's subject (RFC 4514 form), when it parses.
    pub subject: Option<String>,
    /// Its `notAfter`, as text, when it parses.
    pub not_after: Option<String>,
}

/// Told of each step of a session set-up.
pub trait StepObserver: Send + Sync + fmt::Debug {
    /// The TCP connection is open.
    fn connected(&self, peer: SocketAddr);
    /// A command line went out (redacted for AUTH).
    fn sent(&self, stage: Stage, line: &str);
    /// A reply came in.
    fn reply(&self, stage: Stage, reply: &UpstreamReply);
    /// A TLS handshake completed.
    fn tls(&self, info: &TlsInfo);
    /// An OAuth2 access token is at hand (cached, or just issued by `token_url`) and is
    /// valid for `expires_in` more.
    fn token(&self, token_url: &str, expires_in: Duration);
}

/// What an observer may see of a command line: AUTH arguments (RFC 4954 initial
/// responses) and continuation lines of the AUTH exchange carry credentials.
pub fn redact(stage: Stage, line: &str) -> String {
    if stage != Stage::Auth {
        return line.to_owned();
    }
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some(verb), Some(mech), rest) if verb.eq_ignore_ascii_case("AUTH") => {
            let more = if rest.is_some() { " <redacted>" } else { "" };
            format!("{verb} {mech}{more}")
        }
        _ => "<redacted>".to_owned(),
    }
}

/// Reads the TLS facts of a finished handshake.
pub(crate) fn tls_info(conn: &rustls::ClientConnection) -> TlsInfo {
    let version = conn
        .protocol_version()
        .map_or_else(|| "unknown".to_owned(), |v| format!("{v:?}"));
    let cipher = conn
        .negotiated_cipher_suite()
        .map_or_else(|| "unknown".to_owned(), |c| format!("{:?}", c.suite()));
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let parsed = leaf.and_then(|der| x509_parser::parse_x509_certificate(der).ok());
    let (subject, not_after) = match parsed {
        Some((_, cert)) => (
            Some(cert.subject().to_string()),
            Some(cert.validity().not_after.to_string()),
        ),
        None => (None, None),
    };
    TlsInfo {
        version,
        cipher,
        subject,
        not_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_lines_are_redacted() {
        for (stage, line, shown) in [
            (
                Stage::Auth,
                "AUTH PLAIN AGFsaWNlAHB3",
                "AUTH PLAIN <redacted>",
            ),
            (Stage::Auth, "AUTH LOGIN", "AUTH LOGIN"),
            (Stage::Auth, "YWxpY2U=", "<redacted>"),
            (Stage::Ehlo, "EHLO relay.test", "EHLO relay.test"),
        ] {
            assert_eq!(redact(stage, line), shown);
        }
    }
}
