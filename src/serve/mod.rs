//! `sluice serve`: recovery, the cores, the admin server and the supervisor.
//!
//! Start-up, in order: bind every listener on every core (`SO_REUSEPORT`; a port 0 is chosen
//! once and shared), load the newest valid checkpoint, open every log partition (recovering
//! torn tails, never below the checkpoint's offsets), cut each aggregates file back to its
//! checkpointed length, restore the shards' open windows, then start the cores. Each core
//! replays its partition from the checkpointed offset before it serves its sockets;
//! `/readyz` turns ready when every core has.
//!
//! The supervisor (the calling thread) follows the cores' reports and drives the checkpoint
//! protocol (`checkpoint::coordinator`) every `checkpoint.interval_ms`. SIGTERM/SIGINT: stop
//! reading, drain, final checkpoint, exit.

#![forbid(unsafe_code)]

mod listeners;
mod lock;
mod restore;
mod supervisor;

use listeners::{bind_all, listener_ids, write_atomic};
use lock::lock_data_dir;
use restore::{open_shards, plan_partitions};
use supervisor::Supervisor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::unbounded;
use serde::{Deserialize, Serialize};

use crate::admin::{AdminServer, AdminState};
use crate::checkpoint::coordinator::Coordinator;
use crate::checkpoint::{self, BODY_VERSION, Body};
use crate::config::Config;
use crate::deadletter::DeadLetter;
use crate::log;
use crate::metrics::{ListenerInfo, Metrics};
use crate::net::conns::FdBudget;
use crate::net::epoll::EpollBackend;
use crate::ops::{self, Signals};
use crate::route::{self, Doorbell};
use crate::worker::{self, Control, WorkerSetup};

/// Why `serve` stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot bind listener `{listener}` on {proto}://{addr}: {source}")]
    Bind {
        /// Listener name.
        listener: String,
        /// `tcp` or `udp`.
        proto: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A file or directory of the data dir could not be used.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The log could not be opened.
    #[error(transparent)]
    Log(#[from] log::Error),
    /// The checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    /// Another process serves from the same data dir.
    #[error("data dir {} is in use by another sluice{}", path.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    DataDirInUse {
        /// The data dir.
        path: PathBuf,
        /// The pid recorded in its lock file, if readable.
        pid: Option<u32>,
    },
    /// A core failed.
    #[error("core {core} failed: {error}")]
    Core {
        /// Core.
        core: u16,
        /// What happened.
        error: String,
    },
}

/// Where the running instance can be reached: written to `data_dir/endpoints.json` once every
/// socket is bound (useful with port 0).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    /// Process id.
    pub pid: u32,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Every listener.
    pub listeners: Vec<EndpointListener>,
}

/// One listener in [`Endpoints`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointListener {
    /// Name.
    pub name: String,
    /// `tcp` or `udp`.
    pub proto: String,
    /// Format.
    pub format: String,
    /// Bound address.
    pub addr: SocketAddr,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs the appliance until a stop signal; returns after the final checkpoint.
