//! Flushing: the offset tracker of a partition (`durable ≤ flushed ≤ written`) and the one
//! background thread that flushes every partition under `flush = interval` and prefaults
//! every partition's segment ahead of its writer, so the cores never msync and rarely fault
//! on their hot path.
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

use super::segment::{self, SegmentSync};
use super::{Error, Offset, PREFAULT_AHEAD_BYTES};

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
    /// Bytes of the segment before it were prefaulted.
    prefaulted_pos: u64,
}

/// The shared offset tracker of one partition.
#[derive(Debug)]
pub(crate) struct Tracker {
    dir: PathBuf,
    /// Flush period of the flusher thread; `None`: it only prefaults (policies other than
    /// `interval`).
    interval: Option<Duration>,
    written_pos: AtomicU64,
    written: AtomicU64,
    flushed: AtomicU64,
    durable: AtomicU64,
    target: Mutex<Target>,
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
        interval: Option<Duration>,
        sync: SegmentSync,
        written_pos: u64,
        written: Offset,
        flushed: Offset,
    ) -> Tracker {
        assert!(flushed <= written);
        Tracker {
            dir,
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
                prefaulted_pos: 0,
            }),
            error: Mutex::new(None),
            flushes_total: AtomicU64::new(0),
            flush_us_total: AtomicU64::new(0),
        }
    }

    fn target(&self) -> MutexGuard<'_, Target> {
        // A panic while holding it leaves plain numbers behind: still usable.
        self.target.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Switches to a new segment that starts at `written` (after the old one was made
    /// durable through its end).
    pub(crate) fn roll(&self, sync: SegmentSync, written: Offset) {
        let mut target = self.target();
        assert_eq!(
            self.durable.load(Ordering::Acquire),
            written.0,
            "a segment is sealed only once durable"
        );
        target.sync = sync;
        target.generation += 1;
        target.flushed_pos = 0;
        target.metadata_dirty = true;
        target.prefaulted_pos = 0;
        self.written_pos.store(0, Ordering::Release);
    }

    /// Makes everything up to `offset` (position `pos` of the current segment) durable.
    /// Called by the core (synchronous flushes) and by the flusher thread.
    pub(crate) fn flush_to(&self, pos: u64, offset: Offset) -> Result<(), Error> {
        let (sync, generation, from, metadata_dirty) = {
            let target = self.target();
            (
                target.sync.clone(),
                target.generation,
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
        // The offset first, then the position: the position is at least as far.
        let offset = Offset(self.written.load(Ordering::Acquire));
        let pos = self.written_pos.load(Ordering::Acquire);
        if offset.0 == self.durable.load(Ordering::Acquire) && !self.target().metadata_dirty {
            return;
        }
        let started = Instant::now();
        match self.flush_to(pos, offset) {
            Ok(()) => {
                self.flushes_total.fetch_add(1, Ordering::Relaxed);
                let us = started.elapsed().as_micros() as u64;
                self.flush_us_total.fetch_add(us, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "background log flush failed");
                let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(e);
            }
        }
    }

    /// Prefaults the current segment from the write position to `PREFAULT_AHEAD_BYTES`
    /// past it (the flusher thread, when the appender wakes it).
    fn prefault_ahead(&self) {
        let (sync, generation, from) = {
            let target = self.target();
            (
                target.sync.clone(),
                target.generation,
                target.prefaulted_pos,
            )
        };
        let written_pos = self.written_pos.load(Ordering::Acquire);
        let from = from.max(written_pos);
        let to = (written_pos + PREFAULT_AHEAD_BYTES).min(sync.len());
        if to <= from {
            return;
        }
        sync.prefault(from, to - from);
        let mut target = self.target();
        if target.generation == generation {
            target.prefaulted_pos = target.prefaulted_pos.max(to);
        }
    }

    /// Bytes of the current segment prefaulted so far.
    #[cfg(test)]
    pub(crate) fn prefaulted_pos(&self) -> u64 {
        self.target().prefaulted_pos
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

/// What the flusher thread is told.
enum Msg {
    /// Flush (under `interval`) and prefault this partition from now on.
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

/// Has the flusher thread look after `tracker` until it is dropped: flush it every interval
/// (under `interval`), and flush and prefault it whenever its appender calls [`wake`].
pub(crate) fn register(tracker: &Arc<Tracker>) {
    send(Msg::Register(Arc::downgrade(tracker)));
}

/// Asks the flusher thread to prefault ahead of `tracker`'s writer (and, under `interval`,
/// to flush what it wrote). Cheap: one channel send.
pub(crate) fn wake(tracker: &Arc<Tracker>) {
    send(Msg::Wake(Arc::downgrade(tracker)));
}

/// Flushes (under `interval`) and prefaults one partition.
fn service(tracker: &Tracker) {
    if tracker.interval.is_some() {
        tracker.flush_written();
    }
    tracker.prefault_ahead();
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
                service(&tracker);
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
            service(tracker);
        }
    }
}
