//! `sluice replay`: the results of a data dir's log computed again with another
//! configuration (windows, alert rules, experiments), into a new data dir, writing nothing
//! in the first.
//!
//! It runs serve's own machinery, not a copy: the shards are opened by `open_shards` (so
//! every close hook serve sets, the alert and experiment engines, is set here too), and the
//! cores are serve's
//! cores (`start_cores`, `worker::run`), replaying the log as they do at every start:
//! `Input::replay_step` reads each batch, parses it with the listener's parser (a line
//! without a timestamp takes the batch's logged ingest time, as in serve's recovery),
//! routes the events by key to their owner shard, and the shards fold them, close windows
//! as the watermarks pass them and write rows to their results records. What differs is
//! set by [`worker::Mode::Replay`]: no listeners, no log partition of its own, no checkpoint
//! to restore, and at the end of the data every window closes (below).
//!
//! What it reads of `--data-dir DIR`: `log/p{NNN}/` (with `log::Reader`: plain reads, no
//! mapping, no index rebuilt, no tail cut) and `listeners.json` (the log's listener ids).
//! Nothing in DIR is created, changed or locked: a `sluice serve` may run on DIR meanwhile
//! (its lock is not taken, and does not stop a reader); each partition is read up to its
//! end when the replay began (`Mode::Replay::ends`), so lines a running serve appends
//! meanwhile are not replayed, and a replay ends even while ingest outpaces it. A partition
//! whose newest segment ends in a bad batch (a torn tail, which serve's recovery would cut
//! at its next start, or a batch a running serve is writing) is read up to its last valid
//! batch, and a warning says where it stopped.
//!
//! What it writes: `--out OUT`, which must be new or empty (two runs never mix their rows),
//! is the data dir of the run, locked as serve locks its own (`sluice.lock`):
//! `aggregates/`, `alerts/` and `experiments/` as serve writes them, `deadletter/` (lines the
//! configuration rejects, and late events), and one checkpoint (`checkpoint/`, below). OUT
//! gets no log. No notifier runs: a replay's alert transitions are rows, never
//! notifications.
//!
//! Cores: `--cores N`, else the configuration's `cores` when it sets one, else as many as
//! DIR's log has partitions. Partition `p` is replayed by core `p % cores`, as serve does
//! after a change of core count, and the events are routed over the cores by key. With a
//! core per partition each partition's events drive their own watermark as they did live,
//! so an event is late in the replay only when it was late in the live run; a core that
//! reads two partitions one after the other carries its watermark from the first into the
//! second, whose older events can then be late. The core count changes only which shard
//! writes a key's rows (`aggregates/s{NNN}`), never the rows.
//!
//! `--from` / `--to`: a batch of lines is replayed when its logged ingest time is in
//! `[from, to)`; the others are read and skipped. Each partition is read from its first
//! batch logged at or after `from` (found by the segments' indexes) to its end.
//!
//! The end of the data: when a core has replayed its partitions it sends a last watermark at
//! the latest end of a window (of any configured size) holding the newest event time it
//! replayed, and a barrier behind it (`Input::end_of_data`). Once every core has, every
//! shard's frontier is the largest of those: every window the log's events opened closes
//! and its row is written, and the alert rules decide (deadman deadlines, stale alerts)
//! through that time, not beyond. So the rows of every window the live run closed are
//! written as it wrote them, and so are those of the windows it still held open when it
//! stopped (which it would have written had it run on). A shard's report of the barrier
//! tells the run it has folded everything; its records are then made durable.
//!
//! Same configuration, same log, same rows: a window's row depends on the events folded
//! into it, and those are the same when no event is late in one run and not the other.
//! Where the live run closed windows early because all its input was idle (its watermark
//! follows the wall clock then), events logged after that idle spell were late there and
//! are folded here. Rows are equal bit for bit when each key's events were logged by one
//! partition (one connection); when several partitions logged events of one key in the
//! same window, the order they are folded in differs between runs, and so may the last
//! digit of a float sum and the `last` of two events with the same time.
//!
//! The checkpoint: OUT's `checkpoint/` gets one, written when every shard has reported: no
//! partitions (OUT has no log), each shard's record positions, its frontier (the end of the
//! data) and its alert states. So `sluice serve --data-dir OUT` would go on from the
//! replay's end with OUT's results kept (without it, serve would cut every record back to
//! the nothing a missing checkpoint names), and `sluice checkpoint inspect` shows the end
//! state.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use super::cores::{Started, start_cores};
use super::listeners::logged_ids;
use super::lock::lock_data_dir;
use super::restore::{Alerting, PartitionPlan, open_shards};
use super::{Error as ServeError, io_err, listener_infos};
use crate::checkpoint::{self, BODY_VERSION, Body, PartitionState, ShardState};
use crate::config::Config;
use crate::log::{self, Offset, Reader};
use crate::metrics::{AlertMetrics, Metrics};
use crate::results::{Kind, RecordReader, record_dir};
use crate::worker::{self, ReplayTask, Report, ResultsHandles};

