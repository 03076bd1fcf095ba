//! The admin accept loop and connections, bounded so that no client can grow memory.
//!
//! Each connection is served by hyper's HTTP/1 connection directly (not `axum::serve`), so
//! the limits below come from hyper and tower-http rather than from hand-written HTTP:
//!
//! ```text
//! connections open   ≤ connections_max  at the cap a new connection closes the oldest idle one
//!                                       (no request in flight); if all are busy it gets a 503
//!                                       and is closed (refused)
//! request head       ≤ head_bytes_max   hyper's read buffer (max_buf_size); over it: 431
//! head or next head  ≤ header_read_timeout  hyper's header_read_timeout, which also runs while
//!                                       a kept-alive connection waits for its next request
//! request body       ≤ body_bytes_max   tower-http RequestBodyLimit; over it: 413
//! whole request      ≤ request_timeout  tower-http Timeout; over it: 408
//! ```
//!
//! Every connection owns a slot in [`Slots`] until its task ends; the gauge
//! `admin.connections_open` follows the tasks, so it may exceed the cap only by connections
//! already told to close.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::limits;
use crate::metrics::Metrics;

/// What bounds the admin server; [`AdminLimits::default`] is the limits in `crate::limits`.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Connections open at once.
    pub connections_max: usize,
    /// Time to send a complete request head (and, on a kept-alive connection, the next one).
    pub header_read_timeout: Duration,
    /// Longest a request may take before it is answered 408.
    pub request_timeout: Duration,
    /// Largest request head, in bytes (hyper needs at least 8 KiB).
    pub head_bytes_max: usize,
    /// Largest request body, in bytes.
    pub body_bytes_max: usize,
    /// How long stopping waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            connections_max: limits::ADMIN_CONNECTIONS_MAX,
            header_read_timeout: Duration::from_millis(limits::ADMIN_HEADER_READ_TIMEOUT_MS),
            request_timeout: Duration::from_millis(limits::ADMIN_REQUEST_TIMEOUT_MS),
            head_bytes_max: limits::ADMIN_HEAD_BYTES_MAX,
            body_bytes_max: limits::ADMIN_BODY_BYTES_MAX,
            shutdown_grace: Duration::from_millis(super::SHUTDOWN_GRACE_MS),
        }
    }
}

/// Wraps `router` in the request timeout and the body limit.
pub(super) fn limited(router: Router, limits: &AdminLimits) -> Router {
    use tower_http::limit::RequestBodyLimitLayer;
    use tower_http::timeout::TimeoutLayer;
    router
        .layer(RequestBodyLimitLayer::new(limits.body_bytes_max))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
}

/// What a refused connection is told before it is closed (best effort: one non-blocking
/// write, the request is never read).
const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
content-type: text/plain\r\ncontent-length: 24\r\n\r\ntoo many admin clients\r\n";

/// One connection's place among the open ones.
#[derive(Debug)]
struct Slot {
    id: u64,
    /// Requests being handled now (0: the connection is idle and may be evicted).
    in_flight: AtomicU32,
    /// Notified when the slot is taken for a newer connection.
    evict: Notify,
}

/// The open connections, oldest first.
#[derive(Debug)]
struct Slots {
    max: usize,
    inner: Mutex<SlotsInner>,
}

#[derive(Debug, Default)]
struct SlotsInner {
    next_id: u64,
    open: VecDeque<Arc<Slot>>,
}

/// The outcome of [`Slots::admit`].
enum Admit {
    /// A slot, and whether an idle connection was evicted to make it.
    Slot(Arc<Slot>, bool),
    /// Every slot has a request in flight.
    Full,
}

