//! The spool's data model and its versioned on-disk formats.
//!
//! # Message file (`queue/ID`), container version 1
//!
//! ```text
//! offset 0        HEADER    16 bytes: magic "PSTNMSG\0" | version u32 LE (= 1) | reserved u32 (= 0)
//! 16              BODY      body_len bytes, exactly as received (after dot-unstuffing)
//! 16+body_len     PREFIX    prefix_len bytes: header lines the relay prepends (Received, Date, ...)
//!                 ENVELOPE  env_len bytes of JSON: {"v":1,"envelope":{...}}
//! len-32          FOOTER    body_len u64 LE | prefix_len u64 LE | env_len u64 LE
//!                           | crc32 u32 LE of every byte before this field | magic "PEND"
//! ```
//!
//! Why the envelope goes last: the body streams to disk while the session is still in DATA, and
//! the envelope (size, final recipients) and the prefix (which depends on the parsed headers) are
//! only known at the final dot. Writing them as a trailer keeps the body write a single append
//! stream with no seek-back. The footer makes a torn file detectable: a file whose footer magic,
//! lengths or crc32 do not add up was never acknowledged (the 250 only goes out after the data is
//! fsynced and the file renamed into `queue/`), so recovery may delete it.
//!
//! Two version numbers, on purpose: the header version describes the byte container, the JSON
//! `"v"` the envelope schema. Either can move without the other.
//!
//! # State file (`queue/ID.state`), version 1
//!
//! ```text
//! HEADER 16 bytes: magic "PSTNSTA\0" | version u32 LE (= 1) | reserved u32
//! JSON   env_len bytes: {"v":1,"envelope":{...}} (the envelope with its latest delivery status)
//! FOOTER 16 bytes: env_len u64 LE | crc32 u32 LE of every byte before this field | magic "SEND"
//! ```
//!
//! State files are replaced without fsync (see `Spool::update`), so after a crash one may be
//! empty or stale; the checksum lets recovery fall back to the envelope in the message file.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::spool::SpoolError;
use crate::spool::notify::{MessageDsn, RcptDsn};

/// Length of the message-file header.
pub const HEADER_LEN: u64 = 16;
/// Length of the message-file footer.
pub const FOOTER_LEN: u64 = 32;
/// Container version written into message and state file headers.
pub const CONTAINER_VERSION: u32 = 1;
/// Envelope schema version written as JSON `"v"`.
pub const ENVELOPE_VERSION: u32 = 1;

const MESSAGE_MAGIC: &[u8; 8] = b"PSTNMSG\0";
const MESSAGE_END: &[u8; 4] = b"PEND";
const STATE_MAGIC: &[u8; 8] = b"PSTNSTA\0";
const STATE_END: &[u8; 4] = b"SEND";
const STATE_FOOTER_LEN: usize = 16;

/// Alphabet of queue ids: RFC 4648 section 7 "base32hex", whose characters sort in the same
/// order as the values they encode, so ids sort by creation time.
const ID_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHIJKLMNOPQRSTUV";
/// Characters in a queue id: 16 x 5 = 80 bits.
const ID_LEN: usize = 16;
/// Bits of the per-process sequence inside an id.
const SEQ_BITS: u32 = 10;
/// Bits of randomness inside an id; they keep ids unique across restarts with a clock step back.
const RANDOM_BITS: u32 = 16;

/// A queue id: 16 characters of base32hex over (unix micros: 54 bits, sequence: 10 bits,
/// random: 16 bits). Ids from one process strictly increase; they contain no `/` or `.`, so an
/// id is always a safe single file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueId(String);

