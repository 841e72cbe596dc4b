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

use crate::config::schema::{Config, RewriteMode, SenderCheck};
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
    pub(crate) fn with(self, size: Option<ByteSize>, recipients: Option<usize>) -> Caps {
        Caps {
            max_message_size: size.map_or(self.max_message_size, ByteSize::get),
            max_recipients: recipients.unwrap_or(self.max_recipients),
        }
    }
}

/// What one identity (an account or a device network) may send as, how its sender is
/// rewritten, and its size and recipient caps: everything policy keeps per identity.
#[derive(Debug, Clone, Default)]
pub struct Sending {
    /// Allowed senders.
    pub senders: SenderRules,
    /// Its own `sender_check`, if set.
    pub check: Option<SenderCheck>,
    /// Replacement sender, if any.
    pub rewrite_sender: Option<String>,
    /// What `rewrite_sender` rewrites.
    pub rewrite_mode: RewriteMode,
    /// Its caps: its own where set, else the global ones.
    pub caps: Caps,
}

/// A sender rewrite: the address, and what it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite<'a> {
    /// The address envelope (and perhaps header) senders become.
    pub address: &'a str,
    /// What is rewritten.
    pub mode: RewriteMode,
}

/// Sender rules and caps for users and devices.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    users: HashMap<String, Sending>,
    /// The top-level `sender_check`.
    check: SenderCheck,
    devices: Devices,
    /// The `limits` caps, for clients without their own.
    caps: Caps,
}

impl Policy {
    /// Builds the policy tables from validated config.
    pub fn new(cfg: &Config) -> Policy {
        let caps = Caps {
            max_message_size: cfg.limits.max_message_size.get(),
            max_recipients: cfg.limits.max_recipients,
        };
        let users = cfg
            .users
            .iter()
            .map(|u| {
                let sending = Sending {
                    senders: SenderRules::new(&u.senders),
                    check: u.sender_check,
                    rewrite_sender: u.rewrite_sender.clone(),
                    rewrite_mode: u.rewrite_mode,
                    caps: caps.with(u.max_message_size, u.max_recipients),
                };
                (u.username.clone(), sending)
            })
            .collect();
        Policy {
            users,
            check: cfg.sender_check,
            devices: Devices::new(&cfg.networks, caps),
            caps,
        }
    }

    /// The per-identity settings of `who` (`None` for an anonymous client, or an identity
    /// the config no longer has).
    fn sending(&self, who: &Identity) -> Option<&Sending> {
        match who {
            Identity::User(user) => self.users.get(user),
            Identity::Device(net) => self.devices.by_network(net).map(|d| &d.sending),
            Identity::Anonymous => None,
        }
    }

    /// The size and recipient caps for `who`: its own where its `users` or `networks` entry
    /// sets them, else `limits`. (EHLO advertises the global SIZE before AUTH; the server
    /// enforces these at MAIL SIZE=, RCPT and DATA.)
    pub fn caps(&self, who: &Identity) -> Caps {
        self.sending(who).map_or(self.caps, |s| s.caps)
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

    /// What is checked for `who` on a listener with its own `listener` setting: the
    /// identity's own, else the listener's, else the top-level `sender_check`.
    pub fn sender_check(&self, who: &Identity, listener: Option<SenderCheck>) -> SenderCheck {
        let own = self.sending(who).and_then(|s| s.check);
        own.or(listener).unwrap_or(self.check)
    }

    /// The sender patterns of `who` (`None` for an anonymous client, who may send as
    /// anyone).
    pub fn sender_rules(&self, who: &Identity) -> Option<&SenderRules> {
        self.sending(who).map(|s| &s.senders)
    }

    /// The sender rewrite configured for `who`, if any.
    pub fn rewrite(&self, who: &Identity) -> Option<Rewrite<'_>> {
        let s = self.sending(who)?;
        let address = s.rewrite_sender.as_deref()?;
        Some(Rewrite {
            address,
            mode: s.rewrite_mode,
        })
    }

