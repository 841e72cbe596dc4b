//! Memory of the rate-limit and lockout tables under a flood of distinct client addresses.
//! Not a timing benchmark: run `cargo bench --bench ratelimit_memory` and read the figures.
//!
//! 1,000,000 distinct IPv4 addresses each send one message through a per-ip rule; the
//! resident set size (from `/proc/self/statm`) and the number of keys are printed before,
//! after the flood, and after the clock has moved past the interval and `evict` has run.
//! The same is then done for the AUTH lockout table at its cap.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use postern::clock::Clock;
use postern::config::load_str;
use postern::policy::lockout::{Lockout, MAX_ADDRESSES};
use postern::policy::ratelimit::{Counted, Keys, RateLimits};

const KEYS: u32 = 1_000_000;

const CONFIG: &str = "listeners:\n\
  - {name: l, address: \"127.0.0.1:0\", tls: none, auth: none, allow_networks: [0.0.0.0/0]}\n\
queue: {directory: q}\n\
upstreams: [{name: u, directory: o}]\n\
rate_limits: [{per: ip, messages: 100, interval: 1h}]\n";

/// Resident set size in MiB: the second field of `/proc/self/statm`, in pages, taken to be
/// 4 KiB (the page size on x86-64 and most aarch64 kernels).
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (pages * 4096) as f64 / (1024.0 * 1024.0)
}

fn address(i: u32) -> IpAddr {
    // 10.0.0.0 upwards: every key distinct.
    IpAddr::from((10u32 << 24 | i).to_be_bytes())
}

fn report(stage: &str, keys: usize) {
    println!("{stage:<28} rss {:>8.1} MiB   keys {keys:>9}", rss_mib());
}

fn rate_limits() {
    let config = match load_str(CONFIG, Path::new("bench.yaml")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let clock = Clock::new();
    let limits = RateLimits::new(&config, &clock);
    report("rate limits: start", limits.tracked_keys());
    let started = Instant::now();
    for i in 0..KEYS {
        let keys = Keys::connection(address(i), "l", None);
        if limits.check(Counted::Message, &keys, None).is_err() {
            panic!("a first message was refused");
        }
    }
    let per_check = started.elapsed() / KEYS;
    report("rate limits: 1M addresses", limits.tracked_keys());
    println!("{:<28} {per_check:?} per check", "");
    clock.advance(Duration::from_secs(3600 + 60));
    let started = Instant::now();
    limits.evict();
    let evict = started.elapsed();
    report("rate limits: after evict", limits.tracked_keys());
    println!("{:<28} evict took {evict:?}", "");
}

fn lockout() {
    let config = match load_str(CONFIG, Path::new("bench.yaml")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let clock = Clock::new();
    let lockout = Lockout::new(&config.auth_lockout, &clock);
    report("lockout: start", lockout.tracked());
    for i in 0..(MAX_ADDRESSES as u32 + 1000) {
        lockout.record_failure(address(i), "nobody", false);
    }
    report("lockout: at the cap", lockout.tracked());
    clock.advance(config.auth_lockout.window.get());
    lockout.evict();
    report("lockout: after evict", lockout.tracked());
}

fn main() {
    // `cargo test --benches` runs this too; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    rate_limits();
    lockout();
}
