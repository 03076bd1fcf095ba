//! Configuration: the TOML file, the `serve` flags that override it, and the embedded
//! defaults. Every key has a default; unknown keys are an error. Values are checked while the
//! file is read, so an error names the key and the line (`toml`'s span), and the listen specs
//! given on the command line are checked with a message that quotes the spec.
//!
//! Owns: [`Config`] and its parts. Nothing here opens a socket or a file other than the
//! configuration file itself.

#![forbid(unsafe_code)]

mod listen;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use listen::parse_listen_spec;
pub use values::resolve_addr as values_resolve;
pub use values::{ByteSize, Millis, check_window_sizes, parse_duration_ms};

use crate::limits;

/// A configuration error, with the position when it comes from a file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid, or a key has a bad value (the message names key and line).
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What and where.
        message: String,
    },
    /// A `--listen` spec is malformed.
    #[error("bad --listen spec `{spec}`: {message}")]
    ListenSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        message: String,
    },
    /// A command-line value is invalid.
    #[error("bad value for {flag}: {message}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The combination of settings is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which I/O backend the cores use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring where the kernel allows it, else epoll.
    #[default]
    Auto,
    /// io_uring only.
    Uring,
    /// mio over epoll.
    Epoll,
}

pub use crate::alerts::RuleConfig;
pub use crate::alerts::notify::NotifyConfig;
pub use crate::net::Proto;
pub use crate::parse::{Format, FormatOptions};

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name; used in metrics, the dead-letter log and as the `raw` key.
    #[serde(default)]
    pub name: String,
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// Address to bind, `HOST:PORT` (port 0 picks a free port).
    #[serde(deserialize_with = "values::socket_addr")]
    pub addr: SocketAddr,
    /// Input format.
    pub format: Format,
    /// Format options.
    #[serde(flatten)]
    pub options: FormatOptions,
    /// Longest accepted line in bytes; longer lines are rejected as `too_long`.
    #[serde(
        default = "default_line_bytes",
        deserialize_with = "values::line_bytes"
    )]
    pub max_line_bytes: u32,
    /// Most open connections per core (TCP). At the cap a new connection displaces the
    /// longest-idle one (idle at least `DISPLACE_IDLE_MS_MIN`), or is refused.
    #[serde(default = "default_connections")]
    pub max_connections: u32,
    /// A TCP connection that sends nothing for this long is closed (0: never).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Millis,
}

fn default_line_bytes() -> u32 {
    limits::LINE_BYTES_DEFAULT
}
fn default_connections() -> u32 {
    limits::CONNECTIONS_DEFAULT
}
fn default_idle_timeout() -> Millis {
    Millis(limits::IDLE_TIMEOUT_MS_DEFAULT)
}

impl ListenerConfig {
    /// A listener with default limits.
    pub fn new(name: &str, proto: Proto, addr: SocketAddr, format: Format) -> Self {
        ListenerConfig {
            name: name.to_string(),
            proto,
            addr,
            format,
            options: FormatOptions::default(),
            max_line_bytes: default_line_bytes(),
            max_connections: default_connections(),
            idle_timeout: default_idle_timeout(),
        }
    }

    /// The idle timeout, `None` when connections may stay silent forever.
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        (self.idle_timeout.0 > 0).then(|| std::time::Duration::from_millis(self.idle_timeout.0))
    }
}

pub use crate::log::FlushPolicy;

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Size of each segment file.
    #[serde(deserialize_with = "values::segment_bytes")]
    pub segment_bytes: u64,
    /// Flush policy.
    pub flush: FlushPolicy,
    /// Flush interval under `flush = "interval"`.
    pub flush_interval_ms: u64,
    /// Segment bytes kept per partition; older sealed segments are deleted (0: keep all).
    #[serde(deserialize_with = "values::byte_size")]
    pub retention_bytes: u64,
    /// Hours of ingest time kept per partition; older sealed segments are deleted (0: keep
    /// all).
    pub retention_hours: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            flush: FlushPolicy::Interval,
            flush_interval_ms: limits::FLUSH_INTERVAL_MS_DEFAULT,
            retention_bytes: 0,
            retention_hours: 0,
        }
    }
}

