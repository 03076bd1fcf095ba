//! The `sluice` binary: command line, configuration, and the subcommands. The only place
//! `anyhow` is used, with context on every error that reaches the user.

use std::io::Write;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use sluice::config::{self, Config, FlushPolicy, IoMode, Millis};

/// sluice: a single-binary log and metrics ingestion appliance.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance (embedded defaults when no config and no --listen are given).
    Serve(ServeArgs),
    /// Check a configuration (the file and serve's flags) without starting: exit 0 when serve
    /// would accept it, 2 with the key and line when not. Binds nothing, writes nothing.
    Check(ServeArgs),
    /// Inspect the log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Inspect checkpoints.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Read results from a running instance through its admin API: a table, or --json
    /// (one row per line); --follow prints closed windows as they close.
    Query(sluice::cli::query::QueryArgs),
    /// A terminal view of a running instance, refreshed every second (q, Esc or Ctrl-C quit).
    Top(sluice::cli::top::TopArgs),
    /// Recompute results from a data dir's log with another configuration (windows, alert
    /// rules, experiments) into a new data dir, writing nothing in the first (a serve may
    /// run on it).
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The data dir whose log is replayed: read only (a `sluice serve` may run on it).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// TOML configuration of the replay: its listeners (by name, as the log knows them),
    /// windows, alert rules and experiments; its data_dir, admin and notify are not used.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Where the results go (aggregates/, alerts/, experiments/, deadletter/, a
    /// checkpoint): a new or empty directory outside DIR.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Only lines logged at or after this time: RFC 3339 (2026-11-28T20:00:00Z) or Unix
    /// seconds.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    from: Option<i64>,
    /// Only lines logged before this time: RFC 3339 or Unix seconds.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    to: Option<i64>,
    /// Cores (default: the configuration's `cores` if it sets it, else one per partition
    /// of the log).
    #[arg(long)]
    cores: Option<usize>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (log, checkpoints, aggregates, dead letters).
    #[arg(long, env = "SLUICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Listener, FORMAT+PROTO://HOST:PORT[?option=value&...]; repeatable; replaces the file's.
    #[arg(long = "listen", value_name = "SPEC")]
    listen: Vec<String>,
    /// Admin HTTP address.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Worker cores (default: every online core).
    #[arg(long)]
    cores: Option<usize>,
    /// I/O backend.
    #[arg(long, value_enum)]
    io: Option<IoMode>,
    /// Window size (e.g. 10s, 1m); repeatable; replaces the file's.
    #[arg(long = "window", value_name = "DURATION", value_parser = parse_duration)]
    window: Vec<Millis>,
    /// How late an event may be and still count.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    allowed_lateness: Option<Millis>,
    /// Log flush policy.
    #[arg(long, value_enum)]
    flush: Option<FlushPolicy>,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Data directory.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "sluice-data")]
    data_dir: PathBuf,
    /// Only this partition.
    #[arg(long)]
    partition: Option<u16>,
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Check every record batch's CRC; exit 1 on corruption.
    Verify(LogArgs),
    /// Print the stored lines as they arrived, one per line.
    Dump {
        #[command(flatten)]
        args: LogArgs,
        /// Start at this offset.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// One JSON object per line with partition, offset, ingest time and listener.
        #[arg(long)]
        json: bool,
    },
    /// Follow new lines as they are stored (until SIGINT or a closed pipe).
    Tail {
        #[command(flatten)]
        args: LogArgs,
        /// Start at this offset (default: only lines stored from now on).
        #[arg(long)]
        from: Option<u64>,
        /// One JSON object per line with partition, offset, ingest time and listener.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CheckpointCommand {
    /// Print the newest valid checkpoint as JSON.
    Inspect {
        /// Data directory.
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = "sluice-data")]
        data_dir: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Millis, String> {
    config::parse_duration_ms(s)
}

