//! The configs the repository ships, used as an admin would: the default config that the
//! README's first command runs, and the production example in `deploy/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::binary::{Postern, wait_listening};
use crate::harness::http::{Scrape, get};
use crate::harness::sink::reserve_port;

const BIN: &str = env!("CARGO_BIN_EXE_postern");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs one of the README's swaks commands (with `port` for the documented one) and returns
/// its transcript; fails the test if swaks does not exit 0.
fn swaks(args: &[&str]) -> String {
    let out = Command::new("swaks")
        .args(args)
        .args(["--timeout", "20"])
        .output()
        .unwrap_or_else(|e| panic!("swaks is needed for this test (apt-get install swaks): {e}"));
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "swaks {args:?} failed: {}\n{transcript}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    transcript
}

/// README, "The two commands": `config/postern.yaml` as shipped (only its three ports moved
/// to free ones) makes its self-signed certificate on first start, takes the README's swaks
/// commands on each listener with the demo account, writes each message to `var/mail/` with
/// its envelope, and drains on SIGTERM with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_config_works_as_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    let ports = [reserve_port(), reserve_port(), reserve_port()];
    let metrics_port = reserve_port();
    let config = config_dir.join("postern.yaml");
    std::fs::write(&config, shipped_on(ports, metrics_port)).unwrap();

    let mut postern = Postern::run(&config, &dir.path().join("postern.log"));
    for port in ports {
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &mut postern).await;
    }
    let var = dir.path().join("var");
    assert!(var.join("tls/cert.pem").is_file() && var.join("tls/key.pem").is_file());

    let [submission, submissions, legacy] = ports.map(|p| format!("127.0.0.1:{p}"));
    let auth = ["--auth-user", "demo", "--auth-password", "demo-password"];
    let envelope = ["--from", "app@example.com", "--to", "someone@example.net"];
    let runs = tokio::task::spawn_blocking(move || {
        let tls = [
            &["--server", &submission, "--tls", "--auth", "LOGIN"][..],
            &auth,
            &envelope,
        ];
        let tlsc = [
            &["--server", &submissions, "--tlsc", "--auth", "PLAIN"][..],
            &auth,
            &envelope,
        ];
        [
            swaks(&tls.concat()),
            swaks(&tlsc.concat()),
            swaks(&[
                "--server",
                &legacy,
                "--from",
                "scanner@localhost",
                "--to",
                "someone@example.net",
            ]),
        ]
    })
    .await
    .unwrap();
    let ids: Vec<String> = runs
        .iter()
        .map(|t| {
            let (_, rest) = t.split_once("250 2.0.0 Ok: queued as ").unwrap();
            rest.split_whitespace().next().unwrap().to_owned()
        })
        .collect();

    // Delivery to the directory upstream is asynchronous: wait (bounded) for all three.
    // The `.eml` is renamed into place last: once it is there, so is its `.json`.
    let mail = var.join("mail");
    let arrived = || ids.iter().all(|id| mail.join(format!("{id}.eml")).exists());
    crate::harness::eventually("all three in var/mail", arrived).await;
    let envelopes: Vec<String> = ids
        .iter()
        .map(|id| std::fs::read_to_string(mail.join(format!("{id}.json"))).unwrap())
        .collect();
    let senders: Vec<String> = envelopes
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            assert_eq!(v["recipients"], serde_json::json!(["someone@example.net"]));
            v["sender"].as_str().unwrap().to_owned()
        })
        .collect();
    // The printer case: the legacy listener's device sender is rewritten.
    assert_eq!(
        senders,
        ["app@example.com", "app@example.com", "scans@example.com"]
    );
    for id in &ids {
        let eml = std::fs::read(mail.join(format!("{id}.eml"))).unwrap();
        assert!(eml.starts_with(b"Received: from "), "{id}.eml");
        assert!(String::from_utf8_lossy(&eml).contains(&format!(" id {id}")));
    }

    assert_scraped(SocketAddr::from(([127, 0, 0, 1], metrics_port))).await;
    let token = assert_admin_api(&config, &var).await;

    postern.sigterm();
    let status = postern.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "postern exited with {status}");
    assert_no_password(&dir.path().join("postern.log"), &token);
}

/// The admin API is on with a token generated on first start (mode 0600, never logged):
/// `postern queue list` answers through it with the empty queue.
async fn assert_admin_api(config: &Path, var: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let file = var.join("admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token mode");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64, "{token}");
    let out = crate::harness::admin::run_cli(&["queue", "list", "--json"], config.to_owned()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["messages"], serde_json::json!([]));
    assert_eq!(
        body["draining"], false,
        "answered by the running relay: {body}"
    );
    token
}

/// `config/postern.yaml` with its three listener ports and its metrics port moved to free
/// ones (each must still be where the README says).
fn shipped_on(ports: [u16; 3], metrics_port: u16) -> String {
    let mut yaml = std::fs::read_to_string(repo("config/postern.yaml")).unwrap();
    let moves = ["2587", "2465", "2525", "9587"]
        .into_iter()
        .zip(ports.into_iter().chain([metrics_port]));
    for (documented, port) in moves {
        let from = format!("127.0.0.1:{documented}");
        assert!(
            yaml.contains(&from),
            "config/postern.yaml no longer listens on {from}"
        );
        yaml = yaml.replace(&from, &format!("127.0.0.1:{port}"));
    }
    yaml
}

/// The README's scrape: the three messages are counted, and the relay is ready.
async fn assert_scraped(http: SocketAddr) {
    assert_eq!(get(http, "/readyz").await, (200, "ready\n".to_owned()));
    let scrape = Scrape::from(http).await;
    // One message through each listener, each counted on its own.
    for listener in ["submission", "submissions", "legacy"] {
        let series = format!("postern_messages_accepted_total{{listener=\"{listener}\"}}");
        assert_eq!(scrape.get(&series), 1.0, "{series}");
    }
}

/// The demo password went over the wire three times, never into the log (nor its AUTH
/// LOGIN and PLAIN encodings).
fn assert_no_password(log: &Path, admin_token: &str) {
    let log = std::fs::read_to_string(log).unwrap();
    for secret in [
        admin_token,
        "demo-password",
        "ZGVtby1wYXNzd29yZA==",
        "AGRlbW8AZGVtby1wYXNzd29yZA==",
    ] {
        assert!(!log.contains(secret), "the log carries {secret}:\n{log}");
    }
}

/// `deploy/postern.yaml`, with its absolute paths pointed at the test fixtures, passes
/// `postern check-config`: the production example in the repository is never broken.
#[test]
fn deploy_example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = repo("tests/configs/fixtures");
    let example = std::fs::read_to_string(repo("deploy/postern.yaml")).unwrap();
    let replacements = [
        ("/etc/postern/tls/fullchain.pem", fixtures.join("cert.pem")),
        ("/etc/postern/tls/privkey.pem", fixtures.join("key.pem")),
        ("/etc/postern/m365.secret", fixtures.join("upstream.secret")),
        ("/var/lib/postern/spool", dir.path().join("spool")),
    ];
    let mut yaml = example;
    for (from, to) in &replacements {
        assert!(
            yaml.contains(from),
            "deploy/postern.yaml no longer uses {from}"
        );
        yaml = yaml.replace(from, &to.display().to_string());
    }
    let config = dir.path().join("postern.yaml");
    std::fs::write(&config, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/postern.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
