//! Starting, feeding and stopping a real `sluice serve` child.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// Runs `sluice ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run sluice")
}

/// A running `sluice serve`.
pub struct Sluice {
    pub child: Child,
    pub data_dir: PathBuf,
    pub endpoints: serde_json::Value,
    stderr_log: PathBuf,
}

impl Sluice {
    /// Starts `sluice serve --data-dir DIR --admin 127.0.0.1:0 ARGS` and waits until ready.
    pub fn start(data_dir: &Path, args: &[&str]) -> Sluice {
        Sluice::spawn(data_dir, args, Command::new(bin()))
    }

    /// Like [`start`](Self::start), with soft and hard `RLIMIT_NOFILE` set to `nofile` (by the
    /// shell's `ulimit`, which then execs sluice: same pid, no `unsafe` pre-exec hook).
    pub fn start_with_nofile(data_dir: &Path, args: &[&str], nofile: u64) -> Sluice {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(bin());
        Sluice::spawn(data_dir, args, cmd)
    }

    /// Runs `cmd serve ...` (`cmd` ends up executing the sluice binary) and waits until ready.
    fn spawn(data_dir: &Path, args: &[&str], mut cmd: Command) -> Sluice {
        let stderr_log = data_dir.with_extension("stderr.log");
        let _ = std::fs::remove_file(data_dir.join("endpoints.json"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .unwrap();
        let child = cmd
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--admin", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn sluice");
        let mut s = Sluice {
            child,
            data_dir: data_dir.to_path_buf(),
            endpoints: serde_json::Value::Null,
            stderr_log,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice exited early with {status}:\n{}", self.stderr());
            }
            if let Ok(bytes) = std::fs::read(self.data_dir.join("endpoints.json"))
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
                && v["pid"] == self.child.id()
            {
                self.endpoints = v;
                if self.http_get("/readyz").0 == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sluice not ready in time:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        let l = self.endpoints["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name}: {}", self.endpoints));
        l["addr"].as_str().unwrap().parse().unwrap()
    }

    /// Admin address.
    pub fn admin(&self) -> SocketAddr {
        self.endpoints["admin"].as_str().unwrap().parse().unwrap()
    }

    /// GET `path` from the admin server: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin(), path)
    }

    /// Sum of a Prometheus series over all label sets whose labels contain every `filter`.
    pub fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        let (_, body) = self.http_get("/metrics");
        metric_sum(&body, name, filters)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        wait_timeout(&mut self.child, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("sluice did not stop:\n{}", self.stderr()))
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits for a child with a time bound.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.1 GET.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A GET with extra request headers: (status, response head lowercased, body).
pub fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Sum of a series in Prometheus text over label sets containing every filter.
pub fn metric_sum(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One aggregates row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// Every aggregates row by (key, window, start_ms).
pub type Rows = BTreeMap<(String, String, i64), Row>;

/// Folds `value` into the expected 1 s window row of `key` at `t_secs`: the tests' own
/// arithmetic, sharing no code with the window module.
pub fn expect_1s(rows: &mut Rows, key: &str, t_secs: i64, value: f64) {
    expect(rows, key, "1s", t_secs * 1000, value);
}

/// Folds `value` into the expected row of `key` in the `window` window starting at
/// `start_ms`.
pub fn expect(rows: &mut Rows, key: &str, window: &str, start_ms: i64, value: f64) {
    let row = rows
        .entry((key.to_string(), window.to_string(), start_ms))
        .or_insert(Row {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        });
    row.count += 1;
    row.sum += value;
    row.min = row.min.min(value);
    row.max = row.max.max(value);
}

/// Every line of the aggregates records under `data_dir` (`aggregates/s{NNN}/`, segments
/// in position order), with the segment file it is in.
pub fn aggregate_lines(data_dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(data_dir.join("aggregates")) else {
        return out;
    };
    let mut shards: Vec<PathBuf> = shards
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    shards.sort();
    for shard in shards {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&shard)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        segments.sort();
        for path in segments {
            // A segment may be deleted (retention) or cut (recovery) while it is read.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            out.extend(
                text.lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| (path.clone(), l.to_string())),
            );
        }
    }
    out
}

