//! The admin API's client for `postern queue` and `postern reload`: finds the address and
//! token in the config file, sends one request per connection (hyper), and returns the
//! status with the JSON body.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::app::admin::token::read_token;
use crate::config::{self, error::describe_io, schema::HttpConfig};

/// How errors name a token file given on the command line.
const TOKEN_FILE_OPTION: &str = "--token-file";

/// Longest one request may take (a reload included).
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// Why a request got no answer. Each renders as one line saying what is wrong and what to do.
#[derive(Debug)]
pub enum ApiError {
    /// The config says nothing of the API, or its token does not read.
    Setup(String),
    /// Nothing listens at the address: postern is not running (or `http:` changed).
    NotRunning(SocketAddr),
    /// The connection or the exchange failed.
    Failed(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Setup(why) | ApiError::Failed(why) => f.write_str(why),
            ApiError::NotRunning(addr) => write!(
                f,
                "cannot reach the admin API at http://{addr}: connection refused; \
                 is postern running, and is http.address in the config file the address it listens on?"
            ),
        }
    }
}

/// The API's address and token, and the spool directory, from the config file.
#[derive(Debug)]
pub struct Client {
    /// The config file.
    pub file: PathBuf,
    /// The spool directory (`queue.directory`), for the read-only listing.
    pub spool: PathBuf,
    /// Where the API is asked, in order ([`reachable`] of `http.address`; empty without
    /// `http:`).
    pub addresses: Vec<SocketAddr>,
    token: Result<String, String>,
}

/// `http:` and `queue.directory` of the config `file`. A file that does not validate (an
/// edit in progress, to be tried with `postern reload`) is still read for `http:` and
/// `queue:` alone; only when even those cannot be found does this fail.
pub fn http_and_spool(file: &Path) -> Result<(Option<HttpConfig>, PathBuf), String> {
    match config::load(file) {
        Ok(cfg) => Ok((cfg.http, cfg.queue.directory)),
        Err(e) => loose(file).ok_or_else(|| super::config_error(&e)),
    }
}

impl Client {
    /// Reads what the tools need from `file` ([`http_and_spool`]), the token from
    /// `token_file` (`--token-file`) when given, else from `http.admin_token_file`.
    pub fn new(file: &Path, token_file: Option<&Path>) -> Result<Client, String> {
        let (http, spool) = http_and_spool(file)?;
        let addresses = http
            .as_ref()
            .map(|h| reachable(h.address))
            .unwrap_or_default();
        let configured = http.as_ref().and_then(|h| h.admin_token_file.as_deref());
        let token = match (token_file, configured) {
            (Some(path), _) => token(path, TOKEN_FILE_OPTION),
            (None, Some(path)) => token(path, "http.admin_token_file"),
            (None, None) => Err(format!(
                "{}: the admin API is off: set http.address and http.admin_token_file and \
                 restart postern, or pass --token-file",
                file.display()
            )),
        };
        Ok(Client {
            file: file.to_owned(),
            spool,
            addresses,
            token,
        })
    }

    /// `method path`: the status and the JSON body (`null` when the body is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
    ) -> Result<(u16, serde_json::Value), ApiError> {
        if self.addresses.is_empty() {
            return Err(ApiError::Setup(format!(
                "{}: no http: section, so no admin API: set http.address and \
                 http.admin_token_file and restart postern",
                self.file.display()
            )));
        }
        let token = self.token.clone().map_err(ApiError::Setup)?;
        let (tcp, addr) = self.connect(method, path).await?;
        match tokio::time::timeout(REQUEST_LIMIT, request(tcp, addr, method, path, &token)).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Failed(format!(
                "{method} {path}: no answer from the admin API at http://{addr} within \
                 {REQUEST_LIMIT:?}; the relay may be overloaded: look at its log and try again"
            ))),
        }
    }

    /// A connection to the first of [`Client::addresses`] that takes one, each tried only
    /// when the one before refused or could not be reached (a loopback without IPv6); when
    /// none does, the first one's error.
    async fn connect(
        &self,
        method: &str,
        path: &str,
    ) -> Result<(tokio::net::TcpStream, SocketAddr), ApiError> {
        let mut first = None;
        for &addr in &self.addresses {
            match tokio::time::timeout(REQUEST_LIMIT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => return Ok((tcp, addr)),
                Ok(Err(e)) => {
                    first.get_or_insert_with(|| match e.kind() {
                        std::io::ErrorKind::ConnectionRefused => ApiError::NotRunning(addr),
                        _ => failed(addr, method, path, &e),
                    });
                }
                Err(_) => {
                    first.get_or_insert_with(|| {
                        ApiError::Failed(format!(
                            "{method} {path}: cannot connect to the admin API at http://{addr} \
                             within {REQUEST_LIMIT:?}; is http.address that of a running postern?"
                        ))
                    });
                }
            }
        }
        Err(first.unwrap_or_else(|| ApiError::Setup("no address to ask".to_owned())))
    }
}

