//! The appliance end to end: TCP and UDP Graphite input → log → shards → windows → output,
//! across a clean stop and restart.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::harness::{Rows, Sluice, expect_1s, now_secs, read_aggregates, run, wait_for};

type Expected = Rows;

fn subset(all: &Expected, prefix: &str) -> Expected {
    all.iter()
        .filter(|(k, _)| k.0.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Lines `key value ts` with values in quarters, so every sum is exact in any order.
fn graphite_line(key: &str, value: f64, t: i64) -> String {
    format!("{key} {value} {t}\n")
}

#[test]
fn graphite_over_tcp_and_udp_is_counted_exactly_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let args = [
        "--cores",
        "2",
        "--window",
        "1s",
        "--allowed-lateness",
        "5s",
        "--listen",
        "graphite+tcp://127.0.0.1:0?name=g-tcp",
        "--listen",
        "graphite+udp://127.0.0.1:0?name=g-udp",
    ];
    let mut expected = Expected::new();
    let mut sent_lines: Vec<String> = Vec::new();

    // Phase 1: 100,000 lines over 4 TCP connections and 5,000 over UDP, an hour in the past,
    // spread over 4 s of event time and interleaved in time order.
    let sluice = Sluice::start(&data, &args);
    let t0 = now_secs() - 3600;
    const TCP_LINES: usize = 100_000;
    const UDP_LINES: usize = 5_000;
    // The whole span is within the allowed lateness (5 s), so however the kernel and the cores
    // interleave the connections, no event can be late: the windows close once input stops.
    const SPAN_SECS: usize = 4;
    let mut conns: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(sluice.addr("g-tcp")).unwrap())
        .collect();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.connect(sluice.addr("g-udp")).unwrap();
    let mut bufs: Vec<String> = vec![String::new(); 4];
    let mut udp_next = 0usize;
    for i in 0..TCP_LINES {
        let key = format!("sensor.{:02}", i % 50);
        let value = ((i * 7) % 1000) as f64 / 4.0;
        let t = t0 + (i * SPAN_SECS / TCP_LINES) as i64;
        let line = graphite_line(&key, value, t);
        expect_1s(&mut expected, &key, t, value);
        sent_lines.push(line.trim_end().to_string());
        bufs[i % 4].push_str(&line);
        if (i + 1) % 1000 == 0 {
            for (c, buf) in conns.iter_mut().zip(bufs.iter_mut()) {
                c.write_all(buf.as_bytes()).unwrap();
                buf.clear();
            }
            // UDP lines up to the same event time, 10 per datagram, the last without its LF.
            let upto = (i + 1) * UDP_LINES / TCP_LINES;
            while udp_next < upto {
                let mut datagram = String::new();
                for j in udp_next..(udp_next + 10).min(upto) {
                    let key = format!("udp.{}", j % 10);
                    let value = (j % 40) as f64 / 2.0;
                    let t = t0 + (j * SPAN_SECS / UDP_LINES) as i64;
                    let line = graphite_line(&key, value, t);
                    expect_1s(&mut expected, &key, t, value);
                    sent_lines.push(line.trim_end().to_string());
                    datagram.push_str(&line);
                }
                udp_next = (udp_next + 10).min(upto);
                udp.send(datagram.trim_end().as_bytes()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drop(conns);
    let total = (TCP_LINES + UDP_LINES) as u64;
    let closed = wait_for(Duration::from_secs(60), || {
        read_aggregates(&data)
            .values()
            .map(|r| r.count)
            .sum::<u64>()
            >= total
    });
    assert!(
        closed,
        "windows did not all close: {} of {total} counted; lines={} udp_dropped={}",
        read_aggregates(&data)
            .values()
            .map(|r| r.count)
            .sum::<u64>(),
        sluice.metric("sluice_lines_total", &[]),
        sluice.metric("sluice_udp_dropped_total", &[]),
    );
    assert_eq!(
        read_aggregates(&data),
        expected,
        "phase 1 aggregates differ"
    );
    assert_eq!(sluice.metric("sluice_lines_total", &[]), total as f64);
    assert_eq!(sluice.metric("sluice_rejected_total", &[]), 0.0);
    assert_eq!(sluice.metric("sluice_late_events_total", &[]), 0.0);
    let status = sluice.stop();
    assert!(status.success(), "SIGTERM exit: {status}");

    // Phase 2: half of a batch of windows, stop while they are open, restart, the other half.
    let t1 = now_secs() - 1800;
    let send_tcp = |sluice: &Sluice,
                    from: usize,
                    to: usize,
                    expected: &mut Expected,
                    sent: &mut Vec<String>| {
        let mut c = TcpStream::connect(sluice.addr("g-tcp")).unwrap();
        let mut buf = String::new();
        for i in from..to {
            let key = format!("p2.{}", i % 5);
            let value = (i % 17) as f64;
            // Two 1 s windows, both within the allowed lateness of the newest event: they
            // stay open across the stop (the watermark needs 4 s of idle time to pass them).
            let t = t1 + (i % 2) as i64;
            let line = graphite_line(&key, value, t);
            expect_1s(expected, &key, t, value);
            sent.push(line.trim_end().to_string());
            buf.push_str(&line);
        }
        c.write_all(buf.as_bytes()).unwrap();
    };
    let sluice = Sluice::start(&data, &args);
    assert_eq!(
        read_aggregates(&data),
        subset(&expected, ""),
        "restart changed the output"
    );
    send_tcp(&sluice, 0, 3000, &mut expected, &mut sent_lines);
    assert!(wait_for(Duration::from_secs(30), || sluice
        .metric("sluice_window_events_total", &[])
        >= 3000.0));
    assert!(sluice.stop().success());
    // Every phase 2 event is either in a closed window or in an open one in the checkpoint.
    let inspect = run(&[
        "checkpoint",
        "inspect",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(inspect.status.success());
    let ckpt: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let open: u64 = ckpt["checkpoint"]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["windows"].as_array().unwrap().iter())
        .filter(|w| w["key"].as_str().unwrap().starts_with("p2."))
        .map(|w| w["agg"]["count"].as_u64().unwrap())
        .sum();
    let closed: u64 = subset(&read_aggregates(&data), "p2.")
        .values()
        .map(|r| r.count)
        .sum();
    assert!(
        open > 0,
        "the last phase 2 window is still open at the stop"
    );
    assert_eq!(open + closed, 3000, "open {open} + closed {closed}");

    let sluice = Sluice::start(&data, &args);
    send_tcp(&sluice, 3000, 6000, &mut expected, &mut sent_lines);
    let closed = wait_for(Duration::from_secs(30), || {
        read_aggregates(&data)
            .values()
            .map(|r| r.count)
            .sum::<u64>()
            >= total + 6000
    });
    assert!(closed, "phase 2 windows did not close");
    assert_eq!(
        read_aggregates(&data),
        expected,
        "aggregates after the restart differ"
    );
    assert!(sluice.stop().success());

    // The log holds every line sent, intact.
    let verify = run(&["log", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(
        verify.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let dump = run(&["log", "dump", "--data-dir", data.to_str().unwrap()]);
    assert!(dump.status.success());
    let mut dumped: Vec<String> = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    dumped.sort();
    sent_lines.sort();
    assert_eq!(dumped.len(), sent_lines.len());
    assert!(dumped == sent_lines, "log dump differs from what was sent");
}

/// Connections are spread evenly over the cores whatever the kernel's `SO_REUSEPORT` hash
/// picks: a core that accepts one while another has fewer passes it on. Each connection is
/// read before the next opens, so every choice sees the counts of the ones before it.
#[test]
fn tcp_connections_are_balanced_over_the_cores() {
    const CORES: usize = 4;
    const CONNS: usize = 4 * CORES;
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(
        &tmp.path().join("data"),
        &[
            "--cores",
            "4",
            "--listen",
            "graphite+tcp://127.0.0.1:0?name=g",
        ],
    );
    let t = now_secs();
    let mut conns = Vec::new();
    for i in 0..CONNS {
        let mut c = TcpStream::connect(sluice.addr("g")).unwrap();
        c.write_all(format!("conn.{i} 1 {t}\n").as_bytes()).unwrap();
        conns.push(c);
        let lines = (i + 1) as f64;
        assert!(
            wait_for(Duration::from_secs(10), || sluice
                .metric("sluice_lines_total", &[])
                == lines),
            "connection {i}'s line was not read"
        );
    }
    let open_per_core = || -> Vec<f64> {
        (0..CORES)
            .map(|c| sluice.metric("sluice_connections_open", &[&format!("core=\"{c}\"")]))
            .collect()
    };
    assert_eq!(open_per_core(), vec![(CONNS / CORES) as f64; CORES]);
    let handed = sluice.metric("sluice_connections_handed_off_total", &[]);
    let accepted = sluice.metric("sluice_connections_total", &[]);
    assert_eq!(
        accepted, CONNS as f64,
        "each connection counts once, where it is read"
    );
    assert!(handed < CONNS as f64, "handed off {handed}");

    // The first connection of each core closes (the first CORES went one to a core), and
    // new ones take their places.
    drop(conns.drain(..CORES));
    assert!(wait_for(Duration::from_secs(10), || open_per_core()
        == vec![(CONNS / CORES - 1) as f64; CORES]));
    for i in CONNS..CONNS + CORES {
        let mut c = TcpStream::connect(sluice.addr("g")).unwrap();
        c.write_all(format!("conn.{i} 1 {t}\n").as_bytes()).unwrap();
        conns.push(c);
        let lines = (i + 1) as f64;
        assert!(wait_for(Duration::from_secs(10), || sluice
            .metric("sluice_lines_total", &[])
            == lines));
    }
    assert_eq!(open_per_core(), vec![(CONNS / CORES) as f64; CORES]);
    let status = sluice.stop();
    assert!(status.success(), "SIGTERM exit: {status}");
}
