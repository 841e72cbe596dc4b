//! Checks behind postern's libFuzzer targets.
//!
//! Each `fuzz_targets/<name>.rs` is one line that hands the fuzzer's bytes to
//! `<name>::check` here; the code under test lives in postern's `smtp` module.
//! The checks assert properties the engine promises in its docs, not only
//! "no panic": bytes consumed never exceed bytes given, framing and decoding
//! do not depend on how the input is split into reads, buffers stay under
//! their caps, the DATA terminator is exactly the first CRLF "." CRLF, what
//! the server writes the client parser reads back, and so on.
//!
//! Keeping the checks in a library (rather than in the targets) lets
//! `tests/replay.rs` run every seed and regression input through them with a
//! plain `cargo test`, no libFuzzer and no special flags needed.

pub mod alphabet;
pub mod command;
pub mod data;
pub mod headers;
pub mod input;
pub mod line;
pub mod proxy_header;
pub mod reply_parser;
pub mod sasl;
pub mod session;
pub mod wrap;
