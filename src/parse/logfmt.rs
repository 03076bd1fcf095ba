//! logfmt: `key=value key2="quoted \" value" bare_key` → one event per line.
//!
//! ```text
//!   logfmt+tcp://127.0.0.1:7072?key=service,status&value=duration_ms&time=ts
//!   ts=2025-11-28T20:00:00.123Z level=info service=cart status=200 duration_ms=12.5 msg="served ok"
//!     → key "cart.200", value 12.5, time 1764360000123
//! ```
//!
//! Grammar: pairs separated by spaces or tabs. A key runs to `=` or whitespace and may not
//! contain `"`; a pair is `key=value`, `key=` (empty value) or a bare `key`. A value is bare
//! (to the next whitespace; it may hold `=` and `"`) or quoted (`"..."`, with `\"` and `\\`
//! unescaped and any other backslash kept as written), and a closing quote must be followed by
//! whitespace or the end of the line.
//!
//! Options: `key`, `value`, `time` name flat keys, with the rules of [`super::fields`]. An
//! empty value, a bare key and a missing key are all absent: a key field → `no_key`, the value
//! field → `no_value`, the time field → the ingest time. When a key occurs twice, the last one
//! counts.
//!
//! Rejects: bytes that are not UTF-8 → `bad_utf8`; a pair starting with `=`, a `"` in a key,
//! an unterminated quote or text right after a closing quote → `bad_syntax`; a value that is
//! not a plain finite number → `bad_number` (NaN and ±inf included); a bad time →
//! `bad_timestamp`; key too long → `key_too_long`.
//!
//! Zero-copy: captured values are ranges into the line, or, when a quoted value had escapes,
//! into a scratch buffer owned by the parser; the key is built in another.

#![forbid(unsafe_code)]

use super::FormatOptions;
use super::fields::{self, FieldNames};
use super::{Event, Kind, Reject, check_key};

/// Where a wanted value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Slot {
    /// Not on the line, a bare key, or an empty value.
    #[default]
    Absent,
    /// `line[start..end]`.
    Line(u32, u32),
    /// `unescaped[start..end]`.
    Unescaped(u32, u32),
}

/// Parser for logfmt lines.
#[derive(Debug)]
pub struct LogfmtParser {
    listener_key: Vec<u8>,
    /// Wanted names: the key fields, then the value field, then the time field.
    names: Vec<String>,
    key_count: usize,
    value_slot: Option<usize>,
    time_slot: Option<usize>,
    unit_slot: Option<usize>,
    slots: Vec<Slot>,
    unescaped: Vec<u8>,
    key: Vec<u8>,
}

