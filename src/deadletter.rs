//! The dead-letter log: `deadletter/p{NNN}.log`, one JSON object per rejected line or late
//! event, written by the core that rejected it. Buffered, written out on the core's tick (or
//! when [`DEADLETTER_BUFFER_BYTES`] are waiting) and when it is dropped at shutdown.
//!
//! ```text
//! {"time_ms":1764360000123,"listener":"graphite-tcp","reason":"bad_number","line":"a.b x 1"}
//! {"time_ms":1764360000124,"listener":"graphite-tcp","reason":"too_long","line":"aaaa…","cut":true}
//! {"time_ms":1764360000456,"reason":"late","key":"a.b","event_time_ms":1764359000000,"value":1.0,"windows_late":1}
//! {"time_ms":1764360000123,"listener":"graphite-tcp","reason":"bad_number","repeated":5120,"until_ms":1764360001099}
//! ```
//!
//! Bounded three ways, so no input can make it grow without limit:
//! - per record: a line is cut to its first [`DEADLETTER_LINE_BYTES_MAX`] bytes (`"cut":true`),
//!   so a record is at most a small constant (JSON escaping, names) larger than that;
//! - per second: of the rejections of one (listener, reason) within
//!   [`DEADLETTER_REPEAT_WINDOW_MS`], the first `repeats` are written in full; the rest are
//!   only counted, in one repeat record (`"repeated":N` more between `time_ms` and
//!   `until_ms`) written once the span is over. Late events collapse per reason;
//! - per partition: at most `max_bytes` on disk across `files` files. The file being written
//!   is `p{NNN}.log`; when the next record would take it past `max_bytes / files` it becomes
//!   `p{NNN}.log.1`, the older ones shift up (`.1` → `.2`, …) and the oldest is deleted.
//!
//! Each rejection ends in exactly one of the core's `deadletter` counters: written (a record
//! of its own), collapsed (in a repeat record), or dropped for `error` (the write or a
//! rotation failed: a full disk is counted and never stops the core) or `cap` (a record
//! larger than a file's share). Rejections whose records rotation later deletes are counted as dropped for
//! `rotated`. It is a diagnostic record, not part of the exactly-once state: replay after a
//! crash may write a rejection again.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::limits::{
    DEADLETTER_BUFFER_BYTES, DEADLETTER_FILES_MAX, DEADLETTER_LINE_BYTES_MAX,
    DEADLETTER_REPEAT_WINDOW_MS,
};
use crate::metrics::{DeadLetterCounters, Metrics};
use crate::parse::Reject;

/// One core's dead-letter files.
#[derive(Debug)]
pub struct DeadLetter {
    dir: PathBuf,
    core: u16,
    /// Largest size of one file: `max_bytes / files`.
    file_bytes_max: u64,
    /// Full records of one (listener, reason) per span before the rest collapse.
    repeats: u32,
    /// The file being written (`None` after a failed reopen; retried on the next write).
    file: Option<File>,
    /// Per file, newest (the one being written) first: its size and the rejections this
    /// process wrote to it. Sizes include the records still in `buf`.
    files: Vec<FileState>,
    /// Records not yet handed to the kernel, and the rejections they stand for.
    buf: Vec<u8>,
    buf_written: u64,
    buf_collapsed: u64,
    buf_records: u64,
    /// Open repeat spans, one per (listener, reason) seen in the last span.
    spans: Vec<Span>,
    /// Set when a rotation failed; cleared on the tick, so a broken directory costs at most
    /// one attempt per tick.
    rotate_failed: bool,
    errors: u64,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy, Default)]
struct FileState {
    bytes: u64,
    rejections: u64,
}

/// Repeats of one (listener, reason) within one span.
#[derive(Debug)]
struct Span {
    listener: String,
    reason: &'static str,
    start_ms: i64,
    last_ms: i64,
    full: u32,
    collapsed: u64,
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

#[derive(Serialize)]
struct Repeated<'a> {
    time_ms: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    listener: &'a str,
    reason: &'static str,
    repeated: u64,
    until_ms: i64,
}

