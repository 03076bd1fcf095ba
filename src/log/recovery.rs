//! Recovery: finds the valid prefix of a partition when an appender opens it, cuts (zeroes)
//! everything after it in the newest segment, and checks that the newest segment follows the
//! one before it.
//!
//! Sealed segments reach the disk in the background (`flusher.rs`), so after an OS crash
//! or power loss one of the last [`SEALS_IN_FLIGHT_MAX`] sealed segments may end short (a
//! torn tail) while segments created after it survive. None of those later segments held
//! durable data (the durable offset never passes the end of a segment not yet on disk), so
//! the log is cut at the first such gap: they are deleted, newest first, and the torn
//! segment becomes the newest again. A sealed segment whose index carries a seal entry at
//! the next segment's base was durable (the seal is written only after its segment reached
//! the disk), and so was everything before it: the walk stops there.

#![forbid(unsafe_code)]

use std::path::Path;

use super::index;
use super::reader::{ScanStep, SegmentScanner};
use super::record::{self, Defect, Step};
use super::segment::{self, Segment, SegmentFile};
use super::{Error, Offset, SEALS_IN_FLIGHT_MAX};

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
    let mut segments = segment::list_segments(dir)?;
    let removed_bytes = cut_after_gap(dir, &mut segments)?;
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
    let segment = Segment::open(&newest.path, newest.base, segment_bytes)?;
    let scan = scan(segment.bytes(), newest.base);
    let end_pos = scan.end_pos as usize;
    let cut_end = end_pos + nonzero_end(&segment.bytes()[end_pos..]);
    let tail_bytes = (cut_end - end_pos) as u64;
    let truncated_bytes = tail_bytes + removed_bytes;
    if tail_bytes > 0 {
        tracing::warn!(
            segment = %newest.path.display(),
            file_pos = scan.end_pos,
            offset = scan.next_offset.0,
            truncated_bytes = tail_bytes,
            reason = %scan.defect.as_ref().map_or("bytes after the end of data".into(), |d| d.to_string()),
            "log tail cut at the first invalid batch"
        );
        segment.zero(scan.end_pos, tail_bytes)?;
        segment.flush_range(scan.end_pos, tail_bytes)?;
    }
    Ok(Recovered {
        segment,
        write_pos: scan.end_pos,
        next_offset: scan.next_offset,
        truncated_bytes,
    })
}

