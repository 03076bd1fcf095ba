//! Recovery: finds the valid batches of the newest segment when an appender opens a
//! partition, cuts (zeroes) what follows the last of them, and positions the appender so
//! that no offset is ever given out twice.
//!
//! The rules (see "Guarantees" in the design):
//! - A CRC-valid batch is never discarded. A bad batch (or a run of bad bytes) in the
//!   newest segment with valid batches after it is cut out alone: the scan resyncs on the
//!   next batch whose magic, header, CRC and framing hold and whose first offset keeps
//!   offsets rising. Only what follows the last valid batch is zeroed (a torn tail). When a
//!   stretch was cut out, the segment is sealed as it is and a new one is started, so the
//!   segment being written never holds damage (readers resync only inside sealed
//!   segments, whose contents are final).
//! - The next offset is never below `floor` (the offset the newest checkpoint names for
//!   this partition). Lines the checkpoint counted that are no longer in the log (a cut
//!   tail, a deleted segment) are reported loudly, and the appender starts a new segment at
//!   `floor`, so replay after the next crash still counts every new line.
//! - Sealed segments are never cut. A sealed segment that ends short of the next one (torn
//!   by an OS crash before it was durable, or damaged later) leaves a gap of offsets that
//!   readers step over and report; everything after it is kept.
//! - Junk in a batch's alignment padding does not invalidate it (the padding is outside
//!   the CRC and carries nothing).

#![forbid(unsafe_code)]

use std::ops::Range;
use std::path::Path;

use super::reader::{ScanStep, SegmentScanner};
use super::record::{self, BATCH_ALIGN_BYTES, Defect, Expect, HEADER_BYTES, Step};
use super::segment::{self, Segment, SegmentFile};
use super::{Error, Offset};

/// A damaged stretch of a segment that a scan stepped over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stretch {
    /// Where the bad bytes start.
    pub(crate) bad_pos: u64,
    /// Where the next valid batch starts.
    pub(crate) resync_pos: u64,
    /// Offsets of the lines lost with it (possibly empty).
    pub(crate) lost: Range<u64>,
    /// What was wrong at `bad_pos`.
    pub(crate) reason: String,
}

/// How far a scan of one segment got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// End of the last valid batch.
    pub(crate) end_pos: u64,
    /// Offset after the last valid batch (the base offset when there is none).
    pub(crate) next_offset: Offset,
    /// Valid batches.
    pub(crate) batches: u64,
    /// Damaged stretches with valid batches after them, in file order.
    pub(crate) stretches: Vec<Stretch>,
    /// The invalid batch after the last valid one, `None` when the data ends cleanly (or
    /// only bytes that are not a batch follow).
    pub(crate) defect: Option<Defect>,
}

/// Walks the batches of a whole segment in memory from its start, resyncing past damaged
/// stretches that valid batches follow.
pub(crate) fn scan(segment: &[u8], base: Offset) -> Scan {
    let mut scan = Scan {
        end_pos: 0,
        next_offset: base,
        batches: 0,
        stretches: Vec::new(),
        defect: None,
    };
    let mut pos = 0;
    loop {
        let reason = match record::check_at(segment, pos, scan.next_offset) {
            Step::Batch(header) => {
                pos += header.batch_bytes();
                scan.end_pos = pos;
                scan.next_offset = header.end_offset();
                scan.batches += 1;
                continue;
            }
            Step::End => None,
            Step::Defect(defect) => Some(defect),
        };
        let data_end = pos as usize + nonzero_end(&segment[pos as usize..]);
        if reason.is_none() && data_end == pos as usize {
            return scan;
        }
        match resync(segment, pos, data_end as u64, scan.next_offset) {
            Some((resync_pos, first_offset)) => {
                scan.stretches.push(Stretch {
                    bad_pos: pos,
                    resync_pos,
                    lost: scan.next_offset.0..first_offset.0,
                    reason: reason.map_or_else(
                        || "nonzero bytes after the end of data".into(),
                        |d| d.to_string(),
                    ),
                });
                scan.next_offset = first_offset;
                pos = resync_pos;
            }
            None => {
                scan.defect = reason;
                return scan;
            }
        }
    }
}

