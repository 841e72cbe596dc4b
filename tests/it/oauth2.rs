//! OAuth 2.0 to the upstream, end to end: postern asks a real token endpoint on loopback
//! (which checks each grant and verifies the client assertion's signature), logs in to a
//! sink that requires XOAUTH2 or OAUTHBEARER and checks the SASL string, and delivers.
//! Time is postern's injected clock, moved on by the test.

use std::time::Duration;

use crate::harness::sink::SinkOAuth;
use crate::harness::token::{CLIENT_ID, Credential, TokenEndpoint, fixture};
use crate::harness::{
    DELIVERY, Opts, TestServer, Upstream, eventually, logs, message, queue_id, send_mail,
};

/// The mailbox postern logs in as.
const MAILBOX: &str = "scanner@corp.example";
/// Microsoft's scope (postern's default for `provider: microsoft`).
const M365_SCOPE: &str = "https://outlook.office365.com/.default";

/// A server whose upstream logs in with `oauth2` (flow-mapping keys after `provider`), to a
/// sink offering `mechanisms`; one message per connection, so each delivery logs in anew;
/// no circuit breaker, so that the retries of a test that keeps the token endpoint down
/// for a while are not also held off by its cool-down.
async fn start(
    endpoint: &TokenEndpoint,
    mechanisms: &[&'static str],
    oauth2: &str,
) -> (TestServer, SinkOAuth) {
    let sink = SinkOAuth::new(MAILBOX, mechanisms, endpoint.tokens());
    let auth = format!(
        "auth: {{username: \"{MAILBOX}\", oauth2: {{client_id: \"{CLIENT_ID}\", token_url: \"{}\", {oauth2}}}}}, messages_per_connection: 1, circuit_breaker: {{failures: 0}}",
        endpoint.url()
    );
    let opts = Opts {
        upstream: Upstream::StartTlsAuth,
        upstream_auth: Some(auth),
        sink_oauth: Some(sink.clone()),
        ..Opts::default()
    };
    let server = TestServer::start(opts).await;
    endpoint.use_clock(server.clock.clone());
    (server, sink)
}

/// Submits one message on the legacy listener; returns its queue id.
async fn submit(server: &TestServer, tag: &str) -> String {
    let mut d = server.legacy_session().await;
    let sent = message(tag, "", "scanned page\r\n");
    let reply = send_mail(&mut d, "dev@example.net", &["x@example.org"], &sent).await;
    d.cmd("QUIT", "221").await;
    queue_id(reply.first())
}

/// Delivers one more message (the `n`th) and checks it arrived byte for byte.
async fn deliver(server: &TestServer, n: usize, tag: &str) {
    submit(server, tag).await;
    let got = server.sink().wait_for(DELIVERY, |m| m.len() >= n).await;
    assert_eq!(got.len(), n);
    assert!(
        got[n - 1].text().ends_with("scanned page\r\n"),
        "{}",
        got[n - 1].text()
    );
    assert_eq!(got[n - 1].auth.as_deref(), Some(MAILBOX));
}

fn xoauth2(token: &str) -> String {
    format!("user={MAILBOX}\u{1}auth=Bearer {token}\u{1}\u{1}")
}

/// Microsoft 365 app-only with a client secret: the client-credentials grant with the
/// secret and Microsoft's scope, the exact XOAUTH2 string, one token for many connections,
/// and a new one once less than a minute of its ten is left (refresh ahead of expiry,
/// observed on the endpoint as postern's clock moves). The expiry gauge follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_xoauth2_and_refresh_before_expiry() {
    let endpoint = TokenEndpoint::start(Credential::Secret, false, M365_SCOPE, 600).await;
    let oauth2 = format!(
        "provider: microsoft, client_secret_file: {}",
        fixture("oauth-client.secret")
    );
    let (server, sink) = start(&endpoint, &["XOAUTH2"], &oauth2).await;
    let t0 = server.clock.unix();
    deliver(&server, 1, "first").await;
    server.clock.advance(Duration::from_secs(300));
    deliver(&server, 2, "cached").await;
    assert_eq!(
        endpoint.requests().len(),
        1,
        "the token is reused while fresh"
    );
    // 550 s into a 600 s token: inside the last minute, so it is refreshed before use.
    server.clock.advance(Duration::from_secs(250));
    deliver(&server, 3, "refreshed").await;
    let requests = endpoint.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| r.issued && r.grant == "client_credentials")
    );
    assert!(
        requests[1].at < requests[0].at + 600,
        "refreshed before the first expired"
    );
    let issued = endpoint.issued();
    let want: Vec<String> = [&issued[0], &issued[0], &issued[1]]
        .iter()
        .map(|t| xoauth2(t))
        .collect();
    assert_eq!(sink.seen(), want);
    assert_eq!(endpoint.violations(), Vec::<String>::new());
    assert_eq!(server.sink().violations(), Vec::<String>::new());
    let scrape = server.scrape().await;
    scrape.expect(&[
        (
            r#"postern_oauth2_token_requests_total{result="issued",upstream="sink"}"#,
            2.0,
        ),
        (
            r#"postern_oauth2_token_requests_total{result="refused",upstream="sink"}"#,
            0.0,
        ),
        (
            r#"postern_oauth2_token_requests_total{result="unavailable",upstream="sink"}"#,
            0.0,
        ),
    ]);
    let expiry = scrape.get(r#"postern_oauth2_token_expiry_timestamp_seconds{upstream="sink"}"#);
    let want = (t0 + 550 + 600) as f64;
    assert!(
        (expiry - want).abs() <= 5.0,
        "expiry {expiry}, want about {want}"
    );
}

