//! The escapes of the dialog scripts' `C:` and `R:` lines. Plain std, so that both runners
//! include this one file: the in-process one (`src/smtp/dialog_tests.rs`) and the one over
//! TCP (`tests/it/dialogs.rs`).

/// Expands `\r \n \t \0 \\` and `${N*c}` (c repeated N times).
pub fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if let Some(body) = rest.strip_prefix("${") {
            let end = body
                .find('}')
                .unwrap_or_else(|| panic!("unclosed ${{ in {s}"));
            let (n, ch) = body[..end]
                .split_once('*')
                .unwrap_or_else(|| panic!("bad repeat {s}"));
            let n: usize = n.parse().unwrap_or_else(|_| panic!("bad count in {s}"));
            out.extend(ch.as_bytes().repeat(n));
            rest = &body[end + 1..];
            continue;
        }
        if c == '\\' {
            let e = rest[1..].chars().next().unwrap_or('\\');
            out.extend_from_slice(match e {
                'r' => b"\r",
                'n' => b"\n",
                't' => b"\t",
                '0' => b"\0",
                _ => b"\\",
            });
            rest = &rest[1 + e.len_utf8()..];
            continue;
        }
        let mut tmp = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
        rest = &rest[c.len_utf8()..];
    }
    out
}
