//! The connector's tests, against the scripted sink in `test_sink.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use super::client::{Client, DsnParams, RcptResult, transmitted_size};
use super::error::Capability;
use super::sink::{self, Line, Message, Script};
use super::wrap;
use super::*;
use crate::smtp::reply_parser::UpstreamReply;

fn settings(addr: SocketAddr, security: Security) -> Settings {
    Settings {
        name: "sink".into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        security,
        helo_name: "relay.test".into(),
        credentials: None,
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            command: Duration::from_secs(5),
        },
    }
}

fn creds(password: &str) -> Option<Credentials> {
    Some(Credentials {
        username: "user".into(),
        secret: AuthSecret::Password(password.into()),
    })
}

/// A TLS target trusting the test CA (or not verifying at all).
fn target(pki: &sink::Pki, verify: bool, dir: &tempfile::TempDir) -> TlsTarget {
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    TlsTarget {
        config: tls::client_config(Some(&ca), verify).unwrap(),
        server_name: tls::server_name("localhost").unwrap(),
    }
}

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn accepted(index: usize) -> RcptOutcome {
    RcptOutcome {
        index,
        result: RcptResult::Accepted("250 2.0.0 Ok: queued".into()),
    }
}

fn rejected(index: usize, code: u16, enh: (u8, u16, u16), text: &str) -> RcptOutcome {
    RcptOutcome {
        index,
        result: RcptResult::Rejected(UpstreamReply::local(code, enh, text), Stage::Rcpt),
    }
}

/// Sends one message over a fresh connection.
async fn send(
    s: &Settings,
    to: &[String],
    prefix: &[u8],
    body: &[u8],
) -> Result<Vec<RcptOutcome>, Error> {
    send_dsn(s, to, prefix, body, DsnParams::default()).await
}

/// [`send`] with DSN parameters.
async fn send_dsn(
    s: &Settings,
    to: &[String],
    prefix: &[u8],
    body: &[u8],
    dsn: DsnParams<'_>,
) -> Result<Vec<RcptOutcome>, Error> {
    let mut client = Client::connect(s).await?;
    let mut source = body;
    let mut msg = Outgoing {
        sender: "app@corp.example",
        recipients: to,
        prefix,
        body: &mut source,
        size: transmitted_size(
            prefix,
            body.len() as u64,
            &body[body.len().saturating_sub(2)..],
        ) + wrap::added_octets(prefix, |f| {
            f(body);
            Ok::<_, ()>(())
        })
        .unwrap(),
        body_8bit: prefix.iter().chain(body).any(|b| *b >= 0x80),
        smtputf8: false,
        dsn,
        upstream_dsn: false,
    };
    client.send(&mut msg).await
}

/// RFC 3461 5.2.1: RET, ENVID, NOTIFY and ORCPT go to an upstream that offers DSN, with
/// and without PIPELINING, and none of them to one that does not.
#[tokio::test]
async fn dsn_parameters_only_where_offered() {
    use crate::smtp::dsn::{Notify, Orcpt, RcptParams, Ret};
    let params = [
        RcptParams {
            notify: Some(Notify::NEVER),
            orcpt: Some(Orcpt {
                addr_type: "rfc822".into(),
                xtext: "A+2Bb@x.example".into(),
            }),
        },
        RcptParams::default(),
        RcptParams {
            notify: Some(Notify {
                success: true,
                failure: false,
                delay: true,
            }),
            orcpt: None,
        },
    ];
    let dsn = DsnParams {
        ret: Some(Ret::Hdrs),
        envid: Some("QQ+2B1"),
        rcpts: &params,
    };
    let to = rcpts(&["a@x.example", "b@x.example", "c@x.example"]);
    for (offered, pipelining) in [(true, true), (true, false), (false, true)] {
        let script = Script {
            pipelining,
            dsn: offered,
            ..Default::default()
        };
        let (addr, rec) = sink::start(script).await;
        let out = send_dsn(&settings(addr, Security::Plain), &to, b"", b"x\r\n", dsn)
            .await
            .unwrap();
        assert_eq!(out, vec![accepted(0), accepted(1), accepted(2)]);
        let envelope: Vec<String> = texts(&rec)
            .into_iter()
            .filter(|l| l.starts_with("MAIL") || l.starts_with("RCPT"))
            .collect();
        let want: &[&str] = if offered {
            &[
                "MAIL FROM:<app@corp.example> RET=HDRS ENVID=QQ+2B1",
                "RCPT TO:<a@x.example> NOTIFY=NEVER ORCPT=rfc822;A+2Bb@x.example",
                "RCPT TO:<b@x.example>",
                "RCPT TO:<c@x.example> NOTIFY=SUCCESS,DELAY",
            ]
        } else {
            &[
                "MAIL FROM:<app@corp.example>",
                "RCPT TO:<a@x.example>",
                "RCPT TO:<b@x.example>",
                "RCPT TO:<c@x.example>",
            ]
        };
        assert_eq!(envelope, want, "offered {offered} pipelining {pipelining}");
    }
}

fn lines(rec: &sink::Shared) -> Vec<Line> {
    rec.lock().unwrap().lines.clone()
}

fn texts(rec: &sink::Shared) -> Vec<String> {
    lines(rec).into_iter().map(|l| l.text).collect()
}

fn messages(rec: &sink::Shared) -> Vec<Message> {
    rec.lock().unwrap().messages.clone()
}

