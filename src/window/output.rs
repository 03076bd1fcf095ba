//! The aggregates output: `aggregates/s{NNN}.jsonl`, one JSON object per closed (key, window),
//! appended, never rewritten. Its length in bytes is part of every checkpoint; on recovery the
//! file is cut back to that length before replay re-emits what followed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Agg;
use crate::config::Millis;

/// Appends closed windows to one shard's aggregates file.
#[derive(Debug)]
pub struct AggregatesWriter {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    dirty: bool,
}

#[derive(Serialize)]
struct Line<'a> {
    key: &'a str,
    window: &'a str,
    start: &'a str,
    start_ms: i64,
    end: &'a str,
    end_ms: i64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    mean: f64,
    last: f64,
}

/// RFC 3339 UTC time of `ms` (seconds precision when whole, else milliseconds).
pub fn rfc3339(ms: i64) -> String {
    if ms < 0 {
        return String::new();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    if ms % 1000 == 0 {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

impl AggregatesWriter {
    /// Opens `path` for appending after cutting it to `len` bytes (the length recorded by the
    /// checkpoint being resumed; 0 without one). A file shorter than `len` is an error: the
    /// checkpoint promised output that is not there.
    pub fn open(path: &Path, len: u64) -> io::Result<AggregatesWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        let actual = file.metadata()?.len();
        if actual < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} is {actual} bytes, shorter than the {len} its checkpoint recorded",
                    path.display()
                ),
            ));
        }
        if actual > len {
            tracing::info!(path = %path.display(), cut_bytes = actual - len, "aggregates cut back to the checkpoint");
            file.set_len(len)?;
            file.sync_all()?;
        }
        let mut file = file;
        std::io::Seek::seek(&mut file, io::SeekFrom::Start(len))?;
        Ok(AggregatesWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(64 * 1024, file),
            len,
            dirty: false,
        })
    }

    /// Writes one closed window.
    pub fn write_window(
        &mut self,
        key: &str,
        size_ms: i64,
        start_ms: i64,
        agg: &Agg,
    ) -> io::Result<()> {
        let end_ms = start_ms + size_ms;
        let window = Millis(size_ms as u64).to_string();
        let line = Line {
            key,
            window: &window,
            start: &rfc3339(start_ms),
            start_ms,
            end: &rfc3339(end_ms),
            end_ms,
            count: agg.count,
            sum: agg.sum,
            min: agg.min,
            max: agg.max,
            mean: agg.mean(),
            last: agg.last,
        };
        let mut buf = serde_json::to_vec(&line).map_err(io::Error::other)?;
        buf.push(b'\n');
        self.out.write_all(&buf)?;
        self.len += buf.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// Hands buffered lines to the kernel (readers see them).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.dirty {
            self.out.flush()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Flushes and fsyncs: the first `len()` bytes are durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.dirty = false;
        self.out.get_ref().sync_data()
    }

    /// Bytes written so far (including buffered ones).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Wall-clock now in ms since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
