//! Starting the cores: one poller and one thread per core, the queues between them, and the
//! control block they share with the supervisor.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, unbounded};

use super::restore::PartitionPlan;
use super::{Error, io_err};
use crate::config::Config;
use crate::deadletter::DeadLetter;
use crate::limits::OPEN_QUERIES_QUEUED_MAX;
use crate::metrics::Metrics;
use crate::net::BoundSocket;
use crate::net::conns::FdBudget;
use crate::net::epoll::EpollBackend;
use crate::ops;
use crate::query::OpenQueries;
use crate::route::{self, Doorbell};
use crate::window::Shard;
use crate::worker::{self, Control, Report, ResultsHandles, WorkerSetup};

/// What start-up prepared for the cores.
pub(super) struct Started {
    pub(super) first_epoch: u64,
    pub(super) log_ids: Arc<Vec<u16>>,
    /// Per core, its sockets of every listener.
    pub(super) sockets: Vec<Vec<(u16, BoundSocket)>>,
    pub(super) shards: Vec<Shard>,
    pub(super) plans: Vec<PartitionPlan>,
    pub(super) results: ResultsHandles,
    pub(super) metrics: Arc<Metrics>,
    /// Serve after the replay (`sluice serve`), or end the data (`sluice replay`).
    pub(super) mode: worker::Mode,
}

/// The running cores, as `serve` holds them.
pub(super) struct Cores {
    pub(super) threads: Vec<JoinHandle<()>>,
    pub(super) control: Arc<Control>,
    pub(super) reports: Receiver<Report>,
    /// The query API's way to the shards' open windows.
    pub(super) open_queries: OpenQueries,
}

/// Starts one thread per core; returns them, their control block and their reports.
pub(super) fn start_cores(config: &Config, mut started: Started) -> Result<Cores, Error> {
    let cores = config.core_count();
    let data_dir = config.data_dir.as_path();
    let fds = Arc::new(FdBudget::for_limit(ops::raise_fd_limit()));
    tracing::info!(
        descriptors = fds.max(),
        "TCP connections may hold this many descriptors; the rest are kept for files and admin"
    );
    let backends: Vec<EpollBackend> = (0..cores)
        .map(|_| EpollBackend::with_fd_budget(fds.clone()))
        .collect::<Result<_, _>>()
        .map_err(io_err("cannot create poller", data_dir))?;
    let doorbells: Vec<Doorbell> = backends
        .iter()
        .map(|b| Doorbell {
            sleeping: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(b.waker()),
        })
        .collect();
    let mesh = route::mesh(&doorbells);
    let control = Arc::new(Control {
        checkpoint_epoch: std::sync::atomic::AtomicU64::new(started.first_epoch),
        stop: AtomicBool::new(false),
        exit: AtomicBool::new(false),
        doorbells,
        retention_floors: (0..cores)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
        balance: crate::worker::Balance::new(cores),
        results: started.results,
    });
    let (report_tx, report_rx) = unbounded();
    let bells: Vec<Doorbell> = control.doorbells.clone();
    let (open_queries, mut open_rx) = OpenQueries::new(
        cores,
        OPEN_QUERIES_QUEUED_MAX,
        Arc::new(move |shard| {
            if let Some(bell) = bells.get(shard) {
                bell.ring();
            }
        }),
    );
    let mut open_rx = open_rx.drain(..);
    let listeners = Arc::new(config.listeners.clone());
    // Checked when the configuration was read.
    let experiments = config.experiment_list().unwrap_or_default();
    let splits: Vec<Option<crate::experiments::split::Split>> = (0..listeners.len())
        .map(|i| {
            experiments
                .iter()
                .find(|e| e.listener == i)
                .map(crate::experiments::split::Split::new)
        })
        .collect();
    let pins = core_affinity::get_core_ids().unwrap_or_default();

    let mut threads = Vec::new();
    let mut routers = mesh.routers.into_iter();
    let mut inbounds = mesh.inbounds.into_iter();
    for (id, backend) in backends.into_iter().enumerate() {
        let plan = started.plans.remove(0);
        let setup = WorkerSetup {
            id: id as u16,
            pin: pins.get(id % pins.len().max(1)).copied(),
            listeners: listeners.clone(),
            listener_log_ids: started.log_ids.clone(),
            splits: splits.clone(),
            sockets: std::mem::take(&mut started.sockets[id]),
            backend,
            router: routers.next().expect("one router per core"),
            inbound: inbounds.next().expect("one inbound set per core"),
            appender: plan.appender,
            mode: started.mode.clone(),
            replay: plan.replay,
            partitions: plan.others,
            max_event_ms: plan.max_event_ms,
            shard: started.shards.remove(0),
            open_queries: open_rx.next().expect("one open-query queue per core"),
            deadletter: DeadLetter::open(
                data_dir,
                id as u16,
                &(&config.deadletter).into(),
                started.metrics.clone(),
            )
            .map_err(io_err("cannot open dead-letter log in", data_dir))?,
            allowed_lateness_ms: config.window.allowed_lateness.as_i64(),
            metrics: started.metrics.clone(),
            control: control.clone(),
            reports: report_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("sluice-core-{id}"))
            .spawn(move || worker::run(setup))
            .map_err(io_err("cannot start core thread for", data_dir))?;
        threads.push(thread);
    }
    drop(report_tx);
    Ok(Cores {
        threads,
        control,
        reports: report_rx,
        open_queries,
    })
}
