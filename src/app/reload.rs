//! Live reload: SIGHUP (or [`crate::app::Running::reload`]) re-reads the config file through
//! the same `config::load` as start, builds a new rules snapshot and swaps it in. Sessions
//! keep the snapshot they started with; new sessions and the next delivery attempts use the
//! new one. A config that does not load leaves the running one in force.
//!
//! The [`Reloader`] also owns the certificate watcher, so a reload and a certificate swap
//! never race (each holds the state lock while it builds and stores its snapshot).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tracing::{error, info, warn};

use crate::app::admin::token::{AdminToken, read_token};
use crate::app::certwatch::{CertState, FilesStamp, IDLE_RECHECK, Seen};
use crate::app::{restart, stamped_server_tls};
use crate::config::schema::{Config, UserConfig};
use crate::config::{self, ConfigError};
use crate::rules::Rules;
use crate::server::Runtime;
use crate::server::tls::{ServerTls, TlsError};
use crate::shutdown::Shutdown;
use crate::upstream::pool::Pool;
use crate::upstream::{BuildError, Upstreams};

/// Longest the QUITs to a retired pool's idle connections may take.
const QUIT_LIMIT: Duration = Duration::from_secs(10);

/// Why a reload was refused; the running configuration stays in force. Each names the file,
/// the key and the problem.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReloadError {
    /// The relay was started from a config in memory, not from a file.
    NoFile,
    /// The file does not read, parse or validate.
    Config(ConfigError),
    /// A certificate set does not load (a file, a pair, a name).
    Tls {
        /// The config file.
        file: PathBuf,
        /// Why.
        source: TlsError,
    },
    /// The admin API's token file (`http.admin_token_file`) does not read.
    AdminToken {
        /// The config file.
        file: PathBuf,
        /// Why.
        source: String,
    },
    /// An upstream cannot be built (a password or CA file is unreadable).
    Upstream {
        /// The config file.
        file: PathBuf,
        /// Why; it names the upstream.
        source: BuildError,
    },
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadError::NoFile => write!(f, "started without a config file: nothing to re-read"),
            ReloadError::Config(e) => write!(f, "{e}"),
            ReloadError::Tls { file, source } => write!(f, "{}: {source}", file.display()),
            ReloadError::Upstream { file, source } => write!(f, "{}: {source}", file.display()),
            ReloadError::AdminToken { file, source } => {
                write!(f, "{}: http.admin_token_file: {source}", file.display())
            }
        }
    }
}

impl std::error::Error for ReloadError {}

/// What a successful reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadOutcome {
    /// Top-level keys whose value changed (`routes`, `users`, ...), sorted.
    pub changed: Vec<String>,
    /// Accounts added.
    pub users_added: usize,
    /// Accounts removed.
    pub users_removed: usize,
    /// Accounts whose password hash or senders changed.
    pub users_changed: usize,
    /// Whether the AUTH cache was cleared (an account was removed or its hash changed).
    pub auth_cache_cleared: bool,
    /// SMTP upstreams whose pool (and its idle connections) was kept.
    pub upstreams_kept: Vec<String>,
    /// SMTP upstreams whose pool was retired (changed or removed); idle connections got QUIT.
    pub upstreams_retired: Vec<String>,
    /// Keys that changed but need a restart to apply; their running values stay.
    pub needs_restart: Vec<String>,
}

impl fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "changed: {}; users: {} added, {} removed, {} changed; upstream pools kept: {}, \
             retired: {}; needs a restart: {}",
            list(&self.changed),
            self.users_added,
            self.users_removed,
            self.users_changed,
            list(&self.upstreams_kept),
            list(&self.upstreams_retired),
            list(&self.needs_restart),
        )
    }
}

/// Re-reads the config file into new rules; watches the certificate files.
#[derive(Debug)]
pub struct Reloader {
    /// The config file; `None` when started from a config in memory.
    file: Option<PathBuf>,
    rt: Arc<Runtime>,
    shutdown: Shutdown,
    state: Mutex<State>,
    /// Wakes the certificate watcher after a reload, which may have changed its interval.
    reloaded: Notify,
    /// The admin API's token, read again at each reload (its file's path needs a restart).
    admin_token: Arc<AdminToken>,
}

