//! Windows: each core's shard of the key space, folded into tumbling event-time windows.
//!
//! Owns, per shard: the live keys, their open windows (one [`Agg`] per key, window spec and
//! window start), the calendar of window ends, the per-source watermarks, the closed frontier
//! and the aggregates output file `aggregates/s{NNN}.jsonl`.
//!
//! Windows are tumbling (`hop == size`) or hopping (`hop` divides `size`: an event belongs to
//! `size / hop` overlapping windows).
//!
//! Composed windows: when a configured tumbling window divides a larger window's size and
//! hop (10s under 1m, the defaults), events are folded into the smaller one only, and each
//! of its windows is merged into the larger windows holding it when it closes (panes, as in
//! "No pane, no gain", Li et al. 2005). Per event that is one aggregate update and one
//! sketch insertion instead of one per window size. The output is what folding each event
//! into every window gives: the same count, min, max, last and sketch bins (DDSketch bin
//! counts add; only a sketch that reaches its bin limit collapses its lowest bins at other
//! moments), and the same sum up to floating-point rounding (the additions happen in
//! another order). An event whose small window has already closed while the larger one is
//! still open is folded into the larger one directly, as before; the small window counts it
//! late. Checkpoints before this (body version 1) held larger windows folded directly;
//! `serve` replays the log instead of restoring them.
//!
//! Quantiles come from a DDSketch (`sketches-ddsketch`): mergeable, bounded, with a relative
//! error guarantee on the value (1% here: the reported p99 is within 1% of a value whose rank
//! is the 99th percentile). Chosen over t-digest and HDR histograms by measurement
//! (`cargo bench --bench sketch`, 100,000 log-normal latencies, μ=3, σ=1):
//!
//! ```text
//!  sketch              p50 err  p90 err  p99 err  p99.9 err  encoded bytes  ns/add
//!  DDSketch α=1%        0.80%    0.65%    0.57%    0.83%       785 (335 at 100 samples)  25
//!  DDSketch α=2%        1.77%    1.69%    0.47%    0.21%       449 (207 at 100 samples)  24
//!  t-digest c=100       0.22%    0.37%    0.16%    5.29%      1600                        46
//!  t-digest c=200       0.57%    0.24%    0.15%    1.29%      3200                        98
//! ```
//!
//! In memory a DDSketch holds its bins in chunks of 128 `u64` (1 KiB for a typical window,
//! at most 2048 bins = 16 KiB per sign, which bounds it whatever the input), behind a buffer
//! of [`SKETCH_PENDING`] values that go into the bins together ([`Sketch`]): with many keys
//! a bin increment is a cache miss, and the buffer takes those misses in bursts.
//!
//! DDSketch keeps its error bound whatever the distribution and merges exactly (bin counts
//! add), which the cross-node merge tier needs; t-digest's error depends on the data and its
//! merge is approximate; HDR histograms take integers only and tens of KiB each. A sketch
//! exists only in windows that received a sample, timer or gauge (counters and sets do not
//! need quantiles), and only when `window.quantiles` is not empty.
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
mod sketch;
mod snapshot;

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use output::{AggregatesWriter, Columns, OutputSync, now_ms, open_row, rfc3339};
pub use sketch::{PENDING as SKETCH_PENDING, Sketch};
use snapshot::Snapshotting;
pub use snapshot::{SNAPSHOT_CHUNK_BYTES, Snapshot};

use crate::limits::{KEYS_PREALLOCATED_MAX, OVERFLOW_KEY};
use crate::parse::Kind;

/// Relative accuracy of the quantile sketches.
pub const SKETCH_ALPHA: f64 = 0.01;
/// Most bins per sketch store; bounds a sketch's memory (16 KiB per sign).
pub const SKETCH_BINS_MAX: u32 = 2048;

/// The mergeable aggregate of one (key, window).
#[derive(Clone, Serialize, Deserialize)]
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
    /// Quantile sketch of the values, when quantiles are configured and the values are
    /// samples, timers or gauges. Encoded in DDSketch's sparse standard binary format.
    #[serde(default, with = "sketch_bytes")]
    pub sketch: Option<Box<Sketch>>,
    /// The one value so far (`min`) is a sketched value not yet in a sketch.
    #[serde(default)]
    pub single_pending: bool,
    /// Of `count`, the StatsD set members: they feed `distinct`, not the sum, min, max or
    /// last, which hold the other events' values.
    pub members: u64,
    /// Distinct set members (exact up to 128, then HyperLogLog++ with 1.6% error).
    pub distinct: Distinct,
    /// The first value: the values' deviations are summed from it (see [`Agg::stddev`]).
    pub shift: f64,
    /// Sum of `value - shift` over the values.
    pub dev_sum: f64,
    /// Sum of `(value - shift)²` over the values.
    pub dev_sq: f64,
}

/// A distinct counter of StatsD set members, fed with their hashes.
pub type Distinct = cardinality_estimator::CardinalityEstimator<[u8]>;

impl std::fmt::Debug for Agg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agg")
            .field("count", &self.count)
            .field("sum", &self.sum)
            .field("min", &self.min)
            .field("max", &self.max)
            .field("last", &self.last)
            .field("members", &self.members)
            .field("distinct", &self.distinct.estimate())
            .field("sketch_bins", &self.sketch.as_ref().map(|s| s.length()))
            .finish()
    }
}

