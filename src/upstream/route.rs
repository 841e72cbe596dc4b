//! Routing: a message's sender, each recipient, its listener and its identity → an ordered
//! list of upstream names (failover order).
//!
//! A route sets any of four conditions, and matches when every one it sets holds; the first
//! matching route wins. Sender and recipient patterns are users' sender patterns
//! ([`SenderPattern`]): `user@domain` (exact, case ignored), `@domain`, `@*.domain` (strict
//! subdomains) and `*`. Listeners are listener names; identities are usernames or
//! `network:CIDR` (a device admitted by a `networks` entry), as [`crate::policy::Identity`]
//! labels them. The null sender matches only `*` (see [`Router::route`] for its fallback).
//!
//! Recipients are routed one by one, so one message may take several routes: the delivery
//! layer splits it into one transaction per route.

use crate::config::schema::RouteConfig;
use crate::policy::identity::SenderPattern;

/// What a route matches on, besides the recipient.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The envelope sender after any rewrite (`""`: the null sender).
    pub sender: &'a str,
    /// The name of the listener that accepted the message.
    pub listener: &'a str,
    /// The authenticated user or device identity label, if any.
    pub identity: Option<&'a str>,
}

/// One route: its conditions (`None`: any) and the upstreams to try, in order.
#[derive(Debug, Clone)]
struct Route {
    senders: Option<Vec<SenderPattern>>,
    recipients: Option<Vec<SenderPattern>>,
    listeners: Option<Vec<String>>,
    identities: Option<Vec<String>>,
    upstreams: Vec<String>,
}

impl Route {
    /// Whether the sender, listener and identity conditions hold.
    fn takes_origin(&self, o: &Origin<'_>) -> bool {
        let sender_ok = self
            .senders
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(o.sender)));
        let listener_ok = self
            .listeners
            .as_ref()
            .is_none_or(|ls| ls.iter().any(|l| l == o.listener));
        let identity_ok = self
            .identities
            .as_ref()
            .is_none_or(|ids| o.identity.is_some_and(|id| ids.iter().any(|i| i == id)));
        sender_ok && listener_ok && identity_ok
    }

    /// Whether the recipient condition holds.
    fn takes_recipient(&self, recipient: &str) -> bool {
        self.recipients
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(recipient)))
    }
}

/// The route a recipient takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched<'a> {
    /// Its position in `routes:` (recipients with the same index travel together).
    pub index: usize,
    /// Its upstreams, in failover order.
    pub upstreams: &'a [String],
}

/// Picks the upstreams for a message's recipients; the first matching route wins.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

/// Parses a pattern list (`None` stays "any").
fn patterns(list: Option<&Vec<String>>) -> Option<Vec<SenderPattern>> {
    list.map(|l| l.iter().map(|s| SenderPattern::parse(s)).collect())
}

impl Router {
    /// Builds the router. With no routes and exactly one upstream, every message goes to it
    /// (the single-smarthost setup needs no `routes:`). Names are not checked here: config
    /// validation and [`crate::upstream::Upstreams::new`] do that.
    pub fn new(routes: &[RouteConfig], upstream_names: &[String]) -> Router {
        let mut parsed: Vec<Route> = routes
            .iter()
            .map(|r| Route {
                senders: patterns(r.senders.as_ref()),
                recipients: patterns(r.recipients.as_ref()),
                listeners: r.listeners.clone(),
                identities: r.identities.clone(),
                upstreams: r.upstreams.clone(),
            })
            .collect();
        if parsed.is_empty() && upstream_names.len() == 1 {
            parsed.push(Route {
                senders: None,
                recipients: None,
                listeners: None,
                identities: None,
                upstreams: upstream_names.to_vec(),
            });
        }
        Router { routes: parsed }
    }

