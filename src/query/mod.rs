//! The read side of the results: what the query API (`/api/v1/windows`, `/api/v1/top`)
//! answers from.
//!
//! Owns: the closed-row [`Index`] (fed by one thread, [`spawn_feeder`], that follows every
//! shard's aggregates record) and the parameters queries share ([`Filter`], [`By`]). It reads
//! the results record as any reader does (by position, from its own thread) and never
//! touches what the cores own; open windows are asked of their owner shards (see
//! `worker`), never read here.
//!
//! ```text
//!  aggregates/sNNN ──RecordReader──▶ feeder thread ──batches──▶ Index (mutex)
//!                                                                 │ history: the newest rows,
//!                                                                 │   QUERY_HISTORY_BYTES of them
//!                                                                 │ latest: per window size, every
//!                                                                 ▼   key's row of the newest window
//!                                                  /api/v1/windows, /api/v1/top
//! ```

#![forbid(unsafe_code)]

mod index;
mod open;
mod stream;

pub use index::{Index, IndexStats, Ranked, TopAnswer, WindowsAnswer, spawn_feeder};
pub use open::{
    OpenError, OpenQueries, OpenReply, OpenRequest, OpenRow, OpenScan, Replies, Want, measure, rank,
};
pub use stream::{
    Event, Selection, Sent, Timing, event_id, follow, follow_records, parse_event_id,
};

/// Which keys a query is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Exactly this key.
    Key(String),
    /// Every key starting with this (the empty prefix: every key).
    Prefix(String),
}

impl Filter {
    /// True when `key` is one this filter selects.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Filter::Key(k) => k == key,
            Filter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// What `/api/v1/top` ranks keys by (DESIGN's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// Events.
    Count,
    /// Sum of values.
    Sum,
    /// Mean value.
    Mean,
    /// Largest value.
    Max,
    /// 99th percentile (when `[window] quantiles` has 0.99).
    P99,
    /// Distinct set members.
    Distinct,
}

/// Number of [`By`] measures kept per row.
pub const MEASURES: usize = 6;

impl By {
    /// Every measure, in [`By::slot`] order.
    pub const ALL: [By; MEASURES] = [By::Count, By::Sum, By::Mean, By::Max, By::P99, By::Distinct];

    /// The measure named `name` as a row names it.
    pub fn parse(name: &str) -> Option<By> {
        By::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The row field it is read from.
    pub fn name(self) -> &'static str {
        match self {
            By::Count => "count",
            By::Sum => "sum",
            By::Mean => "mean",
            By::Max => "max",
            By::P99 => "p99",
            By::Distinct => "distinct",
        }
    }

    /// Its place in a row's measures.
    pub fn slot(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests;
