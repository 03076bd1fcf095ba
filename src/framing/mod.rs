//! Framing: bytes from a connection or a datagram → lines.
//!
//! The framer owns the bytes of a line that straddles two reads, and nothing else; every line
//! that lies inside one chunk is handed on as a sub-slice of that chunk.
//!
//! Contract:
//! - Newline framing for every format: `\n` ends a line. The line is then stripped: trailing NUL
//!   bytes (Python's SysLogHandler appends one), one trailing `\r`, and trailing NULs again
//!   (so both `msg\0\r\n` and `msg\r\0\n` give `msg`). Lines that are empty after stripping are
//!   skipped silently.
//! - Syslog over TCP ([`Framing::Detect`]) is decided per connection from the first byte of the
//!   stream that is not `\r`, `\n` or NUL: a digit 1-9 means octet counting (RFC 6587,
//!   `MSG-LEN SP SYSLOG-MSG`, `MSG-LEN` = 1-9 digits, no leading zero), anything else means
//!   newline framing. In that newline mode a NUL also ends a message, because Python's
//!   SysLogHandler over TCP terminates each message with NUL and no `\n`.
//! - Octet counting: a message may contain `\n`; trailing `\n`, `\r` and NUL bytes are stripped
//!   from it; `\r`, `\n` and NUL between frames are skipped. A bad length prefix (a non-digit, a
//!   leading zero, more than 9 digits, a length over `max_line_bytes`) after at least one good
//!   frame is rejected once as `bad_frame`; the connection then falls back to newline framing
//!   and resynchronises at the next `\n` (the bytes up to it belong to the rejected frame).
//!   If the very first length prefix is bad, the detection guessed wrong (a newline-framed
//!   stream whose first line starts with a digit, like `2015-07-29 17:41:44,747 ...`): the
//!   connection switches to newline framing with nothing rejected, the bytes read so far
//!   starting its first line.
//! - A UDP datagram holds one or more lines; the last may lack its `\n`. An empty (zero-byte)
//!   datagram is rejected as `bad_frame`, so a peer sending them shows in the counters; a
//!   datagram of only line terminators gives nothing.
//! - A line longer than `max_line_bytes` after stripping (or longer than `max_line_bytes` +
//!   [`TRAILER_SLACK_BYTES`] before it, which bounds the carry) is rejected as `too_long` once,
//!   with its first bytes (at most [`crate::limits::DEADLETTER_LINE_BYTES_MAX`]); the rest of it
//!   is discarded up to its end, and the connection keeps going.
//! - At the end of the stream ([`StreamFramer::finish`]) an unterminated final line is
//!   delivered; an incomplete octet-counted frame is rejected as `bad_frame`.
//! - Never allocates per line: a partial line is carried in a buffer owned by the framer,
//!   bounded by `max_line_bytes` + [`TRAILER_SLACK_BYTES`] (or the dead-letter excerpt size,
//!   when a rejected frame's first bytes are gathered for `on_reject`).
//!
//! ```text
//!   newline:  line\n line\r\n line\0\n last-line<EOF>
//!   octet:    71 <13>1 2026-11-28T20:04:44Z vm app - - - msg73 <13>1 ... with\nnewline
//!             └┬┘└──────────────── 71 bytes ─────────────────┘
//!           MSG-LEN SP
//! ```

#![forbid(unsafe_code)]

use crate::limits::DEADLETTER_LINE_BYTES_MAX;
use crate::parse::{Format, Reject};

/// Bytes a line may have over `max_line_bytes` before stripping (room for `\r` and NULs); a
/// longer raw line is `too_long` whatever stripping would leave.
pub const TRAILER_SLACK_BYTES: usize = 4;

/// Most digits in an RFC 6587 `MSG-LEN` (lengths up to 999,999,999).
pub const OCTET_LEN_DIGITS_MAX: usize = 9;

/// How a stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Newline-terminated lines.
    Newline,
    /// Detect newline or octet counting from the first byte of the stream (syslog over TCP).
    Detect,
}

impl Framing {
    /// The framing of a TCP stream on a listener of `format`: syslog detects octet counting
    /// (RFC 6587), every other format is newline-framed.
    pub fn of_stream(format: Format) -> Framing {
        match format {
            Format::Syslog => Framing::Detect,
            _ => Framing::Newline,
        }
    }

