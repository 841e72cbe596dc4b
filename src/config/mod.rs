//! Configuration: the YAML schema, human units, and validation with errors that name the
//! file, the key path and the problem.
//!
//! # Layout
//! - [`schema`]: the file's shape (serde, `deny_unknown_fields`), every key with its default.
//! - [`policy`]: the policy sections: caps, rate limits, AUTH lockout.
//! - [`redis`]: the Redis shared by several instances (`redis:`).
//! - [`units`]: durations (`30s`, `3d`) and sizes (`25MiB`).
//! - [`load`]: read, parse, validate, then resolve relative paths.
//! - [`oauth2`]: an upstream's OAuth 2.0 token endpoint and scope, from its provider.
//! - [`syntax`]: sender patterns, domains, `host:port`.
//! - [`validate`]: the cross-field rules, in the schema's order; the first failure wins.
//! - [`json_schema`]: the JSON Schema of the file (`postern config-schema`), for editors.
//! - [`error`]: [`error::ConfigError`], rendered `FILE: KEY: PROBLEM`.

use std::path::{Path, PathBuf};

pub mod error;
pub mod identity;
pub mod json_schema;
pub mod load;
pub mod oauth2;
pub mod policy;
pub mod redis;
pub mod schema;
pub mod syntax;
pub mod units;
pub mod upstream;
pub mod validate;

// The entry points, so callers write `config::load(path)` (a function and the module of the
// same name live in different namespaces).
pub use error::ConfigError;
pub use load::{load, load_str};

/// The largest argon2 memory cost (KiB) postern runs for a password hash: a hash asking for
/// more is refused by validation (and treated as a mismatch by the verifier), so a config
/// cannot make each AUTH allocate gigabytes. 256 MiB is 13 times the RFC 9106 default.
pub const MAX_ARGON2_M_COST: u32 = 256 * 1024;

/// The directory relative paths in `file` are resolved against: the file's own directory.
///
/// For a bare file name such as `postern.yaml` this is the empty path, so relative paths stay
/// relative to the working directory, which is where the file is.
pub fn config_dir(file: &Path) -> &Path {
    file.parent().unwrap_or(Path::new(""))
}

/// Resolves `path` as written in the config against `base` (see [`config_dir`]).
///
/// Absolute paths are kept; empty paths are kept empty so that validation still reports them
/// as empty rather than as the config directory itself.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.as_os_str().is_empty() || path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_against_the_config_dir() {
        let table = [
            (
                "/etc/postern/postern.yaml",
                "cert.pem",
                "/etc/postern/cert.pem",
            ),
            ("/etc/postern/postern.yaml", "/srv/key.pem", "/srv/key.pem"),
            (
                "/etc/postern/postern.yaml",
                "../spool",
                "/etc/postern/../spool",
            ),
            ("postern.yaml", "cert.pem", "cert.pem"),
            ("conf/postern.yaml", "cert.pem", "conf/cert.pem"),
            ("/etc/postern/postern.yaml", "", ""),
        ];
        for (file, path, want) in table {
            let got = resolve(config_dir(Path::new(file)), Path::new(path));
            assert_eq!(got, PathBuf::from(want), "{file} + {path}");
        }
    }
}
