//! The input formats and their options, as a listener names them. Here rather than in
//! `config`, so that the parsers never import the configuration: config uses these types.

#![forbid(unsafe_code)]

use serde::{Deserialize, Deserializer, Serialize, de};

use super::Reject;

/// Input format of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Raw lines, value 1 each.
    Raw,
    /// Graphite plaintext.
    Graphite,
    /// StatsD.
    Statsd,
    /// Syslog (RFC 5424 / RFC 3164).
    Syslog,
    /// InfluxDB line protocol.
    Influx,
    /// JSON lines.
    Json,
    /// logfmt lines.
    Logfmt,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 7] = [
        Format::Raw,
        Format::Graphite,
        Format::Statsd,
        Format::Syslog,
        Format::Influx,
        Format::Json,
        Format::Logfmt,
    ];

    /// The format's name as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Graphite => "graphite",
            Format::Statsd => "statsd",
            Format::Syslog => "syslog",
            Format::Influx => "influx",
            Format::Json => "json",
            Format::Logfmt => "logfmt",
        }
    }

    /// Every reason this format's parser can reject a line with, whatever the options, in
    /// [`Reject::ALL`] order. A line comes from framing, so it is at most `max_line_bytes`
    /// long (a `u32`): the `too_long` that `influx` and `logfmt` return for a line over 4 GiB
    /// is not reached, and framing's own reasons (`too_long`, `bad_frame`) are not listed here
    /// (see `framing::Framing::rejects`). Events are checked after parsing too: a time more
    /// than an hour ahead is `bad_timestamp`, which every format that reads a time lists.
    /// The `/metrics` series of a listener's rejections are these and its framing's.
    pub fn rejects(self) -> &'static [Reject] {
        use Reject::*;
        match self {
            // The key is the listener name, or with `?key=first_token` the line's first word.
            Format::Raw => &[BadUtf8, NoKey, KeyTooLong],
            Format::Graphite => &[
                BadUtf8,
                NoValue,
                BadNumber,
                BadTimestamp,
                BadSyntax,
                NoKey,
                KeyTooLong,
            ],
            Format::Statsd | Format::Influx => &[
                BadUtf8,
                NoValue,
                BadNumber,
                BadTimestamp,
                UnknownType,
                BadSyntax,
                NoKey,
                KeyTooLong,
            ],
            // The key is always some fields, each `-` when missing: never empty.
            Format::Syslog => &[BadUtf8, BadTimestamp, BadSyntax, KeyTooLong],
            Format::Json | Format::Logfmt => &[
                BadUtf8,
                NoValue,
                BadNumber,
                BadTimestamp,
                BadSyntax,
                NoKey,
                KeyTooLong,
            ],
        }
    }

    /// Parses a format name.
    pub fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "raw" => Format::Raw,
            "graphite" => Format::Graphite,
            "statsd" => Format::Statsd,
            "syslog" => Format::Syslog,
            "influx" => Format::Influx,
            "json" => Format::Json,
            "logfmt" => Format::Logfmt,
            _ => return None,
        })
    }
}

/// Format options: which fields make the key, the value and the time.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FormatOptions {
    /// Key fields (`raw`: `first_token`; `syslog`: host, app, severity, facility, msgid;
    /// `json`: dotted paths; `logfmt`: names). `json` and `logfmt` without it: the listener name.
    #[serde(default, deserialize_with = "comma_list")]
    pub key: Option<Vec<String>>,
    /// Value field (`json`, `logfmt`).
    #[serde(default)]
    pub value: Option<String>,
    /// Time field (`json`, `logfmt`).
    #[serde(default)]
    pub time: Option<String>,
    /// `syslog`: reject a line without a `<PRI>` as `bad_syntax` (default: lenient, as
    /// rsyslog is: any text is an RFC 3164 message from `user.notice`).
    #[serde(default)]
    pub strict: Option<bool>,
    /// The field an `[[experiment]]` on this listener reads its unit from (`json`,
    /// `logfmt`): set from the experiment, not written on the listener.
    #[serde(skip)]
    pub unit: Option<String>,
}