impl QueueId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Encodes an 80-bit value as an id (most significant 5-bit group first, so text order is
    /// numeric order).
    fn from_bits(bits: u128) -> QueueId {
        let text = (0..ID_LEN)
            .rev()
            .map(|group| {
                let digit = (bits >> (group * 5)) & 0x1f;
                char::from(ID_ALPHABET.get(digit as usize).copied().unwrap_or(b'0'))
            })
            .collect();
        QueueId(text)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for QueueId {
    type Err = SpoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.len() == ID_LEN && s.bytes().all(|b| ID_ALPHABET.contains(&b));
        if valid {
            Ok(QueueId(s.to_owned()))
        } else {
            Err(SpoolError::InvalidId {
                text: s.chars().take(64).collect(),
            })
        }
    }
}

impl TryFrom<String> for QueueId {
    type Error = SpoolError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> String {
        id.0
    }
}

/// Hands out strictly increasing queue ids within one process.
#[derive(Debug, Default)]
pub struct IdGenerator {
    /// (unix micros, sequence) of the last id handed out.
    last: Mutex<(u64, u64)>,
}

impl IdGenerator {
    /// The next id. Never repeats within a process, even when the clock steps back: the time
    /// part then stays at the last value and the sequence counts on.
    pub fn next_id(&self) -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let (micros, seq) = {
            // A poisoned lock only means another thread panicked between two plain integer
            // writes; the pair is still consistent, so keep going.
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let next = if now > last.0 {
                (now, 0)
            } else if last.1 + 1 < (1 << SEQ_BITS) {
                (last.0, last.1 + 1)
            } else {
                (last.0 + 1, 0)
            };
            *last = next;
            next
        };
        let random = u128::from(rand::random::<u16>());
        let micros = u128::from(micros) & ((1 << 54) - 1);
        let bits = (micros << (SEQ_BITS + RANDOM_BITS)) | (u128::from(seq) << RANDOM_BITS) | random;
        QueueId::from_bits(bits)
    }
}

/// One accepted message's envelope and delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The queue id; also the file name in `queue/`.
    pub id: QueueId,
    /// When the message was accepted, unix seconds.
    pub received_unix: u64,
    /// Envelope sender after any rewrite; `""` for the null reverse-path (RFC 5321 4.5.5).
    pub sender: String,
    /// Forward-paths with their per-recipient outcome.
    pub recipients: Vec<Recipient>,
    /// Name of the listener that accepted the message.
    pub listener: String,
    /// Address of the submitting client.
    pub client_ip: IpAddr,
    /// Authenticated user or device identity, if any.
    pub identity: Option<String>,
    /// The message needs SMTPUTF8 upstream (RFC 6531 3.4): the client asked for it, or the
    /// envelope (after sender rewrite) has a UTF-8 address.
    pub smtputf8: bool,
    /// The content is 8-bit (RFC 6152 2): the client declared BODY=8BITMIME, or an octet
    /// above 127 was seen in it.
    pub body_8bit: bool,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, unix seconds.
    pub next_attempt_unix: u64,
    /// Prefix + body bytes; set by `SpoolWriter::commit` from the bytes actually stored.
    pub size: u64,
    /// When the client got its 250, unix milliseconds, for the delivery latency metric; not
    /// stored (0 after a restart, when `received_unix` stands in for it).
    #[serde(skip)]
    pub accepted_ms: u64,
    /// Where the message may already have been delivered: a final dot went to an upstream
    /// and no reply came. The recipients of each are then tried only at that upstream,
    /// never failed over (no blind duplicates), until an attempt there gets an answer. More
    /// than one when the message was split over routes and several transactions were left
    /// so. Stored as one object when there is one (as before the split), a list otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "pins")]
    pub maybe_delivered: Vec<Ambiguous>,
    /// Set while the message waits for an upstream's cap or pause (shaping), for the queue
    /// listing and so that a booked time is used when it comes. Not stored: after a restart
    /// the message is admitted afresh.
    #[serde(skip)]
    pub shaped: Option<Box<Shaped>>,
    /// Set while the message is held (by an administrator, or by `queue.on_ambiguous:
    /// hold`): it is never attempted until released. Absent in files written before holds
    /// existed, which load as not held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// The latest attempt's deciding reply (or what went wrong), for the queue listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// DSN parameters and the notifications already sent (RFC 3461).
    #[serde(default, skip_serializing_if = "MessageDsn::is_empty")]
    pub dsn: MessageDsn,
    /// Octets that wrapping lines over 998 octets (RFC 5322 2.1.1) adds on the way out,
    /// counted at acceptance so that the SIZE declared upstream covers what is sent
    /// (RFC 1870 5); 0 (and not stored) for mail without such lines.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wrap_octets: u64,
}

