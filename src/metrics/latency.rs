//! Latency histograms (hdrhistogram): recorded without a lock by the thread that measures,
//! published to shared state at most every [`LATENCY_PUBLISH_MS`], merged at scrape time.
//!
//! ```text
//!  core thread (owns it)             shared (one Mutex each)             admin thread
//!  Recorder ── record: per batch,    Published                           Merged
//!              per advance, per  ──▶ (two slots of LATENCY_WINDOW_MS) ──▶ over every core
//!              turn                  publish: try_lock, ≤ 4/s;           → Summary
//!                                    never waits for the admin thread
//! ```
//!
//! Like a Prometheus summary: the quantiles and the max cover a sliding window (the slot
//! filling now and the one before it, so the last one to two [`LATENCY_WINDOW_MS`]); the
//! count and the sum cover everything since the process started. Values are nanoseconds,
//! kept to two significant digits (1%) up to [`LATENCY_NS_MAX`]; a longer one counts as
//! that. The max is exact.
//!
//! What each latency measures and where it is recorded: [`Latency`].
//!
//! [`LATENCY_PUBLISH_MS`]: crate::limits::LATENCY_PUBLISH_MS

#![forbid(unsafe_code)]

use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Metrics;
use crate::limits::{LATENCY_NS_MAX, LATENCY_WINDOW_MS};

/// Significant decimal digits every latency histogram keeps (1%).
const SIGNIFICANT_DIGITS: u8 = 2;

/// The quantiles a [`Summary`] reports, as `/metrics` labels them.
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// The latencies sluice measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// From the moment an input core read a batch of lines (from a socket, from held input,
    /// or from the log in replay) to the moment the owner core folded that batch's events
    /// into its windows: framing, the log append, parsing, routing and the queue. Recorded
    /// by the owner, once per routed batch (`worker/owner.rs`).
    IngestToFold,
    /// From the moment a shard decides windows close (a watermark passed their end) to the
    /// moment their rows are written to its results record (readers can see them). Recorded
    /// by the owner, once per write-out of rows closed by one or more advances: the time
    /// of the oldest of them (`worker/owner.rs`).
    CloseToWrite,
    /// One turn of a core's loop: from one look at its inbound queues and control to the
    /// next, time asleep in poll left out (a sleeping core is woken by its doorbell).
    /// Recorded by the core once per turn (`worker/mod.rs`); its max per core is the
    /// core's longest stall.
    CoreTurn,
    /// A checkpoint, from barrier injection to commit; committed checkpoints only. Recorded
    /// by the coordinator (`checkpoint/coordinator.rs`).
    Checkpoint,
}

/// An empty histogram with the bounds every latency uses (so merging never fails).
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Durations one thread recorded since it last published: it owns them, no lock.
#[derive(Debug, Clone)]
pub struct Recorder {
    histogram: Histogram<u64>,
    sum_ns: u64,
    max_ns: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder {
            histogram: histogram(),
            sum_ns: 0,
            max_ns: 0,
        }
    }

    /// Records one duration.
    #[inline]
    pub fn record(&mut self, d: Duration) {
        self.record_ns(nanos(d));
    }

    /// Records one duration in ns.
    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        self.histogram.saturating_record(ns);
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Durations recorded.
    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    fn absorb(&mut self, other: &Recorder) {
        self.histogram
            .add(&other.histogram)
            .expect("latency histograms share their bounds");
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    fn clear(&mut self) {
        self.histogram.reset();
        self.sum_ns = 0;
        self.max_ns = 0;
    }
}

/// What the admin thread sees of one latency of one thread: two slots of
/// [`LATENCY_WINDOW_MS`] (the one filling since `began`, and the one before), and the count
/// and sum since start.
#[derive(Debug)]
struct Window {
    current: Recorder,
    previous: Recorder,
    began: Instant,
    count: u64,
    sum_ns: u64,
}

