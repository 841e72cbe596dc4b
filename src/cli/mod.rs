//! Subcommands: `run`, `check-config`, `hash-password`; the admin tools `queue ...` and
//! `reload` (queue.rs, over the admin API through api.rs), `probe upstream` (probe.rs),
//! `healthcheck` (health.rs, the container's health check), `config-schema` (schema.rs);
//! `completions` and `man` (man.rs), generated from this very definition.
//!
//! Every failure is one line on standard error, `postern: what is wrong; what to do`
//! ([`fail`]); clap's own usage errors (exit 2) are the one multi-line exception.

/// `println!` for what a subcommand prints on standard output (see [`write_out`]).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` likewise.
macro_rules! say_raw {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

mod api;
mod health;
mod help;
mod man;
mod probe;
mod queue;
mod schema;
mod serve;
mod table;

use std::fmt::Display;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, error::ConfigError};

/// What `postern --version` prints after the name: the version and the git commit it was
/// built from (`unknown` outside a git checkout), as `postern_build_info` labels them.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("POSTERN_GIT_COMMIT"),
    ")"
);

/// An authenticated SMTP submission relay and smarthost proxy.
///
/// postern takes mail from applications, devices and people over SMTP submission
/// (STARTTLS or implicit TLS, AUTH), checks who may send as whom, queues it durably and
/// relays it to upstream smarthosts (Microsoft 365, Google, any SMTP server). postern run
/// runs the relay; the other subcommands check a configuration, hash passwords, administer
/// a running relay through its admin API, and write shell completions and these manual
/// pages. Each subcommand's --help says what it needs.
#[derive(Debug, Parser)]
#[command(name = "postern", version = VERSION, after_long_help = help::POSTERN)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    ///
    /// Reads and validates the configuration file exactly as check-config does (an invalid
    /// one never starts), opens the spool directory (queue.directory), binds every listener
    /// and the HTTP endpoint (http.address), and relays until SIGTERM or SIGINT. Those stop
    /// accepting connections, let open sessions finish for shutdown_grace, close the rest
    /// with 421 4.3.2 and exit 0; queued mail stays in the spool for the next start. SIGHUP
    /// reloads the configuration (as postern reload does). Logs go to standard error, one
    /// JSON object per line (log.format).
    #[command(after_long_help = help::RUN)]
    Run {
        /// The configuration file (YAML); a relative path is taken from the current
        /// directory, and relative paths in the file from the file's own directory.
        #[arg(
            long,
            short,
            value_name = "FILE",
            default_value = "config/postern.yaml"
        )]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (0 when valid).
    ///
    /// Reads, parses and validates the file exactly as run and a reload do, without binding
    /// anything or touching the spool, and prints "FILE: OK". An invalid file gets one line
    /// naming the file, the key path and the problem, e.g. postern.yaml:
    /// routes[0].upstreams[1]: unknown upstream "backup". Run it before a reload or a
    /// restart.
    #[command(after_long_help = help::CHECK_CONFIG)]
    CheckConfig {
        /// The configuration file (YAML); a relative path is taken from the current directory.
        #[arg(
            long,
            short,
            value_name = "FILE",
            default_value = "config/postern.yaml"
        )]
        config: PathBuf,
    },
    /// Read a password from standard input and print its argon2id PHC hash for users[].
    ///
    /// On a terminal it asks for the password without echoing it; otherwise it reads the
    /// first line of standard input (the line end is not part of the password). The hash
    /// goes to standard output, to paste into users[].password_hash; the password itself is
    /// never printed or logged.
    #[command(after_long_help = help::HASH_PASSWORD)]
    HashPassword,
    /// Print the JSON Schema of the configuration file (draft 2020-12) to standard output.
    ///
    /// Editors use it to check and complete postern.yaml: config/postern.schema.json is this
    /// output, named in config/postern.yaml's "# yaml-language-server: $schema=" line. It
    /// checks the shape of the file (keys, types, values); only check-config checks what
    /// needs the files the config names. Reads nothing; the relay need not run.
    #[command(after_long_help = help::CONFIG_SCHEMA)]
    ConfigSchema,
    /// Queue administration through the admin API (http.admin_token_file).
    ///
    /// The queue tools are clients of the admin API under /api/v1/ on the http: endpoint.
    /// They read http.address and the token file, http.admin_token_file, from the
    /// configuration file (--config; a wildcard address is reached on loopback), so they
    /// need a user who may read both, and the relay to run: except queue list and queue
    /// purge-failed, which read or empty the spool directory (queue.directory) themselves
    /// when it does not. They print an aligned table or a sentence, or with --json the
    /// API's JSON.
    #[command(after_long_help = help::QUEUE)]
    Queue {
        /// What to do.
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Reload the running relay's configuration (as SIGHUP does) and print the outcome.
    ///
    /// Asks the running relay through the admin API (POST /api/v1/reload; needs
    /// http.address and http.admin_token_file) to read its configuration file again and
    /// validate it as a start does. A valid file is swapped in at once and a summary of what
    /// changed is printed; keys that need a restart keep their running value and are named
    /// in the log. A broken file changes nothing: the error names the file, the key and the
    /// problem, and the running configuration stays.
    #[command(after_long_help = help::RELOAD)]
    Reload {
        #[command(flatten)]
        api: queue::ApiArgs,
    },
    /// Connect to an upstream as delivery would and print each step; sends no mail.
    ///
    /// The first thing to run when a smarthost refuses the relay: it shows the TLS
    /// certificate, the extensions and the AUTH result the upstream gives postern.
    #[command(after_long_help = help::PROBE)]
    Probe {
        /// What to probe.
        #[command(subcommand)]
        target: probe::ProbeTarget,
    },
    /// Ask the running relay's /readyz: exit 0 when it is ready, 1 when not.
    ///
    /// Asks GET /readyz at the config's http.address (a wildcard, 0.0.0.0 or [::], is asked
    /// on loopback: [::] on [::1], then on 127.0.0.1), or at --url, within --timeout, and
    /// prints one line: the answer on standard output when it is 200, else why on standard
    /// error. Needs the relay to run with http.address set; needs no admin token. It is the
    /// container image's HEALTHCHECK, so it needs no shell or other tools.
    #[command(after_long_help = help::HEALTHCHECK)]
    Healthcheck(health::HealthArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    ///
    /// The script completes subcommands, options and their values. Install it where the
    /// shell looks for completions (see the examples), or try it in the running shell:
    /// source <(postern completions bash).
    #[command(after_long_help = help::COMPLETIONS)]
    Completions {
        /// The shell to write the script for.
        shell: clap_complete::Shell,
    },
    /// Print the postern(1) manual page, or write every page into a directory.
    ///
    /// Without --dir, prints postern(1) in roff on standard output. With --dir, writes
    /// postern.1 and one page per subcommand (postern-queue-drain.1 and so on, as git does)
    /// into the directory, creating it if needed, and prints each path written.
    #[command(after_long_help = help::MAN)]
    Man {
        /// Write every page into DIR (e.g. /usr/local/share/man/man1) instead of printing
        /// postern(1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The whole command line definition: what `--help`, the completions and the man pages are
/// made from.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the command line and runs the subcommand.
pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => serve::run(config),
        Command::CheckConfig { config } => match config::load(&config) {
            Ok(_) => {
                say!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(config_error(&e)),
        },
        Command::HashPassword => hash_password(),
        Command::ConfigSchema => schema::run(),
        Command::Queue { command } => queue::run(command),
        Command::Reload { api } => queue::reload(&api),
        Command::Probe { target } => probe::run(target),
        Command::Healthcheck(args) => health::run(&args),
        Command::Completions { shell } => man::completions(shell),
        Command::Man { dir } => man::run(dir.as_deref()),
    }
}

/// Writes `args` to standard output; see [`stdout_failed`] for when that fails.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        stdout_failed(&e);
    }
}

