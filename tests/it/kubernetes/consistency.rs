//! The manifests agree with the config the ConfigMap carries: the mistakes that render and
//! validate fine but give a pod that does not work (a port that does not match, a probe on
//! the wrong port, a Secret key the config does not read, a drain cut short by the kill).

use std::collections::BTreeSet;

use serde_json::Value;

use super::render::{self, CONFIG_PATH, IMAGE_BIN, Rendered, port_of, seconds};
use super::selects;

/// A Service's or NetworkPolicy's port (a number or a container port's name) as a number.
pub fn target_port(r: &Rendered, port: &Value) -> u16 {
    match port {
        Value::String(name) => r.container_port(name),
        Value::Number(n) => u16::try_from(n.as_u64().unwrap()).unwrap(),
        _ => panic!("{}: port {port}", r.name),
    }
}

/// Every string in `value` that starts with `/`: the config's absolute paths.
fn absolute_paths(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if s.starts_with('/') => {
            out.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| absolute_paths(v, out)),
        Value::Object(map) => map.values().for_each(|v| absolute_paths(v, out)),
        _ => {}
    }
}

fn ports_and_probes(r: &Rendered, config: &Value) {
    let c = r.container();
    // The image of this version (kustomize `images:`), as deploy/container builds it.
    let image = format!("ghcr.io/postern/postern:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(c["image"], image.as_str(), "{}", r.name);
    assert_eq!(c["command"], serde_json::json!([IMAGE_BIN]), "{}", r.name);
    assert_eq!(
        c["args"],
        serde_json::json!(["run", "--config", CONFIG_PATH]),
        "{}",
        r.name
    );
    let mut wanted = BTreeSet::new();
    for listener in config["listeners"].as_array().unwrap() {
        let (name, address) = (
            listener["name"].as_str().unwrap(),
            listener["address"].as_str().unwrap(),
        );
        assert!(
            address.starts_with("0.0.0.0:"),
            "{}: {name} on {address}",
            r.name
        );
        assert_eq!(
            r.container_port(name),
            port_of(address),
            "{}: listener {name}",
            r.name
        );
        assert!(
            port_of(address) >= 1024,
            "{}: {name} needs a capability",
            r.name
        );
        wanted.insert(port_of(address));
    }
    let http = port_of(config["http"]["address"].as_str().unwrap());
    assert_eq!(r.container_port("http"), http, "{}", r.name);
    wanted.insert(http);
    let declared: BTreeSet<u16> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap())
        .collect();
    assert_eq!(declared, wanted, "{}", r.name);
    probes(r, http);
}

/// Each probe asks its path on the `http` port, and readiness is not on a hair trigger.
fn probes(r: &Rendered, http: u16) {
    let c = r.container();
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{}: {probe}", r.name);
        assert_eq!(target_port(r, &get["port"]), http, "{}: {probe}", r.name);
    }
    // /readyz's spool check may take up to 2 s (SPOOL_CHECK_LIMIT, src/app/http.rs) and
    // says why when it runs out: the probe must wait longer than that. And one slow answer
    // (a network disk's fsync stalling) must not take a pod, the only one in `single`, out
    // of the load balancer: a drain does not need it (a terminating pod leaves the
    // endpoints at once, and the drain answers 421 meanwhile).
    let ready = &c["readinessProbe"];
    assert!(ready["timeoutSeconds"].as_u64().unwrap() > 2, "{}", r.name);
    assert!(
        ready["failureThreshold"].as_u64().unwrap() >= 2,
        "{}",
        r.name
    );
}

