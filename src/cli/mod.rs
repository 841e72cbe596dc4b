//! Subcommands: `run`, `check-config`, `hash-password`; the admin tools `queue ...` and
//! `reload` (queue.rs, over the admin API through api.rs), `probe upstream` (probe.rs) and
//! `healthcheck` (health.rs, the container's health check).

mod api;
mod health;
mod probe;
mod queue;
mod schema;
mod table;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app;
use crate::config;
use crate::telemetry;

/// What `postern --version` prints after the name: the version and the git commit it was
/// built from (`unknown` outside a git checkout), as `postern_build_info` labels them.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("POSTERN_GIT_COMMIT"),
    ")"
);

/// postern: an authenticated SMTP submission relay and smarthost proxy.
#[derive(Debug, Parser)]
#[command(version = VERSION, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "config/postern.yaml")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (0 when valid).
    CheckConfig {
        /// The configuration file.
        #[arg(long, short, default_value = "config/postern.yaml")]
        config: PathBuf,
    },
    /// Read a password from standard input and print its argon2id PHC hash for `users:`.
    HashPassword,
    /// Print the JSON Schema of the configuration file (draft 2020-12) to standard output.
    ///
    /// Editors use it to check and complete postern.yaml: config/postern.schema.json is this
    /// output, named in config/postern.yaml's `# yaml-language-server: $schema=` line. After
    /// changing the config types, regenerate it with
    /// `cargo run -- config-schema > config/postern.schema.json`.
    ConfigSchema,
    /// Queue administration through the admin API (`http.admin_token_file`).
    Queue {
        /// What to do.
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Reload the running relay's configuration (as SIGHUP does) and print the outcome.
    Reload {
        #[command(flatten)]
        api: queue::ApiArgs,
    },
    /// Connect to an upstream as delivery would and print each step; sends no mail.
    Probe {
        /// What to probe.
        #[command(subcommand)]
        target: probe::ProbeTarget,
    },
    /// Ask the running relay's /readyz (at the config's http.address, on loopback when it
    /// is a wildcard): exit 0 when it answers 200, 1 otherwise, printing one line. The
    /// container's HEALTHCHECK; needs no shell or other tools.
    Healthcheck(health::HealthArgs),
}

/// Parses the command line and runs the subcommand.
pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => run(config),
        Command::CheckConfig { config } => match config::load(&config) {
            Ok(_) => {
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("postern: {e}");
                ExitCode::FAILURE
            }
        },
        Command::HashPassword => hash_password(),
        Command::ConfigSchema => schema::run(),
        Command::Queue { command } => queue::run(command),
        Command::Reload { api } => queue::reload(&api),
        Command::Probe { target } => probe::run(target),
        Command::Healthcheck(args) => health::run(&args),
    }
}

fn run(path: PathBuf) -> ExitCode {
    let cfg = match config::load(&path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
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
            eprintln!("postern: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(&path, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("postern: {}: {e}", path.display());
            ExitCode::FAILURE
        }
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

fn hash_password() -> ExitCode {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let echo = if tty { disable_echo() } else { None };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = echo {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &saved,
        );
        eprintln!();
    }
    if let Err(e) = read {
        eprintln!("postern: cannot read the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("postern: empty password");
        return ExitCode::FAILURE;
    }
    match crate::users::hash_password(password) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postern: cannot hash: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Turns terminal echo off; returns the settings to restore.
fn disable_echo() -> Option<rustix::termios::Termios> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let saved = tcgetattr(std::io::stdin()).ok()?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(std::io::stdin(), OptionalActions::Now, &quiet).ok()?;
    Some(saved)
}