impl PartialEq for Agg {
    fn eq(&self, other: &Agg) -> bool {
        let sketch_bytes = |a: &Agg| {
            a.sketch
                .as_ref()
                .map(|s| postcard::to_stdvec(&*s.settled()).unwrap_or_default())
        };
        (
            self.count,
            self.sum,
            self.min,
            self.max,
            self.last,
            self.last_time_ms,
        ) == (
            other.count,
            other.sum,
            other.min,
            other.max,
            other.last,
            other.last_time_ms,
        ) && self.single_pending == other.single_pending
            && self.members == other.members
            && self.distinct == other.distinct
            && (self.shift, self.dev_sum, self.dev_sq) == (other.shift, other.dev_sum, other.dev_sq)
            && sketch_bytes(self) == sketch_bytes(other)
    }
}

impl Agg {
    /// An aggregate of nothing yet.
    pub fn empty() -> Agg {
        Agg {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: 0.0,
            last_time_ms: i64::MIN,
            sketch: None,
            single_pending: false,
            members: 0,
            distinct: Distinct::new(),
            shift: 0.0,
            dev_sum: 0.0,
            dev_sq: 0.0,
        }
    }

    /// Folds one StatsD set member in, by its hash ([`crate::parse::statsd::set_member_hash`]).
    #[inline]
    pub fn add_member(&mut self, hash: f64) {
        self.count += 1;
        self.members += 1;
        // The parser's 53 bits, spread over 64 again: the counter takes its register index
        // from the low bits and the rank from the high ones.
        self.distinct
            .insert_hash((hash as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }

    /// Events that were not set members: the ones `sum`, `min`, `max` and `last` are of.
    pub fn values(&self) -> u64 {
        self.count - self.members
    }

    /// The aggregate of one event.
    pub fn one(value: f64, time_ms: i64) -> Agg {
        let mut agg = Agg::empty();
        agg.add(value, time_ms, false);
        agg
    }

    /// Folds one event in; `sketch` says whether its value feeds the quantile sketch.
    ///
    /// The sketch is created at the second sketched value: a window holding one value (common
    /// with many keys) needs no sketch, since every quantile of it is that value.
    #[inline]
    pub fn add(&mut self, value: f64, time_ms: i64, sketch: bool) {
        if sketch {
            let first = self.values() == 0;
            match &mut self.sketch {
                Some(s) => s.add(value),
                None if first => self.single_pending = true,
                None => {
                    let mut s = Sketch::new();
                    if std::mem::take(&mut self.single_pending) {
                        s.add(self.min);
                    }
                    s.add(value);
                    self.sketch = Some(s);
                }
            }
        } else if self.sketch.is_none() && std::mem::take(&mut self.single_pending) {
            self.sketch = Some(Sketch::new());
            self.sketch.as_mut().expect("just set").add(self.min);
        }
        self.tally(value, time_ms);
    }

    /// Folds one event into everything but the sketch.
    #[inline]
    fn tally(&mut self, value: f64, time_ms: i64) {
        if self.values() == 0 {
            self.shift = value;
        }
        let d = finite(value - self.shift);
        self.dev_sum = saturating_sum(self.dev_sum, d);
        self.dev_sq = saturating_sum(self.dev_sq, finite(d * d));
        self.count += 1;
        self.sum = saturating_sum(self.sum, value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if time_ms >= self.last_time_ms {
            self.last = value;
            self.last_time_ms = time_ms;
        }
    }

    /// Merges `other` (an aggregate of a window inside this one's) into this one, taking its
    /// sketch rather than copying it.
    pub fn absorb(&mut self, mut other: Agg) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other;
            return;
        }
        self.distinct.merge(&other.distinct);
        self.members += other.members;
        if other.members == other.count {
            self.count += other.count;
            return;
        }
        let other_members = std::mem::take(&mut other.members);
        other.count -= other_members;
        self.count += other_members;
        if other.count == 1 {
            // One event: folding it is cheaper than materialising a sketch to merge. Its
            // value is `last` (`sum` would turn -0.0 into 0.0).
            let sketched = other.single_pending || other.sketch.is_some();
            self.add(other.last, other.last_time_ms, sketched);
            return;
        }
        let theirs = other.take_sketch();
        let mine = self.take_sketch();
        self.sketch = match (mine, theirs) {
            // Both sketches share one configuration, so a merge cannot fail.
            (Some(mut a), Some(mut b)) => {
                a.merge(&mut b);
                Some(a)
            }
            (a, b) => a.or(b),
        };
        if self.values() == 0 {
            (self.shift, self.dev_sum, self.dev_sq) = (other.shift, other.dev_sum, other.dev_sq);
        } else {
            // Their deviations, taken from this shift instead of theirs.
            let delta = finite(other.shift - self.shift);
            let n = other.count as f64;
            let sum = saturating_sum(other.dev_sum, finite(n * delta));
            let sq = saturating_sum(
                saturating_sum(other.dev_sq, finite(2.0 * delta * other.dev_sum)),
                finite(n * delta * delta),
            );
            self.dev_sum = saturating_sum(self.dev_sum, sum);
            self.dev_sq = saturating_sum(self.dev_sq, sq);
        }
        self.count += other.count;
        self.sum = saturating_sum(self.sum, other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.last_time_ms >= self.last_time_ms {
            self.last = other.last;
            self.last_time_ms = other.last_time_ms;
        }
    }

    /// The sketch, materialising a pending single value.
    fn take_sketch(&mut self) -> Option<Box<Sketch>> {
        if std::mem::take(&mut self.single_pending) {
            let mut s = Sketch::new();
            s.add(self.min);
            return Some(s);
        }
        self.sketch.take()
    }

    /// Population standard deviation of the values (as Prometheus' `stddev_over_time` and
    /// etsy StatsD's timer `std`), 0 with fewer than two. From the sums of the values'
    /// deviations from the window's first value, which keeps the precision that a plain sum
    /// of squares loses when the spread is small beside the mean (1e9 ± 1), and merges
    /// exactly like the sum. Always finite.
    pub fn stddev(&self) -> f64 {
        let n = self.values() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let mean_dev = self.dev_sum / n;
        let var = self.dev_sq / n - mean_dev * mean_dev;
        finite(var.max(0.0).sqrt())
    }

    /// Mean value (of the events that were not set members).
    pub fn mean(&self) -> f64 {
        match self.values() {
            0 => 0.0,
            n => self.sum / n as f64,
        }
    }

    /// The `q` quantile (0..=1) of the values, when a sketch was kept. Never outside
    /// `[min, max]`: the sketch answers with its bucket's representative value, which may lie
    /// past the extremes by up to its relative error (p50 = 21.98 of values all 22).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.single_pending {
            return Some(self.min);
        }
        let v = self.sketch.as_ref().and_then(|s| s.quantile(q))?;
        // max/min rather than clamp: no panic even for an empty aggregate (min > max).
        Some(v.max(self.min).min(self.max))
    }
}

