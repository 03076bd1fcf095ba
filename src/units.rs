//! Units shared by the modules and the configuration: a leaf, so that both can use them
//! without importing each other.

#![forbid(unsafe_code)]

use std::fmt;

/// A duration in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// The duration as `i64` ms (durations are capped far below `i64::MAX` when parsed).
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }
}

impl fmt::Display for Millis {
    /// Shortest unit that divides the value: `10s`, `1m`, `250ms`, `1h`, `1d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, name) in [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ] {
            if ms != 0 && ms.is_multiple_of(unit) {
                return write!(f, "{}{}", ms / unit, name);
            }
        }
        write!(f, "{ms}ms")
    }
}