/// Byte-exact bodies after the sink un-stuffs them: (prefix, body, what the sink must get).
#[tokio::test]
async fn body_bytes_arrive_exactly() {
    // Lines that fit, and a dot at the first octet of the second 64 KiB chunk.
    let mut big = [[b'a'; 98].as_slice(), b"\r\n"].concat().repeat(655);
    big.extend_from_slice(&[b'a'; 34]);
    big.extend_from_slice(b"\r\n.starts the second chunk\r\n");
    // A line over 998 octets arrives wrapped (RFC 5322 2.1.1), as Postfix wraps it.
    let long = [b"\r\n".as_slice(), &[b'.'; 1000], b"\r\n"].concat();
    let long_wrapped = [b"\r\n".as_slice(), &[b'.'; 998], b"\r\n ..\r\n"].concat();
    let rows: Vec<(&[u8], Vec<u8>, Vec<u8>)> = vec![
        (
            b"",
            b"Subject: x\r\n\r\nhi\r\n".to_vec(),
            b"Subject: x\r\n\r\nhi\r\n".to_vec(),
        ),
        (
            b"",
            b".\r\n..\r\n.x\r\nmid.dle\r\n".to_vec(),
            b".\r\n..\r\n.x\r\nmid.dle\r\n".to_vec(),
        ),
        (
            b"Received: by r\r\n",
            b".dot after prefix\r\n".to_vec(),
            b"Received: by r\r\n.dot after prefix\r\n".to_vec(),
        ),
        (
            b"",
            b"caf\xc3\xa9 \xff\x00\x80\r\n".to_vec(),
            b"caf\xc3\xa9 \xff\x00\x80\r\n".to_vec(),
        ),
        (
            b"",
            b"no final newline".to_vec(),
            b"no final newline\r\n".to_vec(),
        ),
        (b"", b"ends in CR\r".to_vec(), b"ends in CR\r\r\n".to_vec()),
        (b"", Vec::new(), Vec::new()),
        (b"", big.clone(), big),
        (b"", long, long_wrapped),
    ];
    for pipelining in [true, false] {
        let (addr, rec) = sink::start(Script {
            pipelining,
            eightbitmime: true,
            ..Default::default()
        })
        .await;
        for (prefix, body, _) in &rows {
            let out = send(
                &settings(addr, Security::Plain),
                &rcpts(&["a@x.example"]),
                prefix,
                body,
            )
            .await;
            assert_eq!(out.unwrap(), vec![accepted(0)]);
        }
        let got: Vec<Vec<u8>> = messages(&rec).into_iter().map(|m| m.data).collect();
        let want: Vec<Vec<u8>> = rows.iter().map(|r| r.2.clone()).collect();
        assert_eq!(got, want, "pipelining {pipelining}");
    }
}

/// One refused recipient does not fail the others, with and without PIPELINING; with
/// PIPELINING, MAIL/RCPT/DATA arrive in one write.
#[tokio::test]
async fn per_recipient_outcomes() {
    for pipelining in [true, false] {
        let script = Script {
            pipelining,
            size: Some(1_000_000),
            eightbitmime: true,
            rcpt_replies: vec![("bad@x.example", "550 5.1.1 <bad@x.example>: User unknown")],
            ..Default::default()
        };
        let (addr, rec) = sink::start(script).await;
        let to = rcpts(&["a@x.example", "bad@x.example", "c@y.example"]);
        let out = send(
            &settings(addr, Security::Plain),
            &to,
            b"",
            "hé\r\n".as_bytes(),
        )
        .await
        .unwrap();
        let refused = rejected(1, 550, (5, 1, 1), "<bad@x.example>: User unknown");
        assert_eq!(out, vec![accepted(0), refused, accepted(2)]);
        let msgs = messages(&rec);
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            msgs[0].mail,
            "MAIL FROM:<app@corp.example> SIZE=5 BODY=8BITMIME"
        );
        assert_eq!(msgs[0].rcpts, ["a@x.example", "c@y.example"]);
        let seen = lines(&rec);
        let envelope: Vec<(&str, bool)> = seen[1..6]
            .iter()
            .map(|l| (l.text.as_str(), l.ahead))
            .collect();
        // Pipelined: every line but DATA had more bytes behind it.
        let p = pipelining;
        assert_eq!(
            envelope,
            [
                ("MAIL FROM:<app@corp.example> SIZE=5 BODY=8BITMIME", p),
                ("RCPT TO:<a@x.example>", p),
                ("RCPT TO:<bad@x.example>", p),
                ("RCPT TO:<c@y.example>", p),
                ("DATA", false),
            ]
        );
    }
}

/// More recipients than one pipelined group: replies still line up with recipients.
#[tokio::test]
async fn many_recipients_pipelined_in_groups() {
    let script = Script {
        pipelining: true,
        rcpt_replies: vec![("r120@x", "550 5.1.1 no")],
        ..Default::default()
    };
    let (addr, rec) = sink::start(script).await;
    let to: Vec<String> = (0..250).map(|i| format!("r{i}@x")).collect();
    let out = send(&settings(addr, Security::Plain), &to, b"", b"x\r\n")
        .await
        .unwrap();
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o.index, i);
        assert_eq!(o.result.is_accepted(), i != 120, "recipient {i}");
    }
    assert_eq!(out[120], rejected(120, 550, (5, 1, 1), "no"));
    assert_eq!(messages(&rec)[0].rcpts.len(), 249);
}