/// Microsoft 365 app-only with a certificate: the endpoint verifies the RS256 client
/// assertion with the certificate's public key (thumbprint, audience, issuer, subject,
/// times); the sink offers only OAUTHBEARER, which postern then uses (RFC 7628 string).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_assertion_and_oauthbearer() {
    let endpoint = TokenEndpoint::start(Credential::Certificate, false, M365_SCOPE, 3600).await;
    let oauth2 = format!(
        "provider: microsoft, client_certificate: {}, client_key: {}",
        fixture("oauth-cert.pem"),
        fixture("oauth-key.pem")
    );
    let (server, sink) = start(&endpoint, &["OAUTHBEARER"], &oauth2).await;
    deliver(&server, 1, "bearer").await;
    assert_eq!(endpoint.violations(), Vec::<String>::new());
    assert_eq!(endpoint.requests().len(), 1);
    let token = &endpoint.issued()[0];
    let port = server.sink_port;
    assert_eq!(
        sink.seen(),
        [format!(
            "n,a={MAILBOX},\u{1}host=127.0.0.1\u{1}port={port}\u{1}auth=Bearer {token}\u{1}\u{1}"
        )]
    );
    assert_eq!(server.sink().violations(), Vec::<String>::new());
}

/// A refresh-token grant (Google Workspace style, generic provider) whose refresh token the
/// endpoint rotates; the upstream then refuses the cached token (`535` after the error
/// challenge, answered with an empty line): postern fetches one new token, with the rotated
/// refresh token, and logs in again on the same connection. One refresh, one retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_535_refreshes_once_and_retries_once() {
    let scope = "https://mail.google.com/";
    let endpoint = TokenEndpoint::start(Credential::Secret, true, scope, 3600).await;
    let oauth2 = format!(
        "provider: generic, scope: \"{scope}\", client_secret_file: {}, refresh_token_file: {}",
        fixture("oauth-client.secret"),
        fixture("oauth-refresh.token")
    );
    let (server, sink) = start(&endpoint, &["XOAUTH2", "OAUTHBEARER"], &oauth2).await;
    deliver(&server, 1, "before-revoke").await;
    let first = endpoint.issued()[0].clone();
    // The provider revokes the token before it expires.
    endpoint.tokens().lock().unwrap().remove(&first);
    deliver(&server, 2, "after-revoke").await;
    let requests = endpoint.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| r.issued && r.grant == "refresh_token")
    );
    let second = endpoint.issued()[1].clone();
    assert_eq!(
        sink.seen(),
        [xoauth2(&first), xoauth2(&first), xoauth2(&second)]
    );
    // The endpoint checked that the second request carried the rotated refresh token.
    assert_eq!(endpoint.violations(), Vec::<String>::new());
    assert_eq!(server.sink().violations(), Vec::<String>::new());
    assert_eq!(
        server.sink().connections(),
        2,
        "the retry used the same connection"
    );
}

