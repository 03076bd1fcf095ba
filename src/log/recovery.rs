//! Recovery: finds the valid prefix of a partition when an appender opens it, cuts (zeroes)
//! everything after it in the newest segment, and checks that the newest segment follows the
//! one before it.

#![forbid(unsafe_code)]

use std::path::Path;

use super::reader::{ScanStep, SegmentScanner};
use super::record::{self, Defect, Step};
use super::segment::{self, Segment, SegmentFile};
use super::{Error, Offset};

/// How far a scan of one segment got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// End of the last valid batch.
    pub(crate) end_pos: u64,
    /// Offset after the last valid batch (the base offset when there is none).
    pub(crate) next_offset: Offset,
    /// Valid batches.
    pub(crate) batches: u64,
    /// The invalid batch that ended the scan, `None` at a clean end.
    pub(crate) defect: Option<Defect>,
}

/// Walks the batches of a whole segment in memory from its start.
pub(crate) fn scan(segment: &[u8], base: Offset) -> Scan {
    let mut scan = Scan {
        end_pos: 0,
        next_offset: base,
        batches: 0,
        defect: None,
    };
    loop {
        match record::check_at(segment, scan.end_pos, scan.next_offset) {
            Step::Batch(header) => {
                scan.end_pos += header.batch_bytes();
                scan.next_offset = header.end_offset();
                scan.batches += 1;
            }
            Step::End => return scan,
            Step::Defect(defect) => {
                scan.defect = Some(defect);
                return scan;
            }
        }
    }
}

/// Position one past the last nonzero byte of `bytes`, 0 when all are zero.
pub(crate) fn nonzero_end(bytes: &[u8]) -> usize {
    const CHUNK_BYTES: usize = 4096;
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(CHUNK_BYTES);
        let chunk = &bytes[start..end];
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return start + i + 1;
        }
        end = start;
    }
    0
}

/// The state an appender resumes from.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The newest segment, mapped.
    pub(crate) segment: Segment,
    /// End of its valid batches.
    pub(crate) write_pos: u64,
    /// Offset after its last valid batch.
    pub(crate) next_offset: Offset,
    /// Bytes zeroed after the valid prefix.
    pub(crate) truncated_bytes: u64,
}

/// Recovers partition directory `dir` (which exists): the newest segment's valid prefix, its
/// tail zeroed. Creates the first segment of an empty partition.
pub(crate) fn recover(dir: &Path, segment_bytes: u64) -> Result<Recovered, Error> {
    let segments = segment::list_segments(dir)?;
    let Some(newest) = segments.last() else {
        let segment = Segment::create(dir, Offset(0), segment_bytes)?;
        return Ok(Recovered {
            segment,
            write_pos: 0,
            next_offset: Offset(0),
            truncated_bytes: 0,
        });
    };
    if let [.., previous, _] = segments.as_slice() {
        check_follows(previous, newest)?;
    }
    let mut segment = Segment::open(&newest.path, newest.base, segment_bytes)?;
    let scan = scan(segment.bytes(), newest.base);
    let end_pos = scan.end_pos as usize;
    let cut_end = end_pos + nonzero_end(&segment.bytes()[end_pos..]);
    let truncated_bytes = (cut_end - end_pos) as u64;
    if truncated_bytes > 0 {
        tracing::warn!(
            segment = %newest.path.display(),
            file_pos = scan.end_pos,
            offset = scan.next_offset.0,
            truncated_bytes,
            reason = %scan.defect.as_ref().map_or("bytes after the end of data".into(), |d| d.to_string()),
            "log tail cut at the first invalid batch"
        );
        segment.bytes_mut()[end_pos..cut_end].fill(0);
        segment.flush_range(scan.end_pos, truncated_bytes)?;
    }
    Ok(Recovered {
        segment,
        write_pos: scan.end_pos,
        next_offset: scan.next_offset,
        truncated_bytes,
    })
}

/// Checks that `newest` starts where `previous` (a sealed segment) ends. Corruption inside
/// `previous` is only warned about: its lost batches cannot be repaired, and what follows
/// them is still good.
fn check_follows(previous: &SegmentFile, newest: &SegmentFile) -> Result<(), Error> {
    let mut scanner = SegmentScanner::open(&previous.path, previous.base)?;
    loop {
        match scanner.step()? {
            ScanStep::Batch { .. } => {}
            ScanStep::End { .. } if scanner.expected() == newest.base => return Ok(()),
            ScanStep::End { .. } => {
                return Err(Error::Discontinuity {
                    segment: newest.path.clone(),
                    base_offset: newest.base,
                    expected: scanner.expected(),
                });
            }
            ScanStep::Defect { pos, defect } => {
                tracing::warn!(
                    segment = %previous.path.display(),
                    file_pos = pos,
                    offset = scanner.expected().0,
                    reason = %defect,
                    "corrupt record batch in a sealed segment; the rest of it is skipped"
                );
                return Ok(());
            }
        }
    }
}
