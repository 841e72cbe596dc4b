//! `postern healthcheck`: asks a running relay's `/readyz` over HTTP and exits 0 when it
//! answers `200`, 1 otherwise, printing one line. It is the container's `HEALTHCHECK`
//! (deploy/container/Dockerfile), so it needs no shell and no tools beside the binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::cli::api::{http_and_spool, reachable};
use crate::cli::fail;
use crate::config::units;

/// The most of `/readyz`'s body that is read: its lines are short, one per failed check.
const BODY_LIMIT: usize = 16 * 1024;
/// The most of it that is printed.
const LINE_LIMIT: usize = 400;

/// Where to ask, and for how long.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The running relay's configuration file (YAML): /readyz is asked at its
    /// http.address; a relative path is taken from the current directory.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = "config/postern.yaml"
    )]
    pub config: PathBuf,
    /// Ask this URL instead of the config's address, e.g. http://127.0.0.1:9587/readyz
    /// (plain HTTP; /readyz when it names no path).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Give up after this long, connecting and reading included; a duration (500ms, 5s).
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub timeout: units::Duration,
}

/// Runs `postern healthcheck`: exit 0 when `/readyz` answers 200, else 1, one line either way.
pub fn run(args: &HealthArgs) -> ExitCode {
    let urls = match target(args) {
        Ok(urls) => urls,
        Err(e) => return fail(e),
    };
    let limit = args.timeout.get();
    let outcome = within(limit, ask_first(&urls)).unwrap_or_else(|| {
        let url = urls.first().map(Uri::to_string).unwrap_or_default();
        Err(format!("no answer from {url} within {limit:?}"))
    });
    match outcome {
        Ok((url, 200, body)) => {
            say!("{url}: {}", one_line(&body));
            ExitCode::SUCCESS
        }
        Ok((url, 503, body)) => fail(format!("{url}: {}", one_line(&body))),
        Ok((url, status, body)) => fail(format!("{url}: HTTP {status}: {}", one_line(&body))),
        Err(e) => fail(e),
    }
}

/// Runs `work` on a runtime of its own for at most `limit`: `None` when time ran out. The
/// runtime is then left behind, not waited for: a name lookup (`--url http://name/`) runs
/// on a blocking thread that a timeout cannot stop, and dropping the runtime would wait
/// for it.
fn within<T>(
    limit: std::time::Duration,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Option<Result<T, String>> {
    let rt = match crate::cli::runtime() {
        Ok(rt) => rt,
        Err(e) => return Some(Err(e)),
    };
    let outcome = rt.block_on(async { tokio::time::timeout(limit, work).await.ok() });
    rt.shutdown_background();
    outcome
}

/// The URLs to ask, in order (the next one only when nothing answers at the one before):
/// `--url` (with `/readyz` when it has no path), else the config's `http.address` made
/// reachable.
fn target(args: &HealthArgs) -> Result<Vec<Uri>, String> {
    if let Some(url) = &args.url {
        return Ok(vec![parse_url(url)?]);
    }
    // Only http.address: /readyz needs no admin token, so none is read.
    let (http, _) = http_and_spool(&args.config)?;
    let Some(addr) = http.map(|h| h.address) else {
        return Err(format!(
            "{}: no http: section, so there is no /readyz to ask; set http.address \
             (docs/observability.md) or pass --url",
            args.config.display()
        ));
    };
    reachable(addr)
        .into_iter()
        .map(|a| parse_url(&format!("http://{a}/readyz")))
        .collect()
}

/// Parses a plain `http://host:port[/path]` URL; the path defaults to `/readyz`.
fn parse_url(url: &str) -> Result<Uri, String> {
    let bad = |why: &str| format!("--url {url}: {why}; e.g. http://127.0.0.1:9587/readyz");
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "only plain http:// is served by postern's http: listener",
        ));
    }
    if uri.host().is_none() {
        return Err(bad("no host"));
    }
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => "/readyz",
        Some(p) => p,
    };
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    format!("http://{authority}{path}")
        .parse()
        .map_err(|e| bad(&format!("{e}")))
}