/// What the reloader compares the next reload and check against.
#[derive(Debug)]
struct State {
    /// The running config: the last one that loaded, with restart-only keys pinned to the
    /// values in force.
    config: Config,
    cert: CertState,
}

impl Reloader {
    /// A reloader for a relay started from `config` (read from `file`, when given), whose
    /// certificates were loaded from files stamped `cert`.
    pub(super) fn new(
        file: Option<PathBuf>,
        config: Config,
        cert: FilesStamp,
        rt: Arc<Runtime>,
        shutdown: Shutdown,
        admin_token: Arc<AdminToken>,
    ) -> Reloader {
        Reloader {
            file,
            rt,
            shutdown,
            admin_token,
            state: Mutex::new(State {
                config,
                cert: CertState::loaded(Some(cert)),
            }),
            reloaded: Notify::new(),
        }
    }

    /// Reloads and logs the outcome: `configuration reloaded` with a summary, or the error
    /// (file, key, problem) and that the running configuration stays.
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let result = self.try_reload().await;
        self.rt
            .metrics
            .reloaded(result.is_ok(), self.rt.clock.unix());
        match &result {
            Ok(outcome) => info!(summary = %outcome, "configuration reloaded"),
            Err(e) => error!(
                error = %e,
                "configuration reload failed; keeping the running configuration"
            ),
        }
        result
    }

    async fn try_reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let file = self.file.as_deref().ok_or(ReloadError::NoFile)?;
        let mut state = self.state.lock().await;
        let mut cfg = config::load(file).map_err(ReloadError::Config)?;
        let needs_restart = restart::pin(&mut cfg, &state.config);
        let (tls, stamp) = stamped_server_tls(&cfg).map_err(|source| ReloadError::Tls {
            file: file.to_owned(),
            source,
        })?;
        let previous = self.rt.rules();
        let rebuilt = Upstreams::rebuild(&cfg, &previous.upstreams).map_err(|source| {
            ReloadError::Upstream {
                file: file.to_owned(),
                source,
            }
        })?;
        let token = match cfg.http.as_ref().and_then(|h| h.admin_token_file.as_ref()) {
            Some(path) => Some(read_token(path).map_err(|source| ReloadError::AdminToken {
                file: file.to_owned(),
                source,
            })?),
            None => None,
        };
        // Everything that can fail has: from here on the reload happens.
        self.admin_token.set(token.as_deref());
        // Rate-limit rules that did not change keep their buckets; lockout counts stay.
        let rate_limits = Arc::new(previous.rate_limits.reconfigure(&cfg));
        self.rt.lockout.reconfigure(&cfg.auth_lockout);
        let upstreams = Arc::new(rebuilt.upstreams);
        self.rt.metrics.certificate_expiries(tls.expiries());
        let rules = Rules::new(&cfg, Arc::new(tls), upstreams, rate_limits);
        let metrics = &self.rt.metrics;
        let names: Vec<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
        metrics.retain_upstreams(&names);
        metrics.register_upstreams(names);
        metrics.register_rules(rules.rate_limits.rule_names());
        self.rt.rules.store(Arc::new(rules));
        let mut outcome = ReloadOutcome {
            changed: changed_keys(&state.config, &cfg),
            upstreams_kept: rebuilt.kept,
            upstreams_retired: rebuilt
                .retired
                .iter()
                .map(|p| p.name().to_owned())
                .collect(),
            needs_restart,
            ..ReloadOutcome::default()
        };
        count_users(&state.config.users, &cfg.users, &mut outcome);
        if outcome.auth_cache_cleared {
            self.rt.verifier.clear_cache();
        }
        for key in &outcome.needs_restart {
            warn!(%key, "changed in the config file, but needs a restart to apply");
        }
        self.retire(rebuilt.retired);
        *state = State {
            config: cfg,
            cert: CertState::loaded(Some(stamp)),
        };
        self.reloaded.notify_one();
        Ok(outcome)
    }

    /// Says QUIT on the idle connections of pools a reload replaced, in the background
    /// (tracked, so shutdown waits for it). Deliveries still running on them finish; their
    /// connections are then closed when the last old snapshot goes.
    fn retire(&self, pools: Vec<Arc<Pool>>) {
        if pools.is_empty() {
            return;
        }
        self.shutdown.tracker.spawn(async move {
            let _ = tokio::time::timeout(QUIT_LIMIT, Upstreams::close_pools(&pools)).await;
        });
    }

    /// Loads every certificate set again if any of their files changed since they were
    /// loaded, and swaps them into the rules (the rest of them unchanged). A set that does
    /// not load (a renewal half done) is logged once and tried again at the next check.
    /// Returns whether it swapped.
    pub async fn check_certificate(&self) -> bool {
        let mut state = self.state.lock().await;
        let rules = self.rt.rules();
        if rules.tls.is_empty() {
            // No listener uses TLS: nothing to swap, nothing to look at.
            return false;
        }
        let now = FilesStamp::of(&state.config);
        let Seen::Changed { failed_before } = state.cert.see(&now) else {
            return false;
        };
        match ServerTls::load(&state.config) {
            Ok(server) => {
                self.rt.metrics.certificate_expiries(server.expiries());
                let mut next = Rules::clone(&rules);
                next.tls = Arc::new(server);
                self.rt.rules.store(Arc::new(next));
                state.cert = CertState::loaded(Some(now));
                info!("certificate files changed; new handshakes use the new certificates");
                true
            }
            Err(e) => {
                if !failed_before {
                    warn!(error = %e, "certificate files changed but do not load; keeping the running certificates and trying again");
                }
                state.cert.failed(now);
                false
            }
        }
    }

    /// Checks the certificate files every `tls.check_interval` until shutdown; a reload
    /// restarts the wait with the reloaded interval.
    pub(super) async fn watch_certificate(self: Arc<Self>) {
        loop {
            let every = self.check_interval().await;
            tokio::select! {
                () = self.shutdown.stop.cancelled() => return,
                () = self.reloaded.notified() => continue,
                () = tokio::time::sleep(every.unwrap_or(IDLE_RECHECK)) => {}
            }
            if every.is_some() {
                self.check_certificate().await;
            }
        }
    }

    /// The running `tls.check_interval` (its default without `tls:`, when only listeners
    /// have certificates); `None` when checks are off.
    async fn check_interval(&self) -> Option<Duration> {
        let state = self.state.lock().await;
        let every = match &state.config.tls {
            Some(t) => t.check_interval.get(),
            None => crate::config::schema::default_tls_check_interval().get(),
        };
        (!every.is_zero()).then_some(every)
    }
}

