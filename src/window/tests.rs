use super::*;
use std::sync::{Arc, Mutex};

fn shard(dir: &Path, sizes: &[i64], max_keys: usize, sources: usize) -> Shard {
    let params = Params {
        windows: sizes.iter().map(|s| WindowSpec::tumbling(*s)).collect(),
        quantiles: vec![0.5, 0.99],
        max_keys,
    };
    let out = AggregatesWriter::open(&dir.join("s000.jsonl"), 0).unwrap();
    Shard::new(&params, sources, i64::MIN, out)
}

fn lines(dir: &Path) -> Vec<serde_json::Value> {
    record_text(&dir.join("s000.jsonl"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The rows of the record in `dir`, one per line.
fn record_text(dir: &Path) -> String {
    crate::results::read_record(dir).0
}

/// Bytes the record in `dir` holds.
fn record_len(dir: &Path) -> u64 {
    crate::results::read_record(dir).1
}

#[test]
fn window_start_floors_negative_times() {
    assert_eq!(window_start(0, 10), 0);
    assert_eq!(window_start(9, 10), 0);
    assert_eq!(window_start(10, 10), 10);
    assert_eq!(window_start(-1, 10), -10);
    assert_eq!(window_start(i64::MAX, 1000), i64::MAX - i64::MAX % 1000);
}

#[test]
fn windows_close_when_every_source_passes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000], 100, 2);
    for (v, t) in [(1.0, 100), (3.0, 900), (2.0, 1500)] {
        assert_eq!(s.fold(b"k", v, t, Kind::Sample), Folded::default());
    }
    assert_eq!(
        s.advance(0, 5000, false).unwrap(),
        2,
        "source 1 has no watermark: not held back"
    );
    assert_eq!(s.closed_through_ms(), 5000);
    s.output().flush().unwrap();
    let out = lines(dir.path());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["count"], 2);
    assert_eq!(out[0]["sum"], 4.0);
    assert_eq!(out[0]["min"], 1.0);
    assert_eq!(out[0]["max"], 3.0);
    assert_eq!(out[0]["last"], 3.0);
    assert_eq!(out[0]["window"], "1s");
    assert_eq!(out[1]["start_ms"], 1000);
    assert_eq!(s.keys(), 0, "a key with no open window is released");
}

#[test]
fn the_slowest_source_holds_the_frontier() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000], 100, 2);
    s.fold(b"k", 1.0, 100, Kind::Sample);
    s.advance(1, 400, false).unwrap();
    s.advance(0, 5000, false).unwrap();
    assert_eq!(s.closed_through_ms(), 400);
    assert_eq!(s.open_windows(), 1);
    s.advance(1, 1000, false).unwrap();
    assert_eq!(s.open_windows(), 0);
}

#[test]
fn held_sources_hold_the_frontier_until_they_speak() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000], 100, 3);
    s.hold_every_source();
    s.fold(b"k", 1.0, 100, Kind::Sample);
    assert_eq!(
        s.advance(0, 5000, false).unwrap(),
        0,
        "sources 1 and 2 hold it"
    );
    assert_eq!(s.advance(1, 3000, false).unwrap(), 0, "source 2 holds it");
    // Source 2 replayed nothing: it lets go, idle, and the slowest active source rules.
    assert_eq!(s.advance(2, i64::MIN, true).unwrap(), 1);
    assert_eq!(s.closed_through_ms(), 3000);
}

#[test]
fn an_idle_source_does_not_hold_the_frontier() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000], 100, 2);
    s.fold(b"k", 1.0, 100, Kind::Sample);
    s.advance(1, 50, false).unwrap();
    s.advance(0, 5000, false).unwrap();
    assert_eq!(s.closed_through_ms(), 50);
    s.advance(1, 60, true).unwrap();
    assert_eq!(s.closed_through_ms(), 5000, "idle source 1 is skipped");
    s.advance(0, 7000, true).unwrap();
    assert_eq!(
        s.closed_through_ms(),
        7000,
        "all idle: the most advanced leads"
    );
    s.advance(1, 100, false).unwrap();
    assert_eq!(s.closed_through_ms(), 7000, "the frontier never falls");
}

#[test]
fn late_events_are_not_folded() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000, 10_000], 100, 1);
    s.advance(0, 2000, false).unwrap();
    let f = s.fold(b"k", 1.0, 1500, Kind::Sample);
    assert_eq!(f.late, 1, "late for the 1s window, not for the 10s one");
    assert_eq!(s.open_windows(), 1);
    let f = s.fold(b"k", 1.0, 100, Kind::Sample);
    assert_eq!(f.late, 1);
    assert_eq!(s.open_windows(), 1);
}

#[test]
fn keys_beyond_the_bound_go_to_the_overflow_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000], 2, 1);
    assert!(!s.fold(b"a", 1.0, 0, Kind::Sample).overflow);
    assert!(!s.fold(b"b", 1.0, 0, Kind::Sample).overflow);
    assert!(s.fold(b"c", 1.0, 0, Kind::Sample).overflow);
    assert!(s.fold(b"d", 1.0, 0, Kind::Sample).overflow);
    assert_eq!(s.keys(), 3);
    s.advance(0, 1000, false).unwrap();
    s.output().flush().unwrap();
    let out = lines(dir.path());
    let overflow = out.iter().find(|l| l["key"] == OVERFLOW_KEY).unwrap();
    assert_eq!(overflow["count"], 2);
}

#[test]
fn snapshot_and_restore_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = shard(dir.path(), &[1000, 60_000], 100, 1);
    for i in 0..50 {
        a.fold(
            format!("k{}", i % 7).as_bytes(),
            i as f64,
            i * 37,
            Kind::Sample,
        );
    }
    let snap = a.snapshot();
    let dir2 = tempfile::tempdir().unwrap();
    let mut b = shard(dir2.path(), &[1000, 60_000], 100, 1);
    for r in &snap {
        b.restore(r.clone()).unwrap();
    }
    assert_eq!(b.snapshot(), snap);
    assert_eq!(b.open_windows(), a.open_windows());
}

