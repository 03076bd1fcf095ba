//! The appender: the one writer of a partition. Lines are staged in one reused buffer; at
//! commit the header (with its CRC) is put before them and the batch goes into the segment
//! with one `pwrite` (carrying zeros to the end of a 64 KiB chunk when it reaches into a new
//! one: [`WRITE_CHUNK_BYTES`]); segments roll when full; the segment's sparse index grows as
//! batches are committed; retention deletes whole old segments.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::flusher::{self, FlushTicket, Offsets, Tracker};
use super::index::{self, IndexBuilder, IndexWriter, SegmentIndex};
use super::record::{self, BatchHeader, HEADER_BYTES, LINE_PREFIX_BYTES};
use super::recovery;
use super::segment::{self, Segment};
use super::{
    BATCH_PAYLOAD_BYTES_MAX, BatchInfo, Error, FLUSHER_WAKE_BYTES, FlushPolicy, Lines, Offset,
    Options, RECENT_BATCHES_MAX, RETENTION_CHECK_INTERVAL_MS, RecoveryReport, SEALS_IN_FLIGHT_MAX,
    WRITE_CHUNK_BYTES,
};
use crate::limits::{LINE_BYTES_MAX, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};

/// Sealed segments kept mapped so [`Appender::lines`] can read batches committed just before
/// a roll.
const SEALED_MAPPED_MAX: usize = 4;

/// The staging buffer is emptied when a batch starts and it holds more than this (the
/// batches already in it are read back through the mapping).
const STAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Where a recently committed batch lies, for [`Appender::lines`].
#[derive(Debug, Clone, Copy)]
struct RecentBatch {
    first_offset: Offset,
    segment_base: Offset,
    file_pos: u64,
    payload_bytes: u32,
    /// The stage generation and position of its header while it is still staged.
    staged: (u64, usize),
}

/// A sealed segment on disk, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealedSegment {
    /// Its base offset.
    pub(crate) base: Offset,
    /// Its file.
    pub(crate) path: PathBuf,
    /// Its file size.
    pub(crate) file_bytes: u64,
    /// The largest ingest time in it (`i64::MIN` when it holds no valid batch).
    pub(crate) max_time_ms: i64,
}

/// The writer of one partition. Owned by one core.
#[derive(Debug)]
pub struct Appender {
    dir: PathBuf,
    options: Options,
    /// The segment being written.
    segment: Segment,
    /// Recently sealed segments, oldest first, still mapped for `lines`.
    sealed: VecDeque<Segment>,
    /// Every sealed segment on disk, oldest first (retention's view).
    history: VecDeque<SealedSegment>,
    /// Index of `segment`.
    index: IndexWriter,
    /// End of the committed batches in `segment`: where the next batch header goes.
    write_pos: u64,
    /// End of what this appender has written into `segment` (batches, then zeros up to a
    /// multiple of [`WRITE_CHUNK_BYTES`]): writes that end before it land on cached pages.
    padded_to: u64,
    /// Offset of the next line (everything before it is committed: "written").
    next_offset: Offset,
    /// Written, flushed and durable offsets, shared with the flusher thread.
    tracker: Arc<Tracker>,
    /// Position of `segment` at which to wake the flusher thread next.
    wake_pos: u64,
    /// Background flushes already reported by [`maybe_flush`](Self::maybe_flush).
    flushes_seen: u64,
    /// Retention never deletes a segment holding this offset or later ones.
    retention_floor: Offset,
    last_retention_check: Instant,
    recent: VecDeque<RecentBatch>,
    /// Batches committed but not yet handed out by [`BatchWriter::finish`].
    pending: Vec<BatchInfo>,
    /// The batches of the current [`BatchWriter`] (headers, payloads, padding), the open
    /// one last; reused, so appending allocates nothing once it has grown.
    stage: Vec<u8>,
    /// Bumped each time `stage` is emptied: a `RecentBatch` of another generation is read
    /// from the mapping.
    stage_generation: u64,
}

impl Appender {
    /// Opens (creating if needed) the partition directory `dir`, recovers its tail,
    /// rebuilds segment indexes that are missing, short or bad, and positions the appender
    /// after the intact prefix.
    pub fn open(dir: &Path, options: Options) -> Result<(Appender, RecoveryReport), Error> {
        Appender::open_from(dir, options, Offset(0))
    }

    /// [`open`](Self::open), with the next offset at least `floor`: the offset a checkpoint
    /// names for this partition. Offsets below it were counted, so they are never given to
    /// new lines, even when the log lost them (see `recovery.rs`).
    pub fn open_from(
        dir: &Path,
        options: Options,
        floor: Offset,
    ) -> Result<(Appender, RecoveryReport), Error> {
        assert!(
            (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&options.segment_bytes)
                && options
                    .segment_bytes
                    .is_multiple_of(record::BATCH_ALIGN_BYTES),
            "segment_bytes {} outside the validated range",
            options.segment_bytes
        );
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        remove_orphan_indexes(dir)?;
        let recovered = recovery::recover(dir, options.segment_bytes, floor)?;
        let (history, missing) = open_sealed(dir, recovered.segment.base())?;
        let report = RecoveryReport {
            next_offset: recovered.next_offset,
            truncated_bytes: recovered.truncated_bytes,
            bad_batches: recovered.bad_batches,
            lost_lines: recovered.lost_lines + missing,
            lost_below_floor: recovered.lost_below_floor,
        };
        let segment = recovered.segment;
        let (prefix, builder) = index::build_from_bytes(segment.bytes(), segment.base());
        let index = IndexWriter::start(dir, &prefix, builder);
        // Sealed segments were made durable before their successor was created; the
        // recovered batches of the newest one may still sit in the page cache only (after
        // kill -9), so the first flush syncs them, the file and the directory.
        let interval = (options.flush == FlushPolicy::Interval)
            .then(|| Duration::from_millis(options.flush_interval_ms));
        let tracker = Arc::new(Tracker::new(
            dir.to_path_buf(),
            options.segment_bytes,
            interval,
            segment.sync_handle(),
            recovered.write_pos,
            recovered.next_offset,
            segment.base(),
        ));
        tracker.set_spares_wanted(spares_that_fit(dir, options.segment_bytes));
        flusher::register(&tracker);
        let appender = Appender {
            dir: dir.to_path_buf(),
            options,
            segment,
            sealed: VecDeque::new(),
            history,
            index,
            write_pos: recovered.write_pos,
            padded_to: recovered.write_pos,
            next_offset: recovered.next_offset,
            wake_pos: recovered.write_pos + FLUSHER_WAKE_BYTES,
            tracker,
            flushes_seen: 0,
            retention_floor: Offset(0),
            last_retention_check: Instant::now(),
            recent: VecDeque::with_capacity(RECENT_BATCHES_MAX),
            pending: Vec::new(),
            stage: Vec::new(),
            stage_generation: 0,
        };
        Ok((appender, report))
    }

    /// Offset the next appended line will get.
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// Offset up to which everything is durable (flushed, with the segment's metadata).
    pub fn flushed_offset(&self) -> Offset {
        self.tracker.offsets().durable
    }

