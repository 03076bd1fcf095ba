//! Graphite plaintext: `path value [unix_ts]`, key = path.
//!
//! Fields are separated by runs of spaces or tabs. The timestamp is Unix seconds (a fraction
//! is allowed); `-1` or a missing timestamp means "now" (the ingest time), as carbon does.
//! Graphite 1.1 tags (`path;tag=value`) are kept as part of the key, tags sorted.

#![forbid(unsafe_code)]

use super::FormatOptions;
use super::{Event, Kind, Reject, TIME_MS_MAX, check_key, parse_finite};

/// Parser for the Graphite plaintext protocol.
#[derive(Debug, Default)]
pub struct GraphiteParser {
    scratch: Vec<u8>,
}

/// The fields of `line`: what lies between runs of spaces and tabs. The path, most of a line,
/// is crossed by a vectorised search rather than byte by byte.
fn fields(line: &[u8]) -> Fields<'_> {
    Fields { rest: line }
}

/// What is left of a line after its path (a value and a timestamp) is shorter than this, and
/// a plain loop crosses it faster than a vectorised search starts up.
const SHORT_FIELDS_BYTES: usize = 32;

struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|b| *b != b' ' && *b != b'\t')?;
        let rest = &self.rest[start..];
        let end = if rest.len() > SHORT_FIELDS_BYTES {
            memchr::memchr2(b' ', b'\t', rest)
        } else {
            find_blank(rest)
        }
        .unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(&rest[..end])
    }
}

