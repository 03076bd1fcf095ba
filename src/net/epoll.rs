//! The mio (epoll) backend.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};

use super::conns::{
    AcceptBackoff, AcceptFailure, FdBudget, IdleView, SweepClock, accept_failure, longest_idle,
    timed_out,
};
use super::mmsg::{self, DATAGRAMS_PER_CALL};
use super::udp_drops::UdpDropWatch;
use super::{BoundSocket, ConnId, Handler};
use crate::limits::{
    DATAGRAM_BYTES_MAX, DATAGRAMS_PER_TICK_MAX, DISPLACE_IDLE_MS_MIN, IDLE_CLOSES_PER_SWEEP_MAX,
    IDLE_SWEEP_MS, READ_BYTES_PER_TICK_MAX, READ_CHUNK_BYTES, READS_PER_CONNECTION_MAX,
};

const WAKER: Token = Token(usize::MAX);
/// Tokens below this are listeners; at or above it, connections.
const CONN_BASE: usize = 1 << 20;
/// Connections accepted per listener per turn.
const ACCEPTS_PER_TICK_MAX: usize = 64;
/// Space for datagrams read in one turn: room for a full `recvmmsg` batch of the largest
/// datagrams, plus four slots' worth for the datagrams already read and moved to the front
/// (so small datagrams keep getting full batches after the first).
const DATAGRAM_BUF_BYTES: usize = (DATAGRAMS_PER_CALL + 4) * DATAGRAM_BYTES_MAX;

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

#[derive(Debug)]
struct Listener {
    id: u16,
    socket: Socket,
    /// In the ready queue, or known ready (also while parked).
    queued: bool,
    /// Pausing after failed accepts.
    backoff: AcceptBackoff,
    /// Out of the ready queue until its back-off passes.
    parked: bool,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// In the ready queue: input may be waiting.
    queued: bool,
    listener: u16,
    /// Turn time of the last read that returned bytes (or of the accept).
    last_read: Instant,
}

impl Conn {
    fn idle_view(&self) -> IdleView {
        IdleView {
            listener: self.listener,
            last_read: self.last_read,
            pending: self.queued,
        }
    }
}

/// One core's sockets on mio.
#[derive(Debug)]
pub struct EpollBackend {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    listeners: Vec<Option<Listener>>,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<usize>,
    ready: VecDeque<Token>,
    buf: Box<[u8]>,
    dgram_buf: Box<[u8]>,
    dgram_lens: Vec<u32>,
    udp_drops: UdpDropWatch,
    /// The turn clock: read once per poll, so reads stamp connections without a syscall.
    now: Instant,
    /// Idle timeout of each listener id (TCP), as added.
    idle_timeouts: Vec<Option<Duration>>,
    sweep: SweepClock,
    /// Descriptors connections may hold, shared with the other cores.
    fds: Arc<FdBudget>,
    /// Listeners parked by a back-off.
    parked: usize,
}

/// Wakes an [`EpollBackend`] from another thread.
#[derive(Debug, Clone)]
pub struct EpollWaker(Arc<Waker>);

impl crate::route::Wake for EpollWaker {
    fn wake(&self) {
        // A failed wake leaves the core to its next tick, at most TICK_MS later.
        let _ = self.0.wake();
    }
}

impl EpollBackend {
    /// A backend with no sockets yet and no limit on connection descriptors.
    pub fn new() -> io::Result<EpollBackend> {
        EpollBackend::with_fd_budget(Arc::new(FdBudget::for_limit(None)))
    }

