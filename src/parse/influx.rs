//! InfluxDB line protocol: one event per numeric field.
//!
//! ```text
//!   weather,location=us\ midwest,station=a temperature=82,humidity=71i,ok=t 1465839830100400200
//!   └ measurement ┘└──────── tags ──────────┘ └────────── fields ─────────┘ └─ time (ns) ────┘
//! ```
//!
//! The grammar is the reference implementation's (`influxdata/line-protocol` v2), checked
//! against its corpus in `tests` below:
//! - Measurement: up to the first unescaped `,` or space; `\,` and `\ ` are escapes. Tag keys,
//!   tag values and field keys: `\,`, `\=` and `\ ` are escapes. A backslash before any other
//!   byte is a literal backslash. Control bytes (0x00-0x1f, 0x7f) are not allowed in names.
//! - Tags: `,key=value` after the measurement, both non-empty. One or more spaces, then fields
//!   `key=value` separated by `,`; then optionally one or more spaces and a timestamp, then
//!   optionally spaces.
//! - Field values: float (`1`, `-1.5e3`, `.5`), int (`1i`), uint (`1u`), bool (`t`, `T`,
//!   `true`, `True`, `TRUE`, `f`, `F`, `false`, `False`, `FALSE`), or a string in double quotes
//!   (`\"` and `\\` escapes; other escapes and raw bytes are kept).
//! - Timestamp: an integer in ns since the epoch → ms (truncated). Without one the event time
//!   is the ingest time.
//! - Empty lines, lines of spaces and comment lines (`#` ...) give no events and no reject.
//!
//! Events: one per int, uint, float or bool field, in the order written ([`Kind::Sample`]);
//! a bool is 1 (true) or 0 (false), so a window's mean is the fraction of true. String
//! fields give no event (a line with only string fields gives none, and is not a reject).
//! Ints and uints beyond 2^53 lose precision as `f64`.
//!
//! Key: `measurement[,tag=value...] field`, written as on the line (with its escapes, which is
//! the canonical form: every delimiter must be escaped and nothing else can be), tags sorted by
//! their bytes. So `cpu,host=a,dc=x usage=1` counts under `cpu,dc=x,host=a usage`.
//!
//! Rejects (the whole line, before any event is emitted): empty measurement → `no_key`; no
//! field, or a field without a value → `no_value`; a value that is no known type →
//! `unknown_type`; a number that does not parse, is out of range or is NaN/±inf →
//! `bad_number`; a timestamp that is not an integer, is out of range or is before 1970 →
//! `bad_timestamp`; bytes that are not UTF-8 → `bad_utf8`; a key longer than the key limit →
//! `key_too_long`; any other grammar error, or more than [`TAGS_PER_LINE_MAX`] tags or
//! [`FIELDS_PER_LINE_MAX`] fields → `bad_syntax`.
//!
//! Differences from the reference decoder, by design: negative timestamps (before 1970) are
//! rejected; the framing ends a line at every `\n`, so a string field cannot hold a raw
//! newline; framing strips trailing NUL bytes and one `\r`; only ns precision is read.
//!
//! Zero-copy: names are ranges into the line; the key is built in a scratch buffer owned by
//! the parser, so nothing is allocated per line once the buffers have grown.

#![forbid(unsafe_code)]

use super::FormatOptions;
use super::{Event, Kind, Reject, TIME_MS_MAX, check_key, check_utf8};

/// Most tags on one line.
pub const TAGS_PER_LINE_MAX: usize = 256;
/// Most fields on one line.
pub const FIELDS_PER_LINE_MAX: usize = 1024;

const NS_PER_MS: i64 = 1_000_000;

/// Parser for Influx line protocol.
#[derive(Debug, Default)]
pub struct InfluxParser {
    /// Tag ranges (`key=value`, as written) into the line.
    tags: Vec<(u32, u32)>,
    /// Numeric fields: key range into the line, and value.
    fields: Vec<(u32, u32, f64)>,
    /// The key being built.
    scratch: Vec<u8>,
}

