//! Checkpoint cost, stage by stage: the core's snapshot (its stall), the body encoding and
//! the file write (temp + fsync + rename + directory fsync) on the coordinator, and the
//! decode + restore of recovery.
//!
//! Two parts, in one `cargo bench --bench checkpoint`:
//! - criterion, in bytes/s of checkpoint body: 10k live keys with 100 events each, their
//!   values spread over 0–1000 as loadgen sends them, so every sketch has its few hundred bins
//!   and, as in service, a few values still in its buffer;
//! - a table for a million keys (`CHECKPOINT_KEYS` to change it), where the stall matters:
//!   ms per stage and the size. A 1M-key shard takes seconds to build, so it is built once,
//!   not per criterion sample.

use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput};
use sluice::checkpoint::{BODY_VERSION, Body, ShardState, file};
use sluice::parse::Kind;
use sluice::window::{AggregatesWriter, Params, Shard, WindowSpec};

fn params(keys: usize) -> Params {
    Params {
        windows: vec![WindowSpec::tumbling(10_000), WindowSpec::tumbling(60_000)],
        quantiles: vec![0.5, 0.9, 0.99, 0.999],
        max_keys: keys + 1,
    }
}

/// A one-shard body holding `windows`.
fn body(windows: Vec<u8>, window_count: u64) -> Body {
    Body {
        version: BODY_VERSION,
        epoch: 1,
        created_ms: 0,
        cores: 1,
        window_sizes_ms: vec![10_000, 60_000],
        partitions: vec![],
        shards: vec![ShardState {
            shard: 0,
            aggregates_len: 0,
            closed_through_ms: i64::MIN,
            windows: vec![serde_bytes::ByteBuf::from(windows)],
            window_count,
            gauges: Vec::new(),
            alerts_len: 0,
            alerts: Vec::new(),
            experiments_len: 0,
            experiments: Vec::new(),
        }],
    }
}

