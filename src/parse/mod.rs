//! Parsing: one accepted line → zero or more events `(key, value, event time, kind)`.
//!
//! One file per format; [`Parser`] dispatches on the listener's format. Parsers are
//! zero-copy: an [`Event`]'s key borrows either the line or a scratch buffer owned by the
//! parser, and the sink must copy what it keeps before the next call. A line a parser cannot
//! read is a [`Reject`] value (counted and dead-lettered by the caller), never a panic and
//! never an `Err` that stops the listener.
//!
//! Numbers: NaN and ±inf are rejected as `bad_number` in every format, so aggregates stay
//! finite and JSON-encodable.

#![forbid(unsafe_code)]

pub mod fields;
mod format;
pub mod graphite;
pub mod influx;
pub mod json;
pub mod logfmt;
pub mod raw;
pub mod statsd;
pub mod syslog;

pub use format::{Format, FormatOptions};

/// What an event's value means, as its format says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// A plain sample (graphite, influx, json, raw count of 1).
    #[default]
    Sample,
    /// A StatsD counter; the value is already divided by the sample rate.
    Counter,
    /// A StatsD gauge set to the value.
    Gauge,
    /// A StatsD gauge changed by the (signed) value.
    GaugeDelta,
    /// A StatsD timer / histogram / distribution sample.
    Timer,
    /// A StatsD set member; the value is a hash of the member.
    Set,
}

/// One event out of a line. Borrowed: copy what you keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event<'a> {
    /// The key, UTF-8, at most [`crate::limits::KEY_BYTES_MAX`] bytes.
    pub key: &'a [u8],
    /// The value; always finite.
    pub value: f64,
    /// Event time in ms since the Unix epoch (the ingest time when the line has none).
    pub time_ms: i64,
    /// What the value means.
    pub kind: Kind,
    /// The experiment unit's value (the listener's `[[experiment]] unit` field), when the
    /// listener runs an experiment and the line has the field.
    pub unit: Option<&'a [u8]>,
}

