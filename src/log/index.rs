//! The sparse index of a segment: `{base_offset:020}.idx` beside `{base_offset:020}.seg`.
//! It maps offsets to file positions and ingest times to offsets, so readers seek instead of
//! scanning. It is a cache of the segment, never the truth: whatever is missing, short or bad
//! in it is rebuilt from the segment, and readers check the batch an entry points at before
//! trusting it.
//!
//! ```text
//! index:  | header (32) | entry (32) | entry (32) | ... | seal entry (32, sealed segments) |
//!
//! header: byte  size  field
//!         0     4     magic            "SLCI" (0x49434c53)
//!         4     2     version          1
//!         6     2     flags            0
//!         8     8     base_offset      the segment's base offset
//!         16    8     interval_bytes   segment bytes between entries when written
//!         24    4     reserved         0
//!         28    4     crc              CRC-32 (IEEE) over bytes 0..28
//!
//! entry:  0     8     first_offset     offset of the batch at file_pos (seal: end offset)
//!         8     8     file_pos         position of that batch (seal: end of the data)
//!         16    8     max_time_ms      the largest ingest time of the batches before file_pos
//!                                      (i64::MIN when there are none)
//!         24    4     kind             1 = batch, 2 = seal (the segment is sealed, complete)
//!         28    4     crc              CRC-32 (IEEE) over bytes 0..28
//! ```
//!
//! The first batch of a segment always has an entry; after it, the first batch that starts at
//! least `INDEX_INTERVAL_BYTES` after the previous entry gets one. Entries rise strictly in
//! offset and position, and never fall in `max_time_ms`. Because `max_time_ms` is a running
//! maximum, "the first batch with ingest time ≥ t" lies at or after the last entry whose
//! `max_time_ms` < t, even when ingest times go backwards (a clock step).

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};

use super::reader::{ScanStep, SegmentScanner};
use super::record::{self, BatchHeader, Step};
use super::{Error, INDEX_INTERVAL_BYTES, Offset};

/// `"SLCI"` read as a little-endian u32.
const MAGIC: u32 = u32::from_le_bytes(*b"SLCI");
/// The only version written and read.
const VERSION: u16 = 1;
/// Bytes of the header and of each entry.
pub(crate) const ENTRY_BYTES: usize = 32;
/// Entry kind: a batch.
const KIND_BATCH: u32 = 1;
/// Entry kind: the end of a sealed segment.
const KIND_SEAL: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct IndexHeader {
    magic: u32,
    version: u16,
    flags: u16,
    base_offset: u64,
    interval_bytes: u64,
    reserved: u32,
    crc: u32,
}

/// One entry of the index (layout in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub(crate) struct IndexEntry {
    /// Offset of the batch at `file_pos` (seal: the segment's end offset).
    pub(crate) first_offset: u64,
    /// Position of the batch (seal: end of the data).
    pub(crate) file_pos: u64,
    /// Largest ingest time of the batches before `file_pos` (`i64::MIN` when none).
    pub(crate) max_time_ms: i64,
    kind: u32,
    crc: u32,
}

const _: () = assert!(size_of::<IndexHeader>() == ENTRY_BYTES);
const _: () = assert!(size_of::<IndexEntry>() == ENTRY_BYTES);
const _: () = assert!(offset_of!(IndexHeader, crc) == ENTRY_BYTES - 4);
const _: () = assert!(offset_of!(IndexEntry, crc) == ENTRY_BYTES - 4);

fn crc_of(bytes: &[u8]) -> u32 {
    crc32fast::hash(&bytes[..ENTRY_BYTES - 4])
}

impl IndexHeader {
    fn new(base: Offset) -> IndexHeader {
        let mut h = IndexHeader {
            magic: MAGIC,
            version: VERSION,
            flags: 0,
            base_offset: base.0,
            interval_bytes: INDEX_INTERVAL_BYTES,
            reserved: 0,
            crc: 0,
        };
        h.crc = crc_of(bytemuck::bytes_of(&h));
        h
    }
}

impl IndexEntry {
    fn new(kind: u32, first_offset: Offset, file_pos: u64, max_time_ms: i64) -> IndexEntry {
        let mut e = IndexEntry {
            first_offset: first_offset.0,
            file_pos,
            max_time_ms,
            kind,
            crc: 0,
        };
        e.crc = crc_of(bytemuck::bytes_of(&e));
        e
    }

    /// Its offset.
    pub(crate) fn offset(&self) -> Offset {
        Offset(self.first_offset)
    }
}

