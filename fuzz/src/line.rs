//! `line`: the command-line framer against a three-line model, under any
//! split of the input into reads.

use postern::smtp::line::{AUTH_LINE_CAP, COMMAND_LINE_CAP, Frame, LineFramer};

use crate::input::{Input, chunks};

/// A frame with its bytes copied out of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Line(Vec<u8>),
    TooLong,
}

/// Header: cap selector (the two real caps, or a small one so discard mode
/// is reached with short inputs), small-cap value, split seed.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let selector = input.byte();
    let small = 2 + usize::from(input.byte());
    let cap = match selector % 4 {
        0 => COMMAND_LINE_CAP,
        1 => AUTH_LINE_CAP,
        _ => small,
    };
    let seed = input.byte();
    let stream = input.rest();
    assert_eq!(
        frames(&chunks(stream, seed), cap),
        model(stream, cap),
        "framing depends on read boundaries (cap {cap}, seed {seed})"
    );
}

/// The framer's contract, read off its docs: a line ends at LF, one CR before
/// the LF is dropped, a line is too long when it plus CRLF exceeds the cap,
/// and an unterminated tail yields nothing yet.
fn model(stream: &[u8], cap: usize) -> Vec<Owned> {
    let mut lines: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    lines.pop(); // the part after the last LF (possibly empty) is incomplete
    lines
        .into_iter()
        .map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            if l.len() + 2 > cap {
                Owned::TooLong
            } else {
                Owned::Line(l.to_vec())
            }
        })
        .collect()
}

/// Drives the framer like the shell: append each read, take frames until
/// `Incomplete`, keep what was not consumed.
fn frames(reads: &[&[u8]], cap: usize) -> Vec<Owned> {
    let mut framer = LineFramer::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            let (n, frame) = framer.next(&buf, cap);
            assert!(n <= buf.len(), "consumed {n} of {}", buf.len());
            let done = match frame {
                Frame::Line(line) => {
                    assert!(line.len() + 2 <= cap, "line over the cap");
                    assert!(!line.contains(&b'\n'), "LF inside a line");
                    let ending = buf.get(line.len()..n).unwrap_or_default();
                    assert!(
                        ending == b"\n" || ending == b"\r\n",
                        "line not followed by its ending: {ending:?}"
                    );
                    assert!(buf.starts_with(line), "line is not the buffer's head");
                    out.push(Owned::Line(line.to_vec()));
                    false
                }
                Frame::TooLong => {
                    assert_eq!(buf.get(n - 1), Some(&b'\n'), "TooLong before the LF");
                    assert!(!framer.is_discarding(), "still discarding after TooLong");
                    out.push(Owned::TooLong);
                    false
                }
                Frame::Incomplete => true,
            };
            buf.drain(..n);
            if done {
                break;
            }
        }
        // The memory bound the framer exists for: the shell never holds a
        // whole cap's worth of bytes without a line in it.
        assert!(buf.len() < cap, "buffer holds {} >= cap {cap}", buf.len());
    }
    out
}
