//! The owner side of experiments: a shard's [`Engine`] sees every window it closes (a
//! [`CloseHook`]); the windows of arm keys (`KEY;arm=NAME`) closing together are one
//! comparison, written as a row to the shard's `experiments/` results record, per window and
//! cumulatively since the experiment began for the key.
//!
//! Invariants:
//! - All arms of a key are on this shard (routing hashes the key without its arm), and
//!   windows ending at one time all close before the shard's frontier passes that time
//!   ([`CloseHook::passed`]), so a comparison holds every arm that had events.
//! - Rows are written in (experiment, key, window, start) order at each frontier step: a
//!   pure function of the windows closed, so replay and recovery write the same rows.
//! - The cumulative state (one aggregate per arm and key, merged from the smallest window
//!   size's closed windows that start on a multiple of its size, so an event counts once even
//!   with hopping windows) is in the checkpoint with the record's position. At most
//!   [`EXPERIMENT_KEYS_MAX`] keys per shard have cumulative rows; the rest are counted.
//!
//! A row (one line of JSON):
//!
//! ```text
//! {"experiment":"checkout","key":"checkout.click","scope":"window","window":"10s",
//!  "start":"…","start_ms":…,"end":"…","end_ms":…,"none":3,
//!  "arms":[{"arm":"control","n":412,"mean":1.9,"stddev":0.4,"units":398,"p99":3.1},…],
//!  "vs_control":[{"arm":"treatment","difference":0.2,"relative_difference":0.1,
//!                 "ci95":[0.1,0.3],"p_value":0.0004},…],
//!  "srm":{"chi_squared":0.8,"p_value":0.37,"flagged":false}}
//! ```

#![forbid(unsafe_code)]

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::{Experiment, NO_ARM};
use super::split::arm_of;
use super::stats::{Summary, sample_ratio, welch};
use crate::results::{HookRecord, RecordSync, RecordWriter};
use crate::units::Millis;
use crate::window::{Agg, CloseHook, WindowSpec, quantile_name, rfc3339};

/// Most keys per shard with a cumulative comparison.
pub const EXPERIMENT_KEYS_MAX: usize = 10_000;

/// One key's cumulative state, as a checkpoint keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CumulativeRecord {
    /// The experiment's name.
    pub experiment: String,
    /// The key (without its arm).
    pub key: String,
    /// Start of the first window merged.
    pub since_ms: i64,
    /// Events without the unit.
    pub none: u64,
    /// Per arm, in the experiment's order: everything merged so far.
    pub arms: Vec<Agg>,
}

/// The windows of one comparison, closing together.
#[derive(Debug, Default)]
struct Group {
    arms: Vec<Option<Agg>>,
    hop_ms: i64,
}

#[derive(Debug)]
struct Cumulative {
    since_ms: i64,
    none: u64,
    arms: Vec<Agg>,
}

/// (experiment, key, window size, window start).
type GroupId = (usize, String, i64, i64);

/// One shard's experiments: the comparisons of the windows closing now, the cumulative
/// state, and the shard's `experiments/` record.
#[derive(Debug)]
pub struct Engine {
    experiments: Arc<[Experiment]>,
    /// Arm name → (experiment, arm index).
    arms: HashMap<String, (usize, usize)>,
    quantiles: Vec<(f64, String)>,
    /// The window size cumulative state is merged from.
    cumulative_size_ms: i64,
    groups: BTreeMap<GroupId, Group>,
    /// Events without the unit, by (key, size, start), for the groups closing now.
    none: HashMap<(String, i64, i64), u64>,
    cumulative: HashMap<(usize, String), Cumulative>,
    record: HookRecord,
    overflow_logged: bool,
    line: Vec<u8>,
}