/// The position of the first space or tab in `bytes`, eight bytes at a time: a byte equal
/// to the one sought is zero after an XOR, and `(x - 0x01..) & !x & 0x80..` marks the zero
/// bytes of `x`, exactly up to the first one (a borrow can only mark bytes above it), which
/// is all a first match needs.
#[inline]
fn find_blank(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let (words, tail) = bytes.as_chunks::<8>();
    for (i, w) in words.iter().enumerate() {
        let x = u64::from_le_bytes(*w);
        let found =
            zero_bytes(x ^ (ONES * u64::from(b' '))) | zero_bytes(x ^ (ONES * u64::from(b'\t')));
        if found != 0 {
            return Some(i * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    tail.iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .map(|p| words.len() * 8 + p)
}

impl GraphiteParser {
    /// A new parser; Graphite has no options.
    pub fn new(_options: &FormatOptions) -> Self {
        GraphiteParser::default()
    }

    /// Parses one line; see [`super::Parser::parse`].
    #[inline]
    pub fn parse(
        &mut self,
        line: &[u8],
        ingest_ms: i64,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        let mut it = fields(line);
        let path = it.next().ok_or(Reject::NoKey)?;
        let value = parse_finite(it.next().ok_or(Reject::NoValue)?)?;
        let time_ms = match it.next() {
            None => ingest_ms,
            Some(ts) => parse_unix_seconds(ts, ingest_ms)?,
        };
        if it.next().is_some() {
            return Err(Reject::BadSyntax);
        }
        let key = if memchr::memchr(b';', path).is_some() {
            self.sorted_tags(path)?
        } else {
            check_key(path)?
        };
        sink(Event {
            key,
            value,
            time_ms,
            kind: Kind::Sample,
            unit: None,
        });
        Ok(1)
    }

    /// `name;b=2;a=1` → `name;a=1;b=2`, in the scratch buffer.
    fn sorted_tags(&mut self, path: &[u8]) -> Result<&[u8], Reject> {
        let mut parts = path.split(|b| *b == b';');
        let name = parts.next().unwrap_or_default();
        if name.is_empty() {
            return Err(Reject::NoKey);
        }
        let mut tags: [&[u8]; 32] = [&[]; 32];
        let mut n = 0;
        for tag in parts {
            if tag.is_empty() {
                continue;
            }
            if n == tags.len() || memchr::memchr(b'=', tag).is_none() {
                return Err(Reject::BadSyntax);
            }
            tags[n] = tag;
            n += 1;
        }
        tags[..n].sort_unstable();
        self.scratch.clear();
        self.scratch.extend_from_slice(name);
        for tag in &tags[..n] {
            self.scratch.push(b';');
            self.scratch.extend_from_slice(tag);
        }
        check_key(&self.scratch)
    }
}

/// Most digits of whole seconds taken without floating point (their ms fit an `i64`).
const SECONDS_DIGITS_MAX: usize = 15;

/// Unix seconds (maybe fractional) → ms; `-1` means `ingest_ms`.
fn parse_unix_seconds(ts: &[u8], ingest_ms: i64) -> Result<i64, Reject> {
    if ts == b"-1" {
        return Ok(ingest_ms);
    }
    // Whole seconds, the usual case, need no floating point.
    let whole = (ts.len() <= SECONDS_DIGITS_MAX)
        .then(|| {
            ts.iter().try_fold(0i64, |n, d| {
                d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
            })
        })
        .flatten();
    if let Some(secs) = whole {
        return match secs.checked_mul(1000) {
            Some(ms) if ms <= TIME_MS_MAX => Ok(ms),
            _ => Err(Reject::BadTimestamp),
        };
    }
    let secs = parse_finite(ts).map_err(|_| Reject::BadTimestamp)?;
    let ms = (secs * 1000.0).round();
    if !(0.0..=TIME_MS_MAX as f64).contains(&ms) {
        return Err(Reject::BadTimestamp);
    }
    Ok(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::testdata::samples;

    fn parse(line: &str) -> Result<Vec<(String, f64, i64)>, Reject> {
        let mut p = GraphiteParser::default();
        samples(|sink| p.parse(line.as_bytes(), 42_000, &mut |e| sink(e)))
    }

    #[test]
    fn plain_line_with_timestamp() {
        assert_eq!(
            parse("room.temp 21.5 1700000000").unwrap(),
            vec![("room.temp".into(), 21.5, 1_700_000_000_000)]
        );
    }

    #[test]
    fn missing_or_minus_one_timestamp_is_ingest_time() {
        assert_eq!(parse("a 1").unwrap()[0].2, 42_000);
        assert_eq!(parse("a 1 -1").unwrap()[0].2, 42_000);
    }

    #[test]
    fn tags_are_sorted_into_the_key() {
        assert_eq!(parse("cpu;z=1;a=2 0.5 10").unwrap()[0].0, "cpu;a=2;z=1");
    }

    #[test]
    fn whole_seconds_and_fractions_agree_at_the_limits() {
        assert_eq!(parse_unix_seconds(b"0", 1), Ok(0));
        assert_eq!(parse_unix_seconds(b"0000000000", 1), Ok(0));
        assert_eq!(
            parse_unix_seconds(b"253402300799", 1),
            Ok(253_402_300_799_000)
        );
        assert_eq!(parse_unix_seconds(b"253402300799.999", 1), Ok(TIME_MS_MAX));
        assert_eq!(
            parse_unix_seconds(b"253402300800", 1),
            Err(Reject::BadTimestamp)
        );
        assert_eq!(
            parse_unix_seconds(b"999999999999999", 1),
            Err(Reject::BadTimestamp)
        );
        assert_eq!(
            parse_unix_seconds(b"9999999999999999999999", 1),
            Err(Reject::BadTimestamp)
        );
    }

    proptest::proptest! {
        #[test]
        fn fields_split_at_runs_of_blanks(line in proptest::collection::vec(
            proptest::sample::select(b"ab. \t\n;=1".to_vec()), 0..40)) {
            let want: Vec<&[u8]> = line
                .split(|b| *b == b' ' || *b == b'\t')
                .filter(|f| !f.is_empty())
                .collect();
            proptest::prop_assert_eq!(fields(&line).collect::<Vec<_>>(), want);
        }

        #[test]
        fn find_blank_finds_the_first_space_or_tab(bytes in proptest::collection::vec(
            proptest::prop_oneof![proptest::num::u8::ANY, proptest::sample::select(vec![b' ', b'\t', 0x09 ^ 0x80, 0x20 ^ 0x80, 0, 1])],
            0..40)) {
            let want = bytes.iter().position(|b| *b == b' ' || *b == b'\t');
            proptest::prop_assert_eq!(find_blank(&bytes), want);
        }

        #[test]
        fn whole_seconds_parse_as_the_general_way_does(secs in 0u64..400_000_000_000) {
            let text = secs.to_string();
            let general = parse_finite(text.as_bytes())
                .map(|s| (s * 1000.0).round())
                .ok()
                .filter(|ms| (0.0..=TIME_MS_MAX as f64).contains(ms))
                .map(|ms| ms as i64)
                .ok_or(Reject::BadTimestamp);
            proptest::prop_assert_eq!(parse_unix_seconds(text.as_bytes(), 1), general);
        }
    }

    #[test]
    fn bad_lines_are_rejected_with_a_reason() {
        assert_eq!(parse(""), Err(Reject::NoKey));
        assert_eq!(parse("a"), Err(Reject::NoValue));
        assert_eq!(parse("a x"), Err(Reject::BadNumber));
        assert_eq!(parse("a nan 1"), Err(Reject::BadNumber));
        assert_eq!(parse("a 1 x"), Err(Reject::BadTimestamp));
        assert_eq!(parse("a 1 -5"), Err(Reject::BadTimestamp));
        assert_eq!(parse("a 1 2 3"), Err(Reject::BadSyntax));
        assert_eq!(parse(";a=1 1"), Err(Reject::NoKey));
        assert_eq!(parse("\u{fffd}\u{fffd} 1").map(|v| v.len()), Ok(1));
        let mut p = GraphiteParser::default();
        assert_eq!(p.parse(b"\xff\xfe 1", 0, &mut |_| {}), Err(Reject::BadUtf8));
    }
}
