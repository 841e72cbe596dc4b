//! Queue administration (issue 8 section 7): the admin API under `/api/v1/` and the real
//! `postern queue ...` / `postern reload` commands against a relay on loopback, with the sink
//! down, up or misbehaving; what arrives at the sink is compared byte for byte.

mod drain;
mod offline;
mod probe;

use serde_json::Value;

use crate::harness::admin::{TOKEN, api, json, messages, request, stderr, stdout, wait_message};
use crate::harness::sink::Fault;
use crate::harness::{DELIVERY, Opts, TestServer, message, queue_id, send_mail, split_prefix};

/// Long enough that no retry happens by itself during a test: only the admin's do.
const NO_AUTOMATIC_RETRY: &str = "min_backoff: 1h, max_backoff: 1h, ambiguous_retry: 1h";

/// A relay whose sink is down, with no automatic retries.
async fn sink_down() -> TestServer {
    TestServer::start(Opts {
        sink_down: true,
        queue: NO_AUTOMATIC_RETRY.into(),
        ..Opts::default()
    })
    .await
}

/// Sends one message from `dev@example.net` to `to` on the legacy listener; its id and bytes.
async fn submit(server: &TestServer, tag: &str, to: &[&str]) -> (String, Vec<u8>) {
    let mut d = server.legacy_session().await;
    let sent = message(tag, "", "admin test body\r\n");
    let reply = send_mail(&mut d, "dev@example.net", to, &sent).await;
    d.cmd("QUIT", "221").await;
    (queue_id(reply.first()), sent)
}

/// Waits until `id` has had `n` attempts and waits for the next (not in an attempt now).
async fn attempted(server: &TestServer, id: &str, n: u64) -> Value {
    wait_message(server, id, |m| {
        m["attempts"].as_u64() == Some(n) && m["state"] != "active"
    })
    .await
}

