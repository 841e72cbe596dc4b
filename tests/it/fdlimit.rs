//! Out of file descriptors (the real binary under `ulimit -n 64`): connections past what
//! postern can hold are answered `421 4.3.2` and closed, not left in the backlog while
//! accept fails in a loop; each is counted; once clients leave, new ones are served again.

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

use crate::binary::{BIN, Postern, legacy_config, wait_listening};
use crate::harness::http::Scrape;
use crate::harness::sink::{Sink, SinkOptions, reserve_port};

/// Connections opened: more than 64 descriptors can hold.
const CLIENTS: usize = 100;

/// Connects and reads the first line (the greeting or the refusal), bounded.
async fn first_line(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    assert!(
        read.is_ok(),
        "no greeting and no refusal within 5 s: accept is stuck"
    );
    (reader.into_inner(), line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_answers_421_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default()).await;
    let (port, http) = (reserve_port(), reserve_port());
    let extra = format!("http: {{address: \"127.0.0.1:{http}\"}}\n");
    let config = legacy_config(dir.path(), port, sink.port(), &extra);
    let log = std::fs::File::create(dir.path().join("postern.log")).unwrap();
    // dash's ulimit sets the soft and the hard limit, so postern cannot raise it again.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {BIN} run --config {}",
            config.display()
        ))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut postern = Postern::from_child(child);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr, &mut postern).await;

    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..CLIENTS {
        let (tcp, line) = first_line(addr).await;
        if line.starts_with("220 ") {
            held.push(tcp);
        } else {
            assert!(
                line.starts_with("421 4.3.2 relay.test Error: too many open files"),
                "{line:?}"
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "all {CLIENTS} were served under a limit of 64");
    assert!(held.len() > 10, "only {} served", held.len());
    drop(held);

    // The sessions close; new clients are served again.
    let mut served = false;
    for _ in 0..100 {
        let (_tcp, line) = first_line(addr).await;
        if line.starts_with("220 ") {
            served = true;
            break;
        }
        refused += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "not served again after the clients left");
    let scrape = Scrape::from(std::net::SocketAddr::from(([127, 0, 0, 1], http))).await;
    let counted = scrape.get(r#"postern_connections_total{listener="legacy",result="fd_limit"}"#);
    assert!(
        counted >= refused as f64,
        "{counted} counted, {refused} refused"
    );
    let text = std::fs::read_to_string(dir.path().join("postern.log")).unwrap();
    assert!(
        text.contains("out of file descriptors: connection refused with 421 4.3.2"),
        "{text}"
    );
}
