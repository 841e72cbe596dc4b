use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::{Builder, Command, Protocol, Type, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

const LIMIT: Duration = Duration::from_secs(5);
/// What a client sends after the header: must come out of the stream untouched.
const AFTER: &[u8] = b"\x16\x03\x01\x02\x00EHLO x\r\n";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn v2(command: Command, addresses: Option<(&str, &str)>) -> Vec<u8> {
    let vc = Version::Two as u8 | command as u8;
    match addresses {
        Some((src, dst)) => Builder::with_addresses(vc, Protocol::Stream, (addr(src), addr(dst)))
            .build()
            .unwrap(),
        None => Builder::new(vc, 0).build().unwrap(),
    }
}

/// (header bytes, the source it names, its version)
fn valid() -> Vec<(Vec<u8>, Option<SocketAddr>, u8)> {
    vec![
        (
            b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 2525\r\n".to_vec(),
            Some(addr("127.0.0.2:40000")),
            1,
        ),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 1234 465\r\n".to_vec(),
            Some(addr("[2001:db8::7]:1234")),
            1,
        ),
        (b"PROXY UNKNOWN\r\n".to_vec(), None, 1),
        // v1 section 2.1: the longest line a receiver must take is 107 bytes, CRLF included.
        (
            [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 91], b"\r\n"].concat(),
            None,
            1,
        ),
        (
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n".to_vec(),
            None,
            1,
        ),
        (
            v2(Command::Proxy, Some(("192.0.2.9:5000", "127.0.0.1:25"))),
            Some(addr("192.0.2.9:5000")),
            2,
        ),
        (
            v2(Command::Proxy, Some(("[2001:db8::9]:6000", "[::1]:587"))),
            Some(addr("[2001:db8::9]:6000")),
            2,
        ),
        // HAProxy's health checks: the TCP peer is the client.
        (v2(Command::Local, None), None, 2),
        // IPv4-mapped IPv6 (HAProxy on a dual-stack bind, an IPv4 client) is the IPv4
        // address, in either version.
        (
            b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:192.0.2.1 1234 25\r\n".to_vec(),
            Some(addr("192.0.2.7:1234")),
            1,
        ),
        (
            v2(
                Command::Proxy,
                Some(("[::ffff:192.0.2.8]:7000", "[::ffff:192.0.2.1]:25")),
            ),
            Some(addr("192.0.2.8:7000")),
            2,
        ),
        // PROXY over AF_UNIX: no IP address to take, the TCP peer is the client.
        (
            Builder::with_addresses(
                Version::Two as u8 | Command::Proxy as u8,
                Protocol::Stream,
                ppp::v2::Unix::new([b'a'; 108], [b'b'; 108]),
            )
            .build()
            .unwrap(),
            None,
            2,
        ),
    ]
}

