//! Reading a partition by offset or by ingest time with plain file reads (no mappings, so a
//! reader can never fault on a file another process changes), seeking with the segments'
//! sparse indexes; and the per-segment scanner that recovery, verify and index rebuilds
//! share.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index::{self, SegmentIndex};
use super::record::{self, BATCH_ALIGN_BYTES, BatchHeader, Defect, Expect, HEADER_BYTES};
use super::segment::{self, SegmentFile};
use super::{BatchInfo, Error, Lines, Offset};

/// Bytes the largest batch takes in a segment.
const BATCH_BYTES_MAX: u64 = HEADER_BYTES as u64 + super::BATCH_PAYLOAD_BYTES_MAX as u64;

/// Bytes read at a time when the batch needs less.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What [`SegmentScanner::step`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanStep {
    /// A valid batch at `pos`; its payload is `payload` in the scanner's buffer.
    Batch {
        pos: u64,
        header: BatchHeader,
        payload: Range<usize>,
    },
    /// The end of the data at `pos` (for now: a live segment may grow).
    End { pos: u64 },
    /// An invalid batch at `pos`.
    Defect { pos: u64, defect: Defect },
}

/// Where [`SegmentScanner::resync`] found valid data again after a damaged stretch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resynced {
    /// Where the damaged stretch starts (the position of the bad batch).
    pub(crate) bad_pos: u64,
    /// Where the next valid batch starts.
    pub(crate) pos: u64,
    /// Offsets of the lines lost with the damaged stretch (possibly empty).
    pub(crate) lost: Range<u64>,
}

impl Resynced {
    /// Lines lost with the damaged stretch.
    pub(crate) fn lost_lines(&self) -> u64 {
        self.lost.end - self.lost.start
    }
}

/// Walks the batches of one segment file with buffered positional reads.
#[derive(Debug)]
pub(crate) struct SegmentScanner {
    path: PathBuf,
    file: File,
    base: Offset,
    /// Where the next batch starts.
    pos: u64,
    /// Offset the next batch must start at.
    expected: Offset,
    /// Bytes of the file from `buf_pos`.
    buf: Vec<u8>,
    buf_pos: u64,
}

/// The error for a segment file that is not there.
pub(crate) fn gone(path: &Path) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::ErrorKind::NotFound.into(),
    }
}

impl SegmentScanner {
    /// Opens the segment at `path`, positioned at its first batch.
    pub(crate) fn open(path: &Path, base: Offset) -> Result<SegmentScanner, Error> {
        SegmentScanner::open_if_exists(path, base)?.ok_or_else(|| gone(path))
    }

