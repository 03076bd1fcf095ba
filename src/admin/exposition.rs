//! `/metrics`: the exposition of [`Metrics`], built at scrape time, in Prometheus text format
//! 0.0.4 or in OpenMetrics 1.0.0, as the scraper's `Accept` asks ([`negotiate`]).
//!
//! Each scrape reads the atomics the cores write into a fresh [`Page`] and writes it out;
//! nothing is kept between scrapes, so the exposition cannot drift from the counters. Names
//! start with `sluice_`, units come last, and both formats carry the same samples under the
//! same names; they differ only where the formats do:
//!
//! ```text
//!                        text 0.0.4                       OpenMetrics 1.0.0
//! counter family         # HELP sluice_lines_total ...    # HELP sluice_lines ...
//!                        # TYPE sluice_lines_total counter  # TYPE sluice_lines counter
//! unit                   (none)                           # UNIT sluice_uptime_seconds seconds
//! sample                 sluice_lines_total{...} 3        sluice_lines_total{...} 3
//! end of page            (none)                           # EOF
//! ```
//!
//! No `_created` samples are written. Labels:
//!
//! ```text
//! per listener, per core:  core, listener, proto, format
//! rejected lines:          core, listener, reason   (zeros included, but only the reasons
//!                                                    the listener's framing and format can
//!                                                    produce: ListenerInfo::rejects)
//! per core:                core
//! checkpoint, uptime:      none
//! latency summaries:       quantile (on the quantile samples; _sum and _count have none)
//! ```
//!
//! Latencies (hdrhistogram, see `metrics::Latency`) are summaries merged over the cores:
//! `{quantile="0.5"|"0.9"|"0.99"|"0.999"}` over the last one to two minutes (`NaN` when
//! nothing was recorded in them), `_sum` and `_count` since start. Each core's longest loop
//! turn over the same window is a gauge, `sluice_core_stall_max_seconds{core}`.
//!
//! UDP listeners have no connection series and TCP listeners no `udp_dropped` series.
//! `sluice_watermark_seconds{core}` is absent until that core's watermark is known. A family
//! with no series is left out.

#![forbid(unsafe_code)]

use std::fmt::{self, Display, Write as _};

use crate::metrics::{CoreMetrics, ListenerCounters, ListenerInfo, Metrics, StorageOp, Summary};

/// A format `/metrics` can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
    /// OpenMetrics asked for as version 0.0.1 (the draft 1.0.0 was released from; the same
    /// text, labelled as asked, as Prometheus's own client libraries answer).
    OpenMetrics001,
}

impl Exposition {
    /// The `Content-Type` of a page in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::Text => "text/plain; version=0.0.4; charset=utf-8",
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::OpenMetrics001 => {
                "application/openmetrics-text; version=0.0.1; charset=utf-8"
            }
        }
    }
}

/// Picks the format for a request's `Accept` (every `Accept` header joined with `,`; empty
/// when there is none), as Prometheus's client libraries do (`expfmt.Negotiate`): the media
/// ranges in order of preference (`q`, highest first; on a tie, as written), the first that
/// is `text/plain` (version 0.0.4 or none) or `application/openmetrics-text` (version 1.0.0,
/// 0.0.1 or none) wins. Anything else (`*/*`, `application/json`, another version) is
/// passed over, a range with `q=0` is not acceptable, and with no match the page is text
/// 0.0.4: so curl (`*/*`) and a missing `Accept` get text, and Prometheus, which asks for
/// OpenMetrics first, gets OpenMetrics. The header is bounded by the admin server's head
/// limit, so the work is too.
pub fn negotiate(accept: &str) -> Exposition {
    let mut best: Option<(f64, Exposition)> = None;
    for range in accept.split(',') {
        let Some((q, exposition)) = media_range(range) else {
            continue;
        };
        if q > 0.0 && best.is_none_or(|(best_q, _)| q > best_q) {
            best = Some((q, exposition));
        }
    }
    best.map_or(Exposition::Text, |(_, e)| e)
}

/// One media range of an `Accept`: its `q` and the format it names, if sluice writes it.
fn media_range(range: &str) -> Option<(f64, Exposition)> {
    let mut parts = range.split(';');
    let media = parts.next()?.trim();
    let mut q = 1.0;
    let mut version = None;
    for param in parts {
        let (name, value) = param.split_once('=')?;
        let value = value.trim().trim_matches('"');
        match name.trim() {
            n if n.eq_ignore_ascii_case("q") => q = value.parse().ok()?,
            n if n.eq_ignore_ascii_case("version") => version = Some(value),
            _ => {}
        }
    }
    let exposition = if media.eq_ignore_ascii_case("text/plain") {
        match version {
            None | Some("0.0.4") => Exposition::Text,
            Some(_) => return None,
        }
    } else if media.eq_ignore_ascii_case("application/openmetrics-text") {
        match version {
            None | Some("1.0.0") => Exposition::OpenMetrics,
            Some("0.0.1") => Exposition::OpenMetrics001,
            Some(_) => return None,
        }
    } else {
        return None;
    };
    Some((q, exposition))
}

