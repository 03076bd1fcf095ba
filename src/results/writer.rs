//! The writer of one shard's record (see the module doc of `results`).

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{Cursors, Options, legacy_file, list_segments, segment_path};
use crate::fault::{self, Op};
use crate::limits::RESULTS_READER_HOLD_FACTOR;

/// Staged bytes after which [`RecordWriter::append`] writes them out.
const STAGED_BYTES_WRITE: usize = 64 * 1024;
/// How often [`RecordWriter::flush`] looks at retention when no segment rolls.
const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// A sealed segment.
#[derive(Debug)]
struct Sealed {
    base: u64,
    path: PathBuf,
    bytes: u64,
}

/// Files written since they were last made durable: sealed segments and the directory
/// entries of new segments. Shared with the [`RecordSync`] handles, which empty it only once
/// their sync succeeded (so a failed checkpoint leaves them for the next).
#[derive(Debug, Default)]
struct Unsynced {
    files: Vec<(PathBuf, Arc<File>)>,
    dir: bool,
}

/// Appends rows to one shard's record.
///
/// Rows are staged in memory and written at [`flush`](Self::flush). A write that fails
/// (ENOSPC, EIO, EPERM) loses nothing: the unwritten bytes stay staged, in order, and the
/// next flush writes them from where the record ends. [`position`](Self::position) counts
/// staged bytes too: it is where the record will end once they are written, which is what a
/// checkpoint records; [`RecordSync::sync`] refuses to vouch for bytes not yet written.
#[derive(Debug)]
pub struct RecordWriter {
    dir: PathBuf,
    options: Options,
    cursors: Arc<Cursors>,
    /// Position of the newest committed checkpoint: retention keeps what follows it.
    committed: Arc<AtomicU64>,
    sealed: VecDeque<Sealed>,
    /// The segment being written: its first position, path and file.
    base: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Position up to which bytes are in the files.
    written: u64,
    /// Whether `written` is at a row boundary (a write cut short mid-row is not).
    at_row_start: bool,
    /// Rows after `written`, not yet in a file.
    staged: Vec<u8>,
    /// A write error met while staging a row, for the owner to see.
    error: Option<io::Error>,
    unsynced: Arc<Mutex<Unsynced>>,
    last_retention: Instant,
}

/// A record's written bytes that another thread makes durable (see
/// [`RecordWriter::sync_handle`]).
#[derive(Debug)]
pub struct RecordSync {
    dir: PathBuf,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes the current segment must hold: the position recorded minus its base.
    len: u64,
    unsynced: Arc<Mutex<Unsynced>>,
}

impl RecordSync {
    /// Makes everything written before the handle was taken durable: sealed segments not
    /// yet synced, the current one, and the directory. Fails when the current segment does
    /// not yet hold the recorded length (its last rows could not be written): a checkpoint
    /// never names rows that are not in the record.
    pub fn sync(&self) -> io::Result<()> {
        fault::check(Op::Sync)?;
        {
            let mut unsynced = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
            while let Some((_, file)) = unsynced.files.first() {
                file.sync_data()?;
                unsynced.files.remove(0);
            }
            if unsynced.dir {
                File::open(&self.dir)?.sync_all()?;
                unsynced.dir = false;
            }
        }
        // The length first, then the sync: bytes in the file now are covered by it.
        let in_file = self.file.metadata()?.len();
        if in_file < self.len {
            return Err(io::Error::other(format!(
                "{} holds {in_file} bytes; {} are still waiting to be written",
                self.path.display(),
                self.len - in_file
            )));
        }
        self.file.sync_data()
    }

    /// The segment being written when the handle was taken.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_rw(path: &Path, create_new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if create_new {
        options.create_new(true);
    }
    options.open(path)
}

impl RecordWriter {
    /// Opens the record in `dir` (creating it) for appending at `position`: the position the
    /// checkpoint being resumed recorded (0 without one). Segments after it are deleted and
    /// the one holding it is cut there; a segment shorter than that is an error (the
    /// checkpoint promised rows that are not there). When retention has deleted every
    /// segment up to `position`, writing starts in a new segment at `position`.
    pub fn open(
        dir: &Path,
        position: u64,
        options: Options,
        cursors: Arc<Cursors>,
        committed: Arc<AtomicU64>,
    ) -> io::Result<RecordWriter> {
        std::fs::create_dir_all(dir)?;
        let mut segments = list_segments(dir)?;
        if segments.is_empty()
            && let Some(legacy) = legacy_file(dir).filter(|p| p.exists())
        {
            // A record of the one-file layout becomes the first segment.
            let first = segment_path(dir, 0);
            std::fs::rename(&legacy, &first)?;
            File::open(dir)?.sync_all()?;
            tracing::info!(from = %legacy.display(), to = %first.display(), "results record moved into segments");
            segments = list_segments(dir)?;
        }
        let (base, path, file, cut) = cut_back(dir, &mut segments, position)?;
        if cut {
            File::open(dir)?.sync_all()?;
        }
        let sealed = segments
            .into_iter()
            .map(|s| {
                let bytes = std::fs::metadata(&s.path)?.len();
                Ok(Sealed {
                    base: s.base,
                    path: s.path,
                    bytes,
                })
            })
            .collect::<io::Result<VecDeque<_>>>()?;
        committed.fetch_max(position, Ordering::AcqRel);
        Ok(RecordWriter {
            dir: dir.to_path_buf(),
            options,
            cursors,
            committed,
            sealed,
            base,
            path,
            file: Arc::new(file),
            written: position,
            at_row_start: true,
            staged: Vec::with_capacity(STAGED_BYTES_WRITE + 4096),
            error: None,
            unsynced: Arc::default(),
            last_retention: Instant::now(),
        })
    }

