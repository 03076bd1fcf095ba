//! The log: one append-only partition per core, made of memory-mapped segment files of
//! CRC-checked record batches.
//!
//! The log owns everything under `data_dir/log/`. One [`Appender`] (owned by one core)
//! writes a partition; any number of [`Reader`]s, [`verify`] and [`dump`] read it with plain
//! file reads, so only the appender maps segments (see `segment.rs`, the one place with
//! `unsafe` in this module).
//!
//! ```text
//! data_dir/log/p{NNN}/{base_offset:020}.seg     base_offset = first offset stored in it
//! data_dir/log/p{NNN}/{base_offset:020}.idx     its sparse index (format in `index.rs`)
//! ```
//!
//! Offsets count lines (records): a batch holding `n` lines with first offset `o` covers
//! `o..o+n`; the next batch starts at `o+n`, and the first batch of a segment starts at the
//! segment's base offset.
//!
//! # Segment and record batch format (version 1)
//!
//! Segments are preallocated to `segment_bytes` (zeros), then filled from the start with
//! record batches, each 8-byte aligned. All integers are little-endian (the crate builds for
//! little-endian targets only; the header is a `bytemuck::Pod` read and written as is).
//!
//! ```text
//! segment:  | batch | batch | ... | batch | 00 00 00 ... 00 (zeros up to segment_bytes) |
//!
//! batch:    byte  size  field
//!           0     4     magic            "SLCB" (0x42434c53); 0 = end of data
//!           4     2     version          1
//!           6     2     flags            0 (reserved)
//!           8     4     crc              CRC-32 (IEEE) over bytes 12..40 and the payload
//!           12    4     payload_bytes    length of the payload, padding excluded
//!           16    8     first_offset     offset of the first line
//!           24    8     ingest_time_ms   ms since the Unix epoch
//!           32    4     count            lines in the payload, at least 1
//!           36    2     listener_id      listener the lines came from
//!           38    2     padding          0
//!           40    ..    payload          count x ( u32 line length | line bytes )
//!           ..    0..7  zeros            pad to a multiple of 8 bytes
//! ```
//!
//! The checksum is CRC-32 (IEEE 802.3 polynomial, as computed by `crc32fast`); it is part of
//! the on-disk format and changes only with `version`.
//!
//! # Invariants
//!
//! - A batch is valid when its magic, version, flags, lengths, CRC, zero padding and line
//!   framing check out and its `first_offset` is the offset expected after the batch before
//!   it. The first invalid batch ends the valid data of a segment: nothing after it is ever
//!   returned. A zero magic is the clean end of data.
//! - A batch (header, payload, padding) reaches the segment in one `pwrite` at commit; what is
//!   not committed never reaches it. Past the committed end a segment is zero.
//! - Recovery ([`Appender::open`]) checks the newest segment batch by batch and zeroes
//!   everything after its valid prefix (a torn tail is cut, never read); it checks that the
//!   newest segment's base offset follows the segment before it.
//! - Sealed segments become durable in the background, oldest first, at most
//!   `SEALS_IN_FLIGHT_MAX` waiting; the durable offset never passes the end of one that is not.
//!   An OS crash can leave a sealed segment short of its successor: recovery cuts the log at
//!   that gap (see `recovery.rs`), so the log is always one contiguous prefix.
//! - `flushed_offset <= next_offset` (written); both only rise. After a restart the flushed
//!   offset starts at the newest segment's base: its recovered batches are synced again.
//! - Segment files are never shrunk while the process runs (a shrunk mapping is SIGBUS).
//! - `durable <= flushed <= written` (asserted at every publication, see `flusher.rs`).
//!   Under `flush = interval` one background thread msyncs every partition; the cores only
//!   publish what they wrote. `flush()` (shutdown, `always`) is synchronous; a checkpoint
//!   takes a `FlushTicket` that the coordinator makes durable on its own thread.
//! - Batches are written with one `pwrite` each into the page cache; the segment's mapping
//!   is read-only (the appender reads recent batches back through it), see `segment.rs`.
//! - An index (`.idx`) is a cache of its segment: entries are CRC-checked one by one, a
//!   missing, short or bad index is rebuilt from the segment when the appender opens the
//!   partition (readers fall back to scanning), and a reader checks the batch an entry
//!   points at before it trusts it.
//! - Retention deletes whole sealed segments, oldest first, never the active one and never
//!   one holding the retention floor (the newest checkpoint's offset) or a later offset;
//!   with no floor set it deletes nothing.

// `forbid` here would reach `segment.rs`, the one file that needs `unsafe`; every other
// file of the module forbids it.
#![deny(unsafe_code)]

