//! Restore planning: each core's log partition opened (recovered, never below the
//! checkpoint's offsets), the replay of every partition on disk planned, and every shard's
//! output cut back to the checkpoint and its open windows restored.

#![forbid(unsafe_code)]

use super::{Error, io_err};
use std::path::Path;

use crate::alerts::{Engine, Rule};
use crate::checkpoint::{self, BODY_VERSION, Body, PartitionState, ShardState};
use crate::config::Config;
use crate::log::{self, Appender, Offset, Reader};
use crate::metrics::Metrics;
use crate::results::{Kind, RecordWriter, record_dir};
use crate::route::owner;
use crate::window::{AggregatesWriter, Params, Shard, aggregates_path};
use std::sync::Arc;

/// The alert rules and experiments every shard runs, and the metrics their engines count in.
pub(super) struct Alerting {
    pub(super) rules: Arc<[Rule]>,
    pub(super) experiments: Arc<[crate::experiments::config::Experiment]>,
    pub(super) metrics: Arc<Metrics>,
}
use crate::worker::{ReplayTask, ResultsHandles};

pub(super) struct PartitionPlan {
    /// The core's own partition (`None` for a replay, which appends nothing).
    pub(super) appender: Option<Appender>,
    pub(super) replay: Vec<ReplayTask>,
    pub(super) others: Vec<PartitionState>,
    pub(super) max_event_ms: Option<i64>,
}

/// Opens each core's partition and plans the replay of every partition on disk: partition `p`
/// is replayed by core `p % cores` (partitions beyond `cores` were left by a larger instance).
pub(super) fn plan_partitions(
    config: &Config,
    cores: usize,
    body: Option<&Body>,
    metrics: &Metrics,
) -> Result<Vec<PartitionPlan>, Error> {
    let options = log::Options::from(&config.log);
    let mut plans = Vec::new();
    for core in 0..cores as u16 {
        let dir = log::partition_dir(&config.data_dir, core);
        // Offsets the checkpoint counted are never given to new lines (see log recovery).
        let floor = Offset(body.map_or(0, |b| b.offset_of(core)));
        let (appender, report) = Appender::open_from(&dir, options, floor)?;
        let core_metrics = &metrics.cores[core as usize];
        core_metrics
            .log_truncated_bytes_total
            .add(report.truncated_bytes);
        core_metrics.log_bad_batches_total.add(report.bad_batches);
        core_metrics.log_lost_lines_total.add(report.lost_lines);
        if report.truncated_bytes > 0 {
            tracing::warn!(
                partition = core,
                cut_bytes = report.truncated_bytes,
                "torn log tail cut"
            );
        }
        plans.push(PartitionPlan {
            appender: Some(appender),
            replay: Vec::new(),
            others: Vec::new(),
            max_event_ms: None,
        });
    }
    let mut on_disk = log::partitions(&config.data_dir)?;
    on_disk.retain(|p| (*p as usize) < crate::limits::CORES_MAX);
    for partition in on_disk {
        let core = partition as usize % cores;
        let from = Offset(body.map_or(0, |b| b.offset_of(partition)));
        let reader = Reader::open(&log::partition_dir(&config.data_dir, partition), from)?;
        let plan = &mut plans[core];
        let state = body.and_then(|b| b.partitions.iter().find(|p| p.partition == partition));
        if let Some(max) = state.and_then(|s| s.max_event_ms) {
            plan.max_event_ms = Some(plan.max_event_ms.map_or(max, |m| m.max(max)));
        }
        if partition as usize >= cores {
            plan.others.push(PartitionState {
                partition,
                next_offset: from.0,
                max_event_ms: None,
            });
        }
        plan.replay.push(ReplayTask {
            partition,
            from,
            reader,
        });
    }
    Ok(plans)
}

