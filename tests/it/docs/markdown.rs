//! Just enough Markdown for the documentation tests: headings and their GitHub anchors,
//! tables, inline links, all outside fenced code blocks.

use std::collections::BTreeSet;

/// The lines of `text` that are outside fenced code blocks (```` ``` ```` or `~~~`), with
/// their 1-based line numbers.
pub fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => lines.push((i + 1, line)),
            _ => {}
        }
    }
    lines
}

/// A heading: its level (number of `#`) and its text.
pub fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    let rest = line.get(level..)?;
    (1..=6).contains(&level).then_some(())?;
    rest.strip_prefix(' ').map(|text| (level, text.trim()))
}

/// GitHub's anchor for a heading: lowercased, every character but letters, digits, `-`, `_`
/// and spaces dropped, spaces turned into `-`.
pub fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown file defines: one per heading, a repeated one suffixed `-1`, `-2`,
/// ... as GitHub does.
pub fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let Some((_, heading)) = heading(line) else {
            continue;
        };
        let base = slug(heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// The cells of a table row (`| a | b |`), trimmed; `None` for a line that is not one.
pub fn row_cells(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    // A `|` escaped as `\|` (inside a cell's code span) does not split cells.
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut()?.push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut()?.push(c),
        }
    }
    Some(cells.into_iter().map(|c| c.trim().to_owned()).collect())
}

/// Whether a row is a table's delimiter row (`|---|---|`).
pub fn is_delimiter(cells: &[String]) -> bool {
    cells
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
}

/// The text of a cell that is exactly one code span (`` `x` ``).
pub fn code_cell(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

/// A table found in a document: the section it is in, its header cells and its body rows,
/// each with its line number.
#[derive(Debug)]
pub struct Table {
    /// The nearest level-2 heading above the table.
    pub section: String,
    /// The header row's cells.
    pub header: Vec<String>,
    /// The body rows: line number and cells.
    pub rows: Vec<(usize, Vec<String>)>,
}

/// Every table of a document.
pub fn tables(text: &str) -> Vec<Table> {
    let mut tables: Vec<Table> = Vec::new();
    let mut section = String::new();
    let mut in_table = false;
    for (number, line) in prose_lines(text) {
        if let Some((level, text)) = heading(line)
            && level <= 2
        {
            section = text.to_owned();
        }
        let Some(cells) = row_cells(line) else {
            in_table = false;
            continue;
        };
        if !in_table {
            in_table = true;
            tables.push(Table {
                section: section.clone(),
                header: cells,
                rows: Vec::new(),
            });
        } else if !is_delimiter(&cells)
            && let Some(table) = tables.last_mut()
        {
            table.rows.push((number, cells));
        }
    }
    tables
}

/// The inline link targets (`[text](target)`) of a document's prose, with line numbers; code
/// spans are left out.
pub fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in prose_lines(text) {
        let prose = without_code_spans(line);
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            found.push((number, target.to_owned()));
            rest = &after[end..];
        }
    }
    found
}

/// A line with its code spans (`` `...` ``) blanked out.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else if in_code {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("Shaping to the upstream account's caps"),
        "shaping-to-the-upstream-accounts-caps"
    );
    assert_eq!(slug("`upstreams[].auth.oauth2`"), "upstreamsauthoauth2");
    assert_eq!(slug("`rate_limits[]`"), "rate_limits");
    assert_eq!(
        slug("Behind a load balancer (PROXY protocol)"),
        "behind-a-load-balancer-proxy-protocol"
    );
    let text = "# Redis\n```\n# not a heading\n```\n## Redis\n## `redis`\n";
    let expected: BTreeSet<String> = ["redis", "redis-1", "redis-2"].map(String::from).into();
    assert_eq!(anchors(text), expected);
}

#[test]
fn links_skip_code() {
    let text = "see [a](x.md#b) and `[c](d)`\n```\n[e](f)\n```\n[`g`](h/)\n";
    let got: Vec<String> = links(text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(got, ["x.md#b", "h/"]);
}
