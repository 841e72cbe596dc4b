//! `proxy_header`: the PROXY protocol header parser (`server::proxy::parse`),
//! driven as the server's reader drives it: read exactly the bytes it asks
//! for, until it has a verdict or the input (the peer) ends.

use postern::server::proxy::{Parsed, Sniff, V2_MAX_BODY, parse, sniff};

/// v2: the fixed part before the announced length.
const V2_FIXED: usize = 16;
/// v1: the longest header, CRLF included.
const V1_MAX: usize = 107;

/// The whole input is what a peer sends first.
pub fn check(data: &[u8]) {
    let mut taken = 0;
    let verdict = loop {
        assert!(taken <= V2_FIXED + V2_MAX_BODY, "read {taken} bytes");
        match parse(&data[..taken]) {
            Parsed::Need(n) => {
                assert!(n > 0, "asked for no bytes");
                if taken + n > data.len() {
                    break None; // the peer closed first: no header
                }
                taken += n;
            }
            other => break Some(other),
        }
    };
    let Some(Parsed::Header(header)) = verdict else {
        return;
    };
    // Every byte read belongs to the header: nothing after it was taken.
    let head = &data[..taken];
    assert_eq!(sniff(head), Sniff::Header, "a header the sniffer misses");
    match header.version {
        1 => {
            assert!(taken <= V1_MAX, "v1 header of {taken} bytes");
            assert!(head.ends_with(b"\r\n"), "v1 header not ending in CRLF");
            let lfs = head.iter().filter(|&&b| b == b'\n').count();
            assert_eq!(lfs, 1, "v1 header spanning lines");
        }
        2 => {
            let length = usize::from(u16::from_be_bytes([head[14], head[15]]));
            assert_eq!(taken, V2_FIXED + length, "v2 header not its announced length");
        }
        v => panic!("version {v}"),
    }
    if let Some(id) = &header.unique_id {
        assert!(!id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()));
    }
    assert_eq!(parse(head), Parsed::Header(header), "parse is not a function");
}
