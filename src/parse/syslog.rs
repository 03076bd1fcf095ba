//! Syslog: RFC 5424 and RFC 3164. (Being written; see the parse issue.)

#![forbid(unsafe_code)]

use super::{Event, Reject};
use crate::config::FormatOptions;

/// Parser for syslog messages.
#[derive(Debug, Default)]
pub struct SyslogParser {
    scratch: Vec<u8>,
}

impl SyslogParser {
    /// A new parser.
    pub fn new(_options: &FormatOptions) -> Self {
        SyslogParser::default()
    }

    /// Parses one message; see [`super::Parser::parse`].
    pub fn parse(
        &mut self,
        _line: &[u8],
        _ingest_ms: i64,
        _sink: &mut impl FnMut(Event<'_>),
    ) -> Result<u32, Reject> {
        let _ = &self.scratch;
        todo!("syslog")
    }
}