/// `x`, with ±infinity (from an operation on values near the top of the range) saturated at
/// ±`f64::MAX`.
#[inline]
fn finite(x: f64) -> f64 {
    x.clamp(f64::MIN, f64::MAX)
}

/// `a + b` for finite values, saturated at ±`f64::MAX`: a sum of values near the top of the
/// range (three of 1.7e308) stays a finite number in the row (`"sum_saturated": true`
/// then says it is a bound, not the sum) instead of becoming infinity, which JSON cannot hold.
#[inline]
pub fn saturating_sum(a: f64, b: f64) -> f64 {
    (a + b).clamp(f64::MIN, f64::MAX)
}

/// Serde for sketches: DDSketch's standard binary encoding (sparse bins, varints), a tenth of
/// the size of its derived serde form.
mod sketch_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de};
    use sketches_ddsketch::DDSketch;

    use super::Sketch;

    pub fn serialize<S: Serializer>(v: &Option<Box<Sketch>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(sketch) => {
                s.serialize_some(serde_bytes::Bytes::new(&sketch.settled().to_java_bytes()))
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<Sketch>>, D::Error> {
        let bytes: Option<serde_bytes::ByteBuf> = Option::deserialize(d)?;
        bytes
            .map(|b| {
                DDSketch::from_java_bytes(&b)
                    .map(Sketch::from_dd)
                    .map_err(|e| de::Error::custom(format!("sketch: {e}")))
            })
            .transpose()
    }
}

/// One window configuration: its size and how far apart consecutive windows start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window length in ms.
    pub size_ms: i64,
    /// Distance between window starts in ms (`== size_ms`: tumbling). Divides `size_ms`.
    pub hop_ms: i64,
}

impl WindowSpec {
    /// A tumbling window.
    pub fn tumbling(size_ms: i64) -> WindowSpec {
        WindowSpec {
            size_ms,
            hop_ms: size_ms,
        }
    }

    /// Starts of every window holding `time_ms`, oldest first.
    #[inline]
    pub fn starts(&self, time_ms: i64) -> impl Iterator<Item = i64> + use<> {
        let last = window_start(time_ms, self.hop_ms);
        let n = self.size_ms / self.hop_ms;
        let hop = self.hop_ms;
        (0..n).rev().map(move |k| last - k * hop)
    }
}

/// What a shard aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Window configurations.
    pub windows: Vec<WindowSpec>,
    /// Quantiles to report (0..=1); empty: no sketches.
    pub quantiles: Vec<f64>,
    /// Live keys before the overflow key takes the rest.
    pub max_keys: usize,
}

/// For each window spec, the tumbling spec that feeds it (see the module doc) and, for each,
/// the specs it feeds. A spec is fed by the largest tumbling spec, itself fed by none, whose
/// size divides both its size and its hop.
fn feeders(windows: &[WindowSpec]) -> (Vec<Option<u8>>, Vec<Vec<u8>>) {
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.sort_by_key(|&i| (windows[i].size_ms, windows[i].hop_ms));
    let mut feeder: Vec<Option<u8>> = vec![None; windows.len()];
    for (n, &j) in order.iter().enumerate() {
        let w = windows[j];
        feeder[j] = order[..n]
            .iter()
            .rev()
            .copied()
            .find(|&i| {
                let f = windows[i];
                feeder[i].is_none()
                    && f.hop_ms == f.size_ms
                    && f.size_ms < w.size_ms
                    && w.size_ms % f.size_ms == 0
                    && w.hop_ms % f.size_ms == 0
            })
            .map(|i| i as u8);
    }
    let mut fed = vec![Vec::new(); windows.len()];
    for (j, f) in feeder.iter().enumerate() {
        if let Some(f) = f {
            fed[*f as usize].push(j as u8);
        }
    }
    (feeder, fed)
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
    /// Hop in ms (`== size_ms` for tumbling windows).
    pub hop_ms: i64,
    /// Window start in ms since the epoch.
    pub start_ms: i64,
    /// The aggregate so far.
    pub agg: Agg,
}

