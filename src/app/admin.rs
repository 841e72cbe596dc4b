//! The admin API on the HTTP endpoint, under `/api/v1/`: the queue (list, show, retry, hold,
//! release, delete, bounce), the dead letters (list, purge), the drain, and reload. The
//! `postern queue` and `postern reload` commands call it; the JSON is documented in the
//! guide (docs/operations.md, "Admin API and queue tools").
//!
//! Every request needs `Authorization: Bearer <token>`, the token read from
//! `http.admin_token_file` (RFC 6750 2.1), compared in constant time; a missing or wrong one
//! is answered `401` with `WWW-Authenticate: Bearer` (RFC 6750 3) and does nothing. Without a
//! token file the API is off and every path under `/api/v1/` answers `404`. Errors are JSON
//! objects `{"error": "..."}` with the status code saying what kind.

pub mod token;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Serialize;
use serde_json::json;
use tracing::warn;

use crate::app::admin::token::AdminToken;
use crate::app::reload::Reloader;
use crate::delivery::queue::{Answer, Command, ControlError};
use crate::delivery::view::MessageView;
use crate::server::Runtime;
use crate::shutdown::Shutdown;
use crate::spool::{QueueId, inspect};
use crate::telemetry::events;

/// What the admin handlers reach.
#[derive(Debug)]
pub(crate) struct Admin {
    /// The bearer token (its digest); none: the API is off.
    pub(crate) token: Arc<AdminToken>,
    pub(crate) rt: Arc<Runtime>,
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) shutdown: Shutdown,
}

/// A handler's result: the response, or why not.
type Answered = Result<Response, Failure>;

/// An error answer: `{"error": why}` with its status; a 401 carries the RFC 6750 3
/// challenge.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    why: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = format!("{}\n", json!({ "error": self.why }));
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"postern\""),
            );
        }
        resp
    }
}

/// The `/api/v1/` routes.
pub(crate) fn routes(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/api/v1/queue", get(list))
        .route("/api/v1/queue/retry", post(retry_all))
        .route("/api/v1/queue/{id}", get(show).delete(remove))
        .route("/api/v1/queue/{id}/{action}", post(act))
        .route("/api/v1/failed", get(failed).delete(purge_all))
        .route("/api/v1/failed/{id}", delete(purge_one))
        .route("/api/v1/drain", post(drain_start).delete(drain_stop))
        .route("/api/v1/reload", post(reload))
        .with_state(admin)
}

/// A JSON response.
fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec_pretty(body) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode: {e}"),
        )
        .into_response(),
    }
}

/// `{"error": why}` with `status`.
fn error(status: StatusCode, why: &str) -> Failure {
    Failure {
        status,
        why: why.to_owned(),
    }
}

impl Admin {
    /// The token of an `Authorization: Bearer <token>` value; the scheme's name is
    /// case-insensitive (RFC 7235 2.1).
    fn bearer(value: &[u8]) -> Option<&[u8]> {
        let (scheme, token) = value.split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"Bearer ").then_some(token)
    }

    /// RFC 6750 2.1: `Authorization: Bearer <token>`; 404 while the API is off, 401 (with
    /// the challenge of RFC 6750 3) for a missing or wrong token.
    fn check(&self, headers: &HeaderMap) -> Result<(), Failure> {
        if !self.token.enabled() {
            return Err(error(
                StatusCode::NOT_FOUND,
                "the admin API is off: set http.admin_token_file",
            ));
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| Self::bearer(v.as_bytes()));
        match presented {
            Some(token) if self.token.matches(token) => Ok(()),
            _ => {
                warn!("admin API: request without a valid bearer token refused");
                Err(error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token (http.admin_token_file)",
                ))
            }
        }
    }

    /// Sends `cmd` to the runner; maps its errors to status codes.
    async fn control(&self, cmd: Command) -> Result<Answer, Failure> {
        self.rt.delivery.control(cmd).await.map_err(|e| {
            let status = match e {
                ControlError::NotFound(_) => StatusCode::NOT_FOUND,
                ControlError::Conflict(_) => StatusCode::CONFLICT,
                ControlError::Spool(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ControlError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, &e.to_string())
        })
    }

    fn draining(&self) -> bool {
        self.shutdown.draining.load(Ordering::Relaxed)
    }
}

/// The answer to a command as JSON.
fn answer(a: Answer) -> Response {
    match a {
        Answer::List(messages) => json_response(StatusCode::OK, &json!({ "messages": messages })),
        Answer::One(view) => json_response(StatusCode::OK, &*view),
        Answer::Count(n) => json_response(StatusCode::OK, &json!({ "retried": n })),
    }
}

fn parse_id(id: &str) -> Result<QueueId, Failure> {
    id.parse::<QueueId>()
        .map_err(|_| error(StatusCode::BAD_REQUEST, &format!("not a queue id: {id:?}")))
}

async fn list(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Answered {
    admin.check(&headers)?;
    let Answer::List(messages) = admin.control(Command::List).await? else {
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unexpected answer",
        ));
    };
    let body = json!({ "draining": admin.draining(), "messages": messages });
    Ok(json_response(StatusCode::OK, &body))
}

