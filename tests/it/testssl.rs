//! The TLS listeners pass testssl.sh (issue 9, section 4): `deploy/testssl/scan.sh` scans
//! the STARTTLS and the implicit-TLS listener of a running postern and exits 0 only when
//! no finding about protocols, ciphers, cipher order, forward secrecy or vulnerabilities is
//! above OK/INFO. The test certificate comes from a private CA, so the certificate findings
//! (untrusted chain, no OCSP URI) are reported by the script and do not fail it.
//!
//! About a minute and a half on loopback (each listener ~40 s; before postern sent its
//! no_renegotiation answer at once, testssl's renegotiation check could wait out
//! `timeouts.command`, five minutes, on either listener).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{Opts, TestServer};

/// Longest the two scans may take together: they take about 90 s on an idle machine.
const SCAN_LIMIT: Duration = Duration::from_secs(600);

/// The protocol findings of one listener's scan: (id, finding) pairs.
fn protocols(json: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(json).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["scanResult"][0]["protocols"]
        .as_array()
        .unwrap_or_else(|| panic!("no protocols section in {}", json.display()))
        .iter()
        .map(|f| {
            let field = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
            (field("id"), field("finding"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_tls_listeners_pass_testssl() {
    let server = TestServer::start(Opts::default()).await;
    let scan_dir: PathBuf = server.dir.path().join("testssl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/testssl/scan.sh");
    let mut cmd = Command::new(script);
    cmd.arg(server.submission.to_string())
        .arg(server.submissions.to_string())
        .env("SCAN_DIR", &scan_dir);
    let run = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    let out: Output = tokio::time::timeout(SCAN_LIMIT, run)
        .await
        .expect("the testssl scan did not finish within 10 minutes")
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{report}");
    assert!(out.status.success(), "testssl found problems:\n{report}");
    for listener in ["starttls", "implicit"] {
        assert!(
            report.contains(&format!("{listener} (127.0.0.1:")) && report.contains("pass ("),
            "no verdict for {listener}:\n{report}"
        );
        let found = protocols(&scan_dir.join(format!("{listener}.json")));
        let finding = |id: &str| {
            found
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, f)| f.as_str())
                .unwrap_or_else(|| panic!("{listener}: no {id} finding in {found:?}"))
        };
        for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
            assert_eq!(finding(old), "not offered", "{listener}: {old}");
        }
        assert_eq!(finding("TLS1_2"), "offered", "{listener}");
        assert!(
            finding("TLS1_3").starts_with("offered"),
            "{listener}: TLS1_3 {:?}",
            finding("TLS1_3")
        );
    }
}

/// One finding as testssl writes it.
fn finding(id: &str, severity: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "severity": severity, "finding": text})
}

/// A testssl `--jsonfile-pretty` document with every judged section, all passing, and a
/// certificate finding that is only reported; `fs` names the forward-secrecy section
/// (testssl 3.0 writes `pfs`, 3.2 `fs`).
fn clean_scan(fs: &str) -> serde_json::Value {
    let protocols: Vec<_> = [
        ("SSLv2", "not offered"),
        ("SSLv3", "not offered"),
        ("TLS1", "not offered"),
        ("TLS1_1", "not offered"),
        ("TLS1_2", "offered"),
        ("TLS1_3", "offered with final"),
    ]
    .iter()
    .map(|(id, text)| finding(id, "OK", text))
    .collect();
    let mut result = serde_json::json!({
        "protocols": protocols,
        "ciphers": [finding("cipherlist_NULL", "OK", "not offered")],
        "serverPreferences": [finding("cipher_order", "OK", "server")],
        "vulnerabilities": [finding("heartbleed", "OK", "not vulnerable")],
        "cipherTests": [finding("cipher-tls1_2_xc02c", "INFO", "TLSv1.2 xc02c")],
        "serverDefaults": [finding("cert_chain_of_trust", "CRITICAL", "failed (self signed)")],
    });
    result[fs] = serde_json::json!([finding("FS", "OK", "offered")]);
    serde_json::json!({"scanResult": [result]})
}

/// Runs `verdict.py` on `doc`: its exit code and output.
fn verdict(dir: &Path, doc: &serde_json::Value) -> (i32, String) {
    let file = dir.join("scan.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/testssl/verdict.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("listener")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap(), text)
}

/// The verdict fails on a HIGH vulnerability finding and on TLS 1.0 offered (even marked
/// INFO), and on a scan missing a judged section; it passes a clean scan from testssl 3.0
/// or 3.2 with a certificate finding, which it only reports.
#[test]
fn verdict_fails_on_findings_and_passes_a_clean_scan() {
    let dir = tempfile::tempdir().unwrap();
    for fs in ["pfs", "fs"] {
        let (code, text) = verdict(dir.path(), &clean_scan(fs));
        assert_eq!(code, 0, "{text}");
        assert!(
            text.contains("reported, not failing: serverDefaults: cert_chain_of_trust"),
            "{text}"
        );
    }
    let mut bad = clean_scan("fs");
    bad["scanResult"][0]["vulnerabilities"][0] = finding("heartbleed", "HIGH", "VULNERABLE");
    bad["scanResult"][0]["protocols"][2] = finding("TLS1", "INFO", "offered");
    let (code, text) = verdict(dir.path(), &bad);
    assert_eq!(code, 1, "{text}");
    for line in [
        "listener: FAIL: vulnerabilities: heartbleed [HIGH] VULNERABLE",
        "listener: FAIL: protocols: TLS1 'offered', expected not offered",
        "listener: FAIL (2 failing, 1 reported)",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    let mut partial = clean_scan("fs");
    partial["scanResult"][0]
        .as_object_mut()
        .unwrap()
        .remove("vulnerabilities");
    let (code, text) = verdict(dir.path(), &partial);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("section vulnerabilities is missing"),
        "{text}"
    );
}
