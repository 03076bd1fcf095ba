//! Flushing: the offset tracker of a partition (`durable ≤ flushed ≤ written`) and the one
//! background thread that makes sealed segments durable (under every policy), keeps a
//! preallocated spare segments ready for the next rolls, and flushes every partition under
//! `flush = interval`, so the cores never msync or preallocate on their hot path.
//!
//! A roll does not wait for the sealed segment to reach the disk: the segment joins the
//! tracker's sealing queue and the next one is created at once. The queue is drained
//! oldest first, by the flusher thread or by whoever flushes synchronously, before anything
//! of the current segment; a segment's index gets its seal entry only once the segment is
//! durable. So the durable offset never passes the end of a segment that is not on disk,
//! and an index seal found after a crash proves its segment was durable (recovery relies on
//! it to tell a segment torn by an OS crash from a sealed one). At most
//! [`SEALS_IN_FLIGHT_MAX`](super::SEALS_IN_FLIGHT_MAX) segments wait; a roll beyond that
//! waits for the oldest (the disk is slower than the input).
//!
//! - written: committed into the mapping (readers can see it).
//! - flushed: its bytes were written back (msync returned).
//! - durable: flushed, and the segment file's size and directory entry were synced too (they
//!   are after a segment is created or reopened); what checkpoints rely on.
//!
//! The appender publishes its written position and offset with two release stores per
//! batch; flushing (by the flusher thread, or by the core in [`Tracker::flush_to`]) takes the
//! tracker's mutex only to snapshot and to advance the flushed position, never while it
//! msyncs, and publishes the offsets with `fetch_max`, so a core never waits for the flusher.
//! The flusher holds a [`SegmentSync`] (an `Arc` of the mapping): a segment is never unmapped
//! while it syncs it. Segments are never truncated while the process runs.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::index::IndexWriter;
use super::segment::{self, SegmentSync, Spare};
use super::{Error, Offset};

/// A sealed segment on its way to the disk.
#[derive(Debug)]
struct Sealing {
    /// Identifies it in the queue (its base offset is not unique once a partition restarts
    /// empty; this is).
    id: u64,
    sync: SegmentSync,
    /// Bytes before it are flushed.
    flushed_pos: u64,
    /// End of its data.
    end_pos: u64,
    /// Offset after its last batch.
    end_offset: Offset,
    /// Its file's size or directory entry is not yet durable.
    metadata_dirty: bool,
    /// Its index, sealed once the segment is durable (`None` once taken).
    index: Option<IndexWriter>,
}

/// What the flushers know about the segment being written.
#[derive(Debug)]
struct Target {
    sync: SegmentSync,
    /// Bumped at every roll, so a flush that raced a roll does not move the new segment's
    /// flushed position.
    generation: u64,
    /// Bytes of the segment before it are flushed.
    flushed_pos: u64,
    /// The segment file's size or directory entry is not yet durable.
    metadata_dirty: bool,
}

/// The spare segments of a partition (see [`Spare`]).
#[derive(Debug, Default)]
struct Spares {
    /// Ready for the next rolls, oldest first; the flusher thread tops them up to
    /// `SPARES_READY` when woken.
    ready: std::collections::VecDeque<Spare>,
    /// The appender is gone: no more spares.
    closed: bool,
}

/// The shared offset tracker of one partition.
#[derive(Debug)]
pub(crate) struct Tracker {
    dir: PathBuf,
    /// Size of the partition's segments (and spares).
    segment_bytes: u64,
    /// The ready spares; held only to take or put one, never while one is made.
    spares: Mutex<Spares>,
    /// Held by the flusher thread while it makes a spare, and by `close_spares`, which so
    /// waits for one being made.
    making_spare: Mutex<()>,
    /// Spares that could not be made (warned about at powers of two).
    spare_failures: AtomicU64,
    /// Spares to keep ready: `SPARES_READY`, or fewer when the disk had no room for them
    /// at start.
    spares_wanted: std::sync::atomic::AtomicUsize,
    /// Flush period of the flusher thread; `None`: it does not flush this partition
    /// (policies other than `interval`).
    interval: Option<Duration>,
    written_pos: AtomicU64,
    written: AtomicU64,
    flushed: AtomicU64,
    durable: AtomicU64,
    target: Mutex<Target>,
    /// Sealed segments not yet durable, oldest first.
    sealing: Mutex<std::collections::VecDeque<Sealing>>,
    /// Ids of `sealing` entries.
    next_seal_id: AtomicU64,
    /// The first error the flusher thread met since the appender last looked.
    error: Mutex<Option<Error>>,
    /// Flushes the flusher thread completed, and the microseconds they took.
    flushes_total: AtomicU64,
    flush_us_total: AtomicU64,
}

