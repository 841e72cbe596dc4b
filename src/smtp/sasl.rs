//! SASL PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) exchanges
//! for AUTH (RFC 4954). Pure: decodes responses and says what to send next;
//! the session owns the phase and the shell verifies the credentials.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::smtp::reply::Reply;

/// A SASL mechanism postern offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616 PLAIN.
    Plain,
    /// LOGIN, for old clients (Outlook, printers).
    Login,
}

impl Mechanism {
    /// Parses a mechanism name, case-insensitively (RFC 4954 4).
    pub fn parse(name: &str) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }

    /// The name as advertised, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// Where an unfinished exchange stands: what the next client line answers.
#[derive(Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// PLAIN sent `334 ` and waits for the initial response.
    PlainResponse,
    /// LOGIN asked for the username.
    LoginUsername,
    /// LOGIN asked for the password.
    LoginPassword {
        /// The username already received.
        username: String,
    },
}

impl fmt::Debug for SaslStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaslStep::PlainResponse => f.write_str("PlainResponse"),
            SaslStep::LoginUsername => f.write_str("LoginUsername"),
            // A username is not secret, but keep AUTH payloads out of logs.
            SaslStep::LoginPassword { .. } => f.write_str("LoginPassword"),
        }
    }
}

/// Decoded credentials, ready for the shell to verify.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Authorization identity (PLAIN only; empty when absent).
    pub authzid: String,
    /// Authentication identity.
    pub username: String,
    /// The password; never shown by Debug.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Result of one exchange step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslProgress {
    /// Send this 334 challenge and wait in the given step.
    Challenge(SaslStep, Reply),
    /// The exchange is complete.
    Done(Credentials),
}

/// Why an exchange failed; each maps to one 501 reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 4).
    Aborted,
    /// Not base64.
    BadBase64,
    /// Base64, but not the structure the mechanism requires, or not UTF-8.
    Malformed,
}

impl SaslError {
    /// The reply that reports this error.
    pub fn reply(self) -> Reply {
        match self {
            SaslError::Aborted => Reply::auth_aborted(),
            SaslError::BadBase64 => Reply::invalid_base64(),
            SaslError::Malformed => Reply::sasl_malformed(),
        }
    }
}

/// "Username:" and "Password:" in base64, as every LOGIN server sends.
const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// Starts an exchange for `AUTH <mechanism> [initial-response]`.
pub fn start(mechanism: Mechanism, initial: Option<&str>) -> Result<SaslProgress, SaslError> {
    match (mechanism, initial) {
        // RFC 4954 4: no initial response -> empty challenge "334 ".
        (Mechanism::Plain, None) => Ok(SaslProgress::Challenge(
            SaslStep::PlainResponse,
            Reply::sasl_challenge(""),
        )),
        (Mechanism::Plain, Some(ir)) => plain(&decode(ir.as_bytes())?),
        (Mechanism::Login, None) => Ok(login_username_challenge()),
        // A LOGIN initial response is the username (as Postfix/Cyrus accept).
        (Mechanism::Login, Some(ir)) => login_username(&decode(ir.as_bytes())?),
    }
}

/// Continues an exchange with one client line.
pub fn step(step: SaslStep, line: &[u8]) -> Result<SaslProgress, SaslError> {
    let data = decode(line)?;
    match step {
        SaslStep::PlainResponse => plain(&data),
        SaslStep::LoginUsername => login_username(&data),
        SaslStep::LoginPassword { username } => {
            let password = String::from_utf8(data).map_err(|_| SaslError::Malformed)?;
            if password.is_empty() {
                return Err(SaslError::Malformed);
            }
            Ok(SaslProgress::Done(Credentials {
                authzid: String::new(),
                username,
                password,
            }))
        }
    }
}

fn login_username_challenge() -> SaslProgress {
    SaslProgress::Challenge(
        SaslStep::LoginUsername,
        Reply::sasl_challenge(LOGIN_USERNAME),
    )
}

