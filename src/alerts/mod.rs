//! Alerts: rules over the aggregates, evaluated on the key's owner shard as each window
//! closes, their transitions written to the shard's `alerts/` results record, and the
//! notifiers that deliver them (`notify`).
//!
//! Owns: the compiled rules ([`Rule`], from the `[[alert]]` tables), the state of every
//! (rule, key) of one shard ([`Engine`], which the shard calls through
//! [`crate::window::CloseHook`]) and the shard's alerts record. The state machine is in
//! `state.rs`; it is a pure function of the windows closed and the frontier, so a replay of the
//! same log writes the same transitions.
//!
//! Invariants:
//! - Every transition is one row of `alerts/s{NNN}/`, written by the shard's core only, in the
//!   order the shard decided them. The record's position and every (rule, key) state are taken
//!   together at barrier alignment (the checkpoint), so after a crash the record is cut back to
//!   that position, the states restored, and replay writes the rows that followed again: no
//!   transition is lost or written twice.
//! - Memory is bounded: at most [`ALERT_STATES_PER_RULE_MAX`] states per rule and shard; a key
//!   past that is not watched and counted (`sluice_alert_states_overflow_total`). A threshold
//!   rule keeps state only for keys that breach or fire.
//! - Decisions use event time only: the windows and the shard's frontier (which follows
//!   wall-clock time while every input is idle, so a deadman fires when everything goes quiet).
//!
//! A row (one line of JSON):
//!
//! ```text
//! {"alert":"api_errors_high","key":"api.errors","state":"firing","at":"2026-11-28T20:00:30Z",
//!  "at_ms":1764360030000,"window":"10s","start_ms":1764360020000,"value":130,
//!  "threshold":100,"starts_at":"2026-11-28T20:00:30Z","starts_at_ms":1764360030000,
//!  "fingerprint":"a3c5…","labels":{"alertname":"api_errors_high","key":"api.errors",
//!  "severity":"critical","team":"api"},"annotations":{"summary":"api.errors: 130 errors in 10s"}}
//! ```
//!
//! `state` is `pending`, `inactive` (a pending alert whose breach did not last), `firing` or
//! `resolved`; `starts_at` is when it began firing (it stays the same in its `resolved` row);
//! `fingerprint` is Alertmanager's hash of the label set.

#![forbid(unsafe_code)]

pub mod notify;
pub mod state;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::limits::ALERT_STATES_PER_RULE_MAX;
use crate::metrics::Metrics;
use crate::results::{HookRecord, RecordSync, RecordWriter};
use crate::units::Millis;
use crate::window::{Agg, CloseHook, WindowSpec, quantile_name, rfc3339};
use state::{Change, Phase, State, Threshold};

/// One `[[alert]]` table, as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name: the `alertname` label.
    pub name: String,
    /// The key the rule watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Or: every key starting with this (one state per key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The window size evaluated (default: the smallest configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Millis>,
    /// The aggregate compared: count, sum, mean, min, max, last, stddev, distinct or a
    /// configured quantile (`p99`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Breach when the value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Breach when the value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Consecutive closed windows before firing, and before resolving (default 1).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_windows: Option<u32>,
    /// Hysteresis: a firing alert resolves at or beyond this (default: the threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// Deadman: fires when the key has had no events for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent: Option<Millis>,
    /// The `severity` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// More labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations, with `{{key}}`, `{{value}}`, `{{window}}`, `{{threshold}}` and
    /// `{{alert}}` replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Which keys a rule watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One key.
    Key(String),
    /// Every key with this prefix.
    Prefix(String),
}

impl Selector {
    /// True when the rule watches `key`.
    #[inline]
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Selector::Key(k) => k == key,
            Selector::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// The aggregate a threshold rule compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    /// Events.
    Count,
    /// Sum of values.
    Sum,
    /// Mean value.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Latest value.
    Last,
    /// Standard deviation.
    Stddev,
    /// Distinct set members.
    Distinct,
    /// A quantile (0..=1).
    Quantile(f64),
}

