//! The board: the newest comparison of every (experiment, key), per window size and scope,
//! as the shards' `experiments/` records say, for `GET /api/v1/experiments`. A thread off
//! the cores reads every record from its start (its retention bounds that) and keeps one row
//! per (experiment, key, window, scope), so its memory is bounded by the keys, not the rows.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::limits::NOTIFY_POLL_MS;
use crate::results::{Cursors, RecordReader};

/// (experiment, key, window, scope).
type Id = (String, String, String, String);

/// The newest comparisons.
#[derive(Debug, Default)]
pub struct Board {
    rows: Mutex<BTreeMap<Id, serde_json::Value>>,
}

impl Board {
    /// Takes one row of an `experiments/` record.
    pub fn apply(&self, line: &[u8]) {
        let Ok(row) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        let field = |f: &str| row[f].as_str().unwrap_or_default().to_string();
        let id = (
            field("experiment"),
            field("key"),
            field("window"),
            field("scope"),
        );
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.insert(id, row);
    }

    /// The newest rows, by experiment, key, window and scope, of `experiment` (all when
    /// `None`) and of keys `key_filter` takes, at most `max`; true when there were more.
    pub fn current(
        &self,
        experiment: Option<&str>,
        key_filter: impl Fn(&str) -> bool,
        max: usize,
    ) -> (Vec<serde_json::Value>, bool) {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut more = false;
        for ((e, key, _, _), row) in rows.iter() {
            if experiment.is_some_and(|x| x != e) || !key_filter(key) {
                continue;
            }
            if out.len() == max {
                more = true;
                break;
            }
            out.push(row.clone());
        }
        (out, more)
    }
}

/// Starts the thread that keeps `board` up to date from `records` (each shard's
/// `experiments/` record, read from its start, its reader registered in the cursors).
pub fn spawn(
    board: Arc<Board>,
    records: Vec<(PathBuf, Arc<Cursors>)>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-experiments-board".into())
        .spawn(move || {
            let readers = records
                .iter()
                .map(|(dir, cursors)| RecordReader::open(dir, 0, Some(cursors)))
                .collect();
            let poll = Duration::from_millis(NOTIFY_POLL_MS);
            crate::results::tail_rows(readers, &stop, poll, |line| board.apply(line));
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_keeps_the_newest_row_per_experiment_key_window_and_scope() {
        let board = Board::default();
        let row = |key: &str, scope: &str, end: i64| {
            format!(
                r#"{{"experiment":"x","key":"{key}","window":"10s","scope":"{scope}","end_ms":{end}}}"#
            )
        };
        for end in [10, 20, 30] {
            board.apply(row("a", "window", end).as_bytes());
            board.apply(row("a", "cumulative", end).as_bytes());
            board.apply(row("b", "window", end).as_bytes());
        }
        board.apply(b"not json");
        let (rows, more) = board.current(None, |_| true, 10);
        assert!(!more);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r["end_ms"] == 30));
        let (rows, more) = board.current(Some("x"), |k| k == "b", 10);
        assert_eq!((rows.len(), more), (1, false));
        let (rows, more) = board.current(Some("y"), |_| true, 10);
        assert_eq!((rows.len(), more), (0, false));
        let (rows, more) = board.current(None, |_| true, 2);
        assert_eq!((rows.len(), more), (2, true));
    }
}
