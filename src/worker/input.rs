//! The core's state and its input side: framing → log → parse → route, and replay.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::owner::Owner;
use super::quiet::QuietClock;
use super::storage::{Held, Storage};
use super::{Control, END_OF_DATA_EPOCH, Error, Mode, ReplayTask, Report, WorkerSetup, parsers};
use crate::checkpoint::PartitionState;
use crate::config::{Format, ListenerConfig, Proto};
use crate::deadletter::DeadLetter;
use crate::experiments::split::Split;
use crate::framing::{Framing, StreamFramer, split_datagram};
use crate::limits::{EVENT_TIME_FUTURE_MS_MAX, LATENCY_PUBLISH_MS, UDP_DROPS_POLL_MS};
use crate::log::{Appender, BatchInfo, Damage};
use crate::metrics::{Metrics, Recorder, StorageOp};
use crate::net::epoll::EpollBackend;
use crate::net::{BoundSocket, ConnId, Handler};
use crate::parse::{Event, Parser, Reject};
use crate::route::{Msg, Router};
use crate::window::now_ms;

/// A core with no event for this long (or the allowed lateness, if longer) is idle: it no
/// longer holds back the combined watermark.
const SOURCE_IDLE_MS_MIN: i64 = 1_000;

/// Batches replayed per loop turn.
const REPLAY_BATCHES_PER_TICK: usize = 16;

/// Every reason a line of a `format` listener over `proto` is counted under in its
/// `rejected_total`, in [`Reject::ALL`] order: its framing's (stream or datagram) and its
/// parser's. The far-future check in `route_lines` adds `bad_timestamp` only where the parser
/// reads a time, which lists it already; late events are counted per core, not here.
pub fn listener_rejects(format: Format, proto: Proto) -> Vec<Reject> {
    let framing = match proto {
        Proto::Tcp => Framing::of_stream(format).rejects(),
        Proto::Udp => crate::framing::DATAGRAM_REJECTS,
    };
    Reject::ALL
        .iter()
        .copied()
        .filter(|r| framing.contains(r) || format.rejects().contains(r))
        .collect()
}

#[derive(Debug)]
struct ConnState {
    listener: u16,
    framer: StreamFramer,
}

/// A core's input side: framing, the log, parsing, routing and replay (the owner side is
/// [`Owner`]); it drives the backend as its [`Handler`].
#[derive(Debug)]
pub struct Input {
    pub(super) id: u16,
    listeners: Arc<Vec<ListenerConfig>>,
    listener_log_ids: Arc<Vec<u16>>,
    /// Log listener id → listener index, for replay.
    log_id_to_index: Vec<Option<u16>>,
    parsers: Vec<Parser>,
    /// Per listener: its experiment's split, if any.
    splits: Vec<Option<Split>>,
    pub(super) router: Router,
    /// The owner side: shard, inbound queues, barrier alignment.
    pub(super) owner: Owner,
    /// This core's log partition; `None` in [`Mode::Replay`].
    pub(super) appender: Option<Appender>,
    pub(super) replay: Vec<ReplayTask>,
    /// Serve after the replay, or end the data.
    pub(super) mode: Mode,
    /// The data has ended ([`Mode::Replay`]): the last watermark is sent, no other follows.
    ended: bool,
    /// Log listener ids of replayed lines whose listener is not configured, warned about.
    unknown_listeners: Vec<u16>,
    other_partitions: Vec<PartitionState>,
    pub(super) deadletter: DeadLetter,
    conns: Vec<Option<ConnState>>,
    open_per_listener: Vec<u32>,
    committed: Vec<BatchInfo>,
    /// Largest event time routed from this core.
    max_event_ms: Option<i64>,
    /// Time this core spent finding nothing to read since it last routed an event.
    pub(super) quiet: QuietClock,
    /// Bytes read from sockets since the loop last looked.
    pub(super) turn_bytes: usize,
    /// Bytes the previous turn read (input is flowing: queries take only their share).
    pub(super) last_turn_read: usize,
    /// Watermark (and idleness) last sent to every shard.
    sent_watermark: Option<(i64, bool)>,
    allowed_lateness_ms: i64,
    injected_epoch: u64,
    blocked_since: Option<Instant>,
    /// Held input and failed writes (see `storage.rs`).
    pub(super) storage: Storage,
    /// Background flushes (count, µs) already added to the metrics.
    flushes_seen: (u64, u64),
    /// When the kernel's UDP drop counts were last read.
    udp_drops_read_at: Instant,
    /// Turns of the loop since the last publish (see `Latency::CoreTurn`).
    pub(super) turns: Recorder,
    /// When the latencies were last published.
    latency_published_at: Instant,
    pub(super) metrics: Arc<Metrics>,
    pub(super) control: Arc<Control>,
    pub(super) reports: Sender<Report>,
}

