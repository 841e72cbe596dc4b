//! Turning the fuzzer's flat byte string into settings, split points and
//! verdicts.
//!
//! Settings are read from the first bytes, so a mutation of one header byte
//! changes one setting and leaves the rest of the input (the SMTP bytes, which
//! the seeds keep realistic) alone.

/// Reads settings bytes off the front of the input; an exhausted input reads
/// as zeros, so every input is valid.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps the fuzzer's input.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { rest: data }
    }

    /// The next byte, or 0 once the input is exhausted.
    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    /// One of `choices`, picked by the next byte.
    pub fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        let i = usize::from(self.byte()) % choices.len();
        choices[i]
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.rest
    }
}

/// A small deterministic generator (xorshift64*), seeded from input bytes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        // Any non-zero state works; mix the seed so nearby seeds diverge.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Splits `data` the way reads from a socket might, as fixed by `seed`:
/// 0 = one read, 1 = byte by byte, otherwise random lengths up to a
/// seed-chosen maximum (2 to 32768 bytes).
pub fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    match seed {
        0 => vec![data],
        1 => data.chunks(1).collect(),
        _ => {
            let max = 2usize << (seed % 15);
            let mut rng = Rng::new(u64::from(seed));
            let mut out = Vec::new();
            let mut rest = data;
            while !rest.is_empty() {
                let len = 1 + rng.below(max.min(rest.len()));
                let (head, tail) = rest.split_at(len);
                out.push(head);
                rest = tail;
            }
            out
        }
    }
}

/// True if every CR is followed by LF and every LF preceded by CR.
pub fn crlf_only(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes.get(i - 1) == Some(&b'\r'),
        _ => true,
    })
}
