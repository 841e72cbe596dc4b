//! The derived part of the config schema against the loader, key by key: every key of every
//! section (and an unknown one) is set to each of a set of values (null, numbers, strings
//! in each of postern's notations, lists, mappings and every enumeration value the schema
//! names), or removed, in a config that uses every section. Whatever the loader reads, the
//! schema accepts; and what the schema accepts beyond it is only a duration that overflows.

use std::path::Path;

use serde_json::{Value, json};

use super::{schema, validator};

/// A config with every section and list present (read by the loader's `parse`: shape only).
fn base() -> Value {
    json!({
        "listeners": [{"name": "a", "address": "127.0.0.1:2525",
                       "proxy_protocol": {"trusted": ["10.0.0.0/8"]}}],
        "queue": {"directory": "q"},
        "upstreams": [
            {"name": "u", "directory": "out"},
            {"name": "v", "address": "mx:25", "circuit_breaker": {},
             "auth": {"username": "u", "oauth2": {"client_id": "c"}}},
        ],
        "tls": {"certificate": "c", "private_key": "k",
                "sni": [{"certificate": "c", "private_key": "k"}]},
        "users": [{"username": "x", "password_hash": "h", "senders": ["*"],
                   "rate_limits": [{"per": "ip"}]}],
        "networks": [{"network": "10.0.0.0/8", "rate_limits": [{"per": "ip"}]}],
        "rate_limits": [{"per": "ip"}],
        "routes": [{"upstreams": ["u"]}],
        "http": {"address": "127.0.0.1:9"},
        "redis": {"url": "redis://x", "tls": {}},
        "limits": {}, "timeouts": {}, "smtp": {}, "headers": {}, "auth_cache": {},
        "auth_lockout": {}, "log": {},
    })
}

/// Each mapping of [`base`] (a JSON pointer) and its `$defs` type; `None` is the root.
const SECTIONS: [(&str, Option<&str>); 26] = [
    ("", None),
    ("/listeners/0", Some("ListenerConfig")),
    ("/listeners/0/proxy_protocol", Some("ProxyProtocolConfig")),
    ("/queue", Some("QueueConfig")),
    ("/upstreams/0", Some("UpstreamConfig")),
    ("/upstreams/1", Some("UpstreamConfig")),
    ("/upstreams/1/circuit_breaker", Some("CircuitBreakerConfig")),
    ("/upstreams/1/auth", Some("UpstreamAuth")),
    ("/upstreams/1/auth/oauth2", Some("OAuth2Config")),
    ("/tls", Some("TlsConfig")),
    ("/tls/sni/0", Some("SniCertificate")),
    ("/users/0", Some("UserConfig")),
    ("/users/0/rate_limits/0", Some("RateLimitRule")),
    ("/networks/0", Some("NetworkConfig")),
    ("/networks/0/rate_limits/0", Some("RateLimitRule")),
    ("/rate_limits/0", Some("RateLimitRule")),
    ("/routes/0", Some("RouteConfig")),
    ("/http", Some("HttpConfig")),
    ("/redis", Some("RedisConfig")),
    ("/redis/tls", Some("RedisTlsConfig")),
    ("/limits", Some("LimitsConfig")),
    ("/timeouts", Some("TimeoutsConfig")),
    ("/smtp", Some("SmtpConfig")),
    ("/headers", Some("HeadersConfig")),
    ("/auth_cache", Some("AuthCacheConfig")),
    ("/auth_lockout", Some("AuthLockoutConfig")),
];

/// The values each key is set to: every enumeration value the schema names, and values of
/// every other shape a key takes (or should refuse).
fn samples(schema: &Value) -> Vec<Value> {
    let mut values = vec![
        json!(null),
        json!(0),
        json!(7),
        json!(-1),
        json!(1.5),
        json!(true),
        json!(""),
        json!("x"),
        json!("500ms"),
        json!("1w"),
        json!(" 5 m "),
        json!("1GB"),
        json!("64kB"),
        json!("25MiB"),
        json!("10.0.0.0/8"),
        json!("2001:db8::/32"),
        json!("[::]:587"),
        json!("127.0.0.1:25"),
        json!("*"),
        json!("@*.example.com"),
        json!([]),
        json!(["x"]),
        json!(["10.0.0.0/8"]),
        json!([null]),
        json!({}),
        json!({"per": "ip", "messages": 5}),
        json!([{"per": "user", "recipients": 5, "interval": "1d"}]),
        json!(4_294_967_296_u64),
        json!("normalize"),
    ];
    for def in schema["$defs"].as_object().unwrap().values() {
        for variant in def["oneOf"].as_array().into_iter().flatten() {
            values.push(variant["const"].clone());
        }
    }
    values
}

/// The loader's reading of `config` (shape only: `parse`, without the cross-field rules).
fn loader(config: &Value) -> Result<(), String> {
    let text = serde_json::to_string(config).unwrap();
    postern::config::load::parse(&text, Path::new("p.yaml"))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The keys of the section at `at`, as the schema lists them.
fn keys(schema: &Value, def: Option<&str>) -> (Vec<String>, Vec<Value>) {
    let object = def.map_or(schema, |d| &schema["$defs"][d]);
    let keys = object["properties"].as_object().unwrap().keys().cloned();
    let required = object["required"].as_array().cloned().unwrap_or_default();
    (keys.chain(["bogus".to_owned()]).collect(), required)
}

#[test]
fn every_key_takes_what_the_loader_takes() {
    let schema = schema();
    let validator = validator();
    let base = base();
    loader(&base).unwrap();
    assert!(validator.is_valid(&base), "the base config");
    let samples = samples(&schema);
    let (mut refused, mut looser, mut both) = (Vec::new(), Vec::new(), 0);
    for (at, def) in SECTIONS {
        let (keys, required) = keys(&schema, def);
        for key in &keys {
            let is_required = required.contains(&Value::String(key.clone()));
            for value in samples.iter().map(Some).chain([None]) {
                // A required list left null reads as empty, which the loader's cross-field
                // rules then refuse ("at least one"): the schema refuses it at once.
                if is_required && value.is_some_and(Value::is_null) {
                    continue;
                }
                let mut config = base.clone();
                let section = config.pointer_mut(at).unwrap().as_object_mut().unwrap();
                match value {
                    Some(v) => section.insert(key.clone(), v.clone()),
                    None => section.remove(key),
                };
                let case = format!(
                    "{at}/{key} = {}",
                    value.map_or("(removed)".into(), Value::to_string)
                );
                match (loader(&config), validator.is_valid(&config)) {
                    (Ok(()), false) => refused.push(case),
                    (Err(e), true) => looser.push(format!("{case}: {e}")),
                    (Ok(()), true) => both += 1,
                    (Err(_), false) => {}
                }
            }
        }
    }
    assert!(
        refused.is_empty(),
        "the schema refuses what the loader reads: {refused:#?}"
    );
    // The schema does not bound durations by overflow (nor 64-bit integers, past what a
    // JSON number holds exactly); 32-bit ones have their `maximum`.
    looser.retain(|e| !e.ends_with("is too large"));
    assert!(
        looser.is_empty(),
        "the schema accepts what the loader refuses: {looser:#?}"
    );
    assert!(both > 1000, "only {both} values accepted by both");
}
