//! StatsD and DogStatsD semantics end to end, through a real UDP listener and the clients
//! people use: the PyPI `statsd` client's gauge deltas and sets, the `datadog` client's
//! events and service checks. Gauges follow their deltas across windows and a kill -9.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{Sluice, aggregate_lines, require, wait_for};

/// 10 s windows that close 1 s after their end: the clients below pace themselves so that
/// each phase's datagrams land in one window.
fn start(data: &Path) -> Sluice {
    Sluice::start(
        data,
        &[
            "--cores",
            "2",
            "--window",
            "10s",
            "--allowed-lateness",
            "1s",
            "--listen",
            "statsd+udp://127.0.0.1:0?name=sd",
        ],
    )
}

/// Phase `a`: a gauge set and moved by a delta, a set with a repeated member, a DogStatsD
/// event and two service checks. Phase `b` (after a kill -9): another delta, another member.
const CLIENTS: &str = r#"
import sys, time, statsd
from datadog.dogstatsd import DogStatsd
port, phase = int(sys.argv[1]), sys.argv[2]
while time.time() % 10 > 6:  # start early in a 10 s window
    time.sleep(0.05)
c = statsd.StatsClient("127.0.0.1", port)
d = DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True)
if phase == "a":
    c.gauge("queue", 119)
    c.gauge("queue", -5, delta=True)
    for m in ["alice", "bob", "alice"]:
        c.set("users", m)
    d.event("Deploy done", "v1.2 | shipped\nok", alert_type="success", tags=["team:core", "env:prod"], hostname="web1")
    d.service_check("db.up", DogStatsd.WARNING, tags=["role:primary"], message="lag | high")
    d.service_check("db.up", DogStatsd.OK, tags=["role:primary"])
else:
    c.gauge("queue", 6, delta=True)
    c.set("users", "carol")
d.flush()
"#;

fn run_clients(port: u16, phase: &str) {
    let out = Command::new("python3")
        .args(["-c", CLIENTS, &port.to_string(), phase])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every row of `key`, oldest window first, as JSON.
fn rows_of(data: &Path, key: &str) -> Vec<serde_json::Value> {
    let mut rows: Vec<serde_json::Value> = aggregate_lines(data)
        .into_iter()
        .filter_map(|(_, l)| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter(|v| v["key"] == key)
        .collect();
    rows.sort_by_key(|v| v["start_ms"].as_i64());
    rows.dedup_by_key(|v| v["start_ms"].as_i64());
    rows
}

fn wait_rows(sluice: &Sluice, data: &Path, key: &str, n: usize) -> Vec<serde_json::Value> {
    let done = wait_for(Duration::from_secs(40), || rows_of(data, key).len() >= n);
    assert!(done, "no {n} rows of {key}:\n{}", sluice.stderr());
    rows_of(data, key)
}

#[test]
fn statsd_gauge_deltas_sets_and_dogstatsd_events_from_real_clients() {
    let have_clients = Command::new("python3")
        .args(["-c", "import statsd, datadog"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(
        have_clients,
        "python3 with the PyPI statsd and datadog packages",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = start(&data);
    run_clients(sluice.addr("sd").port(), "a");

    let queue = wait_rows(&sluice, &data, "queue", 1);
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0]["count"], 2);
    assert_eq!(queue[0]["last"], 114.0, "119 then -5: {}", queue[0]);
    assert_eq!(
        (queue[0]["min"].as_f64(), queue[0]["max"].as_f64()),
        (Some(114.0), Some(119.0))
    );

    let users = wait_rows(&sluice, &data, "users", 1);
    assert_eq!(users[0]["count"], 3);
    assert_eq!(users[0]["distinct"], 2, "{}", users[0]);
    for field in ["sum", "min", "max", "mean", "stddev", "last"] {
        assert!(
            users[0].get(field).is_none(),
            "{field} of member hashes: {}",
            users[0]
        );
    }

    let event = wait_rows(&sluice, &data, "Deploy done;env=prod;team=core", 1);
    assert_eq!(
        (event[0]["count"].as_u64(), event[0]["sum"].as_f64()),
        (Some(1), Some(1.0))
    );
    let checks = wait_rows(&sluice, &data, "db.up;role=primary", 1);
    assert_eq!(
        (checks[0]["count"].as_u64(), checks[0]["sum"].as_f64()),
        (Some(2), Some(2.0))
    );
    assert_eq!(
        sluice.metric("sluice_rejected_total", &[]),
        0.0,
        "{}",
        sluice.stderr()
    );

    // kill -9, restart on the same data dir: the gauge goes on from 114.
    drop(sluice);
    let sluice = start(&data);
    run_clients(sluice.addr("sd").port(), "b");
    let queue = wait_rows(&sluice, &data, "queue", 2);
    assert_eq!(queue.len(), 2, "{queue:?}");
    assert_eq!(
        queue[1]["last"], 120.0,
        "114 then +6 after the restart: {}",
        queue[1]
    );
    let users = wait_rows(&sluice, &data, "users", 2);
    assert_eq!(
        (users[1]["count"].as_u64(), users[1]["distinct"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(sluice.metric("sluice_rejected_total", &[]), 0.0);
    assert!(sluice.stop().success());
}
