//! The config file's JSON Schema (draft 2020-12), generated from the config types with
//! schemars: `postern config-schema` prints it and `config/postern.schema.json` is its
//! committed copy, so that editors validate and complete `postern.yaml`.
//!
//! The derives follow the serde attributes (`deny_unknown_fields` becomes
//! `additionalProperties: false`, a field with a default is not `required`) and the doc
//! comments become descriptions. Types with a hand-written `Deserialize` have a hand-written
//! schema of what it accepts: [`Duration`](crate::config::units::Duration) and
//! [`ByteSize`](crate::config::units::ByteSize) in `units.rs`, and here [`Cidr`] (for
//! `IpNet`) and [`SocketAddress`] (for `SocketAddr`).
//!
//! Patterns carry a `patternErrorMessage` (a keyword VS Code's and `yaml-language-server`'s
//! validators show instead of the pattern; others ignore it).
//!
//! The schema may be looser than the loader (cross-field rules stay in `validate.rs`), but it
//! must never reject a config the loader accepts; `tests/it/schema.rs` checks both ways.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value};

use crate::config::schema::Config;

/// The schema's `$id`: a name, not a place to fetch it from (editors are pointed at the file).
pub const SCHEMA_ID: &str = "urn:postern:config";

/// An IPv4 octet as `ipnet` reads it: up to three digits (leading zeros allowed), below 256.
const NET_OCTET: &str = "(25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])";
/// An IPv4 octet as `std` reads it: no leading zeros, below 256.
const STD_OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9][0-9]|[0-9])";
/// A port as `std` reads it: leading zeros allowed, at most 65535.
const PORT: &str =
    "0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)";
/// An IPv6 address (RFC 4291 2.2) as a pattern, built the way RFC 3986's `IPv6address` rule
/// is: eight groups, or up to `groups` around a `::` (7 for `std`, where `::` stands for at
/// least one group; 8 for `ipnet`, which also reads it as none); the last two groups may be
/// a dotted IPv4 address (`octet`, the parser's).
fn ipv6(octet: &str, groups: usize) -> String {
    const H: &str = "[0-9A-Fa-f]{1,4}";
    let ls32 = format!("({H}:{H}|{octet}(\\.{octet}){{3}})");
    let mut forms = vec![format!("({H}:){{6}}{ls32}")];
    for tail in 0..=groups {
        let tail_form = match tail {
            0 => String::new(),
            1 => H.to_owned(),
            2 => ls32.clone(),
            n => format!("({H}:){{{}}}{ls32}", n - 2),
        };
        // Eight groups before a `::` leave none for it to stand for, whatever the parser.
        let head_form = match (groups - tail).min(7) {
            0 => String::new(),
            1 => format!("({H})?"),
            n => format!("({H}(:{H}){{0,{}}})?", n - 1),
        };
        forms.push(format!("{head_form}::{tail_form}"));
    }
    format!("({})", forms.join("|"))
}

/// The schema of an `IpNet` field: CIDR notation, as `ipnet` parses it (a prefix length is
/// required; `10.0.0.0/8`, `2001:db8::/32`).
#[derive(Debug)]
pub struct Cidr;

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }
    fn schema_id() -> Cow<'static, str> {
        concat!(module_path!(), "::Cidr").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let v4 = format!("{NET_OCTET}(\\.{NET_OCTET}){{3}}/(3[0-2]|[0-2]?[0-9])");
        let v6 = format!("{}/(12[0-8]|1[01][0-9]|0?[0-9]?[0-9])", ipv6(NET_OCTET, 8));
        json_schema!({
            "description": "A network in CIDR notation: an IPv4 or IPv6 address and a prefix \
                length (`10.0.0.0/8`, `192.0.2.7/32`, `2001:db8::/32`).",
            "type": "string",
            "pattern": format!("^({v4}|{v6})$"),
            "patternErrorMessage": "expected CIDR notation such as 10.0.0.0/8 or 2001:db8::/32",
            "examples": ["10.0.0.0/8", "2001:db8::/32"]
        })
    }
}

/// The schema of a `SocketAddr` field: `IP:port` as `std` parses it, an IPv6 address in
/// brackets (`127.0.0.1:2525`, `[::]:587`).
#[derive(Debug)]
pub struct SocketAddress;

impl JsonSchema for SocketAddress {
    fn schema_name() -> Cow<'static, str> {
        "SocketAddress".into()
    }
    fn schema_id() -> Cow<'static, str> {
        concat!(module_path!(), "::SocketAddress").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let v4 = format!("{STD_OCTET}(\\.{STD_OCTET}){{3}}");
        let v6 = format!("\\[{}(%[0-9]+)?\\]", ipv6(STD_OCTET, 7));
        json_schema!({
            "description": "An IP address and port, `IP:port`, an IPv6 address in brackets \
                (`127.0.0.1:2525`, `0.0.0.0:25`, `\"[::]:587\"`). No host names.",
            "type": "string",
            "pattern": format!("^({v4}|{v6}):{PORT}$"),
            "patternErrorMessage": "expected IP:port such as 0.0.0.0:25 or [::]:587",
            "examples": ["127.0.0.1:2525", "[::]:587"]
        })
    }
}