impl Measure {
    /// The rule's value of a window; `None` when the window has none (no values, or no
    /// sketch), and the window is not evaluated.
    #[inline]
    pub fn of(self, agg: &Agg) -> Option<f64> {
        let values = agg.values() > 0;
        match self {
            Measure::Count => Some(agg.count as f64),
            Measure::Distinct => Some(agg.distinct.estimate() as f64),
            Measure::Sum => values.then_some(agg.sum),
            Measure::Mean => values.then(|| agg.mean()),
            Measure::Min => values.then_some(agg.min),
            Measure::Max => values.then_some(agg.max),
            Measure::Last => values.then_some(agg.last),
            Measure::Stddev => values.then(|| agg.stddev()),
            Measure::Quantile(q) => agg.quantile(q),
        }
    }
}

/// What a rule decides on.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A threshold on an aggregate.
    Threshold {
        /// The aggregate.
        measure: Measure,
        /// Direction, bounds and `for`.
        threshold: Threshold,
    },
    /// No events for this long.
    Absent {
        /// The silence, in ms.
        absent_ms: i64,
    },
}

/// One piece of an annotation template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A field a template may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Key,
    Value,
    Window,
    Threshold,
    Alert,
}

/// A parsed annotation template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    /// Parses `text`; an unknown field or an unclosed `{{` is an error.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(format!("`{{{{` without `}}}}` in `{text}`"));
            };
            let name = after[..close].trim();
            let field = match name {
                "key" => Field::Key,
                "value" => Field::Value,
                "window" => Field::Window,
                "threshold" => Field::Threshold,
                "alert" => Field::Alert,
                other => {
                    return Err(format!(
                        "unknown template field `{{{{{other}}}}}` in `{text}` (known: key, \
                         value, window, threshold, alert)"
                    ));
                }
            };
            pieces.push(Piece::Field(field));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    fn render(&self, out: &mut String, rule: &Rule, key: &str, value: f64) {
        for piece in &self.0 {
            // Writing into a String cannot fail.
            let _ = match piece {
                Piece::Text(t) => out.write_str(t),
                Piece::Field(Field::Key) => out.write_str(key),
                Piece::Field(Field::Value) => write!(out, "{value}"),
                Piece::Field(Field::Window) => {
                    write!(out, "{}", Millis(rule.window.size_ms as u64))
                }
                Piece::Field(Field::Threshold) => match &rule.condition {
                    Condition::Threshold { threshold, .. } => {
                        write!(out, "{}", threshold.threshold)
                    }
                    Condition::Absent { absent_ms } => {
                        write!(out, "{}", Millis(*absent_ms as u64))
                    }
                },
                Piece::Field(Field::Alert) => out.write_str(&rule.name),
            };
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// The keys it watches.
    pub selector: Selector,
    /// The window it evaluates.
    pub window: WindowSpec,
    /// What it decides on.
    pub condition: Condition,
    /// Labels (with `alertname`, `key` added per key, and `severity`).
    pub labels: BTreeMap<String, String>,
    /// Annotation templates.
    pub annotations: Vec<(String, Template)>,
}

/// A rule that does not hold, and the key of its table it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The key (`above`, `value`, ...), or `name` for the table as a whole.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

fn rule_error(key: &'static str, message: impl Into<String>) -> RuleError {
    RuleError {
        key,
        message: message.into(),
    }
}

impl Rule {
    /// Compiles a rule against the configured windows and quantiles.
    pub fn compile(
        c: &RuleConfig,
        windows: &[WindowSpec],
        quantiles: &[f64],
    ) -> Result<Rule, RuleError> {
        if c.name.is_empty() {
            return Err(rule_error("name", "a rule needs a `name`"));
        }
        let selector = match (&c.key, &c.prefix) {
            (Some(k), None) => Selector::Key(k.clone()),
            (None, Some(p)) => Selector::Prefix(p.clone()),
            (Some(_), Some(_)) => {
                return Err(rule_error("prefix", "give `key` or `prefix`, not both"));
            }
            (None, None) => return Err(rule_error("name", "a rule needs a `key` or a `prefix`")),
        };
        let window = match c.window {
            None => *windows
                .iter()
                .min_by_key(|w| w.size_ms)
                .ok_or_else(|| rule_error("window", "no window sizes are configured"))?,
            Some(size) => *windows
                .iter()
                .find(|w| w.size_ms == size.as_i64())
                .ok_or_else(|| {
                    let sizes: Vec<String> = windows
                        .iter()
                        .map(|w| Millis(w.size_ms as u64).to_string())
                        .collect();
                    rule_error(
                        "window",
                        format!(
                            "window = \"{size}\" is not a configured window size ({})",
                            sizes.join(", ")
                        ),
                    )
                })?,
        };
        let condition = match c.absent {
            Some(absent) => {
                for (key, set) in [
                    ("above", c.above.is_some()),
                    ("below", c.below.is_some()),
                    ("value", c.value.is_some()),
                    ("clear", c.clear.is_some()),
                    ("for", c.for_windows.is_some()),
                ] {
                    if set {
                        return Err(rule_error(
                            key,
                            format!(
                                "`{key}` does not go with `absent` (a deadman rule fires on silence)"
                            ),
                        ));
                    }
                }
                if absent.0 == 0 {
                    return Err(rule_error("absent", "absent = 0: must be longer than zero"));
                }
                Condition::Absent {
                    absent_ms: absent.as_i64(),
                }
            }
            None => Condition::Threshold {
                measure: measure(c.value.as_deref().unwrap_or("count"), quantiles)?,
                threshold: threshold(c)?,
            },
        };
        for (key, names) in [("labels", &c.labels), ("annotations", &c.annotations)] {
            if let Some(bad) = names.keys().find(|n| !is_label_name(n)) {
                return Err(rule_error(
                    key,
                    format!(
                        "`{bad}` is not a valid name (Alertmanager takes [a-zA-Z_][a-zA-Z0-9_]*)"
                    ),
                ));
            }
        }
        let mut labels = c.labels.clone();
        for reserved in ["alertname", "key", "severity"] {
            if labels.contains_key(reserved) {
                return Err(rule_error(
                    "labels",
                    format!(
                        "label `{reserved}` is set by sluice (use `severity = ...` for severity)"
                    ),
                ));
            }
        }
        labels.insert("alertname".into(), c.name.clone());
        if let Some(s) = &c.severity {
            labels.insert("severity".into(), s.clone());
        }
        let annotations = c
            .annotations
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    Template::parse(v).map_err(|m| rule_error("annotations", m))?,
                ))
            })
            .collect::<Result<_, RuleError>>()?;
        Ok(Rule {
            name: c.name.clone(),
            selector,
            window,
            condition,
            labels,
            annotations,
        })
    }

    /// The label set of the alert of `key`.
    pub fn labels_of(&self, key: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert("key".into(), key.to_string());
        labels
    }
}