impl Engine {
    /// An engine for `experiments` over windows `specs` with `quantiles`, writing to
    /// `record` (opened at the checkpoint's position).
    pub fn new(
        experiments: Arc<[Experiment]>,
        specs: &[WindowSpec],
        quantiles: &[f64],
        record: RecordWriter,
    ) -> Engine {
        let arms = experiments
            .iter()
            .enumerate()
            .flat_map(|(e, x)| {
                x.arms
                    .names()
                    .iter()
                    .enumerate()
                    .map(move |(a, name)| (name.clone(), (e, a)))
            })
            .collect();
        Engine {
            experiments,
            arms,
            quantiles: quantiles.iter().map(|q| (*q, quantile_name(*q))).collect(),
            cumulative_size_ms: specs.iter().map(|s| s.size_ms).min().unwrap_or(0),
            groups: BTreeMap::new(),
            none: HashMap::new(),
            cumulative: HashMap::new(),
            record: HookRecord::new(record, "experiment comparisons"),
            overflow_logged: false,
            line: Vec::with_capacity(1024),
        }
    }

    /// Restores one key's cumulative state; an experiment or arm no longer configured drops it.
    pub fn restore(&mut self, record: CumulativeRecord) {
        let Some(e) = self
            .experiments
            .iter()
            .position(|x| x.name == record.experiment)
        else {
            tracing::info!(experiment = %record.experiment, "cumulative state of an experiment no longer configured is dropped");
            return;
        };
        if record.arms.len() != self.experiments[e].arms.len() {
            tracing::info!(experiment = %record.experiment, "cumulative state of an experiment whose arms changed is dropped");
            return;
        }
        self.cumulative.insert(
            (e, record.key),
            Cumulative {
                since_ms: record.since_ms,
                none: record.none,
                arms: record.arms,
            },
        );
    }

    /// Every key's cumulative state, for a checkpoint, in a stable order.
    pub fn snapshot(&self) -> Vec<CumulativeRecord> {
        let mut out: Vec<CumulativeRecord> = self
            .cumulative
            .iter()
            .map(|((e, key), c)| CumulativeRecord {
                experiment: self.experiments[*e].name.clone(),
                key: key.clone(),
                since_ms: c.since_ms,
                none: c.none,
                arms: c.arms.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.experiment, &a.key).cmp(&(&b.experiment, &b.key)));
        out
    }

    /// Writes the staged rows out and returns the handle that makes them durable, with the
    /// record's position (for the checkpoint).
    pub fn sync_handle(&mut self) -> (RecordSync, io::Result<()>, u64) {
        self.record.sync_handle()
    }

    /// The record's position, staged rows included.
    pub fn position(&self) -> u64 {
        self.record.position()
    }

