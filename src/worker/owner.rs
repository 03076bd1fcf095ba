//! The core's owner side: events from every core folded into its shard, watermarks applied,
//! checkpoint barriers aligned (Chandy–Lamport, as Flink does).
//!
//! Alignment: when barrier N arrives from source `s`, the queue from `s` is not read again
//! until barrier N has arrived from every source. Then the shard's snapshot begins (its output
//! written out, for the coordinator to fsync before it commits) and every queue is read
//! again; the snapshot is encoded in steps between turns, copy-on-write against the events
//! that follow (see `window/snapshot.rs`), and reported once whole. Sources never block on a full queue (they keep the message pending and stop
//! reading their sockets), so alignment always completes.
//!
//! Latencies: the owner records, in histograms it alone owns, the ingest → fold time of
//! each batch it folds (from the batch's `read_at`) and the close → write time of the rows
//! its advances close (from the advance to the write-out that puts the last of them in the
//! results record); the loop publishes them with [`Owner::publish_latency`].

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Sender, TryRecvError};
use serde_bytes::ByteBuf;

use super::{Error, Report};
use crate::alerts::Engine;
use crate::checkpoint::{AlertState, ShardState};
use crate::deadletter::DeadLetter;
use crate::experiments::engine::{CumulativeRecord, Engine as ExperimentEngine};
use crate::limits::{
    AGGREGATES_STAGED_BYTES_MAX, INBOUND_MESSAGES_PER_TICK_MAX, INBOUND_TURN_BUDGET_US,
    OPEN_SCAN_SHARE_PERCENT, OPEN_SCAN_SLOTS_PER_TURN, SNAPSHOT_SHARE_PERCENT,
    SNAPSHOT_STEP_BUDGET_US,
};
use crate::metrics::{Metrics, Recorder};
use crate::query::{OpenRequest, OpenScan};
use crate::route::Inbound;
use crate::route::Msg;
use crate::window::{OutputSync, Shard, now_ms};

/// What answering open-window queries, or taking a snapshot, asks of the loop this turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanTurn {
    /// Nothing to do.
    Idle,
    /// Work is under way: do not sleep.
    Busy,
    /// Work waits for its share of the core's time: wake by then.
    Until(Instant),
}

impl ScanTurn {
    /// The turn that asks the most of the loop of `self` and `other`.
    pub(super) fn max(self, other: ScanTurn) -> ScanTurn {
        match (self, other) {
            (ScanTurn::Busy, _) | (_, ScanTurn::Busy) => ScanTurn::Busy,
            (ScanTurn::Until(a), ScanTurn::Until(b)) => ScanTurn::Until(a.min(b)),
            (ScanTurn::Until(a), _) | (_, ScanTurn::Until(a)) => ScanTurn::Until(a),
            _ => ScanTurn::Idle,
        }
    }
}

/// A checkpoint's snapshot of the shard being taken in steps (see `window/snapshot.rs`):
/// what was noted at the barrier, reported with the windows once they are all encoded.
#[derive(Debug)]
struct SnapshotInFlight {
    epoch: u64,
    aggregates_len: u64,
    output: OutputSync,
    /// The alert engine's share, taken whole at the barrier (its states are bounded).
    alerts_sync: Option<OutputSync>,
    alerts_len: u64,
    alerts: Vec<AlertState>,
    /// The experiments engine's share, taken whole at the barrier (bounded per shard).
    experiments_sync: Option<OutputSync>,
    experiments_len: u64,
    experiments: Vec<CumulativeRecord>,
    /// While the core has input, the next step waits until then.
    resume_at: Option<Instant>,
}

/// A core's owner side: its shard of the key space, the queues that bring it events from
/// every core, and the alignment of checkpoint barriers. It shares nothing with the input
/// side but the dead-letter file (for late events) and what it reports.
#[derive(Debug)]
pub(super) struct Owner {
    id: u16,
    pub(super) shard: Shard,
    /// One queue from each core (this one included).
    pub(super) inbound: Vec<Inbound>,
    /// Per source: its barrier of the checkpoint being aligned has arrived.
    aligned: Vec<bool>,
    aligned_count: usize,
    /// The snapshot being taken, if any.
    snapshot: Option<SnapshotInFlight>,
    /// The first results write error met since the input side last looked.
    results_error: Option<std::io::Error>,
    /// Questions about the open windows, and the one being answered.
    open_queries: crossbeam_channel::Receiver<OpenRequest>,
    open_scan: Option<OpenScan>,
    /// While the core has input, the next scan step waits until then.
    scan_resume_at: Option<Instant>,
    /// Ingest → fold of the batches folded since the last publish.
    ingest_to_fold: Recorder,
    /// Close → write of the rows written out since the last publish.
    close_to_write: Recorder,
    /// When the oldest advance whose rows are not all written yet closed them.
    closed_unwritten: Option<Instant>,
    /// Windows closed since the loop last asked ([`Owner::take_closed`]).
    closed_since_asked: bool,
    metrics: Arc<Metrics>,
    reports: Sender<Report>,
}

