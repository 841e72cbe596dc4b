//! Every failure the admin meets at the command line is one line on standard error,
//! `postern: what is wrong; what to do`, with exit code 1: the admin API not reachable, the
//! token file missing, a config file missing (for each subcommand that reads one), a port
//! already taken at `run`, an HTTP error answer from a real relay, a probe of an unknown
//! upstream, an empty password. clap's usage errors (exit 2) are multi-line by design (the
//! usage and a pointer to --help) and are not checked here.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::binary::{BIN, exit_within};
use crate::harness::sink::reserve_port;
use crate::harness::{Opts, TestServer};

/// The one line a failed run printed; asserts exit code 1 and that it is the only line.
fn one_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr:?}");
    assert!(
        stderr.ends_with('\n') && stderr.lines().count() == 1,
        "not one line: {stderr:?}"
    );
    assert!(stderr.starts_with("postern: "), "{stderr:?}");
    stderr.trim_end().to_owned()
}

/// A valid config in `dir`: a plain listener on `smtp`, the HTTP endpoint on `http` with
/// the admin API (its token in `admin.token`, not written here), JSON logs.
fn config(dir: &Path, smtp: u16, http: u16) -> PathBuf {
    let yaml = format!(
        r#"hostname: relay.test
listeners:
  - {{name: plain, address: "127.0.0.1:{smtp}", tls: none, auth: none, allow_networks: [127.0.0.0/8]}}
networks:
  - {{network: 127.0.0.0/8, senders: ["*"]}}
queue: {{directory: spool}}
upstreams:
  - {{name: local, directory: mail}}
routes:
  - {{senders: ["*"], upstreams: [local]}}
http: {{address: "127.0.0.1:{http}", admin_token_file: admin.token}}
log: {{format: json}}
"#
    );
    let path = dir.join("postern.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn postern(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn admin_api_not_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let http = reserve_port();
    let cfg = config(dir.path(), reserve_port(), http);
    std::fs::write(dir.path().join("admin.token"), "0123456789abcdef0123\n").unwrap();
    let want = format!(
        "postern: cannot reach the admin API at http://127.0.0.1:{http}: connection refused; \
         is postern running, and is http.address in the config file the address it listens on?"
    );
    for args in [
        &["queue", "show", "0C3V8NQ4E0G0P1A6"][..],
        &["queue", "retry", "--all"],
        &["queue", "drain"],
        &["reload"],
    ] {
        assert_eq!(one_line(&postern(args, &cfg)), want, "{args:?}");
    }
}

#[test]
fn admin_token_file_missing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), reserve_port(), reserve_port());
    let token = dir.path().join("admin.token");
    let line = one_line(&postern(&["queue", "hold", "0C3V8NQ4E0G0P1A6"], &cfg));
    assert_eq!(
        line,
        format!(
            "postern: admin token file {} (http.admin_token_file): does not exist; start \
             postern once with http.generate_admin_token: true to write it, or pass --token-file",
            token.display()
        )
    );
    let other = dir.path().join("elsewhere.token");
    let out = postern(&["reload", "--token-file", other.to_str().unwrap()], &cfg);
    assert_eq!(
        one_line(&out),
        format!(
            "postern: admin token file {} (--token-file): does not exist; pass --token-file \
             with the path of the admin token file",
            other.display()
        )
    );
}

#[test]
fn config_file_missing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let want = format!(
        "{}: (file): cannot read the config file: does not exist; pass --config with the \
         path of the configuration file (the default, config/postern.yaml, is relative to \
         the current directory)",
        missing.display()
    );
    for (args, prefix) in [
        (&["run"][..], "postern: "),
        (&["check-config"], "postern: "),
        (&["queue", "show", "0C3V8NQ4E0G0P1A6"], "postern: "),
        (&["reload"], "postern: "),
        (
            &["probe", "upstream", "local"],
            "postern: probe upstream local: ",
        ),
    ] {
        let line = one_line(&postern(args, &missing));
        assert_eq!(line, format!("{prefix}{want}"), "{args:?}");
    }
}

/// Runs `postern run --config cfg` (bounded: start-up failures come at once); its exit
/// status and standard error.
fn run_failing(cfg: &Path) -> (std::process::ExitStatus, String) {
    let mut run = Command::new(BIN);
    run.args(["run", "--config"]).arg(cfg);
    run_failing_as(run, cfg)
}

