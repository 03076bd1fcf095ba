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

impl Supervisor {
    pub(super) fn run(
        &mut self,
        reports: &Receiver<Report>,
        signals: &Signals,
    ) -> Result<(), Error> {
        let mut replayed = 0;
        let mut drained = 0;
        let mut stopping = false;
        let mut next_checkpoint = Instant::now() + self.interval;
        let watchdog = ops::watchdog_interval();
        let mut next_watchdog = Instant::now();
        loop {
            match reports.recv_timeout(Duration::from_millis(50)) {
                Ok(Report::Replayed { core }) => {
                    replayed += 1;
                    tracing::debug!(core, "core serving");
                    if replayed == self.cores {
                        self.metrics.ready.store(true, Ordering::Release);
                        ops::notify_ready(&format!("serving on {} cores", self.cores));
                        tracing::info!("ready");
                    }
                }
                Ok(Report::Partitions {
                    epoch,
                    partitions,
                    log,
                    ..
                }) => self.coordinator.partitions_reported(epoch, partitions, log),
                Ok(Report::Shard {
                    epoch,
                    state,
                    output,
                }) => self.coordinator.shard_reported(epoch, state, output),
                Ok(Report::Drained { core }) => {
                    drained += 1;
                    tracing::debug!(core, "core drained");
                }
                Ok(Report::Failed { core, error }) => return Err(Error::Core { core, error }),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Core {
                        core: u16::MAX,
                        error: "every core has exited".into(),
                    });
                }
            }

            if self.coordinator.complete() {
                match self.coordinator.commit()? {
                    Outcome::Committed {
                        epoch,
                        final_one,
                        floors,
                        results,
                    } => {
                        for (shard, position) in results {
                            if let Some(c) = self.control.results.committed.get(shard as usize) {
                                c.fetch_max(position, Ordering::AcqRel);
                            }
                        }
                        for (floor, offset) in self
                            .control
                            .retention_floors
                            .iter()
                            .zip(floors.unwrap_or_default())
                        {
                            floor.fetch_max(offset, Ordering::AcqRel);
                        }
                        if final_one {
                            tracing::info!(epoch, "final checkpoint written; exiting");
                            return Ok(());
                        }
                    }
                    Outcome::Failed { .. } => {}
                }
            }

            if signals.stop.load(Ordering::Acquire) && !stopping {
                stopping = true;
                tracing::info!("stopping: draining input");
                ops::notify_stopping();
                self.metrics.stopping.store(true, Ordering::Release);
                self.metrics.ready.store(false, Ordering::Release);
                self.control.stop.store(true, Ordering::Release);
                self.control.wake_all();
            }
            if signals.hangup.swap(false, Ordering::AcqRel) {
                tracing::info!("SIGHUP: nothing to reopen (logs go to stderr)");
            }
            let now = Instant::now();
            if !self.coordinator.in_flight() {
                let begun = if stopping && drained == self.cores {
                    self.coordinator.begin(true)
                } else if !stopping && now >= next_checkpoint {
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
}
