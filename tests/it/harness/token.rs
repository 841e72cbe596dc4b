//! A real OAuth 2.0 token endpoint on `127.0.0.1:0` for postern's token source (RFC 6749
//! 3.2: a form POST answered in JSON). It checks each request as the provider would: the
//! grant type and its parameters, the client id and scope, the client secret or the signed
//! client assertion (RFC 7523: verified with the certificate's public key, its thumbprint,
//! audience, issuer, subject and times against postern's clock), the refresh token (which it
//! rotates, as Entra ID does). It issues short-lived tokens and puts each into [`Tokens`],
//! the set the sink accepts. A request that breaks a rule is answered `400` and recorded in
//! [`TokenEndpoint::violations`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use postern::clock::Clock;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// Every access token this endpoint issues starts with this (the log scan looks for it).
pub const TOKEN_PREFIX: &str = "oauth2-test-access-token-";
/// Every refresh token it rotates in starts with this.
pub const REFRESH_PREFIX: &str = "oauth2-test-refresh-";
/// The client secret of the fixtures (`tests/configs/fixtures/oauth-client.secret`).
pub const CLIENT_SECRET: &str = "fixture-client-secret";
/// The refresh token of the fixtures (`tests/configs/fixtures/oauth-refresh.token`).
pub const REFRESH_TOKEN: &str = "1//fixture-refresh-token";
/// The client id every test uses.
pub const CLIENT_ID: &str = "11111111-1111-1111-1111-111111111111";

/// Access tokens the sink accepts: those issued and not revoked by the test.
pub type Tokens = Arc<Mutex<HashSet<String>>>;

/// A fixture file's absolute path.
pub fn fixture(name: &str) -> String {
    format!(
        "{}/tests/configs/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// How the client must prove itself.
#[derive(Debug, Clone)]
pub enum Credential {
    /// `client_secret` = [`CLIENT_SECRET`].
    Secret,
    /// A client assertion signed by the key of the fixture `oauth-cert.pem`.
    Certificate,
}

/// One request as the endpoint saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `grant_type`.
    pub grant: String,
    /// postern's clock (unix seconds) when it came.
    pub at: u64,
    /// Whether a token was issued.
    pub issued: bool,
}

#[derive(Debug)]
struct Inner {
    scope: String,
    credential: Credential,
    /// The refresh token the next refresh grant must carry (`None`: client credentials).
    refresh: Mutex<Option<String>>,
    url: String,
    clock: Mutex<Clock>,
    lifetime: AtomicU64,
    refuse: Mutex<Option<(u16, String, String)>>,
    requests: Mutex<Vec<Request>>,
    violations: Mutex<Vec<String>>,
    tokens: Tokens,
    serial: AtomicU64,
}

/// A running token endpoint. Dropping it stops it.
#[derive(Debug)]
pub struct TokenEndpoint {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

impl TokenEndpoint {
    /// Starts an endpoint for the client-credentials grant (`refresh: false`) or the
    /// refresh-token grant starting from [`REFRESH_TOKEN`]; tokens live `lifetime` seconds.
    /// Times are read from a clock of its own until [`TokenEndpoint::use_clock`].
    pub async fn start(
        credential: Credential,
        refresh: bool,
        scope: &str,
        lifetime: u64,
    ) -> TokenEndpoint {
        let listener = bind(0);
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            scope: scope.to_owned(),
            credential,
            refresh: Mutex::new(refresh.then(|| REFRESH_TOKEN.to_owned())),
            url: format!("http://{addr}/tenant/oauth2/v2.0/token"),
            clock: Mutex::new(Clock::new()),
            lifetime: AtomicU64::new(lifetime),
            refuse: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            tokens: Tokens::default(),
            serial: AtomicU64::new(0),
        });
        let task = tokio::spawn(serve(listener, inner.clone()));
        TokenEndpoint {
            addr,
            inner,
            task: Mutex::new(Some(task)),
        }
    }

    /// Reads the time from `clock` (postern's, which the test moves on).
    pub fn use_clock(&self, clock: Clock) {
        *self.inner.clock.lock().unwrap() = clock;
    }

    /// The token URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The tokens the sink should accept.
    pub fn tokens(&self) -> Tokens {
        self.inner.tokens.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Every access token issued so far, in order.
    pub fn issued(&self) -> Vec<String> {
        let n = self.inner.serial.load(Ordering::SeqCst);
        (1..=n).map(token_name).collect()
    }

    /// Requests that broke a rule (a test asserts there are none).
    pub fn violations(&self) -> Vec<String> {
        self.inner.violations.lock().unwrap().clone()
    }

    /// Answers every request with this OAuth error until [`TokenEndpoint::serve_tokens`].
    pub fn refuse(&self, status: u16, error: &str, description: &str) {
        *self.inner.refuse.lock().unwrap() =
            Some((status, error.to_owned(), description.to_owned()));
    }

    /// Issues tokens again.
    pub fn serve_tokens(&self) {
        *self.inner.refuse.lock().unwrap() = None;
    }

    /// Closes the listener and every connection: the endpoint is unreachable.
    pub fn down(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub fn up(&self) {
        let listener = bind(self.addr.port());
        *self.task.lock().unwrap() = Some(tokio::spawn(serve(listener, self.inner.clone())));
    }
}

fn token_name(n: u64) -> String {
    format!("{TOKEN_PREFIX}{n}")
}

fn bind(port: u16) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    socket.listen(16).unwrap()
}

/// Accepts until aborted; the connections live in the task's `JoinSet`, so aborting the task
/// closes them too (a pooled keep-alive connection must not outlive `down`).
async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    let app = Router::new()
        .route("/tenant/oauth2/v2.0/token", post(token))
        .with_state(inner);
    let mut conns = JoinSet::new();
    while let Ok((tcp, _)) = listener.accept().await {
        let service = TowerToHyperService::new(app.clone());
        conns.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn token(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let form: Vec<(String, String)> =
        reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(&body)))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let grant = field("grant_type").unwrap_or_default();
    let at = inner.clock.lock().unwrap().unix();
    let checked = check(&inner, &form, &grant, at);
    let refusal = inner.refuse.lock().unwrap().clone();
    let issued = checked.is_ok() && refusal.is_none();
    inner
        .requests
        .lock()
        .unwrap()
        .push(Request { grant, at, issued });
    if let Err(problem) = checked {
        inner.violations.lock().unwrap().push(problem.clone());
        return json(
            400,
            serde_json::json!({"error": "invalid_request", "error_description": problem}),
        );
    }
    if let Some((status, error, description)) = refusal {
        return json(
            status,
            serde_json::json!({"error": error, "error_description": description}),
        );
    }
    let n = inner.serial.fetch_add(1, Ordering::SeqCst) + 1;
    let access = token_name(n);
    inner.tokens.lock().unwrap().insert(access.clone());
    let mut answer = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": inner.lifetime.load(Ordering::SeqCst),
        "access_token": access,
    });
    let mut refresh = inner.refresh.lock().unwrap();
    if refresh.is_some() {
        let rotated = format!("{REFRESH_PREFIX}{n}");
        answer["refresh_token"] = rotated.clone().into();
        *refresh = Some(rotated);
    }
    json(200, answer)
}