pub fn run(config: Config, signals: Signals) -> Result<(), Error> {
    let cores = config.core_count();
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(io_err("cannot create", &data_dir))?;
    // Held until this returns (the lock goes with the process, however it ends).
    let _lock = lock_data_dir(&data_dir)?;
    for sub in ["log", "checkpoint", "aggregates", "deadletter"] {
        let dir = data_dir.join(sub);
        std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    }
    let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
    let log_ids = Arc::new(listener_ids(&data_dir, &names)?);
    let (mut sockets, addrs) = bind_all(&config, cores)?;
    let admin_listener = crate::admin::bind(config.admin.addr).map_err(|source| Error::Bind {
        listener: "admin".into(),
        proto: "tcp",
        addr: config.admin.addr,
        source,
    })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(io_err("cannot read address of", Path::new("admin")))?;

    let checkpoint_dir = data_dir.join("checkpoint");
    let loaded = checkpoint::file::load_newest(&checkpoint_dir)?;
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

    let listener_infos = config
        .listeners
        .iter()
        .map(|l| ListenerInfo {
            name: l.name.clone(),
            proto: l.proto.as_str(),
            format: l.format.as_str(),
        })
        .collect();
    let metrics = Arc::new(Metrics::new(cores, listener_infos));
    let results = crate::worker::ResultsHandles::new(cores);
    let mut shards = open_shards(&config, cores, body.as_ref(), &results)?;
    let mut partition_plan = plan_partitions(&config, cores, body.as_ref(), &metrics)?;

    let fds = Arc::new(FdBudget::for_limit(ops::raise_fd_limit()));
    tracing::info!(
        descriptors = fds.max(),
        "TCP connections may hold this many descriptors; the rest are kept for files and admin"
    );
    let backends: Vec<EpollBackend> = (0..cores)
        .map(|_| EpollBackend::with_fd_budget(fds.clone()))
        .collect::<Result<_, _>>()
        .map_err(io_err("cannot create poller", &data_dir))?;
    let doorbells: Vec<Doorbell> = backends
        .iter()
        .map(|b| Doorbell {
            sleeping: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(b.waker()),
        })
        .collect();
    let mesh = route::mesh(&doorbells);
    let control = Arc::new(Control {
        checkpoint_epoch: std::sync::atomic::AtomicU64::new(first_epoch),
        stop: AtomicBool::new(false),
        exit: AtomicBool::new(false),
        doorbells,
        retention_floors: (0..cores)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
        balance: crate::worker::Balance::new(cores),
        results,
    });
    let (report_tx, report_rx) = unbounded();
    let listeners = Arc::new(config.listeners.clone());
    let pins = core_affinity::get_core_ids().unwrap_or_default();

    let mut threads = Vec::new();
    let mut routers = mesh.routers.into_iter();
    let mut inbounds = mesh.inbounds.into_iter();
    for (id, backend) in backends.into_iter().enumerate() {
        let plan = partition_plan.remove(0);
        let setup = WorkerSetup {
            id: id as u16,
            pin: pins.get(id % pins.len().max(1)).copied(),
            listeners: listeners.clone(),
            listener_log_ids: log_ids.clone(),
            sockets: std::mem::take(&mut sockets[id]),
            backend,
            router: routers.next().expect("one router per core"),
            inbound: inbounds.next().expect("one inbound set per core"),
            appender: plan.appender,
            replay: plan.replay,
            partitions: plan.others,
            max_event_ms: plan.max_event_ms,
            shard: shards.remove(0),
            deadletter: DeadLetter::open(&data_dir, id as u16, &config.deadletter, metrics.clone())
                .map_err(io_err("cannot open dead-letter log in", &data_dir))?,
            allowed_lateness_ms: config.window.allowed_lateness.as_i64(),
            metrics: metrics.clone(),
            control: control.clone(),
            reports: report_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("sluice-core-{id}"))
            .spawn(move || worker::run(setup))
            .map_err(io_err("cannot start core thread for", &data_dir))?;
        threads.push(thread);
    }
    drop(report_tx);

    let admin = AdminServer::start(
        admin_listener,
        AdminState {
            metrics: metrics.clone(),
        },
    )
    .map_err(io_err("cannot start admin server on", Path::new("admin")))?;
    let endpoints = Endpoints {
        pid: std::process::id(),
        admin: admin_addr,
        listeners: config
            .listeners
            .iter()
            .zip(&addrs)
            .map(|(l, a)| EndpointListener {
                name: l.name.clone(),
                proto: l.proto.as_str().into(),
                format: l.format.as_str().into(),
                addr: *a,
            })
            .collect(),
    };
    write_atomic(
        &data_dir.join("endpoints.json"),
        &serde_json::to_vec_pretty(&endpoints).expect("encodes"),
    )?;
    for e in &endpoints.listeners {
        tracing::info!(listener = %e.name, proto = %e.proto, format = %e.format, addr = %e.addr, "listening");
    }
    tracing::info!(addr = %admin_addr, cores, "admin listening");

    let coordinator = Coordinator::new(
        checkpoint::coordinator::Settings {
            cores,
            dir: checkpoint_dir,
            keep: config.checkpoint.keep as usize,
            window_sizes_ms: config.window.sizes.iter().map(|s| s.as_i64()).collect(),
            last_epoch: first_epoch,
        },
        metrics.clone(),
    );
    let mut supervisor = Supervisor {
        cores,
        interval: Duration::from_millis(config.checkpoint.interval_ms),
        coordinator,
        metrics: metrics.clone(),
        control: control.clone(),
    };
    let result = supervisor.run(&report_rx, &signals);
    control.exit.store(true, Ordering::Release);
    control.wake_all();
    for t in threads {
        let _ = t.join();
    }
    admin.stop();
    result
}
