//! Syslog: RFC 5424 and RFC 3164 (BSD), with or without `<PRI>`; one message → one event of
//! value 1 ([`Kind::Sample`]).
//!
//! ```text
//!   RFC 5424   <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]
//!              <34>1 2026-11-28T20:04:44.320733+00:00 vm app - ID47 - msg
//!   RFC 3164   <PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG
//!              <13>Nov 28 20:04:44 vm app[26180]: msg
//! ```
//!
//! Key: the fields named in `?key=` (any of `host`, `app`, `severity`, `facility`, `msgid`;
//! see [`KEY_FIELDS`]) joined with `.`; by default `app.severity`, e.g. `sshd.info`.
//! Severities and facilities are written as names ([`SEVERITY_NAMES`], [`FACILITY_NAMES`]).
//! A missing or NILVALUE host, app or msgid is `-`.
//!
//! Which rule reads a message (trailing `\r`, `\n` and NUL bytes are ignored first, and a
//! UTF-8 BOM at the start or right after `<PRI>` is skipped):
//! 1. `<PRI>1 ` (PRI 0-191) → RFC 5424, strictly: every header field must be there (`-` for
//!    none), the timestamp must be `-` or RFC 3339 (fraction and offset allowed, converted to
//!    UTC ms) or the line is `bad_timestamp`, a missing field or malformed structured data
//!    (with `\"`, `\\`, `\]` escapes) is `bad_syntax`. MSG may be any bytes.
//! 2. `<PRI>` followed by anything else → RFC 3164, leniently: an optional timestamp
//!    (`Mmm dd hh:mm:ss`, the day padded with a space or not, an optional fraction; or an RFC
//!    3339 timestamp as rsyslog forwards it), a hostname only after a timestamp, then a TAG.
//!    A timestamp of the right shape with impossible values (`Feb 30`, `25:00:00`) is
//!    `bad_timestamp`. Without a timestamp (Python's SysLogHandler: `<156>msg`) there is no
//!    host, and the time is the ingest time.
//! 3. No valid `<PRI>` but a line that starts with an RFC 3164 (or RFC 3339) timestamp, as in
//!    syslog files (`Jun 14 15:16:01 combo sshd(pam_unix)[19939]: ...`) → read as in rule 2,
//!    facility `user`, severity `notice` (RFC 3164 §4.3.3, what a relay assumes). If that
//!    header does not read cleanly, rule 4 applies instead.
//! 4. Anything else that is valid UTF-8 text → counted with app, host and msgid `-`, `user`,
//!    `notice`, ingest time. Text that is not UTF-8 is `bad_utf8`.
//!
//! TAG (RFC 3164): the first word of the content, if it has a `:` or `[` after 1 to
//! [`TAG_BYTES_MAX`] other bytes; app = the bytes before it (`sshd(pam_unix)[19939]:` →
//! `sshd(pam_unix)`, `pyapp:` → `pyapp`). Otherwise there is no tag and app is `-`. After a
//! timestamp, a first word that ends with `:` is the TAG of a message without hostname.
//!
//! RFC 3164 timestamps have no year and no zone: the time is read as UTC, and the year is the
//! one (of the ingest year and the years either side) that puts the timestamp closest to the
//! ingest time without being more than [`FUTURE_MS_MAX`] (one hour, what the worker accepts
//! ahead) ahead of it. So `Dec 31` received on January 2 is last year's, `Jan 1 00:00`
//! received half an hour before midnight on December 31 is next year's, and `Dec 10` received
//! on November 28 is last year's (a log file read back, not a clock 12 days fast). A
//! date that exists in none of those years (`Feb 29`) is `bad_timestamp`.
//!
//! Keys are built in a scratch buffer owned by the parser; a key that is not UTF-8 is
//! `bad_utf8`, too long `key_too_long`. Never panics on any input.

#![forbid(unsafe_code)]

use super::FormatOptions;
use super::{Event, Kind, Reject, TIME_MS_MAX, check_key};

/// The field names `?key=` accepts.
pub const KEY_FIELDS: &[&str] = &["host", "app", "severity", "facility", "msgid"];

/// Severity names, by severity code (RFC 5424 table 2).
pub const SEVERITY_NAMES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// Facility names, by facility code (RFC 5424 table 1, names as syslog.conf spells them).
pub const FACILITY_NAMES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Longest RFC 3164 TAG read as an app name (RFC 5424's APP-NAME limit).
pub const TAG_BYTES_MAX: usize = 48;

/// How far ahead of the ingest time a year-less RFC 3164 timestamp may be: as far as the
/// worker accepts any event time ahead (one hour), so a date a few days ahead reads as last
/// year's instead of being rejected downstream as a far-future time.
pub const FUTURE_MS_MAX: i64 = crate::limits::EVENT_TIME_FUTURE_MS_MAX;

/// The PRI assumed for a message without one: facility `user`, severity `notice`.
const PRI_DEFAULT: u8 = 13;
const PRI_MAX: u16 = 191;
const DAY_MS: i64 = 86_400_000;
const NIL: &[u8] = b"-";
const BOM: &[u8] = b"\xef\xbb\xbf";

/// A field that can be part of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyField {
    Host,
    App,
    Severity,
    Facility,
    MsgId,
}

