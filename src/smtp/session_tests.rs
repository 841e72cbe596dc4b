//! Session tables: command rows under every line ending and split point,
//! DATA rows through the whole engine, API edge cases, and a fixed-seed
//! fuzz run over an SMTP alphabet.

use crate::smtp::address::{ForwardPath, Mailbox, ReversePath};
use crate::smtp::command::MailParams;
use crate::smtp::dialog_tests::{Harness, config};
use crate::smtp::dsn::RcptParams;
use crate::smtp::reply::Reply;
use crate::smtp::sasl::Mechanism;
use crate::smtp::session::{Envelope, Question, Rcpt, Session, Step, Verdict};
use crate::test_rng::Rng;

const EHLO_PLAIN: &str = "250-mx.test|250-PIPELINING|250-SIZE 10240|250-8BITMIME|250-SMTPUTF8|\
                          250-ENHANCEDSTATUSCODES|250-DSN|250 STARTTLS";
const EHLO_NONE: &str = "250-mx.test|250-PIPELINING|250-SIZE 10240|250-8BITMIME|250-SMTPUTF8|\
                         250-ENHANCEDSTATUSCODES|250 DSN";
const EHLO_TLS: &str = "250-mx.test|250-PIPELINING|250-SIZE 10240|250-8BITMIME|250-SMTPUTF8|\
                        250-ENHANCEDSTATUSCODES|250-DSN|250 AUTH PLAIN LOGIN";

/// Runs `chunks` through a fresh session and returns the reply lines after
/// the banner, joined by '|'.
fn replies(header: &str, chunks: &[&[u8]]) -> String {
    let (cfg, tls) = config(header);
    let mut h = Harness::new(cfg, tls);
    for chunk in chunks {
        h.feed(chunk);
    }
    h.lines().get(1..).unwrap_or_default().join("|")
}

