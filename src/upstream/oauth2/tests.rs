//! The token source against a token endpoint on 127.0.0.1:0 (axum): coalescing,
//! refresh timing on the clock, the fallback to a still-valid token, and the pool
//! fingerprint over the OAuth2 files.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use tokio::sync::Semaphore;

use super::*;
use crate::config::schema::{Config, Provider};
use crate::upstream::Upstreams;

/// An endpoint that counts requests and answers each only when the test adds a permit to
/// `gate`; `fail` makes it answer 503 without a token.
struct Fake {
    url: String,
    requests: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

async fn fake(lifetime: u64) -> Fake {
    let requests = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r, g, f) = (requests.clone(), gate.clone(), fail.clone());
    let app = Router::new().route(
        "/token",
        post(move || {
            let (r, g, f) = (r.clone(), g.clone(), f.clone());
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                g.acquire().await.unwrap().forget();
                if f.load(Ordering::SeqCst) {
                    return (StatusCode::SERVICE_UNAVAILABLE, "down".to_owned());
                }
                let body = format!(
                    r#"{{"access_token":"t{n}","token_type":"Bearer","expires_in":{lifetime}}}"#
                );
                (StatusCode::OK, body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fake {
        url,
        requests,
        gate,
        fail,
    }
}

fn config(url: &str, secret: &std::path::Path) -> OAuth2Config {
    OAuth2Config {
        provider: Some(Provider::Generic),
        tenant: None,
        client_id: "app".into(),
        client_secret_file: Some(secret.to_owned()),
        client_certificate: None,
        client_key: None,
        refresh_token_file: None,
        token_url: Some(url.to_owned()),
        scope: None,
    }
}

fn secret_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("secret");
    std::fs::write(&path, "s3cret\n").unwrap();
    path
}

/// Eight connections find no token at once: one request, one token for all.
#[tokio::test]
async fn concurrent_callers_share_one_request() {
    let fake = fake(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&fake.url, &secret_file(&dir));
    let src = source("a", None, &cfg, dir.path(), Clock::new(), None).unwrap();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let src = src.clone();
        callers.spawn(async move { src.token().await });
    }
    // The first request is in flight (the others wait behind it), then it is answered.
    for _ in 0..200 {
        if fake.requests.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.gate.add_permits(1);
    let mut tokens = Vec::new();
    while let Some(got) = callers.join_next().await {
        tokens.push(got.unwrap().unwrap().expose().to_owned());
    }
    assert_eq!(tokens, vec!["t1"; 8]);
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        format!("{src:?}").matches("t1").count(),
        0,
        "Debug shows no token"
    );
}

/// A refresh that fails while the token is still valid keeps it in use; once it has
/// expired the failure is the caller's. A rejected token is replaced once.
#[tokio::test]
async fn refresh_timing_fallback_and_rejection() {
    let fake = fake(600).await;
    fake.gate.add_permits(100);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&fake.url, &secret_file(&dir));
    let clock = Clock::new();
    let src = source("a", None, &cfg, dir.path(), clock.clone(), None).unwrap();
    let first = src.token().await.unwrap();
    clock.advance(Duration::from_secs(539));
    assert_eq!(
        src.token().await.unwrap(),
        first,
        "fresh until 60 s before expiry"
    );
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
    fake.fail.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        src.token().await.unwrap(),
        first,
        "still valid: used while refresh fails"
    );
    assert_eq!(fake.requests.load(Ordering::SeqCst), 2);
    clock.advance(Duration::from_secs(60));
    let err = src.token().await.unwrap_err();
    assert_eq!(err.result(), TokenResult::Unavailable);
    assert_eq!(
        err.to_string(),
        "HTTP 503: the answer is not a JSON token response"
    );
    fake.fail.store(false, Ordering::SeqCst);
    // For a few seconds after a failure the error stands without a request, so the
    // connections queued behind a timed-out request do not each wait out their own.
    assert_eq!(src.token().await.unwrap_err(), err);
    assert_eq!(fake.requests.load(Ordering::SeqCst), 3);
    clock.advance(Duration::from_secs(5));
    let second = src.token().await.unwrap();
    assert_eq!(second.expose(), "t4");
    // Another connection's 535 about the old token does not cost a request.
    assert_eq!(src.after_rejection(&first).await.unwrap(), second);
    assert_eq!(src.after_rejection(&second).await.unwrap().expose(), "t5");
    assert_eq!(fake.requests.load(Ordering::SeqCst), 5);
}

/// A rotated client secret is a changed upstream: its pool (and token) is replaced.
#[test]
fn fingerprint_covers_the_client_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(&dir);
    let yaml = format!(
        "listeners: [{{name: s, address: \"127.0.0.1:25\"}}]\nqueue: {{directory: q}}\n\
         upstreams: [{{name: m, address: \"h:587\", auth: {{username: u@x, oauth2: \
         {{provider: generic, token_url: \"http://127.0.0.1:9/t\", client_id: app, \
         client_secret_file: {}}}}}}}]\n",
        secret.display()
    );
    let cfg: Config = serde_yaml::from_str(&yaml).unwrap();
    let first = Upstreams::new(&cfg).unwrap();
    let same = Upstreams::rebuild(&cfg, &first).unwrap();
    assert_eq!(same.kept, ["m"]);
    std::fs::write(&secret, "rotated\n").unwrap();
    let rotated = Upstreams::rebuild(&cfg, &same.upstreams).unwrap();
    assert!(rotated.kept.is_empty());
    assert_eq!(rotated.retired.len(), 1);
}
