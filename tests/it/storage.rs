//! A failed write is backpressure, never loss: the real binary on a full tmpfs, on a log
//! directory made immutable, and stopped with SIGSTOP under load. Each ends with the
//! exactly-once oracle over the log (`crash.rs`) and the check that every line sent is in it.
//!
//! Mounting a tmpfs and `chattr` need root (CI runs as root). Where a mount is impossible the
//! test says so and returns: the fault layer's unit tests (`src/fault.rs`, the appender's and
//! the aggregates writer's) cover the same paths without a real disk.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::crash::{assert_exactly_once, oracle};
use crate::harness::{Sluice, now_secs, require, signal, wait_for};

/// A tmpfs mounted for one test, unmounted (lazily) when dropped.
pub(crate) struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `dir`; `None` (with a note) where that is impossible.
    pub(crate) fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                eprintln!(
                    "cannot mount a tmpfs ({why}); the fault layer's unit tests cover this path"
                );
                require(false, "permission to mount a tmpfs (root)");
                None
            }
        }
    }

    /// Bytes free on it.
    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Writes a file of zeros that leaves about `leave` bytes free; returns its path.
    pub(crate) fn fill(&self, leave: u64) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let want = self.free_bytes().saturating_sub(leave);
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0;
        while written < want {
            let n = (want - written).min(chunk.len() as u64) as usize;
            match f.write(&chunk[..n]) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        f.sync_all().unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Senders that write `total` Graphite lines as fast as sluice takes them, over `conns`
/// connections, each line stamped with the shared event clock.
struct Flood {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(addr: SocketAddr, conns: usize, total: u64, clock: Arc<AtomicI64>) -> Flood {
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let per = total / conns as u64;
        let threads = (0..conns)
            .map(|t| {
                let (sent, stop, clock) = (sent.clone(), stop.clone(), clock.clone());
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(addr).unwrap();
                    let mut i = 0;
                    let deadline = Instant::now() + Duration::from_secs(240);
                    while i < per && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let ts = clock.load(Ordering::Relaxed);
                        let mut batch = String::new();
                        let n = (per - i).min(500);
                        for _ in 0..n {
                            // Long keys: the log fills with few lines. Quarters: exact sums.
                            batch.push_str(&format!(
                                "storage.flood.connection.{t}.key.{} {} {ts}\n",
                                i % 13,
                                (i % 97) as f64 / 4.0
                            ));
                            i += 1;
                        }
                        stream.write_all(batch.as_bytes()).unwrap();
                        sent.fetch_add(n, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Flood {
            sent,
            stop,
            threads,
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits for every sender to have written all it was asked to (or to be stopped).
    fn join(self) -> u64 {
        for t in self.threads {
            t.join().expect("a sender failed");
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// An event clock the test can freeze: now, unless frozen.
fn live_clock() -> (Arc<AtomicI64>, Arc<AtomicBool>, Arc<AtomicBool>) {
    let clock = Arc::new(AtomicI64::new(now_secs()));
    let frozen = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (c, f, d) = (clock.clone(), frozen.clone(), done.clone());
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !d.load(Ordering::Relaxed) && Instant::now() < deadline {
            if !f.load(Ordering::Relaxed) {
                c.store(now_secs(), Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (clock, frozen, done)
}

fn write_config(path: &Path, extra: &str) {
    let text = format!(
        "[checkpoint]\ninterval_ms = 200\nkeep = 3\n\n[log]\nsegment_bytes = \"1MiB\"\n{extra}"
    );
    std::fs::write(path, text).unwrap();
}

fn serve_args(config: &Path, udp: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--config",
        config.to_str().unwrap(),
        "--cores",
        "2",
        "--window",
        "1s",
        "--allowed-lateness",
        "5s",
        "--listen",
        "graphite+tcp://127.0.0.1:0?name=g",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if udp {
        args.extend([
            "--listen".into(),
            "graphite+udp://127.0.0.1:0?name=u".into(),
        ]);
    }
    args
}

fn start(data: &Path, args: &[String]) -> Sluice {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Sluice::start(data, &refs)
}

fn readyz(sluice: &Sluice) -> (u16, String) {
    sluice.http_get("/readyz")
}

/// Waits until the log holds `sent` lines and every one is counted once in the aggregates.
fn assert_all_logged_and_counted_once(data: &Path, sluice: &Sluice, sent: u64) {
    let mut logged = 0;
    let all = wait_for(Duration::from_secs(60), || {
        logged = oracle(data).1;
        logged >= sent
    });
    assert!(all, "{logged} of {sent} lines sent are in the log");
    assert_eq!(logged, sent, "more lines logged than sent");
    assert_exactly_once(data, sluice);
}

#[test]
fn disk_full_under_flat_out_tcp_blocks_senders_and_loses_nothing_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("mnt"), 64) else {
        return;
    };
    // The tmpfs is the data dir; the child's stderr log lies beside it, off the tmpfs.
    let data = fs.dir.clone();
    let config = tmp.path().join("sluice.toml");
    write_config(&config, "");
    let args = serve_args(&config, false);
    let mut sluice = start(&data, &args);
    // ~60 bytes a line: 600k lines are ~38 MiB of log, more than the 8 MiB left and what
    // the sockets' buffers hold, less than the tmpfs holds once the filler is gone.
    let filler = fs.fill(8 << 20);
    let (clock, _frozen, done) = live_clock();
    let total = 600_000;
    let flood = Flood::start(sluice.addr("g"), 2, total, clock);

    let full = wait_for(Duration::from_secs(120), || {
        readyz(&sluice) == (503, "storage".to_string())
    });
    assert!(full, "never reported storage failure:\n{}", sluice.stderr());
    // Each core fills its own partition; once both hold their input, senders wait: while
    // the disk stays full the log takes no more lines.
    let both = wait_for(Duration::from_secs(120), || {
        sluice.metric("sluice_storage_failing", &[]) >= 2.0
    });
    assert!(both, "one core never filled up:\n{}", sluice.stderr());
    let (logged, sent) = (sluice.metric("sluice_lines_total", &[]), flood.sent());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(readyz(&sluice).0, 503);
    assert_eq!(sluice.metric("sluice_lines_total", &[]), logged);
    assert!(sent < total, "every line went out while the disk was full");
    // Once the sockets' buffers are full, the senders wait in the kernel.
    let blocked = wait_for(Duration::from_secs(30), || {
        let before = flood.sent();
        std::thread::sleep(Duration::from_millis(300));
        flood.sent() == before
    });
    assert!(blocked, "senders kept sending while the disk was full");

    std::fs::remove_file(&filler).unwrap();
    let sent = flood.join();
    assert_eq!(sent, total);
    assert!(
        wait_for(Duration::from_secs(60), || readyz(&sluice).0 == 200),
        "not ready again after space was freed"
    );
    assert!(sluice.child.try_wait().unwrap().is_none(), "sluice exited");
    assert!(sluice.metric("sluice_storage_errors_total", &[]) > 0.0);
    assert!(sluice.metric("sluice_storage_blocked_seconds_total", &[]) > 0.0);
    assert_all_logged_and_counted_once(&data, &sluice, total);
    let stderr = sluice.stderr();
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(!stderr.contains("File exists"), "{stderr}");
    done.store(true, Ordering::Relaxed);
    assert!(sluice.stop().success());
}

#[test]
fn disk_full_at_a_window_close_writes_the_row_once_space_returns_even_across_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("mnt"), 64) else {
        return;
    };
    // The tmpfs is the data dir; the child's stderr log lies beside it, off the tmpfs.
    let data = fs.dir.clone();
    let config = tmp.path().join("sluice.toml");
    write_config(&config, "");
    let args = serve_args(&config, false);
    let sluice = start(&data, &args);
    // The log's preallocated segments take these lines; the aggregates file, at the
    // windows' close, finds no room.
    let filler = fs.fill(0);
    let mut conn = TcpStream::connect(sluice.addr("g")).unwrap();
    let ts = now_secs();
    let lines: String = (0..1_000)
        .map(|i| format!("storage.row.{} {} {ts}\n", i % 7, i % 5))
        .collect();
    conn.write_all(lines.as_bytes()).unwrap();
    drop(conn);
    let failed = wait_for(Duration::from_secs(60), || {
        sluice.metric("sluice_storage_errors_total", &["op=\"aggregates\""]) > 0.0
    });
    assert!(
        failed,
        "no aggregates write failed ({} windows closed, {} free):\n{}",
        sluice.metric("sluice_windows_closed_total", &[]),
        fs.free_bytes(),
        sluice.stderr()
    );
    assert_eq!(readyz(&sluice), (503, "storage".to_string()));
    // Checkpoints taken meanwhile must not name the rows that are not in the file: a
    // restart from them cuts the file back to a length it has.
    let checkpoints = sluice.metric("sluice_checkpoint_failures_total", &[]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            sluice.metric("sluice_checkpoint_failures_total", &[]) > checkpoints
        }),
        "no checkpoint was tried while the rows were unwritten"
    );
    drop(sluice); // kill -9 while the disk is full
    std::fs::remove_file(&filler).unwrap();
    let sluice = start(&data, &args);
    assert_all_logged_and_counted_once(&data, &sluice, 1_000);
    assert!(sluice.stop().success());
}

#[test]
fn a_log_directory_made_immutable_for_10_s_loses_nothing_and_needs_no_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("sluice.toml");
    write_config(&config, "");
    let args = serve_args(&config, false);
    let mut sluice = start(&data, &args);
    let partitions: Vec<PathBuf> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let chattr = |flag: &str| {
        for p in &partitions {
            let ok = Command::new("chattr").arg(flag).arg(p).status();
            assert!(
                ok.is_ok_and(|s| s.success()),
                "chattr {flag} {} failed (is the file system ext4 and are we root?)",
                p.display()
            );
        }
    };
    let (clock, _frozen, done) = live_clock();
    chattr("+i");
    let total = 200_000;
    let flood = Flood::start(sluice.addr("g"), 2, total, clock);
    let failed = wait_for(Duration::from_secs(60), || {
        sluice.metric("sluice_storage_failing", &[]) >= 1.0
    });
    let held_at = Instant::now();
    if !failed {
        chattr("-i");
        panic!("writes never failed:\n{}", sluice.stderr());
    }
    std::thread::sleep(Duration::from_secs(10).saturating_sub(held_at.elapsed()));
    chattr("-i");
    let sent = flood.join();
    assert_eq!(sent, total);
    assert!(wait_for(Duration::from_secs(60), || readyz(&sluice).0 == 200));
    assert!(sluice.child.try_wait().unwrap().is_none(), "sluice exited");
    assert_all_logged_and_counted_once(&data, &sluice, total);
    assert!(sluice.stderr().contains("Operation not permitted"));
    done.store(true, Ordering::Relaxed);
    assert!(sluice.stop().success());
}

#[test]
fn sigstop_for_20_s_under_tcp_and_udp_load_counts_every_logged_event_and_none_as_late() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("sluice.toml");
    write_config(&config, "");
    let args = serve_args(&config, true);
    let sluice = start(&data, &args);
    let (clock, frozen, done) = live_clock();
    let tcp = Flood::start(sluice.addr("g"), 2, 2_000_000, clock.clone());
    // UDP at a bounded rate: 20 s of it overflow the socket's receive buffer.
    let udp_sent = Arc::new(AtomicU64::new(0));
    let udp_stop = Arc::new(AtomicBool::new(false));
    let udp = {
        let (sent, stop, clock) = (udp_sent.clone(), udp_stop.clone(), clock.clone());
        let addr = sluice.addr("u");
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let ts = clock.load(Ordering::Relaxed);
                for _ in 0..20 {
                    let line = format!("storage.udp.{} {} {ts}\n", i % 11, (i % 13) as f64 / 4.0);
                    if socket.send_to(line.as_bytes(), addr).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let pid = sluice.child.id();
    assert!(wait_for(Duration::from_secs(30), || {
        sluice.metric("sluice_lines_total", &["listener=\"u\""]) > 1_000.0
            && sluice.metric("sluice_lines_total", &["listener=\"g\""]) > 10_000.0
    }));
    // Events queued while sluice is stopped carry the time they were sent at most: the
    // event clock stands still meanwhile, so none of them is late by its own time.
    frozen.store(true, Ordering::Relaxed);
    signal(pid, "STOP");
    std::thread::sleep(Duration::from_secs(20));
    signal(pid, "CONT");
    udp_stop.store(true, Ordering::Relaxed);
    tcp.stop.store(true, Ordering::Relaxed);
    udp.join().unwrap();
    let tcp_sent = tcp.join();
    let udp_sent = udp_sent.load(Ordering::Relaxed);
    frozen.store(false, Ordering::Relaxed);

    // Every TCP line sent reaches the log; every datagram is logged or counted as dropped.
    let settled = wait_for(Duration::from_secs(60), || {
        let tcp_logged = sluice.metric("sluice_lines_total", &["listener=\"g\""]);
        let udp_logged = sluice.metric("sluice_lines_total", &["listener=\"u\""]);
        let dropped = sluice.metric("sluice_udp_dropped_total", &["listener=\"u\""]);
        tcp_logged as u64 == tcp_sent && (udp_logged + dropped) as u64 == udp_sent
    });
    let udp_logged = sluice.metric("sluice_lines_total", &["listener=\"u\""]);
    let dropped = sluice.metric("sluice_udp_dropped_total", &["listener=\"u\""]);
    assert!(
        settled,
        "tcp: {} of {tcp_sent} logged; udp: {udp_logged} logged + {dropped} dropped of {udp_sent}",
        sluice.metric("sluice_lines_total", &["listener=\"g\""]),
    );
    assert!(
        dropped > 0.0,
        "the stop should have overflowed the UDP buffer"
    );
    assert_exactly_once(&data, &sluice);
    assert_eq!(sluice.metric("sluice_late_events_total", &[]), 0.0);
    done.store(true, Ordering::Relaxed);
    assert!(sluice.stop().success());
}
