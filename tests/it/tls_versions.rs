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
