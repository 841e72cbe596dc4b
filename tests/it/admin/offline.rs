//! The queue on a stopped relay: `queue list` reads the spool directory read-only, and a
//! held message stays held across a restart.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::harness::admin::{api, json, stderr, stdout, wait_message};
use crate::harness::{DELIVERY, split_prefix};

use super::{attempted, sink_down, submit};

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for sub in ["queue", "failed", "tmp"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let p = e.unwrap().path();
            all.insert(p.display().to_string(), std::fs::read(&p).unwrap());
        }
    }
    all
}

/// With postern stopped, `queue list` (table and `--json`) shows the deferred and the held
/// message from the spool files, and changes none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reads_a_stopped_relays_spool_read_only() {
    let mut server = sink_down().await;
    let (deferred, _) = submit(&server, "offline-a", &["x@example.org"]).await;
    let (held, _) = submit(&server, "offline-b", &["y@example.org"]).await;
    attempted(&server, &deferred, 1).await;
    attempted(&server, &held, 1).await;
    let (status, _) = api(&server, "POST", &format!("/api/v1/queue/{held}/hold")).await;
    assert_eq!(status, 200);
    let config = server.cli_config();
    server.stop().await;
    let before = snapshot(&server.spool());

    let out = crate::harness::admin::run_cli(&["queue", "list", "--json"], config.clone()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("postern is not running"),
        "{}",
        stderr(&out)
    );
    let body = json(&out);
    assert_eq!(body["offline"], true);
    let all = body["messages"].as_array().unwrap();
    let by_id = |id: &str| all.iter().find(|m| m["id"] == id).unwrap().clone();
    let d = by_id(&deferred);
    assert_eq!(
        (&d["state"], &d["attempts"], &d["pending"]),
        (
            &Value::from("deferred"),
            &Value::from(1),
            &serde_json::json!(["x@example.org"])
        )
    );
    assert!(d["last_reply"].as_str().unwrap().contains("connect"), "{d}");
    let h = by_id(&held);
    assert_eq!(h["state"], "held");
    assert_eq!(
        h["held"]["reason"],
        "held by an administrator (postern queue hold)"
    );

    let out = crate::harness::admin::run_cli(&["queue", "list"], config.clone()).await;
    assert!(out.status.success());
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    let out =
        crate::harness::admin::run_cli(&["queue", "list", "--failed", "--json"], config).await;
    assert_eq!(json(&out)["messages"], serde_json::json!([]));
    assert_eq!(
        snapshot(&server.spool()),
        before,
        "the listing changed the spool"
    );
}

/// A held message is still held after a restart: not attempted while the sink is up (a
/// message sent meanwhile goes through), delivered once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_survives_a_restart() {
    let mut server = sink_down().await;
    let (id, sent) = submit(&server, "held-restart", &["x@example.org"]).await;
    attempted(&server, &id, 1).await;
    let (status, _) = api(&server, "POST", &format!("/api/v1/queue/{id}/hold")).await;
    assert_eq!(status, 200);
    server.stop().await;
    server.sink_up().await;
    server.restart().await;

    let m = wait_message(&server, &id, |_| true).await;
    assert_eq!(
        (m["state"].as_str(), m["attempts"].as_u64()),
        (Some("held"), Some(1))
    );
    let (_, other) = submit(&server, "after-restart", &["y@example.org"]).await;
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    split_prefix(&got[0].data, &other);
    let m = wait_message(&server, &id, |_| true).await;
    assert_eq!(
        (m["state"].as_str(), m["attempts"].as_u64()),
        (Some("held"), Some(1))
    );

    let (status, body) = api(&server, "POST", &format!("/api/v1/queue/{id}/release")).await;
    assert_eq!(status, 200, "{body}");
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    split_prefix(&got[0].data, &sent);
}
