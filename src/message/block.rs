//! Collects the header section of a message as its bytes stream in, so postern can check
//! and rewrite From/Sender before the message reaches the spool.
//!
//! Sans-I/O in the smtp-proto style: [`HeaderBlock::feed`] takes whatever chunk the DATA
//! decoder produced (CRLF line endings, dot-unstuffed) and answers with a [`Collect`] value;
//! "incomplete" is a value, not an error. Memory is bounded by the limit given to
//! [`HeaderBlock::new`]: bytes past it are never buffered.

/// What the collector knows after a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collect {
    /// The header section has not ended yet: feed more bytes.
    Incomplete,
    /// The header section is complete. `body_start` is the offset in the chunk just fed of
    /// the first byte after the empty line (the first body byte, or the chunk's length when
    /// the body starts in a later chunk). At end of message without an empty line, it is 0.
    Complete {
        /// Where the body starts within the chunk just fed.
        body_start: usize,
    },
    /// The header section is longer than the limit: the message should be refused. Nothing
    /// more is buffered.
    TooLarge,
}

/// Where collection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Still inside the header section.
    Collecting,
    /// Ended by the empty line (`separated`) or by the end of the message.
    Complete { separated: bool },
    /// The limit was exceeded.
    TooLarge,
}

/// Buffers the header section of one message, up to a bound.
///
/// RFC 5322 2.1: "A message consists of header fields ... optionally followed by a message
/// body", separated by an empty line (a line with nothing preceding the CRLF). So the
/// section ends at the first CRLF CRLF, or at a CRLF at the very start (a message with no
/// header fields), or at the end of the message when there is no body.
#[derive(Debug, Clone)]
pub struct HeaderBlock {
    /// The header section seen so far; once complete, the fields only (each ending in its
    /// CRLF, without the empty line).
    buf: Vec<u8>,
    /// The most bytes the section (fields and empty line) may take.
    limit: usize,
    /// Where collection stands.
    state: State,
}

impl HeaderBlock {
    /// A collector that refuses header sections longer than `limit` octets (fields and
    /// the empty line): `limits.max_header_size`.
    pub fn new(limit: usize) -> HeaderBlock {
        HeaderBlock {
            buf: Vec::new(),
            limit,
            state: State::Collecting,
        }
    }

    /// Feeds the next bytes of the message. Once complete, every later chunk is all body
    /// (`Complete { body_start: 0 }`); once too large, it stays [`Collect::TooLarge`].
    pub fn feed(&mut self, chunk: &[u8]) -> Collect {
        match self.state {
            State::Complete { .. } => return Collect::Complete { body_start: 0 },
            State::TooLarge => return Collect::TooLarge,
            State::Collecting => {}
        }
        let start = self.buf.len();
        let take = chunk.len().min(self.limit.saturating_sub(start));
        self.buf
            .extend_from_slice(chunk.get(..take).unwrap_or_default());
        if let Some(end) = section_end(&self.buf, start) {
            // `end` is past the empty line; the fields stop before its CRLF.
            self.buf.truncate(end.saturating_sub(2));
            self.state = State::Complete { separated: true };
            return Collect::Complete {
                body_start: end.saturating_sub(start),
            };
        }
        if take < chunk.len() {
            self.buf = Vec::new();
            self.state = State::TooLarge;
            return Collect::TooLarge;
        }
        Collect::Incomplete
    }

    /// Marks the end of the message: a section still open ends here, with no body.
    pub fn finish(&mut self) -> Collect {
        match self.state {
            State::Collecting => {
                self.state = State::Complete { separated: false };
                Collect::Complete { body_start: 0 }
            }
            State::Complete { .. } => Collect::Complete { body_start: 0 },
            State::TooLarge => Collect::TooLarge,
        }
    }

