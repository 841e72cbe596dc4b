//! The command line (issue 10, section 7), checked from its definition and through the real
//! binary: every subcommand (whatever subcommands exist: the tree is walked, not listed) and
//! every argument has help text, clap's own consistency checks pass, each `--help` runs;
//! the bash completion script, sourced in a real bash, registers and completes; the zsh and
//! fish scripts pass those shells' syntax checks (fish also completes); the man pages render
//! under mandoc and groff without a warning and name every subcommand. Errors: cli/errors.rs.

mod errors;

use std::path::Path;
use std::process::{Command, Output};

use crate::binary::BIN;

/// The subcommand paths of `cmd` below `prefix`, depth first (`["queue", "drain"]`), without
/// clap's generated `help` subcommand.
fn paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_owned());
        out.push(path.clone());
        paths(sub, &path, out);
    }
}

/// Every subcommand path of postern, from its definition.
fn all_paths() -> Vec<Vec<String>> {
    let mut cmd = postern::cli::command();
    cmd.build();
    let mut out = Vec::new();
    paths(&cmd, &[], &mut out);
    out
}

/// The subcommand at `path`.
fn find<'a>(root: &'a clap::Command, path: &[String]) -> &'a clap::Command {
    path.iter().fold(root, |cmd, name| {
        cmd.find_subcommand(name)
            .unwrap_or_else(|| panic!("no subcommand {name}"))
    })
}