/// The offsets of a partition at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// Everything before it is durable.
    pub durable: Offset,
    /// Everything before it is flushed.
    pub flushed: Offset,
    /// Everything before it is committed.
    pub written: Offset,
}

impl Tracker {
    /// A tracker for a partition reopened at `written` (position `written_pos` of `sync`'s
    /// segment), with everything before `flushed` (the segment's base) already durable.
    pub(crate) fn new(
        dir: PathBuf,
        segment_bytes: u64,
        interval: Option<Duration>,
        sync: SegmentSync,
        written_pos: u64,
        written: Offset,
        flushed: Offset,
    ) -> Tracker {
        assert!(flushed <= written);
        Tracker {
            dir,
            segment_bytes,
            spares: Mutex::new(Spares::default()),
            making_spare: Mutex::new(()),
            spare_failures: AtomicU64::new(0),
            spares_wanted: std::sync::atomic::AtomicUsize::new(super::SPARES_READY),
            interval,
            written_pos: AtomicU64::new(written_pos),
            written: AtomicU64::new(written.0),
            flushed: AtomicU64::new(flushed.0),
            durable: AtomicU64::new(flushed.0),
            target: Mutex::new(Target {
                sync,
                generation: 0,
                flushed_pos: 0,
                metadata_dirty: true,
            }),
            sealing: Mutex::new(std::collections::VecDeque::new()),
            next_seal_id: AtomicU64::new(0),
            error: Mutex::new(None),
            flushes_total: AtomicU64::new(0),
            flush_us_total: AtomicU64::new(0),
        }
    }

