//! The config's JSON Schema (`postern config-schema`, committed as
//! `config/postern.schema.json`): the committed file is current, it is a valid draft 2020-12
//! schema, every config the repository ships or the tests run validates against it, the
//! golden bad configs whose error is one of shape (unknown key, wrong type, bad value) fail
//! it at their key, its hand-written parts (durations, sizes, CIDR, `IP:port`) accept
//! what the loader accepts (`types.rs`), and so does every key of every section (`keys.rs`).
//!
//! Validation is by the `jsonschema` crate (a full draft 2020-12 implementation), on the YAML
//! read as the loader reads it (`serde_yaml`, merge keys applied) and turned into JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use jsonschema::Validator;
use serde_json::Value;

use crate::binary::BIN;
use crate::harness::tools::repo;
use crate::harness::{Opts, TestServer, Upstream};

mod editor;
mod keys;
mod types;

const SCHEMA_FILE: &str = "config/postern.schema.json";
const REGENERATE: &str = "cargo run -- config-schema > config/postern.schema.json";

/// The committed schema, parsed.
fn schema() -> Value {
    let text = std::fs::read_to_string(repo(SCHEMA_FILE))
        .unwrap_or_else(|e| panic!("{SCHEMA_FILE}: {e}; run `{REGENERATE}`"));
    serde_json::from_str(&text).unwrap()
}

fn validator() -> Validator {
    jsonschema::draft202012::new(&schema()).unwrap()
}

/// YAML text as the loader reads it (merge keys applied), as JSON.
fn yaml_to_json(yaml: &str, name: &str) -> Value {
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
    value.apply_merge().unwrap();
    serde_json::to_value(&value).unwrap_or_else(|e| panic!("{name}: not JSON-shaped: {e}"))
}

/// The schema's errors for `instance`, as `POINTER: MESSAGE` lines.
fn errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn assert_valid(validator: &Validator, yaml: &str, name: &str) {
    let errors = errors(validator, &yaml_to_json(yaml, name));
    assert!(
        errors.is_empty(),
        "{name} does not validate against {SCHEMA_FILE}:\n{}",
        errors.join("\n")
    );
}

/// The files under `dir` (recursively) whose name satisfies `pick`, sorted.
fn files_under(dir: &Path, pick: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().and_then(|n| n.to_str()).is_some_and(pick) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The committed file is exactly what `postern config-schema` prints.
#[test]
fn committed_schema_is_current() {
    let out = Command::new(BIN).arg("config-schema").output().unwrap();
    assert!(
        out.status.success(),
        "postern config-schema: {}",
        out.status
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.ends_with("}\n"), "pretty JSON with a final newline");
    let committed = std::fs::read_to_string(repo(SCHEMA_FILE)).unwrap_or_default();
    assert!(
        committed == printed,
        "{SCHEMA_FILE} is not what `postern config-schema` prints (the config types changed): \
         run `{REGENERATE}` and commit it"
    );
}

/// A draft 2020-12 schema (checked against the meta-schema) with its `$id` and title, every
/// named type under `$defs` and referenced as `#/$defs/Name`, every key described, and every
/// `default` valid for its own key.
#[test]
fn schema_is_well_formed_and_documented() {
    let schema = schema();
    jsonschema::meta::validate(&schema).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["$id"], "urn:postern:config");
    assert!(
        schema["title"]
            .as_str()
            .is_some_and(|t| t.contains("postern"))
    );
    let defs = schema["$defs"].as_object().unwrap();
    for name in [
        "ListenerConfig",
        "Duration",
        "ByteSize",
        "Cidr",
        "SocketAddress",
    ] {
        assert!(defs.contains_key(name), "$defs/{name}");
    }
    let (undocumented, bad_defaults) = undocumented_keys_and_bad_defaults(&schema);
    assert!(
        undocumented.is_empty(),
        "keys with no description: {undocumented:?}"
    );
    assert!(
        bad_defaults.is_empty(),
        "defaults the schema rejects: {bad_defaults:?}"
    );
    let text = std::fs::read_to_string(repo(SCHEMA_FILE)).unwrap();
    for reference in text.split("\"$ref\": \"").skip(1) {
        let target = &reference[..reference.find('"').unwrap()];
        let name = target
            .strip_prefix("#/$defs/")
            .unwrap_or_else(|| panic!("a $ref outside $defs: {target}"));
        assert!(defs.contains_key(name), "dangling $ref {target}");
    }
}