    /// [`open`](Self::open), or `None` when the file is gone: retention deletes the oldest
    /// segments of a running appliance, also between a reader's listing and its opening.
    pub(crate) fn open_if_exists(
        path: &Path,
        base: Offset,
    ) -> Result<Option<SegmentScanner>, Error> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Some(SegmentScanner {
            path: path.to_path_buf(),
            file,
            base,
            pos: 0,
            expected: base,
            buf: Vec::new(),
            buf_pos: 0,
        }))
    }

    /// The segment's base offset.
    pub(crate) fn base(&self) -> Offset {
        self.base
    }

    /// The segment file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Offset after the last valid batch stepped over.
    pub(crate) fn expected(&self) -> Offset {
        self.expected
    }

    /// Moves to the batch at `pos`, which must start at offset `expected` (from an index).
    pub(crate) fn seek(&mut self, pos: u64, expected: Offset) {
        self.pos = pos;
        self.expected = expected;
    }

    /// Whether a valid batch starting at the expected offset is at the current position.
    pub(crate) fn at_batch(&mut self) -> Result<bool, Error> {
        Ok(matches!(self.check(self.pos)?, ScanStep::Batch { .. }))
    }

    /// Seeks to the index entry chosen by `pick`, when the index has one and the segment
    /// holds the batch it names; otherwise stays at the start (a scan). Returns whether it
    /// moved.
    pub(crate) fn seek_with(
        &mut self,
        index: Option<&SegmentIndex>,
        pick: impl Fn(&SegmentIndex) -> Option<&index::IndexEntry>,
    ) -> Result<bool, Error> {
        let Some(entry) = index.and_then(pick).filter(|e| e.file_pos > 0) else {
            return Ok(false);
        };
        let (pos, base) = (self.pos, self.expected);
        self.seek(entry.file_pos, entry.offset());
        if self.at_batch()? {
            return Ok(true);
        }
        tracing::warn!(
            segment = %self.path.display(),
            file_pos = entry.file_pos,
            offset = entry.first_offset,
            "log index entry does not match its segment; scanning instead"
        );
        self.seek(pos, base);
        Ok(false)
    }

    /// The bytes of a payload range returned by [`step`](Self::step).
    pub(crate) fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Checks the batch at the current position and steps over it when it is valid. At the
    /// end or a defect it stays put (and forgets its buffer, so a later call sees new data).
    pub(crate) fn step(&mut self) -> Result<ScanStep, Error> {
        let pos = self.pos;
        let step = self.check(pos)?;
        match &step {
            ScanStep::Batch { header, .. } => {
                self.pos += header.batch_bytes();
                self.expected = header.end_offset();
            }
            ScanStep::End { .. } | ScanStep::Defect { .. } => self.buf.clear(),
        }
        Ok(step)
    }

    /// After a defect at the current position (or nonzero bytes after the end of data):
    /// looks for the next valid batch, at a batch alignment after it, whose first offset is
    /// at least the expected one (the lines of the damaged stretch are lost, so the next
    /// valid batch starts at a later offset). Moves there and returns what was skipped;
    /// stays put and returns `None` when nothing valid follows. A match needs the magic, a
    /// plausible header, the CRC over header and payload, and consistent line framing, so
    /// bytes of a damaged batch are not taken for a batch by chance.
    pub(crate) fn resync(&mut self) -> Result<Option<Resynced>, Error> {
        self.resync_within(u64::MAX)
    }

    /// [`resync`](Self::resync), looking at most `window` bytes past the current position.
    pub(crate) fn resync_within(&mut self, window: u64) -> Result<Option<Resynced>, Error> {
        let bad_pos = self.pos;
        let limit = bad_pos.saturating_add(window);
        let mut pos = bad_pos + BATCH_ALIGN_BYTES;
        loop {
            if pos > limit {
                return Ok(None);
            }
            let Some(at) = self.fill(pos, HEADER_BYTES)? else {
                self.buf.clear();
                return Ok(None);
            };
            let magic = u32::from_le_bytes(
                self.buf[at..at + 4]
                    .try_into()
                    .expect("the buffer holds a header"),
            );
            if magic == record::MAGIC
                && let ScanStep::Batch { header, .. } =
                    self.check_with(pos, Expect::AtLeast(self.expected))?
            {
                let lost = self.expected.0..header.first_offset;
                self.pos = pos;
                self.expected = Offset(header.first_offset);
                return Ok(Some(Resynced { bad_pos, pos, lost }));
            }
            pos += BATCH_ALIGN_BYTES;
        }
    }

    fn check(&mut self, pos: u64) -> Result<ScanStep, Error> {
        self.check_with(pos, Expect::Exactly(self.expected))
    }

    fn check_with(&mut self, pos: u64, expected: Expect) -> Result<ScanStep, Error> {
        let Some(at) = self.fill(pos, HEADER_BYTES)? else {
            return Ok(ScanStep::End { pos });
        };
        let header = match record::decode_header(&self.buf[at..]) {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(ScanStep::End { pos }),
            Err(defect) => return Ok(ScanStep::Defect { pos, defect }),
        };
        let batch_bytes = header.batch_bytes();
        let Some(at) = self.fill(pos, batch_bytes as usize)? else {
            let segment_bytes = self.file_len()?;
            let defect = Defect::PastEnd {
                batch_end_pos: pos + batch_bytes,
                segment_bytes,
            };
            return Ok(ScanStep::Defect { pos, defect });
        };
        let rest = &self.buf[at + HEADER_BYTES..at + batch_bytes as usize];
        match record::check_batch(&header, rest, expected) {
            Ok(()) => {
                let start = at + HEADER_BYTES;
                Ok(ScanStep::Batch {
                    pos,
                    header,
                    payload: start..start + header.payload_bytes as usize,
                })
            }
            Err(defect) => Ok(ScanStep::Defect { pos, defect }),
        }
    }

    fn file_len(&self) -> Result<u64, Error> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|source| self.io_error(source))
    }

    fn io_error(&self, source: io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Makes the buffer hold file bytes `pos..pos+len`; returns where `pos` is in it, or
    /// `None` if the file ends before `pos+len`.
    fn fill(&mut self, pos: u64, len: usize) -> Result<Option<usize>, Error> {
        let buf_end = self.buf_pos + self.buf.len() as u64;
        if self.buf_pos <= pos && pos + len as u64 <= buf_end {
            return Ok(Some((pos - self.buf_pos) as usize));
        }
        let want = len.max(READ_CHUNK_BYTES);
        self.buf.clear();
        self.buf.resize(want, 0);
        self.buf_pos = pos;
        let mut filled = 0;
        while filled < want {
            match self
                .file
                .read_at(&mut self.buf[filled..], pos + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
        self.buf.truncate(filled);
        Ok((filled >= len).then_some(0))
    }

    /// Position one past the last nonzero byte at or after `pos`, `None` when all are zero.
    pub(crate) fn nonzero_end_after(&mut self, pos: u64) -> Result<Option<u64>, Error> {
        const CHUNK_BYTES: usize = 1024 * 1024;
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let mut at = pos;
        let mut end = None;
        loop {
            let n = loop {
                match self.file.read_at(&mut chunk, at) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.io_error(e)),
                }
            };
            if n == 0 {
                return Ok(end);
            }
            let last = super::recovery::nonzero_end(&chunk[..n]);
            if last > 0 {
                end = Some(at + last as u64);
            }
            at += n as u64;
        }
    }
}

