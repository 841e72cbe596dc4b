//! The systemd files in `deploy/systemd/` (issue 10, section 1), checked with Debian's
//! systemd tools, offline: the unit passes `systemd-analyze verify`, its exposure level
//! from `systemd-analyze security` is "OK" or better, and the sysusers.d and tmpfiles.d
//! snippets create the user and the configuration directory in a scratch root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::binary::BIN;
use crate::harness::tools::{repo, run, text};

/// The systemd tools' package.
const SYSTEMD: &str = "Debian package systemd";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/systemd")
        .join(file)
}

/// The unit as installed, with its `/usr/local/bin/postern` pointing at the binary under
/// test (verify checks that the commands exist and are executable).
fn unit_copy(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(deploy("postern.service")).unwrap();
    assert!(unit.contains("/usr/local/bin/postern"), "{unit}");
    let path = dir.join("postern.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/postern", BIN)).unwrap();
    path
}

#[test]
fn unit_passes_verify_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let unit = unit.to_str().unwrap();
    let out = run("systemd-analyze", &["verify", unit], SYSTEMD);
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "{}",
        text(&out)
    );
    let out = run(
        "systemd-analyze",
        &["security", "--offline=yes", unit],
        SYSTEMD,
    );
    let report = text(&out);
    let overall = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for postern.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("{report}"));
    let mut words = overall.split_whitespace();
    let level: f64 = words.next().unwrap().parse().unwrap();
    let label = words.next().unwrap();
    assert!(
        matches!(label, "SAFE" | "OK") && level <= 2.0,
        "exposure {level} {label}\n{report}"
    );
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_config_directory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let sysusers = deploy("postern.sysusers");
    let out = run(
        "systemd-sysusers",
        &[&root_arg, sysusers.to_str().unwrap()],
        SYSTEMD,
    );
    assert!(out.status.success(), "{}", text(&out));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("postern:"))
        .unwrap_or_else(|| panic!("{passwd}"));
    let fields: Vec<&str> = entry.split(':').collect();
    assert_eq!(fields[5], "/var/lib/postern", "{entry}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{entry}");
    let gid: u32 = fields[3].parse().unwrap();

    let tmpfiles = deploy("postern.tmpfiles");
    let out = run(
        "systemd-tmpfiles",
        &[&root_arg, "--create", tmpfiles.to_str().unwrap()],
        SYSTEMD,
    );
    assert!(out.status.success(), "{}", text(&out));
    for dir in ["etc/postern", "etc/postern/tls"] {
        let meta = std::fs::metadata(root.path().join(dir)).unwrap();
        assert!(meta.is_dir(), "{dir}");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750, "{dir}");
        assert_eq!((meta.uid(), meta.gid()), (0, gid), "{dir}");
    }
}

/// The unit's `Key=value` settings (comments and section headers left out), in order.
fn settings(unit: &str) -> Vec<(&str, &str)> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect()
}

/// What verify and the exposure level do not see: the unit checks the config it runs
/// before each start, reloads with SIGHUP, stops with SIGTERM and waits longer than the
/// shipped config's `shutdown_grace` (the drain), and keeps only `CAP_NET_BIND_SERVICE`.
#[test]
fn unit_checks_the_config_reloads_and_drains() {
    let unit = std::fs::read_to_string(deploy("postern.service")).unwrap();
    let all = settings(&unit);
    let one = |key: &str| {
        let values: Vec<&str> = all.iter().filter(|(k, _)| *k == key).map(|e| e.1).collect();
        assert_eq!(values.len(), 1, "{key}: {values:?}");
        values[0]
    };
    let config = "--config /etc/postern/postern.yaml";
    assert_eq!(
        one("ExecStartPre"),
        format!("/usr/local/bin/postern check-config {config}")
    );
    assert_eq!(
        one("ExecStart"),
        format!("/usr/local/bin/postern run {config}")
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    let seconds = |value: &str| -> u64 { value.strip_suffix('s').unwrap().parse().unwrap() };
    let shipped = std::fs::read_to_string(repo("deploy/postern.yaml")).unwrap();
    let shipped: serde_yaml::Value = serde_yaml::from_str(&shipped).unwrap();
    let grace = seconds(shipped["shutdown_grace"].as_str().unwrap());
    assert!(
        seconds(one("TimeoutStopSec")) > grace,
        "TimeoutStopSec must outlast shutdown_grace ({grace}s)"
    );
    assert_eq!(one("User"), "postern");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
}
