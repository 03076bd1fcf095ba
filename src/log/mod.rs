//! The log: one append-only partition per core, made of memory-mapped segment files of
//! CRC-checked record batches. (Being written: see the API below.)
//!
//! ```text
//! data_dir/log/p{NNN}/{base_offset:020}.seg
//! ```
//!
//! Offsets count lines (records): a batch holding `n` lines with first offset `o` covers
//! `o..o+n`; the next batch starts at `o+n`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use crate::config::FlushPolicy;

/// Position of a line in a partition: the number of lines before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Offset(pub u64);

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
}

/// What opening a partition found and repaired.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Next offset after the intact prefix.
    pub next_offset: Offset,
    /// Bytes cut from the tail (a torn or corrupt tail), 0 when clean.
    pub truncated_bytes: u64,
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

/// The writer of one partition. Owned by one core.
#[derive(Debug)]
pub struct Appender {
    _dir: PathBuf,
}

impl Appender {
    /// Opens (creating if needed) the partition directory `dir`, recovers its tail and
    /// positions the appender after the intact prefix.
    pub fn open(_dir: &Path, _options: Options) -> Result<(Appender, RecoveryReport), Error> {
        todo!("log")
    }

    /// Offset the next appended line will get.
    pub fn next_offset(&self) -> Offset {
        todo!("log")
    }

    /// Offset up to which everything is flushed (durable).
    pub fn flushed_offset(&self) -> Offset {
        todo!("log")
    }

    /// Starts a batch of lines from one listener.
    pub fn begin(&mut self, _listener_id: u16, _ingest_time_ms: i64) -> BatchWriter<'_> {
        todo!("log")
    }

    /// Makes every committed batch durable.
    pub fn flush(&mut self) -> Result<(), Error> {
        todo!("log")
    }

    /// Flushes if the policy is `interval` and the interval has passed since the last flush.
    /// Returns whether it flushed.
    pub fn maybe_flush(&mut self, _now: Instant) -> Result<bool, Error> {
        todo!("log")
    }

    /// The lines of a batch this appender committed (still mapped).
    pub fn lines(&self, _batch: &BatchInfo) -> Lines<'_> {
        todo!("log")
    }
}

/// Writes lines straight into the mapped segment. Rolls to a new segment when the current one
/// is full (committing what it holds first).
#[derive(Debug)]
pub struct BatchWriter<'a> {
    _appender: &'a mut Appender,
}

impl BatchWriter<'_> {
    /// Appends one line (at most `LINE_BYTES_MAX` bytes).
    pub fn push(&mut self, _line: &[u8]) -> Result<(), Error> {
        todo!("log")
    }

    /// Commits the batch (CRC, header) and pushes every batch it committed to `out` (none when
    /// no line was pushed). Flushes first under [`FlushPolicy::Always`].
    pub fn finish(self, _out: &mut Vec<BatchInfo>) -> Result<(), Error> {
        todo!("log")
    }
}

/// The lines of a batch.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    _payload: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        todo!("log")
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
    _dir: PathBuf,
}

impl Reader {
    /// Opens partition directory `dir` for reading from `from`: the first batch returned is
    /// the one holding `from` (it may start before it).
    pub fn open(_dir: &Path, _from: Offset) -> Result<Reader, Error> {
        todo!("log")
    }

    /// The next intact batch, or `None` at the end of the valid data (call again later to
    /// follow new data).
    pub fn next_batch(&mut self) -> Result<Option<Batch<'_>>, Error> {
        todo!("log")
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
