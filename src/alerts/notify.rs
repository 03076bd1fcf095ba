//! Notifiers: threads (never a core) that tail every shard's `alerts/` record from a committed
//! cursor and deliver the `firing` and `resolved` transitions: `[notify] webhook` posts
//! Alertmanager's webhook body (version 4) to each URL, `[notify] alertmanager` pushes to
//! Alertmanager's `POST /api/v2/alerts` and re-sends firing alerts every `resend_interval`
//! (default [`ALERTMANAGER_RESEND_MS`]) with `endsAt` four times as far ahead, as Prometheus
//! does with its `resend_delay`.
//! Also the board: the alerts pending or firing now, for `GET /api/v1/alerts`.
//!
//! Invariants:
//! - A notifier holds at most [`NOTIFY_QUEUE_MAX`] transitions in memory; the rest wait in the
//!   record, so a dead receiver makes the notifier lag, never memory grow, and never a core
//!   wait (the cores do not know the notifiers exist).
//! - Transitions are delivered in record order per shard (an alert's key lives on one shard,
//!   so in order per alert). A failed delivery (5xx, timeout, refused connection) is retried,
//!   with the delay doubling from [`NOTIFY_BACKOFF_MS_MIN`] to [`NOTIFY_BACKOFF_MS_MAX`], until
//!   it is taken; a 4xx answer drops it (counted), as Prometheus does.
//! - The cursor (`notify/{name}.json`: per shard, the position after the last row delivered,
//!   and the firing alerts) is written after each delivery, so a restart resumes there. After
//!   a crash, the records are cut back to the checkpoint and replay writes the same rows
//!   again; a cursor past the cut is set back to the record's end, and the rows replay
//!   writes again are delivered again, with the same fingerprint and `startsAt` (a
//!   receiver sees a re-send, never a new alert).

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Row;
use crate::limits::{
    ALERTMANAGER_RESEND_MS, ALERTMANAGER_RESEND_MS_MAX, ALERTMANAGER_RESEND_MS_MIN,
    NOTIFY_BACKOFF_MS_MAX, NOTIFY_BACKOFF_MS_MIN, NOTIFY_BATCH_MAX, NOTIFY_FIRING_MAX,
    NOTIFY_POLL_MS, NOTIFY_QUEUE_MAX, NOTIFY_TIMEOUT_MS,
};
use crate::metrics::Metrics;
use crate::results::{Cursors, RecordReader};
use crate::units::Millis;
use crate::window::{now_ms, rfc3339};

/// `[notify]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// URLs that get Alertmanager's webhook body (version 4) per transition.
    pub webhook: Vec<String>,
    /// Alertmanager base URLs (`http://host:9093`): alerts go to `POST /api/v2/alerts`.
    pub alertmanager: Vec<String>,
    /// The `receiver` of webhook bodies.
    pub receiver: String,
    /// `externalURL` and the base of `generatorURL` (default: the admin server's URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_url: Option<String>,
    /// How often firing alerts are sent to Alertmanager again; each alert's `endsAt` is four
    /// of these ahead, so Alertmanager resolves it by itself if sluice goes away.
    pub resend_interval: Millis,
}

impl Default for NotifyConfig {
    fn default() -> NotifyConfig {
        NotifyConfig {
            webhook: Vec::new(),
            alertmanager: Vec::new(),
            receiver: "sluice".into(),
            external_url: None,
            resend_interval: Millis(ALERTMANAGER_RESEND_MS),
        }
    }
}