impl Input {
    /// Splits a setup into the backend, the sockets still to serve, and the core state.
    pub(super) fn new(setup: WorkerSetup) -> (EpollBackend, Vec<(u16, BoundSocket)>, Input) {
        let max_log_id = setup.listener_log_ids.iter().copied().max().unwrap_or(0) as usize;
        let mut log_id_to_index = vec![None; max_log_id + 1];
        for (index, id) in setup.listener_log_ids.iter().enumerate() {
            log_id_to_index[*id as usize] = Some(index as u16);
        }
        let ingest = Input {
            id: setup.id,
            parsers: parsers(&setup.listeners),
            splits: setup.splits,
            open_per_listener: vec![0; setup.listeners.len()],
            listeners: setup.listeners,
            listener_log_ids: setup.listener_log_ids,
            log_id_to_index,
            router: setup.router,
            owner: Owner::new(
                setup.id,
                setup.shard,
                setup.inbound,
                setup.open_queries,
                setup.metrics.clone(),
                setup.reports.clone(),
            ),
            appender: setup.appender,
            replay: setup.replay,
            mode: setup.mode,
            ended: false,
            unknown_listeners: Vec::new(),
            other_partitions: setup.partitions,
            deadletter: setup.deadletter,
            conns: Vec::new(),
            committed: Vec::new(),
            max_event_ms: setup.max_event_ms,
            quiet: QuietClock::new(Instant::now()),
            turn_bytes: 0,
            last_turn_read: 0,
            sent_watermark: None,
            allowed_lateness_ms: setup.allowed_lateness_ms,
            injected_epoch: setup.control.checkpoint_epoch.load(Ordering::Acquire),
            blocked_since: None,
            storage: Storage::new(setup.id),
            flushes_seen: (0, 0),
            udp_drops_read_at: Instant::now(),
            turns: Recorder::new(),
            latency_published_at: Instant::now(),
            metrics: setup.metrics,
            control: setup.control,
            reports: setup.reports,
        };
        (setup.backend, setup.sockets, ingest)
    }

    /// Parses and routes the batches just committed to the log, whose lines were read at
    /// `read_at`.
    fn route_committed(&mut self, read_at: Instant) {
        self.router.set_read_at(read_at);
        // Batches are committed only by an appender.
        let Some(appender) = &self.appender else {
            self.committed.clear();
            return;
        };
        for batch in self.committed.drain(..) {
            let Some(index) = self
                .log_id_to_index
                .get(batch.listener_id as usize)
                .copied()
                .flatten()
            else {
                continue;
            };
            let lines = appender.lines(&batch);
            route_lines(
                RouteCtx {
                    parser: &mut self.parsers[index as usize],
                    split: self.splits.get_mut(index as usize).and_then(Option::as_mut),
                    router: &mut self.router,
                    deadletter: &mut self.deadletter,
                    metrics: &self.metrics,
                    core: self.id,
                    listener: index,
                    listener_name: &self.listeners[index as usize].name,
                    max_event_ms: &mut self.max_event_ms,
                },
                lines,
                batch.ingest_time_ms,
            );
            self.metrics.cores[self.id as usize].listeners[index as usize]
                .lines_total
                .add(u64::from(batch.count));
            self.quiet.reset();
        }
        self.router.flush();
        self.note_blocked();
    }