impl Window {
    /// Moves the slots on to `now`: a slot older than the window becomes the previous one,
    /// one older than two windows is emptied.
    fn rotate(&mut self, now: Instant) {
        let window = Duration::from_millis(LATENCY_WINDOW_MS);
        let age = now.saturating_duration_since(self.began);
        if age >= 2 * window {
            self.current.clear();
            self.previous.clear();
            self.began = now;
        } else if age >= window {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
            self.began += window;
        }
    }

    fn absorb(&mut self, recorder: &Recorder, now: Instant) {
        self.rotate(now);
        self.current.absorb(recorder);
        self.count += recorder.len();
        self.sum_ns = self.sum_ns.saturating_add(recorder.sum_ns);
    }
}

/// One latency of one thread, as published for the admin thread.
#[derive(Debug)]
pub struct Published(Mutex<Window>);

impl Default for Published {
    fn default() -> Self {
        Published(Mutex::new(Window {
            current: Recorder::new(),
            previous: Recorder::new(),
            began: Instant::now(),
            count: 0,
            sum_ns: 0,
        }))
    }
}

impl Published {
    fn lock(&self) -> MutexGuard<'_, Window> {
        // A panic while the lock was held left at worst a half-merged histogram.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves what `recorder` holds here and empties it. While the admin thread is reading,
    /// it keeps them for the next try instead, and returns false: a core never waits.
    pub fn publish(&self, recorder: &mut Recorder, now: Instant) -> bool {
        if recorder.is_empty() {
            return true;
        }
        let mut window = match self.0.try_lock() {
            Ok(w) => w,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        window.absorb(recorder, now);
        drop(window);
        recorder.clear();
        true
    }

    /// Records one duration, taking the lock: for a thread off the data path (the
    /// checkpoint coordinator, once per checkpoint).
    pub fn record(&self, d: Duration, now: Instant) {
        let mut w = self.lock();
        w.rotate(now);
        w.current.record(d);
        w.count += 1;
        w.sum_ns = w.sum_ns.saturating_add(nanos(d));
    }

    /// The longest duration in the window, in ns (`None` when it holds none).
    pub fn max_ns(&self, now: Instant) -> Option<u64> {
        let mut w = self.lock();
        w.rotate(now);
        (!w.current.is_empty() || !w.previous.is_empty())
            .then(|| w.current.max_ns.max(w.previous.max_ns))
    }

    /// Adds this latency to `into`.
    pub fn merge_into(&self, into: &mut Merged, now: Instant) {
        let mut w = self.lock();
        w.rotate(now);
        into.window.absorb(&w.current);
        into.window.absorb(&w.previous);
        into.count += w.count;
        into.sum_ns = into.sum_ns.saturating_add(w.sum_ns);
    }
}

/// Latencies of several threads merged (at scrape time, on the admin thread).
#[derive(Debug, Default)]
pub struct Merged {
    window: Recorder,
    count: u64,
    sum_ns: u64,
}

impl Merged {
    /// The merged figures.
    pub fn summary(&self) -> Summary {
        let h = &self.window.histogram;
        let seconds = |ns: u64| ns as f64 / 1e9;
        // A quantile is the top of its bucket (up to 1% above the value): never above the
        // exact max.
        let q = |q: f64| {
            (!h.is_empty()).then(|| seconds(h.value_at_quantile(q).min(self.window.max_ns)))
        };
        Summary {
            count: self.count,
            sum_seconds: seconds(self.sum_ns),
            window_count: h.len(),
            p50_seconds: q(QUANTILES[0]),
            p90_seconds: q(QUANTILES[1]),
            p99_seconds: q(QUANTILES[2]),
            p999_seconds: q(QUANTILES[3]),
            max_seconds: (!h.is_empty()).then(|| seconds(self.window.max_ns)),
        }
    }
}

/// One latency's figures, merged: what `/metrics` writes as a summary and the status page
/// shows. Quantiles and max cover the last one to two [`LATENCY_WINDOW_MS`] (`None` when
/// nothing was recorded in it); `count` and `sum_seconds` cover the time since start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Durations recorded since start.
    pub count: u64,
    /// Their sum.
    pub sum_seconds: f64,
    /// Durations recorded in the window the quantiles cover.
    pub window_count: u64,
    /// Median.
    pub p50_seconds: Option<f64>,
    /// 90th percentile.
    pub p90_seconds: Option<f64>,
    /// 99th percentile.
    pub p99_seconds: Option<f64>,
    /// 99.9th percentile.
    pub p999_seconds: Option<f64>,
    /// Longest.
    pub max_seconds: Option<f64>,
}