impl Envelope {
    /// A newly accepted message: no attempt made, no delivery state, no extension
    /// needed; the caller sets what differs (`Envelope { .., ..Envelope::new(..) }`).
    pub fn new(
        id: QueueId,
        received_unix: u64,
        sender: String,
        recipients: Vec<Recipient>,
        listener: String,
        client_ip: IpAddr,
    ) -> Envelope {
        Envelope {
            id,
            received_unix,
            sender,
            recipients,
            listener,
            client_ip,
            identity: None,
            smtputf8: false,
            body_8bit: false,
            attempts: 0,
            next_attempt_unix: 0,
            size: 0,
            accepted_ms: 0,
            maybe_delivered: Vec::new(),
            shaped: None,
            held: None,
            last_reply: None,
            dsn: MessageDsn::default(),
            wrap_octets: 0,
        }
    }
}

/// For `skip_serializing_if`: a field that is 0 is left out of the record.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why and until when a message waits for an upstream (see `upstream::shaping`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaped {
    /// The upstream.
    pub upstream: String,
    /// Until when, unix milliseconds.
    pub until_ms: u64,
    /// The cap that holds it back (`messages_per_minute`, `recipients_per_day`,
    /// `throttled`).
    pub cap: &'static str,
    /// The time is booked in the upstream's caps: the message goes then without being
    /// counted again.
    pub booked: bool,
}

/// Why and since when a message is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// When it was held, unix seconds.
    pub at_unix: u64,
    /// Who or what held it, for the listing.
    pub reason: String,
}

/// Where and when a message (some of its recipients) may have been delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ambiguous {
    /// The upstream that took the final dot.
    pub upstream: String,
    /// When, unix seconds.
    pub at_unix: u64,
    /// The bytes sent to it, the final dot included.
    pub bytes: u64,
    /// The recipients that transaction carried. Empty in files written before messages
    /// were split per route: then it covers every recipient still pending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

/// `maybe_delivered` on disk: absent, one object (the format before routes split
/// messages, so older files load and older builds read the common case), or a list.
mod pins {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Ambiguous;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Pins {
        One(Ambiguous),
        Many(Vec<Ambiguous>),
    }

    pub(super) fn serialize<S: Serializer>(pins: &[Ambiguous], s: S) -> Result<S::Ok, S::Error> {
        match pins {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ambiguous>, D::Error> {
        Ok(match Option::<Pins>::deserialize(d)? {
            None => Vec::new(),
            Some(Pins::One(one)) => vec![one],
            Some(Pins::Many(many)) => many,
        })
    }
}

/// One forward-path and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward-path as accepted (RFC 5321 4.1.2 Forward-path, without angle brackets).
    pub address: String,
    /// Delivery state of this recipient.
    pub status: RcptStatus,
    /// Its DSN parameters and whether its failure was reported (RFC 3461).
    #[serde(default, skip_serializing_if = "RcptDsn::is_empty")]
    pub dsn: RcptDsn,
}

/// Delivery state of one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RcptStatus {
    /// Not yet accepted upstream; will be (re)tried.
    Pending,
    /// An upstream accepted it.
    Delivered {
        /// Name of the upstream that took it.
        upstream: String,
        /// That upstream's reply, for the log and DSNs.
        reply: String,
    },
    /// Failed for good.
    Failed {
        /// The permanent reply (or the local reason) to report in a DSN.
        reply: String,
    },
}

/// Why a file in the spool could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// Shorter than header + footer.
    TooShort {
        /// Actual length.
        len: u64,
    },
    /// Header or footer magic is wrong.
    BadMagic,
    /// A container or envelope version this build does not know.
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The lengths in the footer do not add up to the file length.
    LengthMismatch {
        /// Length the footer implies (saturating).
        expected: u64,
        /// Actual file length.
        actual: u64,
    },
    /// The crc32 does not match the content.
    BadChecksum {
        /// Stored in the footer.
        stored: u32,
        /// Computed over the file.
        computed: u32,
    },
    /// The envelope JSON is malformed (or could not be encoded).
    Envelope(String),
    /// The envelope's id differs from the file name.
    IdMismatch {
        /// Id found in the envelope.
        found: QueueId,
    },
}

