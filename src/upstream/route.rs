//! Sender-based routing: envelope sender → ordered list of upstream names (failover order).
//!
//! Patterns are users' sender patterns ([`SenderPattern`]): `user@domain` (exact, case
//! ignored), `@domain`, `@*.domain` and `*`; the null sender matches only `*` (see
//! [`Router::route`] for its fallback).

use crate::config::schema::RouteConfig;
use crate::policy::identity::SenderPattern;

/// One route: patterns and the upstreams to try, in order.
#[derive(Debug, Clone)]
struct Route {
    patterns: Vec<SenderPattern>,
    upstreams: Vec<String>,
}

/// Picks the upstreams for a sender; the first matching route wins.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the router. With no routes and exactly one upstream, every sender goes to it
    /// (the single-smarthost setup needs no `routes:`). Names are not checked here: config
    /// validation and [`crate::upstream::Upstreams::new`] do that.
    pub fn new(routes: &[RouteConfig], upstream_names: &[String]) -> Router {
        let mut parsed: Vec<Route> = routes
            .iter()
            .map(|r| Route {
                patterns: r.senders.iter().map(|s| SenderPattern::parse(s)).collect(),
                upstreams: r.upstreams.clone(),
            })
            .collect();
        if parsed.is_empty() && upstream_names.len() == 1 {
            parsed.push(Route {
                patterns: vec![SenderPattern::Any],
                upstreams: upstream_names.to_vec(),
            });
        }
        Router { routes: parsed }
    }

    /// The upstream names to try for `sender` (`""` is the null sender), in failover order;
    /// `None` when no route matches.
    ///
    /// The null sender matches `*` routes; when none exists it takes the first route, so
    /// bounces, vacation replies and MDNs from authenticated clients (RFC 5321 4.5.5) are
    /// never refused for want of a domain to route by.
    pub fn route(&self, sender: &str) -> Option<&[String]> {
        let matched = self
            .routes
            .iter()
            .find(|r| r.patterns.iter().any(|p| p.matches(sender)));
        let fallback = || sender.is_empty().then(|| self.routes.first()).flatten();
        matched.or_else(fallback).map(|r| r.upstreams.as_slice())
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

    fn route(senders: &[&str], upstreams: &[&str]) -> RouteConfig {
        RouteConfig {
            senders: senders.iter().map(|s| s.to_string()).collect(),
            upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
        }
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
            let got: Option<Vec<&str>> = router
                .route(sender)
                .map(|u| u.iter().map(String::as_str).collect());
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
        assert_eq!(router.route(""), Some(&["m365".to_string()][..]));
        assert_eq!(router.route("other@else.example"), None);
    }

    #[test]
    fn single_upstream_without_routes() {
        let one = Router::new(&[], &["only".to_string()]);
        assert_eq!(one.route(""), Some(&["only".to_string()][..]));
        assert_eq!(one.route("a@b.example"), Some(&["only".to_string()][..]));
        let two = Router::new(&[], &["a".to_string(), "b".to_string()]);
        assert_eq!(two.route("a@b.example"), None);
    }
}