    /// True once the header section is complete.
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Complete { .. })
    }

    /// The header fields collected so far (once complete: all of them, each with its CRLF,
    /// without the empty line). Empty after [`Collect::TooLarge`].
    pub fn fields(&self) -> &[u8] {
        &self.buf
    }

    /// What separates the fields from the body when writing the message out: `"\r\n"` when
    /// the message had the empty line, nothing when it ended inside its header section.
    pub fn separator(&self) -> &'static [u8] {
        match self.state {
            State::Complete { separated: false } => b"",
            _ => b"\r\n",
        }
    }

    /// Takes the collected fields, leaving the collector empty.
    pub fn take_fields(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// The offset just past the empty line ending the header section in `buf`, looking only at
/// matches that end at or after `new` (the first byte not seen by an earlier call).
fn section_end(buf: &[u8], new: usize) -> Option<usize> {
    // A message that starts with CRLF has no header fields (RFC 5322 2.1).
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    let from = new.saturating_sub(3);
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a run over one message gives: the fields, the separator, and the body bytes
    /// the caller would pass through; or `None` for too large.
    fn run(chunks: &[&[u8]], limit: usize) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let mut block = HeaderBlock::new(limit);
        let mut body = Vec::new();
        for chunk in chunks {
            match block.feed(chunk) {
                Collect::Incomplete => {}
                Collect::Complete { body_start } => body.extend_from_slice(&chunk[body_start..]),
                Collect::TooLarge => return None,
            }
        }
        if block.finish() == Collect::TooLarge {
            return None;
        }
        let sep = block.separator().to_vec();
        Some((block.take_fields(), sep, body))
    }

    type Row = (
        &'static [u8],
        usize,
        Option<(&'static [u8], &'static [u8], &'static [u8])>,
    );

    const ROWS: &[Row] = &[
        (
            b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n",
            1024,
            Some((b"From: a@b\r\nSubject: x\r\n", b"\r\n", b"body\r\n")),
        ),
        // The first CRLF CRLF ends it; later empty lines are body.
        (
            b"A: 1\r\n\r\n\r\nB: 2\r\n\r\n",
            1024,
            Some((b"A: 1\r\n", b"\r\n", b"\r\nB: 2\r\n\r\n")),
        ),
        // No header fields at all.
        (b"\r\nbody\r\n", 1024, Some((b"", b"\r\n", b"body\r\n"))),
        (b"\r\n", 1024, Some((b"", b"\r\n", b""))),
        // No body: the section ends with the message.
        (
            b"A: 1\r\nB: 2\r\n",
            1024,
            Some((b"A: 1\r\nB: 2\r\n", b"", b"")),
        ),
        (b"", 1024, Some((b"", b"", b""))),
        // Folded fields keep their continuation lines.
        (
            b"A: 1\r\n 2\r\n\r\nx",
            1024,
            Some((b"A: 1\r\n 2\r\n", b"\r\n", b"x")),
        ),
        // A bare LF pair is not the end (the decoder emits CRLF).
        (
            b"A: 1\n\nB\r\n\r\n",
            1024,
            Some((b"A: 1\n\nB\r\n", b"\r\n", b"")),
        ),
        // Exactly at the limit (fields and empty line) fits; one more does not.
        (
            b"A: 1\r\n\r\nbody",
            8,
            Some((b"A: 1\r\n", b"\r\n", b"body")),
        ),
        (b"A: 12\r\n\r\nbody", 8, None),
        (b"A: 1234567890\r\n", 8, None),
        // No empty line and exactly the limit: complete at the end of the message.
        (b"A: 1\r\n", 6, Some((b"A: 1\r\n", b"", b""))),
        (b"\r\n", 0, None),
    ];

    /// Every row split into two chunks at every point, and fed byte by byte.
    #[test]
    fn collects_at_every_split() {
        for (msg, limit, want) in ROWS {
            let want = want.map(|(f, s, b)| (f.to_vec(), s.to_vec(), b.to_vec()));
            let show = String::from_utf8_lossy(msg);
            for split in 0..=msg.len() {
                let (a, b) = msg.split_at(split);
                assert_eq!(run(&[a, b], *limit), want, "{show:?} split {split}");
            }
            let bytes: Vec<&[u8]> = msg.chunks(1).collect();
            assert_eq!(run(&bytes, *limit), want, "{show:?} byte by byte");
        }
    }

    /// Three-way splits around the separator, where a CRLF CRLF straddles two boundaries.
    #[test]
    fn separator_across_three_chunks() {
        let msg: &[u8] = b"Subject: x\r\n\r\nbody";
        for i in 0..=msg.len() {
            for j in i..=msg.len() {
                let got = run(&[&msg[..i], &msg[i..j], &msg[j..]], 1024);
                let want = (
                    b"Subject: x\r\n".to_vec(),
                    b"\r\n".to_vec(),
                    b"body".to_vec(),
                );
                assert_eq!(got, Some(want), "splits {i} {j}");
            }
        }
    }

    #[test]
    fn sticky_states() {
        let mut b = HeaderBlock::new(4);
        assert_eq!(b.feed(b"A: 1"), Collect::Incomplete);
        assert_eq!(b.feed(b"2"), Collect::TooLarge);
        assert_eq!(b.feed(b"\r\n\r\n"), Collect::TooLarge);
        assert_eq!(b.finish(), Collect::TooLarge);
        assert!(b.fields().is_empty() && !b.is_complete());
        let mut b = HeaderBlock::new(64 * 1024);
        assert_eq!(b.feed(b"A: 1\r\n\r"), Collect::Incomplete);
        assert_eq!(b.feed(b"\nxy"), Collect::Complete { body_start: 1 });
        assert_eq!(b.feed(b"more"), Collect::Complete { body_start: 0 });
        assert_eq!(b.finish(), Collect::Complete { body_start: 0 });
        assert_eq!(
            (b.fields(), b.separator()),
            (&b"A: 1\r\n"[..], &b"\r\n"[..])
        );
    }
}
