//! postern's observability against a real Prometheus (Debian's `prometheus` and `promtool`,
//! which CI installs): a test server carries one accepted message, one refused sender, one
//! failed AUTH and one message the upstream defers once; a Prometheus child process scrapes
//! it every second with the repository's alert rules loaded. Then every PromQL expression of
//! the Grafana dashboard and of the alert rules is run through Prometheus' query API: it must
//! parse, and every metric it names must be one postern exports (a dashboard or rule naming a
//! series postern does not have is an empty panel or an alert that can never fire). Last,
//! `promtool` lints the scraped text, checks the rules and runs their unit tests.
//!
//! A missing `prometheus` or `promtool` fails the test (`apt-get install prometheus`): CI
//! installs it, so a skip would only hide that the dashboard and rules went unchecked.

mod promql;
mod server;
mod sources;
mod story;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::http::Scrape;
use crate::harness::{Opts, TestServer};
use promql::{grafana_substitute, metric_names, selectors, with_job};
use server::{Prometheus, promtool};
use sources::{
    dashboard_exprs, dashboard_variable_queries, repo_file, rule_exprs, rule_test_series,
};

/// How long Prometheus may take to come up, scrape, and evaluate the rules (each wait).
const WAIT: Duration = Duration::from_secs(30);
/// How often a wait asks again.
const POLL: Duration = Duration::from_millis(250);

/// The shipped config's rate limits (generous: nothing here hits them), so that
/// `postern_rate_limit_hits_total` has series, as it does in production.
const RATE_LIMITS: &str = "rate_limits:
  - {per: user, messages: 100, interval: 1h}
  - {per: ip, messages: 300, interval: 1h}
  - {per: ip, connections: 60, interval: 1m}
";

/// The whole story: mail through postern, Prometheus scraping it, every dashboard and rule
/// expression evaluated there, counters read back through PromQL, promtool's checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_against_a_real_prometheus() {
    let server = TestServer::start(Opts::with(RATE_LIMITS)).await;
    // Declared after the server so it is dropped (killed) before the server's directory,
    // which holds its data, is removed.
    let mut prom = Prometheus::start(server.dir.path(), server.http);
    // Prometheus first, so that it has samples from before the mail: rate() then sees the
    // increase rather than only a flat line.
    prom.wait_target_up().await;
    let mail_done = story::run(&server).await;
    // Prometheus has scraped the final counters, three times over.
    prom.wait_scrapes_after(mail_done).await;
    let scrape = server.scrape().await;
    check_counters(&prom, &scrape).await;
    check_computed(&prom).await;
    check_dashboard_and_rules(&mut prom).await;
    run_promtool(&scrape).await;
}

/// The counters, read through PromQL: Prometheus must have each series of
/// [`story::COUNTERS`] with exactly the value the mail implies (a zero included: a count
/// that should not move must not), which is also what a scrape of /metrics shows now
/// (everything has settled).
async fn check_counters(prom: &Prometheus, scrape: &Scrape) {
    for (series, want) in story::COUNTERS {
        let query = with_job(series);
        let values = prom
            .values(&query)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let direct = scrape.get(series);
        assert!(
            values == [want] && direct == want,
            "{query}: expected {want} through Prometheus and /metrics, got {values:?} and \
             {direct}"
        );
    }
}

