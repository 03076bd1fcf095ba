use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::*;
use crate::fault::{self, Fault, Op};

fn options(segment_bytes: u64, retention_bytes: u64) -> Options {
    Options {
        segment_bytes,
        retention_bytes,
        retention_hours: 0,
    }
}

fn row(i: u64) -> Vec<u8> {
    format!(
        "{{\"row\":{i},\"pad\":\"{}\"}}\n",
        "x".repeat((i % 50) as usize)
    )
    .into_bytes()
}

struct Record {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cursors: Arc<Cursors>,
    committed: Arc<AtomicU64>,
}

fn record() -> Record {
    let tmp = tempfile::tempdir().unwrap();
    let dir = record_dir(tmp.path(), Kind::Aggregates, 0);
    Record {
        _tmp: tmp,
        dir,
        cursors: Arc::default(),
        committed: Arc::new(AtomicU64::new(0)),
    }
}

impl Record {
    fn writer(&self, position: u64, options: Options) -> RecordWriter {
        RecordWriter::open(
            &self.dir,
            position,
            options,
            self.cursors.clone(),
            self.committed.clone(),
        )
        .unwrap()
    }

    /// Every row from `from`, with its position.
    fn read(&self, from: u64) -> Vec<(u64, Vec<u8>)> {
        let mut reader = RecordReader::open(&self.dir, from, None);
        let mut out = Vec::new();
        while let Some((at, line)) = reader.next_line().unwrap() {
            out.push((at, line.to_vec()));
        }
        out
    }

    fn bytes_on_disk(&self) -> u64 {
        list_segments(&self.dir)
            .unwrap()
            .iter()
            .map(|s| std::fs::metadata(&s.path).unwrap().len())
            .sum()
    }
}

/// Writes rows `from..to`, flushing every `every`; returns (position, row) of each.
fn write(w: &mut RecordWriter, from: u64, to: u64, every: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for i in from..to {
        let r = row(i);
        out.push((w.position(), r[..r.len() - 1].to_vec()));
        w.append(&r);
        if i % every == every - 1 {
            w.flush().unwrap();
        }
    }
    w.flush().unwrap();
    out
}

#[test]
fn rows_keep_their_positions_across_segments() {
    let r = record();
    let mut w = r.writer(0, options(4096, 0));
    let written = write(&mut w, 0, 2_000, 7);
    assert!(list_segments(&r.dir).unwrap().len() > 10);
    for s in list_segments(&r.dir).unwrap() {
        let text = std::fs::read(&s.path).unwrap();
        assert!(text.ends_with(b"\n"), "segments end at a row boundary");
    }
    assert_eq!(r.read(0), written);
    // From any row's position, the reader starts at that row.
    for (at, _) in written.iter().step_by(97) {
        let from: Vec<_> = written.iter().filter(|(p, _)| p >= at).cloned().collect();
        assert_eq!(r.read(*at), from);
    }
    assert_eq!(w.position(), r.bytes_on_disk());
}

#[test]
fn a_reader_follows_the_record_as_it_grows() {
    let r = record();
    let mut w = r.writer(0, options(4096, 0));
    let mut reader = RecordReader::open(&r.dir, 0, None);
    assert!(reader.next_line().unwrap().is_none());
    let mut got = Vec::new();
    let mut written = Vec::new();
    for round in 0..20 {
        written.extend(write(&mut w, round * 50, round * 50 + 50, 10));
        while let Some((at, line)) = reader.next_line().unwrap() {
            got.push((at, line.to_vec()));
        }
        assert_eq!(got, written);
    }
}

#[test]
fn opening_at_a_checkpoint_cuts_what_followed_and_appends_from_there() {
    let r = record();
    let mut w = r.writer(0, options(4096, 0));
    let written = write(&mut w, 0, 1_000, 5);
    drop(w);
    let (cut_at, _) = written[400];
    let mut w = r.writer(cut_at, options(4096, 0));
    assert_eq!(w.position(), cut_at);
    let more = write(&mut w, 5_000, 5_100, 5);
    let mut expected = written[..400].to_vec();
    expected.extend(more);
    assert_eq!(r.read(0), expected);
    assert!(
        list_segments(&r.dir)
            .unwrap()
            .iter()
            .all(|s| s.base <= w.position())
    );
}

