//! postern's integration tests: one binary (rustls style), each module a theme.
//!
//! Every test starts its own postern on `127.0.0.1:0` with a real SMTP sink as upstream
//! (see [`harness`]) and asserts on exact reply codes and on the exact bytes that reached
//! the sink. Waits are bounded deadlines, never sleeps.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is the failure report"
)]

mod harness;

mod admin;
mod auth;
mod binary;
mod bounces;
mod cli;
mod cluster;
mod container;
mod delivery;
mod dialogs;
mod docs;
mod drain;
mod external;
mod fdlimit;
mod headers;
mod kubernetes;
mod lines;
mod lockout;
mod metrics;
mod oauth2;
mod prometheus;
mod protocol;
mod proxy;
mod ratelimit;
mod recipes;
mod reload;
mod restart;
mod routing;
mod scaleout;
mod schema;
mod selftest;
mod sessions;
mod shaping;
mod shipped;
mod slow;
mod systemd;
mod testssl;
mod tls_sni;
mod tls_versions;