/// The first position after `bad_pos` and before `data_end`, at a batch alignment, that
/// holds a valid batch starting at `expected` or later; with that batch's first offset.
fn resync(segment: &[u8], bad_pos: u64, data_end: u64, expected: Offset) -> Option<(u64, Offset)> {
    let mut pos = bad_pos + BATCH_ALIGN_BYTES;
    while pos + HEADER_BYTES as u64 <= data_end {
        let at = pos as usize;
        if segment[at..at + 4] == record::MAGIC.to_le_bytes()
            && let Step::Batch(header) =
                record::check_at_with(segment, pos, Expect::AtLeast(expected))
        {
            return Some((pos, Offset(header.first_offset)));
        }
        pos += BATCH_ALIGN_BYTES;
    }
    None
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
    /// The segment to write, mapped.
    pub(crate) segment: Segment,
    /// End of its valid batches.
    pub(crate) write_pos: u64,
    /// Offset of the next line.
    pub(crate) next_offset: Offset,
    /// Bytes zeroed after the valid data.
    pub(crate) truncated_bytes: u64,
    /// Damaged stretches cut out of the newest segment, valid batches kept after them.
    pub(crate) bad_batches: u64,
    /// Offsets with no line in the log found here: in stretches cut out, and below `floor`
    /// when no segment is left before the new one (gaps between segments are the
    /// appender's to count, from the sealed segments' indexes).
    pub(crate) lost_lines: u64,
    /// Of those, offsets the checkpoint counted that are gone (`floor` minus the end of the
    /// data, when positive).
    pub(crate) lost_below_floor: u64,
}

/// Recovers partition directory `dir` (which exists) so that its next offset is at least
/// `floor`: the newest segment's valid batches kept, its tail zeroed (see the module doc).
/// Creates the first segment of an empty partition (at `floor`).
pub(crate) fn recover(dir: &Path, segment_bytes: u64, floor: Offset) -> Result<Recovered, Error> {
    let segments = segment::list_segments(dir)?;
    let Some(newest) = segments.last() else {
        let segment = Segment::create(dir, floor, segment_bytes)?;
        if floor > Offset(0) {
            tracing::error!(
                dir = %dir.display(),
                checkpoint_offset = floor.0,
                "log partition has no segments, but the checkpoint counted lines up to \
                 offset {floor}: those lines are gone; starting at that offset"
            );
        }
        segment::sync_dir(dir)?;
        return Ok(Recovered {
            segment,
            write_pos: 0,
            next_offset: floor,
            truncated_bytes: 0,
            bad_batches: 0,
            lost_lines: floor.0,
            lost_below_floor: floor.0,
        });
    };
    let mut lost_lines = 0;
    if let [.., previous, _] = segments.as_slice() {
        check_follows(previous, newest)?;
    }
    let segment = Segment::open(&newest.path, newest.base, segment_bytes)?;
    let scan = scan(segment.bytes(), newest.base);
    lost_lines += report_stretches(&newest.path, &scan.stretches);
    let truncated_bytes = cut_tail(&segment, &newest.path, &scan)?;
    let lost_below_floor = floor.0.saturating_sub(scan.next_offset.0);
    if lost_below_floor > 0 {
        tracing::error!(
            segment = %newest.path.display(),
            log_end = scan.next_offset.0,
            checkpoint_offset = floor.0,
            lost_lines = lost_below_floor,
            "the log ends below the offset the checkpoint counted up to: those lines are \
             gone; new lines start at the checkpoint's offset so that none reuses an offset"
        );
    }
    if scan.batches == 0 && segments.len() == 1 {
        // No segment is left before the new one to show the gap.
        lost_lines += lost_below_floor;
    }
    let next_offset = scan.next_offset.max(floor);
    let recovered = |segment, write_pos| Recovered {
        segment,
        write_pos,
        next_offset,
        truncated_bytes,
        bad_batches: scan.stretches.len() as u64,
        lost_lines,
        lost_below_floor,
    };
    if scan.stretches.is_empty() && next_offset == scan.next_offset {
        return Ok(recovered(segment, scan.end_pos));
    }
    // The segment being written must hold consecutive offsets and no damage: seal this one
    // as it is and start another.
    let next = seal_and_start(
        dir,
        newest,
        segment,
        scan.batches,
        next_offset,
        segment_bytes,
    )?;
    Ok(recovered(next, 0))
}

