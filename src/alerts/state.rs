//! The state machine of one (rule, key): pure functions of the state and a closed window (or
//! the frontier), so the owner shard, replay and the tests all step it the same way.
//!
//! ```text
//!  threshold:  inactive ──breach──▶ pending ──`for` breaching windows──▶ firing
//!                 ▲                    │ a window that does not breach       │
//!                 └──── (inactive) ────┘                                     │
//!                 └──── (resolved) ◀── `for` windows at/below `clear` ◀──────┘
//!  absent:     inactive ──no events for `absent` (frontier past it)──▶ firing
//!                 ▲                                                           │
//!                 └──────────── (resolved) ◀── a window with events ◀─────────┘
//! ```
//!
//! Windows are consecutive when each starts one hop after the one before. A window the key
//! had no events in never closes, so it is not evaluated: it breaks a pending streak, and it
//! counts as a clearing window for a firing alert; once `for` such windows have passed with no
//! events at all, a firing alert resolves (the key went away, as Prometheus resolves an alert
//! whose series is gone).

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Where a (rule, key) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing to report (an absent rule still watches the key).
    Inactive,
    /// Breaching, not yet for `for` windows.
    Pending,
    /// Firing.
    Firing,
}

/// What a step did, when it changed the phase: the row written for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Inactive → pending.
    Pending,
    /// Pending → inactive (the breach did not last `for` windows).
    Inactive,
    /// → firing.
    Firing,
    /// Firing → inactive.
    Resolved,
}

impl Change {
    /// The `state` of its row.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Pending => "pending",
            Change::Inactive => "inactive",
            Change::Firing => "firing",
            Change::Resolved => "resolved",
        }
    }
}

/// The state of one (rule, key); in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The phase.
    pub phase: Phase,
    /// Consecutive breaching windows (pending) or clearing windows (firing).
    pub streak: u32,
    /// Start of the last window evaluated (`i64::MIN`: none yet).
    pub last_start_ms: i64,
    /// When the pending or firing phase began (the end of the window that began it; for an
    /// absent rule, the deadline that passed), ms since the epoch.
    pub since_ms: i64,
    /// Latest event time seen for the key (absent rules).
    pub last_seen_ms: i64,
    /// The value of the last window evaluated.
    pub value: f64,
}

impl State {
    /// A state that has seen nothing.
    pub fn new() -> State {
        State {
            phase: Phase::Inactive,
            streak: 0,
            last_start_ms: i64::MIN,
            since_ms: 0,
            last_seen_ms: i64::MIN,
            value: 0.0,
        }
    }

    /// True when the state says nothing a fresh one would not (a threshold rule drops it).
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Inactive
    }
}

impl Default for State {
    fn default() -> State {
        State::new()
    }
}

/// A threshold's direction and bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// True: breach above `threshold`; false: below.
    pub above: bool,
    /// The threshold (strictly beyond it breaches).
    pub threshold: f64,
    /// At or beyond this (toward normal) a window clears.
    pub clear: f64,
    /// Consecutive windows to fire and to resolve.
    pub for_windows: u32,
}

impl Threshold {
    fn breaches(&self, v: f64) -> bool {
        if self.above {
            v > self.threshold
        } else {
            v < self.threshold
        }
    }

    fn clears(&self, v: f64) -> bool {
        if self.above {
            v <= self.clear
        } else {
            v >= self.clear
        }
    }
}

/// One closed window of the key, as a threshold rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Its start.
    pub start_ms: i64,
    /// Its end.
    pub end_ms: i64,
    /// The rule's window hop (consecutive windows start this far apart).
    pub hop_ms: i64,
    /// The rule's value of it.
    pub value: f64,
}

/// Steps a threshold rule's state by one closed window of its key.
pub fn step_threshold(s: &mut State, t: &Threshold, w: Window) -> Option<Change> {
    let missing = if s.last_start_ms == i64::MIN || w.start_ms <= s.last_start_ms {
        0
    } else {
        ((w.start_ms - s.last_start_ms) / w.hop_ms.max(1) - 1).max(0)
    };
    s.last_start_ms = w.start_ms;
    s.value = w.value;
    let breach = t.breaches(w.value);
    match s.phase {
        Phase::Inactive | Phase::Pending => {
            if missing > 0 {
                s.streak = 0;
            }
            if !breach {
                let was = s.phase;
                s.phase = Phase::Inactive;
                s.streak = 0;
                return (was == Phase::Pending).then_some(Change::Inactive);
            }
            s.streak = s.streak.saturating_add(1);
            if s.phase == Phase::Inactive || missing > 0 {
                s.since_ms = w.end_ms;
            }
            if s.streak >= t.for_windows {
                s.phase = Phase::Firing;
                s.streak = 0;
                s.since_ms = w.end_ms;
                return Some(Change::Firing);
            }
            let was = s.phase;
            s.phase = Phase::Pending;
            (was == Phase::Inactive).then_some(Change::Pending)
        }
        Phase::Firing => {
            s.streak = s
                .streak
                .saturating_add(u32::try_from(missing).unwrap_or(u32::MAX));
            if t.clears(w.value) {
                s.streak = s.streak.saturating_add(1);
            } else {
                s.streak = 0;
            }
            if s.streak >= t.for_windows {
                *s = State {
                    last_start_ms: s.last_start_ms,
                    value: s.value,
                    since_ms: s.since_ms,
                    ..State::new()
                };
                return Some(Change::Resolved);
            }
            None
        }
    }
}

