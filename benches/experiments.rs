//! What an experiment costs a JSON listener: lines parsed, split into arm keys and folded
//! into one shard (windows 10s and 1m, quantiles on), with and without an `[[experiment]]`
//! on the listener. 100 keys and 100,000 users; event time advances 10 ms per 1,000 lines
//! and the watermark follows, so windows close and comparison rows are written as in
//! service. Runs alternate (the first pair discarded); the medians and their ratio are
//! printed.
//!
//! `cargo bench --bench experiments`

use std::sync::Arc;
use std::time::Instant;

use sluice::config::FormatOptions;
use sluice::experiments::config::{Experiment, ExperimentConfig};
use sluice::experiments::engine::Engine;
use sluice::experiments::split::Split;
use sluice::parse::{Format, Parser};
use sluice::window::{AggregatesWriter, Params, Shard, WindowSpec};

/// Lines per round; the watermark advances after each.
const ROUND: usize = 1_000;
/// Rounds per run: 30 s of event time.
const ROUNDS: usize = 3_000;

fn lines() -> Vec<Vec<String>> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut draw = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // One round's lines per 10 ms of event time (the lines have no time field: they take
    // the round's, as lines without one take their ingest time), 100 distinct rounds.
    (0..100)
        .map(|_| {
            (0..ROUND)
                .map(|_| {
                    let key = draw() % 100;
                    let user = draw() % 100_000;
                    let ms = draw() % 1000;
                    format!(r#"{{"name":"checkout.step{key}","ms":{ms},"user":"u{user}"}}"#)
                })
                .collect()
        })
        .collect()
}

struct Pipeline {
    parser: Parser,
    split: Option<Split>,
    shard: Shard,
}

fn pipeline(dir: &std::path::Path, with_experiment: bool) -> Pipeline {
    let specs = vec![WindowSpec::tumbling(10_000), WindowSpec::tumbling(60_000)];
    let quantiles = vec![0.5, 0.9, 0.99, 0.999];
    let params = Params {
        windows: specs.clone(),
        quantiles: quantiles.clone(),
        max_keys: 100_000,
    };
    let out = AggregatesWriter::open(&dir.join("aggregates"), 0).unwrap();
    let mut shard = Shard::new(&params, 1, i64::MIN, out);
    let mut options = FormatOptions {
        key: Some(vec!["name".into()]),
        value: Some("ms".into()),
        ..FormatOptions::default()
    };
    let mut split = None;
    if with_experiment {
        let c: ExperimentConfig = toml::from_str(
            "name = \"checkout\"\nlistener = \"events\"\nunit = \"user\"\narms = { control = 50, treatment = 50 }",
        )
        .unwrap();
        let e = Experiment::compile(&c, &[("events", Format::Json)]).unwrap();
        options.unit = Some("user".into());
        split = Some(Split::new(&e));
        let record = sluice::results::RecordWriter::open(
            &dir.join("experiments"),
            0,
            sluice::results::Options::default(),
            Arc::default(),
            Arc::default(),
        )
        .unwrap();
        let experiments: Arc<[Experiment]> = vec![e].into();
        shard.add_close_hook(Box::new(Engine::new(
            experiments,
            &specs,
            &quantiles,
            record,
        )));
    }
    Pipeline {
        parser: Parser::new(Format::Json, &options, "events"),
        split,
        shard,
    }
}

/// Parses, splits and folds one round at `time_ms`, then moves the watermark on.
fn round(p: &mut Pipeline, lines: &[String], time_ms: &mut i64) {
    let mut batch = p.shard.batch();
    let split = &mut p.split;
    for line in lines {
        let _ = p
            .parser
            .parse(line.as_bytes(), *time_ms, &mut |event| match split {
                Some(split) => {
                    let (key, unit) = split.tag(event.key, event.unit);
                    batch.fold_unit(key, event.value, event.time_ms, event.kind, unit);
                }
                None => {
                    batch.fold(event.key, event.value, event.time_ms, event.kind);
                }
            });
    }
    drop(batch);
    *time_ms += 10;
    p.shard.advance(0, *time_ms, false).unwrap();
}

fn main() {
    let rounds = lines();
    let dir = tempfile::tempdir().unwrap();
    let mut pipelines = [false, true].map(|with| {
        let d = dir.path().join(if with { "with" } else { "without" });
        std::fs::create_dir_all(&d).unwrap();
        pipeline(&d, with)
    });
    let mut times = [1_700_000_000_000i64; 2];
    let mut rates = [Vec::new(), Vec::new()];
    for run in 0..14 {
        for which in [run % 2, 1 - run % 2] {
            let t = Instant::now();
            for r in 0..ROUNDS {
                round(
                    &mut pipelines[which],
                    &rounds[r % rounds.len()],
                    &mut times[which],
                );
            }
            if run >= 2 {
                rates[which].push((ROUNDS * ROUND) as f64 / t.elapsed().as_secs_f64());
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let ratios: Vec<f64> = rates[1].iter().zip(&rates[0]).map(|(w, p)| w / p).collect();
    let written = sluice::results::record_end(&dir.path().join("with/experiments")).unwrap_or(0);
    println!(
        "json lines parsed and folded, 100 keys x 100,000 users: {:.3} M lines/s without an \
         experiment, {:.3} M lines/s with one (median of 12 interleaved runs of {} lines); \
         ratio {:.3} ({:+.1}%), {} bytes of comparisons written",
        median(&rates[0]) / 1e6,
        median(&rates[1]) / 1e6,
        ROUNDS * ROUND,
        median(&ratios),
        (median(&ratios) - 1.0) * 100.0,
        written
    );
}