/// A comma list (`"a,b"`) or an array of field names; none may be empty.
fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let list = match Raw::deserialize(d)? {
        Raw::One(s) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .collect::<Vec<_>>(),
        Raw::Many(v) => v,
    };
    if list.is_empty() || list.iter().any(|k| k.is_empty()) {
        return Err(de::Error::custom("empty key field name"));
    }
    Ok(Some(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{Parser, TIME_MS_MAX, parse_checked, test_options};
    use proptest::prelude::*;

    /// A line of `format` (with [`test_options`]) that each listed reason rejects.
    fn examples(format: Format) -> Vec<(Reject, Vec<u8>)> {
        let long = "k".repeat(crate::limits::KEY_BYTES_MAX + 1);
        let lines: Vec<(Reject, String)> = match format {
            Format::Raw => vec![
                (Reject::NoKey, "  \t ".into()),
                (Reject::KeyTooLong, format!("{long} rest")),
            ],
            Format::Graphite => vec![
                (Reject::NoValue, "a.b".into()),
                (Reject::BadNumber, "a.b x".into()),
                (Reject::BadTimestamp, "a.b 1 x".into()),
                (Reject::BadSyntax, "a.b 1 1 extra".into()),
                (Reject::NoKey, ";a=b 1".into()),
                (Reject::KeyTooLong, format!("{long} 1")),
            ],
            Format::Statsd => vec![
                (Reject::NoValue, "a".into()),
                (Reject::BadNumber, "a:x|c".into()),
                (Reject::BadTimestamp, "a:1|c|Tx".into()),
                (Reject::UnknownType, "a:1|q".into()),
                (Reject::BadSyntax, "a:1".into()),
                (Reject::NoKey, ":1|c".into()),
                (Reject::KeyTooLong, format!("{long}:1|c")),
            ],
            Format::Syslog => vec![
                (Reject::BadTimestamp, "<13>1 noon host app - - - msg".into()),
                (Reject::BadSyntax, "<13>1 -".into()),
                (Reject::KeyTooLong, format!("<13>1 - host {long} - - - msg")),
            ],
            Format::Influx => vec![
                (Reject::NoValue, "m".into()),
                (Reject::BadNumber, "m f=1.2.3".into()),
                (Reject::BadTimestamp, "m f=1 12a".into()),
                (Reject::UnknownType, "m f=abc".into()),
                (Reject::BadSyntax, "m,t f=1".into()),
                (Reject::NoKey, ",t=1 f=1".into()),
                (Reject::KeyTooLong, format!("{long} f=1")),
            ],
            Format::Json => vec![
                (
                    Reject::NoValue,
                    r#"{"service":"a","http":{"status":1}}"#.into(),
                ),
                (
                    Reject::BadNumber,
                    r#"{"service":"a","http":{"status":1},"latency_ms":"x"}"#.into(),
                ),
                (
                    Reject::BadTimestamp,
                    r#"{"service":"a","http":{"status":1},"latency_ms":1,"ts":"x"}"#.into(),
                ),
                (Reject::BadSyntax, "not json".into()),
                (Reject::NoKey, r#"{"latency_ms":1}"#.into()),
                (
                    Reject::KeyTooLong,
                    format!(r#"{{"service":"{long}","http":{{"status":1}},"latency_ms":1}}"#),
                ),
            ],
            Format::Logfmt => vec![
                (Reject::NoValue, "service=a status=1".into()),
                (Reject::BadNumber, "service=a status=1 latency_ms=x".into()),
                (
                    Reject::BadTimestamp,
                    "service=a status=1 latency_ms=1 ts=x".into(),
                ),
                (Reject::BadSyntax, "=x".into()),
                (Reject::NoKey, "latency_ms=1".into()),
                (
                    Reject::KeyTooLong,
                    format!("service={long} status=1 latency_ms=1"),
                ),
            ],
        };
        let mut out: Vec<(Reject, Vec<u8>)> = lines
            .into_iter()
            .map(|(r, l)| (r, l.into_bytes()))
            .collect();
        // A byte that is never UTF-8, where the key or the whole line is checked.
        let bad_utf8: &[u8] = match format {
            Format::Graphite => b"\xff 1",
            Format::Statsd => b"\xff:1|c",
            Format::Influx => b"m,t=\xff f=1",
            _ => b"\xff",
        };
        out.push((Reject::BadUtf8, bad_utf8.to_vec()));
        out
    }

    #[test]
    fn every_listed_reason_is_one_the_parser_returns() {
        for format in Format::ALL {
            let mut parser = Parser::new(format, &test_options(format), "listener");
            let mut reached = Vec::new();
            for (want, line) in examples(format) {
                let got = parse_checked(&mut parser, &line, 1_764_360_000_000);
                assert_eq!(
                    got,
                    Err(want),
                    "{format:?} {:?}",
                    String::from_utf8_lossy(&line)
                );
                reached.push(want);
            }
            reached.sort_by_key(|r| r.index());
            reached.dedup();
            assert_eq!(
                reached,
                format.rejects(),
                "{format:?}: examples != rejects()"
            );
        }
    }

    proptest! {
        #[test]
        fn parsers_reject_only_with_listed_reasons(
            line in prop::collection::vec(
                prop_oneof![
                    Just(b' '), Just(b':'), Just(b'|'), Just(b';'), Just(b'<'), Just(b'>'),
                    Just(b'1'), Just(b'.'), Just(b'='), Just(b','), Just(b'"'), Just(b'{'),
                    Just(b'}'), Just(b'\\'), Just(b'T'), Just(b'@'), Just(b'#'), Just(b'-'),
                    any::<u8>()
                ],
                1..100,
            ),
            ingest_ms in 0..=TIME_MS_MAX,
        ) {
            for format in Format::ALL {
                for options in [FormatOptions::default(), test_options(format)] {
                    let mut parser = Parser::new(format, &options, "listener");
                    if let Err(r) = parse_checked(&mut parser, &line, ingest_ms) {
                        prop_assert!(
                            format.rejects().contains(&r),
                            "{:?} returned {:?}, not in rejects()", format, r
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_list_is_in_index_order_without_repeats() {
        for format in Format::ALL {
            let r = format.rejects();
            assert!(
                r.windows(2).all(|w| w[0].index() < w[1].index()),
                "{format:?}"
            );
        }
    }
}