impl Owner {
    pub(super) fn new(
        id: u16,
        shard: Shard,
        inbound: Vec<Inbound>,
        open_queries: crossbeam_channel::Receiver<OpenRequest>,
        metrics: Arc<Metrics>,
        reports: Sender<Report>,
    ) -> Owner {
        Owner {
            id,
            shard,
            open_queries,
            open_scan: None,
            scan_resume_at: None,
            aligned: vec![false; inbound.len()],
            inbound,
            aligned_count: 0,
            snapshot: None,
            results_error: None,
            ingest_to_fold: Recorder::new(),
            close_to_write: Recorder::new(),
            closed_unwritten: None,
            closed_since_asked: false,
            metrics,
            reports,
        }
    }

    /// Answers the query API's questions about the open windows, one at a time, a step of
    /// at most [`OPEN_SCAN_SLOTS_PER_TURN`] key slots (and about 200 µs) per call (see
    /// `query::OpenScan`). While the core has input (`contended`), steps take at most
    /// [`OPEN_SCAN_SHARE_PERCENT`] of its time: after a step of `d`, the next waits
    /// `d × (100 − share) / share`, so back-to-back queries slow ingest by a bounded share.
    pub(super) fn answer_open_queries(&mut self, contended: bool) -> ScanTurn {
        if self.open_scan.is_none() {
            match self.open_queries.try_recv() {
                Ok(request) => self.open_scan = Some(OpenScan::new(request)),
                Err(_) => return ScanTurn::Idle,
            }
        }
        let now = Instant::now();
        if contended
            && let Some(at) = self.scan_resume_at
            && now < at
        {
            return ScanTurn::Until(at);
        }
        let Some(scan) = &mut self.open_scan else {
            return ScanTurn::Idle;
        };
        let done = scan.step(&self.shard, OPEN_SCAN_SLOTS_PER_TURN);
        let took = now.elapsed();
        let share = OPEN_SCAN_SHARE_PERCENT.clamp(1, 100);
        self.scan_resume_at = Some(now + took + took * (100 - share) / share);
        if done {
            self.open_scan = None;
            // Another may be waiting.
            if self.open_queries.is_empty() {
                return ScanTurn::Idle;
            }
        }
        ScanTurn::Busy
    }

    /// A results write that failed since the last call (the core holds its input and
    /// retries, see `storage.rs`).
    pub(super) fn take_results_error(&mut self) -> Option<std::io::Error> {
        self.results_error.take()
    }

    /// Flushes the results record (staged rows are written out) and notes the close →
    /// write latency of the rows it wrote.
    pub(super) fn flush_output(&mut self) -> std::io::Result<()> {
        let flushed = self.shard.output().flush();
        self.note_written();
        flushed
    }

    /// True when windows closed since the last call: their rows are staged, and the loop
    /// writes them out at once rather than at the next tick.
    pub(super) fn take_closed(&mut self) -> bool {
        std::mem::take(&mut self.closed_since_asked)
    }

    /// Records the close → write latency once every row closed so far is in the record.
    fn note_written(&mut self) {
        if self.shard.output().staged_bytes() == 0
            && let Some(closed) = self.closed_unwritten.take()
        {
            self.close_to_write.record(closed.elapsed());
        }
    }

    /// Publishes the latencies recorded since the last call (the loop calls it every
    /// `LATENCY_PUBLISH_MS`); what the admin thread is reading stays for the next call.
    pub(super) fn publish_latency(&mut self, now: Instant) {
        let m = &self.metrics.cores[self.id as usize].latency;
        m.ingest_to_fold.publish(&mut self.ingest_to_fold, now);
        m.close_to_write.publish(&mut self.close_to_write, now);
    }

