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
use crate::config::{self, schema::HttpConfig};

/// Longest one request may take (a reload included).
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// Why a request got no answer.
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
            ApiError::NotRunning(addr) => {
                write!(f, "postern is not running (nothing answers at {addr})")
            }
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
    /// Where the API answers (a wildcard bind address becomes loopback).
    pub address: Option<SocketAddr>,
    /// `http.address` as the config writes it (a wildcard stays one).
    pub bind: Option<SocketAddr>,
    token: Result<String, String>,
}

impl Client {
    /// Reads what the tools need from `file`. A file that does not validate (an edit in
    /// progress, to be tried with `postern reload`) is still read for `http:` and `queue:`
    /// alone; only when even those cannot be found does this fail.
    pub fn new(file: &Path) -> Result<Client, String> {
        let (http, spool) = match config::load(file) {
            Ok(cfg) => (cfg.http, cfg.queue.directory),
            Err(e) => loose(file).ok_or_else(|| e.to_string())?,
        };
        let bind = http.as_ref().map(|h| h.address);
        let address = bind.map(connect_address);
        let token = match http.as_ref().and_then(|h| h.admin_token_file.as_ref()) {
            Some(path) => read_token(path).map_err(|e| format!("http.admin_token_file: {e}")),
            None => Err(format!(
                "{}: the admin API is off: set http.address and http.admin_token_file",
                file.display()
            )),
        };
        Ok(Client {
            file: file.to_owned(),
            spool,
            address,
            bind,
            token,
        })
    }

    /// `method path`: the status and the JSON body (`null` when the body is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
    ) -> Result<(u16, serde_json::Value), ApiError> {
        let Some(addr) = self.address else {
            return Err(ApiError::Setup(format!(
                "{}: no http: section; the admin API needs http.address and http.admin_token_file",
                self.file.display()
            )));
        };
        let token = self.token.clone().map_err(ApiError::Setup)?;
        match tokio::time::timeout(REQUEST_LIMIT, request(addr, method, path, &token)).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Failed(format!(
                "{method} {path}: no answer from {addr} within {REQUEST_LIMIT:?}"
            ))),
        }
    }
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

/// A wildcard bind address is reached on loopback.
fn connect_address(bind: SocketAddr) -> SocketAddr {
    match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bind.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), bind.port())
        }
        _ => bind,
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> Result<(u16, serde_json::Value), ApiError> {
    let failed = |e: &dyn std::fmt::Display| ApiError::Failed(format!("{method} {path}: {e}"));
    let tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ApiError::NotRunning(addr));
        }
        Err(e) => return Err(failed(&e)),
    };
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
