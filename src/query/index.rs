//! The closed-row index: the newest rows of every shard's aggregates record, in memory, by
//! key and window, and every key's row of the newest closed window of each size for top-N.

use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use super::{By, Filter, MEASURES};
use crate::results::RecordReader;

/// How long the feeder sleeps when every record is read to its end.
const FEED_POLL_MS: u64 = 50;
/// Rows the feeder takes from one record before it hands them to the index and looks at
/// the next record: one lock per batch, and no record waits behind a busy one.
const FEED_BATCH_ROWS: usize = 4096;

/// A closed row as the index keeps it.
#[derive(Debug)]
struct Entry {
    key: Arc<str>,
    window: Arc<str>,
    /// The row as written, with `"final":true` added.
    text: Box<str>,
}

/// A key's place in the newest closed window of a size: enough to rank it, and where its
/// row is (read back for the few keys an answer holds).
#[derive(Debug, Clone)]
pub struct Ranked {
    /// The key.
    pub key: Arc<str>,
    /// The shard whose record holds the row.
    pub shard: u16,
    /// The row's position in that record.
    pub position: u64,
    /// The row's measures in [`By::slot`] order; NaN where the row has none.
    measures: [f64; MEASURES],
}

impl Ranked {
    /// The measure `by` of the row, if it has it.
    pub fn measure(&self, by: By) -> Option<f64> {
        let v = self.measures[by.slot()];
        (!v.is_nan()).then_some(v)
    }
}

/// The newest closed window of one size: its start and every key's row of it.
#[derive(Debug, Default)]
struct Latest {
    start_ms: i64,
    rows: Vec<Ranked>,
}

/// A window size's label and the sequence numbers of a key's rows of it.
type WindowRows = (Arc<str>, VecDeque<u64>);

#[derive(Debug, Default)]
struct Inner {
    /// The newest rows, oldest first; the first has sequence number `base`.
    history: VecDeque<Entry>,
    base: u64,
    history_bytes: usize,
    /// Per key, per window: the sequence numbers of its rows in `history`, oldest first.
    keys: BTreeMap<Arc<str>, Vec<WindowRows>>,
    /// Per window size (its label, `10s`): the newest closed window's rows.
    latest: BTreeMap<Arc<str>, Latest>,
    stats: IndexStats,
}

/// What the index holds and has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Rows taken in since the start.
    pub rows: u64,
    /// Rows dropped from the history to keep it within its budget.
    pub evicted: u64,
    /// Rows that could not be read as rows (they are skipped).
    pub unreadable: u64,
    /// Rows held in the history now.
    pub held: u64,
    /// Bytes of row text held in the history now.
    pub held_bytes: u64,
}

/// The answer to a windows query: rows (with `"final":true`), by key, window and start.
#[derive(Debug, Default, PartialEq)]
pub struct WindowsAnswer {
    /// The rows, as JSON objects.
    pub rows: Vec<String>,
    /// True when more rows matched than the answer may hold.
    pub truncated: bool,
}

/// The answer to a top query, before the rows are read back.
#[derive(Debug, Default)]
pub struct TopAnswer {
    /// Start of the window ranked (`None`: no window of that size has closed yet).
    pub start_ms: Option<i64>,
    /// The top keys, best first.
    pub ranked: Vec<Ranked>,
}

/// The closed-row index; see the module doc of `query`.
#[derive(Debug)]
pub struct Index {
    inner: Mutex<Inner>,
    history_budget: usize,
    dirs: Vec<PathBuf>,
}

/// One row read by the feeder, parsed outside the lock.
struct Parsed {
    shard: u16,
    position: u64,
    key: String,
    window: String,
    start_ms: i64,
    measures: [f64; MEASURES],
    text: Box<str>,
}

#[derive(Deserialize)]
struct RowFields<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    window: std::borrow::Cow<'a, str>,
    start_ms: i64,
    count: Option<f64>,
    sum: Option<f64>,
    mean: Option<f64>,
    max: Option<f64>,
    p99: Option<f64>,
    distinct: Option<f64>,
}

fn parse_row(shard: u16, position: u64, line: &[u8]) -> Option<Parsed> {
    let f: RowFields<'_> = serde_json::from_slice(line).ok()?;
    let text = std::str::from_utf8(line).ok()?;
    let body = text.trim_end().strip_suffix('}')?;
    let nan = f64::NAN;
    Some(Parsed {
        shard,
        position,
        key: f.key.into_owned(),
        window: f.window.into_owned(),
        start_ms: f.start_ms,
        measures: [
            f.count.unwrap_or(nan),
            f.sum.unwrap_or(nan),
            f.mean.unwrap_or(nan),
            f.max.unwrap_or(nan),
            f.p99.unwrap_or(nan),
            f.distinct.unwrap_or(nan),
        ],
        text: format!("{body},\"final\":true}}").into_boxed_str(),
    })
}

