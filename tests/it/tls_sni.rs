//! Certificates chosen by SNI, and a listener with its own: OpenSSL's `s_client` connects
//! with `-servername` (or without SNI) and the test reads the subject of the certificate
//! the server presented. Reload swaps one SNI certificate; the expiry gauge has a series
//! per certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::harness::ca::TestCa;
use crate::harness::{Opts, TestServer};

/// The subject line of the certificate `addr` presents to a client sending `sni` (none:
/// `-noservername`), over STARTTLS when `starttls`.
async fn served(addr: SocketAddr, sni: Option<&str>, starttls: bool) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()])
        .stdin(Stdio::null());
    match sni {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    if starttls {
        cmd.args(["-starttls", "smtp"]);
    }
    let run = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("openssl s_client did not finish within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| {
            panic!(
                "no certificate from {addr} for SNI {sni:?}:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Certificates from a CA of the test's own (the client does not verify: it reads which
/// certificate came).
struct Certs {
    _dir: TempDir,
    ca: TestCa,
    a: (PathBuf, PathBuf),
    b: (PathBuf, PathBuf),
    own: (PathBuf, PathBuf),
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let d = dir.path();
        Certs {
            a: ca.issue(d, "a", "a.test", &["a.test", "*.a.test"]),
            b: ca.issue(d, "b", "b.test", &["b.test"]),
            own: ca.issue(d, "own", "own.test", &["own.test", "a.test"]),
            ca,
            _dir: dir,
        }
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// A server whose top-level set is the harness's `localhost` certificate plus `a` and
    /// `b` by SNI, and whose STARTTLS listener has `own` instead.
    async fn server(&self) -> TestServer {
        let pair = |p: &(PathBuf, PathBuf)| {
            format!(
                "{{certificate: {}, private_key: {}}}",
                p.0.display(),
                p.1.display()
            )
        };
        TestServer::start(Opts {
            tls: format!("sni: [{}, {}]", pair(&self.a), pair(&self.b)),
            submission: format!(
                "certificate: {}, private_key: {}",
                self.own.0.display(),
                self.own.1.display()
            ),
            ..Opts::default()
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_a_listener_serves_its_own() {
    let certs = Certs::new();
    let server = certs.server().await;
    let rows = [
        (None, "CN = localhost"),
        (Some("a.test"), "CN = a.test"),
        (Some("A.Test"), "CN = a.test"),
        (Some("mail.a.test"), "CN = a.test"),
        (Some("x.mail.a.test"), "CN = localhost"),
        (Some("b.test"), "CN = b.test"),
        (Some("unknown.test"), "CN = localhost"),
        (Some("own.test"), "CN = localhost"),
    ];
    for (sni, want) in rows {
        let got = served(server.submissions, sni, false).await;
        assert_eq!(got, want, "implicit TLS, SNI {sni:?}");
    }
    // The STARTTLS listener has a set of its own: its certificate whatever the SNI, even
    // for names the top-level set has certificates for.
    for sni in [None, Some("a.test"), Some("b.test"), Some("own.test")] {
        let got = served(server.submission, sni, true).await;
        assert_eq!(got, "CN = own.test", "STARTTLS, SNI {sni:?}");
    }
    let scrape = server.scrape().await;
    for label in ["tls", "tls.sni[0]", "tls.sni[1]", "listeners[submission]"] {
        let series =
            format!("postern_tls_certificate_expiry_timestamp_seconds{{certificate=\"{label}\"}}");
        assert!(scrape.get(&series) > 1.7e9, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_one_sni_certificate() {
    let certs = Certs::new();
    let server = certs.server().await;
    assert_eq!(
        served(server.submissions, Some("b.test"), false).await,
        "CN = b.test"
    );
    // b's files are renewed in place; a reload (as SIGHUP) serves the new one for b.test
    // and leaves the others as they were.
    let renewed = certs
        .ca
        .issue(certs.dir(), "b-renewed", "b.test renewed", &["b.test"]);
    std::fs::rename(&renewed.0, &certs.b.0).unwrap();
    std::fs::rename(&renewed.1, &certs.b.1).unwrap();
    server.reload().await.unwrap();
    assert_eq!(
        served(server.submissions, Some("b.test"), false).await,
        "CN = b.test renewed"
    );
    assert_eq!(
        served(server.submissions, Some("a.test"), false).await,
        "CN = a.test"
    );
    assert_eq!(
        served(server.submissions, None, false).await,
        "CN = localhost"
    );

    // A renewal whose key does not match is refused by the watcher's check and by a reload,
    // and b.test keeps its running certificate.
    let other = certs.ca.issue(certs.dir(), "c", "c.test", &["b.test"]);
    std::fs::rename(&other.1, &certs.b.1).unwrap();
    assert!(!server.running().check_certificate().await);
    let err = server.reload().await.unwrap_err().to_string();
    assert!(
        err.contains("tls.sni[1].private_key: ") && err.contains("is not the private key"),
        "{err}"
    );
    assert_eq!(
        served(server.submissions, Some("b.test"), false).await,
        "CN = b.test renewed"
    );
    // The matching certificate follows: the watcher's check picks the pair up.
    std::fs::rename(&other.0, &certs.b.0).unwrap();
    assert!(server.running().check_certificate().await);
    assert_eq!(
        served(server.submissions, Some("b.test"), false).await,
        "CN = c.test"
    );
}
