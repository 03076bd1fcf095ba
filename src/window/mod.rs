//! Windows: each core's shard of the key space, folded into tumbling event-time windows.
//!
//! Owns, per shard: the live keys, their open windows (one [`Agg`] per key, window size and
//! window start), the calendar of window ends, the per-source watermarks, the closed frontier
//! and the aggregates output file `aggregates/s{NNN}.jsonl`.
//!
//! Invariants:
//! - A window is `[start, start + size)` with `start = floor(t / size) * size` (floored
//!   division, so negative times work); `start < end` always.
//! - `closed_through_ms` (the frontier) only rises. Every window with `end <= frontier` has been
//!   written to the output exactly once and is gone from the state; an event for such a window
//!   is late: counted, dead-lettered, never folded.
//! - The frontier is the minimum of the watermarks of the active sources, so a window closes
//!   only when every active input has moved past it. A source that never sent a watermark does
//!   not hold it back, nor does an idle one (no events for a while, as Flink's idleness): when
//!   every source is idle the frontier follows the most advanced one, whose watermark keeps
//!   rising with wall-clock time, so the last windows of a stream still close.
//! - Memory is bounded: at most `max_keys_per_shard` keys plus the overflow key.

#![forbid(unsafe_code)]

mod output;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use output::{AggregatesWriter, now_ms, rfc3339};

use crate::limits::OVERFLOW_KEY;
use crate::parse::Kind;

/// The mergeable aggregate of one (key, window).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    /// Events folded.
    pub count: u64,
    /// Sum of values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Value of the event with the latest event time (the later arrival on ties).
    pub last: f64,
    /// Event time of `last`.
    pub last_time_ms: i64,
}

impl Agg {
    /// The aggregate of one event.
    pub fn one(value: f64, time_ms: i64) -> Agg {
        Agg {
            count: 1,
            sum: value,
            min: value,
            max: value,
            last: value,
            last_time_ms: time_ms,
        }
    }

    /// Folds one event in.
    #[inline]
    pub fn add(&mut self, value: f64, time_ms: i64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if time_ms >= self.last_time_ms {
            self.last = value;
            self.last_time_ms = time_ms;
        }
    }

    /// Merges another aggregate of the same (key, window) into this one.
    pub fn merge(&mut self, other: &Agg) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.last_time_ms >= self.last_time_ms {
            self.last = other.last;
            self.last_time_ms = other.last_time_ms;
        }
    }

    /// Mean value.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

/// Start of the window of size `size_ms` holding `time_ms`.
#[inline]
pub fn window_start(time_ms: i64, size_ms: i64) -> i64 {
    debug_assert!(size_ms > 0);
    time_ms.div_euclid(size_ms) * size_ms
}

/// One open window, as stored in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// The key.
    pub key: String,
    /// Window size in ms.
    pub size_ms: i64,
    /// Window start in ms since the epoch.
    pub start_ms: i64,
    /// The aggregate so far.
    pub agg: Agg,
}

#[derive(Debug)]
struct OpenWindow {
    size_idx: u8,
    start_ms: i64,
    agg: Agg,
}

#[derive(Debug, Default)]
struct Slot {
    key: Box<str>,
    windows: Vec<OpenWindow>,
}

/// What folding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Folded {
    /// Window sizes for which the event was late.
    pub late: u32,
    /// True when the event went to the overflow key.
    pub overflow: bool,
}

/// One core's shard of windows.
#[derive(Debug)]
pub struct Shard {
    sizes_ms: Vec<i64>,
    max_keys: usize,
    index: HashMap<Box<[u8]>, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Window end → the (slot, size index) of windows ending then.
    calendar: BTreeMap<i64, Vec<(u32, u8)>>,
    open_windows: usize,
    source_watermarks: Vec<Option<(i64, bool)>>,
    closed_through_ms: i64,
    output: AggregatesWriter,
}

impl Shard {
    /// A shard with the given window sizes, key bound and output, fed by `sources` cores,
    /// whose windows up to `closed_through_ms` are already closed.
    pub fn new(
        sizes_ms: Vec<i64>,
        max_keys: usize,
        sources: usize,
        closed_through_ms: i64,
        output: AggregatesWriter,
    ) -> Shard {
        assert!(!sizes_ms.is_empty() && sizes_ms.len() <= u8::MAX as usize);
        assert!(sizes_ms.iter().all(|s| *s > 0));
        Shard {
            sizes_ms,
            max_keys,
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            calendar: BTreeMap::new(),
            open_windows: 0,
            source_watermarks: vec![None; sources],
            closed_through_ms,
            output,
        }
    }

    /// Restores an open window from a checkpoint. A window the frontier has already passed
    /// (possible when the number of cores changed and keys moved between shards) was never
    /// written by its old shard, so it is written now.
    pub fn restore(&mut self, record: &WindowRecord) -> io::Result<()> {
        let Some(size_idx) = self.sizes_ms.iter().position(|s| *s == record.size_ms) else {
            tracing::warn!(key = %record.key, size_ms = record.size_ms, "checkpointed window of a size no longer configured is dropped");
            return Ok(());
        };
        if record.start_ms + record.size_ms <= self.closed_through_ms {
            return self.output.write_window(
                &record.key,
                record.size_ms,
                record.start_ms,
                &record.agg,
            );
        }
        let slot = self.slot_for(record.key.as_bytes(), true).0;
        let windows = &mut self.slots[slot as usize].windows;
        match windows
            .iter_mut()
            .find(|w| w.size_idx == size_idx as u8 && w.start_ms == record.start_ms)
        {
            Some(w) => w.agg.merge(&record.agg),
            None => *self.open(slot, size_idx as u8, record.start_ms) = record.agg,
        }
        Ok(())
    }