impl Index {
    /// An empty index of the records in `dirs` (one per shard, in shard order), holding at
    /// most `history_budget` bytes of row text.
    pub fn new(dirs: Vec<PathBuf>, history_budget: usize) -> Index {
        Index {
            inner: Mutex::new(Inner::default()),
            history_budget,
            dirs,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every step below keeps it
        // so); go on with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the index holds.
    pub fn stats(&self) -> IndexStats {
        self.lock().stats
    }

    /// Takes in rows (the feeder's batch); rows that are not rows are counted and skipped.
    fn insert(&self, rows: Vec<Parsed>, unreadable: u64) {
        let mut inner = self.lock();
        inner.stats.unreadable += unreadable;
        for row in rows {
            inner.insert(row, self.history_budget);
        }
        inner.stats.held = inner.history.len() as u64;
        inner.stats.held_bytes = inner.history_bytes as u64;
    }

    /// Takes in one row of `shard` at `position` (as the feeder does); false when it is not a
    /// row. For tests and tools that feed the index themselves.
    pub fn insert_line(&self, shard: u16, position: u64, line: &[u8]) -> bool {
        match parse_row(shard, position, line) {
            Some(row) => {
                self.insert(vec![row], 0);
                true
            }
            None => {
                self.insert(Vec::new(), 1);
                false
            }
        }
    }

    /// The last `last` closed rows of each (key, window) that `filter` selects (only windows
    /// of size `window` when given), at most `limit` rows in all: by key, window, then start.
    pub fn windows(
        &self,
        filter: &Filter,
        window: Option<&str>,
        last: usize,
        limit: usize,
    ) -> WindowsAnswer {
        let inner = self.lock();
        let mut answer = WindowsAnswer::default();
        let keys: Box<dyn Iterator<Item = _>> = match filter {
            Filter::Key(k) => Box::new(inner.keys.get_key_value(k.as_str()).into_iter()),
            Filter::Prefix(p) => Box::new(
                inner
                    .keys
                    .range::<str, _>((
                        std::ops::Bound::Included(p.as_str()),
                        std::ops::Bound::Unbounded,
                    ))
                    .take_while(|(k, _)| k.starts_with(p.as_str())),
            ),
        };
        for (_, per_window) in keys {
            let mut per_window: Vec<_> = per_window
                .iter()
                .filter(|(w, _)| window.is_none_or(|want| &**w == want))
                .collect();
            per_window.sort_by_key(|(w, _)| window_order(w));
            for (_, seqs) in per_window {
                let skip = seqs.len().saturating_sub(last);
                for &seq in seqs.iter().skip(skip) {
                    if answer.rows.len() == limit {
                        answer.truncated = true;
                        return answer;
                    }
                    let entry = &inner.history[(seq - inner.base) as usize];
                    answer.rows.push(entry.text.to_string());
                }
            }
        }
        answer
    }

    /// The `n` keys that `filter` selects with the largest measure `by` in the newest closed
    /// window of size `window`, best first (ties by key). Keys whose row lacks the measure
    /// are not ranked.
    pub fn top(&self, window: &str, by: By, n: usize, filter: &Filter) -> TopAnswer {
        let inner = self.lock();
        let Some(latest) = inner.latest.get(window) else {
            return TopAnswer::default();
        };
        let ranked = top_n(
            latest
                .rows
                .iter()
                .filter(|r| filter.matches(&r.key))
                .filter_map(|r| r.measure(by).map(|v| (v, r))),
            n,
        )
        .into_iter()
        .cloned()
        .collect();
        TopAnswer {
            start_ms: Some(latest.start_ms),
            ranked,
        }
    }

    /// The row of `ranked` read back from its record, with `"final":true`; `None` when
    /// retention deleted it meanwhile.
    pub fn read_row(&self, ranked: &Ranked) -> Option<String> {
        let dir = self.dirs.get(ranked.shard as usize)?;
        let mut reader = RecordReader::open(dir, ranked.position, None);
        match reader.next_line() {
            Ok(Some((at, line))) if at == ranked.position => {
                parse_row(ranked.shard, at, line).map(|p| p.text.into_string())
            }
            _ => None,
        }
    }
}

/// Sorts window labels by their length in time (`10s` before `1m`), unknown ones last.
fn window_order(label: &str) -> (u128, String) {
    let ms = humantime::parse_duration(label).map_or(u128::MAX, |d| d.as_millis());
    (ms, label.to_string())
}

/// The `n` largest by value (ties: smaller key first), best first: a heap of `n`, so a top-10
/// over a million keys holds ten.
fn top_n<'a>(items: impl Iterator<Item = (f64, &'a Ranked)>, n: usize) -> Vec<&'a Ranked> {
    /// Ordered so that the heap's top is the worst of the kept: lower value, then larger key.
    struct Worst<'a>(f64, &'a Ranked);
    impl PartialEq for Worst<'_> {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other).is_eq()
        }
    }
    impl Eq for Worst<'_> {}
    impl PartialOrd for Worst<'_> {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Worst<'_> {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            other
                .0
                .total_cmp(&self.0)
                .then_with(|| self.1.key.cmp(&other.1.key))
        }
    }
    if n == 0 {
        return Vec::new();
    }
    let mut heap = BinaryHeap::with_capacity(n + 1);
    for (v, r) in items {
        heap.push(Worst(v, r));
        if heap.len() > n {
            heap.pop();
        }
    }
    heap.into_sorted_vec().into_iter().map(|w| w.1).collect()
}