impl Summary {
    /// The quantiles with their values, in [`QUANTILES`] order.
    pub fn quantiles(&self) -> [(f64, Option<f64>); 4] {
        [
            (QUANTILES[0], self.p50_seconds),
            (QUANTILES[1], self.p90_seconds),
            (QUANTILES[2], self.p99_seconds),
            (QUANTILES[3], self.p999_seconds),
        ]
    }
}

/// One core's latency histograms, as it publishes them.
#[derive(Debug, Default)]
pub struct CoreLatencies {
    /// [`Latency::IngestToFold`] of the batches this core folded.
    pub ingest_to_fold: Published,
    /// [`Latency::CloseToWrite`] of this core's shard.
    pub close_to_write: Published,
    /// [`Latency::CoreTurn`] of this core's loop.
    pub turn: Published,
}

/// Every latency, merged over the cores, and each core's longest stall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latencies {
    /// [`Latency::IngestToFold`].
    pub ingest_to_fold: Summary,
    /// [`Latency::CloseToWrite`].
    pub close_to_write: Summary,
    /// [`Latency::Checkpoint`].
    pub checkpoint: Summary,
    /// [`Latency::CoreTurn`].
    pub core_turn: Summary,
    /// Per core (by id): its longest turn in the window (`None` before its first publish).
    pub core_stall_max_seconds: Vec<Option<f64>>,
}

impl Metrics {
    /// One latency, merged over every core (`core: None`) or of one core.
    ///
    /// # Panics
    /// If `core` is not a core of this instance.
    pub fn latency(&self, latency: Latency, core: Option<usize>) -> Summary {
        let now = Instant::now();
        let mut merged = Merged::default();
        fn of(c: &super::CoreMetrics, latency: Latency) -> Option<&Published> {
            match latency {
                Latency::IngestToFold => Some(&c.latency.ingest_to_fold),
                Latency::CloseToWrite => Some(&c.latency.close_to_write),
                Latency::CoreTurn => Some(&c.latency.turn),
                Latency::Checkpoint => None,
            }
        }
        if latency == Latency::Checkpoint {
            self.checkpoint.duration.merge_into(&mut merged, now);
        } else {
            let cores = match core {
                Some(c) => std::slice::from_ref(&self.cores[c]),
                None => &self.cores[..],
            };
            for p in cores.iter().filter_map(|c| of(c, latency)) {
                p.merge_into(&mut merged, now);
            }
        }
        merged.summary()
    }

