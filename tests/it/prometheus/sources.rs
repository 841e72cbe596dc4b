//! The repository files under test: the Grafana dashboard, the alert rules and the rules'
//! unit tests, read for the PromQL expressions and the series they contain.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A repository file, by its path from the crate root.
pub(super) fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every `targets[].expr` of `grafana/postern.json`, with the panel's title, recursing into
/// rows' `panels`.
pub(super) fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((format!("dashboard panel {title:?}"), expr.to_owned()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&read_json("grafana/postern.json")["panels"], &mut out);
    out
}

/// The dashboard's `query` variables' queries (`label_values(...)`), with the variable name.
pub(super) fn dashboard_variable_queries() -> Vec<(String, String)> {
    let dashboard = read_json("grafana/postern.json");
    let vars = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    vars.iter()
        .filter(|v| v["type"] == "query")
        .filter_map(|v| {
            let query = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())?;
            let name = v["name"].as_str().unwrap_or("?");
            Some((format!("dashboard variable ${name}"), query.to_owned()))
        })
        .collect()
}

/// Every `expr` of `deploy/prometheus/postern-rules.yml`, with the alert or record name.
pub(super) fn rule_exprs() -> Vec<(String, String)> {
    let rules = read_yaml("deploy/prometheus/postern-rules.yml");
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap_or("?");
            if let Some(expr) = rule["expr"].as_str() {
                out.push((format!("rule {name}"), expr.to_owned()));
            }
        }
    }
    out
}

/// Every `input_series[].series` of the rules' unit tests, with the test's name.
pub(super) fn rule_test_series() -> Vec<(String, String)> {
    let tests = read_yaml("deploy/prometheus/postern-rules.test.yml");
    let mut out = Vec::new();
    for test in tests["tests"].as_sequence().into_iter().flatten() {
        let name = test["name"].as_str().unwrap_or("?");
        for input in test["input_series"].as_sequence().into_iter().flatten() {
            if let Some(series) = input["series"].as_str() {
                out.push((format!("rule test {name:?}"), series.to_owned()));
            }
        }
    }
    out
}

fn read_json(rel: &str) -> Value {
    let path = repo_file(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn read_yaml(rel: &str) -> serde_yaml::Value {
    let path = repo_file(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}
