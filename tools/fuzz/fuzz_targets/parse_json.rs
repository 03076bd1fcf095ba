//! Fuzz target: the `json` parser never panics and keeps the parser contract.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::config::Format;
use sluice::parse::{Parser, parse_checked, test_options};

fuzz_target!(|line: &[u8]| {
    let mut parser = Parser::new(Format::Json, &test_options(Format::Json), "fuzz");
    let _ = parse_checked(&mut parser, line, 1_764_360_000_000);
});