    /// The partition's offset tracker now: durable ≤ flushed ≤ written.
    pub fn offsets(&self) -> Offsets {
        self.tracker.offsets()
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a batch of lines from one listener.
    pub fn begin(&mut self, listener_id: u16, ingest_time_ms: i64) -> BatchWriter<'_> {
        self.clear_stage();
        BatchWriter {
            appender: self,
            listener_id,
            ingest_time_ms,
            open_start: 0,
            payload_bytes: 0,
            room: 0,
            count: 0,
            count_since_flush: 0,
            failed: None,
        }
    }

    fn clear_stage(&mut self) {
        self.stage.clear();
        self.stage_generation += 1;
    }

    /// Makes every committed batch durable, now, on this thread (shutdown, `flush = always`;
    /// checkpoints use [`flush_ticket`](Self::flush_ticket)).
    pub fn flush(&mut self) -> Result<(), Error> {
        self.index.write_pending();
        self.tracker.flush_all(self.write_pos, self.next_offset)?;
        assert_eq!(
            self.tracker.offsets().durable,
            self.next_offset,
            "a synchronous flush makes everything written durable"
        );
        Ok(())
    }

    /// A ticket for everything committed so far, for another thread to make durable
    /// (checkpoints: the coordinator flushes while this core goes on). Writes the pending
    /// index entries first, as [`flush`](Self::flush) does.
    pub fn flush_ticket(&mut self) -> FlushTicket {
        self.index.write_pending();
        self.tracker.ticket(self.write_pos, self.next_offset)
    }

    /// The periodic work of the core's tick: writes pending index entries, applies retention
    /// (at most every `RETENTION_CHECK_INTERVAL_MS`), and reports the background flusher's
    /// progress. Under `flush = interval` the flusher thread msyncs, not this call; it returns
    /// whether that thread completed a flush since the last call, and the error it met, if
    /// any.
    pub fn maybe_flush(&mut self, now: Instant) -> Result<bool, Error> {
        self.index.write_pending();
        let check = Duration::from_millis(RETENTION_CHECK_INTERVAL_MS);
        if now.saturating_duration_since(self.last_retention_check) >= check {
            self.last_retention_check = now;
            if let Err(e) = self.apply_retention() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "log retention failed");
            }
        }
        if self.options.flush != FlushPolicy::Interval {
            return Ok(false);
        }
        if let Some(e) = self.tracker.take_error() {
            return Err(e);
        }
        let (flushes, _) = self.tracker.background_flushes();
        let flushed = flushes != self.flushes_seen;
        self.flushes_seen = flushes;
        Ok(flushed)
    }

    /// Flushes completed by the background flusher for this partition, and the microseconds
    /// they took.
    pub fn background_flushes(&self) -> (u64, u64) {
        self.tracker.background_flushes()
    }

    /// Sets the retention floor: retention never deletes a segment holding offset `floor` or
    /// a later one (the newest checkpoint's offset for this partition, from which a restart
    /// replays). It only rises. Until it is set, retention deletes nothing. Takes effect at
    /// the next tick ([`maybe_flush`](Self::maybe_flush)) or roll.
    pub fn set_retention_floor(&mut self, floor: Offset) {
        self.retention_floor = self.retention_floor.max(floor);
    }

    /// The retention floor (see [`set_retention_floor`](Self::set_retention_floor)).
    pub fn retention_floor(&self) -> Offset {
        self.retention_floor
    }

    /// Deletes the old sealed segments that `retention_bytes` and `retention_hours` no
    /// longer keep, never one at or above the retention floor, never the active one; returns
    /// how many it deleted.
    pub fn apply_retention(&mut self) -> Result<usize, Error> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.apply_retention_at(now_ms)
    }

    /// [`apply_retention`](Self::apply_retention) at wall-clock time `now_ms`.
    pub(crate) fn apply_retention_at(&mut self, now_ms: i64) -> Result<usize, Error> {
        let policy = Retention {
            bytes_max: self.options.retention_bytes,
            hours: self.options.retention_hours,
            floor: self.retention_floor,
        };
        let n = policy.expired(
            self.history.make_contiguous(),
            self.segment.base(),
            self.segment.len(),
            now_ms,
        );
        for _ in 0..n {
            let Some(old) = self.history.front().cloned() else {
                break;
            };
            segment::remove_if_exists(&old.path)?;
            segment::remove_if_exists(&segment::index_path(&self.dir, old.base))?;
            self.history.pop_front();
            tracing::info!(
                segment = %old.path.display(),
                bytes = old.file_bytes,
                "log segment deleted by retention"
            );
        }
        Ok(n)
    }

    /// The lines of a batch this appender committed (still mapped).
    ///
    /// # Panics
    ///
    /// If `batch` is not one of the last [`RECENT_BATCHES_MAX`] batches this appender
    /// committed, or lies in a segment sealed more than a few rolls ago: call it right after
    /// [`BatchWriter::finish`].
    pub fn lines(&self, batch: &BatchInfo) -> Lines<'_> {
        let recent = self
            .recent
            .iter()
            .rev()
            .find(|r| r.first_offset == batch.first_offset)
            .unwrap_or_else(|| panic!("batch at {} is not a recent batch", batch.first_offset));
        let segment = std::iter::once(&self.segment)
            .chain(self.sealed.iter().rev())
            .find(|s| s.base() == recent.segment_base)
            .unwrap_or_else(|| panic!("segment of batch at {} unmapped", batch.first_offset));
        let (generation, stage_pos) = recent.staged;
        let (bytes, start) = if generation == self.stage_generation {
            (&self.stage[..], stage_pos + HEADER_BYTES)
        } else {
            (segment.bytes(), recent.file_pos as usize + HEADER_BYTES)
        };
        Lines::new(&bytes[start..start + recent.payload_bytes as usize])
    }

    /// Whether the open batch at `write_pos` can grow to `payload_bytes` in this segment.
    fn fits(&self, payload_bytes: u32) -> bool {
        self.write_pos + record::batch_bytes(payload_bytes) <= self.segment.len()
    }

    /// The most payload bytes a batch opened at `write_pos` can take: the batch cap, or
    /// what the segment has room for.
    fn batch_room(&self) -> u32 {
        // Both ends are multiples of the batch alignment, so a batch fits exactly when its
        // header and payload do.
        let segment_room = self.segment.len() - self.write_pos;
        let room = segment_room.saturating_sub(HEADER_BYTES as u64);
        let room = u32::try_from(room)
            .unwrap_or(u32::MAX)
            .min(BATCH_PAYLOAD_BYTES_MAX);
        debug_assert!(room == 0 || self.fits(room));
        room
    }

    /// Commits the open batch of `count` lines (`payload_bytes` staged after its header
    /// space at `open_start`): writes the header with its CRC before them, pads the batch,
    /// writes it into the segment and advances the written offset. A failed write commits
    /// nothing.
    fn commit(
        &mut self,
        listener_id: u16,
        ingest_time_ms: i64,
        count: u32,
        open_start: usize,
        payload_bytes: u32,
    ) -> Result<(), Error> {
        if count == 0 {
            return Ok(());
        }
        let info = BatchInfo {
            first_offset: self.next_offset,
            count,
            listener_id,
            ingest_time_ms,
        };
        let payload_start = open_start + HEADER_BYTES;
        debug_assert_eq!(self.stage.len(), payload_start + payload_bytes as usize);
        let header = BatchHeader::new(&info, &self.stage[payload_start..]);
        self.stage[open_start..payload_start].copy_from_slice(bytemuck::bytes_of(&header));
        self.stage
            .resize(open_start + header.batch_bytes() as usize, 0);
        let batch = &self.stage[open_start..];
        let end = self.write_pos + batch.len() as u64;
        if end <= self.padded_to {
            self.segment.write_at(self.write_pos, batch)?;
        } else {
            let pad_end = end
                .next_multiple_of(WRITE_CHUNK_BYTES)
                .min(self.segment.len());
            self.segment
                .write_padded_at(self.write_pos, batch, pad_end)?;
            self.padded_to = pad_end;
        }
        debug_assert_eq!(
            record::check_at(self.segment.bytes(), self.write_pos, self.next_offset),
            record::Step::Batch(header)
        );
        if self.recent.len() == RECENT_BATCHES_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentBatch {
            first_offset: info.first_offset,
            segment_base: self.segment.base(),
            file_pos: self.write_pos,
            payload_bytes,
            staged: (self.stage_generation, open_start),
        });
        self.index.on_batch(self.write_pos, &header);
        self.pending.push(info);
        self.write_pos += header.batch_bytes();
        let next = info.end_offset();
        assert!(next > self.next_offset, "offsets only rise");
        self.next_offset = next;
        self.tracker.publish_written(self.write_pos, next);
        if self.write_pos >= self.wake_pos {
            self.wake_pos = self.write_pos + FLUSHER_WAKE_BYTES;
            if self.options.flush == FlushPolicy::Interval {
                flusher::wake(&self.tracker);
            }
        }
        Ok(())
    }

    /// Seals the current segment and starts the next one, named by the next offset. The
    /// sealed segment is made durable in the background (see `flusher.rs`); only when
    /// `SEALS_IN_FLIGHT_MAX` segments already wait for the disk does the roll wait for them.
    fn roll(&mut self) -> Result<(), Error> {
        self.tracker.drain_sealing_to(SEALS_IN_FLIGHT_MAX - 1)?;
        self.index.write_pending();
        let (dir, base, bytes) = (&self.dir, self.next_offset, self.options.segment_bytes);
        let next = match self
            .tracker
            .take_spare(|spare| Segment::from_spare(dir, base, spare))
        {
            Some(next) => next?,
            None => Segment::create(dir, base, bytes)?,
        };
        tracing::debug!(segment = %next.path().display(), "log segment rolled");
        let empty = SegmentIndex {
            base: next.base(),
            entries: Vec::new(),
            seal: None,
        };
        let next_index = IndexWriter::start(&self.dir, &empty, IndexBuilder::new());
        let sealed_index = std::mem::replace(&mut self.index, next_index);
        let max_time_ms = sealed_index.max_time_ms();
        self.tracker.roll(
            next.sync_handle(),
            self.write_pos,
            self.next_offset,
            sealed_index,
        );
        let sealed = std::mem::replace(&mut self.segment, next);
        self.history.push_back(SealedSegment {
            base: sealed.base(),
            path: sealed.path().to_path_buf(),
            file_bytes: sealed.len(),
            max_time_ms,
        });
        if self.sealed.len() == SEALED_MAPPED_MAX {
            self.sealed.pop_front();
        }
        self.sealed.push_back(sealed);
        self.write_pos = 0;
        self.padded_to = 0;
        self.wake_pos = FLUSHER_WAKE_BYTES;
        flusher::wake(&self.tracker);
        if let Err(e) = self.apply_retention() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "log retention failed");
        }
        Ok(())
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.tracker.close_spares();
        self.index.write_pending();
        // Sealed segments waiting for the disk get there (and their index seals) now rather
        // than being rescanned at the next open.
        if let Err(e) = self.tracker.drain_sealing() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot make sealed log segments durable");
        }
    }
}