/// The config's JSON Schema, with `$schema` (draft 2020-12), `$id` and `title` set and
/// every named type under `$defs`.
pub fn config_schema() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let mut root = generator.into_root_schema_for::<Config>().to_value();
    if let Value::Object(root) = &mut root {
        root.insert("$id".into(), SCHEMA_ID.into());
        root.insert(
            "title".into(),
            "postern configuration (postern.yaml)".into(),
        );
        accept_null_for_defaults(root);
    }
    tidy(&mut root);
    sorted(root)
}

/// [`config_schema`] as the file is committed: pretty JSON and a final newline.
pub fn config_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&config_schema())
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
    text.push('\n');
    text
}

/// An empty YAML value (`users:` with every entry commented out) is read as null, and the
/// loader takes a null list as empty and a null section as all defaults. So an optional key
/// whose value is a list or a section (an object in `$defs`) also accepts null here.
fn accept_null_for_defaults(root: &mut Map<String, Value>) {
    let sections: Vec<String> = root
        .get("$defs")
        .and_then(Value::as_object)
        .map(|defs| {
            defs.iter()
                .filter(|(_, def)| def.get("properties").is_some())
                .map(|(name, _)| format!("#/$defs/{name}"))
                .collect()
        })
        .unwrap_or_default();
    patch_properties(root, &sections);
    if let Some(Value::Object(defs)) = root.get_mut("$defs") {
        for def in defs.values_mut().filter_map(Value::as_object_mut) {
            patch_properties(def, &sections);
        }
    }
}

/// Applies [`nullable`] to each property of `object` that is not required.
fn patch_properties(object: &mut Map<String, Value>, sections: &[String]) {
    let required: Vec<Value> = object
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(Value::Object(properties)) = object.get_mut("properties") else {
        return;
    };
    for (key, property) in properties.iter_mut() {
        if !required.contains(&Value::String(key.clone())) {
            nullable(property, sections);
        }
    }
}

/// Makes a list, or a reference to a section, also accept null.
fn nullable(property: &mut Value, sections: &[String]) {
    let Value::Object(p) = property else { return };
    match p.get_mut("type") {
        Some(Value::String(t)) if t == "array" => {
            p.insert("type".into(), serde_json::json!(["array", "null"]));
        }
        Some(_) => {}
        None => {
            let Some(Value::String(target)) = p.get("$ref") else {
                return;
            };
            if sections.contains(target) {
                let target = Value::String(target.clone());
                p.remove("$ref");
                p.insert(
                    "anyOf".into(),
                    serde_json::json!([{ "$ref": target }, { "type": "null" }]),
                );
            }
        }
    }
}

/// Tidies what the derive wrote: every `description` as plain text (see [`plain_text`]), no
/// `default: null` (an optional key's real default is in its description, e.g. `queue.
/// delay_warning`: off), nor null members in an object's default, and a `maximum` on a
/// 32-bit integer (schemars only names its `format`, which validators do not check): the
/// loader refuses `4294967296` there.
fn tidy(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("default").is_some_and(Value::is_null) {
                map.remove("default");
            }
            if map.get("format").is_some_and(|f| f == "uint32") {
                map.entry("maximum").or_insert(u32::MAX.into());
            }
            if let Some(Value::Object(default)) = map.get_mut("default") {
                default.retain(|_, v| !v.is_null());
            }
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(text) if key == "description" => *text = plain_text(text),
                    Value::Object(_) | Value::Array(_) if key != "default" => tidy(v),
                    _ => {}
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// A doc comment as a description: the lines of each paragraph joined with spaces (editors
/// wrap it themselves), paragraphs kept apart by a blank line.
fn plain_text(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            unlink(
                &paragraph
                    .split('\n')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Takes out rustdoc link brackets around code spans: `` [`RateLimitRule`] `` becomes
/// `` `RateLimitRule` ``; other brackets (`[::]:587`, `[/db]`) stay.
fn unlink(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[`") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after[1..].find("`]") {
            Some(end) if !after[1..1 + end].contains('`') => {
                out.push_str(&after[..end + 2]);
                rest = &after[end + 3..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The same JSON with every object's keys in sorted order, so the output does not depend on
/// whether some dependency turns on serde_json's `preserve_order`.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_are_joined_and_links_taken_out() {
        assert_eq!(
            plain_text("One [`Duration`]\nand two.\n\nNext\nparagraph."),
            "One `Duration` and two.\n\nNext paragraph."
        );
    }

    #[test]
    fn link_brackets_come_out_of_descriptions() {
        let rows = [
            ("see [`RateLimitRule`].", "see `RateLimitRule`."),
            (
                "([`UpstreamConfig::max_connections`])",
                "(`UpstreamConfig::max_connections`)",
            ),
            ("e.g. `\"[::]:587\"` or [x]", "e.g. `\"[::]:587\"` or [x]"),
            ("`redis://host:port[/db]`", "`redis://host:port[/db]`"),
            ("[`a`] and [`b`]", "`a` and `b`"),
            ("unclosed [`a", "unclosed [`a"),
        ];
        for (input, want) in rows {
            assert_eq!(unlink(input), want, "{input:?}");
        }
    }
}