impl KeyField {
    fn from_name(name: &str) -> Option<KeyField> {
        Some(match name {
            "host" => KeyField::Host,
            "app" => KeyField::App,
            "severity" => KeyField::Severity,
            "facility" => KeyField::Facility,
            "msgid" => KeyField::MsgId,
            _ => return None,
        })
    }
}

/// Checks the field names given in `?key=` for a syslog listener.
pub fn check_key_fields(fields: &[String]) -> Result<(), String> {
    match fields.iter().find(|f| KeyField::from_name(f).is_none()) {
        None => Ok(()),
        Some(bad) => Err(format!(
            "unknown syslog key field `{bad}` (expected any of {})",
            KEY_FIELDS.join(", ")
        )),
    }
}

/// Parser for syslog messages.
#[derive(Debug)]
pub struct SyslogParser {
    key_fields: Vec<KeyField>,
    /// Lines without a `<PRI>` are `bad_syntax` (`?strict=true`).
    strict: bool,
    scratch: Vec<u8>,
}

impl Default for SyslogParser {
    fn default() -> Self {
        SyslogParser {
            key_fields: vec![KeyField::App, KeyField::Severity],
            strict: false,
            scratch: Vec::new(),
        }
    }
}

/// What the header of a message says. Empty host, app or msgid means absent (`-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header<'a> {
    pri: u8,
    time_ms: Option<i64>,
    host: &'a [u8],
    app: &'a [u8],
    msgid: &'a [u8],
}

impl<'a> Header<'a> {
    fn text(pri: u8) -> Header<'a> {
        Header {
            pri,
            time_ms: None,
            host: NIL,
            app: NIL,
            msgid: NIL,
        }
    }
}

impl SyslogParser {
    /// A new parser. The key fields come from `options.key` (default `app`, `severity`);
    /// names not in [`KEY_FIELDS`] are skipped here (configuration rejects them with
    /// [`check_key_fields`]).
    pub fn new(options: &FormatOptions) -> Self {
        let mut parser = SyslogParser {
            strict: options.strict.unwrap_or(false),
            ..SyslogParser::default()
        };
        if let Some(names) = &options.key {
            let fields: Vec<KeyField> = names
                .iter()
                .filter_map(|n| KeyField::from_name(n))
                .collect();
            if !fields.is_empty() {
                parser.key_fields = fields;
            }
        }
        parser
    }

    /// Parses one message; see [`super::Parser::parse`].
    pub fn parse(
        &mut self,
        line: &[u8],
        ingest_ms: i64,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        let header = read_header(line, ingest_ms, self.strict)?;
        self.scratch.clear();
        for (i, field) in self.key_fields.iter().enumerate() {
            if i > 0 {
                self.scratch.push(b'.');
            }
            let part: &[u8] = match field {
                KeyField::Host => header.host,
                KeyField::App => header.app,
                KeyField::MsgId => header.msgid,
                KeyField::Severity => SEVERITY_NAMES[usize::from(header.pri & 7)].as_bytes(),
                KeyField::Facility => FACILITY_NAMES[usize::from(header.pri >> 3)].as_bytes(),
            };
            self.scratch
                .extend_from_slice(if part.is_empty() { NIL } else { part });
        }
        let key = check_key(&self.scratch)?;
        sink(Event {
            key,
            value: 1.0,
            time_ms: header.time_ms.unwrap_or(ingest_ms),
            kind: Kind::Sample,
            unit: None,
        });
        Ok(1)
    }
}

/// Reads a message's header by the rules in the module doc.
fn read_header(line: &[u8], ingest_ms: i64, strict: bool) -> Result<Header<'_>, Reject> {
    let mut line = line;
    while let [rest @ .., b'\r' | b'\n' | 0] = line {
        line = rest;
    }
    let line = line.strip_prefix(BOM).unwrap_or(line);
    if let Some((pri, rest)) = split_pri(line) {
        let rest = rest.strip_prefix(BOM).unwrap_or(rest);
        return match rest.strip_prefix(b"1 ") {
            Some(rest) => read_rfc5424(pri, rest),
            None => read_rfc3164(pri, rest, ingest_ms),
        };
    }
    if strict {
        return Err(Reject::BadSyntax);
    }
    if starts_with_timestamp(line)
        && let Ok(header) = read_rfc3164(PRI_DEFAULT, line, ingest_ms)
    {
        return Ok(header);
    }
    std::str::from_utf8(line).map_err(|_| Reject::BadUtf8)?;
    Ok(Header::text(PRI_DEFAULT))
}