impl RecordError {
    /// True when the file is torn or garbled, i.e. it was never completely written and can be
    /// deleted; false when it is intact but unreadable by this build (kept for the admin).
    pub fn is_torn(&self) -> bool {
        matches!(
            self,
            RecordError::TooShort { .. }
                | RecordError::BadMagic
                | RecordError::LengthMismatch { .. }
                | RecordError::BadChecksum { .. }
        )
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::TooShort { len } => write!(f, "file too short ({len} bytes)"),
            RecordError::BadMagic => f.write_str("bad magic"),
            RecordError::UnsupportedVersion { version } => {
                write!(f, "unsupported format version {version}")
            }
            RecordError::LengthMismatch { expected, actual } => {
                write!(
                    f,
                    "length mismatch: footer says {expected} bytes, file has {actual}"
                )
            }
            RecordError::BadChecksum { stored, computed } => {
                write!(
                    f,
                    "crc32 mismatch: stored {stored:08x}, computed {computed:08x}"
                )
            }
            RecordError::Envelope(e) => write!(f, "bad envelope: {e}"),
            RecordError::IdMismatch { found } => write!(f, "envelope id {found} != file name"),
        }
    }
}

/// Serialized form: the schema version beside the envelope.
#[derive(Serialize)]
struct VersionedRef<'a> {
    v: u32,
    envelope: &'a Envelope,
}

/// First decoding pass: only the version, so a newer schema is reported as such.
#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Second decoding pass for schema version 1.
#[derive(Deserialize)]
struct VersionedV1 {
    envelope: Envelope,
}

fn encode_envelope(env: &Envelope) -> Result<Vec<u8>, RecordError> {
    let record = VersionedRef {
        v: ENVELOPE_VERSION,
        envelope: env,
    };
    serde_json::to_vec(&record).map_err(|e| RecordError::Envelope(e.to_string()))
}

fn decode_envelope(json: &[u8]) -> Result<Envelope, RecordError> {
    let bad = |e: serde_json::Error| RecordError::Envelope(e.to_string());
    let VersionOnly { v } = serde_json::from_slice(json).map_err(bad)?;
    if v != ENVELOPE_VERSION {
        return Err(RecordError::UnsupportedVersion { version: v });
    }
    let VersionedV1 { envelope } = serde_json::from_slice(json).map_err(bad)?;
    Ok(envelope)
}

fn header(magic: &[u8; 8]) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&CONTAINER_VERSION.to_le_bytes());
    h
}

/// Checks a 16-byte header against `magic` and the container version.
fn check_header(h: &[u8], magic: &[u8; 8]) -> Result<(), RecordError> {
    if h.get(..8) != Some(magic.as_slice()) {
        return Err(RecordError::BadMagic);
    }
    let version = le_u32(h.get(8..12));
    if version != CONTAINER_VERSION {
        return Err(RecordError::UnsupportedVersion { version });
    }
    Ok(())
}

fn le_u64(b: Option<&[u8]>) -> u64 {
    b.and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn le_u32(b: Option<&[u8]>) -> u32 {
    b.and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The message-file header, to be written (and hashed) before the body.
pub fn message_header() -> [u8; 16] {
    header(MESSAGE_MAGIC)
}

/// Everything after the body: prefix, envelope JSON and footer. `crc` must already cover the
/// header and the body.
pub fn message_trailer(
    body_len: u64,
    prefix: &[u8],
    env: &Envelope,
    mut crc: crc32fast::Hasher,
) -> Result<Vec<u8>, RecordError> {
    let json = encode_envelope(env)?;
    let mut out = Vec::with_capacity(prefix.len() + json.len() + FOOTER_LEN as usize);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&json);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&(prefix.len() as u64).to_le_bytes());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    crc.update(&out);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(MESSAGE_END);
    Ok(out)
}

/// Layout of a message file, from its header and footer only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLayout {
    /// Body bytes at offset `HEADER_LEN`.
    pub body_len: u64,
    /// Prefix bytes right after the body.
    pub prefix_len: u64,
    /// Envelope JSON bytes right after the prefix.
    pub env_len: u64,
    /// crc32 stored in the footer.
    pub crc: u32,
}

impl MessageLayout {
    fn prefix_offset(&self) -> u64 {
        HEADER_LEN + self.body_len
    }
}

