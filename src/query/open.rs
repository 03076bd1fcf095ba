//! Open windows' running values, asked of their owner shards.
//!
//! The admin side ([`OpenQueries::ask`]) puts one [`OpenRequest`] in every shard's bounded
//! queue (full: the answer is "busy", never a wait) and rings the cores awake. A core takes
//! one request at a time between batches and answers it in steps ([`OpenScan::step`]) of
//! [`OPEN_SCAN_SLOTS_PER_TURN`](crate::limits::OPEN_SCAN_SLOTS_PER_TURN) key slots per loop
//! turn, so a query over a million keys costs a core a few hundred µs per turn, never one
//! long stall. Each shard replies once; the admin side merges the replies (top-N across
//! shards) or gives up after a deadline.
//!
//! The shards' replies to a question are kept for a while: the same question asked again
//! within its `max_age` (a second unless the client says otherwise) gets them without
//! asking the cores, so a wall of dashboards refreshing each second costs the cores one
//! scan per second per distinct question, not one per viewer.

use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::{By, Filter};
use crate::limits::{OPEN_ANSWERS_CACHED_MAX, OPEN_SCAN_TURN_BUDGET_US};
use crate::window::{Agg, Shard, WindowSpec, open_row};

/// Slots scanned between looks at the clock.
const OPEN_SCAN_CHUNK_SLOTS: usize = 64;

/// What a request wants of the open windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Want {
    /// Every matching open window's row, at most `limit` per shard.
    Rows {
        /// Rows per shard at most.
        limit: usize,
    },
    /// The `n` matching open windows with the largest `by`.
    Top {
        /// The measure.
        by: By,
        /// How many.
        n: usize,
    },
}

/// One question to every shard.
#[derive(Debug)]
pub struct OpenRequest {
    /// The keys.
    pub filter: Filter,
    /// Windows of this size only (every size when `None`).
    pub size_ms: Option<i64>,
    /// What to answer.
    pub want: Want,
    /// Where the shard's answer goes (room for every shard's: a send never waits).
    pub reply: Sender<OpenReply>,
}

/// One open window in an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRow {
    /// The key.
    pub key: String,
    /// Window size.
    pub size_ms: i64,
    /// Window start.
    pub start_ms: i64,
    /// The ranked measure (top answers; 0 otherwise).
    pub value: f64,
    /// The row, with `"final":false`.
    pub text: String,
}

/// One shard's answer.
#[derive(Debug, Default, Clone)]
pub struct OpenReply {
    /// The rows: by key and start for [`Want::Rows`], best first for [`Want::Top`].
    pub rows: Vec<OpenRow>,
    /// True when more matched than [`Want::Rows`]'s limit.
    pub truncated: bool,
}

/// Why an open query has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// A shard's queue of requests is full: too many open queries at once.
    #[error("too many open-window queries at once; try again")]
    Busy,
    /// A shard did not answer in time (a core stopped, or is swamped).
    #[error("the cores did not answer in time")]
    Timeout,
}

/// The measure `by` of an aggregate as its row would show it (`None` where the row has
/// none), given the quantiles the shard reports.
pub fn measure(agg: &Agg, by: By, quantiles: &[(f64, String)]) -> Option<f64> {
    let values = agg.values() > 0;
    match by {
        By::Count => Some(agg.count as f64),
        By::Sum => values.then_some(agg.sum),
        By::Mean => values.then(|| agg.mean()),
        By::Max => values.then_some(agg.max),
        By::P99 => quantiles
            .iter()
            .find(|(_, name)| name == "p99")
            .and_then(|(q, _)| agg.quantile(*q)),
        By::Distinct => (agg.members > 0).then(|| agg.distinct.estimate() as f64),
    }
}

/// A top candidate, ordered best first (see [`rank`]), so the heap's top (its greatest) is
/// the worst kept.
#[derive(Debug)]
struct Candidate(OpenRow);

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        rank(&self.0, &other.0)
    }
}

/// Best first: larger value, then smaller key, then earlier window, then smaller size.
pub fn rank(a: &OpenRow, b: &OpenRow) -> std::cmp::Ordering {
    rank_parts(parts(a), parts(b))
}

