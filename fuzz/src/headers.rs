//! `headers`: the header stage of a message (`postern::message` and
//! `postern::server::headers`), against RFC 5322 2.1/2.2 and the promises in
//! the modules' docs.
//!
//! - `HeaderBlock`, fed the stream in input-chosen reads (optionally with
//!   empty reads between them), then `finish()`: `Complete`/`TooLarge` are
//!   sticky, `body_start` lies inside the chunk, and on `Complete` the fields,
//!   the separator and the body bytes passed through give back the stream
//!   byte for byte. The section (fields and empty line) is a three-line model:
//!   a leading CRLF, else up to the first CRLF CRLF, else the whole stream;
//!   `TooLarge` exactly when that is longer than the limit.
//! - `header_senders` on the collected fields: every address holds an `@`
//!   and no whitespace or control character; the From/Sender field counts
//!   match a model split of the fields (RFC 5322 2.2, 2.2.3, 4.5), and each
//!   Sender field gives exactly one mailbox.
//! - `rewrite_from` and `collapse` to [`ADDRESS`]: unchanged exactly when
//!   there is no From or the only From is already just that mailbox;
//!   otherwise one From, in the place of the first, whose addresses (through
//!   `header_senders`) are exactly `[ADDRESS]`, with the display name of the
//!   first old From mailbox (as mail-parser reads both); the lines postern wrote end
//!   in CRLF and are at most 998 octets; every other field is byte-identical
//!   and in order; `collapse` adds a Reply-To (right after From) exactly when
//!   the section had none and the old From mailboxes were not just
//!   `ADDRESS`, and it holds those mailboxes.
//! - `HeaderStage` with `SenderRules ["@corp.example"]` and a header or
//!   collapse rewrite, fed the same reads until its first answer other than
//!   `Held`: it agrees with the pieces above (too large when the block is,
//!   refused with 550 5.7.1 when a sender does not parse or is not in
//!   corp.example, else the rewritten fields and separator, then the rest of
//!   the chunk).

use std::ops::Range;

use postern::config::schema::RewriteMode;
use postern::message::block::{Collect, HeaderBlock};
use postern::message::rewrite::{collapse, rewrite_from};
use postern::message::senders::{HeaderSenders, MAX_QUOTED, SenderField, header_senders};
use postern::policy::Rewrite;
use postern::policy::identity::SenderRules;
use postern::server::headers::{Fed, HeaderStage};

use crate::input::{Input, chunks};

/// The address every rewrite uses (inside the stage's allowed domain).
pub const ADDRESS: &str = "scans@corp.example";

/// The domain `HeaderStage`'s sender rules allow.
const DOMAIN: &str = "corp.example";

/// RFC 5322 2.1.1: at most 998 characters per line, CRLF excluded.
const MAX_LINE: usize = 998;

/// Header: limit selector, split seed, flags (bit 0: collapse rather than
/// header rewrite in the stage; bit 1: an empty read before every read).
/// The rest is the message as the DATA decoder hands it on.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = input.pick(&[0, 1, 2, 16, 64, 256, 1024, 65536]);
    let seed = input.byte();
    let flags = input.byte();
    let stream = input.rest();
    let mode = if flags & 1 == 1 {
        RewriteMode::Collapse
    } else {
        RewriteMode::Header
    };

    let mut reads: Vec<&[u8]> = Vec::new();
    for c in chunks(stream, seed) {
        if flags & 2 == 2 {
            reads.push(&[]);
        }
        reads.push(c);
    }

    let (section, separated) = section(stream);
    let too_large = section > limit;
    let fields = &stream[..if separated { section - 2 } else { section }];

    let collected = collect(&reads, limit);
    match &collected {
        None => assert!(
            too_large,
            "TooLarge with a {section}-octet section, limit {limit}"
        ),
        Some((got, sep, body)) => {
            assert!(
                !too_large,
                "Complete with a {section}-octet section, limit {limit}"
            );
            assert_eq!(got.as_slice(), fields, "fields");
            assert_eq!(
                *sep,
                if separated { &b"\r\n"[..] } else { b"" },
                "separator"
            );
            let mut whole = got.clone();
            whole.extend_from_slice(sep);
            assert!(whole.len() <= limit, "section over the limit");
            whole.extend_from_slice(body);
            assert_eq!(whole, stream, "fields + separator + body is not the stream");
        }
    }

    // The header code, on what was collected (or, past the limit, on what
    // would have been: the parsers see the same bytes either way).
    let senders = check_senders(fields);
    check_rewrite(fields, &rewrite_from(fields, ADDRESS), false);
    check_rewrite(fields, &collapse(fields, ADDRESS), true);

    check_stage(
        &reads,
        limit,
        mode,
        collected.is_some(),
        fields,
        separated,
        senders,
    );
}

