//! The EHLO capability list (RFC 5321 4.1.1.1), computed from the listener
//! mode and the connection's TLS state.

use crate::smtp::reply::Reply;

/// What the listener offers right now; the session fills it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// SIZE limit in bytes (RFC 1870).
    pub max_message_size: u64,
    /// Advertise STARTTLS (listener offers it and TLS is not yet active).
    pub starttls: bool,
    /// Advertise AUTH (auth enabled and TLS active: RFC 4954 4 lets a server
    /// hide mechanisms until TLS protects the password).
    pub auth: bool,
}

/// The multiline 250 answer to EHLO. No enhanced code: RFC 2034 3 excludes
/// the EHLO response.
pub fn capabilities(host: &str, offer: Offer) -> Reply {
    let mut lines = vec![
        host.to_owned(),
        "PIPELINING".to_owned(),
        format!("SIZE {}", offer.max_message_size),
        "8BITMIME".to_owned(),
        "SMTPUTF8".to_owned(),
        "ENHANCEDSTATUSCODES".to_owned(),
        // RFC 3461 4: delivery status notifications (NOTIFY, ORCPT, RET, ENVID).
        "DSN".to_owned(),
    ];
    if offer.starttls {
        lines.push("STARTTLS".to_owned());
    }
    if offer.auth {
        lines.push("AUTH PLAIN LOGIN".to_owned());
    }
    Reply::plain(250, lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_rows() {
        let base = "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
                    250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n";
        let rows = [
            (false, false, "250 DSN\r\n"),
            (true, false, "250-DSN\r\n250 STARTTLS\r\n"),
            (false, true, "250-DSN\r\n250 AUTH PLAIN LOGIN\r\n"),
            (
                true,
                true,
                "250-DSN\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n",
            ),
        ];
        for (starttls, auth, tail) in rows {
            let offer = Offer {
                max_message_size: 1000,
                starttls,
                auth,
            };
            let mut out = Vec::new();
            capabilities("mx.example", offer).write_to(&mut out);
            assert_eq!(String::from_utf8_lossy(&out), format!("{base}{tail}"));
        }
    }
}