    fn target(&self) -> MutexGuard<'_, Target> {
        // A panic while holding it leaves plain numbers behind: still usable.
        self.target.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spares(&self) -> MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tops the partition's ready spares up to `SPARES_READY` (the flusher thread). Each is
    /// made without holding the ready list, so a roll meanwhile still takes one that is
    /// ready. A failure (a full disk) is only warned about, and tried again at the next
    /// wake: a roll that finds no spare then preallocates its segment itself, and fails as
    /// it would have.
    fn prepare_spares(&self) {
        let _making = self.making_spare.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let slot = {
                let spares = self.spares();
                let wanted = self.spares_wanted.load(Ordering::Relaxed);
                if spares.closed || spares.ready.len() >= wanted.min(super::SPARES_READY) {
                    return;
                }
                (0..super::SPARES_READY)
                    .find(|&slot| spares.ready.iter().all(|s| s.slot() != slot))
                    .expect("a free slot while fewer than SPARES_READY are ready")
            };
            match Spare::prepare(&self.dir, slot, self.segment_bytes) {
                Ok(spare) => self.spares().ready.push_back(spare),
                Err(e) => {
                    let failures = self.spare_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "cannot prepare a spare log segment");
                    }
                    return;
                }
            }
        }
    }

    /// Keeps at most `n` spares ready (at most `SPARES_READY`); call before the flusher
    /// thread first makes them.
    pub(crate) fn set_spares_wanted(&self, n: usize) {
        self.spares_wanted.store(n, Ordering::Relaxed);
    }

    /// Hands the oldest ready spare segment to `with` (which renames it into place) and
    /// returns what it returns; `None` when none is ready. The appender calls it at a roll,
    /// then wakes the flusher thread to make the next one; the ready list stays locked
    /// while `with` runs, so no new spare takes the file's slot under it.
    pub(crate) fn take_spare<T>(&self, with: impl FnOnce(Spare) -> T) -> Option<T> {
        let mut spares = self.spares();
        let spare = spares.ready.pop_front()?;
        Some(with(spare))
    }

    /// Stops spares for good and deletes those on disk (the appender, when dropped): waits
    /// for a spare being made, so no file appears in the directory afterwards.
    pub(crate) fn close_spares(&self) {
        let _making = self.making_spare.lock().unwrap_or_else(|p| p.into_inner());
        let mut spares = self.spares();
        spares.closed = true;
        for spare in spares.ready.drain(..) {
            if let Err(e) = segment::remove_if_exists(spare.path()) {
                tracing::warn!(error = %e, "cannot delete a spare log segment");
            }
        }
    }

    /// Publishes a commit: the batch ending at `pos` brings the written offset to `offset`.
    /// The position goes first, so whoever sees the offset sees a position at least as far.
    #[inline]
    pub(crate) fn publish_written(&self, pos: u64, offset: Offset) {
        self.written_pos.store(pos, Ordering::Release);
        self.written.store(offset.0, Ordering::Release);
    }

    /// The offsets now.
    pub(crate) fn offsets(&self) -> Offsets {
        let durable = Offset(self.durable.load(Ordering::Acquire));
        let flushed = Offset(self.flushed.load(Ordering::Acquire));
        let written = Offset(self.written.load(Ordering::Acquire));
        Offsets {
            durable,
            flushed,
            written,
        }
    }

    fn sealing(&self) -> MutexGuard<'_, std::collections::VecDeque<Sealing>> {
        self.sealing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sealed segments not yet durable.
    #[cfg(test)]
    pub(crate) fn sealing_len(&self) -> usize {
        self.sealing().len()
    }

    /// Switches to a new segment `sync`: the current one, whose data ends at `end_pos` with
    /// offset `written` (the written offset now), joins the sealing queue with its `index`.
    pub(crate) fn roll(
        &self,
        sync: SegmentSync,
        end_pos: u64,
        written: Offset,
        index: IndexWriter,
    ) {
        assert_eq!(self.written.load(Ordering::Acquire), written.0);
        let mut target = self.target();
        let old = std::mem::replace(&mut target.sync, sync);
        let sealing = Sealing {
            id: self.next_seal_id.fetch_add(1, Ordering::Relaxed),
            sync: old,
            flushed_pos: target.flushed_pos,
            end_pos,
            end_offset: written,
            metadata_dirty: target.metadata_dirty,
            index: Some(index),
        };
        self.sealing().push_back(sealing);
        target.generation += 1;
        target.flushed_pos = 0;
        target.metadata_dirty = true;
        self.written_pos.store(0, Ordering::Release);
    }

    /// Makes every sealed segment in the queue durable, oldest first, and seals its index.
    pub(crate) fn drain_sealing(&self) -> Result<(), Error> {
        self.drain_sealing_to(0)
    }

    /// Makes the oldest sealed segments durable (sealing their indexes) until at most `keep`
    /// wait.
    pub(crate) fn drain_sealing_to(&self, keep: usize) -> Result<(), Error> {
        loop {
            let (id, sync, from, end_pos, end_offset, metadata_dirty) = {
                let queue = self.sealing();
                if queue.len() <= keep {
                    return Ok(());
                }
                let Some(front) = queue.front() else {
                    return Ok(());
                };
                (
                    front.id,
                    front.sync.clone(),
                    front.flushed_pos,
                    front.end_pos,
                    front.end_offset,
                    front.metadata_dirty,
                )
            };
            if end_pos > from {
                sync.flush_range(from, end_pos - from)?;
            }
            if metadata_dirty {
                sync.sync_file()?;
                segment::sync_dir(&self.dir)?;
            }
            // The seal entry is written, and the offsets published, under the queue's lock:
            // another thread draining at the same time (the appender's drop, a checkpoint's
            // ticket) that finds the queue empty finds them there.
            let mut queue = self.sealing();
            if queue.front().is_some_and(|front| front.id == id)
                && let Some(index) = queue.pop_front().and_then(|mut s| s.index.take())
            {
                index.seal(end_pos, end_offset);
            }
            // Otherwise another thread drained it meanwhile.
            self.publish(&self.flushed, end_offset);
            self.publish(&self.durable, end_offset);
        }
    }

    /// Makes everything up to `offset` (position `pos` of the current segment, whose
    /// generation is `generation`) durable, after every sealed segment. Called by the core
    /// (synchronous flushes) and by the flusher thread; a flush of a generation that has
    /// rolled away since stops after the sealing queue (the queue holds that segment now).
    fn flush_to(&self, generation: u64, pos: u64, offset: Offset) -> Result<(), Error> {
        self.drain_sealing()?;
        let (sync, from, metadata_dirty) = {
            let target = self.target();
            if target.generation != generation {
                return Ok(());
            }
            (
                target.sync.clone(),
                target.flushed_pos,
                target.metadata_dirty,
            )
        };
        if pos > from {
            sync.flush_range(from, pos - from)?;
        }
        self.publish(&self.flushed, offset);
        if metadata_dirty {
            sync.sync_file()?;
            segment::sync_dir(&self.dir)?;
        }
        self.publish(&self.durable, offset);
        let mut target = self.target();
        if target.generation == generation {
            target.flushed_pos = target.flushed_pos.max(pos);
            target.metadata_dirty &= !metadata_dirty;
        }
        Ok(())
    }

    /// Makes everything written durable: the sealing queue, then the current segment up to
    /// `pos` and `offset` (what the appender, the one thread that rolls, last published).
    pub(crate) fn flush_all(&self, pos: u64, offset: Offset) -> Result<(), Error> {
        let generation = self.target().generation;
        self.flush_to(generation, pos, offset)
    }

    /// A ticket for everything committed up to `offset` (position `pos` of the current
    /// segment), for another thread to make durable (see [`FlushTicket`]). Called by the
    /// appender, the one thread that rolls, so the generation read here is that of `pos`.
    pub(crate) fn ticket(self: &Arc<Self>, pos: u64, offset: Offset) -> FlushTicket {
        FlushTicket {
            tracker: Arc::clone(self),
            generation: self.target().generation,
            pos,
            offset,
        }
    }

    fn publish(&self, which: &AtomicU64, offset: Offset) {
        which.fetch_max(offset.0, Ordering::AcqRel);
        let o = self.offsets();
        assert!(
            o.durable <= o.flushed && o.flushed <= o.written,
            "offset tracker out of order: {o:?}"
        );
    }

    /// One cycle of the flusher thread: flushes what was written since the last flush.
    fn flush_written(&self) {
        // The generation first (a roll changes it and resets the position under the same
        // lock), then the offset, then the position: the position is at least as far.
        let (generation, metadata_dirty) = {
            let target = self.target();
            (target.generation, target.metadata_dirty)
        };
        let offset = Offset(self.written.load(Ordering::Acquire));
        let pos = self.written_pos.load(Ordering::Acquire);
        if offset.0 == self.durable.load(Ordering::Acquire) && !metadata_dirty {
            return;
        }
        let started = Instant::now();
        match self.flush_to(generation, pos, offset) {
            Ok(()) => {
                self.flushes_total.fetch_add(1, Ordering::Relaxed);
                let us = started.elapsed().as_micros() as u64;
                self.flush_us_total.fetch_add(us, Ordering::Relaxed);
            }
            Err(e) => self.record_error(e),
        }
    }

    /// Starts writeback of the current segment's bytes written since the last flush.
    fn start_writeback(&self) -> Result<(), Error> {
        let (sync, from) = {
            let target = self.target();
            (target.sync.clone(), target.flushed_pos)
        };
        // Read after the target: a roll in between resets it to below `from` (nothing to do);
        // a roll after both only starts writeback early on the sealed segment's own bytes.
        let to = self.written_pos.load(Ordering::Acquire);
        if to > from {
            sync.start_writeback(from, to - from)?;
        }
        Ok(())
    }

    /// Keeps the first error of the flusher thread for the appender, which fails its next
    /// flush check with it.
    fn record_error(&self, e: Error) {
        tracing::error!(error = %e, "background log flush failed");
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    }

    /// The error the flusher thread met since the last call, if any.
    pub(crate) fn take_error(&self) -> Option<Error> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Flushes completed by the flusher thread, and the microseconds they took.
    pub(crate) fn background_flushes(&self) -> (u64, u64) {
        (
            self.flushes_total.load(Ordering::Relaxed),
            self.flush_us_total.load(Ordering::Relaxed),
        )
    }
}

