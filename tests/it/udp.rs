//! UDP loss accounting: datagrams the kernel drops because a core does not read show up in
//! `sluice_udp_dropped_total`, so accepted plus dropped equals sent.

use std::net::UdpSocket;
use std::time::Duration;

use crate::harness::{Sluice, signal, wait_for};

#[test]
fn kernel_receive_buffer_drops_of_a_stopped_process_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = Sluice::start(
        &data,
        &["--cores", "1", "--listen", "raw+udp://127.0.0.1:0?name=u"],
    );
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.connect(sluice.addr("u")).unwrap();

    // Stopped, the core reads nothing: the receive buffer (at most 2 × rmem_max, 8 MiB on
    // most hosts) fills and the kernel drops the rest. 200,000 datagrams of ~1 KiB of
    // accounting each is far more than any default buffer holds.
    const SENT: u64 = 200_000;
    signal(sluice.child.id(), "STOP");
    let payload = [b'x'; 64];
    for _ in 0..SENT {
        // Loopback never makes the sender block or fail for a full receiver.
        udp.send(&payload).unwrap();
    }
    signal(sluice.child.id(), "CONT");

    let accounted = || {
        sluice.metric("sluice_lines_total", &["listener=\"u\""])
            + sluice.metric("sluice_udp_dropped_total", &["listener=\"u\""])
    };
    let complete = wait_for(Duration::from_secs(30), || accounted() >= SENT as f64);
    let dropped = sluice.metric("sluice_udp_dropped_total", &["listener=\"u\""]);
    let lines = sluice.metric("sluice_lines_total", &["listener=\"u\""]);
    assert!(complete, "lines={lines} dropped={dropped}, sent {SENT}");
    assert!(dropped > 0.0, "nothing dropped: lines={lines}");
    assert!(
        lines > 0.0,
        "the buffered datagrams were read after SIGCONT"
    );
    assert_eq!(lines + dropped, SENT as f64);
    assert_eq!(sluice.stop().code(), Some(0));
}
