//! The PROXY protocol header (HAProxy's `send-proxy` and `send-proxy-v2`): who the client
//! really is when a load balancer relays the connection.
//!
//! Spec: haproxy.org `proxy-protocol.txt` (v1 section 2.1, v2 section 2.2). The header is
//! read before the banner, and read exactly: v1 up to its CRLF, v2 its 16-byte fixed part
//! and then the length that part announces. Nothing after the header is consumed, so on an
//! implicit-TLS listener the ClientHello HAProxy sends right behind it reaches the TLS
//! handshake intact. Parsing itself is the `ppp` crate's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::config::schema::ProxyProtocolConfig;
use crate::policy::networks;

/// v1: `PROXY` and a space; no SMTP command starts like this.
const V1_PREFIX: &[u8] = b"PROXY ";
/// v1 section 2.1: the longest header, CRLF included.
const V1_MAX: usize = 107;
/// v2 section 2.2: the 12-byte signature (it contains `QUIT\n`, so a server that does not
/// speak the protocol hangs up).
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// v2: signature, version/command, family/protocol, 2-byte length.
const V2_FIXED: usize = 16;
/// The most v2 address-and-TLV bytes taken. Addresses take at most 216 (AF_UNIX); HAProxy's
/// TLVs (unique id up to 128 bytes, ALPN, authority, SSL details) fit well within the rest.
/// A longer header is refused rather than buffered: the length is the sender's word.
pub const V2_MAX_BODY: usize = 2048;

/// What a header said about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The client's address; `None` for a v2 `LOCAL` (HAProxy's own health checks), a v1
    /// `UNKNOWN`, or an address family without one: then the TCP peer is the client.
    pub source: Option<SocketAddr>,
    /// 1 or 2.
    pub version: u8,
    /// The v2 unique-id TLV (HAProxy's `unique-id-format`, `send-proxy-v2` with
    /// `proxy-v2-options unique-id`), printable ASCII only, for the logs.
    pub unique_id: Option<String>,
}

/// Why no usable header was read.
#[derive(Debug)]
pub enum HeaderError {
    /// Nothing within the deadline, or the peer closed before a whole header.
    Missing(&'static str),
    /// Bytes that are not a valid header (including one over the size bounds).
    Invalid(String),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Missing(why) => write!(f, "no PROXY header: {why}"),
            HeaderError::Invalid(why) => write!(f, "invalid PROXY header: {why}"),
        }
    }
}

/// Who the client of a connection is, once the PROXY protocol has had its say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address: from the header, or the TCP peer.
    pub addr: SocketAddr,
    /// The load balancer that relayed it (the TCP peer), when a header named the client.
    pub via: Option<SocketAddr>,
    /// A direct client on a listener that takes headers: its first line must not be one.
    pub watch: bool,
    /// How long its first bytes were waited for on an implicit-TLS listener: part of the
    /// handshake's time, which the handshake then has that much less of.
    pub waited: Duration,
}

/// Why a connection is closed before its banner.
#[derive(Debug)]
pub enum Refused {
    /// An untrusted peer where `required: true`, or one that sent a header itself.
    Untrusted(&'static str),
    /// A trusted peer sent no header (see [`HeaderError`]).
    Header(HeaderError),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Untrusted(why) => f.write_str(why),
            Refused::Header(e) => e.fmt(f),
        }
    }
}