/// The retention bounds of a partition.
#[derive(Debug, Clone, Copy)]
struct Retention {
    /// Total segment bytes kept (0: no bound).
    bytes_max: u64,
    /// Hours of ingest time kept (0: no bound).
    hours: u64,
    /// No segment holding this offset or a later one is deleted.
    floor: Offset,
}

impl Retention {
    /// How many of the oldest `sealed` segments (oldest first, followed by the active
    /// segment at `active_base` of `active_bytes`) to delete at `now_ms`.
    fn expired(
        &self,
        sealed: &[SealedSegment],
        active_base: Offset,
        active_bytes: u64,
        now_ms: i64,
    ) -> usize {
        let mut total_bytes: u64 = sealed.iter().map(|s| s.file_bytes).sum::<u64>() + active_bytes;
        let cutoff_ms = (self.hours > 0).then(|| {
            let hours_ms = i64::try_from(self.hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX);
            now_ms.saturating_sub(hours_ms)
        });
        let mut n = 0;
        for (i, s) in sealed.iter().enumerate() {
            let end = sealed.get(i + 1).map_or(active_base, |next| next.base);
            if end > self.floor {
                break;
            }
            let over_bytes = self.bytes_max > 0 && total_bytes > self.bytes_max;
            let too_old = cutoff_ms.is_some_and(|cutoff| s.max_time_ms < cutoff);
            if !(over_bytes || too_old) {
                break;
            }
            total_bytes -= s.file_bytes;
            n += 1;
        }
        n
    }
}

/// How many spare segments (up to `SPARES_READY`) to keep for a partition in `dir`: fewer
/// when the file system lacks room for them beside one more segment that a roll can make
/// itself, so a small disk starts, and says so, rather than filling up with spares.
fn spares_that_fit(dir: &Path, segment_bytes: u64) -> usize {
    let wanted = super::SPARES_READY;
    let free = match segment::free_bytes(dir) {
        Ok(free) => free,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot read free disk space");
            return wanted;
        }
    };
    let fit = usize::try_from((free / segment_bytes).saturating_sub(1)).unwrap_or(usize::MAX);
    if fit < wanted {
        tracing::warn!(
            dir = %dir.display(),
            free_bytes = free,
            segment_bytes,
            spares = fit,
            "too little free disk space for {wanted} spare log segments; keeping fewer"
        );
    }
    fit.min(wanted)
}

