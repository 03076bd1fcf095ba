//! `sluice replay`: a live run's log replayed with its own configuration writes the rows the
//! live run closed (and those of the windows it left open); with another configuration, the
//! rows and alert transitions of that one, checked against the tests' own arithmetic over
//! `sluice log dump`; the data dir is left exactly as it was, torn tail included, also while
//! a serve runs on it; a non-empty --out and bad arguments exit 2; --from/--to keep the lines
//! logged between them; an experiment the live run did not have splits the replayed events;
//! a full disk under --out makes the replay wait, not fail or lose a row.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{Rows, Sluice, aggregate_lines, read_aggregates, run, wait_for};

/// The live runs' configuration: two cores, one Graphite listener `g`, 1 s windows with
/// 10 s windows composed from them, small log segments.
fn live_config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"cores = 2

[[listener]]
name = "g"
proto = "tcp"
addr = "127.0.0.1:0"
format = "graphite"

[log]
segment_bytes = "1MiB"

[window]
sizes = ["1s", "10s"]
allowed_lateness = "2s"

[checkpoint]
interval_ms = 500
{extra}"#
    );
    let path = dir.join("live.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A replay configuration: the listener `g` as the log knows it, and `rest`.
fn replay_config(dir: &Path, name: &str, rest: &str) -> PathBuf {
    let text = format!(
        "[[listener]]\nname = \"g\"\nproto = \"tcp\"\naddr = \"127.0.0.1:0\"\nformat = \"graphite\"\n\n{rest}"
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `sluice replay --data-dir DIR --config CONFIG --out OUT ARGS`.
fn replay(data_dir: &Path, config: &Path, out: &Path, args: &[&str]) -> Output {
    let mut all = vec![
        "replay",
        "--data-dir",
        path_str(data_dir),
        "--config",
        path_str(config),
        "--out",
        path_str(out),
    ];
    all.extend_from_slice(args);
    run(&all)
}

/// Runs a replay that must succeed; returns its summary line.
fn replay_ok(data_dir: &Path, config: &Path, out: &Path, args: &[&str]) -> String {
    let o = replay(data_dir, config, out, args);
    assert!(
        o.status.success(),
        "replay failed: {}\n{}",
        o.status,
        stderr(&o)
    );
    let summary = stdout(&o);
    assert!(summary.starts_with("replayed "), "{summary}");
    assert!(
        !stderr(&o).contains("lines/s"),
        "no progress bar when stderr is not a terminal: {}",
        stderr(&o)
    );
    summary
}

/// The `N` of `replayed N lines` in a summary.
fn summary_lines(summary: &str) -> u64 {
    summary
        .strip_prefix("replayed ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no line count in {summary}"))
}

/// Wall-clock ms since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sends, over `conns` connections at once, `rounds` rounds of lines 100 ms apart: each
/// connection `c` has its own keys, `ts.c{c}` with the current second as its timestamp and
/// `nots.c{c}` without one (so each key comes from one connection, one partition). Returns
/// the lines sent.
fn send_live(addr: SocketAddr, conns: usize, rounds: usize) -> usize {
    let mut streams: Vec<TcpStream> = (0..conns)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let mut sent = 0;
    for round in 0..rounds {
        let secs = now_ms() / 1000;
        for (c, s) in streams.iter_mut().enumerate() {
            let mut text = String::new();
            for i in 0..3 {
                let v = (round * 7 + i * 3 + c) % 11;
                text.push_str(&format!("ts.c{c} {v} {secs}\n"));
                text.push_str(&format!("nots.c{c} {}\n", v + 1));
                sent += 2;
            }
            s.write_all(text.as_bytes()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    sent
}

/// Waits until the log holds `lines` lines (as `sluice log dump` reads them).
fn wait_logged(data_dir: &Path, lines: usize) {
    assert!(
        wait_for(Duration::from_secs(20), || dump(data_dir).len() >= lines),
        "the log did not get {lines} lines"
    );
}

/// One logged line, as `sluice log dump --json` prints it.
#[derive(Debug, Clone)]
struct Logged {
    ingest_ms: i64,
    line: String,
}

fn dump(data_dir: &Path) -> Vec<Logged> {
    let o = run(&["log", "dump", "--data-dir", path_str(data_dir), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Logged {
                ingest_ms: v["ingest_time_ms"].as_i64().unwrap(),
                line: v["line"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// The rows of tumbling windows of `size_ms` that the logged Graphite lines make, computed
/// here: a line's time is its timestamp, else its ingest time.
fn expected_rows(logged: &[Logged], size_ms: i64, window: &str) -> Rows {
    let mut rows = Rows::new();
    for l in logged {
        let mut parts = l.line.split(' ');
        let key = parts.next().unwrap();
        let value: f64 = parts.next().unwrap().parse().unwrap();
        let time_ms = parts
            .next()
            .map_or(l.ingest_ms, |t| t.parse::<i64>().unwrap() * 1000);
        let start = time_ms.div_euclid(size_ms) * size_ms;
        crate::harness::expect(&mut rows, key, window, start, value);
    }
    rows
}

/// Every aggregates row under `data_dir` as parsed JSON.
fn json_rows(data_dir: &Path) -> Vec<serde_json::Value> {
    aggregate_lines(data_dir)
        .into_iter()
        .map(|(_, l)| serde_json::from_str(&l).unwrap())
        .collect()
}

/// Every alerts row under `data_dir`, shard by shard.
fn alert_rows(data_dir: &Path) -> Vec<serde_json::Value> {
    crate::harness::record_rows(data_dir, "alerts")
}

/// One open window of a checkpoint: key, size, start, count, sum.
type OpenWindow = (String, i64, i64, u64, f64);

/// The open windows of the newest checkpoint of `data_dir`.
fn open_windows(data_dir: &Path) -> Vec<OpenWindow> {
    let o = run(&["checkpoint", "inspect", "--data-dir", path_str(data_dir)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut out = Vec::new();
    for shard in v["checkpoint"]["shards"].as_array().unwrap() {
        for w in shard["windows"].as_array().unwrap() {
            out.push((
                w["key"].as_str().unwrap().to_string(),
                w["size_ms"].as_i64().unwrap(),
                w["start_ms"].as_i64().unwrap(),
                w["agg"]["count"].as_u64().unwrap(),
                w["agg"]["sum"].as_f64().unwrap(),
            ));
        }
    }
    out
}

/// Rows as a multiset of their JSON text (serde_json writes the fields in their order).
fn multiset(rows: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in rows {
        *out.entry(r.to_string()).or_insert(0) += 1;
    }
    out
}

/// A live run on `data_dir` with `live.toml`: lines with and without timestamps over four
/// connections for about 2.5 s, a pause for windows to close, then SIGTERM (and its final
/// checkpoint). Returns the lines sent.
fn live_run(data_dir: &Path, config: &Path) -> usize {
    let sluice = Sluice::start(data_dir, &["--config", path_str(config)]);
    let sent = send_live(sluice.addr("g"), 4, 25);
    wait_logged(data_dir, sent);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(sluice.stop().success());
    sent
}

#[test]
fn replay_with_the_live_config_writes_the_rows_the_live_run_closed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = live_config(dir.path(), "");
    let sent = live_run(&data_dir, &config);
    let live = json_rows(&data_dir);
    let open = open_windows(&data_dir);
    assert!(
        live.len() > 10,
        "the live run closed windows: {}",
        live.len()
    );
    assert!(
        live.iter().any(|r| r["key"] == "nots.c0") && live.iter().any(|r| r["key"] == "ts.c3"),
        "rows of lines with and without timestamps"
    );

    let out = dir.path().join("out");
    let summary = replay_ok(&data_dir, &config, &out, &[]);
    assert_eq!(summary_lines(&summary), sent as u64, "{summary}");
    let replayed = json_rows(&out);

    // Every row the live run wrote, identical.
    let mut rest = multiset(&replayed);
    for row in &live {
        let text = row.to_string();
        match rest.get_mut(&text) {
            Some(n) if *n > 0 => *n -= 1,
            _ => panic!("the replay lacks the live row {text}\nreplay:\n{replayed:#?}"),
        }
    }
    // The others are the windows the live run still held open when it stopped: each holds
    // what the checkpoint held of its key in it (a 10 s window, its own part and its 1 s
    // windows still open), and every open window has its row.
    let extra: Vec<serde_json::Value> = rest
        .iter()
        .flat_map(|(text, n)| std::iter::repeat_n(text, *n))
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    for row in &extra {
        let (key, start, end) = (
            row["key"].as_str().unwrap(),
            row["start_ms"].as_i64().unwrap(),
            row["end_ms"].as_i64().unwrap(),
        );
        let parts: Vec<&OpenWindow> = open
            .iter()
            .filter(|w| w.0 == key && w.2 >= start && w.2 + w.1 <= end)
            .collect();
        let count: u64 = parts.iter().map(|w| w.3).sum();
        let sum: f64 = parts.iter().map(|w| w.4).sum();
        assert!(
            count > 0,
            "a row the live run neither wrote nor held: {row}"
        );
        assert_eq!(row["count"].as_u64().unwrap(), count, "{row}");
        assert_eq!(row["sum"].as_f64().unwrap(), sum, "{row}");
    }
    for w in &open {
        assert!(
            extra.iter().any(|r| r["key"] == w.0.as_str()
                && r["start_ms"] == w.2
                && r["end_ms"].as_i64().unwrap() - r["start_ms"].as_i64().unwrap() == w.1),
            "no row for the open window {w:?}"
        );
    }
    // The end of the data closed every window.
    let end = open_windows(&out);
    assert!(end.is_empty(), "{end:?}");

    // OUT's checkpoint names its records: a serve on OUT goes on from there and keeps them.
    let serve_out = Sluice::start(&out, &["--config", path_str(&config)]);
    assert!(serve_out.stop().success());
    assert_eq!(multiset(&json_rows(&out)), multiset(&replayed));
}

#[test]
fn replay_with_another_config_writes_its_windows_and_alert_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = live_config(dir.path(), "");
    let sluice = Sluice::start(&data_dir, &["--config", path_str(&config)]);
    // api.errors: eight a second for three seconds, then one a second for five.
    let mut conn = TcpStream::connect(sluice.addr("g")).unwrap();
    for (per_second, seconds) in [(8, 3), (1, 5)] {
        for _ in 0..seconds {
            let began = Instant::now();
            for _ in 0..per_second {
                let secs = now_ms() / 1000;
                conn.write_all(format!("api.errors 1 {secs}\napi.latency 5\n").as_bytes())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(1000 / per_second as u64 / 2));
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(began.elapsed()));
        }
    }
    drop(conn);
    wait_logged(&data_dir, 2 * (8 * 3 + 5));
    assert!(sluice.stop().success());
    let logged = dump(&data_dir);

    let other = replay_config(
        dir.path(),
        "other.toml",
        r#"[window]
sizes = ["2s"]
allowed_lateness = "2s"
quantiles = []

[[alert]]
name = "errors_high"
key = "api.errors"
value = "count"
above = 3
"#,
    );
    let out = dir.path().join("out");
    let summary = replay_ok(&data_dir, &other, &out, &[]);
    assert_eq!(summary_lines(&summary), logged.len() as u64);
    let expected = expected_rows(&logged, 2000, "2s");
    assert_eq!(read_aggregates(&out), expected);
    assert!(
        json_rows(&out)
            .iter()
            .all(|r| r["window"] == "2s" && r.get("p50").is_none()),
        "only the replay's windows and aggregates"
    );

    // The rule sees the 2 s windows of api.errors in turn: it fires at the first above 3 and
    // resolves at the first after that at or below 3.
    let counts: Vec<(i64, u64)> = expected
        .iter()
        .filter(|((k, _, _), _)| k == "api.errors")
        .map(|((_, _, start), row)| (*start, row.count))
        .collect();
    let fires = counts.iter().find(|(_, c)| *c > 3).expect("a breach").0;
    let resolves = counts
        .iter()
        .find(|(s, c)| *s > fires && *c <= 3)
        .expect("a window back below")
        .0;
    let rows = alert_rows(&out);
    let at = |state: &str| {
        rows.iter()
            .find(|r| r["state"] == state)
            .unwrap_or_else(|| panic!("no {state} row in {rows:#?}"))
    };
    assert_eq!(at("firing")["start_ms"], fires, "{rows:#?}");
    assert_eq!(at("firing")["alert"], "errors_high");
    assert_eq!(at("firing")["key"], "api.errors");
    assert_eq!(at("resolved")["start_ms"], resolves, "{rows:#?}");
    assert!(
        summary.contains(&format!("{} alert transitions", rows.len())),
        "{summary}"
    );
}

/// Everything about a directory tree that a writer would change: each entry's kind, size,
/// modification time and, for files, bytes.
type Snapshot = BTreeMap<PathBuf, (bool, u64, SystemTime, Vec<u8>)>;

fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let meta = std::fs::metadata(&dir).unwrap();
        out.insert(
            dir.strip_prefix(root).unwrap().to_path_buf(),
            (true, 0, meta.modified().unwrap(), Vec::new()),
        );
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path);
            } else {
                out.insert(
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    (
                        false,
                        meta.len(),
                        meta.modified().unwrap(),
                        std::fs::read(&path).unwrap(),
                    ),
                );
            }
        }
    }
    out
}

/// Asserts two snapshots are the same, naming what differs.
fn assert_same(before: &Snapshot, after: &Snapshot) {
    let names = |s: &Snapshot| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(before), names(after), "the listing changed");
    for (path, b) in before {
        let a = &after[path];
        assert!(
            a == b,
            "{} changed: size {} → {}, mtime {:?} → {:?}, bytes equal: {}",
            path.display(),
            b.1,
            a.1,
            b.2,
            a.2,
            a.3 == b.3
        );
    }
}

/// Flips a payload byte of the last batch of the newest segment of the first partition that
/// has one: a torn tail. Returns the partition.
fn tear_last_batch(data_dir: &Path) -> u16 {
    for partition in 0..2u16 {
        let dir = data_dir.join("log").join(format!("p{partition:03}"));
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segments.sort();
        let path = segments.last().unwrap();
        let mut bytes = std::fs::read(path).unwrap();
        let Some(last) = bytes.windows(4).rposition(|w| w == b"SLCB") else {
            continue;
        };
        bytes[last + 40] ^= 0x20;
        std::fs::write(path, bytes).unwrap();
        return partition;
    }
    panic!("no partition holds a batch");
}

#[test]
fn replay_writes_nothing_in_the_data_dir_and_stops_at_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = live_config(dir.path(), "");
    let sent = live_run(&data_dir, &config);
    let intact = dump(&data_dir).len();
    assert_eq!(intact, sent);
    let torn = tear_last_batch(&data_dir);
    let readable = dump(&data_dir).len();
    assert!(readable < intact, "the torn batch is not read");

    let before = snapshot(&data_dir);
    let out = dir.path().join("out");
    let o = replay(&data_dir, &config, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("replay stopped at the last valid batch")
            && stderr(&o).contains(&format!("partition={torn}")),
        "the replay says where it stopped: {}",
        stderr(&o)
    );
    assert_eq!(summary_lines(&stdout(&o)), readable as u64);
    assert!(!json_rows(&out).is_empty());
    assert_same(&before, &snapshot(&data_dir));
    // The tail is still there for serve's recovery to cut.
    assert_eq!(dump(&data_dir).len(), readable);
    let verify = run(&["log", "verify", "--data-dir", path_str(&data_dir)]);
    assert!(stdout(&verify).contains("torn tail"), "{}", stdout(&verify));
}

#[test]
fn replay_beside_a_serve_on_the_data_dir_reads_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Hour windows and checkpoints: a serve with no input then writes nothing of its own.
    let config = live_config(dir.path(), "").to_path_buf();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(r#"sizes = ["1s", "10s"]"#, r#"sizes = ["1h"]"#)
        .replace("interval_ms = 500", "interval_ms = 3600000");
    std::fs::write(&config, text).unwrap();
    let sluice = Sluice::start(&data_dir, &["--config", path_str(&config)]);
    let sent = send_live(sluice.addr("g"), 2, 5);
    wait_logged(&data_dir, sent);
    std::thread::sleep(Duration::from_millis(500));

    let before = snapshot(&data_dir);
    let out = dir.path().join("out");
    let summary = replay_ok(&data_dir, &config, &out, &[]);
    assert_eq!(summary_lines(&summary), sent as u64, "{summary}");
    let rows = read_aggregates(&out);
    assert_eq!(rows.values().map(|r| r.count).sum::<u64>(), sent as u64);
    assert_same(&before, &snapshot(&data_dir));

    // The serve still holds its data dir and takes input.
    let second = run(&[
        "serve",
        "--data-dir",
        path_str(&data_dir),
        "--config",
        path_str(&config),
    ]);
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(stderr(&second).contains("in use"), "{}", stderr(&second));
    let more = send_live(sluice.addr("g"), 1, 1);
    wait_logged(&data_dir, sent + more);
    assert!(sluice.stop().success());
}

#[test]
fn replay_refuses_a_non_empty_out_and_bad_arguments_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = live_config(dir.path(), "");
    let sluice = Sluice::start(&data_dir, &["--config", path_str(&config)]);
    assert!(sluice.stop().success());

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let o = replay(&data_dir, &config, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not empty") && stderr(&o).contains(path_str(&out)),
        "{}",
        stderr(&o)
    );
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(left.len(), 1, "nothing added to the refused --out");

    let inside = data_dir.join("replayed");
    let o = replay(&data_dir, &config, &inside, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("overlap"), "{}", stderr(&o));
    assert!(!inside.exists());

    let fresh = dir.path().join("fresh");
    let bad = replay_config(
        dir.path(),
        "bad.toml",
        "[window]\nsizes = [\"10s\"]\nallowed_latenes = \"1s\"\n",
    );
    let o = replay(&data_dir, &bad, &fresh, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("allowed_latenes") && stderr(&o).contains("line 9"),
        "{}",
        stderr(&o)
    );
    for args in [
        &["--from", "yesterday"][..],
        &["--from", "1800000000", "--to", "1700000000"],
        &["--cores", "0"],
    ] {
        let o = replay(&data_dir, &config, &fresh, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let o = replay(&dir.path().join("nothing"), &config, &fresh, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("holds no log"), "{}", stderr(&o));
    assert!(!fresh.exists(), "no refused run created --out");
}

#[test]
fn replay_from_and_to_keep_the_lines_logged_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = live_config(dir.path(), "");
    let sluice = Sluice::start(&data_dir, &["--config", path_str(&config)]);
    let mut sent = 0;
    for phase in 1..=3 {
        let mut conn = TcpStream::connect(sluice.addr("g")).unwrap();
        for i in 0..20 {
            conn.write_all(format!("p{phase}.x {i}\n").as_bytes())
                .unwrap();
            sent += 1;
        }
        drop(conn);
        wait_logged(&data_dir, sent);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(sluice.stop().success());
    let logged = dump(&data_dir);
    let times = |phase: &str| -> Vec<i64> {
        logged
            .iter()
            .filter(|l| l.line.starts_with(phase))
            .map(|l| l.ingest_ms)
            .collect()
    };
    let (p1, p2, p3) = (times("p1."), times("p2."), times("p3."));
    assert!(p1.iter().max() < p2.iter().min() && p2.iter().max() < p3.iter().min());
    let from = *p2.iter().min().unwrap();
    let to = *p3.iter().min().unwrap();

    let hour = replay_config(
        dir.path(),
        "hour.toml",
        "[window]\nsizes = [\"1h\"]\nquantiles = []\n",
    );
    let out = dir.path().join("out");
    let from_arg = format!("{}.{:03}", from / 1000, from % 1000);
    let to_arg =
        humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(to as u64))
            .to_string();
    let summary = replay_ok(
        &data_dir,
        &hour,
        &out,
        &["--from", &from_arg, "--to", &to_arg],
    );
    assert_eq!(summary_lines(&summary), p2.len() as u64, "{summary}");
    let rows = read_aggregates(&out);
    assert!(rows.keys().all(|(k, _, _)| k == "p2.x"), "{rows:?}");
    assert_eq!(rows.values().map(|r| r.count).sum::<u64>(), 20);

    // From alone, and to alone.
    let out = dir.path().join("out-from");
    let summary = replay_ok(&data_dir, &hour, &out, &["--from", &from_arg]);
    assert_eq!(summary_lines(&summary), (p2.len() + p3.len()) as u64);
    let out = dir.path().join("out-to");
    let summary = replay_ok(&data_dir, &hour, &out, &["--to", &to_arg]);
    assert_eq!(summary_lines(&summary), (p1.len() + p2.len()) as u64);
}

#[test]
fn replay_tries_an_experiment_the_live_run_did_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listener = "[[listener]]\nname = \"events\"\nproto = \"tcp\"\naddr = \"127.0.0.1:0\"\n\
                    format = \"json\"\nkey = \"page\"\nvalue = \"ms\"\n";
    let base = format!(
        "cores = 2\n{listener}\n[log]\nsegment_bytes = \"1MiB\"\n\n[window]\nsizes = [\"1s\"]\n"
    );
    let live = dir.path().join("live.toml");
    std::fs::write(&live, &base).unwrap();
    let sluice = Sluice::start(&data_dir, &["--config", path_str(&live)]);
    let mut conn = TcpStream::connect(sluice.addr("events")).unwrap();
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!(
            "{{\"page\":\"checkout\",\"ms\":{},\"user_id\":\"u{}\"}}\n",
            10 + i % 7,
            i % 40
        ));
    }
    conn.write_all(text.as_bytes()).unwrap();
    drop(conn);
    wait_logged(&data_dir, 200);
    assert!(sluice.stop().success());

    let split = dir.path().join("split.toml");
    std::fs::write(
        &split,
        format!(
            "{base}\n[[experiment]]\nname = \"checkout\"\nlistener = \"events\"\n\
             unit = \"user_id\"\narms = {{ control = 50, treatment = 50 }}\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let summary = replay_ok(&data_dir, &split, &out, &[]);
    assert!(summary.contains("experiment rows"), "{summary}");
    let mut rows = Vec::new();
    for shard in std::fs::read_dir(out.join("experiments")).unwrap() {
        for seg in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            for line in std::fs::read_to_string(seg.unwrap().path())
                .unwrap()
                .lines()
            {
                rows.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
            }
        }
    }
    let windows: Vec<&serde_json::Value> = rows.iter().filter(|r| r["scope"] == "window").collect();
    assert!(!windows.is_empty(), "{rows:#?}");
    let mut n = 0;
    for r in &windows {
        assert_eq!(r["experiment"], "checkout");
        assert_eq!(r["none"], 0, "every line has the unit field");
        let arms = r["arms"].as_array().unwrap();
        let names: Vec<&str> = arms.iter().map(|a| a["arm"].as_str().unwrap()).collect();
        assert_eq!(names, ["control", "treatment"]);
        n += arms.iter().map(|a| a["n"].as_u64().unwrap()).sum::<u64>();
    }
    assert_eq!(n, 200, "each event in one arm of its window");
    // The aggregates carry the arm in the key; the live run's windows did not.
    let keys: Vec<String> = read_aggregates(&out).into_keys().map(|k| k.0).collect();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.starts_with("checkout;arm=")),
        "{keys:?}"
    );
    let live_keys: Vec<String> = open_windows(&data_dir).into_iter().map(|w| w.0).collect();
    assert!(
        !live_keys.is_empty() && live_keys.iter().all(|k| k == "checkout"),
        "{live_keys:?}"
    );
}

