//! Connections cannot lock senders out: idle connections time out, a full listener makes room
//! by closing its longest-idle connection, and at the descriptor limit the cores neither spin
//! nor starve the rest of the process of descriptors.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{Sluice, wait_for};

/// Raises this test process's `RLIMIT_NOFILE` so it can hold `want` sockets: the soft limit to
/// the hard one, and the hard one too when it is lower (the tests run as root in CI). Fails
/// the test when that is not allowed: a skipped test would read as a passed one.
fn raise_own_nofile(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.map_or(want, |h| h.max(want));
    if now.current.is_some_and(|s| s >= hard) {
        return;
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    setrlimit(Resource::Nofile, raised).unwrap_or_else(|e| {
        panic!("cannot raise RLIMIT_NOFILE to {hard} (now {now:?}; run as root?): {e}")
    });
}

/// Opens `n` connections to `addr`, in order. The server may close some at once (refused or
/// displaced): they are still held here.
fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {i} of {n}: {e}"))
        })
        .collect()
}

/// How many of `conns` the server has closed (EOF or reset on a non-blocking read).
fn closed_by_server(conns: &[TcpStream]) -> usize {
    conns
        .iter()
        .filter(|c| {
            c.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            match (&**c).read(&mut byte) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != ErrorKind::WouldBlock,
            }
        })
        .count()
}

/// Sends `lines` lines on fresh connections until the server keeps one and counts them in
/// `sluice_lines_total{listener}` (a refused connection is closed unread, so its lines never
/// count). Returns how long that took.
fn send_until_counted(sluice: &Sluice, listener: &str, lines: usize, limit: Duration) -> Duration {
    let label = format!("listener=\"{listener}\"");
    let before = sluice.metric("sluice_lines_total", &[&label]);
    let payload: String = (0..lines).map(|i| format!("sender line {i}\n")).collect();
    let started = Instant::now();
    let mut attempts = 0;
    while started.elapsed() < limit {
        attempts += 1;
        let Ok(mut c) = TcpStream::connect_timeout(&sluice.addr(listener), Duration::from_secs(5))
        else {
            continue;
        };
        // A refused connection is closed before anything is read: the write may still work
        // (into the socket buffer) or fail with a reset; either way only the metric says.
        let _ = c.write_all(payload.as_bytes());
        let _ = c.shutdown(std::net::Shutdown::Write);
        let counted = wait_for(Duration::from_millis(500), || {
            sluice.metric("sluice_lines_total", &[&label]) >= before + lines as f64
        });
        if counted {
            return started.elapsed();
        }
    }
    panic!(
        "{lines} lines not counted after {attempts} attempts in {limit:?}:\n{}",
        sluice.stderr()
    );
}

/// Busy CPU seconds (user + system) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    let per_sec: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    ticks as f64 / per_sec
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn five_thousand_idle_connections_do_not_lock_a_new_sender_out() {
    const HOLDERS: usize = 5_000;
    const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
    raise_own_nofile(16_384);
    let tmp = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(
        &tmp.path().join("data"),
        &[
            "--cores",
            "2",
            "--listen",
            "raw+tcp://127.0.0.1:0?name=a&max_connections=500&idle_timeout=2s",
        ],
    );
    let addr = sluice.addr("a");
    let holders = hold(addr, HOLDERS);
    let open = sluice.metric("sluice_connections_open", &["listener=\"a\""]);
    assert!(open <= 1_000.0, "over the cap of 2 cores × 500: {open}");

    // A sender gets in within the idle timeout: the longest-idle holder makes room.
    let took = send_until_counted(&sluice, "a", 100, IDLE_TIMEOUT * 5);
    assert!(
        took < IDLE_TIMEOUT,
        "the sender waited {took:?}, longer than the idle timeout"
    );
    let displaced = sluice.metric("sluice_connections_displaced_total", &["listener=\"a\""]);
    let refused = sluice.metric("sluice_connections_refused_total", &["listener=\"a\""]);
    assert!(displaced > 0.0, "no connection was displaced");
    assert!(
        displaced + refused >= (HOLDERS - 1_000) as f64,
        "{displaced} displaced + {refused} refused of {HOLDERS} over a cap of 1000"
    );

    // Then every silent holder times out and is closed, and the core says so.
    let all_closed = wait_for(IDLE_TIMEOUT * 10, || {
        sluice.metric("sluice_connections_open", &["listener=\"a\""]) == 0.0
    });
    assert!(
        all_closed,
        "idle connections still open:\n{}",
        sluice.stderr()
    );
    let timed_out = sluice.metric("sluice_connections_timed_out_total", &["listener=\"a\""]);
    assert!(timed_out > 0.0, "no connection timed out");
    assert!(
        wait_for(Duration::from_secs(10), || closed_by_server(&holders)
            == HOLDERS),
        "{} of {HOLDERS} held connections closed by the server",
        closed_by_server(&holders)
    );
    let lines = sluice.metric("sluice_lines_total", &["listener=\"a\""]);
    assert_eq!(lines, 100.0, "only the sender's lines");
    assert!(sluice.stop().success());
}

