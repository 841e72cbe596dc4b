#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use super::*;
use crate::test_rng::Rng;

/// Records the output with the breaks (`wire`) and without them (`plain`), and where each
/// break went in `wire`.
#[derive(Default)]
struct Both {
    wire: Vec<u8>,
    plain: Vec<u8>,
    breaks: Vec<(usize, &'static [u8])>,
}

impl Sink for Both {
    fn put(&mut self, bytes: &[u8]) {
        let lf = bytes.iter().position(|&b| b == b'\n');
        assert!(
            lf.is_none_or(|at| at + 1 == bytes.len()),
            "a piece with an LF inside: {bytes:?}"
        );
        self.wire.extend_from_slice(bytes);
        self.plain.extend_from_slice(bytes);
    }

    fn brk(&mut self, bytes: &'static [u8]) {
        self.breaks.push((self.wire.len(), bytes));
        self.wire.extend_from_slice(bytes);
    }
}

/// Wraps `input` pushed in pieces cut at `cuts`.
fn wrap_at(input: &[u8], cuts: &[usize]) -> Both {
    let mut w = Wrapper::new();
    let mut out = Both::default();
    let mut from = 0;
    for &cut in cuts {
        w.push(&input[from..cut], &mut out);
        from = cut;
    }
    w.push(&input[from..], &mut out);
    w.finish(&mut out);
    out
}

fn wrap(input: &[u8]) -> Vec<u8> {
    wrap_at(input, &[]).wire
}

/// Content lengths of the lines of `bytes` (CRLF or LF excluded).
fn line_lengths(bytes: &[u8]) -> Vec<usize> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(|l| {
            l.strip_suffix(b"\r\n")
                .or_else(|| l.strip_suffix(b"\n"))
                .unwrap_or(l)
                .len()
        })
        .collect()
}

/// RFC 5322 2.2.3 unfolding: CRLF immediately followed by WSP is removed.
fn unfold(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"\r\n") && matches!(bytes.get(i + 2), Some(b' ' | b'\t')) {
            i += 2;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn repeat(b: u8, n: usize) -> Vec<u8> {
    vec![b; n]
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A header field over the limit folds before its last space that leaves at most 998
/// octets on the line; unfolding gives the field back (RFC 5322 2.2.3).
#[test]
fn header_folds_at_whitespace() {
    let words: Vec<u8> = (0..700)
        .flat_map(|i| format!(" w{i:03}").into_bytes())
        .collect();
    let field = cat(&[b"Subject:", &words, b"\r\n"]);
    let input = cat(&[&field, b"\r\nbody\r\n"]);
    let out = wrap(&input);
    let (head, body) = out.split_at(out.len() - b"\r\nbody\r\n".len());
    assert_eq!(body, b"\r\nbody\r\n");
    let lengths = line_lengths(head);
    assert!(lengths.len() > 1, "not folded");
    assert!(lengths.iter().all(|&n| n <= MAX_LINE), "{lengths:?}");
    // Greedy: every line but the last is full up to its last word (5 octets each).
    assert!(
        lengths[..lengths.len() - 1]
            .iter()
            .all(|&n| n > MAX_LINE - 5)
    );
    for line in head
        .split(|&b| b == b'\n')
        .skip(1)
        .filter(|l| !l.is_empty())
    {
        assert_eq!(
            line[0], b' ',
            "continuation lines start with the folding space"
        );
    }
    assert_eq!(unfold(head), field);
}

/// No whitespace to fold at: CRLF SPACE after 998 octets, as Postfix breaks long lines.
#[test]
fn header_without_whitespace_breaks_postfix_style() {
    let value = repeat(b'a', 5000);
    let input = cat(&[b"X-Token:", &value, b"\r\n\r\n"]);
    let out = wrap_at(&input, &[]);
    let lengths = line_lengths(&out.wire);
    assert_eq!(lengths, [998, 998, 998, 998, 998, 23, 0]);
    assert!(out.breaks.iter().all(|&(_, b)| b == b"\r\n "));
    assert_eq!(out.plain, input);
    // One space more than the original per break when unfolded: the Postfix trade.
    assert_eq!(unfold(&out.wire).len(), input.len() + out.breaks.len());

    // A space only at the start of the value: folded there first, broken after that.
    let input = cat(&[b"X-Token: ", &value, b"\r\n\r\n"]);
    let out = wrap(&input);
    assert!(out.starts_with(b"X-Token:\r\n aaa"));
    assert!(line_lengths(&out).iter().all(|&n| n <= MAX_LINE));
}

/// A break in the header section does not split a UTF-8 character.
#[test]
fn header_break_keeps_utf8_characters_whole() {
    let value = "é".repeat(1500);
    let input = cat(&[b"Subject:", value.as_bytes(), b"\r\n\r\n"]);
    let out = wrap(&input);
    for line in out.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).expect("each line is whole UTF-8");
        assert!(text.len() <= MAX_LINE);
    }
}