/// The length of the header section (fields and empty line) and whether it
/// ended with the empty line (RFC 5322 2.1), for a stream that starts at the
/// first header byte.
fn section(stream: &[u8]) -> (usize, bool) {
    if stream.starts_with(b"\r\n") {
        return (2, true);
    }
    match stream.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (p + 4, true),
        None => (stream.len(), false),
    }
}

/// Runs a `HeaderBlock` over `reads` then `finish()`, checking each answer;
/// the fields, separator and passed-through body, or `None` for too large.
fn collect(reads: &[&[u8]], limit: usize) -> Option<(Vec<u8>, &'static [u8], Vec<u8>)> {
    let mut block = HeaderBlock::new(limit);
    let mut body = Vec::new();
    let mut state = Collect::Incomplete;
    for read in reads {
        let got = block.feed(read);
        match (state, got) {
            (Collect::TooLarge, g) => assert_eq!(g, Collect::TooLarge, "TooLarge not sticky"),
            (Collect::Complete { .. }, g) => {
                assert_eq!(
                    g,
                    Collect::Complete { body_start: 0 },
                    "Complete not sticky"
                )
            }
            (Collect::Incomplete, _) => {}
        }
        match got {
            Collect::Incomplete => assert!(!block.is_complete()),
            Collect::Complete { body_start } => {
                assert!(
                    body_start <= read.len(),
                    "body_start {body_start} of {}",
                    read.len()
                );
                assert!(block.is_complete());
                body.extend_from_slice(&read[body_start..]);
            }
            Collect::TooLarge => {
                assert!(!block.is_complete());
                assert!(block.fields().is_empty(), "fields kept after TooLarge");
            }
        }
        assert!(block.fields().len() <= limit, "buffered past the limit");
        state = got;
    }
    let end = block.finish();
    match (state, end) {
        (Collect::TooLarge, e) => assert_eq!(e, Collect::TooLarge, "finish after TooLarge"),
        (_, e) => assert_eq!(e, Collect::Complete { body_start: 0 }, "finish"),
    }
    assert_eq!(block.finish(), end, "finish twice");
    if end == Collect::TooLarge {
        assert!(block.fields().is_empty() && !block.is_complete());
        return None;
    }
    let sep = block.separator();
    Some((block.take_fields(), sep, body))
}

/// One field of the model split: its bytes and its name, lowercased (`None`
/// for a line that is not a field).
#[derive(Debug, Clone)]
struct Field {
    span: Range<usize>,
    name: Option<Vec<u8>>,
}

/// RFC 5322 2.2: `name ":" body`, name of printable ASCII but the colon;
/// 2.2.3: a line starting with WSP continues the field above; 4.5: WSP may
/// come between name and colon. Lines end at LF; together the fields cover
/// every byte.
fn model_fields(block: &[u8]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    let mut pos = 0;
    for line in block.split_inclusive(|&b| b == b'\n') {
        let end = pos + line.len();
        let continues = matches!(line.first(), Some(b' ' | b'\t'));
        match out.last_mut() {
            Some(last) if continues => last.span.end = end,
            _ => {
                let name = line.iter().position(|&b| b == b':').and_then(|c| {
                    let n = line[..c].trim_ascii_end();
                    let ok = !n.is_empty() && n.iter().all(|b| (33..=126).contains(b));
                    ok.then(|| n.to_ascii_lowercase())
                });
                out.push(Field {
                    span: pos..end,
                    name,
                });
            }
        }
        pos = end;
    }
    out
}

