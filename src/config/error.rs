//! The one error type of the config module: which file, which key, what is wrong.
//!
//! Every message is written for the admin who has to fix the file, in the chasquid t-20
//! style: `FILE: KEY: PROBLEM`, one line, no secrets (passwords are never echoed).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A configuration problem that names the file, the key and what is wrong.
///
/// `Display` renders `FILE: KEY: PROBLEM`, e.g.
/// `/etc/postern/postern.yaml: listeners[1].address: 0.0.0.0:25 is already used by
/// listeners[0] ("legacy")` (on one line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file, as given to [`crate::config::load::load`].
    pub file: PathBuf,
    /// The key path, e.g. `listeners[1].address` or `routes[2].upstreams[0]`; `(syntax)` for a
    /// YAML syntax error, `(file)` when the file cannot be read, `(root)` when the document is
    /// not a mapping.
    pub key: String,
    /// What is wrong, in plain words; for a syntax error it includes the line and column.
    pub problem: String,
}

/// The key used for YAML syntax errors, which have a position but no key path.
pub const SYNTAX_KEY: &str = "(syntax)";
/// The key used when the file itself cannot be read.
pub const FILE_KEY: &str = "(file)";
/// The key used when the problem is the document as a whole (e.g. it is a list).
pub const ROOT_KEY: &str = "(root)";

impl ConfigError {
    /// Builds an error for `key` in `file`.
    pub fn new(
        file: impl Into<PathBuf>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Says why a file could not be read, in words that do not depend on the OS error number.
pub fn describe_io(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => "does not exist".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::IsADirectory => "is a directory".into(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_file_key_problem() {
        let table = [
            (
                ConfigError::new("/etc/postern.yaml", "listeners[0].tls", "bad"),
                "/etc/postern.yaml: listeners[0].tls: bad",
            ),
            (
                ConfigError::new("p.yaml", SYNTAX_KEY, "oops at line 1 column 2"),
                "p.yaml: (syntax): oops at line 1 column 2",
            ),
        ];
        for (err, want) in table {
            assert_eq!(err.to_string(), want);
        }
    }
}
