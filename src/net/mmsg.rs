//! Batched datagrams: one `recvmmsg(2)` reads up to [`DATAGRAMS_PER_CALL`] datagrams, where
//! `recv` takes a system call each. The one file of the network module with `unsafe` (the
//! system call takes raw pointers to the caller's buffers). The load generator's batched
//! and segmented sends are in `tools/loadgen/udp.rs`.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// Most datagrams one call reads.
pub const DATAGRAMS_PER_CALL: usize = 16;

/// Reads up to `lens.len()` (at most [`DATAGRAMS_PER_CALL`]) datagrams waiting on `socket`
/// without blocking. Datagram `i` lands at `buf[i * stride..]` (at most `stride` bytes: a
/// longer one is cut, so `stride` should be the largest datagram) and its length in
/// `lens[i]`; returns how many were read. Nothing waiting is `WouldBlock`.
pub fn recv_batch(
    socket: &impl AsRawFd,
    buf: &mut [u8],
    stride: usize,
    lens: &mut [u32],
) -> io::Result<usize> {
    let n = lens.len().min(DATAGRAMS_PER_CALL);
    assert!(stride > 0 && buf.len() >= n * stride, "buffer too small");
    if n == 0 {
        return Ok(0);
    }
    let mut iovs = [NO_IOV; DATAGRAMS_PER_CALL];
    for (i, (iov, slot)) in iovs
        .iter_mut()
        .zip(buf.chunks_exact_mut(stride))
        .enumerate()
    {
        if i == n {
            break;
        }
        iov.iov_base = slot.as_mut_ptr().cast();
        iov.iov_len = stride;
    }
    let mut hdrs = headers(&mut iovs, n);
    let rc = loop {
        // SAFETY: `hdrs[..n]` each point at one `iovec` of `iovs` (set by `headers`, with
        // `iovs` neither moved nor touched since), which each point at a distinct
        // `stride`-byte slot of `buf`, exclusively borrowed for this call; `iovs`, `hdrs` and
        // `buf` outlive the call, and the kernel writes at most `iov_len` bytes to
        // each slot and fills in only `msg_len` and the header fields of `hdrs[..n]`. No
        // address or control buffer is given (null, length 0). `socket` is borrowed, so its
        // descriptor stays open during the call.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc >= 0 {
            break rc as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    debug_assert!(rc <= n);
    for (len, hdr) in lens.iter_mut().zip(&hdrs[..rc]) {
        *len = hdr.msg_len.min(stride as libc::c_uint);
    }
    Ok(rc)
}

/// An empty `iovec`.
const NO_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// Message headers whose first `n` each point at one of `iovs` (the rest empty). The
/// pointers are only valid while `iovs` (and the buffers its entries point at) stay where
/// they are, untouched: callers make the system call right after, with nothing in between.
fn headers(
    iovs: &mut [libc::iovec; DATAGRAMS_PER_CALL],
    n: usize,
) -> [libc::mmsghdr; DATAGRAMS_PER_CALL] {
    // SAFETY: `mmsghdr` is a plain C struct of integers and pointers, for which all-zero bytes
    // are a valid value (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; DATAGRAMS_PER_CALL] = unsafe { std::mem::zeroed() };
    for (hdr, iov) in hdrs.iter_mut().zip(iovs.iter_mut()).take(n) {
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
    }
    hdrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_batch_of_datagrams_then_would_block() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let sent: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("d{i}:{}", "x".repeat(i * 7)).into_bytes())
            .collect();
        for d in &sent {
            tx.send(d).unwrap();
        }
        tx.send(b"").unwrap();
        let stride = 1024;
        let mut buf = vec![0u8; DATAGRAMS_PER_CALL * stride];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < sent.len() + 1 {
            assert!(std::time::Instant::now() < deadline, "datagrams missing");
            let mut lens = [0u32; DATAGRAMS_PER_CALL];
            match recv_batch(&rx, &mut buf, stride, &mut lens) {
                Ok(n) => {
                    assert!(n <= DATAGRAMS_PER_CALL);
                    for (i, len) in lens[..n].iter().enumerate() {
                        got.push(buf[i * stride..i * stride + *len as usize].to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let mut want = sent.clone();
        want.push(Vec::new());
        assert_eq!(got, want, "every datagram, in order, empty ones included");
        let mut lens = [0u32; 4];
        let e = recv_batch(&rx, &mut buf, stride, &mut lens).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_datagram_longer_than_the_stride_is_cut_to_it() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[7u8; 3000], rx.local_addr().unwrap()).unwrap();
        let mut buf = vec![0u8; 2 * 1000];
        let mut lens = [0u32; 2];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let n = loop {
            match recv_batch(&rx, &mut buf, 1000, &mut lens) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!((n, lens[0]), (1, 1000));
    }
}
