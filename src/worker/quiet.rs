//! The quiet clock: how long a core has found nothing to read since it last routed an event.
//! The watermark advances by it while no data comes (see `Input::tick`), so it must count
//! idleness only: a turn that looked and found nothing adds its length, capped at
//! [`QUIET_TURN_MAX`]; a turn that read or could not read adds nothing. A process stopped
//! (SIGSTOP), descheduled or swapping in the middle of a turn thus adds at most the cap,
//! and reads its backlog (which resets the clock) before any window closes for idleness.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::limits::TICK_MS;

/// The most one loop turn adds to the quiet time: an idle turn waits at most a tick; a
/// longer one was a stop, a stall or a swap-in, not idleness.
pub(crate) const QUIET_TURN_MAX: Duration = Duration::from_millis(5 * TICK_MS);

/// Time spent finding nothing to read, accumulated over loop turns.
#[derive(Debug, Clone)]
pub(crate) struct QuietClock {
    quiet: Duration,
    turn_started: Instant,
    turn_quiet: bool,
}

impl QuietClock {
    /// A clock at zero whose first turn starts at `now`.
    pub(crate) fn new(now: Instant) -> QuietClock {
        QuietClock {
            quiet: Duration::ZERO,
            turn_started: now,
            turn_quiet: false,
        }
    }

    /// Marks whether the current turn looked for input and found none (set once the turn
    /// has read, before it waits for more).
    pub(crate) fn set_turn_quiet(&mut self, quiet: bool) {
        self.turn_quiet = quiet;
    }

    /// Ends the current turn at `now` (after its wait) and starts the next.
    pub(crate) fn end_turn(&mut self, now: Instant) {
        if std::mem::take(&mut self.turn_quiet) {
            let turn = now.saturating_duration_since(self.turn_started);
            self.quiet = self.quiet.saturating_add(turn.min(QUIET_TURN_MAX));
        }
        self.turn_started = now;
    }

    /// Events were routed: the core is not idle.
    pub(crate) fn reset(&mut self) {
        self.quiet = Duration::ZERO;
    }

    /// Quiet time so far.
    pub(crate) fn quiet(&self) -> Duration {
        self.quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn quiet_turns_add_their_length() {
        let t0 = Instant::now();
        let mut clock = QuietClock::new(t0);
        for i in 1..=10 {
            clock.set_turn_quiet(true);
            clock.end_turn(t0 + 20 * MS * i);
        }
        assert_eq!(clock.quiet(), 200 * MS);
    }

    #[test]
    fn turns_that_read_or_could_not_read_add_nothing() {
        let t0 = Instant::now();
        let mut clock = QuietClock::new(t0);
        clock.end_turn(t0 + 20 * MS);
        clock.set_turn_quiet(false);
        clock.end_turn(t0 + 40 * MS);
        assert_eq!(clock.quiet(), Duration::ZERO);
        // The flag lasts one turn only.
        clock.set_turn_quiet(true);
        clock.end_turn(t0 + 60 * MS);
        clock.end_turn(t0 + 80 * MS);
        assert_eq!(clock.quiet(), 20 * MS);
    }

    #[test]
    fn a_stop_of_20_s_inside_a_quiet_turn_adds_at_most_the_cap() {
        let t0 = Instant::now();
        let mut clock = QuietClock::new(t0);
        clock.set_turn_quiet(true);
        clock.end_turn(t0 + Duration::from_secs(20));
        assert_eq!(clock.quiet(), QUIET_TURN_MAX);
        assert!(QUIET_TURN_MAX < Duration::from_secs(1));
    }

    #[test]
    fn routing_an_event_resets_it_and_a_clock_that_goes_back_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut clock = QuietClock::new(t0);
        clock.set_turn_quiet(true);
        clock.end_turn(t0 + 50 * MS);
        clock.reset();
        assert_eq!(clock.quiet(), Duration::ZERO);
        clock.set_turn_quiet(true);
        clock.end_turn(t0);
        assert_eq!(clock.quiet(), Duration::ZERO);
    }
}
