//! Fuzz target: splitting a datagram into lines never panics, and every line fits
//! `max_line_bytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::framing::split_datagram;

const MAX_LINE_BYTES: u32 = 64;

fuzz_target!(|datagram: &[u8]| {
    split_datagram(
        datagram,
        MAX_LINE_BYTES,
        &mut |line| assert!(line.len() <= MAX_LINE_BYTES as usize),
        &mut |_, excerpt| assert!(excerpt.len() <= sluice::limits::DEADLETTER_LINE_BYTES_MAX),
    );
});