    /// Frames `bytes` from a listener into one log batch (several when a segment rolls),
    /// and routes what the log took. Lines the log cannot take (a write failed) are held,
    /// in order, and the core stops reading until they are in (see `storage.rs`).
    fn append_framed(
        &mut self,
        listener: u16,
        feed: impl FnOnce(&mut dyn FnMut(&[u8]), &mut dyn FnMut(Reject, &[u8])),
    ) {
        let read_at = Instant::now();
        let now = now_ms();
        if self.storage.holding() {
            // Lines keep their order behind those already held.
            let counters = &self.metrics.cores[self.id as usize].listeners[listener as usize];
            let name = &self.listeners[listener as usize].name;
            let (storage, deadletter) = (&mut self.storage, &mut self.deadletter);
            feed(
                &mut |line| storage.hold(listener, now, line),
                &mut |reason, raw| {
                    counters.rejected_total[reason.index()].add(1);
                    deadletter.reject(now, name, reason, raw);
                },
            );
            return;
        }
        let mut unappended = Storage::empty_held(listener, now);
        let failure = self.append_lines(listener, now, &mut unappended, feed);
        // Nothing was held before: these go first.
        self.storage.put_back_front(unappended);
        self.route_committed(read_at);
        if let Some((op, e)) = failure {
            self.storage_failed(op, &e);
        }
    }

    /// Appends the lines `feed` gives, as batches of `listener` read at `ingest_ms`. Lines
    /// the log could not take go to `unappended`, in order, with the failure returned
    /// (`LogFlush` when the lines are in the log but could not be made durable under
    /// `flush = always`).
    fn append_lines(
        &mut self,
        listener: u16,
        ingest_ms: i64,
        unappended: &mut Held,
        feed: impl FnOnce(&mut dyn FnMut(&[u8]), &mut dyn FnMut(Reject, &[u8])),
    ) -> Option<(StorageOp, crate::log::Error)> {
        let counters = &self.metrics.cores[self.id as usize].listeners[listener as usize];
        let name = &self.listeners[listener as usize].name;
        let deadletter = &mut self.deadletter;
        let mut writer = self
            .appender
            .as_mut()
            .expect("a core without a log partition has no listeners")
            .begin(self.listener_log_ids[listener as usize], ingest_ms);
        let mut error = None;
        feed(
            &mut |line| {
                if error.is_none() {
                    match writer.push(line) {
                        Ok(()) => return,
                        Err(crate::log::Error::LineTooLong { .. }) => {
                            // Framing cuts lines at `max_line_bytes`, which config keeps
                            // below the log's bound: not reached, but never held forever.
                            counters.rejected_total[Reject::TooLong.index()].add(1);
                            return;
                        }
                        Err(e) => {
                            unappended_failed(&writer, unappended);
                            error = Some((StorageOp::LogAppend, e));
                        }
                    }
                }
                unappended.push(line);
            },
            &mut |reason, raw| {
                counters.rejected_total[reason.index()].add(1);
                deadletter.reject(ingest_ms, name, reason, raw);
            },
        );
        if error.is_none()
            && let Err(e) = writer.seal()
        {
            if writer.failed_lines().is_some() {
                unappended_failed(&writer, unappended);
                error = Some((StorageOp::LogAppend, e));
            } else {
                error = Some((StorageOp::LogFlush, e));
            }
        }
        // Sealed (or failed) already: this only hands over the committed batches.
        let _ = writer.finish(&mut self.committed);
        error
    }

    /// Records a failed write: input is held and retried (see `storage.rs`).
    pub(super) fn storage_failed(&mut self, op: StorageOp, error: &dyn std::fmt::Display) {
        match op {
            StorageOp::LogFlush => self.storage.log_flush_failed = true,
            StorageOp::Aggregates => self.storage.output_failed = true,
            StorageOp::LogAppend => {}
        }
        self.storage
            .failed(op, error, &self.metrics.cores[self.id as usize]);
    }

    /// Retries what failed, when its back-off has passed: failed flushes first, then the
    /// held lines in order. Ends the episode when everything is written.
    pub(super) fn retry_storage(&mut self, now: Instant) {
        if !self.storage.retry_due(now) {
            return;
        }
        if self.storage.log_flush_failed {
            match self.appender.as_mut().map_or(Ok(()), Appender::flush) {
                Ok(()) => self.storage.log_flush_failed = false,
                Err(e) => return self.storage_failed(StorageOp::LogFlush, &e),
            }
        }
        if self.storage.output_failed {
            match self.owner.flush_output() {
                Ok(()) => self.storage.output_failed = false,
                Err(e) => return self.storage_failed(StorageOp::Aggregates, &e),
            }
        }
        while let Some(held) = self.storage.take_held() {
            // Held lines were read when they were held: their latency includes the wait.
            let held_ms = now_ms().saturating_sub(held.ingest_ms).max(0) as u64;
            let read_at = now
                .checked_sub(Duration::from_millis(held_ms))
                .unwrap_or(now);
            let mut unappended = Storage::empty_held(held.listener, held.ingest_ms);
            let failure = self.append_lines(
                held.listener,
                held.ingest_ms,
                &mut unappended,
                |on_line, _| held.lines().for_each(on_line),
            );
            self.storage.put_back_front(unappended);
            self.route_committed(read_at);
            if let Some((op, e)) = failure {
                return self.storage_failed(op, &e);
            }
        }
        self.storage
            .maybe_recovered(&self.metrics.cores[self.id as usize]);
    }

