//! Noticing a renewed certificate: certbot and cert-manager rewrite the certificate and key
//! files in place, so every `tls.check_interval` the reloader compares each file's identity
//! (device, inode, size, modification time) with what it loaded, and loads every set again
//! when any file of any set (the top-level one with its `sni` entries, and each listener's
//! own) changed ([`super::reload::Reloader::check_certificate`]).
//!
//! A certificate and its key are never replaced together: between the certificate's rename
//! and the key's, the pair does not match, and the set is refused. That refusal is the
//! guard: the running sets stay, and the next check tries again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::schema::Config;
use crate::server::tls;

/// One version of a file, as far as `stat` tells: a rename changes the inode, an in-place
/// rewrite the size or the modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    /// The file's stamp, `None` when it cannot be read (mid-rename, or deleted).
    fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

/// The stamps of every certificate and key file the TLS listeners use, in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FilesStamp(Vec<(PathBuf, Option<FileStamp>)>);

impl FilesStamp {
    /// Stamps the files `cfg` names. Taken *before* the files are read, so that a change
    /// made while they are being read shows at the next check.
    pub(super) fn of(cfg: &Config) -> FilesStamp {
        let files = tls::watched_files(cfg).into_iter();
        FilesStamp(
            files
                .map(|path| {
                    let stamp = FileStamp::of(&path);
                    (path, stamp)
                })
                .collect(),
        )
    }
}

/// What the watcher knows about the files behind the running certificate.
#[derive(Debug, Default)]
pub(super) struct CertState {
    /// The files the running certificates were loaded from.
    loaded: Option<FilesStamp>,
    /// The last files that failed to load, so the failure is logged once, not every check.
    failed: Option<FilesStamp>,
}

/// What a certificate check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// The files are the ones loaded.
    Same,
    /// They changed since the last load.
    Changed {
        /// And this version already failed to load once (it is retried, not logged again).
        failed_before: bool,
    },
}

impl CertState {
    /// The state after loading the files stamped `stamp`.
    pub(super) fn loaded(stamp: Option<FilesStamp>) -> CertState {
        CertState {
            loaded: stamp,
            failed: None,
        }
    }

    /// Compares `now` with the loaded files.
    pub(super) fn see(&self, now: &FilesStamp) -> Seen {
        if self.loaded.as_ref() == Some(now) {
            Seen::Same
        } else {
            Seen::Changed {
                failed_before: self.failed.as_ref() == Some(now),
            }
        }
    }

    /// Notes that the files stamped `now` did not load.
    pub(super) fn failed(&mut self, now: FilesStamp) {
        self.failed = Some(now);
    }
}

/// How long the watcher waits before looking again at `tls.check_interval` when the check
/// is off (`0s`) or there is no certificate: a reload may turn it on.
pub(super) const IDLE_RECHECK: Duration = Duration::from_secs(60);

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn stamps_see_renames_and_rewrites_of_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).display().to_string();
        let yaml = format!(
            "listeners:\n  - {{name: a, address: \"127.0.0.1:0\", tls: starttls}}\n  - {{name: \
             b, address: \"127.0.0.1:0\", tls: implicit, certificate: {}, private_key: {}}}\n\
             tls: {{certificate: {}, private_key: {}, sni: [{{certificate: {}, private_key: \
             {}}}]}}\nqueue: {{directory: spool}}\nupstreams: [{{name: o, directory: o}}]\n",
            p("own.pem"),
            p("own.key"),
            p("cert.pem"),
            p("key.pem"),
            p("sni.pem"),
            p("sni.key"),
        );
        let cfg: Config = serde_yaml::from_str(&yaml).unwrap();
        let files = [
            "cert.pem", "key.pem", "sni.pem", "sni.key", "own.pem", "own.key",
        ];
        for f in files {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        let first = FilesStamp::of(&cfg);
        assert_eq!(first.0.len(), 6);
        let mut state = CertState::loaded(Some(first));
        assert_eq!(state.see(&FilesStamp::of(&cfg)), Seen::Same);

        for (i, f) in files.into_iter().enumerate() {
            // Renamed over (certbot's symlink flip and cert-manager's rename both do this).
            let tmp = dir.path().join("tmp");
            std::fs::write(&tmp, format!("renewed {f}")).unwrap();
            std::fs::rename(&tmp, dir.path().join(f)).unwrap();
            let renamed = FilesStamp::of(&cfg);
            let changed = |failed_before| Seen::Changed { failed_before };
            assert_eq!(state.see(&renamed), changed(false), "{f}");
            state.failed(renamed.clone());
            assert_eq!(state.see(&renamed), changed(true), "{f}");
            if i == 0 {
                // Rewritten in place with a different length.
                std::fs::write(dir.path().join(f), "a longer rewrite").unwrap();
                assert_eq!(state.see(&FilesStamp::of(&cfg)), changed(false));
            }
            state = CertState::loaded(Some(FilesStamp::of(&cfg)));
            assert_eq!(state.see(&FilesStamp::of(&cfg)), Seen::Same, "{f}");
        }
        // Deleted: a change (that will fail to load), not a crash.
        std::fs::remove_file(dir.path().join("sni.key")).unwrap();
        assert_eq!(
            state.see(&FilesStamp::of(&cfg)),
            Seen::Changed {
                failed_before: false
            }
        );
    }
}
