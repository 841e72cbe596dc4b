//! Another SMTP implementation as the client: Python's smtplib (stdlib only), over the
//! legacy listener, STARTTLS + LOGIN on submission and implicit TLS on submissions.

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
