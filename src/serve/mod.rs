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
//!
//! `sluice replay` ([`replay`]) runs the same shards and cores over another data dir's log,
//! with no listeners and no log of their own, into a new data dir.

#![forbid(unsafe_code)]

mod cores;
mod listeners;
mod lock;
pub mod replay;
mod restore;
mod supervisor;

use cores::{Started, start_cores};
pub use listeners::listener_names;
use listeners::{bind_all, listener_ids, write_endpoints};
use lock::lock_data_dir;
use restore::{Alerting, load_checkpoint, open_shards, plan_partitions};
use supervisor::Supervisor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admin::{AdminServer, AdminState};
use crate::checkpoint::{self, coordinator::Coordinator};
use crate::config::Config;
use crate::log;
use crate::metrics::{ListenerInfo, Metrics};
use crate::ops::Signals;

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
    /// A listener's address is held by another process (which, with `SO_REUSEPORT`, would
    /// otherwise share the traffic).
    #[error(
        "cannot bind listener `{listener}` on {proto}://{addr}: address in use by another \
         process (another sluice, or a program of the same user with SO_REUSEPORT, would \
         silently take part of the traffic)"
    )]
    Shared {
        /// Listener name.
        listener: String,
        /// `tcp` or `udp`.
        proto: &'static str,
        /// Address.
        addr: SocketAddr,
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
    #[error("core {core} failed")]
    Core {
        /// Core.
        core: u16,
        /// What happened.
        #[source]
        error: crate::worker::Error,
    },
    /// Every core exited without saying why.
    #[error("every core has exited")]
    CoresGone,
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

/// Binds the admin server's socket; returns it with its address.
fn bind_admin(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), Error> {
    let listener = crate::admin::bind(addr).map_err(|source| Error::Bind {
        listener: "admin".into(),
        proto: "tcp",
        addr,
        source,
    })?;
    let bound = listener
        .local_addr()
        .map_err(io_err("cannot read address of", Path::new("admin")))?;
    Ok((listener, bound))
}

/// What the metrics say of each listener.
fn listener_infos(config: &Config) -> Vec<ListenerInfo> {
    config
        .listeners
        .iter()
        .map(|l| ListenerInfo {
            name: l.name.clone(),
            proto: l.proto.as_str(),
            format: l.format.as_str(),
            rejects: crate::worker::listener_rejects(l.format, l.proto),
        })
        .collect()
}

/// Runs the appliance until a stop signal; returns after the final checkpoint.
pub fn run(config: Config, signals: Signals) -> Result<(), Error> {
    let cores = config.core_count();
    let data_dir = config.data_dir.clone();
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(Error::Io {
            what: "cannot use the data dir",
            path: data_dir,
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "it is not a directory"),
        });
    }
    std::fs::create_dir_all(&data_dir).map_err(io_err("cannot create", &data_dir))?;
    // Held until this returns (the lock goes with the process, however it ends).
    let _lock = lock_data_dir(&data_dir)?;
    for sub in [
        "log",
        "checkpoint",
        "aggregates",
        "alerts",
        "experiments",
        "deadletter",
    ] {
        let dir = data_dir.join(sub);
        std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    }
    let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
    let log_ids = Arc::new(listener_ids(&data_dir, &names)?);
    let (sockets, addrs) = bind_all(&config, cores)?;
    let (admin_listener, admin_addr) = bind_admin(config.admin.addr)?;
    if !config.admin.addr.ip().is_loopback() && config.admin.token.is_none() {
        tracing::warn!(addr = %config.admin.addr, "the admin server is reachable beyond this host and has no [admin] token: anyone who reaches it reads every result");
    }

    let checkpoint_dir = data_dir.join("checkpoint");
    let (first_epoch, body) = load_checkpoint(&checkpoint_dir)?;

    // Checked when the configuration was read.
    let rules: Arc<[crate::alerts::Rule]> = config.alert_rules().unwrap_or_default().into();
    let targets = config.notify.targets();
    let mut metrics = Metrics::new(cores, listener_infos(&config));
    metrics.alerts = crate::metrics::AlertMetrics::new(
        rules.iter().map(|r| r.name.clone()).collect(),
        targets
            .iter()
            .map(|(t, url)| crate::alerts::notify::notifier_name(*t, url))
            .collect(),
    );
    let metrics = Arc::new(metrics);
    let results = crate::worker::ResultsHandles::new(cores);
    let alerting = Alerting {
        rules: rules.clone(),
        // Checked when the configuration was read.
        experiments: config.experiment_list().unwrap_or_default().into(),
        metrics: metrics.clone(),
    };
    let mut shards = open_shards(&config, cores, body.as_ref(), &results, &alerting)?;
    let alerts_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (alerts_board, alert_threads) = start_alerting(
        &config,
        AlertStart {
            rules: &rules,
            shards: &mut shards,
            results: &results,
            admin_addr,
        },
        &metrics,
        &alerts_stop,
    )?;
    let experiment_records: Vec<(PathBuf, Arc<crate::results::Cursors>)> =
        if alerting.experiments.is_empty() {
            Vec::new()
        } else {
            (0..cores)
                .map(|s| {
                    let dir = crate::results::record_dir(
                        &data_dir,
                        crate::results::Kind::Experiments,
                        s as u16,
                    );
                    (dir, results.experiment_cursors[s].clone())
                })
                .collect()
        };
    let (experiments_board, experiments_thread) = if experiment_records.is_empty() {
        (None, None)
    } else {
        let board = Arc::new(crate::experiments::board::Board::default());
        let thread = crate::experiments::board::spawn(
            board.clone(),
            experiment_records.clone(),
            alerts_stop.clone(),
        )
        .map_err(io_err("cannot start the experiments board for", &data_dir))?;
        (Some(board), Some(thread))
    };
    let partition_plan = plan_partitions(&config, cores, body.as_ref(), &metrics)?;

    let cores_started = start_cores(
        &config,
        Started {
            first_epoch,
            log_ids,
            sockets,
            shards,
            plans: partition_plan,
            results,
            metrics: metrics.clone(),
            mode: crate::worker::Mode::Serve,
        },
    )?;

    let crate::serve::cores::Cores {
        threads,
        control,
        reports: report_rx,
        open_queries,
    } = cores_started;
    let index = Arc::new(crate::query::Index::new(
        (0..cores)
            .map(|s| {
                crate::results::record_dir(&data_dir, crate::results::Kind::Aggregates, s as u16)
            })
            .collect(),
        crate::limits::QUERY_HISTORY_BYTES,
    ));
    let index_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let index_feeder = crate::query::spawn_feeder(index.clone(), index_stop.clone())
        .map_err(io_err("cannot start the query index for", &data_dir))?;
    let admin = AdminServer::start(
        admin_listener,
        AdminState {
            metrics: metrics.clone(),
            query: Some(crate::admin::QueryApi {
                index,
                open: open_queries,
                window_sizes_ms: config.window.sizes.iter().map(|s| s.as_i64()).collect(),
                records: (0..cores)
                    .map(|s| {
                        let dir = crate::results::record_dir(
                            &data_dir,
                            crate::results::Kind::Aggregates,
                            s as u16,
                        );
                        (dir, control.results.cursors[s].clone())
                    })
                    .collect(),
                stream_clients: Arc::default(),
                other_records: {
                    use crate::query::Event;
                    use crate::results::{Kind, record_dir};
                    let mut records = Vec::new();
                    for s in 0..cores {
                        if !rules.is_empty() {
                            let dir = record_dir(&data_dir, Kind::Alerts, s as u16);
                            records.push((
                                dir,
                                control.results.alert_cursors[s].clone(),
                                Event::Alert,
                            ));
                        }
                        if let Some((_, cursors)) = experiment_records.get(s) {
                            let dir = record_dir(&data_dir, Kind::Experiments, s as u16);
                            records.push((dir, cursors.clone(), Event::Experiment));
                        }
                    }
                    records
                },
            }),
            rates: Arc::default(),
            token: config.admin.token.as_deref().map(Arc::from),
            alerts: alerts_board,
            experiments: experiments_board,
        },
    )
    .map_err(io_err("cannot start admin server on", Path::new("admin")))?;
    write_endpoints(&config, &data_dir, &addrs, admin_addr)?;
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
    index_stop.store(true, Ordering::Relaxed);
    let _ = index_feeder.join();
    alerts_stop.store(true, Ordering::Relaxed);
    for t in alert_threads.into_iter().chain(experiments_thread) {
        let _ = t.join();
    }
    result
}

