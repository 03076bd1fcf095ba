//! Experiments end to end: JSON lines over TCP split by their `user` field into arms, the
//! comparison rows in `experiments/`, `GET /api/v1/experiments` and `event: experiment`;
//! a split that is off its weights flags the sample-ratio mismatch; and across kill -9 the
//! rows equal what a run over the same log without crashes writes.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice::experiments::{Arms, HashKind};

use crate::harness::{Sluice, follow_stream, now_secs, signal, wait_for};

/// The treatment's values are this much higher.
const LIFT: f64 = 5.0;

fn write_config(dir: &Path, cores: u32) -> PathBuf {
    let text = format!(
        r#"cores = {cores}

[[listener]]
name = "events"
proto = "tcp"
addr = "127.0.0.1:0"
format = "json"
key = "name"
value = "ms"
time = "ts"

[window]
sizes = ["1s"]
allowed_lateness = "0s"
quantiles = [0.5]

[checkpoint]
interval_ms = 200

[[experiment]]
name = "checkout"
listener = "events"
unit = "user"
arms = {{ control = 50, treatment = 50 }}
"#
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn arms() -> Arms {
    Arms::new(
        [("control", 50.0), ("treatment", 50.0)],
        "checkout",
        HashKind::GrowthbookV2,
    )
    .unwrap()
}

/// `seconds` of events from `t0` (s): per second, `users` users of key `name`, each with a
/// value of 100 plus seeded noise in [-4, 4], plus [`LIFT`] in the treatment; every tenth
/// line has no user.
fn workload(name: &str, t0: i64, seconds: i64, users: u32, seed: u64) -> Vec<String> {
    let arms = arms();
    let mut state = seed;
    let mut lines = Vec::new();
    for s in 0..seconds {
        for u in 0..users {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((state >> 33) % 801) as f64 / 100.0 - 4.0;
            let ts = (t0 + s) * 1000 + i64::from(u % 1000);
            let user = format!("u-{u}-é");
            let lift = if arms.assign(&user) == Some(1) {
                LIFT
            } else {
                0.0
            };
            let ms = 100.0 + noise + lift;
            if u % 10 == 9 {
                lines.push(format!(r#"{{"name":"{name}","ms":{ms},"ts":{ts}}}"#));
            } else {
                lines.push(format!(
                    r#"{{"name":"{name}","ms":{ms},"ts":{ts},"user":"{user}"}}"#
                ));
            }
        }
    }
    lines
}

fn send(addr: SocketAddr, lines: &[String]) {
    let mut conn = TcpStream::connect(addr).unwrap();
    let mut text = lines.join("\n");
    text.push('\n');
    conn.write_all(text.as_bytes()).unwrap();
}

fn rows(data_dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    crate::harness::record_rows(data_dir, kind)
}

fn cumulative(data_dir: &Path, key: &str, end_ms: i64) -> Option<serde_json::Value> {
    rows(data_dir, "experiments").into_iter().find(|r| {
        r["key"] == key && r["scope"] == "cumulative" && r["end_ms"].as_i64() == Some(end_ms)
    })
}

#[test]
fn arms_are_compared_per_window_and_cumulatively_and_a_skewed_split_flags_srm() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), 2);
    let data_dir = tmp.path().join("data");
    let sluice = Sluice::start(&data_dir, &["--config", config.to_str().unwrap()]);
    let stream = follow_stream(sluice.admin(), "/api/v1/stream?prefix=checkout");
    let t0 = now_secs() - 120;
    // One connection, in time order: with no allowed lateness, a second connection read
    // alongside would make this one's events late.
    let mut lines = workload("checkout.latency", t0, 10, 400, 7);
    // 1,100 units in control and 900 in treatment, against 50/50 weights.
    let arms = arms();
    let (mut control, mut treatment) = (0, 0);
    let mut skewed = Vec::new();
    for u in 0.. {
        let user = format!("s-{u}");
        match arms.assign(&user) {
            Some(0) if control < 1100 => control += 1,
            Some(1) if treatment < 900 => treatment += 1,
            _ if control == 1100 && treatment == 900 => break,
            _ => continue,
        }
        let ts = (t0 + 10) * 1000 + (u % 1000);
        skewed.push(format!(
            r#"{{"name":"checkout.skewed","ms":1,"ts":{ts},"user":"{user}"}}"#
        ));
    }
    lines.extend(skewed);
    send(sluice.addr("events"), &lines);
    let end = (t0 + 11) * 1000;
    assert!(
        wait_for(Duration::from_secs(30), || cumulative(
            &data_dir,
            "checkout.skewed",
            end
        )
        .is_some()),
        "no cumulative row:\n{}",
        sluice.stderr()
    );
    let last = cumulative(&data_dir, "checkout.latency", (t0 + 10) * 1000).unwrap();
    let arms_rows = last["arms"].as_array().unwrap();
    let n: u64 = arms_rows.iter().map(|a| a["n"].as_u64().unwrap()).sum();
    assert_eq!(n, 10 * 360, "{last}");
    assert_eq!(last["none"], 10 * 40);
    let vs = &last["vs_control"][0];
    let (lo, hi) = (
        vs["ci95"][0].as_f64().unwrap(),
        vs["ci95"][1].as_f64().unwrap(),
    );
    assert!(
        lo < LIFT && LIFT < hi && lo > 0.0,
        "lift {LIFT} not in [{lo}, {hi}]: {last}"
    );
    assert!(vs["p_value"].as_f64().unwrap() < 1e-9);
    assert_eq!(last["srm"]["flagged"], false, "{last}");
    let units: u64 = arms_rows.iter().map(|a| a["units"].as_u64().unwrap()).sum();
    assert!((354..=366).contains(&units), "distinct units {units}");

    let skew = cumulative(&data_dir, "checkout.skewed", end).unwrap();
    assert_eq!(skew["srm"]["flagged"], true, "{skew}");
    assert!(skew["srm"]["p_value"].as_f64().unwrap() < 0.001);

    // The aggregates carry the arm as a key tag, with the units as `distinct`.
    let aggregates = rows(&data_dir, "aggregates");
    assert!(
        aggregates
            .iter()
            .any(|r| r["key"] == "checkout.latency;arm=treatment"
                && r["distinct"].as_u64().is_some_and(|d| d > 100))
    );
    assert!(
        aggregates
            .iter()
            .any(|r| r["key"] == "checkout.latency;arm=none")
    );

    // The API and the stream.
    let path = "/api/v1/experiments?experiment=checkout&key=checkout.skewed";
    let listed = || -> Vec<serde_json::Value> {
        let (status, body) = sluice.http_get(path);
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        answer["experiments"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    // The board reads the records a moment after they are written.
    assert!(
        wait_for(Duration::from_secs(10), || listed().len() == 2),
        "a window and a cumulative row: {:?}",
        listed()
    );
    let listed = listed();
    assert!(listed.iter().all(|r| r["key"] == "checkout.skewed"));
    let (status, body) = sluice.http_get("/api/v1/experiments?bogus=1");
    assert_eq!(status, 400, "{body}");
    assert!(
        wait_for(Duration::from_secs(10), || stream.lock().unwrap().contains(
            "event: experiment\ndata: {\"experiment\":\"checkout\""
        )),
        "no `event: experiment`: {}",
        stream.lock().unwrap()
    );
    assert!(sluice.stop().success());
}

#[test]
fn kill_9_under_an_experiments_load_writes_the_rows_a_crash_free_run_writes() {
    let tmp = tempfile::tempdir().unwrap();
    // One core: a fold order that does not depend on how two partitions interleave.
    let config = write_config(tmp.path(), 1);
    let args = ["--config", config.to_str().unwrap()];
    let data_dir = tmp.path().join("data");
    let t0 = now_secs() - 600;
    let mut sluice = Sluice::start(&data_dir, &args);
    // Three bursts of 10 s of event time, 100 s apart (so the idle frontier between them
    // closes only a burst's own last window); kill -9 in the middle of the first two.
    for burst in 0..3i64 {
        let start = t0 + 100 * burst;
        let lines = workload("checkout.latency", start, 10, 300, 11 + burst as u64);
        let addr = sluice.addr("events");
        let sender = std::thread::spawn(move || {
            // The instance may die while this writes: what it never read is not in its log.
            if let Ok(mut conn) = TcpStream::connect(addr) {
                for chunk in lines.chunks(500) {
                    let mut text = chunk.join("\n");
                    text.push('\n');
                    if conn.write_all(text.as_bytes()).is_err() {
                        return;
                    }
                }
            }
        });
        let midway = (start + 4) * 1000;
        assert!(
            wait_for(Duration::from_secs(30), || rows(&data_dir, "experiments")
                .iter()
                .any(|r| r["end_ms"].as_i64().is_some_and(|e| e >= midway))),
            "burst {burst} not folded:\n{}",
            sluice.stderr()
        );
        if burst < 2 {
            signal(sluice.child.id(), "KILL");
            let _ = sluice.child.wait();
            let _ = sender.join();
            sluice = Sluice::start(&data_dir, &args);
        } else {
            let _ = sender.join();
        }
    }
    let end = (t0 + 210) * 1000;
    assert!(
        wait_for(Duration::from_secs(30), || cumulative(
            &data_dir,
            "checkout.latency",
            end
        )
        .is_some()),
        "the last window never closed:\n{}",
        sluice.stderr()
    );
    assert!(sluice.stop().success());

    let fresh = crate::harness::copy_log(&data_dir, &tmp.path().join("fresh"));
    let oracle = Sluice::start(&fresh, &args);
    assert!(
        wait_for(Duration::from_secs(30), || cumulative(
            &fresh,
            "checkout.latency",
            end
        )
        .is_some()),
        "the oracle never closed the last window"
    );
    assert!(oracle.stop().success());
    let upto = |rows: Vec<serde_json::Value>| -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in rows.iter().filter(|r| r["end_ms"].as_i64().unwrap() <= end) {
            *out.entry(r.to_string()).or_default() += 1;
        }
        out
    };
    for kind in ["experiments", "aggregates"] {
        let (crashed, clean) = (upto(rows(&data_dir, kind)), upto(rows(&fresh, kind)));
        assert!(!clean.is_empty());
        assert_eq!(crashed, clean, "{kind}/ after crashes and without");
    }
}

#[test]
fn a_bad_experiment_exits_2_naming_it_and_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "listener = \"nope\"\narms = { a = 50, b = 50 }",
            8,
            "not a configured listener",
        ),
        (
            "listener = \"g\"\narms = { a = 50, b = 50 }",
            8,
            "no fields",
        ),
        (
            "listener = \"events\"\narms = { a = 60, b = 50 }",
            9,
            "add up to 110",
        ),
    ];
    for (body, line, message) in cases {
        let text = format!(
            "[[listener]]\nname = \"events\"\nproto = \"tcp\"\naddr = \"127.0.0.1:0\"\nformat = \"json\"\n\n[[experiment]]\n{body}\nname = \"bad_one\"\nunit = \"user\"\n"
        );
        let text = text.replace(
            "[[experiment]]",
            "[[listener]]\nname = \"g\"\nproto = \"tcp\"\naddr = \"127.0.0.1:0\"\nformat = \"graphite\"\n\n[[experiment]]",
        );
        // Five lines of the second listener and a blank one push the table down by six.
        let line = line + 6;
        let path = tmp.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let out = crate::harness::run(&["check", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}\n{stderr}");
        assert!(stderr.contains("bad_one"), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(stderr.contains(&format!("line {line}")), "{text}\n{stderr}");
    }
}
