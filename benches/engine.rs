//! Throughput of the sans-I/O engine on whole transactions: what one core spends on SMTP
//! syntax, state and DATA decoding per message, with no I/O at all.
//!
//! `cargo bench --bench engine`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use postern::smtp::data::{BareLf, LongLines};
use postern::smtp::session::{
    AuthPolicy, Question, Session, SessionConfig, Step, TlsOffer, Verdict,
};

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "relay.bench.example".into(),
        tls: TlsOffer::None,
        auth: AuthPolicy::None,
        max_message_size: 25 << 20,
        max_recipients: 100,
        max_errors: 10,
        bare_line_endings: BareLf::Reject,
        long_lines: LongLines::Wrap,
        max_junk_commands: 100,
    }
}

/// A 10 KiB message body with some lines that need dot-stuffing.
fn body() -> Vec<u8> {
    let mut b = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n".to_vec();
    while b.len() < 10 * 1024 {
        b.extend_from_slice(
            b"the quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n",
        );
        b.extend_from_slice(b"..a line that was dot-stuffed by the client\r\n");
    }
    b.extend_from_slice(b".\r\n");
    b
}

/// Runs one pipelined transaction through a session, answering every question with yes.
fn transaction(session: &mut Session, input: &[u8]) -> usize {
    let mut pos = 0;
    let mut body_bytes = 0;
    loop {
        let (used, step) = session.advance(&input[pos..]);
        pos += used;
        let body = session.take_body();
        body_bytes += body.len();
        body.clear();
        let step = match step {
            Step::Decide(Question::Message { .. }) => session.answer(Verdict::Queued("ID".into())),
            Step::Decide(_) => session.answer(Verdict::Accept),
            other => other,
        };
        session.output().clear();
        if matches!(step, Step::NeedInput) && pos >= input.len() {
            return body_bytes;
        }
        if matches!(step, Step::Close) {
            return body_bytes;
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut input =
        b"MAIL FROM:<a@example.com> BODY=8BITMIME\r\nRCPT TO:<b@example.net>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&body());
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("transaction_10k", |b| {
        let mut session = Session::new(config(), false);
        session.greet();
        let _ = session.advance(b"EHLO bench.example\r\n");
        session.output().clear();
        b.iter(|| black_box(transaction(&mut session, black_box(&input))));
    });
    group.bench_function("session_connect_ehlo_quit", |b| {
        b.iter(|| {
            let mut session = Session::new(config(), false);
            session.greet();
            let r = session.advance(black_box(b"EHLO bench.example\r\nQUIT\r\n"));
            black_box(r.0)
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
