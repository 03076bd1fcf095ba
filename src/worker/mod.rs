//! The per-core loop: one pinned thread per core drives its sockets, its log partition, its
//! shard of the key space and its share of every checkpoint.
//!
//! One turn of the loop, in order, each step with a budget so no step starves the others:
//!
//! ```text
//!  inbound queues ─ fold events into the shard, apply watermarks, align barriers
//!  pending sends  ─ retry what did not fit a full queue (backpressure while any remain)
//!  control        ─ inject a requested checkpoint barrier; begin stopping
//!  replay | I/O   ─ replay the log after the checkpoint, then read sockets:
//!                   frame → append to the log → parse → route
//!  tick           ─ watermark, log flush policy, output flushes, idle connections
//!                   (a sweep at most once a second), metrics
//!  poll           ─ sleep until I/O, a doorbell or the next tick (after lingering
//!                   100 µs when the turn read only a little, so reads come in batches)
//! ```
//!
//! Each turn, up to the poll (lingering included), is recorded in the core's turn histogram:
//! its longest is the core's longest stall, the longest the inbound queues and control went
//! unread while the core was awake. The histograms (turns, and the owner side's ingest →
//! fold and close → write) are published from the tick every `LATENCY_PUBLISH_MS`.
//!
//! A TCP connection may be read by another core than the one that accepted it: see
//! [`Balance`].
//!
//! The two sides of a core: the input side (`input.rs`: framing, the log, parsing,
//! routing, replay, held input while storage fails) and the owner side (`owner.rs`: the
//! shard, its inbound queues, barrier alignment and the results record). They share only
//! the dead-letter file and the core's reports; the loop (`Phase`) drives both.
//!
//! In [`Mode::Replay`] (`sluice replay`) the core has no sockets and no log partition of
//! its own: it replays, then ends the data (a last watermark and a barrier, see
//! `Input::end_of_data`) and folds until it is told to exit.
//!
//! A checkpoint barrier is injected at the top of a turn, when every appended line has been
//! parsed and routed, so the recorded offset and the events sent before the barrier agree.

#![forbid(unsafe_code)]

mod input;
mod owner;

use owner::ScanTurn;
mod quiet;
mod storage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::checkpoint::{PartitionState, ShardState};
use crate::config::ListenerConfig;
use crate::deadletter::DeadLetter;
use crate::limits::TICK_MS;
use crate::log::{Appender, FlushTicket, Offset, Reader};
use crate::metrics::Metrics;
use crate::net::epoll::EpollBackend;
use crate::net::{BoundSocket, Handler};
use crate::parse::Parser;
use crate::route::{Doorbell, Inbound, Router};
use crate::window::{OutputSync, Shard};

pub use input::{Input, listener_rejects};

/// A turn that read less than this (but something) lingers before polling again.
const LINGER_BYTES: usize = 16 * 1024;
/// How long it lingers: bounds the latency it adds.
const LINGER: Duration = Duration::from_micros(100);

/// Shared control flags, set by the coordinator, read by every core each turn.
#[derive(Debug)]
pub struct Control {
    /// Highest checkpoint epoch requested.
    pub checkpoint_epoch: AtomicU64,
    /// Stop reading input, drain, and wait for the final checkpoint.
    pub stop: AtomicBool,
    /// Leave the loop (after the final checkpoint, or on failure).
    pub exit: AtomicBool,
    /// One per core, to wake it.
    pub doorbells: Vec<Doorbell>,
    /// Per partition of a core: retention never deletes log at or after this offset (the
    /// oldest offset any kept checkpoint replays from).
    pub retention_floors: Vec<AtomicU64>,
    /// Where accepted TCP connections go.
    pub balance: Balance,
    /// Per shard, what its results record's retention must keep.
    pub results: ResultsHandles,
}

