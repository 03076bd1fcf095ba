//! Recovery time per GB of log after the checkpoint: a partition of Graphite lines with no
//! checkpoint is replayed (read, parsed, routed, windowed) by `sluice serve --cores 1`; the
//! time from start to ready is the recovery time. Prints a line; not a criterion benchmark.
//!
//! `cargo bench --bench recovery [-- MIB]` (default 256 MiB of ~60-byte lines).

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice::config::FlushPolicy;
use sluice::log::{Appender, BatchInfo, Options, partition_dir};

fn ready(admin: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(admin) else {
        return false;
    };
    let _ = std::io::Write::write_all(
        &mut s,
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r.starts_with("HTTP/1.1 200")
}

fn main() {
    let mib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let options = Options {
        segment_bytes: 64 << 20,
        flush: FlushPolicy::Never,
        flush_interval_ms: 1000,
        retention_bytes: 0,
        retention_hours: 0,
    };
    let (mut appender, _) = Appender::open(&partition_dir(&data, 0), options).unwrap();
    let t0 = 1_764_360_000u64;
    let mut bytes = 0u64;
    let mut lines = 0u64;
    let mut out: Vec<BatchInfo> = Vec::new();
    while bytes < mib << 20 {
        let mut w = appender.begin(0, 0);
        for _ in 0..1000 {
            let line = format!(
                "servers.host{:05}.cpu.user {} {}",
                lines % 50_000,
                lines % 100,
                t0 + lines / 100_000
            );
            bytes += line.len() as u64 + 1;
            lines += 1;
            w.push(line.as_bytes()).unwrap();
        }
        w.finish(&mut out).unwrap();
        out.clear();
    }
    appender.flush().unwrap();
    drop(appender);

    let admin = "127.0.0.1:19977";
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--cores",
            "1",
            "--admin",
            admin,
            "--window",
            "10s",
            "--listen",
            "graphite+tcp://127.0.0.1:0?name=g",
        ])
        .arg("--data-dir")
        .arg(&data)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while !ready(admin) {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not ready in 10 min"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "replayed {lines} lines, {:.0} MiB in {secs:.2} s: {:.1} s per GiB, {:.2} M lines/s (one core)",
        bytes as f64 / (1u64 << 20) as f64,
        secs / gib,
        lines as f64 / secs / 1e6
    );
}
