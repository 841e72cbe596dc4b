//! Stamps the build with its git commit (`postern --version`, `postern_build_info`).

use std::process::Command;

fn main() {
    // A build without the repository's .git (a container image build) is told the commit
    // by the environment (the Dockerfile's POSTERN_GIT_COMMIT build argument).
    println!("cargo:rerun-if-env-changed=POSTERN_GIT_COMMIT");
    let given = std::env::var("POSTERN_GIT_COMMIT")
        .ok()
        .map(|s| s.trim().chars().take(12).collect::<String>())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()));
    let commit = given.unwrap_or_else(git_commit);
    println!("cargo:rustc-env=POSTERN_GIT_COMMIT={commit}");
    // A new commit moves HEAD (or the branch it points to): re-stamp then, not on every build.
    // In a linked worktree `.git` is a file: HEAD is in the worktree's own git directory, the
    // branches in the common one, so both are asked of git rather than assumed under `.git/`.
    let head = git(&["rev-parse", "--git-path", "HEAD"]);
    let common = git(&["rev-parse", "--git-common-dir"]);
    let watched = head.into_iter().chain(
        common
            .iter()
            .flat_map(|dir| [format!("{dir}/refs/heads"), format!("{dir}/packed-refs")]),
    );
    for path in watched {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// `git rev-parse --short=12 HEAD`, or `unknown` outside a git checkout.
fn git_commit() -> String {
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}

/// What `git ARGS` prints (trimmed), if it runs and succeeds with some output.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
