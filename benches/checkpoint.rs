//! Checkpoint cost for many live keys: the core's snapshot (its stall), the body encoding and
//! the file write (temp + fsync + rename + directory fsync) on the coordinator, the size, and
//! the load + restore time of recovery. Prints a table; not a criterion benchmark.
//!
//! `cargo bench --bench checkpoint [-- KEYS]` (default 1,000,000 keys, windows 10s and 1m).

use std::time::Instant;

use sluice::checkpoint::{BODY_VERSION, Body, ShardState, file};
use sluice::parse::Kind;
use sluice::window::{AggregatesWriter, Params, Shard, WindowSpec};

fn main() {
    let keys: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let params = Params {
        windows: vec![WindowSpec::tumbling(10_000), WindowSpec::tumbling(60_000)],
        quantiles: vec![0.5, 0.9, 0.99, 0.999],
        max_keys: keys + 1,
    };
    println!(
        "{:<28} {:>10} {:>12} {:>10} {:>10} {:>12} {:>10}",
        "case", "windows", "snapshot ms", "encode ms", "write ms", "bytes", "load ms"
    );
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
        let body = Body {
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
                windows,
                window_count,
            }],
        };
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
    }
}