/// Asks the first of `urls` that takes the connection: the URL asked, its status and body.
async fn ask_first(urls: &[Uri]) -> Result<(Uri, u16, String), String> {
    let mut refused = String::from("no URL to ask");
    for url in urls {
        let tcp = match connect(url).await {
            Ok(tcp) => tcp,
            Err(e) => {
                refused = format!(
                    "cannot connect to {url}: {e}, is postern running and is http.address set?"
                );
                continue;
            }
        };
        let (status, body) = ask(url, tcp).await.map_err(|e| format!("{url}: {e}"))?;
        return Ok((url.clone(), status, body));
    }
    Err(refused)
}

async fn connect(url: &Uri) -> std::io::Result<tokio::net::TcpStream> {
    // `[::1]` in a URL is `::1` to connect to.
    let host = url.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tokio::net::TcpStream::connect((host, url.port_u16().unwrap_or(80))).await
}

/// One `GET` on `tcp`: the status and the body, of which at most [`BODY_LIMIT`] bytes are
/// read (the status decides; the body only says why).
async fn ask(url: &Uri, tcp: tokio::net::TcpStream) -> Result<(u16, String), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| text(&e))?;
    tokio::spawn(conn);
    let authority = url.authority().map_or("localhost", |a| a.as_str());
    let path = url.path_and_query().map_or("/readyz", |p| p.as_str());
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| text(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| text(&e))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut read = Vec::new();
    while read.len() < BODY_LIMIT {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame.map_err(|e| text(&e))?.into_data() {
            let room = BODY_LIMIT - read.len();
            read.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok((status, String::from_utf8_lossy(&read).into_owned()))
}

/// `/readyz`'s lines as one: `not ready: draining: ...; spool: ...` (the first line, then
/// the others joined by `; `), with control characters dropped and the length bounded.
fn one_line(body: &str) -> String {
    let mut lines = body.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut text = match lines.next() {
        Some(first) => first.to_owned(),
        None => return "(empty answer)".to_owned(),
    };
    let rest: Vec<&str> = lines.collect();
    if !rest.is_empty() {
        text.push_str(": ");
        text.push_str(&rest.join("; "));
    }
    let mut clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if clean.chars().count() > LINE_LIMIT {
        clean = clean.chars().take(LINE_LIMIT).collect();
        clean.push_str(" ...");
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn readyz_lines_become_one() {
        assert_eq!(one_line("ready\n"), "ready");
        assert_eq!(
            one_line("not ready\ndraining: shutting down\nspool: not writable: EROFS\n"),
            "not ready: draining: shutting down; spool: not writable: EROFS"
        );
        assert_eq!(one_line(""), "(empty answer)");
        assert_eq!(one_line("a\u{1b}[31mb\r\n"), "a[31mb");
        let long = "x".repeat(2 * LINE_LIMIT);
        assert_eq!(one_line(&long).len(), LINE_LIMIT + 4);
    }

    #[test]
    fn urls_default_to_readyz_and_must_be_http() {
        let u = |s: &str| parse_url(s).map(|u| u.to_string());
        assert_eq!(
            u("http://127.0.0.1:9587").unwrap(),
            "http://127.0.0.1:9587/readyz"
        );
        assert_eq!(
            u("http://[::1]:9587/healthz").unwrap(),
            "http://[::1]:9587/healthz"
        );
        assert!(
            u("https://127.0.0.1:9587/readyz")
                .unwrap_err()
                .contains("plain http")
        );
        assert!(u("127.0.0.1:9587").is_err());
        assert!(u("http://exa mple/").is_err());
    }

    /// A blocking task still running at the timeout (a slow name lookup) does not hold the
    /// health check past its `--timeout`: the runtime is left behind, not waited for.
    #[test]
    fn the_timeout_bounds_a_blocking_lookup_too() {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let lookup = async move {
                tokio::task::spawn_blocking(move || held.recv())
                    .await
                    .map_err(|e| e.to_string())
            };
            let _ = done.send(within(Duration::from_millis(50), lookup).is_none());
        });
        let outcome = finished.recv_timeout(Duration::from_secs(30));
        // Let the "lookup" end either way, so no thread is left blocked.
        let _ = release.send(());
        assert_eq!(outcome, Ok(true), "timed out, and returned at once");
    }
}