/// Which escapes a token allows, and where it ends.
#[derive(Clone, Copy)]
enum Token {
    Measurement,
    TagKey,
    TagValue,
    FieldKey,
}

impl Token {
    /// Whether `b` ends the token (when not escaped).
    #[inline]
    fn ends_at(self, b: u8) -> bool {
        match self {
            Token::Measurement => b == b',' || b == b' ',
            Token::TagKey | Token::FieldKey => b == b',' || b == b' ' || b == b'=',
            Token::TagValue => b == b',' || b == b' ' || b == b'=',
        }
    }

    /// Whether `\b` is an escape in this token.
    #[inline]
    fn escapes(self, b: u8) -> bool {
        match self {
            Token::Measurement => b == b',' || b == b' ',
            _ => b == b',' || b == b' ' || b == b'=',
        }
    }
}

/// Whether `b` may not appear in a name (control bytes; `\r` and `\n` included).
#[inline]
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Reads a token starting at `pos`; returns its end. Escaped delimiters belong to it.
#[inline]
fn take_token(line: &[u8], mut pos: usize, token: Token) -> Result<usize, Reject> {
    while pos < line.len() {
        let b = line[pos];
        if b == b'\\' {
            match line.get(pos + 1) {
                Some(&next) if token.escapes(next) => pos += 2,
                _ => pos += 1,
            }
            continue;
        }
        if token.ends_at(b) {
            break;
        }
        // The reference decoder allows control bytes inside tag values only.
        if is_control(b) && !matches!(token, Token::TagValue) {
            return Err(Reject::BadSyntax);
        }
        pos += 1;
    }
    Ok(pos)
}

impl InfluxParser {
    /// A new parser; line protocol has no options.
    pub fn new(_options: &FormatOptions) -> Self {
        InfluxParser::default()
    }

    /// Parses one line; see [`super::Parser::parse`].
    pub fn parse(
        &mut self,
        line: &[u8],
        ingest_ms: i64,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        let start = line.iter().position(|b| *b != b' ').unwrap_or(line.len());
        if start == line.len() {
            return Ok(0);
        }
        if line[start] == b'#' {
            return match line[start..].iter().any(|b| is_control(*b)) {
                true => Err(Reject::BadSyntax),
                false => Ok(0),
            };
        }
        if line.len() > u32::MAX as usize {
            return Err(Reject::TooLong);
        }
        let time_ms = self.read_line(line, start, ingest_ms)?;
        let prefix_len = self.build_prefix(line, start)?;
        let mut n = 0;
        for i in 0..self.fields.len() {
            let (key_start, key_end, value) = self.fields[i];
            self.scratch.truncate(prefix_len);
            self.scratch
                .extend_from_slice(&line[key_start as usize..key_end as usize]);
            sink(Event {
                key: &self.scratch,
                value,
                time_ms,
                kind: Kind::Sample,
                unit: None,
            });
            n += 1;
        }
        Ok(n)
    }

