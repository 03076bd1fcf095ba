//! StatsD (with DogStatsD tags): `name:value|type[|@rate][|#tags]`, one metric per line
//! (framing splits a datagram on `\n`).
//!
//! ```text
//!   app.requests:1|c|@0.1|#env:prod,canary
//!   └─ name ───┘ │ │  └rate┘ └── tags ───┘
//!            value type
//! ```
//!
//! - Types: `c` counter ([`Kind::Counter`], value divided by the sample rate), `g` gauge
//!   ([`Kind::Gauge`]; a value written with a leading `+` or `-` is a [`Kind::GaugeDelta`] by
//!   that signed amount, as in etsy StatsD), `ms`, `h`, `d` timer / histogram / distribution
//!   ([`Kind::Timer`], the rate is checked but not applied), `s` set ([`Kind::Set`]).
//! - Sets: the value is the top 53 bits of `xxh3_64(member)` ([`set_member_hash`], exact in
//!   an `f64`); the window stage counts distinct members per window from it.
//! - DogStatsD events `_e{TITLE_LEN,TEXT_LEN}:title|text[|d:ts|h:host|k:..|p:..|s:..|t:..|#tags]`
//!   and service checks `_sc|name|status[|d:ts|h:host|#tags|m:message]` are counted: one
//!   [`Kind::Counter`] event of value 1 keyed by the title or check name (tags appended as
//!   for metrics), at `d:` when given. A status outside 0–3 is `bad_number`; lengths that do
//!   not match the line are `bad_syntax`.
//! - Key: the name, or with DogStatsD tags `name;k=v;k2=v2`: each tag `k:v` becomes `k=v` (at
//!   its first `:`), a bare tag `k` stays `k`, empty tags are dropped, and the tags are sorted
//!   by their bytes as written in the key, the same convention as Graphite 1.1 tags in
//!   [`super::graphite`]. So `a:1|c|#z:1,b` and `a:1|c|#b,z:1` both count under `a;b;z=1`.
//!   At most [`TAGS_PER_METRIC_MAX`] tags.
//! - Other fields: `@rate` must be in (0, 1]; `T<unix seconds>` (DogStatsD 1.3) sets the event
//!   time; DogStatsD extension fields `name:...` (container id `c:`, external data `e:`,
//!   cardinality `card:`) are ignored. Anything else after the type is `bad_syntax`. Without `T` the time is the ingest
//!   time.
//! - Several values for one name on one line, as etsy StatsD accepts them:
//!   `gorets:1|c:2|c|@0.5:320|ms` gives three events. A `:` after the type, a rate or a
//!   timestamp starts the next value; tags run to the next `|` (they contain `:`), so a value
//!   can follow tags only after another field. At most [`VALUES_PER_LINE_MAX`] values; the
//!   whole line is checked before any event is emitted, so a bad value rejects the line.
//! - Rejects: no `:` → `no_value`; empty name → `no_key`; empty value → `no_value`; no `|` →
//!   `bad_syntax`; unknown or empty type → `unknown_type`; a value, or a counter divided by its
//!   rate, that is not a finite number, or a rate outside (0, 1] → `bad_number`; a bad `T` →
//!   `bad_timestamp`; a key that is not UTF-8 → `bad_utf8`, too long → `key_too_long`.
//!
//! Keys with tags are built in a scratch buffer owned by the parser: no allocation per event
//! once it has grown to the longest key.

#![forbid(unsafe_code)]

use super::FormatOptions;
use super::{Event, Kind, Reject, TIME_MS_MAX, check_key, check_utf8, parse_finite};

/// Most values for one name on one line (`name:1|c:2|c:...`).
pub const VALUES_PER_LINE_MAX: usize = 16;
/// Most DogStatsD tags on one metric.
pub const TAGS_PER_METRIC_MAX: usize = 64;

/// Parser for StatsD lines.
#[derive(Debug, Default)]
pub struct StatsdParser {
    scratch: Vec<u8>,
    /// The checked values of the current line (at most [`VALUES_PER_LINE_MAX`]).
    samples: Vec<Sample>,
    /// Tag ranges into the current tags field, for sorting (at most [`TAGS_PER_METRIC_MAX`]).
    tag_ranges: Vec<(u32, u32)>,
}

