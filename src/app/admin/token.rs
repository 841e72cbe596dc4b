//! The admin API's bearer token (`http.admin_token_file`): read at start and at each reload,
//! generated on first start when asked for, and compared in constant time.
//!
//! Only the token's SHA-256 digest is kept in memory; a presented token is hashed and the two
//! digests are compared with a fold over every byte, so the comparison takes the same time
//! wherever they differ (no timing oracle for guessing the token byte by byte).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use arc_swap::ArcSwapOption;
use sha2::{Digest, Sha256};

/// Shortest token accepted from the file: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The current token's digest; `None`: the admin API is off.
#[derive(Debug, Default)]
pub struct AdminToken {
    digest: ArcSwapOption<[u8; 32]>,
}

impl AdminToken {
    /// Replaces the token (`None` switches the API off).
    pub fn set(&self, token: Option<&str>) {
        self.digest
            .store(token.map(|t| std::sync::Arc::new(digest(t.as_bytes()))));
    }

    /// Whether the admin API is on.
    pub fn enabled(&self) -> bool {
        self.digest.load().is_some()
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let Some(expected) = self.digest.load_full() else {
            return false;
        };
        let got = digest(presented);
        expected
            .iter()
            .zip(got.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Reads the token from `path`: its first line, trimmed; at least [`MIN_TOKEN_LEN`]
/// characters. The error names the problem (the caller names the key).
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "{}: the token must be at least {MIN_TOKEN_LEN} characters on the first line",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// Writes a fresh random token (64 hex digits) to `path` with mode 0600 when the file does
/// not exist; returns whether it wrote one.
pub fn ensure_token(path: &Path) -> Result<bool, String> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(format!("{hex}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_token_and_nothing_when_off() {
        let t = AdminToken::default();
        assert!(!t.enabled());
        assert!(!t.matches(b""));
        t.set(Some("0123456789abcdef"));
        assert!(t.matches(b"0123456789abcdef"));
        for wrong in [&b""[..], b"0123456789abcdeF", b"0123456789abcdef0"] {
            assert!(!t.matches(wrong));
        }
        t.set(None);
        assert!(!t.matches(b"0123456789abcdef"));
    }

    #[test]
    fn generates_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        assert!(ensure_token(&path).unwrap());
        assert!(!ensure_token(&path).unwrap());
        let token = read_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "short\n").unwrap();
        assert!(read_token(&path).unwrap_err().contains("at least 16"));
    }
}
