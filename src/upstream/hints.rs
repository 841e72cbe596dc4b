//! What the refusals that admins of Microsoft 365 upstreams meet mean, for the log line
//! (Exchange Online's texts name a code, not the fix).

use crate::smtp::reply_parser::UpstreamReply;

/// One known refusal: code, enhanced code, and what to check.
struct Hint {
    code: u16,
    enhanced: (u8, u16, u16),
    text: &'static str,
}

/// Exchange Online's SMTP AUTH and submission refusals (Microsoft's "Authenticate an IMAP,
/// POP or SMTP connection using OAuth" and "SMTP AUTH client submission" pages).
const HINTS: [Hint; 4] = [
    Hint {
        code: 535,
        enhanced: (5, 7, 3),
        text: "Microsoft 365 refused the login: the app lacks the SMTP.SendAsApp application \
               permission with admin consent, or Exchange has no service principal for it \
               (New-ServicePrincipal) with a right on this mailbox (Add-MailboxPermission), \
               or the token is for another tenant or scope",
    },
    Hint {
        code: 535,
        enhanced: (5, 7, 139),
        text: "SMTP AUTH is disabled for the tenant or for this mailbox: enable it \
               (Set-CASMailbox -SmtpClientAuthenticationDisabled $false, or the tenant's \
               Set-TransportConfig), and check that security defaults do not block it",
    },
    Hint {
        code: 550,
        enhanced: (5, 7, 60),
        text: "the logged-in mailbox may not send as this sender: grant it Send As on the \
               sender's mailbox, or rewrite the sender to the mailbox",
    },
    Hint {
        code: 554,
        enhanced: (5, 2, 0),
        text: "the mailbox is over a sending limit (Exchange Online: 10,000 recipients a day, \
               30 messages a minute) or blocked for outbound spam: check the message trace \
               and the restricted entities list",
    },
];

/// What a refusal means, when it is a known one.
pub fn hint(reply: &UpstreamReply) -> Option<&'static str> {
    HINTS
        .iter()
        .find(|h| h.code == reply.code && reply.enhanced == Some(h.enhanced))
        .map(|h| h.text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::error::Error;

    fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> UpstreamReply {
        UpstreamReply::local(code, enhanced, text)
    }

    #[test]
    fn known_refusals_explain_themselves() {
        let auth = Error::Auth {
            upstream: "m365".into(),
            reply: reply(
                535,
                (5, 7, 139),
                "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
            ),
        };
        assert_eq!(
            auth.to_string(),
            format!(
                "upstream m365: authentication failed: 535 5.7.139 Authentication unsuccessful, \
                 SmtpClientAuthentication is disabled for the Tenant. (hint: {})",
                HINTS[1].text
            )
        );
        for (code, enhanced, needle) in [
            (535, (5, 7, 3), "SMTP.SendAsApp"),
            (550, (5, 7, 60), "Send As"),
            (554, (5, 2, 0), "10,000 recipients a day"),
        ] {
            let err = Error::Reply {
                upstream: "m365".into(),
                stage: crate::upstream::error::Stage::Mail,
                reply: reply(code, enhanced, "x"),
            };
            assert!(err.to_string().contains(needle), "{err}");
        }
        // Same code, other enhanced code: no hint.
        assert_eq!(hint(&reply(535, (5, 7, 8), "bad credentials")), None);
        assert_eq!(hint(&reply(550, (5, 1, 1), "no such user")), None);
    }
}