    /// Every reason a stream framed so is rejected with, in [`Reject::ALL`] order: newline
    /// framing only cuts lines that are too long; octet counting also rejects bad frames.
    pub fn rejects(self) -> &'static [Reject] {
        match self {
            Framing::Newline => &[Reject::TooLong],
            Framing::Detect => &[Reject::TooLong, Reject::BadFrame],
        }
    }
}

/// Every reason [`split_datagram`] rejects with, in [`Reject::ALL`] order: a line that is too
/// long, and an empty datagram.
pub const DATAGRAM_REJECTS: &[Reject] = &[Reject::TooLong, Reject::BadFrame];

/// Where the framer is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// [`Framing::Detect`] before the first significant byte.
    Detect,
    /// Newline framing; `nul_ends_line` for syslog (Detect) streams.
    Newline { nul_ends_line: bool },
    /// Octet counting, reading `MSG-LEN`: `digits` digits read so far, worth `len`.
    OctetLen { len: usize, digits: usize },
    /// Octet counting, inside a message: `remaining` bytes to go (some may be in the carry).
    OctetMsg { remaining: usize },
    /// Octet counting, after a bad `MSG-LEN`: skipping to the next `\n`, the start of the
    /// rejected frame in the carry.
    OctetBad,
}

/// Per-connection framing state.
#[derive(Debug)]
pub struct StreamFramer {
    max_line_bytes: usize,
    framing: Framing,
    state: State,
    /// Newline mode: the start of a line that the previous chunk did not finish. Octet mode:
    /// the start of a message that the previous chunk did not finish, or, after a bad
    /// `MSG-LEN`, the first bytes of the rejected frame.
    carry: Vec<u8>,
    /// Newline mode: the current line was rejected; skip to its end.
    discarding: bool,
    /// Octet mode: the digits of `MSG-LEN` read so far (for the dead-letter excerpt).
    len_digits: [u8; OCTET_LEN_DIGITS_MAX],
    /// Octet mode: a whole frame has been read, so octet counting was the right guess.
    octet_confirmed: bool,
}

impl StreamFramer {
    /// A framer for one connection.
    pub fn new(max_line_bytes: u32, framing: Framing) -> Self {
        StreamFramer {
            max_line_bytes: max_line_bytes as usize,
            framing,
            state: initial_state(framing),
            carry: Vec::new(),
            discarding: false,
            len_digits: [0; OCTET_LEN_DIGITS_MAX],
            octet_confirmed: false,
        }
    }