/// Opens every shard's output (cut back to the checkpoint) and restores the open windows, each
/// to the core that owns its key now.
pub(super) fn open_shards(
    config: &Config,
    cores: usize,
    body: Option<&Body>,
    results: &ResultsHandles,
    alerts: &Alerting,
) -> Result<Vec<Shard>, Error> {
    let data_dir = &config.data_dir;
    let empty = Vec::new();
    let states: &Vec<ShardState> = body.map_or(&empty, |b| &b.shards);
    let same_layout = body.is_some_and(|b| b.cores as usize == cores);
    cut_extra_records(data_dir, cores, states)?;
    let global_frontier = states
        .iter()
        .map(|s| s.closed_through_ms)
        .max()
        .unwrap_or(i64::MIN);
    let lowest_frontier = states
        .iter()
        .map(|s| s.closed_through_ms)
        .min()
        .unwrap_or(i64::MIN);
    let params = Params {
        windows: config.window.specs(),
        quantiles: config.window.quantiles.clone(),
        max_keys: config.window.max_keys_per_shard as usize,
    };
    let mut shards = Vec::new();
    for core in 0..cores as u16 {
        let path = aggregates_path(data_dir, core);
        let state = states.iter().find(|s| s.shard == core);
        let len = state.map_or(0, |s| s.aggregates_len);
        let output = AggregatesWriter::open_with(
            &path,
            len,
            (&config.results).into(),
            results.cursors[core as usize].clone(),
            results.committed[core as usize].clone(),
        )
        .map_err(io_err("cannot open", &path))?;
        // Checked when the configuration was read.
        let mut output = output;
        output.set_columns(
            config
                .window
                .columns()
                .unwrap_or(crate::window::Columns::ALL),
        );
        // Keys move between shards when the core count changed: restore onto the lowest old
        // frontier and close through the highest once every record is in (`Shard::restore`).
        let frontier = if same_layout {
            state.map_or(i64::MIN, |s| s.closed_through_ms)
        } else {
            lowest_frontier
        };
        let mut shard = Shard::new(&params, cores, frontier, output);
        // Until each core has replayed its log (see `Input::hold_frontier_for_replay`).
        shard.hold_every_source();
        if !alerts.rules.is_empty() {
            let dir = record_dir(data_dir, Kind::Alerts, core);
            // Kept as `[results]` keeps aggregates; the board starts from the checkpoint's
            // states, not from the record's first row.
            let record = RecordWriter::open(
                &dir,
                state.map_or(0, |s| s.alerts_len),
                (&config.results).into(),
                results.alert_cursors[core as usize].clone(),
                results.alerts_committed[core as usize].clone(),
            )
            .map_err(io_err("cannot open", &dir))?;
            let engine = Engine::new(alerts.rules.clone(), record, alerts.metrics.clone());
            shard.add_close_hook(Box::new(engine));
        }
        if !alerts.experiments.is_empty() {
            let dir = record_dir(data_dir, Kind::Experiments, core);
            let record = RecordWriter::open(
                &dir,
                state.map_or(0, |s| s.experiments_len),
                (&config.results).into(),
                results.experiment_cursors[core as usize].clone(),
                results.experiments_committed[core as usize].clone(),
            )
            .map_err(io_err("cannot open", &dir))?;
            let engine = crate::experiments::engine::Engine::new(
                alerts.experiments.clone(),
                &params.windows,
                &params.quantiles,
                record,
            );
            shard.add_close_hook(Box::new(engine));
        }
        shards.push(shard);
    }
    for state in states {
        for record in &state.alerts {
            let core = owner(record.key.as_bytes(), cores) as usize;
            if let Some(engine) = shards[core].hook::<Engine>() {
                engine.restore(record.clone());
            }
        }
    }
    for state in states {
        for record in &state.experiments {
            let core = owner(record.key.as_bytes(), cores) as usize;
            if let Some(engine) = shards[core].hook::<crate::experiments::engine::Engine>() {
                engine.restore(record.clone());
            }
        }
    }
    for state in states {
        for (key, value) in &state.gauges {
            shards[owner(key.as_bytes(), cores) as usize].restore_gauge(key, *value);
        }
        for record in state.windows() {
            let record = record?;
            let core = owner(record.key.as_bytes(), cores) as usize;
            shards[core].restore(record).map_err(io_err(
                "cannot write",
                &aggregates_path(data_dir, core as u16),
            ))?;
        }
    }
    if !same_layout {
        for (core, shard) in shards.iter_mut().enumerate() {
            shard.close_restored(global_frontier).map_err(io_err(
                "cannot write",
                &aggregates_path(data_dir, core as u16),
            ))?;
        }
    }
    Ok(shards)
}

/// Loads the newest valid checkpoint in `dir`: the epoch to number on from (the newest
/// file's, whether or not it could be used, so new checkpoints are the newest from now on)
/// and its body, `None` when there is none or it was written by another body version.
pub(super) fn load_checkpoint(dir: &Path) -> Result<(u64, Option<Body>), Error> {
    let loaded = checkpoint::file::load_newest(dir)?;
    // New checkpoints number on from the newest file, whether or not it could be used, so
    // they are the newest from now on.
    let first_epoch = loaded.as_ref().map_or(0, |l| l.epoch);
    let body = match loaded {
        Some(loaded) => match Body::decode(&loaded.body) {
            Ok(body) => {
                tracing::info!(epoch = body.epoch, path = %loaded.path.display(), "resuming from checkpoint");
                Some(body)
            }
            // Another build's window state cannot be restored exactly; the log can.
            Err(checkpoint::Error::Version { found }) => {
                tracing::warn!(path = %loaded.path.display(), found, expected = BODY_VERSION,
                    "checkpoint written by another version of sluice: replaying the whole log");
                None
            }
            Err(e) => return Err(e.into()),
        },
        None => {
            tracing::info!("no checkpoint: replaying the whole log");
            None
        }
    };

    Ok((first_epoch, body))
}

/// Cuts the records of shards beyond the core count (a larger instance left them) back to
/// the checkpoint, to nothing when it does not know them. A record is a directory `s{NNN}`,
/// or a file `s{NNN}.jsonl` of the one-file layout.
fn cut_extra_records(
    data_dir: &std::path::Path,
    cores: usize,
    states: &[ShardState],
) -> Result<(), Error> {
    let agg_dir = data_dir.join("aggregates");
    for entry in std::fs::read_dir(&agg_dir).map_err(io_err("cannot list", &agg_dir))? {
        let entry = entry.map_err(io_err("cannot list", &agg_dir))?;
        let name = entry.file_name();
        let Some(shard) = name.to_str().and_then(|n| {
            let n = n.strip_prefix('s')?;
            n.strip_suffix(".jsonl").unwrap_or(n).parse::<u16>().ok()
        }) else {
            continue;
        };
        if shard as usize >= cores {
            let len = states
                .iter()
                .find(|s| s.shard == shard)
                .map_or(0, |s| s.aggregates_len);
            let dir = aggregates_path(data_dir, shard);
            AggregatesWriter::open(&dir, len).map_err(io_err("cannot cut", &dir))?;
        }
    }
    Ok(())
}
