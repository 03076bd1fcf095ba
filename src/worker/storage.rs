//! What a core does when a write fails: a full disk, an unwritable directory, an I/O error
//! is backpressure, never loss.
//!
//! ```text
//!  append fails ─ the lines read and not in the log are held here, in order
//!  flush fails  ─ (log msync/fsync, or the aggregates file) remembered
//!       │
//!       ▼ the core stops reading its sockets (TCP senders block; UDP drops are counted by
//!       │ the kernel), /readyz says "storage", the cause is logged once
//!       ▼
//!  retry ─ after 10 ms, doubling to 1 s: the failed flushes first, then the held lines
//!       │   (appended as they would have been, ingest time kept)
//!       ▼
//!  resume ─ everything held is in the log: reading goes on, logged with the time it took
//! ```
//!
//! Held lines are bounded by what one turn reads ([`READ_BYTES_PER_TICK_MAX`]) plus one
//! connection's unframed tail: the core reads nothing more once a line is held.
//!
//! [`READ_BYTES_PER_TICK_MAX`]: crate::limits::READ_BYTES_PER_TICK_MAX

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::limits::{STORAGE_RETRY_MS_MAX, STORAGE_RETRY_MS_MIN};
use crate::metrics::{CoreMetrics, StorageOp};

/// Lines of one listener that were read but could not be appended yet.
#[derive(Debug)]
pub(super) struct Held {
    /// Listener index.
    pub(super) listener: u16,
    /// Ingest time they were read at.
    pub(super) ingest_ms: i64,
    /// The lines, each prefixed by its length (u32 little-endian), as a batch stores them.
    payload: Vec<u8>,
    /// Lines in `payload`.
    count: u32,
}

impl Held {
    /// Adds a line after the others.
    pub(super) fn push(&mut self, line: &[u8]) {
        self.payload
            .extend_from_slice(&(line.len() as u32).to_le_bytes());
        self.payload.extend_from_slice(line);
        self.count += 1;
    }

    /// The held lines, in order.
    pub(super) fn lines(&self) -> crate::log::Lines<'_> {
        crate::log::Lines::new(&self.payload)
    }
}

/// A core's storage state: held lines, failed flushes, and the retry schedule.
#[derive(Debug)]
pub(super) struct Storage {
    core: u16,
    held: VecDeque<Held>,
    held_lines: u64,
    /// A log flush failed: retried before anything else.
    pub(super) log_flush_failed: bool,
    /// The aggregates file could not take its rows.
    pub(super) output_failed: bool,
    /// When the current episode of failures began.
    failing_since: Option<Instant>,
    /// Failures in the current episode.
    episode_errors: u64,
    retry_at: Instant,
    backoff: Duration,
}

impl Storage {
    pub(super) fn new(core: u16) -> Storage {
        Storage {
            core,
            held: VecDeque::new(),
            held_lines: 0,
            log_flush_failed: false,
            output_failed: false,
            failing_since: None,
            episode_errors: 0,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(STORAGE_RETRY_MS_MIN),
        }
    }

    /// True while a write fails or lines are held: the core must not read its sockets.
    pub(super) fn failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// True when lines are held: new lines go behind them, not to the log.
    pub(super) fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether a retry is due at `now`.
    pub(super) fn retry_due(&self, now: Instant) -> bool {
        self.failing() && now >= self.retry_at
    }

