//! The configuration keys a JSON Schema (2020-12, as `postern config-schema` writes it)
//! defines, as the key paths docs/configuration.md uses: `queue.max_age`,
//! `listeners[].proxy_protocol.trusted` (`[]`: an item of a list; `*`: any key of a map).
//!
//! A definition used at several places (a rate-limit rule at `rate_limits[]` and at
//! `users[].rate_limits[]`, an SNI certificate at `tls.sni[]` and at `listeners[].sni[]`) has
//! its keys listed once, under the shortest of those paths (the alphabetically first among
//! equals); the other places list only the key that refers to it. That is the reference's
//! convention too: a type's keys are described once, and the other keys link to them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Every key path of `schema`.
pub fn keys(schema: &Value) -> BTreeSet<String> {
    let defs = schema.get("$defs").and_then(Value::as_object);
    let mut first = Walk {
        defs,
        canonical: None,
        found: BTreeMap::new(),
        keys: BTreeSet::new(),
        stack: Vec::new(),
    };
    first.node(schema, "");
    let canonical = std::mem::take(&mut first.found);
    let mut second = Walk {
        defs,
        canonical: Some(&canonical),
        found: BTreeMap::new(),
        keys: BTreeSet::new(),
        stack: Vec::new(),
    };
    second.node(schema, "");
    second.keys
}

struct Walk<'a> {
    defs: Option<&'a serde_json::Map<String, Value>>,
    /// Second pass: the path each definition is expanded at.
    canonical: Option<&'a BTreeMap<String, String>>,
    /// First pass: the shortest path each definition was reached at.
    found: BTreeMap<String, String>,
    keys: BTreeSet<String>,
    /// Definitions being expanded (a recursive type would otherwise never end).
    stack: Vec<String>,
}

impl Walk<'_> {
    fn node(&mut self, node: &Value, path: &str) {
        let Some(object) = node.as_object() else {
            return;
        };
        if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
            self.reference(reference, path);
        }
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                let key = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                self.keys.insert(key.clone());
                self.node(property, &key);
            }
        }
        if let Some(items) = object.get("items") {
            self.node(items, &format!("{path}[]"));
        }
        if let Some(map) = object.get("additionalProperties") {
            self.node(map, &format!("{path}.*"));
        }
        for combinator in ["anyOf", "oneOf", "allOf"] {
            for branch in object
                .get(combinator)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.node(branch, path);
            }
        }
    }

    fn reference(&mut self, reference: &str, path: &str) {
        let name = reference
            .strip_prefix("#/$defs/")
            .unwrap_or_else(|| panic!("{path}: a $ref outside #/$defs/: {reference}"));
        let target = self
            .defs
            .and_then(|defs| defs.get(name))
            .unwrap_or_else(|| panic!("{path}: $ref to a missing definition {name}"));
        if self.stack.iter().any(|n| n == name) {
            return;
        }
        match self.canonical {
            None => {
                let shorter = |old: &String| (path.len(), path) < (old.len(), old.as_str());
                if self.found.get(name).is_none_or(shorter) {
                    self.found.insert(name.to_owned(), path.to_owned());
                }
            }
            Some(canonical) if canonical.get(name).is_some_and(|at| at != path) => return,
            Some(_) => {}
        }
        self.stack.push(name.to_owned());
        self.node(target, path);
        self.stack.pop();
    }
}

#[test]
fn walks_properties_items_refs_and_combinators() {
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "queue": {"$ref": "#/$defs/Queue"},
            "rules": {"type": "array", "items": {"$ref": "#/$defs/Rule"}},
            "users": {"type": "array", "items": {"$ref": "#/$defs/User"}},
            "tls": {"anyOf": [{"$ref": "#/$defs/Tls"}, {"type": "null"}]},
            "labels": {"type": "object", "additionalProperties": {"$ref": "#/$defs/Label"}},
        },
        "$defs": {
            "Queue": {"type": "object", "properties": {"dir": {"type": "string"}}},
            "Rule": {"type": "object", "properties": {"per": {"$ref": "#/$defs/Per"}}},
            "Per": {"type": "string", "enum": ["ip", "user"]},
            "User": {"type": "object", "properties": {
                "name": {"type": "string"},
                "rules": {"type": ["array", "null"], "items": {"$ref": "#/$defs/Rule"}},
            }},
            "Tls": {"oneOf": [{"type": "object", "properties": {"cert": {"type": "string"}}}]},
            "Label": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    });
    let expected: BTreeSet<String> = [
        "labels",
        "labels.*.text",
        "queue",
        "queue.dir",
        "rules",
        "rules[].per",
        "tls",
        "tls.cert",
        "users",
        "users[].name",
        "users[].rules",
    ]
    .map(String::from)
    .into();
    assert_eq!(keys(&schema), expected);
}
