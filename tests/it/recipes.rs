//! The recipes in `config/examples/` (issue 10, section 4; docs/recipes.md): each passes
//! `postern check-config` once the files it names exist, as an admin would run it after
//! putting their certificate and secrets in place.
//!
//! A recipe names its files under `/etc/postern/` (certificates, keys, secrets) and its
//! state under `/var/lib/postern/`. The test moves both into a scratch root and fills each
//! file named under `/etc/postern/` with a fixture of the right kind, chosen by the config
//! key that names it, so a recipe that adds a key or a file is covered without a change here.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

use crate::binary::BIN;
use crate::harness::tools::{repo, text};

/// The recipes the issue asks for; others in the directory are checked as well.
const RECIPES: [&str; 6] = [
    "printer-m365-oauth2.yaml",
    "printer-google-workspace.yaml",
    "app-ses.yaml",
    "app-sendgrid.yaml",
    "gateway-failover.yaml",
    "cluster-haproxy-redis.yaml",
];

const ETC: &str = "/etc/postern/";
const STATE: &str = "/var/lib/postern/";

/// Every `(key, value)` pair of the document whose value is a string, at any depth.
fn string_values(value: &Value, key: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => out.push((key.to_owned(), s.clone())),
        Value::Sequence(items) => items.iter().for_each(|v| string_values(v, key, out)),
        Value::Mapping(map) => {
            for (k, v) in map {
                string_values(v, k.as_str().unwrap_or_default(), out);
            }
        }
        Value::Tagged(tagged) => string_values(&tagged.value, key, out),
        _ => {}
    }
}

/// The fixture a file named by `key` is made from.
fn fixture_for(key: &str, path: &str) -> PathBuf {
    let fixtures = repo("tests/configs/fixtures");
    let name = match key {
        "certificate" => "cert.pem",
        "private_key" => "key.pem",
        "ca_file" => "cert.pem",
        "client_certificate" => "oauth-cert.pem",
        "client_key" => "oauth-key.pem",
        "refresh_token_file" => "oauth-refresh.token",
        "client_secret_file" => "oauth-client.secret",
        "password_file" => "upstream.secret",
        _ => panic!("no fixture for {key}: {path} (add one to tests/it/recipes.rs)"),
    };
    fixtures.join(name)
}

/// The recipe with its paths moved under `root`, and the files it names under
/// `/etc/postern/` created there.
fn staged(recipe: &Path, root: &Path) -> PathBuf {
    let text = std::fs::read_to_string(recipe).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let mut strings = Vec::new();
    string_values(&doc, "", &mut strings);
    for (key, path) in strings.iter().filter(|(_, p)| p.starts_with(ETC)) {
        let to = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fixture_for(key, path), &to).unwrap();
    }
    let etc = root.join(ETC.trim_start_matches('/'));
    let state = root.join(STATE.trim_start_matches('/'));
    let moved = text
        .replace(ETC, &format!("{}/", etc.display()))
        .replace(STATE, &format!("{}/", state.display()));
    let config = root.join("postern.yaml");
    std::fs::write(&config, moved).unwrap();
    config
}