    /// Feeds the next bytes of the stream; calls `on_line` for each complete line and
    /// `on_reject` for each rejected one (with up to the first bytes of it).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        on_line: &mut impl FnMut(&[u8]),
        on_reject: &mut impl FnMut(Reject, &[u8]),
    ) {
        let mut pos = 0;
        while pos < chunk.len() {
            match self.state {
                State::Detect => {
                    let b = chunk[pos];
                    if matches!(b, b'\n' | b'\r' | 0) {
                        pos += 1;
                    } else if matches!(b, b'1'..=b'9') {
                        self.state = State::OctetLen { len: 0, digits: 0 };
                    } else {
                        self.state = State::Newline {
                            nul_ends_line: true,
                        };
                    }
                }
                State::Newline { nul_ends_line } => {
                    self.feed_newline(&chunk[pos..], nul_ends_line, on_line, on_reject);
                    return;
                }
                State::OctetLen { len, digits } => {
                    pos = self.feed_octet_len(chunk, pos, len, digits);
                }
                State::OctetMsg { remaining } => {
                    pos = self.feed_octet_msg(chunk, pos, remaining, on_line);
                }
                State::OctetBad => {
                    pos = self.feed_octet_bad(chunk, pos, on_reject);
                }
            }
        }
    }

    /// The stream ended: an unterminated final line is delivered as a line (a truncated octet
    /// frame is rejected as `bad_frame`). The framer is then ready for a new stream.
    pub fn finish(
        &mut self,
        on_line: &mut impl FnMut(&[u8]),
        on_reject: &mut impl FnMut(Reject, &[u8]),
    ) {
        match self.state {
            State::Detect => {}
            State::Newline { .. } => {
                if !self.discarding && !self.carry.is_empty() {
                    emit_line(&self.carry, self.max_line_bytes, on_line, on_reject);
                }
            }
            State::OctetLen { digits, .. } => {
                let digits = &self.len_digits[..digits];
                if self.octet_confirmed {
                    if !digits.is_empty() {
                        on_reject(Reject::BadFrame, digits);
                    }
                } else {
                    // A stream that is only a few digits was never octet-counted.
                    emit_line(digits, self.max_line_bytes, on_line, on_reject);
                }
            }
            State::OctetMsg { .. } | State::OctetBad => {
                let n = self.carry.len().min(DEADLETTER_LINE_BYTES_MAX);
                on_reject(Reject::BadFrame, &self.carry[..n]);
            }
        }
        self.carry.clear();
        self.discarding = false;
        self.octet_confirmed = false;
        self.state = initial_state(self.framing);
    }

    /// Newline framing of the rest of a chunk.
    fn feed_newline(
        &mut self,
        mut data: &[u8],
        nul_ends_line: bool,
        on_line: &mut impl FnMut(&[u8]),
        on_reject: &mut impl FnMut(Reject, &[u8]),
    ) {
        let find_end = |hay: &[u8]| {
            if nul_ends_line {
                memchr::memchr2(b'\n', 0, hay)
            } else {
                memchr::memchr(b'\n', hay)
            }
        };
        while let Some(end) = find_end(data) {
            let part = &data[..end];
            data = &data[end + 1..];
            if self.discarding {
                self.discarding = false;
            } else if self.carry.is_empty() {
                emit_line(part, self.max_line_bytes, on_line, on_reject);
            } else {
                if self.append_carry(part, on_reject) {
                    emit_line(&self.carry, self.max_line_bytes, on_line, on_reject);
                }
                self.carry.clear();
            }
        }
        if !self.discarding && !self.append_carry(data, on_reject) {
            self.carry.clear();
            self.discarding = true;
        }
    }

    /// Appends part of a line to the carry. If the line gets too long, rejects it with its
    /// first bytes and returns false (the caller clears the carry).
    fn append_carry(&mut self, part: &[u8], on_reject: &mut impl FnMut(Reject, &[u8])) -> bool {
        let limit = self.max_line_bytes + TRAILER_SLACK_BYTES;
        if self.carry.len() + part.len() <= limit {
            self.carry.extend_from_slice(part);
            return true;
        }
        let excerpt = DEADLETTER_LINE_BYTES_MAX.min(limit + 1);
        let fill = excerpt.saturating_sub(self.carry.len()).min(part.len());
        self.carry.extend_from_slice(&part[..fill]);
        let n = self.carry.len().min(DEADLETTER_LINE_BYTES_MAX);
        on_reject(Reject::TooLong, &self.carry[..n]);
        false
    }

    /// Reads `MSG-LEN SP` byte by byte from `chunk[pos..]`; returns the new position.
    fn feed_octet_len(
        &mut self,
        chunk: &[u8],
        mut pos: usize,
        mut len: usize,
        mut digits: usize,
    ) -> usize {
        while pos < chunk.len() {
            let b = chunk[pos];
            let leading_zero = digits == 0 && b == b'0';
            if digits == 0 && matches!(b, b'\n' | b'\r' | 0) {
                pos += 1;
            } else if b.is_ascii_digit() && !leading_zero && digits < OCTET_LEN_DIGITS_MAX {
                self.len_digits[digits] = b;
                len = len * 10 + usize::from(b - b'0');
                digits += 1;
                pos += 1;
            } else if b == b' ' && digits > 0 && len <= self.max_line_bytes {
                self.state = State::OctetMsg { remaining: len };
                return pos + 1;
            } else {
                return self.bad_octet_len(pos, digits);
            }
        }
        self.state = State::OctetLen { len, digits };
        pos
    }

    /// A bad `MSG-LEN` at `pos`. After a good frame: gather the digits read and the rest of
    /// its line as the dead-letter excerpt; the frame is rejected when its line ends. On the
    /// first frame: switch to newline framing, the digits starting the first line. Returns the
    /// new position.
    fn bad_octet_len(&mut self, pos: usize, digits: usize) -> usize {
        self.carry.clear();
        self.carry.extend_from_slice(&self.len_digits[..digits]);
        self.state = if self.octet_confirmed {
            State::OctetBad
        } else {
            State::Newline {
                nul_ends_line: true,
            }
        };
        pos
    }

    /// Skips the line of a bad frame, keeping its first bytes; at its `\n`, rejects it and
    /// falls back to newline framing. Returns the new position.
    fn feed_octet_bad(
        &mut self,
        chunk: &[u8],
        pos: usize,
        on_reject: &mut impl FnMut(Reject, &[u8]),
    ) -> usize {
        let rest = &chunk[pos..];
        let line_end = memchr::memchr(b'\n', rest);
        let part = &rest[..line_end.unwrap_or(rest.len())];
        let room = DEADLETTER_LINE_BYTES_MAX.saturating_sub(self.carry.len());
        self.carry.extend_from_slice(&part[..part.len().min(room)]);
        match line_end {
            None => chunk.len(),
            Some(end) => {
                on_reject(Reject::BadFrame, &self.carry);
                self.carry.clear();
                // Octet counting only happens on syslog streams, where NUL also ends a message.
                self.state = State::Newline {
                    nul_ends_line: true,
                };
                pos + end + 1
            }
        }
    }

    /// Reads message bytes from `chunk[pos..]`; returns the new position.
    fn feed_octet_msg(
        &mut self,
        chunk: &[u8],
        pos: usize,
        remaining: usize,
        on_line: &mut impl FnMut(&[u8]),
    ) -> usize {
        let available = chunk.len() - pos;
        if self.carry.is_empty() && available >= remaining {
            self.octet_confirmed = true;
            emit_octet_message(&chunk[pos..pos + remaining], on_line);
            self.state = State::OctetLen { len: 0, digits: 0 };
            return pos + remaining;
        }
        let take = available.min(remaining);
        self.carry.extend_from_slice(&chunk[pos..pos + take]);
        if take == remaining {
            self.octet_confirmed = true;
            emit_octet_message(&self.carry, on_line);
            self.carry.clear();
            self.state = State::OctetLen { len: 0, digits: 0 };
        } else {
            self.state = State::OctetMsg {
                remaining: remaining - take,
            };
        }
        pos + take
    }
}