/// A batch read back from disk.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    /// What the header says.
    pub info: BatchInfo,
    /// Its lines.
    pub lines: Lines<'a>,
}

/// Reads a partition by offset.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    /// Batches ending at or before it are skipped.
    from: Offset,
    /// The segment being read; `None` until the partition has one.
    scanner: Option<SegmentScanner>,
    /// A newer segment exists, so the current one is sealed: its end is final.
    sealed: bool,
    /// Offset after the last batch returned.
    position: Offset,
    /// Damage stepped over so far.
    damage: Damage,
    /// Where the valid data of the newest segment ended at a bad batch, when the last call
    /// to [`next_batch`](Reader::next_batch) stopped there.
    tail: Option<Tail>,
}

/// A bad batch after the last valid one of a partition's newest segment, where a
/// [`Reader`] stopped: a torn tail (the appender's recovery cuts it at its next start), or a
/// batch being written at that moment. The reader never reads past it, and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte position of the bad batch in it.
    pub file_pos: u64,
    /// The offset the bad batch would have started at: the end of the valid data.
    pub offset: Offset,
    /// What is wrong with it.
    pub reason: String,
}

/// Damage a [`Reader`] stepped over: bad batches inside sealed segments (skipped by
/// resyncing on the next valid batch) and offsets missing between segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Damage {
    /// Damaged stretches (bad batches, or a run of them) skipped.
    pub bad_batches: u64,
    /// Offsets of lines that are not in the log: in damaged stretches or missing segments.
    pub lost_lines: u64,
}

impl Reader {
    /// Opens partition directory `dir` for reading from `from`: the first batch returned is
    /// the one holding `from` (it may start before it).
    pub fn open(dir: &Path, from: Offset) -> Result<Reader, Error> {
        let mut reader = Reader {
            dir: dir.to_path_buf(),
            from,
            scanner: None,
            sealed: false,
            position: from,
            damage: Damage::default(),
            tail: None,
        };
        reader.find_start()?;
        Ok(reader)
    }

    /// Opens partition directory `dir` at the first batch whose ingest time is at least
    /// `time_ms` (at the end of the data when there is none yet: it then follows new data).
    pub fn open_at_time(dir: &Path, time_ms: i64) -> Result<Reader, Error> {
        let segments = segment::list_segments(dir)?;
        let mut end = segments.first().map_or(Offset(0), |s| s.base);
        for s in &segments {
            let index = load_index(dir, s.base);
            if let Some(seal) = index.as_ref().and_then(|i| i.seal)
                && seal.max_time_ms < time_ms
            {
                end = seal.offset();
                continue;
            }
            // The oldest segments may be deleted by retention since the listing.
            let Some(mut scanner) = SegmentScanner::open_if_exists(&s.path, s.base)? else {
                continue;
            };
            scanner.seek_with(index.as_ref(), |i| i.seek_time(time_ms))?;
            loop {
                match scanner.step()? {
                    ScanStep::Batch { header, .. } if header.ingest_time_ms >= time_ms => {
                        return Reader::open(dir, Offset(header.first_offset));
                    }
                    ScanStep::Batch { .. } => {}
                    ScanStep::End { .. } | ScanStep::Defect { .. } => break,
                }
            }
            end = scanner.expected();
        }
        Reader::open(dir, end)
    }

