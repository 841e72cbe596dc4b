//! deploy/container/postern.yaml run for real, as the container runs it but on loopback:
//! its listeners and `http:` port moved to free 127.0.0.1 ports and its volume
//! (`/var/lib/postern`) to a temporary directory, nothing else changed. Mail sent with real
//! clients arrives in the demo's directory upstream byte for byte, and `postern healthcheck`
//! (the image's HEALTHCHECK, with its arguments) follows the relay's readiness.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::Tls;
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use super::{repo, text};
use crate::binary::{Postern, legacy_config, wait_listening};
use crate::harness::admin::run_cli;
use crate::harness::client::{STEP, lettre_send};
use crate::harness::sink::reserve_port;
use crate::harness::{eventually, queue_id, split_prefix};

/// Where the image keeps its state (its VOLUME).
const VOLUME: &str = "/var/lib/postern";

/// The container config with its three listeners and its `http:` listener on `ports`
/// (submission, submissions, legacy, http) on loopback, and its volume at `DIR/state`.
fn container_config_on(dir: &Path, ports: [u16; 4]) -> PathBuf {
    let mut yaml = std::fs::read_to_string(repo("deploy/container/postern.yaml")).unwrap();
    for (documented, port) in ["2587", "2465", "2525", "9587"].into_iter().zip(ports) {
        let from = format!("\"0.0.0.0:{documented}\"");
        assert!(
            yaml.contains(&from),
            "the container config no longer has {from}"
        );
        yaml = yaml.replace(&from, &format!("\"127.0.0.1:{port}\""));
    }
    assert!(yaml.contains(VOLUME));
    yaml = yaml.replace(VOLUME, &dir.join("state").display().to_string());
    let path = dir.join("postern.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `postern healthcheck --config CONFIG` plus `extra`, as the HEALTHCHECK runs it.
async fn healthcheck(config: &Path, extra: &[&str]) -> Output {
    let args: Vec<&str> = ["healthcheck"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    run_cli(&args, config.to_owned()).await
}

/// Sends `message` exactly (no fixup, its own final dot) with swaks through the STARTTLS
/// listener on `port`, logged in as the config's demo account; returns the queue id.
async fn swaks_submission(port: u16, dir: &Path, message: &[u8]) -> String {
    let data = dir.join("swaks.eml");
    std::fs::write(&data, [message, b".\r\n"].concat()).unwrap();
    let server = format!("127.0.0.1:{port}");
    let data = data.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        let args = [
            "--server",
            &server,
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "demo",
            "--auth-password",
            "demo-password",
            "--from",
            "app@example.com",
            "--to",
            "someone@example.net",
            "--data",
            &data,
            "--no-data-fixup",
            "--timeout",
            "20",
        ];
        super::tool("swaks", &args, "Debian swaks")
    })
    .await
    .unwrap();
    let transcript = text(&out);
    assert!(out.status.success(), "swaks: {transcript}");
    let line = transcript
        .lines()
        .find(|l| l.contains("250 2.0.0 Ok: queued as "))
        .unwrap_or_else(|| panic!("{transcript}"));
    queue_id(line)
}

/// Sends `message` with lettre through the plain legacy listener on `port` (loopback is
/// one of its allowed networks); returns the queue id.
async fn lettre_legacy(port: u16, message: &[u8]) -> String {
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::None)
        .timeout(Some(STEP))
        .build();
    let reply = lettre_send(&transport, "app@example.com", &["x@example.net"], message)
        .await
        .unwrap();
    queue_id(&reply)
}

/// The demo upstream's `ID.eml` ends with exactly what the client sent after postern's
/// `Received:` field, and `ID.json` holds the envelope.
fn assert_delivered(mail: &Path, id: &str, sent: &[u8], sender: &str, recipient: &str) {
    let eml = std::fs::read(mail.join(format!("{id}.eml"))).unwrap();
    let prefix = split_prefix(&eml, sent);
    assert!(prefix.starts_with("Received: from "), "{prefix}");
    assert!(prefix.contains(&format!(" id {id}")), "{prefix}");
    let envelope = std::fs::read_to_string(mail.join(format!("{id}.json"))).unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&envelope).unwrap();
    assert_eq!(envelope["sender"], sender, "{envelope}");
    assert_eq!(envelope["recipients"], serde_json::json!([recipient]));
}