/// Zeroes what follows the last valid batch of the newest `segment`; returns the bytes cut.
fn cut_tail(segment: &Segment, path: &Path, scan: &Scan) -> Result<u64, Error> {
    let end_pos = scan.end_pos as usize;
    let cut_end = end_pos + nonzero_end(&segment.bytes()[end_pos..]);
    let truncated_bytes = (cut_end - end_pos) as u64;
    if truncated_bytes > 0 {
        tracing::warn!(
            segment = %path.display(),
            file_pos = scan.end_pos,
            offset = scan.next_offset.0,
            truncated_bytes,
            reason = %scan.defect.as_ref().map_or("bytes after the end of data".into(), |d| d.to_string()),
            "log tail cut after the last valid batch"
        );
        segment.zero(scan.end_pos, truncated_bytes)?;
        segment.flush_range(scan.end_pos, truncated_bytes)?;
    }
    Ok(truncated_bytes)
}

/// Seals the recovered newest segment as it is (durable first: a new segment claims its
/// predecessor is; removed instead when it holds no valid batch) and creates the next one
/// at `next_offset`.
fn seal_and_start(
    dir: &Path,
    newest: &SegmentFile,
    segment: Segment,
    batches: u64,
    next_offset: Offset,
    segment_bytes: u64,
) -> Result<Segment, Error> {
    if batches == 0 {
        // Nothing valid in it: nothing to keep either.
        drop(segment);
        segment::remove_if_exists(&newest.path)?;
        segment::remove_if_exists(&segment::index_path(dir, newest.base))?;
    } else {
        segment.flush_range(0, segment.len())?;
        segment.sync_handle().sync_file()?;
        drop(segment);
    }
    let next = Segment::create(dir, next_offset, segment_bytes)?;
    segment::sync_dir(dir)?;
    Ok(next)
}

/// Logs each stretch cut out of the newest segment; returns the lines they held.
fn report_stretches(path: &Path, stretches: &[Stretch]) -> u64 {
    for stretch in stretches {
        tracing::error!(
            segment = %path.display(),
            file_pos = stretch.bad_pos,
            resync_pos = stretch.resync_pos,
            lost_offsets = %format_args!("{}..{}", stretch.lost.start, stretch.lost.end),
            reason = %stretch.reason,
            "corrupt record batch in the newest log segment cut out; the valid batches after \
             it are kept"
        );
    }
    stretches.iter().map(|s| s.lost.end - s.lost.start).sum()
}

