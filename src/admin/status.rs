//! `/api/v1/status`: what the appliance is doing now, in one JSON object, for people (the
//! dashboard, `sluice top`) rather than for Prometheus. Rates are per second over the last
//! sampling interval: a task on the admin runtime samples the counters every
//! [`RATE_SAMPLE_MS`] ms.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::AdminState;
use crate::metrics::Metrics;

/// How often the rates are sampled.
pub const RATE_SAMPLE_MS: u64 = 1_000;

/// Per listener: lines, bytes, rejects and UDP drops, summed over the cores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Totals {
    events: u64,
    bytes: u64,
    rejects: u64,
    drops: u64,
}

fn totals(m: &Metrics) -> Vec<Totals> {
    (0..m.listeners.len())
        .map(|l| Totals {
            events: m.listener_sum(l, |c| &c.lines_total),
            bytes: m.listener_sum(l, |c| &c.bytes_total),
            rejects: m
                .cores
                .iter()
                .map(|c| {
                    c.listeners[l]
                        .rejected_total
                        .iter()
                        .map(|r| r.get())
                        .sum::<u64>()
                })
                .sum(),
            drops: m.listener_sum(l, |c| &c.udp_dropped_total),
        })
        .collect()
}

/// The two newest samples of the counters.
#[derive(Debug, Default)]
pub struct Rates {
    newer: Option<(Instant, Vec<Totals>)>,
    older: Option<(Instant, Vec<Totals>)>,
}

impl Rates {
    /// Takes a sample now.
    pub fn sample(&mut self, m: &Metrics) {
        self.older = self.newer.take();
        self.newer = Some((Instant::now(), totals(m)));
    }

    /// Per listener: (events/s, bytes/s) between the two newest samples (0 before there
    /// are two).
    fn per_second(&self, listeners: usize) -> Vec<(f64, f64)> {
        match (&self.older, &self.newer) {
            (Some((t0, a)), Some((t1, b))) => {
                let secs = t1.duration_since(*t0).as_secs_f64().max(1e-3);
                a.iter()
                    .zip(b)
                    .map(|(a, b)| {
                        (
                            b.events.saturating_sub(a.events) as f64 / secs,
                            b.bytes.saturating_sub(a.bytes) as f64 / secs,
                        )
                    })
                    .collect()
            }
            _ => vec![(0.0, 0.0); listeners],
        }
    }
}

/// Samples `metrics` into `rates` every [`RATE_SAMPLE_MS`] until the runtime ends.
pub async fn sample_rates(metrics: Arc<Metrics>, rates: Arc<Mutex<Rates>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(RATE_SAMPLE_MS));
    loop {
        tick.tick().await;
        rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sample(&metrics);
    }
}

/// The status object.
pub fn status_json(m: &Metrics, rates: &Rates) -> serde_json::Value {
    let now = crate::window::now_ms();
    let per_second = rates.per_second(m.listeners.len());
    let totals = totals(m);
    let listeners: Vec<_> = m
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (eps, bps) = per_second.get(i).copied().unwrap_or_default();
            let t = totals.get(i).copied().unwrap_or_default();
            serde_json::json!({
                "name": l.name, "proto": l.proto, "format": l.format,
                "events_per_sec": eps, "bytes_per_sec": bps,
                "events_total": t.events, "bytes_total": t.bytes,
                "rejects_total": t.rejects, "udp_drops_total": t.drops,
                "connections_open": m.cores.iter().map(|c| c.listeners[i].connections_open.get()).sum::<i64>(),
            })
        })
        .collect();
    let cores: Vec<_> = m
        .cores
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let watermark = c.watermark_ms.get();
            serde_json::json!({
                "core": i,
                "keys": c.keys.get(),
                "windows_open": c.windows_open.get(),
                "queue_depth": c.queue_depth.get(),
                "watermark_ms": (watermark > 0).then_some(watermark),
                "watermark_lag_ms": (watermark > 0).then(|| now - watermark),
                "late_events_total": c.late_events_total.get(),
                "backpressure_seconds_total": c.backpressure_ns_total.get() as f64 / 1e9,
                "log_lines": c.log_next_offset.get(),
            })
        })
        .collect();
    let lat = m.latencies();
    let ms = |v: Option<f64>| v.map(|s| s * 1e3);
    let summary = |s: &crate::metrics::Summary| {
        serde_json::json!({
            "p50": ms(s.p50_seconds), "p90": ms(s.p90_seconds), "p99": ms(s.p99_seconds),
            "p99.9": ms(s.p999_seconds), "max": ms(s.max_seconds), "count": s.count,
        })
    };
    let latency = serde_json::json!({
        "ingest → fold": summary(&lat.ingest_to_fold),
        "close → write": summary(&lat.close_to_write),
        "checkpoint": summary(&lat.checkpoint),
        "core turn": summary(&lat.core_turn),
    });
    let cores: Vec<_> = cores
        .into_iter()
        .zip(&lat.core_stall_max_seconds)
        .map(|(mut c, stall)| {
            c["stall_max_ms"] = ms(*stall).into();
            c
        })
        .collect();
    let cp = &m.checkpoint;
    let committed = cp.last_commit_unix_ms.get();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": m.started.elapsed().as_secs_f64(),
        "io": "epoll",
        "ready": m.ready.load(std::sync::atomic::Ordering::Relaxed),
        "listeners": listeners,
        "cores": cores,
        "latency": latency,
        "checkpoint": {
            "epoch": cp.last_epoch.get(),
            "age_seconds": (committed > 0).then(|| (now - committed) as f64 / 1000.0),
            "duration_seconds": cp.last_duration_us.get() as f64 / 1e6,
            "bytes": cp.last_bytes.get(),
            "committed_total": cp.committed_total.get(),
            "failed_total": cp.failed_total.get(),
        },
        "outputs": [],
    })
}

/// `GET /api/v1/status`: [`status_json`], plus `windows`, the configured window sizes (the
/// first is the default of `top`), so that a client such as the dashboard can offer them.
pub async fn status(State(state): State<AdminState>) -> Response {
    let mut body = {
        let rates = state.rates.lock().unwrap_or_else(|e| e.into_inner());
        status_json(&state.metrics, &rates)
    };
    let windows: Vec<String> = state
        .query
        .iter()
        .flat_map(|q| &q.window_sizes_ms)
        .map(|w| crate::units::Millis(u64::try_from(*w).unwrap_or(0)).to_string())
        .collect();
    body["windows"] = windows.into();
    axum::Json(body).into_response()
}