/// The path of file `index` (0: the one being written) of a partition's dead letters.
pub fn file_path(dir: &Path, core: u16, index: u32) -> PathBuf {
    if index == 0 {
        dir.join(format!("p{core:03}.log"))
    } else {
        dir.join(format!("p{core:03}.log.{index}"))
    }
}

/// How much of the rejected input a partition keeps (`[deadletter]`, checked there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes kept, all files together.
    pub max_bytes: u64,
    /// Files: the one being written and the rotated ones.
    pub files: u32,
    /// Full records of one (listener, reason) per second.
    pub repeats: u32,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            max_bytes: crate::limits::DEADLETTER_BYTES_DEFAULT,
            files: crate::limits::DEADLETTER_FILES_DEFAULT,
            repeats: crate::limits::DEADLETTER_REPEATS_DEFAULT,
        }
    }
}

impl DeadLetter {
    /// Opens (appending) `data_dir/deadletter/p{core:03}.log` and takes stock of the rotated
    /// files beside it; files beyond `config.files` (a smaller setting than before) are
    /// deleted. Counts go to `metrics.cores[core].deadletter`.
    pub fn open(
        data_dir: &Path,
        core: u16,
        config: &Bounds,
        metrics: Arc<Metrics>,
    ) -> io::Result<DeadLetter> {
        assert!(config.files >= 1 && config.files <= DEADLETTER_FILES_MAX);
        assert!((core as usize) < metrics.cores.len());
        let dir = data_dir.join("deadletter");
        std::fs::create_dir_all(&dir)?;
        let file = open_append(&file_path(&dir, core, 0))?;
        let files = (0..config.files)
            .map(|i| FileState {
                bytes: std::fs::metadata(file_path(&dir, core, i)).map_or(0, |m| m.len()),
                rejections: 0,
            })
            .collect();
        for stale in config.files..=DEADLETTER_FILES_MAX {
            // Mostly absent; a file that cannot be removed is only reported.
            match std::fs::remove_file(file_path(&dir, core, stale)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(error = %e, "cannot remove stale dead-letter file")
                }
                _ => {}
            }
        }
        let d = DeadLetter {
            dir,
            core,
            file_bytes_max: config.max_bytes / u64::from(config.files),
            repeats: config.repeats,
            file: Some(file),
            files,
            buf: Vec::with_capacity(DEADLETTER_BUFFER_BYTES),
            buf_written: 0,
            buf_collapsed: 0,
            buf_records: 0,
            spans: Vec::new(),
            rotate_failed: false,
            errors: 0,
            metrics,
        };
        d.update_bytes();
        Ok(d)
    }

    fn counters(&self) -> &DeadLetterCounters {
        &self.metrics.cores[self.core as usize].deadletter
    }

    /// Records a rejected line (its first bytes, lossily decoded).
    pub fn reject(&mut self, time_ms: i64, listener: &str, reason: Reject, line: &[u8]) {
        if !self.admit(time_ms, listener, reason.as_str()) {
            return;
        }
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
        self.push(&rec, 1, 0);
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
        let reason = Reject::Late.as_str();
        if !self.admit(time_ms, "", reason) {
            return;
        }
        let key = &key[..key.len().min(DEADLETTER_LINE_BYTES_MAX)];
        let key = String::from_utf8_lossy(key);
        let rec = LateRecord {
            time_ms,
            reason,
            key: &key,
            event_time_ms,
            value,
            windows_late,
        };
        self.push(&rec, 1, 0);
    }

    /// Whether a rejection of (listener, reason) at `time_ms` gets a record of its own; if
    /// not, it is counted in its span's repeat record.
    fn admit(&mut self, time_ms: i64, listener: &str, reason: &'static str) -> bool {
        let found = self
            .spans
            .iter()
            .position(|s| s.reason == reason && s.listener == listener);
        let i = match found {
            Some(i)
                if time_ms
                    < self.spans[i]
                        .start_ms
                        .saturating_add(DEADLETTER_REPEAT_WINDOW_MS)
                    && time_ms >= self.spans[i].start_ms =>
            {
                i
            }
            Some(i) => {
                let span = self.spans.swap_remove(i);
                self.close_span(&span);
                self.open_span(time_ms, listener, reason)
            }
            None => self.open_span(time_ms, listener, reason),
        };
        let span = &mut self.spans[i];
        span.last_ms = span.last_ms.max(time_ms);
        if span.full < self.repeats {
            span.full += 1;
            true
        } else {
            span.collapsed += 1;
            false
        }
    }

    fn open_span(&mut self, time_ms: i64, listener: &str, reason: &'static str) -> usize {
        self.spans.push(Span {
            listener: listener.to_string(),
            reason,
            start_ms: time_ms,
            last_ms: time_ms,
            full: 0,
            collapsed: 0,
        });
        self.spans.len() - 1
    }

    /// Writes the repeat record of a finished span, if it collapsed anything.
    fn close_span(&mut self, span: &Span) {
        if span.collapsed == 0 {
            return;
        }
        let rec = Repeated {
            time_ms: span.start_ms,
            listener: &span.listener,
            reason: span.reason,
            repeated: span.collapsed,
            until_ms: span.last_ms,
        };
        self.push(&rec, 0, span.collapsed);
    }

    /// Closes the spans that ended before `now_ms` (all of them with `i64::MAX`).
    fn close_spans(&mut self, now_ms: i64) {
        let mut i = 0;
        while i < self.spans.len() {
            let end = self.spans[i]
                .start_ms
                .saturating_add(DEADLETTER_REPEAT_WINDOW_MS);
            if now_ms >= end {
                let span = self.spans.swap_remove(i);
                self.close_span(&span);
            } else {
                i += 1;
            }
        }
    }

    /// Adds one record standing for `written` + `collapsed` rejections to the buffer,
    /// rotating first if it would take the file past its share of the cap.
    fn push(&mut self, rec: &impl Serialize, written: u64, collapsed: u64) {
        let start = self.buf.len();
        let serialized = serde_json::to_writer(&mut self.buf, rec).is_ok();
        self.buf.push(b'\n');
        let len = (self.buf.len() - start) as u64;
        if !serialized || len > self.file_bytes_max {
            self.buf.truncate(start);
            self.counters().cap_total.add(written + collapsed);
            return;
        }
        if self.files[0].bytes + len > self.file_bytes_max {
            // The record goes to the next file: write out what is before it, then rotate.
            let record = self.buf.split_off(start);
            self.write_out();
            if !self.rotate() {
                // The file cannot take it and no new one can be started: a failed write.
                self.counters().error_total.add(written + collapsed);
                return;
            }
            self.buf = record;
        }
        self.files[0].bytes += len;
        self.buf_written += written;
        self.buf_collapsed += collapsed;
        self.buf_records += 1;
        if self.buf.len() >= DEADLETTER_BUFFER_BYTES {
            self.write_out();
        }
    }

    /// Hands the buffer to the kernel and settles the counts of the rejections in it. On a
    /// failure the file is cut back to where the buffer began, so no torn record stays.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let before = self.files[0].bytes - self.buf.len() as u64;
        let result = match &mut self.file {
            Some(file) => file.write_all(&self.buf),
            None => open_append(&file_path(&self.dir, self.core, 0)).and_then(|mut file| {
                let written = file.write_all(&self.buf);
                self.file = Some(file);
                written
            }),
        };
        let rejections = self.buf_written + self.buf_collapsed;
        let c = &self.metrics.cores[self.core as usize].deadletter;
        match result {
            Ok(()) => {
                c.written_total.add(self.buf_written);
                c.collapsed_total.add(self.buf_collapsed);
                c.records_total.add(self.buf_records);
                self.files[0].rejections += rejections;
            }
            Err(e) => {
                // A full disk must not stop ingestion: count it, warn once in a while.
                c.error_total.add(rejections);
                if let Some(file) = &self.file
                    && file.set_len(before).is_err()
                {
                    // Cannot tell what is on disk now: start a fresh file next time.
                    self.file = None;
                }
                self.files[0].bytes = before;
                self.errors += 1;
                if self.errors.is_power_of_two() {
                    tracing::warn!(dir = %self.dir.display(), core = self.core, error = %e,
                        errors = self.errors, "cannot write dead-letter records");
                }
            }
        }
        self.buf.clear();
        (self.buf_written, self.buf_collapsed, self.buf_records) = (0, 0, 0);
        self.update_bytes();
    }

    /// Starts a new file: the current one becomes `.1`, the others shift up, the oldest is
    /// deleted. Returns false (and warns) when that fails; nothing is written meanwhile.
    fn rotate(&mut self) -> bool {
        if self.rotate_failed {
            return false;
        }
        debug_assert!(self.buf.is_empty());
        self.file = None;
        let last = self.files.len() as u32 - 1;
        let path = |i| file_path(&self.dir, self.core, i);
        let mut result = match std::fs::remove_file(path(last)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        for i in (1..last).rev() {
            if result.is_ok() {
                result = match std::fs::rename(path(i), path(i + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                };
            }
        }
        if result.is_ok() && last > 0 {
            result = std::fs::rename(path(0), path(1));
        }
        if result.is_ok() && last == 0 {
            // A single file: it is emptied instead.
            result = File::create(path(0)).map(drop);
        }
        let result = result.and_then(|()| open_append(&path(0)));
        match result {
            Ok(file) => {
                self.file = Some(file);
                let deleted = self.files.pop().unwrap_or_default();
                self.counters().rotated_total.add(deleted.rejections);
                self.files.insert(0, FileState::default());
                self.update_bytes();
                true
            }
            Err(e) => {
                self.rotate_failed = true;
                tracing::warn!(dir = %self.dir.display(), core = self.core, error = %e,
                    "cannot rotate dead-letter files");
                false
            }
        }
    }

    fn update_bytes(&self) {
        let bytes: u64 = self.files.iter().map(|f| f.bytes).sum();
        self.counters().bytes.set(bytes as i64);
    }

    /// Writes the repeat records of finished spans and hands buffered records to the kernel;
    /// the core calls it on its tick.
    pub fn flush(&mut self) {
        self.close_spans(crate::window::now_ms());
        self.write_out();
        self.rotate_failed = false;
    }
}

impl Drop for DeadLetter {
    /// At shutdown the open spans are closed early, so no count is lost.
    fn drop(&mut self) {
        self.close_spans(i64::MAX);
        self.write_out();
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ListenerInfo;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(4, Vec::<ListenerInfo>::new()))
    }

    fn config(max_bytes: u64, files: u32, repeats: u32) -> Bounds {
        Bounds {
            max_bytes,
            files,
            repeats,
        }
    }

    fn records(dir: &Path, core: u16, files: u32) -> Vec<serde_json::Value> {
        (0..files)
            .rev()
            .filter_map(|i| {
                std::fs::read_to_string(file_path(&dir.join("deadletter"), core, i)).ok()
            })
            .flat_map(|text| {
                text.lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Rejections the records stand for: 1 each, or the repeat count.
    fn represented(recs: &[serde_json::Value]) -> u64 {
        recs.iter()
            .map(|r| r.get("repeated").and_then(|n| n.as_u64()).unwrap_or(1))
            .sum()
    }

    #[test]
    fn records_are_json_lines_with_cut_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let mut d = DeadLetter::open(dir.path(), 3, &Bounds::default(), m.clone()).unwrap();
        d.reject(1, "g", Reject::BadNumber, b"a.b x\xff 1");
        d.reject(
            2,
            "g",
            Reject::TooLong,
            &vec![b'x'; DEADLETTER_LINE_BYTES_MAX + 10],
        );
        d.late(3, b"k", 100, 2.5, 1);
        d.flush();
        let recs = records(dir.path(), 3, 1);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0]["reason"], "bad_number");
        assert_eq!(recs[0]["line"], "a.b x\u{fffd} 1");
        assert_eq!(recs[1]["cut"], true);
        assert_eq!(
            recs[1]["line"].as_str().unwrap().len(),
            DEADLETTER_LINE_BYTES_MAX
        );
        assert_eq!(recs[2]["reason"], "late");
        assert_eq!(m.cores[3].deadletter.written_total.get(), 3);
        assert_eq!(m.cores[3].deadletter.records_total.get(), 3);
    }

    #[test]
    fn repeats_within_a_second_collapse_into_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let mut d = DeadLetter::open(dir.path(), 0, &config(1 << 20, 2, 3), m.clone()).unwrap();
        for t in 0..100 {
            d.reject(1_000 + t, "g", Reject::BadNumber, b"x");
        }
        // Another listener and another reason have spans of their own.
        d.reject(1_050, "h", Reject::BadNumber, b"y");
        d.reject(1_050, "g", Reject::NoValue, b"z");
        // A new span begins after a second: the old one's count is written first.
        d.reject(2_000, "g", Reject::BadNumber, b"x");
        drop(d);
        let recs = records(dir.path(), 0, 2);
        let repeated: Vec<_> = recs
            .iter()
            .filter(|r| r.get("repeated").is_some())
            .collect();
        assert_eq!(repeated.len(), 1, "{recs:?}");
        assert_eq!(repeated[0]["repeated"], 97);
        assert_eq!(repeated[0]["listener"], "g");
        assert_eq!(repeated[0]["time_ms"], 1_000);
        assert_eq!(repeated[0]["until_ms"], 1_099);
        assert_eq!(recs.len(), 3 + 1 + 1 + 1 + 1);
        let c = &m.cores[0].deadletter;
        assert_eq!(c.written_total.get(), 6);
        assert_eq!(c.collapsed_total.get(), 97);
        assert_eq!(represented(&recs), 103);
    }

    #[test]
    fn rotation_keeps_the_partition_under_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let cap = 256 * 1024;
        let files = 4;
        let mut d =
            DeadLetter::open(dir.path(), 1, &config(cap, files, u32::MAX), m.clone()).unwrap();
        let line = vec![b'q'; 200];
        let total = 10_000u64;
        for t in 0..total {
            d.reject(t as i64, "garbage", Reject::BadNumber, &line);
            if t % 100 == 0 {
                d.flush();
            }
        }
        drop(d);
        let on_disk: u64 = (0..=files)
            .filter_map(|i| std::fs::metadata(file_path(&dir.path().join("deadletter"), 1, i)).ok())
            .map(|m| m.len())
            .sum();
        assert!(on_disk <= cap, "{on_disk} bytes over a cap of {cap}");
        assert!(!file_path(&dir.path().join("deadletter"), 1, files).exists());
        let c = &m.cores[1].deadletter;
        assert_eq!(c.bytes.get() as u64, on_disk);
        assert_eq!(c.written_total.get(), total);
        assert!(c.rotated_total.get() > 0);
        let recs = records(dir.path(), 1, files);
        assert_eq!(represented(&recs), total - c.rotated_total.get());
        // The newest records are the ones kept.
        assert_eq!(recs.last().unwrap()["time_ms"], total - 1);
    }

    #[test]
    fn a_failed_write_is_counted_and_leaves_no_torn_record() {
        // /dev/full takes the place of the file: every write fails with ENOSPC.
        let Ok(full) = OpenOptions::new().append(true).open("/dev/full") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let mut d = DeadLetter::open(dir.path(), 2, &Bounds::default(), m.clone()).unwrap();
        d.file = Some(full);
        d.reject(1, "g", Reject::BadNumber, b"x");
        d.reject(2, "g", Reject::BadNumber, b"y");
        d.flush();
        let c = &m.cores[2].deadletter;
        assert_eq!((c.error_total.get(), c.written_total.get()), (2, 0));
        assert_eq!(c.bytes.get(), 0);
        // And the next write goes to a working file again once one is opened.
        d.file = None;
        d.reject(3, "g", Reject::BadNumber, b"z");
        d.flush();
        assert_eq!(c.written_total.get(), 1);
        assert_eq!(records(dir.path(), 2, 1).len(), 1);
    }

    #[test]
    fn a_smaller_files_setting_removes_the_extra_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let dl = dir.path().join("deadletter");
        std::fs::create_dir_all(&dl).unwrap();
        for i in 0..6 {
            std::fs::write(file_path(&dl, 0, i), b"{}\n").unwrap();
        }
        let d = DeadLetter::open(dir.path(), 0, &config(1 << 20, 3, 1), metrics()).unwrap();
        drop(d);
        let left: Vec<bool> = (0..6).map(|i| file_path(&dl, 0, i).exists()).collect();
        assert_eq!(left, vec![true, true, true, false, false, false]);
    }
}
