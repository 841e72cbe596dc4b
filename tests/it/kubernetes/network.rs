//! The NetworkPolicies against what postern must reach and be reached on: every listener
//! from anywhere, `http` only from the monitoring namespace; out, DNS (UDP and TCP), every
//! upstream's port, every OAuth2 upstream's token endpoint (HTTPS) and Redis. The recipes
//! in `config/examples/` are checked too: an admin who moves one's upstreams into the pod's
//! config must not find them blocked by the base policy.

use serde_json::Value;

use super::consistency::target_port;
use super::render::{Rendered, port_of};
use super::selects;

/// The ports NetworkPolicy rules of `direction` allow (with the rule's `from`/`to`).
fn allowed(r: &Rendered, direction: &str) -> Vec<(u16, String, Value)> {
    let mut out = Vec::new();
    for policy in r.all("NetworkPolicy") {
        let labels = &r.get("StatefulSet", "postern")["spec"]["template"]["metadata"]["labels"];
        assert!(
            selects(&policy["spec"]["podSelector"]["matchLabels"], labels),
            "{}",
            r.name
        );
        for rule in policy["spec"][direction].as_array().into_iter().flatten() {
            let peers = if direction == "ingress" {
                &rule["from"]
            } else {
                &rule["to"]
            };
            for port in rule["ports"].as_array().unwrap() {
                let protocol = port["protocol"].as_str().unwrap_or("TCP").to_owned();
                out.push((target_port(r, &port["port"]), protocol, peers.clone()));
            }
        }
    }
    out
}

/// The port of a URL such as `https://host[:port]/path` or `redis://host:port/0`.
fn url_port(url: &str) -> u16 {
    let (scheme, rest) = url.split_once("://").unwrap();
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    match host_port.rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => port.parse().unwrap(),
        _ => match scheme {
            "https" => 443,
            "http" => 80,
            "redis" | "rediss" => 6379,
            other => panic!("no default port for {other}: {url}"),
        },
    }
}

/// The TCP ports `config` connects out to, each with what needs it: the upstreams, their
/// OAuth2 token endpoints (`token_url`, else the provider's HTTPS endpoint) and Redis.
fn egress_needed(config: &Value) -> Vec<(u16, String)> {
    let mut needed = Vec::new();
    for upstream in config["upstreams"].as_array().unwrap() {
        let name = upstream["name"].as_str().unwrap();
        if let Some(address) = upstream["address"].as_str() {
            needed.push((port_of(address), format!("upstream {name}")));
        }
        let oauth2 = &upstream["auth"]["oauth2"];
        if oauth2.is_object() {
            let port = oauth2["token_url"].as_str().map_or(443, url_port);
            needed.push((port, format!("upstream {name}'s OAuth2 token endpoint")));
        }
    }
    if let Some(url) = config["redis"]["url"].as_str() {
        needed.push((url_port(url), format!("redis {url}")));
    }
    needed
}

/// The rendered NetworkPolicies admit what `config` needs.
pub fn network_policy(r: &Rendered, config: &Value) {
    let ingress = allowed(r, "ingress");
    let http = port_of(config["http"]["address"].as_str().unwrap());
    for listener in config["listeners"].as_array().unwrap() {
        let port = port_of(listener["address"].as_str().unwrap());
        assert!(
            ingress
                .iter()
                .any(|(p, _, from)| *p == port && from.is_null()),
            "{}: {port}",
            r.name
        );
    }
    let metrics: Vec<&Value> = ingress
        .iter()
        .filter(|(p, _, _)| *p == http)
        .map(|i| &i.2)
        .collect();
    assert_eq!(metrics.len(), 1, "{}", r.name);
    let selector = &metrics[0][0]["namespaceSelector"]["matchLabels"];
    assert_eq!(
        selector["kubernetes.io/metadata.name"], "monitoring",
        "{}",
        r.name
    );

    let egress = allowed(r, "egress");
    let out = |port: u16, protocol: &str| {
        egress
            .iter()
            .any(|(p, proto, _)| *p == port && proto == protocol)
    };
    assert!(out(53, "UDP") && out(53, "TCP"), "{}: DNS", r.name);
    for (port, what) in egress_needed(config) {
        assert!(out(port, "TCP"), "{}: {what} (TCP {port})", r.name);
    }
}

/// Every recipe's upstreams, OAuth2 token endpoints among them (the Microsoft 365 and
/// Google Workspace recipes log in with a token from an HTTPS endpoint), are let out by
/// the base NetworkPolicy. Redis is the cluster overlay's own rule, narrowed by the admin.
#[test]
fn base_network_policy_lets_out_every_recipes_upstreams() {
    let r = Rendered::new("base", "base/secret.example.yaml");
    let egress = allowed(&r, "egress");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut token_endpoints = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let config: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let needed = egress_needed(&config);
        let needed = needed.iter().filter(|(_, what)| !what.starts_with("redis"));
        for (port, what) in needed {
            token_endpoints += usize::from(what.contains("OAuth2"));
            assert!(
                egress
                    .iter()
                    .any(|(p, proto, _)| p == port && proto == "TCP"),
                "{}: {what} needs TCP {port}, which base/networkpolicy.yaml does not let out",
                path.display()
            );
        }
    }
    assert!(token_endpoints >= 2, "the OAuth2 recipes were not seen");
}

#[test]
fn url_ports() {
    let cases = [
        ("https://login.microsoftonline.com/t/oauth2/v2.0/token", 443),
        ("https://idp.example:8443/token", 8443),
        ("redis://redis:6379/0", 6379),
        ("rediss://user:pw@redis.example:6380/0", 6380),
        ("rediss://redis.example/0", 6379),
    ];
    for (url, port) in cases {
        assert_eq!(url_port(url), port, "{url}");
    }
}
