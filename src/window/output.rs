//! The aggregates output: one JSON object per closed (key, window), appended to the shard's
//! results record (`aggregates/s{NNN}/`, see `results`). Its position is part of every
//! checkpoint; on recovery the record is cut back to it before replay re-emits what followed.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::ser::SerializeMap;

use super::{Agg, WindowSpec};
use crate::results::{self, Cursors, RecordWriter};
use crate::units::Millis;

/// The results record's durability handle, as the checkpoint sees it.
pub type OutputSync = results::RecordSync;

/// Appends closed windows to one shard's aggregates record: formats each row and hands it
/// to the [`RecordWriter`], which stages, writes, rolls and keeps rows through failed
/// writes (see there).
#[derive(Debug)]
pub struct AggregatesWriter {
    record: RecordWriter,
    scratch: Vec<u8>,
    columns: Columns,
}

/// Which aggregates a row carries (`[window] aggregates`); quantiles are chosen by
/// `[window] quantiles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns(u8);

impl Columns {
    /// The aggregates by name, in row order.
    pub const NAMES: [&'static str; 8] = [
        "count", "distinct", "sum", "min", "max", "mean", "stddev", "last",
    ];
    /// Every aggregate.
    pub const ALL: Columns = Columns(0xff);

    /// The columns named; an unknown name is an error naming it.
    pub fn from_names(names: &[String]) -> Result<Columns, String> {
        let mut bits = 0u8;
        for name in names {
            let Some(i) = Columns::NAMES.iter().position(|n| n == name) else {
                return Err(format!(
                    "window.aggregates: unknown aggregate `{name}` ({}; quantiles are chosen by                      window.quantiles)",
                    Columns::NAMES.join(", ")
                ));
            };
            bits |= 1 << i;
        }
        Ok(Columns(bits))
    }

    #[inline]
    fn has(self, name: &str) -> bool {
        Columns::NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

/// One output line; fields in the documented order, quantiles as configured.
struct Line<'a> {
    key: &'a str,
    spec: &'a WindowSpec,
    start_ms: i64,
    agg: &'a Agg,
    quantiles: &'a [(f64, String)],
    columns: Columns,
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
        let c = self.columns;
        if c.has("count") {
            m.serialize_entry("count", &a.count)?;
        }
        // Set members, or an experiment arm's units.
        if c.has("distinct") {
            let distinct = a.distinct.estimate();
            if a.members > 0 || distinct > 0 {
                m.serialize_entry("distinct", &distinct)?;
            }
        }
        // A window of set members only has no values to sum: members are hashes.
        if a.values() > 0 {
            if c.has("sum") {
                m.serialize_entry("sum", &a.sum)?;
                if a.sum.abs() == f64::MAX {
                    m.serialize_entry("sum_saturated", &true)?;
                }
            }
            for (name, v) in [
                ("min", a.min),
                ("max", a.max),
                ("mean", a.mean()),
                ("stddev", a.stddev()),
                ("last", a.last),
            ] {
                if c.has(name) {
                    m.serialize_entry(name, &v)?;
                }
            }
        }
        for (q, name) in self.quantiles {
            if let Some(v) = a.quantile(*q) {
                m.serialize_entry(name, &v)?;
            }
        }
        m.end()
    }
}

/// Appends the JSON row of one window to `out`.
fn encode_row(
    out: &mut Vec<u8>,
    key: &str,
    spec: &WindowSpec,
    start_ms: i64,
    agg: &Agg,
    quantiles: &[(f64, String)],
    columns: Columns,
) -> io::Result<()> {
    let line = Line {
        key,
        spec,
        start_ms,
        agg,
        quantiles,
        columns,
    };
    serde_json::to_writer(out, &line).map_err(io::Error::other)
}