    /// The route `recipient` of a message from `origin` takes; `None` when none matches.
    ///
    /// The null sender matches routes without a sender condition or with `*`; when no route
    /// matches it, it takes the first route, so bounces, vacation replies and MDNs from
    /// authenticated clients (RFC 5321 4.5.5) are never refused for want of a domain to
    /// route by.
    pub fn route(&self, origin: &Origin<'_>, recipient: &str) -> Option<Matched<'_>> {
        let found = self
            .routes
            .iter()
            .position(|r| r.takes_origin(origin) && r.takes_recipient(recipient));
        let fallback = || origin.sender.is_empty().then_some(0);
        let index = found.or_else(fallback)?;
        let route = self.routes.get(index)?;
        Some(Matched {
            index,
            upstreams: &route.upstreams,
        })
    }

    /// Whether some route may take a message from `origin` (for some recipient): MAIL is
    /// refused at once when none can.
    pub fn takes_origin(&self, origin: &Origin<'_>) -> bool {
        (origin.sender.is_empty() && !self.routes.is_empty())
            || self.routes.iter().any(|r| r.takes_origin(origin))
    }

    /// Each route's upstreams, in route order (the readiness check).
    pub fn upstream_lists(&self) -> impl Iterator<Item = &[String]> {
        self.routes.iter().map(|r| r.upstreams.as_slice())
    }

    /// Every upstream name some route uses, in first-use order, without repeats.
    pub fn used_upstreams(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for name in self.routes.iter().flat_map(|r| &r.upstreams) {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    fn route(senders: &[&str], upstreams: &[&str]) -> RouteConfig {
        RouteConfig {
            senders: list(senders),
            recipients: None,
            listeners: None,
            identities: None,
            upstreams: list(upstreams).unwrap_or_default(),
        }
    }

    fn from(sender: &str) -> Origin<'_> {
        Origin {
            sender,
            listener: "submission",
            identity: None,
        }
    }

    /// The upstreams of `recipient`'s route, as `&str`s.
    fn names<'a>(router: &'a Router, origin: &Origin<'_>, recipient: &str) -> Option<Vec<&'a str>> {
        router
            .route(origin, recipient)
            .map(|m| m.upstreams.iter().map(String::as_str).collect())
    }

    #[test]
    fn first_match_wins() {
        let routes = vec![
            route(&["ceo@corp.example"], &["vip"]),
            route(&["@corp.example", "@Alerts.Example"], &["m365", "backup"]),
            route(&["@*.Corp.example"], &["subs"]),
            route(&["*"], &["backup"]),
        ];
        let router = Router::new(&routes, &[]);
        let rows: &[(&str, Option<&[&str]>)] = &[
            ("ceo@corp.example", Some(&["vip"])),
            ("CEO@Corp.Example", Some(&["vip"])),
            ("app@corp.example", Some(&["m365", "backup"])),
            ("app@CORP.EXAMPLE", Some(&["m365", "backup"])),
            ("x@alerts.example", Some(&["m365", "backup"])),
            ("x@sub.corp.example", Some(&["subs"])),
            ("x@a.SUB.corp.example", Some(&["subs"])),
            ("x@subcorp.example", Some(&["backup"])),
            ("corp.example", Some(&["backup"])),
            ("", Some(&["backup"])),
        ];
        for (sender, expected) in rows {
            let got = names(&router, &from(sender), "rcpt@example.org");
            assert_eq!(got.as_deref(), *expected, "sender {sender:?}");
        }
        assert_eq!(
            router.used_upstreams(),
            vec!["vip", "m365", "backup", "subs"]
        );
    }

    #[test]
    fn null_sender_without_star_takes_the_first_route() {
        let router = Router::new(
            &[
                route(&["@corp.example", "a@b"], &["m365"]),
                route(&["@x.example"], &["ses"]),
            ],
            &[],
        );
        let rcpt = "r@example.org";
        assert_eq!(names(&router, &from(""), rcpt), Some(vec!["m365"]));
        assert_eq!(names(&router, &from("other@else.example"), rcpt), None);
        assert!(router.takes_origin(&from("")));
        assert!(!router.takes_origin(&from("other@else.example")));
    }

    #[test]
    fn single_upstream_without_routes() {
        let one = Router::new(&[], &["only".to_string()]);
        assert_eq!(names(&one, &from(""), "r@x"), Some(vec!["only"]));
        assert_eq!(names(&one, &from("a@b.example"), "r@x"), Some(vec!["only"]));
        let two = Router::new(&[], &["a".to_string(), "b".to_string()]);
        assert_eq!(names(&two, &from("a@b.example"), "r@x"), None);
        assert!(!two.takes_origin(&from("")));
    }

    /// Recipient patterns, listeners and identities: every condition a route sets must
    /// hold; the first route whose conditions all hold wins, per recipient.
    #[test]
    fn every_condition_must_hold() {
        let routes = vec![
            RouteConfig {
                recipients: list(&["@partner.example", "@*.gov.example"]),
                ..route(&["@corp.example"], &["partner"])
            },
            RouteConfig {
                senders: None,
                listeners: list(&["legacy"]),
                identities: list(&["network:10.20.30.0/24"]),
                ..route(&[], &["scans"])
            },
            RouteConfig {
                senders: None,
                identities: list(&["app1", "app2"]),
                recipients: list(&["boss@corp.example"]),
                ..route(&[], &["vip"])
            },
            RouteConfig {
                senders: None,
                ..route(&[], &["default"])
            },
        ];
        let router = Router::new(&routes, &[]);
        let corp = |identity| Origin {
            sender: "app@corp.example",
            listener: "submission",
            identity,
        };
        let scanner = |listener| Origin {
            sender: "scans@print.example",
            listener,
            identity: Some("network:10.20.30.0/24"),
        };
        // (origin, recipient, the upstream of its route)
        let rows: Vec<(Origin<'_>, &str, &str)> = vec![
            (corp(None), "x@partner.example", "partner"),
            (corp(None), "x@PARTNER.example", "partner"),
            (corp(None), "x@a.gov.example", "partner"),
            (corp(None), "x@gov.example", "default"),
            (corp(None), "x@other.example", "default"),
            (from("x@else.example"), "x@partner.example", "default"),
            (scanner("legacy"), "x@partner.example", "scans"),
            (scanner("submission"), "x@partner.example", "default"),
            (corp(Some("app1")), "Boss@corp.example", "vip"),
            (corp(Some("app2")), "x@partner.example", "partner"),
            (corp(Some("app3")), "boss@corp.example", "default"),
            (corp(None), "boss@corp.example", "default"),
        ];
        for (origin, rcpt, expected) in rows {
            let got = router.route(&origin, rcpt).map(|m| m.upstreams[0].as_str());
            assert_eq!(got, Some(expected), "{origin:?} to {rcpt}");
        }
        let a = router.route(&corp(None), "a@partner.example").unwrap();
        let b = router.route(&corp(None), "b@x.gov.example").unwrap();
        let c = router.route(&corp(None), "c@other.example").unwrap();
        assert_eq!((a.index, b.index, c.index), (0, 0, 3));
    }

    /// A route with only a recipient condition takes the null sender too; without any
    /// route for a recipient, there is no route.
    #[test]
    fn recipient_only_routes() {
        let routes = vec![RouteConfig {
            senders: None,
            recipients: list(&["@partner.example"]),
            ..route(&[], &["partner"])
        }];
        let router = Router::new(&routes, &[]);
        assert!(router.takes_origin(&from("anyone@else.example")));
        assert_eq!(
            names(&router, &from(""), "x@partner.example"),
            Some(vec!["partner"])
        );
        assert_eq!(
            names(&router, &from("a@b.example"), "x@other.example"),
            None
        );
    }
}