/// The token endpoint down, then refusing: the message stays queued, each attempt names
/// the reason (and the provider's error code and description are logged and counted);
/// once the endpoint issues tokens again the message goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_keeps_mail_queued_until_it_is_back() {
    let endpoint = TokenEndpoint::start(Credential::Secret, false, M365_SCOPE, 3600).await;
    endpoint.down();
    let oauth2 = format!(
        "provider: microsoft, client_secret_file: {}",
        fixture("oauth-client.secret")
    );
    let (server, _sink) = start(&endpoint, &["XOAUTH2"], &oauth2).await;
    let id = submit(&server, "queued").await;
    let deferred = |needle: &'static str| {
        let id = id.clone();
        move || {
            logs::lines().into_iter().any(|l| {
                let f = &l["fields"];
                f["event"] == "delivery_attempt"
                    && f["queue_id"] == id.as_str()
                    && f["result"] == "deferred"
                    && f["reply"].as_str().is_some_and(|r| {
                        r.contains("cannot get an OAuth2 token") && r.contains(needle)
                    })
            })
        }
    };
    eventually("deferred: token endpoint down", deferred("request failed")).await;
    endpoint.up();
    endpoint.refuse(
        401,
        "invalid_client",
        "AADSTS7000215: Invalid client secret provided.",
    );
    eventually(
        "deferred: token refused",
        deferred("HTTP 401: invalid_client: AADSTS7000215"),
    )
    .await;
    let url = endpoint.url().to_owned();
    let refused_logged = logs::lines().into_iter().any(|l| {
        let f = &l["fields"];
        f["token_url"] == url.as_str()
            && f["error"] == "invalid_client"
            && f["error_description"] == "AADSTS7000215: Invalid client secret provided."
            && f["status"] == 401
    });
    assert!(refused_logged, "the provider's error is logged");
    assert!(server.sink().received().is_empty());
    assert_eq!(
        server.sink().connections(),
        0,
        "no connection opened without a token"
    );
    endpoint.serve_tokens();
    let got = server.sink().wait_for(DELIVERY, |m| !m.is_empty()).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].text().ends_with("scanned page\r\n"));
    let scrape = server.scrape().await;
    assert_eq!(
        scrape.get(r#"postern_oauth2_token_requests_total{result="issued",upstream="sink"}"#),
        1.0
    );
    assert!(
        scrape.get(r#"postern_oauth2_token_requests_total{result="refused",upstream="sink"}"#)
            >= 1.0
    );
    assert!(
        scrape.get(r#"postern_oauth2_token_requests_total{result="unavailable",upstream="sink"}"#)
            >= 1.0
    );
    assert_eq!(endpoint.violations(), Vec::<String>::new());
}

/// `postern probe upstream` with OAuth2: the token step (where from, how long it is valid),
/// then the session set-up with `AUTH XOAUTH2` redacted and accepted; the token never
/// printed, and no mail sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_gets_a_token_and_logs_in_without_printing_it() {
    let endpoint = TokenEndpoint::start(Credential::Secret, false, M365_SCOPE, 3600).await;
    let oauth2 = format!(
        "provider: microsoft, client_secret_file: {}",
        fixture("oauth-client.secret")
    );
    let (server, _sink) = start(&endpoint, &["XOAUTH2"], &oauth2).await;
    let out = server.cli(&["probe", "upstream", "sink"]).await;
    let text = crate::harness::admin::stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        crate::harness::admin::stderr(&out)
    );
    let token_line = format!("token      OAuth2 access token from {}", endpoint.url());
    let expected_in_order = [
        token_line.as_str(),
        "connect    connected to 127.0.0.1:",
        "starttls   C: STARTTLS",
        "auth       C: AUTH XOAUTH2 <redacted>",
        "auth       S: 235",
        "quit       C: QUIT",
    ];
    crate::harness::assert_lines_in_order(&text, &expected_in_order);
    let lines: Vec<&str> = text.lines().collect();
    let valid = lines[0..]
        .iter()
        .find(|l| l.starts_with("token "))
        .and_then(|l| l.strip_prefix(token_line.as_str()))
        .and_then(|rest| rest.strip_prefix(", valid for "))
        .and_then(|rest| rest.strip_suffix(" s"))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(valid.is_some_and(|s| s > 3500 && s <= 3600), "{text}");
    let issued = endpoint.issued();
    assert_eq!(issued.len(), 1, "one token for the probe");
    assert!(
        !text.contains(issued[0].as_str()),
        "the token was printed:\n{text}"
    );
    assert_eq!(server.sink().received(), vec![]);
}