    /// Writes the comparisons of the windows closed since the last step.
    fn emit_groups(&mut self) {
        let groups = std::mem::take(&mut self.groups);
        let mut none = std::mem::take(&mut self.none);
        for ((e, key, size_ms, start_ms), group) in groups {
            let spec = WindowSpec {
                size_ms,
                hop_ms: group.hop_ms,
            };
            let none_here = none.remove(&(key.clone(), size_ms, start_ms)).unwrap_or(0);
            let arms: Vec<Agg> = group
                .arms
                .into_iter()
                .map(|a| a.unwrap_or_else(Agg::empty))
                .collect();
            self.write_row(
                e,
                &key,
                "window",
                &spec,
                start_ms,
                start_ms + size_ms,
                none_here,
                &arms,
            );
            if size_ms == self.cumulative_size_ms && start_ms.rem_euclid(size_ms) == 0 {
                self.fold_cumulative(e, &key, &spec, start_ms, none_here, arms);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fold_cumulative(
        &mut self,
        e: usize,
        key: &str,
        spec: &WindowSpec,
        start_ms: i64,
        none: u64,
        arms: Vec<Agg>,
    ) {
        let id = (e, key.to_string());
        if !self.cumulative.contains_key(&id) {
            if self.cumulative.len() >= EXPERIMENT_KEYS_MAX {
                if !self.overflow_logged {
                    tracing::warn!(
                        max = EXPERIMENT_KEYS_MAX,
                        "experiment keys past the bound get window rows only, no cumulative rows"
                    );
                    self.overflow_logged = true;
                }
                return;
            }
            self.cumulative.insert(
                id.clone(),
                Cumulative {
                    since_ms: start_ms,
                    none: 0,
                    arms: arms.iter().map(|_| Agg::empty()).collect(),
                },
            );
        }
        let c = self.cumulative.get_mut(&id).expect("just made");
        c.none += none;
        for (total, agg) in c.arms.iter_mut().zip(arms) {
            total.absorb(agg);
        }
        let (since, none, totals) = (c.since_ms, c.none, c.arms.clone());
        let end_ms = start_ms + spec.size_ms;
        self.write_row(e, key, "cumulative", spec, since, end_ms, none, &totals);
    }

    #[allow(clippy::too_many_arguments)]
    fn write_row(
        &mut self,
        e: usize,
        key: &str,
        scope: &str,
        spec: &WindowSpec,
        start_ms: i64,
        end_ms: i64,
        none: u64,
        arms: &[Agg],
    ) {
        let experiment = &self.experiments[e];
        let summaries: Vec<Summary> = arms.iter().map(summary).collect();
        let units: Vec<u64> = arms.iter().map(|a| a.distinct.estimate() as u64).collect();
        let arm_rows: Vec<ArmRow<'_>> = arms
            .iter()
            .zip(&summaries)
            .zip(&units)
            .enumerate()
            .map(|(i, ((agg, s), units))| ArmRow {
                arm: &experiment.arms.names()[i],
                n: s.n,
                mean: (s.n > 0).then_some(s.mean).filter(|m| m.is_finite()),
                stddev: s.stddev(),
                units: *units,
                quantiles: self
                    .quantiles
                    .iter()
                    .filter_map(|(q, name)| {
                        agg.quantile(*q)
                            .filter(|v| v.is_finite())
                            .map(|v| (name.as_str(), v))
                    })
                    .collect(),
            })
            .collect();
        let vs_control: Vec<VsRow<'_>> = summaries
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, s)| {
                let c = welch(&summaries[0], s);
                VsRow {
                    arm: &experiment.arms.names()[i],
                    difference: c.difference,
                    relative_difference: c.relative_difference,
                    ci95: c.ci95.map(|(lo, hi)| [lo, hi]),
                    p_value: c.p_value,
                }
            })
            .collect();
        let srm = sample_ratio(&units, experiment.arms.weights());
        let row = ComparisonRow {
            experiment: &experiment.name,
            key,
            scope,
            window: Millis(spec.size_ms as u64).to_string(),
            hop: (spec.hop_ms != spec.size_ms).then(|| Millis(spec.hop_ms as u64).to_string()),
            start: rfc3339(start_ms),
            start_ms,
            end: rfc3339(end_ms),
            end_ms,
            none,
            arms: arm_rows,
            vs_control,
            srm: SrmRow {
                chi_squared: srm.chi_squared,
                p_value: srm.p_value,
                flagged: srm.flagged,
            },
        };
        self.line.clear();
        // Strings and finite numbers (or nulls) always encode.
        if serde_json::to_writer(&mut self.line, &row).is_ok() {
            self.line.push(b'\n');
            self.record.append(&self.line);
        }
    }
}

/// An arm's sample as the statistics take it: the count, mean and sample variance of its
/// values (from the aggregate's shifted sums, which keep the variance exact for values
/// like 1e9 ± 1).
fn summary(agg: &Agg) -> Summary {
    let n = agg.values();
    if n == 0 {
        return Summary::default();
    }
    let count = n as f64;
    let mean = agg.mean();
    let variance = if n < 2 {
        0.0
    } else {
        ((agg.dev_sq - agg.dev_sum * agg.dev_sum / count) / (count - 1.0)).max(0.0)
    };
    Summary { n, mean, variance }
}

/// One row of `experiments/`, fields in the documented order.
#[derive(Serialize)]
struct ComparisonRow<'a> {
    experiment: &'a str,
    key: &'a str,
    scope: &'a str,
    window: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hop: Option<String>,
    start: String,
    start_ms: i64,
    end: String,
    end_ms: i64,
    none: u64,
    arms: Vec<ArmRow<'a>>,
    vs_control: Vec<VsRow<'a>>,
    srm: SrmRow,
}

#[derive(Serialize)]
struct ArmRow<'a> {
    arm: &'a str,
    n: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stddev: Option<f64>,
    units: u64,
    #[serde(flatten)]
    quantiles: BTreeMap<&'a str, f64>,
}