#[inline]
fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl LogfmtParser {
    /// A parser with the listener's `key` / `value` / `time` options.
    pub fn new(options: &FormatOptions, listener_name: &str) -> Self {
        let names = FieldNames::from_options(options);
        let mut all = names.key.clone();
        let key_count = all.len();
        let value_slot = names.value.map(|v| {
            all.push(v);
            all.len() - 1
        });
        let time_slot = names.time.map(|t| {
            all.push(t);
            all.len() - 1
        });
        let unit_slot = options.unit.clone().map(|u| {
            all.push(u);
            all.len() - 1
        });
        LogfmtParser {
            listener_key: listener_name.as_bytes().to_vec(),
            slots: vec![Slot::Absent; all.len()],
            names: all,
            key_count,
            value_slot,
            time_slot,
            unit_slot,
            unescaped: Vec::new(),
            key: Vec::new(),
        }
    }

    /// Parses one line; see [`super::Parser::parse`].
    pub fn parse(
        &mut self,
        line: &[u8],
        ingest_ms: i64,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        std::str::from_utf8(line).map_err(|_| Reject::BadUtf8)?;
        if line.len() > u32::MAX as usize {
            return Err(Reject::TooLong);
        }
        self.scan(line)?;
        let value = match self.value_slot {
            None => 1.0,
            Some(i) => match self.get(line, i) {
                None => return Err(Reject::NoValue),
                Some(text) => fields::value_from_text(text)?,
            },
        };
        let time_ms = match self.time_slot.and_then(|i| self.get(line, i)) {
            None => ingest_ms,
            Some(text) => fields::time_ms_from_text(text)?,
        };
        self.build_key(line)?;
        let key = match self.key_count {
            0 => &self.listener_key,
            _ => &self.key,
        };
        sink(Event {
            key,
            value,
            time_ms,
            kind: Kind::Sample,
            unit: self.unit_slot.and_then(|i| self.get(line, i)),
        });
        Ok(1)
    }

    /// Reads every pair of the line, filling the slots of the wanted names.
    fn scan(&mut self, line: &[u8]) -> Result<(), Reject> {
        self.slots.fill(Slot::Absent);
        self.unescaped.clear();
        let mut pos = 0;
        loop {
            while pos < line.len() && is_space(line[pos]) {
                pos += 1;
            }
            if pos == line.len() {
                return Ok(());
            }
            let key_start = pos;
            while pos < line.len() && !is_space(line[pos]) && line[pos] != b'=' {
                if line[pos] == b'"' {
                    return Err(Reject::BadSyntax);
                }
                pos += 1;
            }
            if pos == key_start {
                return Err(Reject::BadSyntax);
            }
            let name = &line[key_start..pos];
            if line.get(pos) != Some(&b'=') {
                self.fill(name, Slot::Absent);
                continue;
            }
            pos += 1;
            let slot;
            (slot, pos) = if line.get(pos) == Some(&b'"') {
                self.quoted(line, pos + 1)?
            } else {
                let start = pos;
                while pos < line.len() && !is_space(line[pos]) {
                    pos += 1;
                }
                let slot = match pos > start {
                    true => Slot::Line(start as u32, pos as u32),
                    false => Slot::Absent,
                };
                (slot, pos)
            };
            self.fill(name, slot);
        }
    }

    /// A quoted value whose body starts at `pos`: its slot and the position after it.
    fn quoted(&mut self, line: &[u8], start: usize) -> Result<(Slot, usize), Reject> {
        let mut pos = start;
        let mut escaped = false;
        loop {
            match line.get(pos) {
                None => return Err(Reject::BadSyntax),
                Some(b'\\') if matches!(line.get(pos + 1), Some(b'"' | b'\\')) => {
                    escaped = true;
                    pos += 2;
                }
                Some(b'"') => break,
                Some(_) => pos += 1,
            }
        }
        let end = pos;
        pos += 1;
        if pos < line.len() && !is_space(line[pos]) {
            return Err(Reject::BadSyntax);
        }
        if end == start {
            return Ok((Slot::Absent, pos));
        }
        if !escaped {
            return Ok((Slot::Line(start as u32, end as u32), pos));
        }
        let from = self.unescaped.len();
        let mut i = start;
        while i < end {
            if line[i] == b'\\' && matches!(line.get(i + 1), Some(b'"' | b'\\')) {
                i += 1;
            }
            self.unescaped.push(line[i]);
            i += 1;
        }
        Ok((
            Slot::Unescaped(from as u32, self.unescaped.len() as u32),
            pos,
        ))
    }

    /// Records `slot` for every wanted name equal to `name`.
    #[inline]
    fn fill(&mut self, name: &[u8], slot: Slot) {
        for (i, wanted) in self.names.iter().enumerate() {
            if wanted.as_bytes() == name {
                self.slots[i] = slot;
            }
        }
    }

    /// The text of wanted name `i`, if present and not empty.
    fn get<'l>(&'l self, line: &'l [u8], i: usize) -> Option<&'l [u8]> {
        match self.slots[i] {
            Slot::Absent => None,
            Slot::Line(s, e) => Some(&line[s as usize..e as usize]),
            Slot::Unescaped(s, e) => Some(&self.unescaped[s as usize..e as usize]),
        }
    }

    /// The key fields joined with `.`, or the listener name.
    fn build_key(&mut self, line: &[u8]) -> Result<(), Reject> {
        if self.key_count == 0 {
            return Ok(());
        }
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        for i in 0..self.key_count {
            let Some(text) = self.get(line, i) else {
                self.key = key;
                return Err(Reject::NoKey);
            };
            if i > 0 {
                key.push(b'.');
            }
            key.extend_from_slice(text);
            if key.len() > crate::limits::KEY_BYTES_MAX {
                self.key = key;
                return Err(Reject::KeyTooLong);
            }
        }
        self.key = key;
        check_key(&self.key).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::testdata::samples;
    use proptest::prelude::*;

    fn parser(key: &str, value: Option<&str>, time: Option<&str>) -> LogfmtParser {
        LogfmtParser::new(
            &crate::parse::testdata::options(key, value, time),
            "logfmt-in",
        )
    }

    fn run(p: &mut LogfmtParser, line: &[u8]) -> Result<(String, f64, i64), Reject> {
        let mut out = samples(|sink| p.parse(line, 42_000, &mut |e| sink(e)))?;
        assert_eq!(out.len(), 1);
        Ok(out.remove(0))
    }

    const LINE: &[u8] = br#"ts=2025-11-28T20:00:00.123Z level=info service="cart \"eu\"" status=200 dur=12.5 msg="served ok" cached"#;

    #[test]
    fn key_value_and_time_from_fields() {
        let mut p = parser("service,status", Some("dur"), Some("ts"));
        assert_eq!(
            run(&mut p, LINE),
            Ok(("cart \"eu\".200".into(), 12.5, 1_764_360_000_123))
        );
        assert_eq!(
            run(&mut p, b"service=a status=5 dur=1\tts=1764360000"),
            Ok(("a.5".into(), 1.0, 1_764_360_000_000))
        );
    }

    #[test]
    fn without_options_each_line_counts_under_the_listener_name() {
        let mut p = parser("", None, None);
        assert_eq!(run(&mut p, LINE), Ok(("logfmt-in".into(), 1.0, 42_000)));
        assert_eq!(
            run(&mut p, b"just some words"),
            Ok(("logfmt-in".into(), 1.0, 42_000))
        );
        assert_eq!(run(&mut p, b""), Ok(("logfmt-in".into(), 1.0, 42_000)));
    }

    #[test]
    fn bare_values_may_hold_equals_and_quotes_and_escapes_stay_otherwise() {
        let mut p = parser("url,q", None, None);
        let got = run(&mut p, br#"url=/a?b=c&d="e" q="x\ny\\z""#).unwrap().0;
        assert_eq!(got, r#"/a?b=c&d="e".x\ny\z"#);
    }

    #[test]
    fn absent_values() {
        let mut p = parser("k", Some("v"), Some("t"));
        assert_eq!(run(&mut p, b"k=a v=1 t="), Ok(("a".into(), 1.0, 42_000)));
        assert_eq!(run(&mut p, b"k=a v=1 t"), Ok(("a".into(), 1.0, 42_000)));
        assert_eq!(run(&mut p, b"k v=1"), Err(Reject::NoKey));
        assert_eq!(run(&mut p, b"k=\"\" v=1"), Err(Reject::NoKey));
        assert_eq!(run(&mut p, b"k=a v="), Err(Reject::NoValue));
        assert_eq!(run(&mut p, b"k=a"), Err(Reject::NoValue));
        assert_eq!(run(&mut p, b"k=a v=1 k=b"), Ok(("b".into(), 1.0, 42_000)));
    }

    #[test]
    fn bad_lines_are_rejected_with_a_reason() {
        let mut p = parser("k", Some("v"), Some("t"));
        for (line, reason) in [
            (&b"k=a v=1 =x"[..], Reject::BadSyntax),
            (b"k=a v=1 a\"b=1", Reject::BadSyntax),
            (b"k=a v=1 m=\"open", Reject::BadSyntax),
            (b"k=a v=1 m=\"x\"y", Reject::BadSyntax),
            (b"k=\xff v=1", Reject::BadUtf8),
            (b"k=a v=NaN", Reject::BadNumber),
            (b"k=a v=-inf", Reject::BadNumber),
            (b"k=a v=12ms", Reject::BadNumber),
            (b"k=a v=1 t=soon", Reject::BadTimestamp),
            (b"k=a v=1 t=-1", Reject::BadTimestamp),
        ] {
            assert_eq!(
                run(&mut p, line),
                Err(reason),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let long = format!("k={} v=1", "x".repeat(2000));
        assert_eq!(run(&mut p, long.as_bytes()), Err(Reject::KeyTooLong));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            line in prop::collection::vec(
                prop_oneof![
                    Just(b' '), Just(b'='), Just(b'"'), Just(b'\\'), Just(b'k'), Just(b'v'),
                    Just(b'1'), any::<u8>()
                ],
                0..100,
            ),
        ) {
            // Panics on a broken contract: bad key, non-finite value, a count that lies.
            let _ = crate::parse::parse_checked(&mut crate::parse::Parser::Logfmt(parser("k,v", Some("v"), Some("t"))), &line, 0);
        }

        #[test]
        fn generated_lines_round_trip(
            service in "[a-z=\" \\\\]{1,10}",
            value in -1e9f64..1e9,
            noise in prop::collection::vec(("[a-z]{1,4}", "[a-z0-9.=]{0,6}"), 0..5),
        ) {
            let quoted = format!("\"{}\"", service.replace('\\', "\\\\").replace('"', "\\\""));
            let mut pairs: Vec<String> = noise
                .iter()
                .filter(|(k, _)| k != "svc" && k != "v")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            pairs.insert(pairs.len() / 2, format!("svc={quoted}"));
            pairs.push(format!("v={value}"));
            let line = pairs.join(" ");
            let mut p = parser("svc", Some("v"), None);
            prop_assert_eq!(run(&mut p, line.as_bytes()).unwrap(), (service, value, 42_000));
        }
    }
}
