//! Retry backoff as a pure function (chasquid `nextDelay`, made exponential).

use std::time::Duration;

/// Jitter bound in permille of the delay: ±10%.
const JITTER_PERMILLE: u64 = 100;

/// Delay before the next delivery attempt of a message that has failed `attempts` times.
///
/// RFC 5321 4.5.4.1: the retry interval should be at least 30 minutes for a mail relay, with
/// the sender-SMTP free to use shorter intervals early on; `min` and `max` come from config.
/// The delay doubles from `min` (attempts 0 and 1 wait `min`, attempt 2 waits `2*min`, ...),
/// is capped at `max`, and then moved by up to ±10% derived from `jitter_seed`, so that a queue
/// recovered after a restart does not retry every message in the same instant. The jitter is
/// applied after the cap on purpose: capped delays would otherwise all coincide again.
pub fn next_delay(attempts: u32, min: Duration, max: Duration, jitter_seed: u64) -> Duration {
    let doublings = attempts.saturating_sub(1);
    let base = 1u32
        .checked_shl(doublings)
        .and_then(|factor| min.checked_mul(factor))
        .map_or(max, |d| d.min(max));
    // Jitter in permille, uniform over [-100, +100].
    let offset = splitmix64(jitter_seed) % (2 * JITTER_PERMILLE + 1);
    let permille = u128::from(1000 - JITTER_PERMILLE + offset);
    let nanos = base.as_nanos() * permille / 1000;
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder of a division by 10^9 always fits in a u32.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, sub)
}

/// SplitMix64 finaliser: spreads nearby seeds (such as sequential ids) over the whole range.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const MAX: Duration = Duration::from_secs(3600);

    /// The smallest seed whose jitter is exactly zero.
    fn zero_jitter_seed() -> u64 {
        assert_eq!(splitmix64(231) % 201, 100);
        231
    }

    #[test]
    fn doubling_and_cap_without_jitter() {
        let seed = zero_jitter_seed();
        // (attempts, expected seconds)
        let table: &[(u32, u64)] = &[
            (0, 60),
            (1, 60),
            (2, 120),
            (3, 240),
            (4, 480),
            (5, 960),
            (6, 1920),
            (7, 3600),
            (8, 3600),
            (31, 3600),
            (32, 3600),
            (33, 3600),
            (u32::MAX, 3600),
        ];
        for &(attempts, secs) in table {
            assert_eq!(
                next_delay(attempts, MIN, MAX, seed),
                Duration::from_secs(secs),
                "{attempts}"
            );
        }
    }

    #[test]
    fn jitter_is_deterministic_and_within_ten_percent() {
        // (seed, attempts, expected): pinned values, so a change of the formula shows up.
        let table: &[(u64, u32, Duration)] = &[
            (0, 1, Duration::from_millis(58_200)),     // -3.0%
            (1, 3, Duration::from_millis(227_280)),    // -5.3%
            (42, 9, Duration::from_millis(3_438_000)), // -4.5%
            (231, 2, Duration::from_secs(120)),        // +0.0%
        ];
        for &(seed, attempts, expected) in table {
            assert_eq!(
                next_delay(attempts, MIN, MAX, seed),
                expected,
                "seed {seed}"
            );
        }
        for seed in 0..2000 {
            let d = next_delay(2, MIN, MAX, seed);
            assert!(
                d >= Duration::from_secs(108) && d <= Duration::from_secs(132),
                "{d:?}"
            );
        }
    }

    #[test]
    fn spread_reaches_both_ends() {
        let delays: Vec<Duration> = (0..2000).map(|s| next_delay(1, MIN, MAX, s)).collect();
        assert_eq!(delays.iter().min(), Some(&Duration::from_secs(54)));
        assert_eq!(delays.iter().max(), Some(&Duration::from_secs(66)));
    }

    #[test]
    fn min_above_max_is_capped() {
        let seed = zero_jitter_seed();
        let table: &[(u32, Duration, Duration, Duration)] = &[
            (
                1,
                Duration::from_secs(10),
                Duration::from_secs(5),
                Duration::from_secs(5),
            ),
            (1, Duration::ZERO, Duration::from_secs(5), Duration::ZERO),
            (1, Duration::MAX, Duration::MAX, Duration::MAX),
        ];
        for &(attempts, min, max, expected) in table {
            assert_eq!(next_delay(attempts, min, max, seed), expected);
        }
    }
}
