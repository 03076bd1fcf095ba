//! Random configurations through the real binary: `sluice check` and `sluice serve` never
//! abort. Each file is accepted (check exits 0; serve starts, becomes ready and stops cleanly
//! on SIGTERM) or refused with exit 2 and a message that names a key of the file and its
//! line. The values are drawn from each key's edges: zero, one, the largest integer, huge
//! durations, wrong types, relations that do not hold (a hop that does not divide a size).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

use crate::harness::{bin, run, signal, wait_timeout};

/// One key: the values a file may give it (TOML literals) that serve should take, and those
/// it should refuse. Relations between good values (a hop that does not divide a size, a
/// dead-letter budget too small for its files) are refused too.
struct Key {
    name: &'static str,
    /// Always in the file (a listener's proto, addr and format).
    required: bool,
    good: &'static [&'static str],
    bad: &'static [&'static str],
}

const fn key(
    name: &'static str,
    good: &'static [&'static str],
    bad: &'static [&'static str],
) -> Key {
    Key {
        name,
        required: false,
        good,
        bad,
    }
}

const fn required(
    name: &'static str,
    good: &'static [&'static str],
    bad: &'static [&'static str],
) -> Key {
    Key {
        name,
        required: true,
        good,
        bad,
    }
}

const U64_MAX: &str = "18446744073709551615";

const ROOT: &[Key] = &[
    key("cores", &["1", "2"], &["0", "257", "-1", "\"two\""]),
    key(
        "io",
        &["\"auto\"", "\"epoll\""],
        &["\"uring\"", "\"kqueue\""],
    ),
    key("color", &[], &["\"blue\""]),
];

const TABLES: &[(&str, &[Key])] = &[
    (
        "log",
        &[
            key(
                "segment_bytes",
                &["\"1MiB\"", "\"2MiB\"", "1048576"],
                &["\"4KiB\"", "\"100TiB\"", "0", "-5", "\"lots\""],
            ),
            key(
                "flush",
                &["\"always\"", "\"interval\"", "\"never\""],
                &["\"sometimes\""],
            ),
            key("flush_interval_ms", &["1", "200", U64_MAX], &["0", "-1"]),
            key(
                "retention_bytes",
                &["\"0\"", "\"1\"", "\"1KiB\"", "\"1GiB\""],
                &["\"x\"", "\"1TiB\""],
            ),
            key("retention_hours", &["0", "1", U64_MAX], &["-1"]),
            key("flsh", &[], &["1"]),
        ],
    ),
    (
        "window",
        &[
            key(
                "sizes",
                &[
                    "[\"10s\"]",
                    "[\"1ms\"]",
                    "[\"10s\", \"1m\"]",
                    "[\"7ms\", \"3s\"]",
                    "[\"365d\"]",
                ],
                &[
                    "[]",
                    "[\"0s\"]",
                    "[\"soon\"]",
                    "[\"1m\", \"1m\"]",
                    "[\"100000000000d\"]",
                ],
            ),
            key(
                "hop",
                &["\"1ms\"", "\"1s\"", "\"5s\"", "\"3s\""],
                &["\"0s\"", "\"-1s\""],
            ),
            key(
                "allowed_lateness",
                &["\"0s\"", "\"5s\"", "\"365d\""],
                &["\"-1s\"", "5", "\"100000000000d\""],
            ),
            key(
                "quantiles",
                &["[]", "[0.5]", "[0.0, 1.0]", "[0.5, 0.5]"],
                &["[1.5]", "[-0.1]", "[\"p99\"]"],
            ),
            key(
                "max_keys_per_shard",
                &["1", "10", "4294967295"],
                &["0", "-1"],
            ),
        ],
    ),
    (
        "checkpoint",
        &[
            key("interval_ms", &["1", "100", U64_MAX], &["0"]),
            key("keep", &["1", "3", "4294967295"], &["0"]),
        ],
    ),
    (
        "admin",
        &[key(
            "addr",
            &["\"127.0.0.1:0\""],
            &["\"nowhere\"", "\"127.0.0.1:99999\""],
        )],
    ),
    (
        "deadletter",
        &[
            key(
                "max_bytes",
                &["\"64KiB\"", "\"1MiB\""],
                &["\"0\"", "\"2TiB\"", "1"],
            ),
            key("files", &["1", "4", "100"], &["0", "101"]),
            key("repeats", &["0", "10", "1000000"], &["1000001"]),
        ],
    ),
    (
        "results",
        &[
            key(
                "segment_bytes",
                &["\"4KiB\"", "\"1MiB\""],
                &["\"1\"", "\"2GiB\""],
            ),
            key("retention_bytes", &["\"0\"", "\"1KiB\""], &["\"x\""]),
            key("retention_hours", &["0", "1", U64_MAX], &["-1"]),
        ],
    ),
];

const LISTENER: &[Key] = &[
    required("proto", &["\"tcp\"", "\"udp\""], &["\"sctp\""]),
    required("addr", &["\"127.0.0.1:0\""], &["\"here\"", "\"127.0.0.1\""]),
    required(
        "format",
        &[
            "\"graphite\"",
            "\"statsd\"",
            "\"json\"",
            "\"logfmt\"",
            "\"raw\"",
            "\"influx\"",
            "\"syslog\"",
        ],
        &["\"xml\""],
    ),
    key("key", &["\"service\""], &["\"\""]),
    key("value", &["\"latency\""], &[]),
    key("max_line_bytes", &["1", "64", "262144"], &["0", "1048576"]),
    key("max_connections", &["1", "100000"], &["0"]),
    key(
        "idle_timeout",
        &["\"0s\"", "\"1ms\"", "\"365d\""],
        &["\"-1s\"", "\"100000000000d\""],
    ),
    key("name", &["\"a\"", "\"b\""], &["\"\""]),
];

