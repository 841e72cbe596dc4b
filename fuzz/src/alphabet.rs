//! `session_alphabet`: the session fed SMTP tokens instead of bytes
//! (smtp-proto's approach), so the fuzzer assembles whole dialogues, deep
//! transactions and cap-crossing runs quickly. Checked like `session_raw`.

use crate::input::Input;
use crate::session::{Plan, check_plan, session_config};

/// Input byte `b < 0xF0` stands for `TOKENS[b % TOKENS.len()]`.
const TOKENS: &[&[u8]] = &[
    b"EHLO client.example\r\n",
    b"HELO h\r\n",
    b"EHLO",
    b"HELO",
    b" ",
    b"MAIL FROM:<",
    b"RCPT TO:<",
    b"a@b.example",
    b"postmaster",
    b">",
    b"<>",
    b"@",
    b"\"",
    b"\\",
    b"@r.example,@s.example:",
    b"[192.0.2.1]",
    b"[IPv6:2001:db8::1]",
    b" SIZE=",
    b"100",
    b"99999999999999999999",
    b" BODY=8BITMIME",
    b" BODY=7BIT",
    b" SMTPUTF8",
    b" AUTH=<>",
    b"\xc3\xbc",
    b"\xff",
    b"\0",
    b"DATA\r\n",
    b"DATA",
    b"BDAT 10 LAST\r\n",
    b"BDAT",
    b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"..",
    b"\r\n.\r\n",
    b".\r\n",
    b"\n.\n",
    b"\r.\r",
    b"AUTH PLAIN",
    b"AUTH PLAIN AGFwcDEAc2VjcmV0\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH LOGIN",
    b"AUTH CRAM-MD5\r\n",
    b"AGFwcDEAc2VjcmV0",
    b"YXBwMQ==",
    b"c2VjcmV0",
    b"=",
    b"*",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"EXPN x\r\n",
    b"HELP\r\n",
    b"GET / HTTP/1.1\r\n",
    b"Subject: x\r\n",
    b"x",
    b"MAIL FROM:<a@b.example>\r\n",
    b"RCPT TO:<c@d.example>\r\n",
];

/// Input byte `0xF0..=0xFE` is a run of `RUNS[b - 0xF0]`, as long as
/// 64 x (next byte + 1): up to 16 KiB, past every line and size cap.
const RUNS: &[u8; 15] = b"x .\r\n<>@\"A=\xff\0:,";

/// Input byte `0xFF` ends a read (the shell feeds what came before it).
const CUT: u8 = 0xFF;

/// Expanded client bytes stop growing here, to keep runs fast.
const MAX_STREAM: usize = 256 * 1024;

/// Header as in `session_raw` minus the split seed; then tokens.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let (cfg, tls_active) = session_config(&mut input);
    let verdict_seed = input.byte();
    let ending = input.byte();
    let (stream, cuts) = expand(input.rest());
    let mut reads = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        reads.push(&stream[from..cut]);
        from = cut;
    }
    check_plan(&Plan {
        cfg,
        tls_active,
        reads,
        verdict_seed,
        ending,
    });
}

/// Tokens to bytes; returns the bytes and the read boundaries.
fn expand(tokens: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut cuts = Vec::new();
    let mut iter = tokens.iter();
    while let Some(&b) = iter.next() {
        if out.len() > MAX_STREAM {
            break;
        }
        match b {
            CUT => cuts.push(out.len()),
            0xF0.. => {
                let c = RUNS[usize::from(b - 0xF0)];
                let len = 64 * (usize::from(iter.next().copied().unwrap_or(0)) + 1);
                out.extend(std::iter::repeat_n(c, len));
            }
            _ => out.extend_from_slice(TOKENS[usize::from(b) % TOKENS.len()]),
        }
    }
    (out, cuts)
}
