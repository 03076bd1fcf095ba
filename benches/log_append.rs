//! Log append throughput: ~100-byte lines in 64 KiB batches through the `Appender` with
//! `flush = interval`, `never` and `always`, beside a baseline that `write()`s the same bytes
//! (the lines, newline-terminated) to a plain file in 64 KiB writes. Throughput is in events (lines) per second; bytes
//! per second = events per second x `LINE_BYTES`.
//!
//! Each partition or file is reset (outside the timed region) once it holds
//! `RESET_BYTES`, so the benchmark's disk use stays bounded; rolls inside that span are
//! timed, as they are part of appending.

use std::fs::File;
use std::io::Write;
use std::path::Path;
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
const RESET_BYTES: u64 = 768 * 1024 * 1024;
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

/// Times `iters` batches appended through an appender with `flush`.
fn append(root: &Path, flush: FlushPolicy, lines: &[Vec<u8>], iters: u64) -> Duration {
    let dir = root.join(format!("p-{flush:?}"));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut appender, _) = Appender::open(&dir, options(flush)).unwrap();
    let mut out: Vec<BatchInfo> = Vec::with_capacity(4);
    let mut elapsed = Duration::ZERO;
    let mut bytes = 0u64;
    for _ in 0..iters {
        if bytes >= RESET_BYTES {
            drop(appender);
            std::fs::remove_dir_all(&dir).unwrap();
            appender = Appender::open(&dir, options(flush)).unwrap().0;
            bytes = 0;
        }
        let started = Instant::now();
        let mut writer = appender.begin(0, 1_700_000_000_000);
        for line in lines {
            writer.push(line).unwrap();
        }
        writer.finish(&mut out).unwrap();
        elapsed += started.elapsed();
        out.clear();
        bytes += BATCH_BYTES as u64;
    }
    drop(appender);
    let _ = std::fs::remove_dir_all(&dir);
    elapsed
}

/// Times `iters` 64 KiB `write()`s of the same lines to a plain file.
fn baseline(root: &Path, batch: &[u8], iters: u64) -> Duration {
    let path = root.join("baseline.log");
    let mut file = File::create(&path).unwrap();
    let mut elapsed = Duration::ZERO;
    let mut bytes = 0u64;
    for _ in 0..iters {
        if bytes >= RESET_BYTES {
            drop(file);
            std::fs::remove_file(&path).unwrap();
            file = File::create(&path).unwrap();
            bytes = 0;
        }
        let started = Instant::now();
        file.write_all(batch).unwrap();
        elapsed += started.elapsed();
        bytes += batch.len() as u64;
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    elapsed
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
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(BATCH_LINES as u64));
    group.bench_function("baseline_write_64KiB", |b| {
        b.iter_custom(|iters| baseline(root.path(), &batch, iters));
    });
    group.bench_function("appender_interval", |b| {
        b.iter_custom(|iters| append(root.path(), FlushPolicy::Interval, &lines, iters));
    });
    group.bench_function("appender_never", |b| {
        b.iter_custom(|iters| append(root.path(), FlushPolicy::Never, &lines, iters));
    });
    group.bench_function("appender_always", |b| {
        b.iter_custom(|iters| append(root.path(), FlushPolicy::Always, &lines, iters));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