/// For a pending or firing threshold alert: the frontier at which windows with no events
/// have ended it (one breaks a pending streak; `for` in all resolve a firing alert), as the
/// key's next window with events would have. `None` when inactive.
pub fn stale_at(s: &State, t: &Threshold, size_ms: i64, hop_ms: i64) -> Option<i64> {
    if s.last_start_ms == i64::MIN {
        return None;
    }
    let left = match s.phase {
        Phase::Inactive => return None,
        Phase::Pending => 1,
        Phase::Firing => i64::from(t.for_windows.saturating_sub(s.streak)),
    };
    Some(
        s.last_start_ms
            .saturating_add(size_ms)
            .saturating_add(left.saturating_mul(hop_ms)),
    )
}

/// Ends a pending or firing threshold alert whose key sent nothing for long enough (see
/// [`stale_at`]), once the frontier `through_ms` has passed that. Returns when, and the
/// change.
pub fn step_stale(
    s: &mut State,
    t: &Threshold,
    size_ms: i64,
    hop_ms: i64,
    through_ms: i64,
) -> Option<(i64, Change)> {
    let at = stale_at(s, t, size_ms, hop_ms)?;
    if at > through_ms {
        return None;
    }
    let change = match s.phase {
        Phase::Firing => Change::Resolved,
        _ => Change::Inactive,
    };
    *s = State {
        last_start_ms: s.last_start_ms,
        value: s.value,
        since_ms: s.since_ms,
        ..State::new()
    };
    Some((at, change))
}

/// An absent rule's deadline: the first window end (of size `size_ms`) at which the key has
/// been silent for `absent_ms` (`None` once firing, or before any event).
pub fn absent_deadline(s: &State, absent_ms: i64, size_ms: i64) -> Option<i64> {
    if s.phase == Phase::Firing || s.last_seen_ms == i64::MIN {
        return None;
    }
    let due = s.last_seen_ms.saturating_add(absent_ms);
    let size = size_ms.max(1);
    Some(
        due.div_euclid(size)
            .saturating_add(i64::from(due.rem_euclid(size) != 0))
            * size,
    )
}

/// An absent rule saw a closed window of its key with events, the latest at `seen_ms`.
pub fn step_seen(s: &mut State, seen_ms: i64, end_ms: i64) -> Option<Change> {
    s.last_seen_ms = s.last_seen_ms.max(seen_ms);
    s.last_start_ms = end_ms;
    if s.phase == Phase::Firing {
        s.phase = Phase::Inactive;
        return Some(Change::Resolved);
    }
    None
}

