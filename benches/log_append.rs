//! Log append throughput: ~100-byte lines in 64 KiB batches through the `Appender` with
//! `flush = interval`, `never` and `always`, beside a baseline that `write()`s the same
//! bytes (the lines, newline-terminated) to a plain file in 64 KiB writes. Throughput is in
//! events (lines) per second; bytes per second = events per second x `LINE_BYTES`.
//!
//! Each partition or file is reset (outside the timed region, the opening of a partition
//! and its first segment included) once it holds `RESET_BYTES`, three segments: rolls
//! inside that span are timed, as they are part of appending, and so is the background
//! writeback of the sealed segments, but a roll never waits for the disk, because fewer
//! than `SEALS_IN_FLIGHT_MAX` sealed segments wait at once (`always` still syncs every
//! batch). These figures are what a core pays per batch while the disk keeps up. `appender_interval_sustained` resets only after `SUSTAINED_RESET_BYTES`, so
//! rolls wait for the disk once four sealed segments wait for it: when the input outpaces
//! the disk for longer than that, appending runs at the disk's write bandwidth (the
//! appender's backpressure), which that figure shows.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::FlushPolicy;
use sluice::log::{Appender, BatchInfo, Options};

/// Bytes of a line, newline excluded.
const LINE_BYTES: usize = 100;
/// Bytes of one batch of lines (about).
const BATCH_BYTES: usize = 64 * 1024;
/// Lines per batch: a 64 KiB batch of length-prefixed lines.
const BATCH_LINES: usize = BATCH_BYTES / (LINE_BYTES + 4);
/// A partition or file is started afresh after this many bytes.
const RESET_BYTES: u64 = 3 * SEGMENT_BYTES;
/// A partition is started afresh after this many bytes in the sustained variant.
const SUSTAINED_RESET_BYTES: u64 = 12 * SEGMENT_BYTES;
/// Segment size (the default).
const SEGMENT_BYTES: u64 = sluice::limits::SEGMENT_BYTES_DEFAULT;

fn lines() -> Vec<Vec<u8>> {
    (0..BATCH_LINES)
        .map(|i| {
            let head = format!(
                "host-{:03} app[{i:05}]: GET /api/v1/items?id={i} 200 ",
                i % 97
            );
            let mut line = head.into_bytes();
            line.resize(LINE_BYTES, b'x');
            line
        })
        .collect()
}

fn options(flush: FlushPolicy) -> Options {
    Options {
        segment_bytes: SEGMENT_BYTES,
        flush,
        flush_interval_ms: sluice::limits::FLUSH_INTERVAL_MS_DEFAULT,
        retention_bytes: 0,
        retention_hours: 0,
    }
}

/// A partition being appended to across the samples of one benchmark, started afresh
/// (outside the timed region) every `reset_bytes`, so each sample measures the steady
/// state rather than the opening of a partition.
struct Partition {
    dir: PathBuf,
    flush: FlushPolicy,
    reset_bytes: u64,
    appender: Option<Appender>,
    bytes: u64,
}

impl Partition {
    fn new(root: &Path, name: &str, flush: FlushPolicy, reset_bytes: u64) -> Partition {
        Partition {
            dir: root.join(name),
            flush,
            reset_bytes,
            appender: None,
            bytes: 0,
        }
    }

    /// The appender, reopened on an empty directory when due.
    fn appender(&mut self) -> &mut Appender {
        if self.bytes >= self.reset_bytes {
            self.close();
        }
        let (dir, flush) = (&self.dir, self.flush);
        self.appender
            .get_or_insert_with(|| Appender::open(dir, options(flush)).unwrap().0)
    }

    /// Times `iters` batches of `lines`.
    fn append(&mut self, lines: &[Vec<u8>], iters: u64) -> Duration {
        let mut out: Vec<BatchInfo> = Vec::with_capacity(4);
        let mut elapsed = Duration::ZERO;
        for _ in 0..iters {
            let appender = self.appender();
            let started = Instant::now();
            let mut writer = appender.begin(0, 1_700_000_000_000);
            for line in lines {
                writer.push(line).unwrap();
            }
            writer.finish(&mut out).unwrap();
            elapsed += started.elapsed();
            out.clear();
            self.bytes += BATCH_BYTES as u64;
        }
        elapsed
    }

    fn close(&mut self) {
        // Dropping the appender makes its sealed segments durable: untimed.
        self.appender = None;
        let _ = std::fs::remove_dir_all(&self.dir);
        settle(&self.dir);
        self.bytes = 0;
    }
}

/// Commits the deletion of `path` to the file system's journal before timing goes on: on
/// a file system mounted with `discard`, freeing a few hundred MiB trims them at the next
/// commit, which would otherwise stall whichever timed sample meets it.
fn settle(path: &Path) {
    let parent = path.parent().expect("a file in a directory");
    File::open(parent).unwrap().sync_all().unwrap();
}

/// A plain file written with `write()` across the samples, started afresh every
/// `RESET_BYTES` (as a partition is).
struct PlainFile {
    path: PathBuf,
    file: Option<File>,
    bytes: u64,
}

impl PlainFile {
    /// Times `iters` 64 KiB `write()`s of `batch`.
    fn write(&mut self, batch: &[u8], iters: u64) -> Duration {
        let mut elapsed = Duration::ZERO;
        for _ in 0..iters {
            if self.bytes >= RESET_BYTES {
                self.close();
            }
            let path = &self.path;
            let file = self.file.get_or_insert_with(|| File::create(path).unwrap());
            let started = Instant::now();
            file.write_all(batch).unwrap();
            elapsed += started.elapsed();
            self.bytes += batch.len() as u64;
        }
        elapsed
    }

    /// Deletes the file (untimed; its bytes are never written back).
    fn close(&mut self) {
        if self.file.take().is_some() {
            std::fs::remove_file(&self.path).unwrap();
            settle(&self.path);
        }
        self.bytes = 0;
    }
}

fn bench(c: &mut Criterion) {
    let root = tempfile::tempdir().unwrap();
    let lines = lines();
    let batch: Vec<u8> = lines
        .iter()
        .flat_map(|l| l.iter().copied().chain([b'\n']))
        .collect();
    let mut group = c.benchmark_group("log_append");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(BATCH_LINES as u64));
    let mut plain = PlainFile {
        path: root.path().join("baseline.log"),
        file: None,
        bytes: 0,
    };
    group.bench_function("baseline_write_64KiB", |b| {
        b.iter_custom(|iters| plain.write(&batch, iters));
    });
    plain.close();
    let variants = [
        ("appender_interval", FlushPolicy::Interval, RESET_BYTES),
        ("appender_never", FlushPolicy::Never, RESET_BYTES),
        (
            "appender_interval_sustained",
            FlushPolicy::Interval,
            SUSTAINED_RESET_BYTES,
        ),
        ("appender_always", FlushPolicy::Always, RESET_BYTES),
    ];
    for (name, flush, reset_bytes) in variants {
        let mut partition = Partition::new(root.path(), name, flush, reset_bytes);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| partition.append(&lines, iters));
        });
        partition.close();
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
