//! The outside tools the deployment tests run (hadolint, check-jsonschema, promtool, kubectl,
//! systemd-analyze, ...), and the repository files they run on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `program args`; panics naming `package` when the program, or the Python module it
/// runs, is not installed (.ci/tools.sh installs them; .ci/test runs it).
pub fn run(program: &str, args: &[&str], package: &str) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed ({package}): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "{package} must be installed (.ci/tools.sh installs it: run .ci/test): {stderr}"
    );
    out
}

/// stdout and stderr of `out`, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The port of an `ip:port` string.
pub fn port_of(address: &str) -> u16 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}
