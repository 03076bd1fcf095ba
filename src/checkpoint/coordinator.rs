//! The checkpoint coordinator's protocol: the heart of exactly-once.
//!
//! A checkpoint is one epoch of an aligned snapshot (Chandy–Lamport): the coordinator
//! [`begin`](Coordinator::begin)s epoch `e`; each core injects a barrier for `e` into every
//! queue behind the events it has routed and reports its partitions' offsets with a
//! [`FlushTicket`] for its log; each shard, once the barrier of `e` has arrived on every
//! inbound queue, snapshots its open windows and reports them with an [`OutputSync`] for its
//! output. When every core and every shard has reported, the coordinator
//! [`commit`](Coordinator::commit)s.
//!
//! Invariants (each has a unit test below):
//! 1. At most one checkpoint is in flight; epochs only rise.
//! 2. A checkpoint is committed only when every one of the `cores` partitions reports and
//!    every one of the `cores` shards has reported for the same epoch.
//! 3. A report for any other epoch (a stale report of a failed or finished checkpoint) is
//!    ignored: it never completes a checkpoint it does not belong to.
//! 4. Before the checkpoint file is written, every reported log is durable up to its offset
//!    and every reported output is durable up to its length: a checkpoint never names an
//!    offset or a row that is not on disk. If any of that, or the file itself, fails, the
//!    checkpoint is not committed, the newest committed one stays in force, and the next
//!    interval starts a new epoch from fresh reports.
//! 5. Retention floors (per partition: log below it may be deleted) only rise, and only to
//!    the lowest offset among the `keep` newest checkpoints this run committed, so a restart
//!    can fall back to the oldest kept one; until this run has committed `keep`, none rise.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::{BODY_VERSION, Body, Error, PartitionState, ShardState, file};
use crate::log::FlushTicket;
use crate::metrics::Metrics;
use crate::window::{OutputSync, now_ms};

/// What the coordinator needs to know of the instance.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Cores: partitions written and shards, each of which must report.
    pub cores: usize,
    /// Where checkpoint files go.
    pub dir: PathBuf,
    /// Checkpoints kept on disk.
    pub keep: usize,
    /// Window sizes, recorded in the body.
    pub window_sizes_ms: Vec<i64>,
    /// Epoch of the newest checkpoint on disk (0 when none): the first one begun is above it.
    pub last_epoch: u64,
}

/// The reports of the checkpoint in flight.
#[derive(Debug)]
struct InFlight {
    epoch: u64,
    started: Instant,
    final_one: bool,
    partitions: Vec<PartitionState>,
    /// Per core that reported: its partition's log up to its offset, made durable at commit.
    logs: Vec<FlushTicket>,
    shards: Vec<ShardState>,
    /// Per shard that reported: its output, made durable at commit.
    outputs: Vec<OutputSync>,
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The checkpoint file was written.
    Committed {
        /// Its epoch.
        epoch: u64,
        /// It was the final checkpoint of a stop.
        final_one: bool,
        /// When they rose: per partition of a core, the new retention floor.
        floors: Option<Vec<u64>>,
        /// Per shard, the positions of its aggregates, alerts and experiments records that
        /// the checkpoint recorded: each record's retention keeps what follows.
        results: Vec<(u16, u64, u64, u64)>,
    },
    /// It could not be written (see [`Coordinator::commit`]); nothing changed.
    Failed {
        /// Its epoch.
        epoch: u64,
    },
}

/// The coordinator's state between reports.
#[derive(Debug)]
pub struct Coordinator {
    settings: Settings,
    epoch: u64,
    in_flight: Option<InFlight>,
    /// Partition offsets of the checkpoints this run committed, oldest first, at most `keep`.
    kept: VecDeque<Vec<PartitionState>>,
    /// Checkpoints failed since the last one committed (logged once per run of them).
    failures_in_a_row: u64,
    metrics: Arc<Metrics>,
}

impl Coordinator {
    /// A coordinator with nothing in flight.
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Coordinator {
        Coordinator {
            epoch: settings.last_epoch,
            settings,
            in_flight: None,
            kept: VecDeque::new(),
            failures_in_a_row: 0,
            metrics,
        }
    }

