//! The `postern` binary as an admin runs it: kill -9 in the middle of a burst, bad configs,
//! and `hash-password`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::harness::sink::{Sink, SinkOptions, reserve_port};

pub const BIN: &str = env!("CARGO_BIN_EXE_postern");

/// Kills (SIGKILL) and reaps the child when dropped, so a failing test leaves no process.
pub struct Postern(Child);

impl Postern {
    /// Takes charge of a child that runs postern (started some other way).
    pub fn from_child(child: Child) -> Postern {
        Postern(child)
    }

    /// `postern run --config CONFIG`, logging into `DIR/postern-N.log`.
    pub fn run(config: &Path, log: &Path) -> Postern {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Postern(child)
    }

    /// SIGKILL now (std's `Child::kill` sends SIGKILL on Unix) and reap.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, by the child's PID: what an init system sends to stop postern.
    pub fn sigterm(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// Sends `signal` to the child, by its PID.
    pub fn signal(&self, signal: rustix::process::Signal) {
        use rustix::process::{Pid, kill_process};
        kill_process(Pid::from_child(&self.0), signal).unwrap();
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().unwrap()
    }

    /// Waits at most `within` for the child to exit (a bounded poll: the crate has no
    /// tokio `process` feature) and returns its status.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "postern still running {within:?} later"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Postern {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `addr` accepts connections (a readiness wait: bounded, 100 tries).
pub async fn wait_listening(addr: SocketAddr, child: &mut Postern) {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("postern exited before listening: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("postern is not listening on {addr}");
}

/// One raw SMTP client that tolerates the server vanishing: it sends `count` messages and
/// returns the tags of those that got a 250 after the final dot.
async fn burst_client(
    addr: SocketAddr,
    client: usize,
    count: usize,
    acks: watch::Sender<usize>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let _ = burst_session(addr, client, count, &acks, &mut acked).await;
    acked
}

async fn burst_session(
    addr: SocketAddr,
    client: usize,
    count: usize,
    acks: &watch::Sender<usize>,
    acked: &mut Vec<String>,
) -> std::io::Result<()> {
    let step = Duration::from_secs(10);
    let tcp = tokio::time::timeout(step, TcpStream::connect(addr)).await??;
    let (read, mut write) = tcp.into_split();
    let mut read = BufReader::new(read);
    let mut reply = async || -> std::io::Result<String> {
        loop {
            let mut line = String::new();
            if tokio::time::timeout(step, read.read_line(&mut line)).await?? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line);
            }
        }
    };
    reply().await?;
    write.write_all(b"EHLO burst.test\r\n").await?;
    reply().await?;
    for n in 0..count {
        let tag = format!("burst-{client}-{n}");
        write
            .write_all(b"MAIL FROM:<dev@example.net>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n")
            .await?;
        for _ in 0..3 {
            reply().await?;
        }
        write
            .write_all(
                format!("X-Test: {tag}\r\nSubject: burst\r\n\r\nbody {tag}\r\n.\r\n").as_bytes(),
            )
            .await?;
        if reply().await?.starts_with("250 ") {
            acked.push(tag);
            acks.send_modify(|n| *n += 1);
        }
    }
    Ok(())
}

/// Writes `DIR/postern.yaml`: one plain listener on `port` (no AUTH, 127.0.0.1 only) relaying
/// to the sink on `sink`, retrying within seconds, with `extra` top-level YAML appended.
pub fn legacy_config(dir: &Path, port: u16, sink: u16, extra: &str) -> PathBuf {
    let yaml = format!(
        r#"hostname: relay.test
listeners:
  - {{name: legacy, address: "127.0.0.1:{port}", tls: none, auth: none, allow_networks: [127.0.0.1/32]}}
queue: {{directory: {d}/spool, min_backoff: 1s, max_backoff: 2s}}
upstreams:
  - {{name: sink, address: "127.0.0.1:{sink}", tls: none, connect_timeout: 2s}}
log: {{level: warn}}
{extra}"#,
        d = dir.display()
    );
    let path = dir.join("postern.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Test 13: SIGKILL after ~50 of 200 messages were acknowledged; after a restart on the same
/// spool every acknowledged message reaches the sink (duplicates allowed, losses not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default()).await;
    let port = reserve_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = legacy_config(dir.path(), port, sink.port(), "");
    let mut postern = Postern::run(&config, &dir.path().join("postern-1.log"));
    wait_listening(addr, &mut postern).await;

    let (acks, mut acked_count) = watch::channel(0usize);
    let clients: Vec<_> = (0..10)
        .map(|c| tokio::spawn(burst_client(addr, c, 20, acks.clone())))
        .collect();
    // `wait_for` returns a borrow that holds the channel's read lock: keeping it alive would
    // block every client's `send_modify` (a std RwLock, so the runtime's workers), which hung
    // this test. Reduce it to a bool at once.
    let reached = tokio::time::timeout(Duration::from_secs(30), acked_count.wait_for(|n| *n >= 50))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(
        reached,
        "fewer than 50 acknowledgements before the deadline"
    );
    postern.kill9();
    let mut acked = Vec::new();
    for c in clients {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(30), c)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(
        acked.len() >= 50 && acked.len() < 200,
        "acked {}: the kill was not mid-burst",
        acked.len()
    );

    let mut postern = Postern::run(&config, &dir.path().join("postern-2.log"));
    wait_listening(addr, &mut postern).await;
    let wanted: Vec<String> = acked.iter().map(|t| format!("X-Test: {t}\r\n")).collect();
    let all_in = |all: &[crate::harness::sink::Received]| {
        wanted
            .iter()
            .all(|w| all.iter().any(|m| m.text().contains(w.as_str())))
    };
    let got = sink.wait_for(Duration::from_secs(30), all_in).await;
    eprintln!("kill9: acked {}, sink got {}", acked.len(), got.len());
    assert!(
        got.iter()
            .all(|m| m.rcpt_to == ["x@example.org"] && m.mail_from == "dev@example.net")
    );
    drop(postern);
}

/// The `tests/configs/bad/*` directories, sorted.
fn bad_config_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/bad");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("postern.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// Test 14: `check-config` names file, key and problem for each broken config, exits
/// non-zero; the shipped default passes.
#[test]
fn check_config_reports_each_bad_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dirs = bad_config_dirs();
    assert!(!dirs.is_empty(), "no bad configs under tests/configs/bad");
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let rel = format!("tests/configs/bad/{name}/postern.yaml");
        let expected = std::fs::read_to_string(dir.join("expected-error")).unwrap();
        let expected = expected.trim();
        let out = Command::new(BIN)
            .args(["check-config", "--config", &rel])
            .current_dir(root)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.contains(expected) {
            failures.push(format!(
                "{name}: status {}, stderr {stderr:?}, expected {expected:?}",
                out.status
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configs:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config", "config/postern.yaml"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shipped config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (blocking, polling every 25 ms) at most `within` for `child` to exit; when it has
/// not, kills and reaps it and returns `None`.
pub fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Test 14: `run` refuses a bad config with a non-zero exit, before doing anything.
#[test]
fn run_exits_nonzero_on_a_bad_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = &bad_config_dirs()[0];
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.join("postern.yaml"))
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Validation takes milliseconds.
    let Some(status) = exit_within(&mut child, Duration::from_secs(5)) else {
        panic!("postern run kept running with {}", dir.display());
    };
    assert!(!status.success());
}

/// Test 15: `hash-password` reads stdin and prints an argon2id PHC string that verifies.
#[test]
fn hash_password_prints_a_verifiable_argon2id_hash() {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let rows: [(&[u8], Option<&str>); 3] = [
        (b"correct horse\n", Some("correct horse")),
        (b"no newline", Some("no newline")),
        (b"\n", None),
    ];
    for (stdin, password) in rows {
        let mut child = Command::new(BIN)
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let Some(password) = password else {
            assert!(!out.status.success(), "empty password accepted");
            continue;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let phc = String::from_utf8(out.stdout).unwrap();
        let phc = phc.trim_end();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        let hash = PasswordHash::new(phc).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        );
        assert!(
            argon2::Argon2::default()
                .verify_password(b"wrong", &hash)
                .is_err()
        );
    }
}

/// `postern --version` names the version and the commit it was built from (the same pair
/// `postern_build_info` carries), and exits 0.
#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let want = format!("postern {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = text
        .trim_end()
        .strip_prefix(&want)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{text:?}"
    );
}
