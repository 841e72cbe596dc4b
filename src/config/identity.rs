//! Identities in the config: accounts (`users[]`), device networks (`networks[]`), and
//! who they may send as: the sender check and sender rewriting.

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::json_schema::Cidr;
use crate::config::policy::RateLimitRule;
use crate::config::units::ByteSize;

/// How much of the sender is checked against an identity's `senders` patterns
/// (`sender_check`, at the top level, on a listener, or on a user or network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SenderCheck {
    /// The envelope sender (MAIL FROM): `553 5.7.1` when not allowed.
    #[default]
    Envelope,
    /// The envelope sender, and every address in `From:` and the `Sender:` address
    /// (RFC 5322 3.6.2): `550 5.7.1` naming the header when one is not allowed.
    Header,
    /// No check: the identity may send as anyone.
    Off,
}

/// What `rewrite_sender` rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RewriteMode {
    /// The envelope sender only.
    #[default]
    Envelope,
    /// The envelope sender and the header `From:` (keeping its display name).
    Header,
    /// As `header`, and the original `From:` addresses go to a new `Reply-To:` when the
    /// message has none: for upstream accounts that may send only as one mailbox
    /// (Microsoft 365 `SendAsDenied`).
    Collapse,
}

/// An account that may authenticate.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The login name. Required, unique.
    pub username: String,
    /// An argon2id PHC string from `postern hash-password`. Required.
    pub password_hash: String,
    /// Envelope senders this account may use: `user@domain`, `@domain` (any address at
    /// that domain), `@*.domain` (any address at a subdomain of it) or `*` (any). Required,
    /// non-empty.
    pub senders: Vec<String>,
    /// Overrides `sender_check` (and the listener's) for this account. Default: inherited.
    #[serde(default)]
    pub sender_check: Option<SenderCheck>,
    /// Replace the envelope sender with this address (a null sender stays null); with
    /// `rewrite_mode`, the header `From:` too. Default: keep it.
    #[serde(default)]
    pub rewrite_sender: Option<String>,
    /// What `rewrite_sender` rewrites: `envelope`, `header` (the envelope and `From:`) or
    /// `collapse` (as `header`, and the original `From:` goes to `Reply-To:` when the message
    /// has none). Default: `envelope`.
    #[serde(default)]
    pub rewrite_mode: RewriteMode,
    /// Rate limits for this identity: each replaces the global rules with the same `per` and
    /// quantity; one with no such global rule is added. Default: none (the global rules).
    #[serde(default)]
    pub rate_limits: Vec<RateLimitRule>,
    /// Overrides `limits.max_message_size` for this identity. Default: the global one.
    #[serde(default)]
    pub max_message_size: Option<ByteSize>,
    /// Overrides `limits.max_recipients` for this identity. Default: the global one.
    #[serde(default)]
    pub max_recipients: Option<usize>,
}

/// A device identity: clients from `network` get these sender rules without AUTH.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The client network (CIDR). Required.
    #[schemars(with = "Cidr")]
    pub network: IpNet,
    /// Envelope senders these devices may use (same patterns as for users). Default: `["*"]`.
    #[serde(default = "any_sender")]
    pub senders: Vec<String>,
    /// Overrides `sender_check` (and the listener's) for these devices. Default: inherited.
    #[serde(default)]
    pub sender_check: Option<SenderCheck>,
    /// Replace the envelope sender with this address (a null sender stays null); with
    /// `rewrite_mode`, the header `From:` too. Default: keep it.
    #[serde(default)]
    pub rewrite_sender: Option<String>,
    /// What `rewrite_sender` rewrites: `envelope`, `header` or `collapse` (see `users[]`).
    /// Default: `envelope`.
    #[serde(default)]
    pub rewrite_mode: RewriteMode,
    /// Rate limits for this identity: each replaces the global rules with the same `per` and
    /// quantity; one with no such global rule is added. Default: none (the global rules).
    #[serde(default)]
    pub rate_limits: Vec<RateLimitRule>,
    /// Overrides `limits.max_message_size` for this identity. Default: the global one.
    #[serde(default)]
    pub max_message_size: Option<ByteSize>,
    /// Overrides `limits.max_recipients` for this identity. Default: the global one.
    #[serde(default)]
    pub max_recipients: Option<usize>,
}

fn any_sender() -> Vec<String> {
    vec!["*".into()]
}
