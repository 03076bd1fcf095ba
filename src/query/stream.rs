//! `/api/v1/stream`: closed rows (and alert transitions) as server-sent events, resumable by
//! position.
//!
//! One thread per client ([`follow`], [`follow_records`]) reads every shard's aggregates
//! record (and, when rules run, its alerts record) with a
//! [`RecordReader`] registered in the record's cursors (retention keeps what it has not
//! sent), and hands finished SSE frames to the HTTP side through a bounded queue. The event
//! id is every shard's position after the row (`id: 120,0,4711`): a reconnect with that
//! `Last-Event-ID` starts each reader there, so nothing is lost or repeated. A client that
//! does not take its frames for [`STREAM_STALL_MAX_MS`](crate::limits::STREAM_STALL_MAX_MS)
//! is dropped (its cursor with it), so a stuck client cannot hold retention or memory; one
//! that reads, but slower than rows come, holds retention back only up to
//! [`RESULTS_READER_HOLD_FACTOR`](crate::limits::RESULTS_READER_HOLD_FACTOR) times its bound.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Filter;
use crate::results::{Cursors, RecordReader};

/// How long the follower sleeps when every record is read to its end.
const STREAM_POLL_MS: u64 = 50;

/// What handing a frame to the client did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Taken.
    Sent,
    /// The queue to the client is full: the frame comes back, to try again later.
    Full(String),
    /// The client is gone.
    Closed,
}

/// The event id of `positions` (one per shard).
pub fn event_id(positions: &[u64]) -> String {
    positions
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The positions in an event id of `shards` shards; `None` when it is not one.
pub fn parse_event_id(id: &str, shards: usize) -> Option<Vec<u64>> {
    let positions: Vec<u64> = id
        .trim()
        .split(',')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (positions.len() == shards).then_some(positions)
}

#[derive(Deserialize)]
struct KeyAndWindow<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    window: std::borrow::Cow<'a, str>,
}

/// A stream's selection: keys and, optionally, one window size (its label, `10s`).
#[derive(Debug, Clone)]
pub struct Selection {
    /// The keys.
    pub filter: Filter,
    /// The window size's label, or every size.
    pub window: Option<String>,
}

impl Selection {
    fn takes(&self, row: &[u8]) -> bool {
        let Ok(f) = serde_json::from_slice::<KeyAndWindow<'_>>(row) else {
            return false;
        };
        self.filter.matches(&f.key) && self.window.as_deref().is_none_or(|w| w == f.window)
    }
}

/// Timing of a follower.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A comment frame after this long without an event.
    pub keepalive: Duration,
    /// A client that takes no frame for this long is dropped.
    pub stall_max: Duration,
}

/// Follows the aggregates records in `dirs` (with their `cursors`) from `positions`, handing
/// each selected row to `send` as an SSE frame (`id`, `event: window`, `data`), and a comment
/// frame every `keepalive` without one, until the client is gone or stalls. `send(None)`
/// only asks whether the client is still there. Blocking: run it on its own thread.
pub fn follow(
    dirs: &[PathBuf],
    cursors: &[Arc<Cursors>],
    positions: &[u64],
    selection: &Selection,
    timing: Timing,
    send: impl FnMut(Option<String>) -> Sent,
) {
    let events = vec![Event::Window; dirs.len()];
    follow_records(dirs, &events, cursors, positions, selection, timing, send);
}

/// What a followed record holds, and so its frames' `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Closed windows (`aggregates/`): `event: window`, the row plus `"final":true`.
    Window,
    /// Alert transitions (`alerts/`): `event: alert`, the row.
    Alert,
    /// Experiment comparisons (`experiments/`): `event: experiment`, the row.
    Experiment,
}

/// [`follow`] over records of either kind (`events`, one per record); the event id holds
/// every record's position.
pub fn follow_records(
    dirs: &[PathBuf],
    events: &[Event],
    cursors: &[Arc<Cursors>],
    positions: &[u64],
    selection: &Selection,
    timing: Timing,
    mut send: impl FnMut(Option<String>) -> Sent,
) {
    let mut readers: Vec<RecordReader> = dirs
        .iter()
        .zip(positions)
        .enumerate()
        .map(|(i, (dir, &at))| RecordReader::open(dir, at, cursors.get(i).map(|c| &**c)))
        .collect();
    let mut last_sent = Instant::now();
    loop {
        let mut any = false;
        for i in 0..readers.len() {
            loop {
                let row = match readers[i].next_line() {
                    Ok(Some((_, line))) => selection
                        .takes(line)
                        .then(|| String::from_utf8_lossy(line).into_owned()),
                    Ok(None) => break,
                    Err(error) => {
                        tracing::debug!(%error, "stream: cannot read the aggregates record");
                        break;
                    }
                };
                any = true;
                let Some(row) = row else { continue };
                let positions: Vec<u64> = readers.iter().map(RecordReader::position).collect();
                let frame = match events.get(i) {
                    Some(Event::Alert) => format!(
                        "id: {}\nevent: alert\ndata: {}\n\n",
                        event_id(&positions),
                        row.trim_end()
                    ),
                    Some(Event::Experiment) => format!(
                        "id: {}\nevent: experiment\ndata: {}\n\n",
                        event_id(&positions),
                        row.trim_end()
                    ),
                    _ => {
                        let body = row.trim_end().strip_suffix('}').unwrap_or(&row);
                        format!(
                            "id: {}\nevent: window\ndata: {body},\"final\":true}}\n\n",
                            event_id(&positions)
                        )
                    }
                };
                if !deliver(&mut send, frame, timing.stall_max) {
                    return;
                }
                last_sent = Instant::now();
            }
        }
        if !any {
            if last_sent.elapsed() >= timing.keepalive {
                if !deliver(&mut send, ": keep-alive\n\n".into(), timing.stall_max) {
                    return;
                }
                last_sent = Instant::now();
            } else if send(None) == Sent::Closed {
                return;
            }
            std::thread::sleep(Duration::from_millis(STREAM_POLL_MS));
        }
    }
}

/// Hands one frame over, waiting while the queue is full; false: stop following (the
/// client is gone, or took nothing for `stall_max`).
fn deliver(
    send: &mut impl FnMut(Option<String>) -> Sent,
    frame: String,
    stall_max: Duration,
) -> bool {
    let since = Instant::now();
    let mut frame = frame;
    loop {
        match send(Some(frame)) {
            Sent::Sent => return true,
            Sent::Closed => return false,
            Sent::Full(_) if since.elapsed() >= stall_max => return false,
            Sent::Full(back) => {
                frame = back;
                std::thread::sleep(Duration::from_millis(STREAM_POLL_MS));
            }
        }
    }
}