/// All recipients refused: no body goes out, every outcome is a rejection.
#[tokio::test]
async fn all_recipients_refused() {
    let rows = [(true, false), (false, false), (true, true)];
    for (pipelining, always_354) in rows {
        let script = Script {
            pipelining,
            always_354,
            rcpt_replies: vec![("a@x", "550 5.1.1 no"), ("b@x", "450 4.2.1 later")],
            ..Default::default()
        };
        let (addr, rec) = sink::start(script).await;
        let out = send(
            &settings(addr, Security::Plain),
            &rcpts(&["a@x", "b@x"]),
            b"",
            b"body\r\n",
        )
        .await;
        let expected = vec![
            rejected(0, 550, (5, 1, 1), "no"),
            rejected(1, 450, (4, 2, 1), "later"),
        ];
        assert_eq!(
            out.unwrap(),
            expected,
            "pipelining {pipelining} always_354 {always_354}"
        );
        let t = texts(&rec);
        // Without PIPELINING, DATA is never sent; with it, DATA is refused (554) or, when a
        // broken server says 354, an empty message is ended at once.
        assert_eq!(t.contains(&"DATA".to_string()), pipelining);
        let bodies: Vec<Vec<u8>> = messages(&rec).into_iter().map(|m| m.data).collect();
        let want: Vec<Vec<u8>> = if always_354 {
            vec![Vec::new()]
        } else {
            Vec::new()
        };
        assert_eq!(bodies, want);
    }
}

/// Replies that refuse the whole message: MAIL (Err, permanent or not), the final dot
/// (every accepted recipient carries the reply).
#[tokio::test]
async fn whole_message_refusals() {
    let (addr, _) = sink::start(Script {
        mail_reply: "550 5.7.1 Sender denied",
        ..Default::default()
    })
    .await;
    let err = send(
        &settings(addr, Security::Plain),
        &rcpts(&["a@x"]),
        b"",
        b"x\r\n",
    )
    .await
    .unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(
        err.to_string(),
        "upstream sink: mail refused: 550 5.7.1 Sender denied"
    );

    let (addr, _) = sink::start(Script {
        mail_reply: "451 4.3.0 busy",
        pipelining: true,
        ..Default::default()
    })
    .await;
    let err = send(
        &settings(addr, Security::Plain),
        &rcpts(&["a@x"]),
        b"",
        b"x\r\n",
    )
    .await
    .unwrap_err();
    assert!(!err.is_permanent());

    for final_reply in ["451 4.7.1 try later", "554 5.7.1 spam"] {
        let script = Script {
            final_reply,
            rcpt_replies: vec![("b@x", "550 5.1.1 no")],
            ..Default::default()
        };
        let (addr, _) = sink::start(script).await;
        let out = send(
            &settings(addr, Security::Plain),
            &rcpts(&["a@x", "b@x"]),
            b"",
            b"x\r\n",
        )
        .await;
        let (reply, _) =
            crate::smtp::reply_parser::parse_reply(format!("{final_reply}\r\n").as_bytes())
                .unwrap()
                .unwrap();
        let expected = vec![
            RcptOutcome {
                index: 0,
                result: RcptResult::Rejected(reply, Stage::FinalDot),
            },
            rejected(1, 550, (5, 1, 1), "no"),
        ];
        assert_eq!(out.unwrap(), expected);
    }
}

/// A lost connection after the final dot is "maybe delivered", never a plain failure.
#[tokio::test]
async fn drop_after_dot_is_maybe_delivered() {
    let (addr, rec) = sink::start(Script {
        drop_after_dot: true,
        ..Default::default()
    })
    .await;
    let err = send(
        &settings(addr, Security::Plain),
        &rcpts(&["a@x"]),
        b"",
        b"x\r\n",
    )
    .await
    .unwrap_err();
    assert!(err.is_maybe_delivered(), "{err}");
    assert!(!err.is_permanent());
    assert_eq!(err.stage(), Stage::FinalDot);
    assert!(texts(&rec).contains(&"DATA".to_string()));
}

