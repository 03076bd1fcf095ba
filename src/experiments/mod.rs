//! Experiments: A/B stream branching. An `[[experiment]]` splits one listener's events by
//! their unit into arms; each arm is a key tag (`KEY;arm=NAME`), routed to the owner of
//! `KEY`, whose engine compares the arms at each window close.
//!
//! Owns:
//! - [`config`]: the `[[experiment]]` tables and their checks.
//! - [`split`]: the ingest side, which tags each event with its arm and hashes its unit.
//! - [`engine`]: the owner side, a close hook writing comparisons to `experiments/`.
//! - [`assign`]: which arm a unit belongs to, bit-exact with the named SDK's bucketing
//!   (GrowthBook hash v2, or Optimizely's MurmurHash3 bucketing), so the arm sluice assigns
//!   is the arm the application showed.
//! - [`stats`]: each arm against the control (Welch's t-test: difference, relative
//!   difference, 95% confidence interval, p-value) and the sample-ratio-mismatch check of the
//!   unit counts against the weights.
//!
//! Invariants:
//! - The arm is a pure function of (hash kind, seed, unit, arms and weights): no clock, no
//!   randomness, no state, the same on every core, node and restart.
//! - Nothing panics on input: invalid arms are an [`Error`], any unit string gets an
//!   answer, and a statistic that cannot be computed (too few samples, no variance, a
//!   control mean of 0) is `None`, so no NaN or infinity reaches a JSON row.

#![forbid(unsafe_code)]

pub mod assign;
pub mod board;
pub mod config;
pub mod engine;
pub mod split;
pub mod stats;

pub use assign::{
    ARMS_MAX, Arms, Error, HashKind, OPTIMIZELY_BUCKETS, choose_variation,
    growthbook_bucket_ranges, growthbook_hash, murmur3_x86_32, optimizely_bucket,
};
pub use stats::{
    Comparison, SAMPLE_RATIO_P_VALUE_MAX, SAMPLE_RATIO_UNITS_MIN, SampleRatio, Summary,
    sample_ratio, welch,
};