macro_rules! rejects {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why a line (or a part of one) was not accepted. Each has a stable snake_case code
        /// used in metrics labels and dead-letter records.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reject {
            $(#[doc = $doc] $variant,)*
        }

        impl Reject {
            /// Every reason, in index order.
            pub const ALL: &'static [Reject] = &[$(Reject::$variant,)*];
            /// Number of reasons.
            pub const COUNT: usize = Reject::ALL.len();

            /// The stable code.
            pub fn as_str(self) -> &'static str {
                match self { $(Reject::$variant => $name,)* }
            }

            /// Dense index, for counter arrays.
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

rejects! {
    TooLong => "too_long", "The line exceeds `max_line_bytes`.";
    BadUtf8 => "bad_utf8", "The line (or its key) is not valid UTF-8.";
    NoValue => "no_value", "A required value is missing.";
    BadNumber => "bad_number", "A value is not a finite number.";
    BadTimestamp => "bad_timestamp", "The timestamp is not a number or out of range.";
    UnknownType => "unknown_type", "An unknown metric type (StatsD) or field type.";
    BadFrame => "bad_frame", "A malformed frame (octet count, truncated frame).";
    BadSyntax => "bad_syntax", "The line does not follow its format's grammar.";
    NoKey => "no_key", "The key is empty or missing.";
    KeyTooLong => "key_too_long", "The key exceeds the key length limit.";
    Late => "late", "The event's window had already closed.";
}

/// Event times accepted: from 1970 to the year 9999, in ms.
pub const TIME_MS_MAX: i64 = 253_402_300_799_999;

/// A listener's parser. Holds per-listener options and scratch space; one per listener per core.
#[derive(Debug)]
pub enum Parser {
    /// `raw` format.
    Raw(raw::RawParser),
    /// `graphite` plaintext format.
    Graphite(graphite::GraphiteParser),
    /// `statsd` format.
    Statsd(statsd::StatsdParser),
    /// `syslog` format (RFC 5424 and RFC 3164).
    Syslog(syslog::SyslogParser),
    /// `influx` line protocol.
    Influx(influx::InfluxParser),
    /// `json` lines.
    Json(json::JsonParser),
    /// `logfmt` lines.
    Logfmt(logfmt::LogfmtParser),
}

impl Parser {
    /// A parser for `format` with `options`, for the listener named `listener_name`.
    pub fn new(format: Format, options: &FormatOptions, listener_name: &str) -> Parser {
        match format {
            Format::Raw => Parser::Raw(raw::RawParser::new(options, listener_name)),
            Format::Graphite => Parser::Graphite(graphite::GraphiteParser::new(options)),
            Format::Statsd => Parser::Statsd(statsd::StatsdParser::new(options)),
            Format::Syslog => Parser::Syslog(syslog::SyslogParser::new(options)),
            Format::Influx => Parser::Influx(influx::InfluxParser::new(options)),
            Format::Json => Parser::Json(json::JsonParser::new(options, listener_name)),
            Format::Logfmt => Parser::Logfmt(logfmt::LogfmtParser::new(options, listener_name)),
        }
    }

    /// Parses one line (terminator already removed). `ingest_ms` is the event time for lines
    /// without one. Each event is passed to `sink`; the number of events is returned.
    #[inline]
    pub fn parse(
        &mut self,
        line: &[u8],
        ingest_ms: i64,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        match self {
            Parser::Raw(p) => p.parse(line, ingest_ms, sink),
            Parser::Graphite(p) => p.parse(line, ingest_ms, sink),
            Parser::Statsd(p) => p.parse(line, ingest_ms, sink),
            Parser::Syslog(p) => p.parse(line, ingest_ms, sink),
            Parser::Influx(p) => p.parse(line, ingest_ms, sink),
            Parser::Json(p) => p.parse(line, ingest_ms, sink),
            Parser::Logfmt(p) => p.parse(line, ingest_ms, sink),
        }
    }
}

/// Parses `line` and checks the contract every parser keeps, panicking if it is broken: each
/// event has a valid key, a finite value and a time in range; the count returned is the
/// number of events emitted, and a reject emits none. The property tests and the fuzz targets
/// (`tools/fuzz`) both call this.
pub fn parse_checked(parser: &mut Parser, line: &[u8], ingest_ms: i64) -> Result<u32, Reject> {
    let mut events = 0u32;
    let result = parser.parse(line, ingest_ms, &mut |e| {
        events += 1;
        assert!(check_key(e.key).is_ok(), "bad key {:?}", e.key);
        assert!(e.value.is_finite(), "value {}", e.value);
        assert!((0..=TIME_MS_MAX).contains(&e.time_ms), "time {}", e.time_ms);
    });
    match result {
        Ok(n) => assert_eq!(n, events, "count returned != events emitted"),
        Err(_) => assert_eq!(events, 0, "events emitted before a reject"),
    }
    result
}

/// Options that reach every code path of `json` and `logfmt` (and `raw` by first token), for
/// property tests, fuzz targets and benchmarks.
pub fn test_options(format: Format) -> FormatOptions {
    match format {
        Format::Json => FormatOptions {
            key: Some(vec!["service".into(), "http.status".into()]),
            value: Some("latency_ms".into()),
            time: Some("ts".into()),
            strict: None,
            unit: Some("user".into()),
        },
        Format::Logfmt => FormatOptions {
            key: Some(vec!["service".into(), "status".into()]),
            value: Some("latency_ms".into()),
            time: Some("ts".into()),
            strict: None,
            unit: Some("user".into()),
        },
        Format::Raw => FormatOptions {
            key: Some(vec!["first_token".into()]),
            ..FormatOptions::default()
        },
        _ => FormatOptions::default(),
    }
}

/// Parses a finite decimal number (as `str::parse::<f64>` does), rejecting NaN and ±inf.
/// The common short decimals take an inlined fast path; the rest the general parser.
#[inline(always)]
pub fn parse_finite(bytes: &[u8]) -> Result<f64, Reject> {
    match parse_simple_decimal(bytes) {
        Some(v) => Ok(v),
        None => parse_finite_general(bytes),
    }
}

/// [`parse_finite`] for what its fast path does not take.
#[cold]
#[inline(never)]
fn parse_finite_general(bytes: &[u8]) -> Result<f64, Reject> {
    let s = std::str::from_utf8(bytes).map_err(|_| Reject::BadNumber)?;
    let v: f64 = s.parse().map_err(|_| Reject::BadNumber)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Reject::BadNumber)
    }
}

