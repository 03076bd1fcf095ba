//! Connection limits of one core, as pure state the backend drives: idle timeouts, making
//! room at `max_connections`, the process-wide descriptor budget, and the back-off of a
//! listener whose `accept` fails.
//!
//! Time is the backend's turn clock (read once per poll), so the data path pays one store per
//! read for idleness and no syscall or allocation per event.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ConnId;
use crate::limits::{ACCEPT_BACKOFF_MS_MAX, ACCEPT_BACKOFF_MS_MIN, FDS_RESERVED};

/// What the idle rules need to know of one open connection.
#[derive(Debug, Clone, Copy)]
pub struct IdleView {
    /// The connection's listener.
    pub listener: u16,
    /// When bytes were last read from it (or it was opened).
    pub last_read: Instant,
    /// Readiness is known and not yet read (for example while the core is paused by
    /// backpressure): the peer has sent something, so it is not idle, however old
    /// `last_read` is.
    pub pending: bool,
}

impl IdleView {
    /// How long it has been idle at `now` (zero while input is pending).
    pub fn idle(&self, now: Instant) -> Duration {
        if self.pending {
            Duration::ZERO
        } else {
            now.saturating_duration_since(self.last_read)
        }
    }
}

/// The connection that has been idle longest, at least `min_idle`, among those of `listener`
/// (or of any listener when `None`): the one a new connection may displace.
pub fn longest_idle(
    conns: impl Iterator<Item = (ConnId, IdleView)>,
    listener: Option<u16>,
    now: Instant,
    min_idle: Duration,
) -> Option<ConnId> {
    conns
        .filter(|(_, v)| listener.is_none_or(|l| v.listener == l))
        .map(|(c, v)| (v.idle(now), c))
        .filter(|(idle, _)| *idle >= min_idle)
        // Ties go to the lowest id, so the choice does not depend on iteration details.
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, c)| c)
}

/// Is a connection past its listener's idle timeout (`None`: it has none)?
pub fn timed_out(view: &IdleView, now: Instant, timeout: Option<Duration>) -> bool {
    timeout.is_some_and(|t| view.idle(now) >= t)
}

/// Decides when the next idle sweep is due.
#[derive(Debug, Clone, Copy)]
pub struct SweepClock {
    next: Instant,
    every: Duration,
}

impl SweepClock {
    /// A sweep every `every`, the first one `every` after `now`.
    pub fn new(now: Instant, every: Duration) -> SweepClock {
        SweepClock {
            next: now + every,
            every,
        }
    }

    /// True (and the next sweep scheduled) when a sweep is due at `now`.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }

    /// Makes the next sweep due at once (the last one stopped at its budget).
    pub fn again(&mut self, now: Instant) {
        self.next = now;
    }
}

/// Descriptors TCP connections may hold, shared by every core.
///
/// Why a budget rather than reacting to `EMFILE` alone: when `accept` hits the descriptor
/// limit, so does everything else in the process — a log segment roll, a checkpoint's
/// temporary file, the admin server's next connection — and those failures cost far more
/// than a refused connection. So connections stop at the limit less a reserve
/// ([`FDS_RESERVED`], at most a quarter of the limit), counted here with one atomic add per
/// connection opened or closed (not per event). A spare descriptor closed to accept and
/// refuse one connection at the limit would also work, but it races with the other threads
/// for the freed slot; the reserve does not. `EMFILE` still backs off ([`AcceptBackoff`])
/// when something else takes the descriptors.
#[derive(Debug)]
pub struct FdBudget {
    open: AtomicU64,
    max: u64,
}

impl FdBudget {
    /// A budget for a process whose `RLIMIT_NOFILE` soft limit is `limit` (`None`: unlimited).
    pub fn for_limit(limit: Option<u64>) -> FdBudget {
        let max = limit.map_or(u64::MAX, |l| l - FDS_RESERVED.min(l / 4));
        FdBudget {
            open: AtomicU64::new(0),
            max,
        }
    }

    /// Descriptors connections may hold.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Connection descriptors held now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// True when connections hold more descriptors than the budget (checked after counting a
    /// new one): it may be kept only if another is closed.
    pub fn over(&self) -> bool {
        self.open() > self.max
    }