/// `<PRI>` (1-3 digits, at most 191) → (PRI, the rest).
fn split_pri(line: &[u8]) -> Option<(u8, &[u8])> {
    let rest = line.strip_prefix(b"<")?;
    let close = rest.iter().take(4).position(|b| *b == b'>')?;
    let digits = &rest[..close];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let pri = digits
        .iter()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    if pri > PRI_MAX {
        return None;
    }
    Some((pri as u8, &rest[close + 1..]))
}

/// The next space-separated field of an RFC 5424 header and what follows its space.
fn next_field(s: &[u8]) -> Result<(&[u8], &[u8]), Reject> {
    let end = memchr::memchr(b' ', s).ok_or(Reject::BadSyntax)?;
    if end == 0 {
        return Err(Reject::BadSyntax);
    }
    Ok((&s[..end], &s[end + 1..]))
}

/// RFC 5424 after `<PRI>1 `.
fn read_rfc5424(pri: u8, s: &[u8]) -> Result<Header<'_>, Reject> {
    let (timestamp, s) = next_field(s)?;
    let time_ms = if timestamp == NIL {
        None
    } else {
        Some(parse_rfc3339(timestamp).ok_or(Reject::BadTimestamp)?)
    };
    let (host, s) = next_field(s)?;
    let (app, s) = next_field(s)?;
    let (_procid, s) = next_field(s)?;
    let (msgid, s) = next_field(s)?;
    skip_structured_data(s)?;
    Ok(Header {
        pri,
        time_ms,
        host,
        app,
        msgid,
    })
}

/// Checks STRUCTURED-DATA (`-` or `[id param="value" ...]...`) at the start of `s`, followed
/// by the end of the message or a space and MSG.
fn skip_structured_data(s: &[u8]) -> Result<(), Reject> {
    let mut s = s;
    if let Some(rest) = s.strip_prefix(NIL) {
        s = rest;
    } else {
        if s.first() != Some(&b'[') {
            return Err(Reject::BadSyntax);
        }
        while let Some(element) = s.strip_prefix(b"[") {
            if matches!(element.first(), None | Some(b' ' | b']' | b'"' | b'=')) {
                return Err(Reject::BadSyntax);
            }
            s = &element[sd_element_len(element).ok_or(Reject::BadSyntax)?..];
        }
    }
    match s.first() {
        None | Some(b' ') => Ok(()),
        Some(_) => Err(Reject::BadSyntax),
    }
}