impl Inner {
    fn insert(&mut self, row: Parsed, budget: usize) {
        self.stats.rows += 1;
        let key: Arc<str> = match self.keys.get_key_value(row.key.as_str()) {
            Some((k, _)) => k.clone(),
            None => row.key.as_str().into(),
        };
        let window: Arc<str> = match self.latest.get_key_value(row.window.as_str()) {
            Some((w, _)) => w.clone(),
            None => row.window.as_str().into(),
        };
        // The newest closed window of this size.
        let latest = self.latest.entry(window.clone()).or_default();
        if latest.rows.is_empty() || row.start_ms > latest.start_ms {
            latest.start_ms = row.start_ms;
            latest.rows.clear();
        }
        if row.start_ms == latest.start_ms {
            latest.rows.push(Ranked {
                key: key.clone(),
                shard: row.shard,
                position: row.position,
                measures: row.measures,
            });
        }
        // The history.
        let seq = self.base + self.history.len() as u64;
        let per_window = self.keys.entry(key.clone()).or_default();
        match per_window.iter_mut().find(|(w, _)| *w == window) {
            Some((_, seqs)) => seqs.push_back(seq),
            None => per_window.push((window.clone(), VecDeque::from([seq]))),
        }
        self.history_bytes += row.text.len();
        self.history.push_back(Entry {
            key,
            window,
            text: row.text,
        });
        while self.history_bytes > budget && self.history.len() > 1 {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        let Some(entry) = self.history.pop_front() else {
            return;
        };
        let seq = self.base;
        self.base += 1;
        self.history_bytes -= entry.text.len();
        self.stats.evicted += 1;
        if let Some(per_window) = self.keys.get_mut(&entry.key) {
            if let Some(i) = per_window.iter().position(|(w, _)| *w == entry.window) {
                let seqs = &mut per_window[i].1;
                debug_assert_eq!(seqs.front(), Some(&seq), "history is oldest first");
                seqs.pop_front();
                if seqs.is_empty() {
                    per_window.swap_remove(i);
                }
            }
            if per_window.is_empty() {
                self.keys.remove(&entry.key);
            }
        }
    }
}

/// Follows every record of `index` from its oldest row kept, feeding the index, until `stop`
/// is set. Runs on its own thread (`sluice-query-index`).
pub fn spawn_feeder(
    index: Arc<Index>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-query-index".into())
        .spawn(move || {
            // Only the newest rows fit the history: start twice its budget before each end
            // (the first line read from there may be the tail of a row: skipped).
            let mut readers: Vec<(RecordReader, bool)> = index
                .dirs
                .iter()
                .map(|d| {
                    let end = crate::results::record_end(d).unwrap_or(0);
                    let from = end.saturating_sub(2 * index.history_budget as u64);
                    (RecordReader::open(d, from, None), from > 0)
                })
                .collect();
            let mut failing = vec![false; readers.len()];
            while !stop.load(Ordering::Relaxed) {
                let mut any = false;
                for (shard, (reader, mid_row)) in readers.iter_mut().enumerate() {
                    let mut batch = Vec::new();
                    let mut unreadable = 0;
                    while batch.len() < FEED_BATCH_ROWS {
                        match reader.next_line() {
                            Ok(Some(_)) if std::mem::take(mid_row) => {}
                            Ok(Some((at, line))) => match parse_row(shard as u16, at, line) {
                                Some(row) => batch.push(row),
                                None => unreadable += 1,
                            },
                            Ok(None) => break,
                            Err(error) => {
                                if !failing[shard] {
                                    tracing::warn!(shard, %error, "query index: cannot read the aggregates record; retrying");
                                }
                                failing[shard] = true;
                                break;
                            }
                        }
                        failing[shard] = false;
                    }
                    if !batch.is_empty() || unreadable > 0 {
                        any = true;
                        index.insert(batch, unreadable);
                    }
                }
                if !any {
                    std::thread::sleep(Duration::from_millis(FEED_POLL_MS));
                }
            }
        })
}
