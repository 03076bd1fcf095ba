//! `sluice query` and `sluice top` against a real instance: the table, `--json` lines equal
//! to the API's rows, `--follow` printing windows as they close, exit codes, and `top`
//! drawn in an 80x24 tmux pane and quit with `q`.

use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Sluice, aggregate_lines, bin, have, require, wait_for};

/// A sluice with 10 s windows and a graphite listener `graphite-in`, holding (event time,
/// in the past) closed windows: t0 room.a ×1; t0+10 room.b ×5, room.a ×3, hall ×2; and an
/// open one at t0+30 (room.a ×4). Returns t0.
fn start_with_rows(dir: &std::path::Path) -> (Sluice, i64) {
    let sluice = crate::harness::start_10s_graphite(&dir.join("d"), "5s", "graphite-in");
    let (t0, lines) = crate::harness::rooms_workload();
    send(&sluice, &lines);
    assert!(
        wait_for(Duration::from_secs(30), || aggregate_lines(
            &sluice.data_dir
        )
        .len()
            == 4),
        "4 closed rows"
    );
    (sluice, t0)
}

fn send(sluice: &Sluice, lines: &[String]) {
    let mut s = TcpStream::connect(sluice.addr("graphite-in")).unwrap();
    s.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
}

fn query(sluice: &Sluice, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("query")
        .args(["--admin", &sluice.admin().to_string()])
        .args(args)
        .output()
        .expect("run sluice query");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn query_prints_a_table_and_json_lines_equal_to_the_api_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (sluice, t0) = start_with_rows(dir.path());

    let (code, table, err) = query(&sluice, &["--prefix", "room.", "--window", "10s"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "KEY", "WINDOW", "START", "COUNT", "SUM", "MIN", "MEAN", "MAX", "P99"
        ],
        "{table}"
    );
    // room.a at t0 (1), room.a at t0+10 (3), room.b at t0+10 (5): key, window, count.
    let cells: Vec<(String, String, String)> = lines[1..]
        .iter()
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[0].into(), c[1].into(), c[3].into())
        })
        .collect();
    let want = |k: &str, n: &str| (k.to_string(), "10s".to_string(), n.to_string());
    assert_eq!(
        cells,
        [
            want("room.a", "1"),
            want("room.a", "3"),
            want("room.b", "5")
        ],
        "{table}"
    );
    assert!(!table.contains("hall"), "{table}");
    // Numbers are right-aligned: every count ends where COUNT does.
    let end = lines[0].find("COUNT").unwrap() + "COUNT".len();
    for l in &lines[1..] {
        let b = l.as_bytes();
        assert!(b[end - 1].is_ascii_digit() && b[end] == b' ', "{table}");
    }

    // --json: one object per line, each exactly a row of the API's answer.
    let (code, json, err) = query(&sluice, &["--prefix", "room.", "--window", "10s", "--json"]);
    assert_eq!(code, 0, "{err}");
    let printed: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (status, body) = sluice.http_get("/api/v1/windows?prefix=room.&window=10s");
    assert_eq!(status, 200);
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(printed, *api["windows"].as_array().unwrap());
    assert_eq!(printed.len(), 3);

    // --open adds the running window, marked open.
    let (code, table, err) = query(&sluice, &["--key", "room.a", "--open"]);
    assert_eq!(code, 0, "{err}");
    let open: Vec<&str> = table.lines().filter(|l| l.ends_with(" open")).collect();
    assert_eq!(open.len(), 1, "{table}");
    assert!(open[0].starts_with("room.a "), "{table}");

    // --top ranks; its measure comes right after the key.
    let (code, top, err) = query(&sluice, &["--top", "2", "--by", "count", "--json"]);
    assert_eq!(code, 0, "{err}");
    let keys: Vec<String> = top
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["key"].to_string())
        .collect();
    assert_eq!(keys, ["\"room.b\"", "\"room.a\""], "{top}");
    let (code, top, err) = query(&sluice, &["--top", "3"]);
    assert_eq!(code, 0, "{err}");
    let start = humantime_rfc3339(t0 + 10);
    assert!(
        top.starts_with(&format!(
            "top 3 by count of 10s windows: the window from {start}\n"
        )),
        "{top}"
    );
    assert!(top.lines().nth(1).unwrap().starts_with("KEY "), "{top}");
    assert!(top.lines().nth(2).unwrap().starts_with("room.b "), "{top}");

    // A bad parameter is bad usage (2) with the server's message; no server is 1.
    let (code, _, err) = query(&sluice, &["--prefix", "room.", "--window", "7s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("window") && err.contains("7s"), "{err}");
    let out = Command::new(bin())
        .args(["query", "--admin", "127.0.0.1:1", "--prefix", "room."])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the admin server at 127.0.0.1:1"),
        "{err}"
    );
    // Flags that cannot go together are caught before asking (clap: 2).
    let (code, _, _) = query(&sluice, &["--top", "3", "--follow"]);
    assert_eq!(code, 2);
    assert!(sluice.stop().success());
}

/// `2026-12-03T12:00:00Z` of Unix seconds, by the tests' own arithmetic (civil from days).
fn humantime_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let s = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