mod appender;
mod flusher;
mod index;
mod reader;
mod record;
mod recovery;
mod segment;
mod tail;
mod verify;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// When the log is flushed to disk.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FlushPolicy {
    /// Every batch is durable before anything depends on it.
    Always,
    /// Every `flush_interval_ms`.
    #[default]
    Interval,
    /// Left to the kernel.
    Never,
}

pub use appender::{Appender, BatchWriter};
pub use flusher::{FlushTicket, Offsets};
pub use reader::{Batch, Damage, Reader, Tail};
pub use record::Lines;
pub use tail::{TAIL_POLL_MS, tail};
pub use verify::{
    DumpStats, ListenerNames, PartitionReport, Problem, ProblemKind, VerifyReport, dump, verify,
    write_batch,
};

/// Largest payload of one record batch: a writer commits and starts a new batch
/// transparently before a line would take its batch past this.
pub const BATCH_PAYLOAD_BYTES_MAX: u32 = 1024 * 1024;

/// Batches [`Appender::lines`] can still find after they were committed.
pub const RECENT_BATCHES_MAX: usize = 1024;

/// Segment bytes between two entries of a segment's sparse index: a seek reads at most about
/// this much (plus one batch) past the entry it starts from.
pub const INDEX_INTERVAL_BYTES: u64 = 64 * 1024;

/// The appender wakes the flusher thread each time it has written this many more bytes of a
/// segment: under `flush = interval` the flusher then starts writeback of what is written,
/// without waiting for it, so the disk writes continuously and the flush every
/// `flush_interval_ms` (one journal commit) finds little left to do.
pub const FLUSHER_WAKE_BYTES: u64 = 4 * 1024 * 1024;

/// The appender's writes cover the page cache in whole chunks of this size: a `pwrite` that
/// reaches past the chunks already covered carries zeros after its batch up to the next
/// multiple of it (zeros are what the preallocated segment holds there, and what a reader
/// takes for the end of the data), so the next batches land on pages already cached. On
/// ext4 with large folios, a write that starts and ends on a 64 KiB boundary gets its page
/// cache as one folio; a write anywhere else gets it as many small ones, which costs more
/// than the copy (a 64 KiB batch: ~34 µs per `pwrite` unpadded, ~24 µs padded, in a scratch
/// C loop on the development VM's kernel 6.18).
pub const WRITE_CHUNK_BYTES: u64 = 64 * 1024;

/// Spare segments the flusher thread keeps preallocated for each partition, so that rolls
/// closer together than one sealed segment takes to reach the disk still find one ready (a
/// roll that finds none preallocates its segment itself, on the core: 0.2–26 ms measured on
/// ext4 while writeback runs). Each holds `segment_bytes` of disk.
pub const SPARES_READY: usize = 2;

/// Sealed segments that may wait for the disk at once: a roll beyond it first makes the
/// oldest durable. Bounds the page cache a partition can dirty ahead of the disk to about
/// this many segments, and what recovery scans for a segment torn by an OS crash.
pub const SEALS_IN_FLIGHT_MAX: usize = 4;

/// How often the appender's tick checks the retention bounds.
pub const RETENTION_CHECK_INTERVAL_MS: u64 = 1_000;

const _: () = assert!(INDEX_INTERVAL_BYTES.is_multiple_of(record::BATCH_ALIGN_BYTES));
const _: () = assert!(WRITE_CHUNK_BYTES.is_multiple_of(record::BATCH_ALIGN_BYTES));

const _: () = assert!(crate::limits::LINE_BYTES_MAX + 4 <= BATCH_PAYLOAD_BYTES_MAX);
// A line, its length prefix and a batch header always fit in a fresh segment.
const _: () =
    assert!((crate::limits::LINE_BYTES_MAX as u64) + 4 + 64 <= crate::limits::SEGMENT_BYTES_MIN);

/// Position of a line in a partition: the number of lines before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Offset(pub u64);

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn list(partitions: &[u16]) -> String {
    if partitions.is_empty() {
        return "none".into();
    }
    partitions
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a log file.
    #[error("log I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A corrupt record batch.
    #[error("corrupt record batch in {segment} at file position {file_pos}: {reason}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte position of the batch in the file.
        file_pos: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment whose base offset does not follow the end of the segment before it.
    #[error(
        "segment {segment} starts at offset {base_offset} but the segment before it ends at \
         {expected}"
    )]
    Discontinuity {
        /// The segment file.
        segment: PathBuf,
        /// Its base offset.
        base_offset: Offset,
        /// The offset after the last batch of the segment before it.
        expected: Offset,
    },
    /// A line was pushed to a batch writer after one of its writes failed.
    #[error("the batch writer's last write failed; it takes no more lines")]
    WriterFailed,
    /// A line longer than `LINE_BYTES_MAX` was pushed.
    #[error("line of {line_bytes} bytes is longer than the log accepts ({line_bytes_max})")]
    LineTooLong {
        /// Length of the line.
        line_bytes: usize,
        /// The limit.
        line_bytes_max: u32,
    },
    /// The data dir holds no log.
    #[error("no log under {}", data_dir.display())]
    NoLog {
        /// The data dir.
        data_dir: PathBuf,
    },
    /// The partition asked for is not in the log.
    #[error("no partition {partition} in the log under {} (partitions: {})", data_dir.display(), list(existing))]
    NoPartition {
        /// The partition asked for.
        partition: u16,
        /// The data dir.
        data_dir: PathBuf,
        /// The partitions there are.
        existing: Vec<u16>,
    },
    /// Writing the output of [`dump`] failed.
    #[error("log dump output: {source}")]
    Output {
        /// Why.
        source: std::io::Error,
    },
}

