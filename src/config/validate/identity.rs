//! Rules over the identities: accounts (`users[]`) and device networks (`networks[]`), with
//! their sender patterns, rewrites, rate limits and caps.

use std::collections::HashMap;

use crate::config::schema::{ListenerConfig, NetworkConfig, RewriteMode, UserConfig};
use crate::config::syntax::{Pattern, sender_pattern};

use super::policy::Owner;
use super::{Checked, Checker, check_password_hash};

impl Checker<'_> {
    /// Unique, non-empty usernames with argon2 hashes and sender patterns.
    pub(super) fn users(&self, users: &[UserConfig], listeners: &[ListenerConfig]) -> Checked {
        let mut names = HashMap::new();
        for (i, u) in users.iter().enumerate() {
            let key = format!("users[{i}]");
            self.ensure(
                !u.username.is_empty(),
                format!("{key}.username"),
                "must not be empty",
            )?;
            // RFC 4616 section 2: PLAIN cannot carry a NUL, and controls are never intended.
            self.ensure(
                !u.username.chars().any(char::is_control),
                format!("{key}.username"),
                "must not contain control characters",
            )?;
            if let Some(j) = names.insert(u.username.as_str(), i) {
                let problem = format!("{:?} is already the username of users[{j}]", u.username);
                return self.fail(format!("{key}.username"), problem);
            }
            if let Err(problem) = check_password_hash(&u.password_hash) {
                return self.fail(format!("{key}.password_hash"), problem);
            }
            self.senders(&format!("{key}.senders"), &u.senders)?;
            self.rewrite(&key, u.rewrite_sender.as_deref(), u.rewrite_mode)?;
            let limits = format!("{key}.rate_limits");
            self.rate_limits(&limits, &u.rate_limits, listeners, Owner::User)?;
            self.identity_caps(&key, u.max_message_size, u.max_recipients)?;
        }
        Ok(())
    }

    /// `rewrite_sender` is one address (not a pattern), and a `rewrite_mode` other than
    /// `envelope` has one to rewrite to.
    fn rewrite(&self, key: &str, rewrite: Option<&str>, mode: RewriteMode) -> Checked {
        let Some(rewrite) = rewrite else {
            let needs = mode != RewriteMode::Envelope;
            let problem = "rewrites to `rewrite_sender`, which is not set";
            return self.ensure(!needs, format!("{key}.rewrite_mode"), problem);
        };
        let problem = match sender_pattern(rewrite) {
            Ok(Pattern::Mailbox) => None,
            Ok(_) => Some(format!(
                "{rewrite:?} is a pattern: write one address, local@domain"
            )),
            Err(why) => Some(why),
        };
        match problem {
            Some(problem) => self.fail(format!("{key}.rewrite_sender"), problem),
            None => Ok(()),
        }
    }

    /// Device identities: sender patterns, a single rewrite address, their own limits.
    pub(super) fn networks(
        &self,
        networks: &[NetworkConfig],
        listeners: &[ListenerConfig],
    ) -> Checked {
        for (i, n) in networks.iter().enumerate() {
            let key = format!("networks[{i}]");
            self.senders(&format!("{key}.senders"), &n.senders)?;
            self.rewrite(&key, n.rewrite_sender.as_deref(), n.rewrite_mode)?;
            let limits = format!("{key}.rate_limits");
            self.rate_limits(&limits, &n.rate_limits, listeners, Owner::Network)?;
            self.identity_caps(&key, n.max_message_size, n.max_recipients)?;
        }
        Ok(())
    }
}
