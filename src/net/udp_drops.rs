//! Kernel receive-buffer drops of this core's UDP sockets.
//!
//! When a UDP socket's receive buffer is full the kernel drops the datagram and counts it on
//! the socket (`sk_drops`); the process never sees it. Linux shows the count in the last
//! column of `/proc/self/net/udp` (and `udp6`), one row per socket of the network namespace,
//! identified by the socket's inode. Each core owns its own `SO_REUSEPORT` socket per
//! listener, so it reads the rows of its own inodes and adds the growth since its last look to
//! that listener's `udp_dropped_total`.
//!
//! ```text
//!    sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
//! 15380: 0100007F:C043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 80996 2 00000000428916b6 0
//! ```
//!
//! The kernel counter is 32 bits wide, so growth is taken modulo 2^32; the watch looks often
//! enough that it cannot wrap twice between looks.

#![forbid(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// Files that list the namespace's UDP sockets.
const PROC_NET_UDP: [&str; 2] = ["/proc/self/net/udp", "/proc/self/net/udp6"];

/// Index of the `inode` column in a row split on whitespace.
const COLUMN_INODE: usize = 9;
/// Index of the `drops` column in a row split on whitespace.
const COLUMN_DROPS: usize = 12;

/// The socket inode of a descriptor, from its `/proc/self/fd` link (`socket:[80996]`).
pub fn socket_inode(socket: &impl AsRawFd) -> io::Result<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd()))?;
    let link = link.to_string_lossy();
    link.strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("not a socket: {link}")))
}

/// Calls `row(inode, drops)` for every well-formed row of a `/proc/net/udp` table.
pub fn parse_table(text: &str, mut row: impl FnMut(u64, u32)) {
    for line in text.lines().skip(1) {
        let mut inode = None;
        let mut drops = None;
        for (i, field) in line.split_ascii_whitespace().enumerate() {
            match i {
                COLUMN_INODE => inode = field.parse::<u64>().ok(),
                COLUMN_DROPS => drops = field.parse::<u32>().ok(),
                _ => {}
            }
        }
        if let (Some(inode), Some(drops)) = (inode, drops) {
            row(inode, drops);
        }
    }
}

#[derive(Debug)]
struct Watched {
    listener: u16,
    inode: u64,
    /// Kernel count at the last look (0 before the first: the socket is new).
    seen: u32,
}

/// The UDP sockets of one core and their kernel drop counts.
#[derive(Debug, Default)]
pub struct UdpDropWatch {
    sockets: Vec<Watched>,
    text: String,
}

impl UdpDropWatch {
    /// Watches `socket`, which serves `listener`. Drops before this call are counted too.
    pub fn watch(&mut self, listener: u16, socket: &impl AsRawFd) -> io::Result<()> {
        let inode = socket_inode(socket)?;
        self.sockets.push(Watched {
            listener,
            inode,
            seen: 0,
        });
        Ok(())
    }

    /// Forgets every socket (the listeners were closed).
    pub fn clear(&mut self) {
        self.sockets.clear();
    }

    /// True when no socket is watched.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Reads the kernel's counts and calls `dropped(listener, n)` with each socket's growth
    /// since the last look. Does nothing (no file read) when no socket is watched.
    pub fn poll(&mut self, mut dropped: impl FnMut(u16, u64)) -> io::Result<()> {
        if self.sockets.is_empty() {
            return Ok(());
        }
        for path in PROC_NET_UDP {
            self.text.clear();
            match std::fs::File::open(path) {
                Ok(mut f) => {
                    io::Read::read_to_string(&mut f, &mut self.text)?;
                }
                // No IPv6 in this kernel: nothing to read there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            account(&mut self.sockets, &self.text, &mut dropped);
        }
        Ok(())
    }
}

/// Adds each watched socket's growth in `table` since its last look.
fn account(sockets: &mut [Watched], table: &str, dropped: &mut impl FnMut(u16, u64)) {
    parse_table(table, |inode, drops| {
        if let Some(w) = sockets.iter_mut().find(|w| w.inode == inode) {
            let grown = drops.wrapping_sub(w.seen);
            w.seen = drops;
            if grown > 0 {
                dropped(w.listener, u64::from(grown));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table captured from Linux 6.x (`cat /proc/net/udp`), one socket with drops.
    const SAMPLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            \n\
  1234: 0100007F:0FA3 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 80996 2 00000000428916b6 0         \n\
 15380: 0100007F:C043 00000000:0000 07 00000000:0003F600 00:00000000 00000000     0        0 80997 2 00000000d1b0a2c4 1873      \n";

    #[test]
    fn parse_table_reads_inode_and_drops_of_each_row() {
        let mut rows = Vec::new();
        parse_table(SAMPLE, |inode, drops| rows.push((inode, drops)));
        assert_eq!(rows, vec![(80996, 0), (80997, 1873)]);
    }

    #[test]
    fn parse_table_skips_the_header_and_malformed_rows() {
        let mut rows = Vec::new();
        parse_table("header\n\n  1: short row\n", |i, d| rows.push((i, d)));
        assert!(rows.is_empty());
    }

    #[test]
    fn udp6_rows_have_the_same_columns() {
        let text = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  262: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 7\n";
        let mut rows = Vec::new();
        parse_table(text, |i, d| rows.push((i, d)));
        assert_eq!(rows, vec![(4242, 7)]);
    }

    #[test]
    fn a_watched_socket_reports_growth_once() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut watch = UdpDropWatch::default();
        watch.watch(3, &s).unwrap();
        let mut total = 0;
        watch
            .poll(|l, n| {
                assert_eq!(l, 3);
                total += n;
            })
            .unwrap();
        // A fresh socket has dropped nothing; a second look adds nothing either.
        watch.poll(|_, n| total += n).unwrap();
        assert_eq!(total, 0);
    }

    #[test]
    fn growth_wraps_with_the_32_bit_kernel_counter() {
        let mut sockets = vec![Watched {
            listener: 1,
            inode: 80997,
            seen: u32::MAX - 1,
        }];
        let mut grown = Vec::new();
        account(&mut sockets, SAMPLE, &mut |l, n| grown.push((l, n)));
        assert_eq!(grown, vec![(1, 1875)]);
        // Unchanged at the next look: nothing more.
        account(&mut sockets, SAMPLE, &mut |l, n| grown.push((l, n)));
        assert_eq!(grown.len(), 1);
    }
}
