//! OAuth 2.0 at the sink: AUTH XOAUTH2 and OAUTHBEARER (RFC 7628) with a token the test
//! token endpoint issued. The SASL string must be exactly what the mechanism defines; a
//! wrong one is a violation. A token not (or no longer) accepted gets the failure dialogue
//! Exchange Online and Gmail use: a `334` with a base64 JSON error, which the client must
//! answer with an empty line (XOAUTH2) or a lone `^A` (OAUTHBEARER, RFC 7628 3.2.3), then
//! `535 5.7.3`.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{B64, Conn, Session};
use crate::harness::token::Tokens;

/// What the sink requires for OAuth2 AUTH.
#[derive(Debug, Clone)]
pub struct SinkOAuth {
    /// The mailbox to log in as.
    pub user: String,
    /// The mechanisms offered in EHLO, e.g. `["XOAUTH2"]`.
    pub mechanisms: Vec<&'static str>,
    /// The tokens accepted (shared with the token endpoint; a test may revoke one).
    pub tokens: Tokens,
    /// Each decoded SASL string received, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl SinkOAuth {
    /// Requires `mechanisms` with the tokens in `tokens`.
    pub fn new(user: &str, mechanisms: &[&'static str], tokens: Tokens) -> SinkOAuth {
        SinkOAuth {
            user: user.to_owned(),
            mechanisms: mechanisms.to_vec(),
            tokens,
            seen: Arc::default(),
        }
    }

    /// The decoded SASL strings received so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The error challenge (RFC 7628 3.2.2), as Gmail sends it.
const ERROR_JSON: &str =
    r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;

/// One AUTH XOAUTH2 / OAUTHBEARER exchange with the initial response `initial`.
pub(super) async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    s: &mut Session,
    o: &SinkOAuth,
    mechanism: &str,
    initial: Option<String>,
) -> std::io::Result<()> {
    let Some(initial) = initial else {
        c.state.violation(
            c.id,
            format!("AUTH {mechanism} without an initial response"),
        );
        return c.reply("501 5.5.2 Initial response required").await;
    };
    let Some(text) = B64
        .decode(&initial)
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
    else {
        c.state
            .violation(c.id, "SASL response is not base64 of UTF-8");
        return c.reply("501 5.5.2 Cannot decode response").await;
    };
    o.seen.lock().unwrap().push(text.clone());
    let head = match mechanism {
        "XOAUTH2" => format!("user={}\u{1}auth=Bearer ", o.user),
        _ => format!(
            "n,a={},\u{1}host=127.0.0.1\u{1}port={}\u{1}auth=Bearer ",
            o.user, c.state.port
        ),
    };
    let token = text
        .strip_prefix(&head)
        .and_then(|t| t.strip_suffix("\u{1}\u{1}"));
    let Some(token) = token else {
        c.state
            .violation(c.id, format!("malformed {mechanism} string"));
        return c.reply("535 5.7.8 Malformed SASL string").await;
    };
    if o.tokens.lock().unwrap().contains(token) {
        s.auth = Some(o.user.clone());
        return c.reply("235 2.7.0 Authentication successful").await;
    }
    c.reply(&format!("334 {}", B64.encode(ERROR_JSON))).await?;
    let Some(ack) = c.line().await? else {
        return Ok(());
    };
    c.state.note(c.id, "C:", &ack);
    let want: &[u8] = if mechanism == "XOAUTH2" { b"" } else { b"AQ==" };
    if ack != want {
        c.state.violation(
            c.id,
            format!(
                "{mechanism} error challenge answered with {:?}",
                String::from_utf8_lossy(&ack)
            ),
        );
    }
    c.reply("535 5.7.3 Authentication unsuccessful").await
}