/// The admin token in `path` (named `whence` in errors), with what to do when it cannot be
/// read: the usual case is a user who may not read the file.
fn token(path: &Path, whence: &str) -> Result<String, String> {
    // Read as read_token does (opening alone succeeds on a directory), so that each way
    // it fails gets its own advice.
    if let Err(e) = std::fs::read_to_string(path) {
        let todo = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "run as a user who can read it (root, or the postern user) or pass --token-file"
            }
            std::io::ErrorKind::NotFound if whence == TOKEN_FILE_OPTION => {
                "pass --token-file with the path of the admin token file"
            }
            std::io::ErrorKind::NotFound => {
                "start postern once with http.generate_admin_token: true to write it, \
                 or pass --token-file"
            }
            std::io::ErrorKind::IsADirectory => {
                "name the token file itself, not its directory (or pass --token-file)"
            }
            std::io::ErrorKind::InvalidData => {
                "write the token on the file's first line as text (the relay writes 64 hex \
                 digits with http.generate_admin_token: true)"
            }
            _ => "pass --token-file with the path of a readable copy",
        };
        return Err(format!(
            "admin token file {} ({whence}): {}; {todo}",
            path.display(),
            describe_io(&e)
        ));
    }
    read_token(path).map_err(|e| {
        format!("{whence}: {e}; write a longer token there (the relay re-reads it at reload)")
    })
}

/// `http:` and `queue.directory` of a config file that does not validate as a whole, with
/// relative paths resolved as `config::load` does.
fn loose(file: &Path) -> Option<(Option<HttpConfig>, PathBuf)> {
    let text = std::fs::read_to_string(file).ok()?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    let base = config::config_dir(file);
    let mut http: Option<HttpConfig> = match doc.get("http") {
        Some(h) => Some(serde_yaml::from_value(h.clone()).ok()?),
        None => None,
    };
    if let Some(token) = http.as_mut().and_then(|h| h.admin_token_file.as_mut()) {
        *token = config::resolve(base, token);
    }
    let dir: PathBuf = serde_yaml::from_value(doc.get("queue")?.get("directory")?.clone()).ok()?;
    Some((http, config::resolve(base, &dir)))
}

/// Where a relay whose `http.address` is `bind` is asked, in order: a wildcard on loopback,
/// where the relay also listens: `::` on `::1`, then on 127.0.0.1 (a container's loopback
/// may have no IPv6, and a `[::]` listener takes IPv4 too unless the host sets
/// `bindv6only`). Shared by the admin tools and `postern healthcheck`.
pub fn reachable(bind: SocketAddr) -> Vec<SocketAddr> {
    match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => vec![(Ipv4Addr::LOCALHOST, bind.port()).into()],
        IpAddr::V6(ip) if ip.is_unspecified() => vec![
            (Ipv6Addr::LOCALHOST, bind.port()).into(),
            (Ipv4Addr::LOCALHOST, bind.port()).into(),
        ],
        _ => vec![bind],
    }
}

/// `method path` to `addr` failed with `e`, as one line.
fn failed(addr: SocketAddr, method: &str, path: &str, e: &dyn std::error::Error) -> ApiError {
    ApiError::Failed(format!(
        "{method} {path}: the admin API at http://{addr} failed: {}; is http.address \
         that of a running postern?",
        causes(e)
    ))
}

async fn request(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> Result<(u16, serde_json::Value), ApiError> {
    let failed = |e: &dyn std::error::Error| failed(addr, method, path, e);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| failed(&e))?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| failed(&e))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(&e))?
        .to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// `e` and its sources, on one line: `outer: inner: innermost`.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        // Some errors repeat their source in their own text.
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_asked_on_loopback() {
        let r = |s: &str| -> Vec<String> {
            reachable(s.parse().unwrap())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(r("0.0.0.0:9587"), ["127.0.0.1:9587"]);
        assert_eq!(r("[::]:9587"), ["[::1]:9587", "127.0.0.1:9587"]);
        assert_eq!(r("10.0.0.5:9587"), ["10.0.0.5:9587"]);
        assert_eq!(r("[fd00::5]:9587"), ["[fd00::5]:9587"]);
    }
}