/// The PROXY protocol stage of a connection from `peer` on a listener with `cfg`:
/// - a trusted peer's header is read (within `header_limit`) and names the client;
/// - with `required`, an untrusted peer is refused at once;
/// - otherwise an untrusted peer is its own client; on an implicit-TLS listener (where the
///   client speaks first) its first bytes are looked at within `hello_limit`, and a header
///   there is refused; on the others its first line is, after the banner ([`Client::watch`]).
///   `hello_limit` is the handshake's time: the wait is reported in [`Client::waited`].
pub async fn identify(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    cfg: Option<&ProxyProtocolConfig>,
    header_limit: Duration,
    hello_limit: Option<Duration>,
) -> Result<Client, Refused> {
    let direct = Client {
        addr: peer,
        via: None,
        watch: false,
        waited: Duration::ZERO,
    };
    let Some(cfg) = cfg else {
        return Ok(direct);
    };
    let ip = networks::canonical(peer.ip());
    if cfg.trusted.iter().any(|net| net.contains(&ip)) {
        let header = read(tcp, header_limit).await.map_err(Refused::Header)?;
        debug!(version = header.version, source = ?header.source, unique_id = ?header.unique_id, "PROXY header");
        return Ok(match header.source {
            Some(addr) => Client {
                addr,
                via: Some(peer),
                watch: false,
                waited: Duration::ZERO,
            },
            None => direct,
        });
    }
    if cfg.required {
        return Err(Refused::Untrusted("peer not in proxy_protocol.trusted"));
    }
    let Some(limit) = hello_limit else {
        return Ok(Client {
            watch: true,
            ..direct
        });
    };
    // A TLS ClientHello starts with 0x16; one peek (which waits for the first bytes) tells
    // it from a header's first bytes. A silent client is left to the handshake, with what
    // is left of its time.
    let started = Instant::now();
    let mut first = [0u8; 12];
    if let Ok(Ok(n)) = tokio::time::timeout(limit, tcp.peek(&mut first)).await
        && n > 0
        && sniff(&first[..n]) != Sniff::No
    {
        return Err(Refused::Untrusted("PROXY header from an untrusted peer"));
    }
    Ok(Client {
        waited: started.elapsed(),
        ..direct
    })
}

/// Reads one header from `r` within `limit`, consuming exactly its bytes.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) -> Result<Header, HeaderError> {
    match tokio::time::timeout(limit, read_header(r)).await {
        Ok(result) => result,
        Err(_) => Err(HeaderError::Missing("timed out")),
    }
}

/// Reads exactly as many bytes as [`parse`] asks for, until it has a verdict.
async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, HeaderError> {
    let mut buf = Vec::with_capacity(V2_FIXED);
    loop {
        match parse(&buf) {
            Parsed::Need(n) => {
                let start = buf.len();
                buf.resize(start + n, 0);
                fill(r, &mut buf[start..]).await?;
            }
            Parsed::Header(header) => return Ok(header),
            Parsed::Invalid(why) => return Err(HeaderError::Invalid(why)),
        }
    }
}

/// What [`parse`] makes of the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The header needs at least this many more bytes (never more than it has: a reader
    /// that reads exactly this many takes nothing past the header's end).
    Need(usize),
    /// The bytes are exactly one whole header.
    Header(Header),
    /// Not a valid header, whatever follows.
    Invalid(String),
}

/// The header parser over the bytes read so far, all of which belong to the header (the
/// reader only ever reads what [`Parsed::Need`] asks for): pure, so incomplete input is a
/// value, and fuzzed.
pub fn parse(buf: &[u8]) -> Parsed {
    // Both versions are at least this long and tell themselves apart within it.
    if buf.len() < V1_PREFIX.len() {
        return Parsed::Need(V1_PREFIX.len() - buf.len());
    }
    if buf.starts_with(V1_PREFIX) {
        return parse_v1(buf);
    }
    if V2_SIGNATURE.starts_with(&buf[..V1_PREFIX.len()]) {
        return parse_v2(buf);
    }
    Parsed::Invalid(format!(
        "starts with {:?}",
        String::from_utf8_lossy(&buf[..V1_PREFIX.len()])
    ))
}