/// Runs `program args`, panicking with the Debian package to install when it is missing.
fn tool(program: &str, package: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (Debian package {package}) must be installed: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `postern args`, which must succeed; its standard output.
fn postern(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "postern {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_subcommand_and_argument_has_help() {
    let mut root = postern::cli::command();
    root.build();
    let paths = all_paths();
    // The subcommands this part documents are there (others may be added beside them).
    for want in [
        "run",
        "check-config",
        "queue drain",
        "probe upstream",
        "completions",
        "man",
    ] {
        assert!(
            paths.iter().any(|p| p.join(" ") == want),
            "no {want} in {paths:?}"
        );
    }
    let mut missing = Vec::new();
    let mut commands = vec![(vec![], &root)];
    commands.extend(paths.iter().map(|p| (p.clone(), find(&root, p))));
    for (path, cmd) in commands {
        let name = format!("postern {}", path.join(" "));
        let about = cmd.get_about().map(ToString::to_string).unwrap_or_default();
        if about.trim().is_empty() {
            missing.push(format!("{name}: no about"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            if help.trim().is_empty() {
                missing.push(format!("{name}: argument {id} has no help"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn clap_finds_the_definition_consistent() {
    postern::cli::command().debug_assert();
}

/// Each subcommand's `--help` (and the top level's) exits 0 with its usage line and its
/// about text.
#[test]
fn every_help_runs() {
    let root = postern::cli::command();
    let mut all = vec![vec![]];
    all.extend(all_paths());
    for path in all {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = postern(&args);
        let usage = format!("Usage: postern {}", path.join(" "));
        assert!(out.contains(usage.trim_end()), "{args:?}:\n{out}");
        let about = find(&root, &path).get_about().unwrap().to_string();
        assert!(
            out.contains(about.trim_end_matches('.')),
            "{args:?}:\n{out}"
        );
    }
}

/// The options a completion must offer after `line` (bash, run in a real bash).
fn bash_complete(script: &Path, line: &str) -> Vec<String> {
    // COMP_WORDS as bash would split the line; the word being completed is the last one
    // (empty after a trailing space). `_postern` takes: command, current word, previous word.
    let program = format!(
        r#"source '{}' || exit 3
complete -p postern || exit 4
read -r -a COMP_WORDS <<< '{line}'
[[ '{line}' == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
_postern postern "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf 'reply:%s\n' "${{COMPREPLY[@]}}""#,
        script.display()
    );
    let out = tool("bash", "bash", &["--norc", "--noprofile", "-c", &program]);
    assert!(out.status.success(), "{line:?}: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("-F _postern postern"),
        "complete -p postern: {stdout}"
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("reply:"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_registers_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("postern.bash");
    std::fs::write(&script, postern(&["completions", "bash"])).unwrap();
    let table: [(&str, &[&str]); 4] = [
        ("postern qu", &["queue"]),
        ("postern queue dr", &["drain"]),
        ("postern queue drain --dead", &["--deadline"]),
        ("postern probe ", &["upstream"]),
    ];
    for (line, want) in table {
        let got = bash_complete(&script, line);
        for w in want {
            assert!(got.iter().any(|g| g == w), "{line:?}: {got:?}");
        }
    }
    // Every top-level subcommand is offered after `postern `.
    let got = bash_complete(&script, "postern ");
    let root = postern::cli::command();
    for sub in root.get_subcommands() {
        assert!(got.iter().any(|g| g == sub.get_name()), "{got:?}");
    }
}

#[test]
fn zsh_completion_parses_and_defines_its_function() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("_postern");
    std::fs::write(&script, postern(&["completions", "zsh"])).unwrap();
    let path = script.to_str().unwrap();
    let out = tool("zsh", "zsh", &["-n", path]);
    assert!(out.status.success(), "zsh -n: {}", text(&out));
    let load = format!(
        "autoload -U compinit && compinit -u -D && source '{path}' && print -r -- ${{+functions[_postern]}}"
    );
    let out = tool("zsh", "zsh", &["-f", "-c", &load]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{}",
        text(&out)
    );
}

#[test]
fn fish_completion_parses_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("postern.fish");
    std::fs::write(&script, postern(&["completions", "fish"])).unwrap();
    let path = script.to_str().unwrap();
    let out = tool("fish", "fish", &["--no-execute", path]);
    assert!(out.status.success(), "fish --no-execute: {}", text(&out));
    let program =
        format!("source '{path}'; complete -C 'postern qu'; complete -C 'postern queue dr'");
    let out = tool("fish", "fish", &["--no-config", "-c", &program]);
    assert!(out.status.success(), "{}", text(&out));
    let got = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = got.lines().filter_map(|l| l.split('\t').next()).collect();
    assert!(
        words.contains(&"queue") && words.contains(&"drain"),
        "{got}"
    );
}

/// elvish and powershell are not installed here: their scripts are only checked to name
/// every subcommand, and to register themselves the way that shell's completers do.
#[test]
fn every_shell_gets_a_script() {
    let registers = [
        ("elvish", "set edit:completion:arg-completer[postern] = "),
        (
            "powershell",
            "Register-ArgumentCompleter -Native -CommandName 'postern' ",
        ),
    ];
    for (shell, registration) in registers {
        let script = postern(&["completions", shell]);
        assert!(
            script.contains(registration),
            "{shell}: no {registration:?}"
        );
        for path in all_paths() {
            let last = path.last().unwrap();
            assert!(script.contains(last.as_str()), "{shell}: no {last}");
            // Both name each subcommand's completions by its whole path.
            let whole = format!("'postern;{}'", path.join(";"));
            assert!(script.contains(&whole), "{shell}: no {whole}");
        }
    }
}

/// `postern man --dir` writes postern.1 and a page per subcommand path; each renders
/// without a warning in mandoc's linter and in groff; `postern man` prints postern.1.
#[test]
fn man_pages_render_cleanly_and_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let mandir = dir.path().join("man1");
    let out = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(&mandir)
        .env("SOURCE_DATE_EPOCH", "1764892800")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8(out.stdout).unwrap();
    let mut want = vec!["postern".to_owned()];
    want.extend(
        all_paths()
            .iter()
            .map(|p| format!("postern-{}", p.join("-"))),
    );
    let mut files: Vec<String> = std::fs::read_dir(&mandir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = want.iter().map(|w| format!("{w}.1")).collect();
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(listed.lines().count(), expected.len(), "{listed}");
    for name in &want {
        let page = mandir.join(format!("{name}.1"));
        let roff = std::fs::read_to_string(&page).unwrap();
        let title = format!(".TH {} 1 2025-12-05 ", name.to_uppercase());
        assert!(roff.contains(&title), "{name}: no {title:?}");
        let page = page.to_str().unwrap();
        let lint = tool("mandoc", "mandoc", &["-T", "lint", "-W", "warning", page]);
        assert!(
            lint.status.success() && text(&lint).is_empty(),
            "mandoc: {}",
            text(&lint)
        );
        let groff = tool("groff", "groff-base", &["-man", "-ww", "-z", page]);
        assert!(
            groff.status.success() && text(&groff).is_empty(),
            "groff: {}",
            text(&groff)
        );
    }
    // postern(1) names every top-level subcommand's page, and is what `postern man` prints.
    let top = std::fs::read_to_string(mandir.join("postern.1")).unwrap();
    for sub in postern::cli::command().get_subcommands() {
        let page = format!("postern\\-{}(1)", sub.get_name().replace('-', "\\-"));
        assert!(top.contains(&page), "postern.1 has no {page}");
    }
    let out = Command::new(BIN)
        .arg("man")
        .env("SOURCE_DATE_EPOCH", "1764892800")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), top);
    // The rendered text, as man shows it: the drain page's sections and an example.
    let drain = mandir.join("postern-queue-drain.1");
    let shown = tool("mandoc", "mandoc", &["-T", "utf8", drain.to_str().unwrap()]);
    let shown = plain(&String::from_utf8_lossy(&shown.stdout));
    let sections = [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
    ];
    for want in sections
        .iter()
        .chain(&["[default: 10m]", "postern queue drain --resume"])
    {
        assert!(shown.contains(want), "no {want:?} in:\n{shown}");
    }
}

/// docs/command-line.md has a section for every subcommand, and its install lines are
/// those the help's examples give.
#[test]
fn the_guide_covers_every_subcommand() {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/command-line.md"))
            .unwrap();
    let headings: Vec<&str> = guide.lines().filter(|l| l.starts_with("### ")).collect();
    for sub in postern::cli::command().get_subcommands() {
        let name = format!("`{}", sub.get_name());
        assert!(
            headings.iter().any(|h| h.contains(&name)),
            "docs/command-line.md: no section for {name}` in {headings:?}"
        );
    }
    for line in [
        "postern completions zsh > /usr/local/share/zsh/site-functions/_postern",
        "postern completions fish > /etc/fish/completions/postern.fish",
        "postern man --dir /usr/local/share/man/man1",
    ] {
        assert!(guide.contains(line), "docs/command-line.md: no {line:?}");
        let helps = [
            &["--help"][..],
            &["completions", "--help"],
            &["man", "--help"],
        ];
        assert!(
            helps.iter().any(|args| postern(args).contains(line)),
            "no help example {line:?}"
        );
    }
}

/// Formatter output without its overstrikes (`N\x08N` for bold, `_\x08x` for underline).
fn plain(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars.get(i + 1) == Some(&'\u{8}') {
            i += 2;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Every subcommand's short help is one short sentence (what `postern --help` lists), and
/// its long help has the exit status and examples (what the man page's EXIT STATUS and
/// EXAMPLES come from).
#[test]
fn every_subcommand_has_a_short_about_exit_status_and_examples() {
    let mut root = postern::cli::command();
    root.build();
    let mut wrong = Vec::new();
    for path in all_paths() {
        let cmd = find(&root, &path);
        let name = format!("postern {}", path.join(" "));
        let about = cmd.get_about().map(ToString::to_string).unwrap_or_default();
        if about.len() > 120 || about.trim_end_matches('.').contains(". ") {
            wrong.push(format!(
                "{name}: about is not one short sentence: {about:?}"
            ));
        }
        let long = cmd
            .get_after_long_help()
            .map(ToString::to_string)
            .unwrap_or_default();
        for section in ["Exit status:\n", "Examples:\n"] {
            if !long.contains(section) {
                wrong.push(format!("{name}: no {section:?} in its long help"));
            }
        }
        // Help is printed as written (no Markdown): a backquote shows as one.
        let mut texts = vec![about, long];
        texts.extend(cmd.get_long_about().map(ToString::to_string));
        texts.extend(
            cmd.get_arguments()
                .filter_map(|a| a.get_long_help().or(a.get_help()))
                .map(ToString::to_string),
        );
        for text in texts.iter().filter(|t| t.contains('`')) {
            wrong.push(format!("{name}: a backquote in its help: {text:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
