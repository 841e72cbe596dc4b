//! One command line -> a typed [`Command`], or the reply that explains why
//! not. Syntax only: order and policy checks live in the session.

use crate::smtp::address::{ForwardPath, ReversePath, parse_forward_path, parse_reverse_path};
use crate::smtp::dsn::{self, RcptParams, Ret};
use crate::smtp::reply::Reply;
use crate::smtp::sasl::Mechanism;

/// RFC 6152 BODY= values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// Parameters of MAIL FROM postern understands (RFC 5321 4.1.2 Mail-parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// RFC 1870 SIZE=n, the client's size estimate.
    pub size: Option<u64>,
    /// RFC 6152 BODY=.
    pub body: Option<BodyType>,
    /// RFC 6531 SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 3461 4.3 RET=.
    pub ret: Option<Ret>,
    /// RFC 3461 4.4 ENVID=, still xtext.
    pub envid: Option<String>,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// EHLO domain (RFC 5321 4.1.1.1); the argument is kept as sent.
    Ehlo(String),
    /// HELO domain.
    Helo(String),
    /// MAIL FROM:<path> [params].
    Mail {
        /// The reverse path.
        from: ReversePath,
        /// The parameters.
        params: MailParams,
    },
    /// RCPT TO:<path> [params].
    Rcpt {
        /// The forward path.
        to: ForwardPath,
        /// The parameters (RFC 3461 DSN).
        params: RcptParams,
    },
    /// DATA.
    Data,
    /// RSET.
    Rset,
    /// NOOP [string] (RFC 5321 4.1.1.9: the argument is ignored).
    Noop,
    /// QUIT.
    Quit,
    /// VRFY string.
    Vrfy,
    /// EXPN string.
    Expn,
    /// HELP [string].
    Help,
    /// STARTTLS (RFC 3207).
    StartTls,
    /// AUTH mechanism [initial-response] (RFC 4954).
    Auth {
        /// The mechanism; `None` if postern does not offer it (504 later,
        /// after the order checks, as Postfix orders them).
        mechanism: Option<Mechanism>,
        /// The initial response, still base64.
        initial: Option<String>,
    },
}

impl Command {
    /// The verb, for logs and metric labels (never client bytes).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy => "VRFY",
            Command::Expn => "EXPN",
            Command::Help => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
        }
    }
}

/// Why a line is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// An ordinary syntax error answered with this reply.
    Syntax(Reply),
    /// The line is an HTTP request: answer 421 and close.
    Http,
}

impl From<Reply> for CommandError {
    fn from(r: Reply) -> Self {
        CommandError::Syntax(r)
    }
}

/// HTTP methods that mark a browser or proxy probe (Postfix closes on these).
const HTTP_METHODS: [&str; 6] = ["GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS"];

/// Parses one command line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    if line.contains(&b'\r') {
        return Err(Reply::bare_cr_command().into());
    }
    let line = std::str::from_utf8(line).map_err(|_| Reply::invalid_utf8())?;
    let (verb, arg) = match line.split_once(' ') {
        Some((v, a)) => (v, a.trim()),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    let no_arg = |c: Command| {
        if arg.is_empty() {
            Ok(c)
        } else {
            Err(CommandError::Syntax(Reply::no_params_allowed()))
        }
    };
    match upper.as_str() {
        "EHLO" => domain_arg(arg, Reply::ehlo_syntax()).map(Command::Ehlo),
        "HELO" => domain_arg(arg, Reply::helo_syntax()).map(Command::Helo),
        "MAIL" => parse_mail(arg),
        "RCPT" => parse_rcpt(arg),
        "DATA" => no_arg(Command::Data),
        "RSET" => no_arg(Command::Rset),
        "QUIT" => no_arg(Command::Quit),
        "STARTTLS" => no_arg(Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "AUTH" => parse_auth(arg),
        m if HTTP_METHODS.contains(&m) && verb == upper => Err(CommandError::Http),
        _ => Err(Reply::unrecognized().into()),
    }
}

/// RFC 5321 4.1.1.1: EHLO/HELO need a domain or address literal. Like
/// Postfix we do not check its syntax (clients send all sorts of names).
fn domain_arg(arg: &str, syntax: Reply) -> Result<String, CommandError> {
    match arg.split(' ').next() {
        Some(d) if !d.is_empty() => Ok(d.to_owned()),
        _ => Err(syntax.into()),
    }
}

/// Strips a case-insensitive `prefix` (e.g. "FROM:") and the one space some
/// clients put after the colon, then splits the `<path>` from the params.
fn path_and_params<'a>(
    arg: &'a str,
    prefix: &str,
    syntax: Reply,
) -> Result<(&'a str, &'a str), Reply> {
    let rest = arg
        .get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .and_then(|_| arg.get(prefix.len()..))
        .ok_or(syntax.clone())?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    if !rest.starts_with('<') {
        return Err(syntax);
    }
    // The path ends at the first '>' outside a quoted string.
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                let (path, params) = rest.split_at(i + 1);
                return Ok((path, params));
            }
            _ => {}
        }
    }
    Ok((rest, ""))
}