#[test]
fn output_cut_back_to_checkpointed_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s000");
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join(format!("{:020}.jsonl", 0)), b"{\"a\":1}\n{\"torn").unwrap();
    let w = AggregatesWriter::open(&path, 8).unwrap();
    assert_eq!(w.len(), 8);
    assert_eq!(record_text(&path), "{\"a\":1}\n");
    assert!(AggregatesWriter::open(&path, 100).is_err());
}

#[test]
fn rfc3339_formats_whole_and_fractional_seconds() {
    assert_eq!(output::rfc3339(1_764_360_000_000), "2025-11-28T20:00:00Z");
    assert_eq!(output::rfc3339(1_500), "1970-01-01T00:00:01.500Z");
}

fn hopping(dir: &Path, size: i64, hop: i64) -> Shard {
    let params = Params {
        windows: vec![WindowSpec {
            size_ms: size,
            hop_ms: hop,
        }],
        quantiles: vec![],
        max_keys: 100,
    };
    Shard::new(
        &params,
        1,
        i64::MIN,
        AggregatesWriter::open(&dir.join("s000.jsonl"), 0).unwrap(),
    )
}

#[test]
fn hopping_windows_count_each_event_size_over_hop_times() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = hopping(dir.path(), 3000, 1000);
    s.fold(b"k", 1.0, 2500, Kind::Sample);
    assert_eq!(
        s.open_windows(),
        3,
        "windows starting at 0, 1000 and 2000 hold 2500"
    );
    s.advance(0, 10_000, false).unwrap();
    s.output().flush().unwrap();
    let out = lines(dir.path());
    let starts: Vec<i64> = out
        .iter()
        .map(|l| l["start_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(starts, vec![0, 1000, 2000]);
    assert!(
        out.iter()
            .all(|l| l["window"] == "3s" && l["hop"] == "1s" && l["count"] == 1)
    );
}

#[test]
fn window_starts_at_the_boundaries() {
    let tumbling = WindowSpec::tumbling(1000);
    assert_eq!(tumbling.starts(999).collect::<Vec<_>>(), vec![0]);
    assert_eq!(tumbling.starts(1000).collect::<Vec<_>>(), vec![1000]);
    assert_eq!(tumbling.starts(-1).collect::<Vec<_>>(), vec![-1000]);
    let hop = WindowSpec {
        size_ms: 60_000,
        hop_ms: 10_000,
    };
    assert_eq!(
        hop.starts(60_000).collect::<Vec<_>>(),
        vec![10_000, 20_000, 30_000, 40_000, 50_000, 60_000]
    );
    let huge = crate::parse::TIME_MS_MAX;
    assert!(hop.starts(huge).all(|s| s <= huge && huge < s + 60_000));
}

#[test]
fn quantiles_are_reported_within_the_sketch_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000], 100, 1);
    for v in 1..=1000 {
        s.fold(b"lat", v as f64, 10, Kind::Timer);
    }
    s.fold(b"hits", 1.0, 10, Kind::Counter);
    s.advance(0, 1000, false).unwrap();
    s.output().flush().unwrap();
    let out = lines(dir.path());
    let lat = out.iter().find(|l| l["key"] == "lat").unwrap();
    for (name, exact) in [("p50", 500.0), ("p99", 990.0)] {
        let v = lat[name].as_f64().unwrap();
        assert!(
            (v - exact).abs() / exact <= 0.02,
            "{name} = {v}, exact {exact}"
        );
    }
    let hits = out.iter().find(|l| l["key"] == "hits").unwrap();
    assert!(hits.get("p50").is_none(), "counters keep no sketch");
}

#[test]
fn quantile_names() {
    assert_eq!(quantile_name(0.5), "p50");
    assert_eq!(quantile_name(0.99), "p99");
    assert_eq!(quantile_name(0.999), "p99.9");
    assert_eq!(quantile_name(0.9999), "p99.99");
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every event lands in exactly the windows a naive oracle computes, each counted
        /// once, whatever the sizes, hops, times and watermark steps.
        #[test]
        fn windows_match_a_naive_oracle(
            hop in 1i64..50,
            mult in 1i64..5,
            events in proptest::collection::vec((0u8..4, -500i64..500, -100i32..100), 1..200),
            step in 1i64..300,
        ) {
            let size = hop * mult;
            let dir = tempfile::tempdir().unwrap();
            let mut s = hopping(dir.path(), size, hop);
            let mut oracle: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
            let mut wm = -1000i64;
            for (i, (k, t, v)) in events.iter().enumerate() {
                let key = format!("k{k}");
                let folded = s.fold(key.as_bytes(), f64::from(*v), *t, Kind::Sample);
                let mut late = 0;
                // Naive: every start that is a multiple of hop with start <= t < start + size.
                let mut start = (t - size + 1).div_euclid(hop) * hop;
                while start <= *t {
                    if start + size > *t && start <= *t {
                        if start + size <= s.closed_through_ms() {
                            late += 1;
                        } else {
                            let e = oracle.entry((key.clone(), start)).or_insert((0, 0.0));
                            e.0 += 1;
                            e.1 += f64::from(*v);
                        }
                    }
                    start += hop;
                }
                prop_assert_eq!(folded.late, late);
                if i % 7 == 6 {
                    wm += step;
                    s.advance(0, wm, false).unwrap();
                }
            }
            s.advance(0, 10_000, false).unwrap();
            s.output().flush().unwrap();
            let mut got: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
            for l in lines(dir.path()) {
                let k = (l["key"].as_str().unwrap().to_string(), l["start_ms"].as_i64().unwrap());
                prop_assert!(got.insert(k, (l["count"].as_u64().unwrap(), l["sum"].as_f64().unwrap())).is_none());
            }
            prop_assert_eq!(got, oracle);
        }
    }
}

