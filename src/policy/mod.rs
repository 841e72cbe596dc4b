//! Pure policy decisions: no I/O, no clock. The server asks; this module answers.
//!
//! A client is one of three identities: an authenticated user, a device admitted by a
//! `networks` entry, or an anonymous client admitted only by a listener's allowlist (the
//! port-25 printer case when no `networks` entry describes it; like Postfix's `mynetworks`,
//! it may send as anyone).

pub mod headers;
pub mod identity;
pub mod lockout;
pub mod networks;
pub mod ratelimit;

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::schema::Config;
use crate::config::units::ByteSize;
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

/// The size and recipient caps that apply to one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    /// Largest message accepted, in bytes.
    pub max_message_size: u64,
    /// Most recipients per transaction.
    pub max_recipients: usize,
}

impl Caps {
    /// These caps with an identity's own overrides, where set.
    fn with(self, size: Option<ByteSize>, recipients: Option<usize>) -> Caps {
        Caps {
            max_message_size: size.map_or(self.max_message_size, ByteSize::get),
            max_recipients: recipients.unwrap_or(self.max_recipients),
        }
    }
}

/// Sender rules and caps for users and devices.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    users: HashMap<String, SenderRules>,
    devices: Devices,
    /// The `limits` caps, for clients without their own.
    caps: Caps,
    /// Caps of users with a `max_message_size` or `max_recipients` of their own.
    user_caps: HashMap<String, Caps>,
    /// Caps of networks with their own.
    device_caps: HashMap<ipnet::IpNet, Caps>,
}

impl Policy {
    /// Builds the policy tables from validated config.
    pub fn new(cfg: &Config) -> Policy {
        let users = cfg
            .users
            .iter()
            .map(|u| (u.username.clone(), SenderRules::new(&u.senders)))
            .collect();
        let caps = Caps {
            max_message_size: cfg.limits.max_message_size.get(),
            max_recipients: cfg.limits.max_recipients,
        };
        let user_caps = cfg
            .users
            .iter()
            .filter(|u| u.max_message_size.is_some() || u.max_recipients.is_some())
            .map(|u| {
                let own = caps.with(u.max_message_size, u.max_recipients);
                (u.username.clone(), own)
            })
            .collect();
        let device_caps = cfg
            .networks
            .iter()
            .filter(|n| n.max_message_size.is_some() || n.max_recipients.is_some())
            .map(|n| (n.network, caps.with(n.max_message_size, n.max_recipients)))
            .collect();
        Policy {
            users,
            devices: Devices::new(&cfg.networks),
            caps,
            user_caps,
            device_caps,
        }
    }

    /// The size and recipient caps for `who`: its own where its `users` or `networks` entry
    /// sets them, else `limits`. (EHLO advertises the global SIZE before AUTH; the server
    /// enforces these at MAIL SIZE=, RCPT and DATA.)
    pub fn caps(&self, who: &Identity) -> Caps {
        let own = match who {
            Identity::User(user) => self.user_caps.get(user),
            Identity::Device(net) => self.device_caps.get(net),
            Identity::Anonymous => None,
        };
        own.copied().unwrap_or(self.caps)
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
            rate_limits: vec![],
            max_message_size: None,
            max_recipients: None,
        }];
        let networks = [NetworkConfig {
            network: "10.20.30.0/24".parse().unwrap(),
            senders: vec!["@localhost".into(), "@corp.example".into()],
            rewrite_sender: Some("scans@corp.example".into()),
            rate_limits: vec![],
            max_message_size: None,
            max_recipients: None,
        }];
        let users = users
            .iter()
            .map(|u| (u.username.clone(), SenderRules::new(&u.senders)))
            .collect();
        Policy {
            users,
            devices: Devices::new(&networks),
            ..Policy::default()
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

    #[test]
    fn caps_per_identity() {
        let mut cfg = crate::config::load_str(
            "listeners: [{name: l, address: \"127.0.0.1:0\", tls: none, auth: none, \
             allow_networks: [127.0.0.0/8]}]\nqueue: {directory: q}\n\
             upstreams: [{name: u, directory: o}]\n\
             networks: [{network: 10.0.0.0/8, max_recipients: 5}]\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        cfg.users = vec![UserConfig {
            username: "big".into(),
            password_hash: String::new(),
            senders: vec!["*".into()],
            rate_limits: vec![],
            max_message_size: Some(ByteSize::mib(50)),
            max_recipients: None,
        }];
        let p = Policy::new(&cfg);
        let global = Caps {
            max_message_size: 25 << 20,
            max_recipients: 100,
        };
        let net = "10.0.0.0/8".parse().unwrap();
        let rows = [
            (Identity::Anonymous, global),
            (Identity::User("other".into()), global),
            (
                Identity::User("big".into()),
                Caps {
                    max_message_size: 50 << 20,
                    ..global
                },
            ),
            (
                Identity::Device(net),
                Caps {
                    max_recipients: 5,
                    ..global
                },
            ),
        ];
        for (who, want) in rows {
            assert_eq!(p.caps(&who), want, "{who:?}");
        }
    }
}