#[derive(Debug, Clone)]
struct OpenWindow {
    spec_idx: u8,
    start_ms: i64,
    agg: Agg,
}

#[derive(Debug, Default, Clone)]
struct Slot {
    key: Box<str>,
    windows: Vec<OpenWindow>,
}

/// What folding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Folded {
    /// Windows for which the event was late.
    pub late: u32,
    /// True when the event went to the overflow key.
    pub overflow: bool,
}

/// Quantile `q` as an output field name: 0.5 → `p50`, 0.999 → `p99.9`.
pub fn quantile_name(q: f64) -> String {
    let pct = format!("{:.4}", q * 100.0);
    let pct = pct.trim_end_matches('0').trim_end_matches('.');
    format!("p{pct}")
}

/// Told of each window a shard closes and of each step of its frontier: how alert rules
/// (`alerts::Engine`) see the windows without the shard knowing of them.
pub trait CloseHook: std::fmt::Debug + Send {
    /// The window `[start_ms, start_ms + spec.size_ms)` of `key` closed with `agg`.
    fn closed(&mut self, key: &str, spec: &WindowSpec, start_ms: i64, agg: &Agg);
    /// Every window ending at or before `through_ms` is closed (and was given to `closed`).
    fn passed(&mut self, through_ms: i64);
    /// The hook itself, for its owner to reach its own state (a checkpoint).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// One core's shard of windows.
#[derive(Debug)]
pub struct Shard {
    windows: Vec<WindowSpec>,
    /// Per window spec: the tumbling spec whose closed windows are merged into it (its
    /// events are not folded into it directly), if any.
    feeder: Vec<Option<u8>>,
    /// Per window spec: the specs it feeds.
    fed: Vec<Vec<u8>>,
    quantiles: Vec<(f64, String)>,
    max_keys: usize,
    /// Key → slot: slot numbers, hashed and compared by their slot's key, so each key is
    /// stored once. foldhash: fast, and seeded per process, so peers cannot choose colliding
    /// keys ahead of time.
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Window end → the (slot, spec index) of windows ending then.
    calendar: BTreeMap<i64, Vec<(u32, u8)>>,
    open_windows: usize,
    source_watermarks: Vec<Option<(i64, bool)>>,
    closed_through_ms: i64,
    output: AggregatesWriter,
    /// Sketch adds put off to the end of a [`FoldBatch`]; empty outside one.
    deferred: Vec<DeferredAdd>,
    /// Running StatsD gauge values (see [`Shard::gauge`]): key → position in
    /// `gauge_entries`, where gauges stay (they are never removed).
    gauges: hashbrown::HashTable<u32>,
    gauge_entries: Vec<(Box<str>, f64)>,
    /// The checkpoint snapshot being taken, if any (see `snapshot.rs`).
    snapshotting: Option<Box<Snapshotting>>,
    /// Told of every window closed (alert rules), if any.
    close_hooks: Vec<Box<dyn CloseHook>>,
}

/// A value for the sketch of window `pos` of slot `slot`.
#[derive(Debug, Clone, Copy)]
struct DeferredAdd {
    slot: u32,
    pos: u32,
    value: f64,
}

/// Sketch adds a batch defers at most before applying them.
const DEFERRED_ADDS_MAX: usize = 1024;

/// Folds a batch of events into a [`Shard`] (see [`Shard::batch`]). Adding a value to a
/// quantile sketch touches the sketch's buffer, a cache miss with many keys; the batch does
/// those adds together, at its end (or every `DEFERRED_ADDS_MAX` adds), where the misses of
/// independent adds overlap instead of stalling each event in turn.
pub struct FoldBatch<'s> {
    shard: &'s mut Shard,
}

impl FoldBatch<'_> {
    /// Folds one event, as [`Shard::fold`] does.
    #[inline]
    pub fn fold(&mut self, key: &[u8], value: f64, time_ms: i64, kind: Kind) -> Folded {
        self.fold_unit(key, value, time_ms, kind, 0)
    }

    /// Folds one event of an experiment's unit (`unit`: the hash of its value, never 0;
    /// 0: none), whose windows count the distinct units in `distinct`.
    #[inline]
    pub fn fold_unit(
        &mut self,
        key: &[u8],
        value: f64,
        time_ms: i64,
        kind: Kind,
        unit: u64,
    ) -> Folded {
        let folded = self.shard.fold_one(key, value, time_ms, kind, unit, true);
        if self.shard.deferred.len() >= DEFERRED_ADDS_MAX {
            self.shard.apply_deferred();
        }
        folded
    }
}

impl Drop for FoldBatch<'_> {
    fn drop(&mut self) {
        self.shard.apply_deferred();
    }
}

