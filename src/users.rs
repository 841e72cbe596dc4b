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

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::oneshot;

use crate::config::schema::{AuthCacheConfig, UserConfig};

type CacheKey = [u8; 32];

/// The outcome of a credential check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthCheck {
    /// The user exists and the password matches.
    Valid,
    /// The user exists and the password matches a recent success (no argon2 run).
    Cached,
    /// Unknown user or wrong password (deliberately not told apart).
    Invalid,
    /// Too many verifications are queued: try again later (`454 4.7.0`).
    Busy,
}

/// The accounts of one config: username to PHC hash. Part of the rules snapshot, so a
/// reload swaps it whole.
#[derive(Debug, Clone)]
pub struct Accounts {
    hashes: HashMap<String, String>,
    /// A PHC hash of a random password, verified for unknown users so that their failures
    /// take as long as a known user's (no username oracle by timing).
    decoy: String,
}

impl Accounts {
    /// Builds the table from validated config.
    pub fn new(users: &[UserConfig]) -> Accounts {
        let hashes = users
            .iter()
            .map(|u| (u.username.clone(), u.password_hash.clone()))
            .collect();
        // The decoy takes as long as the users' hashes when it has the same parameters:
        // borrow the first user's, with a salt and output nobody's password produces.
        let decoy = users
            .first()
            .map_or(DECOY.to_owned(), |u| decoy_like(&u.password_hash));
        Accounts { hashes, decoy }
    }

    /// Whether `username` is an account.
    pub fn exists(&self, username: &str) -> bool {
        self.hashes.contains_key(username)
    }
}

/// Verification: the argon2 workers and the cache of recent successes. Lives as long as the
/// process; the accounts it checks against come from the current rules.
///
/// The cache key covers the stored PHC string, so a user whose hash changed on reload no
/// longer matches their old entries; [`Verifier::clear_cache`] drops them at once.
#[derive(Debug)]
pub struct Verifier {
    cache: Mutex<HashMap<CacheKey, Instant>>,
    cache_secret: [u8; 32],
    cache_ttl: Duration,
    cache_size: usize,
    /// The argon2 workers.
    hashing: HashPool,
}

impl Verifier {
    /// Starts the argon2 workers with this cache configuration.
    pub fn new(cache: &AuthCacheConfig) -> Verifier {
        let mut cache_secret = [0u8; 32];
        rand::fill(&mut cache_secret);
        let parallel = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(4);
        Verifier {
            cache: Mutex::new(HashMap::new()),
            cache_secret,
            cache_ttl: cache.ttl.get(),
            cache_size: cache.size,
            hashing: HashPool::new(parallel),
        }
    }

    /// Checks `password` for `username` among `accounts`.
    pub async fn verify(&self, accounts: &Accounts, username: &str, password: &str) -> AuthCheck {
        let known = accounts.hashes.get(username);
        let phc = known.unwrap_or(&accounts.decoy).clone();
        let key = self.cache_key(username, password, &phc);
        if known.is_some() && self.cache_hit(&key) {
            return AuthCheck::Cached;
        }
        match self.hashing.verify(phc, password.to_owned()).await {
            None => AuthCheck::Busy,
            Some(true) if known.is_some() => {
                self.cache_put(key);
                AuthCheck::Valid
            }
            Some(_) => AuthCheck::Invalid,
        }
    }

    /// Forgets every cached success (a reload changed some user's hash).
    pub fn clear_cache(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
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

/// A PHC string with the crate's default parameters whose password is unknowable: used
/// when no user is configured.
const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZGVjb3lkZWNveWRlY295$ZGVjb3lkZWNveWRlY295ZGVjb3lkZWNveWRlY295ZGU";

/// The decoy for a store whose first user has hash `phc`: same algorithm and parameters.
fn decoy_like(phc: &str) -> String {
    match phc.rsplitn(3, '$').nth(2) {
        Some(head) => {
            format!("{head}$ZGVjb3lkZWNveWRlY295$ZGVjb3lkZWNveWRlY295ZGVjb3lkZWNveWRlY295ZGU")
        }
        None => DECOY.to_owned(),
    }
}

/// A verification request for the pool.
type Job = (String, String, oneshot::Sender<bool>);

/// A fixed set of threads that run argon2, each reusing one block buffer.
///
/// Not `spawn_blocking`: argon2 allocates `m_cost` KiB per run (19 MiB by default), and the
/// allocator keeps such blocks in per-thread arenas; across tokio's elastic blocking pool
/// that grew to ~360 MB after a burst of AUTHs (measured). Here memory is bounded by
/// `threads x m_cost` for good, and excess requests queue rather than run at once.
#[derive(Debug)]
struct HashPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl HashPool {
    fn new(threads: usize) -> HashPool {
        // A bounded queue: a flood of AUTH attempts waits here (each session waits for its
        // own answer), it does not pile up in memory.
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(1024);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("postern-argon2-{n}"))
                .spawn(move || hash_worker(&rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an argon2 thread");
            }
        }
        HashPool { jobs }
    }

    /// Verifies on a pool thread; `None` when the queue is full (the caller answers with a
    /// temporary failure rather than let a flood of AUTH attempts hold sessions).
    async fn verify(&self, phc: String, password: String) -> Option<bool> {
        let (tx, rx) = oneshot::channel();
        match self.jobs.try_send((phc, password, tx)) {
            Ok(()) => Some(rx.await.unwrap_or(false)),
            Err(std::sync::mpsc::TrySendError::Full(_)) => None,
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Some(false),
        }
    }
}

fn hash_worker(rx: &Mutex<std::sync::mpsc::Receiver<Job>>) {
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((phc, password, reply)) = job else {
            return;
        };
        let _ = reply.send(verify_phc(&phc, &password, &mut blocks));
    }
}