/// How often the run looks at the cores' progress while it waits for their reports.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Why a replay could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// OUT already holds something.
    #[error(
        "--out {} is not empty: a replay writes into a new or empty directory, so that its \
         rows never mix with another run's",
        path.display()
    )]
    OutNotEmpty {
        /// OUT.
        path: PathBuf,
    },
    /// OUT is DIR, or one is inside the other.
    #[error(
        "--out {} and --data-dir {} overlap: a replay never writes into the data dir it reads",
        out.display(),
        data_dir.display()
    )]
    Overlap {
        /// OUT.
        out: PathBuf,
        /// DIR.
        data_dir: PathBuf,
    },
    /// DIR holds no log.
    #[error("--data-dir {} holds no log (no {}/log/)", path.display(), path.display())]
    NoLog {
        /// DIR.
        path: PathBuf,
    },
    /// `--from` is not before `--to`.
    #[error("--from must be before --to")]
    EmptyRange,
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] log::Error),
    /// The run failed as serve would have (a core, a record, the checkpoint).
    #[error(transparent)]
    Serve(#[from] ServeError),
}

impl Error {
    /// True for what the user asked wrongly (exit 2), false for a runtime failure (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::OutNotEmpty { .. }
                | Error::Overlap { .. }
                | Error::NoLog { .. }
                | Error::EmptyRange
        )
    }
}

/// What to replay, and where to.
#[derive(Debug, Clone)]
pub struct Options {
    /// The data dir whose log is read (and never written).
    pub data_dir: PathBuf,
    /// The data dir of the run: new or empty.
    pub out: PathBuf,
    /// Batches logged at or after this (ms since the epoch).
    pub from_ms: Option<i64>,
    /// Batches logged before this (ms since the epoch).
    pub to_ms: Option<i64>,
    /// Cores (default: the log's partition count; see the module doc).
    pub cores: Option<usize>,
}

/// How far a replay is: lines read of the lines the partitions held when it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Lines read so far (parsed, or skipped by `--from`/`--to`).
    pub read: u64,
    /// Lines from each partition's start to its end when the replay began.
    pub total: u64,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Partitions read.
    pub partitions: usize,
    /// Cores it ran on.
    pub cores: usize,
    /// Lines read (parsed, or skipped by `--from`/`--to`).
    pub read: u64,
    /// Lines parsed: logged in the range by a configured listener.
    pub lines: u64,
    /// Events the lines gave.
    pub events: u64,
    /// Lines the configuration's parsers rejected (in OUT's dead-letter log).
    pub rejected: u64,
    /// Events whose windows had closed (in OUT's dead-letter log).
    pub late: u64,
    /// Rows written to `aggregates/`.
    pub rows: u64,
    /// Alert transitions written to `alerts/`.
    pub alerts: u64,
    /// Experiment comparison rows written to `experiments/`.
    pub experiments: u64,
    /// Wall-clock time the run took.
    pub seconds: f64,
}

