//! `postern run`: loads the config, raises the open-files limit, and runs the relay on a
//! multi-threaded runtime; a failure to start is one line saying what to do.

use std::io::{ErrorKind, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::app::{self, AppError};
use crate::cli::{config_error, fail};
use crate::config;
use crate::telemetry;

/// Runs the relay from the config file at `path` until SIGTERM or SIGINT.
pub fn run(path: PathBuf) -> ExitCode {
    let cfg = match config::load(&path) {
        Ok(cfg) => cfg,
        Err(e) => return fail(config_error(&e)),
    };
    telemetry::log::init(&cfg.log);
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // argon2 runs and directory-upstream renames are the only blocking work; a small
        // pool bounds the threads (and their memory) however much load arrives.
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(format!(
                "cannot start the runtime: {e}; check the process limits (ulimit -u, \
                 TasksMax=)"
            ));
        }
    };
    match runtime.block_on(app::run(&path, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let todo = what_to_do(&e);
            // Where standard error is collected (journald, docker logs, a log shipper), the
            // failure is also a log line in log.format, with what to do, for the pipeline;
            // at a terminal the admin reads the `postern:` line alone, not the same error
            // twice.
            if !std::io::stderr().is_terminal() {
                tracing::error!(config = %path.display(), "cannot start: {e}; {todo}");
            }
            fail(format!("{}: {e}; {todo}", path.display()))
        }
    }
}

/// What to do about a relay that did not start.
fn what_to_do(e: &AppError) -> &'static str {
    match e {
        AppError::Bind { error, .. } | AppError::Http { error, .. } => match error.kind() {
            ErrorKind::AddrInUse => {
                "another process listens there: stop it (another postern, or an MTA), or \
                 change the address"
            }
            ErrorKind::PermissionDenied => {
                "ports below 1024 need CAP_NET_BIND_SERVICE (the shipped systemd unit grants \
                 it) or root; or use a port above 1023"
            }
            ErrorKind::AddrNotAvailable => {
                "no interface of this host has that address: use one it has, or 0.0.0.0"
            }
            _ => "check the address in the config file",
        },
        AppError::Spool(why) if why.contains("locked by another") => {
            "another postern runs on this spool: stop it, or give this one its own \
             queue.directory"
        }
        AppError::Spool(_) => {
            "check that queue.directory is on a writable file system and that the user postern \
             runs as owns it"
        }
        AppError::Tls(_) => {
            "check the certificate and key files the key names: readable by postern, PEM, and \
             the key matching the certificate"
        }
        AppError::AdminToken(why) if why.contains("No such file") => {
            "write a token of at least 16 characters there, or set \
             http.generate_admin_token: true to have postern write one"
        }
        AppError::AdminToken(why) if why.contains("at least") => {
            "write a token of at least 16 characters on its first line"
        }
        AppError::AdminToken(_) => {
            "make the file readable by the user postern runs as (or remove it and set \
             http.generate_admin_token: true)"
        }
        AppError::Upstream(_) => "fix the upstream's settings (postern check-config)",
        AppError::Redis(_) => "check redis.url and the files the redis keys name",
        AppError::Metrics(_) => "this is a bug in postern: please report it",
    }
}

/// Raises the soft open-files limit to the hard limit: each session is a descriptor, and
/// the usual soft default (1024) would cap a relay far below `limits.max_connections`.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
        }
    }
}