/// One value of a line, checked, waiting to be emitted.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    value: f64,
    kind: Kind,
    time_ms: i64,
    /// The key is `scratch[key_start..key_end]`, or the bare name when the range is empty.
    key_start: usize,
    key_end: usize,
}

impl StatsdParser {
    /// A new parser; StatsD has no options.
    pub fn new(_options: &FormatOptions) -> Self {
        StatsdParser::default()
    }

    /// Parses one line; see [`super::Parser::parse`].
    pub fn parse(
        &mut self,
        line: &[u8],
        ingest_ms: i64,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return Err(Reject::NoKey);
        }
        if let Some(rest) = line.strip_prefix(b"_e{") {
            return self.parse_event(rest, ingest_ms, sink);
        }
        if let Some(rest) = line.strip_prefix(b"_sc|") {
            return self.parse_service_check(rest, ingest_ms, sink);
        }
        let colon = memchr::memchr(b':', line).ok_or(Reject::NoValue)?;
        let name = check_key(&line[..colon])?;
        self.scratch.clear();
        // Reused buffers, not arrays on the stack: initialising those per line cost a quarter
        // of the parse time.
        let mut samples = std::mem::take(&mut self.samples);
        samples.clear();
        let result = self.parse_values(name, &line[colon + 1..], ingest_ms, &mut samples);
        if result.is_ok() {
            for s in &samples {
                let key = if s.key_start == s.key_end {
                    name
                } else {
                    &self.scratch[s.key_start..s.key_end]
                };
                sink(Event {
                    key,
                    value: s.value,
                    time_ms: s.time_ms,
                    kind: s.kind,
                    unit: None,
                });
            }
        }
        let n = samples.len() as u32;
        self.samples = samples;
        result.map(|()| n)
    }

    /// A DogStatsD event, after its `_e{`: `TITLE_LEN,TEXT_LEN}:title|text[|field]...`, the
    /// lengths in bytes. One [`Kind::Counter`] event of value 1 keyed by the title (and tags).
    fn parse_event(
        &mut self,
        s: &[u8],
        ingest_ms: i64,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        let brace = find(s, |b| b == b'}').ok_or(Reject::BadSyntax)?;
        let (title_len, text_len) = {
            let lens = &s[..brace];
            let comma = find(lens, |b| b == b',').ok_or(Reject::BadSyntax)?;
            (parse_len(&lens[..comma])?, parse_len(&lens[comma + 1..])?)
        };
        let body = s[brace + 1..].strip_prefix(b":").ok_or(Reject::BadSyntax)?;
        let title = body.get(..title_len).ok_or(Reject::BadSyntax)?;
        let after_title = body
            .get(title_len..)
            .and_then(|r| r.strip_prefix(b"|"))
            .ok_or(Reject::BadSyntax)?;
        let fields = after_title.get(text_len..).ok_or(Reject::BadSyntax)?;
        let name = check_key(title)?;
        self.emit_check_or_event(name, fields, ingest_ms, sink)
    }

    /// A DogStatsD service check, after its `_sc|`: `name|status[|field]...`, the status 0
    /// (ok) to 3 (unknown). One [`Kind::Counter`] event of value 1 keyed by the check name
    /// (and tags); the message field `m:` runs to the end of the line.
    fn parse_service_check(
        &mut self,
        s: &[u8],
        ingest_ms: i64,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        let bar = find(s, |b| b == b'|').ok_or(Reject::NoValue)?;
        let name = check_key(&s[..bar])?;
        let rest = &s[bar + 1..];
        let status_end = find(rest, |b| b == b'|').unwrap_or(rest.len());
        match &rest[..status_end] {
            [] => return Err(Reject::NoValue),
            [b'0'..=b'3'] => {}
            _ => return Err(Reject::BadNumber),
        }
        // The message is last and may hold anything, `|` included.
        let mut fields = &rest[status_end..];
        if let Some(m) = memchr::memmem::find(fields, b"|m:") {
            fields = &fields[..m];
        }
        self.emit_check_or_event(name, fields, ingest_ms, sink)
    }

    /// Reads the `|field` list of an event or service check (`d:` the Unix time, `#` tags,
    /// other `x:` fields ignored) and emits its one event.
    fn emit_check_or_event(
        &mut self,
        name: &[u8],
        mut fields: &[u8],
        ingest_ms: i64,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        self.scratch.clear();
        let mut tags: &[u8] = &[];
        let mut time_ms = ingest_ms;
        while let [b'|', field @ ..] = fields {
            let end = find(field, |b| b == b'|').unwrap_or(field.len());
            let body = &field[..end];
            match body {
                [b'#', t @ ..] => tags = t,
                [b'd', b':', t @ ..] => time_ms = parse_unix_seconds(t)?,
                _ if is_extension_field(body) => {}
                _ => return Err(Reject::BadSyntax),
            }
            fields = &field[end..];
        }
        if !fields.is_empty() {
            return Err(Reject::BadSyntax);
        }
        let (key_start, key_end) = self.tagged_key(name, tags)?;
        let key = if key_start == key_end {
            name
        } else {
            &self.scratch[key_start..key_end]
        };
        sink(Event {
            key,
            value: 1.0,
            time_ms,
            kind: Kind::Counter,
            unit: None,
        });
        Ok(1)
    }

    /// Checks every value of a line into `samples`.
    fn parse_values(
        &mut self,
        name: &[u8],
        mut rest: &[u8],
        ingest_ms: i64,
        samples: &mut Vec<Sample>,
    ) -> Result<(), Reject> {
        loop {
            if samples.len() == VALUES_PER_LINE_MAX {
                return Err(Reject::BadSyntax);
            }
            let (sample, next) = self.parse_value(name, rest, ingest_ms)?;
            samples.push(sample);
            match next {
                Some(next) => rest = next,
                None => return Ok(()),
            }
        }
    }

    /// Parses `value|type[|field]...` at the start of `s`; returns the sample and what
    /// follows a `:` that starts the next value, if any.
    fn parse_value<'l>(
        &mut self,
        name: &[u8],
        s: &'l [u8],
        ingest_ms: i64,
    ) -> Result<(Sample, Option<&'l [u8]>), Reject> {
        let bar = find(s, |b| b == b'|').ok_or(Reject::BadSyntax)?;
        let value = &s[..bar];
        if value.is_empty() {
            return Err(Reject::NoValue);
        }
        let s = &s[bar + 1..];
        let type_end = find(s, |b| b == b'|' || b == b':').unwrap_or(s.len());
        let kind = match &s[..type_end] {
            b"c" => Kind::Counter,
            b"g" => Kind::Gauge,
            b"ms" | b"h" | b"d" => Kind::Timer,
            b"s" => Kind::Set,
            _ => return Err(Reject::UnknownType),
        };
        let mut s = &s[type_end..];
        let mut rate = 1.0;
        let mut tags: &[u8] = &[];
        let mut time_ms = ingest_ms;
        while let [b'|', field @ ..] = s {
            let end = field_end(field);
            let body = &field[..end];
            match body.first() {
                Some(b'@') => rate = parse_rate(&body[1..])?,
                Some(b'T') => time_ms = parse_unix_seconds(&body[1..])?,
                Some(b'#') => tags = &body[1..],
                _ if is_extension_field(body) => {}
                _ => return Err(Reject::BadSyntax),
            }
            s = &field[end..];
        }
        let next = match s {
            [] => None,
            [b':', next @ ..] => Some(next),
            _ => return Err(Reject::BadSyntax),
        };
        let (value, kind) = match kind {
            Kind::Counter => (parse_finite(value)? / rate, kind),
            Kind::Gauge if matches!(value[0], b'+' | b'-') => {
                (parse_finite(value)?, Kind::GaugeDelta)
            }
            Kind::Set => (set_member_hash(value), kind),
            _ => (parse_finite(value)?, kind),
        };
        if !value.is_finite() {
            return Err(Reject::BadNumber);
        }
        let (key_start, key_end) = self.tagged_key(name, tags)?;
        let sample = Sample {
            value,
            kind,
            time_ms,
            key_start,
            key_end,
        };
        Ok((sample, next))
    }

    /// Appends `name;k=v;...` (tags sorted) to the scratch buffer and returns its range;
    /// an empty range when there are no tags (the key is the bare name).
    ///
    /// One pass: the name and the tags field are copied in two moves, then the copy is
    /// rewritten in place (`,` → `;`, each tag's first `:` → `=`) while the tag ranges are
    /// noted. Tags sent already sorted (the usual case: a client sends its tags in one order)
    /// need nothing more; others are sorted and the key is built again after the first copy.
    /// Empty tags (`a,,b`) take the general path. `name` is checked UTF-8 by the caller and
    /// `tags` here; the rewrite touches only ASCII bytes, so the key stays UTF-8.
    fn tagged_key(&mut self, name: &[u8], tags: &[u8]) -> Result<(usize, usize), Reject> {
        if tags.is_empty() {
            return Ok((0, 0));
        }
        check_utf8(tags)?;
        let mut ranges = std::mem::take(&mut self.tag_ranges);
        ranges.clear();
        let start = self.scratch.len();
        self.scratch.extend_from_slice(name);
        self.scratch.push(b';');
        let tags_start = self.scratch.len();
        self.scratch.extend_from_slice(tags);
        let mut tag_start = tags_start;
        let mut colon_seen = false;
        let mut empty_tag = false;
        for (i, b) in self.scratch[tags_start..].iter_mut().enumerate() {
            match *b {
                b',' => {
                    let at = tags_start + i;
                    empty_tag |= at == tag_start;
                    ranges.push((tag_start as u32, at as u32));
                    *b = b';';
                    tag_start = at + 1;
                    colon_seen = false;
                }
                b':' if !colon_seen => {
                    *b = b'=';
                    colon_seen = true;
                }
                _ => {}
            }
        }
        let end = self.scratch.len();
        empty_tag |= end == tag_start;
        ranges.push((tag_start as u32, end as u32));
        let result = if empty_tag {
            self.scratch.truncate(start);
            self.tagged_key_general(name, tags, &mut ranges)
        } else if ranges.len() > TAGS_PER_METRIC_MAX {
            Err(Reject::BadSyntax)
        } else {
            let scratch = &self.scratch;
            let tag = |r: &(u32, u32)| &scratch[r.0 as usize..r.1 as usize];
            if !ranges.is_sorted_by(|a, b| tag(a) <= tag(b)) {
                ranges.sort_unstable_by(|a, b| tag(a).cmp(tag(b)));
                let sorted_start = self.scratch.len();
                self.scratch.extend_from_within(start..tags_start);
                for r in &ranges {
                    self.scratch.extend_from_within(r.0 as usize..r.1 as usize);
                    self.scratch.push(b';');
                }
                self.scratch.pop();
                Ok((sorted_start, self.scratch.len()))
            } else {
                Ok((start, end))
            }
        };
        self.tag_ranges = ranges;
        let (key_start, key_end) = result?;
        if key_end - key_start > crate::limits::KEY_BYTES_MAX {
            return Err(Reject::KeyTooLong);
        }
        Ok((key_start, key_end))
    }

    /// [`tagged_key`](Self::tagged_key) for tags with empty ones among them: drops those.
    fn tagged_key_general(
        &mut self,
        name: &[u8],
        tags: &[u8],
        ranges: &mut Vec<(u32, u32)>,
    ) -> Result<(usize, usize), Reject> {
        ranges.clear();
        let mut start = 0;
        for end in memchr::memchr_iter(b',', tags).chain(std::iter::once(tags.len())) {
            if end > start {
                if ranges.len() == TAGS_PER_METRIC_MAX {
                    return Err(Reject::BadSyntax);
                }
                ranges.push((start as u32, end as u32));
            }
            start = end + 1;
        }
        if ranges.is_empty() {
            return Ok((0, 0));
        }
        let tag = |r: &(u32, u32)| &tags[r.0 as usize..r.1 as usize];
        ranges.sort_unstable_by(|a, b| key_tag(tag(a)).cmp(key_tag(tag(b))));
        let start = self.scratch.len();
        self.scratch.extend_from_slice(name);
        for r in ranges.iter() {
            let t = tag(r);
            self.scratch.push(b';');
            match find(t, |b| b == b':') {
                Some(colon) => {
                    self.scratch.extend_from_slice(&t[..colon]);
                    self.scratch.push(b'=');
                    self.scratch.extend_from_slice(&t[colon + 1..]);
                }
                None => self.scratch.extend_from_slice(t),
            }
        }
        Ok((start, self.scratch.len()))
    }
}