/// Most significant digits the fast path takes: their integer is exact in an `f64`.
const SIMPLE_DIGITS_MAX: usize = 15;
/// Powers of ten exact in an `f64`, for the fast path's fraction.
const POW10: [f64; SIMPLE_DIGITS_MAX + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The common case, `[-]digits[.digits]` with at most 15 digits, without the general parser:
/// the digits as an integer and the power of ten are both exact, so one division rounds
/// correctly (Clinger's fast path) and gives what `str::parse::<f64>` gives. `None` for
/// anything else, which goes the general way.
#[inline]
fn parse_simple_decimal(bytes: &[u8]) -> Option<f64> {
    let (negative, digits) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > SIMPLE_DIGITS_MAX + 1 {
        return None;
    }
    let mut mantissa = 0u64;
    let mut count = 0usize;
    let mut fraction_digits = None;
    for (i, b) in digits.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                count += 1;
            }
            b'.' if fraction_digits.is_none() && i > 0 && i + 1 < digits.len() => {
                fraction_digits = Some(digits.len() - i - 1);
            }
            _ => return None,
        }
    }
    if count > SIMPLE_DIGITS_MAX {
        return None;
    }
    let value = match fraction_digits {
        None => mantissa as f64,
        Some(n) => mantissa as f64 / POW10[n],
    };
    Some(if negative { -value } else { value })
}

/// Checks a key: non-empty, within the length limit, valid UTF-8.
#[inline]
pub fn check_key(key: &[u8]) -> Result<&[u8], Reject> {
    if key.is_empty() {
        return Err(Reject::NoKey);
    }
    if key.len() > crate::limits::KEY_BYTES_MAX {
        return Err(Reject::KeyTooLong);
    }
    check_utf8(key)?;
    Ok(key)
}

/// Checks that `bytes` are UTF-8. Keys and tags are nearly always ASCII: a word-at-a-time
/// check, inlined, comes before the full one.
#[inline]
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<(), Reject> {
    if !is_ascii(bytes) {
        std::str::from_utf8(bytes).map_err(|_| Reject::BadUtf8)?;
    }
    Ok(())
}

/// True when every byte is ASCII. `<[u8]>::is_ascii` crosses 64-byte blocks and then the rest
/// a byte at a time (up to 63 iterations for a key); this ORs 8-byte words, the last one
/// overlapping the one before, so a key of any length costs a few loads.
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let Some(last) = bytes.last_chunk::<8>() else {
        return bytes.iter().fold(0, |acc, b| acc | b) < 0x80;
    };
    let (words, _) = bytes.as_chunks::<8>();
    let acc = words.iter().fold(u64::from_ne_bytes(*last), |acc, w| {
        acc | u64::from_ne_bytes(*w)
    });
    acc & HIGH == 0
}

/// Test inputs shared by the parser and framing tests.
#[cfg(test)]
pub(crate) mod testdata {
    use super::FormatOptions;
    use super::{Event, Kind, Reject};