/// An absent rule at frontier `through_ms`: fires at its deadline once the frontier has
/// passed it. Returns the deadline when it fired.
pub fn step_absent(s: &mut State, absent_ms: i64, size_ms: i64, through_ms: i64) -> Option<i64> {
    let at = absent_deadline(s, absent_ms, size_ms)?;
    if at > through_ms {
        return None;
    }
    s.phase = Phase::Firing;
    s.since_ms = at;
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn above(threshold: f64, clear: f64, for_windows: u32) -> Threshold {
        Threshold {
            above: true,
            threshold,
            clear,
            for_windows,
        }
    }

    /// Steps one window per value, 10 s apart; returns the changes with their window index.
    fn run(t: &Threshold, values: &[f64]) -> Vec<(usize, Change)> {
        let mut s = State::new();
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let start = i as i64 * 10_000;
            let w = Window {
                start_ms: start,
                end_ms: start + 10_000,
                hop_ms: 10_000,
                value: *v,
            };
            if let Some(c) = step_threshold(&mut s, t, w) {
                out.push((i, c));
            }
        }
        out
    }

    #[test]
    fn fires_after_for_consecutive_breaching_windows_and_resolves_after_for_clear_ones() {
        let t = above(100.0, 80.0, 3);
        let got = run(
            &t,
            &[50.0, 120.0, 130.0, 140.0, 90.0, 70.0, 70.0, 70.0, 50.0],
        );
        assert_eq!(
            got,
            vec![
                (1, Change::Pending),
                (3, Change::Firing),
                (7, Change::Resolved)
            ]
        );
    }

    #[test]
    fn a_value_flapping_around_the_threshold_never_fires_with_for_3() {
        let t = above(100.0, 100.0, 3);
        let values: Vec<f64> = (0..200)
            .map(|i| if i % 2 == 0 { 101.0 } else { 99.0 })
            .collect();
        let got = run(&t, &values);
        assert!(got.iter().all(|(_, c)| *c != Change::Firing), "{got:?}");
        // Two breaching windows in a row, then a dip: still never fires.
        let values: Vec<f64> = (0..200)
            .map(|i| if i % 3 == 2 { 99.0 } else { 150.0 })
            .collect();
        assert!(run(&t, &values).iter().all(|(_, c)| *c != Change::Firing));
    }

    #[test]
    fn hysteresis_keeps_firing_between_clear_and_threshold() {
        let t = above(100.0, 80.0, 2);
        // Fires at window 1; 90 is below the threshold but above `clear`: stays firing; two
        // windows at 80 (at `clear`) resolve it.
        let got = run(
            &t,
            &[150.0, 150.0, 90.0, 90.0, 90.0, 80.0, 85.0, 80.0, 80.0],
        );
        assert_eq!(
            got,
            vec![
                (0, Change::Pending),
                (1, Change::Firing),
                (8, Change::Resolved)
            ]
        );
    }

    #[test]
    fn for_1_fires_at_the_first_breach_without_pending() {
        let t = above(10.0, 10.0, 1);
        assert_eq!(
            run(&t, &[11.0, 5.0]),
            vec![(0, Change::Firing), (1, Change::Resolved)]
        );
    }

    #[test]
    fn below_rules_breach_under_the_threshold() {
        let t = Threshold {
            above: false,
            threshold: 5.0,
            clear: 8.0,
            for_windows: 1,
        };
        assert_eq!(
            run(&t, &[6.0, 4.0, 7.0, 8.0]),
            vec![(1, Change::Firing), (3, Change::Resolved)]
        );
    }

    #[test]
    fn a_missing_window_breaks_a_pending_streak() {
        let t = above(10.0, 10.0, 2);
        let mut s = State::new();
        let w = |i: i64, v| Window {
            start_ms: i * 10,
            end_ms: i * 10 + 10,
            hop_ms: 10,
            value: v,
        };
        assert_eq!(
            step_threshold(&mut s, &t, w(0, 20.0)),
            Some(Change::Pending)
        );
        // Window 1 had no events.
        assert_eq!(step_threshold(&mut s, &t, w(2, 20.0)), None);
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(s.streak, 1);
        assert_eq!(step_threshold(&mut s, &t, w(3, 20.0)), Some(Change::Firing));
        assert_eq!(s.since_ms, 40);
        // A key that goes away resolves once `for` empty windows have passed.
        assert_eq!(stale_at(&s, &t, 10, 10), Some(60));
        assert_eq!(step_stale(&mut s, &t, 10, 10, 59), None);
        assert_eq!(
            step_stale(&mut s, &t, 10, 10, 60),
            Some((60, Change::Resolved))
        );
        assert_eq!(s.phase, Phase::Inactive);
    }

    #[test]
    fn absent_fires_at_the_first_window_end_past_the_silence_and_resolves_on_data() {
        let mut s = State::new();
        assert_eq!(absent_deadline(&s, 60_000, 10_000), None);
        assert_eq!(step_seen(&mut s, 5_000, 10_000), None);
        assert_eq!(absent_deadline(&s, 60_000, 10_000), Some(70_000));
        assert_eq!(step_absent(&mut s, 60_000, 10_000, 69_999), None);
        assert_eq!(step_absent(&mut s, 60_000, 10_000, 90_000), Some(70_000));
        assert_eq!(s.phase, Phase::Firing);
        assert_eq!(s.since_ms, 70_000);
        // Fires once.
        assert_eq!(step_absent(&mut s, 60_000, 10_000, 200_000), None);
        assert_eq!(step_seen(&mut s, 95_000, 100_000), Some(Change::Resolved));
        assert_eq!(absent_deadline(&s, 60_000, 10_000), Some(160_000));
    }
}
