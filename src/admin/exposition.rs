//! `/metrics`: the OpenMetrics text exposition of [`Metrics`], built at scrape time.
//!
//! Each scrape fills a fresh `prometheus_client` registry from the atomics the cores write and
//! encodes it; nothing is kept between scrapes, so the exposition cannot drift from the
//! counters. Names start with `sluice_`, units come last and counters end in `_total` (the
//! encoder appends it). Labels:
//!
//! ```text
//! per listener, per core:  core, listener, proto, format
//! rejected lines:          core, listener, reason   (every reason, zeros included)
//! per core:                core
//! checkpoint, uptime:      none
//! ```
//!
//! UDP listeners have no connection series and TCP listeners no `udp_dropped` series.
//! `sluice_watermark_seconds{core}` is absent until that core's watermark is known.

#![forbid(unsafe_code)]

use std::fmt::Debug;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::{CoreMetrics, ListenerCounters, Metrics, StorageOp};
use crate::parse::Reject;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, EncodeLabelSet)]
struct ListenerLabels {
    core: usize,
    listener: String,
    proto: &'static str,
    format: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct RejectLabels {
    core: usize,
    listener: String,
    reason: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct CoreLabels {
    core: usize,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct StorageLabels {
    core: usize,
    op: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct DropLabels {
    core: usize,
    reason: &'static str,
}

/// Trait bounds a label set needs to go into registered [`Series`].
trait Labels: EncodeLabelSet + Debug + Send + Sync + 'static {}
impl<T: EncodeLabelSet + Debug + Send + Sync + 'static> Labels for T {}

/// The series of one metric, encoded in the order they were pushed (core, then listener),
/// so the page reads the same from scrape to scrape; `Family` would hash them into a
/// different order each time.
#[derive(Debug)]
struct Series<L, M>(Vec<(L, M)>);

impl<L: EncodeLabelSet, M: EncodeMetric + TypedMetric> EncodeMetric for Series<L, M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.0 {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Renders `metrics` as OpenMetrics text.
pub fn encode(metrics: &Metrics) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("sluice");
    register_listeners(&mut registry, metrics);
    register_cores(&mut registry, metrics);
    register_process(&mut registry, metrics);
    register_admin(&mut registry, metrics);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

fn register_listeners(registry: &mut Registry, metrics: &Metrics) {
    // (listener labels, counters) for every listener on every core.
    let rows: Vec<(ListenerLabels, &ListenerCounters)> = metrics
        .cores
        .iter()
        .enumerate()
        .flat_map(|(core, c)| {
            metrics
                .listeners
                .iter()
                .zip(&c.listeners)
                .map(move |(info, counters)| {
                    let labels = ListenerLabels {
                        core,
                        listener: info.name.clone(),
                        proto: info.proto,
                        format: info.format,
                    };
                    (labels, counters)
                })
        })
        .collect();
    let all = || rows.iter();
    let udp = || rows.iter().filter(|(l, _)| l.proto == "udp");
    let tcp = || rows.iter().filter(|(l, _)| l.proto != "udp");

    let help = "Lines accepted into the log";
    counter(
        registry,
        "lines",
        help,
        all().map(|(l, c)| (l.clone(), c.lines_total.get())),
    );
    let help = "Bytes read from the network, before framing";
    let bytes = all().map(|(l, c)| (l.clone(), c.bytes_total.get()));
    counter(registry, "bytes", help, bytes);
    let help = "Events parsed from accepted lines";
    let events = all().map(|(l, c)| (l.clone(), c.events_total.get()));
    counter(registry, "events", help, events);
    let rejected = all().flat_map(|(l, c)| {
        Reject::ALL.iter().map(move |r| {
            let labels = RejectLabels {
                core: l.core,
                listener: l.listener.clone(),
                reason: r.as_str(),
            };
            (labels, c.rejected_total[r.index()].get())
        })
    });
    counter(registry, "rejected", "Lines rejected, by reason", rejected);
    let help = "UDP datagrams dropped because the core could not take them";
    let dropped = udp().map(|(l, c)| (l.clone(), c.udp_dropped_total.get()));
    counter(registry, "udp_dropped", help, dropped);
    let help = "TCP connections accepted";
    let accepted = tcp().map(|(l, c)| (l.clone(), c.connections_total.get()));
    counter(registry, "connections", help, accepted);
    let help = "TCP connections refused because max_connections was reached";
    let refused = tcp().map(|(l, c)| (l.clone(), c.connections_refused_total.get()));
    counter(registry, "connections_refused", help, refused);
    let help = "TCP connections accepted on this core and passed to a core with fewer";
    let handed = tcp().map(|(l, c)| (l.clone(), c.connections_handed_off_total.get()));
    counter(registry, "connections_handed_off", help, handed);
    let help = "Idle TCP connections closed to make room for a new one";
    let displaced = tcp().map(|(l, c)| (l.clone(), c.connections_displaced_total.get()));
    counter(registry, "connections_displaced", help, displaced);
    let help = "TCP connections closed after sending nothing for the listener's idle_timeout";
    let timed_out = tcp().map(|(l, c)| (l.clone(), c.connections_timed_out_total.get()));
    counter(registry, "connections_timed_out", help, timed_out);
    let help = "Failed accepts (out of descriptors or memory); the listener pauses after each";
    let accept_errors = tcp().map(|(l, c)| (l.clone(), c.accept_errors_total.get()));
    counter(registry, "accept_errors", help, accept_errors);
    let help = "TCP connections open now";
    let open = tcp().map(|(l, c)| (l.clone(), c.connections_open.get()));
    gauge(registry, "connections_open", help, open);
}

fn register_cores(registry: &mut Registry, metrics: &Metrics) {
    let rows: Vec<(CoreLabels, &CoreMetrics)> = metrics
        .cores
        .iter()
        .enumerate()
        .map(|(core, c)| (CoreLabels { core }, c))
        .collect();
    let help = "Time socket reads were paused because a queue was full";
    let paused = per_core(&rows, |c| ns_to_seconds(c.backpressure_ns_total.get()));
    counter_seconds(registry, "backpressure", help, paused);
    let help = "Messages waiting in the core's inbound queues";
    gauge(
        registry,
        "queue_depth",
        help,
        per_core(&rows, |c| c.queue_depth.get()),
    );
    let help = "Batches waiting in the core's outbound pending buffers";
    let pending = per_core(&rows, |c| c.pending_batches.get());
    gauge(registry, "pending_batches", help, pending);
    let help = "Events folded into the core's shard";
    let folded = per_core(&rows, |c| c.window_events_total.get());
    counter(registry, "window_events", help, folded);
    let help = "Events that arrived after their window had closed";
    let late = per_core(&rows, |c| c.late_events_total.get());
    counter(registry, "late_events", help, late);
    let help = "Events counted under the overflow key because the shard was full";
    let overflow = per_core(&rows, |c| c.overflow_events_total.get());
    counter(registry, "overflow_events", help, overflow);
    let help = "Windows closed and written to the aggregates output";
    let closed = per_core(&rows, |c| c.windows_closed_total.get());
    counter(registry, "windows_closed", help, closed);
    let help = "Windows open now";
    gauge(
        registry,
        "windows_open",
        help,
        per_core(&rows, |c| c.windows_open.get()),
    );
    gauge(
        registry,
        "keys",
        "Live keys in the shard",
        per_core(&rows, |c| c.keys.get()),
    );
    let known = rows
        .iter()
        .filter(|(_, c)| c.watermark_ms.get() != i64::MIN);
    let watermark = known.map(|(l, c)| (l.clone(), ms_to_seconds(c.watermark_ms.get())));
    let help = "The shard's combined watermark, as seconds since the Unix epoch";
    gauge_f64(registry, "watermark", help, Unit::Seconds, watermark);
    register_log(registry, &rows);
    register_storage(registry, &rows);
    register_deadletter(registry, &rows);
}

/// The log's per-core series.
fn register_log(registry: &mut Registry, rows: &[(CoreLabels, &CoreMetrics)]) {
    let help = "Next log offset of the core's partition";
    let next = per_core(rows, |c| c.log_next_offset.get());
    gauge(registry, "log_next_offset", help, next);
    let help = "Log offset up to which the core's partition is flushed";
    let flushed = per_core(rows, |c| c.log_flushed_offset.get());
    gauge(registry, "log_flushed_offset", help, flushed);
    let help = "Log flushes performed";
    let flushes = per_core(rows, |c| c.log_flushes_total.get());
    counter(registry, "log_flushes", help, flushes);
    let help = "Time spent in log flushes";
    let flush_time = per_core(rows, |c| us_to_seconds(c.log_flush_us_total.get()));
    counter_seconds(registry, "log_flush", help, flush_time);
    let help = "Log records replayed at start";
    let replayed = per_core(rows, |c| c.replayed_lines_total.get());
    counter(registry, "replayed_lines", help, replayed);
    let help = "Bytes cut from the log partition's torn tail by recovery at start";
    let truncated = per_core(rows, |c| c.log_truncated_bytes_total.get());
    counter(registry, "log_truncated_bytes", help, truncated);
    let help = "Damaged log batches found at start (cut out by recovery or skipped by replay)";
    let bad = per_core(rows, |c| c.log_bad_batches_total.get());
    counter(registry, "log_bad_batches", help, bad);
    let help = "Log offsets found at start to hold no line (damaged batches, missing segments)";
    let lost = per_core(rows, |c| c.log_lost_lines_total.get());
    counter(registry, "log_lost_lines", help, lost);
    let help =
        "Longest time the core spent on its share of a checkpoint (flush, barrier, snapshot)";
    let stall = per_core(rows, |c| {
        us_to_seconds(c.checkpoint_stall_us_max.get().max(0) as u64)
    });
    gauge_f64(registry, "checkpoint_stall_max", help, Unit::Seconds, stall);
}

/// Per-core series of failing writes.
fn register_storage(registry: &mut Registry, rows: &[(CoreLabels, &CoreMetrics)]) {
    let help = "1 while a write of the core fails and its input is held (not read)";
    let failing = per_core(rows, |c| c.storage_failing.get());
    gauge(registry, "storage_failing", help, failing);
    let help = "Time socket reads were paused because a write (log, aggregates) failed";
    let blocked = per_core(rows, |c| ns_to_seconds(c.storage_blocked_ns_total.get()));
    counter_seconds(registry, "storage_blocked", help, blocked);
    let help = "Lines read and held because the log could not take them yet";
    let held = per_core(rows, |c| c.held_lines.get());
    gauge(registry, "held_lines", help, held);
    let help = "Writes that failed (the input was held and the write retried), by operation";
    let errors = rows.iter().flat_map(|(l, c)| {
        StorageOp::ALL.iter().map(move |op| {
            let labels = StorageLabels {
                core: l.core,
                op: op.as_str(),
            };
            (labels, c.storage_errors_total[*op as usize].get())
        })
    });
    counter(registry, "storage_errors", help, errors);
}

fn register_deadletter(registry: &mut Registry, rows: &[(CoreLabels, &CoreMetrics)]) {
    let help = "Rejections (lines, late events) written to the dead-letter log as their own record";
    let written = per_core(rows, |c| c.deadletter.written_total.get());
    counter(registry, "deadletter_written", help, written);
    let help = "Rejections counted in a dead-letter repeat record instead of being copied";
    let collapsed = per_core(rows, |c| c.deadletter.collapsed_total.get());
    counter(registry, "deadletter_collapsed", help, collapsed);
    let help = "Rejections not in the dead-letter log: cap (record over a file's share), \
                error (write failed), rotated (deleted by rotation to keep the cap)";
    let dropped = rows.iter().flat_map(|(l, c)| {
        let d = &c.deadletter;
        [
            ("cap", d.cap_total.get()),
            ("error", d.error_total.get()),
            ("rotated", d.rotated_total.get()),
        ]
        .map(|(reason, v)| {
            let labels = DropLabels {
                core: l.core,
                reason,
            };
            (labels, v)
        })
    });
    counter(registry, "deadletter_dropped", help, dropped);
    let help = "Dead-letter records written (own and repeat records)";
    let records = per_core(rows, |c| c.deadletter.records_total.get());
    counter(registry, "deadletter_records", help, records);
    let help = "Bytes in the partition's dead-letter files";
    let bytes = rows.iter().map(|(l, c)| {
        let g = Gauge::<i64>::default();
        g.set(c.deadletter.bytes.get());
        (l.clone(), g)
    });
    registry.register_with_unit("deadletter", help, Unit::Bytes, Series(bytes.collect()));
}

fn per_core<T>(
    rows: &[(CoreLabels, &CoreMetrics)],
    f: impl Fn(&CoreMetrics) -> T,
) -> Vec<(CoreLabels, T)> {
    rows.iter().map(|(l, c)| (l.clone(), f(c))).collect()
}

fn register_process(registry: &mut Registry, metrics: &Metrics) {
    let ckpt = &metrics.checkpoint;
    let one = |name: &str, help: &str, v: u64, registry: &mut Registry| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        registry.register(name, help, c);
    };
    one(
        "checkpoints",
        "Checkpoints committed",
        ckpt.committed_total.get(),
        registry,
    );
    let failed = ckpt.failed_total.get();
    one(
        "checkpoint_failures",
        "Checkpoints that failed to write",
        failed,
        registry,
    );
    let epoch = Gauge::<i64>::default();
    epoch.set(ckpt.last_epoch.get());
    registry.register(
        "checkpoint_last_epoch",
        "Epoch of the newest committed checkpoint",
        epoch,
    );
    let duration = Gauge::<f64, AtomicU64>::default();
    duration.set(us_to_seconds(ckpt.last_duration_us.get().max(0) as u64));
    let help = "Time from barrier injection to commit of the newest checkpoint";
    registry.register_with_unit("checkpoint_last_duration", help, Unit::Seconds, duration);
    let bytes = Gauge::<i64>::default();
    bytes.set(ckpt.last_bytes.get());
    let help = "Size of the newest checkpoint file";
    registry.register_with_unit("checkpoint_last", help, Unit::Bytes, bytes);
    let uptime = Gauge::<f64, AtomicU64>::default();
    uptime.set(metrics.started.elapsed().as_secs_f64());
    let help = "Time since the process started";
    registry.register_with_unit("uptime", help, Unit::Seconds, uptime);
}

fn register_admin(registry: &mut Registry, metrics: &Metrics) {
    let admin = &metrics.admin;
    let one = |name: &str, help: &str, v: u64, registry: &mut Registry| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        registry.register(name, help, c);
    };
    let help = "Admin HTTP connections accepted";
    one(
        "admin_connections",
        help,
        admin.connections_total.get(),
        registry,
    );
    let open = Gauge::<i64>::default();
    open.set(admin.connections_open.get());
    registry.register(
        "admin_connections_open",
        "Admin HTTP connections open now",
        open,
    );
    let help = "Admin HTTP connections closed at once because every slot had a request in flight";
    let refused = admin.connections_refused_total.get();
    one("admin_connections_refused", help, refused, registry);
    let help = "Idle admin HTTP connections closed to make room for a new one";
    let evicted = admin.connections_evicted_total.get();
    one("admin_connections_evicted", help, evicted, registry);
    let help = "Admin HTTP connections closed because a request head did not come in time";
    let timed_out = admin.connections_timed_out_total.get();
    one("admin_connections_timed_out", help, timed_out, registry);
    let help = "Admin HTTP requests answered 408 because they took too long";
    let slow = admin.requests_timed_out_total.get();
    one("admin_requests_timed_out", help, slow, registry);
}

fn counter<L: Labels>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) {
    let series = rows.into_iter().map(|(labels, v)| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        (labels, c)
    });
    registry.register(name, help, Series(series.collect()));
}

fn counter_seconds<L: Labels>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, f64)>,
) {
    let series = rows.into_iter().map(|(labels, v)| {
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(v);
        (labels, c)
    });
    registry.register_with_unit(name, help, Unit::Seconds, Series(series.collect()));
}

