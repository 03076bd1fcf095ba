//! What `json` and `logfmt` share: the `key` / `value` / `time` options, and how a field's
//! text or number becomes a value or an event time.
//!
//! - Key: the `key` fields' values joined with `.`; without `key`, the listener name (as for
//!   `raw`), so a bare `json+tcp://...` counts lines.
//! - Value: the `value` field, a number or a string holding one (`"12.5"`, `"1e3"`, `"-4"`, as
//!   Rust's `f64` parser reads it: no spaces, no `_`, no hex, no NaN or ±inf). Without `value`,
//!   each line is one event of value 1.
//! - Time: the `time` field, see [`time_ms_from_f64`] for numbers; a string is read as a
//!   number if it is one, else as an RFC 3339 timestamp (`2025-11-28T20:00:00.123Z`,
//!   `...+01:00`). Without `time`, or when the field is absent, the ingest time.

#![forbid(unsafe_code)]

use super::FormatOptions;
use super::{Reject, TIME_MS_MAX, parse_finite};

/// Most `key` fields a listener may name.
pub const KEY_FIELDS_MAX: usize = 16;

/// Below this a numeric time is in seconds (1e11 s is the year 5138; 1e11 ms is 1973).
const SECONDS_BELOW: f64 = 1e11;
/// Below this (and at least [`SECONDS_BELOW`]) a numeric time is in ms.
const MS_BELOW: f64 = 1e14;
/// Below this (and at least [`MS_BELOW`]) a numeric time is in µs; from it on, in ns.
const US_BELOW: f64 = 1e17;

/// The field names a `json` or `logfmt` listener reads, as configured.
#[derive(Debug, Clone, Default)]
pub struct FieldNames {
    /// The key fields, in key order; empty means "key = listener name".
    pub key: Vec<String>,
    /// The value field.
    pub value: Option<String>,
    /// The time field.
    pub time: Option<String>,
}

impl FieldNames {
    /// The names from a listener's options.
    pub fn from_options(options: &FormatOptions) -> FieldNames {
        FieldNames {
            key: options.key.clone().unwrap_or_default(),
            value: options.value.clone(),
            time: options.time.clone(),
        }
    }
}