    /// Counts a connection descriptor taken (accepted).
    pub fn take(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection descriptor given back (closed).
    pub fn give_back(&self) {
        let before = self.open.fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "a connection descriptor given back twice");
    }
}

/// What an `accept` failure means for its listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptFailure {
    /// The peer went away before it was accepted, or a signal came: try the next one now.
    Retry,
    /// Out of descriptors, buffers or memory (or an error not known to pass): stop accepting
    /// on this listener for a while.
    BackOff,
}

/// Classifies an `accept` error.
pub fn accept_failure(e: &std::io::Error) -> AcceptFailure {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted => {
            AcceptFailure::Retry
        }
        _ => AcceptFailure::BackOff,
    }
}

/// The back-off of one listener while `accept` fails: 10 ms doubling to 1 s, so a listener
/// at the descriptor limit costs a few `accept` calls a second instead of a spinning core.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptBackoff {
    /// The current pause, while an episode lasts.
    delay: Option<Duration>,
    /// When the listener may accept again.
    until: Option<Instant>,
}

impl AcceptBackoff {
    /// Records a failure at `now`; returns when to try again and whether this failure began
    /// an episode (to log once).
    pub fn failed(&mut self, now: Instant) -> (Instant, bool) {
        let min = Duration::from_millis(ACCEPT_BACKOFF_MS_MIN);
        let max = Duration::from_millis(ACCEPT_BACKOFF_MS_MAX);
        let (delay, began) = match self.delay {
            None => (min, true),
            Some(d) => ((d * 2).min(max), false),
        };
        self.delay = Some(delay);
        let until = now + delay;
        self.until = Some(until);
        (until, began)
    }

    /// Records an `accept` that worked (or found nothing waiting); returns whether this
    /// ended an episode.
    pub fn succeeded(&mut self) -> bool {
        self.until = None;
        self.delay.take().is_some()
    }

    /// While paused: when the listener may accept again.
    pub fn paused_until(&self) -> Option<Instant> {
        self.until
    }

    /// True while the listener must not accept at `now`.
    pub fn paused(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(listener: u16, last_read: Instant, pending: bool) -> IdleView {
        IdleView {
            listener,
            last_read,
            pending,
        }
    }

    #[test]
    fn the_longest_idle_connection_of_the_listener_is_displaced() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let conns = [
            (0, view(0, t0 + Duration::from_secs(5), false)),
            (1, view(0, t0 + Duration::from_secs(2), false)),
            (2, view(1, t0, false)),
            (3, view(0, t0 + Duration::from_secs(3), false)),
        ];
        let min = Duration::from_secs(1);
        assert_eq!(longest_idle(conns.into_iter(), Some(0), now, min), Some(1));
        assert_eq!(longest_idle(conns.into_iter(), Some(1), now, min), Some(2));
        assert_eq!(longest_idle(conns.into_iter(), None, now, min), Some(2));
        assert_eq!(longest_idle(conns.into_iter(), Some(2), now, min), None);
    }

    #[test]
    fn no_connection_is_displaced_before_it_has_been_idle_long_enough() {
        let t0 = Instant::now();
        let conns = [
            (0, view(0, t0, false)),
            (1, view(0, t0 + Duration::from_millis(500), false)),
        ];
        let min = Duration::from_secs(1);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(longest_idle(conns.into_iter(), Some(0), at(999), min), None);
        assert_eq!(
            longest_idle(conns.into_iter(), Some(0), at(1000), min),
            Some(0)
        );
        // A clock that went backwards (or a read in the same turn) is no idleness.
        assert_eq!(
            longest_idle(conns.into_iter(), None, t0, Duration::ZERO),
            Some(0)
        );
    }

