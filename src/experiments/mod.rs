//! Experiments: A/B stream branching's pure building blocks, the arm assignment and the
//! comparison statistics. Nothing here holds state or touches the pipeline; the shard that
//! owns an experiment's keys calls these.
//!
//! Owns:
//! - [`assign`]: which arm a unit belongs to, bit-exact with the named SDK's bucketing
//!   (GrowthBook hash v2, or Optimizely's MurmurHash3 bucketing), so the arm sluice assigns
//!   is the arm the application showed.
//!
//! Invariants:
//! - The arm is a pure function of (hash kind, seed, unit, arms and weights): no clock, no
//!   randomness, no state, the same on every core, node and restart.
//! - Nothing panics on input: invalid arms are an [`Error`], and any unit string gets an
//!   answer.

#![forbid(unsafe_code)]

mod assign;
pub mod config;
pub mod engine;
pub mod split;

pub use assign::{
    ARMS_MAX, Arms, Error, HashKind, OPTIMIZELY_BUCKETS, choose_variation,
    growthbook_bucket_ranges, growthbook_hash, murmur3_x86_32, optimizely_bucket,
};