    /// Checks the whole line and fills `tags` and `fields`; returns the event time.
    fn read_line(&mut self, line: &[u8], start: usize, ingest_ms: i64) -> Result<i64, Reject> {
        self.tags.clear();
        self.fields.clear();
        let mut pos = take_token(line, start, Token::Measurement)?;
        if pos == start {
            return Err(Reject::NoKey);
        }
        // Tags.
        while line.get(pos) == Some(&b',') {
            pos += 1;
            let key_start = pos;
            pos = take_token(line, pos, Token::TagKey)?;
            if pos == key_start || line.get(pos) != Some(&b'=') {
                return Err(Reject::BadSyntax);
            }
            let value_start = pos + 1;
            pos = take_token(line, value_start, Token::TagValue)?;
            if pos == value_start || line.get(pos) == Some(&b'=') {
                return Err(Reject::BadSyntax);
            }
            if self.tags.len() == TAGS_PER_LINE_MAX {
                return Err(Reject::BadSyntax);
            }
            self.tags.push((key_start as u32, pos as u32));
        }
        // One or more spaces, then fields.
        let spaces = line[pos..].iter().take_while(|b| **b == b' ').count();
        if spaces == 0 && pos < line.len() {
            return Err(Reject::BadSyntax);
        }
        pos += spaces;
        if pos == line.len() {
            return Err(Reject::NoValue);
        }
        loop {
            pos = self.read_field(line, pos)?;
            match line.get(pos) {
                Some(b',') => pos += 1,
                Some(b' ') => break,
                None => return Ok(ingest_ms),
                Some(_) => return Err(Reject::BadSyntax),
            }
        }
        // Spaces, then an optional timestamp, then optional spaces.
        pos += line[pos..].iter().take_while(|b| **b == b' ').count();
        let time_end = pos
            + line[pos..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b'-')
                .count();
        let rest = &line[time_end..];
        if !rest.iter().all(|b| *b == b' ') {
            let glued = time_end > pos && rest[0] != b' ';
            return Err(if glued {
                Reject::BadTimestamp
            } else {
                Reject::BadSyntax
            });
        }
        if time_end == pos {
            return Ok(ingest_ms);
        }
        parse_time_ns(&line[pos..time_end])
    }

    /// Reads `key=value` at `pos`; returns the position after the value.
    fn read_field(&mut self, line: &[u8], pos: usize) -> Result<usize, Reject> {
        let key_start = pos;
        let key_end = take_token(line, pos, Token::FieldKey)?;
        if key_end == key_start {
            return Err(if key_start == line.len() {
                Reject::NoValue
            } else {
                Reject::BadSyntax
            });
        }
        if line.get(key_end) != Some(&b'=') {
            return Err(Reject::BadSyntax);
        }
        let value_start = key_end + 1;
        let Some(&first) = line.get(value_start) else {
            return Err(Reject::NoValue);
        };
        if first == b'"' {
            let end = string_end(line, value_start + 1)?;
            check_utf8(&line[key_start..end])?;
            return Ok(end + 1);
        }
        let value_end = value_start
            + line[value_start..]
                .iter()
                .take_while(|b| !matches!(b, b',' | b' '))
                .count();
        let value = field_value(&line[value_start..value_end])?;
        if self.fields.len() == FIELDS_PER_LINE_MAX {
            return Err(Reject::BadSyntax);
        }
        self.fields.push((key_start as u32, key_end as u32, value));
        Ok(value_end)
    }

    /// Writes `measurement[,tags sorted] ` into the scratch buffer; returns its length.
    /// Checks the longest key of the line and its UTF-8.
    fn build_prefix(&mut self, line: &[u8], start: usize) -> Result<usize, Reject> {
        let measurement_end = take_token(line, start, Token::Measurement)?;
        let slice = |r: &(u32, u32)| &line[r.0 as usize..r.1 as usize];
        self.tags.sort_unstable_by(|a, b| slice(a).cmp(slice(b)));
        // A tag key twice (as the reference implementation, whose corpus rejects it).
        let duplicate = self
            .tags
            .windows(2)
            .any(|w| tag_key(slice(&w[0])) == tag_key(slice(&w[1])));
        if duplicate {
            return Err(Reject::BadSyntax);
        }
        self.scratch.clear();
        self.scratch
            .extend_from_slice(&line[start..measurement_end]);
        for tag in &self.tags {
            self.scratch.push(b',');
            self.scratch.extend_from_slice(slice(tag));
        }
        self.scratch.push(b' ');
        let prefix_len = self.scratch.len();
        let longest_field = self.fields.iter().map(|f| f.1 - f.0).max().unwrap_or(0);
        if prefix_len + longest_field as usize > crate::limits::KEY_BYTES_MAX {
            return Err(Reject::KeyTooLong);
        }
        check_utf8(&self.scratch)?;
        for f in &self.fields {
            check_key(&line[f.0 as usize..f.1 as usize])?;
        }
        Ok(prefix_len)
    }
}