#[test]
fn replay_into_a_full_disk_waits_and_writes_every_row_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = live_config(dir.path(), "");
    let sluice = Sluice::start(&data_dir, &["--config", path_str(&config)]);
    let mut conn = TcpStream::connect(sluice.addr("g")).unwrap();
    let secs = now_ms() / 1000;
    let text: String = (0..3000)
        .map(|k| format!("disk.k{k} {k} {secs}\n"))
        .collect();
    conn.write_all(text.as_bytes()).unwrap();
    drop(conn);
    wait_logged(&data_dir, 3000);
    assert!(sluice.stop().success());

    let Some(fs) = crate::storage::Tmpfs::mount(&dir.path().join("mnt"), 16) else {
        return;
    };
    // Room for OUT's directories, not for its rows (about 1 MiB of them).
    let filler = fs.fill(64 * 1024);
    let out = dir.path().join("mnt").join("out");
    let one_second = replay_config(
        dir.path(),
        "one.toml",
        "[window]\nsizes = [\"1s\"]\nallowed_lateness = \"2s\"\n",
    );
    let mut child = std::process::Command::new(crate::harness::bin())
        .args(["replay", "--data-dir", path_str(&data_dir), "--config"])
        .arg(&one_second)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the replay waits while its rows do not fit"
    );
    std::fs::remove_file(filler).unwrap();
    let status = crate::harness::wait_timeout(&mut child, Duration::from_secs(60))
        .expect("the replay ends once there is room");
    let o = child.wait_with_output().unwrap();
    assert!(status.success(), "{status}: {}", stderr(&o));
    assert!(
        stderr(&o).contains("No space left on device"),
        "it waited for the disk: {}",
        stderr(&o)
    );
    let rows = read_aggregates(&out);
    assert_eq!(rows.len(), 3000);
    assert!(rows.values().all(|r| r.count == 1));
    drop(fs);
}