    /// When the next storage retry is due, while writes fail.
    pub(super) fn storage_retry_at(&self) -> Option<Instant> {
        self.storage.retry_at()
    }

    /// The partition being replayed has no more batches: reports the damage its reader
    /// stepped over and drops the task.
    fn replay_done(&mut self) {
        let Some(task) = self.replay.last() else {
            return;
        };
        let damage = task.reader.damage();
        if damage != Damage::default() {
            let core = &self.metrics.cores[self.id as usize];
            core.log_bad_batches_total.add(damage.bad_batches);
            core.log_lost_lines_total.add(damage.lost_lines);
            tracing::error!(
                core = self.id,
                partition = task.partition,
                bad_batches = damage.bad_batches,
                lost_lines = damage.lost_lines,
                "replay found damage in the log; the lines of the damaged batches are \
                 lost, every other line is counted"
            );
        }
        if let Some(tail) = task.reader.tail() {
            // The appender's recovery cuts a torn tail; a replay without one (a replay of
            // another data dir, or a partition no core appends to) stops before it.
            tracing::warn!(
                core = self.id,
                partition = task.partition,
                offset = tail.offset.0,
                segment = %tail.segment.display(),
                file_pos = tail.file_pos,
                reason = %tail.reason,
                "replay stopped at the last valid batch: what follows is not a valid batch \
                 (a torn tail, or a batch being written) and was not read"
            );
        }
        tracing::info!(core = self.id, partition = task.partition, "replay done");
        let done = self.replay.pop().expect("a task is being replayed");
        if done.partition != self.id
            && let Some(p) = self
                .other_partitions
                .iter_mut()
                .find(|p| p.partition == done.partition)
        {
            p.next_offset = done.from.0;
        }
    }

    /// Replays a few batches of the partitions left to replay.
    pub(super) fn replay_step(&mut self) -> Result<(), Error> {
        if self.router.blocked() {
            return Ok(());
        }
        // Replayed lines are read now, from the log.
        self.router.set_read_at(Instant::now());
        for _ in 0..REPLAY_BATCHES_PER_TICK {
            let Some(task) = self.replay.last_mut() else {
                return Ok(());
            };
            let batch = task.reader.next_batch().map_err(|source| Error::Replay {
                partition: task.partition,
                source,
            })?;
            let Some(batch) = batch else {
                self.replay_done();
                continue;
            };
            let info = batch.info;
            if self.mode.past_end(task.partition, info.first_offset) {
                self.replay_done();
                continue;
            }
            let skip = task.from.0.saturating_sub(info.first_offset.0);
            let end = info.first_offset.0 + u64::from(info.count);
            let index = self
                .log_id_to_index
                .get(info.listener_id as usize)
                .copied()
                .flatten();
            if !self.mode.takes(info.ingest_time_ms) {
                // Outside `sluice replay --from/--to`: read, not parsed.
            } else if let Some(index) = index {
                if matches!(self.mode, Mode::Replay { .. }) {
                    // A replay's lines are its input: counted as the listener's lines.
                    self.metrics.cores[self.id as usize].listeners[index as usize]
                        .lines_total
                        .add(u64::from(info.count) - skip.min(u64::from(info.count)));
                }
                route_lines(
                    RouteCtx {
                        parser: &mut self.parsers[index as usize],
                        split: self.splits.get_mut(index as usize).and_then(Option::as_mut),
                        router: &mut self.router,
                        deadletter: &mut self.deadletter,
                        metrics: &self.metrics,
                        core: self.id,
                        listener: index,
                        listener_name: &self.listeners[index as usize].name,
                        max_event_ms: &mut self.max_event_ms,
                    },
                    batch.lines.skip(skip as usize),
                    info.ingest_time_ms,
                );
            } else if !self.unknown_listeners.contains(&info.listener_id) {
                // Once per listener: a log may hold millions of its batches.
                self.unknown_listeners.push(info.listener_id);
                tracing::warn!(
                    core = self.id,
                    partition = task.partition,
                    listener_id = info.listener_id,
                    "replay skips the lines of a listener that is not configured (warned once \
                     per listener)"
                );
            }
            task.from = crate::log::Offset(end.max(task.from.0));
            self.metrics.cores[self.id as usize]
                .replayed_lines_total
                .add(u64::from(info.count));
            self.quiet.reset();
            self.router.flush();
            if self.router.blocked() {
                break;
            }
        }
        self.note_blocked();
        Ok(())
    }