impl NotifyConfig {
    /// Checks the URLs and the interval; an error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let resend = self.resend_interval.0;
        if !(ALERTMANAGER_RESEND_MS_MIN..=ALERTMANAGER_RESEND_MS_MAX).contains(&resend) {
            return Err((
                "resend_interval",
                format!(
                    "notify.resend_interval = \"{}\": must be {} to {}",
                    self.resend_interval,
                    Millis(ALERTMANAGER_RESEND_MS_MIN),
                    Millis(ALERTMANAGER_RESEND_MS_MAX)
                ),
            ));
        }
        for (key, urls) in [
            ("webhook", &self.webhook),
            ("alertmanager", &self.alertmanager),
        ] {
            for url in urls {
                if !url.starts_with("http://") || url.len() <= "http://".len() {
                    return Err((
                        key,
                        format!(
                            "notify.{key}: `{url}` is not an http:// URL (https is not supported; put a local proxy in front)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every notifier: (kind, URL, metrics name).
    pub fn targets(&self) -> Vec<(Target, String)> {
        let mut out = Vec::new();
        for url in &self.webhook {
            out.push((Target::Webhook, url.clone()));
        }
        for url in &self.alertmanager {
            out.push((Target::Alertmanager, url.clone()));
        }
        out
    }
}

/// A kind of receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Alertmanager's webhook body, version 4.
    Webhook,
    /// Alertmanager's API v2.
    Alertmanager,
}

impl Target {
    /// The `notifier` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Webhook => "webhook",
            Target::Alertmanager => "alertmanager",
        }
    }
}

/// The label value of a notifier in metrics: kind and URL.
pub fn notifier_name(target: Target, url: &str) -> String {
    format!("{} {url}", target.as_str())
}

/// What a notifier persists.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Per shard: the position after the last row delivered.
    positions: Vec<u64>,
    /// Alertmanager: the firing alerts, re-sent until resolved.
    #[serde(default)]
    firing: Vec<Row>,
}

/// One notifier's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The kind.
    pub target: Target,
    /// Its URL.
    pub url: String,
    /// Each shard's alerts record directory.
    pub records: Vec<PathBuf>,
    /// Each record's readers: the notifier's reader holds the record's retention back.
    pub cursors: Vec<Arc<Cursors>>,
    /// Where its cursor is kept.
    pub cursor_path: PathBuf,
    /// Index in `metrics.alerts.notifiers`.
    pub metrics_index: usize,
    /// `receiver` of webhook bodies.
    pub receiver: String,
    /// `externalURL`.
    pub external_url: String,
    /// Alertmanager: how often firing alerts are sent again, ms.
    pub resend_ms: u64,
}

/// A queued transition and where its shard's cursor goes once it is delivered.
#[derive(Debug)]
struct Queued {
    shard: usize,
    next: u64,
    row: Row,
}

/// The cursor file of notifier `index` (by its kind and URL) under the data dir.
pub fn cursor_path(data_dir: &Path, target: Target, url: &str) -> PathBuf {
    let hash = xxhash_rust::xxh3::xxh3_64(url.as_bytes());
    data_dir
        .join("notify")
        .join(format!("{}-{hash:016x}.json", target.as_str()))
}

/// Starts a notifier thread; it stops when `stop` is set.
pub fn spawn(
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("sluice-notify-{}", settings.metrics_index))
        .spawn(move || Notifier::new(settings, metrics, stop).run())
}

struct Notifier {
    s: Settings,
    readers: Vec<RecordReader>,
    positions: Vec<u64>,
    queue: VecDeque<Queued>,
    firing: BTreeMap<String, Row>,
    agent: ureq::Agent,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    last_resend: Instant,
}

/// How a delivery went.
enum Delivery {
    Taken,
    Refused(u16),
    Failed(String),
}

