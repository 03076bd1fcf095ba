//! Framing: bytes from a connection or a datagram → lines.
//!
//! (Being written.) Contract:
//! - Newline framing for every format: `\n` ends a line; a trailing `\r` and trailing NUL
//!   bytes (Python's SysLogHandler) are removed; empty lines are skipped silently.
//! - Octet counting (RFC 6587, `LEN SP MSG`) for syslog over TCP, detected per connection from
//!   its first byte (a digit 1-9 means octet counting).
//! - A UDP datagram holds one or more lines; the last may lack its `\n`.
//! - A line longer than `max_line_bytes` is rejected as `too_long` (once per line), the rest of
//!   it is discarded up to its end, and the connection keeps going.
//! - Never allocates per line: a partial line is carried in a buffer owned by the framer,
//!   bounded by `max_line_bytes`.

#![forbid(unsafe_code)]

use crate::parse::Reject;

/// How a stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Newline-terminated lines.
    Newline,
    /// Detect newline or octet counting from the first byte of the stream (syslog over TCP).
    Detect,
}

/// Per-connection framing state.
#[derive(Debug)]
pub struct StreamFramer {
    _max_line_bytes: usize,
    _framing: Framing,
}

impl StreamFramer {
    /// A framer for one connection.
    pub fn new(max_line_bytes: u32, framing: Framing) -> Self {
        StreamFramer {
            _max_line_bytes: max_line_bytes as usize,
            _framing: framing,
        }
    }

    /// Feeds the next bytes of the stream; calls `on_line` for each complete line and
    /// `on_reject` for each rejected one (with up to the first bytes of it).
    pub fn feed(
        &mut self,
        _chunk: &[u8],
        _on_line: &mut impl FnMut(&[u8]),
        _on_reject: &mut impl FnMut(Reject, &[u8]),
    ) {
        todo!("framing")
    }

    /// The stream ended: an unterminated final line is delivered as a line (a truncated octet
    /// frame is rejected as `bad_frame`).
    pub fn finish(
        &mut self,
        _on_line: &mut impl FnMut(&[u8]),
        _on_reject: &mut impl FnMut(Reject, &[u8]),
    ) {
        todo!("framing")
    }
}

/// Splits one datagram into lines (the last may lack its `\n`).
pub fn split_datagram(
    _datagram: &[u8],
    _max_line_bytes: u32,
    _on_line: &mut impl FnMut(&[u8]),
    _on_reject: &mut impl FnMut(Reject, &[u8]),
) {
    todo!("framing")
}