/// A time as ms since the epoch: RFC 3339, or Unix seconds (a fraction allowed).
fn parse_time(s: &str) -> Result<i64, String> {
    let bad =
        || format!("`{s}` is neither an RFC 3339 time (2026-11-28T20:00:00Z) nor Unix seconds");
    if let Some(ms) = sluice::parse::syslog::parse_rfc3339(s.as_bytes()) {
        return Ok(ms);
    }
    let digits = |d: &str| !d.is_empty() && d.len() <= 12 && d.bytes().all(|b| b.is_ascii_digit());
    let (whole, frac) = match s.split_once('.') {
        Some((whole, frac)) if digits(frac) => (whole, frac),
        Some(_) => return Err(bad()),
        None => (s, ""),
    };
    if !digits(whole) {
        return Err(bad());
    }
    let secs: i64 = whole.parse().map_err(|_| bad())?;
    let frac_ms: i64 = format!("{frac:0<3}")[..3].parse().map_err(|_| bad())?;
    Ok(secs * 1000 + frac_ms)
}

/// A failure with its exit code: 2 for usage and configuration, 1 for runtime.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let bar = matches!(cli.command, Command::Replay(_)).then(progress_bar);
    match &bar {
        // A replay's own log lines are its warnings; the summary says the rest.
        Some(bar) => sluice::ops::init_tracing_to("warn", BarWriter(bar.clone())),
        None => sluice::ops::init_tracing(),
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args),
        Command::Log(cmd) => log_command(cmd),
        Command::Checkpoint(CheckpointCommand::Inspect { data_dir }) => inspect(&data_dir),
        Command::Query(args) => client(sluice::cli::query::run(&args)),
        Command::Top(args) => client(sluice::cli::top::run(&args)),
        Command::Replay(args) => replay(args, bar.unwrap_or_else(progress_bar)),
    };
    match result {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            eprintln!("sluice: {}", describe(&error));
            ExitCode::from(code)
        }
    }
}

/// A client command's result: a refused parameter is bad usage (2), the rest runtime (1).
fn client(result: Result<(), sluice::cli::Error>) -> Result<ExitCode, Failure> {
    result.map(|()| ExitCode::SUCCESS).map_err(|e| Failure {
        code: e.exit_code(),
        error: e.into(),
    })
}

/// The error and its causes, each said once: an error whose message already ends with its
/// cause's (`cannot open X: No such file…`) does not repeat it.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Builds the configuration: embedded defaults, then the file, then the flags.
fn build_config(args: ServeArgs) -> Result<Config, Failure> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(usage)?,
        None => Config::default(),
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if !args.listen.is_empty() {
        config.listeners = args
            .listen
            .iter()
            .map(|s| config::parse_listen_spec(s))
            .collect::<Result<_, _>>()
            .map_err(usage)?;
    }
    if let Some(addr) = args.admin {
        config.admin.addr = config::values_resolve(&addr).map_err(|message| {
            usage(config::Error::Flag {
                flag: "--admin",
                message,
            })
        })?;
    }
    if args.cores.is_some() {
        config.cores = args.cores;
    }
    if let Some(io) = args.io {
        config.io = io;
    }
    if !args.window.is_empty() {
        config::check_window_sizes(&args.window).map_err(|message| {
            usage(config::Error::Flag {
                flag: "--window",
                message,
            })
        })?;
        config.window.sizes = args.window;
    }
    if let Some(l) = args.allowed_lateness {
        config.window.allowed_lateness = l;
    }
    if let Some(f) = args.flush {
        config.log.flush = f;
    }
    let mut config = config.finish().map_err(usage)?;
    config.name_listeners();
    Ok(config)
}

fn check(args: ServeArgs) -> Result<ExitCode, Failure> {
    let source = args.config.as_ref().map_or_else(
        || "embedded defaults".to_string(),
        |p| p.display().to_string(),
    );
    let config = build_config(args)?;
    let listeners: Vec<String> = config
        .listeners
        .iter()
        .map(|l| {
            format!(
                "{} ({}+{}://{})",
                l.name,
                l.format.as_str(),
                l.proto.as_str(),
                l.addr
            )
        })
        .collect();
    let windows: Vec<String> = config.window.sizes.iter().map(|s| s.to_string()).collect();
    println!(
        "ok: {source}: {} cores, windows {}, data dir {}, admin {}, listeners {}",
        config.core_count(),
        windows.join(" "),
        config.data_dir.display(),
        config.admin.addr,
        listeners.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> Result<ExitCode, Failure> {
    let config = build_config(args)?;
    if config.io == IoMode::Auto {
        tracing::info!("io = auto: using epoll");
    }
    let signals = sluice::ops::install_signals().context("cannot install signal handlers")?;
    tracing::info!(data_dir = %config.data_dir.display(), cores = config.core_count(), "starting");
    sluice::serve::run(config, signals).context("serve")?;
    Ok(ExitCode::SUCCESS)
}

/// The replay's progress on stderr: hidden when stderr is not a terminal.
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(0),
        indicatif::ProgressDrawTarget::stderr_with_hz(10),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} lines ({rate} lines/s, {eta} left)",
    ) {
        let rate = |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}", s.per_sec());
        };
        bar.set_style(style.with_key("rate", rate).progress_chars("=> "));
    }
    bar
}