    /// Every latency merged over the cores, and each core's longest stall: what `/metrics`
    /// writes and the status page shows.
    pub fn latencies(&self) -> Latencies {
        let now = Instant::now();
        Latencies {
            ingest_to_fold: self.latency(Latency::IngestToFold, None),
            close_to_write: self.latency(Latency::CloseToWrite, None),
            checkpoint: self.latency(Latency::Checkpoint, None),
            core_turn: self.latency(Latency::CoreTurn, None),
            core_stall_max_seconds: self
                .cores
                .iter()
                .map(|c| c.latency.turn.max_ns(now).map(|ns| ns as f64 / 1e9))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn merged_quantiles_come_from_every_core_within_one_percent() {
        let m = Metrics::new(2, Vec::new());
        let now = Instant::now();
        // Core 0: 1..=900 µs; core 1: 901..=1000 µs. Merged: 1..=1000 µs.
        for (core, range) in [(0usize, 1..=900u64), (1, 901..=1000)] {
            let mut r = Recorder::new();
            for us in range {
                r.record(Duration::from_micros(us));
            }
            assert!(m.cores[core].latency.ingest_to_fold.publish(&mut r, now));
            assert!(r.is_empty(), "publishing empties the recorder");
        }
        let s = m.latency(Latency::IngestToFold, None);
        assert_eq!((s.count, s.window_count), (1000, 1000));
        assert!((s.sum_seconds - 0.5005).abs() < 1e-9, "{s:?}");
        for (q, v) in s.quantiles() {
            let want = q * 1e-3;
            let got = v.unwrap();
            assert!(
                (got - want).abs() <= want * 0.01 + 1e-6,
                "q{q}: {got} vs {want}"
            );
        }
        assert_eq!(s.max_seconds, Some(1e-3));
        let one = m.latency(Latency::IngestToFold, Some(1));
        assert_eq!(one.count, 100);
        assert!(one.p50_seconds.unwrap() > 0.0009, "{one:?}");
        // Nothing recorded: no quantiles, zero counts.
        let none = m.latency(Latency::CloseToWrite, None);
        assert_eq!(
            (none.count, none.p50_seconds, none.max_seconds),
            (0, None, None)
        );
    }

    #[test]
    fn quantiles_ascend_and_never_pass_the_exact_max() {
        let mut r = Recorder::new();
        for i in 0..10_000u64 {
            r.record_ns(1_000 + (i * 7919) % 5_000_000);
        }
        r.record(ms(12));
        let p = Published::default();
        let now = Instant::now();
        p.publish(&mut r, now);
        let mut merged = Merged::default();
        p.merge_into(&mut merged, now);
        let s = merged.summary();
        let values: Vec<f64> = s.quantiles().iter().map(|(_, v)| v.unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
        assert!(values[3] <= s.max_seconds.unwrap());
        assert_eq!(s.max_seconds, Some(0.012));
    }

    #[test]
    fn the_window_slides_but_count_and_sum_stay() {
        let p = Published::default();
        let t0 = Instant::now();
        p.record(ms(5), t0);
        let window = Duration::from_millis(LATENCY_WINDOW_MS);
        // One window on: the old slot is the previous one, still counted.
        p.record(ms(1), t0 + window);
        assert_eq!(p.max_ns(t0 + window), Some(5_000_000));
        let mut merged = Merged::default();
        p.merge_into(&mut merged, t0 + window);
        assert_eq!(merged.summary().window_count, 2);
        // Two windows on: only the 1 ms slot is left.
        assert_eq!(p.max_ns(t0 + 2 * window), Some(1_000_000));
        // Long idle: the window is empty, the totals are not.
        let mut merged = Merged::default();
        p.merge_into(&mut merged, t0 + 10 * window);
        let s = merged.summary();
        assert_eq!((s.count, s.window_count, s.max_seconds), (2, 0, None));
        assert!((s.sum_seconds - 0.006).abs() < 1e-12);
    }

    #[test]
    fn a_busy_lock_keeps_the_recordings_for_the_next_publish() {
        let p = Published::default();
        let mut r = Recorder::new();
        r.record(ms(3));
        let now = Instant::now();
        {
            let _reading = p.lock();
            assert!(!p.publish(&mut r, now));
        }
        assert_eq!(r.len(), 1);
        assert!(p.publish(&mut r, now));
        assert_eq!(p.max_ns(now), Some(3_000_000));
    }

    #[test]
    fn durations_beyond_the_bound_are_clamped_not_lost() {
        let mut r = Recorder::new();
        r.record(Duration::from_secs(100_000));
        r.record(Duration::ZERO);
        assert_eq!(r.len(), 2);
        let m = Metrics::new(1, Vec::new());
        m.checkpoint.duration.record(ms(40), Instant::now());
        let all = m.latencies();
        assert_eq!(all.checkpoint.count, 1);
        assert_eq!(all.core_stall_max_seconds, vec![None]);
        assert!((all.checkpoint.p99_seconds.unwrap() - 0.04).abs() < 0.0004);
    }
}
