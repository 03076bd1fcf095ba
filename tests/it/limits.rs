//! Bounds that hostile clients cannot push past: the admin server under thousands of slow
//! clients, and the dead-letter log under a flood of garbage.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Sluice, http_get, metric_sum, now_secs, wait_for};

/// Slow clients the admin test holds open.
const SLOW_CLIENTS: usize = 3_000;
/// How much the appliance's RSS may grow while they are connected.
const RSS_GROWTH_BYTES_MAX: u64 = 8 << 20;
/// Garbage sent in the dead-letter test.
const GARBAGE_BYTES: usize = 10 << 20;

/// Raises this process's open-file soft limit to the hard one (and the hard one too where
/// allowed), so it can hold thousands of sockets; the child inherits it.
fn raise_nofile_limit(need: u64) {
    let pid = std::process::id().to_string();
    let want = need.max(65_536).to_string();
    let raised = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={want}:{want}")])
        .status()
        .is_ok_and(|s| s.success());
    if !raised {
        // Not root: the soft limit can still go up to the hard one.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("prlimit --pid {pid} --nofile=$(ulimit -Hn):"))
            .status();
    }
}

/// The open-file soft limit of this process.
fn nofile_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024)
}

/// VmRSS of `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

fn scrape(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn three_thousand_slow_admin_clients_leave_memory_flat_and_metrics_answering() {
    raise_nofile_limit(SLOW_CLIENTS as u64 + 1_024);
    let limit = nofile_limit();
    assert!(
        limit >= SLOW_CLIENTS as u64 + 256,
        "open-file limit {limit} is too low for {SLOW_CLIENTS} clients"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sluice = Sluice::start(
        &data,
        &[
            "--cores",
            "1",
            "--listen",
            "graphite+tcp://127.0.0.1:0?name=g",
        ],
    );
    let admin = sluice.admin();
    let pid = sluice.child.id();
    // Warm up: a few scrapes, so their allocations are in the idle figure.
    for _ in 0..5 {
        scrape(admin);
    }
    let idle_rss = rss_bytes(pid);

    let started = Instant::now();
    let mut slow = Vec::with_capacity(SLOW_CLIENTS);
    for _ in 0..SLOW_CLIENTS {
        let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(5)) else {
            continue;
        };
        // A partial head, then nothing.
        if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: sluice\r\nX-Slow: ")
            .is_ok()
        {
            slow.push(s);
        }
    }
    let connect_time = started.elapsed();
    assert!(
        slow.len() >= SLOW_CLIENTS * 9 / 10,
        "only {} of {SLOW_CLIENTS} slow clients connected",
        slow.len()
    );

    // With every client still connected (none has seen its header timeout yet), /metrics
    // answers at once and memory stays where it was.
    let asked = Instant::now();
    let body = scrape(admin);
    let answered_in = asked.elapsed();
    let peak_rss = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            rss_bytes(pid)
        })
        .max()
        .unwrap();
    let open = metric_sum(&body, "sluice_admin_connections_open", &[]);
    let accepted = metric_sum(&body, "sluice_admin_connections_total", &[]);
    let evicted = metric_sum(&body, "sluice_admin_connections_evicted_total", &[]);
    let refused = metric_sum(&body, "sluice_admin_connections_refused_total", &[]);
    eprintln!(
        "admin: {} slow clients in {connect_time:?}; /metrics in {answered_in:?}; \
         RSS idle {} KiB, with clients {} KiB; open {open}, accepted {accepted}, \
         evicted {evicted}, refused {refused}",
        slow.len(),
        idle_rss / 1024,
        peak_rss / 1024
    );
    // Bursts overflow the listen backlog, and the kernel retries those SYNs after a second.
    assert!(
        connect_time < Duration::from_secs(120),
        "connecting took {connect_time:?}"
    );
    assert!(
        answered_in < Duration::from_secs(2),
        "/metrics took {answered_in:?}"
    );
    assert!(
        peak_rss <= idle_rss + RSS_GROWTH_BYTES_MAX,
        "RSS grew from {idle_rss} to {peak_rss} bytes"
    );
    assert!(open <= 129.0, "{open} admin connections open");
    assert!(
        evicted + refused >= (slow.len() - 128) as f64,
        "evicted {evicted} + refused {refused} of {} clients",
        slow.len()
    );
    // The slots still held by slow clients are timed out, and the server serves on.
    let timed_out = wait_for(Duration::from_secs(30), || {
        metric_sum(
            &scrape(admin),
            "sluice_admin_connections_timed_out_total",
            &[],
        ) >= 1.0
    });
    assert!(timed_out, "no slow client timed out");
    drop(slow);
    assert_eq!(http_get(admin, "/healthz").0, 200);
    assert!(sluice.stop().success());
}

/// Deterministic short garbage lines (printable bytes and spaces), with a good line every
/// tenth; returns the bytes and (lines, good lines).
fn garbage(len: usize, mut seed: u64) -> (Vec<u8>, u64, u64) {
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let now = now_secs();
    let mut out = Vec::with_capacity(len + 64);
    let (mut lines, mut good) = (0u64, 0u64);
    while out.len() < len {
        if lines % 10 == 0 {
            writeln!(out, "good.k{} 1 {now}", lines % 50).unwrap();
            good += 1;
        } else {
            // No digit at all, so no line can pass for `path value`; never blank.
            out.push(b'x');
            for _ in 0..(next() % 16 + 1) {
                let b = match (next() % 96) as u8 {
                    0..=9 => b' ',
                    c => 0x21 + c - 10,
                };
                out.push(if b.is_ascii_digit() { b'z' } else { b });
            }
            out.push(b'\n');
        }
        lines += 1;
    }
    (out, lines, good)
}

