//! The load generator's batched UDP sends: one `sendmmsg(2)` sends up to
//! [`DATAGRAMS_PER_CALL`] datagrams, or one segmented send (UDP GSO) up to
//! [`SEGMENTS_PER_SEND`]. (Receiving is the appliance's, in `sluice::net::mmsg`.) `unsafe`:
//! the system calls take raw pointers to the caller's buffers.

use std::io;
use std::os::fd::AsRawFd;

/// Most datagrams one `sendmmsg` sends.
pub const DATAGRAMS_PER_CALL: usize = 16;

/// An empty `iovec`.
const NO_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// Most datagrams one segmented send carries (the kernel's `UDP_MAX_SEGMENTS`).
pub const SEGMENTS_PER_SEND: usize = 64;

/// Most bytes one segmented send carries: the datagrams travel as one IP packet until the
/// kernel splits them, so together they stay under IP's 64 KiB.
pub const SEGMENTED_BYTES_MAX: usize = 60 * 1024;
// So every segment size a send can carry fits the control message's u16.
const _: () = assert!(SEGMENTED_BYTES_MAX <= u16::MAX as usize);

/// Sends `datagrams` (at most [`SEGMENTS_PER_SEND`], [`SEGMENTED_BYTES_MAX`] bytes in all)
/// on the connected `socket` in one segmented send (`UDP_SEGMENT`, Linux 4.18 and later):
/// they cross the sender's IP stack as one packet, and the kernel splits it into datagrams of
/// `datagrams[0].len()` bytes before any socket receives them, so a receiver gets each as
/// its own datagram, as from [`send_batch`]. Every datagram but the last must be as long as
/// the first, and the last no longer, and none empty; anything else is `InvalidInput`.
/// Returns the bytes sent: all of them, or an error for all of them.
pub fn send_segmented(socket: &impl AsRawFd, datagrams: &[&[u8]]) -> io::Result<usize> {
    let n = datagrams.len();
    let seg = datagrams.first().map_or(0, |d| d.len());
    let total: usize = datagrams.iter().map(|d| d.len()).sum();
    let Some((last, whole)) = datagrams.split_last() else {
        return Err(not_segmentable());
    };
    // `seg` ≤ `total`, and an empty first datagram makes the last empty or too long.
    if n > SEGMENTS_PER_SEND
        || total > SEGMENTED_BYTES_MAX
        || last.is_empty()
        || last.len() > seg
        || whole.iter().any(|d| d.len() != seg)
    {
        return Err(not_segmentable());
    }
    let mut iovs = [NO_IOV; SEGMENTS_PER_SEND];
    for (iov, d) in iovs.iter_mut().zip(datagrams) {
        // The kernel only reads through it.
        iov.iov_base = d.as_ptr().cast_mut().cast();
        iov.iov_len = d.len();
    }
    // One control message: the segment size, a u16. u64s keep the buffer aligned for
    // `cmsghdr`; 4 of them are more than `CMSG_SPACE(2)` on every Linux target.
    let mut control = [0u64; 4];
    // SAFETY: `CMSG_SPACE` only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: `msghdr` is a plain C struct of integers and pointers, for which all-zero bytes
    // are a valid value (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = n as _;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `control`, `space` bytes long and aligned for `cmsghdr`, so
    // `CMSG_FIRSTHDR` gives a pointer to its start (non-null: `space` holds a header), and the
    // header and its 2 data bytes (`CMSG_LEN(2)` ≤ `space`) lie inside `control`. The data is
    // written unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        debug_assert!(!cmsg.is_null());
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        libc::CMSG_DATA(cmsg)
            .cast::<u16>()
            .write_unaligned(seg as u16);
    }
    loop {
        // SAFETY: `msg` points at `iovs[..n]` (each pointing at one of `datagrams`, borrowed
        // for this call) and at `control`, all alive and untouched since they were set; the
        // kernel only reads through them. No address is given (the socket is connected).
        // `socket` is borrowed, so its descriptor stays open during the call.
        let rc = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
        if rc >= 0 {
            debug_assert_eq!(rc as usize, total);
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn not_segmentable() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "a segmented send needs 1 to 64 datagrams of the first's length (the last no longer)",
    )
}

/// Sends up to [`DATAGRAMS_PER_CALL`] of `datagrams` on the connected `socket`, one
/// datagram each, in one system call; returns how many were sent (the first `n`). Blocks
/// like `send` unless the socket is non-blocking.
pub fn send_batch(socket: &impl AsRawFd, datagrams: &[&[u8]]) -> io::Result<usize> {
    let n = datagrams.len().min(DATAGRAMS_PER_CALL);
    if n == 0 {
        return Ok(0);
    }
    let mut iovs = [NO_IOV; DATAGRAMS_PER_CALL];
    for (iov, d) in iovs.iter_mut().zip(&datagrams[..n]) {
        // The kernel only reads through it (`sendmmsg` never writes to the iovecs' memory).
        iov.iov_base = d.as_ptr().cast_mut().cast();
        iov.iov_len = d.len();
    }
    // SAFETY: `mmsghdr` is a plain C struct of integers and pointers, for which all-zero bytes
    // are a valid value (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; DATAGRAMS_PER_CALL] = unsafe { std::mem::zeroed() };
    for (hdr, iov) in hdrs.iter_mut().zip(iovs.iter_mut()).take(n) {
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: `hdrs[..n]` each point at one `iovec` of `iovs` (set just above, with
        // `iovs` neither moved nor touched since), which each point at one of `datagrams`,
        // borrowed for this call; the kernel reads `iov_len` bytes from each
        // and writes only the `msg_len` fields of `hdrs[..n]`. No address or control buffer
        // is given (the socket is connected). `socket` is borrowed, so its descriptor stays
        // open during the call.
        let rc =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
        if rc >= 0 {
            debug_assert!(rc as usize <= n);
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_batch_arrives_as_separate_datagrams_in_order() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let sent: Vec<Vec<u8>> = (0..20).map(|i| vec![b'a' + i as u8; i * 3]).collect();
        let slices: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        assert_eq!(send_batch(&tx, &slices).unwrap(), DATAGRAMS_PER_CALL);
        assert_eq!(send_batch(&tx, &slices[DATAGRAMS_PER_CALL..]).unwrap(), 4);
        assert_eq!(send_batch(&tx, &[]).unwrap(), 0);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 128];
        for want in &sent {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want.as_slice());
        }
    }

    #[test]
    fn a_segmented_send_arrives_as_separate_datagrams_in_order() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let mut sent: Vec<Vec<u8>> = (0..SEGMENTS_PER_SEND)
            .map(|i| format!("line {i:04}\n").into_bytes())
            .collect();
        sent.last_mut().unwrap().truncate(3);
        let slices: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        let total: usize = slices.iter().map(|d| d.len()).sum();
        assert_eq!(send_segmented(&tx, &slices).unwrap(), total);
        assert_eq!(send_segmented(&tx, &slices[..1]).unwrap(), 10);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 128];
        for want in sent.iter().chain(&sent[..1]) {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want.as_slice());
        }
        // Lengths a segmented send cannot carry are refused before any system call.
        let long = [b'x'; 11];
        for bad in [
            &[][..],
            &[&slices[0][..0]][..],
            &[slices[0], &long[..]][..],
            &[slices[0], &slices[0][..0]][..],
        ] {
            let e = send_segmented(&tx, bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        let too_many = vec![slices[0]; SEGMENTS_PER_SEND + 1];
        assert!(send_segmented(&tx, &too_many).is_err());
    }
}