    /// The newest epoch begun (the last one on disk before the first).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a checkpoint is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Begins the next epoch and returns it (for the cores to inject barriers of). `None`,
    /// beginning nothing, while one is in flight.
    pub fn begin(&mut self, final_one: bool) -> Option<u64> {
        if self.in_flight.is_some() {
            return None;
        }
        self.epoch += 1;
        self.in_flight = Some(InFlight {
            epoch: self.epoch,
            started: Instant::now(),
            final_one,
            partitions: Vec::new(),
            logs: Vec::new(),
            shards: Vec::new(),
            outputs: Vec::new(),
        });
        Some(self.epoch)
    }

    /// A core injected the barrier of `epoch` with its partitions at these offsets.
    pub fn partitions_reported(
        &mut self,
        epoch: u64,
        partitions: Vec<PartitionState>,
        log: FlushTicket,
    ) {
        if let Some(f) = self.current(epoch) {
            f.partitions.extend(partitions);
            f.logs.push(log);
        }
    }

    /// A shard aligned the barrier of `epoch` and snapshotted.
    pub fn shard_reported(&mut self, epoch: u64, state: ShardState, output: OutputSync) {
        if let Some(f) = self.current(epoch) {
            f.shards.push(state);
            f.outputs.push(output);
        }
    }

    /// A shard that reported for `epoch` has another record (its alerts) to make durable
    /// before the commit.
    pub fn record_reported(&mut self, epoch: u64, output: OutputSync) {
        if let Some(f) = self.current(epoch) {
            f.outputs.push(output);
        }
    }

    /// The checkpoint in flight, if it is of `epoch`.
    fn current(&mut self, epoch: u64) -> Option<&mut InFlight> {
        let f = self.in_flight.as_mut().filter(|f| f.epoch == epoch);
        if f.is_none() {
            tracing::debug!(epoch, "stale checkpoint report ignored");
        }
        f
    }