/// What [`rank`] compares: (value, key, start, size).
type Parts<'a> = (f64, &'a str, i64, i64);

fn parts(r: &OpenRow) -> Parts<'_> {
    (r.value, &r.key, r.start_ms, r.size_ms)
}

fn rank_parts(a: Parts<'_>, b: Parts<'_>) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0)
        .then_with(|| a.1.cmp(b.1))
        .then_with(|| a.2.cmp(&b.2))
        .then_with(|| a.3.cmp(&b.3))
}

/// A request being answered by a shard, step by step.
#[derive(Debug)]
pub struct OpenScan {
    request: OpenRequest,
    next: usize,
    rows: Vec<OpenRow>,
    top: BinaryHeap<Candidate>,
    truncated: bool,
}

impl OpenScan {
    /// Starts answering `request`.
    pub fn new(request: OpenRequest) -> OpenScan {
        OpenScan {
            request,
            next: 0,
            rows: Vec::new(),
            top: BinaryHeap::new(),
            truncated: false,
        }
    }

    /// Scans up to `max_slots` more of `shard`'s key slots; when the scan is done, sends
    /// the reply and returns true.
    pub fn step(&mut self, shard: &Shard, max_slots: usize) -> bool {
        let quantiles = shard.quantiles();
        let columns = shard.columns();
        let filter = &self.request.filter;
        let (rows, top, truncated) = (&mut self.rows, &mut self.top, &mut self.truncated);
        let want = self.request.want;
        let mut add = |key: &str, spec: &WindowSpec, start_ms: i64, agg: &Agg| match want {
            Want::Rows { limit } => {
                if rows.len() >= limit {
                    *truncated = true;
                    return;
                }
                rows.push(OpenRow {
                    key: key.to_string(),
                    size_ms: spec.size_ms,
                    start_ms,
                    value: 0.0,
                    text: open_row(key, spec, start_ms, agg, quantiles, columns),
                });
            }
            Want::Top { by, n } => {
                let Some(value) = measure(agg, by, quantiles) else {
                    return;
                };
                if n == 0 {
                    return;
                }
                // Only a window that would enter the kept n is copied and formatted.
                if top.len() == n
                    && let Some(worst) = top.peek()
                    && rank_parts((value, key, start_ms, spec.size_ms), parts(&worst.0)).is_ge()
                {
                    return;
                }
                top.push(Candidate(OpenRow {
                    key: key.to_string(),
                    size_ms: spec.size_ms,
                    start_ms,
                    value,
                    text: open_row(key, spec, start_ms, agg, quantiles, columns),
                }));
                if top.len() > n {
                    top.pop();
                }
            }
        };
        // In chunks, until `max_slots` or the time budget is spent: a measure that costs
        // more (a quantile of every window) scans fewer slots per turn, not a longer turn.
        let started = Instant::now();
        let budget = Duration::from_micros(OPEN_SCAN_TURN_BUDGET_US);
        let mut left = max_slots;
        let mut next = Some(self.next);
        while let Some(from) = next {
            let chunk = left.min(OPEN_SCAN_CHUNK_SLOTS);
            next = shard.scan_open(
                from,
                chunk,
                self.request.size_ms,
                |key| filter.matches(key),
                &mut add,
            );
            left -= chunk;
            if left == 0 || started.elapsed() >= budget {
                break;
            }
        }
        match next {
            Some(next) => {
                self.next = next;
                false
            }
            None => {
                let mut rows = std::mem::take(&mut self.rows);
                match self.request.want {
                    Want::Rows { .. } => rows.sort_by(|a, b| {
                        (&a.key, a.size_ms, a.start_ms).cmp(&(&b.key, b.size_ms, b.start_ms))
                    }),
                    Want::Top { .. } => {
                        rows = std::mem::take(&mut self.top)
                            .into_sorted_vec()
                            .into_iter()
                            .map(|c| c.0)
                            .collect();
                    }
                }
                // The asker may have given up (its deadline passed): nothing to do then.
                let _ = self.request.reply.try_send(OpenReply {
                    rows,
                    truncated: self.truncated,
                });
                true
            }
        }
    }
}

