//! Offline checks and dumps of the log: what `sluice log verify|dump|tail` print.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::reader::{ScanStep, SegmentScanner, gone};
use super::segment;
use super::{Batch, Error, Offset, Reader, partition_dir, partitions};

/// What kind of problem [`verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An invalid batch, or bytes after the end of data, in the newest segment: what a crash
    /// leaves behind. The appender cuts it when it opens the partition.
    TornTail,
    /// An invalid batch, or bytes after the end of data, in a sealed segment: lost data.
    Corrupt,
    /// A segment whose base offset does not follow the end of the segment before it.
    Discontinuity,
}

/// One problem found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The segment file.
    pub segment: PathBuf,
    /// Byte position in the segment.
    pub file_pos: u64,
    /// The offset expected there.
    pub offset: Offset,
    /// What is wrong.
    pub reason: String,
}

/// What [`verify`] found in one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    /// The partition.
    pub partition: u16,
    /// Segment files.
    pub segments: u64,
    /// Valid batches.
    pub batches: u64,
    /// Lines in valid batches.
    pub lines: u64,
    /// Bytes of valid batches (headers and padding included).
    pub bytes: u64,
    /// Offset after the last valid batch.
    pub next_offset: Offset,
    /// Problems, in file order.
    pub problems: Vec<Problem>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// One entry per partition checked, ascending.
    pub partitions: Vec<PartitionReport>,
}

impl VerifyReport {
    /// No problem at all.
    pub fn is_clean(&self) -> bool {
        self.partitions.iter().all(|p| p.problems.is_empty())
    }

    /// A problem other than a torn tail (which the next start repairs): lost data.
    pub fn has_corruption(&self) -> bool {
        self.partitions
            .iter()
            .flat_map(|p| &p.problems)
            .any(|p| p.kind != ProblemKind::TornTail)
    }
}

/// Checks every batch of every segment of `partition` (all partitions when `None`) under
/// `data_dir`. Problems are reported, not returned as errors; errors are I/O failures.
pub fn verify(data_dir: &Path, partition: Option<u16>) -> Result<VerifyReport, Error> {
    let mut report = VerifyReport::default();
    for p in selected(data_dir, partition)? {
        report.partitions.push(verify_partition(data_dir, p)?);
    }
    Ok(report)
}

/// The partitions a command reads: `partition`, or all. A data dir with no log, or a
/// partition that is not there, is an error (a tool must not report "ok" of nothing).
fn selected(data_dir: &Path, partition: Option<u16>) -> Result<Vec<u16>, Error> {
    let existing = partitions(data_dir)?;
    if existing.is_empty() {
        return Err(Error::NoLog {
            data_dir: data_dir.to_path_buf(),
        });
    }
    match partition {
        Some(p) if !partition_dir(data_dir, p).is_dir() => Err(Error::NoPartition {
            partition: p,
            data_dir: data_dir.to_path_buf(),
            existing,
        }),
        Some(p) => Ok(vec![p]),
        None => Ok(existing),
    }
}

fn verify_partition(data_dir: &Path, partition: u16) -> Result<PartitionReport, Error> {
    let segments = segment::list_segments(&partition_dir(data_dir, partition))?;
    verify_listed(partition, &segments)
}

/// Verifies the segments of `partition` listed in `segments`, oldest first.
fn verify_listed(
    partition: u16,
    segments: &[segment::SegmentFile],
) -> Result<PartitionReport, Error> {
    let mut report = PartitionReport {
        partition,
        segments: segments.len() as u64,
        ..PartitionReport::default()
    };
    // Whether a segment has been scanned yet: retention may delete the oldest segments of a
    // running appliance after they were listed, and those are skipped, not reported.
    let mut scanned = false;
    for (i, seg) in segments.iter().enumerate() {
        let sealed = i + 1 < segments.len();
        let mut scanner = match SegmentScanner::open_if_exists(&seg.path, seg.base)? {
            Some(scanner) => scanner,
            None if !scanned => {
                report.segments -= 1;
                continue;
            }
            None => return Err(gone(&seg.path)),
        };
        if scanned && seg.base != report.next_offset {
            report.problems.push(Problem {
                kind: ProblemKind::Discontinuity,
                segment: seg.path.clone(),
                file_pos: 0,
                offset: report.next_offset,
                reason: format!(
                    "segment starts at {} but the segment before it ends at {}",
                    seg.base, report.next_offset
                ),
            });
        }
        scanned = true;
        let tail_kind = if sealed {
            ProblemKind::Corrupt
        } else {
            ProblemKind::TornTail
        };
        for (kind, file_pos, offset, reason) in
            verify_segment(&mut scanner, &mut report, tail_kind)?
        {
            report.problems.push(Problem {
                kind,
                segment: seg.path.clone(),
                file_pos,
                offset,
                reason,
            });
        }
        report.next_offset = scanner.expected();
    }
    Ok(report)
}

