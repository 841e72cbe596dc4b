//! The pod as the rendered StatefulSet describes it, laid out in a scratch directory: the
//! projected `etc` volume (the rendered ConfigMap, the example Secrets with a real
//! self-signed certificate for `hostname` in place of the example's placeholder) and an
//! empty spool volume, with the container's own paths moved under the scratch root. The
//! config passes `postern check-config` there; then it runs, on loopback ports (the only
//! change), with the container's own `args`: the probes answer on the paths and port they
//! name, the preStop command (run as the kubelet would, with the binary under test) drains
//! and exits 0, `/readyz` then fails with `draining`, and SIGTERM stops postern with 0.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::binary::{BIN, Postern, wait_listening};
use crate::harness::http;
use crate::harness::sink::reserve_port;

use super::render::{self, CONFIG_PATH, IMAGE_BIN, Rendered, run, text};

/// A path of the container, under `root`.
fn host(root: &Path, path: &str) -> String {
    format!("{}{path}", root.display())
}

/// Writes the pod's files under `root`; returns the config text with the container's paths
/// moved under `root`.
fn materialize(r: &Rendered, root: &Path) -> String {
    let etc = r.mount("etc");
    let hostname = r.config()["hostname"].as_str().unwrap().to_owned();
    let tls = rcgen::generate_simple_self_signed(vec![hostname]).unwrap();
    for (path, (kind, name, key)) in r.projection() {
        let content = match kind {
            "ConfigMap" => r.config_text(),
            _ if r.example_secret(&name)["type"] == "kubernetes.io/tls" => match key.as_str() {
                "tls.crt" => tls.cert.pem(),
                "tls.key" => tls.signing_key.serialize_pem(),
                other => panic!("{}: {name} has no key {other}", r.name),
            },
            _ => r.example_value(&name, &key).unwrap_or_else(|| {
                panic!("{}: the example Secret {name} has no key {key}", r.name)
            }),
        };
        let file = host(root, &format!("{etc}/{path}"));
        std::fs::create_dir_all(Path::new(&file).parent().unwrap()).unwrap();
        std::fs::write(&file, content).unwrap();
    }
    let spool = r.mount("postern-spool");
    std::fs::create_dir_all(host(root, &spool)).unwrap();
    r.config_text()
        .replace(&format!("{etc}/"), &host(root, &format!("{etc}/")))
        .replace(&format!("{spool}/"), &host(root, &format!("{spool}/")))
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

async fn run_pod(r: &Rendered) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
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
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        let (status, body) = http::get(http, path).await;
        assert_eq!(status, 200, "{}: {probe} {path}: {body}", r.name);
    }

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