/// The index of one segment, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    /// The segment's base offset.
    pub(crate) base: Offset,
    /// Batch entries, ascending.
    pub(crate) entries: Vec<IndexEntry>,
    /// The seal entry, for a sealed segment whose index is complete.
    pub(crate) seal: Option<IndexEntry>,
}

impl SegmentIndex {
    /// The last batch entry at or before `offset`.
    pub(crate) fn seek_offset(&self, offset: Offset) -> Option<&IndexEntry> {
        let n = self.entries.partition_point(|e| e.first_offset <= offset.0);
        n.checked_sub(1).map(|i| &self.entries[i])
    }

    /// The last batch entry before which every batch has an ingest time < `time_ms`: the
    /// first batch with ingest time ≥ `time_ms` is at or after it.
    pub(crate) fn seek_time(&self, time_ms: i64) -> Option<&IndexEntry> {
        let n = self.entries.partition_point(|e| e.max_time_ms < time_ms);
        n.checked_sub(1).map(|i| &self.entries[i])
    }

    /// Largest ingest time in the segment, when the index is sealed (complete).
    pub(crate) fn sealed_max_time_ms(&self) -> Option<i64> {
        self.seal.map(|s| s.max_time_ms)
    }
}

/// Builds entries as batches go by: shared by the appender (as it commits) and rebuilds.
#[derive(Debug, Clone)]
pub(crate) struct IndexBuilder {
    /// Position of the last entry (`None` before the first).
    last_pos: Option<u64>,
    /// Largest ingest time so far.
    max_time_ms: i64,
}

impl IndexBuilder {
    /// A builder for a segment with no batches yet.
    pub(crate) fn new() -> IndexBuilder {
        IndexBuilder {
            last_pos: None,
            max_time_ms: i64::MIN,
        }
    }

    /// Notes the valid batch `header` at `pos`; returns its entry when it gets one.
    pub(crate) fn on_batch(&mut self, pos: u64, header: &BatchHeader) -> Option<IndexEntry> {
        let due = self
            .last_pos
            .is_none_or(|last| pos >= last + INDEX_INTERVAL_BYTES);
        let entry = due.then(|| {
            self.last_pos = Some(pos);
            IndexEntry::new(
                KIND_BATCH,
                Offset(header.first_offset),
                pos,
                self.max_time_ms,
            )
        });
        self.max_time_ms = self.max_time_ms.max(header.ingest_time_ms);
        entry
    }

    /// The seal entry for data ending at `end_pos` with offset `end_offset`.
    pub(crate) fn seal(&self, end_pos: u64, end_offset: Offset) -> IndexEntry {
        IndexEntry::new(KIND_SEAL, end_offset, end_pos, self.max_time_ms)
    }
}

/// Encodes a whole index file.
fn encode(index: &SegmentIndex) -> Vec<u8> {
    let mut out = Vec::with_capacity((index.entries.len() + 2) * ENTRY_BYTES);
    out.extend_from_slice(bytemuck::bytes_of(&IndexHeader::new(index.base)));
    for e in index.entries.iter().chain(&index.seal) {
        out.extend_from_slice(bytemuck::bytes_of(e));
    }
    out
}

/// What [`load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// No index file.
    Missing,
    /// A header that is not ours (or not for this segment): nothing usable.
    Bad,
    /// The valid entries; `damaged` when something invalid followed them (they are still
    /// right, as each entry is checked on its own).
    Index { index: SegmentIndex, damaged: bool },
}

impl Loaded {
    /// The usable index, if any.
    pub(crate) fn index(self) -> Option<SegmentIndex> {
        match self {
            Loaded::Index { index, .. } => Some(index),
            Loaded::Missing | Loaded::Bad => None,
        }
    }

    /// A complete, undamaged index of a sealed segment.
    pub(crate) fn is_complete(&self) -> bool {
        matches!(self, Loaded::Index { index, damaged: false } if index.seal.is_some())
    }
}