fn parse_mail(arg: &str) -> Result<Command, CommandError> {
    let (path, params) = path_and_params(arg, "FROM:", Reply::mail_syntax())?;
    let from = parse_reverse_path(path).map_err(|_| Reply::bad_sender())?;
    let params = parse_mail_params(params)?;
    // RFC 6531 3.4: a non-ASCII address needs the SMTPUTF8 parameter.
    if !params.smtputf8 && !from.is_ascii() {
        return Err(Reply::non_ascii_sender().into());
    }
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(arg: &str) -> Result<Command, CommandError> {
    let (path, params) = path_and_params(arg, "TO:", Reply::rcpt_syntax())?;
    let to = parse_forward_path(path).map_err(|_| Reply::bad_recipient())?;
    if !params.is_empty() && !params.starts_with(' ') {
        // Bytes glued to the closing '>'.
        return Err(Reply::bad_recipient().into());
    }
    // RFC 5321 4.1.1.3 Rcpt-parameters: only RFC 3461's NOTIFY and ORCPT are offered.
    let params = dsn::parse_rcpt_params(params)?;
    Ok(Command::Rcpt { to, params })
}

/// RFC 5321 4.1.2: Mail-parameters = esmtp-param *(SP esmtp-param),
/// esmtp-param = esmtp-keyword ["=" esmtp-value]; keywords are
/// case-insensitive.
fn parse_mail_params(params: &str) -> Result<MailParams, Reply> {
    if !params.is_empty() && !params.starts_with(' ') {
        // Bytes glued to the closing '>'.
        return Err(Reply::bad_sender());
    }
    let mut out = MailParams::default();
    let mut seen_auth = false;
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let key = key.to_ascii_uppercase();
        let duplicate = match (key.as_str(), value) {
            // RFC 1870 6: SIZE=1*20DIGIT.
            ("SIZE", Some(v)) => out.size.replace(parse_size(v)?).is_some(),
            // RFC 6152 2.
            ("BODY", Some(v)) => out.body.replace(parse_body(v)?).is_some(),
            // RFC 6531 3.4: SMTPUTF8 takes no value.
            ("SMTPUTF8", None) => std::mem::replace(&mut out.smtputf8, true),
            // RFC 4954 5: AUTH=<mailbox> may be accepted and ignored.
            ("AUTH", Some(_)) => std::mem::replace(&mut seen_auth, true),
            // RFC 3461 4.3, 4.4.
            ("RET", Some(v)) => out.ret.replace(dsn::parse_ret(v)?).is_some(),
            ("ENVID", Some(v)) => out.envid.replace(dsn::parse_envid(v)?).is_some(),
            ("SIZE" | "BODY" | "AUTH" | "RET" | "ENVID", None) | ("SMTPUTF8", Some(_)) => {
                return Err(Reply::bad_param_value());
            }
            _ => return Err(Reply::unsupported_param()),
        };
        if duplicate {
            return Err(Reply::duplicate_param());
        }
    }
    Ok(out)
}

fn parse_size(v: &str) -> Result<u64, Reply> {
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reply::bad_param_value());
    }
    // 20 digits may overflow u64: such a size is over any limit anyway.
    Ok(v.parse().unwrap_or(u64::MAX))
}

