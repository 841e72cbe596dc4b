//! `wrap`: the wrapping of lines too long for the wire (postern's
//! `upstream::wrap`), against what its docs promise.
//!
//! - No output line is over 998 octets (RFC 5322 2.1.1), whatever the input.
//! - Every input octet comes out through `put`, in order: removing the breaks
//!   the wrapper inserted gives the input back exactly.
//! - The output does not depend on how the input is split into pushes.
//! - A piece given to `put` has no LF before its last octet (what lets the
//!   SMTP client's dot-stuffer look only at first octets).
//! - `Count` counts exactly the octets the breaks add (the SIZE postern
//!   declares upstream).

use postern::upstream::wrap::{Count, MAX_LINE, Sink, Wrapper};

use crate::input::{Input, chunks};

/// The wrapped output (`wire`) and the octets given to `put` alone (`plain`).
#[derive(Debug, Default, PartialEq, Eq)]
struct Out {
    wire: Vec<u8>,
    plain: Vec<u8>,
}

impl Sink for Out {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(lf) = bytes.iter().position(|&b| b == b'\n') {
            assert_eq!(lf + 1, bytes.len(), "an LF inside a piece: {bytes:?}");
        }
        self.wire.extend_from_slice(bytes);
        self.plain.extend_from_slice(bytes);
    }

    fn brk(&mut self, bytes: &'static [u8]) {
        self.wire.extend_from_slice(bytes);
    }
}

fn wrap(pieces: &[&[u8]], sink: &mut impl Sink) {
    let mut w = Wrapper::new();
    for piece in pieces {
        w.push(piece, sink);
    }
    w.finish(sink);
}

/// Header: a split seed and a repeat count; the rest is the message, with its
/// last line repeated that many times (so that short fuzzer inputs make long
/// lines, in the header section or, after an empty line, in the body).
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let seed = input.byte();
    let times = 1 + usize::from(input.byte() % 16);
    let rest = input.rest();
    let cut = rest
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |lf| lf + 1);
    let (head, last) = rest.split_at(cut);
    let message = [head, &last.repeat(times)].concat();

    let mut whole = Out::default();
    wrap(&[&message], &mut whole);
    let mut split = Out::default();
    wrap(&chunks(&message, seed), &mut split);
    assert_eq!(split, whole, "the split changed the output");
    assert_eq!(whole.plain, message, "input octets lost, added or moved");
    for line in whole.wire.split_inclusive(|&b| b == b'\n') {
        let content = line
            .strip_suffix(b"\r\n")
            .or_else(|| line.strip_suffix(b"\n"))
            .unwrap_or(line);
        assert!(
            content.len() <= MAX_LINE,
            "a line of {} octets",
            content.len()
        );
    }
    let mut count = Count::default();
    wrap(&chunks(&message, seed.wrapping_add(1)), &mut count);
    assert_eq!(count.0 as usize, whole.wire.len() - message.len());
}