/// The container config, run: mail over STARTTLS + AUTH (swaks) and over the plain legacy
/// listener (lettre) reaches the directory upstream in the volume byte for byte (the
/// legacy one with the network's rewritten envelope sender); `postern healthcheck` exits 0
/// with `ready`, 1 with the reason while a `postern queue drain` holds it, 0 again after
/// `--resume`, and after the SIGTERM drain 1 at once with "cannot connect".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_config_takes_mail_and_healthcheck_follows_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [
        reserve_port(),
        reserve_port(),
        reserve_port(),
        reserve_port(),
    ];
    let config = container_config_on(dir.path(), ports);
    let mut postern = Postern::run(&config, &dir.path().join("postern.log"));
    for port in ports {
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &mut postern).await;
    }
    let readyz = format!("http://127.0.0.1:{}/readyz", ports[3]);
    let ok = healthcheck(&config, &[]).await;
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(text(&ok), format!("{readyz}: ready\n"));

    send_through_both_kinds_of_listener(dir.path(), ports).await;
    drain_and_resume(&config, &readyz).await;

    postern.sigterm();
    let status = postern.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "postern exited with {status}");
    let started = Instant::now();
    let gone = healthcheck(&config, &["--timeout", "20s"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a refusal is not a timeout"
    );
    assert_eq!(gone.status.code(), Some(1), "{}", text(&gone));
    let gone = text(&gone);
    assert!(
        gone.starts_with(&format!("postern: cannot connect to {readyz}: "))
            && gone.ends_with(", is postern running and is http.address set?\n")
            && gone.lines().count() == 1,
        "{gone}"
    );
}

/// One message with swaks over STARTTLS + AUTH, one with lettre over the legacy listener;
/// both arrive in the volume's `mail/` byte for byte.
async fn send_through_both_kinds_of_listener(dir: &Path, ports: [u16; 4]) {
    let state = dir.join("state");
    assert!(state.join("tls/cert.pem").is_file() && state.join("admin.token").is_file());
    let submitted = b"From: <app@example.com>\r\nTo: <someone@example.net>\r\n\
        Subject: container submission\r\n\r\nThrough STARTTLS and AUTH.\r\n"
        .to_vec();
    // lettre ends DATA with "\r\n.\r\n": the last line's CRLF is added by it.
    let legacy = b"From: scanner@localhost\r\nSubject: container legacy\r\n\r\n\
        Scanned page.\r\n.. a line that starts with dots"
        .to_vec();
    let first = swaks_submission(ports[0], dir, &submitted).await;
    let second = lettre_legacy(ports[2], &legacy).await;
    let mail = state.join("mail");
    let arrived = || {
        [&first, &second]
            .iter()
            .all(|id| mail.join(format!("{id}.eml")).exists())
    };
    eventually("both messages in the volume's mail/", arrived).await;
    assert_delivered(
        &mail,
        &first,
        &submitted,
        "app@example.com",
        "someone@example.net",
    );
    let legacy = [&legacy[..], b"\r\n"].concat();
    assert_delivered(
        &mail,
        &second,
        &legacy,
        "scans@example.com",
        "x@example.net",
    );
}

/// `postern queue drain` makes the health check fail with /readyz's reason; `--resume`
/// makes it pass again.
async fn drain_and_resume(config: &Path, readyz: &str) {
    let drained = run_cli(&["queue", "drain", "--deadline", "20s"], config.to_owned()).await;
    assert!(drained.status.success(), "{}", text(&drained));
    let draining = healthcheck(config, &[]).await;
    assert_eq!(draining.status.code(), Some(1), "{}", text(&draining));
    assert_eq!(
        text(&draining),
        format!(
            "postern: {readyz}: not ready: draining: queue drain in progress \
             (postern queue drain), not taking new sessions\n"
        )
    );
    let resumed = run_cli(&["queue", "drain", "--resume"], config.to_owned()).await;
    assert!(resumed.status.success(), "{}", text(&resumed));
    let again = healthcheck(config, &[]).await;
    assert!(again.status.success(), "{}", text(&again));
}

/// A server that accepts and never answers: `--timeout` ends the check, with one line
/// saying so. A config without `http:` has nothing to ask, and says what to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_gives_up_on_silence_and_names_a_missing_http_section() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    // Holds (at most 4) accepted connections open without a word until the test ends.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < 4 {
            held.push(silent.accept().await.unwrap());
        }
        std::future::pending::<()>().await;
    });
    let dir = tempfile::tempdir().unwrap();
    let no_http = legacy_config(dir.path(), reserve_port(), reserve_port(), "");

    let url = format!("http://127.0.0.1:{port}");
    let out = healthcheck(&no_http, &["--url", &url, "--timeout", "500ms"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        text(&out),
        format!("postern: no answer from {url}/readyz within 500ms\n")
    );

    let out = healthcheck(&no_http, &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.starts_with(&format!("postern: {}: no http: section", no_http.display()))
            && said.contains("set http.address")
            && said.lines().count() == 1,
        "{said}"
    );
    holder.abort();
}