#[test]
fn a_window_with_one_value_keeps_no_sketch_until_a_second_arrives() {
    let mut a = Agg::empty();
    a.add(4.0, 1, true);
    assert!(a.sketch.is_none());
    assert_eq!(a.quantile(0.99), Some(4.0));
    let mut b = Agg::empty();
    b.add(8.0, 2, true);
    a.absorb(b.clone());
    assert_eq!(a.count, 2);
    let s = a.sketch.as_ref().expect("two values make a sketch");
    assert_eq!(s.count(), 2);
    a.add(6.0, 3, true);
    assert_eq!(a.sketch.as_ref().unwrap().count(), 3);
    let median = a.quantile(0.5).unwrap();
    assert!((median - 6.0).abs() / 6.0 < 0.02, "{median}");
    let mut c = Agg::empty();
    c.add(1.0, 1, false);
    assert_eq!(c.quantile(0.5), None, "counters keep no quantiles");
}

mod watermark_props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The frontier never falls, never passes the slowest active source, and with every
        /// source idle follows the most advanced one.
        #[test]
        fn the_frontier_follows_the_slowest_active_source(
            steps in proptest::collection::vec((0usize..3, -1000i64..1000, any::<bool>()), 1..60),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut s = shard(dir.path(), &[10], 10, 3);
            let mut marks: [Option<(i64, bool)>; 3] = [None; 3];
            let mut frontier = i64::MIN;
            for (src, wm, idle) in steps {
                let ms = marks[src].map_or(wm, |(old, _)| old.max(wm));
                marks[src] = Some((ms, idle));
                s.advance(src, wm, idle).unwrap();
                let known = marks.iter().flatten();
                let active = known.clone().filter(|m| !m.1).map(|m| m.0).min();
                let combined = active.or_else(|| known.map(|m| m.0).max()).unwrap();
                frontier = frontier.max(combined);
                prop_assert_eq!(s.closed_through_ms(), frontier);
            }
        }

        /// Folding in batches, with the sketch adds put off to each batch's end, leaves the
        /// state folding one event at a time does: counts, lateness and sketches alike.
        #[test]
        fn batches_fold_as_single_events_do(
            events in proptest::collection::vec((0u8..20, 0i64..5000, -1e3f64..1e3, 0u8..5), 0..600),
            cuts in proptest::collection::vec(1usize..200, 1..8),
            watermarks in proptest::collection::vec(0i64..5000, 0..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut single = shard(dir.path(), &[1000, 3000], 100, 1);
            let dir2 = tempfile::tempdir().unwrap();
            let mut batched = shard(dir2.path(), &[1000, 3000], 100, 1);
            let kinds = [Kind::Timer, Kind::Counter, Kind::Sample, Kind::Set, Kind::GaugeDelta];
            let mut rest = &events[..];
            let mut i = 0;
            while !rest.is_empty() {
                let (now, later) = rest.split_at(cuts[i % cuts.len()].min(rest.len()));
                let mut batch = batched.batch();
                for (k, t, v, kind) in now {
                    let key = format!("key.{k}");
                    let kind = kinds[*kind as usize];
                    let a = single.fold(key.as_bytes(), *v, *t, kind);
                    let b = batch.fold(key.as_bytes(), *v, *t, kind);
                    prop_assert_eq!(a, b);
                }
                drop(batch);
                if let Some(wm) = watermarks.get(i) {
                    prop_assert_eq!(single.advance(0, *wm, false).unwrap(), batched.advance(0, *wm, false).unwrap());
                }
                prop_assert_eq!(single.snapshot(), batched.snapshot());
                rest = later;
                i += 1;
            }
        }

        /// A snapshot taken in steps, while events, closes and gauges keep changing the
        /// shard, holds exactly what a snapshot taken at once at its start holds, and
        /// leaves the live state as if no snapshot were being taken.
        #[test]
        fn a_stepped_snapshot_is_the_state_at_its_barrier(
            before in proptest::collection::vec((0u8..24, 0i64..6000, -1e3f64..1e3, 0u8..5), 0..120),
            after in proptest::collection::vec((0u8..40, 0i64..9000, -1e3f64..1e3, 0u8..5), 0..400),
            watermarks in proptest::collection::vec((0usize..400, 0i64..9000), 0..6),
            steps_every in 1usize..40,
        ) {
            let kinds = [Kind::Timer, Kind::Counter, Kind::Sample, Kind::Set, Kind::GaugeDelta];
            let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut at_once = shard(da.path(), &[1000, 3000], 16, 1);
            let mut stepped = shard(db.path(), &[1000, 3000], 16, 1);
            let fold = |s: &mut Shard, (k, t, v, kind): &(u8, i64, f64, u8)| {
                s.fold(format!("key.{k}").as_bytes(), *v, *t, kinds[*kind as usize]);
            };
            for e in &before {
                fold(&mut at_once, e);
                fold(&mut stepped, e);
            }
            // Close some windows first, so slots are freed and reused after the barrier.
            at_once.advance(0, 3000, false).unwrap();
            stepped.advance(0, 3000, false).unwrap();
            let open_at_barrier = at_once.open_windows();
            let want = at_once.snapshot();
            let mut want_gauges = at_once.gauges();
            want_gauges.sort_by(|a, b| a.0.cmp(&b.0));
            let frontier = at_once.closed_through_ms();

            stepped.begin_snapshot();
            let past = std::time::Instant::now();
            for (i, e) in after.iter().enumerate() {
                fold(&mut at_once, e);
                fold(&mut stepped, e);
                for (at, wm) in &watermarks {
                    if *at == i {
                        at_once.advance(0, *wm, false).unwrap();
                        stepped.advance(0, *wm, false).unwrap();
                    }
                }
                if i % steps_every == 0 {
                    // A deadline already past: one look at the clock's worth of slots.
                    stepped.snapshot_step(past);
                }
            }
            let taken = stepped.finish_snapshot().unwrap();
            prop_assert!(!stepped.snapshotting());
            let mut got: Vec<WindowRecord> = taken.windows.iter().flat_map(|c| decode_records(c))
                .collect::<Result<_, _>>()
                .unwrap();
            got.sort_by(|a, b| (&a.key, a.size_ms, a.start_ms).cmp(&(&b.key, b.size_ms, b.start_ms)));
            prop_assert_eq!(taken.window_count as usize, got.len());
            prop_assert_eq!(got.len(), open_at_barrier);
            prop_assert_eq!(got, want);
            let mut got_gauges = taken.gauges;
            got_gauges.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(got_gauges, want_gauges);
            prop_assert_eq!(taken.closed_through_ms, frontier);
            // The live state went on as if no snapshot were being taken.
            prop_assert_eq!(stepped.snapshot(), at_once.snapshot());
            prop_assert_eq!(stepped.closed_through_ms(), at_once.closed_through_ms());
            stepped.output().flush().unwrap();
            at_once.output().flush().unwrap();
            prop_assert_eq!(record_text(&db.path().join("s000.jsonl")), record_text(&da.path().join("s000.jsonl")));
        }

        /// Any state survives a snapshot and a restore unchanged.
        #[test]
        fn snapshots_round_trip(events in proptest::collection::vec((0u8..20, 0i64..5000, -1e6f64..1e6, any::<bool>()), 0..300)) {
            let dir = tempfile::tempdir().unwrap();
            let mut a = shard(dir.path(), &[1000, 3000], 100, 1);
            for (k, t, v, timer) in &events {
                let kind = if *timer { Kind::Timer } else { Kind::Counter };
                a.fold(format!("key.{k}").as_bytes(), *v, *t, kind);
            }
            let snap = a.snapshot();
            let dir2 = tempfile::tempdir().unwrap();
            let mut b = shard(dir2.path(), &[1000, 3000], 100, 1);
            for r in &snap {
                b.restore(r.clone()).unwrap();
            }
            prop_assert_eq!(b.snapshot(), snap);
        }
    }
}

