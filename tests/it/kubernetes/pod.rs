//! The pod as the rendered StatefulSet describes it, laid out in a scratch directory: the
//! projected `etc` volume as the kubelet writes one (the files in a timestamped directory,
//! `..data` a symlink to it, each top-level entry a symlink through `..data`), carrying the
//! rendered ConfigMap and the example Secrets with a real self-signed certificate for
//! `hostname` in place of the example's placeholder, and an empty spool volume, with the
//! container's own paths moved under the scratch root. The config passes `postern
//! check-config` there; then it runs, on loopback ports (and with the certificate checked
//! every 100 ms instead of every minute), with the container's own `args`: the probes
//! answer on the paths and port they name; a renewed `postern-tls`, swapped in the way the
//! kubelet does (a new directory, `..data` renamed over), is picked up without a restart;
//! the preStop command (run as the kubelet would, with the binary under test) drains and
//! exits 0, `/readyz` then fails with `draining`, and SIGTERM stops postern with 0.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::binary::{BIN, Postern, wait_listening};
use crate::harness::http::{self, Scrape};
use crate::harness::sink::reserve_port;

use super::render::{self, CONFIG_PATH, IMAGE_BIN, Rendered, run, text};

/// A path of the container, under `root`.
fn host(root: &Path, path: &str) -> String {
    format!("{}{path}", root.display())
}

/// The kubelet's directory of one version of a projected volume's files.
const FIRST: &str = "..2026_01_01_00_00_00.000000001";
/// And of the next one (a Secret updated).
const SECOND: &str = "..2026_01_01_01_00_00.000000002";

/// A self-signed certificate for `hostname` valid until `year`: (cert PEM, key PEM).
fn certificate(hostname: &str, year: i32) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes the pod's files under `root`, the `etc` volume as the kubelet lays a projected
/// volume out (its certificate valid until 2030); returns the config text with the
/// container's paths moved under `root`.
fn materialize(r: &Rendered, root: &Path) -> String {
    let etc = host(root, &r.mount("etc"));
    let hostname = r.config()["hostname"].as_str().unwrap().to_owned();
    let (cert, key_pem) = certificate(&hostname, 2030);
    let mut top = std::collections::BTreeSet::new();
    for (path, (kind, name, key)) in r.projection() {
        let content = match kind {
            "ConfigMap" => r.config_text(),
            _ if r.example_secret(&name)["type"] == "kubernetes.io/tls" => match key.as_str() {
                "tls.crt" => cert.clone(),
                "tls.key" => key_pem.clone(),
                other => panic!("{}: {name} has no key {other}", r.name),
            },
            _ => r.example_value(&name, &key).unwrap_or_else(|| {
                panic!("{}: the example Secret {name} has no key {key}", r.name)
            }),
        };
        let file = Path::new(&etc).join(FIRST).join(&path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, content).unwrap();
        top.insert(path.split('/').next().unwrap().to_owned());
    }
    std::os::unix::fs::symlink(FIRST, Path::new(&etc).join("..data")).unwrap();
    for entry in top {
        let link = Path::new(&etc).join(&entry);
        std::os::unix::fs::symlink(format!("..data/{entry}"), link).unwrap();
    }
    let spool = r.mount("postern-spool");
    std::fs::create_dir_all(host(root, &spool)).unwrap();
    let etc = r.mount("etc");
    r.config_text()
        .replace(&format!("{etc}/"), &host(root, &format!("{etc}/")))
        .replace(&format!("{spool}/"), &host(root, &format!("{spool}/")))
}