/// Every aggregates row, keyed by (key, window, start_ms); panics on a duplicate.
pub fn read_aggregates(data_dir: &Path) -> BTreeMap<(String, String, i64), Row> {
    let mut out = BTreeMap::new();
    for (path, line) in aggregate_lines(data_dir) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            // The last row of a segment being written may be torn for a moment.
            continue;
        };
        let key = (
            v["key"].as_str().unwrap().to_string(),
            v["window"].as_str().unwrap().to_string(),
            v["start_ms"].as_i64().unwrap(),
        );
        // A row of StatsD set members only has a count and a distinct count.
        let row = Row {
            count: v["count"].as_u64().unwrap(),
            sum: v["sum"].as_f64().unwrap_or(0.0),
            min: v["min"].as_f64().unwrap_or(f64::INFINITY),
            max: v["max"].as_f64().unwrap_or(f64::NEG_INFINITY),
        };
        assert!(
            out.insert(key.clone(), row).is_none(),
            "duplicate aggregate row {key:?} in {path:?}"
        );
    }
    out
}

/// Polls until `check` holds or the limit passes; returns whether it held.
pub fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wall-clock seconds since the epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Is a command on PATH?
/// Whether a test may go on without something it needs: yes when `present`; otherwise it
/// says so and skips on a developer's machine, and fails under `CI=true` (`.ci/run` installs
/// everything the tests need, so a skip there would read as a pass).
pub fn require(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{what} is missing under CI=true; .ci/run installs it"
    );
    eprintln!("skipped: {what} is missing");
    false
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A workload of past 10 s windows (event time) for the query tests: t0 holds room.a once;
/// t0+10 holds room.b ×5, room.a ×3, hall ×2; `tick` at t0+31 moves the watermark to t0+26
/// (with 5 s allowed lateness), closing both; the window of t0+30 stays open with room.a ×4
/// and tick. Graphite lines; `t0` is a multiple of 10 s ten minutes back.
pub fn rooms_workload() -> (i64, Vec<String>) {
    let t0 = (now_secs() - 600) / 10 * 10;
    let mut lines = vec![format!("room.a 7 {}", t0 + 1)];
    lines.extend((0..5).map(|i| format!("room.b {} {}", 10 + i, t0 + 12)));
    lines.extend((0..3).map(|i| format!("room.a {} {}", 1 + i, t0 + 13)));
    lines.extend((0..2).map(|_| format!("hall 100 {}", t0 + 14)));
    lines.push(format!("tick 1 {}", t0 + 31));
    lines.extend((0..4).map(|i| format!("room.a {} {}", 20 + i, t0 + 32)));
    (t0, lines)
}

/// `sluice serve` on 2 cores with one 10 s window, allowed lateness `lateness`, and one
/// Graphite TCP listener named `listener`: the query and CLI tests' instance.
pub fn start_10s_graphite(data_dir: &Path, lateness: &str, listener: &str) -> Sluice {
    let spec = format!("graphite+tcp://127.0.0.1:0?name={listener}");
    Sluice::start(
        data_dir,
        &[
            "--cores",
            "2",
            "--window",
            "10s",
            "--allowed-lateness",
            lateness,
            "--listen",
            &spec,
        ],
    )
}

/// Reads a server-sent event stream into a string, on its own thread.
pub fn follow_stream(admin: SocketAddr, path: &str) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let mut conn = TcpStream::connect(admin).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let out = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                return;
            }
            out.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    // The stream starts at the records' ends when the server answers.
    assert!(wait_for(Duration::from_secs(10), || text
        .lock()
        .unwrap()
        .contains("retry:")));
    text
}

/// Every row of every shard's `kind` results record (`aggregates`, `alerts`, ...), shard by
/// shard, in record order.
pub fn record_rows(data_dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(data_dir.join(kind)) else {
        return out;
    };
    let mut shards: Vec<PathBuf> = shards.flatten().map(|e| e.path()).collect();
    shards.sort();
    for shard in shards {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&shard)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        segments.sort();
        for seg in segments {
            for line in std::fs::read_to_string(seg).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    out
}

/// A new data dir `to` holding a copy of `data_dir`'s log and nothing else: what a fresh
/// instance replays as the crash tests' oracle.
pub fn copy_log(data_dir: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    let copied = Command::new("cp")
        .arg("-r")
        .arg(data_dir.join("log"))
        .arg(to)
        .status()
        .unwrap();
    assert!(copied.success());
    to.to_path_buf()
}
