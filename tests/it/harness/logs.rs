//! Every log line postern writes in this test process, captured through the production
//! JSON formatter (`telemetry::log::init_with`) at `debug`, and checked as it is written:
//! no line may carry a secret the tests use (passwords, their AUTH PLAIN and LOGIN
//! encodings). A leak fails the test that owns the server ([`assert_no_secrets`], called
//! when a [`super::TestServer`] is dropped), so the whole suite is covered.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use postern::config::schema::{LogConfig, LogFormat};

/// Lines kept for [`lines`] (the oldest are dropped past this; every line is still scanned).
const KEEP: usize = 200_000;

#[derive(Default)]
struct Captured {
    lines: Vec<String>,
    leaks: Vec<String>,
}

fn captured() -> &'static Mutex<Captured> {
    static CAPTURED: OnceLock<Mutex<Captured>> = OnceLock::new();
    CAPTURED.get_or_init(Mutex::default)
}

/// What must never be logged: every password the suite uses, plain and as AUTH sends it,
/// and the OAuth2 client secret, refresh tokens and access tokens.
fn secrets() -> &'static [String] {
    static SECRETS: OnceLock<Vec<String>> = OnceLock::new();
    SECRETS.get_or_init(|| {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (relay_user, relay_pw) = super::UPSTREAM_CREDS;
        let mut all = vec![
            super::PASSWORD.to_owned(),
            crate::cluster::REDIS_PASSWORD.to_owned(),
            super::PLAIN_TOKEN.to_owned(),
            b64(super::PASSWORD),
            relay_pw.to_owned(),
            b64(relay_pw),
            b64(&format!("\0{relay_user}\0{relay_pw}")),
            super::token::TOKEN_PREFIX.to_owned(),
            super::token::REFRESH_PREFIX.to_owned(),
            super::token::CLIENT_SECRET.to_owned(),
            super::token::REFRESH_TOKEN.to_owned(),
        ];
        all.retain(|s| s.len() >= 6);
        all
    })
}

/// Installs the capturing subscriber (once per process).
pub fn capture() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let cfg = LogConfig {
            format: LogFormat::Json,
            level: "postern=debug".to_owned(),
        };
        postern::telemetry::log::init_with(&cfg, || LineWriter(Vec::new()));
    });
}

/// Buffers one event's output and files it when dropped (one event per writer).
struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0).into_owned();
        let Ok(mut c) = captured().lock() else {
            return;
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            if secrets().iter().any(|s| line.contains(s.as_str())) {
                c.leaks.push(line.to_owned());
            }
            if c.lines.len() >= KEEP {
                c.lines.drain(..KEEP / 2);
            }
            c.lines.push(line.to_owned());
        }
    }
}

/// Every captured line that parses as JSON.
pub fn lines() -> Vec<serde_json::Value> {
    let c = captured().lock().unwrap();
    c.lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Fails when a line carried a secret since the last check (the leak is reported once:
/// by the test that checks first, which under `cargo test` may be another test of the
/// same process; under nextest each test is its own process).
pub fn assert_no_secrets() {
    let leaks = std::mem::take(&mut captured().lock().unwrap().leaks);
    assert!(
        leaks.is_empty(),
        "a secret reached the log:\n{}",
        leaks.join("\n")
    );
}
