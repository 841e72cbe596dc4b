//! Reading the config file: YAML text → [`Config`] → validated, paths resolved.
//!
//! Parsing runs in two steps so that each failure gets the right key. First the text becomes a
//! YAML value: a failure there is a syntax error, reported with its line and column under the
//! key `(syntax)`. Then the value becomes a [`Config`] through `serde_path_to_error`, so an
//! unknown key, a bad CIDR or a bad duration is reported under its key path
//! (`listeners[0].tsl`, `networks[1].network`).

use std::path::Path;

use crate::config::error::{ConfigError, FILE_KEY, ROOT_KEY, SYNTAX_KEY, describe_io};
use crate::config::schema::Config;
use crate::config::validate::validate;
use crate::config::{config_dir, resolve};

/// Reads, parses and validates the config file at `path`, and resolves its relative paths
/// against the file's directory.
///
/// Returns the first problem found (see [`validate`] for the order).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path,
            FILE_KEY,
            format!("cannot read the config file: {}", describe_io(&e)),
        )
    })?;
    load_str(&text, path)
}

/// Like [`load`], with the text already read; `path` names the file in errors and is the
/// base for relative paths.
///
/// Validation runs on the paths as written, so messages quote them as the admin wrote them;
/// the returned config holds resolved paths.
pub fn load_str(yaml: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut config = parse(yaml, path)?;
    validate(&config, path)?;
    resolve_paths(&mut config, config_dir(path));
    Ok(config)
}

/// Parses YAML text into a [`Config`] without cross-field validation.
pub fn parse(yaml: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut value: serde_yaml::Value = serde_yaml::from_str(yaml)
        .map_err(|e| ConfigError::new(file, SYNTAX_KEY, e.to_string()))?;
    // YAML merge keys (`<<: *defaults`) let admins share listener or upstream settings.
    value
        .apply_merge()
        .map_err(|e| ConfigError::new(file, SYNTAX_KEY, e.to_string()))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let (key, problem) = describe_schema_error(&e.path().to_string(), &e.inner().to_string());
        ConfigError::new(file, key, problem)
    })
}

/// Turns a serde error at `path` (as rendered by `serde_path_to_error`) into a (key, problem)
/// pair an admin can act on.
///
/// serde reports a missing field at the enclosing struct, so its name is appended to the key.
/// Values under a `password` key are never echoed (serde's "invalid type" quotes them).
fn describe_schema_error(path: &str, message: &str) -> (String, String) {
    // serde_path_to_error renders the document root as ".".
    let mut key = if path == "." {
        String::new()
    } else {
        path.to_string()
    };
    let join = |key: &str, field: &str| {
        if key.is_empty() {
            field.to_string()
        } else {
            format!("{key}.{field}")
        }
    };
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'));
    let problem = if let Some(field) = missing {
        key = join(&key, field);
        "required key is missing".to_string()
    } else if key == "password" || key.ends_with(".password") {
        "must be a string (the value is not shown)".to_string()
    } else {
        match message {
            // ipnet's message does not say what syntax it wanted.
            "invalid IP address syntax" => {
                "invalid network: expected CIDR notation such as 10.0.0.0/8 or 2001:db8::/32"
                    .to_string()
            }
            "invalid socket address syntax" => {
                "invalid address: expected IP:port such as 0.0.0.0:25 or \"[::]:587\"".to_string()
            }
            _ => plain_type_names(message),
        }
    };
    if key.is_empty() {
        key = ROOT_KEY.to_string();
    }
    (key, problem)
}

/// Replaces Rust type names in serde's "expected usize" with words an admin knows.
fn plain_type_names(message: &str) -> String {
    const NAMES: [(&str, &str); 4] = [
        (", expected usize", ", expected a whole number"),
        (", expected u32", ", expected a whole number"),
        (", expected u64", ", expected a whole number"),
        (", expected a boolean", ", expected true or false"),
    ];
    for (rust, plain) in NAMES {
        if let Some(head) = message.strip_suffix(rust) {
            return format!("{head}{plain}");
        }
    }
    message.to_string()
}

/// Resolves the files of SNI certificate entries against `base`.
fn resolve_sni(sni: &mut [crate::config::schema::SniCertificate], base: &Path) {
    for s in sni {
        s.certificate = resolve(base, &s.certificate);
        s.private_key = resolve(base, &s.private_key);
    }
}

