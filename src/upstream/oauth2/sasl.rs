//! The SASL strings that carry an OAuth 2.0 access token in SMTP AUTH (pure; no I/O).
//!
//! Two mechanisms, picked from the upstream's EHLO `AUTH` list by the connection:
//! - `XOAUTH2` (Google's and Microsoft's pre-standard mechanism, the only one Exchange
//!   Online offers): `user=` mailbox `^A` `auth=Bearer ` token `^A^A`;
//! - `OAUTHBEARER` (RFC 7628): a GS2 header naming the mailbox, then `host`, `port` and
//!   `auth` key-value pairs, each ended by `^A`, and a final `^A`.
//!
//! Both are sent base64-encoded as the initial response of `AUTH`. On failure the server
//! may send a `334` with a base64 JSON error; the client answers it with an empty line
//! (XOAUTH2) or a lone `^A` (OAUTHBEARER, RFC 7628 3.2.3), then reads the final `535`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The SASL mechanisms that carry a bearer token, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `XOAUTH2`: offered by Exchange Online and Gmail alike.
    XOAuth2,
    /// `OAUTHBEARER` (RFC 7628).
    OAuthBearer,
}

impl Mechanism {
    /// The mechanism's name in `AUTH` and in EHLO.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The first of ours the upstream offers (`offered`: the EHLO AUTH list).
    pub fn pick<'a>(offered: impl IntoIterator<Item = &'a str> + Clone) -> Option<Mechanism> {
        [Mechanism::XOAuth2, Mechanism::OAuthBearer]
            .into_iter()
            .find(|m| {
                offered
                    .clone()
                    .into_iter()
                    .any(|o| o.eq_ignore_ascii_case(m.as_str()))
            })
    }

    /// The client's answer to a `334` error challenge (base64 text, possibly empty): an
    /// empty response for XOAUTH2, a lone `^A` for OAUTHBEARER (RFC 7628 3.2.3).
    pub fn error_ack(self) -> &'static str {
        match self {
            Mechanism::XOAuth2 => "",
            // base64 of "\x01".
            Mechanism::OAuthBearer => "AQ==",
        }
    }
}

/// Where the token is presented, for OAUTHBEARER's `host` and `port` (RFC 7628 3.1).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The upstream's host name or address, as configured.
    pub host: &'a str,
    /// The upstream's port.
    pub port: u16,
}

/// The initial response of `AUTH <mechanism>`, base64-encoded. It holds the token: never
/// log it.
pub fn initial_response(m: Mechanism, user: &str, token: &str, target: Target<'_>) -> String {
    let raw = match m {
        Mechanism::XOAuth2 => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
        // RFC 7628 3.1: gs2-header "n,a=" saslname ",", then kvpairs each ended by %x01,
        // and a final %x01.
        Mechanism::OAuthBearer => format!(
            "n,a={},\x01host={}\x01port={}\x01auth=Bearer {token}\x01\x01",
            saslname(user),
            target.host,
            target.port
        ),
    };
    BASE64.encode(raw)
}

/// RFC 5801 5.1: in a GS2 `saslname`, `=` is written `=3D` and `,` is written `=2C`.
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// The server's error challenge decoded for the log (RFC 7628 3.2.2: a JSON object with
/// `status`, `schemes`, `scope`; Microsoft and Google send the same for XOAUTH2). `None`
/// when it is not base64 of short UTF-8 text.
pub fn decode_error(challenge: &str) -> Option<String> {
    /// Longer challenges are cut: the log line stays short.
    const MAX: usize = 300;
    let bytes = BASE64.decode(challenge.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let text: String = text.chars().filter(|c| !c.is_control()).take(MAX).collect();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(s: &str) -> String {
        String::from_utf8(BASE64.decode(s).unwrap()).unwrap()
    }

    const AT: Target<'static> = Target {
        host: "smtp.office365.com",
        port: 587,
    };

    /// The XOAUTH2 string as Google's and Microsoft's documentation spell it.
    #[test]
    fn xoauth2_string() {
        let r = initial_response(Mechanism::XOAuth2, "scanner@corp.example", "ya29.tok", AT);
        assert_eq!(
            decoded(&r),
            "user=scanner@corp.example\u{1}auth=Bearer ya29.tok\u{1}\u{1}"
        );
        // The example of Google's XOAUTH2 documentation, byte for byte.
        let google = initial_response(
            Mechanism::XOAuth2,
            "someuser@example.com",
            "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
            AT,
        );
        assert_eq!(
            google,
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    /// RFC 7628 4.1's example shape, with the GS2 escapes of RFC 5801 5.1.
    #[test]
    fn oauthbearer_string() {
        let at = Target {
            host: "server.example.com",
            port: 143,
        };
        let r = initial_response(Mechanism::OAuthBearer, "user@example.com", "vF9dft4q", at);
        assert_eq!(
            decoded(&r),
            "n,a=user@example.com,\u{1}host=server.example.com\u{1}port=143\u{1}auth=Bearer vF9dft4q\u{1}\u{1}"
        );
        let odd = initial_response(Mechanism::OAuthBearer, "a,b=c@x", "t", at);
        assert!(decoded(&odd).starts_with("n,a=a=2Cb=3Dc@x,\u{1}"));
    }

    #[test]
    fn picks_xoauth2_first_then_oauthbearer() {
        assert_eq!(
            Mechanism::pick(["LOGIN", "XOAUTH2"]),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(
            Mechanism::pick(["oauthbearer", "xoauth2"]),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(
            Mechanism::pick(["PLAIN", "OAUTHBEARER"]),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(Mechanism::pick(["PLAIN", "LOGIN"]), None);
        assert_eq!(decoded(Mechanism::OAuthBearer.error_ack()), "\u{1}");
        assert_eq!(Mechanism::XOAuth2.error_ack(), "");
    }

    #[test]
    fn error_challenge_is_decoded_for_the_log() {
        let json = r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;
        assert_eq!(decode_error(&BASE64.encode(json)).as_deref(), Some(json));
        assert_eq!(decode_error("!!not base64"), None);
        assert_eq!(decode_error(""), None);
    }
}
