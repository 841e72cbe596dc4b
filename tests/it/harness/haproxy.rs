//! A real HAProxy (Debian's `/usr/sbin/haproxy`) in front of one or more postern listeners,
//! as in production: TCP mode, round robin, `send-proxy` (v1) or `send-proxy-v2` on every
//! server line, and optionally an HTTP health check on each instance's `/readyz`.
//!
//! Each [`Haproxy`] writes its config into its own temporary directory, runs in the
//! foreground (`-db`: no daemon, no master process) on an ephemeral loopback port, and is
//! killed by its PID (and reaped) on drop, also when the test fails. A missing binary fails
//! the test: CI installs the package and these tests never skip.
//!
//! For several instances (the scale-out tests), give one [`Backend`] per postern, each with
//! its HTTP address when `health` is on; [`Haproxy::wait_servers`] waits for the health
//! checks to agree with what the test expects.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::eventually;
use super::sink::reserve_port;

/// The binary, as Debian installs it.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// Which PROXY protocol header HAProxy sends to the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// `send-proxy`: the text header.
    V1,
    /// `send-proxy-v2`: the binary header.
    V2,
}

/// One postern instance behind HAProxy.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// The SMTP listener HAProxy forwards to.
    pub smtp: SocketAddr,
    /// The instance's HTTP endpoint, for the `/readyz` health check (used when
    /// [`HaproxyOpts::health`] is on; the check goes to this address's port).
    pub http: Option<SocketAddr>,
}

impl Backend {
    /// A backend without a health-check address.
    pub fn smtp(smtp: SocketAddr) -> Backend {
        Backend { smtp, http: None }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct HaproxyOpts {
    /// The servers, in round-robin order (named `s0`, `s1`, ...).
    pub backends: Vec<Backend>,
    /// The header sent to them.
    pub version: ProxyVersion,
    /// `option httpchk GET /readyz` on each backend's `http` port, every 100 ms, one
    /// failure to go down and one success to come up.
    pub health: bool,
}

/// A running HAProxy.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    /// Where clients connect (the frontend, on 127.0.0.1).
    pub frontend: SocketAddr,
    /// The admin socket (`show stat`).
    stats: PathBuf,
    log: PathBuf,
    /// Holds the config, the socket and the log; removed after the process is killed.
    _dir: TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // Our own child, by its PID: SIGKILL, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    /// Writes the config, starts HAProxy and waits (bounded) until its frontend is bound.
    pub async fn start(opts: HaproxyOpts) -> Haproxy {
        assert!(
            !opts.backends.is_empty(),
            "HAProxy needs at least one backend"
        );
        let dir = tempfile::tempdir().unwrap();
        let frontend = SocketAddr::from(([127, 0, 0, 1], reserve_port()));
        let stats = dir.path().join("admin.sock");
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, config_text(&opts, frontend, &stats)).unwrap();
        let log = dir.path().join("haproxy.log");
        let child = spawn(&config, &log);
        let mut haproxy = Haproxy {
            child,
            frontend,
            stats,
            log,
            _dir: dir,
        };
        haproxy.wait_bound().await;
        haproxy
    }

    /// Waits until the admin socket answers: by then every listener is bound. (Probing the
    /// frontend instead would send a connection, and a PROXY header, to a backend.)
    async fn wait_bound(&mut self) {
        let mut exited = None;
        let what = format!("HAProxy answering on {}", self.stats.display());
        eventually(&what, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return true;
            }
            self.show_stat().is_ok()
        })
        .await;
        if let Some(status) = exited {
            panic!("HAProxy exited ({status}) at start:\n{}", self.output());
        }
    }

    /// Waits until `show stat` reports each server `s0`, `s1`, ... with the given status
    /// (`"UP"`, `"DOWN"`, or e.g. `"UP 1/2"` while a check is in progress: prefix match).
    pub async fn wait_servers(&self, statuses: &[&str]) {
        let what = format!("HAProxy servers {statuses:?}");
        let mut last = String::new();
        let check = || {
            let Ok(states) = self.server_states() else {
                return false;
            };
            last = format!("{states:?}");
            statuses.iter().enumerate().all(|(i, want)| {
                let name = format!("s{i}");
                states
                    .iter()
                    .any(|(n, status)| *n == name && status.starts_with(want))
            })
        };
        eventually(&what, check).await;
    }

    /// Each server's name and status from `show stat`.
    pub fn server_states(&self) -> std::io::Result<Vec<(String, String)>> {
        let csv = self.show_stat()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
            return Err(std::io::Error::other(format!("no stat header in {csv:?}")));
        };
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.get(px) == Some(&"postern"))
            .filter(|f| !matches!(f.get(sv), Some(&"FRONTEND" | &"BACKEND")))
            .map(|f| (f[sv].to_owned(), f[st].to_owned()))
            .collect())
    }

    fn show_stat(&self) -> std::io::Result<String> {
        let mut sock = UnixStream::connect(&self.stats)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.write_all(b"show stat\n")?;
        let mut out = String::new();
        sock.read_to_string(&mut out)?;
        Ok(out)
    }

    /// What HAProxy printed, for failure messages.
    pub fn output(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("haproxy output ({}):\n{text}", self.log.display())
    }
}

/// The config: one TCP frontend, one round-robin backend `postern`.
fn config_text(opts: &HaproxyOpts, frontend: SocketAddr, stats: &Path) -> String {
    let send = match opts.version {
        ProxyVersion::V1 => "send-proxy",
        ProxyVersion::V2 => "send-proxy-v2",
    };
    let mut servers = String::new();
    for (i, b) in opts.backends.iter().enumerate() {
        let check = match (opts.health, b.http) {
            (true, Some(http)) => format!(" check port {} inter 100ms fall 1 rise 1", http.port()),
            (true, None) => panic!("health checks need each backend's http address"),
            (false, _) => String::new(),
        };
        servers.push_str(&format!("    server s{i} {} {send}{check}\n", b.smtp));
    }
    let httpchk = if opts.health {
        "    option httpchk GET /readyz\n"
    } else {
        ""
    };
    format!(
        "global
    maxconn 512
    stats socket {stats} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 2s

frontend smtp
    bind {frontend}
    default_backend postern

backend postern
    balance roundrobin
{httpchk}{servers}",
        stats = stats.display(),
    )
}

/// Runs HAProxy in the foreground with its output in `log`.
fn spawn(config: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
    let err = out.try_clone().unwrap();
    let spawned = Command::new(HAPROXY)
        .arg("-db")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "{HAPROXY} is missing ({e}); install it (`apt-get install haproxy`): CI does, and \
             these tests never skip"
        ),
        Err(e) => panic!("cannot run {HAPROXY}: {e}"),
    }
}