/// Local refusals, before anything is written: SMTPUTF8 or 8BITMIME needed but not
/// offered, or over the advertised SIZE, are [`Error::Unsupported`] (not permanent, the
/// connection stays usable); an address that would break the command line is a
/// permanent 501. Nothing reaches the upstream.
#[tokio::test]
async fn local_refusals() {
    let (addr, rec) = sink::start(Script {
        size: Some(1_000_000),
        ..Default::default()
    })
    .await;
    let s = settings(addr, Security::Plain);
    let mut client = Client::connect(&s).await.unwrap();
    let to = rcpts(&["a@x"]);
    struct Row {
        prefix: &'static [u8],
        smtputf8: bool,
        body_8bit: bool,
        size: u64,
        sender: &'static str,
        missing: Option<Capability>,
        shown: &'static str,
    }
    let ok = Row {
        prefix: b"",
        smtputf8: false,
        body_8bit: false,
        size: 10,
        sender: "app@x",
        missing: None,
        shown: "",
    };
    let rows = [
        Row {
            smtputf8: true,
            missing: Some(Capability::SmtpUtf8),
            shown: "upstream sink: cannot take this message: SMTPUTF8 needed but not offered",
            ..ok
        },
        Row {
            body_8bit: true,
            missing: Some(Capability::EightBitMime),
            shown: "upstream sink: cannot take this message: 8BITMIME needed but not offered",
            ..ok
        },
        // postern's own prefix counts as content too (a UTF-8 recipient in Received).
        Row {
            prefix: "Received: for <\u{fc}@x>\r\n".as_bytes(),
            missing: Some(Capability::EightBitMime),
            shown: "upstream sink: cannot take this message: 8BITMIME needed but not offered",
            ..ok
        },
        Row {
            size: 1_000_001,
            missing: Some(Capability::Size {
                size: 1_000_001,
                limit: 1_000_000,
            }),
            shown: "upstream sink: cannot take this message: message of 1000001 octets exceeds SIZE 1000000",
            ..ok
        },
        Row {
            sender: "a\r\nRSET@x",
            shown: "upstream sink: mail refused: 501 5.1.7 sender address has characters SMTP cannot carry",
            ..ok
        },
    ];
    for row in rows {
        let Row {
            prefix,
            smtputf8,
            body_8bit,
            size,
            sender,
            missing,
            shown,
        } = row;
        let mut source: &[u8] = b"x";
        let mut msg = Outgoing {
            sender,
            recipients: &to,
            prefix,
            body: &mut source,
            size,
            body_8bit,
            smtputf8,
            dsn: Default::default(),
            upstream_dsn: false,
        };
        let err = client.send(&mut msg).await.unwrap_err();
        assert_eq!(err.is_permanent(), missing.is_none(), "{err}");
        assert_eq!(err.unsupported(), missing.as_ref());
        assert_eq!(err.to_string(), shown);
        assert!(client.is_reusable(), "{err}");
    }
    assert_eq!(texts(&rec), ["EHLO relay.test"]);
    // At exactly the limit the message goes, declaring its size.
    let mut source: &[u8] = b"x";
    let mut msg = Outgoing {
        sender: "app@x",
        recipients: &to,
        prefix: b"",
        body: &mut source,
        size: 1_000_000,
        body_8bit: false,
        smtputf8: false,
        dsn: Default::default(),
        upstream_dsn: false,
    };
    assert_eq!(client.send(&mut msg).await.unwrap(), vec![accepted(0)]);
    assert_eq!(texts(&rec)[1], "MAIL FROM:<app@x> SIZE=1000000");
    // A recipient with CRLF is refused alone; the other is delivered.
    // A quoted local part with a space and brackets is carried as it is.
    let to = rcpts(&["x@y>\r\nDATA", "\"john <doe>\"@y", "ok@y"]);
    let out = send(&s, &to, b"", b"x\r\n").await.unwrap();
    let text = "recipient address has characters SMTP cannot carry";
    assert_eq!(
        out,
        vec![rejected(0, 501, (5, 1, 3), text), accepted(1), accepted(2)]
    );
    let t = texts(&rec);
    assert!(
        !t.iter().any(|l| l.contains("RSET") || l.contains("x@y")),
        "{t:?}"
    );
    assert!(
        t.contains(&"RCPT TO:<\"john <doe>\"@y>".to_string()),
        "{t:?}"
    );
}

/// STARTTLS: used when offered and required; missing is an error; injected bytes
/// behind the 220 are refused; AUTH PLAIN and LOGIN carry the right secrets, after TLS.
#[tokio::test]
async fn starttls_and_auth() {
    let pki = sink::pki();
    let dir = tempfile::tempdir().unwrap();
    let tls = target(&pki, true, &dir);
    let rows: [(&'static [&'static str], &str); 3] = [
        (&["LOGIN", "PLAIN"], "PLAIN |user|secret"),
        (&["LOGIN"], "LOGIN user|secret"),
        (&["PLAIN"], "PLAIN |user|wrong"),
    ];
    for (mechs, auth_seen) in rows {
        let script = Script {
            starttls: Some(pki.server.clone()),
            auth: mechs,
            ..Default::default()
        };
        let (addr, rec) = sink::start(script).await;
        let mut s = settings(addr, Security::StartTls(tls.clone()));
        let wrong = auth_seen.ends_with("wrong");
        s.credentials = creds(if wrong { "wrong" } else { "secret" });
        let out = send(&s, &rcpts(&["a@x"]), b"", b"x\r\n").await;
        assert_eq!(rec.lock().unwrap().auth, [auth_seen]);
        if wrong {
            let err = out.unwrap_err();
            assert!(
                matches!(err, Error::Auth { .. }) && !err.is_permanent(),
                "{err}"
            );
            continue;
        }
        assert_eq!(out.unwrap(), vec![accepted(0)]);
        let seen = lines(&rec);
        let first: Vec<(&str, bool)> = seen[..3].iter().map(|l| (l.text.as_str(), l.tls)).collect();
        assert_eq!(
            first,
            [
                ("EHLO relay.test", false),
                ("STARTTLS", false),
                ("EHLO relay.test", true)
            ]
        );
        assert!(seen[3..].iter().all(|l| l.tls));
    }

    let (addr, rec) = sink::start(Script::default()).await;
    let err = Client::connect(&settings(addr, Security::StartTls(tls.clone())))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "upstream sink: upstream does not offer STARTTLS"
    );
    assert_eq!(texts(&rec), ["EHLO relay.test"]);

    let script = Script {
        starttls: Some(pki.server.clone()),
        inject_after_starttls: true,
        ..Default::default()
    };
    let (addr, _) = sink::start(script).await;
    let err = Client::connect(&settings(addr, Security::StartTls(tls)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol {
                stage: Stage::StartTls,
                ..
            }
        ),
        "{err}"
    );
}

