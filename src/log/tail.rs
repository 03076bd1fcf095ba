//! Following partitions as they grow: what `sluice log tail` prints.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::verify::{DumpStats, ListenerNames, write_batch};
use super::{Error, Offset, Reader, partition_dir, partitions};

/// How long [`tail`] sleeps when no partition has new data.
pub const TAIL_POLL_MS: u64 = 100;

/// Batches [`tail`] prints from one partition before it looks at the others (and at the stop
/// flag) again.
const TAIL_BATCHES_PER_ROUND_MAX: usize = 256;

/// A followed partition.
#[derive(Debug)]
struct Followed {
    reader: Reader,
    /// Lines before it are not printed (the first batch may start before it).
    from: Offset,
}

/// Prints the lines committed to `partition` (every partition when `None`, including those
/// created later) as [`dump`](super::dump) does, from offset `from` (when `None`, from the
/// end of the data: only new lines), polling every [`TAIL_POLL_MS`] ms, until `stop` is set.
/// The output is flushed after every round that printed something.
pub fn tail(
    data_dir: &Path,
    partition: Option<u16>,
    from: Option<Offset>,
    json: Option<&ListenerNames>,
    out: &mut impl Write,
    stop: &AtomicBool,
) -> Result<DumpStats, Error> {
    let existing = partitions(data_dir)?;
    if existing.is_empty() {
        return Err(Error::NoLog {
            data_dir: data_dir.to_path_buf(),
        });
    }
    if let Some(p) = partition
        && !existing.contains(&p)
    {
        return Err(Error::NoPartition {
            partition: p,
            data_dir: data_dir.to_path_buf(),
            existing,
        });
    }
    let mut followed: BTreeMap<u16, Followed> = BTreeMap::new();
    let mut stats = DumpStats::default();
    let mut first_round = true;
    while !stop.load(Ordering::Relaxed) {
        let wanted = match partition {
            Some(p) => vec![p],
            None => partitions(data_dir)?,
        };
        for p in wanted {
            if followed.contains_key(&p) {
                continue;
            }
            let dir = partition_dir(data_dir, p);
            // A partition that appears after the start holds only new lines.
            let reader = match (from, first_round) {
                (Some(from), _) => Reader::open(&dir, from)?,
                (None, true) => Reader::open_at_end(&dir)?,
                (None, false) => Reader::open(&dir, Offset(0))?,
            };
            let from = reader.position();
            followed.insert(p, Followed { reader, from });
        }
        first_round = false;
        let mut printed = false;
        for (&p, f) in &mut followed {
            for _ in 0..TAIL_BATCHES_PER_ROUND_MAX {
                let Some(batch) = f.reader.next_batch()? else {
                    break;
                };
                stats.batches += 1;
                stats.lines += write_batch(p, &batch, f.from, json, out)?;
                printed = true;
            }
        }
        if printed {
            out.flush().map_err(|source| Error::Output { source })?;
        } else {
            std::thread::sleep(Duration::from_millis(TAIL_POLL_MS));
        }
    }
    out.flush().map_err(|source| Error::Output { source })?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::test_support::small_options;
    use crate::log::{Appender, FlushPolicy};
    use std::sync::Arc;

    /// A writer the test can read while `tail` runs on another thread.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn append(appender: &mut Appender, lines: &[&str]) {
        let mut w = appender.begin(0, 0);
        for l in lines {
            w.push(l.as_bytes()).unwrap();
        }
        w.finish(&mut Vec::new()).unwrap();
    }

    fn wait_for_output(out: &Shared, expected: &[u8]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.0.lock().unwrap().as_slice() != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "tail printed {:?}",
                String::from_utf8_lossy(&out.0.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn tail_prints_only_new_lines_of_every_partition_until_stopped() {
        let data = tempfile::tempdir().unwrap();
        let options = small_options(FlushPolicy::Never);
        let (mut p0, _) = Appender::open(&partition_dir(data.path(), 0), options).unwrap();
        append(&mut p0, &["old"]);
        let stop = Arc::new(AtomicBool::new(false));
        let out = Shared::default();
        let handle = {
            let (dir, stop, mut out) = (data.path().to_path_buf(), stop.clone(), out.clone());
            std::thread::spawn(move || tail(&dir, None, None, None, &mut out, &stop).unwrap())
        };
        std::thread::sleep(Duration::from_millis(3 * TAIL_POLL_MS));
        append(&mut p0, &["new-1", "new-2"]);
        wait_for_output(&out, b"new-1\nnew-2\n");
        let (mut p1, _) = Appender::open(&partition_dir(data.path(), 1), options).unwrap();
        append(&mut p1, &["p1-a"]);
        wait_for_output(&out, b"new-1\nnew-2\np1-a\n");
        stop.store(true, Ordering::Relaxed);
        let stats = handle.join().unwrap();
        assert_eq!(stats.lines, 3);
    }

    #[test]
    fn tail_from_an_offset_starts_there() {
        let data = tempfile::tempdir().unwrap();
        let options = small_options(FlushPolicy::Never);
        let (mut p0, _) = Appender::open(&partition_dir(data.path(), 0), options).unwrap();
        append(&mut p0, &["a", "b", "c"]);
        let stop = AtomicBool::new(true);
        let mut out = Vec::new();
        // A stopped tail prints nothing; one round with `from` prints from there.
        tail(data.path(), Some(0), Some(Offset(1)), None, &mut out, &stop).unwrap();
        assert!(out.is_empty());
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Shared::default();
        let handle = {
            let (dir, stop, mut out) = (data.path().to_path_buf(), stop.clone(), shared.clone());
            std::thread::spawn(move || {
                tail(
                    &dir,
                    Some(0),
                    Some(Offset(1)),
                    Some(&ListenerNames::new()),
                    &mut out,
                    &stop,
                )
                .unwrap()
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while shared
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            < 2
        {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
        let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["offset"], 1);
        assert_eq!(rows[0]["line"], "b");
        assert_eq!(rows[1]["line"], "c");
    }
}