/// Writes `bytes` to standard output; see [`stdout_failed`] for when that fails.
pub(crate) fn write_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        stdout_failed(&e);
    }
}

/// Ends the process after a failed write to standard output. A reader that went away
/// (`postern queue list | head -1`) ends it quietly with status 141, as the SIGPIPE that
/// kills other tools there would (Rust ignores SIGPIPE, so `println!` would panic instead);
/// any other error (a full disk under `> file`) is one line and status 1.
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(128 + 13);
    }
    warn(format!(
        "cannot write to standard output: {e}; redirect it to a file or device that takes it"
    ));
    std::process::exit(1);
}

/// The single-threaded runtime a client subcommand (the queue tools, probe, healthcheck)
/// runs its requests on.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Prints `message` as one line, `postern: message`, on standard error; exit code 1.
pub(crate) fn fail(message: impl Display) -> ExitCode {
    warn(message);
    ExitCode::FAILURE
}

/// Prints `message` as one line, `postern: message`, on standard error.
pub(crate) fn warn(message: impl Display) {
    eprintln!("postern: {}", one_line(&message.to_string()));
}

/// `text` on one line: each line break (and the blanks around it) becomes one space, so an
/// error text that carries a server's multi-line answer still prints as a single line.
pub fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A config error as printed: file, key and problem as the config module wrote them, and,
/// when the file itself could not be read, what to do.
pub(crate) fn config_error(e: &ConfigError) -> String {
    if e.key != config::error::FILE_KEY {
        return e.to_string();
    }
    let todo = if e.problem.ends_with("does not exist") {
        "pass --config with the path of the configuration file (the default, \
         config/postern.yaml, is relative to the current directory)"
    } else if e.problem.ends_with("permission denied") {
        "run as a user who can read it (root, or the postern user)"
    } else {
        "pass --config with the path of a readable configuration file"
    };
    format!("{e}; {todo}")
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
        return fail(format!(
            "cannot read the password from standard input: {e}; type it, or pipe it in as one line"
        ));
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return fail(
            "empty password: type the password (or pipe it in as one line) and press Enter",
        );
    }
    match crate::users::hash_password(password) {
        Ok(phc) => {
            say!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot hash the password: {e}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_every_kind_of_line_break() {
        let table = [
            ("plain", "plain"),
            ("a\nb", "a b"),
            ("a \r\n  b\r\nc", "a b c"),
            ("trailing\n", "trailing"),
            (
                "AADSTS7000215: Invalid secret.\r\nTrace ID: x\r\n",
                "AADSTS7000215: Invalid secret. Trace ID: x",
            ),
            ("a\rb", "a b"),
        ];
        for (text, want) in table {
            assert_eq!(one_line(text), want, "{text:?}");
        }
    }

    #[test]
    fn a_config_file_that_cannot_be_read_says_what_to_do() {
        let missing = ConfigError::new(
            "nope.yaml",
            config::error::FILE_KEY,
            "cannot read the config file: does not exist",
        );
        assert_eq!(
            config_error(&missing),
            "nope.yaml: (file): cannot read the config file: does not exist; pass --config \
             with the path of the configuration file (the default, config/postern.yaml, is \
             relative to the current directory)"
        );
        let denied = ConfigError::new(
            "/etc/postern/postern.yaml",
            config::error::FILE_KEY,
            "cannot read the config file: permission denied",
        );
        assert!(
            config_error(&denied)
                .ends_with("; run as a user who can read it (root, or the postern user)")
        );
        // Any other config error is printed as the config module wrote it.
        let other = ConfigError::new("p.yaml", "limits.max_recipients", "must be at least 1");
        assert_eq!(
            config_error(&other),
            "p.yaml: limits.max_recipients: must be at least 1"
        );
    }
}
