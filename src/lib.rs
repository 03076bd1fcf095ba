//! sluice: a single-binary log and metrics ingestion appliance.
//!
//! The modules mirror the data path drawn in `DESIGN.md`:
//!
//! ```text
//!  net (sockets) → framing → log (append) → parse → route → window → aggregates
//!                                                     └→ checkpoint (aligned barriers)
//! ```
//!
//! `worker` is the per-core loop that drives one core through every stage; `main.rs`
//! parses the command line, loads the configuration, recovers state and spawns the workers.

pub mod admin;
pub mod alerts;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod experiments;
pub mod fault;
pub mod framing;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod parse;
pub mod query;
pub mod results;
pub mod route;
pub mod serve;
pub mod units;
pub mod window;
pub mod worker;