impl Shard {
    /// A shard aggregating as `params` says into `output`, fed by `sources` cores, whose
    /// windows ending at or before `closed_through_ms` are already closed.
    pub fn new(
        params: &Params,
        sources: usize,
        closed_through_ms: i64,
        output: AggregatesWriter,
    ) -> Shard {
        assert!(!params.windows.is_empty() && params.windows.len() <= u8::MAX as usize);
        for w in &params.windows {
            assert!(
                w.size_ms > 0 && w.hop_ms > 0 && w.size_ms % w.hop_ms == 0,
                "bad window {w:?}"
            );
        }
        let (feeder, fed) = feeders(&params.windows);
        // Room for every key up front: growing a table of a million keys moves all of them
        // at once (a turn of 100+ ms on the core). The slots' pages are not touched until
        // used; the index's control bytes (one per bucket) are.
        let room = params.max_keys.min(KEYS_PREALLOCATED_MAX);
        Shard {
            windows: params.windows.clone(),
            feeder,
            fed,
            quantiles: params
                .quantiles
                .iter()
                .map(|q| (*q, quantile_name(*q)))
                .collect(),
            max_keys: params.max_keys,
            index: hashbrown::HashTable::with_capacity(room),
            hasher: foldhash::fast::RandomState::default(),
            slots: Vec::with_capacity(room),
            free: Vec::new(),
            calendar: BTreeMap::new(),
            open_windows: 0,
            source_watermarks: vec![None; sources],
            closed_through_ms,
            output,
            deferred: Vec::new(),
            gauges: hashbrown::HashTable::new(),
            gauge_entries: Vec::new(),
            snapshotting: None,
            close_hooks: Vec::new(),
        }
    }

    /// Adds a hook told of every window this shard closes from now on (after the hooks
    /// added before it).
    pub fn add_close_hook(&mut self, hook: Box<dyn CloseHook>) {
        self.close_hooks.push(hook);
    }