/// Reads a header from a stream that carries `chunks` (written in turn, the writer
/// yielding between them) and then closes; returns it and every byte left after it.
async fn read_chunks(
    chunks: Vec<Vec<u8>>,
    capacity: usize,
) -> (Result<Header, HeaderError>, Vec<u8>) {
    let (mut client, mut server) = tokio::io::duplex(capacity);
    let writer = tokio::spawn(async move {
        for chunk in chunks {
            client.write_all(&chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let header = read(&mut server, LIMIT).await;
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    writer.await.unwrap();
    (header, rest)
}

#[tokio::test]
async fn valid_headers_name_the_source_and_leave_what_follows() {
    for (bytes, source, version) in valid() {
        let whole = [bytes.clone(), AFTER.to_vec()].concat();
        let (header, rest) = read_chunks(vec![whole], 4096).await;
        let header = header.unwrap_or_else(|e| panic!("{bytes:?}: {e}"));
        assert_eq!(
            (header.source, header.version),
            (source, version),
            "{bytes:?}"
        );
        assert_eq!(rest, AFTER, "{bytes:?}");
    }
}

#[tokio::test]
async fn headers_split_at_every_point_or_a_byte_at_a_time_read_the_same() {
    for (bytes, source, _) in valid() {
        let whole = [bytes.clone(), AFTER.to_vec()].concat();
        for cut in 1..whole.len() {
            let chunks = vec![whole[..cut].to_vec(), whole[cut..].to_vec()];
            let (header, rest) = read_chunks(chunks, 4096).await;
            assert_eq!(header.unwrap().source, source, "{bytes:?} cut at {cut}");
            assert_eq!(rest, AFTER, "{bytes:?} cut at {cut}");
        }
        // A one-byte pipe: every read returns a single byte.
        let (header, rest) = read_chunks(vec![whole], 1).await;
        assert_eq!(header.unwrap().source, source, "{bytes:?} byte by byte");
        assert_eq!(rest, AFTER);
    }
}

#[tokio::test]
async fn the_unique_id_tlv_is_kept_when_printable() {
    let vc = Version::Two as u8 | Command::Proxy as u8;
    let addresses = (addr("192.0.2.9:5000"), addr("127.0.0.1:25"));
    let build = |id: &[u8]| {
        Builder::with_addresses(vc, Protocol::Stream, addresses)
            .write_tlv(Type::NoOp, b"xx")
            .unwrap()
            .write_tlv(Type::UniqueId, id)
            .unwrap()
            .build()
            .unwrap()
    };
    let (header, rest) =
        read_chunks(vec![build(b"7F000001:C0A8_6A1B"), AFTER.to_vec()], 4096).await;
    assert_eq!(
        header.unwrap().unique_id.as_deref(),
        Some("7F000001:C0A8_6A1B")
    );
    assert_eq!(rest, AFTER);
    let (header, _) = read_chunks(vec![build(b"bad\r\nid")], 4096).await;
    assert_eq!(header.unwrap().unique_id, None);
}

#[tokio::test]
async fn malformed_and_oversized_headers_are_invalid() {
    let mut bad_version = v2(Command::Proxy, Some(("192.0.2.9:5000", "127.0.0.1:25")));
    bad_version[12] = 0x11;
    let mut huge = v2(Command::Local, None);
    huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    // A valid TCP4 header with one byte of its fixed part replaced.
    let with_byte = |at: usize, value: u8| {
        let mut h = v2(Command::Proxy, Some(("192.0.2.9:5000", "127.0.0.1:25")));
        h[at] = value;
        h
    };
    let mut short_addresses = v2(Command::Proxy, Some(("192.0.2.9:5000", "127.0.0.1:25")));
    short_addresses[15] = 4;
    let rows: Vec<(&str, Vec<u8>)> = vec![
        ("SMTP instead", b"EHLO client.test\r\n".to_vec()),
        (
            "TLS instead",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc".to_vec(),
        ),
        (
            "v1 bad address",
            b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n".to_vec(),
        ),
        ("v1 family mismatch", b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec()),
        (
            "v1 bad protocol",
            b"PROXY UDP4 127.0.0.1 127.0.0.1 1 2\r\n".to_vec(),
        ),
        (
            "v1 missing port",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 1\r\n".to_vec(),
        ),
        (
            "v1 bare LF",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\n\r\n".to_vec(),
        ),
        ("v1 CR before the end", b"PROXY UNKNOWN\r\r\n".to_vec()),
        // Found by the proxy_header fuzz target: ppp takes anything after UNKNOWN.
        (
            "v1 LF inside UNKNOWN",
            b"PROXY UNKNOWN 1UT\n!!\r\n".to_vec(),
        ),
        (
            "v1 CR inside",
            b"PROXY TCP4 127.0.0.1\r127.0.0.1 1 2\r\n".to_vec(),
        ),
        (
            "v1 too long",
            [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat(),
        ),
        (
            "v2 bad signature",
            [b"\r\n\r\n\0\r\nQUIT\r".as_slice(), &[0x21, 0x11, 0, 0]].concat(),
        ),
        ("v2 version 1", bad_version),
        ("v2 command 2", with_byte(12, 0x22)),
        ("v2 family 4", with_byte(13, 0x41)),
        ("v2 protocol 3", with_byte(13, 0x13)),
        (
            "v1 108 bytes with its CRLF",
            [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 92], b"\r\n"].concat(),
        ),
        ("v2 over the length bound", huge),
        ("v2 length shorter than its addresses", short_addresses),
    ];
    for (what, bytes) in rows {
        let (header, _) = read_chunks(vec![bytes], 4096).await;
        assert!(
            matches!(header, Err(HeaderError::Invalid(_))),
            "{what}: {header:?}"
        );
    }
}

#[tokio::test]
async fn an_oversized_v2_header_is_refused_before_its_body_is_read() {
    let mut huge = v2(Command::Local, None);
    huge[14..16].copy_from_slice(&((V2_MAX_BODY + 1) as u16).to_be_bytes());
    let (header, rest) = read_chunks(vec![huge, AFTER.to_vec()], 4096).await;
    assert!(matches!(header, Err(HeaderError::Invalid(_))), "{header:?}");
    assert_eq!(rest, AFTER);
}

#[tokio::test]
async fn a_peer_that_closes_early_sent_no_header() {
    for bytes in [
        b"".as_slice(),
        b"PRO",
        b"PROXY TCP4 127.0.0.1",
        b"\r\n\r\n\0\r\nQUIT\n\x21",
    ] {
        let (header, _) = read_chunks(vec![bytes.to_vec()], 4096).await;
        assert!(
            matches!(header, Err(HeaderError::Missing(_))),
            "{bytes:?}: {header:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_silent_or_stalled_sender() {
    for sent in [
        b"".as_slice(),
        b"PROXY TCP4 127.0.0.1 ",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f",
    ] {
        let (mut client, mut server): (DuplexStream, DuplexStream) = tokio::io::duplex(4096);
        client.write_all(sent).await.unwrap();
        let start = tokio::time::Instant::now();
        let header = read(&mut server, LIMIT).await;
        assert!(
            matches!(header, Err(HeaderError::Missing("timed out"))),
            "{sent:?}: {header:?}"
        );
        assert_eq!(start.elapsed(), LIMIT);
        drop(client);
    }
}

#[test]
fn sniff_tells_headers_from_smtp_and_tls() {
    let v2 = v2(Command::Local, None);
    let rows: &[(&[u8], Sniff)] = &[
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", Sniff::Header),
        (b"PROXY ", Sniff::Header),
        (&v2, Sniff::Header),
        (&v2[..12], Sniff::Header),
        (b"", Sniff::Undecided),
        (b"PROX", Sniff::Undecided),
        (b"\r\n\r\n", Sniff::Undecided),
        (&v2[..11], Sniff::Undecided),
        (b"EHLO client.test\r\n", Sniff::No),
        (b"PROXYX", Sniff::No),
        (b"proxy tcp4", Sniff::No),
        (b"\r\nEHLO", Sniff::No),
        (b"\x16\x03\x01", Sniff::No),
    ];
    for (bytes, want) in rows {
        assert_eq!(sniff(bytes), *want, "{bytes:?}");
    }
}

/// A direct client's first bytes on an implicit-TLS listener are waited for within the
/// handshake's time, and the wait is reported so the handshake gets only the rest of it
/// (one `timeouts.tls_handshake` in all, not two back to back).
#[tokio::test(start_paused = true)]
async fn waiting_for_a_direct_tls_client_is_reported_as_handshake_time() {
    let cfg = ProxyProtocolConfig {
        trusted: vec!["192.0.2.0/24".parse().unwrap()],
        required: false,
    };
    let hello = Duration::from_secs(30);
    for (delay, want) in [
        (Some(Duration::from_secs(12)), Duration::from_secs(12)),
        (None, hello),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let writer = tokio::spawn(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
                client.write_all(b"\x16\x03\x01").await.unwrap();
            }
            client
        });
        let got = identify(&mut tcp, peer, Some(&cfg), LIMIT, Some(hello))
            .await
            .unwrap();
        assert_eq!((got.addr, got.via, got.watch), (peer, None, false));
        assert!(
            got.waited >= want && got.waited < want + Duration::from_secs(1),
            "{delay:?}: waited {:?}",
            got.waited
        );
        drop(writer.await.unwrap());
    }
}
