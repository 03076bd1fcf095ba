//! The dead-letter log: `deadletter/p{NNN}.log`, one JSON object per rejected line or late
//! event, written by the core that rejected it. Bounded per record (the raw bytes are cut at
//! [`DEADLETTER_LINE_BYTES_MAX`]); buffered, flushed on the core's tick and at shutdown.
//!
//! ```text
//! {"time_ms":1764360000123,"listener":"graphite-tcp","reason":"bad_number","line":"a.b x 1"}
//! {"time_ms":1764360000456,"listener":"graphite-tcp","reason":"late","key":"a.b","event_time_ms":1764359000000,"value":1.0,"window":"10s"}
//! ```
//!
//! It is a diagnostic record, not part of the exactly-once state: replay after a crash may
//! write a rejection again.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::limits::DEADLETTER_LINE_BYTES_MAX;
use crate::parse::Reject;

/// One core's dead-letter file.
#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
    out: BufWriter<File>,
    dirty: bool,
    errors: u64,
}

#[derive(Serialize)]
struct Rejected<'a> {
    time_ms: i64,
    listener: &'a str,
    reason: &'static str,
    line: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cut: bool,
}

#[derive(Serialize)]
struct LateRecord<'a> {
    time_ms: i64,
    reason: &'static str,
    key: &'a str,
    event_time_ms: i64,
    value: f64,
    windows_late: u32,
}

impl DeadLetter {
    /// Opens (appending) `data_dir/deadletter/p{core:03}.log`.
    pub fn open(data_dir: &Path, core: u16) -> io::Result<DeadLetter> {
        let dir = data_dir.join("deadletter");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("p{core:03}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(DeadLetter {
            path,
            out: BufWriter::with_capacity(32 * 1024, file),
            dirty: false,
            errors: 0,
        })
    }

    /// Records a rejected line (its first bytes, lossily decoded).
    pub fn reject(&mut self, time_ms: i64, listener: &str, reason: Reject, line: &[u8]) {
        let cut = line.len() > DEADLETTER_LINE_BYTES_MAX;
        let kept = &line[..line.len().min(DEADLETTER_LINE_BYTES_MAX)];
        let text = String::from_utf8_lossy(kept);
        let rec = Rejected {
            time_ms,
            listener,
            reason: reason.as_str(),
            line: &text,
            cut,
        };
        self.write(&rec);
    }

    /// Records a late event.
    pub fn late(
        &mut self,
        time_ms: i64,
        key: &[u8],
        event_time_ms: i64,
        value: f64,
        windows_late: u32,
    ) {
        let key = String::from_utf8_lossy(key);
        let rec = LateRecord {
            time_ms,
            reason: Reject::Late.as_str(),
            key: &key,
            event_time_ms,
            value,
            windows_late,
        };
        self.write(&rec);
    }

    fn write(&mut self, rec: &impl Serialize) {
        let ok =
            serde_json::to_writer(&mut self.out, rec).is_ok() && self.out.write_all(b"\n").is_ok();
        if ok {
            self.dirty = true;
        } else {
            // A full disk must not stop ingestion: count it, warn once in a while.
            self.errors += 1;
            if self.errors.is_power_of_two() {
                tracing::warn!(path = %self.path.display(), errors = self.errors, "cannot write dead-letter record");
            }
        }
    }

    /// Hands buffered records to the kernel.
    pub fn flush(&mut self) {
        if self.dirty {
            if let Err(e) = self.out.flush() {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot flush dead-letter log");
            }
            self.dirty = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_with_cut_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetter::open(dir.path(), 3).unwrap();
        d.reject(1, "g", Reject::BadNumber, b"a.b x\xff 1");
        d.reject(
            2,
            "g",
            Reject::TooLong,
            &vec![b'x'; DEADLETTER_LINE_BYTES_MAX + 10],
        );
        d.late(3, b"k", 100, 2.5, 1);
        d.flush();
        let text = std::fs::read_to_string(dir.path().join("deadletter/p003.log")).unwrap();
        let recs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0]["reason"], "bad_number");
        assert_eq!(recs[0]["line"], "a.b x\u{fffd} 1");
        assert_eq!(recs[1]["cut"], true);
        assert_eq!(
            recs[1]["line"].as_str().unwrap().len(),
            DEADLETTER_LINE_BYTES_MAX
        );
        assert_eq!(recs[2]["reason"], "late");
    }
}
