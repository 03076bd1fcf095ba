//! `loadgen`: load generator for sluice. (Being written.)
fn main() {}