    /// Injects a requested checkpoint barrier.
    pub(super) fn checkpoint_step(&mut self) -> Result<(), Error> {
        let requested = self.control.checkpoint_epoch.load(Ordering::Acquire);
        if requested <= self.injected_epoch {
            return Ok(());
        }
        // A core without a log partition (a replay) takes no part in checkpoints.
        let Some(appender) = self.appender.as_mut() else {
            return Ok(());
        };
        self.injected_epoch = requested;
        let started = Instant::now();
        self.router.flush();
        // The coordinator makes the log durable up to here before it commits; this core
        // goes on meanwhile.
        let log = appender.flush_ticket();
        let mut partitions = self.other_partitions.clone();
        let own = match self.replay.iter().find(|t| t.partition == self.id) {
            Some(task) => task.from.0,
            None => appender.next_offset().0,
        };
        for task in &self.replay {
            if let Some(p) = partitions
                .iter_mut()
                .find(|p| p.partition == task.partition)
            {
                p.next_offset = task.from.0;
            }
        }
        for p in &mut partitions {
            p.max_event_ms = self.max_event_ms;
        }
        partitions.push(PartitionState {
            partition: self.id,
            next_offset: own,
            max_event_ms: self.max_event_ms,
        });
        self.report(Report::Partitions {
            epoch: requested,
            core: self.id,
            partitions,
            log,
        });
        self.router.broadcast(|| Msg::Barrier(requested));
        self.note_blocked();
        self.metrics.cores[self.id as usize]
            .checkpoint_stall_us_max
            .raise(started.elapsed().as_micros() as i64);
        Ok(())
    }

    /// Before replay: every shard starts with each source holding its frontier at the
    /// earliest time (`Shard::hold_every_source`), which this core's first watermark
    /// replaces. A source that has sent no watermark would not hold a frontier, so a core
    /// that started or replayed sooner would close windows that the other cores' logged
    /// events, not replayed yet, belong in: they would come late, and a recovery would
    /// count them differently from the run that logged them.
    pub(super) fn hold_frontier_for_replay(&mut self) {
        self.sent_watermark.get_or_insert((i64::MIN, false));
    }

    /// After replay: a core whose replay gave it no event time lets go of the frontier it
    /// held (it is idle until events come).
    pub(super) fn release_frontier_after_replay(&mut self) {
        if self.max_event_ms.is_none() && self.sent_watermark == Some((i64::MIN, false)) {
            self.sent_watermark = Some((i64::MIN, true));
            self.router.broadcast(|| Msg::Watermark {
                ms: i64::MIN,
                idle: true,
            });
            self.note_blocked();
        }
    }

    /// [`Mode::Replay`], once this core's partitions are replayed: a last watermark at the
    /// latest end of a window holding the newest event time it routed, marked idle so that
    /// it holds back no core still replaying, then the barrier [`END_OF_DATA_EPOCH`] behind
    /// it. Once every core has sent both, every source of a shard is idle and the frontier is
    /// the largest of their last watermarks: every window any core's events opened closes,
    /// and the rules decide through that time, not beyond. A shard aligns the barrier after
    /// every core's last watermark, and its snapshot report tells the run it is done. The
    /// tick sends no watermark after this (its quiet clock would move the frontier on with
    /// the wall clock).
    pub(super) fn end_of_data(&mut self) {
        if let Some(max) = self.max_event_ms {
            let end = self.owner.shard.last_end_holding(max);
            self.sent_watermark = Some((end, true));
            self.router.broadcast(|| Msg::Watermark {
                ms: end,
                idle: true,
            });
        }
        self.ended = true;
        self.router.broadcast(|| Msg::Barrier(END_OF_DATA_EPOCH));
        self.note_blocked();
    }

