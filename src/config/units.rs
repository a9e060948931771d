//! Human-friendly units for config values: `"16KiB"`, `"5s"`.
//!
//! Parsing happens inside serde so a bad value is reported with the
//! file and line it came from, like any other type error.

use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

/// A size in bytes, written as an integer or as `"64KiB"`, `"16MiB"`, `"1GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().map_err(|_| {
            format!("`{text}` is not a size (write e.g. 4096, \"64KiB\", \"16MiB\")")
        })?;
        let scale = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB or GiB)"
                ))
            }
        };
        n.checked_mul(scale)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 4096 or \"16MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written the humantime way: `"250ms"`, `"5s"`, `"2m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let dur = duration(d)?;
        if dur.is_zero() {
            return Err(de::Error::custom("a timeout must be greater than zero"));
        }
        Ok(Timeout(dur))
    }
}

/// A duration that may be switched off: `"off"` or e.g. `"25s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Optional(pub Option<Duration>);

impl<'de> Deserialize<'de> for Optional {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "off" {
            return Ok(Optional(None));
        }
        let t = Timeout::deserialize(de::value::StrDeserializer::<D::Error>::new(&text))?;
        Ok(Optional(Some(t.0)))
    }
}

/// A tolerance that may be zero, written like a [`Timeout`]: `"0s"`, `"30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leeway(pub Duration);

impl<'de> Deserialize<'de> for Leeway {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        duration(d).map(Leeway)
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"2m\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert_eq!(ByteSize::parse("64KiB"), Ok(ByteSize(65536)));
        assert_eq!(ByteSize::parse("16 MiB"), Ok(ByteSize(16 << 20)));
        assert!(ByteSize::parse("16MB")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("99999999999GiB").is_err());
    }
}