/// RFC 7817: a certificate from an unknown CA fails; `tls_verify: false` accepts it;
/// implicit TLS works from the first byte.
#[tokio::test]
async fn certificate_verification() {
    let pki = sink::pki();
    let other = sink::pki();
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        (target(&other, true, &dir), true),
        (target(&other, false, &dir), false),
        (target(&pki, true, &dir), false),
    ];
    for (tls, fails) in rows {
        for implicit in [false, true] {
            let script = if implicit {
                Script {
                    implicit: Some(pki.server.clone()),
                    ..Default::default()
                }
            } else {
                Script {
                    starttls: Some(pki.server.clone()),
                    ..Default::default()
                }
            };
            let (addr, _) = sink::start(script).await;
            let security = if implicit {
                Security::Implicit(tls.clone())
            } else {
                Security::StartTls(tls.clone())
            };
            let out = send(&settings(addr, security), &rcpts(&["a@x"]), b"", b"x\r\n").await;
            match out {
                Err(Error::Tls { .. }) if fails => {}
                Ok(o) if !fails => assert_eq!(o, vec![accepted(0)]),
                other => panic!("implicit {implicit} fails {fails}: {other:?}"),
            }
        }
    }
    // The name is checked too: the certificate is for localhost and 127.0.0.1 only.
    let (addr, _) = sink::start(Script {
        implicit: Some(pki.server.clone()),
        ..Default::default()
    })
    .await;
    let mut tls = target(&pki, true, &dir);
    tls.server_name = tls::server_name("smtp.example.com").unwrap();
    let err = send(
        &settings(addr, Security::Implicit(tls)),
        &rcpts(&["a@x"]),
        b"",
        b"x",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
}

/// HELO fallback, greeting timeout.
#[tokio::test]
async fn helo_fallback_and_timeout() {
    let (addr, rec) = sink::start(Script {
        ehlo_502: true,
        pipelining: true,
        ..Default::default()
    })
    .await;
    let out = send(
        &settings(addr, Security::Plain),
        &rcpts(&["a@x"]),
        b"",
        b"x\r\n",
    )
    .await
    .unwrap();
    assert_eq!(out, vec![accepted(0)]);
    let t = texts(&rec);
    assert_eq!(
        t[..3],
        [
            "EHLO relay.test",
            "HELO relay.test",
            "MAIL FROM:<app@corp.example>"
        ]
    );
    // HELO means no PIPELINING: the RCPT waited for the MAIL reply.
    assert!(lines(&rec).iter().all(|l| !l.ahead));

    let (addr, _) = sink::start(Script {
        silent: true,
        ..Default::default()
    })
    .await;
    let mut s = settings(addr, Security::Plain);
    s.timeouts.command = Duration::from_millis(200);
    let err = Client::connect(&s).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                stage: Stage::Greeting,
                ..
            }
        ),
        "{err}"
    );
}

async fn pool_send(pool: &Pool, to: &[String]) -> Result<Vec<RcptOutcome>, Error> {
    let mut source: &[u8] = b"pooled\r\n";
    let mut msg = Outgoing {
        sender: "app@corp.example",
        recipients: to,
        prefix: b"",
        body: &mut source,
        size: 8,
        body_8bit: false,
        smtputf8: false,
        dsn: Default::default(),
        upstream_dsn: false,
    };
    pool.deliver(&mut msg).await
}