/// Removes index files whose segment is gone (retention stopped between the two unlinks),
/// temporary index files and a spare segment left by a crash.
fn remove_orphan_indexes(dir: &Path) -> Result<(), Error> {
    let io_error = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let orphan = segment::parse_index_name(name)
            .is_some_and(|base| !segment::segment_path(dir, base).exists());
        if orphan || name.ends_with(".idx.tmp") || segment::is_spare_name(name) {
            segment::remove_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

/// The sealed segments of `dir` (every segment before `newest`), their indexes checked and
/// rebuilt where missing, short or bad; and the offsets missing between segments (a
/// segment deleted or torn, lines lost below a checkpoint), each gap warned about.
fn open_sealed(dir: &Path, newest: Offset) -> Result<(VecDeque<SealedSegment>, u64), Error> {
    let mut out = VecDeque::new();
    let sealed: Vec<_> = segment::list_segments(dir)?
        .into_iter()
        .filter(|s| s.base < newest)
        .collect();
    let mut missing = 0;
    let next_bases: Vec<Offset> = sealed
        .iter()
        .skip(1)
        .map(|s| s.base)
        .chain([newest])
        .collect();
    for (s, next_base) in sealed.into_iter().zip(next_bases) {
        let loaded = index::load(dir, s.base)?;
        let index = match loaded {
            l if l.is_complete() => l.index().expect("complete"),
            l => {
                tracing::info!(segment = %s.path.display(), found = ?IndexState::of(&l),
                    "rebuilding log segment index");
                let rebuilt = index::build_from_file(&s.path, s.base)?;
                // A seal claims its segment is durable (see `recovery.rs`): make it so first
                // (after kill -9 its pages may still be dirty in the page cache).
                std::fs::File::open(&s.path)
                    .and_then(|f| f.sync_all())
                    .map_err(|source| Error::Io {
                        path: s.path.clone(),
                        source,
                    })?;
                if let Err(e) = index::write(dir, &rebuilt) {
                    tracing::warn!(error = %e, "cannot write rebuilt log index; readers scan");
                }
                rebuilt
            }
        };
        let file_bytes = std::fs::metadata(&s.path)
            .map_err(|source| Error::Io {
                path: s.path.clone(),
                source,
            })?
            .len();
        if let Some(end) = index.seal.map(|seal| seal.offset())
            && end < next_base
        {
            tracing::warn!(
                segment = %s.path.display(),
                end_offset = end.0,
                next_base = next_base.0,
                "log offsets {end}..{next_base} are missing after this segment (a segment \
                 deleted or torn, or lines a checkpoint counted that are gone); readers step \
                 over them"
            );
            missing += next_base.0 - end.0;
        }
        out.push_back(SealedSegment {
            base: s.base,
            path: s.path,
            file_bytes,
            max_time_ms: index.sealed_max_time_ms().unwrap_or(i64::MIN),
        });
    }
    Ok((out, missing))
}

/// Why an index is rebuilt, for the log line.
#[derive(Debug)]
enum IndexState {
    Missing,
    Bad,
    Damaged,
    Unsealed,
}

impl IndexState {
    fn of(loaded: &index::Loaded) -> IndexState {
        match loaded {
            index::Loaded::Missing => IndexState::Missing,
            index::Loaded::Bad => IndexState::Bad,
            index::Loaded::Index { damaged: true, .. } => IndexState::Damaged,
            index::Loaded::Index { .. } => IndexState::Unsealed,
        }
    }
}

/// Stages lines and commits them as record batches. Rolls to a new segment when the current
/// one is full (committing what it holds first).
///
/// Dropped without [`finish`](Self::finish), it discards the lines of its open batch (they
/// never reach the segment); batches it already committed (at a roll) are reported by the
/// next `finish`.
#[derive(Debug)]
pub struct BatchWriter<'a> {
    appender: &'a mut Appender,
    listener_id: u16,
    ingest_time_ms: i64,
    /// Where the open batch's header space starts in the stage.
    open_start: usize,
    /// Payload bytes of the open batch, staged after its header space.
    payload_bytes: u32,
    /// Payload bytes the open batch can still take (0 when none is open).
    room: u32,
    /// Lines of the open batch.
    count: u32,
    /// Lines committed since the last flush (under [`FlushPolicy::Always`]).
    count_since_flush: u32,
    /// Where the payload of the batch whose write failed lies in the stage, and its bytes.
    failed: Option<(usize, u32)>,
}

impl BatchWriter<'_> {
    /// Appends one line (at most `LINE_BYTES_MAX` bytes).
    #[inline]
    pub fn push(&mut self, line: &[u8]) -> Result<(), Error> {
        // Lines longer than `LINE_BYTES_MAX` and batches that must commit or open first
        // take the slow path (as does every line after a failed write: `room` is 0); the
        // usual line costs two compares and the copy.
        if line.len() + LINE_PREFIX_BYTES > self.room as usize
            || line.len() > LINE_BYTES_MAX as usize
        {
            self.make_room(line.len())?;
        }
        let framed_bytes = (LINE_PREFIX_BYTES + line.len()) as u32;
        let stage = &mut self.appender.stage;
        stage.extend_from_slice(&(line.len() as u32).to_le_bytes());
        stage.extend_from_slice(line);
        self.room -= framed_bytes;
        self.payload_bytes += framed_bytes;
        self.count += 1;
        Ok(())
    }

    /// Opens a batch with room for a line of `line_bytes`: commits the open one first when
    /// the line does not fit it, and rolls when the line does not fit the segment.
    #[cold]
    #[inline(never)]
    fn make_room(&mut self, line_bytes: usize) -> Result<(), Error> {
        let line_bytes = match u32::try_from(line_bytes) {
            Ok(n) if n <= LINE_BYTES_MAX => n,
            _ => {
                return Err(Error::LineTooLong {
                    line_bytes,
                    line_bytes_max: LINE_BYTES_MAX,
                });
            }
        };
        if self.failed.is_some() {
            return Err(Error::WriterFailed);
        }
        let framed_bytes = LINE_PREFIX_BYTES as u32 + line_bytes;
        if self.count > 0 {
            self.commit()?;
        }
        if !self.appender.fits(framed_bytes) {
            if let Err(e) = self.appender.roll() {
                // No batch is open: nothing of this writer's is lost, and it takes no more.
                self.failed = Some((self.appender.stage.len(), 0));
                return Err(e);
            }
            debug_assert!(
                self.appender.fits(framed_bytes),
                "a line fits a fresh segment"
            );
        }
        if self.appender.stage.len() > STAGE_BYTES_MAX {
            self.appender.clear_stage();
        }
        let stage = &mut self.appender.stage;
        self.open_start = stage.len();
        stage.resize(self.open_start + HEADER_BYTES, 0);
        self.room = self.appender.batch_room();
        debug_assert!(self.room >= framed_bytes);
        Ok(())
    }

    /// Commits the open batch (CRC, header), and flushes under [`FlushPolicy::Always`]. After
    /// it, [`push`](Self::push) opens a new batch. When the write fails, the batch's lines
    /// are in [`failed_lines`](Self::failed_lines); when only the flush fails, they are
    /// committed (and reported by [`finish`](Self::finish)) but not yet durable.
    pub fn seal(&mut self) -> Result<(), Error> {
        self.commit()?;
        if self.count_since_flush > 0 && self.appender.options.flush == FlushPolicy::Always {
            // A failed flush is the caller's to retry ([`Appender::flush`]), not this writer's.
            self.count_since_flush = 0;
            self.appender.flush()?;
        }
        Ok(())
    }

    /// Seals the batch (see [`seal`](Self::seal)) and pushes every batch it committed to
    /// `out` (none when no line was pushed), whether or not the seal failed.
    pub fn finish(mut self, out: &mut Vec<BatchInfo>) -> Result<(), Error> {
        let sealed = if self.failed.is_some() {
            Ok(())
        } else {
            self.seal()
        };
        out.append(&mut self.appender.pending);
        sealed
    }

    /// The lines of the batch whose write failed, in the order they were pushed: none of
    /// them reached the log, so the caller keeps them to append again. After a failure the
    /// writer takes no more lines.
    pub fn failed_lines(&self) -> Option<Lines<'_>> {
        let (start, bytes) = self.failed?;
        Some(Lines::new(
            &self.appender.stage[start..start + bytes as usize],
        ))
    }

    /// Commits the open batch; on error its lines stay staged for
    /// [`failed_lines`](Self::failed_lines) (and the error is returned).
    fn commit(&mut self) -> Result<(), Error> {
        let result = self.appender.commit(
            self.listener_id,
            self.ingest_time_ms,
            self.count,
            self.open_start,
            self.payload_bytes,
        );
        match result {
            Ok(()) => self.count_since_flush += self.count,
            Err(_) => {
                let payload_start = self.open_start + HEADER_BYTES;
                self.appender
                    .stage
                    .truncate(payload_start + self.payload_bytes as usize);
                self.failed = Some((payload_start, self.payload_bytes));
            }
        }
        self.count = 0;
        self.payload_bytes = 0;
        self.room = 0;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::test_support::{line, read_all, small_options, write_batches};
    use crate::log::{Reader, segment::list_segments, segment::segment_path};

    /// Batches of lines big enough that a few of them fill a 1 MiB segment.
    fn many_batches(n: usize) -> Vec<Vec<Vec<u8>>> {
        (0..n)
            .map(|b| {
                (0..(b % 7 + 1))
                    .map(|l| line(b + l, (b * 997 + l * 13) % 30_000))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn batches_round_trip_across_segment_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let (mut appender, report) =
            Appender::open(dir.path(), small_options(FlushPolicy::Never)).unwrap();
        assert_eq!(report.next_offset, Offset(0));
        assert_eq!(report.truncated_bytes, 0);
        let batches = many_batches(120);
        let written = write_batches(&mut appender, &batches);
        let pushed: Vec<Vec<u8>> = batches.concat();
        let committed: Vec<Vec<u8>> = written.iter().flat_map(|(_, l)| l.clone()).collect();
        assert_eq!(committed, pushed);
        let mut next = Offset(0);
        for (info, _) in &written {
            assert_eq!(info.first_offset, next);
            next = info.end_offset();
        }
        assert_eq!(appender.next_offset(), next);

        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 3, "{} segments", segments.len());
        for s in &segments {
            assert_eq!(s.path, segment_path(dir.path(), s.base));
            let name = s.path.file_name().unwrap().to_str().unwrap().to_owned();
            assert_eq!(name, format!("{:020}.seg", s.base.0));
            assert!(written.iter().any(|(i, _)| i.first_offset == s.base));
            assert_eq!(std::fs::metadata(&s.path).unwrap().len(), SEGMENT_BYTES_MIN);
        }
        assert_eq!(read_all(dir.path(), Offset(0)), written);
    }

    #[test]
    fn writes_cover_whole_chunks_with_zeros_after_the_end_and_a_reopen_continues_over_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut written = Vec::new();
        for round in 0..2 {
            let (mut appender, _) =
                Appender::open(dir.path(), small_options(FlushPolicy::Never)).unwrap();
            // Batches from a few bytes to several chunks, across segment rolls.
            let batches: Vec<Vec<Vec<u8>>> = (0..60)
                .map(|i| {
                    let lines = [1, 7, 300, 1_500][(i + round) % 4];
                    (0..lines)
                        .map(|j| line(i * 10_000 + j, 90 + j % 50))
                        .collect()
                })
                .collect();
            for batch in &batches {
                written.extend(write_batches(&mut appender, std::slice::from_ref(batch)));
                let (pos, padded) = (appender.write_pos, appender.padded_to);
                let len = appender.segment.len();
                assert!(pos <= padded && padded <= len, "{pos} {padded} {len}");
                assert!(padded.is_multiple_of(WRITE_CHUNK_BYTES) || padded == len);
                assert!(padded - pos < WRITE_CHUNK_BYTES, "{pos} {padded}");
                let bytes = appender.segment.bytes();
                assert!(bytes[pos as usize..padded as usize].iter().all(|&b| b == 0));
            }
            assert!(list_segments(dir.path()).unwrap().len() >= 2 + round);
        }
        assert_eq!(read_all(dir.path(), Offset(0)), written);
    }

    #[test]
    fn reopening_continues_the_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let options = small_options(FlushPolicy::Interval);
        let (mut appender, _) = Appender::open(dir.path(), options).unwrap();
        let mut written = write_batches(&mut appender, &many_batches(50));
        let next = appender.next_offset();
        appender.flush().unwrap();
        drop(appender);

        let (mut appender, report) = Appender::open(dir.path(), options).unwrap();
        assert_eq!(report.next_offset, next);
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(appender.next_offset(), next);
        assert!(
            appender.flushed_offset() < next,
            "the recovered tail is flushed again"
        );
        appender.flush().unwrap();
        assert_eq!(appender.flushed_offset(), next);
        let more = write_batches(&mut appender, &many_batches(30));
        assert_eq!(more[0].0.first_offset, next);
        written.extend(more);
        assert_eq!(read_all(dir.path(), Offset(0)), written);
    }

    #[test]
    fn a_ticket_is_made_durable_on_another_thread_while_the_appender_rolls_on() {
        let dir = tempfile::tempdir().unwrap();
        // `never`: no background flushes, so only the ticket moves the durable offset.
        let (mut appender, _) =
            Appender::open(dir.path(), small_options(FlushPolicy::Never)).unwrap();
        write_batches(&mut appender, &many_batches(20));
        let ticket = appender.flush_ticket();
        assert_eq!(ticket.offset(), appender.next_offset());
        let segments = list_segments(dir.path()).unwrap().len();
        // The segment the ticket points into rolls away before the ticket is used.
        write_batches(&mut appender, &many_batches(120));
        assert!(list_segments(dir.path()).unwrap().len() > segments + 1);
        let offset = ticket.offset();
        std::thread::spawn(move || ticket.make_durable())
            .join()
            .unwrap()
            .unwrap();
        assert!(appender.offsets().durable >= offset);
        // One taken after the last roll, made durable while nothing rolls.
        let ticket = appender.flush_ticket();
        ticket.make_durable().unwrap();
        assert_eq!(appender.offsets().durable, appender.next_offset());
        // Already durable: returns at once.
        ticket.make_durable().unwrap();
    }

    #[test]
    fn a_writer_with_no_lines_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut appender, _) =
            Appender::open(dir.path(), small_options(FlushPolicy::Always)).unwrap();
        let mut out = Vec::new();
        appender.begin(1, 0).finish(&mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(appender.next_offset(), Offset(0));
        assert!(read_all(dir.path(), Offset(0)).is_empty());
    }

    #[test]
    fn a_dropped_writer_leaves_no_data_behind() {
        let dir = tempfile::tempdir().unwrap();
        let options = small_options(FlushPolicy::Never);
        let (mut appender, _) = Appender::open(dir.path(), options).unwrap();
        {
            let mut writer = appender.begin(1, 0);
            writer.push(b"never committed").unwrap();
        }
        let written = write_batches(&mut appender, &[vec![b"kept".to_vec()]]);
        assert_eq!(written[0].0.first_offset, Offset(0));
        appender.flush().unwrap();
        drop(appender);
        let (_, report) = Appender::open(dir.path(), options).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(read_all(dir.path(), Offset(0)), written);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut appender, _) =
            Appender::open(dir.path(), small_options(FlushPolicy::Never)).unwrap();
        let mut writer = appender.begin(1, 0);
        let long = vec![b'x'; LINE_BYTES_MAX as usize + 1];
        assert!(matches!(writer.push(&long), Err(Error::LineTooLong { .. })));
        writer.push(&long[1..]).unwrap();
        let mut out = Vec::new();
        writer.finish(&mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            appender.lines(&out[0]).next().unwrap().len(),
            LINE_BYTES_MAX as usize
        );
    }

    #[test]
    fn a_long_line_inside_an_open_batch_leaves_the_batch_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (mut appender, _) =
            Appender::open(dir.path(), small_options(FlushPolicy::Never)).unwrap();
        let mut writer = appender.begin(1, 0);
        writer.push(b"before").unwrap();
        let long = vec![b'x'; LINE_BYTES_MAX as usize + 1];
        assert!(matches!(writer.push(&long), Err(Error::LineTooLong { .. })));
        writer.push(b"after").unwrap();
        let mut out = Vec::new();
        writer.finish(&mut out).unwrap();
        assert_eq!(
            out.len(),
            1,
            "one batch: the rejected line committed nothing"
        );
        let lines: Vec<&[u8]> = appender.lines(&out[0]).collect();
        assert_eq!(lines, [&b"before"[..], &b"after"[..]]);
        drop(appender);
        assert_eq!(read_all(dir.path(), Offset(0)).len(), 1);
    }

    /// Waits until the flusher thread has made spare segment `slot` of `dir`, returning its
    /// inode.
    fn spare_inode(dir: &Path, slot: usize) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(m) = std::fs::metadata(segment::spare_path(dir, slot))
                && m.len() == SEGMENT_BYTES_MIN
            {
                return m.ino();
            }
            assert!(Instant::now() < deadline, "no spare segment was made");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_roll_renames_the_spare_made_in_the_background_into_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (mut appender, _) =
            Appender::open(dir.path(), small_options(FlushPolicy::Never)).unwrap();
        let spare = spare_inode(dir.path(), 0);
        let other = spare_inode(dir.path(), 1);
        let mut written = Vec::new();
        while list_segments(dir.path()).unwrap().len() < 2 {
            written.extend(write_batches(&mut appender, &many_batches(5)));
        }
        let segments = list_segments(dir.path()).unwrap();
        let second = std::fs::metadata(&segments[1].path).unwrap();
        assert_eq!(
            second.ino(),
            spare,
            "the second segment is the oldest spare"
        );
        assert_eq!(second.len(), SEGMENT_BYTES_MIN);
        assert_ne!(
            spare_inode(dir.path(), 0),
            spare,
            "a new spare takes its slot after the roll"
        );
        while list_segments(dir.path()).unwrap().len() < 3 {
            written.extend(write_batches(&mut appender, &many_batches(5)));
        }
        let third = std::fs::metadata(&list_segments(dir.path()).unwrap()[2].path).unwrap();
        assert_eq!(third.ino(), other, "the next roll takes the other spare");
        drop(appender);
        for slot in 0..crate::log::SPARES_READY {
            let path = segment::spare_path(dir.path(), slot);
            assert!(!path.exists(), "dropped with it: {}", path.display());
        }
        assert_eq!(read_all(dir.path(), Offset(0)), written);
    }

    #[test]
    fn a_spare_left_by_a_crash_is_never_read_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let options = small_options(FlushPolicy::Never);
        let (mut appender, _) = Appender::open(dir.path(), options).unwrap();
        let written = write_batches(&mut appender, &many_batches(20));
        drop(appender);
        // A crash while a spare was being made: a short file of garbage that happens to
        // start like a batch.
        let mut junk = b"SLCB".to_vec();
        junk.resize(4096, 0xa5);
        std::fs::write(segment::spare_path(dir.path(), 0), &junk).unwrap();
        std::fs::write(dir.path().join("spare.seg.tmp"), &junk).unwrap();
        let (mut appender, report) = Appender::open(dir.path(), options).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert!(
            !dir.path().join("spare.seg.tmp").exists(),
            "an earlier version's spare is deleted at open"
        );
        spare_inode(dir.path(), 0);
        let spare = std::fs::read(segment::spare_path(dir.path(), 0)).unwrap();
        assert!(spare.iter().all(|&b| b == 0), "a fresh spare, all zeros");
        let more = write_batches(&mut appender, &many_batches(200));
        drop(appender);
        let all: Vec<_> = written.into_iter().chain(more).collect();
        assert_eq!(read_all(dir.path(), Offset(0)), all);
    }

    #[test]
    fn a_large_writer_is_split_into_capped_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (mut appender, _) =
            Appender::open(dir.path(), small_options(FlushPolicy::Never)).unwrap();
        // 3 MiB in one writer: split by the payload cap and by segment rolls.
        let lines: Vec<Vec<u8>> = (0..48).map(|i| line(i, 64 * 1024)).collect();
        let written = write_batches(&mut appender, std::slice::from_ref(&lines));
        assert!(written.len() >= 4, "{} batches", written.len());
        let got: Vec<Vec<u8>> = written.iter().flat_map(|(_, l)| l.clone()).collect();
        assert_eq!(got, lines);
        assert_eq!(read_all(dir.path(), Offset(0)), written);
    }

    #[test]
    fn flush_always_makes_every_finished_batch_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (mut appender, _) =
            Appender::open(dir.path(), small_options(FlushPolicy::Always)).unwrap();
        for batch in many_batches(40) {
            write_batches(&mut appender, &[batch]);
            assert_eq!(appender.flushed_offset(), appender.next_offset());
        }
    }

    #[test]
    fn flush_interval_flushes_in_the_background_and_maybe_flush_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut appender, _) =
            Appender::open(dir.path(), small_options(FlushPolicy::Interval)).unwrap();
        write_batches(&mut appender, &[vec![b"a".to_vec(), b"b".to_vec()]]);
        let o = appender.offsets();
        assert_eq!(o.written, Offset(2));
        assert!(o.durable <= o.flushed && o.flushed <= o.written);
        // No msync on this thread: the flusher thread catches up within a few intervals.
        let deadline = Instant::now() + Duration::from_secs(10);
        while appender.flushed_offset() < Offset(2) {
            assert!(Instant::now() < deadline, "flusher never flushed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(appender.maybe_flush(Instant::now()).unwrap());
        assert!(!appender.maybe_flush(Instant::now()).unwrap());
        let (flushes, _) = appender.background_flushes();
        assert!(flushes >= 1);
        // Nothing new written: the flusher does nothing more.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(appender.background_flushes().0, flushes);
        write_batches(&mut appender, &[vec![b"c".to_vec()]]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while appender.flushed_offset() < Offset(3) {
            assert!(Instant::now() < deadline, "flusher never flushed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(appender.offsets().flushed, Offset(3));
    }

    #[test]
    fn a_synchronous_flush_and_the_flusher_keep_the_tracker_in_order_across_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = small_options(FlushPolicy::Interval);
        options.flush_interval_ms = 1;
        let (mut appender, _) = Appender::open(dir.path(), options).unwrap();
        for (i, batch) in many_batches(150).into_iter().enumerate() {
            write_batches(&mut appender, &[batch]);
            let o = appender.offsets();
            assert!(o.durable <= o.flushed && o.flushed <= o.written, "{o:?}");
            if i % 17 == 0 {
                appender.flush().unwrap();
                assert_eq!(appender.flushed_offset(), appender.next_offset());
            }
        }
        assert!(list_segments(dir.path()).unwrap().len() >= 3);
        appender.flush().unwrap();
        let next = appender.next_offset();
        drop(appender);
        let (_, report) = Appender::open(dir.path(), options).unwrap();
        assert_eq!((report.next_offset, report.truncated_bytes), (next, 0));
    }

    #[test]
    fn flush_never_waits_for_an_explicit_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (mut appender, _) =
            Appender::open(dir.path(), small_options(FlushPolicy::Never)).unwrap();
        write_batches(&mut appender, &[vec![b"a".to_vec()]]);
        assert!(
            !appender
                .maybe_flush(Instant::now() + Duration::from_secs(60))
                .unwrap()
        );
        assert_eq!(appender.flushed_offset(), Offset(0));
        appender.flush().unwrap();
        assert_eq!(appender.flushed_offset(), Offset(1));
    }

    #[test]
    fn a_missing_segment_before_the_newest_is_a_reported_gap() {
        let dir = tempfile::tempdir().unwrap();
        let options = small_options(FlushPolicy::Never);
        let (mut appender, _) = Appender::open(dir.path(), options).unwrap();
        let written = write_batches(&mut appender, &many_batches(120));
        appender.flush().unwrap();
        let next = appender.next_offset();
        drop(appender);
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 3);
        let (gone, after) = (&segments[segments.len() - 2], &segments[segments.len() - 1]);
        std::fs::remove_file(&gone.path).unwrap();
        let (_, report) = Appender::open(dir.path(), options).unwrap();
        assert_eq!(report.next_offset, next);
        assert_eq!(report.lost_lines, after.base.0 - gone.base.0);
        // The reader reads what is there and counts what is not.
        let mut reader = Reader::open(dir.path(), Offset(0)).unwrap();
        let mut lines = 0;
        while let Some(batch) = reader.next_batch().unwrap() {
            lines += u64::from(batch.info.count);
        }
        let lost = after.base.0 - gone.base.0;
        assert_eq!(
            lines + lost,
            written.iter().map(|(i, _)| u64::from(i.count)).sum::<u64>()
        );
        assert_eq!(reader.damage().lost_lines, lost);
    }

    #[test]
    fn a_segment_overlapping_the_one_before_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let options = small_options(FlushPolicy::Never);
        let (mut appender, _) = Appender::open(dir.path(), options).unwrap();
        write_batches(&mut appender, &many_batches(120));
        appender.flush().unwrap();
        drop(appender);
        let segments = list_segments(dir.path()).unwrap();
        let newest = segments.last().unwrap();
        let moved = segment_path(dir.path(), Offset(newest.base.0 - 1));
        std::fs::rename(&newest.path, moved).unwrap();
        assert!(matches!(
            Appender::open(dir.path(), options),
            Err(Error::Discontinuity { .. })
        ));
    }

    fn sealed(bases: &[u64], times: &[i64]) -> Vec<SealedSegment> {
        bases
            .iter()
            .zip(times)
            .map(|(&b, &t)| SealedSegment {
                base: Offset(b),
                path: PathBuf::from(format!("{b}.seg")),
                file_bytes: 100,
                max_time_ms: t,
            })
            .collect()
    }

    #[test]
    fn retention_deletes_the_oldest_segments_over_the_byte_bound_down_to_the_floor() {
        let segs = sealed(&[0, 10, 20, 30], &[0; 4]);
        let by_bytes = |bytes_max, floor| {
            Retention {
                bytes_max,
                hours: 0,
                floor: Offset(floor),
            }
            .expired(&segs, Offset(40), 100, 0)
        };
        // 500 bytes in all, the active segment included.
        assert_eq!(by_bytes(0, u64::MAX), 0, "no bound");
        assert_eq!(by_bytes(500, u64::MAX), 0);
        assert_eq!(by_bytes(499, u64::MAX), 1);
        assert_eq!(by_bytes(250, u64::MAX), 3);
        assert_eq!(by_bytes(1, u64::MAX), 4, "never the active segment");
        // The floor: a segment holding it or later offsets stays.
        assert_eq!(by_bytes(1, 0), 0, "no floor set: nothing");
        assert_eq!(by_bytes(1, 19), 1);
        assert_eq!(by_bytes(1, 20), 2);
        assert_eq!(by_bytes(1, 39), 3);
    }

    #[test]
    fn retention_deletes_segments_older_than_the_hours_bound_oldest_first() {
        const HOUR_MS: i64 = 3_600_000;
        let now = 100 * HOUR_MS;
        let times = [
            now - 50 * HOUR_MS,
            now - 3 * HOUR_MS / 2,
            now - 30 * HOUR_MS,
            now,
        ];
        let segs = sealed(&[0, 10, 20, 30], &times);
        let by_age = |hours, floor| {
            Retention {
                bytes_max: 0,
                hours,
                floor: Offset(floor),
            }
            .expired(&segs, Offset(40), 100, now)
        };
        assert_eq!(by_age(0, u64::MAX), 0, "no bound");
        assert_eq!(by_age(60, u64::MAX), 0);
        assert_eq!(by_age(40, u64::MAX), 1);
        // The second is young: deletion stops there, whatever follows (no holes).
        assert_eq!(by_age(2, u64::MAX), 1);
        assert_eq!(by_age(1, u64::MAX), 3);
        assert_eq!(by_age(1, 5), 0, "the floor wins");
        let both = Retention {
            bytes_max: 350,
            hours: 40,
            floor: Offset(u64::MAX),
        };
        assert_eq!(both.expired(&segs, Offset(40), 100, now), 2);
    }

    #[test]
    fn retention_deletes_files_only_below_the_floor_and_a_reader_starts_at_the_oldest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = small_options(FlushPolicy::Never);
        options.retention_bytes = 2 * SEGMENT_BYTES_MIN;
        let (mut appender, _) = Appender::open(dir.path(), options).unwrap();
        let written = write_batches(&mut appender, &many_batches(150));
        let before = list_segments(dir.path()).unwrap();
        assert!(before.len() >= 5, "{} segments", before.len());
        // No floor: inert, however far over the bound.
        assert_eq!(appender.apply_retention().unwrap(), 0);
        assert_eq!(list_segments(dir.path()).unwrap(), before);

        // A floor inside the third segment: the first two go, with their indexes.
        appender.set_retention_floor(Offset(before[2].base.0 + 1));
        appender.set_retention_floor(Offset(1));
        assert_eq!(appender.retention_floor(), Offset(before[2].base.0 + 1));
        assert_eq!(appender.apply_retention().unwrap(), 2);
        let after = list_segments(dir.path()).unwrap();
        assert_eq!(after, before[2..]);
        for s in &before[..2] {
            assert!(!segment::index_path(dir.path(), s.base).exists());
        }
        let kept: Vec<_> = written
            .iter()
            .filter(|(i, _)| i.first_offset >= before[2].base)
            .cloned()
            .collect();
        assert_eq!(read_all(dir.path(), Offset(0)), kept);

        // A floor at the active segment: everything over the bound goes, never the active.
        appender.set_retention_floor(appender.next_offset());
        appender.apply_retention().unwrap();
        let last = list_segments(dir.path()).unwrap();
        assert_eq!(last.len(), 2);
        assert_eq!(last[1], *before.last().unwrap());
        let next = appender.next_offset();
        drop(appender);
        let (mut appender, report) = Appender::open(dir.path(), options).unwrap();
        assert_eq!(report.next_offset, next);
        assert_eq!(
            appender.apply_retention().unwrap(),
            0,
            "floor forgotten: inert"
        );
    }

    #[test]
    fn retention_by_age_uses_the_newest_ingest_time_of_each_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = small_options(FlushPolicy::Never);
        options.retention_hours = 1;
        let (mut appender, _) = Appender::open(dir.path(), options).unwrap();
        // write_batches stamps batch i with ingest time 1000 + i ms.
        write_batches(&mut appender, &many_batches(150));
        let before = list_segments(dir.path()).unwrap();
        appender.set_retention_floor(appender.next_offset());
        let hour_ms = 3_600_000;
        assert_eq!(appender.apply_retention_at(1_000 + hour_ms).unwrap(), 0);
        assert_eq!(
            appender.apply_retention_at(1_000 + 150 + hour_ms).unwrap(),
            before.len() - 1
        );
        assert_eq!(
            list_segments(dir.path()).unwrap(),
            before[before.len() - 1..]
        );
    }

    #[test]
    fn sealed_segments_become_durable_in_the_background_and_then_get_their_seal() {
        for flush in [FlushPolicy::Never, FlushPolicy::Interval] {
            let dir = tempfile::tempdir().unwrap();
            let (mut appender, _) = Appender::open(dir.path(), small_options(flush)).unwrap();
            for batch in many_batches(150) {
                write_batches(&mut appender, &[batch]);
                assert!(appender.tracker.sealing_len() <= SEALS_IN_FLIGHT_MAX);
            }
            let segments = list_segments(dir.path()).unwrap();
            assert!(segments.len() >= 4, "{} segments", segments.len());
            let deadline = Instant::now() + Duration::from_secs(10);
            while appender.tracker.sealing_len() > 0 {
                assert!(
                    Instant::now() < deadline,
                    "{flush:?}: sealed segments never drained"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let last_sealed_end = segments.last().unwrap().base;
            assert!(appender.offsets().durable >= last_sealed_end);
            for s in &segments[..segments.len() - 1] {
                assert!(
                    index::load(dir.path(), s.base).unwrap().is_complete(),
                    "{flush:?}: {} has no seal",
                    s.path.display()
                );
            }
        }
    }

    #[test]
    fn lines_of_a_long_session_are_read_back_from_the_stage_and_the_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            segment_bytes: 16 * 1024 * 1024,
            ..small_options(FlushPolicy::Never)
        };
        let (mut appender, _) = Appender::open(dir.path(), options).unwrap();
        // Longer than the stage keeps (and than one batch): the first batches are read back
        // through the mapping, the last from the stage.
        let lines: Vec<Vec<u8>> = (0..700).map(|i| line(i, 9_000 + i % 13)).collect();
        let mut out = Vec::new();
        let mut writer = appender.begin(3, 1234);
        for l in &lines {
            writer.push(l).unwrap();
        }
        writer.finish(&mut out).unwrap();
        assert!(out.len() >= 6, "{} batches", out.len());
        let mut read = Vec::new();
        for batch in &out {
            read.extend(appender.lines(batch).map(<[u8]>::to_vec));
        }
        assert_eq!(read, lines);
        drop(appender);
        let all: Vec<Vec<u8>> = read_all(dir.path(), Offset(0))
            .into_iter()
            .flat_map(|(_, l)| l)
            .collect();
        assert_eq!(all, lines);
    }

    /// Appends `lines` as the core does: whatever a writer could not take (its failed batch,
    /// then every later line) is kept and appended again, in order, by the next attempt.
    /// Returns the attempts it took.
    fn append_holding_on_failure(appender: &mut Appender, lines: &[Vec<u8>]) -> usize {
        let mut pending: Vec<Vec<u8>> = lines.to_vec();
        let mut attempts = 0;
        while !pending.is_empty() {
            attempts += 1;
            assert!(attempts < 1_000, "a fault plan that never clears");
            let mut kept: Vec<Vec<u8>> = Vec::new();
            let mut out = Vec::new();
            let mut writer = appender.begin(7, 42);
            let mut failed = false;
            for line in &pending {
                if !failed && writer.push(line).is_err() {
                    failed = true;
                    kept.extend(writer.failed_lines().unwrap().map(<[u8]>::to_vec));
                }
                if failed {
                    kept.push(line.clone());
                }
            }
            if !failed && writer.seal().is_err() {
                kept.extend(writer.failed_lines().unwrap().map(<[u8]>::to_vec));
            }
            writer.finish(&mut out).unwrap();
            let committed: usize = out.iter().map(|b| b.count as usize).sum();
            assert_eq!(
                committed + kept.len(),
                pending.len(),
                "every line is committed or kept"
            );
            pending = kept;
        }
        attempts
    }

    #[test]
    fn a_failed_roll_leaves_no_segment_behind_and_the_next_roll_succeeds() {
        use crate::fault::{Fault, Op};
        let dir = tempfile::tempdir().unwrap();
        let (mut appender, _) =
            Appender::open(dir.path(), small_options(FlushPolicy::Never)).unwrap();
        crate::fault::clear();
        crate::fault::arm(Fault {
            op: Op::Roll,
            after: 0,
            times: 3,
            errno: libc::ENOSPC,
        });
        // 3 MiB of lines: several rolls, the first three of which fail.
        let lines: Vec<Vec<u8>> = (0..300).map(|i| line(i, 10_000)).collect();
        let attempts = append_holding_on_failure(&mut appender, &lines);
        assert_eq!(attempts, 4);
        assert_eq!(crate::fault::hits(), 3);
        crate::fault::clear();
        let read: Vec<Vec<u8>> = read_all(dir.path(), Offset(0))
            .into_iter()
            .flat_map(|(_, l)| l)
            .collect();
        assert_eq!(read, lines);
        assert_eq!(appender.next_offset(), Offset(lines.len() as u64));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let segments = list_segments(dir.path()).unwrap();
        assert_eq!(
            segments.last().unwrap().base,
            appender.segment.base(),
            "{names:?}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn failed_writes_and_rolls_lose_no_line_and_reuse_no_offset(
            faults in proptest::collection::vec((0u8..2, 0u32..40, 1u32..4), 1..6),
            sizes in proptest::collection::vec(1usize..20_000, 50..250),
            flush_always in proptest::bool::ANY,
        ) {
            use crate::fault::{Fault, Op};
            let dir = tempfile::tempdir().unwrap();
            let policy = if flush_always { FlushPolicy::Always } else { FlushPolicy::Never };
            let lines: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| line(i, n)).collect();
            {
                let (mut appender, _) = Appender::open(dir.path(), small_options(policy)).unwrap();
                crate::fault::clear();
                for (op, after, times) in faults {
                    let op = if op == 0 { Op::Write } else { Op::Roll };
                    crate::fault::arm(Fault { op, after, times, errno: libc::EIO });
                }
                // In chunks, as reads arrive.
                for chunk in lines.chunks(17) {
                    append_holding_on_failure(&mut appender, chunk);
                }
                crate::fault::clear();
                proptest::prop_assert_eq!(appender.next_offset(), Offset(lines.len() as u64));
            }
            // Reopened (recovery), the log holds every line once, in order, offsets dense.
            let (appender, report) = Appender::open(dir.path(), small_options(policy)).unwrap();
            proptest::prop_assert_eq!(report.next_offset, Offset(lines.len() as u64));
            drop(appender);
            let batches = read_all(dir.path(), Offset(0));
            let mut next = Offset(0);
            for (info, _) in &batches {
                proptest::prop_assert_eq!(info.first_offset, next);
                next = info.end_offset();
            }
            let read: Vec<Vec<u8>> = batches.into_iter().flat_map(|(_, l)| l).collect();
            proptest::prop_assert_eq!(read, lines);
        }
    }
}