impl Slots {
    fn new(max: usize) -> Self {
        assert!(max > 0, "an admin server needs a connection slot");
        Slots {
            max,
            inner: Mutex::new(SlotsInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        // A panic while holding the lock leaves the deque whole: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self) -> Admit {
        let mut inner = self.lock();
        let mut evicted = false;
        if inner.open.len() >= self.max {
            let idle = inner
                .open
                .iter()
                .position(|s| s.in_flight.load(Ordering::Relaxed) == 0);
            let Some(idle) = idle else {
                return Admit::Full;
            };
            if let Some(slot) = inner.open.remove(idle) {
                // A permit is stored if the connection is not waiting yet.
                slot.evict.notify_one();
                evicted = true;
            }
        }
        let slot = Arc::new(Slot {
            id: inner.next_id,
            in_flight: AtomicU32::new(0),
            evict: Notify::new(),
        });
        inner.next_id += 1;
        inner.open.push_back(Arc::clone(&slot));
        Admit::Slot(slot, evicted)
    }

    fn release(&self, id: u64) {
        self.lock().open.retain(|s| s.id != id);
    }
}

/// Gives a connection's slot back and counts it closed, however its task ends.
struct SlotGuard {
    slot: Arc<Slot>,
    slots: Arc<Slots>,
    metrics: Arc<Metrics>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.release(self.slot.id);
        self.metrics.admin.connections_open.add(-1);
    }
}

/// Marks a request in flight on its connection while it lives.
struct InFlight(Arc<Slot>);

impl InFlight {
    fn enter(slot: &Arc<Slot>) -> InFlight {
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(slot))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves until `stopped` turns true (or its sender is dropped), then lets requests in flight
/// finish for at most `limits.shutdown_grace` and drops the rest.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: AdminLimits,
    metrics: Arc<Metrics>,
    stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Slots::new(limits.connections_max));
    let mut conns = JoinSet::new();
    let mut stop = stopped.clone();
    let mut accept_errors = 0u64;
    loop {
        tokio::select! {
            biased;
            // Err: the AdminServer was dropped, which means stop as well.
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let conn = Conn {
                        app: app.clone(),
                        limits,
                        metrics: Arc::clone(&metrics),
                        stopped: stopped.clone(),
                    };
                    admit(stream, conn, &slots, &mut conns);
                }
                Err(e) => {
                    // Out of descriptors, most likely: back off instead of spinning.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::warn!(error = %e, errors = accept_errors, "admin accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(limits::ADMIN_ACCEPT_BACKOFF_MS))
                        .await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!("admin HTTP: requests still open after the grace period");
    }
    // Dropping the set aborts whatever is left.
    drop(conns);
    tracing::debug!("admin HTTP stopped");
}

/// What a connection task needs besides its socket and slot.
struct Conn {
    app: Router,
    limits: AdminLimits,
    metrics: Arc<Metrics>,
    stopped: watch::Receiver<bool>,
}

fn admit(stream: TcpStream, conn: Conn, slots: &Arc<Slots>, conns: &mut JoinSet<()>) {
    let admin = &conn.metrics.admin;
    match slots.admit() {
        Admit::Slot(slot, evicted) => {
            if evicted {
                admin.connections_evicted_total.add(1);
            }
            admin.connections_total.add(1);
            admin.connections_open.add(1);
            let guard = SlotGuard {
                slot,
                slots: Arc::clone(slots),
                metrics: Arc::clone(&conn.metrics),
            };
            conns.spawn(serve_connection(stream, conn, guard));
        }
        Admit::Full => {
            admin.connections_refused_total.add(1);
            // Best effort; the socket is closed right after either way.
            let _ = stream.try_write(REFUSED_RESPONSE);
        }
    }
}

async fn serve_connection(stream: TcpStream, conn: Conn, guard: SlotGuard) {
    let Conn {
        app,
        limits,
        metrics,
        mut stopped,
    } = conn;
    let slot = Arc::clone(&guard.slot);
    let service = {
        let metrics = Arc::clone(&metrics);
        let slot = Arc::clone(&slot);
        hyper::service::service_fn(move |request| {
            let in_flight = InFlight::enter(&slot);
            let app = app.clone();
            let metrics = Arc::clone(&metrics);
            async move {
                let response = app.oneshot(request).await;
                if let Ok(r) = &response
                    && r.status() == StatusCode::REQUEST_TIMEOUT
                {
                    metrics.admin.requests_timed_out_total.add(1);
                }
                drop(in_flight);
                response
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.head_bytes_max);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        served = connection.as_mut() => Some(served),
        // Counted when the slot was taken.
        () = slot.evict.notified() => Some(Ok(())),
        _ = stopped.wait_for(|s| *s) => None,
    };
    let served = match ended {
        Some(served) => served,
        None => {
            // Idle connections close now; a request in flight finishes first.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match served {
        Err(e) if e.is_timeout() => metrics.admin.connections_timed_out_total.add(1),
        Err(e) => tracing::debug!(error = %e, "admin connection ended with an error"),
        Ok(()) => {}
    }
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(slot: &Arc<Slot>) {
        slot.in_flight.store(1, Ordering::Relaxed);
    }

    #[test]
    fn a_full_set_evicts_the_oldest_idle_connection() {
        let slots = Slots::new(3);
        let taken: Vec<Arc<Slot>> = (0..3)
            .map(|_| match slots.admit() {
                Admit::Slot(s, false) => s,
                _ => panic!("room left"),
            })
            .collect();
        busy(&taken[0]);
        let Admit::Slot(newest, true) = slots.admit() else {
            panic!("an idle one should make room");
        };
        // The oldest idle one (id 1) made room, not the busy id 0.
        let ids: Vec<u64> = slots.lock().open.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![0, 2, newest.id]);
        busy(&taken[2]);
        busy(&newest);
        assert!(matches!(slots.admit(), Admit::Full));
        slots.release(0);
        assert!(matches!(slots.admit(), Admit::Slot(_, false)));
    }
}