/// True when `name` is a valid Prometheus label name, as Alertmanager requires of label
/// and annotation names (it refuses the whole alert otherwise).
fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn measure(name: &str, quantiles: &[f64]) -> Result<Measure, RuleError> {
    Ok(match name {
        "count" => Measure::Count,
        "sum" => Measure::Sum,
        "mean" => Measure::Mean,
        "min" => Measure::Min,
        "max" => Measure::Max,
        "last" => Measure::Last,
        "stddev" => Measure::Stddev,
        "distinct" => Measure::Distinct,
        other => match quantiles.iter().find(|q| quantile_name(**q) == other) {
            Some(q) => Measure::Quantile(*q),
            None => {
                let names: Vec<String> = quantiles.iter().map(|q| quantile_name(*q)).collect();
                return Err(rule_error(
                    "value",
                    format!(
                        "unknown aggregate `{other}` (count, sum, mean, min, max, last, stddev, \
                         distinct{}{})",
                        if names.is_empty() { "" } else { ", " },
                        names.join(", ")
                    ),
                ));
            }
        },
    })
}

fn threshold(c: &RuleConfig) -> Result<Threshold, RuleError> {
    let (above, value) = match (c.above, c.below) {
        (Some(_), Some(_)) => {
            return Err(rule_error("below", "give `above` or `below`, not both"));
        }
        (None, None) => {
            return Err(rule_error(
                "name",
                "a rule needs `above`, `below` or `absent`",
            ));
        }
        (Some(v), None) => (true, v),
        (None, Some(v)) => (false, v),
    };
    if !value.is_finite() {
        return Err(rule_error(
            if above { "above" } else { "below" },
            "the threshold must be a finite number",
        ));
    }
    let for_windows = c.for_windows.unwrap_or(1);
    if for_windows == 0 {
        return Err(rule_error(
            "for",
            "for = 0: at least one window is needed (default 1)",
        ));
    }
    let clear = c.clear.unwrap_or(value);
    if !clear.is_finite() || (above && clear > value) || (!above && clear < value) {
        let side = if above {
            "at or below `above`"
        } else {
            "at or above `below`"
        };
        return Err(rule_error(
            "clear",
            format!("clear = {clear} must be {side} ({value})"),
        ));
    }
    Ok(Threshold {
        above,
        threshold: value,
        clear,
        for_windows,
    })
}

