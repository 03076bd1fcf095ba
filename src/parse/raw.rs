//! Raw lines: every line is one event of value 1; key = the listener name, or the line's
//! first whitespace-separated token with `?key=first_token`.

#![forbid(unsafe_code)]

use super::FormatOptions;
use super::{Event, Kind, Reject, check_key};

/// Parser for the `raw` format.
#[derive(Debug)]
pub struct RawParser {
    listener_key: Vec<u8>,
    first_token: bool,
}

impl RawParser {
    /// A parser keyed by `listener_name`, or by first token when the options ask for it.
    pub fn new(options: &FormatOptions, listener_name: &str) -> Self {
        let first_token = options
            .key
            .as_ref()
            .is_some_and(|k| k.len() == 1 && k[0] == "first_token");
        RawParser {
            listener_key: listener_name.as_bytes().to_vec(),
            first_token,
        }
    }

    /// Parses one line; see [`super::Parser::parse`].
    #[inline]
    pub fn parse(
        &mut self,
        line: &[u8],
        ingest_ms: i64,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        let key = if self.first_token {
            let token = line
                .split(|b| b.is_ascii_whitespace())
                .find(|t| !t.is_empty())
                .ok_or(Reject::NoKey)?;
            check_key(token)?
        } else {
            &self.listener_key
        };
        sink(Event {
            key,
            value: 1.0,
            time_ms: ingest_ms,
            kind: Kind::Sample,
            unit: None,
        });
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_by_listener_or_first_token() {
        let mut by_listener = RawParser::new(&FormatOptions::default(), "raw-tcp");
        let mut keys = Vec::new();
        by_listener
            .parse(b"anything at all", 7, &mut |e| keys.push(e.key.to_vec()))
            .unwrap();
        let opts = FormatOptions {
            key: Some(vec!["first_token".into()]),
            ..Default::default()
        };
        let mut by_token = RawParser::new(&opts, "raw-tcp");
        by_token
            .parse(b"  GET /index.html", 7, &mut |e| keys.push(e.key.to_vec()))
            .unwrap();
        assert_eq!(keys, vec![b"raw-tcp".to_vec(), b"GET".to_vec()]);
        assert_eq!(by_token.parse(b"   ", 7, &mut |_| {}), Err(Reject::NoKey));
    }
}
