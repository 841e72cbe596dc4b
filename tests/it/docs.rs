//! The admin's guide (README.md and docs/) against the code it documents: every configuration
//! key of the committed JSON Schema is in docs/configuration.md and every key documented
//! there exists; every metric and every log event (with its fields) is in
//! docs/observability.md and nothing more; every refusal reason (with its reply codes) is in
//! docs/policy.md and nothing more; every relative link and `#anchor` resolves.

mod markdown;
mod schema_keys;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use markdown::{Table, code_cell};

use crate::harness::tools::repo;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Fails with the keys one side has and the other lacks, both ways.
fn assert_same(
    what: &str,
    code: &BTreeSet<String>,
    code_is: &str,
    docs: &BTreeSet<String>,
    doc: &str,
) {
    let undocumented: Vec<&String> = code.difference(docs).collect();
    let unknown: Vec<&String> = docs.difference(code).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "{doc} and {code_is} disagree on {what}:\n  missing from {doc}: {undocumented:?}\n  \
         in {doc} but not in {code_is}: {unknown:?}"
    );
}

/// The documented configuration keys: the first cell of every row of every table whose header
/// starts with `key`, which must be one key path in backticks, under a heading that names
/// the section (`` ## `listeners[]` `` holds `listeners[].…` keys; "Top level" holds keys
/// without a dot). A key documented twice is an error too.
fn documented_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for table in markdown::tables(text)
        .iter()
        .filter(|t| t.header.first().is_some_and(|h| h == "key"))
    {
        for (line, cells) in &table.rows {
            let cell = cells.first().map_or("", String::as_str);
            let key = code_cell(cell).unwrap_or_else(|| {
                panic!("docs/configuration.md:{line}: a key cell must be one key in backticks, not {cell:?}")
            });
            assert_section(table, *line, key);
            assert!(
                keys.insert(key.to_owned()),
                "docs/configuration.md:{line}: {key} is documented twice"
            );
        }
    }
    keys
}

fn assert_section(table: &Table, line: usize, key: &str) {
    let section = &table.section;
    if section == "Top level" {
        assert!(
            !key.contains(['.', '[']),
            "docs/configuration.md:{line}: {key} is under \"Top level\" but is not a top-level key"
        );
        return;
    }
    let path = code_cell(section).unwrap_or_else(|| {
        panic!("docs/configuration.md:{line}: a key table must be under a heading naming its section in backticks (or \"Top level\"), not {section:?}")
    });
    assert!(
        key.starts_with(&format!("{path}.")),
        "docs/configuration.md:{line}: {key} is under the heading `{path}`, which is another section"
    );
}

/// docs/configuration.md documents exactly the keys of `config/postern.schema.json` (generated
/// from the config types by `postern config-schema`): a new field needs its row, and a row
/// whose key was renamed or removed fails.
#[test]
fn configuration_reference_documents_every_key() {
    let schema: serde_json::Value = serde_json::from_str(&read("config/postern.schema.json"))
        .expect("config/postern.schema.json is JSON");
    let code = schema_keys::keys(&schema);
    assert!(code.len() > 100, "the schema walk found only {code:?}");
    let docs = documented_keys(&read("docs/configuration.md"));
    assert_same(
        "the configuration keys",
        &code,
        "config/postern.schema.json",
        &docs,
        "docs/configuration.md",
    );
}