    /// Whether every core and every shard has reported for the checkpoint in flight.
    pub fn complete(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| {
            f.logs.len() == self.settings.cores && f.shards.len() == self.settings.cores
        })
    }

    /// Commits the complete checkpoint in flight: makes every log and output durable up to
    /// what was reported, then writes the file. A failure of an interval's checkpoint is
    /// counted and logged (once per run of failures) and returns [`Outcome::Failed`]; a
    /// failure of the final one is an error (the stop cannot promise its state).
    ///
    /// # Panics
    /// If the checkpoint in flight is not [`complete`](Self::complete): the caller's bug.
    pub fn commit(&mut self) -> Result<Outcome, Error> {
        assert!(self.complete(), "commit of an incomplete checkpoint");
        let f = self.in_flight.take().expect("complete implies in flight");
        let mut partitions = f.partitions;
        partitions.sort_by_key(|p| p.partition);
        let mut shards = f.shards;
        shards.sort_by_key(|s| s.shard);
        let body = Body {
            version: BODY_VERSION,
            epoch: f.epoch,
            created_ms: now_ms(),
            cores: self.settings.cores as u16,
            window_sizes_ms: self.settings.window_sizes_ms.clone(),
            partitions,
            shards,
        };
        let m = &self.metrics.checkpoint;
        let written = body.encode().and_then(|bytes| {
            // The log and the outputs first: a checkpoint never names an offset or a length
            // whose bytes are not durable.
            f.logs
                .iter()
                .try_for_each(FlushTicket::make_durable)
                .map_err(Error::Log)?;
            f.outputs.iter().try_for_each(|o| {
                o.sync().map_err(|source| Error::Io {
                    path: o.path().to_path_buf(),
                    source,
                })
            })?;
            let path = file::write(&self.settings.dir, f.epoch, &bytes)?;
            Ok((path, bytes.len()))
        });
        match written {
            Ok((path, bytes)) => {
                m.committed_total.add(1);
                m.last_epoch.set(f.epoch as i64);
                m.last_bytes.set(bytes as i64);
                m.last_commit_unix_ms.set(now_ms());
                let now = Instant::now();
                let took = now.saturating_duration_since(f.started);
                m.last_duration_us.set(took.as_micros() as i64);
                m.duration.record(took, now);
                tracing::debug!(epoch = f.epoch, path = %path.display(), bytes, "checkpoint committed");
                if self.failures_in_a_row > 0 {
                    tracing::info!(
                        epoch = f.epoch,
                        failed = self.failures_in_a_row,
                        "checkpoints commit again"
                    );
                    self.failures_in_a_row = 0;
                }
                if let Err(e) = file::prune(&self.settings.dir, self.settings.keep) {
                    tracing::warn!(error = %e, "cannot prune old checkpoints");
                }
                Ok(Outcome::Committed {
                    epoch: f.epoch,
                    final_one: f.final_one,
                    results: body
                        .shards
                        .iter()
                        .map(|s| (s.shard, s.aggregates_len, s.alerts_len, s.experiments_len))
                        .collect(),
                    floors: self.raise_retention_floors(body.partitions),
                })
            }
            Err(e) => {
                m.failed_total.add(1);
                if f.final_one {
                    return Err(e);
                }
                // Said once per episode (a full disk fails every interval until it is freed);
                // sluice_checkpoint_failures_total counts each one.
                if self.failures_in_a_row == 0 {
                    tracing::error!(epoch = f.epoch, error = %e, "checkpoint failed; retrying at each interval");
                } else {
                    tracing::debug!(epoch = f.epoch, error = %e, "checkpoint failed again");
                }
                self.failures_in_a_row += 1;
                Ok(Outcome::Failed { epoch: f.epoch })
            }
        }
    }

    /// Notes a committed checkpoint's offsets; returns the retention floors of the cores'
    /// partitions once this run has committed `keep` checkpoints (see invariant 5).
    fn raise_retention_floors(&mut self, partitions: Vec<PartitionState>) -> Option<Vec<u64>> {
        self.kept.push_back(partitions);
        while self.kept.len() > self.settings.keep {
            self.kept.pop_front();
        }
        if self.kept.len() < self.settings.keep {
            return None;
        }
        let floors = (0..self.settings.cores)
            .map(|core| {
                self.kept
                    .iter()
                    .map(|ps| {
                        ps.iter()
                            .find(|p| p.partition as usize == core)
                            .map_or(0, |p| p.next_offset)
                    })
                    .min()
                    .unwrap_or(0)
            })
            .collect();
        Some(floors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{self, Fault, Op};
    use crate::log::{Appender, FlushPolicy, Offset, Options};
    use crate::metrics::Metrics;
    use crate::window::AggregatesWriter;

    /// One core's real log and output in a temp dir, to report from.
    struct Core {
        appender: Appender,
        output: AggregatesWriter,
    }

    struct Rig {
        _dir: tempfile::TempDir,
        dir: PathBuf,
        cores: Vec<Core>,
        coordinator: Coordinator,
    }

    fn rig(cores: usize, keep: usize) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let options = Options {
            segment_bytes: crate::limits::SEGMENT_BYTES_MIN,
            flush: FlushPolicy::Never,
            flush_interval_ms: 200,
            retention_bytes: 0,
            retention_hours: 0,
        };
        let cores: Vec<Core> = (0..cores)
            .map(|c| Core {
                appender: Appender::open(&crate::log::partition_dir(&dir, c as u16), options)
                    .unwrap()
                    .0,
                output: AggregatesWriter::open(&dir.join(format!("s{c:03}.jsonl")), 0).unwrap(),
            })
            .collect();
        let settings = Settings {
            cores: cores.len(),
            dir: dir.join("checkpoint"),
            keep,
            window_sizes_ms: vec![1_000],
            last_epoch: 7,
        };
        std::fs::create_dir_all(&settings.dir).unwrap();
        let metrics = Arc::new(Metrics::new(settings.cores, Vec::new()));
        Rig {
            _dir: tmp,
            coordinator: Coordinator::new(settings, metrics),
            dir,
            cores,
        }
    }

    impl Rig {
        /// Core `c` appends `lines` lines and reports its partition for `epoch`.
        fn report_partition(&mut self, c: usize, epoch: u64, lines: usize) {
            let core = &mut self.cores[c];
            let mut w = core.appender.begin(0, 0);
            for i in 0..lines {
                w.push(format!("line {i}").as_bytes()).unwrap();
            }
            w.finish(&mut Vec::new()).unwrap();
            let offset = core.appender.next_offset();
            let ticket = core.appender.flush_ticket();
            let partitions = vec![PartitionState {
                partition: c as u16,
                next_offset: offset.0,
                max_event_ms: None,
            }];
            self.coordinator
                .partitions_reported(epoch, partitions, ticket);
        }

        /// Shard `c` writes a row and reports its snapshot for `epoch`.
        fn report_shard(&mut self, c: usize, epoch: u64) {
            let core = &mut self.cores[c];
            let spec = crate::window::WindowSpec::tumbling(1_000);
            let agg = crate::window::Agg::one(1.0, 0);
            core.output.write_window("k", &spec, 0, &agg, &[]).unwrap();
            let (sync, staged) = core.output.sync_handle();
            staged.unwrap();
            let state = ShardState {
                shard: c as u16,
                aggregates_len: core.output.len(),
                closed_through_ms: 0,
                windows: Vec::new(),
                window_count: 0,
                gauges: Vec::new(),
                alerts_len: 0,
                alerts: Vec::new(),
                experiments_len: 0,
                experiments: Vec::new(),
            };
            self.coordinator.shard_reported(epoch, state, sync);
        }

        fn report_all(&mut self, epoch: u64) {
            for c in 0..self.cores.len() {
                self.report_partition(c, epoch, 3);
                self.report_shard(c, epoch);
            }
        }

        fn newest_on_disk(&self) -> Option<Body> {
            file::load_newest(&self.dir.join("checkpoint"))
                .unwrap()
                .map(|l| Body::decode(&l.body).unwrap())
        }
    }

    #[test]
    fn epochs_rise_from_the_last_on_disk_and_one_is_in_flight_at_most() {
        let mut rig = rig(2, 3);
        assert_eq!(rig.coordinator.epoch(), 7);
        assert_eq!(rig.coordinator.begin(false), Some(8));
        assert!(rig.coordinator.in_flight());
        assert_eq!(rig.coordinator.begin(false), None);
        rig.report_all(8);
        assert!(matches!(
            rig.coordinator.commit().unwrap(),
            Outcome::Committed { epoch: 8, .. }
        ));
        assert_eq!(rig.coordinator.begin(true), Some(9));
    }

    #[test]
    fn commits_only_once_every_partition_and_every_shard_reported() {
        let mut rig = rig(2, 3);
        let epoch = rig.coordinator.begin(false).unwrap();
        rig.report_partition(0, epoch, 2);
        rig.report_partition(1, epoch, 5);
        assert!(!rig.coordinator.complete(), "no shard yet");
        rig.report_shard(1, epoch);
        assert!(!rig.coordinator.complete(), "one shard missing");
        rig.report_shard(0, epoch);
        assert!(rig.coordinator.complete());
        rig.coordinator.commit().unwrap();
        let body = rig.newest_on_disk().unwrap();
        assert_eq!(body.epoch, epoch);
        assert_eq!((body.offset_of(0), body.offset_of(1)), (2, 5));
        assert_eq!(
            body.shards.iter().map(|s| s.shard).collect::<Vec<_>>(),
            [0, 1]
        );
        assert!(!rig.coordinator.in_flight());
    }

    #[test]
    #[should_panic(expected = "incomplete")]
    fn committing_an_incomplete_checkpoint_is_a_bug() {
        let mut rig = rig(2, 3);
        let epoch = rig.coordinator.begin(false).unwrap();
        rig.report_partition(0, epoch, 1);
        let _ = rig.coordinator.commit();
    }

    #[test]
    fn a_stale_report_never_completes_a_checkpoint() {
        let mut rig = rig(1, 3);
        // Reports of epoch 8 that arrive after it failed, and early ones of epoch 10.
        let epoch = rig.coordinator.begin(false).unwrap();
        rig.report_partition(0, epoch - 1, 1);
        rig.report_shard(0, epoch - 1);
        rig.report_partition(0, epoch + 1, 1);
        rig.report_shard(0, epoch + 1);
        assert!(!rig.coordinator.complete());
        rig.report_partition(0, epoch, 1);
        rig.report_shard(0, epoch);
        assert!(rig.coordinator.complete());
    }

    #[test]
    fn a_failed_log_flush_commits_nothing_and_the_next_epoch_starts_fresh() {
        let mut rig = rig(1, 3);
        let epoch = rig.coordinator.begin(false).unwrap();
        rig.report_all(epoch);
        let outcome = commit_with_a_failing_sync(&mut rig).unwrap();
        assert_eq!(outcome, Outcome::Failed { epoch });
        assert!(rig.newest_on_disk().is_none(), "nothing committed");
        let metrics = rig.coordinator.metrics.clone();
        assert_eq!(metrics.checkpoint.failed_total.get(), 1);
        let durations = || metrics.latency(crate::metrics::Latency::Checkpoint, None);
        assert_eq!(durations().count, 0, "a failed checkpoint has no duration");
        // The next epoch needs its own reports.
        let next = rig.coordinator.begin(false).unwrap();
        assert_eq!(next, epoch + 1);
        assert!(!rig.coordinator.complete());
        rig.report_all(next);
        assert!(matches!(
            rig.coordinator.commit().unwrap(),
            Outcome::Committed { .. }
        ));
        assert_eq!(rig.newest_on_disk().unwrap().epoch, next);
        // The committed one's duration is in the summary, as in the gauge.
        let d = durations();
        assert_eq!(d.count, 1);
        let gauge_s = metrics.checkpoint.last_duration_us.get() as f64 / 1e6;
        assert!(
            (d.max_seconds.unwrap() - gauge_s).abs() < 1e-5,
            "{d:?} vs {gauge_s}"
        );
    }

    #[test]
    fn an_output_shorter_than_reported_commits_nothing() {
        let mut rig = rig(1, 3);
        let epoch = rig.coordinator.begin(false).unwrap();
        rig.report_all(epoch);
        // The file lost its row (cut from outside): the checkpoint must not name it.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(rig.dir.join("s000.jsonl").join(format!("{:020}.jsonl", 0)))
            .unwrap();
        file.set_len(0).unwrap();
        assert_eq!(rig.coordinator.commit().unwrap(), Outcome::Failed { epoch });
        assert!(rig.newest_on_disk().is_none());
    }

    #[test]
    fn a_failed_final_checkpoint_is_an_error() {
        let mut rig = rig(1, 3);
        let epoch = rig.coordinator.begin(true).unwrap();
        rig.report_all(epoch);
        let result = commit_with_a_failing_sync(&mut rig);
        assert!(result.is_err());
        assert!(rig.newest_on_disk().is_none());
    }

    #[test]
    fn retention_floors_rise_to_the_oldest_kept_checkpoint_once_keep_are_committed() {
        let mut rig = rig(2, 3);
        let mut floors = Vec::new();
        let mut offsets = Vec::new();
        for _ in 0..5 {
            let epoch = rig.coordinator.begin(false).unwrap();
            rig.report_all(epoch);
            offsets.push((
                rig.cores[0].appender.next_offset(),
                rig.cores[1].appender.next_offset(),
            ));
            match rig.coordinator.commit().unwrap() {
                Outcome::Committed { floors: f, .. } => floors.push(f),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(floors[0], None);
        assert_eq!(floors[1], None);
        let oldest_kept = |i: usize| {
            let (a, b): (Offset, Offset) = offsets[i - 2];
            Some(vec![a.0, b.0])
        };
        assert_eq!(floors[2], oldest_kept(2));
        assert_eq!(floors[3], oldest_kept(3));
        assert_eq!(floors[4], oldest_kept(4));
        // Only the `keep` newest files stay on disk.
        let files = std::fs::read_dir(rig.dir.join("checkpoint"))
            .unwrap()
            .count();
        assert_eq!(files, 3);
    }

    /// Commits while the first durability call fails with ENOSPC (the fault layer).
    fn commit_with_a_failing_sync(rig: &mut Rig) -> Result<Outcome, Error> {
        fault::arm(Fault {
            op: Op::Sync,
            after: 0,
            times: 1,
            errno: 28,
        });
        let result = rig.coordinator.commit();
        fault::clear();
        result
    }
}
