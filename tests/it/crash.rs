//! Exactly-once across kill -9: sluice under steady TCP load is SIGKILLed at random moments and
//! restarted at once; at the end an oracle that shares no code with the window module
//! recomputes every (key, window) from `sluice log dump` and must equal the aggregates output
//! exactly. Set `SLUICE_CRASH_SEED` to replay a failing run.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{Rows, Sluice, expect_1s, now_secs, read_aggregates, run, wait_for};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn seed() -> u64 {
    let seed = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed: SLUICE_CRASH_SEED={seed}");
    seed
}

/// Steady load: `threads` connections sending live Graphite lines, reconnecting to whatever
/// address the current instance has.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(target: Arc<Mutex<Option<SocketAddr>>>, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let handles = (0..threads)
            .map(|t| {
                let (stop, sent, target) = (stop.clone(), sent.clone(), target.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    let mut conn: Option<TcpStream> = None;
                    let deadline = Instant::now() + Duration::from_secs(150);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let Some(stream) = conn.as_mut() else {
                            let addr = *target.lock().unwrap();
                            conn = addr.and_then(|a| TcpStream::connect(a).ok());
                            if conn.is_none() {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            continue;
                        };
                        let now = now_secs();
                        let mut batch = String::new();
                        for _ in 0..50 {
                            // Quarters: every sum is exact in any order.
                            batch.push_str(&format!(
                                "crash.{t}.{} {} {now}\n",
                                i % 20,
                                (i % 97) as f64 / 4.0
                            ));
                            i += 1;
                        }
                        if stream.write_all(batch.as_bytes()).is_err() {
                            conn = None;
                        } else {
                            sent.fetch_add(50, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            threads: handles,
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// Recomputes every 1 s window from the log, with its own parsing and arithmetic.
pub(crate) fn oracle(data: &std::path::Path) -> (Rows, u64) {
    let dump = run(&["log", "dump", "--data-dir", data.to_str().unwrap()]);
    assert!(
        dump.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut rows = Rows::new();
    let mut lines = 0;
    for line in String::from_utf8(dump.stdout).unwrap().lines() {
        let mut f = line.split(' ');
        let (key, value, ts) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let value: f64 = value.parse().unwrap();
        let ts: i64 = ts.parse().unwrap();
        expect_1s(&mut rows, key, ts, value);
        lines += 1;
    }
    (rows, lines)
}

fn args(config: &std::path::Path) -> Vec<String> {
    [
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
    .collect()
}

fn start(data: &std::path::Path, args: &[String], target: &Mutex<Option<SocketAddr>>) -> Sluice {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let sluice = Sluice::start(data, &refs);
    *target.lock().unwrap() = Some(sluice.addr("g"));
    sluice
}

/// Waits until every logged line is in a closed window, then compares with the oracle. The
/// load has stopped, but what it sent may still be on its way into the log (a sluice that
/// is still replaying reads its sockets only afterwards): the log is read again after each
/// wait until a reading finds no line the one before it did not.
pub(crate) fn assert_exactly_once(data: &std::path::Path, sluice: &Sluice) {
    let (mut expected, mut lines) = oracle(data);
    let mut closed = false;
    for _ in 0..10 {
        closed = wait_for(Duration::from_secs(30), || {
            read_aggregates(data).values().map(|r| r.count).sum::<u64>() >= lines
        });
        let (again, more) = oracle(data);
        if !closed || more == lines {
            break;
        }
        (expected, lines) = (again, more);
    }
    let got = read_aggregates(data);
    if !closed || got != expected {
        let missing: Vec<_> = expected
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .take(5)
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|(k, _)| !expected.contains_key(*k))
            .take(5)
            .collect();
        panic!(
            "aggregates differ from the log: {} rows vs {} expected, {} events vs {lines} lines; late={}\nfirst differences: {missing:?}\nextra: {extra:?}",
            got.len(),
            expected.len(),
            got.values().map(|r| r.count).sum::<u64>(),
            sluice.metric("sluice_late_events_total", &[]),
        );
    }
}

#[test]
fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    let mut rng = Rng(seed());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("crash.toml");
    std::fs::write(&config, "[checkpoint]\ninterval_ms = 200\nkeep = 3\n").unwrap();
    let args = args(&config);
    let target = Arc::new(Mutex::new(None));
    let mut sluice = start(&data, &args, &target);
    let load = Load::start(target.clone(), 4);
    const KILLS: usize = 20;
    for round in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.range(100, 1200)));
        *target.lock().unwrap() = None;
        let pid = sluice.child.id();
        drop(sluice); // SIGKILL and reap.
        eprintln!("round {round}: killed {pid}");
        sluice = start(&data, &args, &target);
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent = load.finish();
    assert_exactly_once(&data, &sluice);
    let verify = run(&["log", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let (_, logged) = oracle(&data);
    eprintln!("sent {sent} lines, {logged} logged, {KILLS} kills");
    assert!(logged > 0 && logged <= sent);
    assert!(sluice.stop().success());
}

/// A sluice that checkpointed every 200 ms under load for 1.5 s, then was killed; the
/// load keeps going (to no target) until a restarted sluice takes it.
struct Checkpointed {
    data: std::path::PathBuf,
    args: Vec<String>,
    target: Arc<Mutex<Option<SocketAddr>>>,
    load: Load,
}

fn checkpointed_then_killed(tmp: &std::path::Path) -> Checkpointed {
    let data = tmp.join("data");
    let config = tmp.join("crash.toml");
    std::fs::write(&config, "[checkpoint]\ninterval_ms = 200\nkeep = 3\n").unwrap();
    let args = args(&config);
    let target = Arc::new(Mutex::new(None));
    let sluice = start(&data, &args, &target);
    let load = Load::start(target.clone(), 2);
    // Several checkpoints under load, so a newest one and one before it exist.
    let epoch = sluice.metric("sluice_checkpoint_last_epoch", &[]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            sluice.metric("sluice_checkpoint_last_epoch", &[]) >= epoch + 3.0
                && sluice.metric("sluice_window_events_total", &[]) > 0.0
        }),
        "no checkpoints under load"
    );
    *target.lock().unwrap() = None;
    drop(sluice);
    Checkpointed {
        data,
        args,
        target,
        load,
    }
}

impl Checkpointed {
    /// Starts sluice again, lets it take the load, stops the load and checks that every
    /// event sent was counted exactly once.
    fn resume(self) -> Sluice {
        let sluice = start(&self.data, &self.args, &self.target);
        // The load reaches the new instance before it stops.
        let before = self.load.sent.load(Ordering::Relaxed);
        assert!(
            wait_for(Duration::from_secs(30), || {
                self.load.sent.load(Ordering::Relaxed) > before + 1_000
            }),
            "the load never reached the restarted instance"
        );
        self.load.finish();
        assert_exactly_once(&self.data, &sluice);
        sluice
    }
}

#[test]
fn a_corrupt_newest_checkpoint_falls_back_to_the_one_before() {
    let tmp = tempfile::tempdir().unwrap();
    let killed = checkpointed_then_killed(tmp.path());
    let data = killed.data.clone();

    let mut checkpoints: Vec<_> = std::fs::read_dir(data.join("checkpoint"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    checkpoints.sort();
    assert!(
        checkpoints.len() >= 2,
        "want an older checkpoint to fall back to: {checkpoints:?}"
    );
    let newest = checkpoints.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(newest, bytes).unwrap();

    let sluice = killed.resume();
    let name = newest.file_name().unwrap().to_str().unwrap().to_string();
    let stderr = sluice.stderr();
    assert!(
        stderr.contains(&name) && stderr.to_lowercase().contains("warn"),
        "no warning naming {name}:\n{stderr}"
    );
    assert!(sluice.stop().success());
}

#[test]
fn a_checkpoint_of_another_body_version_is_replaced_by_a_full_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let killed = checkpointed_then_killed(tmp.path());
    let data = killed.data.clone();

    // The newest checkpoint as the build before composed windows wrote it (body version 1):
    // its windows cannot be restored exactly, so the whole log is replayed.
    let dir = data.join("checkpoint");
    let loaded = sluice::checkpoint::file::load_newest(&dir)
        .unwrap()
        .unwrap();
    let mut body = sluice::checkpoint::Body::decode(&loaded.body).unwrap();
    body.version = 1;
    sluice::checkpoint::file::write(&dir, loaded.epoch, &body.encode().unwrap()).unwrap();

    let sluice = killed.resume();
    let stderr = sluice.stderr();
    assert!(
        stderr.contains("replaying the whole log"),
        "no warning about the old checkpoint:\n{stderr}"
    );
    assert!(sluice.stop().success());
    let newest = sluice::checkpoint::file::load_newest(&dir)
        .unwrap()
        .unwrap();
    assert!(newest.epoch > loaded.epoch, "new checkpoints number on");
    assert_eq!(
        sluice::checkpoint::Body::decode(&newest.body)
            .unwrap()
            .version,
        sluice::checkpoint::BODY_VERSION
    );
}