    /// Opens partition directory `dir` at the end of its data: it returns only batches
    /// committed from now on.
    pub fn open_at_end(dir: &Path) -> Result<Reader, Error> {
        Reader::open(dir, end_offset(dir)?)
    }

    /// Offset after the last batch returned (`from` before the first).
    pub fn position(&self) -> Offset {
        self.position
    }

    /// The damage stepped over so far (each stretch is also logged when it is met).
    pub fn damage(&self) -> Damage {
        self.damage
    }

    /// Where the last [`next_batch`](Self::next_batch) that returned `None` stopped at a bad
    /// batch after the valid data of the newest segment (`None` when it stopped at the clean
    /// end of the data, or returned a batch).
    pub fn tail(&self) -> Option<&Tail> {
        self.tail.as_ref()
    }

    /// Where the next step of the current segment starts (tests check the seek).
    #[cfg(test)]
    fn scan_pos(&self) -> Option<(Offset, u64)> {
        self.scanner.as_ref().map(|s| (s.base, s.pos))
    }

    /// Opens the segment holding `from` (the newest with base ≤ `from`, or the oldest) and
    /// seeks with its index to the last indexed batch at or before `from`.
    fn find_start(&mut self) -> Result<(), Error> {
        // Retention may delete the oldest segments of a running appliance between the listing
        // and the opening: list again (a few times, since each retry sees fewer old ones).
        let mut retries = 8;
        let (base, mut scanner) = loop {
            let segments = segment::list_segments(&self.dir)?;
            let start = segments
                .iter()
                .rev()
                .find(|s| s.base <= self.from)
                .or(segments.first());
            let Some(s) = start else {
                return Ok(());
            };
            match SegmentScanner::open_if_exists(&s.path, s.base)? {
                Some(scanner) => break (s.base, scanner),
                None if retries > 0 => retries -= 1,
                None => return Err(gone(&s.path)),
            }
        };
        if base < self.from {
            let index = load_index(&self.dir, base);
            scanner.seek_with(index.as_ref(), |i| i.seek_offset(self.from))?;
        }
        self.scanner = Some(scanner);
        self.sealed = false;
        Ok(())
    }

    /// The segment after the current one, if there is one yet.
    fn next_segment(&self, base: Offset) -> Result<Option<SegmentFile>, Error> {
        Ok(segment::list_segments(&self.dir)?
            .into_iter()
            .find(|s| s.base > base))
    }

