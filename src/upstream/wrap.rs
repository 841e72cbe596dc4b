//! Lines too long for the wire, made short enough.
//!
//! RFC 5322 2.1.1: a line is at most 998 octets plus CRLF; RFC 5321 4.5.3.1.6: a text line is
//! at most 1000 octets with its CRLF, not counting the dot doubled for transparency. Many
//! upstreams refuse longer lines, or cut them where they please. [`Wrapper`] sits between
//! the stored message (postern's prefix, then the body as received) and what an upstream
//! gets (the dot-stuffer of the SMTP client, or a directory upstream's file):
//!
//! - a line within the limit passes through untouched, in one piece: the cost for normal
//!   mail is the one scan for LF per line that the dot-stuffer needed anyway;
//! - in the header section (up to the first empty line, RFC 5322 2.1), a longer field is
//!   folded (RFC 5322 2.2.3): CRLF goes in before the last whitespace that leaves at most
//!   998 octets on the line, so unfolding gives the field back exactly;
//! - a header line without such whitespace is broken the Postfix way (below), after the
//!   last whole UTF-8 character that fits; unfolding that leaves one extra space: a damaged
//!   field is better than a message the next hop refuses;
//! - in the body, as Postfix's `smtp_line_length_limit` (default 998) does: CRLF SPACE is
//!   inserted after 998 octets, which keeps base64 and quoted-printable MIME parts decodable.
//!
//! Every octet of the input comes out, in order, through [`Sink::put`]; every inserted one
//! through [`Sink::brk`]. Counting the inserted octets ([`Count`]) gives the size wrapping
//! adds, so SIZE (RFC 1870) can be declared before anything is sent. A piece given to `put`
//! never holds an LF before its last octet, so a dot-stuffer sink only looks at first octets.

/// The longest line, CRLF excluded (RFC 5322 2.1.1).
pub const MAX_LINE: usize = 998;

