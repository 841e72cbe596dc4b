//! The admin API from a test: raw HTTP requests with any `Authorization`, and the real
//! `postern` binary's `queue`/`reload` commands pointed at a running [`TestServer`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::TestServer;

/// The token every test server's `admin.token` holds.
pub const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// The postern binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_postern");

/// `method path` with `Authorization: <authorization>` (none when `None`): status and JSON.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, Value) {
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string());
        if let Some(a) = authorization {
            req = req.header(hyper::header::AUTHORIZATION, a);
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    };
    super::client::step(&format!("{method} {path}"), fetch).await
}

/// `method path` with the right token.
pub async fn api(server: &TestServer, method: &str, path: &str) -> (u16, Value) {
    request(server.http, method, path, Some(&format!("Bearer {TOKEN}"))).await
}

/// The queue listing's messages.
pub async fn messages(server: &TestServer) -> Vec<Value> {
    let (status, body) = api(server, "GET", "/api/v1/queue").await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().unwrap().clone()
}

/// Polls the listing (bounded: 400 tries, 50 ms apart) until message `id` satisfies `ok`;
/// returns its view.
pub async fn wait_message(server: &TestServer, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..400 {
        if let Some(m) = messages(server).await.into_iter().find(|m| m["id"] == id) {
            if ok(&m) {
                return m;
            }
            last = m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("message {id} never reached the expected state; last seen: {last}");
}

impl TestServer {
    /// A copy of the config whose `http.address` is the bound one, for the CLI (the test
    /// config binds port 0).
    pub fn cli_config(&self) -> PathBuf {
        let yaml = std::fs::read_to_string(&self.config).unwrap();
        let fixed = yaml.replace(
            r#"http: {address: "127.0.0.1:0""#,
            &format!(r#"http: {{address: "{}""#, self.http),
        );
        assert_ne!(yaml, fixed, "no http address to fix in the test config");
        let path = self.dir.path().join("cli.yaml");
        std::fs::write(&path, fixed).unwrap();
        path
    }

    /// Runs `postern <args> --config <cli config>` and returns its output.
    pub async fn cli(&self, args: &[&str]) -> Output {
        let config = self.cli_config();
        run_cli(args, config).await
    }
}

/// Runs the binary with `args` plus `--config config`, off the runtime's worker threads.
pub async fn run_cli(args: &[&str], config: PathBuf) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    });
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the CLI did not finish within 120 s")
        .unwrap()
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON a `--json` run printed.
pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(out), stderr(out)))
}