/// Renders `metrics` in `exposition`.
pub fn encode(metrics: &Metrics, exposition: Exposition) -> Result<String, fmt::Error> {
    let mut page = Page::default();
    register_listeners(&mut page, metrics);
    register_cores(&mut page, metrics);
    register_process(&mut page, metrics);
    register_admin(&mut page, metrics);
    register_latency(&mut page, metrics);
    register_alerts(&mut page, metrics);
    let mut out = String::new();
    match exposition {
        Exposition::Text => page.write_text(&mut out)?,
        Exposition::OpenMetrics | Exposition::OpenMetrics001 => page.write_openmetrics(&mut out)?,
    }
    Ok(out)
}

/// What a family's samples mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    /// Samples `{quantile="…"}`, `_sum` and `_count`, each named with its suffix.
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// A sample's value, written as both formats want it (`+Inf`, `-Inf`, `NaN`).
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Uint(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// A label set, written as `{name="value",...}` (nothing when empty), in the order the
/// labels were added.
#[derive(Debug, Clone, Default)]
struct Labels(String);

impl Labels {
    fn with(mut self, name: &str, value: impl Display) -> Labels {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        self.0.push_str(name);
        self.0.push_str("=\"");
        // Both formats escape `\`, `"` and newline in label values.
        for c in value.to_string().chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        self.0.push('"');
        self
    }

    fn core(core: usize) -> Labels {
        Labels::default().with("core", core)
    }
}

impl Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{{{}}}", self.0)
        }
    }
}

/// One metric family: its series in the order they were added (core, then listener), so
/// the page reads the same from scrape to scrape.
#[derive(Debug)]
struct Family {
    /// `sluice_` + name + `_` + unit; a counter's samples add `_total`.
    name: String,
    help: &'static str,
    kind: Kind,
    unit: Option<&'static str>,
    /// (suffix of the sample's name after the family's, labels, value): the suffix is
    /// empty but for a summary's `_sum` and `_count`.
    samples: Vec<(&'static str, Labels, Value)>,
}

/// Every family of one scrape.
#[derive(Debug, Default)]
struct Page(Vec<Family>);

impl Page {
    fn add(
        &mut self,
        kind: Kind,
        name: &str,
        unit: Option<&'static str>,
        help: &'static str,
        samples: impl IntoIterator<Item = (Labels, Value)>,
    ) {
        let name = match unit {
            Some(unit) => format!("sluice_{name}_{unit}"),
            None => format!("sluice_{name}"),
        };
        debug_assert!(
            !name.ends_with("_total"),
            "{name}: _total is added for counters"
        );
        self.0.push(Family {
            name,
            help,
            kind,
            unit,
            samples: samples.into_iter().map(|(l, v)| ("", l, v)).collect(),
        });
    }

    /// A summary of a latency in seconds, without other labels (merged over the cores).
    fn summary_seconds(&mut self, name: &str, help: &'static str, summary: &Summary) {
        self.add(Kind::Summary, name, Some("seconds"), help, []);
        let family = self.0.last_mut().expect("just added");
        for (q, v) in summary.quantiles() {
            let labels = Labels::default().with("quantile", q);
            family
                .samples
                .push(("", labels, Value::Float(v.unwrap_or(f64::NAN))));
        }
        let total = Value::Float(summary.sum_seconds);
        family.samples.push(("_sum", Labels::default(), total));
        let count = Value::Uint(summary.count);
        family.samples.push(("_count", Labels::default(), count));
    }

    fn counter(
        &mut self,
        name: &str,
        help: &'static str,
        rows: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let samples = rows.into_iter().map(|(l, v)| (l, Value::Uint(v)));
        self.add(Kind::Counter, name, None, help, samples);
    }

    fn counter_seconds(
        &mut self,
        name: &str,
        help: &'static str,
        rows: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        let samples = rows.into_iter().map(|(l, v)| (l, Value::Float(v)));
        self.add(Kind::Counter, name, Some("seconds"), help, samples);
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &'static str,
        rows: impl IntoIterator<Item = (Labels, i64)>,
    ) {
        let samples = rows.into_iter().map(|(l, v)| (l, Value::Int(v)));
        self.add(Kind::Gauge, name, None, help, samples);
    }

    fn gauge_bytes(
        &mut self,
        name: &str,
        help: &'static str,
        rows: impl IntoIterator<Item = (Labels, i64)>,
    ) {
        let samples = rows.into_iter().map(|(l, v)| (l, Value::Int(v)));
        self.add(Kind::Gauge, name, Some("bytes"), help, samples);
    }

    fn gauge_seconds(
        &mut self,
        name: &str,
        help: &'static str,
        rows: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        let samples = rows.into_iter().map(|(l, v)| (l, Value::Float(v)));
        self.add(Kind::Gauge, name, Some("seconds"), help, samples);
    }

    /// Text format 0.0.4: a counter family is named with its `_total`, as its samples are;
    /// HELP escapes `\` and newline.
    fn write_text(&self, out: &mut String) -> fmt::Result {
        for f in self.0.iter().filter(|f| !f.samples.is_empty()) {
            let name = match f.kind {
                Kind::Counter => format!("{}_total", f.name),
                Kind::Gauge | Kind::Summary => f.name.clone(),
            };
            writeln!(out, "# HELP {name} {}", escape_help(f.help, false))?;
            writeln!(out, "# TYPE {name} {}", f.kind.as_str())?;
            for (suffix, labels, value) in &f.samples {
                writeln!(out, "{name}{suffix}{labels} {value}")?;
            }
        }
        Ok(())
    }

