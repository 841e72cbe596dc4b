//! The Compose file `deploy/container/compose.yaml` read as Compose, Prometheus and Grafana
//! would read it: valid, everything it uses exists, and its pieces fit together.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::dockerfile::{dockerfile, exec_form, flag_value, last_stage};
use super::{config_ports, port_of, repo, text, tool};

const DOCKERFILE: &str = "deploy/container/Dockerfile";
const COMPOSE: &str = "deploy/container/compose.yaml";

/// The Compose file, parsed.
fn compose() -> Value {
    let text = std::fs::read_to_string(repo(COMPOSE)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// A mount of a service: its source (a path resolved against the Compose file's directory
/// for a bind mount, a name for a volume) and its target in the container.
struct Mount {
    bind: Option<PathBuf>,
    volume: Option<String>,
    target: String,
}

/// The `volumes:` of `service` (short syntax `source:target[:mode]`).
fn mounts(service: &Value) -> Vec<Mount> {
    let base = repo("deploy/container");
    let Some(list) = service.get("volumes").and_then(Value::as_sequence) else {
        return Vec::new();
    };
    list.iter()
        .map(|v| {
            let short = v.as_str().expect("short syntax volumes");
            let mut parts = short.split(':');
            let (source, target) = (parts.next().unwrap(), parts.next().unwrap().to_owned());
            let is_path = source.starts_with('.') || source.starts_with('/');
            Mount {
                bind: is_path.then(|| base.join(source)),
                volume: (!is_path).then(|| source.to_owned()),
                target,
            }
        })
        .collect()
}

/// The container ports a service publishes (`[host:]host_port:container_port`).
fn published(service: &Value) -> Vec<u16> {
    service["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// `file` is valid by the Compose specification's schema (check-jsonschema's built-in copy).
fn assert_valid_compose(file: &Path) {
    let out = tool(
        "check-jsonschema",
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            file.to_str().unwrap(),
        ],
        "PyPI check-jsonschema",
    );
    assert!(out.status.success(), "{}: {}", file.display(), text(&out));
}

/// Valid by the Compose specification's schema; the build context and Dockerfile, every
/// bind-mount source and every named volume exist; images are pinned; postern publishes
/// exactly its SMTP listeners and keeps its state in a volume at the image's VOLUME.
#[test]
fn compose_file_is_valid_and_everything_it_uses_exists() {
    let file = repo(COMPOSE);
    assert_valid_compose(&file);

    let doc = compose();
    let declared = doc["volumes"].as_mapping().unwrap();
    let services = doc["services"].as_mapping().unwrap();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        for mount in mounts(service) {
            if let Some(path) = &mount.bind {
                assert!(path.exists(), "{name}: mounts {} (missing)", path.display());
            }
            if let Some(volume) = &mount.volume {
                assert!(
                    declared.contains_key(volume.as_str()),
                    "{name}: volume {volume}"
                );
            }
        }
        if let Some(image) = service.get("image").and_then(Value::as_str) {
            let tag = image.rsplit_once(':').map(|(_, t)| t);
            assert!(tag.is_some_and(|t| t != "latest"), "{name}: pin {image}");
        }
    }

    let postern = &doc["services"]["postern"];
    let context = repo("deploy/container").join(postern["build"]["context"].as_str().unwrap());
    let dockerfile = context.join(postern["build"]["dockerfile"].as_str().unwrap());
    assert_eq!(
        dockerfile.canonicalize().unwrap(),
        repo(DOCKERFILE).canonicalize().unwrap()
    );
    assert_eq!(
        context.canonicalize().unwrap(),
        repo("").canonicalize().unwrap()
    );
    let (smtp, _) = config_ports();
    assert_eq!(published(postern), smtp, "publish every SMTP listener");
    let state = mounts(postern);
    assert!(
        state
            .iter()
            .any(|m| m.volume.is_some() && m.target == "/var/lib/postern"),
        "postern's state in a named volume"
    );
}

/// A listener that admits clients by their address (no AUTH) is published on an IPv4
/// address only. Published on every address, Docker also takes IPv6 connections for it and
/// forwards them through its userland proxy, from the bridge's gateway (172.16.0.0/12), a
/// network such a listener admits: any IPv6 client on the Internet would be let in as a
/// local device.
#[test]
fn compose_publishes_address_admitted_listeners_on_ipv4_only() {
    let doc = compose();
    let ports = doc["services"]["postern"]["ports"].as_sequence().unwrap();
    let cfg = super::container_config();
    let mut checked = 0;
    for listener in cfg["listeners"].as_sequence().unwrap() {
        if listener["auth"].as_str() != Some("none") {
            continue;
        }
        let port = port_of(listener["address"].as_str().unwrap());
        let entry = ports
            .iter()
            .filter_map(Value::as_str)
            .find(|p| p.rsplit(':').next() == Some(&port.to_string()))
            .unwrap_or_else(|| panic!("listener on {port} is not published"));
        let host_ip = entry.split(':').collect::<Vec<_>>();
        assert!(
            host_ip.len() == 3 && host_ip[0].parse::<std::net::Ipv4Addr>().is_ok(),
            "{entry}: publish the listener without AUTH on an IPv4 address, e.g. \"0.0.0.0:25:{port}\""
        );
        checked += 1;
    }
    assert!(
        checked > 0,
        "the container config has no listener without AUTH"
    );
}

/// Prometheus' config with every file mounted where Compose mounts it (so the rules are
/// `deploy/prometheus/postern-rules.yml` itself) passes `promtool check config`, which also
/// checks the rules; it scrapes postern's `http:` port under the job name the alerts use.
#[test]
fn compose_prometheus_config_passes_promtool() {
    let doc = compose();
    let prometheus = &doc["services"]["prometheus"];
    let root = tempfile::tempdir().unwrap();
    for mount in mounts(prometheus) {
        if let Some(source) = mount.bind {
            let at = root.path().join(mount.target.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::copy(&source, &at)
                .unwrap_or_else(|e| panic!("mounts {}: {e}", source.display()));
        }
    }
    let config = root.path().join("etc/prometheus/prometheus.yml");
    let out = tool(
        "promtool",
        &["check", "config", config.to_str().unwrap()],
        "Debian prometheus",
    );
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("SUCCESS: 1 rule files found"), "{report}");

    let scrape: Value = serde_yaml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let job = &scrape["scrape_configs"][0];
    assert_eq!(job["job_name"].as_str(), Some("postern"));
    let target = job["static_configs"][0]["targets"][0].as_str().unwrap();
    let (_, http) = config_ports();
    assert_eq!(target, format!("postern:{http}"));
    assert!(doc["services"].get("postern").is_some());
}

/// Grafana's provisioning (grafana/provisioning, unchanged) fits the Compose mounts: both
/// directories where Grafana reads them, the dashboard in the folder the provider watches
/// (and as the home dashboard), the datasource pointing at the prometheus service's port.
#[test]
fn compose_grafana_provisioning_finds_the_dashboard_and_prometheus() {
    let doc = compose();
    let grafana = &doc["services"]["grafana"];
    let mounts = mounts(grafana);
    let target_of = |source: &str| -> String {
        let source = repo(source).canonicalize().unwrap();
        let m = mounts
            .iter()
            .find(|m| m.bind.as_ref().map(|b| b.canonicalize().unwrap()) == Some(source.clone()))
            .unwrap_or_else(|| panic!("{} is not mounted", source.display()));
        m.target.clone()
    };
    let provisioning = "/etc/grafana/provisioning";
    for kind in ["datasources", "dashboards"] {
        let dir = format!("grafana/provisioning/{kind}");
        assert_eq!(target_of(&dir), format!("{provisioning}/{kind}"));
    }
    let dashboard = target_of("grafana/postern.json");
    let provider: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("grafana/provisioning/dashboards/postern.yaml")).unwrap(),
    )
    .unwrap();
    let watched = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(Path::new(&dashboard).parent(), Some(Path::new(watched)));
    let home = &grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"];
    assert_eq!(home.as_str(), Some(dashboard.as_str()));

    let datasource: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("grafana/provisioning/datasources/postern.yaml")).unwrap(),
    )
    .unwrap();
    let url = datasource["datasources"][0]["url"].as_str().unwrap();
    let (host, port) = url
        .strip_prefix("http://")
        .unwrap()
        .split_once(':')
        .unwrap();
    assert!(
        doc["services"].get(host).is_some(),
        "{url}: no service {host}"
    );
    assert_eq!(
        published(&doc["services"][host]),
        [port.parse::<u16>().unwrap()]
    );
    assert_eq!(port_of(url), 9090, "Prometheus' own port in its container");
}

/// The guide's own Compose file (docs/deploy-container.md, "Your config ...") is valid and
/// mounts the admin's directory where the image reads its config.
#[test]
fn guide_compose_override_is_valid_and_replaces_the_config_directory() {
    let guide = std::fs::read_to_string(repo("docs/deploy-container.md")).unwrap();
    let block = guide
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|(yaml, _)| yaml))
        .find(|yaml| yaml.contains("/etc/postern"))
        .expect("the guide's compose.local.yaml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.local.yaml");
    std::fs::write(&file, block).unwrap();
    assert_valid_compose(&file);
    let doc: Value = serde_yaml::from_str(block).unwrap();
    let all = dockerfile();
    let run = exec_form(&last_stage(&all, "CMD")[0].args);
    let config_dir = Path::new(flag_value(&run, "--config")).parent().unwrap();
    let targets: Vec<String> = mounts(&doc["services"]["postern"])
        .into_iter()
        .map(|m| m.target)
        .collect();
    assert_eq!(targets, [config_dir.display().to_string()]);
}