/// Reads header and footer of a message file of `file_len` bytes and checks that they are
/// consistent. The outer error is an I/O failure (the file may be fine); the inner one means the
/// file is not a complete message.
pub fn read_layout<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
) -> io::Result<Result<MessageLayout, RecordError>> {
    if file_len < HEADER_LEN + FOOTER_LEN {
        return Ok(Err(RecordError::TooShort { len: file_len }));
    }
    let mut head = [0u8; HEADER_LEN as usize];
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut head)?;
    let mut foot = [0u8; FOOTER_LEN as usize];
    r.seek(SeekFrom::Start(file_len - FOOTER_LEN))?;
    r.read_exact(&mut foot)?;
    if let Err(e) = check_header(&head, MESSAGE_MAGIC) {
        return Ok(Err(e));
    }
    if foot.get(28..32) != Some(MESSAGE_END.as_slice()) {
        return Ok(Err(RecordError::BadMagic));
    }
    let layout = MessageLayout {
        body_len: le_u64(foot.get(0..8)),
        prefix_len: le_u64(foot.get(8..16)),
        env_len: le_u64(foot.get(16..24)),
        crc: le_u32(foot.get(24..28)),
    };
    let expected = [
        layout.body_len,
        layout.prefix_len,
        layout.env_len,
        FOOTER_LEN,
    ]
    .iter()
    .fold(HEADER_LEN, |acc, n| acc.saturating_add(*n));
    if expected != file_len {
        return Ok(Err(RecordError::LengthMismatch {
            expected,
            actual: file_len,
        }));
    }
    Ok(Ok(layout))
}

/// A fully verified message file: its envelope and where the pieces are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedMessage {
    /// The envelope stored at commit time.
    pub envelope: Envelope,
    /// Where body, prefix and envelope sit.
    pub layout: MessageLayout,
}

/// Reads and verifies a whole message file (layout, crc32 over every byte, envelope JSON). The
/// body is streamed through the checksum in 64 KiB chunks, never held in memory.
pub fn verify_message<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
) -> io::Result<Result<VerifiedMessage, RecordError>> {
    let layout = match read_layout(r, file_len)? {
        Ok(layout) => layout,
        Err(e) => return Ok(Err(e)),
    };
    let mut crc = crc32fast::Hasher::new();
    r.seek(SeekFrom::Start(0))?;
    let mut remaining = layout.prefix_offset();
    let mut buf = vec![0u8; 64 * 1024];
    while remaining > 0 {
        let n = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let chunk = buf.get_mut(..n).unwrap_or_default();
        r.read_exact(chunk)?;
        crc.update(chunk);
        remaining -= n as u64;
    }
    // Prefix and envelope together are bounded by the file length checked above.
    let tail_len = usize::try_from(layout.prefix_len + layout.env_len + 24)
        .map_err(|_| io::Error::other("message trailer does not fit in memory"))?;
    let mut tail = vec![0u8; tail_len];
    r.read_exact(&mut tail)?;
    crc.update(&tail);
    let computed = crc.finalize();
    if computed != layout.crc {
        return Ok(Err(RecordError::BadChecksum {
            stored: layout.crc,
            computed,
        }));
    }
    let json_start = layout.prefix_len as usize;
    let json = tail
        .get(json_start..json_start + layout.env_len as usize)
        .unwrap_or_default();
    Ok(decode_envelope(json).map(|envelope| VerifiedMessage { envelope, layout }))
}

/// Reads the prefix of a message whose layout is known, leaving the reader at the body start.
pub fn read_prefix<R: Read + Seek>(r: &mut R, layout: &MessageLayout) -> io::Result<Vec<u8>> {
    let len = usize::try_from(layout.prefix_len)
        .map_err(|_| io::Error::other("message prefix does not fit in memory"))?;
    let mut prefix = vec![0u8; len];
    r.seek(SeekFrom::Start(layout.prefix_offset()))?;
    r.read_exact(&mut prefix)?;
    r.seek(SeekFrom::Start(HEADER_LEN))?;
    Ok(prefix)
}

/// Encodes a state file.
pub fn encode_state(env: &Envelope) -> Result<Vec<u8>, RecordError> {
    let json = encode_envelope(env)?;
    let mut out = Vec::with_capacity(16 + json.len() + STATE_FOOTER_LEN);
    out.extend_from_slice(&header(STATE_MAGIC));
    out.extend_from_slice(&json);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(STATE_END);
    Ok(out)
}

