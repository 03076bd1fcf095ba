//! Network input: the listening sockets of one core and the connections it accepted.
//!
//! A backend delivers completions to a [`Handler`] — a connection was accepted, bytes arrived
//! on a connection, datagrams arrived on a UDP socket, a connection closed — so the cores'
//! framing and parsing do not depend on how the bytes were read. [`epoll::EpollBackend`] drives
//! mio (epoll); an io_uring backend can drive the same handler.
//!
//! Connections are bounded ([`conns`]): per listener by `max_connections` and `idle_timeout`,
//! per process by a descriptor budget that keeps a reserve for files and admin; a full
//! listener makes room by closing its longest-idle connection, and a listener whose `accept`
//! fails pauses with a growing back-off instead of spinning.
//!
//! Backpressure: the backend reads only while [`Handler::reading`] is true. Readiness is
//! remembered (mio is edge-triggered), so a paused socket is read again as soon as the core has
//! room, without waiting for new data to arrive.

// `forbid` here would reach `mmsg.rs`, the one file that needs `unsafe`; every other file
// of the module forbids it.
#![deny(unsafe_code)]

pub mod conns;
pub mod epoll;
pub mod mmsg;
pub mod udp_drops;

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::limits::UDP_RCVBUF_BYTES;

/// Identifies an open connection within one core.
pub type ConnId = usize;

/// What a core does with network completions.
pub trait Handler {
    /// May listener `listener` accept one more connection?
    fn may_accept(&mut self, listener: u16) -> bool;
    /// A connection was accepted (here or, passed by [`place`](Self::place), on another core).
    fn opened(&mut self, conn: ConnId, listener: u16);
    /// Offers a connection just accepted on `listener` to another core; gives it back when
    /// this core keeps it.
    fn place(
        &mut self,
        _listener: u16,
        stream: std::net::TcpStream,
    ) -> Option<std::net::TcpStream> {
        Some(stream)
    }
    /// A connection was refused (over `max_connections` or the descriptor budget, with no
    /// connection idle long enough to make room).
    fn refused(&mut self, listener: u16);
    /// An idle connection of `listener` is about to be closed to make room for a new one
    /// (`closed` follows).
    fn displaced(&mut self, listener: u16);
    /// A connection of `listener` sent nothing for its idle timeout and is about to be closed
    /// (`closed` follows).
    fn timed_out(&mut self, listener: u16);
    /// `accept` failed on `listener`, which now pauses; `episode_began` on the first failure
    /// since it last accepted.
    fn accept_failed(&mut self, listener: u16, error: &io::Error, episode_began: bool);
    /// `listener` accepts again after failed accepts.
    fn accepting_again(&mut self, listener: u16);
    /// Bytes arrived on a connection.
    fn data(&mut self, conn: ConnId, bytes: &[u8]);
    /// The peer closed the connection (or it failed); no more data will come.
    fn closed(&mut self, conn: ConnId);
    /// Datagrams arrived on a UDP listener: `lens[i]` bytes each, back to back in `buf`.
    fn datagrams(&mut self, listener: u16, buf: &[u8], lens: &[u32]);
    /// False while the core must not read (backpressure).
    fn reading(&self) -> bool;
}

/// A socket bound for one listener on one core.
#[derive(Debug)]
pub enum BoundSocket {
    /// A listening TCP socket.
    Tcp(std::net::TcpListener),
    /// A bound UDP socket.
    Udp(std::net::UdpSocket),
}

impl BoundSocket {
    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            BoundSocket::Tcp(l) => l.local_addr(),
            BoundSocket::Udp(s) => s.local_addr(),
        }
    }
}

/// Checks that no other socket holds `addr` by binding it once without `SO_REUSEPORT`, and
/// closing that again, before the cores' `SO_REUSEPORT` group is made. Without it a second
/// process of the same user binding the same address with `SO_REUSEPORT` (another sluice)
/// would join the group and silently take part of the traffic. TCP probes with
/// `SO_REUSEADDR`, so connections of an earlier run left in TIME_WAIT do not count; only a
/// bound socket does. `Err` of kind `AddrInUse` when it is held.
pub fn probe_unshared(proto: Proto, addr: SocketAddr) -> io::Result<()> {
    let domain = Domain::for_address(addr);
    let s = match proto {
        Proto::Tcp => {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s
        }
        Proto::Udp => Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?,
    };
    s.bind(&addr.into())
}

/// Binds `addr` with `SO_REUSEPORT`, non-blocking, so every core can bind the same address.
pub fn bind(proto: Proto, addr: SocketAddr) -> io::Result<BoundSocket> {
    let domain = Domain::for_address(addr);
    match proto {
        Proto::Tcp => {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            Ok(BoundSocket::Tcp(s.into()))
        }
        Proto::Udp => {
            let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            // The kernel clamps this to net.core.rmem_max; a small buffer is the main cause of
            // UDP loss under bursts, so ask for a large one.
            let _ = s.set_recv_buffer_size(UDP_RCVBUF_BYTES);
            s.bind(&addr.into())?;
            Ok(BoundSocket::Udp(s.into()))
        }
    }
}

/// Transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP stream, newline (or octet-counted) framing.
    Tcp,
    /// UDP datagrams, one or more lines each.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}