/// Renews the certificate as the kubelet applies an updated Secret: every file written to
/// a new directory, `..data` renamed over to point at it, the old directory removed.
/// Returns the new certificate's notAfter (2031) in seconds.
fn renew(r: &Rendered, root: &Path) -> f64 {
    let etc = Path::new(&host(root, &r.mount("etc"))).to_owned();
    let hostname = r.config()["hostname"].as_str().unwrap().to_owned();
    let (cert, key_pem) = certificate(&hostname, 2031);
    for (path, (kind, name, key)) in r.projection() {
        let file = etc.join(SECOND).join(&path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let tls = kind == "Secret" && r.example_secret(&name)["type"] == "kubernetes.io/tls";
        match (tls, key.as_str()) {
            (true, "tls.crt") => std::fs::write(&file, &cert).unwrap(),
            (true, _) => std::fs::write(&file, &key_pem).unwrap(),
            (false, _) => {
                std::fs::copy(etc.join(FIRST).join(&path), &file).unwrap();
            }
        }
    }
    std::os::unix::fs::symlink(SECOND, etc.join("..data_tmp")).unwrap();
    std::fs::rename(etc.join("..data_tmp"), etc.join("..data")).unwrap();
    std::fs::remove_dir_all(etc.join(FIRST)).unwrap();
    1_924_992_000.0 // 2031-01-01T00:00:00Z
}

/// A command of the container (binary and arguments) as run here: the image's binary is
/// the one under test, and the container's paths are under `root`.
fn local_command(command: &[String], root: &Path) -> (String, Vec<String>) {
    assert_eq!(command[0], IMAGE_BIN);
    let args = command[1..]
        .iter()
        .map(
            |a| match a.starts_with("/etc/postern") || a.starts_with("/var/lib/postern") {
                true => host(root, a),
                false => a.clone(),
            },
        )
        .collect();
    (BIN.to_owned(), args)
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The config with every listener and `http` on a free loopback port, and Redis (if any)
/// at a loopback port where nothing answers (postern starts and serves without it).
/// Returns the text and the `http` address.
fn on_loopback(r: &Rendered, mut text: String) -> (String, SocketAddr) {
    let config = r.config();
    for listener in config["listeners"].as_array().unwrap() {
        let address = listener["address"].as_str().unwrap();
        let new = format!("127.0.0.1:{}", reserve_port());
        text = text.replace(&format!("\"{address}\""), &format!("\"{new}\""));
    }
    let http_address = config["http"]["address"].as_str().unwrap();
    let http = SocketAddr::from(([127, 0, 0, 1], reserve_port()));
    text = text.replace(&format!("\"{http_address}\""), &format!("\"{http}\""));
    if let Some(url) = config["redis"]["url"].as_str() {
        let local = format!("redis://127.0.0.1:{}/0", reserve_port());
        text = text.replace(&format!("\"{url}\""), &format!("\"{local}\""));
    }
    assert!(
        !text.contains("\"0.0.0.0:"),
        "{}: an address was not moved",
        r.name
    );
    (text, http)
}

/// The expiry postern reports for the certificate `tls`.
const EXPIRY: &str = r#"postern_tls_certificate_expiry_timestamp_seconds{certificate="tls"}"#;

/// Lays the pod out under `root`, checks its config and starts postern as the container
/// would (on loopback); returns it with its `http` address.
async fn start_pod(r: &Rendered, root: &Path) -> (Postern, SocketAddr) {
    let config_file = host(root, CONFIG_PATH);
    std::fs::write(&config_file, materialize(r, root)).unwrap();
    let out = run(
        BIN,
        &["check-config", "--config", &config_file],
        "cargo build",
    );
    assert!(
        out.status.success(),
        "{}: check-config: {}",
        r.name,
        text(&out)
    );

    let (loopback, http) = on_loopback(r, std::fs::read_to_string(&config_file).unwrap());
    // The kubelet's Secret updates are seen every 100 ms instead of every minute.
    let loopback = loopback.replacen("\ntls:\n", "\ntls:\n  check_interval: 100ms\n", 1);
    assert!(loopback.contains("check_interval: 100ms"), "{}", r.name);
    std::fs::write(&config_file, loopback).unwrap();
    let c = r.container();
    let mut command = strings(&c["command"]);
    command.extend(strings(&c["args"]));
    let (bin, args) = local_command(&command, root);
    let log = std::fs::File::create(root.join("postern.log")).unwrap();
    let child = std::process::Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut postern = Postern::from_child(child);
    wait_listening(http, &mut postern).await;
    (postern, http)
}

/// A renewed `postern-tls`, as the kubelet swaps it in, is what postern reports within
/// 10 s (polled every 100 ms).
async fn renewal_is_picked_up(r: &Rendered, root: &Path, http: SocketAddr) {
    let before = Scrape::from(http).await.get(EXPIRY);
    assert_eq!(before, 1_893_456_000.0, "{}: 2030-01-01", r.name);
    let renewed = renew(r, root);
    for _ in 0..100 {
        if Scrape::from(http).await.get(EXPIRY) == renewed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{}: the renewed certificate was not picked up", r.name);
}

async fn run_pod(r: &Rendered) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut postern, http) = start_pod(r, root).await;
    let c = r.container();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        let (status, body) = http::get(http, path).await;
        assert_eq!(status, 200, "{}: {probe} {path}: {body}", r.name);
    }
    renewal_is_picked_up(r, root, http).await;

    let (bin, args) = local_command(
        &strings(&c["lifecycle"]["preStop"]["exec"]["command"]),
        root,
    );
    let drain = tokio::process::Command::new(bin).args(&args).output();
    let out = tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("the preStop drain returns within 30 s on an empty queue")
        .unwrap();
    assert!(out.status.success(), "{}: preStop: {}", r.name, text(&out));
    let readiness = c["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    let (status, body) = http::get(http, readiness).await;
    assert_eq!(status, 503, "{}: {body}", r.name);
    assert!(body.contains("draining"), "{}: {body}", r.name);

    postern.sigterm();
    let status = postern.wait_exit(Duration::from_secs(40)).await;
    let log = std::fs::read_to_string(root.join("postern.log")).unwrap();
    assert!(status.success(), "{}: {status}\n{log}", r.name);
    // The token the preStop drain authenticated with was made on the spool volume.
    let token = r.config()["http"]["admin_token_file"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        Path::new(&host(root, &token)).is_file(),
        "{}: {token}",
        r.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_checks_and_runs_as_the_pod_has_it() {
    for r in render::all() {
        run_pod(&r).await;
    }
}