/// The top-level keys whose values differ between two configs.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Counts added, removed and changed accounts, and decides whether the AUTH cache must go:
/// when an account was removed or its hash changed (the cache key covers the hash, so old
/// entries could no longer match, but clearing frees them at once).
fn count_users(old: &[UserConfig], new: &[UserConfig], outcome: &mut ReloadOutcome) {
    for u in new {
        match old.iter().find(|o| o.username == u.username) {
            None => outcome.users_added += 1,
            Some(o) if o.password_hash != u.password_hash => {
                outcome.users_changed += 1;
                outcome.auth_cache_cleared = true;
            }
            // Anything else of the account (senders, rewrite, limits, ...).
            Some(o) if serde_json::to_value(o).ok() != serde_json::to_value(u).ok() => {
                outcome.users_changed += 1;
            }
            Some(_) => {}
        }
    }
    outcome.users_removed = old
        .iter()
        .filter(|o| !new.iter().any(|u| u.username == o.username))
        .count();
    outcome.auth_cache_cleared |= outcome.users_removed > 0;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn user(name: &str, hash: &str, senders: &[&str]) -> UserConfig {
        UserConfig {
            username: name.into(),
            password_hash: hash.into(),
            senders: senders.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    /// (old, new) -> (added, removed, changed, cache cleared)
    #[test]
    fn user_changes_and_the_auth_cache() {
        let a = user("a", "h1", &["*"]);
        let b = user("b", "h2", &["*"]);
        let rows = [
            (vec![a.clone()], vec![a.clone()], (0, 0, 0, false)),
            (
                vec![a.clone()],
                vec![a.clone(), b.clone()],
                (1, 0, 0, false),
            ),
            (vec![a.clone(), b.clone()], vec![a.clone()], (0, 1, 0, true)),
            (
                vec![a.clone()],
                vec![user("a", "h9", &["*"])],
                (0, 0, 1, true),
            ),
            (
                vec![a.clone()],
                vec![user("a", "h1", &["@x"])],
                (0, 0, 1, false),
            ),
            (vec![a.clone()], vec![b.clone()], (1, 1, 0, true)),
        ];
        for (old, new, want) in rows {
            let mut o = ReloadOutcome::default();
            count_users(&old, &new, &mut o);
            let got = (
                o.users_added,
                o.users_removed,
                o.users_changed,
                o.auth_cache_cleared,
            );
            assert_eq!(got, want, "{old:?} -> {new:?}");
        }
    }

    /// Durations and sizes serialize in a canonical notation (`1m`, `1KiB`), so the same
    /// value written two ways (`60s` and `1m`, `1024` and `1KiB`) is no change on reload, and
    /// a different value is one, for the top-level keys, the users and the upstream pools.
    #[test]
    fn a_value_written_another_way_is_no_change() {
        let config = |extra: &str| {
            let yaml = format!(
                "listeners: [{{name: a, address: \"127.0.0.1:1\", tls: none, auth: none, \
                 allow_networks: [127.0.0.0/8]}}]\nqueue: {{directory: q}}\n{extra}"
            );
            crate::config::load::parse(&yaml, std::path::Path::new("p.yaml")).unwrap()
        };
        let user = |size: &str| {
            format!(
                "users: [{{username: u, password_hash: h, senders: [\"*\"], max_message_size: {size}}}]\n"
            )
        };
        let upstream = |timeout: &str| {
            format!("upstreams: [{{name: out, address: \"mx:25\", connect_timeout: {timeout}}}]\n")
        };
        let old = config(&format!(
            "timeouts: {{command: 60s}}\nlimits: {{max_message_size: 1024}}\n{}{}",
            user("2048"),
            upstream("90s")
        ));
        let same = config(&format!(
            "timeouts: {{command: 1m}}\nlimits: {{max_message_size: 1KiB}}\n{}{}",
            user("2KiB"),
            upstream("90000ms")
        ));
        let other = config(&format!(
            "timeouts: {{command: 61s}}\nlimits: {{max_message_size: 1000}}\n{}{}",
            user("2kB"),
            upstream("1m")
        ));
        assert_eq!(changed_keys(&old, &same), Vec::<String>::new());
        let mut changed = changed_keys(&old, &other);
        changed.sort();
        assert_eq!(changed, ["limits", "timeouts", "upstreams", "users"]);
        let mut o = ReloadOutcome::default();
        count_users(&old.users, &same.users, &mut o);
        assert_eq!(o.users_changed, 0);
        count_users(&old.users, &other.users, &mut o);
        assert_eq!(o.users_changed, 1);
        // An upstream's pool is kept when its entry serializes the same (`fingerprint`).
        let entry = |c: &Config| serde_json::to_string(&c.upstreams[0]).unwrap();
        assert_eq!(entry(&old), entry(&same));
        assert_ne!(entry(&old), entry(&other));
    }

    #[test]
    fn outcome_summary() {
        let o = ReloadOutcome {
            changed: vec!["routes".into(), "users".into()],
            users_added: 1,
            upstreams_kept: vec!["a".into()],
            needs_restart: vec!["log.level".into()],
            ..ReloadOutcome::default()
        };
        assert_eq!(
            o.to_string(),
            "changed: routes, users; users: 1 added, 0 removed, 0 changed; upstream pools \
             kept: a, retired: none; needs a restart: log.level"
        );
    }
}