/// The metric names the code declares: every `postern_*` spec and every `process_*` one.
fn declared_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (file, prefix) in [
        ("src/telemetry/metrics/spec.rs", "\"postern_"),
        ("src/telemetry/metrics/process.rs", "\"process_"),
    ] {
        let text = read(file);
        for (at, _) in text.match_indices(prefix) {
            let name: String = text[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// The metrics table of docs/observability.md (header `name | type | labels | meaning`) names
/// exactly the declared metrics.
#[test]
fn metrics_reference_matches_the_code() {
    let text = read("docs/observability.md");
    let tables = markdown::tables(&text);
    let table = tables
        .iter()
        .find(|t| {
            t.header.first().is_some_and(|h| h == "name")
                && t.header.get(1).is_some_and(|h| h == "type")
        })
        .expect("docs/observability.md has a metrics table (| name | type | labels | meaning |)");
    let documented: BTreeSet<String> = table
        .rows
        .iter()
        .map(|(line, cells)| {
            let cell = cells.first().map_or("", String::as_str);
            code_cell(cell)
                .unwrap_or_else(|| {
                    panic!(
                        "docs/observability.md:{line}: a metric cell must be its name in backticks"
                    )
                })
                .to_owned()
        })
        .collect();
    let declared = declared_metrics();
    assert!(declared.len() > 40, "found only {declared:?}");
    assert_same(
        "the metrics",
        &declared,
        "src/telemetry/metrics",
        &documented,
        "docs/observability.md",
    );
}

/// Each kind of mail-log line in src/telemetry/events.rs (`Event::X => "name"`) with the
/// fields its `tracing` calls write (`event = Event::X.as_str(), field, field = ...`).
fn declared_events() -> BTreeMap<String, BTreeSet<String>> {
    let text = read("src/telemetry/events.rs");
    let mut names = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some((variant, name)) = line
            .strip_prefix("Event::")
            .and_then(|l| l.split_once(" => \""))
        {
            names.insert(variant.to_owned(), name.trim_end_matches("\",").to_owned());
        }
    }
    let mut events: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("event = Event::") {
            let variant = rest.trim_end_matches(".as_str(),");
            let name = names
                .get(variant)
                .unwrap_or_else(|| panic!("no name for Event::{variant}"));
            events.entry(name.clone()).or_default();
            current = Some(name.clone());
        } else if let Some(event) = &current {
            // Field lines (`name,` or `name = value,` or `name = %value,`) until the format string.
            let field: String = line
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let after = &line[field.len()..];
            if !field.is_empty() && (after == "," || after.starts_with(" =")) {
                events.entry(event.clone()).or_default().insert(field);
            } else {
                current = None;
            }
        }
    }
    assert_eq!(
        names.values().collect::<BTreeSet<_>>(),
        events.keys().collect::<BTreeSet<_>>(),
        "every Event variant is logged somewhere in events.rs"
    );
    events
}

/// The log table of docs/observability.md (header `` `event` | when | fields ``) has one row
/// per kind of mail-log line, no other, and each row names every field that kind carries.
#[test]
fn log_reference_matches_the_code() {
    let text = read("docs/observability.md");
    let tables = markdown::tables(&text);
    let table = tables
        .iter()
        .find(|t| t.header.first().is_some_and(|h| h == "`event`"))
        .expect("docs/observability.md has a log table (| `event` | when | fields |)");
    let declared = declared_events();
    let mut documented = BTreeSet::new();
    for (line, cells) in &table.rows {
        let event = code_cell(cells.first().map_or("", String::as_str)).unwrap_or_else(|| {
            panic!("docs/observability.md:{line}: an event cell must be its name in backticks")
        });
        documented.insert(event.to_owned());
        let row = cells.join(" | ");
        for field in declared.get(event).into_iter().flatten() {
            assert!(
                row.contains(&format!("`{field}`")),
                "docs/observability.md:{line}: the `{event}` row does not name its field `{field}`"
            );
        }
    }
    let names: BTreeSet<String> = declared.keys().cloned().collect();
    assert_same(
        "the log events",
        &names,
        "src/telemetry/events.rs",
        &documented,
        "docs/observability.md",
    );
}

/// README.md and docs/*.md.
fn guide_files() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 10, "docs/ holds {docs:?}");
    let mut files = vec![repo("README.md")];
    files.extend(docs);
    files
}

