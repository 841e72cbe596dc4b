//! `postern probe upstream NAME` against the harness sink (STARTTLS + AUTH required) and
//! against a port where nothing listens.

use base64::Engine as _;

use crate::harness::admin::{stderr, stdout};
use crate::harness::{Opts, TestServer, UPSTREAM_CREDS, Upstream};

/// Each step of the session set-up is printed with its reply: connect, greeting, EHLO with
/// its extensions, STARTTLS, the certificate's subject and expiry, EHLO again, AUTH with the
/// mechanism (credentials redacted) and its result, QUIT. No MAIL reaches the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shows_each_step_and_sends_no_mail() {
    let server = TestServer::start(Opts {
        upstream: Upstream::StartTlsAuth,
        ..Opts::default()
    })
    .await;
    let out = server.cli(&["probe", "upstream", "sink"]).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let expected_in_order = [
        "connect    connected to 127.0.0.1:",
        "greeting   S: 220 ",
        "ehlo       C: EHLO relay.test",
        "ehlo       S: 250-",
        "ehlo       S: 250-STARTTLS",
        "starttls   C: STARTTLS",
        "starttls   S: 220 ",
        "tls        TLS",
        "ehlo       C: EHLO relay.test",
        "auth       C: AUTH PLAIN <redacted>",
        "auth       S: 235 2.7.0",
        "quit       C: QUIT",
        "quit       S: 221",
        "probe OK: upstream sink took the session set-up; no mail was sent",
    ];
    crate::harness::assert_lines_in_order(&text, &expected_in_order);
    let lines: Vec<&str> = text.lines().collect();
    let tls = lines.iter().find(|l| l.starts_with("tls ")).unwrap();
    assert!(tls.contains("certificate subject: "), "{tls}");
    assert!(tls.contains("expires: "), "{tls}");
    assert!(!tls.contains("(unreadable)"), "{tls}");
    // Before STARTTLS the sink offers no AUTH; after it, it does.
    let plain = format!("\0{}\0{}", UPSTREAM_CREDS.0, UPSTREAM_CREDS.1);
    let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
    for secret in [UPSTREAM_CREDS.1, encoded.as_str()] {
        assert!(
            !text.contains(secret),
            "the probe printed a credential:\n{text}"
        );
    }
    assert_eq!(server.sink().received(), vec![]);
    let transcript = server.sink().debug_dump();
    assert!(!transcript.contains("MAIL FROM"), "{transcript}");
}

/// Nothing listens at the upstream's port: exit 1 with a one-line reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_of_a_refusing_port_fails_with_one_line() {
    let server = TestServer::start(Opts {
        sink_down: true,
        ..Opts::default()
    })
    .await;
    let out = server.cli(&["probe", "upstream", "sink"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("postern: probe upstream sink: "), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    let out = server.cli(&["probe", "upstream", "nonesuch"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no such upstream"),
        "{}",
        stderr(&out)
    );
}