/// Decodes index file bytes for the segment based at `base`.
pub(crate) fn decode(bytes: &[u8], base: Offset) -> Loaded {
    let Some((head, rest)) = bytes.split_first_chunk::<ENTRY_BYTES>() else {
        return Loaded::Bad;
    };
    let header: IndexHeader = bytemuck::pod_read_unaligned(head);
    if header.crc != crc_of(head)
        || header.magic != MAGIC
        || header.version != VERSION
        || header.flags != 0
        || header.base_offset != base.0
    {
        return Loaded::Bad;
    }
    let mut index = SegmentIndex {
        base,
        entries: Vec::new(),
        seal: None,
    };
    let mut damaged = false;
    for chunk in rest.chunks(ENTRY_BYTES) {
        let entry = (chunk.len() == ENTRY_BYTES && index.seal.is_none())
            .then(|| bytemuck::pod_read_unaligned::<IndexEntry>(chunk))
            .filter(|e| e.crc == crc_of(chunk) && follows(&index, e));
        match entry {
            Some(e) if e.kind == KIND_SEAL => index.seal = Some(e),
            Some(e) => index.entries.push(e),
            None => {
                damaged = true;
                break;
            }
        }
    }
    Loaded::Index { index, damaged }
}

/// Whether `e` may follow the entries of `index`: a known kind, rising offsets and positions,
/// non-falling times, and a first batch entry at the segment's start.
fn follows(index: &SegmentIndex, e: &IndexEntry) -> bool {
    let known = e.kind == KIND_BATCH || e.kind == KIND_SEAL;
    match index.entries.last() {
        None => known && e.file_pos == 0 && e.first_offset == index.base.0,
        Some(p) => {
            known
                && e.first_offset > p.first_offset
                && e.file_pos > p.file_pos
                && e.max_time_ms >= p.max_time_ms
        }
    }
}

/// Reads the index of the segment based at `base` in `dir`.
pub(crate) fn load(dir: &Path, base: Offset) -> Result<Loaded, Error> {
    let path = super::segment::index_path(dir, base);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(decode(&bytes, base)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Loaded::Missing),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// Rebuilds the index of a sealed segment from its file (the seal entry marks where its
/// valid data ends).
pub(crate) fn build_from_file(path: &Path, base: Offset) -> Result<SegmentIndex, Error> {
    let mut scanner = SegmentScanner::open(path, base)?;
    let mut builder = IndexBuilder::new();
    let mut index = SegmentIndex {
        base,
        entries: Vec::new(),
        seal: None,
    };
    loop {
        match scanner.step()? {
            ScanStep::Batch { pos, header, .. } => {
                index.entries.extend(builder.on_batch(pos, &header));
            }
            // Readers resync past a bad stretch of a sealed segment; so does its index.
            ScanStep::End { .. } | ScanStep::Defect { .. } if scanner.resync()?.is_some() => {}
            ScanStep::End { pos } | ScanStep::Defect { pos, .. } => {
                index.seal = Some(builder.seal(pos, scanner.expected()));
                return Ok(index);
            }
        }
    }
}

/// Builds the index of the valid prefix of `segment` (its bytes in memory); returns the
/// builder to continue with after the prefix.
pub(crate) fn build_from_bytes(segment: &[u8], base: Offset) -> (SegmentIndex, IndexBuilder) {
    let mut builder = IndexBuilder::new();
    let mut index = SegmentIndex {
        base,
        entries: Vec::new(),
        seal: None,
    };
    let (mut pos, mut expected) = (0, base);
    while let Step::Batch(header) = record::check_at(segment, pos, expected) {
        index.entries.extend(builder.on_batch(pos, &header));
        pos += header.batch_bytes();
        expected = header.end_offset();
    }
    (index, builder)
}

/// Writes `index` as the index file of its segment in `dir`, replacing any (through a
/// temporary file and a rename, so a reader never sees a half-written one).
pub(crate) fn write(dir: &Path, index: &SegmentIndex) -> Result<(), Error> {
    let path = super::segment::index_path(dir, index.base);
    let tmp = path.with_extension("idx.tmp");
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::write(&tmp, encode(index)).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error(&path))
}

/// Appends entries to the index of the segment being written. Index trouble never stops
/// the log: a failed write is warned about and the writer stops, leaving an index that the
/// next open rebuilds.
#[derive(Debug)]
pub(crate) struct IndexWriter {
    path: PathBuf,
    /// `None` once a write failed.
    file: Option<File>,
    builder: IndexBuilder,
    /// Encoded entries not yet written.
    pending: Vec<u8>,
}