fn smtp_service(r: &Rendered, config: &Value) {
    let service = &r.get("Service", "postern-smtp")["spec"];
    let labels = &r.get("StatefulSet", "postern")["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&service["selector"], labels), "{}", r.name);
    let listeners = config["listeners"].as_array().unwrap();
    let port_of_listener = |name: &str| {
        let l = listeners.iter().find(|l| l["name"] == name).unwrap();
        port_of(l["address"].as_str().unwrap())
    };
    let mut reached = BTreeSet::new();
    for port in service["ports"].as_array().unwrap() {
        let target = target_port(r, &port["targetPort"]);
        let listener = match port["port"].as_u64().unwrap() {
            587 => "submission",
            465 => "submissions",
            25 => "legacy",
            other => panic!("{}: Service port {other}", r.name),
        };
        assert_eq!(
            target,
            port_of_listener(listener),
            "{}: port {}",
            r.name,
            port["port"]
        );
        reached.insert(target);
    }
    assert_eq!(
        reached.len(),
        listeners.len(),
        "{}: a listener without a Service port",
        r.name
    );
}

fn secrets_and_volumes(r: &Rendered, config: &Value) {
    let etc = r.mount("etc");
    let spool = r.mount("postern-spool");
    let mut paths = BTreeSet::new();
    absolute_paths(config, &mut paths);
    for path in &paths {
        assert!(
            path.starts_with(&format!("{etc}/")) || path.starts_with(&format!("{spool}/")),
            "{}: {path} is on no volume (the root filesystem is read-only)",
            r.name
        );
    }
    // Written by postern: on the spool volume, the only writable one.
    let queue = config["queue"]["directory"].as_str().unwrap();
    let token = config["http"]["admin_token_file"].as_str().unwrap();
    for written in [queue, token] {
        assert!(
            written.starts_with(&format!("{spool}/")),
            "{}: {written}",
            r.name
        );
    }
    let claims = r.get("StatefulSet", "postern")["spec"]["volumeClaimTemplates"].clone();
    assert_eq!(claims[0]["metadata"]["name"], "postern-spool", "{}", r.name);
    // The files the config reads from the Secrets are exactly those projected from them.
    let read: BTreeSet<String> = paths
        .iter()
        .filter_map(|p| p.strip_prefix(&format!("{etc}/")))
        .map(str::to_owned)
        .collect();
    let projected = r.projection();
    let from_secrets: BTreeSet<String> = projected
        .iter()
        .filter(|(_, (kind, _, _))| *kind == "Secret")
        .map(|(path, _)| path.clone())
        .collect();
    assert_eq!(read, from_secrets, "{}", r.name);
    // And the example Secrets have exactly the keys projected.
    let names: BTreeSet<&String> = projected
        .values()
        .filter(|v| v.0 == "Secret")
        .map(|v| &v.1)
        .collect();
    for name in names {
        let keys: Vec<String> = projected
            .values()
            .filter(|(kind, n, _)| *kind == "Secret" && n == name)
            .map(|(_, _, key)| key.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            r.example_keys(name),
            keys,
            "{}: {:?} {name}",
            r.name,
            r.example
        );
    }
}

fn security_and_shutdown(r: &Rendered, config: &Value) {
    let pod = r.pod();
    let sc = &pod["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{}", r.name);
    assert_eq!(
        sc["runAsUser"], 65532,
        "{}: the image's nonroot user",
        r.name
    );
    assert_eq!(sc["fsGroup"], 65532, "{}", r.name);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{}", r.name);
    let c = &r.container()["securityContext"];
    assert_eq!(c["readOnlyRootFilesystem"], true, "{}", r.name);
    assert_eq!(c["allowPrivilegeEscalation"], false, "{}", r.name);
    assert_eq!(
        c["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{}",
        r.name
    );
    assert!(c["capabilities"]["add"].is_null(), "{}", r.name);
    assert!(
        r.container()["resources"]["limits"]["memory"].is_string(),
        "{}",
        r.name
    );

    let hook: Vec<&str> = r.container()["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(hook[..3], [IMAGE_BIN, "queue", "drain"], "{}", r.name);
    let flag = |name: &str| hook.iter().position(|a| *a == name).map(|i| hook[i + 1]);
    assert_eq!(flag("--config"), Some(CONFIG_PATH), "{}", r.name);
    let deadline = seconds(flag("--deadline").unwrap_or("10m"));
    let grace = seconds(config["shutdown_grace"].as_str().unwrap_or("30s"));
    let period = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        period > deadline + grace,
        "{}: terminationGracePeriodSeconds {period} <= drain {deadline} + shutdown_grace {grace}",
        r.name
    );
    disruption(r);
}

/// The PodDisruptionBudget and the StatefulSet's pod management: one pod at a time, and
/// nothing held up by pods that are not ready.
fn disruption(r: &Rendered) {
    let pdb = &r.get("PodDisruptionBudget", "postern")["spec"];
    assert_eq!(pdb["maxUnavailable"], 1, "{}", r.name);
    // /readyz fails on every pod at once while the shared smarthost is down: the budget
    // must still let a not-ready pod be evicted, or node drains wait for the smarthost.
    assert_eq!(
        pdb["unhealthyPodEvictionPolicy"], "AlwaysAllow",
        "{}: a PodDisruptionBudget counting not-ready pods blocks node drains while every \
         pod is not ready",
        r.name
    );
    // The pods are peers, each with its own volume: none waits for another to be ready
    // (OrderedReady blocks scaling up and down while a pod is not ready).
    assert_eq!(
        r.get("StatefulSet", "postern")["spec"]["podManagementPolicy"],
        "Parallel",
        "{}",
        r.name
    );
    let labels = &r.get("StatefulSet", "postern")["spec"]["template"]["metadata"]["labels"];
    assert!(
        selects(&pdb["selector"]["matchLabels"], labels),
        "{}",
        r.name
    );
}

#[test]
fn manifests_agree_with_the_config() {
    for r in render::all() {
        let config = r.config();
        ports_and_probes(&r, &config);
        smtp_service(&r, &config);
        secrets_and_volumes(&r, &config);
        security_and_shutdown(&r, &config);
        super::network::network_policy(&r, &config);
    }
}

/// The pods rely on the image as deploy/container/Dockerfile builds it: the binary's path,
/// the user the security context names, the spool volume and the config's path.
#[test]
fn manifests_agree_with_the_image() {
    let path = render::kube_dir("../container/Dockerfile");
    let dockerfile = std::fs::read_to_string(&path).unwrap();
    let r = Rendered::new("base", "base/secret.example.yaml");
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    let has = |line: &str| lines.contains(&line);
    assert!(has(&format!("ENTRYPOINT [\"{IMAGE_BIN}\"]")), "{path:?}");
    assert!(
        has(&format!("COPY --from=build /out{IMAGE_BIN} {IMAGE_BIN}")),
        "{path:?}"
    );
    let user = r.pod()["securityContext"]["runAsUser"].as_u64().unwrap();
    let group = r.pod()["securityContext"]["runAsGroup"].as_u64().unwrap();
    assert!(has(&format!("USER {user}:{group}")), "{path:?}");
    let spool = r.mount("postern-spool");
    assert!(has(&format!("VOLUME [\"{spool}\"]")), "{path:?}");
    assert!(dockerfile.contains(&format!(" {CONFIG_PATH}")), "{path:?}");
}