/// Rejections each record in a dead-letter file stands for: 1, or its repeat count.
fn represented(dir: &Path) -> (u64, u64, usize) {
    let (mut rejections, mut bytes, mut files) = (0u64, 0u64, 0usize);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        bytes += text.len() as u64;
        files += 1;
        for line in text.lines() {
            let rec: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: bad record `{line}`: {e}", path.display()));
            assert!(rec["reason"].is_string(), "{line}");
            rejections += rec.get("repeated").and_then(|n| n.as_u64()).unwrap_or(1);
        }
    }
    (rejections, bytes, files)
}

#[test]
fn ten_megabytes_of_garbage_keep_dead_letters_under_their_cap_and_counts_reconcile() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cap: u64 = 256 * 1024;
    let files = 4;
    let config = tmp.path().join("sluice.toml");
    // Many full copies per second, so the cap and rotation are reached as well as collapse.
    std::fs::write(
        &config,
        format!("[deadletter]\nmax_bytes = {cap}\nfiles = {files}\nrepeats = 2000\n"),
    )
    .unwrap();
    let sluice = Sluice::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--cores",
            "2",
            "--listen",
            "graphite+tcp://127.0.0.1:0?name=g",
        ],
    );
    let (bytes, lines, good) = garbage(GARBAGE_BYTES, 0x2545_f491_4f6c_dd1d);
    let started = Instant::now();
    // Two connections, so both cores (partitions) get their share.
    let halves = bytes.split_at(
        bytes[..bytes.len() / 2]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1,
    );
    let senders: Vec<_> = [halves.0.to_vec(), halves.1.to_vec()]
        .into_iter()
        .map(|part| {
            let addr = sluice.addr("g");
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.write_all(&part).unwrap();
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let admin = sluice.admin();
    let all_in = wait_for(Duration::from_secs(180), || {
        metric_sum(&scrape(admin), "sluice_lines_total", &[]) >= lines as f64
    });
    assert!(all_in, "not every line arrived:\n{}", scrape(admin));
    let ingest_time = started.elapsed();

    // Every rejection settles (repeat records are written once their second is over).
    let mut last = String::new();
    let settled = wait_for(Duration::from_secs(30), || {
        last = scrape(admin);
        let m = |name: &str, f: &[&str]| metric_sum(&last, name, f);
        let rejected = m("sluice_rejected_total", &[]) + m("sluice_late_events_total", &[]);
        let settled = m("sluice_deadletter_written_total", &[])
            + m("sluice_deadletter_collapsed_total", &[])
            + m("sluice_deadletter_dropped_total", &["reason=\"cap\""])
            + m("sluice_deadletter_dropped_total", &["reason=\"error\""]);
        rejected > 0.0 && rejected == settled
    });
    assert!(settled, "dead-letter counts do not reconcile:\n{last}");
    let m = |name: &str, f: &[&str]| metric_sum(&last, name, f) as u64;
    let accepted = m("sluice_lines_total", &[]);
    let events = m("sluice_events_total", &[]);
    let rejected = m("sluice_rejected_total", &[]);
    let written = m("sluice_deadletter_written_total", &[]);
    let collapsed = m("sluice_deadletter_collapsed_total", &[]);
    let rotated = m("sluice_deadletter_dropped_total", &["reason=\"rotated\""]);
    let cap_dropped = m("sluice_deadletter_dropped_total", &["reason=\"cap\""]);
    assert_eq!(accepted, lines, "lines accepted");
    assert_eq!(events, good, "good lines");
    assert_eq!(accepted, events + rejected, "accepted = good + rejected");
    assert!(collapsed > 0, "nothing collapsed:\n{last}");
    assert!(rotated > 0, "the cap was never reached:\n{last}");

    assert!(sluice.stop().success());
    let dir = data.join("deadletter");
    let (on_disk, dl_bytes, dl_files) = represented(&dir);
    let mut per_partition: BTreeMap<String, u64> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let partition = name.split('.').next().unwrap().to_string();
        *per_partition.entry(partition).or_default() += entry.metadata().unwrap().len();
    }
    eprintln!(
        "deadletter: {} MiB of garbage ({lines} lines, {rejected} rejected) in {ingest_time:?} \
         -> {dl_bytes} bytes in {dl_files} files {per_partition:?}; written {written}, \
         collapsed {collapsed}, rotated away {rotated}, cap {cap_dropped}",
        GARBAGE_BYTES >> 20
    );
    for (partition, bytes) in &per_partition {
        assert!(
            *bytes <= cap,
            "{partition}: {bytes} bytes over the cap {cap}"
        );
    }
    assert!(dl_files <= per_partition.len() * files);
    // What the files hold is what was written less what rotation deleted.
    assert_eq!(on_disk, written + collapsed - rotated);
}