fn login_username(data: &[u8]) -> Result<SaslProgress, SaslError> {
    let username = std::str::from_utf8(data).map_err(|_| SaslError::Malformed)?;
    if username.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(SaslProgress::Challenge(
        SaslStep::LoginPassword {
            username: username.to_owned(),
        },
        Reply::sasl_challenge(LOGIN_PASSWORD),
    ))
}

/// RFC 4954 4: `*` cancels; `=` is an empty response; else base64.
fn decode(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    match line {
        b"*" => Err(SaslError::Aborted),
        b"=" => Ok(Vec::new()),
        _ => STANDARD.decode(line).map_err(|_| SaslError::BadBase64),
    }
}

/// RFC 4616 2: message = [authzid] UTF8NUL authcid UTF8NUL passwd, where
/// authcid and passwd are non-empty.
fn plain(data: &[u8]) -> Result<SaslProgress, SaslError> {
    let text = std::str::from_utf8(data).map_err(|_| SaslError::Malformed)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(username), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if username.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(SaslProgress::Done(Credentials {
        authzid: authzid.to_owned(),
        username: username.to_owned(),
        password: password.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        STANDARD.encode(s)
    }

    fn creds(z: &str, u: &str, p: &str) -> SaslProgress {
        SaslProgress::Done(Credentials {
            authzid: z.to_owned(),
            username: u.to_owned(),
            password: p.to_owned(),
        })
    }

    #[test]
    fn plain_rows() {
        let rows: Vec<(String, Result<SaslProgress, SaslError>)> = vec![
            (b64(b"\0user\0pw"), Ok(creds("", "user", "pw"))),
            (
                b64(b"admin\0user\0p\xc3\xa4ss"),
                Ok(creds("admin", "user", "päss")),
            ),
            (b64(b"user\0pw"), Err(SaslError::Malformed)),
            (b64(b"\0user\0pw\0x"), Err(SaslError::Malformed)),
            (b64(b"\0\0pw"), Err(SaslError::Malformed)),
            (b64(b"\0user\0"), Err(SaslError::Malformed)),
            (b64(b"\0us\xffer\0pw"), Err(SaslError::Malformed)),
            ("=".to_owned(), Err(SaslError::Malformed)),
            ("*".to_owned(), Err(SaslError::Aborted)),
            ("not base64!".to_owned(), Err(SaslError::BadBase64)),
        ];
        for (line, want) in rows {
            assert_eq!(start(Mechanism::Plain, Some(&line)), want, "initial {line}");
            assert_eq!(
                step(SaslStep::PlainResponse, line.as_bytes()),
                want,
                "step {line}"
            );
        }
        assert_eq!(
            start(Mechanism::Plain, None),
            Ok(SaslProgress::Challenge(
                SaslStep::PlainResponse,
                Reply::sasl_challenge("")
            ))
        );
    }

    #[test]
    fn login_rows() {
        let pw = SaslStep::LoginPassword {
            username: "user".to_owned(),
        };
        let ask_pw = Ok(SaslProgress::Challenge(
            pw.clone(),
            Reply::sasl_challenge(LOGIN_PASSWORD),
        ));
        assert_eq!(
            start(Mechanism::Login, None),
            Ok(login_username_challenge())
        );
        assert_eq!(start(Mechanism::Login, Some(&b64(b"user"))), ask_pw);
        assert_eq!(
            step(SaslStep::LoginUsername, b64(b"user").as_bytes()),
            ask_pw
        );
        assert_eq!(
            step(SaslStep::LoginUsername, b"="),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            step(pw.clone(), b64(b"pw").as_bytes()),
            Ok(creds("", "user", "pw"))
        );
        assert_eq!(step(pw.clone(), b"*"), Err(SaslError::Aborted));
        assert_eq!(step(pw, b"%%"), Err(SaslError::BadBase64));
    }

    #[test]
    fn debug_redacts_password() {
        let c = Credentials {
            authzid: String::new(),
            username: "u".to_owned(),
            password: "hunter2".to_owned(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let s = SaslStep::LoginPassword {
            username: "u".to_owned(),
        };
        assert_eq!(format!("{s:?}"), "LoginPassword");
    }
}
