//! `postern queue ...` and `postern reload`: thin callers of the admin API (api.rs), with
//! human output (table.rs) or `--json`. `queue list` also reads a stopped relay's spool
//! directly, read-only, and `queue purge-failed` empties `failed/` itself when postern is not
//! running.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::cli::api::{ApiError, Client};
use crate::cli::table;
use crate::config::units;
use crate::delivery::view::MessageView;
use crate::spool::{QueueId, inspect};

/// How often `queue drain` looks at the queue.
const DRAIN_POLL: Duration = Duration::from_secs(1);

/// Where the API is, and how to print.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The configuration file of the running relay (for `http.address` and
    /// `http.admin_token_file`).
    #[arg(long, short, default_value = "config/postern.yaml")]
    pub config: PathBuf,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The queue tools.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List the queued messages (or, with --failed, the dead letters). Reads the spool
    /// directory read-only when postern is not running.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// List the dead-letter directory (failed/) instead.
        #[arg(long)]
        failed: bool,
        /// Read the spool directory (read-only) even if postern runs.
        #[arg(long)]
        offline: bool,
    },
    /// Show one message.
    Show {
        /// The queue id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make a message (or every waiting one) due now; its attempt count is kept.
    Retry {
        /// The queue id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every waiting message.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Hold a message: it is not attempted until released (survives a restart).
    Hold {
        /// The queue id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Release a held message; it is tried at once.
    Release {
        /// The queue id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a message from the queue, undelivered.
    Delete {
        /// The queue id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Fail a message's pending recipients (administrator's reason); it bounces and moves
    /// to the dead letters as any failed message does.
    Bounce {
        /// The queue id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop taking mail (new connections get 421 4.3.2, /readyz fails), deliver everything
    /// queued; exit 0 once the queue is empty, 1 with what is left at the deadline.
    Drain {
        /// How long to wait for the queue to empty.
        #[arg(long, default_value = "10m")]
        deadline: units::Duration,
        /// How often to make every waiting message due again meanwhile.
        #[arg(long, default_value = "30s")]
        retry_every: units::Duration,
        /// End a drain instead: accept connections again.
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove dead letters from failed/: one, or all of them.
    PurgeFailed {
        /// The queue id; all when absent.
        id: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

impl QueueCommand {
    fn api(&self) -> &ApiArgs {
        match self {
            QueueCommand::List { api, .. }
            | QueueCommand::Show { api, .. }
            | QueueCommand::Retry { api, .. }
            | QueueCommand::Hold { api, .. }
            | QueueCommand::Release { api, .. }
            | QueueCommand::Delete { api, .. }
            | QueueCommand::Bounce { api, .. }
            | QueueCommand::Drain { api, .. }
            | QueueCommand::PurgeFailed { api, .. } => api,
        }
    }
}

/// Runs a queue command.
pub fn run(cmd: QueueCommand) -> ExitCode {
    let api = cmd.api().clone();
    let (client, rt) = match connect(&api) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(dispatch(&client, &api, cmd))
}

/// The API client of `api`'s config and a runtime to call it on.
fn connect(api: &ApiArgs) -> Result<(Client, tokio::runtime::Runtime), ExitCode> {
    let client = Client::new(&api.config).map_err(|e| fail(&e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| fail("cannot start the runtime"))?;
    Ok((client, rt))
}

/// Runs `postern reload`.
pub fn reload(api: &ApiArgs) -> ExitCode {
    let (client, rt) = match connect(api) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(async {
        let body = match expect_ok(client.call("POST", "/api/v1/reload").await, api.json) {
            Ok(body) => body,
            Err(code) => return code,
        };
        if api.json {
            print_json(&body);
        } else {
            let summary = body.get("summary").and_then(Value::as_str).unwrap_or("");
            println!("configuration reloaded: {summary}");
        }
        ExitCode::SUCCESS
    })
}

async fn dispatch(client: &Client, api: &ApiArgs, cmd: QueueCommand) -> ExitCode {
    match cmd {
        QueueCommand::List {
            failed, offline, ..
        } => list(client, api, failed, offline).await,
        QueueCommand::Show { id, .. } => {
            one(client, api, "GET", &format!("/api/v1/queue/{id}")).await
        }
        QueueCommand::Retry { id: None, .. } => {
            match expect_ok(client.call("POST", "/api/v1/queue/retry").await, api.json) {
                Ok(body) => done(api, &body, |b| {
                    format!("{} messages due now", count(b, "retried"))
                }),
                Err(code) => code,
            }
        }
        QueueCommand::Retry { id: Some(id), .. } => action(client, api, &id, "retry").await,
        QueueCommand::Hold { id, .. } => action(client, api, &id, "hold").await,
        QueueCommand::Release { id, .. } => action(client, api, &id, "release").await,
        QueueCommand::Bounce { id, .. } => action(client, api, &id, "bounce").await,
        QueueCommand::Delete { id, .. } => {
            one(client, api, "DELETE", &format!("/api/v1/queue/{id}")).await
        }
        QueueCommand::Drain {
            deadline,
            retry_every,
            resume,
            ..
        } => match resume {
            true => match expect_ok(client.call("DELETE", "/api/v1/drain").await, api.json) {
                Ok(body) => done(api, &body, |_| "drain ended: accepting connections".into()),
                Err(code) => code,
            },
            false => drain(client, api, deadline.0, retry_every.0).await,
        },
        QueueCommand::PurgeFailed { id, .. } => purge(client, api, id).await,
    }
}

/// Prints `message` as `postern: message` on stderr; exit code 1.
fn fail(message: &str) -> ExitCode {
    eprintln!("postern: {message}");
    ExitCode::FAILURE
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn count(body: &Value, key: &str) -> u64 {
    body.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The body of a 2xx answer; otherwise the error printed (and, with `--json`, the body) and
/// the exit code to return.
fn expect_ok(result: Result<(u16, Value), ApiError>, json: bool) -> Result<Value, ExitCode> {
    match result {
        Ok((status, body)) if (200..300).contains(&status) => Ok(body),
        Ok((status, body)) => {
            if json {
                print_json(&body);
            }
            let why = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            Err(fail(&format!("HTTP {status}: {why}")))
        }
        Err(e) => Err(fail(&e.to_string())),
    }
}

/// Prints the body (`--json`) or `human(body)`; success.
fn done(api: &ApiArgs, body: &Value, human: impl Fn(&Value) -> String) -> ExitCode {
    if api.json {
        print_json(body);
    } else {
        println!("{}", human(body));
    }
    ExitCode::SUCCESS
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A command answered with one message.
async fn one(client: &Client, api: &ApiArgs, method: &str, path: &str) -> ExitCode {
    let body = match expect_ok(client.call(method, path).await, api.json) {
        Ok(body) => body,
        Err(code) => return code,
    };
    if api.json {
        print_json(&body);
        return ExitCode::SUCCESS;
    }
    match serde_json::from_value::<MessageView>(body) {
        Ok(v) => {
            print!("{}", table::show(&v, now()));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("unexpected answer: {e}")),
    }
}

async fn action(client: &Client, api: &ApiArgs, id: &str, what: &str) -> ExitCode {
    one(client, api, "POST", &format!("/api/v1/queue/{id}/{what}")).await
}

/// The messages of a listing answer.
fn messages(body: &Value) -> Vec<MessageView> {
    body.get("messages")
        .cloned()
        .and_then(|m| serde_json::from_value(m).ok())
        .unwrap_or_default()
}

async fn list(client: &Client, api: &ApiArgs, failed: bool, offline: bool) -> ExitCode {
    let path = if failed {
        "/api/v1/failed"
    } else {
        "/api/v1/queue"
    };
    if !offline {
        match client.call("GET", path).await {
            Err(e @ (ApiError::NotRunning(_) | ApiError::Setup(_))) => {
                eprintln!("postern: {e}; reading the spool directory (read-only)");
            }
            result => {
                let body = match expect_ok(result, api.json) {
                    Ok(body) => body,
                    Err(code) => return code,
                };
                return print_list(api, &body);
            }
        }
    }
    let dir = &client.spool;
    let found = if failed {
        inspect::failed(dir)
    } else {
        inspect::queued(dir)
    };
    let found = match found {
        Ok(f) => f,
        Err(e) => return fail(&e.to_string()),
    };
    let now = now();
    let views: Vec<MessageView> = found
        .envelopes
        .iter()
        .map(|e| match failed {
            true => MessageView::dead_letter(e, now),
            false => MessageView::of(e, now),
        })
        .collect();
    let unreadable: Vec<Value> = found
        .unreadable
        .iter()
        .map(|(id, why)| serde_json::json!({ "id": id, "error": why }))
        .collect();
    let body = serde_json::json!({ "offline": true, "messages": views, "unreadable": unreadable });
    print_list(api, &body)
}

fn print_list(api: &ApiArgs, body: &Value) -> ExitCode {
    if api.json {
        print_json(body);
        return ExitCode::SUCCESS;
    }
    let views = messages(body);
    print!("{}", table::list(&views, now()));
    if let Some(bad) = body.get("unreadable").and_then(Value::as_array) {
        for b in bad {
            eprintln!("postern: unreadable: {b}");
        }
    }
    ExitCode::SUCCESS
}

async fn purge(client: &Client, api: &ApiArgs, id: Option<String>) -> ExitCode {
    let path = match &id {
        Some(id) => format!("/api/v1/failed/{id}"),
        None => "/api/v1/failed".to_owned(),
    };
    let result = match client.call("DELETE", &path).await {
        Err(ApiError::NotRunning(_)) => {
            let qid = match id.as_deref().map(str::parse::<QueueId>).transpose() {
                Ok(q) => q,
                Err(e) => return fail(&e.to_string()),
            };
            match inspect::purge_failed(&client.spool, qid.as_ref()) {
                Ok(n) => Ok((200, serde_json::json!({ "purged": n }))),
                Err(e) => return fail(&e.to_string()),
            }
        }
        other => other,
    };
    match expect_ok(result, api.json) {
        Ok(body) => done(api, &body, |b| {
            format!("{} dead letters purged", count(b, "purged"))
        }),
        Err(code) => code,
    }
}

/// Starts a drain and waits (bounded by `deadline`) for the queue to empty, making every
/// waiting message due again each `retry_every`.
async fn drain(
    client: &Client,
    api: &ApiArgs,
    deadline: Duration,
    retry_every: Duration,
) -> ExitCode {
    if let Err(code) = expect_ok(client.call("POST", "/api/v1/drain").await, api.json) {
        return code;
    }
    if !api.json {
        println!(
            "draining: new connections are refused with 421 4.3.2; waiting up to {deadline:?}"
        );
    }
    let start = Instant::now();
    let mut last_retry = Instant::now();
    let left = loop {
        let body = match expect_ok(client.call("GET", "/api/v1/queue").await, api.json) {
            Ok(body) => body,
            Err(code) => return code,
        };
        if messages(&body).is_empty() {
            return done(
                api,
                &serde_json::json!({ "drained": true, "left": 0 }),
                |_| "queue drained: every message delivered or failed; 0 left".into(),
            );
        }
        if start.elapsed() >= deadline {
            break body;
        }
        if last_retry.elapsed() >= retry_every {
            let _ = client.call("POST", "/api/v1/queue/retry").await;
            last_retry = Instant::now();
        }
        tokio::time::sleep(DRAIN_POLL.min(deadline.saturating_sub(start.elapsed()))).await;
    };
    let views = messages(&left);
    if api.json {
        print_json(
            &serde_json::json!({ "drained": false, "left": views.len(), "messages": views }),
        );
    } else {
        print!("{}", table::list(&views, now()));
    }
    fail(&format!(
        "drain deadline ({deadline:?}) reached with {} messages left in the queue",
        views.len()
    ))
}