#[derive(Serialize)]
struct VsRow<'a> {
    arm: &'a str,
    difference: Option<f64>,
    relative_difference: Option<f64>,
    ci95: Option<[f64; 2]>,
    p_value: Option<f64>,
}

#[derive(Serialize)]
struct SrmRow {
    chi_squared: Option<f64>,
    p_value: Option<f64>,
    flagged: bool,
}

impl CloseHook for Engine {
    #[inline]
    fn closed(&mut self, key: &str, spec: &WindowSpec, start_ms: i64, agg: &Agg) {
        let Some((base, arm)) = arm_of(key) else {
            return;
        };
        if arm == NO_ARM {
            *self
                .none
                .entry((base.to_string(), spec.size_ms, start_ms))
                .or_default() += agg.count;
            return;
        }
        let Some(&(e, a)) = self.arms.get(arm) else {
            return;
        };
        let arms = self.experiments[e].arms.len();
        let group = self
            .groups
            .entry((e, base.to_string(), spec.size_ms, start_ms))
            .or_insert_with(|| Group {
                arms: (0..arms).map(|_| None).collect(),
                hop_ms: spec.hop_ms,
            });
        group.arms[a] = Some(agg.clone());
    }

    fn passed(&mut self, _through_ms: i64) {
        if !self.groups.is_empty() {
            self.emit_groups();
        }
        self.none.clear();
        self.record.write_out();
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::config::{Experiment, ExperimentConfig};
    use crate::experiments::split::{Split, unit_hash};
    use crate::parse::{Format, Kind};
    use crate::window::{AggregatesWriter, Params, Shard};

    fn experiment() -> Experiment {
        let c: ExperimentConfig = toml::from_str(
            "name = \"checkout\"\nlistener = \"e\"\nunit = \"user\"\narms = { control = 50, treatment = 50 }",
        )
        .unwrap();
        Experiment::compile(&c, &[("e", Format::Json)]).unwrap()
    }

    fn shard(dir: &std::path::Path) -> Shard {
        let specs = vec![WindowSpec::tumbling(10_000)];
        let params = Params {
            windows: specs.clone(),
            quantiles: vec![0.5],
            max_keys: 1000,
        };
        let output = AggregatesWriter::open(&dir.join("aggregates"), 0).unwrap();
        let mut shard = Shard::new(&params, 1, i64::MIN, output);
        let record = RecordWriter::open(
            &dir.join("experiments"),
            0,
            crate::results::Options::default(),
            Arc::default(),
            Arc::default(),
        )
        .unwrap();
        let experiments: Arc<[Experiment]> = vec![experiment()].into();
        shard.add_close_hook(Box::new(Engine::new(experiments, &specs, &[0.5], record)));
        shard
    }

    fn rows(dir: &std::path::Path) -> Vec<serde_json::Value> {
        crate::results::read_record(&dir.join("experiments"))
            .0
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Feeds `users` units per window for `windows` windows: the treatment's values are
    /// `lift` higher; every seventh event has no unit.
    fn feed(shard: &mut Shard, users: usize, windows: i64, lift: f64) {
        let e = experiment();
        let mut split = Split::new(&e);
        for w in 0..windows {
            for u in 0..users {
                let unit = format!("user-{u}");
                let arm = e.arms.assign(&unit).unwrap();
                let value = 10.0 + (u % 5) as f64 + if arm == 1 { lift } else { 0.0 };
                let unit = (u % 7 != 0).then_some(unit.as_bytes());
                let (key, hash) = split.tag(b"checkout.latency", unit);
                let key = key.to_vec();
                let folded = {
                    let mut batch = shard.batch();
                    batch.fold_unit(&key, value, w * 10_000 + 5, Kind::Sample, hash)
                };
                assert_eq!(folded.late, 0);
            }
            shard.advance(0, (w + 1) * 10_000, false).unwrap();
        }
    }

    #[test]
    fn arms_of_a_key_are_compared_per_window_and_cumulatively() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = shard(dir.path());
        feed(&mut s, 700, 3, 2.0);
        let got = rows(dir.path());
        let scopes: Vec<&str> = got.iter().map(|r| r["scope"].as_str().unwrap()).collect();
        assert_eq!(scopes, ["window", "cumulative"].repeat(3));
        let last = &got[5];
        assert_eq!(last["experiment"], "checkout");
        assert_eq!(last["key"], "checkout.latency");
        assert_eq!(last["start_ms"], 0);
        assert_eq!(last["end_ms"], 30_000);
        assert_eq!(last["none"], 3 * 100, "users 0, 7, ... have no unit");
        let arms = last["arms"].as_array().unwrap();
        assert_eq!(arms[0]["arm"], "control");
        assert_eq!(arms[1]["arm"], "treatment");
        let n: u64 = arms.iter().map(|a| a["n"].as_u64().unwrap()).sum();
        assert_eq!(n, 3 * 600);
        let units: u64 = arms.iter().map(|a| a["units"].as_u64().unwrap()).sum();
        assert!((590..=610).contains(&units), "distinct units {units}");
        let vs = &last["vs_control"][0];
        assert_eq!(vs["arm"], "treatment");
        let diff = vs["difference"].as_f64().unwrap();
        let [lo, hi] = [
            vs["ci95"][0].as_f64().unwrap(),
            vs["ci95"][1].as_f64().unwrap(),
        ];
        assert!(lo < 2.0 && 2.0 < hi && lo > 0.0, "{diff} in [{lo}, {hi}]");
        assert!(vs["p_value"].as_f64().unwrap() < 1e-6);
        assert_eq!(last["srm"]["flagged"], false, "{}", last["srm"]);
        assert!(arms[0]["p50"].as_f64().is_some());
    }

    #[test]
    fn the_cumulative_state_survives_a_snapshot_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = shard(dir.path());
        feed(&mut s, 100, 2, 1.0);
        let snapshot = s.hook::<Engine>().unwrap().snapshot();
        assert_eq!(snapshot.len(), 1);
        let dir2 = tempfile::tempdir().unwrap();
        let mut s2 = shard(dir2.path());
        for r in snapshot {
            s2.hook::<Engine>().unwrap().restore(r);
        }
        s2.advance(0, 20_000, false).unwrap();
        // One more window, on both: the cumulative rows agree.
        let more = |s: &mut Shard| {
            let e = experiment();
            let mut split = Split::new(&e);
            let (key, hash) = split.tag(b"checkout.latency", Some(b"late-user"));
            let key = key.to_vec();
            s.batch().fold_unit(&key, 50.0, 25_000, Kind::Sample, hash);
            s.advance(0, 30_000, false).unwrap();
        };
        more(&mut s);
        more(&mut s2);
        let a = rows(dir.path()).pop().unwrap();
        let b = rows(dir2.path()).pop().unwrap();
        assert_eq!(a["scope"], "cumulative");
        assert_eq!(a, b);
        assert_eq!(unit_hash(b"x"), unit_hash(b"x"));
    }

