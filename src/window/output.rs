//! The aggregates output: `aggregates/s{NNN}.jsonl`, one JSON object per closed (key, window),
//! appended, never rewritten. Its length in bytes is part of every checkpoint; on recovery the
//! file is cut back to that length before replay re-emits what followed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::ser::SerializeMap;

use super::{Agg, WindowSpec};
use crate::config::Millis;

/// Appends closed windows to one shard's aggregates file.
#[derive(Debug)]
pub struct AggregatesWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// The same file, for [`OutputSync`]s.
    shared: Arc<File>,
    len: u64,
    dirty: bool,
    scratch: Vec<u8>,
}

/// An aggregates file whose written bytes another thread makes durable (see
/// [`AggregatesWriter::sync_handle`]).
#[derive(Debug)]
pub struct OutputSync {
    file: Arc<File>,
    path: PathBuf,
}

impl OutputSync {
    /// fsyncs the file: everything written before the handle was taken is durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One output line; fields in the documented order, quantiles as configured.
struct Line<'a> {
    key: &'a str,
    spec: &'a WindowSpec,
    start_ms: i64,
    agg: &'a Agg,
    quantiles: &'a [(f64, String)],
}

impl Serialize for Line<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let end_ms = self.start_ms + self.spec.size_ms;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("key", self.key)?;
        m.serialize_entry("window", &Millis(self.spec.size_ms as u64).to_string())?;
        if self.spec.hop_ms != self.spec.size_ms {
            m.serialize_entry("hop", &Millis(self.spec.hop_ms as u64).to_string())?;
        }
        m.serialize_entry("start", &rfc3339(self.start_ms))?;
        m.serialize_entry("start_ms", &self.start_ms)?;
        m.serialize_entry("end", &rfc3339(end_ms))?;
        m.serialize_entry("end_ms", &end_ms)?;
        let a = self.agg;
        m.serialize_entry("count", &a.count)?;
        m.serialize_entry("sum", &a.sum)?;
        m.serialize_entry("min", &a.min)?;
        m.serialize_entry("max", &a.max)?;
        m.serialize_entry("mean", &a.mean())?;
        m.serialize_entry("last", &a.last)?;
        for (q, name) in self.quantiles {
            if let Some(v) = a.quantile(*q) {
                m.serialize_entry(name, &v)?;
            }
        }
        m.end()
    }
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
            shared: Arc::new(file.try_clone()?),
            out: BufWriter::with_capacity(64 * 1024, file),
            len,
            dirty: false,
            scratch: Vec::with_capacity(512),
        })
    }

    /// Writes one closed window, with the given quantiles (value and field name).
    pub fn write_window(
        &mut self,
        key: &str,
        spec: &WindowSpec,
        start_ms: i64,
        agg: &Agg,
        quantiles: &[(f64, String)],
    ) -> io::Result<()> {
        self.scratch.clear();
        let line = Line {
            key,
            spec,
            start_ms,
            agg,
            quantiles,
        };
        serde_json::to_writer(&mut self.scratch, &line).map_err(io::Error::other)?;
        self.scratch.push(b'\n');
        self.out.write_all(&self.scratch)?;
        self.len += self.scratch.len() as u64;
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

    /// Hands buffered lines to the kernel and returns a handle that makes the first `len()`
    /// bytes durable from another thread (checkpoints: the coordinator fsyncs, the core goes
    /// on).
    pub fn sync_handle(&mut self) -> io::Result<OutputSync> {
        self.out.flush()?;
        self.dirty = false;
        Ok(OutputSync {
            file: Arc::clone(&self.shared),
            path: self.path.clone(),
        })
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