/// The key of a `key=value` tag as written: up to its first unescaped `=`.
fn tag_key(tag: &[u8]) -> &[u8] {
    let end = take_token(tag, 0, Token::TagKey).unwrap_or(tag.len());
    &tag[..end]
}

/// The position of the closing quote of a string field whose body starts at `pos`.
fn string_end(line: &[u8], mut pos: usize) -> Result<usize, Reject> {
    while pos < line.len() {
        match line[pos] {
            b'\\' if matches!(line.get(pos + 1), Some(b'"' | b'\\')) => pos += 2,
            b'"' => return Ok(pos),
            _ => pos += 1,
        }
    }
    Err(Reject::BadSyntax)
}

/// A field value other than a string → its number; bools are 1 and 0.
fn field_value(v: &[u8]) -> Result<f64, Reject> {
    let Some(&first) = v.first() else {
        return Err(Reject::NoValue);
    };
    match first {
        b'-' | b'0'..=b'9' | b'.' => {}
        b't' | b'T' | b'f' | b'F' => {
            return match v {
                b"t" | b"T" | b"true" | b"True" | b"TRUE" => Ok(1.0),
                b"f" | b"F" | b"false" | b"False" | b"FALSE" => Ok(0.0),
                _ => Err(Reject::UnknownType),
            };
        }
        // NaN, inf, +inf: numbers, but not finite ones.
        _ if looks_non_finite(v) => return Err(Reject::BadNumber),
        _ => return Err(Reject::UnknownType),
    }
    let (digits, suffix) = match v.split_last() {
        Some((b'i', rest)) => (rest, Some(b'i')),
        Some((b'u', rest)) => (rest, Some(b'u')),
        _ => (v, None),
    };
    // ASCII only from here: the first byte is ASCII, and parsing rejects the rest.
    let text = std::str::from_utf8(digits).map_err(|_| Reject::BadNumber)?;
    let value = match suffix {
        Some(b'i') => i64_decimal(text)? as f64,
        Some(_) => u64_decimal(text)? as f64,
        None => text.parse::<f64>().map_err(|_| Reject::BadNumber)?,
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Reject::BadNumber)
    }
}

/// `NaN`, `inf`, `+Inf`, `infinity`, any case.
fn looks_non_finite(v: &[u8]) -> bool {
    let v = v.strip_prefix(b"+").unwrap_or(v);
    ["nan", "inf", "infinity"]
        .iter()
        .any(|w| v.eq_ignore_ascii_case(w.as_bytes()))
}

/// A base-10 `i64`, as Go's `strconv.ParseInt(s, 10, 64)` reads it.
fn i64_decimal(text: &str) -> Result<i64, Reject> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::BadNumber);
    }
    text.parse().map_err(|_| Reject::BadNumber)
}

/// A base-10 `u64`, as Go's `strconv.ParseUint(s, 10, 64)` reads it.
fn u64_decimal(text: &str) -> Result<u64, Reject> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::BadNumber);
    }
    text.parse().map_err(|_| Reject::BadNumber)
}