fn gauge<L: Labels>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, i64)>,
) {
    let series = rows.into_iter().map(|(labels, v)| {
        let g = Gauge::<i64>::default();
        g.set(v);
        (labels, g)
    });
    registry.register(name, help, Series(series.collect()));
}

fn gauge_f64<L: Labels>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Unit,
    rows: impl IntoIterator<Item = (L, f64)>,
) {
    let series = rows.into_iter().map(|(labels, v)| {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(v);
        (labels, g)
    });
    registry.register_with_unit(name, help, unit, Series(series.collect()));
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
    use crate::metrics::ListenerInfo;

    fn metrics() -> Metrics {
        Metrics::new(
            2,
            vec![
                ListenerInfo {
                    name: "graphite-tcp".into(),
                    proto: "tcp",
                    format: "graphite",
                },
                ListenerInfo {
                    name: "statsd-udp".into(),
                    proto: "udp",
                    format: "statsd",
                },
            ],
        )
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
        let text = encode(&m).unwrap();
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
        let text = encode(&metrics()).unwrap();
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
    fn every_reject_reason_is_exposed_even_at_zero() {
        let m = metrics();
        m.cores[0].listeners[0].rejected_total[Reject::BadNumber.index()].add(5);
        let text = encode(&m).unwrap();
        let l = lines(&text);
        let want =
            r#"sluice_rejected_total{core="0",listener="graphite-tcp",reason="bad_number"} 5"#;
        assert!(l.contains(&want), "{text}");
        for reason in Reject::ALL {
            for core in 0..2 {
                for listener in ["graphite-tcp", "statsd-udp"] {
                    let prefix = format!(
                        r#"sluice_rejected_total{{core="{core}",listener="{listener}",reason="{}"}} "#,
                        reason.as_str()
                    );
                    assert!(text.contains(&prefix), "missing {prefix}");
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
        let text = encode(&m).unwrap();
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
        let text = encode(&m).unwrap();
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
        let text = encode(&m).unwrap();
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
}
