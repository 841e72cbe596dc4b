//! Human units in the config file: durations (`30s`, `5m`, `3d`) and sizes (`25MiB`, `10MB`).
//!
//! Both parse from strings; a bare integer is accepted too (seconds, bytes) so that
//! `max_message_size: 1048576` works as an admin would expect.

use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
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

/// What a duration must look like: in the parser's error and the JSON Schema's
/// `patternErrorMessage` alike.
const DURATION_EXPECTED: &str =
    "expected a number with a unit: ms, s, m, h, d or w (e.g. 30s, 5m, 3d)";

/// What a size must look like: in the parser's error and the JSON Schema's
/// `patternErrorMessage` alike.
const SIZE_EXPECTED: &str =
    "expected a number with an optional unit: B, KiB, MiB, GiB, kB, MB or GB (e.g. 25MiB)";

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
        let bad = || format!("invalid duration {s:?}: {DURATION_EXPECTED}");
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
        let bad = || format!("invalid size {s:?}: {SIZE_EXPECTED}");
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

/// Duration units, largest first, in milliseconds: what [`Duration`]'s `Serialize` picks from.
const DURATION_UNITS: [(&str, u128); 6] = [
    ("w", 604_800_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// Size units, largest first: what [`ByteSize`]'s `Serialize` picks from (binary units, as
/// the defaults are written).
const SIZE_UNITS: [(&str, u64); 4] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// Serialized in the config's own notation with the largest unit that divides it exactly
/// (`5m`, `1h`, `250ms`), so the JSON Schema's defaults read as the docs write them.
impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        let (unit, size) = DURATION_UNITS
            .into_iter()
            .find(|(_, size)| ms.is_multiple_of(*size) && ms >= *size)
            .unwrap_or(("s", 1000));
        s.collect_str(&format_args!("{}{unit}", ms / size))
    }
}

/// Serialized as `25MiB`, `64KiB` or `512B`: the largest binary unit that divides it exactly.
impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (unit, size) = SIZE_UNITS
            .into_iter()
            .find(|(_, size)| self.0.is_multiple_of(*size) && self.0 >= *size)
            .unwrap_or(("B", 1));
        s.collect_str(&format_args!("{}{unit}", self.0 / size))
    }
}

/// The JSON Schema of what [`Duration`]'s `Deserialize` takes: a string matching
/// [`FromStr`](Duration::from_str) (digits, optional spaces, a unit) or a whole number of
/// seconds, not negative. Overflow is left to the loader.
impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        concat!(module_path!(), "::Duration").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A span of time: a whole number and a unit, ms, s, m, h, d or w \
                (`500ms`, `30s`, `5m`, `2h`, `3d`, `1w`), or a bare whole number of seconds.",
            "type": ["string", "integer"],
            "pattern": r"^\s*[0-9]+\s*(ms|s|m|h|d|w)?\s*$",
            "patternErrorMessage": DURATION_EXPECTED,
            "minimum": 0,
            "examples": ["30s", "5m", "3d"]
        })
    }
}

/// The JSON Schema of what [`ByteSize`]'s `Deserialize` takes: a string matching
/// [`FromStr`](ByteSize::from_str) or a whole number of bytes, not negative.
impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        concat!(module_path!(), "::ByteSize").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: a whole number and an optional unit, B, KiB (or K, k), \
                MiB (or M), GiB (or G), kB (or KB), MB or GB (`512`, `64KiB`, `25MiB`, `10MB`), \
                or a bare whole number of bytes.",
            "type": ["string", "integer"],
            "pattern": r"^\s*[0-9]+\s*(B|KiB|K|k|MiB|M|GiB|G|kB|KB|MB|GB)?\s*$",
            "patternErrorMessage": SIZE_EXPECTED,
            "minimum": 0,
            "examples": ["25MiB", "64KiB"]
        })
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

    /// `Serialize` writes the notation the parser reads back, with the largest exact unit.
    #[test]
    fn serialized_forms_parse_back() {
        let durations = [
            (Duration::secs(300), "5m"),
            (Duration::secs(3600), "1h"),
            (Duration::secs(5 * 86_400), "5d"),
            (Duration::secs(14 * 86_400), "2w"),
            (Duration::secs(90), "90s"),
            (Duration(StdDuration::from_millis(200)), "200ms"),
            (Duration(StdDuration::from_millis(1500)), "1500ms"),
            (Duration::secs(0), "0s"),
        ];
        for (d, want) in durations {
            let json = serde_json::to_value(d).unwrap();
            assert_eq!(json, want);
            assert_eq!(want.parse::<Duration>().unwrap(), d);
        }
        let sizes = [
            (ByteSize::mib(25), "25MiB"),
            (ByteSize::kib(64), "64KiB"),
            (ByteSize(1 << 30), "1GiB"),
            (ByteSize(1500), "1500B"),
            (ByteSize(0), "0B"),
        ];
        for (b, want) in sizes {
            assert_eq!(serde_json::to_value(b).unwrap(), want);
            assert_eq!(want.parse::<ByteSize>().unwrap(), b);
        }
    }
}
