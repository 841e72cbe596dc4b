//! A bounded random-input loop over the header code (no proptest): nothing may panic on any
//! bytes, and the rewrites keep their promises. Inputs mix an alphabet of header tokens
//! (the bytes the parsers branch on) with raw random bytes, as smtp-proto's fuzz targets do.

use crate::message::block::{Collect, HeaderBlock};
use crate::message::fields;
use crate::message::rewrite::{collapse, rewrite_from};
use crate::message::senders::{field_mailboxes, header_senders};
use crate::test_rng::Rng;

const TOKENS: &[&[u8]] = &[
    b"From",
    b"from:",
    b"Sender",
    b"Reply-To",
    b":",
    b" ",
    b"\t",
    b"\r\n",
    b"\r\n ",
    b"\n",
    b"\r",
    b"<",
    b">",
    b"@",
    b"\"",
    b"(",
    b")",
    b",",
    b";",
    b"\\",
    b"=?",
    b"?=",
    b"utf-8",
    b"?Q?",
    b"?B?",
    b"=C3=A4",
    b"_",
    b"a",
    b"x.example",
    b"J\xc3\xbcrgen",
    b"\xff",
    b"\0",
    b"\r\n\r\n",
    b"From: ",
    b"\r\nFrom: ",
];

/// A random input: tokens, raw bytes, or both.
fn input(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let raw = rng.below(4) == 0;
    for _ in 0..rng.below(60) {
        if raw || rng.below(8) == 0 {
            out.push((rng.next() & 0xff) as u8);
        } else {
            out.extend_from_slice(TOKENS[rng.below(TOKENS.len())]);
        }
    }
    out
}

/// After a rewrite: no From in the input leaves it unchanged; otherwise there is exactly
/// one From and it holds only `address` (or the input was already just that).
fn check_rewrite(input: &[u8], output: &[u8], address: &str) {
    let had_from = fields::split(input).iter().any(|f| f.is(input, "from"));
    if !had_from {
        assert_eq!(input, output);
        return;
    }
    if input == output {
        // Left alone only when its one From is already just `address`.
        let froms: Vec<_> = fields::split(input)
            .into_iter()
            .filter(|f| f.is(input, "from"))
            .collect();
        let boxes = match froms.as_slice() {
            [only] => field_mailboxes(input, only).unwrap_or_default(),
            _ => Vec::new(),
        };
        assert!(
            matches!(boxes.as_slice(), [(_, a)] if a.eq_ignore_ascii_case(address)),
            "rewrite left a From alone: {:?}",
            String::from_utf8_lossy(input)
        );
        return;
    }
    let froms: Vec<_> = fields::split(output)
        .into_iter()
        .filter(|f| f.is(output, "from"))
        .collect();
    assert_eq!(froms.len(), 1, "{:?}", String::from_utf8_lossy(output));
    let boxes = field_mailboxes(output, &froms[0]).unwrap();
    assert_eq!(boxes.len(), 1);
    assert_eq!(boxes[0].1, address);
    let field = &output[froms[0].span.clone()];
    assert!(field.split(|&b| b == b'\n').all(|l| l.len() < 998));
}

#[test]
fn random_headers_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..4000 {
        let block = input(&mut rng);
        let _ = header_senders(&block);
        let out = rewrite_from(&block, "scans@corp.example");
        check_rewrite(&block, &out, "scans@corp.example");
        let out = collapse(&block, "relay@corp.example");
        check_rewrite(&block, &out, "relay@corp.example");
    }
}

#[test]
fn random_chunks_reassemble() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..2000 {
        let msg = input(&mut rng);
        let limit = rng.below(120);
        let mut block = HeaderBlock::new(limit);
        let mut body = Vec::new();
        let mut rest = &msg[..];
        let mut too_large = false;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()));
            rest = tail;
            match block.feed(chunk) {
                Collect::Complete { body_start } => body.extend_from_slice(&chunk[body_start..]),
                Collect::TooLarge => too_large = true,
                Collect::Incomplete => {}
            }
        }
        if too_large || block.finish() == Collect::TooLarge {
            assert!(block.fields().is_empty());
            continue;
        }
        let mut whole = block.fields().to_vec();
        whole.extend_from_slice(block.separator());
        assert!(whole.len() <= limit);
        whole.extend_from_slice(&body);
        assert_eq!(whole, msg);
    }
}
