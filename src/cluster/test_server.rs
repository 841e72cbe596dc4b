//! A real `redis-server` (the Debian package) for the unit tests: on a free loopback port,
//! without persistence, in its own temporary directory; stopped and started again on the
//! same port to test outages, killed by its PID when dropped.
//!
//! The integration tests have their own (tests/it/harness/redis.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` process.
#[derive(Debug)]
pub(crate) struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one without a password and waits until it answers PING.
    pub(crate) fn start() -> RedisServer {
        RedisServer::launch(None)
    }

    /// Starts one with `requirepass password` (written to its config file).
    pub(crate) fn with_password(password: &str) -> RedisServer {
        RedisServer::launch(Some(password.to_owned()))
    }

    fn launch(password: Option<String>) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            password,
            child: None,
        };
        server.start_again();
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Where to write a password file.
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Kills the server (its data is lost, as it keeps none on disk).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and waits for PING.
    pub(crate) fn start_again(&mut self) {
        let conf = self.dir.path().join("redis.conf");
        let mut text = String::from("enable-debug-command yes\n");
        if let Some(p) = &self.password {
            text.push_str(&format!("requirepass {p}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        self.wait_for_ping();
    }

    /// Sends one command (RESP inline) on a new connection and returns the reply's first line.
    pub(crate) fn command(&self, line: &str) -> String {
        self.try_command(line)
            .expect("redis-server is not reachable")
    }

    fn try_command(&self, line: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        if let Some(p) = &self.password {
            s.write_all(format!("AUTH {p}\r\n").as_bytes()).ok()?;
            read_line(&mut s);
        }
        s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        Some(read_line(&mut s))
    }

    /// Waits (up to 5 s, every 20 ms) for PING to answer.
    fn wait_for_ping(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self
                .try_command("PING")
                .is_some_and(|r| r.starts_with("+PONG"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One reply line, without CRLF (bounded: 4 KiB).
fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while out.len() < 4096 && s.read(&mut byte).unwrap_or(0) == 1 {
        if byte[0] == b'\n' {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out).trim_end().to_owned()
}

/// A handle on `server` (prefix `test:`, 2 s timeouts) with its prober running until the
/// token is cancelled; up when returned (waits up to 10 s, every 20 ms).
pub(crate) async fn handle_on(
    server: &RedisServer,
) -> (super::Redis, tokio_util::sync::CancellationToken) {
    let cfg = crate::config::redis::RedisConfig {
        url: server.url(),
        username: None,
        password_file: None,
        tls: None,
        key_prefix: "test:".into(),
        command_timeout: crate::config::units::Duration(Duration::from_secs(2)),
        connect_timeout: crate::config::units::Duration(Duration::from_secs(2)),
    };
    let metrics = crate::telemetry::metrics::Metrics::new().unwrap();
    let redis = super::Redis::new(&cfg, metrics.redis.clone()).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(redis.clone().watch(stop.clone()));
    for _ in 0..500 {
        if redis.is_up() {
            return (redis, stop);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis not up within 10 s");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