    /// A backend with no sockets yet whose connections share `fds` with other backends.
    pub fn with_fd_budget(fds: Arc<FdBudget>) -> io::Result<EpollBackend> {
        let poll = Poll::new()?;
        let now = Instant::now();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(EpollBackend {
            poll,
            events: Events::with_capacity(1024),
            waker,
            listeners: Vec::new(),
            conns: Vec::new(),
            free_conns: Vec::new(),
            ready: VecDeque::new(),
            buf: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            dgram_buf: vec![0; DATAGRAM_BUF_BYTES].into_boxed_slice(),
            dgram_lens: Vec::with_capacity(DATAGRAMS_PER_TICK_MAX),
            udp_drops: UdpDropWatch::default(),
            now,
            idle_timeouts: Vec::new(),
            sweep: SweepClock::new(now, Duration::from_millis(IDLE_SWEEP_MS)),
            fds,
            parked: 0,
        })
    }

    /// A handle that wakes this backend's poll.
    pub fn waker(&self) -> EpollWaker {
        EpollWaker(self.waker.clone())
    }

    /// Takes a connection accepted on listener `id` by another core.
    pub fn adopt(&mut self, id: u16, stream: std::net::TcpStream, handler: &mut impl Handler) {
        // Its descriptor was counted when the other core accepted it.
        self.admit(id, stream, handler, false);
    }

    /// Accepts connections on TCP listener `index` (id `id`), keeping those the handler
    /// does not pass to another core. Returns true when it may have more.
    fn accept(&mut self, index: usize, id: u16, handler: &mut impl Handler) -> bool {
        for _ in 0..ACCEPTS_PER_TICK_MAX {
            let Some(l) = self.listeners.get_mut(index).and_then(Option::as_mut) else {
                return false;
            };
            let Socket::Tcp(listener) = &l.socket else {
                return false;
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    if l.backoff.succeeded() {
                        handler.accepting_again(id);
                    }
                    self.fds.take();
                    self.admit(id, stream.into(), handler, true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    l.queued = false;
                    if l.backoff.succeeded() {
                        handler.accepting_again(id);
                    }
                    return false;
                }
                Err(e) => match accept_failure(&e) {
                    AcceptFailure::Retry => {}
                    AcceptFailure::BackOff => {
                        // EMFILE and friends: the connection stays in the backlog, and
                        // retrying at once would spin the core. Park the listener (still
                        // `queued`, so readiness is not lost) until its back-off passes.
                        let (_, began) = l.backoff.failed(self.now);
                        l.parked = true;
                        self.parked += 1;
                        handler.accept_failed(id, &e, began);
                        return false;
                    }
                },
            }
        }
        true
    }

    /// Keeps (or passes on) a connection whose descriptor is counted in the budget: under the
    /// listener's cap and the descriptor budget it is kept; over either, it displaces the
    /// longest-idle connection in scope, or is refused.
    fn admit(
        &mut self,
        id: u16,
        stream: std::net::TcpStream,
        handler: &mut impl Handler,
        may_place: bool,
    ) {
        let scope = if !handler.may_accept(id) {
            Some(Some(id))
        } else if self.fds.over() {
            // Any listener's idle connection frees a descriptor.
            Some(None)
        } else {
            None
        };
        if let Some(scope) = scope {
            // A scan of this core's connections, bounded by the listeners' caps, and only
            // when a cap is reached.
            let victim = longest_idle(
                self.idle_views(),
                scope,
                self.now,
                Duration::from_millis(DISPLACE_IDLE_MS_MIN),
            );
            let Some(victim) = victim else {
                handler.refused(id);
                drop(stream);
                self.fds.give_back();
                return;
            };
            if let Some(c) = self.conns.get(victim).and_then(Option::as_ref) {
                handler.displaced(c.listener);
            }
            self.close(victim, handler);
            // Room was made here: keep it here.
            self.add_conn(id, TcpStream::from_std(stream), handler);
            return;
        }
        if may_place {
            if let Some(stream) = handler.place(id, stream) {
                self.add_conn(id, TcpStream::from_std(stream), handler);
            }
        } else {
            self.add_conn(id, TcpStream::from_std(stream), handler);
        }
    }

