//! Rules over `routes:`: conditions that parse and name configured listeners and
//! identities, upstreams that exist, and no upstream left without a route.

use std::collections::HashSet;

use crate::config::schema::{Config, RouteConfig};
use crate::config::syntax::sender_pattern;

use super::{Checked, Checker};

impl Checker<'_> {
    /// Routes name defined upstreams, and every upstream is reachable by some route.
    pub(super) fn routes(&self, config: &Config) -> Checked {
        let (routes, upstreams) = (&config.routes, &config.upstreams);
        if routes.is_empty() {
            // With a single upstream every sender goes to it; with more the choice is unclear.
            let problem = format!(
                "{} upstreams are defined but no routes: add routes to say which senders go to \
                 which upstream",
                upstreams.len()
            );
            return self.ensure(upstreams.len() <= 1, "routes", problem);
        }
        let defined: HashSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let mut used = HashSet::new();
        for (i, r) in routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            self.route_conditions(&key, r, config)?;
            self.ensure(
                !r.upstreams.is_empty(),
                format!("{key}.upstreams"),
                "must name at least one upstream",
            )?;
            for (j, name) in r.upstreams.iter().enumerate() {
                let problem = format!("unknown upstream {name:?}");
                self.ensure(
                    defined.contains(name.as_str()),
                    format!("{key}.upstreams[{j}]"),
                    problem,
                )?;
                used.insert(name.as_str());
            }
        }
        match upstreams
            .iter()
            .enumerate()
            .find(|(_, u)| !used.contains(u.name.as_str()))
        {
            Some((i, u)) => self.fail(
                format!("upstreams[{i}].name"),
                format!("upstream {:?} is not used by any route", u.name),
            ),
            None => Ok(()),
        }
    }

    /// A route's conditions: sender and recipient patterns parse; listeners and identities
    /// name configured ones (a typo would silently route nothing). A condition that is set
    /// must list something: an empty list would match no message.
    fn route_conditions(&self, key: &str, r: &RouteConfig, config: &Config) -> Checked {
        if let Some(senders) = &r.senders {
            self.senders(&format!("{key}.senders"), senders)?;
        }
        if let Some(recipients) = &r.recipients {
            self.recipient_patterns(&format!("{key}.recipients"), recipients)?;
        }
        let listeners: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        if let Some(names) = &r.listeners {
            self.known_names(&format!("{key}.listeners"), names, &listeners, "listener")?;
        }
        let mut identities: Vec<String> = config.users.iter().map(|u| u.username.clone()).collect();
        identities.extend(
            config
                .networks
                .iter()
                .map(|n| format!("network:{}", n.network)),
        );
        let identities: Vec<&str> = identities.iter().map(String::as_str).collect();
        if let Some(names) = &r.identities {
            self.known_names(&format!("{key}.identities"), names, &identities, "identity")?;
        }
        Ok(())
    }

    /// Recipient patterns: as sender patterns, but a recipient is never the null path.
    fn recipient_patterns(&self, key: &str, patterns: &[String]) -> Checked {
        self.ensure(
            !patterns.is_empty(),
            key,
            "must list at least one recipient pattern: \"*\", \"@domain\", \"@*.domain\" or \
             \"local@domain\" (or leave the key out)",
        )?;
        for (i, s) in patterns.iter().enumerate() {
            if let Err(problem) = sender_pattern(s) {
                return self.fail(format!("{key}[{i}]"), problem);
            }
        }
        Ok(())
    }

    /// Every name in `names` is one of `known` (listener names, usernames, networks).
    fn known_names(&self, key: &str, names: &[String], known: &[&str], what: &str) -> Checked {
        self.ensure(
            !names.is_empty(),
            key,
            format!("must name at least one {what} (or leave the key out)"),
        )?;
        for (i, name) in names.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                let hint = match what {
                    "identity" => " (a username, or network:CIDR of a networks entry)",
                    _ => "",
                };
                return self.fail(
                    format!("{key}[{i}]"),
                    format!("unknown {what} {name:?}{hint}"),
                );
            }
        }
        Ok(())
    }
}