/// The row of an open window (as a closed one is written, plus `"final":false`): what the
/// query API shows of a window still running.
pub fn open_row(
    key: &str,
    spec: &WindowSpec,
    start_ms: i64,
    agg: &Agg,
    quantiles: &[(f64, String)],
    columns: Columns,
) -> String {
    let mut out = Vec::with_capacity(512);
    // A map of strings and finite numbers always encodes.
    let _ = encode_row(&mut out, key, spec, start_ms, agg, quantiles, columns);
    let mut text = String::from_utf8(out).unwrap_or_else(|_| "{}".into());
    text.pop();
    if text.len() > 1 {
        text.push(',');
    }
    text.push_str("\"final\":false}");
    text
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
    /// Opens the record in `dir` at `position` (the checkpoint's; 0 without one) with the
    /// default options and no readers (tests, tools).
    pub fn open(dir: &Path, position: u64) -> io::Result<AggregatesWriter> {
        AggregatesWriter::open_with(
            dir,
            position,
            results::Options::default(),
            Arc::default(),
            Arc::new(AtomicU64::new(0)),
        )
    }

    /// Opens the record in `dir` at `position`, cut back there (see
    /// [`RecordWriter::open`]), with its retention, readers and committed position.
    pub fn open_with(
        dir: &Path,
        position: u64,
        options: results::Options,
        cursors: Arc<Cursors>,
        committed: Arc<AtomicU64>,
    ) -> io::Result<AggregatesWriter> {
        Ok(AggregatesWriter {
            record: RecordWriter::open(dir, position, options, cursors, committed)?,
            scratch: Vec::with_capacity(512),
            columns: Columns::ALL,
        })
    }

    /// Stages one closed window, with the given quantiles (value and field name). A failed
    /// write keeps it staged (see [`RecordWriter::flush`]); the row is never lost.
    pub fn write_window(
        &mut self,
        key: &str,
        spec: &WindowSpec,
        start_ms: i64,
        agg: &Agg,
        quantiles: &[(f64, String)],
    ) -> io::Result<()> {
        self.scratch.clear();
        encode_row(
            &mut self.scratch,
            key,
            spec,
            start_ms,
            agg,
            quantiles,
            self.columns,
        )?;
        self.scratch.push(b'\n');
        self.record.append(&self.scratch);
        Ok(())
    }

    /// Rows carry these aggregates from now on.
    pub fn set_columns(&mut self, columns: Columns) {
        self.columns = columns;
    }

    /// The aggregates rows carry.
    pub fn columns(&self) -> Columns {
        self.columns
    }

    /// The first write error met while staging rows since the last call.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.record.take_error()
    }

    /// Writes the staged rows out (see [`RecordWriter::flush`]).
    pub fn flush(&mut self) -> io::Result<()> {
        self.record.flush()
    }

    /// Writes the staged rows out and returns the handle that makes them durable (see
    /// [`RecordWriter::sync_handle`]).
    pub fn sync_handle(&mut self) -> (OutputSync, io::Result<()>) {
        self.record.sync_handle()
    }

    /// Where the record ends, staged rows included: the position a checkpoint records.
    pub fn len(&self) -> u64 {
        self.record.position()
    }

    /// Bytes staged and not yet written.
    pub fn staged_bytes(&self) -> usize {
        self.record.staged_bytes()
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record's directory.
    pub fn path(&self) -> &Path {
        self.record.dir()
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

    fn record_text(dir: &Path) -> String {
        crate::results::read_record(dir).0
    }

    fn record_bytes(dir: &Path) -> u64 {
        crate::results::read_record(dir).1
    }

    #[test]
    fn rows_carry_the_aggregates_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = AggregatesWriter::open(dir.path(), 0).unwrap();
        w.set_columns(Columns::from_names(&["count".into(), "mean".into()]).unwrap());
        let mut agg = Agg::one(3.0, 5);
        agg.add(5.0, 6, false);
        w.write_window("k", &WindowSpec::tumbling(10_000), 0, &agg, &[])
            .unwrap();
        w.flush().unwrap();
        let row: serde_json::Value = serde_json::from_str(record_text(dir.path()).trim()).unwrap();
        // (serde_json's map sorts the names.)
        let fields: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            [
                "count", "end", "end_ms", "key", "mean", "start", "start_ms", "window"
            ]
        );
        assert_eq!(row["mean"], 4.0);
        let err = Columns::from_names(&["median".into()]).unwrap_err();
        assert!(err.contains("unknown aggregate `median`"), "{err}");
    }

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
        let path = dir.path().join("s000");
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
        assert_eq!(record_bytes(&path), before);
        assert!(w.staged_bytes() > 64 * 1024);
        // A checkpoint taken now must not vouch for the staged rows.
        let (sync, written) = w.sync_handle();
        assert!(written.is_err());
        let refused = sync.sync().unwrap_err().to_string();
        assert!(refused.contains("waiting to be written"), "{refused}");
        crate::fault::clear();
        w.flush().unwrap();
        sync.sync().unwrap();
        assert_eq!(w.staged_bytes(), 0);
        assert_eq!(record_bytes(&path), w.len());
        let text = record_text(&path);
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
        let path = dir.path().join("s000");
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
        let lines = record_text(&path).lines().count();
        assert_eq!(lines, 500);
    }
}
