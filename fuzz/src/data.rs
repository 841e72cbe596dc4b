//! `data`: the DATA decoder under both bare-line-ending policies, against
//! what RFC 5321 and the decoder's docs promise.
//!
//! - The message ends exactly after the first CRLF "." CRLF of the stream
//!   (counting the CRLF that ended the DATA command), under either policy
//!   and however the stream is split: a bare CR or LF never ends it.
//! - Under `Reject`, a message with a bare CR or LF is refused; otherwise the
//!   body is the lines with one leading dot removed, or `TooBig` past the cap.
//! - The body never holds a bare CR or LF, never exceeds the cap, and ends in
//!   CRLF; dot-stuffing it again and decoding gives it back unchanged (what
//!   postern relays upstream ends where the client's message ended).

use postern::smtp::data::{BareLf, DataDecoder, DataEnd};

use crate::input::{Input, chunks, crlf_only};

/// What a decoder run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decoded {
    body: Vec<u8>,
    end: Option<DataEnd>,
    consumed: usize,
}

impl Decoded {
    /// What the session acts on: the body only counts for a complete message
    /// (a refused one is dropped, and how much of it was kept before the
    /// refusal depends on read boundaries).
    fn outcome(&self) -> (Option<DataEnd>, usize, Option<&[u8]>) {
        let body = (self.end == Some(DataEnd::Complete)).then_some(self.body.as_slice());
        (self.end, self.consumed, body)
    }
}

/// Header: size-cap selector, split seed; the rest is the bytes after 354.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let max = input.pick(&[0, 1, 7, 64, 1000, 10240, u64::MAX]);
    let seed = input.byte();
    let stream = input.rest();

    let reject = decode(&chunks(stream, seed), BareLf::Reject, max);
    let normal = decode(&chunks(stream, seed), BareLf::Normalise, max);
    if seed != 0 {
        for (run, policy) in [(&reject, BareLf::Reject), (&normal, BareLf::Normalise)] {
            let whole = decode(&[stream], policy, max);
            assert_eq!(
                run.outcome(),
                whole.outcome(),
                "{policy:?} depends on read boundaries"
            );
        }
    }

    // The terminator, by definition.
    let end = terminator(stream);
    for run in [&reject, &normal] {
        assert_eq!(run.end.is_some(), end.is_some(), "end found: {run:?}");
        assert_eq!(run.consumed, end.unwrap_or(stream.len()), "end position");
    }
    let Some(end) = end else { return };

    // Under Reject the outcome is fixed by the content.
    let content = &stream[..end - 3];
    let expected = if crlf_only(content) {
        let body = unstuff(content);
        if body.len() as u64 > max {
            DataEnd::TooBig
        } else {
            assert_eq!(reject.body, body, "Reject body");
            DataEnd::Complete
        }
    } else {
        DataEnd::BareLineEnding
    };
    assert_eq!(reject.end, Some(expected), "Reject outcome");

    // Normalise never refuses for line endings, and agrees when there were none.
    assert_ne!(
        normal.end,
        Some(DataEnd::BareLineEnding),
        "Normalise refused"
    );
    if expected != DataEnd::BareLineEnding {
        assert_eq!(
            normal.outcome(),
            reject.outcome(),
            "policies differ without bare line endings"
        );
    }
    if normal.end == Some(DataEnd::Complete) {
        // What postern relays, stuffed again, decodes to the same body.
        let mut wire = stuff(&normal.body);
        wire.extend_from_slice(b".\r\n");
        let again = decode(&[&wire], BareLf::Reject, u64::MAX);
        let want = Decoded {
            body: normal.body.clone(),
            end: Some(DataEnd::Complete),
            consumed: wire.len(),
        };
        assert_eq!(again, want, "re-stuffed body decodes differently");
    }
}

/// Feeds `reads` like the session: stops at the end, checks each call.
fn decode(reads: &[&[u8]], policy: BareLf, max: u64) -> Decoded {
    let mut dec = DataDecoder::new(policy, max);
    let mut body = Vec::new();
    let mut consumed = 0;
    let mut end = None;
    for read in reads {
        let before = body.len();
        let (n, e) = dec.feed(read, &mut body);
        assert!(n <= read.len(), "consumed {n} of {}", read.len());
        // A bare LF may become CRLF, and up to two held-back bytes (". CR")
        // may come out with the next one.
        assert!(body.len() - before <= 2 * n + 2, "body grew too fast");
        assert_eq!(
            dec.size(),
            body.len() as u64,
            "size() is not the body length"
        );
        assert!(dec.size() <= max, "body over the cap");
        consumed += n;
        if e.is_some() {
            end = e;
            break;
        }
        assert_eq!(n, read.len(), "stopped before the end without a reason");
    }
    assert!(crlf_only(&body), "bare CR or LF in the body");
    if end == Some(DataEnd::Complete) {
        assert!(
            body.is_empty() || body.ends_with(b"\r\n"),
            "body without CRLF"
        );
    }
    Decoded {
        body,
        end,
        consumed,
    }
}

/// Bytes consumed up to and including the first CRLF "." CRLF, where the
/// stream is taken to start right after a CRLF.
fn terminator(stream: &[u8]) -> Option<usize> {
    let mut s = b"\r\n".to_vec();
    s.extend_from_slice(stream);
    s.windows(5).position(|w| w == b"\r\n.\r\n").map(|p| p + 3)
}

/// RFC 5321 4.5.2, receiver side, on CRLF-only content.
fn unstuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in content.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// RFC 5321 4.5.2, sender side.
fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}