/// `[window]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Window sizes.
    #[serde(deserialize_with = "values::window_sizes")]
    pub sizes: Vec<Millis>,
    /// Distance between the starts of consecutive windows (hopping windows); it must divide
    /// every size. Absent: tumbling windows.
    pub hop: Option<Millis>,
    /// How late (in event time) an event may be and still count.
    pub allowed_lateness: Millis,
    /// Quantiles reported for each window (0..=1); empty: none (no sketches kept).
    #[serde(deserialize_with = "values::quantiles")]
    pub quantiles: Vec<f64>,
    /// Live keys per shard before the overflow key takes the rest.
    pub max_keys_per_shard: u32,
}

impl WindowConfig {
    /// Checks the relation between the keys: a hop is positive and divides every size.
    fn check(&self) -> Result<(), String> {
        let Some(hop) = self.hop else {
            return Ok(());
        };
        if hop.0 == 0 {
            return Err("window.hop = 0: a hop must be longer than zero".into());
        }
        if let Some(size) = self.sizes.iter().find(|s| s.0 % hop.0 != 0) {
            return Err(format!(
                "window.hop = {hop} does not divide the window size {size}: each window must \
                 start a whole number of hops after the one before"
            ));
        }
        Ok(())
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            sizes: vec![Millis(10_000), Millis(60_000)],
            hop: None,
            allowed_lateness: Millis(5_000),
            quantiles: vec![0.5, 0.9, 0.99, 0.999],
            max_keys_per_shard: limits::KEYS_PER_SHARD_DEFAULT,
        }
    }
}

impl WindowConfig {
    /// The window specs (size and hop) of every size.
    pub fn specs(&self) -> Vec<crate::window::WindowSpec> {
        self.sizes
            .iter()
            .map(|s| crate::window::WindowSpec {
                size_ms: s.as_i64(),
                hop_ms: self.hop.map_or(s.as_i64(), |h| h.as_i64()),
            })
            .collect()
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Time between checkpoints.
    pub interval_ms: u64,
    /// Checkpoint files kept.
    pub keep: u32,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: limits::CHECKPOINT_INTERVAL_MS_DEFAULT,
            keep: limits::CHECKPOINTS_KEPT_DEFAULT,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin HTTP server.
    #[serde(deserialize_with = "values::socket_addr")]
    pub addr: SocketAddr,
    /// When set, every route but `/healthz` needs `Authorization: Bearer TOKEN` (or the
    /// cookie `/?token=TOKEN` sets for the dashboard).
    #[serde(deserialize_with = "values::token")]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 9900)),
            token: None,
        }
    }
}

/// `[results]`: how the results record (`aggregates/`) is segmented and how much is kept.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsConfig {
    /// A segment is sealed once it holds this much.
    #[serde(deserialize_with = "values::results_segment_bytes")]
    pub segment_bytes: u64,
    /// Bytes of sealed segments kept per shard (0: keep all). Segments a reader or the
    /// newest checkpoint still needs are kept even above it.
    #[serde(deserialize_with = "values::byte_size")]
    pub retention_bytes: u64,
    /// Hours a sealed segment is kept after its last row (0: keep all).
    pub retention_hours: u64,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        ResultsConfig {
            segment_bytes: limits::RESULTS_SEGMENT_BYTES_DEFAULT,
            retention_bytes: 0,
            retention_hours: 0,
        }
    }
}

impl From<&ResultsConfig> for crate::results::Options {
    fn from(c: &ResultsConfig) -> crate::results::Options {
        crate::results::Options {
            segment_bytes: c.segment_bytes,
            retention_bytes: c.retention_bytes,
            retention_hours: c.retention_hours,
        }
    }
}