    /// Stages one row (a whole line, newline included) and writes the staged rows out once
    /// they fill a write. A failed write keeps them staged (see [`flush`](Self::flush)); the
    /// row is never lost.
    pub fn append(&mut self, row: &[u8]) {
        debug_assert!(row.ends_with(b"\n"), "a row is a whole line");
        let was_full = self.staged.len() >= STAGED_BYTES_WRITE;
        self.staged.extend_from_slice(row);
        if !was_full
            && self.staged.len() >= STAGED_BYTES_WRITE
            && let Err(e) = self.flush()
        {
            // Kept for the owner to see ([`take_error`](Self::take_error)); the row is
            // staged. When the stage was full already, writing failed before: the owner's
            // retry writes.
            self.error.get_or_insert(e);
        }
    }

    /// The first write error met by [`append`](Self::append) since the last call.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Writes the staged rows into the record (readers see them), rolling to a new segment
    /// first when the current one is full. On error the bytes not written stay staged, in
    /// order, and the next call goes on from the record's end.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.staged.is_empty()
            && self.at_row_start
            && self.written - self.base >= self.options.segment_bytes
        {
            self.roll()?;
        }
        while !self.staged.is_empty() {
            let n = fault::check(Op::Write)
                .and_then(|()| self.file.write_at(&self.staged, self.written - self.base));
            match n {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n as u64;
                    self.at_row_start = self.staged[n - 1] == b'\n';
                    self.staged.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.staged.capacity() > 4 * STAGED_BYTES_WRITE {
            // A long failure grew the stage: give the memory back once it is written.
            self.staged.shrink_to(STAGED_BYTES_WRITE + 4096);
        }
        if self.last_retention.elapsed() >= RETENTION_CHECK_INTERVAL {
            self.apply_retention();
        }
        Ok(())
    }

    /// Seals the current segment and starts the next, named by the position.
    fn roll(&mut self) -> io::Result<()> {
        let path = segment_path(&self.dir, self.written);
        let file = fault::check(Op::Roll)
            .and_then(|()| open_rw(&path, true))
            .inspect_err(|_| {
                // A roll that fails must leave nothing behind: the next one creates this
                // same file again.
                let _ = std::fs::remove_file(&path);
            })?;
        let old_path = std::mem::replace(&mut self.path, path);
        let old_file = std::mem::replace(&mut self.file, Arc::new(file));
        {
            let mut unsynced = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
            unsynced.files.push((old_path.clone(), old_file));
            unsynced.dir = true;
        }
        self.sealed.push_back(Sealed {
            base: self.base,
            path: old_path,
            bytes: self.written - self.base,
        });
        self.base = self.written;
        tracing::debug!(segment = %self.path.display(), "results segment rolled");
        self.apply_retention();
        Ok(())
    }

    /// Deletes the oldest sealed segments while the record is over its retention, never one
    /// that ends after the newest committed checkpoint's position or a reader's cursor.
    fn apply_retention(&mut self) {
        self.last_retention = Instant::now();
        let Options {
            retention_bytes,
            retention_hours,
            ..
        } = self.options;
        if retention_bytes == 0 && retention_hours == 0 {
            return;
        }
        let committed = self.committed.load(Ordering::Acquire);
        let readers = self.cursors.min().unwrap_or(u64::MAX);
        // Readers hold retention back only up to `RESULTS_READER_HOLD_FACTOR` times its
        // bound: past it, a reader that fell that far behind loses the oldest rows (and
        // counts them as skipped), so no reader, however slow, grows the disk without end.
        let readers_held = retention_bytes.saturating_mul(RESULTS_READER_HOLD_FACTOR);
        let max_age = Duration::from_secs(retention_hours.saturating_mul(3600));
        let mut kept: u64 = self.sealed.iter().map(|s| s.bytes).sum();
        while let Some(oldest) = self.sealed.front() {
            let end = oldest.base + oldest.bytes;
            let floor = if retention_bytes > 0 && kept > readers_held {
                committed
            } else {
                committed.min(readers)
            };
            let over_bytes = retention_bytes > 0 && kept > retention_bytes;
            let too_old = retention_hours > 0
                && std::fs::metadata(&oldest.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > max_age);
            if !(over_bytes || too_old) || end > floor {
                return;
            }
            if let Err(e) = std::fs::remove_file(&oldest.path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(segment = %oldest.path.display(), error = %e, "cannot delete results segment");
                return;
            }
            tracing::debug!(segment = %oldest.path.display(), "results segment deleted by retention");
            kept -= oldest.bytes;
            self.sealed.pop_front();
        }
    }

    /// Writes the staged rows out (as [`flush`](Self::flush) does; a failure is returned
    /// after the handle) and returns a handle that makes everything up to
    /// [`position`](Self::position) durable from another thread (checkpoints: the
    /// coordinator fsyncs, the core goes on). The handle's sync fails while those bytes are
    /// not all written.
    pub fn sync_handle(&mut self) -> (RecordSync, io::Result<()>) {
        let flushed = self.flush();
        let sync = RecordSync {
            dir: self.dir.clone(),
            path: self.path.clone(),
            file: Arc::clone(&self.file),
            len: self.position() - self.base,
            unsynced: Arc::clone(&self.unsynced),
        };
        (sync, flushed)
    }

    /// Where the record ends, staged rows included: the position a checkpoint records.
    pub fn position(&self) -> u64 {
        self.written + self.staged.len() as u64
    }

    /// Bytes staged and not yet written (more than a write's worth only while writes fail).
    pub fn staged_bytes(&self) -> usize {
        self.staged.len()
    }

    /// The record's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sealed segments written since their last successful sync.
    #[cfg(test)]
    pub(super) fn unsynced_files(&self) -> usize {
        self.unsynced.lock().map_or(0, |u| u.files.len())
    }

    /// The record's readers, for a new reader to register with.
    pub fn cursors(&self) -> &Arc<Cursors> {
        &self.cursors
    }
}

/// Cuts the record in `dir` (its `segments`) back to `position`: deletes the segments after
/// it and cuts the one holding it, or starts a new segment there when there is none. Returns
/// the segment to write (base, path, file) and whether the directory changed. The segments
/// left in `segments` are the sealed ones.
fn cut_back(
    dir: &Path,
    segments: &mut Vec<super::SegmentFile>,
    position: u64,
) -> io::Result<(u64, PathBuf, File, bool)> {
    let mut cut = false;
    while let Some(last) = segments.last().filter(|s| s.base > position) {
        tracing::info!(segment = %last.path.display(), "results segment after the checkpoint removed");
        std::fs::remove_file(&last.path)?;
        segments.pop();
        cut = true;
    }
    let (base, path, file) = match segments.pop() {
        Some(current) => {
            let file = open_rw(&current.path, false)?;
            let actual = file.metadata()?.len();
            let len = position - current.base;
            if actual < len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} is {actual} bytes, shorter than the {len} its checkpoint recorded",
                        current.path.display()
                    ),
                ));
            }
            if actual > len {
                tracing::info!(path = %current.path.display(), cut_bytes = actual - len, "results cut back to the checkpoint");
                file.set_len(len)?;
                file.sync_all()?;
            }
            (current.base, current.path, file)
        }
        None => {
            if position > 0 {
                tracing::info!(dir = %dir.display(), position, "results record starts a new segment at the checkpoint's position");
            }
            let path = segment_path(dir, position);
            let file = open_rw(&path, true)?;
            cut = true;
            (position, path, file)
        }
    };
    Ok((base, path, file, cut))
}