/// Resolves every relative path in `config` against `base` (the config file's directory).
pub fn resolve_paths(config: &mut Config, base: &Path) {
    if let Some(tls) = &mut config.tls {
        tls.certificate = resolve(base, &tls.certificate);
        tls.private_key = resolve(base, &tls.private_key);
        resolve_sni(&mut tls.sni, base);
    }
    for l in &mut config.listeners {
        for path in [l.certificate.as_mut(), l.private_key.as_mut()]
            .into_iter()
            .flatten()
        {
            *path = resolve(base, path);
        }
        resolve_sni(&mut l.sni, base);
    }
    config.queue.directory = resolve(base, &config.queue.directory);
    if let Some(redis) = &mut config.redis {
        redis.resolve_paths(base);
    }
    if let Some(token) = config
        .http
        .as_mut()
        .and_then(|h| h.admin_token_file.as_mut())
    {
        *token = resolve(base, token);
    }
    for upstream in &mut config.upstreams {
        let files = [
            upstream.directory.as_mut(),
            upstream.ca_file.as_mut(),
            upstream
                .auth
                .as_mut()
                .and_then(|a| a.password_file.as_mut()),
        ];
        for path in files.into_iter().flatten() {
            *path = resolve(base, path);
        }
        if let Some(o) = upstream.auth.as_mut().and_then(|a| a.oauth2.as_mut()) {
            o.resolve_paths(base);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration as StdDuration;

    use super::*;
    use crate::config::schema::{
        AuthMode, BareLineEndings, ListenerTls, LogFormat, LongLinesPolicy, UpstreamTls,
    };

    /// Where the golden configs live; `CARGO_MANIFEST_DIR` is the crate root.
    fn configs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs")
    }

    /// chasquid t-20 style: each `bad/NN-name/` holds `postern.yaml` and `expected-error`, the
    /// exact `KEY: PROBLEM` that must follow `FILE: `.
    #[test]
    fn bad_configs_give_their_golden_error() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(configs_dir().join("bad"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        assert!(dirs.len() >= 20, "only {} bad configs", dirs.len());
        let mut failures = Vec::new();
        for dir in &dirs {
            let file = dir.join("postern.yaml");
            let expected = std::fs::read_to_string(dir.join("expected-error")).unwrap();
            let want = format!("{}: {}", file.display(), expected.trim_end_matches('\n'));
            match load(&file) {
                Ok(_) => failures.push(format!("{}: loaded OK, want {want}", dir.display())),
                Err(e) if e.to_string() != want => {
                    failures.push(format!("{}:\n   got {e}\n  want {want}", dir.display()))
                }
                Err(_) => {}
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn good_configs_load() {
        let mut n = 0;
        for entry in std::fs::read_dir(configs_dir().join("good")).unwrap() {
            let file = entry.unwrap().path();
            if let Err(e) = load(&file) {
                panic!("{e}");
            }
            n += 1;
        }
        assert!(n >= 2);
    }

    /// `provider: microsoft` implies Microsoft 365's per-mailbox caps; each key set
    /// overrides its own, `0` lifting it.
    #[test]
    fn provider_implies_caps_unless_overridden() {
        use crate::upstream::shaping::Caps;
        let yaml = |keys: &str| {
            format!(
                "listeners:\n  - {{name: l, address: \"127.0.0.1:2525\", tls: none, auth: none, allow_networks: [127.0.0.0/8]}}\n\
                 queue: {{directory: spool}}\n\
                 upstreams:\n  - {{name: u, address: \"smtp.example:587\"{keys}}}\n"
            )
        };
        let rows: &[(&str, usize, u32, u32)] = &[
            ("", 4, 0, 0),
            (", provider: microsoft", 3, 30, 10_000),
            (", provider: google", 4, 0, 0),
            (", provider: generic, messages_per_minute: 5", 4, 5, 0),
            (
                ", provider: microsoft, max_connections: 1, messages_per_minute: 0, recipients_per_day: 500",
                1,
                0,
                500,
            ),
        ];
        for &(keys, connections, per_minute, per_day) in rows {
            let c = load_str(&yaml(keys), Path::new("/etc/postern/postern.yaml")).unwrap();
            let u = &c.upstreams[0];
            assert_eq!(u.max_connections(), connections, "{keys}");
            assert_eq!(
                u.caps(),
                Caps {
                    messages_per_minute: per_minute,
                    recipients_per_day: per_day
                },
                "{keys}"
            );
        }
    }

    #[test]
    fn minimal_config_has_documented_defaults() {
        let file = configs_dir().join("good/minimal.yaml");
        let c = load(&file).unwrap();
        let dir = configs_dir().join("good");
        let secs = StdDuration::from_secs;
        assert_eq!(c.hostname, "localhost");
        assert_eq!(c.listeners[0].tls, ListenerTls::None);
        assert_eq!(c.listeners[0].auth, AuthMode::None);
        assert_eq!(c.listeners[0].max_connections, None);
        assert!(c.tls.is_none() && c.users.is_empty() && c.networks.is_empty());
        assert_eq!(c.limits.max_message_size.get(), 25 * 1024 * 1024);
        assert_eq!(c.limits.max_recipients, 100);
        assert_eq!(c.limits.max_connections, 1000);
        assert_eq!(c.limits.max_connections_per_ip, 0);
        assert_eq!(c.limits.max_errors, 10);
        assert!(c.rate_limits.is_empty());
        let lockout = &c.auth_lockout;
        assert_eq!(lockout.attempts, 10);
        assert_eq!(lockout.window.get(), secs(600));
        assert_eq!(lockout.duration.get(), secs(900));
        assert!(!lockout.per_username);
        assert_eq!(c.timeouts.command.get(), secs(300));
        assert_eq!(c.timeouts.data.get(), secs(180));
        assert_eq!(c.timeouts.tls_handshake.get(), secs(30));
        assert_eq!(c.smtp.bare_line_endings, BareLineEndings::Reject);
        assert_eq!(c.smtp.long_lines, LongLinesPolicy::Wrap);
        assert!(c.headers.add_date && c.headers.add_message_id);
        assert_eq!(c.auth_cache.ttl.get(), secs(300));
        assert_eq!(c.auth_cache.size, 10_000);
        assert_eq!(c.queue.directory, dir.join("spool"));
        assert_eq!(c.queue.max_age.get(), secs(5 * 86_400));
        assert_eq!(c.queue.min_backoff.get(), secs(60));
        assert_eq!(c.queue.max_backoff.get(), secs(3600));
        let u = &c.upstreams[0];
        assert_eq!(u.directory.as_deref(), Some(dir.join("outbox").as_path()));
        assert_eq!(u.tls(), UpstreamTls::Starttls);
        assert!(u.tls_verify() && u.auth.is_none() && u.ca_file.is_none());
        assert_eq!(u.max_connections(), 4);
        assert_eq!(u.connect_timeout().get(), secs(30));
        assert_eq!(u.command_timeout().get(), secs(300));
        assert_eq!(u.idle_timeout().get(), secs(30));
        assert_eq!(u.messages_per_connection(), 0);
        assert_eq!(u.circuit_breaker().failures, 5);
        assert_eq!(u.circuit_breaker().cooldown.get(), secs(60));
        assert!(u.smtp_keys_set().is_empty());
        assert!(c.routes.is_empty());
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.shutdown_grace.get(), secs(30));
    }

    #[test]
    fn full_config_resolves_relative_paths() {
        let dir = configs_dir().join("good");
        let c = load(&dir.join("full.yaml")).unwrap();
        let fixtures = dir.join("../fixtures");
        let tls = c.tls.unwrap();
        assert_eq!(tls.certificate, fixtures.join("cert.pem"));
        assert_eq!(tls.private_key, fixtures.join("key.pem"));
        assert_eq!(tls.sni[0].certificate, fixtures.join("sni-cert.pem"));
        assert_eq!(tls.sni[0].private_key, fixtures.join("sni-key.pem"));
        let own = &c.listeners[1];
        assert_eq!(own.certificate, Some(fixtures.join("sni-cert.pem")));
        assert_eq!(own.private_key, Some(fixtures.join("sni-key.pem")));
        assert_eq!(c.queue.directory, PathBuf::from("/var/spool/postern"));
        let auth = c.upstreams[0].auth.as_ref().unwrap();
        assert_eq!(auth.password_file, Some(fixtures.join("upstream.secret")));
        assert_eq!(c.upstreams[0].ca_file, Some(fixtures.join("cert.pem")));
        assert_eq!(c.limits.max_message_size.get(), 25 << 20);
        assert_eq!(c.queue.max_age.get(), StdDuration::from_secs(3 * 86_400));
        let app1 = &c.users[0];
        assert_eq!(app1.rate_limits[0].burst, Some(500));
        assert_eq!(app1.max_recipients, Some(500));
        assert_eq!(c.rate_limits[0].interval.get(), StdDuration::from_secs(60));
        assert_eq!(
            c.rate_limits[1].interval.get(),
            StdDuration::from_secs(3600)
        );
        assert!(c.auth_lockout.per_username);
        let breaker = c.upstreams[0].circuit_breaker();
        assert_eq!(
            (breaker.failures, breaker.cooldown.get().as_secs()),
            (3, 120)
        );
        assert_eq!(c.routes[0].senders, None);
        assert_eq!(
            c.routes[1].listeners.as_deref(),
            Some(&["legacy".to_string()][..])
        );
        assert_eq!(c.smtp.long_lines, LongLinesPolicy::Reject);
    }

    #[test]
    fn bare_file_name_resolves_against_the_working_directory() {
        let yaml = "listeners: [{name: l, address: \"127.0.0.1:0\", tls: none, auth: none, \
                    allow_networks: [127.0.0.0/8]}]\nqueue: {directory: spool}\n\
                    upstreams: [{name: u, directory: out}]\n";
        let c = load_str(yaml, Path::new("postern.yaml")).unwrap();
        assert_eq!(c.queue.directory, PathBuf::from("spool"));
        assert_eq!(c.upstreams[0].directory, Some(PathBuf::from("out")));
    }

    #[test]
    fn yaml_merge_keys_share_settings() {
        let yaml = "x-plain: &plain {tls: none, auth: none, allow_networks: [127.0.0.0/8]}\n";
        let err = load_str(yaml, Path::new("p.yaml")).unwrap_err();
        // Extension keys are unknown keys: merges go through anchors inside known sections.
        assert_eq!(err.key, "x-plain");
        let yaml = "listeners:\n  - &l {name: a, address: \"127.0.0.1:1\", tls: none, auth: none, \
                    allow_networks: [127.0.0.0/8]}\n  - {<<: *l, name: b, address: \"127.0.0.1:2\"}\n\
                    queue: {directory: q}\nupstreams: [{name: u, directory: o}]\n";
        let c = load_str(yaml, Path::new("p.yaml")).unwrap();
        assert_eq!(c.listeners[1].name, "b");
        assert_eq!(c.listeners[1].allow_networks, c.listeners[0].allow_networks);
    }

    #[test]
    fn unreadable_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("absent.yaml");
        let want = format!(
            "{}: (file): cannot read the config file: does not exist",
            file.display()
        );
        assert_eq!(load(&file).unwrap_err().to_string(), want);
    }

    #[test]
    fn schema_errors_name_the_key() {
        let table = [
            (
                "missing field `listeners`",
                ".",
                "listeners",
                "required key is missing",
            ),
            (
                "missing field `name`",
                "listeners[0]",
                "listeners[0].name",
                "required key is missing",
            ),
            (
                "invalid type: integer `1234`, expected a string",
                "upstreams[0].auth.password",
                "upstreams[0].auth.password",
                "must be a string (the value is not shown)",
            ),
            (
                "invalid type: sequence, expected struct Config",
                ".",
                "(root)",
                "invalid type: sequence, expected struct Config",
            ),
            (
                "invalid type: string \"lots\", expected usize",
                "limits.max_recipients",
                "limits.max_recipients",
                "invalid type: string \"lots\", expected a whole number",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                "headers.add_date",
                "headers.add_date",
                "invalid type: string \"yes\", expected true or false",
            ),
            (
                "invalid IP address syntax",
                "networks[0].network",
                "networks[0].network",
                "invalid network: expected CIDR notation such as 10.0.0.0/8 or 2001:db8::/32",
            ),
        ];
        for (message, path, want_key, want_problem) in table {
            let (key, problem) = describe_schema_error(path, message);
            assert_eq!(
                (key.as_str(), problem.as_str()),
                (want_key, want_problem),
                "{message}"
            );
        }
    }
}
