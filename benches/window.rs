//! Window update throughput: events/s folded into one shard, as the cores fold what the router
//! sends (windows 10s and 1m, quantiles on, values spread over 0–1000), with event time
//! advancing 10 ms per 1,000 events and the watermark following it, so windows close (and
//! are written) as they do in service: 10 s of event time per million events.
//!
//! Two parts, in one `cargo bench --bench window`:
//! - criterion, 10k live keys: an iteration is 10 s of event time (1M events, in rounds of
//!   1,000, and every window closing once), folded in batches, as the cores fold, and one by
//!   one, for a same-run ratio;
//! - 1M live keys (cache-bound), in batches: the median of 5 runs of 5M events, printed. A
//!   1M-key shard takes seconds to build, so it is built once, not per criterion sample;
//! - the cost of alert rules: 10k keys in batches, with and without a prefix rule over every
//!   key (`mean above 500`, `for = 3`: about half the keys breach in each window, so states
//!   come and go and alerts fire and resolve), runs interleaved, the median ratio printed.

use std::time::Instant;

use criterion::{Criterion, Throughput};
use sluice::parse::Kind;
use sluice::window::{AggregatesWriter, Params, Shard, WindowSpec};

/// Events per fold round; the watermark advances after each.
const ROUND: usize = 1_000;
/// Rounds per criterion iteration: 10 s of event time, so each closes every 10s window once.
const ROUNDS_PER_ITER: usize = 1_000;

/// The next xorshift draw.
fn draw(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A shard with one open window per name, writing its closed windows under `dir`.
fn shard(dir: &std::path::Path, names: &[Vec<u8>]) -> Shard {
    let params = Params {
        windows: vec![WindowSpec::tumbling(10_000), WindowSpec::tumbling(60_000)],
        quantiles: vec![0.5, 0.9, 0.99, 0.999],
        max_keys: 2_000_000,
    };
    let out = AggregatesWriter::open(&dir.join(format!("s{}.jsonl", names.len())), 0).unwrap();
    let mut shard = Shard::new(&params, 1, i64::MIN, out);
    for (i, k) in names.iter().enumerate() {
        shard.fold(k, i as f64, 0, Kind::Timer);
    }
    shard
}

fn names(keys: usize) -> Vec<Vec<u8>> {
    (0..keys)
        .map(|i| format!("servers.host{i:07}.cpu").into_bytes())
        .collect()
}

/// Folds one round of events at `time_ms`, then moves time and the watermark on.
fn round(shard: &mut Shard, names: &[Vec<u8>], x: &mut u64, time_ms: &mut i64, batched: bool) {
    if batched {
        let mut batch = shard.batch();
        for _ in 0..ROUND {
            let x = draw(x);
            let k = &names[(x % names.len() as u64) as usize];
            batch.fold(k, (x % 1000) as f64, *time_ms, Kind::Timer);
        }
    } else {
        for _ in 0..ROUND {
            let x = draw(x);
            let k = &names[(x % names.len() as u64) as usize];
            shard.fold(k, (x % 1000) as f64, *time_ms, Kind::Timer);
        }
    }
    *time_ms += 10;
    shard.advance(0, *time_ms - 1_000, false).unwrap();
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Criterion::default().configure_from_args();
    let names_10k = names(10_000);
    let mut group = c.benchmark_group("window_fold_10k_keys");
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(15));
    group.throughput(Throughput::Elements((ROUND * ROUNDS_PER_ITER) as u64));
    for (name, batched) in [("batched", true), ("one_by_one", false)] {
        let mut s = shard(dir.path(), &names_10k);
        let (mut x, mut time_ms) = (0x2545_f491_4f6c_dd1du64, 0i64);
        group.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..ROUNDS_PER_ITER {
                    round(&mut s, &names_10k, &mut x, &mut time_ms, batched);
                }
            })
        });
    }
    group.finish();
    c.final_summary();
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }

    alert_cost(dir.path(), &names_10k);

    const EVENTS: usize = 5_000_000;
    let names = names(1_000_000);
    let mut s = shard(dir.path(), &names);
    let (mut x, mut time_ms) = (0x2545_f491_4f6c_dd1du64, 0i64);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..EVENTS / ROUND {
            round(&mut s, &names, &mut x, &mut time_ms, true);
        }
        rates.push(EVENTS as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "window fold in batches, 1,000,000 live keys: {:.2} M events/s (median of 5; min {:.2}, max {:.2})",
        rates[2] / 1e6,
        rates[0] / 1e6,
        rates[4] / 1e6
    );

    // The query API's open-window questions on the same 1M-key shard, answered as a core
    // answers them: OPEN_SCAN_SLOTS_PER_TURN slots per step. A step is what one loop turn
    // spends on a query (the stall a query adds to ingest); the steps together are its
    // answer time. 100 queries in a row, as the acceptance's load does.
    use sluice::limits::OPEN_SCAN_SLOTS_PER_TURN;
    use sluice::query::{By, Filter, OpenRequest, OpenScan, Want};
    let mut steps_us = Vec::new();
    let mut answers_ms = Vec::new();
    for q in 0..100 {
        let (reply, replies) = crossbeam_channel::bounded(1);
        let by = [By::Count, By::Max, By::P99, By::Mean][q % 4];
        let mut scan = OpenScan::new(OpenRequest {
            filter: Filter::Prefix(String::new()),
            size_ms: Some(10_000),
            want: Want::Top { by, n: 10 },
            reply,
        });
        let started = Instant::now();
        loop {
            let t = Instant::now();
            let done = scan.step(&s, OPEN_SCAN_SLOTS_PER_TURN);
            steps_us.push(t.elapsed().as_secs_f64() * 1e6);
            if done {
                break;
            }
        }
        answers_ms.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(replies.try_recv().unwrap().rows.len(), 10);
    }
    steps_us.sort_by(f64::total_cmp);
    answers_ms.sort_by(f64::total_cmp);
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "open top-10 query, 1,000,000 live keys, {} slots per step: step p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs; answer p50 {:.0} ms, max {:.0} ms (100 queries)",
        OPEN_SCAN_SLOTS_PER_TURN,
        at(&steps_us, 0.5),
        at(&steps_us, 0.99),
        at(&steps_us, 1.0),
        at(&answers_ms, 0.5),
        at(&answers_ms, 1.0),
    );
}