mod composed {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn shard_of(dir: &Path, name: &str, windows: Vec<WindowSpec>) -> Shard {
        let params = Params {
            windows,
            quantiles: vec![0.5, 0.99],
            max_keys: 1000,
        };
        let out = AggregatesWriter::open(&dir.join(name), 0).unwrap();
        Shard::new(&params, 1, i64::MIN, out)
    }

    /// Every output line of `file`, by (key, window, hop, start), without the wall-clock
    /// fields.
    fn rows(dir: &Path, file: &str) -> BTreeMap<(String, String, String, i64), serde_json::Value> {
        let mut out = BTreeMap::new();
        for l in record_text(&dir.join(file)).lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let k = (
                v["key"].as_str().unwrap().to_string(),
                v["window"].as_str().unwrap().to_string(),
                v["hop"].as_str().unwrap_or("").to_string(),
                v["start_ms"].as_i64().unwrap(),
            );
            assert!(out.insert(k, v).is_none(), "a window written twice");
        }
        out
    }

    #[test]
    fn feeders_are_the_largest_dividing_tumbling_spec() {
        let w = |size, hop| WindowSpec {
            size_ms: size,
            hop_ms: hop,
        };
        let (feeder, fed) = feeders(&[w(60, 60), w(10, 10), w(30, 10), w(25, 25), w(120, 30)]);
        assert_eq!(feeder, vec![Some(1), None, Some(1), None, Some(1)]);
        assert_eq!(fed[1], vec![0, 2, 4]);
        let (feeder, _) = feeders(&[w(10, 10), w(20, 20), w(40, 40)]);
        assert_eq!(
            feeder,
            vec![None, Some(0), Some(0)],
            "fed by specs fed by none"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A shard with composed windows writes exactly what one shard per window spec
        /// (every event folded directly) writes, late events included, across a
        /// snapshot and restore in the middle.
        #[test]
        fn composed_windows_equal_direct_folding(
            events in proptest::collection::vec((0u8..3, 0i64..600, -50i32..50, 0u8..3), 1..250),
            step in 1i64..120,
            cut in any::<prop::sample::Index>(),
        ) {
            let specs = vec![
                WindowSpec::tumbling(20),
                WindowSpec::tumbling(60),
                WindowSpec { size_ms: 120, hop_ms: 40 },
                WindowSpec::tumbling(35),
            ];
            let dir = tempfile::tempdir().unwrap();
            let mut composed = shard_of(dir.path(), "c.jsonl", specs.clone());
            let mut direct: Vec<Shard> = specs
                .iter()
                .enumerate()
                .map(|(i, s)| shard_of(dir.path(), &format!("d{i}.jsonl"), vec![*s]))
                .collect();
            let cut = cut.index(events.len());
            let mut wm = 0i64;
            for (i, (k, t, v, kind)) in events.iter().enumerate() {
                if i == cut {
                    let mut bytes = Vec::new();
                    composed.snapshot_into(&mut bytes);
                    composed.output().flush().unwrap();
                    let len = record_len(&dir.path().join("c.jsonl"));
                    let out = AggregatesWriter::open(&dir.path().join("c.jsonl"), len).unwrap();
                    let params = Params { windows: specs.clone(), quantiles: vec![0.5, 0.99], max_keys: 1000 };
                    let mut restored = Shard::new(&params, 1, composed.closed_through_ms(), out);
                    for r in decode_records(&bytes) {
                        restored.restore(r.unwrap()).unwrap();
                    }
                    composed = restored;
                }
                let key = format!("k{k}");
                let kind = [Kind::Timer, Kind::Counter, Kind::Set][*kind as usize];
                let late = composed.fold(key.as_bytes(), f64::from(*v), *t, kind).late;
                let direct_late: u32 = direct
                    .iter_mut()
                    .map(|d| d.fold(key.as_bytes(), f64::from(*v), *t, kind).late)
                    .sum();
                prop_assert_eq!(late, direct_late);
                if i % 5 == 4 {
                    wm += step;
                    composed.advance(0, wm, false).unwrap();
                    for d in &mut direct {
                        d.advance(0, wm, false).unwrap();
                    }
                }
            }
            composed.advance(0, 100_000, false).unwrap();
            composed.output().flush().unwrap();
            let mut want = BTreeMap::new();
            for (i, d) in direct.iter_mut().enumerate() {
                d.advance(0, 100_000, false).unwrap();
                d.output().flush().unwrap();
                want.extend(rows(dir.path(), &format!("d{i}.jsonl")));
            }
            // A standard deviation composed from smaller windows takes its deviations from
            // another first value than one folded directly: equal up to rounding.
            let mut got = rows(dir.path(), "c.jsonl");
            for (k, g) in got.iter_mut() {
                let (a, b) = (take_stddev(g), want.get_mut(k).and_then(take_stddev));
                match (a, b) {
                    (Some(a), Some(b)) => prop_assert!(
                        (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                        "{:?}: stddev {} composed, {} direct", k, a, b
                    ),
                    (a, b) => prop_assert_eq!(a, b, "{:?}: stddev in one row only", k),
                }
            }
            prop_assert_eq!(got, want);
        }
    }

    fn take_stddev(row: &mut serde_json::Value) -> Option<f64> {
        row.as_object_mut()?.remove("stddev")?.as_f64()
    }
}

/// (key, size, start, count) of a closed window.
type Closed = (String, i64, i64, u64);

/// A close hook that notes every window closed.
#[derive(Debug)]
struct Recorder(Arc<Mutex<Vec<Closed>>>);

impl CloseHook for Recorder {
    fn closed(&mut self, key: &str, spec: &WindowSpec, start_ms: i64, agg: &Agg) {
        let mut seen = self.0.lock().unwrap();
        seen.push((key.to_string(), spec.size_ms, start_ms, agg.count));
    }
    fn passed(&mut self, _through_ms: i64) {}
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[test]
fn a_restore_behind_the_frontier_writes_the_window_and_tells_the_close_hook() {
    let old_dir = tempfile::tempdir().unwrap();
    let mut old = shard(old_dir.path(), &[10_000], 100, 1);
    old.fold(b"k", 1.0, 15_000, Kind::Sample);
    let records = old.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let params = Params {
        windows: vec![WindowSpec::tumbling(10_000)],
        quantiles: vec![],
        max_keys: 100,
    };
    let out = AggregatesWriter::open(&dir.path().join("s000.jsonl"), 0).unwrap();
    // This shard's frontier is already past the window's end.
    let mut restored = Shard::new(&params, 1, 40_000, out);
    let seen = Arc::new(Mutex::new(Vec::new()));
    restored.add_close_hook(Box::new(Recorder(seen.clone())));
    for record in records {
        restored.restore(record).unwrap();
    }
    restored.output().flush().unwrap();
    assert_eq!(lines(dir.path()).len(), 1, "written at once");
    assert_eq!(
        *seen.lock().unwrap(),
        [("k".to_string(), 10_000, 10_000, 1)]
    );
}

#[test]
fn a_restore_onto_a_higher_frontier_still_feeds_the_larger_windows() {
    // A shard that was behind when the checkpoint was taken (the core count changed since):
    // its 10s window [10 s, 20 s) is open, the frontier of the restored shards is 30 s.
    let old_dir = tempfile::tempdir().unwrap();
    let mut old = shard(old_dir.path(), &[10_000, 60_000], 100, 1);
    old.fold(b"k", 1.0, 5_000, Kind::Sample);
    old.fold(b"k", 2.0, 15_000, Kind::Sample);
    old.advance(0, 10_000, false).unwrap();
    let records = old.snapshot();

    let dir = tempfile::tempdir().unwrap();
    let params = Params {
        windows: vec![WindowSpec::tumbling(10_000), WindowSpec::tumbling(60_000)],
        quantiles: vec![0.5, 0.99],
        max_keys: 100,
    };
    let out = AggregatesWriter::open(&dir.path().join("s000.jsonl"), 0).unwrap();
    let mut restored = Shard::new(&params, 1, old.closed_through_ms(), out);
    let seen = Arc::new(Mutex::new(Vec::new()));
    restored.add_close_hook(Box::new(Recorder(seen.clone())));
    for record in records {
        restored.restore(record).unwrap();
    }
    assert_eq!(
        restored.close_restored(30_000).unwrap(),
        1,
        "the 10s window closes"
    );
    restored.advance(0, 60_000, false).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("k".to_string(), 10_000, 10_000, 1),
            ("k".into(), 60_000, 0, 2)
        ],
        "the windows the restore closes reach the close hook (the alert rules)"
    );
    restored.output().flush().unwrap();
    let minute: Vec<_> = lines(dir.path())
        .into_iter()
        .filter(|l| l["window"] == "1m")
        .collect();
    assert_eq!(minute.len(), 1);
    assert_eq!(minute[0]["count"], 2, "both events reach the 1m window");
    assert_eq!(minute[0]["sum"], 3.0);
}

