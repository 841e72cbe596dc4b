//! `postern healthcheck` against loopback servers that answer what a broken or unexpected
//! `/readyz` might: the status decides and the answer is read only so far (a huge body),
//! a redirect is not followed, bytes that are not UTF-8 still make one line, and a
//! wildcard `[::]` address is asked on IPv4 loopback when nothing answers on `[::1]` (a
//! container whose loopback has no IPv6).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::text;
use crate::binary::legacy_config;
use crate::harness::admin::run_cli;
use crate::harness::sink::reserve_port;

/// Connections one canned server answers before it stops accepting.
const MAX_CONNECTIONS: usize = 4;

/// An HTTP server on 127.0.0.1 that reads each request's head and answers `answer` as it
/// is, then closes; it counts the connections it took.
struct Canned {
    port: u16,
    taken: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Canned {
    async fn start(answer: Vec<u8>) -> Canned {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let taken = Arc::new(AtomicUsize::new(0));
        let count = taken.clone();
        let task = tokio::spawn(async move {
            for _ in 0..MAX_CONNECTIONS {
                let (mut conn, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                // The client may hang up once it has read enough: not an error here.
                let _ = conn.write_all(&answer).await;
                let _ = conn.shutdown().await;
            }
        });
        Canned { port, taken, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/readyz", self.port)
    }
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 answer with `status` (code and reason), extra header lines and `body`.
fn answer(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

/// A config with no `http:` section but `extra`, for `--url` (or with `extra` its `http:`).
fn config(dir: &Path, extra: &str) -> PathBuf {
    legacy_config(dir, reserve_port(), reserve_port(), extra)
}

async fn healthcheck(config: &Path, extra: &[&str]) -> Output {
    let args: Vec<&str> = ["healthcheck"].iter().chain(extra).copied().collect();
    run_cli(&args, config.to_owned()).await
}

/// A `200` whose body is far larger than `/readyz` ever sends is healthy: the status
/// decides, the body is read up to its bound and printed as one bounded line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_status_decides_however_large_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let body = [b"ready\n".as_slice(), &vec![b'x'; 4 << 20]].concat();
    let server = Canned::start(answer("200 OK", "", &body)).await;
    let out = healthcheck(&config(dir.path(), ""), &["--url", &server.url()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        said.starts_with(&format!("{}: ready: xxx", server.url()))
            && said.ends_with(" ...\n")
            && said.lines().count() == 1
            && said.len() < 1000,
        "{said}"
    );
}

/// A redirect is unhealthy and is not followed; an answer that is not UTF-8 still makes
/// one line, with the undecodable bytes replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_follows_no_redirect_and_survives_bytes_that_are_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let elsewhere = Canned::start(answer("200 OK", "", b"ready\n")).await;
    let location = format!("Location: {}\r\n", elsewhere.url());
    let redirect = Canned::start(answer("301 Moved Permanently", &location, b"")).await;
    let out = healthcheck(&cfg, &["--url", &redirect.url()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        text(&out),
        format!("postern: {}: HTTP 301: (empty answer)\n", redirect.url())
    );
    assert_eq!(redirect.taken.load(Ordering::SeqCst), 1);
    assert_eq!(elsewhere.taken.load(Ordering::SeqCst), 0, "followed");

    let garbled = Canned::start(answer(
        "503 Service Unavailable",
        "",
        b"not \xff\xfeready\n",
    ))
    .await;
    let out = healthcheck(&cfg, &["--url", &garbled.url()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        text(&out),
        format!("postern: {}: not \u{fffd}\u{fffd}ready\n", garbled.url())
    );
}

/// `http.address: "[::]:PORT"` is asked on `[::1]` first and, when nothing answers there
/// (here: the server is on 127.0.0.1 only, as in a container without IPv6 on its loopback),
/// on 127.0.0.1, where a dual-stack wildcard listener also answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_falls_back_to_ipv4_loopback_for_an_ipv6_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let server = Canned::start(answer("200 OK", "", b"ready\n")).await;
    let http = format!("http: {{address: \"[::]:{}\"}}\n", server.port);
    let out = healthcheck(&config(dir.path(), &http), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(text(&out), format!("{}: ready\n", server.url()));
    assert_eq!(server.taken.load(Ordering::SeqCst), 1);
}