/// Replays `options.data_dir`'s log with `config` (its `data_dir` is ignored) into
/// `options.out`; calls `progress` every [`PROGRESS_INTERVAL`] or so.
pub fn run(
    mut config: Config,
    options: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary, Error> {
    let began = Instant::now();
    let partitions = check_options(options)?;
    let data_dir = &options.data_dir;
    let cores = options
        .cores
        .unwrap_or(partitions.len())
        .clamp(1, crate::limits::CORES_MAX);
    config.cores = Some(cores);
    config.data_dir = options.out.clone();
    let _lock = open_out(&options.out)?;

    let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
    let (ids, logged) = logged_ids(data_dir, &names)?;
    if !names.iter().any(|n| logged.contains(n)) {
        tracing::warn!(
            configured = ?names,
            logged = ?logged,
            "no configured listener is named as one that logged lines in --data-dir: every \
             line is skipped (the log knows its listeners by name)"
        );
    }
    // Checked when the configuration was read. No notifier runs, so none is counted.
    let rules: Arc<[crate::alerts::Rule]> = config.alert_rules().unwrap_or_default().into();
    let mut metrics = Metrics::new(cores, listener_infos(&config));
    metrics.alerts = AlertMetrics::new(rules.iter().map(|r| r.name.clone()).collect(), Vec::new());
    let metrics = Arc::new(metrics);
    let results = ResultsHandles::new(cores);
    let alerting = Alerting {
        rules,
        // Checked when the configuration was read.
        experiments: config.experiment_list().unwrap_or_default().into(),
        metrics: metrics.clone(),
    };
    let shards = open_shards(&config, cores, None, &results, &alerting)?;
    let (plans, ends, total) = plan_replay(data_dir, &partitions, cores, options.from_ms)?;
    let started = start_cores(
        &config,
        Started {
            first_epoch: 0,
            log_ids: Arc::new(ids),
            sockets: (0..cores).map(|_| Vec::new()).collect(),
            shards,
            plans,
            results,
            metrics: metrics.clone(),
            mode: worker::Mode::Replay {
                ingest_ms: options.from_ms.unwrap_or(i64::MIN)..options.to_ms.unwrap_or(i64::MAX),
                ends,
            },
        },
    )?;
    let read = || {
        let lines = metrics.cores.iter().map(|c| c.replayed_lines_total.get());
        Progress {
            read: lines.sum(),
            total,
        }
    };
    let waited = wait_for_shards(&started, cores, &mut || progress(read()));
    started.control.exit.store(true, Ordering::Release);
    started.control.wake_all();
    for t in started.threads {
        let _ = t.join();
    }
    write_checkpoint(&config, cores, waited?)?;
    progress(read());
    let mut summary = summarize(&config.data_dir, cores, &metrics)?;
    summary.partitions = partitions.len();
    summary.read = read().read;
    summary.seconds = began.elapsed().as_secs_f64();
    Ok(summary)
}

/// Checks what can be checked before anything is created: the range, DIR's log, OUT apart
/// from DIR. Returns DIR's partitions (those a core can own).
fn check_options(options: &Options) -> Result<Vec<u16>, Error> {
    if options
        .from_ms
        .zip(options.to_ms)
        .is_some_and(|(f, t)| f >= t)
    {
        return Err(Error::EmptyRange);
    }
    let data_dir = &options.data_dir;
    if !data_dir.join("log").is_dir() {
        return Err(Error::NoLog {
            path: data_dir.clone(),
        });
    }
    check_apart(data_dir, &options.out)?;
    let mut partitions = log::partitions(data_dir)?;
    partitions.retain(|p| (*p as usize) < crate::limits::CORES_MAX);
    Ok(partitions)
}

/// Refuses an OUT that is DIR, inside it, or holds it: the run writes nothing under DIR.
fn check_apart(data_dir: &Path, out: &Path) -> Result<(), Error> {
    let dir = std::fs::canonicalize(data_dir).map_err(io_err("cannot resolve", data_dir))?;
    let resolved = resolve(out).map_err(io_err("cannot resolve", out))?;
    if resolved.starts_with(&dir) || dir.starts_with(&resolved) {
        return Err(Error::Overlap {
            out: out.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// `path` made absolute with its symlinks resolved, as far as it exists (the rest is new).
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(base) => return Ok(rest.iter().rev().fold(base, |p, c| p.join(c))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err(e);
                };
                rest.push(name.to_os_string());
                existing = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates OUT (new or empty), takes its lock and makes its directories; the lock is held
/// until the returned file is dropped.
fn open_out(out: &Path) -> Result<std::fs::File, Error> {
    let not_empty = || Error::OutNotEmpty {
        path: out.to_path_buf(),
    };
    if out.exists() && !out.is_dir() {
        return Err(not_empty());
    }
    let entries = |only_lock: bool| -> Result<bool, Error> {
        let Ok(list) = std::fs::read_dir(out) else {
            return Ok(false);
        };
        for entry in list {
            let entry = entry.map_err(io_err("cannot list", out))?;
            if !(only_lock && entry.file_name() == "sluice.lock") {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if entries(false)? {
        return Err(not_empty());
    }
    std::fs::create_dir_all(out).map_err(io_err("cannot create", out))?;
    let lock = lock_data_dir(out)?;
    // Another run may have taken OUT between the look and the lock.
    if entries(true)? {
        return Err(not_empty());
    }
    for sub in [
        "aggregates",
        "alerts",
        "experiments",
        "deadletter",
        "checkpoint",
    ] {
        let dir = out.join(sub);
        std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    }
    Ok(lock)
}

/// What [`plan_replay`] plans: per core its partitions, each partition's end, and the lines
/// from the starts to the ends.
type Plan = (Vec<PartitionPlan>, Vec<(u16, Offset)>, u64);

/// Per core, its partitions to replay (partition `p` on core `p % cores`), each from its
/// first batch logged at or after `from_ms` to its end now; and the lines between.
fn plan_replay(
    data_dir: &Path,
    partitions: &[u16],
    cores: usize,
    from_ms: Option<i64>,
) -> Result<Plan, Error> {
    let mut plans: Vec<PartitionPlan> = (0..cores)
        .map(|_| PartitionPlan {
            appender: None,
            replay: Vec::new(),
            others: Vec::new(),
            max_event_ms: None,
        })
        .collect();
    let mut total = 0;
    let mut ends = Vec::new();
    for &partition in partitions {
        let dir = log::partition_dir(data_dir, partition);
        let reader = match from_ms {
            Some(ms) => Reader::open_at_time(&dir, ms)?,
            None => Reader::open(&dir, Offset(0))?,
        };
        let from = reader.position();
        let end = Reader::open_at_end(&dir)?.position();
        total += end.0.saturating_sub(from.0);
        ends.push((partition, end));
        plans[partition as usize % cores].replay.push(ReplayTask {
            partition,
            from,
            reader,
        });
    }
    Ok((plans, ends, total))
}

/// Follows the cores' reports until every shard has reported the end-of-data barrier, then
/// makes its records durable; returns the shards' states.
fn wait_for_shards(
    started: &super::cores::Cores,
    cores: usize,
    progress: &mut dyn FnMut(),
) -> Result<Vec<ShardState>, Error> {
    let mut states: Vec<ShardState> = Vec::with_capacity(cores);
    let mut syncs = Vec::new();
    let mut next_progress = Instant::now();
    while states.len() < cores {
        match started.reports.recv_timeout(PROGRESS_INTERVAL) {
            Ok(Report::Shard {
                epoch,
                state,
                output,
                records,
            }) => {
                debug_assert_eq!(epoch, worker::END_OF_DATA_EPOCH);
                let shard = state.shard;
                syncs.push(output);
                syncs.extend(records);
                if state.window_count > 0 {
                    tracing::error!(
                        shard,
                        windows = state.window_count,
                        "windows left open at the end of the data"
                    );
                }
                states.push(state);
            }
            Ok(Report::Failed { core, error }) => {
                return Err(ServeError::Core { core, error }.into());
            }
            Ok(Report::Replayed { core }) => tracing::debug!(core, "core replayed its log"),
            Ok(Report::Partitions { .. } | Report::Drained { .. }) => {}
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(ServeError::CoresGone.into()),
        }
        if Instant::now() >= next_progress {
            progress();
            next_progress = Instant::now() + PROGRESS_INTERVAL;
        }
    }
    sync_records(syncs, &started.reports)?;
    states.sort_by_key(|s| s.shard);
    Ok(states)
}

/// Makes every record durable up to its shard's end, retrying while that fails (100 ms
/// doubling to 1 s): rows a full disk held back are still staged on their core, which
/// writes them once it can, as it does in serve.
fn sync_records(
    syncs: Vec<crate::window::OutputSync>,
    reports: &crossbeam_channel::Receiver<Report>,
) -> Result<(), Error> {
    let mut backoff = Duration::from_millis(100);
    for record in syncs {
        let mut warned = false;
        while let Err(e) = record.sync() {
            if !warned {
                tracing::warn!(record = %record.path().display(), error = %e,
                    "a results record cannot be made durable yet; retrying until it can");
                warned = true;
            }
            // Waits, and ends the run if a core fails meanwhile.
            match reports.recv_timeout(backoff) {
                Ok(Report::Failed { core, error }) => {
                    return Err(ServeError::Core { core, error }.into());
                }
                Err(RecvTimeoutError::Disconnected) => return Err(ServeError::CoresGone.into()),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
    Ok(())
}

/// Writes OUT's checkpoint: no partitions (OUT has no log), the shards as they ended.
fn write_checkpoint(config: &Config, cores: usize, shards: Vec<ShardState>) -> Result<(), Error> {
    let body = Body {
        version: BODY_VERSION,
        epoch: 1,
        created_ms: crate::window::now_ms(),
        cores: cores as u16,
        window_sizes_ms: config.window.sizes.iter().map(|s| s.as_i64()).collect(),
        partitions: (0..cores as u16)
            .map(|partition| PartitionState {
                partition,
                next_offset: 0,
                max_event_ms: None,
            })
            .collect(),
        shards,
    };
    let bytes = body.encode().map_err(ServeError::from)?;
    checkpoint::file::write(&config.data_dir.join("checkpoint"), body.epoch, &bytes)
        .map_err(ServeError::from)?;
    Ok(())
}

/// The counts of the run, from the cores' metrics and OUT's records.
fn summarize(out: &Path, cores: usize, metrics: &Metrics) -> Result<Summary, Error> {
    let mut summary = Summary {
        cores,
        ..Summary::default()
    };
    for core in &metrics.cores {
        summary.late += core.late_events_total.get();
        for l in &core.listeners {
            summary.lines += l.lines_total.get();
            summary.events += l.events_total.get();
            summary.rejected += l.rejected_total.iter().map(|c| c.get()).sum::<u64>();
        }
    }
    for shard in 0..cores as u16 {
        summary.rows += rows_in(&record_dir(out, Kind::Aggregates, shard))?;
        summary.alerts += rows_in(&record_dir(out, Kind::Alerts, shard))?;
        summary.experiments += rows_in(&record_dir(out, Kind::Experiments, shard))?;
    }
    Ok(summary)
}

/// Rows in the results record in `dir`.
fn rows_in(dir: &Path) -> Result<u64, Error> {
    let mut reader = RecordReader::open(dir, 0, None);
    let mut rows = 0;
    while reader
        .next_line()
        .map_err(io_err("cannot read", dir))?
        .is_some()
    {
        rows += 1;
    }
    Ok(rows)
}