#[test]
fn absorbing_one_event_keeps_its_value_exactly() {
    let mut a = Agg::one(1.0, 1);
    a.absorb(Agg::one(-0.0, 2));
    assert_eq!(a.last.to_bits(), (-0.0f64).to_bits());
    let mut b = Agg::one(-0.0, 1);
    b.absorb(Agg::one(-0.0, 2));
    assert_eq!(b.min.to_bits(), (-0.0f64).to_bits());
}

#[test]
fn values_still_in_a_sketch_buffer_reach_the_output_and_the_snapshot() {
    // 32 ones fill the buffer once and settle; the 1000s after them are still buffered
    // when the window closes (or is snapshotted): p99 is 1000 only if they count.
    let fold = |s: &mut Shard| {
        for _ in 0..SKETCH_PENDING {
            s.fold(b"lat", 1.0, 10, Kind::Timer);
        }
        for _ in 0..SKETCH_PENDING - 1 {
            s.fold(b"lat", 1000.0, 10, Kind::Timer);
        }
    };
    let p99 = |dir: &Path| {
        let out = lines(dir);
        let lat = out.iter().find(|l| l["key"] == "lat").unwrap();
        assert_eq!(lat["count"], 2 * SKETCH_PENDING - 1);
        lat["p99"].as_f64().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut direct = shard(dir.path(), &[1000], 100, 1);
    fold(&mut direct);
    let snap = direct.snapshot();
    direct.advance(0, 1000, false).unwrap();
    direct.output().flush().unwrap();
    assert!((p99(dir.path()) - 1000.0).abs() <= 10.0);

    let dir2 = tempfile::tempdir().unwrap();
    let mut restored = shard(dir2.path(), &[1000], 100, 1);
    for r in snap {
        restored.restore(r).unwrap();
    }
    restored.advance(0, 1000, false).unwrap();
    restored.output().flush().unwrap();
    assert!((p99(dir2.path()) - 1000.0).abs() <= 10.0);
}

#[test]
fn keys_are_released_when_their_windows_close_and_invalid_utf8_keys_share_one_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000], 2, 1);
    // Parsers pass only UTF-8 keys; a key that is not still lands in one slot, under its
    // lossy conversion, however often it comes.
    for _ in 0..3 {
        assert!(!s.fold(b"bad\xffkey", 1.0, 0, Kind::Sample).overflow);
    }
    assert!(
        !s.fold("bad\u{fffd}key".as_bytes(), 1.0, 0, Kind::Sample)
            .overflow
    );
    assert!(!s.fold(b"a", 1.0, 0, Kind::Sample).overflow);
    assert_eq!(s.keys(), 2);
    assert!(s.fold(b"b", 1.0, 0, Kind::Sample).overflow);
    s.advance(0, 1000, false).unwrap();
    assert_eq!(s.keys(), 0, "closed windows release their keys");
    // The released slots are found again by their new keys, and the bound holds.
    for round in 0..3 {
        let t = 1000 * (round + 1);
        for key in [&b"b"[..], b"c"] {
            assert!(!s.fold(key, 1.0, t, Kind::Sample).overflow);
            assert!(!s.fold(key, 2.0, t, Kind::Sample).overflow);
        }
        assert!(s.fold(b"a", 1.0, t, Kind::Sample).overflow);
        assert_eq!(s.keys(), 3);
        s.advance(0, t + 1000, false).unwrap();
        assert_eq!(s.keys(), 0);
    }
    s.output().flush().unwrap();
    let out = lines(dir.path());
    let count = |key: &str, start: i64| {
        out.iter()
            .find(|l| l["key"] == key && l["start_ms"] == start)
            .map(|l| l["count"].as_u64().unwrap())
    };
    assert_eq!(count("bad\u{fffd}key", 0), Some(4));
    assert_eq!(count("a", 0), Some(1));
    assert_eq!(count(OVERFLOW_KEY, 0), Some(1));
    for t in [1000, 2000, 3000] {
        assert_eq!(count("b", t), Some(2));
        assert_eq!(count("c", t), Some(2));
        assert_eq!(count(OVERFLOW_KEY, t), Some(1));
    }
}

