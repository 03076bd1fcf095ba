//! The input formats and their options, as a listener names them. Here rather than in
//! `config`, so that the parsers never import the configuration: config uses these types.

#![forbid(unsafe_code)]

use serde::{Deserialize, Deserializer, Serialize, de};

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