/// The first byte matching `pred`. The fields of a StatsD line are a few bytes long, where a
/// plain loop beats `memchr`'s setup (which took a fifth of the parse time).
#[inline]
fn find(s: &[u8], pred: impl Fn(u8) -> bool) -> Option<usize> {
    s.iter().position(|b| pred(*b))
}

/// Where a field (after its `|`) ends: tags and extension fields contain `:` and run to the
/// next `|`; `@rate` and `T` also stop at a `:` (the next value).
fn field_end(field: &[u8]) -> usize {
    let end = if matches!(field.first(), Some(b'@' | b'T')) {
        find(field, |b| b == b'|' || b == b':')
    } else {
        find(field, |b| b == b'|')
    };
    end.unwrap_or(field.len())
}

/// A DogStatsD tag as it appears in the key: its first `:` becomes `=`.
fn key_tag(tag: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let colon = find(tag, |b| b == b':');
    tag.iter()
        .enumerate()
        .map(move |(i, b)| if Some(i) == colon { b'=' } else { *b })
}

/// A DogStatsD extension field: a lowercase name, `:`, anything (`c:` container id, `e:`
/// external data, `card:` cardinality, and the event fields `h:`, `k:`, `p:`, `s:`, `t:`).
fn is_extension_field(body: &[u8]) -> bool {
    let name_len = body.iter().take_while(|b| b.is_ascii_lowercase()).count();
    name_len > 0 && body.get(name_len) == Some(&b':')
}