impl Field {
    fn is(&self, name: &str) -> bool {
        self.name.as_deref() == Some(name.as_bytes())
    }
}

/// `header_senders` on the fields; its result.
fn check_senders(fields: &[u8]) -> Result<HeaderSenders, ()> {
    match header_senders(fields) {
        Ok(s) => {
            for a in &s.addresses {
                assert!(
                    a.address.contains('@'),
                    "address without @: {:?}",
                    a.address
                );
                assert!(
                    !a.address
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control()),
                    "whitespace or control in {:?}",
                    a.address
                );
            }
            let model = model_fields(fields);
            let froms = model.iter().filter(|f| f.is("from")).count();
            let senders = model.iter().filter(|f| f.is("sender")).count();
            assert_eq!(
                (s.from_fields, s.sender_fields),
                (froms, senders),
                "field counts"
            );
            let count = |k| s.addresses.iter().filter(|a| a.field == k).count();
            assert!(
                count(SenderField::From) >= froms,
                "a From field without a mailbox"
            );
            assert_eq!(count(SenderField::Sender), senders, "Sender mailboxes");
            Ok(s)
        }
        Err(e) => {
            assert!(e.text.chars().count() <= MAX_QUOTED, "quoted text too long");
            let _ = e.to_string();
            Err(())
        }
    }
}

/// The addresses `header_senders` finds in one field alone, if it parses.
fn addresses_of(field: &[u8]) -> Option<Vec<String>> {
    header_senders(field)
        .ok()
        .map(|s| s.addresses.into_iter().map(|a| a.address).collect())
}

/// Checks a rewrite of `input` (to [`ADDRESS`]) into `output`.
fn check_rewrite(input: &[u8], output: &[u8], collapsing: bool) {
    let what = if collapsing {
        "collapse"
    } else {
        "rewrite_from"
    };
    let show = || {
        format!(
            "{what}: {:?} -> {:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(output)
        )
    };
    let fin = model_fields(input);
    let in_froms: Vec<&Field> = fin.iter().filter(|f| f.is("from")).collect();
    // The old From mailboxes, from the fields that parse.
    let originals: Vec<String> = in_froms
        .iter()
        .filter_map(|f| addresses_of(&input[f.span.clone()]))
        .flatten()
        .collect();
    let already =
        in_froms.len() == 1 && originals.len() == 1 && originals[0].eq_ignore_ascii_case(ADDRESS);
    if in_froms.is_empty() || already {
        assert_eq!(input, output, "changed without need; {}", show());
        return;
    }
    assert_ne!(input, output, "From not rewritten; {}", show());

    let fout = model_fields(output);
    let out_froms: Vec<usize> = (0..fout.len()).filter(|&i| fout[i].is("from")).collect();
    assert_eq!(out_froms.len(), 1, "From fields; {}", show());
    let at = out_froms[0];
    let from = &output[fout[at].span.clone()];
    assert_eq!(
        addresses_of(from),
        Some(vec![ADDRESS.to_owned()]),
        "new From; {}",
        show()
    );
    check_written_lines(from, &show);
    let first_name = in_froms
        .first()
        .and_then(|f| header_senders(&input[f.span.clone()]).ok())
        .and_then(|s| s.addresses.into_iter().next())
        .and_then(|a| a.display_name);
    let new_name = header_senders(from)
        .ok()
        .and_then(|s| s.addresses.into_iter().next())
        .and_then(|a| a.display_name);
    assert_eq!(new_name, first_name, "display name not kept; {}", show());

    // Where the first From stood.
    let first_in = fin.iter().position(|f| f.is("from")).unwrap_or(0);
    let before_in = fin[..first_in].iter().filter(|f| !f.is("from")).count();
    assert_eq!(at, before_in, "new From moved; {}", show());

    // Reply-To, added by collapse only.
    let had_reply_to = fin.iter().any(|f| f.is("reply-to"));
    let replies: Vec<String> = originals
        .iter()
        .filter(|a| !a.eq_ignore_ascii_case(ADDRESS))
        .cloned()
        .collect();
    let added = collapsing && !had_reply_to && !replies.is_empty();
    let mut rest_out: Vec<&[u8]> = Vec::new();
    for (i, f) in fout.iter().enumerate() {
        if i == at {
            continue;
        }
        if added && i == at + 1 {
            assert!(f.is("reply-to"), "no Reply-To after From; {}", show());
            let bytes = &output[f.span.clone()];
            check_written_lines(bytes, &show);
            let as_from = [b"From:", &bytes[b"Reply-To:".len()..]].concat();
            assert_eq!(
                addresses_of(&as_from),
                Some(replies.clone()),
                "Reply-To; {}",
                show()
            );
            continue;
        }
        rest_out.push(&output[f.span.clone()]);
    }
    let rest_in: Vec<&[u8]> = fin
        .iter()
        .filter(|f| !f.is("from"))
        .map(|f| &input[f.span.clone()])
        .collect();
    assert!(
        rest_in == rest_out,
        "other fields changed or reordered; {}",
        show()
    );
}