/// A shard of `names` with a prefix rule over every key hooked in.
fn shard_with_rule(dir: &std::path::Path, names: &[Vec<u8>]) -> Shard {
    use sluice::alerts::{Engine, Rule, RuleConfig};
    use std::sync::Arc;
    let mut s = shard(dir, names);
    let config: RuleConfig = toml::from_str(
        "name = \"hot\"\nprefix = \"servers.\"\nvalue = \"mean\"\nabove = 500\nfor = 3\n\
         annotations = { summary = \"{{key}} at {{value}}\" }",
    )
    .unwrap();
    let specs = [WindowSpec::tumbling(10_000), WindowSpec::tumbling(60_000)];
    let rule = Rule::compile(&config, &specs, &[0.5, 0.9, 0.99, 0.999]).unwrap();
    let mut metrics = sluice::metrics::Metrics::new(1, Vec::new());
    metrics.alerts = sluice::metrics::AlertMetrics::new(vec!["hot".into()], Vec::new());
    let record = sluice::results::RecordWriter::open(
        &dir.join("alerts-bench"),
        0,
        sluice::results::Options::default(),
        Arc::default(),
        Arc::default(),
    )
    .unwrap();
    let rules: Arc<[Rule]> = vec![rule].into();
    s.add_close_hook(Box::new(Engine::new(rules, record, Arc::new(metrics))));
    s
}

/// Ingest with and without a prefix rule over 10,000 keys, interleaved: prints both rates and
/// the cost.
fn alert_cost(dir: &std::path::Path, names: &[Vec<u8>]) {
    const ROUNDS: usize = 3 * ROUNDS_PER_ITER;
    let plain_dir = dir.join("plain");
    let rule_dir = dir.join("rule");
    std::fs::create_dir_all(&plain_dir).unwrap();
    std::fs::create_dir_all(&rule_dir).unwrap();
    let mut shards = [shard(&plain_dir, names), shard_with_rule(&rule_dir, names)];
    let mut state = [(0x2545_f491_4f6c_dd1du64, 0i64); 2];
    let mut rates = [Vec::new(), Vec::new()];
    for run in 0..14 {
        for which in [run % 2, 1 - run % 2] {
            let (x, time_ms) = &mut state[which];
            let t = Instant::now();
            for _ in 0..ROUNDS {
                round(&mut shards[which], names, x, time_ms, true);
            }
            // The first pair warms up.
            if run >= 2 {
                rates[which].push((ROUNDS * ROUND) as f64 / t.elapsed().as_secs_f64());
            }
        }
    }
    let ratios: Vec<f64> = rates[1].iter().zip(&rates[0]).map(|(r, p)| r / p).collect();
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let written = sluice::results::record_end(&rule_dir.join("alerts-bench")).unwrap_or(0);
    println!(
        "window fold in batches, 10,000 live keys: {:.2} M events/s without rules, {:.2} M events/s \
         with a prefix rule over every key (median of 12 interleaved runs); ratio {:.3} ({:+.1}%), \
         {} bytes of transitions written",
        median(&rates[0]) / 1e6,
        median(&rates[1]) / 1e6,
        median(&ratios),
        (median(&ratios) - 1.0) * 100.0,
        written
    );
}
