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
use crate::cli::{fail, help, table};
use crate::clock::Clock;
use crate::config::units;
use crate::delivery::view::MessageView;
use crate::spool::{QueueId, inspect};

/// How often `queue drain` looks at the queue.
const DRAIN_POLL: Duration = Duration::from_secs(1);

/// Where the API is, and how to print.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The running relay's configuration file (YAML), for http.address, http.admin_token_file
    /// and queue.directory; a relative path is taken from the current directory.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = "config/postern.yaml"
    )]
    pub config: PathBuf,
    /// Read the admin token from FILE (its first line, at least 16 characters) instead of
    /// http.admin_token_file.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON (pretty-printed) instead of a table or a sentence.
    #[arg(long)]
    pub json: bool,
}

/// The queue tools.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List the queued messages, or with --failed the dead letters.
    ///
    /// Prints one row per message, oldest first: its id, age, state (queued, deferred,
    /// active, shaped, held, maybe_delivered, failed), attempts, next attempt, sender,
    /// pending and failed recipients, and why it waits or the last reply. When postern is
    /// not running (nothing answers at http.address, or the admin API is off), or with
    /// --offline, it reads the spool directory (queue.directory) itself, read-only: no lock,
    /// no file changed or removed; it says so on standard error, and its JSON has
    /// "offline": true.
    #[command(after_long_help = help::QUEUE_LIST)]
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// List the dead letters (the spool's failed/ directory) instead of the queue.
        #[arg(long)]
        failed: bool,
        /// Read the spool directory itself (read-only) even if postern runs.
        #[arg(long)]
        offline: bool,
    },
    /// Show one message, a field per line.
    ///
    /// Prints everything the queue knows of the message: state and why it waits, sender,
    /// size, each recipient's outcome (pending, delivered, failed with the reply), attempts,
    /// the next attempt, the last reply, transactions that may have been delivered (no
    /// reply to their final dot), and who held it. Needs the relay to run.
    #[command(after_long_help = help::QUEUE_SHOW)]
    Show {
        /// The message's queue id, as queue list prints it (e.g. 0C3V8NQ4E0G0P1A6).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make a message (or with --all every waiting one) due now; its attempt count is kept.
    ///
    /// A deferred or shaped message is tried at once instead of at its next retry time.
    /// A held message is not: release it instead (retry answers HTTP 409). Needs the relay
    /// to run.
    #[command(after_long_help = help::QUEUE_RETRY)]
    Retry {
        /// The message's queue id, as queue list prints it.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every waiting message instead of one.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Hold a message: it is not attempted until released (survives a restart).
    ///
    /// A held message does not expire at queue.max_age either: it waits for queue release,
    /// queue bounce or queue delete. A message being delivered right now cannot be held
    /// (HTTP 409): repeat a moment later. Needs the relay to run.
    #[command(after_long_help = help::QUEUE_HOLD)]
    Hold {
        /// The message's queue id, as queue list prints it.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Release a held message; it is tried at once.
    ///
    /// Released past queue.max_age, it gets one attempt, and expires if that one is
    /// deferred. Needs the relay to run.
    #[command(after_long_help = help::QUEUE_RELEASE)]
    Release {
        /// The message's queue id, as queue list prints it.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a message from the queue, undelivered.
    ///
    /// Removes the message and its state file from the spool, with no bounce to its sender;
    /// the relay logs it (an admin line) and counts it
    /// postern_messages_completed_total{result="deleted"}. Needs the relay to run.
    #[command(after_long_help = help::QUEUE_DELETE)]
    Delete {
        /// The message's queue id, as queue list prints it.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Fail a message's pending recipients: its sender gets a bounce, it goes to failed/.
    ///
    /// Every pending recipient fails with "554 5.0.0 bounced by the postern administrator
    /// (postern queue bounce); not delivered"; the message is kept in failed/, counted
    /// failed, and reported to its sender as bounces are. Needs the relay to run.
    #[command(after_long_help = help::QUEUE_BOUNCE)]
    Bounce {
        /// The message's queue id, as queue list prints it.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop taking mail, deliver everything queued; exit 0 once the queue is empty, 1 with
    /// what is left at the deadline.
    ///
    /// Asks the relay to drain: every listener answers a new connection "421 4.3.2 ...
    /// Service shutting down", /readyz fails, and every waiting message is made due at once;
    /// open sessions may finish. The command then polls the queue each second, makes every
    /// waiting message due again each --retry-every, and exits as soon as the queue is empty
    /// or the deadline passes. The relay stays draining until it is stopped (the usual next
    /// step) or queue drain --resume is run. Held messages are not released: they are what
    /// is left. Needs the relay to run.
    #[command(after_long_help = help::QUEUE_DRAIN)]
    Drain {
        /// How long to wait for the queue to empty; a duration (500ms, 30s, 10m, 2h, 1d).
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        deadline: units::Duration,
        /// How often to make every waiting message due again while waiting; a duration.
        #[arg(long, value_name = "DURATION", default_value = "30s")]
        retry_every: units::Duration,
        /// End a drain instead: the listeners accept connections again and /readyz passes.
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove dead letters from failed/: one, or all of them.
    ///
    /// Through the admin API when the relay runs; when it does not, empties the spool's
    /// failed/ directory itself.
    #[command(after_long_help = help::QUEUE_PURGE_FAILED)]
    PurgeFailed {
        /// The dead letter's queue id; every dead letter when absent.
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

    /// The queue id the command names, if any.
    fn id(&self) -> Option<&str> {
        match self {
            QueueCommand::Show { id, .. }
            | QueueCommand::Hold { id, .. }
            | QueueCommand::Release { id, .. }
            | QueueCommand::Delete { id, .. }
            | QueueCommand::Bounce { id, .. } => Some(id),
            QueueCommand::Retry { id, .. } | QueueCommand::PurgeFailed { id, .. } => id.as_deref(),
            QueueCommand::List { .. } | QueueCommand::Drain { .. } => None,
        }
    }
}

/// Runs a queue command.
pub fn run(cmd: QueueCommand) -> ExitCode {
    // An id goes into the request's path: one that is not an id (a space, a slash) is
    // refused here, not sent as another path or reported as a failing API.
    if let Some(id) = cmd.id().filter(|id| id.parse::<QueueId>().is_err()) {
        return fail(format!(
            "not a queue id: {id:?}; pass a queue id as postern queue list prints it"
        ));
    }
    let api = cmd.api().clone();
    let (client, rt) = match connect(&api) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(dispatch(&client, &api, cmd))
}

/// The API client of `api`'s config and a runtime to call it on.
fn connect(api: &ApiArgs) -> Result<(Client, tokio::runtime::Runtime), ExitCode> {
    let client = Client::new(&api.config, api.token_file.as_deref()).map_err(fail)?;
    let rt = crate::cli::runtime().map_err(fail)?;
    Ok((client, rt))
}

/// Runs `postern reload`.
pub fn reload(api: &ApiArgs) -> ExitCode {
    let (client, rt) = match connect(api) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(sentence(&client, api, "POST", "/api/v1/reload", |b| {
        let summary = b.get("summary").and_then(Value::as_str).unwrap_or("");
        format!("configuration reloaded: {summary}")
    }))
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
            sentence(client, api, "POST", "/api/v1/queue/retry", |b| {
                format!("{} messages due now", count(b, "retried"))
            })
            .await
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
            true => {
                sentence(client, api, "DELETE", "/api/v1/drain", |_| {
                    "drain ended: accepting connections".into()
                })
                .await
            }
            false => drain(client, api, deadline.0, retry_every.0).await,
        },
        QueueCommand::PurgeFailed { id, .. } => purge(client, api, id).await,
    }
}

fn print_json(v: &Value) {
    say!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
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
            Err(fail(format!(
                "HTTP {status}: {why}{}",
                what_to_do(status, why)
            )))
        }
        Err(e) => Err(fail(e)),
    }
}

/// What to do about an API error answer (with `status` and error text `why`), as a
/// `; ...` suffix; empty when the API's own text already says it.
fn what_to_do(status: u16, why: &str) -> &'static str {
    match status {
        400 => "; pass a queue id as postern queue list prints it",
        401 => {
            "; the token does not match the running relay's: it re-reads \
             http.admin_token_file at reload, so reload after changing the file"
        }
        404 if why.contains("admin API is off") => "; then restart postern (http needs a restart)",
        404 if why.contains("failed directory") => "; postern queue list --failed shows them",
        404 => "; postern queue list shows the queued ids",
        422 => "; fix the file (postern check-config shows the same error) and reload again",
        500 => "; nothing changed: look at the relay's log (disk space, spool permissions)",
        503 => "; postern is shutting down: try again once it runs",
        _ => "",
    }
}

/// Prints the body (`--json`) or `human(body)`; success.
fn done(api: &ApiArgs, body: &Value, human: impl Fn(&Value) -> String) -> ExitCode {
    if api.json {
        print_json(body);
    } else {
        say!("{}", human(body));
    }
    ExitCode::SUCCESS
}

/// A command answered with a sentence: `method path`, then the body (`--json`) or
/// `human(body)` printed.
async fn sentence(
    client: &Client,
    api: &ApiArgs,
    method: &str,
    path: &str,
    human: impl Fn(&Value) -> String,
) -> ExitCode {
    match expect_ok(client.call(method, path).await, api.json) {
        Ok(body) => done(api, &body, human),
        Err(code) => code,
    }
}

/// Seconds since the Unix epoch, for the ages and next attempts printed.
fn now() -> u64 {
    Clock::new().unix()
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
            say_raw!("{}", table::show(&v, now()));
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!(
            "unexpected answer from the admin API: {e}; is this postern the same version as the \
             running relay?"
        )),
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
            Err(ApiError::NotRunning(addr)) => eprintln!(
                "postern: postern is not running (nothing answers at http://{addr}); \
                 reading the spool directory {} read-only",
                client.spool.display()
            ),
            Err(e @ ApiError::Setup(_)) => eprintln!(
                "postern: {e}; meanwhile reading the spool directory {} read-only",
                client.spool.display()
            ),
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
        Err(e) => return fail(format!("{e}; check queue.directory in the config file")),
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
    say_raw!("{}", table::list(&views, now()));
    if let Some(bad) = body.get("unreadable").and_then(Value::as_array) {
        for b in bad {
            let id = b.get("id").and_then(Value::as_str).unwrap_or("?");
            let why = b.get("error").and_then(Value::as_str).unwrap_or("?");
            super::warn(format!(
                "message file {id} cannot be read ({why}); it is left as it is in the spool"
            ));
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
                Err(e) => {
                    return fail(format!(
                        "{e}; pass a queue id as postern queue list --failed prints it"
                    ));
                }
            };
            match inspect::purge_failed(&client.spool, qid.as_ref()) {
                Ok(0) if let Some(id) = qid => {
                    return fail(format!(
                        "no message {id} in the failed directory {}; postern queue list \
                         --failed shows them",
                        client.spool.join("failed").display()
                    ));
                }
                Ok(n) => Ok((200, serde_json::json!({ "purged": n }))),
                Err(e) => {
                    return fail(format!(
                        "{e}; run as a user who may write the spool directory (the postern user)"
                    ));
                }
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
        say!("draining: new connections are refused with 421 4.3.2; waiting up to {deadline:?}");
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
        say_raw!("{}", table::list(&views, now()));
    }
    fail(format!(
        "drain deadline ({deadline:?}) reached with {} messages left in the queue; the relay \
         is still draining: run it again with a longer --deadline, or stop postern (queued \
         mail stays in the spool), or postern queue drain --resume",
        views.len()
    ))
}