/// Finds the first gap among the last `SEALS_IN_FLIGHT_MAX` sealed segments of `segments`
/// (a sealed segment whose valid batches end, cleanly or at a defect, before the next
/// segment's base, with no index seal to prove it was durable) and deletes every segment
/// after it; returns the bytes deleted. See the module doc.
fn cut_after_gap(dir: &Path, segments: &mut Vec<SegmentFile>) -> Result<u64, Error> {
    let mut cut_at = None;
    let sealed = segments.len().saturating_sub(1);
    for j in (sealed.saturating_sub(SEALS_IN_FLIGHT_MAX)..sealed).rev() {
        let (segment, next) = (&segments[j], &segments[j + 1]);
        // A seal (even one that disagrees with `next`: a discontinuity `check_follows`
        // reports) proves the segment and everything before it reached the disk.
        if index::load(dir, segment.base)?
            .index()
            .is_some_and(|i| i.seal.is_some())
        {
            break;
        }
        let mut scanner = SegmentScanner::open(&segment.path, segment.base)?;
        let end = loop {
            match scanner.step()? {
                ScanStep::Batch { .. } => {}
                ScanStep::End { .. } | ScanStep::Defect { .. } => break scanner.expected(),
            }
        };
        if end < next.base {
            tracing::warn!(
                segment = %segment.path.display(),
                end_offset = end.0,
                next_base = next.base.0,
                "sealed log segment ends short of the next one (torn by an OS crash before it \
                 was durable); the segments after it held nothing durable and are removed"
            );
            cut_at = Some(j + 1);
        }
    }
    let Some(cut_at) = cut_at else {
        return Ok(0);
    };
    let mut removed = 0;
    for s in segments.drain(cut_at..).rev() {
        removed += std::fs::metadata(&s.path).map_or(0, |m| m.len());
        segment::remove_if_exists(&s.path)?;
        segment::remove_if_exists(&segment::index_path(dir, s.base))?;
        tracing::warn!(segment = %s.path.display(), "log segment after a gap removed");
    }
    segment::sync_dir(dir)?;
    Ok(removed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::{BatchHeader, HEADER_BYTES};
    use crate::log::test_support::{Written, line, read_all, small_options, write_batches};
    use crate::log::{Appender, FlushPolicy, ProblemKind, partition_dir, verify};
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
    /// its index seal, while the newest segment survived. The log is cut at the tear.
    fn torn_sealed_segment_case(keep: impl Fn(u64) -> u64) {
        let data = tempfile::tempdir().unwrap();
        let dir = partition_dir(data.path(), 0);
        let dir = dir.as_path();
        let (written, layout) = write_a_few_segments(dir);
        let (torn, in_torn) = &layout[layout.len() - 2];
        let (newest, _) = layout.last().unwrap();
        let (last_pos, last) = *in_torn.last().unwrap();
        let kept = keep(last.batch_bytes());
        let before = std::fs::read(&torn.path).unwrap();
        let zeros = vec![0u8; (last.batch_bytes() - kept) as usize];
        write_at(&torn.path, last_pos + kept, &zeros);
        std::fs::remove_file(segment::index_path(dir, torn.base)).unwrap();
        let newest_bytes = std::fs::metadata(&newest.path).unwrap().len();
        let cut_tail = nonzero_end(&before[last_pos as usize..(last_pos + kept) as usize]);

        let expected: Vec<Written> = written
            .into_iter()
            .filter(|(i, _)| i.end_offset().0 <= last.first_offset)
            .collect();
        reopen_and_check(dir, &expected, newest_bytes + cut_tail as u64);
        assert!(
            !newest.path.exists(),
            "the segment after the gap is removed"
        );
        assert!(verify(data.path(), Some(0)).unwrap().is_clean());
    }

    #[test]
    fn a_sealed_segment_torn_by_an_os_crash_cuts_the_segments_after_it() {
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
        fn a_flipped_bit_ends_its_segment_at_that_batch(
            batches in batches_strategy(),
            which in any::<prop::sample::Index>(),
            bit in any::<prop::sample::Index>(),
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
            let (seg_index, pos, header) = all[which.index(all.len())];
            let segment = &layout[seg_index].0;
            let newest = seg_index + 1 == layout.len();
            let bit = bit.index(header.batch_bytes() as usize * 8) as u64;
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
            let kind = if newest { ProblemKind::TornTail } else { ProblemKind::Corrupt };
            prop_assert!(problems.iter().any(|p| p.kind == kind
                && p.segment == segment.path
                && p.file_pos == pos
                && p.offset == Offset(header.first_offset)), "{problems:?}");

            let next_segment_base = layout.get(seg_index + 1).map(|(s, _)| s.base);
            let lost = |o: Offset| {
                o >= Offset(header.first_offset) && next_segment_base.is_none_or(|b| o < b)
            };
            let expected: Vec<Written> =
                written.iter().filter(|(i, _)| !lost(i.first_offset)).cloned().collect();
            prop_assert_eq!(read_all(&dir, Offset(0)), expected.clone());
            if newest {
                reopen_and_check(&dir, &expected, {
                    let bytes = std::fs::read(&segment.path).unwrap();
                    nonzero_end(&bytes[pos as usize..]) as u64
                });
            } else {
                let (_, report) =
                    Appender::open(&dir, small_options(FlushPolicy::Never)).unwrap();
                prop_assert_eq!(report.truncated_bytes, 0);
                prop_assert_eq!(read_all(&dir, Offset(0)), expected);
            }
        }
    }
}