#[test]
fn at_the_descriptor_limit_the_cores_do_not_spin_and_checkpoints_still_commit() {
    const NOFILE: u64 = 1_024;
    const CONNECTIONS: usize = 3_000;
    raise_own_nofile(16_384);
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("sluice.toml");
    std::fs::write(&config, "[checkpoint]\ninterval_ms = 500\nkeep = 3\n").unwrap();
    let sluice = Sluice::start_with_nofile(
        &tmp.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--cores",
            "2",
            "--listen",
            "raw+tcp://127.0.0.1:0?name=a",
        ],
        NOFILE,
    );
    let pid = sluice.child.id();
    let addr = sluice.addr("a");
    let held = hold(addr, CONNECTIONS);

    // Liveness, not a performance figure: with every connection slot taken and more
    // connections arriving than descriptors, the process idles instead of spinning.
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let mut scrapes = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        let (status, body) = sluice.http_get("/metrics");
        assert_eq!(status, 200, "/metrics at the descriptor limit");
        assert!(body.contains("sluice_connections_open"));
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let cores_busy = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let fds = open_fds(pid);
    eprintln!("at the limit: {cores_busy:.3} cores busy, {fds} descriptors, {scrapes} scrapes");
    assert!(
        cores_busy < 0.5,
        "sluice used {cores_busy:.2} cores while idle at the descriptor limit"
    );
    assert!(
        fds < NOFILE as usize - 128,
        "{fds} descriptors open: the reserve for files and admin is gone"
    );
    let open = sluice.metric("sluice_connections_open", &["listener=\"a\""]);
    let refused = sluice.metric("sluice_connections_refused_total", &["listener=\"a\""]);
    let displaced = sluice.metric("sluice_connections_displaced_total", &["listener=\"a\""]);
    assert!(open <= (NOFILE - 256) as f64, "{open} connections open");
    assert!(
        refused + displaced >= (CONNECTIONS as f64 - open),
        "{refused} refused + {displaced} displaced, {open} open of {CONNECTIONS}"
    );

    // A new sender still gets in (an idle connection makes room) and is logged.
    send_until_counted(&sluice, "a", 10, Duration::from_secs(20));

    // Once the connections close, a checkpoint still commits.
    drop(held);
    assert!(
        wait_for(Duration::from_secs(20), || {
            sluice.metric("sluice_connections_open", &["listener=\"a\""]) == 0.0
        }),
        "connections still open after the peers closed"
    );
    let committed = sluice.metric("sluice_checkpoints_total", &[]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            sluice.metric("sluice_checkpoints_total", &[]) >= committed + 2.0
        }),
        "no checkpoint committed after the connections closed:\n{}",
        sluice.stderr()
    );
    assert_eq!(sluice.metric("sluice_checkpoint_failures_total", &[]), 0.0);
    assert!(sluice.stderr().contains("open files limit"));
    assert!(sluice.stop().success());
}