/// Alertmanager's fingerprint of a label set (FNV-1a 64 over the sorted names and values,
/// each followed by 0xff), as 16 hex digits: receivers dedupe by it.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in labels {
        add(k.as_bytes());
        add(&[0xff]);
        add(v.as_bytes());
        add(&[0xff]);
    }
    format!("{h:016x}")
}

/// One (rule, key) state, as stored in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateRecord {
    /// The rule's name.
    pub rule: String,
    /// The key.
    pub key: String,
    /// Its state.
    pub state: State,
}

/// A transition row, as written to and read from the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The rule.
    pub alert: String,
    /// The key.
    pub key: String,
    /// `pending`, `inactive`, `firing` or `resolved`.
    pub state: String,
    /// When (event time) it happened: the end of the window that decided it.
    pub at: String,
    /// `at` in ms since the epoch.
    pub at_ms: i64,
    /// The rule's window size.
    pub window: String,
    /// Start of the window that decided it (a deadman: the deadline's window).
    pub start_ms: i64,
    /// The value that decided it (a deadman: seconds of silence); `null` when none.
    pub value: Option<f64>,
    /// The threshold (a deadman: the silence in seconds).
    pub threshold: f64,
    /// When it began firing (or pending).
    pub starts_at: String,
    /// `starts_at` in ms since the epoch.
    pub starts_at_ms: i64,
    /// Alertmanager's fingerprint of `labels`.
    pub fingerprint: String,
    /// The alert's labels.
    pub labels: BTreeMap<String, String>,
    /// The rendered annotations.
    pub annotations: BTreeMap<String, String>,
}

type States = HashMap<Box<str>, State, foldhash::fast::RandomState>;

/// One shard's alert state and its alerts record: the shard calls it at each window close
/// and frontier step ([`CloseHook`]).
#[derive(Debug)]
pub struct Engine {
    rules: Arc<[Rule]>,
    /// Per rule: its states by key.
    states: Vec<States>,
    record: HookRecord,
    /// The earliest frontier at which a deadman may fire or a stale alert resolve.
    next_deadline_ms: i64,
    line: Vec<u8>,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// An engine for `rules` writing to `record` (opened at the checkpoint's position).
    pub fn new(rules: Arc<[Rule]>, record: RecordWriter, metrics: Arc<Metrics>) -> Engine {
        Engine {
            states: rules.iter().map(|_| States::default()).collect(),
            rules,
            record: HookRecord::new(record, "alert transitions"),
            next_deadline_ms: i64::MAX,
            line: Vec::with_capacity(512),
            metrics,
        }
    }

    /// Restores one (rule, key) state from a checkpoint; a rule no longer configured is
    /// dropped.
    pub fn restore(&mut self, record: StateRecord) {
        let Some(r) = self.rules.iter().position(|r| r.name == record.rule) else {
            tracing::info!(rule = %record.rule, key = %record.key, "alert state of a rule no longer configured is dropped");
            return;
        };
        if record.state.phase == Phase::Firing {
            self.firing_gauge(r, 1);
        }
        self.note_deadline(r, &record.state);
        self.states[r].insert(record.key.into(), record.state);
    }

