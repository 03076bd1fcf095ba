//! The results record: what closed windows (and, later, alert transitions and experiment
//! reports) leave behind, per shard, as append-only JSON lines. It is to the outputs what the
//! log is to the input.
//!
//! A record is a directory of segment files, `{position:020}.jsonl`, each named by the
//! position of its first byte in the shard's whole record: a position (a byte count since
//! the record began) names one row forever, across segments and retention. The writer
//! ([`RecordWriter`]) is the shard's core: it stages rows, writes them with positional
//! writes, rolls to a new segment past `segment_bytes`, and deletes whole old segments for
//! retention. Its position is part of every checkpoint; on recovery the record is cut back to
//! it before replay re-emits what followed.
//!
//! Readers ([`RecordReader`]: the query API's stream, notifiers, outputs, the cluster) run
//! on other threads, read the files by position and hold a [`Cursor`] registered in the
//! record's [`Cursors`]: retention never deletes a segment that a cursor has not passed, nor
//! one that holds rows after the newest committed checkpoint's position. A reader never
//! slows the writer: the writer only looks at the cursors when it considers retention.
//!
//! To add a reader: open a [`RecordReader`] at a position (a persisted cursor, or the
//! record's end), with the record's [`Cursors`] so that retention waits for it, and call
//! [`RecordReader::next_line`] from its own thread. Nothing in windows or the checkpoint
//! protocol changes.

#![forbid(unsafe_code)]

mod reader;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub use reader::{RecordReader, tail_rows};
pub use writer::{HookRecord, RecordSync, RecordWriter};

/// File extension of record segments.
const SEGMENT_EXTENSION: &str = "jsonl";

/// Which record of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Closed windows: `aggregates/`.
    Aggregates,
    /// Alert transitions: `alerts/`.
    Alerts,
    /// Experiment comparisons: `experiments/`.
    Experiments,
}

impl Kind {
    /// The directory under the data dir that holds this kind's records.
    pub fn dir_name(self) -> &'static str {
        match self {
            Kind::Aggregates => "aggregates",
            Kind::Alerts => "alerts",
            Kind::Experiments => "experiments",
        }
    }
}

/// The record directory of `shard` of `kind` under `data_dir`.
pub fn record_dir(data_dir: &Path, kind: Kind, shard: u16) -> PathBuf {
    data_dir.join(kind.dir_name()).join(format!("s{shard:03}"))
}

/// The file a record of an earlier layout kept in one piece (`aggregates/s{NNN}.jsonl`); it
/// becomes the first segment of the record directory when that is opened.
fn legacy_file(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_str()?;
    Some(dir.with_file_name(format!("{name}.{SEGMENT_EXTENSION}")))
}

/// How much of a record is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// A segment is sealed once it holds this many bytes (it ends at a row boundary).
    pub segment_bytes: u64,
    /// Bytes of sealed segments kept (0: no bound).
    pub retention_bytes: u64,
    /// Hours since a sealed segment's last write after which it may go (0: no bound).
    pub retention_hours: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: crate::limits::RESULTS_SEGMENT_BYTES_DEFAULT,
            retention_bytes: 0,
            retention_hours: 0,
        }
    }
}

/// One segment file of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SegmentFile {
    base: u64,
    path: PathBuf,
}

/// The position after the last byte written to the record in `dir` (0 when it has none).
pub fn record_end(dir: &Path) -> std::io::Result<u64> {
    let Some(last) = list_segments(dir)?.pop() else {
        return Ok(0);
    };
    Ok(last.base + std::fs::metadata(&last.path)?.len())
}

/// The segments of record directory `dir`, by position.
fn list_segments(dir: &Path) -> std::io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let base = path
            .extension()
            .filter(|e| *e == SEGMENT_EXTENSION)
            .and_then(|_| path.file_stem()?.to_str()?.parse::<u64>().ok());
        if let Some(base) = base {
            out.push(SegmentFile { base, path });
        }
    }
    out.sort_by_key(|s| s.base);
    Ok(out)
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{SEGMENT_EXTENSION}"))
}

/// The positions of a record's readers, for retention.
#[derive(Debug, Default)]
pub struct Cursors {
    list: Mutex<Vec<Weak<AtomicU64>>>,
}

/// A reader's position in a record, registered with its [`Cursors`] while it lives.
#[derive(Debug, Clone)]
pub struct Cursor(Arc<AtomicU64>);

impl Cursor {
    /// The position: everything before it has been read.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, position: u64) {
        self.0.store(position, Ordering::Release);
    }
}

impl Cursors {
    /// Registers a reader at `position`.
    pub fn register(&self, position: u64) -> Cursor {
        let cursor = Arc::new(AtomicU64::new(position));
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.push(Arc::downgrade(&cursor));
        Cursor(cursor)
    }

    /// The lowest position of a live reader, `None` when there is none.
    pub fn min(&self) -> Option<u64> {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.iter()
            .filter_map(Weak::upgrade)
            .map(|c| c.load(Ordering::Acquire))
            .min()
    }
}

/// The rows of the record in `dir`, each with its newline, and the bytes its segments hold
/// (tests of the modules that write records).
#[cfg(test)]
pub(crate) fn read_record(dir: &Path) -> (String, u64) {
    let mut reader = RecordReader::open(dir, 0, None);
    let mut text = String::new();
    while let Some((_, line)) = reader.next_line().expect("readable") {
        text.push_str(std::str::from_utf8(line).expect("rows are UTF-8"));
        text.push('\n');
    }
    let bytes = list_segments(dir)
        .expect("listable")
        .iter()
        .map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len()))
        .sum();
    (text, bytes)
}

#[cfg(test)]
mod tests;
