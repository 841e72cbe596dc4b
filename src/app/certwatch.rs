//! Noticing a renewed certificate: certbot and cert-manager rewrite the certificate and key
//! files in place, so every `tls.check_interval` the reloader compares each file's identity
//! (device, inode, size, modification time) with the pair it loaded, and loads the pair
//! again when either changed ([`super::reload::Reloader::check_certificate`]).
//!
//! The two files are never replaced together: between the certificate's rename and the
//! key's, the pair does not match, and rustls refuses it. That refusal is the guard: the
//! running certificate stays, and the next check tries again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::config::schema::TlsConfig;

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

/// The stamps of a certificate and its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PairStamp {
    cert: Option<FileStamp>,
    key: Option<FileStamp>,
}

impl PairStamp {
    /// Stamps the pair `tls` names. Taken *before* the files are read, so that a change made
    /// while they are being read shows at the next check.
    pub(super) fn of(tls: &TlsConfig) -> PairStamp {
        PairStamp {
            cert: FileStamp::of(&tls.certificate),
            key: FileStamp::of(&tls.private_key),
        }
    }
}

/// What the watcher knows about the files behind the running certificate.
#[derive(Debug, Default)]
pub(super) struct CertState {
    /// The pair the running certificate was loaded from.
    loaded: Option<PairStamp>,
    /// The last pair that failed to load, so the failure is logged once, not every check.
    failed: Option<PairStamp>,
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
    /// The state after loading the pair stamped `stamp`.
    pub(super) fn loaded(stamp: Option<PairStamp>) -> CertState {
        CertState {
            loaded: stamp,
            failed: None,
        }
    }

    /// Compares `now` with the loaded pair.
    pub(super) fn see(&self, now: PairStamp) -> Seen {
        if self.loaded == Some(now) {
            Seen::Same
        } else {
            Seen::Changed {
                failed_before: self.failed == Some(now),
            }
        }
    }

    /// Notes that the pair stamped `now` did not load.
    pub(super) fn failed(&mut self, now: PairStamp) {
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
    fn stamps_see_renames_and_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsConfig {
            certificate: dir.path().join("cert.pem"),
            private_key: dir.path().join("key.pem"),
            generate_self_signed: false,
            check_interval: crate::config::units::Duration::secs(1),
        };
        std::fs::write(&tls.certificate, "one").unwrap();
        std::fs::write(&tls.private_key, "key").unwrap();
        let first = PairStamp::of(&tls);
        let mut state = CertState::loaded(Some(first));
        assert_eq!(state.see(PairStamp::of(&tls)), Seen::Same);

        // Renamed over (certbot's symlink flip and cert-manager's rename both do this).
        let tmp = dir.path().join("cert.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &tls.certificate).unwrap();
        let renamed = PairStamp::of(&tls);
        let seen = state.see(renamed);
        assert_eq!(
            seen,
            Seen::Changed {
                failed_before: false
            }
        );
        state.failed(renamed);
        assert_eq!(
            state.see(renamed),
            Seen::Changed {
                failed_before: true
            }
        );

        // Rewritten in place with a different length.
        std::fs::write(&tls.private_key, "longer key").unwrap();
        let rewritten = PairStamp::of(&tls);
        assert_eq!(
            state.see(rewritten),
            Seen::Changed {
                failed_before: false
            }
        );
        state = CertState::loaded(Some(rewritten));
        assert_eq!(state.see(rewritten), Seen::Same);

        // Deleted: a change (that will fail to load), not a crash.
        std::fs::remove_file(&tls.private_key).unwrap();
        assert_eq!(
            state.see(PairStamp::of(&tls)),
            Seen::Changed {
                failed_before: false
            }
        );
    }
}