/// Lines postern wrote: each ends in CRLF, has no other CR or LF, and is at
/// most 998 octets before it.
fn check_written_lines(field: &[u8], show: &dyn Fn() -> String) {
    for line in field.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r\n");
        assert!(text.is_some(), "line without CRLF; {}", show());
        let text = text.unwrap_or_default();
        assert!(
            !text.contains(&b'\r') && !text.contains(&b'\n'),
            "bare CR; {}",
            show()
        );
        assert!(
            text.len() <= MAX_LINE,
            "{}-octet line; {}",
            text.len(),
            show()
        );
    }
}

/// Feeds the stage like the server does (stopping at its first answer) and
/// compares that answer with the pieces.
fn check_stage(
    reads: &[&[u8]],
    limit: usize,
    mode: RewriteMode,
    complete: bool,
    fields: &[u8],
    separated: bool,
    senders: Result<HeaderSenders, ()>,
) {
    let rules = SenderRules::new(&["@corp.example"]);
    let rewrite = Rewrite {
        address: ADDRESS,
        mode,
    };
    let Some(mut stage) = HeaderStage::plan(Some(&rules), Some(rewrite), limit) else {
        panic!("no header stage for a check and a header rewrite");
    };
    let mut answer = None;
    let mut block = HeaderBlock::new(limit);
    for read in reads {
        let fed = stage.feed(read);
        let collected = block.feed(read);
        match (&fed, collected) {
            (Fed::Held, Collect::Incomplete) => continue,
            (Fed::TooLarge, Collect::TooLarge) => {}
            (Fed::Complete { rest, .. }, Collect::Complete { body_start }) => {
                assert_eq!(*rest, &read[body_start..], "stage rest");
            }
            _ => panic!("stage {fed:?}, block {collected:?}"),
        }
        answer = Some(fed);
        break;
    }
    let fed = answer.unwrap_or_else(|| stage.finish());
    let head = match fed {
        Fed::Held => panic!("Held after finish"),
        Fed::TooLarge => {
            assert!(!complete, "stage says too large");
            return;
        }
        Fed::Complete { head, .. } => head,
    };
    assert!(complete, "stage complete past the limit");
    let owned = senders.is_ok_and(|s| {
        s.addresses.iter().all(|a| {
            a.address
                .rsplit_once('@')
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(DOMAIN))
        })
    });
    match head {
        Ok(head) => {
            assert!(owned, "stage accepted a sender outside {DOMAIN}");
            let mut want = match mode {
                RewriteMode::Collapse => collapse(fields, ADDRESS),
                _ => rewrite_from(fields, ADDRESS),
            };
            want.extend_from_slice(if separated { b"\r\n" } else { b"" });
            assert_eq!(head, want, "stage head");
        }
        Err((reply, _)) => {
            assert!(!owned, "stage refused owned senders: {reply}");
            assert_eq!(reply.code(), 550);
            assert!(
                !reply.text().chars().any(char::is_control),
                "control character in the reply: {reply}"
            );
        }
    }
}