async fn show(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answered {
    admin.check(&headers)?;
    let id = parse_id(&id)?;
    Ok(answer(admin.control(Command::Show(id)).await?))
}

async fn act(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Answered {
    admin.check(&headers)?;
    let id = parse_id(&id)?;
    let cmd = match action.as_str() {
        "retry" => Command::Retry(Some(id)),
        "hold" => Command::Hold(id),
        "release" => Command::Release(id),
        "bounce" => Command::Bounce(id),
        _ => {
            return Err(error(
                StatusCode::NOT_FOUND,
                "no such action: retry, hold, release or bounce",
            ));
        }
    };
    Ok(answer(admin.control(cmd).await?))
}

async fn remove(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answered {
    admin.check(&headers)?;
    let id = parse_id(&id)?;
    Ok(answer(admin.control(Command::Delete(id)).await?))
}

async fn retry_all(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Answered {
    admin.check(&headers)?;
    Ok(answer(admin.control(Command::Retry(None)).await?))
}

async fn failed(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Answered {
    admin.check(&headers)?;
    let dir = admin.rt.spool.dir().to_owned();
    let now = admin.rt.clock.unix();
    let found = tokio::task::spawn_blocking(move || inspect::failed(&dir))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let messages: Vec<MessageView> = found
        .envelopes
        .iter()
        .map(|e| MessageView::dead_letter(e, now))
        .collect();
    let unreadable: Vec<_> = found
        .unreadable
        .iter()
        .map(|(id, why)| json!({ "id": id, "error": why }))
        .collect();
    let body = json!({ "messages": messages, "unreadable": unreadable });
    Ok(json_response(StatusCode::OK, &body))
}

async fn purge(admin: &Admin, id: Option<QueueId>) -> Answered {
    let dir = admin.rt.spool.dir().to_owned();
    let which = id.clone();
    let purged = tokio::task::spawn_blocking(move || inspect::purge_failed(&dir, which.as_ref()))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    if let Some(id) = &id
        && purged == 0
    {
        return Err(error(
            StatusCode::NOT_FOUND,
            &format!("no message {id} in the failed directory"),
        ));
    }
    let which = id.as_ref().map_or("-", QueueId::as_str);
    events::admin(
        "purge_failed",
        which,
        &format!("{purged} dead letters removed"),
    );
    Ok(json_response(StatusCode::OK, &json!({ "purged": purged })))
}

async fn purge_all(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Answered {
    admin.check(&headers)?;
    purge(&admin, None).await
}

async fn purge_one(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answered {
    admin.check(&headers)?;
    let id = parse_id(&id)?;
    purge(&admin, Some(id)).await
}

/// Starts a drain: listeners answer new connections `421 4.3.2`, `/readyz` fails, and every
/// waiting message is made due now.
async fn drain_start(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Answered {
    admin.check(&headers)?;
    admin.shutdown.draining.store(true, Ordering::Relaxed);
    events::admin(
        "drain",
        "-",
        "draining: new connections are refused with 421 4.3.2",
    );
    let retried = match admin.control(Command::Retry(None)).await? {
        Answer::Count(n) => n,
        _ => 0,
    };
    let body = json!({ "draining": true, "retried": retried });
    Ok(json_response(StatusCode::OK, &body))
}

/// Ends a drain: listeners take connections again.
async fn drain_stop(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Answered {
    admin.check(&headers)?;
    admin.shutdown.draining.store(false, Ordering::Relaxed);
    events::admin("resume", "-", "drain ended: accepting connections again");
    Ok(json_response(StatusCode::OK, &json!({ "draining": false })))
}

/// Reloads as SIGHUP does; `422` with the error when the new config is refused (the running
/// one stays).
async fn reload(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Answered {
    admin.check(&headers)?;
    match admin.reloader.reload().await {
        Ok(o) => {
            let body = json!({
                "reloaded": true,
                "summary": o.to_string(),
                "changed": o.changed,
                "users_added": o.users_added,
                "users_removed": o.users_removed,
                "users_changed": o.users_changed,
                "auth_cache_cleared": o.auth_cache_cleared,
                "upstreams_kept": o.upstreams_kept,
                "upstreams_retired": o.upstreams_retired,
                "needs_restart": o.needs_restart,
            });
            Ok(json_response(StatusCode::OK, &body))
        }
        Err(e) => Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("reload refused, the running configuration stays: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::Admin;

    /// RFC 7235 2.1: the scheme is case-insensitive; the token is taken as it stands.
    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let rows: &[(&[u8], Option<&[u8]>)] = &[
            (b"Bearer abc", Some(b"abc")),
            (b"bearer abc", Some(b"abc")),
            (b"BEARER abc", Some(b"abc")),
            (b"Bearer  abc", Some(b" abc")),
            (b"Basic abcdef", None),
            (b"Bearer", None),
            (b"", None),
        ];
        for (value, token) in rows {
            assert_eq!(Admin::bearer(value), *token, "{value:?}");
        }
    }
}