#[test]
fn query_follow_prints_windows_as_they_close_and_ends_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let (sluice, t0) = start_with_rows(dir.path());
    let mut child = Command::new(bin())
        .arg("query")
        .args(["--admin", &sluice.admin().to_string()])
        .args(["--prefix", "room.", "--window", "10s", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rows) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The stream starts at the end of what is closed now; the follower connects at some
    // point, so each round closes one more window of room.c until one is printed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    let line = loop {
        assert!(Instant::now() < deadline, "no row printed");
        let t = t0 + 40 + 10 * round;
        send(
            &sluice,
            &[
                format!("room.c {round} {}", t + 1),
                format!("tick 1 {}", t + 16),
            ],
        );
        round += 1;
        if let Ok(line) = rows.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
    };
    let row: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let key = row["key"].as_str().unwrap();
    assert!(key.starts_with("room."), "{row}");
    assert_eq!(row["final"], true, "{row}");
    assert_eq!(row["window"], "10s", "{row}");
    // A window that closed after the follower started: one of room.c's, or the one of t0+30
    // (open until the first round's tick).
    let start_ms = row["start_ms"].as_i64().unwrap();
    assert!(start_ms >= (t0 + 30) * 1000, "{row}");
    // Exactly the row the aggregates file holds.
    let file_row = aggregate_lines(&sluice.data_dir)
        .into_iter()
        .map(|(_, l)| serde_json::from_str::<serde_json::Value>(&l).unwrap())
        .find(|v| v["key"] == key && v["start_ms"] == start_ms)
        .map(|mut v| {
            v["final"] = true.into();
            v
        });
    assert_eq!(file_row.as_ref(), Some(&row));
    crate::harness::signal(child.id(), "INT");
    let status = crate::harness::wait_timeout(&mut child, Duration::from_secs(10))
        .expect("follow ends on SIGINT");
    assert!(status.success(), "{status}");
    assert!(sluice.stop().success());
}

/// A tmux server of its own (`-L`), killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Tmux {
            socket: format!("sluice-it-{}-{nanos}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn wait_screen(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}; the pane shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

impl Tmux {
    /// A detached 80x24 session `top` with a plain shell, running `sluice top --admin ADMIN`
    /// and then printing its exit status as `sluice-top-exit=N`.
    fn top_80x24(admin: &str) -> Tmux {
        let tmux = Tmux::new();
        tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-s",
            "top",
            "env",
            "PS1=$ ",
            "sh",
        ]);
        let command = format!(
            "'{}' top --admin {admin}; echo sluice-top-exit=$?",
            bin().display()
        );
        tmux.run(&["send-keys", "-t", "top", &command, "Enter"]);
        tmux
    }
}

#[test]
fn top_draws_listeners_and_top_keys_in_an_80x24_tmux_pane_and_quits_on_q() {
    if !require(have("tmux"), "tmux") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (sluice, _) = start_with_rows(dir.path());
    let tmux = Tmux::top_80x24(&sluice.admin().to_string());
    let screen = tmux.wait_screen("the listener and a top key within 30 s", |s| {
        s.contains("graphite-in") && s.contains("room.b") && s.contains("Listeners")
    });
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines.len() <= 24, "{screen}");
    assert!(lines.iter().all(|l| l.chars().count() <= 80), "{screen}");
    for want in [
        "graphite+tcp",
        "EV/S",
        "BYTES/S",
        "REJECTS",
        "DROPS",
        "watermark lag",
        "checkpoint",
        "Top keys by count",
    ] {
        assert!(screen.contains(want), "no {want:?} in\n{screen}");
    }
    // room.b (5) ranks above room.a (3) and hall (2) in the newest closed window.
    let rank = |k: &str| lines.iter().position(|l| l.contains(&format!("│{k} ")));
    assert!(
        rank("room.b") < rank("room.a") && rank("room.a") < rank("hall"),
        "{screen}"
    );
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let screen = tmux.wait_screen("exit 0 and the shell back", |s| {
        s.contains("sluice-top-exit=")
    });
    assert!(screen.contains("sluice-top-exit=0"), "{screen}");
    assert!(!screen.contains("Listeners"), "the view is gone:\n{screen}");
    assert!(
        screen.contains("top --admin"),
        "the shell's screen is back:\n{screen}"
    );
    assert!(sluice.stop().success());
}

#[test]
fn top_shows_an_unreachable_admin_and_keeps_running() {
    if !require(have("tmux"), "tmux") {
        return;
    }
    let tmux = Tmux::top_80x24("127.0.0.1:1");
    tmux.wait_screen("a message about the admin", |s| {
        s.contains("cannot reach 127.0.0.1:1") && s.contains("retrying")
    });
    // Still running a second later; Ctrl-C quits with 0.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!tmux.screen().contains("sluice-top-exit="));
    tmux.run(&["send-keys", "-t", "top", "C-c"]);
    let screen = tmux.wait_screen("exit after Ctrl-C", |s| s.contains("sluice-top-exit="));
    assert!(screen.contains("sluice-top-exit=0"), "{screen}");
}
