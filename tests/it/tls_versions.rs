//! Old TLS is refused: TLS 1.0 and 1.1 (RFC 8996 deprecates both) fail the handshake on
//! the implicit-TLS and the STARTTLS listener alike, while TLS 1.2 and 1.3 succeed. The
//! client is OpenSSL's `s_client`, told to offer only the version under test (security
//! level 0, which OpenSSL 3 needs to offer 1.0 or 1.1 at all).

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use crate::harness::{Opts, TestServer};

/// `openssl s_client` offering only `version` (`-tls1`, `-tls1_1`, ...) to `addr`, over
/// STARTTLS when `starttls`; bounded by its own timeout and ours.
async fn handshake(addr: SocketAddr, version: &'static str, starttls: bool) -> Output {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-brief",
        version,
        "-cipher",
        "DEFAULT@SECLEVEL=0",
    ])
    .arg("-connect")
    .arg(addr.to_string())
    .stdin(Stdio::null());
    if starttls {
        cmd.args(["-starttls", "smtp"]);
    }
    let run = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("openssl s_client did not finish within 30 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_are_refused_1_2_and_1_3_accepted() {
    let server = TestServer::start(Opts::default()).await;
    for (addr, starttls) in [(server.submissions, false), (server.submission, true)] {
        for version in ["-tls1", "-tls1_1"] {
            let out = handshake(addr, version, starttls).await;
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            // The server's own refusal (an alert: protocol_version or handshake_failure),
            // not a local failure to offer the version.
            assert!(
                !out.status.success() && text.contains("SSL alert number"),
                "{version} (starttls: {starttls}) was not refused by the server:\n{text}"
            );
        }
        for (version, shown) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
            let out = handshake(addr, version, starttls).await;
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&format!("Protocol version: {shown}")),
                "{version} (starttls: {starttls}) failed:\n{text}"
            );
        }
    }
}

/// RFC 5746 section 4.4: a server may refuse a TLS 1.2 renegotiation; rustls answers the
/// client's new ClientHello with a `no_renegotiation` warning, and postern sends it at once
/// rather than with its next reply (here, the 421 after `timeouts.command`, five minutes
/// on): `s_client` sends `R` after the banner and must give up within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renegotiation_request_is_refused_at_once() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let server = TestServer::start(Opts::default()).await;
    let mut child = tokio::process::Command::new("openssl")
        .args(["s_client", "-tls1_2", "-noservername", "-connect"])
        .arg(server.submissions.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("220 ") {
                return;
            }
        }
        panic!("s_client ended before the banner");
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), banner)
        .await
        .expect("no banner within 30 s");
    // Stdin stays open: s_client must end because of the server's answer, not EOF.
    stdin.write_all(b"R\n").await.unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("s_client still waiting for the renegotiation after 20 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no renegotiation"),
        "{:?}\n{stderr}",
        out.status
    );
    drop(stdin);
}
