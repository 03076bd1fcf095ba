//! Counters and gauges shared between the cores (writers) and the admin thread (reader).
//!
//! Each core owns one [`CoreMetrics`] and is its only writer; the admin thread reads them at
//! scrape time. Values are relaxed atomics: a scrape sees each counter at some recent moment,
//! never a torn value. Cores update them once per batch or per tick, never per event.
//!
//! Latencies (`latency`) are hdrhistograms: each core records into its own and publishes
//! them under a lock it only tries, at most every `LATENCY_PUBLISH_MS`; the admin thread
//! merges them at scrape time.

#![forbid(unsafe_code)]

mod latency;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use crate::parse::Reject;

pub use latency::{
    CoreLatencies, Latencies, Latency, Merged, Published, QUANTILES, Recorder, Summary,
};

/// A monotonically rising counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Adds `d` (which may be negative).
    #[inline]
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }
    /// Raises the value to `v` if `v` is larger.
    pub fn raise(&self, v: i64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }
}

/// Static description of a listener, for labels.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Listener name from the configuration.
    pub name: String,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// Format name.
    pub format: &'static str,
    /// Every reason the listener's lines can be rejected with, in [`Reject::ALL`] order
    /// (`worker::listener_rejects`): `/metrics` has a `rejected` series for these only.
    pub rejects: Vec<Reject>,
}

/// Counters of one listener on one core.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Lines accepted into the log.
    pub lines_total: Counter,
    /// Bytes read from the network (before framing).
    pub bytes_total: Counter,
    /// Events produced by parsing accepted lines.
    pub events_total: Counter,
    /// Rejected lines, by [`Reject`] reason.
    pub rejected_total: [Counter; Reject::COUNT],
    /// Datagrams the process could not take (counted by the kernel or by the core).
    pub udp_dropped_total: Counter,
    /// Connections accepted.
    pub connections_total: Counter,
    /// Connections refused because `max_connections` was reached.
    pub connections_refused_total: Counter,
    /// Connections open now.
    pub connections_open: Gauge,
    /// Connections accepted here and passed to a core with fewer connections.
    pub connections_handed_off_total: Counter,
    /// Idle connections closed to make room for a new one (at `max_connections` or at the
    /// process's descriptor budget).
    pub connections_displaced_total: Counter,
    /// Connections closed because they sent nothing for the listener's `idle_timeout`.
    pub connections_timed_out_total: Counter,
    /// Failed `accept` calls (out of descriptors or memory), each followed by a pause.
    pub accept_errors_total: Counter,
}

/// A kind of write whose failure holds a core's input (see `worker::storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageOp {
    /// Appending a batch to the log (a write, or a segment roll).
    LogAppend,
    /// Making the log durable (msync, fsync).
    LogFlush,
    /// Writing rows to the aggregates file.
    Aggregates,
}

impl StorageOp {
    /// Every kind, in index order.
    pub const ALL: [StorageOp; 3] = [
        StorageOp::LogAppend,
        StorageOp::LogFlush,
        StorageOp::Aggregates,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageOp::LogAppend => "log_append",
            StorageOp::LogFlush => "log_flush",
            StorageOp::Aggregates => "aggregates",
        }
    }
}

