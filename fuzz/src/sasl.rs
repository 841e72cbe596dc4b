//! `sasl`: PLAIN and LOGIN exchanges fed lines from the input. Challenges are
//! 334s, errors are 5xx, an exchange ends within two challenges, Debug never
//! shows a password, and the credentials it yields are what a client that
//! encodes them properly gets back.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use postern::smtp::sasl::{self, Credentials, Mechanism, SaslProgress, SaslStep};

use crate::input::Input;
use crate::reply_parser::check_wire_form;

/// Header: bit 0 picks the mechanism, bit 1 says whether the first line is
/// the AUTH command's initial response. The rest is client lines (LF-split).
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let mechanism = if mode & 1 == 0 {
        Mechanism::Plain
    } else {
        Mechanism::Login
    };
    // As the framer hands them over: LF gone, one CR before it gone.
    let mut lines = input
        .rest()
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let initial = if mode & 2 == 0 {
        None
    } else {
        // As the command parser hands it over: one non-empty UTF-8 word.
        match lines.next().map(std::str::from_utf8) {
            Some(Ok(ir)) if !ir.is_empty() && !ir.contains(' ') => Some(ir),
            _ => return,
        }
    };
    let mut progress = sasl::start(mechanism, initial);
    let mut challenges = 0;
    loop {
        match progress {
            Ok(SaslProgress::Challenge(step, reply)) => {
                challenges += 1;
                assert!(
                    challenges <= 2,
                    "{mechanism:?} sent {challenges} challenges"
                );
                assert_eq!(reply.code(), 334, "challenge {reply:?}");
                check_wire_form(&reply);
                let shown = format!("{step:?}");
                let known = ["PlainResponse", "LoginUsername", "LoginPassword"];
                assert!(
                    known.contains(&shown.as_str()),
                    "SaslStep Debug shows {shown}"
                );
                let Some(line) = lines.next() else { return };
                progress = sasl::step(step, line);
            }
            Ok(SaslProgress::Done(creds)) => {
                check_credentials(mechanism, &creds);
                return;
            }
            Err(e) => {
                let reply = e.reply();
                assert!(reply.is_permanent(), "{e:?} answered with {reply:?}");
                check_wire_form(&reply);
                return;
            }
        }
    }
}

fn check_credentials(mechanism: Mechanism, creds: &Credentials) {
    assert!(!creds.username.is_empty() && !creds.password.is_empty());
    let redacted = Credentials {
        password: "\u{1}".to_owned(),
        ..creds.clone()
    };
    assert_eq!(
        format!("{creds:?}"),
        format!("{redacted:?}"),
        "Debug shows the password"
    );
    let progress = match mechanism {
        Mechanism::Plain => {
            for part in [&creds.authzid, &creds.username, &creds.password] {
                assert!(!part.contains('\0'), "NUL inside a PLAIN field");
            }
            let message = format!("{}\0{}\0{}", creds.authzid, creds.username, creds.password);
            let encoded = STANDARD.encode(message);
            let direct = sasl::start(Mechanism::Plain, Some(&encoded));
            let stepped = sasl::step(SaslStep::PlainResponse, encoded.as_bytes());
            assert_eq!(direct, stepped, "initial response and 334 response differ");
            direct
        }
        Mechanism::Login => {
            assert!(creds.authzid.is_empty(), "LOGIN with an authzid");
            let user = STANDARD.encode(&creds.username);
            let pass = STANDARD.encode(&creds.password);
            match sasl::step(SaslStep::LoginUsername, user.as_bytes()) {
                Ok(SaslProgress::Challenge(step, _)) => sasl::step(step, pass.as_bytes()),
                other => panic!("LOGIN username step gave {other:?}"),
            }
        }
    };
    assert_eq!(
        progress,
        Ok(SaslProgress::Done(creds.clone())),
        "credentials do not round-trip"
    );
}