    /// The close hook of type `T`, if one is set.
    pub fn hook<T: 'static>(&mut self) -> Option<&mut T> {
        self.close_hooks
            .iter_mut()
            .find_map(|h| h.as_any_mut().downcast_mut::<T>())
    }

    /// Restores an open window from a checkpoint. When the number of cores changed, keys
    /// move between shards whose frontiers differ: make the shards with the lowest old
    /// frontier, restore every record, then [`close_restored`](Self::close_restored)
    /// through the highest, so windows the new frontier has passed close in end order and
    /// feed the larger windows built from them. A window already behind this shard's
    /// frontier is written at once (nothing larger can take it then).
    pub fn restore(&mut self, record: WindowRecord) -> io::Result<()> {
        debug_assert!(self.snapshotting.is_none(), "restored before any snapshot");
        let spec = WindowSpec {
            size_ms: record.size_ms,
            hop_ms: record.hop_ms,
        };
        let Some(spec_idx) = self.windows.iter().position(|w| *w == spec) else {
            tracing::warn!(key = %record.key, ?spec, "checkpointed window of a size no longer configured is dropped (larger windows built from it lack its events)");
            return Ok(());
        };
        if record.start_ms + record.size_ms <= self.closed_through_ms {
            self.output.write_window(
                &record.key,
                &spec,
                record.start_ms,
                &record.agg,
                &self.quantiles,
            )?;
            // Closed as any other window is: the rules see it too.
            for hook in &mut self.close_hooks {
                hook.closed(&record.key, &spec, record.start_ms, &record.agg);
            }
            return Ok(());
        }
        let slot = self.slot_for(record.key.as_bytes(), true).0;
        let windows = &mut self.slots[slot as usize].windows;
        match windows
            .iter_mut()
            .find(|w| w.spec_idx == spec_idx as u8 && w.start_ms == record.start_ms)
        {
            Some(w) => w.agg.absorb(record.agg),
            None => *self.open(slot, spec_idx as u8, record.start_ms) = record.agg,
        }
        Ok(())
    }

    /// Closes, after a restore, every window ending at or before `frontier_ms` (see
    /// [`restore`](Self::restore)). Returns the windows closed.
    pub fn close_restored(&mut self, frontier_ms: i64) -> io::Result<usize> {
        if frontier_ms > self.closed_through_ms {
            self.close_through(frontier_ms)
        } else {
            Ok(0)
        }
    }

    /// Makes every source that has sent no watermark hold the frontier at the earliest time
    /// until it sends one (or an idle one): a source then never closes windows for another
    /// that has not spoken yet. Serve does this at start, while the cores replay their logs.
    pub fn hold_every_source(&mut self) {
        for w in &mut self.source_watermarks {
            w.get_or_insert((i64::MIN, false));
        }
    }

    /// Folds one event into every window that holds it, or (a composed window whose
    /// feeder's window is open) into the feeder's window, which passes it on at its close.
    pub fn fold(&mut self, key: &[u8], value: f64, time_ms: i64, kind: Kind) -> Folded {
        self.fold_one(key, value, time_ms, kind, 0, false)
    }

    /// A batch to fold many events through; the shard is whole again when it is dropped.
    pub fn batch(&mut self) -> FoldBatch<'_> {
        debug_assert!(self.deferred.is_empty());
        FoldBatch { shard: self }
    }

    /// Adds the deferred values to their sketches. Within a batch no window closes, so each
    /// (slot, position) still names the window it was taken from, and that window's sketch.
    fn apply_deferred(&mut self) {
        for d in self.deferred.drain(..) {
            let agg = &mut self.slots[d.slot as usize].windows[d.pos as usize].agg;
            agg.sketch
                .as_mut()
                .expect("a deferred add's window had a sketch, and windows only gain one")
                .add(d.value);
        }
    }

    /// Folds one event (of experiment unit hash `unit`, 0: none); with `defer`, an add to an
    /// existing sketch waits in `deferred`.
    #[inline]
    fn fold_one(
        &mut self,
        key: &[u8],
        value: f64,
        time_ms: i64,
        kind: Kind,
        unit: u64,
        defer: bool,
    ) -> Folded {
        let (value, kind, gauge_overflow) = match kind {
            Kind::Gauge | Kind::GaugeDelta => self.gauge(key, value, kind),
            _ => (value, kind, false),
        };
        let (slot, overflow) = if gauge_overflow {
            (self.slot_for(OVERFLOW_KEY.as_bytes(), true).0, true)
        } else {
            self.slot_for(key, false)
        };
        self.before_slot_changes(slot);
        let mut folded = Folded { late: 0, overflow };
        let sketch =
            !self.quantiles.is_empty() && matches!(kind, Kind::Sample | Kind::Timer | Kind::Gauge);
        let mut placed = false;
        for spec_idx in 0..self.windows.len() {
            let spec = self.windows[spec_idx];
            // A composed window gets the event when its feeder's window closes, unless that
            // has closed already.
            let via_feeder = self.feeder[spec_idx].is_some_and(|f| {
                let size = self.windows[f as usize].size_ms;
                window_start(time_ms, size).saturating_add(size) > self.closed_through_ms
            });
            for start in spec.starts(time_ms) {
                if start.saturating_add(spec.size_ms) <= self.closed_through_ms {
                    folded.late += 1;
                    continue;
                }
                placed = true;
                if via_feeder {
                    continue;
                }
                let windows = &mut self.slots[slot as usize].windows;
                let pos = windows
                    .iter()
                    .position(|w| w.spec_idx == spec_idx as u8 && w.start_ms == start);
                if kind == Kind::Set {
                    match pos {
                        Some(pos) => windows[pos].agg.add_member(value),
                        None => self.open(slot, spec_idx as u8, start).add_member(value),
                    }
                    continue;
                }
                let agg = match pos {
                    Some(pos) if defer && sketch && windows[pos].agg.sketch.is_some() => {
                        windows[pos].agg.tally(value, time_ms);
                        self.deferred.push(DeferredAdd {
                            slot,
                            pos: pos as u32,
                            value,
                        });
                        &mut self.slots[slot as usize].windows[pos].agg
                    }
                    Some(pos) => {
                        let agg = &mut windows[pos].agg;
                        agg.add(value, time_ms, sketch);
                        agg
                    }
                    None => {
                        let agg = self.open(slot, spec_idx as u8, start);
                        agg.add(value, time_ms, sketch);
                        agg
                    }
                };
                if unit != 0 {
                    agg.distinct.insert_hash(unit);
                }
            }
        }
        if !placed {
            self.release_if_empty(slot);
        }
        folded
    }

    /// Resolves a gauge event against the key's running gauge: a set (`Gauge`) replaces it, a
    /// delta (`GaugeDelta`) moves it (from 0 when the key has none), and the event folds as
    /// a `Gauge` of the running value, so a window's `last` is the gauge and its min, max
    /// and quantiles are of the values the gauge took. The running value outlives windows
    /// (and restarts, in the checkpoint), as etsy StatsD keeps gauges between flushes. At
    /// most `max_keys` gauges are kept; a new one past that folds under the overflow key
    /// (third value true), its delta taken from 0.
    fn gauge(&mut self, key: &[u8], value: f64, kind: Kind) -> (f64, Kind, bool) {
        let hash = self.hasher.hash_one(key);
        let full = self.gauges.len() >= self.max_keys;
        let entries = &self.gauge_entries;
        let found = self
            .gauges
            .find(hash, |&i| entries[i as usize].0.as_bytes() == key)
            .copied();
        let value = match found {
            Some(i) => {
                self.before_gauge_changes(i as usize);
                let g = &mut self.gauge_entries[i as usize].1;
                *g = match kind {
                    Kind::GaugeDelta => saturating_sum(*g, value),
                    _ => value,
                };
                *g
            }
            None if full => return (value, Kind::Gauge, true),
            None => {
                let key: Box<str> = String::from_utf8_lossy(key).into();
                let i = self.gauge_entries.len() as u32;
                self.gauge_entries.push((key, value));
                let (entries, hasher) = (&self.gauge_entries, &self.hasher);
                self.gauges.insert_unique(hash, i, |&i| {
                    hasher.hash_one(entries[i as usize].0.as_bytes())
                });
                value
            }
        };
        (value, Kind::Gauge, false)
    }

    /// Every running gauge value, for a checkpoint.
    pub fn gauges(&self) -> Vec<(String, f64)> {
        self.gauge_entries
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    /// Restores a running gauge value from a checkpoint.
    pub fn restore_gauge(&mut self, key: &str, value: f64) {
        self.gauge(key.as_bytes(), value, Kind::Gauge);
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
            let ending = entry.remove();
            for hook in &mut self.close_hooks {
                hook.passed(end - 1);
            }
            // Feeders (and plain windows) first, composed windows after: feeders merge into
            // composed windows that may end now too (merging may open one, which lands in a
            // fresh calendar entry for `end`). Two passes keep the calendar's order.
            for composed in [false, true] {
                for &(slot, spec_idx) in &ending {
                    if self.feeder[spec_idx as usize].is_some() == composed {
                        self.close_one(slot, spec_idx, end)?;
                        closed += 1;
                    }
                }
            }
        }
        self.closed_through_ms = through_ms;
        for hook in &mut self.close_hooks {
            hook.passed(through_ms);
        }
        Ok(closed)
    }

    /// Closes the window of `slot` and spec `spec_idx` ending at `end`: writes it, and feeds
    /// the windows composed from it.
    fn close_one(&mut self, slot: u32, spec_idx: u8, end: i64) -> io::Result<()> {
        self.before_slot_changes(slot);
        let spec = self.windows[spec_idx as usize];
        let s = &mut self.slots[slot as usize];
        let pos = s
            .windows
            .iter()
            .position(|w| w.spec_idx == spec_idx && w.start_ms + spec.size_ms == end)
            .expect("every calendar entry has its open window");
        let mut w = s.windows.swap_remove(pos);
        if let Some(sketch) = &mut w.agg.sketch {
            sketch.settle();
        }
        self.output
            .write_window(&s.key, &spec, w.start_ms, &w.agg, &self.quantiles)?;
        for hook in &mut self.close_hooks {
            hook.closed(&s.key, &spec, w.start_ms, &w.agg);
        }
        self.open_windows -= 1;
        if !self.fed[spec_idx as usize].is_empty() {
            self.feed(slot, spec_idx, w);
        }
        self.release_if_empty(slot);
        Ok(())
    }

    /// Merges the closed window `w` of spec `spec_idx` into every window of the specs it
    /// feeds that holds it.
    fn feed(&mut self, slot: u32, spec_idx: u8, w: OpenWindow) {
        self.before_slot_changes(slot);
        let fed = std::mem::take(&mut self.fed[spec_idx as usize]);
        let targets: usize = fed
            .iter()
            .map(|&j| {
                let spec = self.windows[j as usize];
                (spec.size_ms / spec.hop_ms) as usize
            })
            .sum();
        let mut agg = Some(w.agg);
        let mut n = 0;
        for &j in &fed {
            for start in self.windows[j as usize].starts(w.start_ms) {
                n += 1;
                let part = if n == targets {
                    agg.take().expect("moved once, at the last target")
                } else {
                    agg.clone().expect("still here")
                };
                let windows = &mut self.slots[slot as usize].windows;
                match windows
                    .iter_mut()
                    .find(|x| x.spec_idx == j && x.start_ms == start)
                {
                    Some(x) => x.agg.absorb(part),
                    None => self.open(slot, j, start).absorb(part),
                }
            }
        }
        self.fed[spec_idx as usize] = fed;
    }

    fn open(&mut self, slot: u32, spec_idx: u8, start_ms: i64) -> &mut Agg {
        let end = start_ms + self.windows[spec_idx as usize].size_ms;
        debug_assert!(start_ms < end);
        debug_assert!(
            end > self.closed_through_ms,
            "a closed window is never reopened"
        );
        self.calendar.entry(end).or_default().push((slot, spec_idx));
        self.open_windows += 1;
        let windows = &mut self.slots[slot as usize].windows;
        windows.push(OpenWindow {
            spec_idx,
            start_ms,
            agg: Agg::empty(),
        });
        &mut windows.last_mut().expect("just pushed").agg
    }

    /// The slot of `key`, creating it (or taking the overflow key when full).
    fn slot_for(&mut self, key: &[u8], unbounded: bool) -> (u32, bool) {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        if let Some(&slot) = self
            .index
            .find(hash, |&slot| slots[slot as usize].key.as_bytes() == key)
        {
            return (slot, false);
        }
        // Keys were checked as UTF-8 by the parsers; a lossy conversion keeps this total.
        // Stored keys are UTF-8, so an invalid key found nothing above: look its
        // conversion up instead.
        let Ok(key) = std::str::from_utf8(key) else {
            let lossy = String::from_utf8_lossy(key).into_owned();
            return self.slot_for(lossy.as_bytes(), unbounded);
        };
        if !unbounded && self.index.len() >= self.max_keys {
            return (self.slot_for(OVERFLOW_KEY.as_bytes(), true).0, true);
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                // Free at the barrier or since: nothing of it belongs to a snapshot.
                self.before_slot_changes(slot);
                slot
            }
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[slot as usize].key = key.into();
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, slot, |&slot| {
            hasher.hash_one(slots[slot as usize].key.as_bytes())
        });
        (slot, false)
    }

    fn release_if_empty(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.windows.is_empty() {
            let key = std::mem::take(&mut s.key);
            let hash = self.hasher.hash_one(key.as_bytes());
            let entry = self.index.find_entry(hash, |&other| other == slot);
            debug_assert!(entry.is_ok(), "slot {slot} of key {key:?} not in the index");
            if let Ok(entry) = entry {
                entry.remove();
            }
            self.free.push(slot);
        }
    }

    /// Every open window, decoded (for tests and tools).
    pub fn snapshot(&mut self) -> Vec<WindowRecord> {
        let mut bytes = Vec::new();
        self.snapshot_into(&mut bytes);
        let mut out: Vec<WindowRecord> = decode_records(&bytes)
            .collect::<Result<_, _>>()
            .expect("own encoding decodes");
        out.sort_by(|a, b| (&a.key, a.size_ms, a.start_ms).cmp(&(&b.key, b.size_ms, b.start_ms)));
        out
    }

    /// Calls `f` with every open window of the slots `from..` (up to `max_slots` of them) of
    /// size `size_ms` (every size when `None`) whose key `select` takes: the key, the window,
    /// its start and its running aggregate. A composed window (one fed by a smaller size's
    /// closed windows) is given with its feeder's open windows merged in, so it holds every
    /// event folded so far. Returns the slot to go on from, or `None` when the scan is done.
    ///
    /// Slots are stable while the shard changes between calls (a released slot is reused
    /// for a new key), so a scan in steps sees each live key at most once, and every key
    /// live for the whole scan exactly once. The work per call is bounded by `max_slots`,
    /// which is how a core answers a query without stalling.
    pub fn scan_open(
        &self,
        from: usize,
        max_slots: usize,
        size_ms: Option<i64>,
        mut select: impl FnMut(&str) -> bool,
        mut f: impl FnMut(&str, &WindowSpec, i64, &Agg),
    ) -> Option<usize> {
        let end = from.saturating_add(max_slots).min(self.slots.len());
        for slot in &self.slots[from.min(end)..end] {
            if slot.windows.is_empty() || !select(&slot.key) {
                continue;
            }
            for (spec_idx, spec) in self.windows.iter().enumerate() {
                if size_ms.is_some_and(|s| s != spec.size_ms) {
                    continue;
                }
                if self.feeder[spec_idx].is_none() {
                    for w in slot
                        .windows
                        .iter()
                        .filter(|w| w.spec_idx as usize == spec_idx)
                    {
                        f(&slot.key, spec, w.start_ms, &w.agg);
                    }
                } else {
                    for (start, agg) in self.composed_open(slot, spec_idx as u8) {
                        f(&slot.key, spec, start, &agg);
                    }
                }
            }
        }
        (end < self.slots.len()).then_some(end)
    }

    /// The open windows of `slot` of spec `spec_idx` with every event folded so far: its own
    /// (the closed windows of its feeder merged) and its feeder's open windows (themselves
    /// composed when fed in turn), including windows that no feeder window has closed into
    /// yet.
    fn composed_open(&self, slot: &Slot, spec_idx: u8) -> Vec<(i64, Agg)> {
        let mut out: Vec<(i64, Agg)> = slot
            .windows
            .iter()
            .filter(|w| w.spec_idx == spec_idx)
            .map(|w| (w.start_ms, w.agg.clone()))
            .collect();
        let Some(feeder) = self.feeder[spec_idx as usize] else {
            return out;
        };
        let spec = self.windows[spec_idx as usize];
        for (part_start, part) in self.composed_open(slot, feeder) {
            for start in spec.starts(part_start) {
                if start.saturating_add(spec.size_ms) <= self.closed_through_ms {
                    continue;
                }
                match out.iter_mut().find(|(s, _)| *s == start) {
                    Some((_, agg)) => agg.absorb(part.clone()),
                    None => {
                        let mut agg = Agg::empty();
                        agg.absorb(part.clone());
                        out.push((start, agg));
                    }
                }
            }
        }
        out.sort_by_key(|(s, _)| *s);
        out
    }

    /// The quantiles rows carry (value and field name).
    pub fn quantiles(&self) -> &[(f64, String)] {
        &self.quantiles
    }

    /// The aggregates rows carry.
    pub fn columns(&self) -> Columns {
        self.output.columns()
    }

    /// The frontier: every window ending at or before it is closed.
    pub fn closed_through_ms(&self) -> i64 {
        self.closed_through_ms
    }

    /// The latest end of a window (of any configured size) that holds `time_ms`: once the
    /// frontier reaches it, every window holding an event at or before `time_ms` is closed.
    pub fn last_end_holding(&self, time_ms: i64) -> i64 {
        self.windows
            .iter()
            .map(|w| window_start(time_ms, w.hop_ms).saturating_add(w.size_ms))
            .max()
            .unwrap_or(time_ms)
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

/// Decodes the records written by [`Shard::snapshot_into`].
pub fn decode_records(
    mut bytes: &[u8],
) -> impl Iterator<Item = Result<WindowRecord, postcard::Error>> + '_ {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        match postcard::take_from_bytes::<WindowRecord>(bytes) {
            Ok((record, rest)) => {
                bytes = rest;
                Some(Ok(record))
            }
            Err(e) => {
                bytes = &[];
                Some(Err(e))
            }
        }
    })
}

/// Directory of shard `shard`'s aggregates record.
pub fn aggregates_path(data_dir: &Path, shard: u16) -> std::path::PathBuf {
    crate::results::record_dir(data_dir, crate::results::Kind::Aggregates, shard)
}

#[cfg(test)]
mod tests;