/// A drawn file: its text and every key it sets (table-qualified and bare).
#[derive(Debug, Clone)]
struct Drawn {
    text: String,
    keys: Vec<String>,
}

/// Each key of `keys`: absent (unless required), a good value, or now and then (about one key
/// in forty) a bad one, so about half the files are good.
fn draw_keys(keys: &'static [Key]) -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    keys.iter()
        .map(|k| {
            type Arm = (u32, BoxedStrategy<Option<(&'static str, &'static str)>>);
            let mut arms: Vec<Arm> = Vec::new();
            if !k.required {
                arms.push((60, Just(None).boxed()));
            }
            for (weight, values) in [(30, k.good), (2, k.bad)] {
                if !values.is_empty() {
                    let pick = prop::sample::select(values).prop_map(move |v| Some((k.name, v)));
                    arms.push((weight, pick.boxed()));
                }
            }
            proptest::strategy::Union::new_weighted(arms)
        })
        .collect::<Vec<_>>()
        .prop_map(|v| v.into_iter().flatten().collect())
}

fn drawn() -> impl Strategy<Value = Drawn> {
    let tables: Vec<_> = TABLES
        .iter()
        .map(|(name, keys)| (Just(*name), draw_keys(keys), any::<bool>()))
        .collect();
    (
        draw_keys(ROOT),
        tables,
        proptest::collection::vec(draw_keys(LISTENER), 0..3),
    )
        .prop_map(|(root, tables, listeners)| {
            let mut text = String::new();
            let mut keys = Vec::new();
            for (k, v) in root {
                text.push_str(&format!("{k} = {v}\n"));
                keys.push(k.to_string());
            }
            for (table, pairs, present) in tables {
                if !present && pairs.is_empty() {
                    continue;
                }
                text.push_str(&format!("[{table}]\n"));
                keys.push(table.to_string());
                for (k, v) in pairs {
                    text.push_str(&format!("{k} = {v}\n"));
                    keys.push(format!("{table}.{k}"));
                    keys.push(k.to_string());
                }
            }
            for pairs in listeners {
                text.push_str("[[listener]]\n");
                keys.push("listener".into());
                for (k, v) in pairs {
                    text.push_str(&format!("{k} = {v}\n"));
                    keys.push(k.to_string());
                }
            }
            Drawn { text, keys }
        })
}

/// Why `sluice check` / `serve` on `drawn` broke the contract, if it did.
/// `Ok(true)` when check accepted the file (and serve, when `for_serve`, served it).
fn judge(drawn: &Drawn, for_serve: bool) -> Result<bool, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, &drawn.text).unwrap();
    let data = dir.path().join("data");
    let mut args = vec![
        "check",
        "--config",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    // Serve (and so its check) takes an ephemeral admin port: many run side by side.
    if for_serve {
        args.extend(["--admin", "127.0.0.1:0"]);
    }
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    prop_assert!(
        !err.contains("panicked"),
        "check panicked:\n{}\n{}",
        drawn.text,
        err
    );
    match o.status.code() {
        Some(0) => {}
        Some(2) => {
            prop_assert!(
                err.contains("line ") && drawn.keys.iter().any(|k| err.contains(k.as_str())),
                "check refused without naming a key and its line:\n{}\n{}",
                drawn.text,
                err
            );
            return Ok(false);
        }
        other => prop_assert!(false, "check exited {:?}:\n{}\n{}", other, drawn.text, err),
    }
    prop_assert!(!data.exists(), "check wrote the data dir");
    if for_serve {
        serve_accepts(&file, &data, &drawn.text)?;
    }
    Ok(true)
}

/// `sluice serve --config FILE` of a file that `check` accepted: it starts, reports ready and
/// exits 0 on SIGTERM.
fn serve_accepts(
    file: &std::path::Path,
    data: &std::path::Path,
    text: &str,
) -> Result<(), TestCaseError> {
    let log = data.with_extension("stderr");
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(file)
        .arg("--data-dir")
        .arg(data)
        .args(["--admin", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            prop_assert!(
                false,
                "serve of an accepted file exited {}:\n{}\n{}",
                status,
                text,
                err
            );
        }
        if let Ok(bytes) = std::fs::read(data.join("endpoints.json"))
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some(admin) = v["admin"].as_str().and_then(|a| a.parse().ok())
            && crate::harness::http_get(admin, "/readyz").0 == 200
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
    }
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    prop_assert!(ready, "serve did not become ready:\n{}\n{}", text, err);
    prop_assert!(
        status.is_some_and(|s| s.success()),
        "serve did not stop cleanly ({:?}):\n{}\n{}",
        status,
        text,
        err
    );
    Ok(())
}

#[test]
fn random_configs_are_accepted_or_refused_with_exit_2_naming_a_key_never_aborted() {
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 300,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    runner
        .run(&drawn(), |d| judge(&d, false).map(|_| ()))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn random_configs_that_check_accepts_serve_starts_and_stops() {
    // Serve binds ephemeral ports (every good address has port 0, the admin's is given as a
    // flag, and the file names its listeners, so the embedded defaults' fixed ports are not
    // used) in a fresh data dir; good segment sizes are small, so a few cores' files fit.
    // Drawn until a dozen files were accepted (and served), at most 400 draws.
    let files = drawn().prop_filter("names its listeners", |d| d.text.contains("[[listener]]"));
    let mut runner = TestRunner::new(RunnerConfig {
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let (mut served, mut draws) = (0, 0);
    while served < 12 && draws < 400 {
        draws += 1;
        let d = files.new_tree(&mut runner).unwrap().current();
        match judge(&d, true) {
            Ok(true) => served += 1,
            Ok(false) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        served, 12,
        "only {served} of {draws} drawn files were accepted"
    );
}