    /// Reads the inbound queues within a budget of messages and of time. Returns true when
    /// messages may remain.
    pub(super) fn drain_inbound(&mut self, deadletter: &mut DeadLetter) -> Result<bool, Error> {
        if self.shard.output().staged_bytes() > AGGREGATES_STAGED_BYTES_MAX {
            // The aggregates file takes no rows (a full disk): closing more windows would
            // only grow memory. The sources' queues fill and they stop reading sockets.
            return Ok(false);
        }
        let sources = self.inbound.len();
        let mut budget = INBOUND_MESSAGES_PER_TICK_MAX;
        let mut more = false;
        let began = Instant::now();
        let time_budget = std::time::Duration::from_micros(INBOUND_TURN_BUDGET_US);
        for src in 0..sources {
            let mut taken = 0;
            while !self.aligned[src] && taken < budget.div_ceil(sources).max(1) {
                if taken > 0 && began.elapsed() >= time_budget {
                    budget = 0;
                    break;
                }
                let msg = match self.inbound[src].rx.try_recv() {
                    Ok(msg) => msg,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                };
                taken += 1;
                self.handle(src, msg, deadletter)?;
            }
            budget = budget.saturating_sub(taken);
            if !self.aligned[src] && !self.inbound[src].rx.is_empty() {
                more = true;
            }
        }
        Ok(more)
    }

    /// True when any queue this core may read holds messages.
    pub(super) fn inbound_waiting(&self) -> bool {
        self.inbound
            .iter()
            .zip(&self.aligned)
            .any(|(i, aligned)| !aligned && !i.rx.is_empty())
    }

    fn handle(&mut self, src: usize, msg: Msg, deadletter: &mut DeadLetter) -> Result<(), Error> {
        match msg {
            Msg::Events(mut batch) => {
                let m = &self.metrics.cores[self.id as usize];
                let mut late = 0u64;
                let mut overflow = 0u64;
                let now = now_ms();
                let mut folding = self.shard.batch();
                for (key, e) in batch.iter() {
                    let folded = folding.fold_unit(key, e.value, e.time_ms, e.kind, e.unit);
                    if folded.late > 0 {
                        late += 1;
                        deadletter.late(now, key, e.time_ms, e.value, folded.late);
                    }
                    overflow += u64::from(folded.overflow);
                }
                // The batch's events are whole in window state before they are counted.
                drop(folding);
                if let Some(read_at) = batch.read_at() {
                    self.ingest_to_fold.record(read_at.elapsed());
                }
                m.window_events_total.add(batch.len() as u64);
                m.late_events_total.add(late);
                m.overflow_events_total.add(overflow);
                batch.clear();
                // The free list has room for every batch in flight; if the source is gone the
                // batch is simply dropped.
                let _ = self.inbound[src].free.try_send(batch);
            }
            Msg::Watermark { ms, idle } => {
                let deciding = Instant::now();
                let closed =
                    self.shard
                        .advance(src, ms, idle)
                        .map_err(|source| Error::Results {
                            path: self.shard.output().path().to_path_buf(),
                            source,
                        })?;
                self.metrics.cores[self.id as usize]
                    .windows_closed_total
                    .add(closed as u64);
                if closed > 0 {
                    self.closed_unwritten.get_or_insert(deciding);
                    self.closed_since_asked = true;
                    // Rows that filled a write are written already; the rest at the next
                    // flush (each tick) or snapshot.
                    self.note_written();
                }
                if let Some(e) = self.shard.output().take_error() {
                    self.results_error.get_or_insert(e);
                }
            }
            Msg::Barrier(epoch) => {
                assert!(
                    !self.aligned[src],
                    "two barriers from one source before alignment"
                );
                self.aligned[src] = true;
                self.aligned_count += 1;
                if self.aligned_count == self.aligned.len() {
                    self.begin_snapshot(epoch);
                    self.aligned.iter_mut().for_each(|a| *a = false);
                    self.aligned_count = 0;
                }
            }
        }
        Ok(())
    }

    /// The alert engine's share of a snapshot, taken synchronously (its states are bounded
    /// per rule): its record's sync handle and position, and every (rule, key) state.
    fn snapshot_alerts(&mut self) -> (Option<OutputSync>, u64, Vec<AlertState>) {
        let Some(engine) = self.shard.hook::<Engine>() else {
            return (None, 0, Vec::new());
        };
        let (sync, written, position) = engine.sync_handle();
        if let Err(e) = written {
            self.results_error.get_or_insert(e);
        }
        (Some(sync), position, engine.snapshot())
    }