/// Checks that `newest` does not start before `previous` (a sealed segment) ends: an
/// overlap would give offsets out twice. Damage inside `previous` is only warned about
/// (readers resync past it); a gap is the appender's to report.
fn check_follows(previous: &SegmentFile, newest: &SegmentFile) -> Result<(), Error> {
    let mut scanner = SegmentScanner::open(&previous.path, previous.base)?;
    loop {
        match scanner.step()? {
            ScanStep::Batch { .. } => {}
            ScanStep::Defect { pos, defect } => {
                let resynced = scanner.resync()?;
                tracing::warn!(
                    segment = %previous.path.display(),
                    file_pos = pos,
                    offset = scanner.expected().0,
                    reason = %defect,
                    resynced = resynced.is_some(),
                    "corrupt record batch in a sealed segment; readers skip it"
                );
                if resynced.is_none() {
                    break;
                }
            }
            ScanStep::End { .. } => break,
        }
    }
    let end = scanner.expected();
    if end > newest.base {
        return Err(Error::Discontinuity {
            segment: newest.path.clone(),
            base_offset: newest.base,
            expected: end,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::{BatchHeader, HEADER_BYTES};
    use crate::log::test_support::{Written, line, read_all, small_options, write_batches};
    use crate::log::{Appender, FlushPolicy, ProblemKind, Reader, partition_dir, verify};
    use proptest::prelude::*;
    use std::path::PathBuf;

    /// Per segment, its file and the (position, header) of its batches.
    type Layout = Vec<(SegmentFile, Vec<(u64, BatchHeader)>)>;

    /// Where every batch lies: per segment, its path and (position, header) of its batches.
    fn layout(dir: &Path) -> Layout {
        segment::list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|s| {
                let bytes = std::fs::read(&s.path).unwrap();
                let mut batches = Vec::new();
                let (mut pos, mut expected) = (0, s.base);
                while let Step::Batch(h) = record::check_at(&bytes, pos, expected) {
                    batches.push((pos, h));
                    pos += h.batch_bytes();
                    expected = h.end_offset();
                }
                (s, batches)
            })
            .collect()
    }

    fn batches_strategy() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
        let line = prop_oneof![
            2 => proptest::collection::vec(any::<u8>(), 0..200),
            1 => (100_000usize..250_000).prop_map(|n| line(n, n)),
        ];
        // About 1.5 MiB on average: most cases roll a segment or two.
        proptest::collection::vec(proptest::collection::vec(line, 1..6), 1..16)
    }

    fn write(dir: &Path, batches: &[Vec<Vec<u8>>]) -> Vec<Written> {
        let (mut appender, _) = Appender::open(dir, small_options(FlushPolicy::Never)).unwrap();
        write_batches(&mut appender, batches)
    }

    fn write_at(path: &PathBuf, pos: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(bytes, pos).unwrap();
    }

    /// Reopens, checks what the appender and a reader see, appends one more batch and checks
    /// it lands right after `expected`.
    fn reopen_and_check(dir: &Path, expected: &[Written], truncated_bytes: u64) {
        let next = expected.last().map_or(Offset(0), |(i, _)| i.end_offset());
        let (mut appender, report) =
            Appender::open(dir, small_options(FlushPolicy::Never)).unwrap();
        assert_eq!(report.truncated_bytes, truncated_bytes);
        assert_eq!(report.next_offset, next);
        assert_eq!(read_all(dir, Offset(0)), expected);
        let more = write_batches(&mut appender, &[vec![b"after".to_vec()]]);
        assert_eq!(more[0].0.first_offset, next);
        let mut all = expected.to_vec();
        all.extend(more);
        assert_eq!(read_all(dir, Offset(0)), all);
    }

    #[test]
    fn an_empty_partition_gets_a_first_segment_at_offset_zero() {
        let dir = tempfile::tempdir().unwrap();
        let (appender, report) =
            Appender::open(&dir.path().join("p000"), small_options(FlushPolicy::Never)).unwrap();
        assert_eq!(report.next_offset, Offset(0));
        assert_eq!(appender.next_offset(), Offset(0));
        assert_eq!(layout(&dir.path().join("p000")).len(), 1);
    }

    /// Writes 40 batches of three ~60 KiB lines (about 7 MiB: several 1 MiB segments);
    /// returns what was written and where it lies.
    fn write_a_few_segments(dir: &Path) -> (Vec<Written>, Layout) {
        let batches: Vec<Vec<Vec<u8>>> = (0..40)
            .map(|b| (0..3).map(|l| line(b * 3 + l, 60_000 + l * 7)).collect())
            .collect();
        let written = write(dir, &batches);
        let layout = layout(dir);
        assert!(layout.len() >= 3, "{} segments", layout.len());
        (written, layout)
    }

    /// An OS crash while sealed segments were still on their way to the disk: the
    /// second-newest segment lost the end of its last batch (`keep` bytes of it survive) and
    /// its index seal, while the newest segment survived. Nothing is cut: the torn batch's
    /// lines are a reported gap, and every valid batch after it is kept.
    fn torn_sealed_segment_case(keep: impl Fn(u64) -> u64) {
        let data = tempfile::tempdir().unwrap();
        let dir = partition_dir(data.path(), 0);
        let dir = dir.as_path();
        let (written, layout) = write_a_few_segments(dir);
        let (torn, in_torn) = &layout[layout.len() - 2];
        let (newest, _) = layout.last().unwrap();
        let (last_pos, last) = *in_torn.last().unwrap();
        let kept = keep(last.batch_bytes());
        let zeros = vec![0u8; (last.batch_bytes() - kept) as usize];
        write_at(&torn.path, last_pos + kept, &zeros);
        std::fs::remove_file(segment::index_path(dir, torn.base)).unwrap();

        let lost = Offset(last.first_offset)..newest.base;
        let expected: Vec<Written> = written
            .iter()
            .filter(|(i, _)| !lost.contains(&i.first_offset))
            .cloned()
            .collect();
        let (_, report) = Appender::open(dir, small_options(FlushPolicy::Never)).unwrap();
        assert_eq!(report.lost_lines, lost.end.0 - lost.start.0);
        assert_eq!(report.bad_batches, 0);
        assert!(newest.path.exists(), "the segment after the gap is kept");
        reopen_and_check(dir, &expected, 0);
        let report = verify(data.path(), Some(0)).unwrap();
        assert!(report.has_corruption(), "{report:?}");
    }

    #[test]
    fn a_sealed_segment_torn_by_an_os_crash_leaves_a_gap_and_keeps_what_follows() {
        torn_sealed_segment_case(|_| 0);
        torn_sealed_segment_case(|bytes| bytes / 2);
    }

    #[test]
    fn a_sealed_segment_with_an_index_seal_is_never_cut() {
        let data = tempfile::tempdir().unwrap();
        let dir = partition_dir(data.path(), 0);
        let dir = dir.as_path();
        let (written, layout) = write_a_few_segments(dir);
        let (old, in_old) = &layout[layout.len() - 2];
        // Bit rot in the last batch of a segment the seal proves was durable: reported by
        // verify, skipped by readers, and nothing after it is cut.
        let (last_pos, last) = *in_old.last().unwrap();
        write_at(&old.path, last_pos + HEADER_BYTES as u64 + 10, b"X");
        let (_, report) = Appender::open(dir, small_options(FlushPolicy::Never)).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(report.next_offset, written.last().unwrap().0.end_offset());
        assert_eq!(layout.len(), segment::list_segments(dir).unwrap().len());
        let report = verify(data.path(), Some(0)).unwrap();
        let problems = &report.partitions[0].problems;
        assert!(
            problems.iter().any(|p| p.kind == ProblemKind::Corrupt
                && p.segment == old.path
                && p.offset == Offset(last.first_offset)),
            "{problems:?}"
        );
    }

    #[test]
    fn a_log_that_ends_below_the_checkpoint_never_gives_out_its_offsets_again() {
        let data = tempfile::tempdir().unwrap();
        let dir = partition_dir(data.path(), 0);
        let written = write(
            &dir,
            &[vec![b"a".to_vec(), b"b".to_vec()], vec![b"c".to_vec()]],
        );
        let options = small_options(FlushPolicy::Never);
        // The checkpoint counted up to offset 50 (lines since lost: a cut tail, say).
        let (mut appender, report) = Appender::open_from(&dir, options, Offset(50)).unwrap();
        assert_eq!(report.next_offset, Offset(50));
        assert_eq!((report.lost_below_floor, report.lost_lines), (47, 47));
        let more = write_batches(&mut appender, &[vec![b"new".to_vec()]]);
        assert_eq!(more[0].0.first_offset, Offset(50));
        drop(appender);
        let mut all = written.clone();
        all.extend(more);
        assert_eq!(read_all(&dir, Offset(0)), all);
        let mut reader = Reader::open(&dir, Offset(0)).unwrap();
        while reader.next_batch().unwrap().is_some() {}
        assert_eq!(reader.damage().lost_lines, 47);
        // A floor at or below the end changes nothing; the gap is still reported.
        let (appender, report) = Appender::open_from(&dir, options, Offset(51)).unwrap();
        assert_eq!(report.next_offset, Offset(51));
        assert_eq!((report.lost_below_floor, report.lost_lines), (0, 47));
        assert_eq!(appender.next_offset(), Offset(51));
        let report = verify(data.path(), Some(0)).unwrap();
        assert!(
            report.partitions[0]
                .problems
                .iter()
                .all(|p| p.kind == ProblemKind::Discontinuity),
            "{report:?}"
        );
    }

    #[test]
    fn an_emptied_partition_starts_at_the_checkpoint_offset() {
        let dir = tempfile::tempdir().unwrap();
        let options = small_options(FlushPolicy::Never);
        let (mut appender, report) =
            Appender::open_from(dir.path(), options, Offset(1_000)).unwrap();
        assert_eq!(
            (report.next_offset, report.lost_below_floor),
            (Offset(1_000), 1_000)
        );
        let more = write_batches(&mut appender, &[vec![b"x".to_vec()]]);
        assert_eq!(more[0].0.first_offset, Offset(1_000));
    }

    #[test]
    fn a_corrupt_middle_batch_of_the_newest_segment_is_cut_out_alone() {
        let data = tempfile::tempdir().unwrap();
        let dir = partition_dir(data.path(), 0);
        let batches: Vec<Vec<Vec<u8>>> = (0..10)
            .map(|b| vec![line(b, 100), line(b + 100, 50)])
            .collect();
        let written = write(&dir, &batches);
        let layout = layout(&dir);
        assert_eq!(layout.len(), 1);
        let (newest, in_newest) = &layout[0];
        let (pos, bad) = in_newest[4];
        write_at(&newest.path, pos + HEADER_BYTES as u64 + 7, b"\xff");
        let options = small_options(FlushPolicy::Never);
        let (mut appender, report) = Appender::open_from(&dir, options, Offset(20)).unwrap();
        assert_eq!((report.bad_batches, report.lost_lines), (1, 2));
        assert_eq!((report.truncated_bytes, report.lost_below_floor), (0, 0));
        assert_eq!(report.next_offset, Offset(20));
        let more = write_batches(&mut appender, &[vec![b"after".to_vec()]]);
        drop(appender);
        assert_eq!(more[0].0.first_offset, Offset(20));
        let mut expected: Vec<Written> = written
            .into_iter()
            .filter(|(i, _)| i.first_offset != Offset(bad.first_offset))
            .collect();
        expected.extend(more);
        assert_eq!(read_all(&dir, Offset(0)), expected);
        // The damaged segment is sealed as it is; writing goes on in a new one.
        assert_eq!(segment::list_segments(&dir).unwrap().len(), 2);
        let report = verify(data.path(), Some(0)).unwrap();
        let problems = &report.partitions[0].problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].kind, ProblemKind::Corrupt);
        assert_eq!(problems[0].file_pos, pos);
        // Restarts find the same damage and change nothing else.
        let (_, report) = Appender::open_from(&dir, options, Offset(21)).unwrap();
        assert_eq!(
            (report.next_offset, report.truncated_bytes),
            (Offset(21), 0)
        );
        assert_eq!(read_all(&dir, Offset(0)), expected);
    }

    #[test]
    fn nonzero_end_finds_the_last_nonzero_byte() {
        assert_eq!(nonzero_end(&[]), 0);
        assert_eq!(nonzero_end(&[0; 10_000]), 0);
        let mut bytes = vec![0u8; 10_000];
        bytes[4097] = 1;
        assert_eq!(nonzero_end(&bytes), 4098);
        bytes[0] = 1;
        assert_eq!(nonzero_end(&bytes), 4098);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn a_cut_newest_segment_keeps_exactly_its_intact_batches(
            batches in batches_strategy(),
            cut in any::<prop::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let written = write(dir.path(), &batches);
            let layout = layout(dir.path());
            let (newest, in_newest) = layout.last().unwrap();
            let data_end = in_newest.last().map_or(0, |(p, h)| p + h.batch_bytes());
            let cut = cut.index(data_end as usize + 1) as u64;
            let before = std::fs::read(&newest.path).unwrap();
            std::fs::OpenOptions::new().write(true).open(&newest.path).unwrap()
                .set_len(cut).unwrap();

            let intact = in_newest
                .iter()
                .rfind(|(p, h)| p + (HEADER_BYTES as u64) + u64::from(h.payload_bytes) <= cut);
            let intact_end = intact.map_or(0, |(p, h)| p + h.batch_bytes()) as usize;
            let next = intact.map_or(newest.base, |(_, h)| h.end_offset());
            let truncated = nonzero_end(&before[intact_end..(cut as usize).max(intact_end)]);
            let expected: Vec<Written> =
                written.into_iter().filter(|(i, _)| i.end_offset() <= next).collect();
            reopen_and_check(dir.path(), &expected, truncated as u64);
        }

        #[test]
        fn random_bytes_after_the_data_are_cut_and_nothing_else(
            batches in batches_strategy(),
            garbage in proptest::collection::vec(any::<u8>(), 1..3000),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let written = write(dir.path(), &batches);
            let layout = layout(dir.path());
            let (newest, in_newest) = layout.last().unwrap();
            let data_end = in_newest.last().map_or(0, |(p, h)| p + h.batch_bytes());
            let room = (crate::limits::SEGMENT_BYTES_MIN - data_end) as usize;
            let garbage = &garbage[..garbage.len().min(room)];
            write_at(&newest.path, data_end, garbage);
            reopen_and_check(dir.path(), &written, nonzero_end(garbage) as u64);
        }

        #[test]
        fn a_flipped_bit_loses_only_its_batch(
            batches in batches_strategy(),
            which in any::<prop::sample::Index>(),
            bit in any::<prop::sample::Index>(),
            padding_junk in 1u8..,
        ) {
            let data = tempfile::tempdir().unwrap();
            let dir = partition_dir(data.path(), 0);
            let written = write(&dir, &batches);
            let layout = layout(&dir);
            let all: Vec<(usize, u64, BatchHeader)> = layout
                .iter()
                .enumerate()
                .flat_map(|(s, (_, b))| b.iter().map(move |&(p, h)| (s, p, h)))
                .collect();
            // Junk in every batch's padding changes nothing.
            for &(s, p, h) in &all {
                let data_end = p + HEADER_BYTES as u64 + u64::from(h.payload_bytes);
                let padding = (p + h.batch_bytes() - data_end) as usize;
                write_at(&layout[s].0.path, data_end, &vec![padding_junk; padding]);
            }
            prop_assert_eq!(read_all(&dir, Offset(0)), written.clone());
            prop_assert!(verify(data.path(), Some(0)).unwrap().is_clean());

            let (seg_index, pos, header) = all[which.index(all.len())];
            let segment = &layout[seg_index].0;
            let newest = seg_index + 1 == layout.len();
            let last_in_segment = layout[seg_index].1.last().is_some_and(|&(p, _)| p == pos);
            let bits = (HEADER_BYTES as u64 + u64::from(header.payload_bytes)) * 8;
            let bit = bit.index(bits as usize) as u64;
            let byte_pos = pos + bit / 8;
            let mut byte = [0u8];
            {
                use std::os::unix::fs::FileExt;
                std::fs::File::open(&segment.path).unwrap().read_exact_at(&mut byte, byte_pos).unwrap();
            }
            byte[0] ^= 1 << (bit % 8);
            write_at(&segment.path, byte_pos, &byte);

            let report = verify(data.path(), Some(0)).unwrap();
            prop_assert!(!report.is_clean());
            let problems = &report.partitions[0].problems;
            let kind = if newest && last_in_segment {
                ProblemKind::TornTail
            } else {
                ProblemKind::Corrupt
            };
            prop_assert!(problems.iter().any(|p| p.kind == kind
                && p.segment == segment.path
                && p.file_pos == pos
                && p.offset == Offset(header.first_offset)), "{problems:?}");

            let lost = |o: Offset| o == Offset(header.first_offset);
            let expected: Vec<Written> =
                written.iter().filter(|(i, _)| !lost(i.first_offset)).cloned().collect();
            prop_assert_eq!(read_all(&dir, Offset(0)), expected.clone());
            if newest && last_in_segment {
                reopen_and_check(&dir, &expected, {
                    let bytes = std::fs::read(&segment.path).unwrap();
                    nonzero_end(&bytes[pos as usize..]) as u64
                });
            } else if newest {
                // Cut out alone: the valid batches after it are kept, in a sealed segment.
                let (_, report) =
                    Appender::open(&dir, small_options(FlushPolicy::Never)).unwrap();
                prop_assert_eq!(report.bad_batches, 1);
                prop_assert_eq!(report.lost_lines, u64::from(header.count));
                prop_assert_eq!(report.truncated_bytes, 0);
                reopen_and_check(&dir, &expected, 0);
            } else {
                let (_, report) =
                    Appender::open(&dir, small_options(FlushPolicy::Never)).unwrap();
                prop_assert_eq!(report.truncated_bytes, 0);
                prop_assert_eq!(read_all(&dir, Offset(0)), expected);
            }
        }
    }
}