/// A few the dashboard relies on, computed by Prometheus: the build, and the rate of
/// accepted messages (Prometheus scraped before the mail, so the increase lies inside
/// the window and the rate is positive).
async fn check_computed(prom: &Prometheus) {
    for (query, at_least) in [
        (r#"postern_build_info{job="postern"}"#, 1.0),
        (
            r#"sum(rate(postern_messages_accepted_total{job="postern"}[1m]))"#,
            f64::MIN_POSITIVE,
        ),
    ] {
        let values = prom
            .values(query)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        assert!(
            values.len() == 1 && values[0] >= at_least,
            "{query}: expected one value >= {at_least}, got {values:?}"
        );
    }
}

/// Every expression of the dashboard and of the rules, the dashboard's variables, the rules'
/// test series, and the rules as Prometheus loaded and evaluated them (every second): all
/// problems are reported together.
async fn check_dashboard_and_rules(prom: &mut Prometheus) {
    let names = prom.series_names().await;
    let dashboard = dashboard_exprs();
    let rules = rule_exprs();
    assert!(
        dashboard.len() >= 40,
        "only {} dashboard expressions found",
        dashboard.len()
    );
    assert!(!rules.is_empty(), "no rule expressions found");
    let mut problems = expression_problems(prom, &dashboard, &rules, &names).await;
    problems.extend(rule_test_problems(&names));
    problems.extend(
        prom.wait("every rule evaluated", async |p: &Prometheus| {
            p.rule_health(rules.len()).await
        })
        .await,
    );
    assert!(
        problems.is_empty(),
        "{} problem(s) with the dashboard or the rules:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The problems with the `dashboard`'s and the `rules`' expressions and with the
/// dashboard's variables, `names` being the series postern exports.
async fn expression_problems(
    prom: &Prometheus,
    dashboard: &[(String, String)],
    rules: &[(String, String)],
    names: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (origin, expr) in dashboard.iter().chain(rules) {
        problems.extend(check_expr(prom, origin, expr, names).await);
    }
    // The dashboard's variables are label_values() queries (Grafana's, not PromQL): their
    // metrics must exist and their selectors match.
    for (origin, query) in dashboard_variable_queries() {
        problems.extend(check_selectors(prom, &origin, &query, names).await);
    }
    problems
}

/// The rules' unit tests feed series by name: a name postern does not export (not among
/// `names`) would test an alert against data it never sees.
fn rule_test_problems(names: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (origin, series) in rule_test_series() {
        for name in metric_names(&series) {
            if !names.contains(&name) {
                problems.push(format!(
                    "{origin}: input series {series:?}: postern exports no {name}"
                ));
            }
        }
    }
    problems
}

/// Runs one dashboard or rule expression: it must parse and run, every metric it names
/// must be one postern exports, and each of its selectors must match series.
async fn check_expr(
    prom: &Prometheus,
    origin: &str,
    expr: &str,
    names: &BTreeSet<String>,
) -> Vec<String> {
    let promql = grafana_substitute(expr);
    let mut problems = Vec::new();
    if let Err(e) = prom.query(&promql).await {
        problems.push(format!("{origin}: {promql}\n    does not run: {e}"));
    }
    problems.extend(check_selectors(prom, origin, &promql, names).await);
    problems
}

/// Checks the metrics `text` names: each must be among `names` (exactly: a histogram is
/// queried as `_bucket`, `_sum` or `_count`, and its bare name is no series), and each
/// selector (`name{matchers}`) must match at least one series. postern registers every
/// labelled series at zero, so a selector matching nothing has a wrong label name or
/// value (e.g. a `result` postern never uses).
async fn check_selectors(
    prom: &Prometheus,
    origin: &str,
    text: &str,
    names: &BTreeSet<String>,
) -> Vec<String> {
    let text = grafana_substitute(text);
    let mut problems = Vec::new();
    for name in metric_names(&text) {
        if !names.contains(&name) {
            problems.push(format!(
                "{origin}: {text}\n    names {name}, which postern does not export"
            ));
        }
    }
    for selector in selectors(&text) {
        let count = format!("count({selector})");
        match prom.values(&count).await {
            Ok(v) if v.is_empty() => {
                problems.push(format!("{origin}: selector {selector} matches no series"));
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("{origin}: {count}: {e}")),
        }
    }
    problems
}

/// promtool: lint the exposition (`scrape`), check the rules, run their unit tests.
async fn run_promtool(scrape: &Scrape) {
    promtool(&["check", "metrics"], Some(scrape.text.clone())).await;
    let rules_file = repo_file("deploy/prometheus/postern-rules.yml");
    promtool(&["check", "rules", &rules_file.display().to_string()], None).await;
    let tests_file = repo_file("deploy/prometheus/postern-rules.test.yml");
    promtool(&["test", "rules", &tests_file.display().to_string()], None).await;
}
