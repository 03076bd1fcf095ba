//! Window update throughput: events/s folded into one shard in batches of 1,000, as the
//! cores fold what the router sends (windows 10s and 1m, quantiles on),
//! with 10k and 1M live keys, event time advancing 10 ms per 1,000 events and the watermark
//! following it, so windows close (and are written) as they do in service: 10 s of event
//! time per million events. Prints the median of 5 runs; not a criterion benchmark (a
//! 1M-key shard is built once, not per sample).

use std::time::Instant;

use sluice::parse::Kind;
use sluice::window::{AggregatesWriter, Params, Shard, WindowSpec};

const EVENTS: usize = 5_000_000;

/// The next xorshift draw.
fn draw(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for keys in [10_000usize, 1_000_000] {
        let names: Vec<Vec<u8>> = (0..keys)
            .map(|i| format!("servers.host{i:07}.cpu").into_bytes())
            .collect();
        let params = Params {
            windows: vec![WindowSpec::tumbling(10_000), WindowSpec::tumbling(60_000)],
            quantiles: vec![0.5, 0.9, 0.99, 0.999],
            max_keys: 2_000_000,
        };
        let out = AggregatesWriter::open(&dir.path().join(format!("s{keys}.jsonl")), 0).unwrap();
        let mut shard = Shard::new(&params, 1, i64::MIN, out);
        for (i, k) in names.iter().enumerate() {
            shard.fold(k, i as f64, 0, Kind::Timer);
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut time_ms = 0i64;
        // With 10k keys the two ways alternate, run by run, for a same-run ratio; the
        // 1M-key shard is slow enough to fold only the way the cores do.
        let modes: &[bool] = if keys <= 10_000 {
            &[true, false]
        } else {
            &[true]
        };
        let mut rates = vec![Vec::new(); 2];
        for _ in 0..5 {
            for &batched in modes {
                let t = Instant::now();
                for _ in 0..EVENTS / 1_000 {
                    if batched {
                        let mut batch = shard.batch();
                        for _ in 0..1_000 {
                            let x = draw(&mut x);
                            let k = &names[(x % keys as u64) as usize];
                            batch.fold(k, (x % 1000) as f64, time_ms, Kind::Timer);
                        }
                    } else {
                        for _ in 0..1_000 {
                            let x = draw(&mut x);
                            let k = &names[(x % keys as u64) as usize];
                            shard.fold(k, (x % 1000) as f64, time_ms, Kind::Timer);
                        }
                    }
                    time_ms += 10;
                    shard.advance(0, time_ms - 1_000, false).unwrap();
                }
                rates[usize::from(!batched)].push(EVENTS as f64 / t.elapsed().as_secs_f64());
            }
        }
        for (rates, how) in rates.iter_mut().zip(["in batches", "one by one"]) {
            if rates.is_empty() {
                continue;
            }
            rates.sort_by(f64::total_cmp);
            println!(
                "window fold {how}, {keys:>9} live keys: {:>6.2} M events/s (median of 5; min {:.2}, max {:.2})",
                rates[2] / 1e6,
                rates[0] / 1e6,
                rates[4] / 1e6
            );
        }
    }
}