    /// Decides a MAIL FROM: the effective envelope sender (after any rewrite) or a refusal.
    /// `allowlisted` says whether the listener's allowlist vouches for an unauthenticated
    /// client (a listener with `auth: optional` and no allowlist does not); `check` is
    /// [`Policy::sender_check`] (`off` skips the ownership check).
    pub fn mail(
        &self,
        who: &Identity,
        allowlisted: bool,
        sender: &str,
        check: SenderCheck,
    ) -> Result<String, MailRefusal> {
        let rules = match (who, self.sender_rules(who)) {
            (Identity::Anonymous, _) if allowlisted => return Ok(sender.to_owned()),
            (_, Some(rules)) => rules,
            // A user the config does not have may not send as anyone; an unknown device
            // or an anonymous client needs AUTH.
            (Identity::User(_), None) => return Err(MailRefusal::SenderNotOwned),
            (Identity::Device(_) | Identity::Anonymous, None) => {
                return Err(MailRefusal::AuthRequired);
            }
        };
        if check != SenderCheck::Off && !rules.allows(sender) {
            return Err(MailRefusal::SenderNotOwned);
        }
        // The null path stays null: a bounce rewritten to a real address could start a
        // bounce loop (RFC 5321 4.5.5).
        if sender.is_empty() {
            return Ok(String::new());
        }
        Ok(self
            .rewrite(who)
            .map_or_else(|| sender.to_owned(), |r| r.address.to_owned()))
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
            ..Default::default()
        }];
        let networks = [NetworkConfig {
            network: "10.20.30.0/24".parse().unwrap(),
            senders: vec!["@localhost".into(), "@corp.example".into()],
            rewrite_sender: Some("scans@corp.example".into()),
            ..Default::default()
        }];
        let mut users: HashMap<String, Sending> = users
            .iter()
            .map(|u| {
                let account = Sending {
                    senders: SenderRules::new(&u.senders),
                    ..Sending::default()
                };
                (u.username.clone(), account)
            })
            .collect();
        users.insert(
            "bulk".into(),
            Sending {
                senders: SenderRules::new(&["@corp.example"]),
                check: Some(SenderCheck::Header),
                rewrite_sender: Some("bulk@corp.example".into()),
                rewrite_mode: RewriteMode::Collapse,
                caps: Caps::default(),
            },
        );
        Policy {
            users,
            devices: Devices::new(&networks, Caps::default()),
            ..Policy::default()
        }
    }

    #[test]
    fn sender_check_precedence_and_user_rewrites() {
        let p = policy();
        let app = Identity::User("app1".into());
        let bulk = Identity::User("bulk".into());
        // identity's own, else the listener's, else the top level
        assert_eq!(p.sender_check(&app, None), SenderCheck::Envelope);
        assert_eq!(
            p.sender_check(&app, Some(SenderCheck::Off)),
            SenderCheck::Off
        );
        assert_eq!(
            p.sender_check(&bulk, Some(SenderCheck::Off)),
            SenderCheck::Header
        );
        // off: any sender, still rewritten for an identity with a rewrite
        let off = SenderCheck::Off;
        assert_eq!(
            p.mail(&app, false, "ceo@corp.example", off).as_deref(),
            Ok("ceo@corp.example")
        );
        assert_eq!(
            p.mail(&bulk, false, "x@corp.example", SenderCheck::Header)
                .as_deref(),
            Ok("bulk@corp.example")
        );
        assert_eq!(
            p.mail(&bulk, false, "", SenderCheck::Header).as_deref(),
            Ok("")
        );
        assert_eq!(
            p.mail(&bulk, false, "x@other.example", SenderCheck::Header),
            Err(MailRefusal::SenderNotOwned)
        );
        // `off` skips the check, not the rewrite.
        assert_eq!(
            p.mail(&bulk, false, "ceo@other.example", off).as_deref(),
            Ok("bulk@corp.example")
        );
        // The top level decides where neither the identity nor the listener does.
        let strict = Policy {
            check: SenderCheck::Header,
            ..p.clone()
        };
        assert_eq!(strict.sender_check(&app, None), SenderCheck::Header);
        assert_eq!(
            strict.sender_check(&app, Some(SenderCheck::Envelope)),
            SenderCheck::Envelope
        );
        let rewrite = p.rewrite(&bulk).map(|r| (r.address, r.mode));
        assert_eq!(rewrite, Some(("bulk@corp.example", RewriteMode::Collapse)));
        assert_eq!(p.rewrite(&app), None);
        assert!(p.sender_rules(&Identity::Anonymous).is_none());
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
            let got = p.mail(who, allowlisted, sender, SenderCheck::Envelope);
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
            ..Default::default()
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
