//! Routing: every event goes to the core that owns its key, `xxh3_64(key) % cores`.
//!
//! Between every ordered pair of cores (including a core and itself) there is one bounded
//! queue of [`Msg`]s and one free list that returns emptied [`EventBatch`]es for reuse, so the
//! steady state allocates nothing. A core appends events to a per-destination batch; a full
//! batch (or the end of a read) is sent with `try_send`. When a queue is full the message waits
//! in that destination's pending list and the core stops reading its TCP sockets until every
//! pending list is empty again: backpressure, never loss and never an unbounded buffer (a
//! pending list holds at most the events of one read chunk plus control messages).
//!
//! A batch carries the moment its events' lines were read ([`EventBatch::read_at`], set by
//! [`Router::set_read_at`] before they are routed), so the owner can record the ingest →
//! fold latency once per batch.
//!
//! Order: each queue is FIFO, so a checkpoint barrier sent behind events arrives behind them
//! (the alignment that `checkpoint` relies on), and a watermark sent after events applies
//! after them.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::limits::{QUEUE_BATCHES_MAX, ROUTE_BATCH_EVENTS_MAX};
use crate::parse::{Event, Kind};

/// Index of a core (and of its log partition and its shard).
pub type CoreId = u16;

/// The owner core of a key.
#[inline]
pub fn owner(key: &[u8], cores: usize) -> CoreId {
    debug_assert!(cores > 0);
    (xxhash_rust::xxh3::xxh3_64(key) % cores as u64) as CoreId
}

/// One routed event; its key is in the batch's key arena.
#[derive(Debug, Clone, Copy)]
pub struct RoutedEvent {
    key_end: u32,
    /// Value.
    pub value: f64,
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    /// Meaning of the value.
    pub kind: Kind,
    /// Hash of the event's experiment unit (never 0), or 0 for none.
    pub unit: u64,
}

/// Events from one source core for one owner core. Keys live in one arena.
#[derive(Debug, Default)]
pub struct EventBatch {
    keys: Vec<u8>,
    events: Vec<RoutedEvent>,
    read_at: Option<Instant>,
}

impl EventBatch {
    /// An empty batch with room for a full batch.
    pub fn with_capacity() -> Self {
        EventBatch {
            keys: Vec::with_capacity(ROUTE_BATCH_EVENTS_MAX * 32),
            events: Vec::with_capacity(ROUTE_BATCH_EVENTS_MAX),
            read_at: None,
        }
    }

    /// When the lines of this batch's events were read (`None` if the router was never
    /// told: tests, benches).
    pub fn read_at(&self) -> Option<Instant> {
        self.read_at
    }

    /// Adds an event (copies its key), of experiment unit hash `unit` (0: none).
    #[inline]
    pub fn push(&mut self, event: &Event<'_>, unit: u64) {
        self.keys.extend_from_slice(event.key);
        self.events.push(RoutedEvent {
            key_end: self.keys.len() as u32,
            value: event.value,
            time_ms: event.time_ms,
            kind: event.kind,
            unit,
        });
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when it holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Empties the batch, keeping its capacity.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.events.clear();
        self.read_at = None;
    }

    /// The events with their keys.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &RoutedEvent)> {
        let mut start = 0usize;
        self.events.iter().map(move |e| {
            let end = e.key_end as usize;
            let key = &self.keys[start..end];
            start = end;
            (key, e)
        })
    }
}

/// A message on a queue between two cores.
#[derive(Debug)]
pub enum Msg {
    /// Events for the receiving core's shard.
    Events(EventBatch),
    /// The sending core's watermark (event time, ms), and whether the core is idle (has seen
    /// no event for a while: an idle source does not hold back the combined watermark).
    Watermark {
        /// Watermark in ms since the epoch.
        ms: i64,
        /// True while the source is idle.
        idle: bool,
    },
    /// Checkpoint barrier of this epoch: every message before it belongs to the epoch.
    Barrier(u64),
}

/// Wakes a core that may be sleeping in its poll.
pub trait Wake: Send + Sync {
    /// Wakes the core.
    fn wake(&self);
}

/// The shared parts that let a sender wake a sleeping receiver.
#[derive(Clone)]
pub struct Doorbell {
    /// Set by the receiver just before it sleeps; cleared by whoever wakes it.
    pub sleeping: Arc<AtomicBool>,
    /// Wakes the receiver's poll.
    pub waker: Arc<dyn Wake>,
}

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell")
            .field("sleeping", &self.sleeping)
            .finish()
    }
}