    /// The idle timeout of listener `listener`'s connections.
    pub(super) fn idle_timeout(&self, listener: u16) -> Option<Duration> {
        let config = &self.listeners[listener as usize];
        match config.proto {
            Proto::Tcp => config.idle_timeout(),
            Proto::Udp => None,
        }
    }

    /// Periodic work: watermark, flush policy, output flushes, idle connections, metrics.
    pub(super) fn tick(&mut self, now: Instant, backend: &mut EpollBackend) -> Result<(), Error> {
        backend.sweep_idle(self);
        if let Some(max) = self.max_event_ms.filter(|_| !self.ended) {
            // Event time advances with the data, and with the time this core spent finding
            // nothing to read while no data comes (not the time since the last event: a
            // stopped or starved process reads its backlog before windows close for it).
            let idle_ms = self.quiet.quiet().as_millis() as i64;
            let ms = max
                .saturating_sub(self.allowed_lateness_ms)
                .saturating_add(idle_ms);
            let idle = idle_ms >= self.allowed_lateness_ms.max(SOURCE_IDLE_MS_MIN);
            let changed = match self.sent_watermark {
                None => true,
                Some((sent, was_idle)) => ms > sent || idle != was_idle,
            };
            if changed {
                let ms = self.sent_watermark.map_or(ms, |(sent, _)| sent.max(ms));
                self.sent_watermark = Some((ms, idle));
                self.router.broadcast(|| Msg::Watermark { ms, idle });
                self.note_blocked();
            }
        }
        self.tick_log(now);
        if !self.storage.output_failed
            && let Err(e) = self.owner.flush_output()
        {
            self.storage_failed(StorageOp::Aggregates, &e);
        }
        self.deadletter.flush();
        if now
            .saturating_duration_since(self.latency_published_at)
            .as_millis()
            >= u128::from(LATENCY_PUBLISH_MS)
        {
            self.latency_published_at = now;
            self.publish_latency(now);
        }
        let m = &self.metrics.cores[self.id as usize];
        if let Some(appender) = &self.appender {
            m.log_next_offset.set(appender.next_offset().0 as i64);
            m.log_flushed_offset.set(appender.flushed_offset().0 as i64);
        }
        m.pending_batches.set(self.router.pending_len() as i64);
        m.queue_depth
            .set(self.owner.inbound.iter().map(|i| i.rx.len()).sum::<usize>() as i64);
        m.windows_open.set(self.owner.shard.open_windows() as i64);
        m.keys.set(self.owner.shard.keys() as i64);
        m.watermark_ms.set(self.owner.shard.closed_through_ms());
        if now
            .saturating_duration_since(self.udp_drops_read_at)
            .as_millis()
            >= u128::from(UDP_DROPS_POLL_MS)
        {
            self.udp_drops_read_at = now;
            let listeners = &m.listeners;
            if let Err(e) = backend.udp_drops(|l, n| listeners[l as usize].udp_dropped_total.add(n))
            {
                tracing::debug!(core = self.id, error = %e, "reading UDP drops failed");
            }
        }
        Ok(())
    }

    /// The tick's share for the log partition (when the core has one): retention floor,
    /// flush policy, background flushes into the metrics.
    fn tick_log(&mut self, now: Instant) {
        let Some(appender) = self.appender.as_mut() else {
            return;
        };
        let floor = self.control.retention_floors[self.id as usize].load(Ordering::Acquire);
        appender.set_retention_floor(crate::log::Offset(floor));
        let flushed = appender.maybe_flush(now);
        let (flushes, flush_us) = appender.background_flushes();
        let m = &self.metrics.cores[self.id as usize];
        m.log_flushes_total.add(flushes - self.flushes_seen.0);
        m.log_flush_us_total.add(flush_us - self.flushes_seen.1);
        self.flushes_seen = (flushes, flush_us);
        if let Err(e) = flushed {
            self.storage_failed(StorageOp::LogFlush, &e);
        }
    }