    /// Every (rule, key) state, for a checkpoint, in a stable order.
    pub fn snapshot(&self) -> Vec<StateRecord> {
        let mut out: Vec<StateRecord> = self
            .states
            .iter()
            .zip(self.rules.iter())
            .flat_map(|(states, rule)| {
                states.iter().map(|(k, s)| StateRecord {
                    rule: rule.name.clone(),
                    key: k.to_string(),
                    state: *s,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.rule, &a.key).cmp(&(&b.rule, &b.key)));
        out
    }

    /// Writes the staged rows out and returns the handle that makes them durable, with the
    /// record's position (for the checkpoint).
    pub fn sync_handle(&mut self) -> (RecordSync, io::Result<()>, u64) {
        self.record.sync_handle()
    }

    /// The record's position, staged rows included.
    pub fn position(&self) -> u64 {
        self.record.position()
    }

    /// States kept now, all rules together.
    pub fn states(&self) -> usize {
        self.states.iter().map(HashMap::len).sum()
    }

    fn firing_gauge(&self, rule: usize, delta: i64) {
        if let Some(g) = self.metrics.alerts.firing.get(rule) {
            g.add(delta);
        }
    }

    fn note_deadline(&mut self, r: usize, s: &State) {
        if let Some(at) = deadline(&self.rules[r], s) {
            self.next_deadline_ms = self.next_deadline_ms.min(at);
        }
    }

    /// Writes the row of `change` of rule `r` for `key`.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        r: usize,
        key: &str,
        change: Change,
        s: &State,
        at_ms: i64,
        start_ms: i64,
        value: Option<f64>,
    ) {
        match change {
            Change::Firing => self.firing_gauge(r, 1),
            Change::Resolved => self.firing_gauge(r, -1),
            Change::Pending | Change::Inactive => {}
        }
        let row = self.row(r, key, change.as_str(), s, at_ms, start_ms, value);
        self.line.clear();
        // A struct of strings, maps of strings and finite numbers always encodes.
        if serde_json::to_writer(&mut self.line, &row).is_ok() {
            self.line.push(b'\n');
            self.record.append(&self.line);
        }
    }

    /// The row saying that (rule `r`, `key`) is in `state`.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        r: usize,
        key: &str,
        state: &str,
        s: &State,
        at_ms: i64,
        start_ms: i64,
        value: Option<f64>,
    ) -> Row {
        let rule = &self.rules[r];
        let labels = rule.labels_of(key);
        let mut annotations = BTreeMap::new();
        for (name, template) in &rule.annotations {
            let mut text = String::new();
            template.render(&mut text, rule, key, value.unwrap_or(s.value));
            annotations.insert(name.clone(), text);
        }
        let threshold = match &rule.condition {
            Condition::Threshold { threshold, .. } => threshold.threshold,
            Condition::Absent { absent_ms } => *absent_ms as f64 / 1000.0,
        };
        Row {
            alert: rule.name.clone(),
            key: key.to_string(),
            state: state.to_string(),
            at: rfc3339(at_ms),
            at_ms,
            window: Millis(rule.window.size_ms as u64).to_string(),
            start_ms,
            value: value.filter(|v| v.is_finite()),
            threshold,
            starts_at: rfc3339(s.since_ms),
            starts_at_ms: s.since_ms,
            fingerprint: fingerprint(&labels),
            labels,
            annotations,
        }
    }

    /// The alerts pending or firing now, as rows (`at` is when their phase began), and the
    /// record's position they are the state at: the board starts from these and reads the
    /// record from that position on.
    pub fn current(&self) -> (Vec<Row>, u64) {
        let mut rows = Vec::new();
        for (r, states) in self.states.iter().enumerate() {
            for (key, s) in states {
                let state = match s.phase {
                    Phase::Pending => "pending",
                    Phase::Firing => "firing",
                    Phase::Inactive => continue,
                };
                let start_ms = if s.last_start_ms == i64::MIN {
                    s.since_ms
                } else {
                    s.last_start_ms
                };
                rows.push(self.row(r, key, state, s, s.since_ms, start_ms, Some(s.value)));
            }
        }
        rows.sort_by(|a, b| (&a.alert, &a.key).cmp(&(&b.alert, &b.key)));
        (rows, self.record.position())
    }

    /// Gets or makes the state of `key` under rule `r`; `None` at the bound (counted).
    fn state_mut(&mut self, r: usize, key: &str) -> Option<&mut State> {
        let states = &mut self.states[r];
        if !states.contains_key(key) {
            if states.len() >= ALERT_STATES_PER_RULE_MAX {
                self.metrics.alerts.states_overflow_total.add(1);
                return None;
            }
            states.insert(key.into(), State::new());
        }
        states.get_mut(key)
    }