impl Doorbell {
    /// Rings if the receiver sleeps (one syscall per sleep, not per message).
    #[inline]
    pub fn ring(&self) {
        // Pairs with the fence in the receiver's sleep: either the receiver sees the message
        // just queued, or this load sees it asleep. Without both fences the store of one side
        // may pass the load of the other (store→load reordering, allowed even on x86) and the
        // wake is lost until the receiver's next tick.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Acquire) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

/// The sending end from one core to one destination.
#[derive(Debug)]
struct Outbound {
    tx: Sender<Msg>,
    free: Receiver<EventBatch>,
    building: EventBatch,
    pending: VecDeque<Msg>,
    doorbell: Doorbell,
}

/// The receiving end at one core from one source.
#[derive(Debug)]
pub struct Inbound {
    /// Messages from the source.
    pub rx: Receiver<Msg>,
    /// Where emptied batches go back to the source.
    pub free: Sender<EventBatch>,
}

/// A core's sending side: one outbound queue per destination core.
#[derive(Debug)]
pub struct Router {
    cores: usize,
    out: Vec<Outbound>,
    /// When the lines being routed now were read: stamped on each batch as it is sent.
    read_at: Option<Instant>,
}

/// Every queue of an instance, before they are handed to the cores.
#[derive(Debug)]
pub struct Mesh {
    /// `routers[c]`: what core `c` sends with.
    pub routers: Vec<Router>,
    /// `inbounds[c][s]`: what core `c` receives from core `s`.
    pub inbounds: Vec<Vec<Inbound>>,
}

/// Builds the queues between `doorbells.len()` cores.
pub fn mesh(doorbells: &[Doorbell]) -> Mesh {
    let cores = doorbells.len();
    let mut routers: Vec<Router> = (0..cores)
        .map(|_| Router {
            cores,
            out: Vec::new(),
            read_at: None,
        })
        .collect();
    let mut inbounds: Vec<Vec<Inbound>> = (0..cores).map(|_| Vec::new()).collect();
    for (dst, inbound) in inbounds.iter_mut().enumerate() {
        for router in routers.iter_mut() {
            let (tx, rx) = bounded(QUEUE_BATCHES_MAX);
            // Room for every batch that can be in flight, so returning one never blocks.
            let (free_tx, free_rx) = bounded(QUEUE_BATCHES_MAX + 4);
            router.out.push(Outbound {
                tx,
                free: free_rx,
                building: EventBatch::with_capacity(),
                pending: VecDeque::new(),
                doorbell: doorbells[dst].clone(),
            });
            inbound.push(Inbound { rx, free: free_tx });
        }
    }
    Mesh { routers, inbounds }
}

impl Router {
    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Notes when the lines whose events are routed next were read (once per read, not per
    /// event): every batch sent from now on carries it. Call [`flush`](Self::flush) first
    /// if events of an earlier read may still be in partly filled batches.
    pub fn set_read_at(&mut self, at: Instant) {
        self.read_at = Some(at);
    }

    /// Appends an event to its owner's batch; a full batch is sent (or left pending).
    #[inline]
    pub fn push(&mut self, event: &Event<'_>) {
        self.push_as(event, event.key, 0);
    }

    /// Appends an event to the batch of `owner_key`'s owner, with its experiment unit hash
    /// (0: none): an experiment arm's key (`KEY;arm=A`) goes where `KEY` goes, so all arms
    /// of a key meet on one shard.
    #[inline]
    pub fn push_as(&mut self, event: &Event<'_>, owner_key: &[u8], unit: u64) {
        let dst = owner(owner_key, self.cores) as usize;
        let out = &mut self.out[dst];
        out.building.push(event, unit);
        if out.building.len() >= ROUTE_BATCH_EVENTS_MAX {
            Self::seal(out, self.read_at);
        }
    }

    /// Sends every partly filled batch (end of a read or of a replay step).
    pub fn flush(&mut self) {
        for out in &mut self.out {
            if !out.building.is_empty() {
                Self::seal(out, self.read_at);
            }
        }
    }

    /// Sends a control message to every destination, behind the events already routed.
    pub fn broadcast(&mut self, msg: impl Fn() -> Msg) {
        self.flush();
        for out in &mut self.out {
            out.pending.push_back(msg());
            Self::drain(out);
        }
    }

    /// Retries pending messages. Returns true when nothing is pending any more.
    pub fn retry(&mut self) -> bool {
        for out in &mut self.out {
            Self::drain(out);
        }
        !self.blocked()
    }

    /// True while some destination has messages that did not fit its queue.
    pub fn blocked(&self) -> bool {
        self.out.iter().any(|o| !o.pending.is_empty())
    }

    /// Messages waiting in pending lists.
    pub fn pending_len(&self) -> usize {
        self.out.iter().map(|o| o.pending.len()).sum()
    }

    fn seal(out: &mut Outbound, read_at: Option<Instant>) {
        let fresh = out
            .free
            .try_recv()
            .unwrap_or_else(|_| EventBatch::with_capacity());
        let mut full = std::mem::replace(&mut out.building, fresh);
        full.read_at = read_at;
        out.pending.push_back(Msg::Events(full));
        Self::drain(out);
    }

    fn drain(out: &mut Outbound) {
        let mut sent = false;
        while let Some(msg) = out.pending.pop_front() {
            match out.tx.try_send(msg) {
                Ok(()) => sent = true,
                Err(TrySendError::Full(msg)) => {
                    out.pending.push_front(msg);
                    break;
                }
                // The receiver is gone only when the instance is shutting down after a failure.
                Err(TrySendError::Disconnected(_)) => {
                    out.pending.clear();
                    break;
                }
            }
        }
        if sent {
            out.doorbell.ring();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }

    fn doorbells(n: usize) -> Vec<Doorbell> {
        (0..n)
            .map(|_| Doorbell {
                sleeping: Arc::new(AtomicBool::new(false)),
                waker: Arc::new(NoWake),
            })
            .collect()
    }

    fn ev(key: &str) -> Event<'_> {
        Event {
            key: key.as_bytes(),
            value: 1.0,
            time_ms: 0,
            kind: Kind::Sample,
            unit: None,
        }
    }

    #[test]
    fn owner_is_stable_and_in_range() {
        for cores in 1..8 {
            for key in ["a", "room.temp", "x.y.z"] {
                let o = owner(key.as_bytes(), cores);
                assert!((o as usize) < cores);
                assert_eq!(o, owner(key.as_bytes(), cores));
            }
        }
        // xxh3 is a stable, published hash: routing is reproducible across versions.
        assert_eq!(
            xxhash_rust::xxh3::xxh3_64(b"room.temp") % 2,
            owner(b"room.temp", 2) as u64
        );
    }

    #[test]
    fn events_reach_their_owner_in_order_behind_barriers() {
        let mut m = mesh(&doorbells(2));
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        for k in &keys {
            m.routers[0].push(&ev(k));
        }
        m.routers[0].broadcast(|| Msg::Barrier(7));
        let mut seen = 0;
        for (dst, inbound) in m.inbounds.iter().enumerate() {
            let Msg::Events(batch) = inbound[0].rx.try_recv().unwrap() else {
                panic!()
            };
            for (key, _) in batch.iter() {
                assert_eq!(owner(key, 2) as usize, dst);
                seen += 1;
            }
            assert!(matches!(inbound[0].rx.try_recv().unwrap(), Msg::Barrier(7)));
        }
        assert_eq!(seen, 100);
    }

    #[test]
    fn batches_carry_the_moment_their_lines_were_read() {
        let mut m = mesh(&doorbells(1));
        let read = Instant::now();
        m.routers[0].set_read_at(read);
        m.routers[0].push(&ev("a"));
        m.routers[0].flush();
        let Msg::Events(mut batch) = m.inbounds[0][0].rx.try_recv().unwrap() else {
            panic!()
        };
        assert_eq!(batch.read_at(), Some(read));
        batch.clear();
        assert_eq!(batch.read_at(), None, "a reused batch forgets its read");
    }

    #[test]
    fn a_full_queue_leaves_messages_pending_until_drained() {
        let mut m = mesh(&doorbells(1));
        let router = &mut m.routers[0];
        let total = ROUTE_BATCH_EVENTS_MAX * (QUEUE_BATCHES_MAX + 3);
        for _ in 0..total {
            router.push(&ev("same"));
        }
        assert!(router.blocked());
        let mut received = 0;
        while received < total {
            while let Ok(Msg::Events(mut b)) = m.inbounds[0][0].rx.try_recv() {
                received += b.len();
                b.clear();
                let _ = m.inbounds[0][0].free.try_send(b);
            }
            router.retry();
        }
        assert!(!router.blocked());
        assert_eq!(received, total);
    }
}
