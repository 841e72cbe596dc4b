//! The latency a `scope: cluster` rate rule adds per message, against a real local
//! `redis-server` (started here on a free loopback port, without persistence). Not a
//! criterion benchmark: run `cargo bench --bench redis_latency` and read the figures.
//!
//! Each MAIL's rate check ([`RateLimits::check_shared`]) is timed `ROUNDS` times with a
//! local per-user rule only, then with a cluster per-user rule beside it (one EVALSHA of
//! the GCRA script per check), each after a warm-up; p50 and p99 of both and the
//! difference are printed. The limits are high enough that nothing is refused.

#![allow(
    clippy::expect_used,
    reason = "a benchmark: a failed set-up is reported by the panic"
)]

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern::clock::Clock;
use postern::cluster::Redis;
use postern::config::load_str;
use postern::policy::ratelimit::{Counted, Keys, RateLimits};
use postern::telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 20_000;
const WARM_UP: usize = 2_000;

fn config(port: u16, scope: &str) -> String {
    format!(
        "listeners:\n\
  - {{name: l, address: \"127.0.0.1:0\", tls: none, auth: none, allow_networks: [0.0.0.0/0]}}\n\
queue: {{directory: q}}\n\
upstreams: [{{name: u, directory: o}}]\n\
redis: {{url: \"redis://127.0.0.1:{port}\"}}\n\
rate_limits:\n\
  - {{name: local, per: user, messages: 1000000000, interval: 1h}}\n{scope}"
    )
}

/// Percentile `p` (0..=100) of sorted `samples`, in microseconds.
fn percentile(samples: &[Duration], p: usize) -> f64 {
    let i = (samples.len() * p / 100).min(samples.len() - 1);
    samples[i].as_secs_f64() * 1e6
}

async fn measure(limits: &RateLimits, redis: &Redis) -> (f64, f64) {
    let keys = Keys {
        user: Some("alice"),
        ..Keys::connection(IpAddr::V4(Ipv4Addr::LOCALHOST), "l", None)
    };
    let mut samples = Vec::with_capacity(ROUNDS);
    for i in 0..WARM_UP + ROUNDS {
        let started = Instant::now();
        let checked = limits
            .check_shared(Some(redis), Counted::Message, &keys, None)
            .await;
        let took = started.elapsed();
        assert!(checked.is_ok(), "refused: {checked:?}");
        if i >= WARM_UP {
            samples.push(took);
        }
    }
    samples.sort();
    (percentile(&samples, 50), percentile(&samples, 99))
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _server = Server(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let path = Path::new("bench.yaml");
    let cluster_rule =
        "- {name: shared, per: user, messages: 1000000000, interval: 1h, scope: cluster}\n";
    let (local, cluster) = match (
        load_str(&config(port, ""), path),
        load_str(&config(port, cluster_rule), path),
    ) {
        (Ok(l), Ok(c)) => (l, c),
        (Err(e), _) | (_, Err(e)) => panic!("{e}"),
    };
    let clock = Clock::new();
    rt.block_on(async {
        let metrics = Metrics::new().expect("metrics");
        let redis_cfg = cluster.redis.as_ref().expect("a redis section");
        let redis = Redis::new(redis_cfg, metrics.redis.clone()).expect("a client");
        let stop = CancellationToken::new();
        tokio::spawn(redis.clone().watch(stop.clone()));
        for _ in 0..500 {
            if redis.is_up() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(redis.is_up(), "redis-server did not answer");
        let (l50, l99) = measure(&RateLimits::new(&local, &clock), &redis).await;
        let (c50, c99) = measure(&RateLimits::new(&cluster, &clock), &redis).await;
        println!("rate check per message, {ROUNDS} rounds, loopback redis-server:");
        println!("  local rule only:        p50 {l50:>8.1} us   p99 {l99:>8.1} us");
        println!("  + one cluster rule:     p50 {c50:>8.1} us   p99 {c99:>8.1} us");
        println!(
            "  added by the cluster rule: p50 {:.1} us, p99 {:.1} us",
            c50 - l50,
            c99 - l99
        );
        stop.cancel();
    });
}

/// The `redis-server` process, killed by its PID when dropped (a panic included).
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