    /// Publishes the latency histograms recorded since the last call, the core's and its
    /// owner side's (a histogram the admin thread is reading waits for the next call).
    pub(super) fn publish_latency(&mut self, now: Instant) {
        self.metrics.cores[self.id as usize]
            .latency
            .turn
            .publish(&mut self.turns, now);
        self.owner.publish_latency(now);
    }

    /// Retries pending sends and tracks time spent blocked.
    pub(super) fn retry_sends(&mut self) {
        if self.router.blocked() {
            self.router.retry();
            self.note_blocked();
        }
    }

    fn note_blocked(&mut self) {
        match (self.router.blocked(), self.blocked_since) {
            (true, None) => self.blocked_since = Some(Instant::now()),
            (false, Some(since)) => {
                self.metrics.cores[self.id as usize]
                    .backpressure_ns_total
                    .add(since.elapsed().as_nanos() as u64);
                self.blocked_since = None;
            }
            _ => {}
        }
    }

    /// Last work before the thread ends.
    pub(super) fn finish(&mut self) {
        if self.storage.held_lines() > 0 {
            tracing::error!(
                core = self.id,
                lines = self.storage.held_lines(),
                "exiting with lines read but never written to the log (writes kept failing)"
            );
        }
        if let Some(Err(e)) = self.appender.as_mut().map(Appender::flush) {
            tracing::error!(core = self.id, error = %e, "final log flush failed");
        }
        if let Err(e) = self.owner.flush_output() {
            tracing::error!(core = self.id, error = %e, "final aggregates flush failed");
        }
        self.publish_latency(Instant::now());
        self.deadletter.flush();
    }
}

impl Handler for Input {
    fn may_accept(&mut self, listener: u16) -> bool {
        self.open_per_listener[listener as usize]
            < self.listeners[listener as usize].max_connections
    }

    fn opened(&mut self, conn: ConnId, listener: u16) {
        let config = &self.listeners[listener as usize];
        let framing = Framing::of_stream(config.format);
        if self.conns.len() <= conn {
            self.conns.resize_with(conn + 1, || None);
        }
        self.conns[conn] = Some(ConnState {
            listener,
            framer: StreamFramer::new(config.max_line_bytes, framing),
        });
        self.open_per_listener[listener as usize] += 1;
        let m = &self.metrics.cores[self.id as usize].listeners[listener as usize];
        m.connections_total.add(1);
        self.control.balance.opened(self.id as usize);
        m.connections_open
            .set(i64::from(self.open_per_listener[listener as usize]));
    }

    fn place(&mut self, listener: u16, stream: std::net::TcpStream) -> Option<std::net::TcpStream> {
        let handoff = super::Handoff { listener, stream };
        match self
            .control
            .balance
            .offer(self.id as usize, handoff, &self.control.doorbells)
        {
            Ok(()) => {
                self.metrics.cores[self.id as usize].listeners[listener as usize]
                    .connections_handed_off_total
                    .add(1);
                None
            }
            Err(kept) => Some(kept.stream),
        }
    }

    fn refused(&mut self, listener: u16) {
        self.metrics.cores[self.id as usize].listeners[listener as usize]
            .connections_refused_total
            .add(1);
    }

    fn displaced(&mut self, listener: u16) {
        self.metrics.cores[self.id as usize].listeners[listener as usize]
            .connections_displaced_total
            .add(1);
    }

    fn timed_out(&mut self, listener: u16) {
        self.metrics.cores[self.id as usize].listeners[listener as usize]
            .connections_timed_out_total
            .add(1);
    }

    fn accept_failed(&mut self, listener: u16, error: &std::io::Error, episode_began: bool) {
        self.metrics.cores[self.id as usize].listeners[listener as usize]
            .accept_errors_total
            .add(1);
        if episode_began {
            tracing::warn!(
                core = self.id,
                listener = %self.listeners[listener as usize].name,
                %error,
                "accept failed: pausing the listener, retrying with a growing pause (logged once)"
            );
        }
    }

    fn accepting_again(&mut self, listener: u16) {
        tracing::info!(
            core = self.id,
            listener = %self.listeners[listener as usize].name,
            "accepting connections again"
        );
    }