    #[test]
    fn an_a_a_split_covers_0_about_95_percent_of_the_time_with_even_p_values() {
        // 200 seeded A/A runs: both arms draw from one distribution (sums of uniforms,
        // shifted to 1e6, so the shifted sums are what keeps the variance exact).
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut draw = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut covered = 0;
        let mut p_values = Vec::new();
        for _ in 0..200 {
            let mut arms = [Agg::empty(), Agg::empty()];
            for arm in &mut arms {
                for _ in 0..200 {
                    let v = 1e6 + (0..4).map(|_| draw()).sum::<f64>();
                    arm.add(v, 0, false);
                }
            }
            let c = welch(&summary(&arms[0]), &summary(&arms[1]));
            let (lo, hi) = c.ci95.unwrap();
            covered += usize::from(lo <= 0.0 && 0.0 <= hi);
            p_values.push(c.p_value.unwrap());
        }
        assert!(
            (181..=199).contains(&covered),
            "the interval covered 0 in {covered} of 200"
        );
        // Even p-values: each fifth of [0, 1] holds about 40 of them.
        for fifth in 0..5 {
            let (lo, hi) = (fifth as f64 / 5.0, (fifth + 1) as f64 / 5.0);
            let n = p_values.iter().filter(|p| **p >= lo && **p < hi).count();
            assert!((22..=58).contains(&n), "{n} p-values in [{lo}, {hi})");
        }
    }
}