/// Body lines of 998, 999 and 5000 octets: CRLF SPACE after each 998 octets of output line.
#[test]
fn body_lines_at_and_over_the_limit() {
    let rows: &[(usize, &[usize])] = &[
        (997, &[997]),
        (998, &[998]),
        (999, &[998, 2]),
        (1995, &[998, 998]),
        (1996, &[998, 998, 2]),
        (5000, &[998, 998, 998, 998, 998, 15]),
    ];
    for &(len, expected) in rows {
        let line = repeat(b'x', len);
        let input = cat(&[b"\r\n", &line, b"\r\n"]);
        let out = wrap_at(&input, &[]);
        assert_eq!(out.plain, input, "{len}");
        let body_lines = &line_lengths(&out.wire)[1..];
        assert_eq!(body_lines, expected, "{len}");
        assert!(out.breaks.iter().all(|&(_, b)| b == b"\r\n "));
        let mut count = Count::default();
        let mut w = Wrapper::new();
        w.push(&input, &mut count);
        w.finish(&mut count);
        assert_eq!(count.0 as usize, out.wire.len() - input.len(), "{len}");
    }
}

/// A line of exactly 998 octets is never broken, wherever the input is split (a CR at the
/// end of a piece waits for the next octet); one more octet breaks it, at the same place
/// for every split.
#[test]
fn crlf_at_exact_boundaries() {
    for (len, breaks) in [(998, 0), (999, 1), (997, 0)] {
        for header in [false, true] {
            let lead: &[u8] = if header { b"" } else { b"\r\n" };
            let input = cat(&[lead, &repeat(b'y', len), b"\r\nz\r\n"]);
            let whole = wrap_at(&input, &[]);
            assert_eq!(whole.breaks.len(), breaks, "{len} header={header}");
            for cut in 0..=input.len() {
                let split = wrap_at(&input, &[cut]);
                assert_eq!(split.wire, whole.wire, "{len} header={header} cut={cut}");
            }
        }
    }
    // A CR inside a line, not before LF, is content and counts.
    let input = cat(&[b"\r\n", &repeat(b'y', 998), b"\rq\r\n"]);
    let out = wrap_at(&input, &[input.len() - 3]);
    assert_eq!(line_lengths(&out.wire)[1..], [998, 3]);
}

/// `fits` says what the wrapper would leave alone.
#[test]
fn fits_matches_the_wrapper() {
    let rows: Vec<(Vec<u8>, bool)> = vec![
        (b"".to_vec(), true),
        (cat(&[&repeat(b'a', 998), b"\r\n"]), true),
        (cat(&[&repeat(b'a', 999), b"\r\n"]), false),
        (cat(&[b"x\r\n", &repeat(b'a', 999)]), false),
        (cat(&[&repeat(b'a', 998), b"\n"]), true),
    ];
    for (bytes, fits_) in rows {
        assert_eq!(fits(&bytes), fits_, "{}", bytes.len());
        assert_eq!(wrap(&bytes) == bytes, fits_);
    }
}

/// Random messages at random split points: no line over 998 octets, the same output
/// however the input was split, every input octet out in order (removing the inserted
/// breaks gives the original), the count matches, and header fields that had whitespace
/// to fold at unfold to the original.
#[test]
fn random_messages_wrap_within_the_limit_and_unwrap() {
    let mut rng = Rng(0x5EED_0F11_E5E5);
    for round in 0..300 {
        let (input, foldable) = random_message(&mut rng);
        let whole = wrap_at(&input, &[]);
        let mut cuts: Vec<usize> = (0..rng.below(6))
            .map(|_| rng.below(input.len() + 1))
            .collect();
        cuts.sort_unstable();
        let split = wrap_at(&input, &cuts);
        assert_eq!(split.wire, whole.wire, "round {round} cuts {cuts:?}");
        assert_eq!(whole.plain, input, "round {round}");
        let lengths = line_lengths(&whole.wire);
        assert!(
            lengths.iter().all(|&n| n <= MAX_LINE),
            "round {round}: {lengths:?}"
        );
        let mut count = Count::default();
        let mut w = Wrapper::new();
        for piece in input.chunks(rng.below(4000) + 1) {
            w.push(piece, &mut count);
        }
        w.finish(&mut count);
        assert_eq!(count.0 as usize, whole.wire.len() - input.len());
        if foldable {
            let end = find_blank(&whole.wire).unwrap_or(whole.wire.len());
            let original_end = find_blank(&input).unwrap_or(input.len());
            assert_eq!(
                unfold(&whole.wire[..end]),
                unfold(&input[..original_end]),
                "round {round}"
            );
        }
    }
}

/// The end of the header section: the first empty line.
fn find_blank(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" {
            return Some(at);
        }
        at += line.len();
    }
    None
}

/// A message of header fields and body lines of random lengths, dots at line starts, and
/// 8-bit octets; `true` when every header word is short enough to fold around.
fn random_message(rng: &mut Rng) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let foldable = rng.below(2) == 0;
    for _ in 0..rng.below(5) {
        out.extend_from_slice(b"X-F:");
        let len = [10, 990, 998, 999, 1500, 4000][rng.below(6)];
        let mut n = 0;
        while n < len {
            let word = if foldable {
                rng.below(40) + 1
            } else {
                rng.below(3000) + 1
            };
            out.push(if rng.below(4) == 0 { b'\t' } else { b' ' });
            out.extend((0..word).map(|_| b"ab.\xc3\xa9"[rng.below(5)]));
            n += word + 1;
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    for _ in 0..rng.below(6) {
        let len = [0, 1, 997, 998, 999, 1996, 5000][rng.below(7)];
        if rng.below(3) == 0 {
            out.push(b'.');
        }
        out.extend((0..len).map(|_| b"x. \r"[rng.below(4)]));
        out.extend_from_slice(b"\r\n");
    }
    if rng.below(4) == 0 {
        out.extend_from_slice(b"no final line end\r");
    }
    (out, foldable)
}