/// Everything a partition had committed at one moment, made durable later by another thread
/// than its core: a checkpoint takes one at its barrier, and the coordinator makes it
/// durable before it commits, so the core never waits for an msync of the interval's bytes.
#[derive(Debug)]
pub struct FlushTicket {
    tracker: Arc<Tracker>,
    /// Segment generation of `pos`.
    generation: u64,
    pos: u64,
    offset: Offset,
}

impl FlushTicket {
    /// The offset everything before which it makes durable.
    pub fn offset(&self) -> Offset {
        self.offset
    }

    /// Makes everything before [`offset`](Self::offset) durable, on the calling thread
    /// (while the core goes on appending and rolling). Returns at once when it already is.
    pub fn make_durable(&self) -> Result<(), Error> {
        let durable = |t: &Tracker| Offset(t.durable.load(Ordering::Acquire));
        if durable(&self.tracker) >= self.offset {
            return Ok(());
        }
        self.tracker
            .flush_to(self.generation, self.pos, self.offset)?;
        if durable(&self.tracker) < self.offset {
            // The segment rolled away before the flush looked: it waits in the sealing
            // queue (or another thread drains it and publishes under the queue's lock).
            self.tracker.drain_sealing()?;
        }
        let now = durable(&self.tracker);
        assert!(
            now >= self.offset,
            "a ticket's flush leaves its offset durable ({now:?} < {:?})",
            self.offset
        );
        Ok(())
    }
}

