//! The Prometheus child process (its config file, its lifetime, its HTTP API and the waits
//! on it) and `promtool`.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{ErrorKind, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value;

use super::promql::percent_encode;
use super::sources::repo_file;
use super::{POLL, WAIT};
use crate::harness::client::step;
use crate::harness::http::get;
use crate::harness::sink::reserve_port;

/// A Prometheus child process scraping one postern; killed (and reaped) on drop, also when
/// the test fails.
pub(super) struct Prometheus {
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

/// Writes `dir/prometheus.yml`: one job `postern` scraping `target` every second, the
/// repository's rules evaluated every second. Returns its path.
fn write_config(dir: &Path, target: SocketAddr) -> PathBuf {
    let rules = repo_file("deploy/prometheus/postern-rules.yml");
    let config = dir.join("prometheus.yml");
    let yaml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules:?}\n\
         scrape_configs:\n  - job_name: postern\n    static_configs:\n      - targets: [\"{target}\"]\n",
        rules = rules.display().to_string(),
    );
    std::fs::write(&config, yaml).unwrap_or_else(|e| panic!("write {config:?}: {e}"));
    config
}

/// Starts `prometheus` with `config`, its data under `dir`, listening on `addr`, its stdout
/// and stderr into `log`; a missing binary fails the test.
fn spawn(dir: &Path, config: &Path, addr: SocketAddr, log: &Path) -> Child {
    let out = File::create(log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
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
    match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "prometheus is not on PATH ({e}); install it (`apt-get install prometheus`): CI \
             does, and this test never skips"
        ),
        Err(e) => panic!("cannot run prometheus: {e}"),
    }
}

/// The process: start, output, waits.
impl Prometheus {
    /// Writes a config into `dir` (one job `postern` scraping `target` every second, the
    /// repository's rules evaluated every second) and starts Prometheus on a free port.
    pub(super) fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let config = write_config(dir, target);
        let addr = SocketAddr::from(([127, 0, 0, 1], reserve_port()));
        let log = dir.join("prometheus.log");
        let child = spawn(dir, &config, addr, &log);
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
    pub(super) async fn wait<T>(
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

    /// Waits until Prometheus scrapes the postern target successfully (`up` is 1).
    pub(super) async fn wait_target_up(&mut self) {
        self.wait("the postern target up", async |p: &Prometheus| {
            let v = p.values(r#"up{job="postern"}"#).await?;
            (v == [1.0]).then_some(()).ok_or(format!("up = {v:?}"))
        })
        .await;
    }

    /// Waits until Prometheus has scraped postern three times after `after` (unix seconds).
    pub(super) async fn wait_scrapes_after(&mut self, after: f64) {
        self.wait("three scrapes after the mail", async |p: &Prometheus| {
            let times = p.sample_times(r#"up{job="postern"}[30s]"#).await?;
            let n = times.iter().filter(|t| **t > after).count();
            (n >= 3).then_some(()).ok_or(format!("{n} scrapes so far"))
        })
        .await;
    }
}

/// The HTTP API.
impl Prometheus {
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
    pub(super) async fn query(&self, promql: &str) -> Result<Value, String> {
        self.api(&format!("query?query={}", percent_encode(promql)))
            .await
    }

    /// The values of an instant query's result (one per series, or the scalar).
    pub(super) async fn values(&self, promql: &str) -> Result<Vec<f64>, String> {
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
    pub(super) async fn series_names(&self) -> BTreeSet<String> {
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

    /// `Ok(problems)` once Prometheus has loaded `expected` rules and evaluated each of
    /// them; the problems are rules whose health is not `ok` (an evaluation error), or a
    /// wrong count.
    pub(super) async fn rule_health(&self, expected: usize) -> Result<Vec<String>, String> {
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
pub(super) async fn promtool(args: &[&str], stdin: Option<String>) {
    let argv: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let what = format!("promtool {}", argv.join(" "));
    let run = tokio::task::spawn_blocking(move || run_promtool(&argv, stdin));
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

/// Runs `promtool argv` to its end (blocking), with `stdin` piped in, if any.
fn run_promtool(argv: &[String], stdin: Option<String>) -> std::io::Result<Output> {
    let mut child = Command::new("promtool")
        .args(argv)
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
}