/// (header, client lines, replies under CRLF and LF)
type Row = (&'static str, &'static [&'static str], &'static str);

const ROWS: &[Row] = &[
    ("", &["EHLO c.example"], EHLO_PLAIN),
    ("tls_active=yes", &["EHLO c.example"], EHLO_TLS),
    ("tls=none auth=none", &["ehlo c"], "EHLO"),
    ("", &["HELO c.example"], "250 mx.test"),
    ("", &["EHLO"], "501 5.5.4 Syntax: EHLO hostname"),
    (
        "",
        &["MAIL FROM:<a@b.example>"],
        "503 5.5.1 Error: send HELO/EHLO first",
    ),
    (
        "",
        &["HELO c", "MAIL FROM:<a@b.example>"],
        "250 mx.test|530 5.7.0 Must issue a STARTTLS command first",
    ),
    (
        "tls_active=yes",
        &["HELO c", "MAIL FROM:<a@b.example>"],
        "250 mx.test|530 5.7.0 Authentication required",
    ),
    (
        "auth=optional",
        &[
            "HELO c",
            "MAIL FROM:<a@b.example>",
            "RCPT TO:<postmaster>",
            "DATA",
        ],
        "250 mx.test|250 2.1.0 Ok|250 2.1.5 Ok|354 End data with <CR><LF>.<CR><LF>",
    ),
    (
        "auth=none",
        &[
            "HELO c",
            "MAIL FROM:<a@b.example>",
            "MAIL FROM:<a@b.example>",
        ],
        "250 mx.test|250 2.1.0 Ok|503 5.5.1 Error: nested MAIL command",
    ),
    (
        "auth=none",
        &["HELO c", "MAIL FROM:<a@b.example> SIZE=10241"],
        "250 mx.test|552 5.3.4 Message size exceeds fixed limit",
    ),
    (
        "auth=none",
        &["HELO c", "MAIL FROM:<a@b.example> FOO=1"],
        "250 mx.test|555 5.5.4 Unsupported parameter",
    ),
    (
        "auth=none",
        &["HELO c", "RCPT TO:<u@x.example>"],
        "250 mx.test|503 5.5.1 Error: need MAIL command",
    ),
    (
        "auth=none",
        &["HELO c", "MAIL FROM:<>", "DATA"],
        "250 mx.test|250 2.1.0 Ok|554 5.5.1 Error: no valid recipients",
    ),
    (
        "auth=none",
        &["HELO c", "MAIL FROM:<>", "RCPT TO:<ü@x.example>"],
        "250 mx.test|250 2.1.0 Ok|553 5.6.7 Non-ASCII address requires SMTPUTF8",
    ),
    (
        "auth=none",
        &["HELO c", "MAIL FROM:<> SMTPUTF8", "RCPT TO:<ü@x.example>"],
        "250 mx.test|250 2.1.0 Ok|250 2.1.5 Ok",
    ),
    (
        "auth=none max_recipients=1",
        &["HELO c", "MAIL FROM:<>", "RCPT TO:<a@x>", "RCPT TO:<b@x>"],
        "250 mx.test|250 2.1.0 Ok|250 2.1.5 Ok|452 4.5.3 Error: too many recipients",
    ),
    (
        "auth=none",
        &["HELO c", "MAIL FROM:<>", "RSET", "RCPT TO:<a@x>"],
        "250 mx.test|250 2.1.0 Ok|250 2.0.0 Ok|503 5.5.1 Error: need MAIL command",
    ),
    (
        "auth=none",
        &["HELO c", "MAIL FROM:<>", "HELO d", "RCPT TO:<a@x>"],
        "250 mx.test|250 2.1.0 Ok|250 mx.test|503 5.5.1 Error: need MAIL command",
    ),
    (
        "",
        &["NOOP", "VRFY x", "EXPN x", "HELP"],
        "250 2.0.0 Ok|252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery|502 5.5.1 Error: command not implemented|214 2.0.0 See https://www.rfc-editor.org/rfc/rfc5321",
    ),
    (
        "",
        &["XYZZY", "DATA now"],
        "500 5.5.2 Error: command not recognized|501 5.5.4 Syntax error: no parameters allowed",
    ),
    ("", &["QUIT", "NOOP"], "221 2.0.0 Bye"),
    (
        "",
        &["GET / HTTP/1.1", "NOOP"],
        "421 4.7.0 mx.test Error: HTTP requests not accepted",
    ),
    (
        "tls_active=yes",
        &["STARTTLS"],
        "554 5.5.1 Error: TLS already active",
    ),
    (
        "tls=none auth=none",
        &["STARTTLS"],
        "502 5.5.1 Error: command not implemented",
    ),
    ("", &["STARTTLS"], "220 2.0.0 Ready to start TLS"),
    (
        "",
        &["EHLO c", "AUTH PLAIN AGEAYg=="],
        "EHLO|530 5.7.0 Must issue a STARTTLS command first",
    ),
    (
        "tls=none auth=optional",
        &["EHLO c", "AUTH PLAIN AGEAYg=="],
        "EHLO|503 5.5.1 Error: authentication not enabled",
    ),
    (
        "tls_active=yes",
        &["EHLO c", "AUTH PLAIN AGEAYg==", "AUTH PLAIN AGEAYg=="],
        "EHLO|235 2.7.0 Authentication successful|503 5.5.1 Error: already authenticated",
    ),
    (
        "tls_active=yes",
        &["EHLO c", "AUTH CRAM-MD5"],
        "EHLO|504 5.5.4 Unrecognized authentication type",
    ),
    (
        "tls_active=yes",
        &["EHLO c", "AUTH PLAIN", "*"],
        "EHLO|334 |501 5.0.0 Authentication aborted",
    ),
    (
        "tls_active=yes",
        &["EHLO c", "AUTH PLAIN", "!!"],
        "EHLO|334 |501 5.5.2 Error: invalid base64 data",
    ),
    (
        "tls_active=yes",
        &["EHLO c", "AUTH LOGIN", "YQ==", "Yg=="],
        "EHLO|334 VXNlcm5hbWU6|334 UGFzc3dvcmQ6|235 2.7.0 Authentication successful",
    ),
    (
        "tls_active=yes",
        &[
            "EHLO c",
            "AUTH PLAIN AGEAYg==",
            "MAIL FROM:<a@b>",
            "AUTH LOGIN",
        ],
        "EHLO|235 2.7.0 Authentication successful|250 2.1.0 Ok|503 5.5.1 Error: already authenticated",
    ),
    (
        "tls_active=yes auth=optional",
        &["EHLO c", "MAIL FROM:<a@b>", "AUTH LOGIN"],
        "EHLO|250 2.1.0 Ok|503 5.5.1 Error: MAIL transaction in progress",
    ),
    (
        "max_errors=3",
        &["X", "Y", "Z", "NOOP"],
        "500 5.5.2 Error: command not recognized|500 5.5.2 Error: command not recognized|500 5.5.2 Error: command not recognized|421 4.7.0 mx.test Error: too many errors",
    ),
];

/// Replaces the "EHLO" placeholder in expectations by the full reply.
fn expand(header: &str, want: &str) -> String {
    let ehlo = if header.contains("tls=none") {
        EHLO_NONE
    } else if header.contains("tls_active=yes") {
        EHLO_TLS
    } else {
        EHLO_PLAIN
    };
    want.split('|')
        .map(|w| if w == "EHLO" { ehlo } else { w })
        .collect::<Vec<_>>()
        .join("|")
}

#[test]
fn command_rows_under_every_line_ending_and_split() {
    for (header, lines, want) in ROWS {
        let want = expand(header, want);
        for ending in ["\r\n", "\n"] {
            let input: Vec<u8> = lines
                .iter()
                .flat_map(|l| [l.as_bytes(), ending.as_bytes()].concat())
                .collect();
            let check = |got: String, how: &str| {
                assert_eq!(got, want, "{header} {lines:?} {ending:?} {how}");
            };
            check(replies(header, &[&input]), "whole");
            for at in 0..=input.len() {
                let (a, b) = input.split_at(at);
                check(replies(header, &[a, b]), &format!("split {at}"));
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            check(replies(header, &bytes), "bytewise");
        }
        // Bare CR never ends a command line: nothing is answered.
        let input: Vec<u8> = lines
            .iter()
            .flat_map(|l| [l.as_bytes(), b"\r"].concat())
            .collect();
        assert_eq!(replies(header, &[&input]), "", "{lines:?} bare CR");
    }
}

#[test]
fn long_lines_are_discarded_and_dialogue_stays_in_step() {
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(2000));
    let want = "500 5.5.2 Error: line too long|250 2.0.0 Ok";
    assert_eq!(replies("", &[long.as_bytes()]), want);
    let bytes: Vec<&[u8]> = long.as_bytes().chunks(7).collect();
    assert_eq!(replies("", &bytes), want);
    // A 5000-octet AUTH initial response fits the RFC 4954 cap.
    let auth = format!("EHLO c\r\nAUTH PLAIN {}\r\n", "A".repeat(5000));
    assert_eq!(
        replies("tls_active=yes", &[auth.as_bytes()]),
        format!("{EHLO_TLS}|501 5.5.2 Error: malformed authentication response")
    );
    let auth = format!("EHLO c\r\nAUTH PLAIN\r\n{}\r\nNOOP\r\n", "A".repeat(13000));
    assert_eq!(
        replies("tls_active=yes", &[auth.as_bytes()]),
        format!("{EHLO_TLS}|334 |500 5.5.2 Error: line too long|250 2.0.0 Ok")
    );
}

/// DATA through the engine: (bare policy, body bytes, replies after 354, stored body).
#[test]
fn data_rows_through_the_session() {
    type DataRow = (
        &'static str,
        &'static [u8],
        &'static str,
        Option<&'static [u8]>,
    );
    let rows: &[DataRow] = &[
        (
            "bare=reject",
            b"Subject: x\r\n\r\n..dot\r\n.\r\n",
            "250 2.0.0 Ok: queued as TESTID",
            Some(b"Subject: x\r\n\r\n.dot\r\n"),
        ),
        (
            "bare=reject",
            b"a\n.\nb\r\n.\r\n",
            "550 5.6.0 Error: bare <CR> or <LF> in message data (SMTP smuggling)",
            None,
        ),
        (
            "bare=normalise",
            b"a\n.\nb\r\n.\r\n",
            "250 2.0.0 Ok: queued as TESTID",
            Some(b"a\r\n.\r\nb\r\n"),
        ),
        (
            "bare=reject",
            b"a\r\n.\rMAIL FROM:<x@y>\r\n.\r\n",
            "550 5.6.0 Error: bare <CR> or <LF> in message data (SMTP smuggling)",
            None,
        ),
        (
            "bare=normalise max_size=5",
            b"123456\r\n.\r\n",
            "552 5.3.4 Error: message file too big",
            None,
        ),
    ];
    for (header, body, want, stored) in rows {
        let header = format!("auth=none {header}");
        let mut input = b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(body);
        input.extend_from_slice(b"MAIL FROM:<a@b>\r\n");
        for at in 0..=input.len() {
            let (cfg, tls) = config(&header);
            let mut h = Harness::new(cfg, tls);
            h.feed(&input[..at]);
            h.feed(&input[at..]);
            let lines = h.lines();
            assert_eq!(
                lines.get(5).map(String::as_str),
                Some(*want),
                "{header} split {at}"
            );
            // The dialogue continues: the next MAIL works.
            assert_eq!(
                lines.get(6).map(String::as_str),
                Some("250 2.1.0 Ok"),
                "{header} {at}"
            );
            assert_eq!(
                h.messages.first().map(|m| m.1.as_slice()),
                *stored,
                "{header} {at}"
            );
            assert_eq!(h.events.contains(&"discard"), stored.is_none());
        }
    }
}

#[test]
fn envelope_and_accessors() {
    let (cfg, _) = config("auth=optional");
    let mut h = Harness::new(cfg, true);
    assert_eq!((h.s.helo(), h.s.esmtp(), h.s.is_tls()), (None, false, true));
    h.feed(b"EHLO client.example\r\nAUTH PLAIN AHVzZXIAcHc=\r\nMAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME\r\n");
    h.feed(b"RCPT TO:<c@d.example>\r\nRCPT TO:<postmaster>\r\nDATA\r\nhi\r\n");
    assert!(h.s.in_data());
    h.feed(b".\r\n");
    assert!(!h.s.in_data());
    assert_eq!(
        (h.s.helo(), h.s.esmtp(), h.s.identity()),
        (Some("client.example"), true, Some("user"))
    );
    let mb = |l: &str, d: &str| Mailbox {
        local: l.to_owned(),
        domain: d.to_owned(),
    };
    let want = Envelope {
        from: ReversePath::Mailbox(mb("a", "b.example")),
        params: MailParams {
            size: Some(10),
            body: Some(crate::smtp::command::BodyType::EightBitMime),
            smtputf8: false,
            ..MailParams::default()
        },
        rcpts: vec![
            Rcpt {
                to: ForwardPath(mb("c", "d.example")),
                params: RcptParams::default(),
            },
            Rcpt {
                to: ForwardPath(mb("postmaster", "")),
                params: RcptParams::default(),
            },
        ],
        longest_line: 2,
    };
    assert_eq!(h.messages, vec![(want, b"hi\r\n".to_vec())]);
    h.feed(b"HELO other\r\n");
    assert_eq!((h.s.helo(), h.s.esmtp()), (Some("other"), false));
}

/// A server-side deferral (454 verifier busy, 451 spool error) is not the client's error:
/// it never counts towards `max_errors`, while the same reply as a `Reject` does.
#[test]
fn deferrals_are_not_client_errors() {
    for (defer, closed) in [(true, false), (false, true)] {
        let (cfg, _) = config("auth=none max_errors=2");
        let mut h = Harness::new(cfg, false);
        for _ in 0..3 {
            let reply = Reply::queue_error();
            h.verdicts.push_back(if defer {
                Verdict::Defer(reply)
            } else {
                Verdict::Reject(reply)
            });
        }
        h.feed(b"HELO c\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n");
        assert_eq!(h.closed, closed, "defer={defer}: {:?}", h.lines());
    }
}

#[test]
fn rejections_keep_state_consistent() {
    let (cfg, _) = config("auth=none");
    let mut h = Harness::new(cfg, false);
    h.verdicts
        .push_back(Verdict::Reject(Reply::sender_not_allowed()));
    h.verdicts.push_back(Verdict::Accept);
    h.verdicts
        .push_back(Verdict::Reject(Reply::new(550, (5, 1, 1), "no such user")));
    h.verdicts.push_back(Verdict::Accept);
    h.verdicts.push_back(Verdict::Reject(Reply::rate_limited()));
    h.verdicts.push_back(Verdict::Accept);
    h.verdicts.push_back(Verdict::Reject(Reply::queue_error()));
    h.feed(b"HELO c\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nRCPT TO:<z@y>\r\nDATA\r\nDATA\r\n.\r\nRCPT TO:<q@y>\r\n");
    let want = [
        "250 mx.test",
        "553 5.7.1 Sender address rejected: not owned by user",
        "250 2.1.0 Ok",
        "550 5.1.1 no such user",
        "250 2.1.5 Ok",
        "450 4.7.1 Error: rate limit exceeded, try again later",
        "354 End data with <CR><LF>.<CR><LF>",
        "451 4.3.0 Error: queue file write error",
        "503 5.5.1 Error: need MAIL command",
    ];
    assert_eq!(h.lines()[1..], want);
    h.verdicts
        .push_back(Verdict::RejectAndClose(Reply::lockout()));
    h.feed(b"MAIL FROM:<a@b>\r\nNOOP\r\n");
    assert_eq!(
        h.lines().last().map(String::as_str),
        Some("421 4.7.0 Error: too many authentication failures")
    );
    assert!(h.closed);
}

#[test]
fn starttls_drops_pipelined_bytes_and_resets() {
    let (cfg, _) = config("");
    let mut s = Session::new(cfg, false);
    s.greet();
    s.output().clear();
    let input = b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\n";
    let (n, step) = s.advance(input);
    assert_eq!((n, step), (input.len() - 20, Step::StartTls));
    assert!(s.output().ends_with(b"220 2.0.0 Ready to start TLS\r\n"));
    s.output().clear();
    s.tls_established();
    assert_eq!((s.helo(), s.is_tls()), (None, true));
    assert_eq!(s.advance(b"MAIL FROM:<a@b>\r\n"), (17, Step::NeedInput));
    assert_eq!(
        s.output().as_slice(),
        b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
}

#[test]
fn api_edges() {
    let (cfg, _) = config("tls_active=yes");
    let mut s = Session::new(cfg.clone(), true);
    // answer() with no question is a logic error: 421 4.3.0, never a panic.
    assert_eq!(s.answer(Verdict::Accept), Step::Close);
    assert_eq!(
        s.output().as_slice(),
        b"421 4.3.0 mx.test Error: internal error\r\n"
    );
    assert_eq!(s.advance(b"NOOP\r\n"), (6, Step::Close));

    let mut s = Session::new(cfg.clone(), true);
    let (n, step) = s.advance(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nNOOP\r\n");
    assert_eq!(n, 29);
    let Step::Decide(q) = step else {
        panic!("{step:?}")
    };
    let q_dbg = format!("{q:?}");
    assert!(
        q_dbg.contains("<redacted>") && !q_dbg.contains("\"p\""),
        "{q_dbg}"
    );
    assert_eq!(
        q,
        Question::Auth {
            mechanism: Mechanism::Plain,
            authzid: String::new(),
            username: "u".into(),
            password: "p".into()
        }
    );
    // Feeding input before answering is a logic error too.
    assert_eq!(s.advance(b"NOOP\r\n"), (0, Step::Close));

    for (f, want) in [
        (
            Session::timed_out as fn(&mut Session) -> Step,
            "421 4.4.2 mx.test Error: timeout exceeded\r\n",
        ),
        (
            Session::shutting_down,
            "421 4.3.2 mx.test Service shutting down\r\n",
        ),
    ] {
        let mut s = Session::new(cfg.clone(), false);
        assert_eq!(f(&mut s), Step::Close);
        assert_eq!(s.output().as_slice(), want.as_bytes());
    }
    let mut s = Session::new(cfg, false);
    assert_eq!(s.refuse(Reply::not_allowed_client()), Step::Close);
    assert_eq!(s.output().as_slice(), b"554 5.7.1 Error: access denied\r\n");
    assert_eq!(
        Reply::too_many_connections().to_string(),
        "421 4.7.0 Error: too many connections"
    );
    assert_eq!(
        Reply::temp_auth_failure().to_string(),
        "454 4.7.0 Temporary authentication failure"
    );
}

#[test]
fn fuzz_smtp_alphabet_never_panics_and_output_is_bounded() {
    const TOKENS: &[&[u8]] = &[
        b"EHLO x\r\n",
        b"HELO y\n",
        b"MAIL FROM:<a@b>",
        b"MAIL FROM:<>\r\n",
        b"RCPT TO:<c@d>\r\n",
        b"RCPT TO:<postmaster>\r\n",
        b"DATA\r\n",
        b".\r\n",
        b"\r\n.\r\n",
        b"\r",
        b"\n",
        b".",
        b"..",
        b"AUTH PLAIN ",
        b"AUTH LOGIN\r\n",
        b"AHUAcA==",
        b"*\r\n",
        b"STARTTLS\r\n",
        b"RSET\r\n",
        b"QUIT\r\n",
        b" SIZE=",
        b"99999999999999999999999",
        b" SMTPUTF8",
        b"\"",
        b"<",
        b">",
        b"@",
        b"\xc3\xbc",
        b"\xff",
        b"\0",
        b"x",
        b"GET / HTTP/1.1\r\n",
        b"NOOP\r\n",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..2000 {
        let mut input = Vec::new();
        for _ in 0..rng.below(60) {
            let t = TOKENS[rng.below(TOKENS.len())];
            if rng.below(50) == 0 {
                input.extend(std::iter::repeat_n(t[0], rng.below(3000)));
            } else {
                input.extend_from_slice(t);
            }
        }
        let header = [
            "tls_active=yes auth=optional",
            "bare=normalise max_errors=1000",
            "tls=none auth=none max_size=50",
        ][case % 3];
        let (cfg, tls) = config(header);
        let mut h = Harness::new(cfg, tls);
        let mut rest = input.as_slice();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()));
            h.feed(chunk);
            rest = tail;
        }
        // At most one reply (EHLO is the longest, < 200 bytes) per input byte
        // plus fixed overhead for the banner and a closing 421.
        assert!(
            h.out.len() <= 200 * (input.len() + 2),
            "case {case}: output {}",
            h.out.len()
        );
    }
}

/// Each policy refusal the engine makes itself is reported once, pipelined or not:
/// recipients over the cap, a SIZE over the limit, MAIL before AUTH.
#[test]
fn engine_refusals_carry_their_reasons() {
    use crate::reason::Reason;
    let (mut cfg, _) = config("tls=none auth=none");
    cfg.max_recipients = 1;
    let mut s = Session::new(cfg, false);
    s.greet();
    let input = b"EHLO c\r\nMAIL FROM:<a@b.example> SIZE=999999\r\nMAIL FROM:<a@b.example>\r\n";
    let (used, step) = s.advance(input);
    assert_eq!(s.take_refusals(), [Reason::Size]);
    assert!(matches!(step, Step::Decide(Question::Mail { .. })));
    assert_eq!(s.answer(Verdict::Accept), Step::NeedInput);
    let rest = &input[used..];
    assert!(rest.is_empty());
    let rcpts = b"RCPT TO:<x@y.example>\r\nRCPT TO:<z@y.example>\r\nRCPT TO:<w@y.example>\r\n";
    let (used, step) = s.advance(rcpts);
    assert!(matches!(step, Step::Decide(Question::Rcpt { .. })));
    assert_eq!(s.answer(Verdict::Accept), Step::NeedInput);
    let (_, step) = s.advance(&rcpts[used..]);
    assert_eq!(step, Step::NeedInput);
    assert_eq!(s.take_refusals(), [Reason::Recipients, Reason::Recipients]);
    assert!(s.take_refusals().is_empty());
}
