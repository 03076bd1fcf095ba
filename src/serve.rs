//! `sluice serve`: recovery, the cores, the admin server and the checkpoint coordinator.
//!
//! Start-up, in order: bind every listener on every core (`SO_REUSEPORT`; a port 0 is chosen
//! once and shared), load the newest valid checkpoint, open every log partition (recovering
//! torn tails), cut each aggregates file back to its checkpointed length, restore the shards'
//! open windows, then start the cores. Each core replays its partition from the checkpointed
//! offset before it serves its sockets; `/readyz` turns ready when every core has.
//!
//! The coordinator (the calling thread) asks for a checkpoint every `checkpoint.interval_ms`:
//! it raises the epoch, the cores inject barriers and report their flushed log offsets, the
//! shards align and report their snapshots, and the coordinator writes the checkpoint file
//! once it has every report. SIGTERM/SIGINT: stop reading, drain, final checkpoint, exit.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, unbounded};
use serde::{Deserialize, Serialize};

use crate::admin::{AdminServer, AdminState};
use crate::checkpoint::{self, BODY_VERSION, Body, PartitionState, ShardState};
use crate::config::Config;
use crate::deadletter::DeadLetter;
use crate::log::{self, Appender, FlushTicket, Offset, Reader};
use crate::metrics::{ListenerInfo, Metrics};
use crate::net::conns::FdBudget;
use crate::net::epoll::EpollBackend;
use crate::net::{BoundSocket, bind};
use crate::ops::{self, Signals};
use crate::route::{self, Doorbell, owner};
use crate::window::{AggregatesWriter, OutputSync, Params, Shard, aggregates_path, now_ms};
use crate::worker::{self, Control, ReplayTask, Report, WorkerSetup};

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

/// The stable ids of listener names, kept in `data_dir/listeners.json`: log batches carry the
/// id, so replay finds the right parser even when listeners are added, removed or reordered.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ListenerIds {
    ids: BTreeMap<String, u16>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err("cannot write", &tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("cannot fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("cannot rename", path))
}

fn listener_ids(data_dir: &Path, names: &[String]) -> Result<Vec<u16>, Error> {
    let path = data_dir.join("listeners.json");
    let mut ids: ListenerIds = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "listener id file unreadable; starting a new one");
            ListenerIds::default()
        }),
        Err(_) => ListenerIds::default(),
    };
    let mut changed = false;
    let out = names
        .iter()
        .map(|name| {
            let next = ids.ids.values().max().map_or(0, |m| m + 1);
            *ids.ids.entry(name.clone()).or_insert_with(|| {
                changed = true;
                next
            })
        })
        .collect();
    if changed {
        let json = serde_json::to_vec_pretty(&ids).expect("a map of strings to numbers encodes");
        write_atomic(&path, &json)?;
    }
    Ok(out)
}

/// Binds every listener on every core. Returns the sockets per core and the bound addresses.
#[allow(clippy::type_complexity)]
fn bind_all(
    config: &Config,
    cores: usize,
) -> Result<(Vec<Vec<(u16, BoundSocket)>>, Vec<SocketAddr>), Error> {
    let mut per_core: Vec<Vec<(u16, BoundSocket)>> = (0..cores).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let mut addr = l.addr;
        for sockets in per_core.iter_mut() {
            let socket = bind(l.proto, addr).map_err(|source| Error::Bind {
                listener: l.name.clone(),
                proto: l.proto.as_str(),
                addr,
                source,
            })?;
            // Port 0: the first core's socket picks the port, the others share it.
            addr = socket
                .local_addr()
                .map_err(io_err("cannot read address of", Path::new(&l.name)))?;
            sockets.push((index as u16, socket));
        }
        addrs.push(addr);
    }
    Ok((per_core, addrs))
}

/// Name of the lock file in the data dir.
const LOCK_FILE: &str = "sluice.lock";