#[test]
fn quantiles_inside_min_and_max() {
    let mut agg = Agg::empty();
    agg.add(22.0, 1, true);
    agg.add(22.0, 2, true);
    for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
        assert_eq!(agg.quantile(q), Some(22.0), "q {q}");
    }
    let mut agg = Agg::empty();
    for (i, v) in [21.5, 22.0, 1e-9, 1e9, -3.25].into_iter().enumerate() {
        agg.add(v, i as i64, true);
    }
    for q in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let v = agg.quantile(q).unwrap();
        assert!((agg.min..=agg.max).contains(&v), "q {q}: {v}");
    }
    assert_eq!(agg.quantile(1.0), Some(1e9));
    assert_eq!(agg.quantile(0.0), Some(-3.25));
    // An empty aggregate has no quantile, and asking does not panic.
    assert_eq!(Agg::empty().quantile(0.5), None);
}

#[test]
fn aggregates_stay_finite() {
    let mut agg = Agg::empty();
    for t in 0..3 {
        agg.add(1.7e308, t, true);
    }
    assert_eq!(agg.sum, f64::MAX);
    assert!(agg.mean().is_finite());
    let mut other = Agg::empty();
    other.add(-1.7e308, 5, true);
    other.add(-1.7e308, 6, true);
    let mut merged = agg.clone();
    merged.absorb(other);
    assert!(merged.sum.is_finite());
    // The row is valid JSON with numbers, and says the sum is a bound.
    let dir = tempfile::tempdir().unwrap();
    let mut out = AggregatesWriter::open(&dir.path().join("s000"), 0).unwrap();
    let spec = WindowSpec::tumbling(1_000);
    out.write_window("k", &spec, 0, &agg, &[(0.5, "p50".into())])
        .unwrap();
    out.flush().unwrap();
    let text = record_text(&dir.path().join("s000"));
    let row: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    for field in ["sum", "mean", "min", "max", "p50"] {
        assert!(row[field].is_f64(), "{field}: {text}");
    }
    assert_eq!(row["sum_saturated"], true);
}

/// Folds StatsD gauge events the way the parser hands them over.
fn gauge(s: &mut Shard, key: &str, line_value: &str, t: i64) {
    let kind = if line_value.starts_with(['+', '-']) {
        Kind::GaugeDelta
    } else {
        Kind::Gauge
    };
    s.fold(key.as_bytes(), line_value.parse().unwrap(), t, kind);
}