/// Checks `key`, `value` and `time` of a `json` (`dotted` paths) or `logfmt` listener.
pub fn check_options(options: &FormatOptions, dotted: bool) -> Result<(), String> {
    let keys = options.key.as_deref().unwrap_or_default();
    if keys.len() > KEY_FIELDS_MAX {
        return Err(format!("at most {KEY_FIELDS_MAX} key fields"));
    }
    let names = keys
        .iter()
        .chain(options.value.as_ref())
        .chain(options.time.as_ref());
    for name in names {
        let bad = name.is_empty()
            || name
                .chars()
                .any(|c| c.is_whitespace() || c == '=' || c == '"')
            || (dotted && name.split('.').any(str::is_empty));
        if bad {
            return Err(format!(
                "bad field name `{name}` (no spaces, `=` or quotes{})",
                if dotted {
                    ", no empty path segment"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// A value field's text → a finite number.
#[inline]
pub fn value_from_text(text: &[u8]) -> Result<f64, Reject> {
    if text.is_empty() {
        return Err(Reject::NoValue);
    }
    parse_finite(text)
}

/// A numeric time → ms since the epoch, its unit chosen by magnitude: below 1e11 seconds,
/// below 1e14 ms, below 1e17 µs, else ns (so any time from 1973 to 5138 reads right in every
/// unit). Fractions are kept down to the ms. Negative, non-finite or past year 9999 →
/// `bad_timestamp`.
pub fn time_ms_from_f64(t: f64) -> Result<i64, Reject> {
    if !t.is_finite() || t < 0.0 {
        return Err(Reject::BadTimestamp);
    }
    let ms = if t < SECONDS_BELOW {
        t * 1e3
    } else if t < MS_BELOW {
        t
    } else if t < US_BELOW {
        t / 1e3
    } else {
        t / 1e6
    };
    let ms = ms.floor();
    if ms > TIME_MS_MAX as f64 {
        return Err(Reject::BadTimestamp);
    }
    Ok(ms as i64)
}

/// An integer time, by the same rule as [`time_ms_from_f64`] but exact.
pub fn time_ms_from_u64(t: u64) -> Result<i64, Reject> {
    let ms = if (t as f64) < SECONDS_BELOW {
        t.saturating_mul(1000)
    } else if (t as f64) < MS_BELOW {
        t
    } else if (t as f64) < US_BELOW {
        t / 1_000
    } else {
        t / 1_000_000
    };
    if ms > TIME_MS_MAX as u64 {
        return Err(Reject::BadTimestamp);
    }
    Ok(ms as i64)
}

/// A time field's text: an integer or a number (see [`time_ms_from_f64`]), or RFC 3339.
pub fn time_ms_from_text(text: &[u8]) -> Result<i64, Reject> {
    if !text.is_empty() && text.len() <= 20 && text.iter().all(u8::is_ascii_digit) {
        let t = text
            .iter()
            .try_fold(0u64, |acc, b| {
                acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
            })
            .ok_or(Reject::BadTimestamp)?;
        return time_ms_from_u64(t);
    }
    if let Ok(t) = parse_finite(text) {
        return time_ms_from_f64(t);
    }
    super::syslog::parse_rfc3339(text).ok_or(Reject::BadTimestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_times_pick_their_unit_by_magnitude() {
        let ms = 1_764_360_000_123;
        assert_eq!(time_ms_from_f64(1_764_360_000.123), Ok(ms));
        assert_eq!(time_ms_from_u64(1_764_360_000), Ok(ms - 123));
        assert_eq!(time_ms_from_u64(1_764_360_000_123), Ok(ms));
        assert_eq!(time_ms_from_u64(1_764_360_000_123_456), Ok(ms));
        assert_eq!(time_ms_from_u64(1_764_360_000_123_456_789), Ok(ms));
        assert_eq!(time_ms_from_f64(1.764_360_000_123_456_7e18), Ok(ms));
        assert_eq!(time_ms_from_u64(0), Ok(0));
        assert_eq!(
            time_ms_from_u64(u64::MAX),
            Ok((u64::MAX / 1_000_000) as i64)
        );
        assert_eq!(time_ms_from_f64(-1.0), Err(Reject::BadTimestamp));
        assert_eq!(time_ms_from_f64(f64::NAN), Err(Reject::BadTimestamp));
        assert_eq!(time_ms_from_f64(1e300), Err(Reject::BadTimestamp));
        assert_eq!(time_ms_from_u64(99_999_999_999), Ok(99_999_999_999_000));
    }

    #[test]
    fn text_times_are_numbers_or_rfc3339() {
        let ms = 1_764_360_000_123;
        assert_eq!(time_ms_from_text(b"1764360000123"), Ok(ms));
        assert_eq!(time_ms_from_text(b"1764360000.123"), Ok(ms));
        assert_eq!(time_ms_from_text(b"2025-11-28T20:00:00.123Z"), Ok(ms));
        assert_eq!(time_ms_from_text(b"2025-11-28T21:00:00.123+01:00"), Ok(ms));
        for bad in [
            &b""[..],
            b"x",
            b"NaN",
            b"-5",
            b"99999999999999999999999",
            b"2026-13-01T00:00:00Z",
        ] {
            assert_eq!(time_ms_from_text(bad), Err(Reject::BadTimestamp), "{bad:?}");
        }
    }

    #[test]
    fn values_must_be_plain_finite_numbers() {
        assert_eq!(value_from_text(b"12.5"), Ok(12.5));
        assert_eq!(value_from_text(b"-1e3"), Ok(-1000.0));
        assert_eq!(value_from_text(b""), Err(Reject::NoValue));
        for bad in [
            &b"NaN"[..],
            b"inf",
            b"-Infinity",
            b" 1",
            b"1_000",
            b"0x10",
            b"12ms",
        ] {
            assert_eq!(value_from_text(bad), Err(Reject::BadNumber), "{bad:?}");
        }
    }

    #[test]
    fn options_are_checked() {
        let opts = |key: &[&str], value: Option<&str>| FormatOptions {
            key: Some(key.iter().map(|s| s.to_string()).collect()),
            value: value.map(str::to_string),
            time: None,
            strict: None,
            unit: None,
        };
        assert!(check_options(&opts(&["service", "http.status"], Some("ms")), true).is_ok());
        assert!(check_options(&opts(&["a..b"], None), true).is_err());
        assert!(check_options(&opts(&["a..b"], None), false).is_ok());
        assert!(check_options(&opts(&["a b"], None), false).is_err());
        assert!(check_options(&opts(&["a"], Some("")), false).is_err());
        let many: Vec<&str> = vec!["k"; KEY_FIELDS_MAX + 1];
        assert!(check_options(&opts(&many, None), false).is_err());
    }
}