/// As [`run_failing`], for the command `run` (which runs postern on `cfg`), its standard
/// error captured (and its standard output dropped).
fn run_failing_as(mut run: Command, cfg: &Path) -> (std::process::ExitStatus, String) {
    let mut child = run
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = exit_within(&mut child, Duration::from_secs(10)) else {
        panic!("postern run kept running with {}", cfg.display());
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// The last line of a failed `run`'s standard error; every line before it is a JSON log
/// line (the log goes to standard error too).
fn last_line_after_logs(status: std::process::ExitStatus, stderr: &str) -> String {
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let (last, logs) = lines.split_last().unwrap();
    for l in logs {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v.is_object(), "{l}");
    }
    assert!(last.starts_with("postern: "), "{last}");
    (*last).to_owned()
}

/// `run` with its listener's port taken.
#[test]
fn run_with_a_port_already_taken() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = config(dir.path(), port, reserve_port());
    std::fs::write(dir.path().join("admin.token"), "0123456789abcdef0123\n").unwrap();
    let (status, stderr) = run_failing(&cfg);
    let last = last_line_after_logs(status, &stderr);
    let want = format!(
        "postern: {}: listener \"plain\": cannot listen on 127.0.0.1:{port}: ",
        cfg.display()
    );
    assert!(last.starts_with(&want), "{last}");
    // The log pipeline gets the failure too, as an ERROR line with what to do.
    let logged: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["level"] == "ERROR")
        .collect();
    assert_eq!(logged.len(), 1, "{stderr}");
    let message = logged[0]["fields"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("cannot start: listener \"plain\": cannot listen on")
            && message.ends_with("or change the address"),
        "{message}"
    );
    assert!(
        last.ends_with(
            "; another process listens there: stop it (another postern, or an MTA), or change \
             the address"
        ),
        "{last}"
    );
    drop(taken);
}

/// At a terminal, a failed `run` prints its error once, as the `postern:` line (elsewhere
/// the log line carries it too, for the log pipeline: run_with_a_port_already_taken).
#[test]
fn run_failing_at_a_terminal_prints_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = config(dir.path(), port, reserve_port());
    std::fs::write(dir.path().join("admin.token"), "0123456789abcdef0123\n").unwrap();
    // script(1) runs the command on a pseudo-terminal and copies what it writes there to
    // its own standard output, which is captured here through a shell redirection.
    let mut script = Command::new("sh");
    script.arg("-c").arg(format!(
        "script -qec \"{BIN} run --config {}\" /dev/null >&2",
        cfg.display()
    ));
    let (status, shown) = run_failing_as(script, &cfg);
    assert!(
        !shown.contains("not found"),
        "script(1) is missing: install the bsdutils package ({shown})"
    );
    let lines: Vec<&str> = shown
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(status.code(), Some(1), "{shown}");
    let about: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("cannot listen on"))
        .collect();
    assert_eq!(about.len(), 1, "the error more than once: {lines:#?}");
    assert!(about[0].starts_with("postern: "), "{lines:#?}");
    drop(taken);
}

/// `run` with the admin token file named but absent (and not to be generated).
#[test]
fn run_without_its_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), reserve_port(), reserve_port());
    let (status, stderr) = run_failing(&cfg);
    let last = last_line_after_logs(status, &stderr);
    assert!(
        last.starts_with(&format!(
            "postern: {}: http.admin_token_file: ",
            cfg.display()
        )),
        "{last}"
    );
    assert!(
        last.ends_with(
            "; write a token of at least 16 characters there, or set \
             http.generate_admin_token: true to have postern write one"
        ),
        "{last}"
    );
}

/// An error answer from a real relay's admin API keeps its status and text and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_error_answers_say_what_to_do() {
    let server = TestServer::start(Opts::default()).await;
    let out = server.cli(&["queue", "show", "0C3V8NQ4E0G0P1A6"]).await;
    assert_eq!(
        one_line(&out),
        "postern: HTTP 404: no message 0C3V8NQ4E0G0P1A6 in the queue; postern queue list \
         shows the queued ids"
    );
    let out = server
        .cli(&["queue", "purge-failed", "0C3V8NQ4E0G0P1A6"])
        .await;
    assert_eq!(
        one_line(&out),
        "postern: HTTP 404: no message 0C3V8NQ4E0G0P1A6 in the failed directory; postern \
         queue list --failed shows them"
    );
}

#[test]
fn probe_of_an_unknown_upstream_names_the_configured_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), reserve_port(), reserve_port());
    let line = one_line(&postern(&["probe", "upstream", "m365"], &cfg));
    assert_eq!(
        line,
        format!(
            "postern: probe upstream m365: no such upstream in {}; pass one of the configured \
             names: local",
            cfg.display()
        )
    );
}

#[test]
fn hash_password_of_nothing() {
    let out = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        one_line(&out),
        "postern: empty password: type the password (or pipe it in as one line) and press Enter"
    );
}

