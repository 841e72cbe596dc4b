//! The long help of the subcommands: what `--help` prints after the options, and what the
//! man pages (man.rs) turn into their EXIT STATUS and EXAMPLES sections.
//!
//! Each text is a list of sections, separated by a blank line: a heading line ending in
//! `:` at the margin, then lines indented by two spaces, under 80 columns (they are printed
//! as written). man.rs relies on that shape, and its unit test checks every text has it.

/// `postern` itself.
pub const POSTERN: &str = "\
Exit status:
  0  success
  1  failure: one line on standard error, \"postern: what is wrong;
     what to do\"
  2  the command line itself is wrong (an unknown subcommand or option:
     clap's usage message)
  141  standard output was closed by its reader (postern ... | head),
     as for a tool killed by SIGPIPE; nothing is printed

Examples:
  postern check-config --config /etc/postern/postern.yaml
  postern run --config /etc/postern/postern.yaml
  postern queue list --config /etc/postern/postern.yaml
  postern completions zsh > /usr/local/share/zsh/site-functions/_postern
  postern man --dir /usr/local/share/man/man1";

/// `postern run`.
pub const RUN: &str = "\
Exit status:
  0  stopped by SIGTERM or SIGINT after draining (queued mail stays in
     the spool)
  1  the configuration is invalid, or a listener, the spool or the HTTP
     endpoint could not be set up (one line on standard error says
     which, and what to do)

Examples:
  postern run --config /etc/postern/postern.yaml
  cargo run --release -- run --config config/postern.yaml";

/// `postern check-config`.
pub const CHECK_CONFIG: &str = "\
Exit status:
  0  the file is valid (\"FILE: OK\" on standard output)
  1  it is not: \"postern: FILE: KEY: PROBLEM\" on standard error

Examples:
  postern check-config --config /etc/postern/postern.yaml
  postern check-config -c staging.yaml && systemctl reload postern";

/// `postern hash-password`.
pub const HASH_PASSWORD: &str = "\
Exit status:
  0  the hash is printed on standard output
  1  nothing could be read, or the password is empty

Examples:
  postern hash-password
  printf '%s\\n' \"$PASSWORD\" | postern hash-password";

/// `postern queue` and its subcommands share what they need.
pub const QUEUE: &str = "\
Exit status:
  0  the command was carried out
  1  it was not: one line on standard error, e.g. \"postern: HTTP 404:
     no message ... in the queue; ...\" or \"postern: cannot reach the
     admin API at http://...\"

Examples:
  postern queue list --config /etc/postern/postern.yaml
  postern queue hold 0C3V8NQ4E0G0P1A6
  postern queue drain --deadline 30m";

/// `postern queue list`.
pub const QUEUE_LIST: &str = "\
Exit status:
  0  the listing is printed (from the API, or from the spool directory
     when postern is not running, which is said on standard error)
  1  neither the API nor the spool directory could be read

Examples:
  postern queue list
  postern queue list --failed --json
  postern queue list --offline --config /etc/postern/postern.yaml";

/// `postern queue show`.
pub const QUEUE_SHOW: &str = "\
Exit status:
  0  the message is printed, one field per line
  1  no such message, or the admin API cannot be reached

Examples:
  postern queue show 0C3V8NQ4E0G0P1A6
  postern queue show 0C3V8NQ4E0G0P1A6 --json";

/// `postern queue retry`.
pub const QUEUE_RETRY: &str = "\
Exit status:
  0  the message (or every waiting one) is due now
  1  no such message, it is held (release it instead) or being
     delivered, or the admin API cannot be reached

Examples:
  postern queue retry 0C3V8NQ4E0G0P1A6
  postern queue retry --all";

/// `postern queue hold`.
pub const QUEUE_HOLD: &str = "\
Exit status:
  0  the message is held
  1  no such message, it is being delivered right now (repeat a moment
     later), or the admin API cannot be reached

Examples:
  postern queue hold 0C3V8NQ4E0G0P1A6";

/// `postern queue release`.
pub const QUEUE_RELEASE: &str = "\
Exit status:
  0  the message is released and due now
  1  no such message, it is not held, or the admin API cannot be
     reached

Examples:
  postern queue release 0C3V8NQ4E0G0P1A6";

/// `postern queue delete`.
pub const QUEUE_DELETE: &str = "\
Exit status:
  0  the message is removed from the spool; the deleted message is
     printed
  1  no such message, it is being delivered right now, or the admin API
     cannot be reached

Examples:
  postern queue delete 0C3V8NQ4E0G0P1A6";

/// `postern queue bounce`.
pub const QUEUE_BOUNCE: &str = "\
Exit status:
  0  the message's pending recipients failed; it is in failed/ and its
     sender is told
  1  no such message, it is being delivered right now, or the admin API
     cannot be reached

Examples:
  postern queue bounce 0C3V8NQ4E0G0P1A6";

/// `postern queue drain`.
pub const QUEUE_DRAIN: &str = "\
Exit status:
  0  the queue is empty (every message delivered or failed for good),
     or, with --resume, the relay accepts connections again
  1  the deadline passed with messages left (they are listed), or the
     admin API cannot be reached

Examples:
  postern queue drain --deadline 30m && systemctl stop postern
  postern queue drain --resume";

/// `postern queue purge-failed`.
pub const QUEUE_PURGE_FAILED: &str = "\
Exit status:
  0  the dead letters are removed (how many is printed)
  1  no such dead letter, or neither the API nor the spool directory
     could be used

Examples:
  postern queue purge-failed 0C3V8NQ4E0G0P1A6
  postern queue purge-failed";

/// `postern reload`.
pub const RELOAD: &str = "\
Exit status:
  0  the new configuration is in force (a summary of what changed is
     printed)
  1  the reload was refused (\"HTTP 422: ...\" names the file, key and
     problem; the running configuration stays), or the admin API cannot
     be reached

Examples:
  postern reload --config /etc/postern/postern.yaml
  postern reload --json";

/// `postern probe` and `postern probe upstream`.
pub const PROBE: &str = "\
Exit status:
  0  the upstream took the session set-up (connect, TLS, EHLO, AUTH);
     no mail was sent
  1  a step failed: one line on standard error names the upstream, the
     step and the reply

Examples:
  postern probe upstream m365 --config /etc/postern/postern.yaml";

/// `postern config-schema`.
pub const CONFIG_SCHEMA: &str = "\
Exit status:
  0  the schema is printed on standard output
  1  it could not be written

Examples:
  postern config-schema > /etc/postern/postern.schema.json
  cargo run -- config-schema > config/postern.schema.json";

/// `postern healthcheck`.
pub const HEALTHCHECK: &str = "\
Exit status:
  0  /readyz answered 200 (\"URL: ready\" on standard output)
  1  it answered otherwise (draining, the spool not writable: the
     reasons on one line), nothing answered within --timeout, or the
     config has no http.address

Examples:
  postern healthcheck --config /etc/postern/postern.yaml
  postern healthcheck --url http://127.0.0.1:9587/readyz --timeout 2s";

/// `postern completions`.
pub const COMPLETIONS: &str = "\
Exit status:
  0  the script is printed on standard output
  1  it could not be written

Examples:
  dir=/usr/local/share/bash-completion/completions
  mkdir -p $dir && postern completions bash > $dir/postern
  source <(postern completions bash)
  postern completions zsh > /usr/local/share/zsh/site-functions/_postern
  postern completions fish > /etc/fish/completions/postern.fish";

/// `postern man`.
pub const MAN: &str = "\
Exit status:
  0  the page is printed, or every page is written (their paths are
     printed)
  1  the directory could not be created or a page could not be written

Examples:
  postern man | man -l -
  postern man --dir /usr/local/share/man/man1 && mandb";