/// Verifies `password` against a PHC string, in `blocks` (grown as needed and kept); any
/// parse error is a mismatch.
fn verify_phc(phc: &str, password: &str, blocks: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) =
        (Algorithm::try_from(hash.algorithm), Params::try_from(&hash))
    else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    if params.m_cost() > crate::config::MAX_ARGON2_M_COST {
        tracing::warn!(
            m_cost = params.m_cost(),
            "password hash asks for too much memory; refusing it"
        );
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    if blocks.len() < params.block_count() {
        blocks.resize(params.block_count(), Block::default());
    }
    let Some(memory) = blocks.get_mut(..params.block_count()) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, memory)
        .is_err()
    {
        return false;
    }
    // Constant-time comparison: no early exit on the first differing byte.
    out.iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store(ttl: u64) -> (Accounts, Verifier) {
        let users = vec![UserConfig {
            username: "app1".into(),
            password_hash: hash_password("s3cret").unwrap(),
            senders: vec!["*".into()],
            ..Default::default()
        }];
        let cache = AuthCacheConfig {
            ttl: crate::config::units::Duration::secs(ttl),
            size: 4,
        };
        (Accounts::new(&users), Verifier::new(&cache))
    }

    #[tokio::test]
    async fn verifies_and_caches() {
        let (accounts, users) = store(60);
        assert_eq!(
            users.verify(&accounts, "app1", "s3cret").await,
            AuthCheck::Valid
        );
        assert_eq!(
            users.verify(&accounts, "app1", "wrong").await,
            AuthCheck::Invalid
        );
        assert_eq!(
            users.verify(&accounts, "nobody", "s3cret").await,
            AuthCheck::Invalid
        );
        // the success is cached under a keyed hash, never the password
        assert_eq!(users.cache.lock().unwrap().len(), 1);
        assert_eq!(
            users.verify(&accounts, "app1", "s3cret").await,
            AuthCheck::Cached
        );
        assert_eq!(
            users.verify(&accounts, "app1", "s3cret ").await,
            AuthCheck::Invalid
        );
    }

    #[test]
    fn verify_against_foreign_hashes() {
        // made by the reference implementation (argon2-cffi) for "demo-password"
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$L7RtgGNWm4JeX/bRcpKJMA$jmyR85GlXKYJ+T+gJNlgnoCawkC4RdZp8C/ujIVMwM4";
        let mut blocks = Vec::new();
        assert!(verify_phc(phc, "demo-password", &mut blocks));
        assert!(!verify_phc(phc, "demo-passwore", &mut blocks));
        assert!(!verify_phc("not a hash", "x", &mut blocks));
        assert!(!verify_phc(&decoy_like(phc), "demo-password", &mut blocks));
        assert!(!verify_phc(DECOY, "", &mut blocks));
        // cheap parameters in a smaller buffer reuse the same memory
        let cheap = "$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$2h0yzf4yhXEwkzMrQQ5pZQ";
        let _ = verify_phc(cheap, "x", &mut blocks);
        assert_eq!(blocks.len(), 19456);
    }

    #[tokio::test]
    async fn zero_ttl_disables_cache() {
        let (accounts, users) = store(0);
        assert_eq!(
            users.verify(&accounts, "app1", "s3cret").await,
            AuthCheck::Valid
        );
        assert!(users.cache.lock().unwrap().is_empty());
    }
}
