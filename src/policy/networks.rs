//! Client networks: listener allowlists and device identities admitted by IP address.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::schema::NetworkConfig;
use crate::policy::identity::SenderRules;
use crate::policy::{Caps, Sending};

/// True when `ip` may connect to a listener with this allowlist (empty = everyone).
/// IPv4-mapped IPv6 clients (`::ffff:10.0.0.1`, seen on dual-stack `[::]` sockets) are
/// matched as the IPv4 address they are.
pub fn allowed(allow: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
}

/// Unmaps `::ffff:a.b.c.d` to `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address a client is counted under by rate limits and the AUTH lockout: IPv4 as is,
/// IPv6 by its /64 (the smallest block a site is assigned, RFC 6177), so that a client
/// cannot escape a limit, or fill the tables, by hopping between addresses of its own /64.
pub fn client_prefix(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// [`client_prefix`] as written into a shared (Redis) key, by the cluster rate limits and
/// the cluster lockout alike: IPv4 as is, IPv6 as its /64 (`2001:db8::/64`).
pub fn client_prefix_key(ip: IpAddr) -> String {
    match client_prefix(ip) {
        IpAddr::V6(v6) => format!("{v6}/64"),
        v4 => v4.to_string(),
    }
}

/// A device identity: what clients from a network may send as, and the sender rewrite.
#[derive(Debug, Clone)]
pub struct Device {
    /// The network, as configured (also the identity's name in logs).
    pub network: IpNet,
    /// Its senders, sender check, rewrite and caps.
    pub sending: Sending,
}

/// Device identities, most specific network first.
#[derive(Debug, Clone, Default)]
pub struct Devices(Vec<Device>);

impl Devices {
    /// Builds the table; longer prefixes sort first so `10.20.30.0/24` wins over `10.0.0.0/8`.
    /// `caps` are the global ones, for networks without their own.
    pub fn new(networks: &[NetworkConfig], caps: Caps) -> Devices {
        let mut devices: Vec<Device> = networks
            .iter()
            .map(|n| Device {
                network: n.network,
                sending: Sending {
                    senders: SenderRules::new(&n.senders),
                    check: n.sender_check,
                    rewrite_sender: n.rewrite_sender.clone(),
                    rewrite_mode: n.rewrite_mode,
                    caps: caps.with(n.max_message_size, n.max_recipients),
                },
            })
            .collect();
        devices.sort_by_key(|d| std::cmp::Reverse(d.network.prefix_len()));
        Devices(devices)
    }

    /// The identity configured for exactly this network (as carried in an identity).
    pub fn by_network(&self, network: &IpNet) -> Option<&Device> {
        self.0.iter().find(|d| d.network == *network)
    }

    /// The identity for a client address, if any network contains it.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Device> {
        let ip = canonical(ip);
        self.0.iter().find(|d| d.network.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn allowlist() {
        let allow = [net("127.0.0.1/32"), net("10.20.0.0/16")];
        let rows: &[(&str, bool)] = &[
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("10.20.3.4", true),
            ("10.21.0.1", false),
            ("::ffff:127.0.0.1", true),
            ("::1", false),
        ];
        for (ip, want) in rows {
            assert_eq!(allowed(&allow, ip.parse().unwrap()), *want, "{ip}");
        }
        assert!(allowed(&[], "192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn client_prefixes() {
        let rows = [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
        ];
        for (ip, want) in rows {
            let got = client_prefix(ip.parse().unwrap());
            assert_eq!(got, want.parse::<IpAddr>().unwrap(), "{ip}");
        }
        let keys = [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ];
        for (ip, want) in keys {
            assert_eq!(client_prefix_key(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn most_specific_device_wins() {
        let cfg = |n: &str, rewrite: &str| NetworkConfig {
            network: net(n),
            senders: vec!["*".into()],
            rewrite_sender: Some(rewrite.into()),
            ..Default::default()
        };
        let caps = Caps::default();
        let devices = Devices::new(
            &[cfg("10.0.0.0/8", "wide@x"), cfg("10.20.30.0/24", "scans@x")],
            caps,
        );
        let hit = |ip: &str| {
            devices
                .lookup(ip.parse().unwrap())
                .and_then(|d| d.sending.rewrite_sender.clone())
        };
        assert_eq!(hit("10.20.30.9").as_deref(), Some("scans@x"));
        assert_eq!(hit("10.1.1.1").as_deref(), Some("wide@x"));
        assert_eq!(hit("192.0.2.1"), None);
        // a network nested in another is found by the identity the client got
        let nested = Devices::new(
            &[
                cfg("10.20.30.0/24", "wide@x"),
                cfg("10.20.30.0/28", "narrow@x"),
            ],
            caps,
        );
        let wide = nested
            .lookup("10.20.30.100".parse().unwrap())
            .unwrap()
            .network;
        let found = nested
            .by_network(&wide)
            .and_then(|d| d.sending.rewrite_sender.clone());
        assert_eq!(found.as_deref(), Some("wide@x"));
    }
}
