//! postern: an authenticated SMTP submission relay and smarthost proxy.
#![forbid(unsafe_code)]

pub mod config;