    /// The events a parse emits, as (key, value, time, kind); checks the count it returns.
    /// `parse` is called with the sink: `events(|sink| p.parse(line, 42_000, &mut |e| sink(e)))`.
    pub(crate) fn events(
        parse: impl FnOnce(&mut dyn FnMut(Event<'_>)) -> Result<u32, Reject>,
    ) -> Result<Vec<(String, f64, i64, Kind)>, Reject> {
        let mut out = Vec::new();
        let n = parse(&mut |e| {
            out.push((
                String::from_utf8(e.key.to_vec()).expect("keys are UTF-8"),
                e.value,
                e.time_ms,
                e.kind,
            ))
        })?;
        assert_eq!(
            n as usize,
            out.len(),
            "the count returned is the events emitted"
        );
        Ok(out)
    }

    /// [`events`] of a parser that emits samples only, as (key, value, time).
    pub(crate) fn samples(
        parse: impl FnOnce(&mut dyn FnMut(Event<'_>)) -> Result<u32, Reject>,
    ) -> Result<Vec<(String, f64, i64)>, Reject> {
        Ok(events(parse)?
            .into_iter()
            .map(|(k, v, t, kind)| {
                assert_eq!(kind, Kind::Sample);
                (k, v, t)
            })
            .collect())
    }

    /// The loghub samples in `../shared/corpus/loghub` (`{name}_2k.log`).
    pub(crate) const LOGHUB: [&str; 8] = [
        "Apache",
        "BGL",
        "HDFS",
        "Linux",
        "OpenSSH",
        "Spark",
        "Thunderbird",
        "Zookeeper",
    ];

    /// A file of `../shared/corpus`, or `None` (with a message) when the corpus is absent.
    pub(crate) fn corpus(path: &str) -> Option<Vec<u8>> {
        let full = format!("{}/../shared/corpus/{path}", env!("CARGO_MANIFEST_DIR"));
        match std::fs::read(&full) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                eprintln!("skipping: {full}: {e}");
                None
            }
        }
    }

    /// Format options from a comma-separated key list (empty: none), a value and a time field.
    pub(crate) fn options(key: &str, value: Option<&str>, time: Option<&str>) -> FormatOptions {
        FormatOptions {
            key: (!key.is_empty()).then(|| key.split(',').map(str::to_string).collect()),
            value: value.map(str::to_string),
            time: time.map(str::to_string),
            strict: None,
            unit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reject_codes_are_unique_and_indexed() {
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut codes: Vec<_> = Reject::ALL.iter().map(|r| r.as_str()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reject::COUNT);
    }

    proptest! {
        #[test]
        fn is_ascii_agrees_with_the_standard_library(
            bytes in proptest::collection::vec(0u8..0x80, 0..100),
            high in proptest::option::of((any::<prop::sample::Index>(), 0x80u8..=0xff)),
        ) {
            let mut bytes = bytes;
            if let (Some((at, b)), false) = (high, bytes.is_empty()) {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            prop_assert_eq!(is_ascii(&bytes), bytes.is_ascii());
        }

        #[test]
        fn the_fast_path_agrees_with_the_general_parser(
            text in "-?[0-9]{1,17}(\\.[0-9]{0,17})?|-?\\.[0-9]{1,5}|[0-9]{1,3}e[0-9]",
        ) {
            let general = text.parse::<f64>().ok().filter(|v| v.is_finite());
            prop_assert_eq!(parse_finite(text.as_bytes()).ok().map(f64::to_bits), general.map(f64::to_bits));
        }
    }

    #[test]
    fn parse_finite_rejects_nan_and_inf() {
        assert_eq!(parse_finite(b"1.5"), Ok(1.5));
        assert_eq!(parse_finite(b"NaN"), Err(Reject::BadNumber));
        assert_eq!(parse_finite(b"inf"), Err(Reject::BadNumber));
        assert_eq!(parse_finite(b"-infinity"), Err(Reject::BadNumber));
        assert_eq!(parse_finite(b"\xff"), Err(Reject::BadNumber));
        assert_eq!(parse_finite(b""), Err(Reject::BadNumber));
    }

    proptest! {
        #[test]
        fn every_parser_survives_arbitrary_bytes(
            line in prop::collection::vec(
                prop_oneof![
                    Just(b' '), Just(b':'), Just(b'|'), Just(b';'), Just(b'<'), Just(b'>'),
                    Just(b'1'), Just(b'.'), Just(b'='), Just(b','), Just(b'"'), Just(b'{'),
                    Just(b'}'), Just(b'\\'), any::<u8>()
                ],
                0..100,
            ),
            ingest_ms in 0..=TIME_MS_MAX,
        ) {
            for format in Format::ALL {
                for options in [FormatOptions::default(), test_options(format)] {
                    let mut parser = Parser::new(format, &options, "listener");
                    parse_checked(&mut parser, &line, ingest_ms).ok();
                }
            }
        }
    }
}