fn parse_body(v: &str) -> Result<BodyType, Reply> {
    if v.eq_ignore_ascii_case("7BIT") {
        Ok(BodyType::SevenBit)
    } else if v.eq_ignore_ascii_case("8BITMIME") {
        Ok(BodyType::EightBitMime)
    } else {
        Err(Reply::bad_param_value())
    }
}

/// RFC 4954 4: AUTH mechanism [initial-response].
fn parse_auth(arg: &str) -> Result<Command, CommandError> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let (Some(mech), initial, None) = (words.next(), words.next(), words.next()) else {
        return Err(Reply::new(501, (5, 5, 4), "Syntax: AUTH mechanism [initial-response]").into());
    };
    Ok(Command::Auth {
        mechanism: Mechanism::parse(mech),
        initial: initial.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Mailbox;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.to_owned(),
            domain: domain.to_owned(),
        }
    }

    fn mail(local: &str, domain: &str, params: MailParams) -> Result<Command, CommandError> {
        Ok(Command::Mail {
            from: ReversePath::Mailbox(mb(local, domain)),
            params,
        })
    }

    fn err(r: Reply) -> Result<Command, CommandError> {
        Err(CommandError::Syntax(r))
    }

    #[test]
    fn command_rows() {
        let p = MailParams::default();
        let rows: Vec<(&str, Result<Command, CommandError>)> = vec![
            (
                "EHLO client.example",
                Ok(Command::Ehlo("client.example".into())),
            ),
            ("ehlo [192.0.2.1]", Ok(Command::Ehlo("[192.0.2.1]".into()))),
            ("HeLo x", Ok(Command::Helo("x".into()))),
            ("EHLO", err(Reply::ehlo_syntax())),
            ("EHLO ", err(Reply::ehlo_syntax())),
            ("HELO", err(Reply::helo_syntax())),
            ("MAIL FROM:<a@b.example>", mail("a", "b.example", p.clone())),
            (
                "mail from: <a@b.example>",
                mail("a", "b.example", p.clone()),
            ),
            (
                "MAIL FROM:<>",
                Ok(Command::Mail {
                    from: ReversePath::Null,
                    params: p.clone(),
                }),
            ),
            (
                "MAIL FROM:<\"x> y\"@b.example>",
                mail("x> y", "b.example", p.clone()),
            ),
            (
                "MAIL FROM:<a@b.example> size=100 BODY=8bitmime SMTPUTF8 AUTH=<>",
                mail(
                    "a",
                    "b.example",
                    MailParams {
                        size: Some(100),
                        body: Some(BodyType::EightBitMime),
                        smtputf8: true,
                        ..p.clone()
                    },
                ),
            ),
            (
                "MAIL FROM:<a@b.example> RET=hdrs ENVID=QQ+2B1",
                mail(
                    "a",
                    "b.example",
                    MailParams {
                        ret: Some(Ret::Hdrs),
                        envid: Some("QQ+2B1".into()),
                        ..p.clone()
                    },
                ),
            ),
            (
                "MAIL FROM:<a@b.example> RET=FULL RET=HDRS",
                err(Reply::duplicate_param()),
            ),
            (
                "MAIL FROM:<a@b.example> ENVID=a=b",
                err(Reply::new(501, (5, 5, 4), "ENVID is not valid xtext")),
            ),
            ("MAIL FROM:<a@b.example> RET", err(Reply::bad_param_value())),
            (
                "MAIL FROM:<a@b.example> BODY=7BIT",
                mail(
                    "a",
                    "b.example",
                    MailParams {
                        body: Some(BodyType::SevenBit),
                        ..p.clone()
                    },
                ),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=99999999999999999999",
                mail(
                    "a",
                    "b.example",
                    MailParams {
                        size: Some(u64::MAX),
                        ..p.clone()
                    },
                ),
            ),
            (
                "MAIL FROM:<ü@b.example> SMTPUTF8",
                mail(
                    "ü",
                    "b.example",
                    MailParams {
                        smtputf8: true,
                        ..p.clone()
                    },
                ),
            ),
            ("MAIL FROM:<ü@b.example>", err(Reply::non_ascii_sender())),
            (
                "MAIL FROM:<a@b.example> SIZE=1 SIZE=2",
                err(Reply::duplicate_param()),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=x",
                err(Reply::bad_param_value()),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE",
                err(Reply::bad_param_value()),
            ),
            (
                "MAIL FROM:<a@b.example> BODY=BINARYMIME",
                err(Reply::bad_param_value()),
            ),
            (
                "MAIL FROM:<a@b.example> XRET=HDRS",
                err(Reply::unsupported_param()),
            ),
            ("MAIL FROM:<a@b.example>SIZE=1", err(Reply::bad_sender())),
            ("MAIL FROM:a@b.example", err(Reply::mail_syntax())),
            ("MAIL TO:<a@b.example>", err(Reply::mail_syntax())),
            ("MAIL", err(Reply::mail_syntax())),
            ("MAIL FROM:<a@@b>", err(Reply::bad_sender())),
            (
                "RCPT TO:<u@x.example>",
                Ok(Command::Rcpt {
                    to: ForwardPath(mb("u", "x.example")),
                    params: RcptParams::default(),
                }),
            ),
            (
                "rcpt to: <postmaster>",
                Ok(Command::Rcpt {
                    to: ForwardPath(mb("postmaster", "")),
                    params: RcptParams::default(),
                }),
            ),
            (
                "RCPT TO:<u@x.example> NOTIFY=NEVER",
                Ok(Command::Rcpt {
                    to: ForwardPath(mb("u", "x.example")),
                    params: RcptParams {
                        notify: Some(crate::smtp::dsn::Notify::NEVER),
                        orcpt: None,
                    },
                }),
            ),
            (
                "RCPT TO:<u@x.example> NOTIFY=NEVER,DELAY",
                err(Reply::new(501, (5, 5, 4), "NOTIFY=NEVER must stand alone")),
            ),
            (
                "RCPT TO:<u@x.example>NOTIFY=NEVER",
                err(Reply::bad_recipient()),
            ),
            (
                "RCPT TO:<u@x.example> FOO=1",
                err(Reply::unsupported_param()),
            ),
            ("RCPT TO:<>", err(Reply::bad_recipient())),
            ("RCPT TO:<u@x.example", err(Reply::bad_recipient())),
            ("RCPT FROM:<u@x.example>", err(Reply::rcpt_syntax())),
            ("DATA", Ok(Command::Data)),
            ("DATA x", err(Reply::no_params_allowed())),
            ("STARTTLS", Ok(Command::StartTls)),
            ("STARTTLS now", err(Reply::no_params_allowed())),
            ("rset", Ok(Command::Rset)),
            ("NOOP anything", Ok(Command::Noop)),
            ("QUIT", Ok(Command::Quit)),
            ("VRFY root", Ok(Command::Vrfy)),
            ("EXPN list", Ok(Command::Expn)),
            ("HELP", Ok(Command::Help)),
            (
                "AUTH PLAIN",
                Ok(Command::Auth {
                    mechanism: Some(Mechanism::Plain),
                    initial: None,
                }),
            ),
            (
                "auth login dXNlcg==",
                Ok(Command::Auth {
                    mechanism: Some(Mechanism::Login),
                    initial: Some("dXNlcg==".into()),
                }),
            ),
            (
                "AUTH CRAM-MD5",
                Ok(Command::Auth {
                    mechanism: None,
                    initial: None,
                }),
            ),
            (
                "AUTH",
                err(Reply::new(
                    501,
                    (5, 5, 4),
                    "Syntax: AUTH mechanism [initial-response]",
                )),
            ),
            ("GET / HTTP/1.1", Err(CommandError::Http)),
            ("CONNECT x:25 HTTP/1.0", Err(CommandError::Http)),
            ("get", err(Reply::unrecognized())),
            ("XYZZY", err(Reply::unrecognized())),
            ("", err(Reply::unrecognized())),
            ("NOOP\rRSET", err(Reply::bare_cr_command())),
        ];
        for (line, want) in rows {
            assert_eq!(parse(line.as_bytes()), want, "{line:?}");
        }
        assert_eq!(parse(b"EHLO \xff"), err(Reply::invalid_utf8()));
    }
}
