//! A checkpoint's snapshot of a shard, taken in bounded steps while the core goes on.
//!
//! At barrier alignment [`Shard::begin_snapshot`] marks every key slot and every running
//! gauge pending and notes the frontier; nothing is copied. Each
//! [`Shard::snapshot_step`] then encodes pending slots, in slot order, until its deadline.
//! Meanwhile the core folds the events that follow the barrier: before anything changes a
//! slot that is still pending (an event folded into one of its windows, a window of it
//! closing, its reuse for a new key) or a pending gauge, that slot is copied as it stands
//! (and encoded by the next step, before any other) or that gauge recorded — copy-on-write,
//! a key at a time. A copy costs the event that triggers it a few allocations and memory
//! copies, several times less than encoding the slot there would. So the snapshot holds
//! exactly the state at the barrier, as if it had been taken at once, while no step holds
//! the core for longer than its budget, whatever the number of open windows.
//!
//! Invariants (tested in `window/tests.rs`):
//! 1. Every slot live at the barrier is encoded exactly once, with its windows as they
//!    were at the barrier; a slot made or reused after it is never encoded.
//! 2. The records encoded equal the windows open at the barrier (asserted in debug builds).
//! 3. Every gauge held at the barrier is recorded once, with its value at the barrier.

use std::time::Instant;

use serde::Serialize;

use super::{Agg, Shard, Slot, WindowSpec};

/// One bit per item (slot or gauge) whose barrier state is not encoded yet.
#[derive(Debug)]
struct Pending {
    bits: Vec<u64>,
    /// Every item below it has been taken.
    cursor: usize,
}

impl Pending {
    /// Items `0..len`, all pending.
    fn all(len: usize) -> Pending {
        let mut bits = vec![u64::MAX; len.div_ceil(64)];
        if !len.is_multiple_of(64)
            && let Some(last) = bits.last_mut()
        {
            *last = (1u64 << (len % 64)) - 1;
        }
        Pending { bits, cursor: 0 }
    }

    /// Takes item `i`: true when it was pending (it is not any more).
    #[inline]
    fn take(&mut self, i: usize) -> bool {
        let Some(word) = self.bits.get_mut(i / 64) else {
            return false;
        };
        let bit = 1u64 << (i % 64);
        let was = *word & bit != 0;
        *word &= !bit;
        was
    }

    /// Takes the lowest pending item, if any.
    fn next(&mut self) -> Option<usize> {
        let mut w = self.cursor / 64;
        while let Some(word) = self.bits.get_mut(w) {
            if *word != 0 {
                let bit = word.trailing_zeros() as usize;
                *word &= !(1u64 << bit);
                self.cursor = w * 64 + bit + 1;
                return Some(w * 64 + bit);
            }
            w += 1;
            self.cursor = w * 64;
        }
        None
    }
}

/// A snapshot being taken (see the module documentation).
#[derive(Debug)]
pub(super) struct Snapshotting {
    slots: Pending,
    gauges: Pending,
    /// Slots copied before they changed, to encode first.
    copied: Vec<Slot>,
    out: Vec<Vec<u8>>,
    window_count: u64,
    gauge_values: Vec<(String, f64)>,
    closed_through_ms: i64,
    open_windows: usize,
}

/// A shard's share of a checkpoint, as it stood at the barrier.
#[derive(Debug)]
pub struct Snapshot {
    /// Open windows: [`super::WindowRecord`]s encoded back to back (see
    /// [`super::decode_records`]), in chunks of about [`SNAPSHOT_CHUNK_BYTES`] that each
    /// hold whole records (a growing buffer would copy all of itself at once, on the core).
    pub windows: Vec<Vec<u8>>,
    /// Records in `windows`.
    pub window_count: u64,
    /// Running StatsD gauge values.
    pub gauges: Vec<(String, f64)>,
    /// The frontier: every window ending at or before it was closed and written.
    pub closed_through_ms: i64,
}

/// Slots encoded between two looks at the clock.
const SLOTS_PER_CLOCK_CHECK: usize = 8;

/// A snapshot's chunks are this big (a record that does not fit the rest of one starts the
/// next, so a chunk grows past it only for a record larger than its slack).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Room kept at the end of a chunk for the records of one slot.
const CHUNK_SLACK_BYTES: usize = 64 << 10;

/// Appends the open windows of `slot` to the last of the `chunks` (a new one when it is
/// nearly full); returns how many.
fn encode_slot(specs: &[WindowSpec], slot: &Slot, chunks: &mut Vec<Vec<u8>>) -> u64 {
    if slot.windows.is_empty() {
        return 0;
    }
    if chunks
        .last()
        .is_none_or(|c| c.len() + CHUNK_SLACK_BYTES > SNAPSHOT_CHUNK_BYTES)
    {
        chunks.push(Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
    }
    let out = chunks.last_mut().expect("just made sure of one");
    #[derive(Serialize)]
    struct RecordRef<'a> {
        key: &'a str,
        size_ms: i64,
        hop_ms: i64,
        start_ms: i64,
        agg: &'a Agg,
    }
    for w in &slot.windows {
        let spec = specs[w.spec_idx as usize];
        let r = RecordRef {
            key: &slot.key,
            size_ms: spec.size_ms,
            hop_ms: spec.hop_ms,
            start_ms: w.start_ms,
            agg: &w.agg,
        };
        // Encoding plain data into a Vec cannot fail.
        *out = postcard::to_extend(&r, std::mem::take(out)).expect("records encode");
    }
    slot.windows.len() as u64
}