/// `messages_per_connection`: after that many transactions a connection is closed with
/// QUIT and the next message opens a new one.
#[tokio::test]
async fn pool_opens_a_new_connection_after_messages_per_connection() {
    let (addr, rec) = sink::start(Script::default()).await;
    let pool = Pool::new(settings(addr, Security::Plain), 1, Duration::from_secs(30))
        .with_messages_per_connection(2);
    for _ in 0..5 {
        assert_eq!(
            pool_send(&pool, &rcpts(&["a@x"])).await.unwrap(),
            vec![accepted(0)]
        );
    }
    assert_eq!(messages(&rec).len(), 5);
    // Two per connection: 1-2, 3-4, 5 (still open, idle).
    assert_eq!(pool.connections_opened(), 3);
    assert_eq!(pool.idle_count(), 1);
    // The spent ones said QUIT (spawned beside the next delivery): wait for both, bounded.
    let quits = || texts(&rec).iter().filter(|l| *l == "QUIT").count();
    for _ in 0..100 {
        if quits() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(quits(), 2);
}

/// Two messages, one TCP connection (RSET between, no second EHLO); an expired idle
/// connection is not reused; a failed one is dropped.
#[tokio::test]
async fn pool_reuses_connections() {
    let script = Script {
        pipelining: true,
        rcpt_replies: vec![("bad@x", "550 5.1.1 no")],
        ..Default::default()
    };
    let (addr, rec) = sink::start(script).await;
    let pool = Pool::new(settings(addr, Security::Plain), 2, Duration::from_secs(30));
    assert_eq!(
        pool_send(&pool, &rcpts(&["a@x"])).await.unwrap(),
        vec![accepted(0)]
    );
    assert_eq!(
        pool_send(&pool, &rcpts(&["bad@x"])).await.unwrap(),
        vec![rejected(0, 550, (5, 1, 1), "no")]
    );
    assert_eq!(
        pool_send(&pool, &rcpts(&["b@x"])).await.unwrap(),
        vec![accepted(0)]
    );
    assert_eq!(rec.lock().unwrap().connections, 1);
    assert_eq!(pool.connections_opened(), 1);
    let t = texts(&rec);
    assert_eq!(t.iter().filter(|l| l.starts_with("EHLO")).count(), 1);
    assert_eq!(t.iter().filter(|l| *l == "RSET").count(), 2);
    assert_eq!(messages(&rec).len(), 2);
    assert_eq!(pool.idle_count(), 1);
    pool.close_idle().await;
    assert_eq!(pool.idle_count(), 0);

    let (addr, rec) = sink::start(Script::default()).await;
    let pool = Pool::new(settings(addr, Security::Plain), 1, Duration::ZERO);
    pool_send(&pool, &rcpts(&["a@x"])).await.unwrap();
    pool_send(&pool, &rcpts(&["a@x"])).await.unwrap();
    assert_eq!(pool.connections_opened(), 2);
    assert_eq!(rec.lock().unwrap().connections, 2);

    let (addr, rec) = sink::start(Script {
        mail_reply: "451 4.3.0 busy",
        ..Default::default()
    })
    .await;
    let pool = Pool::new(settings(addr, Security::Plain), 1, Duration::from_secs(30));
    assert!(pool_send(&pool, &rcpts(&["a@x"])).await.is_err());
    assert_eq!(pool.idle_count(), 0);
    assert!(pool_send(&pool, &rcpts(&["a@x"])).await.is_err());
    assert_eq!(rec.lock().unwrap().connections, 2);
}

/// An upstream that lacks an extension keeps its connection: nothing was sent on it,
/// and the next message that does not need the extension reuses it.
#[tokio::test]
async fn pool_keeps_connection_after_unsupported() {
    let (addr, rec) = sink::start(Script::default()).await;
    let pool = Pool::new(settings(addr, Security::Plain), 1, Duration::from_secs(30));
    let to = rcpts(&["a@x"]);
    let mut source: &[u8] = b"x\r\n";
    let mut msg = Outgoing {
        sender: "app@corp.example",
        recipients: &to,
        prefix: b"",
        body: &mut source,
        size: 3,
        body_8bit: false,
        smtputf8: true,
        dsn: Default::default(),
        upstream_dsn: false,
    };
    let err = pool.deliver(&mut msg).await.unwrap_err();
    assert_eq!(err.unsupported(), Some(&Capability::SmtpUtf8));
    assert_eq!(pool.idle_count(), 1);
    assert_eq!(pool_send(&pool, &to).await.unwrap(), vec![accepted(0)]);
    assert_eq!(rec.lock().unwrap().connections, 1);
    assert_eq!(
        texts(&rec)[..3],
        ["EHLO relay.test", "RSET", "MAIL FROM:<app@corp.example>"]
    );
}

/// The upstream closes a pooled connection while it is idle (with a 421 first, or
/// just EOF): the next delivery notices at the RSET and uses a new connection, and
/// succeeds the first time.
#[tokio::test]
async fn pool_replaces_connection_closed_while_idle() {
    for last_words in ["421 4.4.2 sink.test idle timeout, closing", ""] {
        let (addr, rec) = sink::start(Script {
            hang_up_after_message: Some(last_words),
            ..Default::default()
        })
        .await;
        let pool = Pool::new(settings(addr, Security::Plain), 1, Duration::from_secs(30));
        let to = rcpts(&["a@x"]);
        for _ in 0..3 {
            assert_eq!(
                pool_send(&pool, &to).await.unwrap(),
                vec![accepted(0)],
                "{last_words:?}"
            );
        }
        assert_eq!(messages(&rec).len(), 3);
        assert_eq!(rec.lock().unwrap().connections, 3);
        assert_eq!(pool.connections_opened(), 3);
    }
}

/// `reap_idle` says QUIT to connections idle past `idle_timeout` and keeps the others;
/// `close_idle` says QUIT to all.
#[tokio::test]
async fn reap_and_close_idle_say_quit() {
    // (idle_timeout, QUITs after reap_idle, QUITs after close_idle)
    let rows = [(Duration::ZERO, 1, 1), (Duration::from_secs(30), 0, 1)];
    for (idle_timeout, after_reap, after_close) in rows {
        let (addr, rec) = sink::start(Script::default()).await;
        let pool = Pool::new(settings(addr, Security::Plain), 1, idle_timeout);
        pool_send(&pool, &rcpts(&["a@x"])).await.unwrap();
        assert_eq!(pool.idle_count(), 1);
        let quits = || texts(&rec).iter().filter(|l| *l == "QUIT").count();
        pool.reap_idle().await;
        assert_eq!(quits(), after_reap, "{idle_timeout:?}");
        pool.close_idle().await;
        assert_eq!(quits(), after_close, "{idle_timeout:?}");
        assert_eq!(pool.idle_count(), 0);
    }
}

/// Half the shortest idle_timeout, within [1s, 30s]; directory upstreams do not count.
#[test]
fn reap_period() {
    let dir = tempfile::tempdir().unwrap();
    // (idle timeouts, period in milliseconds)
    let rows: &[(&[&str], u64)] = &[
        (&["30s"], 15_000),
        (&["1s"], 1_000),
        (&["3s"], 1_500),
        (&["10m"], 30_000),
        (&["90s", "4s"], 2_000),
        (&[], 30_000),
    ];
    for (timeouts, millis) in rows {
        let mut upstreams: Vec<String> = timeouts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!("{{name: u{i}, address: \"h:25\", tls: none, idle_timeout: {t}}}")
            })
            .collect();
        upstreams.push("{name: files, directory: out}".into());
        let yaml = format!(
            "listeners: [{{name: s, address: \"127.0.0.1:25\"}}]\nqueue: {{directory: q}}\nupstreams: [{}]\n",
            upstreams.join(", ")
        );
        let cfg: Config = serde_yaml::from_str(&yaml).unwrap();
        let ups = Upstreams::with_base_dir(&cfg, dir.path()).unwrap();
        assert_eq!(
            ups.reap_period(),
            Duration::from_millis(*millis),
            "{timeouts:?}"
        );
    }
}