    #[test]
    fn a_connection_with_unread_input_is_never_idle() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(60);
        // Paused by backpressure for a minute: the peer sent, the core did not read yet.
        let waiting = view(0, t0, true);
        assert_eq!(waiting.idle(now), Duration::ZERO);
        assert!(!timed_out(&waiting, now, Some(Duration::from_secs(2))));
        let conns = [
            (0, waiting),
            (1, view(0, t0 + Duration::from_secs(30), false)),
        ];
        assert_eq!(
            longest_idle(conns.into_iter(), Some(0), now, Duration::from_secs(1)),
            Some(1)
        );
    }

    #[test]
    fn timeouts_close_at_the_limit_and_zero_means_none() {
        let t0 = Instant::now();
        let v = view(0, t0, false);
        let t = Some(Duration::from_secs(2));
        assert!(!timed_out(&v, t0 + Duration::from_millis(1999), t));
        assert!(timed_out(&v, t0 + Duration::from_secs(2), t));
        assert!(!timed_out(&v, t0 + Duration::from_secs(86_400), None));
    }

    #[test]
    fn sweeps_come_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut clock = SweepClock::new(t0, Duration::from_secs(1));
        assert!(!clock.due(t0));
        assert!(!clock.due(t0 + Duration::from_millis(999)));
        assert!(clock.due(t0 + Duration::from_millis(1000)));
        assert!(!clock.due(t0 + Duration::from_millis(1500)));
        clock.again(t0 + Duration::from_millis(1500));
        assert!(clock.due(t0 + Duration::from_millis(1500)));
        assert!(!clock.due(t0 + Duration::from_millis(2000)));
        assert!(clock.due(t0 + Duration::from_millis(2500)));
    }

    #[test]
    fn backoff_doubles_from_10_ms_to_1_s_and_resets_after_an_accept() {
        let t0 = Instant::now();
        let mut b = AcceptBackoff::default();
        assert!(!b.paused(t0));
        let mut delays = Vec::new();
        let mut began = Vec::new();
        for _ in 0..10 {
            let (until, first) = b.failed(t0);
            delays.push(until.duration_since(t0).as_millis() as u64);
            began.push(first);
        }
        assert_eq!(
            delays,
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000],
            "doubling, capped"
        );
        assert_eq!(began.iter().filter(|b| **b).count(), 1, "one episode");
        assert!(b.paused(t0 + Duration::from_millis(999)));
        assert!(!b.paused(t0 + Duration::from_millis(1000)));
        assert!(b.succeeded(), "the episode ends");
        assert!(!b.succeeded(), "and only once");
        assert_eq!(b.paused_until(), None);
        let (until, first) = b.failed(t0);
        assert!(first, "a new episode");
        assert_eq!(until.duration_since(t0), Duration::from_millis(10));
    }

    #[test]
    fn accept_errors_that_pass_are_retried_and_the_rest_back_off() {
        use std::io::{Error, ErrorKind};
        let emfile = Error::from_raw_os_error(24);
        let enfile = Error::from_raw_os_error(23);
        let enobufs = Error::from_raw_os_error(105);
        let enomem = Error::from_raw_os_error(12);
        for e in [emfile, enfile, enobufs, enomem] {
            assert_eq!(accept_failure(&e), AcceptFailure::BackOff, "{e}");
        }
        let aborted = Error::from(ErrorKind::ConnectionAborted);
        assert_eq!(accept_failure(&aborted), AcceptFailure::Retry);
        let eintr = Error::from(ErrorKind::Interrupted);
        assert_eq!(accept_failure(&eintr), AcceptFailure::Retry);
    }

    #[test]
    fn the_budget_keeps_a_reserve_of_at_most_a_quarter_of_the_limit() {
        assert_eq!(FdBudget::for_limit(Some(1024)).max(), 1024 - 256);
        assert_eq!(
            FdBudget::for_limit(Some(65_536)).max(),
            65_536 - FDS_RESERVED
        );
        assert_eq!(FdBudget::for_limit(Some(100)).max(), 75);
        assert_eq!(FdBudget::for_limit(None).max(), u64::MAX);
        let b = FdBudget::for_limit(Some(8));
        for _ in 0..6 {
            b.take();
            assert!(!b.over());
        }
        b.take();
        assert!(b.over(), "a seventh is one too many");
        b.give_back();
        assert!(!b.over());
    }
}
