//! The aggregates output: `aggregates/s{NNN}.jsonl`, one JSON object per closed (key, window),
//! appended, never rewritten. Its length in bytes is part of every checkpoint; on recovery the
//! file is cut back to that length before replay re-emits what followed.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::ser::SerializeMap;

use super::{Agg, WindowSpec};
use crate::config::Millis;

/// Appends closed windows to one shard's aggregates file.
///
/// Rows are staged in memory and written at [`flush`](Self::flush). A write that fails
/// (ENOSPC, EIO, EPERM) loses nothing: the unwritten bytes stay staged, in order, and the
/// next flush writes them from where the file ends. [`len`](Self::len) counts staged bytes
/// too: it is the length the file will have once they are written, which is what a
/// checkpoint records; [`OutputSync::sync`] refuses to vouch for bytes not yet in the file.
#[derive(Debug)]
pub struct AggregatesWriter {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes in the file.
    written: u64,
    /// Rows after `written`, not yet in the file.
    staged: Vec<u8>,
    /// A write error met while staging a row, for the owner to see.
    error: Option<io::Error>,
    scratch: Vec<u8>,
}

/// Staged bytes after which [`AggregatesWriter::write_window`] writes them out.
const STAGED_BYTES_WRITE: usize = 64 * 1024;

/// An aggregates file whose written bytes another thread makes durable (see
/// [`AggregatesWriter::sync_handle`]).
#[derive(Debug)]
pub struct OutputSync {
    file: Arc<File>,
    path: PathBuf,
    /// The length the snapshot recorded: the file must hold this much.
    len: u64,
}

impl OutputSync {
    /// fsyncs the file: everything written before the handle was taken is durable. Fails
    /// when the file does not yet hold the recorded length (its last rows could not be
    /// written): a checkpoint never names rows that are not in the file.
    pub fn sync(&self) -> io::Result<()> {
        crate::fault::check(crate::fault::Op::Sync)?;
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
        Ok(AggregatesWriter {
            path: path.to_path_buf(),
            file: Arc::new(file),
            written: len,
            staged: Vec::with_capacity(STAGED_BYTES_WRITE + 4096),
            error: None,
            scratch: Vec::with_capacity(512),
        })
    }

    /// Stages one closed window, with the given quantiles (value and field name), and
    /// writes the staged rows out once they fill a write. A failed write keeps them staged
    /// (see [`flush`](Self::flush)); the row is never lost.
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
        let was_full = self.staged.len() >= STAGED_BYTES_WRITE;
        self.staged.extend_from_slice(&self.scratch);
        if !was_full
            && self.staged.len() >= STAGED_BYTES_WRITE
            && let Err(e) = self.flush()
        {
            // Kept for the owner to see ([`take_error`](Self::take_error)); the row is
            // staged, and the windows being closed close whole. When the stage was full
            // already, writing failed before: the owner's retry writes.
            self.error.get_or_insert(e);
        }
        Ok(())
    }

    /// The first write error met by [`write_window`](Self::write_window) since the last call.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Writes the staged rows into the file (readers see them). On error the bytes not
    /// written stay staged, in order, and the next call goes on from the file's end.
    pub fn flush(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        while !self.staged.is_empty() {
            let n = crate::fault::check(crate::fault::Op::Write)
                .and_then(|()| self.file.write_at(&self.staged, self.written));
            match n {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n as u64;
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
        Ok(())
    }

    /// Writes the staged rows out (as [`flush`](Self::flush) does; a failure is returned
    /// after the handle) and returns a handle that makes the first `len()` bytes durable
    /// from another thread (checkpoints: the coordinator fsyncs, the core goes on). The
    /// handle's sync fails while those bytes are not all in the file.
    pub fn sync_handle(&mut self) -> (OutputSync, io::Result<()>) {
        let flushed = self.flush();
        let sync = OutputSync {
            file: Arc::clone(&self.file),
            path: self.path.clone(),
            len: self.len(),
        };
        (sync, flushed)
    }

    /// Bytes written so far, staged ones included: the length of the file once they are in.
    pub fn len(&self) -> u64 {
        self.written + self.staged.len() as u64
    }

    /// Bytes staged and not yet in the file (more than a write's worth only while writes
    /// fail).
    pub fn staged_bytes(&self) -> usize {
        self.staged.len()
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{Fault, Op};

    fn write_rows(w: &mut AggregatesWriter, from: i64, n: i64) {
        let spec = WindowSpec::tumbling(10_000);
        for i in from..from + n {
            let agg = Agg::one(i as f64, i * 10_000);
            w.write_window("room.temp", &spec, i * 10_000, &agg, &[])
                .unwrap();
        }
    }

    #[test]
    fn rows_a_failed_write_could_not_take_are_written_once_in_order_when_writes_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s000.jsonl");
        let mut w = AggregatesWriter::open(&path, 0).unwrap();
        write_rows(&mut w, 0, 10);
        w.flush().unwrap();
        let before = w.len();
        crate::fault::clear();
        crate::fault::arm(Fault {
            op: Op::Write,
            after: 0,
            times: u32::MAX,
            errno: libc::ENOSPC,
        });
        // Enough rows to fill the stage: staging never fails, writing does.
        write_rows(&mut w, 10, 1_000);
        assert!(w.take_error().is_some());
        assert!(w.flush().is_err());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), before);
        assert!(w.staged_bytes() > STAGED_BYTES_WRITE);
        // A checkpoint taken now must not vouch for the staged rows.
        let (sync, written) = w.sync_handle();
        assert!(written.is_err());
        let refused = sync.sync().unwrap_err().to_string();
        assert!(refused.contains("waiting to be written"), "{refused}");
        crate::fault::clear();
        w.flush().unwrap();
        sync.sync().unwrap();
        assert_eq!(w.staged_bytes(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), w.len());
        let text = std::fs::read_to_string(&path).unwrap();
        let starts: Vec<i64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["start_ms"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(starts, (0..1_010).map(|i| i * 10_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_write_that_fails_midway_continues_from_where_the_file_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s000.jsonl");
        let mut w = AggregatesWriter::open(&path, 0).unwrap();
        for round in 0..5 {
            crate::fault::clear();
            crate::fault::arm(Fault {
                op: Op::Write,
                after: 0,
                times: 1 + round,
                errno: libc::EIO,
            });
            write_rows(&mut w, i64::from(round) * 100, 100);
            for _ in 0..=round {
                assert!(w.flush().is_err());
            }
            w.flush().unwrap();
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 500);
    }
}