fn initial_state(framing: Framing) -> State {
    match framing {
        Framing::Newline => State::Newline {
            nul_ends_line: false,
        },
        Framing::Detect => State::Detect,
    }
}

/// Splits one datagram into lines (the last may lack its `\n`).
pub fn split_datagram(
    datagram: &[u8],
    max_line_bytes: u32,
    on_line: &mut impl FnMut(&[u8]),
    on_reject: &mut impl FnMut(Reject, &[u8]),
) {
    if datagram.is_empty() {
        on_reject(Reject::BadFrame, datagram);
        return;
    }
    let max_line_bytes = max_line_bytes as usize;
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', datagram) {
        emit_line(&datagram[start..end], max_line_bytes, on_line, on_reject);
        start = end + 1;
    }
    emit_line(&datagram[start..], max_line_bytes, on_line, on_reject);
}

/// Strips a newline-framed line: trailing NULs, one `\r`, trailing NULs.
pub fn strip_line(line: &[u8]) -> &[u8] {
    let line = trim_nuls(line);
    trim_nuls(line.strip_suffix(b"\r").unwrap_or(line))
}

fn trim_nuls(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., 0] = line {
        line = rest;
    }
    line
}

/// Strips an octet-counted message: any trailing `\n`, `\r` and NUL bytes.
pub fn strip_octet_message(mut message: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r' | 0] = message {
        message = rest;
    }
    message
}

/// Checks, strips and delivers one newline-framed line (the `\n` already removed).
fn emit_line(
    raw: &[u8],
    max_line_bytes: usize,
    on_line: &mut impl FnMut(&[u8]),
    on_reject: &mut impl FnMut(Reject, &[u8]),
) {
    let line = strip_line(raw);
    if raw.len() > max_line_bytes + TRAILER_SLACK_BYTES || line.len() > max_line_bytes {
        on_reject(
            Reject::TooLong,
            &raw[..raw.len().min(DEADLETTER_LINE_BYTES_MAX)],
        );
    } else if !line.is_empty() {
        on_line(line);
    }
}

