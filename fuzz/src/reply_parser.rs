//! `reply_parser`: the upstream reply parser on hostile bytes, and the round
//! trip from the server's reply writer to the client's parser.

use postern::smtp::reply::Reply;
use postern::smtp::reply_parser::{
    Capabilities, MAX_REPLY_BYTES, MAX_REPLY_LINES, UpstreamReply, parse_reply,
};

use crate::input::{Input, crlf_only};

/// Header: mode byte. Even: the rest is an upstream's byte stream. Odd: the
/// rest is the text of a reply postern writes (code and enhanced code from
/// two more bytes), which the client side must read back.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    if input.byte().is_multiple_of(2) {
        check_stream(input.rest());
    } else {
        let code = input.pick(&[
            220, 221, 235, 250, 334, 354, 421, 451, 452, 501, 535, 550, 554,
        ]);
        let detail = u16::from(input.byte());
        let text = String::from_utf8_lossy(input.rest());
        let lines = text.split('\n').count();
        // Keep within the parser's caps (each line adds at most 16 bytes of
        // code, enhanced code and CRLF).
        if lines > MAX_REPLY_LINES || text.len() + 16 * lines > MAX_REPLY_BYTES {
            return;
        }
        let class = u8::try_from(code / 100).unwrap_or(5);
        if matches!(class, 2 | 4 | 5) {
            check_wire_form(&Reply::new(
                code,
                (class, 7, detail),
                text.clone().into_owned(),
            ));
        }
        check_wire_form(&Reply::plain(code, text.into_owned()));
    }
}

/// Parses a stream of upstream replies until an error or the end.
fn check_stream(stream: &[u8]) {
    let mut rest = stream;
    loop {
        match parse_reply(rest) {
            Ok(Some((reply, n))) => {
                check_complete(rest, &reply, n);
                rest = &rest[n..];
            }
            Ok(None) => {
                // Incomplete is only allowed while under the byte cap.
                assert!(
                    rest.len() <= MAX_REPLY_BYTES,
                    "{} bytes incomplete",
                    rest.len()
                );
                return;
            }
            Err(_) => return,
        }
    }
}

fn check_complete(buf: &[u8], reply: &UpstreamReply, n: usize) {
    assert!(n > 0 && n <= buf.len() && n <= MAX_REPLY_BYTES, "used {n}");
    assert_eq!(buf[n - 1], b'\n', "reply does not end at a line end");
    assert!((200..600).contains(&reply.code), "code {}", reply.code);
    assert!(!reply.lines.is_empty() && reply.lines.len() <= MAX_REPLY_LINES);
    if let Some((class, _, _)) = reply.enhanced {
        assert_eq!(u16::from(class), reply.code / 100, "enhanced class");
    }
    let classes = [
        reply.is_positive(),
        reply.is_transient(),
        reply.is_permanent(),
    ];
    assert_eq!(classes.iter().filter(|&&c| c).count(), 1, "{classes:?}");
    // Only the reply's own bytes decide it, and it is incomplete without its
    // last LF.
    assert_eq!(
        parse_reply(&buf[..n]),
        Ok(Some((reply.clone(), n))),
        "reply depends on bytes after it"
    );
    assert_eq!(
        parse_reply(&buf[..n - 1]),
        Ok(None),
        "complete before its LF"
    );
    let _ = reply.to_string();
    let _ = Capabilities::from_ehlo(reply);
}

/// What postern writes is CRLF-only, ends in CRLF, and reads back through the
/// upstream parser as the same code, enhanced code and lines.
pub fn check_wire_form(reply: &Reply) {
    let mut wire = Vec::new();
    reply.write_to(&mut wire);
    assert!(wire.ends_with(b"\r\n"), "reply without CRLF: {wire:?}");
    assert!(crlf_only(&wire), "bare CR or LF in reply {wire:?}");
    let (back, n) = match parse_reply(&wire) {
        Ok(Some(parsed)) => parsed,
        other => panic!("own reply {wire:?} does not parse: {other:?}"),
    };
    assert_eq!(n, wire.len(), "own reply {wire:?} parsed as several");
    assert_eq!(back.code, reply.code(), "code of {wire:?}");
    if let Some(e) = reply.enhanced() {
        assert_eq!(back.enhanced, Some((e.class, e.subject, e.detail)));
        let want: Vec<String> = reply
            .text()
            .split('\n')
            .map(|l| l.trim_ascii_start().to_owned())
            .collect();
        assert_eq!(back.lines, want, "lines of {wire:?}");
    }
}
