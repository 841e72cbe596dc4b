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

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{ErrorKind, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::client::step;
use crate::harness::http::get;
use crate::harness::sink::{Fault, reserve_port};
use crate::harness::{Opts, TestServer, delivered, message, rows, send_mail};

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

/// A repository file, by its path from the crate root.
fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

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
    prom.wait("the postern target up", async |p: &Prometheus| {
        let v = p.values(r#"up{job="postern"}"#).await?;
        (v == [1.0]).then_some(()).ok_or(format!("up = {v:?}"))
    })
    .await;

    // --- The mail.
    let sink = server.sink();
    // 1. Accepted and delivered at once (submission: STARTTLS + AUTH).
    let mut d = server.submission_session().await;
    let first = message("first", "From: alice@example.com\r\n", "hello\r\n");
    send_mail(&mut d, "alice@example.com", &["bob@example.org"], &first).await;
    sink.wait_for(crate::harness::DELIVERY, |m| !m.is_empty())
        .await;
    // 2. Refused: alice does not own mallory's address.
    d.cmd("MAIL FROM:<mallory@example.com>", "553 5.7.1").await;
    d.cmd("QUIT", "221").await;
    // 3. A failed AUTH: alice with a wrong password (`\0alice\0wrong`).
    let mut d = server.starttls_session_from(None).await;
    d.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8").await;
    d.cmd("QUIT", "221").await;
    // 4. Deferred once by the upstream (451 to the final dot), delivered by the retry
    //    (backoff 1-2 s); through the legacy listener.
    sink.fault(Fault::DataEnd("451 4.3.0 Try again".into()), Some(1));
    let mut d = server.legacy_session().await;
    let second = message("second", "From: printer@example.net\r\n", "again\r\n");
    send_mail(
        &mut d,
        "printer@example.net",
        &["carol@example.org"],
        &second,
    )
    .await;
    d.cmd("QUIT", "221").await;
    let got = delivered(sink, 2, |tag| match tag {
        "first" => first.clone(),
        _ => second.clone(),
    })
    .await;
    assert_eq!(
        got,
        rows(&[
            ("first", "alice@example.com", &["bob@example.org"]),
            ("second", "printer@example.net", &["carol@example.org"]),
        ])
    );
    assert!(sink.violations().is_empty(), "{:?}", sink.violations());
    // The sink records a message before postern reads its 250: wait until postern has
    // counted both deliveries and emptied its queue, so that the counters are final.
    let deadline = Instant::now() + WAIT;
    loop {
        let s = server.scrape().await;
        let completed = s.get(r#"postern_messages_completed_total{result="delivered"}"#);
        if completed >= 2.0 && s.get("postern_queue_messages") == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postern never settled:\n{}",
            s.text
        );
        tokio::time::sleep(POLL).await;
    }
    let mail_done = unix_now();

    // --- Prometheus has scraped the final counters, three times over.
    prom.wait("three scrapes after the mail", async |p: &Prometheus| {
        let after = p.sample_times(r#"up{job="postern"}[30s]"#).await?;
        let n = after.iter().filter(|t| **t > mail_done).count();
        (n >= 3).then_some(()).ok_or(format!("{n} scrapes so far"))
    })
    .await;

    // --- The counters, read through PromQL. Each series is named as /metrics prints it
    // (labels sorted); Prometheus must have it with at least the value the mail implies, and
    // exactly the value a scrape of /metrics shows now (everything has settled).
    let scrape = server.scrape().await;
    for (series, at_least) in [
        (
            r#"postern_messages_accepted_total{listener="submission"}"#,
            1.0,
        ),
        (r#"postern_messages_accepted_total{listener="legacy"}"#, 1.0),
        (
            r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="failure"}"#,
            1.0,
        ),
        (
            r#"postern_auth_attempts_total{listener="submission",mechanism="plain",result="success"}"#,
            1.0,
        ),
        (
            r#"postern_messages_refused_total{listener="submission",reason="sender_not_owned"}"#,
            1.0,
        ),
        (
            r#"postern_delivery_attempts_total{result="deferred",upstream="sink"}"#,
            1.0,
        ),
        (
            r#"postern_delivery_attempts_total{result="delivered",upstream="sink"}"#,
            2.0,
        ),
        (
            r#"postern_delivery_attempts_total{result="failed",upstream="sink"}"#,
            0.0,
        ),
        (
            r#"postern_delivery_attempts_total{result="maybe_delivered",upstream="sink"}"#,
            0.0,
        ),
        (
            r#"postern_upstream_failures_total{stage="final_dot",upstream="sink"}"#,
            1.0,
        ),
        (
            r#"postern_messages_completed_total{result="delivered"}"#,
            2.0,
        ),
        (r#"postern_messages_completed_total{result="failed"}"#, 0.0),
        (r#"postern_upstream_up{upstream="sink"}"#, 1.0),
        ("postern_queue_messages", 0.0),
        ("postern_ready", 1.0),
    ] {
        let query = with_job(series);
        let values = prom
            .values(&query)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let direct = scrape.get(series);
        assert!(
            values.len() == 1 && values[0] >= at_least && values[0] == direct,
            "{query}: expected one value >= {at_least} and equal to /metrics' {direct}, got \
             {values:?}"
        );
    }
    // A few the dashboard relies on, computed by Prometheus: the build, and the rate of
    // accepted messages (Prometheus scraped before the mail, so the increase lies inside
    // the window and the rate is positive).
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

    // --- Every expression of the dashboard and of the rules.
    let names = prom.series_names().await;
    let mut problems = Vec::new();
    let dashboard = dashboard_exprs();
    let rules = rule_exprs();
    assert!(
        dashboard.len() >= 40,
        "only {} dashboard expressions found",
        dashboard.len()
    );
    assert!(!rules.is_empty(), "no rule expressions found");
    for (origin, expr) in dashboard.iter().chain(&rules) {
        problems.extend(prom.check_expr(origin, expr, &names).await);
    }
    // The dashboard's variables are label_values() queries (Grafana's, not PromQL): their
    // metrics must exist and their selectors match.
    for (origin, query) in dashboard_variable_queries() {
        problems.extend(prom.check_selectors(&origin, &query, &names).await);
    }
    // The rules' unit tests feed series by name: a name postern does not export would test
    // an alert against data it never sees.
    for (origin, series) in rule_test_series() {
        for name in metric_names(&series) {
            if !names.contains(&name) {
                problems.push(format!(
                    "{origin}: input series {series:?}: postern exports no {name}"
                ));
            }
        }
    }

    // --- The rules as Prometheus loaded and evaluated them (every second).
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

    // --- promtool: lint the exposition, check the rules, run their unit tests.
    promtool(&["check", "metrics"], Some(scrape.text.clone())).await;
    let rules_file = repo_file("deploy/prometheus/postern-rules.yml");
    promtool(&["check", "rules", &rules_file.display().to_string()], None).await;
    let tests_file = repo_file("deploy/prometheus/postern-rules.test.yml");
    promtool(&["test", "rules", &tests_file.display().to_string()], None).await;
}

/// A Prometheus child process scraping one postern; killed (and reaped) on drop, also when
/// the test fails.
struct Prometheus {
    child: Child,
    /// Its web listener (the HTTP API).
    addr: SocketAddr,
    /// Its stdout and stderr, for failure messages.
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Our own child, by its PID: SIGKILL, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Writes a config into `dir` (one job `postern` scraping `target` every second, the
    /// repository's rules evaluated every second) and starts Prometheus on a free port.
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let rules = repo_file("deploy/prometheus/postern-rules.yml");
        let config = dir.join("prometheus.yml");
        let yaml = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: postern\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = rules.display().to_string(),
        );
        std::fs::write(&config, yaml).unwrap_or_else(|e| panic!("write {config:?}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], reserve_port()));
        let log = dir.join("prometheus.log");
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("dup {log:?}: {e}"));
        let spawned = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "prometheus is not on PATH ({e}); install it (`apt-get install prometheus`): CI \
                 does, and this test never skips"
            ),
            Err(e) => panic!("cannot run prometheus: {e}"),
        };
        Prometheus { child, addr, log }
    }

    /// Its output so far, for failure messages.
    fn output(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("prometheus output ({}):\n{text}", self.log.display())
    }

    /// Panics (with its output) if the process has exited, e.g. because the port was taken.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status})\n{}", self.output());
        }
    }

    /// Polls `probe` every [`POLL`] until it gives `Ok`, for at most [`WAIT`]; panics with
    /// its last error and Prometheus' output otherwise. Waits for the web listener first
    /// (the harness's HTTP client panics on a refused connection).
    async fn wait<T>(
        &mut self,
        what: &str,
        mut probe: impl AsyncFnMut(&Prometheus) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            self.assert_running();
            let last = match tokio::net::TcpStream::connect(self.addr).await {
                Err(e) => format!("connect {}: {e}", self.addr),
                Ok(_) => match get(self.addr, "/-/ready").await {
                    (200, _) => match probe(self).await {
                        Ok(v) => return v,
                        Err(e) => e,
                    },
                    (status, body) => format!("/-/ready: {status} {body}"),
                },
            };
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not within {WAIT:?}; last: {last}\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET /api/v1/<path>`: the `data` of a successful answer, or the error Prometheus gave.
    async fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = get(self.addr, &format!("/api/v1/{path}")).await;
        let json: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if json["status"] != "success" {
            return Err(format!(
                "HTTP {status}, {}: {}",
                json["errorType"].as_str().unwrap_or("?"),
                json["error"].as_str().unwrap_or(&body)
            ));
        }
        Ok(json["data"].clone())
    }

    /// Runs an instant query; its `data` (`resultType`, `result`).
    async fn query(&self, promql: &str) -> Result<Value, String> {
        self.api(&format!("query?query={}", percent_encode(promql)))
            .await
    }

    /// The values of an instant query's result (one per series, or the scalar).
    async fn values(&self, promql: &str) -> Result<Vec<f64>, String> {
        let data = self.query(promql).await?;
        let sample = |v: &Value| v[1].as_str().and_then(|s| s.parse::<f64>().ok());
        let values = match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .map(|r| r.iter().filter_map(|s| sample(&s["value"])).collect()),
            Some("scalar") => sample(&data["result"]).map(|v| vec![v]),
            _ => None,
        };
        values.ok_or_else(|| format!("unexpected answer to {promql}: {data}"))
    }

    /// The sample timestamps (unix seconds) of a range-vector query, all series together.
    async fn sample_times(&self, promql: &str) -> Result<Vec<f64>, String> {
        let data = self.query(promql).await?;
        let series = data["result"].as_array().cloned().unwrap_or_default();
        Ok(series
            .iter()
            .filter_map(|s| s["values"].as_array())
            .flatten()
            .filter_map(|v| v[0].as_f64())
            .collect())
    }

    /// Every metric name Prometheus has scraped from postern (histograms as their
    /// `_bucket`, `_sum` and `_count` series; plus the scrape's own `up`, `scrape_*`).
    async fn series_names(&self) -> BTreeSet<String> {
        let path = format!(
            "label/__name__/values?{}={}",
            percent_encode("match[]"),
            percent_encode(r#"{job="postern"}"#)
        );
        let data = self
            .api(&path)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let names: BTreeSet<String> = data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        assert!(
            names.contains("postern_build_info") && names.contains("process_cpu_seconds_total"),
            "Prometheus has not got postern's metrics: {names:?}"
        );
        names
    }

    /// Runs one dashboard or rule expression: it must parse and run, every metric it names
    /// must be one postern exports, and each of its selectors must match series.
    async fn check_expr(&self, origin: &str, expr: &str, names: &BTreeSet<String>) -> Vec<String> {
        let promql = grafana_substitute(expr);
        let mut problems = Vec::new();
        if let Err(e) = self.query(&promql).await {
            problems.push(format!("{origin}: {promql}\n    does not run: {e}"));
        }
        problems.extend(self.check_selectors(origin, &promql, names).await);
        problems
    }

    /// Checks the metrics `text` names: each must be among `names` (exactly: a histogram is
    /// queried as `_bucket`, `_sum` or `_count`, and its bare name is no series), and each
    /// selector (`name{matchers}`) must match at least one series. postern registers every
    /// labelled series at zero, so a selector matching nothing has a wrong label name or
    /// value (e.g. a `result` postern never uses).
    async fn check_selectors(
        &self,
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
            match self.values(&count).await {
                Ok(v) if v.is_empty() => {
                    problems.push(format!("{origin}: selector {selector} matches no series"));
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("{origin}: {count}: {e}")),
            }
        }
        problems
    }

    /// `Ok(problems)` once Prometheus has loaded `expected` rules and evaluated each of
    /// them; the problems are rules whose health is not `ok` (an evaluation error), or a
    /// wrong count.
    async fn rule_health(&self, expected: usize) -> Result<Vec<String>, String> {
        let data = self.api("rules").await?;
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["rules"].as_array())
            .flatten()
            .cloned()
            .collect();
        let unevaluated = rules.iter().filter(|r| r["health"] == "unknown").count();
        if unevaluated > 0 {
            return Err(format!(
                "{unevaluated} of {} rules not evaluated yet",
                rules.len()
            ));
        }
        let mut problems = Vec::new();
        if rules.len() != expected {
            problems.push(format!(
                "Prometheus loaded {} rules, the file has {expected}",
                rules.len()
            ));
        }
        for r in &rules {
            if r["health"] != "ok" {
                problems.push(format!(
                    "rule {}: health {}: {}",
                    r["name"], r["health"], r["lastError"]
                ));
            }
        }
        Ok(problems)
    }
}

/// Runs `promtool args` (with `stdin` piped in, if any) off the runtime's workers; it must
/// exit 0. Its output is printed on failure.
async fn promtool(args: &[&str], stdin: Option<String>) {
    let argv: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let what = format!("promtool {}", argv.join(" "));
    let run = tokio::task::spawn_blocking(move || -> std::io::Result<Output> {
        let mut child = Command::new("promtool")
            .args(&argv)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
            // Dropping the pipe closes it: promtool reads to EOF.
        }
        child.wait_with_output()
    });
    let out = match step(&what, run)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "promtool is not on PATH ({e}); install it (`apt-get install prometheus`): CI \
             does, and this test never skips"
        ),
        Err(e) => panic!("cannot run {what}: {e}"),
    };
    assert!(
        out.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `targets[].expr` of `grafana/postern.json`, with the panel's title, recursing into
/// rows' `panels`.
fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((format!("dashboard panel {title:?}"), expr.to_owned()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&read_json("grafana/postern.json")["panels"], &mut out);
    out
}

/// The dashboard's `query` variables' queries (`label_values(...)`), with the variable name.
fn dashboard_variable_queries() -> Vec<(String, String)> {
    let dashboard = read_json("grafana/postern.json");
    let vars = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    vars.iter()
        .filter(|v| v["type"] == "query")
        .filter_map(|v| {
            let query = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())?;
            let name = v["name"].as_str().unwrap_or("?");
            Some((format!("dashboard variable ${name}"), query.to_owned()))
        })
        .collect()
}

/// Every `expr` of `deploy/prometheus/postern-rules.yml`, with the alert or record name.
fn rule_exprs() -> Vec<(String, String)> {
    let rules = read_yaml("deploy/prometheus/postern-rules.yml");
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap_or("?");
            if let Some(expr) = rule["expr"].as_str() {
                out.push((format!("rule {name}"), expr.to_owned()));
            }
        }
    }
    out
}

/// Every `input_series[].series` of the rules' unit tests, with the test's name.
fn rule_test_series() -> Vec<(String, String)> {
    let tests = read_yaml("deploy/prometheus/postern-rules.test.yml");
    let mut out = Vec::new();
    for test in tests["tests"].as_sequence().into_iter().flatten() {
        let name = test["name"].as_str().unwrap_or("?");
        for input in test["input_series"].as_sequence().into_iter().flatten() {
            if let Some(series) = input["series"].as_str() {
                out.push((format!("rule test {name:?}"), series.to_owned()));
            }
        }
    }
    out
}

fn read_json(rel: &str) -> Value {
    let path = repo_file(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn read_yaml(rel: &str) -> serde_yaml::Value {
    let path = repo_file(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Grafana's variables replaced as a dashboard would send the query: `$__rate_interval` and
/// `$__interval` by `1m`, `$__range` by `1h`, any other `$name` or `${name}` by `.*` (the
/// dashboard's "All" value: every variable here has `allValue: ".*"`).
fn grafana_substitute(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        // A braced name may carry a format (`${var:regex}`): the name is before the colon.
        let name = name.split(':').next().unwrap_or(name);
        out.push_str(match name {
            "" => "$",
            "__rate_interval" | "__interval" => "1m",
            "__range" => "1h",
            _ => ".*",
        });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The identifiers of `text` outside quoted strings, with their byte offsets: PromQL
/// metric and label names, function names, keywords.
fn identifiers(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            // Skip the string (backslash escapes included; backquoted ones have none).
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += if bytes[i] == b'\\' && c != b'`' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            out.push((start, &text[start..i]));
        } else if c.is_ascii_digit() {
            // A number or duration (`1e3`, `5m`, `0x1f`): not an identifier's start.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Whether an identifier is one of postern's metric names (`\b(postern|process)_[a-z0-9_]+\b`).
fn is_metric(ident: &str) -> bool {
    ["postern_", "process_"].iter().any(|p| {
        ident.strip_prefix(p).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
    })
}

/// The postern and process metric names in `text`, each once.
fn metric_names(text: &str) -> BTreeSet<String> {
    identifiers(text)
        .into_iter()
        .filter(|(_, id)| is_metric(id))
        .map(|(_, id)| id.to_owned())
        .collect()
}

/// The selectors with matchers in `text`: each postern or process metric name followed by
/// `{...}` (quotes respected), as written.
fn selectors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (start, id) in identifiers(text) {
        if !is_metric(id) {
            continue;
        }
        let after = &text[start + id.len()..];
        let Some(inner) = after.trim_start().strip_prefix('{') else {
            continue;
        };
        let mut quote = None;
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            match (quote, c) {
                (Some(_), _) if escaped => escaped = false,
                (Some(_), '\\') => escaped = true,
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'' | '`') => quote = Some(c),
                (None, '}') => {
                    out.insert(format!("{id}{{{}}}", &inner[..i]));
                    break;
                }
                (None, _) => {}
            }
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a query string).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `series` as /metrics prints it (`name` or `name{labels}`) as PromQL restricted to the
/// `postern` job.
fn with_job(series: &str) -> String {
    match series.split_once('{') {
        Some((name, labels)) => format!(r#"{name}{{job="postern",{labels}"#),
        None => format!(r#"{series}{{job="postern"}}"#),
    }
}

/// Now, in unix seconds (Prometheus' sample timestamps run on the same clock).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The helpers that stand between the files and Prometheus, on fixed inputs.
#[test]
fn substitution_and_extraction() {
    assert_eq!(
        grafana_substitute(
            r#"rate(x{a=~"$instance", b=~"${listener}"}[$__rate_interval]) $__range $__interval"#
        ),
        r#"rate(x{a=~".*", b=~".*"}[1m]) 1h 1m"#
    );
    let expr = r#"sum(rate(postern_a_total{l="postern_not_a_name", m!="}"}[1m])) / process_open_fds and on (instance) postern_b"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["postern_a_total", "postern_b", "process_open_fds"]
    );
    assert_eq!(
        selectors(expr).into_iter().collect::<Vec<_>>(),
        [r#"postern_a_total{l="postern_not_a_name", m!="}"}"#]
    );
    assert_eq!(
        percent_encode(r#"up{job="x"}[1m]"#),
        "up%7Bjob%3D%22x%22%7D%5B1m%5D"
    );
}
