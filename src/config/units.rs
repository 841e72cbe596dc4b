//! Human units in the config file: durations (`30s`, `5m`, `3d`) and sizes (`25MiB`, `10MB`).
//!
//! Both parse from strings; a bare integer is accepted too (seconds, bytes) so that
//! `max_message_size: 1048576` works as an admin would expect.

use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A span of time written `500ms`, `30s`, `5m`, `2h`, `3d` or `1w` (or a bare number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub StdDuration);

/// A quantity of bytes written `512`, `64KiB`, `25MiB`, `1GiB`, `10kB`, `10MB` or `1GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl Duration {
    /// Builds a duration from whole seconds.
    pub const fn secs(s: u64) -> Self {
        Duration(StdDuration::from_secs(s))
    }
    /// The std duration.
    pub const fn get(self) -> StdDuration {
        self.0
    }
}

impl ByteSize {
    /// Builds a size from kibibytes.
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }

    /// Builds a size from mebibytes.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Splits `"25MiB"` into `(25, "MiB")`; the number part must be non-empty decimal digits.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let n = s[..end].parse().ok()?;
    Some((n, s[end..].trim()))
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid duration {s:?}: expected a number with a unit: ms, s, m, h, d or w (e.g. 30s, 5m, 3d)"
            )
        };
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let ms: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return Err(bad()),
        };
        n.checked_mul(ms)
            .map(|ms| Duration(StdDuration::from_millis(ms)))
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid size {s:?}: expected a number with an optional unit: B, KiB, MiB, GiB, kB, MB or GB (e.g. 25MiB)"
            )
        };
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let mult: u64 = match unit {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

/// Accepts either a string with a unit or a bare non-negative integer.
struct UnitVisitor<T>(std::marker::PhantomData<T>, &'static str);

impl<T> Visitor<'_> for UnitVisitor<T>
where
    T: FromStr<Err = String>,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        v.to_string().parse().map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if v < 0 {
            return Err(E::custom(format!("{v} is negative")));
        }
        v.to_string().parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor(
            std::marker::PhantomData,
            "a duration such as 30s, 5m or 3d",
        ))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor(
            std::marker::PhantomData,
            "a size such as 25MiB",
        ))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table: &[(&str, Option<u64>)] = &[
            ("30s", Some(30_000)),
            ("5m", Some(300_000)),
            ("3d", Some(259_200_000)),
            ("1w", Some(604_800_000)),
            ("250ms", Some(250)),
            ("45", Some(45_000)),
            (" 2h ", Some(7_200_000)),
            ("", None),
            ("s", None),
            ("5 parsecs", None),
            ("-3s", None),
            ("99999999999999999999d", None),
        ];
        for (input, want) in table {
            let got = input
                .parse::<Duration>()
                .ok()
                .map(|d| d.0.as_millis() as u64);
            assert_eq!(got, *want, "input {input:?}");
        }
    }

    #[test]
    fn sizes() {
        let table: &[(&str, Option<u64>)] = &[
            ("25MiB", Some(25 << 20)),
            ("64KiB", Some(64 << 10)),
            ("1GiB", Some(1 << 30)),
            ("10MB", Some(10_000_000)),
            ("512", Some(512)),
            ("512B", Some(512)),
            ("12 parsecs", None),
            ("MiB", None),
        ];
        for (input, want) in table {
            assert_eq!(
                input.parse::<ByteSize>().ok().map(|b| b.0),
                *want,
                "input {input:?}"
            );
        }
    }
}