/// Every table row of the guide has as many cells as its header (an unescaped `|` inside a
/// cell would split it and shift the columns on GitHub).
#[test]
fn every_table_is_well_formed() {
    let mut bad = Vec::new();
    for file in guide_files() {
        let text = std::fs::read_to_string(&file).expect("readable");
        for table in markdown::tables(&text) {
            for (line, cells) in &table.rows {
                if cells.len() != table.header.len() {
                    bad.push(format!(
                        "{}:{line}: {} cells under a header of {}",
                        file.display(),
                        cells.len(),
                        table.header.len()
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "malformed tables:\n{}", bad.join("\n"));
}

/// README.md and every docs/*.md: each relative link names a file or directory of the
/// repository, and each `#anchor` a heading of the file it points into.
#[test]
fn every_link_and_anchor_resolves() {
    let files = guide_files();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        for (line, target) in markdown::links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            if let Err(problem) = resolve(file, &target) {
                broken.push(format!("{}:{line}: ({target}) {problem}", file.display()));
            }
        }
    }
    assert!(checked > 100, "only {checked} links were found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

fn resolve(from: &Path, target: &str) -> Result<(), String> {
    let (path, anchor) = target
        .split_once('#')
        .map_or((target, None), |(p, a)| (p, Some(a)));
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        from.parent().expect("in a directory").join(path)
    };
    if !file.exists() {
        return Err(format!("{} does not exist", file.display()));
    }
    let Some(anchor) = anchor else { return Ok(()) };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("not a readable file for an anchor: {e}"))?;
    if markdown::anchors(&text).contains(anchor) {
        Ok(())
    } else {
        Err(format!(
            "no heading with the anchor #{anchor} in {}",
            file.display()
        ))
    }
}

/// The reply codes (`NNN X.Y.Z`) a text names, in order.
fn reply_codes(text: &str) -> Vec<String> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '`')
        .filter(|w| !w.is_empty())
        .collect();
    let is_code = |w: &str| w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit());
    let is_enhanced = |w: &str| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    words
        .windows(2)
        .filter(|w| is_code(w[0]) && is_enhanced(w[1]))
        .map(|w| format!("{} {}", w[0], w[1]))
        .collect()
}

/// Each refusal reason of src/reason.rs (`Reason::X => "name"`) with the reply codes its
/// variant's doc comment names.
fn declared_reasons() -> BTreeMap<String, BTreeSet<String>> {
    let text = read("src/reason.rs");
    let enum_body = text
        .split_once("pub enum Reason {")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .map(|(body, _)| body)
        .expect("src/reason.rs declares `pub enum Reason { ... }`");
    let mut codes_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut comment = String::new();
    for line in enum_body.lines().map(str::trim) {
        if let Some(doc) = line.strip_prefix("///") {
            comment.push_str(doc);
            comment.push(' ');
        } else if let Some(variant) = line.strip_suffix(',') {
            codes_of.insert(
                variant.to_owned(),
                reply_codes(&comment).into_iter().collect(),
            );
            comment.clear();
        }
    }
    let mut reasons = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some((variant, name)) = line
            .strip_prefix("Reason::")
            .and_then(|l| l.split_once(" => \""))
        {
            let codes = codes_of
                .get(variant)
                .unwrap_or_else(|| panic!("Reason::{variant} is not in the enum"));
            reasons.insert(name.trim_end_matches("\",").to_owned(), codes.clone());
        }
    }
    assert_eq!(
        reasons.len(),
        codes_of.len(),
        "every Reason variant has a name in as_str"
    );
    reasons
}

/// The refusal-reason table of docs/policy.md (header `reason | reply`) has one row per
/// reason of src/reason.rs, no other, and each row gives the reply codes that reason's doc
/// comment names.
#[test]
fn refusal_reasons_match_the_code() {
    let text = read("docs/policy.md");
    let tables = markdown::tables(&text);
    let table = tables
        .iter()
        .find(|t| t.header == ["reason", "reply"])
        .expect("docs/policy.md has a refusal-reason table (| reason | reply |)");
    let declared = declared_reasons();
    assert!(declared.len() > 20, "found only {declared:?}");
    let mut documented = BTreeSet::new();
    for (line, cells) in &table.rows {
        let reason = code_cell(cells.first().map_or("", String::as_str)).unwrap_or_else(|| {
            panic!("docs/policy.md:{line}: a reason cell must be its name in backticks")
        });
        documented.insert(reason.to_owned());
        let Some(codes) = declared.get(reason) else {
            continue;
        };
        let row: BTreeSet<String> = reply_codes(&cells.join(" ")).into_iter().collect();
        assert_eq!(
            &row, codes,
            "docs/policy.md:{line}: the `{reason}` row gives other reply codes than src/reason.rs"
        );
    }
    let names: BTreeSet<String> = declared.keys().cloned().collect();
    assert_same(
        "the refusal reasons",
        &names,
        "src/reason.rs",
        &documented,
        "docs/policy.md",
    );
}