/// The alerts board (when rules run) and the threads of the board and the notifiers.
type AlertThreads = (
    Option<Arc<crate::alerts::notify::Board>>,
    Vec<std::thread::JoinHandle<()>>,
);

/// What the alerting threads start from.
struct AlertStart<'a> {
    rules: &'a [crate::alerts::Rule],
    /// The restored shards, whose engines hold the alerts' states now.
    shards: &'a mut [crate::window::Shard],
    results: &'a crate::worker::ResultsHandles,
    admin_addr: SocketAddr,
}

/// Starts the alerts board and the notifiers (when rules run), each on its own thread.
fn start_alerting(
    config: &Config,
    start: AlertStart<'_>,
    metrics: &Arc<Metrics>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<AlertThreads, Error> {
    use crate::alerts::notify;
    if start.rules.is_empty() {
        return Ok((None, Vec::new()));
    }
    let data_dir = &config.data_dir;
    let records: Vec<PathBuf> = (0..start.shards.len())
        .map(|s| crate::results::record_dir(data_dir, crate::results::Kind::Alerts, s as u16))
        .collect();
    // The board starts from the states the restore left and reads what follows them.
    let mut seeds = Vec::new();
    let mut board_records = Vec::new();
    for (s, shard) in start.shards.iter_mut().enumerate() {
        let engine = shard.hook::<crate::alerts::Engine>();
        let (rows, from) = engine.map_or((Vec::new(), 0), |e| e.current());
        seeds.extend(rows);
        board_records.push((
            records[s].clone(),
            from,
            start.results.alert_cursors[s].clone(),
        ));
    }
    let board = Arc::new(notify::Board::with(seeds));
    let mut threads = vec![
        notify::spawn_board(board.clone(), board_records, stop.clone())
            .map_err(io_err("cannot start the alerts board for", data_dir))?,
    ];
    let admin_addr = start.admin_addr;
    let external_url = config
        .notify
        .external_url
        .clone()
        .unwrap_or_else(|| format!("http://{admin_addr}"));
    for (i, (target, url)) in config.notify.targets().into_iter().enumerate() {
        let settings = notify::Settings {
            target,
            cursor_path: notify::cursor_path(data_dir, target, &url),
            url,
            records: records.clone(),
            cursors: start.results.alert_cursors.clone(),
            metrics_index: i,
            receiver: config.notify.receiver.clone(),
            external_url: external_url.clone(),
            resend_ms: config.notify.resend_interval.0,
        };
        threads.push(
            notify::spawn(settings, metrics.clone(), stop.clone())
                .map_err(io_err("cannot start a notifier for", data_dir))?,
        );
    }
    Ok((Some(board), threads))
}