/// The keys (`Owner.key`) with no description, and those whose `default` their own schema
/// rejects; every object also refuses unknown keys.
fn undocumented_keys_and_bad_defaults(schema: &Value) -> (Vec<String>, Vec<String>) {
    let defs = schema["$defs"].as_object().unwrap();
    let mut undocumented = Vec::new();
    let mut bad_defaults = Vec::new();
    let mut objects = vec![("(root)".to_owned(), schema)];
    objects.extend(defs.iter().map(|(name, def)| (name.clone(), def)));
    for (owner, object) in objects {
        let Some(properties) = object["properties"].as_object() else {
            continue;
        };
        assert_eq!(
            object["additionalProperties"], false,
            "{owner}: unknown keys"
        );
        for (key, property) in properties {
            if property["description"].as_str().is_none_or(str::is_empty) {
                undocumented.push(format!("{owner}.{key}"));
            }
            if let Some(default) = property.get("default") {
                // The key's own schema, its references resolved against the whole schema.
                let mut own = property.clone();
                own["$defs"] = schema["$defs"].clone();
                let v = jsonschema::draft202012::new(&own).unwrap();
                if !v.is_valid(default) {
                    bad_defaults.push(format!("{owner}.{key}: {default}"));
                }
            }
        }
    }
    (undocumented, bad_defaults)
}

/// The shipped configs, the bench template, the golden good configs, every example under
/// `config/examples/` and every `postern.yaml` under `deploy/` validate.
#[test]
fn shipped_and_example_configs_validate() {
    let validator = validator();
    let mut files = vec![repo("config/postern.yaml"), repo("deploy/postern.yaml")];
    files.extend(files_under(&repo("config/examples"), &|n| {
        n.ends_with(".yaml") || n.ends_with(".yml")
    }));
    files.extend(files_under(&repo("deploy"), &|n| n == "postern.yaml"));
    files.extend(files_under(&repo("tests/configs/good"), &|n| {
        n.ends_with(".yaml")
    }));
    files.sort();
    files.dedup();
    assert!(files.len() >= 4, "{files:?}");
    for file in &files {
        let yaml = std::fs::read_to_string(file).unwrap();
        assert_valid(&validator, &yaml, &file.display().to_string());
    }
    let template = std::fs::read_to_string(repo("benches/postern.yaml.tpl")).unwrap();
    assert_valid(
        &validator,
        &render_bench_template(&template),
        "benches/postern.yaml.tpl",
    );
}

/// config/postern.yaml names the schema in its first line, for editors, and to postern that
/// line is a comment: `postern check-config` takes the file as it is.
#[test]
fn modeline_names_the_schema_and_postern_ignores_it() {
    let config = repo("config/postern.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("# yaml-language-server: $schema=postern.schema.json")
    );
    assert!(config.with_file_name("postern.schema.json").is_file());
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: OK\n", config.display())
    );
}