/// Criterion, per stage, for a 10k-key shard.
fn stages(c: &mut Criterion) {
    const KEYS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let out = AggregatesWriter::open(&dir.path().join("s.jsonl"), 0).unwrap();
    let mut shard = Shard::new(&params(KEYS), 1, i64::MIN, out);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for e in 0..100 {
        for k in 0..KEYS {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("servers.host{k:07}.cpu");
            shard.fold(key.as_bytes(), (x % 1000) as f64, 1_000 + e, Kind::Sample);
        }
    }
    let mut windows = Vec::new();
    let window_count = shard.snapshot_into(&mut windows);
    let snapshot_bytes = windows.len() as u64;
    let encoded = body(windows.clone(), window_count).encode().unwrap();

    let mut group = c.benchmark_group("checkpoint_10k_keys");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(snapshot_bytes));
    group.bench_function("snapshot", |b| {
        let mut out = Vec::with_capacity(windows.len());
        b.iter(|| {
            out.clear();
            shard.snapshot_into(&mut out)
        })
    });
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode", |b| {
        b.iter_batched(
            || body(windows.clone(), window_count),
            |body| body.encode().unwrap(),
            BatchSize::LargeInput,
        )
    });
    let ckpt_dir = dir.path().join("ckpt");
    group.bench_function("write_fsync", |b| {
        b.iter(|| file::write(&ckpt_dir, 1, &encoded).unwrap())
    });
    let restore_out = dir.path().join("r.jsonl");
    group.bench_function("decode_restore", |b| {
        b.iter_batched(
            || {
                let out = AggregatesWriter::open(&restore_out, 0).unwrap();
                Shard::new(&params(KEYS), 1, i64::MIN, out)
            },
            |mut restored| {
                let decoded = Body::decode(&encoded).unwrap();
                for w in decoded.shards[0].windows() {
                    restored.restore(w.unwrap()).unwrap();
                }
                assert_eq!(restored.open_windows() as u64, window_count);
                restored
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    stages(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let keys = std::env::var("CHECKPOINT_KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(1_000_000);
    table(keys);
}

/// The table for `keys` live keys.
fn table(keys: usize) {
    let dir = tempfile::tempdir().unwrap();
    let params = params(keys);
    println!(
        "{:<28} {:>10} {:>12} {:>10} {:>10} {:>12} {:>10}",
        "case", "windows", "snapshot ms", "encode ms", "write ms", "bytes", "load ms"
    );
    let mut steps = Vec::new();
    for events_per_key in [1usize, 10] {
        let out = AggregatesWriter::open(&dir.path().join(format!("s{events_per_key}.jsonl")), 0)
            .unwrap();
        let mut shard = Shard::new(&params, 1, i64::MIN, out);
        for e in 0..events_per_key {
            for k in 0..keys {
                let key = format!("servers.host{k:07}.cpu");
                shard.fold(
                    key.as_bytes(),
                    (k % 1000 + e) as f64,
                    1_000 + e as i64,
                    Kind::Sample,
                );
            }
        }
        let t = Instant::now();
        let mut windows = Vec::new();
        let window_count = shard.snapshot_into(&mut windows);
        let snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
        let n = window_count as usize;
        let body = body(windows, window_count);
        let t = Instant::now();
        let bytes = body.encode().unwrap();
        let encode_ms = t.elapsed().as_secs_f64() * 1e3;
        let ckpt_dir = dir.path().join(format!("ckpt{events_per_key}"));
        let t = Instant::now();
        file::write(&ckpt_dir, 1, &bytes).unwrap();
        let write_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let loaded = file::load_newest(&ckpt_dir).unwrap().unwrap();
        let decoded = Body::decode(&loaded.body).unwrap();
        let out = AggregatesWriter::open(&dir.path().join(format!("r{events_per_key}.jsonl")), 0)
            .unwrap();
        let mut restored = Shard::new(&params, 1, i64::MIN, out);
        for w in decoded.shards[0].windows() {
            restored.restore(w.unwrap()).unwrap();
        }
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(restored.open_windows(), n);
        println!(
            "{:<28} {n:>10} {snapshot_ms:>12.0} {encode_ms:>10.0} {write_ms:>10.0} {:>12} {load_ms:>10.0}",
            format!("{keys} keys x {events_per_key} events"),
            bytes.len()
        );
        steps.push((events_per_key, stepped(&mut shard, n)));
    }
    println!(
        "\nthe same snapshots taken in steps of {STEP_US} µs as a core takes them, a batch of \
         1,000 events on 1,000 keys folded between steps:"
    );
    println!(
        "{:<28} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "case",
        "begin µs",
        "steps",
        "step p50",
        "step p99",
        "step max",
        "steps ms",
        "batch (no)",
        "batch (in)",
        "first (in)"
    );
    for (events_per_key, s) in steps {
        let q = |p: f64| s.steps_us[((s.steps_us.len() - 1) as f64 * p) as usize];
        println!(
            "{:<28} {:>9.0} {:>8} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>10.0} {:>10.0}",
            format!("{keys} keys x {events_per_key} events"),
            s.begin_us,
            s.steps_us.len(),
            q(0.5),
            q(0.99),
            q(1.0),
            s.steps_us.iter().sum::<f64>() / 1e3,
            s.batch_us_outside,
            s.batch_us_during,
            s.batch_us_first,
        );
    }
}

/// A step's budget, as `limits::SNAPSHOT_STEP_BUDGET_US`.
const STEP_US: u64 = 200;

/// What a snapshot in steps cost.
struct Stepped {
    begin_us: f64,
    /// Every step's time, sorted.
    steps_us: Vec<f64>,
    /// Median time to fold a batch of 1,000 events with no snapshot being taken, and while
    /// one is (its first touch of each key encodes that key: copy-on-write).
    batch_us_outside: f64,
    batch_us_during: f64,
    /// The first batch folded while it is taken (every hot key still pending).
    batch_us_first: f64,
}

/// Takes a snapshot of `shard` (holding `windows` open windows) in steps, folding a batch
/// between steps, as a core does.
fn stepped(shard: &mut Shard, windows: usize) -> Stepped {
    use std::time::Duration;
    let hot: Vec<String> = (0..1_000)
        .map(|k| format!("servers.host{k:07}.cpu"))
        .collect();
    let mut t_ms = 1_000i64;
    let mut fold_batch = |shard: &mut Shard| {
        let t = Instant::now();
        let mut batch = shard.batch();
        for key in &hot {
            batch.fold(key.as_bytes(), 1.0, t_ms, Kind::Sample);
        }
        drop(batch);
        t_ms = (t_ms + 1).min(9_000);
        t.elapsed().as_secs_f64() * 1e6
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let outside = median((0..21).map(|_| fold_batch(shard)).collect());
    let t = Instant::now();
    shard.begin_snapshot();
    let begin_us = t.elapsed().as_secs_f64() * 1e6;
    let mut steps_us = Vec::new();
    let mut during = Vec::new();
    loop {
        if during.len() < 21 {
            during.push(fold_batch(shard));
        }
        let t = Instant::now();
        let done = shard.snapshot_step(t + Duration::from_micros(STEP_US));
        steps_us.push(t.elapsed().as_secs_f64() * 1e6);
        if done {
            break;
        }
    }
    let taken = shard.finish_snapshot().expect("begun");
    assert_eq!(taken.window_count as usize, windows);
    steps_us.sort_by(f64::total_cmp);
    Stepped {
        begin_us,
        steps_us,
        batch_us_outside: outside,
        batch_us_first: during[0],
        batch_us_during: median(during),
    }
}
