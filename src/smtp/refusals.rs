//! The policy stage's replies: rate limits, lockouts, header senders and the caps on slow or
//! greedy clients. Kept apart from the protocol catalogue in `reply.rs`.

use std::time::Duration;

use crate::smtp::reply::Reply;

/// Whole seconds, rounded up, for "try again in N s" (a client told 0 s would retry at once).
fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Reply {
    /// 450 4.7.1 over a message or recipient rate rule (temporary: the client retries).
    pub fn rate_limit(rule: &str, retry_after: Duration) -> Reply {
        Reply::new(
            450,
            (4, 7, 1),
            format!(
                "Error: rate limit {rule} exceeded, try again in {} s",
                secs_up(retry_after)
            ),
        )
    }

    /// 421 4.7.0 at connect, over a connection rate rule.
    pub fn connection_rate(rule: &str, retry_after: Duration) -> Reply {
        Reply::new(
            421,
            (4, 7, 0),
            format!(
                "Error: connection rate limit {rule} exceeded, try again in {} s",
                secs_up(retry_after)
            ),
        )
    }

    /// 451 4.3.0 a `scope: cluster` rate rule with `on_redis_error: deny` cannot be checked
    /// now (RFC 5321 4.2.3: 451, a local error in processing; RFC 3463 X.3.0: the mail
    /// system's own status, here the limit store it shares with its peers).
    pub fn rate_limit_unavailable(rule: &str) -> Reply {
        Reply::new(
            451,
            (4, 3, 0),
            format!("Error: rate limit {rule} cannot be checked now, try again later"),
        )
    }

    /// 421 4.3.0 at connect: as [`Reply::rate_limit_unavailable`], for a connection rule.
    pub fn connection_rate_unavailable(rule: &str) -> Reply {
        Reply::new(
            421,
            (4, 3, 0),
            format!("Error: connection rate limit {rule} cannot be checked now, try again later"),
        )
    }

    /// 454 4.7.0 AUTH from a locked-out client (RFC 4954 6: temporary), even with the right
    /// password.
    pub fn locked_out(retry_after: Duration) -> Reply {
        Reply::new(
            454,
            (4, 7, 0),
            format!(
                "Error: too many authentication failures, try again in {} s",
                secs_up(retry_after)
            ),
        )
    }

    /// 550 5.7.1 a `From:` or `Sender:` address the identity may not use.
    pub fn header_sender_not_allowed(header: &str, address: &str) -> Reply {
        let address: String = address.chars().filter(|c| !c.is_control()).collect();
        Reply::new(
            550,
            (5, 7, 1),
            format!("Error: {header}: header address <{address}> not owned by user"),
        )
    }

    /// 552 5.3.4 the header section is larger than the relay examines.
    pub fn header_too_large() -> Reply {
        Reply::new(552, (5, 3, 4), "Error: message header section too large")
    }

    /// 421 4.4.2 DATA slower than `limits.min_data_rate`.
    pub fn data_too_slow(host: &str) -> Reply {
        Reply::new(
            421,
            (4, 4, 2),
            format!("{host} Error: data arrived too slowly"),
        )
    }

    /// 421 4.4.2 the session lasted longer than `timeouts.session`.
    pub fn session_too_long(host: &str) -> Reply {
        Reply::new(
            421,
            (4, 4, 2),
            format!("{host} Error: session time limit exceeded"),
        )
    }

    /// 421 4.7.0 more messages than `limits.max_messages_per_session`.
    pub fn too_many_messages(host: &str) -> Reply {
        Reply::new(
            421,
            (4, 7, 0),
            format!("{host} Error: too many messages in one session"),
        )
    }

    /// 421 4.7.0 the account was added by a reload after this session began: its rules are
    /// in the new configuration, which a new session gets.
    pub fn reconnect_for_new_rules(host: &str) -> Reply {
        Reply::new(
            421,
            (4, 7, 0),
            format!("{host} Error: account added since this session began, reconnect"),
        )
    }

    /// 421 4.7.0 too many commands without progress (NOOP, RSET, VRFY, HELP).
    pub fn junk_commands(host: &str) -> Reply {
        Reply::new(
            421,
            (4, 7, 0),
            format!("{host} Error: too many commands without progress"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_texts() {
        let rows = [
            (
                Reply::rate_limit("per-user-messages", Duration::from_millis(36_200)),
                "450 4.7.1 Error: rate limit per-user-messages exceeded, try again in 37 s",
            ),
            (
                Reply::locked_out(Duration::from_secs(900)),
                "454 4.7.0 Error: too many authentication failures, try again in 900 s",
            ),
            (
                Reply::header_sender_not_allowed("From", "ceo@corp.example\r\n"),
                "550 5.7.1 Error: From: header address <ceo@corp.example> not owned by user",
            ),
        ];
        for (reply, want) in rows {
            assert_eq!(reply.to_string(), want);
        }
    }
}
