//! A window's quantile sketch: a DDSketch with a small buffer of values in front of it.
//!
//! Adding a value to a DDSketch increments one of its bins, ~1–5 KiB of them per sketch for
//! values over a few decades. With many keys, a core's bins are megabytes, and the
//! increment is a cache miss taken once per event. The buffer turns that into one miss per
//! [`PENDING`] events: values wait in it (the line being written stays in cache, since a
//! shard writes only one line per live key) and go into the sketch together, where the
//! misses of independent increments overlap.
//!
//! The buffer changes no result: bin counts add, so the bins are those of adding each value
//! as it came, and every read (quantiles, merges, encoding) sees the buffered values. The
//! one exception is the order of the sketch's own sum, unused here, and, as with composed
//! windows, the moment a sketch at its bin limit collapses its lowest bins.

use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use super::{SKETCH_ALPHA, SKETCH_BINS_MAX};

/// Values a sketch buffers before adding them.
pub const PENDING: usize = 32;

/// A DDSketch and values not yet added to it.
#[derive(Clone)]
pub struct Sketch {
    /// Values in `pending`.
    len: u8,
    pending: [f64; PENDING],
    dd: DDSketch,
}

impl Sketch {
    /// An empty sketch of sluice's configuration.
    pub fn new() -> Box<Sketch> {
        Sketch::from_dd(DDSketch::new(SketchConfig::new(
            SKETCH_ALPHA,
            SKETCH_BINS_MAX,
            1e-9,
        )))
    }

    /// A sketch holding what `dd` holds.
    pub fn from_dd(dd: DDSketch) -> Box<Sketch> {
        Box::new(Sketch {
            len: 0,
            pending: [0.0; PENDING],
            dd,
        })
    }

    /// Adds `value`.
    #[inline]
    pub fn add(&mut self, value: f64) {
        debug_assert!((self.len as usize) < PENDING);
        self.pending[self.len as usize] = value;
        self.len += 1;
        if self.len as usize == PENDING {
            self.settle();
        }
    }

    /// Adds the buffered values to the DDSketch.
    pub fn settle(&mut self) {
        for &v in &self.pending[..self.len as usize] {
            self.dd.add(v);
        }
        self.len = 0;
    }

    /// Merges `other` in; both must have sluice's configuration.
    pub fn merge(&mut self, other: &mut Sketch) {
        other.settle();
        self.dd
            .merge(&other.dd)
            .expect("sketches of one configuration merge");
    }

    /// The DDSketch with every value in it: borrowed when nothing is buffered, else a copy.
    pub fn settled(&self) -> std::borrow::Cow<'_, DDSketch> {
        if self.len == 0 {
            std::borrow::Cow::Borrowed(&self.dd)
        } else {
            let mut copy = self.clone();
            copy.settle();
            std::borrow::Cow::Owned(copy.dd)
        }
    }

    /// Values added.
    pub fn count(&self) -> usize {
        self.dd.count() + self.len as usize
    }

    /// Bins in use (after settling).
    pub fn length(&self) -> usize {
        self.settled().length()
    }

    /// The `q` quantile (0..=1), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.settled().quantile(q).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_values_count_in_every_read() {
        let mut s = Sketch::new();
        let mut plain = DDSketch::new(SketchConfig::new(SKETCH_ALPHA, SKETCH_BINS_MAX, 1e-9));
        for i in 0..(PENDING * 3 + 5) {
            let v = (i * 37 % 101) as f64 + 0.5;
            s.add(v);
            plain.add(v);
            assert_eq!(s.count(), plain.count());
            assert_eq!(s.settled().to_java_bytes(), plain.to_java_bytes());
            assert_eq!(s.quantile(0.9), plain.quantile(0.9).unwrap());
        }
        let mut other = Sketch::new();
        other.add(1e6);
        s.merge(&mut other);
        plain.add(1e6);
        assert_eq!(s.count(), plain.count());
        assert_eq!(s.quantile(1.0), Some(1e6));
        s.settle();
        assert_eq!(s.settled().to_java_bytes(), plain.to_java_bytes());
    }
}