/// A config whose `http.address` is the wildcard `[::]` reaches the admin API on loopback as
/// `postern healthcheck` does: `[::1]` first, then 127.0.0.1 when nothing answers there (a
/// relay that listens on IPv4 only, as in a container without IPv6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_v6_address_is_asked_on_ipv4_loopback_too() {
    let server = TestServer::start(Opts::default()).await;
    let cli = server.cli_config();
    let yaml = std::fs::read_to_string(&cli).unwrap();
    let port = server.http.port();
    let wild = yaml.replace(
        &format!(r#"address: "127.0.0.1:{port}""#),
        &format!(r#"address: "[::]:{port}""#),
    );
    assert_ne!(yaml, wild, "no http address to change");
    let path = cli.with_file_name("wild.yaml");
    std::fs::write(&path, wild).unwrap();
    let out = crate::harness::admin::run_cli(&["queue", "show", "0C3V8NQ4E0G0P1A6"], path).await;
    assert_eq!(
        one_line(&out),
        "postern: HTTP 404: no message 0C3V8NQ4E0G0P1A6 in the queue; postern queue list \
         shows the queued ids"
    );
}

/// `queue purge-failed ID` with the relay stopped (it empties failed/ itself) fails as the API
/// does when there is no such dead letter, instead of "0 dead letters purged" and exit 0.
#[test]
fn purge_of_an_absent_dead_letter_with_the_relay_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), reserve_port(), reserve_port());
    std::fs::write(dir.path().join("admin.token"), "0123456789abcdef0123\n").unwrap();
    std::fs::create_dir_all(dir.path().join("spool/failed")).unwrap();
    let out = postern(&["queue", "purge-failed", "0C3V8NQ4E0G0P1A6"], &cfg);
    assert_eq!(
        one_line(&out),
        format!(
            "postern: no message 0C3V8NQ4E0G0P1A6 in the failed directory {}; postern queue \
             list --failed shows them",
            dir.path().join("spool/failed").display()
        )
    );
    // All of them, when there are none, is no error.
    let out = postern(&["queue", "purge-failed"], &cfg);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0 dead letters purged\n"
    );
}

/// `postern man` refuses a bad SOURCE_DATE_EPOCH (instead of dating the pages today, which
/// breaks a reproducible build silently) and a --dir that is a file, each in one line.
#[test]
fn man_with_a_bad_date_or_a_file_for_its_directory() {
    let out = Command::new(BIN)
        .arg("man")
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert_eq!(
        one_line(&out),
        "postern: SOURCE_DATE_EPOCH=yesterday: not a number of seconds since 1970-01-01 UTC; \
         set it to one (e.g. $(git log -1 --format=%ct)) or unset it for today's date"
    );
    assert!(out.stdout.is_empty());
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(file.path())
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert_eq!(
        one_line(&out),
        format!(
            "postern: {} is not a directory; pass --dir with the directory to write the pages \
             into (e.g. /usr/local/share/man/man1)",
            file.path().display()
        )
    );
}

/// A queue id that could not be one (a space, a slash, `..`) is refused before any request,
/// in one line saying what an id looks like; it never becomes another API path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_queue_ids_are_refused_in_one_line() {
    let server = TestServer::start(Opts::default()).await;
    for args in [
        &["queue", "show", "a b"][..],
        &["queue", "hold", "../../drain"],
        &["queue", "delete", "x?y"],
        &["queue", "purge-failed", "%2e%2e"],
    ] {
        let out = server.cli(args).await;
        assert_eq!(
            one_line(&out),
            format!(
                "postern: not a queue id: {:?}; pass a queue id as postern queue list prints it",
                args[2]
            ),
        );
    }
}

/// A token file that is a directory, or not text, is one line with advice for that case
/// (both were "write a longer token there").
#[test]
fn token_file_that_is_a_directory_or_not_text() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), reserve_port(), reserve_port());
    let binary = dir.path().join("binary.token");
    std::fs::write(&binary, b"\xff\xfe0123456789abcdef0123\n").unwrap();
    let cases = [
        (
            dir.path().to_owned(),
            "is a directory; name the token file itself, not its directory (or pass \
             --token-file)",
        ),
        (
            binary,
            "write the token on the file's first line as text (the relay writes 64 hex digits \
             with http.generate_admin_token: true)",
        ),
    ];
    for (file, want) in cases {
        let out = Command::new(BIN)
            .args(["reload", "--token-file"])
            .arg(&file)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        let line = one_line(&out);
        assert!(
            line.starts_with(&format!(
                "postern: admin token file {} (--token-file): ",
                file.display()
            )) && line.ends_with(want),
            "{line}"
        );
    }
}

/// Standard output closed by its reader (`postern ... | head -1`): the command ends quietly
/// with status 141, as tools killed by SIGPIPE do, instead of a panic (println!) or a
/// "postern: cannot write" line.
#[test]
fn a_reader_gone_ends_the_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), reserve_port(), reserve_port());
    let mandir = dir.path().join("man1");
    let cases: [Vec<&std::ffi::OsStr>; 4] = [
        vec!["man".as_ref(), "--dir".as_ref(), mandir.as_os_str()],
        vec![
            "check-config".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
        ],
        vec!["completions".as_ref(), "bash".as_ref()],
        vec!["config-schema".as_ref()],
    ];
    for args in cases {
        // A pipe whose reader is gone before postern starts: its first write fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