#[test]
fn statsd_gauge_deltas_follow_the_running_value_across_windows_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000], 100, 1);
    gauge(&mut s, "queue", "119", 100);
    gauge(&mut s, "queue", "-5", 200);
    gauge(&mut s, "fresh", "+3", 300);
    // The next window: the gauge carries over although its window closed.
    s.advance(0, 1000, false).unwrap();
    gauge(&mut s, "queue", "+6", 1100);
    let mut gauges = s.gauges();
    gauges.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(gauges, vec![("fresh".into(), 3.0), ("queue".into(), 120.0)]);
    s.advance(0, 2000, false).unwrap();
    // A restart: the checkpoint's gauge values come back.
    let dir2 = tempfile::tempdir().unwrap();
    let mut t = shard(dir2.path(), &[1000], 100, 1);
    for (k, v) in &gauges {
        t.restore_gauge(k, *v);
    }
    gauge(&mut t, "queue", "-20", 2100);
    gauge(&mut t, "queue", "7", 2200);
    gauge(&mut t, "queue", "+1", 2300);
    t.advance(0, 3000, false).unwrap();
    for shard in [&mut s, &mut t] {
        shard.output().flush().unwrap();
    }
    let rows = lines(dir.path());
    let by = |key: &str, start: i64| {
        rows.iter()
            .find(|r| r["key"] == key && r["start_ms"] == start)
            .unwrap()
            .clone()
    };
    let w0 = by("queue", 0);
    assert_eq!(
        (w0["count"].as_u64(), w0["last"].as_f64()),
        (Some(2), Some(114.0))
    );
    assert_eq!(
        (w0["min"].as_f64(), w0["max"].as_f64()),
        (Some(114.0), Some(119.0))
    );
    assert_eq!(by("fresh", 0)["last"], 3.0, "a first delta starts from 0");
    assert_eq!(by("queue", 1000)["last"], 120.0);
    let after = &lines(dir2.path())[0];
    assert_eq!(after["last"], 8.0);
    assert_eq!(
        (after["min"].as_f64(), after["max"].as_f64()),
        (Some(7.0), Some(100.0))
    );
}

#[test]
fn running_gauges_are_bounded_and_the_rest_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000], 2, 1);
    for k in ["a", "b"] {
        assert!(!s.fold(k.as_bytes(), 1.0, 10, Kind::Gauge).overflow);
    }
    s.advance(0, 1000, false).unwrap();
    assert_eq!(s.keys(), 0, "window slots are released; gauges are kept");
    let third = s.fold(b"c", 5.0, 1100, Kind::GaugeDelta);
    assert!(third.overflow, "a third gauge past the bound of 2");
    assert!(!s.fold(b"a", 1.0, 1100, Kind::GaugeDelta).overflow);
    assert_eq!(s.gauges().len(), 2);
}

#[test]
fn statsd_sets_count_distinct_members_without_sums_of_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000, 3000], 100, 1);
    let member = |m: &str| crate::parse::statsd::set_member_hash(m.as_bytes());
    for (m, t) in [("alice", 10), ("bob", 20), ("alice", 30), ("carol", 1500)] {
        s.fold(b"users", member(m), t, Kind::Set);
    }
    // 10,000 distinct members in one window: past the exact range, within the estimator's
    // error.
    for i in 0..10_000 {
        s.fold(
            b"big",
            member(&format!("user-{i}")),
            2000 + i % 500,
            Kind::Set,
        );
        s.fold(b"big", member(&format!("user-{}", i % 10)), 2000, Kind::Set);
    }
    s.advance(0, 3000, false).unwrap();
    s.output().flush().unwrap();
    let rows = lines(dir.path());
    let by = |key: &str, window: &str, start: i64| {
        rows.iter()
            .find(|r| r["key"] == key && r["window"] == window && r["start_ms"] == start)
            .unwrap()
            .clone()
    };
    let first = by("users", "1s", 0);
    assert_eq!(first["count"], 3);
    assert_eq!(first["distinct"], 2);
    for field in ["sum", "min", "max", "mean", "last", "p50", "p99"] {
        assert!(
            first.get(field).is_none(),
            "{field} of member hashes: {first}"
        );
    }
    let all = by("users", "3s", 0);
    assert_eq!(
        (all["count"].as_u64(), all["distinct"].as_u64()),
        (Some(4), Some(3))
    );
    let big = by("big", "1s", 2000)["distinct"].as_f64().unwrap();
    assert!((big - 10_000.0).abs() < 300.0, "distinct {big} of 10,000");
    // A key that mixes members and values: the values' statistics, of the values only.
    let dir2 = tempfile::tempdir().unwrap();
    let mut m = shard(dir2.path(), &[1000], 100, 1);
    m.fold(b"mixed", member("x"), 10, Kind::Set);
    m.fold(b"mixed", 4.0, 20, Kind::Sample);
    m.fold(b"mixed", 6.0, 30, Kind::Sample);
    m.advance(0, 1000, false).unwrap();
    m.output().flush().unwrap();
    let row = &lines(dir2.path())[0];
    assert_eq!(
        (row["count"].as_u64(), row["distinct"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        (row["mean"].as_f64(), row["min"].as_f64()),
        (Some(5.0), Some(4.0))
    );
}

#[test]
fn stddev_is_the_population_deviation_and_survives_a_large_mean() {
    let mut a = Agg::empty();
    for v in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
        a.add(v, 0, false);
    }
    assert_eq!(a.stddev(), 2.0);
    // A plain sum of squares loses all of this spread (1e18 ± 1e9 in the squares).
    let mut b = Agg::empty();
    for v in [1e9 - 1.0, 1e9 + 1.0, 1e9 - 1.0, 1e9 + 1.0] {
        b.add(v, 0, false);
    }
    assert_eq!(b.stddev(), 1.0);
    // Merging re-takes the other half's deviations from this half's first value.
    let (mut left, mut right) = (Agg::empty(), Agg::empty());
    for v in [2.0, 4.0, 4.0, 4.0] {
        left.add(v, 0, false);
    }
    for v in [5.0, 5.0, 7.0, 9.0] {
        right.add(v, 0, false);
    }
    left.absorb(right);
    assert_eq!(left.stddev(), 2.0);
    assert_eq!(Agg::one(3.0, 0).stddev(), 0.0);
    let mut huge = Agg::empty();
    for v in [f64::MAX, -f64::MAX, f64::MAX] {
        huge.add(v, 0, false);
    }
    assert!(huge.stddev().is_finite());
}

