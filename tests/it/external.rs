//! Other SMTP implementations as the client: Python's smtplib (stdlib only) and swaks (the
//! README's commands), over the legacy listener, STARTTLS + AUTH on submission and implicit
//! TLS on submissions.

use std::io::ErrorKind;
use std::process::{Command, Output};

use crate::harness::{DELIVERY, Opts, PASSWORD, TestServer, USER, split_prefix};

/// argv: mode, port, CA file, user, password. Prints nothing; exits non-zero on any error.
const SCRIPT: &str = r#"
import smtplib, ssl, sys
mode, port, cafile, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
msg = ("X-Test: python-%s\r\nSubject: from smtplib\r\n\r\nhello from python\r\n" % mode).encode()
ctx = ssl.create_default_context(cafile=cafile)
if mode == "legacy":
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="python.test", timeout=10)
elif mode == "submission":
    s = smtplib.SMTP("localhost", port, local_hostname="python.test", timeout=10)
    s.starttls(context=ctx)
    s.ehlo()
    s.login(user, password)
else:
    s = smtplib.SMTP_SSL("localhost", port, local_hostname="python.test", timeout=10, context=ctx)
    s.login(user, password)
refused = s.sendmail("alice@example.com", ["py@example.org"], msg)
assert not refused, refused
s.quit()
"#;

/// Test 16: smtplib through each listener; the sink gets the exact bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_through_each_listener() {
    let server = TestServer::start(Opts::default()).await;
    let rows = [
        ("legacy", server.legacy),
        ("submission", server.submission),
        ("submissions", server.submissions),
    ];
    for (mode, addr) in rows {
        let args = [
            mode.to_owned(),
            addr.port().to_string(),
            server.ca.ca_file.display().to_string(),
            USER.to_owned(),
            PASSWORD.to_owned(),
        ];
        // The child blocks; keep it off the runtime's workers, which serve postern.
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .arg("-c")
                .arg(SCRIPT)
                .args(args)
                .output()
        });
        let out = crate::harness::client::step("python3", out)
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.sink().expect(1);
        let m = &server.sink().wait(DELIVERY).await[0];
        let sent =
            format!("X-Test: python-{mode}\r\nSubject: from smtplib\r\n\r\nhello from python\r\n");
        split_prefix(&m.data, sent.as_bytes());
        assert_eq!(m.rcpt_to, ["py@example.org"], "{mode}");
    }
}

/// The README's device network (from `config/postern.yaml`): loopback clients without AUTH
/// may send as `@example.com` or `@localhost` and have their sender rewritten.
const README_NETWORKS: &str = "networks:
  - {network: 127.0.0.0/8, senders: [\"@example.com\", \"@localhost\"], rewrite_sender: scans@example.com}
";

/// Runs swaks with `args` off the runtime's workers. A missing swaks fails the test: CI
/// installs it, so a skip would only hide that the README's commands went untested.
async fn swaks(args: Vec<String>) -> Output {
    let run = tokio::task::spawn_blocking(move || Command::new("swaks").args(&args).output());
    match crate::harness::client::step("swaks", run).await.unwrap() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "swaks is not on PATH ({e}); install it (`apt-get install swaks`): CI does, and \
             this test never skips"
        ),
        Err(e) => panic!("cannot run swaks: {e}"),
    }
}

/// The three swaks commands of README.md ("Send a message through each listener"), adapted
/// to the test server: its ports, its user (alice, not demo), and its CA, which swaks is
/// told to verify (the README leaves verification off for the self-signed default). Each
/// exits 0 and the sink gets exactly three messages with the README's envelopes: the
/// authenticated sender as given, the legacy device's rewritten to `scans@example.com`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_readme_commands_through_each_listener() {
    let server = TestServer::start(Opts::with(README_NETWORKS)).await;
    let ca = server.ca.ca_file.display().to_string();
    let (submission, submissions, legacy) = (
        server.submission.to_string(),
        server.submissions.to_string(),
        server.legacy.to_string(),
    );
    // Each row: the README's command with the adaptations appended.
    #[rustfmt::skip]
    let rows: [(&str, Vec<&str>, &str, &str); 3] = [
        ("submission", vec![
            "--server", &submission, "--tls", "--auth", "LOGIN",
            "--auth-user", USER, "--auth-password", PASSWORD,
            "--from", "alice@example.com", "--to", "someone@example.net",
            "--tls-verify", "--tls-ca-path", &ca,
        ], "alice@example.com", "ESMTPSA"),
        ("submissions", vec![
            "--server", &submissions, "--tlsc", "--auth", "PLAIN",
            "--auth-user", USER, "--auth-password", PASSWORD,
            "--from", "alice@example.com", "--to", "someone@example.net",
            "--tls-verify", "--tls-ca-path", &ca,
        ], "alice@example.com", "ESMTPSA"),
        ("legacy", vec![
            "--server", &legacy, "--from", "scanner@localhost", "--to", "someone@example.net",
        ], "scans@example.com", "ESMTP"),
    ];
    for (listener, args, sender, with) in rows {
        let out = swaks(args.iter().map(|a| a.to_string()).collect()).await;
        assert!(
            out.status.success(),
            "{listener}: swaks {args:?} exited {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        server.sink().expect(1);
        let got = server.sink().wait(DELIVERY).await;
        assert_eq!(got.len(), 1, "{listener}");
        let m = &got[0];
        assert_eq!(m.mail_from, sender, "{listener}");
        assert_eq!(m.rcpt_to, ["someone@example.net"], "{listener}");
        // postern's own Received field says how swaks came in (RFC 3848).
        let text = m.text();
        assert!(
            text.starts_with("Received: from ") && text.contains(&format!(" with {with} id ")),
            "{listener}: {text}"
        );
        assert!(
            text.contains("This is a test mailing"),
            "{listener}: {text}"
        );
    }
    assert_eq!(server.sink().received().len(), 3);
    assert_eq!(server.sink().violations(), Vec::<String>::new());
}