/// Per shard: the readers of its results records and the positions of the newest committed
/// checkpoint in it, which its retention never passes.
#[derive(Debug)]
pub struct ResultsHandles {
    /// The record's readers (the query API's stream, notifiers, outputs register here).
    pub cursors: Vec<Arc<crate::results::Cursors>>,
    /// Position the newest committed checkpoint recorded.
    pub committed: Vec<Arc<AtomicU64>>,
    /// The readers of its `alerts/` record (the notifiers and the board).
    pub alert_cursors: Vec<Arc<crate::results::Cursors>>,
    /// Position of the `alerts/` record the newest committed checkpoint recorded.
    pub alerts_committed: Vec<Arc<AtomicU64>>,
    /// The readers of its `experiments/` record (stream clients).
    pub experiment_cursors: Vec<Arc<crate::results::Cursors>>,
    /// Position of the `experiments/` record the newest committed checkpoint recorded.
    pub experiments_committed: Vec<Arc<AtomicU64>>,
}

impl ResultsHandles {
    /// Handles for `shards` shards, with no reader and nothing committed.
    pub fn new(shards: usize) -> ResultsHandles {
        ResultsHandles {
            cursors: (0..shards).map(|_| Arc::default()).collect(),
            committed: (0..shards).map(|_| Arc::new(AtomicU64::new(0))).collect(),
            alert_cursors: (0..shards).map(|_| Arc::default()).collect(),
            alerts_committed: (0..shards).map(|_| Arc::new(AtomicU64::new(0))).collect(),
            experiment_cursors: (0..shards).map(|_| Arc::default()).collect(),
            experiments_committed: (0..shards).map(|_| Arc::new(AtomicU64::new(0))).collect(),
        }
    }
}

/// A TCP connection accepted by one core and passed, before anything was read from it, to a
/// core with fewer connections.
#[derive(Debug)]
pub struct Handoff {
    /// Listener index.
    pub listener: u16,
    /// The accepted connection.
    pub stream: std::net::TcpStream,
}

/// Balances TCP connections over the cores. The kernel spreads connections over the cores'
/// `SO_REUSEPORT` sockets by a hash of their addresses, which leaves a few connections
/// lopsided (4 over 2 cores land 3:1 or 4:0 five times in eight), and a core's connections
/// are all the input it reads. A core that accepts a connection while another serving core
/// has fewer passes it there.
#[derive(Debug)]
pub struct Balance {
    /// Per core: TCP connections open.
    open: Vec<AtomicUsize>,
    /// Per core: whether it serves its listeners (a core replaying or stopping takes none).
    serving: Vec<AtomicBool>,
    /// Per core: connections passed to it and not yet taken.
    queues: Vec<(Sender<Handoff>, Receiver<Handoff>)>,
}

/// Connections that may wait to be taken by one core.
const HANDOFFS_QUEUED_MAX: usize = 256;

impl Balance {
    /// Balancing over `cores` cores, none serving yet.
    pub fn new(cores: usize) -> Balance {
        Balance {
            open: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
            serving: (0..cores).map(|_| AtomicBool::new(false)).collect(),
            queues: (0..cores).map(|_| bounded(HANDOFFS_QUEUED_MAX)).collect(),
        }
    }

    /// Connections of `core`: open, and passed to it but not yet taken.
    fn load(&self, core: usize) -> usize {
        self.open[core].load(Ordering::Relaxed) + self.queues[core].1.len()
    }

    /// The serving core with the fewest connections, when it has fewer than `core`.
    fn target(&self, core: usize) -> Option<usize> {
        let mine = self.load(core);
        (0..self.open.len())
            .filter(|&c| c != core && self.serving[c].load(Ordering::Acquire))
            .map(|c| (self.load(c), c))
            .min()
            .filter(|&(load, _)| load < mine)
            .map(|(_, c)| c)
    }