/// Writes log lines to stderr with the progress bar lifted out of the way.
#[derive(Clone)]
struct BarWriter(indicatif::ProgressBar);

impl std::io::Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for BarWriter {
    type Writer = BarWriter;

    fn make_writer(&'w self) -> BarWriter {
        self.clone()
    }
}

/// `sluice replay`: the configuration as serve reads it (errors name the key and line),
/// the run, and its summary on stdout.
fn replay(args: ReplayArgs, bar: indicatif::ProgressBar) -> Result<ExitCode, Failure> {
    use sluice::serve::replay;
    let config = Config::from_file(&args.config).map_err(usage)?;
    // Only a count the file sets overrides one core per partition.
    let cores = args.cores.or(config.cores);
    if cores == Some(0) {
        return Err(usage(anyhow::anyhow!("--cores must be at least 1")));
    }
    let mut config = config.finish().map_err(usage)?;
    config.name_listeners();
    let options = replay::Options {
        data_dir: args.data_dir,
        out: args.out,
        from_ms: args.from,
        to_ms: args.to,
        cores,
    };
    let result = replay::run(config, &options, &mut |p| {
        bar.set_length(p.total.max(p.read));
        bar.set_position(p.read);
    });
    bar.finish_and_clear();
    let summary = result.map_err(|e| Failure {
        code: if e.is_usage() { 2 } else { 1 },
        error: anyhow::Error::from(e).context("replay"),
    })?;
    let per_sec = summary.lines as f64 / summary.seconds.max(1e-3);
    let experiments = match summary.experiments {
        0 => String::new(),
        n => format!(", {n} experiment rows"),
    };
    // A closed stdout (`| head -0`) loses only the summary: the results are in OUT.
    let _ = writeln!(
        std::io::stdout(),
        "replayed {} lines, {} events: {} aggregates rows, {} alert transitions{} in {:.2} s \
         ({:.0} lines/s) into {}; {} partitions on {} cores, {} lines read, {} rejected, \
         {} late",
        summary.lines,
        summary.events,
        summary.rows,
        summary.alerts,
        experiments,
        summary.seconds,
        per_sec,
        options.out.display(),
        summary.partitions,
        summary.cores,
        summary.read,
        summary.rejected,
        summary.late,
    );
    Ok(ExitCode::SUCCESS)
}

fn log_command(cmd: LogCommand) -> Result<ExitCode, Failure> {
    match cmd {
        LogCommand::Verify(args) => {
            let report = sluice::log::verify(&args.data_dir, args.partition)
                .with_context(|| format!("verify {}", args.data_dir.display()))?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for p in &report.partitions {
                writeln!(
                    out,
                    "partition {}: {} segments, {} batches, {} lines, {} bytes, next offset {}",
                    p.partition, p.segments, p.batches, p.lines, p.bytes, p.next_offset
                )?;
                for problem in &p.problems {
                    writeln!(
                        out,
                        "  {:?} in {} at file position {} (offset {}): {}",
                        problem.kind,
                        problem.segment.display(),
                        problem.file_pos,
                        problem.offset,
                        problem.reason
                    )?;
                }
            }
            let verdict = if report.has_corruption() {
                "corrupt"
            } else if report.is_clean() {
                "ok"
            } else {
                "ok (a torn tail, cut at the next start)"
            };
            writeln!(out, "{verdict}")?;
            Ok(if report.has_corruption() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        LogCommand::Dump { args, from, json } => {
            let names = listener_names(&args.data_dir, json)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match sluice::log::dump(
                &args.data_dir,
                args.partition,
                sluice::log::Offset(from),
                names.as_ref(),
                &mut out,
            ) {
                Ok(_) => {}
                Err(e) if is_broken_pipe(&e) => return Ok(ExitCode::SUCCESS),
                Err(e) => return Err(anyhow::Error::from(e).context("dump").into()),
            }
            match out.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Tail { args, from, json } => tail(args, from, json),
    }
}

/// `sluice log tail`: follows until SIGINT/SIGTERM (exit 0) or a closed stdout (exit 0).
fn tail(args: LogArgs, from: Option<u64>, json: bool) -> Result<ExitCode, Failure> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handler")?;
    }
    stop_when_stdout_closes(stop.clone());
    let names = listener_names(&args.data_dir, json)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let from = from.map(sluice::log::Offset);
    let json = names.as_ref();
    match sluice::log::tail(&args.data_dir, args.partition, from, json, &mut out, &stop) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::from(e).context("tail").into()),
    }
}