    /// When the next retry is due, while failing.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.failing().then_some(self.retry_at)
    }

    /// Holds one line of `listener` read at `ingest_ms`, behind every line held before.
    pub(super) fn hold(&mut self, listener: u16, ingest_ms: i64, line: &[u8]) {
        let reuse = self
            .held
            .back()
            .is_some_and(|h| h.listener == listener && h.ingest_ms == ingest_ms);
        if !reuse {
            self.held.push_back(Held {
                listener,
                ingest_ms,
                payload: Vec::new(),
                count: 0,
            });
        }
        let h = self.held.back_mut().expect("a held batch was just ensured");
        h.push(line);
        self.held_lines += 1;
    }

    /// Takes the oldest held batch, to append it.
    pub(super) fn take_held(&mut self) -> Option<Held> {
        let h = self.held.pop_front()?;
        self.held_lines -= u64::from(h.count);
        Some(h)
    }

    /// Puts back, at the front, lines that could not be appended again (they came from the
    /// batch just taken, so the order is kept): call with the batches in reverse order.
    pub(super) fn put_back_front(&mut self, held: Held) {
        if held.count == 0 {
            return;
        }
        self.held_lines += u64::from(held.count);
        self.held.push_front(held);
    }

    /// An empty held batch for `listener`, to fill with lines that must go back to the
    /// front (see [`put_back_front`](Self::put_back_front)).
    pub(super) fn empty_held(listener: u16, ingest_ms: i64) -> Held {
        Held {
            listener,
            ingest_ms,
            payload: Vec::new(),
            count: 0,
        }
    }

    /// Records a failed write of kind `op`: the first of an episode is logged with its
    /// cause, every one is counted, and the next retry waits longer.
    pub(super) fn failed(
        &mut self,
        op: StorageOp,
        error: &dyn std::fmt::Display,
        metrics: &CoreMetrics,
    ) {
        let now = Instant::now();
        metrics.storage_errors_total[op as usize].add(1);
        metrics.storage_failing.set(1);
        self.episode_errors += 1;
        if self.failing_since.is_none() {
            self.failing_since = Some(now);
            self.backoff = Duration::from_millis(STORAGE_RETRY_MS_MIN);
            tracing::error!(
                core = self.core,
                op = op.as_str(),
                %error,
                "write failed; holding input (senders wait) and retrying until it succeeds"
            );
        } else {
            self.backoff = (self.backoff * 2).min(Duration::from_millis(STORAGE_RETRY_MS_MAX));
        }
        self.retry_at = now + self.backoff;
        metrics.held_lines.set(self.held_lines as i64);
    }

    /// Ends an episode once every held line is in the log and no flush is failing.
    pub(super) fn maybe_recovered(&mut self, metrics: &CoreMetrics) {
        metrics.held_lines.set(self.held_lines as i64);
        if self.holding() || self.log_flush_failed || self.output_failed {
            return;
        }
        let Some(since) = self.failing_since.take() else {
            return;
        };
        let blocked = since.elapsed();
        metrics
            .storage_blocked_ns_total
            .add(blocked.as_nanos() as u64);
        metrics.storage_failing.set(0);
        tracing::info!(
            core = self.core,
            blocked_ms = blocked.as_millis() as u64,
            failed_writes = self.episode_errors,
            "writes succeed again; reading resumes"
        );
        self.episode_errors = 0;
        self.backoff = Duration::from_millis(STORAGE_RETRY_MS_MIN);
    }

    /// Lines held now.
    pub(super) fn held_lines(&self) -> u64 {
        self.held_lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CoreMetrics;

    #[test]
    fn held_lines_keep_their_order_across_listeners_and_put_backs() {
        let mut s = Storage::new(0);
        let m = CoreMetrics::new(2);
        s.hold(0, 5, b"a");
        s.hold(0, 5, b"b");
        s.hold(1, 5, b"c");
        s.hold(0, 6, b"d");
        assert_eq!(s.held_lines(), 4);
        let first = s.take_held().unwrap();
        assert_eq!(first.lines().collect::<Vec<_>>(), [b"a", b"b"]);
        let mut back = Storage::empty_held(first.listener, first.ingest_ms);
        for l in first.lines().skip(1) {
            back.push(l);
        }
        s.put_back_front(back);
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| s.take_held())
            .flat_map(|h| h.lines().map(<[u8]>::to_vec).collect::<Vec<_>>())
            .collect();
        assert_eq!(order, [b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        s.maybe_recovered(&m);
        assert!(!s.failing());
    }

    #[test]
    fn an_episode_backs_off_to_its_bound_and_ends_only_when_nothing_is_held() {
        let mut s = Storage::new(0);
        let m = CoreMetrics::new(1);
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        s.hold(0, 1, b"x");
        for _ in 0..20 {
            s.failed(StorageOp::LogAppend, &e, &m);
        }
        assert!(s.failing());
        assert_eq!(s.backoff, Duration::from_millis(STORAGE_RETRY_MS_MAX));
        assert_eq!(m.storage_failing.get(), 1);
        assert_eq!(
            m.storage_errors_total[StorageOp::LogAppend as usize].get(),
            20
        );
        s.maybe_recovered(&m);
        assert!(s.failing(), "a held line keeps the episode open");
        let _ = s.take_held();
        s.output_failed = true;
        s.maybe_recovered(&m);
        assert!(s.failing(), "a failed aggregates write keeps it open");
        s.output_failed = false;
        s.maybe_recovered(&m);
        assert!(!s.failing());
        assert_eq!(m.storage_failing.get(), 0);
        assert_eq!(s.backoff, Duration::from_millis(STORAGE_RETRY_MS_MIN));
    }
}