    /// Passes `handoff`, accepted by `core`, to a core with fewer connections, ringing its
    /// doorbell; gives it back when `core` should keep it.
    pub fn offer(
        &self,
        core: usize,
        handoff: Handoff,
        doorbells: &[Doorbell],
    ) -> Result<(), Handoff> {
        let Some(target) = self.target(core) else {
            return Err(handoff);
        };
        match self.queues[target].0.try_send(handoff) {
            Ok(()) => {
                doorbells[target].ring();
                Ok(())
            }
            Err(TrySendError::Full(h) | TrySendError::Disconnected(h)) => Err(h),
        }
    }

    /// The next connection passed to `core`, if any.
    pub fn take(&self, core: usize) -> Option<Handoff> {
        self.queues[core].1.try_recv().ok()
    }

    /// True when a connection waits for `core`.
    pub fn waiting(&self, core: usize) -> bool {
        !self.queues[core].1.is_empty()
    }

    /// Marks `core` as serving (taking connections) or not.
    pub fn set_serving(&self, core: usize, serving: bool) {
        self.serving[core].store(serving, Ordering::Release);
    }

    /// Counts a connection opened on `core`.
    pub fn opened(&self, core: usize) {
        self.open[core].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed on `core`.
    pub fn closed(&self, core: usize) {
        self.open[core].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Control {
    /// Wakes every core.
    pub fn wake_all(&self) {
        for d in &self.doorbells {
            d.sleeping.store(true, Ordering::Release);
            d.ring();
        }
    }
}

/// What a core tells the coordinator.
#[derive(Debug)]
pub enum Report {
    /// The core finished replaying its partitions and serves its listeners.
    Replayed {
        /// Core.
        core: u16,
    },
    /// The core injected barrier `epoch` with its partitions at these offsets; its own
    /// partition is durable up to its offset once `log` is made durable (by the coordinator,
    /// before it commits the checkpoint).
    Partitions {
        /// Epoch.
        epoch: u64,
        /// Core.
        core: u16,
        /// Positions.
        partitions: Vec<PartitionState>,
        /// Everything the core's partition holds before its offset.
        log: FlushTicket,
    },
    /// The core's shard aligned barrier `epoch` and snapshotted; its output is durable up to
    /// the snapshot's length once `output` is synced (by the coordinator, before it commits).
    Shard {
        /// Epoch.
        epoch: u64,
        /// State.
        state: ShardState,
        /// The shard's aggregates file, written out up to the snapshot.
        output: OutputSync,
        /// The shard's other records (alerts, experiments), written out up to the snapshot.
        records: Vec<OutputSync>,
    },
    /// The core stopped reading input and drained its connections.
    Drained {
        /// Core.
        core: u16,
    },
    /// The core hit an error it cannot continue after.
    Failed {
        /// Core.
        core: u16,
        /// What happened.
        error: Error,
    },
}

/// Why a core stopped: each keeps its source, so the exit message carries the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener's socket could not be registered with the poller.
    #[error("cannot serve listener {listener}")]
    Listener {
        /// Listener index.
        listener: u16,
        /// Why.
        source: std::io::Error,
    },
    /// Waiting for input failed.
    #[error("cannot poll the sockets")]
    Poll(#[source] std::io::Error),
    /// A partition could not be read back for replay.
    #[error("replay of partition {partition}")]
    Replay {
        /// Partition.
        partition: u16,
        /// Why.
        source: crate::log::Error,
    },
    /// The results record could not take a closed window.
    #[error("cannot write the results record {}", path.display())]
    Results {
        /// The record.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What a core does with the log it replays, and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `sluice serve`: replay the partitions from the checkpoint, then serve the listeners.
    Serve,
    /// `sluice replay`: replay the batches whose ingest time is in `ingest_ms`, then end the
    /// data (see `Input::end_of_data`: every window closes) and fold until told to exit. The
    /// core has no listeners, no log partition of its own and takes no part in checkpoints.
    Replay {
        /// Batches whose ingest time (ms since the epoch) is in this range are parsed; the
        /// others are read and skipped.
        ingest_ms: std::ops::Range<i64>,
        /// Per partition, the offset its replay ends at: its end when the replay began, so a
        /// log that a running serve appends to is replayed as it was then.
        ends: Vec<(u16, Offset)>,
    },
}

impl Mode {
    /// True when a batch logged at `ingest_ms` is to be parsed.
    fn takes(&self, ingest_ms: i64) -> bool {
        match self {
            Mode::Serve => true,
            Mode::Replay {
                ingest_ms: range, ..
            } => range.contains(&ingest_ms),
        }
    }

    /// True when a batch of `partition` starting at `offset` is past the end of its replay.
    fn past_end(&self, partition: u16, offset: Offset) -> bool {
        match self {
            Mode::Serve => false,
            Mode::Replay { ends, .. } => ends
                .iter()
                .any(|(p, end)| *p == partition && offset >= *end),
        }
    }
}

/// The epoch of the barrier a core in [`Mode::Replay`] sends behind its last watermark: a
/// shard reports its snapshot (`Report::Shard`) once it has every core's, so the run knows
/// every shard has folded every event and closed every window.
pub const END_OF_DATA_EPOCH: u64 = 1;

/// A partition this core replays before it serves its listeners.
#[derive(Debug)]
pub struct ReplayTask {
    /// Partition number.
    pub partition: u16,
    /// First offset to replay.
    pub from: Offset,
    /// Reader positioned at `from`.
    pub reader: Reader,
}

/// Everything a core needs, assembled by `serve` before the thread starts.
#[derive(Debug)]
pub struct WorkerSetup {
    /// Core id (also its partition and shard number).
    pub id: u16,
    /// CPU to pin to, if any.
    pub pin: Option<core_affinity::CoreId>,
    /// Listeners, indexed by listener index.
    pub listeners: Arc<Vec<ListenerConfig>>,
    /// Stable log id of each listener (index → id).
    pub listener_log_ids: Arc<Vec<u16>>,
    /// Per listener: the experiment splitting its events, if any.
    pub splits: Vec<Option<crate::experiments::split::Split>>,
    /// This core's bound sockets: (listener index, socket).
    pub sockets: Vec<(u16, BoundSocket)>,
    /// This core's backend.
    pub backend: EpollBackend,
    /// Sending side.
    pub router: Router,
    /// Receiving side, one per source core.
    pub inbound: Vec<Inbound>,
    /// This core's partition (`None` in [`Mode::Replay`]: the core appends nothing).
    pub appender: Option<Appender>,
    /// Serve after the replay, or end the data.
    pub mode: Mode,
    /// Partitions to replay first (its own, and any left by a larger instance).
    pub replay: Vec<ReplayTask>,
    /// Partitions whose position this core reports, beside its own live one (replay-only ones).
    pub partitions: Vec<PartitionState>,
    /// Largest event time seen by this core's partitions at the checkpoint.
    pub max_event_ms: Option<i64>,
    /// This core's shard, restored.
    pub shard: Shard,
    /// Questions about the shard's open windows (the query API's).
    pub open_queries: crossbeam_channel::Receiver<crate::query::OpenRequest>,
    /// Dead letters.
    pub deadletter: DeadLetter,
    /// Allowed lateness in ms.
    pub allowed_lateness_ms: i64,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Control flags.
    pub control: Arc<Control>,
    /// To the coordinator.
    pub reports: Sender<Report>,
}

/// Runs a core until the coordinator says exit. Consumes the setup.
pub fn run(setup: WorkerSetup) {
    let core = setup.id;
    let reports = setup.reports.clone();
    if let Some(pin) = setup.pin
        && !core_affinity::set_for_current(pin)
    {
        tracing::debug!(core, "could not pin the thread to its CPU");
    }
    let (mut backend, sockets, mut ingest) = Input::new(setup);
    if let Err(error) = ingest.run(&mut backend, sockets) {
        tracing::error!(core, %error, "core failed");
        let _ = reports.send(Report::Failed { core, error });
    }
}

/// Where a core's run loop is. It only moves forward:
/// `Replaying → Serving → Draining → Drained`, or `Replaying → Draining` when a stop comes
/// during replay (replay then pauses where it is: the final checkpoint records its cursor);
/// in [`Mode::Replay`], `Replaying → Drained` once the data has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Replaying its partitions; its listeners are not served yet.
    Replaying,
    /// Serving its listeners.
    Serving,
    /// A stop was asked: no new connections; open ones are read until they are quiet or the
    /// deadline passes.
    Draining {
        /// When the connections still open are closed anyway.
        deadline: Instant,
    },
    /// Input drained; the core folds what its queues hold until the final checkpoint.
    Drained,
}

/// How long a stopping core reads its open connections before it closes them.
const DRAIN_MAX: Duration = Duration::from_secs(2);

impl Input {
    fn run(
        &mut self,
        backend: &mut EpollBackend,
        mut sockets: Vec<(u16, BoundSocket)>,
    ) -> Result<(), Error> {
        let mut next_tick = Instant::now();
        let mut phase = Phase::Replaying;
        self.hold_frontier_for_replay();
        loop {
            let turn_began = Instant::now();
            self.quiet.end_turn(turn_began);
            let inbound_more = self.owner.drain_inbound(&mut self.deadletter)?;
            // Rows of windows that just closed are written now, not at the next tick: one
            // write per advance that closed windows, never per event.
            if self.owner.take_closed()
                && !self.storage.output_failed
                && let Err(e) = self.owner.flush_output()
            {
                self.storage_failed(crate::metrics::StorageOp::Aggregates, &e);
            }
            let contended = inbound_more || self.last_turn_read > 0;
            let scan = self
                .owner
                .answer_open_queries(contended)
                .max(self.owner.snapshot_step(contended));
            if let Some(e) = self.owner.take_results_error() {
                self.storage_failed(crate::metrics::StorageOp::Aggregates, &e);
            }
            self.retry_sends();
            self.retry_storage(Instant::now());
            self.checkpoint_step()?;
            phase = self.advance_phase(phase, backend, &mut sockets)?;

            match phase {
                Phase::Replaying => self.replay_step()?,
                Phase::Serving | Phase::Draining { .. } => {
                    while let Some(h) = self.control.balance.take(self.id as usize) {
                        backend.adopt(h.listener, h.stream, self);
                    }
                    if self.replay.is_empty() {
                        backend.service(self);
                    }
                }
                Phase::Drained => {}
            }

            let now = Instant::now();
            if now >= next_tick {
                self.tick(now, backend)?;
                next_tick = now + Duration::from_millis(TICK_MS);
            }
            if self.control.exit.load(Ordering::Acquire) {
                self.finish();
                return Ok(());
            }

            let busy = inbound_more
                || scan == ScanTurn::Busy
                || (phase == Phase::Replaying && !self.router.blocked())
                || (backend.has_ready() && self.reading())
                || matches!(phase, Phase::Draining { .. });
            let read = std::mem::take(&mut self.turn_bytes);
            self.last_turn_read = read;
            self.quiet
                .set_turn_quiet(read == 0 && phase == Phase::Serving && self.reading());
            if !busy && read > 0 && read < LINGER_BYTES {
                // Input trickles in: let some gather before the next wake, so a read, a log
                // append and a routed batch carry many lines instead of a few.
                std::thread::sleep(LINGER);
            }
            let timeout = if busy {
                Some(Duration::ZERO)
            } else if self.router.blocked() {
                Some(Duration::from_millis(1))
            } else {
                let scan_at = match scan {
                    ScanTurn::Until(at) => Some(at),
                    _ => None,
                };
                let wake = [self.storage_retry_at(), backend.wake_at(), scan_at]
                    .into_iter()
                    .flatten()
                    .fold(next_tick, Instant::min);
                Some(wake.saturating_duration_since(Instant::now()))
            };
            // The turn ends here, before the poll: asleep, a doorbell wakes the core.
            self.turns.record(turn_began.elapsed());
            self.sleep(backend, timeout).map_err(Error::Poll)?;
        }
    }

    /// The phase after this turn's checks: serving once replay is done, draining once a stop
    /// is asked, drained once the open connections are quiet (or the drain's deadline passed).
    fn advance_phase(
        &mut self,
        phase: Phase,
        backend: &mut EpollBackend,
        sockets: &mut Vec<(u16, BoundSocket)>,
    ) -> Result<Phase, Error> {
        let stopping = self.control.stop.load(Ordering::Acquire);
        match phase {
            Phase::Replaying | Phase::Serving if stopping => {
                self.release_frontier_after_replay();
                self.control.balance.set_serving(self.id as usize, false);
                backend.close_listeners();
                sockets.clear();
                Ok(Phase::Draining {
                    deadline: Instant::now() + DRAIN_MAX,
                })
            }
            Phase::Replaying if self.replay.is_empty() => {
                self.release_frontier_after_replay();
                if matches!(self.mode, Mode::Replay { .. }) {
                    self.end_of_data();
                    self.report(Report::Replayed { core: self.id });
                    return Ok(Phase::Drained);
                }
                for (listener, socket) in sockets.drain(..) {
                    backend
                        .add_listener(listener, socket, self.idle_timeout(listener))
                        .map_err(|source| Error::Listener { listener, source })?;
                }
                self.control.balance.set_serving(self.id as usize, true);
                self.report(Report::Replayed { core: self.id });
                Ok(Phase::Serving)
            }
            Phase::Draining { deadline } => {
                let quiet = !backend.has_ready() && !self.router.blocked();
                if !quiet && Instant::now() < deadline {
                    return Ok(phase);
                }
                let conns: Vec<_> = backend.connections().collect();
                for conn in conns {
                    backend.close(conn, self);
                }
                self.router.flush();
                self.report(Report::Drained { core: self.id });
                Ok(Phase::Drained)
            }
            other => Ok(other),
        }
    }

    /// Polls, telling senders to ring the doorbell while this core sleeps.
    fn sleep(
        &mut self,
        backend: &mut EpollBackend,
        timeout: Option<Duration>,
    ) -> std::io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return backend.poll(timeout);
        }
        let doorbell = &self.control.doorbells[self.id as usize];
        doorbell.sleeping.store(true, Ordering::Release);
        // Pairs with the fence in `Doorbell::ring` (see there).
        std::sync::atomic::fence(Ordering::SeqCst);
        let timeout =
            if self.owner.inbound_waiting() || self.control.balance.waiting(self.id as usize) {
                Some(Duration::ZERO)
            } else {
                timeout
            };
        let result = backend.poll(timeout);
        doorbell.sleeping.store(false, Ordering::Release);
        result
    }

    fn report(&self, report: Report) {
        // The coordinator outlives every core; a send error means it already gave up.
        let _ = self.reports.send(report);
    }
}

/// The parsers of a core, by listener index.
pub(crate) fn parsers(listeners: &[ListenerConfig]) -> Vec<Parser> {
    listeners
        .iter()
        .map(|l| Parser::new(l.format, &l.options, &l.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_takes_batches_logged_in_its_range_up_to_each_partition_end() {
        let replay = Mode::Replay {
            ingest_ms: 1_000..2_000,
            ends: vec![(0, Offset(10)), (3, Offset(0))],
        };
        assert!(!replay.takes(999) && replay.takes(1_000) && replay.takes(1_999));
        assert!(!replay.takes(2_000), "--to is not included");
        assert!(!replay.past_end(0, Offset(9)) && replay.past_end(0, Offset(10)));
        assert!(
            replay.past_end(3, Offset(0)),
            "an empty partition has nothing to replay"
        );
        assert!(
            !replay.past_end(1, Offset(u64::MAX)),
            "a partition with no end is read on"
        );
        assert!(Mode::Serve.takes(i64::MIN) && !Mode::Serve.past_end(0, Offset(u64::MAX)));
    }
}