mod stddev_props {
    use super::*;
    use proptest::prelude::*;

    /// Two passes over the values: the mean first, then the squared deviations from it.
    fn two_pass(values: &[f64]) -> f64 {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt()
    }

    proptest! {
        /// Hostile inputs: a large common offset (1e9, 1e12) with a small spread, folded in
        /// arbitrary pieces merged in order, against the two-pass oracle.
        #[test]
        fn stddev_matches_a_two_pass_oracle_on_a_large_offset_in_merged_pieces(
            offset in prop::sample::select(vec![0.0, 1e6, 1e9, 1e12, -1e9]),
            spread in prop::sample::select(vec![1e-3, 1.0, 1e3]),
            unit in proptest::collection::vec(-1.0f64..1.0, 2..300),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let values: Vec<f64> = unit.iter().map(|u| offset + u * spread).collect();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(values.len())).collect();
            cuts.push(values.len());
            cuts.sort_unstable();
            let mut whole = Agg::empty();
            let mut from = 0;
            for to in cuts {
                let mut piece = Agg::empty();
                for v in &values[from..to] {
                    piece.add(*v, 0, false);
                }
                whole.absorb(piece);
                from = to;
            }
            let want = two_pass(&values);
            // The values themselves carry offset × 2⁻⁵² of rounding.
            let tolerance = 1e-6 * want + offset.abs() * 1e-15;
            prop_assert!(
                (whole.stddev() - want).abs() <= tolerance,
                "stddev {} against two-pass {}", whole.stddev(), want
            );
        }
    }
}

/// (key, size, start, count, sum) of every open window `scan_open` gives, scanned in steps
/// of `step` slots.
fn scanned(shard: &Shard, size_ms: Option<i64>, step: usize) -> Vec<(String, i64, i64, u64, f64)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let next = shard.scan_open(
            from,
            step,
            size_ms,
            |_| true,
            |key, spec, start, agg| {
                out.push((key.to_string(), spec.size_ms, start, agg.count, agg.sum));
            },
        );
        match next {
            Some(n) => from = n,
            None => break,
        }
    }
    out.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    out
}

#[test]
fn open_windows_are_scanned_in_steps_with_composed_windows_holding_every_event_so_far() {
    let dir = tempfile::tempdir().unwrap();
    // 10s feeds 1m, which feeds 1h: the open 1m and 1h windows are mostly in their feeders.
    let mut s = shard(dir.path(), &[10_000, 60_000, 3_600_000], 1000, 1);
    for (key, t, v) in [
        ("a", 1_000, 1.0),
        ("a", 15_000, 2.0),
        ("a", 65_000, 4.0),
        ("b", 5_000, 8.0),
    ] {
        s.fold(key.as_bytes(), v, t, Kind::Timer);
    }
    // Closes [0,10s) and [10s,20s) (into the open 1m window) but no 1m window.
    s.advance(0, 20_000, false).unwrap();
    let want = vec![
        ("a".to_string(), 10_000, 60_000, 1, 4.0),
        ("a".to_string(), 60_000, 0, 2, 3.0),
        ("a".to_string(), 60_000, 60_000, 1, 4.0),
        ("a".to_string(), 3_600_000, 0, 3, 7.0),
        ("b".to_string(), 60_000, 0, 1, 8.0),
        ("b".to_string(), 3_600_000, 0, 1, 8.0),
    ];
    for step in [1, 2, 1000] {
        assert_eq!(scanned(&s, None, step), want, "step {step}");
    }
    let hour: Vec<_> = want.iter().filter(|w| w.1 == 3_600_000).cloned().collect();
    assert_eq!(scanned(&s, Some(3_600_000), 1), hour);
    // A query answered in steps of one slot: the top 1h window by count is a's, with all
    // three of its events.
    let (reply, replies) = crossbeam_channel::bounded(1);
    let mut q = crate::query::OpenScan::new(crate::query::OpenRequest {
        filter: crate::query::Filter::Prefix(String::new()),
        size_ms: Some(3_600_000),
        want: crate::query::Want::Top {
            by: crate::query::By::Count,
            n: 1,
        },
        reply,
    });
    let mut turns = 1;
    while !q.step(&s, 1) {
        turns += 1;
        assert!(turns < 10, "a scan of two keys in steps of one ends");
    }
    assert!(turns >= 2, "one slot per step");
    let answer = replies.try_recv().unwrap();
    assert_eq!(answer.rows.len(), 1);
    assert_eq!(
        (answer.rows[0].key.as_str(), answer.rows[0].value),
        ("a", 3.0)
    );
    let row: serde_json::Value = serde_json::from_str(&answer.rows[0].text).unwrap();
    assert_eq!(
        (row["count"].clone(), row["final"].clone()),
        (3.into(), false.into())
    );
}

#[test]
fn the_frontier_at_the_last_end_holding_the_newest_event_closes_every_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shard(dir.path(), &[1000, 60_000], 100, 2);
    for (k, t) in [(&b"a"[..], 100), (b"b", 59_999), (b"a", 61_500)] {
        s.fold(k, 1.0, t, Kind::Sample);
    }
    assert_eq!(s.last_end_holding(61_500), 120_000);
    assert_eq!(s.last_end_holding(-1), 0);
    s.advance(0, 119_999, true).unwrap();
    s.advance(1, i64::MIN, true).unwrap();
    assert_eq!(s.open_windows(), 1, "the minute holding 61.5 s is open");
    s.advance(0, s.last_end_holding(61_500), true).unwrap();
    assert_eq!(s.open_windows(), 0);

    let dir = tempfile::tempdir().unwrap();
    let mut h = hopping(dir.path(), 10_000, 2_500);
    h.fold(b"k", 1.0, 12_000, Kind::Sample);
    assert_eq!(h.last_end_holding(12_000), 20_000);
    h.advance(0, 19_999, true).unwrap();
    assert_eq!(h.open_windows(), 1);
    h.advance(0, 20_000, true).unwrap();
    assert_eq!(h.open_windows(), 0);
}
