//! Window update throughput: events/s folded into one shard, for 10k and 1M live keys.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sluice::parse::Kind;
use sluice::window::{AggregatesWriter, Params, Shard, WindowSpec};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("window");
    group.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    for keys in [10_000usize, 1_000_000] {
        let names: Vec<Vec<u8>> = (0..keys)
            .map(|i| format!("servers.host{i:07}.cpu").into_bytes())
            .collect();
        const EVENTS: usize = 1_000_000;
        group.throughput(Throughput::Elements(EVENTS as u64));
        group.bench_function(format!("fold_{keys}_keys"), |b| {
            b.iter_batched(
                || {
                    let out = AggregatesWriter::open(&dir.path().join(format!("s{keys}.jsonl")), 0)
                        .unwrap();
                    let params = Params {
                        windows: vec![WindowSpec::tumbling(10_000), WindowSpec::tumbling(60_000)],
                        quantiles: vec![0.5, 0.9, 0.99, 0.999],
                        max_keys: 2_000_000,
                    };
                    let mut shard = Shard::new(&params, 1, i64::MIN, out);
                    for (i, k) in names.iter().enumerate() {
                        shard.fold(k, i as f64, 0, Kind::Sample);
                    }
                    shard
                },
                |mut shard| {
                    let mut x = 0x2545_f491_4f6c_dd1du64;
                    for i in 0..EVENTS {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let k = &names[(x % keys as u64) as usize];
                        shard.fold(k, i as f64, (i % 9_000) as i64, Kind::Sample);
                    }
                    shard
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
