//! Value types and checked deserializers: durations (`"10s"`, `"1m"`, `"250ms"` or a number of
//! ms), byte sizes (`"64MiB"` or a number), addresses, comma lists. Each one fails inside
//! deserialization, so the error carries the key's position.

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::limits;

pub use crate::units::Millis;

/// Longest duration accepted anywhere (a year), so `i64` arithmetic on times cannot overflow.
const DURATION_MS_MAX: u64 = 366 * 86_400_000;

/// Parses `"10s"`, `"1m"`, `"1h30m"`, `"250ms"`; a bare number is milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<Millis, String> {
    let s = s.trim();
    let ms = if let Ok(n) = s.parse::<u64>() {
        n
    } else {
        let d = humantime::parse_duration(s).map_err(|e| format!("bad duration `{s}`: {e}"))?;
        if d.subsec_nanos() % 1_000_000 != 0 {
            return Err(format!("bad duration `{s}`: finer than a millisecond"));
        }
        u64::try_from(d.as_millis()).map_err(|_| format!("duration `{s}` is too long"))?
    };
    if ms > DURATION_MS_MAX {
        return Err(format!("duration `{s}` is longer than a year"));
    }
    Ok(Millis(ms))
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => parse_duration_ms(&n.to_string()).map_err(de::Error::custom),
            Raw::Str(s) => parse_duration_ms(&s).map_err(de::Error::custom),
        }
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A size in bytes: a number, or `"64MiB"`, `"512KiB"`, `"1GiB"`, `"10MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses a size.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().map_err(|_| format!("bad size `{s}`"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "bad size unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(de::Error::custom),
        }
    }
}

/// `HOST:PORT`, with the host resolved (so `localhost:2003` works).
pub fn resolve_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("bad address `{s}`: {e}"))?;
    // Prefer IPv4 for `localhost`, as the defaults and the usual clients do.
    let all: Vec<SocketAddr> = addrs.by_ref().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("address `{s}` resolves to nothing"))
}

pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    resolve_addr(&s).map_err(de::Error::custom)
}

pub(super) fn line_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = ByteSize::deserialize(d)?.0;
    if n == 0 || n > u64::from(limits::LINE_BYTES_MAX) {
        return Err(de::Error::custom(format!(
            "max_line_bytes = {n}: must be 1..={}",
            limits::LINE_BYTES_MAX
        )));
    }
    Ok(n as u32)
}

pub(super) fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(ByteSize::deserialize(d)?.0)
}

pub(super) fn segment_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = ByteSize::deserialize(d)?.0;
    if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&n)
        || n % limits::PAGE_BYTES != 0
    {
        return Err(de::Error::custom(format!(
            "segment_bytes = {n}: must be a multiple of {} between {} and {}",
            limits::PAGE_BYTES,
            limits::SEGMENT_BYTES_MIN,
            limits::SEGMENT_BYTES_MAX
        )));
    }
    Ok(n)
}

pub(super) fn results_segment_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = ByteSize::deserialize(d)?.0;
    if !(limits::RESULTS_SEGMENT_BYTES_MIN..=limits::RESULTS_SEGMENT_BYTES_MAX).contains(&n) {
        return Err(de::Error::custom(format!(
            "segment_bytes = {n}: must be between {} and {}",
            limits::RESULTS_SEGMENT_BYTES_MIN,
            limits::RESULTS_SEGMENT_BYTES_MAX
        )));
    }
    Ok(n)
}

pub(super) fn deadletter_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = ByteSize::deserialize(d)?.0;
    if !(limits::DEADLETTER_FILE_BYTES_MIN..=limits::DEADLETTER_BYTES_MAX).contains(&n) {
        return Err(de::Error::custom(format!(
            "max_bytes = {n}: must be between {} and {}",
            limits::DEADLETTER_FILE_BYTES_MIN,
            limits::DEADLETTER_BYTES_MAX
        )));
    }
    Ok(n)
}

pub(super) fn deadletter_files<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u64::deserialize(d)?;
    if n == 0 || n > u64::from(limits::DEADLETTER_FILES_MAX) {
        return Err(de::Error::custom(format!(
            "files = {n}: must be 1..={}",
            limits::DEADLETTER_FILES_MAX
        )));
    }
    Ok(n as u32)
}

pub(super) fn deadletter_repeats<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u64::deserialize(d)?;
    if n > u64::from(limits::DEADLETTER_REPEATS_MAX) {
        return Err(de::Error::custom(format!(
            "repeats = {n}: must be 0..={}",
            limits::DEADLETTER_REPEATS_MAX
        )));
    }
    Ok(n as u32)
}

/// Checks a list of window sizes: each positive, at most a day, no duplicates.
pub fn check_window_sizes(sizes: &[Millis]) -> Result<(), String> {
    for (i, s) in sizes.iter().enumerate() {
        if s.0 == 0 || s.0 > 86_400_000 {
            return Err(format!("window size {s} must be between 1ms and 1d"));
        }
        if sizes[..i].contains(s) {
            return Err(format!("window size {s} is listed twice"));
        }
    }
    Ok(())
}

pub(super) fn window_sizes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Millis>, D::Error> {
    let sizes = Vec::<Millis>::deserialize(d)?;
    check_window_sizes(&sizes).map_err(de::Error::custom)?;
    Ok(sizes)
}

pub(super) fn quantiles<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let qs = Vec::<f64>::deserialize(d)?;
    if let Some(q) = qs.iter().find(|q| !(0.0..=1.0).contains(*q)) {
        return Err(de::Error::custom(format!(
            "quantile {q} must be between 0 and 1"
        )));
    }
    Ok(qs)
}

/// `[admin] token`: 16 to 256 printable ASCII characters, no spaces (it travels in a header
/// and a cookie).
pub(super) fn token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if !(16..=256).contains(&s.len()) {
        return Err(de::Error::custom(format!(
            "token: {} characters; use 16 to 256 (e.g. `openssl rand -hex 24`)",
            s.len()
        )));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b';' && b != b',' && b != b'"')
    {
        return Err(de::Error::custom(
            "token: only printable ASCII without spaces, quotes, commas or semicolons",
        ));
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("10s"), Ok(Millis(10_000)));
        assert_eq!(parse_duration_ms("1m"), Ok(Millis(60_000)));
        assert_eq!(parse_duration_ms("250ms"), Ok(Millis(250)));
        assert_eq!(parse_duration_ms("1500"), Ok(Millis(1500)));
        assert!(parse_duration_ms("10x").is_err());
        assert!(parse_duration_ms("400d").is_err());
        assert_eq!(Millis(60_000).to_string(), "1m");
        assert_eq!(Millis(10_000).to_string(), "10s");
        assert_eq!(Millis(1_500).to_string(), "1500ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("4 parsecs").is_err());
    }
}