    /// The next intact batch, or `None` at the end of the valid data (call again later to
    /// follow new data).
    pub fn next_batch(&mut self) -> Result<Option<Batch<'_>>, Error> {
        let (header, payload) = loop {
            let Some(scanner) = self.scanner.as_mut() else {
                self.find_start()?;
                if self.scanner.is_none() {
                    return Ok(None);
                }
                continue;
            };
            let step = scanner.step()?;
            let base = scanner.base();
            match step {
                ScanStep::Batch {
                    header, payload, ..
                } => {
                    if header.end_offset() > self.from {
                        break (header, payload);
                    }
                }
                ScanStep::End { .. } | ScanStep::Defect { .. } => {
                    let Some(next) = self.next_segment(base)? else {
                        // The segment being written: a bad batch here is either one being
                        // written right now (nothing valid after it yet) or damage that the
                        // appender's recovery cuts out at its next start. Until then, step
                        // over a single bad batch (the next one starts within one batch).
                        let resynced = match (&step, self.scanner.as_mut()) {
                            (ScanStep::Defect { .. }, Some(scanner)) => {
                                scanner.resync_within(BATCH_BYTES_MAX)?
                            }
                            _ => None,
                        };
                        if let Some(resynced) = resynced {
                            self.note_resync(&resynced, &step);
                            continue;
                        }
                        self.tail = match (&step, self.scanner.as_ref()) {
                            (ScanStep::Defect { pos, defect }, Some(scanner)) => Some(Tail {
                                segment: scanner.path().to_path_buf(),
                                file_pos: *pos,
                                offset: scanner.expected(),
                                reason: defect.to_string(),
                            }),
                            _ => None,
                        };
                        return Ok(None);
                    };
                    if !self.sealed {
                        // The segment was sealed before `next` existed: look once more, so a
                        // batch committed just before the roll is not taken for a defect.
                        self.sealed = true;
                        continue;
                    }
                    // A sealed segment is final: a bad batch in it (or a stretch of zeros
                    // where one should be) is skipped alone when valid batches follow.
                    let resynced = match self.scanner.as_mut() {
                        Some(scanner) => scanner.resync()?,
                        None => None,
                    };
                    if let Some(resynced) = resynced {
                        self.note_resync(&resynced, &step);
                        continue;
                    }
                    self.leave_segment(&step, &next);
                    self.scanner = Some(SegmentScanner::open(&next.path, next.base)?);
                    self.sealed = false;
                }
            }
        };
        self.position = header.end_offset();
        self.tail = None;
        Ok(self.scanner.as_ref().map(|scanner| Batch {
            info: header.info(),
            lines: Lines::new(scanner.payload(payload)),
        }))
    }

    /// Counts and reports a bad stretch of a sealed segment skipped by a resync.
    fn note_resync(&mut self, resynced: &Resynced, step: &ScanStep) {
        let reason = match step {
            ScanStep::Defect { defect, .. } => defect.to_string(),
            _ => "zeros where a batch should be".into(),
        };
        self.damage.bad_batches += 1;
        self.damage.lost_lines += resynced.lost_lines();
        if let Some(scanner) = self.scanner.as_ref() {
            tracing::warn!(
                segment = %scanner.path().display(),
                file_pos = resynced.bad_pos,
                resync_pos = resynced.pos,
                lost_offsets = %format_args!("{}..{}", resynced.lost.start, resynced.lost.end),
                reason = %reason,
                "corrupt record batch skipped; reading on from the next valid batch"
            );
        }
    }

    /// Counts and warns about what is skipped when moving from the current segment to
    /// `next`.
    fn leave_segment(&mut self, step: &ScanStep, next: &SegmentFile) {
        let Some(scanner) = self.scanner.as_ref() else {
            return;
        };
        let expected = scanner.expected();
        if let ScanStep::Defect { pos, defect } = step {
            self.damage.bad_batches += 1;
            tracing::warn!(
                segment = %scanner.path().display(),
                file_pos = pos,
                offset = expected.0,
                reason = %defect,
                "corrupt record batch at the end of a sealed segment; reading on from the next \
                 segment"
            );
        }
        if expected != next.base {
            self.damage.lost_lines += next.base.0.saturating_sub(expected.0);
            tracing::warn!(
                segment = %next.path.display(),
                base_offset = next.base.0,
                expected = expected.0,
                "segment does not follow the one before it: offsets missing"
            );
        }
    }
}

/// The usable index of a segment, if any (an unreadable one is as good as none: scan).
fn load_index(dir: &Path, base: Offset) -> Option<SegmentIndex> {
    index::load(dir, base).ok().and_then(index::Loaded::index)
}