/// Counters and gauges of one core.
#[derive(Debug)]
pub struct CoreMetrics {
    /// Per listener, indexed by listener id.
    pub listeners: Vec<ListenerCounters>,
    /// Nanoseconds this core spent with socket reads paused because a queue was full.
    pub backpressure_ns_total: Counter,
    /// Batches waiting in this core's outbound pending buffers (could not be queued yet).
    pub pending_batches: Gauge,
    /// Messages waiting in this core's inbound queues.
    pub queue_depth: Gauge,
    /// Events folded into this core's shard.
    pub window_events_total: Counter,
    /// Events that arrived after their window had closed (dead-lettered).
    pub late_events_total: Counter,
    /// Events counted under the overflow key because the shard was full.
    pub overflow_events_total: Counter,
    /// Windows closed and written to the aggregates output.
    pub windows_closed_total: Counter,
    /// Windows open now.
    pub windows_open: Gauge,
    /// Live keys in this shard.
    pub keys: Gauge,
    /// The shard's combined watermark, in ms since the epoch (`i64::MIN` until known).
    pub watermark_ms: Gauge,
    /// Next log offset of this core's partition.
    pub log_next_offset: Gauge,
    /// Log offset up to which this core's partition is flushed.
    pub log_flushed_offset: Gauge,
    /// Log flushes performed.
    pub log_flushes_total: Counter,
    /// Microseconds spent in log flushes.
    pub log_flush_us_total: Counter,
    /// Log records replayed at start.
    pub replayed_lines_total: Counter,
    /// Bytes cut from this core's log partition tail by recovery at start.
    pub log_truncated_bytes_total: Counter,
    /// Damaged log batches found at start: cut out of the newest segment by recovery, or
    /// skipped inside sealed segments by replay.
    pub log_bad_batches_total: Counter,
    /// Offsets found at start to have no line in the log (damaged batches, missing
    /// segments, lines a checkpoint counted that are gone).
    pub log_lost_lines_total: Counter,
    /// Longest time, in µs, this core spent on its share of a checkpoint.
    pub checkpoint_stall_us_max: Gauge,
    /// 1 while a write of this core fails and its input is held; 0 otherwise.
    pub storage_failing: Gauge,
    /// Failed writes, by [`StorageOp`] index.
    pub storage_errors_total: [Counter; StorageOp::ALL.len()],
    /// Nanoseconds this core spent with socket reads paused because a write failed.
    pub storage_blocked_ns_total: Counter,
    /// Lines read from sockets and held because the log could not take them.
    pub held_lines: Gauge,
    /// What became of the rejections this core sent to its dead-letter log.
    pub deadletter: DeadLetterCounters,
    /// Latency histograms, as the core last published them.
    pub latency: CoreLatencies,
}

/// What one core's dead-letter log did with the rejections (lines and late events) it was
/// given. Every rejection ends in exactly one of `written`, `collapsed` or `error` once its
/// record is handed to the kernel (repeat summaries wait up to a second); `rotated` counts
/// rejections whose records were later deleted by rotation to keep the size cap.
#[derive(Debug, Default)]
pub struct DeadLetterCounters {
    /// Rejections written as a record of their own.
    pub written_total: Counter,
    /// Rejections counted in a repeat record instead of being copied.
    pub collapsed_total: Counter,
    /// Rejections not written because the write (or a rotation) failed (a full disk).
    pub error_total: Counter,
    /// Rejections not written because their record alone exceeds a file's share of the cap.
    pub cap_total: Counter,
    /// Rejections whose records rotation deleted to keep the partition under its cap.
    pub rotated_total: Counter,
    /// Records (own and repeat) handed to the kernel.
    pub records_total: Counter,
    /// Bytes in this partition's dead-letter files now.
    pub bytes: Gauge,
}

/// Admin HTTP server figures, written by the admin thread.
#[derive(Debug, Default)]
pub struct AdminMetrics {
    /// Connections accepted.
    pub connections_total: Counter,
    /// Connections open now.
    pub connections_open: Gauge,
    /// Connections closed at once because every slot held a request in flight.
    pub connections_refused_total: Counter,
    /// Idle connections (no request in flight) closed to make room for a new one.
    pub connections_evicted_total: Counter,
    /// Connections closed because the request head or the next request did not come in time.
    pub connections_timed_out_total: Counter,
    /// Requests answered 408 because they took longer than the request timeout.
    pub requests_timed_out_total: Counter,
}

impl CoreMetrics {
    /// Metrics for a core serving `listeners` listeners.
    pub fn new(listeners: usize) -> Self {
        CoreMetrics {
            listeners: (0..listeners)
                .map(|_| ListenerCounters::default())
                .collect(),
            backpressure_ns_total: Counter::default(),
            pending_batches: Gauge::default(),
            queue_depth: Gauge::default(),
            window_events_total: Counter::default(),
            late_events_total: Counter::default(),
            overflow_events_total: Counter::default(),
            windows_closed_total: Counter::default(),
            windows_open: Gauge::default(),
            keys: Gauge::default(),
            watermark_ms: Gauge(AtomicI64::new(i64::MIN)),
            log_next_offset: Gauge::default(),
            log_flushed_offset: Gauge::default(),
            log_flushes_total: Counter::default(),
            log_flush_us_total: Counter::default(),
            replayed_lines_total: Counter::default(),
            log_truncated_bytes_total: Counter::default(),
            log_bad_batches_total: Counter::default(),
            log_lost_lines_total: Counter::default(),
            checkpoint_stall_us_max: Gauge::default(),
            storage_failing: Gauge::default(),
            storage_errors_total: Default::default(),
            storage_blocked_ns_total: Counter::default(),
            held_lines: Gauge::default(),
            deadletter: DeadLetterCounters::default(),
            latency: CoreLatencies::default(),
        }
    }
}

