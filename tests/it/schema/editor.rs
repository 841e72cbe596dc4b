//! config/postern.yaml in an editor: yaml-language-server (VS Code's YAML extension, and the
//! YAML language server of Neovim, Helix, Emacs, ...) finds the schema through the file's
//! `# yaml-language-server: $schema=postern.schema.json` modeline, finds nothing wrong with
//! the shipped file nor in a valid config written in odd forms (anchors and merge keys, null
//! sections, bracketed IPv6, ...), flags a typo, a bad address and a bad duration with the
//! schema's messages, completes a listener's keys and shows a key's description on hover.

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::repo;

/// The script that drives the language server (see its header).
const SCRIPT: &str = include_str!("editor.js");

/// npm's global root, where .ci/tools.sh installs yaml-language-server.
fn npm_root() -> String {
    let out = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .unwrap_or_else(|e| panic!("npm (Debian package npm) must be installed: {e}"));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The longest the language server may take (it answers in about a second).
const NODE_DEADLINE: Duration = Duration::from_secs(90);

/// Runs `command` with its output in files under `dir`, waiting at most [`NODE_DEADLINE`]
/// (polled in bounded steps); a process still running then is killed and the test fails.
fn run_bounded(mut command: Command, dir: &Path) -> (ExitStatus, Vec<u8>, String) {
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("node (Debian package nodejs) must be installed: {e}"));
    let step = Duration::from_millis(50);
    let mut status = None;
    for _ in 0..NODE_DEADLINE.as_millis() / step.as_millis() {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(step);
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("node editor.js still running after {NODE_DEADLINE:?}: killed");
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status, std::fs::read(&out_path).unwrap(), stderr)
}

/// A config postern reads (with the test fixtures as its files) in forms
/// an editor must not flag: an anchor and a merge key, flow mappings, bracketed IPv6
/// addresses, empty (null) sections and lists, decimal sizes, week and millisecond durations,
/// a bare number of seconds, rate limits of each quantity, OAuth2 with a client certificate.
const ODD_BUT_VALID: &str = "# yaml-language-server: $schema=postern.schema.json
listeners:
  - &submission
    name: submission
    address: \"[::]:587\"
    tls: starttls
  - <<: *submission
    name: smtps
    address: \"0.0.0.0:465\"
    tls: implicit
  - {name: local, address: \"[::1]:2525\", tls: none, auth: none, allow_networks: [\"::1/128\"]}
tls: {certificate: cert.pem, private_key: key.pem}
users:
networks:
limits:
  max_message_size: 1GB
  max_header_size: 64kB
timeouts: {command: 1w, data: 3m, tls_handshake: 30}
smtp:
rate_limits:
  - {per: ip, messages: 100, interval: 1h}
  - {per: user, recipients: 1000, interval: 1d, burst: 10}
  - {per: listener, connections: 20, interval: 1m}
queue: {directory: spool, delay_warning: 4h}
upstreams:
  - name: m365
    address: smtp.office365.com:587
    connect_timeout: 1500ms
    auth:
      username: printer@example.com
      oauth2: {provider: microsoft, tenant: example.com, client_id: c, client_certificate: oauth-cert.pem, client_key: oauth-key.pem}
routes:
";

/// Runs editor.js on config/postern.yaml, `broken` and [`ODD_BUT_VALID`] (sibling files'
/// texts); its report.
fn editor_report(broken: &str) -> Value {
    let root = npm_root();
    assert!(
        std::path::Path::new(&root)
            .join("yaml-language-server")
            .is_dir(),
        "yaml-language-server must be installed: npm install -g yaml-language-server@1.25.0 \
         (as .ci/tools.sh does; .ci/test runs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("editor.js");
    std::fs::write(&script, SCRIPT).unwrap();
    let mut node = Command::new("node");
    node.arg(&script)
        .arg(repo("config/postern.yaml"))
        .arg(broken)
        .arg(ODD_BUT_VALID)
        .env("NODE_PATH", &root);
    let (status, stdout, stderr) = run_bounded(node, dir.path());
    assert!(status.success(), "node editor.js: {status}\n{stderr}");
    serde_json::from_slice(&stdout).unwrap()
}

#[test]
fn editors_validate_and_complete_the_shipped_config() {
    let broken = "# yaml-language-server: $schema=postern.schema.json\n\
                  listeners:\n  - {name: a, address: \"127.0.0.1:99999\", tsl: none}\n\
                  queue: {directory: spool, max_age: 3 fortnights, bounces: never}\n\
                  upstreams: [{name: out, directory: out}]\n";
    let report = editor_report(broken);

    // The modeline led it to the committed schema, next to the config.
    let schema_uri = format!("file://{}", repo("config/postern.schema.json").display());
    assert!(
        report["fetched"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == &schema_uri[..]),
        "{report}"
    );
    assert_eq!(report["shipped"], serde_json::json!([]), "{report}");
    // The odd forms: the loader reads them, and neither the editor nor jsonschema flags them.
    // (Its files are the test fixtures, read from their directory.)
    let beside_fixtures = repo("tests/configs/fixtures/postern.yaml");
    postern::config::load::load_str(ODD_BUT_VALID, &beside_fixtures).unwrap();
    super::assert_valid(&super::validator(), ODD_BUT_VALID, "ODD_BUT_VALID");
    assert_eq!(report["odd"], serde_json::json!([]), "{report}");
    let messages: Vec<(u64, &str)> = report["broken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["line"].as_u64().unwrap(), d["message"].as_str().unwrap()))
        .collect();
    for want in [
        (3, "expected IP:port such as 0.0.0.0:25 or [::]:587"),
        (3, "Property tsl is not allowed."),
        (
            4,
            "expected a number with a unit: ms, s, m, h, d or w (e.g. 30s, 5m, 3d)",
        ),
    ] {
        assert!(messages.contains(&want), "{want:?} not in {messages:?}");
    }
    assert!(
        messages
            .iter()
            .any(|(line, m)| *line == 4 && m.contains("\"both\"")),
        "the bad queue.bounces value is flagged: {messages:?}"
    );
    assert_eq!(messages.len(), 4, "{messages:?}");
    completion_and_hover(&report);
}

/// On a new line in the first listener, the listener keys it does not set yet are offered;
/// hovering over `max_age` shows its description.
fn completion_and_hover(report: &Value) {
    // On a new line in the first listener: the listener keys it does not set yet.
    let offered: Vec<&str> = report["completion"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for key in [
        "allow_networks",
        "max_connections",
        "proxy_protocol",
        "sender_check",
        "sni",
    ] {
        assert!(offered.contains(&key), "{key} not offered: {offered:?}");
    }
    for set in ["name", "address", "tls", "auth"] {
        assert!(!offered.contains(&set), "{set} is already set: {offered:?}");
    }
    let hover = report["hover"].as_str().unwrap();
    assert!(
        hover.contains("Give up on a message this long after it was accepted"),
        "{hover}"
    );
}
