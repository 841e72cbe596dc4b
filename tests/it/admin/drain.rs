//! `postern queue drain`: new connections get `421 4.3.2` and `/readyz` fails while the queue
//! empties; exit 0 once it is empty, non-zero with what is left at the deadline.

use std::time::Duration;

use crate::harness::admin::{run_cli, stderr, stdout};
use crate::harness::client::Dialog;
use crate::harness::http::get;
use crate::harness::{DELIVERY, Opts, TestServer, split_prefix};

use super::{attempted, submit};

/// Polls `/readyz` (bounded: 200 tries, 50 ms apart) until it reports the queue drain.
async fn wait_draining(server: &TestServer) -> String {
    for _ in 0..200 {
        let (status, body) = get(server.http, "/readyz").await;
        if status == 503 && body.contains("draining: queue drain in progress") {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never reported the drain");
}

/// The sink comes back during the drain: everything is delivered and the command exits 0;
/// meanwhile a new connection is told `421 4.3.2` and `/readyz` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delivers_everything_and_exits_zero() {
    let mut server = TestServer::start(Opts {
        sink_down: true,
        ..Opts::default()
    })
    .await;
    let (a, sent_a) = submit(&server, "drain-a", &["x@example.org"]).await;
    let (b, sent_b) = submit(&server, "drain-b", &["y@example.org"]).await;
    attempted(&server, &a, 1).await;
    attempted(&server, &b, 1).await;
    let config = server.cli_config();
    let drain = tokio::spawn(run_cli(
        &["queue", "drain", "--deadline", "60s", "--retry-every", "1s"],
        config,
    ));
    wait_draining(&server).await;
    let mut d = Dialog::connect_silent(server.legacy).await;
    d.expect("421 4.3.2 relay.test Service shutting down").await;
    d.expect_closed().await;
    server.scrape().await.expect(&[(
        r#"postern_connections_total{listener="legacy",result="draining"}"#,
        1.0,
    )]);

    server.sink_up().await;
    let out = drain.await.unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("queue drained"), "{}", stdout(&out));
    server.sink().expect(2);
    let got = server.sink().wait(DELIVERY).await;
    for sent in [&sent_a, &sent_b] {
        let m = got.iter().find(|m| m.data.ends_with(sent)).unwrap();
        split_prefix(&m.data, sent);
    }
}

/// The sink stays down: at the deadline the command lists what is left and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_reports_what_is_left_at_the_deadline() {
    let server = TestServer::start(Opts {
        sink_down: true,
        ..Opts::default()
    })
    .await;
    let (id, _) = submit(&server, "stuck", &["x@example.org"]).await;
    attempted(&server, &id, 1).await;
    let out = server.cli(&["queue", "drain", "--deadline", "2s"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).lines().any(|l| l.starts_with(&id)),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("drain deadline (2s) reached with 1 messages left"),
        "{}",
        stderr(&out)
    );
    wait_draining(&server).await;
}