fn check_config(config: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

fn recipes() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo("config/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    found.sort();
    found
}

#[test]
fn every_recipe_the_issue_names_is_there() {
    let found = recipes();
    for name in RECIPES {
        assert!(
            found.iter().any(|p| p.ends_with(name)),
            "config/examples/{name} is missing: {found:?}"
        );
    }
}

#[test]
fn every_recipe_passes_check_config_with_its_files_in_place() {
    for recipe in recipes() {
        let root = tempfile::tempdir().unwrap();
        let config = staged(&recipe, root.path());
        let (ok, out) = check_config(&config);
        assert!(ok, "{}: {out}", recipe.display());
        assert!(out.ends_with(": OK\n"), "{}: {out}", recipe.display());
    }
}

/// Without its files, a recipe is refused with a line naming the key and the missing file,
/// which is how an admin learns what to put in place.
#[test]
fn a_recipe_without_its_files_names_the_first_missing_one() {
    let recipe = repo("config/examples/printer-m365-oauth2.yaml");
    let root = tempfile::tempdir().unwrap();
    let config = staged(&recipe, root.path());
    let cert = root.path().join("etc/postern/tls/fullchain.pem");
    std::fs::remove_file(&cert).unwrap();
    let (ok, out) = check_config(&config);
    assert!(!ok, "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("tls.certificate: cannot read") && out.contains("does not exist"),
        "{out}"
    );
}

/// The headline recipe, run: `printer-m365-oauth2.yaml` as shipped but for where things are
/// (its listeners on loopback ports, the printers' VLAN as loopback, Microsoft 365 as a TLS
/// sink requiring XOAUTH2 with a token from a real token endpoint on loopback, which checks
/// the client assertion signed with the app's certificate). A printer's plain SMTP message
/// on the port-25 listener leaves as the mailbox, logged in with OAuth2, with the device's
/// own address kept in `Reply-To:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printer_to_microsoft_365_recipe_delivers() {
    use crate::binary::{Postern, wait_listening};
    use crate::harness::ca::TestCa;
    use crate::harness::client::Dialog;
    use crate::harness::sink::{Sink, SinkOAuth, SinkOptions, reserve_port};
    use crate::harness::token::{Credential, TokenEndpoint};
    use crate::harness::{DELIVERY, send_mail};

    const MAILBOX: &str = "scanner@corp.example";
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new(root.path());
    let endpoint = TokenEndpoint::start(
        Credential::Certificate,
        false,
        "https://outlook.office365.com/.default",
        3600,
    )
    .await;
    let sink = Sink::start(SinkOptions {
        starttls: Some(ca.server_config()),
        require_tls: true,
        oauth: Some(SinkOAuth::new(MAILBOX, &["XOAUTH2"], endpoint.tokens())),
        ..SinkOptions::default()
    })
    .await;

    let config = staged(
        &repo("config/examples/printer-m365-oauth2.yaml"),
        root.path(),
    );
    let (printers, submissions, http) = (reserve_port(), reserve_port(), reserve_port());
    let upstream = format!(
        "\"127.0.0.1:{}\"\n    ca_file: {}\n    server_name: localhost",
        sink.port(),
        ca.ca_file.display()
    );
    let moves = [
        (
            "\"0.0.0.0:25\"".to_owned(),
            format!("\"127.0.0.1:{printers}\""),
        ),
        (
            "\"[::]:465\"".to_owned(),
            format!("\"127.0.0.1:{submissions}\""),
        ),
        (
            "\"127.0.0.1:9587\"".to_owned(),
            format!("\"127.0.0.1:{http}\""),
        ),
        ("10.20.30.0/24".to_owned(), "127.0.0.0/8".to_owned()),
        ("\"smtp.office365.com:587\"".to_owned(), upstream),
        (
            "client_id: 11111111-1111-1111-1111-111111111111".to_owned(),
            format!(
                "client_id: {}\n        token_url: {}",
                crate::harness::token::CLIENT_ID,
                endpoint.url()
            ),
        ),
    ];
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    for (from, to) in &moves {
        assert!(
            yaml.contains(from.as_str()),
            "the recipe no longer has {from}"
        );
        yaml = yaml.replace(from.as_str(), to);
    }
    std::fs::write(&config, yaml).unwrap();

    let addr = format!("127.0.0.1:{printers}").parse().unwrap();
    let mut relay = Postern::run(&config, &root.path().join("postern.log"));
    wait_listening(addr, &mut relay).await;
    let mut printer = Dialog::connect(addr).await;
    printer.cmd("EHLO mfp-3f.corp.example", "250").await;
    let body = "Scanned page 1 of 1.\r\n";
    let data = format!(
        "From: MFP 3rd floor <mfp-3f@printer.invalid>\r\nTo: alice@corp.example\r\nSubject: Scan\r\n\r\n{body}"
    );
    send_mail(
        &mut printer,
        "mfp-3f@printer.invalid",
        &["alice@corp.example"],
        data.as_bytes(),
    )
    .await;
    printer.cmd("QUIT", "221").await;

    let got = sink.wait_for(DELIVERY, |m| !m.is_empty()).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert!(m.tls, "delivered without TLS");
    assert_eq!(m.auth.as_deref(), Some(MAILBOX));
    assert_eq!(m.mail_from, MAILBOX);
    assert_eq!(m.rcpt_to, ["alice@corp.example"]);
    let text = m.text();
    assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"From: MFP 3rd floor <scanner@corp.example>"),
        "{text}"
    );
    assert!(
        lines.contains(&"Reply-To: MFP 3rd floor <mfp-3f@printer.invalid>"),
        "{text}"
    );
    assert!(
        endpoint.violations().is_empty(),
        "{:?}",
        endpoint.violations()
    );
    let grants: Vec<String> = endpoint
        .requests()
        .iter()
        .map(|r| r.grant.clone())
        .collect();
    assert_eq!(grants, ["client_credentials"]);
}