/// Where wrapped output goes.
pub trait Sink {
    /// Message octets, in order, in pieces of at most one line.
    fn put(&mut self, bytes: &[u8]);
    /// A break the wrapper inserts: `CRLF` before folding whitespace, or `CRLF SP`.
    fn brk(&mut self, bytes: &'static [u8]) {
        self.put(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts the octets wrapping inserts; the message's own octets are not looked at.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u64);

impl Sink for Count {
    fn put(&mut self, _: &[u8]) {}

    fn brk(&mut self, bytes: &'static [u8]) {
        self.0 = self.0.saturating_add(bytes.len() as u64);
    }
}

/// CRLF before existing folding whitespace (RFC 5322 2.2.3).
const FOLD: &[u8] = b"\r\n";
/// CRLF SPACE: a break where the input has no whitespace (Postfix's way).
const BREAK: &[u8] = b"\r\n ";

/// Streaming line wrapper over one message; feed it any split of the input.
#[derive(Debug, Default)]
pub struct Wrapper {
    /// Past the first empty line: in the body.
    body: bool,
    /// Octets already given out on the current output line (the body's content, or the
    /// space of an inserted [`BREAK`] in the header section).
    line: usize,
    /// Header section: the current line's octets not given out yet, at most one more than
    /// fits, so a fold can go in before any of them.
    held: Vec<u8>,
    /// The last push ended with CR inside a line: CRLF if the next octet is LF.
    cr: bool,
}

impl Wrapper {
    /// A wrapper at the start of a message (in its header section).
    pub fn new() -> Wrapper {
        Wrapper::default()
    }

    /// Wraps `data`, the next octets of the message, into `sink`.
    pub fn push(&mut self, mut data: &[u8], sink: &mut impl Sink) {
        if data.is_empty() {
            return;
        }
        if self.cr {
            self.cr = false;
            if let Some(rest) = data.strip_prefix(b"\n") {
                self.end_line(b"\r\n", sink);
                data = rest;
            } else {
                self.content(b"\r", sink);
            }
        }
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(lf) => {
                    let (line, rest) = data.split_at(lf + 1);
                    self.whole_line(line, sink);
                    data = rest;
                }
                None => {
                    // A line continued in the next push. A CR at its end may be half of
                    // the CRLF: it is not content until the next octet says so.
                    match data.strip_suffix(b"\r") {
                        Some(head) => {
                            self.content(head, sink);
                            self.cr = true;
                        }
                        None => self.content(data, sink),
                    }
                    break;
                }
            }
        }
    }

    /// Gives out what is held at the end of the message. The last line keeps whatever
    /// ending it had (none, if the message does not end with one).
    pub fn finish(&mut self, sink: &mut impl Sink) {
        if self.cr {
            self.cr = false;
            self.content(b"\r", sink);
        }
        if !self.held.is_empty() {
            sink.put(&self.held);
            self.held.clear();
        }
    }

    /// A line up to and including its LF.
    fn whole_line(&mut self, line: &[u8], sink: &mut impl Sink) {
        let ending = if line.ends_with(b"\r\n") { 2 } else { 1 };
        let content = line.len() - ending;
        if self.held.is_empty() && self.line + content <= MAX_LINE {
            // The fast path: the whole line fits (the usual case, every line of most mail).
            if content == 0 && self.line == 0 {
                self.body = true;
            }
            self.line = 0;
            sink.put(line);
            return;
        }
        let (content, ending) = line.split_at(content);
        self.content(content, sink);
        self.end_line(ending, sink);
    }

    /// Ends the current line with `ending` (CRLF or a lone LF).
    fn end_line(&mut self, ending: &[u8], sink: &mut impl Sink) {
        // RFC 5322 2.1: the first empty line ends the header section.
        let empty = self.line == 0 && self.held.is_empty();
        if !self.held.is_empty() {
            sink.put(&self.held);
            self.held.clear();
        }
        sink.put(ending);
        self.line = 0;
        self.body |= empty;
    }

    /// Octets inside a line (no LF among them).
    fn content(&mut self, bytes: &[u8], sink: &mut impl Sink) {
        if self.body {
            self.body_content(bytes, sink);
        } else {
            self.header_content(bytes, sink);
        }
    }

    /// Body: CRLF SPACE after every 998 octets of a line, as Postfix's
    /// `smtp_line_length_limit` does.
    fn body_content(&mut self, mut bytes: &[u8], sink: &mut impl Sink) {
        while self.line + bytes.len() > MAX_LINE {
            let (fits, rest) = bytes.split_at(MAX_LINE - self.line);
            if !fits.is_empty() {
                sink.put(fits);
            }
            sink.brk(BREAK);
            self.line = 1;
            bytes = rest;
        }
        if !bytes.is_empty() {
            sink.put(bytes);
            self.line += bytes.len();
        }
    }

    /// Header section: the line is held until it ends or outgrows the limit; then it is
    /// folded, as often as needed.
    fn header_content(&mut self, mut bytes: &[u8], sink: &mut impl Sink) {
        loop {
            let room = MAX_LINE - self.line;
            // Hold at most one octet past the room: enough to decide where to fold, and
            // the same decision however the input was split.
            let take = (room + 1).saturating_sub(self.held.len()).min(bytes.len());
            let (now, later) = bytes.split_at(take);
            self.held.extend_from_slice(now);
            bytes = later;
            if self.held.len() <= room {
                return;
            }
            self.fold(room, sink);
        }
    }

    /// Gives out the longest head of `held` that fits in `room`, and the break after it.
    fn fold(&mut self, room: usize, sink: &mut impl Sink) {
        let cut = match fold_point(self.held.get(..=room).unwrap_or(&self.held)) {
            Some(at) => {
                sink.put(self.held.get(..at).unwrap_or_default());
                sink.brk(FOLD);
                self.line = 0;
                at
            }
            None => {
                // No whitespace to fold at: break it anyway, as Postfix breaks every long
                // line (CRLF SPACE; the space keeps the rest part of this field), after
                // the last whole UTF-8 character that fits.
                let at = char_boundary(&self.held, room);
                sink.put(self.held.get(..at).unwrap_or_default());
                sink.brk(BREAK);
                self.line = 1;
                at
            }
        };
        self.held.drain(..cut);
    }
}

/// RFC 5322 2.2.3 and 3.2.2: where to fold a line whose first `window.len() - 1` octets may
/// stay on it: before its last WSP that has something other than WSP ahead of it on the line
/// (a line of nothing but whitespace is not allowed).
fn fold_point(window: &[u8]) -> Option<usize> {
    let is_wsp = |b: &u8| *b == b' ' || *b == b'\t';
    let last_wsp = window.iter().rposition(is_wsp)?;
    let first_text = window.iter().position(|b| !is_wsp(b))?;
    (first_text < last_wsp).then_some(last_wsp)
}

/// `room`, moved back (by at most three octets) to the start of a UTF-8 character, so a
/// break does not split one; `room` itself for octets that are not UTF-8.
fn char_boundary(bytes: &[u8], room: usize) -> usize {
    let continuation = |at: usize| bytes.get(at).is_some_and(|b| b & 0xC0 == 0x80);
    (room.saturating_sub(3)..=room)
        .rev()
        .find(|&at| at > 0 && !continuation(at))
        .unwrap_or(room)
}

/// Whether every line of `bytes` fits: the check for the header lines postern itself adds
/// or rewrites (the client's lines are measured as DATA decodes them).
pub fn fits(bytes: &[u8]) -> bool {
    bytes.split_inclusive(|&b| b == b'\n').all(|line| {
        let ending = match line {
            [.., b'\r', b'\n'] => 2,
            [.., b'\n'] => 1,
            _ => 0,
        };
        line.len() - ending <= MAX_LINE
    })
}

/// The octets wrapping adds to `prefix` followed by the body read through `body`
/// (which calls its argument with each piece of the body in order).
pub fn added_octets<E>(
    prefix: &[u8],
    body: impl FnOnce(&mut dyn FnMut(&[u8])) -> Result<(), E>,
) -> Result<u64, E> {
    let mut wrapper = Wrapper::new();
    let mut count = Count::default();
    wrapper.push(prefix, &mut count);
    body(&mut |piece| wrapper.push(piece, &mut count))?;
    wrapper.finish(&mut count);
    Ok(count.0)
}

#[cfg(test)]
#[path = "wrap_tests.rs"]
mod tests;