impl IndexWriter {
    /// Writes `index` (the segment's valid prefix) as its index file and continues it.
    pub(crate) fn start(dir: &Path, index: &SegmentIndex, builder: IndexBuilder) -> IndexWriter {
        let path = super::segment::index_path(dir, index.base);
        let file = write(dir, index)
            .and_then(|()| {
                OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })
            })
            .inspect_err(|e| tracing::warn!(error = %e, "cannot write log index; readers scan"))
            .ok();
        IndexWriter {
            path,
            file,
            builder,
            pending: Vec::new(),
        }
    }

    /// Notes a committed batch.
    #[inline]
    pub(crate) fn on_batch(&mut self, pos: u64, header: &BatchHeader) {
        if let Some(e) = self.builder.on_batch(pos, header) {
            self.pending.extend_from_slice(bytemuck::bytes_of(&e));
        }
    }

    /// Writes the pending entries (page cache only: the index needs no durability).
    pub(crate) fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(file) = self.file.as_mut()
            && let Err(e) = file.write_all(&self.pending)
        {
            tracing::warn!(path = %self.path.display(), error = %e,
                "cannot write log index; it is rebuilt at the next start");
            self.file = None;
        }
        self.pending.clear();
    }

    /// The largest ingest time of the batches noted so far.
    pub(crate) fn max_time_ms(&self) -> i64 {
        self.builder.max_time_ms
    }

    /// Writes the seal entry (data ending at `end_pos`, offset `end_offset`) after the
    /// pending ones; returns the segment's largest ingest time.
    pub(crate) fn seal(mut self, end_pos: u64, end_offset: Offset) -> i64 {
        let seal = self.builder.seal(end_pos, end_offset);
        self.pending.extend_from_slice(bytemuck::bytes_of(&seal));
        self.write_pending();
        self.builder.max_time_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::BatchInfo;

    fn header(first: u64, count: u32, time: i64) -> BatchHeader {
        let info = BatchInfo {
            first_offset: Offset(first),
            count,
            listener_id: 0,
            ingest_time_ms: time,
        };
        BatchHeader::new(&info, &[0; 4])
    }

    fn sample() -> SegmentIndex {
        let mut b = IndexBuilder::new();
        let mut index = SegmentIndex {
            base: Offset(100),
            entries: Vec::new(),
            seal: None,
        };
        let times = [50, 10, 70, 60, 90, 80];
        for (i, t) in times.iter().enumerate() {
            let pos = i as u64 * INDEX_INTERVAL_BYTES;
            index
                .entries
                .extend(b.on_batch(pos, &header(100 + i as u64 * 3, 3, *t)));
        }
        index.seal = Some(b.seal(6 * INDEX_INTERVAL_BYTES, Offset(118)));
        index
    }

    #[test]
    fn an_index_round_trips_and_seeks_by_offset_and_time() {
        let index = sample();
        assert_eq!(index.entries.len(), 6);
        assert_eq!(
            decode(&encode(&index), Offset(100)),
            Loaded::Index {
                index: index.clone(),
                damaged: false
            }
        );
        assert_eq!(index.seek_offset(Offset(99)), None);
        assert_eq!(index.seek_offset(Offset(100)).unwrap().first_offset, 100);
        assert_eq!(index.seek_offset(Offset(105)).unwrap().first_offset, 103);
        assert_eq!(index.seek_offset(Offset(1000)).unwrap().first_offset, 115);
        // Running maxima before each entry: MIN, 50, 50, 70, 70, 90.
        assert_eq!(index.seek_time(i64::MIN), None);
        assert_eq!(index.seek_time(10).unwrap().first_offset, 100);
        assert_eq!(index.seek_time(51).unwrap().first_offset, 106);
        assert_eq!(index.seek_time(70).unwrap().first_offset, 106);
        assert_eq!(index.seek_time(71).unwrap().first_offset, 112);
        assert_eq!(index.sealed_max_time_ms(), Some(90));
    }

    #[test]
    fn a_short_or_flipped_index_keeps_its_valid_prefix_and_says_it_is_damaged() {
        let index = sample();
        let bytes = encode(&index);
        let Loaded::Index {
            index: cut,
            damaged,
        } = decode(&bytes[..bytes.len() - 40], Offset(100))
        else {
            panic!("header lost");
        };
        assert!(damaged);
        assert_eq!(cut.entries, index.entries[..5]);
        assert_eq!(cut.seal, None);
        let mut flipped = bytes.clone();
        flipped[ENTRY_BYTES * 3 + 5] ^= 1;
        let loaded = decode(&flipped, Offset(100));
        assert!(!loaded.is_complete());
        assert_eq!(loaded.index().unwrap().entries, index.entries[..2]);
        assert_eq!(decode(&bytes, Offset(7)), Loaded::Bad);
        assert_eq!(decode(&bytes[..20], Offset(100)), Loaded::Bad);
        let mut bad_header = bytes;
        bad_header[3] ^= 1;
        assert_eq!(decode(&bad_header, Offset(100)), Loaded::Bad);
    }
}