    fn data(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(state) = self.conns.get_mut(conn).and_then(Option::take) else {
            return;
        };
        let listener = state.listener;
        self.turn_bytes += bytes.len();
        self.metrics.cores[self.id as usize].listeners[listener as usize]
            .bytes_total
            .add(bytes.len() as u64);
        let mut state = state;
        self.append_framed(listener, |on_line, on_reject| {
            state
                .framer
                .feed(bytes, &mut |l| on_line(l), &mut |r, b| on_reject(r, b));
        });
        self.conns[conn] = Some(state);
    }

    fn closed(&mut self, conn: ConnId) {
        let Some(mut state) = self.conns.get_mut(conn).and_then(Option::take) else {
            return;
        };
        let listener = state.listener;
        self.append_framed(listener, |on_line, on_reject| {
            state
                .framer
                .finish(&mut |l| on_line(l), &mut |r, b| on_reject(r, b));
        });
        self.open_per_listener[listener as usize] -= 1;
        self.control.balance.closed(self.id as usize);
        self.metrics.cores[self.id as usize].listeners[listener as usize]
            .connections_open
            .set(i64::from(self.open_per_listener[listener as usize]));
    }

    fn datagrams(&mut self, listener: u16, buf: &[u8], lens: &[u32]) {
        self.turn_bytes += buf.len();
        self.metrics.cores[self.id as usize].listeners[listener as usize]
            .bytes_total
            .add(buf.len() as u64);
        let max_line = self.listeners[listener as usize].max_line_bytes;
        self.append_framed(listener, |on_line, on_reject| {
            let mut start = 0usize;
            for len in lens {
                let end = start + *len as usize;
                split_datagram(
                    &buf[start..end],
                    max_line,
                    &mut |l| on_line(l),
                    &mut |r, b| on_reject(r, b),
                );
                start = end;
            }
        });
    }

    fn reading(&self) -> bool {
        !self.router.blocked() && !self.storage.failing()
    }
}

struct RouteCtx<'a> {
    parser: &'a mut Parser,
    split: Option<&'a mut Split>,
    router: &'a mut Router,
    deadletter: &'a mut DeadLetter,
    metrics: &'a Metrics,
    core: u16,
    listener: u16,
    listener_name: &'a str,
    max_event_ms: &'a mut Option<i64>,
}

/// Parses lines and routes their events; rejected lines are counted and dead-lettered.
fn route_lines<'l>(ctx: RouteCtx<'_>, lines: impl Iterator<Item = &'l [u8]>, ingest_ms: i64) {
    let counters = &ctx.metrics.cores[ctx.core as usize].listeners[ctx.listener as usize];
    let mut events = 0u64;
    let mut max_seen = i64::MIN;
    let future_limit_ms = ingest_ms.saturating_add(EVENT_TIME_FUTURE_MS_MAX);
    let mut split = ctx.split;
    for line in lines {
        let router = &mut *ctx.router;
        let mut future = false;
        let parsed = ctx.parser.parse(line, ingest_ms, &mut |event| {
            // One far-future timestamp would drag the watermark ahead and make every other
            // event late: such events are rejected instead.
            if event.time_ms > future_limit_ms {
                future = true;
                return;
            }
            max_seen = max_seen.max(event.time_ms);
            match split.as_deref_mut() {
                // The arm's key goes where the key goes: every arm of a key on one shard.
                Some(split) => {
                    let (key, unit) = split.tag(event.key, event.unit);
                    router.push_as(&Event { key, ..event }, event.key, unit);
                }
                None => router.push(&event),
            }
            events += 1;
        });
        match parsed {
            Ok(_) if future => {
                counters.rejected_total[Reject::BadTimestamp.index()].add(1);
                ctx.deadletter
                    .reject(ingest_ms, ctx.listener_name, Reject::BadTimestamp, line);
            }
            Ok(_) => {}
            Err(reason) => {
                counters.rejected_total[reason.index()].add(1);
                ctx.deadletter
                    .reject(ingest_ms, ctx.listener_name, reason, line);
            }
        }
    }
    counters.events_total.add(events);
    if events > 0 {
        *ctx.max_event_ms = Some(ctx.max_event_ms.map_or(max_seen, |m| m.max(max_seen)));
    }
}

/// Moves the lines of `writer`'s failed batch (if any) to `unappended`.
fn unappended_failed(writer: &crate::log::BatchWriter<'_>, unappended: &mut Held) {
    if let Some(lines) = writer.failed_lines() {
        lines.for_each(|l| unappended.push(l));
    }
}