fn json(status: u16, body: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The provider's checks; `Err` names the first broken rule.
fn check(inner: &Inner, form: &[(String, String)], grant: &str, now: u64) -> Result<(), String> {
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let expected_grant = if inner.refresh.lock().unwrap().is_some() {
        "refresh_token"
    } else {
        "client_credentials"
    };
    if grant != expected_grant {
        return Err(format!("grant_type {grant:?}, expected {expected_grant}"));
    }
    if field("client_id") != Some(CLIENT_ID) {
        return Err(format!("client_id {:?}", field("client_id")));
    }
    if field("scope") != Some(inner.scope.as_str()) {
        return Err(format!("scope {:?}", field("scope")));
    }
    if grant == "refresh_token" {
        let want = inner.refresh.lock().unwrap().clone();
        if field("refresh_token") != want.as_deref() {
            return Err("refresh_token is not the current one".into());
        }
    }
    match inner.credential {
        Credential::Secret => {
            if field("client_secret") != Some(CLIENT_SECRET) || field("client_assertion").is_some()
            {
                return Err("client_secret missing or wrong".into());
            }
            Ok(())
        }
        Credential::Certificate => {
            if field("client_secret").is_some() {
                return Err("client_secret sent with a certificate credential".into());
            }
            if field("client_assertion_type")
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err(format!(
                    "client_assertion_type {:?}",
                    field("client_assertion_type")
                ));
            }
            verify_assertion(
                field("client_assertion").unwrap_or_default(),
                &inner.url,
                now,
            )
        }
    }
}

/// RFC 7523 3: signature by the certificate's key (RS256), `x5t#S256` its thumbprint,
/// `aud` the token URL, `iss` = `sub` = client id, a `jti`, valid now and not for long.
fn verify_assertion(jwt: &str, url: &str, now: u64) -> Result<(), String> {
    let pem = std::fs::read(fixture("oauth-cert.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let public = cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .to_vec();
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| format!("assertion header: {e}"))?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(format!("assertion alg {:?}", header.alg));
    }
    let thumbprint = B64URL.encode(Sha256::digest(&pem.contents));
    if header.x5t_s256.as_deref() != Some(thumbprint.as_str()) {
        return Err(format!(
            "x5t#S256 {:?}, expected {thumbprint}",
            header.x5t_s256
        ));
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[url]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.sub = Some(CLIENT_ID.to_owned());
    // Times are checked below against postern's clock, which a test may have moved on.
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    let key = jsonwebtoken::DecodingKey::from_rsa_der(&public);
    let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
        .map_err(|e| format!("assertion rejected: {e}"))?
        .claims;
    let (nbf, exp) = (
        claims["nbf"].as_u64().unwrap_or(u64::MAX),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if nbf > now + 5 || exp <= now || exp - nbf > 600 {
        return Err(format!("assertion times nbf {nbf} exp {exp} at {now}"));
    }
    if claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err("assertion without jti".into());
    }
    Ok(())
}