    /// The experiments engine's share of a snapshot, taken synchronously (its state is
    /// bounded per shard): its record's sync handle and position, and every key's
    /// cumulative state.
    fn snapshot_experiments(&mut self) -> (Option<OutputSync>, u64, Vec<CumulativeRecord>) {
        let Some(engine) = self.shard.hook::<ExperimentEngine>() else {
            return (None, 0, Vec::new());
        };
        let (sync, written, position) = engine.sync_handle();
        if let Err(e) = written {
            self.results_error.get_or_insert(e);
        }
        (Some(sync), position, engine.snapshot())
    }

    /// Begins the snapshot of checkpoint `epoch` (its barrier aligned): notes the output's
    /// length and the frontier, and marks the shard's state for copy-on-write; the windows
    /// are encoded in [`snapshot_step`](Self::snapshot_step)s.
    fn begin_snapshot(&mut self, epoch: u64) {
        let started = Instant::now();
        if self.snapshot.is_some() {
            // The coordinator begins a checkpoint only once the last is done, so this is
            // a checkpoint it gave up on: finish it (its report is ignored) and go on.
            self.finish_snapshot();
        }
        let output = self.shard.output();
        // The coordinator fsyncs it before it commits; this core goes on meanwhile. Rows
        // that cannot be written yet stay staged: that checkpoint fails (its sync finds them
        // missing from the file), and a later one commits once they are in.
        let (output_sync, written) = output.sync_handle();
        let aggregates_len = output.len();
        if let Err(e) = written {
            self.results_error.get_or_insert(e);
        }
        self.note_written();
        let (alerts_sync, alerts_len, alerts) = self.snapshot_alerts();
        let (experiments_sync, experiments_len, experiments) = self.snapshot_experiments();
        self.shard.begin_snapshot();
        self.snapshot = Some(SnapshotInFlight {
            epoch,
            aggregates_len,
            output: output_sync,
            alerts_sync,
            alerts_len,
            alerts,
            experiments_sync,
            experiments_len,
            experiments,
            resume_at: None,
        });
        self.note_stall(started);
    }

    /// Encodes a step of the snapshot being taken, of about
    /// [`SNAPSHOT_STEP_BUDGET_US`]; reports it once it is whole. While the core has input
    /// (`contended`), steps take at most [`SNAPSHOT_SHARE_PERCENT`] of its time.
    pub(super) fn snapshot_step(&mut self, contended: bool) -> ScanTurn {
        let Some(snap) = &mut self.snapshot else {
            return ScanTurn::Idle;
        };
        let now = Instant::now();
        if contended
            && let Some(at) = snap.resume_at
            && now < at
        {
            return ScanTurn::Until(at);
        }
        let budget = std::time::Duration::from_micros(SNAPSHOT_STEP_BUDGET_US);
        let done = self.shard.snapshot_step(now + budget);
        let took = now.elapsed();
        let share = SNAPSHOT_SHARE_PERCENT.clamp(1, 100);
        snap.resume_at = Some(now + took + took * (100 - share) / share);
        self.note_stall(now);
        if done {
            self.finish_snapshot();
            return ScanTurn::Idle;
        }
        ScanTurn::Busy
    }

    /// Ends the snapshot being taken (encoding what is left at once) and reports it.
    fn finish_snapshot(&mut self) {
        let (Some(snap), Some(taken)) = (self.snapshot.take(), self.shard.finish_snapshot()) else {
            return;
        };
        let state = ShardState {
            shard: self.id,
            aggregates_len: snap.aggregates_len,
            closed_through_ms: taken.closed_through_ms,
            windows: taken.windows.into_iter().map(ByteBuf::from).collect(),
            window_count: taken.window_count,
            gauges: taken.gauges,
            alerts_len: snap.alerts_len,
            alerts: snap.alerts,
            experiments_len: snap.experiments_len,
            experiments: snap.experiments,
        };
        let _ = self.reports.send(Report::Shard {
            epoch: snap.epoch,
            state,
            output: snap.output,
            records: snap
                .alerts_sync
                .into_iter()
                .chain(snap.experiments_sync)
                .collect(),
        });
    }

    /// The core's longest snapshot stall rises to the time since `started` if longer.
    fn note_stall(&self, started: Instant) {
        self.metrics.cores[self.id as usize]
            .checkpoint_stall_us_max
            .raise(started.elapsed().as_micros() as i64);
    }
}
