//! Pure policy decisions: no I/O, no clock. The server asks; this module answers.
//!
//! A client is one of three identities: an authenticated user, a device admitted by a
//! `networks` entry, or an anonymous client admitted only by a listener's allowlist (the
//! port-25 printer case when no `networks` entry describes it; like Postfix's `mynetworks`,
//! it may send as anyone).

pub mod headers;
pub mod identity;
pub mod networks;

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::schema::Config;
use crate::policy::identity::SenderRules;
use crate::policy::networks::{Device, Devices};

/// Who the client is, for sender checks and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Logged in with AUTH as this user.
    User(String),
    /// Admitted by IP as a member of this configured network.
    Device(ipnet::IpNet),
    /// Admitted by a listener allowlist only.
    Anonymous,
}

impl Identity {
    /// The label used in logs and the spool record.
    pub fn label(&self) -> Option<String> {
        match self {
            Identity::User(u) => Some(u.clone()),
            Identity::Device(net) => Some(format!("network:{net}")),
            Identity::Anonymous => None,
        }
    }
}

/// Why a MAIL FROM was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MailRefusal {
    /// The identity may not use this sender address (553 5.7.1).
    SenderNotOwned,
    /// No AUTH and no network identity on a listener where one is needed (530 5.7.0).
    AuthRequired,
}

/// Sender rules for users and devices.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    users: HashMap<String, SenderRules>,
    devices: Devices,
}

impl Policy {
    /// Builds the policy tables from validated config.
    pub fn new(cfg: &Config) -> Policy {
        let users = cfg
            .users
            .iter()
            .map(|u| (u.username.clone(), SenderRules::new(&u.senders)))
            .collect();
        Policy {
            users,
            devices: Devices::new(&cfg.networks),
        }
    }

    /// The device identity for a client address, if a `networks` entry contains it.
    pub fn device(&self, ip: IpAddr) -> Option<&Device> {
        self.devices.lookup(ip)
    }

    /// The identity of a client before any AUTH.
    pub fn connect_identity(&self, ip: IpAddr) -> Identity {
        self.device(ip)
            .map_or(Identity::Anonymous, |d| Identity::Device(d.network))
    }

    /// Decides a MAIL FROM: the effective envelope sender (after any rewrite) or a refusal.
    /// `allowlisted` says whether the listener's allowlist vouches for an unauthenticated
    /// client (a listener with `auth: optional` and no allowlist does not).
    pub fn mail(
        &self,
        who: &Identity,
        allowlisted: bool,
        sender: &str,
    ) -> Result<String, MailRefusal> {
        match who {
            Identity::User(user) => match self.users.get(user) {
                Some(rules) if rules.allows(sender) => Ok(sender.to_owned()),
                _ => Err(MailRefusal::SenderNotOwned),
            },
            Identity::Device(net) => match self.devices.by_network(net) {
                // The null path stays null: a device's bounce rewritten to a real
                // address could start a bounce loop (RFC 5321 4.5.5).
                Some(_) if sender.is_empty() => Ok(String::new()),
                Some(d) if d.senders.allows(sender) => Ok(d
                    .rewrite_sender
                    .clone()
                    .unwrap_or_else(|| sender.to_owned())),
                Some(_) => Err(MailRefusal::SenderNotOwned),
                None => Err(MailRefusal::AuthRequired),
            },
            Identity::Anonymous if allowlisted => Ok(sender.to_owned()),
            Identity::Anonymous => Err(MailRefusal::AuthRequired),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{NetworkConfig, UserConfig};

    fn policy() -> Policy {
        let users = [UserConfig {
            username: "app1".into(),
            password_hash: String::new(),
            senders: vec!["app1@corp.example".into(), "@alerts.corp.example".into()],
        }];
        let networks = [NetworkConfig {
            network: "10.20.30.0/24".parse().unwrap(),
            senders: vec!["@localhost".into(), "@corp.example".into()],
            rewrite_sender: Some("scans@corp.example".into()),
        }];
        let users = users
            .iter()
            .map(|u| (u.username.clone(), SenderRules::new(&u.senders)))
            .collect();
        Policy {
            users,
            devices: Devices::new(&networks),
        }
    }

    #[test]
    fn mail_decisions() {
        let p = policy();
        let user = Identity::User("app1".into());
        let printer = p.connect_identity("10.20.30.7".parse().unwrap());
        let stranger = p.connect_identity("192.0.2.1".parse().unwrap());
        let rows: Vec<(&Identity, bool, &str, Result<&str, MailRefusal>)> = vec![
            (&user, false, "app1@corp.example", Ok("app1@corp.example")),
            (
                &user,
                false,
                "x@alerts.corp.example",
                Ok("x@alerts.corp.example"),
            ),
            (
                &user,
                false,
                "ceo@corp.example",
                Err(MailRefusal::SenderNotOwned),
            ),
            (&user, false, "", Ok("")),
            (
                &printer,
                true,
                "scanner@localhost",
                Ok("scans@corp.example"),
            ),
            (
                &printer,
                true,
                "evil@other.example",
                Err(MailRefusal::SenderNotOwned),
            ),
            (
                &stranger,
                true,
                "anyone@anywhere.example",
                Ok("anyone@anywhere.example"),
            ),
            (
                &stranger,
                false,
                "anyone@anywhere.example",
                Err(MailRefusal::AuthRequired),
            ),
        ];
        for (who, allowlisted, sender, want) in rows {
            let got = p.mail(who, allowlisted, sender);
            assert_eq!(got.as_deref().map_err(|e| *e), want, "{who:?} {sender}");
        }
        assert_eq!(Identity::User("u".into()).label().as_deref(), Some("u"));
    }
}