/// Counts the valid batches of one segment into `report`, resyncing past damaged
/// stretches as readers do; returns every problem found, in file order: each damaged
/// stretch with valid batches after it (lost data), then what ends the data, if it is not
/// a clean end (`tail_kind`).
fn verify_segment(
    scanner: &mut SegmentScanner,
    report: &mut PartitionReport,
    tail_kind: ProblemKind,
) -> Result<Vec<(ProblemKind, u64, Offset, String)>, Error> {
    let mut problems = Vec::new();
    loop {
        let (pos, defect) = match scanner.step()? {
            ScanStep::Batch { header, .. } => {
                report.batches += 1;
                report.lines += u64::from(header.count);
                report.bytes += header.batch_bytes();
                continue;
            }
            ScanStep::Defect { pos, defect } => (pos, Some(defect)),
            ScanStep::End { pos } => (pos, None),
        };
        let expected = scanner.expected();
        if let Some(resynced) = scanner.resync()? {
            let what = defect.map_or_else(|| "zeros".to_string(), |d| d.to_string());
            let reason = format!(
                "{what}; {} bytes skipped to the next valid batch; offsets {}..{} lost",
                resynced.pos - resynced.bad_pos,
                resynced.lost.start,
                resynced.lost.end
            );
            problems.push((ProblemKind::Corrupt, pos, expected, reason));
            continue;
        }
        let reason = match defect {
            Some(defect) => Some(defect.to_string()),
            None => scanner
                .nonzero_end_after(pos)?
                .map(|end| format!("{} nonzero bytes after the end of data", end - pos)),
        };
        if let Some(reason) = reason {
            problems.push((tail_kind, pos, expected, reason));
        }
        return Ok(problems);
    }
}

/// What [`dump`] printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Batches read.
    pub batches: u64,
    /// Lines printed.
    pub lines: u64,
}

/// Listener names by the ids the log stores (`data_dir/listeners.json`).
pub type ListenerNames = std::collections::BTreeMap<u16, String>;

/// Prints every stored line of `partition` (all partitions when `None`, ascending) from
/// offset `from` on, one per line as it arrived; with `json` (the listeners' names), one JSON
/// object per line with its partition, offset, ingest time, listener id and name, and the
/// line (invalid UTF-8 replaced).
pub fn dump(
    data_dir: &Path,
    partition: Option<u16>,
    from: Offset,
    json: Option<&ListenerNames>,
    out: &mut impl Write,
) -> Result<DumpStats, Error> {
    let mut stats = DumpStats::default();
    for p in selected(data_dir, partition)? {
        let mut reader = Reader::open(&partition_dir(data_dir, p), from)?;
        while let Some(batch) = reader.next_batch()? {
            stats.batches += 1;
            stats.lines += write_batch(p, &batch, from, json, out)?;
        }
    }
    out.flush().map_err(|source| Error::Output { source })?;
    Ok(stats)
}

/// A line of `dump --json`.
#[derive(Serialize)]
struct JsonLine<'a> {
    partition: u16,
    offset: u64,
    ingest_time_ms: i64,
    listener_id: u16,
    /// The listener's name; `None` for an id no longer in `listeners.json`.
    listener: Option<&'a str>,
    line: &'a str,
}

