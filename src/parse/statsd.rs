//! StatsD: `name:value|type[|@rate][|#tags]`. (Being written; see the parse issue.)

#![forbid(unsafe_code)]

use super::{Event, Reject};
use crate::config::FormatOptions;

/// Parser for StatsD lines.
#[derive(Debug, Default)]
pub struct StatsdParser {
    scratch: Vec<u8>,
}

impl StatsdParser {
    /// A new parser.
    pub fn new(_options: &FormatOptions) -> Self {
        StatsdParser::default()
    }

    /// Parses one line; see [`super::Parser::parse`].
    pub fn parse(
        &mut self,
        _line: &[u8],
        _ingest_ms: i64,
        _sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        let _ = &self.scratch;
        todo!("statsd")
    }
}