/// `[deadletter]`: how much of the rejected input each partition keeps.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Dead-letter bytes kept per partition, all its files together.
    #[serde(deserialize_with = "values::deadletter_bytes")]
    pub max_bytes: u64,
    /// Files per partition: the one being written and the rotated ones.
    #[serde(deserialize_with = "values::deadletter_files")]
    pub files: u32,
    /// Full records of one (listener, reason) per second; further ones in that second are
    /// counted in one repeat record.
    #[serde(deserialize_with = "values::deadletter_repeats")]
    pub repeats: u32,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            max_bytes: limits::DEADLETTER_BYTES_DEFAULT,
            files: limits::DEADLETTER_FILES_DEFAULT,
            repeats: limits::DEADLETTER_REPEATS_DEFAULT,
        }
    }
}

impl From<&DeadLetterConfig> for crate::deadletter::Bounds {
    fn from(c: &DeadLetterConfig) -> crate::deadletter::Bounds {
        crate::deadletter::Bounds {
            max_bytes: c.max_bytes,
            files: c.files,
            repeats: c.repeats,
        }
    }
}

impl DeadLetterConfig {
    /// Checks the relation between the keys (each is range-checked when read).
    fn check(&self) -> Result<(), String> {
        let share = self.max_bytes / u64::from(self.files.max(1));
        if share < limits::DEADLETTER_FILE_BYTES_MIN {
            return Err(format!(
                "deadletter.max_bytes = {} over files = {} leaves {share} bytes per file; \
                 each file needs at least {}",
                self.max_bytes,
                self.files,
                limits::DEADLETTER_FILE_BYTES_MIN
            ));
        }
        Ok(())
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the log, checkpoints, aggregates and dead letters live.
    pub data_dir: PathBuf,
    /// Worker cores (default: every online core).
    pub cores: Option<usize>,
    /// I/O backend.
    pub io: IoMode,
    /// Listeners; empty means the embedded defaults.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// `[log]`.
    pub log: LogConfig,
    /// `[window]`.
    pub window: WindowConfig,
    /// `[checkpoint]`.
    pub checkpoint: CheckpointConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[deadletter]`.
    pub deadletter: DeadLetterConfig,
    /// `[results]`.
    pub results: ResultsConfig,
    /// `[[alert]]` rules.
    #[serde(rename = "alert", skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<RuleConfig>,
    /// `[notify]`: where alert transitions go.
    pub notify: NotifyConfig,
    /// `[[experiment]]` splits.
    #[serde(rename = "experiment", skip_serializing_if = "Vec::is_empty")]
    pub experiments: Vec<crate::experiments::config::ExperimentConfig>,
    /// The file this was read from, so the checks made once the flags apply (an alert's
    /// window against `--window`) still name its lines.
    #[serde(skip)]
    pub source: Option<std::sync::Arc<Source>>,
}

/// A configuration file's path and text.
#[derive(Debug)]
pub struct Source {
    path: Option<PathBuf>,
    text: String,
}

/// Where a configuration came from is not part of what it configures: two configurations
/// that say the same are equal, whatever file (or spacing and comments) they came from.
impl PartialEq for Source {
    fn eq(&self, _other: &Source) -> bool {
        true
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("sluice-data"),
            cores: None,
            io: IoMode::Auto,
            listeners: Vec::new(),
            log: LogConfig::default(),
            window: WindowConfig::default(),
            checkpoint: CheckpointConfig::default(),
            admin: AdminConfig::default(),
            deadletter: DeadLetterConfig::default(),
            results: ResultsConfig::default(),
            alerts: Vec::new(),
            notify: NotifyConfig::default(),
            experiments: Vec::new(),
            source: None,
        }
    }
}

/// The listeners sluice runs when neither the file nor the flags name any: the ports people
/// already point their tools at, on 127.0.0.1.
pub fn default_listeners() -> Vec<ListenerConfig> {
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    vec![
        ListenerConfig::new("graphite-tcp", Proto::Tcp, at(2003), Format::Graphite),
        ListenerConfig::new("graphite-udp", Proto::Udp, at(2003), Format::Graphite),
        ListenerConfig::new("statsd-udp", Proto::Udp, at(8125), Format::Statsd),
        ListenerConfig::new("syslog-tcp", Proto::Tcp, at(5140), Format::Syslog),
        ListenerConfig::new("syslog-udp", Proto::Udp, at(5140), Format::Syslog),
        ListenerConfig::new("raw-tcp", Proto::Tcp, at(7070), Format::Raw),
    ]
}

impl Config {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::from_toml(&text).map_err(|message| Error::File {
            path: path.to_path_buf(),
            message,
        })?;
        config.source = Some(std::sync::Arc::new(Source {
            path: Some(path.to_path_buf()),
            text,
        }));
        Ok(config)
    }

    /// Parses TOML text; the error message names the key and the line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        config.source = Some(std::sync::Arc::new(Source {
            path: None,
            text: text.to_string(),
        }));
        config.check_listeners().map_err(|(index, message)| {
            let line = nth_table_line(text, "[[listener]]", index)
                .map(|l| format!("line {l}: "))
                .unwrap_or_default();
            format!("{line}[[listener]] #{}: {message}", index + 1)
        })?;
        // The rules are checked in `finish`, once `--window` flags have replaced the sizes
        // their `window` must name.
        config.notify.check().map_err(|(key, message)| {
            let line = key_line(text, "[notify]", key)
                .or_else(|| nth_table_line(text, "[notify]", 0))
                .map(|l| format!("line {l}: "))
                .unwrap_or_default();
            format!("{line}{message}")
        })?;
        config.check_relations().map_err(|e| {
            let line = if e.table.is_empty() {
                root_key_line(text, e.key)
            } else {
                let header = format!("[{}]", e.table);
                key_line(text, &header, e.key).or_else(|| nth_table_line(text, &header, 0))
            };
            let line = line.map(|l| format!("line {l}: ")).unwrap_or_default();
            format!("{line}{}", e.message)
        })?;
        Ok(config)
    }

    /// Checks the settings that relate to each other or are out of range in ways the value
    /// parsers cannot see; the error names the key it is about.
    fn check_relations(&self) -> Result<(), Invalid> {
        let invalid = |table, key, message: String| Invalid {
            table,
            key,
            message,
        };
        if let Some(cores) = self.cores
            && (cores == 0 || cores > limits::CORES_MAX)
        {
            let m = format!("cores = {cores}: must be 1..={}", limits::CORES_MAX);
            return Err(invalid("", "cores", m));
        }
        if self.io == IoMode::Uring {
            let m = "io = uring: the io_uring backend is not available in this build; use \
                     `auto` or `epoll`";
            return Err(invalid("", "io", m.into()));
        }
        if self.window.sizes.is_empty() {
            let m = "window.sizes: at least one window size is needed";
            return Err(invalid("window", "sizes", m.into()));
        }
        self.window
            .check()
            .map_err(|m| invalid("window", "hop", m))?;
        if self.log.flush_interval_ms == 0 {
            let m = "log.flush_interval_ms = 0: must be > 0";
            return Err(invalid("log", "flush_interval_ms", m.into()));
        }
        self.deadletter
            .check()
            .map_err(|m| invalid("deadletter", "max_bytes", m))?;
        if self.checkpoint.interval_ms == 0 {
            let m = "checkpoint.interval_ms = 0: must be > 0";
            return Err(invalid("checkpoint", "interval_ms", m.into()));
        }
        if self.checkpoint.keep == 0 {
            let m = "checkpoint.keep = 0: at least one checkpoint must be kept";
            return Err(invalid("checkpoint", "keep", m.into()));
        }
        Ok(())
    }

    /// Fills in derived values and checks relations between settings. Called once all
    /// sources (file, flags, defaults) are merged.
    pub fn finish(mut self) -> Result<Config, Error> {
        if self.listeners.is_empty() {
            self.listeners = default_listeners();
        }
        self.check_listeners()
            .map_err(|(i, m)| Error::Invalid(format!("listener #{}: {m}", i + 1)))?;
        // More cores than the limit (a very large machine) are capped, not refused.
        self.cores = Some(
            self.cores
                .unwrap_or_else(|| online_cores().min(limits::CORES_MAX)),
        );
        self.check_relations()
            .map_err(|e| Error::Invalid(e.message))?;
        self.alert_rules().map_err(|(i, e)| {
            self.table_error("[[alert]]", i, &self.alerts[i].name, e.key, &e.message)
        })?;
        self.name_listeners();
        let experiments = self.experiment_list().map_err(|(i, e)| {
            let name = &self.experiments[i].name;
            self.table_error("[[experiment]]", i, name, e.key, &e.message)
        })?;
        // The experiment's listener reads its unit field.
        for e in &experiments {
            self.listeners[e.listener].options.unit = Some(e.unit.clone());
        }
        Ok(self)
    }

    /// The error of the `index`th table `header` (`[[alert]]`), named `name`, about its
    /// `key`: naming the line when the configuration came from a file.
    fn table_error(
        &self,
        header: &str,
        index: usize,
        name: &str,
        key: &str,
        message: &str,
    ) -> Error {
        let Some(source) = &self.source else {
            return Error::Invalid(format!("{header} `{name}`: {message}"));
        };
        let text = &source.text;
        let line = key_line_in_nth_table(text, header, index, key)
            .or_else(|| nth_table_line(text, header, index))
            .map(|l| format!("line {l}: "))
            .unwrap_or_default();
        let message = format!("{line}{header} `{name}` (#{}): {message}", index + 1);
        match &source.path {
            Some(path) => Error::File {
                path: path.clone(),
                message,
            },
            None => Error::Invalid(message),
        }
    }

    /// The `[[experiment]]` splits, compiled against the listeners; an error gives the
    /// index of the table.
    pub fn experiment_list(
        &self,
    ) -> Result<
        Vec<crate::experiments::config::Experiment>,
        (usize, crate::experiments::config::ExperimentError),
    > {
        let listeners: Vec<(&str, Format)> = self
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.format))
            .collect();
        crate::experiments::config::compile_all(&self.experiments, &listeners)
    }

    /// The `[[alert]]` rules, compiled against the windows and quantiles; an error gives the
    /// index of the rule.
    pub fn alert_rules(
        &self,
    ) -> Result<Vec<crate::alerts::Rule>, (usize, crate::alerts::RuleError)> {
        let specs = self.window.specs();
        let mut names = std::collections::HashSet::new();
        let mut rules = Vec::with_capacity(self.alerts.len());
        for (i, c) in self.alerts.iter().enumerate() {
            if i >= limits::ALERT_RULES_MAX {
                let m = format!("at most {} rules", limits::ALERT_RULES_MAX);
                return Err((
                    i,
                    crate::alerts::RuleError {
                        key: "name",
                        message: m,
                    },
                ));
            }
            let rule = crate::alerts::Rule::compile(c, &specs, &self.window.quantiles)
                .map_err(|e| (i, e))?;
            if !names.insert(c.name.clone()) {
                let m = format!("another rule is named `{}`", c.name);
                return Err((
                    i,
                    crate::alerts::RuleError {
                        key: "name",
                        message: m,
                    },
                ));
            }
            rules.push(rule);
        }
        Ok(rules)
    }

    /// The number of cores, once [`Config::finish`] has run.
    pub fn core_count(&self) -> usize {
        self.cores.unwrap_or_else(online_cores)
    }

    /// Names listeners that have none and checks that names are unique and addresses do not
    /// collide. Returns the index of the offending listener.
    fn check_listeners(&self) -> Result<(), (usize, String)> {
        let mut seen_names = std::collections::HashSet::new();
        let mut seen_addrs = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let name = if l.name.is_empty() {
                auto_name(l)
            } else {
                l.name.clone()
            };
            if !seen_names.insert(name.clone()) {
                return Err((i, format!("duplicate listener name `{name}`")));
            }
            if l.addr.port() != 0 && !seen_addrs.insert((l.proto, l.addr)) {
                return Err((
                    i,
                    format!("{}://{} is used by two listeners", l.proto.as_str(), l.addr),
                ));
            }
            if l.max_connections == 0 {
                return Err((i, "max_connections must be > 0".into()));
            }
            check_format_options(l.format, &l.options).map_err(|m| (i, m))?;
        }
        Ok(())
    }

    /// Gives every unnamed listener its automatic name (`FORMAT-PROTO-PORT`).
    pub fn name_listeners(&mut self) {
        for l in &mut self.listeners {
            if l.name.is_empty() {
                l.name = auto_name(l);
            }
        }
    }
}

/// Checks that a listener's `key`, `value` and `time` options make sense for its format.
fn check_format_options(format: Format, options: &FormatOptions) -> Result<(), String> {
    let name = format.as_str();
    let takes_value_and_time = matches!(format, Format::Json | Format::Logfmt);
    if !takes_value_and_time && (options.value.is_some() || options.time.is_some()) {
        return Err(format!(
            "format {name} takes no `value` or `time` option (json and logfmt do)"
        ));
    }
    if options.strict.is_some() && format != Format::Syslog {
        return Err(format!(
            "format {name} takes no `strict` option (syslog does)"
        ));
    }
    match (format, &options.key) {
        (Format::Json, _) => crate::parse::fields::check_options(options, true),
        (Format::Logfmt, _) => crate::parse::fields::check_options(options, false),
        (_, None) => Ok(()),
        (Format::Raw, Some(key)) if key.len() == 1 && key[0] == "first_token" => Ok(()),
        (Format::Raw, Some(_)) => Err("format raw takes `key=first_token` only".into()),
        (Format::Syslog, Some(key)) => crate::parse::syslog::check_key_fields(key),
        (Format::Graphite | Format::Statsd | Format::Influx, Some(_)) => Err(format!(
            "format {name} takes no `key` option (its key comes from the line)"
        )),
    }
}

fn auto_name(l: &ListenerConfig) -> String {
    format!(
        "{}-{}-{}",
        l.format.as_str(),
        l.proto.as_str(),
        l.addr.port()
    )
}

/// Every online core, as the OS reports it.
pub fn online_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(limits::CORES_MAX)
}

/// `toml`'s message, with the line number spelled out first.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let source_line = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}: {message} (at `{source_line}`)")
        }
        None => message,
    }
}

/// A setting that does not hold: the table (`""` for the top level) and key it is about.
struct Invalid {
    table: &'static str,
    key: &'static str,
    message: String,
}

/// Line number (1-based) of a top-level `key = ...` (before the first table).
fn root_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find(|(_, l)| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|(i, _)| i + 1)
}

/// Line number (1-based) of `key = ...` inside the first table `header`.
fn key_line(text: &str, header: &str, key: &str) -> Option<usize> {
    key_line_in_nth_table(text, header, 0, key)
}

/// Line number (1-based) of `key = ...` inside the `n`th table `header` (`[[alert]]`).
fn key_line_in_nth_table(text: &str, header: &str, n: usize, key: &str) -> Option<usize> {
    let start = nth_table_line(text, header, n)?;
    text.lines()
        .enumerate()
        .skip(start)
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find(|(_, l)| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|(i, _)| i + 1)
}

/// Line number (1-based) of the `n`th occurrence of a table header.
fn nth_table_line(text: &str, header: &str, n: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(header))
        .nth(n)
        .map(|(i, _)| i + 1)
}

impl From<&LogConfig> for crate::log::Options {
    fn from(c: &LogConfig) -> crate::log::Options {
        crate::log::Options {
            segment_bytes: c.segment_bytes,
            flush: c.flush,
            flush_interval_ms: c.flush_interval_ms,
            retention_bytes: c.retention_bytes,
            retention_hours: c.retention_hours,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::from_toml("").unwrap().finish().unwrap();
        assert_eq!(c.listeners, default_listeners());
        assert_eq!(c.window.sizes, vec![Millis(10_000), Millis(60_000)]);
        assert_eq!(c.admin.addr, "127.0.0.1:9900".parse().unwrap());
    }

    #[test]
    fn a_resend_interval_out_of_range_names_its_line() {
        let err = Config::from_toml("[notify]\nresend_interval = \"500ms\"\n").unwrap_err();
        assert!(err.starts_with("line 2: notify.resend_interval"), "{err}");
        let c = Config::from_toml("[notify]\nresend_interval = \"5s\"\n").unwrap();
        assert_eq!(c.notify.resend_interval, Millis(5_000));
    }

    #[test]
    fn an_alert_window_is_checked_against_the_sizes_the_flags_give() {
        let text =
            "cores = 1\n\n[[alert]]\nname = \"fast\"\nkey = \"k\"\nwindow = \"1s\"\nabove = 1\n";
        // The file's sizes (the defaults, 10s and 1m) lack 1s; `--window 1s` gives it.
        let mut c = Config::from_toml(text).unwrap();
        c.window.sizes = vec![Millis(1000)];
        let rules = c.finish().unwrap().alert_rules().unwrap();
        assert_eq!(rules[0].window.size_ms, 1000);
        // Without the flag the rule is refused, naming its line.
        let err = Config::from_toml(text)
            .unwrap()
            .finish()
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 6: [[alert]] `fast` (#1): "), "{err}");
        assert!(err.contains("not a configured window size"), "{err}");
    }

    #[test]
    fn full_file_round_trips() {
        let text = r#"
data_dir = "/var/lib/sluice"
cores = 2
io = "epoll"

[[listener]]
name = "metrics"
proto = "tcp"
addr = "0.0.0.0:2003"
format = "graphite"
max_line_bytes = 4096

[[listener]]
proto = "tcp"
addr = "127.0.0.1:7070"
format = "raw"
key = "first_token"

[log]
segment_bytes = "8MiB"
flush = "always"
retention_bytes = "10GiB"
retention_hours = 48

[window]
sizes = ["1s", "1m"]
allowed_lateness = "2s"

[checkpoint]
interval_ms = 1000
keep = 2
"#;
        let mut c = Config::from_toml(text).unwrap().finish().unwrap();
        c.name_listeners();
        assert_eq!(c.cores, Some(2));
        assert_eq!(c.listeners[0].max_line_bytes, 4096);
        assert_eq!(c.listeners[1].name, "raw-tcp-7070");
        assert_eq!(
            c.listeners[1].options.key,
            Some(vec!["first_token".to_string()])
        );
        assert_eq!(c.log.segment_bytes, 8 * 1024 * 1024);
        assert_eq!(c.log.flush, FlushPolicy::Always);
        assert_eq!(c.log.retention_bytes, 10 << 30);
        assert_eq!(c.log.retention_hours, 48);
        assert_eq!(Config::default().log.retention_bytes, 0);
        assert_eq!(c.window.sizes, vec![Millis(1_000), Millis(60_000)]);
        assert_eq!(c.window.allowed_lateness, Millis(2_000));
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let err = Config::from_toml("cores = 1\n[log]\nflsh = \"always\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("flsh"), "{err}");
    }

    #[test]
    fn bad_values_name_the_line() {
        let err = Config::from_toml("[window]\n\nsizes = [\"10x\"]\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        let err =
            Config::from_toml("[[listener]]\nproto = \"tcp\"\naddr = \"nope\"\nformat = \"raw\"\n")
                .unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        let err = Config::from_toml(
            "[[listener]]\nproto = \"sctp\"\naddr = \"127.0.0.1:1\"\nformat = \"raw\"\n",
        )
        .unwrap_err();
        assert!(err.contains("line 2") && err.contains("sctp"), "{err}");
        let err = Config::from_toml("[log]\nsegment_bytes = 100\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("segment_bytes"),
            "{err}"
        );
    }

    #[test]
    fn format_options_are_checked_per_format() {
        let listener = |format: &str, options: &str| {
            format!(
                "[[listener]]\nproto = \"tcp\"\naddr = \"127.0.0.1:1\"\nformat = \"{format}\"\n{options}\n"
            )
        };
        for (format, options) in [
            (
                "json",
                "key = \"service,http.status\"\nvalue = \"ms\"\ntime = \"ts\"",
            ),
            ("logfmt", "key = \"service\"\nvalue = \"ms\""),
            ("json", ""),
            ("influx", ""),
            ("syslog", "key = \"host,app\""),
            ("raw", "key = \"first_token\""),
        ] {
            Config::from_toml(&listener(format, options)).unwrap();
        }
        for (format, options, needle) in [
            ("syslog", "key = \"hostname\"", "unknown syslog key field"),
            ("json", "key = \"a..b\"", "bad field name"),
            ("logfmt", "value = \"a b\"", "bad field name"),
            ("influx", "key = \"a\"", "takes no `key`"),
            ("graphite", "value = \"a\"", "takes no `value`"),
            ("raw", "key = \"host\"", "first_token"),
        ] {
            let err = Config::from_toml(&listener(format, options)).unwrap_err();
            assert!(err.contains(needle) && err.contains("line 1"), "{err}");
        }
    }

    #[test]
    fn strict_is_for_syslog_only() {
        let text = "[[listener]]\nproto = \"tcp\"\naddr = \"127.0.0.1:1\"\nformat = \"FMT\"\nstrict = true\n";
        assert!(Config::from_toml(&text.replace("FMT", "syslog")).is_ok());
        let e = Config::from_toml(&text.replace("FMT", "graphite")).unwrap_err();
        assert!(e.contains("strict") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn a_bad_window_hop_is_refused_naming_the_key_and_line() {
        for (hop, says) in [("\"0s\"", "hop = 0"), ("\"3s\"", "does not divide")] {
            let text = format!("[window]\nsizes = [\"10s\", \"1m\"]\nhop = {hop}\n");
            let e = Config::from_toml(&text).unwrap_err();
            assert!(e.contains("line 3") && e.contains(says), "{e}");
        }
        assert!(Config::from_toml("[window]\nsizes = [\"10s\"]\nhop = \"5s\"\n").is_ok());
        // Sizes given on the command line are checked against the file's hop too.
        let mut c = Config::from_toml("[window]\nsizes = [\"10s\"]\nhop = \"5s\"\n").unwrap();
        c.window.sizes = vec![Millis(7_000)];
        assert!(c.finish().is_err());
    }

    #[test]
    fn deadletter_keys_are_range_checked_with_their_line() {
        let c = Config::from_toml("[deadletter]\nmax_bytes = \"1MiB\"\nfiles = 2\nrepeats = 0\n")
            .unwrap();
        assert_eq!(c.deadletter.max_bytes, 1 << 20);
        assert_eq!((c.deadletter.files, c.deadletter.repeats), (2, 0));
        for (text, line, key) in [
            ("[deadletter]\nfiles = 0\n", "line 2", "files"),
            ("[deadletter]\n\nfiles = 1000\n", "line 3", "files"),
            ("[deadletter]\nrepeats = 99999999\n", "line 2", "repeats"),
            (
                "[deadletter]\nmax_bytes = \"1KiB\"\n",
                "line 2",
                "max_bytes",
            ),
            ("[deadletter]\nmax_bytes = \"5TiB\"\n", "line 2", "size"),
            (
                "[deadletter]\nfiles = 100\nmax_bytes = \"1MiB\"\n",
                "line 3",
                "max_bytes",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err();
            assert!(err.contains(line) && err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn an_admin_token_is_checked_with_its_line() {
        let c = Config::from_toml("[admin]\ntoken = \"0123456789abcdef\"\n").unwrap();
        assert_eq!(c.admin.token.as_deref(), Some("0123456789abcdef"));
        for bad in ["short", "has a space in it ok", "semi;colon-0123456789"] {
            let e = Config::from_toml(&format!("[admin]\ntoken = \"{bad}\"\n")).unwrap_err();
            assert!(e.contains("line 2") && e.contains("token"), "{bad}: {e}");
        }
    }

    #[test]
    fn duplicate_listener_names_point_at_the_second_table() {
        let text = "[[listener]]\nname = \"a\"\nproto = \"tcp\"\naddr = \"127.0.0.1:1\"\nformat = \"raw\"\n\
                    [[listener]]\nname = \"a\"\nproto = \"udp\"\naddr = \"127.0.0.1:1\"\nformat = \"raw\"\n";
        let err = Config::from_toml(text).unwrap_err();
        assert!(err.contains("line 6") && err.contains("duplicate"), "{err}");
    }
}
