//! Rules over the policy sections: `rate_limits` (top level and in `users[]` / `networks[]`
//! entries), the per-identity caps, and `auth_lockout`.

use std::collections::{HashMap, HashSet};
use std::time::Duration as StdDuration;

use crate::config::policy::{AuthLockoutConfig, RateLimitRule, RatePer, RateQuantity, Scope};
use crate::config::schema::ListenerConfig;
use crate::config::units::ByteSize;

use super::{Checked, Checker};

/// Whose list of rate limits is checked: the top-level one, a user's or a network's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// `rate_limits` at the top level.
    Global,
    /// `users[i].rate_limits`.
    User,
    /// `networks[i].rate_limits`.
    Network,
}

impl Checker<'_> {
    /// A list of rate limits at `list` (`rate_limits` or `users[0].rate_limits`): each rule on
    /// its own, then names unique within the list.
    pub(super) fn rate_limits(
        &self,
        list: &str,
        rules: &[RateLimitRule],
        listeners: &[ListenerConfig],
        owner: Owner,
    ) -> Checked {
        let defined: HashSet<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        let mut names = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let key = format!("{list}[{i}]");
            self.rate_limit(&key, rule, &defined, owner)?;
            let name = rule.display_name();
            if let Some(j) = names.insert(name.clone(), i) {
                let how = if rule.name.is_none() {
                    " (derived from per and the quantity: set name to tell them apart)"
                } else {
                    ""
                };
                let problem = format!("{name:?} is already the name of {list}[{j}]{how}");
                return self.fail(format!("{key}.name"), problem);
            }
        }
        Ok(())
    }

    /// One rule: a single non-zero quantity that can be counted at its stage, a non-zero
    /// interval and burst, known listeners, and a name fit for a reply line.
    fn rate_limit(
        &self,
        key: &str,
        rule: &RateLimitRule,
        listeners: &HashSet<&str>,
        owner: Owner,
    ) -> Checked {
        if let Some(name) = &rule.name {
            // The name goes into the 450/421 text: nothing that could break the reply line.
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            self.ensure(
                ok,
                format!("{key}.name"),
                format!(
                    "{name:?} must be non-empty and contain only letters, digits, '-', '_' and '.'"
                ),
            )?;
        }
        let Some((quantity, limit)) = rule.quantity() else {
            return self.fail(
                key,
                "set exactly one of messages, recipients or connections",
            );
        };
        let qkey = format!("{key}.{}", quantity.as_str());
        self.ensure(limit >= 1, qkey.clone(), "must be at least 1")?;
        if quantity == RateQuantity::Connections {
            self.connections_countable(&qkey, rule.per, owner)?;
        }
        self.ensure(
            rule.interval.get() > StdDuration::ZERO,
            format!("{key}.interval"),
            "must be more than 0s",
        )?;
        self.ensure(
            rule.burst != Some(0),
            format!("{key}.burst"),
            "must be at least 1 (leave it out for a burst equal to the limit)",
        )?;
        for (j, name) in rule.listeners.iter().enumerate() {
            self.ensure(
                listeners.contains(name.as_str()),
                format!("{key}.listeners[{j}]"),
                format!("unknown listener {name:?}"),
            )?;
        }
        let fallback = rule.on_redis_error.is_some();
        self.scope(key, ("scope", rule.scope), (fallback, "on_redis_error"))
    }

    /// `scope: cluster` needs a `redis:` section; `on_redis_error` means something with
    /// `scope: cluster` only. Each comes with its key's name under `key` (an upstream's are
    /// `shaping_scope` and `shaping_on_redis_error`).
    pub(super) fn scope(
        &self,
        key: &str,
        (scope_key, scope): (&str, Scope),
        (fallback_set, fallback_key): (bool, &str),
    ) -> Checked {
        match scope {
            Scope::Cluster => self.ensure(
                self.redis,
                format!("{key}.{scope_key}"),
                "cluster needs a redis: section (the Redis the instances share)",
            ),
            Scope::Local => self.ensure(
                !fallback_set,
                format!("{key}.{fallback_key}"),
                format!("applies to {scope_key}: cluster only (a local limit needs no Redis)"),
            ),
        }
    }

    /// Connections are counted at accept, before AUTH and MAIL: only keys known then work.
    fn connections_countable(&self, key: &str, per: RatePer, owner: Owner) -> Checked {
        if owner == Owner::User {
            return self.fail(
                key,
                "cannot be limited for a user, who is not known when a connection is accepted \
                 (set it in the top-level rate_limits or a networks entry)",
            );
        }
        let unknown = match per {
            RatePer::User => "the user",
            RatePer::SenderDomain => "the sender domain",
            RatePer::Ip | RatePer::Identity | RatePer::Listener => return Ok(()),
        };
        self.fail(
            key,
            format!(
                "cannot be counted per {}: {unknown} is not known when a connection is accepted \
                 (use per: ip, identity or listener)",
                per.as_str()
            ),
        )
    }

    /// A user's or network's own size and recipient caps.
    pub(super) fn identity_caps(
        &self,
        key: &str,
        max_message_size: Option<ByteSize>,
        max_recipients: Option<usize>,
    ) -> Checked {
        if let Some(size) = max_message_size {
            // The same floor as limits.max_message_size (RFC 1870).
            self.ensure(
                size.get() >= 1024,
                format!("{key}.max_message_size"),
                format!("{size} is too small: the minimum is 1KiB"),
            )?;
        }
        self.ensure(
            max_recipients != Some(0),
            format!("{key}.max_recipients"),
            "must be at least 1",
        )
    }

    /// A lockout that is on needs a window to count in and a duration to lock for.
    pub(super) fn auth_lockout(&self, l: &AuthLockoutConfig) -> Checked {
        let fallback = l.on_redis_error.is_some();
        self.scope(
            "auth_lockout",
            ("scope", l.scope),
            (fallback, "on_redis_error"),
        )?;
        if l.attempts == 0 {
            return Ok(());
        }
        let off = " (set attempts: 0 to turn the lockout off)";
        self.ensure(
            l.window.get() > StdDuration::ZERO,
            "auth_lockout.window",
            format!("must be more than 0s{off}"),
        )?;
        self.ensure(
            l.duration.get() > StdDuration::ZERO,
            "auth_lockout.duration",
            format!("must be more than 0s{off}"),
        )
    }
}
