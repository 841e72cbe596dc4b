//! A small HTTP client for postern's `/metrics`, `/healthz` and `/readyz` (hyper's, over
//! one connection per request), and a parsed scrape.

use std::collections::HashMap;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// `GET path` from `addr`: the status and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    super::client::step(&format!("GET {path}"), fetch).await
}

/// One scrape of `/metrics`: each sample by its series as printed (`name{labels}`, labels in
/// the exporter's order, which is sorted by name).
#[derive(Debug)]
pub struct Scrape {
    /// The text as served.
    pub text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// Scrapes `addr`.
    pub async fn from(addr: SocketAddr) -> Scrape {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        Scrape::parse(text)
    }

    /// Parses Prometheus text format.
    pub fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape { text, samples }
    }

    /// Asserts every `(series, value)` row, reporting all mismatches at once.
    pub fn expect(&self, rows: &[(&str, f64)]) {
        let wrong: Vec<String> = rows
            .iter()
            .filter(|(series, want)| self.samples.get(*series) != Some(want))
            .map(|(series, want)| {
                let got = self.samples.get(*series);
                format!("{series}: want {want}, got {got:?}")
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{}\nin the scrape:\n{}",
            wrong.join("\n"),
            self.text
        );
    }

    /// The value of `series` (`name{a="x",b="y"}` with labels sorted by name); 0 when absent
    /// is not assumed: a missing series panics with the scrape.
    pub fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("no series {series} in the scrape:\n{}", self.text),
        }
    }
}
