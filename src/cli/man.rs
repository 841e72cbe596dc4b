//! `postern completions SHELL` (clap_complete) and `postern man [--dir DIR]` (clap_mangen):
//! both made from the command line definition itself, so they cannot drift from it.
//!
//! A page is clap_mangen's NAME, SYNOPSIS, DESCRIPTION, OPTIONS and SUBCOMMANDS, then the
//! sections of the subcommand's long help (help.rs: "Exit status:" becomes EXIT STATUS,
//! "Examples:" EXAMPLES), then SEE ALSO naming the parent and child pages.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use crate::cli::fail;
use crate::clock::Clock;

/// The manual section of every page.
const SECTION: &str = "1";

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = super::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "postern", &mut out);
    super::write_bytes(&out);
    ExitCode::SUCCESS
}

/// Prints postern(1), or writes every page into `dir`.
pub fn run(dir: Option<&Path>) -> ExitCode {
    if let Err(e) = source_date_epoch() {
        return fail(e);
    }
    let Some(dir) = dir else {
        let mut page = Vec::new();
        let root = built();
        return match render(&root, None, &mut page) {
            Ok(()) => {
                super::write_bytes(&page);
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("cannot render the man page: {e}")),
        };
    };
    if dir.exists() && !dir.is_dir() {
        return fail(format!(
            "{} is not a directory; pass --dir with the directory to write the pages into \
             (e.g. /usr/local/share/man/man1)",
            dir.display()
        ));
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        return fail(format!(
            "cannot create {}: {e}; pass --dir with a directory you may write (or run as root)",
            dir.display()
        ));
    }
    match write_all(dir) {
        Ok(paths) => {
            for p in paths {
                say!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err((path, e)) => fail(format!(
            "cannot write {}: {e}; pass --dir with a directory you may write (or run as root)",
            path.display()
        )),
    }
}

/// The definition, built (so each subcommand knows its `postern-queue-drain` name), without
/// clap's `help` subcommand, which has no page.
fn built() -> clap::Command {
    let mut cmd = super::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The pages: file name (`postern-queue-drain.1`) and roff text, the command's first.
pub fn pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let root = built();
    let mut out = Vec::new();
    collect(&root, None, &mut out)?;
    Ok(out)
}

fn collect(
    cmd: &clap::Command,
    parent: Option<&str>,
    out: &mut Vec<(String, Vec<u8>)>,
) -> io::Result<()> {
    let mut page = Vec::new();
    render(cmd, parent, &mut page)?;
    out.push((format!("{}.{SECTION}", page_name(cmd)), page));
    let name = page_name(cmd).to_owned();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, Some(&name), out)?;
    }
    Ok(())
}

/// Writes every page into `dir`; the paths written, or the one that failed.
fn write_all(dir: &Path) -> Result<Vec<PathBuf>, (PathBuf, io::Error)> {
    let pages = pages().map_err(|e| (dir.to_owned(), e))?;
    let mut written = Vec::new();
    for (file, text) in pages {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| (path.clone(), e))?;
        written.push(path);
    }
    Ok(written)
}

/// `postern-queue-drain` for `postern queue drain`.
fn page_name(cmd: &clap::Command) -> &str {
    cmd.get_display_name().unwrap_or_else(|| cmd.get_name())
}

/// One page: clap_mangen's sections without its EXTRA, then ours, with roff's apostrophe
/// preamble once at the top (each part rendered separately brings its own).
fn render(cmd: &clap::Command, parent: Option<&str>, out: &mut dyn Write) -> io::Result<()> {
    let mut body = Vec::new();
    parts(cmd, parent, &mut body)?;
    out.write_all(PREAMBLE.as_bytes())?;
    out.write_all(tidy(&String::from_utf8_lossy(&body)).as_bytes())
}

/// roff's definition of `\*(Aq`, the apostrophe in text (the `roff` crate's preamble).
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

fn parts(cmd: &clap::Command, parent: Option<&str>, w: &mut dyn Write) -> io::Result<()> {
    let after = cmd.get_after_long_help().map(ToString::to_string);
    let bare = cmd.clone().after_long_help(None::<&str>);
    let man = Man::new(bare)
        .title(page_name(cmd).to_uppercase())
        .section(SECTION)
        .date(date())
        .manual("postern manual")
        .source(format!("postern {}", env!("CARGO_PKG_VERSION")));
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(w)?;
    }
    let mut roff = Roff::new();
    if let Some(after) = after {
        sections(&after, &mut roff);
    }
    see_also(cmd, parent, &mut roff);
    roff.to_writer(w)
}