/// Checkpoint counters, written by the checkpoint coordinator.
#[derive(Debug, Default)]
pub struct CheckpointMetrics {
    /// Checkpoints committed.
    pub committed_total: Counter,
    /// Checkpoints that failed to write.
    pub failed_total: Counter,
    /// Epoch of the newest committed checkpoint.
    pub last_epoch: Gauge,
    /// Microseconds from barrier injection to commit of the newest checkpoint.
    pub last_duration_us: Gauge,
    /// Size in bytes of the newest checkpoint file.
    pub last_bytes: Gauge,
    /// Wall-clock time (ms since the epoch) of the newest commit; 0 before the first.
    pub last_commit_unix_ms: Gauge,
    /// Durations of committed checkpoints, barrier injection to commit.
    pub duration: Published,
}

/// Alert figures: per rule, written by the cores; per notifier, by its thread.
#[derive(Debug, Default)]
pub struct AlertMetrics {
    /// Rule names, in configuration order.
    pub rules: Vec<String>,
    /// Per rule: alerts firing now, all shards together.
    pub firing: Vec<Gauge>,
    /// Keys a rule could not watch because it held `ALERT_STATES_PER_RULE_MAX` states.
    pub states_overflow_total: Counter,
    /// One per notifier.
    pub notifiers: Vec<NotifierMetrics>,
}

impl AlertMetrics {
    /// Figures for these rules and notifiers.
    pub fn new(rules: Vec<String>, notifiers: Vec<String>) -> AlertMetrics {
        AlertMetrics {
            firing: rules.iter().map(|_| Gauge::default()).collect(),
            rules,
            states_overflow_total: Counter::default(),
            notifiers: notifiers
                .into_iter()
                .map(|name| NotifierMetrics {
                    name,
                    ..NotifierMetrics::default()
                })
                .collect(),
        }
    }
}

/// What became of one notifier's requests.
#[derive(Debug, Default)]
pub struct NotifierMetrics {
    /// `webhook` or `alertmanager`, and its URL.
    pub name: String,
    /// Requests the receiver took (2xx).
    pub success_total: Counter,
    /// Requests that failed (5xx, timeout, refused) and are retried.
    pub retry_total: Counter,
    /// Requests the receiver refused (4xx): dropped, as Prometheus drops them.
    pub rejected_total: Counter,
    /// Transitions read from `alerts/` and not yet delivered.
    pub queued: Gauge,
}

/// Everything the admin endpoint exposes.
#[derive(Debug)]
pub struct Metrics {
    /// One per core, indexed by core id.
    pub cores: Vec<CoreMetrics>,
    /// One per listener, indexed by listener id.
    pub listeners: Vec<ListenerInfo>,
    /// Checkpoint coordinator figures.
    pub checkpoint: CheckpointMetrics,
    /// Admin HTTP server figures.
    pub admin: AdminMetrics,
    /// Alert rules and notifiers.
    pub alerts: AlertMetrics,
    /// Process start.
    pub started: Instant,
    /// True once recovery is done and every listener is serving.
    pub ready: AtomicBool,
    /// True once shutdown has begun.
    pub stopping: AtomicBool,
}

impl Metrics {
    /// Fresh metrics for `cores` cores and the given listeners.
    pub fn new(cores: usize, listeners: Vec<ListenerInfo>) -> Self {
        Metrics {
            cores: (0..cores)
                .map(|_| CoreMetrics::new(listeners.len()))
                .collect(),
            listeners,
            checkpoint: CheckpointMetrics::default(),
            admin: AdminMetrics::default(),
            alerts: AlertMetrics::default(),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// True while any core holds input because a write fails.
    pub fn storage_failing(&self) -> bool {
        self.cores.iter().any(|c| c.storage_failing.get() != 0)
    }

    /// Sum of one listener counter over every core.
    pub fn listener_sum(&self, listener: usize, f: impl Fn(&ListenerCounters) -> &Counter) -> u64 {
        self.cores
            .iter()
            .map(|c| f(&c.listeners[listener]).get())
            .sum()
    }
}
