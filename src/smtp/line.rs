//! Command line framer: splits the read buffer into command lines, enforces
//! the line cap and discards over-long lines so the dialogue stays in step.
//!
//! The framer never copies: it returns a slice of the caller's buffer. It
//! keeps one bit of state across calls (discarding an over-long line), so the
//! shell's buffer never has to hold more than the cap plus one read.

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets, and 4.5.3.1.6
/// allows 1000 for text lines; postern accepts up to 1000 octets including
/// CRLF for commands, like Postfix, to tolerate long parameter lists.
pub const COMMAND_LINE_CAP: usize = 1000;

/// RFC 4954 4: an AUTH command or SASL response line may be up to 12288
/// octets including CRLF.
pub const AUTH_LINE_CAP: usize = 12288;

/// What the framer found at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line, without its LF and without one CR directly before it.
    Line(&'a [u8]),
    /// An over-long line ended; its bytes were discarded. Answer 500 5.5.2.
    TooLong,
    /// No complete line yet: keep the unconsumed bytes and read more.
    Incomplete,
}

/// Line framer state.
#[derive(Debug, Clone, Default)]
pub struct LineFramer {
    /// True while reading on to the LF that ends an over-long line.
    discarding: bool,
}

impl LineFramer {
    /// A framer at the start of a line.
    pub fn new() -> LineFramer {
        LineFramer::default()
    }

    /// True while an over-long line is being discarded.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// Looks for the next line in `buf`, whose cap (including CRLF) is `cap`.
    /// Returns the bytes consumed and the frame.
    ///
    /// A line ends at LF; a CR directly before it is stripped, so a bare LF
    /// also ends a command (as in Postfix). Other CRs stay in the line for
    /// the caller to reject.
    pub fn next<'a>(&mut self, buf: &'a [u8], cap: usize) -> (usize, Frame<'a>) {
        let lf = buf.iter().position(|&b| b == b'\n');
        if self.discarding {
            // chasquid / smtp-proto: read on and discard up to the line end,
            // then report once, so later commands are not taken from the
            // middle of the long line.
            return match lf {
                Some(i) => {
                    self.discarding = false;
                    (i + 1, Frame::TooLong)
                }
                None => (buf.len(), Frame::Incomplete),
            };
        }
        match lf {
            Some(i) => {
                let line = buf.get(..i).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                // Count the line as if it ended in CRLF, whatever its ending.
                if line.len() + 2 > cap {
                    (i + 1, Frame::TooLong)
                } else {
                    (i + 1, Frame::Line(line))
                }
            }
            // `cap` bytes without LF: the line will be at least cap + 1 long.
            None if buf.len() >= cap => {
                self.discarding = true;
                (buf.len(), Frame::Incomplete)
            }
            None => (0, Frame::Incomplete),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: test code
mod tests {
    use super::*;

    /// Runs the framer to exhaustion over `chunks`, collecting frames as
    /// strings ("<long>" for TooLong), keeping unconsumed bytes like a shell.
    fn frames(chunks: &[&[u8]], cap: usize) -> Vec<String> {
        let mut framer = LineFramer::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                let (n, frame) = framer.next(&buf, cap);
                let done = match frame {
                    Frame::Line(l) => {
                        out.push(String::from_utf8_lossy(l).into_owned());
                        false
                    }
                    Frame::TooLong => {
                        out.push("<long>".to_owned());
                        false
                    }
                    Frame::Incomplete => true,
                };
                buf.drain(..n);
                assert!(buf.len() <= cap, "buffer grew past the cap");
                if done {
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn table_whole_split_bytewise() {
        let long = format!("{}\r\nNOOP\r\n", "x".repeat(1200));
        let exact = format!("{}\r\n", "y".repeat(998));
        let over = format!("{}\r\nQUIT\n", "y".repeat(999));
        let rows: Vec<(&[u8], Vec<&str>)> = vec![
            (b"EHLO a\r\nNOOP\r\n", vec!["EHLO a", "NOOP"]),
            (b"EHLO a\nNOOP\n", vec!["EHLO a", "NOOP"]),
            (b"EHLO a\rNOOP\r", vec![]),
            (b"A\r\r\nB\n", vec!["A\r", "B"]),
            (b"\r\n\n", vec!["", ""]),
            (b"PARTIAL", vec![]),
            (long.as_bytes(), vec!["<long>", "NOOP"]),
            (exact.as_bytes(), vec![exact.trim_end()]),
            (over.as_bytes(), vec!["<long>", "QUIT"]),
        ];
        for (input, want) in &rows {
            assert_eq!(frames(&[input], COMMAND_LINE_CAP), *want, "whole {input:?}");
            for at in 0..=input.len() {
                let (a, b) = input.split_at(at);
                assert_eq!(frames(&[a, b], COMMAND_LINE_CAP), *want, "split {at}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(frames(&bytes, COMMAND_LINE_CAP), *want, "bytewise");
        }
    }

    #[test]
    fn auth_cap_is_larger() {
        let line = format!("AUTH PLAIN {}\r\n", "Q".repeat(5000));
        assert_eq!(frames(&[line.as_bytes()], COMMAND_LINE_CAP), vec!["<long>"]);
        assert_eq!(
            frames(&[line.as_bytes()], AUTH_LINE_CAP),
            vec![line.trim_end()]
        );
    }
}