    /// OpenMetrics 1.0.0: a counter family is named without `_total` and its samples with
    /// it; units get a UNIT line; HELP also escapes `"`; the page ends with `# EOF`.
    fn write_openmetrics(&self, out: &mut String) -> fmt::Result {
        for f in self.0.iter().filter(|f| !f.samples.is_empty()) {
            let name = &f.name;
            writeln!(out, "# HELP {name} {}", escape_help(f.help, true))?;
            writeln!(out, "# TYPE {name} {}", f.kind.as_str())?;
            if let Some(unit) = f.unit {
                writeln!(out, "# UNIT {name} {unit}")?;
            }
            let total = match f.kind {
                Kind::Counter => "_total",
                Kind::Gauge | Kind::Summary => "",
            };
            for (suffix, labels, value) in &f.samples {
                writeln!(out, "{name}{total}{suffix}{labels} {value}")?;
            }
        }
        out.push_str("# EOF\n");
        Ok(())
    }
}

/// HELP text escaped: `\` and newline in both formats, `"` too in OpenMetrics.
fn escape_help(help: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// A listener's labels on one core.
fn listener_labels(core: usize, info: &ListenerInfo) -> Labels {
    Labels::core(core)
        .with("listener", &info.name)
        .with("proto", info.proto)
        .with("format", info.format)
}

/// A listener on a core: (core, listener, its counters there).
type ListenerRow<'a> = (usize, &'a ListenerInfo, &'a ListenerCounters);

/// One series per row, of the counter `f` reads.
fn per_listener<'a>(
    rows: impl Iterator<Item = &'a ListenerRow<'a>>,
    f: impl Fn(&ListenerCounters) -> u64,
) -> Vec<(Labels, u64)> {
    rows.map(|(core, l, c)| (listener_labels(*core, l), f(c)))
        .collect()
}

fn register_listeners(page: &mut Page, metrics: &Metrics) {
    // (core, listener, counters) for every listener on every core.
    let rows: Vec<ListenerRow<'_>> = metrics
        .cores
        .iter()
        .enumerate()
        .flat_map(|(core, c)| {
            metrics
                .listeners
                .iter()
                .zip(&c.listeners)
                .map(move |(info, counters)| (core, info, counters))
        })
        .collect();
    let all = || rows.iter();
    let udp = || rows.iter().filter(|(_, l, _)| l.proto == "udp");
    let tcp = || rows.iter().filter(|(_, l, _)| l.proto != "udp");

    let help = "Lines accepted into the log.";
    page.counter("lines", help, per_listener(all(), |c| c.lines_total.get()));
    let help = "Bytes read from the network, before framing.";
    page.counter("bytes", help, per_listener(all(), |c| c.bytes_total.get()));
    let help = "Events parsed from accepted lines.";
    page.counter(
        "events",
        help,
        per_listener(all(), |c| c.events_total.get()),
    );
    let rejected = all().flat_map(|(core, l, c)| {
        l.rejects.iter().map(move |r| {
            let labels = Labels::core(*core)
                .with("listener", &l.name)
                .with("reason", r.as_str());
            (labels, c.rejected_total[r.index()].get())
        })
    });
    page.counter("rejected", "Lines rejected, by reason.", rejected);
    let help = "UDP datagrams dropped because the core could not take them.";
    let dropped = per_listener(udp(), |c| c.udp_dropped_total.get());
    page.counter("udp_dropped", help, dropped);
    let help = "TCP connections accepted.";
    let accepted = per_listener(tcp(), |c| c.connections_total.get());
    page.counter("connections", help, accepted);
    let help = "TCP connections refused because max_connections was reached.";
    let refused = per_listener(tcp(), |c| c.connections_refused_total.get());
    page.counter("connections_refused", help, refused);
    let help = "TCP connections accepted on this core and passed to a core with fewer.";
    let handed = per_listener(tcp(), |c| c.connections_handed_off_total.get());
    page.counter("connections_handed_off", help, handed);
    let help = "Idle TCP connections closed to make room for a new one.";
    let displaced = per_listener(tcp(), |c| c.connections_displaced_total.get());
    page.counter("connections_displaced", help, displaced);
    let help = "TCP connections closed after sending nothing for the listener's idle_timeout.";
    let timed_out = per_listener(tcp(), |c| c.connections_timed_out_total.get());
    page.counter("connections_timed_out", help, timed_out);
    let help = "Failed accepts (out of descriptors or memory); the listener pauses after each.";
    let accept_errors = per_listener(tcp(), |c| c.accept_errors_total.get());
    page.counter("accept_errors", help, accept_errors);
    let help = "TCP connections open now.";
    let open = tcp().map(|(core, l, c)| (listener_labels(*core, l), c.connections_open.get()));
    page.gauge("connections_open", help, open);
}

fn register_cores(page: &mut Page, metrics: &Metrics) {
    let rows: Vec<(usize, &CoreMetrics)> = metrics.cores.iter().enumerate().collect();
    let help = "Time socket reads were paused because a queue was full.";
    let paused = per_core(&rows, |c| ns_to_seconds(c.backpressure_ns_total.get()));
    page.counter_seconds("backpressure", help, paused);
    let help = "Messages waiting in the core's inbound queues.";
    page.gauge(
        "queue_depth",
        help,
        per_core(&rows, |c| c.queue_depth.get()),
    );
    let help = "Batches waiting in the core's outbound pending buffers.";
    let pending = per_core(&rows, |c| c.pending_batches.get());
    page.gauge("pending_batches", help, pending);
    let help = "Events folded into the core's shard.";
    let folded = per_core(&rows, |c| c.window_events_total.get());
    page.counter("window_events", help, folded);
    let help = "Events that arrived after their window had closed.";
    let late = per_core(&rows, |c| c.late_events_total.get());
    page.counter("late_events", help, late);
    let help = "Events counted under the overflow key because the shard was full.";
    let overflow = per_core(&rows, |c| c.overflow_events_total.get());
    page.counter("overflow_events", help, overflow);
    let help = "Windows closed and written to the aggregates output.";
    let closed = per_core(&rows, |c| c.windows_closed_total.get());
    page.counter("windows_closed", help, closed);
    let help = "Windows open now.";
    page.gauge(
        "windows_open",
        help,
        per_core(&rows, |c| c.windows_open.get()),
    );
    let help = "Live keys in the shard.";
    page.gauge("keys", help, per_core(&rows, |c| c.keys.get()));
    let known = rows
        .iter()
        .filter(|(_, c)| c.watermark_ms.get() != i64::MIN);
    let watermark =
        known.map(|(core, c)| (Labels::core(*core), ms_to_seconds(c.watermark_ms.get())));
    let help = "The shard's combined watermark, as seconds since the Unix epoch.";
    page.gauge_seconds("watermark", help, watermark);
    register_log(page, &rows);
    register_storage(page, &rows);
    register_deadletter(page, &rows);
}

/// The log's per-core series.
fn register_log(page: &mut Page, rows: &[(usize, &CoreMetrics)]) {
    let help = "Next log offset of the core's partition.";
    let next = per_core(rows, |c| c.log_next_offset.get());
    page.gauge("log_next_offset", help, next);
    let help = "Log offset up to which the core's partition is flushed.";
    let flushed = per_core(rows, |c| c.log_flushed_offset.get());
    page.gauge("log_flushed_offset", help, flushed);
    let help = "Log flushes performed.";
    let flushes = per_core(rows, |c| c.log_flushes_total.get());
    page.counter("log_flushes", help, flushes);
    let help = "Time spent in log flushes.";
    let flush_time = per_core(rows, |c| us_to_seconds(c.log_flush_us_total.get()));
    page.counter_seconds("log_flush", help, flush_time);
    let help = "Log records replayed at start.";
    let replayed = per_core(rows, |c| c.replayed_lines_total.get());
    page.counter("replayed_lines", help, replayed);
    let help = "Bytes cut from the log partition's torn tail by recovery at start.";
    let truncated = per_core(rows, |c| c.log_truncated_bytes_total.get());
    page.counter("log_truncated_bytes", help, truncated);
    let help = "Damaged log batches found at start (cut out by recovery or skipped by replay).";
    let bad = per_core(rows, |c| c.log_bad_batches_total.get());
    page.counter("log_bad_batches", help, bad);
    let help = "Log offsets found at start to hold no line (damaged batches, missing segments).";
    let lost = per_core(rows, |c| c.log_lost_lines_total.get());
    page.counter("log_lost_lines", help, lost);
    let help = "Longest time the core spent at once on its share of a checkpoint (flush, barrier, a snapshot step).";
    let stall = per_core(rows, |c| {
        us_to_seconds(c.checkpoint_stall_us_max.get().max(0) as u64)
    });
    page.gauge_seconds("checkpoint_stall_max", help, stall);
}

/// Per-core series of failing writes.
fn register_storage(page: &mut Page, rows: &[(usize, &CoreMetrics)]) {
    let help = "1 while a write of the core fails and its input is held (not read).";
    let failing = per_core(rows, |c| c.storage_failing.get());
    page.gauge("storage_failing", help, failing);
    let help = "Time socket reads were paused because a write (log, aggregates) failed.";
    let blocked = per_core(rows, |c| ns_to_seconds(c.storage_blocked_ns_total.get()));
    page.counter_seconds("storage_blocked", help, blocked);
    let help = "Lines read and held because the log could not take them yet.";
    let held = per_core(rows, |c| c.held_lines.get());
    page.gauge("held_lines", help, held);
    let help = "Writes that failed (the input was held and the write retried), by operation.";
    let errors = rows.iter().flat_map(|(core, c)| {
        StorageOp::ALL.iter().map(move |op| {
            let labels = Labels::core(*core).with("op", op.as_str());
            (labels, c.storage_errors_total[*op as usize].get())
        })
    });
    page.counter("storage_errors", help, errors);
}

fn register_deadletter(page: &mut Page, rows: &[(usize, &CoreMetrics)]) {
    let help =
        "Rejections (lines, late events) written to the dead-letter log as their own record.";
    let written = per_core(rows, |c| c.deadletter.written_total.get());
    page.counter("deadletter_written", help, written);
    let help = "Rejections counted in a dead-letter repeat record instead of being copied.";
    let collapsed = per_core(rows, |c| c.deadletter.collapsed_total.get());
    page.counter("deadletter_collapsed", help, collapsed);
    let help = "Rejections not in the dead-letter log: cap (record over a file's share), \
                error (write failed), rotated (deleted by rotation to keep the cap).";
    let dropped = rows.iter().flat_map(|(core, c)| {
        let d = &c.deadletter;
        [
            ("cap", d.cap_total.get()),
            ("error", d.error_total.get()),
            ("rotated", d.rotated_total.get()),
        ]
        .map(|(reason, v)| (Labels::core(*core).with("reason", reason), v))
    });
    page.counter("deadletter_dropped", help, dropped);
    let help = "Dead-letter records written (own and repeat records).";
    let records = per_core(rows, |c| c.deadletter.records_total.get());
    page.counter("deadletter_records", help, records);
    let help = "Bytes in the partition's dead-letter files.";
    let bytes = per_core(rows, |c| c.deadletter.bytes.get());
    page.gauge_bytes("deadletter", help, bytes);
}

fn per_core<T>(rows: &[(usize, &CoreMetrics)], f: impl Fn(&CoreMetrics) -> T) -> Vec<(Labels, T)> {
    rows.iter()
        .map(|(core, c)| (Labels::core(*core), f(c)))
        .collect()
}

/// One unlabelled sample.
fn one<T>(v: T) -> [(Labels, T); 1] {
    [(Labels::default(), v)]
}

fn register_process(page: &mut Page, metrics: &Metrics) {
    let ckpt = &metrics.checkpoint;
    let committed = ckpt.committed_total.get();
    page.counter("checkpoints", "Checkpoints committed.", one(committed));
    let help = "Checkpoints that failed to write.";
    page.counter("checkpoint_failures", help, one(ckpt.failed_total.get()));
    let help = "Epoch of the newest committed checkpoint.";
    page.gauge("checkpoint_last_epoch", help, one(ckpt.last_epoch.get()));
    let duration = us_to_seconds(ckpt.last_duration_us.get().max(0) as u64);
    let help = "Time from barrier injection to commit of the newest checkpoint.";
    page.gauge_seconds("checkpoint_last_duration", help, one(duration));
    let help = "Size of the newest checkpoint file.";
    page.gauge_bytes("checkpoint_last", help, one(ckpt.last_bytes.get()));
    let uptime = metrics.started.elapsed().as_secs_f64();
    page.gauge_seconds("uptime", "Time since the process started.", one(uptime));
}

fn register_admin(page: &mut Page, metrics: &Metrics) {
    let admin = &metrics.admin;
    let help = "Admin HTTP connections accepted.";
    page.counter(
        "admin_connections",
        help,
        one(admin.connections_total.get()),
    );
    let help = "Admin HTTP connections open now.";
    page.gauge(
        "admin_connections_open",
        help,
        one(admin.connections_open.get()),
    );
    let help = "Admin HTTP connections closed at once because every slot had a request in flight.";
    let refused = admin.connections_refused_total.get();
    page.counter("admin_connections_refused", help, one(refused));
    let help = "Idle admin HTTP connections closed to make room for a new one.";
    let evicted = admin.connections_evicted_total.get();
    page.counter("admin_connections_evicted", help, one(evicted));
    let help = "Admin HTTP connections closed because a request head did not come in time.";
    let timed_out = admin.connections_timed_out_total.get();
    page.counter("admin_connections_timed_out", help, one(timed_out));
    let help = "Admin HTTP requests answered 408 because they took too long.";
    let slow = admin.requests_timed_out_total.get();
    page.counter("admin_requests_timed_out", help, one(slow));
}

/// Alerts firing per rule, and what became of each notifier's requests.
fn register_alerts(page: &mut Page, metrics: &Metrics) {
    let a = &metrics.alerts;
    let help = "Alerts firing now, by rule (every key of a prefix rule counts).";
    let firing = a
        .rules
        .iter()
        .zip(&a.firing)
        .map(|(name, g)| (Labels::default().with("alert", name), g.get()));
    page.gauge("alerts_firing", help, firing);
    let help = "Keys an alert rule could not watch because it held its most states.";
    page.counter(
        "alert_states_overflow",
        help,
        one(a.states_overflow_total.get()),
    );
    let help = "Notification requests, by notifier and result (success; retry: failed and \
                retried; rejected: refused with a 4xx and dropped).";
    let mut rows = Vec::new();
    for n in &a.notifiers {
        for (result, c) in [
            ("success", &n.success_total),
            ("retry", &n.retry_total),
            ("rejected", &n.rejected_total),
        ] {
            let labels = Labels::default()
                .with("notifier", &n.name)
                .with("result", result);
            rows.push((labels, c.get()));
        }
    }
    page.counter("notifications", help, rows);
    let help = "Alert transitions a notifier has read and not yet delivered.";
    let queued = a
        .notifiers
        .iter()
        .map(|n| (Labels::default().with("notifier", &n.name), n.queued.get()));
    page.gauge("notifications_queued", help, queued);
}

/// The latency summaries, merged over the cores, and each core's longest stall.
fn register_latency(page: &mut Page, metrics: &Metrics) {
    let l = metrics.latencies();
    let help = "From reading a batch of lines to folding its events into windows (per routed \
                batch; quantiles over the last 1-2 minutes).";
    page.summary_seconds("ingest_to_fold", help, &l.ingest_to_fold);
    let help = "From a watermark closing windows to their rows written to the results record \
                (per write-out; quantiles over the last 1-2 minutes).";
    page.summary_seconds("close_to_write", help, &l.close_to_write);
    let help = "Committed checkpoints, from barrier injection to commit (quantiles over the \
                last 1-2 minutes).";
    page.summary_seconds("checkpoint_duration", help, &l.checkpoint);
    let help = "Turns of the cores' loops: from one look at the inbound queues and control to \
                the next, asleep in poll left out (quantiles over the last 1-2 minutes).";
    page.summary_seconds("core_turn", help, &l.core_turn);
    let help = "The core's longest loop turn (its longest stall) in the last 1-2 minutes.";
    let stall = l
        .core_stall_max_seconds
        .iter()
        .enumerate()
        .filter_map(|(core, max)| Some((Labels::core(core), (*max)?)));
    page.gauge_seconds("core_stall_max", help, stall);
}

fn ns_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn us_to_seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

fn ms_to_seconds(ms: i64) -> f64 {
    ms as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Reject;

    fn metrics() -> Metrics {
        Metrics::new(
            2,
            vec![
                ListenerInfo {
                    name: "graphite-tcp".into(),
                    proto: "tcp",
                    format: "graphite",
                    rejects: vec![Reject::TooLong, Reject::BadNumber],
                },
                ListenerInfo {
                    name: "statsd-udp".into(),
                    proto: "udp",
                    format: "statsd",
                    rejects: vec![Reject::TooLong, Reject::BadFrame, Reject::UnknownType],
                },
            ],
        )
    }

    fn om(m: &Metrics) -> String {
        encode(m, Exposition::OpenMetrics).unwrap()
    }

    fn text(m: &Metrics) -> String {
        encode(m, Exposition::Text).unwrap()
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn counters_carry_listener_and_core_labels() {
        let m = metrics();
        m.cores[1].listeners[0].lines_total.add(42);
        m.cores[1].listeners[0].bytes_total.add(4096);
        m.cores[0].listeners[1].events_total.add(7);
        m.cores[0].listeners[1].udp_dropped_total.add(3);
        m.cores[1].listeners[0].connections_open.set(2);
        let text = om(&m);
        let l = lines(&text);
        for want in [
            r#"sluice_lines_total{core="1",listener="graphite-tcp",proto="tcp",format="graphite"} 42"#,
            r#"sluice_lines_total{core="0",listener="graphite-tcp",proto="tcp",format="graphite"} 0"#,
            r#"sluice_bytes_total{core="1",listener="graphite-tcp",proto="tcp",format="graphite"} 4096"#,
            r#"sluice_events_total{core="0",listener="statsd-udp",proto="udp",format="statsd"} 7"#,
            r#"sluice_udp_dropped_total{core="0",listener="statsd-udp",proto="udp",format="statsd"} 3"#,
            r#"sluice_connections_open{core="1",listener="graphite-tcp",proto="tcp",format="graphite"} 2"#,
            "# TYPE sluice_lines counter",
            "# EOF",
        ] {
            assert!(l.contains(&want), "missing `{want}` in\n{text}");
        }
        assert!(!text.contains(r#"sluice_udp_dropped_total{core="0",listener="graphite-tcp""#));
        assert!(!text.contains(r#"sluice_connections_total{core="0",listener="statsd-udp""#));
    }

    #[test]
    fn series_come_in_core_then_listener_order() {
        let text = om(&metrics());
        let order: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sluice_lines_total"))
            .collect();
        assert_eq!(
            order,
            [
                r#"sluice_lines_total{core="0",listener="graphite-tcp",proto="tcp",format="graphite"} 0"#,
                r#"sluice_lines_total{core="0",listener="statsd-udp",proto="udp",format="statsd"} 0"#,
                r#"sluice_lines_total{core="1",listener="graphite-tcp",proto="tcp",format="graphite"} 0"#,
                r#"sluice_lines_total{core="1",listener="statsd-udp",proto="udp",format="statsd"} 0"#,
            ]
        );
    }

    #[test]
    fn reject_series_are_the_listeners_reasons_even_at_zero() {
        let m = metrics();
        m.cores[0].listeners[0].rejected_total[Reject::BadNumber.index()].add(5);
        let text = om(&m);
        let l = lines(&text);
        let want =
            r#"sluice_rejected_total{core="0",listener="graphite-tcp",reason="bad_number"} 5"#;
        assert!(l.contains(&want), "{text}");
        for core in 0..2 {
            for info in &m.listeners {
                let listener = &info.name;
                for reason in Reject::ALL {
                    let prefix = format!(
                        r#"sluice_rejected_total{{core="{core}",listener="{listener}",reason="{}"}} "#,
                        reason.as_str()
                    );
                    let listed = info.rejects.contains(reason);
                    assert_eq!(text.contains(&prefix), listed, "{prefix}\n{text}");
                }
            }
        }
    }

    #[test]
    fn per_core_figures_use_seconds_and_hide_unknown_watermarks() {
        let m = metrics();
        let c = &m.cores[1];
        c.backpressure_ns_total.add(1_500_000_000);
        c.log_flush_us_total.add(250_000);
        c.queue_depth.set(9);
        c.watermark_ms.set(1_764_360_000_500);
        c.log_next_offset.set(1000);
        c.log_flushed_offset.set(900);
        c.windows_closed_total.add(4);
        c.log_truncated_bytes_total.add(123);
        let text = om(&m);
        let l = lines(&text);
        for want in [
            r#"sluice_backpressure_seconds_total{core="1"} 1.5"#,
            r#"sluice_log_flush_seconds_total{core="1"} 0.25"#,
            r#"sluice_queue_depth{core="1"} 9"#,
            r#"sluice_watermark_seconds{core="1"} 1764360000.5"#,
            r#"sluice_log_next_offset{core="1"} 1000"#,
            r#"sluice_log_flushed_offset{core="1"} 900"#,
            r#"sluice_windows_closed_total{core="1"} 4"#,
            r#"sluice_windows_closed_total{core="0"} 0"#,
            r#"sluice_log_truncated_bytes_total{core="1"} 123"#,
            "# UNIT sluice_backpressure_seconds seconds",
        ] {
            assert!(l.contains(&want), "missing `{want}` in\n{text}");
        }
        assert!(
            !text.contains(r#"sluice_watermark_seconds{core="0"}"#),
            "{text}"
        );
    }

    #[test]
    fn checkpoint_and_process_figures_have_no_labels() {
        let m = metrics();
        m.checkpoint.committed_total.add(12);
        m.checkpoint.failed_total.add(1);
        m.checkpoint.last_epoch.set(12);
        m.checkpoint.last_duration_us.set(3_000);
        m.checkpoint.last_bytes.set(65_536);
        let text = om(&m);
        let l = lines(&text);
        for want in [
            "sluice_checkpoints_total 12",
            "sluice_checkpoint_failures_total 1",
            "sluice_checkpoint_last_epoch 12",
            "sluice_checkpoint_last_duration_seconds 0.003",
            "sluice_checkpoint_last_bytes 65536",
        ] {
            assert!(l.contains(&want), "missing `{want}` in\n{text}");
        }
        assert!(text.contains("\nsluice_uptime_seconds "), "{text}");
    }

    #[test]
    fn latencies_are_merged_summaries_and_stalls_are_per_core() {
        use crate::metrics::Recorder;
        use std::time::{Duration, Instant};
        let m = metrics();
        let now = Instant::now();
        for (core, us) in [(0usize, 100u64), (1, 300)] {
            let mut r = Recorder::new();
            r.record(Duration::from_micros(us));
            m.cores[core].latency.ingest_to_fold.publish(&mut r, now);
        }
        let mut turns = Recorder::new();
        turns.record(Duration::from_micros(250));
        m.cores[1].latency.turn.publish(&mut turns, now);
        m.checkpoint.duration.record(Duration::from_millis(20), now);
        for page in [om(&m), text(&m)] {
            let l = lines(&page);
            for want in [
                "# TYPE sluice_ingest_to_fold_seconds summary",
                r#"sluice_ingest_to_fold_seconds{quantile="0.999"} 0.0003"#,
                "sluice_ingest_to_fold_seconds_sum 0.0004",
                "sluice_ingest_to_fold_seconds_count 2",
                r#"sluice_close_to_write_seconds{quantile="0.5"} NaN"#,
                "sluice_close_to_write_seconds_count 0",
                r#"sluice_checkpoint_duration_seconds{quantile="0.9"} 0.02"#,
                "sluice_checkpoint_duration_seconds_count 1",
                "sluice_core_turn_seconds_count 1",
                r#"sluice_core_stall_max_seconds{core="1"} 0.00025"#,
            ] {
                assert!(l.contains(&want), "missing `{want}` in\n{page}");
            }
            // A core that has not published yet has no stall series.
            assert!(!page.contains(r#"sluice_core_stall_max_seconds{core="0"}"#));
            let median = l
                .iter()
                .find(|l| l.starts_with(r#"sluice_ingest_to_fold_seconds{quantile="0.5"}"#))
                .unwrap();
            let v: f64 = median.rsplit(' ').next().unwrap().parse().unwrap();
            assert!((v - 0.0001).abs() <= 0.000001, "{median}");
        }
        assert!(om(&m).contains("# UNIT sluice_ingest_to_fold_seconds seconds"));
    }

    #[test]
    fn deadletter_and_admin_figures_are_exposed() {
        let m = metrics();
        let d = &m.cores[1].deadletter;
        d.written_total.add(10);
        d.collapsed_total.add(90);
        d.cap_total.add(2);
        d.rotated_total.add(4);
        d.bytes.set(4096);
        m.admin.connections_open.set(3);
        m.admin.connections_evicted_total.add(7);
        let text = om(&m);
        let l = lines(&text);
        for want in [
            r#"sluice_deadletter_written_total{core="1"} 10"#,
            r#"sluice_deadletter_collapsed_total{core="1"} 90"#,
            r#"sluice_deadletter_dropped_total{core="1",reason="cap"} 2"#,
            r#"sluice_deadletter_dropped_total{core="1",reason="error"} 0"#,
            r#"sluice_deadletter_dropped_total{core="1",reason="rotated"} 4"#,
            r#"sluice_deadletter_bytes{core="1"} 4096"#,
            r#"sluice_deadletter_bytes{core="0"} 0"#,
            "sluice_admin_connections_open 3",
            "sluice_admin_connections_evicted_total 7",
            "sluice_admin_connections_refused_total 0",
            "sluice_admin_connections_timed_out_total 0",
        ] {
            assert!(l.contains(&want), "missing `{want}` in\n{text}");
        }
    }

    #[test]
    fn text_names_counter_families_with_total_and_has_no_openmetrics_lines() {
        let m = metrics();
        m.cores[1].listeners[0].lines_total.add(42);
        m.cores[1].backpressure_ns_total.add(1_500_000_000);
        let page = text(&m);
        let l = lines(&page);
        for want in [
            "# HELP sluice_lines_total Lines accepted into the log.",
            "# TYPE sluice_lines_total counter",
            r#"sluice_lines_total{core="1",listener="graphite-tcp",proto="tcp",format="graphite"} 42"#,
            "# TYPE sluice_backpressure_seconds_total counter",
            r#"sluice_backpressure_seconds_total{core="1"} 1.5"#,
            "# HELP sluice_uptime_seconds Time since the process started.",
            "# TYPE sluice_uptime_seconds gauge",
            "# TYPE sluice_queue_depth gauge",
        ] {
            assert!(l.contains(&want), "missing `{want}` in\n{page}");
        }
        for never in ["# EOF", "# UNIT", "_created", "# TYPE sluice_lines counter"] {
            assert!(!page.contains(never), "`{never}` in\n{page}");
        }
        // The same samples as OpenMetrics, line for line.
        let samples = |p: &str| -> Vec<String> {
            p.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| !l.starts_with("sluice_uptime_seconds "))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&page), samples(&om(&m)));
    }

    #[test]
    fn openmetrics_ends_with_eof_and_names_units() {
        let page = om(&metrics());
        assert!(page.ends_with("\n# EOF\n"), "{page}");
        let l = lines(&page);
        for want in [
            "# TYPE sluice_lines counter",
            "# TYPE sluice_uptime_seconds gauge",
            "# UNIT sluice_uptime_seconds seconds",
            "# UNIT sluice_deadletter_bytes bytes",
        ] {
            assert!(l.contains(&want), "missing `{want}` in\n{page}");
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let labels = Labels::core(0).with("listener", "a\"b\\c\nd");
        assert_eq!(labels.to_string(), r#"{core="0",listener="a\"b\\c\nd"}"#);
        assert_eq!(escape_help("a \"b\" \\ \n", false), r#"a "b" \\ \n"#);
        assert_eq!(escape_help("a \"b\"", true), r#"a \"b\""#);
        assert_eq!(Value::Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Value::Float(0.25).to_string(), "0.25");
        assert_eq!(Value::Uint(u64::MAX).to_string(), "18446744073709551615");
    }

    #[test]
    fn negotiation_follows_prometheus() {
        use Exposition::*;
        let prometheus_2_42 = "application/openmetrics-text;version=1.0.0,\
            application/openmetrics-text;version=0.0.1;q=0.75,\
            text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want) in [
            ("", Text),
            ("*/*", Text),
            ("text/plain", Text),
            ("text/plain;version=0.0.4", Text),
            ("TEXT/PLAIN; Version=\"0.0.4\"; charset=utf-8", Text),
            ("application/json", Text),
            ("text/*", Text),
            (prometheus_2_42, OpenMetrics),
            ("application/openmetrics-text", OpenMetrics),
            ("application/openmetrics-text; version=1.0.0", OpenMetrics),
            ("application/openmetrics-text;version=0.0.1", OpenMetrics001),
            (
                "application/openmetrics-text;version=0.0.1;q=0.75,text/plain;q=0.5",
                OpenMetrics001,
            ),
            ("application/openmetrics-text;q=0.5,text/plain", Text),
            (
                "text/plain;q=0.2, application/openmetrics-text",
                OpenMetrics,
            ),
            ("text/plain, application/openmetrics-text", Text),
            ("application/openmetrics-text, text/plain", OpenMetrics),
            ("application/openmetrics-text;q=0,*/*", Text),
            (
                "application/openmetrics-text;version=2.0.0,text/plain;q=0.1",
                Text,
            ),
            (
                "text/plain;version=0.0.3,application/openmetrics-text;q=0.1",
                OpenMetrics,
            ),
            ("application/openmetrics-text;q=high", Text),
            (",,;;,=", Text),
        ] {
            assert_eq!(negotiate(accept), want, "Accept: {accept}");
        }
    }
}