/// The hash of a set member, as the event's value: the top 53 bits of `xxh3_64(member)`, so
/// the `f64` holds it exactly and the window's distinct counter gets every bit back.
pub fn set_member_hash(member: &[u8]) -> f64 {
    (xxhash_rust::xxh3::xxh3_64(member) >> 11) as f64
}

/// An event's title or text length: decimal digits, at most the longest line.
fn parse_len(bytes: &[u8]) -> Result<usize, Reject> {
    if bytes.is_empty() || bytes.len() > 7 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadSyntax);
    }
    Ok(bytes
        .iter()
        .fold(0usize, |acc, b| acc * 10 + usize::from(b - b'0')))
}

/// A sample rate in (0, 1].
fn parse_rate(bytes: &[u8]) -> Result<f64, Reject> {
    let rate = parse_finite(bytes)?;
    if rate > 0.0 && rate <= 1.0 {
        Ok(rate)
    } else {
        Err(Reject::BadNumber)
    }
}

/// DogStatsD `T` timestamp: whole Unix seconds → ms.
fn parse_unix_seconds(bytes: &[u8]) -> Result<i64, Reject> {
    if bytes.is_empty() || bytes.len() > 12 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadTimestamp);
    }
    let secs = bytes
        .iter()
        .fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0'));
    let ms = secs * 1000;
    if ms > TIME_MS_MAX {
        return Err(Reject::BadTimestamp);
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::testdata::events;
    use proptest::prelude::*;

    fn parse(line: &[u8]) -> Result<Vec<(String, f64, i64, Kind)>, Reject> {
        let mut p = StatsdParser::default();
        events(|sink| p.parse(line, 42_000, &mut |e| sink(e)))
    }

    fn one(line: &str) -> (String, f64, Kind) {
        let mut v = parse(line.as_bytes()).unwrap();
        assert_eq!(v.len(), 1, "{line}");
        let (k, value, time, kind) = v.remove(0);
        assert_eq!(time, 42_000);
        (k, value, kind)
    }

    #[test]
    fn each_type_gives_its_kind() {
        assert_eq!(one("a.b:1|c"), ("a.b".into(), 1.0, Kind::Counter));
        assert_eq!(one("a:-1|c"), ("a".into(), -1.0, Kind::Counter));
        assert_eq!(one("a:7|g"), ("a".into(), 7.0, Kind::Gauge));
        assert_eq!(one("a:-2|g"), ("a".into(), -2.0, Kind::GaugeDelta));
        assert_eq!(one("a:+3|g"), ("a".into(), 3.0, Kind::GaugeDelta));
        assert_eq!(one("a:320.5|ms"), ("a".into(), 320.5, Kind::Timer));
        assert_eq!(one("a:3|h"), ("a".into(), 3.0, Kind::Timer));
        assert_eq!(one("a:4|d"), ("a".into(), 4.0, Kind::Timer));
        let (key, value, kind) = one("users:alice|s");
        assert_eq!((key.as_str(), kind), ("users", Kind::Set));
        assert_eq!(value, (xxhash_rust::xxh3::xxh3_64(b"alice") >> 11) as f64);
        assert_eq!(value, value.trunc(), "an integer, exact in the f64");
        assert_ne!(value, one("users:bob|s").1);
    }

    fn at(line: &str) -> (String, f64, i64, Kind) {
        let mut v = parse(line.as_bytes()).unwrap();
        assert_eq!(v.len(), 1, "{line}");
        v.remove(0)
    }

    #[test]
    fn dogstatsd_events_are_counted_by_title() {
        assert_eq!(
            at("_e{9,4}:Man down!|help"),
            ("Man down!".into(), 1.0, 42_000, Kind::Counter)
        );
        // As the datadog client writes one: every field, tags sorted into the key.
        assert_eq!(
            at(
                "_e{6,9}:deploy|v1.2 done|d:1700000000|h:web1|k:agg|p:low|s:src|t:success|#z:1,env:prod|c:ci-123|card:low"
            ),
            (
                "deploy;env=prod;z=1".into(),
                1.0,
                1_700_000_000_000,
                Kind::Counter
            )
        );
        // Lengths are bytes, and the text may hold `|`.
        assert_eq!(at("_e{6,3}:héllo|a|b").0, "héllo");
        for bad in [
            "_e{5,4}:abc|text",
            "_e{3,9}:abc|text",
            "_e{3}:abc|d",
            "_e{x,1}:abc|d",
            "_e{3,1}abc|d",
            "_e{3,1}:abcd",
            "_e{3,1}:abc|d|zz",
            "_e{12345678,1}:abc|d",
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(Reject::BadSyntax), "{bad}");
        }
        assert_eq!(parse(b"_e{0,1}:|d"), Err(Reject::NoKey));
        assert_eq!(parse(b"_e{3,1}:abc|d|d:x"), Err(Reject::BadTimestamp));
    }

    #[test]
    fn dogstatsd_service_checks_are_counted_by_name() {
        assert_eq!(
            at("_sc|db.up|0"),
            ("db.up".into(), 1.0, 42_000, Kind::Counter)
        );
        assert_eq!(
            at("_sc|db.up|2|d:1700000000|h:db1|#role:primary|m:replica lag | high"),
            (
                "db.up;role=primary".into(),
                1.0,
                1_700_000_000_000,
                Kind::Counter
            )
        );
        assert_eq!(parse(b"_sc|db.up|4"), Err(Reject::BadNumber));
        assert_eq!(parse(b"_sc|db.up|ok"), Err(Reject::BadNumber));
        assert_eq!(parse(b"_sc|db.up|"), Err(Reject::NoValue));
        assert_eq!(parse(b"_sc|db.up"), Err(Reject::NoValue));
        assert_eq!(parse(b"_sc||0"), Err(Reject::NoKey));
        assert_eq!(parse(b"_sc|db.up|0|zz"), Err(Reject::BadSyntax));
    }

    #[test]
    fn counters_honour_the_sample_rate_and_timers_do_not() {
        assert_eq!(one("a:1|c|@0.1").1, 10.0);
        assert_eq!(one("a:320|ms|@0.1").1, 320.0);
        assert_eq!(one("a:2|c|@1").1, 2.0);
        for bad in [
            "a:1|c|@0",
            "a:1|c|@1.5",
            "a:1|c|@-0.5",
            "a:1|c|@",
            "a:1|c|@x",
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(Reject::BadNumber), "{bad}");
        }
        assert_eq!(parse(b"a:1e308|c|@1e-10"), Err(Reject::BadNumber));
    }

    #[test]
    fn tags_are_sorted_into_the_key() {
        assert_eq!(one("a:1|c|#z:1,b,env:prod").0, "a;b;env=prod;z=1");
        assert_eq!(one("a:1|c|#b,z:1").0, one("a:1|c|#z:1,b").0);
        assert_eq!(one("a:1|c|@0.5|#k:v:w").0, "a;k=v:w");
        assert_eq!(one("a:1|c|#").0, "a");
        assert_eq!(one("a:1|c|#,,x,").0, "a;x");
        let many: Vec<String> = (0..=TAGS_PER_METRIC_MAX).map(|i| format!("t{i}")).collect();
        let line = format!("a:1|c|#{}", many.join(","));
        assert_eq!(parse(line.as_bytes()), Err(Reject::BadSyntax));
    }

    #[test]
    fn dogstatsd_fields() {
        let v = parse(b"a:1|c|T1700000000|c:abcdef|#x:1").unwrap();
        assert_eq!(
            v,
            vec![("a;x=1".into(), 1.0, 1_700_000_000_000, Kind::Counter)]
        );
        assert_eq!(parse(b"a:1|c|Tx"), Err(Reject::BadTimestamp));
        assert_eq!(parse(b"a:1|c|T999999999999"), Err(Reject::BadTimestamp));
        assert_eq!(parse(b"a:1|c|T9999999999999"), Err(Reject::BadTimestamp));
        assert_eq!(parse(b"a:1|c|x"), Err(Reject::BadSyntax));
        assert_eq!(parse(b"a:1|c|"), Err(Reject::BadSyntax));
    }

    #[test]
    fn several_values_on_one_line() {
        let v = parse(b"gorets:1|c:2|c|@0.5:320|ms|#h:a").unwrap();
        let kinds: Vec<_> = v.iter().map(|e| (e.0.as_str(), e.1, e.3)).collect();
        assert_eq!(
            kinds,
            vec![
                ("gorets", 1.0, Kind::Counter),
                ("gorets", 4.0, Kind::Counter),
                ("gorets;h=a", 320.0, Kind::Timer),
            ]
        );
        // A bad value rejects the whole line, before anything is emitted.
        assert_eq!(parse(b"a:1|c:x|c"), Err(Reject::BadNumber));
        let line = "a".to_string() + &":1|c".repeat(VALUES_PER_LINE_MAX + 1);
        assert_eq!(parse(line.as_bytes()), Err(Reject::BadSyntax));
    }

    #[test]
    fn bad_lines_are_rejected_with_a_reason() {
        assert_eq!(parse(b""), Err(Reject::NoKey));
        assert_eq!(parse(b"  "), Err(Reject::NoKey));
        assert_eq!(parse(b"a"), Err(Reject::NoValue));
        assert_eq!(parse(b":1|c"), Err(Reject::NoKey));
        assert_eq!(parse(b"a:|c"), Err(Reject::NoValue));
        assert_eq!(parse(b"a:1"), Err(Reject::BadSyntax));
        assert_eq!(parse(b"a:1|"), Err(Reject::UnknownType));
        assert_eq!(parse(b"a:1|x"), Err(Reject::UnknownType));
        assert_eq!(parse(b"a:1|cc"), Err(Reject::UnknownType));
        assert_eq!(parse(b"a:NaN|g"), Err(Reject::BadNumber));
        assert_eq!(parse(b"a:inf|ms"), Err(Reject::BadNumber));
        assert_eq!(parse(b"a:-inf|g"), Err(Reject::BadNumber));
        assert_eq!(parse(b"a:x|c"), Err(Reject::BadNumber));
        assert_eq!(parse(b"\xff\xfe:1|c"), Err(Reject::BadUtf8));
        assert_eq!(parse(b"a:1|c|#\xff"), Err(Reject::BadUtf8));
        let long = "k".repeat(crate::limits::KEY_BYTES_MAX + 1) + ":1|c";
        assert_eq!(parse(long.as_bytes()), Err(Reject::KeyTooLong));
        // The tags make the key: short name, sorted and unsorted tags, and tags with an
        // empty one among them (each way of building a tagged key).
        let tags = "t:".to_string() + &"v".repeat(crate::limits::KEY_BYTES_MAX);
        for line in [
            format!("a:1|c|#{tags}"),
            format!("a:1|c|#z:1,{tags}"),
            format!("a:1|c|#{tags},,b:2"),
        ] {
            assert_eq!(parse(line.as_bytes()), Err(Reject::KeyTooLong), "{line}");
        }
        assert_eq!(one(" a:1|c \t").0, "a");
    }

    #[test]
    fn captured_python_statsd_lines_parse() {
        let dir = format!("{}/../shared/corpus/captures", env!("CARGO_MANIFEST_DIR"));
        let Ok(udp) = std::fs::read(format!("{dir}/statsd-graphite.udp.jsonl")) else {
            eprintln!("skipping: {dir} not found");
            return;
        };
        let tcp = std::fs::read(format!("{dir}/statsd-graphite-influx.tcp.raw")).unwrap();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for record in udp.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(record).unwrap();
            let d = v["datagram"].as_str().unwrap().as_bytes();
            crate::framing::split_datagram(
                d,
                1024,
                &mut |l| lines.push(l.to_vec()),
                &mut |r, _| panic!("{r:?}"),
            );
        }
        lines.extend(tcp.split(|b| *b == b'\n').map(<[u8]>::to_vec));
        let statsd: Vec<_> = lines.iter().filter(|l| l.contains(&b'|')).collect();
        assert_eq!(statsd.len(), 13);
        let mut p = StatsdParser::default();
        let mut kinds = Vec::new();
        for l in statsd {
            p.parse(l, 0, &mut |e| kinds.push(e.kind)).unwrap();
        }
        for k in [
            Kind::Counter,
            Kind::Gauge,
            Kind::GaugeDelta,
            Kind::Timer,
            Kind::Set,
        ] {
            assert!(kinds.contains(&k), "{k:?}");
        }
    }

    proptest! {
        #[test]
        fn the_one_pass_tagged_key_equals_the_general_one(
            name in "[a-z.]{1,8}",
            tags in "[a-c:=,é]{0,24}",
        ) {
            let mut p = StatsdParser::default();
            let fast = p.tagged_key(name.as_bytes(), tags.as_bytes())
                .map(|(s, e)| p.scratch[s..e].to_vec());
            let mut q = StatsdParser::default();
            let mut ranges = Vec::new();
            let general = q.tagged_key_general(name.as_bytes(), tags.as_bytes(), &mut ranges)
                .map(|(s, e)| q.scratch[s..e].to_vec());
            prop_assert_eq!(fast, general);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            line in prop::collection::vec(
                prop_oneof![
                    Just(b':'), Just(b'|'), Just(b'#'), Just(b'@'), Just(b','), Just(b'1'),
                    Just(b'c'), any::<u8>()
                ],
                0..80,
            ),
        ) {
            let mut p = StatsdParser::default();
            let mut keys_ok = true;
            let r = p.parse(&line, 0, &mut |e| {
                keys_ok &= check_key(e.key).is_ok() && e.value.is_finite();
            });
            prop_assert!(keys_ok);
            if let Ok(n) = r {
                prop_assert!(n >= 1 && n as usize <= VALUES_PER_LINE_MAX);
            }
        }

        #[test]
        fn generated_metrics_round_trip(
            name in "[a-z][a-z0-9._-]{0,20}",
            value in -1e9f64..1e9,
            ty in prop::sample::select(vec!["c", "g", "ms", "h", "d"]),
            rate in prop::option::of(0.001f64..=1.0),
            tags in prop::collection::vec("[a-z]{1,5}(:[a-z0-9]{0,5})?", 0..5),
        ) {
            let mut line = format!("{name}:{value}|{ty}");
            if let Some(rate) = rate {
                line += &format!("|@{rate}");
            }
            if !tags.is_empty() {
                line += &format!("|#{}", tags.join(","));
            }
            let got = parse(line.as_bytes()).unwrap();
            prop_assert_eq!(got.len(), 1);
            let (key, v, _, kind) = &got[0];
            let mut want_tags: Vec<String> = tags.iter().map(|t| t.replacen(':', "=", 1)).collect();
            want_tags.sort();
            let want_key = std::iter::once(name.clone()).chain(want_tags).collect::<Vec<_>>();
            prop_assert_eq!(key, &want_key.join(";"));
            let want = if ty == "c" { value / rate.unwrap_or(1.0) } else { value };
            prop_assert_eq!(*v, want);
            let want_kind = match ty {
                "c" => Kind::Counter,
                "g" if value.is_sign_negative() => Kind::GaugeDelta,
                "g" => Kind::Gauge,
                _ => Kind::Timer,
            };
            prop_assert_eq!(*kind, want_kind);
        }
    }
}