/// `benches/postern.yaml.tpl` as `string.Template` renders it, with stand-in values.
fn render_bench_template(template: &str) -> String {
    let values = [
        ("RELAY_PORT", "2525"),
        ("RELAY_TLS_PORT", "2587"),
        ("SINK_PORT", "2626"),
        ("BENCH_CERT", "/tmp/bench/cert.pem"),
        ("BENCH_KEY", "/tmp/bench/key.pem"),
        ("BENCH_WORKDIR", "/tmp/bench"),
    ];
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        let value = values
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("benches/postern.yaml.tpl: unknown ${name}"));
        out.push_str(value.1);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The configs the integration harness writes (in several of its shapes: TLS and AUTH to
/// the upstream, the admin API, policy sections) validate, as postern loaded each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_configs_validate() {
    let validator = validator();
    let shapes = [
        Opts::default(),
        Opts {
            upstream: Upstream::StartTlsAuth,
            admin_api: true,
            alice: "max_recipients: 5, sender_check: header, rewrite_sender: a@example.com, \
                    rewrite_mode: collapse"
                .to_owned(),
            legacy: "max_connections: 2, proxy_protocol: {trusted: [10.0.0.0/8, \
                     \"2001:db8::/32\"]}"
                .to_owned(),
            ..Opts::with(
                "rate_limits:\n  - {per: ip, messages: 100, interval: 1h, burst: 5}\n\
                 auth_lockout: {attempts: 3, window: 10m, duration: 15m}\n\
                 smtp: {bare_line_endings: normalise, long_lines: reject}\n\
                 limits: {max_message_size: 10MiB, max_header_size: 65536}\n\
                 networks:\n  - {network: 127.0.0.0/8, senders: [\"@example.com\"]}\n",
            )
        },
        Opts {
            upstream: Upstream::ImplicitAuth,
            queue: "min_backoff: 1s, max_backoff: 2s, on_ambiguous: hold, bounces: dsn, \
                    delay_warning: 4h"
                .to_owned(),
            ..Opts::default()
        },
    ];
    for (i, opts) in shapes.into_iter().enumerate() {
        let server = TestServer::start(opts).await;
        let yaml = std::fs::read_to_string(&server.config).unwrap();
        assert_valid(&validator, &yaml, &format!("harness config #{i}:\n{yaml}"));
    }
}

/// The schema-level problems among the golden bad configs' expected errors: the loader's
/// wording for an unknown key, a wrong type, a bad enum value, a missing key, and a value of
/// a hand-parsed type that does not parse.
const SHAPE_PROBLEMS: [&str; 9] = [
    "unknown field `",
    "unknown variant `",
    "invalid type: ",
    "required key is missing",
    "invalid network: ",
    "invalid duration ",
    "invalid size ",
    "invalid address: ",
    "must be a string (the value is not shown)",
];

/// `listeners[0].tls` as a JSON pointer: `/listeners/0/tls`.
fn pointer(key: &str) -> String {
    key.split('.')
        .flat_map(|part| part.split('['))
        .map(|part| format!("/{}", part.trim_end_matches(']')))
        .collect()
}

/// Every golden bad config whose expected error is a problem of shape fails the schema too,
/// with an error at its key or at the mapping that holds it (an unknown or missing key).
#[test]
fn bad_configs_of_shape_fail_the_schema() {
    let validator = validator();
    let mut checked = Vec::new();
    let mut kinds = [0; SHAPE_PROBLEMS.len()];
    for dir in files_under(&repo("tests/configs/bad"), &|n| n == "expected-error") {
        let dir = dir.parent().unwrap();
        let expected = std::fs::read_to_string(dir.join("expected-error")).unwrap();
        let Some((key, problem)) = expected.trim().split_once(": ") else {
            continue;
        };
        let Some(kind) = SHAPE_PROBLEMS.iter().position(|p| problem.starts_with(p)) else {
            continue;
        };
        kinds[kind] += 1;
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let yaml = std::fs::read_to_string(dir.join("postern.yaml")).unwrap();
        let instance = yaml_to_json(&yaml, &name);
        assert!(
            !validator.is_valid(&instance),
            "{name}: the schema accepts it"
        );
        // Every error, those inside each branch of an `anyOf` (an optional section) included.
        let evaluation = validator.evaluate(&instance);
        let errors: Vec<String> = evaluation
            .iter_errors()
            .map(|e| format!("{}: {}", e.instance_location, e.error))
            .collect();
        let at = pointer(key);
        let parent = &at[..at.rfind('/').unwrap()];
        assert!(
            errors.iter().any(|e| {
                let path = &e[..e.find(": ").unwrap()];
                path == at || path == parent
            }),
            "{name}: the loader says {expected:?}, but the schema's errors are not at {at}: \
             {errors:?}"
        );
        checked.push(name);
    }
    // Every kind of problem is represented among the goldens.
    for (problem, n) in SHAPE_PROBLEMS.iter().zip(kinds) {
        assert!(
            n > 0,
            "no golden bad config with {problem:?} (checked: {checked:?})"
        );
    }
}