/// What the flusher thread is told.
enum Msg {
    /// Look after this partition from now on.
    Register(Weak<Tracker>),
    /// The partition's appender wrote `FLUSHER_WAKE_BYTES` more, or rolled.
    Wake(Weak<Tracker>),
}

/// The process's flusher thread, started on first use.
struct Flusher {
    tx: Sender<Msg>,
}

static FLUSHER: OnceLock<Flusher> = OnceLock::new();

fn send(msg: Msg) {
    let flusher = FLUSHER.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("sluice-log-flush".into())
            .spawn(move || run(&rx))
            .expect("cannot start the log flusher thread");
        Flusher { tx }
    });
    // The thread never exits, so the channel is never closed.
    let _ = flusher.tx.send(msg);
}

/// Has the flusher thread look after `tracker` until it is dropped: keep spare segments
/// ready and drain its sealing queue whenever its appender calls [`wake`], and under
/// `interval` start writeback at every wake and flush it every interval.
pub(crate) fn register(tracker: &Arc<Tracker>) {
    send(Msg::Register(Arc::downgrade(tracker)));
}

/// Asks the flusher thread to top up `tracker`'s spare segments, drain its sealing queue
/// and (under `interval`) start writeback of what its writer wrote. Cheap: one channel
/// send.
pub(crate) fn wake(tracker: &Arc<Tracker>) {
    send(Msg::Wake(Arc::downgrade(tracker)));
}

/// A woken partition (its appender registered, rolled or wrote `FLUSHER_WAKE_BYTES` more):
/// tops up its spare segments (first: the next roll wants one), makes its sealed segments
/// durable, oldest first, topping the spares up again after each (a segment takes longer to
/// reach the disk than to fill when the input outpaces the disk, so rolls go on meanwhile)
/// and, under `interval`, starts writeback of what its appender wrote since the last flush,
/// which the next interval flush then makes durable.
fn service_woken(tracker: &Tracker) {
    let mut result = Ok(());
    loop {
        tracker.prepare_spares();
        let waiting = tracker.sealing().len();
        if waiting == 0 {
            break;
        }
        result = tracker.drain_sealing_to(waiting - 1);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() && tracker.interval.is_some() {
        result = tracker.start_writeback();
    }
    if let Err(e) = result {
        tracker.record_error(e);
    }
}

/// A partition whose interval flush is due.
fn service_due(tracker: &Tracker) {
    tracker.prepare_spares();
    tracker.flush_written();
}

fn run(rx: &Receiver<Msg>) {
    // Every registered partition, with when its interval flush is next due (`None`: never).
    let mut trackers: Vec<(Weak<Tracker>, Option<Instant>)> = Vec::new();
    loop {
        let now = Instant::now();
        trackers.retain_mut(|(weak, due)| {
            let Some(tracker) = weak.upgrade() else {
                return false;
            };
            if due.is_some_and(|d| d <= now) {
                service_due(&tracker);
                *due = tracker.interval.map(|i| Instant::now() + i);
            }
            true
        });
        let next = trackers.iter().filter_map(|(_, due)| *due).min();
        let first = match next {
            Some(next) => rx.recv_timeout(next.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut woken: Vec<Arc<Tracker>> = Vec::new();
        let msgs = match first {
            Ok(msg) => std::iter::once(msg).chain(rx.try_iter()),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        for msg in msgs {
            match msg {
                Msg::Register(weak) => {
                    if let Some(t) = weak.upgrade() {
                        trackers.push((weak, t.interval.map(|i| Instant::now() + i)));
                        woken.push(t);
                    }
                }
                Msg::Wake(weak) => woken.extend(weak.upgrade()),
            }
        }
        woken.sort_by_key(Arc::as_ptr);
        woken.dedup_by_key(|t| Arc::as_ptr(t));
        for tracker in &woken {
            service_woken(tracker);
        }
    }
}
