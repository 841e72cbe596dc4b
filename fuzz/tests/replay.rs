//! Replays the seed corpus and every recorded regression through the same
//! checks the fuzz targets run, without libFuzzer: `cargo test` in `fuzz/`.
//! A regression input that fails here is a crash that is not fixed yet.

use std::fs;
use std::path::Path;

type Check = fn(&[u8]);

const TARGETS: &[(&str, Check)] = &[
    ("line", postern_fuzz::line::check),
    ("command", postern_fuzz::command::check),
    ("data", postern_fuzz::data::check),
    ("reply_parser", postern_fuzz::reply_parser::check),
    ("sasl", postern_fuzz::sasl::check),
    ("session_raw", postern_fuzz::session::check),
    ("session_alphabet", postern_fuzz::alphabet::check),
    ("headers", postern_fuzz::headers::check),
    ("wrap", postern_fuzz::wrap::check),
    ("proxy_header", postern_fuzz::proxy_header::check),
];

/// Runs every file under `<dir>/<target>/`; returns how many ran.
fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut ran = 0;
    for (target, check) in TARGETS {
        let Ok(entries) = fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("readable dir").path()).collect();
        paths.sort();
        for path in paths {
            let input = fs::read(&path).expect("readable input");
            eprintln!("{}", path.display());
            check(&input);
            ran += 1;
        }
    }
    ran
}

#[test]
fn seeds() {
    assert!(replay("seeds") > 0, "no seeds found");
}

#[test]
fn regressions() {
    replay("regressions");
}
