//! Fuzz target: stream framing (syslog detection: newline or octet counting) over any bytes
//! cut into any chunks never panics, and every line it delivers fits `max_line_bytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::framing::{Framing, StreamFramer};

const MAX_LINE_BYTES: u32 = 64;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so lines and frames straddle chunks.
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let framing = if cut & 0x80 == 0 { Framing::Detect } else { Framing::Newline };
    let chunk = usize::from(cut & 0x7f) + 1;
    let mut framer = StreamFramer::new(MAX_LINE_BYTES, framing);
    let mut on_line = |line: &[u8]| assert!(line.len() <= MAX_LINE_BYTES as usize);
    let mut on_reject = |_, excerpt: &[u8]| {
        assert!(excerpt.len() <= sluice::limits::DEADLETTER_LINE_BYTES_MAX)
    };
    for piece in data.chunks(chunk) {
        framer.feed(piece, &mut on_line, &mut on_reject);
    }
    framer.finish(&mut on_line, &mut on_reject);
});