impl Notifier {
    fn new(s: Settings, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) -> Notifier {
        let saved: Saved = std::fs::read(&s.cursor_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let positions: Vec<u64> = s
            .records
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let saved = saved.positions.get(i).copied().unwrap_or(0);
                // Recovery cut the record back to the checkpoint: the rows past it will be
                // written again, and delivered again.
                saved.min(crate::results::record_end(dir).unwrap_or(0))
            })
            .collect();
        let readers = s
            .records
            .iter()
            .zip(&positions)
            .enumerate()
            .map(|(i, (dir, p))| RecordReader::open(dir, *p, s.cursors.get(i).map(|c| &**c)))
            .collect();
        let firing = saved
            .firing
            .into_iter()
            .map(|r| (r.fingerprint.clone(), r))
            .collect();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(NOTIFY_TIMEOUT_MS)))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Notifier {
            s,
            readers,
            positions,
            queue: VecDeque::new(),
            firing,
            agent,
            metrics,
            stop,
            last_resend: Instant::now(),
        }
    }

    fn counters(&self) -> Option<&crate::metrics::NotifierMetrics> {
        self.metrics.alerts.notifiers.get(self.s.metrics_index)
    }

    fn run(mut self) {
        let mut backoff = NOTIFY_BACKOFF_MS_MIN;
        // Alertmanager forgets alerts it is not told of again; tell it at once after a start.
        let mut resend_due = self.s.target == Target::Alertmanager && !self.firing.is_empty();
        while !self.stop.load(Ordering::Relaxed) {
            self.fill();
            if let Some(c) = self.counters() {
                c.queued.set(self.queue.len() as i64);
            }
            if self.s.target == Target::Alertmanager
                && (resend_due
                    || self.last_resend.elapsed() >= Duration::from_millis(self.s.resend_ms))
                && !self.firing.is_empty()
            {
                let rows: Vec<Row> = self.firing.values().cloned().collect();
                let body =
                    alertmanager_body(&rows, &self.s.external_url, now_ms(), self.s.resend_ms);
                match self.post(
                    &format!("{}/api/v2/alerts", self.s.url.trim_end_matches('/')),
                    &body,
                ) {
                    Delivery::Taken => {
                        resend_due = false;
                        self.last_resend = Instant::now();
                    }
                    Delivery::Refused(_) => self.last_resend = Instant::now(),
                    Delivery::Failed(_) => {}
                }
            }
            if self.queue.is_empty() {
                self.sleep(NOTIFY_POLL_MS);
                continue;
            }
            match self.deliver_head() {
                Delivery::Taken | Delivery::Refused(_) => backoff = NOTIFY_BACKOFF_MS_MIN,
                Delivery::Failed(why) => {
                    tracing::debug!(url = %self.s.url, why, backoff_ms = backoff, "notification failed; retrying");
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(NOTIFY_BACKOFF_MS_MAX);
                }
            }
        }
    }

    /// Sleeps `ms`, waking early on stop.
    fn sleep(&self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }

    /// Reads new transitions into the queue, up to its bound.
    fn fill(&mut self) {
        for (shard, reader) in self.readers.iter_mut().enumerate() {
            let skipped = reader.skipped();
            while self.queue.len() < NOTIFY_QUEUE_MAX {
                let Ok(Some((at, line))) = reader.next_line() else {
                    break;
                };
                let next = at + line.len() as u64 + 1;
                match serde_json::from_slice::<Row>(line) {
                    Ok(row) if row.state == "firing" || row.state == "resolved" => {
                        self.queue.push_back(Queued { shard, next, row });
                    }
                    // Pending and inactive rows are not notified; the cursor passes them
                    // with the next delivery.
                    Ok(_) => {
                        if self.queue.iter().all(|q| q.shard != shard) {
                            self.positions[shard] = next;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "alert row does not decode; skipped");
                    }
                }
            }
            if reader.skipped() > skipped {
                tracing::warn!(
                    url = %self.s.url,
                    shard,
                    bytes = reader.skipped() - skipped,
                    "retention deleted alert transitions this notifier had not delivered; they are lost to it"
                );
            }
        }
    }

    /// Delivers the transitions at the head of the queue (webhook: one; Alertmanager: a
    /// batch), and on success or refusal moves the cursor past them.
    fn deliver_head(&mut self) -> Delivery {
        let n = match self.s.target {
            Target::Webhook => 1,
            Target::Alertmanager => self.queue.len().min(NOTIFY_BATCH_MAX),
        };
        let rows: Vec<&Row> = self.queue.iter().take(n).map(|q| &q.row).collect();
        let (url, body) = match self.s.target {
            Target::Webhook => (
                self.s.url.clone(),
                webhook_body(rows[0], &self.s.receiver, &self.s.external_url),
            ),
            Target::Alertmanager => {
                let rows: Vec<Row> = rows.into_iter().cloned().collect();
                (
                    format!("{}/api/v2/alerts", self.s.url.trim_end_matches('/')),
                    alertmanager_body(&rows, &self.s.external_url, now_ms(), self.s.resend_ms),
                )
            }
        };
        let outcome = self.post(&url, &body);
        if let Delivery::Refused(status) = outcome {
            tracing::warn!(url = %url, status, "receiver refused a notification (4xx); dropped");
        }
        if matches!(outcome, Delivery::Taken | Delivery::Refused(_)) {
            for q in self.queue.drain(..n) {
                self.positions[q.shard] = q.next;
                if q.row.state == "firing" {
                    if self.firing.len() < NOTIFY_FIRING_MAX {
                        self.firing.insert(q.row.fingerprint.clone(), q.row);
                    }
                } else {
                    self.firing.remove(&q.row.fingerprint);
                }
            }
            self.save();
        }
        outcome
    }

    fn post(&self, url: &str, body: &[u8]) -> Delivery {
        let outcome = match self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body)
        {
            Ok(response) => match response.status().as_u16() {
                200..=299 => Delivery::Taken,
                s @ 400..=499 => Delivery::Refused(s),
                s => Delivery::Failed(format!("status {s}")),
            },
            Err(e) => Delivery::Failed(e.to_string()),
        };
        if let Some(c) = self.counters() {
            match outcome {
                Delivery::Taken => c.success_total.add(1),
                Delivery::Refused(_) => c.rejected_total.add(1),
                Delivery::Failed(_) => c.retry_total.add(1),
            }
        }
        outcome
    }

    /// Writes the cursor (temp file, rename); a failure means re-sends after a restart, so
    /// it is logged, not fatal.
    fn save(&self) {
        let saved = Saved {
            positions: self.positions.clone(),
            firing: self.firing.values().cloned().collect(),
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.s.cursor_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.s.cursor_path.with_extension("json.tmp");
            let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &self.s.cursor_path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %self.s.cursor_path.display(), error = %e, "cannot save the notifier's cursor");
        }
    }
}

