//! A real `redis-server` (Debian package; CI installs it) for the cluster tests: on a free
//! loopback port (bound to 127.0.0.1:0 to pick it), without persistence, in its own
//! temporary directory. [`RedisServer::stop`] and [`RedisServer::start_again`] make an
//! outage on the same port; the process is killed by its PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::eventually_async;

/// One `redis-server` process.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    /// A TLS port besides the plain one, with the certificate and key it presents.
    tls: Option<(u16, PathBuf, PathBuf)>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one without a password; returns once it answers PING.
    pub async fn start() -> RedisServer {
        RedisServer::launch(None).await
    }

    /// Starts one with `requirepass` (written to its own config file, not the command line).
    pub async fn with_password(password: &str) -> RedisServer {
        RedisServer::launch(Some(password.to_owned())).await
    }

    /// Starts one that also listens for TLS (`rediss://`, [`RedisServer::tls_url`]) with
    /// `cert` and `key` (the test CA's leaf for 127.0.0.1), clients not authenticated.
    pub async fn with_tls(cert: &Path, key: &Path) -> RedisServer {
        let tls = (free_port(), cert.to_owned(), key.to_owned());
        RedisServer::launch_with(None, Some(tls)).await
    }

    async fn launch(password: Option<String>) -> RedisServer {
        RedisServer::launch_with(password, None).await
    }

    async fn launch_with(
        password: Option<String>,
        tls: Option<(u16, PathBuf, PathBuf)>,
    ) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            password,
            tls,
            child: None,
        };
        server.start_again().await;
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://127.0.0.1:TLS_PORT`, for a server started [`RedisServer::with_tls`].
    pub fn tls_url(&self) -> String {
        let (port, ..) = self.tls.as_ref().expect("started without TLS");
        format!("rediss://127.0.0.1:{port}")
    }

    /// Its temporary directory (for a password file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills it by its PID and waits for it: an outage (its keys are lost with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port; returns once it answers PING.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let conf = self.dir.path().join("redis.conf");
        let mut text = String::from("enable-debug-command yes\n");
        if let Some(p) = &self.password {
            text.push_str(&format!("requirepass {p}\n"));
        }
        if let Some((port, cert, key)) = &self.tls {
            text.push_str(&format!(
                "tls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-auth-clients no\n",
                cert.display(),
                key.display()
            ));
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
        eventually_async("redis-server answers PING", || async {
            self.try_command("PING").await.is_some_and(|r| r == "+PONG")
        })
        .await;
    }

    /// Sends one inline command on a new connection and returns the first reply line.
    pub async fn command(&self, line: &str) -> String {
        self.try_command(line)
            .await
            .expect("redis-server is not reachable")
    }

    async fn try_command(&self, line: &str) -> Option<String> {
        let exchange = async {
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            let (r, mut w) = s.split();
            let mut r = BufReader::new(r);
            let mut reply = String::new();
            if let Some(p) = &self.password {
                w.write_all(format!("AUTH {p}\r\n").as_bytes()).await.ok()?;
                r.read_line(&mut reply).await.ok()?;
                reply.clear();
            }
            w.write_all(format!("{line}\r\n").as_bytes()).await.ok()?;
            r.read_line(&mut reply).await.ok()?;
            Some(reply.trim_end().to_owned())
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .ok()?
    }
}

/// A free loopback port (bound to 127.0.0.1:0 to pick it, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
