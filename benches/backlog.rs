//! A backlog of deferred mail: the scheduler's memory and CPU while 10,000 messages wait
//! for a dead upstream, and how the backlog drains when it comes back. Not a timing test:
//! run `cargo bench --bench backlog` and read the figures.
//!
//! postern runs in this process on loopback, with one SMTP upstream whose port is closed.
//! 10,000 messages are submitted over 8 pipelined sessions; every attempt is refused and
//! retried with backoff (2 s doubling to 8 s). For 30 s the resident set size, the CPU used
//! by the process each 5 s, and the refused attempts are printed: they should stay flat.
//! Then a minimal SMTP sink starts on the upstream's port; the drain's duration, the sink's
//! peak concurrent connections (at most `max_connections`, no storm) and its connection
//! count are printed.

#![allow(
    clippy::expect_used,
    reason = "a benchmark: a failure is a broken set-up, reported as it happens"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const MESSAGES: usize = 10_000;
const SESSIONS: usize = 8;
const MAX_CONNECTIONS: usize = 4;

/// Resident set size in MiB (`/proc/self/statm`, 4 KiB pages).
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (pages * 4096) as f64 / (1024.0 * 1024.0)
}

/// CPU seconds used by the process (utime + stime of `/proc/self/stat`, 100 ticks/s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// A free loopback port (bound, then released for the sink to take later).
fn reserve_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Reads one reply (possibly multiline) and returns its code.
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return 0;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
    }
}

/// Submits `n` messages on one session.
async fn submit(addr: SocketAddr, first: usize, n: usize) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    assert_eq!(reply(&mut r).await, 220);
    w.write_all(b"EHLO bench.test\r\n").await.expect("write");
    assert_eq!(reply(&mut r).await, 250);
    for i in first..first + n {
        let msg =
            format!("MAIL FROM:<app@example.com>\r\nRCPT TO:<user{i}@example.org>\r\nDATA\r\n");
        w.write_all(msg.as_bytes()).await.expect("write");
        for code in [250, 250, 354] {
            assert_eq!(reply(&mut r).await, code);
        }
        let body = format!("Subject: backlog {i}\r\n\r\nMessage {i} of the backlog.\r\n.\r\n");
        w.write_all(body.as_bytes()).await.expect("write");
        assert_eq!(reply(&mut r).await, 250);
    }
    w.write_all(b"QUIT\r\n").await.expect("write");
    let _ = reply(&mut r).await;
}

/// What the sink saw.
#[derive(Default)]
struct SinkCounts {
    messages: AtomicUsize,
    connections: AtomicUsize,
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// One sink session: just enough SMTP for postern's client (EHLO with PIPELINING, MAIL,
/// RCPT, DATA, RSET, NOOP, QUIT).
async fn sink_session(stream: TcpStream, counts: Arc<SinkCounts>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    if w.write_all(b"220 sink.bench ESMTP\r\n").await.is_err() {
        return;
    }
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let verb = line.get(..4).map(|v| v.to_ascii_uppercase());
        let answer: &[u8] = match verb.as_deref() {
            Some(b"EHLO") => {
                b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n"
            }
            Some(b"DATA") => {
                if w.write_all(b"354 go on\r\n").await.is_err() {
                    return;
                }
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(&l);
                }
                counts.messages.fetch_add(1, Ordering::SeqCst);
                b"250 2.0.0 ok\r\n"
            }
            Some(b"QUIT") => {
                let _ = w.write_all(b"221 2.0.0 bye\r\n").await;
                return;
            }
            _ => b"250 2.0.0 ok\r\n",
        };
        if w.write_all(answer).await.is_err() {
            return;
        }
    }
}

async fn sink(listener: TcpListener, counts: Arc<SinkCounts>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        // Replies go out as written (the client pipelines; Nagle would hold them back).
        let _ = stream.set_nodelay(true);
        let counts = counts.clone();
        counts.connections.fetch_add(1, Ordering::SeqCst);
        let open = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
        counts.peak.fetch_max(open, Ordering::SeqCst);
        tokio::spawn(async move {
            sink_session(stream, counts.clone()).await;
            counts.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// One counter's value from a `/metrics` scrape (0 when absent).
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return 0.0;
    };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0.0;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = reserve_port();
    let yaml = format!(
        "hostname: relay.bench\n\
         listeners:\n  - {{name: legacy, address: \"127.0.0.1:0\", tls: none, auth: none, allow_networks: [127.0.0.1/32]}}\n\
         limits: {{max_messages_per_session: {MESSAGES}}}\n\
         queue: {{directory: {d}/spool, min_backoff: 2s, max_backoff: 8s, max_age: 1d}}\n\
         upstreams:\n  - {{name: u, address: \"127.0.0.1:{port}\", tls: none, connect_timeout: 2s, max_connections: {MAX_CONNECTIONS}}}\n\
         http: {{address: \"127.0.0.1:0\"}}\n\
         log: {{level: error}}\n",
        d = dir.path().display()
    );
    let cfg = postern::config::load_str(&yaml, Path::new("/tmp/backlog.yaml")).expect("config");
    let running = postern::app::start(cfg).await.expect("start");
    let legacy = running.addr("legacy").expect("legacy");
    let http = running.http_addr().expect("http");
    let deferred = r#"postern_delivery_attempts_total{result="deferred",upstream="u"}"#;

    println!("rss before: {:.1} MiB", rss_mib());
    let started = Instant::now();
    let per = MESSAGES / SESSIONS;
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|s| tokio::spawn(submit(legacy, s * per, per)))
        .collect();
    for t in tasks {
        t.await.expect("session");
    }
    println!(
        "{MESSAGES} messages accepted in {:.1} s; queue: {} messages",
        started.elapsed().as_secs_f64(),
        metric(http, "postern_queue_messages").await
    );

    println!(
        "upstream down, every 5 s: rss MiB, CPU s used in the last 5 s, refused attempts so far"
    );
    let mut cpu = cpu_seconds();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = cpu_seconds();
        println!(
            "  rss {:.1}  cpu {:.2}  refused attempts {}",
            rss_mib(),
            now - cpu,
            metric(http, deferred).await
        );
        cpu = now;
    }

    let counts = Arc::new(SinkCounts::default());
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("sink bind");
    tokio::spawn(sink(listener, counts.clone()));
    let back = Instant::now();
    let deadline = back + Duration::from_secs(300);
    while counts.messages.load(Ordering::SeqCst) < MESSAGES && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = back.elapsed().as_secs_f64();
    let delivered = counts.messages.load(Ordering::SeqCst);
    println!(
        "upstream back: {delivered} delivered in {took:.1} s ({:.0}/s); sink connections {} in all, at most {} at once (max_connections {MAX_CONNECTIONS}); rss {:.1} MiB",
        delivered as f64 / took,
        counts.connections.load(Ordering::SeqCst),
        counts.peak.load(Ordering::SeqCst),
        rss_mib()
    );
    running.shutdown().await;
}