/// The admin side: a bounded queue of requests into every shard, and a way to wake its
/// core.
#[derive(Clone)]
pub struct OpenQueries {
    senders: Vec<Sender<OpenRequest>>,
    wake: Arc<dyn Fn(usize) + Send + Sync>,
    /// The latest answers, newest last, at most [`OPEN_ANSWERS_CACHED_MAX`].
    answers: Arc<Mutex<VecDeque<Answer>>>,
}

/// Every shard's reply to one question, and when they were all in.
#[derive(Debug, Clone)]
struct Answer {
    filter: Filter,
    size_ms: Option<i64>,
    want: Want,
    at: Instant,
    replies: Arc<Vec<OpenReply>>,
}

/// Every shard's reply to a question, and how old they are.
#[derive(Debug, Clone)]
pub struct Replies {
    /// One reply per shard.
    pub replies: Arc<Vec<OpenReply>>,
    /// Time since the last shard replied (zero for a fresh answer).
    pub age: Duration,
}

impl std::fmt::Debug for OpenQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenQueries")
            .field("shards", &self.senders.len())
            .finish()
    }
}

impl OpenQueries {
    /// Queues for `shards` shards, `depth` requests each: the senders (admin side) and the
    /// receivers (one per core). `wake(shard)` rings a core awake.
    pub fn new(
        shards: usize,
        depth: usize,
        wake: Arc<dyn Fn(usize) + Send + Sync>,
    ) -> (OpenQueries, Vec<Receiver<OpenRequest>>) {
        let (senders, receivers) = (0..shards).map(|_| bounded(depth)).unzip();
        let answers = Arc::new(Mutex::new(VecDeque::new()));
        (
            OpenQueries {
                senders,
                wake,
                answers,
            },
            receivers,
        )
    }

    /// Every shard's reply to the question, from the answers kept when one to the same
    /// question is at most `max_age` old, else asked afresh (waiting at most `timeout` for
    /// every reply) and kept. Blocking: call it off the async runtime.
    pub fn ask(
        &self,
        filter: &Filter,
        size_ms: Option<i64>,
        want: Want,
        timeout: Duration,
        max_age: Duration,
    ) -> Result<Replies, OpenError> {
        let same = |a: &Answer| a.filter == *filter && a.size_ms == size_ms && a.want == want;
        if !max_age.is_zero() {
            let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(a) = answers.iter().rev().find(|a| same(a))
                && a.at.elapsed() <= max_age
            {
                return Ok(Replies {
                    replies: a.replies.clone(),
                    age: a.at.elapsed(),
                });
            }
        }
        let replies = Arc::new(self.ask_shards(filter, size_ms, want, timeout)?);
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.retain(|a| !same(a));
        if answers.len() >= OPEN_ANSWERS_CACHED_MAX {
            answers.pop_front();
        }
        answers.push_back(Answer {
            filter: filter.clone(),
            size_ms,
            want,
            at: Instant::now(),
            replies: replies.clone(),
        });
        Ok(Replies {
            replies,
            age: Duration::ZERO,
        })
    }

    /// Answers kept for reuse now.
    pub fn answers_kept(&self) -> usize {
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Asks every shard and waits (at most `timeout`) for every reply.
    fn ask_shards(
        &self,
        filter: &Filter,
        size_ms: Option<i64>,
        want: Want,
        timeout: Duration,
    ) -> Result<Vec<OpenReply>, OpenError> {
        let shards = self.senders.len();
        let (reply, replies) = bounded(shards);
        for (shard, sender) in self.senders.iter().enumerate() {
            let request = OpenRequest {
                filter: filter.clone(),
                size_ms,
                want,
                reply: reply.clone(),
            };
            match sender.try_send(request) {
                Ok(()) => (self.wake)(shard),
                // A shard already asked answers into a channel nobody reads: harmless.
                Err(TrySendError::Full(_)) => return Err(OpenError::Busy),
                Err(TrySendError::Disconnected(_)) => return Err(OpenError::Timeout),
            }
        }
        drop(reply);
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(shards);
        while out.len() < shards {
            match replies.recv_deadline(deadline) {
                Ok(r) => out.push(r),
                Err(_) => return Err(OpenError::Timeout),
            }
        }
        Ok(out)
    }
}