/// The sections of a long help text (help.rs): each heading becomes a section, its lines a
/// block kept as written (an example is copied, not reflowed).
fn sections(text: &str, roff: &mut Roff) {
    for block in text.split("\n\n") {
        let mut lines = block.lines();
        let Some(heading) = lines.next() else {
            continue;
        };
        roff.control(
            "SH",
            [heading.trim_end_matches(':').to_uppercase().as_str()],
        );
        roff.control("nf", []);
        for line in lines {
            roff.text([roman(line.strip_prefix("  ").unwrap_or(line))]);
        }
        roff.control("fi", []);
    }
}

/// SEE ALSO: the parent page and the subcommands' pages.
fn see_also(cmd: &clap::Command, parent: Option<&str>, roff: &mut Roff) {
    let name = page_name(cmd);
    let mut refs: Vec<String> = parent.map(str::to_owned).into_iter().collect();
    refs.extend(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("{name}-{}", s.get_name())),
    );
    if refs.is_empty() {
        return;
    }
    roff.control("SH", ["SEE ALSO"]);
    let last = refs.len() - 1;
    for (i, r) in refs.iter().enumerate() {
        let sep = if i == last { "" } else { "," };
        roff.text([bold(r.as_str()), roman(format!("({SECTION}){sep}"))]);
    }
}

/// roff's text with every apostrophe preamble taken off, and clap_mangen's blank line
/// between two line breaks (before a list of possible values) made one vertical space, which
/// formatters take without a warning.
fn tidy(text: &str) -> String {
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with(".ie \\n(.g .ds Aq") && !l.starts_with(".el .ds Aq"))
        .map(|l| format!("{l}\n"))
        .collect();
    kept.replace("\n.br\n\n.br\n", "\n.sp\n")
}

/// The page date, YYYY-MM-DD: that of `SOURCE_DATE_EPOCH` when set (reproducible builds,
/// as packagers set it), else today's (UTC).
fn date() -> String {
    let secs = source_date_epoch()
        .ok()
        .flatten()
        .unwrap_or_else(|| Clock::new().unix());
    let (y, m, d) = civil(secs / 86_400);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `SOURCE_DATE_EPOCH`'s seconds when set (and not empty); an error when it is not a number of
/// seconds, which the reproducible-builds specification says must not be ignored.
fn source_date_epoch() -> Result<Option<u64>, String> {
    let Some(value) = std::env::var_os("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match value.to_str().map(|v| v.trim().parse::<u64>()) {
        Some(Ok(secs)) => Ok(Some(secs)),
        _ => Err(format!(
            "SOURCE_DATE_EPOCH={}: not a number of seconds since 1970-01-01 UTC; set it to \
             one (e.g. $(git log -1 --format=%ct)) or unset it for today's date",
            value.to_string_lossy()
        )),
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// civil_from_days, for days >= 0).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every long help text has the shape `sections` relies on: blocks of a heading ending
    /// in `:` at the margin and lines indented by at least two spaces.
    #[test]
    fn every_long_help_has_headed_sections() {
        fn check(cmd: &clap::Command) {
            if let Some(text) = cmd.get_after_long_help() {
                for block in text.to_string().split("\n\n") {
                    let mut lines = block.lines();
                    let heading = lines.next().unwrap_or_default();
                    assert!(
                        heading.ends_with(':') && !heading.starts_with(' '),
                        "{}: heading {heading:?}",
                        cmd.get_name()
                    );
                    for line in lines {
                        assert!(line.starts_with("  "), "{}: {line:?}", cmd.get_name());
                        assert!(line.len() < 80, "{}: too wide: {line:?}", cmd.get_name());
                    }
                }
            }
            cmd.get_subcommands().for_each(check);
        }
        check(&built());
    }

    #[test]
    fn the_preamble_is_dropped_once_rendered() {
        let mut roff = Roff::new();
        roff.control("SH", ["EXAMPLES"]).text([roman("it's")]);
        let text = tidy(&roff.render());
        assert!(text.starts_with(".SH EXAMPLES\n"), "{text}");
        assert!(!text.contains(".ds Aq"), "{text}");
    }

    #[test]
    fn civil_dates() {
        let table = [
            (0, (1970, 1, 1)),
            (59, (1970, 3, 1)),
            (11_016, (2000, 2, 29)),
            (20_792, (2026, 12, 5)),
            (20_819, (2027, 1, 1)),
        ];
        for (days, want) in table {
            assert_eq!(civil(days), want, "day {days}");
        }
    }
}