/// Prints the lines of `batch` at or after `from` as [`dump`] does (`sluice log tail` uses it
/// too); returns how many it printed.
pub fn write_batch(
    partition: u16,
    batch: &Batch<'_>,
    from: Offset,
    json: Option<&ListenerNames>,
    out: &mut impl Write,
) -> Result<u64, Error> {
    let output_error = |source| Error::Output { source };
    let mut printed = 0;
    let offsets = (batch.info.first_offset.0..).map(Offset);
    for (offset, line) in offsets.zip(batch.lines.clone()) {
        if offset < from {
            continue;
        }
        if let Some(names) = json {
            let text = String::from_utf8_lossy(line);
            let record = JsonLine {
                partition,
                offset: offset.0,
                ingest_time_ms: batch.info.ingest_time_ms,
                listener_id: batch.info.listener_id,
                listener: names.get(&batch.info.listener_id).map(String::as_str),
                line: &text,
            };
            serde_json::to_writer(&mut *out, &record)
                // serde_json gives back the io::Error it met: a closed pipe stays BrokenPipe.
                .map_err(|e| output_error(std::io::Error::from(e)))?;
            out.write_all(b"\n").map_err(output_error)?;
        } else {
            out.write_all(line).map_err(output_error)?;
            out.write_all(b"\n").map_err(output_error)?;
        }
        printed += 1;
    }
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::test_support::{line, small_options, write_batches};
    use crate::log::{Appender, FlushPolicy};

    fn fill(
        data_dir: &Path,
        partition: u16,
        batches: &[Vec<Vec<u8>>],
    ) -> Vec<super::super::BatchInfo> {
        let dir = partition_dir(data_dir, partition);
        let (mut appender, _) = Appender::open(&dir, small_options(FlushPolicy::Never)).unwrap();
        write_batches(&mut appender, batches)
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn verify_counts_a_clean_log_per_partition() {
        let data = tempfile::tempdir().unwrap();
        let big: Vec<Vec<Vec<u8>>> = (0..60).map(|b| vec![line(b, 40_000), line(b, 3)]).collect();
        let infos = fill(data.path(), 1, &big);
        fill(data.path(), 0, &[vec![b"a".to_vec(), b"bc".to_vec()]]);
        let report = verify(data.path(), None).unwrap();
        assert!(report.is_clean() && !report.has_corruption());
        assert_eq!(report.partitions.len(), 2);
        let (p0, p1) = (&report.partitions[0], &report.partitions[1]);
        assert_eq!(
            (p0.partition, p0.segments, p0.batches, p0.lines),
            (0, 1, 1, 2)
        );
        assert_eq!(p0.bytes, 40 + 4 + 1 + 4 + 2 + 5);
        assert_eq!(p1.partition, 1);
        assert!(p1.segments >= 2);
        assert_eq!(p1.batches, infos.len() as u64);
        assert_eq!(p1.lines, 120);
        assert_eq!(p1.next_offset, Offset(120));
        assert_eq!(
            verify(data.path(), Some(1)).unwrap().partitions,
            vec![p1.clone()]
        );
        assert!(verify(data.path(), Some(7)).is_err());
    }

    #[test]
    fn verify_skips_the_oldest_segments_deleted_after_listing_but_not_a_hole() {
        let data = tempfile::tempdir().unwrap();
        let big: Vec<Vec<Vec<u8>>> = (0..60).map(|b| vec![line(b, 40_000), line(b, 3)]).collect();
        fill(data.path(), 0, &big);
        let dir = partition_dir(data.path(), 0);
        let listed = segment::list_segments(&dir).unwrap();
        assert!(listed.len() >= 3, "{} segments", listed.len());
        let whole = verify_listed(0, &listed).unwrap();
        // Retention deletes the oldest segment (and its index) between listing and reading.
        std::fs::remove_file(&listed[0].path).unwrap();
        let report = verify_listed(0, &listed).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.segments, whole.segments - 1);
        assert_eq!(report.next_offset, whole.next_offset);
        assert!(report.lines < whole.lines);
        // A hole after data that was read is not retention's doing.
        std::fs::remove_file(&listed[2].path).unwrap();
        assert!(verify_listed(0, &listed).is_err());
    }

    #[test]
    fn verify_reports_garbage_after_the_data_as_a_torn_tail() {
        let data = tempfile::tempdir().unwrap();
        fill(data.path(), 0, &[vec![b"hello".to_vec()]]);
        let path = segment::segment_path(&partition_dir(data.path(), 0), Offset(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[5000] = 9;
        std::fs::write(&path, &bytes).unwrap();
        let report = verify(data.path(), None).unwrap();
        let problems = &report.partitions[0].problems;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].kind, ProblemKind::TornTail);
        assert_eq!(problems[0].file_pos, 56);
        assert_eq!(problems[0].offset, Offset(1));
        assert!(!report.is_clean() && !report.has_corruption());
    }

    #[test]
    fn dump_prints_lines_as_they_arrived_by_partition_from_an_offset() {
        let data = tempfile::tempdir().unwrap();
        fill(
            data.path(),
            2,
            &[
                vec![b"two-a".to_vec()],
                vec![b"two-b".to_vec(), b"two-c".to_vec()],
            ],
        );
        fill(data.path(), 0, &[vec![b"zero \xff".to_vec(), b"".to_vec()]]);
        let mut out = Vec::new();
        let stats = dump(data.path(), None, Offset(0), None, &mut out).unwrap();
        assert_eq!(out, b"zero \xff\n\ntwo-a\ntwo-b\ntwo-c\n");
        assert_eq!(
            stats,
            DumpStats {
                batches: 3,
                lines: 5
            }
        );

        let mut out = Vec::new();
        dump(data.path(), Some(2), Offset(2), None, &mut out).unwrap();
        assert_eq!(out, b"two-c\n");

        let mut out = Vec::new();
        let names = ListenerNames::from([(1, "graphite-tcp".to_string())]);
        dump(data.path(), None, Offset(1), Some(&names), &mut out).unwrap();
        let rows: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["partition"], 0);
        assert_eq!(rows[0]["offset"], 1);
        assert_eq!(rows[0]["line"], "");
        assert_eq!(rows[1]["line"], "two-b");
        assert_eq!(rows[1]["listener_id"], 1);
        assert_eq!(rows[1]["listener"], "graphite-tcp");
        assert_eq!(rows[0]["listener"], serde_json::Value::Null);
        assert_eq!(rows[1]["ingest_time_ms"], 1001);
        assert_eq!(rows[2]["offset"], 2);
        let mut out = Vec::new();
        dump(data.path(), Some(0), Offset(0), Some(&names), &mut out).unwrap();
        let first: serde_json::Value =
            serde_json::from_slice(out.split(|&b| b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["line"], "zero \u{fffd}");
    }
}