/// A close hook's record (`alerts/`, `experiments/`): rows the core appends as windows close,
/// written out at each frontier step. A failed write keeps them staged (see
/// [`RecordWriter::flush`]) and is logged once per run of failures, naming `what` the rows
/// are; the checkpoint's sync handle then fails until they are in.
#[derive(Debug)]
pub struct HookRecord {
    record: RecordWriter,
    what: &'static str,
    failing: bool,
}

impl HookRecord {
    /// The record `record`, of rows that are `what` ("alert transitions").
    pub fn new(record: RecordWriter, what: &'static str) -> HookRecord {
        HookRecord {
            record,
            what,
            failing: false,
        }
    }

    /// Stages one row (with its newline).
    #[inline]
    pub fn append(&mut self, row: &[u8]) {
        self.record.append(row);
    }

    /// Writes the staged rows out, if any.
    pub fn write_out(&mut self) {
        if self.record.staged_bytes() == 0 {
            return;
        }
        match self.record.flush() {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    tracing::warn!(path = %self.record.dir().display(), error = %e, what = self.what, "cannot write rows; they stay staged and are retried");
                    self.failing = true;
                }
            }
        }
    }

    /// Writes the staged rows out and returns the handle that makes them durable, the
    /// write's result, and the record's position (for the checkpoint).
    pub fn sync_handle(&mut self) -> (RecordSync, io::Result<()>, u64) {
        let (sync, written) = self.record.sync_handle();
        (sync, written, self.record.position())
    }

    /// The record's position, staged rows included.
    pub fn position(&self) -> u64 {
        self.record.position()
    }
}