fn emit_octet_message(message: &[u8], on_line: &mut impl FnMut(&[u8])) {
    let message = strip_octet_message(message);
    if !message.is_empty() {
        on_line(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::testdata::{LOGHUB, corpus};
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    enum Out {
        Line(Vec<u8>),
        Rejected(Reject, Vec<u8>),
    }

    fn line(s: &[u8]) -> Out {
        Out::Line(s.to_vec())
    }

    fn stream(max: u32, framing: Framing, chunks: &[&[u8]]) -> Vec<Out> {
        let mut framer = StreamFramer::new(max, framing);
        let out = std::cell::RefCell::new(Vec::new());
        let mut on_line = |l: &[u8]| out.borrow_mut().push(Out::Line(l.to_vec()));
        let mut on_reject = |r, b: &[u8]| out.borrow_mut().push(Out::Rejected(r, b.to_vec()));
        for chunk in chunks {
            framer.feed(chunk, &mut on_line, &mut on_reject);
        }
        framer.finish(&mut on_line, &mut on_reject);
        out.into_inner()
    }

    fn datagram(max: u32, d: &[u8]) -> Vec<Out> {
        let out = std::cell::RefCell::new(Vec::new());
        split_datagram(
            d,
            max,
            &mut |l| out.borrow_mut().push(Out::Line(l.to_vec())),
            &mut |r, b| out.borrow_mut().push(Out::Rejected(r, b.to_vec())),
        );
        out.into_inner()
    }

    /// Every way to cut `data` into two or three chunks.
    fn all_splits(data: &[u8], mut check: impl FnMut(&[&[u8]])) {
        for i in 0..=data.len() {
            for j in i..=data.len() {
                check(&[&data[..i], &data[i..j], &data[j..]]);
            }
        }
    }

    #[test]
    fn newline_ends_lines_and_terminators_are_stripped() {
        let got = stream(
            64,
            Framing::Newline,
            &[b"a\nb\r\nc\0\n\n\r\n\0\nd\0\r\ne\r\0\nf"],
        );
        let want: Vec<Out> = [&b"a"[..], b"b", b"c", b"d", b"e", b"f"]
            .iter()
            .map(|l| line(l))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn only_one_trailing_cr_is_stripped() {
        assert_eq!(strip_line(b"a\r\r"), b"a\r");
        assert_eq!(strip_line(b"\0\r\0"), b"");
        assert_eq!(strip_line(b"a\0b"), b"a\0b");
        assert_eq!(
            stream(64, Framing::Newline, &[b"a\0b\n"]),
            vec![line(b"a\0b")]
        );
    }

    #[test]
    fn a_line_split_across_chunks_is_carried() {
        all_splits(b"first line\nsecond\r\nthird", |chunks| {
            assert_eq!(
                stream(64, Framing::Newline, chunks),
                vec![line(b"first line"), line(b"second"), line(b"third")]
            );
        });
    }

    #[test]
    fn lines_inside_a_chunk_are_borrowed_from_it() {
        let chunk = b"one\ntwo\nthr";
        let range = chunk.as_ptr_range();
        let mut framer = StreamFramer::new(64, Framing::Newline);
        let mut n = 0;
        framer.feed(
            chunk,
            &mut |l| {
                assert!(range.contains(&l.as_ptr()));
                n += 1;
            },
            &mut |_, _| panic!("no reject"),
        );
        assert_eq!(n, 2);
        assert_eq!(framer.carry, b"thr");
    }

    #[test]
    fn too_long_line_is_rejected_once_and_the_stream_continues() {
        let mut data = b"short\n".to_vec();
        data.extend_from_slice(&[b'x'; 30]);
        data.extend_from_slice(b"\nok\n");
        for size in 1..=data.len() {
            let chunks: Vec<&[u8]> = data.chunks(size).collect();
            let got = stream(8, Framing::Newline, &chunks);
            assert_eq!(got.len(), 3, "chunk size {size}: {got:?}");
            assert_eq!(got[0], line(b"short"));
            match &got[1] {
                Out::Rejected(Reject::TooLong, first) => {
                    assert!(!first.is_empty() && first.iter().all(|b| *b == b'x'))
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(got[2], line(b"ok"));
        }
    }

    #[test]
    fn a_line_of_exactly_max_bytes_with_crlf_and_nul_is_accepted() {
        all_splits(b"12345678\0\r\n123456789\n", |chunks| {
            let got = stream(8, Framing::Newline, chunks);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0], line(b"12345678"));
            assert!(matches!(got[1], Out::Rejected(Reject::TooLong, _)));
        });
    }

    #[test]
    fn too_long_excerpt_is_capped() {
        let data = vec![b'y'; 5000];
        for chunks in [vec![&data[..]], data.chunks(100).collect()] {
            let got = stream(2000, Framing::Newline, &chunks);
            assert_eq!(
                got,
                vec![Out::Rejected(
                    Reject::TooLong,
                    vec![b'y'; DEADLETTER_LINE_BYTES_MAX]
                )]
            );
        }
    }

    #[test]
    fn finish_delivers_an_unterminated_last_line_but_not_a_discarded_one() {
        assert_eq!(
            stream(8, Framing::Newline, &[b"ab", b"c\r"]),
            vec![line(b"abc")]
        );
        let got = stream(4, Framing::Newline, &[b"abcdefghijk"]);
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0], Out::Rejected(Reject::TooLong, _)));
        assert_eq!(stream(4, Framing::Newline, &[]), vec![]);
    }

    #[test]
    fn framer_is_reusable_after_finish() {
        let mut framer = StreamFramer::new(64, Framing::Detect);
        let mut lines = Vec::new();
        framer.feed(b"5 hel", &mut |l| lines.push(l.to_vec()), &mut |_, _| {});
        framer.finish(&mut |l| lines.push(l.to_vec()), &mut |_, _| {});
        framer.feed(b"<13>x\n", &mut |l| lines.push(l.to_vec()), &mut |_, _| {});
        assert_eq!(lines, vec![b"<13>x".to_vec()]);
    }

    #[test]
    fn detect_picks_octet_counting_from_a_leading_digit() {
        all_splits(b"\r\n5 hello11 two\nlines\n\n3 abc", |chunks| {
            assert_eq!(
                stream(64, Framing::Detect, chunks),
                vec![line(b"hello"), line(b"two\nlines"), line(b"abc")]
            );
        });
    }

    #[test]
    fn octet_messages_lose_trailing_newline_cr_and_nul() {
        assert_eq!(
            stream(64, Framing::Detect, &[b"6 a\r\n\0\n\r4 \n\n\n\n2 bb"]),
            vec![line(b"a"), line(b"bb")]
        );
    }

    #[test]
    fn detect_picks_newline_framing_otherwise_and_nul_ends_a_message() {
        assert_eq!(
            stream(64, Framing::Detect, &[b"<11>a\0<11>b\0", b"\n<13>c\n0 x"]),
            vec![line(b"<11>a"), line(b"<11>b"), line(b"<13>c"), line(b"0 x")]
        );
    }

    #[test]
    fn bad_octet_prefix_is_rejected_once_then_newline_framing_resumes() {
        let cases: [(&[u8], &[u8]); 5] = [
            (b"5 hello12x abc\nnext\n", b"12x abc"),
            (b"5 hello1234567890 x\nnext\n", b"1234567890 x"),
            (b"5 hello11 hello world\nnext\n", b"11 hello world"),
            (b"5 hello05 x\nnext\n", b"05 x"),
            (b"5 hello<13>x y\nnext", b"<13>x y"),
        ];
        for (data, excerpt) in cases {
            all_splits(data, |chunks| {
                let got = stream(10, Framing::Detect, chunks);
                let want = [
                    line(b"hello"),
                    Out::Rejected(Reject::BadFrame, excerpt.to_vec()),
                    line(b"next"),
                ];
                assert_eq!(got, want, "{chunks:?}");
            });
        }
    }

    #[test]
    fn a_bad_first_octet_prefix_means_newline_framing_without_reject() {
        let cases: [(&[u8], &[&[u8]]); 5] = [
            (
                b"2015-07-29 17:41:44,747 - INFO\r\nnext\n",
                &[b"2015-07-29 17:41:44,747 - INFO", b"next"],
            ),
            (
                b"17/06/09 20:10:40 INFO x\n5 hello",
                &[b"17/06/09 20:10:40 INFO x", b"5 hello"],
            ),
            (b"1234567890 x\n", &[b"1234567890 x"]),
            (b"12\n34\n", &[b"12", b"34"]),
            (b"42", &[b"42"]),
        ];
        for (data, lines) in cases {
            let want: Vec<Out> = lines.iter().map(|l| line(l)).collect();
            all_splits(data, |chunks| {
                assert_eq!(stream(64, Framing::Detect, chunks), want, "{chunks:?}");
            });
        }
        let got = stream(8, Framing::Detect, &[b"123456789", b"0123\nok\n"]);
        assert!(
            matches!(&got[0], Out::Rejected(Reject::TooLong, first) if first.starts_with(b"123456789"))
        );
        assert_eq!(got[1..], [line(b"ok")]);
    }

    #[test]
    fn truncated_octet_frame_at_finish_is_bad_frame() {
        assert_eq!(
            stream(64, Framing::Detect, &[b"10 abc"]),
            vec![Out::Rejected(Reject::BadFrame, b"abc".to_vec())]
        );
        assert_eq!(
            stream(64, Framing::Detect, &[b"5 abcde12"]),
            vec![
                line(b"abcde"),
                Out::Rejected(Reject::BadFrame, b"12".to_vec())
            ]
        );
    }

    #[test]
    fn datagram_holds_one_or_more_lines() {
        assert_eq!(datagram(64, b"a:1|c"), vec![line(b"a:1|c")]);
        assert_eq!(
            datagram(64, b"a:1|c\nb:2|c\n"),
            vec![line(b"a:1|c"), line(b"b:2|c")]
        );
        assert_eq!(datagram(64, b"<156>msg\0"), vec![line(b"<156>msg")]);
        assert_eq!(
            datagram(64, b""),
            vec![Out::Rejected(Reject::BadFrame, vec![])]
        );
        assert_eq!(datagram(64, b"\n\r\n\0"), vec![]);
        assert_eq!(
            datagram(3, b"abcd\nabc\r\n"),
            vec![
                Out::Rejected(Reject::TooLong, b"abcd".to_vec()),
                line(b"abc")
            ]
        );
    }

    #[test]
    fn captured_tcp_octet_counting_from_logger() {
        let Some(raw) = corpus("captures/syslog-logger-python.tcp.raw") else {
            return;
        };
        let find = |needle: &[u8]| raw.windows(needle.len()).position(|w| w == needle).unwrap();
        let octet = &raw[find(b"71 <13>")..find(b"<13>Nov 28")];
        let got = stream(1024, Framing::Detect, &[octet]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(&got[0], Out::Line(l) if l.ends_with(b"tcp octet counted 1")));
        assert!(matches!(&got[1], Out::Line(l) if l.ends_with(b"with\nembedded newline")));
        let python = &raw[find(b"<11>python")..];
        assert_eq!(
            stream(1024, Framing::Detect, &[python]),
            vec![line(b"<11>python stdlib SysLogHandler over TCP")]
        );
        let newline = &raw[..find(b"71 <13>")];
        let got = stream(1024, Framing::Detect, &[newline]);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn captured_udp_datagrams_split_into_lines() {
        for name in [
            "syslog-logger-python.udp.jsonl",
            "statsd-graphite.udp.jsonl",
        ] {
            let Some(raw) = corpus(&format!("captures/{name}")) else {
                return;
            };
            let mut lines = 0;
            for record in raw.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(record).unwrap();
                let d = v["datagram"].as_str().unwrap().as_bytes();
                for out in datagram(2048, d) {
                    let Out::Line(l) = out else { panic!("{out:?}") };
                    assert!(!l.contains(&b'\n') && !l.ends_with(b"\0"));
                    lines += 1;
                }
            }
            assert!(lines >= 9, "{name}: {lines}");
        }
    }

    #[test]
    fn loghub_files_frame_into_2000_lines() {
        for name in LOGHUB {
            let Some(raw) = corpus(&format!("loghub/{name}_2k.log")) else {
                return;
            };
            let mut framer = StreamFramer::new(crate::limits::LINE_BYTES_DEFAULT, Framing::Newline);
            let mut n = 0;
            let mut on_line = |l: &[u8]| {
                assert!(!l.ends_with(b"\r") && !l.is_empty());
                n += 1;
            };
            let mut on_reject = |r: Reject, _: &[u8]| panic!("{name}: {r:?}");
            for chunk in raw.chunks(4096) {
                framer.feed(chunk, &mut on_line, &mut on_reject);
            }
            framer.finish(&mut on_line, &mut on_reject);
            assert_eq!(n, 2000, "{name}");
        }
    }

    fn cut<'a>(data: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for p in points {
            chunks.push(&data[start..p]);
            start = p;
        }
        chunks.push(&data[start..]);
        chunks
    }

    const PROP_MAX: u32 = 24;

    proptest! {
        #[test]
        fn newline_lines_survive_any_chunking(
            lines in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![Just(b'\r'), Just(0u8), Just(b'a'), any::<u8>()]
                        .prop_filter("no LF", |b| *b != b'\n'),
                    0..34,
                ),
                0..12,
            ),
            final_newline in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut data = lines.join(&b'\n');
            if final_newline {
                data.push(b'\n');
            }
            let mut want = Vec::new();
            for l in &lines {
                let stripped = strip_line(l);
                let max = PROP_MAX as usize;
                if l.len() > max + TRAILER_SLACK_BYTES || stripped.len() > max {
                    want.push(Out::Rejected(Reject::TooLong, l.to_vec()));
                } else if !stripped.is_empty() {
                    want.push(line(stripped));
                }
            }
            let got = stream(PROP_MAX, Framing::Newline, &cut(&data, &cuts));
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                match (g, w) {
                    (Out::Rejected(r, first), Out::Rejected(_, whole)) => {
                        prop_assert_eq!(*r, Reject::TooLong);
                        prop_assert!(!first.is_empty() && whole.starts_with(first));
                    }
                    _ => prop_assert_eq!(g, w),
                }
            }
        }

        #[test]
        fn octet_counted_messages_survive_any_chunking(
            messages in prop::collection::vec(
                prop::collection::vec(any::<u8>(), 1..=PROP_MAX as usize),
                0..10,
            ),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut data = Vec::new();
            for m in &messages {
                data.extend_from_slice(format!("{} ", m.len()).as_bytes());
                data.extend_from_slice(m);
            }
            let want: Vec<Out> = messages
                .iter()
                .map(|m| strip_octet_message(m))
                .filter(|m| !m.is_empty())
                .map(line)
                .collect();
            prop_assert_eq!(stream(PROP_MAX, Framing::Detect, &cut(&data, &cuts)), want);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_lines_fit(
            data in prop::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'1'), Just(b' '), any::<u8>()],
                0..300,
            ),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            detect in any::<bool>(),
        ) {
            let framing = if detect { Framing::Detect } else { Framing::Newline };
            let mut framer = StreamFramer::new(PROP_MAX, framing);
            let mut ok = true;
            let mut on_line = |l: &[u8]| ok &= !l.is_empty() && l.len() <= PROP_MAX as usize;
            let mut on_reject = |_: Reject, b: &[u8]| {
                assert!(b.len() <= DEADLETTER_LINE_BYTES_MAX)
            };
            for chunk in cut(&data, &cuts) {
                framer.feed(chunk, &mut on_line, &mut on_reject);
                assert!(framer.carry.len() <= PROP_MAX as usize + TRAILER_SLACK_BYTES + 1);
            }
            framer.finish(&mut on_line, &mut on_reject);
            prop_assert!(ok);
            let mut ok = true;
            split_datagram(
                &data,
                PROP_MAX,
                &mut |l| ok &= !l.is_empty() && l.len() <= PROP_MAX as usize,
                &mut |_, _| {},
            );
            prop_assert!(ok);
        }
    }

    /// The reasons `outs` rejected with, in index order, each once.
    fn reasons(outs: &[Out]) -> Vec<Reject> {
        let mut r: Vec<Reject> = outs
            .iter()
            .filter_map(|o| match o {
                Out::Rejected(r, _) => Some(*r),
                Out::Line(_) => None,
            })
            .collect();
        r.sort_by_key(|r| r.index());
        r.dedup();
        r
    }

    #[test]
    fn every_listed_framing_reason_is_one_framing_returns() {
        let long = [b'x'; 20];
        let newline = stream(8, Framing::Newline, &[&long, b"\n", b"12 abc\n"]);
        assert_eq!(reasons(&newline), Framing::Newline.rejects());
        // A good frame, then a bad length; then a frame cut short by the end of the stream.
        let octet = stream(8, Framing::Detect, &[b"3 abc", b"x1 y\n", b"5 ab"]);
        let too_long = stream(8, Framing::Detect, &[&long, b"\n"]);
        let mut detect = octet.clone();
        detect.extend(too_long);
        assert_eq!(reasons(&detect), Framing::Detect.rejects());
        let mut datagrams = datagram(8, b"");
        datagrams.extend(datagram(8, &long));
        assert_eq!(reasons(&datagrams), DATAGRAM_REJECTS);
        assert_eq!(Framing::of_stream(Format::Syslog), Framing::Detect);
        assert_eq!(Framing::of_stream(Format::Statsd), Framing::Newline);
    }

    proptest! {
        #[test]
        fn framing_rejects_only_with_listed_reasons(
            chunks in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![
                        Just(b'\n'), Just(b'\r'), Just(0u8), Just(b' '), Just(b'1'),
                        Just(b'9'), Just(b'0'), any::<u8>()
                    ],
                    0..40,
                ),
                0..5,
            ),
        ) {
            let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            for framing in [Framing::Newline, Framing::Detect] {
                for r in reasons(&stream(16, framing, &chunks)) {
                    prop_assert!(framing.rejects().contains(&r), "{:?}: {:?}", framing, r);
                }
            }
            for d in &chunks {
                for r in reasons(&datagram(16, d)) {
                    prop_assert!(DATAGRAM_REJECTS.contains(&r), "datagram: {:?}", r);
                }
            }
        }
    }
}
