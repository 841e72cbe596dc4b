//! `postern probe upstream NAME`: connects to a configured upstream with its TLS and AUTH
//! settings through the delivery client itself (with a step observer), prints each command
//! and reply, says QUIT and sends no mail. The first thing to run when a smarthost refuses
//! the relay. Exit 0 when the session set-up succeeds; 1 with a one-line reason otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

use crate::cli::help;
use crate::config;
use crate::smtp::reply_parser::UpstreamReply;
use crate::upstream::Upstreams;
use crate::upstream::client::Client;
use crate::upstream::error::{Error, Stage};
use crate::upstream::probe::{StepObserver, TlsInfo};

/// What `probe` connects to.
#[derive(Debug, Subcommand)]
pub enum ProbeTarget {
    /// Probe an upstream of the configuration, by name: connect, TLS, EHLO, AUTH, QUIT.
    ///
    /// Connects to the named upstream exactly as delivery does (the same client, TLS and
    /// AUTH settings) and prints each step with its reply: for an OAuth2 upstream first the
    /// token (the endpoint it came from and how long it is valid; never the token itself),
    /// then the connection, the greeting, EHLO and its extensions, STARTTLS, the TLS
    /// version, cipher, certificate subject and expiry, EHLO again, the AUTH mechanism and
    /// its result (credentials shown as <redacted>), then QUIT. It sends no MAIL. It reads
    /// only the configuration file (and the files it names); the relay need not run.
    #[command(after_long_help = help::PROBE)]
    Upstream {
        /// The upstream's name (upstreams[].name in the configuration file).
        name: String,
        /// The configuration file (YAML); a relative path is taken from the current directory.
        #[arg(
            long,
            short,
            value_name = "FILE",
            default_value = "config/postern.yaml"
        )]
        config: PathBuf,
    },
}

/// Prints each step as it happens, one line each.
#[derive(Debug)]
struct Printer;

/// The step's name as printed; QUIT is sent under the RSET stage.
fn label(stage: Stage) -> &'static str {
    match stage {
        Stage::Rset => "quit",
        other => other.as_str(),
    }
}

impl StepObserver for Printer {
    fn token(&self, token_url: &str, expires_in: std::time::Duration) {
        say!(
            "{:<10} OAuth2 access token from {token_url}, valid for {} s",
            "token",
            expires_in.as_secs()
        );
    }

    fn connected(&self, peer: SocketAddr) {
        say!("{:<10} connected to {peer}", "connect");
    }

    fn sent(&self, stage: Stage, line: &str) {
        say!("{:<10} C: {line}", label(stage));
    }

    fn reply(&self, stage: Stage, reply: &UpstreamReply) {
        let last = reply.lines.len().saturating_sub(1);
        for (i, text) in reply.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let enhanced = match (i, reply.enhanced) {
                (0, Some((c, s, d))) => format!("{c}.{s}.{d} "),
                _ => String::new(),
            };
            say!(
                "{:<10} S: {}{sep}{enhanced}{text}",
                label(stage),
                reply.code
            );
        }
    }

    fn tls(&self, info: &TlsInfo) {
        let unknown = || "(unreadable)".to_owned();
        say!(
            "{:<10} {} {}; certificate subject: {}; expires: {}",
            "tls",
            info.version,
            info.cipher,
            info.subject.clone().unwrap_or_else(unknown),
            info.not_after.clone().unwrap_or_else(unknown),
        );
    }
}

/// Runs the probe.
pub fn run(target: ProbeTarget) -> ExitCode {
    let ProbeTarget::Upstream { name, config } = target;
    match probe(&name, &config) {
        Ok(()) => {
            say!("probe OK: upstream {name} took the session set-up; no mail was sent");
            ExitCode::SUCCESS
        }
        Err(why) => super::fail(format!("probe upstream {name}: {why}")),
    }
}

fn probe(name: &str, file: &std::path::Path) -> Result<(), String> {
    let cfg = config::load(file).map_err(|e| super::config_error(&e))?;
    let Some(upstream) = cfg.upstreams.iter().find(|u| u.name == name) else {
        let names: Vec<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
        return Err(format!(
            "no such upstream in {}; pass one of the configured names: {}",
            file.display(),
            names.join(", ")
        ));
    };
    if upstream.directory.is_some() {
        return Err(
            "a directory upstream: there is no server to probe; probe an SMTP upstream instead"
                .to_owned(),
        );
    }
    let upstreams = Upstreams::new(&cfg)
        .map_err(|e| format!("{e}; fix the upstream's settings (postern check-config)"))?;
    let settings = upstreams
        .pool(name)
        .map(|p| p.settings().clone())
        .ok_or_else(|| "not an SMTP upstream".to_owned())?;
    let rt = super::runtime()?;
    say!(
        "{:<10} {}:{} (tls: {}, auth: {})",
        "upstream",
        settings.host,
        settings.port,
        format!("{:?}", upstream.tls.unwrap_or_default()).to_lowercase(),
        match &settings.credentials {
            Some(c) => format!("as {}", c.username),
            None => "none".to_owned(),
        }
    );
    rt.block_on(async {
        let client = Client::probe(&settings, Arc::new(Printer))
            .await
            .map_err(|e| format!("{e}{}", what_to_do(&e)))?;
        client.quit().await;
        Ok(())
    })
}

/// What to check after a failed set-up step, as a `; ...` suffix (empty when the error's
/// own text already carries a hint, as Microsoft 365's refusals do).
fn what_to_do(e: &Error) -> &'static str {
    let text = e.to_string();
    if text.contains("(hint: ") {
        return "";
    }
    match e {
        Error::Connect { .. } => {
            "; check upstreams[].address, its DNS name, and the firewall between here and the \
             upstream"
        }
        Error::Tls { .. } => {
            "; check upstreams[].tls (starttls or implicit, to match the port), ca_file and \
             server_name against the upstream's certificate"
        }
        Error::Timeout { .. } => {
            "; the upstream did not answer in time: check the network path, or raise \
             upstreams[].connect_timeout or command_timeout"
        }
        Error::Auth { .. } => "; check upstreams[].auth.username and its password or oauth2 keys",
        Error::Token { .. } => {
            "; check upstreams[].auth.oauth2 (client id, secret or certificate, tenant) and the \
             application's registration at the provider"
        }
        Error::NoStartTls { .. } => {
            "; use tls: implicit on the upstream's implicit-TLS port (465), or ask its operator \
             to offer STARTTLS (postern never falls back to plain text)"
        }
        Error::Protocol { .. } | Error::Reply { .. } => {
            "; check that upstreams[].address is an SMTP submission port with this tls mode, \
             and that the upstream accepts this relay (its address, helo_name)"
        }
        _ => "; check the upstream's settings and the network path to it",
    }
}
