//! `command`: one line through the command parser. What it accepts must
//! survive the trip through the upstream client's `MAIL FROM:<{from}>` /
//! `RCPT TO:<{to}>` formatting unchanged; what it refuses must come with a
//! well-formed error reply.

use postern::smtp::command::{BodyType, Command, CommandError, MailParams, parse};
use postern::smtp::dsn::{ENVID_MAX, ORCPT_MAX, RcptParams, is_xtext};

use crate::reply_parser::check_wire_form;

/// HTTP methods the parser treats as a probe (upper case only).
const HTTP_METHODS: [&str; 6] = ["GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS"];

/// The input is one command line, as the framer hands it over (no LF).
pub fn check(line: &[u8]) {
    if line.contains(&b'\n') {
        return; // the framer never passes a LF to the parser
    }
    let verb = line.split(|&b| b == b' ').next().unwrap_or_default();
    match parse(line) {
        Ok(cmd) => {
            assert!(!line.contains(&b'\r'), "accepted a CR: {cmd:?}");
            assert!(
                cmd.name().as_bytes().eq_ignore_ascii_case(verb),
                "{} parsed from verb {verb:?}",
                cmd.name()
            );
            check_command(&cmd);
        }
        Err(CommandError::Http) => {
            let verb = std::str::from_utf8(verb).unwrap_or_default();
            assert!(HTTP_METHODS.contains(&verb), "HTTP probe {verb:?}");
        }
        Err(CommandError::Syntax(reply)) => {
            assert!(reply.is_error(), "syntax error with a positive reply");
            check_wire_form(&reply);
        }
        Err(other) => panic!("unknown command error {other:?}"),
    }
}

fn check_command(cmd: &Command) {
    match cmd {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert!(!name.is_empty() && !name.contains(' '), "domain {name:?}");
        }
        Command::Mail { from, params } => {
            // RFC 6531 3.4.
            assert!(params.smtputf8 || from.is_ascii(), "UTF-8 without SMTPUTF8");
            let again = format!("MAIL FROM:<{from}>{}", render(params));
            assert_eq!(
                parse(again.as_bytes()).as_ref(),
                Ok(cmd),
                "MAIL does not survive re-formatting as {again:?}"
            );
        }
        Command::Rcpt { to, params } => {
            // RFC 3461 4.2: what is relayed upstream is valid xtext within the cap.
            if let Some(orcpt) = &params.orcpt {
                assert!(is_xtext(&orcpt.xtext), "ORCPT {orcpt:?}");
                assert!(orcpt.to_param().len() <= ORCPT_MAX, "ORCPT {orcpt:?}");
            }
            let again = format!("RCPT TO:<{to}>{}", render_rcpt(params));
            assert_eq!(
                parse(again.as_bytes()).as_ref(),
                Ok(cmd),
                "RCPT does not survive re-formatting as {again:?}"
            );
        }
        Command::Auth {
            initial: Some(ir), ..
        } => {
            assert!(
                !ir.is_empty() && !ir.contains(' '),
                "initial response {ir:?}"
            );
        }
        _ => {}
    }
}

/// MAIL parameters in wire form, with a leading space each.
fn render(params: &MailParams) -> String {
    let mut out = String::new();
    if let Some(size) = params.size {
        out.push_str(&format!(" SIZE={size}"));
    }
    match params.body {
        Some(BodyType::SevenBit) => out.push_str(" BODY=7BIT"),
        Some(BodyType::EightBitMime) => out.push_str(" BODY=8BITMIME"),
        None => {}
    }
    if params.smtputf8 {
        out.push_str(" SMTPUTF8");
    }
    // RFC 3461 4.3, 4.4: as the upstream client writes them.
    if let Some(ret) = params.ret {
        out.push_str(&format!(" RET={}", ret.as_str()));
    }
    if let Some(envid) = &params.envid {
        assert!(
            is_xtext(envid) && envid.len() <= ENVID_MAX,
            "ENVID {envid:?}"
        );
        out.push_str(&format!(" ENVID={envid}"));
    }
    out
}

/// RCPT parameters in wire form, as the upstream client writes them (RFC 3461 4.1, 4.2).
fn render_rcpt(params: &RcptParams) -> String {
    let mut out = String::new();
    if let Some(notify) = params.notify {
        out.push_str(&format!(" NOTIFY={notify}"));
    }
    if let Some(orcpt) = &params.orcpt {
        out.push_str(&format!(" ORCPT={}", orcpt.to_param()));
    }
    out
}