    fn closed_threshold(&mut self, r: usize, key: &str, start_ms: i64, value: f64, t: Threshold) {
        let spec = self.rules[r].window;
        let w = state::Window {
            start_ms,
            end_ms: start_ms + spec.size_ms,
            hop_ms: spec.hop_ms,
            value,
        };
        let states = &mut self.states[r];
        let (change, s) = match states.get_mut(key) {
            Some(s) => {
                let change = state::step_threshold(s, &t, w);
                let s = *s;
                if s.is_idle() {
                    states.remove(key);
                }
                (change, s)
            }
            None => {
                let mut s = State::new();
                let change = state::step_threshold(&mut s, &t, w);
                if s.is_idle() {
                    return;
                }
                match self.state_mut(r, key) {
                    Some(slot) => *slot = s,
                    None => return,
                }
                (change, s)
            }
        };
        self.note_deadline(r, &s);
        if let Some(change) = change {
            self.emit(r, key, change, &s, w.end_ms, start_ms, Some(value));
        }
    }

    fn closed_absent(&mut self, r: usize, key: &str, start_ms: i64, agg: &Agg) {
        let end_ms = start_ms + self.rules[r].window.size_ms;
        let seen = if agg.last_time_ms > i64::MIN {
            agg.last_time_ms
        } else {
            start_ms
        };
        let Some(s) = self.state_mut(r, key) else {
            return;
        };
        let change = state::step_seen(s, seen, end_ms);
        let s = *s;
        self.note_deadline(r, &s);
        if let Some(change) = change {
            self.emit(r, key, change, &s, end_ms, start_ms, Some(0.0));
        }
    }
}

/// When the frontier next matters to a state: a deadman's deadline, or a firing alert's
/// staleness.
fn deadline(rule: &Rule, s: &State) -> Option<i64> {
    match &rule.condition {
        Condition::Absent { absent_ms } => {
            state::absent_deadline(s, *absent_ms, rule.window.size_ms)
        }
        Condition::Threshold { threshold, .. } => {
            state::stale_at(s, threshold, rule.window.size_ms, rule.window.hop_ms)
        }
    }
}

impl CloseHook for Engine {
    #[inline]
    fn closed(&mut self, key: &str, spec: &WindowSpec, start_ms: i64, agg: &Agg) {
        for r in 0..self.rules.len() {
            let rule = &self.rules[r];
            if rule.window != *spec || !rule.selector.matches(key) {
                continue;
            }
            match rule.condition {
                Condition::Threshold { measure, threshold } => {
                    if let Some(v) = measure.of(agg) {
                        self.closed_threshold(r, key, start_ms, v, threshold);
                    }
                }
                Condition::Absent { .. } => self.closed_absent(r, key, start_ms, agg),
            }
        }
    }

    fn passed(&mut self, through_ms: i64) {
        if through_ms >= self.next_deadline_ms {
            self.fire_deadlines(through_ms);
        }
        self.record.write_out();
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Engine {
    /// Fires every deadman and resolves every stale alert whose time the frontier has passed,
    /// in (time, rule, key) order so a replay writes them alike.
    fn fire_deadlines(&mut self, through_ms: i64) {
        let mut due: Vec<(i64, usize, Box<str>, Change, State)> = Vec::new();
        let mut next = i64::MAX;
        for (r, states) in self.states.iter_mut().enumerate() {
            let rule = &self.rules[r];
            for (key, s) in states.iter_mut() {
                let fired = match &rule.condition {
                    Condition::Absent { absent_ms } => {
                        state::step_absent(s, *absent_ms, rule.window.size_ms, through_ms)
                            .map(|at| (at, Change::Firing))
                    }
                    Condition::Threshold { threshold, .. } => state::step_stale(
                        s,
                        threshold,
                        rule.window.size_ms,
                        rule.window.hop_ms,
                        through_ms,
                    ),
                };
                if let Some((at, change)) = fired {
                    due.push((at, r, key.clone(), change, *s));
                }
                if let Some(at) = deadline(rule, s) {
                    next = next.min(at);
                }
            }
            if matches!(rule.condition, Condition::Threshold { .. }) {
                states.retain(|_, s| !s.is_idle());
            }
        }
        self.next_deadline_ms = next;
        due.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        for (at, r, key, change, s) in due {
            let size = self.rules[r].window.size_ms;
            let value = match change {
                Change::Firing => Some((at - s.last_seen_ms) as f64 / 1000.0),
                _ => None,
            };
            self.emit(r, &key, change, &s, at, at - size, value);
        }
    }
}

#[cfg(test)]
mod tests;