    fn idle_views(&self) -> impl Iterator<Item = (ConnId, IdleView)> + '_ {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.idle_view())))
    }

    /// Registers an accepted connection and looks at it once (data may have come already).
    fn add_conn(&mut self, id: u16, mut stream: TcpStream, handler: &mut impl Handler) {
        let conn = self.free_conns.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let token = Token(CONN_BASE + conn);
        if self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
            .is_err()
        {
            self.free_conns.push(conn);
            drop(stream);
            self.fds.give_back();
            return;
        }
        self.conns[conn] = Some(Conn {
            stream,
            queued: true,
            listener: id,
            last_read: self.now,
        });
        self.ready.push_back(token);
        handler.opened(conn, id);
    }

    /// Starts serving listener `id` on `socket`; its TCP connections that send nothing for
    /// `idle_timeout` are closed.
    pub fn add_listener(
        &mut self,
        id: u16,
        socket: BoundSocket,
        idle_timeout: Option<Duration>,
    ) -> io::Result<()> {
        let token = Token(self.listeners.len());
        assert!(token.0 < CONN_BASE);
        let mut socket = match socket {
            BoundSocket::Tcp(l) => Socket::Tcp(TcpListener::from_std(l)),
            BoundSocket::Udp(s) => {
                if let Err(e) = self.udp_drops.watch(id, &s) {
                    // Kernel drops of this socket will not show in the metrics.
                    tracing::warn!(listener = id, error = %e, "cannot watch UDP drops");
                }
                Socket::Udp(UdpSocket::from_std(s))
            }
        };
        match &mut socket {
            Socket::Tcp(l) => self
                .poll
                .registry()
                .register(l, token, Interest::READABLE)?,
            Socket::Udp(s) => self
                .poll
                .registry()
                .register(s, token, Interest::READABLE)?,
        }
        self.listeners.push(Some(Listener {
            id,
            socket,
            queued: true,
            backoff: AcceptBackoff::default(),
            parked: false,
        }));
        if self.idle_timeouts.len() <= id as usize {
            self.idle_timeouts.resize(id as usize + 1, None);
        }
        self.idle_timeouts[id as usize] = idle_timeout;
        // Something may have arrived before registration: look once.
        self.ready.push_back(token);
        Ok(())
    }

    /// Calls `dropped(listener, n)` with the datagrams the kernel dropped on each UDP
    /// socket since the last call (receive buffer full). Reads `/proc`: call it now and then.
    pub fn udp_drops(&mut self, dropped: impl FnMut(u16, u64)) -> io::Result<()> {
        self.udp_drops.poll(dropped)
    }

    /// Stops accepting connections and receiving datagrams (shutdown).
    pub fn close_listeners(&mut self) {
        self.udp_drops.clear();
        self.parked = 0;
        for slot in &mut self.listeners {
            if let Some(mut l) = slot.take() {
                let _ = match &mut l.socket {
                    Socket::Tcp(s) => self.poll.registry().deregister(s),
                    Socket::Udp(s) => self.poll.registry().deregister(s),
                };
            }
        }
    }

    /// Open connections.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| i)
    }

    /// Closes a connection (the handler is told through `closed`).
    pub fn close(&mut self, conn: ConnId, handler: &mut impl Handler) {
        if let Some(mut c) = self.conns.get_mut(conn).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            drop(c);
            self.fds.give_back();
            self.free_conns.push(conn);
            handler.closed(conn);
        }
    }

    /// Closes connections past their listener's idle timeout (counted through
    /// [`Handler::timed_out`]). Does nothing until a sweep is due (every `IDLE_SWEEP_MS`),
    /// so calling it every tick costs a comparison.
    pub fn sweep_idle(&mut self, handler: &mut impl Handler) {
        let now = self.now;
        if !self.sweep.due(now) {
            return;
        }
        let mut closed = 0;
        for conn in 0..self.conns.len() {
            let Some(c) = self.conns[conn].as_ref() else {
                continue;
            };
            let timeout = self
                .idle_timeouts
                .get(c.listener as usize)
                .copied()
                .flatten();
            if !timed_out(&c.idle_view(), now, timeout) {
                continue;
            }
            if closed == IDLE_CLOSES_PER_SWEEP_MAX {
                self.sweep.again(now);
                break;
            }
            handler.timed_out(c.listener);
            self.close(conn, handler);
            closed += 1;
        }
    }

    /// When a parked listener may accept again, if any is parked.
    pub fn wake_at(&self) -> Option<Instant> {
        if self.parked == 0 {
            return None;
        }
        self.listeners
            .iter()
            .flatten()
            .filter(|l| l.parked)
            .filter_map(|l| l.backoff.paused_until())
            .min()
    }

    /// True when sockets are known to have input waiting.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Waits up to `timeout` for readiness (returns at once when input is known to wait and
    /// `reading`), and records what became ready.
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        self.now = Instant::now();
        if self.parked > 0 {
            self.unpark();
        }
        for event in self.events.iter() {
            let token = event.token();
            if token == WAKER {
                continue;
            }
            let queued = if token.0 >= CONN_BASE {
                self.conns
                    .get_mut(token.0 - CONN_BASE)
                    .and_then(Option::as_mut)
                    .map(|c| &mut c.queued)
            } else {
                self.listeners
                    .get_mut(token.0)
                    .and_then(Option::as_mut)
                    .map(|l| &mut l.queued)
            };
            if let Some(q) = queued
                && !*q
            {
                *q = true;
                self.ready.push_back(token);
            }
        }
        Ok(())
    }

    /// Puts listeners whose back-off has passed back in the ready queue.
    fn unpark(&mut self) {
        for (index, slot) in self.listeners.iter_mut().enumerate() {
            if let Some(l) = slot
                && l.parked
                && !l.backoff.paused(self.now)
            {
                l.parked = false;
                self.parked -= 1;
                self.ready.push_back(Token(index));
            }
        }
    }

    /// Services ready sockets while the handler is reading, within this turn's budget.
    pub fn service(&mut self, handler: &mut impl Handler) {
        let mut budget = READ_BYTES_PER_TICK_MAX;
        let mut turns = self.ready.len();
        while turns > 0 && budget > 0 {
            turns -= 1;
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            let again = if token.0 >= CONN_BASE {
                if !handler.reading() {
                    self.ready.push_front(token);
                    break;
                }
                self.read_conn(token.0 - CONN_BASE, handler, &mut budget)
            } else {
                self.serve_listener(token.0, handler, &mut budget)
            };
            if again {
                self.ready.push_back(token);
            }
        }
    }

    /// Reads what one connection has. Returns true when it may have more.
    fn read_conn(&mut self, conn: ConnId, handler: &mut impl Handler, budget: &mut usize) -> bool {
        let now = self.now;
        for _ in 0..READS_PER_CONNECTION_MAX {
            let Some(c) = self.conns.get_mut(conn).and_then(Option::as_mut) else {
                return false;
            };
            match c.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.close(conn, handler);
                    return false;
                }
                Ok(n) => {
                    c.last_read = now;
                    *budget = budget.saturating_sub(n);
                    handler.data(conn, &self.buf[..n]);
                    if *budget == 0 || !handler.reading() {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.queued = false;
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(conn, handler);
                    return false;
                }
            }
        }
        true
    }

    /// Accepts connections or receives datagrams. Returns true when it may have more.
    fn serve_listener(
        &mut self,
        index: usize,
        handler: &mut impl Handler,
        budget: &mut usize,
    ) -> bool {
        let Some(l) = self.listeners.get_mut(index).and_then(Option::as_mut) else {
            return false;
        };
        let id = l.id;
        match &mut l.socket {
            Socket::Tcp(_) => self.accept(index, id, handler),
            Socket::Udp(socket) => {
                if !handler.reading() {
                    return true;
                }
                self.dgram_lens.clear();
                let mut used = 0;
                let mut more = true;
                let mut lens = [0u32; DATAGRAMS_PER_CALL];
                while self.dgram_lens.len() < DATAGRAMS_PER_TICK_MAX {
                    // One call reads into slots of the largest datagram's size after what is
                    // already read; each datagram then moves down to follow the last one.
                    let slots = ((DATAGRAM_BUF_BYTES - used) / DATAGRAM_BYTES_MAX)
                        .min(DATAGRAMS_PER_TICK_MAX - self.dgram_lens.len())
                        .min(DATAGRAMS_PER_CALL);
                    if slots == 0 {
                        break;
                    }
                    match mmsg::recv_batch(
                        socket,
                        &mut self.dgram_buf[used..],
                        DATAGRAM_BYTES_MAX,
                        &mut lens[..slots],
                    ) {
                        Ok(n) => {
                            let base = used;
                            for (i, len) in lens[..n].iter().enumerate() {
                                let from = base + i * DATAGRAM_BYTES_MAX;
                                let len = *len as usize;
                                if from != used {
                                    self.dgram_buf.copy_within(from..from + len, used);
                                }
                                self.dgram_lens.push(len as u32);
                                used += len;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            l.queued = false;
                            more = false;
                            break;
                        }
                        // ICMP errors reported on the socket: nothing to read, keep serving.
                        Err(_) => break,
                    }
                }
                if !self.dgram_lens.is_empty() {
                    *budget = budget.saturating_sub(used);
                    handler.datagrams(id, &self.dgram_buf[..used], &self.dgram_lens);
                }
                more
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Proto;
    use std::time::Instant;

    /// Keeps every datagram it is handed, as sent.
    #[derive(Default)]
    struct Recorder {
        datagrams: Vec<Vec<u8>>,
        turns: usize,
    }

    impl Handler for Recorder {
        fn may_accept(&mut self, _: u16) -> bool {
            false
        }
        fn opened(&mut self, _: ConnId, _: u16) {}
        fn refused(&mut self, _: u16) {}
        fn displaced(&mut self, _: u16) {}
        fn timed_out(&mut self, _: u16) {}
        fn accept_failed(&mut self, _: u16, _: &io::Error, _: bool) {}
        fn accepting_again(&mut self, _: u16) {}
        fn data(&mut self, _: ConnId, _: &[u8]) {}
        fn closed(&mut self, _: ConnId) {}
        fn datagrams(&mut self, listener: u16, buf: &[u8], lens: &[u32]) {
            assert_eq!(listener, 7);
            assert_eq!(lens.iter().map(|&l| l as usize).sum::<usize>(), buf.len());
            let mut at = 0;
            for &len in lens {
                self.datagrams.push(buf[at..at + len as usize].to_vec());
                at += len as usize;
            }
            self.turns += 1;
        }
        fn reading(&self) -> bool {
            true
        }
    }

    #[test]
    fn datagrams_of_mixed_sizes_reach_the_handler_back_to_back_and_in_order() {
        let socket = crate::net::bind(Proto::Udp, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let mut backend = EpollBackend::new().unwrap();
        backend.add_listener(7, socket, None).unwrap();
        // More than two `recvmmsg` batches, queued before the first turn: empty ones,
        // one-byte ones and large ones, each filled with its own byte.
        let sizes = [0, 1, 9_000, 17, 0, 1_500, 30_000, 3, 64, 200];
        let sent: Vec<Vec<u8>> = (0..40)
            .map(|i| vec![i as u8; sizes[i % sizes.len()]])
            .collect();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(addr).unwrap();
        for d in &sent {
            tx.send(d).unwrap();
        }
        let mut recorder = Recorder::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while recorder.datagrams.len() < sent.len() {
            assert!(
                Instant::now() < deadline,
                "{} datagrams",
                recorder.datagrams.len()
            );
            backend.poll(Some(Duration::from_millis(50))).unwrap();
            backend.service(&mut recorder);
        }
        assert_eq!(recorder.datagrams, sent);
        assert!(
            recorder.turns < sent.len(),
            "several datagrams per turn ({} turns)",
            recorder.turns
        );
    }
}
