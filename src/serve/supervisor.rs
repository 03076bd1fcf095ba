//! The supervisor: the calling thread once the cores run.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::Error;
use crate::checkpoint::coordinator::{Coordinator, Outcome};
use crate::metrics::Metrics;
use crate::ops::{self, Signals};
use crate::worker::{Control, Report};

/// The calling thread once the cores run: follows their reports, drives the checkpoint
/// protocol ([`Coordinator`]) at each interval, and stops on a signal.
pub(super) struct Supervisor {
    pub(super) cores: usize,
    pub(super) interval: Duration,
    pub(super) coordinator: Coordinator,
    pub(super) metrics: Arc<Metrics>,
    pub(super) control: Arc<Control>,
}

/// What the supervisor has seen of the cores.
#[derive(Debug, Default)]
struct Seen {
    replayed: usize,
    drained: usize,
    stopping: bool,
}

impl Supervisor {
    pub(super) fn run(
        &mut self,
        reports: &Receiver<Report>,
        signals: &Signals,
    ) -> Result<(), Error> {
        let mut seen = Seen::default();
        let mut next_checkpoint = Instant::now() + self.interval;
        let watchdog = ops::watchdog_interval();
        let mut next_watchdog = Instant::now();
        loop {
            match reports.recv_timeout(Duration::from_millis(50)) {
                Ok(report) => self.on_report(report, &mut seen)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::CoresGone);
                }
            }
            if self.coordinator.complete() && self.commit()? {
                return Ok(());
            }
            if signals.stop.load(Ordering::Acquire) && !seen.stopping {
                seen.stopping = true;
                self.stop();
            }
            if signals.hangup.swap(false, Ordering::AcqRel) {
                tracing::info!("SIGHUP: nothing to reopen (logs go to stderr)");
            }
            let now = Instant::now();
            if !self.coordinator.in_flight() {
                let begun = if seen.stopping && seen.drained == self.cores {
                    self.coordinator.begin(true)
                } else if !seen.stopping && now >= next_checkpoint {
                    next_checkpoint = now + self.interval;
                    self.coordinator.begin(false)
                } else {
                    None
                };
                if let Some(epoch) = begun {
                    self.control
                        .checkpoint_epoch
                        .store(epoch, Ordering::Release);
                    self.control.wake_all();
                }
            }
            if let Some(interval) = watchdog.filter(|_| now >= next_watchdog) {
                ops::notify_watchdog();
                next_watchdog = now + interval;
            }
        }
    }

    fn on_report(&mut self, report: Report, seen: &mut Seen) -> Result<(), Error> {
        match report {
            Report::Replayed { core } => {
                seen.replayed += 1;
                tracing::debug!(core, "core serving");
                if seen.replayed == self.cores {
                    self.metrics.ready.store(true, Ordering::Release);
                    ops::notify_ready(&format!("serving on {} cores", self.cores));
                    tracing::info!("ready");
                }
            }
            Report::Partitions {
                epoch,
                partitions,
                log,
                ..
            } => self.coordinator.partitions_reported(epoch, partitions, log),
            Report::Shard {
                epoch,
                state,
                output,
                records,
            } => {
                self.coordinator.shard_reported(epoch, state, output);
                for record in records {
                    self.coordinator.record_reported(epoch, record);
                }
            }
            Report::Drained { core } => {
                seen.drained += 1;
                tracing::debug!(core, "core drained");
            }
            Report::Failed { core, error } => return Err(Error::Core { core, error }),
        }
        Ok(())
    }

    /// Commits the complete checkpoint and raises the retention floors it allows; true when
    /// it was the final one (time to exit).
    fn commit(&mut self) -> Result<bool, Error> {
        let Outcome::Committed {
            epoch,
            final_one,
            floors,
            results,
        } = self.coordinator.commit()?
        else {
            return Ok(false);
        };
        let handles = &self.control.results;
        for (shard, aggregates, alerts, experiments) in results {
            if let Some(c) = handles.committed.get(shard as usize) {
                c.fetch_max(aggregates, Ordering::AcqRel);
            }
            if let Some(c) = handles.alerts_committed.get(shard as usize) {
                c.fetch_max(alerts, Ordering::AcqRel);
            }
            if let Some(c) = handles.experiments_committed.get(shard as usize) {
                c.fetch_max(experiments, Ordering::AcqRel);
            }
        }
        let floors = floors.unwrap_or_default();
        for (floor, offset) in self.control.retention_floors.iter().zip(floors) {
            floor.fetch_max(offset, Ordering::AcqRel);
        }
        if final_one {
            tracing::info!(epoch, "final checkpoint written; exiting");
        }
        Ok(final_one)
    }

    /// A stop signal: not ready, stop reading, drain.
    fn stop(&self) {
        tracing::info!("stopping: draining input");
        ops::notify_stopping();
        self.metrics.stopping.store(true, Ordering::Release);
        self.metrics.ready.store(false, Ordering::Release);
        self.control.stop.store(true, Ordering::Release);
        self.control.wake_all();
    }
}