#[test]
fn a_record_shorter_than_its_checkpoint_is_an_error() {
    let r = record();
    let mut w = r.writer(0, options(1 << 20, 0));
    write(&mut w, 0, 10, 1);
    let end = w.position();
    drop(w);
    let err = RecordWriter::open(
        &r.dir,
        end + 10,
        options(1 << 20, 0),
        r.cursors.clone(),
        r.committed.clone(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("shorter"), "{err}");
}

#[test]
fn retention_bounds_the_record_but_never_passes_the_checkpoint_or_a_lagging_reader() {
    let r = record();
    let (segment, bound) = (4096, 20_000);
    let mut w = r.writer(0, options(segment, bound));
    // Nothing committed yet: nothing may go.
    let written = write(&mut w, 0, 3_000, 3);
    assert_eq!(r.read(0), written);
    // The checkpoint moves on: the record shrinks to its bound (plus the segment being
    // written, and a segment's worth of slack since segments end past their size).
    r.committed
        .store(w.position(), std::sync::atomic::Ordering::Release);
    let mut reader = RecordReader::open(&r.dir, w.position(), Some(&r.cursors));
    let mut all = write(&mut w, 3_000, 4_500, 3);
    assert!(
        r.bytes_on_disk() > 2 * bound,
        "the lagging reader holds segments"
    );
    // The reader catches up; then retention catches up too.
    let mut got = Vec::new();
    while let Some((at, line)) = reader.next_line().unwrap() {
        got.push((at, line.to_vec()));
    }
    assert_eq!(got, all);
    assert_eq!(reader.skipped(), 0);
    r.committed
        .store(u64::MAX, std::sync::atomic::Ordering::Release);
    all.extend(write(&mut w, 9_000, 9_500, 3));
    assert!(
        r.bytes_on_disk() <= bound + 3 * segment,
        "{} bytes kept",
        r.bytes_on_disk()
    );
    // What is kept is a suffix of what was written, positions unchanged.
    let kept = r.read(0);
    assert!(all.ends_with(&kept), "a suffix");
    // A reader that lagged without a cursor skips what retention deleted, and says so.
    let mut late = RecordReader::open(&r.dir, 0, None);
    let first = late.next_line().unwrap().map(|(at, _)| at);
    assert_eq!(first, kept.first().map(|(at, _)| *at));
    assert_eq!(late.skipped(), kept[0].0);
}

#[test]
fn a_reader_holds_retention_back_only_up_to_a_bound() {
    let r = record();
    let (segment, bound) = (4096, 20_000);
    let mut w = r.writer(0, options(segment, bound));
    r.committed
        .store(u64::MAX, std::sync::atomic::Ordering::Release);
    let mut reader = RecordReader::open(&r.dir, 0, Some(&r.cursors));
    let all = write(&mut w, 0, 20_000, 3);
    let written: u64 = all.iter().map(|(_, l)| l.len() as u64 + 1).sum();
    assert!(written > 20 * bound, "{written}");
    let held = crate::limits::RESULTS_READER_HOLD_FACTOR * bound;
    assert!(
        r.bytes_on_disk() <= held + 3 * segment,
        "a reader that never reads holds at most {held} bytes: {} kept",
        r.bytes_on_disk()
    );
    assert!(r.bytes_on_disk() > 2 * bound, "but it does hold some");
    // It then reads a suffix of what was written, and counts what it missed.
    let mut got = Vec::new();
    while let Some((at, line)) = reader.next_line().unwrap() {
        got.push((at, line.to_vec()));
    }
    assert!(all.ends_with(&got), "a suffix");
    assert_eq!(reader.skipped(), got[0].0);
    assert!(reader.skipped() > 0);
}

#[test]
fn a_failed_roll_leaves_nothing_behind_and_loses_no_row() {
    let r = record();
    let mut w = r.writer(0, options(4096, 0));
    let mut written = write(&mut w, 0, 200, 200);
    fault::clear();
    fault::arm(Fault {
        op: Op::Roll,
        after: 0,
        times: 3,
        errno: 28,
    });
    let segments = list_segments(&r.dir).unwrap().len();
    for i in 200..260 {
        let r = row(i);
        written.push((w.position(), r[..r.len() - 1].to_vec()));
        w.append(&r);
    }
    for _ in 0..3 {
        assert!(w.flush().is_err());
        assert_eq!(list_segments(&r.dir).unwrap().len(), segments);
    }
    fault::clear();
    w.flush().unwrap();
    assert_eq!(r.read(0), written);
}

#[test]
fn a_failed_sync_leaves_the_sealed_segments_for_the_next() {
    let r = record();
    let mut w = r.writer(0, options(4096, 0));
    write(&mut w, 0, 500, 5);
    let (sync, written) = w.sync_handle();
    written.unwrap();
    fault::clear();
    fault::arm(Fault {
        op: Op::Sync,
        after: 0,
        times: 1,
        errno: 5,
    });
    assert!(sync.sync().is_err());
    fault::clear();
    assert!(w.unsynced_files() > 0);
    let (sync, _) = w.sync_handle();
    sync.sync().unwrap();
    assert_eq!(w.unsynced_files(), 0);
}

#[test]
fn a_record_of_the_one_file_layout_becomes_the_first_segment() {
    let r = record();
    std::fs::create_dir_all(r.dir.parent().unwrap()).unwrap();
    let legacy = r.dir.with_file_name("s000.jsonl");
    std::fs::write(&legacy, b"{\"a\":1}\n{\"a\":2}\n").unwrap();
    let mut w = r.writer(8, options(4096, 0));
    assert!(!legacy.exists());
    w.append(b"{\"a\":3}\n");
    w.flush().unwrap();
    let rows: Vec<_> = r
        .read(0)
        .into_iter()
        .map(|(at, l)| (at, String::from_utf8(l).unwrap()))
        .collect();
    assert_eq!(
        rows,
        [(0, "{\"a\":1}".to_string()), (8, "{\"a\":3}".to_string())]
    );
}

#[test]
fn a_hook_record_keeps_rows_through_failed_write_outs_and_writes_each_once() {
    let r = record();
    let mut h = HookRecord::new(r.writer(0, options(4096, 0)), "test rows");
    h.append(b"{\"a\":1}\n");
    h.write_out();
    fault::clear();
    fault::arm(Fault {
        op: Op::Write,
        after: 0,
        times: 3,
        errno: 28,
    });
    h.append(b"{\"a\":2}\n");
    h.write_out();
    h.write_out();
    assert_eq!(h.position(), 16, "staged rows count in the position");
    let (sync, written, position) = h.sync_handle();
    fault::clear();
    assert!(written.is_err(), "the write-out at the barrier failed too");
    assert!(
        sync.sync().is_err(),
        "a checkpoint cannot vouch for the staged rows"
    );
    assert_eq!(position, 16);
    h.write_out();
    let rows: Vec<Vec<u8>> = r.read(0).into_iter().map(|(_, row)| row).collect();
    assert_eq!(rows, [b"{\"a\":1}".to_vec(), b"{\"a\":2}".to_vec()]);
    let (sync, written, _) = h.sync_handle();
    written.unwrap();
    sync.sync().unwrap();
}