/// The listener names for `--json` (`None` without it). A `listeners.json` that cannot be
/// read leaves the names out, with a warning: the log itself is still worth reading.
fn listener_names(
    data_dir: &std::path::Path,
    json: bool,
) -> Result<Option<sluice::log::ListenerNames>, Failure> {
    if !json {
        return Ok(None);
    }
    Ok(Some(
        sluice::serve::listener_names(data_dir).unwrap_or_else(|e| {
            eprintln!("sluice: {}; listener names left out", describe(&e.into()));
            Default::default()
        }),
    ))
}

/// Sets `stop` once nobody reads stdout any more (the writer of a pipe whose reader closed
/// sees POLLERR), so an idle `sluice log tail | head -2` ends as soon as `head` does instead
/// of at the next stored line.
fn stop_when_stdout_closes(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use rustix::event::{PollFd, PollFlags, poll};
    std::thread::spawn(move || {
        let stdout = std::io::stdout();
        let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
        loop {
            match poll(&mut fds, None) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                Err(_) => return,
            }
        }
    });
}

fn is_broken_pipe(e: &sluice::log::Error) -> bool {
    matches!(e, sluice::log::Error::Output { source } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

fn inspect(data_dir: &std::path::Path) -> Result<ExitCode, Failure> {
    let dir = data_dir.join("checkpoint");
    let Some(loaded) = sluice::checkpoint::file::load_newest(&dir).context("load checkpoint")?
    else {
        eprintln!("sluice: no valid checkpoint in {}", dir.display());
        return Ok(ExitCode::from(1));
    };
    let body = sluice::checkpoint::Body::decode(&loaded.body).context("decode checkpoint")?;
    let mut json = serde_json::json!({ "path": loaded.path, "checkpoint": body });
    // Open windows are stored encoded; show them decoded, sketches as their quantiles.
    for (i, shard) in body.shards.iter().enumerate() {
        let mut windows = Vec::new();
        for record in shard.windows() {
            let r = record.context("decode checkpointed window")?;
            let a = &r.agg;
            windows.push(serde_json::json!({
                "key": r.key, "size_ms": r.size_ms, "hop_ms": r.hop_ms, "start_ms": r.start_ms,
                "agg": {
                    "count": a.count, "sum": a.sum, "min": a.min, "max": a.max, "last": a.last,
                    "last_time_ms": a.last_time_ms,
                    "stddev": a.stddev(), "members": a.members, "distinct": a.distinct.estimate(),
                    "p50": a.quantile(0.5), "p99": a.quantile(0.99),
                },
            }));
        }
        json["checkpoint"]["shards"][i]["windows"] = serde_json::Value::Array(windows);
    }
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn replay_times_are_rfc_3339_or_unix_seconds() {
        assert_eq!(parse_time("1764360000"), Ok(1_764_360_000_000));
        assert_eq!(parse_time("1764360000.5"), Ok(1_764_360_000_500));
        assert_eq!(parse_time("1764360000.1239"), Ok(1_764_360_000_123));
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("2025-11-28T20:00:00Z"), Ok(1_764_360_000_000));
        assert_eq!(
            parse_time("2025-11-28T21:00:00.250+01:00"),
            Ok(1_764_360_000_250)
        );
        for bad in [
            "",
            "yesterday",
            "-5",
            "1.2.3",
            "17643600000000000",
            ".5",
            "5.",
            "2025-11-28",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