/// Takes the data dir's exclusive lock (`flock` on `sluice.lock`, which then holds this
/// process's pid): two instances appending to one log would interleave their batches. The
/// kernel drops the lock when the process ends, kill -9 included, so a stale file never
/// blocks a restart.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, Error> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("cannot open", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Best effort: the pid only makes the message more useful.
            let _ = file.read_to_string(&mut holder);
            return Err(Error::DataDirInUse {
                path: data_dir.to_path_buf(),
                pid: holder.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err("cannot lock", &path)(e)),
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .map_err(io_err("cannot write", &path))?;
    Ok(file)
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
    let admin_listener =
        std::net::TcpListener::bind(config.admin.addr).map_err(|source| Error::Bind {
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
    let mut shards = open_shards(&config, cores, body.as_ref())?;
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
            deadletter: DeadLetter::open(&data_dir, id as u16)
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

    let mut coordinator = Coordinator {
        cores,
        checkpoint_dir,
        keep: config.checkpoint.keep as usize,
        interval: Duration::from_millis(config.checkpoint.interval_ms),
        window_sizes_ms: config.window.sizes.iter().map(|s| s.as_i64()).collect(),
        epoch: first_epoch,
        in_flight: None,
        kept: std::collections::VecDeque::new(),
        metrics: metrics.clone(),
        control: control.clone(),
    };
    let result = coordinator.run(&report_rx, &signals);
    control.exit.store(true, Ordering::Release);
    control.wake_all();
    for t in threads {
        let _ = t.join();
    }
    admin.stop();
    result
}

struct PartitionPlan {
    appender: Appender,
    replay: Vec<ReplayTask>,
    others: Vec<PartitionState>,
    max_event_ms: Option<i64>,
}

/// Opens each core's partition and plans the replay of every partition on disk: partition `p`
/// is replayed by core `p % cores` (partitions beyond `cores` were left by a larger instance).
fn plan_partitions(
    config: &Config,
    cores: usize,
    body: Option<&Body>,
    metrics: &Metrics,
) -> Result<Vec<PartitionPlan>, Error> {
    let options = log::Options::from(&config.log);
    let mut plans = Vec::new();
    for core in 0..cores as u16 {
        let dir = log::partition_dir(&config.data_dir, core);
        let (appender, report) = Appender::open(&dir, options)?;
        metrics.cores[core as usize]
            .log_truncated_bytes_total
            .add(report.truncated_bytes);
        if report.truncated_bytes > 0 {
            tracing::warn!(
                partition = core,
                cut_bytes = report.truncated_bytes,
                "torn log tail cut"
            );
        }
        plans.push(PartitionPlan {
            appender,
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
fn open_shards(config: &Config, cores: usize, body: Option<&Body>) -> Result<Vec<Shard>, Error> {
    let data_dir = &config.data_dir;
    let empty = Vec::new();
    let states: &Vec<ShardState> = body.map_or(&empty, |b| &b.shards);
    let same_layout = body.is_some_and(|b| b.cores as usize == cores);
    // Files the checkpoint does not know were written after it: cut to nothing.
    let agg_dir = data_dir.join("aggregates");
    for entry in std::fs::read_dir(&agg_dir).map_err(io_err("cannot list", &agg_dir))? {
        let entry = entry.map_err(io_err("cannot list", &agg_dir))?;
        let name = entry.file_name();
        let Some(shard) = name.to_str().and_then(|n| {
            n.strip_prefix('s')?
                .strip_suffix(".jsonl")?
                .parse::<u16>()
                .ok()
        }) else {
            continue;
        };
        if shard as usize >= cores {
            let len = states
                .iter()
                .find(|s| s.shard == shard)
                .map_or(0, |s| s.aggregates_len);
            AggregatesWriter::open(&entry.path(), len)
                .map_err(io_err("cannot cut", &entry.path()))?;
        }
    }
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
        let output = AggregatesWriter::open(&path, len).map_err(io_err("cannot open", &path))?;
        // Keys move between shards when the core count changed: restore onto the lowest old
        // frontier and close through the highest once every record is in (`Shard::restore`).
        let frontier = if same_layout {
            state.map_or(i64::MIN, |s| s.closed_through_ms)
        } else {
            lowest_frontier
        };
        shards.push(Shard::new(&params, cores, frontier, output));
    }
    for state in states {
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

struct InFlight {
    epoch: u64,
    started: Instant,
    partitions: Vec<PartitionState>,
    /// Per core that reported: its partition's log up to its offset, made durable at commit.
    logs: Vec<FlushTicket>,
    partition_reports: usize,
    shards: Vec<ShardState>,
    /// Per shard that reported: its aggregates file, fsynced at commit.
    outputs: Vec<OutputSync>,
    final_one: bool,
}

struct Coordinator {
    cores: usize,
    checkpoint_dir: PathBuf,
    keep: usize,
    interval: Duration,
    window_sizes_ms: Vec<i64>,
    epoch: u64,
    in_flight: Option<InFlight>,
    /// Partition offsets of the checkpoints kept on disk, oldest first.
    kept: std::collections::VecDeque<Vec<PartitionState>>,
    metrics: Arc<Metrics>,
    control: Arc<Control>,
}

impl Coordinator {
    fn run(&mut self, reports: &Receiver<Report>, signals: &Signals) -> Result<(), Error> {
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
                }) => {
                    if let Some(f) = self.in_flight.as_mut().filter(|f| f.epoch == epoch) {
                        f.partitions.extend(partitions);
                        f.logs.push(log);
                        f.partition_reports += 1;
                    }
                }
                Ok(Report::Shard {
                    epoch,
                    state,
                    output,
                }) => {
                    if let Some(f) = self.in_flight.as_mut().filter(|f| f.epoch == epoch) {
                        f.shards.push(state);
                        f.outputs.push(output);
                    }
                }
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

            if let Some(f) = &self.in_flight
                && f.partition_reports == self.cores
                && f.shards.len() == self.cores
            {
                let final_one = f.final_one;
                self.commit()?;
                if final_one {
                    tracing::info!(epoch = self.epoch, "final checkpoint written; exiting");
                    return Ok(());
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
            if self.in_flight.is_none() {
                if stopping && drained == self.cores {
                    self.begin(true);
                } else if !stopping && now >= next_checkpoint {
                    self.begin(false);
                    next_checkpoint = now + self.interval;
                }
            }
            if let Some(interval) = watchdog.filter(|_| now >= next_watchdog) {
                ops::notify_watchdog();
                next_watchdog = now + interval;
            }
        }
    }

    fn begin(&mut self, final_one: bool) {
        self.epoch += 1;
        self.in_flight = Some(InFlight {
            epoch: self.epoch,
            started: Instant::now(),
            partitions: Vec::new(),
            logs: Vec::new(),
            partition_reports: 0,
            shards: Vec::new(),
            outputs: Vec::new(),
            final_one,
        });
        self.control
            .checkpoint_epoch
            .store(self.epoch, Ordering::Release);
        self.control.wake_all();
    }

    /// Lets retention delete log only below what every kept checkpoint replays from, so a
    /// restart can fall back to the oldest kept checkpoint. Until this run has committed `keep`
    /// checkpoints (the older ones on disk came from an earlier run), it deletes nothing.
    fn raise_retention_floors(&mut self, partitions: Vec<PartitionState>) {
        self.kept.push_back(partitions);
        while self.kept.len() > self.keep {
            self.kept.pop_front();
        }
        if self.kept.len() < self.keep {
            return;
        }
        for (core, floor) in self.control.retention_floors.iter().enumerate() {
            let oldest = self
                .kept
                .iter()
                .map(|ps| {
                    ps.iter()
                        .find(|p| p.partition as usize == core)
                        .map_or(0, |p| p.next_offset)
                })
                .min()
                .unwrap_or(0);
            floor.fetch_max(oldest, Ordering::AcqRel);
        }
    }

    fn commit(&mut self) -> Result<(), Error> {
        let f = self.in_flight.take().expect("a checkpoint is in flight");
        let mut partitions = f.partitions;
        partitions.sort_by_key(|p| p.partition);
        let mut shards = f.shards;
        shards.sort_by_key(|s| s.shard);
        let body = Body {
            version: BODY_VERSION,
            epoch: f.epoch,
            created_ms: now_ms(),
            cores: self.cores as u16,
            window_sizes_ms: self.window_sizes_ms.clone(),
            partitions,
            shards,
        };
        let bytes = body.encode()?;
        let m = &self.metrics.checkpoint;
        // The log and the aggregates files first: a checkpoint never names an offset or a
        // length whose bytes are not durable. Here, off the cores, which read on meanwhile.
        let written = f
            .logs
            .iter()
            .try_for_each(FlushTicket::make_durable)
            .map_err(Error::from)
            .and_then(|()| {
                f.outputs
                    .iter()
                    .try_for_each(|o| o.sync().map_err(io_err("cannot fsync", o.path())))
            })
            .and_then(|()| {
                checkpoint::file::write(&self.checkpoint_dir, f.epoch, &bytes).map_err(Error::from)
            });
        match written {
            Ok(path) => {
                m.committed_total.add(1);
                m.last_epoch.set(f.epoch as i64);
                m.last_bytes.set(bytes.len() as i64);
                m.last_duration_us
                    .set(f.started.elapsed().as_micros() as i64);
                tracing::debug!(epoch = f.epoch, path = %path.display(), bytes = bytes.len(), "checkpoint committed");
                if let Err(e) = checkpoint::file::prune(&self.checkpoint_dir, self.keep) {
                    tracing::warn!(error = %e, "cannot prune old checkpoints");
                }
                self.raise_retention_floors(body.partitions);
                Ok(())
            }
            Err(e) => {
                m.failed_total.add(1);
                if f.final_one {
                    return Err(e);
                }
                tracing::error!(epoch = f.epoch, error = %e, "checkpoint failed; will retry at the next interval");
                Ok(())
            }
        }
    }
}