/// Offset after the last valid batch of partition directory `dir`.
pub(crate) fn end_offset(dir: &Path) -> Result<Offset, Error> {
    let segments = segment::list_segments(dir)?;
    let Some(newest) = segments.last() else {
        return Ok(Offset(0));
    };
    let mut scanner = SegmentScanner::open(&newest.path, newest.base)?;
    let index = load_index(dir, newest.base);
    scanner.seek_with(index.as_ref(), |i| i.entries.last())?;
    while let ScanStep::Batch { .. } = scanner.step()? {}
    Ok(scanner.expected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::test_support::{line, read_all, small_options, write_batches};
    use crate::log::{Appender, FlushPolicy};

    /// An appender of small segments that never flushes, on `dir`.
    fn appender(dir: &Path) -> Appender {
        Appender::open(dir, small_options(FlushPolicy::Never))
            .unwrap()
            .0
    }

    fn batches(n: usize, line_bytes: usize) -> Vec<Vec<Vec<u8>>> {
        (0..n)
            .map(|b| (0..3).map(|l| line(b * 3 + l, line_bytes)).collect())
            .collect()
    }

    #[test]
    fn a_reader_from_a_middle_offset_starts_with_the_batch_holding_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut appender = appender(dir.path());
        let written = write_batches(&mut appender, &batches(200, 10_000));
        assert!(segment::list_segments(dir.path()).unwrap().len() >= 3);
        for from in [0, 1, 2, 3, 301, 450, 599] {
            let got = read_all(dir.path(), Offset(from));
            let expected: Vec<_> = written
                .iter()
                .filter(|(info, _)| info.end_offset().0 > from)
                .cloned()
                .collect();
            assert_eq!(got, expected, "from {from}");
            assert!(got[0].0.first_offset.0 <= from);
        }
        assert!(read_all(dir.path(), Offset(600)).is_empty());
        assert!(read_all(dir.path(), Offset(10_000)).is_empty());
    }

    #[test]
    fn a_reader_at_the_end_follows_new_batches_across_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let mut reader = Reader::open(dir.path(), Offset(0)).unwrap();
        assert!(reader.next_batch().unwrap().is_none());
        let mut appender = appender(dir.path());
        let mut got = Vec::new();
        let mut written = Vec::new();
        for round in 0..40 {
            written.extend(write_batches(&mut appender, &batches(3, 3_000 * round)));
            while let Some(batch) = reader.next_batch().unwrap() {
                got.push((
                    batch.info,
                    batch.lines.map(<[u8]>::to_vec).collect::<Vec<_>>(),
                ));
            }
            assert_eq!(got, written);
            assert_eq!(reader.position(), appender.next_offset());
        }
        assert!(segment::list_segments(dir.path()).unwrap().len() >= 3);
    }

    #[test]
    fn a_corrupt_batch_in_a_sealed_segment_is_skipped_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut appender = appender(dir.path());
        let written = write_batches(&mut appender, &batches(200, 10_000));
        drop(appender);
        let segments = segment::list_segments(dir.path()).unwrap();
        let (first, second) = (&segments[0], &segments[1]);
        // Flip a payload byte of the third batch of the first segment.
        let mut bytes = std::fs::read(&first.path).unwrap();
        let third_pos =
            2 * record::batch_bytes(written[0].1.iter().map(|l| 4 + l.len() as u32).sum());
        bytes[third_pos as usize + HEADER_BYTES + 10] ^= 0x40;
        std::fs::write(&first.path, &bytes).unwrap();

        let got = read_all(dir.path(), Offset(0));
        let expected: Vec<_> = written
            .iter()
            .filter(|(info, _)| info.first_offset != Offset(6))
            .cloned()
            .collect();
        assert_eq!(got, expected);
        assert!(second.base > Offset(9));
        let mut reader = Reader::open(dir.path(), Offset(0)).unwrap();
        while reader.next_batch().unwrap().is_some() {}
        let damage = reader.damage();
        assert_eq!((damage.bad_batches, damage.lost_lines), (1, 3));
    }

    #[test]
    fn lines_of_arbitrary_segment_bytes_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment::segment_path(dir.path(), Offset(0));
        let mut bytes: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        bytes[..4].copy_from_slice(b"SLCB");
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_all(dir.path(), Offset(0)).is_empty());
    }

    /// Writes `n` batches of 3 lines (about 10 KiB each) with ingest times that mostly rise
    /// but step back now and then, across several segments.
    fn timed_log(dir: &Path, n: usize) -> Vec<(BatchInfo, Vec<Vec<u8>>)> {
        let (mut appender, _) = Appender::open(dir, small_options(FlushPolicy::Never)).unwrap();
        let mut written = Vec::new();
        for b in 0..n {
            let time = 1_000 * b as i64 - if b % 10 == 7 { 5_500 } else { 0 };
            let lines: Vec<Vec<u8>> = (0..3).map(|l| line(b * 3 + l, 3_500)).collect();
            let mut out: Vec<BatchInfo> = Vec::new();
            let mut w = appender.begin(0, time);
            for l in &lines {
                w.push(l).unwrap();
            }
            w.finish(&mut out).unwrap();
            for info in out {
                written.push((info, appender.lines(&info).map(<[u8]>::to_vec).collect()));
            }
        }
        written
    }

    fn index_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        segment::list_segments(dir)
            .unwrap()
            .iter()
            .map(|s| {
                let p = segment::index_path(dir, s.base);
                let bytes = std::fs::read(&p).unwrap_or_default();
                (p, bytes)
            })
            .collect()
    }

    /// What every probe sees: batches from a set of offsets, and the first batch at a set of
    /// times.
    fn probes(dir: &Path) -> Vec<Vec<(BatchInfo, Vec<Vec<u8>>)>> {
        let mut out = Vec::new();
        for from in [0, 1, 299, 300, 301, 777, 1_199, 1_200, 5_000] {
            out.push(read_all(dir, Offset(from)));
        }
        for t in [
            i64::MIN,
            -4_000,
            0,
            1,
            41_000,
            41_001,
            150_000,
            399_000,
            400_000,
        ] {
            let mut reader = Reader::open_at_time(dir, t).unwrap();
            let mut got = Vec::new();
            if let Some(b) = reader.next_batch().unwrap() {
                got.push((b.info, b.lines.map(<[u8]>::to_vec).collect()));
            }
            out.push(got);
        }
        out
    }

    #[test]
    fn readers_seek_with_the_index_and_a_rebuilt_index_is_identical() {
        let dir = tempfile::tempdir().unwrap();
        let written = timed_log(dir.path(), 400);
        assert!(segment::list_segments(dir.path()).unwrap().len() >= 4);
        let original = index_files(dir.path());
        let sealed = &original[..original.len() - 1];
        assert!(sealed.iter().all(|(_, b)| b.len() > 4 * index::ENTRY_BYTES));
        let expected = probes(dir.path());
        // The probes are right: by offset, the batches ending after it; by time, the first
        // batch with an ingest time at least that.
        assert_eq!(expected[0], written);
        let after = |from: u64| -> Vec<_> {
            written
                .iter()
                .filter(|(i, _)| i.end_offset().0 > from)
                .cloned()
                .collect()
        };
        for (i, from) in [0, 1, 299, 300, 301, 777, 1_199, 1_200]
            .into_iter()
            .enumerate()
        {
            let (got, want) = (&expected[i], after(from));
            let brief = |v: &Vec<(BatchInfo, Vec<Vec<u8>>)>| {
                v.iter()
                    .map(|(i, _)| (i.first_offset.0, i.count))
                    .collect::<Vec<_>>()
            };
            assert!(
                got == &want,
                "from {from}: {:?} != {:?}",
                brief(got),
                brief(&want)
            );
        }
        let first_at = |t: i64| {
            written
                .iter()
                .find(|(i, _)| i.ingest_time_ms >= t)
                .cloned()
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(expected[9], first_at(i64::MIN));
        assert_eq!(expected[12], first_at(1));
        assert_eq!(expected[14], first_at(41_001));
        assert_eq!(expected[15], first_at(150_000));
        assert!(expected[17].is_empty());
        // A seek into the middle of a segment starts past its first batch.
        let reader = Reader::open(dir.path(), Offset(1_100)).unwrap();
        let (base, pos) = reader.scan_pos().unwrap();
        assert!(base < Offset(1_100) && pos > 0, "{base} {pos}");

        // Missing: readers scan and see the same; reopening the appender rebuilds the files
        // byte for byte.
        for (p, _) in &original {
            std::fs::remove_file(p).unwrap();
        }
        assert_eq!(probes(dir.path()), expected);
        let reader = Reader::open(dir.path(), Offset(1_100)).unwrap();
        assert_eq!(reader.scan_pos().unwrap().1, 0);
        drop(appender(dir.path()));
        assert_eq!(index_files(dir.path()), original);
        assert_eq!(probes(dir.path()), expected);

        // Short, flipped and foreign: the same again, and rebuilt again.
        type Damage<'a> = &'a dyn Fn(&mut Vec<u8>);
        let damage: [Damage; 3] = [
            &|b| b.truncate(b.len() - 20),
            &|b| {
                let at = (index::ENTRY_BYTES * 2 + 3).min(b.len() - 1);
                b[at] ^= 0x10;
            },
            &|b| b.iter_mut().for_each(|x| *x = 0x5a),
        ];
        for damage in damage {
            for (p, bytes) in &original {
                let mut bytes = bytes.clone();
                damage(&mut bytes);
                std::fs::write(p, bytes).unwrap();
            }
            assert_eq!(probes(dir.path()), expected);
            drop(appender(dir.path()));
            assert_eq!(index_files(dir.path()), original);
        }
    }

    #[test]
    fn an_index_entry_that_lies_is_caught_and_the_reader_scans() {
        let dir = tempfile::tempdir().unwrap();
        timed_log(dir.path(), 200);
        let expected = probes(dir.path());
        for s in segment::list_segments(dir.path()).unwrap() {
            let mut index = index::load(dir.path(), s.base).unwrap().index().unwrap();
            // Every entry after the first points 8 bytes past its batch, with valid CRCs.
            let mut builder = index::IndexBuilder::new();
            let mut shifted = Vec::new();
            for (i, e) in index.entries.iter().enumerate() {
                let h = BatchHeader::new(
                    &BatchInfo {
                        first_offset: e.offset(),
                        count: 1,
                        listener_id: 0,
                        ingest_time_ms: e.max_time_ms,
                    },
                    &[0; 4],
                );
                let pos = if i == 0 { 0 } else { e.file_pos + 8 };
                shifted.extend(builder.on_batch(pos, &h));
            }
            index.entries = shifted;
            index::write(dir.path(), &index).unwrap();
        }
        assert_eq!(probes(dir.path()), expected);
    }

    #[test]
    fn a_torn_tail_stops_a_reader_at_the_last_valid_batch_and_stays_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut appender = appender(dir.path());
        let written = write_batches(&mut appender, &batches(5, 100));
        drop(appender);
        let mut reader = Reader::open(dir.path(), Offset(0)).unwrap();
        while reader.next_batch().unwrap().is_some() {}
        assert_eq!(reader.tail(), None, "a clean end is no tail");

        let path = segment::segment_path(dir.path(), Offset(0));
        let mut bytes = std::fs::read(&path).unwrap();
        let batch = record::batch_bytes(written[0].1.iter().map(|l| 4 + l.len() as u32).sum());
        let last = 4 * batch;
        bytes[last as usize + HEADER_BYTES + 10] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        let mut reader = Reader::open(dir.path(), Offset(0)).unwrap();
        let mut got = Vec::new();
        while let Some(b) = reader.next_batch().unwrap() {
            got.push(b.info);
        }
        let want: Vec<BatchInfo> = written[..4].iter().map(|(i, _)| *i).collect();
        assert_eq!(got, want);
        let tail = reader
            .tail()
            .expect("the reader stopped at the torn batch")
            .clone();
        assert_eq!(
            (tail.segment, tail.file_pos, tail.offset),
            (path.clone(), last, Offset(12))
        );
        assert!(tail.reason.contains("crc"), "{}", tail.reason);
        assert_eq!(reader.position(), Offset(12));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "a reader writes nothing"
        );
    }

    #[test]
    fn open_at_end_returns_only_new_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut appender = appender(dir.path());
        write_batches(&mut appender, &batches(150, 10_000));
        let mut reader = Reader::open_at_end(dir.path()).unwrap();
        assert_eq!(reader.position(), appender.next_offset());
        assert!(reader.next_batch().unwrap().is_none());
        let more = write_batches(&mut appender, &batches(2, 10));
        let mut got = Vec::new();
        while let Some(b) = reader.next_batch().unwrap() {
            got.push((b.info, b.lines.map(<[u8]>::to_vec).collect::<Vec<_>>()));
        }
        assert_eq!(got, more);
    }

    #[test]
    fn a_segment_gone_before_it_is_opened_is_none_or_a_not_found_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut appender = appender(dir.path());
        write_batches(&mut appender, &batches(3, 100));
        drop(appender);
        let path = segment::segment_path(dir.path(), Offset(0));
        let mut scanner = SegmentScanner::open_if_exists(&path, Offset(0))
            .unwrap()
            .expect("the segment is there");
        assert!(matches!(scanner.step().unwrap(), ScanStep::Batch { .. }));
        std::fs::remove_file(&path).unwrap();
        assert!(
            SegmentScanner::open_if_exists(&path, Offset(0))
                .unwrap()
                .is_none()
        );
        match SegmentScanner::open(&path, Offset(0)) {
            Err(Error::Io { path: p, source }) => {
                assert_eq!((p, source.kind()), (path, std::io::ErrorKind::NotFound));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