/// Length of an SD element after its `[`, through its closing `]`; `None` if unterminated.
/// Inside a quoted PARAM-VALUE, `\` escapes the next byte and `]` does not close.
fn sd_element_len(element: &[u8]) -> Option<usize> {
    let mut in_value = false;
    let mut i = 0;
    while i < element.len() {
        match (in_value, element[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') => in_value = false,
            (false, b'"') => in_value = true,
            (false, b']') => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// RFC 3164 (leniently) after `<PRI>`, or a whole PRI-less line that starts with a timestamp.
fn read_rfc3164(pri: u8, s: &[u8], ingest_ms: i64) -> Result<Header<'_>, Reject> {
    let mut header = Header::text(pri);
    let mut content = s;
    if let Some((time_ms, rest)) = read_timestamp(s, ingest_ms)? {
        header.time_ms = Some(time_ms);
        let first_word_end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        if rest[..first_word_end].ends_with(b":") {
            content = rest;
        } else {
            header.host = &rest[..first_word_end];
            content = rest.get(first_word_end + 1..).unwrap_or_default();
        }
    }
    if let Some(app) = tag(content) {
        header.app = app;
    }
    Ok(header)
}

/// The app name of an RFC 3164 TAG at the start of `content`, if there is one.
fn tag(content: &[u8]) -> Option<&[u8]> {
    let end = content
        .iter()
        .take(TAG_BYTES_MAX + 1)
        .position(|b| matches!(b, b':' | b'[' | b' '))?;
    if end == 0 || content[end] == b' ' {
        return None;
    }
    Some(&content[..end])
}

/// An RFC 3164 or RFC 3339 timestamp and its space at the start of `s` → (ms, the rest).
/// `Ok(None)`: no timestamp there. `Err`: a timestamp of the right shape with bad values.
fn read_timestamp(s: &[u8], ingest_ms: i64) -> Result<Option<(i64, &[u8])>, Reject> {
    let end = match s.first() {
        Some(b'0'..=b'9') => memchr::memchr(b' ', s).unwrap_or(s.len()),
        _ => match bsd_timestamp_len(s) {
            Some(end) => end,
            None => return Ok(None),
        },
    };
    let rest = s.get(end + 1..).unwrap_or_default();
    if s[0].is_ascii_digit() {
        // RFC 3339 in a BSD header (rsyslog's high-precision forwarding format).
        return Ok(parse_rfc3339(&s[..end]).map(|ms| (ms, rest)));
    }
    let ms = parse_bsd_timestamp(&s[..end], ingest_ms).ok_or(Reject::BadTimestamp)?;
    Ok(Some((ms, rest)))
}

/// Whether a PRI-less line starts like a syslog file line.
fn starts_with_timestamp(line: &[u8]) -> bool {
    if line.first().is_some_and(u8::is_ascii_digit) {
        let end = memchr::memchr(b' ', line).unwrap_or(line.len());
        return parse_rfc3339(&line[..end]).is_some();
    }
    bsd_timestamp_len(line).is_some()
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// If `s` starts with the shape `Mmm dd hh:mm:ss[.fff]` (day ` d`, `d` or `dd`) followed by a
/// space or the end, its length.
fn bsd_timestamp_len(s: &[u8]) -> Option<usize> {
    let month = s.get(..3)?;
    if !MONTHS.iter().any(|m| &m[..] == month) || s.get(3) != Some(&b' ') {
        return None;
    }
    let mut i = 4;
    if s.get(i) == Some(&b' ') {
        i += 1;
    }
    let day_digits = s[i.min(s.len())..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if !(1..=2).contains(&day_digits) {
        return None;
    }
    i += day_digits;
    let time = s.get(i..i + 9)?;
    let shape = *b" 00:00:00";
    let fits = time.iter().zip(shape).all(|(b, want)| match want {
        b'0' => b.is_ascii_digit(),
        _ => *b == want,
    });
    if !fits {
        return None;
    }
    i += 9;
    if s.get(i) == Some(&b'.') {
        let frac = s[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if frac == 0 {
            return None;
        }
        i += 1 + frac;
    }
    match s.get(i) {
        None | Some(b' ') => Some(i),
        Some(_) => None,
    }
}

/// `Mmm dd hh:mm:ss[.fff]` (shape already checked) → ms, with the year chosen as the module
/// doc says.
fn parse_bsd_timestamp(s: &[u8], ingest_ms: i64) -> Option<i64> {
    let month = MONTHS.iter().position(|m| m[..] == s[..3])? as u32 + 1;
    let rest = s[4..].trim_ascii_start();
    let day_end = rest.iter().position(|b| *b == b' ')?;
    let day = digits_value(&rest[..day_end])?;
    let clock = &rest[day_end + 1..];
    let (hour, minute, second) = (
        digits_value(&clock[0..2])?,
        digits_value(&clock[3..5])?,
        digits_value(&clock[6..8])?,
    );
    let frac_ms = match clock.get(8) {
        Some(b'.') => fraction_ms(&clock[9..])?,
        _ => 0,
    };
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let day_ms = i64::from(hour * 3600 + minute * 60 + second) * 1000 + i64::from(frac_ms);
    let ingest_ms = ingest_ms.clamp(0, TIME_MS_MAX);
    let (ingest_year, _, _) = civil_from_days(ingest_ms.div_euclid(DAY_MS));
    (ingest_year - 1..=ingest_year + 1)
        .filter(|year| (1970..=9999).contains(year) && day <= days_in_month(*year, month))
        .map(|year| days_from_civil(year, month, day) * DAY_MS + day_ms)
        .filter(|ms| *ms <= ingest_ms + FUTURE_MS_MAX && *ms <= TIME_MS_MAX)
        .min_by_key(|ms| (ms - ingest_ms).abs())
}

/// RFC 3339 `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, the whole of `s` → ms since the epoch
/// (UTC), if it is a real time from 1970 through 9999.
pub fn parse_rfc3339(s: &[u8]) -> Option<i64> {
    if s.len() < 20 {
        return None;
    }
    let punctuation_ok = s[4] == b'-'
        && s[7] == b'-'
        && matches!(s[10], b'T' | b't')
        && s[13] == b':'
        && s[16] == b':';
    if !punctuation_ok {
        return None;
    }
    let year = i64::from(digits_value(&s[0..4])?);
    let month = digits_value(&s[5..7])?;
    let day = digits_value(&s[8..10])?;
    let hour = digits_value(&s[11..13])?;
    let minute = digits_value(&s[14..16])?;
    let second = digits_value(&s[17..19])?;
    let mut rest = &s[19..];
    let mut frac_ms = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        frac_ms = fraction_ms(&frac[..n])?;
        rest = &frac[n..];
    }
    let offset_minutes = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits_value(&[*h1, *h2])?;
            let minutes = digits_value(&[*m1, *m2])?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = i64::from(hours * 60 + minutes);
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let date_ok = (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month);
    if !date_ok || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds = i64::from(hour * 3600 + minute * 60 + second) - offset_minutes * 60;
    let ms = days_from_civil(year, month, day) * DAY_MS + seconds * 1000 + i64::from(frac_ms);
    (0..=TIME_MS_MAX).contains(&ms).then_some(ms)
}

/// 1 to 4 ASCII digits → their value.
fn digits_value(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0, |acc, b| acc * 10 + u32::from(b - b'0')),
    )
}

/// Fraction digits (1 to 9) → whole ms (truncated).
fn fraction_ms(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ms = digits
        .iter()
        .take(3)
        .chain(std::iter::repeat(&b'0'))
        .take(3)
        .fold(0, |acc, b| acc * 10 + u32::from(b - b'0'));
    Some(ms)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::testdata::{LOGHUB, corpus};
    use proptest::prelude::*;

    /// 2026-11-28T21:00:00Z, an hour after the captures were made.
    const INGEST_MS: i64 = 1_795_899_600_000;

    fn parse_with(
        p: &mut SyslogParser,
        line: &[u8],
        ingest_ms: i64,
    ) -> Result<(String, i64), Reject> {
        let mut out = None;
        let n = p.parse(line, ingest_ms, &mut |e| {
            assert_eq!((e.value, e.kind), (1.0, Kind::Sample));
            out = Some((String::from_utf8(e.key.to_vec()).unwrap(), e.time_ms));
        })?;
        assert_eq!(n, 1);
        Ok(out.unwrap())
    }

    fn parse(line: &[u8]) -> Result<(String, i64), Reject> {
        parse_with(&mut SyslogParser::default(), line, INGEST_MS)
    }

    fn key(line: &[u8]) -> String {
        parse(line).unwrap().0
    }

    fn keyed_by(fields: &str) -> SyslogParser {
        let options = FormatOptions {
            key: Some(fields.split(',').map(String::from).collect()),
            ..Default::default()
        };
        SyslogParser::new(&options)
    }

    #[test]
    fn rfc5424_examples() {
        assert_eq!(
            parse(b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'su root' failed for lonvick on /dev/pts/8"),
            Ok(("su.crit".into(), 1_065_910_455_003))
        );
        assert_eq!(
            parse(b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts."),
            Ok(("myproc.notice".into(), 1_061_727_255_000))
        );
        let sd = b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"]";
        assert_eq!(key(sd), "evntslog.notice");
        let mut with_msg = sd.to_vec();
        with_msg.extend_from_slice(b" \xef\xbb\xbfAn application event log entry...");
        assert_eq!(key(&with_msg), "evntslog.notice");
        let mut two = sd.to_vec();
        two.extend_from_slice(b"[examplePriority@32473 class=\"high\"]");
        assert_eq!(key(&two), "evntslog.notice");
        let mut p = keyed_by("facility,host,msgid,severity");
        assert_eq!(
            parse_with(&mut p, &two, 0).unwrap().0,
            "local4.mymachine.example.com.ID47.notice"
        );
    }

    #[test]
    fn rfc5424_nil_values_and_escapes() {
        assert_eq!(
            parse(b"<13>1 - - app - - - no time no host"),
            Ok(("app.notice".into(), INGEST_MS))
        );
        let mut p = keyed_by("host,app,msgid");
        assert_eq!(
            parse_with(&mut p, b"<0>1 - - - - - -", 5),
            Ok(("-.-.-".into(), 5))
        );
        assert_eq!(key(b"<0>1 - h a p m -"), "a.emerg");
        assert_eq!(
            key(br#"<191>1 - h a p m [x@1 q="a \"q\" \] b\\"] msg ] ["#),
            "a.debug"
        );
    }

    #[test]
    fn rfc5424_bad_headers_are_rejected() {
        let cases: [(&[u8], Reject); 10] = [
            (b"<13>1 2026-11-28T20:04:44Z h a p m", Reject::BadSyntax),
            (b"<13>1 2026-11-28T20:04:44Z h a p", Reject::BadSyntax),
            (b"<13>1 2026-11-28T20:04:44Z h  a p m -", Reject::BadSyntax),
            (b"<13>1 2026-11-28T20:04:44Z h a p m x", Reject::BadSyntax),
            (
                b"<13>1 2026-11-28T20:04:44Z h a p m [x a=\"]",
                Reject::BadSyntax,
            ),
            (
                b"<13>1 2026-11-28T20:04:44Z h a p m [] msg",
                Reject::BadSyntax,
            ),
            (
                b"<13>1 2026-11-28T20:04:44Z h a p m [x]msg",
                Reject::BadSyntax,
            ),
            (
                b"<13>1 2026-13-28T20:04:44Z h a p m -",
                Reject::BadTimestamp,
            ),
            (b"<13>1 2026-11-28 h a p m -", Reject::BadTimestamp),
            (
                b"<13>1 1969-12-31T23:59:59Z h a p m -",
                Reject::BadTimestamp,
            ),
        ];
        for (line, reject) in cases {
            assert_eq!(
                parse(line),
                Err(reject),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let long_app = format!(
            "<13>1 - h {} p m -",
            "a".repeat(crate::limits::KEY_BYTES_MAX)
        );
        assert_eq!(parse(long_app.as_bytes()), Err(Reject::KeyTooLong));
        assert_eq!(parse(b"<13>1 - h \xff p m -"), Err(Reject::BadUtf8));
    }

    #[test]
    fn rfc3339_timestamps() {
        let cases: [(&[u8], Option<i64>); 9] = [
            (b"2003-10-11T22:14:15.003Z", Some(1_065_910_455_003)),
            (b"2003-08-24T05:14:15.000003-07:00", Some(1_061_727_255_000)),
            (b"2026-11-28T20:04:44.317881+00:00", Some(1_795_896_284_317)),
            (b"1970-01-01T00:00:00Z", Some(0)),
            (b"2024-02-29T12:00:00z", Some(1_709_208_000_000)),
            (b"2023-02-29T12:00:00Z", None),
            (b"2026-11-28T20:04:44.Z", None),
            (b"2026-11-28T20:04:44+0100", None),
            (b"2026-11-28T24:00:00Z", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rfc3339(s), want, "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn rfc3164_examples() {
        assert_eq!(
            parse(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8"),
            Ok(("su.crit".into(), 1_791_756_855_000))
        );
        let mut p = keyed_by("host,app");
        assert_eq!(
            parse_with(
                &mut p,
                b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
                INGEST_MS
            )
            .unwrap()
            .0,
            "10.0.0.99.-"
        );
        assert_eq!(
            parse_with(&mut p, b"<13>Nov  9 12:01:01 app[12]: no host", INGEST_MS)
                .unwrap()
                .0,
            "-.app"
        );
        assert_eq!(
            parse_with(&mut p, b"<13>Nov 9 12:01:01.250 h app: x", INGEST_MS),
            Ok(("h.app".into(), 1_794_225_661_250))
        );
        assert_eq!(
            parse_with(&mut p, b"<13>2026-11-28T20:04:44Z h a: x", INGEST_MS),
            Ok(("h.a".into(), 1_795_896_284_000))
        );
        assert_eq!(key(b"<13>Nov 28 20:04:44 h"), "-.notice");
        assert_eq!(key(b"<13>Nov 28 20:04:44"), "-.notice");
        assert_eq!(
            parse(b"<13>Nov 31 20:04:44 h a: x"),
            Err(Reject::BadTimestamp)
        );
        assert_eq!(
            parse(b"<13>Nov 28 24:04:44 h a: x"),
            Err(Reject::BadTimestamp)
        );
    }

    #[test]
    fn rfc3164_year_is_the_one_closest_to_ingest_time_and_not_far_ahead() {
        let at = |line: &[u8], ingest_ms| parse_with(&mut SyslogParser::default(), line, ingest_ms);
        // Dec 31 received on Jan 2: last year.
        assert_eq!(
            at(b"<13>Dec 31 23:59:00 h a: x", 1_767_312_000_000)
                .unwrap()
                .1,
            1_767_225_540_000
        );
        // Jan 1 received on Dec 31 half an hour before midnight: next year.
        assert_eq!(
            at(b"<13>Jan  1 00:00:05 h a: x", 1_798_759_800_000)
                .unwrap()
                .1,
            1_798_761_605_000
        );
        // Jan 1 received on Dec 31 at noon is more than an hour ahead: this year's.
        assert_eq!(
            at(b"<13>Jan  1 00:00:05 h a: x", 1_798_718_400_000)
                .unwrap()
                .1,
            1_767_225_605_000
        );
        // Dec 10 received on Nov 28 (OpenSSH in loghub): last year's, not 12 days ahead.
        let (_, ms) = at(b"Dec 10 06:55:46 LabSZ sshd[24200]: x", INGEST_MS).unwrap();
        assert_eq!(civil_from_days(ms.div_euclid(DAY_MS)), (2025, 12, 10));
        // Jun 14 received in November: this year, not next.
        assert_eq!(
            at(b"Jun 14 15:16:01 combo sshd[1]: x", INGEST_MS)
                .unwrap()
                .1,
            1_781_450_161_000
        );
        // Dec 30 received on Nov 28 is 32 days ahead: last year's.
        let (_, ms) = at(b"<13>Dec 30 21:00:00 h a: x", INGEST_MS).unwrap();
        assert_eq!(civil_from_days(ms.div_euclid(DAY_MS)), (2025, 12, 30));
        // Feb 29 exists only in a leap year near the ingest time.
        assert_eq!(
            at(b"<13>Feb 29 12:00:00 h a: x", 1_709_251_200_000)
                .unwrap()
                .1,
            1_709_208_000_000
        );
        assert_eq!(
            at(b"<13>Feb 29 12:00:00 h a: x", INGEST_MS),
            Err(Reject::BadTimestamp)
        );
        // Any ingest time, even a nonsense one, gives an answer or a reject, never a panic.
        for ingest in [i64::MIN, -1, 0, TIME_MS_MAX, i64::MAX] {
            let _ = at(b"<13>Jan  1 00:00:00 h a: x", ingest);
        }
    }

    #[test]
    fn lines_without_pri() {
        assert_eq!(
            parse(b"Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure;"),
            Ok(("sshd(pam_unix).notice".into(), 1_781_450_161_000))
        );
        let mut p = keyed_by("facility,severity");
        assert_eq!(
            parse_with(&mut p, b"Dec 10 06:55:46 LabSZ sshd[24200]: x", 0)
                .unwrap()
                .0,
            "user.notice"
        );
        // Text that is not a syslog header is counted with app `-` at ingest time.
        for text in [
            &b"[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok"[..],
            b"081109 203615 148 INFO dfs.DataNode$PacketResponder: x",
            b"<html>",
            b"<999>too big a PRI",
            b"Nov 31 25:00:00 not a real time",
            b"x",
        ] {
            assert_eq!(parse(text), Ok(("-.notice".into(), INGEST_MS)));
        }
        assert_eq!(parse(b"\xff\xfe binary"), Err(Reject::BadUtf8));
    }

    #[test]
    fn strict_syslog_rejects_lines_without_a_pri() {
        let mut strict = SyslogParser::new(&FormatOptions {
            strict: Some(true),
            ..FormatOptions::default()
        });
        for text in [
            &b"x"[..],
            b"Jun 14 15:16:01 combo sshd[19939]: no PRI",
            b"<999>too big a PRI",
            b"<html>",
        ] {
            assert_eq!(
                parse_with(&mut strict, text, INGEST_MS),
                Err(Reject::BadSyntax),
                "{text:?}"
            );
        }
        assert_eq!(
            parse_with(
                &mut strict,
                b"<13>1 2025-11-28T20:00:00Z vm app - - - msg",
                INGEST_MS
            )
            .unwrap()
            .0,
            "app.notice"
        );
        assert_eq!(
            parse_with(&mut strict, b"<34>Nov 28 20:04:44 vm su: msg", INGEST_MS)
                .unwrap()
                .0,
            "su.crit"
        );
    }

    #[test]
    fn trailing_nul_cr_lf_and_bom_are_tolerated() {
        assert_eq!(key(b"<158>pyapp: msg\0"), "pyapp.info");
        assert_eq!(key(b"<13>1 - - app - - -\r\n\0"), "app.notice");
        assert_eq!(key(b"\xef\xbb\xbf<14>\xef\xbb\xbfbom: x"), "bom.info");
    }

    #[test]
    fn key_fields_are_checked_and_chosen() {
        assert!(check_key_fields(&["host".into(), "msgid".into()]).is_ok());
        let err = check_key_fields(&["host".into(), "pid".into()]).unwrap_err();
        assert!(err.contains("`pid`"), "{err}");
        let line = b"<86>1 - web01 cron 42 TICK - x";
        for (fields, want) in [
            ("app,severity", "cron.info"),
            ("host", "web01"),
            ("facility", "authpriv"),
            ("msgid,app", "TICK.cron"),
            ("bogus", "cron.info"),
        ] {
            assert_eq!(parse_with(&mut keyed_by(fields), line, 0).unwrap().0, want);
        }
        for (code, name) in FACILITY_NAMES.iter().enumerate() {
            let line = format!("<{}>1 - - a - - -", code * 8 + 3);
            let mut p = keyed_by("facility,severity");
            assert_eq!(
                parse_with(&mut p, line.as_bytes(), 0).unwrap().0,
                format!("{name}.err")
            );
        }
    }

    #[test]
    fn captured_logger_and_python_messages() {
        let (Some(udp), Some(tcp)) = (
            corpus("captures/syslog-logger-python.udp.jsonl"),
            corpus("captures/syslog-logger-python.tcp.raw"),
        ) else {
            return;
        };
        let mut messages: Vec<Vec<u8>> = Vec::new();
        for record in udp.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(record).unwrap();
            let d = v["datagram"].as_str().unwrap().as_bytes();
            crate::framing::split_datagram(
                d,
                2048,
                &mut |l| messages.push(l.to_vec()),
                &mut |r, _| panic!("{r:?}"),
            );
        }
        // The TCP capture is several connections back to back; frame each one on its own.
        let find = |needle: &[u8]| tcp.windows(needle.len()).position(|w| w == needle).unwrap();
        let cuts = [
            0,
            find(b"71 <13>"),
            find(b"<13>Nov 28"),
            find(b"<11>python"),
            tcp.len(),
        ];
        for pair in cuts.windows(2) {
            let mut framer =
                crate::framing::StreamFramer::new(2048, crate::framing::Framing::Detect);
            let mut on_line = |l: &[u8]| messages.push(l.to_vec());
            let mut on_reject = |r: Reject, _: &[u8]| panic!("{r:?}");
            framer.feed(&tcp[pair[0]..pair[1]], &mut on_line, &mut on_reject);
            framer.finish(&mut on_line, &mut on_reject);
        }
        let mut p = SyslogParser::default();
        let keys: Vec<String> = messages
            .iter()
            .map(|m| parse_with(&mut p, m, INGEST_MS).unwrap().0)
            .collect();
        let mut want = vec!["app.info", "app.crit"];
        want.extend(["app.notice"; 5]);
        want.extend(["app.warning", "app.notice", "-.warning", "pyapp.info"]);
        want.extend(["app.notice"; 7]);
        want.extend(["-.err"]);
        assert_eq!(keys, want);
        assert_eq!(
            parse_with(&mut p, &messages[0], 0).unwrap().1,
            1_795_896_284_317
        );
        assert_eq!(parse_with(&mut p, &messages[2], 7).unwrap().1, 7);
        assert_eq!(
            parse_with(&mut p, &messages[7], INGEST_MS).unwrap().1,
            1_795_896_284_000
        );
    }

    #[test]
    fn loghub_files_parse_without_rejects() {
        for name in LOGHUB {
            let Some(raw) = corpus(&format!("loghub/{name}_2k.log")) else {
                return;
            };
            let mut lines = Vec::new();
            let mut framer = crate::framing::StreamFramer::new(
                crate::limits::LINE_BYTES_DEFAULT,
                crate::framing::Framing::Detect,
            );
            let mut on_line = |l: &[u8]| lines.push(l.to_vec());
            let mut on_reject = |r: Reject, _: &[u8]| panic!("{name}: {r:?}");
            framer.feed(&raw, &mut on_line, &mut on_reject);
            framer.finish(&mut on_line, &mut on_reject);
            assert_eq!(lines.len(), 2000, "{name}");
            let mut p = SyslogParser::default();
            let mut with_app = 0;
            for line in &lines {
                let (key, time_ms) = parse_with(&mut p, line, INGEST_MS)
                    .unwrap_or_else(|r| panic!("{name}: {r:?}: {}", String::from_utf8_lossy(line)));
                if !key.starts_with("-.") {
                    with_app += 1;
                    assert_ne!(time_ms, INGEST_MS);
                }
                // As a network message, with a PRI in front.
                let mut framed = b"<30>".to_vec();
                framed.extend_from_slice(line);
                parse_with(&mut p, &framed, INGEST_MS).unwrap();
            }
            match name {
                "OpenSSH" => assert_eq!(with_app, 2000),
                "Linux" => assert!(with_app >= 1900, "{with_app}"),
                _ => assert_eq!(with_app, 0, "{name}"),
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            line in prop::collection::vec(
                prop_oneof![
                    Just(b'<'), Just(b'>'), Just(b'1'), Just(b' '), Just(b'-'), Just(b'['),
                    Just(b']'), Just(b'"'), Just(b'\\'), Just(b':'), any::<u8>()
                ],
                0..120,
            ),
            prefix in prop::sample::select(vec![
                &b""[..], b"<13>1 ", b"<13>1 - h a p m ", b"<13>Nov  1 00:00:00 ", b"Jan 31 23:59:59",
                b"<13>2026-11-28T20:04:44", b"<34>",
            ]),
            ingest_ms in prop_oneof![Just(INGEST_MS), any::<i64>()],
        ) {
            let mut message = prefix.to_vec();
            message.extend_from_slice(&line);
            let mut p = keyed_by("host,app,severity,facility,msgid");
            let _ = p.parse(&message, ingest_ms, &mut |e| {
                assert!(check_key(e.key).is_ok());
                assert!(e.time_ms == ingest_ms || (0..=TIME_MS_MAX).contains(&e.time_ms));
            });
        }

        #[test]
        fn rfc3339_round_trips(
            ms in 0..=TIME_MS_MAX,
            offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59i64),
        ) {
            let local_ms = ms + offset_minutes * 60_000;
            let (y, m, d) = civil_from_days(local_ms.div_euclid(DAY_MS));
            let in_day = local_ms.rem_euclid(DAY_MS);
            let sign = if offset_minutes < 0 { '-' } else { '+' };
            let text = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}{sign}{:02}:{:02}",
                in_day / 3_600_000,
                in_day / 60_000 % 60,
                in_day / 1000 % 60,
                in_day % 1000,
                offset_minutes.abs() / 60,
                offset_minutes.abs() % 60,
            );
            let want = (0..=9999).contains(&y).then_some(ms);
            prop_assert_eq!(parse_rfc3339(text.as_bytes()), want, "{}", text);
            prop_assert_eq!(days_from_civil(y, m, d), local_ms.div_euclid(DAY_MS));
        }

        #[test]
        fn rfc5424_header_fields_round_trip(
            pri in 0u8..=191,
            host in "[!-~]{1,20}",
            app in "[!-~]{1,20}",
            msgid in "[!-~]{1,20}",
            msg in any::<Vec<u8>>(),
        ) {
            let mut line = format!("<{pri}>1 2026-11-28T20:04:44Z {host} {app} 1 {msgid} - ").into_bytes();
            line.extend_from_slice(&msg);
            let mut p = keyed_by("host,app,msgid,facility,severity");
            let (key, time_ms) = parse_with(&mut p, &line, 0).unwrap();
            let want = format!(
                "{host}.{app}.{msgid}.{}.{}",
                FACILITY_NAMES[usize::from(pri >> 3)],
                SEVERITY_NAMES[usize::from(pri & 7)]
            );
            prop_assert_eq!(key, want);
            prop_assert_eq!(time_ms, 1_795_896_284_000);
        }
    }
}