/// Alertmanager's zero time: `endsAt` of a firing alert in a webhook body.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// One alert as Alertmanager's webhook body holds it.
fn webhook_alert(row: &Row, external_url: &str) -> serde_json::Value {
    let firing = row.state == "firing";
    serde_json::json!({
        "status": if firing { "firing" } else { "resolved" },
        "labels": row.labels,
        "annotations": row.annotations,
        "startsAt": row.starts_at,
        "endsAt": if firing { ZERO_TIME.to_string() } else { row.at.clone() },
        "generatorURL": generator_url(row, external_url),
        "fingerprint": row.fingerprint,
    })
}

fn generator_url(row: &Row, external_url: &str) -> String {
    let mut url = format!(
        "{}/api/v1/windows?window={}&key=",
        external_url.trim_end_matches('/'),
        row.window
    );
    for b in row.key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The fields of Alertmanager's webhook body, version 4.
pub const WEBHOOK_V4_FIELDS: [&str; 9] = [
    "version",
    "groupKey",
    "status",
    "receiver",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "alerts",
];

/// The fields of each alert in Alertmanager's webhook body, version 4.
pub const WEBHOOK_V4_ALERT_FIELDS: [&str; 7] = [
    "status",
    "labels",
    "annotations",
    "startsAt",
    "endsAt",
    "generatorURL",
    "fingerprint",
];

/// The fields of version 4 that `body` (a webhook body as a receiver gets it) lacks, its
/// alerts' named `alerts[i].field`; empty when it has them all.
pub fn missing_v4_fields(body: &serde_json::Value) -> Vec<String> {
    let mut missing: Vec<String> = WEBHOOK_V4_FIELDS
        .iter()
        .filter(|f| body.get(**f).is_none())
        .map(|f| f.to_string())
        .collect();
    let alerts = body["alerts"].as_array().map_or(&[][..], Vec::as_slice);
    for (i, alert) in alerts.iter().enumerate() {
        for f in WEBHOOK_V4_ALERT_FIELDS {
            if alert.get(f).is_none() {
                missing.push(format!("alerts[{i}].{f}"));
            }
        }
    }
    missing
}

/// Alertmanager's webhook body (version 4) for one transition: a group of one alert, grouped
/// by its alert name and key.
pub fn webhook_body(row: &Row, receiver: &str, external_url: &str) -> Vec<u8> {
    let group: BTreeMap<&str, &str> = row
        .labels
        .iter()
        .filter(|(k, _)| *k == "alertname" || *k == "key")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let group_key = format!(
        "{{}}:{{{}}}",
        group
            .iter()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::from(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let body = serde_json::json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": if row.state == "firing" { "firing" } else { "resolved" },
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": row.labels,
        "commonAnnotations": row.annotations,
        "externalURL": external_url,
        "alerts": [webhook_alert(row, external_url)],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Alertmanager's `POST /api/v2/alerts` body: firing alerts end four resend intervals
/// (`resend_ms`) from `now_ms` unless re-sent, resolved ones at their resolve time.
pub fn alertmanager_body(rows: &[Row], external_url: &str, now_ms: i64, resend_ms: u64) -> Vec<u8> {
    let ends_firing = rfc3339(now_ms.saturating_add(4 * resend_ms as i64));
    let alerts: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let ends = if row.state == "firing" {
                ends_firing.clone()
            } else {
                row.at.clone()
            };
            serde_json::json!({
                "labels": row.labels,
                "annotations": row.annotations,
                "startsAt": row.starts_at,
                "endsAt": ends,
                "generatorURL": generator_url(row, external_url),
            })
        })
        .collect();
    serde_json::to_vec(&alerts).unwrap_or_default()
}

/// The alerts pending or firing now, as the records say, for `GET /api/v1/alerts`.
#[derive(Debug, Default)]
pub struct Board {
    alerts: Mutex<BTreeMap<(String, String), Row>>,
}

impl Board {
    /// A board holding `rows` (the alerts pending or firing at the start).
    pub fn with(rows: impl IntoIterator<Item = Row>) -> Board {
        let board = Board::default();
        for row in rows {
            board.apply(row);
        }
        board
    }

    /// Applies one transition row.
    fn apply(&self, row: Row) {
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let id = (row.alert.clone(), row.key.clone());
        match row.state.as_str() {
            "pending" | "firing" => {
                alerts.insert(id, row);
            }
            _ => {
                alerts.remove(&id);
            }
        }
    }

    /// The alerts firing, then those pending, each by rule and key, at most `max`; true
    /// when there were more.
    pub fn current(&self, max: usize) -> (Vec<Row>, bool) {
        let alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let firing = alerts.values().filter(|r| r.state == "firing");
        let pending = alerts.values().filter(|r| r.state != "firing");
        let rows: Vec<Row> = firing.chain(pending).take(max).cloned().collect();
        (rows, alerts.len() > max)
    }
}

/// Starts the thread that keeps `board` up to date from every shard's alerts record: each
/// read from the position the board's first rows are the state at ([`Engine::current`]),
/// with its reader registered in the record's `cursors`. A row of one rule and key replaces
/// the one before it on the board.
///
/// [`Engine::current`]: super::Engine::current
pub fn spawn_board(
    board: Arc<Board>,
    records: Vec<(PathBuf, u64, Arc<Cursors>)>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-alerts-board".into())
        .spawn(move || {
            let readers = records
                .iter()
                .map(|(dir, from, cursors)| RecordReader::open(dir, *from, Some(cursors)))
                .collect();
            let poll = Duration::from_millis(NOTIFY_POLL_MS);
            crate::results::tail_rows(readers, &stop, poll, |line| {
                if let Ok(row) = serde_json::from_slice::<Row>(line) {
                    board.apply(row);
                }
            });
        })
}
