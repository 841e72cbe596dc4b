//! The credential store: argon2 verification off the reactor, with a bounded cache of recent
//! successes so that a device that authenticates for every message (printers do) is not capped
//! by argon2's deliberate slowness.
//!
//! The cache follows Dovecot's auth cache: the key is a keyed hash (HMAC-SHA-256 with a random
//! per-process secret) of the username, the password *and the stored PHC string*, so the
//! password itself is never kept, and changing a user's hash invalidates their entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::config::schema::{AuthCacheConfig, UserConfig};

type CacheKey = [u8; 32];

/// Accounts from the config, and the verification cache.
#[derive(Debug)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// A PHC hash of a random password, verified for unknown users so that their failures
    /// take as long as a known user's (no username oracle by timing).
    decoy: String,
    cache: Mutex<HashMap<CacheKey, Instant>>,
    cache_secret: [u8; 32],
    cache_ttl: Duration,
    cache_size: usize,
    /// Bounds concurrent argon2 runs: each takes ~19 MiB and a core, and a flood of AUTH
    /// attempts must not exhaust memory or the blocking pool.
    hashing: Arc<Semaphore>,
}

impl Users {
    /// Builds the store from validated config.
    pub fn new(users: &[UserConfig], cache: &AuthCacheConfig) -> Users {
        let hashes = users
            .iter()
            .map(|u| (u.username.clone(), u.password_hash.clone()))
            .collect();
        let mut cache_secret = [0u8; 32];
        rand::fill(&mut cache_secret);
        let decoy = hash_password(&hex(&cache_secret)).unwrap_or_default();
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Users {
            hashes,
            decoy,
            cache: Mutex::new(HashMap::new()),
            cache_secret,
            cache_ttl: cache.ttl.get(),
            cache_size: cache.size,
            hashing: Arc::new(Semaphore::new(parallel)),
        }
    }

    /// True when `username` exists and `password` matches its hash.
    pub async fn verify(self: &Arc<Self>, username: &str, password: &str) -> bool {
        let known = self.hashes.get(username);
        let phc = known.unwrap_or(&self.decoy).clone();
        let key = self.cache_key(username, password, &phc);
        if known.is_some() && self.cache_hit(&key) {
            return true;
        }
        let Ok(_permit) = self.hashing.clone().acquire_owned().await else {
            return false;
        };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify_phc(&phc, &password))
            .await
            .unwrap_or(false);
        if ok && known.is_some() {
            self.cache_put(key);
            return true;
        }
        false
    }

    fn cache_key(&self, username: &str, password: &str, phc: &str) -> CacheKey {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.cache_secret) else {
            return [0; 32];
        };
        for part in [username, password, phc] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn cache_hit(&self, key: &CacheKey) -> bool {
        if self.cache_ttl.is_zero() {
            return false;
        }
        let Ok(cache) = self.cache.lock() else {
            return false;
        };
        cache
            .get(key)
            .is_some_and(|expiry| *expiry > Instant::now())
    }

    fn cache_put(&self, key: CacheKey) {
        if self.cache_ttl.is_zero() || self.cache_size == 0 {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        if cache.len() >= self.cache_size {
            cache.retain(|_, expiry| *expiry > now);
            if cache.len() >= self.cache_size {
                // Still full of live entries: drop them all rather than track recency; the
                // cost is one argon2 run per active user, and the bound holds.
                cache.clear();
            }
        }
        cache.insert(key, now + self.cache_ttl);
    }
}

/// Verifies `password` against a PHC string; any parse error is a mismatch.
fn verify_phc(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Hashes a password as an argon2id PHC string with the crate's default (OWASP) parameters.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(ttl: u64) -> Arc<Users> {
        let users = vec![UserConfig {
            username: "app1".into(),
            password_hash: hash_password("s3cret").unwrap(),
            senders: vec!["*".into()],
        }];
        let cache = AuthCacheConfig {
            ttl: crate::config::units::Duration::secs(ttl),
            size: 4,
        };
        Arc::new(Users::new(&users, &cache))
    }

    #[tokio::test]
    async fn verifies_and_caches() {
        let users = store(60);
        assert!(users.verify("app1", "s3cret").await);
        assert!(!users.verify("app1", "wrong").await);
        assert!(!users.verify("nobody", "s3cret").await);
        // the success is cached under a keyed hash, never the password
        assert_eq!(users.cache.lock().unwrap().len(), 1);
        assert!(users.verify("app1", "s3cret").await);
        assert!(!users.verify("app1", "s3cret ").await);
    }

    #[tokio::test]
    async fn zero_ttl_disables_cache() {
        let users = store(0);
        assert!(users.verify("app1", "s3cret").await);
        assert!(users.cache.lock().unwrap().is_empty());
    }
}