/// Decodes and verifies a state file.
pub fn decode_state(bytes: &[u8]) -> Result<Envelope, RecordError> {
    let len = bytes.len() as u64;
    if bytes.len() < 16 + STATE_FOOTER_LEN {
        return Err(RecordError::TooShort { len });
    }
    check_header(bytes.get(..16).unwrap_or_default(), STATE_MAGIC)?;
    let foot_at = bytes.len() - STATE_FOOTER_LEN;
    if bytes.get(foot_at + 12..) != Some(STATE_END.as_slice()) {
        return Err(RecordError::BadMagic);
    }
    let env_len = le_u64(bytes.get(foot_at..foot_at + 8));
    let expected = env_len.saturating_add((16 + STATE_FOOTER_LEN) as u64);
    if expected != len {
        return Err(RecordError::LengthMismatch {
            expected,
            actual: len,
        });
    }
    let stored = le_u32(bytes.get(foot_at + 8..foot_at + 12));
    let computed = crc32fast::hash(bytes.get(..foot_at + 8).unwrap_or_default());
    if stored != computed {
        return Err(RecordError::BadChecksum { stored, computed });
    }
    decode_envelope(bytes.get(16..foot_at).unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
pub(crate) mod tests {
    use super::*;
    use crate::smtp::dsn::{Notify, Orcpt, Ret};
    use std::io::Cursor;

    pub(crate) fn sample(id: QueueId) -> Envelope {
        Envelope {
            id,
            received_unix: 1_700_000_000,
            sender: "scans@corp.example".into(),
            recipients: vec![
                Recipient {
                    address: "a@example.org".into(),
                    status: RcptStatus::Pending,
                    dsn: Default::default(),
                },
                Recipient {
                    address: "b@example.org".into(),
                    status: RcptStatus::Delivered {
                        upstream: "m365".into(),
                        reply: "250 ok".into(),
                    },
                    dsn: RcptDsn {
                        notify: Some(Notify {
                            success: true,
                            failure: true,
                            delay: false,
                        }),
                        orcpt: Some(Orcpt {
                            addr_type: "rfc822".into(),
                            xtext: "b+2Bx@example.org".into(),
                        }),
                        remote: None,
                        relayed: false,
                        reported: false,
                    },
                },
                Recipient {
                    address: "ç@example.org".into(),
                    status: RcptStatus::Failed {
                        reply: "550 5.1.1 no".into(),
                    },
                    dsn: RcptDsn {
                        remote: Some("m365".into()),
                        reported: true,
                        ..RcptDsn::default()
                    },
                },
            ],
            listener: "legacy".into(),
            client_ip: "2001:db8::1".parse().unwrap(),
            identity: None,
            smtputf8: true,
            body_8bit: true,
            attempts: 3,
            next_attempt_unix: 1_700_000_600,
            size: 42,
            accepted_ms: 0,
            maybe_delivered: Vec::new(),
            shaped: None,
            held: None,
            last_reply: None,
            dsn: MessageDsn {
                ret: Some(Ret::Hdrs),
                envid: Some("QQ+2B1".into()),
                delay_warned: true,
            },
            wrap_octets: 0,
        }
    }

    #[test]
    fn queue_id_validation() {
        let table: &[(&str, bool)] = &[
            ("0123456789ABCDEF", true),
            ("VVVVVVVVVVVVVVVV", true),
            ("0000000000000000", true),
            ("", false),
            ("0123456789ABCDE", false),
            ("0123456789ABCDEFG", false),
            ("0123456789abcdef", false),
            ("0123456789ABCDEW", false),
            ("0123456789ABC/EF", false),
            ("0123456789ABC.EF", false),
            ("0123456789ABCDÉ", false),
        ];
        for &(text, ok) in table {
            assert_eq!(text.parse::<QueueId>().is_ok(), ok, "{text:?}");
        }
    }

    #[test]
    fn generated_ids_increase_and_parse() {
        let ids = IdGenerator::default();
        let all: Vec<QueueId> = (0..5000).map(|_| ids.next_id()).collect();
        for pair in all.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        for id in &all {
            assert_eq!(id.as_str().parse::<QueueId>().unwrap(), *id);
        }
    }

    #[test]
    fn from_bits_is_big_endian_base32hex() {
        assert_eq!(QueueId::from_bits(0).as_str(), "0000000000000000");
        assert_eq!(QueueId::from_bits(31).as_str(), "000000000000000V");
        assert_eq!(QueueId::from_bits(32).as_str(), "0000000000000010");
        assert_eq!(
            QueueId::from_bits((1 << 80) - 1).as_str(),
            "VVVVVVVVVVVVVVVV"
        );
    }

    /// `maybe_delivered`: a file written before messages were split per route (one object,
    /// no recipients) still loads; one pin is written as an object (older builds read it),
    /// several as a list; none leaves the key out.
    #[test]
    fn maybe_delivered_pins_on_disk() {
        let env = sample("0123456789ABCDEF".parse().unwrap());
        let json = String::from_utf8(encode_envelope(&env).unwrap()).unwrap();
        assert!(!json.contains("maybe_delivered"), "{json}");
        let old = json.replacen(
            r#""listener":"legacy","#,
            r#""listener":"legacy","maybe_delivered":{"upstream":"b","at_unix":7,"bytes":99},"#,
            1,
        );
        let loaded = decode_envelope(old.as_bytes()).unwrap();
        let legacy = Ambiguous {
            upstream: "b".into(),
            at_unix: 7,
            bytes: 99,
            recipients: Vec::new(),
        };
        assert_eq!(loaded.maybe_delivered, std::slice::from_ref(&legacy));
        let pin = |upstream: &str, rcpt: &str| Ambiguous {
            upstream: upstream.into(),
            recipients: vec![rcpt.into()],
            ..legacy.clone()
        };
        let mut one = env.clone();
        one.maybe_delivered = vec![pin("a", "x@one.example")];
        let json = String::from_utf8(encode_envelope(&one).unwrap()).unwrap();
        assert!(
            json.contains(r#""maybe_delivered":{"upstream":"a","at_unix":7,"bytes":99,"recipients":["x@one.example"]}"#),
            "{json}"
        );
        assert_eq!(decode_envelope(json.as_bytes()).unwrap(), one);
        let mut two = env;
        two.maybe_delivered = vec![pin("a", "x@one.example"), pin("b", "y@two.example")];
        let json = String::from_utf8(encode_envelope(&two).unwrap()).unwrap();
        assert!(
            json.contains(r#""maybe_delivered":[{"upstream":"a","#),
            "{json}"
        );
        assert_eq!(decode_envelope(json.as_bytes()).unwrap(), two);
    }

    #[test]
    fn envelope_json_is_versioned() {
        let env = sample("0123456789ABCDEF".parse().unwrap());
        let json = String::from_utf8(encode_envelope(&env).unwrap()).unwrap();
        assert!(
            json.starts_with(r#"{"v":1,"envelope":{"id":"0123456789ABCDEF","#),
            "{json}"
        );
        assert!(json.contains(r#"{"state":"delivered","upstream":"m365","reply":"250 ok"}"#));
        assert_eq!(decode_envelope(json.as_bytes()).unwrap(), env);
        // The DSN fields are stored, under their own names.
        for field in [
            r#""dsn":{"notify":"SUCCESS,FAILURE","orcpt":{"addr_type":"rfc822","xtext":"b+2Bx@example.org"}}"#,
            r#""dsn":{"remote":"m365","reported":true}"#,
            r#""dsn":{"ret":"hdrs","envid":"QQ+2B1","delay_warned":true}"#,
        ] {
            assert!(json.contains(field), "{field} in {json}");
        }
        // An envelope written before DSN support (no "dsn" anywhere) still loads, with
        // empty DSN state; an empty DSN state is not written at all.
        let mut old = env.clone();
        old.dsn = MessageDsn::default();
        for r in &mut old.recipients {
            r.dsn = RcptDsn::default();
        }
        let old_json = String::from_utf8(encode_envelope(&old).unwrap()).unwrap();
        assert!(!old_json.contains("dsn"), "{old_json}");
        assert_eq!(decode_envelope(old_json.as_bytes()).unwrap(), old);
        let bad_notify = json.replace("SUCCESS,FAILURE", "NEVER,SUCCESS");
        assert!(decode_envelope(bad_notify.as_bytes()).is_err());
        let table: &[(&str, RecordError)] = &[
            (
                r#"{"v":2,"envelope":{}}"#,
                RecordError::UnsupportedVersion { version: 2 },
            ),
            (r#"{"v":0}"#, RecordError::UnsupportedVersion { version: 0 }),
        ];
        for (text, expected) in table {
            assert_eq!(decode_envelope(text.as_bytes()).unwrap_err(), *expected);
        }
        let bad_id = json.replace("0123456789ABCDEF", "nope");
        assert!(matches!(
            decode_envelope(bad_id.as_bytes()),
            Err(RecordError::Envelope(_))
        ));
    }

    /// A hold and the last reply survive a round trip through a state file; a file written
    /// before they existed (no such keys) loads as not held, with no last reply.
    #[test]
    fn held_and_last_reply_round_trip_and_default_when_absent() {
        let mut env = sample("0123456789ABCDEF".parse().unwrap());
        env.held = Some(Held {
            at_unix: 1_700_000_100,
            reason: "held by an administrator".into(),
        });
        env.last_reply = Some("451 4.3.0 try later".into());
        let state = encode_state(&env).unwrap();
        assert_eq!(decode_state(&state).unwrap(), env);
        let json = String::from_utf8(encode_envelope(&env).unwrap()).unwrap();
        assert!(
            json.contains(r#""held":{"at_unix":1700000100,"reason":"held by an administrator"}"#)
        );
        env.held = None;
        env.last_reply = None;
        let old = String::from_utf8(encode_envelope(&env).unwrap()).unwrap();
        assert!(
            !old.contains("held") && !old.contains("last_reply"),
            "{old}"
        );
        assert_eq!(decode_envelope(old.as_bytes()).unwrap(), env);
    }

    fn message_bytes(body: &[u8], prefix: &[u8], env: &Envelope) -> Vec<u8> {
        let mut crc = crc32fast::Hasher::new();
        let mut out = message_header().to_vec();
        out.extend_from_slice(body);
        crc.update(&out);
        out.extend(message_trailer(body.len() as u64, prefix, env, crc).unwrap());
        out
    }

    #[test]
    fn message_round_trip_and_every_truncation() {
        let env = sample("0123456789ABCDEF".parse().unwrap());
        let bytes = message_bytes(
            b"Subject: x\r\n\r\n\xff\x00body\r\n",
            b"Received: y\r\n",
            &env,
        );
        let len = bytes.len() as u64;
        let mut cur = Cursor::new(&bytes);
        let verified = verify_message(&mut cur, len).unwrap().unwrap();
        assert_eq!(verified.envelope, env);
        assert_eq!(verified.layout.body_len, 22);
        assert_eq!(
            read_prefix(&mut cur, &verified.layout).unwrap(),
            b"Received: y\r\n"
        );
        assert_eq!(cur.position(), HEADER_LEN);
        for cut in 0..bytes.len() {
            let torn = &bytes[..cut];
            let err = verify_message(&mut Cursor::new(torn), cut as u64)
                .unwrap()
                .unwrap_err();
            assert!(err.is_torn(), "cut {cut}: {err}");
        }
        for flip in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[flip] ^= 0x01;
            let err = verify_message(&mut Cursor::new(&bad), len)
                .unwrap()
                .unwrap_err();
            // The version field is the one flip that reads as "newer format", not as torn.
            let expect_torn = !(8..12).contains(&flip);
            assert_eq!(err.is_torn(), expect_torn, "flip {flip}: {err}");
        }
    }

    #[test]
    fn state_round_trip_and_every_truncation() {
        let env = sample("0123456789ABCDEF".parse().unwrap());
        let bytes = encode_state(&env).unwrap();
        assert_eq!(&bytes[..8], b"PSTNSTA\0");
        assert_eq!(&bytes[bytes.len() - 4..], b"SEND");
        assert_eq!(decode_state(&bytes).unwrap(), env);
        for cut in 0..bytes.len() {
            assert!(
                decode_state(&bytes[..cut]).unwrap_err().is_torn(),
                "cut {cut}"
            );
        }
        for flip in (0..8).chain(12..bytes.len()) {
            let mut bad = bytes.clone();
            bad[flip] ^= 0x80;
            assert!(decode_state(&bad).unwrap_err().is_torn(), "flip {flip}");
        }
    }
}