    /// Folds one event into every window size.
    #[inline]
    pub fn fold(&mut self, key: &[u8], value: f64, time_ms: i64, _kind: Kind) -> Folded {
        let (slot, overflow) = self.slot_for(key, false);
        let mut folded = Folded { late: 0, overflow };
        for size_idx in 0..self.sizes_ms.len() {
            let size = self.sizes_ms[size_idx];
            let start = window_start(time_ms, size);
            if start.saturating_add(size) <= self.closed_through_ms {
                folded.late += 1;
                continue;
            }
            let windows = &mut self.slots[slot as usize].windows;
            match windows
                .iter_mut()
                .find(|w| w.size_idx == size_idx as u8 && w.start_ms == start)
            {
                Some(w) => w.agg.add(value, time_ms),
                None => *self.open(slot, size_idx as u8, start) = Agg::one(value, time_ms),
            }
        }
        if folded.late == self.sizes_ms.len() as u32 {
            self.release_if_empty(slot);
        }
        folded
    }

    /// Records source `source`'s watermark (and whether it is idle) and closes every window the
    /// combined watermark has passed. Returns the windows closed.
    pub fn advance(&mut self, source: usize, watermark_ms: i64, idle: bool) -> io::Result<usize> {
        let w = &mut self.source_watermarks[source];
        let ms = w.map_or(watermark_ms, |(old, _)| old.max(watermark_ms));
        *w = Some((ms, idle));
        let known = self.source_watermarks.iter().flatten();
        let active = known
            .clone()
            .filter(|(_, idle)| !idle)
            .map(|(ms, _)| *ms)
            .min();
        let combined = active.or_else(|| known.map(|(ms, _)| *ms).max());
        match combined {
            Some(combined) if combined > self.closed_through_ms => self.close_through(combined),
            _ => Ok(0),
        }
    }

    /// Closes every window with `end <= through_ms`, in end order, writing each to the output.
    fn close_through(&mut self, through_ms: i64) -> io::Result<usize> {
        assert!(
            through_ms > self.closed_through_ms,
            "the frontier only rises"
        );
        let mut closed = 0;
        while let Some(entry) = self.calendar.first_entry() {
            if *entry.key() > through_ms {
                break;
            }
            let end = *entry.key();
            for (slot, size_idx) in entry.remove() {
                let size = self.sizes_ms[size_idx as usize];
                let s = &mut self.slots[slot as usize];
                let pos = s
                    .windows
                    .iter()
                    .position(|w| w.size_idx == size_idx && w.start_ms + size == end)
                    .expect("every calendar entry has its open window");
                let w = s.windows.swap_remove(pos);
                self.output.write_window(&s.key, size, w.start_ms, &w.agg)?;
                self.open_windows -= 1;
                closed += 1;
                self.release_if_empty(slot);
            }
        }
        self.closed_through_ms = through_ms;
        Ok(closed)
    }

    fn open(&mut self, slot: u32, size_idx: u8, start_ms: i64) -> &mut Agg {
        let end = start_ms + self.sizes_ms[size_idx as usize];
        debug_assert!(start_ms < end);
        self.calendar.entry(end).or_default().push((slot, size_idx));
        self.open_windows += 1;
        let windows = &mut self.slots[slot as usize].windows;
        windows.push(OpenWindow {
            size_idx,
            start_ms,
            agg: Agg {
                count: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                last: 0.0,
                last_time_ms: i64::MIN,
            },
        });
        &mut windows.last_mut().expect("just pushed").agg
    }

    /// The slot of `key`, creating it (or taking the overflow key when full).
    fn slot_for(&mut self, key: &[u8], unbounded: bool) -> (u32, bool) {
        if let Some(&slot) = self.index.get(key) {
            return (slot, false);
        }
        if !unbounded && self.index.len() >= self.max_keys {
            return (self.slot_for(OVERFLOW_KEY.as_bytes(), true).0, true);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        // Keys were checked as UTF-8 by the parsers; a lossy conversion keeps this total.
        self.slots[slot as usize].key = String::from_utf8_lossy(key).into();
        self.index.insert(key.into(), slot);
        (slot, false)
    }

    fn release_if_empty(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.windows.is_empty() {
            let key = std::mem::take(&mut s.key);
            self.index.remove(key.as_bytes());
            self.free.push(slot);
        }
    }

    /// Every open window, for a checkpoint (sorted, so equal states encode equally).
    pub fn snapshot(&self) -> Vec<WindowRecord> {
        let mut out = Vec::with_capacity(self.open_windows);
        for &slot in self.index.values() {
            let s = &self.slots[slot as usize];
            for w in &s.windows {
                out.push(WindowRecord {
                    key: s.key.to_string(),
                    size_ms: self.sizes_ms[w.size_idx as usize],
                    start_ms: w.start_ms,
                    agg: w.agg,
                });
            }
        }
        out.sort_by(|a, b| (&a.key, a.size_ms, a.start_ms).cmp(&(&b.key, b.size_ms, b.start_ms)));
        out
    }

    /// The frontier: every window ending at or before it is closed.
    pub fn closed_through_ms(&self) -> i64 {
        self.closed_through_ms
    }

    /// Open windows now.
    pub fn open_windows(&self) -> usize {
        self.open_windows
    }

    /// Live keys now.
    pub fn keys(&self) -> usize {
        self.index.len()
    }

    /// The output, to flush it or read its length.
    pub fn output(&mut self) -> &mut AggregatesWriter {
        &mut self.output
    }
}

/// Path of shard `shard`'s aggregates file.
pub fn aggregates_path(data_dir: &Path, shard: u16) -> std::path::PathBuf {
    data_dir
        .join("aggregates")
        .join(format!("s{shard:03}.jsonl"))
}

#[cfg(test)]
mod tests;