impl Shard {
    /// Begins a snapshot of the shard as it stands (a checkpoint's barrier has aligned).
    /// Costs a bit per slot and gauge; the encoding happens in
    /// [`snapshot_step`](Self::snapshot_step)s and as the shard changes.
    ///
    /// # Panics
    /// If a snapshot is being taken already (finish it first).
    pub fn begin_snapshot(&mut self) {
        assert!(
            self.snapshotting.is_none(),
            "one snapshot at a time: finish the last one first"
        );
        debug_assert!(self.deferred.is_empty(), "not inside a batch");
        self.snapshotting = Some(Box::new(Snapshotting {
            slots: Pending::all(self.slots.len()),
            gauges: Pending::all(self.gauge_entries.len()),
            copied: Vec::new(),
            out: Vec::new(),
            window_count: 0,
            gauge_values: Vec::new(),
            closed_through_ms: self.closed_through_ms,
            open_windows: self.open_windows,
        }));
    }

    /// Whether a snapshot is being taken.
    pub fn snapshotting(&self) -> bool {
        self.snapshotting.is_some()
    }

    /// Encodes pending slots (then gauges) until `deadline` (looking at the clock every
    /// few slots). Returns true when nothing is left: [`finish_snapshot`](Self::finish_snapshot)
    /// then takes the snapshot without further work. True when none is being taken.
    pub fn snapshot_step(&mut self, deadline: Instant) -> bool {
        let Some(snap) = self.snapshotting.as_deref_mut() else {
            return true;
        };
        let mut since_check = 0;
        while let Some(slot) = snap.copied.pop() {
            snap.window_count += encode_slot(&self.windows, &slot, &mut snap.out);
            since_check += 1;
            if since_check == SLOTS_PER_CLOCK_CHECK {
                since_check = 0;
                if Instant::now() >= deadline {
                    return false;
                }
            }
        }
        while let Some(i) = snap.slots.next() {
            snap.window_count += encode_slot(&self.windows, &self.slots[i], &mut snap.out);
            since_check += 1;
            if since_check == SLOTS_PER_CLOCK_CHECK {
                since_check = 0;
                if Instant::now() >= deadline {
                    return false;
                }
            }
        }
        while let Some(i) = snap.gauges.next() {
            let (key, value) = &self.gauge_entries[i];
            snap.gauge_values.push((key.to_string(), *value));
            since_check += 1;
            if since_check == SLOTS_PER_CLOCK_CHECK * 16 {
                since_check = 0;
                if Instant::now() >= deadline {
                    return false;
                }
            }
        }
        true
    }

    /// Ends the snapshot being taken, encoding at once whatever is still pending, and
    /// returns it; `None` when none is being taken.
    pub fn finish_snapshot(&mut self) -> Option<Snapshot> {
        while !self.snapshot_step(far_future()) {}
        let snap = self.snapshotting.take()?;
        debug_assert_eq!(
            snap.window_count as usize, snap.open_windows,
            "every window open at the barrier is encoded once"
        );
        Some(Snapshot {
            windows: snap.out,
            window_count: snap.window_count,
            gauges: snap.gauge_values,
            closed_through_ms: snap.closed_through_ms,
        })
    }

    /// Appends every open window to `out`, encoded as a sequence of
    /// [`super::WindowRecord`]s (postcard), all at once. Returns the number of records.
    ///
    /// A sketch with buffered values is encoded from a settled copy of it: copying its
    /// bins (sequential reads) and adding the few values to the copy, in cache, stalls the
    /// core less than settling in place, where each add is a cache miss.
    ///
    /// # Panics
    /// If a stepped snapshot is being taken.
    pub fn snapshot_into(&mut self, out: &mut Vec<u8>) -> u64 {
        self.begin_snapshot();
        let snap = self.finish_snapshot().expect("just begun");
        out.extend(snap.windows.concat());
        snap.window_count
    }

    /// Before slot `slot` changes: copies it if the snapshot being taken still needs it.
    #[inline]
    pub(super) fn before_slot_changes(&mut self, slot: u32) {
        if let Some(snap) = self.snapshotting.as_deref_mut()
            && snap.slots.take(slot as usize)
        {
            let s = &self.slots[slot as usize];
            if !s.windows.is_empty() {
                snap.copied.push(s.clone());
            }
        }
    }

    /// Before gauge `i` changes: records it if the snapshot being taken still needs it.
    #[inline]
    pub(super) fn before_gauge_changes(&mut self, i: usize) {
        if let Some(snap) = self.snapshotting.as_deref_mut()
            && snap.gauges.take(i)
        {
            let (key, value) = &self.gauge_entries[i];
            snap.gauge_values.push((key.to_string(), *value));
        }
    }
}

/// A deadline never reached.
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::Pending;

    #[test]
    fn pending_takes_each_item_once_in_order() {
        for len in [0, 1, 63, 64, 65, 130] {
            let mut p = Pending::all(len);
            assert!(!p.take(len), "past the end is never pending");
            if len > 3 {
                assert!(p.take(2));
                assert!(!p.take(2), "taken once");
            }
            let rest: Vec<usize> = std::iter::from_fn(|| p.next()).collect();
            let want: Vec<usize> = (0..len).filter(|&i| len <= 3 || i != 2).collect();
            assert_eq!(rest, want, "len {len}");
            assert_eq!(p.next(), None);
        }
    }
}