/// v1 section 2.1: a line up to CRLF, taken one byte at a time so nothing past it is read.
fn parse_v1(buf: &[u8]) -> Parsed {
    // One line: CR and LF only as its final CRLF. (ppp accepts anything after `UNKNOWN`,
    // which the spec lets a receiver ignore, but a line break there is no header.)
    let body = buf.strip_suffix(b"\r\n");
    let Some(body) = body else {
        return match buf {
            [.., b'\n'] => Parsed::Invalid("v1: bare LF".into()),
            [.., b'\r', _] => Parsed::Invalid("v1: bare CR".into()),
            _ if buf.len() >= V1_MAX => {
                Parsed::Invalid(format!("v1 header longer than {V1_MAX} bytes"))
            }
            _ => Parsed::Need(1),
        };
    };
    if body.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Parsed::Invalid("v1: line break inside the header".into());
    }
    let header = match ppp::v1::Header::try_from(buf) {
        Ok(header) => header,
        Err(e) => return Parsed::Invalid(format!("v1: {e}")),
    };
    let source = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(client(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Tcp6(a) => Some(client(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Unknown => None,
    };
    Parsed::Header(Header {
        source,
        version: 1,
        unique_id: None,
    })
}

/// v2 section 2.2: the 16-byte fixed part, then exactly the length it announces.
fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < V2_FIXED {
        return Parsed::Need(V2_FIXED - buf.len());
    }
    if &buf[..V2_SIGNATURE.len()] != V2_SIGNATURE {
        return Parsed::Invalid("bad v2 signature".into());
    }
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if length > V2_MAX_BODY {
        return Parsed::Invalid(format!(
            "v2 header announces {length} bytes, more than {V2_MAX_BODY}"
        ));
    }
    if buf.len() < V2_FIXED + length {
        return Parsed::Need(V2_FIXED + length - buf.len());
    }
    let header = match ppp::v2::Header::try_from(buf) {
        Ok(header) => header,
        Err(e) => return Parsed::Invalid(format!("v2: {e}")),
    };
    // v2 section 2.2: with LOCAL the receiver must use the real connection endpoints.
    let source = match (header.command, header.addresses) {
        (ppp::v2::Command::Local, _) => None,
        (_, ppp::v2::Addresses::IPv4(a)) => Some(client(a.source_address.into(), a.source_port)),
        (_, ppp::v2::Addresses::IPv6(a)) => Some(client(a.source_address.into(), a.source_port)),
        // UNSPEC or AF_UNIX: no IP address to take.
        (_, _) => None,
    };
    Parsed::Header(Header {
        source,
        version: 2,
        unique_id: unique_id(&header),
    })
}

/// A header's source address, IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what HAProxy sends in a
/// `TCP6` header for an IPv4 client of a dual-stack bind) taken as the IPv4 address it is
/// (RFC 4291 section 2.5.5.2), so logs, metrics, Received and every key name it one way.
fn client(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(networks::canonical(ip), port)
}

/// The unique-id TLV (v2 section 2.2.5), when present and printable.
fn unique_id(header: &ppp::v2::Header<'_>) -> Option<String> {
    let unique = ppp::v2::Type::UniqueId as u8;
    let tlv = header
        .tlvs()
        .filter_map(Result::ok)
        .find(|t| t.kind == unique)?;
    let printable = tlv.value.iter().all(|b| b.is_ascii_graphic());
    (printable && !tlv.value.is_empty()).then(|| String::from_utf8_lossy(&tlv.value).into_owned())
}

/// Fills `buf` exactly; an early end is a missing header.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), HeaderError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(HeaderError::Missing("connection closed"))
        }
        Err(_) => Err(HeaderError::Missing("read failed")),
    }
}

/// Whether bytes a client sent could be (the start of) a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// They start with a v1 or v2 header's signature.
    Header,
    /// Too few to tell: a strict prefix of a signature.
    Undecided,
    /// Not a header.
    No,
}

/// Looks at the first bytes of a connection from an untrusted peer, which must not send a
/// header (it could claim any address). Only the signatures are compared: a client that
/// starts with `PROXY ` is refused however the rest of its line reads.
pub fn sniff(first: &[u8]) -> Sniff {
    let mut undecided = false;
    for signature in [V1_PREFIX, V2_SIGNATURE] {
        if first.starts_with(signature) {
            return Sniff::Header;
        }
        undecided |= signature.starts_with(first);
    }
    if undecided {
        Sniff::Undecided
    } else {
        Sniff::No
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests;