/// Options of a partition.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Segment file size.
    pub segment_bytes: u64,
    /// Flush policy.
    pub flush: FlushPolicy,
    /// Flush interval under [`FlushPolicy::Interval`].
    pub flush_interval_ms: u64,
    /// Segment bytes kept per partition before retention deletes the oldest (0: no bound).
    pub retention_bytes: u64,
    /// Hours of ingest time kept per partition (0: no bound).
    pub retention_hours: u64,
}

/// What opening a partition found and repaired.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Next offset after the intact prefix.
    pub next_offset: Offset,
    /// Bytes cut from the tail (a torn or corrupt tail), 0 when clean.
    pub truncated_bytes: u64,
    /// Bad batches cut out of the newest segment, with valid batches kept after them.
    pub bad_batches: u64,
    /// Offsets found to have no line in the log: in the batches cut out, between the last
    /// two segments, and below the floor.
    pub lost_lines: u64,
    /// Of those, offsets below the floor (lines a checkpoint counted that are gone).
    pub lost_below_floor: u64,
}

/// A batch that was committed by [`BatchWriter::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Offset of its first line.
    pub first_offset: Offset,
    /// Lines in it.
    pub count: u32,
    /// Listener the lines came from.
    pub listener_id: u16,
    /// Ingest time (ms since the epoch).
    pub ingest_time_ms: i64,
}

impl BatchInfo {
    /// Offset after its last line: the first offset of the next batch.
    pub fn end_offset(&self) -> Offset {
        Offset(self.first_offset.0 + u64::from(self.count))
    }
}

/// Directory of partition `partition` under `data_dir`.
pub fn partition_dir(data_dir: &Path, partition: u16) -> PathBuf {
    data_dir.join("log").join(format!("p{partition:03}"))
}

/// Partitions that exist under `data_dir`, ascending.
pub fn partitions(data_dir: &Path) -> Result<Vec<u16>, Error> {
    let dir = data_dir.join("log");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { path: dir, source }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix('p'))
            .and_then(|n| n.parse().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Helpers shared by the tests of the module's files.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Options with the smallest segments, so tests roll often.
    pub(crate) fn small_options(flush: FlushPolicy) -> Options {
        Options {
            segment_bytes: crate::limits::SEGMENT_BYTES_MIN,
            flush,
            flush_interval_ms: 50,
            retention_bytes: 0,
            retention_hours: 0,
        }
    }

    /// A committed batch and its lines.
    pub(crate) type Written = (BatchInfo, Vec<Vec<u8>>);

    /// Writes each element of `batches` with one writer (listener = its index) and returns
    /// every batch committed, with the lines read back through [`Appender::lines`].
    pub(crate) fn write_batches(appender: &mut Appender, batches: &[Vec<Vec<u8>>]) -> Vec<Written> {
        let mut written = Vec::new();
        for (i, lines) in batches.iter().enumerate() {
            let mut out = Vec::new();
            let mut writer = appender.begin(i as u16, 1_000 + i as i64);
            for line in lines {
                writer.push(line).unwrap();
            }
            writer.finish(&mut out).unwrap();
            let lines_out: usize = out.iter().map(|b| b.count as usize).sum();
            assert_eq!(lines_out, lines.len());
            for info in out {
                let read: Vec<Vec<u8>> = appender.lines(&info).map(<[u8]>::to_vec).collect();
                assert_eq!(read.len(), info.count as usize);
                written.push((info, read));
            }
        }
        written
    }

    /// Every batch a reader from `from` returns now.
    pub(crate) fn read_all(dir: &Path, from: Offset) -> Vec<Written> {
        let mut reader = Reader::open(dir, from).unwrap();
        let mut out = Vec::new();
        while let Some(batch) = reader.next_batch().unwrap() {
            out.push((batch.info, batch.lines.map(<[u8]>::to_vec).collect()));
        }
        out
    }

    /// A line of `len` bytes derived from `seed`.
    pub(crate) fn line(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed * 31 + i) as u8).collect()
    }
}