/// At most `max_connections` at once, however many deliveries run concurrently.
#[tokio::test]
async fn pool_caps_connections() {
    let (addr, rec) = sink::start(Script {
        pipelining: true,
        ..Default::default()
    })
    .await;
    let pool = Pool::new(settings(addr, Security::Plain), 2, Duration::from_secs(30));
    let to = rcpts(&["a@x"]);
    let sends = (0..6).map(|_| pool_send(&pool, &to));
    let results = futures_join(sends).await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert!(
        pool.connections_opened() <= 2,
        "{}",
        pool.connections_opened()
    );
    assert_eq!(messages(&rec).len(), 6);
}

/// Joins futures on the current task (no extra crate).
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out = Vec::new();
    let mut pending: Vec<_> = set.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().map(Option::unwrap));
    out
}

const CONFIG: &str = r#"
hostname: relay.test
listeners: [{name: sub, address: "127.0.0.1:2525"}]
queue: {directory: spool}
upstreams:
  - {name: smart, address: "ADDR", tls: none, auth: {username: user, password_file: secret.txt}}
  - {name: files, directory: out}
routes:
  - {senders: ["@corp.example"], upstreams: [smart, files]}
  - {senders: ["*"], upstreams: [files]}
"#;

/// The facade end to end: config → router → SMTP upstream (password file, AUTH) and
/// directory upstream.
#[tokio::test]
async fn facade_from_config() {
    let (addr, rec) = sink::start(Script {
        auth: &["PLAIN"],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret\n").unwrap();
    let cfg: Config = serde_yaml::from_str(&CONFIG.replace("ADDR", &addr.to_string())).unwrap();
    let ups = Upstreams::with_base_dir(&cfg, dir.path()).unwrap();
    let from = |sender| crate::upstream::route::Origin {
        sender,
        listener: "submission",
        identity: None,
    };
    let route = |sender| ups.router().route(&from(sender), "r@x").unwrap().upstreams;
    assert_eq!(route("a@CORP.example"), ["smart", "files"]);
    assert_eq!(route(""), ["files"]);
    let to = rcpts(&["r@x"]);
    let rows = [
        ("smart", "250 2.0.0 Ok: queued"),
        ("files", "250 2.0.0 Ok: saved as Q1.eml"),
    ];
    for (upstream, reply) in rows {
        let mut source: &[u8] = b"body\r\n";
        let mut msg = Outgoing {
            sender: "a@corp.example",
            recipients: &to,
            prefix: b"H: v\r\n",
            body: &mut source,
            size: 12,
            body_8bit: false,
            smtputf8: false,
            dsn: Default::default(),
            upstream_dsn: false,
        };
        assert_eq!(
            ups.deliver(upstream, "Q1", &mut msg).await.unwrap(),
            vec![RcptOutcome {
                index: 0,
                result: RcptResult::Accepted(reply.into())
            }]
        );
    }
    assert_eq!(rec.lock().unwrap().auth, ["PLAIN |user|secret"]);
    assert_eq!(messages(&rec)[0].data, b"H: v\r\nbody\r\n");
    assert_eq!(
        std::fs::read(dir.path().join("out/Q1.eml")).unwrap(),
        b"H: v\r\nbody\r\n"
    );
    let mut source: &[u8] = b"";
    let mut msg = Outgoing {
        sender: "",
        recipients: &to,
        prefix: b"",
        body: &mut source,
        size: 0,
        body_8bit: false,
        smtputf8: false,
        dsn: Default::default(),
        upstream_dsn: false,
    };
    assert!(ups.deliver("nope", "Q2", &mut msg).await.is_err());
    assert!(ups.pool("smart").is_some() && ups.pool("files").is_none());
}

/// One error per broken upstream config, naming the key.
#[test]
fn build_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rows: &[(&str, &str)] = &[
        (
            "upstreams: [{name: a, address: \"h:25\", directory: d}]",
            "upstreams[a]: set exactly one of address and directory",
        ),
        (
            "upstreams: [{name: a}]",
            "upstreams[a]: set exactly one of address and directory",
        ),
        (
            "upstreams: [{name: a, address: \"h\", tls: none}]",
            "upstreams[a].address: \"h\" is not host:port",
        ),
        (
            "upstreams: [{name: a, address: \"::1:25\", tls: none}]",
            "upstreams[a].address: \"::1:25\" is not host:port",
        ),
        (
            "upstreams: [{name: a, address: \"h:25\", tls: none, auth: {username: u}}]",
            "upstreams[a].auth: set exactly one of password, password_file and oauth2",
        ),
        (
            "upstreams: [{name: a, address: \"h:25\", auth: {username: u, oauth2: {client_id: c, \
             token_url: \"http://127.0.0.1:9/t\", client_secret_file: s}}}]",
            "upstreams[a].auth.oauth2.provider: required (here or as the upstream's provider)",
        ),
        (
            "upstreams: [{name: a, address: \"h:25\", auth: {username: u, oauth2: {provider: generic, \
             client_id: c, token_url: \"http://127.0.0.1:9/t\", client_secret_file: none.secret}}}]",
            "upstreams[a].auth.oauth2.client_secret_file: ",
        ),
        (
            "upstreams: [{name: a, address: \"h:25\", auth: {username: u, oauth2: {provider: generic, \
             client_id: c, token_url: \"http://idp.test/t\", client_secret_file: s}}}]",
            "upstreams[a].auth.oauth2.token_url: \"http://idp.test/t\": a token endpoint must be https",
        ),
        (
            "upstreams: [{name: a, address: \"h:25\", tls: none}, {name: a, address: \"h:26\", tls: none}]",
            "upstreams: the name \"a\" is used twice",
        ),
        (
            "upstreams: [{name: a, address: \"h:25\", tls: none}]\nroutes: [{senders: [\"*\"], upstreams: [b]}]",
            "routes: upstream \"b\" is not defined in upstreams",
        ),
        (
            "upstreams: [{name: a, address: \"h:25\", tls: starttls, ca_file: none.pem}]",
            "upstreams[a]: cannot read CA file",
        ),
    ];
    for (upstreams, expected) in rows {
        let yaml = format!(
            "listeners: [{{name: s, address: \"127.0.0.1:25\"}}]\nqueue: {{directory: q}}\n{upstreams}\n"
        );
        let cfg: Config = serde_yaml::from_str(&yaml).unwrap();
        let err = Upstreams::with_base_dir(&cfg, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(expected), "{err}");
    }
}

#[test]
fn addresses() {
    let rows: &[(&str, Option<(&str, u16)>)] = &[
        ("smtp.office365.com:587", Some(("smtp.office365.com", 587))),
        ("10.0.0.1:25", Some(("10.0.0.1", 25))),
        ("[::1]:2525", Some(("::1", 2525))),
        ("::1:25", None),
        ("host", None),
        ("host:0", None),
        ("host:99999", None),
        (":25", None),
        ("[::1:25", None),
    ];
    for (input, expected) in rows {
        assert_eq!(split_address(input), *expected, "{input}");
    }
}

/// A reload keeps the pool of an upstream whose settings and files are unchanged, and
/// retires the pools of upstreams that changed (a setting, the hostname they greet with,
/// the contents of their password file) or are gone.
#[test]
fn rebuild_keeps_unchanged_pools() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    std::fs::write(&secret, "one\n").unwrap();
    let config = |hostname: &str, b_port: u16, with_c: bool| -> Config {
        let c = if with_c {
            ", {name: c, address: \"h:27\", tls: none}"
        } else {
            ""
        };
        let yaml = format!(
            "hostname: {hostname}\nlisteners: [{{name: s, address: \"127.0.0.1:25\"}}]\n\
             queue: {{directory: q}}\nupstreams: [{{name: a, address: \"h:25\", tls: none, \
             helo_name: me.test}}, {{name: b, address: \"h:{b_port}\", tls: none}}, \
             {{name: p, address: \"h:28\", tls: none, auth: {{username: u, password_file: {}}}}}, \
             {{name: files, directory: {}}}{c}]\n\
             routes: [{{senders: [\"*\"], upstreams: [a, b, p, files{}]}}]\n",
            secret.display(),
            dir.path().join("out").display(),
            if with_c { ", c" } else { "" },
        );
        serde_yaml::from_str(&yaml).unwrap()
    };
    let first = Upstreams::new(&config("one.test", 26, true)).unwrap();
    let pool = |u: &Upstreams, name: &str| u.pool(name).unwrap() as *const Pool;

    // The same config again: every SMTP pool is kept.
    let same = Upstreams::rebuild(&config("one.test", 26, true), &first).unwrap();
    assert_eq!(same.kept, ["a", "b", "c", "p"]);
    assert!(same.retired.is_empty());
    assert_eq!(pool(&same.upstreams, "a"), pool(&first, "a"));

    // b's port changed, c is gone, the hostname (b's and p's EHLO name) changed, and p's
    // password file was rewritten: only a, which names its own EHLO name, is kept.
    std::fs::write(&secret, "two\n").unwrap();
    let changed = Upstreams::rebuild(&config("two.test", 2526, false), &first).unwrap();
    assert_eq!(changed.kept, ["a"]);
    let mut retired: Vec<&str> = changed.retired.iter().map(|p| p.name()).collect();
    retired.sort();
    assert_eq!(retired, ["b", "c", "p"]);
    assert_eq!(pool(&changed.upstreams, "a"), pool(&first, "a"));
    assert_ne!(pool(&changed.upstreams, "b"), pool(&first, "b"));
    // The circuit breaker lives beside the pool: kept with it, new with a new pool.
    let breaker = |u: &Upstreams, name: &str| u.breaker(name).unwrap() as *const Breaker;
    assert_eq!(breaker(&changed.upstreams, "a"), breaker(&first, "a"));
    assert_ne!(breaker(&changed.upstreams, "b"), breaker(&first, "b"));
    assert!(changed.upstreams.breaker("files").is_none());
    assert!(changed.upstreams.pool("c").is_none());

    // Only the password file changes: p alone is retired.
    let before = Upstreams::new(&config("one.test", 26, true)).unwrap();
    std::fs::write(&secret, "three\n").unwrap();
    let rotated = Upstreams::rebuild(&config("one.test", 26, true), &before).unwrap();
    assert_eq!(rotated.kept, ["a", "b", "c"]);
    assert_eq!(rotated.retired.len(), 1);
    assert_eq!(rotated.retired[0].name(), "p");
}