/// `queue list` and `queue show` (table and `--json`) describe a deferred message: id, age,
/// sender, pending recipients, attempts, next attempt, last reply, state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_show_a_deferred_message() {
    let server = sink_down().await;
    let (id, _) = submit(&server, "listed", &["x@example.org", "y@example.org"]).await;
    attempted(&server, &id, 1).await;

    let out = server.cli(&["queue", "list", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let body = json(&out);
    assert_eq!(body["draining"], false);
    let all = body["messages"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{body}");
    let m = &all[0];
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["state"], "deferred");
    assert_eq!(m["sender"], "dev@example.net");
    assert_eq!(
        m["pending"],
        serde_json::json!(["x@example.org", "y@example.org"])
    );
    assert_eq!(m["failed"], serde_json::json!([]));
    assert_eq!(m["attempts"], 1);
    assert!(m["age_secs"].as_u64().unwrap() < 60, "{m}");
    let next = m["next_attempt_unix"].as_u64().unwrap();
    let received = m["received_unix"].as_u64().unwrap();
    assert!(next >= received + 3000, "an hour's backoff: {m}");
    let last = m["last_reply"].as_str().unwrap();
    assert!(
        last.contains("connect"),
        "last reply names the failure: {last}"
    );
    assert_eq!(m["held"], Value::Null);

    let out = server.cli(&["queue", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("ID "), "{text}");
    for column in [
        "AGE", "STATE", "TRIES", "NEXT", "SENDER", "PENDING", "FAILED",
    ] {
        assert!(lines[0].contains(column), "{text}");
    }
    // Aligned: every column of the row starts where its heading does.
    let state_at = lines[0].find("STATE").unwrap();
    assert_eq!(&lines[1][state_at..state_at + 8], "deferred", "{text}");
    assert!(lines[1].starts_with(&id), "{text}");
    assert!(lines[1].contains("x@example.org,y@example.org"), "{text}");

    let out = server.cli(&["queue", "show", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        format!("id:            {id}"),
        "state:         deferred".to_owned(),
        "sender:        dev@example.net".to_owned(),
        "attempts:      1".to_owned(),
        "pending:       x@example.org".to_owned(),
        "pending:       y@example.org".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
    }

    let out = server.cli(&["queue", "show", "0000000000000001"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HTTP 404"), "{}", stderr(&out));
}

/// A held message is not attempted while the sink is up (another message goes through, a
/// retry of everything leaves it alone, its attempt count stays); released, it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_keeps_a_message_back_and_release_delivers_it() {
    let mut server = sink_down().await;
    let (id, sent) = submit(&server, "held", &["x@example.org"]).await;
    attempted(&server, &id, 1).await;
    let out = server.cli(&["queue", "hold", &id, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let m = json(&out);
    assert_eq!(m["state"], "held");
    assert_eq!(
        m["held"]["reason"],
        "held by an administrator (postern queue hold)"
    );
    let state = std::fs::read(server.spool().join("queue").join(format!("{id}.state"))).unwrap();
    let env = postern::spool::record::decode_state(&state).unwrap();
    assert!(env.held.is_some(), "the hold is in the state file");

    server.sink_up().await;
    let (other, other_sent) = submit(&server, "not-held", &["y@example.org"]).await;
    let out = server.cli(&["queue", "retry", "--all", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["retried"], 0, "the held message is not waiting");
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 1);
    split_prefix(&got[0].data, &other_sent);
    assert!(messages(&server).await.iter().all(|m| m["id"] != other));
    let m = wait_message(&server, &id, |_| true).await;
    assert_eq!(
        (m["state"].as_str(), m["attempts"].as_u64()),
        (Some("held"), Some(1))
    );

    // Retry and bounce are not for a held message's retry: retry says release first.
    let out = server.cli(&["queue", "retry", &id]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HTTP 409"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("release it first"),
        "{}",
        stderr(&out)
    );

    let out = server.cli(&["queue", "release", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    assert_eq!(got.len(), 1);
    split_prefix(&got[0].data, &sent);
}

/// `retry ID` makes a message due at once and keeps its attempt count (1 → 2 with the sink
/// still down); `retry --all` after the sink comes back delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_keeps_attempts_and_retry_all_delivers_when_the_sink_is_back() {
    let mut server = sink_down().await;
    let (id, sent) = submit(&server, "retried", &["x@example.org"]).await;
    attempted(&server, &id, 1).await;
    let out = server.cli(&["queue", "retry", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    attempted(&server, &id, 2).await;

    server.sink_up().await;
    let out = server.cli(&["queue", "retry", "--all"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1 messages due now");
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    split_prefix(&got[0].data, &sent);
}

/// `delete` removes the message from the spool, undelivered, and counts it `deleted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_message() {
    let server = sink_down().await;
    let (id, _) = submit(&server, "deleted", &["x@example.org"]).await;
    attempted(&server, &id, 1).await;
    let out = server.cli(&["queue", "delete", &id, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["id"], id.as_str());
    assert_eq!(messages(&server).await, Vec::<Value>::new());
    assert!(!server.spool().join("queue").join(&id).exists());
    assert!(!server.spool().join("failed").join(&id).exists());
    server
        .scrape()
        .await
        .expect(&[(r#"postern_messages_completed_total{result="deleted"}"#, 1.0)]);
    let logged: Vec<Value> = crate::harness::logs::lines()
        .into_iter()
        .filter(|l| l["fields"]["event"] == "admin" && l["fields"]["queue_id"] == id.as_str())
        .collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["fields"]["action"], "delete");
    let completed: Vec<Value> = crate::harness::logs::lines()
        .into_iter()
        .filter(|l| l["fields"]["event"] == "completed" && l["fields"]["queue_id"] == id.as_str())
        .collect();
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["fields"]["result"], "deleted");
    let out = server.cli(&["queue", "delete", &id]).await;
    assert!(!out.status.success(), "a second delete finds nothing");
}

/// `bounce` fails the pending recipients with the administrator's reason; the message moves
/// to the dead letters, where `list --failed` shows it and `purge-failed` removes it; its
/// DSN to the sender is the one message left queued (the upstream is down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounce_fails_pending_recipients_with_the_admin_reason() {
    let server = sink_down().await;
    let (id, _) = submit(&server, "bounced", &["x@example.org"]).await;
    attempted(&server, &id, 1).await;
    let out = server.cli(&["queue", "bounce", &id, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let reason = postern::delivery::BOUNCED_BY_ADMIN;
    let m = json(&out);
    assert_eq!(m["failed"][0]["address"], "x@example.org");
    assert_eq!(m["failed"][0]["reply"], reason);
    let queued = messages(&server).await;
    assert_eq!(queued.len(), 1, "{queued:#?}");
    assert_ne!(queued[0]["id"], id.as_str());
    assert_eq!(queued[0]["sender"], "");
    assert_eq!(queued[0]["pending"], serde_json::json!(["dev@example.net"]));

    let out = server.cli(&["queue", "list", "--failed", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let body = json(&out);
    let dead = &body["messages"][0];
    assert_eq!(dead["id"], id.as_str());
    assert_eq!(dead["state"], "failed");
    assert_eq!(dead["failed"][0]["reply"], reason);
    assert_eq!(dead["pending"], serde_json::json!([]));

    let out = server.cli(&["queue", "purge-failed", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1 dead letters purged");
    assert!(!server.spool().join("failed").join(&id).exists());
    let (_, body) = api(&server, "GET", "/api/v1/failed").await;
    assert_eq!(body["messages"], serde_json::json!([]));
}

/// A missing or wrong bearer token gets 401 (with the RFC 6750 challenge's JSON error) and
/// changes nothing; without a token file the API is off (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_token_is_refused_and_changes_nothing() {
    let server = sink_down().await;
    let (id, _) = submit(&server, "guarded", &["x@example.org"]).await;
    attempted(&server, &id, 1).await;
    let hold = format!("/api/v1/queue/{id}/hold");
    let wrong = format!("Bearer {}x", TOKEN);
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some(wrong.as_str()),
        Some(TOKEN),
    ] {
        let (status, body) = request(server.http, "POST", &hold, auth).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("bearer token"),
            "{body}"
        );
        let (status, _) =
            request(server.http, "DELETE", &format!("/api/v1/queue/{id}"), auth).await;
        assert_eq!(status, 401);
    }
    let m = wait_message(&server, &id, |_| true).await;
    assert_eq!(m["state"], "deferred", "nothing changed");

    let off = TestServer::start(Opts {
        admin_api: false,
        ..Opts::default()
    })
    .await;
    let (status, body) = request(
        off.http,
        "GET",
        "/api/v1/queue",
        Some(&format!("Bearer {TOKEN}")),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("admin API is off"));
}

/// `queue.on_ambiguous: hold`: a message whose final dot got no reply is held for the admin,
/// shown with the upstream and time; released, it goes to the same upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_ambiguous_hold_waits_for_the_admin() {
    let server = TestServer::start(Opts {
        extra: String::new(),
        queue: "min_backoff: 1s, max_backoff: 2s, ambiguous_retry: 1s, on_ambiguous: hold".into(),
        ..Opts::default()
    })
    .await;
    server.sink().fault(Fault::DropAfterDot, Some(1));
    let (id, sent) = submit(&server, "ambiguous", &["x@example.org"]).await;
    let m = wait_message(&server, &id, |m| m["state"] == "held").await;
    assert_eq!(m["maybe_delivered"][0]["upstream"], "sink");
    assert!(
        m["maybe_delivered"][0]["at_unix"].as_u64().unwrap()
            >= m["received_unix"].as_u64().unwrap()
    );
    let reason = m["reason"].as_str().unwrap();
    assert!(
        reason.contains("maybe delivered at upstream sink"),
        "{reason}"
    );
    assert!(reason.contains("on_ambiguous: hold"), "{reason}");
    assert_eq!(
        server.sink().received(),
        vec![],
        "the dropped dot recorded nothing"
    );
    let out = server.cli(&["queue", "list"]).await;
    assert!(stdout(&out).contains("held"), "{}", stdout(&out));

    let (status, _) = api(&server, "POST", &format!("/api/v1/queue/{id}/release")).await;
    assert_eq!(status, 200);
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    split_prefix(&got[0].data, &sent);
}

/// `postern reload` goes through the API and prints the reloader's outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_through_the_api() {
    let server = TestServer::start(Opts::default()).await;
    server.edit_config(|y| y.replace("max_backoff: 2s", "max_backoff: 3s"));
    let out = server.cli(&["reload"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().next().unwrap(),
        "configuration reloaded: changed: queue; users: 0 added, 0 removed, 0 changed; \
         upstream pools kept: sink, retired: none; needs a restart: none"
    );
    server.edit_config(|y| y.replace("max_backoff: 3s", "max_backoff: nonsense"));
    let out = server.cli(&["reload", "--json"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HTTP 422"), "{}", stderr(&out));
    assert!(
        json(&out)["error"]
            .as_str()
            .unwrap()
            .contains("queue.max_backoff")
    );
}

/// Upstream shaping shows in the listing: with `messages_per_minute: 1` the second message
/// waits, state `shaped`, the reason naming the upstream and the cap, no attempt counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaped_messages_are_listed_with_their_cap() {
    let server = TestServer::start(Opts {
        upstream_keys: "messages_per_minute: 1".into(),
        ..Opts::default()
    })
    .await;
    let (_, first) = submit(&server, "shaped-1", &["x@example.org"]).await;
    server.sink().expect(1);
    let got = server.sink().wait(DELIVERY).await;
    split_prefix(&got[0].data, &first);
    let (second, _) = submit(&server, "shaped-2", &["x@example.org"]).await;
    let m = wait_message(&server, &second, |m| m["state"] == "shaped").await;
    assert_eq!(m["attempts"], 0, "{m}");
    let reason = m["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("waiting for upstream sink's messages_per_minute until "),
        "{reason}"
    );
    let out = server.cli(&["queue", "list"]).await;
    let text = stdout(&out);
    let row = text.lines().find(|l| l.starts_with(&second)).unwrap();
    assert!(row.contains("shaped"), "{text}");
}

/// The token file is read again at each reload: a new token replaces the old one; a token
/// file that no longer reads fails the reload (`422`) and the running token stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_the_token_file() {
    let server = TestServer::start(Opts::default()).await;
    let file = server.dir.path().join("admin.token");
    let new = "rotated-admin-token-fedcba9876543210";
    std::fs::write(&file, format!("{new}\n")).unwrap();
    let (status, body) = api(&server, "POST", "/api/v1/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"], true);
    let bearer = format!("Bearer {new}");
    let (status, _) = request(server.http, "GET", "/api/v1/queue", Some(&bearer)).await;
    assert_eq!(status, 200);
    let (status, _) = api(&server, "GET", "/api/v1/queue").await;
    assert_eq!(status, 401, "the old token no longer works");

    std::fs::remove_file(&file).unwrap();
    let (status, body) = request(server.http, "POST", "/api/v1/reload", Some(&bearer)).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("http.admin_token_file"),
        "{body}"
    );
    let (status, _) = request(server.http, "GET", "/api/v1/queue", Some(&bearer)).await;
    assert_eq!(status, 200, "the running token stays");
}
