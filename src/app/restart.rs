//! The settings a reload cannot apply: they were turned into sockets, semaphores, the spool
//! or the log subscriber at start. [`pin`] puts the running values back into a reloaded
//! config and names each key it had to pin, so the admin is told "needs a restart" rather
//! than have the change ignored silently.

use crate::config::schema::{Config, ListenerConfig};

/// Replaces every restart-only setting of `new` with its value in `running`, and returns the
/// keys whose values differed, in config order.
///
/// A listener is matched by name. One whose address or TLS mode changed keeps its running
/// entry whole: its new `auth` or `allow_networks` may only be safe together with the new
/// TLS mode (AUTH over plain text), so nothing of it applies until the restart. A listener
/// only in `running` keeps serving as it was; one only in `new` is not bound.
pub(super) fn pin(new: &mut Config, running: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    new.listeners = listeners(&new.listeners, &running.listeners, &mut keys);
    keep(
        &mut new.limits.max_connections,
        &running.limits.max_connections,
        "limits.max_connections",
        &mut keys,
    );
    keep(
        &mut new.limits.max_connections_per_ip,
        &running.limits.max_connections_per_ip,
        "limits.max_connections_per_ip",
        &mut keys,
    );
    keep(
        &mut new.auth_cache.ttl,
        &running.auth_cache.ttl,
        "auth_cache.ttl",
        &mut keys,
    );
    keep(
        &mut new.auth_cache.size,
        &running.auth_cache.size,
        "auth_cache.size",
        &mut keys,
    );
    keep(
        &mut new.queue.directory,
        &running.queue.directory,
        "queue.directory",
        &mut keys,
    );
    keep(
        &mut new.queue.sync,
        &running.queue.sync,
        "queue.sync",
        &mut keys,
    );
    keep(
        &mut new.log.format,
        &running.log.format,
        "log.format",
        &mut keys,
    );
    keep(
        &mut new.log.level,
        &running.log.level,
        "log.level",
        &mut keys,
    );
    keep(
        &mut new.shutdown_grace,
        &running.shutdown_grace,
        "shutdown_grace",
        &mut keys,
    );
    keep(&mut new.http, &running.http, "http", &mut keys);
    keep(&mut new.redis, &running.redis, "redis", &mut keys);
    keys
}

/// Sets `new` back to `running` when they differ, noting `key`.
fn keep<T: PartialEq + Clone>(new: &mut T, running: &T, key: &str, keys: &mut Vec<String>) {
    if new != running {
        keys.push(key.to_owned());
        *new = running.clone();
    }
}

/// The listeners to run with: the running set, each with its reloadable settings (`auth`,
/// `allow_networks`) from `new` when its address and TLS mode are unchanged.
fn listeners(
    new: &[ListenerConfig],
    running: &[ListenerConfig],
    keys: &mut Vec<String>,
) -> Vec<ListenerConfig> {
    let mut out = Vec::with_capacity(running.len());
    for old in running {
        let key = format!("listeners[{}]", old.name);
        let Some(l) = new.iter().find(|l| l.name == old.name) else {
            keys.push(format!("{key} (removed)"));
            out.push(old.clone());
            continue;
        };
        let moved = l.address != old.address;
        let retls = l.tls != old.tls;
        if moved || retls {
            if moved {
                keys.push(format!("{key}.address"));
            }
            if retls {
                keys.push(format!("{key}.tls"));
            }
            out.push(old.clone());
            continue;
        }
        let mut l = l.clone();
        keep(
            &mut l.max_connections,
            &old.max_connections,
            &format!("{key}.max_connections"),
            keys,
        );
        out.push(l);
    }
    for l in new {
        if !running.iter().any(|old| old.name == l.name) {
            keys.push(format!("listeners[{}] (added)", l.name));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::schema::{AuthMode, ListenerTls};

    fn config(listeners: &str, extra: &str) -> Config {
        let queue = if extra.contains("queue:") {
            ""
        } else {
            "queue: {directory: q}\n"
        };
        let yaml = format!(
            "listeners: [{listeners}]\ntls: {{certificate: c.pem, private_key: k.pem}}\n\
             {queue}upstreams: [{{name: u, directory: out}}]\n{extra}"
        );
        crate::config::load::parse(&yaml, Path::new("p.yaml")).unwrap()
    }

    const A: &str = "{name: a, address: \"127.0.0.1:1\", tls: starttls, auth: required}";
    const B: &str =
        "{name: b, address: \"127.0.0.1:2\", tls: none, auth: none, allow_networks: [10.0.0.0/8]}";

    #[test]
    fn nothing_pinned_when_only_reloadable_keys_change() {
        let running = config(&format!("{A}, {B}"), "");
        let b2 = B.replace("10.0.0.0/8", "10.1.0.0/16");
        let mut new = config(
            &format!("{A}, {b2}"),
            "hostname: other.test\nlimits: {max_recipients: 5}\n",
        );
        assert!(pin(&mut new, &running).is_empty());
        assert_eq!(
            new.listeners[1].allow_networks[0].to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(new.limits.max_recipients, 5);
    }

    #[test]
    fn restart_only_keys_are_named_and_kept() {
        let running = config(&format!("{A}, {B}"), "");
        // a moves and turns implicit with auth optional; b is dropped; c is new.
        let a2 = "{name: a, address: \"127.0.0.1:9\", tls: implicit, auth: optional}";
        let c = "{name: c, address: \"127.0.0.1:3\", tls: none, auth: none, \
                 allow_networks: [10.0.0.0/8], max_connections: 3}";
        let extra = "limits: {max_connections: 5, max_connections_per_ip: 2}\n\
                     auth_cache: {ttl: 1s, size: 3}\nlog: {format: json, level: debug}\n\
                     queue: {directory: q2, sync: syncfs}\nshutdown_grace: 1s\n";
        let mut new = config(&format!("{a2}, {c}"), extra);
        let keys = pin(&mut new, &running);
        assert_eq!(
            keys,
            [
                "listeners[a].address",
                "listeners[a].tls",
                "listeners[b] (removed)",
                "listeners[c] (added)",
                "limits.max_connections",
                "limits.max_connections_per_ip",
                "auth_cache.ttl",
                "auth_cache.size",
                "queue.directory",
                "queue.sync",
                "log.format",
                "log.level",
                "shutdown_grace",
            ]
        );
        // a keeps its whole running entry, auth included; b keeps serving.
        assert_eq!(new.listeners.len(), 2);
        assert_eq!(new.listeners[0].tls, ListenerTls::Starttls);
        assert_eq!(new.listeners[0].auth, AuthMode::Required);
        assert_eq!(new.listeners[1].name, "b");
        assert_eq!(new.limits.max_connections, running.limits.max_connections);
        assert_eq!(new.queue.directory, running.queue.directory);
        // Pinned, the config compares equal on every restart-only key.
        assert!(pin(&mut new.clone(), &running).is_empty());
    }

    #[test]
    fn listener_cap_is_pinned_but_its_auth_applies() {
        let running = config(A, "");
        let a2 = A.replace("auth: required", "auth: optional, max_connections: 2");
        let mut new = config(&a2, "");
        assert_eq!(pin(&mut new, &running), ["listeners[a].max_connections"]);
        assert_eq!(new.listeners[0].auth, AuthMode::Optional);
        assert_eq!(new.listeners[0].max_connections, None);
    }
}
