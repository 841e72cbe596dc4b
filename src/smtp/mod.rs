//! The SMTP protocol engine, sans-I/O: no tokio, no file system, no clock.
//!
//! Layers, bottom up: [`line`] frames command lines, [`command`] parses them
//! (with [`address`] for paths), [`data`] decodes message content, [`sasl`]
//! runs AUTH exchanges, [`ehlo`] builds the capability list, and [`session`]
//! drives the dialogue, producing [`reply::Reply`] bytes and asking the shell
//! to decide what needs policy or storage. [`reply_parser`] is the client
//! side (upstream replies), owned by the upstream connector.

pub mod address;
pub mod command;
pub mod data;
pub mod dsn;
pub mod ehlo;
pub mod line;
pub mod refusals;
pub mod reply;
pub mod reply_parser;
pub mod sasl;
pub mod session;
mod verbs;

#[cfg(test)]
mod dialog_tests;
#[cfg(test)]
mod session_tests;
