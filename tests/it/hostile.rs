//! Hostile input never stops a listener: it is counted and dead-lettered, and valid lines
//! after it still count.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::harness::{Sluice, noise, now_secs, read_aggregates, wait_for};

#[test]
fn garbage_long_lines_and_bad_utf8_are_counted_and_do_not_stop_the_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = Sluice::start(
        &data,
        &[
            "--cores",
            "2",
            "--window",
            "1s",
            "--allowed-lateness",
            "0s",
            "--listen",
            "graphite+tcp://127.0.0.1:0?name=g&max_line_bytes=1KiB",
            "--listen",
            "graphite+udp://127.0.0.1:0?name=gu",
        ],
    );
    let t = now_secs() - 60;
    let mut c = TcpStream::connect(sluice.addr("g")).unwrap();
    c.write_all(&noise(1 << 20, 0x9e37_79b9_7f4a_7c15)).unwrap();
    c.write_all(format!("\nafter.garbage 1 {t}\n").as_bytes())
        .unwrap();
    c.write_all(&vec![b'x'; 4 << 20]).unwrap();
    c.write_all(format!("\nafter.long 2 {t}\n").as_bytes())
        .unwrap();
    c.write_all(b"bad.\xff\xfe.utf8 1 1\n").unwrap();
    c.write_all(format!("nan.value NaN {t}\ninf.value inf {t}\nno.value\n").as_bytes())
        .unwrap();
    c.write_all(format!("after.bad 3 {t}\n").as_bytes())
        .unwrap();
    drop(c);
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.connect(sluice.addr("gu")).unwrap();
    u.send(b"").unwrap();
    u.send(&noise(1000, 7)).unwrap();
    u.send(format!("\nafter.udp 4 {t}").as_bytes()).unwrap();

    let keys = ["after.garbage", "after.long", "after.bad", "after.udp"];
    let seen = wait_for(Duration::from_secs(30), || {
        let rows = read_aggregates(&data);
        keys.iter().all(|k| rows.keys().any(|(key, _, _)| key == k))
    });
    assert!(
        seen,
        "valid lines after hostile input were not counted: {:?}\n{}",
        read_aggregates(&data).keys().collect::<Vec<_>>(),
        sluice.stderr()
    );
    let rows = read_aggregates(&data);
    for (i, k) in keys.iter().enumerate() {
        let (_, row) = rows.iter().find(|(key, _)| key.0 == *k).unwrap();
        assert_eq!((row.count, row.sum), (1, (i + 1) as f64), "{k}");
    }
    assert!(sluice.metric("sluice_rejected_total", &["reason=\"too_long\""]) >= 1.0);
    assert!(sluice.metric("sluice_rejected_total", &["reason=\"bad_utf8\""]) >= 1.0);
    assert!(sluice.metric("sluice_rejected_total", &["reason=\"bad_number\""]) >= 2.0);
    assert!(sluice.metric("sluice_rejected_total", &["reason=\"no_value\""]) >= 1.0);
    assert_eq!(sluice.http_get("/healthz").0, 200);
    let deadletters: String = std::fs::read_dir(data.join("deadletter"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for reason in ["too_long", "bad_utf8", "bad_number", "no_value"] {
        assert!(
            deadletters.contains(&format!("\"reason\":\"{reason}\"")),
            "no {reason} dead letter"
        );
    }
    assert!(sluice.stop().success());
}