/// A timestamp in ns → ms since the epoch.
fn parse_time_ns(bytes: &[u8]) -> Result<i64, Reject> {
    let text = std::str::from_utf8(bytes).map_err(|_| Reject::BadTimestamp)?;
    let ns = i64_decimal(text).map_err(|_| Reject::BadTimestamp)?;
    if ns < 0 {
        return Err(Reject::BadTimestamp);
    }
    let ms = ns / NS_PER_MS;
    debug_assert!(ms <= TIME_MS_MAX);
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::testdata::samples;
    use proptest::prelude::*;

    type Out = Vec<(String, f64, i64)>;

    fn parse(line: &[u8]) -> Result<Out, Reject> {
        let mut p = InfluxParser::default();
        samples(|sink| p.parse(line, 42_000, &mut |e| sink(e)))
    }

    fn keys(line: &str) -> Vec<String> {
        parse(line.as_bytes())
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect()
    }

    #[test]
    fn one_event_per_numeric_field_with_sorted_tags() {
        let v = parse(b"weather,station=a,location=us\\ midwest t=82,h=71i,n=3u,ok=t,s=\"x y\",off=F 1465839830100400200")
            .unwrap();
        let t = 1_465_839_830_100;
        let p = "weather,location=us\\ midwest,station=a ";
        assert_eq!(
            v,
            vec![
                (format!("{p}t"), 82.0, t),
                (format!("{p}h"), 71.0, t),
                (format!("{p}n"), 3.0, t),
                (format!("{p}ok"), 1.0, t),
                (format!("{p}off"), 0.0, t),
            ]
        );
    }

    #[test]
    fn escapes_stay_in_the_key() {
        assert_eq!(
            keys("c\\,p\\ u,t\\=k=v\\,1 f\\ x=1"),
            ["c\\,p\\ u,t\\=k=v\\,1 f\\ x"]
        );
        assert_eq!(keys("a\\=b x=1"), ["a\\=b x"]);
        assert_eq!(keys("m s=\"a \\\" b, c=d\",v=2"), ["m v"]);
        assert_eq!(keys("m s=\"ends with \\\\\",v=2"), ["m v"]);
    }

    #[test]
    fn no_timestamp_is_ingest_time_and_spaces_are_allowed() {
        assert_eq!(parse(b"m v=1").unwrap()[0].2, 42_000);
        assert_eq!(parse(b"  m   v=1   5000000   ").unwrap()[0].2, 5);
        assert_eq!(parse(b"m v=1 ").unwrap()[0].2, 42_000);
    }

    #[test]
    fn comments_empty_lines_and_string_only_lines_give_nothing() {
        assert_eq!(parse(b"").unwrap(), vec![]);
        assert_eq!(parse(b"   ").unwrap(), vec![]);
        assert_eq!(parse(b"# a comment").unwrap(), vec![]);
        assert_eq!(parse(b"m s=\"only text\"").unwrap(), vec![]);
        assert_eq!(parse(b"# tab\tin comment"), Err(Reject::BadSyntax));
    }

    #[test]
    fn bad_lines_are_rejected_with_a_reason() {
        for (line, reason) in [
            (&b",t=1 v=1"[..], Reject::NoKey),
            (b" ,t=1 v=1", Reject::NoKey),
            (b"m", Reject::NoValue),
            (b"m,t=1", Reject::NoValue),
            (b"m ", Reject::NoValue),
            (b"m v=", Reject::NoValue),
            (b"m v=x", Reject::UnknownType),
            (b"m v=tru", Reject::UnknownType),
            (b"m v=NaN", Reject::BadNumber),
            (b"m v=-inf", Reject::BadNumber),
            (b"m v=+Inf", Reject::BadNumber),
            (b"m v=1e400", Reject::BadNumber),
            (b"m v=1.5i", Reject::BadNumber),
            (b"m v=-1u", Reject::BadNumber),
            (b"m v=9223372036854775808i", Reject::BadNumber),
            (b"m v=1 x", Reject::BadSyntax),
            (b"m v=1 -5", Reject::BadTimestamp),
            (b"m v=1 12a", Reject::BadTimestamp),
            (b"m v=1 99999999999999999999", Reject::BadTimestamp),
            (b"m v=1 1 2", Reject::BadSyntax),
            (b"m,a=1,b=2,a=3 v=1", Reject::BadSyntax),
            (b"m,k=x\x01y v=1\x01", Reject::BadNumber),
            (b"m,t v=1", Reject::BadSyntax),
            (b"m,t= v=1", Reject::BadSyntax),
            (b"m,=1 v=1", Reject::BadSyntax),
            (b"m, v=1", Reject::BadSyntax),
            (b"m v=1,", Reject::NoValue),
            (b"m v=\"open", Reject::BadSyntax),
            (b"m v=1\t2", Reject::BadNumber),
            (b"m\x01 v=1", Reject::BadSyntax),
            (b"m\xff v=1", Reject::BadUtf8),
            (b"m s=\"\xff\"", Reject::BadUtf8),
        ] {
            assert_eq!(
                parse(line),
                Err(reason),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let long = format!("{} v=1", "m".repeat(crate::limits::KEY_BYTES_MAX));
        assert_eq!(parse(long.as_bytes()), Err(Reject::KeyTooLong));
    }

    #[test]
    fn a_bad_field_rejects_the_whole_line() {
        assert_eq!(parse(b"m a=1,b=x,c=3"), Err(Reject::UnknownType));
    }

    /// The reference implementation's corpus: every decode case (ns precision) is accepted or
    /// rejected as it says, with the same numeric field values, keys and times.
    #[test]
    fn official_corpus_decodes_alike() {
        let path = format!(
            "{}/../shared/corpus/influx-line-protocol/corpus.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let Ok(text) = std::fs::read(&path) else {
            eprintln!("skipping: {path} not found");
            return;
        };
        let corpus: serde_json::Value = serde_json::from_slice(&text).unwrap();
        let cases = corpus["decode"].as_object().unwrap();
        let mut checked = 0;
        let mut deviations: Vec<(String, &str)> = Vec::new();
        let mut disagreements = Vec::new();
        for (id, case) in cases {
            let input = &case["input"];
            if input["precision"] != "1ns" {
                deviations.push((id.clone(), "precision other than ns"));
                continue;
            }
            let bytes = match &input["text"] {
                serde_json::Value::String(s) => s.as_bytes().to_vec(),
                other => base64(other["binary"].as_str().unwrap()),
            };
            let default_ms = input["defaultTime"].as_i64().unwrap().div_euclid(NS_PER_MS);
            let ours = decode_text(&bytes, default_ms);
            let want = expected(&case["output"]);
            checked += 1;
            if ours == want {
                continue;
            }
            match deviation(&bytes, &want) {
                Some(why) => deviations.push((id.clone(), why)),
                None => disagreements.push(format!(
                    "{id}: {:?}\n  ours: {ours:?}\n  want: {want:?}",
                    String::from_utf8_lossy(&bytes)
                )),
            }
        }
        let mut by_reason = std::collections::BTreeMap::new();
        for (_, why) in &deviations {
            *by_reason.entry(*why).or_insert(0) += 1;
        }
        eprintln!("influx corpus: {checked} cases checked, deviations by design: {by_reason:?}");
        for (id, why) in &deviations {
            eprintln!("  {id}: {why}");
        }
        assert!(checked > 6000, "{checked}");
        assert!(
            disagreements.is_empty(),
            "{} disagreements:\n{}",
            disagreements.len(),
            disagreements[..disagreements.len().min(20)].join("\n")
        );
    }

    /// Decodes a corpus text as the appliance would: framed into lines, each parsed; any
    /// reject makes the whole text an error, as in the corpus.
    fn decode_text(bytes: &[u8], default_ms: i64) -> Option<Out> {
        let mut p = InfluxParser::default();
        let mut out = Vec::new();
        let ok = std::cell::Cell::new(true);
        crate::framing::split_datagram(
            bytes,
            crate::limits::LINE_BYTES_MAX,
            &mut |line| {
                let r = p.parse(line, default_ms, &mut |e| {
                    out.push((
                        String::from_utf8(e.key.to_vec()).unwrap(),
                        e.value,
                        e.time_ms,
                    ))
                });
                ok.set(ok.get() && r.is_ok());
            },
            &mut |_, _| ok.set(false),
        );
        ok.get().then_some(out)
    }

    /// The corpus output as our events, or `None` for an error.
    fn expected(output: &serde_json::Value) -> Option<Out> {
        let points = output.get("result")?.as_array()?;
        let mut out = Vec::new();
        for point in points {
            let time_ms = point["time"].as_i64().unwrap().div_euclid(NS_PER_MS);
            let mut tags: Vec<String> = point["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    format!(
                        "{}={}",
                        escape(&t["key"], ",= "),
                        escape(&t["value"], ",= ")
                    )
                })
                .collect();
            tags.sort();
            let mut prefix = escape(&point["name"], ", ");
            for t in &tags {
                prefix = prefix + "," + t;
            }
            for field in point["fields"].as_array().unwrap() {
                let v = &field["value"];
                let value = if let Some(x) = v.get("float") {
                    x.as_f64().unwrap()
                } else if let Some(x) = v.get("int") {
                    x.as_i64().unwrap() as f64
                } else if let Some(x) = v.get("uint") {
                    x.as_u64().unwrap() as f64
                } else if let Some(x) = v.get("bool") {
                    f64::from(u8::from(x.as_bool().unwrap()))
                } else {
                    continue;
                };
                let key = format!("{prefix} {}", escape(&field["key"], ",= "));
                out.push((key, value, time_ms));
            }
        }
        Some(out)
    }

    /// Deliberate differences; `None` when there is no excuse.
    fn deviation(bytes: &[u8], want: &Option<Out>) -> Option<&'static str> {
        let Some(points) = want else {
            // The corpus rejects it; we accept it. Only framing may explain that.
            return bytes
                .iter()
                .any(|b| *b == 0 || *b == b'\r')
                .then_some("framing strips trailing NUL and CR");
        };
        if points.iter().any(|p| p.2 < 0) {
            return Some("timestamp before 1970");
        }
        if points
            .iter()
            .any(|p| p.0.len() > crate::limits::KEY_BYTES_MAX)
        {
            return Some("key longer than the key limit");
        }
        if memchr::memchr(b'\n', bytes).is_some() || memchr::memchr(b'\r', bytes).is_some() {
            return Some("newline or CR inside a string field");
        }
        None
    }

    /// Escapes a corpus name for the key, with a backslash before each of `special`.
    fn escape(v: &serde_json::Value, special: &str) -> String {
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            other => String::from_utf8(base64(other["binary"].as_str().unwrap())).unwrap(),
        };
        let mut out = String::new();
        for c in s.chars() {
            if special.contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    fn base64(s: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            line in prop::collection::vec(
                prop_oneof![
                    Just(b' '), Just(b','), Just(b'='), Just(b'\\'), Just(b'"'), Just(b'1'),
                    Just(b'i'), Just(b'm'), any::<u8>()
                ],
                0..100,
            ),
        ) {
            // Panics on a broken contract: bad key, non-finite value, time out of range, a
            // count that lies.
            let p = InfluxParser::default();
            let _ = crate::parse::parse_checked(&mut crate::parse::Parser::Influx(p), &line, 0);
        }

        #[test]
        fn generated_lines_round_trip(
            measurement in "[a-z][a-z0-9_]{0,10}",
            tags in prop::collection::btree_map("[a-z]{1,5}", "[a-z0-9 ,=]{1,6}", 0..4),
            fields in prop::collection::vec(("[a-z]{1,5}", -1e9f64..1e9, 0u8..3), 1..5),
            time_ns in prop::option::of(0i64..i64::MAX),
        ) {
            let esc = |s: &str| s.replace(' ', "\\ ").replace(',', "\\,").replace('=', "\\=");
            let mut line = measurement.clone();
            for (k, v) in tags.iter().rev() {
                line += &format!(",{k}={}", esc(v));
            }
            let rendered: Vec<String> = fields
                .iter()
                .map(|(k, v, ty)| match ty {
                    0 => format!("{k}={v}"),
                    1 => format!("{k}={}i", *v as i64),
                    _ => format!("{k}=\"{v}\""),
                })
                .collect();
            line += &format!(" {}", rendered.join(","));
            if let Some(t) = time_ns {
                line += &format!(" {t}");
            }
            let got = parse(line.as_bytes()).unwrap();
            let mut prefix = measurement.clone();
            for (k, v) in &tags {
                prefix += &format!(",{k}={}", esc(v));
            }
            let want: Out = fields
                .iter()
                .filter(|f| f.2 != 2)
                .map(|(k, v, ty)| {
                    let v = if *ty == 1 { *v as i64 as f64 } else { *v };
                    (format!("{prefix} {k}"), v, time_ns.map_or(42_000, |t| t / NS_PER_MS))
                })
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
