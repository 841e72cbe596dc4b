//! postern: an authenticated SMTP submission relay and smarthost proxy.
//!
//! # Layout
//! Data flows listener -> session -> policy -> spool -> delivery -> upstream:
//!
//! - [`smtp`]: the sans-I/O protocol engine (commands, replies, DATA decoding, SASL, the
//!   session state machine) and the upstream reply parser. No tokio, no files, no clock.
//! - [`config`]: the YAML schema, units and validation. A leaf, like `smtp`.
//! - [`policy`]: pure decisions: allowlists, device identities, who may send as whom.
//! - [`users`]: credentials, argon2 verification off the reactor, the success cache.
//! - [`message`]: the headers postern adds (Received, Date, Message-ID); the bounded
//!   header-section collector, From/Sender extraction and From rewriting.
//! - [`spool`]: the durable queue (group-committed fsync) and retry schedule.
//! - [`upstream`]: routes, the SMTP client, connection pools, the directory upstream, and the
//!   wrapping of lines too long for the wire.
//! - [`delivery`]: the queue runner: retries, failover, per-recipient bookkeeping; the
//!   queue book and the admin commands it carries out (list, hold, release, ...).
//! - [`rules`]: the rules snapshot built from one config and swapped whole on reload.
//! - [`server`]: accept loops, the PROXY protocol header (`proxy`), admission (`admission`),
//!   the per-connection shell that drives the engine (`conn`), and the back end that answers
//!   its questions (`backend`); the process-lifetime `Runtime`.
//! - [`reason`]: the one vocabulary of refusal reasons; [`clock`]: the injected clock;
//!   [`stream`]: the TLS-or-plain stream both sides use.
//! - [`cluster`]: the Redis shared by several instances (limits with `scope: cluster`).
//! - [`telemetry`]: logging set-up and the mail-log vocabulary.
//! - [`app`]: wiring, live reload (SIGHUP, certificate watcher), shutdown, the HTTP endpoint
//!   and its admin API; [`cli`]: the subcommands, the queue tools (admin API clients) and
//!   the upstream probe.
//!
//! Dependencies point down only: `cli -> app -> {server, delivery} -> {policy, users,
//! spool, upstream, message, telemetry} -> {smtp, config}`; the one sideways edge is
//! `upstream`'s routes using `policy::identity`'s sender patterns (pure, no I/O).
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod message;
pub mod policy;
pub mod reason;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod smtp;
pub mod spool;
pub mod stream;
pub mod telemetry;
#[cfg(test)]
mod test_rng;
pub mod upstream;
pub mod users;
